//! The allocator: size-class runs and large extents inside 256 KiB chunks.
//!
//! Owns: the on-disk chunk headers, run bitmaps and heap header (formats in `docs/FORMAT.md`),
//! and the volatile indexes rebuilt from them on open (free extents, runs with free blocks,
//! live large objects). May not: touch the file or know transactions' callers. It reads and
//! writes only through [`TxMem`], which the transaction implements by staging: so every change
//! of allocator metadata travels in the transaction's redo frame.
//!
//! Within a transaction every change to the volatile indexes is journaled (`undo`) so that abort
//! restores them exactly; frees are *deferred*: a freed block or extent becomes available to
//! later transactions only when its transaction commits, and never within the transaction that
//! freed it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use txheap_recovery::CHUNK_SIZE;

use crate::error::{Error, Result};

/// Chunk size in bytes.
pub(crate) const CHUNK: u64 = CHUNK_SIZE;
/// Bytes of a chunk header (a run's bitmap follows it).
pub(crate) const CHUNK_HEADER_LEN: u64 = 64;
/// Where a large object starts inside its first chunk.
pub(crate) const LARGE_DATA_OFFSET: u64 = 64;
/// The largest alignment a stored type may have.
pub(crate) const MAX_ALIGN: u64 = 64;
/// Growth step: the heap grows by at least this many chunks (2 MiB) or a quarter of its size.
const GROW_MIN_CHUNKS: u64 = 8;

const TAG_FREE: [u8; 4] = *b"FREE";
const TAG_RUN: [u8; 4] = *b"RUN\0";
const TAG_LARGE: [u8; 4] = *b"LRGE";

/// Number of size classes.
pub(crate) const NCLASSES: usize = 44;

const fn build_classes() -> [u32; NCLASSES] {
    let mut c = [0u32; NCLASSES];
    let mut i = 0;
    while i < 8 {
        c[i] = 16 * (i as u32 + 1);
        i += 1;
    }
    let mut base = 128u32;
    while i < NCLASSES {
        let step = base / 4;
        let mut k = 1;
        while k <= 4 {
            c[i] = base + step * k;
            i += 1;
            k += 1;
        }
        base *= 2;
    }
    c
}

/// Block size of each class, ascending: 16..=128 by 16, then four per doubling up to 65536.
pub(crate) const CLASSES: [u32; NCLASSES] = build_classes();
/// The largest size served from runs; anything larger takes a large extent.
pub(crate) const SMALL_MAX: u64 = CLASSES[NCLASSES - 1] as u64;

/// Geometry of a run of one class inside a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunGeom {
    pub block_size: u64,
    pub block_count: u64,
    pub data_offset: u64,
}

impl RunGeom {
    pub(crate) const fn of_class(class: usize) -> RunGeom {
        let bs = CLASSES[class] as u64;
        let mut n = (CHUNK - CHUNK_HEADER_LEN) / bs;
        loop {
            let bitmap = n.div_ceil(64) * 8;
            let data = (CHUNK_HEADER_LEN + bitmap).div_ceil(64) * 64;
            if data + n * bs <= CHUNK {
                return RunGeom {
                    block_size: bs,
                    block_count: n,
                    data_offset: data,
                };
            }
            n -= 1;
        }
    }
    pub(crate) const fn bitmap_words(&self) -> u64 {
        self.block_count.div_ceil(64)
    }
}

/// The smallest class fitting `size` bytes at `align` (a power of two up to [`MAX_ALIGN`]).
pub(crate) fn class_for(size: u64, align: u64) -> Option<usize> {
    let size = size.max(1);
    CLASSES
        .iter()
        .position(|&bs| bs as u64 >= size && bs as u64 % align.max(16) == 0)
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A decoded chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkHeader {
    Free { chunks: u32 },
    Run { class: usize },
    Large { chunks: u32, size: u64 },
}

impl ChunkHeader {
    pub(crate) fn chunks(&self) -> u32 {
        match *self {
            ChunkHeader::Free { chunks } | ChunkHeader::Large { chunks, .. } => chunks,
            ChunkHeader::Run { .. } => 1,
        }
    }

    pub(crate) fn encode(&self) -> [u8; CHUNK_HEADER_LEN as usize] {
        let mut b = [0u8; CHUNK_HEADER_LEN as usize];
        let (tag, class, geom, data_offset, size) = match *self {
            ChunkHeader::Free { .. } => (TAG_FREE, 0u32, None, 0u32, 0u64),
            ChunkHeader::Run { class } => {
                let g = RunGeom::of_class(class);
                (TAG_RUN, class as u32, Some(g), g.data_offset as u32, 0)
            }
            ChunkHeader::Large { size, .. } => (TAG_LARGE, 0, None, LARGE_DATA_OFFSET as u32, size),
        };
        b[0..4].copy_from_slice(&tag);
        b[4..8].copy_from_slice(&self.chunks().to_le_bytes());
        b[8..12].copy_from_slice(&class.to_le_bytes());
        if let Some(g) = geom {
            b[12..16].copy_from_slice(&(g.block_size as u32).to_le_bytes());
            b[16..20].copy_from_slice(&(g.block_count as u32).to_le_bytes());
        }
        b[20..24].copy_from_slice(&data_offset.to_le_bytes());
        b[24..32].copy_from_slice(&size.to_le_bytes());
        let c = crc(&b[0..32]);
        b[32..36].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode and check the header found at file offset `at`.
    pub(crate) fn decode(b: &[u8], at: u64) -> Result<ChunkHeader> {
        let corrupt = |what: String| Error::Corrupt { offset: at, what };
        if b.len() < CHUNK_HEADER_LEN as usize {
            return Err(corrupt("chunk header cut short".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let stored = u32_at(32);
        let computed = crc(&b[0..32]);
        if stored != computed {
            return Err(corrupt(format!(
                "chunk header crc {stored:#010x} != computed {computed:#010x}"
            )));
        }
        if b[36..64].iter().any(|&x| x != 0) {
            return Err(corrupt("chunk header reserved bytes are not zero".into()));
        }
        let tag: [u8; 4] = b[0..4].try_into().expect("4 bytes");
        let chunks = u32_at(4);
        let class = u32_at(8) as usize;
        let size = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        let h = match tag {
            TAG_FREE => ChunkHeader::Free { chunks },
            TAG_RUN if class < NCLASSES => ChunkHeader::Run { class },
            TAG_RUN => return Err(corrupt(format!("run of unknown size class {class}"))),
            TAG_LARGE => ChunkHeader::Large { chunks, size },
            _ => return Err(corrupt(format!("unknown chunk tag {tag:?}"))),
        };
        if chunks == 0 {
            return Err(corrupt("extent of zero chunks".into()));
        }
        // Every field must be exactly what `encode` writes for this header.
        if h.encode()[..32] != b[..32] {
            return Err(corrupt(format!(
                "chunk header fields inconsistent with {h:?}"
            )));
        }
        if let ChunkHeader::Large { chunks, size } = h {
            if size == 0 || size > chunks as u64 * CHUNK - LARGE_DATA_OFFSET {
                return Err(corrupt(format!(
                    "large object of {size} bytes in {chunks} chunks"
                )));
            }
        }
        Ok(h)
    }
}

/// The heap header: the one place the chunk count and the root's identity live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HeapHeader {
    pub chunk_count: u64,
    pub root_size: u64,
    pub root_fingerprint: u64,
    pub root_align: u32,
}

pub(crate) const HEAP_HEADER_LEN: u64 = 64;
const HEAP_MAGIC: [u8; 8] = *b"TXHEAPHH";

impl HeapHeader {
    pub(crate) fn encode(&self) -> [u8; HEAP_HEADER_LEN as usize] {
        let mut b = [0u8; HEAP_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&HEAP_MAGIC);
        b[8..16].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.root_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.root_fingerprint.to_le_bytes());
        b[32..36].copy_from_slice(&self.root_align.to_le_bytes());
        let c = crc(&b[0..60]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8], at: u64) -> Result<HeapHeader> {
        let corrupt = |what: String| Error::Corrupt { offset: at, what };
        if b.len() < HEAP_HEADER_LEN as usize || b[0..8] != HEAP_MAGIC {
            return Err(corrupt("heap header magic missing".into()));
        }
        let stored = u32::from_le_bytes(b[60..64].try_into().expect("4 bytes"));
        let computed = crc(&b[0..60]);
        if stored != computed {
            return Err(corrupt(format!(
                "heap header crc {stored:#010x} != computed {computed:#010x}"
            )));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let h = HeapHeader {
            chunk_count: u64_at(8),
            root_size: u64_at(16),
            root_fingerprint: u64_at(24),
            root_align: u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")),
        };
        if h.encode() != b[..64] {
            return Err(corrupt("heap header reserved bytes are not zero".into()));
        }
        Ok(h)
    }
}

/// What the allocator needs from the transaction: its view of the file, and growth.
pub(crate) trait TxMem {
    /// Read bytes in the transaction's view (staged writes over committed state).
    fn read(&self, off: u64, buf: &mut [u8]);
    /// Stage a write.
    fn write(&mut self, off: u64, bytes: &[u8]) -> Result<()>;
    /// Make sure the file and the mapping reach `chunk_count` chunks.
    fn ensure_chunks(&mut self, chunk_count: u64) -> Result<()>;
    /// The heap's `max_size`: the file may not grow past it.
    fn max_size(&self) -> u64;
}

fn read_u64(mem: &dyn TxMem, off: u64) -> u64 {
    let mut b = [0u8; 8];
    mem.read(off, &mut b);
    u64::from_le_bytes(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunState {
    class: usize,
    /// Free blocks in the transaction's view, not counting blocks it freed (those wait for commit).
    free: u64,
    /// Bitmap word where the last allocation was found.
    hint: u64,
}

#[derive(Debug)]
enum Undo {
    ExtentRemoved(u32, u32),
    ExtentInserted(u32, u32),
    ChunkCount(u64),
    RunFree(u32, i64),
    RunAdded(u32),
    LargeAdded(u32),
    LargeRemoved(u32, (u32, u64)),
}

#[derive(Debug)]
enum Deferred {
    BlockFreed(u32),
    ExtentFreed(u32, u32),
    RunReleased(u32),
}

/// Per-class numbers for [`crate::Stats`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("cs.heap"), txheap::Options::new())?;
/// heap.transaction(|tx| tx.alloc([0u8; 100]).map(|_| ()))?;
/// let c = heap.stats()?.classes.into_iter().find(|c| c.used_blocks > 0).unwrap();
/// assert_eq!((c.block_size, c.used_blocks, c.runs), (112, 1, 1));
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub block_size: u64,
    /// Runs (chunks) holding this class.
    pub runs: u64,
    /// Blocks in use.
    pub used_blocks: u64,
    /// Blocks free.
    pub free_blocks: u64,
}

/// The volatile allocator state, rebuilt from chunk headers on open.
#[derive(Debug)]
pub(crate) struct Allocator {
    chunk_area: u64,
    /// Chunks in use, in the current transaction's view.
    pub(crate) chunk_count: u64,
    runs: HashMap<u32, RunState>,
    partial: Vec<BTreeSet<u32>>,
    free_by_start: BTreeMap<u32, u32>,
    free_by_len: BTreeSet<(u32, u32)>,
    large: BTreeMap<u32, (u32, u64)>,
    undo: Vec<Undo>,
    deferred: Vec<Deferred>,
    freed_blocks: HashSet<u64>,
    pending_frees: HashMap<u32, u64>,
}

impl Allocator {
    fn empty(chunk_area: u64, chunk_count: u64) -> Allocator {
        Allocator {
            chunk_area,
            chunk_count,
            runs: HashMap::new(),
            partial: vec![BTreeSet::new(); NCLASSES],
            free_by_start: BTreeMap::new(),
            free_by_len: BTreeSet::new(),
            large: BTreeMap::new(),
            undo: Vec::new(),
            deferred: Vec::new(),
            freed_blocks: HashSet::new(),
            pending_frees: HashMap::new(),
        }
    }

    pub(crate) fn chunk_offset(&self, c: u32) -> u64 {
        self.chunk_area + c as u64 * CHUNK
    }

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

    // ---- raw index edits (journaled for undo) -------------------------------------------

    fn remove_extent(&mut self, s: u32, n: u32) {
        let old = self.free_by_start.remove(&s);
        debug_assert_eq!(old, Some(n));
        self.free_by_len.remove(&(n, s));
    }

    fn insert_extent(&mut self, s: u32, n: u32) {
        debug_assert!(n > 0);
        let old = self.free_by_start.insert(s, n);
        debug_assert!(old.is_none());
        self.free_by_len.insert((n, s));
    }

    /// Insert a free extent, merging with free neighbours (commit time and rebuild only).
    fn insert_coalesced(&mut self, mut s: u32, mut n: u32) {
        if let Some((&ps, &pn)) = self.free_by_start.range(..s).next_back() {
            if ps + pn == s {
                self.remove_extent(ps, pn);
                s = ps;
                n += pn;
            }
        }
        if let Some(&nn) = self.free_by_start.get(&(s + n)) {
            self.remove_extent(s + n, nn);
            n += nn;
        }
        self.insert_extent(s, n);
    }

    fn run_free_delta(&mut self, c: u32, delta: i64) {
        let rs = self.runs.get_mut(&c).expect("live run");
        rs.free = (rs.free as i64 + delta) as u64;
        if rs.free == 0 {
            self.partial[rs.class].remove(&c);
        } else {
            self.partial[rs.class].insert(c);
        }
    }

    // ---- operations inside a transaction --------------------------------------------------

    /// Allocate `size` bytes at `align`; returns the object's file offset.
    pub(crate) fn alloc(&mut self, mem: &mut dyn TxMem, size: u64, align: u64) -> Result<u64> {
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(Error::UnsupportedAlignment {
                align,
                max: MAX_ALIGN,
            });
        }
        match class_for(size, align) {
            Some(class) if size <= SMALL_MAX => self.alloc_small(mem, class),
            _ => self.alloc_large(mem, size),
        }
    }

    fn alloc_small(&mut self, mem: &mut dyn TxMem, class: usize) -> Result<u64> {
        let c = match self.partial[class].first() {
            Some(&c) => c,
            None => self.new_run(mem, class)?,
        };
        let g = RunGeom::of_class(class);
        let base = self.chunk_offset(c);
        let words = g.bitmap_words();
        let hint = self.runs[&c].hint;
        for i in 0..words {
            let w = (hint + i) % words;
            let word_off = base + CHUNK_HEADER_LEN + w * 8;
            let word = read_u64(mem, word_off);
            let valid = (g.block_count - w * 64).min(64);
            let mut avail = !word
                & if valid == 64 {
                    u64::MAX
                } else {
                    (1u64 << valid) - 1
                };
            while avail != 0 {
                let bit = avail.trailing_zeros() as u64;
                avail &= avail - 1;
                let idx = w * 64 + bit;
                let off = base + g.data_offset + idx * g.block_size;
                if self.freed_blocks.contains(&off) {
                    continue; // freed by this transaction: not reusable before it commits
                }
                mem.write(word_off, &(word | 1 << bit).to_le_bytes())?;
                self.run_free_delta(c, -1);
                self.undo.push(Undo::RunFree(c, -1));
                self.runs.get_mut(&c).expect("live run").hint = w;
                return Ok(off);
            }
        }
        Err(Error::Corrupt {
            offset: base,
            what: format!(
                "run counted {} free blocks but its bitmap has none",
                self.runs[&c].free
            ),
        })
    }

    fn new_run(&mut self, mem: &mut dyn TxMem, class: usize) -> Result<u32> {
        let c = self.alloc_extent(mem, 1)?;
        let g = RunGeom::of_class(class);
        let at = self.chunk_offset(c);
        mem.write(at, &ChunkHeader::Run { class }.encode())?;
        mem.write(
            at + CHUNK_HEADER_LEN,
            &vec![0u8; (g.bitmap_words() * 8) as usize],
        )?;
        self.runs.insert(
            c,
            RunState {
                class,
                free: g.block_count,
                hint: 0,
            },
        );
        self.partial[class].insert(c);
        self.undo.push(Undo::RunAdded(c));
        Ok(c)
    }

    fn alloc_large(&mut self, mem: &mut dyn TxMem, size: u64) -> Result<u64> {
        let max_size = mem.max_size();
        let too_big = || Error::OutOfSpace {
            requested: size,
            max_size,
        };
        let chunks = size
            .checked_add(LARGE_DATA_OFFSET)
            .ok_or_else(too_big)?
            .div_ceil(CHUNK);
        let chunks = u32::try_from(chunks).map_err(|_| too_big())?;
        let s = self.alloc_extent(mem, chunks)?;
        let at = self.chunk_offset(s);
        mem.write(at, &ChunkHeader::Large { chunks, size }.encode())?;
        self.large.insert(s, (chunks, size));
        self.undo.push(Undo::LargeAdded(s));
        Ok(at + LARGE_DATA_OFFSET)
    }

    /// Take `n` chunks, best fit, growing the heap if nothing fits.
    fn alloc_extent(&mut self, mem: &mut dyn TxMem, n: u32) -> Result<u32> {
        if self.free_by_len.range((n, 0)..).next().is_none() {
            self.grow(mem, n)?;
        }
        let &(len, s) = self
            .free_by_len
            .range((n, 0)..)
            .next()
            .expect("grow made room");
        self.remove_extent(s, len);
        self.undo.push(Undo::ExtentRemoved(s, len));
        if len > n {
            self.insert_extent(s + n, len - n);
            self.undo.push(Undo::ExtentInserted(s + n, len - n));
            mem.write(
                self.chunk_offset(s + n),
                &ChunkHeader::Free { chunks: len - n }.encode(),
            )?;
        }
        Ok(s)
    }

    fn grow(&mut self, mem: &mut dyn TxMem, n: u32) -> Result<()> {
        let cc = self.chunk_count;
        let tail = self
            .free_by_start
            .range(..cc as u32)
            .next_back()
            .filter(|(&s, &l)| s as u64 + l as u64 == cc)
            .map(|(&s, &l)| (s, l));
        let need = n as u64 - tail.map_or(0, |t| t.1 as u64);
        let max_size = mem.max_size();
        let max = (max_size.saturating_sub(self.chunk_area) / CHUNK).min(u32::MAX as u64);
        let new_cc = (cc + need.max(GROW_MIN_CHUNKS).max(cc / 4)).min(max);
        if new_cc < cc + need {
            return Err(Error::OutOfSpace {
                requested: n as u64 * CHUNK,
                max_size,
            });
        }
        mem.ensure_chunks(new_cc)?;
        self.undo.push(Undo::ChunkCount(cc));
        self.chunk_count = new_cc;
        let start = match tail {
            Some((s, l)) => {
                self.remove_extent(s, l);
                self.undo.push(Undo::ExtentRemoved(s, l));
                s
            }
            None => cc as u32,
        };
        let len = (new_cc - start as u64) as u32;
        self.insert_extent(start, len);
        self.undo.push(Undo::ExtentInserted(start, len));
        mem.write(
            self.chunk_offset(start),
            &ChunkHeader::Free { chunks: len }.encode(),
        )
    }

    /// Free the allocation starting at `off`. The space is reusable after commit.
    pub(crate) fn free(&mut self, mem: &mut dyn TxMem, off: u64) -> Result<()> {
        let invalid = |why| Error::InvalidFree { offset: off, why };
        if off < self.chunk_area {
            return Err(invalid(
                "not inside the chunk area (the root cannot be freed)",
            ));
        }
        let c64 = (off - self.chunk_area) / CHUNK;
        if c64 >= self.chunk_count {
            return Err(Error::OutOfBounds {
                offset: off,
                len: 0,
                heap_end: self.chunk_offset(0) + self.chunk_count * CHUNK,
            });
        }
        let c = c64 as u32;
        let base = self.chunk_offset(c);
        if let Some(rs) = self.runs.get(&c) {
            let g = RunGeom::of_class(rs.class);
            let rel = off
                .checked_sub(base + g.data_offset)
                .ok_or_else(|| invalid("points into a run header"))?;
            if rel % g.block_size != 0 || rel / g.block_size >= g.block_count {
                return Err(invalid("not the start of a block"));
            }
            if self.freed_blocks.contains(&off) {
                return Err(invalid("already freed in this transaction"));
            }
            let idx = rel / g.block_size;
            let word_off = base + CHUNK_HEADER_LEN + (idx / 64) * 8;
            let word = read_u64(mem, word_off);
            if word & (1 << (idx % 64)) == 0 {
                return Err(invalid("block is not allocated (double free?)"));
            }
            mem.write(word_off, &(word & !(1 << (idx % 64))).to_le_bytes())?;
            self.freed_blocks.insert(off);
            *self.pending_frees.entry(c).or_insert(0) += 1;
            self.deferred.push(Deferred::BlockFreed(c));
            return Ok(());
        }
        match self.large.get(&c) {
            Some(&(chunks, size)) if off == base + LARGE_DATA_OFFSET => {
                mem.write(base, &ChunkHeader::Free { chunks }.encode())?;
                self.large.remove(&c);
                self.undo.push(Undo::LargeRemoved(c, (chunks, size)));
                self.deferred.push(Deferred::ExtentFreed(c, chunks));
                Ok(())
            }
            _ => Err(invalid("not the start of an allocation")),
        }
    }

    /// If `off` is the data start of a live large object: its extent's data area
    /// `[off, end of the extent's last chunk)`.
    pub(crate) fn large_extent(&self, off: u64) -> Option<(u64, u64)> {
        let c = u32::try_from(off.checked_sub(self.chunk_area)? / CHUNK).ok()?;
        let &(chunks, _) = self.large.get(&c)?;
        (off == self.chunk_offset(c) + LARGE_DATA_OFFSET)
            .then(|| (off, self.chunk_offset(c) + chunks as u64 * CHUNK))
    }

    /// The usable size of the allocation at `off` (for `realloc`-like helpers and checks).
    pub(crate) fn usable_size(&self, off: u64) -> Option<u64> {
        let c = u32::try_from(off.checked_sub(self.chunk_area)? / CHUNK).ok()?;
        if let Some(rs) = self.runs.get(&c) {
            return Some(CLASSES[rs.class] as u64);
        }
        self.large.get(&c).map(|&(_, size)| size)
    }

    /// Whether `[off, off+len)` (already inside the chunk area) lies inside one live allocation:
    /// one allocated block of a run (its bit set in the bitmap as `read` shows it: the
    /// transaction's view, so a block freed earlier in the same transaction is refused), or the
    /// `size` bytes of a live large object. So a user write cannot hit chunk headers, bitmaps,
    /// free space, a freed block or a neighbouring object.
    pub(crate) fn check_writable(
        &self,
        off: u64,
        len: u64,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<()> {
        let not = Error::NotAllocated { offset: off, len };
        let Some(rel) = off.checked_sub(self.chunk_area) else {
            return Err(not);
        };
        let Ok(c) = u32::try_from(rel / CHUNK) else {
            return Err(not);
        };
        let end = off
            .checked_add(len)
            .ok_or(Error::NotAllocated { offset: off, len })?;
        if let Some(rs) = self.runs.get(&c) {
            let g = RunGeom::of_class(rs.class);
            let base = self.chunk_offset(c);
            let Some(rel) = off.checked_sub(base + g.data_offset) else {
                return Err(not);
            };
            let idx = rel / g.block_size;
            let block_end = base + g.data_offset + (idx + 1) * g.block_size;
            if idx >= g.block_count || end > block_end {
                return Err(not);
            }
            let mut word = [0u8; 8];
            read(base + CHUNK_HEADER_LEN + (idx / 64) * 8, &mut word);
            return if u64::from_le_bytes(word) & (1 << (idx % 64)) != 0 {
                Ok(())
            } else {
                Err(not)
            };
        }
        match self.large.range(..=c).next_back() {
            Some((&s, &(_, size)))
                if off >= self.chunk_offset(s) + LARGE_DATA_OFFSET
                    && end <= self.chunk_offset(s) + LARGE_DATA_OFFSET + size =>
            {
                Ok(())
            }
            _ => Err(not),
        }
    }

    /// Before the frame is built: give back runs this transaction emptied, when their class has
    /// another run with room (so alternating alloc/free does not reformat a chunk each time).
    pub(crate) fn prepare_commit(&mut self, mem: &mut dyn TxMem) -> Result<()> {
        let mut emptied: Vec<u32> = self
            .pending_frees
            .iter()
            .filter(|(c, &k)| {
                let rs = &self.runs[c];
                rs.free + k == RunGeom::of_class(rs.class).block_count
            })
            .map(|(&c, _)| c)
            .collect();
        emptied.sort_unstable();
        for c in emptied {
            let class = self.runs[&c].class;
            if self.partial[class].iter().any(|&o| o != c) {
                mem.write(
                    self.chunk_offset(c),
                    &ChunkHeader::Free { chunks: 1 }.encode(),
                )?;
                self.deferred.push(Deferred::RunReleased(c));
            }
        }
        Ok(())
    }

    /// The transaction committed: deferred frees become reusable.
    pub(crate) fn commit(&mut self) {
        for d in std::mem::take(&mut self.deferred) {
            match d {
                Deferred::BlockFreed(c) => self.run_free_delta(c, 1),
                Deferred::ExtentFreed(s, n) => self.insert_coalesced(s, n),
                Deferred::RunReleased(c) => {
                    let rs = self.runs.remove(&c).expect("released run was live");
                    self.partial[rs.class].remove(&c);
                    self.insert_coalesced(c, 1);
                }
            }
        }
        self.undo.clear();
        self.freed_blocks.clear();
        self.pending_frees.clear();
    }

    /// The transaction aborted: restore the indexes exactly.
    pub(crate) fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::ExtentRemoved(s, n) => self.insert_extent(s, n),
                Undo::ExtentInserted(s, n) => self.remove_extent(s, n),
                Undo::ChunkCount(cc) => self.chunk_count = cc,
                Undo::RunFree(c, d) => self.run_free_delta(c, -d),
                Undo::RunAdded(c) => {
                    let rs = self.runs.remove(&c).expect("added run");
                    self.partial[rs.class].remove(&c);
                }
                Undo::LargeAdded(s) => {
                    self.large.remove(&s);
                }
                Undo::LargeRemoved(s, v) => {
                    self.large.insert(s, v);
                }
            }
        }
        self.deferred.clear();
        self.freed_blocks.clear();
        self.pending_frees.clear();
    }

    /// Numbers for [`crate::Stats`]: (used bytes, free bytes, largest free extent, per class).
    pub(crate) fn stats(&self) -> (u64, u64, u64, Vec<ClassStats>) {
        let mut classes: Vec<ClassStats> = CLASSES
            .iter()
            .map(|&bs| ClassStats {
                block_size: bs as u64,
                ..Default::default()
            })
            .collect();
        let mut used = 0;
        let mut free = 0;
        for rs in self.runs.values() {
            let g = RunGeom::of_class(rs.class);
            let cs = &mut classes[rs.class];
            cs.runs += 1;
            cs.used_blocks += g.block_count - rs.free;
            cs.free_blocks += rs.free;
            used += (g.block_count - rs.free) * g.block_size;
            free += rs.free * g.block_size;
        }
        for &(_, size) in self.large.values() {
            used += size;
        }
        let mut largest = 0;
        for &(n, _) in &self.free_by_len {
            free += n as u64 * CHUNK;
            largest = largest.max(n as u64 * CHUNK);
        }
        (used, free, largest, classes)
    }

    /// Check the indexes against each other (tests and debug builds).
    #[cfg(debug_assertions)]
    pub(crate) fn check_invariants(&self) {
        let mut covered = vec![0u8; self.chunk_count as usize];
        let mut mark = |s: u32, n: u32, what: &str| {
            for c in s..s + n {
                assert!(
                    (c as u64) < self.chunk_count,
                    "{what} chunk {c} past chunk count"
                );
                assert_eq!(covered[c as usize], 0, "chunk {c} owned twice ({what})");
                covered[c as usize] = 1;
            }
        };
        for (&s, &n) in &self.free_by_start {
            assert!(self.free_by_len.contains(&(n, s)));
            mark(s, n, "free");
        }
        assert_eq!(self.free_by_start.len(), self.free_by_len.len());
        for &c in self.runs.keys() {
            mark(c, 1, "run");
        }
        for (&s, &(n, _)) in &self.large {
            mark(s, n, "large");
        }
        for (class, set) in self.partial.iter().enumerate() {
            for c in set {
                let rs = &self.runs[c];
                assert_eq!(rs.class, class);
                assert!(rs.free > 0);
            }
        }
        assert!(
            covered.iter().all(|&x| x == 1),
            "a chunk belongs to nothing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_ascend_and_geometry_fits() {
        assert_eq!(CLASSES[0], 16);
        assert_eq!(CLASSES[7], 128);
        assert_eq!(CLASSES[8], 160);
        assert_eq!(SMALL_MAX, 65536);
        for w in CLASSES.windows(2) {
            assert!(w[0] < w[1]);
        }
        for class in 0..NCLASSES {
            let g = RunGeom::of_class(class);
            assert!(g.block_count >= 3, "class {class}");
            assert_eq!(g.data_offset % 64, 0);
            assert!(g.data_offset >= CHUNK_HEADER_LEN + g.bitmap_words() * 8);
            assert!(g.data_offset + g.block_count * g.block_size <= CHUNK);
            // maximal: one more block would not fit
            let n = g.block_count + 1;
            let d = (CHUNK_HEADER_LEN + n.div_ceil(64) * 8).div_ceil(64) * 64;
            assert!(d + n * g.block_size > CHUNK);
        }
    }

    #[test]
    fn class_for_respects_alignment() {
        assert_eq!(CLASSES[class_for(1, 1).unwrap()], 16);
        assert_eq!(CLASSES[class_for(17, 8).unwrap()], 32);
        assert_eq!(CLASSES[class_for(65, 64).unwrap()], 128);
        assert_eq!(CLASSES[class_for(48, 32).unwrap()], 64);
        assert!(class_for(65537, 16).is_none());
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        for h in [
            ChunkHeader::Free { chunks: 3 },
            ChunkHeader::Run { class: 5 },
            ChunkHeader::Large {
                chunks: 2,
                size: 300_000,
            },
        ] {
            let b = h.encode();
            assert_eq!(ChunkHeader::decode(&b, 0).unwrap(), h);
            for i in 0..64 {
                let mut d = b;
                d[i] ^= 0x10;
                assert!(
                    ChunkHeader::decode(&d, 0).is_err(),
                    "flip at {i} accepted for {h:?}"
                );
            }
        }
        let hh = HeapHeader {
            chunk_count: 9,
            root_size: 16,
            root_fingerprint: 77,
            root_align: 8,
        };
        assert_eq!(HeapHeader::decode(&hh.encode(), 0).unwrap(), hh);
        let mut d = hh.encode();
        d[9] ^= 1;
        assert!(matches!(
            HeapHeader::decode(&d, 5),
            Err(Error::Corrupt { offset: 5, .. })
        ));
    }
}
