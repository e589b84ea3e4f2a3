//! The checkpoint: make the heap durable, then switch to the other superblock slot.
//!
//! Owns: `checkpoint` (heap barrier, then the other slot written and barriered, then the log's
//! sentinel) and `next_superblock`, the superblock it writes (counters bumped, or `Corrupt` when
//! one would pass `COUNTER_MAX`). May not: touch the heap's bytes, or the log beyond its first
//! 40 bytes; emptying the log is the new generation, not a write.

use crate::create::write_sentinel;
use crate::error::{io_err, RecoveryError};
use crate::hooks::{sabotaged, SENTINEL_BEFORE_HEAP_BARRIER, SUPERBLOCK_BEFORE_HEAP_BARRIER};
use crate::limits::COUNTER_MAX;
use crate::storage::Storage;
use crate::superblock::{Slot, Superblock, SUPERBLOCK_ENCODED_LEN, SUPERBLOCK_SLOT_LEN};
use crate::txheap_log::{header_at, FRAME_HEADER_LEN};

/// Checkpoint: `barrier_all`, then write the other slot (whole) with `seq` and `generation` one
/// more (two over a damaged slot, or past a newer generation at the log's start) and
/// `next_txid`, then barrier it, then write the log's sentinel at the log's start (no barrier
/// of its own). The log is empty afterwards.
///
/// ```
/// use txheap_recovery::{checkpoint, format, select_superblock, MemStorage, Slot, Storage};
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// // A frame of the first generation, long past: its ranges are in the heap.
/// let mut b = txheap_recovery::txheap_log::FrameBuilder::new();
/// b.push_range(sb.heap_offset(), &[7u8; 4000]).unwrap();
/// s.write_at(sb.log_offset(), b.finish(sb.generation, 4)).unwrap();
/// let (nsb, slot) = checkpoint(&mut s, &sb, Slot::A, 5).unwrap();
/// assert_eq!((nsb.seq, nsb.generation, nsb.next_txid, slot), (2, 2, 5, Slot::B));
/// assert_eq!(select_superblock(&s).unwrap(), (nsb, Slot::B));
/// // The log starts with the sentinel again (an empty frame of generation 0), not that frame.
/// let mut head = [0u8; 40];
/// s.read_at(sb.log_offset(), &mut head).unwrap();
/// let h = txheap_recovery::txheap_log::verified_frame_at(&head).unwrap();
/// assert_eq!((h.generation, h.range_count), (0, 0));
/// ```
pub fn checkpoint<S: Storage + ?Sized>(
    storage: &mut S,
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
) -> Result<(Superblock, Slot), RecoveryError> {
    checkpoint_shrinking(storage, current, current_slot, next_txid, None)
}

/// [`checkpoint`], with `shrink_to`: the new superblock's `file_len` is that length instead of
/// the file's (compaction, which cuts the file to it only after this returns: a superblock never
/// claims more than the file holds). `shrink_to` must lie between the start of the chunk area
/// and the file's length.
///
/// ```
/// use txheap_recovery::{checkpoint_shrinking, format, MemStorage, Slot, Storage};
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 22).unwrap();
/// s.grow(1 << 21).unwrap();
/// let (big, _) = checkpoint_shrinking(&mut s, &sb, Slot::A, 1, None).unwrap();
/// assert_eq!(big.file_len, 1 << 21);
/// let (small, _) = checkpoint_shrinking(&mut s, &big, Slot::B, 1, Some(1 << 20)).unwrap();
/// assert_eq!(small.file_len, 1 << 20);
/// assert!(checkpoint_shrinking(&mut s, &small, Slot::A, 1, Some(1 << 22)).is_err());
/// ```
pub fn checkpoint_shrinking<S: Storage + ?Sized>(
    storage: &mut S,
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
    shrink_to: Option<u64>,
) -> Result<(Superblock, Slot), RecoveryError> {
    let len = storage.len().map_err(io_err("stat before checkpoint", 0))?;
    if let Some(l) = shrink_to {
        if l > len || l < current.chunk_area_offset() {
            return Err(RecoveryError::InvalidGeometry {
                what: format!(
                    "a checkpoint cannot shrink the file to {l} bytes (it holds {len}, and needs \
                     at least {})",
                    current.chunk_area_offset()
                ),
            });
        }
    }
    if sabotaged(SENTINEL_BEFORE_HEAP_BARRIER) {
        write_sentinel(storage)?;
    }
    if !sabotaged(SUPERBLOCK_BEFORE_HEAP_BARRIER) {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync before checkpoint", 0))?;
    }
    crate::failpoint!("checkpoint.after_heap_barrier");
    let step = checkpoint_step(storage, current, current_slot)?;
    let mut next = next_superblock(current, current_slot, next_txid, step)?;
    // The heap barrier made this length durable; the file shrinks only by compaction.
    next.file_len = match shrink_to {
        Some(l) => l,
        None => len.min(current.max_size).max(current.file_len),
    };
    // next_superblock refused (Err) every counter past the limit: decode would reject the slot.
    assert!(
        next.seq <= COUNTER_MAX && next.generation <= COUNTER_MAX && next.next_txid <= COUNTER_MAX,
        "checkpoint: superblock counters past COUNTER_MAX reached the write"
    );
    let slot = current_slot.other();
    // The whole slot: the superblock, and zeros over the log-start witness the writer left in
    // this slot's last sector for the generation now ending (docs/FORMAT.md). A witness must
    // not outlive its generation's superblock: if this one were damaged later, the open would
    // fall back to the older slot, whose generation the witness names, and take the new
    // generation's sentinel at the log's start for a lost frame.
    let mut bytes = vec![0u8; SUPERBLOCK_SLOT_LEN as usize];
    bytes[..SUPERBLOCK_ENCODED_LEN].copy_from_slice(&next.encode());
    storage
        .write_at(slot.offset(), &bytes)
        .map_err(io_err("write superblock", slot.offset()))?;
    storage
        .barrier(slot.offset(), SUPERBLOCK_SLOT_LEN)
        .map_err(io_err("barrier superblock", slot.offset()))?;
    if sabotaged(SUPERBLOCK_BEFORE_HEAP_BARRIER) {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync after checkpoint", 0))?;
    }
    // The sentinel ends the new generation's log at its start, so that the next open's scan
    // stops after 40 bytes instead of verifying the previous generation's first frame, which
    // can be as long as the log (a 64 MiB frame cost a 1 GiB heap's open 50 ms). It overwrites
    // that frame: safe only after the heap barrier above, since a scan of the old generation
    // (this superblock lost in a crash) then ends at the sentinel, and every frame it no
    // longer replays is already durable in the heap. No barrier of its own: if it is lost,
    // the scan stops at the old frame, as before. The next frame overwrites it whole (every
    // frame is at least 40 bytes).
    if !sabotaged(SENTINEL_BEFORE_HEAP_BARRIER) {
        write_sentinel(storage)?;
    }
    crate::failpoint!("checkpoint.after_superblock");
    Ok((next, slot))
}

/// How far a checkpoint of the superblock in `current_slot` moves `seq` and `generation`: 1,
/// or 2 when the slot it is about to overwrite is damaged (not all zero, not valid). The open
/// fell back from that slot, which may have held the newer superblock, one generation ahead:
/// its log may hold frames of that generation (and its slot the log-start witness of the
/// generation before). Taking that number again would make such frames replayable after a
/// crash (a transaction overwritten by a stale one: found by review, ninth session) and an
/// erased generation's witness valid again; one more step names a generation no writer of this
/// file has used.
///
/// Likewise past the generation of the frame at the log's start when it is newer than
/// `current`'s (at most two ahead: anything further is not a header this file's writers
/// wrote): a salvage that drops such frames (a superblock lost to a media fault named their
/// generation) must not reuse that number either.
pub(crate) fn checkpoint_step<S: Storage + ?Sized>(
    storage: &S,
    current: &Superblock,
    current_slot: Slot,
) -> Result<u64, RecoveryError> {
    let other = current_slot.other();
    let damaged = crate::superblock::damaged_slots(storage)?
        .iter()
        .any(|(slot, _)| *slot == other);
    let mut step = if damaged { 2 } else { 1 };
    let mut hb = [0u8; FRAME_HEADER_LEN];
    storage
        .read_at(current.log_offset(), &mut hb)
        .map_err(io_err("read log frame", current.log_offset()))?;
    if let Some(h) = header_at(&hb) {
        if h.generation > current.generation && h.generation - current.generation <= 2 {
            step = step.max(h.generation - current.generation + 1);
        }
    }
    Ok(step)
}

/// The superblock a checkpoint of `current` writes: `seq` and `generation` `step` more (see
/// [`checkpoint_step`]), the given `next_txid`. `Corrupt` (naming the counter) if a counter
/// would pass `COUNTER_MAX`.
pub(crate) fn next_superblock(
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
    step: u64,
) -> Result<Superblock, RecoveryError> {
    let bump = |v: u64, name: &str| {
        v.checked_add(step)
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
