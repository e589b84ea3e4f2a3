//! W7: a heap larger than RAM (opt-in: `--only W7`, since it writes about 1.5x RAM twice).
//!
//! The data set is N objects of exactly 1 MiB whose bytes are a pseudo-random function of the
//! object's index and the byte's position ([`expected`]), so any 64 bytes can be checked. Each
//! engine's store is filled, then measured cold in fresh child processes, then deleted before
//! the next engine's (the disk holds one store at a time). In order:
//!
//! 1. `limit-write` (`W7-fill`): the disk's sequential-write limit, `min(bytes, 4 GiB)` in
//!    16 MiB `pwrite`s, each followed by `fdatasync` (the fill's batching); the file is deleted
//!    at once.
//! 2. txheap: fill (16 objects per `Durability::Full` transaction, the root holding a
//!    `PSlice<PSlice<u8>>` index allocated first); cold `Heap::open`, `Heap::open_read_only` and
//!    `Heap::open` under `Durability::None`, each timed; `limit-odirect` (`W7-read`): random
//!    aligned 4 KiB `O_DIRECT` `pread`s of the heap file, the disk's random-read limit; cold
//!    random 64-byte reads; cold small `Full` transactions (64 bytes overwritten each).
//! 3. LMDB (key: big-endian index, value: the same 1 MiB, default durable flags): fill (16 puts
//!    per write transaction), cold random 64-byte reads, cold small transactions
//!    (read-modify-write of the whole value: LMDB's real cost for changing 64 bytes of it).
//!
//! "Cold": before each such child the parent syncs every file of the store and drops its pages
//! with `posix_fadvise(POSIX_FADV_DONTNEED)`, and (as root) writes 1 to
//! `/proc/sys/vm/drop_caches`. Each child first reads every file mapped into it (its binary,
//! shared libraries), so that code faults inside the timed region are not counted, and reports
//! the block-device bytes read and written in the timed region (`/proc/self/io`). The read and
//! transaction children open their store untimed; since an open may itself read much of the
//! file (txheap's does today: see the open rows), they then drop the file's pages that they do
//! not map once more (`posix_fadvise`), so that the timed reads start cold.
//!
//! The generation of object bytes is not timed: a fill's time is the sum of its transactions'
//! (or of the limit's `pwrite` + `fdatasync`) times. Read and transaction phases stop after
//! their count or 30 s, whichever comes first.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::{Database, EnvFlags};
use txheap::{Access, Durability, Heap, Options, PSlice, Tx};

use crate::parent::{fmt_count, fmt_num};
use crate::plan::Role;
use crate::sample::Sample;
use crate::BoxResult;

/// Bytes of every object.
pub const OBJECT: u64 = 1 << 20;
/// Objects per fill transaction; the sequential-write limit writes this many objects' bytes
/// (16 MiB) per `pwrite` + `fdatasync`.
const BATCH: u64 = 16;
/// Bytes read per random read (at a 64-aligned offset).
const READ_LEN: usize = 64;
/// txheap's log (a fill transaction logs only its index entries and chunk headers).
const LOG_SIZE: u64 = 64 << 20;
/// A read or transaction phase stops after this long even if its count is not reached.
const TIME_CAP: Duration = Duration::from_secs(30);
/// The sequential-write limit writes at most this much.
const LIMIT_WRITE_MAX: u64 = 4 << 30;
/// Default random reads per read phase.
pub const DEFAULT_READS: u64 = 20_000;
/// Default transactions per small-transaction phase.
pub const DEFAULT_TXS: u64 = 2_000;
const GIB: u64 = 1 << 30;
const MIB: f64 = (1 << 20) as f64;
const HEAP_FILE: &str = "w7.heap";
const LMDB_FILE: &str = "data.mdb";
const LIMIT_FILE: &str = "seqwrite.dat";
/// Written by a fill child: the number of objects, for the later children of that store.
const INFO: &str = "w7.info";
/// Written by txheap's fill: each object's file offset (little-endian `u64`s), so that the
/// `O_DIRECT` limit reads blocks that hold data (not the fallocated, never-written tail).
const OFFSETS: &str = "w7.offsets";
const FILL: &str = "W7-fill";

// ---- the data ---------------------------------------------------------------------------

/// SplitMix64's output function: a bijective mix of a 64-bit counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Little-endian word `w` (of 131,072) of object `object`.
fn word(object: u64, w: u64) -> u64 {
    mix(object << 17 | w)
}

/// Fill `out` (a whole number of objects) with the bytes of objects `first..`.
fn generate(first: u64, out: &mut [u8]) {
    for (k, obj) in out.chunks_mut(OBJECT as usize).enumerate() {
        for (w, c) in obj.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&word(first + k as u64, w as u64).to_le_bytes());
        }
    }
}

/// The 64 bytes at `off` (a multiple of 64) of object `object`, as filled.
fn expected(object: u64, off: u64) -> [u8; READ_LEN] {
    let mut b = [0u8; READ_LEN];
    for (k, c) in b.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word(object, off / 8 + k as u64).to_le_bytes());
    }
    b
}

/// The 64 bytes small transaction `t` writes.
fn tx_bytes(t: u64) -> [u8; READ_LEN] {
    let mut b = [0u8; READ_LEN];
    for (k, c) in b.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&mix(!(t << 3 | k as u64)).to_le_bytes());
    }
    b
}

/// A deterministic random sequence (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }

    /// A random object of `objects` and a random 64-aligned offset inside it.
    fn pick(&mut self, objects: u64) -> (u64, u64) {
        let object = self.below(objects);
        (
            object,
            self.below(OBJECT / READ_LEN as u64) * READ_LEN as u64,
        )
    }
}

/// The txheap heap's root: the index of the objects and how many are filled.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    index: PSlice<PSlice<u8>>,
    filled: u64,
    objects: u64,
}

/// txheap's `max_size` for `bytes` of objects: the objects (a 1 MiB object takes exactly four
/// 256 KiB chunks since format 3), 5% for the zone tables, the index, the log and a growth
/// step, plus 1 GiB.
pub fn heap_max_size(bytes: u64) -> u64 {
    (bytes / 20 * 21 + GIB).next_multiple_of(4096)
}

/// LMDB's map size (address space only; the file grows as pages are written).
fn lmdb_map_size(bytes: u64) -> usize {
    (heap_max_size(bytes) + 4 * GIB) as usize
}

// ---- process figures --------------------------------------------------------------------

/// `read_bytes` and `write_bytes` of `/proc/self/io`: bytes this process read from and caused
/// to be written to block devices.
fn io_now() -> BoxResult<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io")?;
    let field = |key: &str| -> BoxResult<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| format!("/proc/self/io has no {key}"))?;
        Ok(line.trim().parse()?)
    };
    Ok((field("read_bytes:")?, field("write_bytes:")?))
}

/// Disk bytes read and written from `start()` to `stop()`.
struct Meter((u64, u64));

impl Meter {
    fn start() -> BoxResult<Meter> {
        Ok(Meter(io_now()?))
    }

    fn stop(self, s: &mut Sample) -> BoxResult<()> {
        let (r, w) = io_now()?;
        s.disk_read = Some(r.saturating_sub(self.0 .0));
        s.disk_write = Some(w.saturating_sub(self.0 .1));
        Ok(())
    }
}

/// Read every file mapped into this process (its binary and shared libraries) once, so that
/// after a cache drop the code of the timed region faults in from the page cache, not the disk.
fn warm_mapped_files() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let mut seen: Vec<&str> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        if path.starts_with('/') && !seen.contains(&path) {
            seen.push(path);
            let _ = std::fs::read(path);
        }
    }
}

/// Run `op(k)` for k = 0, 1, ... until `ops` are done or [`TIME_CAP`] has passed, timing
/// each; returns the latencies and the whole loop's time.
fn timed_loop(
    ops: u64,
    mut op: impl FnMut(u64) -> BoxResult<()>,
) -> BoxResult<(Vec<Duration>, Duration)> {
    let mut lat = Vec::with_capacity(ops as usize);
    let start = Instant::now();
    for k in 0..ops {
        if start.elapsed() >= TIME_CAP {
            break;
        }
        let t = Instant::now();
        op(k)?;
        lat.push(t.elapsed());
    }
    Ok((lat, start.elapsed()))
}

/// A sample of `lat.len()` timed operations (engine and phase are filled in by [`run_child`]).
fn loop_sample(mut lat: Vec<Duration>, secs: Duration) -> Sample {
    Sample::new("", "", lat.len() as u64, secs, Some(&mut lat))
}

/// Length and allocated bytes of the file at `path`, into `s`.
fn file_sizes(path: &Path, s: &mut Sample) -> BoxResult<()> {
    let m = std::fs::metadata(path)?;
    s.file_len = Some(m.len());
    s.file_alloc = Some(m.blocks() * 512);
    Ok(())
}

fn write_info(dir: &Path, objects: u64) -> BoxResult<()> {
    Ok(std::fs::write(dir.join(INFO), format!("{objects}\n"))?)
}

fn read_info(dir: &Path) -> BoxResult<u64> {
    let text = std::fs::read_to_string(dir.join(INFO))
        .map_err(|e| format!("{INFO} (written by the fill): {e}"))?;
    Ok(text.trim().parse()?)
}

/// Drop the clean page-cache pages of `path` that no process maps (`posix_fadvise`).
fn evict(path: &Path) -> BoxResult<()> {
    let f = File::open(path)?;
    f.sync_data()?;
    crate::sys::fadvise_dontneed(&f)
}

// ---- children: shared drivers -----------------------------------------------------------

/// Fill: for each batch of up to [`BATCH`] objects, generate their bytes (not timed) and hand
/// them to `commit(first, bytes)` (timed). secs = the sum of the commits' times.
fn fill_batches(
    objects: u64,
    mut commit: impl FnMut(u64, &[u8]) -> BoxResult<()>,
) -> BoxResult<Sample> {
    let mut buf = vec![0u8; (BATCH * OBJECT) as usize];
    let mut lat = Vec::new();
    let meter = Meter::start()?;
    for first in (0..objects).step_by(BATCH as usize) {
        let n = BATCH.min(objects - first);
        let bytes = &mut buf[..(n * OBJECT) as usize];
        generate(first, bytes);
        let t = Instant::now();
        commit(first, bytes)?;
        lat.push(t.elapsed());
    }
    let secs = lat.iter().sum();
    let mut s = Sample::new("", "", objects, secs, Some(&mut lat));
    meter.stop(&mut s)?;
    s.bytes = objects * OBJECT;
    Ok(s)
}

/// Check 64 bytes of each of `n` random objects (and the last object) with `read`.
fn spot_check(
    objects: u64,
    n: u64,
    mut read: impl FnMut(u64, u64) -> BoxResult<[u8; READ_LEN]>,
) -> BoxResult<()> {
    let mut rng = Rng(0x5EED);
    for k in 0..=n {
        let (i, off) = if k == n {
            (objects - 1, OBJECT - READ_LEN as u64)
        } else {
            rng.pick(objects)
        };
        if read(i, off)? != expected(i, off) {
            return Err(format!("object {i}: wrong bytes at offset {off}").into());
        }
    }
    Ok(())
}

/// Cold random reads: `ops` (or 30 s of) reads of 64 bytes at a random 64-aligned offset of a
/// random object, each checked.
fn random_reads(
    objects: u64,
    ops: u64,
    mut read: impl FnMut(u64, u64) -> BoxResult<[u8; READ_LEN]>,
) -> BoxResult<Sample> {
    let mut rng = Rng(0x00DE_AD00);
    let meter = Meter::start()?;
    let (lat, secs) = timed_loop(ops, |_| {
        let (i, off) = rng.pick(objects);
        if read(i, off)? != expected(i, off) {
            return Err(format!("object {i}: wrong bytes at offset {off}").into());
        }
        Ok(())
    })?;
    let mut s = loop_sample(lat, secs);
    meter.stop(&mut s)?;
    Ok(s)
}

/// Cold small transactions: transaction t overwrites 64 bytes at a random 64-aligned offset of
/// a random object with [`tx_bytes`]`(t)`; afterwards (not timed) every overwritten range is
/// read back with `read`, and untouched ones by a spot check.
fn random_txs(
    objects: u64,
    ops: u64,
    mut write: impl FnMut(u64, u64, &[u8; READ_LEN]) -> BoxResult<()>,
    mut read: impl FnMut(u64, u64) -> BoxResult<[u8; READ_LEN]>,
) -> BoxResult<Sample> {
    let mut rng = Rng(0x7A7A_0000);
    let mut written: HashMap<(u64, u64), u64> = HashMap::new();
    let meter = Meter::start()?;
    let (lat, secs) = timed_loop(ops, |t| {
        let (i, off) = rng.pick(objects);
        write(i, off, &tx_bytes(t))?;
        written.insert((i, off), t);
        Ok(())
    })?;
    let mut s = loop_sample(lat, secs);
    meter.stop(&mut s)?;
    for (&(i, off), &t) in &written {
        if read(i, off)? != tx_bytes(t) {
            return Err(format!("object {i}: transaction {t}'s bytes at {off} are lost").into());
        }
    }
    let mut probe = Rng(0x0B5E);
    for _ in 0..64 {
        let (i, off) = probe.pick(objects);
        if !written.contains_key(&(i, off)) && read(i, off)? != expected(i, off) {
            return Err(format!("object {i}: untouched bytes at {off} changed").into());
        }
    }
    Ok(s)
}

// ---- children: the limits ---------------------------------------------------------------

/// `total` bytes (a whole number of MiB) written in 16 MiB `pwrite`s at the end of a new file,
/// each followed by `fdatasync`; the file is deleted afterwards.
fn limit_write(dir: &Path, total: u64) -> BoxResult<Sample> {
    let path = dir.join(LIMIT_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let mut s = fill_batches(total / OBJECT, |first, bytes| {
        file.write_all_at(bytes, first * OBJECT)?;
        file.sync_data()?;
        Ok(())
    })?;
    s.ops = s.bytes.div_ceil(BATCH * OBJECT);
    file_sizes(&path, &mut s)?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(s)
}

/// Random aligned 4 KiB `pread`s with `O_DIRECT` (aligned buffer) of the txheap heap file,
/// each of the block holding a random 64-byte piece of a random object (the objects' offsets
/// come from [`OFFSETS`]: reads of never-written, fallocated blocks would cost no disk I/O).
fn limit_odirect(dir: &Path, ops: u64) -> BoxResult<Sample> {
    const BLOCK: usize = 4096;
    let offsets: Vec<u64> = std::fs::read(dir.join(OFFSETS))?
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    if offsets.is_empty() {
        return Err(format!("{OFFSETS} lists no objects").into());
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.join(HEAP_FILE))?;
    let mut raw = vec![0u8; 2 * BLOCK];
    let at = raw.as_ptr().align_offset(BLOCK);
    let buf = &mut raw[at..at + BLOCK];
    let mut rng = Rng(0x0D1_0000);
    let meter = Meter::start()?;
    let (lat, secs) = timed_loop(ops, |_| {
        let (i, off) = rng.pick(offsets.len() as u64);
        let block = (offsets[i as usize] + off) / BLOCK as u64 * BLOCK as u64;
        file.read_exact_at(buf, block)?;
        Ok(())
    })?;
    let mut s = loop_sample(lat, secs);
    meter.stop(&mut s)?;
    s.bytes = s.ops * BLOCK as u64;
    Ok(s)
}

// ---- children: txheap -------------------------------------------------------------------

/// One fill transaction: allocate the objects in `bytes`, record them in the index from
/// `first` on, and count them in the root.
fn append_batch(
    tx: &mut Tx<'_>,
    index: PSlice<PSlice<u8>>,
    first: u64,
    bytes: &[u8],
) -> txheap::Result<()> {
    let mut slices = [PSlice::<u8>::empty(); BATCH as usize];
    let n = bytes.len() / OBJECT as usize;
    for (s, obj) in slices.iter_mut().zip(bytes.chunks(OBJECT as usize)) {
        *s = tx.alloc_slice(obj)?;
    }
    tx.write_slice(index, first, &slices[..n])?;
    let root = tx.root::<Root>()?;
    tx.get_mut(root)?.filled += n as u64;
    Ok(())
}

/// 64 bytes at `off` of object `i` through `heap.read`.
fn heap_read64(
    heap: &Heap,
    index: PSlice<PSlice<u8>>,
    i: u64,
    off: u64,
) -> BoxResult<[u8; READ_LEN]> {
    let entry = index.get(i).ok_or("object number past the index")?;
    let (start, end) = (off as usize, off as usize + READ_LEN);
    let got = heap.read(|r| {
        let obj = *r.get(entry)?;
        Ok(r.slice(obj)?
            .get(start..end)
            .map(|b| <[u8; READ_LEN]>::try_from(b).expect("64 bytes")))
    })?;
    got.ok_or_else(|| format!("object {i} is shorter than {end} bytes").into())
}

/// The root of a filled heap; fails unless it holds `objects` objects.
fn filled_root(heap: &Heap, objects: u64) -> BoxResult<Root> {
    let root = heap.read(|r| Ok(*r.get(r.root::<Root>()?)?))?;
    if root.filled != objects || root.index.len() != objects {
        return Err(format!(
            "the heap holds {} of {} objects, {objects} expected",
            root.filled, root.objects
        )
        .into());
    }
    Ok(root)
}

/// Create the heap and fill it with `objects` objects, 16 per `Durability::Full` transaction.
fn txheap_fill(dir: &Path, objects: u64) -> BoxResult<Sample> {
    let path = dir.join(HEAP_FILE);
    let options = Options::new()
        .max_size(heap_max_size(objects * OBJECT))
        .log_size(LOG_SIZE)
        .durability(Durability::Full);
    let heap = Heap::create(&path, options)?;
    let index = heap.transaction(|tx| {
        let index = tx.alloc_slice_zeroed::<PSlice<u8>>(objects)?;
        let root = tx.root::<Root>()?;
        *tx.get_mut(root)? = Root {
            index,
            filled: 0,
            objects,
        };
        Ok(index)
    })?;
    let mut s = fill_batches(objects, |first, bytes| {
        Ok(heap.transaction(|tx| append_batch(tx, index, first, bytes))?)
    })?;
    filled_root(&heap, objects)?;
    spot_check(objects, 64, |i, off| heap_read64(&heap, index, i, off))?;
    let offsets = heap.read(|r| {
        let index = r.slice(index)?;
        Ok(index
            .iter()
            .flat_map(|s| s.offset().to_le_bytes())
            .collect::<Vec<u8>>())
    })?;
    std::fs::write(dir.join(OFFSETS), offsets)?;
    heap.close()?;
    file_sizes(&path, &mut s)?;
    write_info(dir, objects)?;
    Ok(s)
}

/// How a measured open opens the heap.
#[derive(Clone, Copy)]
enum OpenMode {
    Full,
    ReadOnly,
    NoDurability,
}

/// Time one cold open of the filled heap; then check its root (not timed).
fn txheap_open(dir: &Path, mode: OpenMode) -> BoxResult<Sample> {
    let path = dir.join(HEAP_FILE);
    let objects = read_info(dir)?;
    let meter = Meter::start()?;
    let t = Instant::now();
    let heap = match mode {
        OpenMode::Full => Heap::open(&path, Options::new()),
        OpenMode::ReadOnly => Heap::open_read_only(&path),
        OpenMode::NoDurability => Heap::open(&path, Options::new().durability(Durability::None)),
    }?;
    let elapsed = t.elapsed();
    let mut s = Sample::new("", "", 1, elapsed, None);
    meter.stop(&mut s)?;
    filled_root(&heap, objects)?;
    heap.close()?;
    file_sizes(&path, &mut s)?;
    Ok(s)
}

fn open_full(dir: &Path, _ops: u64) -> BoxResult<Sample> {
    txheap_open(dir, OpenMode::Full)
}

fn open_read_only(dir: &Path, _ops: u64) -> BoxResult<Sample> {
    txheap_open(dir, OpenMode::ReadOnly)
}

fn open_none(dir: &Path, _ops: u64) -> BoxResult<Sample> {
    txheap_open(dir, OpenMode::NoDurability)
}

/// Open the filled heap (not timed) and return it with its index. The open may read much of
/// the file (the open rows say how much): the file's pages that this process does not map are
/// dropped again, so the phase that follows starts cold.
fn open_filled(dir: &Path, access: Access) -> BoxResult<(Heap, PSlice<PSlice<u8>>, u64)> {
    let objects = read_info(dir)?;
    let path = dir.join(HEAP_FILE);
    let heap = Heap::open(&path, Options::new().access(access))?;
    let index = filled_root(&heap, objects)?.index;
    evict(&path)?;
    Ok((heap, index, objects))
}

fn txheap_reads(dir: &Path, ops: u64) -> BoxResult<Sample> {
    txheap_reads_with(dir, ops, Access::Random)
}

/// The same reads with the kernel's default readahead: what `Access::Random` is measured
/// against.
fn txheap_reads_readahead(dir: &Path, ops: u64) -> BoxResult<Sample> {
    txheap_reads_with(dir, ops, Access::Normal)
}

fn txheap_reads_with(dir: &Path, ops: u64, access: Access) -> BoxResult<Sample> {
    let (heap, index, objects) = open_filled(dir, access)?;
    let s = random_reads(objects, ops, |i, off| heap_read64(&heap, index, i, off))?;
    heap.close()?;
    Ok(s)
}

fn txheap_txs(dir: &Path, ops: u64) -> BoxResult<Sample> {
    let (heap, index, objects) = open_filled(dir, Access::Random)?;
    let write = |i: u64, off: u64, bytes: &[u8; READ_LEN]| -> BoxResult<()> {
        let entry = index.get(i).ok_or("object number past the index")?;
        heap.transaction(|tx| {
            let obj = *tx.get(entry)?;
            tx.write_slice(obj, off, bytes)
        })?;
        Ok(())
    };
    let s = random_txs(objects, ops, write, |i, off| {
        heap_read64(&heap, index, i, off)
    })?;
    heap.close()?;
    Ok(s)
}

// ---- children: LMDB ---------------------------------------------------------------------

type Db<'e> = Database<'e, U64<BigEndian>, Bytes>;

/// Open (or create) the LMDB environment for `objects` objects in `dir` with LMDB's default
/// (durable) flags, and lend it with its unnamed database to `f`.
fn with_lmdb<R>(
    dir: &Path,
    objects: u64,
    f: impl FnOnce(&heed::Env, Db<'_>) -> BoxResult<R>,
) -> BoxResult<R> {
    let map = lmdb_map_size(objects * OBJECT);
    let env = crate::sys::lmdb_env(dir, map, EnvFlags::empty())?;
    let db = crate::engines::lmdb::unnamed_db(&env)?;
    f(&env, db)
}

/// 64 bytes at `off` of value `i`, in a read transaction of its own.
fn lmdb_read64(env: &heed::Env, db: Db<'_>, i: u64, off: u64) -> BoxResult<[u8; READ_LEN]> {
    let rtxn = env.read_txn()?;
    let value = db.get(&rtxn, &i)?.ok_or_else(|| format!("no key {i}"))?;
    let (start, end) = (off as usize, off as usize + READ_LEN);
    let b = value
        .get(start..end)
        .ok_or_else(|| format!("value {i} is shorter than {end} bytes"))?;
    Ok(b.try_into()?)
}

fn lmdb_fill(dir: &Path, objects: u64) -> BoxResult<Sample> {
    let mut s = with_lmdb(dir, objects, |env, db| {
        let s = fill_batches(objects, |first, bytes| {
            let mut wtxn = env.write_txn()?;
            for (k, obj) in bytes.chunks(OBJECT as usize).enumerate() {
                db.put(&mut wtxn, &(first + k as u64), obj)?;
            }
            wtxn.commit()?;
            Ok(())
        })?;
        spot_check(objects, 64, |i, off| lmdb_read64(env, db, i, off))?;
        Ok(s)
    })?;
    file_sizes(&dir.join(LMDB_FILE), &mut s)?;
    write_info(dir, objects)?;
    Ok(s)
}

fn lmdb_reads(dir: &Path, ops: u64) -> BoxResult<Sample> {
    let objects = read_info(dir)?;
    with_lmdb(dir, objects, |env, db| {
        evict(&dir.join(LMDB_FILE))?;
        random_reads(objects, ops, |i, off| lmdb_read64(env, db, i, off))
    })
}

fn lmdb_txs(dir: &Path, ops: u64) -> BoxResult<Sample> {
    let objects = read_info(dir)?;
    with_lmdb(dir, objects, |env, db| {
        evict(&dir.join(LMDB_FILE))?;
        let write = |i: u64, off: u64, bytes: &[u8; READ_LEN]| -> BoxResult<()> {
            let mut wtxn = env.write_txn()?;
            let mut value = db
                .get(&wtxn, &i)?
                .ok_or_else(|| format!("no key {i}"))?
                .to_vec();
            value[off as usize..off as usize + READ_LEN].copy_from_slice(bytes);
            db.put(&mut wtxn, &i, &value)?;
            wtxn.commit()?;
            Ok(())
        };
        random_txs(objects, ops, write, |i, off| lmdb_read64(env, db, i, off))
    })
}

// ---- the phases -------------------------------------------------------------------------

/// What a phase measures (and so its figure and its count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fill,
    Open,
    Read,
    Tx,
}

/// One W7 measurement: one engine in one phase, run as one child process.
pub struct Phase {
    /// Phase name, the child's workload argument (`W7-fill`, `W7-open`, ...).
    pub phase: &'static str,
    /// Engine name.
    pub engine: &'static str,
    /// Subject, peer or limit.
    pub role: Role,
    /// The setting, in words.
    pub setting: &'static str,
    kind: Kind,
    /// The directory (store) the phase works in, under the run's directory.
    store: &'static str,
    /// Whether the store's page cache is dropped before the child starts.
    cold: bool,
    run: fn(&Path, u64) -> BoxResult<Sample>,
}

const fn phase(
    (phase, engine, role, kind): (&'static str, &'static str, Role, Kind),
    setting: &'static str,
    store: &'static str,
    run: fn(&Path, u64) -> BoxResult<Sample>,
) -> Phase {
    Phase {
        phase,
        engine,
        role,
        setting,
        kind,
        store,
        cold: !matches!(kind, Kind::Fill),
        run,
    }
}

use Kind::{Fill, Open, Read};
use Role::{Limit, Peer, Subject};

/// Every W7 phase, in the order it runs (each store's phases together, the store deleted
/// before the next one's).
pub static PHASES: &[Phase] = &[
    phase(
        (FILL, "limit-write", Limit, Fill),
        "16 MiB pwrite + fdatasync, appending, min(size, 4 GiB)",
        "limit",
        limit_write,
    ),
    phase(
        (FILL, "txheap", Subject, Fill),
        "Durability::Full, log 64 MiB, 16 × 1 MiB alloc_slice per transaction",
        "txheap",
        txheap_fill,
    ),
    phase(
        ("W7-open", "txheap", Subject, Open),
        "cold Heap::open (Durability::Full)",
        "txheap",
        open_full,
    ),
    phase(
        ("W7-open-ro", "txheap", Subject, Open),
        "cold Heap::open_read_only",
        "txheap",
        open_read_only,
    ),
    phase(
        ("W7-open-none", "txheap", Subject, Open),
        "cold Heap::open with Durability::None",
        "txheap",
        open_none,
    ),
    phase(
        ("W7-read", "limit-odirect", Limit, Read),
        "O_DIRECT pread of a random aligned 4 KiB block of the heap file",
        "txheap",
        limit_odirect,
    ),
    phase(
        ("W7-read", "txheap", Subject, Read),
        "cold heap.read of 64 bytes of a random object (after an untimed open, unmapped pages dropped again)",
        "txheap",
        txheap_reads,
    ),
    phase(
        ("W7-read", "txheap-readahead", Peer, Read),
        "as txheap, but Options::access(Access::Normal): the kernel's default readahead",
        "txheap",
        txheap_reads_readahead,
    ),
    phase(
        ("W7-tx", "txheap", Subject, Kind::Tx),
        "Durability::Full transaction: write_slice of 64 bytes of a random object",
        "txheap",
        txheap_txs,
    ),
    phase(
        (FILL, "lmdb", Peer, Fill),
        "heed 0.23, default flags, 16 puts of 1 MiB per write transaction",
        "lmdb",
        lmdb_fill,
    ),
    phase(
        ("W7-read", "lmdb", Peer, Read),
        "cold get in a read transaction, 64 bytes of the value (after the open, pages dropped again)",
        "lmdb",
        lmdb_reads,
    ),
    phase(
        ("W7-tx", "lmdb", Peer, Kind::Tx),
        "write transaction: get, copy the 1 MiB value, change 64 bytes, put, commit (synced)",
        "lmdb",
        lmdb_txs,
    ),
];

/// Whether `workload` names a W7 phase (whose children [`run_child`] runs).
pub fn is_phase(workload: &str) -> bool {
    PHASES.iter().any(|p| p.phase == workload)
}

/// Print the W7 cases for `--list` (`CASE engine phase role w7`: run only by the W7 parent).
pub fn list() {
    for p in PHASES {
        println!("CASE {} {} {} w7", p.engine, p.phase, p.role.name());
    }
}

/// Run the W7 child `engine` in `phase` with `ops` (objects, bytes or operations) in `dir`.
pub fn run_child(engine: &str, phase: &str, ops: u64, dir: &Path) -> BoxResult<Sample> {
    let p = PHASES
        .iter()
        .find(|p| p.engine == engine && p.phase == phase)
        .ok_or_else(|| format!("no engine {engine} in {phase}"))?;
    warm_mapped_files();
    let mut s = (p.run)(dir, ops)?;
    s.engine = engine.to_string();
    s.workload = phase.to_string();
    Ok(s)
}

// ---- the parent -------------------------------------------------------------------------

/// W7's settings (command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bytes of objects (a whole number of MiB, at least 16 MiB).
    pub bytes: u64,
    /// Random reads per read phase.
    pub reads: u64,
    /// Transactions per small-transaction phase.
    pub txs: u64,
}

impl Config {
    /// `bytes` (default: 1.5 × MemTotal, rounded to MiB; rounded down to whole MiB), `reads`
    /// and `txs` (defaults 20,000 and 2,000).
    pub fn new(bytes: Option<u64>, reads: Option<u64>, txs: Option<u64>) -> BoxResult<Config> {
        let bytes = match bytes {
            Some(b) => b / OBJECT * OBJECT,
            None => default_bytes()?,
        };
        if bytes < BATCH * OBJECT {
            return Err(format!("--w7-bytes must be at least {} MiB", BATCH).into());
        }
        let cfg = Config {
            bytes,
            reads: reads.unwrap_or(DEFAULT_READS),
            txs: txs.unwrap_or(DEFAULT_TXS),
        };
        if cfg.reads == 0 || cfg.txs == 0 {
            return Err("--w7-reads and --w7-txs must be at least 1".into());
        }
        Ok(cfg)
    }

    fn objects(&self) -> u64 {
        self.bytes / OBJECT
    }

    fn ops(&self, p: &Phase) -> u64 {
        match p.kind {
            Fill if p.role == Limit => self.bytes.min(LIMIT_WRITE_MAX),
            Fill => self.objects(),
            Open => 1,
            Read => self.reads,
            Kind::Tx => self.txs,
        }
    }
}

/// MemTotal of /proc/meminfo in bytes.
fn mem_total() -> BoxResult<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no MemTotal in /proc/meminfo")?;
    Ok(kb * 1024)
}

/// 1.5 × MemTotal, rounded to MiB.
fn default_bytes() -> BoxResult<u64> {
    let b = mem_total()? as f64 * 1.5;
    Ok((b / OBJECT as f64).round() as u64 * OBJECT)
}

/// The largest single file W7 makes: txheap's heap can grow to its `max_size`.
fn largest_file(cfg: &Config) -> u64 {
    let lmdb = cfg.bytes + cfg.bytes / 128 + (64 << 20);
    heap_max_size(cfg.bytes)
        .max(lmdb)
        .max(cfg.bytes.min(LIMIT_WRITE_MAX))
}

/// Refuse to start unless the filesystem of `base` has room for the largest single file plus
/// 10% (statvfs).
pub fn preflight(cfg: &Config, base: &Path) -> BoxResult<()> {
    let largest = largest_file(cfg);
    let need = largest + largest / 10;
    let free = crate::sys::free_bytes(base)?;
    if free < need {
        return Err(format!(
            "W7 with {:.1} GiB of objects needs {:.1} GiB free in {} (its largest file, the heap \
             at its max_size of {:.1} GiB, plus 10%), but {:.1} GiB are free; pass a smaller \
             --w7-bytes or another --dir",
            cfg.bytes as f64 / GIB as f64,
            need as f64 / GIB as f64,
            base.display(),
            largest as f64 / GIB as f64,
            free as f64 / GIB as f64
        )
        .into());
    }
    Ok(())
}

/// Sync every file of `dir` and drop its pages from the page cache; as root, also drop the
/// whole clean page cache. Returns whether the latter worked.
fn drop_cache(dir: &Path) -> BoxResult<bool> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let f = File::open(&path)?;
            f.sync_data()?;
            crate::sys::fadvise_dontneed(&f)?;
        }
    }
    Ok(std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok())
}

/// Run the child of `p`; a failure is its error text (the run goes on).
fn spawn(exe: &Path, p: &Phase, ops: u64, dir: &Path) -> Result<Sample, String> {
    let out = Command::new(exe)
        .args([
            "--child",
            p.engine,
            p.phase,
            "--ops",
            &ops.to_string(),
            "--dir",
        ])
        .arg(dir)
        .env_remove("PMEM_IS_PMEM_FORCE")
        .output()
        .map_err(|e| format!("cannot run the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let text = stderr.trim().replace("txheap-bench: error: ", "");
        return Err(format!("{} ({})", text.replace('\n', " / "), out.status));
    }
    for line in stderr.lines() {
        eprintln!("    {line}");
    }
    stdout
        .lines()
        .find_map(Sample::parse)
        .filter(|s| s.engine == p.engine && s.workload == p.phase)
        .ok_or_else(|| format!("the child printed no RESULT line: {stdout}"))
}

/// Run one phase in `dir` (dropping the cache first if it is cold).
fn run_phase(cfg: &Config, exe: &Path, p: &Phase, dir: &Path) -> Result<Sample, String> {
    if p.cold {
        drop_cache(dir).map_err(|e| format!("cannot drop the page cache: {e}"))?;
    }
    spawn(exe, p, cfg.ops(p), dir)
}

/// What one phase gave.
type Outcome = (&'static Phase, Result<Sample, String>);

/// One line saying what W7 will do with `cfg` (for the run's header).
pub fn describe(cfg: &Config) -> BoxResult<String> {
    Ok(format!(
        "W7 {} objects of 1 MiB = {:.2} GiB ({:.2}x RAM); {} reads and {} transactions per \
         phase (or 30 s); heap max_size {:.1} GiB; largest file at most {:.1} GiB",
        fmt_count(cfg.objects() as f64),
        cfg.bytes as f64 / GIB as f64,
        cfg.bytes as f64 / mem_total()? as f64,
        fmt_count(cfg.reads as f64),
        fmt_count(cfg.txs as f64),
        heap_max_size(cfg.bytes) as f64 / GIB as f64,
        largest_file(cfg) as f64 / GIB as f64
    ))
}

/// Run W7: every phase in order, each store deleted before the next; then print the table
/// and the goals.
pub fn run(cfg: &Config, exe: &Path, work: &Path) -> BoxResult<()> {
    let started = Instant::now();
    eprintln!("[W7] {}", describe(cfg)?);
    let global_drop = std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (n, p) in PHASES.iter().enumerate() {
        let dir = work.join(format!("W7-{}", p.store));
        std::fs::create_dir_all(&dir)?;
        let fill_failed = outcomes
            .iter()
            .any(|(q, r)| q.store == p.store && q.kind == Fill && r.is_err());
        let r = if fill_failed {
            Err("not run: this store's fill failed".to_string())
        } else {
            run_phase(cfg, exe, p, &dir)
        };
        report_progress(p, &r, started);
        outcomes.push((p, r));
        if PHASES.get(n + 1).is_none_or(|q| q.store != p.store) {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    print_table(cfg, &outcomes, global_drop)?;
    print_goals(&outcomes);
    println!("\nW7 took {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}

fn report_progress(p: &Phase, r: &Result<Sample, String>, started: Instant) {
    let what = match r {
        Ok(s) => format!("{} ({:.3} s)", fmt_figure(p.kind, s), s.secs),
        Err(e) => format!("FAILED: {e}"),
    };
    eprintln!(
        "[{}] {:<14} {what}  ({:.1} s elapsed)",
        p.phase,
        p.engine,
        started.elapsed().as_secs_f64()
    );
}

// ---- the report -------------------------------------------------------------------------

/// The compared figure: bytes/s (fill), seconds (open), operations/s (read, tx).
fn figure(kind: Kind, s: &Sample) -> f64 {
    match kind {
        Fill => s.byte_rate(),
        Open => s.secs,
        Read | Kind::Tx => s.rate(),
    }
}

fn fmt_figure(kind: Kind, s: &Sample) -> String {
    let x = figure(kind, s);
    match kind {
        Fill => format!("{} MB/s", fmt_num(x / 1e6)),
        Open => format!("{} ms", fmt_num(x * 1e3)),
        Read => format!("{} reads/s", fmt_num(x)),
        Kind::Tx => format!("{} tx/s", fmt_num(x)),
    }
}

/// Bytes in B, KiB, MiB or GiB.
fn fmt_bytes(x: f64) -> String {
    if x < 1024.0 {
        format!("{x:.0} B")
    } else if x < MIB {
        format!("{} KiB", fmt_num(x / 1024.0))
    } else if x < GIB as f64 {
        format!("{} MiB", fmt_num(x / MIB))
    } else {
        format!("{} GiB", fmt_num(x / GIB as f64))
    }
}

/// The subject's sample in `phase`.
fn subject<'a>(outcomes: &'a [Outcome], phase: &str) -> Option<&'a Sample> {
    outcomes
        .iter()
        .find(|(p, _)| p.phase == phase && p.role == Subject)
        .and_then(|(_, r)| r.as_ref().ok())
}

/// The sample of `engine` in `phase`.
fn sample_of<'a>(outcomes: &'a [Outcome], phase: &str, engine: &str) -> Option<&'a Sample> {
    outcomes
        .iter()
        .find(|(p, _)| p.phase == phase && p.engine == engine)
        .and_then(|(_, r)| r.as_ref().ok())
}

/// Disk bytes per operation; for an open's reads also as a share of the file.
fn fmt_disk(p: &Phase, s: &Sample, bytes: Option<u64>, share: bool) -> String {
    let Some(b) = bytes else {
        return "-".into();
    };
    let per = fmt_bytes(b as f64 / s.ops.max(1) as f64);
    match (p.kind, s.file_len) {
        (Open, Some(len)) if share && len > 0 => {
            format!("{per} ({:.3}% of file)", 100.0 * b as f64 / len as f64)
        }
        _ => per,
    }
}

fn print_row(p: &Phase, r: &Result<Sample, String>, outcomes: &[Outcome]) {
    let head = format!(
        "| {} | {} | {} | {} |",
        p.phase,
        p.engine,
        p.role.name(),
        p.setting
    );
    let s = match r {
        Ok(s) => s,
        Err(e) => {
            let e = e.replace('|', "\\|");
            println!("{head} - | FAILED: {e} | - | - | - | - | - | - | |");
            return;
        }
    };
    let ratio = match (p.role, p.kind, subject(outcomes, p.phase)) {
        (Subject, _, _) | (_, Open, _) | (_, _, None) => "—".to_string(),
        (_, k, Some(sv)) => format!("{:.2}x", figure(k, sv) / figure(k, s)),
    };
    let goal = row_goal(p, outcomes).unwrap_or_default();
    let us = |v: Option<f64>| v.map_or("-".into(), fmt_num);
    println!(
        "{head} {} | {} | {:.3} | {} | {} | {} | {} | {ratio} | {goal} |",
        fmt_count(s.ops as f64),
        fmt_figure(p.kind, s),
        s.secs,
        us(s.p50_us),
        us(s.p99_us),
        fmt_disk(p, s, s.disk_read, true),
        fmt_disk(p, s, s.disk_write, false),
    );
}

fn print_table(cfg: &Config, outcomes: &[Outcome], global_drop: bool) -> BoxResult<()> {
    println!(
        "## W7 — a heap larger than RAM: fill, cold open, cold random reads and cold small \
         transactions of 1 MiB objects, beside the disk's limits and LMDB\n"
    );
    println!(
        "Size: {} objects of 1 MiB = {:.2} GiB ({:.2}x this machine's {:.1} GiB of RAM). \
         One round: W7 is one round by nature (every phase needs a cold page cache, and each \
         store is written once), so each figure is one child's, not a median. N = operations \
         timed (reads and transactions stop at {} / {} or after 30 s).\n",
        fmt_count(cfg.objects() as f64),
        cfg.bytes as f64 / GIB as f64,
        cfg.bytes as f64 / mem_total()? as f64,
        mem_total()? as f64 / GIB as f64,
        fmt_count(cfg.reads as f64),
        fmt_count(cfg.txs as f64),
    );
    println!("| phase | engine | role | setting | N | figure | secs | p50 µs | p99 µs | disk read / op | disk written / op | txheap ÷ this | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (p, r) in outcomes {
        print_row(p, r, outcomes);
    }
    print_notes(cfg, outcomes, global_drop);
    Ok(())
}

fn print_notes(cfg: &Config, outcomes: &[Outcome], global_drop: bool) {
    println!();
    for engine in ["txheap", "lmdb"] {
        if let Some(s) = sample_of(outcomes, FILL, engine) {
            let (len, alloc) = (s.file_len.unwrap_or(0), s.file_alloc.unwrap_or(0));
            println!(
                "- {engine} file after the fill: length {} ({:.4} bytes per live byte), \
                 allocated {} ({:.4} per live byte), for {} of objects.",
                fmt_bytes(len as f64),
                len as f64 / cfg.bytes as f64,
                fmt_bytes(alloc as f64),
                alloc as f64 / cfg.bytes as f64,
                fmt_bytes(cfg.bytes as f64)
            );
        }
    }
    println!(
        "- Fill figures: object bytes ÷ the sum of the commit (or pwrite + fdatasync) times; \
         generating the bytes is not timed. p50/p99 of a fill are per 16-object commit."
    );
    println!(
        "- Read and transaction phases open their store untimed, then drop the store file's \
         pages that the child does not map once more (posix_fadvise), because an open may read \
         much of the file (see the open rows): the timed operations start cold."
    );
    println!(
        "- Cold: before each cold phase every file of the store was synced and dropped with \
         posix_fadvise(DONTNEED){}. Disk bytes are the child's /proc/self/io read_bytes and \
         write_bytes over the timed region, per operation.",
        if global_drop {
            ", and the page cache with /proc/sys/vm/drop_caches"
        } else {
            " (not root: /proc/sys/vm/drop_caches was not written)"
        }
    );
}

// ---- the goals --------------------------------------------------------------------------

/// A W7 goal of the issue.
enum Goal {
    /// The three opens of the heap succeed.
    OpensSucceed,
    /// The cold `Heap::open` takes at most `secs` and reads at most `share` of the file.
    ColdOpen { secs: f64, share: f64 },
    /// txheap's figure in `phase` ÷ `versus`'s is at least `at_least`.
    Ratio {
        phase: &'static str,
        versus: &'static str,
        at_least: f64,
    },
    /// The heap file's length ÷ the object bytes is at most this.
    FilePerLiveByte(f64),
}

static GOALS: &[Goal] = &[
    Goal::OpensSucceed,
    Goal::ColdOpen {
        secs: 1.0,
        share: 0.01,
    },
    Goal::Ratio {
        phase: "W7-read",
        versus: "limit-odirect",
        at_least: 0.7,
    },
    Goal::Ratio {
        phase: "W7-read",
        versus: "lmdb",
        at_least: 1.0,
    },
    Goal::Ratio {
        phase: "W7-tx",
        versus: "lmdb",
        at_least: 1.5,
    },
    Goal::Ratio {
        phase: FILL,
        versus: "limit-write",
        at_least: 0.9,
    },
    Goal::FilePerLiveByte(1.02),
];

/// The goal column of a row: its ratio goal's status.
fn row_goal(p: &Phase, outcomes: &[Outcome]) -> Option<String> {
    GOALS.iter().find_map(|g| match *g {
        Goal::Ratio {
            phase,
            versus,
            at_least,
        } if phase == p.phase && versus == p.engine => {
            let (_, met) = judge(g, outcomes)?;
            Some(format!("≥ {at_least:.2}x: {}", status(Some(met))))
        }
        Goal::ColdOpen { .. } if p.phase == "W7-open" => {
            let (_, met) = judge(g, outcomes)?;
            Some(format!("≤ 1 s, ≤ 1% read: {}", status(Some(met))))
        }
        _ => None,
    })
}

fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "not met",
        None => "not measured (a phase failed)",
    }
}

/// (measured, met) of goal `g`, or `None` if a phase it needs failed.
fn judge(g: &Goal, outcomes: &[Outcome]) -> Option<(String, bool)> {
    match *g {
        Goal::OpensSucceed => {
            let opens: Vec<_> = outcomes.iter().filter(|(p, _)| p.kind == Open).collect();
            let ok = opens.iter().filter(|(_, r)| r.is_ok()).count();
            Some((
                format!("{ok} of {} succeeded", opens.len()),
                ok == opens.len(),
            ))
        }
        Goal::ColdOpen { secs, share } => {
            let s = sample_of(outcomes, "W7-open", "txheap")?;
            let read = s.disk_read? as f64 / s.file_len? as f64;
            let text = format!("{:.3} s, read {:.3}% of the file", s.secs, 100.0 * read);
            Some((text, s.secs <= secs && read <= share))
        }
        Goal::Ratio {
            phase,
            versus,
            at_least,
        } => {
            let kind = PHASES.iter().find(|p| p.phase == phase)?.kind;
            let r = figure(kind, subject(outcomes, phase)?)
                / figure(kind, sample_of(outcomes, phase, versus)?);
            Some((format!("{r:.2}x"), r >= at_least))
        }
        Goal::FilePerLiveByte(at_most) => {
            let s = subject(outcomes, FILL)?;
            let r = s.file_len? as f64 / s.bytes as f64;
            Some((format!("{r:.4}"), r <= at_most))
        }
    }
}

fn goal_text(g: &Goal) -> String {
    match *g {
        Goal::OpensSucceed => {
            "open, open_read_only and open under Durability::None of the heap all succeed".into()
        }
        Goal::ColdOpen { secs, share } => format!(
            "cold Heap::open ≤ {secs} s, reading ≤ {}% of the file",
            share * 100.0
        ),
        Goal::Ratio {
            phase,
            versus,
            at_least,
        } => format!("{phase}: txheap ≥ {at_least:.2}x {versus}"),
        Goal::FilePerLiveByte(x) => format!("heap file length ÷ object bytes ≤ {x:.2}"),
    }
}

fn print_goals(outcomes: &[Outcome]) {
    println!("\n### W7 goals\n");
    println!("| goal | measured | status |");
    println!("|---|---|---|");
    for g in GOALS {
        let (measured, met) = match judge(g, outcomes) {
            Some((m, met)) => (m, Some(met)),
            None => ("-".to_string(), None),
        };
        println!("| {} | {measured} | {} |", goal_text(g), status(met));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_bytes_match_the_generated_object() {
        let mut buf = vec![0u8; 2 * OBJECT as usize];
        generate(41, &mut buf);
        for (i, off) in [(41u64, 0u64), (41, 64), (42, OBJECT - 64), (42, 4096)] {
            let at = ((i - 41) * OBJECT + off) as usize;
            assert_eq!(buf[at..at + READ_LEN], expected(i, off));
        }
        assert_ne!(expected(1, 0), expected(2, 0));
        assert_ne!(tx_bytes(0), tx_bytes(1));
    }

    #[test]
    fn picks_are_aligned_and_in_range() {
        let mut rng = Rng(1);
        for _ in 0..1000 {
            let (i, off) = rng.pick(3);
            assert!(i < 3 && off % 64 == 0 && off + 64 <= OBJECT);
        }
    }

    #[test]
    fn config_rounds_to_mib_and_sizes_fit() {
        let c = Config::new(Some((2 << 30) + 5), None, None).unwrap();
        assert_eq!((c.bytes, c.objects()), (2 << 30, 2048));
        assert_eq!((c.reads, c.txs), (DEFAULT_READS, DEFAULT_TXS));
        assert!(Config::new(Some(1 << 20), None, None).is_err());
        assert!(Config::new(Some(1 << 30), Some(0), None).is_err());
        // The heap's max_size holds 1.25x the objects (five chunks per 1 MiB object).
        assert!(heap_max_size(c.bytes) >= c.bytes / 4 * 5);
        assert_eq!(heap_max_size(c.bytes) % 4096, 0);
        let limit = PHASES.iter().find(|p| p.engine == "limit-write").unwrap();
        assert_eq!(c.ops(limit), 2 << 30);
    }

    #[test]
    fn phases_are_grouped_by_store_and_named_uniquely() {
        for (i, a) in PHASES.iter().enumerate() {
            assert!(PHASES[i + 1..]
                .iter()
                .all(|b| (a.phase, a.engine) != (b.phase, b.engine)));
            // A store's phases are consecutive, its fill (if any) first.
            let later = &PHASES[i + 1..];
            if let Some(j) = later.iter().position(|b| b.store != a.store) {
                assert!(later[j..].iter().all(|b| b.store != a.store));
            }
        }
        assert!(is_phase("W7-open-ro") && !is_phase("W1"));
    }
}
