//! Every difference between the Unix platforms txheap builds on, in one place, so that a
//! reviewer can check each `cfg` branch by eye.
//!
//! Tested (the whole suite, the crash campaigns, valgrind): Linux on x86-64. Built by design but
//! never compiled or run here (no other target's standard library can be installed on these
//! machines): macOS, FreeBSD, DragonFly, NetBSD, OpenBSD, illumos. What differs:
//!
//! | call | Linux, Android | FreeBSD, DragonFly, illumos | macOS | NetBSD, OpenBSD |
//! |---|---|---|---|---|
//! | preallocate the file's blocks | `posix_fallocate` | `posix_fallocate` | `ftruncate` (blocks on first write) | `ftruncate` |
//! | punch a hole | `fallocate(PUNCH_HOLE)` | zeros written | zeros written | zeros written |
//! | the mapping's `MAP_NORESERVE` | yes | no (not defined) | yes | NetBSD yes, OpenBSD no |
//! | a range barrier (`msync`) reaches the medium | yes | yes | no: `F_FULLFSYNC` follows it | yes |
//! | filesystem name (tmpfs warning) | `fstatfs` magic | "unknown" | "unknown" | "unknown" |
//! | grow a running heap's `max_size` (its mapping in place) | `mmap(MAP_FIXED_NOREPLACE)` right after it | refused: reopen | refused: reopen | refused: reopen |
//! | make the log's next pages writable ahead of its stores | `MADV_POPULATE_WRITE` (Linux 5.14+; older kernels refuse it, and each page faults on its first store instead) | nothing | nothing | nothing |
//!
//! Where blocks are not preallocated, a full disk shows as SIGBUS on a store into the mapping
//! instead of `Error::Io(ENOSPC)` from the growth (the writes of frames and in-place objects are
//! `pwrite`s and still report it). `File::sync_data` is already `F_FULLFSYNC` on macOS (the
//! standard library does it), so full barriers need nothing here.
//!
//! Owns: these calls. May not: anything else (the mapping itself is `sys.rs`'s).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `MAP_NORESERVE` where the platform has it (a private mapping of a large reservation is then
/// not charged against overcommit up front), else no flag.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "netbsd"
))]
pub(crate) const MAP_NORESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "netbsd"
)))]
pub(crate) const MAP_NORESERVE: libc::c_int = 0;

/// The `madvise` advice that maps a range of a shared file mapping writable ahead of use
/// (`MADV_POPULATE_WRITE`: every page's write fault taken in one call), where the platform has
/// one. Only a speed-up: a kernel that refuses it leaves each page to fault on its first store.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const POPULATE_WRITE: Option<libc::c_int> = Some(libc::MADV_POPULATE_WRITE);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const POPULATE_WRITE: Option<libc::c_int> = None;

/// Make the file at least `offset + len` bytes long, with disk blocks allocated for the range
/// where the platform can (`posix_fallocate`), so that ENOSPC comes back here.
pub(crate) fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "illumos",
        target_os = "solaris"
    ))]
    {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let l =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: posix_fallocate takes integers only; it returns an errno value.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), off, l) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "illumos",
        target_os = "solaris"
    )))]
    {
        extend(file, offset + len)
    }
}

/// Extend the file to `len` bytes (never shrinks it): the portable fallback of [`preallocate`].
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
fn extend(file: &File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// Punch a hole at `[offset, offset+len)` keeping the file's length; `Ok(false)` where the
/// platform or filesystem cannot (the caller then writes zeros).
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let l =
            libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: fallocate takes integers only; it reports failure through errno.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return Ok(false);
        }
        Err(e)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (file, offset, len);
        Ok(false)
    }
}

/// After a range barrier (`msync(MS_SYNC)`): on macOS `msync` leaves the bytes in the drive's
/// cache, so `F_FULLFSYNC` follows; elsewhere nothing.
pub(crate) fn after_range_barrier(fd: &impl AsRawFd) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        // SAFETY: fcntl(F_FULLFSYNC) takes an integer fd and no pointer.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_FULLFSYNC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = fd;
        Ok(())
    }
}

/// The filesystem's name where known (else its magic in hex, or "unknown"), and whether it keeps
/// files in memory only (tmpfs, ramfs: nothing survives a power cut or reboot).
pub(crate) fn filesystem(fd: &impl AsRawFd) -> io::Result<(String, bool)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: `statfs` is plain old data; all-zero bytes are a valid value of it.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs writes at most one `statfs` through the pointer, which points to one.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between C libraries
        let magic = st.f_type as u64 & 0xffff_ffff;
        let (name, volatile) = match magic {
            0xEF53 => ("ext4", false),
            0x5846_5342 => ("xfs", false),
            0x9123_683E => ("btrfs", false),
            0xF2F5_2010 => ("f2fs", false),
            0x2FC1_2FC1 => ("zfs", false),
            0x6969 => ("nfs", false),
            0x6573_5546 => ("fuse", false),
            0x794C_7630 => ("overlayfs", false),
            0x0102_1994 => ("tmpfs", true),
            0x8584_58F6 => ("ramfs", true),
            _ => return Ok((format!("unknown (magic {magic:#x})"), false)),
        };
        Ok((name.to_string(), volatile))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = fd;
        Ok(("unknown".to_string(), false))
    }
}

/// Extend the private mapping of `fd` at `base` from `old` to `new` bytes without moving it:
/// the file's bytes `[old, new)` are mapped right after it with `prot` (Linux:
/// `MAP_FIXED_NOREPLACE`, which fails when any of that address space is taken, and never
/// replaces a mapping). Elsewhere `Unsupported`: a reopen with the larger `max_size` maps anew.
///
/// # Safety
/// `base` is the start of a mapping of `old` bytes that the caller owns.
pub(crate) unsafe fn grow_mapping_in_place(
    fd: &impl AsRawFd,
    base: *mut u8,
    old: usize,
    new: usize,
    prot: libc::c_int,
) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let want = base.wrapping_add(old).cast::<libc::c_void>();
        let off =
            libc::off_t::try_from(old).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: NOREPLACE never unmaps anything: it maps the file's next bytes at `want` only
        // if that address space is free, else fails (EEXIST).
        let p = unsafe {
            libc::mmap(
                want,
                new - old,
                prot,
                libc::MAP_PRIVATE | MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if p != want {
            // A kernel older than 4.17 takes the flag as a hint and may map elsewhere: undo it.
            // SAFETY: the mapping just made, which nothing references.
            unsafe { libc::munmap(p, new - old) };
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "the address space after the mapping is taken",
            ));
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (fd, base, old, new, prot);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this platform cannot extend a mapping in place",
        ))
    }
}
