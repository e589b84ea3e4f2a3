//! The engines under test behind one small interface, [`Engine`]: insert `n` items as one
//! transaction, then check the count. Each engine module owns its set-up and its settings
//! (durable and fast), exposed as [`Opener`] functions that the case table in `plan.rs` names.
//!
//! Adding an engine: write a module with an `Opener` per setting and add rows to `plan::CASES`.
//! Adding a workload (W4 for persistent collections): add a method here with a default that
//! says "unsupported", a driver in `child.rs`, and rows in the table.

use std::path::Path;

use crate::BoxResult;

pub mod limits;
pub mod lmdb;
pub mod pmdk;
pub mod redb_engine;
pub mod sqlite;
pub mod txheap_engine;
pub mod txheap_maps;

/// An opened store, ready for the timed region.
pub trait Engine {
    /// Insert the items `first..first + n` as ONE transaction committed with the engine's
    /// configured durability. For the list engines (txheap, PMDK) an item is a 64-byte node
    /// linked from the root; for key-value stores an 8-byte big-endian key (the item's index
    /// through the engine's [`Keys`]) with a 64-byte value ([`value_for`]).
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()>;

    /// Check that exactly `count` items are stored (run after the timed region, so a store that
    /// silently dropped work is caught).
    fn check(&mut self, count: u64) -> BoxResult<()>;
}

/// Opens an engine in a fresh directory (set-up, not timed) and lends it to `body`, which runs
/// the timed region; tear-down after `body` returns is not timed either.
pub type Opener = fn(&Path, &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()>;

/// How an engine turns the item index `i` into its key: [`in_order`] for W1-W3 (keys
/// `first..first + n`, each insert appending at the end of an ordered store) or `w4::key` for
/// W4-put (random keys, every store given the same ones as txheap's maps).
pub type Keys = fn(u64) -> u64;

/// The key of item `i` is `i`.
pub fn in_order(i: u64) -> u64 {
    i
}

/// The 64-byte value stored for `key` by the key-value engines: the key repeated.
pub fn value_for(key: u64) -> [u8; 64] {
    let mut v = [0u8; 64];
    for chunk in v.chunks_exact_mut(8) {
        chunk.copy_from_slice(&key.to_le_bytes());
    }
    v
}

/// Fail unless `found == expected`.
pub fn expect_count(engine: &str, found: u64, expected: u64) -> BoxResult<()> {
    if found == expected {
        Ok(())
    } else {
        Err(format!("{engine}: expected {expected} items after the run, found {found}").into())
    }
}
