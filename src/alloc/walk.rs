//! Walking the chunk tables: the allocator rebuild every open ends with, and (feature
//! `test-hooks`) the byte ranges a heap reaches, for the crash tests' write-ahead check.
//!
//! Owns: the walk and its checks (every zone starts with its table, extents stay inside their
//! zone and the chunk count). Reads one contiguous table per zone (16 bytes per chunk) and
//! nothing else: run bitmaps are read when a run is first used ([`Allocator::scan_run`]), so an
//! open costs time proportional to the chunk count's tables, never to the data. May not: touch
//! the file (callers pass `read`).

use super::format::{Entry, RunGeom, ENTRY_LEN, ZONE_CHUNKS};
use super::{Allocator, RunState};
use crate::error::{Error, Result};

impl Allocator {
    /// Rebuild from the chunk tables.
    pub(crate) fn rebuild(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<Allocator> {
        Self::rebuild_visiting(chunk_area, chunk_count, read, &mut |_, _| {})
    }

    /// The byte ranges `(offset, len)` of the zone tables' used parts for `chunk_count`
    /// chunks: what an open reads (to prefetch them in one go).
    pub(crate) fn table_ranges(chunk_area: u64, chunk_count: u64) -> Vec<(u64, u64)> {
        (0..chunk_count.div_ceil(ZONE_CHUNKS))
            .map(|z| {
                let first = z * ZONE_CHUNKS;
                let used = (chunk_count - first).min(ZONE_CHUNKS);
                (
                    chunk_area + first * crate::limits::CHUNK_SIZE,
                    used * ENTRY_LEN,
                )
            })
            .collect()
    }

    /// [`Allocator::rebuild`], calling `visit(chunk, entry)` for every extent the walk decodes
    /// (including free extents that the index then coalesces with a neighbour).
    pub(crate) fn rebuild_visiting(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
        visit: &mut dyn FnMut(u32, &Entry),
    ) -> Result<Allocator> {
        let mut a = Allocator::empty(chunk_area, chunk_count);
        if chunk_count > u32::MAX as u64 {
            return Err(Error::Corrupt {
                offset: chunk_area,
                what: format!("chunk count {chunk_count} too large"),
            });
        }
        let mut table = Vec::new();
        for (z, (table_off, len)) in Self::table_ranges(chunk_area, chunk_count)
            .into_iter()
            .enumerate()
        {
            table.resize(len as usize, 0);
            read(table_off, &mut table);
            a.walk_zone(z as u64 * ZONE_CHUNKS, table_off, &table, visit)?;
        }
        Ok(a)
    }

    /// Walk one zone's table (`table`: its used entries, read from `table_off`).
    fn walk_zone(
        &mut self,
        first: u64,
        table_off: u64,
        table: &[u8],
        visit: &mut dyn FnMut(u32, &Entry),
    ) -> Result<()> {
        let used = table.len() as u64 / ENTRY_LEN;
        let mut i = 0u64;
        while i < used {
            let at = table_off + i * ENTRY_LEN;
            let e = Entry::decode(&table[(i * ENTRY_LEN) as usize..], at)?;
            let c = (first + i) as u32;
            let n = e.chunks() as u64;
            let misplaced = match e {
                Entry::Table => i != 0,
                _ => i == 0,
            };
            if misplaced {
                return Err(Error::Corrupt {
                    offset: at,
                    what: format!("chunk {c}: {e:?} where a zone table must (not) be"),
                });
            }
            if i + n > used {
                return Err(Error::Corrupt {
                    offset: at,
                    what: format!(
                        "extent of {n} chunks at chunk {c} runs past its zone or the chunk count {}",
                        self.chunk_count
                    ),
                });
            }
            visit(c, &e);
            match e {
                Entry::Table => {}
                Entry::Free { chunks } => self.insert_coalesced(c, chunks),
                Entry::Large { chunks, size } => {
                    self.large.insert(c, (chunks, size));
                }
                Entry::Run { class } => {
                    self.runs.insert(c, RunState::unscanned(class));
                    self.partial[class].insert(c);
                }
            }
            i += n;
        }
        Ok(())
    }

    /// Every allocated block `(offset, size)` of a heap with these chunk tables, sorted by
    /// offset: each large object's extent (its recorded size) and each run's blocks whose
    /// bitmap bit is set (a bit past the run's block count is `Corrupt`). For reachability
    /// (`Reader::reachability`).
    pub(crate) fn allocations(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<Vec<(u64, u64)>> {
        Self::blocks(chunk_area, chunk_count, read, false)
    }

    /// The byte ranges `(offset, len)` of the chunk area that a heap with these chunk tables
    /// reaches: every table entry the walk decodes, each run's bitmap and allocated blocks,
    /// each large object's bytes. Not reached: free extents' bodies, free blocks, padding,
    /// entries of chunks inside an extent. For the crash tests' write-ahead check (feature
    /// `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn reachable(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<Vec<(u64, u64)>> {
        Self::blocks(chunk_area, chunk_count, read, true)
    }

    /// The allocated blocks of the extents the walk decodes, in chunk order; with `metadata`,
    /// also each decoded table entry and each run's bitmap.
    fn blocks(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
        metadata: bool,
    ) -> Result<Vec<(u64, u64)>> {
        let mut extents = Vec::new();
        let a = Self::rebuild_visiting(chunk_area, chunk_count, read, &mut |c, e| {
            extents.push((c, *e))
        })?;
        extents.sort_by_key(|&(c, _)| c);
        let mut out = Vec::new();
        let mut bitmap = Vec::new();
        for (c, e) in extents {
            if metadata {
                out.push((a.entry_offset(c), ENTRY_LEN));
            }
            let at = a.chunk_offset(c);
            match e {
                Entry::Free { .. } | Entry::Table => {}
                Entry::Large { size, .. } => out.push((at, size)),
                Entry::Run { class } => {
                    let g = RunGeom::of_class(class);
                    bitmap.resize((g.bitmap_words() * 8) as usize, 0);
                    read(at, &mut bitmap);
                    // Bits past the run's blocks are damage, as `check`, `stats` and the
                    // allocator say (this walk ignored them and called such a heap clean:
                    // found by review).
                    super::count_used(&g, &bitmap, at)?;
                    if metadata {
                        out.push((at, bitmap.len() as u64));
                    }
                    for b in 0..g.block_count {
                        if bitmap[(b / 8) as usize] >> (b % 8) & 1 == 1 {
                            out.push((at + g.data_offset + b * g.block_size, g.block_size));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
