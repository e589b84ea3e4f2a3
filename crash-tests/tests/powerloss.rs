//! Power-loss simulation in CI: short workloads under both durabilities, a crash at every
//! recorded write and barrier, the two extreme images and seeded random ones at each.

use crash_tests::{record, simulate};
use txheap::Durability;

fn run(
    durability: Durability,
    seeds: std::ops::Range<u64>,
    txns: u64,
    samples: usize,
) -> (u64, u64) {
    let dir = crash_tests::scratch_dir();
    let (mut images, mut instants) = (0, 0);
    for seed in seeds {
        let rec = record(&dir.path().join("live.heap"), seed, durability, txns);
        let t = simulate(&rec, dir.path(), samples, seed * 7919, 10);
        eprintln!(
            "{durability:?} seed {seed}: {} events, {} crash instants, {} images (+{} cut during recovery), in-flight landed {}, acked lost {}, violations {}",
            rec.events.len(), t.instants, t.images, t.recovery_images, t.in_flight_landed, t.lost_acked, t.violations.len()
        );
        if let Some(v) = t.violations.first() {
            panic!(
                "{durability:?} seed {seed}: crash at event {} (image {}): {}  [{} violations]",
                v.at_event,
                v.image,
                v.what,
                t.violations.len()
            );
        }
        if durability == Durability::Full {
            assert_eq!(t.lost_acked, 0);
        }
        assert!(t.recovery_images > 0, "no power cut landed inside recovery");
        images += t.images + t.recovery_images;
        instants += t.instants;
    }
    (images, instants)
}

#[test]
fn power_loss_full() {
    let (images, instants) = run(Durability::Full, 1..8, 25, 6);
    crash_tests::report(&format!(
        "power loss, Full: {images} images over {instants} crash instants, 0 violations"
    ));
    // About 35,000 distinct images (with those cut inside recovery): a drop means lost coverage.
    // (Six seeds gave 39,100 with format 2; format 3 and the staging of appends as one range
    // write fewer, larger pieces, so there are fewer instants: a seventh seed keeps the count.)
    assert!(images >= 30_000, "only {images} images");
}

#[test]
fn power_loss_none() {
    let (images, instants) = run(Durability::None, 1..7, 25, 6);
    crash_tests::report(&format!(
        "power loss, None: {images} images over {instants} crash instants, 0 violations"
    ));
    // About 14,900 distinct images (with those cut inside recovery; the workload flushes
    // every 5 transactions under None).
    assert!(images >= 12_000, "only {images} images");
}
