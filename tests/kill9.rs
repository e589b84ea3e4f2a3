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

use txheap::{Durability, Error, Heap, Options, PPtr, PSlice};

/// The named crash points (feature `test-hooks`, `TXHEAP_FAILPOINT=name:n`).
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

/// Nodes kept in the list; older ones are freed (with their payloads) as new ones arrive.
const KEEP: u64 = 24;
const CHECK: u64 = 0x5EED_F00D_CAFE_D00D;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Root {
    counter: u64,
    head: PPtr<Node>,
    len: u64,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
    payload: PSlice<u8>,
    check: u64,
}

fn opts(durability: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(1 << 20)
        .max_size(1 << 30)
        .durability(durability)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn payload_byte(value: u64) -> u8 {
    (value % 251) as u8 + 1
}

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
    let heap = Heap::open_or_create(&path, opts(durability)).unwrap();
    writeln!(out, "OPENED").unwrap();
    out.flush().unwrap();
    let mut rng = Rng(seed | 1);
    loop {
        let size = match rng.below(10) {
            0 => 70_000 + rng.below(230_000), // large extent, maybe several chunks
            1 | 2 => 200 + rng.below(8_000),
            _ => 1 + rng.below(200),
        };
        let abort = rng.below(10) == 0;
        let r = heap.transaction(|tx| {
            let root = tx.root::<Root>()?;
            let mut rt = *tx.get(root)?;
            let n = rt.counter + 1;
            let payload = tx.alloc_slice_zeroed::<u8>(size)?;
            tx.slice_mut(payload)?.fill(payload_byte(n));
            let node = tx.alloc(Node {
                value: n,
                next: rt.head,
                payload,
                check: n ^ CHECK,
            })?;
            rt.head = node;
            rt.counter = n;
            rt.len += 1;
            if rt.len > KEEP {
                // Cut the list after KEEP nodes and free the rest.
                let mut p = rt.head;
                for _ in 1..KEEP {
                    p = tx.get(p)?.next;
                }
                let mut rest = tx.get(p)?.next;
                tx.get_mut(p)?.next = PPtr::null();
                while !rest.is_null() {
                    let dead = *tx.get(rest)?;
                    tx.free_slice(dead.payload)?;
                    tx.free(rest)?;
                    rest = dead.next;
                }
                rt.len = KEEP;
            }
            *tx.get_mut(root)? = rt;
            if abort {
                return Err(Error::NoRoot); // a deliberate abort: must leave no trace
            }
            Ok(n)
        });
        match r {
            Ok(n) => {
                writeln!(out, "ACK {n}").unwrap();
                out.flush().unwrap();
            }
            Err(Error::NoRoot) => {}
            Err(e) => panic!("child transaction failed: {e}"),
        }
    }
}

/// Check the reopened heap; returns the counter.
fn verify(heap: &Heap) -> Result<u64, String> {
    let (counter, nodes) = heap
        .read(|r| {
            let root = match r.root::<Root>() {
                Ok(root) => *r.get(root)?,
                Err(Error::NoRoot) => return Ok((0, Vec::new())),
                Err(e) => return Err(e),
            };
            let mut nodes = Vec::new();
            let mut p = root.head;
            while !p.is_null() && nodes.len() <= KEEP as usize {
                let n = *r.get(p)?;
                let intact = n.check == n.value ^ CHECK
                    && r.slice(n.payload)?
                        .iter()
                        .all(|&b| b == payload_byte(n.value));
                nodes.push((p, n, intact));
                p = n.next;
            }
            assert_eq!(
                root.len as usize,
                nodes.len(),
                "root.len disagrees with the list"
            );
            Ok((root.counter, nodes))
        })
        .map_err(|e| format!("reading the recovered heap: {e}"))?;
    let expect: Vec<u64> = (counter.saturating_sub(KEEP) + 1..=counter).rev().collect();
    let got: Vec<u64> = nodes.iter().map(|(_, n, _)| n.value).collect();
    if got != expect {
        return Err(format!("list holds {got:?}, expected {expect:?}"));
    }
    if let Some((_, n, _)) = nodes.iter().find(|(_, _, ok)| !ok) {
        return Err(format!(
            "node {} is torn (check word or payload bytes wrong)",
            n.value
        ));
    }
    // Everything the allocator counts as used is reachable, and nothing reachable is free.
    let reachable: u64 = heap
        .transaction(|tx| {
            let mut sum = 0;
            for (p, n, _) in &nodes {
                sum += tx.usable_size(*p).ok_or(Error::NullPointer)?;
                sum += tx
                    .usable_size(n.payload.as_ptr())
                    .ok_or(Error::NullPointer)?;
            }
            Ok(sum)
        })
        .map_err(|e| format!("a reachable block is not allocated: {e}"))?;
    let used = heap.stats().map_err(|e| e.to_string())?.used_bytes;
    if used != reachable {
        return Err(format!(
            "allocator counts {used} bytes used, {reachable} reachable (leak or lost block)"
        ));
    }
    Ok(counter)
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
    let mut rng = Rng(seed | 1);
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
            .env("TXHEAP_KILL9_CHILD_SEED", rng.next().to_string())
            .env("TXHEAP_KILL9_CHILD_DURABILITY", name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // With test-hooks, a third of the runs die at a named failpoint instead of a timer.
        let failpoint = (cfg!(feature = "test-hooks") && rng.below(3) == 0).then(|| {
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
        let heap = Heap::open(&copy, opts(Durability::Full)).unwrap_or_else(|e| {
            panic!("seed {seed} iteration {i} ({name}): reopen after kill failed: {e}")
        });
        let counter =
            verify(&heap).unwrap_or_else(|e| panic!("seed {seed} iteration {i} ({name}): {e}"));
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
