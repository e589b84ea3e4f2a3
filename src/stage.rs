//! Transaction staging: the volatile copy of every range a transaction wrote.
//!
//! Owns: staged byte ranges, kept 64-byte aligned and non-overlapping, so a transaction reads its
//! own writes at any offset, any overlap, any type; and [`Nest`], the copies that open nested
//! scopes saved of what their writes replaced. May not: touch the file or the mapping; the
//! caller passes a `fill` function that copies committed bytes.
//!
//! Two tiers: a transaction's first few ranges live in one small buffer ([`Few`]); the first
//! write that does not fit there moves them to the general tier (a buffer per range, indexed
//! by start, with recent-range hints), which serves the rest of the transaction. Beside them,
//! the block areas of runs the transaction made from free space can be staged whole
//! ([`Stage::add_area`]): one arena, a table by chunk, and the written lines of each area one
//! range.
//!
//! Why `unsafe` here: a shared read (`&self`) that overlaps staged ranges only partly must
//! compose its view (committed bytes with the staged ones laid over) in a new buffer while
//! slices returned by earlier shared reads are still alive. Such views are retired, not freed,
//! until the next exclusive (`&mut self`) call, and buffers are held as raw pointers so that
//! moving them never invalidates the slices. A read never changes the staged ranges, so it
//! never changes what the frame logs.

use std::cell::UnsafeCell;
use std::collections::{btree_map, BTreeMap, HashMap};
use std::ptr::NonNull;

use crate::alloc::Keyed;

/// Granularity and alignment of staged ranges. Objects of alignment up to this are supported.
pub(crate) const LINE: u64 = 64;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; LINE as usize]);

/// An owned, 64-byte aligned, zero-initialised byte buffer held through a raw pointer. It can
/// grow at its end ([`Buf::grow`]), keeping spare zeroed capacity so that appends are amortised.
///
/// A buffer of [`MAPPED_MIN`] bytes or more is an anonymous mapping of its own, not a heap
/// allocation: its pages are zero without being written, so capacity costs no memory until it
/// is used, and (on Linux) it grows with `mremap`, which moves page tables instead of copying
/// bytes. A bulk transaction stages one range of tens of megabytes: a heap buffer that doubles
/// held the old copy, the new one and its zero fill at once (W3 child: 139 MB peak resident
/// for a 64 MB stage). On Linux the mapping asks for transparent huge pages (`MADV_HUGEPAGE`):
/// a stage of 64 MB then takes 32 page faults instead of 16,384 (W3 `None` child, alternated
/// runs: 88 -> 69 ms).
struct Buf {
    ptr: NonNull<Line>,
    /// Lines in use.
    lines: usize,
    /// Lines allocated (all zero past `lines`: `Tx::stage_mut` relies on it, staging writes
    /// into fresh space with no fill; `tests::new_lines_are_zero_without_a_fill` checks it).
    cap: usize,
}

/// Capacity (bytes) from which a [`Buf`] is its own anonymous mapping.
const MAPPED_MIN: usize = 1 << 20;

fn is_mapped(cap: usize) -> bool {
    cap * LINE as usize >= MAPPED_MIN
}

impl Buf {
    fn zeroed(bytes: u64) -> Buf {
        let lines = (bytes / LINE) as usize;
        debug_assert!(lines > 0 && bytes % LINE == 0);
        Buf::with_capacity(lines, lines)
    }

    fn with_capacity(lines: usize, cap: usize) -> Buf {
        debug_assert!(lines <= cap && cap > 0);
        if is_mapped(cap) {
            let ptr = map_zeroed(cap * LINE as usize);
            return Buf { ptr, lines, cap };
        }
        let b: Box<[Line]> = vec![Line([0; LINE as usize]); cap].into_boxed_slice();
        // SAFETY: Box::into_raw never returns null.
        let ptr = unsafe { NonNull::new_unchecked(Box::into_raw(b).cast::<Line>()) };
        Buf { ptr, lines, cap }
    }

    fn len(&self) -> u64 {
        self.lines as u64 * LINE
    }

    fn base(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }

    /// Grow to `lines` lines (more than now), the new ones zero. Reallocates (doubling) when the
    /// capacity is short; the caller holds `&mut` to the stage, so no slice into the old
    /// allocation is alive.
    fn grow(&mut self, lines: usize) {
        debug_assert!(lines > self.lines);
        if lines > self.cap {
            let cap = lines.max(self.cap * 2);
            #[cfg(target_os = "linux")]
            if is_mapped(self.cap) {
                self.ptr = remap(self.ptr, self.cap * LINE as usize, cap * LINE as usize);
                self.cap = cap;
                self.lines = lines;
                return;
            }
            let bigger = Buf::with_capacity(lines, cap);
            // SAFETY: both are live allocations of at least `self.lines` lines, distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), bigger.ptr.as_ptr(), self.lines)
            };
            *self = bigger; // drops the old allocation
        }
        self.lines = lines;
    }
}

/// A new private anonymous mapping of `bytes`, zero (the kernel rounds the length up to whole
/// pages, as `mremap` and `munmap` do with the same length). Out of memory is the global
/// allocator's failure, as for a heap buffer.
fn map_zeroed(bytes: usize) -> NonNull<Line> {
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        out_of_memory(bytes);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: advice on the mapping just made; it changes no byte of it. A refusal (a kernel
    // without transparent huge pages) leaves it with small pages, which is not an error.
    unsafe {
        libc::madvise(p, bytes, libc::MADV_HUGEPAGE);
    }
    NonNull::new(p.cast::<Line>()).unwrap_or_else(|| out_of_memory(bytes))
}

/// Grow the mapping at `ptr` from `old` to `new` bytes; it may move. The pages past `old` are
/// zero (an anonymous mapping's new pages).
#[cfg(target_os = "linux")]
fn remap(ptr: NonNull<Line>, old: usize, new: usize) -> NonNull<Line> {
    // SAFETY: `ptr` is a live mapping of exactly `old` bytes that this buffer owns; the caller
    // holds `&mut`, so no slice into it is alive when it moves.
    let p = unsafe { libc::mremap(ptr.as_ptr().cast(), old, new, libc::MREMAP_MAYMOVE) };
    if p == libc::MAP_FAILED {
        out_of_memory(new);
    }
    NonNull::new(p.cast::<Line>()).unwrap_or_else(|| out_of_memory(new))
}

fn out_of_memory(bytes: usize) -> ! {
    std::alloc::handle_alloc_error(
        std::alloc::Layout::from_size_align(bytes, LINE as usize).expect("a valid layout"),
    )
}

// SAFETY: a `Buf` is the only owner of its allocation (like the `Box<[Line]>` it came from), so
// moving it to another thread moves that ownership; it has no shared interior state. (`Stage`
// stays `!Sync` through its `UnsafeCell`, which its shared reads rely on.) The writer keeps a
// spare stage, and the writer must be `Send` for `Heap` to be `Send + Sync`.
unsafe impl Send for Buf {}

impl Drop for Buf {
    fn drop(&mut self) {
        if is_mapped(self.cap) {
            // SAFETY: a mapping of exactly `cap` lines made by `map_zeroed` or `remap`, owned by
            // this buffer alone. A failed munmap (EINVAL cannot happen for it) would leak it.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap * LINE as usize) };
            return;
        }
        // SAFETY: ptr/cap came from Box::into_raw of a boxed slice of exactly `cap` Lines, and
        // this is the only owner.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.cap,
            )))
        }
    }
}

/// A recently written staged range: `[start, end)` held in slot `slot`.
#[derive(Clone, Copy, Default)]
struct Hint {
    start: u64,
    end: u64,
    slot: usize,
    valid: bool,
}

/// How many recently used ranges `write` and `read` check before searching the tree (a
/// transaction typically alternates between a few: the object, a bitmap word, the pointer to the
/// object; a B-tree insert: the map's header and the nodes on its path). Eight were measured
/// (callgrind): 3.7% fewer instructions per B-tree insert, 3.3% more per allocation; four kept.
const HINTS: usize = 4;

/// Most one-line buffers a stage keeps for reuse (64 KiB).
const SPARE_MAX: usize = 1024;

/// Buffers of up to this many lines are kept for reuse, one list per size.
const SPARE_LINES: usize = 16;

/// Lines a stage keeps in spare buffers of each size from two to [`SPARE_LINES`] lines
/// (16 KiB per size, 240 KiB at most in all).
const SPARE_SIZED_LINES: usize = 256;

/// Staged ranges a transaction holds in a sorted vector before they move to a tree.
///
/// A small transaction stages a few ranges (W2's push: the object, its bitmap word, the root),
/// and a `BTreeMap` allocated a node for the first and freed it at the end of every
/// transaction: its searches, inserts, node allocation and drop were about 630 of a small
/// commit's 5,900 instructions (callgrind, W2). A vector keeps its capacity from one
/// transaction to the next, and a binary search over a few entries is a handful of compares;
/// past this many, inserts in the middle would cost a move of the whole vector (a bulk B-tree
/// load stages tens of thousands of ranges), so the ranges move to the tree.
const SMALL_RANGES: usize = 32;

/// Staged ranges by start: the slot in `Inner::bufs` holding each. In `small` (sorted by start)
/// while `tree` is empty; in `tree` once there were more than [`SMALL_RANGES`], and then also in
/// `starts`, by exact start.
///
/// Why `starts`: a bulk transaction's reads mostly begin where a staged range begins (a B-tree
/// node read whole, an object), and the tree answers those with a range search of two descents
/// over tens of thousands of ranges: about 675 of a bulk-load insert's 4,100 instructions
/// (callgrind, W4-load). A hash lookup answers them in a few dozen; the tree still answers every
/// other query (a range that starts elsewhere, or none at all).
#[derive(Default)]
struct RangeIndex {
    small: Vec<(u64, usize)>,
    tree: BTreeMap<u64, usize>,
    /// Hashed with the allocator's one-multiply hasher (SipHash would cost more than the
    /// lookup it serves; range starts come from the heap's own allocator, not an adversary).
    starts: HashMap<u64, usize, Keyed>,
}

/// Entries `starts` may keep the table of when cleared; a bigger one (a bulk transaction's) is
/// freed, so that later small transactions neither hold its memory nor pay to clear it.
const STARTS_KEEP: usize = 4096;

/// [`RangeIndex::iter`]'s iterator.
type IndexIter<'a> = Either<std::slice::Iter<'a, (u64, usize)>, btree_map::Iter<'a, u64, usize>>;

/// The ranges of either form of the index, as `(start, slot)`.
enum Either<S, T> {
    Small(S),
    Tree(T),
}

impl<'a, S, T> Iterator for Either<S, T>
where
    S: Iterator<Item = &'a (u64, usize)>,
    T: Iterator<Item = (&'a u64, &'a usize)>,
{
    type Item = (u64, usize);
    fn next(&mut self) -> Option<(u64, usize)> {
        match self {
            Either::Small(it) => it.next().copied(),
            Either::Tree(it) => it.next().map(|(&s, &slot)| (s, slot)),
        }
    }
}

impl RangeIndex {
    fn is_tree(&self) -> bool {
        !self.tree.is_empty()
    }

    /// The ranges starting below `b`, highest start first.
    fn below(&self, b: u64) -> impl Iterator<Item = (u64, usize)> + '_ {
        if self.is_tree() {
            Either::Tree(self.tree.range(..b).rev())
        } else {
            let i = self.small.partition_point(|&(s, _)| s < b);
            Either::Small(self.small[..i].iter().rev())
        }
    }

    /// Every range, lowest start first.
    fn iter(&self) -> IndexIter<'_> {
        if self.is_tree() {
            Either::Tree(self.tree.iter())
        } else {
            Either::Small(self.small.iter())
        }
    }

    /// The range starting exactly at `start`, if any, where that takes no search of the tree
    /// (`None` while the ranges are few: the caller's search is cheap then).
    #[inline]
    fn starting_at(&self, start: u64) -> Option<usize> {
        if self.is_tree() {
            self.starts.get(&start).copied()
        } else {
            None
        }
    }

    fn get(&self, start: u64) -> Option<usize> {
        if self.is_tree() {
            return self.starts.get(&start).copied();
        }
        let i = self.small.binary_search_by_key(&start, |&(s, _)| s).ok()?;
        Some(self.small[i].1)
    }

    fn insert(&mut self, start: u64, slot: usize) {
        if self.is_tree() {
            self.tree.insert(start, slot);
            self.starts.insert(start, slot);
            return;
        }
        match self.small.binary_search_by_key(&start, |&(s, _)| s) {
            Ok(i) => self.small[i].1 = slot,
            Err(i) if self.small.len() < SMALL_RANGES => self.small.insert(i, (start, slot)),
            Err(_) => {
                self.starts.extend(self.small.iter().copied());
                self.tree.extend(self.small.drain(..));
                self.tree.insert(start, slot);
                self.starts.insert(start, slot);
            }
        }
    }

    fn remove(&mut self, start: u64) -> Option<usize> {
        if self.is_tree() {
            // (Emptied, the index is a vector again: `small` is empty while the tree is used.)
            self.starts.remove(&start);
            return self.tree.remove(&start);
        }
        let i = self.small.binary_search_by_key(&start, |&(s, _)| s).ok()?;
        Some(self.small.remove(i).1)
    }

    fn clear(&mut self) {
        self.small.clear();
        self.tree.clear();
        if self.starts.capacity() > STARTS_KEEP {
            self.starts = HashMap::default();
        } else if !self.starts.is_empty() {
            self.starts.clear();
        }
    }

    fn is_empty(&self) -> bool {
        self.small.is_empty() && self.tree.is_empty()
    }
}

/// Ranges the first tier ([`Few`]) holds at most.
const FEW_RANGES: usize = 8;

/// Lines the first tier ([`Few`]) holds at most (1 KiB).
const FEW_LINES: usize = 16;

/// The first tier of a stage: a small transaction's ranges, up to [`FEW_RANGES`] of them and
/// [`FEW_LINES`] lines in all, in one buffer (in the order they were staged) with an index
/// sorted by start that a scan searches. A small commit stages a few lines (W2: a bitmap
/// word's, the object's, the root's; a one-insert B-tree commit: the map's header, the leaf's
/// first lines, a value), and the general tier spent about 350 instructions on each new one
/// (hints, a search, a buffer of its own taken from the spares and zeroed, a slot, the index;
/// callgrind, W2). A write just past a range extends it only when its lines end the buffer;
/// otherwise it is a range of its own. The first write that does not fit (one more range or
/// line, or a write that overlaps staged bytes without lying inside one range) moves every
/// range to the general tier ([`Inner::spill`]), which then serves the transaction to its end.
///
/// Lines of `arena` past `used` are zero, as a general buffer's spare lines are
/// (`Tx::stage_mut` stages fresh space without a fill).
struct Few {
    /// Ranges in use.
    n: usize,
    /// Lines of `arena` in use.
    used: usize,
    /// For each range, by start: (start offset, first line in `arena`, lines).
    idx: [(u64, u32, u32); FEW_RANGES],
    /// Held as a raw buffer, as the general tier's are: slices handed out by shared reads
    /// point into it, not into `Inner`.
    arena: Buf,
}

impl Default for Few {
    fn default() -> Few {
        Few {
            n: 0,
            used: 0,
            idx: [(0, 0, 0); FEW_RANGES],
            arena: Buf::zeroed(FEW_LINES as u64 * LINE),
        }
    }
}

/// Where a line-aligned `[a, b)` lies among the first tier's ranges.
enum Located {
    /// Inside the `i`-th range.
    Inside(usize),
    /// Overlapping none; a new range would be the `i`-th.
    Clear(usize),
    /// Overlapping some range without lying inside it.
    Partial,
}

impl Few {
    /// The `i`-th range: start, end, first line in the arena.
    #[inline]
    fn range(&self, i: usize) -> (u64, u64, usize) {
        let (s, at, lines) = self.idx[i];
        (s, s + lines as u64 * LINE, at as usize)
    }

    #[inline]
    fn locate(&self, a: u64, b: u64) -> Located {
        for i in 0..self.n {
            let (s, e, _) = self.range(i);
            if e <= a {
                continue;
            }
            if s >= b {
                return Located::Clear(i);
            }
            return if s <= a && b <= e {
                Located::Inside(i)
            } else {
                Located::Partial
            };
        }
        Located::Clear(self.n)
    }

    /// A pointer to the `i`-th range's first byte.
    #[inline]
    fn base(&self, i: usize) -> *mut u8 {
        let (_, _, at) = self.range(i);
        // SAFETY: `at` is a line of the arena (`at < used <= FEW_LINES`), so the offset stays
        // inside its allocation.
        unsafe { self.arena.base().add(at * LINE as usize) }
    }

    /// The `i`-th range's bytes.
    #[inline]
    fn bytes(&self, i: usize) -> &[u8] {
        let (s, e, _) = self.range(i);
        // SAFETY: the range's lines lie inside the arena, and no `&mut` to them is alive while
        // `&self` is borrowed (writes go through `&mut Stage`).
        unsafe { std::slice::from_raw_parts(self.base(i), (e - s) as usize) }
    }

    /// Stage `[a, b)` (overlapping no range; the `pos`-th one if new) in the arena, filled by
    /// `fill`: as an extension of the range ending at `a` when that one was staged last, else
    /// as a range of its own. The range's index, or `None` if it does not fit.
    fn stage(
        &mut self,
        pos: usize,
        a: u64,
        b: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Option<usize> {
        let k = ((b - a) / LINE) as usize;
        if self.used + k > FEW_LINES {
            return None;
        }
        // The range ending at `a` grows in place only if its lines end the arena.
        let extends = |j: usize| {
            let (s, at, lines) = self.idx[j];
            s + lines as u64 * LINE == a && (at + lines) as usize == self.used
        };
        let extend = match pos.checked_sub(1) {
            Some(j) if extends(j) => Some(j),
            _ if self.n < FEW_RANGES => None,
            _ => return None,
        };
        let at = self.used;
        // The lines count as used before `fill` writes them, and the index names them only
        // after: should `fill` panic, the lines are zeroed by the next clear, and no range
        // holds them.
        self.used += k;
        // SAFETY: lines `at..at + k` lie inside the arena (checked above); `&mut self` means
        // no slice into the arena is alive.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.base().add(at * LINE as usize),
                k * LINE as usize,
            )
        };
        fill(a, dst);
        Some(match extend {
            Some(j) => {
                self.idx[j].2 += k as u32;
                j
            }
            None => {
                self.idx.copy_within(pos..self.n, pos + 1);
                self.idx[pos] = (a, at as u32, k as u32);
                self.n += 1;
                pos
            }
        })
    }

    /// Forget every range, zeroing the lines they used.
    fn clear(&mut self) {
        // SAFETY: the first `used` lines of the arena; `&mut self` means no slice into it is
        // alive.
        unsafe { std::ptr::write_bytes(self.arena.base(), 0, self.used * LINE as usize) };
        self.n = 0;
        self.used = 0;
    }
}

/// [`Inner::each`]'s iterator (a plain struct: a chain of two optional maps cost a small
/// commit about 150 instructions more, callgrind, W2).
struct Each<'a> {
    inner: &'a Inner,
    few: std::ops::Range<usize>,
    general: Option<IndexIter<'a>>,
    /// Whether areas may be left to merge with the general tier's ranges (there are areas
    /// only once the first tier has moved to the general one: `Stage::add_area`).
    merging: bool,
    /// The next area to yield, in `inner.areas.table`.
    j: usize,
    /// A general range taken while merging, not yielded yet.
    next: Option<(u64, &'a [u8])>,
}

impl<'a> Iterator for Each<'a> {
    type Item = (u64, &'a [u8]);

    #[inline(always)]
    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        if self.merging {
            return self.merged();
        }
        if self.general.is_some() {
            return self.general_next();
        }
        let i = self.few.next()?;
        Some((self.inner.few.range(i).0, self.inner.few.bytes(i)))
    }
}

impl<'a> Each<'a> {
    /// The next range of the general tier.
    #[inline(always)]
    fn general_next(&mut self) -> Option<(u64, &'a [u8])> {
        let (s, slot) = self.general.as_mut()?.next()?;
        let buf = self.inner.buf(slot);
        // SAFETY: a live buffer of buf.len() bytes, only read while the borrow of the stage
        // this iterator holds lives.
        Some((s, unsafe {
            std::slice::from_raw_parts(buf.base() as *const u8, buf.len() as usize)
        }))
    }

    /// [`Iterator::next`] while areas may be left: the lower of the next area's written lines
    /// and the next general range (they never overlap).
    #[inline(never)]
    fn merged(&mut self) -> Option<(u64, &'a [u8])> {
        let areas: &'a Areas = &self.inner.areas;
        let x = loop {
            match areas.table.get(self.j) {
                None => {
                    self.merging = false;
                    return self.next.take().or_else(|| self.general_next());
                }
                Some(x) if x.lo < x.hi => break x,
                Some(_) => self.j += 1,
            }
        };
        if self.next.is_none() {
            self.next = self.general_next();
        }
        match self.next {
            Some((s, _)) if s < x.lo => self.next.take(),
            _ => {
                self.j += 1;
                Some((x.lo, areas.written(x)))
            }
        }
    }
}

/// [`Stage::ranges`]'s iterator: [`Each`] cut to the trims.
struct Trimmed<'a> {
    each: Each<'a>,
    trims: &'a [(u32, u32)],
    i: usize,
}

impl<'a> Iterator for Trimmed<'a> {
    type Item = (u64, &'a [u8]);

    #[inline(always)]
    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        loop {
            let (s, all) = self.each.next()?;
            let i = self.i;
            self.i += 1;
            match self.trims.get(i) {
                None => return Some((s, all)),
                Some(&(lo, hi)) if lo < hi => {
                    return Some((s + lo as u64, &all[lo as usize..hi as usize]))
                }
                Some(_) => {}
            }
        }
    }
}

/// A block area of a run this transaction made from free space, staged in one piece of
/// [`Areas::arena`] ([`Stage::add_area`]). `[lo, hi)` are the lines written so far (`lo == hi`:
/// none); the rest of the area is zero in the arena and not staged. Lines between written ones
/// are zero when the write that joined them came through `Stage::area_mut` (the transaction's
/// path), committed bytes when it came through `Stage::write`'s fill.
#[derive(Clone, Copy, Debug)]
struct Area {
    start: u64,
    end: u64,
    /// Where `start` lies in the arena, in bytes.
    at: usize,
    lo: u64,
    hi: u64,
}

/// Where `[a, b)` lies among the areas.
enum AreaHit {
    /// Inside the area of this index.
    Inside(usize),
    /// Overlapping no area.
    Clear,
    /// Overlapping an area without lying inside it.
    Partial,
}

/// The areas tier: fresh block areas, each staged whole in one arena, so that the objects a
/// bulk transaction puts there (B-tree nodes, list nodes) are found by an index into a table
/// of chunks instead of a search over tens of thousands of ranges, and take no buffer of their
/// own. An area lies inside one chunk (a run's block area), and a chunk holds at most one.
#[derive(Default)]
struct Areas {
    /// The area of each chunk from chunk `base` on (empty: `start == end`), so sorted by start.
    /// A binary search over the areas' starts missed the cache at every step (the hottest
    /// instructions of a bulk B-tree load), and a hash of windows took 9% of its samples.
    table: Vec<Area>,
    /// The chunk area's offset: chunk `c` begins at `origin + c * CHUNK`.
    origin: u64,
    base: u64,
    /// Every area's bytes (an anonymous mapping from its first megabyte on, growing by
    /// `mremap`). Its lines past the written ones are zero.
    arena: Option<Buf>,
    /// Lines of the arena given to areas.
    used: usize,
    /// Bytes written (`hi - lo` summed over the areas).
    bytes: u64,
    /// Bytes moved out of areas into the general tier (a write that overlapped an area without
    /// lying inside it): they are fresh, so they do not count against the log's budget.
    evicted: u64,
}

/// What [`Stage::write`] and [`Stage::read`] call for committed bytes.
type Fill<'f> = dyn FnMut(u64, &mut [u8]) + 'f;

/// An empty slot of [`Areas::table`].
const NO_AREA: Area = Area {
    start: 0,
    end: 0,
    at: 0,
    lo: 0,
    hi: 0,
};

/// `log2` of the heap's chunk size, the areas' table step.
const CHUNK_SHIFT: u32 = 18;
const _: () = assert!(1 << CHUNK_SHIFT == crate::limits::CHUNK_SIZE);

/// The most chunks [`Areas::table`] spans (16,384: 640 KiB of table for 4 GiB of heap): an area
/// further from the others is staged as any other bytes.
const AREA_SPAN_MAX: u64 = 1 << 14;

/// The smallest arena: areas are the block areas of runs (a chunk, 256 KiB, less the bitmap),
/// and a transaction with one of them has made two runs already.
const ARENA_MIN_LINES: usize = (1 << 20) / LINE as usize;

impl Areas {
    /// The table slots of the chunks that `[a, b)` (not empty) meets.
    #[inline]
    fn slots(&self, a: u64, b: u64) -> std::ops::Range<usize> {
        let chunk = |x: u64| (x.max(self.origin) - self.origin) >> CHUNK_SHIFT;
        let len = self.table.len() as u64;
        let lo = chunk(a).saturating_sub(self.base).min(len);
        let hi = (chunk(b - 1) + 1).saturating_sub(self.base).min(len);
        lo as usize..hi as usize
    }

    /// Where `[a, b)` (line-aligned, not empty) lies among the areas.
    #[inline]
    fn locate(&self, a: u64, b: u64) -> AreaHit {
        let mut hit = AreaHit::Clear;
        for i in self.slots(a, b) {
            let x = &self.table[i];
            if x.start <= a && b <= x.end {
                return AreaHit::Inside(i);
            }
            if x.start < b && a < x.end {
                hit = AreaHit::Partial;
            }
        }
        hit
    }

    /// Put the area `[start, end)` in the table, with no bytes of the arena yet; its slot, or
    /// `None` (nothing changed) if it does not lie in one chunk, its chunk has one, or the
    /// table would span more than [`AREA_SPAN_MAX`] chunks.
    fn insert(&mut self, start: u64, end: u64, origin: u64) -> Option<usize> {
        if self.table.is_empty() {
            self.origin = origin;
        }
        if self.origin != origin || start < origin {
            return None;
        }
        let c = (start - origin) >> CHUNK_SHIFT;
        if (end - 1 - origin) >> CHUNK_SHIFT != c {
            return None;
        }
        let (lo, hi) = match self.table.is_empty() {
            true => (c, c),
            false => (
                c.min(self.base),
                c.max(self.base + self.table.len() as u64 - 1),
            ),
        };
        if hi - lo >= AREA_SPAN_MAX {
            return None;
        }
        if !self.table.is_empty() && lo < self.base {
            let shift = (self.base - lo) as usize;
            self.table.splice(0..0, std::iter::repeat_n(NO_AREA, shift));
        }
        self.base = lo;
        self.table.resize((hi - lo + 1) as usize, NO_AREA);
        let i = (c - lo) as usize;
        if self.table[i].start < self.table[i].end {
            return None;
        }
        self.table[i] = Area {
            start,
            end,
            at: 0,
            lo: start,
            hi: start,
        };
        Some(i)
    }

    /// The arena's byte address of offset `p` of area `x`.
    fn ptr(&self, x: &Area, p: u64) -> *mut u8 {
        let arena = self.arena.as_ref().expect("an area has an arena");
        // SAFETY: `p` lies in `[x.start, x.end]`, and the arena holds the area's bytes at
        // `x.at` (`add_area` grew it first), so the address is inside the arena (or one past
        // its area's end).
        unsafe { arena.base().add(x.at + (p - x.start) as usize) }
    }

    /// Stage the lines `[a, b)` of area `i` (inside it) and return the address of `a`. Lines
    /// between the written ones and `[a, b)` join them, given their committed bytes by `fill`
    /// (`None`: they stay zero, as fresh space is staged).
    fn write(&mut self, i: usize, a: u64, b: u64, fill: Option<&mut Fill<'_>>) -> *mut u8 {
        let x = self.table[i];
        let (lo, hi) = match x.lo == x.hi {
            true => (a, b),
            false => (x.lo.min(a), x.hi.max(b)),
        };
        if let Some(fill) = fill {
            let new = match x.lo == x.hi {
                true => [(a, b), (b, b)],
                false => [(lo, x.lo), (x.hi, hi)],
            };
            for (s, e) in new {
                if s < e {
                    // SAFETY: `[s, e)` lies inside the area, whose bytes the arena holds; the
                    // caller holds the stage exclusively, so no slice of them is alive.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(self.ptr(&x, s), (e - s) as usize)
                    };
                    fill(s, dst);
                }
            }
        }
        self.bytes += (hi - lo) - (x.hi - x.lo);
        self.table[i].lo = lo;
        self.table[i].hi = hi;
        self.ptr(&x, a)
    }

    /// The written bytes of area `x`.
    fn written(&self, x: &Area) -> &[u8] {
        // SAFETY: `[x.lo, x.hi)` lies inside the area's part of the arena; the slice borrows
        // `self`, so the arena can neither move nor be written while it lives.
        unsafe { std::slice::from_raw_parts(self.ptr(x, x.lo), (x.hi - x.lo) as usize) }
    }

    /// The areas whose written lines overlap `[a, b)` (`a < b`), lowest first.
    fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = &Area> + '_ {
        self.table[self.slots(a, b)]
            .iter()
            .filter(move |x| x.lo < b && a < x.hi)
    }
}

/// A [`WordPlace`]'s `slot` for a word in the first tier: this bit, and the arena line.
const FEW_SLOT: usize = 1 << (usize::BITS - 1);

#[derive(Default)]
struct Inner {
    /// The first tier, holding every staged range until `spilled`.
    few: Few,
    /// The ranges moved to the general tier (below); the first is then empty and unused until
    /// the stage is cleared.
    spilled: bool,
    /// General tier: staged ranges by start: the slot in `bufs` holding each.
    ranges: RangeIndex,
    /// Fresh block areas staged whole ([`Stage::add_area`]); no range of the other tiers
    /// overlaps one.
    areas: Areas,
    bufs: Vec<Option<Buf>>,
    free_slots: Vec<usize>,
    retired: Vec<Buf>,
    /// One-line buffers no longer in use, kept for the next ones (most staged ranges of a small
    /// transaction are one line: an object, a bitmap word, a table entry, the root). Their
    /// `posix_memalign` and `free` were 30% of a small commit's instructions (callgrind, W2).
    spare: Vec<Buf>,
    /// Buffers of 2 to [`SPARE_LINES`] lines no longer in use, `sized[n - 2]` holding those of
    /// `n` lines: a B-tree insert stages a few such ranges (the shifted keys and values), whose
    /// allocations were 15% of its instructions. Empty until the first is given back (a stage
    /// is made and dropped with every transaction).
    sized: Vec<Vec<Buf>>,
    bytes: u64,
    /// End of the highest staged range (0 when none): a write starting there extends it.
    max_end: u64,
    /// Set by [`Stage::trim_unchanged`] (empty otherwise): for the i-th range in offset order,
    /// the bytes `[lo, hi)` of it that [`Stage::ranges`] yields.
    trims: Vec<(u32, u32)>,
    /// Byte ranges `[start, end)` that [`Stage::trim_unchanged`] leaves whole
    /// ([`Stage::keep_whole`]).
    whole: Vec<(u64, u64)>,
    /// Most recent first. A hint is valid while its range is staged with exactly its bounds.
    hints: [Hint; HINTS],
    /// The generation of [`WordPlace`]s handed out: 0 until one is, set to 0 again whenever a
    /// range's slot may change (a merge, a clear), so every earlier place stops matching.
    /// Nonzero values come from [`fresh_generation`], unique in the process, so a place never
    /// matches another stage either.
    generation: u64,
}

/// Where one staged 8-byte word lives ([`Stage::word_place`]): its range's start and slot,
/// valid while the stage's generation is the one recorded. Lets the allocator rewrite the
/// bitmap word it allocates from, again and again, without searching the stage each time (the
/// hint search, `remember` and the budget check of a staged write were about 250 of a small
/// allocation's 950 instructions, W3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WordPlace {
    off: u64,
    start: u64,
    slot: usize,
    generation: u64,
}

impl WordPlace {
    /// The word's offset in the file.
    pub(crate) fn offset(self) -> u64 {
        self.off
    }
}

/// A generation no stage has used yet.
fn fresh_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The staged writes of one transaction.
#[derive(Default)]
pub(crate) struct Stage {
    inner: UnsafeCell<Inner>,
}

/// Bit `j` set where byte `j` of `a` and `b` differs: four 16-byte compares (SSE2, part of
/// every x86-64). A loop over the eight words cost about 50 instructions a line (callgrind,
/// W2), a byte loop left to the compiler 700.
#[cfg(target_arch = "x86_64")]
#[inline]
fn differing_bytes(a: &[u8; 64], b: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8};
    let mut equal = 0u64;
    for i in 0..4 {
        // SAFETY: SSE2 is in x86-64's baseline, so the intrinsics are available; each load
        // reads the 16 bytes at 16 * i of a 64-byte array (unaligned loads are allowed).
        let m = unsafe {
            _mm_movemask_epi8(_mm_cmpeq_epi8(
                _mm_loadu_si128(a.as_ptr().add(16 * i).cast()),
                _mm_loadu_si128(b.as_ptr().add(16 * i).cast()),
            ))
        };
        equal |= u64::from(m as u16) << (16 * i);
    }
    !equal
}

/// Bits `8k..8k+8` set where the `k`-th 8-byte words of `a` and `b` differ: word by word, on
/// other targets (and compared with the SSE2 version by a unit test).
#[cfg(not(target_arch = "x86_64"))]
use differing_words as differing_bytes;

#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
#[inline]
fn differing_words(a: &[u8; 64], b: &[u8; 64]) -> u64 {
    let mut m = 0u64;
    for k in 0..8 {
        let x = u64::from_ne_bytes(a[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
        let y = u64::from_ne_bytes(b[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
        if x != y {
            m |= 0xff << (k * 8);
        }
    }
    m
}

/// The longest staged range that [`Stage::trim_unchanged`] compares with the committed bytes
/// (longer ones, a bulk write, are logged whole: comparing them would read old bytes that the
/// commit does not otherwise need).
pub(crate) const TRIM_MAX: u64 = 4096;

/// The unit [`Stage::trim_unchanged`] keeps whole: 16 bytes, the size and alignment of the
/// allocator's chunk table entries (each covered by its own check). A salvage replays only a
/// prefix of the frames over heap pages that may hold later, dropped transactions' bytes; a
/// kept frame that logged one word of an entry would leave that entry half old, half new, and
/// failing its check (docs/ARCHITECTURE.md section 3, step 4).
pub(crate) const TRIM_UNIT: usize = 16;

fn align_down(x: u64) -> u64 {
    x & !(LINE - 1)
}
fn align_up(x: u64) -> u64 {
    (x + LINE - 1) & !(LINE - 1)
}

impl Inner {
    /// A zeroed buffer of `bytes` (a multiple of [`LINE`]), reusing a spare one of that size.
    fn new_buf(&mut self, bytes: u64) -> Buf {
        let lines = (bytes / LINE) as usize;
        if lines == 1 {
            if let Some(mut b) = self.spare.pop() {
                // SAFETY: a live allocation of one line that nothing else refers to.
                unsafe { std::ptr::write_bytes(b.base(), 0, LINE as usize) };
                b.lines = 1;
                return b;
            }
        } else if let Some(mut b) = self.sized.get_mut(lines.wrapping_sub(2)).and_then(Vec::pop) {
            // SAFETY: a live allocation of `cap == lines` lines that nothing else refers to.
            unsafe { std::ptr::write_bytes(b.base(), 0, lines * LINE as usize) };
            b.lines = lines;
            return b;
        }
        Buf::zeroed(bytes)
    }

    /// Give `b` back: kept if it has at most [`SPARE_LINES`] lines of capacity and its size's
    /// list has room, freed otherwise.
    #[inline]
    fn recycle(&mut self, b: Buf) {
        if b.cap == 1 {
            if self.spare.len() < SPARE_MAX {
                self.spare.push(b);
            }
        } else {
            self.recycle_sized(b);
        }
    }

    /// [`Self::recycle`] for a buffer of more than one line (kept out of line: a small commit's
    /// buffers are one line, and its `clear` inlines the check above).
    #[inline(never)]
    fn recycle_sized(&mut self, b: Buf) {
        if b.cap > SPARE_LINES {
            return;
        }
        if self.sized.is_empty() {
            self.sized.resize_with(SPARE_LINES - 1, Vec::new);
        }
        let list = &mut self.sized[b.cap - 2];
        if list.len() < SPARE_SIZED_LINES / b.cap {
            list.push(b);
        }
    }

    fn buf(&self, slot: usize) -> &Buf {
        self.bufs[slot].as_ref().expect("a live slot")
    }

    fn put(&mut self, buf: Buf) -> usize {
        match self.free_slots.pop() {
            Some(slot) => {
                self.bufs[slot] = Some(buf);
                slot
            }
            None => {
                self.bufs.push(Some(buf));
                self.bufs.len() - 1
            }
        }
    }

    fn take(&mut self, slot: usize) -> Buf {
        self.free_slots.push(slot);
        self.bufs[slot].take().expect("a live slot")
    }

    /// Make `h` the most recent hint.
    fn remember(&mut self, h: Hint) {
        if self.hints[0].valid && self.hints[0].slot == h.slot {
            // Already the most recent (an append extending it, a word set in it): new bounds.
            self.hints[0] = Hint { valid: true, ..h };
            return;
        }
        let i = self
            .hints
            .iter()
            .position(|x| x.valid && x.slot == h.slot)
            .or_else(|| self.hints.iter().position(|x| !x.valid))
            .unwrap_or(HINTS - 1);
        self.hints.copy_within(0..i, 1);
        self.hints[0] = Hint { valid: true, ..h };
    }

    /// The staged range covering `[a, b)` entirely, if there is one; `Ok(None)` if nothing staged
    /// overlaps it; `Err(())` if the overlap is partial (a merge is needed).
    fn find(&self, a: u64, b: u64) -> Result<Option<(u64, usize)>, ()> {
        // Ranges do not overlap: one that starts at `a` and reaches `b` is the answer.
        if let Some(slot) = self.ranges.starting_at(a) {
            if a + self.buf(slot).len() >= b {
                return Ok(Some((a, slot)));
            }
        }
        match self.ranges.below(b).next() {
            Some((s, slot)) if s + self.buf(slot).len() > a => {
                if s <= a && s + self.buf(slot).len() >= b {
                    Ok(Some((s, slot)))
                } else {
                    Err(())
                }
            }
            _ => Ok(None),
        }
    }

    /// A scratch buffer holding the transaction's view of `[a, b)`: committed bytes with every
    /// overlapping staged range laid over them. The staged ranges are left as they are (a read
    /// must not grow what the frame logs); the buffer is retired, so it lives until the next
    /// exclusive call.
    fn compose(&mut self, a: u64, b: u64, fill: &mut dyn FnMut(u64, &mut [u8])) -> *const u8 {
        let view = self.new_buf(b - a);
        // SAFETY: `view` is freshly allocated (or a spare one that nothing refers to), `b - a` bytes, and nothing else refers to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(view.base(), (b - a) as usize) };
        fill(a, dst);
        let mut lay = |s: u64, src: &[u8]| {
            let e = s + src.len() as u64;
            let (lo, hi) = (s.max(a), e.min(b));
            if lo < hi {
                dst[(lo - a) as usize..(hi - a) as usize]
                    .copy_from_slice(&src[(lo - s) as usize..(hi - s) as usize]);
            }
            e > a
        };
        if self.spilled {
            // Down from `b`, stopping below `a`: not a walk over every range.
            for (s, slot) in self.ranges.below(b) {
                let buf = self.buf(slot);
                // SAFETY: `buf` is a live buffer of buf.len() bytes; we only read it.
                let src = unsafe { std::slice::from_raw_parts(buf.base(), buf.len() as usize) };
                if !lay(s, src) {
                    break;
                }
            }
        } else {
            for (s, src) in self.each() {
                lay(s, src);
            }
        }
        for x in self.areas.overlapping(a, b) {
            lay(x.lo, self.areas.written(x));
        }
        let base = view.base() as *const u8;
        self.retired.push(view);
        base
    }

    /// Bytes of `[a, b)` (line-aligned) no staged range covers yet.
    fn unstaged(&self, a: u64, b: u64) -> u64 {
        let mut covered = 0;
        for (s, slot) in self.ranges.below(b) {
            let e = s + self.buf(slot).len();
            if e <= a {
                break;
            }
            covered += e.min(b) - s.max(a);
        }
        (b - a) - covered
    }

    /// Replace every range overlapping `[a, b)` by one buffer covering their union and `[a, b)`.
    /// Returns the new range's start and slot. The old buffers are freed (the caller holds
    /// `&mut` to the stage), and the hints naming them are dropped.
    fn merge(&mut self, a: u64, b: u64, fill: &mut dyn FnMut(u64, &mut [u8])) -> (u64, usize) {
        let mut starts = Vec::new();
        for (s, slot) in self.ranges.below(b) {
            if s + self.buf(slot).len() <= a {
                break;
            }
            starts.push(s);
        }
        let mut start = a;
        let mut end = b;
        for &s in &starts {
            start = start.min(s);
            let slot = self.ranges.get(s).expect("range listed above");
            end = end.max(s + self.buf(slot).len());
        }
        let new = self.new_buf(end - start);
        // SAFETY: `new` is freshly allocated (or a spare one that nothing refers to), `end - start` bytes, and nothing else refers to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(new.base(), (end - start) as usize) };
        fill(start, dst);
        // Ranges merged away give up their slots: no word place may outlive that. (A new
        // range merging nothing takes a free slot, which no valid place names.)
        if !starts.is_empty() {
            self.generation = 0;
        }
        for s in starts {
            let slot = self.ranges.remove(s).expect("range listed above");
            for h in self.hints.iter_mut().filter(|h| h.slot == slot) {
                h.valid = false;
            }
            let old = self.take(slot);
            let at = (s - start) as usize;
            // SAFETY: `old` is a live buffer of old.len() bytes; we only read it.
            let src = unsafe { std::slice::from_raw_parts(old.base(), old.len() as usize) };
            dst[at..at + src.len()].copy_from_slice(src);
            self.bytes -= old.len();
            self.recycle(old);
        }
        self.bytes += new.len();
        self.max_end = self.max_end.max(end);
        (start, self.add_range(start, end, new))
    }

    /// Index `buf`, holding `[start, end)`, as a staged range and make it the most recent
    /// hint; its slot. (Counts no bytes: the caller knows whether they are new.)
    fn add_range(&mut self, start: u64, end: u64, buf: Buf) -> usize {
        let slot = self.put(buf);
        self.ranges.insert(start, slot);
        self.remember(Hint {
            start,
            end,
            slot,
            valid: true,
        });
        slot
    }

    /// Extend the highest staged range (in slot `h.slot`, ending at `a`) to `b`: the fast path
    /// of appends. `fill` supplies the committed bytes of the new lines.
    fn extend_top(&mut self, h: Hint, b: u64, fill: &mut dyn FnMut(u64, &mut [u8])) {
        let a = h.end;
        let buf = self.bufs[h.slot].as_mut().expect("a live slot");
        buf.grow(((b - h.start) / LINE) as usize);
        // SAFETY: the buffer now spans `[h.start, b)`; `&mut self` means no slice into it is
        // alive.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(buf.base().add((a - h.start) as usize), (b - a) as usize)
        };
        fill(a, dst);
        self.bytes += b - a;
        self.max_end = b;
        self.remember(Hint { end: b, ..h });
    }
}

impl Inner {
    /// Move every area overlapping `[a, b)` out of the areas tier: its written lines become a
    /// range of the general tier (a write that overlaps an area without lying inside it, which
    /// no object write does: objects lie inside one run's block area).
    #[cold]
    #[inline(never)]
    fn evict_areas(&mut self, a: u64, b: u64) {
        if !self.spilled {
            self.spill();
        }
        for i in self.areas.slots(a, b) {
            let x = self.areas.table[i];
            if !(x.start < b && a < x.end) {
                continue;
            }
            self.areas.table[i] = NO_AREA;
            if x.lo == x.hi {
                continue;
            }
            let buf = self.new_buf(x.hi - x.lo);
            let src = self.areas.written(&x);
            // SAFETY: `buf` is new (or a spare one nothing refers to), of `src.len()` bytes,
            // distinct from the arena.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.base(), src.len()) };
            self.areas.bytes -= x.hi - x.lo;
            self.areas.evicted += x.hi - x.lo;
            // No range of the other tiers overlaps an area: the lines become a range of their
            // own.
            self.bytes += x.hi - x.lo;
            self.max_end = self.max_end.max(x.hi);
            self.add_range(x.lo, x.hi, buf);
        }
    }

    /// [`Stage::write`] of the lines `[a, b)` where areas exist: the address of `a` in the
    /// arena if an area holds them; `None` if none does (after moving out any area they
    /// overlap). Out of line: a small transaction's writes never come here, and inlined it
    /// cost their `write` its inlining of `merge` (about 80 instructions a one-insert B-tree
    /// commit, callgrind).
    #[inline(never)]
    fn write_in_areas(&mut self, a: u64, b: u64, fill: &mut Fill<'_>) -> Option<*mut u8> {
        match self.areas.locate(a, b) {
            AreaHit::Inside(i) => Some(self.areas.write(i, a, b, Some(fill))),
            AreaHit::Partial => {
                self.evict_areas(a, b);
                None
            }
            AreaHit::Clear => None,
        }
    }

    /// Every staged range in offset order, as `(start, bytes)`, from whichever tier holds them.
    fn each(&self) -> Each<'_> {
        Each {
            inner: self,
            few: 0..if self.spilled { 0 } else { self.few.n },
            general: self.spilled.then(|| self.ranges.iter()),
            merging: !self.areas.table.is_empty(),
            j: 0,
            next: None,
        }
    }

    /// Move the first tier's ranges to the general one (for good, until the stage is cleared),
    /// joining ranges that touch, as the general tier's appends would have. The range ending
    /// highest becomes the most recent hint, so that appends go on extending it. Word places
    /// handed out so far go stale.
    #[cold]
    #[inline(never)]
    fn spill(&mut self) {
        debug_assert!(!self.spilled);
        let mut i = 0;
        while i < self.few.n {
            let (start, mut end, _) = self.few.range(i);
            let mut j = i + 1;
            while j < self.few.n && self.few.range(j).0 == end {
                end = self.few.range(j).1;
                j += 1;
            }
            let buf = self.new_buf(end - start);
            for k in i..j {
                let (s, e, _) = self.few.range(k);
                // SAFETY: the k-th range's bytes lie inside the arena and `buf` holds
                // `[start, end)`, which contains `[s, e)`; the two allocations are distinct,
                // and `&mut self` means no slice into either is alive.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.few.base(k),
                        buf.base().add((s - start) as usize),
                        (e - s) as usize,
                    )
                };
            }
            self.add_range(start, end, buf);
            i = j;
        }
        self.few.clear();
        self.spilled = true;
        self.generation = 0;
    }
}

impl Stage {
    /// Bytes currently staged outside block areas (what the early size check counts).
    pub(crate) fn staged_bytes(&mut self) -> u64 {
        self.inner.get_mut().bytes
    }

    /// Drop every staged range, keeping one-line buffers (and the slot table's capacity) for
    /// the next transaction that reuses this stage.
    pub(crate) fn clear(&mut self) {
        let inner = self.inner.get_mut();
        if inner.spilled {
            inner.ranges.clear();
            inner.free_slots.clear();
            for i in 0..inner.bufs.len() {
                if let Some(b) = inner.bufs[i].take() {
                    inner.recycle(b);
                }
            }
            inner.bufs.clear();
            inner.hints = [Hint::default(); HINTS];
            inner.spilled = false;
        } else {
            inner.few.clear();
        }
        while let Some(b) = inner.retired.pop() {
            inner.recycle(b);
        }
        if inner.areas.arena.is_some() {
            inner.areas = Areas::default();
        }
        inner.bytes = 0;
        inner.max_end = 0;
        inner.trims.clear();
        inner.whole.clear();
        inner.generation = 0;
    }

    /// Where the staged 8-byte word at `off` lives, for [`Self::word_mut`]; `None` if no staged
    /// range holds it (stage it first).
    pub(crate) fn word_place(&mut self, off: u64) -> Option<WordPlace> {
        let inner = self.inner.get_mut();
        let (a, b) = (align_down(off), align_up(off + 8));
        if !inner.spilled {
            // In the first tier a place names the word's line in the arena (lines never move
            // there; a spill or a clear makes the place stale).
            let Located::Inside(i) = inner.few.locate(a, b) else {
                return None;
            };
            let (s, _, at) = inner.few.range(i);
            if inner.generation == 0 {
                inner.generation = fresh_generation();
            }
            return Some(WordPlace {
                off,
                start: a,
                slot: FEW_SLOT | (at + ((a - s) / LINE) as usize),
                generation: inner.generation,
            });
        }
        // The word was usually just written: a recent range holds it.
        let (start, slot) = match inner
            .hints
            .iter()
            .find(|h| h.valid && h.start <= a && b <= h.end)
        {
            Some(h) => (h.start, h.slot),
            None => inner.find(a, b).ok()??,
        };
        if inner.generation == 0 {
            inner.generation = fresh_generation();
        }
        Some(WordPlace {
            off,
            start,
            slot,
            generation: inner.generation,
        })
    }

    /// The staged bytes of `p`'s range (mutable: `&mut self` means no slice from `read` is
    /// alive), if `p` is still valid for this stage. The range becomes the most recent hint, as
    /// an ordinary read or write of it would make it: a run's bitmap and the blocks allocated
    /// after it form one range that grows by appends, and an append finds the range it extends
    /// among the hints (without this, a bulk B-tree load staged each new node as a range of its
    /// own: 1.5 s instead of 0.9 s for 1,000,000 inserts).
    #[inline]
    fn place_range(&mut self, p: WordPlace) -> Option<&mut [u8]> {
        let inner = self.inner.get_mut();
        if p.generation != inner.generation || p.generation == 0 {
            return None;
        }
        if p.slot & FEW_SLOT != 0 {
            let line = p.slot & !FEW_SLOT;
            if inner.spilled || line >= inner.few.used {
                return None; // (cannot happen: a spill or a clear changes the generation)
            }
            // SAFETY: a line of the arena in use; `&mut self` means no other slice into the
            // arena is alive, and the returned borrow keeps it so.
            return Some(unsafe {
                std::slice::from_raw_parts_mut(
                    inner.few.arena.base().add(line * LINE as usize),
                    LINE as usize,
                )
            });
        }
        let buf = inner.bufs.get(p.slot)?.as_ref()?;
        let first = inner.hints[0];
        if !(first.valid && first.slot == p.slot) {
            // (Most often it is the most recent already: a bulk allocation's object extended
            // it just before. A hint's bounds follow its range: `extend_top` updates them.)
            let end = p.start + buf.len();
            inner.remember(Hint {
                start: p.start,
                end,
                slot: p.slot,
                valid: true,
            });
        }
        let buf = inner.bufs.get(p.slot)?.as_ref()?;
        // SAFETY: a live buffer of `buf.len()` bytes owned by this stage; `&mut self` means no
        // other slice into it is alive (slices from `read` borrow `&self`), and the returned
        // borrow keeps it so.
        Some(unsafe { std::slice::from_raw_parts_mut(buf.base(), buf.len() as usize) })
    }

    /// The staged word at `p` (the same bytes a `read` of it returns; the line is staged
    /// already, so setting them adds nothing to the frame's size), or `None` if the place is
    /// stale: the caller then reads or writes it the ordinary way.
    #[inline]
    pub(crate) fn word_mut(&mut self, p: WordPlace) -> Option<&mut [u8; 8]> {
        let at = p.off.checked_sub(p.start)? as usize;
        self.place_range(p)?.get_mut(at..at + 8)?.try_into().ok()
    }

    /// The staged word at `p`, or `None` if the place is stale.
    #[cfg(test)]
    pub(crate) fn read_word(&mut self, p: WordPlace) -> Option<u64> {
        self.word_mut(p).map(|b| u64::from_le_bytes(*b))
    }

    /// Set the staged word at `p` to `v`; `false` (nothing changed) if the place is stale.
    #[cfg(test)]
    pub(crate) fn write_word(&mut self, p: WordPlace, v: u64) -> bool {
        self.word_mut(p).map(|b| *b = v.to_le_bytes()).is_some()
    }

    /// Whether any staged range overlaps `[off, off+len)` (widened to whole lines, as staging
    /// is).
    pub(crate) fn touches(&self, off: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        // SAFETY: as in `read`: Stage is !Sync and no method keeps a reference to `Inner` across
        // calls, so no `&mut Inner` exists now; this shared one ends with the call, which
        // changes nothing.
        let inner = unsafe { &*self.inner.get() };
        let (a, b) = (align_down(off), align_up(off + len));
        if !inner.areas.table.is_empty() && inner.areas.overlapping(a, b).next().is_some() {
            return true;
        }
        if !inner.spilled {
            return !matches!(inner.few.locate(a, b), Located::Clear(_));
        }
        // The recent ranges first: a bulk load asks about the leaf it has just read, and its
        // index of 100,000 ranges costs about 250 instructions to search.
        if inner
            .hints
            .iter()
            .any(|h| h.valid && h.start < b && a < h.end)
        {
            return true;
        }
        !matches!(inner.find(a, b), Ok(None))
    }

    /// Whether one of the recently used staged ranges (in the first tier, any of its ranges)
    /// holds all of `[off, off+len)` (widened to whole lines): a [`Self::write`] of it then
    /// stages no new byte.
    #[inline]
    pub(crate) fn holds_recent(&mut self, off: u64, len: u64) -> bool {
        let (a, b) = (align_down(off), align_up(off + len));
        let inner = self.inner.get_mut();
        if !inner.spilled {
            return matches!(inner.few.locate(a, b), Located::Inside(_));
        }
        inner
            .hints
            .iter()
            .any(|h| h.valid && h.start <= a && b <= h.end)
    }

    /// Stage the fresh block area `[start, end)` whole, in the areas tier: every later write
    /// or read inside it is found by a search over the areas, and its written lines are one
    /// range of [`Self::ranges`]. `origin` is where the heap's chunks begin. Refused (`false`:
    /// it is then staged as any other bytes) if it is not line-aligned, overlaps a staged range,
    /// does not lie in one chunk, or is too far from the other areas (`Areas::insert`).
    pub(crate) fn add_area(&mut self, start: u64, end: u64, origin: u64) -> bool {
        if start % LINE != 0 || end % LINE != 0 || start >= end || self.touches(start, end - start)
        {
            return false;
        }
        let inner = self.inner.get_mut();
        let Some(i) = inner.areas.insert(start, end, origin) else {
            return false;
        };
        // The ranges' iterator merges areas with the general tier only.
        if !inner.spilled {
            inner.spill();
        }
        let areas = &mut inner.areas;
        let lines = ((end - start) / LINE) as usize;
        let at = areas.used;
        match &mut areas.arena {
            Some(arena) => arena.grow(at + lines),
            None => areas.arena = Some(Buf::with_capacity(lines, lines.max(ARENA_MIN_LINES))),
        }
        areas.used = at + lines;
        areas.table[i].at = at * LINE as usize;
        true
    }

    /// The area holding all of `[off, off+len)`, if there is one, for [`Self::area_mut`].
    #[inline(always)]
    pub(crate) fn area_index(&mut self, off: u64, len: u64) -> Option<usize> {
        let areas = &mut self.inner.get_mut().areas;
        if areas.table.is_empty() || len == 0 {
            return None;
        }
        match areas.locate(align_down(off), align_up(off + len)) {
            AreaHit::Inside(i) => Some(i),
            _ => None,
        }
    }

    /// Stage `[off, off+len)` inside area `i` ([`Self::area_index`]) as fresh bytes: lines not
    /// written before are zero, not copies of the committed bytes.
    pub(crate) fn area_mut(&mut self, i: usize, off: u64, len: u64) -> &mut [u8] {
        let inner = self.inner.get_mut();
        debug_assert!(inner.trims.is_empty(), "a write after trim_unchanged");
        while let Some(b) = inner.retired.pop() {
            inner.recycle(b);
        }
        let a = align_down(off);
        let x = inner.areas.table[i];
        assert!(x.start <= a && off + len <= x.end, "inside area {i}");
        let p = inner.areas.write(i, a, align_up(off + len), None);
        // SAFETY: `[off, off+len)` lies inside the area's lines just staged, in the arena;
        // `&mut self` guarantees no other slice of it is alive, and the returned borrow keeps
        // it so.
        unsafe { std::slice::from_raw_parts_mut(p.add((off - a) as usize), len as usize) }
    }

    /// Bytes staged in areas ([`Self::add_area`]): fresh bytes that [`Self::write`]'s budget
    /// does not count.
    pub(crate) fn area_bytes(&mut self) -> u64 {
        let areas = &self.inner.get_mut().areas;
        areas.bytes + areas.evicted
    }

    /// Whether nothing is staged.
    pub(crate) fn is_empty(&mut self) -> bool {
        let inner = self.inner.get_mut();
        inner.areas.bytes == 0
            && match inner.spilled {
                false => inner.few.n == 0,
                true => inner.ranges.is_empty(),
            }
    }

    /// The transaction's view of `[off, off+len)`, or `None` if no staged byte lies in it (the
    /// caller then reads the committed bytes; a read that overlaps an area without lying inside
    /// it may also get `Some` of a composed view that holds only committed bytes). `fill(start, buf)` copies committed bytes; it
    /// must not call this stage (it runs while the stage's state is borrowed: the crate's only
    /// `fill` copies from the mapping).
    pub(crate) fn read(
        &self,
        off: u64,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Option<&[u8]> {
        if len == 0 {
            return None;
        }
        let (a, b) = (align_down(off), align_up(off + len));
        // SAFETY: Stage is !Sync and no method keeps a reference to `Inner` across calls, so this
        // is the only reference to `Inner` now (`fill` is the crate's own copy from the mapping,
        // which never calls back into the stage: see `read`'s contract). Slices handed out
        // earlier point into `Buf` allocations (the first tier's arena is one), not into
        // `Inner`, and those allocations are neither freed nor written here (a composed view is
        // a new buffer, retired until the next `&mut self` call).
        let inner = unsafe { &mut *self.inner.get() };
        if !inner.areas.table.is_empty() {
            match inner.areas.locate(a, b) {
                AreaHit::Inside(i) => {
                    let x = inner.areas.table[i];
                    if b <= x.lo || x.hi <= a {
                        return None;
                    }
                    let base = match x.lo <= a && b <= x.hi {
                        true => inner.areas.ptr(&x, off) as *const u8,
                        // SAFETY: the composed view of `[a, b)`, which holds `[off, off+len)`.
                        false => unsafe { inner.compose(a, b, fill).add((off - a) as usize) },
                    };
                    // SAFETY: `[off, off+len)` lies inside the area's written lines in the
                    // arena (or the composed view); the arena is only moved or written through
                    // `&mut self`, which cannot happen while the returned borrow lives.
                    return Some(unsafe { std::slice::from_raw_parts(base, len as usize) });
                }
                AreaHit::Partial => {
                    let base = inner.compose(a, b, fill);
                    // SAFETY: as above: the composed view of `[a, b)`, retired until the next
                    // `&mut self` call.
                    return Some(unsafe {
                        std::slice::from_raw_parts(base.add((off - a) as usize), len as usize)
                    });
                }
                AreaHit::Clear => {}
            }
        }
        if !inner.spilled {
            let (base, start) = match inner.few.locate(a, b) {
                Located::Clear(_) => return None,
                Located::Inside(i) => (inner.few.base(i) as *const u8, inner.few.range(i).0),
                Located::Partial => (inner.compose(a, b, fill), a),
            };
            // SAFETY: as below: `[off, off+len)` lies inside the first tier's range (or the
            // composed view of `[a, b)`), whose bytes change only through `&mut self`.
            return Some(unsafe {
                std::slice::from_raw_parts(base.add((off - start) as usize), len as usize)
            });
        }
        let hit = inner
            .hints
            .iter()
            .find(|h| h.valid && h.start <= a && b <= h.end)
            .copied();
        let (base, start) = match hit {
            Some(h) => (inner.buf(h.slot).base() as *const u8, h.start),
            None => match inner.find(a, b) {
                Ok(None) => return None,
                Ok(Some((s, slot))) => {
                    let end = s + inner.buf(slot).len();
                    inner.remember(Hint {
                        start: s,
                        end,
                        slot,
                        valid: true,
                    });
                    (inner.buf(slot).base() as *const u8, s)
                }
                Err(()) => (inner.compose(a, b, fill), a),
            },
        };
        // SAFETY: [off, off+len) lies inside this buffer (a staged range covering [a, b), or a
        // composed view of exactly [a, b)). The buffer lives until a `&mut self` call (which
        // cannot happen while the returned borrow of `self` lives): staged ranges are only
        // replaced by `write` (`&mut self`), composed views are retired until then, and
        // neither is written through any `&self` path.
        Some(unsafe { std::slice::from_raw_parts(base.add((off - start) as usize), len as usize) })
    }

    /// [`Self::read`], first asking the staged range that begins at `near`, if there is one:
    /// one hash lookup where the search would take the tree of ranges. The allocation check
    /// reads a run's bitmap word this way (the bitmap is staged as one range from the run's
    /// start): 199 instructions a read through the search, for a quarter of a bulk B-tree
    /// load's writes (callgrind, W4-load).
    pub(crate) fn read_near(
        &self,
        off: u64,
        len: u64,
        near: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Option<&[u8]> {
        // SAFETY: as in `read`: no `&mut Inner` exists now, and this shared one ends before
        // `read` takes its own.
        let inner = unsafe { &*self.inner.get() };
        let (a, b) = (align_down(off), align_up(off + len));
        if let Some(slot) = inner
            .ranges
            .starting_at(near)
            .filter(|_| len > 0 && near <= a)
        {
            let buf = inner.buf(slot);
            if b <= near + buf.len() {
                // SAFETY: `[off, off+len)` lies inside this staged range's buffer, which lives
                // and stays unwritten until a `&mut self` call (as in `read`). No area overlaps
                // a range of the general tier, so it holds the transaction's bytes.
                return Some(unsafe {
                    std::slice::from_raw_parts(buf.base().add((off - near) as usize), len as usize)
                });
            }
        }
        self.read(off, len, fill)
    }

    /// Stage `[off, off+len)` for writing and return it; bytes not written before are copied from
    /// the committed state by `fill`. If staging it would take `staged_bytes` past `max_bytes`,
    /// nothing changes and the error carries the total it would have reached (lines already
    /// staged cost nothing: rewriting them adds no byte to the frame).
    pub(crate) fn write(
        &mut self,
        off: u64,
        len: u64,
        max_bytes: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Result<&mut [u8], u64> {
        if len == 0 {
            return Ok(&mut []);
        }
        let inner = self.inner.get_mut();
        debug_assert!(inner.trims.is_empty(), "a write after trim_unchanged");
        // `&mut self`: no slice from `read` is alive any more.
        while let Some(b) = inner.retired.pop() {
            inner.recycle(b);
        }
        let (a, b) = (align_down(off), align_up(off + len));
        if !inner.areas.table.is_empty() {
            if let Some(p) = inner.write_in_areas(a, b, fill) {
                // SAFETY: `[off, off+len)` lies inside the area's lines just staged, in the
                // arena; `&mut self` guarantees no other slice of it is alive, and the
                // returned borrow keeps it so.
                return Ok(unsafe {
                    std::slice::from_raw_parts_mut(p.add((off - a) as usize), len as usize)
                });
            }
        }
        let max_bytes = max_bytes.saturating_add(inner.areas.evicted);
        if !inner.spilled {
            let staged = match inner.few.locate(a, b) {
                Located::Inside(i) => Some(i),
                Located::Clear(pos) => {
                    if inner.bytes + (b - a) > max_bytes {
                        return Err(inner.bytes + (b - a));
                    }
                    let i = inner.few.stage(pos, a, b, fill);
                    if i.is_some() {
                        inner.bytes += b - a;
                        inner.max_end = inner.max_end.max(b);
                    }
                    i
                }
                Located::Partial => None,
            };
            match staged {
                Some(i) => {
                    let start = inner.few.range(i).0;
                    // SAFETY: `[off, off+len)` lies inside the range's lines of the arena;
                    // `&mut self` guarantees no other slice of it is alive, and the returned
                    // borrow keeps it so.
                    return Ok(unsafe {
                        std::slice::from_raw_parts_mut(
                            inner.few.base(i).add((off - start) as usize),
                            len as usize,
                        )
                    });
                }
                None => inner.spill(),
            }
        }
        let (start, slot) = match inner
            .hints
            .iter()
            .position(|h| h.valid && h.start <= a && a <= h.end)
        {
            // Inside a recent range: no search.
            Some(i) if b <= inner.hints[i].end => {
                let h = inner.hints[i];
                inner.remember(h);
                (h.start, h.slot)
            }
            // Appending to the highest range: extend it in place (nothing staged lies above).
            Some(i) if a == inner.hints[i].end && a == inner.max_end => {
                let h = inner.hints[i];
                if inner.bytes + (b - a) > max_bytes {
                    return Err(inner.bytes + (b - a));
                }
                inner.extend_top(h, b, fill);
                (h.start, h.slot)
            }
            _ => match inner.find(a, b) {
                Ok(Some((s, slot))) => {
                    let end = s + inner.buf(slot).len();
                    inner.remember(Hint {
                        start: s,
                        end,
                        slot,
                        valid: true,
                    });
                    (s, slot)
                }
                found => {
                    let new = match found {
                        Ok(None) => b - a,
                        _ => inner.unstaged(a, b),
                    };
                    if inner.bytes + new > max_bytes {
                        return Err(inner.bytes + new);
                    }
                    inner.merge(a, b, fill)
                }
            },
        };
        let buf = inner.buf(slot);
        // SAFETY: in bounds as in `read`; `&mut self` guarantees no other slice of this buffer is
        // alive, and the returned borrow keeps it so.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(buf.base().add((off - start) as usize), len as usize)
        })
    }

    /// Every staged range in offset order; after [`Self::trim_unchanged`], only the part of
    /// each that differs from the committed bytes (a range that differs nowhere is left out).
    pub(crate) fn ranges(&mut self) -> impl Iterator<Item = (u64, &[u8])> {
        let inner: &Inner = self.inner.get_mut();
        Trimmed {
            each: inner.each(),
            trims: &inner.trims,
            i: 0,
        }
    }

    /// Have [`Self::trim_unchanged`] leave whole every staged range that overlaps
    /// `[off, off+len)` (staged already).
    pub(crate) fn keep_whole(&mut self, off: u64, len: u64) {
        self.inner.get_mut().whole.push((off, off + len));
    }

    /// Before the frame is built: cut each staged range of at most `max` bytes ([`TRIM_MAX`],
    /// unless a nested scope was rolled back: then every range, see `Tx::commit`) to the
    /// [`TRIM_UNIT`]-byte units from the first to the last that differ from the committed
    /// bytes (`committed(start, len)`, the writer's mapping; `None` leaves the range whole), so
    /// that [`Self::ranges`] yields only those. A small commit stages whole 64-byte lines (a bitmap word's, an object's, the
    /// root's), most of whose bytes it did not change: W2's frame was 280 bytes for a 64-byte
    /// object, and every log byte costs its share of the log's write-back and of the write
    /// faults that follow each barrier, besides the frame's copy and hash. Replay gives the
    /// same state either way: a byte left out holds, in the file after the frames before it
    /// are replayed, what the committed state holds (docs/ARCHITECTURE.md section 3, step 4).
    /// Returns whether any byte is left. No write may follow until [`Self::clear`].
    pub(crate) fn trim_unchanged<'m>(
        &mut self,
        max: u64,
        mut committed: impl FnMut(u64, usize) -> Option<&'m [u8]>,
    ) -> bool {
        let inner = self.inner.get_mut();
        let mut trims = std::mem::take(&mut inner.trims);
        trims.clear();
        let mut any = false;
        for (start, new) in inner.each() {
            let n = new.len();
            let whole = inner
                .whole
                .iter()
                .any(|&(a, b)| a < start + n as u64 && start < b);
            let old = match n as u64 <= max && n % LINE as usize == 0 && !whole {
                true => committed(start, n),
                false => None,
            };
            let trim = if let Some(old) = old {
                // The first and the last differing unit, a 64-byte line at a time (ranges are
                // whole lines): one mask of differing words per line, which the compiler makes a
                // few vector compares.
                let (mut lo, mut hi) = (n, 0);
                for (i, (a, b)) in new.chunks_exact(64).zip(old.chunks_exact(64)).enumerate() {
                    let m = differing_bytes(
                        a.try_into().expect("a line"),
                        b.try_into().expect("a line"),
                    );
                    if m != 0 {
                        // Whole units: those of the first and the last differing byte.
                        let first = m.trailing_zeros() as usize & !(TRIM_UNIT - 1);
                        let end = 64 - m.leading_zeros() as usize;
                        lo = lo.min(i * 64 + first);
                        hi = i * 64 + ((end + TRIM_UNIT - 1) & !(TRIM_UNIT - 1));
                    }
                }
                let lo = lo.min(hi);
                (lo as u32, hi as u32)
            } else {
                (0, n as u32)
            };
            any |= trim.0 < trim.1;
            trims.push(trim);
        }
        inner.trims = trims;
        any
    }
}

/// Bytes of saved copies a writer keeps allocated between transactions.
const NEST_KEEP_MAX: usize = 1 << 20;

/// What the open nested scopes of a transaction (`Tx::nested`) saved: while one is open, every
/// staged write (the user's, and the allocator's bitmaps, chunk entries and header) first saves
/// the whole lines of the transaction's view it replaces, once per scope, so that a rollback can
/// write them back, newest first. Empty between transactions.
#[derive(Default)]
pub(crate) struct Nest {
    /// `(offset, length, start in bytes)` of each saved range (whole lines), oldest first.
    pub(crate) saved: Vec<(u64, usize, usize)>,
    pub(crate) bytes: Vec<u8>,
    /// For each open scope, innermost last: the lines it needs to save no more, as disjoint
    /// `start -> end` intervals (lines it saved, and whole lines of space it allocated, which
    /// its rollback frees: their bytes need no restoring).
    covered: Vec<BTreeMap<u64, u64>>,
    /// The whole lines of space the open scopes allocated, `[start, end)`, oldest first: a
    /// rollback writes the committed bytes back over those the stage holds, so that the
    /// commit can leave them out (`Tx::close_scope`).
    pub(crate) allocs: Vec<(u64, u64)>,
}

impl Nest {
    /// A scope opens.
    pub(crate) fn open(&mut self) {
        self.covered.push(BTreeMap::new());
    }

    /// The innermost scope closes; `keep`: its lines count as covered for the enclosing
    /// scope too (what it saved holds the bytes as they were before it, which the enclosing
    /// scope had not changed, or had saved first). Returns whether no scope is open any more.
    pub(crate) fn close(&mut self, keep: bool) -> bool {
        let inner = self.covered.pop().unwrap_or_default();
        if keep {
            if let Some(outer) = self.covered.last_mut() {
                for (a, b) in inner {
                    cover(outer, a, b);
                }
            }
        }
        self.covered.is_empty()
    }

    /// Save the transaction's view of the lines of `[off, off+len)` that the innermost scope
    /// has not saved (or allocated) yet, before a write replaces them: each line is saved once
    /// per scope, so a scope that writes the same node a million times keeps one copy of it.
    /// `read(start, buf)` copies the view. Returns the number of entries saved. (Out of line
    /// and cold: the write paths of a transaction without scopes stay as they were.)
    #[cold]
    #[inline(never)]
    pub(crate) fn save(
        &mut self,
        off: u64,
        len: u64,
        read: &mut dyn FnMut(u64, &mut [u8]),
    ) -> usize {
        let Some(covered) = self.covered.last_mut() else {
            return 0;
        };
        let (a, b) = (align_down(off), align_up(off + len));
        let mut gaps = Vec::new();
        let mut p = a;
        if let Some((_, &e)) = covered.range(..=p).next_back() {
            p = p.max(e);
        }
        if p < b {
            for (&s, &e) in covered.range(p..b) {
                if s > p {
                    gaps.push((p, s));
                }
                p = p.max(e);
            }
            if p < b {
                gaps.push((p, b));
            }
        }
        for &(x, y) in &gaps {
            let at = self.bytes.len();
            let n = (y - x) as usize;
            self.bytes.resize(at + n, 0);
            read(x, &mut self.bytes[at..]);
            self.saved.push((x, n, at));
        }
        if !gaps.is_empty() {
            cover(covered, a, b);
        }
        gaps.len()
    }

    /// Forget the last `n` entries saved, and the lines they covered: the write they were saved
    /// for was refused and staged nothing, and writing them back on a rollback would stage
    /// lines past the log's budget (a review found such a rollback left a transaction that
    /// could no longer commit).
    pub(crate) fn unsave(&mut self, n: usize) {
        for _ in 0..n {
            let Some((x, len, at)) = self.saved.pop() else {
                return;
            };
            self.bytes.truncate(at);
            if let Some(covered) = self.covered.last_mut() {
                uncover(covered, x, x + len as u64);
            }
        }
    }

    /// The whole lines of `[off, off+len)`, space the innermost scope allocated: its rollback
    /// frees them, so writes there need not save what they replace. (Lines shared with a
    /// neighbour block are not covered: its bytes may need restoring.)
    pub(crate) fn allocated(&mut self, off: u64, len: u64) {
        let (a, b) = (align_up(off), align_down(off + len));
        if let (Some(covered), true) = (self.covered.last_mut(), a < b) {
            cover(covered, a, b);
            self.allocs.push((a, b));
        }
    }

    /// Forget everything saved (and give back a large buffer: a scope that rewrote a large
    /// object would otherwise keep its copy's memory for the handle's life).
    pub(crate) fn clear(&mut self) {
        self.saved.clear();
        self.bytes.clear();
        self.covered.clear();
        self.allocs.clear();
        if self.bytes.capacity() > NEST_KEEP_MAX {
            self.bytes = Vec::new();
        }
        if self.saved.capacity() > NEST_KEEP_MAX / 16 {
            self.saved = Vec::new();
        }
    }
}

/// Add `[a, b)` to the disjoint intervals `set`, merging what it overlaps or touches.
fn cover(set: &mut BTreeMap<u64, u64>, mut a: u64, mut b: u64) {
    if let Some((&s, &e)) = set.range(..=a).next_back() {
        if e >= a {
            a = s;
            b = b.max(e);
        }
    }
    let inside: Vec<(u64, u64)> = set.range(a..=b).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in inside {
        set.remove(&s);
        b = b.max(e);
    }
    set.insert(a, b);
}

/// Take `[a, b)` out of the disjoint intervals `set`.
fn uncover(set: &mut BTreeMap<u64, u64>, a: u64, b: u64) {
    let mut hit: Vec<(u64, u64)> = set.range(a..b).map(|(&s, &e)| (s, e)).collect();
    if let Some((&s, &e)) = set.range(..a).next_back() {
        if e > a {
            hit.push((s, e));
        }
    }
    for (s, e) in hit {
        set.remove(&s);
        if s < a {
            set.insert(s, a);
        }
        if e > b {
            set.insert(b, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope saves each line once, not the whole lines of space it allocated (but a line
    /// shared with a neighbour, yes), saves again what a refused write forgot, and an inner
    /// scope saves for itself; kept, its lines count for the outer scope.
    #[test]
    fn a_scope_saves_each_line_once() {
        let mut n = Nest::default();
        let mut read = |x: u64, b: &mut [u8]| committed(x, b);
        assert_eq!(n.save(100, 8, &mut read), 0, "no scope open: nothing saved");
        n.open();
        assert_eq!(n.save(100, 8, &mut read), 1); // line [64, 128)
        assert_eq!(n.save(100, 8, &mut read), 0);
        assert_eq!(n.save(60, 80, &mut read), 2); // [0, 64) and [128, 192)
        assert_eq!(
            n.saved.iter().map(|&(x, l, _)| (x, l)).collect::<Vec<_>>(),
            [(64, 64), (0, 64), (128, 64)]
        );
        let mut b = [0u8; 64];
        committed(0, &mut b);
        assert_eq!(&n.bytes[64..128], &b[..], "the view's bytes, whole lines");
        n.allocated(200, 300); // whole lines [256, 448) only
        assert_eq!(n.save(256, 192, &mut read), 0);
        assert_eq!(
            n.save(192, 8, &mut read),
            1,
            "a line shared with a neighbour block"
        );
        n.unsave(1);
        assert_eq!(n.saved.len(), 3);
        assert_eq!(n.save(192, 8, &mut read), 1, "forgotten, saved again");
        n.open();
        assert_eq!(
            n.save(100, 8, &mut read),
            1,
            "an inner scope saves for itself"
        );
        assert_eq!(n.save(600, 8, &mut read), 1);
        assert!(!n.close(true));
        assert_eq!(
            n.save(600, 8, &mut read),
            0,
            "kept: the outer scope covers its lines"
        );
        assert!(n.close(false));
        n.clear();
        assert!(n.saved.is_empty() && n.bytes.is_empty());
    }

    fn committed(start: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((start + i as u64) % 251) as u8;
        }
    }

    #[test]
    fn read_your_writes_with_partial_overlaps() {
        let mut st = Stage::default();
        assert!(st.read(100, 8, &mut committed).is_none());
        st.write(100, 8, u64::MAX, &mut committed)
            .unwrap()
            .copy_from_slice(&[1; 8]);
        st.write(300, 4, u64::MAX, &mut committed)
            .unwrap()
            .copy_from_slice(&[2; 4]);
        // A read spanning both staged ranges and committed bytes between them merges.
        let v = st.read(96, 212, &mut committed).unwrap().to_vec();
        assert_eq!(&v[4..12], &[1; 8]);
        assert_eq!(&v[204..208], &[2; 4]);
        assert_eq!(v[0], 96);
        assert_eq!(v[12], 108);
        // Earlier shared slices stay valid across a merging read.
        let a = st.read(100, 8, &mut committed).unwrap();
        let b = st.read(0, 400, &mut committed).unwrap();
        assert_eq!(a, &[1; 8]);
        assert_eq!(&b[300..304], &[2; 4]);
        // Reading never changes what is staged (and so what the frame logs).
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(64, 64), (256, 64)]);
        assert_eq!(st.staged_bytes(), 128);
        // Only lines not staged yet count against the budget; a refused write changes nothing.
        assert!(st.write(100, 8, 128, &mut committed).is_ok());
        assert_eq!(st.write(120, 150, 255, &mut committed).err(), Some(256));
        assert_eq!(st.write(1000, 1, 128, &mut committed).err(), Some(192));
        assert_eq!(st.staged_bytes(), 128);
        // A write spanning both merges them (with the committed bytes between).
        st.write(120, 150, u64::MAX, &mut committed).unwrap()[0] = 7;
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(64, 256)]);
        let v = st.read(64, 256, &mut committed).unwrap();
        assert_eq!((v[36], v[56], v[150], v[236]), (1, 7, 214, 2));
    }

    #[test]
    fn appends_extend_the_top_range_and_hints_agree_with_the_tree() {
        let mut st = Stage::default();
        // 100 appended 64-byte objects: one range, grown in place (with reallocations).
        for i in 0..100u64 {
            st.write(4096 + i * 64, 64, u64::MAX, &mut committed)
                .unwrap()
                .fill(i as u8);
            // Interleaved writes elsewhere (a bitmap word, a pointer), as an allocation makes.
            st.write(64, 8, u64::MAX, &mut committed).unwrap()[0] = i as u8;
        }
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(64, 64), (4096, 6400)]);
        assert_eq!(st.staged_bytes(), 6464);
        for i in 0..100u64 {
            assert_eq!(
                st.read(4096 + i * 64 + 5, 3, &mut committed).unwrap(),
                &[i as u8; 3]
            );
        }
        // An append past the budget is refused and changes nothing.
        assert_eq!(
            st.write(4096 + 6400, 64, 6464, &mut committed).err(),
            Some(6528)
        );
        assert_eq!(st.staged_bytes(), 6464);
        // Appending with a gap starts a new range; a write spanning both merges them, with the
        // committed bytes between.
        st.write(20_000, 1, u64::MAX, &mut committed).unwrap()[0] = 9;
        st.write(4000, 20_000, u64::MAX, &mut committed).unwrap();
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(64, 64), (3968, 20_032)]);
        let v = st.read(3968, 20_032, &mut committed).unwrap().to_vec();
        assert_eq!(v[0], (3968 % 251) as u8);
        assert_eq!(v[(4096 + 99 * 64 - 3968) as usize], 99);
        assert_eq!(v[(20_000 - 3968) as usize], 9);
        assert_eq!(v[(12_000 - 3968) as usize], (12_000 % 251) as u8);
    }

    /// A range that outgrows [`MAPPED_MIN`] moves from a heap buffer to a mapping and keeps
    /// growing there (by `mremap` on Linux): every byte survives each move, and the lines past
    /// the end are zero, as `extend_top` relies on (it is handed zeros for fresh space).
    #[test]
    fn a_range_grows_across_the_mapped_threshold() {
        let mut st = Stage::default();
        let base = 1 << 20;
        let n = 3 * MAPPED_MIN as u64 / LINE + 5; // three doublings past the threshold
        let mut zero_fill = |_: u64, b: &mut [u8]| {
            assert!(b.iter().all(|&x| x == 0), "fresh lines are zero");
        };
        for i in 0..n {
            let line = st
                .write(base + i * LINE, LINE, u64::MAX, &mut zero_fill)
                .unwrap();
            assert!(line.iter().all(|&x| x == 0), "line {i} was not zero");
            line.fill((i % 251) as u8);
        }
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(base, (n * LINE) as usize)]);
        let all = st.read(base, n * LINE, &mut committed).unwrap();
        for i in 0..n {
            let at = (i * LINE) as usize;
            assert_eq!(
                all[at..at + LINE as usize],
                [(i % 251) as u8; LINE as usize]
            );
        }
        // Cleared and reused: the mapped buffer is freed, the stage works as new.
        st.clear();
        st.write(base, 8, u64::MAX, &mut committed).unwrap()[0] = 1;
        assert_eq!(
            st.read(base, 2, &mut committed).unwrap(),
            &[1, ((base + 1) % 251) as u8]
        );
    }

    /// `Tx::stage_mut` stages writes into fresh space with a fill that does nothing, relying on
    /// this: every line a write adds to the stage is zero until the caller writes it, whether
    /// the range is new, extends the highest one (growing its buffer, or its mapping), merges
    /// others, or reuses a buffer a cleared stage kept.
    #[test]
    fn new_lines_are_zero_without_a_fill() {
        let mut st = Stage::default();
        let mut nothing = |_: u64, _: &mut [u8]| {};
        let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
        for round in 0..3u64 {
            let base = 1 << 20;
            // Dirty buffers first, so that reuse after `clear` is covered.
            for i in 0..40u64 {
                let w = st.write(base + i * 640, 64 * (1 + i % 9), u64::MAX, &mut nothing);
                w.unwrap().fill(0xa5);
            }
            st.clear();
            // A new range, then appends (the highest range grows, past 1 MiB: a mapping).
            let b = st.write(base, 40, u64::MAX, &mut nothing).unwrap();
            assert!(zero(b), "round {round}: a new range");
            b[..8].fill(1);
            let mut at = base + 64;
            while at < base + (3 << 20) {
                let b = st
                    .write(at, 64 * (1 + at % 5), u64::MAX, &mut nothing)
                    .unwrap();
                assert!(zero(b), "round {round}: an append at {at}");
                b.fill(2);
                at += b.len() as u64;
            }
            // A write joining two ranges with a gap between them: a merge.
            st.write(1 << 30, 64, u64::MAX, &mut nothing)
                .unwrap()
                .fill(3);
            st.write((1 << 30) + 256, 64, u64::MAX, &mut nothing)
                .unwrap()
                .fill(3);
            let m = st
                .write((1 << 30) + 64, 192, u64::MAX, &mut nothing)
                .unwrap();
            assert!(zero(m), "round {round}: the gap of a merge");
            st.clear();
        }
    }

    /// `trim_unchanged` keeps, of each range, the 16-byte units from the first to the last that differ
    /// from the committed bytes (a byte model decides which), leaves out ranges that differ
    /// nowhere, keeps ranges longer than `TRIM_MAX` whole, and `clear` forgets the trims.
    #[test]
    fn trimmed_ranges_hold_exactly_the_changed_units() {
        let mut st = Stage::default();
        let mut fill = |start: u64, buf: &mut [u8]| committed(start, buf);
        let old = |start: u64, len: usize| {
            let mut v = vec![0u8; len];
            committed(start, &mut v);
            v
        };
        let base = 1u64 << 20;
        // Range 1: one line, bytes 20..22 changed: the unit 16..32.
        st.write(base + 20, 2, u64::MAX, &mut fill).unwrap().fill(0);
        // Range 2: two lines, bytes 8 and 103 changed (across the line boundary): the units
        // 0..112.
        let r = st.write(base + 4096 + 8, 96, u64::MAX, &mut fill).unwrap();
        let keep = r.to_vec();
        r.copy_from_slice(&keep);
        r[0] ^= 1;
        r[95] ^= 0x80;
        // Range 3: written back unchanged.
        let at3 = base + 8192;
        let same = old(at3, 64);
        st.write(at3, 64, u64::MAX, &mut fill)
            .unwrap()
            .copy_from_slice(&same);
        // Range 4: longer than TRIM_MAX, one byte changed: kept whole.
        let at4 = base + 65536;
        st.write(at4 + 100, 1, u64::MAX, &mut fill).unwrap()[0] ^= 1;
        st.write(at4, TRIM_MAX + 64, u64::MAX, &mut fill).unwrap();
        let untrimmed: Vec<(u64, usize)> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(untrimmed.len(), 4);
        let olds: Vec<Vec<u8>> = untrimmed.iter().map(|&(s, n)| old(s, n)).collect();
        let mut i = 0;
        assert!(st.trim_unchanged(TRIM_MAX, |s, n| {
            assert_eq!((s, n), untrimmed[i]);
            i += 1;
            Some(&olds[i - 1][..])
        }));
        let got: Vec<(u64, Vec<u8>)> = st.ranges().map(|(s, r)| (s, r.to_vec())).collect();
        let starts: Vec<(u64, usize)> = got.iter().map(|(s, r)| (*s, r.len())).collect();
        assert_eq!(
            starts,
            vec![
                (base + 16, 16),
                (base + 4096, 112),
                (at4, (TRIM_MAX + 64) as usize)
            ]
        );
        // The trimmed bytes are the staged ones, and every byte left out is unchanged.
        assert_eq!(&got[0].1[4..6], &[0, 0]);
        assert_eq!(&got[0].1[..4], &old(base + 16, 4)[..]);
        assert_eq!(&got[1].1[..8], &old(base + 4096, 8)[..]);
        assert_eq!(got[1].1[8], old(base + 4096 + 8, 1)[0] ^ 1);
        st.clear();
        assert_eq!(st.ranges().count(), 0);
        // A stage whose every range is unchanged trims to nothing.
        st.write(at3, 64, u64::MAX, &mut fill)
            .unwrap()
            .copy_from_slice(&same);
        assert!(!st.trim_unchanged(TRIM_MAX, |s, n| Some(Box::leak(
            old(s, n).into_boxed_slice()
        ))));
        assert_eq!(st.ranges().count(), 0);
        // `None` from the committed bytes keeps the range whole.
        st.clear();
        st.write(at3, 64, u64::MAX, &mut fill)
            .unwrap()
            .copy_from_slice(&same);
        assert!(st.trim_unchanged(TRIM_MAX, |_, _| None));
        assert_eq!(
            st.ranges().map(|(s, r)| (s, r.len())).collect::<Vec<_>>(),
            vec![(at3, 64)]
        );
    }

    /// Both ways of finding the differing words agree, word by word, on lines that differ in
    /// random bytes (the portable one is what other targets run).
    #[test]
    fn line_compares_agree() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words = |m: u64| {
            (0..8)
                .filter(|k| (m >> (k * 8)) & 0xff != 0)
                .collect::<Vec<_>>()
        };
        for _ in 0..2000 {
            let a: [u8; 64] = std::array::from_fn(|_| next() as u8);
            let mut b = a;
            for _ in 0..(next() % 4) {
                b[(next() % 64) as usize] ^= 1 << (next() % 8);
            }
            let (fast, portable) = (differing_bytes(&a, &b), differing_words(&a, &b));
            assert_eq!(words(fast), words(portable));
            assert_eq!(fast == 0, a == b);
        }
    }

    /// A word place reads and writes the staged bytes a `read` shows, and stops matching once
    /// a merge may have moved its range's slot, after a clear, and on another stage.
    #[test]
    fn word_places_follow_the_staged_bytes_and_go_stale() {
        let mut st = Stage::default();
        st.write(128, 8, u64::MAX, &mut committed)
            .unwrap()
            .copy_from_slice(&7u64.to_le_bytes());
        assert!(st.word_place(4096).is_none(), "not staged: no place");
        let p = st.word_place(128).unwrap();
        assert_eq!(st.read_word(p), Some(7));
        assert!(st.write_word(p, 9));
        let seen = st.read(128, 8, &mut committed).unwrap();
        assert_eq!(u64::from_le_bytes(seen.try_into().unwrap()), 9);
        // Appending elsewhere (a new range, nothing merged) keeps the place.
        st.write(8192, 64, u64::MAX, &mut committed).unwrap();
        assert_eq!(st.read_word(p), Some(9));
        // Another stage never accepts it, even at the same offset and slot.
        let mut other = Stage::default();
        other
            .write(128, 8, u64::MAX, &mut committed)
            .unwrap()
            .fill(0);
        assert_eq!(other.read_word(p), None);
        assert!(!other.write_word(p, 1));
        assert_eq!(&other.read(128, 8, &mut committed).unwrap(), &[0; 8]);
        // A merge over the word's range: the old place is refused, a new one works.
        st.write(100, 200, u64::MAX, &mut committed).unwrap()[28] = 3;
        assert_eq!(st.read_word(p), None);
        assert!(!st.write_word(p, 1));
        let q = st.word_place(128).unwrap();
        assert_ne!(p, q);
        assert_eq!(
            st.read_word(q),
            Some(u64::from_le_bytes([3, 0, 0, 0, 0, 0, 0, 0]))
        );
        // A clear: refused, and nothing staged.
        st.clear();
        assert_eq!(st.read_word(q), None);
        assert!(st.read(128, 8, &mut committed).is_none());
    }

    /// Setting a word through its place keeps its range among the recent ones, as a staged
    /// write would: a run's bitmap and the blocks allocated after it stay one range that each
    /// allocation's object extends (a bulk B-tree load regressed by 60% when they did not).
    #[test]
    fn a_word_place_keeps_its_range_appendable() {
        let mut st = Stage::default();
        // Past the first tier first (this is about the general tier's hints): ranges below
        // the run, one more than the first tier holds.
        let far = 1u64 << 15;
        for k in 0..=FEW_RANGES as u64 {
            st.write(far + 4096 * k, 8, u64::MAX, &mut committed)
                .unwrap();
        }
        assert!(st.inner.get_mut().spilled);
        let run = 1 << 20;
        st.write(run, 8, u64::MAX, &mut committed).unwrap();
        let p = st.word_place(run).unwrap();
        for i in 1..6u64 {
            // Other (lower) ranges touched between allocations push the run out of the hints.
            for k in 0..HINTS as u64 {
                st.write(4096 * (k + 1), 8, u64::MAX, &mut committed)
                    .unwrap();
            }
            assert!(st.write_word(p, i));
            st.write(run + 64 * i, 64, u64::MAX, &mut committed)
                .unwrap()
                .fill(i as u8);
        }
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges.len(), HINTS + 1 + FEW_RANGES + 1, "{ranges:?}");
        assert_eq!(ranges[HINTS + FEW_RANGES + 1], (run, 6 * 64));
    }

    /// The first tier on its own: a refused write changes nothing, `touches`, `holds_recent`
    /// and word places (on any line of a range) answer from it, trims cut its ranges, a range
    /// that was not staged last grows by a range of its own beside it, and the move to the
    /// general tier joins touching ranges and makes word places stale.
    #[test]
    fn the_first_tier_answers_alone_and_moves_whole() {
        let mut st = Stage::default();
        let base = 1u64 << 20;
        assert!(st.is_empty());
        // Two ranges: three lines at `base`, one line at `base + 4096`.
        st.write(base + 10, 150, u64::MAX, &mut committed)
            .unwrap()
            .fill(1);
        st.write(base + 4096, 8, u64::MAX, &mut committed)
            .unwrap()
            .fill(2);
        assert!(!st.is_empty() && st.staged_bytes() == 256);
        // A write past the budget is refused with the total it would reach, and changes nothing.
        assert_eq!(
            st.write(base + 8192, 64, 300, &mut committed).err(),
            Some(320)
        );
        assert_eq!(st.staged_bytes(), 256);
        assert!(st.touches(base + 100, 1) && !st.touches(base + 192, 64));
        assert!(st.holds_recent(base, 192) && !st.holds_recent(base + 128, 128));
        // A word on the range's third line, set through its place.
        let p = st.word_place(base + 136).unwrap();
        assert!(st.write_word(p, 0x0102_0304_0506_0708));
        assert_eq!(st.read_word(p), Some(0x0102_0304_0506_0708));
        assert_eq!(
            st.read(base + 136, 8, &mut committed).unwrap(),
            &0x0102_0304_0506_0708u64.to_le_bytes()
        );
        // The range at `base` is not the last staged: a write just past its end is a range of
        // its own (the first tier keeps its lines where they are).
        st.write(base + 192, 64, u64::MAX, &mut committed)
            .unwrap()
            .fill(3);
        {
            let inner = st.inner.get_mut();
            assert!(!inner.spilled);
            assert_eq!(inner.few.n, 3);
        }
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(
            ranges,
            vec![(base, 192), (base + 192, 64), (base + 4096, 64)]
        );
        // The move to the general tier (a write across two ranges) joins the touching ones and
        // makes the word place stale; the bytes stay.
        st.write(base + 180, 40, u64::MAX, &mut committed).unwrap();
        assert!(st.inner.get_mut().spilled);
        assert_eq!(st.read_word(p), None);
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(base, 256), (base + 4096, 64)]);
        assert_eq!(
            st.read(base + 136, 8, &mut committed).unwrap(),
            &0x0102_0304_0506_0708u64.to_le_bytes()
        );
        assert_eq!(st.read(base + 250, 1, &mut committed).unwrap(), &[3]);

        // Trims over first-tier ranges, one of them kept whole.
        st.clear();
        let mut fill = |start: u64, buf: &mut [u8]| committed(start, buf);
        st.write(base + 20, 2, u64::MAX, &mut fill).unwrap().fill(0);
        st.write(base + 4096 + 70, 1, u64::MAX, &mut fill).unwrap()[0] ^= 1;
        st.write(base + 8192, 1, u64::MAX, &mut fill).unwrap()[0] ^= 1;
        st.keep_whole(base + 8192, 1);
        assert!(!st.inner.get_mut().spilled);
        let olds: Vec<Vec<u8>> = st
            .ranges()
            .map(|(s, r)| {
                let mut v = vec![0u8; r.len()];
                committed(s, &mut v);
                v
            })
            .collect();
        let mut i = 0;
        assert!(st.trim_unchanged(TRIM_MAX, |_, _| {
            i += 1;
            Some(&olds[i - 1][..])
        }));
        let got: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(
            got,
            vec![(base + 16, 16), (base + 4096 + 64, 16), (base + 8192, 64)]
        );
    }

    /// Random writes and reads against a byte-map model: every read sees the model, the ranges
    /// stay sorted, disjoint and line-aligned, and `bytes` is their total.
    #[test]
    fn random_writes_match_a_byte_model() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // One stage for every round, cleared in between as the writer's spare stage is: its
        // recycled buffers hold the last round's bytes, and no hint may survive a clear.
        // Odd rounds scatter writes over 256 KiB, so their ranges pass `SMALL_RANGES` and move
        // from the vector to the tree; even rounds stay in an 8 KiB window. Every fourth round
        // takes only a few steps, which the first tier mostly holds without spilling (its
        // reads then compose partial overlaps from the arena).
        let mut st = Stage::default();
        let mut most = [0usize; 2];
        let mut unspilled = 0;
        for round in 0..40 {
            let window = if round % 2 == 0 { 8192 } else { 1 << 18 };
            let steps = if round % 4 == 3 { 2 + round / 4 } else { 400 };
            st.clear();
            assert!(st.is_empty() && st.staged_bytes() == 0);
            let mut model = std::collections::HashMap::new();
            for step in 0..steps as u64 {
                // Mostly near the top (appends), sometimes anywhere in an 8 KiB window.
                let off = if next(3) == 0 {
                    next(window)
                } else {
                    4096 + step * 8 + next(64)
                };
                let len = 1 + next(150);
                if next(4) == 0 {
                    // A third of the reads begin where a staged range begins (the tree's hash
                    // of exact starts answers those once the ranges are many).
                    let (off, len) = match next(3) {
                        0 => {
                            let r: Vec<(u64, u64)> =
                                st.ranges().map(|(s, r)| (s, r.len() as u64)).collect();
                            match r.get(next(r.len().max(1) as u64) as usize) {
                                Some(&(s, l)) => (s, 1 + next(l + 100)),
                                None => (off, len),
                            }
                        }
                        _ => (off, len),
                    };
                    let got = st.read(off, len, &mut committed).map(|b| b.to_vec());
                    let want: Vec<u8> = (off..off + len)
                        .map(|o| *model.get(&o).unwrap_or(&((o % 251) as u8)))
                        .collect();
                    match got {
                        Some(g) => assert_eq!(g, want, "read {off}+{len}"),
                        None => assert!((off..off + len).all(|o| !model.contains_key(&o))),
                    }
                } else {
                    let b = st.write(off, len, u64::MAX, &mut committed).unwrap();
                    for (i, x) in b.iter_mut().enumerate() {
                        *x = (step as u8).wrapping_add(i as u8);
                        model.insert(off + i as u64, *x);
                    }
                }
            }
            let mut end = 0;
            let mut total = 0;
            let ranges: Vec<(u64, Vec<u8>)> = st.ranges().map(|(s, r)| (s, r.to_vec())).collect();
            most[round % 2] = most[round % 2].max(ranges.len());
            for (s, r) in &ranges {
                assert!(*s >= end && s % LINE == 0 && r.len() as u64 % LINE == 0);
                end = s + r.len() as u64;
                total += r.len() as u64;
                for (i, &x) in r.iter().enumerate() {
                    let o = s + i as u64;
                    assert_eq!(x, *model.get(&o).unwrap_or(&((o % 251) as u8)), "byte {o}");
                }
            }
            assert_eq!(st.staged_bytes(), total);
            let inner = st.inner.get_mut();
            if !inner.spilled {
                unspilled += 1;
                assert!(inner.ranges.is_empty() && inner.bufs.is_empty());
                let used: u32 = inner.few.idx[..inner.few.n].iter().map(|r| r.2).sum();
                assert_eq!(used as usize, inner.few.used, "the arena's lines in use");
            }
            let idx = &inner.ranges;
            if idx.is_tree() {
                let mut by_start: Vec<(u64, usize)> =
                    idx.starts.iter().map(|(&s, &slot)| (s, slot)).collect();
                by_start.sort_unstable();
                let tree: Vec<(u64, usize)> = idx.tree.iter().map(|(&s, &t)| (s, t)).collect();
                assert_eq!(by_start, tree, "the hash of starts holds the tree's ranges");
            } else {
                assert!(idx.starts.is_empty());
            }
            for &o in model.keys() {
                assert!(ranges
                    .iter()
                    .any(|(s, r)| *s <= o && o < s + r.len() as u64));
            }
        }
        assert!(
            most[1] > SMALL_RANGES,
            "scattered rounds used the tree: {most:?}"
        );
        assert!(
            unspilled >= 3,
            "rounds that ended in the first tier: {unspilled}"
        );
    }

    /// Areas against a byte model: writes and reads inside areas, across their bounds (which
    /// moves an area to the general tier) and outside them, areas added before and after other
    /// writes (refused where staged bytes lie), and the ranges of every tier in order.
    #[test]
    fn areas_match_a_byte_model() {
        const CH: u64 = 1 << CHUNK_SHIFT;
        let origin = 12288u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut st = Stage::default();
        let (mut inside, mut across, mut refused) = (0, 0, 0);
        for round in 0..30 {
            st.clear();
            assert!(st.is_empty() && st.inner.get_mut().areas.arena.is_none());
            let mut model = std::collections::HashMap::new();
            let mut areas: Vec<(u64, u64)> = Vec::new();
            let steps = 300 + round * 10;
            for step in 0..steps {
                if step % 100 == 0 {
                    for _ in 0..1 + next(2) {
                        let c = next(6);
                        let (a, b) = (origin + c * CH + 64 * (1 + next(64)), origin + (c + 1) * CH);
                        let touched = st.touches(a, b - a)
                            || areas.iter().any(|&(x, _)| (x - origin) / CH == c);
                        let added = st.add_area(a, b, origin);
                        assert_eq!(added, !touched, "area {a}..{b}");
                        if added {
                            areas.push((a, b));
                        } else {
                            refused += 1;
                        }
                    }
                }
                // Mostly inside an area, sometimes across its start or anywhere.
                let (off, len) =
                    match (next(5), areas.get(next(areas.len().max(1) as u64) as usize)) {
                        (0, _) | (_, None) => (next(origin + 6 * CH), 1 + next(300)),
                        (1, Some(&(a, _))) => (a - 1 - next(100), 2 + next(200)),
                        (_, Some(&(a, b))) => {
                            let len = 1 + next(200);
                            (a + next(b - a - len), len)
                        }
                    };
                if areas.iter().any(|&(a, b)| a <= off && off + len <= b) {
                    inside += 1;
                } else if areas.iter().any(|&(a, b)| off < b && a < off + len) {
                    across += 1;
                }
                if next(3) == 0 {
                    let got = st.read(off, len, &mut committed).map(|b| b.to_vec());
                    let want: Vec<u8> = (off..off + len)
                        .map(|o| *model.get(&o).unwrap_or(&((o % 251) as u8)))
                        .collect();
                    match got {
                        Some(g) => assert_eq!(g, want, "read {off}+{len}"),
                        None => assert!((off..off + len).all(|o| !model.contains_key(&o))),
                    }
                    let touched = (off..off + len).any(|o| model.contains_key(&o));
                    assert!(!touched || st.touches(off, len), "touches {off}+{len}");
                } else {
                    let b = st.write(off, len, u64::MAX, &mut committed).unwrap();
                    for (i, x) in b.iter_mut().enumerate() {
                        *x = (step as u8).wrapping_mul(7).wrapping_add(i as u8);
                        model.insert(off + i as u64, *x);
                    }
                }
            }
            let mut end = 0;
            let mut total = 0;
            for (s, r) in st.ranges() {
                assert!(
                    s >= end && s % LINE == 0 && r.len() as u64 % LINE == 0,
                    "range at {s}"
                );
                end = s + r.len() as u64;
                total += r.len() as u64;
                for (i, &x) in r.iter().enumerate() {
                    let o = s + i as u64;
                    assert_eq!(x, *model.get(&o).unwrap_or(&((o % 251) as u8)), "byte {o}");
                }
            }
            for &o in model.keys() {
                assert!(st.touches(o, 1), "a written byte {o} is staged");
            }
            let (tiers, in_areas) = (st.staged_bytes(), st.inner.get_mut().areas.bytes);
            assert_eq!(total, tiers + in_areas);
            assert!(!st.is_empty());
        }
        assert!(
            inside > 3000 && across > 300 && refused > 3,
            "{inside} {across} {refused}"
        );
    }

    /// Fresh writes into an area (`area_mut`) see zeros where nothing was written, including
    /// the lines between two writes, and the written lines are one range.
    #[test]
    fn an_area_is_staged_as_one_range_of_fresh_lines() {
        let mut st = Stage::default();
        let origin = 4096;
        let (a, b) = (origin + 128, origin + (1 << CHUNK_SHIFT));
        st.write(64, 8, u64::MAX, &mut committed).unwrap().fill(1);
        assert!(st.add_area(a, b, origin));
        assert!(!st.add_area(a, b, origin), "its chunk has an area already");
        assert!(!st.add_area(60, 200, origin), "not line-aligned");
        let i = st.area_index(a + 10, 20).unwrap();
        st.area_mut(i, a + 10, 20).fill(2);
        let i = st.area_index(a + 300, 10).unwrap();
        st.area_mut(i, a + 300, 10).fill(3);
        assert_eq!(st.area_index(a - 64, 100), None, "across the area's start");
        let v = st.read(a, 384, &mut committed).unwrap();
        assert_eq!(
            (v[9], v[10], v[29], v[30], v[100], v[300]),
            (0, 2, 2, 0, 0, 3)
        );
        // Outside the written lines, the committed bytes.
        assert!(st.read(a + 4096, 8, &mut committed).is_none());
        assert!(st.read(a + 320, 128, &mut committed).is_none());
        let v = st.read(a + 256, 128, &mut committed).unwrap();
        assert_eq!((v[0], v[44], v[63]), (0, 3, 0));
        assert_eq!(v[64], ((a + 320) % 251) as u8);
        let got: Vec<(u64, usize)> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(got, vec![(64, 64), (a, 320)]);
        assert_eq!(st.area_bytes(), 320);
        st.clear();
        assert!(st.is_empty() && st.ranges().next().is_none() && st.area_bytes() == 0);
    }
}
