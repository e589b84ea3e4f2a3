//! Proof that the reader checks can fail: with the sabotage switch that lets the writer put
//! committed frames into the file while an older reader is pinned, the readers of the stress
//! workload see their views change. (A test binary of its own: the switch is process-wide.)
#![cfg(feature = "test-hooks")]

mod stress;

use std::time::Duration;

use txheap::{Durability, Heap};
use txheap_recovery::sabotage;

#[test]
fn applying_under_an_older_reader_is_caught() {
    stress::quiet_planned_panics();
    for durability in [Durability::Full, Durability::None] {
        let d = tempfile::tempdir().unwrap();
        let heap = Heap::create(d.path().join("s.heap"), stress::options(durability)).unwrap();
        stress::setup(&heap);
        // Unbroken first, on the same heap: no violation.
        let clean = stress::run(&heap, 2, 3, Duration::from_millis(500), 20_000);
        assert!(
            clean.violations.is_empty(),
            "{durability:?}: {:?}",
            clean.violations
        );
        sabotage::set(sabotage::APPLY_UNDER_OLDER_READER);
        let broken = stress::until_caught(4, || {
            stress::run(&heap, 2, 3, Duration::from_secs(3), 20_000)
        });
        sabotage::set(0);
        stress::assert_caught("apply under an older reader", durability, &broken);
    }
}
