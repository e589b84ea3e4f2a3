//! Sizes given to `open` are applied or refused, never ignored: a heap that reached its
//! `max_size` is reopened with a larger one and keeps every object; a `log_size` that differs
//! from the file's, or a `max_size` below the file's length, is an error that says why (and
//! changes nothing).

use txheap::{Error, Heap, Options, PSlice};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    /// Blocks of 256 KiB, each filled with its index.
    blocks: [PSlice<u8>; 128],
    count: u64,
}

const BLOCK: u64 = 256 << 10;
const SMALL: u64 = 16 << 20;

fn small() -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(1 << 20)
        .max_size(SMALL)
}

/// Add one block (filled with its number, from 1) to the root; returns the new count.
fn add_block(tx: &mut txheap::Tx<'_>) -> txheap::Result<u64> {
    let root = tx.root::<Root>()?;
    let n = tx.get(root)?.count;
    let b = tx.alloc_slice_zeroed::<u8>(BLOCK)?;
    tx.slice_mut(b)?.fill(n as u8 + 1);
    let rt = tx.get_mut(root)?;
    rt.blocks[n as usize] = b;
    rt.count = n + 1;
    Ok(n + 1)
}

/// Add `n` blocks in one transaction; returns how many there are.
fn add_blocks(heap: &Heap, n: u64) -> u64 {
    heap.transaction(|tx| {
        let mut count = 0;
        for _ in 0..n {
            count = add_block(tx)?;
        }
        Ok(count)
    })
    .unwrap()
}

/// Add blocks until the heap is full; returns how many there are.
fn fill(heap: &Heap) -> u64 {
    loop {
        match heap.transaction(add_block) {
            Ok(_) => {}
            Err(e @ Error::OutOfSpace { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&SMALL.to_string()) && msg.contains("set_max_size"),
                    "{msg}"
                );
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    heap.read(|r| Ok(r.get(r.root::<Root>()?)?.count)).unwrap()
}

fn intact(heap: &Heap) -> u64 {
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        for i in 0..root.count {
            let b = r.slice(root.blocks[i as usize])?;
            assert!(b.iter().all(|&x| x == i as u8 + 1), "block {i} changed");
        }
        Ok(root.count)
    })
    .unwrap()
}

#[test]
fn a_full_heap_reopened_with_a_larger_max_size_keeps_everything_and_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cap.heap");
    let heap = Heap::create(&path, small()).unwrap();
    let full = fill(&heap);
    assert!(full > 10 && full < 64, "{full} blocks fit in 16 MiB");
    heap.close().unwrap();
    // Reopened without max_size: the file keeps its own limit.
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(heap.stats().unwrap().max_size, SMALL);
    assert_eq!(fill(&heap), full);
    heap.close().unwrap();
    // Reopened with a larger one: every block intact, and more fit.
    let heap = Heap::open(&path, Options::new().max_size(64 << 20)).unwrap();
    assert_eq!(heap.stats().unwrap().max_size, 64 << 20);
    assert_eq!(intact(&heap), full);
    assert_eq!(add_blocks(&heap, 8), full + 8);
    heap.close().unwrap();
    // The new limit is the file's own from now on.
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(heap.stats().unwrap().max_size, 64 << 20);
    assert_eq!(intact(&heap), full + 8);
}

#[test]
fn sizes_that_cannot_apply_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refuse.heap");
    let heap = Heap::create(&path, small()).unwrap();
    heap.transaction(add_block).unwrap();
    heap.close().unwrap();
    let before = std::fs::read(&path).unwrap();
    let len = before.len() as u64;
    let refused = |o: Options, words: &[&str]| match Heap::open(&path, o) {
        Err(Error::InvalidOptions { what }) => {
            for w in words {
                assert!(what.contains(w), "{what:?} does not say {w:?}");
            }
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened with {words:?}"),
    };
    refused(
        Options::new().log_size(4 << 20),
        &["log_size 4194304", "1048576", "fixed at create"],
    );
    refused(
        Options::new().max_size(len - 4096),
        &["max_size", &len.to_string(), "never shrinks"],
    );
    refused(Options::new().max_size(SMALL + 1), &["multiple of 4096"]);
    refused(
        Options::new().initial_size(SMALL * 2),
        &["initial_size", "exceeds max_size"],
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refused open changed the file"
    );
    // The same sizes as at create are accepted (open_or_create with one Options).
    let heap = Heap::open_or_create(&path, small()).unwrap();
    assert_eq!(intact(&heap), 1);
    heap.close().unwrap();
    // A lower max_size down to the file's length is applied.
    let heap = Heap::open(&path, Options::new().max_size(len.next_multiple_of(4096))).unwrap();
    assert_eq!(heap.stats().unwrap().max_size, len.next_multiple_of(4096));
    assert_eq!(intact(&heap), 1);
    heap.close().unwrap();
}

#[test]
fn initial_size_given_to_open_preallocates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pre.heap");
    Heap::create(&path, small()).unwrap().close().unwrap();
    let len0 = std::fs::metadata(&path).unwrap().len();
    let heap = Heap::open(&path, Options::new().initial_size(8 << 20)).unwrap();
    assert_eq!(heap.stats().unwrap().file_len, 8 << 20);
    assert!(len0 < 8 << 20);
    heap.transaction(|tx| tx.root::<Root>().map(|_| ()))
        .unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert!(heap.stats().unwrap().file_len >= 8 << 20);
    heap.close().unwrap();
}

#[test]
fn a_full_heap_raises_max_size_while_open_and_a_reader_keeps_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raise.heap");
    let heap = Heap::create(&path, small().reserve(1 << 30)).unwrap();
    let full = fill(&heap);
    // A reader holds a block across the raise: nothing under it moves or changes.
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (tx2, rx2) = std::sync::mpsc::channel::<()>();
        let h = &heap;
        s.spawn(move || {
            h.read(|r| {
                let root = *r.get(r.root::<Root>()?)?;
                let b = r.slice(root.blocks[0])?;
                tx.send(()).unwrap();
                rx2.recv().unwrap();
                assert!(b.iter().all(|&x| x == 1), "a reader's block changed");
                Ok(())
            })
            .unwrap();
        });
        rx.recv().unwrap();
        heap.set_max_size(4 * SMALL).unwrap();
        tx2.send(()).unwrap();
    });
    assert_eq!(heap.stats().unwrap().max_size, 4 * SMALL);
    assert_eq!(add_blocks(&heap, 20), full + 20);
    assert!(
        std::fs::metadata(&path).unwrap().len() > SMALL,
        "grew past the old limit"
    );
    // Only up: a lower max_size is refused, and nothing changes.
    match heap.set_max_size(SMALL) {
        Err(Error::InvalidOptions { what }) => assert!(what.contains("only"), "{what}"),
        other => panic!("{other:?}"),
    }
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(heap.stats().unwrap().max_size, 4 * SMALL);
    assert_eq!(intact(&heap), full + 20);
    drop(heap);
    let ro = Heap::open_read_only(&path).unwrap();
    assert!(matches!(ro.set_max_size(8 * SMALL), Err(Error::ReadOnly)));
}

#[test]
fn raising_past_the_reservation_either_works_or_says_how_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noreserve.heap");
    let heap = Heap::create(&path, small()).unwrap();
    let full = fill(&heap);
    match heap.set_max_size(4 * SMALL) {
        Ok(()) => {
            // The address space after both mappings was free: the heap grows.
            heap.transaction(add_block).unwrap();
        }
        Err(Error::InvalidOptions { what }) => {
            assert!(
                what.contains("Options::reserve") && what.contains("reopen"),
                "{what}"
            );
            assert_eq!(heap.stats().unwrap().max_size, SMALL);
            assert!(matches!(
                heap.transaction(add_block),
                Err(Error::OutOfSpace { .. })
            ));
            assert_eq!(intact(&heap), full);
        }
        Err(e) => panic!("{e}"),
    }
}

/// Bytes of disk the file at `path` takes (its allocated blocks), and its length.
fn on_disk(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.blocks() * 512, m.len())
}

/// A clean close gives the log's blocks back (all but its first page, which holds the
/// sentinel), under both durabilities: a closed heap takes on disk its heap, not its log. A
/// reopen takes them again and the heap works as before: every block intact, commits that
/// wrap the log, and the next close gives them back again.
#[test]
fn a_closed_heap_gives_its_log_blocks_back() {
    // (Smaller under valgrind, whose commits are slow: the commits below wrap the log.)
    let log: u64 = if std::env::var_os("TXHEAP_VALGRIND").is_some() {
        128 << 10
    } else {
        512 << 10
    };
    for durability in [txheap::Durability::Full, txheap::Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.heap");
        let options = || {
            Options::new()
                .initial_size(1 << 20)
                .log_size(log)
                .max_size(1 << 30)
                .durability(durability)
        };
        let heap = Heap::create(&path, options()).unwrap();
        assert_eq!(add_blocks(&heap, 8), 8);
        let (open_disk, len) = on_disk(&path);
        assert!(
            open_disk >= log,
            "{durability:?}: the open heap holds its log: {open_disk}"
        );
        heap.close().unwrap();
        let (closed_disk, closed_len) = on_disk(&path);
        assert_eq!(closed_len, len, "the file keeps its length");
        // Where the filesystem punches holes (ext4, xfs, btrfs, tmpfs), the log's blocks go.
        assert!(
            closed_disk + log - (16 << 10) <= open_disk,
            "{durability:?}: {open_disk} bytes on disk open, {closed_disk} closed"
        );
        for round in 0..2u64 {
            let heap = Heap::open(&path, options()).unwrap();
            assert!(
                on_disk(&path).0 >= closed_disk + log - 4096,
                "the log is allocated again"
            );
            assert_eq!(intact(&heap), 8 + 4 * round);
            // Enough small commits to wrap the log (each frame is about a hundred bytes): each
            // allocates a word or frees the one allocated before.
            let mut word = None;
            for _ in 0..(log / 64) {
                word = heap
                    .transaction(|tx| match word {
                        Some(w) => tx.free(w).map(|_| None),
                        None => tx.alloc(7u64).map(Some),
                    })
                    .unwrap();
            }
            assert!(heap.stats().unwrap().checkpoints > 0, "the log wrapped");
            assert_eq!(add_blocks(&heap, 4), 12 + 4 * round);
            let (open_disk, _) = on_disk(&path);
            heap.close().unwrap();
            let (disk, _) = on_disk(&path);
            assert!(
                disk + log - (16 << 10) <= open_disk,
                "{durability:?}: {open_disk} bytes on disk open, {disk} after close {round}"
            );
        }
    }
}

/// A crash image whose log holds a transaction that grew the heap, but whose file lost that
/// growth (shorter than its committed chunk count), opened with a `max_size` between the two
/// lengths: refused as `InvalidOptions` with the file unchanged, and a plain open then recovers
/// every acknowledged transaction. (A review found the open replayed, grew the file, then
/// checkpointed the smaller `max_size`, after which every open refused the heap as `Corrupt`.)
#[test]
fn a_max_size_below_a_lost_growth_is_refused_before_any_write() {
    const LOG: u64 = 64 << 10;
    let opts = || {
        Options::new()
            .log_size(LOG)
            .max_size(64 << 20)
            .initial_size(0)
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<u64>()?;
        *tx.get_mut(r)? = 1;
        Ok(())
    })
    .unwrap();
    let before_growth = std::fs::metadata(&p).unwrap().len() as usize;
    let big = heap
        .transaction(|tx| {
            // (Its bytes go in place, into the growth; the cut below is not a real crash for
            // them, so only the metadata the frame holds is checked.)
            let s = tx.alloc_slice_zeroed::<u8>(8 << 20)?;
            let r = tx.root::<u64>()?;
            *tx.get_mut(r)? = s.offset();
            Ok(s)
        })
        .unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() as usize > before_growth + (8 << 20));
    // The log is durable (a Full commit); the file's growth is cut off, as a power cut can.
    let image = std::fs::read(&p).unwrap()[..before_growth].to_vec();
    drop(heap);
    let q = dir.path().join("crash.heap");
    std::fs::write(&q, &image).unwrap();
    match Heap::open(&q, opts().max_size(image.len() as u64)) {
        Err(Error::InvalidOptions { what }) => assert!(what.contains("max_size"), "{what}"),
        other => panic!(
            "a max_size below the heap's chunks: {:?}",
            other.map(|_| ())
        ),
    }
    assert!(
        std::fs::read(&q).unwrap() == image,
        "the refused open changed the file"
    );
    let heap = Heap::open(&q, opts()).unwrap();
    heap.read(|r| {
        assert_eq!(*r.get(r.root::<u64>()?)?, big.offset());
        assert_eq!(r.slice(big)?.len(), 8 << 20);
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
}

/// An aborted transaction leaves the file as it was, its length and its blocks, though it grew
/// the heap (README: an abort changes nothing, the file included; a review found an aborted
/// 200 MiB allocation leaving the file 200 MiB longer until a compaction). A later growth,
/// and the heap's objects, are unaffected.
#[test]
fn an_aborted_growth_leaves_the_file_as_it_was() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grow.heap");
    let heap = Heap::create(&p, Options::new().initial_size(1 << 20).log_size(1 << 20)).unwrap();
    let keep = heap.transaction(|tx| tx.alloc(1u64)).unwrap();
    let disk = |p: &std::path::Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let (len, blocks) = (std::fs::metadata(&p).unwrap().len(), disk(&p));
    for panics in [false, true] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            heap.transaction(|tx| -> txheap::Result<()> {
                let s = tx.alloc_slice_zeroed::<u8>(64 << 20)?; // grows the heap by 64 MiB
                tx.slice_mut(s)?[0] = 1;
                if panics {
                    panic!("abort by panic");
                }
                Err(Error::NoRoot)
            })
        }));
        assert_eq!(r.is_err(), panics);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len, "panics {panics}");
        assert!(
            disk(&p) <= blocks + 4096,
            "panics {panics}: {} -> {}",
            blocks,
            disk(&p)
        );
        assert_eq!(heap.stats().unwrap().file_len, len);
    }
    // The heap goes on: it grows again, and keeps what it holds.
    let s = heap
        .transaction(|tx| tx.alloc_slice(&vec![5u8; 8 << 20]))
        .unwrap();
    let grown = std::fs::metadata(&p).unwrap().len();
    assert!(grown > len, "{len} -> {grown}");
    heap.close().unwrap();
    let heap = Heap::open(&p, Options::new()).unwrap();
    heap.read(|r| {
        assert_eq!(*r.get(keep)?, 1);
        assert!(r.slice(s)?.iter().all(|&b| b == 5));
        Ok(())
    })
    .unwrap();
}

/// A commit that panics after its frame reached the log (the failpoints after the log's write
/// and after its barrier) keeps its growth: its frame may be durable and replay, and the
/// object it wrote in place lies in that growth. A review found the file cut back by the
/// rollback's `end_growth` (the handle is poisoned only at its next lock) and the replayed
/// commit's 8 MiB reading as zeros.
#[cfg(feature = "test-hooks")]
#[test]
fn a_commit_interrupted_after_its_frame_keeps_its_growth() {
    for fp in ["commit.after_log_barrier", "commit.after_log_write"] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.heap");
        let heap =
            Heap::create(&p, Options::new().initial_size(1 << 20).log_size(1 << 20)).unwrap();
        let made = std::cell::Cell::new(None);
        txheap_recovery::sabotage::panic_at(Some(fp));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            heap.transaction(|tx| {
                made.set(Some(tx.alloc_slice(&vec![7u8; 8 << 20])?)); // grows, in place
                Ok(())
            })
        }));
        txheap_recovery::sabotage::panic_at(None);
        assert!(r.is_err(), "{fp}: the failpoint did not fire");
        let s: PSlice<u8> = made.get().unwrap();
        drop(heap);
        let heap = Heap::open(&p, Options::new()).unwrap();
        // Absent, or present whole.
        if let Ok(v) = heap.read(|r| Ok(r.slice(s)?.to_vec())) {
            let sevens = v.iter().filter(|&&b| b == 7).count();
            assert_eq!(sevens, v.len(), "{fp}: the replayed commit's object");
        }
        heap.close().unwrap();
        let report = txheap::inspect::check(&p, &mut |_, _| {}).unwrap();
        assert_eq!(report.verdict, txheap::inspect::Verdict::Clean, "{fp}");
    }
}
