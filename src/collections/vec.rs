//! `PVec<T>`: a growable array in the heap.

use std::marker::PhantomData;

use super::{check_id, corrupt, record_id, Element, View};
use crate::error::{Error, Result};
use crate::pptr::{PPtr, PSlice};
use crate::stored::{Field, Stored};
use crate::tx::{Tx, Writable};

/// A growable array of `T` in the heap: a 32-byte header (buffer, capacity, length, element
/// identity) whose all-zero bytes are an empty vector, and one buffer allocation. Growth
/// doubles the capacity and frees the old buffer in the same transaction.
///
/// Operations are methods on `PPtr<PVec<T>>`: writes take the transaction, reads any
/// [`View`]; [`PPtr::as_slice`] reads the elements in place, without a copy.
///
/// ```
/// use txheap::{PPtr, PVec};
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("pvec.heap"), txheap::Options::new())?;
/// let v: PPtr<PVec<u64>> = heap.transaction(|tx| {
///     let v = PVec::new(tx)?;
///     for i in 0..10 { v.push(tx, i * i)?; }
///     Ok(v)
/// })?;
/// assert_eq!(heap.read(|r| v.get(r, 3))?, Some(9));
/// assert_eq!(heap.read(|r| Ok(r.get(v)?.len()))?, 10);
/// assert_eq!(heap.read(|r| Ok(v.as_slice(r)?.iter().sum::<u64>()))?, 285);
/// # Ok::<(), txheap::Error>(())
/// ```
#[repr(C)]
pub struct PVec<T> {
    buf: u64,
    cap: u64,
    len: u64,
    elem: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for PVec<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PVec<T> {}
// SAFETY: repr(C) of four u64 and a ZST: no padding, all-zero is the empty vector.
unsafe impl<T> bytemuck::Zeroable for PVec<T> {}
// SAFETY: as above; every bit pattern is a value (operations check what they read).
unsafe impl<T: 'static> bytemuck::Pod for PVec<T> {}

impl<T> std::fmt::Debug for PVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PVec")
            .field("buf", &self.buf)
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: Stored> Stored for PVec<T> {
    const NAME: &'static str = "PVec";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = Field::struct_id("PVec", 32, 8, &[Field::element("T", T::ID)]);
    const SHAPE: u64 = Field::struct_id("PVec", 32, 8, &[Field::element("T", T::SHAPE)]);
    fn display_name() -> String {
        format!("PVec<{}>", T::display_name())
    }

    /// The buffer (its whole capacity), and what each element reaches.
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> Result<()> {
        // (The header's own offset is not known here: `at` names the object holding it, or
        // the map bucket or node. So the shape only; the overlap with the header is checked
        // where the header is read by its offset: a review found a healthy buffer right after
        // a holder refused as overlapping "the header".)
        let h = self.checked_shape(walk.reader(), walk.at())?;
        if h.buf != 0 && !walk.block(h.buf, h.cap * std::mem::size_of::<T>() as u64) {
            return Ok(());
        }
        if h.len > 0 && T::HOLDS_POINTERS {
            walk.slice(PSlice::<T>::from_raw_parts(h.buf, h.len))?;
        }
        Ok(())
    }
}

impl<T: Element> Element for PVec<T> {
    plain_element_body!();
}

impl<T> PVec<T> {
    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(<txheap::PVec<u8> as txheap::bytemuck::Zeroable>::zeroed().len(), 0);
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the vector is empty.
    ///
    /// ```
    /// assert!(<txheap::PVec<u8> as txheap::bytemuck::Zeroable>::zeroed().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements the buffer holds without growing.
    ///
    /// ```
    /// assert_eq!(<txheap::PVec<u8> as txheap::bytemuck::Zeroable>::zeroed().capacity(), 0);
    /// ```
    pub fn capacity(&self) -> u64 {
        self.cap
    }
}

impl<T: Element> PVec<T> {
    /// Allocate an empty vector of its own; the pointer can be stored anywhere.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvn.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| txheap::PVec::<u32>::new(tx))?;
    /// assert_eq!(heap.read(|r| Ok(r.get(v)?.len()))?, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn new(tx: &mut Tx<'_>) -> Result<PPtr<PVec<T>>> {
        tx.record_type::<T>()?;
        tx.alloc(PVec {
            buf: 0,
            cap: 0,
            len: 0,
            elem: T::ID,
            _t: PhantomData,
        })
    }
}

impl<T: Stored> PVec<T> {
    /// The header read from its own offset `at`: its shape ([`Self::checked_shape`]), and a
    /// buffer that does not overlap the header itself (a buffer offset damaged to name the
    /// header's own words was realloc'd and freed as a caller's `InvalidFree`: the damage
    /// sweep).
    fn checked_at<V: View + ?Sized>(self, view: &V, at: u64) -> Result<PVec<T>> {
        let h = self.checked_shape(view, at)?;
        let size = std::mem::size_of::<T>() as u64;
        let end = h.buf.saturating_add(h.cap.saturating_mul(size));
        let header_end = at.saturating_add(std::mem::size_of::<Self>() as u64);
        if h.cap > 0 && h.buf < header_end && at < end.max(h.buf.saturating_add(1)) {
            return Err(corrupt(
                at,
                format!(
                    "PVec header: its buffer {:#x} (capacity {}) overlaps the header",
                    h.buf, h.cap
                ),
            ));
        }
        Ok(h)
    }

    /// The header's shape: its element identity, a length within the capacity, a buffer for
    /// a capacity, ending below 2^64. `at` names the damage in an error.
    fn checked_shape<V: View + ?Sized>(self, view: &V, at: u64) -> Result<PVec<T>> {
        let h = self;
        check_id::<T, V>(view, h.elem, at, "element")?;
        let size = std::mem::size_of::<T>() as u64;
        // The buffer must end below 2^64: element offsets are computed before any checked
        // read (a review found a buffer near 2^64 panicking `pop` and answering `get` of an
        // index inside the length with `None`).
        let end = h.cap.checked_mul(size).and_then(|b| h.buf.checked_add(b));
        if h.len > h.cap || (h.cap > 0 && h.buf == 0) || (size > 0 && end.is_none()) {
            return Err(corrupt(
                at,
                format!(
                    "PVec header: length {} capacity {} buffer {:#x}",
                    h.len, h.cap, h.buf
                ),
            ));
        }
        Ok(h)
    }
}

impl<T: Element> PPtr<PVec<T>> {
    /// The header, with its element type and shape checked.
    /// The header, for an operation that will write it: first checked to be a live
    /// allocation, before the operation allocates anything. (A review found a handle kept
    /// after its collection was freed accepted: the operation's first allocation took the
    /// freed header's block, and the header written last pointed at itself.)
    #[inline]
    fn header_mut(self, tx: &mut Tx<'_>) -> Result<PVec<T>> {
        tx.writable(self.offset(), std::mem::size_of::<PVec<T>>() as u64, 8)?;
        let h = self.header(tx)?;
        // Elements that own storage are released from the buffer (truncate, clear, pop,
        // remove): it must be an allocation of its own, as large as the capacity, or a
        // damaged buffer offset inside another object would have them free what that object's
        // bytes happen to name. (Plain elements are only written: `write_elems` checks.)
        let bytes = h.cap * std::mem::size_of::<T>() as u64; // (`checked`: no overflow)
        if T::OWNS_STORAGE
            && bytes > 0
            && tx
                .usable_size(PPtr::<u8>::from_offset(h.buf))
                .is_none_or(|u| u < bytes)
        {
            return Err(Self::not_own(self.offset(), &h));
        }
        Ok(h)
    }

    fn not_own(at: u64, h: &PVec<T>) -> Error {
        corrupt(
            at,
            format!(
                "PVec buffer {:#x} of capacity {} is not an allocation of its own",
                h.buf, h.cap
            ),
        )
    }

    /// Write `values` at element `at` of the buffer (inside the capacity). The buffer must be
    /// an allocation of its own, as large as the capacity: a damaged buffer offset inside
    /// another object would otherwise have the vector's writes change that object (found by
    /// review: one flipped bit did it). Checked in the write's own allocation check
    /// (`Tx::writable_block`), at no extra cost.
    fn write_elems(self, tx: &mut Tx<'_>, h: &PVec<T>, at: u64, values: &[T]) -> Result<()> {
        let size = std::mem::size_of::<T>() as u64;
        let n = values.len() as u64;
        if size == 0 || n == 0 || at.checked_add(n).is_none_or(|e| e > h.cap) {
            // (Nothing to write, or a range past the capacity: `write_slice` says which.)
            return tx.write_slice(PSlice::<T>::from_raw_parts(h.buf, h.cap), at, values);
        }
        let w = self.buffer_writable(tx, h)?;
        let part = PSlice::<T>::from_raw_parts(h.buf + at * size, n);
        tx.slice_mut_in(&w, part)?.copy_from_slice(values);
        Ok(())
    }

    /// The buffer (non-empty, of a sized type) checked writable as an allocation of its own.
    fn buffer_writable(self, tx: &mut Tx<'_>, h: &PVec<T>) -> Result<Writable> {
        let size = std::mem::size_of::<T>() as u64;
        let block = (h.buf, h.cap * size, std::mem::align_of::<T>() as u64);
        super::own_block_writable(tx, block, self.offset(), || {
            format!("PVec buffer of capacity {}", h.cap)
        })
    }

    fn header<V: View>(self, view: &V) -> Result<PVec<T>> {
        view.get(self)?.checked_at(view, self.offset())
    }

    fn elements(h: &PVec<T>) -> PSlice<T> {
        PSlice::from_raw_parts(h.buf, h.len)
    }

    /// The elements in place (no copy), checked.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvs.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.extend_from_slice(tx, &[1u8, 2, 3])?; Ok(v) })?;
    /// assert_eq!(heap.read(|r| Ok(v.as_slice(r)?.to_vec()))?, [1, 2, 3]);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn as_slice<V: View>(self, view: &V) -> Result<&[T]> {
        super::own(self, self.as_slice_raw(view))
    }

    fn as_slice_raw<V: View>(self, view: &V) -> Result<&[T]> {
        let h = self.header(view)?;
        if h.len == 0 {
            return Ok(&[]);
        }
        view.slice(Self::elements(&h))
    }

    /// The number of elements.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvl.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.push(tx, 1u16)?; Ok(v) })?;
    /// assert_eq!(heap.read(|r| v.len(r))?, 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn len<V: View>(self, view: &V) -> Result<u64> {
        Ok(self.header(view)?.len)
    }

    /// Element `i`, or `None` past the end.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvg.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.push(tx, 7i32)?; Ok(v) })?;
    /// assert_eq!(heap.read(|r| v.get(r, 0))?, Some(7));
    /// assert_eq!(heap.read(|r| v.get(r, 1))?, None);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn get<V: View>(self, view: &V, i: u64) -> Result<Option<T>> {
        super::own(self, self.get_raw(view, i))
    }

    fn get_raw<V: View>(self, view: &V, i: u64) -> Result<Option<T>> {
        let h = self.header(view)?;
        match Self::elements(&h).get(i) {
            Some(p) => Ok(Some(*view.get(p)?)),
            None => Ok(None),
        }
    }

    /// Replace element `i`, returning the old one (the caller owns it: release it if it owns
    /// storage).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvset.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.push(tx, 1u8)?;
    ///     assert_eq!(v.set(tx, 0, 5)?, 1);
    ///     assert!(v.set(tx, 1, 5).is_err());
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn set(self, tx: &mut Tx<'_>, i: u64, value: T) -> Result<T> {
        super::own(self, tx.op("PVec::set", |tx| self.set_body(tx, i, value)))
    }

    fn set_body(self, tx: &mut Tx<'_>, i: u64, value: T) -> Result<T> {
        // (The header is not written: read it. `write_elems` checks the buffer.)
        let h = self.header(tx)?;
        let p = Self::elements(&h).get(i).ok_or(Error::IndexOutOfRange {
            index: i,
            len: h.len,
        })?;
        let old = *tx.get(p)?;
        self.write_elems(tx, &h, i, &[value])?;
        Ok(old)
    }

    /// Make room for at least `additional` more elements (growing to the next power of two).
    /// A length that would pass `u64::MAX` is [`Error::ObjectTooLarge`]; one past what the heap
    /// can hold, [`Error::ObjectTooLarge`] or [`Error::OutOfSpace`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvr.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::<u64>::new(tx)?; v.reserve(tx, 100)?; Ok(v) })?;
    /// assert!(heap.read(|r| Ok(r.get(v)?.capacity()))? >= 100);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn reserve(self, tx: &mut Tx<'_>, additional: u64) -> Result<()> {
        super::own(
            self,
            tx.op("PVec::reserve", |tx| self.reserve_body(tx, additional)),
        )
    }

    fn reserve_body(self, tx: &mut Tx<'_>, additional: u64) -> Result<()> {
        let mut h = self.header_mut(tx)?;
        let need = h.len.checked_add(additional).ok_or(Error::ObjectTooLarge {
            requested: u64::MAX,
            max: crate::alloc::OBJECT_SIZE_MAX,
        })?;
        if need <= h.cap {
            return Ok(());
        }
        let cap = need.max(4).checked_next_power_of_two().unwrap_or(need);
        let old = PSlice::<T>::from_raw_parts(h.buf, h.cap);
        let new = tx.realloc_slice(old, h.len, cap)?;
        h.buf = new.offset();
        h.cap = new.len();
        h.elem = record_id::<T>(tx, h.elem)?;
        tx.set(self, h)
    }

    /// Shrink the buffer to the length: a large buffer gives back the 256 KiB chunks it no
    /// longer needs, or moves to a small block (as [`Tx::realloc_slice`]); an empty vector frees
    /// its buffer. The capacity is then the length.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvsf.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| {
    ///     let v = txheap::PVec::<u64>::new(tx)?;
    ///     v.extend_from_slice(tx, &vec![7; 100_000])?;
    ///     v.truncate(tx, 10)?;
    ///     v.shrink_to_fit(tx)?;
    ///     Ok(v)
    /// })?;
    /// assert_eq!(heap.read(|r| Ok(r.get(v)?.capacity()))?, 10);
    /// assert_eq!(heap.read(|r| Ok(v.as_slice(r)?.to_vec()))?, vec![7; 10]);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn shrink_to_fit(self, tx: &mut Tx<'_>) -> Result<()> {
        super::own(
            self,
            tx.op("PVec::shrink_to_fit", |tx| self.shrink_to_fit_body(tx)),
        )
    }

    fn shrink_to_fit_body(self, tx: &mut Tx<'_>) -> Result<()> {
        let mut h = self.header_mut(tx)?;
        if h.cap == h.len {
            return Ok(());
        }
        let old = PSlice::<T>::from_raw_parts(h.buf, h.cap);
        if h.len == 0 {
            tx.free_slice(old)?;
            h.buf = 0;
        } else {
            h.buf = tx.realloc_slice(old, h.len, h.len)?.offset();
        }
        h.cap = h.len;
        tx.set(self, h)
    }

    /// Append `value`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvp.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.push(tx, [1u8; 3])?; Ok(v) })?;
    /// assert_eq!(heap.read(|r| v.get(r, 0))?, Some([1; 3]));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn push(self, tx: &mut Tx<'_>, value: T) -> Result<()> {
        super::own(self, tx.op("PVec::push", |tx| self.push_body(tx, value)))
    }

    fn push_body(self, tx: &mut Tx<'_>, value: T) -> Result<()> {
        self.extend_from_slice(tx, std::slice::from_ref(&value))
    }

    /// Append every element of `values`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pve.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.extend_from_slice(tx, &[1u32, 2])?; Ok(v) })?;
    /// assert_eq!(heap.read(|r| v.len(r))?, 2);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn extend_from_slice(self, tx: &mut Tx<'_>, values: &[T]) -> Result<()> {
        super::own(
            self,
            tx.op("PVec::extend_from_slice", |tx| {
                self.extend_from_slice_body(tx, values)
            }),
        )
    }

    fn extend_from_slice_body(self, tx: &mut Tx<'_>, values: &[T]) -> Result<()> {
        let mut h = self.header_mut(tx)?;
        let n = values.len() as u64;
        // (Checked: a damaged header's length near 2^64 passes `checked` for elements of one
        // byte or none, and a review found the sum overflowing, a panic in a debug build;
        // `reserve` then refuses it as too large.)
        if h.len.checked_add(n).is_none_or(|end| end > h.cap) {
            self.reserve(tx, n)?;
            h = self.header(tx)?;
        }
        self.write_elems(tx, &h, h.len, values)?;
        h.len += n;
        h.elem = record_id::<T>(tx, h.elem)?;
        tx.set(self, h)
    }

    /// Remove and return the last element.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvpop.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.push(tx, 4u8)?;
    ///     assert_eq!(v.pop(tx)?, Some(4));
    ///     assert_eq!(v.pop(tx)?, None);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn pop(self, tx: &mut Tx<'_>) -> Result<Option<T>> {
        super::own(self, tx.op("PVec::pop", |tx| self.pop_body(tx)))
    }

    fn pop_body(self, tx: &mut Tx<'_>) -> Result<Option<T>> {
        let mut h = self.header_mut(tx)?;
        if h.len == 0 {
            return Ok(None);
        }
        let last = *tx.get(Self::elements(&h).get(h.len - 1).expect("len > 0"))?;
        h.len -= 1;
        tx.set(self, h)?;
        Ok(Some(last))
    }

    /// Insert `value` at `i`, shifting the later elements up.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvi.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.extend_from_slice(tx, &[1u8, 3])?;
    ///     v.insert(tx, 1, 2)?;
    ///     Ok(v)
    /// })?;
    /// assert_eq!(heap.read(|r| Ok(v.as_slice(r)?.to_vec()))?, [1, 2, 3]);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn insert(self, tx: &mut Tx<'_>, i: u64, value: T) -> Result<()> {
        super::own(
            self,
            tx.op("PVec::insert", |tx| self.insert_body(tx, i, value)),
        )
    }

    fn insert_body(self, tx: &mut Tx<'_>, i: u64, value: T) -> Result<()> {
        let h = self.header(tx)?;
        if i > h.len {
            return Err(Error::IndexOutOfRange {
                index: i,
                len: h.len,
            });
        }
        let tail: Vec<T> = self.as_slice(tx)?[i as usize..].to_vec();
        self.push(tx, value)?;
        let h = self.header(tx)?;
        self.write_elems(tx, &h, i, std::slice::from_ref(&value))?;
        self.write_elems(tx, &h, i + 1, &tail)
    }

    /// Remove and return element `i`, shifting the later elements down; `i` at or past the
    /// length is [`Error::IndexOutOfRange`] (where `Vec::remove` panics), and nothing changes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvrm.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.extend_from_slice(tx, &[1u8, 2, 3])?;
    ///     assert_eq!(v.remove(tx, 0)?, 1);
    ///     assert_eq!(v.as_slice(tx)?, [2, 3]);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn remove(self, tx: &mut Tx<'_>, i: u64) -> Result<T> {
        super::own(self, tx.op("PVec::remove", |tx| self.remove_body(tx, i)))
    }

    fn remove_body(self, tx: &mut Tx<'_>, i: u64) -> Result<T> {
        let mut h = self.header_mut(tx)?;
        if i >= h.len {
            return Err(Error::IndexOutOfRange {
                index: i,
                len: h.len,
            });
        }
        let all = self.as_slice(tx)?;
        let removed = all[i as usize];
        let tail: Vec<T> = all[i as usize + 1..].to_vec();
        self.write_elems(tx, &h, i, &tail)?;
        h.len -= 1;
        tx.set(self, h)?;
        Ok(removed)
    }

    /// Remove and return element `i`, moving the last element into its place (no shift: one
    /// element written, not the tail); `i` at or past the length is
    /// [`Error::IndexOutOfRange`], and nothing changes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvsr.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.extend_from_slice(tx, &[1u8, 2, 3, 4])?;
    ///     assert_eq!(v.swap_remove(tx, 0)?, 1);
    ///     assert_eq!(v.as_slice(tx)?, [4, 2, 3]);
    ///     assert!(v.swap_remove(tx, 3).is_err());
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn swap_remove(self, tx: &mut Tx<'_>, i: u64) -> Result<T> {
        super::own(
            self,
            tx.op("PVec::swap_remove", |tx| self.swap_remove_body(tx, i)),
        )
    }

    fn swap_remove_body(self, tx: &mut Tx<'_>, i: u64) -> Result<T> {
        let mut h = self.header_mut(tx)?;
        if i >= h.len {
            return Err(Error::IndexOutOfRange {
                index: i,
                len: h.len,
            });
        }
        let all = self.as_slice(tx)?;
        let (removed, last) = (all[i as usize], all[h.len as usize - 1]);
        if i + 1 < h.len {
            self.write_elems(tx, &h, i, &[last])?;
        }
        h.len -= 1;
        tx.set(self, h)?;
        Ok(removed)
    }

    /// Keep only the elements for which `keep` is true (given each element's borrowed form:
    /// the value itself for plain data, the bytes of a [`crate::PBytes`]), in order, releasing
    /// the others; returns how many went. The elements after the first removed one are written
    /// once, shifted down.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvre.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.extend_from_slice(tx, &[1u32, 2, 3, 4, 5, 6])?;
    ///     assert_eq!(v.retain(tx, |x| x % 2 == 0)?, 3);
    ///     assert_eq!(v.as_slice(tx)?, [2, 4, 6]);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn retain(self, tx: &mut Tx<'_>, keep: impl FnMut(&T::Input) -> bool) -> Result<u64> {
        super::own(self, tx.op("PVec::retain", |tx| self.retain_body(tx, keep)))
    }

    fn retain_body(self, tx: &mut Tx<'_>, mut keep: impl FnMut(&T::Input) -> bool) -> Result<u64> {
        let mut h = self.header_mut(tx)?;
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        let mut first = None;
        for (i, e) in self.as_slice(tx)?.iter().enumerate() {
            if keep(T::load(e, tx)?) {
                if first.is_some() {
                    kept.push(*e);
                }
            } else {
                first.get_or_insert(i);
                gone.push(*e);
            }
        }
        let Some(first) = first else {
            return Ok(0);
        };
        self.write_elems(tx, &h, first as u64, &kept)?;
        for e in &gone {
            e.release(tx)?;
        }
        h.len = first as u64 + kept.len() as u64;
        tx.set(self, h)?;
        Ok(gone.len() as u64)
    }

    /// The elements in place for changing them together (sort, reverse, fill): the elements
    /// in use are staged as one write. Only for plain elements (integers, arrays, structs,
    /// `PPtr`, nested collection headers): a [`crate::PBytes`] or [`crate::PString`] handle
    /// owns a block that an overwrite here would leak, or a copy share (the bound refuses
    /// them at compile time; `set`, `swap_remove` and `retain` move them whole).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvms.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.extend_from_slice(tx, &[3u64, 1, 2])?;
    ///     v.as_mut_slice(tx)?.sort_unstable();
    ///     assert_eq!(v.as_slice(tx)?, [1, 2, 3]);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    ///
    /// A vector of byte strings has none (it would not compile):
    ///
    /// ```compile_fail
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvmsb.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::<txheap::PBytes>::new(tx)?;
    ///     v.as_mut_slice(tx)?;
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn as_mut_slice<'t>(self, tx: &'t mut Tx<'_>) -> Result<&'t mut [T]>
    where
        T: Element<Input = T>,
    {
        super::own(self, self.as_mut_slice_raw(tx))
    }

    fn as_mut_slice_raw<'t>(self, tx: &'t mut Tx<'_>) -> Result<&'t mut [T]>
    where
        T: Element<Input = T>,
    {
        let h = self.header(tx)?;
        if h.len == 0 || std::mem::size_of::<T>() == 0 {
            return tx.slice_mut(Self::elements(&h));
        }
        let w = self.buffer_writable(tx, &h)?;
        tx.slice_mut_in(&w, Self::elements(&h))
    }

    /// Shorten to `len` elements, releasing the ones dropped (a longer `len` does nothing).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvt.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.extend_from_slice(tx, &[1u8, 2, 3])?;
    ///     v.truncate(tx, 1)?;
    ///     assert_eq!(v.as_slice(tx)?, [1]);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn truncate(self, tx: &mut Tx<'_>, len: u64) -> Result<()> {
        super::own(
            self,
            tx.op("PVec::truncate", |tx| self.truncate_body(tx, len)),
        )
    }

    fn truncate_body(self, tx: &mut Tx<'_>, len: u64) -> Result<()> {
        let mut h = self.header_mut(tx)?;
        if len >= h.len {
            return Ok(());
        }
        if T::OWNS_STORAGE {
            let dropped: Vec<T> = self.as_slice(tx)?[len as usize..].to_vec();
            for e in dropped {
                e.release(tx)?;
            }
        }
        h.len = len;
        tx.set(self, h)
    }

    /// Remove every element (releasing them), keeping the buffer.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvc.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.push(tx, 1u8)?;
    ///     v.clear(tx)?;
    ///     assert_eq!(v.len(tx)?, 0);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn clear(self, tx: &mut Tx<'_>) -> Result<()> {
        super::own(self, self.clear_raw(tx))
    }

    fn clear_raw(self, tx: &mut Tx<'_>) -> Result<()> {
        self.truncate(tx, 0)
    }

    /// Release every element, free the buffer and leave an empty vector (the header stays
    /// where it is: the root or a field; free a header made by [`PVec::new`] with `tx.free`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvd.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let v = txheap::PVec::new(tx)?;
    ///     v.push(tx, 1u8)?;
    ///     v.destroy(tx)?;
    ///     tx.free(v)
    /// })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn destroy(self, tx: &mut Tx<'_>) -> Result<()> {
        super::own(self, tx.op("PVec::destroy", |tx| self.destroy_body(tx)))
    }

    fn destroy_body(self, tx: &mut Tx<'_>) -> Result<()> {
        self.clear(tx)?;
        let h = self.header(tx)?;
        if h.buf != 0 {
            tx.free_slice(PSlice::<T>::from_raw_parts(h.buf, h.cap))?;
        }
        tx.set(
            self,
            PVec {
                buf: 0,
                cap: 0,
                len: 0,
                elem: T::ID,
                _t: PhantomData,
            },
        )
    }

    /// Call `f` with the start offset of every allocation the vector holds: its buffer and
    /// what its elements own.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvb.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.push(tx, 1u8)?; Ok(v) })?;
    /// let mut blocks = Vec::new();
    /// heap.read(|r| v.for_each_block(r, |b| blocks.push(b)))?;
    /// assert_eq!(blocks.len(), 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn for_each_block<V: View>(self, view: &V, f: impl FnMut(u64)) -> Result<()> {
        super::own(self, self.for_each_block_raw(view, f))
    }

    fn for_each_block_raw<V: View>(self, view: &V, mut f: impl FnMut(u64)) -> Result<()> {
        let h = self.header(view)?;
        if h.buf != 0 {
            f(h.buf);
        }
        if T::OWNS_STORAGE {
            for e in self.as_slice(view)? {
                if let Some(b) = e.owned_block() {
                    f(b);
                }
            }
        }
        Ok(())
    }

    /// Verify the vector: header shape, element type, a buffer of its capacity inside the
    /// heap's bounds, and elements that own storage (byte strings) each readable and owning
    /// its block alone. That the buffer is one live allocation of at least that size is not
    /// checked here (no allocator lookup): [`crate::Heap::reachability`] reports a capacity
    /// past its block as a dangling range.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pvck.heap"), txheap::Options::new())?;
    /// let v = heap.transaction(|tx| { let v = txheap::PVec::new(tx)?; v.push(tx, 1u8)?; Ok(v) })?;
    /// heap.read(|r| v.check(r))?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn check<V: View>(self, view: &V) -> Result<()> {
        super::own(self, self.check_raw(view))
    }

    fn check_raw<V: View>(self, view: &V) -> Result<()> {
        let h = self.header(view)?;
        if h.cap > 0 {
            view.slice(PSlice::<T>::from_raw_parts(h.buf, h.cap))?;
        }
        // Elements that own storage: each loads, and owns its block alone (a review found a
        // byte string out of bounds, and two elements naming one block, passing `check`).
        if T::OWNS_STORAGE {
            let mut owned = std::collections::HashSet::new();
            for (i, e) in self.as_slice(view)?.iter().enumerate() {
                if let Some(b) = e.owned_block() {
                    if !owned.insert(b) {
                        return Err(corrupt(
                            self.offset(),
                            format!("PVec elements: block {b:#x} owned by two (the second: {i})"),
                        ));
                    }
                }
                T::load(e, view)?;
            }
        }
        Ok(())
    }
}
