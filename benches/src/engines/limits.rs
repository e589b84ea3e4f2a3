//! The machine's limits, measured by the same harness in the same run:
//!
//! - `limit-pwrite`: 4 KiB `pwrite` in place into a preallocated, written, synced file, then
//!   `fdatasync` (the durable-commit limit: one device flush, no journal commit);
//! - `limit-append`: 4 KiB `pwrite` at the end of a growing file, then `fdatasync`;
//! - `limit-msync`: a 64-byte store into one page of a `MAP_SHARED` mapping of a file written
//!   in 4 KiB pieces, then `msync(MS_SYNC)` of that page;
//! - `limit-malloc`: `malloc(64)` + first write of each block, linked into a list ([`malloc`]);
//! - `limit-memcpy`: `memcpy` bandwidth, 64 MiB buffers ([`memcpy`]).
//!
//! The first three are [`Engine`]s (one "insert" = one write + one barrier) so they run under
//! the same driver and timing as the stores.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::{expect_count, Engine};
use crate::sample::Sample;
use crate::sys::SharedMap;
use crate::BoxResult;

const BLOCK: usize = 4096;
/// Size of the preallocated files: writes cycle through its blocks.
const FILE_LEN: usize = 64 << 20;

fn block_for(key: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..8].copy_from_slice(&key.to_le_bytes());
    b
}

/// Create `path` with `len` bytes written in 4 KiB `pwrite`s and synced.
pub(crate) fn written_file(path: &Path, len: usize) -> BoxResult<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let block = [0xA5u8; BLOCK];
    for off in (0..len).step_by(BLOCK) {
        f.write_all_at(&block, off as u64)?;
    }
    f.sync_all()?;
    Ok(f)
}

struct InPlace {
    file: File,
    writes: u64,
}

impl Engine for InPlace {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        for key in first..first + n {
            let off = (key as usize % (FILE_LEN / BLOCK)) * BLOCK;
            self.file.write_all_at(&block_for(key), off as u64)?;
        }
        self.file.sync_data()?;
        self.writes += n;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        expect_count("limit-pwrite", self.writes, count)
    }
}

/// 4 KiB in-place `pwrite` + `fdatasync` in a preallocated file.
pub fn pwrite(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    let file = written_file(&dir.join("inplace.dat"), FILE_LEN)?;
    body(&mut InPlace { file, writes: 0 })
}

struct Append {
    file: File,
    len: u64,
}

impl Engine for Append {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        for key in first..first + n {
            self.file.write_all_at(&block_for(key), self.len)?;
            self.len += BLOCK as u64;
        }
        self.file.sync_data()?;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        let blocks = self.file.metadata()?.len() / BLOCK as u64;
        expect_count("limit-append", blocks, count)
    }
}

/// 4 KiB append + `fdatasync`.
pub fn append(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join("append.dat"))?;
    body(&mut Append { file, len: 0 })
}

struct Msync {
    map: SharedMap,
    stores: u64,
}

impl Engine for Msync {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        for key in first..first + n {
            let page = key as usize % self.map.pages();
            self.map
                .store_and_sync(page, &crate::engines::value_for(key))?;
        }
        self.stores += n;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        expect_count("limit-msync", self.stores, count)
    }
}

/// A 1-page store + `msync(MS_SYNC)` in a `MAP_SHARED` mapping.
pub fn msync(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    let file = written_file(&dir.join("msync.dat"), FILE_LEN)?;
    let map = SharedMap::new(&file, FILE_LEN)?;
    body(&mut Msync { map, stores: 0 })
}

/// `ops` times `malloc(64)` + first write, linked into a list; timed as a whole (a clock read
/// per allocation would cost as much as the allocation), so no per-operation latencies.
pub fn malloc(engine: &str, workload: &str, ops: u64) -> BoxResult<Sample> {
    let elapsed = crate::sys::malloc_list(ops)?;
    Ok(Sample::new(engine, workload, ops, elapsed, None))
}

/// Size of each `memcpy` in the bandwidth limit.
pub const MEMCPY_LEN: usize = 64 << 20;

/// `ops` copies of a 64 MiB buffer into another (both touched first); bytes = ops × 64 MiB.
pub fn memcpy(engine: &str, workload: &str, ops: u64) -> BoxResult<Sample> {
    let src: Vec<u8> = (0..MEMCPY_LEN).map(|i| i as u8).collect();
    let mut dst = vec![1u8; MEMCPY_LEN];
    dst.copy_from_slice(&src);
    let mut lat = Vec::with_capacity(ops as usize);
    let start = Instant::now();
    for _ in 0..ops {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let mut s = Sample::new(engine, workload, ops, elapsed, Some(&mut lat));
    s.bytes = ops * MEMCPY_LEN as u64;
    Ok(s)
}
