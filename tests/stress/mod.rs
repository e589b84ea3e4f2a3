//! The readers-and-writers stress workload, shared by `tests/concurrency.rs` and
//! `tests/readers_sabotage.rs`: writer threads move amounts between accounts and push and pop a
//! linked list (with aborts and panics mixed in) while reader threads check, inside one `read`
//! closure each time, that the total is fixed, that the list is well formed and as long as the
//! root says, and that nothing they hold changed while they ran.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use txheap::{Durability, Error, Heap, Options, PPtr, PSlice};

pub const ACCOUNTS: u64 = 64;
pub const START: u64 = 1_000;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
pub struct Root {
    pub accounts: PSlice<u64>,
    pub head: PPtr<Node>,
    pub len: u64,
    pub next_value: u64,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
pub struct Node {
    pub next: PPtr<Node>,
    pub value: u64,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub commits: u64,
    pub aborts: u64,
    pub panics: u64,
    pub reads: u64,
    /// What readers saw that a committed state cannot hold.
    pub violations: Vec<String>,
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

pub fn options(durability: Durability) -> Options {
    // A small log: checkpoints (which need every frame in the file) happen while readers run.
    Options::new()
        .durability(durability)
        .log_size(256 << 10)
        .initial_size(4 << 20)
        .max_size(256 << 20)
}

pub fn setup(heap: &Heap) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let accounts = tx.alloc_slice(&[START; ACCOUNTS as usize])?;
        tx.get_mut(root)?.accounts = accounts;
        Ok(())
    })
    .unwrap();
}

/// A stress heap at `dir/s.heap` (set up), and a read-only handle beside it
/// (docs/ARCHITECTURE.md section 17).
#[allow(dead_code)]
pub fn heap_beside(dir: &std::path::Path, durability: Durability) -> (Heap, Heap) {
    let p = dir.join("s.heap");
    let heap = Heap::create(&p, options(durability)).unwrap();
    setup(&heap);
    let beside = Heap::open_read_only(&p).unwrap();
    (heap, beside)
}

/// Run a broken variant up to `attempts` times, until its readers see a violation: how soon a
/// reader overlaps the writer's sabotaged step depends on the scheduler, and on a loaded
/// machine one run of a few seconds sometimes had none (the unbroken runs are not retried).
/// Returns the first run with a violation, or the last one.
#[allow(dead_code)] // (each test binary uses part of this module)
pub fn until_caught(attempts: u32, mut run: impl FnMut() -> Report) -> Report {
    let mut report = run();
    for _ in 1..attempts {
        if !report.violations.is_empty() {
            break;
        }
        report = run();
    }
    report
}

/// A run under a sabotage switch (`variant` names it) must have committed, aborted or
/// panicked, and its readers must have seen violations.
#[allow(dead_code)]
pub fn assert_caught(variant: &str, durability: Durability, broken: &Report) {
    eprintln!(
        "{durability:?}: broken variant \"{variant}\": {} violations in {} reads (first: {:?})",
        broken.violations.len(),
        broken.reads,
        broken.violations.first()
    );
    assert!(
        broken.commits > 0 && broken.aborts + broken.panics > 0,
        "{broken:?}"
    );
    assert!(
        !broken.violations.is_empty(),
        "{durability:?}: the readers did not notice their views changing"
    );
}

/// Read `*v` again from memory: a plain `*v` after an earlier read may be compiled as the value
/// read before (the compiler may assume a shared reference's target does not change), and the
/// checks below would then pass whatever the heap did.
fn again<T: Copy>(v: &T) -> T {
    // SAFETY: `v` is a valid, aligned reference to a `Copy` value for the whole call.
    unsafe { std::ptr::read_volatile(v) }
}

/// One reader's checks over one snapshot; `hold` spins while holding every reference.
fn check(heap: &Heap, hold: u32) -> Result<Option<String>, Error> {
    heap.read(|r| {
        let rp = r.root::<Root>()?;
        let root = r.get(rp)?;
        let len0 = root.len;
        let acc = r.slice(root.accounts)?;
        let copy = acc.to_vec();
        let sum: u64 = copy.iter().sum();
        if sum != ACCOUNTS * START {
            return Ok(Some(format!("total {sum}, not {}", ACCOUNTS * START)));
        }
        let mut n = 0;
        let mut p = root.head;
        let mut prev = u64::MAX;
        let mut held = Vec::new();
        while !p.is_null() {
            let node = r.get(p)?;
            if node.value >= prev {
                return Ok(Some(format!(
                    "list out of order: {} after {prev}",
                    node.value
                )));
            }
            prev = node.value;
            held.push((node, *node));
            p = node.next;
            n += 1;
            if n > len0 {
                return Ok(Some(format!("list longer than its length {len0}")));
            }
        }
        if n != len0 {
            return Ok(Some(format!("list of {n} nodes, length says {len0}")));
        }
        for _ in 0..hold {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
        if acc.iter().map(again).ne(copy.iter().copied()) {
            return Ok(Some("accounts changed under a reader".into()));
        }
        if again(&root.len) != len0 {
            return Ok(Some("root changed under a reader".into()));
        }
        if held.iter().any(|(now, then)| {
            let now = again(*now);
            now.value != then.value || now.next != then.next
        }) {
            return Ok(Some("a list node changed under a reader".into()));
        }
        Ok(None)
    })
}

fn write_one(heap: &Heap, seed: &mut u64) -> Result<(), Error> {
    let roll = rng(seed);
    heap.transaction(|tx| {
        let rp = tx.root::<Root>()?;
        let root = *tx.get(rp)?;
        let (a, b) = (rng(seed) % ACCOUNTS, rng(seed) % ACCOUNTS);
        let acc = tx.slice_mut(root.accounts)?;
        let amount = rng(seed) % (acc[a as usize] + 1);
        acc[a as usize] -= amount;
        acc[b as usize] += amount;
        if rng(seed) % 2 == 0 || root.len == 0 {
            let node = tx.alloc(Node {
                next: root.head,
                value: root.next_value,
            })?;
            let r = tx.get_mut(rp)?;
            r.head = node;
            r.len += 1;
            r.next_value += 1;
        } else {
            let head = *tx.get(root.head)?;
            tx.free(root.head)?;
            let r = tx.get_mut(rp)?;
            r.head = head.next;
            r.len -= 1;
        }
        match roll % 40 {
            0..=3 => Err(Error::NoRoot), // abort
            4 => panic!("a writer panics inside its transaction"),
            _ => Ok(()),
        }
    })
}

/// Silence the panics the writers raise on purpose (others still print).
pub fn quiet_planned_panics() {
    let old = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.contains("on purpose") || m.contains("writer panics"));
        if !planned {
            old(info)
        }
    }));
}

/// How long a stress run lasts: `TXHEAP_STRESS_SECS`, else `default` seconds.
#[allow(dead_code)]
pub fn secs(default: f64) -> Duration {
    Duration::from_secs_f64(
        std::env::var("TXHEAP_STRESS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// Run `writers` writer threads and `readers` reader threads on `heap` for `time`.
#[allow(dead_code)]
pub fn run(heap: &Heap, writers: u32, readers: u32, time: Duration, hold: u32) -> Report {
    run_beside(heap, heap, writers, readers, time, hold)
}

/// [`run`] with the readers on `beside`, another handle of the same file (a read-only open
/// beside the writer: docs/ARCHITECTURE.md section 17).
pub fn run_beside(
    heap: &Heap,
    beside: &Heap,
    writers: u32,
    readers: u32,
    time: Duration,
    hold: u32,
) -> Report {
    let stop = AtomicBool::new(false);
    let (commits, aborts, panics, reads) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let violations = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..writers {
            let (stop, commits, aborts, panics) = (&stop, &commits, &aborts, &panics);
            s.spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15 ^ ((u64::from(w) + 1) * 0x1234_5678);
                while !stop.load(Ordering::Relaxed) {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_one(heap, &mut seed)
                    }));
                    match r {
                        Ok(Ok(())) => commits.fetch_add(1, Ordering::Relaxed),
                        Ok(Err(Error::NoRoot)) => aborts.fetch_add(1, Ordering::Relaxed),
                        Ok(Err(e)) => panic!("writer failed: {e}"),
                        Err(_) => panics.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        for _ in 0..readers {
            let (stop, reads, violations) = (&stop, &reads, &violations);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match check(beside, hold) {
                        Ok(None) => {}
                        Ok(Some(v)) => violations.lock().unwrap().push(v),
                        Err(e) => violations.lock().unwrap().push(format!("read failed: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let t = Instant::now();
        while t.elapsed() < time {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    Report {
        commits: commits.into_inner(),
        aborts: aborts.into_inner(),
        panics: panics.into_inner(),
        reads: reads.into_inner(),
        violations: violations.into_inner().unwrap(),
    }
}
