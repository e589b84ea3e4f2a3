//! Superblock faults and the checkpoints after them (docs/ARCHITECTURE.md sections 4 and 9):
//! a fallback to the older slot, a salvage over frames of a newer generation, the counters'
//! step and the log's clearing, live inspection beside checkpoints and compaction, and hostile
//! slots and first frames. Written by the second independent review of the ninth session;
//! (A) failed when the step was bounded at 2 ahead and nothing cleared the log, (C) when the log
//! was cleared in one step, (F) before live checks retried an I/O error of a cut file, and (G)
//! named a superblock slot "the frame". Every test takes `LOCK`: one of them turns a sabotage
//! switch on, which is process-wide.

#![cfg(feature = "test-hooks")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use txheap::{Durability, Error, Heap, Options, PSlice, Trace, TraceEvent};
use txheap_recovery::txheap_log::{verified_frame_at, FrameBuilder};
use txheap_recovery::{
    select_superblock, MemStorage, Slot, Superblock, COUNTER_MAX, LOG_OFFSET, SUPERBLOCK_SLOT_LEN,
};

/// Held by every test here (the sabotage mask is process-wide).
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    count: u64,
    big: PSlice<u8>,
}

fn scratch() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn opts(d: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(1 << 20)
        .max_size(64 << 20)
        .reserve(256 << 20)
        .in_place_min(64 << 10)
        .durability(d)
}

/// Set the count to `i` (one root range: every such frame has the same length).
fn set_count(heap: &Heap, i: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        tx.get_mut(root)?.count = i;
        Ok(())
    })
    .unwrap()
}

/// Increment the count (and allocate a little); returns the new count.
fn incr(heap: &Heap) -> u64 {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        tx.alloc([7u8; 100])?;
        let r = tx.get_mut(root)?;
        r.count += 1;
        Ok(r.count)
    })
    .unwrap()
}

fn count(heap: &Heap) -> u64 {
    heap.read(|r| match r.root::<Root>() {
        Ok(root) => Ok(r.get(root)?.count),
        Err(Error::NoRoot) => Ok(0),
        Err(e) => Err(e),
    })
    .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn current(image: &[u8]) -> (Superblock, Slot) {
    select_superblock(&MemStorage::from_bytes(
        image[..LOG_OFFSET as usize].to_vec(),
    ))
    .unwrap()
}

fn flip(image: &mut [u8], slot: Slot) {
    image[slot.offset() as usize + 20] ^= 1;
}

fn log_frames(image: &[u8]) -> Vec<(usize, u64, u64, u64)> {
    let mut at = LOG_OFFSET as usize;
    let mut fr = Vec::new();
    while let Some(h) = verified_frame_at(&image[at..]) {
        fr.push((
            at - LOG_OFFSET as usize,
            h.generation,
            h.txid,
            h.frame_len(),
        ));
        at += h.frame_len() as usize;
    }
    fr
}

// ---------------------------------------------------------------------------------------------
// (A) A chain of slot faults in which this file's writers did write a header 3 ahead: with the
// step bounded at 2 ahead (and the log not cleared), the next fallback's checkpoint took a
// generation number again whose stale frames (same next_txid) replayed after a power cut.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_generation_three_ahead_is_never_reused_nor_its_stale_frames_replayed() {
    let _l = lock();
    let d = Durability::Full;
    let dir = scratch();
    let dir = dir.path();
    let p0 = dir.join("h0.heap");
    let heap = Heap::create(&p0, opts(d)).unwrap();
    set_count(&heap, 1);
    heap.close().unwrap();
    let img0 = std::fs::read(&p0).unwrap();
    let (sb0, cur0) = current(&img0);
    eprintln!(
        "closed: current {cur0:?} gen {} next_txid {}",
        sb0.generation, sb0.next_txid
    );

    // Fault 1 (loses nothing): the OLDER slot is damaged.
    let mut img = img0.clone();
    flip(&mut img, cur0.other());
    let p1 = write(dir, "h1.heap", &img);
    let heap = Heap::open(&p1, opts(d)).unwrap();
    for i in 10..=14 {
        set_count(&heap, i); // first commit: kept generation, checkpoint by 2 over the damage
    }
    let s = heap.stats().unwrap();
    eprintln!("life X: gen {} commits 10..=14", s.log_generation);
    let img1 = std::fs::read(&p1).unwrap();
    std::mem::forget(heap);
    eprintln!("life X log: {:?}", log_frames(&img1));
    let (sb1, cur1) = current(&img1);

    // Fault 2: the current slot (life X's) is damaged with X's frames in the log: refused, then
    // salvaged (the user knowingly drops 10..=14). The salvage's checkpoint steps by 3.
    let mut img = img1.clone();
    flip(&mut img, cur1);
    let p2 = write(dir, "h2.heap", &img);
    let e = Heap::open(&p2, opts(d)).map(|h| count(&h)).unwrap_err();
    eprintln!("fault 2 open: {e}");
    let heap = Heap::open(&p2, opts(d).salvage(true)).unwrap();
    let s = heap.stats().unwrap();
    eprintln!(
        "salvage: gen {} (X was {}), count {}, salvaged {:?}",
        s.log_generation,
        sb1.generation,
        count(&heap),
        s.salvaged
    );
    let img2 = std::fs::read(&p2).unwrap();
    std::mem::forget(heap);
    let (_sb2, cur2) = current(&img2);

    // Fault 3 (loses nothing: the salvage's generation has no frame): its slot is damaged. The
    // open falls back silently; the first commit's checkpoint steps by 2 only (the header 3
    // ahead at the log's start is past the cap), back to life X's generation and next_txid.
    let mut img = img2.clone();
    flip(&mut img, cur2);
    let p3 = write(dir, "h3.heap", &img);
    let heap = Heap::open(&p3, opts(d)).unwrap();
    eprintln!("fault 3 open: ok, count {}", count(&heap));
    set_count(&heap, 20); // acknowledged (Full)
    let s = heap.stats().unwrap();
    eprintln!(
        "life Z: gen {} (life X was gen {}), next_txid {}",
        s.log_generation, sb1.generation, s.next_txid
    );
    let img3 = std::fs::read(&p3).unwrap();
    std::mem::forget(heap);
    eprintln!("log after Z's commit: {:?}", log_frames(&img3));
    // A power cut: every write so far is durable.
    let p4 = write(dir, "h4.heap", &img3);
    let r = Heap::open(&p4, opts(d)).map(|h| count(&h));
    eprintln!("open after the power cut (acknowledged count 20): {r:?}");
    assert!(matches!(r, Ok(20)), "acknowledged 20, recovered {r:?}");
}

// ---------------------------------------------------------------------------------------------
// (B) Ordinary use, with images at every step (kill -9: the page cache), and a single slot fault
// on each image: the damaged current or older slot (one bit), or the last write of a slot lost
// (its bytes as at the previous step). Each must open with every acknowledged transaction or be
// refused (then salvage opens), and after it two commits and a power cut must read back.
// Also: open_read_only, salvage_read_only, inspect::check on each.
// ---------------------------------------------------------------------------------------------

struct Step {
    what: String,
    image: Vec<u8>,
    committed: u64,
    acked: u64,
    opts: Options,
}

fn take(steps: &mut Vec<Step>, what: &str, path: &Path, committed: u64, acked: u64, o: &Options) {
    steps.push(Step {
        what: what.into(),
        image: std::fs::read(path).unwrap(),
        committed,
        acked,
        opts: o.clone(),
    });
}

fn grow_and_free(heap: &Heap) {
    let big = heap
        .transaction(|tx| tx.alloc_slice(&vec![5u8; 4 << 20]))
        .unwrap();
    heap.transaction(|tx| tx.free_slice(big)).unwrap();
}

/// Ordinary use under `d`; returns the images after each step (and of copies).
fn ordinary_steps(d: Durability, dir: &Path) -> Vec<Step> {
    let path = dir.join("live.heap");
    let o = opts(d);
    let mut steps = Vec::new();
    let mut c;
    let mut acked = 0u64;
    let flush = |h: &Heap, c: u64, acked: &mut u64| {
        if d == Durability::None {
            h.flush().unwrap();
        }
        *acked = c;
    };
    let heap = Heap::create(&path, o.clone()).unwrap();
    c = incr(&heap);
    c = c.max(incr(&heap));
    flush(&heap, c, &mut acked);
    take(&mut steps, "create, 2 commits", &path, c, acked, &o);
    heap.close().unwrap();
    acked = c;
    take(&mut steps, "close", &path, c, acked, &o);
    let heap = Heap::open(&path, o.clone()).unwrap();
    take(&mut steps, "reopen (kept generation)", &path, c, acked, &o);
    c = incr(&heap);
    flush(&heap, c, &mut acked);
    take(&mut steps, "commit after reopen", &path, c, acked, &o);
    heap.checkpoint().unwrap();
    acked = c;
    take(&mut steps, "checkpoint", &path, c, acked, &o);
    c = incr(&heap);
    c = incr(&heap).max(c);
    if d == Durability::None {
        take(&mut steps, "2 commits, unflushed", &path, c, acked, &o);
    }
    flush(&heap, c, &mut acked);
    take(&mut steps, "2 commits", &path, c, acked, &o);
    grow_and_free(&heap);
    heap.compact().unwrap();
    acked = c;
    take(&mut steps, "compact", &path, c, acked, &o);
    c = incr(&heap);
    flush(&heap, c, &mut acked);
    take(&mut steps, "commit after compact", &path, c, acked, &o);
    heap.set_max_size(128 << 20).unwrap();
    acked = c;
    take(&mut steps, "set_max_size", &path, c, acked, &o);
    c = incr(&heap);
    flush(&heap, c, &mut acked);
    take(&mut steps, "commit after set_max_size", &path, c, acked, &o);
    let o = o.max_size(128 << 20);
    // Copies.
    let bk = dir.join("backup.heap");
    heap.backup_to(&bk).unwrap();
    take(&mut steps, "backup_to copy", &bk, c, c, &o);
    let ck = dir.join("compact.heap");
    heap.compact_to(&ck).unwrap();
    take(&mut steps, "compact_to copy", &ck, c, c, &o);
    // Group commit: four threads (under None, plain concurrent commits).
    let n = AtomicU64::new(c);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    let v = incr(&heap);
                    n.fetch_max(v, Ordering::Relaxed);
                }
            });
        }
    });
    c = n.load(Ordering::Relaxed);
    flush(&heap, c, &mut acked);
    take(&mut steps, "group commit", &path, c, acked, &o);
    // A kill: recovery replays and checkpoints.
    std::mem::forget(heap);
    let img = std::fs::read(&path).unwrap();
    let path2 = dir.join("live2.heap");
    std::fs::write(&path2, &img).unwrap();
    let heap = Heap::open(&path2, o.clone()).unwrap();
    assert_eq!(count(&heap), c);
    acked = c;
    take(
        &mut steps,
        "open after a kill (recovery's checkpoint)",
        &path2,
        c,
        acked,
        &o,
    );
    c = incr(&heap);
    flush(&heap, c, &mut acked);
    take(&mut steps, "commit after recovery", &path2, c, acked, &o);
    heap.close().unwrap();
    acked = c;
    let o2 = o.clone().max_size(192 << 20);
    let heap = Heap::open(&path2, o2.clone()).unwrap();
    take(
        &mut steps,
        "reopen with a new max_size",
        &path2,
        c,
        acked,
        &o2,
    );
    c = incr(&heap);
    flush(&heap, c, &mut acked);
    take(&mut steps, "commit after it", &path2, c, acked, &o2);
    heap.close().unwrap();
    let heap = Heap::open(&path2, o2.clone().salvage(true)).unwrap();
    take(
        &mut steps,
        "salvage open of a healthy heap",
        &path2,
        c,
        acked,
        &o2,
    );
    c = incr(&heap);
    flush(&heap, c, &mut acked);
    take(&mut steps, "commit after it", &path2, c, acked, &o2);
    heap.close().unwrap();
    steps
}

/// Open `p` (a faulted image): returns a failure text, or None.
fn check_faulted(what: &str, p: &Path, s: &Step, dir: &Path, k: usize) -> Option<String> {
    let o = s.opts.clone();
    let before = std::fs::read(p).unwrap();
    // Read-only opens and inspection first (they write nothing).
    let ro = Heap::open_read_only(p).map(|h| count(&h));
    let sro = Heap::salvage_read_only(p).map(|h| count(&h));
    let chk = txheap::inspect::check(p, &mut |_, _| {});
    if std::fs::read(p).unwrap() != before {
        return Some(format!("{what}: a read-only open or check wrote"));
    }
    let r = Heap::open(p, o.clone());
    eprintln!(
        "  {what}: open {:?}, ro {ro:?}, salvage_ro {sro:?}, check {:?}",
        r.as_ref()
            .map(count)
            .map_err(|e| e.to_string().chars().take(60).collect::<String>()),
        chk.as_ref().map(|r| r.verdict)
    );
    let verdict = chk.as_ref().map(|r| r.verdict).map_err(|e| e.to_string());
    let floor = s.acked;
    match r {
        Ok(h) => {
            let got = count(&h);
            if got < floor || got > s.committed {
                return Some(format!(
                    "{what}: opened with count {got}, acknowledged {floor}..={} (ro {ro:?}, check {verdict:?})",
                    s.committed
                ));
            }
            if !matches!(ro, Ok(x) if x == got) {
                return Some(format!("{what}: open {got}, read-only {ro:?}"));
            }
            if !matches!(sro, Ok(x) if x == got) {
                return Some(format!("{what}: open {got}, salvage_read_only {sro:?}"));
            }
            if matches!(verdict, Ok(txheap::inspect::Verdict::Damaged) | Err(_)) {
                return Some(format!("{what}: opens ({got}) but check says {verdict:?}"));
            }
            after_commits(what, h, got, dir, k, &o)
        }
        Err(Error::LogDamaged { .. }) => {
            if !matches!(ro, Err(Error::LogDamaged { .. })) {
                return Some(format!("{what}: open LogDamaged, read-only {ro:?}"));
            }
            if sro.is_err() {
                return Some(format!(
                    "{what}: open LogDamaged, salvage_read_only {sro:?}"
                ));
            }
            if !matches!(verdict, Ok(txheap::inspect::Verdict::Damaged)) {
                return Some(format!("{what}: open LogDamaged, check says {verdict:?}"));
            }
            if std::fs::read(p).unwrap() != before {
                return Some(format!("{what}: a refused open wrote"));
            }
            match Heap::open(p, o.clone().salvage(true)) {
                Ok(h) => {
                    let got = count(&h);
                    after_commits(&format!("{what} (salvaged)"), h, got, dir, k, &o)
                }
                Err(e) => Some(format!("{what}: refused and the salvage fails: {e}")),
            }
        }
        // The only written slot damaged (a new file, a copy: slot B all zero): no fallback.
        Err(Error::Corrupt { .. }) if s.image[4096..4096 + 128].iter().all(|&b| b == 0) => None,
        Err(e) => Some(format!(
            "{what}: refused with {e} (ro {ro:?}, check {verdict:?})"
        )),
    }
}

/// Two commits (set to distinct values), a power cut (page cache image), reopen, then one
/// more commit, close, reopen: the last values must read back.
fn after_commits(
    what: &str,
    h: Heap,
    got: u64,
    dir: &Path,
    k: usize,
    o: &Options,
) -> Option<String> {
    let v1 = 1_000_000 + got;
    set_count(&h, v1);
    set_count(&h, v1 + 1);
    if h.durability() == Durability::None {
        h.flush().unwrap();
    }
    let path = h.path().to_path_buf();
    let img = std::fs::read(&path).unwrap();
    std::mem::forget(h);
    let q = write(dir, &format!("cut-{k}.heap"), &img);
    let r = Heap::open(&q, o.clone());
    let h = match r {
        Ok(h) => h,
        Err(e) => {
            return Some(format!(
                "{what}: after the fallback, 2 commits and a cut: {e}"
            ))
        }
    };
    if count(&h) != v1 + 1 {
        return Some(format!(
            "{what}: after 2 commits (last {}) and a cut: count {}",
            v1 + 1,
            count(&h)
        ));
    }
    set_count(&h, v1 + 2);
    h.close().unwrap();
    match Heap::open(&q, o.clone()).map(|h| count(&h)) {
        Ok(x) if x == v1 + 2 => None,
        r => Some(format!(
            "{what}: after close and reopen: {r:?} (want {})",
            v1 + 2
        )),
    }
}

fn fault_images(prev: Option<&Step>, s: &Step) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("healthy".to_string(), s.image.clone())];
    for slot in [Slot::A, Slot::B] {
        let mut img = s.image.clone();
        flip(&mut img, slot);
        out.push((format!("flip {slot:?}"), img));
        if let Some(p) = prev {
            let a = slot.offset() as usize;
            let n = SUPERBLOCK_SLOT_LEN as usize;
            if p.image[a..a + 128] != s.image[a..a + 128] {
                let mut img = s.image.clone();
                img[a..a + n].copy_from_slice(&p.image[a..a + n]);
                out.push((format!("lost write of {slot:?}"), img));
            }
        }
    }
    out
}

#[test]
fn ordinary_use_then_one_slot_fault_never_loses_silently() {
    let _l = lock();
    let mut failures = Vec::new();
    let mut runs = 0;
    for d in [Durability::Full, Durability::None] {
        let dir = scratch();
        let steps = ordinary_steps(d, dir.path());
        let work = scratch();
        for (i, s) in steps.iter().enumerate() {
            let prev = if i > 0 && !s.what.contains("copy") && !steps[i - 1].what.contains("copy") {
                Some(&steps[i - 1])
            } else {
                None
            };
            for (j, (fault, img)) in fault_images(prev, s).into_iter().enumerate() {
                let k = i * 10 + j;
                let p = write(work.path(), &format!("f-{k}.heap"), &img);
                let what = format!("{d:?} step {i} '{}' + {fault}", s.what);
                let r = check_faulted(&what, &p, s, work.path(), k);
                runs += 1;
                eprintln!("{what}: {}", r.as_deref().unwrap_or("ok"));
                if let Some(f) = r {
                    failures.push(f);
                }
            }
        }
    }
    eprintln!("{runs} images checked");
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// (C) Power loss at every write/barrier instant of ordinary use that starts from a fallback
// (a damaged older slot; a damaged current slot with no frame; after a salvage over newer
// frames): the step rule in checkpoints under crashes. Mini disk model as crash-tests' (512-byte
// sectors; pending sectors per barrier), extremes and seeded random images per instant.
// ---------------------------------------------------------------------------------------------

struct Disk {
    cur: Vec<u8>,
    durable: Vec<u8>,
    pending: std::collections::BTreeMap<u64, Vec<Vec<u8>>>,
    acked: u64,
}

const SECTOR: u64 = 512;

impl Disk {
    fn new(base: &[u8]) -> Disk {
        Disk {
            cur: base.to_vec(),
            durable: base.to_vec(),
            pending: Default::default(),
            acked: 0,
        }
    }
    fn ensure(&mut self, len: usize) {
        if self.cur.len() < len {
            self.cur.resize(len, 0);
        }
        if self.durable.len() < len {
            self.durable.resize(len, 0);
        }
    }
    fn settle(&mut self, s: u64) {
        let a = (s * SECTOR) as usize;
        let b = (a + SECTOR as usize).min(self.cur.len());
        let v = self.cur[a..b].to_vec();
        self.durable[a..b].copy_from_slice(&v);
    }
    fn apply(&mut self, e: &TraceEvent) {
        match e {
            TraceEvent::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                self.ensure(end as usize);
                self.cur[*offset as usize..end as usize].copy_from_slice(bytes);
                for s in offset / SECTOR..end.div_ceil(SECTOR) {
                    let a = (s * SECTOR) as usize;
                    let b = (a + SECTOR as usize).min(self.cur.len());
                    let v = self.cur[a..b].to_vec();
                    self.pending.entry(s).or_default().push(v);
                }
            }
            TraceEvent::Barrier { offset, len } => {
                for s in offset / SECTOR..(offset + len).div_ceil(SECTOR) {
                    if self.pending.remove(&s).is_some() {
                        self.settle(s);
                    }
                }
            }
            TraceEvent::BarrierAll => {
                let all: Vec<u64> = self.pending.keys().copied().collect();
                self.pending.clear();
                for s in all {
                    self.settle(s);
                }
            }
            TraceEvent::Grow { len } => self.ensure(*len as usize),
            TraceEvent::Shrink { len } => {
                let len = *len as usize;
                self.cur.truncate(len);
                self.durable.truncate(len);
                let first = (len as u64).div_ceil(SECTOR);
                self.pending.retain(|&s, _| s < first);
            }
            TraceEvent::Mark(n) => self.acked = self.acked.max(*n),
        }
    }
    /// Image: each pending sector takes state `pick(sector, states)` (0 = durable).
    fn image(&self, pick: &mut dyn FnMut(usize) -> usize) -> Vec<u8> {
        let mut img = self.durable.clone();
        for (&s, states) in &self.pending {
            let k = pick(states.len());
            if k > 0 {
                let a = (s * SECTOR) as usize;
                let st = &states[k - 1];
                if a + st.len() <= img.len() {
                    img[a..a + st.len()].copy_from_slice(st);
                }
            }
        }
        img
    }
}

fn mark(trace: &Trace, n: u64) {
    trace.lock().unwrap().push(TraceEvent::Mark(n));
}

/// Record ordinary use from `base` (opened at `path`): returns the events.
fn record_use(d: Durability, path: &Path, o: &Options) -> (Vec<TraceEvent>, u64) {
    let trace = Trace::default();
    let heap = Heap::open(path, o.clone().record(trace.clone())).unwrap();
    let mut c = count(&heap);
    mark(&trace, c);
    for round in 0..3 {
        for _ in 0..3 {
            c = incr(&heap);
            if d == Durability::Full {
                mark(&trace, c);
            }
        }
        if d == Durability::None {
            heap.flush().unwrap();
            mark(&trace, c);
        }
        match round {
            0 => heap.checkpoint().unwrap(),
            1 => {
                grow_and_free(&heap);
                heap.compact().unwrap();
            }
            _ => {}
        }
    }
    heap.close().unwrap();
    mark(&trace, c);
    let ev = std::mem::take(&mut *trace.lock().unwrap());
    (ev, c)
}

fn simulate(what: &str, d: Durability, base: &[u8], dir: &Path, failures: &mut Vec<String>) -> u64 {
    let o = opts(d);
    let live = write(dir, "sim-live.heap", base);
    let (events, last) = record_use(d, &live, &o);
    eprintln!("{what} {d:?}: {} events, last count {last}", events.len());
    let mut disk = Disk::new(base);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut images = 0;
    let mut seen = std::collections::HashSet::new();
    for (t, e) in events.iter().enumerate() {
        disk.apply(e);
        if matches!(e, TraceEvent::Mark(_)) {
            continue;
        }
        let mut imgs = vec![disk.image(&mut |_| 0), disk.image(&mut |n| n)];
        for _ in 0..16 {
            imgs.push(disk.image(&mut |n| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize % (n + 1)
            }));
        }
        for img in imgs {
            let h = {
                use std::hash::{Hash, Hasher};
                let mut s = std::collections::hash_map::DefaultHasher::new();
                img.hash(&mut s);
                s.finish()
            };
            if !seen.insert(h) {
                continue;
            }
            images += 1;
            let p = write(dir, "sim-img.heap", &img);
            let r = Heap::open(&p, o.clone()).map(|h| count(&h));
            match r {
                Ok(x) if x >= disk.acked && x <= last => {}
                r => {
                    failures.push(format!(
                        "{what} {d:?}: cut at event {t}: {r:?} (acknowledged {})",
                        disk.acked
                    ));
                    if failures.len() > 20 {
                        return images;
                    }
                }
            }
        }
    }
    images
}

#[test]
fn power_loss_after_a_fallback_or_salvage_opens_every_image() {
    let _l = lock();
    let failures = power_loss_after_a_fallback(&[Durability::Full, Durability::None]);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The same with the log cleared in one step (sabotage switch `SCRUB_IN_ONE_STEP`): the model
/// must find a false refusal (a first sector of zeros beside stale frames vouching for it).
#[test]
fn clearing_the_log_in_one_step_is_caught() {
    let _l = lock();
    txheap_recovery::sabotage::set(txheap_recovery::sabotage::SCRUB_IN_ONE_STEP);
    let failures = power_loss_after_a_fallback(&[Durability::Full]);
    txheap_recovery::sabotage::set(0);
    assert!(
        !failures.is_empty(),
        "clearing the log in one step went unnoticed"
    );
    eprintln!(
        "SCRUB_IN_ONE_STEP: caught ({} failures; first: {})",
        failures.len(),
        failures[0]
    );
}

/// (C)'s images under each of `durabilities`; returns the failures.
fn power_loss_after_a_fallback(durabilities: &[Durability]) -> Vec<String> {
    let mut failures = Vec::new();
    for &d in durabilities {
        let dir = scratch();
        let dir = dir.path();
        // A closed heap with a few commits.
        let p = dir.join("base.heap");
        let heap = Heap::create(&p, opts(d)).unwrap();
        for _ in 0..3 {
            incr(&heap);
        }
        heap.close().unwrap();
        let closed = std::fs::read(&p).unwrap();
        let (_, cur) = current(&closed);

        // 1. The older slot damaged.
        let mut b1 = closed.clone();
        flip(&mut b1, cur.other());
        // 2. The current slot damaged (its generation has no frame: a silent fallback).
        let mut b2 = closed.clone();
        flip(&mut b2, cur);
        // 3. After a salvage over newer frames: frames of the current generation, its slot
        // damaged, salvaged (the salvage's checkpoint stepped), closed.
        let p3 = dir.join("b3.heap");
        std::fs::write(&p3, &closed).unwrap();
        let heap = Heap::open(&p3, opts(d)).unwrap();
        for _ in 0..4 {
            incr(&heap);
        }
        heap.flush().unwrap();
        let mut img = std::fs::read(&p3).unwrap();
        std::mem::forget(heap);
        let (_, c3) = current(&img);
        flip(&mut img, c3);
        let p3b = write(dir, "b3b.heap", &img);
        assert!(matches!(
            Heap::open(&p3b, opts(d)),
            Err(Error::LogDamaged { .. })
        ));
        let heap = Heap::open(&p3b, opts(d).salvage(true)).unwrap();
        std::mem::forget(heap); // its checkpoint is durable; stale newer frames stay in the log
        let b3 = std::fs::read(&p3b).unwrap();

        for (what, base) in [
            ("older slot damaged", b1),
            ("current slot damaged, no frames", b2),
            ("after a salvage over newer frames", b3),
        ] {
            let n = simulate(what, d, &base, dir, &mut failures);
            eprintln!("{d:?} {what}: {n} distinct images");
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------
// (D) Hostile bytes: a crafted verifying frame at the log's start with a newer generation
// (extreme txids, a long payload), crafted slots with counters near COUNTER_MAX; every open,
// check and salvage must end with a clean result or error, never a panic or a hang.
// ---------------------------------------------------------------------------------------------

fn all_paths(p: &Path, d: Durability) -> Vec<String> {
    let mut out = Vec::new();
    let show = |r: txheap::Result<u64>| match r {
        Ok(x) => format!("Ok({x})"),
        Err(e) => format!(
            "Err({})",
            e.to_string().chars().take(160).collect::<String>()
        ),
    };
    let img = std::fs::read(p).unwrap();
    out.push(format!(
        "open_read_only: {}",
        show(Heap::open_read_only(p).map(|h| count(&h)))
    ));
    out.push(format!(
        "salvage_read_only: {}",
        show(Heap::salvage_read_only(p).map(|h| count(&h)))
    ));
    out.push(format!(
        "check: {:?}",
        txheap::inspect::check(p, &mut |_, _| {}).map(|r| r.verdict)
    ));
    out.push(format!(
        "read_log: {:?}",
        txheap::inspect::read_log(p).map(|l| l.end)
    ));
    out.push(format!(
        "open: {}",
        show(Heap::open(p, opts(d)).map(|h| count(&h)))
    ));
    std::fs::write(p, &img).unwrap();
    let s = Heap::open(p, opts(d).salvage(true)).and_then(|h| {
        let c = count(&h);
        h.transaction(|tx| {
            let root = tx.root::<Root>()?;
            tx.get_mut(root)?.count = 99;
            Ok(())
        })?;
        let g = h.stats()?.log_generation;
        h.close()?;
        let again = Heap::open(p, opts(d))?;
        Ok(c * 1_000_000 + count(&again) * 1000 + g.min(999))
    });
    out.push(format!("salvage, commit, close, reopen: {}", show(s)));
    out
}

#[test]
fn hostile_newer_frames_and_slots_end_cleanly() {
    let _l = lock();
    let d = Durability::Full;
    let dir = scratch();
    let dir = dir.path();
    let p = dir.join("h.heap");
    let heap = Heap::create(&p, opts(d)).unwrap();
    set_count(&heap, 5);
    heap.close().unwrap();
    let base = std::fs::read(&p).unwrap();
    let (sb, cur) = current(&base);
    let log = LOG_OFFSET as usize;
    let heap_off = sb.heap_offset();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (gen, txid, payload) in [
        (sb.generation + 1, 0u64, 0usize),
        (sb.generation + 1, u64::MAX, 0),
        (sb.generation + 1, COUNTER_MAX, 0),
        (sb.generation + 2, sb.next_txid, 100),
        (sb.generation + 3, sb.next_txid, 100),
        (u64::MAX, u64::MAX - 1, 0),
        (sb.generation + 1, sb.next_txid, (1 << 20) - 4096),
    ] {
        let mut img = base.clone();
        let mut b = FrameBuilder::new();
        if payload > 0 {
            b.push_range(heap_off + 4096 * 4, &vec![0xAB; payload])
                .unwrap();
        }
        let f = b.finish(gen, txid).to_vec();
        if f.len() > (1 << 20) {
            continue;
        }
        img[log..log + f.len()].copy_from_slice(&f);
        // A chain after it, txids following (u64::MAX wraps: checked).
        let mut at = log + f.len();
        let mut t = txid;
        for _ in 0..3 {
            let Some(n) = t.checked_add(1) else { break };
            t = n;
            let g = FrameBuilder::new().finish(gen, t).to_vec();
            if at + g.len() > log + (1 << 20) {
                break;
            }
            img[at..at + g.len()].copy_from_slice(&g);
            at += g.len();
        }
        cases.push((
            format!("frame gen {gen} txid {txid} payload {payload}"),
            img,
        ));
    }
    // Slots with counters near COUNTER_MAX, the other slot damaged (step 2) and a newer
    // header at the log's start (step 3).
    for (seq, gen) in [
        (COUNTER_MAX - 1, COUNTER_MAX - 1),
        (COUNTER_MAX - 2, COUNTER_MAX - 2),
        (COUNTER_MAX, COUNTER_MAX),
    ] {
        let mut img = base.clone();
        let s2 = Superblock {
            seq,
            generation: gen,
            ..sb
        };
        let a = cur.offset() as usize;
        img[a..a + 128].copy_from_slice(&s2.encode());
        let o = cur.other().offset() as usize;
        img[o + 20] ^= 1;
        cases.push((format!("slot seq/gen {seq}, other damaged"), img.clone()));
        let f = FrameBuilder::new()
            .finish(gen.saturating_add(1), s2.next_txid)
            .to_vec();
        img[log..log + f.len()].copy_from_slice(&f);
        cases.push((
            format!("slot seq/gen {seq}, other damaged, newer frame"),
            img,
        ));
    }
    for (what, img) in cases {
        std::fs::write(&p, &img).unwrap();
        let t0 = std::time::Instant::now();
        let r = std::panic::catch_unwind(|| all_paths(&p, d));
        eprintln!("{what} ({:?}):", t0.elapsed());
        match r {
            Ok(lines) => {
                for l in lines {
                    eprintln!("    {l}");
                }
            }
            Err(_) => panic!("{what}: panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (E) Does the committed sealed fuzz corpus reach the new rule (a verifying frame at the log's
// start of a newer generation: LogDamaged naming a superblock slot)?
// ---------------------------------------------------------------------------------------------

#[path = "../fuzz/sealed.rs"]
#[allow(unused_imports)]
mod sealed;

#[test]
fn sealed_corpus_coverage_of_the_newer_frame_rule() {
    let _l = lock();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let dir = scratch();
    let p = dir.path().join("s.heap");
    let (mut n, mut newer_first, mut newer_rule) = (0, 0, 0);
    for sub in ["corpus-sealed-min", "regressions-sealed"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            let img = sealed::build(&data);
            n += 1;
            if img.len() < LOG_OFFSET as usize + 64 {
                continue;
            }
            if let Ok((sb, _)) =
                select_superblock(&MemStorage::from_bytes(img[..LOG_OFFSET as usize].to_vec()))
            {
                if let Some(h) = verified_frame_at(&img[LOG_OFFSET as usize..]) {
                    if h.generation > sb.generation {
                        newer_first += 1;
                    }
                }
            }
            std::fs::write(&p, &img).unwrap();
            if let Err(Error::LogDamaged { voucher_offset, .. }) = Heap::open_read_only(&p) {
                if voucher_offset < LOG_OFFSET && voucher_offset % SUPERBLOCK_SLOT_LEN == 0 {
                    newer_rule += 1;
                }
            }
        }
    }
    eprintln!("{n} sealed inputs: {newer_first} with a verifying newer-generation first frame, {newer_rule} refused by the new rule");
    // The corpus reaches the rule (85 of 1,453 inputs when written), and every input it refuses
    // has such a frame.
    assert!(
        newer_rule > 0,
        "no sealed input reaches the newer-generation rule"
    );
    assert!(
        newer_rule <= newer_first,
        "{newer_rule} refusals, {newer_first} candidates"
    );
}

// ---------------------------------------------------------------------------------------------
// (F) Live inspection beside a writer that checkpoints, compacts, raises max_size and flushes,
// starting from a heap whose older slot is damaged (the first checkpoint steps by 2): no check,
// read_log or stats may report damage or fail other than Locked.
// ---------------------------------------------------------------------------------------------

#[test]
fn live_inspection_beside_checkpoints_compaction_and_flushes() {
    let _l = lock();
    for d in [Durability::Full, Durability::None] {
        let dir = scratch();
        let path = dir.path().join("h.heap");
        let heap = Heap::create(&path, opts(d)).unwrap();
        incr(&heap);
        heap.close().unwrap();
        let mut img = std::fs::read(&path).unwrap();
        let (_, cur) = current(&img);
        flip(&mut img, cur.other());
        std::fs::write(&path, &img).unwrap();
        let heap = Heap::open(&path, opts(d)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut checks, mut bad) = (0u64, Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                let mut max = 64u64 << 20;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    incr(&heap);
                    if d == Durability::None && i % 3 == 0 {
                        heap.flush().unwrap();
                    }
                    match i % 40 {
                        7 | 19 => heap.checkpoint().unwrap(),
                        29 => {
                            grow_and_free(&heap);
                            heap.compact().unwrap();
                        }
                        37 if max < (200 << 20) => {
                            max += 4 << 20;
                            heap.set_max_size(max).unwrap();
                        }
                        _ => {}
                    }
                }
            });
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(3) {
                let what = checks % 3;
                let r: Result<(), String> = match what {
                    0 => match txheap::inspect::check(&path, &mut |_, _| {}) {
                        Ok(r) if r.verdict == txheap::inspect::Verdict::Damaged => {
                            Err(format!("check: {:?}", r.findings))
                        }
                        Ok(_) | Err(Error::Locked { .. }) => Ok(()),
                        Err(e) => Err(format!("check: {e}")),
                    },
                    1 => match txheap::inspect::read_log(&path) {
                        Ok(l) if matches!(l.end, txheap::inspect::LogEnd::Damaged { .. }) => {
                            Err(format!("read_log: {:?}", l.end))
                        }
                        Ok(_) | Err(Error::Locked { .. }) => Ok(()),
                        Err(e) => Err(format!("read_log: {e}")),
                    },
                    _ => match txheap::inspect::stats(&path) {
                        Ok(_) | Err(Error::Locked { .. }) => Ok(()),
                        Err(e) => Err(format!("stats: {e}")),
                    },
                };
                checks += 1;
                if let Err(e) = r {
                    bad.push(e);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        let s = heap.stats().unwrap();
        eprintln!(
            "{d:?}: {checks} live inspections over {} commits, {} checkpoints, generation {}: {} bad",
            s.commits,
            s.checkpoints,
            s.log_generation,
            bad.len()
        );
        heap.close().unwrap();
        assert!(bad.is_empty(), "{d:?}: {bad:#?}");
    }
}

/// (F2) The failure (F) found, narrowed: under `None`, `inspect::check` beside a writer whose
/// only other work is compaction (an in-place 4 MiB allocation, freed, the tail cut).
#[test]
fn live_check_beside_compaction_under_none() {
    let _l = lock();
    let d = Durability::None;
    let dir = scratch();
    let path = dir.path().join("h.heap");
    let heap = Heap::create(&path, opts(d)).unwrap();
    incr(&heap);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut checks, mut bad) = (0u64, Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                incr(&heap);
                grow_and_free(&heap);
                heap.compact().unwrap();
            }
        });
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(3) {
            checks += 1;
            match txheap::inspect::check(&path, &mut |_, _| {}) {
                Ok(r) if r.verdict == txheap::inspect::Verdict::Damaged => {
                    bad.push(format!("{:?}", r.findings))
                }
                Ok(_) | Err(Error::Locked { .. }) => {}
                Err(e) => bad.push(format!("{e:?}")),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "{checks} live checks beside compaction: {} failed: {bad:#?}",
        bad.len()
    );
    assert!(bad.is_empty());
}

/// (G) What `inspect::check` (behind `txheap check`) says of a damaged current slot over its
/// generation's frames (the image media_faults' test refuses).
#[test]
fn check_findings_for_a_damaged_current_slot_over_frames() {
    let _l = lock();
    let d = Durability::Full;
    let dir = scratch();
    let p = dir.path().join("h.heap");
    let heap = Heap::create(&p, opts(d)).unwrap();
    set_count(&heap, 1);
    heap.checkpoint().unwrap();
    for i in 2..=4 {
        set_count(&heap, i);
    }
    let mut img = std::fs::read(&p).unwrap();
    std::mem::forget(heap);
    let (_, cur) = current(&img);
    flip(&mut img, cur);
    let q = write(dir.path(), "f.heap", &img);
    let r = txheap::inspect::check(&q, &mut |_, _| {}).unwrap();
    eprintln!("verdict {:?}", r.verdict);
    eprintln!("log frames {:?}", log_frames(&img));
    eprintln!("log end {:?}", r.log.as_ref().map(|l| l.end.clone()));
    eprintln!(
        "open {:?}",
        Heap::open_read_only(&q)
            .map(|h| count(&h))
            .map_err(|e| e.to_string())
    );
    for f in &r.findings {
        eprintln!("  {f:?}");
    }
}
