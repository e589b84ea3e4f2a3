//! The allocator's on-disk format: the heap header, chunk headers, size classes and run
//! geometry (byte layouts in docs/FORMAT.md; field offsets named here, each from the one
//! before).
//!
//! Owns: encoding and checking these structures, and the size-class table. May not: hold
//! allocator state or touch the file.

use crate::error::{Error, Result};
use crate::limits::CHUNK_SIZE;

/// Bytes of a chunk header (a run's bitmap follows it).
pub(crate) const CHUNK_HEADER_LEN: u64 = 64;
/// Where a large object starts inside its first chunk.
pub(crate) const LARGE_DATA_OFFSET: u64 = 64;

// Chunk header fields (docs/FORMAT.md), each offset following the previous field.
const CH_TAG: usize = 0;
const CH_CHUNKS: usize = CH_TAG + 4;
const CH_CLASS: usize = CH_CHUNKS + 4;
const CH_BLOCK_SIZE: usize = CH_CLASS + 4;
const CH_BLOCK_COUNT: usize = CH_BLOCK_SIZE + 4;
const CH_DATA_OFFSET: usize = CH_BLOCK_COUNT + 4;
const CH_SIZE: usize = CH_DATA_OFFSET + 4;
/// End of the fields the check covers.
const CH_CHECKED: usize = CH_SIZE + 8;
const CH_CRC: usize = CH_CHECKED;
const CH_RESERVED: usize = CH_CRC + 4;

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
        let mut n = (CHUNK_SIZE - CHUNK_HEADER_LEN) / bs;
        loop {
            let bitmap = n.div_ceil(64) * 8;
            let data = (CHUNK_HEADER_LEN + bitmap).div_ceil(64) * 64;
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
        b[CH_TAG..CH_CHUNKS].copy_from_slice(&tag);
        b[CH_CHUNKS..CH_CLASS].copy_from_slice(&self.chunks().to_le_bytes());
        b[CH_CLASS..CH_BLOCK_SIZE].copy_from_slice(&class.to_le_bytes());
        if let Some(g) = geom {
            b[CH_BLOCK_SIZE..CH_BLOCK_COUNT].copy_from_slice(&(g.block_size as u32).to_le_bytes());
            b[CH_BLOCK_COUNT..CH_DATA_OFFSET]
                .copy_from_slice(&(g.block_count as u32).to_le_bytes());
        }
        b[CH_DATA_OFFSET..CH_SIZE].copy_from_slice(&data_offset.to_le_bytes());
        b[CH_SIZE..CH_CHECKED].copy_from_slice(&size.to_le_bytes());
        let c = crc(&b[..CH_CHECKED]);
        b[CH_CRC..CH_RESERVED].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode and check the header found at file offset `at`.
    pub(crate) fn decode(b: &[u8], at: u64) -> Result<ChunkHeader> {
        let corrupt = |what: String| Error::Corrupt { offset: at, what };
        if b.len() < CHUNK_HEADER_LEN as usize {
            return Err(corrupt("chunk header cut short".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let stored = u32_at(CH_CRC);
        let computed = crc(&b[..CH_CHECKED]);
        if stored != computed {
            return Err(corrupt(format!(
                "chunk header crc {stored:#010x} != computed {computed:#010x}"
            )));
        }
        if b[CH_RESERVED..CHUNK_HEADER_LEN as usize]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(corrupt("chunk header reserved bytes are not zero".into()));
        }
        let tag: [u8; 4] = b[CH_TAG..CH_CHUNKS].try_into().expect("4 bytes");
        let chunks = u32_at(CH_CHUNKS);
        let class = u32_at(CH_CLASS) as usize;
        let size = u64::from_le_bytes(b[CH_SIZE..CH_CHECKED].try_into().expect("8 bytes"));
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
        if h.encode()[..CH_CHECKED] != b[..CH_CHECKED] {
            return Err(corrupt(format!(
                "chunk header fields inconsistent with {h:?}"
            )));
        }
        if let ChunkHeader::Large { chunks, size } = h {
            if size == 0 || size > chunks as u64 * CHUNK_SIZE - LARGE_DATA_OFFSET {
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
// Heap header fields (docs/FORMAT.md), each offset following the previous field.
const HH_MAGIC: usize = 0;
const HH_CHUNK_COUNT: usize = HH_MAGIC + 8;
const HH_ROOT_SIZE: usize = HH_CHUNK_COUNT + 8;
const HH_ROOT_FINGERPRINT: usize = HH_ROOT_SIZE + 8;
const HH_ROOT_ALIGN: usize = HH_ROOT_FINGERPRINT + 8;
const HH_RESERVED: usize = HH_ROOT_ALIGN + 4;
const HH_CRC: usize = HEAP_HEADER_LEN as usize - 4;

impl HeapHeader {
    pub(crate) fn encode(&self) -> [u8; HEAP_HEADER_LEN as usize] {
        let mut b = [0u8; HEAP_HEADER_LEN as usize];
        b[HH_MAGIC..HH_CHUNK_COUNT].copy_from_slice(&HEAP_MAGIC);
        b[HH_CHUNK_COUNT..HH_ROOT_SIZE].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[HH_ROOT_SIZE..HH_ROOT_FINGERPRINT].copy_from_slice(&self.root_size.to_le_bytes());
        b[HH_ROOT_FINGERPRINT..HH_ROOT_ALIGN].copy_from_slice(&self.root_fingerprint.to_le_bytes());
        b[HH_ROOT_ALIGN..HH_RESERVED].copy_from_slice(&self.root_align.to_le_bytes());
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
                b[HH_ROOT_ALIGN..HH_RESERVED].try_into().expect("4 bytes"),
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
            assert!(g.data_offset >= CHUNK_HEADER_LEN + g.bitmap_words() * 8);
            assert!(g.data_offset + g.block_count * g.block_size <= CHUNK_SIZE);
            // maximal: one more block would not fit
            let n = g.block_count + 1;
            let d = (CHUNK_HEADER_LEN + n.div_ceil(64) * 8).div_ceil(64) * 64;
            assert!(d + n * g.block_size > CHUNK_SIZE);
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
