//! Test hooks of the storage choke point (feature `test-hooks`): injected failures and the
//! recording of every operation for the crash simulator. Without the feature, `Hooks` is a
//! zero-sized type whose methods only run the operation, so production code pays nothing.
//!
//! Owns: `FaultPlan`, `Trace`, `TraceEvent`, and one hook per storage method, each wrapping
//! the real operation. May not: perform I/O of its own except the first half of a short write.

use std::io;
#[cfg(feature = "test-hooks")]
use std::sync::{Arc, Mutex, MutexGuard};

/// What a barrier made durable (the range is read only when recording).
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub(crate) enum Synced {
    /// The pages covering `[offset, offset+len)` (msync of a range).
    Range(u64, u64),
    /// Everything (fdatasync).
    All,
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
    /// Make every barrier take this much longer (a slow disk), to widen the windows between
    /// a frame's write and its durability in concurrency tests.
    pub barrier_delay: Option<std::time::Duration>,
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
    /// The file was cut to `len` bytes (compaction; a barrier follows at once).
    Shrink {
        /// New length.
        len: u64,
    },
    /// A marker the workload adds (for example: transaction `n` was acknowledged).
    Mark(u64),
}

/// A shared, growing record of the file's operations (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub type Trace = Arc<std::sync::Mutex<Vec<TraceEvent>>>;

/// The hooks of one `FileStorage`, shared with its log syncer (clones share one state): a
/// fault plan and an optional trace.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default, Clone)]
pub(crate) struct Hooks(Arc<Mutex<HookState>>);

#[cfg(feature = "test-hooks")]
#[derive(Debug, Default)]
struct HookState {
    faults: FaultPlan,
    trace: Option<Trace>,
}

#[cfg(feature = "test-hooks")]
impl HookState {
    fn record(&self, event: impl FnOnce() -> TraceEvent) {
        if let Some(t) = &self.trace {
            t.lock().unwrap_or_else(|e| e.into_inner()).push(event());
        }
    }
}

#[cfg(feature = "test-hooks")]
impl Hooks {
    pub(crate) fn new() -> Hooks {
        Hooks::default()
    }

    fn state(&self) -> MutexGuard<'_, HookState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the fault plan.
    pub(crate) fn set_faults(&self, plan: FaultPlan) {
        self.state().faults = plan;
    }

    /// Record every operation into `trace` from now on (or stop, with `None`).
    pub(crate) fn set_trace(&self, trace: Option<Trace>) {
        self.state().trace = trace;
    }

    /// A `pwrite` of `bytes` at `offset` done by `op`: may fail (EIO), or be cut short (half the
    /// bytes, then ENOSPC), as the plan says; a write that happened is recorded.
    ///
    /// The state stays locked across the operation: a barrier of the log syncer on another
    /// thread then happens wholly before or after it, so the trace is the order the disk saw.
    pub(crate) fn write(
        &self,
        offset: u64,
        bytes: &[u8],
        op: impl FnOnce(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut st = self.state();
        trip(&mut st.faults.fail_write_after)?;
        let short = trip(&mut st.faults.short_write_after).is_err();
        let part = if short {
            &bytes[..bytes.len() / 2]
        } else {
            bytes
        };
        op(part)?;
        st.record(|| TraceEvent::Write {
            offset,
            bytes: part.to_vec(),
        });
        if short {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// A barrier done by `op`: may fail (EIO) as the plan says; what it made durable is recorded
    /// (a range barrier covers whole pages). While recording, the state stays locked across the
    /// barrier (writes on another thread wait for it: the recorded order is then exact; a
    /// write that overlaps an `msync` in a real run is covered by it or not, and either is an
    /// order the trace can show); otherwise it is not held across the system call.
    pub(crate) fn barrier(&self, op: impl FnOnce() -> io::Result<Synced>) -> io::Result<()> {
        let mut st = self.state();
        trip(&mut st.faults.fail_barrier_after)?;
        if st.trace.is_none() {
            let delay = st.faults.barrier_delay;
            drop(st);
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            return op().map(|_| ());
        }
        let synced = op()?;
        st.record(|| match synced {
            Synced::Range(offset, len) => {
                let page = crate::sys::PAGE as u64;
                let start = offset / page * page;
                TraceEvent::Barrier {
                    offset: start,
                    len: (offset + len).div_ceil(page) * page - start,
                }
            }
            Synced::All => TraceEvent::BarrierAll,
        });
        Ok(())
    }

    /// Growth of the file to `len` done by `op` (which says whether it grew); recorded.
    pub(crate) fn grow(&self, len: u64, op: impl FnOnce() -> io::Result<bool>) -> io::Result<()> {
        let st = self.state();
        if op()? {
            st.record(|| TraceEvent::Grow { len });
        }
        Ok(())
    }

    /// A hole punched at `[offset, offset+len)` by `op`: recorded as a write of zeros, which
    /// the simulator may tear per sector like any write until a barrier (more freedom than a
    /// real punch has, which changes whole blocks).
    pub(crate) fn punch(
        &self,
        offset: u64,
        len: u64,
        op: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let mut st = self.state();
        trip(&mut st.faults.fail_write_after)?;
        op()?;
        st.record(|| TraceEvent::Write {
            offset,
            bytes: vec![0; len as usize],
        });
        Ok(())
    }

    /// The file cut to `len` by `op`; recorded.
    pub(crate) fn shrink(&self, len: u64, op: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let st = self.state();
        op()?;
        st.record(|| TraceEvent::Shrink { len });
        Ok(())
    }
}

/// Without the `test-hooks` feature: no state, and each hook only runs the operation.
#[cfg(not(feature = "test-hooks"))]
#[derive(Debug, Default, Clone)]
pub(crate) struct Hooks;

#[cfg(not(feature = "test-hooks"))]
impl Hooks {
    pub(crate) fn new() -> Hooks {
        Hooks
    }

    #[inline(always)]
    pub(crate) fn write(
        &self,
        _offset: u64,
        bytes: &[u8],
        op: impl FnOnce(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        op(bytes)
    }

    #[inline(always)]
    pub(crate) fn barrier(&self, op: impl FnOnce() -> io::Result<Synced>) -> io::Result<()> {
        op().map(|_| ())
    }

    #[inline(always)]
    pub(crate) fn grow(&self, _len: u64, op: impl FnOnce() -> io::Result<bool>) -> io::Result<()> {
        op().map(|_| ())
    }

    pub(crate) fn punch(
        &self,
        _offset: u64,
        _len: u64,
        op: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        op()
    }

    pub(crate) fn shrink(&self, _len: u64, op: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        op()
    }
}
