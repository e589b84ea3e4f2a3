//! The log-start witness (docs/ARCHITECTURE.md section 3, step 5b) beside the paths that start
//! a generation, the fallback to an older superblock slot, and flushes. Written by an
//! independent review of the witness (ninth session); the first three tests failed on its first
//! version and pass since the fixes named below.
//!
//! - `a_superblock_fallback_then_a_checkpoint_never_revives_a_stale_witness`: after a damaged
//!   newer slot made an open fall back to the older one, the next checkpoint used to write the
//!   *same* generation number with the *same* next_txid again, and the stale witness the older
//!   slot held (written for that number's first life) matched it: a cleanly closed heap was
//!   refused as `LogDamaged`. Fixed: a checkpoint over a damaged slot steps its counters by 2.
//! - `none_a_checked_first_frame_lost_after_a_flush_is_reported`: under `None`, a generation
//!   whose first frame carries an in-place check got its vouchers at the flush but no witness,
//!   so a lost first frame dropped the flushed transactions silently. Fixed: `Heap::flush`
//!   writes the witness before it returns.
//! - `a_fallback_never_repeats_a_generation_or_replays_its_stale_frames`: older than the
//!   witness: the same repeated generation let the first life's stale frames replay after the
//!   second life's first frame (an acknowledged transaction overwritten). Fixed with the first.
//! - `a_lost_first_frame_is_reported_after_every_way_a_generation_starts` and
//!   `live_checks_beside_a_writer_that_checkpoints_find_no_damage`: lost first frames after
//!   every checkpoint path, and live checks beside checkpoints (no false damage).
//! - `a_lost_first_frame_of_a_kept_generation_is_reported` (fifteenth session): the witness
//!   that an open which replays and keeps the frames writes; fails if the open does not flush.
//! - `witness_protocol_invariants_hold_in_every_path`: recorded traces of Full (alone, with
//!   checkpoints, compaction, set_max_size, reopen), Full with group commit, and None (flushes,
//!   in-place frames): every witness names a first frame that a barrier had made durable,
//!   is durable before any later acknowledgement, and every superblock write covers the slot.

#![cfg(feature = "test-hooks")]

use std::path::Path;

use txheap::{Durability, Error, Heap, Options, PSlice, Trace, TraceEvent};
use txheap_recovery::txheap_log::verified_frame_at;
use txheap_recovery::{
    select_superblock, MemStorage, Slot, Superblock, Witness, LOG_OFFSET, SUPERBLOCK_SLOT_LEN,
    WITNESS_LEN,
};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    count: u64,
    big: PSlice<u8>,
}

fn opts(d: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(1 << 20)
        .max_size(64 << 20)
        .in_place_min(64 << 10)
        .durability(d)
}

fn commit(heap: &Heap, i: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        tx.alloc([i as u8; 100])?;
        let mut r = *tx.get(root)?;
        r.count = i;
        tx.set(root, r)
    })
    .unwrap()
}

/// A transaction that allocates a 1 MiB object from free space (in place; under `None` its
/// frame carries an in-place check) and sets the count.
fn commit_big(heap: &Heap, i: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.big = tx.alloc_slice(&vec![i as u8; 1 << 20])?;
        r.count = i;
        tx.set(root, r)
    })
    .unwrap()
}

fn count_or_zero(heap: &Heap) -> u64 {
    heap.read(|r| match r.root::<Root>() {
        Ok(root) => Ok(r.get(root)?.count),
        Err(Error::NoRoot) => Ok(0),
        Err(e) => Err(e),
    })
    .unwrap()
}

/// Open a heap whose current superblock slot is damaged while its generation has frames in the
/// log: the plain open refuses (those frames hold acknowledged transactions: `LogDamaged`,
/// naming the slot), and a salvage falls back to the older slot knowingly.
fn fallback_open(path: &Path, options: Options) -> Heap {
    let e = Heap::open(path, options.clone()).unwrap_err();
    assert!(
        matches!(e, Error::LogDamaged { voucher_offset, .. } if voucher_offset % SUPERBLOCK_SLOT_LEN == 0 && voucher_offset < LOG_OFFSET),
        "{e}"
    );
    Heap::open(path, options.salvage(true)).unwrap()
}

/// A way to start a generation: from a heap file's path and options, the open heap.
type Starter = dyn Fn(&Path, Options) -> Heap;

/// (generation, txid-like counter): a superblock's (generation, next_txid) or a witness's.
type GenTx = Option<(u64, u64)>;

/// Both slots' superblocks (generation, next_txid) and witnesses (generation, txid).
fn slots(image: &[u8]) -> Vec<(Slot, GenTx, GenTx)> {
    [Slot::A, Slot::B]
        .into_iter()
        .map(|slot| {
            let at = slot.offset() as usize;
            let sb = Superblock::decode(image[at..at + 128].try_into().unwrap(), slot.offset())
                .ok()
                .map(|s| (s.generation, s.next_txid));
            let w = at + txheap_recovery::WITNESS_SLOT_OFFSET as usize;
            let wit = Witness::decode(image[w..w + WITNESS_LEN].try_into().unwrap())
                .map(|w| (w.generation, w.txid));
            (slot, sb, wit)
        })
        .collect()
}

fn current_slot(image: &[u8]) -> Slot {
    select_superblock(&MemStorage::from_bytes(image.to_vec()))
        .unwrap()
        .1
}

/// A media fault in a superblock (the open falls back to the other slot), then ordinary use:
/// open, close. The close's checkpoint used to write the generation number the damaged slot
/// had, with the same next_txid (the older slot's generation had no frame: the usual case after
/// a reopen, whose first commit checkpoints first), and the older slot's stale witness of that
/// number's first life then matched it. The cleanly closed heap must open.
#[test]
fn a_superblock_fallback_then_a_checkpoint_never_revives_a_stale_witness() {
    let mut failures = Vec::new();
    for d in [Durability::Full, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.heap");
        let heap = Heap::create(&path, opts(d)).unwrap();
        commit(&heap, 1);
        heap.close().unwrap();
        // Reopen: the first commit checkpoints (kept generation), so the generation before
        // the new one holds no frame.
        let heap = Heap::open(&path, opts(d)).unwrap();
        commit(&heap, 2);
        if d == Durability::None {
            heap.flush().unwrap();
        }
        commit(&heap, 3);
        commit(&heap, 4);
        heap.flush().unwrap();
        let image = std::fs::read(&path).unwrap();
        std::mem::forget(heap); // a power cut (nothing of the log is lost)
        let cur = current_slot(&image);
        eprintln!("{d:?}: current {cur:?}, slots {:?}", slots(&image));

        // A flipped bit in the current superblock: the open falls back to the older slot.
        let mut img = image.clone();
        img[cur.offset() as usize + 20] ^= 1;
        let p = dir.path().join("flipped.heap");
        std::fs::write(&p, &img).unwrap();
        let heap = fallback_open(&p, opts(d));
        let s = heap.stats().unwrap();
        eprintln!(
            "{d:?}: fallback open: generation {}, next_txid {}, count {}, superblock_damage {:?}",
            s.log_generation,
            s.next_txid,
            count_or_zero(&heap),
            s.superblock_damage.is_some()
        );
        heap.close().unwrap();
        let after = std::fs::read(&p).unwrap();
        eprintln!("{d:?}: after close: slots {:?}", slots(&after));

        // A cleanly closed heap: nothing was lost since, no crash.
        for (what, r) in [
            ("open", Heap::open(&p, opts(d)).map(|h| count_or_zero(&h))),
            (
                "open_read_only",
                Heap::open_read_only(&p).map(|h| count_or_zero(&h)),
            ),
        ] {
            eprintln!("{d:?}: {what} after the clean close: {r:?}");
            if let Err(e) = r {
                failures.push(format!("{d:?}: {what} of a cleanly closed heap: {e}"));
            }
        }
        // The same file with the witness sectors zeroed (as the parent commit, which wrote no
        // witness, would have left it) opens.
        let mut z = std::fs::read(&p).unwrap();
        for w in WITNESS_OFFSETS {
            z[w as usize..w as usize + WITNESS_LEN].fill(0);
        }
        let pz = dir.path().join("zeroed.heap");
        std::fs::write(&pz, &z).unwrap();
        let r = Heap::open(&pz, opts(d)).map(|h| count_or_zero(&h));
        eprintln!("{d:?}: the same file, witnesses zeroed: {r:?}");
        assert!(r.is_ok(), "{d:?}: {r:?}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Under `None`: the generation's first transaction allocates in place (its frame carries an
/// in-place check), two more commit, and a flush acknowledges all three (barrier, then the two
/// vouchers, which vouch for all three). The witness must be written before the flush returns
/// (its first version waited for the next commit, and a lost write of the first frame's sector
/// then read as an empty log: three flushed transactions dropped without a word), so the loss is
/// refused as `LogDamaged`. The control loses the second frame's sector instead: the vouchers
/// prove it durable and the open is refused too.
#[test]
fn none_a_checked_first_frame_lost_after_a_flush_is_reported() {
    let d = Durability::None;
    let log = LOG_OFFSET as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.heap");
    let heap = Heap::create(&path, opts(d)).unwrap();
    let before = std::fs::read(&path).unwrap();
    commit_big(&heap, 1);
    commit(&heap, 2);
    commit(&heap, 3);
    heap.flush().unwrap(); // transactions 1..=3 acknowledged durable
    let image = std::fs::read(&path).unwrap();
    std::mem::forget(heap);
    eprintln!("slots {:?}", slots(&image));
    let mut frames = Vec::new();
    let mut at = log;
    while let Some(h) = verified_frame_at(&image[at..]) {
        if h.generation == 0 {
            break;
        }
        frames.push((at, h.txid, h.durable_txid, h.frame_len()));
        at += h.frame_len() as usize;
    }
    eprintln!("frames (offset, txid, durable_txid, len): {frames:?}");
    assert!(frames.len() >= 5, "F1..F3 and two vouchers");

    // Undamaged: the three open.
    let good = dir.path().join("good.heap");
    std::fs::write(&good, &image).unwrap();
    assert_eq!(count_or_zero(&Heap::open(&good, opts(d)).unwrap()), 3);

    // The heap pages as before any commit (the flush's pwrites of logged pieces had no barrier:
    // lost in the power cut); the in-place object's chunk keeps its bytes (fdatasync'ed), but
    // recovery never reads them when the log looks empty.
    let heap_at = log + (1 << 20);
    let lose = |sector: usize| {
        let mut img = image.clone();
        img[sector..sector + 512].copy_from_slice(&before[sector..sector + 512]);
        img[heap_at..heap_at + 8192].copy_from_slice(&before[heap_at..heap_at + 8192]);
        img
    };
    // Control: F2's second sector lost (it reads as before F2 was written: zeros).
    let f2 = frames[1].0 / 512 * 512 + 512;
    assert!(f2 < frames[2].0, "F2 reaches into its second sector");
    let p = dir.path().join("f2.heap");
    std::fs::write(&p, lose(f2)).unwrap();
    let ctl = Heap::open(&p, opts(d)).map(|h| count_or_zero(&h));
    eprintln!("control (F2's sector lost): {ctl:?}");
    assert!(
        matches!(ctl, Err(Error::LogDamaged { txid: 2, .. })),
        "control: {ctl:?}"
    );

    // F1's first sector lost: it reads as the sentinel.
    let p = dir.path().join("f1.heap");
    std::fs::write(&p, lose(log)).unwrap();
    let got = Heap::open(&p, opts(d)).map(|h| count_or_zero(&h));
    eprintln!("F1's sector lost: {got:?}");
    assert!(
        matches!(got, Err(Error::LogDamaged { txid: 1, .. })),
        "three flushed transactions dropped silently: {got:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Trace invariants.

const WITNESS_OFFSETS: [u64; 2] = [3584, 4096 + 3584];

fn covers(e: &TraceEvent, off: u64, len: u64) -> bool {
    match e {
        TraceEvent::BarrierAll => true,
        TraceEvent::Barrier { offset, len: l } => *offset <= off && off + len <= offset + l,
        _ => false,
    }
}

/// Check a recorded trace. `Mark(_)` events are durable acknowledgements the workload added.
fn check_trace(what: &str, trace: &[TraceEvent], failures: &mut Vec<String>) -> usize {
    let log = LOG_OFFSET;
    let mut witnesses = 0;
    for (i, e) in trace.iter().enumerate() {
        let TraceEvent::Write { offset, bytes } = e else {
            continue;
        };
        // Every superblock write is the whole slot (erases the witness).
        if [0, SUPERBLOCK_SLOT_LEN].contains(offset) && bytes.len() != SUPERBLOCK_SLOT_LEN as usize
        {
            failures.push(format!(
                "{what}: superblock write at {offset} of {} bytes",
                bytes.len()
            ));
        }
        if !WITNESS_OFFSETS.contains(offset) {
            continue;
        }
        witnesses += 1;
        let woff = *offset;
        let w = Witness::decode(bytes[..].try_into().unwrap()).unwrap();
        // The last write over the log's first 40 bytes before it is the frame it names...
        let Some(j) = (0..i).rev().find(|&j| {
            matches!(&trace[j], TraceEvent::Write { offset, bytes }
                if *offset <= log && *offset + bytes.len() as u64 >= log + 40)
        }) else {
            failures.push(format!("{what}: witness {w:?} at {i} with no first frame"));
            continue;
        };
        let TraceEvent::Write { offset, bytes } = &trace[j] else {
            unreachable!()
        };
        let h = verified_frame_at(&bytes[(log - offset) as usize..]);
        if h.map(|h| (h.generation, h.txid)) != Some((w.generation, w.txid)) {
            failures.push(format!(
                "{what}: witness {w:?} at {i}, but the log starts with {:?}",
                h.map(|h| (h.generation, h.txid))
            ));
        }
        // ... made durable by a barrier before the witness was written.
        if !(j + 1..i).any(|k| covers(&trace[k], log, 40)) {
            failures.push(format!(
                "{what}: witness {w:?} at {i} before its first frame (written at {j}) was durable"
            ));
        }
        // Durable no later than the frame written next (the one that vouches for the first):
        // the first barrier that covers that frame must cover the witness too, or one before it.
        let durable = (i + 1..trace.len()).find(|&k| covers(&trace[k], woff, 64));
        let next_frame = (i + 1..trace.len()).find_map(|k| match &trace[k] {
            TraceEvent::Write { offset, bytes } if *offset >= log && *offset < log + (1 << 20) => {
                Some((k, *offset, bytes.len() as u64))
            }
            _ => None,
        });
        let ack = next_frame
            .and_then(|(k, off, len)| (k + 1..trace.len()).find(|&b| covers(&trace[b], off, len)));
        if std::env::var("WITNESS_TRACE_DUMP").is_ok() {
            let from = i.saturating_sub(12);
            for (k, event) in trace.iter().enumerate().take(i + 12).skip(from) {
                let e = match event {
                    TraceEvent::Write { offset, bytes } => {
                        format!("Write {offset} +{}", bytes.len())
                    }
                    e => format!("{e:?}"),
                };
                eprintln!("{what} {k}: {e}");
            }
            eprintln!("--");
        }
        if let Some(a) = ack {
            if durable.is_none_or(|k| k > a) {
                failures.push(format!(
                    "{what}: witness {w:?} at {i} not durable before the acknowledgement at {a} \
                     (barrier at {durable:?})"
                ));
            }
        }
        // In the slot that is not current: no superblock write between the witness and a
        // superblock write into its own slot's partner... (checked by the erase: the next
        // superblock write after the witness goes to the witness's slot).
        let slot = if woff < SUPERBLOCK_SLOT_LEN {
            0
        } else {
            SUPERBLOCK_SLOT_LEN
        };
        if let Some(k) = (i + 1..trace.len()).find(|&k| {
            matches!(&trace[k], TraceEvent::Write { offset, bytes }
                if [0, SUPERBLOCK_SLOT_LEN].contains(offset) && bytes.len() >= 128)
        }) {
            let TraceEvent::Write { offset: s, .. } = &trace[k] else {
                unreachable!()
            };
            if *s != slot {
                failures.push(format!(
                    "{what}: witness {w:?} at {i} in slot {slot}, but the next checkpoint wrote \
                     slot {s} (the witness outlives its generation)"
                ));
            }
        }
    }
    witnesses
}

fn mark(trace: &Trace, n: u64) {
    trace.lock().unwrap().push(TraceEvent::Mark(n));
}

#[test]
fn witness_protocol_invariants_hold_in_every_path() {
    let mut failures = Vec::new();
    let mut seen = Vec::new();

    // Full, one thread: commits, explicit checkpoints, set_max_size, compaction, a large
    // allocation (in place, with its barrier), reopen (kept generation).
    for d in [Durability::Full, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.heap");
        let trace = Trace::default();
        let ack = |heap: &Heap, n: u64| {
            if d == Durability::None {
                heap.flush().unwrap();
            }
            mark(&trace, n);
        };
        let heap = Heap::create(&path, opts(d).reserve(256 << 20).record(trace.clone())).unwrap();
        let mut n = 0;
        for round in 0..6u64 {
            for k in 0..5u64 {
                n += 1;
                if (round + k) % 4 == 0 {
                    commit_big(&heap, n);
                } else {
                    commit(&heap, n);
                }
                if d == Durability::Full || k % 2 == 1 {
                    ack(&heap, n);
                }
            }
            match round {
                0 => heap.checkpoint().unwrap(),
                1 => heap.set_max_size(128 << 20).unwrap(),
                2 => {
                    heap.compact().unwrap();
                }
                _ => {}
            }
        }
        heap.close().unwrap();
        let heap = Heap::open(&path, opts(d).max_size(128 << 20).record(trace.clone())).unwrap();
        for _ in 0..4 {
            n += 1;
            commit(&heap, n);
            ack(&heap, n);
        }
        heap.close().unwrap();
        let t = trace.lock().unwrap().clone();
        let w = check_trace(&format!("{d:?}"), &t, &mut failures);
        seen.push((format!("{d:?}"), w));
    }

    // Full, group commit: 4 threads, slow barriers so that they share.
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.heap");
        let trace = Trace::default();
        let heap = Heap::create(&path, opts(Durability::Full).record(trace.clone())).unwrap();
        heap.inject_faults(txheap::FaultPlan {
            barrier_delay: Some(std::time::Duration::from_millis(2)),
            ..Default::default()
        });
        for round in 0..8u64 {
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let (heap, trace) = (&heap, &trace);
                    s.spawn(move || {
                        for k in 0..5 {
                            commit(heap, round * 100 + t * 10 + k);
                            mark(trace, 1);
                        }
                    });
                }
            });
            heap.checkpoint().unwrap();
        }
        let shared = heap.stats().unwrap().io.shared_barriers;
        heap.close().unwrap();
        let t = trace.lock().unwrap().clone();
        let w = check_trace("Full, group", &t, &mut failures);
        seen.push((format!("Full, group ({shared} shared barriers)"), w));
    }
    eprintln!("witnesses checked: {seen:?}");
    assert!(seen.iter().all(|(_, w)| *w > 0), "{seen:?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Older than the witness (shown with the witnesses zeroed): after the same fallback, a
/// checkpoint that took the damaged slot's generation number again let the first life's frames
/// (same generation, following txids) follow the second life's first frame, and replay over it.
/// One commit after the fallback open, then a power cut: the acknowledged count must open.
#[test]
fn a_fallback_never_repeats_a_generation_or_replays_its_stale_frames() {
    let d = Durability::Full;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.heap");
    let heap = Heap::create(&path, opts(d)).unwrap();
    commit(&heap, 1);
    heap.close().unwrap();
    let heap = Heap::open(&path, opts(d)).unwrap();
    for i in 2..=4 {
        commit(&heap, i);
    }
    let image = std::fs::read(&path).unwrap();
    std::mem::forget(heap);
    let cur = current_slot(&image);
    let mut img = image.clone();
    img[cur.offset() as usize + 20] ^= 1;
    for w in WITNESS_OFFSETS {
        img[w as usize..w as usize + WITNESS_LEN].fill(0);
    }
    let p = dir.path().join("flipped.heap");
    std::fs::write(&p, &img).unwrap();
    let heap = fallback_open(&p, opts(d));
    commit(&heap, 7);
    let after = std::fs::read(&p).unwrap();
    std::mem::forget(heap);
    for w in WITNESS_OFFSETS {
        assert!(after[w as usize..w as usize + WITNESS_LEN]
            .iter()
            .all(|&b| b == 0));
    }
    let mut at = LOG_OFFSET as usize;
    let mut fr = Vec::new();
    while let Some(h) = verified_frame_at(&after[at..]) {
        fr.push((at, h.generation, h.txid, h.frame_len()));
        at += h.frame_len() as usize;
        if h.generation == 0 {
            break;
        }
    }
    eprintln!("log after one commit: {fr:?}");
    let q = dir.path().join("cut.heap");
    std::fs::write(&q, &after).unwrap();
    let r = Heap::open(&q, opts(d)).map(|h| count_or_zero(&h));
    eprintln!("open after the power cut (the last acknowledged count was 7): {r:?}");
    assert!(matches!(r, Ok(7)), "acknowledged count 7, recovered {r:?}");
}

/// Free space at the file's end (so that `compact` cuts a tail: its second and third
/// checkpoints run).
fn grow_and_free(heap: &Heap) {
    let big = heap
        .transaction(|tx| tx.alloc_slice(&vec![5u8; 4 << 20]))
        .unwrap();
    heap.transaction(|tx| tx.free_slice(big)).unwrap();
}

/// Commit F1 (the generation's first frame), F2, F3 (acknowledged: under `None` a flush after
/// F1 and after F3), take the image, make the log's first 40 bytes the sentinel again (a lost
/// write of F1's first sector: it reads as the sentinel the checkpoint left), and open it.
/// Every path the generation started from must give `LogDamaged` for F1.
fn lost_first_after(
    d: Durability,
    what: &str,
    setup: &dyn Fn(&Path, Options) -> Heap,
    failures: &mut Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.heap");
    let o = opts(d).reserve(256 << 20);
    let heap = setup(&path, o.clone());
    let (mut first, mut gen0) = (0, 0);
    for i in 0..3u64 {
        commit(&heap, 1000 + i);
        if i == 0 {
            // (After F1: a kept generation's first commit checkpoints first.)
            let s = heap.stats().unwrap();
            (first, gen0) = (s.next_txid - 1, s.log_generation);
        }
        if d == Durability::None && i != 1 {
            heap.flush().unwrap();
        }
    }
    let s = heap.stats().unwrap();
    let image = std::fs::read(&path).unwrap();
    std::mem::forget(heap);
    if s.log_generation != gen0 {
        failures.push(format!(
            "{d:?} {what}: a checkpoint inside F1..F3 (test layout)"
        ));
        return;
    }
    let log = LOG_OFFSET as usize;
    let h = verified_frame_at(&image[log..]).map(|h| (h.generation, h.txid));
    let (r, ro, ok) = open_with_first_frame_lost(dir.path(), &image, &o, first);
    eprintln!(
        "{d:?} {what}: generation {}, first txid {first}, log start {h:?}, witnesses {:?}: open {r:?}, read-only {ro:?}",
        s.log_generation,
        slots(&image).iter().map(|s| s.2).collect::<Vec<_>>()
    );
    if !ok {
        failures.push(format!("{d:?} {what}: open {r:?}, read-only {ro:?}"));
    }
    // Undamaged, it opens with F3's count.
    let p = dir.path().join("good.heap");
    std::fs::write(&p, &image).unwrap();
    let g = Heap::open(&p, o).map(|h| count_or_zero(&h));
    if !matches!(g, Ok(1002)) {
        failures.push(format!("{d:?} {what}: the undamaged image opens as {g:?}"));
    }
}

/// `image` with the log's first 40 bytes made the sentinel again (a lost write of the first
/// frame's first sector), opened writable and read-only (each giving the count), and whether
/// both refused it as `LogDamaged` naming transaction `first`.
fn open_with_first_frame_lost(
    dir: &Path,
    image: &[u8],
    o: &Options,
    first: u64,
) -> (txheap::Result<u64>, txheap::Result<u64>, bool) {
    let log = LOG_OFFSET as usize;
    let mut img = image.to_vec();
    img[log..log + 40].copy_from_slice(&sentinel());
    let p = dir.join("lost.heap");
    std::fs::write(&p, &img).unwrap();
    let r = Heap::open(&p, o.clone()).map(|h| count_or_zero(&h));
    let ro = Heap::open_read_only(&p).map(|h| count_or_zero(&h));
    let damaged = |r: &txheap::Result<u64>| matches!(r, Err(Error::LogDamaged { txid, .. }) if *txid == first);
    let ok = damaged(&r) && damaged(&ro);
    (r, ro, ok)
}

/// Put `bytes` at `p` as a new file (the forgotten handle keeps its lock on the old one).
fn replace(p: &Path, bytes: &[u8]) {
    let t = p.with_extension("tmp");
    std::fs::write(&t, bytes).unwrap();
    std::fs::rename(&t, p).unwrap();
}

/// The sentinel: a new file's first 40 bytes of log.
fn sentinel() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.heap");
    Heap::create(&p, opts(Durability::Full))
        .unwrap()
        .close()
        .unwrap();
    let b = std::fs::read(&p).unwrap();
    b[LOG_OFFSET as usize..LOG_OFFSET as usize + 40].to_vec()
}

#[test]
fn a_lost_first_frame_is_reported_after_every_way_a_generation_starts() {
    let mut failures = Vec::new();
    for d in [Durability::Full, Durability::None] {
        let cases: Vec<(&str, Box<Starter>)> = vec![
            (
                "explicit checkpoint",
                Box::new(|p, o| {
                    let h = Heap::create(p, o).unwrap();
                    commit(&h, 1);
                    h.checkpoint().unwrap();
                    h
                }),
            ),
            (
                "two checkpoints in a row",
                Box::new(|p, o| {
                    let h = Heap::create(p, o).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    commit(&h, 3);
                    h.checkpoint().unwrap();
                    h.checkpoint().unwrap();
                    h
                }),
            ),
            (
                "compact (three checkpoints, a cut)",
                Box::new(|p, o| {
                    let h = Heap::create(p, o).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    grow_and_free(&h);
                    let r = h.compact().unwrap();
                    eprintln!("compact: {r:?}");
                    h
                }),
            ),
            (
                "set_max_size",
                Box::new(|p, o| {
                    let h = Heap::create(p, o).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    h.set_max_size(128 << 20).unwrap();
                    h
                }),
            ),
            (
                "reopen (kept generation: F1's commit checkpoints first)",
                Box::new(|p, o| {
                    let h = Heap::create(p, o.clone()).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    h.close().unwrap();
                    Heap::open(p, o).unwrap()
                }),
            ),
            (
                "reopen with a new max_size (recovery's checkpoint)",
                Box::new(|p, o| {
                    let h = Heap::create(p, o.clone()).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    h.close().unwrap();
                    Heap::open(p, o.max_size(96 << 20)).unwrap()
                }),
            ),
            (
                "recovery that replays (checkpoint in recovery)",
                Box::new(|p, o| {
                    let h = Heap::create(p, o.clone()).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    commit(&h, 3);
                    h.flush().unwrap();
                    let img = std::fs::read(p).unwrap();
                    std::mem::forget(h);
                    replace(p, &img);
                    Heap::open(p, o).unwrap()
                }),
            ),
            (
                "salvage open",
                Box::new(|p, o| {
                    let h = Heap::create(p, o.clone()).unwrap();
                    for i in 1..=4 {
                        commit(&h, i);
                    }
                    h.flush().unwrap();
                    let mut img = std::fs::read(p).unwrap();
                    std::mem::forget(h);
                    // Damage frame 2 (a later frame vouches for it).
                    let log = LOG_OFFSET as usize;
                    let f1 = verified_frame_at(&img[log..]).unwrap().frame_len() as usize;
                    img[log + f1 + 45] ^= 1;
                    replace(p, &img);
                    Heap::open(p, o.salvage(true)).unwrap()
                }),
            ),
            (
                "backup_to copy, opened",
                Box::new(|p, o| {
                    let src = p.with_extension("src");
                    let h = Heap::create(&src, o.clone()).unwrap();
                    commit(&h, 1);
                    commit(&h, 2);
                    h.backup_to(p).unwrap();
                    h.close().unwrap();
                    Heap::open(p, o).unwrap()
                }),
            ),
            (
                "compact_to copy, opened",
                Box::new(|p, o| {
                    let src = p.with_extension("src");
                    let h = Heap::create(&src, o.clone()).unwrap();
                    commit(&h, 1);
                    grow_and_free(&h);
                    h.compact_to(p).unwrap();
                    h.close().unwrap();
                    Heap::open(p, o).unwrap()
                }),
            ),
        ];
        for (what, setup) in &cases {
            lost_first_after(d, what, &**setup, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Live inspection of a heap whose writer starts a new generation every few commits (so
/// witnesses are written and erased all the time): no check may report damage.
#[test]
fn live_checks_beside_a_writer_that_checkpoints_find_no_damage() {
    for d in [Durability::Full, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.heap");
        let heap = Heap::create(&path, opts(d)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut checks, mut bad) = (0, Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    commit(&heap, i);
                    if i % 3 == 0 && d == Durability::None {
                        heap.flush().unwrap();
                    }
                    if i % 5 == 0 {
                        heap.checkpoint().unwrap();
                    }
                }
            });
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(3) {
                match txheap::inspect::check(&path, &mut |_, _| {}) {
                    Ok(r) => {
                        checks += 1;
                        if r.verdict == txheap::inspect::Verdict::Damaged {
                            bad.push(format!("{:?}", r.findings));
                        }
                    }
                    Err(Error::Locked { .. }) => {}
                    Err(e) => bad.push(e.to_string()),
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let s = heap.stats().unwrap();
        eprintln!(
            "{d:?}: {checks} live checks over {} commits and {} checkpoints: {} damaged",
            s.commits,
            s.checkpoints,
            bad.len()
        );
        assert!(bad.is_empty(), "{d:?}: {bad:#?}");
        assert!(checks > 10);
    }
}

/// An open that replays a crashed session's frames keeps them in the log (no checkpoint until
/// the first commit or the close: docs/ARCHITECTURE.md section 5, step 3) and ends with a flush
/// that writes the witness of their first frame. The image after a power cut right after such
/// an open: what the open barriered (the log, the superblocks and their witness slots) as it
/// left them, the heap as the crashed session left it (replay's pages had no barrier yet).
/// Lose the first frame's write too (its first sector reads as the sentinel): the next open
/// must report it (`LogDamaged`, naming the frame), not open a heap without the transactions
/// the first open showed. Under `None` without a flush the crashed session wrote no witness,
/// so the open's is the only one: without the open's flush this opened with a count of 0
/// (checked by removing it), under `Full` the session's own witness covers it too.
#[test]
fn a_lost_first_frame_of_a_kept_generation_is_reported() {
    let mut failures = Vec::new();
    for d in [Durability::Full, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.heap");
        let o = opts(d).reserve(256 << 20);
        let h = Heap::create(&path, o.clone()).unwrap();
        for i in 1..=3 {
            commit(&h, i);
        }
        let crashed = std::fs::read(&path).unwrap();
        std::mem::forget(h);
        replace(&path, &crashed);
        let log = LOG_OFFSET as usize;
        let first = verified_frame_at(&crashed[log..]).map(|h| (h.generation, h.txid));
        // The open replays and keeps the frames, showing all three; then the power goes.
        let h = Heap::open(&path, o.clone()).unwrap();
        let (s, seen) = (h.stats().unwrap(), count_or_zero(&h));
        let opened = std::fs::read(&path).unwrap();
        std::mem::forget(h);
        let kept = verified_frame_at(&opened[log..]).map(|h| (h.generation, h.txid));
        if seen != 3
            || first.is_none()
            || kept != first
            || Some(s.log_generation) != first.map(|f| f.0)
        {
            failures.push(format!(
                "{d:?}: the open did not keep the frames (count {seen}, before {first:?}, \
                 after {kept:?}, generation {})",
                s.log_generation
            ));
            continue;
        }
        let heap_at = select_superblock(&MemStorage::from_bytes(opened.clone()))
            .unwrap()
            .0
            .heap_offset() as usize;
        let mut image = crashed.clone();
        image[..heap_at].copy_from_slice(&opened[..heap_at]);
        let txid_first = first.unwrap().1;
        let (r, ro, ok) = open_with_first_frame_lost(dir.path(), &image, &o, txid_first);
        if !ok {
            failures.push(format!(
                "{d:?}: first frame {txid_first} lost: open {r:?}, read-only {ro:?}"
            ));
        }
        // Undamaged, it opens with the count the first open showed.
        let p = dir.path().join("good.heap");
        std::fs::write(&p, &image).unwrap();
        let g = Heap::open(&p, o).map(|h| count_or_zero(&h));
        if !matches!(g, Ok(3)) {
            failures.push(format!("{d:?}: the undamaged image opens as {g:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
