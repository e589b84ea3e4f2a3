//! Operating-system calls that need `unsafe`: the address-space reservation and file mapping,
//! `msync`, `madvise`, `flock` and `posix_fallocate`.
//!
//! Owns: every raw pointer into mapped memory. Nothing outside this module creates one.
//! May not: decide *when* memory may be read or changed; callers hold the heap's locks
//! (see `Mapping::slice`'s contract).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The page size txheap's format assumes; checked against the OS at map time.
pub(crate) const PAGE: usize = 4096;

fn last_err() -> io::Error {
    io::Error::last_os_error()
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

/// Allocate disk blocks for `[offset, offset+len)`, extending the file if needed, so that a later
/// store or write there cannot fail for lack of space (ENOSPC comes back here, not as SIGBUS).
pub(crate) fn fallocate(fd: &impl AsRawFd, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let l = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: posix_fallocate takes integers only; it returns an errno value instead of setting errno.
    let rc = unsafe { libc::posix_fallocate(fd.as_raw_fd(), off, l) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// A reservation of `reserved` bytes of address space whose first `mapped` bytes map the file
/// privately (MAP_PRIVATE): reads see the file's page cache, and `write_private` puts
/// copy-on-write bytes in front of it that never reach the file.
///
/// Growing maps more of the reservation in place, so the base never moves and references into
/// the mapped part stay valid.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    reserved: usize,
    mapped: AtomicUsize,
    /// A failed extend could not re-reserve its range: no extend may map over it again.
    broken: std::sync::atomic::AtomicBool,
    fd: RawFd,
    writable: bool,
}

// SAFETY: the mapping is plain memory shared by all threads of the process. Which thread may read
// or change which bytes, and when, is decided by the heap's locks (see `slice`), not by the thread
// that created the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as above; `mapped` is atomic and every other field is immutable after construction.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Reserve `reserved` bytes of address space and map the first `len` bytes of `fd` there.
    /// `writable` allows `write_private` (PROT_WRITE on the private mapping); otherwise any store
    /// into the mapping faults at once.
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
        // SAFETY: an anonymous PROT_NONE reservation at an address the kernel chooses; it aliases
        // nothing. MAP_NORESERVE: no swap is committed for address space never made accessible.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_err());
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        let m = Mapping {
            base,
            reserved,
            mapped: AtomicUsize::new(0),
            broken: std::sync::atomic::AtomicBool::new(false),
            fd: fd.as_raw_fd(),
            writable,
        };
        m.extend(len)?;
        Ok(m)
    }

    fn prot(&self) -> libc::c_int {
        if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    /// Bytes of the file currently mapped.
    pub(crate) fn mapped_len(&self) -> u64 {
        self.mapped.load(Ordering::Acquire) as u64
    }

    /// Map the file up to `new_len` (rounded up to a page). The caller has made sure the file is at
    /// least that long (blocks allocated), and holds the writer lock, so extends do not race.
    pub(crate) fn extend(&self, new_len: u64) -> io::Result<()> {
        let old = self.mapped.load(Ordering::Acquire);
        let new_len =
            usize::try_from(new_len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let new_len = new_len.div_ceil(PAGE) * PAGE;
        if new_len <= old {
            return Ok(());
        }
        if new_len > self.reserved {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping beyond the reservation",
            ));
        }
        if self.broken.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier failed mapping left a hole in the reservation; reopen the heap",
            ));
        }
        // SAFETY: [old, new_len) lies inside our own reservation and is still PROT_NONE: no
        // reference into it exists, so replacing it with MAP_FIXED aliases nothing in use.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().add(old).cast(),
                new_len - old,
                self.prot(),
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.fd,
                old as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let err = last_err();
            // A failed MAP_FIXED may already have unmapped part of the range: claim it back as
            // PROT_NONE so the reservation has no hole another allocation could land in (a later
            // extend maps over the reservation with MAP_FIXED).
            // SAFETY: the same range of our own reservation as above, still unreferenced.
            let back = unsafe {
                libc::mmap(
                    self.base.as_ptr().add(old).cast(),
                    new_len - old,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if back == libc::MAP_FAILED {
                // Without the range reserved, extending over it later could clobber a foreign
                // mapping: refuse every later extend.
                self.broken.store(true, Ordering::Release);
            }
            return Err(err);
        }
        self.mapped.store(new_len, Ordering::Release);
        Ok(())
    }

    /// Read `len` bytes at file offset `off`.
    ///
    /// # Safety
    /// `off + len <= mapped_len()`, and for as long as the returned slice lives nobody changes those
    /// bytes: the caller holds either the view lock for reading, or the writer lock inside a
    /// transaction's closure (changes happen only under both the writer lock and the view lock
    /// for writing). Nothing outside this process changes the file (the `flock` contract).
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
    /// `off + bytes.len() <= mapped_len()`, the mapping is writable, and the caller holds the writer
    /// lock and the view lock for writing, so no slice into these bytes is alive.
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
        // SAFETY: the whole reservation is ours; `&mut self` means no slice into it is alive.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.reserved);
        }
    }
}

/// A read-only shared mapping of the start of the file (superblocks and log), used only so that
/// `msync(MS_SYNC)` can make a *range* durable: Linux writes back just that range and then
/// flushes the device cache, where `fdatasync` would also write every dirty heap page.
#[derive(Debug)]
pub(crate) struct SyncWindow {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the window is never read or written through; it only names a range for msync.
unsafe impl Send for SyncWindow {}
// SAFETY: as above.
unsafe impl Sync for SyncWindow {}

impl SyncWindow {
    pub(crate) fn new(fd: &impl AsRawFd, len: u64) -> io::Result<SyncWindow> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a new shared read-only mapping of the first `len` bytes of our file at an address
        // the kernel picks; it aliases nothing and is never dereferenced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_err());
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(SyncWindow { base, len })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// `msync(MS_SYNC)` the pages covering `[off, off+len)`.
    pub(crate) fn sync(&self, off: u64, len: u64) -> io::Result<()> {
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
            Ok(())
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
