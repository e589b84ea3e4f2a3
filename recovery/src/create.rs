//! Creating a file: the superblocks and zeroed log of a new txheap file.
//!
//! Owns: `format`, which checks the geometry, zeroes the log, writes the log's sentinel frame,
//! writes slot A (and a zeroed slot B), extends the file to its minimum length and makes it all
//! durable. May not: open or recover
//! an existing file, or write the heap's metadata pages (they start zeroed; txheap fills them).

use txheap_log::FrameBuilder;

use crate::error::{io_err, RecoveryError};
use crate::limits::{LOG_SIZE_MAX, LOG_SIZE_MIN, ZERO_WRITE_LEN_MAX};
use crate::storage::Storage;
use crate::superblock::{
    Slot, Superblock, LOG_OFFSET, PAGE_SIZE, SUPERBLOCK_ENCODED_LEN, SUPERBLOCK_SLOT_LEN,
};

/// Write a fresh file's superblocks and zeroed log, extend it to `min_file_len`, then
/// `barrier_all`.
///
/// ```
/// let mut s = txheap_recovery::MemStorage::new();
/// let sb = txheap_recovery::format(&mut s, 65536, 1 << 20).unwrap();
/// assert_eq!(s.bytes().len() as u64, sb.min_file_len());
/// assert!(txheap_recovery::format(&mut s, 1000, 1 << 20).is_err());
/// ```
pub fn format<S: Storage + ?Sized>(
    storage: &mut S,
    log_size: u64,
    max_size: u64,
) -> Result<Superblock, RecoveryError> {
    format_with(storage, log_size, max_size, true)
}

/// [`format()`] for a new file that already reads as zeros over its log region (a file sized by
/// `set_len`, whose unwritten bytes are a hole), such as a copy of a heap: the log is not
/// written but its sentinel, so it stays a hole, as a clean close leaves it; the first
/// writable open gives it blocks.
///
/// ```
/// use txheap_recovery::Storage;
/// let mut s = txheap_recovery::MemStorage::new();
/// s.grow(1 << 20).unwrap(); // zeros
/// let sb = txheap_recovery::format_over_zeros(&mut s, 65536, 1 << 20).unwrap();
/// assert_eq!(sb.log_size, 65536);
/// ```
pub fn format_over_zeros<S: Storage + ?Sized>(
    storage: &mut S,
    log_size: u64,
    max_size: u64,
) -> Result<Superblock, RecoveryError> {
    format_with(storage, log_size, max_size, false)
}

fn format_with<S: Storage + ?Sized>(
    storage: &mut S,
    log_size: u64,
    max_size: u64,
    zero_log: bool,
) -> Result<Superblock, RecoveryError> {
    let bad = |what: String| Err(RecoveryError::InvalidGeometry { what });
    if log_size % PAGE_SIZE != 0 || !(LOG_SIZE_MIN..=LOG_SIZE_MAX).contains(&log_size) {
        return bad(format!(
            "log_size {log_size} must be a multiple of {PAGE_SIZE} and at least {LOG_SIZE_MIN}"
        ));
    }
    let sb = Superblock::new(log_size, max_size);
    if max_size % PAGE_SIZE != 0 || max_size < sb.min_file_len() {
        return bad(format!(
            "max_size {max_size} must be a multiple of {PAGE_SIZE} and at least {}",
            sb.min_file_len()
        ));
    }
    if zero_log {
        write_zeros(storage, LOG_OFFSET, sb.heap_offset(), "zero log region")?;
    }
    // The sentinel: it verifies, so the first scan of a new file stops at it as a clean end
    // instead of at zeros, which look like a damaged frame and cost a search of the whole log.
    write_sentinel(storage)?;
    // The heap metadata pages (heap header, root area) start zeroed; the caller fills them in.
    storage
        .grow(sb.min_file_len())
        .map_err(io_err("allocate heap metadata", sb.heap_offset()))?;
    // The geometry checks above are decode's rules: the superblock written must read back.
    assert!(
        Superblock::decode(&sb.encode(), Slot::A.offset()) == Ok(sb),
        "format: the new superblock would not decode"
    );
    let mut slot_b = vec![0u8; SUPERBLOCK_SLOT_LEN as usize];
    storage
        .write_at(Slot::B.offset(), &slot_b)
        .map_err(io_err("write superblock", Slot::B.offset()))?;
    slot_b[..SUPERBLOCK_ENCODED_LEN].copy_from_slice(&sb.encode());
    storage
        .write_at(Slot::A.offset(), &slot_b)
        .map_err(io_err("write superblock", 0))?;
    storage
        .barrier_all()
        .map_err(io_err("fdatasync new file", 0))?;
    Ok(sb)
}

/// Write zeros over `[start, end)` in pieces of at most `ZERO_WRITE_LEN_MAX` bytes (no
/// barrier); `op` names the write in an error.
pub(crate) fn write_zeros<S: Storage + ?Sized>(
    storage: &mut S,
    start: u64,
    end: u64,
    op: &'static str,
) -> Result<(), RecoveryError> {
    let zeros = vec![0u8; ZERO_WRITE_LEN_MAX.min(end.saturating_sub(start) as usize)];
    let mut at = start;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        storage.write_at(at, &zeros[..n]).map_err(io_err(op, at))?;
        at += n as u64;
    }
    Ok(())
}

/// Write the log's *sentinel* at the start of the log region: an empty frame (no ranges) of
/// generation 0, which no superblock's generation matches. A scan that starts there stops at a
/// frame that verifies after reading 40 bytes: a clean end, with no search and no read of a
/// long stale frame. `format` writes it into a new log; `checkpoint` writes it again once the
/// frames it covers are durable in the heap (docs/FORMAT.md, "Sentinel").
pub(crate) fn write_sentinel<S: Storage + ?Sized>(storage: &mut S) -> Result<(), RecoveryError> {
    let sentinel = FrameBuilder::new()
        .finish(txheap_log::SENTINEL_GENERATION, 1)
        .to_vec();
    storage
        .write_at(LOG_OFFSET, &sentinel)
        .map_err(io_err("write log sentinel", LOG_OFFSET))
}
