//! Group commit under `Durability::Full`: commits that queue behind a barrier in flight share
//! the next one.
//!
//! Owns: [`Group`], the state of the frames that are in the log but not yet durable (their
//! log range, their txids, the frames readers may not see yet), the election of the thread that
//! runs the shared barrier, and the queue count that tells the writer whether to share.
//! May not: write the file (the writer appends frames; the leader only barriers what is already
//! there, through [`LogSyncer`]), or know transactions.
//!
//! The protocol (docs/ARCHITECTURE.md section 12): under the writer lock, a commit that shares
//! appends its frame without a barrier, copies it into the writer's private mapping (the next
//! transaction reads it there; the file gets it only once it is durable), and hands it here. It
//! then releases the writer lock and waits in [`Group::wait`] until a barrier covering its
//! frame has completed: the first waiter that finds no barrier in flight takes every frame
//! appended so far and runs one `msync` for all of them, outside the writer lock, while other
//! threads run their transactions and append more. When the barrier returns, its frames become
//! visible to readers (in txid order, so readers never see a transaction that a power cut could
//! take back) and their threads are acknowledged. A failed barrier fails every waiter and
//! poisons the handle; none of them is acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::alloc::HeapHeader;
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::snapshot::Frame;
use crate::storage::LogSyncer;
use txheap_recovery::phase;

/// The shared barrier of one heap handle.
#[derive(Debug)]
pub(crate) struct Group {
    state: Mutex<State>,
    /// Signalled when frames become durable or a barrier fails.
    changed: Condvar,
    /// Threads that asked for the writer lock and have not got it yet: while any are queued,
    /// a commit shares (its barrier would otherwise hold them all up).
    queued: AtomicUsize,
    /// `None` when the log has no window to barrier from another thread: never share.
    syncer: Option<LogSyncer>,
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
    leading: bool,
    /// The first failed barrier: every later wait fails.
    failed: Option<String>,
    /// Appended frames that are not durable yet, oldest first: (txid, log offset, header after
    /// it, its pieces for readers).
    waiting: VecDeque<(u64, u64, HeapHeader, Frame)>,
    /// Shared barriers completed.
    barriers: u64,
}

/// Counts a thread as queued for the writer lock while it lives.
pub(crate) struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Group {
    /// `durable`: the highest txid already durable (the open's).
    pub(crate) fn new(syncer: Option<LogSyncer>, durable: u64) -> Group {
        Group {
            state: Mutex::new(State {
                written: durable,
                durable,
                ..State::default()
            }),
            changed: Condvar::new(),
            queued: AtomicUsize::new(0),
            syncer,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calling thread is about to ask for the writer lock (drop the guard once it has it).
    pub(crate) fn queue(&self) -> Queued<'_> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        Queued(&self.queued)
    }

    /// Whether the commit now holding the writer lock should share a barrier: other threads
    /// wait for the lock, or frames are already waiting for one (a barrier of its own would
    /// then make readers see it before the frames it follows). Never without a syncer.
    pub(crate) fn should_share(&self) -> bool {
        self.syncer.is_some() && (self.queued.load(Ordering::Acquire) > 0 || self.busy())
    }

    /// Whether frames are appended but not durable yet, or a barrier is in flight.
    pub(crate) fn busy(&self) -> bool {
        let g = self.lock();
        g.leading || !g.waiting.is_empty()
    }

    /// The highest txid that is durable and shown to readers.
    pub(crate) fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// Shared barriers completed so far.
    pub(crate) fn barriers(&self) -> u64 {
        self.lock().barriers
    }

    /// The highest txid appended so far whose barrier is still to come, if any: a transaction
    /// that read the state it left (even one that wrote nothing) is acknowledged only once it
    /// is durable.
    pub(crate) fn pending(&self) -> Option<u64> {
        let g = self.lock();
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
        let mut g = self.lock();
        g.written = txid;
        g.range = Some(match g.range {
            Some((a, _)) => (a, end),
            None => (at, end),
        });
        g.waiting.push_back((txid, at, header, frame));
    }

    /// (Writer lock held.) The log bytes whose frames are not durable yet, from the oldest
    /// such frame (absolute start), if any: the writer barriers them itself, with the log
    /// tail, before a checkpoint, an in-place write or a flush, then calls
    /// [`Group::made_durable`]. Taking them here keeps a waiter from starting a barrier of the
    /// same bytes meanwhile.
    pub(crate) fn take_undurable(&self) -> Option<u64> {
        let mut g = self.lock();
        g.range = None;
        g.waiting.front().map(|&(_, at, ..)| at)
    }

    /// Every frame up to `txid` is durable: show them to readers (in order) and wake their
    /// threads.
    pub(crate) fn made_durable(&self, sh: &Shared, txid: u64) {
        let mut g = self.lock();
        Self::show(&mut g, sh, txid);
        drop(g);
        self.changed.notify_all();
    }

    fn show(g: &mut State, sh: &Shared, txid: u64) {
        while g.waiting.front().is_some_and(|&(t, ..)| t <= txid) {
            let (t, _, header, frame) = g.waiting.pop_front().expect("checked");
            sh.registry.commit(t, header, frame);
        }
        g.durable = g.durable.max(txid);
        if g.waiting.is_empty() {
            g.range = None;
        }
    }

    /// (Writer lock held, or poisoned.) The writer's own barrier failed: fail every waiter.
    pub(crate) fn fail(&self, cause: &str) {
        let mut g = self.lock();
        if g.failed.is_none() {
            g.failed = Some(cause.to_string());
        }
        drop(g);
        self.changed.notify_all();
    }

    /// (Writer lock released.) Wait until transaction `txid` is durable, running the shared
    /// barrier if none is in flight. `Err`: a barrier failed (the handle is poisoned); the
    /// transaction is not acknowledged and its fate is unknown until the file is reopened.
    pub(crate) fn wait(&self, sh: &Shared, txid: u64) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        if txheap_recovery::sabotage::active(txheap_recovery::sabotage::ACK_BEFORE_GROUP_BARRIER) {
            return Ok(()); // broken on purpose (crash tests only): acknowledged, not durable
        }
        let syncer = self.syncer.as_ref().expect("only shared commits wait");
        let mut g = self.lock();
        loop {
            if let Some(cause) = &g.failed {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if g.durable >= txid {
                return Ok(());
            }
            match g.range {
                Some((a, b)) if !g.leading => {
                    // Lead: one barrier for every frame appended so far.
                    g.leading = true;
                    g.range = None;
                    let upto = g.written;
                    drop(g);
                    phase!(GROUP_BARRIER);
                    let r = syncer.barrier(a, b - a);
                    g = self.lock();
                    g.leading = false;
                    match r {
                        Ok(()) => {
                            g.barriers += 1;
                            Self::show(&mut g, sh, upto);
                        }
                        Err(e) => {
                            let e = sh.fail("msync log frames (group commit)", a, e);
                            g.failed = Some(e.to_string());
                            drop(g);
                            self.changed.notify_all();
                            return Err(e);
                        }
                    }
                    self.changed.notify_all();
                }
                _ => {
                    // A barrier covering `txid` is in flight (a waiter's or the writer's own);
                    // the timeout only guards against a writer that died with the lock.
                    g = self
                        .changed
                        .wait_timeout(g, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if g.failed.is_none() && sh.is_poisoned() && !g.leading {
                        return sh.check_poison();
                    }
                }
            }
        }
    }
}
