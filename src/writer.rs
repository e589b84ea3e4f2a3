//! The writer: the whole commit protocol in one place, plus flush and checkpoint.
//!
//! Owns: the durable write path. `Writer::commit` takes a [`CommitPlan`] (built by the
//! transaction: the staged ranges, which pieces go in place, the frame, the new heap header)
//! and runs docs/ARCHITECTURE.md section 3's steps in order: in-place bytes, their barrier (or,
//! under `None`, the frame's in-place check) or a checkpoint, room in the log, append, barrier,
//! apply, finish. A flush after a checked frame writes its vouchers before any heap page. It
//! also owns the log tail, the transaction ids, the superblock slot, the allocator's committed
//! state and, under `Durability::None`, the private pages not yet written to the file. May not: know
//! transactions or user types (it never imports `tx`), or write the file except through
//! `FileStorage`.
//!
//! Assertions (always on, cheap) state the invariants where bytes cross to disk: a frame is
//! never appended while another commit is in flight, and fits the log; transaction ids advance
//! by one; applied ranges lie inside the mapped heap; in-place and logged pieces tile their
//! staged range.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use txheap_recovery::txheap_log::{FrameBuilder, InPlaceDigest};
use txheap_recovery::{self as recovery, Slot, Storage, Superblock, PAGE_SIZE};

use crate::alloc::{Allocator, HeapHeader, Keyed};
use crate::error::{Error, Result};
use crate::foreign::Excluded;
use crate::limits::{
    CHUNK_SIZE, KEPT_PAGES_MAX, PENDING_PAGES_MAX, PUBLISH_BATCH, READER_FLUSH_FRAMES,
    READER_FLUSH_RETRY,
};
use crate::options::{Durability, Stats};
use crate::shared::Shared;
use crate::snapshot::{copy_pieces, decode_frame, newest_wins, Frame, Piece, Src};
use crate::stage::Stage;
use crate::storage::FileStorage;
use txheap_recovery::{failpoint, phase};

/// Log bytes kept for the two voucher frames a flush writes after a frame with an in-place check:
/// empty frames whose evidence covers every frame before them, the first padded so that the
/// second starts in another page (`Writer::append_vouchers`).
const VOUCHER_LEN: u64 = txheap_recovery::txheap_log::VOUCHERS_LEN_MAX;

/// Everything only the writer touches (behind the heap's writer mutex).
pub(crate) struct Writer {
    pub storage: FileStorage,
    sb: Superblock,
    slot: Slot,
    log_tail: u64,
    /// The end of the highest heap range any frame now in the log writes (0 when the log is
    /// empty): a fresh extent starting at or above it is written by no frame that could replay
    /// over it, so its in-place bytes need a barrier but no checkpoint.
    log_high: u64,
    next_txid: u64,
    /// The highest txid a completed barrier has made durable: the evidence each new frame
    /// carries (`durable_txid`), which lets recovery tell a damaged durable frame from a torn one.
    durable_txid: u64,
    /// Log bytes written since the last barrier (Durability::None), absolute offsets.
    unsynced: Option<(u64, u64)>,
    /// A frame in the log carries an in-place check (its in-place bytes had no barrier of their
    /// own, under `None`) and no voucher frame has followed the barrier that covers them: the
    /// next flush must write one before the file's heap pages change (section 3, step 5a).
    check_pending: bool,
    pub alloc: Allocator,
    /// The committed heap header.
    pub header: HeapHeader,
    /// The frame of the commit in progress (reused between commits).
    pub frame: FrameBuilder,
    /// The stage a transaction borrows and gives back cleared (its spare buffers reused);
    /// `None` while a transaction holds it. Boxed: moving the stage itself (several hundred
    /// bytes of indexes and hints) into and out of each transaction was two `memcpy`s a commit.
    pub spare_stage: Option<Box<Stage>>,
    /// The bytes a transaction's nested scopes saved (`Tx::nested`); empty between
    /// transactions.
    pub nest: crate::stage::Nest,
    /// Pages of the writer's mapping holding private copy-on-write bytes (frames the file did
    /// not hold when they were applied: under `None` until a flush, under `Full` while a reader
    /// pinned an older state).
    pending_pages: PendingPages,
    /// A flush is due when `pending_pages` grows past this (it rises while readers hold frames
    /// back, so that commits do not flush again and again for nothing).
    flush_pages_at: usize,
    /// Committed frames the file does not hold yet, oldest first: (txid, its pieces). The
    /// registry holds them too, for the snapshots readers pin.
    unpublished: VecDeque<(u64, Frame)>,
    /// Where the last frame went in the log (absolute offset, length).
    last_frame: (u64, usize),
    /// Set while a commit is between writing its frame and finishing apply.
    in_commit: bool,
    /// The open kept the log's generation without a checkpoint (it replayed frames and left
    /// them in the log, or found none): frames of this generation that recovery did not replay
    /// (after a torn or damaged frame) may lie beyond the tail, and a new frame of the same
    /// length as the one they followed would make them replayable. The first commit
    /// checkpoints first, so they can never count (cleared by every checkpoint).
    kept_generation: bool,
    /// The log-start witness of this generation is written (`recovery::Witness`): its first
    /// frame was durable, and a lost write of it can no longer pass for the sentinel.
    witnessed: bool,
    /// The close must checkpoint even when the handle is idle: the open found a torn frame or
    /// a damaged superblock slot, which a checkpoint clears (cleared by every checkpoint).
    untidy: bool,
    commits: u64,
    checkpoints: u64,
}

/// What a transaction asks the writer to commit. The frame itself is in `Writer::frame`.
pub(crate) struct CommitPlan<'a> {
    /// Every staged range: user data and allocator metadata.
    pub stage: &'a mut Stage,
    /// Data areas of large extents and new runs this transaction allocated from free space,
    /// disjoint and sorted by start ([`add_area`]): their bytes go in place instead of through
    /// the log (under `None` only when `Tx::commit` keeps them, section 3 step 5a).
    pub fresh: Vec<(u64, u64)>,
    /// The heap header after this transaction.
    pub header: HeapHeader,
    /// Whether any staged byte goes in place (set while building the frame).
    pub in_place: bool,
    /// The end of the highest logged piece, 0 if none (set while building the frame, which
    /// asserts that every logged piece lies inside the mapped heap).
    pub logged_end: u64,
}

/// Add `area` to `areas`, which stay sorted by start and disjoint: an area that overlaps others
/// is merged with them. (Each is space the transaction took from free space; two overlap only
/// when a nested scope's space, given back by its rollback, is taken again: a review found the
/// list then held the same start twice, and a write inside the larger area judged not fresh.)
pub(crate) fn add_area(areas: &mut Vec<(u64, u64)>, area: (u64, u64)) {
    let (mut a, mut b) = area;
    // The first area that ends after `a`: the sorted, disjoint areas' ends are sorted too.
    let lo = areas.partition_point(|&(_, e)| e <= a);
    let mut hi = lo;
    while hi < areas.len() && areas[hi].0 < b {
        a = a.min(areas[hi].0);
        b = b.max(areas[hi].1);
        hi += 1;
    }
    areas.splice(lo..hi, [(a, b)]);
}

/// The area of the sorted, disjoint `areas` that contains `p`, if any, else the start of the
/// next one above `p` (`Err`, `u64::MAX` if none). A binary search: a bulk transaction
/// collects hundreds of areas, and every write it stages asks (a linear scan made a million
/// allocations quadratic: 1,046 instructions per allocation at 100,000 and 1,347 at 400,000).
fn area_at(areas: &[(u64, u64)], p: u64) -> std::result::Result<(u64, u64), u64> {
    let i = areas.partition_point(|&(a, _)| a <= p);
    match i.checked_sub(1).map(|j| areas[j]) {
        Some((a, b)) if p < b => Ok((a, b)),
        _ => Err(areas.get(i).map_or(u64::MAX, |&(a, _)| a)),
    }
}

/// Whether `[off, off+len)` lies inside one of the sorted, disjoint `areas`.
pub(crate) fn inside(areas: &[(u64, u64)], off: u64, len: u64) -> bool {
    // Bulk allocation fills the highest area: that one answers without a search.
    match areas.last() {
        Some(&(a, b)) if off >= a => off < b && off + len <= b,
        _ => matches!(area_at(areas, off), Ok((_, b)) if off + len <= b),
    }
}

impl CommitPlan<'_> {
    /// Call `f(offset, bytes, in_place)` for the pieces of every staged range, in offset order:
    /// a range is cut at the boundaries of fresh extents, and a piece inside one goes in place
    /// (allocator metadata lives in the zones' table chunks, never inside an extent, so a fresh
    /// extent holds only its object's bytes); the rest is logged. A staged range can span a
    /// fresh extent and its neighbours: appends extend the highest range, so two adjacent new
    /// objects, or an object and the next chunk's new run, make one range. Fresh extents are
    /// chunk-aligned and ranges 64-byte aligned, so the cuts fall on line boundaries. Allocates
    /// nothing (it runs for every range of every commit).
    pub(crate) fn for_each_piece(
        &mut self,
        mut f: impl FnMut(u64, &[u8], bool) -> Result<()>,
    ) -> Result<()> {
        let fresh = &self.fresh;
        for (off, bytes) in self.stage.ranges() {
            let end = off + bytes.len() as u64;
            let mut p = off;
            while p < end {
                let (q, in_place) = match area_at(fresh, p) {
                    Ok((_, b)) => (b.min(end), true),
                    Err(next) => (next.min(end), false),
                };
                f(p, &bytes[(p - off) as usize..(q - off) as usize], in_place)?;
                p = q;
            }
            assert_eq!(p, end, "pieces do not tile the staged range at {off}");
        }
        Ok(())
    }
}

impl Writer {
    pub(crate) fn new(
        storage: FileStorage,
        (sb, slot): (Superblock, Slot),
        (log_tail, next_txid): (u64, u64),
        alloc: Allocator,
        header: HeapHeader,
        kept_generation: bool,
    ) -> Writer {
        Writer {
            storage,
            sb,
            slot,
            log_tail,
            // Frames left in the log at open (replayed, not checkpointed): their ranges are not
            // known.
            log_high: if log_tail > 0 { u64::MAX } else { 0 },
            next_txid,
            // An open ends with everything in the log durable (replayed and checkpointed, or
            // nothing to replay). Frames it replayed and left in the log were barriered by
            // recovery before its replay, unless none of them had a range to replay (then no
            // barrier ran: a killed writer's frames may be only in the page cache). The writer
            // does not rely on which: none of this generation counts as durable until its own
            // barrier covers the log up to the tail (a flush; a no-op's cost when recovery's
            // did it already).
            durable_txid: if kept_generation && log_tail > 0 {
                sb.next_txid.saturating_sub(1)
            } else {
                next_txid.saturating_sub(1)
            },
            unsynced: (kept_generation && log_tail > 0)
                .then(|| (sb.log_offset(), sb.log_offset() + log_tail)),
            check_pending: false,
            alloc,
            header,
            frame: FrameBuilder::new(),
            spare_stage: Some(Box::default()),
            nest: Default::default(),
            pending_pages: PendingPages::default(),
            flush_pages_at: PENDING_PAGES_MAX,
            unpublished: VecDeque::with_capacity(crate::limits::FRAMES_RESERVED),
            last_frame: (0, 0),
            in_commit: false,
            kept_generation,
            witnessed: false,
            untidy: false,
            commits: 0,
            checkpoints: 0,
        }
    }

    /// The open found a torn frame or a damaged superblock slot: the close checkpoints even if
    /// nothing is committed.
    pub(crate) fn tidy_at_close(&mut self) {
        self.untidy = true;
    }

    /// A new file: its log holds only the sentinel, so no stale frame can follow a new one.
    pub(crate) fn clear_kept_generation(&mut self) {
        self.kept_generation = false;
    }

    /// Whether a commit was interrupted between writing its frame and finishing apply (by a
    /// panic): the heap must be poisoned.
    pub(crate) fn interrupted(&self) -> bool {
        self.in_commit
    }

    /// Commit `plan`, whose frame is in `self.frame`: the protocol of docs/ARCHITECTURE.md
    /// section 3, steps 5-7. Returns once the frame is in the log (durable under `Full`) and
    /// applied where readers see it; or, when the commit shares a barrier with others (group
    /// commit, section 12), once the frame is in the log and in the writer's mapping, with the
    /// txid to wait for with [`crate::group::Group::wait`] after the writer lock is released.
    pub(crate) fn commit(&mut self, sh: &Shared, mut plan: CommitPlan<'_>) -> Result<Option<u64>> {
        #[cfg(feature = "test-hooks")]
        let skip = recovery::sabotage::active(recovery::sabotage::KEPT_GENERATION_APPEND);
        #[cfg(not(feature = "test-hooks"))]
        let skip = false;
        if self.kept_generation && !skip {
            // Before anything of this commit reaches the file (section 5: a new generation).
            self.checkpoint(sh)?;
        }
        let checked = plan.in_place && self.write_in_place(sh, &mut plan)?;
        self.ensure_log_room(sh, self.frame.encoded_len() as u64, checked)?;
        #[cfg(feature = "test-hooks")]
        if recovery::sabotage::active(recovery::sabotage::APPLY_BEFORE_LOG) {
            // Broken on purpose (crash tests only): heap pages change before the frame exists.
            let storage = &mut self.storage;
            plan.for_each_piece(|at, piece, in_place| {
                if !in_place {
                    storage
                        .write_at(at, piece)
                        .map_err(|e| sh.fail("sabotage apply", at, e))?;
                }
                Ok(())
            })?;
        }
        // Share a barrier (section 12) when other commits queue behind this one, or frames
        // already wait for one; not with in-place bytes (they barrier every frame before them).
        let share = sh.durability == Durability::Full
            && !plan.in_place
            && !self.kept_generation
            && sh.group.should_share();
        // The commit point: the frame, made durable (under Full) by msync of its pages, or
        // (shared) by the group's barrier after the writer lock is released.
        self.append_frame(sh, share)?;
        self.check_pending |= checked;
        if share {
            self.apply_shared(sh, &mut plan)?;
            self.finish_commit(sh, plan.header)?;
            return Ok(Some(self.next_txid - 1));
        }
        // From here on the transaction is committed: apply it where readers will see it.
        self.apply(sh, &mut plan)?;
        self.finish_commit(sh, plan.header)?;
        Ok(None)
    }

    /// The highest txid known durable (under `Full`, shared barriers included).
    fn durable(&mut self, sh: &Shared) -> u64 {
        if sh.durability == Durability::Full {
            self.durable_txid = self.durable_txid.max(sh.group.durable());
        }
        self.durable_txid
    }

    /// Step 5a: write the in-place pieces and make sure they are durable *before* the frame
    /// can be: otherwise a power cut could keep a complete frame (the commit replays) and lose
    /// part of the bytes. Under `Full` a barrier (or a checkpoint) does it here; under `None`
    /// the frame instead carries an in-place check (the pieces and a digest of their bytes),
    /// which recovery verifies against the heap unless a later frame vouches for it, and the
    /// bytes share the barrier of the next flush. Returns whether the frame got a check. The
    /// frame must fit the log at all before anything is written (a transaction that is too
    /// large must fail without touching the file).
    fn write_in_place(&mut self, sh: &Shared, plan: &mut CommitPlan<'_>) -> Result<bool> {
        phase!(IN_PLACE);
        let len = self.frame.encoded_len() as u64;
        if len > sh.geo.log_size {
            return Err(Error::TransactionTooLarge {
                bytes: len,
                log_size: sh.geo.log_size,
            });
        }
        let mut pieces = Vec::new();
        if sh.durability == Durability::None {
            plan.for_each_piece(|at, piece, in_place| {
                if in_place {
                    pieces.push((at, piece.len() as u64));
                }
                Ok(())
            })?;
        }
        // Under `None`, a check when the frame with it and its vouchers fit the log (else the
        // bytes get their barrier here, as under `Full`).
        let checked = sh.durability == Durability::None
            && len + FrameBuilder::in_place_check_len(pieces.len()) as u64 + VOUCHER_LEN
                <= sh.geo.log_size;
        if sh.durability == Durability::None || sh.group.pending().is_some() {
            // (Under `Full`, frames sharing a barrier that has not completed are like `None`'s
            // unsynced frames here.)
            // Under `None` the frees of earlier commits may not be durable yet, and their bytes
            // may sit in private pages that would hide the in-place bytes from the mapping (and
            // overwrite them at the next flush). The flush barriers the log written so far (every
            // committed free is then durable, as under `Full`) and writes the private pages back
            // (`quiet_for_in_place` then drops them). It must come before the pwrites: the
            // kernel may write a page back at any moment after them.
            #[cfg(feature = "test-hooks")]
            let skip = recovery::sabotage::active(recovery::sabotage::IN_PLACE_BEFORE_FLUSH);
            #[cfg(not(feature = "test-hooks"))]
            let skip = false;
            if !skip {
                self.flush(sh)?;
            }
        }
        let _excluded = self.quiet_for_in_place(sh, &plan.fresh)?;
        let mut digest = InPlaceDigest::new();
        {
            let storage = &mut self.storage;
            plan.for_each_piece(|at, piece, in_place| {
                if in_place {
                    storage
                        .write_at(at, piece)
                        .map_err(|e| sh.fail("pwrite in place", at, e))?;
                    if checked {
                        digest.update(piece);
                    }
                }
                Ok(())
            })?;
        }
        failpoint!("commit.after_in_place");
        let lowest = plan.fresh.first().map_or(u64::MAX, |&(a, _)| a);
        #[cfg(feature = "test-hooks")]
        let lowest = if recovery::sabotage::active(recovery::sabotage::IN_PLACE_OVER_LOGGED_RANGE) {
            u64::MAX // broken on purpose (crash tests only): never checkpoint here
        } else {
            lowest
        };
        if self.log_tail > 0 && lowest < self.log_high {
            // An older frame in the log may have written into this extent while it was a live
            // object; replaying it after a crash would overwrite the in-place bytes. So the log
            // must be empty, and the checkpoint's fdatasync also makes the in-place bytes
            // durable (the frame then needs no check). (Until its superblock switch, a crash
            // recovers the old state: the extent is free, the bytes garbage in free space.)
            // When every frame in the log wrote only below the extent (as when a heap grows by
            // appending objects), none can replay over it, and the barrier or check below is
            // enough.
            self.checkpoint(sh)?;
            return Ok(false);
        }
        if checked {
            self.frame
                .push_in_place_check(digest.digest(), &pieces)
                .map_err(|_| Error::TransactionTooLarge {
                    bytes: len + FrameBuilder::in_place_check_len(pieces.len()) as u64,
                    log_size: sh.geo.log_size,
                })?;
            return Ok(true);
        }
        #[cfg(feature = "test-hooks")]
        if recovery::sabotage::active(recovery::sabotage::IN_PLACE_WITHOUT_BARRIER) {
            return Ok(false); // broken on purpose (crash tests only): the frame may outrun them
        }
        self.storage
            .barrier_all()
            .map_err(|e| sh.fail("fdatasync in-place data", 0, e))?;
        Ok(false)
    }

    /// Make room for a frame of `len` bytes, checkpointing if the log is too full. While a frame
    /// with an in-place check waits for its vouchers (or this one, `checked`, will), the log
    /// keeps [`VOUCHER_LEN`] bytes after the frame for them; a checkpoint ends that wait.
    fn ensure_log_room(&mut self, sh: &Shared, len: u64, checked: bool) -> Result<()> {
        if len > sh.geo.log_size {
            return Err(Error::TransactionTooLarge {
                bytes: len,
                log_size: sh.geo.log_size,
            });
        }
        let need = |w: &Writer| {
            w.log_tail
                + len
                + if checked || w.check_pending {
                    VOUCHER_LEN
                } else {
                    0
                }
        };
        if need(self) > sh.geo.log_size {
            self.checkpoint(sh)?;
        }
        // (`write_in_place` checks a frame with a check only when it fits with its vouchers.)
        assert!(
            need(self) <= sh.geo.log_size,
            "a frame of {len} bytes and its vouchers overrun the log after a checkpoint"
        );
        Ok(())
    }

    /// Step 5: write the finished frame at the log tail and, under `Full`, barrier it (unless
    /// `shared`: the group's barrier will).
    fn append_frame(&mut self, sh: &Shared, shared: bool) -> Result<()> {
        let len = self.frame.encoded_len() as u64;
        assert!(
            !self.in_commit,
            "a frame appended while a commit is in flight"
        );
        assert!(
            self.log_tail + len <= sh.geo.log_size,
            "frame of {len} bytes at log tail {} overruns the {}-byte log",
            self.log_tail,
            sh.geo.log_size
        );
        let at = sh.geo.log_offset + self.log_tail;
        let durable = self.durable(sh);
        // Where this frame's barrier starts: at the log-start witness when it is written now
        // (one barrier makes both durable), else at the frame.
        let mut barrier_from = at;
        if !self.witnessed && self.witness_due(durable) {
            barrier_from = self.write_witness(sh, shared)?;
        }
        let frame = self
            .frame
            .finish_vouching(self.sb.generation, self.next_txid, durable);
        self.in_commit = true;
        self.last_frame = (at, frame.len());
        phase!(LOG_WRITE);
        self.storage
            .write_at(at, frame)
            .map_err(|e| sh.fail("pwrite log frame", at, e))?;
        failpoint!("commit.after_log_write");
        match sh.durability {
            Durability::Full if shared => {}
            Durability::Full => {
                phase!(LOG_BARRIER);
                self.storage
                    .barrier(barrier_from, at + len - barrier_from)
                    .map_err(|e| sh.fail("msync log frame", at, e))?;
                self.durable_txid = self.next_txid;
                failpoint!("commit.after_log_barrier");
            }
            Durability::None => {
                let (a, _) = self.unsynced.unwrap_or((at, at));
                self.unsynced = Some((a.min(barrier_from), at + len));
            }
        }
        self.log_tail += len;
        self.next_txid = self
            .next_txid
            .checked_add(1)
            .expect("transaction ids advance by one and never wrap");
        Ok(())
    }

    /// Whether the log-start witness is due before the next frame: the generation's first frame
    /// (at the log's start, transaction `sb.next_txid`) is in the log and durable (`durable`,
    /// the highest durable txid). Before it is durable a witness would be a lie: a crash before
    /// its barrier leaves the sentinel there with good reason, and recovery would refuse the
    /// file as damaged.
    fn witness_due(&self, durable: u64) -> bool {
        let first = self.sb.next_txid;
        #[cfg(feature = "test-hooks")]
        if recovery::sabotage::active(recovery::sabotage::WITNESS_BEFORE_DURABLE) {
            return true; // broken on purpose (tests only): witnessed before it is durable
        }
        self.next_txid > first && durable >= first
    }

    /// Write the log-start witness (docs/ARCHITECTURE.md section 3, step 5b) in the last
    /// sector of the slot the next checkpoint writes (and, writing that slot whole, erases it),
    /// just before the first frame that vouches for the generation's first frame. Returns its
    /// offset: the frame's own barrier then starts there and makes both durable (under `None`,
    /// the next flush's). A frame that shares the group's barrier is covered from its own start
    /// only, so the witness gets its barrier here (`own_barrier`): once per generation.
    fn write_witness(&mut self, sh: &Shared, own_barrier: bool) -> Result<u64> {
        let at = recovery::Witness::offset(self.slot.other());
        let witness = recovery::Witness {
            generation: self.sb.generation,
            txid: self.sb.next_txid,
        };
        self.storage
            .write_at(at, &witness.encode())
            .map_err(|e| sh.fail("pwrite log-start witness", at, e))?;
        #[cfg(feature = "test-hooks")]
        let own_barrier =
            own_barrier || recovery::sabotage::active(recovery::sabotage::WITNESS_BEFORE_DURABLE);
        if own_barrier {
            self.storage
                .barrier(at, recovery::WITNESS_LEN as u64)
                .map_err(|e| sh.fail("msync log-start witness", at, e))?;
        }
        failpoint!("commit.after_witness");
        self.witnessed = true;
        Ok(at)
    }

    /// Write and barrier the vouchers (`recovery::append_vouchers`): two empty frames (the next
    /// txids), each barriered before the next step, the first vouching for every frame before
    /// it and the second for the first, in different pages. Recovery then skips those frames'
    /// in-place checks. Two, so that a damaged first voucher is reported as damage (the second
    /// proves it was durable) instead of reading as a torn tail that would let the check be
    /// asked of bytes later frames have since changed; in different pages, so that one lost
    /// sector cannot take both. The log kept room for them ([`VOUCHER_LEN`]).
    fn append_vouchers(&mut self, sh: &Shared) -> Result<()> {
        assert!(
            self.log_tail + VOUCHER_LEN <= sh.geo.log_size,
            "no room kept for the vouchers at log tail {}",
            self.log_tail
        );
        let at = sh.geo.log_offset + self.log_tail;
        let len = recovery::append_vouchers(
            &mut self.storage,
            at,
            sh.geo.log_offset + sh.geo.log_size,
            self.sb.generation,
            (self.next_txid, self.durable_txid),
            recovery::Vouchers::Padded,
            &mut || {},
        )
        .map_err(|(op, off, e)| sh.fail(op, off, e))?;
        self.log_tail += len;
        self.durable_txid = self.next_txid + 1;
        self.next_txid = self
            .next_txid
            .checked_add(2)
            .expect("transaction ids advance by one and never wrap");
        Ok(())
    }

    /// Step 6: apply the frame. The registry hears of it (readers that begin from now on see the
    /// transaction, through their overlay where the file does not hold it yet); the file gets
    /// the pieces of every frame that no reader pinned at an older state can be reading, and
    /// that is durable (section 11); and the writer's mapping gets this frame, through the file
    /// or privately.
    fn apply(&mut self, sh: &Shared, plan: &mut CommitPlan<'_>) -> Result<()> {
        // A panic from here on would leave the heap half-applied: poison it, so that no reader
        // or transaction starts on that state.
        let _unwind = PoisonOnUnwind::new(sh, "a commit panicked while applying its frame");
        phase!(APPLY);
        let txid = self.next_txid - 1;
        let frame = self.frame_for_readers(sh, plan)?;
        let oldest = sh.registry.commit(txid, plan.header, frame.clone());
        self.unpublished.push_back((txid, frame));
        // (The durable txid cannot pass `txid` meanwhile: this commit's own barrier made it
        // durable, and no frame waits for a shared one, or it would have shared.) Readers in
        // other processes are asked after the frame is in the log: one that enters later finds
        // it there (section 17).
        let limit = self.publishable(sh, || crate::shared::min_pin(oldest, sh.foreign_oldest()));
        if limit >= txid && self.unpublished.len() == 1 {
            // The common case under `Full`: no older reader, nothing held back. The pieces go
            // from the stage into the file, and show through the writer's mapping.
            let storage = &mut self.storage;
            plan.for_each_piece(|at, piece, in_place| {
                if !in_place {
                    storage
                        .write_at(at, piece)
                        .map_err(|e| sh.fail("pwrite heap range", at, e))?;
                    failpoint!("commit.mid_apply");
                }
                Ok(())
            })?;
            self.unpublished.clear();
            sh.registry.published(txid);
            return self.discard_private(sh);
        }
        // Otherwise the writer's mapping gets the frame privately first (every frame held back
        // is in its private pages, which `publish_upto` may write whole), then the file gets
        // what it may.
        self.write_private_frame(sh, plan)?;
        self.publish_upto(sh, limit)
    }

    /// Step 6 of a commit that shares a barrier (section 12): its frame is in the log but not
    /// durable, so neither the file nor readers may see it yet. The writer's mapping gets it
    /// privately (the next transaction reads it there), the group gets it for readers (shown
    /// once its barrier completes), and the file gets the frames that are durable by now.
    fn apply_shared(&mut self, sh: &Shared, plan: &mut CommitPlan<'_>) -> Result<()> {
        let _unwind = PoisonOnUnwind::new(sh, "a commit panicked while applying its frame");
        phase!(APPLY);
        let txid = self.next_txid - 1;
        let frame = self.frame_for_readers(sh, plan)?;
        let (at, len) = self.last_frame;
        sh.group
            .appended(txid, (at, at + len as u64), plan.header, frame.clone());
        self.unpublished.push_back((txid, frame));
        self.write_private_frame(sh, plan)?;
        if self.unpublished.len() < PUBLISH_BATCH {
            return Ok(()); // readers see them through their overlay meanwhile
        }
        let limit = self.publishable(sh, || sh.oldest_pin());
        self.publish_upto(sh, limit)
    }

    /// Copy the logged pieces of `plan` into the writer's mapping privately.
    fn write_private_frame(&mut self, sh: &Shared, plan: &mut CommitPlan<'_>) -> Result<()> {
        plan.for_each_piece(|at, piece, in_place| {
            if !in_place {
                self.write_private_bytes(sh, at, piece);
            }
            Ok(())
        })
    }

    /// Raise `log_high` (the frame's pieces were checked to lie in the heap), and make the frame's
    /// entry for readers: while readers run, the pieces themselves (a reader pinning next
    /// merges them at once); otherwise only the frame's place in the log, decoded if a reader
    /// does pin before the file holds it (a commit then copies nothing).
    fn frame_for_readers(&mut self, sh: &Shared, plan: &mut CommitPlan<'_>) -> Result<Frame> {
        self.log_high = self.log_high.max(plan.logged_end);
        Ok(if sh.registry.pinned() {
            Frame::Pieces(copy_pieces(|f| {
                plan.for_each_piece(|at, piece, in_place| {
                    if !in_place {
                        f(at, piece);
                    }
                    Ok(())
                })
            })?)
        } else {
            let (at, len) = self.last_frame;
            Frame::InLog { at, len }
        })
    }

    /// The highest txid whose frame may go into the file now: durable (under `None`, up to the
    /// last barrier; under `Full`, past the shared barriers in flight) and no reader pinned
    /// below it (`oldest`: the lowest pinned txid, asked for after the durable txid is read).
    ///
    /// The order matters while the flusher runs (section 12): it shows frames to the registry
    /// before it raises the durable txid, so once the durable txid `D` is read, every reader
    /// that pins afterwards pins at `D` or later, and `oldest` (read next) counts every reader
    /// below `D`. Read the other way round, a reader could pin at `R < D` between the two
    /// reads, and the file would get frames above `R` under it.
    fn publishable(&mut self, sh: &Shared, oldest: impl FnOnce() -> Option<u64>) -> u64 {
        let durable = self.durable(sh);
        #[cfg(feature = "test-hooks")]
        if recovery::sabotage::active(recovery::sabotage::APPLY_UNDER_OLDER_READER) {
            return durable; // broken on purpose (tests only): readers' bytes change under them
        }
        if self.unpublished.front().is_none_or(|&(t, _)| durable < t) {
            // Nothing could go into the file (under `None`, until the next barrier): no need to
            // ask for pins (for readers in other processes, a system call).
            return durable;
        }
        durable.min(oldest().unwrap_or(u64::MAX))
    }

    /// Write the pieces of the unpublished frames up to txid `limit` into the file (merged,
    /// newest winning; contiguous pieces in one pwrite), publish a snapshot without them (its
    /// overlay smaller), and once the file holds every frame, settle the writer's private pages
    /// (they equal the file's: kept under `None`, dropped otherwise, `settle_private`).
    ///
    /// Every caller holds a [`PoisonOnUnwind`]: a panic here leaves the file holding part of
    /// what the writer believes it holds.
    fn publish_upto(&mut self, sh: &Shared, limit: u64) -> Result<()> {
        let n = self
            .unpublished
            .iter()
            .take_while(|(t, _)| *t <= limit)
            .count();
        if n == 0 {
            return Ok(());
        }
        let last = self.unpublished[n - 1].0;
        if n == self.unpublished.len() && sh.registry.oldest_pin().is_none() {
            // Every frame, and no reader: the writer's private pages hold them all (and equal
            // the file elsewhere), so write those pages instead of merging the frames' pieces.
            // A reader that pins meanwhile takes every one of these frames' ranges from its
            // overlay; the rest of each page is rewritten with the bytes it already holds.
            self.write_pages(sh)?;
            self.unpublished.clear();
            sh.registry.published(last);
            return self.settle_private(sh);
        }
        let frames: Vec<Arc<[Piece]>> = self
            .unpublished
            .range(..n)
            .map(|(_, f)| match f {
                Frame::Pieces(p) => p.clone(),
                // SAFETY: the frame's place in the log region, inside the writer's mapping,
                // which shows the file there (it is never written privately); the writer lock
                // is held, so the log does not change.
                &Frame::InLog { at, len } => decode_frame(unsafe { sh.map.slice(at, len) }),
            })
            .collect();
        let merged: Vec<Piece> = if n == 1 {
            frames[0].to_vec()
        } else {
            newest_wins(frames.iter().map(|p| &p[..]))
        };
        self.unpublished.drain(..n);
        let mut i = 0;
        while i < merged.len() {
            let mut j = i + 1;
            while j < merged.len() && merged[j].start == merged[j - 1].end {
                j += 1;
            }
            let start = merged[i].start;
            match &merged[i].src {
                Src::Bytes(d, at) if j == i + 1 => {
                    let len = (merged[i].end - start) as usize;
                    self.storage
                        .write_at(start, &d[*at..*at + len])
                        .map_err(|e| sh.fail("pwrite heap range", start, e))?;
                }
                _ => {
                    let mut run = vec![0u8; (merged[j - 1].end - start) as usize];
                    for p in &merged[i..j] {
                        let (a, b) = ((p.start - start) as usize, (p.end - start) as usize);
                        p.copy_to(p.start, p.end, &mut run[a..b]);
                    }
                    self.storage
                        .write_at(start, &run)
                        .map_err(|e| sh.fail("pwrite heap range", start, e))?;
                }
            }
            failpoint!("commit.mid_apply");
            i = j;
        }
        sh.registry.published(last);
        if self.unpublished.is_empty() {
            self.settle_private(sh)?;
        }
        Ok(())
    }

    /// Write the writer's private pages into the file (sorted, contiguous pages in one pwrite).
    fn write_pages(&mut self, sh: &Shared) -> Result<()> {
        for (off, len) in page_runs(self.pending_pages.to_vec()) {
            // SAFETY: pages of the writer's mapping inside the mapped heap; the writer lock is
            // held and no transaction runs, so nothing changes them while pwrite copies them.
            let bytes = unsafe { sh.map.slice(off, len as usize) };
            self.storage
                .write_at(off, bytes)
                .map_err(|e| sh.fail("pwrite heap pages", off, e))?;
        }
        Ok(())
    }

    /// Copy a committed range into the writer's mapping privately.
    fn write_private_bytes(&mut self, sh: &Shared, off: u64, bytes: &[u8]) {
        let end = off + bytes.len() as u64;
        let (first, last) = (off / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
        if let Some((a, b)) = self.pending_pages.ahead_for(first, last) {
            // Objects appended page after page (a list, a log, new B-tree nodes): take the next
            // pages' copy-on-write faults in one call instead of one fault each (a fault on a
            // page that the file holds nowhere else in memory reads it alone under
            // `MADV_RANDOM`: about 6 µs, 18% of a small `None` commit's time in W2).
            let b = b.min(sh.map.mapped_len() / PAGE_SIZE);
            if a < b {
                // SAFETY: page-aligned, inside the mapped part (cut above); the writer's mapping
                // is writable and private, the writer lock is held and no transaction runs (as
                // below). The copies equal the file; `discard_private` drops them with the other
                // private pages, and nothing changes the file's bytes under them before that
                // except frames, which are written into them too (`write_private_frame`).
                unsafe { sh.map.populate_private(a * PAGE_SIZE, (b - a) * PAGE_SIZE) };
                // Recorded whatever the advice did: a call that failed part-way (ENOMEM)
                // may have copied some of the pages, and every copy must be dropped later
                // (dropping a page that was never copied is harmless).
                self.pending_pages.populated(a, b);
            }
        }
        // SAFETY: inside the mapping (asserted when the frame's pieces were gathered); the
        // writer's mapping is writable and private; the writer lock is held and no transaction
        // is running, so no slice into it is alive (readers of a writable heap read `rmap`).
        unsafe { sh.map.write_private(off, bytes) };
        self.pending_pages.add(first, last);
    }

    /// The file holds every frame, so the writer's private pages equal it. Under `None`, keep
    /// them (up to [`KEPT_PAGES_MAX`]): the next commits that write the same pages (a B-tree's
    /// hot nodes, the root, the allocator's words) then find their private copies instead of
    /// taking a copy-on-write fault each after every flush (W4-put-none: 10% of its time). Under
    /// `Full` they are dropped, as is everything past the limit (a private copy is memory the
    /// page cache already holds once).
    fn settle_private(&mut self, sh: &Shared) -> Result<()> {
        let max = if sh.durability == Durability::None {
            KEPT_PAGES_MAX
        } else {
            0
        };
        if self.pending_pages.keep(max) {
            return Ok(());
        }
        self.discard_private(sh)
    }

    /// Drop the writer's private pages, so that its mapping shows the file: before the file's
    /// bytes under them change other than through them, or when the file holds every frame and
    /// they are not kept.
    fn discard_private(&mut self, sh: &Shared) -> Result<()> {
        if self.pending_pages.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "test-hooks")]
        if recovery::sabotage::active(recovery::sabotage::KEPT_PAGES_NOT_DROPPED) {
            self.pending_pages.kept.clear(); // broken on purpose (tests only): left in place
        }
        let populated = self.pending_pages.take_populated();
        let runs = page_runs(self.pending_pages.drain_with_kept()).chain(populated);
        for (off, len) in runs {
            // SAFETY: pages of the writer's mapping, page-aligned; the writer lock is held and no
            // transaction runs, so no slice into them is alive (readers read `rmap`).
            unsafe { sh.map.discard_private(off, len) }.map_err(|e| sh.fail("madvise", off, e))?;
        }
        Ok(())
    }

    /// Before in-place bytes go to the file, no reader may see them change. Snapshots published
    /// from now on show the fresh areas as zeros (free space, as their state holds it); readers
    /// that began before may hold stale pointers into that space, so wait for them to end (the
    /// only wait for readers besides a full log: `Tx::commit` sends a transaction's fresh bytes
    /// through the log instead while readers run, when they fit). Then the file gets every
    /// committed frame and the writer's private pages are dropped, so that the pwrites show
    /// through the writer's mapping.
    fn quiet_for_in_place<'s>(
        &mut self,
        sh: &'s Shared,
        fresh: &[(u64, u64)],
    ) -> Result<Excluded<'s>> {
        let seq = sh.registry.hide(
            fresh
                .iter()
                .map(|&(a, b)| Piece {
                    start: a,
                    end: b,
                    src: Src::Zero,
                })
                .collect(),
        );
        sh.registry.wait_for(seq, 0);
        // Readers in other processes see no hidden areas: they are shut out (waited for, and
        // kept out) until the caller's in-place writes are done (section 17). After the wait
        // for this process's readers, not before: a reader of this handle may read through a
        // read-only handle of the same file inside its `read`, which waits while they are
        // shut out, and the writer would wait for it for ever (found by review). Nothing is
        // written before both waits, so their order changes nothing else.
        let excluded = sh.exclude_foreign(None)?;
        let limit = self.publishable(sh, || None);
        {
            // (The one caller of `publish_upto` outside a commit's apply, a flush, a
            // checkpoint, a close or a compaction, each of which holds its own guard.)
            let _unwind =
                PoisonOnUnwind::new(sh, "writing committed frames into the file panicked");
            self.publish_upto(sh, limit)?;
            // Private copies the flush kept would hide the bytes about to go into the file.
            self.discard_private(sh)?;
        }
        #[cfg(feature = "test-hooks")]
        let skipped = recovery::sabotage::active(recovery::sabotage::IN_PLACE_BEFORE_FLUSH);
        #[cfg(not(feature = "test-hooks"))]
        let skipped = false;
        assert!(
            skipped || (self.unpublished.is_empty() && self.pending_pages.is_empty()),
            "in-place bytes while the file lacks committed frames"
        );
        Ok(excluded)
    }

    /// Step 7: bookkeeping, and under `None` a flush when too many private pages are held.
    fn finish_commit(&mut self, sh: &Shared, header: HeapHeader) -> Result<()> {
        self.header = header;
        self.alloc.commit();
        self.in_commit = false;
        self.commits += 1;
        if self.pending_pages.len() > self.flush_pages_at {
            self.flush(sh)?;
            self.flush_pages_at = self.pending_pages.len() + PENDING_PAGES_MAX;
        }
        self.tell_readers(sh);
        Ok(())
    }

    /// Under `None`: publish how many committed frames the file does not hold yet (a hint for
    /// `Heap::read`, section 11 step 8).
    fn tell_readers(&self, sh: &Shared) {
        if sh.durability == Durability::None {
            sh.unpublished
                .store(self.unpublished.len() as u64, Ordering::Relaxed);
        }
    }

    /// `Heap::read` found the writer lock free with at least [`READER_FLUSH_FRAMES`] frames
    /// the file does not hold (under `None`): flush (a barrier of the log written since the
    /// last one, if any), so that the file takes every frame no older reader holds back, and
    /// the reader reads them from the mapping instead of its overlay (section 11, step 8). Not
    /// while a frame carries an in-place check: that flush appends voucher frames, and a full
    /// log would make it checkpoint, which waits for readers. If that many frames are still
    /// held back after it (older readers, or that check), readers do not try again for
    /// [`READER_FLUSH_RETRY`].
    pub(crate) fn flush_for_readers(&mut self, sh: &Shared) -> Result<()> {
        if sh.durability != Durability::None
            || (self.unpublished.len() as u64) < READER_FLUSH_FRAMES
        {
            return Ok(());
        }
        if !self.check_pending {
            self.flush(sh)?;
        }
        if (self.unpublished.len() as u64) >= READER_FLUSH_FRAMES {
            sh.defer_reader_flush(READER_FLUSH_RETRY);
        }
        Ok(())
    }

    /// `Heap::flush`: [`Writer::flush`], then the log-start witness if that made the
    /// generation's first frame durable and none is written yet, with a barrier of its own (the
    /// flush acknowledges every transaction before it, so from its return a lost first frame
    /// must read as damage, not as an empty log, even if no frame follows). The flushes a
    /// commit or a checkpoint runs inside leave it to the next frame (`append_frame`).
    pub(crate) fn flush_acknowledged(&mut self, sh: &Shared) -> Result<()> {
        self.flush(sh)?;
        let durable = self.durable(sh);
        if !self.witnessed && self.witness_due(durable) {
            self.write_witness(sh, true)?;
        }
        Ok(())
    }

    /// Barrier the log written since the last barrier, then write into the file the frames no
    /// older reader holds back (settling the private pages once the file has every frame).
    pub(crate) fn flush(&mut self, sh: &Shared) -> Result<()> {
        let _unwind = PoisonOnUnwind::new(sh, "a flush panicked");
        phase!(FLUSH);
        if self.check_pending {
            // A frame in the log carries an in-place check: its bytes had no barrier. One
            // `fdatasync` covers them and every log page (the window's stores are the file's
            // page cache); then voucher frames, barriered, say so before any heap page
            // changes: once the file holds later frames' bytes over the in-place ones, the
            // check no longer matches, and recovery must not ask it (section 3, step 5a).
            self.storage
                .barrier_all()
                .map_err(|e| sh.fail("fdatasync in-place data and log", 0, e))?;
            self.unsynced = None;
            self.durable_txid = self.next_txid.saturating_sub(1);
            #[cfg(feature = "test-hooks")]
            let skip = recovery::sabotage::active(recovery::sabotage::PUBLISH_BEFORE_VOUCHER);
            #[cfg(not(feature = "test-hooks"))]
            let skip = false;
            if !skip {
                self.append_vouchers(sh)?;
            }
            self.check_pending = false;
        }
        if let Some((a, b)) = self.unsynced.take() {
            self.storage
                .barrier(a, b - a)
                .map_err(|e| sh.fail("msync log", a, e))?;
            self.durable_txid = self.next_txid.saturating_sub(1);
        }
        if let Some(a) = sh.group.take_undurable()? {
            // Frames waiting for a shared barrier (section 12): barrier them here. The
            // flusher's barrier in flight has ended (`take_undurable` waits for it: two msyncs
            // of the same pages at once could see one error reported to only one of them) and
            // cannot start another.
            let b = sh.geo.log_offset + self.log_tail;
            if let Err(e) = self.storage.barrier(a, b - a) {
                let e = sh.fail("msync log", a, e);
                sh.group.fail(&e.to_string());
                return Err(e);
            }
            let upto = self.next_txid.saturating_sub(1);
            sh.group.made_durable(upto);
            self.durable_txid = upto;
        }
        let limit = self.publishable(sh, || sh.oldest_pin());
        self.publish_upto(sh, limit)?;
        self.tell_readers(sh);
        Ok(())
    }

    /// Flush, then barrier the heap and switch the superblock: the log is empty afterwards.
    pub(crate) fn checkpoint(&mut self, sh: &Shared) -> Result<()> {
        self.checkpoint_shrinking(sh, None)
    }

    /// [`Writer::checkpoint`], the new superblock saying `shrink_to` as the file's length.
    fn checkpoint_shrinking(&mut self, sh: &Shared, shrink_to: Option<u64>) -> Result<()> {
        let _unwind = PoisonOnUnwind::new(sh, "a checkpoint panicked");
        // Readers in other processes read the log when they enter, and hold back the frames
        // after their pin: wait for those entering or pinned below the last frame, and keep
        // new ones out until the new superblock and the sentinel are written (section 17).
        // Readers pinned at the last frame or later go on: they need nothing from the log.
        // (This process's readers are waited for first, as in `quiet_for_in_place`: one of
        // them may read through a read-only handle of the same file, which waits while they
        // are shut out. No new reader of this process pins below the last frame.)
        self.flush(sh)?;
        let last = self.unpublished.back().map(|&(last, _)| last);
        if let Some(last) = last {
            // The log is about to be emptied, so the file must hold every frame: wait for the
            // readers pinned below the last one (the one wait for readers a full log causes).
            sh.registry.wait_for(0, last);
        }
        let _excluded = sh.exclude_foreign(Some(self.next_txid.saturating_sub(1)))?;
        if last.is_some() {
            let limit = self.publishable(sh, || None);
            self.publish_upto(sh, limit)?;
        }
        phase!(CHECKPOINT);
        let (sb, slot) = recovery::checkpoint_shrinking(
            &mut self.storage,
            &self.sb,
            self.slot,
            self.next_txid,
            shrink_to,
        )
        .map_err(|e| {
            let e = Error::from(e);
            sh.poison(&format!("checkpoint: {e}"));
            e
        })?;
        self.sb = sb;
        self.slot = slot;
        self.log_tail = 0;
        self.log_high = 0;
        self.kept_generation = false;
        self.witnessed = false;
        self.untidy = false;
        self.durable_txid = self.next_txid.saturating_sub(1);
        self.checkpoints += 1;
        self.tell_readers(sh);
        Ok(())
    }

    /// The last act of a writable handle: a checkpoint (none when the handle is idle: nothing
    /// in the log, nothing waiting), then (unless
    /// [`crate::Options::keep_log_blocks`]) the log's blocks past its first page given back to
    /// the filesystem (docs/ARCHITECTURE.md section 4, "At close"). After
    /// the checkpoint the log holds only the sentinel in its first page and the ended
    /// generation's frames after it, which no open reads; zeros read the same to recovery,
    /// and a closed heap then takes on disk its heap and metadata only (a 16 MiB log was a
    /// quarter of the file of a million 64-byte objects, and nearly all of a small heap's).
    pub(crate) fn close(&mut self, sh: &Shared) -> Result<()> {
        let _unwind = PoisonOnUnwind::new(sh, "a close panicked");
        // (Sabotage: before the checkpoint, so that `tests/broken.rs` shows the order matters.)
        #[cfg(feature = "test-hooks")]
        let early = recovery::sabotage::active(recovery::sabotage::LOG_RELEASE_BEFORE_CHECKPOINT);
        #[cfg(not(feature = "test-hooks"))]
        let early = false;
        let first = self.sb.log_offset() + PAGE_SIZE;
        let rest = self.sb.log_size - PAGE_SIZE;
        let release = |w: &mut Writer| {
            w.storage
                .release(first, rest)
                .map_err(|e| Error::io("give back the log's blocks (fallocate)", first, e))
        };
        if early && !sh.keep_log_blocks {
            release(self)?;
        }
        // Nothing in the log and nothing waiting for a barrier or a write: every committed
        // transaction is in the file and durable already (the last checkpoint, this session's
        // or an earlier one's, made it so), and a checkpoint would only bump the superblock's
        // counters with two barriers. A session that committed nothing then closes without
        // writing the superblock (the log's blocks are still given back: past its first page
        // the log holds only frames of ended generations, or zeros). Not when the open found
        // a torn frame or a damaged superblock slot (`untidy`): the checkpoint clears them.
        let idle = !self.untidy
            && self.log_tail == 0
            && self.unsynced.is_none()
            && !self.check_pending
            && self.unpublished.is_empty();
        if !idle {
            self.checkpoint(sh)?;
        }
        if sh.keep_log_blocks || early || release(self)? == 0 {
            return Ok(());
        }
        // Durable, like the rest of the close: a crash after it finds the holes (and the
        // sentinel the checkpoint wrote after its own barriers) on disk.
        self.storage
            .barrier_all()
            .map_err(|e| Error::io("fdatasync after giving back the log", first, e))
    }

    /// A transaction ended: if it committed (`kept`), its growth stays; if it rolled back,
    /// the file is cut back to its length before the growth (README: an abort changes
    /// nothing, the file included; a review found an aborted 200 MiB allocation leaving the
    /// file 200 MiB longer, its blocks allocated, until a compaction). Never below what the
    /// current superblock says (`file_len`: a checkpoint inside a failed commit may have
    /// recorded the longer file) nor below the heap the writer's chunk count needs (frames
    /// appended, durable or waiting); not on a poisoned handle, whose state is uncertain. The
    /// mappings first: nothing reaches past the cut (every access is checked against a chunk
    /// count no larger). Nor after a commit interrupted once its frame reached the log (a
    /// panic: the handle is poisoned at the next lock). A failed cut only leaves the longer
    /// file, as before.
    pub(crate) fn end_growth(&mut self, sh: &Shared, kept: bool) {
        let Some(from) = self.storage.take_grown_from() else {
            return;
        };
        // (`in_commit`: a commit interrupted by a panic after its frame reached the log. The
        // handle is poisoned at the next lock, not yet, and its frame may be durable and
        // need the growth, bytes written in place there included: a review found such a
        // frame replayed over a cut file, its in-place object zeros.)
        if kept || self.in_commit || sh.is_poisoned() {
            return;
        }
        let keep = from
            .max(self.sb.file_len)
            .max(sh.geo.heap_end(self.alloc.chunk_count));
        if self.storage.len().is_ok_and(|len| len > keep) {
            sh.map.shrink(keep);
            sh.reader_map().shrink(keep);
            let _ = self.storage.shrink(keep);
        }
    }

    /// Give free space back to the filesystem (docs/ARCHITECTURE.md section 14): checkpoint, so
    /// that the file holds the committed state durably; hide the free pages and the cut tail
    /// from new readers and wait for older ones; punch holes in the free pages; then, if the
    /// file reaches past the chunk count, a checkpoint whose superblock says the shorter length,
    /// the cut, a barrier, and a second checkpoint (both slots then say it). Returns the bytes
    /// punched and the file's length before and after.
    pub(crate) fn compact(&mut self, sh: &Shared) -> Result<(u64, u64, u64)> {
        let _unwind = PoisonOnUnwind::new(sh, "a compaction panicked");
        #[cfg(feature = "test-hooks")]
        let (punch_first, shrink_first) = {
            use recovery::sabotage::{active, PUNCH_BEFORE_CHECKPOINT, SHRINK_BEFORE_SUPERBLOCK};
            (
                active(PUNCH_BEFORE_CHECKPOINT),
                active(SHRINK_BEFORE_SUPERBLOCK),
            )
        };
        #[cfg(not(feature = "test-hooks"))]
        let (punch_first, shrink_first) = (false, false);
        if !punch_first {
            self.checkpoint(sh)?;
        }
        phase!(COMPACT);
        let stat = |e| Error::io("stat", 0, e);
        let before = self.storage.len().map_err(stat)?;
        let heap_end = sh.geo.heap_end(self.alloc.chunk_count);
        let free = self.alloc.free_pages();
        let mut hidden: Vec<(u64, u64)> = free.iter().map(|&(a, n)| (a, a + n)).collect();
        if before > heap_end {
            hidden.push((heap_end, before));
        }
        let _excluded = if punch_first {
            sh.exclude_foreign(None)?
        } else {
            self.quiet_for_in_place(sh, &hidden)?
        };
        let mut punched = 0;
        for &(off, len) in &free {
            punched += self
                .storage
                .punch(off, len)
                .map_err(|e| sh.fail("punch a hole in free space", off, e))?;
        }
        if punch_first {
            self.checkpoint(sh)?;
        }
        failpoint!("compact.after_punch");
        if before > heap_end {
            if shrink_first {
                self.storage
                    .shrink(heap_end)
                    .map_err(|e| sh.fail("cut the file's free tail", heap_end, e))?;
            }
            self.checkpoint_shrinking(sh, Some(heap_end))?;
            failpoint!("compact.before_cut");
            if !shrink_first {
                self.storage
                    .shrink(heap_end)
                    .map_err(|e| sh.fail("cut the file's free tail", heap_end, e))?;
            }
            self.storage
                .barrier_all()
                .map_err(|e| sh.fail("fdatasync after the cut", 0, e))?;
            sh.map.shrink(heap_end);
            sh.reader_map().shrink(heap_end);
            self.checkpoint(sh)?;
        } else {
            self.storage
                .barrier_all()
                .map_err(|e| sh.fail("fdatasync after punching holes", 0, e))?;
        }
        let after = self.storage.len().map_err(stat)?;
        phase!(IDLE);
        Ok((punched, before, after))
    }

    /// Raise `max_size` while the heap runs: both mappings grow in place (or nothing changes),
    /// then a checkpoint writes the new `max_size` in the next superblock, then the heap may
    /// grow to it. A crash before the checkpoint's superblock leaves the old limit, which the
    /// file still respects.
    pub(crate) fn raise_max_size(&mut self, sh: &Shared, new: u64) -> Result<()> {
        let current = sh.max_size();
        if new == current {
            return Ok(());
        }
        if new < current || new % PAGE_SIZE != 0 || new > crate::limits::FILE_SIZE_MAX {
            return Err(Error::InvalidOptions {
                what: format!(
                    "max_size {new} cannot replace {current}: a running heap's max_size only \
                     rises, to a multiple of {PAGE_SIZE} of at most {}",
                    crate::limits::FILE_SIZE_MAX
                ),
            });
        }
        // Within the reservation (`Options::reserve`) nothing to do; past it, the mappings must
        // grow where they are.
        for m in [Some(&sh.map), sh.rmap.as_ref()].into_iter().flatten() {
            m.grow_in_place(&*sh.file, new)
                .map_err(|e| Error::InvalidOptions {
                    what: format!(
                    "cannot raise max_size to {new} while the heap is open: its mapping cannot \
                     grow in place ({e}); open it with Options::reserve({new}) to allow it, or \
                     close it and reopen with Options::max_size({new})"
                ),
                })?;
        }
        #[cfg(feature = "test-hooks")]
        if recovery::sabotage::active(recovery::sabotage::RAISE_BEFORE_SUPERBLOCK) {
            sh.set_max_size(new);
            return Ok(());
        }
        self.sb.max_size = new;
        self.checkpoint(sh)?;
        sh.set_max_size(new);
        Ok(())
    }

    /// The figures of [`crate::Heap::stats`].
    pub(crate) fn stats(&self, sh: &Shared, progress: &mut dyn FnMut(u64, u64)) -> Result<Stats> {
        let read = |off: u64, buf: &mut [u8]| {
            // SAFETY: run bitmaps lie inside the chunk area, which is mapped; the writer lock
            // is held, so no commit changes them while we read.
            buf.copy_from_slice(unsafe { sh.map.slice(off, buf.len()) })
        };
        let (used, free, largest, classes) = self.alloc.stats_progress(&read, progress)?;
        let mut io = self.storage.counters;
        io.shared_barriers = sh.group.barriers();
        io.range_barriers += io.shared_barriers;
        let (filesystem, volatile_storage) =
            crate::platform::filesystem(&*sh.file).map_err(|e| Error::io("fstatfs", 0, e))?;
        Ok(Stats {
            file_len: self.storage.len().map_err(|e| Error::io("stat", 0, e))?,
            heap_bytes: self.alloc.chunk_count * CHUNK_SIZE,
            used_bytes: used,
            free_bytes: free,
            largest_free_extent: largest,
            classes,
            log_size: sh.geo.log_size,
            log_used: self.log_tail,
            max_size: sh.max_size(),
            superblock_seq: self.sb.seq,
            log_generation: self.sb.generation,
            next_txid: self.next_txid,
            commits: self.commits,
            checkpoints: self.checkpoints,
            io,
            filesystem,
            volatile_storage,
            salvaged: sh.salvaged,
            superblock_damage: sh.superblock_damage.clone(),
        })
    }
}

/// Poisons the heap if dropped while unwinding from a panic that began after it was made
/// ([`PoisonOnUnwind::new`]): a panic while a commit applies its frame would leave a state no
/// reader or transaction may start on; one inside a flush, a checkpoint, a close or a
/// compaction, a writer whose view of the file (the current superblock slot and generation,
/// the log tail, what the file holds of each frame) may be wrong, so that a later commit could
/// be acknowledged into a generation the durable superblock no longer names
/// (`tests/panics.rs`). The `&str` names the work that panicked. Work that runs while another
/// panic is already unwinding (a `flush` from a user's `Drop`) and finishes is not poisoned:
/// the guard then records that it began during a panic, as std's mutexes do.
struct PoisonOnUnwind<'a> {
    sh: &'a Shared,
    what: &'static str,
    began_panicking: bool,
}

impl<'a> PoisonOnUnwind<'a> {
    fn new(sh: &'a Shared, what: &'static str) -> Self {
        PoisonOnUnwind {
            sh,
            what,
            began_panicking: std::thread::panicking(),
        }
    }
}

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        if !self.began_panicking && std::thread::panicking() {
            self.sh.poison(self.what);
        }
    }
}

/// Pages of the writer's mapping that hold private bytes: a hash set (sorted when dropped; its
/// B-tree before cost 8% of a small commit's instructions, callgrind W2), and the last few
/// pages added, which a commit that touches the same pages as the one before (the root, the
/// bitmap word, the page of the next object) finds without hashing them again (the set's
/// inserts were about 260 of a W2 commit's 5,070 instructions).
///
/// Also the pages copied ahead of an append (`ahead_for`, `populated`): private copies equal to
/// the file, not in `set` (a flush does not write them back: it would turn free space or a
/// punched hole into written blocks), dropped with the others.
struct PendingPages {
    set: HashSet<u64, Keyed>,
    /// Pages in `set` added since it was last drained (`u64::MAX`: none).
    recent: [u64; 4],
    /// Where the next page goes in `recent`.
    next: usize,
    /// The highest page added since the last drain.
    high: Option<u64>,
    /// Pages below this were copied ahead since the last drain (0: none).
    ahead_end: u64,
    /// Page ranges `[first, end)` copied ahead since the last drain.
    ahead: Vec<(u64, u64)>,
    /// Private pages that equal the file, kept after a flush wrote them (`Writer::settle_private`);
    /// a page written again is in `set` as well.
    kept: HashSet<u64, Keyed>,
}

/// Pages copied ahead at once when writes extend the highest private page by one.
const AHEAD_PAGES: u64 = 64;

impl Default for PendingPages {
    fn default() -> Self {
        PendingPages {
            set: HashSet::default(),
            recent: [u64::MAX; 4],
            next: 0,
            high: None,
            ahead_end: 0,
            ahead: Vec::new(),
            kept: HashSet::default(),
        }
    }
}

impl PendingPages {
    /// Before pages `first..end` are written: the pages to copy ahead, when the write extends
    /// the highest page written since the last drain by one (an append) past those copied
    /// ahead already. Only a sequential pattern asks: random writes would copy pages that are
    /// never written.
    fn ahead_for(&self, first: u64, end: u64) -> Option<(u64, u64)> {
        let high = self.high?;
        if end <= high + 1 || first > high + 1 || end <= self.ahead_end {
            return None;
        }
        let from = first.max(self.ahead_end);
        Some((from, from + AHEAD_PAGES))
    }

    /// Pages `first..end` were copied ahead.
    fn populated(&mut self, first: u64, end: u64) {
        self.ahead.push((first, end));
        self.ahead_end = end;
    }

    /// The ranges copied ahead since the last drain, as (byte offset, byte length).
    fn take_populated(&mut self) -> Vec<(u64, u64)> {
        self.ahead_end = 0;
        self.ahead
            .drain(..)
            .map(|(a, b)| (a * PAGE_SIZE, (b - a) * PAGE_SIZE))
            .collect()
    }

    /// Add pages `first..end`.
    fn add(&mut self, first: u64, end: u64) {
        if end > 0 && self.high.is_none_or(|h| end - 1 > h) {
            self.high = Some(end - 1);
        }
        for page in first..end {
            if self.recent.contains(&page) {
                continue;
            }
            self.set.insert(page);
            self.recent[self.next] = page;
            self.next = (self.next + 1) % self.recent.len();
        }
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    /// No private page at all (written, copied ahead or kept).
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.ahead.is_empty() && self.kept.is_empty()
    }

    /// The file now holds every page in `set` (a flush wrote them): keep them, and the pages
    /// copied ahead, as private pages that equal the file, unless that makes more than `max`
    /// kept pages. Returns whether they were kept (else nothing changed).
    fn keep(&mut self, max: usize) -> bool {
        let ahead: u64 = self.ahead.iter().map(|&(a, b)| b - a).sum();
        if self.kept.len() + self.set.len() + ahead as usize > max {
            return false;
        }
        self.recent = [u64::MAX; 4];
        self.high = None;
        self.ahead_end = 0;
        self.kept.extend(self.set.drain());
        for (a, b) in self.ahead.drain(..) {
            self.kept.extend(a..b);
        }
        true
    }

    /// The pages, in no order.
    fn to_vec(&self) -> Vec<u64> {
        self.set.iter().copied().collect()
    }

    /// Take every page out, in no order.
    #[cfg(test)]
    fn drain(&mut self) -> Vec<u64> {
        self.recent = [u64::MAX; 4];
        self.high = None;
        self.set.drain().collect()
    }

    /// Take every written and kept page out (not those copied ahead: `take_populated`), in no
    /// order; a page kept and then written again is there twice.
    fn drain_with_kept(&mut self) -> Vec<u64> {
        self.recent = [u64::MAX; 4];
        self.high = None;
        self.set.drain().chain(self.kept.drain()).collect()
    }
}

/// The page numbers `pages` (in any order, repeats allowed) as runs of contiguous pages: (byte
/// offset, byte length), ascending, each page in one run.
fn page_runs(mut pages: Vec<u64>) -> impl Iterator<Item = (u64, u64)> {
    pages.sort_unstable();
    pages.dedup();
    let mut it = pages.into_iter().peekable();
    std::iter::from_fn(move || {
        let first = it.next()?;
        let mut last = first;
        while it.peek() == Some(&(last + 1)) {
            last = it.next().expect("peeked");
        }
        Some((first * PAGE_SIZE, (last - first + 1) * PAGE_SIZE))
    })
}

#[cfg(test)]
mod tests {
    use super::{add_area, area_at, inside, page_runs, PendingPages, PAGE_SIZE};

    /// Runs of pages given out of order and with repeats (a kept page written again): each
    /// page in exactly one run.
    #[test]
    fn page_runs_take_each_page_once() {
        let p = PAGE_SIZE;
        let runs: Vec<(u64, u64)> = page_runs(vec![5, 3, 4, 4, 9, 3]).collect();
        assert_eq!(runs, [(3 * p, 3 * p), (9 * p, p)]);
        assert_eq!(page_runs(Vec::new()).count(), 0);
    }

    /// The pages added since the last drain are exactly the set's, whatever the recent-page
    /// memory skipped; a drain forgets the recent pages, so they are added again after it.
    #[test]
    fn pending_pages_match_a_set_across_drains() {
        let mut p = PendingPages::default();
        let mut model = std::collections::BTreeSet::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..5_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if step % 97 == 0 {
                let mut got = p.drain();
                got.sort_unstable();
                assert_eq!(
                    got,
                    model.iter().copied().collect::<Vec<_>>(),
                    "step {step}"
                );
                model.clear();
                assert!(p.is_empty());
            }
            // Mostly the same few pages again (as W2's commits), sometimes others.
            let first = if seed % 4 == 0 { seed % 64 } else { seed % 3 };
            let end = first + 1 + (seed >> 8) % 3;
            p.add(first, end);
            model.extend(first..end);
            assert_eq!(p.len(), model.len(), "step {step}");
        }
        let mut all = p.to_vec();
        all.sort_unstable();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn areas_stay_sorted_and_answer_like_a_scan() {
        // Pushed out of order, as a transaction's extents and runs can be.
        let mut areas = Vec::new();
        for (a, b) in [(500, 600), (100, 200), (300, 350), (700, 1000)] {
            add_area(&mut areas, (a, b));
        }
        assert!(areas.windows(2).all(|w| w[0].1 <= w[1].0), "{areas:?}");
        for p in 0..1100u64 {
            let scan = areas.iter().find(|&&(a, b)| a <= p && p < b).copied();
            let next = areas
                .iter()
                .map(|&(a, _)| a)
                .filter(|&a| a > p)
                .min()
                .unwrap_or(u64::MAX);
            assert_eq!(area_at(&areas, p), scan.ok_or(next), "at {p}");
            for len in [1u64, 50, 100] {
                let want = areas.iter().any(|&(a, b)| a <= p && p + len <= b);
                assert_eq!(inside(&areas, p, len), want, "[{p}, +{len})");
            }
        }
        assert_eq!(area_at(&[], 7), Err(u64::MAX));
    }
}
