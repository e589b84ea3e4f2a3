//! The transaction: the only place that turns user writes into a redo frame.
//!
//! Owns: a transaction's staged writes (checked access, allocation, free), its view of the heap
//! header, and building the commit plan (the frame, which pieces go in place, the new header).
//! May not: sequence I/O or write the file (`Writer::commit` runs the protocol; growth goes
//! through the writer's storage), or change allocator indexes except through the allocator's
//! journaled operations, which roll back when the transaction is dropped without committing.

use std::mem::ManuallyDrop;

use bytemuck::Pod;

use crate::alloc::{Allocator, HeapHeader, Mark, TxMem, ROOT_IDENTITY_STORED};
use crate::error::{Error, Result};
use crate::layout::{
    catalogue, catalogue_bytes, catalogue_record, check_root, root_description, root_fits,
    CATALOGUE_MAGIC, HEADER_PAGE, ROOT_DESC_AT,
};
use crate::limits::{CHUNK_SIZE, ROOT_LEN_MAX};
use crate::options::Durability;
use crate::pptr::{cast_slice, cast_slice_mut, PPtr, PSlice};
use crate::shared::Shared;
use crate::stage::{Nest, Stage, WordPlace, LINE, TRIM_MAX};
use crate::storage::FileStorage;
use crate::stored::Stored;
use crate::writer::{add_area, inside, CommitPlan, Writer};
use txheap_recovery::txheap_log::{FRAME_HEADER_LEN, RANGE_HEADER_LEN};
use txheap_recovery::Storage;
use txheap_recovery::{failpoint, phase};

/// Room the type catalogue leaves in a transaction's log budget beyond its worst count
/// ([`Tx::catalogue_room`]): the frame's header, vouchers' and in-place checks' bytes.
const CATALOGUE_SLACK: u64 = 4096;

/// The least overhead of a frame that holds anything: its header and one range header. The early
/// size check adds only this, so that it stays a lower bound of the frame and never refuses a
/// transaction whose frame would fit; the exact check is at commit.
const FRAME_OVERHEAD_MIN: u64 = (FRAME_HEADER_LEN + RANGE_HEADER_LEN) as u64;

/// A transaction in progress, given to [`crate::Heap::transaction`]'s closure. Reads see the
/// transaction's own writes; nothing is visible to others until it commits.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("tx.heap"), txheap::Options::new())?;
/// heap.transaction(|tx| {
///     let p = tx.alloc(1u32)?;
///     *tx.get_mut(p)? += 1;
///     assert_eq!(*tx.get(p)?, 2); // read your own writes
///     tx.free(p)
/// })?;
/// # Ok::<(), txheap::Error>(())
/// ```
pub struct Tx<'h> {
    sh: &'h Shared,
    w: &'h mut Writer,
    /// The writer's stage, lent for this transaction and given back (cleared) when it ends.
    /// `ManuallyDrop` so that giving it back moves it out without building an empty one in its
    /// place (a `Stage::default()` made and dropped per transaction was about 300 instructions
    /// of a 5,000-instruction small commit).
    stage: ManuallyDrop<Box<Stage>>,
    header: HeapHeader,
    /// Data areas of large extents and new runs this transaction took from free space, sorted:
    /// bytes staged inside them are written in place at commit instead of through the log
    /// (under `None` only past `Options::in_place_min`, see `Tx::commit`).
    fresh: Vec<(u64, u64)>,
    /// Bytes staged inside `fresh` (approximate; only for the early size check).
    fresh_staged: u64,
    /// Runs this transaction made from free space so far: from the second on, their block
    /// areas join `fresh`.
    new_runs: u32,
    /// Allocator operations run so far (allocations, frees, growth): a [`Writable`] is good
    /// only while this count is the one it was made at.
    mem_ops: u64,
    /// The first operation that failed after changing part of what it changes: an allocator
    /// operation (staged entries, journaled changes, growth), or a collection's operation
    /// ([`Tx::op`]). The transaction may go on, but `commit` refuses with
    /// `Error::AllocatorInterrupted` or `Error::CollectionInterrupted` and rolls it back.
    interrupted: Option<Interruption>,
    /// Changes made so far: staged writes and allocator operations that changed something
    /// ([`Tx::op`] compares it before and after an operation that failed).
    changes: u64,
    /// Nested scopes open ([`Tx::nested`]); the bytes their writes replaced are kept in the
    /// writer's [`Nest`] (reused, as the stage is, so that a transaction without scopes
    /// builds and drops nothing for them).
    depth: u32,
    /// Bytes that rolled-back scopes left staged outside fresh space (lines written back as
    /// they were before the scope, and lines of space it allocated, written back as committed):
    /// exempt from the early size check, as the scope's changes are gone, and left out of the
    /// frame by the commit's trim, which compares every range with the committed bytes when
    /// this is not zero.
    rolled_back: u64,
    /// Stored identities this transaction found in the heap's type catalogue or recorded
    /// there ([`Tx::record_type`]), so that it reads the catalogue once per type.
    recorded: Vec<u64>,
    done: bool,
    /// A transaction stays on the thread that began it (as before its stage became `Send`):
    /// the re-entry check knows that thread only.
    _not_send: std::marker::PhantomData<*const ()>,
}

/// A range of the heap that [`Tx::writable`] found writable, valid for writes inside it until
/// the transaction's next allocator operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writable {
    off: u64,
    end: u64,
    mem_ops: u64,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("chunk_count", &self.w.alloc.chunk_count)
            .finish_non_exhaustive()
    }
}

/// What [`Tx::nested`] restores when its scope is rolled back.
struct Scope {
    saved: usize,
    bytes: usize,
    allocs: usize,
    staged: u64,
    fresh_staged: u64,
    rolled_back: u64,
    alloc: Mark,
    header: HeapHeader,
    new_runs: u32,
    interrupted: Option<Interruption>,
}

/// Why a transaction can no longer commit (see `Tx::interrupted`).
#[derive(Clone, Debug)]
enum Interruption {
    /// An allocator operation: its error.
    Allocator(String),
    /// A collection's operation (`"PBTreeMap::insert"`) and its error.
    Collection(&'static str, String),
}

/// The allocator's window onto the transaction.
struct Mem<'x> {
    sh: &'x Shared,
    stage: &'x mut Stage,
    storage: &'x mut FileStorage,
    /// While a nested scope is open: where writes save what they replace.
    nest: Option<&'x mut Nest>,
    exempt: u64,
    /// Some write was staged (or a staged word handed out), or the file grown, by this
    /// operation.
    changed: bool,
}

/// A slice whose byte count overflows a `u64`: larger than any object (not `OutOfSpace`,
/// which a larger `max_size` could cure: a review found it so named).
fn too_large() -> Error {
    Error::ObjectTooLarge {
        requested: u64::MAX,
        max: crate::alloc::OBJECT_SIZE_MAX,
    }
}

fn fill_from(sh: &Shared) -> impl FnMut(u64, &mut [u8]) + '_ {
    move |start, buf| {
        // SAFETY: staged ranges lie inside the checked heap area (or its 64-byte aligned
        // surroundings, which stay inside the 4096-aligned root area or chunk area), which is
        // mapped; the writer lock is held by the running transaction and the apply step has not
        // started, so nothing changes the mapping.
        buf.copy_from_slice(unsafe { sh.map.slice(start, buf.len()) })
    }
}

/// The staged slice `[off, off+len)` of lines already staged (or of lines staged again as the
/// file holds them): no budget applies, so it cannot be refused.
fn restaged<'s>(sh: &Shared, stage: &'s mut Stage, off: u64, len: u64) -> &'s mut [u8] {
    match stage.area_index(off, len) {
        Some(i) => stage.area_mut(i, off, len),
        None => stage
            .write(off, len, u64::MAX, &mut fill_from(sh))
            .expect("an unlimited budget never refuses"),
    }
}

/// Stage `[off, off+len)` unless the bytes that will go through the log (staged bytes, less
/// `exempt` bytes that are written in place instead, plus the least frame overhead) would then
/// exceed the log: that is `TransactionTooLarge` at once, with nothing staged. Rewriting staged
/// lines costs nothing. The exact check is at commit.
fn stage_within_log<'s>(
    sh: &Shared,
    stage: &'s mut Stage,
    exempt: u64,
    off: u64,
    len: u64,
) -> Result<&'s mut [u8]> {
    let log_size = sh.geo.log_size;
    let max_bytes = (log_size + exempt).saturating_sub(FRAME_OVERHEAD_MIN);
    let mut fill = fill_from(sh);
    stage
        .write(off, len, max_bytes, &mut fill)
        .map_err(|staged| Error::TransactionTooLarge {
            bytes: staged.saturating_sub(exempt) + FRAME_OVERHEAD_MIN,
            log_size,
        })
}

/// Whether `[a, b)` overlaps one of `areas` (sorted, disjoint `[start, end)`).
fn overlaps(areas: &[(u64, u64)], a: u64, b: u64) -> bool {
    let i = areas.partition_point(|&(s, _)| s < b);
    i > 0 && areas[i - 1].1 > a
}

/// Copy the transaction's view of `[off, off+buf.len())` (staged bytes over committed ones).
fn read_staged(sh: &Shared, stage: &Stage, off: u64, buf: &mut [u8]) {
    let mut fill = fill_from(sh);
    match stage.read(off, buf.len() as u64, &mut fill) {
        Some(b) => buf.copy_from_slice(b),
        None => fill(off, buf),
    }
}

impl TxMem for Mem<'_> {
    fn read(&self, off: u64, buf: &mut [u8]) {
        read_staged(self.sh, self.stage, off, buf)
    }

    fn write(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        let mut saved = 0;
        if let Some(nest) = &mut self.nest {
            let (sh, stage) = (self.sh, &*self.stage);
            saved = nest.save(off, bytes.len() as u64, &mut |x, b| {
                read_staged(sh, stage, x, b)
            });
        }
        match stage_within_log(self.sh, self.stage, self.exempt, off, bytes.len() as u64) {
            Ok(b) => b.copy_from_slice(bytes),
            Err(e) => {
                if let Some(nest) = &mut self.nest {
                    nest.unsave(saved);
                }
                return Err(e);
            }
        }
        self.changed = true;
        Ok(())
    }

    fn write_whole(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        self.write(off, bytes)?;
        self.stage.keep_whole(off, bytes.len() as u64);
        Ok(())
    }

    fn ensure_chunks(&mut self, from: u64, chunk_count: u64) -> Result<()> {
        let need = self.sh.geo.chunk_area + chunk_count * CHUNK_SIZE;
        phase!(GROW);
        // The file may reach past the heap already (a compaction cut short before its cut):
        // that part may hold holes, which the growth below leaves alone. Blocks first.
        let old = self.sh.geo.chunk_area + from * CHUNK_SIZE;
        let len = self.storage.len().map_err(|e| Error::io("stat", 0, e))?;
        if len > old {
            self.claim(old, len.min(need) - old)?;
        }
        self.storage
            .grow(need)
            .map_err(|e| Error::io("grow file (posix_fallocate)", need, e))?;
        self.changed = true;
        failpoint!("grow.after_fallocate");
        let mapped = self
            .sh
            .map
            .extend(need)
            .and_then(|()| self.sh.reader_map().extend(need))
            .map_err(|e| Error::io("map grown file", need, e));
        phase!(TX_BODY);
        mapped
    }

    fn claim(&mut self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(()); // (posix_fallocate refuses an empty range)
        }
        // Not a change: blocks under free space change nothing anyone reads.
        self.storage.allocate(off, len).map_err(|e| {
            Error::io(
                "allocate blocks for reused free space (posix_fallocate)",
                off,
                e,
            )
        })
    }

    fn max_size(&self) -> u64 {
        self.sh.max_size()
    }

    fn word_place(&mut self, off: u64) -> Option<WordPlace> {
        self.stage.word_place(off)
    }

    // Inline: every small allocation sets its bitmap bit here (a call cost W3 27 instructions
    // per `tx.alloc`, callgrind).
    #[inline(always)]
    fn word_mut(&mut self, p: WordPlace) -> Option<&mut [u8; 8]> {
        if let Some(nest) = &mut self.nest {
            let (sh, stage) = (self.sh, &*self.stage);
            nest.save(p.offset(), 8, &mut |x, b| read_staged(sh, stage, x, b));
        }
        let word = self.stage.word_mut(p);
        // A staged word handed out for writing counts as a staged write.
        self.changed |= word.is_some();
        word
    }
}

impl<'h> Tx<'h> {
    pub(crate) fn new(sh: &'h Shared, w: &'h mut Writer) -> Tx<'h> {
        let header = w.header;
        debug_assert_eq!(header.chunk_count, w.alloc.chunk_count);
        let stage = ManuallyDrop::new(w.spare_stage.take().unwrap_or_default());
        Tx {
            sh,
            w,
            stage,
            header,
            fresh: Vec::new(),
            fresh_staged: 0,
            rolled_back: 0,
            new_runs: 0,
            mem_ops: 0,
            interrupted: None,
            changes: 0,
            depth: 0,
            recorded: Vec::new(),
            done: false,
            _not_send: std::marker::PhantomData,
        }
    }

    // ---- checked access ----------------------------------------------------------------

    fn view(&self, off: u64, len: u64, align: u64) -> Result<&[u8]> {
        self.sh
            .geo
            .check(self.w.alloc.chunk_count, off, len, align)?;
        let mut fill = fill_from(self.sh);
        match self.stage.read(off, len, &mut fill) {
            Some(b) => Ok(b),
            // SAFETY: checked in bounds above; see `fill_from` for why nothing changes it.
            None => Ok(unsafe { self.sh.map.slice(off, len as usize) }),
        }
    }

    /// Stage `[off, off+len)` for a user write: bounds and alignment checked, and in the chunk
    /// area the range must lie inside one live allocation in this transaction's view (a freed
    /// block, a neighbour, a header or free space is [`Error::NotAllocated`]).
    fn view_mut(&mut self, off: u64, len: u64, align: u64) -> Result<&mut [u8]> {
        self.writable(off, len, align)?;
        self.stage_mut(off, len)
    }

    /// Check once that `[off, off+len)` may be written (as [`Self::view_mut`] checks: in
    /// bounds, aligned, inside one live allocation), for several writes inside it through
    /// [`Self::slice_mut_in`]: a B-tree edit of one node writes its count and two shifted
    /// arrays, and the allocation check of each (a bitmap word read through the stage) was
    /// about 1,000 of a one-insert transaction's 9,000 instructions.
    #[inline]
    pub(crate) fn writable(&mut self, off: u64, len: u64, align: u64) -> Result<Writable> {
        self.writable_at(off, len, align, false)
    }

    /// [`Self::writable`], and `off` is where its allocation begins (a block's start, a large
    /// object's data start), at no extra cost: for a collection writing a node of its own,
    /// which a damaged pointer could otherwise aim inside another object.
    #[inline]
    pub(crate) fn writable_block(&mut self, off: u64, len: u64, align: u64) -> Result<Writable> {
        self.writable_at(off, len, align, true)
    }

    #[inline]
    fn writable_at(&mut self, off: u64, len: u64, align: u64, start: bool) -> Result<Writable> {
        self.sh
            .geo
            .check(self.w.alloc.chunk_count, off, len, align)?;
        if off >= self.sh.geo.chunk_area {
            let (sh, stage) = (self.sh, &self.stage);
            self.w
                .alloc
                .check_writable(off, len, start, &|near, o, b| {
                    let mut fill = fill_from(sh);
                    match stage.read_near(o, b.len() as u64, near, &mut fill) {
                        Some(s) => b.copy_from_slice(s),
                        None => fill(o, b),
                    }
                })?;
        } else if off + len > self.sh.geo.root_offset + self.header.root_size
            // (A block of its own is never in the root area: a collection's node, bucket,
            // directory or buffer aimed at the root's start wrote over its other fields,
            // found by review.)
            || start
        {
            // The root area past the root (all of it while there is none) is no allocation: a
            // wild pointer there is refused as anywhere else (a review found such writes
            // committed). (`check` passed: `off + len` does not overflow.)
            return Err(Error::NotAllocated { offset: off, len });
        }
        Ok(Writable {
            off,
            end: off + len,
            mem_ops: self.mem_ops,
        })
    }

    /// [`Self::slice_mut`] for elements inside `w`: bounds and alignment are checked, the
    /// allocation check is the one `w` recorded, as long as no allocator operation (which
    /// could have freed it) ran since; otherwise, or outside `w`, the full check runs.
    pub(crate) fn slice_mut_in<T: Pod>(&mut self, w: &Writable, s: PSlice<T>) -> Result<&mut [T]> {
        if s.is_empty() {
            return Ok(&mut []);
        }
        let align = std::mem::align_of::<T>() as u64;
        let len = self.sh.geo.slice_bytes(self.w.alloc.chunk_count, s)?;
        let off = s.offset();
        let inside = w.mem_ops == self.mem_ops
            && off >= w.off
            && off.checked_add(len).is_some_and(|e| e <= w.end);
        if !inside {
            return self.slice_mut(s);
        }
        self.sh
            .geo
            .check(self.w.alloc.chunk_count, off, len, align)?;
        let b = self.stage_mut(off, len)?;
        cast_slice_mut(b, s)
    }

    /// Stage `[off, off+len)` without the checks of `view_mut`: for the allocation this
    /// transaction just made, which the allocator placed in bounds. Inside a nested scope the
    /// bytes it replaces are saved first (if staging is then refused, the saved copy equals
    /// the view, and writing it back on a rollback changes nothing).
    #[inline(always)]
    fn stage_mut(&mut self, off: u64, len: u64) -> Result<&mut [u8]> {
        if self.depth > 0 {
            return self.stage_saving(off, len);
        }
        self.stage_unsaved(off, len)
    }

    /// [`Self::stage_mut`] inside a scope: save what the write replaces, stage it, and if
    /// staging is refused forget the saved copy again (nothing was staged; written back on a
    /// rollback it would stage lines past the log's budget). (Staged first, then the slice is
    /// taken from the stage again: its lines are staged, so no budget or fill applies.)
    #[cold]
    #[inline(never)]
    fn stage_saving(&mut self, off: u64, len: u64) -> Result<&mut [u8]> {
        let (sh, stage) = (self.sh, &self.stage);
        let saved = self
            .w
            .nest
            .save(off, len, &mut |x, b| read_staged(sh, stage, x, b));
        if let Err(e) = self.stage_unsaved(off, len) {
            self.w.nest.unsave(saved);
            return Err(e);
        }
        Ok(restaged(sh, &mut self.stage, off, len))
    }

    /// [`Self::stage_mut`] without saving the bytes it replaces.
    #[inline(always)]
    fn stage_unsaved(&mut self, off: u64, len: u64) -> Result<&mut [u8]> {
        // Inside a fresh run's block area staged whole: fresh bytes, no log budget, no fill.
        // (Every way here counts one change, a refusal none: `Tx::op`.)
        if let Some(i) = self.stage.area_index(off, len) {
            self.changes += 1;
            return Ok(self.stage.area_mut(i, off, len));
        }
        let fresh = match self.fresh.last() {
            // Bulk allocation fills the highest fresh area: that one answers at once.
            Some(&(a, b)) if off >= a => off < b && off + len <= b,
            None => false,
            Some(_) => self.fresh_below_top(off, len),
        };
        if fresh {
            // Bytes of a fresh large extent go in place: no log budget. What the extent held
            // is free space, which nothing reads: the staged bytes around the caller's start as
            // zeros instead of copies of the mapping (reading it faulted in every page of the
            // fallocated file: 27% of a 1 MiB-object fill's time, W7). A stage's new lines are
            // zero already (its buffers keep their spare capacity zeroed), so there is nothing
            // to fill (clearing each new line again was about 30 instructions of a small
            // allocation, W3): `stage::tests::new_lines_are_zero_without_a_fill` checks it.
            self.fresh_staged += len;
            self.changes += 1;
            let mut fill = |_: u64, b: &mut [u8]| {
                debug_assert!(b.iter().all(|&x| x == 0), "a stage's new lines are zero");
            };
            return Ok(self
                .stage
                .write(off, len, u64::MAX, &mut fill)
                .expect("an unlimited budget never refuses"));
        }
        let exempt = self.fresh_staged + self.rolled_back;
        let staged = stage_within_log(self.sh, &mut self.stage, exempt, off, len);
        self.changes += u64::from(staged.is_ok());
        staged
    }

    /// [`Self::stage_mut`]'s question below the highest fresh area: whether `[off, off+len)`
    /// lies in a fresh area, by a binary search over the areas (hundreds in a bulk load:
    /// 130-220 instructions per insert, W4-load), unless its lines were staged lately: a rewrite
    /// adds no byte, so neither the budget nor the fill of new lines matters, and "not fresh"
    /// does (`false`). A fresh range counts its whole lines as exempt from the log (`fresh_staged`), as
    /// the stage holds them: the small objects that later share a line are such rewrites, and
    /// counted nothing (a review found 10,000 16-byte objects in a 64 KiB log's transaction
    /// refused as too large: `small_objects_below_the_highest_fresh_run_are_exempt_from_the_log`
    /// in `tests/api.rs`). (Out of line: inlined, it made a bulk allocation's path 26
    /// instructions longer, W3.)
    #[inline(never)]
    fn fresh_below_top(&mut self, off: u64, len: u64) -> bool {
        if self.stage.holds_recent(off, len) || !inside(&self.fresh, off, len) {
            return false;
        }
        // (The caller adds `len`.)
        let (a, b) = (off & !(LINE - 1), (off + len + LINE - 1) & !(LINE - 1));
        self.fresh_staged += (b - a) - len;
        true
    }

    /// Whether this transaction has written (staged) any byte of `[off, off+len)`. For the
    /// collections, which choose between staging a whole node and only the bytes an edit
    /// changes.
    pub(crate) fn staged(&self, off: u64, len: u64) -> bool {
        self.stage.touches(off, len)
    }

    /// Run `f` as a nested transaction inside this one: if it returns `Err` (or panics), every
    /// change it made (writes, allocations, frees, the root's type) is undone, the rest of the
    /// transaction stays as it was before the call, and the error is returned (the panic
    /// resumes); if it returns `Ok`, its changes join this transaction, to commit or roll back
    /// with it. Scopes nest. As LMDB's nested write transactions: a step that may fail part-way
    /// (inserting into several structures, say) can be undone without giving up the work before
    /// it.
    ///
    /// While a scope is open, each write first saves the lines it replaces (the transaction's
    /// view), each line once per scope and not in space the scope allocated, so a scope costs a
    /// copy of each line it overwrites, held until the outermost scope ends. Space a rolled-back
    /// scope had allocated is free again for the rest of the transaction;
    /// pointers it returned must not be used afterwards (writes are refused as
    /// [`Error::NotAllocated`], as after a free, or as [`Error::OutOfBounds`] when the scope had
    /// grown the heap to make that space; reads give whatever bytes are there, or
    /// `OutOfBounds`). A rolled-back scope costs the rest of the transaction no log budget: what it
    /// staged is exempt from the early size check, and the commit leaves its lines out of the
    /// frame (they hold the bytes from before the scope again), except the bytes it wrote into
    /// space it took from free space: those stay staged as fresh space, written in place at
    /// commit where the commit writes fresh space in place, and otherwise logged (under
    /// [`crate::Durability::None`] below [`crate::Options::in_place_min`], or with readers
    /// pinned), dead bytes of free space that cost log room but change nothing a commit
    /// makes reachable. A scope that rolls back also clears an
    /// allocator failure that happened inside it ([`Error::AllocatorInterrupted`] at commit):
    /// its partial changes are undone with the rest.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("nested.heap"), txheap::Options::new())?;
    /// let kept = heap.transaction(|tx| {
    ///     let kept = tx.alloc(1u64)?;
    ///     let undone: Result<(), txheap::Error> = tx.nested(|tx| {
    ///         *tx.get_mut(kept)? = 2;
    ///         tx.alloc(3u64)?;
    ///         Err(txheap::Error::NullPointer) // any error: the scope rolls back
    ///     });
    ///     assert!(undone.is_err());
    ///     assert_eq!(*tx.get(kept)?, 1); // as before the scope
    ///     tx.nested(|tx| tx.set(kept, 4))?; // Ok: kept
    ///     Ok(kept)
    /// })?;
    /// assert_eq!(heap.read(|r| r.get(kept).copied())?, 4);
    /// assert_eq!(heap.read(|r| r.allocations())?.len(), 1); // the undone allocation is free
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn nested<R, E>(
        &mut self,
        f: impl FnOnce(&mut Self) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let scope = self.open_scope();
        // The scope is rolled back before a panic goes on, so that a caller that catches it
        // finds the transaction as it was before the call.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        match r {
            Ok(Ok(v)) => {
                self.close_scope(scope, true);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.close_scope(scope, false);
                Err(e)
            }
            Err(panic) => {
                self.close_scope(scope, false);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Run a collection's `operation` (`"PBTreeMap::insert"`, its body `f`) as one step. If it
    /// fails after it changed something (a node split, then its parent's write refused as
    /// `TransactionTooLarge`), or panics after a change (the panic caught inside the
    /// transaction), the transaction can no longer commit (`Error::CollectionInterrupted` at
    /// commit, and it rolls back), as after an allocator operation that failed part-way; one
    /// that fails or panics before changing anything leaves the transaction as it was. (A
    /// review found a map's half-done `insert` or `remove`, its error ignored, committed: keys
    /// lost, blocks leaked, `check` failing.) [`Tx::nested`] around the call undoes the part
    /// instead, and the transaction goes on.
    #[inline(always)]
    pub(crate) fn op<R>(
        &mut self,
        operation: &'static str,
        f: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        let before = self.changes;
        // (The mark is set where the panic passes, not at commit: a later change would else
        // count as this operation's, found by review.)
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(r) => {
                if let Err(e) = &r {
                    self.note_interrupted(before, || {
                        Interruption::Collection(operation, e.to_string())
                    });
                }
                r
            }
            Err(panic) => {
                self.note_interrupted(before, || {
                    Interruption::Collection(operation, "it panicked part-way".into())
                });
                std::panic::resume_unwind(panic)
            }
        }
    }

    #[cold]
    #[inline(never)]
    /// An operation that began when the count of changes was `before` failed: if it changed
    /// something, the transaction can no longer commit (the first such failure, `why`, is
    /// what `commit` reports).
    fn note_interrupted(&mut self, before: u64, why: impl FnOnce() -> Interruption) {
        if self.changes != before && self.interrupted.is_none() {
            self.interrupted = Some(why());
        }
    }

    /// Open a nested scope: from now on every staged write saves what it replaces.
    fn open_scope(&mut self) -> Scope {
        self.depth += 1;
        self.w.nest.open();
        Scope {
            saved: self.w.nest.saved.len(),
            bytes: self.w.nest.bytes.len(),
            allocs: self.w.nest.allocs.len(),
            staged: self.stage.staged_bytes(),
            fresh_staged: self.fresh_staged,
            rolled_back: self.rolled_back,
            alloc: self.w.alloc.mark(),
            header: self.header,
            new_runs: self.new_runs,
            interrupted: self.interrupted.clone(),
        }
    }

    /// Close the innermost scope: keep its changes, or roll them back (the saved bytes written
    /// back newest first, so each range ends as it was when the scope opened; the allocator's
    /// indexes back to its mark; the header and counters as they were).
    fn close_scope(&mut self, sc: Scope, keep: bool) {
        self.depth -= 1;
        if keep {
            self.w.alloc.keep(sc.alloc);
            if self.w.nest.close(true) {
                // No enclosing scope can roll back any more.
                self.w.nest.clear();
            }
            return;
        }
        let (sh, stage, nest) = (self.sh, &mut self.stage, &mut self.w.nest);
        while nest.saved.len() > sc.saved {
            let Some((off, len, at)) = nest.saved.pop() else {
                break;
            };
            let old = &nest.bytes[at..at + len];
            // Every saved range was staged by the write that saved it (a refused write's copy
            // was forgotten): no budget applies, and no line is added.
            restaged(sh, stage, off, len as u64).copy_from_slice(old);
        }
        nest.bytes.truncate(sc.bytes);
        // Lines of space the scope allocated hold its bytes: free space again, which nothing
        // reads, but staged, and the commit would log them. Outside fresh space (written in
        // place, exempt from the log) they get the committed bytes back, which is what the
        // transaction saw there before the scope (free space it could not write), so that the
        // commit's trim leaves them out.
        for &(a, b) in &nest.allocs[sc.allocs..] {
            if overlaps(&self.fresh, a, b) {
                continue;
            }
            let mut line = a;
            while line < b {
                if stage.touches(line, LINE) {
                    let dst = stage
                        .write(line, LINE, u64::MAX, &mut fill_from(sh))
                        .expect("an unlimited budget never refuses");
                    fill_from(sh)(line, dst);
                }
                line += LINE;
            }
        }
        nest.allocs.truncate(sc.allocs);
        // What the scope added to the stage outside fresh space no longer counts against the
        // log: the transaction's budget is what it was before the scope. (Set, not added to:
        // what inner scopes that rolled back were exempted for is part of what this one added;
        // a review found a write rolled back through 30 scopes exempted 30 times.)
        let added = stage.staged_bytes().saturating_sub(sc.staged);
        let fresh_added = self.fresh_staged.saturating_sub(sc.fresh_staged);
        self.rolled_back = sc.rolled_back + added.saturating_sub(fresh_added);
        if nest.close(false) {
            // (A review found a rolled-back outermost scope kept its copies' memory.)
            nest.clear();
        }
        self.w.alloc.rollback_to(sc.alloc);
        self.header = sc.header;
        // (`fresh_staged` stays: the scope's fresh lines stay staged and fresh, written in
        // place at commit, so they stay exempt from the log's budget.)
        self.new_runs = sc.new_runs;
        self.interrupted = sc.interrupted;
        // A catalogue record the scope wrote is gone with it.
        self.recorded.clear();
        // A `Writable` made inside the scope may name space that is free again.
        self.mem_ops += 1;
        #[cfg(debug_assertions)]
        self.w.alloc.check_invariants();
    }

    /// Cut the free tail from the chunk count (compaction); returns the chunks cut.
    pub(crate) fn release_free_tail(&mut self) -> Result<u64> {
        self.mem_op(|a, _| Ok(a.release_tail()))
    }

    fn mem_op<R>(
        &mut self,
        f: impl FnOnce(&mut Allocator, &mut Mem<'_>) -> Result<R>,
    ) -> Result<R> {
        self.mem_ops += 1;
        let w = &mut *self.w;
        let (alloc, storage, nest) = (&mut w.alloc, &mut w.storage, &mut w.nest);
        let journal = alloc.journal_len();
        let mut mem = Mem {
            sh: self.sh,
            stage: &mut self.stage,
            storage,
            nest: (self.depth > 0).then_some(nest),
            exempt: self.fresh_staged + self.rolled_back,
            changed: false,
        };
        let r = f(alloc, &mut mem);
        let changed = mem.changed;
        self.changes += u64::from(changed);
        if let Err(e) = &r {
            self.note_failure(e, changed, journal);
        }
        r
    }

    /// An allocator operation failed. A refusal before anything changed leaves the transaction
    /// as it was (it may go on and commit); one part-way through (a new run's entries staged,
    /// then its bitmap refused) cannot be undone piece by piece: the transaction can no longer
    /// commit. (Out of line: the hot path of every allocation stays small.)
    #[cold]
    #[inline(never)]
    fn note_failure(&mut self, e: &Error, staged: bool, journal: usize) {
        let changed = staged || self.w.alloc.journal_len() != journal;
        if changed && self.interrupted.is_none() {
            self.interrupted = Some(Interruption::Allocator(e.to_string()));
        }
    }

    /// Read the object `p` points to (bounds- and alignment-checked; sees this transaction's
    /// writes).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("g.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let p = tx.alloc([3u32, 4u32])?;
    ///     assert_eq!(tx.get(p)?[1], 4);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get<T: Pod>(&self, p: PPtr<T>) -> Result<&T> {
        let (size, align) = (
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
        );
        let b = self.view(p.offset(), size, align)?;
        bytemuck::try_from_bytes(b).map_err(|_| Error::Misaligned {
            offset: p.offset(),
            align,
        })
    }

    /// Change the object `p` points to. Only the bytes staged here go to the log.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("gm.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc(1u64))?;
    /// heap.transaction(|tx| { *tx.get_mut(p)? = 2; Ok(()) })?;
    /// assert_eq!(heap.read(|r| r.get(p).copied())?, 2);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get_mut<T: Pod>(&mut self, p: PPtr<T>) -> Result<&mut T> {
        let (size, align) = (
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
        );
        let b = self.view_mut(p.offset(), size, align)?;
        if size == 0 {
            // No bytes: any aligned reference is the object. (The stage's empty slice is only
            // 1-aligned, which bytemuck refused as `Misaligned`: found by review.) A box of a
            // zero-sized value allocates nothing, so leaking it leaks nothing.
            return Ok(Box::leak(Box::new(T::zeroed())));
        }
        bytemuck::try_from_bytes_mut(b).map_err(|_| Error::Misaligned {
            offset: p.offset(),
            align,
        })
    }

    /// Overwrite the object `p` points to.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("set.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let p = tx.alloc(0u8)?; tx.set(p, 5)?; assert_eq!(*tx.get(p)?, 5); Ok(()) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn set<T: Pod>(&mut self, p: PPtr<T>, value: T) -> Result<()> {
        *self.get_mut(p)? = value;
        Ok(())
    }

    /// Read the elements of `s`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("sl.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let s = tx.alloc_slice(&[1u8, 2])?; assert_eq!(tx.slice(s)?, &[1, 2]); Ok(()) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn slice<T: Pod>(&self, s: PSlice<T>) -> Result<&[T]> {
        if s.is_empty() {
            return Ok(&[]);
        }
        let align = std::mem::align_of::<T>() as u64;
        let len = self.sh.geo.slice_bytes(self.w.alloc.chunk_count, s)?;
        let b = self.view(s.offset(), len, align)?;
        cast_slice(b, s)
    }

    /// Change the elements of `s`. For a large slice where only a part changes, prefer
    /// [`Tx::write_slice`], which stages (and logs) only that part.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("slm.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let s = tx.alloc_slice_zeroed::<u32>(3)?; tx.slice_mut(s)?[1] = 7; assert_eq!(tx.slice(s)?, &[0, 7, 0]); Ok(()) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn slice_mut<T: Pod>(&mut self, s: PSlice<T>) -> Result<&mut [T]> {
        if s.is_empty() {
            return Ok(&mut []);
        }
        let align = std::mem::align_of::<T>() as u64;
        let len = self.sh.geo.slice_bytes(self.w.alloc.chunk_count, s)?;
        let b = self.view_mut(s.offset(), len, align)?;
        cast_slice_mut(b, s)
    }

    /// Write `values` into `s` starting at element `start`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("ws.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let s = tx.alloc_slice_zeroed::<u8>(1 << 20)?; tx.write_slice(s, 1000, b"abc")?; assert_eq!(&tx.slice(s)?[1000..1003], b"abc"); Ok(()) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn write_slice<T: Pod>(&mut self, s: PSlice<T>, start: u64, values: &[T]) -> Result<()> {
        let n = values.len() as u64;
        let oob = || Error::SliceRange {
            start,
            count: n,
            slice_len: s.len(),
        };
        if start.checked_add(n).is_none_or(|e| e > s.len()) {
            return Err(oob());
        }
        if n == 0 {
            return Ok(());
        }
        let first = s.get(start).ok_or_else(oob)?;
        let part = PSlice::<T>::from_raw_parts(first.offset(), n);
        self.slice_mut(part)?.copy_from_slice(values);
        Ok(())
    }

    // ---- allocation ----------------------------------------------------------------------

    fn alloc_raw(&mut self, size: u64, align: u64) -> Result<u64> {
        let off = self.mem_op(|a, m| a.alloc(m, size, align))?;
        if self.depth > 0 {
            // The scope's rollback frees it: writes there need not save what they replace.
            self.w.nest.allocated(off, size);
        }
        // A large extent taken from free space is unreachable unless this transaction commits, so
        // its bytes may be written in place (docs/ARCHITECTURE.md, section 3, step 5a). Under
        // `None` only if they are many (`Tx::commit` decides), and `Writer::commit` first
        // flushes so that every committed free is durable, as under `Full`; it also keeps the
        // log-empty rule.
        if let Some(area) = self.w.alloc.take_new_run_area() {
            // The same holds for the blocks of a run made from free space: small objects in
            // fresh space go in place too (section 3, step 5a). Not the transaction's first new
            // run: a transaction that allocates a few objects would pay a second barrier for
            // them; a bulk one fills a run (or several classes) first.
            self.new_runs += 1;
            if self.new_runs >= 2 {
                add_area(&mut self.fresh, area);
                // Its bytes are staged whole, in one piece: see `Stage::add_area`.
                self.stage.add_area(area.0, area.1, self.sh.geo.chunk_area);
            }
        } else if !Allocator::is_small(size, align) {
            if let Some(area) = self.w.alloc.large_extent(off) {
                add_area(&mut self.fresh, area);
            }
        }
        Ok(off)
    }

    /// Allocate `size` bytes and stage their first contents with `fill`. If staging is refused
    /// (the log's budget), the allocation is freed again, so a failed call leaks nothing.
    fn alloc_filled(&mut self, size: u64, align: u64, fill: impl FnOnce(&mut [u8])) -> Result<u64> {
        let before = self.changes;
        let off = self.alloc_raw(size, align)?;
        match self.stage_mut(off, size) {
            Ok(b) => {
                fill(b);
                Ok(off)
            }
            Err(e) => {
                // Its bitmap word or header is staged already, so this free costs no budget.
                if self.mem_op(|a, m| a.free(m, off)).is_ok() {
                    // Nothing of the call is left: no change (`Tx::op`; a review found a
                    // `PBytes::new` refused at once marking its transaction).
                    self.changes = before;
                }
                Err(e)
            }
        }
    }

    /// Allocate a `T` holding `value`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("a.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc([7u64; 4]))?;
    /// assert_eq!(heap.read(|r| Ok(r.get(p)?[3]))?, 7);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn alloc<T: Pod>(&mut self, value: T) -> Result<PPtr<T>> {
        let size = std::mem::size_of::<T>() as u64;
        let off = self.alloc_filled(size, std::mem::align_of::<T>() as u64, |b| {
            b.copy_from_slice(bytemuck::bytes_of(&value))
        })?;
        Ok(PPtr::from_offset(off))
    }

    /// Allocate a zeroed `T`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("az.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc_zeroed::<[u32; 8]>())?;
    /// assert_eq!(heap.read(|r| r.get(p).copied())?, [0; 8]);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn alloc_zeroed<T: Pod>(&mut self) -> Result<PPtr<T>> {
        self.alloc(T::zeroed())
    }

    /// Allocate `len` zeroed `T`s (any size up to the heap's limit and the log's capacity).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("asz.heap"), txheap::Options::new())?;
    /// let s = heap.transaction(|tx| tx.alloc_slice_zeroed::<u64>(100_000))?;
    /// assert_eq!(s.len(), 100_000);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn alloc_slice_zeroed<T: Pod>(&mut self, len: u64) -> Result<PSlice<T>> {
        let size = (std::mem::size_of::<T>() as u64)
            .checked_mul(len)
            .ok_or(too_large())?;
        let off = self.alloc_filled(size, std::mem::align_of::<T>() as u64, |b| b.fill(0))?;
        Ok(PSlice::from_raw_parts(off, len))
    }

    /// Allocate a copy of `values`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("as.heap"), txheap::Options::new())?;
    /// let s = heap.transaction(|tx| tx.alloc_slice(&[1.5f64, 2.5]))?;
    /// assert_eq!(heap.read(|r| Ok(r.slice(s)?[1]))?, 2.5);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn alloc_slice<T: Pod>(&mut self, values: &[T]) -> Result<PSlice<T>> {
        let size = std::mem::size_of_val(values) as u64;
        let off = self.alloc_filled(size, std::mem::align_of::<T>() as u64, |b| {
            if !b.is_empty() {
                b.copy_from_slice(bytemuck::cast_slice(values))
            }
        })?;
        Ok(PSlice::from_raw_parts(off, values.len() as u64))
    }

    /// Free the allocation `p` points to. It is reusable by later transactions once this one
    /// commits. Freeing anything but the start of a live allocation is an [`Error::InvalidFree`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("fr.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc(1u64))?;
    /// heap.transaction(|tx| tx.free(p))?;
    /// assert!(matches!(heap.transaction(|tx| tx.free(p)), Err(txheap::Error::InvalidFree { .. })));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn free<T>(&mut self, p: PPtr<T>) -> Result<()> {
        if p.is_null() {
            return Err(Error::NullPointer);
        }
        self.mem_op(|a, m| a.free(m, p.offset()))
    }

    /// Free the allocation `s` points to. A slice longer than its allocation is refused
    /// ([`Error::InvalidFree`]): it was not made by that allocation (a collection's damaged
    /// pointer naming the start of a smaller object, found by review, freed that object).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("fs.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let s = tx.alloc_slice(b"xyz")?; tx.free_slice(s) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn free_slice<T>(&mut self, s: PSlice<T>) -> Result<()> {
        if s.offset() != 0 {
            if let Some(block) = self.usable_size(s.as_ptr()) {
                let bytes = s.len().checked_mul(std::mem::size_of::<T>() as u64);
                if bytes.is_none_or(|b| b > block) {
                    return Err(Error::InvalidFree {
                        offset: s.offset(),
                        why: "a slice longer than its allocation",
                    });
                }
            }
        }
        self.free(s.as_ptr())
    }

    /// Resize the allocation `s` to `len` elements, keeping its first `keep` elements (at most
    /// `s.len()`); the elements from `keep` on are zero. The allocation stays where it is while
    /// its block holds `len` elements (a block's size class leaves room to grow), and a large
    /// object (over 64 KiB) also grows where it is into its last chunk's unused bytes and over
    /// free chunks right after it (growing the heap when it ends the heap); otherwise the kept
    /// elements move to a new allocation and `s` is freed, all in this transaction. A large
    /// object made smaller shrinks where it is: the 256 KiB chunks it no longer needs are freed
    /// (reusable once the transaction commits); made small enough for a size class (64 KiB or
    /// less), it moves to a block and all its chunks are freed. A length of 0 keeps the
    /// allocation as it is (free it with [`Tx::free_slice`]). An empty (null) `s` is a fresh
    /// allocation. An `s` that is not the start of a live allocation, or longer than its
    /// allocation, is [`Error::InvalidFree`], and nothing changes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("realloc.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let s = tx.alloc_slice(&[1u32, 2, 3])?;
    ///     let s = tx.realloc_slice(s, 3, 1000)?;
    ///     assert_eq!(&tx.slice(s)?[..4], &[1, 2, 3, 0]);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn realloc_slice<T: Pod>(
        &mut self,
        s: PSlice<T>,
        keep: u64,
        len: u64,
    ) -> Result<PSlice<T>> {
        // One step, as an allocator operation is: refused after it changed something (a shrink
        // done, then its zeros refused by the log), the transaction cannot commit (a review
        // found such a refusal committed the shrink, and the freed tail then allocated again
        // under the caller's slice).
        let before = self.changes;
        let r = self.realloc_slice_body(s, keep, len);
        if let Err(e) = &r {
            self.note_interrupted(before, || {
                Interruption::Allocator(format!("realloc_slice: {e}"))
            });
        }
        r
    }

    fn realloc_slice_body<T: Pod>(
        &mut self,
        s: PSlice<T>,
        keep: u64,
        len: u64,
    ) -> Result<PSlice<T>> {
        if s.offset() == 0 {
            return self.alloc_slice_zeroed(len);
        }
        let keep = keep.min(s.len()).min(len);
        let size = std::mem::size_of::<T>() as u64;
        let bytes = size.checked_mul(len).ok_or(too_large())?;
        let block = self
            .usable_size(s.as_ptr())
            .ok_or_else(|| Error::InvalidFree {
                offset: s.offset(),
                why: "realloc of a pointer that is not the start of a live allocation \
                      (freed, or inside an object)",
            })?;
        // A slice longer than its allocation was not made by it (a collection's damaged
        // pointer naming a smaller object: the old bytes copied would be another object's,
        // and the free would free that object; found by review).
        if s.len().checked_mul(size).is_none_or(|b| b > block) {
            return Err(Error::InvalidFree {
                offset: s.offset(),
                why: "realloc of a slice longer than its allocation",
            });
        }
        let align = std::mem::align_of::<T>() as u64;
        let large = !Allocator::is_small(block, align);
        let mut stays = bytes <= block;
        // Zeros from `keep` on: staged before a shrink (still inside the object), so that a log
        // that cannot take them refuses before anything changed.
        let zero_from = s.offset() + keep * size;
        let mut zeroed = false;
        if stays && large && bytes > 0 && bytes < block {
            if Allocator::is_small(bytes, align) {
                // Small enough for a size class: it moves to a block (below), and all of its
                // chunks are freed.
                stays = false;
            } else {
                // Its entry gets the new size, and the chunks past it are freed (reusable once
                // this transaction commits).
                let off = s.offset();
                if len > keep {
                    self.slice_mut(PSlice::<u8>::from_raw_parts(
                        zero_from,
                        off + bytes - zero_from,
                    ))?
                    .fill(0);
                    zeroed = true;
                }
                self.mem_op(|al, m| al.shrink_in_place(m, off, bytes))?;
            }
        }
        // Where the chunks a large object grew over begin: bytes from there on are fresh
        // space, written in place, never counted against the log.
        let mut fresh_from = u64::MAX;
        if !stays && large && bytes > block {
            // A large object grows where it is when the chunks after it are free.
            let off = s.offset();
            if let Some((a, b)) = self.mem_op(|al, m| al.grow_in_place(m, off, bytes))? {
                if a < b {
                    add_area(&mut self.fresh, (a, b));
                    fresh_from = a;
                }
                stays = true;
            }
        }
        if stays {
            let t = PSlice::<T>::from_raw_parts(s.offset(), len);
            if len > keep && !zeroed {
                // Zero the elements from `keep` on: the part in the old extent through the
                // log, the part in the new chunks (one staged range inside the fresh area,
                // which goes in place) apart, so a large growth is not limited by the log.
                let start = zero_from;
                let end = s.offset() + bytes;
                let cut = fresh_from.clamp(start, end);
                for (a, b) in [(start, cut), (cut, end)] {
                    if a < b {
                        self.slice_mut(PSlice::<u8>::from_raw_parts(a, b - a))?
                            .fill(0);
                    }
                }
            }
            return Ok(t);
        }
        let new = self.alloc_slice_zeroed::<T>(len)?;
        if keep > 0 {
            let kept = self
                .slice(PSlice::<T>::from_raw_parts(s.offset(), keep))?
                .to_vec();
            self.write_slice(new, 0, &kept)?;
        }
        self.free_slice(s)?;
        Ok(new)
    }

    /// The usable size in bytes of the allocation starting at `p` (its block size for small
    /// objects), or `None` if `p` is not the start of an allocation that is live as this
    /// transaction sees it (a freed block, a pointer inside an object, or outside the heap's
    /// objects).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("us.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let p = tx.alloc([0u8; 20])?;
    ///     assert_eq!(tx.usable_size(p), Some(32));
    ///     let inside = txheap::PPtr::<u8>::from_offset(p.offset() + 8);
    ///     assert_eq!(tx.usable_size(inside), None);
    ///     tx.free(p)?;
    ///     assert_eq!(tx.usable_size(p), None);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn usable_size<T>(&self, p: PPtr<T>) -> Option<u64> {
        let (sh, stage) = (self.sh, &self.stage);
        self.w.alloc.live_size(p.offset(), &|near, o, b| {
            let mut fill = fill_from(sh);
            match stage.read_near(o, b.len() as u64, near, &mut fill) {
                Some(s) => b.copy_from_slice(s),
                None => fill(o, b),
            }
        })
    }

    /// The root object: created zeroed on first use, with `T`'s stored identity and layout
    /// description recorded in the heap header; afterwards `T`'s size and [`Stored::ID`] must
    /// match ([`Error::RootTypeMismatch`], naming both layouts, otherwise). At most 4096 bytes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("root.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let r = tx.root::<[u64; 2]>()?; assert_eq!(*tx.get(r)?, [0, 0]); Ok(()) })?;
    /// assert!(matches!(heap.transaction(|tx| tx.root::<u32>()), Err(txheap::Error::RootTypeMismatch { .. })));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn root<T: Stored>(&mut self) -> Result<PPtr<T>> {
        let p = PPtr::from_offset(self.sh.geo.root_offset);
        let page = || self.root_page();
        if !check_root::<T>(&self.header, &page)? {
            let size = std::mem::size_of::<T>() as u64;
            debug_assert!(size <= ROOT_LEN_MAX);
            self.set_root_type::<T>()?;
            if size > 0 {
                self.view_mut(p.offset(), size, 1)?.fill(0);
            }
        }
        Ok(p)
    }

    /// Change the root's type: read the root, which must be stored as `Old`
    /// ([`Error::RootTypeMismatch`] otherwise; [`Error::NoRoot`] if there is none), make a `New`
    /// from it with `f`, and store that as the root, with `New`'s identity and layout
    /// description, all in this transaction (an error or a panic later in it leaves the root as
    /// it was). This is how a program adds a field to its root type, or renames one, without
    /// losing its file: every later [`Tx::root`] and [`crate::Reader::root`] asks for `New`.
    /// Bytes of the old root past `New`'s size are zeroed. `New` is at most 4096 bytes, like
    /// any root.
    ///
    /// ```
    /// use txheap::{Error, Heap, Options};
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
    /// #[repr(C)]
    /// struct RootV1 { count: u64 }
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
    /// #[repr(C)]
    /// struct RootV2 { count: u64, limit: u64 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("migrate.heap");
    /// let heap = Heap::create(&path, Options::new())?;
    /// heap.transaction(|tx| { let r = tx.root::<RootV1>()?; tx.get_mut(r)?.count = 3; Ok(()) })?;
    /// // The new program's type is refused until the root is migrated.
    /// assert!(matches!(heap.transaction(|tx| tx.root::<RootV2>()), Err(Error::RootTypeMismatch { .. })));
    /// heap.transaction(|tx| tx.migrate_root(|old: &RootV1| RootV2 { count: old.count, limit: 10 }))?;
    /// let v2 = heap.read(|r| Ok(*r.get(r.root::<RootV2>()?)?))?;
    /// assert_eq!((v2.count, v2.limit), (3, 10));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn migrate_root<Old: Stored, New: Stored>(
        &mut self,
        f: impl FnOnce(&Old) -> New,
    ) -> Result<PPtr<New>> {
        let page = || self.root_page();
        if !check_root::<Old>(&self.header, &page)? {
            return Err(Error::NoRoot);
        }
        // The new type's own limits (size, alignment), before any byte is staged.
        root_fits::<New>()?;
        let at = self.sh.geo.root_offset;
        let new = f(self.get(PPtr::<Old>::from_offset(at))?);
        let (old_size, size) = (
            std::mem::size_of::<Old>() as u64,
            std::mem::size_of::<New>() as u64,
        );
        let len = old_size.max(size);
        if len > 0 {
            // (Not `view_mut`: the root may grow here, past the size the header records until
            // `set_root_type` below; both sizes are within the root area, `root_fits`.)
            let b = self.stage_mut(at, len)?;
            b.fill(0);
            b[..size as usize].copy_from_slice(bytemuck::bytes_of(&new));
        }
        self.set_root_type::<New>()?;
        Ok(PPtr::from_offset(at))
    }

    /// The heap header's page as this transaction sees it: the header, the root's layout
    /// description and the type catalogue (read when a type check fails, to name the stored
    /// layout, and to record a type).
    fn root_page(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_PAGE];
        read_staged(self.sh, &self.stage, self.sh.geo.heap_offset, &mut b);
        b
    }

    /// Record `T` as the root's type: its size, identity and alignment in the heap header, its
    /// layout description in the header's page (staged), and the type catalogue after it
    /// moved to follow the new description (as many records as still fit).
    fn set_root_type<T: Stored>(&mut self) -> Result<()> {
        self.header.root_size = std::mem::size_of::<T>() as u64;
        self.header.root_fingerprint = T::ID;
        self.header.root_align = std::mem::align_of::<T>() as u32;
        self.header.root_identity = ROOT_IDENTITY_STORED;
        let (_, old_end, records) = catalogue(&self.root_page());
        let desc = root_description::<T>();
        let mut bytes = desc.clone();
        let room = HEADER_PAGE - ROOT_DESC_AT as usize - bytes.len();
        bytes.extend_from_slice(&catalogue_bytes(&records, room));
        // Zeros over what the old description and catalogue held past the new ones.
        let end = (ROOT_DESC_AT as usize + bytes.len()).max(old_end);
        bytes.resize(end - ROOT_DESC_AT as usize, 0);
        let at = self.sh.geo.heap_offset + ROOT_DESC_AT;
        self.recorded.clear();
        // The catalogue is informational: when moving it could pass this transaction's log,
        // the description alone is written, as before the catalogue existed, and the records
        // are lost (a review found the catalogue's own bytes refusing work).
        let bytes = match self.catalogue_room(bytes.len() - desc.len()) {
            true => bytes,
            false => desc,
        };
        self.stage_mut(at, bytes.len() as u64)?
            .copy_from_slice(&bytes);
        Ok(())
    }

    /// Record `T`'s layout description in the heap's type catalogue (the header page, after
    /// the root's description: docs/FORMAT.md), unless it is there: a collection that holds
    /// `T` records only its identity, and a mismatch then names the stored layout from here.
    /// Informational only; when the page is full, or the transaction near the log's size, `T`
    /// is not recorded.
    pub(crate) fn record_type<T: Stored>(&mut self) -> Result<()> {
        if self.recorded.contains(&T::ID) {
            return Ok(());
        }
        let page = self.root_page();
        let (start, end, records) = catalogue(&page);
        if !records.iter().any(|&(id, _)| id == T::ID) {
            // (No catalogue yet: the magic comes with the first record.)
            let mut bytes = match start == end {
                true => CATALOGUE_MAGIC.to_vec(),
                false => Vec::new(),
            };
            bytes.extend_from_slice(&catalogue_record(T::ID, &crate::stored::describe::<T>()));
            // Informational: a record that could make this transaction too large for the log is
            // not written, as one that does not fit the page (a review found a collection's
            // `new` refused as too large for its type's record alone). The next transaction
            // that makes such a collection records it.
            if end + bytes.len() > HEADER_PAGE || !self.catalogue_room(bytes.len()) {
                return Ok(());
            }
            let at = self.sh.geo.heap_offset + end as u64;
            self.stage_mut(at, bytes.len() as u64)?
                .copy_from_slice(&bytes);
        }
        self.recorded.push(T::ID);
        Ok(())
    }

    /// Whether `extra` more bytes of the type catalogue leave this transaction's frame within the
    /// log whatever the rest of it becomes: the stage's count is approximate (the commit's
    /// exact check counts each range's 16-byte header too, at most a quarter more over 64-byte
    /// lines, and an in-place check's pieces), so the catalogue is written only with room to
    /// spare: its bytes never make a transaction too large.
    fn catalogue_room(&mut self, extra: usize) -> bool {
        let exempt = self.fresh_staged + self.rolled_back;
        let logged = self.stage.staged_bytes().saturating_sub(exempt);
        let worst = (logged + extra as u64 + 2 * LINE).saturating_mul(5) / 4;
        worst + CATALOGUE_SLACK <= self.sh.geo.log_size
    }

    /// The layout description the heap's type catalogue holds for identity `id`, as this
    /// transaction sees it.
    pub(crate) fn stored_description(&self, id: u64) -> Option<String> {
        crate::layout::described(&self.root_page(), id)
    }

    // ---- commit --------------------------------------------------------------------------

    /// Commit: build the plan (the frame of every logged piece, the in-place pieces, the new
    /// heap header) and hand it to `Writer::commit`. Consumes the transaction; on error it
    /// rolls back. `Some(txid)`: acknowledge only after `Group::wait(txid)` (section 12), once
    /// the writer lock is released; a transaction that wrote nothing still waits for the frames
    /// it could read that are not durable yet.
    pub(crate) fn commit(mut self) -> Result<Option<u64>> {
        if let Some(cause) = self.interrupted.take() {
            // Dropped without `done`: the journal restores the allocator, the stage is cleared.
            return Err(match cause {
                Interruption::Allocator(cause) => Error::AllocatorInterrupted { cause },
                Interruption::Collection(operation, cause) => {
                    Error::CollectionInterrupted { operation, cause }
                }
            });
        }
        phase!(COMMIT_ENCODE);
        self.mem_op(|a, m| a.prepare_commit(m))?;
        // (The allocator's count is the live one during the transaction: bounds checks read
        // it there, and only the commit copies it into the header.)
        self.header.chunk_count = self.w.alloc.chunk_count;
        if self.header != self.w.header {
            let at = self.sh.geo.heap_offset;
            // Whole, never trimmed: a salvage replays a prefix of the frames over a header
            // that may hold a dropped transaction's chunk count, and the header's one check
            // covers every field (docs/ARCHITECTURE.md section 3, step 4).
            let enc = self.header.encode();
            self.mem_op(|_, m| m.write_whole(at, &enc))?;
        }
        // Log only the words each staged range changed, unless some bytes go in place (their
        // pieces are cut at the fresh areas' bounds, and the in-place rules reason about whole
        // areas).
        // After a rolled-back scope, every range is compared, whatever its length, and even
        // beside fresh space (whose ranges stay whole): the lines the scope left staged hold
        // the committed bytes again and drop out (a review found a scope refused as too large
        // left a transaction that could not commit, its restored lines logged unchanged).
        let sh = self.sh;
        let max = match self.rolled_back {
            0 if !self.fresh.is_empty() => 0,
            0 => TRIM_MAX,
            _ => u64::MAX,
        };
        let fresh = &self.fresh[..];
        let unchanged = self.stage.is_empty()
            || (max > 0
                && !self.stage.trim_unchanged(max, |at, len| {
                    let inside = at >= sh.geo.heap_offset && at + len as u64 <= sh.map.mapped_len();
                    let whole = overlaps(fresh, at, at + len as u64);
                    // SAFETY: inside the mapped heap (checked); the writer lock is held, so
                    // nothing writes the mapping while the slice lives (only until the
                    // comparison returns).
                    (inside && !whole).then(|| unsafe { sh.map.slice(at, len) })
                }));
        if unchanged {
            // Nothing to log: the transaction changed no byte (or wrote back what was there).
            self.w.alloc.commit();
            self.done = true;
            return Ok(self.sh.group.pending());
        }
        let w = &mut *self.w;
        let log_size = self.sh.geo.log_size;
        let mut fresh = std::mem::take(&mut self.fresh);
        // Under `None` a commit makes no system call unless its in-place bytes are many (they
        // then cost two barriers, section 3 step 5a): a few go through the log, unless the
        // frame would then not fit.
        // And while readers run, in-place bytes would have to wait for the readers that began
        // before (they may hold stale pointers into that space, section 11): they go through the
        // log too, when they fit in half of it.
        let fresh_bytes = self.fresh_staged + self.stage.area_bytes();
        let few = !fresh.is_empty()
            && ((self.sh.durability == Durability::None && fresh_bytes < self.sh.in_place_min)
                || (self.sh.registry.pinned() && fresh_bytes <= log_size / 2));
        let mut plan = CommitPlan {
            stage: &mut self.stage,
            fresh: if few {
                Vec::new()
            } else {
                std::mem::take(&mut fresh)
            },
            header: self.header,
            in_place: false,
            logged_end: 0,
        };
        build_frame(self.sh, w, &mut plan)?;
        if few && w.frame.encoded_len() as u64 > log_size {
            plan.fresh = std::mem::take(&mut fresh);
            build_frame(self.sh, w, &mut plan)?;
        }
        let wait = w.commit(self.sh, plan)?;
        self.done = true;
        Ok(wait)
    }
}

/// The frame of `plan` in `w.frame`: every staged range, user data and allocator metadata
/// alike, except the pieces that go in place (which set `plan.in_place`). Asserts that every
/// logged piece lies inside the mapped heap (the apply writes them into the mapping), and sets
/// `plan.logged_end`.
fn build_frame(sh: &Shared, w: &mut Writer, plan: &mut CommitPlan<'_>) -> Result<()> {
    let log_size = sh.geo.log_size;
    w.frame.clear();
    let mut in_place = false;
    let mut logged_end = 0;
    let (low, high) = (sh.geo.heap_offset, sh.map.mapped_len());
    plan.for_each_piece(|at, piece, direct| {
        if direct {
            in_place = true;
            return Ok(());
        }
        let end = at + piece.len() as u64;
        assert!(
            at >= low && end <= high,
            "applied range {at}..{end} is outside the mapped heap"
        );
        logged_end = logged_end.max(end);
        // A range longer than u32::MAX cannot be staged (the log is smaller), but say so.
        w.frame
            .push_range(at, piece)
            .map_err(|_| Error::TransactionTooLarge {
                bytes: piece.len() as u64,
                log_size,
            })
    })?;
    plan.in_place = in_place;
    plan.logged_end = logged_end;
    Ok(())
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.w.alloc.rollback();
            debug_assert_eq!(self.w.alloc.chunk_count, self.w.header.chunk_count);
        }
        self.w.end_growth(self.sh, self.done);
        #[cfg(debug_assertions)]
        self.w.alloc.check_invariants();
        self.stage.clear();
        if self.depth > 0 {
            // Only if a scope's own rollback failed part-way (a panic): nothing must carry
            // over to the next transaction.
            self.w.nest.clear();
        }
        // SAFETY: this is `drop`: nothing uses `self.stage` after this line, and it is taken
        // exactly once (so it is neither dropped twice nor used after the move).
        let stage = unsafe { ManuallyDrop::take(&mut self.stage) };
        self.w.spare_stage = Some(stage);
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, Heap, Options, PSlice};

    /// A range checked writable stops vouching for writes once an allocator operation ran (it
    /// could have freed the range): the full check runs again and refuses a freed block.
    #[test]
    fn a_writable_range_does_not_outlive_a_free() {
        let dir = tempfile::tempdir().unwrap();
        let heap = Heap::create(dir.path().join("w.heap"), Options::new()).unwrap();
        heap.transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u64>(16)?;
            let w = tx.writable(s.offset(), 128, 8)?;
            let part = PSlice::<u64>::from_raw_parts(s.offset() + 8, 2);
            tx.slice_mut_in(&w, part)?.copy_from_slice(&[1, 2]);
            assert_eq!(tx.slice(s)?[1..3], [1, 2]);
            // Outside the checked range: the full check (and it refuses what is not allocated).
            let past = PSlice::<u64>::from_raw_parts(s.offset() + 128, 1);
            assert!(matches!(
                tx.slice_mut_in(&w, past),
                Err(Error::NotAllocated { .. })
            ));
            tx.free_slice(s)?;
            let r = tx.slice_mut_in(&w, part).map(|_| ());
            assert!(matches!(r, Err(Error::NotAllocated { .. })), "{r:?}");
            Ok(())
        })
        .unwrap();
    }
}
