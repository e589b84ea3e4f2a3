//! Sixteen busy readers beside a writer (docs/ARCHITECTURE.md section 17, step 5), in a test
//! binary of its own: its seventeen busy threads would starve the timed stress tests of
//! `tests/foreign.rs` of CPU if they ran side by side on a small machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use txheap::{Durability, Heap, Options};

fn small() -> Options {
    Options::new()
        .durability(Durability::Full)
        .log_size(128 << 10)
        .initial_size(2 << 20)
        .max_size(64 << 20)
}

/// Sixteen live handles reading back to back beside a writer whose commits write in place
/// (each shuts the readers out): no commit and no read waits long. A review measured 7.7 s
/// and 22.6 s for such a commit, when entries took each other's instant holds of the waiting
/// byte for the writer's and the writer's exclusive take of it waited for a gap.
#[test]
fn sixteen_live_readers_do_not_starve_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b.heap");
    let w = Heap::create(&p, small()).unwrap();
    w.transaction(|tx| {
        let r = tx.root::<u64>()?;
        tx.set(r, 1)
    })
    .unwrap();
    let hs: Vec<Heap> = (0..16).map(|_| Heap::open_read_only(&p).unwrap()).collect();
    let stop = AtomicBool::new(false);
    let (commit_max, read_max) = std::thread::scope(|s| {
        let readers: Vec<_> = hs
            .iter()
            .map(|h| {
                let stop = &stop;
                s.spawn(move || {
                    let mut max = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        h.read(|rd| rd.get(rd.root::<u64>()?).copied()).unwrap();
                        max = max.max(t.elapsed());
                    }
                    max
                })
            })
            .collect();
        let mut prev = None;
        let mut commit_max = Duration::ZERO;
        // (On a panic the readers must stop, or the scope never ends.)
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..30 {
                let t = Instant::now();
                let sl = w
                    .transaction(|tx| {
                        if let Some(p) = prev {
                            tx.free_slice(p)?;
                        }
                        tx.alloc_slice(&vec![7u8; 300 << 10])
                    })
                    .unwrap();
                commit_max = commit_max.max(t.elapsed());
                prev = Some(sl);
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
        let read_max = readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .max()
            .unwrap();
        (commit_max, read_max)
    });
    // (5 s: the starvation took 7.7 s and more; 2 s, the bound before, was a few loaded-disk
    // barriers away from a false failure, a review judged.)
    assert!(
        commit_max < Duration::from_secs(5) && read_max < Duration::from_secs(5),
        "an in-place commit took {commit_max:?}, a live read {read_max:?}"
    );
}
