//! The write-ahead check (as SQLite's journal test does it): every write to the heap region
//! of a recorded run must either leave the bytes it changes equal to the durable state as
//! recovery would rebuild it at that instant (so a durable log frame already carries them, or
//! they did not change), or go to space that durable state does not reach (free extents, free
//! blocks, chunks past the chunk count: `txheap::reachable_ranges`). A write that changes a
//! reachable byte ahead of its durable frame is a violation even if no sampled crash image
//! happens to expose it.
//!
//! ## Example
//!
//! ```
//! use crash_tests::{record, write_ahead};
//! use txheap_recovery::sabotage;
//! let dir = tempfile::tempdir().unwrap();
//! // Break the protocol (heap writes before the log barrier): one transaction shows it.
//! sabotage::set(sabotage::APPLY_BEFORE_LOG);
//! let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 1);
//! sabotage::set(0);
//! let wa = write_ahead::check(&rec.base, &rec.events);
//! assert!(wa.violations[0].what.starts_with("write ahead of the log"));
//! ```

use crate::{Disk, Violation};
use txheap::TraceEvent;
use txheap_recovery::{recover, MemStorage};

/// What the write-ahead check saw in one recording.
///
/// ```
/// let wa = crash_tests::write_ahead::WriteAhead::default();
/// assert_eq!((wa.writes, wa.bytes_durable, wa.bytes_unreachable), (0, 0, 0));
/// assert!(wa.violations.is_empty());
/// ```
#[derive(Debug, Default, Clone)]
pub struct WriteAhead {
    /// Writes that touched the heap region.
    pub writes: u64,
    /// Heap-region bytes written equal to the durable recovered state (covered by a durable
    /// frame, or unchanged).
    pub bytes_durable: u64,
    /// Heap-region bytes written that differ from it, in space it does not reach.
    pub bytes_unreachable: u64,
    /// Writes that changed reachable bytes ahead of the log.
    pub violations: Vec<Violation>,
}

impl WriteAhead {
    /// Add another recording's counts.
    ///
    /// ```
    /// use crash_tests::write_ahead::WriteAhead;
    /// let mut total = WriteAhead { writes: 2, bytes_durable: 100, ..Default::default() };
    /// total.add(WriteAhead { writes: 3, bytes_unreachable: 8, ..Default::default() });
    /// assert_eq!((total.writes, total.bytes_durable, total.bytes_unreachable), (5, 100, 8));
    /// assert!(total.violations.is_empty());
    /// ```
    pub fn add(&mut self, o: WriteAhead) {
        self.writes += o.writes;
        self.bytes_durable += o.bytes_durable;
        self.bytes_unreachable += o.bytes_unreachable;
        self.violations.extend(o.violations);
    }
}

/// The durable state as recovery would rebuild it: the image, its heap offset, and the sorted,
/// merged byte ranges its heap reaches.
struct DurableState {
    image: Vec<u8>,
    heap_offset: u64,
    reachable: Vec<(u64, u64)>,
}

fn durable_state(durable: &[u8]) -> Result<DurableState, String> {
    let mut s = MemStorage::from_bytes(durable.to_vec());
    let recovered =
        recover(&mut s).map_err(|e| format!("the durable image does not recover: {e}"))?;
    let image = s.into_bytes();
    let mut ranges = txheap::reachable_ranges(&image)
        .map_err(|e| format!("the recovered image's heap does not decode: {e}"))?;
    ranges.sort_unstable();
    let mut reachable: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (o, l) in ranges {
        match reachable.last_mut() {
            Some((lo, ll)) if o <= *lo + *ll => *ll = (*ll).max(o + l - *lo),
            _ => reachable.push((o, l)),
        }
    }
    Ok(DurableState {
        image,
        heap_offset: recovered.superblock.heap_offset(),
        reachable,
    })
}

/// Check one write of `bytes` at `offset` against `st`, counting its heap-region bytes into
/// `out`. Returns what is wrong when it changes bytes that the durable state reaches.
fn check_write(
    st: &DurableState,
    offset: u64,
    bytes: &[u8],
    out: &mut WriteAhead,
) -> Option<String> {
    if offset + bytes.len() as u64 <= st.heap_offset {
        return None; // superblocks and log
    }
    out.writes += 1;
    let first = st.heap_offset.saturating_sub(offset) as usize;
    // Reachable ranges in order, with a cursor: the bytes come in order too.
    let mut r = st
        .reachable
        .partition_point(|&(o, l)| o + l <= offset + first as u64);
    let mut bad: Option<(u64, u8, u8)> = None;
    let mut bad_bytes = 0u64;
    for (i, &v) in bytes.iter().enumerate().skip(first) {
        let b = offset + i as u64;
        let s = st.image.get(b as usize).copied().unwrap_or(0);
        if v == s {
            out.bytes_durable += 1;
            continue;
        }
        while r < st.reachable.len() && st.reachable[r].0 + st.reachable[r].1 <= b {
            r += 1;
        }
        if r < st.reachable.len() && st.reachable[r].0 <= b {
            bad_bytes += 1;
            bad.get_or_insert((b, s, v));
        } else {
            out.bytes_unreachable += 1;
        }
    }
    let (b, s, v) = bad?;
    Some(format!(
        "write ahead of the log: a write of {} bytes at {offset} changes {bad_bytes} bytes that \
         the durable state reaches (first at {b}: durable {s:#04x}, written {v:#04x}) and no \
         durable frame carries",
        bytes.len()
    ))
}

/// Run the write-ahead check over `events`, recorded on a file that held `base` (all durable).
///
/// ```
/// use crash_tests::{record, write_ahead};
/// use txheap::Durability;
/// let dir = tempfile::tempdir().unwrap();
/// for durability in [Durability::Full, Durability::None] {
///     let rec = record(&dir.path().join("live.heap"), 1, durability, 3);
///     let wa = write_ahead::check(&rec.base, &rec.events);
///     assert!(wa.violations.is_empty(), "{:?}", wa.violations);
///     assert!(wa.writes > 0 && wa.bytes_durable > 0);
/// }
/// ```
pub fn check(base: &[u8], events: &[TraceEvent]) -> WriteAhead {
    let mut out = WriteAhead::default();
    let mut disk = Disk::new(base);
    let mut state: Option<Result<DurableState, String>> = None;
    for (t, e) in events.iter().enumerate() {
        if let TraceEvent::Write { offset, bytes } = e {
            let problem = match state.get_or_insert_with(|| durable_state(disk.durable())) {
                Ok(st) => check_write(st, *offset, bytes, &mut out),
                Err(what) => Some(format!(
                    "write of {} bytes at {offset}: {what}",
                    bytes.len()
                )),
            };
            if let Some(what) = problem {
                out.violations.push(Violation {
                    what,
                    at_event: t,
                    image: 0,
                });
            }
        }
        // The durable state changes only at barriers and growth.
        let barriers = disk.barriers;
        let len = disk.len();
        disk.apply(e);
        if disk.barriers != barriers || disk.len() != len {
            state = None;
        }
    }
    out
}
