//! Options, durability settings and the figures `Heap::stats` reports.
//!
//! Owns: the public configuration types and their validation. May not: touch the file; the
//! open path (`open.rs`) reads these values.

use txheap_recovery::{Superblock, HEAP_META_LEN, LOG_OFFSET, LOG_SIZE_MIN, PAGE_SIZE};

use crate::alloc::ClassStats;
use crate::error::{Error, Result};
use crate::limits::{CHUNK_SIZE, FILE_SIZE_MAX};
use crate::storage::IoCounters;

/// When a commit is durable.
///
/// ```
/// use txheap::{Durability, Options};
/// let o = Options::new().durability(Durability::None);
/// assert_eq!(Durability::default(), Durability::Full);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit's log frame is durable before `transaction` returns: survives power loss.
    /// A lone thread pays one barrier per commit; threads that commit at once share barriers
    /// (group commit: one `msync` covers every frame appended meanwhile), and a transaction is
    /// visible to readers only once its barrier has completed.
    #[default]
    Full,
    /// No barrier in the commit path. Survives SIGKILL; after a power cut the heap is a committed
    /// prefix (possibly missing the newest acknowledged transactions), never torn.
    /// [`Heap::flush`](crate::Heap::flush) makes everything committed so far durable.
    None,
}

/// How the heap's pages will be read: advice to the kernel for page faults on the mapping
/// (`madvise`), which decides how much a fault on a page not in memory reads from disk.
///
/// A heap is a pointer structure: reads land at scattered offsets, so the default is
/// [`Access::Random`], which reads only the page a fault needs. The kernel's usual readahead
/// (`Normal`) reads up to several MiB around each cold fault: on a heap larger than memory that
/// made random reads 20x slower and a cold open read the whole file. Choose `Sequential` for a
/// pass over large objects in address order. [`Heap::advise`](crate::Heap::advise) changes it on
/// an open heap. Warm pages (already in memory) cost the same under every choice.
///
/// ```
/// use txheap::{Access, Options};
/// let o = Options::new().access(Access::Sequential);
/// assert_eq!(Access::default(), Access::Random);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Read only the faulting page (`MADV_RANDOM`). The default.
    #[default]
    Random,
    /// Read ahead aggressively and drop pages behind (`MADV_SEQUENTIAL`).
    Sequential,
    /// The kernel's default readahead (`MADV_NORMAL`).
    Normal,
}

impl Access {
    pub(crate) fn madvise(self) -> libc::c_int {
        match self {
            Access::Random => libc::MADV_RANDOM,
            Access::Sequential => libc::MADV_SEQUENTIAL,
            Access::Normal => libc::MADV_NORMAL,
        }
    }
}

/// Default of [`Options::in_place_min`].
const IN_PLACE_MIN_DEFAULT: u64 = 4 << 20;

/// How to create or open a heap (builder style).
///
/// ```
/// use txheap::Options;
/// # let dir = tempfile::tempdir().unwrap();
/// let o = Options::new().initial_size(8 << 20).max_size(1 << 30).log_size(4 << 20);
/// let heap = txheap::Heap::create(dir.path().join("o.heap"), o)?;
/// let s = heap.stats()?;
/// assert_eq!((s.max_size, s.log_size), (1 << 30, 4 << 20));
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) initial_size: u64,
    pub(crate) max_size: u64,
    pub(crate) log_size: u64,
    pub(crate) durability: Durability,
    pub(crate) salvage: bool,
    pub(crate) access: Access,
    pub(crate) in_place_min: u64,
    pub(crate) keep_log_blocks: bool,
    pub(crate) reserve: u64,
    pub(crate) lock_wait: std::time::Duration,
    /// Which sizes the caller gave (`open` applies or refuses those, and keeps the file's own
    /// for the rest).
    pub(crate) given: Given,
    #[cfg(feature = "test-hooks")]
    pub(crate) trace: Option<crate::Trace>,
    #[cfg(feature = "test-hooks")]
    pub(crate) faults: Option<crate::FaultPlan>,
}

/// The sizes an `Options` was given explicitly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Given {
    pub initial_size: bool,
    pub max_size: bool,
    pub log_size: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            initial_size: 4 << 20,
            max_size: 16 << 30,
            log_size: 16 << 20,
            durability: Durability::Full,
            salvage: false,
            access: Access::Random,
            in_place_min: IN_PLACE_MIN_DEFAULT,
            keep_log_blocks: false,
            reserve: 0,
            lock_wait: std::time::Duration::ZERO,
            given: Given::default(),
            #[cfg(feature = "test-hooks")]
            trace: None,
            #[cfg(feature = "test-hooks")]
            faults: None,
        }
    }
}

impl Options {
    /// Defaults: 4 MiB initial file, 16 GiB maximum, 16 MiB log, `Durability::Full`.
    ///
    /// ```
    /// let o = txheap::Options::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Bytes to preallocate for a new file (at least its metadata; 4 MiB if not given, or
    /// `max_size` if that is smaller). Given to `open`: the file is grown to at least this
    /// length (its blocks allocated, for the heap to grow into).
    ///
    /// ```
    /// let o = txheap::Options::new().initial_size(1 << 20);
    /// ```
    pub fn initial_size(mut self, bytes: u64) -> Self {
        self.initial_size = bytes;
        self.given.initial_size = true;
        self
    }
    /// Largest size the file may grow to; this much address space is reserved at open.
    /// Given to `open`, it replaces the file's own (raised, or lowered down to the file's
    /// length; a crash-safe superblock switch): a heap that reached its limit
    /// ([`crate::Error::OutOfSpace`]) is reopened with a larger one. Not given, an existing
    /// file keeps its own.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("m.heap");
    /// use txheap::{Heap, Options};
    /// Heap::create(&path, Options::new().max_size(64 << 20))?.close()?;
    /// let heap = Heap::open(&path, Options::new().max_size(1 << 30))?; // raised
    /// assert_eq!(heap.stats()?.max_size, 1 << 30);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self.given.max_size = true;
        self
    }
    /// Bytes of the log region (a multiple of 4096, at least 64 KiB). A transaction's redo frame
    /// must fit in it. Fixed at create (the heap's objects lie after the log, at offsets that
    /// pointers hold): given to `open` with another size it is an
    /// [`crate::Error::InvalidOptions`] that says so.
    ///
    /// ```
    /// let o = txheap::Options::new().log_size(1 << 20);
    /// ```
    pub fn log_size(mut self, bytes: u64) -> Self {
        self.log_size = bytes;
        self.given.log_size = true;
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
    /// Accept the loss of acknowledged transactions when the log is damaged (default `false`).
    ///
    /// When a log frame is damaged but a later frame proves it was durable, `open` refuses with
    /// [`crate::Error::LogDamaged`] and changes nothing, because replaying only the frames before
    /// it would silently drop acknowledged transactions. With `salvage(true)`, `open` replays
    /// those frames, drops the damaged one and everything after it, and checkpoints so they
    /// never replay; [`crate::Stats::salvaged`] says which transactions were dropped. The heap
    /// pages may already hold some of the dropped transactions' bytes, so a salvaged heap is a
    /// knowing loss, not a clean prefix (check it with [`crate::Heap::reachability`]); and
    /// when a dropped transaction grew the heap, the salvage may be refused with
    /// [`crate::Error::Corrupt`], leaving the file unchanged (docs/ARCHITECTURE.md section 9);
    /// [`crate::Heap::salvage_read_only`] then still opens it for reading.
    ///
    /// ```
    /// let o = txheap::Options::new().salvage(true);
    /// ```
    pub fn salvage(mut self, yes: bool) -> Self {
        self.salvage = yes;
        self
    }
    /// How the heap's pages will be read (default [`Access::Random`]).
    ///
    /// ```
    /// let o = txheap::Options::new().access(txheap::Access::Normal);
    /// ```
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
    /// Keep the log's disk blocks when the heap closes (default `false`: a clean close gives
    /// them back to the filesystem, all but the log's first page, and the next writable open
    /// takes them again). Giving them back costs the close a hole punch and one more barrier
    /// (about 0.2 ms) and the open a `posix_fallocate`; keeping them suits a program that
    /// opens and closes the heap very often, as SQLite's persistent-WAL setting does.
    ///
    /// ```
    /// use std::os::unix::fs::MetadataExt;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let p = dir.path().join("keep.heap");
    /// let heap = txheap::Heap::create(&p, txheap::Options::new().keep_log_blocks(true))?;
    /// heap.close()?;
    /// // The 16 MiB log is still on disk.
    /// assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= 16 << 20);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn keep_log_blocks(mut self, keep: bool) -> Self {
        self.keep_log_blocks = keep;
        self
    }

    /// Under [`Durability::None`]: how many bytes of new objects a transaction must write into
    /// space it took from free space (large objects, and the runs of small ones it made after
    /// its first) before those bytes skip the log and go straight to the file (default 4 MiB).
    ///
    /// Below it, a `None` commit makes no system call and its bytes are copied through the log.
    /// At or above it (or when they would not fit the log), the commit first flushes (one
    /// barrier of the log written so far, the private pages written back), then writes the new
    /// objects in place with no barrier of their own, and logs only the rest with a check of
    /// those bytes (recovery replays the transaction only if they all reached the disk; the
    /// next flush makes them durable with the log): a bulk load writes its bytes once instead of
    /// three times, and an object of any size fits whatever the log's size. (Under [`Durability::Full`] such bytes always go in place: the
    /// commit pays a barrier anyway.) `u64::MAX` keeps everything in the log when it fits.
    ///
    /// ```
    /// use txheap::{Durability, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let o = Options::new().durability(Durability::None).log_size(1 << 20).in_place_min(1 << 20);
    /// let heap = txheap::Heap::create(dir.path().join("ip.heap"), o)?;
    /// // 8 MiB in one transaction, with a 1 MiB log: the bytes go in place.
    /// let s = heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(8 << 20))?;
    /// assert_eq!(heap.read(|r| Ok(r.slice(s)?.len()))?, 8 << 20);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn in_place_min(mut self, bytes: u64) -> Self {
        self.in_place_min = bytes;
        self
    }
    /// Bytes of address space to reserve for the heap's mappings, when more than `max_size`
    /// (default 0: `max_size`). [`crate::Heap::set_max_size`] then raises `max_size` up to this
    /// while the heap stays open, with no system call; past it, it must find the address space
    /// right after the mapping free, which is rare. Address space only: no memory or disk is
    /// taken (two mappings per writable handle; x86-64 gives a process 128 TiB). On Linux the
    /// heap's private, writable mapping (a read-only handle's too) counts in full against the
    /// data size limit, `RLIMIT_DATA` (`ulimit -d`), where one is set, whatever it holds: the
    /// refusal, [`crate::Error::AddressSpace`], then names that limit.
    ///
    /// ```
    /// let o = txheap::Options::new().max_size(1 << 30).reserve(64 << 30);
    /// ```
    pub fn reserve(mut self, bytes: u64) -> Self {
        self.reserve = bytes;
        self
    }
    /// How long a writable open ([`crate::Heap::open`], [`crate::Heap::open_or_create`]) waits
    /// for the file's lock while another handle holds it (a writer, or read-only handles that
    /// opened when no writer held it), before it gives up with [`crate::Error::Locked`]
    /// (default: no wait). It tries again with growing pauses (1 ms doubling to 50 ms), so a
    /// process that takes turns with others on one heap opens within about 50 ms of the
    /// holder's close. Whoever tries first is not served first: under constant contention an
    /// open can wait the whole time. Reads in progress in other processes, by handles that
    /// opened beside an earlier writer, are waited for up to this long and at least a second
    /// (see [`crate::Heap::open`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use txheap::{Heap, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("wait.heap");
    /// let first = Heap::create(&path, Options::new())?;
    /// let p = path.clone();
    /// let second = std::thread::spawn(move || Heap::open(&p, Options::new().lock_wait(Duration::from_secs(10))));
    /// std::thread::sleep(Duration::from_millis(100));
    /// first.close()?; // the waiting open now gets the file
    /// second.join().unwrap()?.close()?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
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

    /// Make the opened handle's I/O fail as `plan` says from its first call on, recovery's
    /// writes and barriers included (feature `test-hooks`, for tests; on an open handle,
    /// `Heap::inject_faults`).
    ///
    /// ```
    /// use txheap::{FaultPlan, Heap, Options};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("of.heap");
    /// let heap = Heap::create(&p, Options::new())?;
    /// heap.transaction(|tx| { let r = tx.root::<u64>()?; tx.set(r, 7) })?;
    /// std::mem::forget(heap); // as a crash leaves it: the next open replays the log
    /// let copy = dir.path().join("copy.heap"); // (the forgotten handle still holds `p`)
    /// std::fs::copy(&p, &copy).unwrap();
    /// let plan = FaultPlan { fail_barrier_after: Some(0), ..Default::default() };
    /// // Recovery cannot make the log durable before it replays: the open fails...
    /// let e = Heap::open(&copy, Options::new().faults(plan)).err().unwrap();
    /// assert!(matches!(e, txheap::Error::Io { .. }), "{e}");
    /// // ...and the next one, without faults, has the transaction.
    /// let heap = Heap::open(&copy, Options::new())?;
    /// assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied())?, 7);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    #[cfg(feature = "test-hooks")]
    pub fn faults(mut self, plan: crate::FaultPlan) -> Self {
        self.faults = Some(plan);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidOptions { what });
        if self.log_size % PAGE_SIZE != 0
            || !(LOG_SIZE_MIN..=FILE_SIZE_MAX).contains(&self.log_size)
        {
            return bad(format!(
                "log_size {} must be a multiple of {PAGE_SIZE}, at least {LOG_SIZE_MIN} and at most {FILE_SIZE_MAX}",
                self.log_size
            ));
        }
        if self.max_size > FILE_SIZE_MAX {
            return bad(format!(
                "max_size {} exceeds {FILE_SIZE_MAX}",
                self.max_size
            ));
        }
        // The metadata, the first zone's table chunk, and one chunk for objects (one chunk
        // past the metadata, the floor before, held the table and no object: review).
        let meta = LOG_OFFSET + self.log_size + HEAP_META_LEN;
        if self.max_size % PAGE_SIZE != 0 || self.max_size < meta + 2 * CHUNK_SIZE {
            return bad(format!(
                "max_size {} must be a multiple of {PAGE_SIZE} and at least {} (metadata, the \
                 chunk table's chunk and one chunk for objects)",
                self.max_size,
                meta + 2 * CHUNK_SIZE
            ));
        }
        // (A default initial size larger than a small `max_size` is cut to it: only one the
        // caller gave is refused; review.)
        if self.given.initial_size && self.initial_size > self.max_size {
            return bad(format!(
                "initial_size {} exceeds max_size {}",
                self.initial_size, self.max_size
            ));
        }
        Ok(())
    }

    /// What a writable `open` does with the sizes it was given, for a heap whose superblock is
    /// `sb` and whose file is `file_len` bytes long: the `max_size` to use (the given one, or
    /// the file's own), or an error that names the option that cannot be applied and why.
    /// Never ignores one: `log_size` must equal the file's; `max_size` may rise, or fall down
    /// to the file's length; `initial_size` may not exceed the `max_size` used.
    pub(crate) fn max_size_for_open(&self, sb: &Superblock, file_len: u64) -> Result<u64> {
        let bad = |what: String| Err(Error::InvalidOptions { what });
        if self.given.log_size && self.log_size != sb.log_size {
            return bad(format!(
                "log_size {} given to open, but this heap's log is {} bytes: the log's size is \
                 fixed at create (the heap's objects lie after it, at the offsets their \
                 pointers hold); open without log_size",
                self.log_size, sb.log_size
            ));
        }
        let max = if self.given.max_size {
            self.max_size
        } else {
            sb.max_size
        };
        if self.given.max_size {
            if max > FILE_SIZE_MAX || max % PAGE_SIZE != 0 {
                return bad(format!(
                    "max_size {max} given to open must be a multiple of {PAGE_SIZE} and at most \
                     {FILE_SIZE_MAX}"
                ));
            }
            let floor = file_len.max(sb.min_file_len());
            if max < floor {
                return bad(format!(
                    "max_size {max} given to open is below the heap file's length {floor} (a heap \
                     file never shrinks but by `Heap::compact`)"
                ));
            }
        }
        if self.given.initial_size && self.initial_size > max {
            return bad(format!(
                "initial_size {} given to open exceeds max_size {max}",
                self.initial_size
            ));
        }
        Ok(max)
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
    /// Bytes of the log region (`Options::log_size` at create).
    pub log_size: u64,
    /// Bytes of the log holding frames since the last checkpoint.
    pub log_used: u64,
    /// The file's maximum size now: set at create, and changed by an open given
    /// [`Options::max_size`] or by [`Heap::set_max_size`](crate::Heap::set_max_size).
    pub max_size: u64,
    /// The current superblock's sequence number (one more per checkpoint).
    pub superblock_seq: u64,
    /// The current log generation.
    pub log_generation: u64,
    /// The id the next frame in the log will get. Each committed transaction that changed a
    /// byte takes one (one that changed none writes no frame and takes none), and so does each
    /// voucher frame that a flush writes under `Durability::None` after a commit with in-place
    /// bytes (docs/ARCHITECTURE.md section 3, step 5a): ids increase, but need not be
    /// consecutive from one transaction to the next.
    pub next_txid: u64,
    /// Transactions committed through this handle that wrote a frame (a transaction that
    /// changed no byte is not counted).
    pub commits: u64,
    /// Checkpoints through this handle.
    pub checkpoints: u64,
    /// System calls issued by this handle's writer.
    pub io: IoCounters,
    /// The filesystem the file lives on (`"ext4"`, `"xfs"`, `"tmpfs"`, ...; `"unknown (magic
    /// 0x...)"` for others).
    pub filesystem: String,
    /// The transactions this handle's open dropped on purpose (`Options::salvage`): the first
    /// and the last txid cut off by a damaged log frame. `None` when nothing was dropped.
    pub salvaged: Option<(u64, u64)>,
    /// A superblock slot this handle's open found damaged (the open used the other slot,
    /// which the format proves lost nothing; the next checkpoint rewrites the damaged one). A
    /// sign that the disk changes bytes it had written: `None` when both slots were sound.
    pub superblock_damage: Option<String>,
    /// Whether that filesystem keeps files in memory only (tmpfs, ramfs): then nothing survives
    /// a power cut or a reboot, whatever the durability. `Durability::Full` still protects
    /// against a killed process.
    pub volatile_storage: bool,
}

/// What [`crate::Heap::compact`] gave back.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("r.heap"), txheap::Options::new())?;
/// let r = heap.compact()?;
/// assert!(r.file_len_after <= r.file_len_before);
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Chunks cut from the end of the heap (free tail).
    pub chunks_cut: u64,
    /// Bytes of free space whose blocks were given back by punching holes (free space inside
    /// the file; the cut tail is not counted here).
    pub punched_bytes: u64,
    /// The file's length before.
    pub file_len_before: u64,
    /// The file's length after.
    pub file_len_after: u64,
}
