//! `PBTreeMap<K, V>`: an ordered map, a B+ tree of page-sized nodes.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::marker::PhantomData;
use std::ops::Bound;

use super::{check_id, corrupt, record_id, Element, View};
use crate::error::{Error, Result};
use crate::limits::ALIGN_MAX;
use crate::pptr::{PPtr, PSlice};
use crate::stored::{Field, Stored};
use crate::tx::{Tx, Writable};

/// A node pointer of 0 (a child or the root) is damage: `Corrupt`, as every other bad node
/// (a read through it said `NullPointer`, which blames the caller and names no node: found by
/// review).
#[inline]
fn null_node(at: u64, level: u64) -> Result<()> {
    if at == 0 {
        return Err(corrupt(
            0,
            format!("PBTreeMap: a null pointer where a node of level {level} belongs"),
        ));
    }
    Ok(())
}

/// Bytes of a node unless eight entries need more. Measured (benches/README.md, "PBTreeMap
/// node size"): with 8-byte keys and 64-byte values, lookups in a warm map of a million entries
/// cost the same from 1 KiB to 16 KiB nodes (0.52-0.54 s per million), while a million random
/// inserts in one transaction took 0.91 s with 1 KiB nodes, 1.02 s with 2 KiB, 1.04 s with
/// 4 KiB and 1.53 s with 16 KiB (each insert then shifted half a node, and each node a
/// transaction changes is staged whole). A 1 KiB leaf holds 13 such entries (14 before leaves
/// had a slot table, which spares an insert shifting values). Internal nodes are
/// [`INNER_BYTES`]: with 1 KiB internal nodes too, a million entries were four levels under the
/// leaves' parent and lookups and loads both took about 10% longer (interleaved medians).
const NODE_BYTES: u64 = 1024;
/// Bytes of an internal node unless eight keys need more: 4 KiB, 255 children with 8-byte
/// keys, so a million entries in 1 KiB leaves are three levels (four with 1 KiB internal
/// nodes: one cache miss more per lookup; W4-get, benches/README.md).
const INNER_BYTES: u64 = 4096;
/// Bytes of a node's header: level (0 for leaves), entry count and, in a leaf, its layout.
const NODE_HEADER: u64 = 16;
/// The layout tag every leaf carries (`NodeHeader::layout`): 2, leaves with a slot table
/// (values stay where they were put; a table of `u16` slot numbers in key order finds them).
/// Leaves before it (tag 0) kept their values in key order and are refused, never misread.
const LEAF_LAYOUT: u32 = 2;
/// Deepest tree accepted (a taller one is damage: 2^64 entries need fewer levels).
const HEIGHT_MAX: u64 = 64;

/// A node's header.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct NodeHeader {
    /// 0 for a leaf; an internal node is one above its children.
    level: u32,
    /// Entries in a leaf; keys in an internal node (which has one child more).
    count: u32,
    /// [`LEAF_LAYOUT`] in a leaf, 0 in an internal node.
    layout: u32,
    _reserved: u32,
}

const fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// An ordered map from `K` to `V` in the heap: a B+ tree whose leaves hold the entries in key
/// order and whose internal nodes hold separator keys. The header (40 bytes) is an empty map
/// when zero. Keys are plain data compared by `Ord` (integers, arrays, derived structs) or
/// byte strings ([`crate::PBytes`], [`crate::PString`]) compared lexicographically.
///
/// Lookups read nodes in place (no copy, no decoding); `range` iterates in both directions.
/// Removal frees a node when it empties and merges a node left with fewer than a quarter of
/// its capacity into a sibling when the two fit in three quarters of one, or else shares the
/// pair's entries evenly between them, so every node but the root stays at least a quarter
/// full (a node that a txheap before this rule left underfull stays so until a removal
/// reaches it) and a map that loses most of its keys gives its nodes back; the height shrinks
/// when the root has one child. [`PPtr::stats`] shows the tree's shape and fill.
///
/// ```
/// use txheap::{PBTreeMap, PPtr};
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("btree.heap"), txheap::Options::new())?;
/// let m: PPtr<PBTreeMap<u64, [u8; 4]>> = heap.transaction(|tx| {
///     let m = PBTreeMap::new(tx)?;
///     for k in [5u64, 1, 9, 3] { m.insert(tx, &k, b"abcd")?; }
///     Ok(m)
/// })?;
/// heap.read(|r| {
///     assert_eq!(m.get(r, &3)?, Some(b"abcd"));
///     let keys: Vec<u64> = m.range(r, 2..)?.map(|e| e.map(|(k, _)| *k)).collect::<Result<_, _>>()?;
///     assert_eq!(keys, [3, 5, 9]);
///     assert_eq!(m.last(r)?.map(|(k, _)| *k), Some(9));
///     m.check(r)
/// })?;
/// # Ok::<(), txheap::Error>(())
/// ```
#[repr(C)]
pub struct PBTreeMap<K, V> {
    root: u64,
    len: u64,
    height: u64,
    key_id: u64,
    val_id: u64,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for PBTreeMap<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for PBTreeMap<K, V> {}
// SAFETY: repr(C) of five u64 and a ZST: no padding; all-zero is the empty map.
unsafe impl<K, V> bytemuck::Zeroable for PBTreeMap<K, V> {}
// SAFETY: as above; every bit pattern is a value (every operation checks what it reads).
unsafe impl<K: 'static, V: 'static> bytemuck::Pod for PBTreeMap<K, V> {}

impl<K, V> std::fmt::Debug for PBTreeMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PBTreeMap")
            .field("root", &self.root)
            .field("len", &self.len)
            .field("height", &self.height)
            .finish()
    }
}

impl<K: Stored, V: Stored> Stored for PBTreeMap<K, V> {
    const NAME: &'static str = "PBTreeMap";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = Field::struct_id(
        "PBTreeMap",
        40,
        8,
        &[Field::element("K", K::ID), Field::element("V", V::ID)],
    );
    const SHAPE: u64 = Field::struct_id(
        "PBTreeMap",
        40,
        8,
        &[Field::element("K", K::SHAPE), Field::element("V", V::SHAPE)],
    );
    fn display_name() -> String {
        format!("PBTreeMap<{}, {}>", K::display_name(), V::display_name())
    }

    /// The nodes, and what each key (separator copies included) and value reach.
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> Result<()> {
        let h = *self;
        check_id::<K, _>(walk.reader(), h.key_id, walk.at(), "key")?;
        check_id::<V, _>(walk.reader(), h.val_id, walk.at(), "value")?;
        if h.height == 0 {
            return Ok(());
        }
        if h.height > HEIGHT_MAX {
            return Err(corrupt(
                walk.at(),
                format!("PBTreeMap header: height {}", h.height),
            ));
        }
        // A tree reached through several copies of its handle is walked once (a review found
        // each copy walking it again: handles times nodes).
        if !walk.first_structure::<Self>(h.root) {
            return Ok(());
        }
        let r = walk.reader();
        let g = Geo::of::<K, V>();
        let mut seen = HashSet::new();
        let mut stack = vec![(h.root, h.height - 1)];
        while let Some((at, level)) = stack.pop() {
            null_node(at, level)?;
            if !seen.insert(at) {
                return Err(corrupt(at, "B-tree node reached twice"));
            }
            // (A node another tree walked already, which only a damaged heap shares, is not
            // walked again.)
            if at != h.root && !walk.first_structure::<Self>(at) {
                continue;
            }
            if !walk.block(at, g.bytes(level)) {
                continue;
            }
            let nh = *r.get(PPtr::<NodeHeader>::from_offset(at))?;
            let n = g.check(at, nh, level)?;
            walk.inside(at, |walk| {
                if K::HOLDS_POINTERS {
                    let keys = PSlice::<K>::from_raw_parts(at + g.keys_at(level), n.count);
                    for k in r.slice(keys)? {
                        k.refs(walk)?;
                    }
                }
                if level == 0 && V::HOLDS_POINTERS {
                    for v in r.slice(PSlice::<V>::from_raw_parts(at + g.vals_at, n.count))? {
                        v.refs(walk)?;
                    }
                }
                Ok::<(), crate::Error>(())
            })?;
            if level != 0 {
                let children = PSlice::<u64>::from_raw_parts(at + g.children_at, n.count + 1);
                stack.extend(r.slice(children)?.iter().map(|&c| (c, level - 1)));
            }
        }
        Ok(())
    }
}

impl<K: Stored, V: Stored> Element for PBTreeMap<K, V> {
    plain_element_body!();
}

impl<K, V> PBTreeMap<K, V> {
    /// Number of entries (from a header read with `get`).
    ///
    /// ```
    /// assert_eq!(<txheap::PBTreeMap<u64, u64> as txheap::bytemuck::Zeroable>::zeroed().len(), 0);
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the map is empty.
    ///
    /// ```
    /// assert!(<txheap::PBTreeMap<u64, u64> as txheap::bytemuck::Zeroable>::zeroed().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Node geometry for one key and value type.
#[derive(Clone, Copy)]
struct Geo {
    /// Bytes of a leaf and of an internal node.
    leaf_bytes: u64,
    inner_bytes: u64,
    /// Entries per leaf, keys per internal node.
    leaf_cap: u64,
    inner_cap: u64,
    /// A leaf's slot table (`u16` per entry, in key order), keys and values.
    slots_at: u64,
    leaf_keys_at: u64,
    vals_at: u64,
    /// An internal node's keys and children.
    inner_keys_at: u64,
    children_at: u64,
}

/// Insert `x` at the front of `s`, shifting the rest up by one (the last element falls off: the
/// caller's slice ends at the array's new last element).
fn shift_in<T: Copy>(s: &mut [T], x: T) {
    let n = s.len();
    s.copy_within(0..n - 1, 1);
    s[0] = x;
}

/// A copy of `s` with `x` inserted at `i`, allocated once at its final length.
fn with_inserted<T: Copy>(s: &[T], i: usize, x: T) -> Vec<T> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(&s[..i]);
    v.push(x);
    v.extend_from_slice(&s[i..]);
    v
}

/// Drop the front of `s`, shifting the rest down by one (the last element stays, stale, past
/// the node's new count).
fn shift_out<T: Copy>(s: &mut [T]) {
    let n = s.len();
    s.copy_within(1..n, 0);
}

/// One edit of a node (`edit` chooses): the whole node staged, or only the ranges the edit asks
/// for. Either way the same bytes change.
enum NodeEdit<'a, 'h> {
    Whole {
        at: u64,
        b: &'a mut [u8],
    },
    /// `w`: the whole node, checked writable once for the edit's several writes.
    Parts {
        at: u64,
        tx: &'a mut Tx<'h>,
        w: Writable,
    },
}

impl NodeEdit<'_, '_> {
    /// Elements `from..to` of the `T` array at byte `part` of the node, for writing.
    #[inline]
    fn part<T: bytemuck::Pod>(&mut self, part: u64, from: usize, to: usize) -> Result<&mut [T]> {
        let first = part + from as u64 * std::mem::size_of::<T>() as u64;
        let count = (to - from) as u64;
        match self {
            NodeEdit::Whole { at, b } => {
                let end = first + count * std::mem::size_of::<T>() as u64;
                let bytes = &mut b[first as usize..end as usize];
                crate::pptr::cast_slice_mut(bytes, PSlice::<T>::from_raw_parts(*at + first, count))
            }
            NodeEdit::Parts { at, tx, w } => {
                tx.slice_mut_in(w, PSlice::<T>::from_raw_parts(*at + first, count))
            }
        }
    }

    /// Set the node's count.
    #[inline]
    fn set_count(&mut self, count: u64) -> Result<()> {
        let c = (count as u32).to_ne_bytes();
        match self {
            NodeEdit::Whole { b, .. } => b[4..8].copy_from_slice(&c),
            NodeEdit::Parts { at, tx, w } => tx
                .slice_mut_in(w, PSlice::<u8>::from_raw_parts(*at + 4, 4))?
                .copy_from_slice(&c),
        }
        Ok(())
    }
}

/// Where a leaf of `cap` entries keeps its keys: after the header and the slot table.
const fn leaf_keys_at(cap: u64, ka: u64) -> u64 {
    align_up(NODE_HEADER + cap * SLOT, ka)
}

/// Bytes of a slot number.
const SLOT: u64 = 2;

/// Entries per leaf and keys per internal node of `bytes`-byte nodes.
const fn fits(bytes: u64, ks: u64, vs: u64, ka: u64, va: u64) -> (u64, u64) {
    let mut leaf_cap = (bytes - NODE_HEADER) / (ks + vs + SLOT);
    while leaf_cap > 0
        && align_up(leaf_keys_at(leaf_cap, ka) + leaf_cap * ks, va) + leaf_cap * vs > bytes
    {
        leaf_cap -= 1;
    }
    let keys_at = align_up(NODE_HEADER, ka);
    let mut inner_cap = (bytes - keys_at - 8) / (ks + 8);
    while inner_cap > 0 && align_up(keys_at + inner_cap * ks, 8) + (inner_cap + 1) * 8 > bytes {
        inner_cap -= 1;
    }
    (leaf_cap, inner_cap)
}

impl Geo {
    const fn of<K, V>() -> Geo {
        let ks = std::mem::size_of::<K>() as u64;
        let vs = std::mem::size_of::<V>() as u64;
        let ka = std::mem::align_of::<K>() as u64;
        let va = std::mem::align_of::<V>() as u64;
        let mut leaf_bytes = NODE_BYTES;
        while fits(leaf_bytes, ks, vs, ka, va).0 < 8 {
            leaf_bytes *= 2;
        }
        let mut inner_bytes = INNER_BYTES;
        while fits(inner_bytes, ks, vs, ka, va).1 < 8 {
            inner_bytes *= 2;
        }
        let mut leaf_cap = fits(leaf_bytes, ks, vs, ka, va).0;
        let mut inner_cap = fits(inner_bytes, ks, vs, ka, va).1;
        if leaf_cap > u16::MAX as u64 {
            leaf_cap = u16::MAX as u64;
        }
        if inner_cap > u32::MAX as u64 {
            inner_cap = u32::MAX as u64;
        }
        let keys_at = align_up(NODE_HEADER, ka);
        let leaf_keys = leaf_keys_at(leaf_cap, ka);
        // Values start on a cache line when that costs no entry (8-byte keys with 64-byte
        // values: each value is then one line to read and to stage, not two).
        let mut vals_at = align_up(leaf_keys + leaf_cap * ks, va);
        if align_up(vals_at, 64) + leaf_cap * vs <= leaf_bytes {
            vals_at = align_up(vals_at, 64);
        }
        Geo {
            leaf_bytes,
            inner_bytes,
            leaf_cap,
            inner_cap,
            slots_at: NODE_HEADER,
            leaf_keys_at: leaf_keys,
            vals_at,
            inner_keys_at: keys_at,
            children_at: align_up(keys_at + inner_cap * ks, 8),
        }
    }

    /// Check a node header read at `at` against the level expected there.
    #[inline]
    fn check(&self, at: u64, nh: NodeHeader, level: u64) -> Result<Node> {
        let cap = if level == 0 {
            self.leaf_cap
        } else {
            self.inner_cap
        };
        let layout = if level == 0 { LEAF_LAYOUT } else { 0 };
        if nh.level as u64 != level || nh.count as u64 > cap || nh.layout != layout {
            return Err(bad_node(at, nh, level, cap));
        }
        Ok(Node {
            at,
            level: nh.level,
            count: nh.count as u64,
        })
    }

    /// Where a node at `level` keeps its keys.
    #[inline]
    const fn keys_at(&self, level: u64) -> u64 {
        if level == 0 {
            self.leaf_keys_at
        } else {
            self.inner_keys_at
        }
    }

    /// Bytes of a node at `level`.
    const fn bytes(&self, level: u64) -> u64 {
        if level == 0 {
            self.leaf_bytes
        } else {
            self.inner_bytes
        }
    }
}

/// The error of a node header that [`Geo::check`] refuses (out of line: every node read checks).
#[cold]
#[inline(never)]
fn bad_node(at: u64, nh: NodeHeader, level: u64, cap: u64) -> Error {
    if nh.level == 0 && level == 0 && nh.layout == 0 {
        return corrupt(
            at,
            "B-tree leaf without its slot table (layout tag 0, where this version writes and \
             reads 2): written by a txheap before leaves had one (values in key order), or damaged",
        );
    }
    corrupt(
        at,
        format!(
            "B-tree node: level {} count {} layout {} where level {level} and at most {cap} entries were expected",
            nh.level, nh.count, nh.layout
        ),
    )
}

/// A node read in place: its offset and header.
#[derive(Clone, Copy)]
struct Node {
    at: u64,
    level: u32,
    count: u64,
}

/// Internal nodes a descent keeps without allocating: trees of up to this many levels above
/// the leaves (every tree of fewer than billions of entries) keep their trail on the stack.
const TRAIL_INLINE: usize = 8;

/// The internal nodes a descent passed, each with the child index taken, root first: the first
/// [`TRAIL_INLINE`] in place, any more in a vector (a `Vec` per insert was a `malloc` and a
/// `free`, about 200 of the 4,300 instructions of a bulk-load insert).
struct Trail {
    near: [(Node, u64); TRAIL_INLINE],
    len: usize,
    far: Vec<(Node, u64)>,
}

impl Trail {
    fn new() -> Trail {
        let none = Node {
            at: 0,
            level: 0,
            count: 0,
        };
        Trail {
            near: [(none, 0); TRAIL_INLINE],
            len: 0,
            far: Vec::new(),
        }
    }

    fn push(&mut self, step: (Node, u64)) {
        if self.len < TRAIL_INLINE {
            self.near[self.len] = step;
        } else {
            self.far.push(step);
        }
        self.len += 1;
    }

    /// The steps from the leaf's parent up to the root.
    fn upward(&self) -> impl Iterator<Item = &(Node, u64)> {
        self.near[..self.len.min(TRAIL_INLINE)]
            .iter()
            .chain(self.far.iter())
            .rev()
    }
}

/// Outcome of a descent: the internal nodes passed (node, child index taken) and the leaf.
struct Path {
    inner: Trail,
    leaf: Node,
    /// Where the key is in the leaf (`Ok`) or would go (`Err`).
    pos: std::result::Result<usize, usize>,
}

/// A split that the parent must take: the separator (smallest key of the new right node) and
/// the right node's offset.
type Split<K> = Option<(K, u64)>;

/// What a removal leaves for the parent of the node it changed.
enum Mend {
    /// Nothing: the node holds at least a quarter of its capacity, or was mended (its pair
    /// shared entries) without changing its parent's count, or is an only child (of a root
    /// about to give way to it).
    Done,
    /// The node emptied and was freed: the parent drops its child pointer and a key.
    Emptied,
    /// The node (with its new count) holds fewer entries than a quarter of its capacity.
    Under(Node),
}

impl Mend {
    fn below_min(g: &Geo, n: Node) -> Mend {
        let cap = if n.level == 0 {
            g.leaf_cap
        } else {
            g.inner_cap
        };
        if n.count < cap / 4 {
            Mend::Under(n)
        } else {
            Mend::Done
        }
    }
}

/// Search `keys` for `q`: `Ok(i)` where `keys[i]` equals it, `Err(i)` where it would go.
///
/// With branches, on purpose: a branch-free search (a conditional move per step) was slower on
/// W4-get (1,000,000 random lookups, median of 10: 0.72 s against 0.67 s), because each step's
/// load then waits for the previous one, where a predicted branch lets the next load start.
fn search<'v, K: Element, W: View>(
    keys: &'v [K],
    q: &K::Input,
    view: &'v W,
) -> Result<std::result::Result<usize, usize>>
where
    K::Input: Ord,
{
    let (mut lo, mut hi) = (0usize, keys.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match K::load(&keys[mid], view)?.cmp(q) {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Ok(Ok(mid)),
        }
    }
    Ok(Err(lo))
}

impl<K, V> PBTreeMap<K, V>
where
    K: Element,
    V: Element,
    K::Input: Ord + ToOwned,
    V::Input: ToOwned,
{
    /// Allocate an empty map of its own; the pointer can be stored anywhere.
    /// `Error::UnsupportedAlignment` if `K` or `V` is aligned above 64 bytes (the heap's limit), here and from
    /// every operation on a zeroed handle.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btn.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| txheap::PBTreeMap::<u32, u32>::new(tx))?;
    /// assert_eq!(heap.read(|r| m.len(r))?, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn new(tx: &mut Tx<'_>) -> Result<PPtr<PBTreeMap<K, V>>> {
        Self::aligned()?;
        tx.record_type::<K>()?;
        tx.record_type::<V>()?;
        tx.alloc(PBTreeMap {
            root: 0,
            len: 0,
            height: 0,
            key_id: K::ID,
            val_id: V::ID,
            _kv: PhantomData,
        })
    }

    /// Nodes are placed at the allocator's alignment, [`ALIGN_MAX`] at most: a key or value
    /// type aligned above it is refused by `new` and every operation (a review found such a map
    /// made, an entry committed and then never readable: `Misaligned` on every lookup).
    fn aligned() -> Result<()> {
        super::aligned_at_most::<K, V>(ALIGN_MAX)
    }
}

impl<K, V> PPtr<PBTreeMap<K, V>>
where
    K: Element,
    V: Element,
    K::Input: Ord + ToOwned,
    V::Input: ToOwned,
{
    /// The header, for an operation that will write it: first checked to be a live
    /// allocation, before the operation allocates anything. (A review found a handle kept
    /// after its collection was freed accepted: the operation's first allocation took the
    /// freed header's block, and the header written last pointed at itself.)
    #[inline]
    fn header_mut(self, tx: &mut Tx<'_>) -> Result<PBTreeMap<K, V>> {
        tx.writable(
            self.offset(),
            std::mem::size_of::<PBTreeMap<K, V>>() as u64,
            8,
        )?;
        self.header(tx)
    }

    fn header<W: View>(self, view: &W) -> Result<PBTreeMap<K, V>> {
        let h = *view.get(self)?;
        check_id::<K, _>(view, h.key_id, self.offset(), "key")?;
        check_id::<V, _>(view, h.val_id, self.offset(), "value")?;
        PBTreeMap::<K, V>::aligned()?;
        if h.height > HEIGHT_MAX
            || (h.height == 0) != (h.root == 0)
            || (h.height == 0 && h.len != 0)
        {
            return Err(corrupt(
                self.offset(),
                format!(
                    "PBTreeMap header: root {:#x} height {} length {}",
                    h.root, h.height, h.len
                ),
            ));
        }
        Ok(h)
    }

    fn put_header(self, tx: &mut Tx<'_>, mut h: PBTreeMap<K, V>) -> Result<()> {
        h.key_id = record_id::<K>(tx, h.key_id)?;
        h.val_id = record_id::<V>(tx, h.val_id)?;
        tx.set(self, h)
    }

    /// Node geometry of this key and value type (computed at compile time).
    const GEO: Geo = Geo::of::<K, V>();

    /// Check a node header read at `at` against the level expected there.
    fn check_header(g: &Geo, at: u64, nh: NodeHeader, level: u64) -> Result<Node> {
        g.check(at, nh, level)
    }

    /// Read the node at `at`, which must be at `level`.
    fn node<W: View>(g: &Geo, view: &W, at: u64, level: u64) -> Result<Node> {
        null_node(at, level)?;
        let nh = *view.get(PPtr::<NodeHeader>::from_offset(at))?;
        Self::check_header(g, at, nh, level)
    }

    /// The node at `at` (which must be at `level`) and all its bytes, in one checked read.
    fn node_bytes<W: View>(view: &W, at: u64, level: u64) -> Result<(Node, &[u8])> {
        null_node(at, level)?;
        let g = Self::GEO;
        let b = view.slice(PSlice::<u8>::from_raw_parts(at, g.bytes(level)))?;
        let nh: NodeHeader = bytemuck::pod_read_unaligned(&b[..NODE_HEADER as usize]);
        Ok((Self::check_header(&g, at, nh, level)?, b))
    }

    /// `count` elements of `T` at byte `from` of node bytes `b` (of the node at `at`).
    fn part<T: bytemuck::Pod>(b: &[u8], at: u64, from: u64, count: u64) -> Result<&[T]> {
        let size = std::mem::size_of::<T>() as u64;
        let bytes = &b[from as usize..(from + count * size) as usize];
        crate::pptr::cast_slice(bytes, PSlice::<T>::from_raw_parts(at + from, count))
    }

    /// [`Self::part`] for writing.
    fn part_mut<T: bytemuck::Pod>(
        b: &mut [u8],
        at: u64,
        from: u64,
        count: u64,
    ) -> Result<&mut [T]> {
        let size = std::mem::size_of::<T>() as u64;
        let bytes = &mut b[from as usize..(from + count * size) as usize];
        crate::pptr::cast_slice_mut(bytes, PSlice::<T>::from_raw_parts(at + from, count))
    }

    /// Stage the whole node at `at` for writing (one staged range per node and transaction,
    /// so that later reads of it in the transaction find it in one piece).
    /// The node must be an allocation of its own (`Tx::writable_block`, in the write's own
    /// allocation check): a damaged pointer aimed inside another object would otherwise have
    /// the map's writes change that object (found by review).
    fn node_mut<'t>(tx: &'t mut Tx<'_>, at: u64, level: u64) -> Result<&'t mut [u8]> {
        let s = PSlice::<u8>::from_raw_parts(at, Self::GEO.bytes(level));
        let w = tx.writable_block(at, s.len(), 8)?;
        tx.slice_mut_in(&w, s)
    }

    /// Bytes of a leaf of `count` entries from its start to the end of its keys: the header,
    /// slot table and keys, which an insert or a removal changes together. (One staged write
    /// of them instead of three, in the lines they share: 9,800 -> 8,830 instructions per
    /// one-insert `None` commit, callgrind; it also stages the lines between the count and
    /// the first shifted key that three writes skipped, 527 -> 549 log bytes per frame.)
    fn leaf_head(g: &Geo, count: u64) -> usize {
        (g.leaf_keys_at + count * std::mem::size_of::<K>() as u64) as usize
    }

    fn set_count_in(b: &mut [u8], count: u64) {
        b[4..8].copy_from_slice(&(count as u32).to_ne_bytes());
    }

    /// Begin an edit of the node at `at`: the whole node staged (see [`Self::node_mut`]) once
    /// this transaction has staged any byte of it, so that the node stays one staged range that
    /// later reads in the transaction find in one piece (a bulk load's many inserts into one
    /// leaf); before that, only the ranges the edit changes (the count and the shifted entries:
    /// a one-insert transaction then logs a part of a leaf instead of a whole one, and a
    /// fraction of an internal node instead of 4 KiB).
    fn edit<'a, 'h>(tx: &'a mut Tx<'h>, at: u64, level: u64) -> Result<NodeEdit<'a, 'h>> {
        Ok(if tx.staged(at, Self::GEO.bytes(level)) {
            NodeEdit::Whole {
                at,
                b: Self::node_mut(tx, at, level)?,
            }
        } else {
            // (An allocation of its own: see `node_mut`.)
            let w = tx.writable_block(at, Self::GEO.bytes(level), 8)?;
            NodeEdit::Parts { at, tx, w }
        })
    }

    fn keys<W: View>(n: Node, view: &W) -> Result<&[K]> {
        let at = n.at + Self::GEO.keys_at(n.level as u64);
        view.slice(PSlice::from_raw_parts(at, n.count))
    }

    /// A leaf's values in slot order (not key order: [`Self::slots`] maps the one to the
    /// other).
    fn vals<'v, W: View>(g: &Geo, n: Node, view: &'v W) -> Result<&'v [V]> {
        view.slice(PSlice::from_raw_parts(n.at + g.vals_at, n.count))
    }

    /// A leaf's slot table: the slot of each entry's value, in key order.
    fn slots<'v, W: View>(g: &Geo, n: Node, view: &'v W) -> Result<&'v [u16]> {
        view.slice(PSlice::from_raw_parts(n.at + g.slots_at, n.count))
    }

    /// The value in `slot` of the leaf at `at` whose values (slot order) are `vals`: a slot
    /// number past them is damage.
    #[inline]
    fn slot_val(at: u64, vals: &[V], slot: u16) -> Result<&V> {
        vals.get(slot as usize)
            .ok_or_else(|| corrupt(at, format!("B-tree leaf: slot {slot} past its entries")))
    }

    /// A leaf's values in key order (a copy), with room for one more: a split inserts the new
    /// value into it. (Collected from a `Result` iterator, which gives no size hint, the vector
    /// grew by doubling, and a split then copied it once more to insert: about 110 of a bulk
    /// load's instructions per insert went to `realloc`, callgrind, W4-load.)
    fn vals_in_order<W: View>(g: &Geo, n: Node, view: &W) -> Result<Vec<V>> {
        let vals = Self::vals(g, n, view)?;
        let slots = Self::slots(g, n, view)?;
        let mut out = Vec::with_capacity(slots.len() + 1);
        for &s in slots {
            out.push(*Self::slot_val(n.at, vals, s)?);
        }
        Ok(out)
    }

    fn children<'v, W: View>(g: &Geo, n: Node, view: &'v W) -> Result<&'v [u64]> {
        view.slice(PSlice::from_raw_parts(n.at + g.children_at, n.count + 1))
    }

    fn child<W: View>(g: &Geo, view: &W, n: Node, i: u64) -> Result<Node> {
        let at = Self::children(g, n, view)?[i as usize];
        Self::node(g, view, at, n.level as u64 - 1)
    }

    /// Descend from the root to the leaf where `q` is or would go: one read per level.
    fn descend<W: View>(g: &Geo, h: &PBTreeMap<K, V>, view: &W, q: &K::Input) -> Result<Path> {
        let mut inner = Trail::new();
        let (mut at, mut level) = (h.root, h.height - 1);
        loop {
            let (n, b) = Self::node_bytes(view, at, level)?;
            let keys = Self::part::<K>(b, at, g.keys_at(level), n.count)?;
            if level > 0 {
                // As in `get`: the internal node's key lines in parallel.
                crate::sys::prefetch(bytemuck::cast_slice(keys));
            }
            let pos = search(keys, q, view)?;
            if level == 0 {
                return Ok(Path {
                    inner,
                    leaf: n,
                    pos,
                });
            }
            let i = match pos {
                Ok(i) => i + 1,
                Err(i) => i,
            } as u64;
            inner.push((n, i));
            at = Self::part::<u64>(b, at, g.children_at, n.count + 1)?[i as usize];
            level -= 1;
        }
    }

    /// The number of entries.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btl.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u8, u8>::new(tx)?; m.insert(tx, &1u8, &2u8)?; Ok(m) })?;
    /// assert_eq!(heap.read(|r| m.len(r))?, 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn len<W: View>(self, view: &W) -> Result<u64> {
        Ok(self.header(view)?.len)
    }

    /// The value stored under `key`, read in place.
    ///
    /// ```
    /// use txheap::{PBTreeMap, PBytes};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btg.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| {
    ///     let m = PBTreeMap::<PBytes, PBytes>::new(tx)?;
    ///     m.insert(tx, b"key", b"value")?;
    ///     Ok(m)
    /// })?;
    /// assert_eq!(heap.read(|r| Ok(m.get(r, b"key")?.map(|v| v.to_vec())))?, Some(b"value".to_vec()));
    /// assert_eq!(heap.read(|r| Ok(m.get(r, b"nope")?.is_none()))?, true);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get<'v, W: View>(self, view: &'v W, key: &K::Input) -> Result<Option<&'v V::Input>> {
        super::own(self, self.get_raw(view, key))
    }

    fn get_raw<'v, W: View>(self, view: &'v W, key: &K::Input) -> Result<Option<&'v V::Input>> {
        let h = self.header(view)?;
        if h.height == 0 {
            return Ok(None);
        }
        let g = Self::GEO;
        let (mut at, mut level) = (h.root, h.height - 1);
        loop {
            let (n, b) = Self::node_bytes(view, at, level)?;
            let keys = Self::part::<K>(b, at, g.keys_at(level), n.count)?;
            if level > 0 {
                // An internal node's keys span up to 32 lines, and a binary search visits
                // about six of them one after another; asking for all at once turns six
                // dependent misses into one round of parallel ones.
                crate::sys::prefetch(bytemuck::cast_slice(keys));
            }
            let s = search(keys, key, view)?;
            if level == 0 {
                return match s {
                    Ok(i) => {
                        let slot = Self::part::<u16>(b, at, g.slots_at, n.count)?[i];
                        let vals = Self::part::<V>(b, at, g.vals_at, n.count)?;
                        Ok(Some(V::load(Self::slot_val(at, vals, slot)?, view)?))
                    }
                    Err(_) => Ok(None),
                };
            }
            let i = match s {
                Ok(i) => i + 1,
                Err(i) => i,
            };
            at = Self::part::<u64>(b, at, g.children_at, n.count + 1)?[i];
            level -= 1;
        }
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btc.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u8, u8>::new(tx)?; m.insert(tx, &1u8, &2u8)?; Ok(m) })?;
    /// assert!(heap.read(|r| m.contains_key(r, &1))?);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn contains_key<W: View>(self, view: &W, key: &K::Input) -> Result<bool> {
        super::own(self, self.contains_key_raw(view, key))
    }

    fn contains_key_raw<W: View>(self, view: &W, key: &K::Input) -> Result<bool> {
        Ok(self.get(view, key)?.is_some())
    }

    /// A pointer to the stored value handle of `key`, for changing it in place with
    /// `tx.get_mut`. Only for plain values (integers, arrays, structs, `PPtr`, a nested collection
    /// header): a [`crate::PBytes`] or [`crate::PString`] value owns a block that an overwrite
    /// would leak, so it is replaced with `insert` (the bound refuses it at compile time).
    /// The pointer is valid until the map's next insert or remove, which may move entries.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btgm.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u8, u32>::new(tx)?;
    ///     m.insert(tx, &1u8, &10u32)?;
    ///     let p = m.get_mut(tx, &1)?.expect("present");
    ///     *tx.get_mut(p)? += 5;
    ///     assert_eq!(m.get(tx, &1)?, Some(&15));
    ///     assert!(m.get_mut(tx, &2)?.is_none());
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get_mut(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<Option<PPtr<V>>>
    where
        V: Element<Input = V>,
    {
        super::own(self, self.get_mut_raw(tx, key))
    }

    fn get_mut_raw(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<Option<PPtr<V>>>
    where
        V: Element<Input = V>,
    {
        let h = self.header(tx)?;
        if h.height == 0 {
            return Ok(None);
        }
        let g = Self::GEO;
        let path = Self::descend(&g, &h, tx, key)?;
        let Ok(i) = path.pos else {
            return Ok(None);
        };
        let leaf = path.leaf;
        let slot = Self::slots(&g, leaf, tx)?[i];
        // (A slot past the entries is damage: refused as `get` refuses it.)
        Self::slot_val(leaf.at, Self::vals(&g, leaf, tx)?, slot)?;
        // The caller writes through the pointer: the leaf must be an allocation of its own (a
        // damaged pointer aimed inside another object handed out a pointer into it: review).
        if tx
            .usable_size(PPtr::<u8>::from_offset(leaf.at))
            .is_none_or(|u| u < g.bytes(0))
        {
            return Err(corrupt(
                leaf.at,
                "B-tree leaf is not an allocation of its own",
            ));
        }
        let size = std::mem::size_of::<V>() as u64;
        Ok(Some(PPtr::from_offset(
            leaf.at + g.vals_at + u64::from(slot) * size,
        )))
    }

    /// Entry-style update: the pointer to `key`'s value handle, inserting `value` first if the
    /// key is absent.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btgi.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<txheap::PBytes, u32>::new(tx)?;
    ///     for w in ["b", "a", "b"] {
    ///         let n = m.get_or_insert(tx, w.as_bytes(), &0u32)?;
    ///         *tx.get_mut(n)? += 1;
    ///     }
    ///     assert_eq!(m.get(tx, b"b")?, Some(&2));
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get_or_insert(self, tx: &mut Tx<'_>, key: &K::Input, value: &V::Input) -> Result<PPtr<V>>
    where
        V: Element<Input = V>,
    {
        // (One step: its insert is one, and the lookup after it fails it too: found by review.)
        super::own(
            self,
            tx.op("PBTreeMap::get_or_insert", |tx| {
                super::get_or_insert(
                tx,
                |tx| self.get_mut(tx, key),
                |tx| self.insert(tx, key, value),
                self.offset(),
                "PBTreeMap: a key inserted by get_or_insert is not found again (its Ord is not \
                 consistent, or the map is damaged)",
            )
            }),
        )
    }

    /// Keep only the entries for which `keep(key, value)` is true, removing the others (their
    /// keys and values released, nodes merged as by [`Self::remove`]); returns how many went.
    /// The map is read once in key order, then the doomed keys are removed one by one.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btre.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u32, u32>::new(tx)?;
    ///     for k in 0..100u32 { m.insert(tx, &k, &(k % 7))?; }
    ///     assert_eq!(m.retain(tx, |_, v| *v != 0)?, 15);
    ///     assert_eq!(m.len(tx)?, 85);
    ///     assert_eq!(m.get(tx, &14)?, None);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn retain(
        self,
        tx: &mut Tx<'_>,
        keep: impl FnMut(&K::Input, &V::Input) -> bool,
    ) -> Result<u64> {
        super::own(
            self,
            tx.op("PBTreeMap::retain", |tx| self.retain_body(tx, keep)),
        )
    }

    fn retain_body(
        self,
        tx: &mut Tx<'_>,
        mut keep: impl FnMut(&K::Input, &V::Input) -> bool,
    ) -> Result<u64> {
        let mut doomed = Vec::new();
        for e in self.range_by(tx, Bound::Unbounded, Bound::Unbounded)? {
            let (k, v) = e?;
            if !keep(k, v) {
                doomed.push(k.to_owned());
            }
        }
        super::remove_each(
            tx,
            &doomed,
            |tx, k| self.remove(tx, k.borrow()),
            self.offset(),
            "PBTreeMap: a key met by retain's scan is not found again (its Ord is not \
             consistent, or the map is damaged)",
        )
    }

    /// Remove the entry with the smallest key and return it (owned copies: a byte-string key
    /// or value comes back as a `Vec<u8>`, its blocks freed).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btpf.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u32, txheap::PBytes>::new(tx)?;
    ///     m.insert(tx, &7u32, b"seven")?;
    ///     m.insert(tx, &3u32, b"three")?;
    ///     assert_eq!(m.pop_first(tx)?, Some((3, b"three".to_vec())));
    ///     assert_eq!(m.pop_last(tx)?, Some((7, b"seven".to_vec())));
    ///     assert_eq!(m.pop_first(tx)?, None);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn pop_first(
        self,
        tx: &mut Tx<'_>,
    ) -> Result<Option<(<K::Input as ToOwned>::Owned, <V::Input as ToOwned>::Owned)>> {
        super::own(
            self,
            tx.op("PBTreeMap::pop_first", |tx| self.pop_first_body(tx)),
        )
    }

    #[allow(clippy::type_complexity)]
    fn pop_first_body(
        self,
        tx: &mut Tx<'_>,
    ) -> Result<Option<(<K::Input as ToOwned>::Owned, <V::Input as ToOwned>::Owned)>> {
        let first = self.first(tx)?.map(|(k, v)| (k.to_owned(), v.to_owned()));
        self.pop(tx, first)
    }

    /// Remove the entry with the largest key and return it (as [`Self::pop_first`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btpl.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u8, u8>::new(tx)?;
    ///     for k in 0..10u8 { m.insert(tx, &k, &(k * 2))?; }
    ///     assert_eq!(m.pop_last(tx)?, Some((9, 18)));
    ///     assert_eq!(m.len(tx)?, 9);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn pop_last(
        self,
        tx: &mut Tx<'_>,
    ) -> Result<Option<(<K::Input as ToOwned>::Owned, <V::Input as ToOwned>::Owned)>> {
        super::own(
            self,
            tx.op("PBTreeMap::pop_last", |tx| self.pop_last_body(tx)),
        )
    }

    #[allow(clippy::type_complexity)]
    fn pop_last_body(
        self,
        tx: &mut Tx<'_>,
    ) -> Result<Option<(<K::Input as ToOwned>::Owned, <V::Input as ToOwned>::Owned)>> {
        let last = self.last(tx)?.map(|(k, v)| (k.to_owned(), v.to_owned()));
        self.pop(tx, last)
    }

    /// Remove `entry`'s key (found by `first` or `last`) and return the entry.
    #[allow(clippy::type_complexity)]
    fn pop(
        self,
        tx: &mut Tx<'_>,
        entry: Option<(<K::Input as ToOwned>::Owned, <V::Input as ToOwned>::Owned)>,
    ) -> Result<Option<(<K::Input as ToOwned>::Owned, <V::Input as ToOwned>::Owned)>> {
        let Some((k, v)) = entry else {
            return Ok(None);
        };
        if !self.remove(tx, k.borrow())? {
            return Err(corrupt(
                self.offset(),
                "PBTreeMap: the key at the end of the map is not found again (its Ord is not \
                 consistent, or the map is damaged)",
            ));
        }
        Ok(Some((k, v)))
    }

    fn alloc_node(g: &Geo, tx: &mut Tx<'_>, level: u32) -> Result<u64> {
        let s = tx.alloc_slice_zeroed::<u64>(g.bytes(level as u64) / 8)?;
        let b = Self::node_mut(tx, s.offset(), level as u64)?;
        b[..4].copy_from_slice(&level.to_ne_bytes());
        if level == 0 {
            b[8..12].copy_from_slice(&LEAF_LAYOUT.to_ne_bytes());
        }
        Ok(s.offset())
    }

    fn free_node(g: &Geo, tx: &mut Tx<'_>, at: u64, level: u64) -> Result<()> {
        tx.free_slice(PSlice::<u64>::from_raw_parts(at, g.bytes(level) / 8))
    }

    /// Write a whole leaf: its entries (values in key order, each in the slot of its
    /// position) and count.
    fn fill_leaf(g: &Geo, tx: &mut Tx<'_>, at: u64, keys: &[K], vals: &[V]) -> Result<()> {
        let n = keys.len() as u64;
        let b = Self::node_mut(tx, at, 0)?;
        Self::part_mut::<K>(b, at, g.leaf_keys_at, n)?.copy_from_slice(keys);
        Self::part_mut::<V>(b, at, g.vals_at, n)?.copy_from_slice(vals);
        for (i, s) in Self::part_mut::<u16>(b, at, g.slots_at, n)?
            .iter_mut()
            .enumerate()
        {
            *s = i as u16;
        }
        Self::set_count_in(b, n);
        Ok(())
    }

    /// Write a whole internal node: its keys, children (one more) and count.
    fn fill_inner(g: &Geo, tx: &mut Tx<'_>, at: u64, keys: &[K], ch: &[u64]) -> Result<()> {
        let n = keys.len() as u64;
        let b = Self::node_mut(tx, at, 1)?;
        Self::part_mut::<K>(b, at, g.inner_keys_at, n)?.copy_from_slice(keys);
        Self::part_mut::<u64>(b, at, g.children_at, n + 1)?.copy_from_slice(ch);
        Self::set_count_in(b, n);
        Ok(())
    }

    /// Insert `key` -> `value`. Returns whether the key was present (its old value is then
    /// released and replaced).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("bti.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u32, u64>::new(tx)?;
    ///     assert!(!m.insert(tx, &1u32, &10u64)?);
    ///     assert!(m.insert(tx, &1u32, &11u64)?);
    ///     assert_eq!(m.get(tx, &1)?, Some(&11));
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn insert(self, tx: &mut Tx<'_>, key: &K::Input, value: &V::Input) -> Result<bool> {
        super::own(
            self,
            tx.op("PBTreeMap::insert", |tx| self.insert_body(tx, key, value)),
        )
    }

    fn insert_body(self, tx: &mut Tx<'_>, key: &K::Input, value: &V::Input) -> Result<bool> {
        let g = Self::GEO;
        let mut h = self.header_mut(tx)?;
        // The value first, before the first node: a value the heap cannot hold is refused
        // before the insert changed anything (`Tx::op`; a review found the first insert into an
        // empty map, refused so, marking its transaction).
        let v = V::store(tx, value)?;
        if h.height == 0 {
            h.root = Self::alloc_node(&g, tx, 0)?;
            h.height = 1;
        }
        let path = Self::descend(&g, &h, tx, key)?;
        let leaf = path.leaf;
        let i = match path.pos {
            Ok(i) => {
                let slot = Self::slots(&g, leaf, tx)?[i];
                let old = *Self::slot_val(leaf.at, Self::vals(&g, leaf, tx)?, slot)?;
                let s = slot as usize;
                Self::edit(tx, leaf.at, 0)?.part::<V>(g.vals_at, s, s + 1)?[0] = v;
                old.release(tx)?;
                return Ok(true);
            }
            Err(i) => i,
        };
        let k = K::store(tx, key)?;
        let mut split = Self::leaf_insert(&g, tx, leaf, i, k, v)?;
        for &(n, ci) in path.inner.upward() {
            let Some((sep, right)) = split else { break };
            split = Self::inner_insert(&g, tx, n, ci, sep, right)?;
        }
        if let Some((sep, right)) = split {
            if h.height >= HEIGHT_MAX {
                return Err(corrupt(
                    self.offset(),
                    "B-tree would exceed the height limit",
                ));
            }
            let root = Self::alloc_node(&g, tx, h.height as u32)?;
            Self::fill_inner(&g, tx, root, &[sep], &[h.root, right])?;
            h.root = root;
            h.height += 1;
        }
        // (A damaged header's length may be the largest count: a review found the overflow.)
        h.len = h.len.checked_add(1).ok_or_else(|| {
            corrupt(
                self.offset(),
                format!(
                    "PBTreeMap header: length {} cannot count one more entry",
                    h.len
                ),
            )
        })?;
        self.put_header(tx, h)?;
        Ok(false)
    }

    fn leaf_insert(g: &Geo, tx: &mut Tx<'_>, leaf: Node, i: usize, k: K, v: V) -> Result<Split<K>> {
        let (at, c) = (leaf.at, leaf.count as usize);
        if leaf.count < g.leaf_cap {
            // Shift the keys and slot numbers from `i` up by one; the value goes to the first
            // free slot, `c` (slots `0..c` hold the others), and no other value moves.
            let mut e = Self::edit(tx, at, 0)?;
            e.part::<V>(g.vals_at, c, c + 1)?[0] = v;
            let n = leaf.count + 1;
            let b = e.part::<u8>(0, 0, Self::leaf_head(g, n))?;
            shift_in(&mut Self::part_mut::<K>(b, at, g.leaf_keys_at, n)?[i..], k);
            shift_in(
                &mut Self::part_mut::<u16>(b, at, g.slots_at, n)?[i..],
                c as u16,
            );
            Self::set_count_in(b, n);
            return Ok(None);
        }
        // Full: the left half stays, the right half moves to a new leaf.
        // (With room for the new entry from the start: `to_vec` then `insert` reallocated
        // both, about 1,200 instructions per split.)
        let old_slots = Self::slots(g, leaf, tx)?.to_vec();
        let all_k = with_inserted(Self::keys(leaf, tx)?, i, k);
        let mut all_v = Self::vals_in_order(g, leaf, tx)?;
        all_v.insert(i, v);
        let mid = all_k.len() / 2;
        let right = Self::alloc_node(g, tx, 0)?;
        Self::fill_leaf(g, tx, right, &all_k[mid..], &all_v[mid..])?;
        // The left half keeps its keys before `i` (only those from `i` on are written) and
        // every value already in a slot below `mid`; the others (the new one among them) take
        // the slots below `mid` that are left free.
        // (One vector for both: the first `mid` entries are the slots, the rest whether each
        // slot below `mid` is taken.)
        let mut scratch = vec![u16::MAX; 2 * mid];
        let (slots, taken) = scratch.split_at_mut(mid);
        for (p, s) in slots.iter_mut().enumerate() {
            let old = match p.cmp(&i) {
                Ordering::Less => old_slots[p],
                Ordering::Equal => continue,
                Ordering::Greater => old_slots[p - 1],
            };
            if (old as usize) < mid && taken[old as usize] == u16::MAX {
                taken[old as usize] = 0;
                *s = old;
            }
        }
        let mut free = (0..mid).filter(|&s| taken[s] == u16::MAX);
        let from = i.min(mid);
        let mut e = Self::edit(tx, at, 0)?;
        for (p, s) in slots.iter_mut().enumerate() {
            if *s == u16::MAX {
                let f = free.next().expect("as many free slots as values to place");
                e.part::<V>(g.vals_at, f, f + 1)?[0] = all_v[p];
                *s = f as u16;
            }
        }
        let first = old_slots[..mid]
            .iter()
            .zip(slots.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(mid);
        e.part::<u16>(g.slots_at, first, mid)?
            .copy_from_slice(&slots[first..]);
        e.part::<K>(g.leaf_keys_at, from, mid)?
            .copy_from_slice(&all_k[from..mid]);
        e.set_count(mid as u64)?;
        // The separator is a copy the internal node owns.
        let owned = K::load(&all_k[mid], tx)?.to_owned();
        let sep = K::store(tx, owned.borrow())?;
        Ok(Some((sep, right)))
    }

    fn inner_insert(
        g: &Geo,
        tx: &mut Tx<'_>,
        n: Node,
        ci: u64,
        sep: K,
        right: u64,
    ) -> Result<Split<K>> {
        let (ci, c) = (ci as usize, n.count as usize);
        if n.count < g.inner_cap {
            let mut e = Self::edit(tx, n.at, n.level as u64)?;
            shift_in(e.part::<K>(g.inner_keys_at, ci, c + 1)?, sep);
            shift_in(e.part::<u64>(g.children_at, ci + 1, c + 2)?, right);
            e.set_count(n.count + 1)?;
            return Ok(None);
        }
        // Full: keys[mid] moves up; the keys after it and their children go right.
        let keys = with_inserted(Self::keys(n, tx)?, ci, sep);
        let ch = with_inserted(Self::children(g, n, tx)?, ci + 1, right);
        let mid = keys.len() / 2;
        let new = Self::alloc_node(g, tx, n.level)?;
        Self::fill_inner(g, tx, new, &keys[mid + 1..], &ch[mid + 1..])?;
        Self::fill_inner(g, tx, n.at, &keys[..mid], &ch[..mid + 1])?;
        Ok(Some((keys[mid], new)))
    }

    /// Remove `key`, releasing its key and value. Returns whether it was present.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btr.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u8, u8>::new(tx)?;
    ///     m.insert(tx, &1u8, &1u8)?;
    ///     assert!(m.remove(tx, &1)?);
    ///     assert!(!m.remove(tx, &1)?);
    ///     assert_eq!(m.len(tx)?, 0);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn remove(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<bool> {
        super::own(
            self,
            tx.op("PBTreeMap::remove", |tx| self.remove_body(tx, key)),
        )
    }

    fn remove_body(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<bool> {
        let mut h = self.header_mut(tx)?;
        if h.height == 0 {
            return Ok(false);
        }
        let g = Self::GEO;
        let path = Self::descend(&g, &h, tx, key)?;
        let leaf = path.leaf;
        let Ok(i) = path.pos else {
            return Ok(false);
        };
        let slots = Self::slots(&g, leaf, tx)?;
        let (slot, last) = (slots[i], leaf.count as u16 - 1);
        // The entry whose value is in the last slot, which moves into the freed one.
        let mover = slots.iter().position(|&s| s == last);
        let vals = Self::vals(&g, leaf, tx)?;
        let (k, v, lastv) = (
            Self::keys(leaf, tx)?[i],
            *Self::slot_val(leaf.at, vals, slot)?,
            vals[last as usize],
        );
        k.release(tx)?;
        v.release(tx)?;
        h.len = h
            .len
            .checked_sub(1)
            .ok_or_else(|| corrupt(self.offset(), "B-tree length below its entries"))?;
        // Take the entry out of its leaf (or free the leaf it empties), then mend upward: an
        // emptied node leaves its parent, and an underfull one merges with a sibling when
        // the two fit comfortably in one node, or else takes entries from it; each merge
        // takes a key out of the parent, which may leave it underfull in turn.
        let mut up = if leaf.count > 1 {
            let at = leaf.at;
            // Slots stay `0..count`: the value in the last slot moves into the freed one.
            let mover = match mover {
                Some(j) if slot != last => Some(if j > i { j - 1 } else { j }),
                Some(_) => None,
                None => return Err(corrupt(at, "B-tree leaf: slot table misses a slot")),
            };
            let mut e = Self::edit(tx, at, 0)?;
            if mover.is_some() {
                let s = slot as usize;
                e.part::<V>(g.vals_at, s, s + 1)?[0] = lastv;
            }
            let b = e.part::<u8>(0, 0, Self::leaf_head(&g, leaf.count))?;
            shift_out(&mut Self::part_mut::<K>(b, at, g.leaf_keys_at, leaf.count)?[i..]);
            let slots = Self::part_mut::<u16>(b, at, g.slots_at, leaf.count)?;
            shift_out(&mut slots[i..]);
            if let Some(j) = mover {
                slots[j] = slot;
            }
            Self::set_count_in(b, leaf.count - 1);
            Mend::below_min(
                &g,
                Node {
                    count: leaf.count - 1,
                    ..leaf
                },
            )
        } else {
            Self::free_node(&g, tx, leaf.at, 0)?;
            Mend::Emptied
        };
        for &(n, ci) in path.inner.upward() {
            up = match up {
                Mend::Done => break,
                Mend::Emptied if n.count == 0 => {
                    Self::free_node(&g, tx, n.at, n.level as u64)?;
                    Mend::Emptied
                }
                Mend::Emptied => {
                    let drop_key = if ci > 0 { ci as usize - 1 } else { 0 };
                    Self::keys(n, tx)?[drop_key].release(tx)?;
                    Self::take_out(&g, tx, n, drop_key, ci as usize)?
                }
                Mend::Under(child) => Self::merge(&g, tx, n, ci, child)?,
            };
        }
        if matches!(up, Mend::Emptied) {
            h.root = 0;
            h.height = 0;
        } else {
            // A root with one child gives way to it.
            while h.height > 1 {
                let r = Self::node(&g, tx, h.root, h.height - 1)?;
                if r.count > 0 {
                    break;
                }
                let only = Self::children(&g, r, tx)?[0];
                Self::free_node(&g, tx, r.at, r.level as u64)?;
                h.root = only;
                h.height -= 1;
            }
        }
        self.put_header(tx, h)?;
        Ok(true)
    }

    /// Take key `k` and child `j` (`k` or `k + 1`) out of internal node `n` (the caller has
    /// released the key or moved it elsewhere); what the parent must then mend.
    fn take_out(g: &Geo, tx: &mut Tx<'_>, n: Node, k: usize, j: usize) -> Result<Mend> {
        let c = n.count as usize;
        let mut e = Self::edit(tx, n.at, n.level as u64)?;
        shift_out(e.part::<K>(g.inner_keys_at, k, c)?);
        shift_out(e.part::<u64>(g.children_at, j, c + 1)?);
        e.set_count(n.count - 1)?;
        Ok(Mend::below_min(
            g,
            Node {
                count: n.count - 1,
                ..n
            },
        ))
    }

    /// `child` (child `ci` of `parent`, already changed) holds fewer entries than a quarter of a
    /// node: merge it with its right sibling (its left one for the last child) when the two
    /// fit in three quarters of a node, so that neither the merged node nor the next inserts
    /// into it split again at once. The right node of the pair is freed and its separator
    /// taken out of the parent (released for leaves, whose separators are copies; moved down
    /// into the merged node for internal nodes). Otherwise the pair shares its entries
    /// ([`Self::redistribute`]).
    fn merge(g: &Geo, tx: &mut Tx<'_>, parent: Node, ci: u64, child: Node) -> Result<Mend> {
        if parent.count == 0 {
            // An only child: nothing to merge with (its parent gives way if it is the root).
            return Ok(Mend::Done);
        }
        let (l, r) = if ci < parent.count {
            (ci, ci + 1)
        } else {
            (ci - 1, ci)
        };
        let (left, right) = if l == ci {
            (child, Self::child(g, tx, parent, r)?)
        } else {
            (Self::child(g, tx, parent, l)?, child)
        };
        let level = child.level as u64;
        let cap = if level == 0 { g.leaf_cap } else { g.inner_cap };
        let merged = left.count + right.count + u64::from(level > 0);
        if merged > cap - cap / 4 {
            return Self::redistribute(g, tx, parent, l, left, right);
        }
        let sep = Self::keys(parent, tx)?[l as usize];
        let (lc, rc) = (left.count as usize, right.count as usize);
        if level == 0 {
            // The right leaf's entries follow the left's, its values in slots `lc..` in key
            // order.
            let rk = Self::keys(right, tx)?.to_vec();
            let rv = Self::vals_in_order(g, right, tx)?;
            let mut e = Self::edit(tx, left.at, 0)?;
            e.part::<K>(g.leaf_keys_at, lc, lc + rc)?
                .copy_from_slice(&rk);
            e.part::<V>(g.vals_at, lc, lc + rc)?.copy_from_slice(&rv);
            for (j, s) in e
                .part::<u16>(g.slots_at, lc, lc + rc)?
                .iter_mut()
                .enumerate()
            {
                *s = (lc + j) as u16;
            }
            e.set_count(merged)?;
            sep.release(tx)?;
        } else {
            let rk = Self::keys(right, tx)?.to_vec();
            let rch = Self::children(g, right, tx)?.to_vec();
            let mut e = Self::edit(tx, left.at, level)?;
            let keys = e.part::<K>(g.inner_keys_at, lc, lc + 1 + rc)?;
            keys[0] = sep;
            keys[1..].copy_from_slice(&rk);
            e.part::<u64>(g.children_at, lc + 1, lc + 2 + rc)?
                .copy_from_slice(&rch);
            e.set_count(merged)?;
        }
        Self::free_node(g, tx, right.at, level)?;
        Self::take_out(g, tx, parent, l as usize, r as usize)
    }

    /// `left` and `right` (children `l` and `l + 1` of `parent`), one of them underfull, do not
    /// fit in three quarters of one node: share their entries evenly instead (a leaf pair's
    /// entries, or an internal pair's keys with the separator between them and their
    /// children), so that each holds about three eighths of a node (at least a quarter: an
    /// internal pair's middle key moves up, so the right one may have one fewer). Both nodes are
    /// rewritten whole and the parent's separator replaced: for leaves by a copy of the right
    /// node's new first key (the old copy released), for internal nodes by the middle key,
    /// which moves up as the old separator moves down. The parent's count does not change.
    fn redistribute(
        g: &Geo,
        tx: &mut Tx<'_>,
        parent: Node,
        l: u64,
        left: Node,
        right: Node,
    ) -> Result<Mend> {
        let sep = Self::keys(parent, tx)?[l as usize];
        let new_sep = if left.level == 0 {
            let mut keys = Self::keys(left, tx)?.to_vec();
            keys.extend_from_slice(Self::keys(right, tx)?);
            let mut vals = Self::vals_in_order(g, left, tx)?;
            vals.extend(Self::vals_in_order(g, right, tx)?);
            let mid = keys.len() / 2;
            Self::fill_leaf(g, tx, left.at, &keys[..mid], &vals[..mid])?;
            Self::fill_leaf(g, tx, right.at, &keys[mid..], &vals[mid..])?;
            let owned = K::load(&keys[mid], tx)?.to_owned();
            let copy = K::store(tx, owned.borrow())?;
            sep.release(tx)?;
            copy
        } else {
            let mut keys = Self::keys(left, tx)?.to_vec();
            keys.push(sep);
            keys.extend_from_slice(Self::keys(right, tx)?);
            let mut ch = Self::children(g, left, tx)?.to_vec();
            ch.extend_from_slice(Self::children(g, right, tx)?);
            let mid = keys.len() / 2;
            Self::fill_inner(g, tx, left.at, &keys[..mid], &ch[..mid + 1])?;
            Self::fill_inner(g, tx, right.at, &keys[mid + 1..], &ch[mid + 1..])?;
            keys[mid]
        };
        let l = l as usize;
        Self::edit(tx, parent.at, parent.level as u64)?.part::<K>(g.inner_keys_at, l, l + 1)?[0] =
            new_sep;
        Ok(Mend::Done)
    }

    /// Remove every entry, releasing keys and values and freeing every node.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btcl.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u32, u32>::new(tx)?;
    ///     for k in 0..1000u32 { m.insert(tx, &k, &k)?; }
    ///     m.clear(tx)?;
    ///     assert_eq!(m.len(tx)?, 0);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn clear(self, tx: &mut Tx<'_>) -> Result<()> {
        super::own(self, tx.op("PBTreeMap::clear", |tx| self.clear_body(tx)))
    }

    fn clear_body(self, tx: &mut Tx<'_>) -> Result<()> {
        let mut h = self.header_mut(tx)?;
        if h.height > 0 {
            let g = Self::GEO;
            let mut stack = vec![(h.root, h.height - 1)];
            while let Some((at, level)) = stack.pop() {
                let n = Self::node(&g, tx, at, level)?;
                let keys = Self::keys(n, tx)?.to_vec();
                if level == 0 {
                    let vals = Self::vals(&g, n, tx)?.to_vec();
                    for (k, v) in keys.into_iter().zip(vals) {
                        k.release(tx)?;
                        v.release(tx)?;
                    }
                } else {
                    stack.extend(Self::children(&g, n, tx)?.iter().map(|&c| (c, level - 1)));
                    for k in keys {
                        k.release(tx)?;
                    }
                }
                Self::free_node(&g, tx, at, level)?;
            }
        }
        h.root = 0;
        h.height = 0;
        h.len = 0;
        self.put_header(tx, h)
    }

    /// [`PPtr::clear`]: frees every block the map owns in one call (the header stays where it
    /// is; free a header made by [`PBTreeMap::new`] with `tx.free`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btd.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u8, u8>::new(tx)?;
    ///     m.insert(tx, &1, &1)?;
    ///     m.destroy(tx)?;
    ///     tx.free(m)
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn destroy(self, tx: &mut Tx<'_>) -> Result<()> {
        super::own(self, self.destroy_raw(tx))
    }

    fn destroy_raw(self, tx: &mut Tx<'_>) -> Result<()> {
        self.clear(tx)
    }

    /// Entries with keys in `range`, in key order; the iterator runs both ways
    /// (`.rev()`, `next_back`). Each item is a `Result`: a damaged node ends the walk with an
    /// error, as does a walk past the header's count of entries or a key out of order (a
    /// shared subtree). A range
    /// whose start lies after its end (or equal bounds, both excluded) yields nothing, where
    /// `BTreeMap::range` panics.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btrg.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u64, u64>::new(tx)?; for k in 0..100u64 { m.insert(tx, &k, &(k * 2))?; } Ok(m) })?;
    /// heap.read(|r| {
    ///     let down: Vec<u64> = m.range(r, 10..13)?.rev().map(|e| e.map(|(k, _)| *k)).collect::<Result<_, _>>()?;
    ///     assert_eq!(down, [12, 11, 10]);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn range<'v, W: View, R: std::ops::RangeBounds<K::Input>>(
        self,
        view: &'v W,
        range: R,
    ) -> Result<Range<'v, K, V, W>> {
        super::own(self, self.range_raw(view, range))
    }

    fn range_raw<'v, W: View, R: std::ops::RangeBounds<K::Input>>(
        self,
        view: &'v W,
        range: R,
    ) -> Result<Range<'v, K, V, W>> {
        self.range_by(view, range.start_bound(), range.end_bound())
    }

    /// [`PPtr::range`] with explicit bounds (for unsized keys: `Bound::Included(&b"a"[..])`).
    ///
    /// ```
    /// use std::ops::Bound;
    /// use txheap::{PBTreeMap, PBytes};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btrb.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| {
    ///     let m = PBTreeMap::<PBytes, u8>::new(tx)?;
    ///     for k in ["apple", "banana", "cherry"] { m.insert(tx, k.as_bytes(), &0)?; }
    ///     Ok(m)
    /// })?;
    /// let n = heap.read(|r| Ok(m.range_by(r, Bound::Included(&b"b"[..]), Bound::Unbounded)?.count()))?;
    /// assert_eq!(n, 2);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn range_by<'v, W: View>(
        self,
        view: &'v W,
        lo: Bound<&K::Input>,
        hi: Bound<&K::Input>,
    ) -> Result<Range<'v, K, V, W>> {
        super::own(self, self.range_by_raw(view, lo, hi))
    }

    fn range_by_raw<'v, W: View>(
        self,
        view: &'v W,
        lo: Bound<&K::Input>,
        hi: Bound<&K::Input>,
    ) -> Result<Range<'v, K, V, W>> {
        let h = self.header(view)?;
        let g = Self::GEO;
        let mut r = Range {
            view,
            g,
            front: Vec::new(),
            back: Vec::new(),
            front_leaf: None,
            back_leaf: None,
            done: true,
            left: h.len,
            last_front: None,
            last_back: None,
            map: self.offset(),
            _kv: PhantomData,
        };
        if h.height == 0 {
            return Ok(r);
        }
        let front = Self::seek(&g, &h, view, lo, true)?;
        let back = Self::seek(&g, &h, view, hi, false)?;
        let (Some(front), Some(back)) = (front, back) else {
            return Ok(r);
        };
        r.front = front;
        r.back = back;
        let (fk, bk) = (r.key_at(&r.front)?, r.key_at(&r.back)?);
        r.done = K::load(fk, view)? > K::load(bk, view)?;
        Ok(r)
    }

    /// A cursor (stack of (node, index) from the root) at the first entry inside `b` (a lower
    /// bound, `forward`) or the last entry inside it (an upper bound); `None` if there is none.
    fn seek<W: View>(
        g: &Geo,
        h: &PBTreeMap<K, V>,
        view: &W,
        b: Bound<&K::Input>,
        forward: bool,
    ) -> Result<Option<Vec<(Node, u64)>>> {
        let mut n = Self::node(g, view, h.root, h.height - 1)?;
        let mut stack = Vec::with_capacity(h.height as usize);
        loop {
            let keys = Self::keys(n, view)?;
            // Index in this node: for an internal node the child, for a leaf the entry
            // position counted from the left (entries before it are outside the bound).
            let i = match b {
                Bound::Unbounded if forward => 0,
                // Backward: the last child, or past the leaf's last entry.
                Bound::Unbounded => n.count as usize,
                Bound::Included(q) | Bound::Excluded(q) => {
                    let s = search(keys, q, view)?;
                    let excl = matches!(b, Bound::Excluded(_));
                    match (n.level > 0, s) {
                        // Internal: keys equal to q live in the child right of them.
                        (true, Ok(i)) if !forward && excl => i,
                        (true, Ok(i)) => i + 1,
                        (true, Err(i)) => i,
                        // Leaf, forward: first >= q (Included) or > q (Excluded).
                        (false, Ok(i)) if forward => i + excl as usize,
                        // Leaf, backward: entries before this index are <= q (or < q).
                        (false, Ok(i)) => i + !excl as usize,
                        (false, Err(i)) => i,
                    }
                }
            };
            if n.level == 0 {
                if forward {
                    stack.push((n, i as u64));
                    if i as u64 >= n.count {
                        return Self::step_forward(g, view, stack);
                    }
                    return Ok(Some(stack));
                }
                if i == 0 {
                    stack.push((n, 0));
                    return Self::step_back(g, view, stack);
                }
                stack.push((n, i as u64 - 1));
                return Ok(Some(stack));
            }
            stack.push((n, i as u64));
            n = Self::child(g, view, n, i as u64)?;
        }
    }

    /// A scan that just entered a leaf will want the leaf after it (or before it, going
    /// back) next: ask the CPU for it now, so that its cache misses overlap this leaf's work
    /// (leaves are scattered through the heap, and a scan was bound by those misses). Only a
    /// hint: a sibling that does not read cleanly is skipped here and met by the next step.
    fn prefetch_sibling<W: View>(g: &Geo, view: &W, s: &[(Node, u64)], forward: bool) {
        let Some(&(parent, ci)) = s.len().checked_sub(2).and_then(|i| s.get(i)) else {
            return;
        };
        let sibling = match forward {
            true if ci < parent.count => ci + 1,
            false if ci > 0 => ci - 1,
            _ => return,
        };
        if let Ok(ch) = Self::children(g, parent, view) {
            if let Some(&at) = ch.get(sibling as usize) {
                if let Ok(b) = view.slice(PSlice::<u8>::from_raw_parts(at, g.leaf_bytes)) {
                    crate::sys::prefetch(b);
                }
            }
        }
    }

    /// Move a cursor to the next entry (its leaf index may be past the end already).
    fn step_forward<W: View>(
        g: &Geo,
        view: &W,
        mut s: Vec<(Node, u64)>,
    ) -> Result<Option<Vec<(Node, u64)>>> {
        let (leaf, i) = s.pop().expect("a cursor has a leaf");
        if i + 1 < leaf.count {
            s.push((leaf, i + 1));
            return Ok(Some(s));
        }
        loop {
            let Some((n, ci)) = s.pop() else {
                return Ok(None);
            };
            if ci < n.count {
                s.push((n, ci + 1));
                let mut c = Self::child(g, view, n, ci + 1)?;
                while c.level > 0 {
                    s.push((c, 0));
                    c = Self::child(g, view, c, 0)?;
                }
                if c.count == 0 {
                    return Err(corrupt(c.at, "B-tree: empty leaf inside the tree"));
                }
                s.push((c, 0));
                Self::prefetch_sibling(g, view, &s, true);
                return Ok(Some(s));
            }
        }
    }

    /// Move a cursor to the previous entry (its leaf index is 0 or the entry to leave).
    fn step_back<W: View>(
        g: &Geo,
        view: &W,
        mut s: Vec<(Node, u64)>,
    ) -> Result<Option<Vec<(Node, u64)>>> {
        let (leaf, i) = s.pop().expect("a cursor has a leaf");
        if i > 0 && i <= leaf.count {
            s.push((leaf, i - 1));
            return Ok(Some(s));
        }
        loop {
            let Some((n, ci)) = s.pop() else {
                return Ok(None);
            };
            if ci > 0 {
                s.push((n, ci - 1));
                let mut c = Self::child(g, view, n, ci - 1)?;
                while c.level > 0 {
                    s.push((c, c.count));
                    c = Self::child(g, view, c, c.count)?;
                }
                if c.count == 0 {
                    return Err(corrupt(c.at, "B-tree: empty leaf inside the tree"));
                }
                s.push((c, c.count - 1));
                Self::prefetch_sibling(g, view, &s, false);
                return Ok(Some(s));
            }
        }
    }

    /// The entry with the smallest key.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btf.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u8, u8>::new(tx)?; m.insert(tx, &4u8, &0u8)?; m.insert(tx, &2u8, &0u8)?; Ok(m) })?;
    /// assert_eq!(heap.read(|r| Ok(m.first(r)?.map(|(k, _)| *k)))?, Some(2));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn first<W: View>(self, view: &W) -> Result<Option<(&K::Input, &V::Input)>> {
        super::own(self, self.first_raw(view))
    }

    fn first_raw<W: View>(self, view: &W) -> Result<Option<(&K::Input, &V::Input)>> {
        self.range_by(view, Bound::Unbounded, Bound::Unbounded)?
            .next()
            .transpose()
    }

    /// The entry with the largest key.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btla.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u8, u8>::new(tx)?; m.insert(tx, &4u8, &0u8)?; m.insert(tx, &2u8, &0u8)?; Ok(m) })?;
    /// assert_eq!(heap.read(|r| Ok(m.last(r)?.map(|(k, _)| *k)))?, Some(4));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn last<W: View>(self, view: &W) -> Result<Option<(&K::Input, &V::Input)>> {
        super::own(self, self.last_raw(view))
    }

    fn last_raw<W: View>(self, view: &W) -> Result<Option<(&K::Input, &V::Input)>> {
        self.range_by(view, Bound::Unbounded, Bound::Unbounded)?
            .next_back()
            .transpose()
    }

    /// Call `f` with the start offset of every allocation the map holds: its nodes, and what its
    /// keys (separator copies included) and values own. With `tx.usable_size` this accounts for
    /// every byte the map takes (a leak check); the walk checks levels and counts as it goes, and
    /// a node reached twice (a shared subtree: damage) is [`Error::Corrupt`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btb.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u64, u64>::new(tx)?; for k in 0..1000 { m.insert(tx, &k, &k)?; } Ok(m) })?;
    /// let mut nodes = 0;
    /// heap.read(|r| m.for_each_block(r, |_| nodes += 1))?;
    /// assert!(nodes >= 4); // 1,000 entries of 16 bytes: four leaves and a root at least
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn for_each_block<W: View>(self, view: &W, f: impl FnMut(u64)) -> Result<()> {
        super::own(self, self.for_each_block_raw(view, f))
    }

    fn for_each_block_raw<W: View>(self, view: &W, mut f: impl FnMut(u64)) -> Result<()> {
        let h = self.header(view)?;
        if h.height == 0 {
            return Ok(());
        }
        let g = Self::GEO;
        let mut seen = HashSet::new();
        let mut stack = vec![(h.root, h.height - 1)];
        while let Some((at, level)) = stack.pop() {
            if !seen.insert(at) {
                return Err(corrupt(
                    at,
                    "B-tree node reached twice (a shared subtree or a cycle)",
                ));
            }
            let n = Self::node(&g, view, at, level)?;
            f(at);
            for k in Self::keys(n, view)? {
                if let Some(b) = k.owned_block() {
                    f(b);
                }
            }
            if level == 0 {
                for v in Self::vals(&g, n, view)? {
                    if let Some(b) = v.owned_block() {
                        f(b);
                    }
                }
            } else {
                stack.extend(Self::children(&g, n, view)?.iter().map(|&c| (c, level - 1)));
            }
        }
        Ok(())
    }

    /// Verify every invariant: element types, node levels and counts, every leaf at the same
    /// depth and non-empty, keys strictly ascending, separators bounding their subtrees, no node
    /// reached twice (no cycle, no sharing), and the entry count. The first violation is
    /// returned as [`Error::Corrupt`] naming the node.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btck.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u16, u16>::new(tx)?; for k in 0..500u16 { m.insert(tx, &k, &k)?; } Ok(m) })?;
    /// heap.read(|r| m.check(r))?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn check<W: View>(self, view: &W) -> Result<()> {
        super::own(self, self.check_raw(view))
    }

    fn check_raw<W: View>(self, view: &W) -> Result<()> {
        let h = self.header(view)?;
        if h.height == 0 {
            return Ok(());
        }
        let g = Self::GEO;
        let mut seen = HashSet::new();
        // The blocks keys and values own: each by one handle only (a review found two
        // entries damaged into naming one byte string passing `check`, and a removal of one
        // then freeing what the other still named).
        let mut owned = HashSet::new();
        let mut own = |at: u64, b: Option<u64>| match b {
            Some(b) if !owned.insert(b) => Err(corrupt(
                at,
                format!("B-tree: block {b:#x} owned by two keys or values"),
            )),
            _ => Ok(()),
        };
        let mut count = 0u64;
        // (node, level, lower bound, upper bound) as owned keys.
        type Bounds<K> = (
            Option<<<K as Element>::Input as ToOwned>::Owned>,
            Option<<<K as Element>::Input as ToOwned>::Owned>,
        );
        let mut stack: Vec<(u64, u64, Bounds<K>)> = vec![(h.root, h.height - 1, (None, None))];
        while let Some((at, level, (lo, hi))) = stack.pop() {
            if !seen.insert(at) {
                return Err(corrupt(
                    at,
                    "B-tree node reached twice (cycle or shared subtree)",
                ));
            }
            let n = Self::node(&g, view, at, level)?;
            let keys = Self::keys(n, view)?;
            let mut prev: Option<&K::Input> = None;
            for k in keys {
                if K::OWNS_STORAGE {
                    own(at, k.owned_block())?;
                }
                let k = K::load(k, view)?;
                if prev.is_some_and(|p| p >= k) {
                    return Err(corrupt(at, "B-tree node keys not strictly ascending"));
                }
                if lo.as_ref().is_some_and(|l| k < l.borrow())
                    || hi.as_ref().is_some_and(|u| k >= u.borrow())
                {
                    return Err(corrupt(
                        at,
                        "B-tree key outside the bounds its parent's separators give",
                    ));
                }
                prev = Some(k);
            }
            if level == 0 {
                if n.count == 0 {
                    return Err(corrupt(at, "B-tree: empty leaf"));
                }
                let vals = Self::vals(&g, n, view)?;
                if V::OWNS_STORAGE {
                    for v in vals {
                        own(at, v.owned_block())?;
                        V::load(v, view)?;
                    }
                }
                // The slot table names each of the slots `0..count` once.
                let mut named = vec![false; n.count as usize];
                for &s in Self::slots(&g, n, view)? {
                    match named.get_mut(s as usize) {
                        Some(b) if !*b => *b = true,
                        _ => {
                            return Err(corrupt(
                                at,
                                format!("B-tree leaf: slot {s} named twice or past its entries"),
                            ))
                        }
                    }
                }
                count += n.count;
                continue;
            }
            let ch = Self::children(&g, n, view)?;
            // Children pushed right to left so that leaves are met in key order.
            for i in (0..ch.len()).rev() {
                let clo = if i == 0 {
                    lo.as_ref().map(|l| l.borrow().to_owned())
                } else {
                    Some(K::load(&keys[i - 1], view)?.to_owned())
                };
                let chi = if i == keys.len() {
                    hi.as_ref().map(|u| u.borrow().to_owned())
                } else {
                    Some(K::load(&keys[i], view)?.to_owned())
                };
                stack.push((ch[i], level - 1, (clo, chi)));
            }
        }
        if count != h.len {
            return Err(corrupt(
                self.offset(),
                format!("B-tree holds {count} entries, its header says {}", h.len),
            ));
        }
        Ok(())
    }

    /// The tree's shape and how full its nodes are: levels, entries, leaves, internal nodes,
    /// their bytes and capacities, and the fewest entries of any leaf and any internal node
    /// below the root (removal keeps those at a quarter of a node or more: an underfull node
    /// merges with a sibling, or takes entries from it). Reads every node once: a node
    /// reached twice (a shared subtree or a cycle, which only damage makes) gives
    /// [`Error::Corrupt`], as does any node [`check`](Self::check) would refuse by its header.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("btst.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| {
    ///     let m = txheap::PBTreeMap::<u64, u64>::new(tx)?;
    ///     for k in 0..10_000u64 { m.insert(tx, &k, &k)?; }
    ///     for k in 0..9_000u64 { m.remove(tx, &k)?; }
    ///     Ok(m)
    /// })?;
    /// let s = heap.read(|r| m.stats(r))?;
    /// assert_eq!((s.len, s.height), (1_000, 2));
    /// assert!(s.fewest_in_leaf.unwrap() >= s.leaf_capacity / 4);
    /// assert!(s.len <= s.leaves * s.leaf_capacity);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn stats<W: View>(self, view: &W) -> Result<BTreeStats> {
        super::own(self, self.stats_raw(view))
    }

    fn stats_raw<W: View>(self, view: &W) -> Result<BTreeStats> {
        let h = self.header(view)?;
        let g = Self::GEO;
        let mut s = BTreeStats {
            height: h.height,
            len: h.len,
            leaf_capacity: g.leaf_cap,
            inner_capacity: g.inner_cap,
            ..BTreeStats::default()
        };
        if h.height == 0 {
            return Ok(s);
        }
        let mut seen = HashSet::new();
        let mut stack = vec![(h.root, h.height - 1)];
        while let Some((at, level)) = stack.pop() {
            if !seen.insert(at) {
                return Err(corrupt(
                    at,
                    "B-tree node reached twice (a shared subtree or a cycle)",
                ));
            }
            let n = Self::node(&g, view, at, level)?;
            let root = at == h.root;
            s.node_bytes += g.bytes(level);
            if level == 0 {
                if n.count == 0 {
                    return Err(corrupt(at, "B-tree: empty leaf"));
                }
                s.leaves += 1;
                if !root {
                    s.fewest_in_leaf = Some(s.fewest_in_leaf.map_or(n.count, |f| f.min(n.count)));
                }
            } else {
                s.inner_nodes += 1;
                if !root {
                    s.fewest_in_inner = Some(s.fewest_in_inner.map_or(n.count, |f| f.min(n.count)));
                }
                stack.extend(Self::children(&g, n, view)?.iter().map(|&c| (c, level - 1)));
            }
        }
        Ok(s)
    }
}

/// The shape of a [`PBTreeMap`] and how full its nodes are, from [`PPtr::stats`] (as LMDB's
/// `mdb_stat` or redb's table statistics give theirs).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("btsts.heap"), txheap::Options::new())?;
/// let m = heap.transaction(|tx| txheap::PBTreeMap::<u32, u32>::new(tx))?;
/// let s = heap.read(|r| m.stats(r))?;
/// assert_eq!((s.height, s.len, s.leaves, s.fewest_in_leaf), (0, 0, 0, None));
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BTreeStats {
    /// Levels of nodes: 0 for an empty map, 1 when the root is a leaf.
    pub height: u64,
    /// Entries (the header's count).
    pub len: u64,
    /// Leaf nodes.
    pub leaves: u64,
    /// Internal nodes.
    pub inner_nodes: u64,
    /// Bytes of all nodes (byte-string keys and values have blocks of their own, not counted).
    pub node_bytes: u64,
    /// Entries a leaf holds at most.
    pub leaf_capacity: u64,
    /// Keys an internal node holds at most (it has one child more).
    pub inner_capacity: u64,
    /// The fewest entries in any leaf but the root; `None` when the root is the only leaf.
    pub fewest_in_leaf: Option<u64>,
    /// The fewest keys in any internal node but the root; `None` when there is none.
    pub fewest_in_inner: Option<u64>,
}

/// An iterator over a [`PBTreeMap`]'s entries in key order (both ways), from
/// [`PPtr::range`]. Items borrow the view: keys and values are read in place.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("btit.heap"), txheap::Options::new())?;
/// let m = heap.transaction(|tx| { let m = txheap::PBTreeMap::<u8, u8>::new(tx)?; for k in 0..10u8 { m.insert(tx, &k, &k)?; } Ok(m) })?;
/// let total: u64 = heap.read(|r| m.range(r, ..)?.map(|e| e.map(|(_, v)| *v as u64)).sum())?;
/// assert_eq!(total, 45);
/// # Ok::<(), txheap::Error>(())
/// ```
pub struct Range<'v, K: Element, V, W> {
    view: &'v W,
    g: Geo,
    front: Vec<(Node, u64)>,
    back: Vec<(Node, u64)>,
    /// The keys and values of the front and back cursors' leaves (by leaf offset), read once
    /// per leaf.
    front_leaf: Leaf<'v, K, V>,
    back_leaf: Leaf<'v, K, V>,
    done: bool,
    /// Entries the header counts that the range has not yielded yet: a walk that would yield
    /// more met a shared subtree (damage), whose paths could multiply without end.
    left: u64,
    /// The keys each end yielded last: every key must follow the one before it (precede, from
    /// the back). `left` alone trusts the header's count, and a review found a tree damaged
    /// into shared subtrees with a count of 2^64-1 walking the shared leaf 254^3 times; keys
    /// in strict order can repeat no entry, so the walk ends whatever the count says.
    last_front: Option<&'v K::Input>,
    last_back: Option<&'v K::Input>,
    /// The map's offset (for the error).
    map: u64,
    _kv: PhantomData<fn() -> (K, V)>,
}

/// A leaf's offset with its keys, slot table and values, read in place.
type Leaf<'v, K, V> = Option<(u64, &'v [K], &'v [u16], &'v [V])>;

impl<'v, K, V, W> Range<'v, K, V, W>
where
    K: Element,
    V: Element,
    K::Input: Ord + ToOwned,
    V::Input: ToOwned,
    W: View,
{
    fn key_at(&self, c: &[(Node, u64)]) -> Result<&'v K> {
        let &(leaf, i) = c.last().expect("a cursor has a leaf");
        PPtr::<PBTreeMap<K, V>>::keys(leaf, self.view)?
            .get(i as usize)
            .ok_or_else(|| corrupt(leaf.at, "B-tree cursor past its leaf"))
    }

    /// The entry under cursor `c`, through the cached leaf `cache` (refreshed when the cursor
    /// moved to another leaf).
    fn entry_cached(
        view: &'v W,
        g: &Geo,
        c: &[(Node, u64)],
        cache: &mut Leaf<'v, K, V>,
    ) -> Result<(&'v K::Input, &'v V::Input)> {
        let &(leaf, i) = c.last().expect("a cursor has a leaf");
        let (ks, ss, vs) = match *cache {
            Some((at, ks, ss, vs)) if at == leaf.at => (ks, ss, vs),
            _ => {
                let ks = PPtr::<PBTreeMap<K, V>>::keys(leaf, view)?;
                let ss = PPtr::<PBTreeMap<K, V>>::slots(g, leaf, view)?;
                let vs = PPtr::<PBTreeMap<K, V>>::vals(g, leaf, view)?;
                *cache = Some((leaf.at, ks, ss, vs));
                (ks, ss, vs)
            }
        };
        let (Some(k), Some(&s)) = (ks.get(i as usize), ss.get(i as usize)) else {
            return Err(corrupt(leaf.at, "B-tree cursor past its leaf"));
        };
        let v = PPtr::<PBTreeMap<K, V>>::slot_val(leaf.at, vs, s)?;
        Ok((K::load(k, view)?, V::load(v, view)?))
    }

    fn same(&self) -> bool {
        let (a, b) = (
            self.front.last().expect("cursor"),
            self.back.last().expect("cursor"),
        );
        a.0.at == b.0.at && a.1 == b.1
    }

    fn fail(&mut self, e: Error) -> Option<Result<(&'v K::Input, &'v V::Input)>> {
        self.done = true;
        let map = PPtr::<PBTreeMap<K, V>>::from_offset(self.map);
        Some(Err(super::own_error(map, e)))
    }

    /// A key that does not follow the one before it, in the walk's direction, met in the leaf
    /// at the end of `path`: named at that leaf (the map's header before, which said nothing
    /// of where the damage lies).
    fn out_of_order(map: u64, path: &[(Node, u64)]) -> Error {
        let leaf = path.last().map_or(map, |(n, _)| n.at);
        corrupt(
            leaf,
            format!(
                "B-tree range of the map at {map:#x} met a key out of order in the leaf at \
                 {leaf:#x} (a shared subtree, or damage)"
            ),
        )
    }

    /// Count one entry about to be yielded; `Err` (the error to yield) past the header's count.
    fn count_one(&mut self) -> Result<()> {
        if self.left == 0 {
            return Err(corrupt(
                self.map,
                "B-tree range walked more entries than its header counts (a shared subtree, \
                 or damage)",
            ));
        }
        self.left -= 1;
        Ok(())
    }
}

impl<'v, K, V, W> Iterator for Range<'v, K, V, W>
where
    K: Element,
    V: Element,
    K::Input: Ord + ToOwned + 'v,
    V::Input: ToOwned + 'v,
    W: View,
{
    type Item = Result<(&'v K::Input, &'v V::Input)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Err(err) = self.count_one() {
            return self.fail(err);
        }
        let e = match Self::entry_cached(self.view, &self.g, &self.front, &mut self.front_leaf) {
            Ok(e) => e,
            Err(err) => return self.fail(err),
        };
        if self.last_front.is_some_and(|p| *e.0 <= *p) {
            return self.fail(Self::out_of_order(self.map, &self.front));
        }
        self.last_front = Some(e.0);
        if self.same() {
            self.done = true;
        } else if let Some(last) = self.front.last_mut().filter(|(l, i)| i + 1 < l.count) {
            last.1 += 1; // the next entry of the same leaf
        } else {
            let f = std::mem::take(&mut self.front);
            match PPtr::<PBTreeMap<K, V>>::step_forward(&self.g, self.view, f) {
                Ok(Some(f)) => self.front = f,
                Ok(None) => {
                    return self.fail(corrupt(
                        0,
                        "B-tree cursor ran off the tree before the range's end",
                    ))
                }
                Err(err) => return self.fail(err),
            }
        }
        Some(Ok(e))
    }
}

impl<'v, K, V, W> DoubleEndedIterator for Range<'v, K, V, W>
where
    K: Element,
    V: Element,
    K::Input: Ord + ToOwned + 'v,
    V::Input: ToOwned + 'v,
    W: View,
{
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Err(err) = self.count_one() {
            return self.fail(err);
        }
        let e = match Self::entry_cached(self.view, &self.g, &self.back, &mut self.back_leaf) {
            Ok(e) => e,
            Err(err) => return self.fail(err),
        };
        if self.last_back.is_some_and(|p| *e.0 >= *p) {
            return self.fail(Self::out_of_order(self.map, &self.back));
        }
        self.last_back = Some(e.0);
        if self.same() {
            self.done = true;
        } else if let Some(last) = self
            .back
            .last_mut()
            .filter(|(l, i)| *i > 0 && *i <= l.count)
        {
            last.1 -= 1; // the previous entry of the same leaf
        } else {
            let b = std::mem::take(&mut self.back);
            match PPtr::<PBTreeMap<K, V>>::step_back(&self.g, self.view, b) {
                Ok(Some(b)) => self.back = b,
                Ok(None) => {
                    return self.fail(corrupt(
                        0,
                        "B-tree cursor ran off the tree before the range's start",
                    ))
                }
                Err(err) => return self.fail(err),
            }
        }
        Some(Ok(e))
    }
}
