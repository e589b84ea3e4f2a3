//! kill -9 campaign: a child process commits transactions and reports each acknowledged one; the
//! parent SIGKILLs it at random instants (also while it opens and recovers), reopens the heap and
//! checks that every acknowledged transaction is there, at most the in-flight one more, nothing
//! torn, and the allocator's figures match what is reachable.
//!
//! The test binary re-executes itself as the child (`child_worker`, inert without its env vars).
//! `TXHEAP_KILL9_ITERS` sets the number of kills (default 1000); `TXHEAP_KILL9_SEED` the seed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crash_tests::{options, step, verify, Rng};
use txheap::{Durability, Error, Heap};

/// The workload's seed (payload sizes derive from it; the parent needs it to verify).
const WORKLOAD_SEED: u64 = 0x6b69_6c6c;

/// The named crash points (`TXHEAP_FAILPOINT=name:n`).
const FAILPOINTS: [&str; 9] = [
    "commit.after_log_write",
    "commit.after_log_barrier",
    "commit.mid_apply",
    "commit.after_in_place",
    "grow.after_fallocate",
    "checkpoint.after_heap_barrier",
    "checkpoint.after_superblock",
    "recovery.mid_replay",
    "recovery.after_replay",
];

/// The child: open (recovering), then commit forever, printing `ACK n` after each commit.
#[test]
fn child_worker() {
    let Ok(path) = std::env::var("TXHEAP_KILL9_CHILD") else {
        return;
    };
    let seed: u64 = std::env::var("TXHEAP_KILL9_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let durability = match std::env::var("TXHEAP_KILL9_CHILD_DURABILITY").as_deref() {
        Ok("none") => Durability::None,
        _ => Durability::Full,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "RECOVERING").unwrap();
    out.flush().unwrap();
    let heap = Heap::open_or_create(&path, options(durability)).unwrap();
    writeln!(out, "OPENED").unwrap();
    out.flush().unwrap();
    let mut rng = Rng::seeded(seed);
    loop {
        let abort = rng.below(10) == 0;
        match step(&heap, WORKLOAD_SEED, abort) {
            Ok(n) => {
                writeln!(out, "ACK {n}").unwrap();
                out.flush().unwrap();
            }
            Err(Error::NoRoot) if abort => {}
            Err(e) => panic!("child transaction failed: {e}"),
        }
    }
}

#[derive(Default, Debug)]
struct Landed {
    before_recovery: u64,
    in_open_or_recovery: u64,
    open_no_ack: u64,
    after_acks: u64,
    in_flight_committed: u64,
    acks: u64,
}

#[test]
fn kill9_campaign() {
    let iters: u64 = std::env::var("TXHEAP_KILL9_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("TXHEAP_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill9: seed {seed} (rerun with TXHEAP_KILL9_SEED={seed}), {iters} kills");
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded(seed);
    let mut landed = [Landed::default(), Landed::default()];
    let mut open_time = [Duration::from_millis(5), Duration::from_millis(5)];
    let mut fp_hits: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    let started = Instant::now();
    for i in 0..iters {
        let (k, name) = if i % 2 == 0 { (0, "full") } else { (1, "none") };
        let path = dir.path().join(format!("{name}.heap"));
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
            .env("TXHEAP_KILL9_CHILD", &path)
            .env("TXHEAP_KILL9_CHILD_SEED", rng.next_u64().to_string())
            .env("TXHEAP_KILL9_CHILD_DURABILITY", name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // A third of the runs die at a named failpoint instead of a timer.
        let failpoint = (rng.below(3) == 0).then(|| {
            let fp = FAILPOINTS[rng.below(FAILPOINTS.len() as u64) as usize];
            let count = 1 + if fp.starts_with("commit.after_log") || fp == "commit.mid_apply" {
                rng.below(40)
            } else {
                rng.below(4)
            };
            cmd.env("TXHEAP_FAILPOINT", format!("{fp}:{count}"));
            fp
        });
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let spawned = Instant::now();
        // 20%: aim at open/recovery (spawn-to-OPENED takes about `open_time`); else 5-60 ms in.
        let delay = if rng.below(5) == 0 {
            let t = open_time[k].as_micros() as u64;
            Duration::from_micros(t / 3 + rng.below(t.max(3)))
        } else {
            open_time[k] + Duration::from_micros(5_000 + rng.below(55_000))
        };
        let mut died_at_failpoint = false;
        if let Some(fp) = failpoint {
            let deadline = Instant::now() + Duration::from_millis(400);
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break Some(st);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_micros(500));
            };
            use std::os::unix::process::ExitStatusExt;
            died_at_failpoint = status.and_then(|s| s.signal()) == Some(libc::SIGABRT);
            let e = fp_hits.entry(fp).or_insert((0, 0));
            e.0 += 1;
            e.1 += u64::from(died_at_failpoint);
        } else {
            std::thread::sleep(delay);
        }
        if !died_at_failpoint {
            let _ = child.kill(); // SIGKILL
        }
        child.wait().unwrap();
        reader.join().unwrap();
        let lines: Vec<(Instant, String)> = rx.try_iter().collect();
        // libtest prints "test child_worker ... " without a newline before the child's first line.
        let recovering = lines.iter().any(|(_, l)| l.ends_with("RECOVERING"));
        let opened = lines.iter().find(|(_, l)| l == "OPENED").map(|(t, _)| *t);
        let acks: Vec<u64> = lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("ACK "))
            .map(|n| n.parse().unwrap())
            .collect();
        if let Some(t) = opened {
            open_time[k] = (open_time[k] * 3 + (t - spawned)) / 4;
        }
        let last_ack = acks.last().copied();
        if !path.exists() {
            // Killed before create finished: create links the file into place only when complete.
            assert!(
                last_ack.is_none() && landed[k].acks == 0,
                "seed {seed} iteration {i}: acknowledged but no file"
            );
            landed[k].before_recovery += 1;
            continue;
        }
        // Check a copy, and leave the crashed file as it is: the next child recovers it, so its
        // recovery replays real frames (and may itself be killed, and recovered again later).
        let copy = dir.path().join(format!("{name}-check.heap"));
        std::fs::copy(&path, &copy).unwrap();
        let heap = Heap::open(&copy, options(Durability::Full)).unwrap_or_else(|e| {
            panic!("seed {seed} iteration {i} ({name}): reopen after kill failed: {e}")
        });
        let counter = verify(&heap, WORKLOAD_SEED)
            .unwrap_or_else(|e| panic!("seed {seed} iteration {i} ({name}): {e}"));
        // Acknowledged transactions from earlier runs count too: the counter never goes back.
        let floor = last_ack.unwrap_or(0).max(landed[k].acks);
        assert!(
            counter >= floor && counter <= floor + 1,
            "seed {seed} iteration {i} ({name}): counter {counter}, last acknowledged {floor}"
        );
        let l = &mut landed[k];
        match (recovering, opened.is_some(), acks.is_empty()) {
            (false, _, _) => l.before_recovery += 1,
            (true, false, _) => l.in_open_or_recovery += 1,
            (true, true, true) => l.open_no_ack += 1,
            (true, true, false) => l.after_acks += 1,
        }
        if counter == floor + 1 {
            l.in_flight_committed += 1;
        }
        l.acks = counter;
        heap.close().unwrap();
        std::fs::remove_file(&copy).unwrap();
    }
    let total = |f: fn(&Landed) -> u64| f(&landed[0]) + f(&landed[1]);
    eprintln!(
        "kill9: {iters} kills in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!("  where the kill landed          full   none");
    type Row = (&'static str, fn(&Landed) -> u64);
    let rows: [Row; 6] = [
        ("before open (or no file yet)", |l| l.before_recovery),
        ("inside open / recovery", |l| l.in_open_or_recovery),
        ("opened, no commit yet", |l| l.open_no_ack),
        ("after acknowledged commits", |l| l.after_acks),
        ("in-flight tx found committed", |l| l.in_flight_committed),
        ("transactions committed", |l| l.acks),
    ];
    for (what, f) in rows {
        eprintln!("  {what:<29} {:>5}  {:>5}", f(&landed[0]), f(&landed[1]));
    }
    if !fp_hits.is_empty() {
        eprintln!("  failpoint                      armed   died there");
        for (fp, (armed, hit)) in &fp_hits {
            eprintln!("  {fp:<29} {armed:>5}  {hit:>5}");
        }
        let (armed, hit) = fp_hits.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
        assert!(
            iters < 300 || hit * 3 >= armed,
            "too few failpoint kills: {hit} of {armed}"
        );
    }
    assert!(
        iters < 50 || total(|l| l.after_acks) >= iters / 3,
        "too few kills landed among commits"
    );
    assert!(
        iters < 50 || total(|l| l.in_open_or_recovery) >= 1,
        "no kill landed inside open/recovery"
    );
}
