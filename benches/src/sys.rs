//! Every `unsafe` operation of the benchmark crate, each behind a safe wrapper:
//!
//! - [`SharedMap`]: a `MAP_SHARED` mapping of a file and `msync(MS_SYNC)` of one page (the
//!   msync limit);
//! - [`malloc_list`]: `malloc` + first write of many small blocks linked into a list (the
//!   volatile allocation limit);
//! - [`lmdb_env`]: opening an LMDB environment through heed, whose open and flag setters are
//!   `unsafe` because of LMDB's own rules about mappings;
//! - [`Pmem`], [`PmemPool`], [`PmemTx`]: PMDK's libpmemobj, loaded at run time with
//!   `dlopen("libpmemobj.so.1")` so that building the workspace never needs PMDK installed;
//! - [`fadvise_dontneed`] and [`free_bytes`]: `posix_fadvise(POSIX_FADV_DONTNEED)` and
//!   `statvfs`, for W7's cold page cache and its free-space check.
//!
//! The rest of the crate is `#![deny(unsafe_code)]`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::OnceLock;

use crate::BoxResult;

const PAGE: usize = 4096;

/// A read-write `MAP_SHARED` mapping of a whole file.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// Map all `len` bytes of `file` (opened read-write, at least `len` long) shared.
    pub fn new(file: &File, len: usize) -> BoxResult<SharedMap> {
        if len == 0 || !len.is_multiple_of(PAGE) || file.metadata()?.len() < len as u64 {
            return Err(format!("SharedMap: bad length {len} for the file").into());
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) over a file descriptor that
        // is valid for this call; the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()).into());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned NULL")?;
        Ok(SharedMap { ptr, len })
    }

    /// Number of whole pages mapped.
    pub fn pages(&self) -> usize {
        self.len / PAGE
    }

    /// Copy `bytes` into page `page` (at its start) and `msync(MS_SYNC)` that page.
    pub fn store_and_sync(&mut self, page: usize, bytes: &[u8]) -> BoxResult<()> {
        if page >= self.pages() || bytes.len() > PAGE {
            return Err("SharedMap: store out of range".into());
        }
        let off = page * PAGE;
        // SAFETY: off + bytes.len() <= self.len (checked above), the mapping is readable and
        // writable for self.len bytes while self lives, and `&mut self` excludes other
        // references into it from this process; the source slice cannot overlap the mapping
        // because no safe reference into the mapping is ever handed out.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len());
        }
        // SAFETY: the range [off, off + PAGE) lies inside the live mapping and is page aligned.
        let rc = unsafe {
            libc::msync(
                self.ptr.as_ptr().add(off).cast::<c_void>(),
                PAGE,
                libc::MS_SYNC,
            )
        };
        if rc != 0 {
            return Err(format!("msync: {}", std::io::Error::last_os_error()).into());
        }
        Ok(())
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and nothing borrows the mapping once
        // self is being dropped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len);
        }
    }
}

/// `malloc` `n` blocks of 64 bytes, write each one (a value and the pointer to the previous
/// block, a singly linked list), and return the time taken by that loop alone; the blocks are
/// freed afterwards, outside the timed region. Fails if `malloc` returns NULL.
pub fn malloc_list(n: u64) -> BoxResult<std::time::Duration> {
    let mut head: *mut u64 = std::ptr::null_mut();
    let start = std::time::Instant::now();
    for i in 0..n {
        // SAFETY: malloc has no preconditions; the result is checked for NULL below.
        let p = unsafe { libc::malloc(64) }.cast::<u64>();
        if p.is_null() {
            free_list(head);
            return Err("malloc returned NULL".into());
        }
        // SAFETY: p points to 64 writable bytes, aligned for u64 (malloc's alignment is at
        // least 16); we write two u64 at offsets 0 and 8.
        unsafe {
            p.write(i);
            p.add(1).write(head as u64);
        }
        head = p;
    }
    let elapsed = start.elapsed();
    std::hint::black_box(head);
    free_list(head);
    Ok(elapsed)
}

fn free_list(mut p: *mut u64) {
    while !p.is_null() {
        // SAFETY: every node of the list was allocated by malloc_list with 64 bytes and holds the
        // previous node's address (or 0) at offset 8; each is freed exactly once.
        unsafe {
            let next = p.add(1).read() as *mut u64;
            libc::free(p.cast::<c_void>());
            p = next;
        }
    }
}

/// `posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`: drop the clean page-cache pages of the whole
/// file (dirty pages stay; sync the file first).
pub fn fadvise_dontneed(file: &File) -> BoxResult<()> {
    // SAFETY: a file descriptor valid for the call; posix_fadvise only advises the kernel and
    // touches no memory of this process.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise: {}", std::io::Error::from_raw_os_error(rc)).into());
    }
    Ok(())
}

/// Bytes available to an unprivileged user on the filesystem holding `path` (`statvfs`:
/// `f_bavail × f_frsize`).
pub fn free_bytes(path: &Path) -> BoxResult<u64> {
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a live, writable statvfs.
    let rc = unsafe { libc::statvfs(cpath.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(format!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Open (creating if needed) an LMDB environment in `dir` with `map_size` bytes and `flags`.
///
/// heed marks this `unsafe` because LMDB's mapping is undefined behaviour if the files are
/// changed behind its back; the harness gives each child a fresh directory of its own.
pub fn lmdb_env(dir: &Path, map_size: usize, flags: heed::EnvFlags) -> BoxResult<heed::Env> {
    let mut options = heed::EnvOpenOptions::new();
    options.map_size(map_size).max_dbs(1);
    // SAFETY: NO_SYNC / WRITE_MAP only weaken durability (the point of the fast settings); no
    // NO_LOCK, so LMDB's own locking stays in force.
    unsafe {
        options.flags(flags);
    }
    // SAFETY: `dir` is a directory created for this child process alone; nothing else opens,
    // writes or truncates its files while the environment is open.
    let env = unsafe { options.open(dir)? };
    Ok(env)
}

/// libpmemobj's object id (`PMEMoid` in `/usr/include/libpmemobj/base.h`: two `uint64_t`,
/// `pool_uuid_lo` then `off`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PmemOid {
    pool_uuid_lo: u64,
    off: u64,
}

type CreateFn =
    unsafe extern "C" fn(*const c_char, *const c_char, usize, libc::mode_t) -> *mut c_void;
type OpenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void;
type CloseFn = unsafe extern "C" fn(*mut c_void);
type RootFn = unsafe extern "C" fn(*mut c_void, usize) -> PmemOid;
type DirectFn = unsafe extern "C" fn(PmemOid) -> *mut c_void;
type UsableSizeFn = unsafe extern "C" fn(PmemOid) -> usize;
/// `int pmemobj_tx_begin(PMEMobjpool *pop, jmp_buf env, ...)`: variadic, the parameter list
/// ended by TX_PARAM_NONE (0).
type TxBeginFn = unsafe extern "C" fn(*mut c_void, *mut c_void, ...) -> c_int;
type TxAllocFn = unsafe extern "C" fn(usize, u64) -> PmemOid;
type TxAddRangeDirectFn = unsafe extern "C" fn(*const c_void, usize) -> c_int;
type VoidFn = unsafe extern "C" fn();
type TxAbortFn = unsafe extern "C" fn(c_int);
type IntFn = unsafe extern "C" fn() -> c_int;
type ErrorMsgFn = unsafe extern "C" fn() -> *const c_char;

/// The libpmemobj functions the harness calls, resolved with `dlsym`.
struct PmemFns {
    create: CreateFn,
    open: OpenFn,
    close: CloseFn,
    root: RootFn,
    direct: DirectFn,
    usable_size: UsableSizeFn,
    tx_begin: TxBeginFn,
    tx_alloc: TxAllocFn,
    tx_add_range_direct: TxAddRangeDirectFn,
    tx_commit: VoidFn,
    tx_abort: TxAbortFn,
    tx_end: IntFn,
    tx_stage: IntFn,
    errormsg: ErrorMsgFn,
}

/// `enum pobj_tx_stage` values used here (tx_base.h).
const TX_STAGE_WORK: c_int = 1;
/// `enum pobj_tx_param`: TX_PARAM_NONE ends the variadic parameter list of tx_begin.
const TX_PARAM_NONE: c_int = 0;

/// The loaded libpmemobj (loaded once per process and never unloaded).
pub struct Pmem {
    fns: PmemFns,
}

static PMEM: OnceLock<Result<Pmem, String>> = OnceLock::new();

impl Pmem {
    /// Load `libpmemobj.so.1`; a missing library is an error that says how to install it.
    pub fn load() -> BoxResult<&'static Pmem> {
        PMEM.get_or_init(Pmem::load_now)
            .as_ref()
            .map_err(|e| e.clone().into())
    }

    fn load_now() -> Result<Pmem, String> {
        let name = c"libpmemobj.so.1";
        // SAFETY: a NUL-terminated name; dlopen has no other preconditions. The handle is never
        // closed, so resolved symbols stay valid for the process's lifetime.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "PMDK peer: cannot load libpmemobj.so.1 ({}). Install it: `apt-get install libpmemobj1` \
                 (or run benches/setup.sh)",
                dl_error()
            ));
        }
        let sym = |s: &CStr| -> Result<*mut c_void, String> {
            // SAFETY: handle is a live dlopen handle and s is NUL-terminated.
            let p = unsafe { libc::dlsym(handle, s.as_ptr()) };
            if p.is_null() {
                Err(format!(
                    "libpmemobj.so.1 has no symbol {}: {}",
                    s.to_string_lossy(),
                    dl_error()
                ))
            } else {
                Ok(p)
            }
        };
        // SAFETY: (all transmutes below) each symbol is the libpmemobj 1.x function of that
        // name, whose C prototype (checked against /usr/include/libpmemobj/{pool_base,base,tx_base}.h
        // of libpmemobj-dev 1.12) matches the Rust fn-pointer type of the field it fills:
        // PMEMobjpool* and void* as *mut c_void, size_t as usize, uint64_t as u64, int as
        // c_int, PMEMoid as the #[repr(C)] PmemOid, mode_t as libc::mode_t.
        unsafe {
            use std::mem::transmute as t;
            type P = *mut c_void;
            Ok(Pmem {
                fns: PmemFns {
                    create: t::<P, CreateFn>(sym(c"pmemobj_create")?),
                    open: t::<P, OpenFn>(sym(c"pmemobj_open")?),
                    close: t::<P, CloseFn>(sym(c"pmemobj_close")?),
                    root: t::<P, RootFn>(sym(c"pmemobj_root")?),
                    direct: t::<P, DirectFn>(sym(c"pmemobj_direct")?),
                    usable_size: t::<P, UsableSizeFn>(sym(c"pmemobj_alloc_usable_size")?),
                    tx_begin: t::<P, TxBeginFn>(sym(c"pmemobj_tx_begin")?),
                    tx_alloc: t::<P, TxAllocFn>(sym(c"pmemobj_tx_alloc")?),
                    tx_add_range_direct: t::<P, TxAddRangeDirectFn>(sym(
                        c"pmemobj_tx_add_range_direct",
                    )?),
                    tx_commit: t::<P, VoidFn>(sym(c"pmemobj_tx_commit")?),
                    tx_abort: t::<P, TxAbortFn>(sym(c"pmemobj_tx_abort")?),
                    tx_end: t::<P, IntFn>(sym(c"pmemobj_tx_end")?),
                    tx_stage: t::<P, IntFn>(sym(c"pmemobj_tx_stage")?),
                    errormsg: t::<P, ErrorMsgFn>(sym(c"pmemobj_errormsg")?),
                },
            })
        }
    }

    fn last_error(&self, what: &str) -> String {
        // SAFETY: pmemobj_errormsg takes no arguments and returns a thread-local NUL-terminated
        // string (or NULL), copied out at once.
        let msg = unsafe { (self.fns.errormsg)() };
        let text = if msg.is_null() {
            String::new()
        } else {
            // SAFETY: non-NULL, NUL-terminated, valid until the next libpmemobj call.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        format!("{what}: {text} ({})", std::io::Error::last_os_error())
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments; its result is NULL or a NUL-terminated string copied
    // out at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-NULL and NUL-terminated (dlerror's contract).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// An object in a pool: its id and its usable size, so that every access can be bounds-checked.
#[derive(Clone, Copy, Debug)]
pub struct PmemObj {
    oid: PmemOid,
    size: usize,
    /// The transaction (of [`PmemPool::tx`]) that allocated it; 0 for objects that existed
    /// before (the root, objects read back from the pool).
    born: u64,
}

impl PmemObj {
    /// The 16 bytes of the object id, as stored inside other objects (`pool_uuid_lo`, `off`).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.oid.pool_uuid_lo.to_le_bytes());
        b[8..].copy_from_slice(&self.oid.off.to_le_bytes());
        b
    }
}

/// An open libpmemobj pool.
pub struct PmemPool {
    lib: &'static Pmem,
    pop: NonNull<c_void>,
    txs: u64,
}

impl PmemPool {
    /// Create a pool file of `size` bytes at `path` (which must not exist).
    pub fn create(path: &Path, layout: &str, size: usize) -> BoxResult<PmemPool> {
        let lib = Pmem::load()?;
        let cpath = CString::new(path.as_os_str().as_bytes())?;
        let clayout = CString::new(layout)?;
        // SAFETY: NUL-terminated path and layout that outlive the call; result checked for NULL.
        let pop = unsafe { (lib.fns.create)(cpath.as_ptr(), clayout.as_ptr(), size, 0o600) };
        let pop = NonNull::new(pop).ok_or_else(|| lib.last_error("pmemobj_create"))?;
        Ok(PmemPool { lib, pop, txs: 0 })
    }

    /// Open an existing pool file.
    pub fn open(path: &Path, layout: &str) -> BoxResult<PmemPool> {
        let lib = Pmem::load()?;
        let cpath = CString::new(path.as_os_str().as_bytes())?;
        let clayout = CString::new(layout)?;
        // SAFETY: as in create.
        let pop = unsafe { (lib.fns.open)(cpath.as_ptr(), clayout.as_ptr()) };
        let pop = NonNull::new(pop).ok_or_else(|| lib.last_error("pmemobj_open"))?;
        Ok(PmemPool { lib, pop, txs: 0 })
    }

    /// The root object, allocated zeroed with `size` bytes on first use.
    pub fn root(&mut self, size: usize) -> BoxResult<PmemObj> {
        // SAFETY: pop is an open pool owned by self.
        let oid = unsafe { (self.lib.fns.root)(self.pop.as_ptr(), size) };
        if oid.off == 0 {
            return Err(self.lib.last_error("pmemobj_root").into());
        }
        self.obj(oid, 0)
    }

    fn obj(&self, oid: PmemOid, born: u64) -> BoxResult<PmemObj> {
        if oid.off == 0 || oid.pool_uuid_lo == 0 {
            return Err("null PMEMoid".into());
        }
        // SAFETY: pmemobj_alloc_usable_size accepts any non-null oid of an open pool (null was
        // rejected above).
        let size = unsafe { (self.lib.fns.usable_size)(oid) };
        Ok(PmemObj { oid, size, born })
    }

    /// The object whose id is stored at `offset` of `obj` (as written by [`PmemObj::to_bytes`]),
    /// or `None` if that id is null.
    pub fn read_oid(&self, obj: &PmemObj, offset: usize) -> BoxResult<Option<PmemObj>> {
        let mut b = [0u8; 16];
        self.read(obj, offset, &mut b)?;
        let oid = PmemOid {
            pool_uuid_lo: u64::from_le_bytes(b[..8].try_into()?),
            off: u64::from_le_bytes(b[8..].try_into()?),
        };
        if oid.off == 0 {
            return Ok(None);
        }
        self.obj(oid, 0).map(Some)
    }

    /// Copy `out.len()` bytes at `offset` of `obj` into `out`.
    pub fn read(&self, obj: &PmemObj, offset: usize, out: &mut [u8]) -> BoxResult<()> {
        let p = self.direct(obj, offset, out.len())?;
        // SAFETY: direct() checked that [offset, offset + len) lies inside the object, which is
        // mapped while the pool is open; out is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn direct(&self, obj: &PmemObj, offset: usize, len: usize) -> BoxResult<*mut u8> {
        if offset.checked_add(len).is_none_or(|end| end > obj.size) {
            return Err(format!(
                "PMDK access [{offset}, +{len}) outside an object of {} bytes",
                obj.size
            )
            .into());
        }
        // SAFETY: the oid came from this pool (alloc, root or a checked read) and the pool is
        // open; the result is checked for NULL.
        let base = unsafe { (self.lib.fns.direct)(obj.oid) }.cast::<u8>();
        if base.is_null() {
            return Err("pmemobj_direct returned NULL".into());
        }
        // SAFETY: offset <= obj.size, so the pointer stays inside (or one past) the object.
        Ok(unsafe { base.add(offset) })
    }

    /// Run `f` as one libpmemobj transaction (pmemobj_tx_begin with no jmp_buf, then commit and
    /// end, or abort and end if `f` or a libpmemobj call fails).
    pub fn tx<R>(&mut self, f: impl FnOnce(&mut PmemTx<'_>) -> BoxResult<R>) -> BoxResult<R> {
        self.txs += 1;
        let lib = self.lib;
        // SAFETY: pop is an open pool; env NULL means failures return instead of longjmp; the
        // parameter list is ended by TX_PARAM_NONE.
        let rc =
            unsafe { (lib.fns.tx_begin)(self.pop.as_ptr(), std::ptr::null_mut(), TX_PARAM_NONE) };
        let mut guard = TxGuard { lib, open: true };
        if rc != 0 {
            drop(guard);
            return Err(format!("pmemobj_tx_begin: error {rc}").into());
        }
        let seq = self.txs;
        let mut tx = PmemTx { pool: self, seq };
        let out = f(&mut tx);
        // SAFETY: pmemobj_tx_stage has no preconditions.
        let stage = unsafe { (lib.fns.tx_stage)() };
        match out {
            Ok(v) if stage == TX_STAGE_WORK => {
                // SAFETY: commit is called in TX_STAGE_WORK, as required.
                unsafe { (lib.fns.tx_commit)() };
                guard.open = false;
                // SAFETY: after commit the stage is no longer WORK, as tx_end requires.
                let rc = unsafe { (lib.fns.tx_end)() };
                if rc != 0 {
                    return Err(lib.last_error("pmemobj transaction commit").into());
                }
                Ok(v)
            }
            Ok(_) => Err(lib.last_error("pmemobj transaction aborted").into()),
            Err(e) => Err(e),
        }
    }
}

/// Aborts (if still working) and ends the thread's open transaction when dropped, so an error
/// or a panic inside [`PmemPool::tx`] never leaves one open.
struct TxGuard {
    lib: &'static Pmem,
    open: bool,
}

impl Drop for TxGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // SAFETY: a transaction was begun on this thread; abort only in TX_STAGE_WORK, then end
        // (never called in WORK).
        unsafe {
            if (self.lib.fns.tx_stage)() == TX_STAGE_WORK {
                (self.lib.fns.tx_abort)(libc::ECANCELED);
            }
            (self.lib.fns.tx_end)();
        }
    }
}

impl Drop for PmemPool {
    fn drop(&mut self) {
        // SAFETY: pop is open and closed exactly once; no transaction is open (tx() always ends
        // its own).
        unsafe { (self.lib.fns.close)(self.pop.as_ptr()) };
    }
}

/// A running libpmemobj transaction (see [`PmemPool::tx`]).
pub struct PmemTx<'p> {
    pool: &'p mut PmemPool,
    seq: u64,
}

impl PmemTx<'_> {
    /// `pmemobj_tx_alloc(size, type_num)`: a new object, freed again if the transaction aborts.
    pub fn alloc(&mut self, size: usize, type_num: u64) -> BoxResult<PmemObj> {
        // SAFETY: called inside this thread's transaction (stage WORK, or it fails cleanly).
        let oid = unsafe { (self.pool.lib.fns.tx_alloc)(size, type_num) };
        if oid.off == 0 {
            return Err(self.pool.lib.last_error("pmemobj_tx_alloc").into());
        }
        self.pool.obj(oid, self.seq)
    }

    /// Write `bytes` at `offset` of `obj`. An object that existed before this transaction is
    /// first snapshotted with `pmemobj_tx_add_range_direct` (undo log); one allocated by this
    /// transaction is written directly, as PMDK's documentation allows.
    pub fn write(&mut self, obj: &PmemObj, offset: usize, bytes: &[u8]) -> BoxResult<()> {
        let p = self.pool.direct(obj, offset, bytes.len())?;
        if obj.born != self.seq {
            // SAFETY: p..p+len lies inside a live object of the pool (checked by direct) and a
            // transaction is running on this thread.
            let rc =
                unsafe { (self.pool.lib.fns.tx_add_range_direct)(p.cast::<c_void>(), bytes.len()) };
            if rc != 0 {
                return Err(self
                    .pool
                    .lib
                    .last_error("pmemobj_tx_add_range_direct")
                    .into());
            }
        }
        // SAFETY: the destination range lies inside the object (checked by direct), the pool is
        // mapped read-write while open, no Rust reference into it exists, and bytes is a
        // distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        Ok(())
    }

    /// Read from an object inside the transaction.
    pub fn read(&self, obj: &PmemObj, offset: usize, out: &mut [u8]) -> BoxResult<()> {
        self.pool.read(obj, offset, out)
    }
}
