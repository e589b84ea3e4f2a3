//! docs/FORMAT.md is enough to read a heap file: an independent reader written from it alone
//! (std, crc32fast, xxhash-rust; none of txheap's parsing), compared with what txheap reads back
//! on fresh, crashed (`Full` and `None`), compacted and collection-holding heaps. When the format
//! or the document changes, this reader must change with the document, not with the code: a
//! failure here is a document that no longer tells the truth (or a format change it missed).

use bytemuck::{Pod, Zeroable};
use std::path::Path;
use txheap::{Durability, Heap, Options, PBTreeMap, PHashMap, PPtr, PSlice, PString, PVec, Stored};

// ------------------------------------------------------------------------------------------
// The reader (docs/FORMAT.md only)
// ------------------------------------------------------------------------------------------
mod rd {
    pub const PAGE: u64 = 4096;
    pub const LOG_OFFSET: u64 = 8192;
    pub const CHUNK: u64 = 262144;
    pub const ZONE_CHUNKS: u64 = 16384;

    fn u16a(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes(b[i..i + 2].try_into().unwrap())
    }
    fn u32a(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
    }
    fn u64a(b: &[u8], i: usize) -> u64 {
        u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Sb {
        pub version: u32,
        pub seq: u64,
        pub generation: u64,
        pub next_txid: u64,
        pub log_size: u64,
        pub heap_offset: u64,
        pub max_size: u64,
        pub file_len: u64,
    }

    /// Slot bytes -> Ok(valid sb) / Err(reason). Valid = magic + crc (FORMAT.md "Selection").
    pub fn slot(b: &[u8]) -> Result<Sb, String> {
        if &b[0..8] != b"TXHEAPSB" {
            return Err("no magic".into());
        }
        if crc32fast::hash(&b[..124]) != u32a(b, 124) {
            return Err("bad crc".into());
        }
        Ok(Sb {
            version: u32a(b, 8),
            seq: u64a(b, 16),
            generation: u64a(b, 24),
            next_txid: u64a(b, 32),
            log_size: u64a(b, 48),
            heap_offset: u64a(b, 56),
            max_size: u64a(b, 64),
            file_len: u64a(b, 80),
        })
    }

    /// The rules of the superblock table.
    pub fn rules(b: &[u8], sb: &Sb, file_len: u64) -> Result<(), String> {
        let c = 1u64 << 62;
        let ok = sb.version == 3
            && u32a(b, 12) == 0
            && sb.seq <= c
            && sb.generation >= 1
            && sb.generation <= c
            && sb.next_txid <= c
            && u64a(b, 40) == LOG_OFFSET
            && sb.log_size % PAGE == 0
            && sb.log_size >= 65536
            && sb.heap_offset == LOG_OFFSET + sb.log_size
            && sb.max_size >= sb.heap_offset + 8192
            && sb.max_size % PAGE == 0
            && u32a(b, 72) == 262144
            && u32a(b, 76) == 4096
            && sb.file_len <= sb.max_size
            && b[88..124].iter().all(|&x| x == 0);
        if !ok {
            return Err(format!("superblock breaks a rule: {sb:?}"));
        }
        // The rest of the slot: zero except the witness (bytes 3584..3648).
        if file_len < sb.file_len.max(sb.heap_offset + 8192) {
            return Err("Truncated".into());
        }
        Ok(())
    }

    pub struct Witness {
        pub generation: u64,
        pub txid: u64,
    }
    pub fn witness(b: &[u8]) -> Option<Witness> {
        let w = &b[3584..3648];
        if &w[0..8] != b"TXHEAPWT"
            || crc32fast::hash(&w[..60]) != u32a(w, 60)
            || w[24..60].iter().any(|&x| x != 0)
        {
            return None;
        }
        Some(Witness {
            generation: u64a(w, 8),
            txid: u64a(w, 16),
        })
    }

    /// Choose the current superblock: (sb, slot index).
    pub fn select(file: &[u8]) -> Result<(Sb, usize), String> {
        let slots: Vec<Result<Sb, String>> = (0..2)
            .map(|i| {
                let mut b = vec![0u8; 4096];
                let s = i * 4096;
                let n = file.len().saturating_sub(s).min(4096);
                b[..n].copy_from_slice(&file[s..s + n]);
                slot(&b)
            })
            .collect();
        // Of the valid slots, higher seq (A on tie).
        let order: Vec<usize> = match (&slots[0], &slots[1]) {
            (Ok(a), Ok(b)) if b.seq > a.seq => vec![1, 0],
            (Ok(_), Ok(_)) => vec![0, 1],
            (Ok(_), _) => vec![0],
            (_, Ok(_)) => vec![1],
            _ => return Err("no valid slot".into()),
        };
        let mut last = String::new();
        for i in order {
            let sb = slots[i].clone().unwrap();
            match rules(&file[i * 4096..i * 4096 + 128], &sb, file.len() as u64) {
                Ok(()) => return Ok((sb, i)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    #[derive(Debug, Clone)]
    pub struct Range {
        pub offset: u64,
        pub kind: u32,
        pub bytes: Vec<u8>,
    }
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub at: u64,
        pub generation: u64,
        pub txid: u64,
        pub durable_txid: u64,
        pub len: u64,
        pub ranges: Vec<Range>,
    }

    /// A frame at `at` that "verifies": magic, payload length fits, check matches. Then its ranges.
    pub fn frame_at(file: &[u8], at: u64, log_end: u64) -> Result<Frame, String> {
        if at + 40 > log_end {
            return Err("fewer than 40 bytes remain".into());
        }
        let h = &file[at as usize..at as usize + 40];
        if u32a(h, 0) != 0x52465854 || &h[0..4] != b"TXFR" {
            return Err(format!("no magic at {at}"));
        }
        let payload_len = u32a(h, 32) as u64;
        if payload_len % 8 != 0 {
            return Err("payload_len not multiple of 8".into());
        }
        if at + 40 + payload_len > log_end {
            return Err("frame does not fit".into());
        }
        let payload = &file[(at + 40) as usize..(at + 40 + payload_len) as usize];
        let mut stream = h[..36].to_vec();
        stream.extend_from_slice(payload);
        let check = xxhash_rust::xxh3::xxh3_64(&stream) as u32;
        if check != u32a(h, 36) {
            return Err(format!("check mismatch at {at}"));
        }
        let n = u32a(h, 4);
        let mut ranges = Vec::new();
        let mut p = 0usize;
        for i in 0..n {
            if payload.len() - p < 16 {
                return Err("malformed: range header past payload".into());
            }
            let off = u64a(payload, p);
            let len = u32a(payload, p + 8) as usize;
            let kind = u32a(payload, p + 12);
            p += 16;
            let padded = len.div_ceil(8) * 8;
            if payload.len() - p < padded {
                return Err("malformed: range bytes past payload".into());
            }
            match kind {
                0 => {}
                1 => {
                    if i + 1 != n || off != 0 || len < 8 || (len - 8) % 16 != 0 {
                        return Err("malformed: in-place check".into());
                    }
                }
                2 => {
                    if n != 1 || off != 0 || payload[p..p + len].iter().any(|&b| b != 0) {
                        return Err("malformed: padding".into());
                    }
                }
                _ => return Err("malformed: kind".into()),
            }
            ranges.push(Range {
                offset: off,
                kind,
                bytes: payload[p..p + len].to_vec(),
            });
            p += padded;
        }
        if p != payload.len() {
            return Err("malformed: ranges do not consume payload".into());
        }
        Ok(Frame {
            at,
            generation: u64a(h, 8),
            txid: u64a(h, 16),
            durable_txid: u64a(h, 24),
            len: 40 + payload_len,
            ranges,
        })
    }

    pub struct Log {
        pub committed: Vec<Frame>,
        pub end_at: u64,
        pub end_reason: String,
        pub next_txid: u64,
    }

    pub fn scan(file: &[u8], sb: &Sb) -> Log {
        let log_end = LOG_OFFSET + sb.log_size;
        let mut at = LOG_OFFSET;
        let mut expected = sb.next_txid;
        let mut committed = Vec::new();
        let reason;
        loop {
            match frame_at(file, at, log_end) {
                Ok(f) if f.generation == sb.generation && f.txid == expected => {
                    at += f.len;
                    expected += 1;
                    committed.push(f);
                }
                Ok(f) => {
                    reason = format!(
                        "verifying frame gen {} txid {} (expected gen {} txid {expected})",
                        f.generation, f.txid, sb.generation
                    );
                    break;
                }
                Err(e) => {
                    reason = e;
                    break;
                }
            }
        }
        Log {
            committed,
            end_at: at,
            end_reason: reason,
            next_txid: expected,
        }
    }

    /// Apply the replay rule to `file` (in memory): redo ranges of committed frames, cut at a
    /// checked frame whose bytes do not match and that nothing vouches for.
    pub fn replay(file: &mut Vec<u8>, sb: &Sb, log: &Log) -> (usize, u64) {
        let original = file.clone();
        let mut take = log.committed.len();
        for (i, f) in log.committed.iter().enumerate() {
            if let Some(c) = f.ranges.iter().find(|r| r.kind == 1) {
                let digest = u64a(&c.bytes, 0);
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                for p in c.bytes[8..].chunks(16) {
                    let (o, l) = (u64a(p, 0), u64a(p, 8));
                    assert!(o >= sb.heap_offset && o + l <= sb.max_size, "hostile piece");
                    let mut buf = vec![0u8; l as usize];
                    for k in 0..l {
                        if let Some(&b) = original.get((o + k) as usize) {
                            buf[k as usize] = b;
                        }
                    }
                    h.update(&buf);
                }
                let matches = h.digest() == digest;
                let vouched = log.committed[i + 1..]
                    .iter()
                    .any(|g| g.durable_txid >= f.txid);
                if !matches && !vouched {
                    take = i;
                    break;
                }
            }
        }
        let mut next = sb.next_txid;
        for f in &log.committed[..take] {
            for r in &f.ranges {
                if r.kind != 0 {
                    continue;
                }
                assert!(
                    r.offset >= sb.heap_offset && r.offset + r.bytes.len() as u64 <= sb.max_size,
                    "hostile range"
                );
                let end = (r.offset + r.bytes.len() as u64) as usize;
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[r.offset as usize..end].copy_from_slice(&r.bytes);
            }
            next = f.txid + 1;
        }
        (take, next)
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct HeapHeader {
        pub chunk_count: u64,
        pub root_size: u64,
        pub root_fingerprint: u64,
        pub root_align: u32,
        pub root_identity: u32,
    }
    pub fn heap_header(file: &[u8], sb: &Sb) -> Result<HeapHeader, String> {
        let h = &file[sb.heap_offset as usize..sb.heap_offset as usize + 64];
        if &h[0..8] != b"TXHEAPHH" {
            return Err("heap header magic".into());
        }
        if crc32fast::hash(&h[..60]) != u32a(h, 60) {
            return Err("heap header crc".into());
        }
        if h[40..60].iter().any(|&b| b != 0) {
            return Err("heap header reserved".into());
        }
        Ok(HeapHeader {
            chunk_count: u64a(h, 8),
            root_size: u64a(h, 16),
            root_fingerprint: u64a(h, 24),
            root_align: u32a(h, 32),
            root_identity: u32a(h, 36),
        })
    }

    /// (root description, catalogue records)
    pub fn descriptions(file: &[u8], sb: &Sb) -> (String, Vec<(u64, String)>) {
        let page = &file[sb.heap_offset as usize..(sb.heap_offset + PAGE) as usize];
        let n = u16a(page, 64) as usize;
        let desc = String::from_utf8(page[66..66 + n].to_vec()).unwrap();
        let mut at = 66 + n;
        let mut out = Vec::new();
        if page.get(at..at + 4) != Some(&b"TXTC"[..]) {
            return (desc, out);
        }
        at += 4;
        while at + 14 <= page.len() {
            let id = u64a(page, at);
            let m = u16a(page, at + 8) as usize;
            let crc = u32a(page, at + 10);
            if at + 14 + m > page.len() {
                break;
            }
            let mut hh = crc32fast::Hasher::new();
            hh.update(&page[at..at + 10]);
            hh.update(&page[at + 14..at + 14 + m]);
            if hh.finalize() != crc {
                break;
            }
            out.push((
                id,
                String::from_utf8(page[at + 14..at + 14 + m].to_vec()).unwrap(),
            ));
            at += 14 + m;
        }
        (desc, out)
    }

    pub const fn classes() -> [u64; 44] {
        let mut c = [0u64; 44];
        let mut i = 0;
        while i < 8 {
            c[i] = 16 * (i as u64 + 1);
            i += 1;
        }
        let mut base = 128;
        while i < 44 {
            c[i] = base + base / 4;
            c[i + 1] = base + base / 2;
            c[i + 2] = base + 3 * base / 4;
            c[i + 3] = base * 2;
            i += 4;
            base *= 2;
        }
        c
    }

    pub fn run_geom(bs: u64) -> (u64, u64) {
        // largest block_count with data_offset + n*bs <= CHUNK
        let mut best = (0, 0);
        for n in 1..=CHUNK / bs {
            let d = (8 * n.div_ceil(64)).div_ceil(64) * 64;
            if d + n * bs <= CHUNK {
                best = (n, d);
            }
        }
        best
    }

    #[derive(Debug, Default, Clone, PartialEq)]
    pub struct Alloc {
        pub blocks: Vec<(u64, u64)>,
        pub used: u64,
        pub free: u64,
        pub largest_free: u64,
        pub largest_free_uncoalesced: u64,
        /// per class: (block_size, runs, used, free)
        pub classes: Vec<(u64, u64, u64, u64)>,
    }

    pub fn walk(file: &[u8], sb: &Sb, chunk_count: u64) -> Result<Alloc, String> {
        let area = sb.heap_offset + 8192;
        let cl = classes();
        let mut a = Alloc {
            classes: cl.iter().map(|&b| (b, 0, 0, 0)).collect(),
            ..Default::default()
        };
        let rd = |off: u64, len: u64| -> Vec<u8> {
            let mut v = vec![0u8; len as usize];
            for k in 0..len {
                if let Some(&b) = file.get((off + k) as usize) {
                    v[k as usize] = b;
                }
            }
            v
        };
        let mut free_extents: Vec<(u64, u64)> = Vec::new();
        let zones = chunk_count.div_ceil(ZONE_CHUNKS);
        for z in 0..zones {
            let first = z * ZONE_CHUNKS;
            let used = (chunk_count - first).min(ZONE_CHUNKS);
            let table_off = area + first * CHUNK;
            let table = rd(table_off, used * 16);
            let mut i = 0;
            while i < used {
                let e: [u8; 16] = table[(i * 16) as usize..(i * 16 + 16) as usize]
                    .try_into()
                    .unwrap();
                let mut z2 = e;
                z2[2] = 0;
                z2[3] = 0;
                if (crc32fast::hash(&z2) as u16) != u16a(&e, 2) {
                    return Err(format!("entry check at chunk {}", first + i));
                }
                let kind = e[0];
                let class = e[1] as usize;
                let n = u32a(&e, 4) as u64;
                let size = u64a(&e, 8);
                if n == 0 || n > 16383 || i + n > used {
                    return Err("extent length".into());
                }
                if (kind == 4) != (i == 0) {
                    return Err("TABLE misplaced".into());
                }
                let c = first + i;
                let at = area + c * CHUNK;
                match kind {
                    1 => {
                        if class != 0 || size != 0 {
                            return Err("free fields".into());
                        }
                        a.free += n * CHUNK;
                        free_extents.push((c, n));
                    }
                    2 => {
                        if n != 1 || size != 0 || class >= 44 {
                            return Err("run fields".into());
                        }
                        let bs = cl[class];
                        let (cnt, data) = run_geom(bs);
                        let words = cnt.div_ceil(64);
                        let bm = rd(at, words * 8);
                        let mut used_b = 0;
                        for b in 0..words * 64 {
                            let w = u64a(&bm, (b / 64 * 8) as usize);
                            if w >> (b % 64) & 1 == 1 {
                                if b >= cnt {
                                    return Err("bit past block_count".into());
                                }
                                used_b += 1;
                                a.blocks.push((at + data + b * bs, bs));
                            }
                        }
                        a.classes[class].1 += 1;
                        a.classes[class].2 += used_b;
                        a.classes[class].3 += cnt - used_b;
                        a.used += used_b * bs;
                        a.free += (cnt - used_b) * bs;
                    }
                    3 => {
                        if class != 0 || size == 0 || size > n * CHUNK {
                            return Err("large fields".into());
                        }
                        a.used += size;
                        a.blocks.push((at, size));
                    }
                    4 => {
                        if n != 1 || class != 0 || size != 0 {
                            return Err("table fields".into());
                        }
                    }
                    k => return Err(format!("kind {k}")),
                }
                i += n;
            }
        }
        a.blocks.sort();
        a.largest_free_uncoalesced = free_extents
            .iter()
            .map(|&(_, n)| n * CHUNK)
            .max()
            .unwrap_or(0);
        // coalesced
        let mut best = 0;
        let mut cur: Option<(u64, u64)> = None;
        for &(c, n) in &free_extents {
            cur = match cur {
                Some((s, m)) if s + m == c => Some((s, m + n)),
                Some((_, m)) => {
                    best = best.max(m);
                    Some((c, n))
                }
                None => Some((c, n)),
            };
        }
        if let Some((_, m)) = cur {
            best = best.max(m);
        }
        a.largest_free = best * CHUNK;
        Ok(a)
    }

    // Stored identity (FORMAT.md "Stored identity")
    pub const FNV_OFF: u64 = 0xcbf29ce484222325;
    pub fn fnv(mut h: u64, b: &[u8]) -> u64 {
        for &x in b {
            h ^= x as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }
    pub fn fnv_u(h: u64, v: u64) -> u64 {
        fnv(h, &v.to_le_bytes())
    }
    pub fn fnv_s(h: u64, s: &str) -> u64 {
        fnv(fnv_u(h, s.len() as u64), s.as_bytes())
    }
}

// ------------------------------------------------------------------------------------------
// Heaps made by txheap
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Pod, Zeroable, Stored)]
#[repr(C)]
struct Root {
    count: u64,
    big: PSlice<u8>,
    small: [PSlice<u8>; 6],
    vec: PPtr<PVec<u64>>,
    map: PPtr<PBTreeMap<PString, u64>>,
    hmap: PPtr<PHashMap<u64, u64>>,
}

const SIZES: [u64; 6] = [10, 100, 700, 3000, 20000, 65536];

fn fill(heap: &Heap, collections: bool, big: u64) {
    heap.transaction(|tx| {
        let r = tx.root::<Root>()?;
        let mut v = *tx.get(r)?;
        v.count = 42;
        for (i, &n) in SIZES.iter().enumerate() {
            let bytes: Vec<u8> = (0..n)
                .map(|k| (k as u8).wrapping_mul(7).wrapping_add(i as u8))
                .collect();
            v.small[i] = tx.alloc_slice(&bytes)?;
        }
        let bytes: Vec<u8> = (0..big).map(|k| (k % 251) as u8).collect();
        v.big = tx.alloc_slice(&bytes)?;
        tx.set(r, v)?;
        Ok(())
    })
    .unwrap();
    // Some small objects in several classes, some freed.
    for round in 0..5u64 {
        heap.transaction(|tx| {
            let mut ps = Vec::new();
            for k in 0..40u64 {
                ps.push(
                    tx.alloc_slice(&vec![(round * 40 + k) as u8; (16 * (k % 9) + 1) as usize])?,
                );
            }
            for p in ps.iter().step_by(3) {
                tx.free_slice(*p)?;
            }
            Ok(())
        })
        .unwrap();
    }
    if collections {
        heap.transaction(|tx| {
            let r = tx.root::<Root>()?;
            let vec = PVec::<u64>::new(tx)?;
            let map = PBTreeMap::<PString, u64>::new(tx)?;
            let hmap = PHashMap::<u64, u64>::new(tx)?;
            for i in 0..100u64 {
                vec.push(tx, i * 3)?;
                map.insert(tx, &format!("key{i}"), &i)?;
                hmap.insert(tx, &i, &(i + 1))?;
            }
            let mut v = *tx.get(r)?;
            v.vec = vec;
            v.map = map;
            v.hmap = hmap;
            tx.set(r, v)?;
            Ok(())
        })
        .unwrap();
    }
}

struct Parsed {
    sb: rd::Sb,
    slot: usize,
    log_frames: usize,
    replayed: usize,
    log_end_reason: String,
    next_txid: u64,
    header: rd::HeapHeader,
    image: Vec<u8>,
    desc: String,
    catalogue: Vec<(u64, String)>,
    alloc: rd::Alloc,
}

fn parse(path: &Path) -> Parsed {
    let file = std::fs::read(path).unwrap();
    let (sb, slot) = rd::select(&file).unwrap();
    let log = rd::scan(&file, &sb);
    let mut image = file.clone();
    let (replayed, next_txid) = rd::replay(&mut image, &sb, &log);
    // The scan's next expected txid is the one after the last frame replay applied.
    assert_eq!(log.next_txid, next_txid, "scan and replay disagree");
    let header = rd::heap_header(&image, &sb).unwrap();
    let (desc, catalogue) = rd::descriptions(&image, &sb);
    let alloc = rd::walk(&image, &sb, header.chunk_count).unwrap();
    Parsed {
        sb,
        slot,
        log_frames: log.committed.len(),
        replayed,
        log_end_reason: log.end_reason,
        next_txid,
        header,
        image,
        desc,
        catalogue,
        alloc,
    }
}

/// Compare the independent reading with what txheap reads back from `heap` (opened on the
/// same file or an identical copy).
fn compare(p: &Parsed, heap: &Heap, what: &str) {
    eprintln!(
        "{what}: slot {} seq {} gen {} next_txid {} frames {} replayed {} end: {}; chunks {}; desc {:?}; catalogue {:?}",
        p.slot, p.sb.seq, p.sb.generation, p.sb.next_txid, p.log_frames, p.replayed, p.log_end_reason,
        p.header.chunk_count, p.desc, p.catalogue
    );
    let st = heap.stats().unwrap();
    let blocks = heap.read(|r| r.allocations()).unwrap();
    assert_eq!(p.alloc.blocks, blocks, "{what}: allocations");
    for &(off, size) in &blocks {
        let theirs = heap
            .read(|r| Ok(r.slice(PSlice::<u8>::from_raw_parts(off, size))?.to_vec()))
            .unwrap();
        assert!(
            theirs == p.image[off as usize..(off + size) as usize],
            "{what}: bytes of block {off}+{size} differ"
        );
    }
    let root_off = p.sb.heap_offset + 4096;
    let root: Root = heap.read(|r| Ok(*r.get(r.root::<Root>()?)?)).unwrap();
    assert_eq!(
        bytemuck::bytes_of(&root),
        &p.image[root_off as usize..root_off as usize + std::mem::size_of::<Root>()],
        "{what}: root"
    );
    assert_eq!(root.count, 42);
    assert_eq!(p.header.root_size, std::mem::size_of::<Root>() as u64);
    assert_eq!(
        p.header.root_fingerprint,
        <Root as Stored>::ID,
        "{what}: root fingerprint"
    );
    assert_eq!(p.header.root_identity, 1);
    assert_eq!(p.desc, txheap::describe::<Root>());
    assert_eq!(
        st.heap_bytes,
        p.header.chunk_count * rd::CHUNK,
        "{what}: heap_bytes"
    );
    assert_eq!(st.used_bytes, p.alloc.used, "{what}: used");
    assert_eq!(st.free_bytes, p.alloc.free, "{what}: free");
    assert_eq!(
        st.largest_free_extent, p.alloc.largest_free,
        "{what}: largest free (uncoalesced {})",
        p.alloc.largest_free_uncoalesced
    );
    let cls: Vec<_> = st
        .classes
        .iter()
        .map(|c| (c.block_size, c.runs, c.used_blocks, c.free_blocks))
        .collect();
    assert_eq!(cls, p.alloc.classes, "{what}: classes");
    assert_eq!(st.log_size, p.sb.log_size);
    assert_eq!(st.max_size, p.sb.max_size);
    eprintln!(
        "{what}: stats seq {} gen {} next_txid {} file_len {} log_used {}; reader next_txid {} file_len {}",
        st.superblock_seq, st.log_generation, st.next_txid, st.file_len, st.log_used, p.next_txid, p.image.len()
    );
}

fn opts() -> Options {
    Options::new()
        .log_size(1 << 20)
        .initial_size(4 << 20)
        .max_size(256 << 20)
}

#[test]
fn fresh_heap() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("fresh.heap");
    Heap::create(&path, opts()).unwrap().close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let (sb, slot) = rd::select(&file).unwrap();
    let log = rd::scan(&file, &sb);
    eprintln!(
        "fresh: slot {slot} {sb:?} frames {} end {}",
        log.committed.len(),
        log.end_reason
    );
    let h = rd::heap_header(&file, &sb).unwrap();
    eprintln!("fresh header {h:?}");
    let a = rd::walk(&file, &sb, h.chunk_count).unwrap();
    let heap = Heap::open_read_only(&path).unwrap();
    let st = heap.stats().unwrap();
    assert_eq!(st.used_bytes, a.used);
    assert_eq!(st.free_bytes, a.free);
    assert_eq!(st.largest_free_extent, a.largest_free);
    assert_eq!(st.superblock_seq, sb.seq);
    assert_eq!(st.log_generation, sb.generation);
    assert_eq!(st.next_txid, sb.next_txid);
    assert_eq!(st.file_len, file.len() as u64);
    // Both slots and the witness areas: rest of slot zero.
    for s in 0..2 {
        let b = &file[s * 4096..s * 4096 + 4096];
        eprintln!(
            "slot {s}: valid {:?} witness {}",
            rd::slot(b).map(|x| x.seq),
            rd::witness(b).is_some()
        );
        assert!(b[128..3584].iter().all(|&x| x == 0) && b[3648..].iter().all(|&x| x == 0));
    }
    eprintln!("fresh file_len {}", file.len());
}

#[test]
fn closed_heap_with_classes_large_and_collections() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("a.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    fill(&heap, true, 1_500_000);
    heap.close().unwrap();
    let p = parse(&path);
    assert_eq!(p.log_frames, 0, "a closed heap has no frames to replay");
    let heap = Heap::open_read_only(&path).unwrap();
    compare(&p, &heap, "closed");
    let st = heap.stats().unwrap();
    assert_eq!(st.superblock_seq, p.sb.seq);
    assert_eq!(st.log_generation, p.sb.generation);
    assert_eq!(st.next_txid, p.next_txid);
    assert_eq!(st.file_len, p.image.len() as u64);
    // Catalogue: the collections' element types
    let ids: Vec<u64> = p.catalogue.iter().map(|r| r.0).collect();
    for (id, desc) in [
        (<u64 as Stored>::ID, txheap::describe::<u64>()),
        (<PString as Stored>::ID, txheap::describe::<PString>()),
    ] {
        assert!(
            ids.contains(&id),
            "catalogue lacks {desc}: {:?}",
            p.catalogue
        );
    }
}

fn crash_image(durability: Durability, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(name);
    let heap = Heap::create(&path, opts().durability(durability).in_place_min(64 << 10)).unwrap();
    fill(&heap, true, 700_000);
    let copy = d.path().join(format!("{name}.crash"));
    std::fs::copy(&path, &copy).unwrap();
    std::mem::forget(heap);
    (d, copy)
}

#[test]
fn crash_image_full() {
    let (_d, path) = crash_image(Durability::Full, "full.heap");
    let p = parse(&path);
    assert!(
        p.log_frames > 0,
        "expected frames in the log: {}",
        p.log_end_reason
    );
    let heap = Heap::open_read_only(&path).unwrap();
    compare(&p, &heap, "crash Full");
    assert_eq!(heap.stats().unwrap().next_txid, p.next_txid);
}

#[test]
fn crash_image_none() {
    let (_d, path) = crash_image(Durability::None, "none.heap");
    let p = parse(&path);
    assert!(
        p.log_frames > 0,
        "expected frames in the log: {}",
        p.log_end_reason
    );
    let heap = Heap::open_read_only(&path).unwrap();
    compare(&p, &heap, "crash None");
    assert_eq!(heap.stats().unwrap().next_txid, p.next_txid);
}

#[test]
fn compacted_heap() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("c.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    fill(&heap, true, 1_500_000);
    // Free stuff at the end so compaction cuts a tail, and a big hole in the middle.
    let extra = heap
        .transaction(|tx| tx.alloc_slice(&vec![5u8; 3 << 20]))
        .unwrap();
    heap.transaction(|tx| tx.free_slice(extra)).unwrap();
    let r = heap.compact().unwrap();
    eprintln!("compact {r:?}");
    heap.close().unwrap();
    let p = parse(&path);
    assert!(p.sb.file_len == 0 || p.sb.file_len <= p.image.len() as u64);
    let heap = Heap::open_read_only(&path).unwrap();
    compare(&p, &heap, "compacted");
    assert_eq!(heap.stats().unwrap().file_len, p.image.len() as u64);
}

#[test]
fn stored_identity_from_the_doc() {
    use rd::*;
    // A primitive: the tag `primitive` (its bytes alone), then its Rust name (length first),
    // size, alignment.
    let id = fnv_u(fnv_u(fnv_s(fnv(FNV_OFF, b"primitive"), "u64"), 8), 8);
    assert_eq!(
        <u64 as Stored>::ID,
        id,
        "u64's identity as FORMAT.md states it"
    );
}

fn dump(path: &Path, what: &str) -> Vec<rd::Frame> {
    let file = std::fs::read(path).unwrap();
    let (sb, slot) = rd::select(&file).unwrap();
    for s in 0..2 {
        let w = rd::witness(&file[s * 4096..s * 4096 + 4096]);
        eprintln!(
            "{what}: slot {s} (current {slot}) witness {:?}",
            w.map(|w| (w.generation, w.txid))
        );
    }
    let log = rd::scan(&file, &sb);
    for f in &log.committed {
        let kinds: Vec<(u32, usize)> = f.ranges.iter().map(|r| (r.kind, r.bytes.len())).collect();
        eprintln!(
            "{what}: frame at {} (page off {}) len {} txid {} durable {} kinds {:?}",
            f.at,
            f.at % 4096,
            f.len,
            f.txid,
            f.durable_txid,
            if kinds.len() > 6 {
                kinds[kinds.len() - 3..].to_vec()
            } else {
                kinds
            }
        );
    }
    eprintln!("{what}: end at {}: {}", log.end_at, log.end_reason);
    log.committed
}

#[test]
fn frames_and_witnesses() {
    for (dur, name) in [(Durability::Full, "f.heap"), (Durability::None, "n.heap")] {
        let (_d, path) = crash_image(dur, name);
        let frames = dump(&path, name);
        if dur == Durability::Full {
            for f in &frames {
                assert_eq!(f.durable_txid, f.txid - 1, "Full: durable_txid is txid - 1");
            }
        }
        for f in &frames {
            assert!(f.durable_txid < f.txid);
        }
    }
    // None with a flush after an in-place commit: vouchers.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("v.heap");
    let heap = Heap::create(
        &path,
        opts().durability(Durability::None).in_place_min(64 << 10),
    )
    .unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<Root>()?;
        let big = tx.alloc_slice(&vec![3u8; 600_000])?;
        tx.get_mut(r)?.big = big;
        tx.get_mut(r)?.count = 42;
        Ok(())
    })
    .unwrap();
    heap.flush().unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<Root>()?;
        tx.get_mut(r)?.count = 42;
        tx.get_mut(r)?.small[0] = tx.alloc_slice(&[1u8; 10])?;
        Ok(())
    })
    .unwrap();
    let copy = d.path().join("v.crash");
    std::fs::copy(&path, &copy).unwrap();
    std::mem::forget(heap);
    let frames = dump(&copy, "vouchers");
    let p = parse(&copy);
    let heap = Heap::open_read_only(&copy).unwrap();
    compare(&p, &heap, "vouchers");
    let _ = frames;
}

#[test]
fn closed_log_is_a_hole_past_its_first_page() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("h.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    fill(&heap, true, 300_000);
    heap.close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let (sb, _) = rd::select(&file).unwrap();
    let nz = file[(8192 + 4096) as usize..(8192 + sb.log_size) as usize]
        .iter()
        .filter(|&&b| b != 0)
        .count();
    eprintln!("nonzero bytes in the log past its first page: {nz}");
    assert_eq!(nz, 0);
}

/// FORMAT.md, replay rule: a frame whose magic, generation and txid are the expected ones and
/// whose check matches but whose ranges do not parse (here an unknown range kind) is refused as
/// `Corrupt`; the reader stops there (the frame is not committed).
#[test]
fn a_verifying_frame_with_an_unknown_range_kind_is_corrupt() {
    let (_d, path) = crash_image(Durability::Full, "m.heap");
    let mut file = std::fs::read(&path).unwrap();
    let (sb, _) = rd::select(&file).unwrap();
    let log = rd::scan(&file, &sb);
    let last = log.committed.last().unwrap().clone();
    let at = last.at as usize;
    // First range's kind := 7, then recompute the frame's check.
    file[at + 40 + 12..at + 40 + 16].copy_from_slice(&7u32.to_le_bytes());
    let mut stream = file[at..at + 36].to_vec();
    stream.extend_from_slice(&file[at + 40..at + last.len as usize]);
    let check = xxhash_rust::xxh3::xxh3_64(&stream) as u32;
    file[at + 36..at + 40].copy_from_slice(&check.to_le_bytes());
    std::fs::write(&path, &file).unwrap();
    let scan = rd::scan(&file, &sb);
    assert_eq!(scan.committed.len(), log.committed.len() - 1);
    eprintln!(
        "reader: {} committed frames, end: {}",
        scan.committed.len(),
        scan.end_reason
    );
    match Heap::open_read_only(&path) {
        Err(txheap::Error::Corrupt { .. }) => {}
        other => panic!(
            "FORMAT.md says Corrupt for frame {}: {:?}",
            last.txid,
            other.map(|_| ())
        ),
    }
}

#[derive(Clone, Copy, Pod, Zeroable, Stored)]
#[repr(C)]
struct Small {
    v: PPtr<PVec<u32>>,
}

#[test]
fn catalogue_before_and_after_the_root() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("cat.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    // A collection before any root: catalogue at heap_offset + 66.
    let v = heap.transaction(PVec::<u32>::new).unwrap();
    heap.close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let (sb, _) = rd::select(&file).unwrap();
    let (desc, cat) = rd::descriptions(&file, &sb);
    eprintln!("before root: desc {desc:?} catalogue {cat:?}");
    assert_eq!(cat.len(), 1);
    let heap = Heap::open(&path, opts()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<Small>()?;
        tx.get_mut(r)?.v = v;
        PHashMap::<u16, u8>::new(tx)?;
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let (sb, _) = rd::select(&file).unwrap();
    let (desc, cat) = rd::descriptions(&file, &sb);
    eprintln!("after root: desc {desc:?} catalogue {cat:?}");
    assert_eq!(desc, txheap::describe::<Small>());
    assert_eq!(cat.len(), 3, "{cat:?}");
    // Migrate to a root with a longer description.
    let heap = Heap::open(&path, opts()).unwrap();
    heap.transaction(|tx| {
        tx.migrate_root(|_old: &Small| Root {
            count: 42,
            ..bytemuck::Zeroable::zeroed()
        })
        .map(|_| ())
    })
    .unwrap();
    heap.close().unwrap();
    let file = std::fs::read(&path).unwrap();
    let (sb, _) = rd::select(&file).unwrap();
    let (desc, cat) = rd::descriptions(&file, &sb);
    eprintln!("after migrate: desc {desc:?} catalogue {cat:?}");
    assert_eq!(desc, txheap::describe::<Root>());
    assert_eq!(cat.len(), 3, "{cat:?}");
}

fn leaf(tag: &str, name: &str, size: u64, align: u64) -> u64 {
    use rd::*;
    fnv_u(
        fnv_u(fnv_s(fnv(FNV_OFF, tag.as_bytes()), name), size),
        align,
    )
}
fn struct_id(name: &str, size: u64, align: u64, fields: &[(&str, u64, u64)]) -> u64 {
    use rd::*;
    let mut h = fnv_u(leaf("struct", name, size, align), fields.len() as u64);
    for &(n, off, id) in fields {
        h = fnv_u(fnv_u(fnv_s(h, n), off), id);
    }
    h
}

#[test]
fn stored_identity_struct_pointer_collection_array() {
    use rd::*;
    let u32_id = leaf("primitive", "u32", 4, 4);
    assert_eq!(u32_id, <u32 as Stored>::ID);
    let pvec_shape = struct_id("PVec", 32, 8, &[("T", 0, u32_id)]);
    assert_eq!(pvec_shape, <PVec<u32> as Stored>::SHAPE);
    let pptr_id = fnv_u(leaf("PPtr->", "", 8, 8), pvec_shape);
    assert_eq!(pptr_id, <PPtr<PVec<u32>> as Stored>::ID);
    assert_eq!(
        struct_id("Small", 8, 8, &[("v", 0, pptr_id)]),
        <Small as Stored>::ID
    );
    // An array's identity: `array`, the empty string, size, 1, T's identity, N.
    let u8_id = leaf("primitive", "u8", 1, 1);
    let arr = fnv_u(fnv_u(leaf("array", "", 4, 1), u8_id), 4);
    assert_eq!(arr, <[u8; 4] as Stored>::ID);
    // A pointer's shape: the tag `PPtr`, the *name* of T (an array's is `array`), 8, 8.
    let doc = leaf("PPtr", "array", 8, 8);
    assert_eq!(
        <PPtr<[u8; 4]> as Stored>::SHAPE,
        doc,
        "pointer-to-array shape as FORMAT.md gives it"
    );
    assert_eq!(<PPtr<[u64; 2]> as Stored>::SHAPE, doc);
}

#[test]
fn pvec_header_as_architecture_says() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("pv.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    fill(&heap, true, 300_000);
    heap.close().unwrap();
    let p = parse(&path);
    let root_off = (p.sb.heap_offset + 4096) as usize;
    let root: Root =
        *bytemuck::from_bytes(&p.image[root_off..root_off + std::mem::size_of::<Root>()]);
    let h = root.vec.offset() as usize;
    let w = |i: usize| u64::from_le_bytes(p.image[h + 8 * i..h + 8 * i + 8].try_into().unwrap());
    eprintln!("PVec header: {} {} {} {:#x}", w(0), w(1), w(2), w(3));
    assert_eq!((w(2), w(3)), (100, <u64 as Stored>::ID));
    assert!(w(1) >= 100);
    for i in 0..100u64 {
        let at = (w(0) + 8 * i) as usize;
        assert_eq!(
            u64::from_le_bytes(p.image[at..at + 8].try_into().unwrap()),
            i * 3
        );
    }
}
