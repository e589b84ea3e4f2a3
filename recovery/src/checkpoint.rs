//! The checkpoint: make the heap durable, then switch to the other superblock slot.
//!
//! Owns: `checkpoint` (heap barrier, then the other slot written and barriered, then the log's
//! sentinel) and `next_superblock`, the superblock it writes (counters bumped, or `Corrupt` when
//! one would pass `COUNTER_MAX`). May not: touch the heap's bytes, or the log beyond its first
//! 40 bytes; emptying the log is the new generation, not a write.

use crate::create::{write_sentinel, write_zeros};
use crate::error::{io_err, RecoveryError};
use crate::hooks::{
    sabotaged, SCRUB_IN_ONE_STEP, SENTINEL_BEFORE_HEAP_BARRIER, SUPERBLOCK_BEFORE_HEAP_BARRIER,
};
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
    let (step, scrub) = checkpoint_step(storage, current, current_slot)?;
    let mut next = next_superblock(current, current_slot, next_txid, step)?;
    if scrub {
        scrub_log(storage, current)?;
    }
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

/// How far a checkpoint of the superblock in `current_slot` moves `seq` and `generation`, and
/// whether it must first clear the log region (`scrub_log`).
///
/// 1, or 2 when the slot it is about to overwrite is damaged (not all zero, not valid): the open
/// fell back from that slot, which may have held the newer superblock, one generation ahead.
/// Likewise past the generation of the frame at the log's start when it is newer than
/// `current`'s and verifies (a salvage dropping frames that a lost or damaged superblock named).
/// Taking such a number again made stale frames of it replayable after a crash (a transaction
/// overwritten by a stale one) and an erased generation's witness valid again (found by review,
/// ninth session). The steps alone do not suffice: after several slot faults the numbers used
/// may be further ahead than either slot or the log's first frame still shows (a second review
/// built one with three faults). So in both cases the log is cleared as well, and no frame or
/// witness of any earlier life survives whatever number comes next. A verified frame so far
/// ahead that the step passes `COUNTER_MAX` makes the checkpoint `Corrupt` (a hostile file); an
/// unverified header (a flipped bit) counts for nothing.
pub(crate) fn checkpoint_step<S: Storage + ?Sized>(
    storage: &S,
    current: &Superblock,
    current_slot: Slot,
) -> Result<(u64, bool), RecoveryError> {
    let other = current_slot.other();
    let damaged = crate::superblock::damaged_slots(storage)?
        .iter()
        .any(|(slot, _)| *slot == other);
    let mut step = if damaged { 2 } else { 1 };
    let mut newer = false;
    let mut hb = [0u8; FRAME_HEADER_LEN];
    storage
        .read_at(current.log_offset(), &mut hb)
        .map_err(io_err("read log frame", current.log_offset()))?;
    // The header first: the usual frame there (this generation's, or the sentinel) is not
    // newer, and is never read whole here.
    if header_at(&hb).is_some_and(|h| h.generation > current.generation) {
        // (The same header, now with its whole frame verified.)
        if let Some(h) = crate::scan::verified_header_at(storage, current, 0)? {
            newer = true;
            step = step.max((h.generation - current.generation).saturating_add(1));
        }
    }
    Ok((step, damaged || newer))
}

/// Clear the log region and both slots' log-start witnesses, durably, before a checkpoint that
/// follows a superblock fault writes its superblock ([`checkpoint_step`]). The heap barrier came
/// first, so every frame this removes is durable in the heap; what must hold is that a crash at
/// any moment leaves, under the old superblock, a log that reads as a clean end, never as
/// damage. Hence three steps, each made durable before the next: (1) the witnesses (with one
/// left, step 2's sentinel would read as a lost first frame); (2) the sentinel at the log's
/// start (from then on the old generation's scan ends there, whatever lies after it); (3) zeros
/// over the rest of the log. Zeroing the whole region in one go was found by a review's
/// power-loss model to leave a first sector of zeros beside stale frames that vouch for it: a
/// false `LogDamaged` after an ordinary crash.
fn scrub_log<S: Storage + ?Sized>(
    storage: &mut S,
    current: &Superblock,
) -> Result<(), RecoveryError> {
    let one_step = sabotaged(SCRUB_IN_ONE_STEP);
    for slot in [Slot::A, Slot::B] {
        let w = crate::witness::Witness::offset(slot);
        write_zeros(
            storage,
            w,
            w + crate::witness::WITNESS_LEN as u64,
            "clear log-start witness",
        )?;
    }
    if !one_step {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync cleared witnesses", 0))?;
        write_sentinel(storage)?;
        storage
            .barrier_all()
            .map_err(io_err("fdatasync log sentinel", current.log_offset()))?;
    }
    let from = current.log_offset() + if one_step { 0 } else { FRAME_HEADER_LEN as u64 };
    write_zeros(
        storage,
        from,
        current.log_offset() + current.log_size,
        "clear log region",
    )?;
    storage
        .barrier_all()
        .map_err(io_err("fdatasync cleared log", current.log_offset()))
}

/// Whether a checkpoint of `current` (in force in `current_slot`) can be written with
/// `next_txid`: its counters, stepped by 1 (2 after a superblock fault), stay within `COUNTER_MAX`.
/// `Corrupt`, naming the counter, if not: what a writable open decides before its first write,
/// and what `inspect::check` reports.
///
/// ```
/// use txheap_recovery::{checkpoint_possible, format, select_superblock, MemStorage};
/// let mut s = MemStorage::new();
/// format(&mut s, 65536, 1 << 20).unwrap();
/// let (sb, slot) = select_superblock(&s).unwrap();
/// assert!(checkpoint_possible(&s, &sb, slot, sb.next_txid).is_ok());
/// ```
pub fn checkpoint_possible<S: Storage + ?Sized>(
    storage: &S,
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
) -> Result<(), RecoveryError> {
    let (step, _) = checkpoint_step(storage, current, current_slot)?;
    next_superblock(current, current_slot, next_txid, step).map(|_| ())
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
