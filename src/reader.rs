//! Readers of the committed state, and the per-thread marks that make re-entry an error
//! instead of a deadlock.
//!
//! Owns: `Reader` (checked access to one pinned snapshot: the file through the readers' mapping,
//! with the snapshot's overlay laid over it), the pin that keeps the writer from changing the
//! file's bytes under it, and the thread-local record of which heaps this thread is reading. May
//! not: change anything, or wait for the writer.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::rc::Rc;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::layout::{check_root, ROOT_DESC_AT, ROOT_DESC_MAX};
use crate::pptr::{PPtr, PSlice};
use crate::shared::Shared;
use crate::snapshot::{compose, decode_frame, Pinned, Snapshot};
use crate::stored::Stored;

/// A view of the committed state, given to [`Heap::read`](crate::Heap::read)'s closure. It shows
/// the newest state committed when the closure began, for as long as the closure runs, and never
/// waits for a transaction (nor makes one wait: see docs/ARCHITECTURE.md section 11).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("rd.heap"), txheap::Options::new())?;
/// let s = heap.transaction(|tx| tx.alloc_slice(&[1u16, 2, 3]))?;
/// let sum: u16 = heap.read(|r| Ok(r.slice(s)?.iter().sum()))?;
/// assert_eq!(sum, 6);
/// # Ok::<(), txheap::Error>(())
/// ```
pub struct Reader<'h> {
    sh: &'h Shared,
    /// The snapshot, pinned (by an `Arc` that `Heap::read` holds) for as long as the closure
    /// runs.
    snap: &'h Snapshot,
    /// Copies of ranges the overlay covers, kept for the reader's life.
    arena: Arena,
}

/// Take a snapshot for a `read`: the registry's pin (a reader slot, or an `Arc`); dropping it
/// unpins and wakes a commit that may be waiting for readers to end.
pub(crate) fn pin(sh: &Shared) -> Pinned<'_> {
    let map = sh.reader_map();
    sh.registry.pin(&|at, len| {
        // SAFETY: a frame in the log region, inside the mapping (the log lies below the
        // heap); the registry hands out a frame's place only while the log holds it, and
        // the writer empties the log only after telling the registry that the file holds
        // every frame in it, under the registry's lock, which `pin` holds while it decodes.
        decode_frame(unsafe { map.slice(at, len) })
    })
}

/// 64-byte aligned storage for composed ranges.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Buffers that live as long as the reader: each is filled once, then only read. The last few
/// composed ranges of each thread are kept with their snapshot's identity: a reader thread that
/// reads the same object of the same snapshot again (the root, read by every read while
/// commits change it, and some reader pins an older state, so that the writer holds frames
/// back) shares the bytes it composed before. Without that, four reader threads beside a
/// committing writer (R-scale) paid three `malloc`/`free` pairs and a compose per read.
#[derive(Default)]
struct Arena(RefCell<Held>);

/// The buffers an arena holds: the first without an allocation (most readers compose one
/// range, if any).
#[derive(Default)]
struct Held {
    first: Option<Rc<Vec<Line>>>,
    more: Vec<Rc<Vec<Line>>>,
}

/// Composed ranges kept per thread.
const COMPOSED_KEPT: usize = 4;
/// Ranges longer than this many lines (64 KiB) are not kept.
const COMPOSED_LINES_MAX: usize = 1024;

/// A composed range: (snapshot uid, offset, length, alignment) and where its bytes start in
/// the buffer.
struct Composed {
    key: (u64, u64, usize, usize),
    buf: Rc<Vec<Line>>,
    skip: usize,
}

/// A thread's last composed ranges (replaced round robin).
#[derive(Default)]
struct Kept {
    composed: Vec<Composed>,
    next: usize,
}

std::thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

impl Arena {
    /// The bytes of `key`'s range as this thread composed them before, kept for `&self`'s
    /// life; `None` if it has not.
    fn kept(&self, key: (u64, u64, usize, usize)) -> Option<&[u8]> {
        let (buf, skip) = KEPT
            .try_with(|k| {
                k.borrow()
                    .composed
                    .iter()
                    .find(|c| c.key == key)
                    .map(|c| (c.buf.clone(), c.skip))
            })
            .ok()
            .flatten()?;
        Some(self.hold(buf, skip, key.2))
    }

    /// A buffer of `key.2` bytes aligned to `key.3`, filled by `fill`, valid for `&self`'s
    /// life, and kept for this thread under `key` (a snapshot's uid and a range: the bytes
    /// must be that snapshot's view of the range, which never changes).
    fn compose(&self, key: (u64, u64, usize, usize), fill: impl FnOnce(&mut [u8])) -> &[u8] {
        let (len, align) = (key.2, key.3);
        let extra = if align > 64 { align } else { 0 };
        let lines = (len + extra).div_ceil(64).max(1);
        let mut v = vec![Line([0; 64]); lines];
        let bytes: &mut [u8] = bytemuck_lines(&mut v);
        let skip = bytes.as_ptr().align_offset(align.max(1));
        fill(&mut bytes[skip..skip + len]);
        let buf = Rc::new(v);
        if lines <= COMPOSED_LINES_MAX {
            // (During thread exit the list may be gone: the range is then not kept.)
            let _ = KEPT.try_with(|k| {
                let mut k = k.borrow_mut();
                let c = Composed {
                    key,
                    buf: buf.clone(),
                    skip,
                };
                if k.composed.len() < COMPOSED_KEPT {
                    k.composed.push(c);
                } else {
                    let at = k.next % COMPOSED_KEPT;
                    k.composed[at] = c;
                }
                k.next = k.next.wrapping_add(1);
            });
        }
        self.hold(buf, skip, len)
    }

    /// Keep `buf` for `&self`'s life and lend `len` bytes of it from `skip`.
    fn hold(&self, buf: Rc<Vec<Line>>, skip: usize, len: usize) -> &[u8] {
        let all = bytemuck_lines_ref(&buf);
        let ptr = all[skip..skip + len].as_ptr();
        let mut held = self.0.borrow_mut();
        if held.first.is_none() {
            held.first = Some(buf);
        } else {
            held.more.push(buf);
        }
        // SAFETY: `ptr` points `len` initialised bytes into the heap buffer of a `Vec` that the
        // arena now holds an `Rc` of. Moving the `Rc` (and growing the arena's list) never moves
        // that buffer; nothing writes a buffer once it is shared (it is filled before its first
        // `Rc` exists, and no `&mut` to it is made afterwards), and the arena keeps its `Rc`
        // until it is dropped, after every `&self` borrow ends; so a shared slice of it for
        // `&self`'s life is sound.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

fn bytemuck_lines_ref(v: &[Line]) -> &[u8] {
    // SAFETY: as in `bytemuck_lines`, shared.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 64) }
}

fn bytemuck_lines(v: &mut [Line]) -> &mut [u8] {
    let n = v.len() * 64;
    // SAFETY: `Line` is 64 plain bytes with no padding (repr(C) of a byte array), so the
    // elements are `n` contiguous initialised bytes, borrowed mutably for the same lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), n) }
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("txid", &self.snap.txid)
            .field("chunk_count", &self.snap.header.chunk_count)
            .finish_non_exhaustive()
    }
}

impl<'h> Reader<'h> {
    #[inline]
    fn bytes(&self, off: u64, len: u64, align: u64) -> Result<&[u8]> {
        self.sh
            .geo
            .check(self.snap.header.chunk_count, off, len, align)?;
        Ok(self.committed(off, len as usize, align as usize))
    }

    /// The snapshot's bytes at `[off, off+len)`, which the caller has checked lie in the mapped
    /// heap: straight from the file where no overlay piece lies, else a composed copy.
    #[inline]
    fn committed(&self, off: u64, len: usize, align: usize) -> &[u8] {
        if self.snap.overlay.is_empty() {
            // SAFETY: in bounds of the mapped heap (checked by the caller); the file's bytes
            // there do not change while the pin lives (see `committed_overlaid`), and with an
            // empty overlay no newer piece covers them.
            return unsafe { self.sh.reader_map().slice(off, len) };
        }
        self.committed_overlaid(off, len, align)
    }

    /// [`Self::committed`] where the snapshot has an overlay (kept out of line: readers while
    /// no frame waits to be applied never come here).
    #[inline(never)]
    fn committed_overlaid(&self, off: u64, len: usize, align: usize) -> &[u8] {
        let map = self.sh.reader_map();
        let end = off + len as u64;
        if !self.snap.overlay.overlaps(off, end) {
            // SAFETY: in bounds of the mapped heap (checked by the caller). The file's bytes here
            // do not change in value while the pin lives: the writer writes a frame's ranges into
            // the file only once no reader is pinned below it (and this snapshot's own newer
            // frames are in its overlay, which does not cover this range), and fresh space in
            // place only once no reader that began before is left (section 11). (Publishing
            // whole private pages, `Writer::write_pages`, stores the bytes around a frame's
            // ranges again with the values they hold: stored, not changed.)
            return unsafe { map.slice(off, len) };
        }
        // This snapshot's view of the range never changes: a range this thread composed for
        // it before is the same bytes.
        let key = (self.snap.uid, off, len, align);
        if let Some(b) = self.arena.kept(key) {
            return b;
        }
        let pieces = self.snap.overlay.pieces(off, end);
        self.arena.compose(key, |out| {
            compose(off, pieces, out, |at, buf| {
                // SAFETY: as above, for the parts no overlay piece covers.
                buf.copy_from_slice(unsafe { map.slice(at, buf.len()) })
            })
        })
    }

    /// The object `p` points to, bounds- and alignment-checked.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("rg.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc(9i64))?;
    /// assert_eq!(heap.read(|r| r.get(p).copied())?, 9);
    /// assert!(heap.read(|r| r.get(txheap::PPtr::<i64>::from_offset(1 << 40)).copied()).is_err());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get<T: Pod>(&self, p: PPtr<T>) -> Result<&T> {
        let b = self.bytes(
            p.offset(),
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
        )?;
        bytemuck::try_from_bytes(b).map_err(|_| Error::Misaligned {
            offset: p.offset(),
            align: std::mem::align_of::<T>() as u64,
        })
    }

    /// The elements `s` points to.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("rs.heap"), txheap::Options::new())?;
    /// let s = heap.transaction(|tx| tx.alloc_slice(b"hello"))?;
    /// assert_eq!(heap.read(|r| r.slice(s).map(|b| b.to_vec()))?, b"hello");
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn slice<T: Pod>(&self, s: PSlice<T>) -> Result<&[T]> {
        if s.is_empty() {
            return Ok(&[]);
        }
        let len = self.sh.geo.slice_bytes(self.snap.header.chunk_count, s)?;
        let b = self.bytes(s.offset(), len, std::mem::align_of::<T>() as u64)?;
        crate::pptr::cast_slice(b, s)
    }

    /// The root object's pointer; [`Error::NoRoot`] before the first `Tx::root`, and
    /// [`Error::RootTypeMismatch`] for another type.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("rr.heap"), txheap::Options::new())?;
    /// assert!(matches!(heap.read(|r| r.root::<u64>()), Err(txheap::Error::NoRoot)));
    /// heap.transaction(|tx| tx.root::<u64>())?;
    /// assert!(heap.read(|r| r.root::<u64>()).is_ok());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn root<T: Stored>(&self) -> Result<PPtr<T>> {
        let page = || {
            let len = ROOT_DESC_AT as usize + 2 + ROOT_DESC_MAX;
            // The header page lies below the root area, inside the mapped heap.
            self.committed(self.sh.geo.heap_offset, len, 1).to_vec()
        };
        if check_root::<T>(&self.snap.header, &page)? {
            Ok(PPtr::from_offset(self.sh.geo.root_offset))
        } else {
            Err(Error::NoRoot)
        }
    }
}

impl<'h> Reader<'h> {
    /// A reader of `snap` (pinned by an `Arc` the caller holds for longer than the reader).
    pub(crate) fn new(sh: &'h Shared, snap: &'h Snapshot) -> Reader<'h> {
        Reader {
            sh,
            snap,
            arena: Arena::default(),
        }
    }

    /// Where the chunk area starts.
    pub(crate) fn chunk_area(&self) -> u64 {
        self.sh.geo.chunk_area
    }

    /// The id of the last transaction in the committed state this reader sees. Ids grow with
    /// every commit that changed something (recovery may skip some), so of two readers of one
    /// handle, a larger id means a later state and equal ids the same state.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("txid.heap"), txheap::Options::new())?;
    /// let before = heap.read(|r| Ok(r.txid()))?;
    /// heap.transaction(|tx| tx.alloc(1u64).map(|_| ()))?;
    /// assert!(heap.read(|r| Ok(r.txid()))? > before);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn txid(&self) -> u64 {
        self.snap.txid
    }

    /// The layout description the heap's type catalogue holds for stored identity `id`, as
    /// this snapshot sees it.
    pub(crate) fn stored_description(&self, id: u64) -> Option<String> {
        let mut page = vec![0u8; crate::layout::HEADER_PAGE];
        self.copy_raw(self.sh.geo.heap_offset, &mut page).ok()?;
        crate::layout::described(&page, id)
    }

    /// The snapshot's transaction id and heap header.
    pub(crate) fn state(&self) -> (u64, crate::alloc::HeapHeader) {
        (self.snap.txid, self.snap.header)
    }

    /// Copy the snapshot's bytes at `[off, off + out.len())` into `out` (for copies of the whole
    /// heap: no arena, so memory stays bounded by `out`). The range must lie between the heap
    /// header and the snapshot's chunk area end.
    pub(crate) fn copy_raw(&self, off: u64, out: &mut [u8]) -> Result<()> {
        let end = off.checked_add(out.len() as u64);
        let heap_end = self.sh.geo.heap_end(self.snap.header.chunk_count);
        if off < self.sh.geo.heap_offset || end.is_none_or(|e| e > heap_end) {
            return Err(Error::OutOfBounds {
                offset: off,
                len: out.len() as u64,
                heap_end,
            });
        }
        let map = self.sh.reader_map();
        let end = off + out.len() as u64;
        // SAFETY (both reads): inside the heap as this snapshot sees it (checked above), which
        // the readers' mapping covers; the file's bytes there do not change while the pin lives,
        // for the reasons given in `committed`.
        if !self.snap.overlay.overlaps(off, end) {
            out.copy_from_slice(unsafe { map.slice(off, out.len()) });
        } else {
            compose(off, self.snap.overlay.pieces(off, end), out, |at, buf| {
                buf.copy_from_slice(unsafe { map.slice(at, buf.len()) })
            });
        }
        Ok(())
    }
}

thread_local! {
    /// Heaps (by address) whose `read` closure is running on this thread, with its snapshot: a
    /// read nested in it sees the same state, and a transaction there is refused. (A pointer,
    /// not an `Arc`: cloning one for every read made readers on different threads contend for
    /// its count.)
    ///
    /// Without a destructor (`ManuallyDrop`), so that it is there for as long as the thread
    /// runs code: a review found a `Heap` kept in another thread-local aborting the process at
    /// thread exit ("thread local panicked on drop"), its `Drop` asking this one after it had
    /// been destroyed. [`FREE_READING`]'s destructor frees its buffer instead.
    static READING: ManuallyDrop<RefCell<Vec<(usize, *const Snapshot)>>> =
        const { ManuallyDrop::new(RefCell::new(Vec::new())) };
    /// Touched by every read, so that its destructor frees [`READING`]'s buffer at thread exit.
    static FREE_READING: FreeReading = const { FreeReading };
}

/// See [`FREE_READING`].
struct FreeReading;
impl Drop for FreeReading {
    fn drop(&mut self) {
        // (`READING` has no destructor: it is still there. A read running in a later
        // thread-local destructor may allocate it again: `ReadingMark::drop` frees it then.)
        READING.with(|r| {
            if let Ok(mut v) = r.try_borrow_mut() {
                *v = Vec::new();
            }
        });
    }
}

/// This thread is inside a `read` closure of the heap at `.0` (which pins the snapshot).
pub(crate) struct ReadingMark(usize);
impl ReadingMark {
    /// Mark this thread as reading `snap` of the heap at `addr`; the caller holds the pin of
    /// `snap` for longer than the mark lives.
    pub(crate) fn new(addr: usize, snap: &Snapshot) -> ReadingMark {
        // (Gone only in the thread-local destructors that run after it: then the mark's drop
        // frees the buffer.)
        let _ = FREE_READING.try_with(|_| ());
        READING.with(|r| r.borrow_mut().push((addr, snap as *const Snapshot)));
        ReadingMark(addr)
    }

    /// Inside a read of the heap at `addr` on this thread: run `f` with a reader of the same
    /// snapshot. Otherwise `f` comes back unrun.
    pub(crate) fn nested<R, F: FnOnce(&Reader<'_>) -> R>(
        addr: usize,
        sh: &Shared,
        f: F,
    ) -> std::result::Result<R, F> {
        let found = READING.with(|r| r.borrow().iter().find(|(a, _)| *a == addr).map(|&(_, p)| p));
        let Some(p) = found else {
            return Err(f);
        };
        // SAFETY: a mark for `addr` exists only while the outer `Heap::read` on this thread runs
        // its closure (it is dropped before that call returns, also on unwinding), and that
        // call holds the snapshot's pin from before the mark is made to after it is dropped;
        // this nested call returns before the outer closure does.
        let snap: &Snapshot = unsafe { &*p };
        Ok(f(&Reader::new(sh, snap)))
    }
    pub(crate) fn active(addr: usize) -> bool {
        READING.with(|r| r.borrow().iter().any(|(a, _)| *a == addr))
    }
}
impl Drop for ReadingMark {
    fn drop(&mut self) {
        READING.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(i) = r.iter().rposition(|&(a, _)| a == self.0) {
                r.remove(i);
            }
            // A read in a thread-local destructor that runs after `FREE_READING`'s: free the
            // buffer it allocated now, as nothing will later (a review counted 64 bytes left
            // per such thread).
            if r.is_empty() && r.capacity() > 0 && FREE_READING.try_with(|_| ()).is_err() {
                *r = Vec::new();
            }
        });
    }
}

pub(crate) fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}
