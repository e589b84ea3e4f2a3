//! W6 (issue 16): durable small transactions committed by several threads at once, each
//! transaction W1's (a 64-byte node linked into a list, here the thread's own list). txheap
//! rows run 1, 2, 4, 8 (the subject) and 16 threads on one heap under `Durability::Full`;
//! `sqlite` runs 8 threads with a connection each (WAL, `synchronous=FULL`, `BEGIN
//! IMMEDIATE`, a busy timeout). The figure is commits per second over all threads; txheap rows
//! also report barriers per commit (the heap's own I/O counters).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use txheap::{Durability, Heap, Options, PPtr};

use crate::args::ChildArgs;
use crate::sample::Sample;
use crate::BoxResult;

/// Most threads a row runs.
const THREADS_MAX: usize = 16;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    heads: [PPtr<Node>; THREADS_MAX],
    counts: [u64; THREADS_MAX],
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Node {
    next: PPtr<Node>,
    value: [u8; 56],
}

/// Threads of a row.
fn threads(engine: &str) -> usize {
    match engine {
        "txheap-1-thread" => 1,
        "txheap-2-threads" => 2,
        "txheap-4-threads" => 4,
        "txheap-16-threads" => 16,
        _ => 8,
    }
}

/// Run `threads` threads, each calling `work(thread, i)` for `i` in `0..per_thread` after all
/// have started; returns the time from the start to the last thread's end.
fn run_threads(
    threads: usize,
    per_thread: u64,
    work: &(dyn Fn(usize, u64) -> BoxResult<()> + Sync),
) -> BoxResult<Duration> {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| -> BoxResult<Duration> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || -> Result<(), String> {
                    start.wait();
                    for i in 0..per_thread {
                        work(t, i).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join().map_err(|_| "W6: a thread panicked")??;
        }
        Ok(t0.elapsed())
    })
}

/// W6 for the row `args.engine`: `args.ops` commits in all, split evenly among its threads.
pub fn measure(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let n = threads(args.engine);
    let per_thread = (args.ops / n as u64).max(1);
    let ops = per_thread * n as u64;
    if args.engine.starts_with("sqlite") {
        return sqlite(args, n, per_thread, ops);
    }
    let heap = Heap::create(
        args.dir.join("w6.heap"),
        Options::new().durability(Durability::Full),
    )?;
    let root = heap.transaction(|tx| tx.root::<Root>())?;
    let io = |h: &Heap| -> BoxResult<u64> {
        let io = h.stats()?.io;
        Ok(io.range_barriers + io.full_barriers)
    };
    let before = io(&heap)?;
    let elapsed = run_threads(n, per_thread, &|t, i| {
        heap.transaction(|tx| {
            let r = *tx.get(root)?;
            let node = tx.alloc(Node {
                next: r.heads[t],
                value: [i as u8; 56],
            })?;
            let r = tx.get_mut(root)?;
            r.heads[t] = node;
            r.counts[t] += 1;
            Ok(())
        })?;
        Ok(())
    })?;
    let barriers = io(&heap)? - before;
    let counts = heap.read(|r| Ok(r.get(root)?.counts))?;
    heap.close()?;
    if counts[..n].iter().any(|&c| c != per_thread) {
        return Err(format!(
            "W6: per-thread counts {:?}, expected {per_thread}",
            &counts[..n]
        )
        .into());
    }
    let mut s = Sample::new(args.engine, args.workload.name(), ops, elapsed, None);
    s.barriers = Some(barriers as f64 / ops as f64);
    Ok(s)
}

fn sqlite(args: &ChildArgs<'_>, n: usize, per_thread: u64, ops: u64) -> BoxResult<Sample> {
    let path = args.dir.join("w6.sqlite");
    let open = || -> rusqlite::Result<Connection> {
        let c = Connection::open(&path)?;
        c.busy_timeout(Duration::from_secs(30))?;
        c.pragma_update(None, "synchronous", "FULL")?;
        Ok(c)
    };
    {
        let c = open()?;
        let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("sqlite: journal_mode=WAL gave {mode}").into());
        }
        c.execute_batch("CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    }
    let conns: Vec<std::sync::Mutex<Connection>> = (0..n)
        .map(|_| open().map(std::sync::Mutex::new))
        .collect::<rusqlite::Result<_>>()?;
    let elapsed = run_threads(n, per_thread, &|t, i| {
        let mut c = conns[t].lock().map_err(|_| "poisoned")?;
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")?
            .execute((
                (t as u64 * 1_000_000_000 + i) as i64,
                [i as u8; 64].as_slice(),
            ))?;
        tx.commit()?;
        Ok(())
    })?;
    let found: i64 = conns[0].lock().map_err(|_| "poisoned")?.query_row(
        "SELECT count(*) FROM kv",
        [],
        |row| row.get(0),
    )?;
    if found as u64 != ops {
        return Err(format!("W6 sqlite: {found} rows, expected {ops}").into());
    }
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        ops,
        elapsed,
        None,
    ))
}
