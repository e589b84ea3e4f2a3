//! The state that transactions, the writer and readers share: the file, its mappings, the fixed
//! geometry, the registry of readers' snapshots, and poisoning.
//!
//! Owns: `Shared`. Two mappings of one file: the writer's (`map`, private: committed frames that
//! the file may not hold yet are copied into it, so a transaction always reads the newest state)
//! and the readers' (`rmap`, never written: it shows the file, and readers lay their snapshot's
//! overlay over it). A read-only handle has one mapping for both. May not: sequence I/O (the
//! writer does) or know transactions.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::alloc::HeapHeader;
use crate::error::{Error, Result};
use crate::foreign::{Excluded, Foreign, Live};
use crate::group::Group;
use crate::layout::Geometry;
use crate::options::Durability;
use crate::snapshot::Registry;
use crate::storage::LogSyncer;
use crate::sys::Mapping;

/// What every part of an open heap reads; changed only under the locks described above.
#[derive(Debug)]
pub(crate) struct Shared {
    pub path: PathBuf,
    /// Keeps the descriptor (and its `flock`) alive for as long as the mapping.
    pub file: Arc<File>,
    /// The writer's view (private; for a read-only handle, the only mapping).
    pub map: Mapping,
    /// The readers' view of the file, for a writable handle.
    pub rmap: Option<Mapping>,
    /// The fixed offsets. Its `max_size` is the one the heap opened with: the current one is
    /// [`Shared::max_size`] (it rises with `Heap::set_max_size`).
    pub geo: Geometry,
    max_size: std::sync::atomic::AtomicU64,
    pub read_only: bool,
    pub durability: Durability,
    /// The current snapshot and the readers' pins.
    pub registry: Arc<Registry>,
    /// Group commit's shared barrier (never shares without a log syncer: read-only, `None`).
    pub group: Group,
    /// The first failure (shared with the group-commit flusher, which records its own).
    poison: Arc<Poison>,
    /// Transactions the open dropped on purpose (`Options::salvage`): first and last txid.
    pub salvaged: Option<(u64, u64)>,
    /// Superblock slots the open found damaged (it used the other one).
    pub superblock_damage: Option<String>,
    /// [`crate::Options::in_place_min`].
    pub in_place_min: u64,
    /// [`crate::Options::keep_log_blocks`].
    pub keep_log_blocks: bool,
    /// A writable handle's side of readers in other processes (docs/ARCHITECTURE.md section
    /// 17), where the platform has the locks it needs.
    pub foreign: Option<Foreign>,
    /// A read-only handle opened beside a writer: it follows the writer's log.
    pub live: Option<Live>,
    /// Under `Durability::None`: committed frames the file does not hold yet (the writer sets
    /// it after each commit, flush and checkpoint; a hint that lets `Heap::read` skip the
    /// writer lock when there are few: docs/ARCHITECTURE.md section 11, step 8).
    pub unpublished: std::sync::atomic::AtomicU64,
    /// Nanoseconds after `epoch` before which `Heap::read` does not try the writer lock to
    /// flush (set when a flush left many frames held back by older readers).
    reader_flush_at: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Shared {
    /// `syncer`: barriers of the file's log from any thread (group commit's; used only by a
    /// writable handle under `Full`).
    pub(crate) fn new(
        path: PathBuf,
        (file, syncer): (Arc<File>, Option<LogSyncer>),
        (map, rmap): (Mapping, Option<Mapping>),
        geo: Geometry,
        read_only: bool,
        durability: Durability,
        (txid, header): (u64, HeapHeader),
    ) -> Shared {
        let registry = Arc::new(Registry::new(txid, header));
        let poison = Arc::new(Poison::default());
        Shared {
            path,
            file,
            map,
            rmap,
            geo,
            max_size: std::sync::atomic::AtomicU64::new(geo.max_size),
            read_only,
            durability,
            registry: registry.clone(),
            // Group commit only for a writable handle under `Full` (a lone commit's barrier
            // is shared with nobody under `None`, where commits do not wait for the disk).
            group: Group::new(
                syncer.filter(|_| !read_only && durability == Durability::Full),
                txid,
                registry,
                poison.clone(),
            ),
            poison,
            salvaged: None,
            superblock_damage: None,
            in_place_min: u64::MAX,
            keep_log_blocks: false,
            foreign: None,
            live: None,
            unpublished: std::sync::atomic::AtomicU64::new(0),
            reader_flush_at: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// Whether `Heap::read` should try the writer lock to flush for readers (under
    /// `Durability::None`, with at least `READER_FLUSH_FRAMES` frames the file does not hold,
    /// and not deferred by [`Shared::defer_reader_flush`]).
    pub(crate) fn reader_flush_due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.unpublished.load(Relaxed) >= crate::limits::READER_FLUSH_FRAMES
            && self.epoch.elapsed().as_nanos() as u64 >= self.reader_flush_at.load(Relaxed)
    }

    /// Readers do not try to flush again for `pause`.
    pub(crate) fn defer_reader_flush(&self, pause: std::time::Duration) {
        let at = (self.epoch.elapsed() + pause).as_nanos() as u64;
        self.reader_flush_at
            .store(at, std::sync::atomic::Ordering::Relaxed);
    }

    /// The lowest txid a reader is pinned at, here or in another process (`None`: no reader).
    pub(crate) fn oldest_pin(&self) -> Option<u64> {
        min_pin(self.registry.oldest_pin(), self.foreign_oldest())
    }

    /// The lowest txid a reader in another process holds (see [`Foreign::oldest`]).
    pub(crate) fn foreign_oldest(&self) -> Option<u64> {
        self.foreign.as_ref().and_then(Foreign::oldest)
    }

    /// Shut readers in other processes out while the guard lives (see [`Foreign::exclude`]);
    /// with `below`, only those pinned below that txid.
    pub(crate) fn exclude_foreign(&self, below: Option<u64>) -> Result<Excluded<'_>> {
        match &self.foreign {
            Some(f) => f.exclude(below),
            None => Ok(Excluded::none()),
        }
    }

    /// The largest the file may grow now.
    pub(crate) fn max_size(&self) -> u64 {
        self.max_size.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Raise the largest the file may grow (the writer lock held, the mappings grown first).
    pub(crate) fn set_max_size(&self, max_size: u64) {
        self.max_size
            .store(max_size, std::sync::atomic::Ordering::Release);
    }

    /// The mapping readers read the file through.
    #[inline]
    pub(crate) fn reader_map(&self) -> &Mapping {
        self.rmap.as_ref().unwrap_or(&self.map)
    }

    /// Record the first failure; the handle refuses every later commit and read.
    pub(crate) fn poison(&self, cause: &str) {
        self.poison.set(cause);
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poison.is_set()
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        self.poison.check()
    }

    /// Turn an I/O failure in the commit or checkpoint path into a poisoned heap and an error.
    pub(crate) fn fail(&self, op: &'static str, offset: u64, e: io::Error) -> Error {
        self.poison(&format!("{op} at offset {offset}: {e}"));
        Error::io(op, offset, e)
    }
}

/// The lower of two pins (`None`: no reader).
pub(crate) fn min_pin(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A handle's first failure. Every read and transaction asks whether there is one: the
/// answer is one load of a flag (a mutex there made four reader threads take turns at it);
/// the cause is read only once the flag is set.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    set: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl Poison {
    /// Record `cause` unless a failure is already recorded.
    pub(crate) fn set(&self, cause: &str) {
        let mut p = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(cause.to_string());
        }
        self.set.store(true, Ordering::Release);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// `Err(Poisoned)` naming the first failure, if any.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.is_set() {
            return Ok(());
        }
        match &*self.cause.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }
}
