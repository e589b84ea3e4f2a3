//! The log-start witness: evidence, kept beside the superblocks, that the current generation's
//! first frame was durable.
//!
//! Owns: the witness record (its layout, encoding and check), where it lies, and reading it for
//! the current superblock. May not: decide what a missing frame means (the damage rule in
//! `scan` does), or write it (the writer does, once its first frame is durable).
//!
//! Why it exists: a checkpoint leaves the log's sentinel at the log's start, and the first
//! frame of the next generation is written over it. If that write is lost (the device
//! acknowledged it, but the sector later reads as it was before), the log's start shows the
//! sentinel again, which is a clean end: every frame after it, acknowledged, would be dropped
//! without a word. A frame further on cannot be found without reading the whole log region, so
//! the writer records, at a fixed place outside the log, that the first frame was durable.

use crate::error::{io_err, RecoveryError};
use crate::storage::Storage;
use crate::superblock::{Slot, Superblock};

/// The witness record's magic.
pub const WITNESS_MAGIC: [u8; 8] = *b"TXHEAPWT";
/// Where a witness lies inside a superblock slot: the slot's last 512-byte sector, which no
/// superblock write touches (a superblock is the slot's first 128 bytes).
pub const WITNESS_SLOT_OFFSET: u64 = 3584;
/// Bytes of the witness record.
pub const WITNESS_LEN: usize = 64;

/// A log-start witness: generation `generation`'s first frame, transaction `txid`, at the
/// log's start, was durable when this was written.
///
/// ```
/// use txheap_recovery::Witness;
/// let w = Witness { generation: 3, txid: 17 };
/// assert_eq!(Witness::decode(&w.encode()), Some(w));
/// let mut torn = w.encode();
/// torn[9] ^= 1;
/// assert_eq!(Witness::decode(&torn), None);
/// assert_eq!(Witness::decode(&[0u8; 64]), None); // every file before witnesses: zeros
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Witness {
    /// The generation whose first frame it vouches for.
    pub generation: u64,
    /// That frame's transaction id (the superblock's `next_txid`).
    pub txid: u64,
}

impl Witness {
    /// The record: magic, generation, txid, 36 reserved zero bytes, crc32 of bytes 0..60.
    ///
    /// ```
    /// let b = txheap_recovery::Witness { generation: 1, txid: 1 }.encode();
    /// assert_eq!(&b[..8], b"TXHEAPWT");
    /// ```
    pub fn encode(&self) -> [u8; WITNESS_LEN] {
        let mut b = [0u8; WITNESS_LEN];
        b[..8].copy_from_slice(&WITNESS_MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.txid.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The witness `b` holds, or `None` when it holds none (wrong magic, a crc that does not
    /// match, reserved bytes not zero): a torn or absent witness proves nothing.
    ///
    /// ```
    /// let w = txheap_recovery::Witness { generation: 2, txid: 9 };
    /// assert_eq!(txheap_recovery::Witness::decode(&w.encode()).unwrap().txid, 9);
    /// ```
    pub fn decode(b: &[u8; WITNESS_LEN]) -> Option<Witness> {
        let crc = u32::from_le_bytes(b[60..].try_into().expect("4 bytes"));
        if b[..8] != WITNESS_MAGIC || crc32fast::hash(&b[..60]) != crc {
            return None;
        }
        if b[24..60].iter().any(|&x| x != 0) {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Witness {
            generation: word(8),
            txid: word(16),
        })
    }

    /// The file offset of the witness inside `slot`. The writer puts it in the slot that is
    /// not current, which the next checkpoint writes (its first 128 bytes only).
    ///
    /// ```
    /// use txheap_recovery::{Slot, Witness};
    /// assert_eq!(Witness::offset(Slot::A), 3584);
    /// assert_eq!(Witness::offset(Slot::B), 4096 + 3584);
    /// ```
    pub fn offset(slot: Slot) -> u64 {
        slot.offset() + WITNESS_SLOT_OFFSET
    }
}

/// The file offset of a witness, in either slot, that `sb`'s generation's first frame (its
/// transaction `txid`) was durable; `None` when neither slot holds one. A witness of another
/// generation is stale (a checkpoint since made a new generation) and proves nothing.
///
/// ```
/// use txheap_recovery::{format, witness_for, MemStorage, Slot, Storage, Witness};
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// assert_eq!(witness_for(&s, &sb, sb.next_txid).unwrap(), None);
/// let w = Witness { generation: sb.generation, txid: sb.next_txid };
/// s.write_at(Witness::offset(Slot::B), &w.encode()).unwrap();
/// assert_eq!(witness_for(&s, &sb, sb.next_txid).unwrap(), Some(Witness::offset(Slot::B)));
/// assert_eq!(witness_for(&s, &sb, sb.next_txid + 1).unwrap(), None);
/// ```
pub fn witness_for<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    txid: u64,
) -> Result<Option<u64>, RecoveryError> {
    for slot in [Slot::A, Slot::B] {
        let at = Witness::offset(slot);
        let mut b = [0u8; WITNESS_LEN];
        storage
            .read_at(at, &mut b)
            .map_err(io_err("read log-start witness", at))?;
        if Witness::decode(&b)
            == Some(Witness {
                generation: sb.generation,
                txid,
            })
        {
            return Ok(Some(at));
        }
    }
    Ok(None)
}
