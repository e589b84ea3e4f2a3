//! # txheap-recovery: superblocks, log replay and checkpoint
//!
//! Owns: the superblock format and the selection rule, scanning the log through the storage
//! choke point, replaying committed frames, the checkpoint that empties the log, and formatting a
//! new file. Knows the log and the superblock; knows nothing of the allocator or of user types.
//! Every byte it touches goes through [`Storage`], so a recording implementation can observe
//! every write and barrier (the crash simulator's hook). `docs/FORMAT.md` is the byte-level
//! specification; `docs/ARCHITECTURE.md` states the protocols as numbered steps.
//!
//! Modules (each says what it owns and what it may not touch): `storage` (the choke point),
//! `superblock` (format, geometry, selection), `limits` (every bound, in one place), `scan` (the
//! committed frames), `replay` (the writable open), `checkpoint`, `create` (a new file), `error`
//! and `hooks` (test-only sabotage, failpoints and phases). Everything public is re-exported
//! here, so every path is `txheap_recovery::X`.
//!
//! ```
//! use txheap_recovery::{format, recover, MemStorage};
//! let mut s = MemStorage::new();
//! let sb = format(&mut s, 65536, 1 << 20).unwrap();
//! let r = recover(&mut s).unwrap();
//! assert_eq!(r.superblock, sb);
//! assert_eq!(r.scan.frames, 0);
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod checkpoint;
mod create;
mod error;
mod hooks;
mod limits;
mod replay;
mod scan;
mod storage;
mod superblock;
mod witness;

pub use txheap_log;

pub use checkpoint::{checkpoint, checkpoint_possible, checkpoint_shrinking};
pub use create::{format, format_over_zeros};
pub use error::{proof_name, RecoveryError};
#[cfg(feature = "test-hooks")]
pub use hooks::{phase, sabotage};
pub use limits::{COUNTER_MAX, LOG_SIZE_MIN};
pub use replay::{
    append_vouchers, recover, recover_checked, recover_checked_keeping_log, recover_checked_with,
    OnDamage, Recovered, Replayed, Vouchers,
};
pub use scan::{
    find_damage, frame_verifies_at, scan_log, scan_log_from, scan_log_visiting, ApplyFn, LogDamage,
    LogScan,
};
pub use storage::{MemStorage, Storage};
pub use superblock::{
    damaged_slots, select_superblock, Slot, SlotError, Superblock, CHUNK_SIZE, FORMAT_VERSION,
    HEAP_META_LEN, LOG_OFFSET, PAGE_SIZE, SUPERBLOCK_ENCODED_LEN, SUPERBLOCK_MAGIC,
    SUPERBLOCK_SLOT_LEN,
};
pub use witness::{witness_for, Witness, WITNESS_LEN, WITNESS_MAGIC, WITNESS_SLOT_OFFSET};
