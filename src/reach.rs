//! Reachability: which allocated blocks the pointers from the root reach, and which pointers
//! lead nowhere ([`Reader::reachability`], [`crate::Heap::reachability`]).
//!
//! Owns: the walk ([`Walk`]) that stored values drive through [`Stored::refs`] (the derive
//! writes `refs` from a struct's fields; `PPtr`, `PSlice`, arrays and the collections implement
//! it), and its report ([`Reachability`]). May not: change anything (it reads one snapshot
//! through a [`Reader`]); it holds no `unsafe`.
//!
//! The allocated blocks come from the snapshot's chunk tables and run bitmaps, as an open
//! rebuilds them; a block is *reached* when a pointer, a slice or a collection's own structure
//! (a vector's buffer, a map's directory, buckets and nodes, a byte string's bytes) lands inside
//! it. Every reached object is walked once per type, from an explicit work list (a list of a
//! million nodes needs no deep recursion). A block nothing reaches is a leak: space that no
//! transaction can free any more, since nothing points at it. A pointer that lands outside every
//! allocated block (freed space, metadata, past the heap) is *dangling*: it is reported with the
//! object holding it and not followed.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::Result;
use crate::pptr::{PPtr, PSlice};
use crate::reader::Reader;
use crate::stored::Stored;

/// A walk over what a root reaches, handed to [`Stored::refs`]. A type that implements
/// [`Stored`] by hand and holds heap pointers in a form the derive cannot see (a raw `u64`
/// offset, say) reports them here.
///
/// ```
/// use txheap::{PPtr, Stored, Walk};
///
/// /// A pointer kept as a bare offset (not a `PPtr`): `refs` says what it points at.
/// #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable)]
/// #[repr(C)]
/// struct RawLink { target: u64 }
///
/// impl Stored for RawLink {
///     const NAME: &'static str = "demo.RawLink";
///     const FIELDS: &'static [txheap::Field] = &[];
///     const ID: u64 = txheap::Field::struct_id("demo.RawLink", 8, 8, &[]);
///     fn refs(&self, walk: &mut Walk<'_, '_>) -> txheap::Result<()> {
///         walk.pointer(PPtr::<u64>::from_offset(self.target))
///     }
/// }
///
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("walk.heap"), txheap::Options::new())?;
/// heap.transaction(|tx| {
///     let target = tx.alloc(7u64)?.offset();
///     let root = tx.root::<RawLink>()?;
///     tx.get_mut(root)?.target = target;
///     Ok(())
/// })?;
/// let report = heap.reachability::<RawLink>()?;
/// assert_eq!((report.reached_blocks, report.leaked.len()), (1, 0));
/// # Ok::<(), txheap::Error>(())
/// ```
pub struct Walk<'a, 'h> {
    reader: &'a Reader<'h>,
    /// Allocated blocks `(offset, size)`, sorted by offset.
    blocks: Vec<(u64, u64)>,
    reached: Vec<bool>,
    /// Element ranges queued so far, per type and element phase (`offset % size`): disjoint
    /// `start -> end` byte ranges, so that every element is walked once as each type, however
    /// many pointers and slices reach it (a review found slices that overlap, node `i`'s
    /// children the nodes `i..n` of one block, walked element by element each: quadratic).
    spans: HashMap<(TypeId, u64), BTreeMap<u64, u64>>,
    /// Structures a value walks itself (a collection's tree or directory), by where they start
    /// and their type: walked once, however many handles reach them.
    structures: HashSet<(u64, TypeId)>,
    work: Vec<Item>,
    /// The object being walked (the root, or the start of a queued object).
    at: u64,
    /// The root area `[start, end)`.
    root_area: (u64, u64),
    dangling: Vec<Dangling>,
}

/// Walks the object at `offset` (`count` elements of a slice, 1 otherwise) as its type.
type WalkFn = for<'a, 'h> fn(&mut Walk<'a, 'h>, u64, u64) -> Result<()>;

struct Item {
    offset: u64,
    count: u64,
    walk: WalkFn,
}

fn walk_slice<T: Stored>(w: &mut Walk<'_, '_>, offset: u64, count: u64) -> Result<()> {
    let r = w.reader;
    for e in r.slice(PSlice::<T>::from_raw_parts(offset, count))? {
        e.refs(w)?;
    }
    Ok(())
}

impl<'a, 'h> Walk<'a, 'h> {
    /// The reader whose snapshot is walked (for `refs` implementations that read what a value
    /// points at, as the collections do).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("wr.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.root::<u64>().map(|_| ()))?;
    /// assert!(heap.reachability::<u64>()?.is_clean());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn reader(&self) -> &'a Reader<'h> {
        self.reader
    }

    /// The offset of the object being walked: the root's, or the start of the object a pointer
    /// led to. Errors and dangling pointers name it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("wat.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.root::<u64>().map(|_| ()))?;
    /// assert_eq!(heap.reachability::<u64>()?.allocated_blocks, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn at(&self) -> u64 {
        self.at
    }

    /// Run `f` with [`Self::at`] naming `holder`, the block whose values `f` walks in place
    /// (a map's bucket or node), then name the object before it again: a dangling pointer met
    /// there names the block that holds it, not the object holding the map's header (found by
    /// review).
    pub(crate) fn inside<R>(&mut self, holder: u64, f: impl FnOnce(&mut Self) -> R) -> R {
        let before = std::mem::replace(&mut self.at, holder);
        let r = f(self);
        self.at = before;
        r
    }

    /// The allocated block holding `[offset, offset + len)` (at least one byte), if any.
    fn block_of(&self, offset: u64, len: u64) -> Option<usize> {
        let i = self.blocks.partition_point(|&(s, _)| s <= offset);
        let (s, size) = *self.blocks.get(i.checked_sub(1)?)?;
        let end = offset.checked_add(len.max(1))?;
        (end <= s + size).then_some(i - 1)
    }

    /// Reach the block holding `[offset, offset + len)`; `false` (and a dangling pointer
    /// recorded) if there is none. The root area is no block: a pointer into it reaches
    /// nothing new (the walk starts there) and does not dangle.
    fn mark(&mut self, offset: u64, len: u64) -> bool {
        let (root, root_end) = self.root_area;
        if offset >= root && offset.checked_add(len).is_some_and(|e| e <= root_end) {
            return false;
        }
        match self.block_of(offset, len) {
            Some(i) => {
                self.reached[i] = true;
                true
            }
            None => {
                self.dangling.push(Dangling {
                    from: self.at,
                    to: offset,
                    len,
                });
                false
            }
        }
    }

    /// Reach the allocated block that holds `[offset, offset + len)` (one byte if `len` is
    /// 0) without walking its contents: for storage a value owns whose contents it walks
    /// itself (a collection's buffer, buckets or nodes). Returns whether it is an allocated
    /// block; a range inside none is recorded as dangling (and its contents should not be
    /// walked: they are free space or metadata).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("wb.heap"), txheap::Options::new())?;
    /// // PBytes reaches its bytes this way.
    /// heap.transaction(|tx| { let b = txheap::PBytes::new(tx, b"abc")?; *tx.root::<txheap::PBytes>().and_then(|r| tx.get_mut(r))? = b; Ok(()) })?;
    /// assert_eq!(heap.reachability::<txheap::PBytes>()?.reached_blocks, 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn block(&mut self, offset: u64, len: u64) -> bool {
        self.mark(offset, len)
    }

    /// Reach what `p` points at and walk it as a `T` (once per object and type); a null
    /// pointer reaches nothing.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("wp.heap"), txheap::Options::new())?;
    /// // A root that is a pointer: `PPtr::refs` calls `walk.pointer`.
    /// heap.transaction(|tx| { let p = tx.alloc(1u32)?; *tx.root::<txheap::PPtr<u32>>().and_then(|r| tx.get_mut(r))? = p; Ok(()) })?;
    /// assert_eq!(heap.reachability::<txheap::PPtr<u32>>()?.reached_blocks, 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn pointer<T: Stored>(&mut self, p: PPtr<T>) -> Result<()> {
        if p.is_null() {
            return Ok(());
        }
        let size = std::mem::size_of::<T>() as u64;
        if self.mark(p.offset(), size) && T::HOLDS_POINTERS {
            self.queue::<T>(p.offset(), 1);
        }
        Ok(())
    }

    /// Reach the elements `s` points at and walk each as a `T`; an empty slice reaches
    /// nothing.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("ws.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let s = tx.alloc_slice(&[1u16, 2, 3])?; *tx.root::<txheap::PSlice<u16>>().and_then(|r| tx.get_mut(r))? = s; Ok(()) })?;
    /// assert_eq!(heap.reachability::<txheap::PSlice<u16>>()?.reached_bytes, 16);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn slice<T: Stored>(&mut self, s: PSlice<T>) -> Result<()> {
        if s.is_empty() {
            // An empty slice at a real offset (`Tx::alloc_slice` of no elements, or
            // `realloc_slice` to 0) owns a block: reached, not leaked (found by review). At an
            // offset that is no block it reaches nothing, and does not dangle (nothing can be
            // read through it).
            if s.offset() != 0 {
                if let Some(i) = self.block_of(s.offset(), 1) {
                    self.reached[i] = true;
                }
            }
            return Ok(());
        }
        let Some(bytes) = s.len().checked_mul(std::mem::size_of::<T>() as u64) else {
            self.dangling.push(Dangling {
                from: self.at,
                to: s.offset(),
                len: u64::MAX,
            });
            return Ok(());
        };
        if self.mark(s.offset(), bytes) && T::HOLDS_POINTERS {
            // Every value of a zero-sized type is the same value: one element says all there
            // is (a review found a slice of 2^64-1 of them overflowing the queue's arithmetic,
            // and one of 2^40 walked for longer than anyone waits).
            let count = match std::mem::size_of::<T>() {
                0 => 1,
                _ => s.len(),
            };
            self.queue::<T>(s.offset(), count);
        }
        Ok(())
    }

    /// Queue the elements of the `count` `T`s at `offset` (inside one block: `mark` said so)
    /// that no pointer or slice queued as `T` before, as runs of whole elements.
    fn queue<T: Stored>(&mut self, offset: u64, count: u64) {
        let size = (std::mem::size_of::<T>() as u64).max(1);
        let end = offset + count * size; // (inside a block: no overflow)
        let set = self
            .spans
            .entry((TypeId::of::<T>(), offset % size))
            .or_default();
        // The parts of [offset, end) no range covers (element-aligned: every range of this
        // key starts and ends on the same phase).
        let mut gaps = Vec::new();
        let mut p = offset;
        if let Some((_, &e)) = set.range(..=offset).next_back() {
            p = p.max(e);
        }
        for (&s, &e) in set.range(offset..end) {
            if s > p {
                gaps.push((p, s));
            }
            p = p.max(e);
        }
        if p < end {
            gaps.push((p, end));
        }
        if gaps.is_empty() {
            return;
        }
        // Merge [offset, end) with every range it touches.
        let (mut lo, mut hi) = (offset, end);
        if let Some((&s, &e)) = set.range(..offset).next_back() {
            if e >= offset {
                lo = s;
                hi = hi.max(e);
            }
        }
        let touched: Vec<u64> = set.range(lo..=end).map(|(&s, _)| s).collect();
        for s in touched {
            hi = hi.max(set.remove(&s).unwrap_or(s));
        }
        set.insert(lo, hi);
        for (a, b) in gaps {
            self.work.push(Item {
                offset: a,
                count: (b - a) / size,
                walk: walk_slice::<T>,
            });
        }
    }

    /// Whether the structure starting at `offset` (a collection's tree or directory, walked by
    /// the value that holds it, of type `T`) is met for the first time: a structure reached
    /// through several handles (copies of one map's handle) is walked once.
    pub(crate) fn first_structure<T: 'static>(&mut self, offset: u64) -> bool {
        self.structures.insert((offset, TypeId::of::<T>()))
    }
}

/// A pointer that lands inside no allocated block.
///
/// ```
/// let d = txheap::Dangling { from: 8192, to: 1 << 40, len: 8 };
/// assert!(d.to > d.from);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dangling {
    /// The offset of the object holding the pointer (the root's, or the start of the object a
    /// pointer led to).
    pub from: u64,
    /// Where it points.
    pub to: u64,
    /// The bytes it claims there (`u64::MAX` for a slice whose byte length overflows).
    pub len: u64,
}

/// What [`Reader::reachability`] found: allocated blocks, those reached from the root, the
/// leaked ones (reached by nothing) and the dangling pointers.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("reach.heap"), txheap::Options::new())?;
/// heap.transaction(|tx| {
///     let kept = tx.alloc(1u64)?;
///     let root = tx.root::<txheap::PPtr<u64>>()?;
///     *tx.get_mut(root)? = kept;
///     tx.alloc(2u64)?; // allocated, and nothing points at it
///     Ok(())
/// })?;
/// let r = heap.reachability::<txheap::PPtr<u64>>()?;
/// assert_eq!((r.allocated_blocks, r.reached_blocks, r.leaked.len()), (2, 1, 1));
/// assert!(!r.is_clean());
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// The committed transaction whose state was walked.
    pub txid: u64,
    /// Allocated blocks (run blocks and large objects).
    pub allocated_blocks: u64,
    /// Their bytes (block sizes; a large object's recorded size).
    pub allocated_bytes: u64,
    /// Blocks something reached.
    pub reached_blocks: u64,
    /// Their bytes.
    pub reached_bytes: u64,
    /// Blocks nothing reached, `(offset, size)` by offset: leaks.
    pub leaked: Vec<(u64, u64)>,
    /// Pointers that land inside no allocated block, in the order the walk met them.
    pub dangling: Vec<Dangling>,
}

impl Reachability {
    /// Whether every allocated block is reached and no pointer dangles.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("rc.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.root::<u64>().map(|_| ()))?;
    /// assert!(heap.reachability::<u64>()?.is_clean());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty() && self.dangling.is_empty()
    }

    /// Bytes of the leaked blocks.
    ///
    /// ```
    /// let r = txheap::Reachability { txid: 1, allocated_blocks: 2, allocated_bytes: 48, reached_blocks: 1, reached_bytes: 16, leaked: vec![(9000, 32)], dangling: vec![] };
    /// assert_eq!(r.leaked_bytes(), 32);
    /// ```
    pub fn leaked_bytes(&self) -> u64 {
        self.leaked.iter().map(|&(_, n)| n).sum()
    }
}

impl Reader<'_> {
    /// Every allocated block in this reader's snapshot, as `(offset, size)` sorted by offset,
    /// read from the allocator's own tables (no pointer is followed, no type is needed): a
    /// small object's block has its size class's size (at least what was asked for), a large
    /// object its recorded size. The root area is not a block. What `PMDK`'s `POBJ_FIRST` /
    /// `POBJ_NEXT` walk gives: a way back to objects that nothing reaches any more, or to data
    /// whose types the program no longer knows. A damaged chunk table, or a run bitmap that
    /// marks blocks past its run's, is [`crate::Error::Corrupt`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("al.heap"), txheap::Options::new())?;
    /// let (a, b) = heap.transaction(|tx| Ok((tx.alloc(7u64)?, tx.alloc_slice_zeroed::<u8>(1 << 20)?)))?;
    /// let blocks = heap.read(|r| r.allocations())?;
    /// assert_eq!(blocks.len(), 2);
    /// assert!(blocks.iter().any(|&(at, size)| at == a.offset() && size >= 8));
    /// assert!(blocks.contains(&(b.offset(), 1 << 20)));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn allocations(&self) -> Result<Vec<(u64, u64)>> {
        let (_, header) = self.state();
        let read_err = std::cell::Cell::new(None);
        let read = |off: u64, buf: &mut [u8]| {
            if let Err(e) = self.copy_raw(off, buf) {
                buf.fill(0);
                read_err.set(Some(e));
            }
        };
        let blocks =
            crate::alloc::Allocator::allocations(self.chunk_area(), header.chunk_count, &read)?;
        if let Some(e) = read_err.take() {
            return Err(e);
        }
        Ok(blocks)
    }

    /// Walk everything the root of type `R` reaches in this reader's snapshot: every allocated
    /// block that no pointer, slice or collection reaches is reported as leaked, and every
    /// pointer that lands inside no allocated block as dangling (and not followed). The walk
    /// knows the pointers of `PPtr`, `PSlice`, arrays, the collections and every
    /// `#[derive(Stored)]` struct built from them; a type implementing [`Stored`] by hand
    /// reports its own through [`Stored::refs`] (one that does not would make its targets look
    /// leaked).
    ///
    /// Errors: those of [`Reader::root`] ([`crate::Error::NoRoot`], another root type), a damaged
    /// chunk table, and what reading a reached object or collection meets ([`crate::Error::Corrupt`]
    /// and the bounds errors, naming where).
    ///
    /// ```
    /// use txheap::{PPtr, Stored};
    ///
    /// #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
    /// #[repr(C)]
    /// struct Node { value: u64, next: PPtr<Node> }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("rr.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let root = tx.root::<PPtr<Node>>()?;
    ///     let second = tx.alloc(Node { value: 2, next: PPtr::null() })?;
    ///     let first = tx.alloc(Node { value: 1, next: second })?;
    ///     *tx.get_mut(root)? = first;
    ///     Ok(())
    /// })?;
    /// let r = heap.read(|r| r.reachability::<PPtr<Node>>())?;
    /// assert!(r.is_clean());
    /// assert_eq!(r.reached_blocks, 2);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn reachability<R: Stored>(&self) -> Result<Reachability> {
        let root = self.root::<R>()?;
        let (txid, _) = self.state();
        let blocks = self.allocations()?;
        let mut w = Walk {
            reader: self,
            reached: vec![false; blocks.len()],
            blocks,
            spans: HashMap::new(),
            structures: HashSet::new(),
            work: Vec::new(),
            at: root.offset(),
            root_area: (root.offset(), root.offset() + crate::ROOT_LEN_MAX),
            dangling: Vec::new(),
        };
        self.get(root)?.refs(&mut w)?;
        while let Some(item) = w.work.pop() {
            w.at = item.offset;
            (item.walk)(&mut w, item.offset, item.count)?;
        }
        let mut r = Reachability {
            txid,
            allocated_blocks: w.blocks.len() as u64,
            allocated_bytes: 0,
            reached_blocks: 0,
            reached_bytes: 0,
            leaked: Vec::new(),
            dangling: w.dangling,
        };
        for (&(at, size), &reached) in w.blocks.iter().zip(&w.reached) {
            r.allocated_bytes += size;
            if reached {
                r.reached_blocks += 1;
                r.reached_bytes += size;
            } else {
                r.leaked.push((at, size));
            }
        }
        Ok(r)
    }
}
