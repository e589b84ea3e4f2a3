//! Under `Durability::None` a flush writes the writer's private (copy-on-write) pages into the
//! file and keeps them, since they then equal it (docs/ARCHITECTURE.md section 3, step 6): the
//! next commits to the same pages take no copy-on-write fault. A kept page must still be
//! dropped before the file's bytes under it change other than through it. Here a large object
//! is rewritten through the log (its pages become private, then kept by a flush), freed, and
//! its space taken by a new large object written in place: the new bytes must show through
//! the writer's mapping, to readers, and after reopening. The sabotage switch
//! `KEPT_PAGES_NOT_DROPPED` (kept pages forgotten instead of dropped) shows that the check
//! can fail. (A test binary of its own: the switch is process-wide.)

use txheap::{Durability, Heap, Options, PSlice};

const BIG: usize = 256 << 10;

fn opts() -> Options {
    Options::new()
        .initial_size(4 << 20)
        .log_size(4 << 20)
        .max_size(64 << 20)
        .in_place_min(64 << 10)
        .durability(Durability::None)
}

/// What the writer's transactions, a reader, and a reopened heap see of the second object,
/// each as (bytes that are not `fill`), and whether it took the first one's place.
fn run(dir: &std::path::Path) -> (usize, usize, usize, bool) {
    let path = dir.join("kept.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    let first = heap
        .transaction(|tx| {
            let root = tx.root::<PSlice<u8>>()?;
            let big = tx.alloc_slice(&vec![1u8; BIG])?;
            tx.set(root, big)?;
            Ok(big)
        })
        .unwrap();
    // Rewrites of existing bytes go through the log into private pages of the writer's
    // mapping; the flush writes them to the file and keeps them.
    for round in 0..4u8 {
        heap.transaction(|tx| {
            let s = tx.slice_mut(first)?;
            for at in (0..BIG).step_by(4096) {
                s[at] = 2 + round;
            }
            Ok(())
        })
        .unwrap();
    }
    heap.flush().unwrap();
    // Free it, and make the free durable: the next large object may take its space.
    heap.transaction(|tx| {
        let root = tx.root::<PSlice<u8>>()?;
        tx.free_slice(first)?;
        tx.set(root, PSlice::empty())
    })
    .unwrap();
    heap.flush().unwrap();
    let second = heap
        .transaction(|tx| {
            let root = tx.root::<PSlice<u8>>()?;
            let big = tx.alloc_slice(&vec![9u8; BIG])?;
            tx.set(root, big)?;
            Ok(big)
        })
        .unwrap();
    let reused = second.offset() == first.offset();
    let wrong = |s: &[u8]| s.iter().filter(|&&b| b != 9).count();
    let in_tx = heap.transaction(|tx| Ok(wrong(tx.slice(second)?))).unwrap();
    let read = heap.read(|r| Ok(wrong(r.slice(second)?))).unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, opts()).unwrap();
    let reopened = heap
        .transaction(|tx| {
            let root = tx.root::<PSlice<u8>>()?;
            let s = *tx.get(root)?;
            Ok(wrong(tx.slice(s)?))
        })
        .unwrap();
    (in_tx, read, reopened, reused)
}

#[test]
fn kept_pages_never_hide_bytes_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (in_tx, read, reopened, reused) = run(dir.path());
    assert!(
        reused,
        "the second object did not take the first one's place"
    );
    assert_eq!(
        (in_tx, read, reopened),
        (0, 0, 0),
        "bytes of the in-place object hidden (in a transaction, to a reader, after reopening)"
    );
    // The same with kept pages forgotten instead of dropped (one test: the switch is
    // process-wide, and the runs must not overlap).
    #[cfg(feature = "test-hooks")]
    {
        use txheap_recovery::sabotage;
        let dir = tempfile::tempdir().unwrap();
        sabotage::set(sabotage::KEPT_PAGES_NOT_DROPPED);
        let (in_tx, _read, reopened, reused) = run(dir.path());
        sabotage::set(0);
        assert!(
            reused,
            "the second object did not take the first one's place"
        );
        eprintln!("sabotaged: {in_tx} bytes wrong in a transaction, {reopened} after reopening");
        assert!(
            in_tx > 0,
            "kept pages left in place went unnoticed: the check cannot fail"
        );
    }
}
