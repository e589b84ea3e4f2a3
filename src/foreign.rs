//! Readers in other processes (docs/ARCHITECTURE.md section 17): a read-only handle opened
//! while a writer holds the file follows the writer's log, and the writer leaves alone what
//! such a reader may be looking at.
//!
//! Owns: the byte-range locks that carry the protocol (docs/FORMAT.md, "Reader locks"), the
//! writer's side (`Foreign`: the lowest state a reader elsewhere holds, and shutting readers
//! out while the log is emptied or bytes are written in place) and the reader's (`Live`:
//! entering, following the log into the registry, pins). May not: write the file (a live
//! reader never does) or decide when the writer publishes (the writer asks `Foreign`).
//!
//! The locks are open-file-description locks (Linux `F_OFD_*`) on bytes far past any file's
//! end (offsets from [`LOCK_BASE`]), so they never touch data and vanish with the process
//! that held them:
//! - the *entry* byte `LOCK_BASE`: a reader holds it shared while it reads the superblock and
//!   the log and builds its state; the writer publishes nothing while it is held;
//! - the *pin* byte `LOCK_BASE + 1 + txid`: a reader holds it shared while it reads state
//!   `txid`; the writer puts no frame after `txid` into the file meanwhile;
//! - the writer takes everything from `LOCK_BASE` on exclusively (waiting for the readers in
//!   it) to empty the log, to write in place, to compact, and to recover.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use txheap_recovery::{self as recovery, Storage, Superblock};

use crate::alloc::{HeapHeader, HEAP_HEADER_LEN};
use crate::error::{Error, Result};
use crate::layout::{needed_len, Geometry};
use crate::shared::Shared;
use crate::snapshot::{newest_wins, Frame, Piece, Src};
use crate::storage::FileStorage;
use crate::sys::{self, RangeLock};

/// The first byte of the reader locks: past the largest file the format addresses
/// (`FILE_SIZE_MAX`, 2^56), and low enough that every pin (`txid` at most 2^62) fits an
/// `off_t`.
pub(crate) const LOCK_BASE: u64 = 1 << 61;

/// The entry byte.
const ENTRY: (u64, u64) = (LOCK_BASE, 1);

/// The byte a writer that answers readers beside it holds shared for as long as it is open (a
/// writer of an older txheap, which ignores them, does not): a live open beside a writer that
/// does not hold it is refused.
const ANSWERS: (u64, u64) = (LOCK_BASE - 1, 1);

/// The byte a writer holds exclusively from before it waits to shut readers out until it is
/// done: a reader that finds it held waits before entering. Without it, readers that keep
/// entering and pinning (each overlapping the next) starve the writer's exclusive request,
/// which the kernel grants only once no one holds any byte of it (a review measured an
/// in-place commit waiting over 10 s beside six reading handles).
const WAITING: (u64, u64) = (LOCK_BASE - 2, 1);

/// Every reader lock (length 0: to the end).
const EVERY_LOCK: (u64, u64) = (LOCK_BASE, 0);

/// The pin byte of state `txid`.
fn pin_byte(txid: u64) -> (u64, u64) {
    (LOCK_BASE + 1 + txid, 1)
}

/// Whether the sabotage switch `FOREIGN_READERS_IGNORED` is on (crash and stress tests only).
fn ignored() -> bool {
    #[cfg(feature = "test-hooks")]
    {
        recovery::sabotage::active(recovery::sabotage::FOREIGN_READERS_IGNORED)
    }
    #[cfg(not(feature = "test-hooks"))]
    false
}

/// The writer's side: asks which states readers elsewhere hold, and shuts them out.
#[derive(Debug)]
pub(crate) struct Foreign {
    file: Arc<File>,
    /// Nested exclusions (a checkpoint inside a compaction): the lock is taken by the first
    /// and released by the last, over the range the first took.
    depth: Mutex<(usize, Option<(u64, u64)>)>,
}

impl Foreign {
    /// The writer's side on `file` (the writer's own description), if the platform and the
    /// filesystem take open-file-description locks (asked once, here); otherwise no reader
    /// can follow from elsewhere either (its open is refused with `Locked`, as before).
    pub(crate) fn probe(file: &Arc<File>) -> Option<Foreign> {
        sys::range_lock_conflict(file, EVERY_LOCK).ok()?;
        // Said for as long as the description is open (closing it drops the lock).
        sys::range_lock(file, RangeLock::Shared, ANSWERS, false).ok()?;
        Some(Foreign {
            file: file.clone(),
            depth: Mutex::new((0, None)),
        })
    }

    /// Whether the writer holding `file` (another description) answers readers beside it:
    /// `Some(false)` when no writer says so (one of an older txheap, or none any more),
    /// `None` when the platform has no such locks.
    pub(crate) fn writer_answers(file: &File) -> Option<bool> {
        sys::range_lock_conflict(file, ANSWERS)
            .ok()
            .map(|c| c.is_some())
    }

    /// The lowest state a reader in another process holds, `Some(0)` while one is entering
    /// (it may be reading the log: hold every frame back), `None` for none. One `fcntl` when
    /// no reader is about, one more per distinct lower pin found. If the question itself
    /// fails, `Some(0)`: the frames stay out of the file, and the next exclusion (a
    /// checkpoint's) reports the failure.
    pub(crate) fn oldest(&self) -> Option<u64> {
        if ignored() {
            return None;
        }
        let mut found: Option<u64> = None;
        loop {
            let range = match found {
                None => EVERY_LOCK,
                Some(LOCK_BASE) => break,
                Some(s) => (LOCK_BASE, s - LOCK_BASE),
            };
            match sys::range_lock_conflict(&self.file, range) {
                Ok(None) => break,
                Ok(Some((s, _))) => {
                    let s = s.max(LOCK_BASE);
                    if found.is_some_and(|f| s >= f) {
                        break;
                    }
                    found = Some(s);
                }
                Err(_) => return Some(0),
            }
        }
        found.map(|s| s.saturating_sub(LOCK_BASE + 1))
    }

    /// Wait until no reader elsewhere is entering or pinned, and keep new ones out (they wait
    /// at their entry) until the guard is dropped. With `below`, only the readers pinned below
    /// that txid are waited for (and new ones kept out): those pinned at it or later go on.
    pub(crate) fn exclude(&self, below: Option<u64>) -> Result<Excluded<'_>> {
        self.exclude_with(below, None)
    }

    /// [`Foreign::exclude`] of every reader, waiting at most `wait` for those in a read
    /// (`Locked`, naming `path`, past it): the writable open's (`Options::lock_wait`), which
    /// a reader paused in its read would otherwise hold for ever (a review found
    /// `Heap::open` with no wait still waiting after 5 s).
    pub(crate) fn exclude_within(&self, wait: Duration, path: &Path) -> Result<Excluded<'_>> {
        self.exclude_with(None, Some((wait, path)))
    }

    fn exclude_with(
        &self,
        below: Option<u64>,
        within: Option<(Duration, &Path)>,
    ) -> Result<Excluded<'_>> {
        let mut depth = self.depth.lock().unwrap_or_else(|e| e.into_inner());
        if depth.0 == 0 && !ignored() {
            let range = match below {
                None => EVERY_LOCK,
                Some(t) => (LOCK_BASE, 1 + t),
            };
            let io = |e| {
                Error::io(
                    "shut out readers in other processes (fcntl F_OFD_SETLKW)",
                    LOCK_BASE,
                    e,
                )
            };
            // First the waiting byte (readers hold it only for an instant, while a writer holds
            // it): readers that have not entered yet wait. Then those in the range, whose
            // reads end by themselves; once the waiting byte is held no new one enters, so the
            // writer goes first (a review found readers overlapping each other starving a
            // writer that polled the range alone). Within a deadline, both are asked without
            // blocking (a review found a reader stopped in its instant on the waiting byte
            // holding a blocking take, and so the open, for ever).
            let block = within.is_none();
            // (A wait too long to add to now is a wait without end.)
            let deadline = within.and_then(|(w, _)| Instant::now().checked_add(w));
            let mut pause = Duration::from_millis(1);
            let mut waiting = false;
            loop {
                if !waiting {
                    waiting = sys::range_lock(&self.file, RangeLock::Exclusive, WAITING, block)
                        .map_err(io)?;
                }
                if waiting {
                    match sys::range_lock(&self.file, RangeLock::Exclusive, range, block) {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(e) => {
                            let _ = sys::range_lock(&self.file, RangeLock::Unlock, WAITING, false);
                            return Err(io(e));
                        }
                    }
                }
                let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
                if left.is_zero() {
                    if waiting {
                        let _ = sys::range_lock(&self.file, RangeLock::Unlock, WAITING, false);
                    }
                    let path = within.map(|(_, p)| p.to_path_buf()).unwrap_or_default();
                    return Err(Error::Locked { path });
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            depth.1 = Some(range);
        }
        depth.0 += 1;
        Ok(Excluded(Some(self)))
    }
}

/// Readers in other processes are shut out while this lives (see [`Foreign::exclude`]).
#[must_use]
pub(crate) struct Excluded<'a>(Option<&'a Foreign>);

impl Excluded<'_> {
    /// A guard that shuts nobody out (no writer side: a read-only handle, or no locks here).
    pub(crate) fn none() -> Excluded<'static> {
        Excluded(None)
    }
}

impl Drop for Excluded<'_> {
    fn drop(&mut self) {
        let Some(f) = self.0 else { return };
        let mut depth = f.depth.lock().unwrap_or_else(|e| e.into_inner());
        depth.0 -= 1;
        if depth.0 == 0 {
            if let Some(range) = depth.1.take() {
                // (An unlock of our own lock cannot fail but for a closed descriptor, which
                // the `Arc` rules out; and closing the description would release it anyway.)
                let _ = sys::range_lock(&f.file, RangeLock::Unlock, range, false);
                let _ = sys::range_lock(&f.file, RangeLock::Unlock, WAITING, false);
            }
        }
    }
}

/// A read-only handle's side, when it was opened beside a writer: it follows the log.
#[derive(Debug)]
pub(crate) struct Live {
    file: Arc<File>,
    /// The heap's offset and the log's size, as mapped: a superblock that says otherwise is a
    /// different file.
    geometry: (u64, u64),
    /// Held by an entry (one at a time in this process).
    state: Mutex<LiveState>,
    /// How many reads of this process hold each pin byte (one lock per byte: a description
    /// holds a byte or not). A mutex of its own: a read that ends must not wait for an entry,
    /// which may itself wait for a writer that waits for that read's pin.
    pins: Mutex<BTreeMap<u64, usize>>,
}

#[derive(Debug)]
struct LiveState {
    storage: FileStorage,
    /// `None` before the first entry.
    at: Option<Position>,
}

/// Where a live handle stands in the writer's log: the superblock whose log it follows,
/// where the next frame of that generation is expected (log-relative) and its txid, and the
/// heap header as the frames read so far leave it.
#[derive(Clone, Copy, Debug)]
struct Position {
    sb: Superblock,
    at: u64,
    next_txid: u64,
    header: [u8; HEAP_HEADER_LEN as usize],
}

/// What an entry found: the state the file held at the superblock's checkpoint, if the
/// superblock changed (every frame of the old generation is in the file then), the new frames'
/// state, merged, and the position after them (stored only once the update is applied, so
/// that a failed entry is tried again whole).
pub(crate) struct Update {
    reset: Option<(u64, HeapHeader)>,
    frames: Option<(u64, HeapHeader, Arc<[Piece]>)>,
    next: Position,
}

impl Live {
    pub(crate) fn new(file: Arc<File>, sb: &Superblock) -> Result<Live> {
        let storage =
            FileStorage::new(file.clone(), 0, false).map_err(|e| Error::io("storage", 0, e))?;
        Ok(Live {
            file,
            geometry: (sb.heap_offset(), sb.log_size),
            state: Mutex::new(LiveState { storage, at: None }),
            pins: Mutex::new(BTreeMap::new()),
        })
    }

    /// Enter: one entry at a time in this process, holding the entry byte (waiting while the
    /// writer shuts readers out). The guard releases it.
    pub(crate) fn enter(&self) -> Result<Entry<'_>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let io = |e| Error::io("enter as a reader beside the writer (fcntl)", LOCK_BASE, e);
        // A writer waiting to shut readers out goes first (see `WAITING`): wait until it is
        // done, then enter. Asked with a shared probe, which sees only a writer's exclusive
        // hold: other readers' instant shared holds of the byte (here) are no writer (a review
        // found readers taking each other's for one, spinning for ever beside a reader stopped
        // in that instant, and starving the writer's next exclusive take of the byte).
        while sys::range_locked_exclusive(&self.file, WAITING).map_err(io)? {
            sys::range_lock(&self.file, RangeLock::Shared, WAITING, true).map_err(io)?;
            sys::range_lock(&self.file, RangeLock::Unlock, WAITING, false).map_err(io)?;
        }
        sys::range_lock(&self.file, RangeLock::Shared, ENTRY, true).map_err(|e| {
            Error::io(
                "enter as a reader beside the writer (fcntl F_OFD_SETLKW)",
                LOCK_BASE,
                e,
            )
        })?;
        Ok(Entry { live: self, st })
    }

    /// A read of state `txid` ended.
    pub(crate) fn unpin(&self, txid: u64) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pins.get_mut(&txid) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&txid);
                let _ = sys::range_lock(&self.file, RangeLock::Unlock, pin_byte(txid), false);
            }
        }
    }
}

/// A read of a state (`.1`) in progress: dropping it unpins (after the read's own pin in the
/// registry is gone, since it is declared after it).
pub(crate) struct Held<'a>(pub &'a Live, pub u64);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.unpin(self.1);
    }
}

/// An entry in progress: the entry byte is held, and no other entry of this process runs.
pub(crate) struct Entry<'a> {
    live: &'a Live,
    st: MutexGuard<'a, LiveState>,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let _ = sys::range_lock(&self.live.file, RangeLock::Unlock, ENTRY, false);
    }
}

impl Entry<'_> {
    /// Read the superblock and the frames committed since the last entry (all of the log's,
    /// after a checkpoint or at the first entry). Changes nothing: [`Entry::apply`] does.
    pub(crate) fn refresh(&self) -> Result<Update> {
        let st = &*self.st;
        let (sb, _) = recovery::select_superblock(&st.storage)?;
        let (heap_offset, log_size) = self.live.geometry;
        if (sb.heap_offset(), sb.log_size) != (heap_offset, log_size) {
            return Err(Error::Corrupt {
                offset: 0,
                what: format!(
                    "the heap's geometry changed under a reader (log {log_size} bytes, heap at \
                     {heap_offset}; now {} and {}): the file was replaced",
                    sb.log_size,
                    sb.heap_offset()
                ),
            });
        }
        let mut reset = None;
        let pos = match st.at {
            Some(p) if p.sb.seq == sb.seq && p.sb.generation == sb.generation => p,
            _ => {
                // The file holds every frame before the new generation (the writer
                // checkpoints only with readers shut out, after putting every frame into the
                // file).
                let mut header = [0u8; HEAP_HEADER_LEN as usize];
                st.storage
                    .read_at(sb.heap_offset(), &mut header)
                    .map_err(|e| Error::io("read the heap header", sb.heap_offset(), e))?;
                let h = HeapHeader::decode(&header, sb.heap_offset())?;
                needed_len(&sb, &h)?;
                reset = Some((sb.next_txid.saturating_sub(1), h));
                Position {
                    sb,
                    at: 0,
                    next_txid: sb.next_txid,
                    header,
                }
            }
        };
        let heap_offset = sb.heap_offset();
        let mut data: Vec<u8> = Vec::new();
        let mut spans: Vec<(u64, u64, usize)> = Vec::new();
        let mut bounds: Vec<usize> = Vec::new();
        let count = std::cell::Cell::new(0usize);
        let mut header = pos.header;
        // (The scan ends at the first frame that does not verify: the end of a log being
        // written is a frame half written. It does not search past it for damage, as the
        // writer's recovery does: that reads the rest of the region.)
        let scan = recovery::scan_log_from(
            &st.storage,
            &sb,
            (pos.at, pos.next_txid),
            &mut |off, bytes| {
                spans.push((off, off + bytes.len() as u64, data.len()));
                data.extend_from_slice(bytes);
                count.set(count.get() + 1);
                Ok(())
            },
            &mut |_, _| bounds.push(count.get()),
        )?;
        if scan.frames == 0 {
            return Ok(Update {
                reset,
                frames: None,
                next: pos,
            });
        }
        // The header as these frames leave it (they log only the words they change).
        for &(a, b, at) in &spans {
            let (lo, hi) = (a.max(heap_offset), b.min(heap_offset + HEAP_HEADER_LEN));
            if lo < hi {
                let src = at + (lo - a) as usize;
                header[(lo - heap_offset) as usize..(hi - heap_offset) as usize]
                    .copy_from_slice(&data[src..src + (hi - lo) as usize]);
            }
        }
        let h = HeapHeader::decode(&header, heap_offset)?;
        needed_len(&sb, &h)?;
        let data: Arc<[u8]> = data.into();
        let pieces: Vec<Piece> = spans
            .iter()
            .map(|&(start, end, at)| Piece {
                start,
                end,
                src: Src::Bytes(data.clone(), at),
            })
            .collect();
        let mut frames = Vec::with_capacity(bounds.len());
        let mut from = 0;
        for &b in &bounds {
            frames.push(&pieces[from..b]);
            from = b;
        }
        let merged = newest_wins(frames.into_iter());
        Ok(Update {
            reset,
            frames: Some((scan.next_txid - 1, h, merged.into())),
            next: Position {
                sb,
                at: scan.end_offset,
                next_txid: scan.next_txid,
                header,
            },
        })
    }

    /// Lay `update` into the handle's registry: first make its mapping reach the new heap end
    /// (a failure changes nothing, and the next entry tries again), then the registry, the
    /// handle's `max_size` (the writer may have raised it: a backup from this handle formats
    /// its copy with it), then this handle's position.
    pub(crate) fn apply(&mut self, update: Update, sh: &Shared, file: &File) -> Result<()> {
        let (registry, map) = (&sh.registry, &sh.map);
        let chunks = update
            .frames
            .as_ref()
            .map(|f| f.1.chunk_count)
            .or(update.reset.map(|r| r.1.chunk_count));
        if let Some(count) = chunks {
            let end = Geometry::of(&update.next.sb).heap_end(count);
            if end > map.mapped_len() {
                // The writer grew the file before committing frames that use the new chunks.
                let len = file.metadata().map_err(|e| Error::io("stat", 0, e))?.len();
                if len < end {
                    return Err(Error::Truncated { len, needed: end });
                }
                if end > map.reserved_len() {
                    map.grow_in_place(file, end.div_ceil(sys::PAGE as u64) * sys::PAGE as u64)
                        .map_err(|e| {
                            Error::io(
                                "grow the mapping to the heap's new end (the writer raised \
                                 max_size; reopen the read-only handle)",
                                end,
                                e,
                            )
                        })?;
                }
                map.extend(end)
                    .map_err(|e| Error::io("map the heap's new end", end, e))?;
            }
        }
        if let Some((txid, header)) = update.reset {
            // Every frame up to `txid` is in the file: snapshots from now on read it there.
            registry.published(u64::MAX);
            registry.commit(txid, header, Frame::Pieces(Arc::new([])));
        }
        if let Some((txid, header, pieces)) = update.frames {
            registry.commit(txid, header, Frame::Pieces(pieces));
        }
        // (A review found a backup from such a handle, after the writer raised `max_size` and
        // grew past the old one, formatted with the old one: the copy refused to open.)
        if update.next.sb.max_size > sh.max_size() {
            sh.set_max_size(update.next.sb.max_size);
        }
        self.st.at = Some(update.next);
        Ok(())
    }

    /// Hold state `txid` for a read: the writer puts no later frame into the file until
    /// [`Live::unpin`].
    pub(crate) fn pin(&mut self, txid: u64) -> Result<()> {
        let mut pins = self.live.pins.lock().unwrap_or_else(|e| e.into_inner());
        let n = pins.entry(txid).or_insert(0);
        if *n == 0 {
            // Granted at once: only the writer's exclusion conflicts, and it waits for the
            // entry byte this entry holds.
            sys::range_lock(&self.live.file, RangeLock::Shared, pin_byte(txid), true)
                .map_err(|e| Error::io("pin a state (fcntl F_OFD_SETLKW)", pin_byte(txid).0, e))?;
        }
        *n += 1;
        Ok(())
    }
}
