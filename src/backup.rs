//! Consistent copies of a heap while it is in use: [`Heap::backup_to`] and
//! [`Heap::compact_to`], behind `txheap copy [--compact]`.
//!
//! Owns: the copy's file, built under a temporary name beside the destination (heap bytes first,
//! then a fresh log and superblock, then one `fdatasync`), renamed into place, and the parent
//! directory synced; and what a compact copy leaves out. Reads the source only through one
//! pinned snapshot (`Heap::read`), so the copy equals one committed state while other threads
//! go on committing (docs/ARCHITECTURE.md section 13). May not: write the source.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use txheap_recovery as recovery;

use crate::alloc::{Allocator, ExtentEntry as Entry};
use crate::error::{Error, Result};
use crate::heap::Heap;
use crate::layout::Geometry;
use crate::limits::CHUNK_SIZE;
use crate::reader::Reader;
use crate::storage::FileStorage;
use crate::sys;

/// Bytes copied per read of the snapshot and write of the copy.
const COPY_PIECE: usize = 4 << 20;

/// What a copy holds.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("s.heap"), txheap::Options::new())?;
/// let report = heap.backup_to(dir.path().join("copy.heap"))?;
/// assert_eq!(report.chunk_count, heap.stats()?.heap_bytes / (256 << 10));
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// The source's transaction whose committed state the copy holds (0: the state before the
    /// first transaction this handle saw).
    pub txid: u64,
    /// Chunks in the copy's heap (a compact copy leaves a free tail out).
    pub chunk_count: u64,
    /// The copy's length in bytes (its apparent size; a compact copy has holes).
    pub file_len: u64,
    /// Bytes of heap written to the copy (the rest of a compact copy is holes).
    pub heap_bytes_written: u64,
}

/// The byte ranges of the snapshot a copy reads and writes, the ranges that get disk blocks, the
/// copy's chunk count, and its heap header bytes (with the new chunk count when a compact copy
/// cut a free tail).
struct Plan {
    ranges: Vec<(u64, u64)>,
    blocks: Vec<(u64, u64)>,
    chunk_count: u64,
    header: [u8; crate::alloc::HEAP_HEADER_LEN as usize],
}

/// `every_byte`: a full copy of a salvaged heap, which reads the whole heap region (see
/// below).
fn plan(
    r: &Reader<'_>,
    chunk_area: u64,
    heap_offset: u64,
    compact: bool,
    every_byte: bool,
) -> Result<Plan> {
    let (_, mut header) = r.state();
    let heap_end = chunk_area + header.chunk_count * CHUNK_SIZE;
    let whole = vec![(heap_offset, heap_end - heap_offset)];
    let whole_plan = |header: crate::alloc::HeapHeader| Plan {
        ranges: whole.clone(),
        blocks: whole.clone(),
        chunk_count: header.chunk_count,
        header: header.encode(),
    };
    // A salvaged heap's objects may lie where its tables say free space is (a frame that
    // freed one dropped, its table entry already changed in place), and the handle shows
    // them: a full copy of it takes every byte, as the handle holds them (a review found such
    // an object copied as zeros). Such a copy is the way to take data out of a damaged heap.
    if every_byte && !compact {
        return Ok(whole_plan(header));
    }
    // The extents as this snapshot's chunk tables give them.
    let read_err = std::cell::Cell::new(None);
    let read = |off: u64, buf: &mut [u8]| {
        if let Err(e) = r.copy_raw(off, buf) {
            buf.fill(0);
            read_err.set(Some(e));
        }
    };
    let mut extents: Vec<(u32, Entry)> = Vec::new();
    let walked = Allocator::rebuild_visiting(chunk_area, header.chunk_count, &read, &mut |c, e| {
        extents.push((c, *e))
    })
    .and_then(|_| read_err.take().map_or(Ok(()), Err));
    if let Err(e) = walked {
        if compact {
            return Err(e);
        }
        // A full copy of a heap whose tables fail their walk (a `salvage_read_only` handle's
        // can): every byte, as the snapshot holds it.
        return Ok(whole_plan(header));
    }
    extents.sort_by_key(|&(c, _)| c);
    // A compact copy cuts the free tail: trailing free extents, and a zone's table with
    // nothing after it.
    while compact
        && match extents.last() {
            Some(&(_, Entry::Free { .. })) => true,
            Some(&(c, Entry::Table)) => c > 0,
            _ => false,
        }
    {
        extents.pop();
    }
    // (No extent: the source has no chunk, and neither has the copy. A review found `1` here:
    // a header claiming a chunk whose table entry no one wrote, refused on every open.)
    let chunk_count = match compact {
        true => extents
            .last()
            .map_or(0, |&(c, e)| c as u64 + e.chunks() as u64),
        false => header.chunk_count,
    };
    header.chunk_count = chunk_count;
    let page = sys::PAGE as u64;
    // What the copy reads: never free space, nor the pages after a large object. Compaction
    // may have punched them, and on tmpfs even a read of a hole through the mapping takes a
    // page: a review found a full copy of a compacted heap giving the source those blocks
    // back, and, on a full tmpfs, dying of SIGBUS. The copy holds zeros there (free bytes).
    let mut ranges = vec![(heap_offset, chunk_area - heap_offset)];
    for (c, e) in extents {
        let at = chunk_area + c as u64 * CHUNK_SIZE;
        let len = match e {
            Entry::Free { .. } => continue,
            Entry::Run { .. } => CHUNK_SIZE,
            Entry::Large { size, .. } => size.div_ceil(page) * page,
            // The whole table chunk: growth writes the entries past the used ones, at a
            // commit's apply, where a hole would meet a full disk (found by review).
            Entry::Table => CHUNK_SIZE,
        };
        ranges.push((at, len));
    }
    // A full copy has blocks for its whole heap, as a heap that never compacted has; a
    // compact one only for what it holds.
    let blocks = match compact {
        true => ranges.clone(),
        false => whole,
    };
    Ok(Plan {
        ranges,
        blocks,
        chunk_count,
        header: header.encode(),
    })
}

/// Copy `heap`'s newest committed state to a new file at `dst` (see [`Heap::backup_to`]), built
/// under a hidden temporary name and linked into place once complete and durable
/// (`open::publish_new_file`, as a new heap is).
pub(crate) fn backup(
    heap: &Heap,
    geo: &Geometry,
    dst: &Path,
    compact: bool,
    salvaged: bool,
) -> Result<BackupReport> {
    crate::open::publish_new_file(dst, "copy", |file| {
        write_copy(heap, geo, &file, compact, salvaged)
    })
}

/// `salvaged`: the handle's open dropped transactions on purpose (a full copy then reads every
/// byte).
fn write_copy(
    heap: &Heap,
    geo: &Geometry,
    file: &File,
    compact: bool,
    salvaged: bool,
) -> Result<BackupReport> {
    let page = sys::PAGE;
    let (txid, plan, written) = heap.read(|r| {
        let (txid, _) = r.state();
        let plan = plan(r, geo.chunk_area, geo.heap_offset, compact, salvaged)?;
        let len = geo.chunk_area + plan.chunk_count * CHUNK_SIZE;
        file.set_len(len)
            .map_err(|e| Error::io("size the copy", len, e))?;
        // Blocks for everything the copy holds, zero pages too: only free space and the log
        // stay holes. A hole under a live object or a run would take its blocks when written
        // later, at a commit's apply, where a full disk can no longer be the operation's
        // error (free space gets its blocks when an allocation takes it: `TxMem::claim`).
        for &(start, len) in &plan.blocks {
            crate::platform::preallocate(file, start, len)
                .map_err(|e| Error::io("allocate the copy's blocks", start, e))?;
        }
        let mut buf = vec![0u8; COPY_PIECE];
        let mut written = 0u64;
        for &(start, len) in &plan.ranges {
            let mut at = start;
            while at < start + len {
                let n = (start + len - at).min(COPY_PIECE as u64) as usize;
                let b = &mut buf[..n];
                r.copy_raw(at, b)?;
                if at == geo.heap_offset {
                    b[..plan.header.len()].copy_from_slice(&plan.header);
                }
                // Pages of zeros stay holes (the copy was sized with zeros).
                let mut p = 0;
                while p < n {
                    let q = (p + page).min(n);
                    if b[p..q].iter().any(|&x| x != 0) {
                        let mut e = q;
                        while e < n && b[e..(e + page).min(n)].iter().any(|&x| x != 0) {
                            e = (e + page).min(n);
                        }
                        file.write_all_at(&b[p..e], at + p as u64)
                            .map_err(|err| Error::io("write the copy", at + p as u64, err))?;
                        written += (e - p) as u64;
                        p = e;
                    } else {
                        p = q;
                    }
                }
                at += n as u64;
            }
        }
        Ok((txid, plan, written))
    })?;
    // The log and the superblock last: until the link, nothing names this file, and a file
    // without a superblock is refused by any open.
    let mut storage = FileStorage::new(
        Arc::new(file.try_clone().map_err(|e| Error::io("dup", 0, e))?),
        0,
        false,
    )
    .map_err(|e| Error::io("storage", 0, e))?;
    // The log stays a hole, as a clean close leaves it (a review found a compact copy of a
    // small heap taking the whole log's 16 MiB of blocks); a writable open allocates it.
    recovery::format_over_zeros(&mut storage, geo.log_size, heap.max_size())?;
    Ok(BackupReport {
        txid,
        chunk_count: plan.chunk_count,
        file_len: geo.chunk_area + plan.chunk_count * CHUNK_SIZE,
        heap_bytes_written: written,
    })
}
