//! Committed states that readers pin, and the overlay of committed bytes not yet in the file.
//!
//! Owns: `Snapshot` (a committed heap header plus the overlay of frames the file does not hold
//! yet), `Overlay` (those frames' ranges, merged newest over oldest in a few sorted segments),
//! and `Registry` (the current snapshot and the readers pinning older ones). May not: write the
//! file or the mapping (the writer does, asking the registry first), or know transactions.
//!
//! The rule that lets a reader run without a lock (docs/ARCHITECTURE.md section 11): the file's
//! heap bytes change only where no pinned reader can be looking. A reader pinned at txid `S`
//! reads a range from the file only if no frame of its overlay (the frames after the last one
//! the file held when its snapshot was made, up to `S`) writes there; the writer writes frame
//! `k`'s ranges into the file only once no reader is pinned below `k` (every reader pinned at or
//! above `k` takes those ranges from its overlay), and writes fresh space in place only once
//! every reader that could see it as free space is gone (newer readers see zeros there).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::alloc::HeapHeader;

/// Where a piece's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum Src {
    /// `data[at..]` (a copy of the frame's bytes, shared by every segment that keeps a piece).
    Bytes(Arc<[u8]>, usize),
    /// Zeros: fresh space being written in place, which the snapshot holds as free.
    Zero,
}

/// `[start, end)` of the heap with its bytes.
#[derive(Clone, Debug)]
pub(crate) struct Piece {
    pub start: u64,
    pub end: u64,
    pub src: Src,
}

impl Piece {
    /// Copy the bytes of `[from, to)` (inside this piece) into `out`.
    pub(crate) fn copy_to(&self, from: u64, to: u64, out: &mut [u8]) {
        match &self.src {
            Src::Bytes(data, at) => {
                let a = at + (from - self.start) as usize;
                out.copy_from_slice(&data[a..a + (to - from) as usize]);
            }
            Src::Zero => out.fill(0),
        }
    }

    /// The part `[from, to)` of this piece as a piece of its own.
    fn cut(&self, from: u64, to: u64) -> Piece {
        let src = match &self.src {
            Src::Bytes(data, at) => Src::Bytes(data.clone(), at + (from - self.start) as usize),
            Src::Zero => Src::Zero,
        };
        Piece {
            start: from,
            end: to,
            src,
        }
    }
}

/// Sorted, disjoint pieces written by the frames with txids up to `hi`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub hi: u64,
    pub pieces: Vec<Piece>,
}

impl Segment {
    /// The pieces that overlap `[off, end)`.
    fn overlapping(&self, off: u64, end: u64) -> &[Piece] {
        let i = self.pieces.partition_point(|p| p.end <= off);
        let j = i + self.pieces[i..].partition_point(|p| p.start < end);
        &self.pieces[i..j]
    }
}

/// `newer` laid over `older`: sorted, disjoint, newer bytes winning.
pub(crate) fn merge(older: &[Piece], newer: &[Piece]) -> Vec<Piece> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let mut n = newer.iter().peekable();
    for o in older {
        let mut at = o.start;
        while at < o.end {
            // Newer pieces that start before the rest of `o` ends come first.
            match n.peek() {
                Some(p) if p.start < o.end => {
                    if p.start > at {
                        out.push(o.cut(at, p.start));
                    }
                    at = at.max(p.end);
                    if p.end <= o.end {
                        out.push(n.next().expect("peeked").clone());
                    } else {
                        break; // `p` covers the rest of `o`; it is pushed with the next one
                    }
                }
                _ => {
                    out.push(o.cut(at, o.end));
                    at = o.end;
                }
            }
        }
    }
    out.extend(n.cloned());
    debug_assert!(out.windows(2).all(|w| w[0].end <= w[1].start));
    out
}

/// The frames a snapshot has that the file may not: segments oldest first, each newer than the
/// one before. A new frame is a segment of its own; two neighbours are merged while the older is
/// less than twice the newer's size, so there are O(log n) segments and each piece is merged
/// O(log n) times.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overlay {
    segments: Vec<Arc<Segment>>,
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Add the newest frame's (or zero area's) pieces, sorted and disjoint.
    pub(crate) fn push(&mut self, hi: u64, pieces: Vec<Piece>) {
        if pieces.is_empty() {
            return;
        }
        self.segments.push(Arc::new(Segment { hi, pieces }));
        while let [.., older, newer] = &self.segments[..] {
            if older.pieces.len() >= 2 * newer.pieces.len() {
                break;
            }
            let merged = Segment {
                hi: newer.hi,
                pieces: merge(&older.pieces, &newer.pieces),
            };
            self.segments.truncate(self.segments.len() - 2);
            self.segments.push(Arc::new(merged));
        }
    }

    /// Drop the segments whose frames the file now holds (txid up to `published`).
    pub(crate) fn drop_published(&mut self, published: u64) {
        let n = self.segments.partition_point(|s| s.hi <= published);
        self.segments.drain(..n);
    }

    /// Every piece, merged (newest winning), sorted and disjoint.
    #[cfg(test)]
    pub(crate) fn flatten(&self) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for s in &self.segments {
            out = merge(&out, &s.pieces);
        }
        out
    }

    /// The pieces overlapping `[off, end)`, oldest segment first (later ones win), into `out`.
    pub(crate) fn overlapping<'a>(&'a self, off: u64, end: u64, out: &mut Vec<&'a Piece>) {
        for s in &self.segments {
            out.extend(s.overlapping(off, end));
        }
    }
}

/// Compose `[off, off+out.len())`: the overlay's pieces (oldest first in `pieces`) over `file`,
/// which is asked only for the parts no piece covers.
pub(crate) fn compose(
    off: u64,
    pieces: &[&Piece],
    out: &mut [u8],
    mut file: impl FnMut(u64, &mut [u8]),
) {
    let end = off + out.len() as u64;
    // The file's bytes where no piece lies: walk the pieces' union in offset order.
    let mut spans: Vec<(u64, u64)> = pieces
        .iter()
        .map(|p| (p.start.max(off), p.end.min(end)))
        .collect();
    spans.sort_unstable();
    let mut at = off;
    for (a, b) in spans {
        if a > at {
            file(at, &mut out[(at - off) as usize..(a - off) as usize]);
        }
        at = at.max(b);
    }
    if at < end {
        file(at, &mut out[(at - off) as usize..]);
    }
    for p in pieces {
        let (a, b) = (p.start.max(off), p.end.min(end));
        p.copy_to(a, b, &mut out[(a - off) as usize..(b - off) as usize]);
    }
}

/// A committed state: what a reader sees.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The last transaction it holds (0 before the first).
    pub txid: u64,
    /// Publication order: a reader pinned at a lower `seq` began before this snapshot existed.
    pub seq: u64,
    pub header: HeapHeader,
    pub overlay: Overlay,
}

#[derive(Debug)]
struct Inner {
    current: Arc<Snapshot>,
    /// Readers by the `seq` of the snapshot they pinned: (its txid, how many).
    pins: BTreeMap<u64, (u64, usize)>,
    /// Threads waiting in `wait_for` (so that `unpin` knows whether to notify).
    waiters: usize,
}

/// The current snapshot and the pins of running readers. Its mutex is held for a few
/// instructions only (never across I/O or a user's closure), by readers to pin and unpin and by
/// the writer to publish.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    gone: Condvar,
}

impl Registry {
    pub(crate) fn new(txid: u64, header: HeapHeader) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                current: Arc::new(Snapshot {
                    txid,
                    seq: 0,
                    header,
                    overlay: Overlay::default(),
                }),
                pins: BTreeMap::new(),
                waiters: 0,
            }),
            gone: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pin the current snapshot (for a reader); `unpin(seq)` when done.
    pub(crate) fn pin(&self) -> Arc<Snapshot> {
        let mut g = self.lock();
        let s = g.current.clone();
        g.pins.entry(s.seq).or_insert((s.txid, 0)).1 += 1;
        s
    }

    pub(crate) fn unpin(&self, seq: u64) {
        let mut g = self.lock();
        if let Some(e) = g.pins.get_mut(&seq) {
            e.1 -= 1;
            if e.1 == 0 {
                g.pins.remove(&seq);
                if g.waiters > 0 {
                    self.gone.notify_all();
                }
            }
        }
    }

    /// Make `txid`/`header`/`overlay` the current snapshot; returns its `seq` and the lowest txid
    /// a reader is pinned at (`None`: no reader), read in the same critical section.
    pub(crate) fn publish(
        &self,
        txid: u64,
        header: HeapHeader,
        overlay: Overlay,
    ) -> (u64, Option<u64>) {
        let mut g = self.lock();
        let seq = g.current.seq + 1;
        g.current = Arc::new(Snapshot {
            txid,
            seq,
            header,
            overlay,
        });
        (seq, g.pins.values().map(|&(t, _)| t).min())
    }

    /// The lowest txid a reader is pinned at, if any.
    pub(crate) fn oldest_pin(&self) -> Option<u64> {
        self.lock().pins.values().map(|&(t, _)| t).min()
    }

    /// Whether any reader is pinned.
    pub(crate) fn pinned(&self) -> bool {
        !self.lock().pins.is_empty()
    }

    /// Wait until no reader pinned at a snapshot published before `seq` (or, with `txid`, at a
    /// txid below it) is left.
    pub(crate) fn wait_for(&self, seq: u64, txid: u64) {
        let mut g = self.lock();
        g.waiters += 1;
        while g.pins.iter().any(|(&s, &(t, _))| s < seq || t < txid) {
            g = self.gone.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.waiters -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: u64, end: u64, byte: u8) -> Piece {
        let data: Arc<[u8]> = vec![byte; (end - start) as usize].into();
        Piece {
            start,
            end,
            src: Src::Bytes(data, 0),
        }
    }

    /// The overlay answers like a byte array written frame by frame.
    #[test]
    fn overlay_matches_a_byte_model() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut model = vec![0u8; 4096];
        let mut ov = Overlay::default();
        for txid in 1..300u64 {
            let mut pieces = Vec::new();
            let mut at = next(64);
            while at < 4000 {
                let len = 1 + next(40);
                let end = (at + len).min(4096);
                let byte = (txid % 251) as u8 + 1;
                pieces.push(piece(at, end, byte));
                model[at as usize..end as usize].fill(byte);
                at = end + next(300);
            }
            ov.push(txid, pieces);
            assert!(ov.segments.len() <= 12, "{} segments", ov.segments.len());
            for _ in 0..20 {
                let off = next(4000);
                let len = 1 + next(96);
                let mut ps = Vec::new();
                ov.overlapping(off, off + len, &mut ps);
                let mut out = vec![0xEEu8; len as usize];
                compose(off, &ps, &mut out, |_, b| b.fill(0));
                assert_eq!(
                    out,
                    model[off as usize..(off + len) as usize],
                    "txid {txid} at {off}+{len}"
                );
            }
        }
        let flat = ov.flatten();
        let mut rebuilt = vec![0u8; 4096];
        for p in &flat {
            p.copy_to(
                p.start,
                p.end,
                &mut rebuilt[p.start as usize..p.end as usize],
            );
        }
        assert_eq!(rebuilt, model);
        ov.drop_published(u64::MAX);
        assert!(ov.is_empty());
    }
}
