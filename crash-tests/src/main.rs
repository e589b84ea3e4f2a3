//! The long power-loss campaign:
//! `cargo run --release -p crash-tests -- [--seeds A..B] [--samples N] [--txns T] [--durability full|none|both]`
//! Prints one line per seed and the totals; exits non-zero on the first violation, printing the
//! seed, the event and the image index that reproduce it.

use std::time::Instant;

use crash_tests::{record, simulate};
use txheap::Durability;

fn main() {
    let mut seeds = 1..101u64;
    let mut samples = 20usize;
    let mut txns = 30u64;
    let mut durabilities = vec![Durability::Full, Durability::None];
    let mut exhaustive3 = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seeds" => {
                let (a, b) = v.split_once("..").expect("--seeds A..B");
                seeds = a.parse().unwrap()..b.parse().unwrap();
            }
            "--samples" => samples = v.parse().unwrap(),
            "--exhaustive3" => {
                exhaustive3 = true;
                i -= 1;
            }
            "--txns" => txns = v.parse().unwrap(),
            "--durability" => {
                durabilities = match v.as_str() {
                    "full" => vec![Durability::Full],
                    "none" => vec![Durability::None],
                    _ => vec![Durability::Full, Durability::None],
                }
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    let dir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    })
    .unwrap();
    let start = Instant::now();
    if exhaustive3 {
        // Every workload of 1, 2 and 3 operations over every kind, both durabilities.
        use crash_tests::ops::{check_ops, OPS};
        let mut workloads: Vec<Vec<crash_tests::ops::Op>> = Vec::new();
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
        for d in &durabilities {
            for (i, w) in workloads.iter().enumerate() {
                let (n, bad) = check_ops(dir.path(), w, *d, 8, 3, i as u64);
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
        return;
    }
    let (mut images, mut instants, mut landed) = (0u64, 0u64, 0u64);
    for d in &durabilities {
        for seed in seeds.clone() {
            let rec = record(&dir.path().join("live.heap"), seed, *d, txns);
            let t = simulate(&rec, dir.path(), samples, seed.wrapping_mul(7919), 10);
            images += t.images + t.recovery_images;
            instants += t.instants;
            landed += t.in_flight_landed;
            println!(
                "{d:?} seed {seed}: {} events, {} instants, {} images, in-flight landed {}, acked lost {}, violations {}  [total {images} images, {:.0} s]",
                rec.events.len(), t.instants, t.images, t.in_flight_landed, t.lost_acked, t.violations.len(), start.elapsed().as_secs_f64()
            );
            if let Some(v) = t.violations.first() {
                println!("VIOLATION {d:?} seed {seed} txns {txns} samples {samples}: crash at event {} image {}: {}", v.at_event, v.image, v.what);
                std::process::exit(1);
            }
        }
    }
    println!("done: {images} crash images over {instants} crash instants, in-flight commit landed in {landed}, 0 violations, {:.0} s", start.elapsed().as_secs_f64());
}
