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
//! frame has completed. The flusher, a thread started by the first commit that shares (no
//! waiting thread has to wake up and take over, which on a small machine cost as much as the
//! barrier), waits briefly for the threads in transactions and the threads it just released
//! to append their next frames, then takes every frame appended so far and runs one `msync`
//! for all of them, outside the writer lock. When a barrier returns, its frames become visible
//! to readers (in txid order, so readers never see a transaction that a power cut could take
//! back) and their threads, each woken alone, are acknowledged. A failed barrier fails every
//! waiter and poisons the handle; none of them is acknowledged.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::alloc::HeapHeader;
use crate::error::{Error, Result};
use crate::limits::GATHER_MAX;
use crate::shared::{Poison, Shared};
use crate::snapshot::{Frame, Registry};
use crate::storage::LogSyncer;
use txheap_recovery::{failpoint, phase};

/// The shared barrier of one heap handle.
#[derive(Debug)]
pub(crate) struct Group {
    inner: Arc<Inner>,
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
    /// Signalled when a barrier ends or fails (a writer waiting to barrier frames itself).
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
    /// Threads in a transaction that have not finished its commit (queued for the writer lock,
    /// running their body, or appending): while others are, a commit shares (its barrier
    /// would otherwise hold them all up), and the flusher waits a little for their frames.
    inside: usize,
    /// Shared commits acknowledged whose threads have not begun another transaction yet: on
    /// a loaded heap they come back within microseconds, and a barrier started without them
    /// would leave them for the next one (see `Inner::gather`). Forgotten when they do not
    /// come back in time.
    outside: usize,
    /// The flusher waits for `inside` and `outside` to reach zero.
    gathering: bool,
    /// Committers waiting for their frame to become durable: (txid, thread), woken one by one
    /// (a wake-up of every waiter at each barrier woke, in steady state, as many threads whose
    /// frames were still to come as threads acknowledged; each wake-up is a context switch,
    /// the largest cost of a shared commit on a small machine).
    sleepers: Vec<(u64, std::thread::Thread)>,
}

/// Counts a thread as in a transaction (see `State::inside`) while it lives; does nothing for
/// a handle that never shares.
pub(crate) struct Active<'a>(Option<&'a Inner>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0 {
            let mut g = inner.lock();
            g.inside -= 1;
            if g.gathering && g.inside == 0 && g.outside == 0 {
                inner.work.notify_one();
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every frame up to `txid` is durable: show them to readers, in order, and take the
    /// threads to wake (after the lock is released: [`wake`]).
    #[must_use]
    fn show(&self, g: &mut State, txid: u64) -> Vec<std::thread::Thread> {
        while g.waiting.front().is_some_and(|&(t, ..)| t <= txid) {
            let (t, _, header, frame) = g.waiting.pop_front().expect("checked");
            self.registry.commit(t, header, frame);
            g.outside += 1; // its thread, acknowledged, may well commit again at once
        }
        g.durable = g.durable.max(txid);
        if g.waiting.is_empty() {
            g.range = None;
        }
        let durable = g.durable;
        let mut woken = Vec::new();
        g.sleepers.retain(|(t, th)| {
            let done = *t <= durable;
            if done {
                woken.push(th.clone());
            }
            !done
        });
        woken
    }

    /// Before a barrier: wait, at most [`GATHER_MAX`], for the threads in transactions and the
    /// threads just acknowledged (`inside`, `outside`) to append their frames, so that one
    /// barrier covers them all. Started at once instead, a barrier covers only the frames
    /// appended while the previous one ran: in steady state half the threads, each waiting
    /// two barriers (W6 measured exactly 0.25 barriers per commit at 8 threads, 1.0 at 2).
    /// Threads that do not come back in time are forgotten.
    fn gather<'a>(&'a self, mut g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let deadline = Instant::now() + GATHER_MAX;
        g.gathering = true;
        while (g.inside > 0 || g.outside > 0) && !g.stop && g.failed.is_none() {
            let now = Instant::now();
            if now >= deadline {
                g.outside = 0;
                break;
            }
            g = self
                .work
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        g.gathering = false;
        g
    }

    /// The flusher's loop: barrier whatever was appended, as long as there is some, until the
    /// handle closes or a barrier fails.
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
            if g.range.is_some() && g.failed.is_none() && (g.inside > 0 || g.outside > 0) {
                g = self.gather(g);
                if g.stop {
                    return;
                }
            }
            // (The writer may have taken the range while the flusher gathered.)
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
                    let woken = match r {
                        Ok(()) => {
                            g.barriers += 1;
                            self.show(&mut g, upto)
                        }
                        Err(e) => {
                            let cause = format!(
                                "msync log frames (group commit) at offset {a} failed: {e}"
                            );
                            self.poison.set(&cause);
                            g.failed.get_or_insert(cause);
                            all_sleepers(&mut g)
                        }
                    };
                    drop(g);
                    wake(woken);
                    self.changed.notify_all();
                    g = self.lock();
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
        let woken = all_sleepers(&mut g);
        drop(g);
        wake(woken);
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
            syncer,
            flusher: Mutex::new(Ok(None)),
        }
    }

    /// The calling thread begins a transaction (drop the guard once its commit has appended
    /// its frame, or it gave up).
    pub(crate) fn enter(&self) -> Active<'_> {
        if self.syncer.is_none() {
            return Active(None);
        }
        let mut g = self.inner.lock();
        g.inside += 1;
        g.outside = g.outside.saturating_sub(1); // (one of them, or a newcomer: the same)
        Active(Some(&self.inner))
    }

    /// Whether the commit now holding the writer lock (itself active) should share a barrier:
    /// other threads are in transactions, or frames are already waiting for one (a barrier of
    /// its own would then make readers see it before the frames it follows). Starts the
    /// flusher the first time; never shares without one (no syncer, or no thread to be had).
    pub(crate) fn should_share(&self) -> bool {
        let Some(syncer) = &self.syncer else {
            return false;
        };
        {
            let g = self.inner.lock();
            if g.inside <= 1 && g.outside == 0 && g.waiting.is_empty() {
                return false;
            }
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
        let woken = self.inner.show(&mut g, txid);
        drop(g);
        wake(woken);
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
        let me = std::thread::current();
        let mut g = self.inner.lock();
        let mut registered = false;
        let r = loop {
            if let Some(cause) = &g.failed {
                sh.poison(cause);
                break Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if g.durable >= txid {
                break Ok(());
            }
            if !registered {
                g.sleepers.push((txid, me.clone()));
                registered = true;
            }
            // The flusher (or the writer's own flush) will make it durable and wake this
            // thread; the timeout only guards against a writer that failed in a way that
            // skipped `fail`. (A wake-up meant for an earlier wait, or a spurious one, only
            // loops.)
            drop(g);
            std::thread::park_timeout(Duration::from_millis(100));
            g = self.inner.lock();
            if g.failed.is_none() && g.durable < txid && !g.flushing {
                if let Err(e) = sh.check_poison() {
                    break Err(e);
                }
            }
        };
        if registered {
            g.sleepers.retain(|(t, _)| *t != txid); // (woken by a timeout or a failure)
        }
        r
    }
}

/// Every waiting committer, taken to be woken (a barrier failed).
fn all_sleepers(g: &mut State) -> Vec<std::thread::Thread> {
    g.sleepers.drain(..).map(|(_, th)| th).collect()
}

/// Wake the committers whose frames a barrier made durable.
fn wake(threads: Vec<std::thread::Thread>) {
    for th in threads {
        th.unpark();
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
