//! # txheap
//!
//! A persistent heap: your program's data structures live in one memory-mapped file, and every
//! change to them is a crash-safe transaction. Allocation, free and every write happen inside
//! [`Heap::transaction`]; the transaction's writes are appended to a redo log inside the same
//! file as one checksummed frame and made durable *before* the heap is changed in place. Opening
//! the file replays committed frames and discards a torn tail, so after `kill -9` or a power cut
//! the heap equals a prefix of the committed transactions that holds every acknowledged one.
//!
//! ```
//! use txheap::{Heap, Options, PPtr};
//!
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
//! #[repr(C)]
//! struct Node { value: u64, next: PPtr<Node> }
//!
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
//! #[repr(C)]
//! struct Root { head: PPtr<Node> }
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("lib.heap");
//! let heap = Heap::open_or_create(&path, Options::new())?;
//! for value in 0..3 {
//!     heap.transaction(|tx| {
//!         let root = tx.root::<Root>()?;
//!         let head = tx.get(root)?.head;
//!         let node = tx.alloc(Node { value, next: head })?;
//!         tx.get_mut(root)?.head = node;
//!         Ok(())
//!     })?;
//! }
//! let values = heap.read(|r| {
//!     let mut out = Vec::new();
//!     let mut p = r.get(r.root::<Root>()?)?.head;
//!     while !p.is_null() {
//!         let n = r.get(p)?;
//!         out.push(n.value);
//!         p = n.next;
//!     }
//!     Ok(out)
//! })?;
//! assert_eq!(values, [2, 1, 0]);
//! # Ok::<(), txheap::Error>(())
//! ```
//!
//! # The one condition: nothing else writes the file while it is open
//!
//! [`Reader::get`] and [`Tx::get`] return references into the file's mapping. While any handle
//! on a heap file is open, nothing but that handle may write, truncate or replace the file: not
//! another program, and not a plain `std::fs` write in the same process. Every other writable
//! txheap handle is refused ([`Error::Locked`]; a read-only one opens beside the writer and
//! follows its log, writing nothing: docs/ARCHITECTURE.md section 17), but the lock is
//! advisory and cannot stop code that
//! ignores it; such a write is undefined behaviour (values that change under a `&T`, `SIGBUS`
//! after truncation), as with every memory-mapped store. `docs/ARCHITECTURE.md` (section 1.1)
//! explains why the open functions state this condition instead of being `unsafe fn`.
//!
//! Layers (each module says what it owns): `heap` (the facade), `open` (create, open, recovery
//! glue), `tx` (checked access and allocation; builds the commit plan), `writer` (the commit
//! protocol, flush, checkpoint), `reader` and `snapshot` (pinned snapshots, section 11 of the
//! architecture), `foreign` (readers in other processes, section 17), `shared` (state the
//! three share), `alloc` (format,
//! policy, rebuild walk), `stage` (a transaction's staged bytes), `storage` (the write/barrier
//! choke point and its test hooks), `sys` (the mapping and syscalls: most `unsafe`), `layout`
//! and `limits`. The frame format is in the `txheap-log` crate; superblock selection, replay and
//! checkpoint in `txheap-recovery`. See `docs/ARCHITECTURE.md` and `docs/FORMAT.md`.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate self as txheap;

mod alloc;
mod backup;
mod collections;
mod error;
mod foreign;
mod group;
mod heap;
pub mod inspect;
mod layout;
mod limits;
mod open;
mod options;
mod platform;
mod pptr;
mod reach;
mod reader;
mod shared;
mod snapshot;
mod stage;
mod storage;
mod stored;
mod sys;
mod tx;
mod writer;

pub use alloc::{ClassStats, OBJECT_SIZE_MAX};
pub use backup::BackupReport;
pub use bytemuck;
pub use collections::{
    BTreeStats, Element, PBTreeMap, PBytes, PHashMap, PString, PVec, Range, View,
};
pub use error::{Error, Result};
pub use heap::Heap;
pub use limits::ROOT_LEN_MAX;
#[cfg(feature = "test-hooks")]
pub use open::reachable_ranges;
pub use options::{Access, CompactReport, Durability, Options, Stats};
pub use pptr::{PPtr, PSlice};
pub use reach::{Dangling, Reachability, Walk};
pub use reader::Reader;
pub use storage::IoCounters;
#[cfg(feature = "test-hooks")]
pub use storage::{FaultPlan, Trace, TraceEvent};
pub use stored::{describe, Field, Stored};
pub use tx::Tx;
