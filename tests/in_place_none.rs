//! Under `Durability::None`, a transaction's in-place bytes (a large object, or the runs of a
//! bulk allocation, from `Options::in_place_min` up) share the barrier of the next flush instead
//! of paying their own: the frame carries an in-place check (the pieces and a digest), recovery
//! replays it only if the heap holds those bytes, and a flush writes voucher frames before it
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

/// Under valgrind (scripts/valgrind.sh sets `TXHEAP_VALGRIND`) the two damage tests whose every
/// case opens a copy of the heap take a sample of their cases: a case took about a second there,
/// and the two tests 106 s of the CI run. The normal suite runs every case.
fn under_valgrind() -> bool {
    std::env::var_os("TXHEAP_VALGRIND").is_some()
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

/// Commit count + 1 and rewrite the whole object `big` with the count's byte (through the log:
/// it is not fresh space).
fn rewrite(heap: &Heap, big: PSlice<u8>) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.count += 1;
        tx.write_slice(big, 0, &vec![r.count as u8; BIG as usize])?;
        r.fill = r.count;
        tx.set(root, r)
    })
    .unwrap();
}

/// The count and whether the object holds its fill byte throughout.
fn state(path: &Path) -> (u64, bool) {
    try_state(path).unwrap()
}

/// [`state`], or the error opening or reading the heap gave.
fn try_state(path: &Path) -> txheap::Result<(u64, bool)> {
    let heap = Heap::open(path, opts())?;
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let whole = root.big.is_empty() || r.slice(root.big)?.iter().all(|&b| b == root.fill as u8);
        Ok((root.count, whole))
    })
}

/// The log's frames in `image` (a heap file's bytes) from the log's start, while their txids
/// follow one another: (file offset, txid, length).
fn log_frames(image: &[u8]) -> Vec<(usize, u64, usize)> {
    use txheap_recovery::txheap_log::verified_frame_at;
    let mut frames: Vec<(usize, u64, usize)> = Vec::new();
    let mut at = txheap_recovery::LOG_OFFSET as usize;
    while let Some(h) = verified_frame_at(&image[at..]) {
        if frames.last().is_some_and(|&(_, t, _)| h.txid != t + 1) {
            break;
        }
        frames.push((at, h.txid, h.frame_len() as usize));
        at += h.frame_len() as usize;
    }
    frames
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
fn a_none_commit_with_in_place_bytes_makes_no_barrier_and_a_flush_makes_three() {
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
    // One `fdatasync` for the bytes and the log, one `msync` for each voucher frame.
    assert_eq!((full - before.0, range - before.1), (1, 2));
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
    assert_eq!(rewrite_flush_and_crash().unwrap(), (3, true));
}

/// The same without the voucher frames (sabotage): recovery checks the first frame against bytes
/// the flush has since overwritten, and cuts the log there: both transactions are lost, and the
/// frame before them is replayed over heap pages that already hold theirs. What that shows
/// depends on which bytes the frames log: with whole lines, the first transaction's state (two
/// acknowledged transactions silently lost); with only the changed 8-byte words, a heap header
/// failing its checksum (`Corrupt`); with the header logged whole, the root's pointer past the
/// end of the heap (`OutOfBounds`). Each is a violation: anything but the acknowledged state.
#[cfg(feature = "test-hooks")]
#[test]
fn without_the_voucher_the_rewrite_cuts_the_log() {
    use txheap_recovery::sabotage;
    let _l = lock();
    sabotage::set(sabotage::PUBLISH_BEFORE_VOUCHER);
    let got = rewrite_flush_and_crash();
    sabotage::set(0);
    assert!(!matches!(got, Ok((3, true))), "{got:?}");
}

/// An in-place object (count 2), a transaction that rewrites it through the log (count 3), a
/// flush, and a crash: the recovered count, and whether the object is whole.
fn rewrite_flush_and_crash() -> txheap::Result<(u64, bool)> {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    step(&heap, false);
    heap.flush().unwrap();
    let big = step(&heap, true); // count 2: the object in place, its frame checked
                                 // Count 3: the file's bytes stop matching the check once the flush writes the rewrite.
    rewrite(&heap, big);
    heap.flush().unwrap();
    let heap_bytes = std::fs::read(&live).unwrap();
    let at = big.offset() as usize;
    assert!(
        heap_bytes[at..at + BIG as usize].iter().all(|&b| b == 3),
        "the flush wrote the rewrite into the file"
    );
    // A crash now: the log still holds both frames; the vouchers make recovery replay both.
    let got = try_state(&image(&live, dir.path(), None));
    drop(heap);
    got
}

/// The root of the tests below: [`Root`] with a second object `x`.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root2 {
    count: u64,
    fill: u64,
    big: PSlice<u8>,
    x: PSlice<u8>,
}

/// (count, fill, whether the object holds its fill byte, x's first byte, whether x is uniform)
/// of the heap at `path`.
#[cfg(feature = "test-hooks")]
fn state2(path: &Path) -> (u64, u64, bool, u8, bool) {
    let heap = Heap::open(path, opts()).unwrap();
    heap.read(|r| {
        let root = *r.get(r.root::<Root2>()?)?;
        let whole = root.big.is_empty() || r.slice(root.big)?.iter().all(|&b| b == root.fill as u8);
        let x = r.slice(root.x)?;
        Ok((
            root.count,
            root.fill,
            whole,
            x[0],
            x.iter().all(|&b| b == x[0]),
        ))
    })
    .unwrap()
}

/// Found by review: a recovery replays a checked frame and a later one that rewrites its object,
/// and is killed after its replay, before its checkpoint; the next recovery must reach the same
/// state. Without the voucher recovery writes before replay, the second recovery's check failed
/// (the object held the rewrite), it cut the log there and replayed only the frame before:
/// `x` was 1 under a root that said 3.
#[cfg(feature = "test-hooks")]
#[test]
fn a_recovery_killed_after_its_replay_recovers_the_same_state() {
    use txheap_recovery::sabotage;
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<Root2>()?;
        let mut r = *tx.get(root)?;
        r.x = tx.alloc_slice(&[0u8; 128])?;
        tx.set(root, r)
    })
    .unwrap();
    heap.checkpoint().unwrap();
    // x = 1, then a 1 MiB object in place (a checked frame), then the object and x rewritten.
    heap.transaction(|tx| {
        let root = tx.root::<Root2>()?;
        let r = *tx.get(root)?;
        tx.write_slice(r.x, 0, &[1u8; 128])
    })
    .unwrap();
    let big = heap
        .transaction(|tx| {
            let root = tx.root::<Root2>()?;
            let mut r = *tx.get(root)?;
            (r.count, r.fill) = (2, 2);
            r.big = tx.alloc_slice(&vec![2u8; BIG as usize])?;
            tx.set(root, r)?;
            Ok(r.big)
        })
        .unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<Root2>()?;
        let mut r = *tx.get(root)?;
        (r.count, r.fill) = (3, 3);
        tx.write_slice(big, 0, &vec![3u8; BIG as usize])?;
        tx.write_slice(r.x, 0, &[3u8; 128])?;
        tx.set(root, r)
    })
    .unwrap();
    // A kill -9 now: the page cache holds everything.
    let img = image(&live, dir.path(), None);
    drop(heap);
    sabotage::panic_at(Some("recovery.after_replay"));
    let r = std::panic::catch_unwind(|| Heap::open(&img, opts()).map(|_| ()));
    sabotage::panic_at(None);
    assert!(r.is_err(), "the failpoint did not fire");
    assert_eq!(state2(&img), (3, 3, true, 3, true));
}

/// Found by review: while a checked frame waited for its vouchers, a frame that fits the log but
/// not beside the room kept for them was refused (`TransactionTooLarge`); a checkpoint makes the
/// room instead.
#[test]
fn a_frame_that_fits_the_log_commits_while_a_check_waits() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let o = opts().log_size(1 << 20);
    let heap = Heap::create(dir.path().join("t.heap"), o).unwrap();
    let big = heap
        .transaction(|tx| {
            let root = tx.root::<Root2>()?;
            let mut r = *tx.get(root)?;
            r.big = tx.alloc_slice(&vec![2u8; 2 << 20])?;
            tx.set(root, r)?;
            Ok(r.big)
        })
        .unwrap();
    let n = (1usize << 20) - 64;
    heap.transaction(|tx| tx.write_slice(big, 0, &vec![5u8; n]))
        .unwrap();
    assert!(heap
        .read(|r| Ok(r.slice(big)?[..n].iter().all(|&b| b == 5)))
        .unwrap());
}

/// Media faults around a checked frame and its vouchers (found missing by review: the
/// media-fault suite's `None` workload never goes in place). One flipped bit in any frame up to
/// the flush's vouchers is reported (`LogDamaged`, both opens, the file unchanged), never a
/// silent cut; in the frame after them (not flushed) it is a torn tail over the flushed state.
#[test]
fn a_flipped_bit_around_a_checked_frame_is_reported_or_a_torn_tail() {
    use txheap::Error;
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    step(&heap, false); // count 1
    heap.checkpoint().unwrap();
    let big = step(&heap, true); // count 2: in place, checked
    rewrite(&heap, big); // count 3
    heap.flush().unwrap(); // vouchers, then the rewrite into the file over the in-place bytes
    step(&heap, false); // count 4: not flushed
    let image = std::fs::read(&live).unwrap();
    drop(heap);
    // The log's frames: count 2, count 3, two vouchers, count 4.
    let frames = log_frames(&image);
    assert_eq!(frames.len(), 5, "{frames:?}");
    let path = dir.path().join("case.heap");
    let mut cases = 0;
    for (k, &(at, txid, len)) in frames.iter().enumerate() {
        let positions = if under_valgrind() {
            vec![17, len - 1]
        } else {
            vec![1, 17, 25, 38, 40 + 3, len - 1]
        };
        for pos in positions.into_iter().filter(|&p| p < len) {
            let mut img = image.clone();
            img[at + pos] ^= 0x10;
            for read_only in [true, false] {
                cases += 1;
                std::fs::write(&path, &img).unwrap();
                let r = if read_only {
                    Heap::open_read_only(&path)
                } else {
                    Heap::open(&path, opts())
                };
                let what = format!("frame {k} (txid {txid}), byte {pos}, read-only {read_only}");
                if k < 4 {
                    match r {
                        Err(Error::LogDamaged { txid: t, .. }) => {
                            assert_eq!(t, txid, "{what}");
                            assert!(std::fs::read(&path).unwrap() == img, "{what}: changed");
                        }
                        Err(e) => panic!("{what}: {e}"),
                        Ok(h) => {
                            drop(h);
                            panic!("{what}: opened, no damage reported");
                        }
                    }
                } else {
                    let h = r.unwrap_or_else(|e| panic!("{what}: {e}"));
                    drop(h);
                    assert_eq!(state(&path), (3, true), "{what}");
                }
            }
        }
    }
    assert!(cases >= if under_valgrind() { 20 } else { 50 }, "{cases}");
}

/// `inspect::read_log` (and `txheap dump-log`) shows a frame's in-place check, and the flush's
/// two vouchers as empty frames whose evidence reaches the frame before each.
#[test]
fn the_log_shows_the_check_and_the_vouchers() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    step(&heap, false);
    heap.checkpoint().unwrap();
    let big = step(&heap, true);
    let log = txheap::inspect::read_log(&live).unwrap();
    assert_eq!(log.frames.len(), 1);
    let bytes: u64 = log.frames[0].in_place.iter().map(|p| p.1).sum();
    assert!(bytes >= BIG, "{:?}", log.frames[0].in_place);
    assert!(log.frames[0]
        .in_place
        .iter()
        .any(|&(o, l)| o <= big.offset() && big.offset() < o + l));
    heap.flush().unwrap();
    let log = txheap::inspect::read_log(&live).unwrap();
    assert_eq!(log.frames.len(), 3);
    for (k, f) in log.frames.iter().enumerate().skip(1) {
        assert!(
            f.ranges.is_empty() && f.in_place.is_empty(),
            "frame {k}: {f:?}"
        );
        assert_eq!(f.durable_txid, log.frames[k - 1].txid, "frame {k}");
    }
    drop(heap);
}

/// A lost sector (512 bytes of zeros) anywhere from the checked frame to the end of the flush's
/// vouchers, with no commit after them: the open reports `LogDamaged` or recovers everything
/// flushed (a lost second voucher), never fewer transactions. The vouchers lie in different
/// pages of the log, so that one lost sector cannot take both (two adjacent vouchers shared a
/// sector, and losing it made recovery ask the check of bytes the flush had changed: the log
/// was cut under the flushed transactions, silently).
#[test]
fn a_lost_sector_under_the_vouchers_is_reported_never_a_silent_cut() {
    use txheap::Error;
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let path = dir.path().join("case.heap");
    let mut cases = 0;
    // Frames of different lengths before the vouchers put them at different places in a sector.
    for pad in 0..if under_valgrind() { 2 } else { 6u64 } {
        let _ = std::fs::remove_file(&live);
        let heap = Heap::create(&live, opts()).unwrap();
        step(&heap, false); // count 1
        heap.checkpoint().unwrap();
        for _ in 0..pad {
            step(&heap, false);
        }
        let big = step(&heap, true); // checked
        rewrite(&heap, big);
        heap.flush().unwrap(); // vouchers, then the rewrite into the file
        let count = pad + 3;
        let image = std::fs::read(&live).unwrap();
        drop(heap);
        let frames = log_frames(&image);
        let at = frames.last().map_or(0, |&(a, _, len)| a + len);
        let n = frames.len();
        assert_eq!(n as u64, pad + 4, "{frames:?}");
        let (v1, v2) = (frames[n - 2].0, frames[n - 1].0);
        assert_ne!(
            v1 / 4096,
            v2 / 4096,
            "both vouchers in one page: {frames:?}"
        );
        // Every sector of the checked frame, and from the last of the rewrite's (1 MiB)
        // through the vouchers.
        let (checked, rewrite_end) = (frames[n - 4], v1);
        let sectors = (checked.0 / 512..(checked.0 + checked.2).div_ceil(512))
            .chain((rewrite_end - 1) / 512..at.div_ceil(512));
        for sector in sectors {
            let mut img = image.clone();
            img[sector * 512..(sector + 1) * 512].fill(0);
            std::fs::write(&path, &img).unwrap();
            cases += 1;
            let what = format!("pad {pad}, sector {sector} (vouchers at {v1}, {v2})");
            match Heap::open(&path, opts()) {
                Err(Error::LogDamaged { .. }) => {}
                Err(e) => panic!("{what}: {e}"),
                Ok(h) => {
                    drop(h);
                    assert_eq!(state(&path), (count, true), "{what}: a silent cut");
                }
            }
        }
    }
    assert!(cases >= 12, "{cases}");
}
