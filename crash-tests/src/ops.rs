//! Exhaustive small workloads: every sequence of up to three operations, one transaction (or
//! checkpoint) each, recorded and cut at every instant. The model is the list of committed
//! states (the root's table of live objects after each commit); a recovered image must equal one
//! of them, no older than the last acknowledged under `Durability::Full`.
//!
//! ```
//! use crash_tests::ops::{check_ops, Op};
//! let dir = tempfile::tempdir().unwrap();
//! let ops = [Op::AllocSmall, Op::Free];
//! let (images, bad) = check_ops(dir.path(), &ops, txheap::Durability::None, 8, 2, 1);
//! assert!(images > 0);
//! assert!(bad.is_empty(), "{bad:?}");
//! ```

use std::path::Path;

use txheap::{Durability, Error, Heap, PSlice, Trace, TraceEvent};

use crate::{all_bytes, options, Disk, ImageFile, Rng};

/// The kinds of operation a workload step can be.
///
/// ```
/// use crash_tests::ops::{record_ops, Op};
/// let dir = tempfile::tempdir().unwrap();
/// let ops = [Op::AllocSmall, Op::Abort];
/// let (_, _, states) = record_ops(&dir.path().join("o.heap"), &ops, txheap::Durability::None);
/// // The abort committed nothing: the only new state is the allocation's.
/// assert_eq!(states.len(), 2);
/// assert_eq!(states[1].len(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Allocate a 100-byte object and fill it.
    AllocSmall,
    /// Allocate a 300 KB object (two chunks, written in place under Full) and fill it.
    AllocLarge,
    /// Allocate 3 MiB, which grows the file.
    Grow,
    /// Free the oldest object.
    Free,
    /// Rewrite the newest object with a new byte (logged, even when large).
    Rewrite,
    /// Allocate and write, then abort.
    Abort,
    /// `Heap::checkpoint`.
    Checkpoint,
    /// `Heap::compact`: punch holes in free space, cut the free tail.
    Compact,
    /// `Heap::set_max_size` to four times the current `max_size` (needs `Options::reserve`:
    /// not in [`OPS`]; `tests/broken.rs` runs it with [`small_options`]).
    RaiseMax,
    /// In one transaction: a nested scope (`Tx::nested`) allocates a 300 KB object, fills it
    /// and fails; then a 300 KB object is allocated (over the chunks the scope gave back, which
    /// stay fresh space: written in place) and kept. Not in [`OPS`]; `tests/exhaustive.rs`
    /// runs it in a few sequences.
    ScopedLarge,
}

/// Options for workloads that reach `max_size`: [`options`] with a 4 MiB `max_size` and
/// address space reserved for 64 MiB, so that [`Op::RaiseMax`] can raise it while open.
///
/// ```
/// let o = crash_tests::ops::small_options(txheap::Durability::Full);
/// ```
pub fn small_options(durability: Durability) -> txheap::Options {
    options(durability).max_size(4 << 20).reserve(64 << 20)
}

/// Every operation kind.
///
/// ```
/// use crash_tests::ops::{Op, OPS};
/// assert_eq!(OPS.len(), 8);
/// assert!(OPS.contains(&Op::Checkpoint));
/// assert!((0..OPS.len()).all(|i| !OPS[i + 1..].contains(&OPS[i]))); // each kind once
/// ```
pub const OPS: [Op; 8] = [
    Op::AllocSmall,
    Op::AllocLarge,
    Op::Grow,
    Op::Free,
    Op::Rewrite,
    Op::Abort,
    Op::Checkpoint,
    Op::Compact,
];

const SLOTS: usize = 8;

/// The root: live objects and the byte each is filled with.
///
/// ```
/// use crash_tests::ops::{record_ops, Op, Table};
/// use txheap::Durability;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("o.heap");
/// record_ops(&path, &[Op::AllocSmall], Durability::None);
/// let heap = txheap::Heap::open(&path, crash_tests::options(Durability::None)).unwrap();
/// assert!(heap.read(|r| r.root::<Table>()).is_ok()); // the workload's root type
/// // A count, 8 slices of 16 bytes, 8 fill bytes (as u64).
/// assert_eq!(std::mem::size_of::<Table>(), 8 + 8 * 16 + 8 * 8);
/// ```
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
pub struct Table {
    n: u64,
    items: [PSlice<u8>; SLOTS],
    bytes: [u64; SLOTS],
}

/// A committed state: (offset, length, fill byte) of each live object.
///
/// ```
/// use crash_tests::ops::{record_ops, Op, State};
/// let dir = tempfile::tempdir().unwrap();
/// let ops = [Op::AllocSmall, Op::Rewrite];
/// let (_, _, states) = record_ops(&dir.path().join("o.heap"), &ops, txheap::Durability::None);
/// let (offset, len, byte) = states[1][0];
/// assert_eq!((len, byte), (100, 1)); // operation 0 fills with byte 1
/// let rewritten: State = vec![(offset, 100, 2)]; // same object, operation 1's byte
/// assert_eq!(states[2], rewritten);
/// ```
pub type State = Vec<(u64, u64, u8)>;

fn read_state(heap: &Heap) -> Result<State, String> {
    heap.read(|r| {
        let t = match r.root::<Table>() {
            Ok(p) => *r.get(p)?,
            Err(Error::NoRoot) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for i in 0..(t.n as usize).min(SLOTS) {
            let s = r.slice(t.items[i])?;
            let b = t.bytes[i] as u8;
            if !all_bytes(s, b) {
                return Err(Error::Corrupt {
                    offset: t.items[i].offset(),
                    what: format!("object {i} is torn"),
                });
            }
            out.push((t.items[i].offset(), t.items[i].len(), b));
        }
        Ok(out)
    })
    .map_err(|e| e.to_string())
}

fn apply(heap: &Heap, op: Op, byte: u8) -> txheap::Result<bool> {
    let size = match op {
        Op::AllocLarge | Op::ScopedLarge => 300_000,
        Op::Grow => 3 << 20,
        _ => 100,
    };
    match op {
        Op::Checkpoint => heap.checkpoint().map(|_| true),
        Op::Compact => heap.compact().map(|_| true),
        Op::RaiseMax => {
            let m = heap.stats()?.max_size;
            heap.set_max_size(4 * m).map(|_| true)
        }
        _ => {
            let r = heap.transaction(|tx| {
                let root = tx.root::<Table>()?;
                let mut t = *tx.get(root)?;
                let op = if matches!(op, Op::Free | Op::Rewrite) && t.n == 0 {
                    Op::AllocSmall
                } else {
                    op
                };
                match op {
                    Op::Free => {
                        tx.free_slice(t.items[0])?;
                        t.items.copy_within(1.., 0);
                        t.bytes.copy_within(1.., 0);
                        t.n -= 1;
                    }
                    Op::Rewrite => {
                        let i = t.n as usize - 1;
                        tx.slice_mut(t.items[i])?.fill(byte);
                        t.bytes[i] = byte as u64;
                    }
                    _ if t.n as usize == SLOTS => {}
                    _ => {
                        if op == Op::ScopedLarge {
                            let undone = tx.nested(|tx| {
                                let s = tx.alloc_slice_zeroed::<u8>(size)?;
                                tx.slice_mut(s)?.fill(byte ^ 0xFF);
                                Err::<(), _>(Error::NoRoot)
                            });
                            if !matches!(undone, Err(Error::NoRoot)) {
                                return undone.map(|()| true);
                            }
                        }
                        let s = tx.alloc_slice_zeroed::<u8>(size)?;
                        tx.slice_mut(s)?.fill(byte);
                        t.items[t.n as usize] = s;
                        t.bytes[t.n as usize] = byte as u64;
                        t.n += 1;
                    }
                }
                *tx.get_mut(root)? = t;
                if op == Op::Abort {
                    return Err(Error::NoRoot);
                }
                Ok(true)
            });
            match r {
                // An abort, or (under None, where large objects are logged) a refusal: no trace.
                Err(Error::NoRoot) | Err(Error::TransactionTooLarge { .. }) => Ok(false),
                other => other,
            }
        }
    }
}

/// Run `ops` on a fresh heap at `path` (one closed empty transaction first, so the base image
/// has a root), recording; returns the base image, the events and the committed states.
///
/// ```
/// use crash_tests::ops::{record_ops, Op};
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let ops = [Op::AllocSmall, Op::Abort, Op::Checkpoint, Op::Free];
/// let (base, events, states) = record_ops(&dir.path().join("o.heap"), &ops, Durability::None);
/// assert_eq!(base.len(), 1 << 20);
/// // The abort and the checkpoint commit no state: empty, one object, empty again.
/// assert_eq!(states.len(), 3);
/// assert!(states[0].is_empty() && states[1].len() == 1 && states[2].is_empty());
/// assert!(events.contains(&TraceEvent::Mark(2)));
/// ```
pub fn record_ops(
    path: &Path,
    ops: &[Op],
    durability: Durability,
) -> (Vec<u8>, Vec<TraceEvent>, Vec<State>) {
    record_ops_with(path, ops, durability, &options)
}

/// [`record_ops`] with other options (`opts(durability)`).
///
/// ```
/// use crash_tests::ops::{record_ops_with, small_options, Op};
/// let dir = tempfile::tempdir().unwrap();
/// let ops = [Op::RaiseMax, Op::Grow, Op::Grow];
/// let (_, _, states) = record_ops_with(&dir.path().join("o.heap"), &ops, txheap::Durability::Full, &small_options);
/// assert_eq!(states.len(), 3); // two 3 MiB objects: past the first max_size of 4 MiB
/// ```
pub fn record_ops_with(
    path: &Path,
    ops: &[Op],
    durability: Durability,
    opts: &dyn Fn(Durability) -> txheap::Options,
) -> (Vec<u8>, Vec<TraceEvent>, Vec<State>) {
    let _ = std::fs::remove_file(path);
    let heap = Heap::create(path, opts(durability)).unwrap();
    heap.transaction(|tx| tx.root::<Table>().map(|_| ()))
        .unwrap();
    heap.close().unwrap();
    let base = std::fs::read(path).unwrap();
    let trace = Trace::default();
    let heap = Heap::open(path, opts(durability).record(trace.clone())).unwrap();
    let mut states = vec![read_state(&heap).unwrap()];
    for (i, &op) in ops.iter().enumerate() {
        // A checkpoint or compaction changes no object: no new state.
        if apply(&heap, op, i as u8 + 1).unwrap()
            && !matches!(op, Op::Checkpoint | Op::Compact | Op::RaiseMax)
        {
            states.push(read_state(&heap).unwrap());
            trace
                .lock()
                .unwrap()
                .push(TraceEvent::Mark(states.len() as u64 - 1));
        }
    }
    heap.close().unwrap();
    let events = std::mem::take(&mut *trace.lock().unwrap());
    (base, events, states)
}

/// Cut power at every instant of `ops`' recording: every combination of sector states when at
/// most `exhaustive_sectors` are undecided (capped at 256 images), else both extremes and
/// `samples` random ones. Returns (images, violations as text).
///
/// ```
/// use crash_tests::ops::{check_ops, Op};
/// let dir = tempfile::tempdir().unwrap();
/// let ops = [Op::Rewrite, Op::Checkpoint];
/// let (images, bad) = check_ops(dir.path(), &ops, txheap::Durability::None, 8, 2, 7);
/// assert!(images > 0);
/// assert!(bad.is_empty(), "{bad:?}");
/// ```
pub fn check_ops(
    dir: &Path,
    ops: &[Op],
    durability: Durability,
    exhaustive_sectors: usize,
    samples: usize,
    seed: u64,
) -> (u64, Vec<String>) {
    check_ops_with(
        dir,
        ops,
        durability,
        &options,
        exhaustive_sectors,
        samples,
        seed,
    )
}

/// [`check_ops`] of a workload recorded with other options (`opts(durability)`); each image is
/// opened with the file's own sizes.
///
/// ```
/// use crash_tests::ops::{check_ops_with, small_options, Op};
/// let dir = tempfile::tempdir().unwrap();
/// let ops = [Op::RaiseMax, Op::Grow, Op::Grow];
/// let (images, bad) = check_ops_with(dir.path(), &ops, txheap::Durability::Full, &small_options, 8, 2, 3);
/// assert!(images > 0);
/// assert!(bad.is_empty(), "{bad:?}");
/// ```
pub fn check_ops_with(
    dir: &Path,
    ops: &[Op],
    durability: Durability,
    opts: &dyn Fn(Durability) -> txheap::Options,
    exhaustive_sectors: usize,
    samples: usize,
    seed: u64,
) -> (u64, Vec<String>) {
    let live = dir.join("ops-live.heap");
    let (base, events, states) = record_ops_with(&live, ops, durability, opts);
    let mut disk = Disk::new(&base);
    let mut file = ImageFile::new(&dir.join("ops-image.heap"), &disk).expect("image file");
    let mut rng = Rng::seeded(seed);
    let (mut images, mut bad) = (0u64, Vec::new());
    for (t, e) in events.iter().enumerate() {
        disk.apply(e);
        if matches!(e, TraceEvent::Mark(_)) {
            continue;
        }
        let max = if disk.undecided_sectors() <= exhaustive_sectors && disk.image_space() <= 256 {
            256
        } else {
            samples + 2
        };
        for choice in disk.choices(max, &mut rng) {
            images += 1;
            let trace = Trace::default();
            let got = file.write(&disk, &choice).and_then(|()| {
                let own_sizes = txheap::Options::new()
                    .durability(durability)
                    .keep_log_blocks(true);
                Heap::open(file.path(), own_sizes.record(trace.clone()))
                    .map_err(|e| format!("recovery failed: {e}"))
                    .and_then(|h| read_state(&h))
            });
            let events = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
            if let Err(e) = file.touched(&events) {
                bad.push(e);
            }
            let ok = match &got {
                // States can repeat (alloc then free): any matching committed state in bounds.
                Ok(st) => states.iter().enumerate().any(|(k, s)| {
                    let acked = disk.acked as usize;
                    s == st && k <= acked + 1 && (durability == Durability::None || k >= acked)
                }),
                Err(_) => false,
            };
            if !ok {
                bad.push(format!(
                    "ops {ops:?} {durability:?}: crash at event {t}: {got:?}, acked {}",
                    disk.acked
                ));
            }
        }
    }
    (images, bad)
}
