//! Looking inside a heap file without changing it: [`check`] and [`read_log`], the library side
//! of `txheap check`, `txheap dump-log` and `txheap recover --dry-run`.
//!
//! Owns: the verdicts (clean, recoverable by a writable open, damaged), what each finding names,
//! and the log listing. Reads the file under a shared lock, as a read-only handle does: a writer
//! elsewhere makes these calls return [`Error::Locked`]. May not: write the file (nothing here
//! opens it writable), or decide what recovery does (it reports what the recovery crate decides).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use txheap_recovery::txheap_log::{self, InPlaceDigest, StopReason};
use txheap_recovery::{self as recovery, RecoveryError, Storage, Superblock};

/// What proves a damaged frame durable, in words, from [`LogEnd::Damaged`]'s `voucher_offset`
/// and `voucher_txid`: a later frame, the log-start witness, or a damaged superblock slot that
/// named a newer generation found at the log's start.
pub use txheap_recovery::proof_name;

use crate::error::{Error, Result};
use crate::heap::Heap;
use crate::open;
use crate::options::Stats;
use crate::storage::FileStorage;

/// How a file stands, worst first in the order of [`Verdict::exit_code`].
///
/// ```
/// use txheap::inspect::Verdict;
/// assert!(Verdict::Damaged > Verdict::Recoverable && Verdict::Recoverable > Verdict::Clean);
/// assert_eq!(Verdict::Damaged.exit_code(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Every check passed and nothing waits in the log.
    Clean,
    /// Sound, but a writable open has work to do (committed frames to replay, a torn tail to
    /// discard, a damaged older superblock slot to rewrite): `txheap recover` does it, and no
    /// acknowledged transaction is lost.
    Recoverable,
    /// Damaged: an open is refused, or would lose data (a damaged durable log frame).
    Damaged,
}

impl Verdict {
    /// The exit code `txheap check` gives, after fsck's: 0 clean, 1 recoverable, 4 damaged
    /// (and 8, not a verdict, when the file could not be checked at all).
    ///
    /// ```
    /// assert_eq!(txheap::inspect::Verdict::Recoverable.exit_code(), 1);
    /// ```
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Clean => 0,
            Verdict::Recoverable => 1,
            Verdict::Damaged => 4,
        }
    }

    /// The verdict's name in reports: `clean`, `recoverable` or `damaged`.
    ///
    /// ```
    /// assert_eq!(txheap::inspect::Verdict::Clean.name(), "clean");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Recoverable => "recoverable",
            Verdict::Damaged => "damaged",
        }
    }
}

/// One thing [`check`] found: how bad it is, where (a file offset, when there is one) and what.
///
/// ```
/// use txheap::inspect::{Finding, Verdict};
/// let f = Finding { verdict: Verdict::Damaged, offset: Some(8192), what: "x".into() };
/// assert_eq!(f.to_string(), "damaged at offset 8192: x");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub verdict: Verdict,
    /// The file offset it concerns, if one.
    pub offset: Option<u64>,
    /// What it is, in words.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{} at offset {o}: {}", self.verdict.name(), self.what),
            None => write!(f, "{}: {}", self.verdict.name(), self.what),
        }
    }
}

/// One committed frame of the log (a transaction not yet checkpointed into the heap).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("f.heap");
/// # let heap = txheap::Heap::create(&p, txheap::Options::new())?;
/// heap.transaction(|tx| tx.alloc(1u64).map(|_| ()))?;
/// // (the heap is still open: its frame is in the log; a copy shows it as a crash would)
/// # let c = dir.path().join("c.heap"); std::fs::copy(&p, &c).unwrap(); drop(heap);
/// let log = txheap::inspect::read_log(&c)?;
/// assert_eq!(log.frames[0].txid, log.first_txid);
/// assert!(log.frames[0].ranges.len() >= 2); // the object's bytes and the allocator's metadata
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    /// File offset of its header.
    pub offset: u64,
    /// Its transaction id.
    pub txid: u64,
    /// The writer's evidence: every frame up to this txid was durable when this one was written.
    pub durable_txid: u64,
    /// Header and payload bytes.
    pub len: u64,
    /// Its redo ranges: (file offset, length), in the order replay applies them.
    pub ranges: Vec<(u64, u64)>,
    /// The pieces its in-place check covers, (file offset, length): bytes its transaction wrote
    /// straight into the heap under `Durability::None`, with no barrier of their own (empty
    /// when it has no check). A frame with neither ranges nor pieces is a voucher (or an empty
    /// transaction).
    pub in_place: Vec<(u64, u64)>,
}

/// Where and why the committed part of the log ends.
///
/// ```
/// let e = txheap::inspect::LogEnd::Clean { offset: 8232, detail: "x".into() };
/// assert_eq!(e.offset(), 8232);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    /// Nothing follows: the region's end, never-written space, or a frame exactly as it was
    /// written (of an older generation, or the sentinel a checkpoint leaves).
    Clean {
        /// File offset where the next frame would go.
        offset: u64,
        /// What is there.
        detail: String,
    },
    /// A frame cut short by a crash during its commit (it was never acknowledged): recovery
    /// discards it.
    Torn {
        /// File offset of the torn frame.
        offset: u64,
        /// How it fails to verify.
        detail: String,
    },
    /// A damaged frame that a later frame proves was durable: opening would lose acknowledged
    /// transactions, so it is refused (see [`Error::LogDamaged`]).
    Damaged {
        /// File offset of the damaged frame.
        offset: u64,
        /// The transaction it should hold.
        txid: u64,
        /// The later frame that vouches for it; or, before the log, the log-start witness, or
        /// the damaged superblock slot that named a newer generation found at the log's start
        /// (`txheap_recovery::proof_name` says which).
        voucher_offset: u64,
        /// That frame's transaction id (for the witness: the damaged frame's).
        voucher_txid: u64,
        /// The highest transaction id of an intact later frame: `txid..=last_txid` would be lost.
        last_txid: u64,
    },
}

impl LogEnd {
    /// The file offset this end is at.
    ///
    /// ```
    /// let e = txheap::inspect::LogEnd::Torn { offset: 9000, detail: String::new() };
    /// assert_eq!(e.offset(), 9000);
    /// ```
    pub fn offset(&self) -> u64 {
        match self {
            LogEnd::Clean { offset, .. }
            | LogEnd::Torn { offset, .. }
            | LogEnd::Damaged { offset, .. } => *offset,
        }
    }
}

/// The log of a heap file as recovery would read it: the superblock in force, every committed
/// frame, and where and why the committed part ends.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("l.heap");
/// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
/// let log = txheap::inspect::read_log(&p)?;
/// assert!(log.frames.is_empty());
/// assert!(matches!(log.end, txheap::inspect::LogEnd::Clean { .. }));
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// The superblock's sequence number.
    pub superblock_seq: u64,
    /// The superblock's offset (slot A at 0, slot B at 4096).
    pub superblock_offset: u64,
    /// The log generation frames must carry.
    pub generation: u64,
    /// File offset of the log region.
    pub log_offset: u64,
    /// Its size in bytes.
    pub log_size: u64,
    /// The transaction id the first frame must carry.
    pub first_txid: u64,
    /// The committed frames, in order.
    pub frames: Vec<LogFrame>,
    /// Where they end, and why.
    pub end: LogEnd,
    /// `Some(txid)` when another handle held the file for writing: the log was read from a
    /// copy of the file's metadata as of transaction `txid` (see [`check`]), and its frames
    /// are the running writer's, which that writer has not yet checkpointed.
    pub live: Option<u64>,
}

impl LogReport {
    /// Bytes of redo ranges in the committed frames (what a replay writes).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("b.heap");
    /// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
    /// assert_eq!(txheap::inspect::read_log(&p)?.range_bytes(), 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn range_bytes(&self) -> u64 {
        self.frames
            .iter()
            .flat_map(|f| f.ranges.iter().map(|r| r.1))
            .sum()
    }
}

/// What [`check`] found: the verdict, each finding, and what it could read.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("r.heap");
/// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
/// let r = txheap::inspect::check(&p, &mut |_, _| {})?;
/// assert_eq!(r.verdict, txheap::inspect::Verdict::Clean);
/// assert!(r.findings.is_empty() && r.stats.is_some());
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckReport {
    /// The file checked.
    pub path: PathBuf,
    /// The worst finding's verdict ([`Verdict::Clean`] when there is none).
    pub verdict: Verdict,
    /// Everything found, in the order the checks ran. A damaged finding ends the check: what
    /// lies behind it cannot be trusted to be read.
    pub findings: Vec<Finding>,
    /// The log, if the superblock could be read.
    pub log: Option<LogReport>,
    /// The heap's figures as replay would leave it, if the heap could be walked.
    pub stats: Option<Stats>,
    /// `Some(txid)` when another handle held the file for writing: the check read a copy of
    /// its metadata as of transaction `txid` (see [`check`]); frames waiting in the log are then
    /// the running writer's business, not findings.
    pub live: Option<u64>,
}

/// A shared-locked storage over the file at `path`.
fn storage_of(path: &Path) -> Result<(Arc<File>, FileStorage)> {
    let file = Arc::new(open::open_shared(path)?);
    let storage =
        FileStorage::new(file.clone(), 0, false).map_err(|e| Error::io("storage", 0, e))?;
    Ok((file, storage))
}

/// Read the log of the heap file at `path` as recovery would, without changing anything.
///
/// A file another handle holds for writing is read live, from a copy of its metadata as of
/// one committed state, as [`check`] reads it; [`LogReport::live`] then names that state.
///
/// Errors: those of [`Heap::open_read_only`] before the log (no file, not a txheap file, both
/// superblocks damaged), [`Error::Truncated`] for a file cut inside its log, and
/// [`Error::Corrupt`] for a frame whose
/// checksum holds but whose ranges are malformed or leave the heap. A damaged durable frame is
/// not an error here: it is [`LogEnd::Damaged`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("rl.heap");
/// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
/// let log = txheap::inspect::read_log(&p)?;
/// assert_eq!(log.log_offset, 8192);
/// # Ok::<(), txheap::Error>(())
/// ```
pub fn read_log(path: impl AsRef<Path>) -> Result<LogReport> {
    let path = path.as_ref();
    let copy;
    let mut live = None;
    let (_file, storage) = match storage_of(path) {
        Err(Error::Locked { .. }) => {
            // Live: the log of a copy (see `check`), as of one committed state.
            copy = LiveCopy::take(path)?;
            live = Some(copy.txid);
            storage_of(&copy.path)?
        }
        other => other?,
    };
    let (sb, slot) = recovery::select_superblock(&storage)?;
    // A file cut inside its log is `Truncated`, named as such (a review found an I/O error
    // "failed to fill whole buffer"); one cut after its log still shows the log.
    let len = storage.len().map_err(|e| Error::io("stat", 0, e))?;
    if len < sb.log_offset() + sb.log_size {
        return Err(Error::Truncated {
            len,
            needed: sb.min_file_len(),
        });
    }
    Ok(LogReport {
        live,
        ..log_of(&storage, &sb, slot.offset())?
    })
}

/// The figures of the heap in `file`, which a read-only handle opened at `path` beside the writer
/// that holds it: from a live copy of that file (as [`stats`] makes one), not of whatever `path`
/// names now (a review found a handle's `stats` describing a copy renamed over its path).
pub(crate) fn live_stats(path: &Path, file: &File) -> Result<Stats> {
    let source = file.try_clone().map_err(|e| Error::io("dup", 0, e))?;
    let copy = LiveCopy::take_of(path, source)?;
    let mut s = Heap::open_read_only(&copy.path)?.stats()?;
    copy.describe(&mut s)?;
    Ok(s)
}

/// The figures of [`Heap::stats`] for the heap file at `path`, read-only, also while another
/// handle holds it open for writing (then from a copy of its metadata as of one committed
/// state, as [`check`] makes it; the second value says which transaction, `None` when not live).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("s.heap");
/// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
/// heap.transaction(|tx| tx.alloc(7u64).map(|_| ()))?;
/// // The writer still holds the file: the figures come from a live copy.
/// let (s, live) = txheap::inspect::stats(&p)?;
/// assert_eq!((s.used_bytes, live), (16, Some(1)));
/// # Ok::<(), txheap::Error>(())
/// ```
pub fn stats(path: impl AsRef<Path>) -> Result<(Stats, Option<u64>)> {
    let path = path.as_ref();
    // (Not `Heap::open_read_only`, which would follow the writer and ask for these figures.)
    match open::open_read_only_here(path).map(Heap::from) {
        Err(Error::Locked { .. }) => {
            let copy = LiveCopy::take(path)?;
            let mut s = Heap::open_read_only(&copy.path)?.stats()?;
            copy.describe(&mut s)?;
            Ok((s, Some(copy.txid)))
        }
        Err(e) => Err(e),
        Ok(h) => Ok((h.stats()?, None)),
    }
}

/// Attempts at a consistent live copy before giving up.
const LIVE_TRIES: usize = 100;

/// Pauses before a live copy reads again superblock slots that did not decode (a writer may be
/// in the middle of writing one): damage still there after all of them is reported.
const TORN_PAUSES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(1),
    std::time::Duration::from_millis(4),
    std::time::Duration::from_millis(16),
];
/// Bytes copied from the start of each chunk that is not a zone table: a run's bitmap is at most
/// 2,032 bytes (16-byte blocks), so every run's bitmap lies inside.
const LIVE_CHUNK_HEAD: u64 = 2048;

/// A copy of the metadata of a heap that a writer holds open, in a sparse temporary file of the
/// same length (object bytes are holes), as of transaction `txid`; removed when dropped.
struct LiveCopy {
    /// Where the copy is opened: on Linux `/proc/self/fd/N` of `kept` (the file is unlinked as
    /// soon as it is made), elsewhere its name in the temporary directory.
    path: PathBuf,
    txid: u64,
    /// The live file, for what the copy cannot say about it (its filesystem).
    source: File,
    /// The unlinked copy's descriptor (Linux), which keeps it while the copy lives.
    kept: Option<File>,
}

/// Copy bytes `[off, off+len)` of the live file into `out` (through `buf`), feeding `digest`
/// if given; `false` if the file was cut meanwhile (compaction: the attempt starts again).
fn copy_live_range(
    storage: &FileStorage,
    out: &File,
    buf: &mut Vec<u8>,
    off: u64,
    len: u64,
    digest: Option<&mut InPlaceDigest>,
) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    buf.resize(len as usize, 0);
    match storage.read_at(off, buf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(Error::io("read a live heap", off, e)),
    }
    out.write_all_at(buf, off)
        .map_err(|e| Error::io("write a live copy", off, e))?;
    if let Some(d) = digest {
        d.update(buf);
    }
    Ok(true)
}

/// Copy into `out` the in-place bytes of every frame of `log` (the copied log, from its start)
/// that carries an in-place check with no voucher after it in `log`, checking each frame's
/// digest over the copied bytes: `false` when one does not match (the writer changed them
/// after the scan read the log) or the file was cut, and the attempt must start again.
fn copy_in_place_checked(
    storage: &FileStorage,
    out: &File,
    sb: &Superblock,
    log: &[u8],
    buf: &mut Vec<u8>,
) -> Result<bool> {
    let frames: Vec<_> = txheap_log::scan(log, sb.generation, sb.next_txid).collect();
    for (i, f) in frames.iter().enumerate() {
        let Some(check) = f.in_place_check() else {
            continue;
        };
        let txid = f.header.txid;
        if frames[i + 1..]
            .iter()
            .any(|g| g.header.vouches_for(sb.generation, txid))
        {
            continue; // recovery does not check it
        }
        let mut digest = InPlaceDigest::new();
        for (off, len) in check.pieces() {
            // In steps of at most 1 MiB: a piece can be as long as the file.
            let mut p = off;
            while p < off + len {
                let n = (off + len - p).min(1 << 20);
                if !copy_live_range(storage, out, buf, p, n, Some(&mut digest))? {
                    return Ok(false);
                }
                p += n;
            }
        }
        if digest.digest() != check.digest {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Drop for LiveCopy {
    fn drop(&mut self) {
        if self.kept.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl LiveCopy {
    /// Copy `path`'s metadata: both superblock slots as read first, the heap header page and
    /// root area, each zone table chunk, the first [`LIVE_CHUNK_HEAD`] bytes of every other
    /// chunk, then the log's committed frames (scanned after the rest); kept only if both slots
    /// read the same afterwards, else tried again.
    ///
    /// A frame the scan finds damaged may be one the writer was still writing when the scan read
    /// it, vouched for by a frame written after that read: the scan is tried again, and the
    /// damage is reported only when the same frame is damaged on two attempts in a row (by the
    /// second, a frame that a durable later frame vouched for has long been complete).
    fn take(path: &Path) -> Result<LiveCopy> {
        Self::take_with(path, &mut |_| {})
    }

    /// [`LiveCopy::take`] of the file `source` (named `path` in errors): the file a handle has
    /// open, whatever its path names now.
    fn take_of(path: &Path, source: File) -> Result<LiveCopy> {
        Self::take_from(path, source, &mut |_| {}, &mut |_| {})
    }

    /// [`LiveCopy::take`], calling `before_attempt` with each attempt's number first (tests
    /// change the file there, as a writer would).
    fn take_with(path: &Path, before_attempt: &mut dyn FnMut(usize)) -> Result<LiveCopy> {
        let source = crate::open::open_existing(path, false)?;
        Self::take_from(path, source, before_attempt, &mut |_| {})
    }

    /// [`LiveCopy::take_with`] of the open file `source`, also calling `before_scan` with the
    /// attempt's number between the superblock's selection and the log's scan (tests).
    fn take_from(
        path: &Path,
        source: File,
        before_attempt: &mut dyn FnMut(usize),
        before_scan: &mut dyn FnMut(usize),
    ) -> Result<LiveCopy> {
        use crate::alloc::CHUNKS_PER_ZONE;
        use crate::limits::CHUNK_SIZE;
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let storage = FileStorage::new(
            Arc::new(source.try_clone().map_err(|e| Error::io("dup", 0, e))?),
            0,
            false,
        )
        .map_err(|e| Error::io("storage", 0, e))?;
        // The copy holds the heap's metadata and log, user data among them: readable by its
        // owner only, and under a name another user cannot guess and take first (a review
        // found it created 0644 under a predictable name).
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let (tmp, out) = {
            let mut tries = 0;
            loop {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let tmp = std::env::temp_dir().join(format!(
                    ".txheap-live-{}-{}-{nanos:08x}",
                    std::process::id(),
                    COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                {
                    Ok(out) => break (tmp, out),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => {
                        tries += 1
                    }
                    Err(e) => return Err(Error::io("create a live copy", 0, e)),
                }
            }
        };
        // Gone when dropped: also when an attempt fails, and (Linux) when the process is killed,
        // since the name goes at once and the file lives on through a kept descriptor (a review
        // found a `txheap check` killed by a signal leaving 36 MB copies of metadata and log in
        // the temporary directory).
        #[cfg(target_os = "linux")]
        let (copy_path, kept) = {
            use std::os::unix::io::AsRawFd;
            let kept = out.try_clone().map_err(|e| Error::io("dup", 0, e));
            let _ = std::fs::remove_file(&tmp);
            let kept = kept?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", kept.as_raw_fd()));
            (path, Some(kept))
        };
        #[cfg(not(target_os = "linux"))]
        let (copy_path, kept) = (tmp, None);
        let mut copy = LiveCopy {
            path: copy_path,
            txid: 0,
            source,
            kept,
        };
        let io = |e| Error::io("write a live copy", 0, e);
        let mut buf = Vec::new();
        let copy_range =
            |buf: &mut Vec<u8>, off, len| copy_live_range(&storage, &out, buf, off, len, None);
        let slots_len = 2 * recovery::SUPERBLOCK_SLOT_LEN;
        let mut slots = vec![0u8; slots_len as usize];
        let mut damaged_before = None;
        // Attempts in a row that read the same damaged slot bytes.
        let mut torn_seen = 0;
        let mut torn_before: Vec<u8> = Vec::new();
        'attempt: for attempt in 0..LIVE_TRIES {
            before_attempt(attempt);
            if storage.read_at(0, &mut slots).is_err() {
                continue;
            }
            // A slot that does not decode may be one the writer is writing: its copy into the
            // page cache, cut by a preemption, can stay half done for a scheduler's time
            // slice, so that both reads of an attempt see the same torn bytes (a live check
            // beside a committing writer on a loaded machine reported slot A damaged, once in
            // a CI run). Such a slot is read again after pauses of 1, 4 and 16 ms; damage that
            // stays through all of them is reported, as at rest.
            let torn = !recovery::damaged_slots(&recovery::MemStorage::from_bytes(slots.clone()))?
                .is_empty();
            if torn {
                torn_seen = if torn_before == slots {
                    torn_seen + 1
                } else {
                    1
                };
                torn_before.clone_from(&slots);
                if torn_seen <= TORN_PAUSES.len() && attempt + 1 < LIVE_TRIES {
                    std::thread::sleep(TORN_PAUSES[torn_seen - 1]);
                    continue;
                }
            }
            let (sb, _) = recovery::select_superblock(&storage)?;
            let len = storage.len().map_err(|e| Error::io("stat", 0, e))?;
            if len < sb.min_file_len() {
                return Err(Error::Truncated {
                    len,
                    needed: sb.min_file_len(),
                });
            }
            out.set_len(0).and_then(|()| out.set_len(len)).map_err(io)?;
            out.write_all_at(&slots, 0).map_err(io)?;
            let chunk_area = sb.chunk_area_offset();
            if !copy_range(&mut buf, sb.heap_offset(), chunk_area - sb.heap_offset())? {
                continue;
            }
            for c in 0..(len - chunk_area) / CHUNK_SIZE {
                let n = if c % CHUNKS_PER_ZONE == 0 {
                    CHUNK_SIZE
                } else {
                    LIVE_CHUNK_HEAD
                };
                if !copy_range(&mut buf, chunk_area + c * CHUNK_SIZE, n)? {
                    continue 'attempt;
                }
            }
            before_scan(attempt);
            let scan = match recovery::scan_log(&storage, &sb, &mut |_, _| Ok(())) {
                Ok(scan) => scan,
                // A read past the end: the writer cut the file meanwhile (compaction; the scan
                // reads the in-place bytes of a checked frame, which may lie in the cut tail).
                // The next attempt sees the new superblock. (Found by review, ninth session: 3
                // of 467 live checks beside compaction under `None` failed with this error.)
                Err(RecoveryError::Io { .. }) if attempt + 1 < LIVE_TRIES => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(d) = scan.damage {
                // Believed only if the superblock did not move under the scan: a checkpoint and
                // a first commit meanwhile leave a newer generation's frame at the log's start,
                // which vouches for the old log's frames as if a superblock were damaged (a
                // review's live check beside a checkpointing writer reported a healthy heap
                // damaged and advised a salvage). And only if the same frame was damaged on the
                // attempt before: it may be one the writer was still writing.
                let mut again = vec![0u8; slots.len()];
                if storage.read_at(0, &mut again).is_err() || again != slots {
                    damaged_before = None;
                    continue;
                }
                let seen = Some((d.offset, d.txid, slots.clone()));
                if damaged_before == seen {
                    return Err(d.error().into());
                }
                damaged_before = seen;
                continue; // perhaps a frame being written: read it again
            }
            damaged_before = None;
            if !copy_range(&mut buf, sb.log_offset(), scan.end_offset)? {
                continue;
            }
            // The in-place bytes of frames that carry an in-place check with no voucher after
            // them in the copied log: the copy's recovery checks them (they are heap data, not
            // metadata). A flush after the scan may have changed them (it writes its voucher
            // past the copied log first): then they no longer match, and the attempt starts
            // again.
            let log_bytes = std::mem::take(&mut buf);
            if !copy_in_place_checked(&storage, &out, &sb, &log_bytes, &mut buf)? {
                continue;
            }
            let mut again = vec![0u8; slots.len()];
            if storage.read_at(0, &mut again).is_err() || again != slots {
                continue; // a checkpoint: the log may have been reused under the scan
            }
            copy.txid = scan.next_txid.saturating_sub(1);
            return Ok(copy);
        }
        Err(Error::Busy {
            path: path.to_path_buf(),
            attempts: LIVE_TRIES as u32,
        })
    }

    /// Put what the copy cannot know about the live file into `s`: its filesystem.
    fn describe(&self, s: &mut Stats) -> Result<()> {
        let (fs, volatile) =
            crate::platform::filesystem(&self.source).map_err(|e| Error::io("fstatfs", 0, e))?;
        s.filesystem = fs;
        s.volatile_storage = volatile;
        Ok(())
    }
}

fn log_of(storage: &FileStorage, sb: &Superblock, sb_offset: u64) -> Result<LogReport> {
    let mut frames = Vec::new();
    let ranges = std::cell::RefCell::new(Vec::new());
    let scan = recovery::scan_log_visiting(
        storage,
        sb,
        &mut |off, bytes| {
            ranges.borrow_mut().push((off, bytes.len() as u64));
            Ok(())
        },
        &mut |at, h| {
            frames.push(LogFrame {
                offset: sb.log_offset() + at,
                txid: h.txid,
                durable_txid: h.durable_txid,
                len: h.frame_len(),
                ranges: ranges.take(),
                in_place: Vec::new(),
            })
        },
    )?;
    // The in-place checks are not redo ranges: read the committed frames again, in one read
    // (they lie back to back from the log's start; a read per frame made `dump-log` of a full
    // log half a million system calls), and take each frame's check.
    let bounds = frames.first().zip(frames.last());
    if let Some((first_txid, end)) = bounds.map(|(a, b)| (a.txid, b.offset + b.len)) {
        let at = sb.log_offset();
        let mut log = vec![0u8; (end - at) as usize];
        storage
            .read_at(at, &mut log)
            .map_err(|e| Error::io("read the log's frames", at, e))?;
        for (f, frame) in frames
            .iter_mut()
            .zip(txheap_log::scan(&log, sb.generation, first_txid))
        {
            if frame.header.txid == f.txid {
                if let Some(c) = frame.in_place_check() {
                    f.in_place = c.pieces().collect();
                }
            }
        }
    }
    let offset = sb.log_offset() + scan.stop.offset;
    let end = if let Some(d) = scan.damage {
        LogEnd::Damaged {
            offset: d.offset,
            txid: d.txid,
            voucher_offset: d.voucher_offset,
            voucher_txid: d.voucher_txid,
            last_txid: d.last_txid,
        }
    } else {
        match &scan.stop.reason {
            StopReason::RegionEnd => LogEnd::Clean {
                offset,
                detail: "the end of the log region".into(),
            },
            StopReason::InPlaceMismatch { txid } => LogEnd::Torn {
                offset,
                detail: format!(
                    "transaction {txid}: the heap does not hold the in-place bytes its frame \
                     names (they were not all on disk when the power went), and no later frame \
                     vouches for them"
                ),
            },
            reason => {
                if recovery::frame_verifies_at(storage, sb, scan.stop.offset)? {
                    let detail = match reason {
                        StopReason::OtherGeneration {
                            found: recovery::txheap_log::SENTINEL_GENERATION,
                        } => "the sentinel frame a checkpoint leaves".to_string(),
                        StopReason::OtherGeneration { found } => {
                            format!("an intact stale frame of generation {found}")
                        }
                        StopReason::TxidMismatch { found, .. } => {
                            format!("an intact stale frame of this generation (txid {found})")
                        }
                        other => format!("an intact frame that does not follow ({other:?})"),
                    };
                    LogEnd::Clean { offset, detail }
                } else if unwritten(storage, offset)? {
                    LogEnd::Clean {
                        offset,
                        detail: "never-written (zero) log space".into(),
                    }
                } else {
                    LogEnd::Torn {
                        offset,
                        detail: format!("{reason:?}"),
                    }
                }
            }
        }
    };
    Ok(LogReport {
        superblock_seq: sb.seq,
        superblock_offset: sb_offset,
        generation: sb.generation,
        log_offset: sb.log_offset(),
        log_size: sb.log_size,
        first_txid: sb.next_txid,
        frames,
        end,
        live: None,
    })
}

/// Whether a frame header's bytes at file offset `at` are all zero.
fn unwritten(storage: &FileStorage, at: u64) -> Result<bool> {
    let mut hb = [0u8; txheap_recovery::txheap_log::FRAME_HEADER_LEN];
    storage
        .read_at(at, &mut hb)
        .map_err(|e| Error::io("read log frame", at, e))?;
    Ok(hb.iter().all(|&b| b == 0))
}

/// Check the heap file at `path` end to end, without changing it: both superblock slots, every
/// committed log frame (and whether the log ends cleanly, torn, or at a damaged durable frame),
/// the heap header, every chunk-table entry, and every run's bitmap, as replay would leave
/// them. `progress(done, total)` hears how the walk over run bitmaps goes.
///
/// A heap that another handle (in this or another process) holds open for writing is checked
/// live: its metadata (superblocks, the log's committed frames, the heap header, the chunk
/// tables and the first 2 KiB of every chunk, where run bitmaps live) is copied into a sparse
/// temporary file, and the copy is kept only if the superblock did not change meanwhile (a
/// checkpoint reuses the log); the checks then run on that copy, which holds one committed
/// state ([`CheckReport::live`] says which). This works because the writer changes the heap's
/// metadata only by applying frames already in the log: whatever part of an apply the copy
/// caught, replaying the log's frames over it gives the state after the last one. Object bytes
/// are not copied (no check reads them).
///
/// Returns `Err` only when the file cannot be checked at all: it does not exist, cannot be
/// read, it is not a txheap file, or it is of a format version this library does not read (or,
/// live, the writer changed the superblock during every one of 100 attempts: `Locked`).
/// Damage is a [`Finding`], never an `Err`.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("c.heap");
/// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
/// heap.transaction(|tx| tx.alloc([7u64; 4]).map(|_| ()))?;
/// heap.close()?;
/// let mut bytes = std::fs::read(&p).unwrap();
/// bytes[0] ^= 0x40; // damage superblock slot A
/// std::fs::write(&p, &bytes).unwrap();
/// let r = txheap::inspect::check(&p, &mut |_, _| {})?;
/// assert_eq!(r.verdict, txheap::inspect::Verdict::Recoverable); // slot B holds the state
/// assert_eq!(r.findings[0].offset, Some(0));
/// # Ok::<(), txheap::Error>(())
/// ```
pub fn check(path: impl AsRef<Path>, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
    let path = path.as_ref();
    match storage_of(path) {
        Err(Error::Locked { .. }) => {
            let copy = match LiveCopy::take(path) {
                Ok(copy) => copy,
                // Damage the copy met is a finding, as at rest (a review found it returned as
                // `Err`: no report, and no JSON from `txheap check --json`).
                Err(e) => {
                    let live = match e {
                        Error::LogDamaged { txid, .. } => txid.saturating_sub(1),
                        _ => 0,
                    };
                    let mut r = CheckReport {
                        path: path.to_path_buf(),
                        verdict: Verdict::Clean,
                        findings: Vec::new(),
                        log: None,
                        stats: None,
                        live: Some(live),
                    };
                    r.push_damage(e)?;
                    return Ok(r.done());
                }
            };
            let (file, storage) = storage_of(&copy.path)?;
            let mut r = check_file(&copy.path, file, storage, Some(copy.txid), progress)?;
            r.path = path.to_path_buf();
            if let Some(s) = &mut r.stats {
                copy.describe(s)?;
            }
            Ok(r)
        }
        Err(e) => Err(e),
        Ok((file, storage)) => check_file(path, file, storage, None, progress),
    }
}

/// [`check`] of the file at `path`, which `file` and `storage` read under a shared lock. `live`:
/// the file is a [`LiveCopy`] of a heap a writer holds open, as of that transaction.
fn check_file(
    path: &Path,
    file: Arc<File>,
    storage: FileStorage,
    live: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport> {
    let mut report = CheckReport {
        path: path.to_path_buf(),
        verdict: Verdict::Clean,
        findings: Vec::new(),
        log: None,
        stats: None,
        live,
    };
    let damaged = |report: &mut CheckReport, e: Error| report.push_damage(e);
    let (sb, slot) = match recovery::select_superblock(&storage) {
        Ok(s) => s,
        Err(e @ RecoveryError::Corrupt { .. }) => {
            damaged(&mut report, e.into())?;
            return Ok(report.done());
        }
        Err(e) => return Err(e.into()),
    };
    // Only once a slot is in force is the other one's damage recoverable (a review found both
    // slots, damaged, each reported as "the other slot is in force").
    for (slot, what) in recovery::damaged_slots(&storage)? {
        report.push(
            Verdict::Recoverable,
            Some(slot.offset()),
            format!(
                "superblock slot {slot:?} is damaged ({what}); the other slot is in force, and \
                 the next checkpoint rewrites this one (`txheap recover`, or `txheap recover \
                 --salvage` when the log is damaged too)"
            ),
        );
    }
    let len = storage.len().map_err(|e| Error::io("stat", 0, e))?;
    if len < sb.min_file_len() {
        damaged(
            &mut report,
            Error::Truncated {
                len,
                needed: sb.min_file_len(),
            },
        )?;
        return Ok(report.done());
    }
    // (After the length: the rule reads the log's first frame.) A writable open checkpoints, which steps `seq` and `generation`: where that would pass
    // their limit it is refused, and so the check says, by the same rule (a review found `check`
    // calling such a file clean, and `recover --dry-run` promising success, where `recover`
    // refused it).
    match recovery::checkpoint_possible(&storage, &sb, slot, sb.next_txid) {
        Ok(()) => {}
        Err(e @ RecoveryError::Corrupt { .. }) => {
            damaged(&mut report, e.into())?;
            return Ok(report.done());
        }
        Err(e) => return Err(e.into()),
    }
    let log = match log_of(&storage, &sb, slot.offset()) {
        Ok(log) => LogReport { live, ..log },
        Err(e) => {
            damaged(&mut report, e)?;
            return Ok(report.done());
        }
    };
    if let (Some(first), Some(last), None) = (log.frames.first(), log.frames.last(), live) {
        report.push(
            Verdict::Recoverable,
            Some(first.offset),
            format!(
                "{} committed frame(s) (transactions {}..={}, {} bytes of ranges) are in the log \
                 and not yet checkpointed: a writable open (`txheap recover`) replays them",
                log.frames.len(),
                first.txid,
                last.txid,
                log.range_bytes()
            ),
        );
    }
    let end = log.end.clone();
    report.log = Some(log);
    match end {
        LogEnd::Clean { .. } => {}
        LogEnd::Torn { offset, detail } => report.push(
            Verdict::Recoverable,
            Some(offset),
            format!(
                "the log ends with a torn frame ({detail}): a commit cut short by a crash, never \
                 acknowledged; recovery discards it"
            ),
        ),
        LogEnd::Damaged {
            offset,
            txid,
            voucher_offset,
            voucher_txid,
            last_txid,
        } => {
            report.push(
                Verdict::Damaged,
                Some(offset),
                format!(
                    "log frame of transaction {txid} is damaged, but {} proves it was durable: \
                     an open would lose transactions {txid}..={last_txid}, so it is refused \
                     (`txheap recover --salvage` keeps the transactions before {txid} and drops \
                     those)",
                    recovery::proof_name(voucher_offset, voucher_txid)
                ),
            );
            return Ok(report.done());
        }
    }
    drop(storage);
    // A second descriptor of the same open file: it shares the shared lock.
    let file = file.try_clone().map_err(|e| Error::io("dup", 0, e))?;
    let heap = match open::read_only_from(path, file) {
        Ok(o) => Heap::from(o),
        Err(e) => {
            damaged(&mut report, e)?;
            return Ok(report.done());
        }
    };
    match heap.stats_progress(progress) {
        Ok(s) => report.stats = Some(s),
        Err(e) => damaged(&mut report, e)?,
    }
    Ok(report.done())
}

impl CheckReport {
    /// Record `e` as a `Damaged` finding if it is damage (a corrupt, truncated or damaged-log
    /// file); any other error is returned.
    fn push_damage(&mut self, e: Error) -> Result<()> {
        let (offset, what) = match e {
            Error::Corrupt { offset, what } => (Some(offset), what),
            Error::Truncated { .. } | Error::LogDamaged { .. } => (None, e.to_string()),
            other => return Err(other),
        };
        self.push(Verdict::Damaged, offset, what);
        Ok(())
    }

    fn push(&mut self, verdict: Verdict, offset: Option<u64>, what: String) {
        self.findings.push(Finding {
            verdict,
            offset,
            what,
        });
    }

    fn done(mut self) -> CheckReport {
        self.verdict = self
            .findings
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Clean);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A heap held open for writing with three frames in its log, and the offset of a payload
    /// byte of the first frame (which the second frame vouches for).
    fn live_heap(dir: &Path) -> (Heap, PathBuf, u64) {
        let path = dir.join("live.heap");
        let heap = Heap::create(&path, crate::Options::new()).unwrap();
        for i in 0..3u64 {
            heap.transaction(|tx| tx.alloc([i; 6]).map(|_| ())).unwrap();
        }
        let log = read_log(&path).unwrap();
        assert_eq!(log.frames.len(), 3, "the test needs the frames in the log");
        (heap, path, log.frames[0].offset + 60)
    }

    fn flip(path: &Path, at: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
    }

    /// The scan read a frame while the writer was still writing it, then the frame after it:
    /// the next attempt reads it whole, and the copy is taken (this was an error before).
    #[test]
    fn a_frame_read_while_being_written_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let (_heap, path, at) = live_heap(d.path());
        flip(&path, at);
        let mut attempts = 0;
        let copy = LiveCopy::take_with(&path, &mut |n| {
            attempts += 1;
            if n == 1 {
                flip(&path, at); // the writer finished the frame
            }
        })
        .unwrap();
        assert_eq!((copy.txid, attempts), (3, 2));
    }

    /// A writer that checkpoints, and commits again, between every attempt's choice of a
    /// superblock and its scan of the log (a review's live check beside such a writer, timed
    /// by luck, reported a sound heap damaged and advised a salvage): the scan meets a newer
    /// generation's frame at the log's start, which is not damage. The copy gives up with
    /// `Busy`, never `LogDamaged`.
    #[test]
    fn a_checkpoint_under_every_scan_is_not_damage() {
        let d = tempfile::tempdir().unwrap();
        let (heap, path, _) = live_heap(d.path());
        let source = std::fs::File::open(&path).unwrap();
        let mut scans = 0;
        let r = LiveCopy::take_from(&path, source, &mut |_| {}, &mut |_| {
            scans += 1;
            heap.transaction(|tx| tx.alloc(1u64).map(|_| ())).unwrap();
            heap.checkpoint().unwrap();
            heap.transaction(|tx| tx.alloc(2u64).map(|_| ())).unwrap();
        });
        assert!(
            matches!(r, Err(Error::Busy { .. })),
            "{:?}",
            r.map(|c| c.txid)
        );
        assert_eq!(scans, LIVE_TRIES);
    }

    /// A heap held open for writing whose two superblock slots are both sound (it was closed
    /// once), with frames in its log, and a byte of its older slot (which damage leaves the
    /// heap recoverable from the other).
    fn live_heap_two_slots(dir: &Path) -> (Heap, PathBuf, u64) {
        let path = dir.join("live2.heap");
        let heap = Heap::create(&path, crate::Options::new()).unwrap();
        heap.transaction(|tx| tx.alloc([9u64; 6]).map(|_| ()))
            .unwrap();
        heap.close().unwrap();
        let heap = Heap::open(&path, crate::Options::new()).unwrap();
        for i in 0..3u64 {
            heap.transaction(|tx| tx.alloc([i; 6]).map(|_| ())).unwrap();
        }
        let file = std::fs::File::open(&path).unwrap();
        let storage = FileStorage::new(Arc::new(file), 0, false).unwrap();
        let (_, current) = recovery::select_superblock(&storage).unwrap();
        (heap, path, current.other().offset() + 20)
    }

    /// [`check_file`] of a live copy.
    fn check_copy(copy: &LiveCopy) -> CheckReport {
        let (file, storage) = storage_of(&copy.path).unwrap();
        check_file(&copy.path, file, storage, Some(copy.txid), &mut |_, _| {}).unwrap()
    }

    /// A superblock slot read while the writer was writing it (a half-copied slot that stays so
    /// for two reads): read again after a pause, and the copy holds the whole slot.
    #[test]
    fn a_slot_read_while_being_written_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let (_heap, path, at) = live_heap_two_slots(d.path());
        assert_eq!(
            check_copy(&LiveCopy::take(&path).unwrap()).verdict,
            Verdict::Clean
        );
        flip(&path, at);
        let mut attempts = 0;
        let copy = LiveCopy::take_with(&path, &mut |n| {
            attempts += 1;
            if n == 1 {
                flip(&path, at); // the writer finished the slot
            }
        })
        .unwrap();
        assert_eq!(attempts, 2);
        let r = check_copy(&copy);
        assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.findings);
    }

    /// A damaged slot that stays through every pause is reported as at rest.
    #[test]
    fn a_slot_damaged_through_the_pauses_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let (_heap, path, at) = live_heap_two_slots(d.path());
        flip(&path, at);
        let mut attempts = 0;
        let copy = LiveCopy::take_with(&path, &mut |_| attempts += 1).unwrap();
        assert_eq!(attempts, TORN_PAUSES.len() + 1);
        let r = check_copy(&copy);
        assert_eq!(r.verdict, Verdict::Recoverable, "{:?}", r.findings);
        assert_eq!(r.findings[0].offset, Some(at - 20));
    }

    /// Damage that stays is reported at the second attempt, naming the frame.
    #[test]
    fn a_frame_damaged_twice_is_damage() {
        let d = tempfile::tempdir().unwrap();
        let (_heap, path, at) = live_heap(d.path());
        flip(&path, at);
        let mut attempts = 0;
        let err = LiveCopy::take_with(&path, &mut |_| attempts += 1)
            .err()
            .expect("damage is an error");
        assert_eq!(attempts, 2);
        assert!(err.to_string().contains("transaction 1 "), "{err}");
    }
}
