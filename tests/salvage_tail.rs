//! A known limit of `Options::salvage(true)` (found by an independent review, eighth session;
//! docs/ARCHITECTURE.md section 9). A salvage replays a prefix of the frames over heap pages
//! that hold the dropped transactions' bytes. Each record a kept frame writes is whole (the heap
//! header, 16-byte chunk-table entries), but the chunk table's walk is also checked across
//! records: the header's chunk count must match where the chain of entries ends. When a dropped
//! transaction grew the heap, a kept frame can restore the count without the tail entry (the
//! root set for the first time; a regrowth whose tail entry equals the stale bytes, so the trim
//! leaves it out), or the count stays the dropped one while a kept frame rewrote the tail (a new
//! run split it). The salvage is then refused as `Corrupt`. What these tests hold it to: the
//! salvage opens with exactly the kept transactions, or it is refused with `Corrupt` and the
//! file is left byte for byte as it was (so that nothing more is lost), and then
//! `Heap::salvage_read_only` opens it, shows exactly the kept transactions and writes nothing,
//! so the data can be copied out; never a panic, never another count. Each case prints which.

use txheap::{Durability, Error, Heap, Options};
use txheap_recovery::txheap_log::{verified_frame_at, FrameHeader};

const CHUNK: u64 = 256 << 10;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct R {
    count: u64,
    x: txheap::PSlice<u8>,
    y: txheap::PSlice<u8>,
}

fn opts() -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(256 << 10)
        .max_size(64 << 20)
        .durability(Durability::Full)
}

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

/// One transaction that sets the root's count to `n` (and changes nothing else).
fn set_count(heap: &Heap, n: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        tx.get_mut(root)?.count = n;
        Ok(())
    })
    .unwrap();
}

/// Damage the log's frame `k` (0-based, of the frames after the last checkpoint) of the
/// power-cut image of `heap` (under Full every frame is applied to the file already), check that
/// a plain open reports it, and salvage: returns the salvage's count or its error.
fn salvage_at(
    dir: &std::path::Path,
    src: &std::path::Path,
    heap: Heap,
    k: usize,
) -> Result<u64, String> {
    let image = std::fs::read(src).unwrap();
    std::mem::forget(heap); // a power cut: the log keeps its frames
    let fr = frames(&image);
    eprintln!(
        "frames: {:?}",
        fr.iter().map(|(a, h)| (*a, h.txid)).collect::<Vec<_>>()
    );
    let (at, h) = fr[k];
    let mut img = image.clone();
    img[at + 40 + 20] ^= 1;
    let path = dir.join("case.heap");
    std::fs::write(&path, &img).unwrap();
    match Heap::open(&path, opts()) {
        Err(Error::LogDamaged { txid, .. }) if txid == h.txid => {}
        other => return Err(format!("plain open gave {:?}", other.map(|_| ()))),
    }
    match Heap::open(&path, opts().salvage(true)) {
        Ok(heap) => heap
            .read(|r| Ok(r.get(r.root::<R>()?)?.count))
            .map_err(|e| format!("read after salvage: {e}")),
        Err(Error::Corrupt { offset, what }) => {
            assert!(
                std::fs::read(&path).unwrap() == img,
                "a refused salvage changed the file"
            );
            eprintln!("salvage refused (file unchanged): corrupt at {offset}: {what}");
            // The data can still be copied out: the read-only salvage shows the kept
            // transactions, names the dropped ones, and writes nothing.
            let ro = Heap::salvage_read_only(&path).expect("the read-only salvage opens");
            let count = ro.read(|r| Ok(r.get(r.root::<R>()?)?.count)).unwrap();
            assert_eq!(ro.stats().unwrap().salvaged.map(|s| s.0), Some(h.txid));
            assert!(matches!(ro.transaction(|_| Ok(())), Err(Error::ReadOnly)));
            drop(ro);
            assert!(
                std::fs::read(&path).unwrap() == img,
                "the read-only salvage changed the file"
            );
            Err(format!("{REFUSED}; read-only salvage count {count}"))
        }
        Err(e) => Err(format!("salvage refused: {e}")),
    }
}

/// What [`salvage_at`] returns (before the read-only salvage's count) for a salvage refused
/// as `Corrupt` with the file unchanged.
const REFUSED: &str = "refused as Corrupt, file unchanged";

/// The salvage opened with `kept` transactions, or was refused cleanly and the read-only
/// salvage shows `kept` transactions.
fn opened_or_refused(got: Result<u64, String>, kept: u64) {
    match got {
        Ok(c) => assert_eq!(c, kept, "the salvage opened with the wrong transactions"),
        Err(e) => assert_eq!(e, format!("{REFUSED}; read-only salvage count {kept}")),
    }
}

/// The root is set for the first time in a heap that already has a free tail (an allocation
/// before it, checkpointed); the next transaction (the damaged one) grows the heap, which
/// rewrites the free tail's entry; one more vouches for it. The salvage keeps the root's frame,
/// whose whole header restores the old chunk count, while the tail entry holds the dropped
/// growth's extent, which runs past it.
#[test]
fn salvage_after_the_first_root_then_a_dropped_growth() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.heap");
    let heap = Heap::create(&src, opts()).unwrap();
    // Before any root: an object (grows the heap: a table, the object, a free tail).
    heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(2 * CHUNK).map(|_| ()))
        .unwrap();
    heap.checkpoint().unwrap();
    // Kept: the root, first set (the header changes: logged whole, chunk count unchanged).
    set_count(&heap, 1);
    // Damaged: an extent larger than the free tail (growth rewrites the tail's entry).
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let y = tx.alloc_slice_zeroed::<u8>(20 * CHUNK)?;
        let r = tx.get_mut(root)?;
        r.count = 2;
        r.y = y;
        Ok(())
    })
    .unwrap();
    // Vouches for the damaged one.
    set_count(&heap, 3);
    let got = salvage_at(dir.path(), &src, heap, 1);
    opened_or_refused(got, 1);
}

/// The same through the trim: a large object of one chunk, freed, and the free tail cut by a
/// compaction (the table keeps the stale free entry after it). A kept transaction then makes
/// a run (its first new run: no in-place bytes, so its frame is trimmed) and grows the heap
/// exactly as before, so the free entry after the run's chunk equals the stale bytes and is
/// trimmed out of the frame; a dropped growth rewrites that entry. (With whole 64-byte lines
/// logged, the entry was in the frame.)
#[test]
fn salvage_after_a_regrowth_whose_tail_entry_was_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("b.heap");
    let heap = Heap::create(&src, opts()).unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let x = tx.alloc_slice_zeroed::<u8>(100_000)?;
        let r = tx.get_mut(root)?;
        r.count = 1;
        r.x = x;
        Ok(())
    })
    .unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let r = *tx.get(root)?;
        tx.free_slice(r.x)?;
        let r = tx.get_mut(root)?;
        r.count = 2;
        r.x = txheap::PSlice::empty();
        Ok(())
    })
    .unwrap();
    let c = heap.compact().unwrap();
    eprintln!("compact: {c:?}");
    heap.checkpoint().unwrap();
    // Kept: a small object (a new run, growing the heap to the same count as before).
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let x = tx.alloc_slice_zeroed::<u8>(3000)?;
        let r = tx.get_mut(root)?;
        r.count = 3;
        r.x = x;
        Ok(())
    })
    .unwrap();
    // Damaged: growth from the free tail.
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let y = tx.alloc_slice_zeroed::<u8>(10 * CHUNK)?;
        let r = tx.get_mut(root)?;
        r.count = 4;
        r.y = y;
        Ok(())
    })
    .unwrap();
    set_count(&heap, 5);
    let got = salvage_at(dir.path(), &src, heap, 1);
    opened_or_refused(got, 3);
}

/// No kept frame changes the header (so the page keeps the dropped growth's header, whole), but
/// a kept frame rewrote the free tail's entry (a new run split it): the walk then ends at the
/// kept tail, short of the dropped count.
#[test]
fn salvage_after_a_kept_split_of_the_tail_then_a_dropped_growth() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("c.heap");
    let heap = Heap::create(&src, opts()).unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let x = tx.alloc_slice_zeroed::<u8>(2 * CHUNK)?;
        let r = tx.get_mut(root)?;
        r.count = 1;
        r.x = x;
        Ok(())
    })
    .unwrap();
    heap.checkpoint().unwrap();
    // Kept: a small object (a new run from the free tail: the tail's entries change, the
    // header does not).
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let _ = tx.alloc_slice_zeroed::<u8>(3000)?;
        tx.get_mut(root)?.count = 2;
        Ok(())
    })
    .unwrap();
    // Damaged: growth.
    heap.transaction(|tx| {
        let root = tx.root::<R>()?;
        let y = tx.alloc_slice_zeroed::<u8>(20 * CHUNK)?;
        let r = tx.get_mut(root)?;
        r.count = 3;
        r.y = y;
        Ok(())
    })
    .unwrap();
    set_count(&heap, 4);
    let got = salvage_at(dir.path(), &src, heap, 1);
    opened_or_refused(got, 2);
}
