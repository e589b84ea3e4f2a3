//! Structured, checksum-resealing mutation of valid heap images, and the checks run on them.
//!
//! Shared by the fuzz target `fuzz/fuzz_targets/open_recover_sealed.rs` (nightly, libFuzzer) and
//! the stable test `tests/fuzz_sealed_corpus.rs` (which replays the committed corpus through
//! exactly this code), each with `#[path]`; it uses only crates both have: `txheap`,
//! `txheap_log`, `txheap_recovery`, `crc32fast` and `libc`.
//!
//! An input is `[seed selector][op; OP_LEN]...`. The selector picks one of [`SEEDS`] or
//! [`EXTRA_SEEDS`] ([`seed_for`]; valid
//! images, embedded); each 16-byte op mutates one field of one structure of the image, found by
//! parsing its current state (superblock slots, log frames and their ranges, heap header, zone
//! chunk-table entries, run bitmaps), or appends a frame built with `txheap_log::FrameBuilder`,
//! or changes the file's length. Then [`seal`] recomputes every checksum, so the image gets past
//! the checksum checks that refuse nearly every blind mutation (format version 3):
//!
//! - each superblock slot with the magic: CRC32 of bytes 0..124 at 124..128 (any version);
//! - the heap header at `heap_offset` if it has its magic: CRC32 of 0..60 at 60..64;
//! - every chunk-table entry inside the file whose kind byte is 1..=4: the tables are at chunk
//!   `z * 16384` of every zone `z` (file offset `heap_offset + 8192 + z * 16384 * 262144`),
//!   16384 entries of 16 bytes each; the entry check (bytes 2..4) is the low 16 bits of CRC32
//!   over the 16 bytes with the check zeroed. Entries of any other kind byte (0 for an unused
//!   entry) are left as they are;
//! - log frames, walked from `log_offset` by their `payload_len` (stopping at the first without
//!   the magic, with a length not a multiple of 8 or running past the log region): first the
//!   heap header and the table entries carried whole inside their ranges (as above, at their
//!   file offsets), then the frame check (XXH3-64 low 32 bits over header bytes 0..36 and the
//!   payload). The check is computed by the log crate itself: `verify_frame` reports the
//!   computed value in `BadChecksum`.
//!
//! `heap_offset` comes from the newest slot with the magic and a plausible `log_size` (else the
//! seed's). An op may also leave a checksum broken on purpose (a post-seal byte flip).
//!
//! **An independent reading of the format, on purpose.** The superblock and log constants come
//! from the recovery and log crates, but the allocator's format (heap header layout, zones and
//! their chunk-table entries, the size-class table and run geometry) is declared here again from
//! the format's description rather than imported: txheap keeps it private, and a second reading
//! catches an encoder and a decoder that agree with each other but not with the description.
//! Only what the fuzzer must know to find and reseal fields, and to check an opened file's
//! tables ([`format_violation`]), is declared. Format 3 in short:
//!
//! - zone `z` = chunks `z * 16384 ..`; chunk `z * 16384` is its table, entry `i` describing
//!   chunk `z * 16384 + i` when an extent starts there; entry 0 is `TABLE`, no other is;
//!   extents never cross a zone; the walk goes from entry 0 by extent lengths up to the heap
//!   header's `chunk_count` and reads only the entries where extents start;
//! - entry: byte 0 kind (1 `FREE`, 2 `RUN`, 3 `LARGE`, 4 `TABLE`), byte 1 size class (run) else
//!   0, bytes 2..4 check, bytes 4..8 extent chunks (1 for `RUN` and `TABLE`, at most 16383),
//!   bytes 8..16 large object size (at least 1, at most its chunks' bytes) else 0;
//! - a run has no header: its bitmap is at chunk offset 0, its blocks from `data_offset`; a
//!   large object starts at chunk offset 0;
//! - superblock `file_len` (u64 at 80..88, at most `max_size`; 88..124 reserved zero): a file
//!   shorter than it is refused as truncated. An open reads no run bitmap: bitmap damage shows
//!   at a run's first use (allocation, free, stats) as `Error::Corrupt`.

#![allow(dead_code)]

use std::path::Path;

use txheap::{Error, Heap, Options, PPtr, PSlice};
use txheap_recovery::{
    Storage, CHUNK_SIZE, COUNTER_MAX, HEAP_META_LEN, LOG_OFFSET, LOG_SIZE_MIN, PAGE_SIZE,
    SUPERBLOCK_ENCODED_LEN, SUPERBLOCK_MAGIC, SUPERBLOCK_SLOT_LEN,
};

/// Bytes per op.
pub const OP_LEN: usize = 16;
/// Ops after this many are ignored.
pub const MAX_OPS: usize = 64;
/// Files may not grow past this (`RLIMIT_FSIZE`, see [`limit_file_size`]): a hostile but valid
/// `max_size` and chunk count would otherwise make each execution fallocate gigabytes of tmpfs.
pub const FILE_SIZE_LIMIT: u64 = 128 << 20;

/// The seed images: the five of `fuzz/seeds/` (no chunks yet) and three of
/// `fuzz/seeds-sealed/` (zone 0's table, runs, large objects, free extents, generation 2 in slot
/// B; frames in the log), written by `tests/fuzz_sealed_corpus.rs` (`write_sealed_seeds`).
pub static SEEDS: [(&str, &[u8]); 8] = [
    ("fresh", include_bytes!("seeds/fresh.img")),
    ("frames-0", include_bytes!("seeds/frames-0.img")),
    ("frames-1", include_bytes!("seeds/frames-1.img")),
    ("frames-2", include_bytes!("seeds/frames-2.img")),
    ("closed", include_bytes!("seeds/closed.img")),
    ("runs-live", include_bytes!("seeds-sealed/runs-live.img")),
    (
        "extents-live",
        include_bytes!("seeds-sealed/extents-live.img"),
    ),
    ("gen2-live", include_bytes!("seeds-sealed/gen2-live.img")),
];

/// Seeds added after the corpus was minimized, chosen by selectors that no committed input
/// uses (`EXTRA_SELECTORS`), so that every committed input keeps its seed: a `Durability::None`
/// heap whose log holds a frame with an in-place check (an extent written straight into the
/// heap), the flush's two vouchers (the first with a padding range up to the next 4096-byte
/// boundary) and frames after them, written by `tests/fuzz_sealed_corpus.rs`
/// (`write_checked_seed`).
pub static EXTRA_SEEDS: [(&str, &[u8]); 1] = [(
    "checked-live",
    include_bytes!("seeds-sealed/checked-live.img"),
)];

/// The selectors of [`EXTRA_SEEDS`] (in turn); every other selector `s` picks
/// `SEEDS[s % SEEDS.len()]`, as before they were added.
pub const EXTRA_SELECTORS: std::ops::RangeInclusive<u8> = 248..=250;

/// The seed image selector `sel` picks.
pub fn seed_for(sel: u8) -> &'static [u8] {
    if EXTRA_SELECTORS.contains(&sel) {
        let i = (sel - EXTRA_SELECTORS.start()) as usize;
        EXTRA_SEEDS[i % EXTRA_SEEDS.len()].1
    } else {
        SEEDS[sel as usize % SEEDS.len()].1
    }
}

const SB_LEN: usize = SUPERBLOCK_ENCODED_LEN;
const SLOTS: [usize; 2] = [0, SUPERBLOCK_SLOT_LEN as usize];
const LOG_OFF: usize = LOG_OFFSET as usize;
const CHUNK: usize = CHUNK_SIZE as usize;
const META: usize = HEAP_META_LEN as usize;
const FRAME_HDR: usize = txheap_log::FRAME_HEADER_LEN;
const RANGE_HDR: usize = txheap_log::RANGE_HEADER_LEN;
const HEAP_MAGIC: &[u8; 8] = b"TXHEAPHH";
const HEAP_HDR: usize = 64;
/// Superblock `file_len` (u64) and the reserved bytes after it.
const SB_FILE_LEN: usize = 80;
const SB_RESERVED: usize = 88;
/// Chunks per zone; chunk `z * ZONE_CHUNKS` holds zone `z`'s table.
const ZONE_CHUNKS: usize = 16384;
/// Bytes of one chunk-table entry (the table fills its chunk exactly).
const ENTRY: usize = 16;
/// The most chunks one extent may take (a zone less its table).
const EXTENT_CHUNKS_MAX: u64 = ZONE_CHUNKS as u64 - 1;
const KIND_FREE: u8 = 1;
const KIND_RUN: u8 = 2;
const KIND_LARGE: u8 = 3;
const KIND_TABLE: u8 = 4;
// Entry fields.
const E_KIND: usize = 0;
const E_CLASS: usize = 1;
const E_CHECK: usize = 2;
const E_CHUNKS: usize = 4;
const E_SIZE: usize = 8;
const NCLASSES: usize = 44;
const ROOT_AREA: usize = 4096;
/// An image never grows past its seed's length plus this (keeps executions fast).
const GROW_LIMIT: usize = 4 << 20;

// ---- little-endian helpers -------------------------------------------------------------------

fn get(img: &[u8], off: usize, width: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = img.get(off..off.saturating_add(width)) {
        b[..width].copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn put(img: &mut [u8], off: usize, width: usize, v: u64) {
    if let Some(s) = img.get_mut(off..off.saturating_add(width)) {
        s.copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

fn mask(v: u64, width: usize) -> u64 {
    if width >= 8 {
        v
    } else {
        v & ((1u64 << (width * 8)) - 1)
    }
}

// ---- layout ----------------------------------------------------------------------------------

/// A superblock slot's fields as stored (not validated).
#[derive(Debug, Clone, Copy, Default)]
struct SbFields {
    seq: u64,
    generation: u64,
    next_txid: u64,
    log_size: u64,
    max_size: u64,
    file_len: u64,
}

#[derive(Debug, Clone)]
struct RangeLoc {
    /// File offset of the range header.
    hdr: usize,
    /// File offset of its bytes.
    data: usize,
    len: usize,
    /// Where the bytes go.
    target: u64,
}

#[derive(Debug, Clone)]
struct FrameLoc {
    off: usize,
    len: usize,
    generation: u64,
    txid: u64,
    ranges: Vec<RangeLoc>,
}

/// The image's structures as they are now.
#[derive(Debug, Clone)]
struct Layout {
    len: usize,
    sb: SbFields,
    heap: usize,
    /// `heap + 8192`: chunk 0, zone 0's table.
    chunk_area: usize,
    log_end: usize,
    frames: Vec<FrameLoc>,
    /// End of the committed frames (what replay would accept) and the next txid there.
    tail: usize,
    expected_txid: u64,
    /// The heap header's chunk count as stored.
    chunk_count: u64,
    /// Chunk positions that start inside the file.
    chunks: usize,
    /// The extents a walk of the tables finds as they stand, `(chunk, kind)`: from each zone's
    /// entry 0 by extent lengths, up to the chunk count and the file's end, stopping at an entry
    /// that is none (its checks are not looked at: the image is being mutated).
    extents: Vec<(usize, u8)>,
}

/// File offset of chunk `c`'s table entry (in its zone's table).
fn entry_at(chunk_area: usize, c: usize) -> usize {
    let zone_first = c - c % ZONE_CHUNKS;
    chunk_area + zone_first * CHUNK + (c % ZONE_CHUNKS) * ENTRY
}

/// File offset of chunk `c`.
fn chunk_at(chunk_area: usize, c: usize) -> usize {
    chunk_area + c * CHUNK
}

/// The chunks an extent starting with `entry` takes, as a walk reads them (0: no entry).
fn extent_chunks(entry: &[u8]) -> u64 {
    match entry[E_KIND] {
        KIND_RUN | KIND_TABLE => 1,
        KIND_FREE | KIND_LARGE => get(entry, E_CHUNKS, 4),
        _ => 0,
    }
}

fn walk_tables(img: &[u8], chunk_area: usize, chunk_count: u64, chunks: usize) -> Vec<(usize, u8)> {
    let count = (chunk_count.min(chunks as u64)) as usize;
    let mut out = Vec::new();
    let mut first = 0;
    while first < count {
        let used = (count - first).min(ZONE_CHUNKS);
        let mut i = 0;
        while i < used {
            let at = entry_at(chunk_area, first + i);
            let Some(e) = img.get(at..at + ENTRY) else {
                break;
            };
            let n = extent_chunks(e);
            if n == 0 {
                break;
            }
            out.push((first + i, e[E_KIND]));
            i = i.saturating_add(n as usize);
        }
        first += ZONE_CHUNKS;
    }
    out
}

fn read_sb(img: &[u8], slot: usize) -> Option<SbFields> {
    if img.len() < slot + SB_LEN || img[slot..slot + 8] != SUPERBLOCK_MAGIC {
        return None;
    }
    Some(SbFields {
        seq: get(img, slot + 16, 8),
        generation: get(img, slot + 24, 8),
        next_txid: get(img, slot + 32, 8),
        log_size: get(img, slot + 48, 8),
        max_size: get(img, slot + 64, 8),
        file_len: get(img, slot + SB_FILE_LEN, 8),
    })
}

fn layout(img: &[u8], default_log_size: usize) -> Layout {
    let len = img.len();
    let plausible = |s: &SbFields| {
        s.log_size % PAGE_SIZE == 0
            && s.log_size >= LOG_SIZE_MIN
            && s.log_size <= (len as u64).saturating_sub(LOG_OFFSET + HEAP_HDR as u64)
    };
    let slots: Vec<SbFields> = SLOTS
        .iter()
        .filter_map(|&s| read_sb(img, s))
        .filter(plausible)
        .collect();
    let mut sb = slots.first().copied().unwrap_or(SbFields {
        seq: 1,
        generation: 1,
        next_txid: 1,
        log_size: default_log_size as u64,
        max_size: 0,
        file_len: 0,
    });
    for s in &slots {
        if s.seq > sb.seq {
            sb = *s;
        }
    }
    let heap = LOG_OFF + sb.log_size as usize;
    let log_end = heap.min(len);
    let mut frames = Vec::new();
    let mut at = LOG_OFF;
    while at + FRAME_HDR <= log_end && get(img, at, 4) == txheap_log::FRAME_MAGIC as u64 {
        let pl = get(img, at + txheap_log::PAYLOAD_LEN_OFFSET, 4) as usize;
        if pl % 8 != 0 || at + FRAME_HDR + pl > log_end {
            break;
        }
        let end = at + FRAME_HDR + pl;
        let mut ranges = Vec::new();
        let mut r = at + FRAME_HDR;
        for _ in 0..get(img, at + txheap_log::RANGE_COUNT_OFFSET, 4) {
            if end - r < RANGE_HDR {
                break;
            }
            let rl = get(img, r + txheap_log::RANGE_LEN_OFFSET, 4) as usize;
            if end - r - RANGE_HDR < rl.div_ceil(8) * 8 {
                break;
            }
            ranges.push(RangeLoc {
                hdr: r,
                data: r + RANGE_HDR,
                len: rl,
                target: get(img, r + txheap_log::RANGE_OFFSET_OFFSET, 8),
            });
            r += RANGE_HDR + rl.div_ceil(8) * 8;
        }
        frames.push(FrameLoc {
            off: at,
            len: end - at,
            generation: get(img, at + txheap_log::GENERATION_OFFSET, 8),
            txid: get(img, at + txheap_log::TXID_OFFSET, 8),
            ranges,
        });
        at = end;
    }
    let (mut tail, mut expected_txid) = (LOG_OFF, sb.next_txid);
    for f in &frames {
        if f.generation != sb.generation || f.txid != expected_txid {
            break;
        }
        tail = f.off + f.len;
        expected_txid = expected_txid.wrapping_add(1);
    }
    let chunk_area = heap + META;
    let chunks = len.saturating_sub(chunk_area).div_ceil(CHUNK);
    let chunk_count = get(img, heap + 8, 8);
    let extents = walk_tables(img, chunk_area, chunk_count, chunks);
    Layout {
        len,
        sb,
        heap,
        chunk_area,
        log_end,
        frames,
        tail,
        expected_txid,
        chunk_count,
        chunks,
        extents,
    }
}

impl Layout {
    /// A chunk for an op: the `idx`-th (modulo) of the extents the walk finds (of `kind` if
    /// given) when `walked` and there are any, else the `idx`-th chunk position in the file.
    fn target_chunk(&self, idx: usize, walked: bool, kind: Option<u8>) -> usize {
        if walked {
            let starts: Vec<usize> = self
                .extents
                .iter()
                .filter(|&&(_, k)| kind.is_none_or(|want| want == k))
                .map(|&(c, _)| c)
                .collect();
            if !starts.is_empty() {
                return starts[idx % starts.len()];
            }
        }
        idx % self.chunks.max(1)
    }
    fn entry_at(&self, c: usize) -> usize {
        entry_at(self.chunk_area, c)
    }
    fn chunk_at(&self, c: usize) -> usize {
        chunk_at(self.chunk_area, c)
    }
}

// ---- sealing ---------------------------------------------------------------------------------

fn seal_heap_header(b: &mut [u8]) {
    if b.len() >= HEAP_HDR && &b[..8] == HEAP_MAGIC {
        let c = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
    }
}

/// The entry check: the low 16 bits of CRC32 over the 16 bytes with the check bytes zeroed.
fn entry_check(e: &[u8]) -> u16 {
    let mut h = crc32fast::Hasher::new();
    h.update(&e[..E_CHECK]);
    h.update(&[0, 0]);
    h.update(&e[E_CHUNKS..ENTRY]);
    h.finalize() as u16
}

/// Reseal one chunk-table entry if its kind byte names an entry.
fn seal_entry(e: &mut [u8]) {
    if e.len() >= ENTRY && (KIND_FREE..=KIND_TABLE).contains(&e[E_KIND]) {
        let c = entry_check(e);
        e[E_CHECK..E_CHUNKS].copy_from_slice(&c.to_le_bytes());
    }
}

/// Bytes of one zone (its table chunk and the rest).
const ZONE_BYTES: u128 = ZONE_CHUNKS as u128 * CHUNK as u128;

/// The file offsets of the table entries lying whole inside `[start, end)`, for the chunk area
/// at `chunk_area`, in order; `f(offset)` for each.
fn entries_within(chunk_area: usize, start: u128, end: u128, mut f: impl FnMut(u128)) {
    let ca = chunk_area as u128;
    let mut z = start.saturating_sub(ca) / ZONE_BYTES;
    loop {
        let table = ca + z * ZONE_BYTES;
        if table >= end {
            return;
        }
        let first = if start <= table {
            0
        } else {
            (start - table).div_ceil(ENTRY as u128)
        };
        let mut k = first;
        while k < ZONE_CHUNKS as u128 && table + (k + 1) * ENTRY as u128 <= end {
            f(table + k * ENTRY as u128);
            k += 1;
        }
        z += 1;
    }
}

/// The frame check of `header[..CHECK_OFFSET]` and `payload`, computed by `txheap_log::verify_frame` (the
/// function replay uses): it reports the computed value when the stored one differs, and gets
/// past the check (to `Ok` or `Malformed`) only when they are equal.
pub fn frame_check(header: &[u8; FRAME_HDR], payload: &[u8]) -> u32 {
    let h = txheap_log::FrameHeader {
        range_count: get(header, txheap_log::RANGE_COUNT_OFFSET, 4) as u32,
        generation: get(header, txheap_log::GENERATION_OFFSET, 8),
        txid: get(header, txheap_log::TXID_OFFSET, 8),
        durable_txid: get(header, txheap_log::DURABLE_TXID_OFFSET, 8),
        payload_len: payload.len() as u32,
        check: get(header, txheap_log::CHECK_OFFSET, 4) as u32,
    };
    match txheap_log::verify_frame(header, &h, payload) {
        Err(txheap_log::StopReason::BadChecksum { computed, .. }) => computed,
        Ok(_) | Err(txheap_log::StopReason::Malformed { .. }) => h.check,
        Err(other) => panic!("verify_frame did not reach the checksum: {other:?}"),
    }
}

/// Recompute every checksum of `img` (see the module comment for which and where).
pub fn seal(img: &mut [u8], default_log_size: usize) {
    for slot in SLOTS {
        if img.len() >= slot + SB_LEN && img[slot..slot + 8] == SUPERBLOCK_MAGIC {
            let c = crc32fast::hash(&img[slot..slot + 124]);
            img[slot + 124..slot + 128].copy_from_slice(&c.to_le_bytes());
        }
    }
    let lay = layout(img, default_log_size);
    let heap = lay.heap;
    if let Some(b) = img.get_mut(heap..heap + HEAP_HDR) {
        seal_heap_header(b);
    }
    // Every zone table inside the file, entry by entry.
    let len = img.len() as u128;
    entries_within(lay.chunk_area, lay.chunk_area as u128, len, |at| {
        let at = at as usize;
        seal_entry(&mut img[at..at + ENTRY]);
    });
    for f in &lay.frames {
        for r in &f.ranges {
            let (t, end) = (r.target as u128, r.target as u128 + r.len as u128);
            let rel = |file_off: u128| (file_off - t) as usize;
            if t <= heap as u128 && heap as u128 + HEAP_HDR as u128 <= end {
                let at = r.data + rel(heap as u128);
                seal_heap_header(&mut img[at..at + HEAP_HDR]);
            }
            entries_within(lay.chunk_area, t, end, |e| {
                let at = r.data + rel(e);
                seal_entry(&mut img[at..at + ENTRY]);
            });
        }
        let hdr: [u8; FRAME_HDR] = img[f.off..f.off + FRAME_HDR].try_into().unwrap();
        let c = frame_check(&hdr, &img[f.off + FRAME_HDR..f.off + f.len]);
        put(img, f.off + txheap_log::CHECK_OFFSET, 4, c as u64);
    }
}

// ---- ops -------------------------------------------------------------------------------------

const INTERESTING: [u64; 40] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    43,
    44,
    63,
    64,
    127,
    128,
    255,
    256,
    4095,
    4096,
    8192,
    65535,
    65536,
    CHUNK_SIZE - 1,
    CHUNK_SIZE,
    CHUNK_SIZE + 1,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    COUNTER_MAX - 1,
    COUNTER_MAX,
    COUNTER_MAX + 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
    0x5246_5854, // frame magic
    EXTENT_CHUNKS_MAX,
    ZONE_CHUNKS as u64,
    EXTENT_CHUNKS_MAX * CHUNK_SIZE, // the largest object
    i64::MAX as u64,
];

/// Size classes: 16..=128 by 16, then four per doubling up to 65536.
fn class_size(class: usize) -> u64 {
    if class < 8 {
        return 16 * (class as u64 + 1);
    }
    let base = 128u64 << ((class - 8) / 4);
    base + base / 4 * ((class - 8) % 4 + 1) as u64
}

/// `(block_size, block_count, data_offset)` of a run of `class` (no header: the bitmap at chunk
/// offset 0, the blocks from `data_offset`).
fn run_geom(class: usize) -> (u64, u64, u64) {
    let bs = class_size(class);
    let mut n = CHUNK as u64 / bs;
    loop {
        let data = (n.div_ceil(64) * 8).div_ceil(64) * 64;
        if data + n * bs <= CHUNK as u64 {
            return (bs, n, data);
        }
        n -= 1;
    }
}

struct Op {
    region: u8,
    a: u8,
    b: u8,
    p: u16,
    q: u8,
    mode: u8,
    w: u8,
    v: [u8; 8],
}

impl Op {
    fn parse(b: &[u8]) -> Op {
        Op {
            region: b[0],
            a: b[1],
            b: b[2],
            p: u16::from_le_bytes([b[3], b[4]]),
            q: b[5],
            mode: b[6],
            w: b[7],
            v: b[8..16].try_into().unwrap(),
        }
    }
    fn raw(&self) -> u64 {
        u64::from_le_bytes(self.v)
    }
    fn delta(&self) -> u64 {
        self.v[1] as i8 as i64 as u64
    }
    /// A new value for a `width`-byte field holding `cur`.
    fn value(&self, cur: u64, width: usize, other: Option<u64>, ctx: &[u64]) -> u64 {
        let pick = |t: &[u64]| t[self.v[0] as usize % t.len()];
        mask(
            match self.mode % 8 {
                1 => pick(&INTERESTING),
                2 => cur.wrapping_add(self.v[0] as i8 as i64 as u64),
                3 => pick(ctx).wrapping_add(self.delta()),
                4 => cur ^ (1u64 << (self.v[0] as usize % (width * 8))),
                5 => other.unwrap_or(cur).wrapping_add(self.delta()),
                6 => pick(&INTERESTING).wrapping_add(self.delta()),
                _ => self.raw(),
            },
            width,
        )
    }
    fn width(&self) -> usize {
        1 << (self.w % 4)
    }
}

/// The op's chunk index: `a` low byte, `q` high byte.
fn op_index(op: &Op) -> usize {
    op.a as usize | (op.q as usize) << 8
}

fn context(lay: &Layout, seed_len: usize) -> Vec<u64> {
    let chunk_area = lay.chunk_area as u64;
    let hh_count = lay.chunk_count;
    // Where the entry of chunk `chunk_count` would be (the first one the walk does not read).
    let count_entry = chunk_area
        .wrapping_add((hh_count - hh_count % ZONE_CHUNKS as u64).wrapping_mul(CHUNK_SIZE))
        .wrapping_add(hh_count % ZONE_CHUNKS as u64 * ENTRY as u64);
    vec![
        lay.len as u64,
        lay.heap as u64,
        chunk_area,
        lay.sb.log_size,
        lay.sb.max_size,
        lay.chunks as u64,
        lay.sb.generation,
        lay.sb.next_txid,
        lay.sb.seq,
        lay.expected_txid,
        (lay.tail - LOG_OFF) as u64,
        hh_count,
        chunk_area.wrapping_add(hh_count.wrapping_mul(CHUNK_SIZE)),
        chunk_area + lay.chunks as u64 * CHUNK_SIZE,
        lay.frames.len() as u64,
        seed_len as u64,
        LOG_OFFSET,
        COUNTER_MAX,
        lay.sb.file_len,
        count_entry,
    ]
}

/// Mutate the field `(off, width)` of the image, `other` being the same field of a sibling.
fn field(img: &mut [u8], op: &Op, off: usize, width: usize, other: Option<usize>, ctx: &[u64]) {
    let fits = |o: usize| o.checked_add(width).is_some_and(|e| e <= img.len());
    if !fits(off) {
        return;
    }
    let cur = get(img, off, width);
    let other = other.filter(|&o| fits(o)).map(|o| get(img, o, width));
    let v = op.value(cur, width, other, ctx);
    put(img, off, width, v);
}

fn apply(img: &mut Vec<u8>, op: &Op, seed_len: usize, post: &mut Vec<(usize, u8)>) {
    let lay = layout(img, SEED_LOG_SIZE);
    let ctx = context(&lay, seed_len);
    let nchunks = lay.chunks.max(1);
    // Ops on entries, bitmaps and frames aim at an extent the walk finds when `w & 2`.
    let walked = op.w & 2 != 0;
    match op.region % 16 {
        // Superblock field (slot a & 1), or the whole slot copied from the other one.
        0 | 1 => {
            const F: [(usize, usize); 13] = [
                (0, 8),
                (8, 4),
                (12, 4),
                (16, 8),
                (24, 8),
                (32, 8),
                (40, 8),
                (48, 8),
                (56, 8),
                (64, 8),
                (72, 4),
                (76, 4),
                (SB_FILE_LEN, 8),
            ];
            let (slot, other) = (SLOTS[op.a as usize & 1], SLOTS[(op.a as usize + 1) & 1]);
            let k = op.b as usize % (F.len() + 1);
            if k == F.len() {
                if img.len() >= SLOTS[1] + SB_LEN {
                    img.copy_within(other..other + SB_LEN, slot);
                }
                return;
            }
            let (mut off, mut width) = F[k];
            if off == SB_FILE_LEN && op.p & 1 != 0 {
                // The reserved bytes 88..124 instead of file_len.
                off = SB_RESERVED + (op.p as usize >> 1) % 33;
                width = 4;
            }
            field(img, op, slot + off, width, Some(other + off), &ctx);
        }
        // Frame header field; index len() is the position after the last frame.
        2 | 3 => {
            use txheap_log::{
                CHECK_OFFSET, DURABLE_TXID_OFFSET, GENERATION_OFFSET, MAGIC_OFFSET,
                PAYLOAD_LEN_OFFSET, RANGE_COUNT_OFFSET, TXID_OFFSET,
            };
            const F: [(usize, usize); 7] = [
                (MAGIC_OFFSET, 4),
                (RANGE_COUNT_OFFSET, 4),
                (GENERATION_OFFSET, 8),
                (TXID_OFFSET, 8),
                (DURABLE_TXID_OFFSET, 8),
                (PAYLOAD_LEN_OFFSET, 4),
                (CHECK_OFFSET, 4),
            ];
            let i = op.a as usize % (lay.frames.len() + 1);
            let at = lay
                .frames
                .get(i)
                .map_or(lay.frames.last().map_or(LOG_OFF, |f| f.off + f.len), |f| {
                    f.off
                });
            if at + FRAME_HDR > lay.log_end {
                return;
            }
            let prev = i.checked_sub(1).map(|j| lay.frames[j].off);
            let (off, width) = F[op.b as usize % F.len()];
            field(img, op, at + off, width, prev.map(|p| p + off), &ctx);
        }
        // Range header field.
        4 => {
            let Some(f) = pick(&lay.frames, op.a) else {
                return;
            };
            let Some(r) = pick(&f.ranges, op.q) else {
                return;
            };
            const F: [(usize, usize); 3] = [(0, 8), (8, 4), (12, 4)];
            let (off, width) = F[op.b as usize % F.len()];
            let j = f.ranges.iter().position(|x| x.hdr == r.hdr).unwrap();
            let prev = j.checked_sub(1).map(|j| f.ranges[j].hdr + off);
            field(img, op, r.hdr + off, width, prev, &ctx);
        }
        // Range bytes (also the heap header and table entries a range carries).
        5 => {
            let Some(f) = pick(&lay.frames, op.a) else {
                return;
            };
            let Some(r) = pick(&f.ranges, op.q) else {
                return;
            };
            if r.len == 0 {
                return;
            }
            let width = op.width().min(r.len);
            let mut pos = op.p as usize % (r.len - width + 1);
            if op.w & 4 != 0 {
                pos -= pos % width;
            }
            // The same place in the image, for copy-mode.
            let other = usize::try_from(r.target)
                .ok()
                .and_then(|t| t.checked_add(pos));
            field(img, op, r.data + pos, width, other, &ctx);
        }
        // Heap header field.
        6 => {
            const F: [(usize, usize); 9] = [
                (0, 8),
                (8, 8),
                (16, 8),
                (24, 8),
                (32, 4),
                (36, 8),
                (44, 8),
                (52, 8),
                (60, 4),
            ];
            let (off, width) = F[op.b as usize % F.len()];
            field(img, op, lay.heap + off, width, None, &ctx);
        }
        // Table entry field; `other` is the same field of chunk `p`'s entry.
        7 | 8 => {
            const F: [(usize, usize); 5] = [
                (E_KIND, 1),
                (E_CLASS, 1),
                (E_CHECK, 2),
                (E_CHUNKS, 4),
                (E_SIZE, 8),
            ];
            let c = lay.target_chunk(op_index(op), walked, None);
            let (off, width) = F[op.b as usize % F.len()];
            let other = lay.entry_at(op.p as usize % nchunks) + off;
            field(img, op, lay.entry_at(c) + off, width, Some(other), &ctx);
        }
        // A whole consistent entry: free extent, run, large extent, or a copy of another.
        9 => {
            let c = lay.target_chunk(op_index(op), walked, None);
            let at = lay.entry_at(c);
            if at + ENTRY > img.len() {
                return;
            }
            let cur_chunks = get(img, at + E_CHUNKS, 4);
            let mut e = [0u8; ENTRY];
            match op.b % 4 {
                0 => {
                    e[E_KIND] = KIND_FREE;
                    put(&mut e, E_CHUNKS, 4, op.value(cur_chunks, 4, None, &ctx));
                }
                1 => {
                    let class = op.v[2] as usize % NCLASSES;
                    e[E_KIND] = KIND_RUN;
                    e[E_CLASS] = class as u8;
                    put(&mut e, E_CHUNKS, 4, 1);
                    if op.w & 1 != 0 {
                        // A fresh run's bitmap (at chunk offset 0): all blocks free.
                        let bm = lay.chunk_at(c).min(img.len());
                        let end = (bm + run_geom(class).1.div_ceil(64) as usize * 8).min(img.len());
                        img[bm..end].fill(0);
                    }
                }
                2 => {
                    let chunks = op.value(cur_chunks, 4, None, &ctx);
                    let room = (chunks * CHUNK_SIZE).max(1);
                    e[E_KIND] = KIND_LARGE;
                    put(&mut e, E_CHUNKS, 4, chunks);
                    put(&mut e, E_SIZE, 8, get(&op.v, 4, 4) % room + 1);
                }
                _ => {
                    let j = lay.entry_at(op.p as usize % nchunks);
                    if j + ENTRY <= img.len() {
                        e.copy_from_slice(&img[j..j + ENTRY]);
                    }
                }
            }
            img[at..at + ENTRY].copy_from_slice(&e);
        }
        // A run bitmap word (at chunk offset 0): of the run's bitmap if the chunk's entry is a
        // run (its last word, where bits past the blocks lie, when `p & 0x8000`), else any of
        // the chunk's first 512.
        10 => {
            let c = lay.target_chunk(op_index(op), walked, Some(KIND_RUN));
            let e = lay.entry_at(c);
            let words = match img.get(e..e + ENTRY) {
                Some(b) if b[E_KIND] == KIND_RUN && (b[E_CLASS] as usize) < NCLASSES => {
                    run_geom(b[E_CLASS] as usize).1.div_ceil(64) as usize
                }
                _ => 512,
            };
            let word = if op.p & 0x8000 != 0 {
                words - 1
            } else {
                op.p as usize % words
            };
            let base = lay.chunk_at(c);
            field(img, op, base + 8 * word, 8, Some(base), &ctx);
        }
        // Append a frame with one range copying part of the heap's current metadata (replayed
        // as it is unless later ops change it), or add that range to the last committed frame.
        11 | 12 => append_frame(img, op, &lay, &ctx),
        // Raw bytes in the heap area (root area, tables, bitmaps, objects) or anywhere.
        13 => {
            let base = if op.q & 1 == 0 {
                lay.heap.min(img.len())
            } else {
                0
            };
            let span = img.len() - base;
            let width = op.width();
            if span < width {
                return;
            }
            let off =
                base + (get(&op.v, 4, 4) as usize | (op.p as usize) << 32) % (span - width + 1);
            field(img, op, off, width, None, &ctx);
        }
        // File length.
        14 => {
            let l = img.len();
            let n = get(&op.v, 0, 4) as usize;
            let new = match op.b % 4 {
                0 => l.saturating_sub(n % (2 * CHUNK) + 1),
                1 => l + n % (2 * CHUNK) + 1,
                2 => ctx[op.v[4] as usize % ctx.len()].wrapping_add(op.v[5] as i8 as i64 as u64)
                    as usize,
                _ => (l as i64 + op.v[4] as i8 as i64 * PAGE_SIZE as i64).max(0) as usize,
            };
            img.resize(new.min(seed_len + GROW_LIMIT), 0);
        }
        // Flip a byte after sealing (leaves one checksum broken).
        _ => {
            if !img.is_empty() {
                post.push((get(&op.v, 0, 8) as usize % img.len(), op.v[7] | 1));
            }
        }
    }
}

fn pick<T>(v: &[T], i: u8) -> Option<&T> {
    (!v.is_empty()).then(|| &v[i as usize % v.len()])
}

fn append_frame(img: &mut [u8], op: &Op, lay: &Layout, ctx: &[u64]) {
    let c = lay.target_chunk(op.a as usize, op.w & 2 != 0, None);
    let (ci, ei) = (lay.chunk_at(c), lay.entry_at(c));
    let (target, len) = match op.b % 8 {
        0 => (lay.heap as u64, HEAP_HDR),
        // One table entry, or several in a row.
        1 => (ei as u64, ENTRY),
        5 => (ei as u64, ENTRY * (1 + op.v[7] as usize % 8)),
        // Bitmap words of a run.
        2 => (
            (ci + 8 * (op.p as usize % 256)) as u64,
            8 * (1 + op.v[7] as usize % 4),
        ),
        3 => (
            (lay.heap + ROOT_AREA + ((op.p as usize % ROOT_AREA) & !7)) as u64,
            8 * (1 + op.v[7] as usize % 8),
        ),
        4 => {
            let span = lay.len.saturating_sub(lay.heap).max(1);
            (
                (lay.heap + get(&op.v, 2, 4) as usize % span) as u64,
                1 + op.v[6] as usize % 64,
            )
        }
        6 => (op.value(0, 8, None, ctx), 1 + op.v[6] as usize % 16),
        _ => (0, 0),
    };
    let mut bytes = vec![0u8; len];
    if let Ok(t) = usize::try_from(target) {
        for (k, b) in bytes.iter_mut().enumerate() {
            *b = img.get(t.wrapping_add(k)).copied().unwrap_or(0);
        }
    }
    let mut fb = txheap_log::FrameBuilder::new();
    // Extend the last committed frame instead of appending after it.
    let last = lay
        .frames
        .iter()
        .find(|f| f.off + f.len == lay.tail && lay.tail > LOG_OFF);
    let (at, generation, txid) = match last {
        Some(f) if op.w & 1 != 0 => {
            for r in &f.ranges {
                let _ = fb.push_range(r.target, &img[r.data..r.data + r.len]);
            }
            (f.off, f.generation, f.txid)
        }
        _ => {
            let (g, t) = (lay.sb.generation, lay.expected_txid);
            match op.q % 8 {
                6 => (lay.tail, g, t.wrapping_add(1)),
                7 => (lay.tail, g.wrapping_add(1), t),
                _ => (lay.tail, g, t),
            }
        }
    };
    if op.b % 8 != 7 {
        let _ = fb.push_range(target, &bytes);
    }
    let frame = fb.finish(generation, txid);
    if at + frame.len() <= lay.log_end {
        img[at..at + frame.len()].copy_from_slice(frame);
    }
}

/// Every seed has a 64 KiB log; used when no slot gives a plausible one.
const SEED_LOG_SIZE: usize = 65536;

/// The image an input describes: its seed, mutated by its ops, sealed, then post-seal flips.
pub fn build(data: &[u8]) -> Vec<u8> {
    let mut img = Vec::new();
    build_into(data, &mut img);
    img
}

/// [`build`] into a reused buffer (the fuzz target's: no 2 MiB allocation per execution).
pub fn build_into(data: &[u8], img: &mut Vec<u8>) {
    let (sel, ops) = data.split_first().map_or((0, &[][..]), |(s, o)| (*s, o));
    let seed = seed_for(sel);
    img.clear();
    img.extend_from_slice(seed);
    let mut post = Vec::new();
    for op in ops.chunks_exact(OP_LEN).take(MAX_OPS) {
        apply(img, &Op::parse(op), seed.len(), &mut post);
    }
    seal(img, SEED_LOG_SIZE);
    for (off, x) in post {
        if let Some(b) = img.get_mut(off) {
            *b ^= x;
        }
    }
}

// ---- checks ----------------------------------------------------------------------------------

/// Make growth past [`FILE_SIZE_LIMIT`] fail with `EFBIG` (an `Error::Io`) instead of filling
/// memory or disk; SIGXFSZ is ignored so the write returns the error. Once per process.
pub fn limit_file_size() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain libc calls with valid arguments; no Rust state is involved.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
    });
}

/// Storage for simulating writable recovery in memory, with the same size limit as the file.
struct CappedMem(Vec<u8>);

impl Storage for CappedMem {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(s);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let end = offset.saturating_add(bytes.len() as u64);
        if end > FILE_SIZE_LIMIT {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        }
        if end as usize > self.0.len() {
            self.0.resize(end as usize, 0);
        }
        self.0[offset as usize..end as usize].copy_from_slice(bytes);
        Ok(())
    }
    fn barrier(&mut self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn barrier_all(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn grow(&mut self, new_len: u64) -> std::io::Result<()> {
        if new_len > FILE_SIZE_LIMIT {
            return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
        }
        if new_len as usize > self.0.len() {
            self.0.resize(new_len as usize, 0);
        }
        Ok(())
    }
}

/// What `txheap_recovery::recover` alone leaves of `image` (its replay and checkpoint): used to
/// say, when a refused open changed the file, whether recovery's writes are the change.
pub fn recovered(image: &[u8]) -> Vec<u8> {
    let mut s = CappedMem(image.to_vec());
    let _ = txheap_recovery::recover(&mut s);
    s.0
}

/// What happened to one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `open_read_only` succeeded.
    pub read_only_opened: bool,
    /// `open` succeeded.
    pub opened: bool,
    /// The first transaction committed.
    pub committed: bool,
    /// `open` succeeded but the first transaction failed: the error's variant, for example
    /// `Corrupt` for a damaged run bitmap (an open reads none: a run's bitmap is read at its
    /// first use). Not a failed check: a clear error is the right answer there.
    pub tx_error: Option<String>,
}

/// The large object each opened heap gets (memcmp'd, not compared byte by byte).
static BIG: [u8; 100_000] = [0x3C; 100_000];

/// The name of an error's variant (`Corrupt`, `OutOfSpace`, ...).
fn variant(e: &Error) -> String {
    format!("{e:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// Run the checks on `image` at `path` (a scratch file). Panics on a violated property:
///
/// - no panic inside the library;
/// - `open_read_only` never changes the file, whether it succeeds or fails;
/// - a failed `open` leaves the file unchanged, unless it failed with `Error::Io` (the harness's
///   `RLIMIT_FSIZE` gives `EFBIG`); a `max_size` too large to map is refused before recovery
///   writes (`Error::AddressSpace`), so it must leave the file unchanged too;
/// - a successful `open` leaves a file whose heap header and chunk tables satisfy this file's
///   reading of the format ([`format_violation`]): an open that accepts a table the format
///   forbids is caught here, even when txheap's encoder and decoder agree with each other;
/// - an opened heap's reads, stats and transactions (on its own objects, and on those the file
///   held: [`use_existing`]) return `Ok` or an `Error`: a transaction may fail on damage the
///   open does not read, such as a run bitmap ([`Outcome::tx_error`]); a committed
///   transaction's objects read back as written, in the same handle and after `close` and a
///   read-only reopen (which must succeed);
/// - a heap closed cleanly leaves a file that satisfies the format, as after the open;
/// - stats are consistent: used + free <= heap bytes, largest free extent <= free bytes.
pub fn check(path: &Path, image: &[u8]) -> Outcome {
    limit_file_size();
    let mut out = Outcome::default();
    write_file(path, image);
    match Heap::open_read_only(path) {
        Ok(h) => {
            out.read_only_opened = true;
            use_heap(&h);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    assert!(file_equals(path, image), "open_read_only changed the file");
    let h = match Heap::open(path, Options::new()) {
        Ok(h) => h,
        Err(e) => {
            if !file_equals(path, image) && !matches!(e, Error::Io { .. }) {
                let after = std::fs::read(path).unwrap();
                let by_recovery = after == recovered(image);
                panic!(
                    "open failed ({e}) but changed the file ({} -> {} bytes; {})",
                    image.len(),
                    after.len(),
                    if by_recovery {
                        "exactly as recovery's replay and checkpoint left it"
                    } else {
                        "not as recovery alone would leave it"
                    }
                );
            }
            return out;
        }
    };
    out.opened = true;
    let extents = file_extents(path)
        .unwrap_or_else(|v| panic!("open succeeded, but the file it left breaks the format: {v}"));
    use_heap(&h);
    let tx = h.transaction(|tx| {
        let a = tx.alloc([0xA5u8; 100])?;
        let b = tx.alloc([0x5Au64; 5])?;
        let big = tx.alloc_slice(&BIG)?;
        Ok((a, b, big))
    });
    match tx {
        Ok((a, b, big)) => {
            out.committed = true;
            let same = h.read(|r| {
                Ok(*r.get(a)? == [0xA5u8; 100]
                    && *r.get(b)? == [0x5Au64; 5]
                    && r.slice(big)? == BIG.as_slice())
            });
            assert!(
                matches!(same, Ok(true)),
                "committed objects do not read back: {same:?}"
            );
            let _ = h.transaction(|tx| {
                let r = tx.root::<[u64; 8]>()?;
                let x = &mut tx.get_mut(r)?[0];
                *x = x.wrapping_add(1);
                Ok(())
            });
            use_existing(&h, &extents, &[a.offset(), b.offset(), big.offset()]);
            let _ = h.transaction(|tx| tx.free(a));
            let _ = h.transaction(|tx| tx.alloc([1u8; 3000]).map(|_| ()));
            use_heap(&h);
            if h.close().is_ok() {
                if let Some(v) = format_violation(path) {
                    panic!("a heap closed cleanly left a file that breaks the format: {v}");
                }
                let h = Heap::open_read_only(path)
                    .unwrap_or_else(|e| panic!("a heap closed cleanly does not reopen: {e}"));
                let same = h.read(|r| Ok(*r.get(b)? == [0x5Au64; 5]));
                assert!(
                    matches!(same, Ok(true)),
                    "a committed object is lost after close: {same:?}"
                );
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            out.tx_error = Some(variant(&e));
            use_existing(&h, &extents, &[]);
            let _ = h.transaction(|tx| tx.alloc([7u8; 16]).map(|_| ()));
            use_heap(&h);
            if h.close().is_ok() {
                if let Some(v) = format_violation(path) {
                    panic!("a heap closed cleanly left a file that breaks the format: {v}");
                }
            }
        }
    }
    out
}

/// The file at `path`, read piece by piece (for `select_superblock`; never written).
struct ReadOnlyFile(std::fs::File);

impl Storage for ReadOnlyFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn barrier(&mut self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn barrier_all(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn grow(&mut self, _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
}

/// What is wrong with one chunk-table entry read by the walk (`zone_first`: entry 0 of its
/// zone), by this file's reading of the format; `None` if nothing.
fn entry_violation(e: &[u8], zone_first: bool) -> Option<String> {
    let (kind, class) = (e[E_KIND], e[E_CLASS]);
    let check = get(e, E_CHECK, 2) as u16;
    let (chunks, size) = (get(e, E_CHUNKS, 4), get(e, E_SIZE, 8));
    let computed = entry_check(e);
    if check != computed {
        return Some(format!("check {check:#06x}, computed {computed:#06x}"));
    }
    if !(KIND_FREE..=KIND_TABLE).contains(&kind) {
        return Some(format!("kind {kind} is no entry"));
    }
    if (kind == KIND_TABLE) != zone_first {
        return Some(format!(
            "kind {kind} {} a zone's entry 0 (only it is TABLE)",
            if zone_first { "as" } else { "after" }
        ));
    }
    let class_ok = if kind == KIND_RUN {
        (class as usize) < NCLASSES
    } else {
        class == 0
    };
    if !class_ok {
        return Some(format!("class {class} in an entry of kind {kind}"));
    }
    let chunks_ok = match kind {
        KIND_RUN | KIND_TABLE => chunks == 1,
        _ => (1..=EXTENT_CHUNKS_MAX).contains(&chunks),
    };
    if !chunks_ok {
        return Some(format!("{chunks} chunks in an entry of kind {kind}"));
    }
    let size_ok = if kind == KIND_LARGE {
        (1..=chunks * CHUNK_SIZE).contains(&size)
    } else {
        size == 0
    };
    if !size_ok {
        return Some(format!(
            "size {size} in an entry of kind {kind} ({chunks} chunks)"
        ));
    }
    None
}

/// Whether the file at `path` (not open for writing by anyone) breaks this file's reading of
/// the format where txheap's open checks it: the superblock recovery selects, the file's
/// length, the heap header, its chunk count, and the walk of every zone's table (entry 0
/// `TABLE`, each entry whole and consistent, extents inside their zone and the chunk count).
/// Frames in the log are not replayed: call it on a file an open or a close has left, whose
/// committed state is in place. `Some(what)` names the first violation.
pub fn format_violation(path: &Path) -> Option<String> {
    file_extents(path).err()
}

/// The extents the walk of the file's tables finds, `(file offset of the chunk, entry)`, or
/// what breaks the format (see [`format_violation`]).
fn file_extents(path: &Path) -> Result<Vec<(u64, [u8; ENTRY])>, String> {
    let s = ReadOnlyFile(std::fs::File::open(path).unwrap());
    let (sb, _) =
        txheap_recovery::select_superblock(&s).map_err(|e| format!("no superblock: {e}"))?;
    let len = s.len().unwrap();
    if sb.file_len > sb.max_size || len < sb.file_len {
        return Err(format!(
            "file_len {} (max_size {}) for a file of {len} bytes",
            sb.file_len, sb.max_size
        ));
    }
    let heap = sb.heap_offset();
    let mut hh = [0u8; HEAP_HDR];
    if s.read_at(heap, &mut hh).is_err() {
        return Err(format!("no heap header at {heap} in a file of {len} bytes"));
    }
    if &hh[..8] != HEAP_MAGIC || get(&hh, 60, 4) != crc32fast::hash(&hh[..60]) as u64 {
        return Err(format!("heap header at {heap} without its magic or crc"));
    }
    let count = get(&hh, 8, 8);
    let chunk_area = sb.chunk_area_offset();
    let end = count
        .checked_mul(CHUNK_SIZE)
        .and_then(|b| b.checked_add(chunk_area));
    if !end.is_some_and(|e| e <= sb.max_size && e <= len) {
        return Err(format!(
            "chunk count {count}: past max_size {} or the file's {len} bytes",
            sb.max_size
        ));
    }
    let zone = ZONE_CHUNKS as u64;
    let mut extents = Vec::new();
    let mut first = 0u64;
    while first < count {
        let used = (count - first).min(zone);
        let table_off = chunk_area + first * CHUNK_SIZE;
        let mut table = vec![0u8; used as usize * ENTRY];
        s.read_at(table_off, &mut table)
            .map_err(|e| format!("zone table at {table_off} unreadable: {e}"))?;
        let mut i = 0u64;
        while i < used {
            let e: [u8; ENTRY] = table[i as usize * ENTRY..(i as usize + 1) * ENTRY]
                .try_into()
                .unwrap();
            let at = table_off + i * ENTRY as u64;
            if let Some(why) = entry_violation(&e, i == 0) {
                return Err(format!("chunk {}: entry at {at}: {why}", first + i));
            }
            let n = extent_chunks(&e);
            if i + n > used {
                return Err(format!(
                    "chunk {}: entry at {at}: an extent of {n} chunks runs past its zone or the \
                     chunk count {count}",
                    first + i
                ));
            }
            extents.push((chunk_area + (first + i) * CHUNK_SIZE, e));
            i += n;
        }
        first += zone;
    }
    Ok(extents)
}

/// Use what the heap held before the checks' own objects, through the public API with raw
/// offsets from the walk (`extents`): read, overwrite and free the first and last block of the
/// first runs and the first large objects, each in its own transaction (`Ok` or an `Error`:
/// an unallocated block is refused, a run's damaged bitmap is `Corrupt` at its first use).
/// `keep`: offsets of objects the checks still need.
fn use_existing(h: &Heap, extents: &[(u64, [u8; ENTRY])], keep: &[u64]) {
    let mut objects = Vec::new();
    for &(at, e) in extents {
        match e[E_KIND] {
            KIND_RUN => {
                let (bs, n, data) = run_geom(e[E_CLASS] as usize);
                objects.push((at + data, bs.min(16)));
                objects.push((at + data + (n - 1) * bs, bs.min(16)));
            }
            KIND_LARGE => objects.push((at, get(&e, E_SIZE, 8))),
            _ => {}
        }
    }
    for (off, len) in objects.into_iter().filter(|o| !keep.contains(&o.0)).take(6) {
        let s = PSlice::<u8>::from_raw_parts(off, len);
        let _ = h.read(|r| r.slice(s).map(|x| x.first().copied()));
        let _ = h.transaction(|tx| tx.write_slice(s, 0, &[0xE7]));
        let _ = h.transaction(|tx| tx.free(PPtr::<u8>::from_offset(off)));
    }
}

/// Write `image` as the whole file, reusing its pages (tmpfs frees them on truncation).
fn write_file(path: &Path, image: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(image.len() as u64).unwrap();
    f.write_all_at(image, 0).unwrap();
}

/// Whether the file holds exactly `image` (compared a block at a time, without reading it whole).
fn file_equals(path: &Path, image: &[u8]) -> bool {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    if f.metadata().unwrap().len() != image.len() as u64 {
        return false;
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < image.len() {
        let n = (image.len() - at).min(buf.len());
        f.read_exact(&mut buf[..n]).unwrap();
        if buf[..n] != image[at..at + n] {
            return false;
        }
        at += n;
    }
    true
}

fn use_heap(h: &Heap) {
    if let Ok(s) = h.stats() {
        assert!(
            s.used_bytes
                .checked_add(s.free_bytes)
                .is_some_and(|n| n <= s.heap_bytes),
            "stats: used {} + free {} > heap {}",
            s.used_bytes,
            s.free_bytes,
            s.heap_bytes
        );
        assert!(s.largest_free_extent <= s.free_bytes, "stats: {s:?}");
    }
    let _ = h.read(|r| r.root::<[u64; 8]>().and_then(|p| r.get(p).copied()));
    let _ = h.read(|r| {
        r.root::<[u8; 4096]>()
            .and_then(|p| r.get(p).map(|x| x[4095]))
    });
}
