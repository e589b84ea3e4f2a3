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
        let t = simulate(&rec, dir.path(), samples, seed * 7919, RECOVERY_EVERY);
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

/// Every `RECOVERY_EVERY`-th crash instant, the image is also recovered with power cut at every
/// instant of its recovery. (Every 10th until recovery learnt to write large page runs, each
/// checked with `RECOVERY_SAMPLES` images: cuts inside recovery became nine in ten of the
/// images, and the suite more than a fifth of CI's time. The long campaigns in the README check
/// every 10th, and `tests/broken.rs` shows a recovery that replays before its barrier caught.)
const RECOVERY_EVERY: u64 = 20;

/// Two halves of the `Full` seeds, so that `cargo test`'s two threads share the work with
/// `power_loss_none`.
#[test]
fn power_loss_full_first_half() {
    full(1..5);
}

#[test]
fn power_loss_full_second_half() {
    full(5..8);
}

fn full(seeds: std::ops::Range<u64>) {
    let n = seeds.end - seeds.start;
    let (images, instants) = run(Durability::Full, seeds.clone(), 25, 6);
    crash_tests::report(&format!(
        "power loss, Full, seeds {seeds:?}: {images} images over {instants} crash instants, 0 violations"
    ));
    // About 24,000 images per seed (3,700 at the workload's crash instants, the rest cut inside
    // recovery): a drop means lost coverage.
    assert!(images >= n * 18_000, "only {images} images");
}

#[test]
fn power_loss_none() {
    let (images, instants) = run(Durability::None, 1..7, 25, 6);
    crash_tests::report(&format!(
        "power loss, None: {images} images over {instants} crash instants, 0 violations"
    ));
    // About 5,400 images per seed (1,000 at the workload's crash instants; the workload
    // flushes every 5 transactions under None): a drop means lost coverage.
    assert!(images >= 6 * 4_000, "only {images} images");
}
