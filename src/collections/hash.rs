//! `PHashMap<K, V>`: an unordered map, extendible hashing over page-sized buckets.

use std::hash::{BuildHasher, Hash, Hasher};
use std::marker::PhantomData;

use super::siphash::SipHasher13;
use super::{check_id, corrupt, record_id, Element, View};
use crate::alloc::SMALL_MAX;
use crate::error::Result;
use crate::limits::ALIGN_MAX;
use crate::pptr::{PPtr, PSlice};
use crate::stored::{Field, Stored};
use crate::tx::{Tx, Writable};

/// The bytes a bucket aims at: two pages (a directory of half the size of one-page buckets'
/// stays in a core's second-level cache longer: measured on W4-get).
const BUCKET_TARGET: u64 = 8192;
/// The fewest slots a bucket has (entries larger than a page make larger buckets).
const MIN_SLOTS: u64 = 8;
/// A bucket's header: its local depth `l` (u64) and its prefix: the `l` top hash bits that every
/// key in it starts with, left-aligned in a u64. One fingerprint byte per slot follows.
const BUCKET_HEADER: u64 = 16;
/// The deepest a directory or bucket may go: 2^40 directory entries are far past any heap, so a
/// split that would need more means keys whose hashes agree in 40 bits (damage, not chance).
const MAX_DEPTH: u64 = 40;

/// The allocation unit of buckets: 16-byte aligned, so keys and values up to that alignment fit.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(16))]
struct Unit([u64; 2]);

/// An unordered map from `K` to `V` in the heap, by extendible hashing: a directory of
/// `2^depth` bucket pointers indexed by the top bits of the key's hash, and buckets of about
/// 8 KiB (a header, one fingerprint byte per slot, then the slots) with linear probing inside
/// each and backward-shift removal, so a lookup reads one directory word, a fingerprint and one
/// slot, and never meets a tombstone. Keys are hashed with SipHash-1-3 under a 128-bit seed
/// drawn from the operating system's randomness when the first bucket is made, and stored in
/// the header: a hostile key set cannot aim at one bucket without it. Keys are plain data
/// (`Hash + Eq`) or byte strings ([`crate::PBytes`], [`crate::PString`]).
///
/// A full bucket splits in two inside the transaction whose insert finds it full: its entries
/// are divided by the next bit of their hash, and the directory doubles when the bucket was as
/// deep as it. So growth touches one bucket (and now and then the directory), never the whole
/// map, and the file holds only live buckets, about 69% full on average. Removal is the
/// reverse: a bucket left less than a quarter full merges with its buddy when the two fit in
/// three quarters of one, and the directory halves when no bucket is as deep as it, so a map
/// that loses most of its keys gives its space back. A map of one bucket has no directory.
/// The header (64 bytes) is an empty map when zero.
///
/// ```
/// use txheap::{PHashMap, PPtr, PString};
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("hash.heap"), txheap::Options::new())?;
/// let m: PPtr<PHashMap<PString, u64>> = heap.transaction(|tx| {
///     let m = PHashMap::new(tx)?;
///     m.insert(tx, "apples", &3)?;
///     m.insert(tx, "pears", &5)?;
///     let n = m.get_or_insert(tx, "apples", &0)?;
///     *tx.get_mut(n)? += 1;
///     Ok(m)
/// })?;
/// assert_eq!(heap.read(|r| Ok(m.get(r, "apples")?.copied()))?, Some(4));
/// assert_eq!(heap.read(|r| m.len(r))?, 2);
/// # Ok::<(), txheap::Error>(())
/// ```
#[repr(C)]
pub struct PHashMap<K, V> {
    dir: u64,
    depth: u64,
    len: u64,
    seed0: u64,
    seed1: u64,
    key_id: u64,
    val_id: u64,
    buckets: u64,
    _kv: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for PHashMap<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for PHashMap<K, V> {}
// SAFETY: repr(C) of eight u64 and a ZST: no padding; all-zero is the empty map.
unsafe impl<K, V> bytemuck::Zeroable for PHashMap<K, V> {}
// SAFETY: as above; every bit pattern is a value (every operation checks what it reads).
unsafe impl<K: 'static, V: 'static> bytemuck::Pod for PHashMap<K, V> {}

impl<K, V> std::fmt::Debug for PHashMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PHashMap")
            .field("dir", &self.dir)
            .field("depth", &self.depth)
            .field("buckets", &self.buckets)
            .field("len", &self.len)
            .finish()
    }
}

impl<K: Stored, V: Stored> Stored for PHashMap<K, V> {
    const NAME: &'static str = "PHashMap";
    const FIELDS: &'static [Field] = &[];
    // "layout" 2: extendible hashing (1, a single table, is no longer read).
    const ID: u64 = Field::struct_id(
        "PHashMap",
        64,
        8,
        &[
            Field::element("K", K::ID),
            Field::element("V", V::ID),
            Field::element("layout", 2),
        ],
    );
    const SHAPE: u64 = Field::struct_id(
        "PHashMap",
        64,
        8,
        &[
            Field::element("K", K::SHAPE),
            Field::element("V", V::SHAPE),
            Field::element("layout", 2),
        ],
    );
    fn display_name() -> String {
        format!("PHashMap<{}, {}>", K::display_name(), V::display_name())
    }

    /// The directory, the buckets, and what each entry's key and value reach.
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> Result<()> {
        let h = *self;
        check_id::<K, _>(walk.reader(), h.key_id, walk.at(), "key")?;
        check_id::<V, _>(walk.reader(), h.val_id, walk.at(), "value")?;
        if h.dir == 0 {
            return Ok(());
        }
        if h.depth > MAX_DEPTH {
            return Err(corrupt(
                walk.at(),
                format!("PHashMap header: directory depth {}", h.depth),
            ));
        }
        // A map reached through several copies of its handle is walked once (a review found
        // each copy of a B-tree's handle walking the tree again).
        if !walk.first_structure::<Self>(h.dir) {
            return Ok(());
        }
        let r = walk.reader();
        let g = Geo::of::<K, V>();
        if h.depth > 0 && !walk.block(h.dir, 8 << h.depth) {
            return Ok(());
        }
        let dir = h.dir_entries(r)?;
        // A bucket owns an aligned run of directory entries: walk each once. (`None` before
        // the first: a bucket pointer of 0 in the first entry was taken for "the same bucket
        // again" and skipped, found by review.)
        let mut last = None;
        for (i, &b) in dir.iter().enumerate() {
            if Some(b) == last {
                continue;
            }
            last = Some(b);
            if bad_bucket(b, &g) {
                return Err(corrupt(
                    h.dir + 8 * i as u64,
                    format!("PHashMap directory: bucket pointer {b:#x}"),
                ));
            }
            if !walk.block(b, g.bytes)
                || !(K::HOLDS_POINTERS || V::HOLDS_POINTERS)
                || (h.depth > 0 && !walk.first_structure::<Self>(b))
            {
                continue;
            }
            let fps = r.slice(PSlice::<u8>::from_raw_parts(b + BUCKET_HEADER, g.slots))?;
            walk.inside(b, |walk| {
                for (i, &fp) in fps.iter().enumerate() {
                    if fp != 0 {
                        let at = b + g.at(i as u64);
                        r.get(PPtr::<K>::from_offset(at))?.refs(walk)?;
                        r.get(PPtr::<V>::from_offset(at + g.val_at))?.refs(walk)?;
                    }
                }
                Ok::<(), crate::Error>(())
            })?;
        }
        Ok(())
    }
}

impl<K: Stored, V: Stored> Element for PHashMap<K, V> {
    plain_element_body!();
}

impl<K, V> PHashMap<K, V> {
    /// The directory's entries (of a map with buckets, this header): at depth 0 the header's
    /// pointer to its one bucket, else the directory allocation's first `2^depth` words.
    fn dir_entries<'v, W: View>(&self, view: &'v W) -> Result<std::borrow::Cow<'v, [u64]>> {
        Ok(if self.depth == 0 {
            std::borrow::Cow::Owned(vec![self.dir])
        } else {
            std::borrow::Cow::Borrowed(
                view.slice(PSlice::<u64>::from_raw_parts(self.dir, 1 << self.depth))?,
            )
        })
    }

    /// Number of entries (from a header read with `get`).
    ///
    /// ```
    /// assert_eq!(<txheap::PHashMap<u64, u64> as txheap::bytemuck::Zeroable>::zeroed().len(), 0);
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the map is empty.
    ///
    /// ```
    /// assert!(<txheap::PHashMap<u64, u64> as txheap::bytemuck::Zeroable>::zeroed().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in all buckets (entries the map holds before its next split, at the most).
    ///
    /// ```
    /// assert_eq!(<txheap::PHashMap<u64, u64> as txheap::bytemuck::Zeroable>::zeroed().capacity(), 0);
    /// ```
    pub fn capacity(&self) -> u64 {
        self.buckets.saturating_mul(Geo::of::<K, V>().slots)
    }

    /// Number of buckets (each about 8 KiB).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hbk.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u64, u64>::new(tx)?;
    ///     for k in 0..1000u64 { m.insert(tx, &k, &k)?; }
    ///     Ok(m)
    /// })?;
    /// let h = heap.read(|r| r.get(m).copied())?;
    /// assert!(h.buckets() > 1 && h.capacity() >= 1000);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn buckets(&self) -> u64 {
        self.buckets
    }
}

const fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Whether `b` cannot be a bucket: null, misaligned, or ending past 2^64 (offsets inside a
/// bucket are computed before its checked read: a review found `b + 16` overflowing, a panic
/// in a debug build).
fn bad_bucket(b: u64, g: &Geo) -> bool {
    b == 0 || b & 15 != 0 || b > u64::MAX - g.bytes
}

/// Bucket geometry: `[header: 16 bytes][fingerprints: slots bytes][slots × stride]`, each slot
/// the key then the value at their alignments. A fingerprint is 0 for an empty slot, else
/// [`fingerprint`] of the key's hash: a probe reads the header line's fingerprints and one slot.
#[derive(Clone, Copy)]
struct Geo {
    slots: u64,
    stride: u64,
    val_at: u64,
    slots_at: u64,
    bytes: u64,
}

impl Geo {
    fn of<K, V>() -> Geo {
        let (ka, va) = (
            std::mem::align_of::<K>() as u64,
            std::mem::align_of::<V>() as u64,
        );
        let val_at = align_up(std::mem::size_of::<K>() as u64, va);
        let stride = align_up(val_at + std::mem::size_of::<V>() as u64, ka.max(va));
        let slots_at = |n: u64| align_up(BUCKET_HEADER + n, ka.max(va));
        let mut slots = (BUCKET_TARGET - BUCKET_HEADER) / (stride + 1);
        while slots > MIN_SLOTS && slots_at(slots) + slots * stride > BUCKET_TARGET {
            slots -= 1;
        }
        let slots = slots.max(MIN_SLOTS);
        Geo {
            slots,
            stride,
            val_at,
            slots_at: slots_at(slots),
            bytes: align_up(slots_at(slots) + slots * stride, 16),
        }
    }

    fn fp(&self, b: u64, i: u64) -> PPtr<u8> {
        PPtr::from_offset(b + BUCKET_HEADER + i)
    }

    /// Byte offset of slot `i` in a bucket.
    fn at(&self, i: u64) -> u64 {
        self.slots_at + i * self.stride
    }

    fn slot(&self, b: u64, i: u64) -> PSlice<u8> {
        PSlice::from_raw_parts(b + self.at(i), self.stride)
    }

    /// The slot a hash starts probing from (its low 32 bits; the directory uses the top).
    fn ideal(&self, hash: u64) -> u64 {
        ((hash & 0xffff_ffff) * self.slots) >> 32
    }

    fn next(&self, i: u64) -> u64 {
        if i + 1 == self.slots {
            0
        } else {
            i + 1
        }
    }
}

/// A slot's fingerprint: hash bits 32..38 (not the low bits that pick the ideal slot, and not
/// the directory's top bits while it has at most 2^25 entries: past that, keys of one bucket
/// share them and fingerprints stop filtering, which costs key comparisons, not correctness)
/// with the top bit set, so never 0 (an empty slot).
fn fingerprint(hash: u64) -> u8 {
    0x80 | ((hash >> 32) as u8 & 0x7f)
}

/// The directory entry of `hash` in a directory of depth `depth`: its top `depth` bits.
fn dir_index(hash: u64, depth: u64) -> u64 {
    if depth == 0 {
        0
    } else {
        hash >> (64 - depth)
    }
}

/// What a probe of one bucket found (a hit with its slot's bytes, read once).
enum Probe<'v> {
    Found(u64, &'v [u8]),
    Vacant(u64),
    Full,
}

impl<K, V> PHashMap<K, V>
where
    K: Element,
    V: Element,
    K::Input: Hash + Eq,
{
    /// Allocate an empty map of its own; the pointer can be stored anywhere.
    /// `Error::UnsupportedAlignment` if `K` or `V` is aligned above 16 bytes (a bucket's), here and from
    /// every operation on a zeroed handle.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmn.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| txheap::PHashMap::<u32, u32>::new(tx))?;
    /// assert_eq!(heap.read(|r| m.len(r))?, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn new(tx: &mut Tx<'_>) -> Result<PPtr<PHashMap<K, V>>> {
        Self::aligned()?;
        tx.record_type::<K>()?;
        tx.record_type::<V>()?;
        tx.alloc(PHashMap {
            dir: 0,
            depth: 0,
            len: 0,
            seed0: 0,
            seed1: 0,
            key_id: K::ID,
            val_id: V::ID,
            buckets: 0,
            _kv: PhantomData,
        })
    }

    /// Buckets are placed at 16 bytes: a key or value type aligned above that is refused by
    /// `new` and every operation.
    fn aligned() -> Result<()> {
        super::aligned_at_most::<K, V>(16.min(ALIGN_MAX))
    }
}

impl<K, V> PPtr<PHashMap<K, V>>
where
    K: Element,
    V: Element,
    K::Input: Hash + Eq,
{
    /// The header, for an operation that will write it: first checked to be a live
    /// allocation, before the operation allocates anything. (A review found a handle kept
    /// after its collection was freed accepted: the operation's first allocation took the
    /// freed header's block, and the header written last pointed at itself.)
    #[inline]
    fn header_mut(self, tx: &mut Tx<'_>) -> Result<PHashMap<K, V>> {
        tx.writable(
            self.offset(),
            std::mem::size_of::<PHashMap<K, V>>() as u64,
            8,
        )?;
        self.header(tx)
    }

    fn header<W: View>(self, view: &W) -> Result<PHashMap<K, V>> {
        let h = *view.get(self)?;
        check_id::<K, _>(view, h.key_id, self.offset(), "key")?;
        check_id::<V, _>(view, h.val_id, self.offset(), "value")?;
        PHashMap::<K, V>::aligned()?;
        let g = Geo::of::<K, V>();
        let empty = h.dir == 0;
        let fits = h
            .buckets
            .checked_mul(g.slots)
            .is_some_and(|slots| h.len <= slots);
        // The directory (or, at depth 0, the one bucket) must be aligned and end below 2^64:
        // offsets inside it are computed before any checked read (a review found a damaged
        // offset near 2^64 overflowing `dir + index * 8`, a panic in a debug build).
        // (Masks and compares only: this runs on every lookup.)
        let dir_ok = |h: &PHashMap<K, V>| match h.depth {
            0 => h.dir & 15 == 0 && h.dir <= u64::MAX - g.bytes,
            d => h.dir & 7 == 0 && h.dir <= u64::MAX - (8 << d),
        };
        if h.depth > MAX_DEPTH
            || !fits
            || empty != (h.buckets == 0)
            || (empty && (h.depth != 0 || h.len != 0))
            || h.buckets > 1 << h.depth
            || (!empty && !dir_ok(&h))
        {
            return Err(corrupt(
                self.offset(),
                format!(
                    "PHashMap header: directory {:#x} of depth {}, {} buckets, length {}",
                    h.dir, h.depth, h.buckets, h.len
                ),
            ));
        }
        Ok(h)
    }

    fn hash(h: &PHashMap<K, V>, key: &K::Input) -> u64 {
        let mut s = SipHasher13::new(h.seed0, h.seed1);
        key.hash(&mut s);
        s.finish()
    }

    /// The bucket `hash` belongs to, as the directory names it (not yet checked). At depth 0
    /// the header points at the map's one bucket: a small map has no directory allocation.
    fn bucket_of<W: View>(h: &PHashMap<K, V>, view: &W, hash: u64) -> Result<u64> {
        if h.depth == 0 {
            return Ok(h.dir);
        }
        Ok(*view.get(PPtr::<u64>::from_offset(
            h.dir + dir_index(hash, h.depth) * 8,
        ))?)
    }

    /// The bucket `hash` belongs to, and its local depth, checked: a directory entry aimed at
    /// a bucket whose prefix is not the hash's is an error, not a key silently missing.
    fn bucket<W: View>(h: &PHashMap<K, V>, view: &W, hash: u64) -> Result<(u64, u64)> {
        let b = Self::bucket_of(h, view, hash)?;
        Self::verify_bucket(h, view, b, hash)
    }

    /// Check that bucket `b`, which the directory names for `hash`, is one `hash` belongs in.
    fn verify_bucket<W: View>(
        h: &PHashMap<K, V>,
        view: &W,
        b: u64,
        hash: u64,
    ) -> Result<(u64, u64)> {
        let slot = h.dir + dir_index(hash, h.depth) * 8;
        let (b, l, prefix) = Self::bucket_depth(h, view, b, slot)?;
        if l > 0 && (hash ^ prefix) >> (64 - l) != 0 {
            return Err(corrupt(
                slot,
                format!(
                    "PHashMap directory entry {}: bucket {b:#x} holds prefix {prefix:#x}/{l}, \
                     not this key's",
                    dir_index(hash, h.depth)
                ),
            ));
        }
        Ok((b, l))
    }

    /// The local depth and prefix of bucket `b` (named by the directory word at `slot`); the
    /// depth checked.
    fn bucket_depth<W: View>(
        h: &PHashMap<K, V>,
        view: &W,
        b: u64,
        slot: u64,
    ) -> Result<(u64, u64, u64)> {
        if bad_bucket(b, &Geo::of::<K, V>()) {
            return Err(corrupt(
                slot,
                format!("PHashMap directory: bucket pointer {b:#x}"),
            ));
        }
        let [l, prefix] = *view.get(PPtr::<[u64; 2]>::from_offset(b))?;
        if l > h.depth {
            return Err(corrupt(
                b,
                format!(
                    "PHashMap bucket of depth {l} under a directory of depth {}",
                    h.depth
                ),
            ));
        }
        Ok((b, l, prefix))
    }

    /// (Write paths.) Bucket `b` is an allocation of its own, as large as a bucket: a
    /// damaged directory word aimed inside another object would otherwise have the map's
    /// writes change that object (found by review: zeroed bytes read as an empty bucket of
    /// depth 0, and an insert stored its key there and committed).
    fn own_bucket(tx: &Tx<'_>, g: &Geo, b: u64) -> Result<()> {
        match tx.usable_size(PPtr::<u8>::from_offset(b)) {
            Some(u) if u >= g.bytes => Ok(()),
            _ => Err(corrupt(
                b,
                format!(
                    "PHashMap bucket {b:#x} is not an allocation of its own ({} bytes)",
                    g.bytes
                ),
            )),
        }
    }

    /// (Writes of directory words, at depth > 0.) The directory is an allocation of its own,
    /// as large as its words: a damaged directory pointer inside another object would
    /// otherwise have a split or merge write bucket pointers into that object (found by
    /// review).
    fn dir_writable(tx: &mut Tx<'_>, h: &PHashMap<K, V>, g: &Geo) -> Result<Writable> {
        let len = Self::dir_words(g, h.depth) * 8;
        super::own_block_writable(tx, (h.dir, len, 8), h.dir, || "PHashMap directory".into())
    }

    fn fp_at<W: View>(g: &Geo, view: &W, b: u64, i: u64) -> Result<u8> {
        Ok(*view.get(g.fp(b, i))?)
    }

    fn key_ptr(g: &Geo, b: u64, i: u64) -> PPtr<K> {
        PPtr::from_offset(b + g.at(i))
    }

    fn val_ptr(g: &Geo, b: u64, i: u64) -> PPtr<V> {
        PPtr::from_offset(b + g.at(i) + g.val_at)
    }

    /// The hash of the key in slot `i` of bucket `b`.
    fn hash_at<W: View>(h: &PHashMap<K, V>, g: &Geo, view: &W, b: u64, i: u64) -> Result<u64> {
        Ok(Self::hash(
            h,
            K::load(view.get(Self::key_ptr(g, b, i))?, view)?,
        ))
    }

    /// Probe bucket `b` for `key`: where it is, the empty slot where it would go, or full. The
    /// fingerprints come in one checked read (in a transaction, a bucket whose fingerprints are
    /// partly staged is composed): one stage lookup per probe sequence instead of one per slot.
    fn find<'v, W: View>(
        g: &Geo,
        view: &'v W,
        b: u64,
        key: &K::Input,
        hash: u64,
    ) -> Result<Probe<'v>> {
        let fps = view.slice(PSlice::<u8>::from_raw_parts(b + BUCKET_HEADER, g.slots))?;
        let want = fingerprint(hash);
        let mut i = g.ideal(hash);
        for _ in 0..g.slots {
            let f = fps[i as usize];
            if f == 0 {
                return Ok(Probe::Vacant(i));
            }
            if f == want {
                let slot = view.slice(g.slot(b, i))?;
                if K::load(Self::field::<K>(slot, 0, b + g.at(i))?, view)? == key {
                    return Ok(Probe::Found(i, slot));
                }
            }
            i = g.next(i);
        }
        Ok(Probe::Full)
    }

    /// The key or value at byte `at` of a slot's bytes (`slot_at` names the slot in errors).
    fn field<T: bytemuck::Pod>(slot: &[u8], at: u64, slot_at: u64) -> Result<&T> {
        let at = at as usize;
        bytemuck::try_from_bytes(&slot[at..at + std::mem::size_of::<T>()])
            .map_err(|_| corrupt(slot_at, "PHashMap slot misaligned"))
    }

    /// Where `key` is: its bucket and slot, and the slot's bytes.
    fn locate<'v, W: View>(
        h: &PHashMap<K, V>,
        g: &Geo,
        view: &'v W,
        key: &K::Input,
    ) -> Result<Option<(u64, u64, &'v [u8])>> {
        if h.dir == 0 {
            return Ok(None);
        }
        // A hit proves the directory right for this key (its key is in the bucket), so the
        // bucket's depth and prefix are read only to confirm a miss: one line less per hit.
        let hash = Self::hash(h, key);
        let b = Self::bucket_of(h, view, hash)?;
        if bad_bucket(b, g) {
            Self::verify_bucket(h, view, b, hash)?;
        }
        Ok(match Self::find(g, view, b, key, hash)? {
            Probe::Found(i, slot) => Some((b, i, slot)),
            _ => {
                Self::verify_bucket(h, view, b, hash)?;
                None
            }
        })
    }

    /// The number of entries.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hml.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u8, u8>::new(tx)?; m.insert(tx, &1u8, &2u8)?; Ok(m) })?;
    /// assert_eq!(heap.read(|r| m.len(r))?, 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn len<W: View>(self, view: &W) -> Result<u64> {
        Ok(self.header(view)?.len)
    }

    /// The value stored under `key`, read in place.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmg.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u64, [u8; 8]>::new(tx)?; m.insert(tx, &7u64, &[1u8; 8])?; Ok(m) })?;
    /// assert_eq!(heap.read(|r| Ok(m.get(r, &7)?.copied()))?, Some([1; 8]));
    /// assert_eq!(heap.read(|r| Ok(m.get(r, &8)?.copied()))?, None);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get<'v, W: View>(self, view: &'v W, key: &K::Input) -> Result<Option<&'v V::Input>> {
        super::own(self, self.get_raw(view, key))
    }

    fn get_raw<'v, W: View>(self, view: &'v W, key: &K::Input) -> Result<Option<&'v V::Input>> {
        let h = self.header(view)?;
        let g = Geo::of::<K, V>();
        match Self::locate(&h, &g, view, key)? {
            Some((b, i, slot)) => {
                let v = Self::field::<V>(slot, g.val_at, b + g.at(i))?;
                Ok(Some(V::load(v, view)?))
            }
            None => Ok(None),
        }
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmc.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u8, u8>::new(tx)?; m.insert(tx, &1u8, &2u8)?; Ok(m) })?;
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
    /// # let heap = txheap::Heap::create(dir.path().join("hmgm.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u8, u32>::new(tx)?;
    ///     m.insert(tx, &1u8, &10u32)?;
    ///     let p = m.get_mut(tx, &1)?.expect("present");
    ///     *tx.get_mut(p)? += 5;
    ///     assert_eq!(m.get(tx, &1)?, Some(&15));
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    ///
    /// A byte-string value has none (it would not compile):
    ///
    /// ```compile_fail
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmgmb.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u8, txheap::PBytes>::new(tx)?;
    ///     m.get_mut(tx, &1)?;
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
        let g = Geo::of::<K, V>();
        match Self::locate(&h, &g, tx, key)? {
            Some((b, i, _)) => {
                Self::own_bucket(tx, &g, b)?;
                Ok(Some(Self::val_ptr(&g, b, i)))
            }
            None => Ok(None),
        }
    }

    /// Entry-style update: the pointer to `key`'s value handle, inserting `value` first if the
    /// key is absent.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmgi.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<txheap::PBytes, u32>::new(tx)?;
    ///     for w in ["a", "b", "a"] {
    ///         let n = m.get_or_insert(tx, w.as_bytes(), &0u32)?;
    ///         *tx.get_mut(n)? += 1;
    ///     }
    ///     assert_eq!(m.get(tx, b"a")?, Some(&2));
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
            tx.op("PHashMap::get_or_insert", |tx| {
                super::get_or_insert(
                    tx,
                    |tx| self.get_mut(tx, key),
                    |tx| self.insert(tx, key, value),
                    self.offset(),
                    "PHashMap: a key inserted by get_or_insert is not found again (its Eq is not \
                 reflexive, or the map is damaged)",
                )
            }),
        )
    }

    /// Insert `key` -> `value`. Returns whether the key was present (its old value is then
    /// released and replaced).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmi.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u32, u64>::new(tx)?;
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
            tx.op("PHashMap::insert", |tx| self.insert_body(tx, key, value)),
        )
    }

    fn insert_body(self, tx: &mut Tx<'_>, key: &K::Input, value: &V::Input) -> Result<bool> {
        let mut h = self.header_mut(tx)?;
        let g = Geo::of::<K, V>();
        // The value first, before the first bucket: a value the heap cannot hold is refused
        // before the insert changed anything (`Tx::op`; found by review).
        let v = V::store(tx, value)?;
        if h.dir == 0 {
            let r = std::collections::hash_map::RandomState::new();
            h.seed0 = r.hash_one(0x5eed_u64);
            h.seed1 = r.hash_one(0xf00d_u64);
            h.dir = Self::new_bucket(tx, &g, 0, 0, &[])?;
            h.depth = 0;
            h.buckets = 1;
        }
        let hash = Self::hash(&h, key);
        loop {
            let (b, l) = Self::bucket(&h, tx, hash)?;
            match Self::find(&g, tx, b, key, hash)? {
                Probe::Found(i, _) => {
                    let vp = Self::val_ptr(&g, b, i);
                    let old = *tx.get(vp)?;
                    // (A zero-sized value's place is one past its slot, at the bucket's end for
                    // the last one: nothing to write, and writing it was refused as outside the
                    // bucket: found by review.)
                    if std::mem::size_of_val(&v) != 0 {
                        // The bucket must be an allocation of its own (see `own_bucket`),
                        // checked with the write's own allocation check.
                        let w = tx.writable_block(b, g.bytes, 1)?;
                        tx.slice_mut_in(&w, PSlice::<V>::from_raw_parts(vp.offset(), 1))?[0] = v;
                    }
                    old.release(tx)?;
                    return Ok(true);
                }
                Probe::Vacant(i) => {
                    let k = K::store(tx, key)?;
                    // The slot and its fingerprint byte lie in one bucket: one writability
                    // check for both (made after the stores, which may allocate), which also
                    // makes sure the bucket is an allocation of its own (see `own_bucket`).
                    let w = tx.writable_block(b, g.bytes, 1)?;
                    Self::write_slot(tx.slice_mut_in(&w, g.slot(b, i))?, &g, &k, &v);
                    let fp = PSlice::<u8>::from_raw_parts(g.fp(b, i).offset(), 1);
                    tx.slice_mut_in(&w, fp)?[0] = fingerprint(hash);
                    h.len += 1;
                    self.put_header(tx, h)?;
                    return Ok(false);
                }
                Probe::Full => Self::split(tx, &mut h, &g, b, l, hash)?,
            }
        }
    }

    /// Fill a slot's bytes.
    fn write_slot(e: &mut [u8], g: &Geo, k: &K, v: &V) {
        let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        let va = g.val_at as usize;
        e[..ks].copy_from_slice(bytemuck::bytes_of(k));
        e[va..va + vs].copy_from_slice(bytemuck::bytes_of(v));
    }

    fn put_header(self, tx: &mut Tx<'_>, mut h: PHashMap<K, V>) -> Result<()> {
        h.key_id = record_id::<K>(tx, h.key_id)?;
        h.val_id = record_id::<V>(tx, h.val_id)?;
        tx.set(self, h)
    }

    /// Directory words to allocate for `2^depth` entries (depth at least 1): at least one
    /// bucket's size (a small directory shares the buckets' runs) and, past that, more than
    /// the largest block of a run, so a directory is a large extent whose chunks return to free
    /// space when it doubles, instead of leaving a run of its own size class behind.
    fn dir_words(g: &Geo, depth: u64) -> u64 {
        let words = 1u64 << depth;
        if words * 8 <= g.bytes {
            g.bytes.div_ceil(8)
        } else {
            words.max(SMALL_MAX / 8 + 1)
        }
    }

    /// A directory holding `entries` (a power-of-two count, at least 2), padded by
    /// [`Self::dir_words`].
    fn alloc_dir(tx: &mut Tx<'_>, g: &Geo, entries: &[u64]) -> Result<u64> {
        let depth = entries.len().trailing_zeros() as u64;
        let mut words = entries.to_vec();
        words.resize(Self::dir_words(g, depth) as usize, 0);
        Ok(tx.alloc_slice(&words)?.offset())
    }

    /// A new bucket of local depth `depth` and `prefix` holding `entries` (hash, slot bytes),
    /// probed into place in memory and written once.
    fn new_bucket(
        tx: &mut Tx<'_>,
        g: &Geo,
        depth: u64,
        prefix: u64,
        entries: &[(u64, &[u8])],
    ) -> Result<u64> {
        let units = Self::bucket_units(g, depth, prefix, entries);
        Ok(tx.alloc_slice(&units)?.offset())
    }

    /// A bucket's bytes of local depth `depth` holding `entries`.
    fn bucket_units(g: &Geo, depth: u64, prefix: u64, entries: &[(u64, &[u8])]) -> Vec<Unit> {
        let mut units = vec![Unit([0; 2]); (g.bytes / 16) as usize];
        let out: &mut [u8] = bytemuck::cast_slice_mut(&mut units);
        out[..8].copy_from_slice(&depth.to_ne_bytes());
        out[8..16].copy_from_slice(&prefix.to_ne_bytes());
        for &(hash, e) in entries {
            let mut i = g.ideal(hash);
            while out[(BUCKET_HEADER + i) as usize] != 0 {
                i = g.next(i);
            }
            out[(BUCKET_HEADER + i) as usize] = fingerprint(hash);
            let at = g.at(i) as usize;
            out[at..at + g.stride as usize].copy_from_slice(e);
        }
        units
    }

    /// Split the full bucket `b` (local depth `l`) that `hash` belongs to: its entries are
    /// divided by hash bit `l` (from the top) between `b`, rewritten, and a new bucket that
    /// takes the upper half of `b`'s directory entries; the directory doubles first if `b` is
    /// as deep as it.
    fn split(
        tx: &mut Tx<'_>,
        h: &mut PHashMap<K, V>,
        g: &Geo,
        b: u64,
        l: u64,
        hash: u64,
    ) -> Result<()> {
        let old: Vec<Unit> = tx
            .slice(PSlice::<Unit>::from_raw_parts(b, g.bytes / 16))?
            .to_vec();
        let old: &[u8] = bytemuck::cast_slice(&old);
        let mut entries = Vec::with_capacity(g.slots as usize);
        for i in 0..g.slots {
            if old[(BUCKET_HEADER + i) as usize] != 0 {
                let at = g.at(i) as usize;
                let e = &old[at..at + g.stride as usize];
                let k: &K = bytemuck::try_from_bytes(&e[..std::mem::size_of::<K>()])
                    .map_err(|_| corrupt(b + at as u64, "PHashMap slot misaligned"))?;
                entries.push((Self::hash(h, K::load(k, tx)?), e));
            }
        }
        // Keys whose hashes agree in MAX_DEPTH bits cannot be told apart by splitting: only
        // damage (a bucket of keys that do not hash to it) makes them, and they must not split
        // without end.
        let differ = entries.iter().fold(0, |d, &(x, _)| d | (x ^ hash));
        if l >= MAX_DEPTH || u64::from(differ.leading_zeros()) >= MAX_DEPTH {
            return Err(corrupt(
                b,
                format!(
                    "PHashMap bucket: {} keys whose hashes agree in their first {MAX_DEPTH} bits",
                    entries.len() + 1
                ),
            ));
        }
        if l == h.depth {
            Self::double(tx, h, g)?;
        }
        let bit = 1u64 << (63 - l);
        let (go, stay): (Vec<_>, Vec<_>) = entries.into_iter().partition(|&(x, _)| x & bit != 0);
        let prefix = u64::from_ne_bytes(old[8..16].try_into().expect("8 bytes"));
        let nb = Self::new_bucket(tx, g, l + 1, prefix | bit, &go)?;
        let kept = Self::bucket_units(g, l + 1, prefix, &stay);
        // (The bucket must be an allocation of its own: see `own_bucket`.)
        let w = tx.writable_block(b, g.bytes, 16)?;
        tx.slice_mut_in(&w, PSlice::<Unit>::from_raw_parts(b, g.bytes / 16))?
            .copy_from_slice(&kept);
        // `b` owns an aligned block of 2^(depth - l) directory entries; `nb` takes its upper half.
        let span = 1u64 << (h.depth - l);
        let first = dir_index(hash, h.depth) & !(span - 1);
        let half = PSlice::<u64>::from_raw_parts(h.dir + (first + span / 2) * 8, span / 2);
        let w = Self::dir_writable(tx, h, g)?;
        tx.slice_mut_in(&w, half)?.fill(nb);
        h.buckets += 1;
        Ok(())
    }

    /// Double the directory: entry `i` of the old one becomes entries `2i` and `2i + 1` (at
    /// depth 0 the one entry is the header's bucket pointer).
    fn double(tx: &mut Tx<'_>, h: &mut PHashMap<K, V>, g: &Geo) -> Result<()> {
        let twice: Vec<u64> = h.dir_entries(tx)?.iter().flat_map(|&b| [b, b]).collect();
        let new = Self::alloc_dir(tx, g, &twice)?;
        if h.depth > 0 {
            tx.free_slice(PSlice::<u64>::from_raw_parts(
                h.dir,
                Self::dir_words(g, h.depth),
            ))?;
        }
        h.dir = new;
        h.depth += 1;
        Ok(())
    }

    /// Remove `key`, releasing its key and value. Returns whether it was present.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmr.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u8, u8>::new(tx)?;
    ///     m.insert(tx, &1u8, &1u8)?;
    ///     assert!(m.remove(tx, &1)?);
    ///     assert!(!m.remove(tx, &1)?);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn remove(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<bool> {
        super::own(
            self,
            tx.op("PHashMap::remove", |tx| self.remove_body(tx, key)),
        )
    }

    fn remove_body(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<bool> {
        let mut h = self.header_mut(tx)?;
        let g = Geo::of::<K, V>();
        let Some((b, mut i, _)) = Self::locate(&h, &g, tx, key)? else {
            return Ok(false);
        };
        Self::own_bucket(tx, &g, b)?;
        let k = *tx.get(Self::key_ptr(&g, b, i))?;
        let v = *tx.get(Self::val_ptr(&g, b, i))?;
        k.release(tx)?;
        v.release(tx)?;
        // Backward shift: pull each following entry that is not at its ideal slot back by one.
        let n = g.slots;
        let mut j = i;
        for _ in 0..n {
            j = g.next(j);
            let f = Self::fp_at(&g, tx, b, j)?;
            if f == 0 {
                break;
            }
            let home = g.ideal(Self::hash_at(&h, &g, tx, b, j)?);
            // Entry j may move to i only if i lies on its probe path: from home to j, cyclically.
            if (i + n - home) % n > (j + n - home) % n {
                continue;
            }
            let e = tx.slice(g.slot(b, j))?.to_vec();
            tx.slice_mut(g.slot(b, i))?.copy_from_slice(&e);
            tx.set(g.fp(b, i), f)?;
            i = j;
        }
        tx.set(g.fp(b, i), 0)?;
        h.len = h
            .len
            .checked_sub(1)
            .ok_or_else(|| corrupt(self.offset(), "PHashMap length below its entries"))?;
        Self::merge(tx, &mut h, &g, b)?;
        self.put_header(tx, h)?;
        Ok(true)
    }

    /// Entries in use in bucket `b` (its non-zero fingerprints).
    fn occupied<W: View>(g: &Geo, view: &W, b: u64) -> Result<u64> {
        let fps = view.slice(PSlice::<u8>::from_raw_parts(b + BUCKET_HEADER, g.slots))?;
        Ok(fps.iter().filter(|&&f| f != 0).count() as u64)
    }

    /// Bucket `b`'s entries: each key's hash and its slot's bytes.
    fn entries_of(h: &PHashMap<K, V>, g: &Geo, tx: &Tx<'_>, b: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for i in 0..g.slots {
            if Self::fp_at(g, tx, b, i)? != 0 {
                let e = tx.slice(g.slot(b, i))?.to_vec();
                out.push((Self::hash_at(h, g, tx, b, i)?, e));
            }
        }
        Ok(out)
    }

    /// After a removal from bucket `b`: while `b` holds fewer entries than a quarter of its
    /// slots and its buddy (the bucket of the same local depth `l` whose prefix differs in
    /// bit `l`) is of that depth too, and the two fit in three quarters of a bucket, merge
    /// them: the one whose prefix has the bit clear takes every entry at depth `l - 1`, the
    /// other is freed, and their directory entries all name the survivor. Then, if no bucket
    /// is as deep as the directory any more, the directory halves (to the header's one
    /// pointer at depth 0). The reverse of [`Self::split`], so a map that loses most of its
    /// keys gives its buckets and directory back.
    fn merge(tx: &mut Tx<'_>, h: &mut PHashMap<K, V>, g: &Geo, mut b: u64) -> Result<()> {
        while h.depth > 0 {
            let [l, prefix] = *tx.get(PPtr::<[u64; 2]>::from_offset(b))?;
            let n = Self::occupied(g, tx, b)?;
            if l == 0 || l > h.depth || n >= g.slots / 4 {
                return Ok(());
            }
            let bit = 1u64 << (64 - l);
            let buddy_prefix = prefix ^ bit;
            let slot = h.dir + dir_index(buddy_prefix, h.depth) * 8;
            let named = Self::bucket_of(h, tx, buddy_prefix)?;
            let (buddy, bl, bp) = Self::bucket_depth(h, tx, named, slot)?;
            if bl != l || bp != buddy_prefix || buddy == b {
                // The buddy split further (or the directory is damaged: `check` says where).
                return Ok(());
            }
            if n + Self::occupied(g, tx, buddy)? > g.slots - g.slots / 4 {
                return Ok(());
            }
            let (low, high) = if prefix & bit == 0 {
                (b, buddy)
            } else {
                (buddy, b)
            };
            let mut all = Self::entries_of(h, g, tx, low)?;
            all.extend(Self::entries_of(h, g, tx, high)?);
            let entries: Vec<(u64, &[u8])> = all.iter().map(|(x, e)| (*x, e.as_slice())).collect();
            let merged = prefix & !bit;
            let units = Self::bucket_units(g, l - 1, merged, &entries);
            // (Both buckets must be allocations of their own, see `own_bucket`: `free_slice`
            // below refuses a `high` that is not.)
            let w = tx.writable_block(low, g.bytes, 16)?;
            tx.slice_mut_in(&w, PSlice::<Unit>::from_raw_parts(low, g.bytes / 16))?
                .copy_from_slice(&units);
            tx.free_slice(PSlice::<Unit>::from_raw_parts(high, g.bytes / 16))?;
            let span = 1u64 << (h.depth - (l - 1));
            let first = dir_index(merged, h.depth);
            let w = Self::dir_writable(tx, h, g)?;
            tx.slice_mut_in(&w, PSlice::<u64>::from_raw_parts(h.dir + first * 8, span))?
                .fill(low);
            h.buckets = h
                .buckets
                .checked_sub(1)
                .ok_or_else(|| corrupt(b, "PHashMap bucket count below its buckets"))?;
            if l == h.depth {
                Self::halve(tx, h, g)?;
            }
            b = low;
        }
        Ok(())
    }

    /// Halve the directory while every pair of entries `2i`, `2i + 1` names one bucket (no
    /// bucket is as deep as it); at depth 0 the header points at the one bucket.
    fn halve(tx: &mut Tx<'_>, h: &mut PHashMap<K, V>, g: &Geo) -> Result<()> {
        while h.depth > 0 {
            let dir = h.dir_entries(tx)?.into_owned();
            if dir.chunks_exact(2).any(|p| p[0] != p[1]) {
                return Ok(());
            }
            let half: Vec<u64> = dir.iter().step_by(2).copied().collect();
            let old = PSlice::<u64>::from_raw_parts(h.dir, Self::dir_words(g, h.depth));
            h.dir = if h.depth == 1 {
                half[0]
            } else {
                Self::alloc_dir(tx, g, &half)?
            };
            tx.free_slice(old)?;
            h.depth -= 1;
        }
        Ok(())
    }

    /// Every bucket once, in directory order, with its local depth and first directory entry;
    /// checks that each owns an aligned block of entries.
    fn buckets<W: View>(h: &PHashMap<K, V>, view: &W) -> Result<Vec<(u64, u64, u64)>> {
        let mut out = Vec::new();
        if h.dir == 0 {
            return Ok(out);
        }
        let dir = h.dir_entries(view)?;
        let mut i = 0u64;
        while i < dir.len() as u64 {
            let slot = h.dir + i * 8;
            let (b, l, _) = Self::bucket_depth(h, view, dir[i as usize], slot)?;
            let span = 1u64 << (h.depth - l);
            if i % span != 0 || out.len() as u64 == h.buckets {
                return Err(corrupt(
                    slot,
                    format!(
                        "PHashMap directory entry {i}: bucket {b:#x} of depth {l} out of place"
                    ),
                ));
            }
            out.push((b, l, i));
            i += span;
        }
        Ok(out)
    }

    /// Remove every entry (releasing keys and values) and free the buckets and directory.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmcl.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u32, u32>::new(tx)?;
    ///     for k in 0..100u32 { m.insert(tx, &k, &k)?; }
    ///     m.clear(tx)?;
    ///     assert_eq!(m.len(tx)?, 0);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn clear(self, tx: &mut Tx<'_>) -> Result<()> {
        super::own(self, tx.op("PHashMap::clear", |tx| self.clear_body(tx)))
    }

    fn clear_body(self, tx: &mut Tx<'_>) -> Result<()> {
        let mut h = self.header_mut(tx)?;
        let g = Geo::of::<K, V>();
        for (b, _, _) in Self::buckets(&h, tx)? {
            for i in 0..g.slots {
                if Self::fp_at(&g, tx, b, i)? != 0 {
                    let k = *tx.get(Self::key_ptr(&g, b, i))?;
                    let v = *tx.get(Self::val_ptr(&g, b, i))?;
                    k.release(tx)?;
                    v.release(tx)?;
                }
            }
            tx.free_slice(PSlice::<Unit>::from_raw_parts(b, g.bytes / 16))?;
        }
        if h.depth > 0 {
            tx.free_slice(PSlice::<u64>::from_raw_parts(
                h.dir,
                Self::dir_words(&g, h.depth),
            ))?;
        }
        h.dir = 0;
        h.depth = 0;
        h.buckets = 0;
        h.len = 0;
        self.put_header(tx, h)
    }

    /// [`PPtr::clear`]: frees every block the map owns in one call (the header stays; free a
    /// header made by [`PHashMap::new`] with `tx.free`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmd.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<u8, u8>::new(tx)?;
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

    /// Keep only the entries for which `keep(key, value)` is true, removing the others (their
    /// keys and values released, buckets merged as by [`Self::remove`]); returns how many
    /// went. The map is read once, then the doomed keys are removed one by one.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmre.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let m = txheap::PHashMap::<txheap::PBytes, u32>::new(tx)?;
    ///     for (w, n) in [("a", 1u32), ("b", 0), ("c", 3)] { m.insert(tx, w.as_bytes(), &n)?; }
    ///     assert_eq!(m.retain(tx, |_, n| *n > 0)?, 1);
    ///     assert_eq!(m.get(tx, b"b")?, None);
    ///     assert_eq!(m.len(tx)?, 2);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn retain(
        self,
        tx: &mut Tx<'_>,
        keep: impl FnMut(&K::Input, &V::Input) -> bool,
    ) -> Result<u64>
    where
        K::Input: ToOwned,
    {
        super::own(
            self,
            tx.op("PHashMap::retain", |tx| self.retain_body(tx, keep)),
        )
    }

    fn retain_body(
        self,
        tx: &mut Tx<'_>,
        mut keep: impl FnMut(&K::Input, &V::Input) -> bool,
    ) -> Result<u64>
    where
        K::Input: ToOwned,
    {
        let mut doomed = Vec::new();
        for e in self.iter(tx)? {
            let (k, v) = e?;
            if !keep(k, v) {
                doomed.push(k.to_owned());
            }
        }
        super::remove_each(
            tx,
            &doomed,
            |tx, k| self.remove(tx, std::borrow::Borrow::borrow(k)),
            self.offset(),
            "PHashMap: a key met by retain's scan is not found again (its Eq or Hash is not \
             consistent, or the map is damaged)",
        )
    }

    /// Every entry, bucket by bucket (not sorted), read in place.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmit.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u64, u64>::new(tx)?; for k in 1..=4u64 { m.insert(tx, &k, &k)?; } Ok(m) })?;
    /// let sum: u64 = heap.read(|r| m.iter(r)?.map(|e| e.map(|(k, _)| *k)).sum())?;
    /// assert_eq!(sum, 10);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn iter<'v, W: View>(
        self,
        view: &'v W,
    ) -> Result<impl Iterator<Item = Result<(&'v K::Input, &'v V::Input)>> + 'v>
    where
        K::Input: 'v,
        V::Input: 'v,
    {
        super::own(self, self.iter_raw(view))
    }

    fn iter_raw<'v, W: View>(
        self,
        view: &'v W,
    ) -> Result<impl Iterator<Item = Result<(&'v K::Input, &'v V::Input)>> + 'v>
    where
        K::Input: 'v,
        V::Input: 'v,
    {
        let h = self.header(view)?;
        let g = Geo::of::<K, V>();
        let buckets = Self::buckets(&h, view)?;
        let mut failed = false;
        Ok(buckets
            .into_iter()
            .flat_map(move |(b, _, _)| (0..g.slots).map(move |i| (b, i)))
            .filter_map(move |(b, i)| {
                if failed {
                    return None;
                }
                let r = (|| {
                    if Self::fp_at(&g, view, b, i)? == 0 {
                        return Ok(None);
                    }
                    let k = K::load(view.get(Self::key_ptr(&g, b, i))?, view)?;
                    let v = V::load(view.get(Self::val_ptr(&g, b, i))?, view)?;
                    Ok(Some((k, v)))
                })();
                match r {
                    Ok(e) => e.map(Ok),
                    Err(e) => {
                        failed = true;
                        Some(Err(super::own_error(self, e)))
                    }
                }
            }))
    }

    /// Call `f` with the start offset of every allocation the map holds: its directory, its
    /// buckets, and what its keys and values own (for leak checks with `tx.usable_size`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmb.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u64, txheap::PBytes>::new(tx)?; m.insert(tx, &1, b"one")?; Ok(m) })?;
    /// let mut blocks = 0;
    /// heap.read(|r| m.for_each_block(r, |_| blocks += 1))?;
    /// assert_eq!(blocks, 2); // one bucket (a one-bucket map has no directory) and the bytes
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn for_each_block<W: View>(self, view: &W, f: impl FnMut(u64)) -> Result<()> {
        super::own(self, self.for_each_block_raw(view, f))
    }

    fn for_each_block_raw<W: View>(self, view: &W, mut f: impl FnMut(u64)) -> Result<()> {
        let h = self.header(view)?;
        if h.dir == 0 {
            return Ok(());
        }
        if h.depth > 0 {
            f(h.dir);
        }
        let g = Geo::of::<K, V>();
        for (b, _, _) in Self::buckets(&h, view)? {
            f(b);
            for i in 0..g.slots {
                if Self::fp_at(&g, view, b, i)? == 0 {
                    continue;
                }
                let k = view.get(Self::key_ptr(&g, b, i))?;
                let v = view.get(Self::val_ptr(&g, b, i))?;
                for o in [k.owned_block(), v.owned_block()].into_iter().flatten() {
                    f(o);
                }
            }
        }
        Ok(())
    }

    /// Verify every invariant: element types; the directory in bounds; each bucket owning one
    /// aligned block of directory entries (all pointing to it, none elsewhere), in bounds and
    /// with the prefix of its place; every fingerprint its key's and every key hashing into its
    /// bucket; every entry reachable from its
    /// ideal slot without crossing an empty one; no key twice; the bucket and entry counts. The
    /// first violation is [`Error::Corrupt`](crate::Error::Corrupt) naming where.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmck.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u16, u16>::new(tx)?; for k in 0..500u16 { m.insert(tx, &k, &k)?; } Ok(m) })?;
    /// heap.read(|r| m.check(r))?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn check<W: View>(self, view: &W) -> Result<()> {
        super::own(self, self.check_raw(view))
    }

    fn check_raw<W: View>(self, view: &W) -> Result<()> {
        let h = self.header(view)?;
        if h.dir == 0 {
            return Ok(());
        }
        let g = Geo::of::<K, V>();
        let buckets = Self::buckets(&h, view)?;
        let dir = h.dir_entries(view)?;
        let mut seen = std::collections::HashSet::new();
        let mut owned = std::collections::HashSet::new();
        let mut count = 0;
        for &(b, l, first) in &buckets {
            let span = 1u64 << (h.depth - l);
            if let Some(j) = (first..first + span).find(|&j| dir[j as usize] != b) {
                return Err(corrupt(
                    h.dir + j * 8,
                    format!("PHashMap directory entry {j}: not bucket {b:#x}, which owns it"),
                ));
            }
            if !seen.insert(b) {
                return Err(corrupt(
                    b,
                    format!("PHashMap bucket {b:#x} owns two blocks of the directory"),
                ));
            }
            view.slice(PSlice::<Unit>::from_raw_parts(b, g.bytes / 16))?;
            let prefix = *view.get(PPtr::<u64>::from_offset(b + 8))?;
            let want = if h.depth == 0 {
                0
            } else {
                first << (64 - h.depth)
            };
            if prefix != want {
                return Err(corrupt(
                    b + 8,
                    format!("PHashMap bucket {b:#x}: prefix {prefix:#x}, its place says {want:#x}"),
                ));
            }
            for j in 0..g.slots {
                let f = Self::fp_at(&g, view, b, j)?;
                if f == 0 {
                    continue;
                }
                count += 1;
                let at = b + g.at(j);
                let (kh, vh) = (
                    view.get(Self::key_ptr(&g, b, j))?,
                    view.get(Self::val_ptr(&g, b, j))?,
                );
                // Each block a key or value owns is owned by that handle only (a review found
                // two values damaged into naming one byte string passing `check`).
                if K::OWNS_STORAGE || V::OWNS_STORAGE {
                    for o in [kh.owned_block(), vh.owned_block()].into_iter().flatten() {
                        if !owned.insert(o) {
                            return Err(corrupt(
                                at,
                                format!("PHashMap: block {o:#x} owned by two keys or values"),
                            ));
                        }
                    }
                }
                let k = K::load(kh, view)?;
                V::load(vh, view)?;
                let t = Self::hash(&h, k);
                if fingerprint(t) != f {
                    return Err(corrupt(
                        b + BUCKET_HEADER + j,
                        format!("PHashMap bucket {b:#x} slot {j}: fingerprint is not its key's"),
                    ));
                }
                if dir_index(t, h.depth) >> (h.depth - l) != first >> (h.depth - l) {
                    return Err(corrupt(
                        at,
                        format!(
                            "PHashMap bucket {b:#x} slot {j}: the key belongs to another bucket"
                        ),
                    ));
                }
                let mut i = g.ideal(t);
                while i != j {
                    let fi = Self::fp_at(&g, view, b, i)?;
                    if fi == 0 {
                        return Err(corrupt(
                            at,
                            format!(
                                "PHashMap bucket {b:#x} slot {j}: an empty slot cuts its probe path"
                            ),
                        ));
                    }
                    if fi == f && K::load(view.get(Self::key_ptr(&g, b, i))?, view)? == k {
                        return Err(corrupt(
                            at,
                            format!("PHashMap bucket {b:#x} slot {j}: its key is also in slot {i}"),
                        ));
                    }
                    i = g.next(i);
                }
            }
        }
        if buckets.len() as u64 != h.buckets {
            return Err(corrupt(
                self.offset(),
                format!(
                    "PHashMap has {} buckets, its header says {}",
                    buckets.len(),
                    h.buckets
                ),
            ));
        }
        if count != h.len {
            return Err(corrupt(
                self.offset(),
                format!("PHashMap holds {count} entries, its header says {}", h.len),
            ));
        }
        Ok(())
    }
}
