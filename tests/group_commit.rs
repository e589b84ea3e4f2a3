//! Group commit under `Durability::Full` (docs/ARCHITECTURE.md section 12): threads that
//! commit while a barrier is in flight share the next one; every acknowledged transaction is
//! durable; a failed shared barrier fails every transaction waiting on it and acknowledges none.

use std::sync::Barrier;

use txheap::{Durability, Heap, Options, PPtr};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Counters {
    /// One slot per thread: the number of its acknowledged transactions.
    per_thread: [u64; 16],
    /// Every commit, in commit order.
    total: u64,
}

fn options() -> Options {
    Options::new().durability(Durability::Full)
}

/// A new heap with its `Counters` root made, in a temporary directory (kept alive by the
/// returned guard), and the heap file's path.
fn new_heap() -> (tempfile::TempDir, std::path::PathBuf, Heap) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.heap");
    let heap = Heap::create(&path, options()).unwrap();
    heap.transaction(|tx| tx.root::<Counters>().map(|_| ()))
        .unwrap();
    (dir, path, heap)
}

/// Thread `t`'s transaction: one more in its slot and in the total; returns its slot.
fn bump(tx: &mut txheap::Tx<'_>, t: usize) -> txheap::Result<u64> {
    let root = tx.root::<Counters>()?;
    let c = tx.get_mut(root)?;
    c.per_thread[t] += 1;
    c.total += 1;
    Ok(c.per_thread[t])
}

/// The counters of the heap at `path`, reopened (recovered).
fn reopened(path: &std::path::Path) -> Counters {
    let heap = Heap::open(path, options()).unwrap();
    heap.read(|r| {
        let root: PPtr<Counters> = r.root()?;
        r.get(root).copied()
    })
    .unwrap()
}

fn barriers(heap: &Heap) -> u64 {
    let io = heap.stats().unwrap().io;
    io.range_barriers + io.full_barriers
}

/// Run `threads` threads of `per_thread` commits each (thread `t` adds one to its slot and to
/// the total); returns what each thread saw acknowledged (its slot value after each commit).
fn hammer(heap: &Heap, threads: usize, per_thread: u64) -> Vec<Vec<u64>> {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let mut acked = Vec::new();
                    for _ in 0..per_thread {
                        let v = heap.transaction(|tx| bump(tx, t)).unwrap();
                        acked.push(v);
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `threads` threads of `each` commits on a new heap: checks that each thread saw its own
/// commits acknowledged in order and that the reopened file holds every one, and returns the
/// barriers used per commit.
fn barriers_per_commit(threads: usize, each: u64) -> f64 {
    let (_dir, path, heap) = new_heap();
    let before = barriers(&heap);
    let acked = hammer(&heap, threads, each);
    let used = barriers(&heap) - before;
    let commits = threads as u64 * each;
    let per_commit = used as f64 / commits as f64;
    println!(
        "{commits} commits from {threads} threads: {used} barriers, {per_commit:.3} per commit"
    );
    for (t, a) in acked.iter().enumerate() {
        assert_eq!(a, &(1..=each).collect::<Vec<_>>(), "thread {t}");
    }
    drop(heap);
    let c = reopened(&path);
    assert_eq!(c.total, commits);
    assert!(c.per_thread[..threads].iter().all(|&n| n == each));
    per_commit
}

/// Whether the sharing and timing checks apply: not under valgrind (scripts/valgrind.sh sets
/// TXHEAP_VALGRIND), which runs one thread at a time, so that threads rarely overlap; only the
/// correctness checks apply there.
fn timing_checks() -> bool {
    std::env::var_os("TXHEAP_VALGRIND").is_none()
}

#[test]
fn eight_threads_share_barriers() {
    let per_commit = barriers_per_commit(8, 150);
    // One barrier per commit without sharing; the goal (benches, W6) is 0.25 at 8 threads.
    if timing_checks() {
        assert!(per_commit <= 0.6, "{per_commit:.3} per commit: not shared");
    }
}

/// Two threads committing back to back share every barrier: the flusher waits (briefly) for
/// the thread that the previous barrier released to append its next frame. Started at once
/// instead, each barrier covered the one frame appended while the previous one ran: one
/// barrier per commit, two threads no faster than one.
#[test]
fn two_threads_share_barriers() {
    let per_commit = barriers_per_commit(2, 200);
    // 0.50 when every barrier covers both threads' frames; 1.00 when none is shared.
    if timing_checks() {
        assert!(
            per_commit <= 0.8,
            "{per_commit:.3} per commit: two threads did not share"
        );
    }
}

/// A thread left alone after a crowd goes back to one barrier of its own per commit: the
/// threads that the crowd's last barriers acknowledged, and that never come back, are
/// forgotten after one short wait.
#[test]
fn a_lone_thread_after_a_crowd_pays_one_barrier_per_commit() {
    let (_dir, _, heap) = new_heap();
    hammer(&heap, 4, 50);
    let (before, shared_before) = (barriers(&heap), heap.stats().unwrap().io.shared_barriers);
    hammer(&heap, 1, 50);
    assert_eq!(barriers(&heap) - before, 50);
    // At most its first commit shares (threads of the crowd are still counted as coming
    // back); if they were never forgotten, every commit would go through the flusher.
    let shared = heap.stats().unwrap().io.shared_barriers - shared_before;
    assert!(shared <= 1, "{shared} of 50 lone commits shared a barrier");
}

/// The flusher waits for threads in transactions only briefly: a commit that shares a barrier
/// while another thread runs a long transaction body is acknowledged long before that body
/// ends (a flusher that waited for every thread inside would hold it for the whole body). A's
/// body waits for B's acknowledgement (up to 30 s): an order, not a time. (The test asserted
/// B's acknowledgement under 400 ms, 100 ms of its body and a barrier: about 2x a barrier
/// under a loaded disk, a review found.)
#[test]
fn a_long_transaction_body_does_not_hold_back_a_shared_commit() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_dir, _, heap) = new_heap();
    let before = barriers(&heap);
    let (in_b, a_queued) = (Barrier::new(2), Barrier::new(2));
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<()>();
    let acked_rx = std::sync::Mutex::new(acked_rx);
    let seen_in_body = AtomicBool::new(false);
    let acked_after = std::thread::scope(|s| {
        // A: queued for the writer lock while B commits, then a body that ends once B is
        // acknowledged (or after 30 s).
        let a = s.spawn(|| {
            in_b.wait();
            a_queued.wait();
            heap.transaction(|tx| {
                let rx = acked_rx.lock().unwrap();
                let acked = rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok();
                seen_in_body.store(acked, Ordering::SeqCst);
                bump(tx, 0)
            })
            .unwrap();
        });
        // B: commits while A waits for the writer lock (so B shares a barrier).
        let t0 = std::time::Instant::now();
        heap.transaction(|tx| {
            in_b.wait();
            a_queued.wait();
            // Give A time to enter its transaction and queue for the writer lock (the
            // sharing's coverage, not the check's correctness).
            std::thread::sleep(std::time::Duration::from_millis(100));
            bump(tx, 1)
        })
        .unwrap();
        let acked = t0.elapsed();
        acked_tx.send(()).unwrap();
        a.join().unwrap();
        acked
    });
    println!("B acknowledged after {acked_after:?}");
    assert!(barriers(&heap) - before >= 1);
    assert!(
        seen_in_body.load(Ordering::SeqCst),
        "B's shared commit was acknowledged only after A's body had given up waiting for it \
         ({acked_after:?})"
    );
}

/// A lone thread keeps its own barrier per commit (no waiting for company).
#[test]
fn a_lone_thread_pays_one_barrier_per_commit() {
    let (_dir, _, heap) = new_heap();
    let before = barriers(&heap);
    hammer(&heap, 1, 50);
    assert_eq!(barriers(&heap) - before, 50);
}

/// A shared barrier that fails: each transaction waiting on it gets an error, the handle is
/// poisoned, and after reopening, every transaction that was acknowledged is there.
#[cfg(feature = "test-hooks")]
#[test]
fn a_failed_shared_barrier_fails_its_waiters() {
    use std::sync::{Arc, Mutex};
    use txheap::Error;
    for fail_after in [3u64, 10, 40] {
        let (_dir, path, heap) = new_heap();
        heap.inject_faults(txheap::FaultPlan {
            fail_barrier_after: Some(fail_after),
            ..Default::default()
        });
        let threads = 6;
        let acked = Arc::new(Mutex::new(vec![0u64; threads]));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let start = Barrier::new(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (heap, acked, errors, start) = (&heap, &acked, &errors, &start);
                s.spawn(move || {
                    start.wait();
                    loop {
                        let r = heap.transaction(|tx| bump(tx, t));
                        match r {
                            Ok(v) => acked.lock().unwrap()[t] = v,
                            Err(e) => {
                                errors.lock().unwrap().push(e);
                                break;
                            }
                        }
                    }
                });
            }
        });
        assert!(heap.is_poisoned());
        let errors = errors.lock().unwrap();
        assert_eq!(errors.len(), threads, "every thread ends with an error");
        assert!(
            errors
                .iter()
                .all(|e| matches!(e, Error::Io { .. } | Error::Poisoned { .. })),
            "{errors:?}"
        );
        // After the failure nothing is acknowledged: a read is refused too.
        assert!(matches!(heap.read(|_| Ok(())), Err(Error::Poisoned { .. })));
        drop(heap);
        let c = reopened(&path);
        let acked = acked.lock().unwrap();
        for t in 0..threads {
            assert!(
                c.per_thread[t] >= acked[t],
                "fail_after {fail_after}: thread {t} was acknowledged {} commits, the file holds {}",
                acked[t],
                c.per_thread[t]
            );
        }
        assert_eq!(c.total, c.per_thread.iter().sum::<u64>());
    }
}

/// A commit that shares a barrier is invisible to readers until the barrier has completed:
/// with barriers slowed to 300 ms, a reader that runs while the committing thread waits sees
/// the state before it; once `transaction` has returned, every reader sees it.
#[cfg(feature = "test-hooks")]
#[test]
fn readers_see_a_shared_commit_only_once_it_is_durable() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), options()).unwrap();
    let root = heap.transaction(|tx| tx.root::<Counters>()).unwrap();
    heap.inject_faults(txheap::FaultPlan {
        barrier_delay: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let total = |heap: &Heap| heap.read(|r| Ok(r.get(root)?.total)).unwrap();
    let (a_in_body, a_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let a_body_end = std::sync::Mutex::new(None::<std::time::Instant>);
    std::thread::scope(|s| {
        // A: commits total = 1 while B waits for the writer lock, so A shares a barrier.
        s.spawn(|| {
            heap.transaction(|tx| {
                a_in_body.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100)); // B queues meanwhile
                tx.get_mut(root)?.total = 1;
                *a_body_end.lock().unwrap() = Some(std::time::Instant::now());
                Ok(())
            })
            .unwrap();
            a_done.store(true, Ordering::SeqCst);
        });
        while !a_in_body.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // B: queued behind A; its own commit shares too.
        s.spawn(|| {
            heap.transaction(|tx| {
                tx.get_mut(root)?.per_thread[1] = 1;
                Ok(())
            })
            .unwrap();
        });
        std::thread::sleep(Duration::from_millis(150)); // A has appended and waits
        let mut seen_before = 0;
        while !a_done.load(Ordering::SeqCst) {
            if total(&heap) != 0 {
                // Visible, so a barrier covering A's frame has completed: it began after A's
                // body ended and took at least `barrier_delay`. (A's own thread may not have
                // woken yet to say it is done: under valgrind it wakes slowly, and comparing
                // with `a_done` alone failed there.)
                let ended = a_body_end.lock().unwrap().expect("A's body ended before");
                assert!(
                    ended.elapsed() >= Duration::from_millis(300),
                    "a reader saw a commit that was not durable yet ({:?} after A's body)",
                    ended.elapsed()
                );
                break;
            }
            seen_before += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen_before > 5, "the reader never ran while A waited");
    });
    assert_eq!(total(&heap), 1);
    let io = heap.stats().unwrap().io;
    assert!(io.range_barriers >= 1);
}
