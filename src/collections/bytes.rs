//! `PBytes` and `PString`: variable-length byte and UTF-8 values in their own allocation.

use super::{corrupt, Element, View};
use crate::error::{Error, Result};
use crate::pptr::PSlice;
use crate::stored::{Field, Stored};
use crate::tx::Tx;

/// A byte string in its own allocation: a 16-byte handle (offset and length) that can be
/// stored anywhere, a collection's key or value among them. Empty bytes allocate nothing.
///
/// ```
/// use txheap::PBytes;
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("pbytes.heap"), txheap::Options::new())?;
/// let b = heap.transaction(|tx| PBytes::new(tx, b"hello"))?;
/// assert_eq!(heap.read(|r| Ok(b.bytes(r)?.to_vec()))?, b"hello");
/// heap.transaction(|tx| b.free(tx))?;
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct PBytes {
    slice: PSlice<u8>,
}

impl PBytes {
    /// Allocate a copy of `bytes`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pbn.heap"), txheap::Options::new())?;
    /// let b = heap.transaction(|tx| txheap::PBytes::new(tx, &[1, 2, 3]))?;
    /// assert_eq!(b.len(), 3);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn new(tx: &mut Tx<'_>, bytes: &[u8]) -> Result<PBytes> {
        tx.op("PBytes::new", |tx| Self::new_body(tx, bytes))
    }

    fn new_body(tx: &mut Tx<'_>, bytes: &[u8]) -> Result<PBytes> {
        if bytes.is_empty() {
            return Ok(PBytes::default());
        }
        Ok(PBytes {
            slice: tx.alloc_slice(bytes)?,
        })
    }

    /// The bytes, read through any [`View`] (no copy). A handle that names bytes outside the
    /// heap, or at offset 0 with a length (only a damaged file, or a handle of another heap,
    /// holds one: `new` makes every handle) is [`crate::Error::Corrupt`], naming it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pbb.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let b = txheap::PBytes::new(tx, b"xy")?; assert_eq!(b.bytes(tx)?, b"xy"); Ok(()) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn bytes<V: View>(self, view: &V) -> Result<&[u8]> {
        // (A `PBytes` element handed out by `PVec::get` is read here by the caller: its
        // damaged length read as a caller's `OutOfBounds`, found by the damage sweep.)
        view.slice(self.slice).map_err(|e| match e {
            Error::OutOfBounds { .. } | Error::SliceRange { .. } | Error::NullPointer => corrupt(
                self.slice.offset(),
                format!(
                    "a byte string's handle (offset {:#x}, length {}) names no bytes of the \
                     heap: {e}",
                    self.slice.offset(),
                    self.slice.len()
                ),
            ),
            e => e,
        })
    }

    /// Length in bytes.
    ///
    /// ```
    /// assert_eq!(txheap::PBytes::default().len(), 0);
    /// ```
    pub fn len(self) -> u64 {
        self.slice.len()
    }

    /// Whether the value is empty.
    ///
    /// ```
    /// assert!(txheap::PBytes::default().is_empty());
    /// ```
    pub fn is_empty(self) -> bool {
        self.slice.is_empty()
    }

    /// The underlying slice handle.
    ///
    /// ```
    /// assert!(txheap::PBytes::default().as_slice().is_empty());
    /// ```
    pub fn as_slice(self) -> PSlice<u8> {
        self.slice
    }

    /// Free the allocation (nothing for an empty value).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("pbf.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| txheap::PBytes::new(tx, b"gone")?.free(tx))?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn free(self, tx: &mut Tx<'_>) -> Result<()> {
        if self.slice.offset() == 0 {
            return Ok(());
        }
        tx.free_slice(self.slice)
    }
}

impl Stored for PBytes {
    const NAME: &'static str = "PBytes";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = Field::struct_id("PBytes", 16, 8, &[]);

    /// The bytes' allocation.
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> Result<()> {
        walk.slice(self.slice)
    }
}

impl Element for PBytes {
    type Input = [u8];
    fn store(tx: &mut Tx<'_>, input: &[u8]) -> Result<Self> {
        PBytes::new(tx, input)
    }
    fn load<'v, V: View>(this: &'v Self, view: &'v V) -> Result<&'v [u8]> {
        this.bytes(view)
    }
    fn release(self, tx: &mut Tx<'_>) -> Result<()> {
        self.free(tx)
    }
    fn owned_block(&self) -> Option<u64> {
        Some(self.slice.offset()).filter(|&o| o != 0)
    }
}

/// A UTF-8 string in its own allocation (a [`PBytes`] whose bytes are checked to be UTF-8 on
/// every read: a damaged file gives [`crate::Error::Corrupt`], never an invalid `str`).
///
/// ```
/// use txheap::PString;
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("pstring.heap"), txheap::Options::new())?;
/// let s = heap.transaction(|tx| PString::new(tx, "héllo"))?;
/// assert_eq!(heap.read(|r| Ok(s.as_str(r)?.to_uppercase()))?, "HÉLLO");
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct PString {
    bytes: PBytes,
}

impl PString {
    /// Allocate a copy of `s`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("psn.heap"), txheap::Options::new())?;
    /// let s = heap.transaction(|tx| txheap::PString::new(tx, "abc"))?;
    /// assert_eq!(s.len(), 3);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn new(tx: &mut Tx<'_>, s: &str) -> Result<PString> {
        Ok(PString {
            bytes: PBytes::new(tx, s.as_bytes())?,
        })
    }

    /// The string, read through any [`View`] and checked to be UTF-8.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("psa.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| { let s = txheap::PString::new(tx, "ok")?; assert_eq!(s.as_str(tx)?, "ok"); Ok(()) })?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn as_str<V: View>(self, view: &V) -> Result<&str> {
        let b = self.bytes.bytes(view)?;
        std::str::from_utf8(b).map_err(|e| {
            corrupt(
                self.bytes.as_slice().offset(),
                format!("PString holds invalid UTF-8 ({e})"),
            )
        })
    }

    /// Length in bytes.
    ///
    /// ```
    /// assert_eq!(txheap::PString::default().len(), 0);
    /// ```
    pub fn len(self) -> u64 {
        self.bytes.len()
    }

    /// Whether the string is empty.
    ///
    /// ```
    /// assert!(txheap::PString::default().is_empty());
    /// ```
    pub fn is_empty(self) -> bool {
        self.bytes.is_empty()
    }

    /// Free the allocation.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("psf.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| txheap::PString::new(tx, "gone")?.free(tx))?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn free(self, tx: &mut Tx<'_>) -> Result<()> {
        self.bytes.free(tx)
    }
}

impl Stored for PString {
    const NAME: &'static str = "PString";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = Field::struct_id("PString", 16, 8, &[]);

    /// The bytes' allocation.
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> Result<()> {
        self.bytes.refs(walk)
    }
}

impl Element for PString {
    type Input = str;
    fn store(tx: &mut Tx<'_>, input: &str) -> Result<Self> {
        PString::new(tx, input)
    }
    fn load<'v, V: View>(this: &'v Self, view: &'v V) -> Result<&'v str> {
        this.as_str(view)
    }
    fn release(self, tx: &mut Tx<'_>) -> Result<()> {
        self.free(tx)
    }
    fn owned_block(&self) -> Option<u64> {
        self.bytes.owned_block()
    }
}
