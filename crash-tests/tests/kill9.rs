//! kill -9 campaign in CI (`crash_tests::kill9`): 1,000 kills of a child that commits and
//! acknowledges, at random instants, at named failpoints, and aimed at protocol phases; every
//! reopen checked against the acknowledged prefix. Prints where the kills landed.
//!
//! The child is the crate's binary, `crash-tests child` (cargo builds it for this test).
//!
//! `TXHEAP_KILL9_ITERS` sets the number of kills (default 1000); `TXHEAP_KILL9_SEED` the seed.
//! The long campaign is `cargo run --release -p crash-tests -- kill9 --kills 100000`.

use std::process::Command;

use crash_tests::kill9::{self, Config, FAILPOINTS};
use txheap_recovery::phase;

/// The number in the environment variable `name`, else `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Some kill landed in each of `phases`: in `rep`, or else in up to three more campaigns of
/// 200 kills (seeds after `seed`), each checked as the first. Where a kill lands is timing: a
/// loaded machine reaches a phase after the aimed kill's deadline, and a review saw a campaign
/// of 400 kills with four threads, beside other jobs, land none in the shared barrier. The
/// check is that the windows get covered, not that the first 400 kills cover them.
fn assert_landed(rep: &kill9::Report, phases: &[u32], seed: u64, threads: u64) {
    let missing = |r: &kill9::Report, left: &[u32]| -> Vec<u32> {
        left.iter()
            .copied()
            .filter(|&p| r.in_phase(p) == 0)
            .collect()
    };
    let mut left = missing(rep, phases);
    for extra in 1..=3 {
        if left.is_empty() {
            return;
        }
        let names: Vec<_> = left.iter().map(|&p| phase::name(p)).collect();
        eprintln!("kill9: no kill landed in {names:?}: 200 more kills");
        let more = campaign(200, seed.wrapping_add(extra), threads);
        left = missing(&more, &left);
    }
    assert!(
        left.is_empty(),
        "no kill landed in phases {:?} (seed {seed}, and 600 more kills)",
        left.iter().map(|&p| phase::name(p)).collect::<Vec<_>>()
    );
}

fn seed() -> u64 {
    std::env::var("TXHEAP_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn campaign(kills: u64, seed: u64, threads: u64) -> kill9::Report {
    eprintln!(
        "kill9: seed {seed} (rerun with TXHEAP_KILL9_SEED={seed}), {kills} kills, {threads} threads"
    );
    let dir = tempfile::tempdir().unwrap();
    let child = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_crash-tests"));
        c.arg("child");
        c
    };
    let cfg = Config {
        kills,
        seed,
        progress_lines: 10,
        threads,
    };
    let rep = kill9::run(dir.path(), &cfg, &child).unwrap_or_else(|e| panic!("{e}"));
    crash_tests::report(&format!(
        "seed {seed}, {threads} committing threads\n{}",
        rep.table()
    ));
    assert_eq!(rep.kills, kills);
    rep
}

#[test]
fn kill9_campaign() {
    let kills = env_or("TXHEAP_KILL9_ITERS", 1000);
    let seed = seed();
    let rep = campaign(kills, seed, 1);
    if kills >= 1000 {
        // The dangerous windows were hit, measured by the phase the child died in.
        let dangerous = [
            phase::RECOVERY_REPLAY,
            phase::RECOVERY_CHECKPOINT,
            phase::LOG_WRITE,
            phase::LOG_BARRIER,
            phase::APPLY,
            phase::CHECKPOINT,
            phase::TX_BODY,
        ];
        assert_landed(&rep, &dangerous, seed, 1);
        // At least 3% inside recovery. The long campaigns land 6.1-6.2% there (1,221, 1,237
        // and 1,223 of 20,000, crash-tests/README.md); over 1,000 kills that rate spreads by
        // about 0.76% (one standard deviation), and a machine loaded by other jobs moved it to
        // 4.6% in a clean-clone CI run, which the earlier floor of 5% (1.5 deviations below
        // the mean) refused. 3% still asks for 30 kills inside recovery and is 4 deviations
        // below the mean.
        assert!(
            rep.in_recovery() * 100 >= rep.kills * 3,
            "fewer than 3% of kills landed inside recovery (seed {seed})"
        );
        let (armed, hit) = rep
            .failpoints
            .values()
            .fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
        assert!(
            hit * 3 >= armed,
            "too few failpoint kills: {hit} of {armed}"
        );
        assert!(rep.failpoints.len() == FAILPOINTS.len() || kills < 1000);
        assert!(rep.acked > kills, "too few transactions acknowledged");
    }
}

/// Four committing threads: under `Full` they share barriers (group commit), and kills land
/// inside the shared barrier (aimed at it, and at random). Every acknowledged transaction,
/// from whichever thread, is there after the kill.
#[test]
fn kill9_campaign_four_threads() {
    let kills = env_or("TXHEAP_KILL9_THREADS_ITERS", 400);
    let seed = seed();
    let rep = campaign(kills, seed, 4);
    if kills >= 400 {
        let phases = [phase::GROUP_BARRIER, phase::APPLY, phase::RECOVERY_REPLAY];
        assert_landed(&rep, &phases, seed, 4);
        assert!(rep.acked > kills, "too few transactions acknowledged");
    }
}
