//! The storage choke point: every byte recovery reads, writes or makes durable.
//!
//! Owns: the `Storage` trait and `MemStorage`, its in-memory implementation for tests and
//! simulators. May not: know superblocks, frames or the file's layout; it moves bytes only.

use std::io;

/// The one choke point through which every byte of the file is read, written and made durable.
///
/// ```
/// use txheap_recovery::{MemStorage, Storage};
/// let mut s = MemStorage::new();
/// s.write_at(10, b"ab").unwrap();
/// let mut b = [0u8; 2];
/// s.read_at(10, &mut b).unwrap();
/// assert_eq!(&b, b"ab");
/// ```
#[allow(clippy::len_without_is_empty)] // a file's length; "empty" means nothing here
pub trait Storage {
    /// Current file length.
    fn len(&self) -> io::Result<u64>;
    /// Read exactly `buf.len()` bytes at `offset` (`UnexpectedEof` past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A read-only view of `[offset, offset+len)` (the caller checked that it lies inside the
    /// file) that does not borrow the storage, such as a mapping, so that a large region can be
    /// read without copying it; `None` (the default): read it with [`Storage::read_at`]. The
    /// caller writes nothing inside the region while the view lives.
    ///
    /// ```
    /// use txheap_recovery::{MemStorage, Storage};
    /// let s = MemStorage::from_bytes(vec![7; 16]);
    /// assert!(s.view(0, 16).unwrap().is_none()); // memory: read it with read_at
    /// ```
    fn view(&self, _offset: u64, _len: u64) -> io::Result<Option<Box<dyn AsRef<[u8]>>>> {
        Ok(None)
    }
    /// Write `bytes` at `offset`; may extend the file.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Make `[offset, offset+len)` durable.
    fn barrier(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Make every write so far durable, including the file's length.
    fn barrier_all(&mut self) -> io::Result<()>;
    /// Ensure the file is at least `new_len` bytes with blocks allocated (never shrinks).
    fn grow(&mut self, new_len: u64) -> io::Result<()>;
}

/// An in-memory [`Storage`] for tests and simulators.
///
/// ```
/// use txheap_recovery::{MemStorage, Storage};
/// let mut s = MemStorage::from_bytes(vec![1, 2, 3]);
/// s.barrier_all().unwrap();
/// assert_eq!(s.barrier_count(), 1);
/// assert_eq!(s.bytes(), &[1, 2, 3]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    bytes: Vec<u8>,
    barriers: u64,
}

impl MemStorage {
    /// Empty storage.
    ///
    /// ```
    /// assert!(txheap_recovery::MemStorage::new().bytes().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Storage holding `bytes`.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::from_bytes(vec![7]).bytes(), &[7]);
    /// ```
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemStorage { bytes, barriers: 0 }
    }
    /// The current bytes.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::new().bytes().len(), 0);
    /// ```
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Take the bytes.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::from_bytes(vec![1]).into_bytes(), vec![1]);
    /// ```
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    /// Barriers issued so far.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::new().barrier_count(), 0);
    /// ```
    pub fn barrier_count(&self) -> u64 {
        self.barriers
    }
}

impl Storage for MemStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.bytes.len() as u64);
        match end {
            Some(end) => {
                buf.copy_from_slice(&self.bytes[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let end = usize::try_from(end).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }
    fn barrier(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        self.barriers += 1;
        Ok(())
    }
    fn barrier_all(&mut self) -> io::Result<()> {
        self.barriers += 1;
        Ok(())
    }
    fn grow(&mut self, new_len: u64) -> io::Result<()> {
        let n =
            usize::try_from(new_len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if n > self.bytes.len() {
            self.bytes.resize(n, 0);
        }
        Ok(())
    }
}
