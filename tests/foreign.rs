//! Readers beside a writer that holds the file (docs/ARCHITECTURE.md section 17): a read-only
//! open of a heap that another handle has open for writing follows the writer's log. In this
//! process (a second open of the file is a separate description: its locks conflict with the
//! writer's as another process's would) and in child processes.

mod stress;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use txheap::{Durability, Error, Heap, Options, PPtr};

/// Commit `v` as the heap's root (a `u64`).
fn set_root(w: &Heap, v: u64) {
    w.transaction(|tx| {
        let r = tx.root::<u64>()?;
        tx.set(r, v)
    })
    .unwrap()
}

fn small(durability: Durability) -> Options {
    Options::new()
        .durability(durability)
        .log_size(128 << 10)
        .initial_size(2 << 20)
        .max_size(64 << 20)
}

#[test]
fn a_reader_beside_a_writer_sees_every_commit() {
    for durability in [Durability::Full, Durability::None] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.heap");
        let w = Heap::create(&p, small(durability)).unwrap();
        set_root(&w, 1);
        let r = Heap::open_read_only(&p).unwrap();
        let root = |h: &Heap| h.read(|rd| rd.get(rd.root::<u64>()?).copied()).unwrap();
        assert_eq!(root(&r), 1, "{durability:?}");
        assert!(matches!(r.transaction(|_| Ok(())), Err(Error::ReadOnly)));
        // Through checkpoints (a 128 KiB log), growth of the file, and large objects written
        // in place: every read sees the newest commit.
        let mut big = Vec::new();
        for i in 2..2000u64 {
            w.transaction(|tx| {
                let rp = tx.root::<u64>()?;
                tx.set(rp, i)?;
                if i % 50 == 0 {
                    let s = tx.alloc_slice(&vec![i as u8; 300 << 10])?;
                    big.push((s, i as u8));
                }
                Ok(())
            })
            .unwrap();
            if i % 300 == 0 {
                w.checkpoint().unwrap();
            }
            assert_eq!(root(&r), i, "{durability:?}");
        }
        let cps = w.stats().unwrap().checkpoints;
        assert!(cps >= 6, "{durability:?}: {cps} checkpoints");
        r.read(|rd| {
            for &(s, v) in &big {
                let b = rd.slice(s)?;
                assert!(b.len() == 300 << 10 && b.iter().all(|&x| x == v));
            }
            Ok(())
        })
        .unwrap();
        // Its figures are the writer's, read live.
        assert_eq!(
            r.stats().unwrap().heap_bytes,
            w.stats().unwrap().heap_bytes,
            "{durability:?}"
        );
        // The writer closes; the reader goes on with the closed heap, and a new writer opens
        // beside it.
        w.close().unwrap();
        assert_eq!(root(&r), 1999);
        let w2 = Heap::open(&p, small(durability)).unwrap();
        set_root(&w2, 1000);
        assert_eq!(root(&r), 1000, "{durability:?}");
    }
}

#[test]
fn a_long_reader_beside_a_writer_keeps_its_state() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("l.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    let node = w
        .transaction(|tx| {
            let r = tx.root::<PPtr<[u64; 16]>>()?;
            let n = tx.alloc([7u64; 16])?;
            tx.set(r, n)?;
            Ok(n)
        })
        .unwrap();
    let r = Heap::open_read_only(&p).unwrap();
    let r = &r;
    const COMMITS: usize = 100;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let reader = s.spawn(move || {
            r.read(|rd| {
                let held = rd.get(node)?;
                tx.send(()).unwrap();
                // While this read runs, the writer commits over the node: what it holds must
                // not change. It holds on until the writer has made all its commits, or gives
                // up after 30 s: commits that waited for this reader never get there.
                let t = Instant::now();
                loop {
                    let now = unsafe { std::ptr::read_volatile(held) };
                    assert_eq!(now, [7u64; 16], "a held node changed under a reader");
                    if done_rx.try_recv().is_ok() {
                        return Ok(true);
                    }
                    if t.elapsed() > Duration::from_secs(30) {
                        return Ok(false);
                    }
                    std::thread::yield_now();
                }
            })
            .unwrap()
        });
        rx.recv().unwrap();
        for commits in 0..COMMITS {
            w.transaction(|tx| {
                let n = tx.get_mut(node)?;
                n[commits % 16] += 1;
                Ok(())
            })
            .unwrap();
        }
        done_tx.send(()).unwrap();
        assert!(
            reader.join().unwrap(),
            "the commits waited for the reader to end"
        );
    });
    // A new read sees them all.
    let sum: u64 = r.read(|rd| Ok(rd.get(node)?.iter().sum())).unwrap();
    assert_eq!(sum, 16 * 7 + COMMITS as u64);
}

#[test]
fn readers_beside_writers_see_only_committed_states() {
    stress::quiet_planned_panics();
    for durability in [Durability::Full, Durability::None] {
        let d = tempfile::tempdir().unwrap();
        let (heap, beside) = stress::heap_beside(d.path(), durability);
        let report = stress::run_beside(&heap, &beside, 2, 3, stress::secs(2.0), 20_000);
        eprintln!("{durability:?}: {report:?}");
        assert!(
            report.violations.is_empty(),
            "{durability:?}: {:?}",
            report.violations
        );
        assert!(
            report.commits > 100 && report.reads > 100 && report.aborts + report.panics > 0,
            "{durability:?}: {report:?}"
        );
        assert!(heap.stats().unwrap().checkpoints > 0, "{durability:?}");
    }
}

#[test]
fn a_reader_beside_a_writer_backs_it_up() {
    use txheap::PSlice;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b.heap");
    let w = Heap::create(&p, small(Durability::None)).unwrap();
    let acc: PSlice<u64> = w
        .transaction(|tx| {
            let r = tx.root::<PSlice<u64>>()?;
            let s = tx.alloc_slice(&[100u64; 64])?;
            tx.set(r, s)?;
            Ok(s)
        })
        .unwrap();
    let r = Heap::open_read_only(&p).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                w.transaction(|tx| {
                    let a = tx.slice_mut(acc)?;
                    let (x, y) = ((i * 7) % 64, (i * 13) % 64);
                    let m = a[x as usize] / 2;
                    a[x as usize] -= m;
                    a[y as usize] += m;
                    tx.alloc([i; 8]).map(|_| ())
                })
                .unwrap();
            }
        });
        let mut txids = Vec::new();
        for k in 0..5 {
            let dst = d.path().join(format!("copy{k}.heap"));
            let rep = r.backup_to(&dst).unwrap();
            txids.push(rep.txid);
            let c = Heap::open(&dst, Options::new()).unwrap();
            let sum: u64 = c
                .read(|rd| {
                    let s = rd.get(rd.root::<PSlice<u64>>()?)?;
                    Ok(rd.slice(*s)?.iter().sum())
                })
                .unwrap();
            assert_eq!(sum, 6400, "copy {k} (transaction {})", rep.txid);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        txids.dedup();
        assert!(txids.len() > 1, "every copy had the same state: {txids:?}");
    });
}

/// Run as a child process by the tests below (it does nothing in a normal run): open the heap
/// named by `TXHEAP_FOREIGN_CHILD` read-only beside its writer and print the root after each
/// line read from stdin; with `TXHEAP_FOREIGN_HOLD`, print once and then hold that read
/// forever.
#[test]
fn child_reader_process() {
    let Ok(path) = std::env::var("TXHEAP_FOREIGN_CHILD") else {
        return;
    };
    let r = Heap::open_read_only(&path).unwrap();
    let hold = std::env::var("TXHEAP_FOREIGN_HOLD").is_ok();
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap() > 0 {
        r.read(|rd| {
            println!("root {}", rd.get(rd.root::<u64>()?)?);
            if hold {
                use std::io::Write;
                std::io::stdout().flush().unwrap();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Ok(())
        })
        .unwrap();
        line.clear();
    }
}

fn child(path: &std::path::Path, hold: bool) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_reader_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TXHEAP_FOREIGN_CHILD", path)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if hold {
        c.env("TXHEAP_FOREIGN_HOLD", "1");
    }
    c.spawn().unwrap()
}

/// The child's next root.
fn ask(c: &mut std::process::Child) -> u64 {
    use std::io::{BufRead, Write};
    writeln!(c.stdin.as_mut().unwrap()).unwrap();
    let mut out = std::io::BufReader::new(c.stdout.as_mut().unwrap());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended");
        // (The harness prints "test child_reader_process ... " before the test's first line.)
        if let Some((_, v)) = line.trim().split_once("root ") {
            return v.parse().unwrap();
        }
    }
}

#[test]
fn a_reader_in_another_process_follows_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    let set = |v: u64| set_root(&w, v);
    set(5);
    let mut c = child(&p, false);
    assert_eq!(ask(&mut c), 5);
    for v in 6..200 {
        set(v);
        if v % 37 == 0 {
            assert_eq!(ask(&mut c), v);
        }
    }
    assert_eq!(ask(&mut c), 199);
    drop(c.stdin.take());
    assert!(c.wait().unwrap().success());
}

#[test]
fn a_killed_reader_process_does_not_hold_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("k.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    let set = |v: u64| set_root(&w, v);
    set(1);
    // The child holds a read of state 1 until it is killed: the writer commits meanwhile (the
    // frames stay out of the file) until its log is full, and its checkpoint then waits for
    // the reader; the kill ends the wait.
    let mut c = child(&p, true);
    assert_eq!(ask(&mut c), 1);
    let before = w.stats().unwrap().checkpoints;
    std::thread::scope(|s| {
        let killer = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            // Timed before the kill: the kernel drops the child's locks as it exits, before
            // `wait` returns, so a time taken after `wait` could follow the checkpoint (review).
            let killed = Instant::now();
            c.kill().unwrap();
            c.wait().unwrap();
            killed
        });
        let mut v = 2;
        while w.stats().unwrap().checkpoints == before {
            set(v);
            v += 1;
        }
        let checkpointed = Instant::now();
        let killed = killer.join().unwrap();
        // The log fills long before the kill (a 128 KiB log, 300 ms of durable commits): the
        // checkpoint could only end after it, once the kernel dropped the child's pin.
        assert!(
            checkpointed >= killed,
            "the checkpoint did not wait for the reader's pin"
        );
    });
    let r = Heap::open_read_only(&p).unwrap();
    let last = w.read(|rd| rd.get(rd.root::<u64>()?).copied()).unwrap();
    assert_eq!(
        r.read(|rd| rd.get(rd.root::<u64>()?).copied()).unwrap(),
        last
    );
}

/// Run as a child process by the test below: open the heap named by
/// `TXHEAP_FOREIGN_CYCLER` for writing, commit and close, 50 times (a count, not a time: a
/// review found 2 s of `Full` cycles too few on a slow disk; at most a minute all the same).
#[test]
fn child_cycling_writer() {
    let Ok(path) = std::env::var("TXHEAP_FOREIGN_CYCLER") else {
        return;
    };
    let t = Instant::now();
    let mut n = 0u64;
    while n < 50 && t.elapsed() < Duration::from_secs(60) {
        let o = small(Durability::Full).lock_wait(Duration::from_secs(2));
        let w = match Heap::open(&path, o) {
            Ok(w) => w,
            Err(Error::Locked { .. }) => continue, // (a plain read-only handle held it)
            Err(e) => panic!("{e}"),
        };
        n += 1;
        set_root(&w, n);
        w.close().unwrap();
    }
    println!("cycles {n}");
}

/// A read-only open while a writer in another process opens, commits and closes in a loop:
/// every open succeeds, plain or beside the writer, and none is `Locked` (a review found 1 to
/// 71 of 9,000 refused, each in the instant between the writer's `flock` and its saying that
/// it answers readers beside it).
#[test]
fn read_only_opens_beside_a_writer_that_reopens_are_never_locked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("y.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    set_root(&w, 1);
    w.close().unwrap();
    let c = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_cycling_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TXHEAP_FOREIGN_CYCLER", &p)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut c = c;
    let (mut ok, mut locked, mut last) = (0, 0, 0);
    // Opens until the writer's cycles end.
    while c.try_wait().unwrap().is_none() {
        match Heap::open_read_only(&p) {
            Ok(h) => {
                let v = h.read(|r| r.get(r.root::<u64>()?).copied()).unwrap();
                assert!(v >= last, "went back: {last} -> {v}");
                last = v;
                ok += 1;
            }
            Err(Error::Locked { .. }) => locked += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let out = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let cycles: u64 = out
        .lines()
        .find_map(|l| {
            l.trim()
                .rsplit_once("cycles ")
                .map(|(_, n)| n.parse().unwrap())
        })
        .expect("the writer's cycle count");
    assert!(cycles >= 20, "{cycles} cycles: too few to test the race");
    assert!(ok >= 20, "{ok} read-only opens: too few to test the race");
    assert_eq!(
        locked,
        0,
        "{locked} of {} opens Locked, beside {cycles} writer opens",
        ok + locked
    );
}

/// A reader in another process, opened beside an earlier writer, holds a read; that writer
/// closes; a writable open (which shuts such readers out while it recovers) answers within
/// `Options::lock_wait`: `Locked` with no wait, or once the read ends within the wait. (A
/// review found `Heap::open` with no wait still waiting after 5 s, until the reader died.)
#[test]
fn a_writable_open_waits_for_a_reader_elsewhere_no_longer_than_lock_wait() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("w.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    set_root(&w, 7);
    let mut c = child(&p, true);
    assert_eq!(ask(&mut c), 7);
    w.close().unwrap();
    // Each open in a thread of its own, answering on a channel: where one waits for ever,
    // the kill below ends it, and the test reports it instead of hanging.
    let open_within = |wait: Option<Duration>| {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = p.clone();
        std::thread::spawn(move || {
            let o = small(Durability::Full);
            let o = match wait {
                Some(w) => o.lock_wait(w),
                None => o,
            };
            let t = Instant::now();
            let r = Heap::open(&p, o).map(|h| h.close());
            let _ = tx.send((t.elapsed(), r)); // (the test may have given up on it)
        });
        rx
    };
    let none = open_within(None).recv_timeout(Duration::from_secs(5));
    let bounded =
        open_within(Some(Duration::from_millis(1500))).recv_timeout(Duration::from_secs(5));
    // A wait longer than the read: the open succeeds once the reader is gone.
    let long = open_within(Some(Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(200));
    c.kill().unwrap();
    c.wait().unwrap();
    // (At least a second: reads are short, and an open that refused every one it met would
    // fail at random beside a reading process.)
    let second = Duration::from_secs(1);
    let (took, r) = none.expect("Heap::open with no lock_wait still waiting after 5 s");
    assert!(matches!(r, Err(Error::Locked { .. })), "{r:?}");
    assert!(took >= second && took < 3 * second, "{took:?}");
    let (took, r) = bounded.expect("Heap::open with a 1.5 s lock_wait still waiting after 5 s");
    assert!(matches!(r, Err(Error::Locked { .. })), "{r:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < 3 * second,
        "{took:?}"
    );
    let (_, r) = long.recv().unwrap();
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
}

#[test]
fn a_writer_that_does_not_answer_readers_beside_it_is_refused() {
    use std::os::fd::AsRawFd;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("old.heap");
    Heap::create(&p, small(Durability::Full))
        .unwrap()
        .close()
        .unwrap();
    // A writer of an older txheap holds the flock and no reader lock: a read-only open cannot
    // follow it safely, and is refused as before.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    assert!(matches!(
        Heap::open_read_only(&p),
        Err(Error::Locked { .. })
    ));
    drop(f);
    // A writer of this one answers them.
    let w = Heap::open(&p, small(Durability::Full)).unwrap();
    let r = Heap::open_read_only(&p).unwrap();
    set_root(&w, 3);
    assert_eq!(r.read(|rd| rd.get(rd.root::<u64>()?).copied()).unwrap(), 3);
}

/// Found by review: a live handle whose mapping could not follow the heap past the `max_size`
/// it opened with (the writer raised it) had already taken the new state into its registry,
/// and its next read returned bytes from past its mapping. Now the read fails, naming the
/// cause, every time, and never shows bytes no commit wrote.
#[test]
fn a_reader_that_cannot_map_the_grown_heap_says_so() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.heap");
    let opts = Options::new()
        .durability(Durability::Full)
        .log_size(1 << 20)
        .initial_size(2 << 20)
        .max_size(64 << 20)
        .reserve(512 << 20);
    let w = Heap::create(&p, opts).unwrap();
    w.transaction(|tx| {
        let r = tx.root::<txheap::PSlice<u8>>()?;
        let s = tx.alloc_slice(&[1u8; 64])?;
        tx.set(r, s)
    })
    .unwrap();
    let r = Heap::open_read_only(&p).unwrap();
    w.set_max_size(256 << 20).unwrap();
    let big = 80usize << 20;
    w.transaction(|tx| {
        let r = tx.root::<txheap::PSlice<u8>>()?;
        let s = tx.alloc_slice(&vec![0xABu8; big])?;
        tx.set(r, s)
    })
    .unwrap();
    let look = |h: &Heap| {
        h.read(|rd| {
            let s = *rd.get(rd.root::<txheap::PSlice<u8>>()?)?;
            let b = rd.slice(s)?;
            Ok((b.len(), b.iter().filter(|&&x| x != 0xAB).count()))
        })
    };
    for _ in 0..3 {
        match look(&r) {
            // (Where the address space after the mapping was free, it grew in place.)
            Ok(v) => assert_eq!(v, (big, 0), "bytes no commit wrote"),
            Err(e) => assert!(e.to_string().contains("max_size"), "{e}"),
        }
    }
    // A handle opened now maps the new size.
    assert_eq!(look(&Heap::open_read_only(&p).unwrap()).unwrap(), (big, 0));
}

/// Found by review: an entry that failed after it saw a new superblock lost the reset for
/// good (the next entry saw the same superblock), and the handle then showed the old
/// generation's frames over the checkpointed file: a state no commit made. Now an entry takes
/// effect only whole. (Here a frame of the new generation is damaged for one read and
/// repaired: that read sees the log end before it.)
#[test]
fn a_reader_follows_a_checkpoint_whatever_its_entries_met() {
    use std::os::unix::fs::FileExt;
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    struct Root {
        obj: txheap::PSlice<u8>,
        counter: u64,
    }
    const LEN: usize = 32 << 10;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("r.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    let x = w
        .transaction(|tx| {
            let r = tx.root::<Root>()?;
            let x = tx.alloc_slice(&vec![0u8; LEN])?;
            tx.get_mut(r)?.obj = x;
            Ok(x)
        })
        .unwrap();
    w.transaction(|tx| {
        tx.slice_mut(x)?.fill(0x11);
        Ok(())
    })
    .unwrap();
    let r = Heap::open_read_only(&p).unwrap();
    let state = |h: &Heap| {
        h.read(|rd| {
            let root = rd.get(rd.root::<Root>()?)?;
            Ok((
                root.counter,
                root.obj.len(),
                rd.slice(root.obj)?.first().copied(),
            ))
        })
    };
    assert_eq!(state(&r).unwrap(), (0, LEN as u64, Some(0x11)));
    w.transaction(|tx| {
        let root = tx.root::<Root>()?;
        tx.free_slice(x)?;
        tx.get_mut(root)?.obj = txheap::PSlice::empty();
        Ok(())
    })
    .unwrap();
    w.checkpoint().unwrap();
    for _ in 0..2 {
        w.transaction(|tx| {
            let root = tx.root::<Root>()?;
            tx.get_mut(root)?.counter += 1;
            Ok(())
        })
        .unwrap();
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let at = 8192 + 40 + 16; // inside the new generation's first frame
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xFF], at).unwrap();
    // Whatever this read shows, it is a committed state.
    if let Ok(s) = state(&r) {
        assert!(s == (0, 0, None) || s == (2, 0, None), "{s:?}");
    }
    f.write_all_at(&b, at).unwrap();
    assert_eq!(state(&r).unwrap(), state(&w).unwrap());
    assert_eq!(state(&r).unwrap(), (2, 0, None));
}

/// `readers` (handles beside a writer), each reading back to back with its state held for
/// `hold`; returns how long `act` took meanwhile.
fn beside_busy_readers(readers: &[Heap], hold: Duration, act: impl FnOnce() + Send) -> Duration {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for r in readers {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    r.read(|rd| {
                        let v = rd.get(rd.root::<u64>()?).copied();
                        std::thread::sleep(hold);
                        v
                    })
                    .unwrap();
                }
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        // (On a panic the readers must stop, or the scope never ends.)
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(act));
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
        took
    })
}

/// Found by review: the kernel grants an exclusive byte-range lock only once no one holds any
/// byte of it, so readers that keep entering and pinning (each overlapping the next) starved
/// a writer that shuts them out: a 1 MiB in-place commit beside six reading handles waited
/// over 10 s, a writer's open 7.4 s. A waiting writer now goes first.
#[test]
fn readers_beside_the_writer_do_not_starve_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    set_root(&w, 1);
    let readers: Vec<Heap> = (0..6).map(|_| Heap::open_read_only(&p).unwrap()).collect();
    let took = beside_busy_readers(&readers, Duration::from_millis(2), || {
        w.transaction(|tx| tx.alloc_slice(&vec![7u8; 1 << 20]).map(|_| ()))
            .unwrap();
    });
    // (5 s: the starved writer took 7.4 to over 10 s; 2 s, the bound before, was a few
    // loaded-disk barriers away from a false failure, a review judged.)
    assert!(
        took < Duration::from_secs(5),
        "an in-place commit took {took:?}"
    );
    // The writer closes; the handles go on reading; a new writer's recovery shuts them out.
    w.close().unwrap();
    let took = beside_busy_readers(&readers, Duration::from_millis(2), || {
        Heap::open(&p, small(Durability::Full))
            .unwrap()
            .close()
            .unwrap();
    });
    assert!(
        took < Duration::from_secs(5),
        "a writer's open took {took:?}"
    );
}

/// Hold a lock of `kind` (`libc::F_RDLCK`, `F_WRLCK`) on byte `at` of `path` from a new open
/// file description (as another process's reader or writer would), until the file is dropped.
fn hold_byte(path: &std::path::Path, at: i64, kind: libc::c_int) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a zeroed `flock` is valid (all integers); fcntl reads it for the call only.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at;
    fl.l_len = 1;
    // SAFETY: as above; the descriptor is open.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl as *const libc::flock) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    f
}

/// The waiting byte (docs/FORMAT.md, "Reader locks").
const WAITING_BYTE: i64 = (1 << 61) - 2;

/// A reader stopped (SIGSTOP, a debugger) in the instant its entry holds the waiting byte
/// shared: a writable open still answers within its bound (`Locked`), and a live read elsewhere
/// still reads. A review caught a reader process stopped there after about 90 ms of tries and
/// found the open blocked until the reader was resumed, and every other live reader spinning
/// at full CPU, even with no writer (it took the other reader's shared hold for a writer's).
#[test]
fn a_reader_stopped_on_the_waiting_byte_holds_neither_opens_nor_other_readers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.heap");
    let w = Heap::create(&p, small(Durability::Full)).unwrap();
    set_root(&w, 3);
    let live = Heap::open_read_only(&p).unwrap(); // beside the writer
    w.close().unwrap();
    let mut stopped = Some(hold_byte(&p, WAITING_BYTE, libc::F_RDLCK));
    // A live read: no writer holds the byte exclusively, so it reads at once.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(live.read(|r| r.get(r.root::<u64>()?).copied()));
        });
        let got = rx.recv_timeout(Duration::from_secs(5));
        if got.is_err() {
            stopped.take(); // (lets the spinning read end, so the scope can)
            panic!("a live read still waiting after 5 s beside a reader's shared hold");
        }
        assert_eq!(got.unwrap().unwrap(), 3);
    });
    // A writable open: `Locked` after its bound, not a wait for ever.
    let (tx, rx) = std::sync::mpsc::channel();
    let p2 = p.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = Heap::open(&p2, small(Durability::Full)).map(|h| h.close());
        let _ = tx.send((t.elapsed(), r));
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    stopped.take();
    let (took, r) = got.expect("Heap::open still waiting after 5 s on a reader's shared hold");
    assert!(matches!(r, Err(Error::Locked { .. })), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The reader goes on: the open succeeds.
    Heap::open(&p, small(Durability::Full))
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(live.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 3);
}
