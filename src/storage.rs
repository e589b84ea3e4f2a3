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

/// Injected failures (feature `fault-injection`): the `n`-th next call of a kind fails with EIO.
///
/// ```
/// let plan = txheap::FaultPlan { fail_barrier_after: Some(0), ..Default::default() };
/// assert_eq!(plan.fail_write_after, None);
/// ```
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Fail the barrier (msync or fdatasync) after this many more succeed.
    pub fail_barrier_after: Option<u64>,
    /// Fail the write (pwrite) after this many more succeed.
    pub fail_write_after: Option<u64>,
}

#[cfg(feature = "fault-injection")]
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

#[derive(Debug)]
pub(crate) struct FileStorage {
    file: Arc<File>,
    window: Option<SyncWindow>,
    pub(crate) counters: IoCounters,
    #[cfg(feature = "fault-injection")]
    pub(crate) faults: FaultPlan,
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
            #[cfg(feature = "fault-injection")]
            faults: FaultPlan::default(),
        })
    }

    fn fdatasync(&mut self) -> io::Result<()> {
        self.counters.full_barriers += 1;
        self.file.sync_data()
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
        #[cfg(feature = "fault-injection")]
        trip(&mut self.faults.fail_write_after)?;
        self.counters.writes += 1;
        self.counters.bytes_written += bytes.len() as u64;
        // write_all_at retries short writes and EINTR; any other error comes back.
        self.file.write_all_at(bytes, offset)
    }

    fn barrier(&mut self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        trip(&mut self.faults.fail_barrier_after)?;
        match &self.window {
            Some(w) if offset.checked_add(len).is_some_and(|end| end <= w.len()) => {
                self.counters.range_barriers += 1;
                w.sync(offset, len)
            }
            _ => self.fdatasync(),
        }
    }

    fn barrier_all(&mut self) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        trip(&mut self.faults.fail_barrier_after)?;
        self.fdatasync()
    }

    fn grow(&mut self, new_len: u64) -> io::Result<()> {
        let len = self.len()?;
        if new_len <= len {
            return Ok(());
        }
        sys::fallocate(&*self.file, len, new_len - len)
    }
}
