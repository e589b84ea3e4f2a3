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

use txheap_recovery::txheap_log::StopReason;
use txheap_recovery::{self as recovery, RecoveryError, Storage, Superblock};

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
        /// The later frame that vouches for it.
        voucher_offset: u64,
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
/// Errors: those of [`Heap::open_read_only`] before the log (no file, another handle writing
/// it, not a txheap file, both superblocks damaged), and [`Error::Corrupt`] for a frame whose
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
    let (_file, storage) = storage_of(path.as_ref())?;
    let (sb, slot) = recovery::select_superblock(&storage)?;
    log_of(&storage, &sb, slot.offset())
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
            })
        },
    )?;
    let offset = sb.log_offset() + scan.stop.offset;
    let end = if let Some(d) = scan.damage {
        LogEnd::Damaged {
            offset: d.offset,
            txid: d.txid,
            voucher_offset: d.voucher_offset,
            last_txid: d.last_txid,
        }
    } else {
        match &scan.stop.reason {
            StopReason::RegionEnd => LogEnd::Clean {
                offset,
                detail: "the end of the log region".into(),
            },
            reason => {
                if recovery::frame_verifies_at(storage, sb, scan.stop.offset)? {
                    let detail = match reason {
                        StopReason::OtherGeneration { found: 0 } => {
                            "the sentinel frame a checkpoint leaves".to_string()
                        }
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
/// Returns `Err` only when the file cannot be checked at all: it does not exist, cannot be
/// read, another handle writes it ([`Error::Locked`]), it is not a txheap file, or it is of a
/// format version this library does not read. Damage is a [`Finding`], never an `Err`.
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
    let (file, storage) = storage_of(path)?;
    let mut report = CheckReport {
        path: path.to_path_buf(),
        verdict: Verdict::Clean,
        findings: Vec::new(),
        log: None,
        stats: None,
    };
    let damaged = |report: &mut CheckReport, e: Error| -> Result<()> {
        let (offset, what) = match e {
            Error::Corrupt { offset, what } => (Some(offset), what),
            Error::Truncated { .. } | Error::LogDamaged { .. } => (None, e.to_string()),
            other => return Err(other),
        };
        report.push(Verdict::Damaged, offset, what);
        Ok(())
    };
    for (slot, what) in recovery::damaged_slots(&storage)? {
        report.push(
            Verdict::Recoverable,
            Some(slot.offset()),
            format!(
                "superblock slot {slot:?} is damaged ({what}); the other slot is in force, and \
                 the next checkpoint (`txheap recover`) rewrites this one"
            ),
        );
    }
    let (sb, slot) = match recovery::select_superblock(&storage) {
        Ok(s) => s,
        Err(e @ RecoveryError::Corrupt { .. }) => {
            damaged(&mut report, e.into())?;
            return Ok(report.done());
        }
        Err(e) => return Err(e.into()),
    };
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
    let log = match log_of(&storage, &sb, slot.offset()) {
        Ok(log) => log,
        Err(e) => {
            damaged(&mut report, e)?;
            return Ok(report.done());
        }
    };
    if let (Some(first), Some(last)) = (log.frames.first(), log.frames.last()) {
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
            last_txid,
        } => {
            report.push(
                Verdict::Damaged,
                Some(offset),
                format!(
                    "log frame of transaction {txid} is damaged, but the frame at offset \
                     {voucher_offset} proves it was durable: an open would lose transactions \
                     {txid}..={last_txid}, so it is refused (`txheap recover --salvage` keeps \
                     the transactions before {txid} and drops those)"
                ),
            );
            return Ok(report.done());
        }
    }
    drop(storage);
    let file = Arc::try_unwrap(file).map_err(|_| Error::Corrupt {
        offset: 0,
        what: "internal: the check's file is still shared".into(),
    })?;
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
