//! `PHashMap<K, V>`: an unordered map, open addressing with linear probing in one table.

use std::hash::{BuildHasher, Hash, Hasher};
use std::marker::PhantomData;

use super::siphash::SipHasher13;
use super::{check_id, corrupt, Element, View};
use crate::error::{Error, Result};
use crate::limits::ALIGN_MAX;
use crate::pptr::{PPtr, PSlice};
use crate::stored::{Field, Stored};
use crate::tx::Tx;

/// Slots in the first table.
const FIRST_CAP: u64 = 16;
/// The table grows (doubling) before more than 7/8 of its slots are in use... (numerator).
const LOAD_NUM: u64 = 7;
/// ... (denominator).
const LOAD_DEN: u64 = 8;
/// A slot's tag when it holds an entry: the key's hash with this bit set (0 is an empty slot).
const OCCUPIED: u64 = 1 << 63;

/// The table's allocation unit: 16-byte aligned, so keys and values up to that alignment fit.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(16))]
struct Unit([u64; 2]);

/// An unordered map from `K` to `V` in the heap: one table of slots (a tag, the key, the value)
/// with linear probing and backward-shift removal, so a lookup reads one or two cache lines and
/// never meets a tombstone. Keys are hashed with SipHash-1-3 under a 128-bit seed drawn from the
/// operating system's randomness when the table is first made, and stored in the header: a
/// hostile key set cannot aim at one slot without it. Keys are plain data (`Hash + Eq`) or byte
/// strings ([`crate::PBytes`], [`crate::PString`]).
///
/// The table doubles inside the transaction whose insert finds it 7/8 full, moving every entry
/// by its stored hash (keys are not read again). A table larger than 64 KiB is a large extent
/// written in place at commit (`docs/ARCHITECTURE.md` section 3, step 5a), so a growth adds only
/// metadata to the log, whatever the map's size. The header (64 bytes) is an empty map when
/// zero.
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
    table: u64,
    cap: u64,
    len: u64,
    seed0: u64,
    seed1: u64,
    key_id: u64,
    val_id: u64,
    _reserved: u64,
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
            .field("table", &self.table)
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

impl<K: Stored, V: Stored> Stored for PHashMap<K, V> {
    const NAME: &'static str = "PHashMap";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = Field::struct_id(
        "PHashMap",
        64,
        8,
        &[Field::element("K", K::ID), Field::element("V", V::ID)],
    );
}

impl<K: Stored, V: Stored> Element for PHashMap<K, V> {
    plain_element_body!();
}

impl<K, V> PHashMap<K, V> {
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

    /// Slots in the table.
    ///
    /// ```
    /// assert_eq!(<txheap::PHashMap<u64, u64> as txheap::bytemuck::Zeroable>::zeroed().capacity(), 0);
    /// ```
    pub fn capacity(&self) -> u64 {
        self.cap
    }
}

const fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Slot geometry: the key and value offsets in a slot and the slot's stride.
#[derive(Clone, Copy)]
struct Slots {
    key_at: u64,
    val_at: u64,
    stride: u64,
}

impl Slots {
    fn of<K, V>() -> Slots {
        let (ka, va) = (
            std::mem::align_of::<K>() as u64,
            std::mem::align_of::<V>() as u64,
        );
        let key_at = align_up(8, ka);
        let val_at = align_up(key_at + std::mem::size_of::<K>() as u64, va);
        let stride = align_up(val_at + std::mem::size_of::<V>() as u64, ka.max(va).max(8));
        Slots {
            key_at,
            val_at,
            stride,
        }
    }
}

/// The slot a tag belongs at in a table of `cap` slots (multiply-shift: any `cap` works).
fn ideal(tag: u64, cap: u64) -> u64 {
    ((tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128 * cap as u128) >> 64) as u64
}

impl<K, V> PHashMap<K, V>
where
    K: Element,
    V: Element,
    K::Input: Hash + Eq,
{
    /// Allocate an empty map of its own; the pointer can be stored anywhere.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmn.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| txheap::PHashMap::<u32, u32>::new(tx))?;
    /// assert_eq!(heap.read(|r| m.len(r))?, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn new(tx: &mut Tx<'_>) -> Result<PPtr<PHashMap<K, V>>> {
        tx.alloc(PHashMap {
            table: 0,
            cap: 0,
            len: 0,
            seed0: 0,
            seed1: 0,
            key_id: K::ID,
            val_id: V::ID,
            _reserved: 0,
            _kv: PhantomData,
        })
    }
}

impl<K, V> PPtr<PHashMap<K, V>>
where
    K: Element,
    V: Element,
    K::Input: Hash + Eq,
{
    fn header<W: View>(self, view: &W) -> Result<PHashMap<K, V>> {
        let h = *view.get(self)?;
        check_id::<K>(h.key_id, self.offset(), "key")?;
        check_id::<V>(h.val_id, self.offset(), "value")?;
        let align = std::mem::align_of::<K>().max(std::mem::align_of::<V>()) as u64;
        if align > 16 {
            return Err(Error::UnsupportedAlignment {
                align,
                max: 16.min(ALIGN_MAX),
            });
        }
        let s = Slots::of::<K, V>();
        if h.len > h.cap || (h.cap == 0) != (h.table == 0) || h.cap.checked_mul(s.stride).is_none()
        {
            return Err(corrupt(
                self.offset(),
                format!(
                    "PHashMap header: table {:#x} capacity {} length {}",
                    h.table, h.cap, h.len
                ),
            ));
        }
        Ok(h)
    }

    fn hash(h: &PHashMap<K, V>, key: &K::Input) -> u64 {
        let mut s = SipHasher13::new(h.seed0, h.seed1);
        key.hash(&mut s);
        s.finish() | OCCUPIED
    }

    fn slot_ptr<T>(h: &PHashMap<K, V>, s: &Slots, i: u64, at: u64) -> PPtr<T> {
        PPtr::from_offset(h.table + i * s.stride + at)
    }

    fn tag<W: View>(h: &PHashMap<K, V>, s: &Slots, view: &W, i: u64) -> Result<u64> {
        Ok(*view.get(Self::slot_ptr::<u64>(h, s, i, 0))?)
    }

    /// Probe for `key`: `Ok(i)` where it is, `Err(i)` the empty slot where it would go
    /// (`Err(cap)` if the table is full, which only damage can make).
    /// Slot `i`'s bytes, in one checked read.
    fn slot<'v, W: View>(h: &PHashMap<K, V>, s: &Slots, view: &'v W, i: u64) -> Result<&'v [u8]> {
        view.slice(PSlice::<u8>::from_raw_parts(
            h.table + i * s.stride,
            s.stride,
        ))
    }

    /// The key or value at byte `at` of slot bytes `b`.
    fn field<T: bytemuck::Pod>(b: &[u8], at: u64, slot_at: u64) -> Result<&T> {
        let at = at as usize;
        bytemuck::try_from_bytes(&b[at..at + std::mem::size_of::<T>()])
            .map_err(|_| corrupt(slot_at, "PHashMap slot misaligned"))
    }

    /// Probe for `key`: `Ok((i, slot bytes))` where it is, `Err(i)` the empty slot where it
    /// would go (`Err(cap)` if the table is full, which only damage can make).
    fn find_slot<'v, W: View>(
        h: &PHashMap<K, V>,
        s: &Slots,
        view: &'v W,
        key: &K::Input,
        tag: u64,
    ) -> Result<std::result::Result<(u64, &'v [u8]), u64>> {
        let mut i = ideal(tag, h.cap);
        for _ in 0..h.cap {
            let b = Self::slot(h, s, view, i)?;
            let t = u64::from_ne_bytes(b[..8].try_into().expect("8 bytes"));
            if t == 0 {
                return Ok(Err(i));
            }
            if t == tag {
                let at = h.table + i * s.stride;
                if K::load(Self::field::<K>(b, s.key_at, at)?, view)? == key {
                    return Ok(Ok((i, b)));
                }
            }
            i += 1;
            if i == h.cap {
                i = 0;
            }
        }
        Ok(Err(h.cap))
    }

    /// [`Self::find_slot`] without the bytes, reading tags and keys one by one: in a transaction
    /// a slot may straddle a staged line and an unstaged one, which a whole-slot read would
    /// have to compose.
    fn find<W: View>(
        h: &PHashMap<K, V>,
        s: &Slots,
        view: &W,
        key: &K::Input,
        tag: u64,
    ) -> Result<std::result::Result<u64, u64>> {
        let mut i = ideal(tag, h.cap);
        for _ in 0..h.cap {
            let t = Self::tag(h, s, view, i)?;
            if t == 0 {
                return Ok(Err(i));
            }
            if t == tag && K::load(view.get(Self::slot_ptr::<K>(h, s, i, s.key_at))?, view)? == key
            {
                return Ok(Ok(i));
            }
            i += 1;
            if i == h.cap {
                i = 0;
            }
        }
        Ok(Err(h.cap))
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
        let h = self.header(view)?;
        if h.cap == 0 {
            return Ok(None);
        }
        let s = Slots::of::<K, V>();
        match Self::find_slot(&h, &s, view, key, Self::hash(&h, key))? {
            Ok((i, b)) => {
                let v = Self::field::<V>(b, s.val_at, h.table + i * s.stride)?;
                Ok(Some(V::load(v, view)?))
            }
            Err(_) => Ok(None),
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
        Ok(self.get(view, key)?.is_some())
    }

    /// A pointer to the stored value handle of `key`, for changing it in place with
    /// `tx.get_mut` (for plain values; a [`crate::PBytes`] value is replaced with `insert`).
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
    pub fn get_mut(self, tx: &mut Tx<'_>, key: &K::Input) -> Result<Option<PPtr<V>>> {
        let h = self.header(tx)?;
        if h.cap == 0 {
            return Ok(None);
        }
        let s = Slots::of::<K, V>();
        Ok(match Self::find(&h, &s, tx, key, Self::hash(&h, key))? {
            Ok(i) => Some(Self::slot_ptr::<V>(&h, &s, i, s.val_at)),
            Err(_) => None,
        })
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
    pub fn get_or_insert(
        self,
        tx: &mut Tx<'_>,
        key: &K::Input,
        value: &V::Input,
    ) -> Result<PPtr<V>> {
        if let Some(p) = self.get_mut(tx, key)? {
            return Ok(p);
        }
        self.insert(tx, key, value)?;
        Ok(self.get_mut(tx, key)?.expect("just inserted"))
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
        let mut h = self.header(tx)?;
        let s = Slots::of::<K, V>();
        if h.cap == 0 {
            let r = std::collections::hash_map::RandomState::new();
            h.seed0 = r.hash_one(0x5eed_u64);
            h.seed1 = r.hash_one(0xf00d_u64);
        }
        let tag = Self::hash(&h, key);
        let mut free = None;
        if h.cap > 0 {
            match Self::find(&h, &s, tx, key, tag)? {
                Ok(i) => {
                    let vp = Self::slot_ptr::<V>(&h, &s, i, s.val_at);
                    let old = *tx.get(vp)?;
                    let v = V::store(tx, value)?;
                    tx.set(vp, v)?;
                    old.release(tx)?;
                    return Ok(true);
                }
                Err(i) => free = Some(i),
            }
        }
        if (h.len + 1) * LOAD_DEN > h.cap * LOAD_NUM {
            let cap = if h.cap == 0 { FIRST_CAP } else { h.cap * 2 };
            Self::grow(tx, &mut h, &s, cap)?;
            free = None;
        }
        let i = match free {
            Some(i) => i,
            None => match Self::find(&h, &s, tx, key, tag)? {
                Err(i) => i,
                Ok(_) => h.cap,
            },
        };
        if i >= h.cap {
            return Err(corrupt(
                self.offset(),
                "PHashMap: no free slot where the load factor promises one",
            ));
        }
        let k = K::store(tx, key)?;
        let v = V::store(tx, value)?;
        let slot = PSlice::<u8>::from_raw_parts(h.table + i * s.stride, s.stride);
        Self::write_slot(tx.slice_mut(slot)?, &s, tag, k, v);
        h.len += 1;
        self.put_header(tx, h)?;
        Ok(false)
    }

    /// Fill the slot bytes `b` with an entry.
    fn write_slot(b: &mut [u8], s: &Slots, tag: u64, k: K, v: V) {
        b[..8].copy_from_slice(&tag.to_ne_bytes());
        let (ka, va) = (s.key_at as usize, s.val_at as usize);
        b[ka..ka + std::mem::size_of::<K>()].copy_from_slice(bytemuck::bytes_of(&k));
        b[va..va + std::mem::size_of::<V>()].copy_from_slice(bytemuck::bytes_of(&v));
    }

    fn put_header(self, tx: &mut Tx<'_>, mut h: PHashMap<K, V>) -> Result<()> {
        h.key_id = K::ID;
        h.val_id = V::ID;
        tx.set(self, h)
    }

    /// Move every entry into a new table of `cap` slots, by its stored tag: the old table is
    /// read once, the new one staged once and filled in memory (a table of more than 64 KiB is
    /// a large extent from free space, written in place at commit).
    fn grow(tx: &mut Tx<'_>, h: &mut PHashMap<K, V>, s: &Slots, cap: u64) -> Result<()> {
        let stride = s.stride as usize;
        let new = tx.alloc_slice_zeroed::<Unit>(cap * s.stride / 16)?;
        let old: Vec<u8> = if h.cap == 0 {
            Vec::new()
        } else {
            tx.slice(PSlice::<u8>::from_raw_parts(h.table, h.cap * s.stride))?
                .to_vec()
        };
        let table = tx.slice_mut(PSlice::<u8>::from_raw_parts(new.offset(), cap * s.stride))?;
        for slot in old.chunks_exact(stride) {
            let t = u64::from_ne_bytes(slot[..8].try_into().expect("8 bytes"));
            if t == 0 {
                continue;
            }
            let mut j = ideal(t, cap) as usize;
            while table[j * stride..j * stride + 8] != [0u8; 8] {
                j = if j + 1 == cap as usize { 0 } else { j + 1 };
            }
            table[j * stride..(j + 1) * stride].copy_from_slice(slot);
        }
        if h.table != 0 {
            tx.free_slice(PSlice::<Unit>::from_raw_parts(
                h.table,
                h.cap * s.stride / 16,
            ))?;
        }
        h.table = new.offset();
        h.cap = cap;
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
        let mut h = self.header(tx)?;
        if h.cap == 0 {
            return Ok(false);
        }
        let s = Slots::of::<K, V>();
        let Ok(mut i) = Self::find(&h, &s, tx, key, Self::hash(&h, key))? else {
            return Ok(false);
        };
        let k = *tx.get(Self::slot_ptr::<K>(&h, &s, i, s.key_at))?;
        let v = *tx.get(Self::slot_ptr::<V>(&h, &s, i, s.val_at))?;
        k.release(tx)?;
        v.release(tx)?;
        // Backward shift: pull each following entry that is not at its ideal slot back by one.
        let mut j = i;
        for _ in 0..h.cap {
            j = if j + 1 == h.cap { 0 } else { j + 1 };
            let t = Self::tag(&h, &s, tx, j)?;
            if t == 0 {
                break;
            }
            let home = ideal(t, h.cap);
            // Entry j may move to i only if i lies on its probe path: from home to j, cyclically.
            let dist_j = (j + h.cap - home) % h.cap;
            let dist_i = (i + h.cap - home) % h.cap;
            if dist_i > dist_j {
                continue;
            }
            let k = *tx.get(Self::slot_ptr::<K>(&h, &s, j, s.key_at))?;
            let v = *tx.get(Self::slot_ptr::<V>(&h, &s, j, s.val_at))?;
            tx.set(Self::slot_ptr::<u64>(&h, &s, i, 0), t)?;
            tx.set(Self::slot_ptr::<K>(&h, &s, i, s.key_at), k)?;
            tx.set(Self::slot_ptr::<V>(&h, &s, i, s.val_at), v)?;
            i = j;
        }
        tx.set(Self::slot_ptr::<u64>(&h, &s, i, 0), 0)?;
        h.len = h
            .len
            .checked_sub(1)
            .ok_or_else(|| corrupt(self.offset(), "PHashMap length below its entries"))?;
        self.put_header(tx, h)?;
        Ok(true)
    }

    /// Remove every entry (releasing keys and values) and free the table.
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
        let mut h = self.header(tx)?;
        let s = Slots::of::<K, V>();
        for i in 0..h.cap {
            if Self::tag(&h, &s, tx, i)? != 0 {
                let k = *tx.get(Self::slot_ptr::<K>(&h, &s, i, s.key_at))?;
                let v = *tx.get(Self::slot_ptr::<V>(&h, &s, i, s.val_at))?;
                k.release(tx)?;
                v.release(tx)?;
            }
        }
        if h.table != 0 {
            tx.free_slice(PSlice::<Unit>::from_raw_parts(
                h.table,
                h.cap * s.stride / 16,
            ))?;
        }
        h.table = 0;
        h.cap = 0;
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
        self.clear(tx)
    }

    /// Every entry, in table order (not sorted), read in place.
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
        let h = self.header(view)?;
        let s = Slots::of::<K, V>();
        let mut failed = false;
        Ok((0..h.cap).filter_map(move |i| {
            if failed {
                return None;
            }
            let r = (|| {
                if Self::tag(&h, &s, view, i)? == 0 {
                    return Ok(None);
                }
                let k = K::load(view.get(Self::slot_ptr::<K>(&h, &s, i, s.key_at))?, view)?;
                let v = V::load(view.get(Self::slot_ptr::<V>(&h, &s, i, s.val_at))?, view)?;
                Ok(Some((k, v)))
            })();
            match r {
                Ok(e) => e.map(Ok),
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        }))
    }

    /// Call `f` with the start offset of every allocation the map holds: its table, and what its
    /// keys and values own (for leak checks with `tx.usable_size`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmb.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u64, txheap::PBytes>::new(tx)?; m.insert(tx, &1, b"one")?; Ok(m) })?;
    /// let mut blocks = 0;
    /// heap.read(|r| m.for_each_block(r, |_| blocks += 1))?;
    /// assert_eq!(blocks, 2); // the table and the value's bytes
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn for_each_block<W: View>(self, view: &W, mut f: impl FnMut(u64)) -> Result<()> {
        let h = self.header(view)?;
        if h.cap == 0 {
            return Ok(());
        }
        f(h.table);
        let s = Slots::of::<K, V>();
        for i in 0..h.cap {
            if Self::tag(&h, &s, view, i)? == 0 {
                continue;
            }
            let k = view.get(Self::slot_ptr::<K>(&h, &s, i, s.key_at))?;
            let v = view.get(Self::slot_ptr::<V>(&h, &s, i, s.val_at))?;
            for b in [k.owned_block(), v.owned_block()].into_iter().flatten() {
                f(b);
            }
        }
        Ok(())
    }

    /// Verify every invariant: element types, the table in bounds, every tag the hash of its
    /// key, every entry reachable from its ideal slot without crossing an empty one, no key
    /// twice, and the entry count. The first violation is [`Error::Corrupt`] naming the slot.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hmck.heap"), txheap::Options::new())?;
    /// let m = heap.transaction(|tx| { let m = txheap::PHashMap::<u16, u16>::new(tx)?; for k in 0..500u16 { m.insert(tx, &k, &k)?; } Ok(m) })?;
    /// heap.read(|r| m.check(r))?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn check<W: View>(self, view: &W) -> Result<()> {
        let h = self.header(view)?;
        if h.cap == 0 {
            return Ok(());
        }
        let s = Slots::of::<K, V>();
        view.slice(PSlice::<Unit>::from_raw_parts(
            h.table,
            h.cap * s.stride / 16,
        ))?;
        let mut count = 0;
        for j in 0..h.cap {
            let t = Self::tag(&h, &s, view, j)?;
            if t == 0 {
                continue;
            }
            count += 1;
            let at = h.table + j * s.stride;
            let k = K::load(view.get(Self::slot_ptr::<K>(&h, &s, j, s.key_at))?, view)?;
            V::load(view.get(Self::slot_ptr::<V>(&h, &s, j, s.val_at))?, view)?;
            if Self::hash(&h, k) != t {
                return Err(corrupt(
                    at,
                    format!("PHashMap slot {j}: tag is not its key's hash"),
                ));
            }
            let mut i = ideal(t, h.cap);
            while i != j {
                let ti = Self::tag(&h, &s, view, i)?;
                if ti == 0 {
                    return Err(corrupt(
                        at,
                        format!("PHashMap slot {j}: an empty slot cuts its probe path"),
                    ));
                }
                if ti == t
                    && K::load(view.get(Self::slot_ptr::<K>(&h, &s, i, s.key_at))?, view)? == k
                {
                    return Err(corrupt(
                        at,
                        format!("PHashMap slot {j}: its key is also in slot {i}"),
                    ));
                }
                i = if i + 1 == h.cap { 0 } else { i + 1 };
            }
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
