//! The heap: the public facade over an open heap file.
//!
//! Owns: `Heap` and its entry points (create and open, `transaction`, `read`, `flush`,
//! `checkpoint`, `close`, `stats`), the writer mutex (held for a whole transaction) and the
//! same-thread re-entrancy guard. Everything else is delegated: opening to `open.rs`, the
//! transaction's body to `tx.rs`, the commit protocol to `writer.rs`, readers to `reader.rs`.
//! May not: sequence I/O or decode the file itself.
//!
//! Locks: `writer` (a mutex) is held for a whole transaction. A `read` closure holds no lock: it
//! pins a snapshot of the committed state (`snapshot.rs`; docs/ARCHITECTURE.md section 11), and
//! the writer never changes the file's bytes under a pinned reader. Readers therefore run beside
//! a transaction, never wait for one, and see committed state only.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::backup::BackupReport;
use crate::error::{Error, Result};
use crate::open::{self, Opened};
use crate::options::CompactReport;
use crate::options::{Access, Durability, Options, Stats};
use crate::reader::{thread_token, Reader, ReadingMark};
use crate::shared::Shared;
use crate::tx::Tx;
use crate::writer::Writer;
use txheap_recovery::phase;

/// A persistent heap in one file. Every change happens in [`Heap::transaction`]; readers use
/// [`Heap::read`]. `Heap` is `Send + Sync`: share it with `Arc` between threads.
///
/// ```
/// use txheap::{Heap, Options, PPtr};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("doc.heap");
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
/// #[repr(C)]
/// struct Root { count: u64, last: PPtr<u64> }
///
/// let heap = Heap::open_or_create(&path, Options::new())?;
/// heap.transaction(|tx| {
///     let root = tx.root::<Root>()?;
///     let v = tx.alloc(42u64)?;
///     let r = tx.get_mut(root)?;
///     r.count += 1;
///     r.last = v;
///     Ok(())
/// })?;
/// let n = heap.read(|r| {
///     let root = r.root::<Root>()?;
///     let last = r.get(root)?.last;
///     Ok(*r.get(last)?)
/// })?;
/// assert_eq!(n, 42);
/// # Ok::<(), txheap::Error>(())
/// ```
pub struct Heap {
    shared: Shared,
    writer: Mutex<Writer>,
    /// The thread running a transaction on this heap (a token; 0: none).
    writer_thread: AtomicUsize,
    closed: AtomicBool,
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("path", &self.shared.path)
            .field("read_only", &self.shared.read_only)
            .field("durability", &self.shared.durability)
            .finish_non_exhaustive()
    }
}

impl Heap {
    /// Create a new heap file; fails with [`Error::AlreadyExists`] if `path` exists. The file is
    /// built under a temporary name and linked into place only when complete, durable and
    /// mapped, so neither a crash nor a failure during create (for example
    /// [`Error::AddressSpace`] for a `max_size` the process cannot reserve) leaves a file at
    /// `path`. (A crash can leave the hidden temporary file, `.NAME.txheap-new-PID-N`, beside
    /// it: never read, safe to remove.)
    ///
    /// While the returned handle is open, nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let p = dir.path().join("new.heap");
    /// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
    /// assert!(matches!(txheap::Heap::create(&p, txheap::Options::new()), Err(txheap::Error::AlreadyExists { .. })));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn create(path: impl AsRef<Path>, options: Options) -> Result<Heap> {
        Ok(Heap::from(open::create(path.as_ref(), &options)?))
    }

    /// Open an existing heap for writing, running recovery: committed frames are replayed, a
    /// torn tail is discarded, and the result is durable before this returns. A file that is not
    /// a txheap file, or whose superblocks, log or heap metadata are damaged, gives an error and
    /// is not modified: the heap header and the chunk tables are checked as replay
    /// will leave them before replay writes (only an I/O error or a full disk while replaying
    /// or growing can fail the open after that, and then the file holds the committed state).
    ///
    /// While the returned handle is open, nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`]. The other way round, a writable open is refused with `Locked`
    /// while any other handle holds the file, a read-only one included (another process's
    /// [`Heap::open_read_only`] of a closed heap, or a `txheap` command reading it): at once,
    /// or after waiting up to [`Options::lock_wait`] for the holders to close. Read-only
    /// handles that opened beside an earlier writer (Linux) do not hold the file, but their
    /// reads keep recovery out: the open waits for reads in progress to end, up to
    /// `lock_wait` and at least a second, then gives up with `Locked` (a reader paused in a
    /// read holds it that long). A child process forked while a handle was open shares its
    /// open file description, and so its lock, until the child execs or exits: a program that
    /// spawns processes while it closes and reopens a heap gives `lock_wait` a little time.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("o.heap");
    /// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
    /// let heap = txheap::Heap::open(&p, txheap::Options::new())?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Heap> {
        Ok(Heap::from(open::open(path.as_ref(), &options)?))
    }

    /// Open `path` if it exists, else create it.
    ///
    /// While the returned handle is open (as for [`Heap::open`]), nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("oc.heap");
    /// let heap = txheap::Heap::open_or_create(&p, txheap::Options::new())?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn open_or_create(path: impl AsRef<Path>, options: Options) -> Result<Heap> {
        let path = path.as_ref();
        // Open first: an existing heap is opened under `open`'s rules for the options, not
        // refused by `create`'s (a review found a `max_size` that `open` accepts refused as
        // too small for a new heap's default log). A file made meanwhile by another process
        // is opened after all.
        match Self::open(path, options.clone()) {
            Err(Error::NotFound { .. }) => match Self::create(path, options.clone()) {
                Err(Error::AlreadyExists { .. }) => Self::open(path, options),
                other => other,
            },
            other => other,
        }
    }

    /// Open an existing heap read-only. The file is never written.
    ///
    /// If no writer holds the file, the handle shares it with other read-only handles (a
    /// writer's open is then refused with [`Error::Locked`]); if the log holds committed
    /// frames, they are replayed into this handle's private view only.
    ///
    /// If a writer holds the file (another process, or another handle in this one), the
    /// handle opens *beside* it (Linux; elsewhere [`Error::Locked`]): each [`Heap::read`]
    /// sees the newest state the writer committed, the writer never changes what a read holds,
    /// and the writer may close and another open meanwhile (docs/ARCHITECTURE.md section 17).
    /// Commits do not wait for such a read, except where the writer must bring the file up to
    /// date under it: a checkpoint (a full log, [`Heap::checkpoint`], [`Heap::close`]), a
    /// commit that writes large objects in place, [`Heap::compact`], [`Heap::set_max_size`],
    /// and a later writer's open (which waits at least a second, then is `Locked`). Its
    /// [`Heap::stats`] are those of [`crate::inspect::stats`], read live. A writer that holds
    /// the file but never says it answers such readers (an older txheap) makes this open
    /// `Locked` after a second (a writer that is opening says so within that).
    ///
    /// While the returned handle is open, nothing but a txheap writer may write, truncate or
    /// replace the file (see the crate documentation: "The one condition").
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("ro.heap");
    /// txheap::Heap::create(&p, txheap::Options::new())?.close()?;
    /// let a = txheap::Heap::open_read_only(&p)?;
    /// let b = txheap::Heap::open_read_only(&p)?;
    /// assert!(matches!(a.transaction(|_| Ok(())), Err(txheap::Error::ReadOnly)));
    /// drop((a, b));
    ///
    /// // Beside a writer (Linux): every read sees its newest commit.
    /// # #[cfg(target_os = "linux")] {
    /// let w = txheap::Heap::open(&p, txheap::Options::new())?;
    /// let r = txheap::Heap::open_read_only(&p)?;
    /// w.transaction(|tx| {
    ///     let root = tx.root::<u64>()?;
    ///     tx.set(root, 42)
    /// })?;
    /// assert_eq!(r.read(|rd| rd.get(rd.root::<u64>()?).copied())?, 42);
    /// # }
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Heap> {
        Ok(Heap::from(open::open_read_only(path.as_ref())?))
    }

    /// Open read-only to copy data out of a heap whose log is damaged, when a writable
    /// [`Options::salvage`] open is refused. Like [`Heap::open_read_only`], it writes nothing;
    /// unlike it, it replays the committed frames before a damaged one (as a salvage would) and
    /// drops the rest ([`crate::Stats::salvaged`] names them), and it opens even when the chunk
    /// tables, as those frames leave them, fail their walk (a salvage can leave them so:
    /// docs/ARCHITECTURE.md section 9): reads need only the heap header. The heap pages may hold
    /// some of the dropped transactions' bytes, so what it shows is a knowing loss, not a clean
    /// prefix; when the tables failed, the allocator knows no chunk (`stats` reports no heap
    /// bytes, `check` reports the tables). On a heap with no damage it is `open_read_only`.
    ///
    /// While the returned handle is open, nothing else may write, truncate or replace the file
    /// (see the crate documentation: "The one condition"); other txheap handles are refused
    /// with [`Error::Locked`], as for `open_read_only`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("s.heap");
    /// txheap::Heap::create(&p, txheap::Options::new())?.transaction(|tx| {
    ///     let r = tx.root::<u64>()?;
    ///     tx.set(r, 7)
    /// })?;
    /// let h = txheap::Heap::salvage_read_only(&p)?;
    /// assert_eq!(h.read(|r| r.get(r.root::<u64>()?).copied())?, 7);
    /// assert_eq!(h.stats()?.salvaged, None); // nothing was damaged
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn salvage_read_only(path: impl AsRef<Path>) -> Result<Heap> {
        Ok(Heap::from(open::salvage_read_only(path.as_ref())?))
    }

    /// Run `f` as one transaction: if it returns `Ok`, its writes commit atomically (durably under
    /// `Durability::Full`) before this returns; if it returns `Err` or panics, nothing changes.
    ///
    /// If committing itself fails (`Error::Io` from writing the log frame, its barrier or the
    /// apply; the handle is then poisoned and every later call gets `Error::Poisoned`), the
    /// transaction was not acknowledged but its outcome is unknown: the frame may have reached
    /// the disk, and then the next open replays it. Reopen the file and look, as after a crash;
    /// the file always holds a prefix of the commits, never a torn one.
    ///
    /// Under `Durability::Full`, threads that commit at the same time share barriers (group
    /// commit, docs/ARCHITECTURE.md section 12): the closure still runs alone, but the wait for
    /// the disk happens after the writer lock is released. If a shared barrier fails, every
    /// transaction waiting on it gets `Error::Poisoned` (naming the failure) and none of them
    /// is acknowledged.
    ///
    /// `f` holds the heap's writer lock: on this thread, calling `transaction`, `flush`,
    /// `checkpoint`, `stats`, `close` or `read` on the same heap inside `f` is an error, but if
    /// `f` waits for *another* thread (a join, a channel) that makes one of those calls on this
    /// heap, the two wait for each other forever (docs/ARCHITECTURE.md section 6).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("t.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc(7u32))?;
    /// let r: txheap::Result<()> = heap.transaction(|tx| {
    ///     *tx.get_mut(p)? = 8;
    ///     Err(txheap::Error::NoRoot) // abort: the 8 is never seen
    /// });
    /// assert!(r.is_err());
    /// assert_eq!(heap.read(|r| r.get(p).copied())?, 7);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn transaction<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<R> {
        self.transaction_with(f)
    }

    /// Like [`Heap::transaction`], with the caller's own error type (which must be able to carry
    /// txheap's errors).
    ///
    /// ```
    /// #[derive(Debug)]
    /// enum AppError { Heap(txheap::Error), Invalid }
    /// impl From<txheap::Error> for AppError { fn from(e: txheap::Error) -> Self { AppError::Heap(e) } }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("tw.heap"), txheap::Options::new()).unwrap();
    /// let r: Result<(), AppError> = heap.transaction_with(|tx| {
    ///     tx.alloc(1u8)?;
    ///     Err(AppError::Invalid)
    /// });
    /// assert!(matches!(r, Err(AppError::Invalid)));
    /// ```
    pub fn transaction_with<R, E: From<Error>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        if self.shared.read_only {
            return Err(Error::ReadOnly.into());
        }
        self.refuse_reentry()?;
        let active = self.shared.group.enter();
        let mut w = self.lock_writer()?;
        self.writer_thread.store(thread_token(), Ordering::Release);
        struct Owner<'a>(&'a AtomicUsize);
        impl Drop for Owner<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
                phase!(IDLE);
            }
        }
        let owner = Owner(&self.writer_thread);
        phase!(TX_BODY);
        let mut tx = Tx::new(&self.shared, &mut w);
        let value = f(&mut tx)?; // on Err or panic, dropping `tx` rolls back
        let wait = tx.commit()?;
        drop(active);
        drop(owner);
        drop(w);
        if let Some(txid) = wait {
            // Group commit (docs/ARCHITECTURE.md section 12): acknowledged once a barrier
            // covering the frame has completed, waited for without the writer lock.
            self.shared.group.wait(&self.shared, txid)?;
        }
        Ok(value)
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.interrupted() {
            self.shared.poison("a commit was interrupted by a panic");
        }
        self.shared.check_poison()?;
        Ok(w)
    }

    /// Run `f` with a reader of the newest committed state. The reader sees that state for as
    /// long as `f` runs; it never waits for a transaction, and no transaction waits for it
    /// (except one whose log is full, or that writes fresh space in place, while the reader
    /// holds on to frames it needs: docs/ARCHITECTURE.md section 11). Called inside a
    /// transaction on the same heap it is [`Error::ReadInTransaction`]: it would not show the
    /// transaction's own writes (use the `Tx` there). Under `Durability::None`, after
    /// thousands of commits that the file does not hold yet, a read that finds no transaction
    /// running first runs [`Heap::flush`] (a barrier of the log written since the last one: 7 ms
    /// for 13.6 MB of log on the benches' disk; a transaction that starts meanwhile waits for
    /// it), so that it and later reads find those commits in the file rather than decode
    /// and compose them from the log; its error, if the barrier fails, is this read's. Not
    /// while a commit's in-place bytes (a large new object, `Options::in_place_min`) await
    /// the check a later frame carries: reads then compose from the log until an explicit
    /// flush, a full log, or the next such commit (docs/ARCHITECTURE.md section 11).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("r.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc([1u8, 2, 3, 4]))?;
    /// assert_eq!(heap.read(|r| Ok(r.get(p)?[2]))?, 3);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn read<R>(&self, f: impl FnOnce(&Reader<'_>) -> Result<R>) -> Result<R> {
        let sh = &self.shared;
        sh.check_poison()?;
        if self.writer_thread.load(Ordering::Acquire) == thread_token() {
            // It would show the committed state, not the transaction's own writes.
            return Err(Error::ReadInTransaction);
        }
        let addr = sh as *const Shared as usize;
        // A read inside a read on this thread sees the same state (the outer one pins it).
        let f = match ReadingMark::nested(addr, sh, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        self.flush_for_readers()?;
        // Beside a writer in another process: bring the registry up to the writer's log, and
        // hold the pinned state's lock until the read ends (docs/ARCHITECTURE.md section 17).
        let (pin, _held) = match &sh.live {
            None => (crate::reader::pin(sh), None),
            Some(live) => {
                let mut entry = live.enter()?;
                let update = entry.refresh()?;
                entry.apply(update, sh, &sh.file)?;
                let pin = crate::reader::pin(sh);
                let txid = pin.txid;
                entry.pin(txid)?;
                (pin, Some(crate::foreign::Held(live, txid)))
            }
        };
        let r = {
            let _mark = ReadingMark::new(addr, &pin);
            f(&Reader::new(sh, &pin))
        };
        drop(pin); // unpins, then wakes a commit waiting for readers
        r
    }

    /// Under `Durability::None`, with many committed frames the file does not hold (a reader
    /// would take each from its overlay): flush first, if the writer lock is free
    /// (docs/ARCHITECTURE.md section 11, step 8). Never waits for it.
    fn flush_for_readers(&self) -> Result<()> {
        let sh = &self.shared;
        if sh.durability != Durability::None || sh.read_only || !sh.reader_flush_due() {
            return Ok(());
        }
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        if w.interrupted() || sh.is_poisoned() {
            return Ok(()); // (the next transaction reports it; the read goes on as before)
        }
        w.flush_for_readers(sh)
    }

    /// Refuse an operation that needs the writer while this thread runs a transaction or a read
    /// on this heap: it would deadlock (inside a read, it could wait for that very read).
    fn refuse_reentry(&self) -> Result<()> {
        if self.writer_thread.load(Ordering::Acquire) == thread_token()
            || ReadingMark::active(&self.shared as *const Shared as usize)
        {
            return Err(Error::NestedTransaction);
        }
        Ok(())
    }

    /// Change how the heap's pages will be read from now on (see [`Access`]): for example
    /// `Access::Sequential` before a pass over large objects in address order, and
    /// `Access::Random` (the default) after it. Advice only: no byte of the heap changes.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let heap = txheap::Heap::create(dir.path().join("adv.heap"), txheap::Options::new())?;
    /// heap.advise(txheap::Access::Sequential)?;
    /// heap.advise(txheap::Access::Random)?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn advise(&self, access: Access) -> Result<()> {
        let from = self.shared.geo.heap_offset;
        for map in [&self.shared.map, self.shared.reader_map()] {
            map.advise(from, u64::MAX, access.madvise())
                .map_err(|e| Error::io("madvise the heap's mapping", from, e))?;
        }
        Ok(())
    }

    /// Make every committed transaction durable: one barrier under `Durability::None` (three
    /// when a transaction since the last flush wrote objects in place: an `fdatasync` for
    /// them and the log, then one for each of the two small voucher frames that record it);
    /// under
    /// `Durability::Full` every acknowledged transaction already is, and this costs a barrier
    /// only while other threads' commits wait for a shared one (it then makes them durable
    /// at once).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let heap = txheap::Heap::create(dir.path().join("f.heap"),
    ///     txheap::Options::new().durability(txheap::Durability::None))?;
    /// heap.transaction(|tx| tx.alloc(1u64))?;
    /// heap.flush()?; // now durable
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        if self.shared.read_only {
            return Ok(());
        }
        self.refuse_reentry()?;
        let mut w = self.lock_writer()?;
        w.flush_acknowledged(&self.shared)
    }

    /// Write every applied change to the heap pages durably and empty the log (also done when the
    /// log fills up and on close).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("c.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.alloc(1u64))?;
    /// heap.checkpoint()?;
    /// assert_eq!(heap.stats()?.log_used, 0);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn checkpoint(&self) -> Result<()> {
        if self.shared.read_only {
            return Ok(());
        }
        self.refuse_reentry()?;
        let mut w = self.lock_writer()?;
        w.checkpoint(&self.shared)
    }

    /// Checkpoint and close, reporting any error (dropping a `Heap` does the same quietly).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let heap = txheap::Heap::create(dir.path().join("cl.heap"), txheap::Options::new())?;
    /// heap.close()?;
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&self) -> Result<()> {
        if self.shared.read_only {
            return Ok(());
        }
        self.refuse_reentry()?;
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut w = self.lock_writer()?;
        w.close(&self.shared)
    }

    /// Space and activity figures.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("st.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 20).map(|_| ()))?;
    /// let s = heap.stats()?;
    /// assert!(s.used_bytes >= 1 << 20);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        self.stats_progress(&mut |_, _| {})
    }

    /// Which allocated blocks the root (of type `R`) reaches, which it leaks and which of its
    /// pointers dangle, in the newest committed state: [`Reader::reachability`] in a
    /// [`Heap::read`], so commits go on meanwhile.
    ///
    /// ```
    /// use txheap::{PHashMap, PPtr, PString, PVec};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("hr.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let root = tx.root::<PHashMap<PString, PVec<u64>>>()?;
    ///     root.insert(tx, "primes", &txheap::bytemuck::Zeroable::zeroed())?;
    ///     let v = root.get_mut(tx, "primes")?.expect("just inserted");
    ///     for p in [2, 3, 5, 7] {
    ///         v.push(tx, p)?;
    ///     }
    ///     tx.alloc(0u64)?; // nothing will point at this one
    ///     Ok(())
    /// })?;
    /// let r = heap.reachability::<PHashMap<PString, PVec<u64>>>()?;
    /// // The bucket, the key's bytes and the vector's buffer; and one leak.
    /// assert_eq!((r.reached_blocks, r.leaked.len()), (3, 1));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn reachability<R: crate::Stored>(&self) -> Result<crate::Reachability> {
        self.read(|r| r.reachability::<R>())
    }

    /// [`Heap::stats`], calling `progress(runs done, runs)` as the walk over run bitmaps goes.
    pub(crate) fn stats_progress(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Stats> {
        self.refuse_reentry()?;
        if self.shared.live.is_some() {
            // Beside a writer: its figures, read live from the file (docs/ARCHITECTURE.md
            // section 15), as `txheap stats` does.
            return crate::inspect::live_stats(&self.shared.path, &self.shared.file);
        }
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.stats(&self.shared, progress)
    }

    /// Copy the newest committed state to a new heap file at `dst`, while other threads go on
    /// committing: the copy is taken from one pinned snapshot (as [`Heap::read`] sees it), so it
    /// equals one committed state, and no commit waits for it (unless the log fills while it
    /// runs: a checkpoint then waits for the copy, as for any long reader; docs/ARCHITECTURE.md
    /// section 13). The copy is built under a hidden temporary name beside `dst` and linked to
    /// `dst` only once complete and durable: a copy cut short (a crash, `kill -9`) leaves no
    /// `dst`; its temporary file (`.NAME.txheap-copy-PID-N`, to be removed by hand) is refused by
    /// every open until it is whole.
    /// `dst` must not exist ([`Error::AlreadyExists`]). The copy has the source's geometry,
    /// an empty log, and every object at its offset.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("src.heap"), txheap::Options::new())?;
    /// let p = heap.transaction(|tx| tx.alloc(42u64))?;
    /// let report = heap.backup_to(dir.path().join("copy.heap"))?;
    /// let copy = txheap::Heap::open_read_only(dir.path().join("copy.heap"))?;
    /// assert_eq!(copy.read(|r| r.get(p).copied())?, 42);
    /// assert_eq!(report.txid, 1);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn backup_to(&self, dst: impl AsRef<Path>) -> Result<BackupReport> {
        let salvaged = self.shared.salvaged.is_some();
        crate::backup::backup(self, &self.shared.geo, dst.as_ref(), false, salvaged)
    }

    /// [`Heap::backup_to`], leaving free space out of the copy: whole free chunks and the unused
    /// pages after each large object become holes (they take no disk blocks), and a free tail
    /// is cut (the copy's chunk count ends at its last used chunk). What the copy holds has
    /// its blocks (pages of zeros too, unwritten), and its log is a hole until a writable open.
    /// Objects keep their offsets, since pointers are offsets.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("src.heap"), txheap::Options::new())?;
    /// let big = heap.transaction(|tx| tx.alloc_slice(&vec![9u8; 8 << 20]))?;
    /// let keep = heap.transaction(|tx| tx.alloc(7u32))?;
    /// heap.transaction(|tx| tx.free_slice(big))?;
    /// let full = heap.backup_to(dir.path().join("full.heap"))?;
    /// let small = heap.compact_to(dir.path().join("small.heap"))?;
    /// use std::os::unix::fs::MetadataExt;
    /// let blocks = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().blocks() * 512;
    /// assert!(blocks("small.heap") + (8 << 20) <= blocks("full.heap")); // the freed 8 MiB has none
    /// assert!(small.file_len < full.file_len); // and the free tail is cut
    /// let copy = txheap::Heap::open_read_only(dir.path().join("small.heap"))?;
    /// assert_eq!(copy.read(|r| r.get(keep).copied())?, 7);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn compact_to(&self, dst: impl AsRef<Path>) -> Result<BackupReport> {
        crate::backup::backup(self, &self.shared.geo, dst.as_ref(), true, false)
    }

    /// Give free space back to the filesystem, in place and crash-safely: whole free chunks
    /// and the unused pages after each large object become holes (`fallocate(PUNCH_HOLE)`;
    /// where the filesystem cannot punch, they are zeroed instead), and a free tail is cut from
    /// the file. Objects stay where they are (pointers are offsets), so space between live
    /// objects inside a run is not returned. Takes the writer for its duration: it checkpoints
    /// first, then waits for readers that began before it (as a checkpoint does), then punches
    /// (docs/ARCHITECTURE.md section 14). A crash at any point leaves the heap as it was or as
    /// compacted, never damaged.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("c.heap"), txheap::Options::new())?;
    /// let keep = heap.transaction(|tx| tx.alloc(5u64))?;
    /// let big = heap.transaction(|tx| tx.alloc_slice(&vec![1u8; 16 << 20]))?;
    /// heap.transaction(|tx| tx.free_slice(big))?;
    /// let r = heap.compact()?;
    /// assert!(r.file_len_after < r.file_len_before); // the freed tail is cut
    /// assert_eq!(heap.read(|r| r.get(keep).copied())?, 5);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn compact(&self) -> Result<CompactReport> {
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        let cut = self.transaction(|tx| tx.release_free_tail())?;
        let mut w = self.lock_writer()?;
        let (punched, before, after) = w.compact(&self.shared)?;
        Ok(CompactReport {
            chunks_cut: cut,
            punched_bytes: punched,
            file_len_before: before,
            file_len_after: after,
        })
    }

    /// Raise the largest size the file may grow to, while the heap stays open (an allocation
    /// that met [`Error::OutOfSpace`] then succeeds), and a checkpoint records the new
    /// `max_size` in the superblock, so later opens keep it. The heap's mappings must span it:
    /// up to [`Options::reserve`] (address space set aside at open) they do; past it they are
    /// extended in place (no reference into the heap moves) where the address space right after
    /// them is free (Linux only; see `src/platform.rs`), which is rare, since the kernel places
    /// mappings next to each other. Otherwise it fails with [`Error::InvalidOptions`] saying so,
    /// and nothing changes: reopen with [`Options::max_size`] instead. `max_size` only rises.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("m.heap");
    /// let small = txheap::Options::new()
    ///     .log_size(1 << 16)
    ///     .initial_size(1 << 20)
    ///     .max_size(4 << 20)
    ///     .reserve(1 << 30); // address space for a max_size of up to 1 GiB
    /// let heap = txheap::Heap::create(&p, small)?;
    /// let big = |h: &txheap::Heap| h.transaction(|tx| tx.alloc_slice_zeroed::<u8>(8 << 20));
    /// assert!(matches!(big(&heap), Err(txheap::Error::OutOfSpace { .. })));
    /// heap.set_max_size(64 << 20)?;
    /// assert!(big(&heap).is_ok());
    /// assert_eq!(heap.stats()?.max_size, 64 << 20);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn set_max_size(&self, max_size: u64) -> Result<()> {
        if self.shared.read_only {
            return Err(Error::ReadOnly);
        }
        self.refuse_reentry()?;
        let mut w = self.lock_writer()?;
        w.raise_max_size(&self.shared, max_size)
    }

    /// The largest the file may grow to now.
    pub(crate) fn max_size(&self) -> u64 {
        self.shared.max_size()
    }

    /// The file this heap lives in.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let p = dir.path().join("p.heap");
    /// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
    /// assert_eq!(heap.path(), p.as_path());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// This handle's durability.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("d.heap"), txheap::Options::new())?;
    /// assert_eq!(heap.durability(), txheap::Durability::Full);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Make the writer's next I/O calls fail with EIO (feature `test-hooks`, for tests).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("fi.heap"), txheap::Options::new())?;
    /// heap.inject_faults(txheap::FaultPlan { fail_barrier_after: Some(0), ..Default::default() });
    /// assert!(heap.transaction(|tx| tx.alloc(1u8)).is_err());
    /// assert!(heap.is_poisoned());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    #[cfg(feature = "test-hooks")]
    pub fn inject_faults(&self, plan: crate::FaultPlan) {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .storage
            .hooks
            .set_faults(plan);
    }

    /// Whether an I/O failure has poisoned this handle (see [`Error::Poisoned`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("po.heap"), txheap::Options::new())?;
    /// assert!(!heap.is_poisoned());
    /// # Ok::<(), txheap::Error>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.shared.is_poisoned()
    }
}

impl From<Opened> for Heap {
    fn from(o: Opened) -> Heap {
        Heap {
            shared: o.shared,
            writer: Mutex::new(o.writer),
            writer_thread: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}
