//! The production implementation of the storage choke point: the file itself.
//!
//! Owns: every write to the file (a store into the shared window over the superblocks and the
//! log, `pwrite` elsewhere), every barrier (`msync` of a range of the log, `fdatasync` for
//! everything else) and every change of the file's length (`posix_fallocate`). May not: know
//! frames, allocators or transactions. All of txheap's mutations of the file pass through
//! [`Storage`]'s methods here; the heap's mapping is read-only or private, and the window is
//! private to this module, so a store that bypassed it could not reach the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use txheap_recovery::Storage;

use crate::sys::{self, SyncWindow};

mod hooks;
pub(crate) use hooks::Hooks;
use hooks::Synced;
#[cfg(feature = "test-hooks")]
pub use hooks::{FaultPlan, Trace, TraceEvent};

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
/// assert_eq!(after.shared_barriers, before.shared_barriers); // a lone thread: its own barrier
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    /// `pwrite` calls (writes to the log and superblocks are stores into a shared mapping of
    /// them, not counted here).
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Range barriers (`msync` of part of the log).
    pub range_barriers: u64,
    /// Of `range_barriers`, those group commit's flusher ran for the frames of several
    /// threads at once (under `Durability::Full`, when threads commit at the same time).
    pub shared_barriers: u64,
    /// Whole-file barriers (`fdatasync`).
    pub full_barriers: u64,
}

#[derive(Debug)]
pub(crate) struct FileStorage {
    file: Arc<File>,
    window: Option<Arc<SyncWindow>>,
    pub(crate) counters: IoCounters,
    /// Injected faults and recording (feature `test-hooks`; zero-sized otherwise).
    pub(crate) hooks: Hooks,
    /// The file's length before the first growth since [`Self::take_grown_from`] was last
    /// called: what an aborted transaction's growth is cut back to.
    grown_from: Option<u64>,
}

impl FileStorage {
    /// `window_len`: bytes at the start of the file (superblocks + log) that range barriers may
    /// cover; 0 for none (every barrier becomes `fdatasync`). `store`: writes inside the window
    /// are stores into it instead of `pwrite`s (used under `Durability::None`, where the
    /// `pwrite` was half of a commit; under `Full` each commit's `msync` cleans the page, and
    /// the next store's write fault made commits about 10% slower than a `pwrite`).
    pub(crate) fn new(file: Arc<File>, window_len: u64, store: bool) -> io::Result<FileStorage> {
        let window = if window_len > 0 {
            Some(Arc::new(SyncWindow::new(&file, window_len, store)?))
        } else {
            None
        };
        Ok(FileStorage {
            file,
            window,
            counters: IoCounters::default(),
            hooks: Hooks::new(),
            grown_from: None,
        })
    }

    /// The file's length before the growths since the last call, if any grew it.
    pub(crate) fn take_grown_from(&mut self) -> Option<u64> {
        self.grown_from.take()
    }

    /// Give `[offset, offset+len)` back to the filesystem (it reads as zeros afterwards; see
    /// `sys::punch_hole`). Compaction only: the range is free space no frame or reader needs.
    /// Returns the bytes whose blocks were given back (0 where the filesystem only took zeros).
    pub(crate) fn punch(&mut self, offset: u64, len: u64) -> io::Result<u64> {
        self.punch_or(offset, len, true)
    }

    /// Give the blocks of `[offset, offset+len)` back where the filesystem can punch holes,
    /// and do nothing where it cannot (unlike [`Self::punch`], no zeros are written: the range
    /// holds nothing anyone reads, only the space is at stake). Returns the bytes given back.
    pub(crate) fn release(&mut self, offset: u64, len: u64) -> io::Result<u64> {
        self.punch_or(offset, len, false)
    }

    /// A hole at `[offset, offset+len)`; where the filesystem cannot punch, zeros written if
    /// `zeros`, else nothing. Returns the bytes whose blocks were given back.
    fn punch_or(&mut self, offset: u64, len: u64, zeros: bool) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let (file, counters) = (&self.file, &mut self.counters);
        let mut freed = 0;
        self.hooks.punch(offset, len, || {
            counters.writes += 1;
            // What the file's blocks say, not the range's length: a range that was a hole
            // already gives nothing back (a review found a second compaction reporting the
            // first one's bytes again).
            let before = file.metadata()?.blocks();
            let punched = if zeros {
                sys::punch_hole(file, offset, len)?
            } else {
                crate::platform::punch_hole(file, offset, len)?
            };
            if punched {
                freed = before.saturating_sub(file.metadata()?.blocks()) * 512;
            }
            Ok(())
        })?;
        Ok(freed)
    }

    /// Disk blocks for `[offset, offset+len)`, inside the file, where it may be a hole (free
    /// space about to be used: `TxMem::claim`). Changes no byte anyone reads, so no hook
    /// records it.
    pub(crate) fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::platform::preallocate(&self.file, offset, len)
    }

    /// Cut the file to `len` bytes (compaction only: past `len` lies only free space, and the
    /// superblock's `file_len` already says `len`).
    pub(crate) fn shrink(&mut self, len: u64) -> io::Result<()> {
        let file = &self.file;
        self.hooks.shrink(len, || file.set_len(len))
    }

    /// A handle that makes ranges of the log durable from any thread, without the writer lock
    /// (group commit's shared barrier), with the same hooks; `None` without a window.
    pub(crate) fn log_syncer(&self) -> Option<LogSyncer> {
        Some(LogSyncer {
            window: self.window.clone()?,
            hooks: self.hooks.clone(),
        })
    }
}

/// Range barriers of the log window, for a thread that does not hold the writer lock (group
/// commit's flusher thread). It only makes durable what the writer already stored: it never
/// writes the file.
#[derive(Debug, Clone)]
pub(crate) struct LogSyncer {
    window: Arc<SyncWindow>,
    hooks: Hooks,
}

impl LogSyncer {
    /// `msync` the pages covering `[offset, offset+len)` of the log window.
    pub(crate) fn barrier(&self, offset: u64, len: u64) -> io::Result<()> {
        let w = &self.window;
        self.hooks.barrier(|| {
            w.sync(offset, len)?;
            Ok(Synced::Range(offset, len))
        })
    }
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn view(&self, offset: u64, len: u64) -> io::Result<Option<Box<dyn AsRef<[u8]>>>> {
        Ok(Some(Box::new(sys::ReadView::new(&self.file, offset, len)?)))
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let (file, window, counters) = (&self.file, &self.window, &mut self.counters);
        self.hooks.write(offset, bytes, |b| {
            counters.bytes_written += b.len() as u64;
            // Log frames and superblocks: a store into the shared window, no system call.
            if window.as_ref().is_some_and(|w| w.write(offset, b)) {
                return Ok(());
            }
            counters.writes += 1;
            // write_all_at retries short writes and EINTR; any other error comes back.
            file.write_all_at(b, offset)
        })
    }

    fn barrier(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let (file, window, counters) = (&self.file, &self.window, &mut self.counters);
        self.hooks.barrier(|| match window {
            Some(w) if offset.checked_add(len).is_some_and(|end| end <= w.len()) => {
                counters.range_barriers += 1;
                w.sync(offset, len)?;
                Ok(Synced::Range(offset, len))
            }
            _ => {
                counters.full_barriers += 1;
                if let Some(w) = window {
                    w.written_back();
                }
                file.sync_data()?;
                Ok(Synced::All)
            }
        })
    }

    fn barrier_all(&mut self) -> io::Result<()> {
        let (file, window, counters) = (&self.file, &self.window, &mut self.counters);
        self.hooks.barrier(|| {
            counters.full_barriers += 1;
            if let Some(w) = window {
                w.written_back();
            }
            file.sync_data()?;
            Ok(Synced::All)
        })
    }

    fn grow(&mut self, new_len: u64) -> io::Result<()> {
        let len = self.len()?;
        let file = &self.file;
        if new_len > len {
            self.grown_from.get_or_insert(len);
        }
        self.hooks.grow(new_len, || {
            if new_len <= len {
                return Ok(false);
            }
            if let Err(e) = crate::platform::preallocate(file, len, new_len - len) {
                // A failed posix_fallocate may keep the blocks it got and the length over
                // them (ext4 on a full disk): cut back, so that the failed growth leaves the
                // file as it was (a review found the tail kept, recorded by the next
                // checkpoint, and a reopen on the same disk refused for the log's blocks).
                // Nothing refers to the new length: the growing transaction fails.
                if file.metadata().is_ok_and(|m| m.len() > len) {
                    let _ = file.set_len(len);
                }
                return Err(e);
            }
            Ok(true)
        })
    }
}
