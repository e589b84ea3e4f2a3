//! W5: how long `Heap::open` takes, on a 1 GiB heap with an empty log and on a heap whose log
//! holds 64 MiB of committed frames. Set-up children make the heaps; measuring children (fresh
//! processes) time only `Heap::open`.
//!
//! The replay set-up commits W1-style transactions (one 64-byte node each) under
//! `Durability::None` until the log holds the requested bytes, then leaks the `Heap`
//! (`std::mem::forget`) and exits: no close, so no checkpoint, and the frames stay in the log.
//! The frames were written with `pwrite`, so the next process sees them; nothing else of the
//! library is needed for this.

use std::path::Path;
use std::time::Instant;

use txheap::{Durability, Heap, Options};

use crate::args::ChildArgs;
use crate::engines::txheap_engine::{count, push, FILE};
use crate::sample::Sample;
use crate::BoxResult;

/// Log size of the open heap (its set-up commits 1,000,000 nodes per transaction).
const OPEN_LOG: u64 = 256 << 20;
/// Log size of the replay heap: room for 64 MiB of frames before any checkpoint.
const REPLAY_LOG: u64 = 128 << 20;
/// Nodes per set-up transaction of the open heap.
const OPEN_BATCH: u64 = 1 << 20;
/// Where the replay set-up records how many frames and log bytes it left.
const REPLAY_INFO: &str = "replay.info";

/// Make a heap of `args.ops` 64-byte nodes in `args.dir` and close it (checkpointed: empty log).
pub fn setup_open(args: &ChildArgs<'_>) -> BoxResult<()> {
    let path = args.dir.join(FILE);
    let heap = Heap::create(
        &path,
        Options::new()
            .log_size(OPEN_LOG)
            .max_size(8 << 30)
            .durability(Durability::None),
    )?;
    let mut done = 0;
    while done < args.ops {
        let n = OPEN_BATCH.min(args.ops - done);
        push(&heap, done, n)?;
        done += n;
    }
    let stats = heap.stats()?;
    heap.close()?;
    eprintln!(
        "W5-open set-up: {done} nodes, {} MiB used, file {} MiB",
        stats.used_bytes >> 20,
        stats.file_len >> 20
    );
    Ok(())
}

/// Time `Heap::open` of the heap made by [`setup_open`]; then check its node count.
pub fn measure_open(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let path = args.dir.join(FILE);
    let start = Instant::now();
    let heap = Heap::open(&path, Options::new())?;
    let elapsed = start.elapsed();
    let stats = heap.stats()?;
    let len = heap.read(|r| Ok(r.get(r.root::<crate::engines::txheap_engine::Root>()?)?.len))?;
    heap.close()?;
    if len == 0 {
        return Err("W5-open: the heap is empty (set-up missing?)".into());
    }
    let mut s = Sample::new(args.engine, args.workload.name(), 1, elapsed, None);
    s.bytes = stats.file_len;
    Ok(s)
}

/// Time `txheap::inspect::check` (`txheap check`) of the heap made by [`setup_open`]: both
/// superblocks, the log, the header, every chunk-table entry and every run bitmap. It must find
/// the heap clean.
pub fn measure_check(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let path = args.dir.join(FILE);
    let start = Instant::now();
    let report = txheap::inspect::check(&path, &mut |_, _| {})?;
    let elapsed = start.elapsed();
    if report.verdict != txheap::inspect::Verdict::Clean {
        return Err(format!("W5-open check: {:?}", report.findings).into());
    }
    let stats = report.stats.ok_or("W5-open check: no figures")?;
    if stats.used_bytes == 0 {
        return Err("W5-open check: the heap is empty (set-up missing?)".into());
    }
    let mut s = Sample::new(args.engine, args.workload.name(), 1, elapsed, None);
    s.bytes = stats.file_len;
    Ok(s)
}

/// Commit one-node transactions under `Durability::None` until the log holds `args.ops` bytes,
/// record frames and bytes in `replay.info`, and leave without closing.
pub fn setup_replay(args: &ChildArgs<'_>) -> BoxResult<()> {
    let path = args.dir.join(FILE);
    if REPLAY_LOG < args.ops + (1 << 20) {
        return Err(format!("replay set-up: {} log bytes do not fit the log", args.ops).into());
    }
    let heap = Heap::create(
        &path,
        Options::new()
            .log_size(REPLAY_LOG)
            .durability(Durability::None),
    )?;
    let checkpoints_at_create = heap.stats()?.checkpoints;
    let mut commits = 0u64;
    let log_used = loop {
        for _ in 0..256 {
            push(&heap, commits, 1)?;
            commits += 1;
        }
        let stats = heap.stats()?;
        if stats.checkpoints != checkpoints_at_create {
            return Err("replay set-up: a checkpoint emptied the log".into());
        }
        if stats.log_used >= args.ops {
            break stats.log_used;
        }
    };
    std::fs::write(
        args.dir.join(REPLAY_INFO),
        format!("{commits} {log_used}\n"),
    )?;
    eprintln!(
        "W5-replay set-up: {commits} frames, {:.1} MiB of log, left without checkpoint",
        log_used as f64 / (1 << 20) as f64
    );
    // No close and no Drop: the frames stay in the log for the next open to replay. But write
    // the log's dirty pages back now (fsync through a second handle), or the measured open's
    // checkpoint would pay for the set-up's writeback (64 MiB of log, not replay work).
    std::fs::File::open(&path)?.sync_all()?;
    std::mem::forget(heap);
    Ok(())
}

/// Time `Heap::open` of the heap left by [`setup_replay`]; then check that every committed
/// node is there. ops = frames replayed, bytes = log bytes replayed.
pub fn measure_replay(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let path = args.dir.join(FILE);
    let (commits, log_bytes) = read_info(args.dir)?;
    let start = Instant::now();
    let heap = Heap::open(&path, Options::new())?;
    let elapsed = start.elapsed();
    let (len, walked) = count(&heap)?;
    let stats = heap.stats()?;
    // The open leaves the replayed frames in the log (its checkpoint is the first commit's, or
    // the close's): time the close too, so that the deferred heap barrier is seen.
    let closing = Instant::now();
    heap.close()?;
    let close = closing.elapsed();
    if len != commits || walked != commits {
        return Err(format!(
            "W5-replay: {commits} transactions committed, root.len {len}, {walked} nodes reached"
        )
        .into());
    }
    if stats.log_used != log_bytes {
        return Err(format!(
            "W5-replay: the open left {} log bytes, not the {log_bytes} it replayed",
            stats.log_used
        )
        .into());
    }
    eprintln!(
        "W5-replay: open {:.1} ms, then close (its checkpoint) {:.1} ms",
        elapsed.as_secs_f64() * 1e3,
        close.as_secs_f64() * 1e3
    );
    let mut s = Sample::new(args.engine, args.workload.name(), commits, elapsed, None);
    s.bytes = log_bytes;
    Ok(s)
}

fn read_info(dir: &Path) -> BoxResult<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join(REPLAY_INFO))?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(c)), Some(Ok(b))) => Ok((c, b)),
        _ => Err(format!("bad {REPLAY_INFO}: {text:?}").into()),
    }
}
