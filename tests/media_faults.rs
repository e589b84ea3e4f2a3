//! Media faults in the log (issue 12): a bit flipped in a durable frame that a later frame
//! proves durable is reported by name and leaves the file unchanged, by both opens; a flip in
//! the tail after the last barrier is a torn tail (the committed prefix opens, as before); a
//! salvage opens the prefix knowingly. With the `test-hooks` feature, the same checks are run
//! with recovery ignoring the durability evidence and must then find silent losses.

use std::path::{Path, PathBuf};

use txheap::{Durability, Error, Heap, Options};
use txheap_recovery::txheap_log::{verified_frame_at, FrameHeader};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    count: u64,
    last: txheap::PPtr<[u8; 100]>,
}

const TXNS: u64 = 12;
/// Under `None`, a flush after this many commits: the frames up to it are durable.
const FLUSHED: u64 = 6;

fn opts(d: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(64 << 10)
        .max_size(64 << 20)
        .durability(d)
}

fn scratch() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// The image a power cut leaves after `TXNS` acknowledged commits whose frames are all in the
/// log (copied while the heap is open: the log's pages are in the file, no checkpoint ran).
fn crashed_image(dir: &Path, d: Durability) -> Vec<u8> {
    let path = dir.join(format!("src-{d:?}.heap"));
    let heap = Heap::create(&path, opts(d)).unwrap();
    for i in 1..=TXNS {
        commit(&heap, i);
        if d == Durability::None && i == FLUSHED {
            heap.flush().unwrap();
        }
    }
    let image = std::fs::read(&path).unwrap();
    std::mem::forget(heap); // no close: the log keeps its frames, as after a power cut
    image
}

/// The frames of the current generation in the log, in order: (file offset, header).
fn frames(image: &[u8]) -> Vec<(usize, FrameHeader)> {
    let log = txheap_recovery::LOG_OFFSET as usize;
    let mut out = Vec::new();
    let mut at = log;
    while let Some(h) = verified_frame_at(&image[at..]) {
        if out.last().is_some_and(|(_, p): &(usize, FrameHeader)| {
            h.txid != p.txid + 1 || h.generation != p.generation
        }) {
            break;
        }
        out.push((at, h));
        at += h.frame_len() as usize;
    }
    out
}

/// Bit positions inside a frame: one in each header field, and in the payload.
fn flip_positions(h: &FrameHeader) -> Vec<(&'static str, usize)> {
    let len = h.frame_len() as usize;
    vec![
        ("magic", 1),
        ("range_count", 4),
        ("generation", 8),
        ("txid", 16),
        ("durable_txid", 24),
        ("payload_len", 33),
        ("check", 38),
        ("range header", 40 + 3),
        ("payload", 40 + 20),
        ("last byte", len - 1),
    ]
}

fn count(heap: &Heap) -> u64 {
    heap.read(|r| Ok(r.get(r.root::<Root>()?)?.count)).unwrap()
}

/// Whether frame `k` (1-based) with a flipped bit must be reported as damaged: a later frame
/// vouches for it (under `Full` every later frame; under `None` those after the flush). The
/// others are the tail after the last barrier.
fn must_report(d: Durability, k: u64) -> bool {
    match d {
        Durability::Full => k < TXNS,
        Durability::None => k <= FLUSHED,
    }
}

/// Run every case; return the violations found (empty when the rule holds).
fn violations(d: Durability) -> (Vec<String>, u64) {
    let dir = scratch();
    let image = crashed_image(dir.path(), d);
    let frames = frames(&image);
    assert_eq!(
        frames.len() as u64,
        TXNS,
        "the log must hold every commit's frame"
    );
    let path = dir.path().join("case.heap");
    let mut out = Vec::new();
    let mut cases = 0;
    for (i, (at, h)) in frames.iter().enumerate() {
        let k = i as u64 + 1;
        for (field, pos) in flip_positions(h) {
            cases += 1;
            let mut img = image.clone();
            img[at + pos] ^= 0x10;
            let what = format!("{d:?}, frame {k}, {field} (byte {pos})");
            for read_only in [true, false] {
                std::fs::write(&path, &img).unwrap();
                let r = if read_only {
                    Heap::open_read_only(&path)
                } else {
                    Heap::open(&path, opts(d))
                };
                let mode = if read_only { "read-only" } else { "writable" };
                match (must_report(d, k), r) {
                    (true, Err(Error::LogDamaged { txid, .. })) => {
                        if txid != h.txid {
                            out.push(format!("{what}, {mode}: damage named txid {txid}, not {}", h.txid));
                        }
                        if std::fs::read(&path).unwrap() != img {
                            out.push(format!("{what}, {mode}: refused but changed the file"));
                        }
                    }
                    (true, Ok(heap)) => out.push(format!(
                        "{what}, {mode}: opened with {} of {TXNS} acknowledged transactions, no error",
                        count(&heap)
                    )),
                    (false, Ok(heap)) => {
                        // A torn tail: under None the file's heap pages are at the flush, so the
                        // prefix is exact; under Full the heap pages may hold the last frame's
                        // applied bytes already (written back before the cut).
                        let c = count(&heap);
                        let ok = match d {
                            Durability::None => c == k - 1,
                            Durability::Full => c >= k - 1,
                        };
                        if !ok {
                            out.push(format!("{what}, {mode}: tail flip opened with count {c}"));
                        }
                        drop(heap);
                    }
                    (_, Err(e)) => out.push(format!("{what}, {mode}: unexpected error {e}")),
                }
            }
        }
    }
    (out, cases)
}

fn check_salvage() {
    let d = Durability::None;
    let dir = scratch();
    let image = crashed_image(dir.path(), d);
    let frames = frames(&image);
    let (at, h) = frames[3]; // frame 4: vouched for by frames 7..12 (flushed at 6)
    let mut img = image.clone();
    img[at + 50] ^= 1;
    let path = dir.path().join("salvage.heap");
    std::fs::write(&path, &img).unwrap();
    let e = Heap::open(&path, opts(d)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("damaged") && msg.contains("salvage") && msg.contains(&format!("{}", h.txid)),
        "{msg}"
    );
    let heap = Heap::open(&path, opts(d).salvage(true)).unwrap();
    let s = heap.stats().unwrap();
    assert_eq!(s.salvaged, Some((h.txid, frames[11].1.txid)));
    assert_eq!(count(&heap), 3);
    heap.close().unwrap();
    // The salvage stuck: a plain open now works, and the heap takes new commits.
    let heap = Heap::open(&path, opts(d)).unwrap();
    assert_eq!(heap.stats().unwrap().salvaged, None);
    assert_eq!(count(&heap), 3);
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        tx.get_mut(root)?.count = 100;
        Ok(())
    })
    .unwrap();
}

#[test]
fn damaged_durable_frames_are_reported_never_dropped() {
    let mut total = 0;
    for d in [Durability::Full, Durability::None] {
        let (v, cases) = violations(d);
        assert!(
            v.is_empty(),
            "{} violations, first: {:#?}",
            v.len(),
            &v[..v.len().min(5)]
        );
        total += cases;
    }
    println!(
        "media faults: {total} flipped-bit cases, each opened read-only and writable, 0 violations"
    );
    check_salvage();
    #[cfg(feature = "test-hooks")]
    {
        // The checks can fail: with recovery ignoring the evidence they find silent losses.
        txheap_recovery::sabotage::set(txheap_recovery::sabotage::IGNORE_DURABILITY_EVIDENCE);
        let (v, _) = violations(Durability::Full);
        txheap_recovery::sabotage::set(0);
        assert!(
            !v.is_empty(),
            "ignoring the durability evidence went unnoticed"
        );
        println!(
            "media faults, recovery ignoring the evidence: caught ({} violations; first: {})",
            v.len(),
            v[0]
        );
    }
}

#[test]
fn v1_files_are_refused_as_older() {
    let dir = scratch();
    let path: PathBuf = dir.path().join("v1.heap");
    Heap::create(&path, opts(Durability::Full))
        .unwrap()
        .close()
        .unwrap();
    let mut img = std::fs::read(&path).unwrap();
    for slot in [0usize, 4096] {
        if img[slot..slot + 4] != [0; 4] {
            img[slot + 8..slot + 12].copy_from_slice(&1u32.to_le_bytes());
            let crc = crc32fast::hash(&img[slot..slot + 124]);
            img[slot + 124..slot + 128].copy_from_slice(&crc.to_le_bytes());
        }
    }
    std::fs::write(&path, &img).unwrap();
    let e = Heap::open(&path, opts(Durability::Full)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: 1,
                supported: 3
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("older"), "{e}");
}

#[test]
fn a_damaged_superblock_slot_is_reported_though_the_open_succeeds() {
    let dir = scratch();
    let path = dir.path().join("sb.heap");
    let heap = Heap::create(&path, opts(Durability::Full)).unwrap();
    heap.transaction(|tx| tx.root::<Root>().map(|_| ()))
        .unwrap();
    heap.close().unwrap(); // the checkpoint writes slot B: both slots are valid now
    let heap = Heap::open_read_only(&path).unwrap();
    assert_eq!(heap.stats().unwrap().superblock_damage, None);
    drop(heap);
    let mut img = std::fs::read(&path).unwrap();
    img[20] ^= 4; // slot A, the older one, in its seq field
    std::fs::write(&path, &img).unwrap();
    for read_only in [true, false] {
        let heap = if read_only {
            Heap::open_read_only(&path).unwrap()
        } else {
            Heap::open(&path, opts(Durability::Full)).unwrap()
        };
        let d = heap.stats().unwrap().superblock_damage;
        assert!(
            d.as_deref().is_some_and(|d| d.contains("offset 0")),
            "{d:?}"
        );
        assert_eq!(count(&heap), 0);
    }
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Extents {
    count: u64,
    x: txheap::PSlice<u8>,
    y: txheap::PSlice<u8>,
    z: txheap::PSlice<u8>,
    small: txheap::PPtr<[u8; 100]>,
}

/// Run `steps` transactions (step `i` sets the root's count to `i`, then calls `step`), with a
/// checkpoint after step `checkpoint` (0: none), keep the log as a power cut would, then damage in turn each frame a later one vouches for (all but the
/// last, under `Full`) and salvage: the salvage must open, show the count of the last kept
/// transaction, and take a new commit. Returns the failures.
fn salvage_each_frame(
    steps: u64,
    checkpoint: u64,
    step: impl Fn(&mut txheap::Tx<'_>, &mut Extents, u64) -> txheap::Result<()>,
) -> Vec<String> {
    let d = Durability::Full;
    let dir = scratch();
    let src = dir.path().join("src.heap");
    let heap = Heap::create(&src, opts(d).initial_size(256 << 10)).unwrap();
    for i in 1..=steps {
        heap.transaction(|tx| {
            let root = tx.root::<Extents>()?;
            let mut r = *tx.get(root)?;
            r.count = i;
            step(tx, &mut r, i)?;
            tx.set(root, r)
        })
        .unwrap();
        if i == checkpoint {
            heap.checkpoint().unwrap();
        }
    }
    let image = std::fs::read(&src).unwrap();
    std::mem::forget(heap); // no close: the log keeps its frames, as after a power cut
    let frames = frames(&image);
    assert_eq!(
        frames.len() as u64,
        steps - checkpoint,
        "the frames after the checkpoint"
    );
    let path = dir.path().join("case.heap");
    let mut failures = Vec::new();
    for (i, &(at, h)) in frames.iter().enumerate().take(frames.len() - 1) {
        let kept = checkpoint + i as u64;
        let mut img = image.clone();
        img[at + 40 + 20] ^= 1;
        std::fs::write(&path, &img).unwrap();
        match Heap::open(&path, opts(d)) {
            Err(Error::LogDamaged { txid, .. }) if txid == h.txid => {}
            other => {
                failures.push(format!(
                    "frame {}: plain open gave {:?}",
                    i + 1,
                    other.map(|_| ())
                ));
                continue;
            }
        }
        let heap = match Heap::open(&path, opts(d).salvage(true)) {
            Ok(h) => h,
            Err(e) => {
                failures.push(format!("frame {}: salvage refused: {e}", i + 1));
                continue;
            }
        };
        // The count is in every frame, so the kept frames set it. (With none kept the heap
        // pages are as found, and may hold every dropped transaction, written back before the
        // cut: a salvage is a knowing loss, not a clean prefix.)
        let c = heap
            .read(|r| Ok(r.get(r.root::<Extents>()?)?.count))
            .unwrap();
        if i > 0 && c != kept {
            failures.push(format!(
                "frame {}: salvage opened count {c}, not {kept}",
                i + 1
            ));
        }
        // The salvaged heap takes new commits, allocation included.
        if let Err(e) = heap.transaction(|tx| {
            let root = tx.root::<Extents>()?;
            let p = tx.alloc([7u8; 100])?;
            tx.get_mut(root)?.count = 1000;
            tx.free(p)
        }) {
            failures.push(format!("frame {}: commit after salvage: {e}", i + 1));
        }
    }
    failures
}

/// Salvage over frames that log only the units they changed (review 3 of the seventh session):
/// the heap pages hold bytes of the transactions a salvage drops, so a kept frame that logged
/// only part of a checksummed record would leave it failing its check. The heap header when
/// the root is first set (its chunk count, changed later by a dropped growth, is outside the
/// changed words).
#[test]
fn salvage_keeps_the_heap_header_whole() {
    let failures = salvage_each_frame(14, 0, |tx, r, i| {
        match i % 4 {
            // The root only (the first: only the header's root words and the root change).
            1 => {}
            // A large extent, growing the heap (the header's chunk count, table entries).
            2 => {
                if !r.x.is_empty() {
                    tx.free_slice(r.x)?;
                }
                r.x = tx.alloc_slice_zeroed::<u8>(i * (300 << 10))?;
            }
            // Free the extent (its entry changes back to free, merging).
            3 => {
                tx.free_slice(r.x)?;
                r.x = txheap::PSlice::empty();
            }
            // A small object, replacing the last.
            _ => {
                if !r.small.is_null() {
                    tx.free(r.small)?;
                }
                r.small = tx.alloc([i as u8; 100])?;
            }
        }
        Ok(())
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The same for a chunk table entry: after a checkpoint, a kept frame takes a new run's chunk
/// from the front of a free extent, which writes a free entry for the rest whose size word was
/// zero already (only its first word, chunk count and check, changes); a dropped frame then
/// allocates that rest, setting the entry's size word. The entry must be logged whole.
#[test]
fn salvage_keeps_chunk_table_entries_whole() {
    const CHUNK: u64 = 256 << 10;
    let failures = salvage_each_frame(5, 2, |tx, r, i| {
        match i {
            // A small object (its run's chunk first), then an extent of six chunks and one
            // after it (so that the six are not the heap's free tail once freed).
            1 => {
                r.small = tx.alloc([1u8; 100])?;
                r.x = tx.alloc_slice_zeroed::<u8>(6 * CHUNK)?;
                r.z = tx.alloc_slice_zeroed::<u8>(CHUNK)?;
            }
            // Free the six; then a checkpoint.
            2 => {
                tx.free_slice(r.x)?;
                r.x = txheap::PSlice::empty();
            }
            // An object of a new size class: its run takes the first of the six, and the other
            // five get a free entry whose size word stays zero.
            3 => {
                tx.alloc([3u8; 3000])?;
            }
            // Something else, in the first small object's run (the frame to damage).
            4 => {
                tx.free(r.small)?;
                r.small = tx.alloc([4u8; 100])?;
            }
            // The other five: their entry becomes large, with its size word.
            _ => r.y = tx.alloc_slice_zeroed::<u8>(5 * CHUNK - 4096)?,
        }
        Ok(())
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The log-start witness in `image`, if either superblock slot holds one: (generation, txid).
fn witness_in(image: &[u8]) -> Option<(u64, u64)> {
    [txheap_recovery::Slot::A, txheap_recovery::Slot::B]
        .into_iter()
        .find_map(|slot| {
            let at = txheap_recovery::Witness::offset(slot) as usize;
            let bytes = image[at..at + txheap_recovery::WITNESS_LEN]
                .try_into()
                .unwrap();
            txheap_recovery::Witness::decode(bytes).map(|w| (w.generation, w.txid))
        })
}

/// A lost write of the first frame after a checkpoint (or of a new file's first frame): its
/// sector reads as it did before, which is the checkpoint's sentinel, a verifying frame at
/// the log's start and so a clean end. Before the log-start witness, such a file opened as an
/// empty log: every acknowledged transaction of the generation gone, without a word. Now the
/// witness, written once a later frame vouches for the first, makes it `LogDamaged`, from
/// both opens, with the file unchanged; a salvage opens it knowingly. Under `Full` the
/// witness comes with the second frame (the first that vouches for the first one); under `None`
/// with the flush that acknowledges the first frame.
#[test]
fn a_lost_write_of_the_first_frame_is_reported_never_an_empty_log() {
    let log = txheap_recovery::LOG_OFFSET as usize;
    for d in [Durability::Full, Durability::None] {
        let dir = scratch();
        let path = dir.path().join(format!("src-{d:?}.heap"));
        let heap = Heap::create(&path, opts(d)).unwrap();
        let before = std::fs::read(&path).unwrap();
        commit(&heap, 1);
        // The first frame alone, not known durable: no witness yet (one written before the
        // frame is durable would outlive a crash that the frame did not).
        assert_eq!(witness_in(&std::fs::read(&path).unwrap()), None, "{d:?}");
        if d == Durability::None {
            // The flush acknowledges it: the witness is written before the flush returns, so
            // a lost first frame is damage even with no frame after it.
            heap.flush().unwrap();
            let image = std::fs::read(&path).unwrap();
            assert_eq!(witness_in(&image), Some((1, 1)));
            let mut img = image.clone();
            img[log..log + 512].copy_from_slice(&before[log..log + 512]);
            let lost = dir.path().join("lost-alone.heap");
            std::fs::write(&lost, &img).unwrap();
            let e = Heap::open(&lost, opts(d)).unwrap_err();
            assert!(
                matches!(e, Error::LogDamaged { txid: 1, last_txid: 1, voucher_offset, .. }
                    if voucher_offset < log as u64),
                "{e}"
            );
            assert!(e.to_string().contains("log-start witness"), "{e}");
        }
        commit(&heap, 2);
        commit(&heap, 3);
        if d == Durability::None {
            heap.flush().unwrap();
        }
        let image = std::fs::read(&path).unwrap();
        std::mem::forget(heap); // no close: the log keeps its frames, as after a power cut
        assert_eq!(witness_in(&image), Some((1, 1)), "{d:?}");

        // Undamaged, the three transactions open.
        let good = dir.path().join("good.heap");
        std::fs::write(&good, &image).unwrap();
        assert_eq!(count(&Heap::open(&good, opts(d)).unwrap()), 3, "{d:?}");

        // The log's first sector lost: it reads as before the first commit (the sentinel).
        // The heap's pages as before any commit too (none was written back before the cut),
        // so that an open that misses the frames shows the loss.
        // (Bytes the file grew by since are zeros: the growth did not reach the disk either.)
        let mut img = image.clone();
        img[log..log + 512].copy_from_slice(&before[log..log + 512]);
        heap_pages_as(&mut img, &before);
        let lost = dir.path().join("lost.heap");
        std::fs::write(&lost, &img).unwrap();
        for e in [
            Heap::open(&lost, opts(d)).unwrap_err(),
            Heap::open_read_only(&lost).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    Error::LogDamaged {
                        txid: 1,
                        last_txid: 3,
                        ..
                    }
                ),
                "{d:?}: {e}"
            );
        }
        assert!(
            std::fs::read(&lost).unwrap() == img,
            "{d:?}: a refused open wrote"
        );
        let heap = Heap::open(&lost, opts(d).salvage(true)).unwrap();
        assert_eq!(heap.stats().unwrap().salvaged, Some((1, 3)), "{d:?}");
        assert_eq!(count_or_zero(&heap), 0, "{d:?}");
        heap.close().unwrap();

        // Without the witness (a file written before it existed) the same loss reads as an
        // empty log: the gap the witness closes.
        let slot_len = txheap_recovery::SUPERBLOCK_SLOT_LEN as usize;
        for slot in [0, slot_len] {
            let at = slot + txheap_recovery::WITNESS_SLOT_OFFSET as usize;
            img[at..at + txheap_recovery::WITNESS_LEN].fill(0);
        }
        std::fs::write(&lost, &img).unwrap();
        assert_eq!(
            count_or_zero(&Heap::open(&lost, opts(d)).unwrap()),
            0,
            "{d:?}"
        );
    }
}

/// The root's count, 0 when no transaction ever made the root.
fn count_or_zero(heap: &Heap) -> u64 {
    heap.read(|r| match r.root::<Root>() {
        Ok(root) => Ok(r.get(root)?.count),
        Err(Error::NoRoot) => Ok(0),
        Err(e) => Err(e),
    })
    .unwrap()
}

/// A damaged *current* superblock slot (one bit) whose generation already has frames in the
/// log. The open falls back to the older slot, whose scan used to take the newer generation's
/// first frame at the log's start for the sentinel, a clean end: with the heap pages as the
/// checkpoint left them (applied pages are not durable until the next one), three acknowledged
/// transactions were gone without a word. A verifying frame at the log's start of a newer
/// generation than the superblock's now refuses both opens (`LogDamaged`, naming the damaged
/// slot), with the file unchanged; a salvage opens the older state knowingly, and its
/// checkpoint steps past the lost generation, so no later crash replays its stale frames.
#[test]
fn a_damaged_current_superblock_over_its_frames_is_reported_never_a_silent_fallback() {
    let log = txheap_recovery::LOG_OFFSET as usize;
    for d in [Durability::Full, Durability::None] {
        let dir = scratch();
        let path = dir.path().join(format!("src-{d:?}.heap"));
        let heap = Heap::create(&path, opts(d)).unwrap();
        commit(&heap, 1);
        heap.checkpoint().unwrap();
        let checkpointed = std::fs::read(&path).unwrap();
        for i in 2..=4 {
            commit(&heap, i);
        }
        heap.flush().unwrap();
        let image = std::fs::read(&path).unwrap();
        std::mem::forget(heap); // a power cut: the log's frames are durable
        let current = txheap_recovery::select_superblock(&txheap_recovery::MemStorage::from_bytes(
            image[..log].to_vec(),
        ))
        .unwrap()
        .1;

        // The current slot loses one bit; the heap pages are as the checkpoint left them.
        let mut img = image.clone();
        img[current.offset() as usize + 20] ^= 1;
        heap_pages_as(&mut img, &checkpointed);
        let p = dir.path().join("flipped.heap");
        std::fs::write(&p, &img).unwrap();
        for e in [
            Heap::open(&p, opts(d)).unwrap_err(),
            Heap::open_read_only(&p).unwrap_err(),
        ] {
            assert!(
                matches!(e, Error::LogDamaged { txid: 2, last_txid: 4, voucher_offset, .. }
                    if voucher_offset == current.offset()),
                "{d:?}: {e}"
            );
            assert!(e.to_string().contains("damaged superblock slot"), "{e}");
        }
        assert!(
            std::fs::read(&p).unwrap() == img,
            "{d:?}: a refused open wrote"
        );

        // A salvage opens the checkpointed state, knowingly.
        let heap = Heap::open(&p, opts(d).salvage(true)).unwrap();
        assert_eq!(heap.stats().unwrap().salvaged, Some((2, 4)), "{d:?}");
        assert_eq!(count(&heap), 1, "{d:?}");
        // Two commits on it, then a power cut: they, not the lost generation's frames, replay.
        commit(&heap, 5);
        commit(&heap, 6);
        heap.flush().unwrap();
        let after = std::fs::read(&p).unwrap();
        std::mem::forget(heap);
        let q = dir.path().join("after.heap");
        std::fs::write(&q, &after).unwrap();
        assert_eq!(count(&Heap::open(&q, opts(d)).unwrap()), 6, "{d:?}");
    }
}

/// A frame: a 100-byte object of `i`s, linked from the root, whose count becomes `i`.
fn commit(heap: &Heap, i: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let obj = tx.alloc([i as u8; 100])?;
        let r = tx.get_mut(root)?;
        r.count = i;
        r.last = obj;
        Ok(())
    })
    .unwrap()
}

/// `img`'s heap pages (from the heap header on, with `opts`' 64 KiB log) as they were in the
/// earlier image `earlier`, and zeros where the file grew since: a power cut before any page
/// written back since then reached the disk.
fn heap_pages_as(img: &mut [u8], earlier: &[u8]) {
    let heap_at = txheap_recovery::LOG_OFFSET as usize + (64 << 10);
    img[heap_at..earlier.len()].copy_from_slice(&earlier[heap_at..]);
    img[earlier.len()..].fill(0);
}
