//! The checkpoint: make the heap durable, then switch to the other superblock slot.
//!
//! Owns: `checkpoint` (heap barrier, then the other slot written and barriered) and
//! `next_superblock`, the superblock it writes (counters bumped, or `Corrupt` when one would
//! pass `COUNTER_MAX`). May not: touch the log or the heap's bytes; emptying the log is the new
//! generation, not a write.

use crate::error::{io_err, RecoveryError};
use crate::hooks::{sabotaged, SUPERBLOCK_BEFORE_HEAP_BARRIER};
use crate::limits::COUNTER_MAX;
use crate::storage::Storage;
use crate::superblock::{Slot, Superblock, SUPERBLOCK_ENCODED_LEN};

/// Checkpoint: `barrier_all`, then write the other slot with `seq + 1`, `generation + 1` and
/// `next_txid`, then barrier it. The log is empty afterwards.
///
/// ```
/// use txheap_recovery::{checkpoint, format, select_superblock, MemStorage, Slot};
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let (nsb, slot) = checkpoint(&mut s, &sb, Slot::A, 5).unwrap();
/// assert_eq!((nsb.seq, nsb.generation, nsb.next_txid, slot), (2, 2, 5, Slot::B));
/// assert_eq!(select_superblock(&s).unwrap(), (nsb, Slot::B));
/// ```
pub fn checkpoint<S: Storage + ?Sized>(
    storage: &mut S,
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
) -> Result<(Superblock, Slot), RecoveryError> {
    if !sabotaged(SUPERBLOCK_BEFORE_HEAP_BARRIER) {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync before checkpoint", 0))?;
    }
    crate::failpoint!("checkpoint.after_heap_barrier");
    let mut next = next_superblock(current, current_slot, next_txid)?;
    // The heap barrier made this length durable; the file never shrinks.
    next.file_len = storage
        .len()
        .map_err(io_err("stat before checkpoint", 0))?
        .min(current.max_size)
        .max(current.file_len);
    // next_superblock refused (Err) every counter past the limit: decode would reject the slot.
    assert!(
        next.seq <= COUNTER_MAX && next.generation <= COUNTER_MAX && next.next_txid <= COUNTER_MAX,
        "checkpoint: superblock counters past COUNTER_MAX reached the write"
    );
    let slot = current_slot.other();
    storage
        .write_at(slot.offset(), &next.encode())
        .map_err(io_err("write superblock", slot.offset()))?;
    storage
        .barrier(slot.offset(), SUPERBLOCK_ENCODED_LEN as u64)
        .map_err(io_err("barrier superblock", slot.offset()))?;
    if sabotaged(SUPERBLOCK_BEFORE_HEAP_BARRIER) {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync after checkpoint", 0))?;
    }
    crate::failpoint!("checkpoint.after_superblock");
    Ok((next, slot))
}

/// The superblock a checkpoint of `current` writes: `seq` and `generation` one more, the given
/// `next_txid`. `Corrupt` (naming the counter) if a counter would pass `COUNTER_MAX`.
pub(crate) fn next_superblock(
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
) -> Result<Superblock, RecoveryError> {
    let bump = |v: u64, name: &str| {
        v.checked_add(1)
            .filter(|n| *n <= COUNTER_MAX)
            .ok_or_else(|| RecoveryError::Corrupt {
                offset: current_slot.offset(),
                what: format!("superblock {name} {v} cannot grow past {COUNTER_MAX}"),
            })
    };
    if next_txid > COUNTER_MAX {
        return Err(RecoveryError::Corrupt {
            offset: current_slot.offset(),
            what: format!("next_txid {next_txid} exceeds {COUNTER_MAX}"),
        });
    }
    Ok(Superblock {
        seq: bump(current.seq, "seq")?,
        generation: bump(current.generation, "generation")?,
        next_txid,
        log_size: current.log_size,
        max_size: current.max_size,
        file_len: current.file_len,
    })
}
