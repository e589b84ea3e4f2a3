//! Group commit under `Durability::Full`: commits that queue behind a barrier in flight share
//! the next one.
//!
//! Owns: [`Group`], the state of the frames that are in the log but not yet durable (their
//! log range, their txids, the frames readers may not see yet), the flusher thread that runs
//! the shared barriers, and the count of threads in transactions that tells the writer whether
//! to share. May not: write the file (the writer appends frames; the flusher only barriers what
//! is already there, through [`LogSyncer`]), or know transactions.
//!
//! The protocol (docs/ARCHITECTURE.md section 12): under the writer lock, a commit that shares
//! appends its frame without a barrier, copies it into the writer's private mapping (the next
//! transaction reads it there; the file gets it only once it is durable), and hands it here. It
//! then releases the writer lock and waits in [`Group::wait`] until a barrier covering its
//! frame has completed. The flusher, a thread started by the first commit that shares, takes
//! every frame appended so far and runs one `msync` for all of them, outside the writer lock,
//! while other threads run their transactions and append more; as soon as it returns it starts
//! the next one if frames arrived meanwhile (no waiting thread has to wake up and take over,
//! which on a small machine cost as much as the barrier). When a barrier returns, its frames
//! become visible to readers (in txid order, so readers never see a transaction that a power
//! cut could take back) and their threads are acknowledged. A failed barrier fails every waiter
//! and poisons the handle; none of them is acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::alloc::HeapHeader;
use crate::error::{Error, Result};
use crate::shared::{Poison, Shared};
use crate::snapshot::{Frame, Registry};
use crate::storage::LogSyncer;
use txheap_recovery::{failpoint, phase};

/// The shared barrier of one heap handle.
#[derive(Debug)]
pub(crate) struct Group {
    inner: Arc<Inner>,
    /// Threads in a transaction that have not appended their frame yet (queued for the
    /// writer lock, or running their body): while others are, a commit shares (its barrier
    /// would otherwise hold them all up).
    active: AtomicUsize,
    /// `None` when the log has no window to barrier from another thread: never share.
    syncer: Option<LogSyncer>,
    /// The flusher thread, once started; `Err` if it could not be started (never tried again:
    /// commits then barrier their own frames).
    flusher: Mutex<std::result::Result<Option<JoinHandle<()>>, ()>>,
}

/// What the flusher shares with the handle.
#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Signalled when frames become durable or a barrier fails (waiting committers).
    changed: Condvar,
    /// Signalled when frames are appended or the handle closes (the flusher).
    work: Condvar,
    /// Where durable frames are shown to readers.
    registry: Arc<Registry>,
    /// The handle's poison cell: a failed barrier poisons the handle at once (before any
    /// waiter wakes), so that no commit starts on top of it.
    poison: Arc<Poison>,
}

#[derive(Debug, Default)]
struct State {
    /// The highest txid a shared commit appended.
    written: u64,
    /// The log bytes appended by shared commits since the last barrier took them: absolute
    /// (start, end).
    range: Option<(u64, u64)>,
    /// Every txid up to this one is durable and shown to readers.
    durable: u64,
    /// A barrier is in flight.
    flushing: bool,
    /// The flusher sleeps, waiting for work.
    idle: bool,
    /// The handle is closing: the flusher ends.
    stop: bool,
    /// The first failed barrier: every later wait fails, and the flusher stops barriering.
    failed: Option<String>,
    /// Appended frames that are not durable yet, oldest first: (txid, log offset, header after
    /// it, its pieces for readers).
    waiting: VecDeque<(u64, u64, HeapHeader, Frame)>,
    /// Shared barriers completed.
    barriers: u64,
}

/// Counts a thread as active (see `Group::active`) while it lives.
pub(crate) struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every frame up to `txid` is durable: show them to readers, in order.
    fn show(&self, g: &mut State, txid: u64) {
        while g.waiting.front().is_some_and(|&(t, ..)| t <= txid) {
            let (t, _, header, frame) = g.waiting.pop_front().expect("checked");
            self.registry.commit(t, header, frame);
        }
        g.durable = g.durable.max(txid);
        if g.waiting.is_empty() {
            g.range = None;
        }
    }

    /// The flusher's loop: barrier whatever was appended, as long as there is some, until the
    /// handle closes or a barrier fails.
    ///
    /// It starts a barrier as soon as frames are there, without waiting for threads still in
    /// their transactions to add theirs: on the benches' machine (W6), waiting up to 50, 100
    /// or 200 µs for them cut barriers per commit from 0.25 to 0.21 at 8 threads but made each
    /// barrier's round longer by more, and commits per second fell by 5 to 30%.
    fn flush_loop(&self, syncer: &LogSyncer) {
        // Should the flusher panic (it is not meant to), its waiters must not wait forever
        // for a barrier that will never come: fail them, as a failed barrier would.
        struct FailOnUnwind<'a>(&'a Inner);
        impl Drop for FailOnUnwind<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.failed("the group-commit flusher panicked");
                }
            }
        }
        let _unwind = FailOnUnwind(self);
        let mut g = self.lock();
        loop {
            if g.stop {
                return;
            }
            match g.range.take() {
                Some((a, b)) if g.failed.is_none() => {
                    g.flushing = true;
                    let upto = g.written;
                    drop(g);
                    phase!(GROUP_BARRIER);
                    let r = syncer.barrier(a, b - a);
                    failpoint!("group.after_barrier");
                    g = self.lock();
                    g.flushing = false;
                    match r {
                        Ok(()) => {
                            g.barriers += 1;
                            self.show(&mut g, upto);
                        }
                        Err(e) => {
                            let cause = format!(
                                "msync log frames (group commit) at offset {a} failed: {e}"
                            );
                            self.poison.set(&cause);
                            g.failed.get_or_insert(cause);
                        }
                    }
                    self.changed.notify_all();
                }
                _ => {
                    g.idle = true;
                    g = self.work.wait(g).unwrap_or_else(|e| e.into_inner());
                    g.idle = false;
                }
            }
        }
    }
}

impl Inner {
    /// Record a failure (the first one counts), poison the handle, stop barriering, and wake
    /// every waiter.
    fn failed(&self, cause: &str) {
        self.poison.set(cause);
        let mut g = self.lock();
        g.failed.get_or_insert_with(|| cause.to_string());
        g.flushing = false;
        drop(g);
        self.changed.notify_all();
    }
}

impl Group {
    /// `durable`: the highest txid already durable (the open's); `registry`: where frames are
    /// shown once durable; `poison`: the handle's poison cell.
    pub(crate) fn new(
        syncer: Option<LogSyncer>,
        durable: u64,
        registry: Arc<Registry>,
        poison: Arc<Poison>,
    ) -> Group {
        Group {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    written: durable,
                    durable,
                    ..State::default()
                }),
                changed: Condvar::new(),
                work: Condvar::new(),
                registry,
                poison,
            }),
            active: AtomicUsize::new(0),
            syncer,
            flusher: Mutex::new(Ok(None)),
        }
    }

    /// The calling thread begins a transaction (drop the guard once its commit has appended
    /// its frame, or it gave up).
    pub(crate) fn enter(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(&self.active)
    }

    /// Whether the commit now holding the writer lock (itself active) should share a barrier:
    /// other threads are in transactions, or frames are already waiting for one (a barrier of
    /// its own would then make readers see it before the frames it follows). Starts the
    /// flusher the first time; never shares without one (no syncer, or no thread to be had).
    pub(crate) fn should_share(&self) -> bool {
        let Some(syncer) = &self.syncer else {
            return false;
        };
        if self.active.load(Ordering::Acquire) <= 1 && !self.busy() {
            return false;
        }
        let mut f = self.flusher.lock().unwrap_or_else(|e| e.into_inner());
        match &*f {
            Ok(Some(_)) => true,
            Err(()) => false, // each commit barriers its own frame, as before
            Ok(None) => {
                let (inner, syncer) = (self.inner.clone(), syncer.clone());
                let spawned = std::thread::Builder::new()
                    .name("txheap-flusher".into())
                    .spawn(move || inner.flush_loop(&syncer));
                *f = spawned.map(Some).map_err(|_| ());
                f.is_ok()
            }
        }
    }

    /// Whether frames are appended but not durable yet (a barrier that is still in flight
    /// over frames already shown does not count).
    pub(crate) fn busy(&self) -> bool {
        !self.inner.lock().waiting.is_empty()
    }

    /// The highest txid that is durable and shown to readers.
    pub(crate) fn durable(&self) -> u64 {
        self.inner.lock().durable
    }

    /// Shared barriers completed so far.
    pub(crate) fn barriers(&self) -> u64 {
        self.inner.lock().barriers
    }

    /// The highest txid appended so far whose barrier is still to come, if any: a transaction
    /// that read the state it left (even one that wrote nothing) is acknowledged only once it
    /// is durable.
    pub(crate) fn pending(&self) -> Option<u64> {
        let g = self.inner.lock();
        g.waiting.back().map(|&(t, ..)| t)
    }

    /// (Writer lock held.) A shared commit appended `txid`'s frame at log bytes `[at, end)`;
    /// readers get `frame` once it is durable.
    pub(crate) fn appended(
        &self,
        txid: u64,
        (at, end): (u64, u64),
        header: HeapHeader,
        frame: Frame,
    ) {
        let mut g = self.inner.lock();
        g.written = txid;
        g.range = Some(match g.range {
            Some((a, _)) => (a, end),
            None => (at, end),
        });
        g.waiting.push_back((txid, at, header, frame));
        if g.idle {
            self.inner.work.notify_one();
        }
    }

    /// (Writer lock held.) The log bytes whose frames are not durable yet, from the oldest
    /// such frame (absolute start), if any: the writer barriers them itself, with the log
    /// tail, before a checkpoint, an in-place write or a flush, then calls
    /// [`Group::made_durable`]. It first waits for the flusher's barrier in flight to end (two
    /// `msync`s of the same pages at once could see a write-back error reported to one only),
    /// then takes the range, so that the flusher cannot start another. `Err` if a shared
    /// barrier failed: the frames' fate is unknown, and nothing may build on them.
    pub(crate) fn take_undurable(&self) -> Result<Option<u64>> {
        let mut g = self.inner.lock();
        while g.flushing {
            g = self
                .inner
                .changed
                .wait(g)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(cause) = &g.failed {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        g.range = None;
        Ok(g.waiting.front().map(|&(_, at, ..)| at))
    }

    /// Every frame up to `txid` is durable: show them to readers (in order) and wake their
    /// threads.
    pub(crate) fn made_durable(&self, txid: u64) {
        let mut g = self.inner.lock();
        if g.failed.is_some() {
            return; // (cannot happen: `take_undurable` refused, and no barrier ran since)
        }
        self.inner.show(&mut g, txid);
        drop(g);
        self.inner.changed.notify_all();
    }

    /// (Writer lock held.) The writer's own barrier failed: fail every waiter.
    pub(crate) fn fail(&self, cause: &str) {
        self.inner.failed(cause);
    }

    /// (Writer lock released.) Wait until transaction `txid` is durable. `Err`: a barrier
    /// failed (the handle is then poisoned); the transaction is not acknowledged and its fate
    /// is unknown until the file is reopened.
    pub(crate) fn wait(&self, sh: &Shared, txid: u64) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        if txheap_recovery::sabotage::active(txheap_recovery::sabotage::ACK_BEFORE_GROUP_BARRIER) {
            return Ok(()); // broken on purpose (crash tests only): acknowledged, not durable
        }
        let mut g = self.inner.lock();
        loop {
            if let Some(cause) = &g.failed {
                sh.poison(cause);
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if g.durable >= txid {
                return Ok(());
            }
            // The flusher (or the writer's own flush) will make it durable; the timeout only
            // guards against a writer that failed in a way that skipped `fail`.
            g = self
                .inner
                .changed
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if g.failed.is_none() && g.durable < txid && !g.flushing && sh.is_poisoned() {
                drop(g);
                return sh.check_poison();
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let handle = self
            .flusher
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .ok()
            .and_then(Option::take);
        if let Some(h) = handle {
            self.inner.lock().stop = true;
            self.inner.work.notify_all();
            // The flusher never panics on purpose; if it did, the handle is being dropped
            // anyway.
            let _ = h.join();
        }
    }
}
