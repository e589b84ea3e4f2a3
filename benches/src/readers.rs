//! Readers beside a committing writer (issue 16): R-commit (a durable commit's latency while
//! one reader holds a read view for the whole run, against no reader), R-start (how long a new
//! reader waits to begin while commits run), R-scale (reads per second of 4 reader threads
//! against 1 while a writer commits).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use txheap::{Durability, Heap, Options, PPtr, PSlice};

use crate::args::ChildArgs;
use crate::sample::Sample;
use crate::BoxResult;

/// The heap's root: a counter the writer bumps, and an array readers sum parts of.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    count: u64,
    values: PSlice<u64>,
    last: PPtr<[u8; 64]>,
}

/// Entries of the array readers read (8 MiB).
const VALUES: u64 = 1 << 20;
/// Entries one R-scale read sums (random positions).
const PER_READ: u64 = 64;
/// How long R-scale measures.
const SCALE_TIME: Duration = Duration::from_secs(2);

fn heap(args: &ChildArgs<'_>) -> BoxResult<(Heap, PPtr<Root>)> {
    let heap = Heap::create(
        args.dir.join("readers.heap"),
        Options::new().durability(Durability::Full),
    )?;
    let root = heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let values = tx.alloc_slice_zeroed::<u64>(VALUES)?;
        let v = tx.slice_mut(values)?;
        for (i, x) in v.iter_mut().enumerate() {
            *x = i as u64;
        }
        tx.get_mut(root)?.values = values;
        Ok(root)
    })?;
    heap.checkpoint()?;
    Ok((heap, root))
}

/// One W1-style durable commit: a new 64-byte object linked from the root, the counter bumped.
fn commit(heap: &Heap, root: PPtr<Root>, i: u64) -> txheap::Result<()> {
    heap.transaction(|tx| {
        let node = tx.alloc([i as u8; 64])?;
        let r = tx.get_mut(root)?;
        r.count += 1;
        r.last = node;
        Ok(())
    })
}

/// The writer thread of R-start and R-scale: commits back to back until `stop`, counting them.
fn commit_until(
    heap: &Heap,
    root: PPtr<Root>,
    stop: &AtomicBool,
    commits: &AtomicU64,
) -> txheap::Result<()> {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        commit(heap, root, i)?;
        i += 1;
        commits.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// R-commit: `args.ops` durable commits, each timed; the `txheap` row holds one read view in
/// another thread from before the first commit to after the last (and checks that it never
/// changed), the `txheap-no-reader` row has no reader.
pub fn measure_commit(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let (writer, root) = heap(args)?;
    let held = args.engine != "txheap-no-reader";
    // `txheap-beside`: the view is held by a read-only handle beside the writer (section 17 of
    // docs/ARCHITECTURE.md), as a reader in another process would hold it.
    let beside = beside(args)?;
    let heap = beside.as_ref().unwrap_or(&writer);
    let (pinned_tx, pinned) = mpsc::channel();
    let stop = AtomicBool::new(false);
    let mut lat = Vec::with_capacity(args.ops as usize);
    let elapsed = std::thread::scope(|s| -> BoxResult<Duration> {
        let reader = held.then(|| {
            s.spawn(|| {
                heap.read(|r| {
                    let n = r.get(root)?;
                    let before = n.count;
                    pinned_tx.send(()).ok();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(before == n.count)
                })
            })
        });
        if held {
            pinned.recv()?;
        }
        let start = Instant::now();
        for i in 0..args.ops {
            let t = Instant::now();
            commit(&writer, root, i)?;
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        if let Some(r) = reader {
            if !r.join().map_err(|_| "reader panicked")?? {
                return Err("R-commit: the held view changed".into());
            }
        }
        Ok(elapsed)
    })?;
    drop(beside);
    writer.close()?;
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        args.ops,
        elapsed,
        Some(&mut lat),
    ))
}

/// For the `txheap-beside` rows: a read-only handle beside the writer.
fn beside(args: &ChildArgs<'_>) -> BoxResult<Option<Heap>> {
    Ok(if args.engine == "txheap-beside" {
        Some(Heap::open_read_only(args.dir.join("readers.heap"))?)
    } else {
        None
    })
}

/// R-start: reads (begin, read one word, end), each timed, while another thread commits
/// durable transactions back to back: at least `args.ops` of them, and for as long as 200
/// commits take. The figure compared is p99.9 of a read's time.
pub fn measure_start(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let (heap, root) = heap(args)?;
    let beside = beside(args)?;
    let reader = beside.as_ref().unwrap_or(&heap);
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let mut lat = Vec::with_capacity(args.ops as usize);
    let elapsed = std::thread::scope(|s| -> BoxResult<Duration> {
        let writer = s.spawn(|| commit_until(&heap, root, &stop, &commits));
        while commits.load(Ordering::Relaxed) < 10 {
            std::thread::yield_now();
        }
        let start = Instant::now();
        let mut seen = 0;
        // At least `args.ops` reads, and for as long as 200 commits take (a read is about a
        // microsecond, a durable commit over a hundred).
        let first = commits.load(Ordering::Relaxed);
        while (lat.len() as u64) < args.ops || commits.load(Ordering::Relaxed) < first + 200 {
            let t = Instant::now();
            let c = reader.read(|r| Ok(r.get(root)?.count))?;
            lat.push(t.elapsed());
            if c < seen {
                return Err("R-start: a later reader saw an older state".into());
            }
            seen = c;
        }
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        writer.join().map_err(|_| "writer panicked")??;
        Ok(elapsed)
    })?;
    drop(beside);
    heap.close()?;
    let n = lat.len() as u64;
    let mut sample = Sample::new(
        args.engine,
        args.workload.name(),
        n,
        elapsed,
        Some(&mut lat),
    );
    sample.p999_us = Some(crate::sample::percentile_sorted(&lat, 99.9).as_secs_f64() * 1e6);
    Ok(sample)
}

/// R-scale: reader threads (4 for `txheap`, 2 for `txheap-2-readers`, 1 for `txheap-1-reader`) each run read closures
/// that sum 64 random entries of an 8 MiB array, for 2 s, while another thread commits durable
/// transactions; the figure is reads per second over all readers.
pub fn measure_scale(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let readers = match args.engine {
        "txheap" | "limit-4-readers" => 4,
        "txheap-2-readers" => 2,
        _ => 1,
    };
    if args.engine.starts_with("limit-") {
        return measure_scale_limit(args, readers);
    }
    let (heap, root) = heap(args)?;
    let (go, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let reads = AtomicU64::new(0);
    let elapsed = std::thread::scope(|s| -> BoxResult<Duration> {
        let writer = s.spawn(|| commit_until(&heap, root, &stop, &AtomicU64::new(0)));
        let mut threads = Vec::new();
        for t in 0..readers {
            let (heap, go, stop, reads) = (&heap, &go, &stop, &reads);
            threads.push(s.spawn(move || -> txheap::Result<u64> {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut sum = 0u64;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    sum = sum.wrapping_add(heap.read(|r| {
                        let values = r.slice(r.get(root)?.values)?;
                        let mut s = 0u64;
                        for _ in 0..PER_READ {
                            s = s.wrapping_add(values[next_position(&mut x)]);
                        }
                        Ok(s)
                    })?);
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
                Ok(sum)
            }));
        }
        let start = Instant::now();
        go.store(true, Ordering::Release);
        std::thread::sleep(SCALE_TIME);
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed();
        for t in threads {
            t.join().map_err(|_| "reader panicked")??;
        }
        writer.join().map_err(|_| "writer panicked")??;
        Ok(elapsed)
    })?;
    heap.close()?;
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        reads.load(Ordering::Relaxed),
        elapsed,
        None,
    ))
}

/// The next of a reader's random positions (xorshift64).
fn next_position(x: &mut u64) -> usize {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x % VALUES) as usize
}

/// R-scale's limit rows (`limit-4-readers`, `limit-1-reader`): the same reads (64 random
/// entries of an 8 MiB array, summed) of a plain `Vec<u64>` with no heap and no read view,
/// while another thread makes the disk work as a durable commit does (`limit-pwrite`: a 4 KiB
/// `pwrite` in place, then `fdatasync`, back to back). Four of these readers ÷ one is what this
/// machine lets reads scale to beside a syncing writer; txheap's own 4 ÷ 1 is judged against it.
fn measure_scale_limit(args: &ChildArgs<'_>, readers: u64) -> BoxResult<Sample> {
    let values: Vec<u64> = (0..VALUES).collect();
    let file = crate::engines::limits::written_file(&args.dir.join("scale.dat"), 16 << 20)?;
    let (go, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    let reads = AtomicU64::new(0);
    let elapsed = std::thread::scope(|s| -> BoxResult<Duration> {
        let writer = s.spawn(|| -> std::io::Result<u64> {
            use std::os::unix::fs::FileExt;
            let block = [0x5au8; 4096];
            let mut syncs = 0u64;
            while !stop.load(Ordering::Relaxed) {
                file.write_all_at(&block, (syncs % 4096) * 4096)?;
                file.sync_data()?;
                syncs += 1;
            }
            Ok(syncs)
        });
        let mut threads = Vec::new();
        for t in 0..readers {
            let (values, go, stop, reads) = (&values, &go, &stop, &reads);
            threads.push(s.spawn(move || -> u64 {
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let (mut sum, mut n) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let mut s = 0u64;
                    for _ in 0..PER_READ {
                        s = s.wrapping_add(values[next_position(&mut x)]);
                    }
                    sum = sum.wrapping_add(std::hint::black_box(s));
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
                sum
            }));
        }
        let start = Instant::now();
        go.store(true, Ordering::Release);
        std::thread::sleep(SCALE_TIME);
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed();
        for t in threads {
            std::hint::black_box(t.join().map_err(|_| "reader panicked")?);
        }
        if writer.join().map_err(|_| "writer panicked")?? == 0 {
            return Err("R-scale limit: the writer made no barrier".into());
        }
        Ok(elapsed)
    })?;
    Ok(Sample::new(
        args.engine,
        args.workload.name(),
        reads.load(Ordering::Relaxed),
        elapsed,
        None,
    ))
}
