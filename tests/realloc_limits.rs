//! `realloc_slice` growth in place of large objects: not limited by the log (the new chunks are
//! written in place, as a moved object's new extent is), and safe beside a pinned reader.
use txheap::{inspect, Heap, Options, PSlice};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

/// Growing a 100 KiB object to 40 MiB with a 16 MiB log: the zeros of the new chunks go in
/// place (found by review: the first version zeroed the grown tail in one staged range across
/// the old extent and the new chunks, which went through the log and failed with
/// `TransactionTooLarge`, where moving the object worked).
#[test]
fn big_growth_in_place_is_not_limited_by_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let a: PSlice<u8> = heap
        .transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(100 * KIB)?;
            tx.slice_mut(s)?.fill(7);
            Ok(s)
        })
        .unwrap();
    let r = heap.transaction(|tx| tx.realloc_slice(a, a.len(), 40 * MIB));
    let a2 = r.expect("realloc to 40 MiB");
    heap.read(|r| {
        let b = r.slice(a2)?;
        assert!(b[..(100 * KIB) as usize].iter().all(|&x| x == 7));
        assert!(b[(100 * KIB) as usize..].iter().all(|&x| x == 0));
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    let report = inspect::check(&path, &mut |_, _| {}).unwrap();
    assert_eq!(
        report.verdict,
        inspect::Verdict::Clean,
        "{:?}",
        report.findings
    );
}

/// The same realloc when the object cannot grow in place (another object follows it): it moves
/// and succeeds, so only the in-place path is limited by the log.
#[test]
fn the_same_growth_by_moving_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let a: PSlice<u8> = heap
        .transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(100 * KIB)?;
            tx.slice_mut(s)?.fill(7);
            Ok(s)
        })
        .unwrap();
    let _blocker = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(100 * KIB))
        .unwrap();
    let a2 = heap
        .transaction(|tx| tx.realloc_slice(a, a.len(), 40 * MIB))
        .expect("realloc by moving");
    assert_ne!(a2.offset(), a.offset());
}

/// A reader pinned at a state where B (right after A) is live keeps seeing B's bytes while a
/// later transaction frees B and then grows A in place over B's chunks (covers: in-place
/// growth's fresh chunks versus older readers; passes).
#[test]
fn growth_over_a_freed_neighbour_spares_a_pinned_reader() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.heap");
    let heap = Heap::create(&path, Options::new().log_size(1 << 20)).unwrap();
    let (a, b) = heap
        .transaction(|tx| {
            let a = tx.alloc_slice_zeroed::<u8>(100 * KIB)?;
            let b = tx.alloc_slice_zeroed::<u8>(4 * MIB)?;
            Ok((a, b))
        })
        .unwrap();
    for i in 0..64u64 {
        heap.transaction(|tx| tx.write_slice(b, i * 64 * KIB, &[0xBBu8; 65536]))
            .unwrap();
    }
    let (pinned_tx, pinned_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|sc| {
        let h = &heap;
        let reader = sc.spawn(move || {
            h.read(|r| {
                pinned_tx.send(()).unwrap();
                let _ = go_rx.recv_timeout(std::time::Duration::from_millis(500));
                let x = r.slice(b)?;
                assert!(
                    x.iter().all(|&v| v == 0xBB),
                    "the pinned reader saw B change"
                );
                Ok(())
            })
            .unwrap();
        });
        pinned_rx.recv().unwrap();
        heap.transaction(|tx| tx.free_slice(b)).unwrap();
        let a2 = heap
            .transaction(|tx| {
                let a2 = tx.realloc_slice(a, 0, 100 * KIB)?; // no-op
                assert_eq!(a2.offset(), a.offset());
                Ok(a2)
            })
            .unwrap();
        // Grow by a little, then fill the new chunks in several commits of in-place size.
        let a3 = heap
            .transaction(|tx| tx.realloc_slice(a2, a2.len(), 900 * KIB))
            .unwrap();
        assert_eq!(a3.offset(), a.offset(), "grew in place over B");
        let _ = go_tx.send(());
        reader.join().unwrap();
    });
}
