//! Recovery's limits, in one place, each named with its qualifier last (`_MIN`, `_MAX`).
//!
//! Owns: the bounds on superblock counters and on the log's length (rules of `docs/FORMAT.md`),
//! and the sizes that bound recovery's memory and I/O (replay batches and runs, the log read
//! window, the zero writes of `format`). May not: hold layout constants that are not limits
//! (`PAGE_SIZE`, `LOG_OFFSET`, ...: see `superblock`), or be bypassed by a bare literal
//! elsewhere in the crate.

use crate::superblock::PAGE_SIZE;

/// The largest `seq`, `generation` or `next_txid` a superblock may hold (2^62: a billion
/// checkpoints or transactions a second for over a century).
pub const COUNTER_MAX: u64 = 1 << 62;
/// The smallest log region.
pub const LOG_SIZE_MIN: u64 = 65536;
/// The largest log region a superblock may describe (so that offsets derived from it, such as
/// `heap_offset` and `max_size`, cannot overflow).
pub(crate) const LOG_SIZE_MAX: u64 = u64::MAX / 4;

/// Bytes of replayed pages held in memory at most (64 MiB), whatever the log holds.
pub(crate) const REPLAY_BATCH_LEN_MAX: usize = 64 << 20;
/// Pages of a replay batch at most ([`REPLAY_BATCH_LEN_MAX`] in pages).
pub(crate) const REPLAY_BATCH_PAGES_MAX: usize = REPLAY_BATCH_LEN_MAX / PAGE_SIZE as usize;
/// Pages one read or write of a replay batch covers at most (1 MiB).
pub(crate) const REPLAY_RUN_PAGES_MAX: usize = 256;

/// The log read window's first read (64 KiB): an empty log costs one small read.
pub(crate) const LOG_WINDOW_LEN_MIN: u64 = 64 << 10;

/// The first read of a scan that follows a log another process appends to
/// (`scan_log_from`): it usually finds nothing new, or a few frames, so it reads 4 KiB, not
/// 64 (a 64 KiB read was most of a live read's time), and grows as the general window does.
pub(crate) const FOLLOW_WINDOW_LEN_MIN: u64 = 4 << 10;
/// The log read window's largest read (8 MiB); each refill doubles up to it.
pub(crate) const LOG_WINDOW_LEN_MAX: u64 = 8 << 20;

/// Bytes of zeroes written per call at most when formatting the log (1 MiB).
pub(crate) const ZERO_WRITE_LEN_MAX: usize = 1 << 20;
