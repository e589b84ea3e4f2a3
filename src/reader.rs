//! Readers of the committed state, and the per-thread marks that make re-entry an error
//! instead of a deadlock.
//!
//! Owns: `Reader` (checked access to committed bytes while the view lock is held for reading)
//! and the thread-local record of which heaps this thread is reading. May not: change anything.

use std::sync::RwLockReadGuard;

use bytemuck::Pod;

use crate::alloc::HeapHeader;
use crate::error::{Error, Result};
use crate::layout::{check_root, ROOT_DESC_AT, ROOT_DESC_MAX};
use crate::pptr::{PPtr, PSlice};
use crate::shared::{Shared, View};
use crate::stored::Stored;

/// A view of the committed state, given to [`Heap::read`](crate::Heap::read)'s closure.
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
    header: HeapHeader,
    /// `None` for a read nested in another read of the same heap (which holds the lock).
    _guard: Option<RwLockReadGuard<'h, View>>,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("chunk_count", &self.header.chunk_count)
            .finish_non_exhaustive()
    }
}

impl<'h> Reader<'h> {
    fn bytes(&self, off: u64, len: u64, align: u64) -> Result<&[u8]> {
        self.sh
            .geo
            .check(self.header.chunk_count, off, len, align)?;
        // SAFETY: in bounds of the committed heap, which is mapped; we hold the view lock for
        // reading for as long as `self` (and so the slice) lives, and every change to the heap's
        // bytes in the file or the mapping (apply, in-place writes, flush) happens under the
        // view lock for writing, so nothing changes these bytes.
        Ok(unsafe { self.sh.map.slice(off, len as usize) })
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
        let len = self.sh.geo.slice_bytes(self.header.chunk_count, s)?;
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
            // SAFETY: the header page lies below the root area, inside the mapped heap; the
            // view lock held by `self` keeps it unchanged (as in `bytes`).
            unsafe { self.sh.map.slice(self.sh.geo.heap_offset, len) }.to_vec()
        };
        if check_root::<T>(&self.header, &page)? {
            Ok(PPtr::from_offset(self.sh.geo.root_offset))
        } else {
            Err(Error::NoRoot)
        }
    }
}

impl<'h> Reader<'h> {
    /// A reader of the state with `header`; `guard` is the view lock held for reading, or `None`
    /// inside another read of the same heap on this thread (which holds it).
    pub(crate) fn new(
        sh: &'h Shared,
        header: HeapHeader,
        guard: Option<RwLockReadGuard<'h, View>>,
    ) -> Reader<'h> {
        Reader {
            sh,
            header,
            _guard: guard,
        }
    }
}

thread_local! {
    /// Heaps (by address) whose `read` closure is running on this thread: a transaction on one of
    /// them would wait forever for its own read lock, so it is refused instead.
    static READING: std::cell::RefCell<Vec<(usize, HeapHeader)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread is inside a `read` closure of the heap at `.0` (which holds the view lock and
/// saw `header`).
pub(crate) struct ReadingMark(usize);
impl ReadingMark {
    pub(crate) fn new(addr: usize, header: HeapHeader) -> ReadingMark {
        READING.with(|r| r.borrow_mut().push((addr, header)));
        ReadingMark(addr)
    }
    pub(crate) fn header(addr: usize) -> Option<HeapHeader> {
        READING.with(|r| r.borrow().iter().find(|(a, _)| *a == addr).map(|(_, h)| *h))
    }
    pub(crate) fn active(addr: usize) -> bool {
        Self::header(addr).is_some()
    }
}
impl Drop for ReadingMark {
    fn drop(&mut self) {
        READING.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(i) = r.iter().rposition(|&(a, _)| a == self.0) {
                r.remove(i);
            }
        });
    }
}

pub(crate) fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}
