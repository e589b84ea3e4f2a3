//! The write-ahead check over recorded runs: no violation under `Full` and `None` on the
//! unbroken protocol, and violations once heap writes are applied before the log barrier
//! (`sabotage::APPLY_BEFORE_LOG`). One test: the sabotage switch is process-wide.

use crash_tests::{record, write_ahead};
use txheap::Durability;
use txheap_recovery::sabotage;

fn run(mask: u32, durability: Durability, seeds: std::ops::Range<u64>) -> write_ahead::WriteAhead {
    sabotage::set(mask);
    let dir = crash_tests::scratch_dir();
    let mut total = write_ahead::WriteAhead::default();
    for seed in seeds {
        let rec = record(&dir.path().join("live.heap"), seed, durability, 30);
        total.add(write_ahead::check(&rec.base, &rec.events));
    }
    sabotage::set(0);
    total
}

#[test]
fn every_heap_write_is_covered_by_a_durable_frame_or_unreachable() {
    for durability in [Durability::Full, Durability::None] {
        let t = run(0, durability, 1..9);
        crash_tests::report(&format!(
            "write-ahead check, {durability:?}, seeds 1..9: {} heap writes, {} bytes equal to \
             the durable state, {} bytes in unreachable space, {} violations",
            t.writes,
            t.bytes_durable,
            t.bytes_unreachable,
            t.violations.len()
        ));
        if let Some(v) = t.violations.first() {
            panic!("{durability:?}: event {}: {}", v.at_event, v.what);
        }
        assert!(t.writes > 100 && t.bytes_durable > 0, "{t:?}");
    }
    let t = run(sabotage::APPLY_BEFORE_LOG, Durability::Full, 1..9);
    crash_tests::report(&format!(
        "write-ahead check, apply before the log barrier: {} violations; first: {}",
        t.violations.len(),
        t.violations.first().map_or("none", |v| &v.what)
    ));
    assert!(
        !t.violations.is_empty(),
        "the write-ahead check missed heap writes applied before the log barrier"
    );
}
