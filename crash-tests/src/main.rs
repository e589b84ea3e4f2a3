//! The long crash campaigns.
//!
//! Power-loss simulator:
//! `cargo run --release -p crash-tests -- [--seeds A..B] [--samples N] [--txns T] [--durability full|none|both] [--jobs J] [--window-images W]`
//! (`--window-images W`: at least W images per barrier window where the window allows that many;
//! smaller windows are enumerated completely)
//! or `-- --exhaustive3`. Prints one line per seed and the totals; exits non-zero on the first
//! violation, printing the seed, the event and the image index that reproduce it. `--media`
//! also checks every image again with a bit flipped in a log frame that a later frame vouches
//! for (`crash_tests::media`): it must be refused as damaged, never opened as a shorter prefix.
//!
//! kill -9 campaign: `cargo run --release -p crash-tests -- kill9 [--kills N] [--seed S]`
//! (the binary re-executes itself as the child, `crash-tests child`: a hidden subcommand that
//! only the campaign starts, with its environment). Prints a progress bar, then the histogram
//! of where the kills landed; exits non-zero on the first violation, with the seed.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crash_tests::ops::{check_ops, Op, OPS};
use crash_tests::write_ahead::WriteAhead;
use crash_tests::{kill9, record_threads, simulate_windows, Totals};
use txheap::Durability;

fn usage(msg: &str) -> ! {
    eprintln!("{msg}\nusage: crash-tests [--seeds A..B] [--samples N] [--txns T] [--durability full|none|both] [--jobs J] [--window-images W] [--stop-after-images N] [--threads T] [--media] [--exhaustive3]\n       crash-tests kill9 [--kills N] [--seed S] [--threads T]");
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{flag} needs a number, not {v:?}")))
}

fn kill9_main(args: &[String]) {
    let mut kills = 100_000u64;
    let mut threads = 1u64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).map(String::as_str).unwrap_or("");
        match args[i].as_str() {
            "--kills" => kills = num("--kills", v),
            "--seed" => seed = num("--seed", v),
            "--threads" => threads = num("--threads", v),
            other => usage(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    eprintln!("kill9: seed {seed}, {kills} kills, {threads} committing threads (rerun: crash-tests kill9 --kills {kills} --seed {seed} --threads {threads})");
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = std::env::current_exe().expect("current_exe");
    let cfg = kill9::Config {
        kills,
        seed,
        progress_lines: 100,
        threads,
    };
    let child = || {
        let mut c = std::process::Command::new(&exe);
        c.arg("child");
        c
    };
    match kill9::run(dir.path(), &cfg, &child) {
        Ok(rep) => {
            print!("{}", rep.table());
            println!("done: {} kills, 0 violations", rep.kills);
        }
        Err(e) => {
            println!("VIOLATION {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("kill9") => return kill9_main(&args[1..]),
        Some("child") => {
            kill9::child_main(); // never returns when started by the kill9 campaign
            usage("crash-tests child is the kill9 campaign's child: only the campaign starts it");
        }
        _ => {}
    }
    let sim = Sim::parse(&args);
    let dir = crash_tests::scratch_dir();
    let start = Instant::now();
    if sim.exhaustive3 {
        exhaustive3(dir.path(), &sim.durabilities, start);
    } else {
        simulate_seeds(&sim, dir.path(), start);
    }
}

/// The simulator's settings, from the command line.
struct Sim {
    seeds: Range<u64>,
    samples: usize,
    txns: u64,
    durabilities: Vec<Durability>,
    exhaustive3: bool,
    jobs: usize,
    window_images: usize,
    stop_after: u64,
    threads: u64,
}

impl Sim {
    fn parse(args: &[String]) -> Sim {
        let mut sim = Sim {
            seeds: 1..101,
            samples: 20,
            txns: 30,
            durabilities: vec![Durability::Full, Durability::None],
            exhaustive3: false,
            jobs: 2,
            window_images: 0,
            stop_after: u64::MAX,
            threads: 1,
        };
        let mut i = 0;
        while i < args.len() {
            let v = args.get(i + 1).cloned().unwrap_or_default();
            match args[i].as_str() {
                "--seeds" => {
                    let (a, b) = v
                        .split_once("..")
                        .unwrap_or_else(|| usage("--seeds takes A..B"));
                    sim.seeds = num("--seeds", a)..num("--seeds", b);
                }
                "--samples" => sim.samples = num("--samples", &v),
                "--exhaustive3" => {
                    sim.exhaustive3 = true;
                    i -= 1;
                }
                "--media" => {
                    crash_tests::media::enable(true);
                    i -= 1;
                }
                "--txns" => sim.txns = num("--txns", &v),
                "--jobs" => sim.jobs = num("--jobs", &v),
                "--threads" => sim.threads = num("--threads", &v),
                "--window-images" => sim.window_images = num("--window-images", &v),
                "--stop-after-images" => sim.stop_after = num("--stop-after-images", &v),
                "--durability" => {
                    sim.durabilities = match v.as_str() {
                        "full" => vec![Durability::Full],
                        "none" => vec![Durability::None],
                        _ => vec![Durability::Full, Durability::None],
                    }
                }
                other => usage(&format!("unknown argument {other}")),
            }
            i += 2;
        }
        sim
    }
}

/// `--exhaustive3`: every workload of 1, 2 and 3 operations over every kind, each durability.
fn exhaustive3(dir: &Path, durabilities: &[Durability], start: Instant) {
    let mut workloads: Vec<Vec<Op>> = Vec::new();
    for &a in &OPS {
        workloads.push(vec![a]);
        for &b in &OPS {
            workloads.push(vec![a, b]);
            for &c in &OPS {
                workloads.push(vec![a, b, c]);
            }
        }
    }
    let mut images = 0;
    for d in durabilities {
        for (i, w) in workloads.iter().enumerate() {
            let (n, bad) = check_ops(dir, w, *d, 8, 3, i as u64);
            images += n;
            if let Some(v) = bad.first() {
                println!("VIOLATION {v}");
                std::process::exit(1);
            }
        }
        println!(
            "{d:?}: {} workloads, {images} images so far, 0 violations, {:.0} s",
            workloads.len(),
            start.elapsed().as_secs_f64()
        );
    }
    println!("done: exhaustive 1-3 operation workloads, {images} crash images, 0 violations");
}

/// The seeds' simulations. Seeds are shared out to `jobs` threads, each with its own files;
/// lines print as seeds end. Seed-major order (seed 1 Full, seed 1 None, seed 2 Full, ...): a
/// run stopped early has covered both durabilities.
fn simulate_seeds(sim: &Sim, dir: &Path, start: Instant) {
    let all: Vec<(Durability, u64)> = sim
        .seeds
        .clone()
        .flat_map(|s| sim.durabilities.iter().map(move |d| (*d, s)))
        .collect();
    let next = AtomicUsize::new(0);
    let totals = Mutex::new(Totals::default());
    let wa_totals = Mutex::new(WriteAhead::default());
    std::thread::scope(|scope| {
        for job in 0..sim.jobs {
            let (all, next, totals, wa_totals, dir) =
                (&all, &next, &totals, &wa_totals, dir.join(job.to_string()));
            scope.spawn(move || {
                std::fs::create_dir_all(&dir).expect("job directory");
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(d, seed)) = all.get(k) else { break };
                    {
                        let t = totals.lock().unwrap_or_else(|e| e.into_inner());
                        if t.images + t.recovery_images >= sim.stop_after {
                            break; // enough images: start no new seed, finish the running ones
                        }
                    }
                    let (t, wa, line) = simulate_seed(sim, &dir, d, seed);
                    let mut all_t = totals.lock().unwrap_or_else(|e| e.into_inner());
                    all_t.add(t);
                    wa_totals.lock().unwrap_or_else(|e| e.into_inner()).add(wa);
                    println!(
                        "{line}  [total {} images, {:.0} s]",
                        all_t.images + all_t.recovery_images,
                        start.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let t = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    let wa = wa_totals.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "write-ahead check: {} heap-region writes; {} bytes equal to the durable state, {} bytes in space it does not reach; 0 violations",
        wa.writes, wa.bytes_durable, wa.bytes_unreachable
    );
    let (windows, exhausted, wmin, wmed) = t.window_summary();
    println!(
        "done: {} crash images ({} cut inside recovery) over {} crash instants and {windows} barrier windows ({exhausted} enumerated completely; sampled windows got at least {wmin} images; median {wmed}), in-flight commit landed in {}, acked lost (None only) {}, {} images with a durable frame damaged (refused as damaged), 0 violations, {:.0} s",
        t.images + t.recovery_images, t.recovery_images, t.instants, t.in_flight_landed, t.lost_acked, t.media_images, start.elapsed().as_secs_f64()
    );
}

/// Record seed `seed` under `d` in `dir`, run the write-ahead check and the simulation on it,
/// and exit on the first violation. Returns the totals, the write-ahead counts and the seed's
/// line.
fn simulate_seed(sim: &Sim, dir: &Path, d: Durability, seed: u64) -> (Totals, WriteAhead, String) {
    let (txns, samples) = (sim.txns, sim.samples);
    let rec = record_threads(&dir.join("live.heap"), seed, d, txns, sim.threads);
    let wa = crash_tests::write_ahead::check(&rec.base, &rec.events);
    if let Some(v) = wa.violations.first() {
        println!(
            "VIOLATION {d:?} seed {seed} txns {txns}: write-ahead check at event {}: {}",
            v.at_event, v.what
        );
        std::process::exit(1);
    }
    let t = simulate_windows(
        &rec,
        dir,
        samples,
        sim.window_images,
        seed.wrapping_mul(7919),
        10,
    );
    let (windows, exhausted, wmin, wmed) = t.window_summary();
    let line = format!(
        "{d:?} seed {seed}{}: {} events, {} instants, {} images (+{} cut inside recovery), {windows} barrier windows ({exhausted} enumerated completely; sampled windows got at least {wmin} images; median {wmed}), in-flight landed {}, acked lost {}, media {}, violations {}; write-ahead check: {} heap writes, 0 violations",
        if sim.threads > 1 { format!(" ({} threads)", sim.threads) } else { String::new() },
        rec.events.len(), t.instants, t.images, t.recovery_images, t.in_flight_landed, t.lost_acked, t.media_images, t.violations.len(), wa.writes
    );
    if let Some(v) = t.violations.first() {
        println!("VIOLATION {d:?} seed {seed} txns {txns} samples {samples}: crash at event {} image {}: {}", v.at_event, v.image, v.what);
        std::process::exit(1);
    }
    (t, wa, line)
}
