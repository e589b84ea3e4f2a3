//! The heap: file lifecycle, locking, the commit protocol, checkpoints and readers.
//!
//! Owns: the open file, its lock, the mapping, the writer state (log tail, allocator) and the
//! view lock that separates readers from the apply step. May not: encode frames or superblocks
//! by hand (the log and recovery crates do), or write the file except through `FileStorage`.
//!
//! Locks: `writer` (a mutex) is held for a whole transaction; `view` (a read-write lock) is held
//! for reading by every `read` closure and for writing only while a commit applies its ranges or
//! a flush rewrites private pages. Readers therefore run beside a transaction and see committed
//! state only.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use bytemuck::Pod;
use txheap_recovery::txheap_log::FrameBuilder;
use txheap_recovery::{
    self as recovery, Slot, Storage, Superblock, HEAP_META_LEN, LOG_LEN_MIN, LOG_OFFSET, PAGE_SIZE,
};

use crate::alloc::{Allocator, ClassStats, HeapHeader, CHUNK, HEAP_HEADER_LEN, MAX_ALIGN};
use crate::error::{Error, Result};
use crate::pptr::{PPtr, PSlice};
use crate::storage::{FileStorage, IoCounters};
use crate::sys::{self, Mapping};
use crate::tx::Tx;

/// Size of the root area: the largest root object.
pub const ROOT_AREA_LEN: u64 = 4096;
/// In `Durability::None`, flush private pages to the file once this many are held.
const PENDING_PAGES_MAX: usize = 16384;

/// When a commit is durable.
///
/// ```
/// use txheap::{Durability, Options};
/// let o = Options::new().durability(Durability::None);
/// assert_eq!(o.get_durability(), Durability::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit barriers its log frame before `transaction` returns: survives power loss.
    #[default]
    Full,
    /// No barrier in the commit path. Survives SIGKILL; after a power cut the heap is a committed
    /// prefix (possibly missing the newest acknowledged transactions), never torn.
    /// [`Heap::flush`] makes everything committed so far durable.
    None,
}

/// How to create or open a heap (builder style).
///
/// ```
/// use txheap::Options;
/// let o = Options::new().initial_size(8 << 20).max_size(1 << 30).log_size(4 << 20);
/// assert_eq!(o.get_max_size(), 1 << 30);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    initial_size: u64,
    max_size: u64,
    log_size: u64,
    durability: Durability,
    #[cfg(feature = "test-hooks")]
    trace: Option<crate::Trace>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            initial_size: 4 << 20,
            max_size: 16 << 30,
            log_size: 16 << 20,
            durability: Durability::Full,
            #[cfg(feature = "test-hooks")]
            trace: None,
        }
    }
}

impl Options {
    /// Defaults: 4 MiB initial file, 16 GiB maximum, 16 MiB log, `Durability::Full`.
    ///
    /// ```
    /// assert_eq!(txheap::Options::new().get_log_size(), 16 << 20);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Bytes to preallocate for a new file (at least its metadata). Only used by create.
    ///
    /// ```
    /// let o = txheap::Options::new().initial_size(1 << 20);
    /// ```
    pub fn initial_size(mut self, bytes: u64) -> Self {
        self.initial_size = bytes;
        self
    }
    /// Largest size the file may grow to; this much address space is reserved at open. Only used
    /// by create (an existing file keeps its own).
    ///
    /// ```
    /// let o = txheap::Options::new().max_size(64 << 30);
    /// ```
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }
    /// Bytes of the log region (a multiple of 4096, at least 64 KiB). A transaction's redo frame
    /// must fit in it. Only used by create.
    ///
    /// ```
    /// let o = txheap::Options::new().log_size(1 << 20);
    /// ```
    pub fn log_size(mut self, bytes: u64) -> Self {
        self.log_size = bytes;
        self
    }
    /// Commit durability for this handle.
    ///
    /// ```
    /// let o = txheap::Options::new().durability(txheap::Durability::Full);
    /// ```
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Record every write, barrier and growth of the file by the opened handle (feature
    /// `test-hooks`, for the crash simulator).
    ///
    /// ```
    /// let trace = txheap::Trace::default();
    /// let o = txheap::Options::new().record(trace.clone());
    /// ```
    #[cfg(feature = "test-hooks")]
    pub fn record(mut self, trace: crate::Trace) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The configured maximum size.
    ///
    /// ```
    /// assert_eq!(txheap::Options::new().get_max_size(), 16 << 30);
    /// ```
    pub fn get_max_size(&self) -> u64 {
        self.max_size
    }
    /// The configured log size.
    ///
    /// ```
    /// assert_eq!(txheap::Options::new().get_log_size(), 16 << 20);
    /// ```
    pub fn get_log_size(&self) -> u64 {
        self.log_size
    }
    /// The configured durability.
    ///
    /// ```
    /// assert_eq!(txheap::Options::new().get_durability(), txheap::Durability::Full);
    /// ```
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidOptions { what });
        // The largest log (and file) this format addresses: offsets stay far from overflow.
        const SIZE_LIMIT: u64 = 1 << 56;
        if self.log_size % PAGE_SIZE != 0 || !(LOG_LEN_MIN..=SIZE_LIMIT).contains(&self.log_size) {
            return bad(format!(
                "log_size {} must be a multiple of {PAGE_SIZE}, at least {LOG_LEN_MIN} and at most {SIZE_LIMIT}",
                self.log_size
            ));
        }
        if self.max_size > SIZE_LIMIT {
            return bad(format!("max_size {} exceeds {SIZE_LIMIT}", self.max_size));
        }
        let meta = LOG_OFFSET + self.log_size + HEAP_META_LEN;
        if self.max_size % PAGE_SIZE != 0 || self.max_size < meta + CHUNK {
            return bad(format!(
                "max_size {} must be a multiple of {PAGE_SIZE} and at least {} (metadata plus one chunk)",
                self.max_size,
                meta + CHUNK
            ));
        }
        if self.initial_size > self.max_size {
            return bad(format!(
                "initial_size {} exceeds max_size {}",
                self.initial_size, self.max_size
            ));
        }
        Ok(())
    }
}

/// Space and activity figures of a heap.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let heap = txheap::Heap::create(dir.path().join("s.heap"), txheap::Options::new()).unwrap();
/// heap.transaction(|tx| tx.alloc(5u64).map(|_| ())).unwrap();
/// let s = heap.stats().unwrap();
/// assert_eq!(s.used_bytes, 16);
/// assert_eq!(s.commits, 1);
/// println!("on {} (volatile: {})", s.filesystem, s.volatile_storage);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Length of the file.
    pub file_len: u64,
    /// Bytes of the chunk area in use (chunks × 256 KiB).
    pub heap_bytes: u64,
    /// Bytes in live allocations (block sizes for small objects, requested sizes for large).
    pub used_bytes: u64,
    /// Bytes free: free blocks in runs plus free chunks.
    pub free_bytes: u64,
    /// The largest contiguous free extent in bytes (the largest large object that fits without growing).
    pub largest_free_extent: u64,
    /// Per size class, ascending by block size.
    pub classes: Vec<ClassStats>,
    /// Capacity of the log region.
    pub log_capacity: u64,
    /// Bytes of the log holding frames since the last checkpoint.
    pub log_used: u64,
    /// The file's maximum size (fixed at create).
    pub max_size: u64,
    /// The current superblock's sequence number (one more per checkpoint).
    pub superblock_seq: u64,
    /// The current log generation.
    pub log_generation: u64,
    /// The id the next committed transaction will get.
    pub next_txid: u64,
    /// Transactions committed through this handle.
    pub commits: u64,
    /// Checkpoints through this handle.
    pub checkpoints: u64,
    /// System calls issued by this handle's writer.
    pub io: IoCounters,
    /// The filesystem the file lives on (`"ext4"`, `"xfs"`, `"tmpfs"`, ...; `"unknown (magic
    /// 0x...)"` for others).
    pub filesystem: String,
    /// Whether that filesystem keeps files in memory only (tmpfs, ramfs): then nothing survives
    /// a power cut or a reboot, whatever the durability. `Durability::Full` still protects
    /// against a killed process.
    pub volatile_storage: bool,
}

/// Fixed offsets of an open heap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub heap_offset: u64,
    pub root_offset: u64,
    pub chunk_area: u64,
    pub log_offset: u64,
    pub log_len: u64,
    pub max_size: u64,
}

impl Geometry {
    fn of(sb: &Superblock) -> Geometry {
        Geometry {
            heap_offset: sb.heap_offset(),
            root_offset: sb.heap_offset() + PAGE_SIZE,
            chunk_area: sb.chunk_area_offset(),
            log_offset: sb.log_offset(),
            log_len: sb.log_len,
            max_size: sb.max_size,
        }
    }

    /// End of the chunk area of `chunk_count` chunks.
    pub(crate) fn heap_end(&self, chunk_count: u64) -> u64 {
        self.chunk_area + chunk_count * CHUNK
    }

    /// Bytes the elements of `s` span; a length whose bytes overflow is
    /// [`Error::OutOfBounds`] with the real end of the heap.
    pub(crate) fn slice_bytes<T>(&self, chunk_count: u64, s: PSlice<T>) -> Result<u64> {
        s.byte_len().ok_or(Error::OutOfBounds {
            offset: s.offset(),
            len: u64::MAX,
            heap_end: self.heap_end(chunk_count),
        })
    }

    /// Check that `[off, off+len)` lies in the root area or the chunk area of `chunk_count`
    /// chunks, that `off` is aligned, and that the alignment is one the heap supports (above
    /// [`MAX_ALIGN`] the answer would depend on where a staged copy happens to land).
    pub(crate) fn check(&self, chunk_count: u64, off: u64, len: u64, align: u64) -> Result<()> {
        if off == 0 {
            return Err(Error::NullPointer);
        }
        if align > MAX_ALIGN {
            return Err(Error::UnsupportedAlignment {
                align,
                max: MAX_ALIGN,
            });
        }
        if off % align != 0 {
            return Err(Error::Misaligned { offset: off, align });
        }
        let heap_end = self.heap_end(chunk_count);
        let oob = Error::OutOfBounds {
            offset: off,
            len,
            heap_end,
        };
        let end = off.checked_add(len).ok_or(oob)?;
        let in_root = off >= self.root_offset && end <= self.root_offset + ROOT_AREA_LEN;
        let in_chunks = off >= self.chunk_area && end <= heap_end;
        if in_root || in_chunks {
            Ok(())
        } else {
            Err(Error::OutOfBounds {
                offset: off,
                len,
                heap_end,
            })
        }
    }
}

/// The committed state readers see.
#[derive(Debug)]
pub(crate) struct View {
    pub header: HeapHeader,
}

/// Everything only the writer touches.
pub(crate) struct Writer {
    pub storage: FileStorage,
    sb: Superblock,
    slot: Slot,
    log_tail: u64,
    next_txid: u64,
    /// Log bytes written since the last barrier (Durability::None), absolute offsets.
    unsynced: Option<(u64, u64)>,
    pub alloc: Allocator,
    pub header: HeapHeader,
    pub frame: FrameBuilder,
    /// Pages holding private copy-on-write bytes not yet written to the file (Durability::None).
    pending_pages: BTreeSet<u64>,
    /// Set while a commit is between writing its frame and finishing apply.
    in_commit: bool,
    commits: u64,
    checkpoints: u64,
}

pub(crate) struct Inner {
    path: PathBuf,
    /// Keeps the descriptor (and its `flock`) alive: the mapping extends through it.
    file: Arc<File>,
    pub map: Mapping,
    pub geo: Geometry,
    read_only: bool,
    durability: Durability,
    writer: Mutex<Writer>,
    pub view: RwLock<View>,
    writer_thread: AtomicUsize,
    poison: Mutex<Option<String>>,
    closed: AtomicBool,
}

/// A persistent heap in one file. Every change happens in [`Heap::transaction`]; readers use
/// [`Heap::read`]. `Heap` is `Send + Sync`: share it with `Arc` between threads.
///
/// ```
/// use txheap::{Heap, Options, PPtr};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("doc.heap");
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Root { count: u64, last: PPtr<u64> }
///
/// let heap = Heap::open_or_create(&path, Options::new())?;
/// heap.transaction(|tx| {
///     let root = tx.root::<Root>()?;
///     let v = tx.alloc(42u64)?;
///     let r = tx.get_mut(root)?;
///     r.count += 1;
///     r.last = v;
///     Ok(())
/// })?;
/// let n = heap.read(|r| {
///     let root = r.root::<Root>()?;
///     let last = r.get(root)?.last;
///     Ok(*r.get(last)?)
/// })?;
/// assert_eq!(n, 42);
/// # Ok::<(), txheap::Error>(())
/// ```
pub struct Heap {
    inner: Inner,
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("path", &self.inner.path)
            .field("read_only", &self.inner.read_only)
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Heaps (by address) whose `read` closure is running on this thread: a transaction on one of
    /// them would wait forever for its own read lock, so it is refused instead.
    static READING: std::cell::RefCell<Vec<(usize, HeapHeader)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread is inside a `read` closure of the heap at `.0` (which holds the view lock and
/// saw `header`).
struct ReadingMark(usize);
impl ReadingMark {
    fn new(addr: usize, header: HeapHeader) -> ReadingMark {
        READING.with(|r| r.borrow_mut().push((addr, header)));
        ReadingMark(addr)
    }
    fn header(addr: usize) -> Option<HeapHeader> {
        READING.with(|r| r.borrow().iter().find(|(a, _)| *a == addr).map(|(_, h)| *h))
    }
    fn active(addr: usize) -> bool {
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

fn thread_token() -> usize {
    thread_local!(static TOKEN: u8 = const { 0 });
    TOKEN.with(|t| t as *const u8 as usize)
}

fn lock_file(file: &File, path: &Path, exclusive: bool) -> Result<()> {
    match sys::try_flock(file, exclusive) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Locked {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(Error::io("flock", 0, e)),
    }
}

/// A failed `open(2)` of an existing heap: a missing file is [`Error::NotFound`].
fn open_error(path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        Error::io("open", 0, e)
    }
}

/// Map the file over `max_size` bytes of address space; a refusal for lack of address space is
/// [`Error::AddressSpace`], naming the size. (ENOMEM from the kernel; EINVAL under some
/// emulators, such as valgrind, for a length they cannot place: the fd is a regular file, the
/// offset 0 and the flags fixed, so the size is the only argument that can be refused.)
fn map_file(file: &File, sb: &Superblock, len: u64, writable: bool) -> Result<Mapping> {
    Mapping::new(file, sb.max_size, len.min(sb.max_size), writable).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EINVAL)) {
            Error::AddressSpace {
                max_size: sb.max_size,
                source: e,
            }
        } else {
            Error::io("map file", 0, e)
        }
    })
}

/// FNV-1a over the type's name, size and alignment: the root's identity in the file.
pub(crate) fn fingerprint<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let name = std::any::type_name::<T>().as_bytes();
    let size = (std::mem::size_of::<T>() as u64).to_le_bytes();
    let align = (std::mem::align_of::<T>() as u64).to_le_bytes();
    for &b in name.iter().chain(&size).chain(&align) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Check a root type against what the heap header says.
pub(crate) fn check_root<T: Pod>(header: &HeapHeader) -> Result<bool> {
    let size = std::mem::size_of::<T>() as u64;
    let align = std::mem::align_of::<T>() as u64;
    if size > ROOT_AREA_LEN {
        return Err(Error::RootTooLarge {
            size,
            max: ROOT_AREA_LEN,
        });
    }
    if align > MAX_ALIGN {
        return Err(Error::UnsupportedAlignment {
            align,
            max: MAX_ALIGN,
        });
    }
    if header.root_size == 0 && header.root_fingerprint == 0 {
        return Ok(false);
    }
    let fp = fingerprint::<T>();
    if header.root_size != size || header.root_fingerprint != fp {
        return Err(Error::RootTypeMismatch {
            stored_size: header.root_size,
            stored_fingerprint: header.root_fingerprint,
            requested_size: size,
            requested_fingerprint: fp,
        });
    }
    Ok(true)
}

impl Heap {
    /// Create a new heap file; fails with [`Error::AlreadyExists`] if `path` exists. The file is
    /// built under a temporary name and linked into place only when complete, durable and
    /// mapped, so neither a crash nor a failure during create (for example
    /// [`Error::AddressSpace`] for a `max_size` the process cannot reserve) leaves a file at
    /// `path`.
    ///
    /// While the returned handle is open, nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let p = dir.path().join("new.heap");
    /// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
    /// assert!(matches!(txheap::Heap::create(&p, txheap::Options::new()), Err(txheap::Error::AlreadyExists { .. })));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn create(path: impl AsRef<Path>, options: Options) -> Result<Heap> {
        let path = path.as_ref();
        options.validate()?;
        phase!(CREATE);
        if path.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| Error::InvalidOptions {
            what: format!("{} has no file name", path.display()),
        })?;
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let tmp = dir.join(format!(
            ".{}.txheap-new-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("create temporary file", 0, e))?;
        // Everything that can fail, including the reservation of `max_size` bytes of address
        // space in `from_file`, happens before the file is linked into place: a create that
        // fails leaves nothing at `path`.
        let built = (|| -> Result<Heap> {
            lock_file(&file, path, true)?;
            let file = file.try_clone().map_err(|e| Error::io("dup", 0, e))?;
            let mut st = FileStorage::new(
                Arc::new(file.try_clone().map_err(|e| Error::io("dup", 0, e))?),
                0,
            )
            .map_err(|e| Error::io("storage", 0, e))?;
            let sb = recovery::format(&mut st, options.log_size, options.max_size)?;
            let geo = Geometry::of(&sb);
            let header = HeapHeader::default();
            st.write_at(geo.heap_offset, &header.encode())
                .map_err(|e| Error::io("write heap header", geo.heap_offset, e))?;
            let zeros = vec![0u8; (HEAP_META_LEN - HEAP_HEADER_LEN) as usize];
            st.write_at(geo.heap_offset + HEAP_HEADER_LEN, &zeros)
                .map_err(|e| Error::io("write root area", geo.heap_offset, e))?;
            let len = options.initial_size.max(geo.chunk_area);
            st.grow(len)
                .map_err(|e| Error::io("preallocate (posix_fallocate)", geo.chunk_area, e))?;
            st.barrier_all()
                .map_err(|e| Error::io("fdatasync new file", 0, e))?;
            let heap = Self::from_file(path, file, &options, false)?;
            std::fs::hard_link(&tmp, path).map_err(|e| {
                // The heap was never visible: closing it would only write to the file we remove.
                heap.inner.closed.store(true, Ordering::Release);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    Error::io("link new file into place", 0, e)
                }
            })?;
            Ok(heap)
        })();
        let _ = std::fs::remove_file(&tmp);
        let heap = built?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", 0, e))?;
        Ok(heap)
    }

    /// Open an existing heap for writing, running recovery: committed frames are replayed, a
    /// torn tail is discarded, and the result is durable before this returns. A file that is not
    /// a txheap file, or whose superblocks, log or heap metadata are damaged, gives an error and
    /// is not modified: the heap header, chunk headers and run bitmaps are checked as replay
    /// will leave them before replay writes (only an I/O error or a full disk while replaying
    /// or growing can fail the open after that, and then the file holds the committed state).
    ///
    /// While the returned handle is open, nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("o.heap");
    /// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
    /// let heap = txheap::Heap::open(&p, txheap::Options::new())?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Heap> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        lock_file(&file, path, true)?;
        Self::from_file(path, file, &options, false)
    }

    /// Open `path` if it exists, else create it.
    ///
    /// While the returned handle is open (as for [`Heap::open`]), nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("oc.heap");
    /// let heap = txheap::Heap::open_or_create(&p, txheap::Options::new())?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn open_or_create(path: impl AsRef<Path>, options: Options) -> Result<Heap> {
        let path = path.as_ref();
        match Self::create(path, options.clone()) {
            Err(Error::AlreadyExists { .. }) => Self::open(path, options),
            other => other,
        }
    }

    /// Open an existing heap read-only, sharing the file with other read-only handles. If the log
    /// holds committed frames they are replayed into this handle's private view only: the file is
    /// never written.
    ///
    /// While the returned handle is open, nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("ro.heap");
    /// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
    /// let a = txheap::Heap::open_read_only(&p)?;
    /// let b = txheap::Heap::open_read_only(&p)?;
    /// assert!(matches!(a.transaction(|_| Ok(())), Err(txheap::Error::ReadOnly)));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Heap> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        lock_file(&file, path, false)?;
        Self::from_file(path, file, &Options::new(), true)
    }

    fn from_file(path: &Path, file: File, options: &Options, read_only: bool) -> Result<Heap> {
        phase!(OPEN);
        let durability = options.durability;
        let file = Arc::new(file);
        let new_storage = |window: u64| -> Result<FileStorage> {
            #[allow(unused_mut)]
            let mut st =
                FileStorage::new(file.clone(), window).map_err(|e| Error::io("storage", 0, e))?;
            #[cfg(feature = "test-hooks")]
            {
                st.trace = options.trace.clone();
            }
            Ok(st)
        };
        let mut storage = new_storage(0)?;
        let (sb, slot, log_tail, next_txid, map) = if read_only {
            let (sb, slot) = recovery::select_superblock(&storage)?;
            let len = storage.len().map_err(|e| Error::io("stat", 0, e))?;
            if len < sb.min_file_len() {
                return Err(Error::Truncated {
                    len,
                    needed: sb.min_file_len(),
                });
            }
            let map = map_file(&file, &sb, len, true)?;
            let mut apply =
                |off: u64, bytes: &[u8]| -> std::result::Result<(), recovery::RecoveryError> {
                    let end = off + bytes.len() as u64;
                    if end > map.mapped_len() && end <= map.reserved_len() {
                        // A committed frame writes past the file's end: its growth was lost in a
                        // crash. A writable open grows the file with zeros and replays; here
                        // private zero pages stand in for the missing part.
                        // SAFETY: page-aligned, and no slice into the mapping exists yet.
                        unsafe { map.zero_tail(len.div_ceil(PAGE_SIZE) * PAGE_SIZE) }.map_err(
                            |e| recovery::RecoveryError::Io {
                                op: "map zero pages past the file's end",
                                offset: len,
                                source: e,
                            },
                        )?;
                    }
                    if end > map.mapped_len() {
                        return Err(recovery::RecoveryError::Truncated { len, needed: end });
                    }
                    // SAFETY: in bounds (checked above), the mapping is writable and private, and no
                    // slice into it exists yet (the heap is not built).
                    unsafe { map.write_private(off, bytes) };
                    Ok(())
                };
            let scan = recovery::scan_log(&storage, &sb, &mut apply)?;
            (sb, slot, scan.end_offset, scan.next_txid, map)
        } else {
            // Reserve the address space first: a refusal for lack of it must come before
            // recovery writes a byte. (The mapping is private and nothing reads it until the heap
            // is built; recovery's pwrites show through it like any file change.)
            let (sb0, _) = recovery::select_superblock(&storage)?;
            let len0 = storage.len().map_err(|e| Error::io("stat", 0, e))?;
            let map = map_file(&file, &sb0, len0, durability == Durability::None)?;
            // Frames to replay: first check the heap as replay will leave it (header, chunk
            // count, every chunk header and run bitmap), so that a damaged heap is refused
            // before recovery writes a byte.
            let rec = recovery::recover_checked(&mut storage, |sb, view| -> Result<()> {
                let mut hb = [0u8; HEAP_HEADER_LEN as usize];
                view.read(sb.heap_offset(), &mut hb)?;
                let header = HeapHeader::decode(&hb, sb.heap_offset())?;
                Self::needed_len(sb, &header)?;
                let failed = std::cell::Cell::new(None);
                let read = |off: u64, buf: &mut [u8]| {
                    if let Err(e) = view.read(off, buf) {
                        buf.fill(0);
                        failed.set(Some(e));
                    }
                };
                let walked =
                    Allocator::rebuild(Geometry::of(sb).chunk_area, header.chunk_count, &read);
                match failed.into_inner() {
                    Some(e) => Err(e.into()),
                    None => walked.map(|_| ()),
                }
            })?;
            phase!(OPEN_REBUILD);
            let sb = rec.superblock;
            let (tail, txid) = if rec.checkpointed {
                (0, sb.next_txid)
            } else {
                (rec.scan.end_offset, rec.scan.next_txid)
            };
            let mut hb = [0u8; HEAP_HEADER_LEN as usize];
            storage
                .read_at(sb.heap_offset(), &mut hb)
                .map_err(|e| Error::io("read heap header", sb.heap_offset(), e))?;
            let header = HeapHeader::decode(&hb, sb.heap_offset())?;
            let needed = Self::needed_len(&sb, &header)?;
            // Committed frames may reference chunks whose growth did not survive a power cut:
            // grow the file to the chunk count. But first walk the chunk headers as they are
            // (bytes past the end read as zeros, which no valid header is), so that a damaged
            // heap header is refused before the file changes, not after it grew.
            let cur = storage.len().map_err(|e| Error::io("stat", 0, e))?;
            if needed > cur {
                let read = |off: u64, buf: &mut [u8]| {
                    use std::os::unix::fs::FileExt;
                    buf.fill(0);
                    let mut done = 0;
                    while done < buf.len() {
                        match file.read_at(&mut buf[done..], off + done as u64) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => done += n,
                        }
                    }
                };
                Allocator::rebuild(Geometry::of(&sb).chunk_area, header.chunk_count, &read)?;
            }
            storage
                .grow(needed)
                .map_err(|e| Error::io("grow file to its chunk count", needed, e))?;
            let len = storage.len().map_err(|e| Error::io("stat", 0, e))?;
            // A checkpoint keeps the geometry, so the reservation made above still fits.
            if sb.max_size != sb0.max_size {
                return Err(Error::Corrupt {
                    offset: 0,
                    what: format!(
                        "the superblock's max_size changed during recovery ({} -> {})",
                        sb0.max_size, sb.max_size
                    ),
                });
            }
            map.extend(len.min(sb.max_size))
                .map_err(|e| Error::io("map grown file", len, e))?;
            (sb, rec.slot, tail, txid, map)
        };
        let geo = Geometry::of(&sb);
        let mut hb = [0u8; HEAP_HEADER_LEN as usize];
        // SAFETY: the heap is not shared yet; nothing writes the mapping while we read it, and the
        // header lies below min_file_len, which is mapped.
        hb.copy_from_slice(unsafe { map.slice(geo.heap_offset, HEAP_HEADER_LEN as usize) });
        let header = HeapHeader::decode(&hb, geo.heap_offset)?;
        let needed = Self::needed_len(&sb, &header)?;
        if map.mapped_len() < needed {
            return Err(Error::Truncated {
                len: map.mapped_len(),
                needed,
            });
        }
        let read = |off: u64, buf: &mut [u8]| {
            // SAFETY: as above; the allocator reads chunk headers below `needed`, which is mapped.
            buf.copy_from_slice(unsafe { map.slice(off, buf.len()) })
        };
        let alloc = Allocator::rebuild(geo.chunk_area, header.chunk_count, &read)?;
        let storage = if read_only {
            storage
        } else {
            new_storage(geo.heap_offset)?
        };
        let writer = Writer {
            storage,
            sb,
            slot,
            log_tail,
            next_txid,
            unsynced: None,
            alloc,
            header,
            frame: FrameBuilder::new(),
            pending_pages: BTreeSet::new(),
            in_commit: false,
            commits: 0,
            checkpoints: 0,
        };
        phase!(IDLE);
        Ok(Heap {
            inner: Inner {
                path: path.to_path_buf(),
                file,
                map,
                geo,
                read_only,
                durability,
                writer: Mutex::new(writer),
                view: RwLock::new(View { header }),
                writer_thread: AtomicUsize::new(0),
                poison: Mutex::new(None),
                closed: AtomicBool::new(false),
            },
        })
    }

    fn needed_len(sb: &Superblock, header: &HeapHeader) -> Result<u64> {
        let needed = header
            .chunk_count
            .checked_mul(CHUNK)
            .and_then(|b| b.checked_add(sb.chunk_area_offset()))
            .filter(|&n| n <= sb.max_size);
        needed.ok_or_else(|| Error::Corrupt {
            offset: sb.heap_offset(),
            what: format!(
                "chunk count {} exceeds max_size {}",
                header.chunk_count, sb.max_size
            ),
        })
    }

    /// Run `f` as one transaction: if it returns `Ok`, its writes commit atomically (durably under
    /// `Durability::Full`) before this returns; if it returns `Err` or panics, nothing changes.
    ///
    /// If committing itself fails (`Error::Io` from writing the log frame, its barrier or the
    /// apply; the handle is then poisoned and every later call gets `Error::Poisoned`), the
    /// transaction was not acknowledged but its outcome is unknown: the frame may have reached
    /// the disk, and then the next open replays it. Reopen the file and look, as after a crash;
    /// the file always holds a prefix of the commits, never a torn one.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("t.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc(7u32))?;
    /// let r: txheap::Result<()> = heap.transaction(|tx| {
    ///     *tx.get_mut(p)? = 8;
    ///     Err(txheap::Error::NoRoot) // abort: the 8 is never seen
    /// });
    /// assert!(r.is_err());
    /// assert_eq!(heap.read(|r| r.get(p).copied())?, 7);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn transaction<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<R> {
        self.transaction_with(f)
    }

    /// Like [`Heap::transaction`], with the caller's own error type (which must be able to carry
    /// txheap's errors).
    ///
    /// ```
    /// #[derive(Debug)]
    /// enum AppError { Heap(txheap::Error), Invalid }
    /// impl From<txheap::Error> for AppError { fn from(e: txheap::Error) -> Self { AppError::Heap(e) } }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("tw.heap"), txheap::Options::new()).unwrap();
    /// let r: Result<(), AppError> = heap.transaction_with(|tx| {
    ///     tx.alloc(1u8)?;
    ///     Err(AppError::Invalid)
    /// });
    /// assert!(matches!(r, Err(AppError::Invalid)));
    /// ```
    pub fn transaction_with<R, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let inner = &self.inner;
        if inner.read_only {
            return Err(Error::ReadOnly.into());
        }
        let me = thread_token();
        if inner.writer_thread.load(Ordering::Acquire) == me
            || ReadingMark::active(inner as *const Inner as usize)
        {
            return Err(Error::NestedTransaction.into());
        }
        let mut w = self.lock_writer()?;
        inner.writer_thread.store(me, Ordering::Release);
        struct Owner<'a>(&'a AtomicUsize);
        impl Drop for Owner<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
                phase!(IDLE);
            }
        }
        let _owner = Owner(&inner.writer_thread);
        phase!(TX_BODY);
        let mut tx = Tx::new(inner, &mut w);
        let value = f(&mut tx)?; // on Err or panic, dropping `tx` rolls back
        tx.commit()?;
        Ok(value)
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.in_commit {
            self.inner.poison("a commit was interrupted by a panic");
        }
        self.inner.check_poison()?;
        Ok(w)
    }

    /// Run `f` with a reader of the committed state. Readers run beside a transaction in another
    /// thread; they wait only while a commit applies its writes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("r.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc([1u8, 2, 3, 4]))?;
    /// assert_eq!(heap.read(|r| Ok(r.get(p)?[2]))?, 3);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn read<R>(&self, f: impl FnOnce(&Reader<'_>) -> Result<R>) -> Result<R> {
        self.inner.check_poison()?;
        let addr = &self.inner as *const Inner as usize;
        if let Some(header) = ReadingMark::header(addr) {
            // A read inside a read on this thread: the outer one holds the view lock, so the
            // state cannot change; taking the lock again could deadlock behind a waiting writer.
            return f(&Reader {
                inner: &self.inner,
                header,
                _guard: None,
            });
        }
        let guard = self.inner.view.read().unwrap_or_else(|e| e.into_inner());
        // A commit that failed half-way through applying poisoned the heap while we waited.
        self.inner.check_poison()?;
        let header = guard.header;
        let _mark = ReadingMark::new(addr, header);
        f(&Reader {
            inner: &self.inner,
            header,
            _guard: Some(guard),
        })
    }

    /// Refuse an operation that needs the writer (or the view lock for writing) while this
    /// thread runs a transaction or a read on this heap: it would deadlock.
    fn refuse_reentry(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.writer_thread.load(Ordering::Acquire) == thread_token()
            || ReadingMark::active(inner as *const Inner as usize)
        {
            return Err(Error::NestedTransaction);
        }
        Ok(())
    }

    /// Make every committed transaction durable (a no-op cost under `Durability::Full`, one
    /// barrier under `Durability::None`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let heap = txheap::Heap::create(dir.path().join("f.heap"),
    ///     txheap::Options::new().durability(txheap::Durability::None))?;
    /// heap.transaction(|tx| tx.alloc(1u64))?;
    /// heap.flush()?; // now durable
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.refuse_reentry()?;
        let mut w = self.lock_writer()?;
        w.flush(&self.inner)
    }

    /// Write every applied change to the heap pages durably and empty the log (also done when the
    /// log fills up and on close).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("c.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.alloc(1u64))?;
    /// heap.checkpoint()?;
    /// assert_eq!(heap.stats()?.log_used, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn checkpoint(&self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.refuse_reentry()?;
        let mut w = self.lock_writer()?;
        w.checkpoint(&self.inner)
    }

    /// Checkpoint and close, reporting any error (dropping a `Heap` does the same quietly).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let heap = txheap::Heap::create(dir.path().join("cl.heap"), txheap::Options::new())?;
    /// heap.close()?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.refuse_reentry()?;
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut w = self.lock_writer()?;
        w.checkpoint(&self.inner)
    }

    /// Space and activity figures.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("st.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 20).map(|_| ()))?;
    /// let s = heap.stats()?;
    /// assert!(s.used_bytes >= 1 << 20);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        self.refuse_reentry()?;
        let w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (used, free, largest, classes) = w.alloc.stats();
        let (filesystem, volatile_storage) =
            sys::filesystem(&*self.inner.file).map_err(|e| Error::io("fstatfs", 0, e))?;
        Ok(Stats {
            file_len: w.storage.len().map_err(|e| Error::io("stat", 0, e))?,
            heap_bytes: w.alloc.chunk_count * CHUNK,
            used_bytes: used,
            free_bytes: free,
            largest_free_extent: largest,
            classes,
            log_capacity: self.inner.geo.log_len,
            log_used: w.log_tail,
            max_size: self.inner.geo.max_size,
            superblock_seq: w.sb.seq,
            log_generation: w.sb.generation,
            next_txid: w.next_txid,
            commits: w.commits,
            checkpoints: w.checkpoints,
            io: w.storage.counters,
            filesystem,
            volatile_storage,
        })
    }

    /// The file this heap lives in.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("p.heap");
    /// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
    /// assert_eq!(heap.path(), p.as_path());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This handle's durability.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("d.heap"), txheap::Options::new())?;
    /// assert_eq!(heap.durability(), txheap::Durability::Full);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Make the writer's next I/O calls fail with EIO (feature `test-hooks`, for tests).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("fi.heap"), txheap::Options::new())?;
    /// heap.inject_faults(txheap::FaultPlan { fail_barrier_after: Some(0), ..Default::default() });
    /// assert!(heap.transaction(|tx| tx.alloc(1u8)).is_err());
    /// assert!(heap.is_poisoned());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    #[cfg(feature = "test-hooks")]
    pub fn inject_faults(&self, plan: crate::FaultPlan) {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .storage
            .faults = plan;
    }

    /// Whether an I/O failure has poisoned this handle (see [`Error::Poisoned`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("po.heap"), txheap::Options::new())?;
    /// assert!(!heap.is_poisoned());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.inner
            .poison
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

impl Inner {
    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    pub(crate) fn poison(&self, cause: &str) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(cause.to_string());
        }
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Turn an I/O failure in the commit or checkpoint path into a poisoned heap and an error.
    pub(crate) fn fail(&self, op: &'static str, offset: u64, e: io::Error) -> Error {
        self.poison(&format!("{op} at offset {offset}: {e}"));
        Error::io(op, offset, e)
    }
}

impl Writer {
    /// Write a finished frame to the log and, under `Full`, barrier it. Returns after the frame
    /// is in the log (and durable under `Full`). The caller has made room (`ensure_log_room`).
    pub(crate) fn append_frame(&mut self, inner: &Inner) -> Result<()> {
        let len = self.frame.encoded_len() as u64;
        debug_assert!(self.log_tail + len <= inner.geo.log_len);
        let at = inner.geo.log_offset + self.log_tail;
        let frame = self.frame.finish(self.sb.generation, self.next_txid);
        self.in_commit = true;
        phase!(LOG_WRITE);
        self.storage
            .write_at(at, frame)
            .map_err(|e| inner.fail("pwrite log frame", at, e))?;
        failpoint!("commit.after_log_write");
        match inner.durability {
            Durability::Full => {
                phase!(LOG_BARRIER);
                self.storage
                    .barrier(at, len)
                    .map_err(|e| inner.fail("msync log frame", at, e))?;
                failpoint!("commit.after_log_barrier");
            }
            Durability::None => {
                let (a, _) = self.unsynced.unwrap_or((at, at));
                self.unsynced = Some((a, at + len));
            }
        }
        self.log_tail += len;
        self.next_txid += 1;
        Ok(())
    }

    /// Bytes of the log holding frames since the last checkpoint.
    pub(crate) fn log_tail(&self) -> u64 {
        self.log_tail
    }

    /// Write bytes of a freshly allocated large extent in place (before the frame exists).
    pub(crate) fn write_in_place(&mut self, inner: &Inner, off: u64, bytes: &[u8]) -> Result<()> {
        self.storage
            .write_at(off, bytes)
            .map_err(|e| inner.fail("pwrite in place", off, e))
    }

    /// `fdatasync`: make every write so far durable.
    pub(crate) fn barrier_all(&mut self, inner: &Inner) -> Result<()> {
        self.storage
            .barrier_all()
            .map_err(|e| inner.fail("fdatasync in-place data", 0, e))
    }

    /// Make room for a frame of `len` bytes, checkpointing if the log is too full.
    pub(crate) fn ensure_log_room(&mut self, inner: &Inner, len: u64) -> Result<()> {
        if len > inner.geo.log_len {
            return Err(Error::TransactionTooLarge {
                bytes: len,
                log_capacity: inner.geo.log_len,
            });
        }
        if self.log_tail + len > inner.geo.log_len {
            self.checkpoint(inner)?;
        }
        Ok(())
    }

    /// Apply one committed range to the heap. Under `Full` it goes to the file (no barrier: the
    /// log holds it); under `None` it goes to the private mapping only, so the file's heap pages
    /// never hold bytes whose frame is not yet durable.
    ///
    /// The caller holds the view lock for writing.
    pub(crate) fn apply_range(&mut self, inner: &Inner, off: u64, bytes: &[u8]) -> Result<()> {
        match inner.durability {
            Durability::Full => self
                .storage
                .write_at(off, bytes)
                .map_err(|e| inner.fail("pwrite heap range", off, e)),
            Durability::None => {
                // SAFETY: the range passed the bounds check at staging time, so it is mapped; the
                // mapping is writable under `None`; the caller holds the writer lock and the view
                // write lock, so no slice into the mapping is alive.
                unsafe { inner.map.write_private(off, bytes) };
                let first = off / PAGE_SIZE;
                let last = (off + bytes.len() as u64).div_ceil(PAGE_SIZE);
                self.pending_pages.extend(first..last);
                Ok(())
            }
        }
    }

    /// After apply: bookkeeping, and under `None` a flush when too many private pages are held.
    pub(crate) fn finish_commit(&mut self, inner: &Inner, header: HeapHeader) -> Result<()> {
        self.header = header;
        self.alloc.commit();
        self.in_commit = false;
        self.commits += 1;
        if self.pending_pages.len() > PENDING_PAGES_MAX {
            self.flush(inner)?;
        }
        Ok(())
    }

    /// Barrier the log written since the last barrier, then move private pages to the file.
    fn flush(&mut self, inner: &Inner) -> Result<()> {
        phase!(FLUSH);
        if let Some((a, b)) = self.unsynced.take() {
            self.storage
                .barrier(a, b - a)
                .map_err(|e| inner.fail("msync log", a, e))?;
        }
        if self.pending_pages.is_empty() {
            return Ok(());
        }
        let _view = inner.view.write().unwrap_or_else(|e| e.into_inner());
        let pages = std::mem::take(&mut self.pending_pages);
        let mut it = pages.into_iter().peekable();
        while let Some(first) = it.next() {
            let mut last = first;
            while it.peek() == Some(&(last + 1)) {
                last = it.next().expect("peeked");
            }
            let (off, len) = (first * PAGE_SIZE, (last - first + 1) * PAGE_SIZE);
            // SAFETY: pages we wrote privately, inside the mapping; the writer lock and the view
            // write lock are held, so nothing changes them while pwrite copies them.
            let bytes = unsafe { inner.map.slice(off, len as usize) };
            self.storage
                .write_at(off, bytes)
                .map_err(|e| inner.fail("pwrite heap pages", off, e))?;
            // SAFETY: as above; `bytes` is not used after this point.
            unsafe { inner.map.discard_private(off, len) }
                .map_err(|e| inner.fail("madvise", off, e))?;
        }
        Ok(())
    }

    /// Flush, then barrier the heap and switch the superblock: the log is empty afterwards.
    pub(crate) fn checkpoint(&mut self, inner: &Inner) -> Result<()> {
        self.flush(inner)?;
        phase!(CHECKPOINT);
        let (sb, slot) =
            recovery::checkpoint(&mut self.storage, &self.sb, self.slot, self.next_txid).map_err(
                |e| {
                    let e = Error::from(e);
                    inner.poison(&format!("checkpoint: {e}"));
                    e
                },
            )?;
        self.sb = sb;
        self.slot = slot;
        self.log_tail = 0;
        self.checkpoints += 1;
        Ok(())
    }
}

/// A view of the committed state, given to [`Heap::read`]'s closure.
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
    inner: &'h Inner,
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
        self.inner
            .geo
            .check(self.header.chunk_count, off, len, align)?;
        // SAFETY: in bounds of the committed heap, which is mapped; we hold the view lock for
        // reading for as long as `self` (and so the slice) lives, and every change to the heap's
        // bytes in the file or the mapping (apply, in-place writes, flush) happens under the
        // view lock for writing, so nothing changes these bytes.
        Ok(unsafe { self.inner.map.slice(off, len as usize) })
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
        let len = self.inner.geo.slice_bytes(self.header.chunk_count, s)?;
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
    pub fn root<T: Pod>(&self) -> Result<PPtr<T>> {
        if check_root::<T>(&self.header)? {
            Ok(PPtr::from_offset(self.inner.geo.root_offset))
        } else {
            Err(Error::NoRoot)
        }
    }
}

/// Used by `Tx` to reach the writer's pieces.
pub(crate) fn writer_parts(w: &mut Writer) -> (&mut Allocator, &mut FileStorage) {
    (&mut w.alloc, &mut w.storage)
}

/// The byte ranges `(offset, len)` of a heap file image that its heap reaches as the image
/// stands (no log replay): the heap header, the root area, every chunk header, each run's
/// bitmap and allocated blocks, each large object. A write anywhere else in the heap region
/// changes nothing that an open could see. The crash tests' write-ahead check calls it on the
/// durable image as recovery would leave it. Feature `test-hooks`.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("r.heap");
/// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
/// let obj = heap.transaction(|tx| tx.alloc(7u64))?;
/// heap.close()?;
/// let ranges = txheap::reachable_ranges(&std::fs::read(&p).unwrap())?;
/// assert!(ranges.iter().any(|&(o, l)| o <= obj.offset() && obj.offset() + 8 <= o + l));
/// # Ok::<(), txheap::Error>(())
/// ```
#[cfg(feature = "test-hooks")]
pub fn reachable_ranges(image: &[u8]) -> Result<Vec<(u64, u64)>> {
    let storage = txheap_recovery::MemStorage::from_bytes(image.to_vec());
    let (sb, _) = recovery::select_superblock(&storage)?;
    let geo = Geometry::of(&sb);
    let read = |off: u64, buf: &mut [u8]| {
        buf.fill(0);
        let start = (off as usize).min(image.len());
        let end = (off as usize).saturating_add(buf.len()).min(image.len());
        buf[..end - start].copy_from_slice(&image[start..end]);
    };
    let mut hb = [0u8; HEAP_HEADER_LEN as usize];
    read(geo.heap_offset, &mut hb);
    let header = HeapHeader::decode(&hb, geo.heap_offset)?;
    let mut out = vec![
        (geo.heap_offset, HEAP_HEADER_LEN),
        (geo.root_offset, ROOT_AREA_LEN),
    ];
    out.extend(crate::alloc::Allocator::reachable(
        geo.chunk_area,
        header.chunk_count,
        &read,
    )?);
    Ok(out)
}
