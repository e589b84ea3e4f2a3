//! Creating and opening heap files: locking, mapping, recovery glue and the allocator rebuild.
//!
//! Owns: the steps from a path to the parts of an open heap (`Opened`): create (built under a
//! temporary name, linked into place once complete), writable open (reserve the mapping, check
//! the heap as replay will leave it, recover, grow the file to its chunk count), read-only open
//! (replay into private pages only), and the allocator rebuild every open ends with. May not:
//! encode frames or superblocks (the recovery crate does), or run transactions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use txheap_recovery::{
    self as recovery, OnDamage, RecoveryError, Slot, Storage, Superblock, HEAP_META_LEN,
};

use crate::alloc::{Allocator, HeapHeader, HEAP_HEADER_LEN};
use crate::error::{Error, Result};
use crate::layout::{needed_len, read_heap_header, Geometry};
use crate::limits::{TEMP_NAME_TRIES, TEMP_STEM_MAX};
use crate::options::{Durability, Options};
use crate::shared::Shared;
use crate::storage::FileStorage;
use crate::sys::{self, Mapping};
use crate::writer::Writer;
use txheap_recovery::phase;

/// The parts of an open heap, before the facade wraps them.
pub(crate) struct Opened {
    pub shared: Shared,
    pub writer: Writer,
}

/// Where the log stands after an open: the superblock in force and its slot, the log tail and
/// the next transaction id.
struct LogState {
    sb: Superblock,
    slot: Slot,
    tail: u64,
    next_txid: u64,
    /// Transactions a salvage dropped (first and last txid).
    salvaged: Option<(u64, u64)>,
    /// The open kept the log's generation (it did not checkpoint: it replayed nothing, or left
    /// the frames it replayed in the log): frames of this generation may lie beyond the tail,
    /// and must never follow a new frame.
    kept_generation: bool,
    /// The log held nothing but a checkpoint's sentinel at its start (a clean end, no frame
    /// and no torn one): a close that commits nothing need not checkpoint.
    clean: bool,
}

fn lock_file(file: &File, path: &Path, exclusive: bool) -> Result<()> {
    lock_file_waiting(file, path, exclusive, Duration::ZERO)
}

/// [`lock_file`], trying again for up to `wait` ([`Options::lock_wait`]) while another handle
/// holds the lock: pauses of 1 ms doubling to 50 ms (a non-blocking `flock` polled, since a
/// blocking one cannot time out without a signal).
fn lock_file_waiting(file: &File, path: &Path, exclusive: bool, wait: Duration) -> Result<()> {
    let deadline = Instant::now().checked_add(wait);
    let mut pause = Duration::from_millis(1);
    loop {
        match sys::try_flock(file, exclusive) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(Error::io("flock", 0, e)),
        }
        // (A wait too long to add to now is a wait without end.)
        let left = deadline.map_or(pause, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return Err(Error::Locked {
                path: path.to_path_buf(),
            });
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A failed `open(2)` of an existing heap: a missing file is [`Error::NotFound`].
fn open_error(path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        Error::io("open", 0, e)
    }
}

/// Open the existing file at `path` for reading (and writing): refused as `NotATxheap` unless
/// it is a regular file, and without blocking on the way (a review found `txheap check` of a
/// FIFO waiting forever in the open: opened with `O_NONBLOCK`, cleared once it is known to be a
/// regular file).
pub(crate) fn open_existing(path: &Path, write: bool) -> Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io("fstat", 0, e))?
        .file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_char_device() {
            "a character device"
        } else {
            "not a regular file"
        };
        return Err(Error::NotATxheap {
            detail: format!("{} is {what}: a heap is a regular file", path.display()),
        });
    }
    sys::clear_nonblock(&file).map_err(|e| Error::io("fcntl (clear O_NONBLOCK)", 0, e))?;
    Ok(file)
}

/// Map the file over `max_size` bytes of address space, or `reserve` where that is more
/// (`Options::reserve`: room for `Heap::set_max_size`); a refusal for lack of address space is
/// [`Error::AddressSpace`], naming the size. (ENOMEM from the kernel; EINVAL under some
/// emulators, such as valgrind, for a length they cannot place: the fd is a regular file, the
/// offset 0 and the flags fixed, so the size is the only argument that can be refused.)
fn map_file(
    file: &File,
    sb: &Superblock,
    len: u64,
    writable: bool,
    reserve: u64,
) -> Result<Mapping> {
    // A reserve that rounds past u64 (above 2^64 - 4096) is no size any address space has
    // (a review found it reported as an I/O error, "map file ... invalid input").
    let page = txheap_recovery::PAGE_SIZE;
    let Some(reserved) = reserve.div_ceil(page).checked_mul(page) else {
        return Err(Error::AddressSpace {
            max_size: reserve,
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    };
    let reserved = reserved.max(sb.max_size);
    Mapping::new(file, reserved, len.min(sb.max_size), writable).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EINVAL)) {
            // The heap's mappings are private and writable (a read-only open's too, for
            // replay), which Linux counts in full against the data size limit: name it when
            // it is what the reservation passes (a review found a 4 GiB heap refused under a
            // 2 GiB `ulimit -d`, the message blaming only the address space).
            let source = match crate::sys::data_limit() {
                Some(limit) if reserved.saturating_add(data_in_use()) > limit => io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; the mapping counts, with the process's other private memory, \
                         against the data size limit RLIMIT_DATA of {limit} bytes (`ulimit -d`): \
                         raise it"
                    ),
                ),
                _ => e,
            };
            Error::AddressSpace {
                max_size: reserved,
                source,
            }
        } else {
            Error::io("map file", 0, e)
        }
    })
}

/// The process's private writable memory (`VmData` of `/proc/self/status`, in bytes), which the
/// data size limit counts with a new mapping (a review found a second heap refused by the limit
/// without it named: each heap fitted the limit alone); 0 where unknown.
fn data_in_use() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmData:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

fn stat(storage: &FileStorage) -> Result<u64> {
    storage.len().map_err(|e| Error::io("stat", 0, e))
}

/// A new storage handle on `file`; `window` bytes at its start may take range barriers.
fn new_storage(file: &Arc<File>, options: &Options, window: u64) -> Result<FileStorage> {
    let store = window > 0 && options.durability == Durability::None;
    storage_with(file, options, window, store)
}

/// `new`, which replaces `old` for the rest of an open (recovery's storage, then the
/// writer's), sharing `old`'s test hooks: `Options::faults` counts every call of the handle
/// from its first on, as documented (a plan given fresh to each storage restarted its count
/// after recovery's barrier: found by review).
#[cfg_attr(not(feature = "test-hooks"), allow(unused_mut, unused_variables))]
fn sharing_hooks(old: &FileStorage, mut new: FileStorage) -> FileStorage {
    #[cfg(feature = "test-hooks")]
    {
        new.hooks = old.hooks.clone();
    }
    new
}

/// [`new_storage`], saying whether writes inside the window go through it (`store`: the
/// writer under `None`) or only its range barriers do.
fn storage_with(
    file: &Arc<File>,
    options: &Options,
    window: u64,
    store: bool,
) -> Result<FileStorage> {
    #[allow(unused_mut)]
    let mut st =
        FileStorage::new(file.clone(), window, store).map_err(|e| Error::io("storage", 0, e))?;
    #[cfg(feature = "test-hooks")]
    {
        st.hooks.set_trace(options.trace.clone());
        if let Some(plan) = options.faults {
            st.hooks.set_faults(plan);
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = options;
    Ok(st)
}

/// Create a new heap file at `path` (see `Heap::create`).
pub(crate) fn create(path: &Path, options: &Options) -> Result<Opened> {
    options.validate()?;
    phase!(CREATE);
    // Everything that can fail, including the reservation of `max_size` bytes of address
    // space, happens before the file is linked into place: a create that fails leaves nothing
    // at `path`.
    publish_new_file(path, "new", |file| build_new(path, file, options))
}

/// Build a new file for `path` under a hidden temporary name beside it
/// (`.NAME.txheap-KIND-PID-N`, created with `O_EXCL`): `build` fills it (and makes it durable),
/// then it is hard-linked to `path` (a link never replaces a file: one that appeared meanwhile is
/// `AlreadyExists`), the temporary name removed and the directory synced. If anything fails,
/// nothing is left at `path`. New heaps (`create`) and copies (`backup.rs`) are made this way.
/// A process killed meanwhile leaves its temporary file (never read; it may be removed); a name
/// that exists already is skipped, never reused.
pub(crate) fn publish_new_file<T>(
    path: &Path,
    kind: &str,
    build: impl FnOnce(File) -> Result<T>,
) -> Result<T> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::InvalidOptions {
        what: format!("{} has no file name", path.display()),
    })?;
    /// The destination's name in the temporary one, cut to `TEMP_STEM_MAX` bytes (at a
    /// character boundary): a legal name near `NAME_MAX` (255) would otherwise make the
    /// temporary name too long (a review found `File name too long` for a 250-byte name).
    /// The process id and counter make it unique; the stem only tells a person whose it is.
    fn temp_stem(name: &str) -> &str {
        let mut end = name.len().min(TEMP_STEM_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        &name[..end]
    }
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    // A name that exists already is another's: left by a process that crashed while it
    // created or copied a heap here, whose process id this one now has (ids are reused: the
    // kill -9 campaign met it after 14,245 children), or a live process of another pid
    // namespace. Neither may be touched; the next number is tried instead.
    let (tmp, file) = {
        let mut attempt = 0;
        loop {
            let tmp = dir.join(format!(
                ".{}.txheap-{kind}-{}-{}",
                temp_stem(&name.to_string_lossy()),
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(file) => break (tmp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < TEMP_NAME_TRIES => {
                    attempt += 1;
                }
                Err(e) => return Err(Error::io("create temporary file", 0, e)),
            }
        }
    };
    let built = build(file).and_then(|t| {
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                Error::io("link new file into place", 0, e)
            }
        })?;
        Ok(t)
    });
    let _ = std::fs::remove_file(&tmp);
    let t = built?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", 0, e))?;
    Ok(t)
}

/// Format `file` and open it as the heap at `path` (which `publish_new_file` links it to).
fn build_new(path: &Path, file: File, options: &Options) -> Result<Opened> {
    lock_file(&file, path, true)?;
    let shared_file = Arc::new(file.try_clone().map_err(|e| Error::io("dup", 0, e))?);
    let mut st = new_storage(&shared_file, &Options::new(), 0)?;
    let sb = recovery::format(&mut st, options.log_size, options.max_size)?;
    let geo = Geometry::of(&sb);
    st.write_at(geo.heap_offset, &HeapHeader::default().encode())
        .map_err(|e| Error::io("write heap header", geo.heap_offset, e))?;
    let zeros = vec![0u8; (HEAP_META_LEN - HEAP_HEADER_LEN) as usize];
    st.write_at(geo.heap_offset + HEAP_HEADER_LEN, &zeros)
        .map_err(|e| Error::io("write root area", geo.heap_offset, e))?;
    let len = options
        .initial_size
        .min(options.max_size)
        .max(geo.chunk_area);
    st.grow(len)
        .map_err(|e| Error::io("preallocate (posix_fallocate)", geo.chunk_area, e))?;
    st.barrier_all()
        .map_err(|e| Error::io("fdatasync new file", 0, e))?;
    let mut opened = from_file(path, file, options, false)?;
    // A new log holds only its sentinel (generation 0) and zeros: nothing could replay later.
    opened.writer.clear_kept_generation();
    Ok(opened)
}

/// Open an existing heap for writing, recovering it (see `Heap::open`).
pub(crate) fn open(path: &Path, options: &Options) -> Result<Opened> {
    let deadline = Instant::now().checked_add(options.lock_wait);
    loop {
        let file = open_existing(path, true)?;
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        lock_file_waiting(&file, path, true, left)?;
        // After a wait, the path may name another file than the one locked (a backup restored
        // over it by a rename while the holder had it): recovering the old, unlinked one
        // would put this handle's commits where nobody finds them. Open the path again.
        if options.lock_wait.is_zero() || same_file(&file, path)? {
            return from_file(path, file, options, false);
        }
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn same_file(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata().map_err(|e| Error::io("fstat", 0, e))?;
    let named = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
    Ok(held.dev() == named.dev() && held.ino() == named.ino())
}

/// How long a writable open waits at least for reads in other processes (beside an earlier
/// writer) to end, whatever `Options::lock_wait` says: such reads are short, and an open that
/// refused every one it met would fail at random beside a reading process; a read held longer
/// (a reader paused in it) makes the open `Locked`.
const READ_GRACE: Duration = Duration::from_secs(1);

/// How long a read-only open waits for a writer that holds the file to say it answers readers
/// beside it (the writer's open takes its `flock` before it can say so).
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Open an existing heap read-only (see `Heap::open_read_only`): under a shared `flock`,
/// replaying the log privately; or, if a writer holds the file, beside it, following its log
/// (docs/ARCHITECTURE.md section 17).
pub(crate) fn open_read_only(path: &Path) -> Result<Opened> {
    // A writer that holds the file but does not answer yet may be opening: it takes its
    // `flock` first and says it answers a little later (`Foreign::probe`). Asked again for a
    // while before the answer counts (a review found `Locked` in that gap, 1 to 71 times in
    // 9,000 opens beside a writer reopening in a loop). One that still does not answer is of
    // an older txheap.
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    // (Again when the writer closed between the two questions below.)
    for _ in 0..10_000 {
        let file = open_existing(path, false)?;
        match sys::try_flock(&file, false) {
            Ok(true) => return from_file(path, file, &Options::new(), true),
            Ok(false) => {}
            Err(e) => return Err(Error::io("flock", 0, e)),
        }
        match crate::foreign::Foreign::writer_answers(&file) {
            Some(true) => return open_live(path, file),
            // A writer that does not answer readers beside it (yet, or at all), if it still
            // holds the file; else the writer closed meanwhile: start again.
            Some(false) => match sys::try_flock(&file, false) {
                Ok(false) if started.elapsed() >= ANSWER_WAIT => break,
                Ok(false) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Ok(true) => continue,
                Err(e) => return Err(Error::io("flock", 0, e)),
            },
            None => break,
        }
    }
    Err(Error::Locked {
        path: path.to_path_buf(),
    })
}

/// A read-only heap beside the writer that holds `file`'s `flock` and answers readers beside
/// it: no lock of its own (the writer may close and another open meanwhile), and its state
/// built from the file and the writer's log at every `read` (`foreign::Live`).
fn open_live(path: &Path, file: File) -> Result<Opened> {
    phase!(OPEN);
    let file = Arc::new(file);
    let storage = new_storage(&file, &Options::new(), 0)?;
    // The geometry, to map the file (it never changes; the first entry below checks it): the
    // state itself comes from that entry, under its lock.
    let (sb, slot, len) = superblock_of(&storage)?;
    let map = map_file(&file, &sb, len, false, 0)?;
    let geo = Geometry::of(&sb);
    map.advise(geo.heap_offset, u64::MAX, Options::new().access.madvise())
        .map_err(|e| Error::io("madvise the heap's mapping", geo.heap_offset, e))?;
    let writer = Writer::new(
        storage,
        (sb, slot),
        (0, sb.next_txid),
        Allocator::empty(geo.chunk_area, 0),
        HeapHeader::default(),
        false,
    );
    let mut shared = Shared::new(
        path.to_path_buf(),
        (file.clone(), None),
        (map, None),
        geo,
        true,
        Durability::Full,
        (0, HeapHeader::default()),
    );
    let live = crate::foreign::Live::new(file.clone(), &sb)?;
    {
        // The first entry's update always resets the registry to the file's state.
        let mut entry = live.enter()?;
        let update = entry.refresh()?;
        entry.apply(update, &shared, &file)?;
    }
    shared.live = Some(live);
    phase!(IDLE);
    Ok(Opened { shared, writer })
}

/// Open an existing heap read-only under a shared `flock` only (`Locked` while a writer holds
/// it): for the inspection functions, which read a writer's heap their own way.
pub(crate) fn open_read_only_here(path: &Path) -> Result<Opened> {
    let file = open_shared(path)?;
    from_file(path, file, &Options::new(), true)
}

/// A read-only heap that salvages: the frames before a damaged one are replayed (into the
/// private mapping only), and a chunk table that its walk refuses is tolerated (reads need only
/// the header's chunk count; the allocator then knows no chunk).
pub(crate) fn salvage_read_only(path: &Path) -> Result<Opened> {
    let file = open_shared(path)?;
    from_file(path, file, &Options::new().salvage(true), true)
}

/// The file at `path`, opened for reading under a shared lock (what read-only handles and the
/// inspection tools hold).
pub(crate) fn open_shared(path: &Path) -> Result<File> {
    let file = open_existing(path, false)?;
    lock_file(&file, path, false)?;
    Ok(file)
}

/// A read-only heap over `file`, which [`open_shared`] opened.
pub(crate) fn read_only_from(path: &Path, file: File) -> Result<Opened> {
    from_file(path, file, &Options::new(), true)
}

fn from_file(path: &Path, file: File, options: &Options, read_only: bool) -> Result<Opened> {
    phase!(OPEN);
    let file = Arc::new(file);
    let mut storage = new_storage(&file, options, 0)?;
    // Before recovery, whose checkpoint rewrites the older slot: a damaged slot is reported
    // (Stats::superblock_damage), even where the fallback to the other one loses nothing.
    let damaged = recovery::damaged_slots(&storage)?;
    // A writable handle shuts readers in other processes out while it recovers (a reader
    // left from an earlier writer may be reading; replay and the checkpoint change what it
    // reads), then answers them for as long as it is open (docs/ARCHITECTURE.md section 17).
    let foreign = if read_only {
        None
    } else {
        crate::foreign::Foreign::probe(&file)
    };
    let (log, map, rmap) = if read_only {
        let (log, map) = replay_read_only(&file, &storage, options.salvage)?;
        (log, map, None)
    } else {
        let _excluded = match &foreign {
            Some(f) => Some(f.exclude_within(options.lock_wait.max(READ_GRACE), path)?),
            None => None,
        };
        let (log, map, rmap) = recover_writable(&file, &mut storage, options)?;
        (log, map, Some(rmap))
    };
    let geo = Geometry::of(&log.sb);
    // The body's faults read what the user's access pattern needs (not the kernel's default
    // readahead of up to several MiB per cold fault, which made a cold open read the whole
    // file); the walk below prefetches the tables it reads.
    map.advise(geo.heap_offset, u64::MAX, options.access.madvise())
        .map_err(|e| Error::io("madvise the heap's mapping", geo.heap_offset, e))?;
    let (alloc, header) = rebuild(&log.sb, &map, read_only, read_only && options.salvage)?;
    let storage = if read_only {
        storage
    } else {
        // A clean close gave the log's blocks back (`Writer::close`): take them again now, so
        // that a full disk shows here, named, and not as a failing commit later. (Under `None`
        // the window would allocate them when it is made, below, but its error could name
        // only "storage": a review found that.)
        let log = log.sb.log_offset();
        crate::platform::preallocate(&file, log, geo.heap_offset - log)
            .map_err(|e| Error::io("allocate the log's blocks (posix_fallocate)", log, e))?;
        sharing_hooks(&storage, new_storage(&file, options, geo.heap_offset)?)
    };
    let mut writer = Writer::new(
        storage,
        (log.sb, log.slot),
        (log.tail, log.next_txid),
        alloc,
        header,
        log.kept_generation,
    );
    if !log.clean || !damaged.is_empty() {
        // A torn frame at the log's start or past its frames, or a damaged superblock slot:
        // the close checkpoints even if nothing is committed (a new generation and sentinel,
        // both slots sound again), so that later opens find a clean log.
        writer.tidy_at_close();
    }
    if let Some(m) = &rmap {
        m.advise(geo.heap_offset, u64::MAX, options.access.madvise())
            .map_err(|e| Error::io("madvise the heap's mapping", geo.heap_offset, e))?;
    }
    let mut shared = Shared::new(
        path.to_path_buf(),
        (file, writer.storage.log_syncer()),
        (map, rmap),
        geo,
        read_only,
        options.durability,
        (log.next_txid.saturating_sub(1), header),
    );
    shared.salvaged = log.salvaged;
    shared.foreign = foreign;
    shared.in_place_min = options.in_place_min;
    shared.keep_log_blocks = options.keep_log_blocks;
    shared.superblock_damage = (!damaged.is_empty()).then(|| {
        damaged
            .iter()
            .map(|(slot, what)| format!("slot {slot:?} at offset {}: {what}", slot.offset()))
            .collect::<Vec<_>>()
            .join("; ")
    });
    if !read_only && log.kept_generation && log.tail > 0 {
        // Frames replayed and kept in the log: the open's result stays durable only as long as
        // they do. Barrier them (recovery's barrier did, unless no frame had a range) and write
        // the log-start witness (section 3, step 5b), so that a lost write of the first frame
        // cannot read as an empty log over a replayed heap until the first checkpoint.
        writer.flush_acknowledged(&shared)?;
    }
    phase!(IDLE);
    Ok(Opened { shared, writer })
}

/// The current superblock and its slot, and the file's length, refusing a file shorter than
/// the heap that superblock describes (`Truncated`, naming both lengths) before anything is
/// mapped or read by its geometry.
fn superblock_of(storage: &FileStorage) -> Result<(Superblock, Slot, u64)> {
    let (sb, slot) = recovery::select_superblock(storage)?;
    let len = stat(storage)?;
    if len < sb.min_file_len() {
        return Err(Error::Truncated {
            len,
            needed: sb.min_file_len(),
        });
    }
    Ok((sb, slot, len))
}

/// Read-only: map the file privately and replay committed frames into the mapping only.
fn replay_read_only(
    file: &File,
    storage: &FileStorage,
    salvage: bool,
) -> Result<(LogState, Mapping)> {
    let (sb, slot, len) = superblock_of(storage)?;
    let map = map_file(file, &sb, len, true, 0)?;
    let mut apply = |off: u64, bytes: &[u8]| -> std::result::Result<(), RecoveryError> {
        let end = off + bytes.len() as u64;
        if end > map.mapped_len() && end <= map.reserved_len() {
            // A committed frame writes past the file's end: its growth was lost in a crash. A
            // writable open grows the file with zeros and replays; here private zero pages stand
            // in for the missing part.
            // SAFETY: page-aligned, and no slice into the mapping exists yet.
            unsafe { map.zero_tail(len.div_ceil(sys::PAGE as u64) * sys::PAGE as u64) }.map_err(
                |e| RecoveryError::Io {
                    op: "map zero pages past the file's end",
                    offset: len,
                    source: e,
                },
            )?;
        }
        if end > map.mapped_len() {
            return Err(RecoveryError::Truncated { len, needed: end });
        }
        // SAFETY: in bounds (checked above), the mapping is writable and private, and no slice
        // into it exists yet (the heap is not built).
        unsafe { map.write_private(off, bytes) };
        Ok(())
    };
    let scan = recovery::scan_log(storage, &sb, &mut apply)?;
    match scan.damage {
        // Refused, as a writable open does, unless salvaging: the frames before the damaged one
        // are replayed already (into the private mapping; nothing is written).
        Some(d) if !salvage => return Err(d.error().into()),
        _ => {}
    }
    let log = LogState {
        sb,
        slot,
        tail: scan.end_offset,
        next_txid: scan.next_txid,
        salvaged: scan.damage.map(|d| (d.txid, d.last_txid)),
        kept_generation: false,
        clean: true,
    };
    Ok((log, map))
}

/// Writable: reserve the mappings (the writer's, writable, and its readers', read-only), recover
/// (check the heap as replay will leave it, barrier the log, replay; the frames stay in the
/// log, docs/ARCHITECTURE.md section 5 step 3), then grow the file to its chunk count.
fn recover_writable(
    file: &Arc<File>,
    storage: &mut FileStorage,
    options: &Options,
) -> Result<(LogState, Mapping, Mapping)> {
    let on_damage = if options.salvage {
        OnDamage::Salvage
    } else {
        OnDamage::Refuse
    };
    // Reserve the address space first: a refusal for lack of it must come before recovery
    // writes a byte. (The mapping is private and nothing reads it until the heap is built;
    // recovery's pwrites show through it like any file change.)
    // A file shorter than the heap its superblock describes is refused here, before a window
    // over a log that is not there is asked for (a hostile log size of 2^50 bytes failed that
    // mapping, an I/O error that named neither length).
    let (sb0, _, _) = superblock_of(storage)?;
    // Recovery's barrier before replay covers the log's frames only: a window over the
    // superblocks and the log takes range barriers (`msync`; nothing is stored through it, and
    // making it writes nothing). Without it that barrier was an `fdatasync` of the whole file,
    // which also wrote back a killed writer's dirty heap pages, pages that replay dirties again
    // and the next checkpoint writes a second time.
    *storage = sharing_hooks(
        storage,
        storage_with(file, options, sb0.heap_offset(), false)?,
    );
    // The sizes given to open: applied below, or refused here, before anything is written.
    let len0 = stat(storage)?;
    let max_size = options.max_size_for_open(&sb0, len0)?;
    let map = map_file(
        file,
        &Superblock { max_size, ..sb0 },
        len0,
        true,
        options.reserve,
    )?;
    // The readers' mapping too, which only ever shows the file (the writer's private copies of
    // frames not yet written there stay out of their sight): a review found it made after
    // recovery, so that an open refused for the address space of the second mapping had
    // already written its new max_size and grown the file, and the next plain open was
    // refused.
    let rmap = map_file(
        file,
        &Superblock { max_size, ..sb0 },
        len0,
        false,
        options.reserve,
    )?;
    // Frames to replay: first check the heap as replay will leave it (header, chunk count, the
    // chunk tables), so that a damaged heap is refused before recovery writes a
    // byte.
    // Replayed frames stay in the log (no checkpoint: its heap barrier was a third of the open
    // of a 64 MiB log, W5-replay); the first commit checkpoints before its frame (the
    // generation is kept: section 5), and so does the close.
    let rec =
        recovery::recover_checked_keeping_log(storage, on_damage, |sb, view| -> Result<()> {
            let header = read_heap_header(sb, &mut |off, buf| Ok(view.read(off, buf)?))?;
            fits_max_size(needed_len(sb, &header)?, max_size, &header)?;
            let failed = std::cell::Cell::new(None);
            let read = |off: u64, buf: &mut [u8]| {
                if let Err(e) = view.read(off, buf) {
                    buf.fill(0);
                    failed.set(Some(e));
                }
            };
            let walked = Allocator::rebuild(Geometry::of(sb).chunk_area, header.chunk_count, &read);
            match failed.into_inner() {
                Some(e) => Err(e.into()),
                None => walked.map(|_| ()),
            }
        })?;
    phase!(OPEN_REBUILD);
    let sb = rec.superblock;
    // A checkpoint keeps the geometry, so the reservation made above still fits.
    if sb.max_size != sb0.max_size {
        return Err(Error::Corrupt {
            offset: 0,
            what: format!(
                "the superblock's max_size changed during recovery ({} -> {})",
                sb0.max_size, sb.max_size
            ),
        });
    }
    grow_to_chunk_count(file, storage, &sb, max_size)?;
    let (mut sb, mut slot, mut checkpointed) = (sb, rec.slot, rec.checkpointed);
    let (mut tail, mut next_txid) = if checkpointed {
        (0, sb.next_txid)
    } else {
        (rec.scan.end_offset, rec.scan.next_txid)
    };
    if max_size != sb.max_size {
        // A new max_size: a checkpoint writes it in the next superblock (the log is empty
        // after it, as after any checkpoint; until its switch, a crash keeps the old one).
        let next = Superblock { max_size, ..sb };
        (sb, slot) = recovery::checkpoint(storage, &next, slot, next_txid)?;
        (tail, next_txid, checkpointed) = (0, sb.next_txid, true);
    }
    if options.given.initial_size && options.initial_size > stat(storage)? {
        // Blocks for the heap to grow into (the chunk count does not change).
        storage
            .grow(options.initial_size)
            .map_err(|e| Error::io("grow file to initial_size", options.initial_size, e))?;
    }
    let len = stat(storage)?;
    map.extend(len.min(sb.max_size))
        .map_err(|e| Error::io("map grown file", len, e))?;
    rmap.extend(len.min(sb.max_size))
        .map_err(|e| Error::io("map grown file", len, e))?;
    // The sentinel at the log's start: the scan stopped at offset 0 on a frame of generation 0.
    let clean = checkpointed
        || (rec.scan.frames == 0
            && rec.scan.stop.offset == 0
            && matches!(
                rec.scan.stop.reason,
                recovery::txheap_log::StopReason::OtherGeneration {
                    found: recovery::txheap_log::SENTINEL_GENERATION
                }
            ));
    let log = LogState {
        sb,
        slot,
        tail,
        next_txid,
        salvaged: rec.scan.damage.map(|d| (d.txid, d.last_txid)),
        kept_generation: !checkpointed,
        clean,
    };
    Ok((log, map, rmap))
}

/// Committed frames may reference chunks whose growth did not survive a power cut: grow the
/// file to the chunk count. But first walk the chunk tables as they are (bytes past the end
/// read as zeros, which no valid entry is), so that a damaged heap header is refused before
/// the file changes, not after it grew. A `max_size` given to open below the heap's extent is
/// refused here too, before the growth and before the checkpoint that would record it.
fn grow_to_chunk_count(
    file: &File,
    storage: &mut FileStorage,
    sb: &Superblock,
    max_size: u64,
) -> Result<()> {
    let read = |off: u64, buf: &mut [u8]| {
        buf.fill(0);
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
    };
    let header = read_heap_header(sb, &mut |off, buf| {
        read(off, buf);
        Ok(())
    })?;
    let needed = needed_len(sb, &header)?;
    fits_max_size(needed, max_size, &header)?;
    if needed > stat(storage)? {
        Allocator::rebuild(Geometry::of(sb).chunk_area, header.chunk_count, &read)?;
    }
    storage
        .grow(needed)
        .map_err(|e| Error::io("grow file to its chunk count", needed, e))
}

/// Refuse a `max_size` given to open below the `needed` bytes of the heap as recovered (its
/// chunk count): checked against the file's length only, it let a file whose last growth was
/// lost in a crash (shorter than its committed chunk count) be opened with such a `max_size`,
/// and the checkpoint that recorded it left a heap that every later open refused as `Corrupt`
/// (found by review).
fn fits_max_size(needed: u64, max_size: u64, header: &HeapHeader) -> Result<()> {
    if needed <= max_size {
        return Ok(());
    }
    Err(Error::InvalidOptions {
        what: format!(
            "max_size {max_size} given to open is below the {needed} bytes this heap's {} chunks \
             need (the file is shorter: its last growth was lost in a crash, and recovery grows \
             it back); open with a max_size of at least {needed}, or without max_size",
            header.chunk_count
        ),
    })
}

/// The allocator and the heap header, rebuilt from the mapping as recovery left it. A
/// read-only open of a file cut short (its chunk count reaches past its end) reads zeros there,
/// as the writable open does after growing it back: both accept or refuse the same files.
fn rebuild(
    sb: &Superblock,
    map: &Mapping,
    read_only: bool,
    tolerate_tables: bool,
) -> Result<(Allocator, HeapHeader)> {
    let geo = Geometry::of(sb);
    let read = |off: u64, buf: &mut [u8]| {
        // SAFETY: the heap is not shared yet, so nothing writes the mapping while we read it;
        // the header lies below min_file_len and every chunk table below `needed`, both
        // mapped (checked before each read below).
        buf.copy_from_slice(unsafe { map.slice(off, buf.len()) })
    };
    let header = read_heap_header(sb, &mut |off, buf| {
        if off + buf.len() as u64 > map.mapped_len() {
            return Err(Error::Truncated {
                len: map.mapped_len(),
                needed: off + buf.len() as u64,
            });
        }
        read(off, buf);
        Ok(())
    })?;
    let needed = needed_len(sb, &header)?;
    if map.mapped_len() < needed && read_only {
        // SAFETY: page-aligned (mapped_len is), and no slice into the mapping exists yet.
        unsafe { map.zero_tail(map.mapped_len()) }
            .map_err(|e| Error::io("map zero pages past the file's end", map.mapped_len(), e))?;
    }
    if map.mapped_len() < needed {
        return Err(Error::Truncated {
            len: map.mapped_len(),
            needed,
        });
    }
    // One readahead per zone table instead of a fault per page of it.
    for (off, len) in Allocator::table_ranges(geo.chunk_area, header.chunk_count) {
        map.advise(off, len, libc::MADV_WILLNEED)
            .map_err(|e| Error::io("madvise (prefetch the chunk tables)", off, e))?;
    }
    match Allocator::rebuild(geo.chunk_area, header.chunk_count, &read) {
        Ok(alloc) => Ok((alloc, header)),
        // A read-only salvage: the tables a salvage left inconsistent are not needed to read.
        Err(Error::Corrupt { .. }) if tolerate_tables => {
            Ok((Allocator::rebuild(geo.chunk_area, 0, &read)?, header))
        }
        Err(e) => Err(e),
    }
}

/// The byte ranges `(offset, len)` of a heap file image that its heap reaches as the image
/// stands (no log replay): the heap header, the root area, every chunk-table entry the walk
/// reads, each run's
/// bitmap and allocated blocks, each large object. A write anywhere else in the heap region
/// changes nothing that an open could see. The crash tests' write-ahead check calls it on the
/// durable image as recovery would leave it. Feature `test-hooks`.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("r.heap");
/// let heap = txheap::Heap::create(&p, txheap::Options::new())?;
/// let obj = heap.transaction(|tx| tx.alloc(7u64))?;
/// heap.close()?;
/// let ranges = txheap::reachable_ranges(&std::fs::read(&p).unwrap())?;
/// assert!(ranges.iter().any(|&(o, l)| o <= obj.offset() && obj.offset() + 8 <= o + l));
/// # Ok::<(), txheap::Error>(())
/// ```
#[cfg(feature = "test-hooks")]
pub fn reachable_ranges(image: &[u8]) -> Result<Vec<(u64, u64)>> {
    let storage = txheap_recovery::MemStorage::from_bytes(image.to_vec());
    let (sb, _) = recovery::select_superblock(&storage)?;
    let geo = Geometry::of(&sb);
    let read = |off: u64, buf: &mut [u8]| {
        buf.fill(0);
        let start = (off as usize).min(image.len());
        let end = (off as usize).saturating_add(buf.len()).min(image.len());
        buf[..end - start].copy_from_slice(&image[start..end]);
    };
    let header = read_heap_header(&sb, &mut |off, buf| {
        read(off, buf);
        Ok(())
    })?;
    let mut out = vec![
        (geo.heap_offset, HEAP_HEADER_LEN),
        (geo.root_offset, crate::limits::ROOT_LEN_MAX),
    ];
    out.extend(Allocator::reachable(
        geo.chunk_area,
        header.chunk_count,
        &read,
    )?);
    Ok(out)
}
