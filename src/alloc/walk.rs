//! Walking the chunk headers: the allocator rebuild every open ends with, and (feature
//! `test-hooks`) the byte ranges a heap reaches, for the crash tests' write-ahead check.
//!
//! Owns: the walk and its checks (extents inside the chunk count, bitmaps inside their runs).
//! Time proportional to the number of extents plus the bitmaps of runs, never to the data.
//! May not: touch the file (callers pass `read`).

#[cfg(feature = "test-hooks")]
use super::format::LARGE_DATA_OFFSET;
use super::format::{ChunkHeader, RunGeom, CHUNK_HEADER_LEN};
use super::{Allocator, RunState};
use crate::error::{Error, Result};

impl Allocator {
    /// Rebuild from the chunk headers: time proportional to the number of extents plus the
    /// bitmaps of runs, never to the data.
    pub(crate) fn rebuild(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<Allocator> {
        Self::rebuild_visiting(chunk_area, chunk_count, read, &mut |_, _| {})
    }

    /// [`Allocator::rebuild`], calling `visit(offset, header)` for every extent header the walk
    /// decodes (including free extents that the index then coalesces with a neighbour).
    pub(crate) fn rebuild_visiting(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
        visit: &mut dyn FnMut(u64, &ChunkHeader),
    ) -> Result<Allocator> {
        let mut a = Allocator::empty(chunk_area, chunk_count);
        if chunk_count > u32::MAX as u64 {
            return Err(Error::Corrupt {
                offset: chunk_area,
                what: format!("chunk count {chunk_count} too large"),
            });
        }
        let mut c: u64 = 0;
        let mut hdr = [0u8; CHUNK_HEADER_LEN as usize];
        let mut bitmap = Vec::new();
        while c < chunk_count {
            let at = a.chunk_offset(c as u32);
            read(at, &mut hdr);
            let h = ChunkHeader::decode(&hdr, at)?;
            visit(at, &h);
            let n = h.chunks() as u64;
            if c + n > chunk_count {
                return Err(Error::Corrupt {
                    offset: at,
                    what: format!(
                        "extent of {n} chunks at chunk {c} runs past the chunk count {chunk_count}"
                    ),
                });
            }
            match h {
                ChunkHeader::Free { chunks } => a.insert_coalesced(c as u32, chunks),
                ChunkHeader::Large { chunks, size } => {
                    a.large.insert(c as u32, (chunks, size));
                }
                ChunkHeader::Run { class } => {
                    let g = RunGeom::of_class(class);
                    bitmap.resize((g.bitmap_words() * 8) as usize, 0);
                    read(at + CHUNK_HEADER_LEN, &mut bitmap);
                    let mut used = 0u64;
                    for (w, word) in bitmap.chunks_exact(8).enumerate() {
                        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                        let valid = (g.block_count - w as u64 * 64).min(64);
                        if valid < 64 && word >> valid != 0 {
                            return Err(Error::Corrupt {
                                offset: at + CHUNK_HEADER_LEN + w as u64 * 8,
                                what: format!(
                                    "run bitmap marks blocks past the run's {} blocks",
                                    g.block_count
                                ),
                            });
                        }
                        used += word.count_ones() as u64;
                    }
                    let free = g.block_count - used;
                    a.runs.insert(
                        c as u32,
                        RunState {
                            class,
                            free,
                            hint: 0,
                        },
                    );
                    if free > 0 {
                        a.partial[class].insert(c as u32);
                    }
                }
            }
            c += n;
        }
        Ok(a)
    }

    /// The byte ranges `(offset, len)` of the chunk area that a heap with these chunk headers
    /// reaches: every extent header the walk decodes, each run's bitmap and allocated blocks,
    /// each large object's bytes. Not reached: free extents' bodies, free blocks, padding.
    /// For the crash tests' write-ahead check (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn reachable(
        chunk_area: u64,
        chunk_count: u64,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<Vec<(u64, u64)>> {
        let mut headers = Vec::new();
        Self::rebuild_visiting(chunk_area, chunk_count, read, &mut |at, h| {
            headers.push((at, *h))
        })?;
        let mut out = Vec::new();
        let mut bitmap = Vec::new();
        for (at, h) in headers {
            out.push((at, CHUNK_HEADER_LEN));
            match h {
                ChunkHeader::Free { .. } => {}
                ChunkHeader::Large { size, .. } => out.push((at + LARGE_DATA_OFFSET, size)),
                ChunkHeader::Run { class } => {
                    let g = RunGeom::of_class(class);
                    bitmap.resize((g.bitmap_words() * 8) as usize, 0);
                    read(at + CHUNK_HEADER_LEN, &mut bitmap);
                    out.push((at + CHUNK_HEADER_LEN, bitmap.len() as u64));
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
