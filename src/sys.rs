//! Operating-system calls that need `unsafe`: the file mapping, `msync`, `madvise`, `flock` and
//! byte-range locks (the calls that differ between platforms are in `platform.rs`).
//!
//! Owns: every raw pointer into mapped memory. Nothing outside this module creates one.
//! May not: decide *when* memory may be read or changed; callers hold the heap's locks
//! (see `Mapping::slice`'s contract).

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The page size txheap's format assumes; checked against the OS at map time.
pub(crate) const PAGE: usize = 4096;

/// Bytes of the log window that [`SyncWindow::write`] maps writable at once, ahead of the tail.
const POPULATE_AHEAD: u64 = 256 << 10;

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// A new mapping of `len` bytes of `fd` from `offset` (page-aligned), with protection `prot`
/// and `flags` (`MAP_SHARED` or `MAP_PRIVATE`, never `MAP_FIXED`), at an address the kernel
/// chooses. The caller owns it (unmaps it exactly once).
fn map_new(
    fd: &impl AsRawFd,
    len: usize,
    prot: i32,
    flags: i32,
    offset: u64,
) -> io::Result<NonNull<u8>> {
    debug_assert_eq!(flags & libc::MAP_FIXED, 0);
    let at =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a new mapping of our own file at an address the kernel chooses (no MAP_FIXED): it
    // replaces nothing and aliases no Rust reference.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), at) };
    if p == libc::MAP_FAILED {
        return Err(last_err());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))
}

/// The process's data size limit (`RLIMIT_DATA`, soft), if it has one: Linux counts every
/// private writable mapping against it in full, the heap's reservation included.
pub(crate) fn data_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits of a valid resource into the struct it is given,
    // which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(r.rlim_cur)
}

/// Clear `O_NONBLOCK` from an open file's status flags (it was opened with it so that the open
/// itself could not block on a FIFO).
pub(crate) fn clear_nonblock(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL reads and sets integer flags of the descriptor; an
    // invalid fd yields EBADF, not UB.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(last_err());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Take a `flock` on the file without blocking. Returns `Ok(false)` when another open file
/// description holds a conflicting lock.
pub(crate) fn try_flock(fd: &impl AsRawFd, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock only reads its integer arguments; an invalid fd yields EBADF, not UB.
    let rc = unsafe { libc::flock(fd.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(true);
    }
    let e = last_err();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A byte-range lock of [`range_lock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeLock {
    /// A read lock: others may hold read locks on the same bytes.
    Shared,
    /// A write lock: nobody else holds any lock on the bytes.
    Exclusive,
    /// Release what this open file description holds on the bytes.
    Unlock,
}

/// The `struct flock` for `[start, start+len)` (`len` 0: to the end of every possible file).
#[cfg(target_os = "linux")]
fn flock_range(kind: RangeLock, start: u64, len: u64) -> io::Result<libc::flock> {
    let start =
        libc::off_t::try_from(start).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `flock` is a plain C struct of integers, for which all zeros is a valid value
    // (`l_pid` must be 0 for the OFD commands).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        RangeLock::Shared => libc::F_RDLCK,
        RangeLock::Exclusive => libc::F_WRLCK,
        RangeLock::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    Ok(fl)
}

/// Take (or release) a byte-range lock on `[start, start+len)` of the file (`len` 0: to the
/// end of every possible file) that belongs to this open file description, as `flock`'s does,
/// not to the process (Linux `F_OFD_SETLK`): two descriptions in one process conflict like two
/// processes, and the kernel drops the locks when the description is closed (a killed process
/// leaves none behind). The bytes need not exist. `wait`: block until the lock is granted;
/// otherwise `Ok(false)` if another description holds a conflicting one. Elsewhere than Linux:
/// `Unsupported`.
pub(crate) fn range_lock(
    file: &std::fs::File,
    kind: RangeLock,
    (start, len): (u64, u64),
    wait: bool,
) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        let fl = flock_range(kind, start, len)?;
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        loop {
            // SAFETY: fcntl reads the `flock` we pass (a valid, initialised struct that lives
            // across the call) and changes no memory of ours for the SET commands.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl as *const libc::flock) };
            if rc == 0 {
                return Ok(true);
            }
            let e = last_err();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(false),
                _ => return Err(e),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, kind, start, len, wait);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// The first lock another open file description holds that a write lock on
/// `[start, start+len)` would conflict with, as `(start, len)` (`len` 0: to the end), or
/// `None` (Linux `F_OFD_GETLK`; elsewhere `Unsupported`).
pub(crate) fn range_lock_conflict(
    file: &std::fs::File,
    range: (u64, u64),
) -> io::Result<Option<(u64, u64)>> {
    lock_conflict(file, RangeLock::Exclusive, range)
}

/// Whether another open file description holds an exclusive lock on a byte of `range` (shared
/// holders are not reported: a shared probe conflicts only with exclusive locks).
pub(crate) fn range_locked_exclusive(file: &std::fs::File, range: (u64, u64)) -> io::Result<bool> {
    Ok(lock_conflict(file, RangeLock::Shared, range)?.is_some())
}

/// The first lock of another description on `range` that a `kind` lock would conflict with.
fn lock_conflict(
    file: &std::fs::File,
    kind: RangeLock,
    (start, len): (u64, u64),
) -> io::Result<Option<(u64, u64)>> {
    #[cfg(target_os = "linux")]
    {
        let mut fl = flock_range(kind, start, len)?;
        // SAFETY: fcntl reads and then overwrites the `flock` we pass, a valid struct that we
        // own exclusively for the call.
        let rc = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_OFD_GETLK,
                &mut fl as *mut libc::flock,
            )
        };
        if rc != 0 {
            return Err(last_err());
        }
        if fl.l_type == libc::F_UNLCK as libc::c_short {
            return Ok(None);
        }
        Ok(Some((fl.l_start.max(0) as u64, fl.l_len.max(0) as u64)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, kind, start, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Give the blocks of `[offset, offset+len)` back to the filesystem; the range then reads as
/// zeros and the file keeps its length (`platform::punch_hole`). Where that cannot be done,
/// zeros are written instead: the bytes read the same, only the blocks stay allocated. Returns
/// whether blocks were given back.
pub(crate) fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> io::Result<bool> {
    if crate::platform::punch_hole(file, offset, len)? {
        return Ok(true);
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + at)?;
        at += n as u64;
    }
    Ok(false)
}

/// One private mapping (MAP_PRIVATE) of the file over `reserved` bytes of address space, made
/// once at open: reads see the file's page cache, and `write_private` puts copy-on-write bytes
/// in front of it that never reach the file.
///
/// The mapping covers the whole reservation from the start, also past the file's current end
/// (pages there are never touched: every access is checked against a chunk count whose heap
/// ends within `mapped_len` (`Geometry::check`; `slice` only asserts it in debug builds), and
/// `mapped_len` rises only after the file has grown and drops only after nothing may reach
/// past the new end: an aborted growth's cut, or compaction's). Growth therefore never calls
/// `mmap`: the base never moves, references stay valid, and no step ever unmaps part of the
/// range, so there is no moment at which another thread's `mmap` could land inside it (the
/// old design re-mapped each grown range with `MAP_FIXED`, whose failure path could clobber a
/// foreign mapping).
/// `MAP_NORESERVE`: the kernel's overcommit check does not charge the reservation up front (a
/// writable private mapping larger than RAM is otherwise refused), only pages actually copied.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    /// Bytes of address space spanned; rises only by [`Mapping::grow_in_place`].
    reserved: AtomicUsize,
    mapped: AtomicUsize,
    /// A `MAP_FIXED` over part of the range failed: that part may be unmapped and then taken by
    /// another thread's `mmap`, so `Drop` must not unmap the range (the address space leaks).
    leak: std::sync::atomic::AtomicBool,
    writable: bool,
}

// SAFETY: the mapping is plain memory shared by all threads of the process. Which thread may read
// or change which bytes, and when, is decided by the heap's locks (see `slice`), not by the thread
// that created the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as above; `reserved`, `mapped` and `leak` are atomic and every other field is
// immutable after construction.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `reserved` bytes of `fd` privately at an address the kernel chooses; the first `len`
    /// bytes (the file's length) are accessible. `writable` allows `write_private` (PROT_WRITE on
    /// the private mapping); otherwise any store into the mapping faults at once.
    pub(crate) fn new(
        fd: &impl AsRawFd,
        reserved: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<Mapping> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page != PAGE as libc::c_long {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("txheap needs a {PAGE}-byte page size, the OS reports {page}"),
            ));
        }
        let reserved =
            usize::try_from(reserved).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if reserved == 0 || reserved % PAGE != 0 || len > reserved as u64 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let base = map_new(
            fd,
            reserved,
            prot,
            libc::MAP_PRIVATE | crate::platform::MAP_NORESERVE,
            0,
        )?;
        let m = Mapping {
            base,
            reserved: AtomicUsize::new(reserved),
            mapped: AtomicUsize::new(0),
            leak: std::sync::atomic::AtomicBool::new(false),
            writable,
        };
        m.extend(len)?;
        Ok(m)
    }

    /// Bytes of the file currently accessible through the mapping.
    pub(crate) fn mapped_len(&self) -> u64 {
        self.mapped.load(Ordering::Acquire) as u64
    }

    /// Bytes of address space the mapping spans.
    pub(crate) fn reserved_len(&self) -> u64 {
        self.reserved() as u64
    }

    fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// Span `new_reserved` bytes of address space instead, without moving: every reference into
    /// the mapping stays valid. Only where the platform can extend a mapping in place and the
    /// address space after it is free (`platform::grow_mapping_in_place`); otherwise an error,
    /// and nothing changed. The caller holds the writer lock, or a read-only handle's entry
    /// lock (one entry at a time per handle): no concurrent grow or extend.
    pub(crate) fn grow_in_place(&self, fd: &impl AsRawFd, new_reserved: u64) -> io::Result<()> {
        let new = usize::try_from(new_reserved)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let old = self.reserved();
        if new <= old {
            return Ok(());
        }
        if new % PAGE != 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let prot = if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: our own mapping of `old` bytes at `base`; a successful call maps more after
        // it and moves nothing, so no reference into it dangles.
        unsafe { crate::platform::grow_mapping_in_place(fd, self.base.as_ptr(), old, new, prot) }?;
        self.reserved.store(new, Ordering::Release);
        Ok(())
    }

    /// Make the mapping accessible up to `new_len` (rounded up to a page). The caller has made
    /// sure the file is at least that long (blocks allocated), and holds the writer lock (or a
    /// read-only handle's entry lock), so
    /// extends do not race. No system call: the range is mapped already.
    pub(crate) fn extend(&self, new_len: u64) -> io::Result<()> {
        let new_len =
            usize::try_from(new_len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let new_len = new_len.div_ceil(PAGE) * PAGE;
        if new_len > self.reserved() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping beyond the reservation",
            ));
        }
        self.mapped.fetch_max(new_len, Ordering::AcqRel);
        Ok(())
    }

    /// Make the mapping accessible only up to `new_len` (rounded up to a page), after the file
    /// was cut to that length (compaction). The caller holds the writer lock and no reader can
    /// reach past `new_len` (every access is checked against a chunk count no larger).
    pub(crate) fn shrink(&self, new_len: u64) {
        let new_len = (new_len as usize).div_ceil(PAGE) * PAGE;
        self.mapped.fetch_min(new_len, Ordering::AcqRel);
    }

    /// Read-only opens only: back `[from, reserved)` with private zero pages instead of the
    /// file (whose end is at or before `from`), and make the whole reservation accessible, so
    /// that replay can lay committed frames over space whose growth a crash lost, exactly as a
    /// writable open would after growing the file with zeros.
    ///
    /// # Safety
    /// `from` is page-aligned, and no slice into `[from, reserved)` is alive (the heap is not
    /// built yet).
    pub(crate) unsafe fn zero_tail(&self, from: u64) -> io::Result<()> {
        debug_assert!(self.writable && from as usize % PAGE == 0);
        let reserved = self.reserved();
        let from = (from as usize).min(reserved);
        if from == reserved {
            return Ok(());
        }
        // SAFETY: replaces part of our own mapping, which no reference reaches (precondition),
        // with anonymous private memory.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().add(from).cast(),
                reserved - from,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | crate::platform::MAP_NORESERVE
                    | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // A failed MAP_FIXED may have unmapped part of the range, which another thread may
            // then map: never unmap the range ourselves.
            self.leak.store(true, Ordering::Release);
            return Err(last_err());
        }
        self.mapped.store(reserved, Ordering::Release);
        Ok(())
    }

    /// Read `len` bytes at file offset `off`.
    ///
    /// # Safety
    /// `off + len <= mapped_len()`, and for as long as the returned slice lives nobody changes those
    /// bytes: in the writer's mapping, the caller holds the writer lock (only the writer changes
    /// it, and never while a transaction's closure or a slice of its own is alive); in the
    /// readers' mapping, the caller is a reader whose pinned snapshot keeps the writer from
    /// changing these bytes of the file (docs/ARCHITECTURE.md section 11), or a frame of the log
    /// the registry still lists. Nothing outside this process changes the file (the `flock`
    /// contract).
    #[inline]
    pub(crate) unsafe fn slice(&self, off: u64, len: usize) -> &[u8] {
        debug_assert!(
            off + len as u64 <= self.mapped_len(),
            "slice past the mapping"
        );
        // SAFETY: in bounds of the mapped part (precondition), which is readable, initialised
        // (file-backed) memory that nobody mutates while the slice lives (precondition).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off as usize), len) }
    }

    /// Copy `bytes` into the private mapping at `off` (copy-on-write: the file is not changed).
    ///
    /// # Safety
    /// `off + bytes.len() <= mapped_len()`, the mapping is writable (the writer's, or a read-only
    /// handle's while it is built), and the caller holds the writer lock outside any transaction
    /// (or builds the heap), so no slice into these bytes is alive: readers of a writable handle
    /// read the other mapping.
    pub(crate) unsafe fn write_private(&self, off: u64, bytes: &[u8]) {
        debug_assert!(self.writable);
        debug_assert!(off + bytes.len() as u64 <= self.mapped_len());
        // SAFETY: in bounds, writable (preconditions), and no live reference aliases the
        // destination (precondition); source and destination cannot overlap since `bytes` is
        // never a slice of the mapping itself when called (it comes from a frame buffer).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(off as usize),
                bytes.len(),
            )
        }
    }

    /// Take the copy-on-write faults of the pages `[off, off+len)` now, in one call
    /// (`MADV_POPULATE_WRITE` on the private mapping, after `MADV_WILLNEED` so that the file's
    /// pages are read in one batch even under `MADV_RANDOM`): each page becomes a private copy
    /// holding exactly what the file holds. Advice only: refused (an old kernel) or failed
    /// part-way, nothing changed that a reader of the mapping could see, and the pages not
    /// copied fault one by one as before. `off` and `len` are page-aligned and inside the
    /// mapped part.
    ///
    /// # Safety
    /// As for `write_private`: the mapping is writable and no slice into these pages is alive
    /// (the copies hold the same bytes, but the caller must also drop them, with
    /// `discard_private`, before the file's bytes there change other than through them).
    pub(crate) unsafe fn populate_private(&self, off: u64, len: u64) {
        debug_assert!(self.writable);
        debug_assert!(off as usize % PAGE == 0 && len as usize % PAGE == 0);
        debug_assert!(off + len <= self.mapped_len());
        let Some(advice) = crate::platform::POPULATE_WRITE else {
            return;
        };
        // SAFETY: a page-aligned range inside the mapped part of our own writable private
        // mapping (preconditions). WILLNEED only starts reading the file; POPULATE_WRITE takes
        // the write faults a store would take (copying each page from the file) and changes no
        // byte that the mapping shows; no reference into the range is alive (precondition).
        unsafe {
            let p = self.base.as_ptr().add(off as usize).cast();
            libc::madvise(p, len as usize, libc::MADV_WILLNEED);
            libc::madvise(p, len as usize, advice);
        }
    }

    /// Tell the kernel how `[off, off+len)` will be read (rounded out to whole pages and cut to
    /// the reservation): `MADV_RANDOM` (no readahead on a fault), `MADV_SEQUENTIAL`,
    /// `MADV_NORMAL`, or `MADV_WILLNEED` (start reading it now). Advice only: it changes no
    /// byte of the mapping.
    pub(crate) fn advise(&self, off: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
        let start = (off as usize / PAGE * PAGE).min(self.reserved());
        let end = (off.saturating_add(len) as usize)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(self.reserved());
        if start >= end {
            return Ok(());
        }
        // SAFETY: a page-aligned range inside our own mapping; these advice values only steer
        // readahead and never change the mapping's contents (unlike MADV_DONTNEED).
        debug_assert!(matches!(
            advice,
            libc::MADV_RANDOM | libc::MADV_SEQUENTIAL | libc::MADV_NORMAL | libc::MADV_WILLNEED
        ));
        let rc =
            unsafe { libc::madvise(self.base.as_ptr().add(start).cast(), end - start, advice) };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }

    /// Drop private copy-on-write copies of the pages in `[off, off+len)`, so that they show the
    /// file's page cache again. `off` and `len` are page-aligned.
    ///
    /// # Safety
    /// As for `write_private`: no slice into these pages is alive.
    pub(crate) unsafe fn discard_private(&self, off: u64, len: u64) -> io::Result<()> {
        debug_assert!(off as usize % PAGE == 0 && len as usize % PAGE == 0);
        debug_assert!(off + len <= self.mapped_len());
        // SAFETY: a page-aligned range inside our mapping; MADV_DONTNEED on a private file mapping
        // only replaces private copies with the file's contents, and nobody holds a reference.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(off as usize).cast(),
                len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(last_err())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if *self.leak.get_mut() {
            return;
        }
        // SAFETY: the whole reservation is ours (no failed MAP_FIXED left a hole another mapping
        // could occupy); `&mut self` means no slice into it is alive.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.reserved());
        }
    }
}

/// A read-only shared mapping of `[offset, offset+len)` of a file, unmapped on drop: recovery
/// reads the log through it instead of copying it (a replay of 64 MiB of frames spent a third
/// of its time in `pread`, copies and freeing the copies). Its bytes are the file's: they must
/// not be written while the view lives (recovery writes only heap pages, and other processes
/// may not write the file: the `flock` contract).
pub(crate) struct ReadView {
    base: NonNull<u8>,
    map_len: usize,
    skip: usize,
    len: usize,
}

impl ReadView {
    /// Map `[offset, offset+len)` of `fd`; the caller checked that the file is at least that
    /// long (a mapping past the end would fault with SIGBUS when read).
    pub(crate) fn new(fd: &std::fs::File, offset: u64, len: u64) -> io::Result<ReadView> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let start = offset / PAGE as u64 * PAGE as u64;
        let skip = usize::try_from(offset - start).map_err(|_| invalid())?;
        let len = usize::try_from(len).map_err(|_| invalid())?;
        let map_len = skip.checked_add(len).ok_or_else(invalid)?;
        if len == 0 || fd.metadata()?.len() < offset.saturating_add(len as u64) {
            return Err(invalid());
        }
        let base = map_new(fd, map_len, libc::PROT_READ, libc::MAP_SHARED, start)?;
        Ok(ReadView {
            base,
            map_len,
            skip,
            len,
        })
    }
}

impl AsRef<[u8]> for ReadView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `[skip, skip+len)` lies inside the mapping, which lives as long as `self`,
        // and inside the file (checked in `new`; the file is not cut meanwhile: recovery never
        // shrinks it, and others may not write it). Nothing writes these bytes while the view
        // lives (the type's contract: recovery drops it before its checkpoint writes the log),
        // so they do not change under the shared slice.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(self.skip), self.len) }
    }
}

impl Drop for ReadView {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` made; no slice of it outlives `self` (`as_ref`
        // borrows `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

/// A shared, writable mapping of the start of the file (superblocks and log). `msync(MS_SYNC)`
/// of it makes a *range* durable: Linux writes back just that range and then flushes the device
/// cache, where `fdatasync` would also write every dirty heap page. And writes into it (log
/// frames, superblocks: [`SyncWindow::write`]) are stores into the page cache, with no system
/// call per commit; they reach the same pages a `pwrite` would, and are as safe against a
/// killed process. Its blocks are allocated when it is made (`posix_fallocate`), so a store
/// never needs a new block: no `SIGBUS` for a full disk.
///
/// A barrier writes the window's pages back, and the kernel then write-protects them, so the
/// first store into each page after it takes a write fault (on ext4 about 5 µs: the fault, the
/// filesystem's `page_mkwrite`, dirtying). The log is written front to back, so `write` maps
/// the pages ahead of the tail writable in batches ([`POPULATE_AHEAD`] bytes per
/// `MADV_POPULATE_WRITE`), and every barrier forgets the batch. The advice changes no byte of
/// the file: it only dirties pages that hold what the file already holds.
#[derive(Debug)]
pub(crate) struct SyncWindow {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
    /// `[start, end)` of the window (page-aligned offsets) mapped writable ahead of the stores
    /// since the last barrier; `end == 0` for none. Only a hint: a wrong value costs faults,
    /// never a byte.
    ahead: [AtomicU64; 2],
    /// The file (a duplicate descriptor), for what a platform needs after `msync`.
    file: std::fs::File,
}

// SAFETY: the window is never read through, and written only by `write`, which only the
// storage calls, from `FileStorage::write_at` (`&mut`, behind the heap's writer lock: one store
// at a time); no reference into it exists. `sync` (msync, from any thread) reads no memory
// through Rust references.
unsafe impl Send for SyncWindow {}
// SAFETY: as above.
unsafe impl Sync for SyncWindow {}

impl SyncWindow {
    /// Map the first `len` bytes of `fd`. `writable` (the file is open for writing): allocate
    /// their blocks first and allow [`SyncWindow::write`]; otherwise the window only names
    /// ranges for `msync`.
    pub(crate) fn new(fd: &std::fs::File, len: u64, writable: bool) -> io::Result<SyncWindow> {
        if writable {
            crate::platform::preallocate(fd, 0, len)?;
        }
        let file = fd.try_clone()?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // (Only `write` stores into it.)
        let base = map_new(fd, len, prot, libc::MAP_SHARED, 0)?;
        Ok(SyncWindow {
            base,
            len,
            writable,
            ahead: [AtomicU64::new(0), AtomicU64::new(0)],
            file,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// Store `bytes` at file offset `off` through the shared mapping: into the page cache, as a
    /// `pwrite` would. `false` (nothing written) if the range is not inside the window.
    /// Only `FileStorage::write_at` calls it (one store at a time: it takes `&mut` of the
    /// storage, which the writer lock guards).
    pub(crate) fn write(&self, off: u64, bytes: &[u8]) -> bool {
        let end = match off.checked_add(bytes.len() as u64) {
            Some(end) if end <= self.len as u64 && self.writable => end,
            _ => return false,
        };
        debug_assert!(end <= self.len as u64);
        if off < self.ahead[0].load(Ordering::Relaxed)
            || end > self.ahead[1].load(Ordering::Relaxed)
        {
            self.populate_from(off);
        }
        // SAFETY: `[off, end)` lies inside our mapping (checked above), which is writable and
        // shared; no Rust reference points into it (it is never read through), its one caller
        // runs under the writer lock (no other store at the same time; a concurrent msync
        // reads the pages in the kernel, not through a reference), and `bytes` cannot overlap
        // it (nothing hands out slices of it).
        // The blocks behind it were allocated in `new`, and the file is never cut below the
        // chunk area (compaction cuts only a free tail; others may not write it: the flock
        // contract), so the store cannot fault with SIGBUS.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(off as usize),
                bytes.len(),
            )
        };
        true
    }

    /// Map `[off, off + POPULATE_AHEAD)` (page-aligned, cut at the window's end) writable now,
    /// in one call, instead of one write fault per page as the stores reach them. Errors are
    /// ignored: a kernel without the advice leaves the pages to fault one by one.
    fn populate_from(&self, off: u64) {
        let Some(advice) = crate::platform::POPULATE_WRITE else {
            return;
        };
        let start = off / PAGE as u64 * PAGE as u64;
        let end = (start + POPULATE_AHEAD).min(self.len as u64);
        if start >= end {
            return;
        }
        // SAFETY: a page-aligned range inside our own shared, writable mapping (`write` checked
        // `off` against the window and `writable`). MADV_POPULATE_WRITE takes the write faults
        // a store would take and changes no byte of the file or the mapping; no Rust reference
        // points into the window.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(start as usize).cast(),
                (end - start) as usize,
                advice,
            )
        };
        if rc == 0 {
            self.ahead[0].store(start, Ordering::Relaxed);
            self.ahead[1].store(end, Ordering::Relaxed);
        } else {
            // Refused (an old kernel) or failed: stop asking until the next barrier.
            self.ahead[0].store(0, Ordering::Relaxed);
            self.ahead[1].store(self.len as u64, Ordering::Relaxed);
        }
    }

    /// The window's pages were written back (any barrier of the file): they are write-protected
    /// again, so the next store starts a new batch.
    pub(crate) fn written_back(&self) {
        self.ahead[1].store(0, Ordering::Relaxed);
    }

    /// `msync(MS_SYNC)` the pages covering `[off, off+len)`.
    pub(crate) fn sync(&self, off: u64, len: u64) -> io::Result<()> {
        self.written_back();
        let start = (off as usize / PAGE) * PAGE;
        let end = ((off + len) as usize).div_ceil(PAGE) * PAGE;
        if end > self.len || start >= end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "msync range outside the window",
            ));
        }
        // SAFETY: a page-aligned range inside our own mapping; msync does not access memory
        // through it on our behalf in a way that could alias Rust references (none exist).
        let rc = unsafe {
            libc::msync(
                self.base.as_ptr().add(start).cast(),
                end - start,
                libc::MS_SYNC,
            )
        };
        if rc == 0 {
            crate::platform::after_range_barrier(&self.file)
        } else {
            Err(last_err())
        }
    }
}

impl Drop for SyncWindow {
    fn drop(&mut self) {
        // SAFETY: our own mapping, never referenced.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Ask the CPU to bring the cache lines of `bytes` in (a hint: it changes no memory and no
/// result; without a prefetch instruction for the target it does nothing). For walks that know
/// the next node before they need it (a B-tree scan's next leaf).
#[inline]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: `_mm_prefetch` is a hint that never faults and reads nothing architecturally;
        // the address is that of a live slice anyway. SSE (which provides it) is part of the
        // x86_64 baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
