//! # crash-tests: does txheap survive a power cut at any instant?
//!
//! Owns: a deterministic workload, the power-loss simulator, and the checker. It uses only
//! txheap's public API plus the `test-hooks` feature, which records every write, barrier and
//! growth that passes through the storage choke point.
//!
//! ## The simulator's model of the disk (docs/ARCHITECTURE.md section 1)
//! The file's bytes are tracked per 512-byte sector. A barrier makes the sectors it covers
//! durable (`msync` of a range: that range's pages; `fdatasync`: everything). Between barriers a
//! sector may reach the disk in *any* state it passed through since it was last made durable,
//! independently of every other sector: this covers reordered writes, writes that never
//! arrived, writes torn at sector boundaries, and "write i lost, later write j kept". A crash
//! image at instant `t` takes, for each sector written since its last barrier, one of those
//! states: the two extremes (nothing since the barriers; everything, as a SIGKILL leaves it)
//! and seeded random choices.
//!
//! Power cuts during recovery: for some crash images the simulator records recovery's own writes
//! and barriers, cuts power again at every one of them, and recovers once more; the result must
//! be exactly what the uninterrupted recovery gave.
//!
//! ## The check
//! The image is written to a file (in the caller's directory; the tests and the binary use
//! tmpfs, `/dev/shm`, where there is one), opened (recovery runs), and must hold a committed
//! prefix: the workload's counter `c` and list must be intact (every node and payload byte as
//! the deterministic workload wrote it, the allocator's used bytes equal to what is reachable),
//! with `acked <= c <= acked + 1` under `Durability::Full`, where `acked` is the last
//! transaction acknowledged before `t`; under `Durability::None`, `c <= acked + 1` (a power cut
//! may lose acknowledged transactions, never tear one).
//!
//! ## Where things are
//! Each concern has one module; their items are re-exported here (`crash_tests::Disk`, ...).
//! - `workload.rs`: the workload ([`Root`], [`Node`], [`step`], [`record`]) and its model
//!   check ([`verify`]);
//! - `disk.rs`: the per-sector disk model ([`Disk`], [`Disk::choices`]);
//! - `image.rs`: crash images on file ([`ImageFile`], [`scratch_dir`]);
//! - `check.rs`: recovering one image and checking it ([`check_image`], [`check_file`]);
//! - `simulate.rs`: the loop over instants and barrier windows ([`simulate`],
//!   [`simulate_windows`]), power cuts during recovery ([`check_recovery_crashes`]);
//! - [`ops`]: exhaustive small workloads; [`write_ahead`]: the write-ahead check; [`kill9`]:
//!   the kill -9 campaign, whose child is the binary's `crash-tests child`.
//!
//! ## Example
//! Record a one-transaction workload, cut power at every instant of it and check every image:
//!
//! ```
//! use txheap::Durability;
//! let dir = tempfile::tempdir().unwrap();
//! let rec = crash_tests::record(&dir.path().join("live.heap"), 1, Durability::None, 1);
//! let totals = crash_tests::simulate(&rec, dir.path(), 0, 1, 0);
//! assert!(totals.instants > 0 && totals.images >= totals.instants);
//! assert!(totals.violations.is_empty(), "{:?}", totals.violations);
//! ```

mod check;
mod disk;
mod image;
pub mod kill9;
pub mod media;
pub mod ops;
mod simulate;
mod workload;
pub mod write_ahead;

pub use check::{check_file, check_image, report, Violation};
pub use disk::{Choice, Disk, SECTOR};
pub use image::{scratch_dir, ImageFile};
pub use simulate::{check_recovery_crashes, simulate, simulate_windows, Totals, RECOVERY_SAMPLES};
pub use workload::{
    all_bytes, hash_value, map_keys, options, payload_byte, payload_size, record, record_threads,
    step, tree_value, verify, Node, Recording, Rng, Root, CHECKPOINT_EVERY, FLUSH_EVERY, KEEP,
    MAP_CLEAR_EVERY, MAP_WINDOW,
};
