//! Proof that the checks of readers beside a writer (tests/foreign.rs) can fail: with the
//! sabotage switch `FOREIGN_READERS_IGNORED` the writer puts frames into the file, and empties
//! the log, while a reader in another description is pinned or entering, and the stress
//! readers see states no commit made. (A test binary of its own: the switch is process-wide.)
#![cfg(feature = "test-hooks")]

mod stress;

use txheap::Durability;
use txheap_recovery::sabotage;

#[test]
fn ignoring_readers_beside_the_writer_is_caught() {
    stress::quiet_planned_panics();
    for durability in [Durability::Full, Durability::None] {
        let d = tempfile::tempdir().unwrap();
        let (heap, beside) = stress::heap_beside(d.path(), durability);
        sabotage::set(sabotage::FOREIGN_READERS_IGNORED);
        let broken = stress::until_caught(4, || {
            stress::run_beside(&heap, &beside, 2, 3, stress::secs(3.0), 20_000)
        });
        sabotage::set(0);
        stress::assert_caught("ignore readers beside the writer", durability, &broken);
    }
}
