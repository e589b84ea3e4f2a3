//! Collections on a damaged heap: one test binary for four groups of cases (each binary costs
//! CI a build and a link), each a module of its own.

mod check_catches;
mod damage_is_corrupt;
mod damaged_collections;
mod own_errors;
mod random_damage;

use txheap::{Heap, PPtr};

/// The word at `at` as the committed state holds it.
fn word(heap: &Heap, at: u64) -> u64 {
    heap.read(|r| r.get(PPtr::<u64>::from_offset(at)).copied())
        .unwrap()
}

/// Damage one word (through a transaction: the word lies inside a live allocation, so this is
/// what a flipped bit on disk reads as after the next open).
fn poke(heap: &Heap, at: u64, value: u64) {
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(at), value))
        .unwrap();
}
