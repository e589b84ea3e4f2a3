//! Giving space back: after freeing the oldest 90% of many 64-byte objects, both a compact copy
//! (`Heap::compact_to`) and in-place compaction (`Heap::compact`) leave a file whose allocated
//! disk blocks are at most 1.2x the live bytes plus metadata, and every live object is intact
//! after reopening. Compaction of a free tail cuts the file; a crash during compaction is the
//! simulator's (crash-tests: `Op::Compact`, and two sabotage switches in `tests/broken.rs`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use txheap::inspect::{check, Verdict};
use txheap::{Durability, Heap, Options, PPtr};

type Node = [u64; 8];

/// Bytes of disk blocks the file holds (`du`, not its length).
fn disk_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

fn verify(path: &Path, live: &[(u64, PPtr<Node>)]) {
    let r = check(path, &mut |_, _| {}).unwrap();
    assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.findings);
    let heap = Heap::open_read_only(path).unwrap();
    heap.read(|r| {
        for &(i, p) in live {
            assert_eq!(*r.get(p)?, [i; 8], "object {i}");
        }
        Ok(())
    })
    .unwrap();
}

/// Fill `bytes` of 64-byte objects, free the oldest 90%, then compact both ways and measure.
fn oldest_ninety_percent_freed(bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.heap");
    let log = 1 << 20;
    let opts = Options::new()
        .durability(Durability::None)
        .log_size(log)
        .max_size(4 * bytes + (1 << 30));
    let heap = Heap::create(&path, opts).unwrap();
    let n = bytes / 64;
    let mut all = Vec::with_capacity(n as usize);
    const BATCH: u64 = 100_000;
    for start in (0..n).step_by(BATCH as usize) {
        heap.transaction(|tx| {
            for i in start..(start + BATCH).min(n) {
                all.push((i, tx.alloc::<Node>([i; 8])?));
            }
            Ok(())
        })
        .unwrap();
    }
    let keep_from = n - n / 10;
    for chunk in all[..keep_from as usize].chunks(BATCH as usize) {
        heap.transaction(|tx| {
            for &(_, p) in chunk {
                tx.free(p)?;
            }
            Ok(())
        })
        .unwrap();
    }
    heap.flush().unwrap();
    let live = &all[keep_from as usize..];
    let live_bytes = live.len() as u64 * 64;
    let before = disk_bytes(&path);
    let s = heap.stats().unwrap();
    // Metadata: superblocks, log, heap header and root area, zone tables, and a bitmap per
    // run (at most 1/64 of a run's bytes for 64-byte blocks, rounded to pages).
    let runs: u64 = s.classes.iter().map(|c| c.runs).sum();
    let meta = 8192
        + log
        + 8192
        + (s.heap_bytes / (256 << 10)).div_ceil(16384) * (256 << 10)
        + runs * 4096;

    let copy = dir.path().join("copy.heap");
    heap.compact_to(&copy).unwrap();
    let copied = disk_bytes(&copy);
    let report = heap.compact().unwrap();
    heap.close().unwrap();
    let compacted = disk_bytes(&path);
    eprintln!(
        "{} MiB of 64-byte objects, oldest 90% freed: live {live_bytes} bytes + metadata {meta}; \
         disk blocks before {before}, compact copy {copied} ({:.3}x), in place {compacted} \
         ({:.3}x; {} bytes punched, {} chunks cut, length {} -> {})",
        bytes >> 20,
        copied as f64 / (live_bytes + meta) as f64,
        compacted as f64 / (live_bytes + meta) as f64,
        report.punched_bytes,
        report.chunks_cut,
        report.file_len_before,
        report.file_len_after,
    );
    let limit = (live_bytes + meta) as f64 * 1.2;
    assert!((copied as f64) <= limit, "compact copy: {copied} > {limit}");
    assert!(
        (compacted as f64) <= limit,
        "in place: {compacted} > {limit}"
    );
    assert!(
        before as f64 > 3.0 * limit,
        "the test must start with space to give back"
    );
    verify(&copy, live);
    verify(&path, live);
    // The compacted heap takes new objects (in the punched space and past the cut).
    let heap = Heap::open(&path, Options::new()).unwrap();
    let more = heap
        .transaction(|tx| {
            (0..50_000u64)
                .map(|i| tx.alloc::<Node>([i; 8]))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    heap.close().unwrap();
    let extra: Vec<_> = more
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u64, p))
        .collect();
    verify(&path, &extra);
    verify(&path, live);
}

#[test]
fn compaction_gives_back_the_oldest_ninety_percent() {
    // Under valgrind (`scripts/valgrind.sh` sets `TXHEAP_VALGRIND`), 16 MiB.
    let valgrind = std::env::var_os("TXHEAP_VALGRIND").is_some();
    oldest_ninety_percent_freed(if valgrind { 16 << 20 } else { 64 << 20 });
}

/// The figure: 1 GiB of 64-byte objects (about 17 million). Slow: run by hand with
/// `cargo test --release --test compact -- --ignored --nocapture`.
#[test]
#[ignore]
fn compaction_of_one_gib() {
    oldest_ninety_percent_freed(1 << 30);
}

#[test]
fn a_free_tail_is_cut_and_the_heap_grows_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let keep = heap.transaction(|tx| tx.alloc::<u64>(11)).unwrap();
    let big = heap
        .transaction(|tx| tx.alloc_slice(&vec![3u8; 40 << 20]))
        .unwrap();
    let long = std::fs::metadata(&path).unwrap().len();
    heap.transaction(|tx| tx.free_slice(big)).unwrap();
    let r = heap.compact().unwrap();
    let short = std::fs::metadata(&path).unwrap().len();
    assert_eq!((r.file_len_before, r.file_len_after), (long, short));
    assert!(short + (40 << 20) <= long, "{long} -> {short}");
    assert!(r.chunks_cut >= 160, "{r:?}");
    // A second compaction finds nothing more to give back.
    let again = heap.compact().unwrap();
    assert_eq!((again.chunks_cut, again.file_len_after), (0, short));
    // The heap grows again past the cut, and the old object is intact.
    let big2 = heap
        .transaction(|tx| tx.alloc_slice(&vec![4u8; 8 << 20]))
        .unwrap();
    assert_eq!(heap.read(|r| r.get(keep).copied()).unwrap(), 11);
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    heap.read(|r| {
        assert_eq!(*r.get(keep)?, 11);
        assert!(r.slice(big2)?.iter().all(|&b| b == 4));
        Ok(())
    })
    .unwrap();
    // A read-only handle cannot compact.
    drop(heap);
    let ro = Heap::open_read_only(&path).unwrap();
    assert!(matches!(ro.compact(), Err(txheap::Error::ReadOnly)));
}

/// The reader says when it lets go (a flag set as its closure returns), and the compaction must
/// return after that: an order, not a time. (The test asserted that `compact` took 200 ms of the
/// reader's 300, timed after the free's commit: under a loaded disk that commit took 100 ms and
/// the test failed 2 times in 115, a review found.)
#[test]
fn compaction_waits_for_a_reader_that_began_before_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("r.heap"), Options::new()).unwrap();
    let big = heap
        .transaction(|tx| tx.alloc_slice(&vec![5u8; 4 << 20]))
        .unwrap();
    let _tail = heap.transaction(|tx| tx.alloc::<u64>(1)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let released = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            heap.read(|r| {
                let bytes = r.slice(big)?;
                tx.send(()).unwrap();
                // The object is freed and compacted meanwhile: this reader's view never changes.
                std::thread::sleep(std::time::Duration::from_millis(300));
                assert!(
                    bytes.iter().all(|&b| b == 5),
                    "bytes changed under a reader"
                );
                released.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
        });
        rx.recv().unwrap();
        heap.transaction(|tx| tx.free_slice(big)).unwrap();
        let r = heap.compact().unwrap();
        assert!(
            released.load(Ordering::SeqCst),
            "compaction returned while the reader that began before it still read"
        );
        assert!(
            r.punched_bytes + r.chunks_cut * (256 << 10) >= 4 << 20,
            "the freed object was neither punched nor cut: {r:?}"
        );
    });
}

/// `CompactReport::punched_bytes` counts the blocks given back: a second compaction with
/// nothing freed in between gives none (a review found it reporting the first one's 8 MiB
/// again, each time, for ranges that were holes already).
#[test]
fn a_second_compaction_gives_nothing_back() {
    use std::os::unix::fs::MetadataExt;
    let disk = |p: &std::path::Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.heap");
    let heap = Heap::create(&p, Options::new()).unwrap();
    let big = heap
        .transaction(|tx| tx.alloc_slice(&vec![1u8; 8 << 20]))
        .unwrap();
    heap.transaction(|tx| tx.alloc(5u64)).unwrap();
    heap.transaction(|tx| tx.free_slice(big)).unwrap();
    let before = disk(&p);
    let first = heap.compact().unwrap();
    let between = disk(&p);
    assert!(first.punched_bytes >= 8 << 20, "{first:?}");
    assert!(
        before - between >= first.punched_bytes,
        "{before} -> {between}: {first:?}"
    );
    let second = heap.compact().unwrap();
    assert_eq!(disk(&p), between, "the second compaction freed no block");
    assert_eq!(second.punched_bytes, 0, "{second:?}");
    heap.close().unwrap();
}
