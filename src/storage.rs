//! The production implementation of the storage choke point: the file itself.
//!
//! Owns: every write to the file (`pwrite`), every barrier (`msync` of a range of the log,
//! `fdatasync` for everything else) and every change of the file's length (`posix_fallocate`).
//! May not: know frames, allocators or transactions. All of txheap's mutations of the file pass
//! through [`Storage`]'s methods here; the mapping is read-only or private, so a store that
//! bypassed this module could not reach the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use txheap_recovery::Storage;

use crate::sys::{self, SyncWindow};

/// Counters a test or a benchmark can read to see what the commit path costs.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("io.heap"), txheap::Options::new())?;
/// let before = heap.stats()?.io;
/// heap.transaction(|tx| tx.alloc(1u64).map(|_| ()))?;
/// let after = heap.stats()?.io;
/// assert_eq!(after.range_barriers - before.range_barriers, 1); // one msync per commit
/// assert_eq!(after.full_barriers, before.full_barriers);
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    /// `pwrite` calls.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Range barriers (`msync` of part of the log).
    pub range_barriers: u64,
    /// Whole-file barriers (`fdatasync`).
    pub full_barriers: u64,
}

/// Injected failures (feature `test-hooks`): the `n`-th next call of a kind fails with EIO.
///
/// ```
/// let plan = txheap::FaultPlan { fail_barrier_after: Some(0), ..Default::default() };
/// assert_eq!(plan.fail_write_after, None);
/// ```
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Fail the barrier (msync or fdatasync) after this many more succeed.
    pub fail_barrier_after: Option<u64>,
    /// Fail the write (pwrite) after this many more succeed.
    pub fail_write_after: Option<u64>,
    /// Make the write after this many more succeed a *short* write: its first half reaches the
    /// file, then it fails with ENOSPC (what a `pwrite` that runs out of space part-way does).
    pub short_write_after: Option<u64>,
}

#[cfg(feature = "test-hooks")]
fn trip(counter: &mut Option<u64>) -> io::Result<()> {
    match counter {
        Some(0) => {
            *counter = None;
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        Some(n) => {
            *n -= 1;
            Ok(())
        }
        None => Ok(()),
    }
}

/// One recorded operation on the file (feature `test-hooks`), in the order they happened.
///
/// ```
/// let e = txheap::TraceEvent::Mark(3);
/// assert_eq!(e, txheap::TraceEvent::Mark(3));
/// ```
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// `pwrite` of `bytes` at `offset` (returned success).
    Write {
        /// File offset.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A range barrier: `[offset, offset+len)` (page-rounded) is durable.
    Barrier {
        /// Start, rounded down to a page.
        offset: u64,
        /// Length, rounded up to whole pages.
        len: u64,
    },
    /// `fdatasync`: everything is durable.
    BarrierAll,
    /// The file was extended to `len` bytes (blocks allocated, reading zero).
    Grow {
        /// New length.
        len: u64,
    },
    /// A marker the workload adds (for example: transaction `n` was acknowledged).
    Mark(u64),
}

/// A shared, growing record of the file's operations (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub type Trace = Arc<std::sync::Mutex<Vec<TraceEvent>>>;

/// Record an event when the `test-hooks` feature is on; compiles to nothing otherwise.
macro_rules! record {
    ($st:expr, $ev:expr) => {
        #[cfg(feature = "test-hooks")]
        $st.record(|| $ev);
    };
}

#[derive(Debug)]
pub(crate) struct FileStorage {
    file: Arc<File>,
    window: Option<SyncWindow>,
    pub(crate) counters: IoCounters,
    #[cfg(feature = "test-hooks")]
    pub(crate) faults: FaultPlan,
    #[cfg(feature = "test-hooks")]
    pub(crate) trace: Option<Trace>,
}

impl FileStorage {
    /// `window_len`: bytes at the start of the file (superblocks + log) that range barriers may
    /// cover; 0 for none (every barrier becomes `fdatasync`).
    pub(crate) fn new(file: Arc<File>, window_len: u64) -> io::Result<FileStorage> {
        let window = if window_len > 0 {
            Some(SyncWindow::new(&*file, window_len)?)
        } else {
            None
        };
        Ok(FileStorage {
            file,
            window,
            counters: IoCounters::default(),
            #[cfg(feature = "test-hooks")]
            faults: FaultPlan::default(),
            #[cfg(feature = "test-hooks")]
            trace: None,
        })
    }

    fn fdatasync(&mut self) -> io::Result<()> {
        self.counters.full_barriers += 1;
        self.file.sync_data()?;
        record!(self, TraceEvent::BarrierAll);
        Ok(())
    }

    #[cfg(feature = "test-hooks")]
    fn record(&self, event: impl FnOnce() -> TraceEvent) {
        if let Some(t) = &self.trace {
            t.lock().unwrap_or_else(|e| e.into_inner()).push(event());
        }
    }
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        #[cfg(feature = "test-hooks")]
        trip(&mut self.faults.fail_write_after)?;
        #[cfg(feature = "test-hooks")]
        if trip(&mut self.faults.short_write_after).is_err() {
            let half = &bytes[..bytes.len() / 2];
            self.file.write_all_at(half, offset)?;
            record!(
                self,
                TraceEvent::Write {
                    offset,
                    bytes: half.to_vec()
                }
            );
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.counters.writes += 1;
        self.counters.bytes_written += bytes.len() as u64;
        // write_all_at retries short writes and EINTR; any other error comes back.
        self.file.write_all_at(bytes, offset)?;
        record!(
            self,
            TraceEvent::Write {
                offset,
                bytes: bytes.to_vec()
            }
        );
        Ok(())
    }

    fn barrier(&mut self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(feature = "test-hooks")]
        trip(&mut self.faults.fail_barrier_after)?;
        match &self.window {
            Some(w) if offset.checked_add(len).is_some_and(|end| end <= w.len()) => {
                self.counters.range_barriers += 1;
                w.sync(offset, len)?;
                // msync works on whole pages: record the pages it made durable.
                record!(self, {
                    let page = sys::PAGE as u64;
                    let start = offset / page * page;
                    TraceEvent::Barrier {
                        offset: start,
                        len: (offset + len).div_ceil(page) * page - start,
                    }
                });
                Ok(())
            }
            _ => self.fdatasync(),
        }
    }

    fn barrier_all(&mut self) -> io::Result<()> {
        #[cfg(feature = "test-hooks")]
        trip(&mut self.faults.fail_barrier_after)?;
        self.fdatasync()
    }

    fn grow(&mut self, new_len: u64) -> io::Result<()> {
        let len = self.len()?;
        if new_len <= len {
            return Ok(());
        }
        sys::fallocate(&*self.file, len, new_len - len)?;
        record!(self, TraceEvent::Grow { len: new_len });
        Ok(())
    }
}
