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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use txheap_recovery::txheap_log::{header_at, verify_frame, FRAME_HEADER_LEN};

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
fn merge(older: &[Piece], newer: &[Piece]) -> Vec<Piece> {
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
    #[inline]
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

    /// Whether any piece overlaps `[off, end)` (no allocation: most reads ask only this).
    #[inline]
    pub(crate) fn overlaps(&self, off: u64, end: u64) -> bool {
        self.segments
            .iter()
            .any(|s| !s.overlapping(off, end).is_empty())
    }

    /// The pieces overlapping `[off, end)`, oldest segment first (later ones win).
    pub(crate) fn pieces(&self, off: u64, end: u64) -> impl Iterator<Item = &Piece> + Clone + '_ {
        self.segments
            .iter()
            .flat_map(move |s| s.overlapping(off, end).iter())
    }
}

/// Spans composed without an allocation (more take a `Vec`).
const COMPOSE_SPANS_INLINE: usize = 16;

/// Compose `[off, off+out.len())`: the overlay's `pieces` (oldest first) over `file`, which is
/// asked only for the parts no piece covers.
pub(crate) fn compose<'a>(
    off: u64,
    pieces: impl Iterator<Item = &'a Piece> + Clone,
    out: &mut [u8],
    mut file: impl FnMut(u64, &mut [u8]),
) {
    let end = off + out.len() as u64;
    // The file's bytes where no piece lies: walk the pieces' union in offset order.
    let clipped = pieces.clone().map(|p| (p.start.max(off), p.end.min(end)));
    let mut inline = [(0u64, 0u64); COMPOSE_SPANS_INLINE];
    let mut spilled = Vec::new();
    let n = pieces.clone().count();
    let spans: &mut [(u64, u64)] = if n <= COMPOSE_SPANS_INLINE {
        for (slot, span) in inline.iter_mut().zip(clipped) {
            *slot = span;
        }
        &mut inline[..n]
    } else {
        spilled.extend(clipped);
        &mut spilled
    };
    spans.sort_unstable();
    let mut at = off;
    for &(a, b) in spans.iter() {
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

/// `frames` (oldest first) merged, newest winning: sorted, disjoint pieces. Each piece is cut
/// around what newer frames already cover, newest frame first, so the work is O(n log n) in the
/// number of pieces (folding frame after frame into one list was quadratic).
pub(crate) fn newest_wins<'a>(frames: impl DoubleEndedIterator<Item = &'a [Piece]>) -> Vec<Piece> {
    let mut covered: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for pieces in frames.rev() {
        for p in pieces {
            // The covered intervals that touch [start, end), merged into one as we go.
            let (mut lo, mut hi) = (p.start, p.end);
            let mut at = p.start;
            let touching: Vec<(u64, u64)> = covered
                .range(..=p.end)
                .rev()
                .take_while(|&(_, &e)| e >= p.start)
                .map(|(&s, &e)| (s, e))
                .collect();
            for &(s, e) in touching.iter().rev() {
                if s > at {
                    out.push(p.cut(at, s.min(p.end)));
                }
                at = at.max(e);
                lo = lo.min(s);
                hi = hi.max(e);
                covered.remove(&s);
            }
            if at < p.end {
                out.push(p.cut(at, p.end));
            }
            covered.insert(lo, hi);
        }
    }
    out.sort_unstable_by_key(|p| p.start);
    out.retain(|p| p.start < p.end);
    debug_assert!(out.windows(2).all(|w| w[0].end <= w[1].start));
    out
}

/// A committed frame the file may lack: its pieces, or (when no reader was about to need them)
/// where it lies in the log, to be decoded if a reader pins before the file holds it.
#[derive(Clone, Debug)]
pub(crate) enum Frame {
    Pieces(Arc<[Piece]>),
    InLog { at: u64, len: usize },
}

/// Turns a frame's place in the log into its pieces.
pub(crate) type Decode<'a> = &'a dyn Fn(u64, usize) -> Arc<[Piece]>;

/// The pieces of the frame in `bytes`, copied out (one allocation for all their bytes). The
/// bytes are a frame this process wrote and that the log still holds (the log is emptied only
/// after the file holds every frame in it), so it verifies.
pub(crate) fn decode_frame(bytes: &[u8]) -> Arc<[Piece]> {
    let header = header_at(bytes).expect("a frame this process wrote has its header");
    let hb: &[u8; FRAME_HEADER_LEN] = bytes[..FRAME_HEADER_LEN].try_into().expect("sized");
    let frame = verify_frame(
        hb,
        &header,
        &bytes[FRAME_HEADER_LEN..header.frame_len() as usize],
    )
    .expect("a frame this process wrote verifies");
    let copied: Result<_, std::convert::Infallible> = copy_pieces(|f| {
        for r in frame.ranges() {
            f(r.offset, r.bytes);
        }
        Ok(())
    });
    match copied {
        Ok(p) => p,
    }
}

/// Pieces holding a copy of the ranges that `visit` hands to its callback, in one allocation
/// for all their bytes (`visit` runs twice: to size it, then to fill it).
pub(crate) fn copy_pieces<E>(
    mut visit: impl FnMut(&mut dyn FnMut(u64, &[u8])) -> Result<(), E>,
) -> Result<Arc<[Piece]>, E> {
    let (mut total, mut count) = (0usize, 0usize);
    visit(&mut |_, b| {
        total += b.len();
        count += 1;
    })?;
    let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, total).collect();
    let mut spans = Vec::with_capacity(count);
    {
        let buf = Arc::get_mut(&mut data).expect("a new Arc is unique");
        let mut n = 0;
        visit(&mut |at, b| {
            buf[n..n + b.len()].copy_from_slice(b);
            spans.push((at, at + b.len() as u64, n));
            n += b.len();
        })?;
    }
    Ok(spans
        .into_iter()
        .map(|(start, end, at)| Piece {
            start,
            end,
            src: Src::Bytes(data.clone(), at),
        })
        .collect())
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
    /// Unique among every snapshot of every heap of the process (readers keep ranges they
    /// composed under it: a snapshot's view never changes).
    pub uid: u64,
}

/// The next snapshot's `uid`.
static SNAPSHOT_UID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Inner {
    /// The newest committed state: its txid and header, and a `seq` that rises with every
    /// change of what a new reader would see.
    txid: u64,
    header: HeapHeader,
    seq: u64,
    /// Frames the file lacks, merged; and newer ones not merged yet (merged when a reader pins,
    /// or at commit while readers run: without readers, a commit only appends here).
    overlay: Overlay,
    pending: Vec<(u64, Frame)>,
    /// Fresh areas being written in place, shown as zeros.
    hidden: Vec<Piece>,
    /// The snapshot of the current state, once a reader asked for it: the only one a reader
    /// can pin.
    cached: Option<Arc<Snapshot>>,
    /// Every snapshot handed out that readers may still be pinned at, oldest first.
    handed: VecDeque<Arc<Snapshot>>,
}

impl Inner {
    fn changed(&mut self, slots: &Slots) {
        self.seq += 1;
        self.cached = None;
        // First: no reader can newly pin the old current snapshot through a slot (a reader
        // that published it in a slot before this store is seen in the scan below; one that
        // publishes it after sees `current` changed and does not use it).
        slots.current.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A snapshot no reader holds, which is not the current one, can never be pinned again.
        while self
            .handed
            .front()
            .is_some_and(|s| Arc::strong_count(s) == 1 && !slots.hold(s))
        {
            self.handed.pop_front();
        }
    }

    /// Merge the pending frames into the overlay, decoding those still in the log with
    /// `decode` (without it, stop at the first such frame).
    fn merge_pending(&mut self, decode: Option<Decode<'_>>) {
        let mut n = 0;
        for (t, frame) in &self.pending {
            let pieces = match (frame, decode) {
                (Frame::Pieces(p), _) => p.clone(),
                (&Frame::InLog { at, len }, Some(d)) => d(at, len),
                (Frame::InLog { .. }, None) => break,
            };
            self.overlay.push(*t, pieces.to_vec());
            n += 1;
        }
        self.pending.drain(..n);
    }

    /// Pinned snapshots, as (seq, txid). A reader's pin is its `Arc` (a nested read on the same
    /// thread borrows the outer one's): a snapshot is pinned while anyone but the registry
    /// (`handed`, and `cached` for the current one) holds it.
    fn pins<'a>(&'a self, slots: &'a Slots) -> impl Iterator<Item = (u64, u64)> + 'a {
        self.handed
            .iter()
            .filter(move |s| {
                let ours = 1 + usize::from(self.cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)));
                Arc::strong_count(s) > ours || slots.hold(s)
            })
            .map(|s| (s.seq, s.txid))
    }

    fn oldest_pin(&self, slots: &Slots) -> Option<u64> {
        self.pins(slots).map(|(_, t)| t).min()
    }
}

/// The current state and the pins of running readers. A reader pins the current snapshot by
/// cloning its `Arc` under the read lock (readers do not queue behind each other); the writer
/// changes the state under the write lock, held briefly (never across I/O or a user's closure),
/// and reads the pins (the snapshots' reference counts) there, so that no reader pins between its
/// look and its change (unpinning meanwhile only makes it see one pin too many).
#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    /// The readers' slots: how most readers pin, without writing a shared cache line.
    slots: Slots,
    /// Threads waiting in `wait_for`, and where they wait.
    waiting: AtomicUsize,
    wait_lock: Mutex<()>,
    gone: Condvar,
}

impl Registry {
    pub(crate) fn new(txid: u64, header: HeapHeader) -> Registry {
        Registry {
            inner: RwLock::new(Inner {
                txid,
                header,
                seq: 0,
                overlay: Overlay::default(),
                pending: Vec::with_capacity(crate::limits::FRAMES_RESERVED),
                hidden: Vec::new(),
                cached: None,
                handed: VecDeque::new(),
            }),
            slots: Slots::new(),
            waiting: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            gone: Condvar::new(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Pin the current state (for a reader); dropping the guard unpins it. `decode` reads
    /// frames still in the log (when the current snapshot is made, by the first reader after a
    /// change).
    ///
    /// Most readers pin through a slot of their own (see [`Slots`]): no lock, and no write to a
    /// cache line that other readers write. When the probed slots are all taken, or no current
    /// snapshot is made yet, the reader takes the lock (read, or write to make the snapshot).
    pub(crate) fn pin(&self, decode: Decode<'_>) -> Pinned<'_> {
        let slot = self.slots.claim();
        if let Some(slot) = slot {
            if let Some(p) = self.slots.protect(slot) {
                return Pinned::Slot(self, slot, p);
            }
        }
        {
            let g = self.read();
            if let Some(s) = &g.cached {
                // Under the read lock: the writer, which looks at the pins under the write lock,
                // sees this pin or runs after it.
                return self.pinned_under_lock(slot, s);
            }
        }
        let mut g = self.write();
        if g.cached.is_none() {
            g.merge_pending(Some(decode));
            let mut overlay = g.overlay.clone();
            if !g.hidden.is_empty() {
                overlay.push(g.txid, g.hidden.clone());
            }
            let s = Arc::new(Snapshot {
                txid: g.txid,
                seq: g.seq,
                header: g.header,
                overlay,
                uid: SNAPSHOT_UID.fetch_add(1, Ordering::Relaxed),
            });
            self.slots
                .current
                .store(Arc::as_ptr(&s).cast_mut(), Ordering::SeqCst);
            g.cached = Some(s.clone());
            g.handed.push_back(s);
        }
        let s = g.cached.as_ref().expect("made above");
        self.pinned_under_lock(slot, s)
    }

    /// Pin `s`, the current snapshot, with the registry's lock held (so the writer cannot
    /// change the current snapshot or drop it meanwhile): in `slot` if the reader has one,
    /// else by a clone of its `Arc`.
    fn pinned_under_lock(&self, slot: Option<usize>, s: &Arc<Snapshot>) -> Pinned<'_> {
        match slot {
            Some(i) => {
                let p = Arc::as_ptr(s);
                self.slots.slot[i].0.store(p.cast_mut(), Ordering::SeqCst);
                Pinned::Slot(self, i, p)
            }
            None => Pinned::Arc(self, Some(s.clone())),
        }
    }

    /// A reader dropped its pin (its `Arc`): wake a commit waiting for readers, if any.
    pub(crate) fn unpinned(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _g = self.wait_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.gone.notify_all();
        }
    }

    /// Transaction `txid` committed with `header`, writing `frame`, which the file does not
    /// hold yet (and it stops showing areas hidden for in-place writes: they are live in this
    /// state, and the file holds them). Returns the lowest txid a reader is pinned at (`None`:
    /// no reader), read in the same critical section.
    pub(crate) fn commit(&self, txid: u64, header: HeapHeader, frame: Frame) -> Option<u64> {
        let mut g = self.write();
        g.txid = txid;
        g.header = header;
        g.hidden.clear();
        if !matches!(&frame, Frame::Pieces(p) if p.is_empty()) {
            g.pending.push((txid, frame));
        }
        if g.pins(&self.slots).next().is_some() {
            // Readers are about: merge now, so that the next one to pin finds little to do.
            g.merge_pending(None);
        }
        g.changed(&self.slots);
        g.oldest_pin(&self.slots)
    }

    /// The file now holds every frame up to `txid`: snapshots made from now on read them there.
    pub(crate) fn published(&self, txid: u64) {
        let mut g = self.write();
        g.overlay.drop_published(txid);
        let n = g.pending.partition_point(|(t, _)| *t <= txid);
        g.pending.drain(..n);
        g.changed(&self.slots);
    }

    /// Show `areas` as zeros to readers that pin from now on; returns the `seq` that readers
    /// who began before have below it.
    pub(crate) fn hide(&self, areas: Vec<Piece>) -> u64 {
        let mut g = self.write();
        g.hidden = areas;
        g.changed(&self.slots);
        g.seq
    }

    /// The lowest txid a reader is pinned at, if any. (A reader that pins meanwhile pins the
    /// current state, which holds every committed frame.)
    pub(crate) fn oldest_pin(&self) -> Option<u64> {
        self.read().oldest_pin(&self.slots)
    }

    /// Whether any reader is pinned (a hint: one may pin a moment later).
    pub(crate) fn pinned(&self) -> bool {
        self.read().pins(&self.slots).next().is_some()
    }

    /// Wait until no reader pinned at a snapshot published before `seq` (or, with `txid`, at a
    /// txid below it) is left.
    pub(crate) fn wait_for(&self, seq: u64, txid: u64) {
        let blocked = || {
            self.read()
                .pins(&self.slots)
                .any(|(s, t)| s < seq || t < txid)
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut g = self.wait_lock.lock().unwrap_or_else(|e| e.into_inner());
        while blocked() {
            // `unpinned` notifies under `wait_lock` after the reader dropped its `Arc`, so a
            // check made under it cannot miss the last one; the timeout is only a safety net.
            g = self
                .gone
                .wait_timeout(g, std::time::Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(g);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reader's pin: a slot holding the snapshot's address, or a clone of its `Arc`. Dropping
/// it unpins, then wakes a commit that waits for readers, if any.
pub(crate) enum Pinned<'r> {
    /// Slot `i` of the registry holds `*const Snapshot`.
    Slot(&'r Registry, usize, *const Snapshot),
    /// (`None` only while being dropped.)
    Arc(&'r Registry, Option<Arc<Snapshot>>),
}

impl std::ops::Deref for Pinned<'_> {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        match self {
            // SAFETY: the slot holds this address from before the snapshot was checked to be
            // current (or under the registry's lock) until this guard is dropped, and the
            // registry drops a handed snapshot only when no slot holds its address (`changed`
            // scans the slots after making it non-current, in one total order with the
            // reader's publish and check: `Slots::protect`), so the `Arc` the registry keeps
            // in `handed` keeps it alive for as long as this guard lives.
            Pinned::Slot(_, _, p) => unsafe { &**p },
            Pinned::Arc(_, s) => s.as_ref().expect("taken only in drop"),
        }
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let registry = match self {
            Pinned::Slot(r, i, _) => {
                // SeqCst, as the load of `waiting` in `unpinned` and the waiter's increment and
                // scan: either the waiter's scan sees the slot empty or this sees the waiter.
                r.slots.slot[*i]
                    .0
                    .store(std::ptr::null_mut(), Ordering::SeqCst);
                *r
            }
            Pinned::Arc(r, s) => {
                // Release the `Arc` before the wake-up: a waiting commit re-checks the pins.
                drop(s.take());
                *r
            }
        };
        registry.unpinned();
    }
}

/// Readers' slots, as in LMDB's reader table: a reader claims a free slot (the one its thread
/// used last, usually: it stays in that core's cache), writes the address of the current
/// snapshot there, and checks that it is still current; the writer makes a snapshot
/// non-current before it scans the slots to decide what is pinned. With sequentially
/// consistent stores and loads on both sides, either the writer's scan sees the reader's slot
/// or the reader's check sees the change (and it tries again). Before these, every pin cloned
/// one `Arc` under one lock: two shared cache lines written twice per read, and four reader
/// threads read less than one (R-scale 0.85x).
pub(crate) struct Slots {
    /// The current snapshot's address (null until a reader asks for one after a change); the
    /// registry's `cached` and `handed` own it.
    current: AtomicPtr<Snapshot>,
    slot: Box<[Slot]>,
}

/// One reader's slot, alone on its cache lines. Null: free; `CLAIMED`: a reader owns it but
/// pins nothing yet; else the address of the snapshot its reader pins.
#[repr(align(128))]
struct Slot(AtomicPtr<Snapshot>);

/// Readers at once that pin through a slot (more take the lock and clone an `Arc`).
const READER_SLOTS: usize = 64;

fn claimed() -> *mut Snapshot {
    std::ptr::NonNull::<Snapshot>::dangling().as_ptr()
}

std::thread_local! {
    /// The slot this thread used last (a hint; `usize::MAX` before its first read).
    static SLOT_HINT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("slots", &self.slot.len())
            .finish()
    }
}

impl Slots {
    fn new() -> Slots {
        Slots {
            current: AtomicPtr::new(std::ptr::null_mut()),
            slot: (0..READER_SLOTS)
                .map(|_| Slot(AtomicPtr::new(std::ptr::null_mut())))
                .collect(),
        }
    }

    /// Claim a free slot: this thread's last one, or one of the next few.
    fn claim(&self) -> Option<usize> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut start = SLOT_HINT.with(|h| h.get());
        if start == usize::MAX {
            start = NEXT.fetch_add(1, Ordering::Relaxed) % READER_SLOTS;
        }
        for k in 0..8 {
            let i = (start + k) % READER_SLOTS;
            let s = &self.slot[i].0;
            if s.load(Ordering::Relaxed).is_null()
                && s.compare_exchange(
                    std::ptr::null_mut(),
                    claimed(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                SLOT_HINT.with(|h| h.set(i));
                return Some(i);
            }
        }
        None
    }

    /// Publish the current snapshot in claimed slot `i` and check that it is still current:
    /// its address, protected; `None` if there is no current snapshot (the slot stays
    /// claimed, for the caller to fill under the lock).
    fn protect(&self, i: usize) -> Option<*const Snapshot> {
        let s = &self.slot[i].0;
        loop {
            let p = self.current.load(Ordering::SeqCst);
            if p.is_null() {
                return None;
            }
            s.store(p, Ordering::SeqCst);
            if self.current.load(Ordering::SeqCst) == p {
                return Some(p);
            }
            s.store(claimed(), Ordering::Relaxed);
        }
    }

    /// Whether a slot holds `s`.
    fn hold(&self, s: &Arc<Snapshot>) -> bool {
        let p = Arc::as_ptr(s).cast_mut();
        self.slot.iter().any(|x| x.0.load(Ordering::SeqCst) == p)
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
        let mut frames: Vec<Vec<Piece>> = Vec::new();
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
            frames.push(pieces.clone());
            ov.push(txid, pieces);
            assert!(ov.segments.len() <= 12, "{} segments", ov.segments.len());
            for _ in 0..20 {
                let off = next(4000);
                let len = 1 + next(96);
                let ps: Vec<&Piece> = ov.pieces(off, off + len).collect();
                let mut out = vec![0xEEu8; len as usize];
                compose(off, ps.iter().copied(), &mut out, |_, b| b.fill(0));
                assert_eq!(
                    out,
                    model[off as usize..(off + len) as usize],
                    "txid {txid} at {off}+{len}"
                );
            }
        }
        let flat = ov.flatten();
        assert_eq!(
            newest_wins(frames.iter().map(|f| &f[..]))
                .iter()
                .map(|p| (p.start, p.end))
                .collect::<Vec<_>>(),
            flat.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>()
        );
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
