//! The allocator's on-disk format: the heap header, the zones' chunk tables, size classes and
//! run geometry (byte layouts in docs/FORMAT.md; field offsets named here, each from the one
//! before).
//!
//! Owns: encoding and checking these structures, and the size-class table. May not: hold
//! allocator state or touch the file.

use crate::error::{Error, Result};
use crate::limits::CHUNK_SIZE;

/// Chunks per zone: chunk `z * ZONE_CHUNKS` holds zone `z`'s chunk table, and no extent
/// crosses a zone boundary. 16384 chunks of 256 KiB: 4 GiB zones.
pub(crate) const ZONE_CHUNKS: u64 = 16384;
/// Bytes of one chunk-table entry; a zone's table fills exactly its first chunk.
pub(crate) const ENTRY_LEN: u64 = 16;
const _: () = assert!(ZONE_CHUNKS * ENTRY_LEN == CHUNK_SIZE);
/// The most chunks one extent may take: a zone less its table chunk.
pub(crate) const EXTENT_CHUNKS_MAX: u64 = ZONE_CHUNKS - 1;

// Entry fields (docs/FORMAT.md), each offset following the previous field.
const E_KIND: usize = 0;
const E_CLASS: usize = E_KIND + 1;
const E_CHECK: usize = E_CLASS + 1;
const E_CHUNKS: usize = E_CHECK + 2;
const E_SIZE: usize = E_CHUNKS + 4;

const KIND_FREE: u8 = 1;
const KIND_RUN: u8 = 2;
const KIND_LARGE: u8 = 3;
const KIND_TABLE: u8 = 4;

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

/// Every class's run geometry, computed at compile time (the search below runs per lookup
/// otherwise: it was on every allocation's path).
const RUN_GEOMS: [RunGeom; NCLASSES] = {
    let mut t = [RunGeom {
        block_size: 0,
        block_count: 0,
        data_offset: 0,
    }; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = RunGeom::compute(c);
        c += 1;
    }
    t
};

impl RunGeom {
    /// The geometry of `class`'s runs.
    pub(crate) fn of_class(class: usize) -> RunGeom {
        RUN_GEOMS[class]
    }

    const fn compute(class: usize) -> RunGeom {
        let bs = CLASSES[class] as u64;
        let mut n = CHUNK_SIZE / bs;
        loop {
            let bitmap = n.div_ceil(64) * 8;
            let data = bitmap.div_ceil(64) * 64;
            if data + n * bs <= CHUNK_SIZE {
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

/// The smallest class fitting `size` bytes at `align` (a power of two up to [`ALIGN_MAX`](crate::limits::ALIGN_MAX)).
#[inline]
pub(crate) fn class_for(size: u64, align: u64) -> Option<usize> {
    let size = size.max(1);
    if size <= 128 && align <= 16 {
        // The first eight classes are 16, 32, ..., 128: every multiple of 16 up to 128, each
        // aligned to 16 (the search below cost 30 instructions per allocation, W3).
        return Some((size.div_ceil(16) - 1) as usize);
    }
    CLASSES
        .iter()
        .position(|&bs| bs as u64 >= size && bs as u64 % align.max(16) == 0)
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A decoded chunk-table entry: what the extent starting at that chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Free {
        chunks: u32,
    },
    Run {
        class: usize,
    },
    Large {
        chunks: u32,
        size: u64,
    },
    /// The zone's own table chunk (entry 0 of every zone).
    Table,
}

/// The entry check: the low 16 bits of CRC32 over the entry with its check bytes zeroed.
fn entry_check(b: &[u8; ENTRY_LEN as usize]) -> u16 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..E_CHECK]);
    h.update(&[0, 0]);
    h.update(&b[E_CHUNKS..]);
    h.finalize() as u16
}

impl Entry {
    pub(crate) fn chunks(&self) -> u32 {
        match *self {
            Entry::Free { chunks } | Entry::Large { chunks, .. } => chunks,
            Entry::Run { .. } | Entry::Table => 1,
        }
    }

    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let mut b = [0u8; ENTRY_LEN as usize];
        let (kind, class, size) = match *self {
            Entry::Free { .. } => (KIND_FREE, 0u8, 0u64),
            Entry::Run { class } => (KIND_RUN, class as u8, 0),
            Entry::Large { size, .. } => (KIND_LARGE, 0, size),
            Entry::Table => (KIND_TABLE, 0, 0),
        };
        b[E_KIND] = kind;
        b[E_CLASS] = class;
        b[E_CHUNKS..E_SIZE].copy_from_slice(&self.chunks().to_le_bytes());
        b[E_SIZE..].copy_from_slice(&size.to_le_bytes());
        let c = entry_check(&b);
        b[E_CHECK..E_CHUNKS].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode and check the entry found at file offset `at`.
    pub(crate) fn decode(b: &[u8], at: u64) -> Result<Entry> {
        let corrupt = |what: String| Error::Corrupt { offset: at, what };
        let b: &[u8; ENTRY_LEN as usize] = b
            .get(..ENTRY_LEN as usize)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("chunk-table entry cut short".into()))?;
        let stored = u16::from_le_bytes([b[E_CHECK], b[E_CHECK + 1]]);
        let computed = entry_check(b);
        if stored != computed {
            return Err(corrupt(format!(
                "chunk-table entry check {stored:#06x} != computed {computed:#06x}"
            )));
        }
        let chunks = u32::from_le_bytes(b[E_CHUNKS..E_SIZE].try_into().expect("4 bytes"));
        let size = u64::from_le_bytes(b[E_SIZE..].try_into().expect("8 bytes"));
        let class = b[E_CLASS] as usize;
        let e = match b[E_KIND] {
            KIND_FREE => Entry::Free { chunks },
            KIND_RUN if class < NCLASSES => Entry::Run { class },
            KIND_RUN => return Err(corrupt(format!("run of unknown size class {class}"))),
            KIND_LARGE => Entry::Large { chunks, size },
            KIND_TABLE => Entry::Table,
            k => return Err(corrupt(format!("unknown chunk-table entry kind {k}"))),
        };
        if chunks == 0 || chunks as u64 > EXTENT_CHUNKS_MAX {
            return Err(corrupt(format!("extent of {chunks} chunks")));
        }
        // Every field must be exactly what `encode` writes for this entry.
        if &e.encode() != b {
            return Err(corrupt(format!(
                "chunk-table entry fields inconsistent with {e:?}"
            )));
        }
        if let Entry::Large { chunks, size } = e {
            if size == 0 || size > chunks as u64 * CHUNK_SIZE {
                return Err(corrupt(format!(
                    "large object of {size} bytes in {chunks} chunks"
                )));
            }
        }
        Ok(e)
    }
}

/// The heap header: the one place the chunk count and the root's identity live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HeapHeader {
    pub chunk_count: u64,
    pub root_size: u64,
    pub root_fingerprint: u64,
    pub root_align: u32,
    /// How `root_fingerprint` was computed: 0 from the compiler's type name (files written
    /// before `Stored`), [`ROOT_IDENTITY_STORED`] from `Stored::ID`.
    pub root_identity: u32,
}

/// `root_identity` of a root checked by `Stored::ID`, whose description follows the header.
pub(crate) const ROOT_IDENTITY_STORED: u32 = 1;

pub(crate) const HEAP_HEADER_LEN: u64 = 64;
const HEAP_MAGIC: [u8; 8] = *b"TXHEAPHH";
// Heap header fields (docs/FORMAT.md), each offset following the previous field.
const HH_MAGIC: usize = 0;
const HH_CHUNK_COUNT: usize = HH_MAGIC + 8;
const HH_ROOT_SIZE: usize = HH_CHUNK_COUNT + 8;
const HH_ROOT_FINGERPRINT: usize = HH_ROOT_SIZE + 8;
const HH_ROOT_ALIGN: usize = HH_ROOT_FINGERPRINT + 8;
const HH_ROOT_IDENTITY: usize = HH_ROOT_ALIGN + 4;
const HH_RESERVED: usize = HH_ROOT_IDENTITY + 4;
const HH_CRC: usize = HEAP_HEADER_LEN as usize - 4;

impl HeapHeader {
    pub(crate) fn encode(&self) -> [u8; HEAP_HEADER_LEN as usize] {
        let mut b = [0u8; HEAP_HEADER_LEN as usize];
        b[HH_MAGIC..HH_CHUNK_COUNT].copy_from_slice(&HEAP_MAGIC);
        b[HH_CHUNK_COUNT..HH_ROOT_SIZE].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[HH_ROOT_SIZE..HH_ROOT_FINGERPRINT].copy_from_slice(&self.root_size.to_le_bytes());
        b[HH_ROOT_FINGERPRINT..HH_ROOT_ALIGN].copy_from_slice(&self.root_fingerprint.to_le_bytes());
        b[HH_ROOT_ALIGN..HH_ROOT_IDENTITY].copy_from_slice(&self.root_align.to_le_bytes());
        b[HH_ROOT_IDENTITY..HH_RESERVED].copy_from_slice(&self.root_identity.to_le_bytes());
        let c = crc(&b[..HH_CRC]);
        b[HH_CRC..].copy_from_slice(&c.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8], at: u64) -> Result<HeapHeader> {
        let corrupt = |what: String| Error::Corrupt { offset: at, what };
        if b.len() < HEAP_HEADER_LEN as usize || b[HH_MAGIC..HH_CHUNK_COUNT] != HEAP_MAGIC {
            return Err(corrupt("heap header magic missing".into()));
        }
        let stored = u32::from_le_bytes(b[HH_CRC..HH_CRC + 4].try_into().expect("4 bytes"));
        let computed = crc(&b[..HH_CRC]);
        if stored != computed {
            return Err(corrupt(format!(
                "heap header crc {stored:#010x} != computed {computed:#010x}"
            )));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let h = HeapHeader {
            chunk_count: u64_at(HH_CHUNK_COUNT),
            root_size: u64_at(HH_ROOT_SIZE),
            root_fingerprint: u64_at(HH_ROOT_FINGERPRINT),
            root_align: u32::from_le_bytes(
                b[HH_ROOT_ALIGN..HH_ROOT_IDENTITY]
                    .try_into()
                    .expect("4 bytes"),
            ),
            root_identity: u32::from_le_bytes(
                b[HH_ROOT_IDENTITY..HH_RESERVED]
                    .try_into()
                    .expect("4 bytes"),
            ),
        };
        if h.encode() != b[..HEAP_HEADER_LEN as usize] {
            return Err(corrupt("heap header reserved bytes are not zero".into()));
        }
        Ok(h)
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
            assert!(g.data_offset >= g.bitmap_words() * 8);
            assert!(g.data_offset + g.block_count * g.block_size <= CHUNK_SIZE);
            // maximal: one more block would not fit
            let n = g.block_count + 1;
            let d = (n.div_ceil(64) * 8).div_ceil(64) * 64;
            assert!(d + n * g.block_size > CHUNK_SIZE);
        }
    }

    #[test]
    fn class_for_small_sizes_matches_the_search() {
        assert_eq!(&CLASSES[..8], &[16, 32, 48, 64, 80, 96, 112, 128]);
        for size in 0..=300u64 {
            for align in [1u64, 2, 4, 8, 16, 32, 64] {
                let searched = CLASSES
                    .iter()
                    .position(|&bs| bs as u64 >= size.max(1) && bs as u64 % align.max(16) == 0);
                assert_eq!(
                    class_for(size, align),
                    searched,
                    "size {size} align {align}"
                );
            }
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
    fn entries_round_trip_and_reject_damage() {
        for e in [
            Entry::Free { chunks: 3 },
            Entry::Run { class: 5 },
            Entry::Large {
                chunks: 2,
                size: 300_000,
            },
            Entry::Table,
        ] {
            let b = e.encode();
            assert_eq!(Entry::decode(&b, 0).unwrap(), e);
            for i in 0..ENTRY_LEN as usize * 8 {
                let mut d = b;
                d[i / 8] ^= 1 << (i % 8);
                assert!(
                    Entry::decode(&d, 0).is_err(),
                    "flip of bit {i} accepted for {e:?}"
                );
            }
        }
        assert!(Entry::decode(&[0; 16], 0).is_err(), "zeros are no entry");
        let hh = HeapHeader {
            chunk_count: 9,
            root_size: 16,
            root_fingerprint: 77,
            root_align: 8,
            root_identity: ROOT_IDENTITY_STORED,
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
