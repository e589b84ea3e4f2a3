//! Offset-based persistent pointers.
//!
//! Owns: `PPtr<T>` and `PSlice<T>`, plain 8- and 16-byte values that may be stored inside the
//! heap. May not: dereference anything. Dereferencing needs a [`crate::Tx`] or
//! [`crate::Reader`], which check bounds and alignment first, so any bit pattern is harmless.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use bytemuck::{Pod, Zeroable};

/// A pointer into a heap: the byte offset of a `T` from the start of the heap file. Offset 0 is
/// null. It stays valid wherever the file is mapped, and can be stored inside heap objects.
///
/// ```
/// use txheap::PPtr;
/// let p: PPtr<u64> = PPtr::null();
/// assert!(p.is_null());
/// assert_eq!(std::mem::size_of::<PPtr<[u8; 100]>>(), 8);
/// ```
#[repr(transparent)]
pub struct PPtr<T> {
    offset: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> PPtr<T> {
    /// The null pointer.
    ///
    /// ```
    /// assert_eq!(txheap::PPtr::<u32>::null().offset(), 0);
    /// ```
    pub const fn null() -> Self {
        PPtr {
            offset: 0,
            _type: PhantomData,
        }
    }

    /// A pointer from a raw file offset. Safe: nothing is dereferenced until a checked access.
    ///
    /// ```
    /// let p = txheap::PPtr::<u32>::from_offset(4096);
    /// assert_eq!(p.offset(), 4096);
    /// ```
    pub const fn from_offset(offset: u64) -> Self {
        PPtr {
            offset,
            _type: PhantomData,
        }
    }

    /// The file offset this pointer holds.
    ///
    /// ```
    /// assert_eq!(txheap::PPtr::<u8>::from_offset(7).offset(), 7);
    /// ```
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Whether this is the null pointer.
    ///
    /// ```
    /// assert!(!txheap::PPtr::<u8>::from_offset(8).is_null());
    /// ```
    pub const fn is_null(self) -> bool {
        self.offset == 0
    }

    /// The same offset, read as another type.
    ///
    /// ```
    /// let p = txheap::PPtr::<u64>::from_offset(64);
    /// let q: txheap::PPtr<[u8; 8]> = p.cast();
    /// assert_eq!(q.offset(), 64);
    /// ```
    pub const fn cast<U>(self) -> PPtr<U> {
        PPtr {
            offset: self.offset,
            _type: PhantomData,
        }
    }
}

impl<T> Clone for PPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PPtr<T> {}
impl<T> Default for PPtr<T> {
    fn default() -> Self {
        Self::null()
    }
}
impl<T> PartialEq for PPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}
impl<T> Eq for PPtr<T> {}
impl<T> PartialOrd for PPtr<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for PPtr<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.offset.cmp(&other.offset)
    }
}
impl<T> Hash for PPtr<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.offset.hash(state)
    }
}
impl<T> fmt::Debug for PPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PPtr<{}>({:#x})",
            std::any::type_name::<T>(),
            self.offset
        )
    }
}
// SAFETY: repr(transparent) over a u64 (PhantomData is a ZST): all-zero is valid (null).
unsafe impl<T> Zeroable for PPtr<T> {}
// SAFETY: repr(transparent) over a u64: no padding, every bit pattern is a valid value, Copy,
// 'static because T: 'static. Validity of the *target* is checked on every dereference.
unsafe impl<T: 'static> Pod for PPtr<T> {}

/// A pointer to `len` consecutive `T`s in a heap (16 bytes, storable in the heap).
///
/// ```
/// use txheap::PSlice;
/// let s: PSlice<u32> = PSlice::empty();
/// assert!(s.is_empty());
/// assert_eq!(std::mem::size_of::<PSlice<u32>>(), 16);
/// ```
#[repr(C)]
pub struct PSlice<T> {
    offset: u64,
    len: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> PSlice<T> {
    /// The empty slice (null offset, length 0).
    ///
    /// ```
    /// assert_eq!(txheap::PSlice::<u8>::empty().len(), 0);
    /// ```
    pub const fn empty() -> Self {
        PSlice {
            offset: 0,
            len: 0,
            _type: PhantomData,
        }
    }

    /// A slice from a raw offset and element count. Safe: accesses are checked.
    ///
    /// ```
    /// let s = txheap::PSlice::<u16>::from_raw_parts(4096, 3);
    /// assert_eq!((s.offset(), s.len()), (4096, 3));
    /// ```
    pub const fn from_raw_parts(offset: u64, len: u64) -> Self {
        PSlice {
            offset,
            len,
            _type: PhantomData,
        }
    }

    /// File offset of the first element.
    ///
    /// ```
    /// assert_eq!(txheap::PSlice::<u8>::from_raw_parts(64, 1).offset(), 64);
    /// ```
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(txheap::PSlice::<u8>::from_raw_parts(64, 5).len(), 5);
    /// ```
    pub const fn len(self) -> u64 {
        self.len
    }

    /// Whether the slice has no elements.
    ///
    /// ```
    /// assert!(txheap::PSlice::<u8>::from_raw_parts(64, 0).is_empty());
    /// ```
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// A pointer to element `i`, or `None` past the end.
    ///
    /// ```
    /// let s = txheap::PSlice::<u32>::from_raw_parts(64, 2);
    /// assert_eq!(s.get(1).unwrap().offset(), 68);
    /// assert!(s.get(2).is_none());
    /// ```
    pub fn get(self, i: u64) -> Option<PPtr<T>> {
        if i >= self.len {
            return None;
        }
        let off = (std::mem::size_of::<T>() as u64)
            .checked_mul(i)?
            .checked_add(self.offset)?;
        Some(PPtr::from_offset(off))
    }

    /// A pointer to the first element (null for the empty slice).
    ///
    /// ```
    /// let s = txheap::PSlice::<u32>::from_raw_parts(64, 2);
    /// assert_eq!(s.as_ptr().offset(), 64);
    /// ```
    pub const fn as_ptr(self) -> PPtr<T> {
        PPtr::from_offset(self.offset)
    }

    pub(crate) fn byte_len(self) -> Option<u64> {
        (std::mem::size_of::<T>() as u64).checked_mul(self.len)
    }
}

impl<T> Clone for PSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PSlice<T> {}
impl<T> Default for PSlice<T> {
    fn default() -> Self {
        Self::empty()
    }
}
impl<T> PartialEq for PSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.offset, self.len) == (other.offset, other.len)
    }
}
impl<T> Eq for PSlice<T> {}
impl<T> fmt::Debug for PSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PSlice<{}>({:#x}, len {})",
            std::any::type_name::<T>(),
            self.offset,
            self.len
        )
    }
}
// SAFETY: repr(C) of two u64 and a ZST: no padding, all-zero is the empty slice.
unsafe impl<T> Zeroable for PSlice<T> {}
// SAFETY: as above, every bit pattern is a valid value; accesses check bounds.
unsafe impl<T: 'static> Pod for PSlice<T> {}

/// View the checked bytes `b` of the slice `s` as `[T]`. For a zero-sized `T` the bytes are
/// empty whatever `s.len()` is, and the answer is a slice of `s.len()` elements.
pub(crate) fn cast_slice<T: Pod>(b: &[u8], s: PSlice<T>) -> crate::Result<&[T]> {
    if std::mem::size_of::<T>() == 0 {
        let len = zst_len(s)?;
        // SAFETY: `T` is zero-sized, so a slice of any length occupies no memory and a dangling,
        // aligned pointer is valid for it (`len * 0 <= isize::MAX`); a Pod ZST has exactly one
        // value, so there is nothing to initialise.
        return Ok(unsafe {
            std::slice::from_raw_parts(std::ptr::NonNull::<T>::dangling().as_ptr(), len)
        });
    }
    bytemuck::try_cast_slice(b).map_err(|_| misaligned(s))
}

/// [`cast_slice`] for writing.
pub(crate) fn cast_slice_mut<T: Pod>(b: &mut [u8], s: PSlice<T>) -> crate::Result<&mut [T]> {
    if std::mem::size_of::<T>() == 0 {
        let len = zst_len(s)?;
        // SAFETY: as in `cast_slice`; a `&mut` to zero-sized elements aliases no memory.
        return Ok(unsafe {
            std::slice::from_raw_parts_mut(std::ptr::NonNull::<T>::dangling().as_ptr(), len)
        });
    }
    bytemuck::try_cast_slice_mut(b).map_err(|_| misaligned(s))
}

fn zst_len<T>(s: PSlice<T>) -> crate::Result<usize> {
    usize::try_from(s.len()).map_err(|_| crate::Error::OutOfBounds {
        offset: s.offset(),
        len: s.len(),
        heap_end: 0,
    })
}

fn misaligned<T>(s: PSlice<T>) -> crate::Error {
    crate::Error::Misaligned {
        offset: s.offset(),
        align: std::mem::align_of::<T>() as u64,
    }
}
