//! # crash-tests: does txheap survive a power cut at any instant?
//!
//! Owns: a deterministic workload, the power-loss simulator, and the checker. It uses only
//! txheap's public API plus the `test-hooks` feature, which records every write, barrier and
//! growth that passes through the storage choke point.
//!
//! ## The simulator's model of the disk (docs/ARCHITECTURE.md section 1)
//! The file's bytes are tracked per 512-byte sector. A barrier makes the sectors it covers
//! durable (`msync` of a range: that range's pages; `fdatasync`: everything). Between barriers a
//! sector may reach the disk in *any* state it passed through since it was last made durable,
//! independently of every other sector: this covers reordered writes, writes that never
//! arrived, writes torn at sector boundaries, and "write i lost, later write j kept". A crash
//! image at instant `t` takes, for each sector written since its last barrier, one of those
//! states: the two extremes (nothing since the barriers; everything, as a SIGKILL leaves it)
//! and seeded random choices.
//!
//! Power cuts during recovery: for some crash images the simulator records recovery's own writes
//! and barriers, cuts power again at every one of them, and recovers once more; the result must
//! be exactly what the uninterrupted recovery gave.
//!
//! ## The check
//! The image is written to a file (on tmpfs), opened (recovery runs), and must hold a committed
//! prefix: the workload's counter `c` and list must be intact (every node and payload byte as
//! the deterministic workload wrote it, the allocator's used bytes equal to what is reachable),
//! with `acked <= c <= acked + 1` under `Durability::Full`, where `acked` is the last
//! transaction acknowledged before `t`; under `Durability::None`, `c <= acked + 1` (a power cut
//! may lose acknowledged transactions, never tear one).

pub mod ops;

use std::collections::BTreeMap;
use std::path::Path;

use txheap::{Durability, Error, Heap, Options, PPtr, PSlice, Trace, TraceEvent};

/// Nodes kept in the workload's list; older ones are freed.
pub const KEEP: u64 = 6;
const CHECK: u64 = 0x5EED_F00D_CAFE_D00D;
/// Sector size of the torn-write model.
pub const SECTOR: u64 = 512;

/// The workload's root object.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Root {
    /// Transactions committed.
    pub counter: u64,
    /// Newest node.
    pub head: PPtr<Node>,
    /// Nodes in the list.
    pub len: u64,
}

/// A list node with a payload whose size and bytes derive from its value.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Node {
    /// The transaction number that created it.
    pub value: u64,
    /// Older node.
    pub next: PPtr<Node>,
    /// Its payload.
    pub payload: PSlice<u8>,
    /// `value ^ CHECK`.
    pub check: u64,
}

/// A small deterministic PRNG (xorshift64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from any `seed` (splitmix64, so nearby seeds give unrelated streams).
    pub fn seeded(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Payload size of transaction `value` under `seed`: mostly small, some large objects (which take
/// the in-place path under `Durability::Full`).
pub fn payload_size(seed: u64, value: u64) -> u64 {
    let mut r = Rng::seeded(seed ^ value.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match r.below(8) {
        0 => 70_000 + r.below(200_000),
        1 | 2 => 100 + r.below(5_000),
        _ => 1 + r.below(100),
    }
}

/// Payload byte of transaction `value`.
pub fn payload_byte(value: u64) -> u8 {
    (value % 251) as u8 + 1
}

/// Options of the workload's heap: a log small enough that checkpoints happen inside short
/// traces, large enough for the biggest payload under `Durability::None` (which logs it).
pub fn options(durability: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(640 << 10)
        .max_size(256 << 20)
        .durability(durability)
}

/// Run one workload transaction: append node `counter + 1`, trim to `KEEP`, and abort instead
/// of committing when `abort`. Returns the new counter.
pub fn step(heap: &Heap, seed: u64, abort: bool) -> txheap::Result<u64> {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut rt = *tx.get(root)?;
        let n = rt.counter + 1;
        let payload = tx.alloc_slice_zeroed::<u8>(payload_size(seed, n))?;
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
            return Err(Error::NoRoot); // deliberate abort: must leave no trace
        }
        Ok(n)
    })
}

/// Check a heap against the workload: returns the counter, or what is wrong.
pub fn verify(heap: &Heap, seed: u64) -> Result<u64, String> {
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
                let bytes = r.slice(n.payload)?;
                let intact = n.check == n.value ^ CHECK
                    && n.payload.len() == payload_size(seed, n.value)
                    && bytes.iter().all(|&b| b == payload_byte(n.value));
                nodes.push((p, n, intact));
                p = n.next;
            }
            if root.len as usize != nodes.len() {
                return Err(Error::Corrupt {
                    offset: 0,
                    what: format!("root.len {} but {} nodes", root.len, nodes.len()),
                });
            }
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
            "node {} is torn (check word, payload length or bytes wrong)",
            n.value
        ));
    }
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
            "allocator counts {used} bytes used, {reachable} reachable"
        ));
    }
    Ok(counter)
}

/// A recorded run: the file before it, and every operation after.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The file's bytes when recording began (fully durable: a closed heap).
    pub base: Vec<u8>,
    /// The operations, with `Mark(n)` after transaction `n` was acknowledged.
    pub events: Vec<TraceEvent>,
    /// The seed of the workload.
    pub seed: u64,
    /// The durability the workload ran under.
    pub durability: Durability,
}

/// Create a heap at `path`, close it (the base image), then reopen it with recording and run
/// `txns` workload transactions (some aborted), recording everything up to and including close.
pub fn record(path: &Path, seed: u64, durability: Durability, txns: u64) -> Recording {
    let _ = std::fs::remove_file(path);
    Heap::create(path, options(durability))
        .unwrap()
        .close()
        .unwrap();
    let base = std::fs::read(path).unwrap();
    let trace = Trace::default();
    let heap = Heap::open(path, options(durability).record(trace.clone())).unwrap();
    let mut rng = Rng::seeded(seed);
    let mut done = 0;
    while done < txns {
        let abort = rng.below(8) == 0;
        match step(&heap, seed, abort) {
            Ok(n) => {
                done += 1;
                trace.lock().unwrap().push(TraceEvent::Mark(n));
            }
            Err(Error::NoRoot) if abort => {}
            Err(e) => panic!("workload transaction failed: {e}"),
        }
    }
    heap.close().unwrap();
    let events = std::mem::take(&mut *trace.lock().unwrap());
    Recording {
        base,
        events,
        seed,
        durability,
    }
}

/// The disk as the simulator sees it at one instant of a recording.
#[derive(Debug, Clone)]
pub struct Disk {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// For each sector written since its last barrier: its states after each such write.
    pending: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Last acknowledged transaction so far.
    pub acked: u64,
    /// Barriers seen so far.
    pub barriers: u64,
}

impl Disk {
    /// The disk holding `base`, all durable.
    pub fn new(base: &[u8]) -> Disk {
        Disk {
            current: base.to_vec(),
            durable: base.to_vec(),
            pending: BTreeMap::new(),
            acked: 0,
            barriers: 0,
        }
    }

    fn ensure_len(&mut self, len: u64) {
        let len = len as usize;
        if self.current.len() < len {
            self.current.resize(len, 0);
        }
        if self.durable.len() < len {
            self.durable.resize(len, 0);
        }
    }

    fn sector(&self, s: u64) -> &[u8] {
        let a = (s * SECTOR) as usize;
        &self.current[a..(a + SECTOR as usize).min(self.current.len())]
    }

    /// Apply one recorded event.
    pub fn apply(&mut self, e: &TraceEvent) {
        match e {
            TraceEvent::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                self.ensure_len(end);
                self.current[*offset as usize..end as usize].copy_from_slice(bytes);
                for s in offset / SECTOR..end.div_ceil(SECTOR) {
                    let v = self.sector(s).to_vec();
                    self.pending.entry(s).or_default().push(v);
                }
            }
            TraceEvent::Barrier { offset, len } => {
                self.barriers += 1;
                for s in offset / SECTOR..(offset + len).div_ceil(SECTOR) {
                    if self.pending.remove(&s).is_some() {
                        let a = (s * SECTOR) as usize;
                        let b = (a + SECTOR as usize).min(self.current.len());
                        let (cur, dur) = (&self.current[a..b], &mut self.durable[a..b]);
                        dur.copy_from_slice(cur);
                    }
                }
            }
            TraceEvent::BarrierAll => {
                self.barriers += 1;
                self.durable.clone_from(&self.current);
                self.pending.clear();
            }
            TraceEvent::Grow { len } => self.ensure_len(*len),
            TraceEvent::Mark(n) => self.acked = *n,
        }
    }

    /// Each undecided sector and how many states it passed through since its last barrier.
    pub fn pending_sectors(&self) -> Vec<(u64, usize)> {
        self.pending.iter().map(|(&s, v)| (s, v.len())).collect()
    }

    /// Sectors that may be in more than one state after a crash now.
    pub fn undecided_sectors(&self) -> usize {
        self.pending.len()
    }

    /// A crash image: `choose(sector, versions)` picks 0 (the durable state) or `i` (the state
    /// after the `i`-th write since the last barrier) for each undecided sector.
    pub fn image(&self, mut choose: impl FnMut(u64, usize) -> usize) -> Vec<u8> {
        let mut img = self.durable.clone();
        for (&s, versions) in &self.pending {
            let k = choose(s, versions.len());
            if k > 0 {
                let a = (s * SECTOR) as usize;
                let v = &versions[k - 1];
                img[a..a + v.len()].copy_from_slice(v);
            }
        }
        img
    }
}

/// Why an image was refused.
#[derive(Debug, Clone)]
pub struct Violation {
    /// What went wrong.
    pub what: String,
    /// Event index of the crash.
    pub at_event: usize,
    /// Which image at that instant.
    pub image: usize,
}

/// Recover `image` (written to `path`) and check it against the workload. Returns the counter.
pub fn check_image(
    path: &Path,
    image: &[u8],
    rec: &Recording,
    acked: u64,
    deep: bool,
) -> Result<u64, String> {
    std::fs::write(path, image).map_err(|e| e.to_string())?;
    let heap =
        Heap::open(path, options(rec.durability)).map_err(|e| format!("recovery failed: {e}"))?;
    let c = verify(&heap, rec.seed)?;
    if c > acked + 1 {
        return Err(format!(
            "counter {c} but only {acked} acknowledged (a transaction appeared from nowhere)"
        ));
    }
    if rec.durability == Durability::Full && c < acked {
        return Err(format!(
            "counter {c} but {acked} acknowledged under Durability::Full (lost a commit)"
        ));
    }
    if deep {
        // The recovered heap must keep working and survive another reopen.
        step(&heap, rec.seed, false).map_err(|e| format!("commit after recovery failed: {e}"))?;
        heap.close()
            .map_err(|e| format!("close after recovery failed: {e}"))?;
        let heap = Heap::open(path, options(rec.durability))
            .map_err(|e| format!("second reopen failed: {e}"))?;
        let c2 = verify(&heap, rec.seed)?;
        if c2 != c + 1 {
            return Err(format!(
                "after recovery to {c} and one commit, reopen shows {c2}"
            ));
        }
    }
    Ok(c)
}

/// Power cuts *during recovery*: recover `image` while recording recovery's own writes and
/// barriers (and the close that follows), then cut power at every recorded instant (two extreme
/// images and `samples` random ones each) and recover again: the result must be exactly the state
/// the uninterrupted recovery gave. Returns (that counter, images checked).
pub fn check_recovery_crashes(
    dir: &Path,
    image: &[u8],
    rec: &Recording,
    samples: usize,
    rng: &mut Rng,
) -> Result<(u64, u64), String> {
    let path = dir.join("recovering.heap");
    std::fs::write(&path, image).map_err(|e| e.to_string())?;
    let trace = Trace::default();
    let heap = Heap::open(&path, options(rec.durability).record(trace.clone()))
        .map_err(|e| format!("recovery failed: {e}"))?;
    let c0 = verify(&heap, rec.seed)?;
    heap.close()
        .map_err(|e| format!("close after recovery failed: {e}"))?;
    let events = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
    let mut disk = Disk::new(image);
    let again = dir.join("recovered-again.heap");
    let mut images = 0;
    for (t, e) in events.iter().enumerate() {
        disk.apply(e);
        let n = if disk.undecided_sectors() == 0 {
            1
        } else {
            samples + 2
        };
        for i in 0..n {
            let img = match i {
                0 => disk.image(|_, _| 0),
                1 => disk.image(|_, v| v),
                _ => disk.image(|_, v| rng.below(v as u64 + 1) as usize),
            };
            images += 1;
            std::fs::write(&again, &img).map_err(|e| e.to_string())?;
            let heap = Heap::open(&again, options(rec.durability)).map_err(|e| {
                format!("power cut at recovery event {t} (image {i}): recovery failed: {e}")
            })?;
            let c = verify(&heap, rec.seed)
                .map_err(|e| format!("power cut at recovery event {t} (image {i}): {e}"))?;
            if c != c0 {
                return Err(format!("power cut at recovery event {t} (image {i}): recovered {c}, the uninterrupted recovery gave {c0}"));
            }
        }
    }
    Ok((c0, images))
}

/// Totals of a simulation.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Images recovered and checked.
    pub images: u64,
    /// Crash instants.
    pub instants: u64,
    /// Images whose counter was `acked + 1` (the in-flight transaction had committed).
    pub in_flight_landed: u64,
    /// Images recovered to fewer than `acked` (allowed under `None` only).
    pub lost_acked: u64,
    /// Images cut during the recovery of another image.
    pub recovery_images: u64,
    /// The violations found.
    pub violations: Vec<Violation>,
}

/// Simulate power cuts at every event of `rec` with `samples` random images per instant (plus
/// the two extremes). Images are recovered in `dir`. Every `recovery_every`-th instant (0: never)
/// the newest image is also recovered with power cuts during its recovery.
pub fn simulate(
    rec: &Recording,
    dir: &Path,
    samples: usize,
    sample_seed: u64,
    recovery_every: u64,
) -> Totals {
    let mut disk = Disk::new(&rec.base);
    let mut totals = Totals::default();
    let mut rng = Rng::seeded(sample_seed);
    let path = dir.join("image.heap");
    for (t, e) in rec.events.iter().enumerate() {
        disk.apply(e);
        if matches!(e, TraceEvent::Mark(_)) {
            continue; // same disk state as the previous instant
        }
        totals.instants += 1;
        let n = if disk.undecided_sectors() == 0 {
            1
        } else {
            samples + 2
        };
        for i in 0..n {
            let img = match i {
                0 => disk.image(|_, _| 0),
                1 => disk.image(|_, v| v),
                _ => disk.image(|_, v| rng.below(v as u64 + 1) as usize),
            };
            totals.images += 1;
            match check_image(&path, &img, rec, disk.acked, i < 2) {
                Ok(c) => {
                    if c == disk.acked + 1 {
                        totals.in_flight_landed += 1;
                    }
                    if c < disk.acked {
                        totals.lost_acked += 1;
                    }
                }
                Err(what) => totals.violations.push(Violation {
                    what,
                    at_event: t,
                    image: i,
                }),
            }
            if i == 1 && recovery_every > 0 && totals.instants % recovery_every == 0 {
                match check_recovery_crashes(dir, &img, rec, 2, &mut rng) {
                    Ok((_, n)) => totals.recovery_images += n,
                    Err(what) => totals.violations.push(Violation {
                        what,
                        at_event: t,
                        image: i,
                    }),
                }
            }
        }
    }
    totals
}
