//! The superblock: its byte format, the file's geometry constants and the selection rule.
//!
//! Owns: `Slot`, `Superblock` (encode, decode with every rule of `docs/FORMAT.md`),
//! `SlotError`, `select_superblock` and the layout constants (`PAGE_SIZE`, `LOG_OFFSET`,
//! `SUPERBLOCK_MAGIC`, ...; the limits are in `limits`). May not: write the file (selection
//! only reads; the checkpoint and `format` write slots), or read the log.

use std::fmt;

use crate::error::{io_err, RecoveryError};
use crate::limits::{COUNTER_MAX, LOG_SIZE_MAX, LOG_SIZE_MIN};
use crate::storage::Storage;

/// Unit of every region boundary.
pub const PAGE_SIZE: u64 = 4096;
/// Bytes of each of the two superblock slots.
pub const SUPERBLOCK_SLOT_LEN: u64 = 4096;
/// Bytes of an encoded superblock (at the start of its slot).
pub const SUPERBLOCK_ENCODED_LEN: usize = 128;
/// Superblock magic.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"TXHEAPSB";
/// The format version this crate reads and writes. Version 2: log frames carry the writer's
/// durability evidence (`durable_txid`), and a new log starts with a sentinel frame. Version 3:
/// the allocator's metadata moved from headers inside each extent to a chunk table per 4 GiB
/// zone (docs/FORMAT.md).
pub const FORMAT_VERSION: u32 = 3;
/// Where the log region starts.
pub const LOG_OFFSET: u64 = 8192;
/// Allocator chunk size (recorded in the superblock).
pub const CHUNK_SIZE: u64 = 262144;
/// Heap header page plus root area page, before chunk 0.
pub const HEAP_META_LEN: u64 = 8192;

/// A superblock slot.
///
/// ```
/// use txheap_recovery::Slot;
/// assert_eq!(Slot::A.other(), Slot::B);
/// assert_eq!(Slot::B.offset(), 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// At offset 0.
    A,
    /// At offset 4096.
    B,
}

impl Slot {
    /// The slot's file offset.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Slot::A.offset(), 0);
    /// ```
    pub fn offset(self) -> u64 {
        match self {
            Slot::A => 0,
            Slot::B => SUPERBLOCK_SLOT_LEN,
        }
    }
    /// The other slot.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Slot::B.other(), txheap_recovery::Slot::A);
    /// ```
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Why one slot is not usable.
///
/// ```
/// let e = txheap_recovery::Superblock::decode(&[0u8; 128], 0).unwrap_err();
/// assert_eq!(e, txheap_recovery::SlotError::NoMagic);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    /// No magic.
    NoMagic,
    /// Checksum mismatch.
    BadCrc {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// A valid slot of another version.
    UnsupportedVersion {
        /// Its version.
        found: u32,
        /// Its sequence number (every version keeps magic, version and seq where version 1 has
        /// them), so that a newer slot of an unknown version is never overruled by an older one.
        seq: u64,
    },
    /// A field breaks a rule of FORMAT.md.
    BadField {
        /// Which and why.
        what: String,
    },
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::NoMagic => write!(f, "no superblock magic"),
            SlotError::BadCrc { stored, computed } => {
                write!(f, "crc {stored:#010x} != computed {computed:#010x}")
            }
            SlotError::UnsupportedVersion { found, seq } => {
                write!(f, "format version {found} (seq {seq})")
            }
            SlotError::BadField { what } => write!(f, "{what}"),
        }
    }
}

/// The current superblock: where the log is, which generation of frames counts.
///
/// ```
/// let sb = txheap_recovery::Superblock::new(65536, 1 << 20);
/// assert_eq!(sb.heap_offset(), 8192 + 65536);
/// let enc = sb.encode();
/// assert_eq!(txheap_recovery::Superblock::decode(&enc, 0).unwrap(), sb);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Higher is newer.
    pub seq: u64,
    /// Frames count only with this generation.
    pub generation: u64,
    /// Transaction id of this generation's first frame.
    pub next_txid: u64,
    /// Bytes of the log region.
    pub log_size: u64,
    /// Largest file size.
    pub max_size: u64,
    /// The file's length when this superblock was written, after the barrier that made the
    /// heap durable: the file never shrinks, so a shorter file lost bytes and is refused
    /// (`Truncated`). 0 claims nothing (a new file's first superblock).
    pub file_len: u64,
}

impl Superblock {
    /// A fresh superblock: seq 1, generation 1, next_txid 1.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).seq, 1);
    /// ```
    pub fn new(log_size: u64, max_size: u64) -> Superblock {
        Superblock {
            seq: 1,
            generation: 1,
            next_txid: 1,
            log_size,
            max_size,
            file_len: 0,
        }
    }
    /// Start of the log region.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).log_offset(), 8192);
    /// ```
    pub fn log_offset(&self) -> u64 {
        LOG_OFFSET
    }
    /// Start of the heap region.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).heap_offset(), 73728);
    /// ```
    pub fn heap_offset(&self) -> u64 {
        LOG_OFFSET + self.log_size
    }
    /// Start of chunk 0.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).chunk_area_offset(), 73728 + 8192);
    /// ```
    pub fn chunk_area_offset(&self) -> u64 {
        self.heap_offset() + HEAP_META_LEN
    }
    /// The shortest valid file: the heap's metadata, and at least the length the file had at
    /// the checkpoint that wrote this superblock.
    ///
    /// ```
    /// let mut sb = txheap_recovery::Superblock::new(65536, 1 << 20);
    /// assert_eq!(sb.min_file_len(), sb.chunk_area_offset());
    /// sb.file_len = 1 << 19;
    /// assert_eq!(sb.min_file_len(), 1 << 19);
    /// ```
    pub fn min_file_len(&self) -> u64 {
        self.chunk_area_offset().max(self.file_len)
    }

    /// Encode with magic, version, constants and crc.
    ///
    /// ```
    /// let b = txheap_recovery::Superblock::new(65536, 1 << 20).encode();
    /// assert_eq!(&b[..8], b"TXHEAPSB");
    /// ```
    pub fn encode(&self) -> [u8; SUPERBLOCK_ENCODED_LEN] {
        let mut b = [0u8; SUPERBLOCK_ENCODED_LEN];
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_txid.to_le_bytes());
        b[40..48].copy_from_slice(&LOG_OFFSET.to_le_bytes());
        b[48..56].copy_from_slice(&self.log_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.heap_offset().to_le_bytes());
        b[64..72].copy_from_slice(&self.max_size.to_le_bytes());
        b[72..76].copy_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
        b[76..80].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b[80..88].copy_from_slice(&self.file_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check magic, crc, version and every geometry rule.
    ///
    /// ```
    /// let mut b = txheap_recovery::Superblock::new(65536, 1 << 20).encode();
    /// b[20] ^= 1;
    /// assert!(matches!(txheap_recovery::Superblock::decode(&b, 0), Err(txheap_recovery::SlotError::BadCrc { .. })));
    /// ```
    pub fn decode(
        bytes: &[u8; SUPERBLOCK_ENCODED_LEN],
        _slot_offset: u64,
    ) -> Result<Superblock, SlotError> {
        if bytes[0..8] != SUPERBLOCK_MAGIC {
            return Err(SlotError::NoMagic);
        }
        let stored = u32::from_le_bytes(bytes[124..128].try_into().expect("4"));
        let computed = crc32fast::hash(&bytes[..124]);
        if stored != computed {
            return Err(SlotError::BadCrc { stored, computed });
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SlotError::UnsupportedVersion {
                found: version,
                seq: u64_at(16),
            });
        }
        let sb = Superblock {
            seq: u64_at(16),
            generation: u64_at(24),
            next_txid: u64_at(32),
            log_size: u64_at(48),
            max_size: u64_at(64),
            file_len: u64_at(80),
        };
        let bad = |what: String| Err(SlotError::BadField { what });
        // Counters only ever grow by one per checkpoint or transaction; a value this large
        // cannot come from use, and would overflow when incremented.
        for (name, v) in [
            ("seq", sb.seq),
            ("generation", sb.generation),
            ("next_txid", sb.next_txid),
        ] {
            if v > COUNTER_MAX {
                return bad(format!("{name} {v} exceeds {COUNTER_MAX}"));
            }
        }
        if sb.generation == txheap_log::SENTINEL_GENERATION {
            // The sentinel's frame would then read as this generation's first.
            return bad(format!(
                "generation {} is the log sentinel's",
                txheap_log::SENTINEL_GENERATION
            ));
        }
        if u32_at(12) != 0 {
            return bad(format!("flags {:#x} are not zero", u32_at(12)));
        }
        if u64_at(40) != LOG_OFFSET {
            return bad(format!("log_offset {} is not {LOG_OFFSET}", u64_at(40)));
        }
        if sb.log_size % PAGE_SIZE != 0 || !(LOG_SIZE_MIN..=LOG_SIZE_MAX).contains(&sb.log_size) {
            return bad(format!(
                "log_size {} is not a multiple of {PAGE_SIZE} of at least {LOG_SIZE_MIN}",
                sb.log_size
            ));
        }
        if u64_at(56) != sb.heap_offset() {
            return bad(format!(
                "heap_offset {} is not log_offset + log_size",
                u64_at(56)
            ));
        }
        if sb.max_size % PAGE_SIZE != 0 || sb.max_size < sb.min_file_len() {
            return bad(format!(
                "max_size {} is below {} or not page-aligned",
                sb.max_size,
                sb.min_file_len()
            ));
        }
        if u32_at(72) as u64 != CHUNK_SIZE || u32_at(76) as u64 != PAGE_SIZE {
            return bad(format!(
                "chunk_size {} / page_size {} unsupported",
                u32_at(72),
                u32_at(76)
            ));
        }
        if sb.file_len > sb.max_size {
            return bad(format!(
                "file_len {} exceeds max_size {}",
                sb.file_len, sb.max_size
            ));
        }
        if bytes[88..124].iter().any(|&b| b != 0) {
            return bad("reserved bytes are not zero".into());
        }
        Ok(sb)
    }
}

fn read_slot<S: Storage + ?Sized>(
    storage: &S,
    slot: Slot,
    file_len: u64,
) -> Result<Result<Superblock, SlotError>, RecoveryError> {
    let mut b = [0u8; SUPERBLOCK_ENCODED_LEN];
    if file_len < slot.offset() + SUPERBLOCK_ENCODED_LEN as u64 {
        // A short file: whatever bytes exist, zero-padded.
        let avail = file_len.saturating_sub(slot.offset()) as usize;
        if avail > 0 {
            storage
                .read_at(slot.offset(), &mut b[..avail])
                .map_err(io_err("read superblock", slot.offset()))?;
        }
    } else {
        storage
            .read_at(slot.offset(), &mut b)
            .map_err(io_err("read superblock", slot.offset()))?;
    }
    Ok(Superblock::decode(&b, slot.offset()))
}

/// The superblock slots that are damaged (neither all zero, as a new file's slot B is, nor
/// valid), with what is wrong: recovery falls back to the other slot silently when the format
/// proves nothing was lost, but a damaged slot means the disk changed bytes it had written, which
/// an operator should learn. Never writes.
///
/// ```
/// use txheap_recovery::{damaged_slots, format, MemStorage, Slot, Storage};
/// let mut s = MemStorage::new();
/// format(&mut s, 65536, 1 << 20).unwrap();
/// assert!(damaged_slots(&s).unwrap().is_empty()); // slot B is all zero: never written
/// s.write_at(4096 + 20, &[1]).unwrap();
/// let d = damaged_slots(&s).unwrap();
/// assert_eq!(d[0].0, Slot::B);
/// ```
pub fn damaged_slots<S: Storage + ?Sized>(
    storage: &S,
) -> Result<Vec<(Slot, String)>, RecoveryError> {
    let len = storage.len().map_err(io_err("stat", 0))?;
    let mut out = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let mut b = [0u8; SUPERBLOCK_ENCODED_LEN];
        let avail = len.saturating_sub(slot.offset()).min(b.len() as u64) as usize;
        storage
            .read_at(slot.offset(), &mut b[..avail])
            .map_err(io_err("read superblock", slot.offset()))?;
        if b.iter().all(|&x| x == 0) {
            continue;
        }
        if let Err(e) = Superblock::decode(&b, slot.offset()) {
            out.push((slot, e.to_string()));
        }
    }
    Ok(out)
}

/// Read both slots and pick the current superblock. Never writes.
///
/// ```
/// use txheap_recovery::{format, select_superblock, MemStorage, Slot};
/// let mut s = MemStorage::new();
/// format(&mut s, 65536, 1 << 20).unwrap();
/// assert_eq!(select_superblock(&s).unwrap().1, Slot::A);
/// assert!(select_superblock(&MemStorage::from_bytes(vec![0; 9000])).is_err());
/// ```
pub fn select_superblock<S: Storage + ?Sized>(
    storage: &S,
) -> Result<(Superblock, Slot), RecoveryError> {
    let len = storage.len().map_err(io_err("stat", 0))?;
    let a = read_slot(storage, Slot::A, len)?;
    let b = read_slot(storage, Slot::B, len)?;
    let newest = |x: &Result<Superblock, SlotError>| match x {
        Ok(sb) => Some(sb.seq),
        _ => None,
    };
    // A valid-crc slot of another version: refuse if it is at least as new as every usable
    // slot. (Falling back to an older slot of our version would let the next checkpoint, which
    // writes the other slot, overwrite the newer one.)
    let usable_seq = newest(&a).max(newest(&b));
    for r in [&a, &b] {
        if let Err(SlotError::UnsupportedVersion { found, seq }) = r {
            if usable_seq.is_none_or(|u| *seq >= u) {
                return Err(RecoveryError::UnsupportedVersion {
                    found: *found,
                    supported: FORMAT_VERSION,
                });
            }
        }
    }
    let chosen = match (newest(&a), newest(&b)) {
        (Some(x), Some(y)) if y > x => Some(Slot::B),
        (Some(_), _) => Some(Slot::A),
        (None, Some(_)) => Some(Slot::B),
        (None, None) => None,
    };
    match chosen {
        Some(Slot::A) => Ok((a.expect("valid"), Slot::A)),
        Some(Slot::B) => Ok((b.expect("valid"), Slot::B)),
        None => {
            if a == Err(SlotError::NoMagic) && b == Err(SlotError::NoMagic) {
                Err(RecoveryError::NotATxheap {
                    detail: format!("no superblock magic at offset 0 or 4096 ({len}-byte file)"),
                })
            } else {
                let (slot, e) = match &a {
                    Err(SlotError::NoMagic) => (Slot::B, b.expect_err("invalid")),
                    Err(e) => (Slot::A, e.clone()),
                    Ok(_) => unreachable!("no valid slot"),
                };
                Err(RecoveryError::Corrupt {
                    offset: slot.offset(),
                    what: format!("no valid superblock: {e}"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentinel_generation_is_refused() {
        let mut sb = Superblock::new(65536, 1 << 20);
        assert_eq!(Superblock::decode(&sb.encode(), 0).unwrap(), sb);
        sb.generation = txheap_log::SENTINEL_GENERATION;
        match Superblock::decode(&sb.encode(), 0) {
            Err(SlotError::BadField { what }) => assert!(what.contains("sentinel"), "{what}"),
            other => panic!("generation 0 decoded as {other:?}"),
        }
    }
}
