//! Under `Durability::None`, a transaction's in-place bytes (a large object, or the runs of a
//! bulk allocation, from `Options::in_place_min` up) share the barrier of the next flush instead
//! of paying their own: the frame carries an in-place check (the pieces and a digest), recovery
//! replays it only if the heap holds those bytes, and a flush writes a voucher frame before it
//! changes heap pages, so that later frames' bytes over the in-place ones never fail the check
//! (docs/ARCHITECTURE.md section 3, step 5a).
//!
//! The power cuts here are made by hand: the file as the page cache holds it (what a kill -9
//! leaves) is copied, and the in-place bytes are zeroed in the copy (the pages that did not
//! reach the disk). The crash suite's simulator does the same on every protocol step.

use std::path::{Path, PathBuf};

use txheap::{Durability, Heap, Options, PSlice};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    count: u64,
    /// The byte the object was filled with.
    fill: u64,
    big: PSlice<u8>,
}

/// The sabotage mask (feature `test-hooks`) is process-wide: every test here takes this lock.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 1 MiB object: in place (from 64 KiB up).
const BIG: u64 = 1 << 20;

fn opts() -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(4 << 20)
        .max_size(64 << 20)
        .in_place_min(64 << 10)
        .durability(Durability::None)
}

fn barriers(heap: &Heap) -> (u64, u64) {
    let io = heap.stats().unwrap().io;
    (io.full_barriers, io.range_barriers)
}

/// Commit one transaction: count + 1, and (when `big`) a new 1 MiB object filled with the
/// count's byte, linked from the root. Returns the object.
fn step(heap: &Heap, big: bool) -> PSlice<u8> {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.count += 1;
        if big {
            r.big = tx.alloc_slice(&vec![r.count as u8; BIG as usize])?;
            r.fill = r.count;
        }
        tx.set(root, r)?;
        Ok(r.big)
    })
    .unwrap()
}

/// The count and whether the object holds its fill byte throughout.
fn state(path: &Path) -> (u64, bool) {
    let heap = Heap::open(path, opts()).unwrap();
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let whole = root.big.is_empty() || r.slice(root.big)?.iter().all(|&b| b == root.fill as u8);
        Ok((root.count, whole))
    })
    .unwrap()
}

/// A copy of the live file (the page cache's bytes: what a kill -9 leaves), with `zeroed`
/// bytes cleared (pages a power cut lost).
fn image(live: &Path, dir: &Path, zeroed: Option<PSlice<u8>>) -> PathBuf {
    let copy = dir.join("image.heap");
    std::fs::copy(live, &copy).unwrap();
    if let Some(s) = zeroed {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        f.write_all_at(&vec![0u8; s.len() as usize], s.offset())
            .unwrap();
    }
    copy
}

#[test]
fn a_none_commit_with_in_place_bytes_makes_no_barrier_and_a_flush_makes_two() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("h.heap"), opts()).unwrap();
    step(&heap, false);
    heap.flush().unwrap();
    let before = barriers(&heap);
    step(&heap, true);
    // (Before: one `fdatasync` for the in-place bytes, in the commit.)
    assert_eq!(barriers(&heap), before, "the commit made a barrier");
    heap.flush().unwrap();
    let (full, range) = barriers(&heap);
    // One `fdatasync` for the bytes and the log, one `msync` of the voucher frame.
    assert_eq!((full - before.0, range - before.1), (1, 1));
    // A second flush has nothing to do.
    heap.flush().unwrap();
    assert_eq!(barriers(&heap), (full, range));
}

#[test]
fn a_frame_whose_in_place_bytes_were_lost_is_the_torn_end() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    step(&heap, false);
    heap.flush().unwrap();
    let big = step(&heap, true); // count 2, in place, no barrier
    step(&heap, false); // count 3: after it in the log
                        // Every byte reached the disk: both transactions replay.
    assert_eq!(state(&image(&live, dir.path(), None)), (3, true));
    // The frames did, the object's bytes did not: the log ends before count 2, and nothing
    // torn is replayed (the old code replayed the frame over zeros: an object of zeros).
    assert_eq!(state(&image(&live, dir.path(), Some(big))), (1, true));
    drop(heap);
}

#[test]
fn after_a_flush_later_frames_over_the_in_place_bytes_still_replay() {
    let _l = lock();
    assert_eq!(rewrite_flush_and_crash(), (3, true));
}

/// The same without the voucher frame (sabotage): recovery checks the first frame against bytes
/// the flush has since overwritten, and cuts the log there: both transactions are lost.
#[cfg(feature = "test-hooks")]
#[test]
fn without_the_voucher_the_rewrite_cuts_the_log() {
    use txheap_recovery::sabotage;
    let _l = lock();
    sabotage::set(sabotage::PUBLISH_BEFORE_VOUCHER);
    let got = rewrite_flush_and_crash();
    sabotage::set(0);
    assert_eq!(got.0, 1, "{got:?}");
}

/// An in-place object (count 2), a transaction that rewrites it through the log (count 3), a
/// flush, and a crash: the recovered count, and whether the object is whole.
fn rewrite_flush_and_crash() -> (u64, bool) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    step(&heap, false);
    heap.flush().unwrap();
    let big = step(&heap, true); // count 2: the object in place, its frame checked
                                 // count 3: rewrite the object in place of its bytes (logged), so the file's bytes stop
                                 // matching the check once the flush writes them.
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.count += 1;
        tx.write_slice(big, 0, &vec![r.count as u8; BIG as usize])?;
        r.fill = r.count;
        tx.set(root, r)
    })
    .unwrap();
    heap.flush().unwrap();
    let heap_bytes = std::fs::read(&live).unwrap();
    let at = big.offset() as usize;
    assert!(
        heap_bytes[at..at + BIG as usize].iter().all(|&b| b == 3),
        "the flush wrote the rewrite into the file"
    );
    // A crash now: the log still holds both frames; the voucher makes recovery replay both.
    let got = state(&image(&live, dir.path(), None));
    drop(heap);
    got
}
