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
//! The image is written to a file (in the caller's directory; the tests and the binary use
//! tmpfs, `/dev/shm`, where there is one), opened (recovery runs), and must hold a committed
//! prefix: the workload's counter `c` and list must be intact (every node and payload byte as
//! the deterministic workload wrote it, the allocator's used bytes equal to what is reachable),
//! with `acked <= c <= acked + 1` under `Durability::Full`, where `acked` is the last
//! transaction acknowledged before `t`; under `Durability::None`, `c <= acked + 1` (a power cut
//! may lose acknowledged transactions, never tear one).
//!
//! ## Example
//! Record a one-transaction workload, cut power at every instant of it and check every image:
//!
//! ```
//! use txheap::Durability;
//! let dir = tempfile::tempdir().unwrap();
//! let rec = crash_tests::record(&dir.path().join("live.heap"), 1, Durability::None, 1);
//! let totals = crash_tests::simulate(&rec, dir.path(), 0, 1, 0);
//! assert!(totals.instants > 0 && totals.images >= totals.instants);
//! assert!(totals.violations.is_empty(), "{:?}", totals.violations);
//! ```

pub mod kill9;
pub mod ops;
pub mod write_ahead;

use std::collections::BTreeMap;
use std::path::Path;

use txheap::{Durability, Error, Heap, Options, PPtr, PSlice, Trace, TraceEvent};

/// Nodes kept in the workload's list; older ones are freed.
///
/// ```
/// use crash_tests::{options, step, Root, KEEP};
/// let dir = tempfile::tempdir().unwrap();
/// let opts = options(txheap::Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("h.heap"), opts).unwrap();
/// for _ in 0..KEEP + 2 {
///     step(&heap, 1, false).unwrap();
/// }
/// let root = heap.read(|r| r.get(r.root::<Root>()?).copied()).unwrap();
/// assert_eq!((root.counter, root.len), (KEEP + 2, KEEP));
/// ```
pub const KEEP: u64 = 6;
const CHECK: u64 = 0x5EED_F00D_CAFE_D00D;
/// Sector size of the torn-write model.
///
/// ```
/// use crash_tests::{Disk, SECTOR};
/// use txheap::TraceEvent;
/// let mut disk = Disk::new(&[0; 4 * SECTOR as usize]);
/// // One byte at the start of the second sector: only that sector is undecided.
/// disk.apply(&TraceEvent::Write { offset: SECTOR, bytes: vec![1] });
/// assert_eq!(disk.pending_sectors(), [(1, 1)]);
/// ```
pub const SECTOR: u64 = 512;

/// The workload's root object.
///
/// ```
/// use crash_tests::{options, step, Root};
/// let dir = tempfile::tempdir().unwrap();
/// let opts = options(txheap::Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("h.heap"), opts).unwrap();
/// step(&heap, 1, false).unwrap();
/// step(&heap, 1, false).unwrap();
/// let root = heap.read(|r| r.get(r.root::<Root>()?).copied()).unwrap();
/// assert_eq!((root.counter, root.len), (2, 2));
/// assert!(!root.head.is_null());
/// ```
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
///
/// ```
/// use crash_tests::{options, payload_byte, payload_size, step, Node, Root};
/// let dir = tempfile::tempdir().unwrap();
/// let opts = options(txheap::Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("h.heap"), opts).unwrap();
/// step(&heap, 9, false).unwrap();
/// step(&heap, 9, false).unwrap();
/// heap.read(|r| {
///     let newest: Node = *r.get(r.get(r.root::<Root>()?)?.head)?;
///     assert_eq!(newest.value, 2);
///     assert_eq!(newest.payload.len(), payload_size(9, 2));
///     assert!(r.slice(newest.payload)?.iter().all(|&b| b == payload_byte(2)));
///     assert_eq!(r.get(newest.next)?.value, 1);
///     Ok(())
/// })
/// .unwrap();
/// ```
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
///
/// ```
/// use crash_tests::Rng;
/// let mut a = Rng::seeded(42);
/// let mut b = a.clone();
/// // Deterministic: a clone continues the same stream.
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert_ne!(a.0, 0); // xorshift's state never becomes zero
/// ```
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator seeded from any `seed` (splitmix64, so nearby seeds give unrelated streams).
    ///
    /// ```
    /// use crash_tests::Rng;
    /// assert_eq!(Rng::seeded(1).0, Rng::seeded(1).0);
    /// assert_ne!(Rng::seeded(1).0, Rng::seeded(2).0);
    /// assert_eq!(Rng::seeded(0).0 % 2, 1); // the state is odd, so never zero
    /// ```
    pub fn seeded(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// Next value.
    ///
    /// ```
    /// use crash_tests::Rng;
    /// let mut r = Rng(1);
    /// assert_eq!(r.next_u64(), 1_082_269_761); // xorshift64 (13, 7, 17) from state 1
    /// assert_eq!(r.0, 1_082_269_761); // the value is the new state
    /// ```
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform below `n` (n > 0).
    ///
    /// ```
    /// use crash_tests::Rng;
    /// let mut r = Rng::seeded(1);
    /// assert!((0..1000).all(|_| r.below(10) < 10));
    /// assert_eq!(Rng::seeded(5).below(1), 0);
    /// ```
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Payload size of transaction `value` under `seed`: mostly small, some large objects (which take
/// the in-place path under `Durability::Full`).
///
/// ```
/// use crash_tests::payload_size;
/// assert_eq!(payload_size(7, 10), payload_size(7, 10)); // deterministic
/// assert_eq!(payload_size(7, 1), 40);
/// assert!((1..1000).all(|v| (1..270_000).contains(&payload_size(7, v))));
/// assert!((1..=20).any(|v| payload_size(7, v) >= 70_000)); // some large objects
/// ```
pub fn payload_size(seed: u64, value: u64) -> u64 {
    let mut r = Rng::seeded(seed ^ value.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match r.below(8) {
        0 => 70_000 + r.below(200_000),
        1 | 2 => 100 + r.below(5_000),
        _ => 1 + r.below(100),
    }
}

/// A scratch directory for crash images: on tmpfs (`/dev/shm`) where there is one, so that
/// writing millions of images does not wear a disk, else in the default temp directory.
///
/// ```
/// let dir = crash_tests::scratch_dir();
/// assert!(dir.path().is_dir());
/// ```
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

/// Print a summary line to the process's stderr *uncaptured*: the test harness captures
/// `eprintln!` of passing tests, and CI's log must show what a crash test covered (how many
/// images, where the kills landed), not only that it passed.
///
/// ```
/// use std::io::{Read, Seek};
/// use std::os::fd::AsRawFd;
/// // Point fd 2 at a file for a moment: the line goes there, past any capture.
/// let mut log = tempfile::tempfile().unwrap();
/// let saved = unsafe { libc::dup(2) };
/// unsafe { libc::dup2(log.as_raw_fd(), 2) };
/// crash_tests::report("seed 1: 26 images, 0 violations");
/// unsafe { libc::dup2(saved, 2) };
/// unsafe { libc::close(saved) };
/// let mut text = String::new();
/// log.rewind().unwrap();
/// log.read_to_string(&mut text).unwrap();
/// assert_eq!(text, "seed 1: 26 images, 0 violations\n");
/// ```
pub fn report(text: &str) {
    use std::io::Write;
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.write_all(b"\n");
}

/// Whether every byte of `s` is `b` (compared 4 KiB at a time with `memcmp`: a byte-at-a-time
/// loop over multi-megabyte objects was most of the checker's time).
///
/// ```
/// use crash_tests::all_bytes;
/// let mut s = vec![7u8; 10_000];
/// assert!(all_bytes(&s, 7));
/// s[9_000] = 8; // in the third 4 KiB piece
/// assert!(!all_bytes(&s, 7));
/// assert!(all_bytes(&[], 0));
/// ```
pub fn all_bytes(s: &[u8], b: u8) -> bool {
    let pattern = [b; 4096];
    s.chunks(pattern.len()).all(|c| c == &pattern[..c.len()])
}

/// Payload byte of transaction `value`.
///
/// ```
/// use crash_tests::payload_byte;
/// assert_eq!(payload_byte(1), 2);
/// assert_eq!(payload_byte(250), 251);
/// assert_eq!(payload_byte(251), 1);
/// assert!((0..1000).all(|v| payload_byte(v) != 0)); // never a zeroed allocation's byte
/// ```
pub fn payload_byte(value: u64) -> u8 {
    (value % 251) as u8 + 1
}

/// Options of the workload's heap: a log small enough that checkpoints happen inside short
/// traces, large enough for the biggest payload under `Durability::None` (which logs it).
///
/// ```
/// use txheap::Durability;
/// let o = crash_tests::options(Durability::None);
/// assert_eq!(o.get_durability(), Durability::None);
/// assert_eq!(o.get_log_size(), 640 << 10);
/// assert_eq!(o.get_max_size(), 256 << 20);
/// ```
pub fn options(durability: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(640 << 10)
        .max_size(256 << 20)
        .durability(durability)
}

/// Run one workload transaction: append node `counter + 1`, trim to `KEEP`, and abort instead
/// of committing when `abort`. Returns the new counter.
///
/// ```
/// use crash_tests::{options, step, verify};
/// let dir = tempfile::tempdir().unwrap();
/// let opts = options(txheap::Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("h.heap"), opts).unwrap();
/// assert_eq!(step(&heap, 1, false).unwrap(), 1);
/// assert!(matches!(step(&heap, 1, true), Err(txheap::Error::NoRoot))); // aborted
/// assert_eq!(step(&heap, 1, false).unwrap(), 2); // the abort left no trace
/// assert_eq!(verify(&heap, 1), Ok(2));
/// ```
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
///
/// ```
/// use crash_tests::{options, step, verify};
/// let dir = tempfile::tempdir().unwrap();
/// let opts = options(txheap::Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("h.heap"), opts).unwrap();
/// assert_eq!(verify(&heap, 3), Ok(0)); // no root yet: nothing committed
/// step(&heap, 3, false).unwrap();
/// assert_eq!(verify(&heap, 3), Ok(1));
/// // Under another seed the payload has another length: refused as torn.
/// assert!(verify(&heap, 4).unwrap_err().contains("torn"));
/// ```
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
                    && all_bytes(bytes, payload_byte(n.value));
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
///
/// ```
/// use txheap::Durability;
/// let dir = tempfile::tempdir().unwrap();
/// let rec = crash_tests::record(&dir.path().join("live.heap"), 5, Durability::None, 3);
/// assert_eq!((rec.seed, rec.durability), (5, Durability::None));
/// assert_eq!(rec.base.len(), 1 << 20); // the closed heap, at its initial size
/// ```
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
///
/// ```
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = crash_tests::record(&dir.path().join("live.heap"), 1, Durability::Full, 3);
/// let marks: Vec<u64> = rec
///     .events
///     .iter()
///     .filter_map(|e| match e {
///         TraceEvent::Mark(n) => Some(*n),
///         _ => None,
///     })
///     .collect();
/// assert_eq!(marks, [1, 2, 3]);
/// assert!(rec.events.iter().any(|e| matches!(e, TraceEvent::Write { .. })));
/// ```
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
///
/// ```
/// use crash_tests::{record, Disk};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 3);
/// let mut disk = Disk::new(&rec.base);
/// for e in &rec.events {
///     disk.apply(e);
/// }
/// // After the close: every sector durable, the last transaction acknowledged.
/// assert_eq!((disk.acked, disk.undecided_sectors(), disk.image_space()), (3, 0, 1));
/// assert!(disk.barriers > 0);
/// ```
#[derive(Debug, Clone)]
pub struct Disk {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// For each sector written since its last barrier: its states after each such write.
    pending: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Sectors whose durable bytes changed, in order (an [`ImageFile`] consumes this).
    durable_changes: Vec<u64>,
    /// Last acknowledged transaction so far.
    pub acked: u64,
    /// Barriers seen so far.
    pub barriers: u64,
}

/// A crash image: for each undecided sector (in sector order), 0 for its durable state or `i`
/// for its state after the `i`-th write since its last barrier.
///
/// ```
/// use crash_tests::{Choice, Disk};
/// use txheap::TraceEvent;
/// let mut disk = Disk::new(&[0; 1024]);
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![7; 4] });
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![8; 4] });
/// let durable: Choice = vec![0];
/// let after_first: Choice = vec![1];
/// assert_eq!(disk.image_of(&durable)[0], 0);
/// assert_eq!(disk.image_of(&after_first)[0], 7);
/// assert_eq!(disk.image_of(&[2])[0], 8);
/// ```
pub type Choice = Vec<u16>;

impl Disk {
    /// The disk holding `base`, all durable.
    ///
    /// ```
    /// let disk = crash_tests::Disk::new(&[5; 1024]);
    /// assert_eq!(disk.durable(), &[5; 1024][..]);
    /// assert_eq!((disk.acked, disk.barriers, disk.undecided_sectors()), (0, 0, 0));
    /// ```
    pub fn new(base: &[u8]) -> Disk {
        Disk {
            current: base.to_vec(),
            durable: base.to_vec(),
            pending: BTreeMap::new(),
            durable_changes: Vec::new(),
            acked: 0,
            barriers: 0,
        }
    }

    /// The file's length at this instant.
    ///
    /// ```
    /// use txheap::TraceEvent;
    /// let mut disk = crash_tests::Disk::new(&[0; 1024]);
    /// assert_eq!(disk.len(), 1024);
    /// disk.apply(&TraceEvent::Grow { len: 4096 });
    /// assert_eq!(disk.len(), 4096);
    /// ```
    pub fn len(&self) -> u64 {
        self.durable.len() as u64
    }

    /// The durable bytes: what every crash at this instant keeps.
    ///
    /// ```
    /// use txheap::TraceEvent;
    /// let mut disk = crash_tests::Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![9; 4] });
    /// assert_eq!(disk.durable()[0], 0); // written, not yet durable
    /// disk.apply(&TraceEvent::BarrierAll);
    /// assert_eq!(disk.durable()[..4], [9; 4]);
    /// ```
    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    /// Whether the file is empty.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// assert!(Disk::new(&[]).is_empty());
    /// assert!(!Disk::new(&[0; 512]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.durable.is_empty()
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

    fn make_durable(&mut self, s: u64) {
        let a = (s * SECTOR) as usize;
        let b = (a + SECTOR as usize).min(self.current.len());
        let (cur, dur) = (&self.current[a..b], &mut self.durable[a..b]);
        dur.copy_from_slice(cur);
        self.durable_changes.push(s);
    }

    /// Apply one recorded event.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
    /// assert_eq!((disk.undecided_sectors(), disk.image_space()), (1, 2));
    /// disk.apply(&TraceEvent::Barrier { offset: 0, len: 4096 });
    /// assert_eq!((disk.undecided_sectors(), disk.barriers), (0, 1));
    /// disk.apply(&TraceEvent::Mark(4));
    /// assert_eq!(disk.acked, 4);
    /// ```
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
                        self.make_durable(s);
                    }
                }
            }
            TraceEvent::BarrierAll => {
                self.barriers += 1;
                let all: Vec<u64> = self.pending.keys().copied().collect();
                self.pending.clear();
                for s in all {
                    self.make_durable(s);
                }
            }
            TraceEvent::Grow { len } => self.ensure_len(*len),
            TraceEvent::Mark(n) => self.acked = *n,
        }
    }

    /// Each undecided sector and how many states it passed through since its last barrier.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 2048]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
    /// disk.apply(&TraceEvent::Write { offset: 4, bytes: vec![2; 8] });
    /// // 1020..1028 straddles sectors 1 and 2: it may land torn.
    /// disk.apply(&TraceEvent::Write { offset: 1020, bytes: vec![3; 8] });
    /// assert_eq!(disk.pending_sectors(), [(0, 2), (1, 1), (2, 1)]);
    /// ```
    pub fn pending_sectors(&self) -> Vec<(u64, usize)> {
        self.pending.iter().map(|(&s, v)| (s, v.len())).collect()
    }

    /// Sectors that may be in more than one state after a crash now.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 2048]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 1024] });
    /// assert_eq!(disk.undecided_sectors(), 2);
    /// disk.apply(&TraceEvent::BarrierAll);
    /// assert_eq!(disk.undecided_sectors(), 0);
    /// ```
    pub fn undecided_sectors(&self) -> usize {
        self.pending.len()
    }

    /// How many distinct crash images this instant allows (saturating at `u64::MAX`).
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// assert_eq!(disk.image_space(), 1);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
    /// assert_eq!(disk.image_space(), 2); // sector 0: durable or written
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![2; 8] });
    /// disk.apply(&TraceEvent::Write { offset: 512, bytes: vec![3; 8] });
    /// assert_eq!(disk.image_space(), 3 * 2);
    /// ```
    pub fn image_space(&self) -> u64 {
        self.pending
            .values()
            .map(|v| v.len() as u64 + 1)
            .try_fold(1u64, |a, b| a.checked_mul(b))
            .unwrap_or(u64::MAX)
    }

    /// The crash images to check at this instant: every one when there are at most `max`,
    /// else both extremes (nothing since the barriers; everything, as SIGKILL leaves it) and
    /// distinct random ones up to `max` in all. Where the image space is at most four times
    /// `max`, the random ones are a shuffle of the whole space, so exactly `max` come out
    /// (random draws would keep colliding there); above that, distinct random draws.
    ///
    /// ```
    /// use crash_tests::{Disk, Rng};
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 2048]);
    /// for s in 0..4 {
    ///     disk.apply(&TraceEvent::Write { offset: s * 512, bytes: vec![1; 8] });
    /// }
    /// let mut rng = Rng::seeded(1);
    /// assert_eq!(disk.choices(100, &mut rng).len(), 16); // all 2^4 images
    /// let few = disk.choices(5, &mut rng);
    /// assert_eq!(few.len(), 5);
    /// assert_eq!(few[0], [0; 4]); // nothing since the barriers
    /// assert_eq!(few[1], [1; 4]); // everything
    /// ```
    pub fn choices(&self, max: usize, rng: &mut Rng) -> Vec<Choice> {
        let radix: Vec<u64> = self.pending.values().map(|v| v.len() as u64 + 1).collect();
        let decode = |mut k: u64| -> Choice {
            radix
                .iter()
                .map(|r| {
                    let c = (k % r) as u16;
                    k /= r;
                    c
                })
                .collect()
        };
        let space = self.image_space();
        if space <= max as u64 {
            return (0..space).map(decode).collect();
        }
        let top: Choice = radix.iter().map(|r| (r - 1) as u16).collect();
        if max <= 2 {
            return [decode(0), top].into_iter().take(max).collect();
        }
        if space <= 4 * max as u64 {
            // Index 0 and space - 1 are the extremes; shuffle the rest and take max - 2.
            let mut rest: Vec<u64> = (1..space - 1).collect();
            let want = max - 2;
            for i in 0..want {
                let j = i + rng.below((rest.len() - i) as u64) as usize;
                rest.swap(i, j);
            }
            return [0, space - 1]
                .into_iter()
                .chain(rest[..want].iter().copied())
                .map(decode)
                .collect();
        }
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Choice> = vec![decode(0), top];
        seen.extend(out.iter().cloned());
        // Each draw is new with probability >= 3/4 here; 64 * max draws never run out in
        // practice, and the test `choices_are_distinct_and_fill_the_budget` checks the count.
        let mut tries = 0;
        while out.len() < max && tries < max * 64 {
            tries += 1;
            let c: Choice = radix.iter().map(|r| rng.below(*r) as u16).collect();
            if seen.insert(c.clone()) {
                out.push(c);
            }
        }
        out
    }

    /// The whole image for `choice` (see [`Disk::choices`]).
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 512, bytes: vec![6; 512] });
    /// assert_eq!(disk.image_of(&[0]), disk.durable());
    /// let img = disk.image_of(&[1]);
    /// assert_eq!((img[511], img[512], img[1023]), (0, 6, 6));
    /// ```
    pub fn image_of(&self, choice: &[u16]) -> Vec<u8> {
        let mut img = self.durable.clone();
        for ((&s, versions), &k) in self.pending.iter().zip(choice) {
            if k > 0 {
                let a = (s * SECTOR) as usize;
                let v = &versions[k as usize - 1];
                img[a..a + v.len()].copy_from_slice(v);
            }
        }
        img
    }

    /// A crash image: `choose(sector, versions)` picks 0 (the durable state) or `i` (the state
    /// after the `i`-th write since the last barrier) for each undecided sector.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 1024] });
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![2; 1024] });
    /// // Sector 0 keeps the first write, sector 1 the second: a torn, reordered pair.
    /// let img = disk.image(|sector, versions| if sector == 0 { 1 } else { versions });
    /// assert_eq!((img[0], img[512]), (1, 2));
    /// ```
    pub fn image(&self, mut choose: impl FnMut(u64, usize) -> usize) -> Vec<u8> {
        let choice: Choice = self
            .pending
            .iter()
            .map(|(&s, v)| choose(s, v.len()) as u16)
            .collect();
        self.image_of(&choice)
    }
}

const PAGE: u64 = 4096;

/// A file (on tmpfs, where the caller puts it) that holds one crash image after another, rewriting only the pages that
/// differ from what it holds: the pages of undecided sectors, of sectors made durable since the
/// last image, and of every write that recovery made to the previous image (taken from its
/// recorded trace). Every `verify_every`-th image is read back whole and compared with the
/// image built from scratch, so a page the mirror got wrong cannot go unnoticed.
///
/// ```
/// use crash_tests::{Disk, ImageFile};
/// use txheap::TraceEvent;
/// let dir = tempfile::tempdir().unwrap();
/// let mut disk = Disk::new(&[0; 8192]);
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
/// let mut file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
/// file.write(&disk, &[1]).unwrap();
/// file.write(&disk, &[1]).unwrap(); // the same image again: nothing to rewrite
/// assert_eq!(file.pages_written, 1); // one 4 KiB page of the two
/// assert_eq!(std::fs::read(file.path()).unwrap(), disk.image_of(&[1]));
/// ```
#[derive(Debug)]
pub struct ImageFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// What the file holds, as far as this struct knows (pages in `stale` excepted).
    mirror: Vec<u8>,
    file_len: u64,
    stale: std::collections::BTreeSet<u64>,
    last_overrides: Vec<u64>,
    seen_changes: usize,
    written: u64,
    /// Read back and compare every this many images (0: never).
    pub verify_every: u64,
    /// Pages written so far.
    pub pages_written: u64,
}

impl ImageFile {
    /// A file at `path` holding `disk`'s durable image.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile};
    /// let dir = tempfile::tempdir().unwrap();
    /// let disk = Disk::new(&[3; 4096]);
    /// let file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
    /// assert_eq!(std::fs::read(file.path()).unwrap(), [3; 4096]);
    /// assert_eq!((file.verify_every, file.pages_written), (64, 0));
    /// ```
    pub fn new(path: &Path, disk: &Disk) -> std::io::Result<ImageFile> {
        std::fs::write(path, &disk.durable)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(ImageFile {
            path: path.to_path_buf(),
            file,
            mirror: disk.durable.clone(),
            file_len: disk.len(),
            stale: Default::default(),
            last_overrides: Vec::new(),
            seen_changes: disk.durable_changes.len(),
            written: 0,
            verify_every: 64,
            pages_written: 0,
        })
    }

    /// Where the file is.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile};
    /// let dir = tempfile::tempdir().unwrap();
    /// let at = dir.path().join("image.heap");
    /// let file = ImageFile::new(&at, &Disk::new(&[0; 512])).unwrap();
    /// assert_eq!(file.path(), at);
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make the file hold `disk`'s image for `choice`.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile, Rng};
    /// use txheap::TraceEvent;
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut disk = Disk::new(&[0; 8192]);
    /// disk.apply(&TraceEvent::Write { offset: 4096, bytes: vec![1; 8] });
    /// let mut file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
    /// for choice in disk.choices(2, &mut Rng::seeded(1)) {
    ///     file.write(&disk, &choice).unwrap();
    ///     assert_eq!(std::fs::read(file.path()).unwrap(), disk.image_of(&choice));
    /// }
    /// // The durable image was there already; the other one took its second page.
    /// assert_eq!(file.pages_written, 1);
    /// ```
    pub fn write(&mut self, disk: &Disk, choice: &[u16]) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let io = |e: std::io::Error| format!("image file: {e}");
        let len = disk.len();
        if self.file_len != len {
            self.file.set_len(len).map_err(io)?;
            self.file_len = len;
        }
        if self.mirror.len() as u64 != len {
            self.mirror.resize(len as usize, 0);
        }
        // Pages recovery wrote: the mirror holds their old bytes, so write them whatever it says.
        let stale = std::mem::take(&mut self.stale);
        let mut pages = stale.clone();
        pages.extend(self.last_overrides.drain(..));
        for &s in &disk.durable_changes[self.seen_changes..] {
            pages.insert(s * SECTOR / PAGE);
        }
        self.seen_changes = disk.durable_changes.len();
        let mut overrides: BTreeMap<u64, (u64, &[u8])> = BTreeMap::new();
        for ((&s, versions), &k) in disk.pending.iter().zip(choice) {
            if k > 0 {
                overrides.insert(s, (s, &versions[k as usize - 1]));
                let p = s * SECTOR / PAGE;
                pages.insert(p);
                self.last_overrides.push(p);
            }
        }
        let mut want = [0u8; PAGE as usize];
        for p in pages {
            let a = p * PAGE;
            if a >= len {
                continue;
            }
            let b = (a + PAGE).min(len);
            let want = &mut want[..(b - a) as usize];
            want.copy_from_slice(&disk.durable[a as usize..b as usize]);
            for (_, (s, v)) in overrides.range(a / SECTOR..b.div_ceil(SECTOR)) {
                let o = (s * SECTOR - a) as usize;
                want[o..o + v.len()].copy_from_slice(v);
            }
            let have = &mut self.mirror[a as usize..b as usize];
            if have != want || stale.contains(&p) {
                self.file.write_all_at(want, a).map_err(io)?;
                have.copy_from_slice(want);
                self.pages_written += 1;
            }
        }
        self.written += 1;
        if self.verify_every > 0 && self.written % self.verify_every == 0 {
            let on_file = std::fs::read(&self.path).map_err(io)?;
            if on_file != disk.image_of(choice) {
                return Err("simulator bug: the image file does not hold the image".into());
            }
        }
        Ok(())
    }

    /// Note what happened to the file since [`ImageFile::write`]: `events` recorded while
    /// recovering and checking it. Their pages are rewritten before the next image.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile};
    /// use txheap::TraceEvent;
    /// let dir = tempfile::tempdir().unwrap();
    /// let disk = Disk::new(&[0; 4096]);
    /// let mut file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
    /// // "Recovery" writes to the file behind the mirror's back, and says so:
    /// std::fs::write(file.path(), [9; 4096]).unwrap();
    /// file.touched(&[TraceEvent::Write { offset: 0, bytes: vec![9; 4096] }]).unwrap();
    /// file.write(&disk, &[]).unwrap();
    /// assert_eq!(std::fs::read(file.path()).unwrap(), disk.durable());
    /// ```
    pub fn touched(&mut self, events: &[TraceEvent]) -> Result<(), String> {
        for e in events {
            if let TraceEvent::Write { offset, bytes } = e {
                let end = offset + bytes.len() as u64;
                self.stale.extend(offset / PAGE..end.div_ceil(PAGE));
            }
        }
        self.file_len = self
            .file
            .metadata()
            .map_err(|e| format!("image file: {e}"))?
            .len();
        Ok(())
    }
}

/// Why an image was refused (or, from [`write_ahead::check`], why a write broke the
/// write-ahead rule: `at_event` is then the write's event index and `image` is 0).
///
/// ```
/// use crash_tests::{record, simulate};
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let mut rec = record(&dir.path().join("live.heap"), 1, Durability::Full, 1);
/// // Claim transaction 1 acknowledged before it ran: a crash at its first write loses it.
/// rec.events.insert(0, TraceEvent::Mark(1));
/// let v = &simulate(&rec, dir.path(), 0, 1, 0).violations[0];
/// assert!(v.what.contains("lost a commit"), "{}", v.what);
/// assert_eq!((v.at_event, v.image), (1, 0)); // nothing since the barriers
/// ```
#[derive(Debug, Clone)]
pub struct Violation {
    /// What went wrong.
    pub what: String,
    /// Event index of the crash (or of the offending write).
    pub at_event: usize,
    /// Which image at that instant.
    pub image: usize,
}

/// Recover `image` (written to `path`) and check it against the workload. Returns the counter.
///
/// ```
/// use crash_tests::{check_image, record, Disk};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 3);
/// let mut disk = Disk::new(&rec.base);
/// rec.events.iter().for_each(|e| disk.apply(e));
/// let img = dir.path().join("image.heap");
/// assert_eq!(check_image(&img, disk.durable(), &rec, 3, false), Ok(3));
/// // The base image when 3 were acknowledged under Full: commits were lost.
/// let err = check_image(&img, &rec.base, &rec, 3, false).unwrap_err();
/// assert!(err.contains("lost a commit"), "{err}");
/// ```
pub fn check_image(
    path: &Path,
    image: &[u8],
    rec: &Recording,
    acked: u64,
    deep: bool,
) -> Result<u64, String> {
    std::fs::write(path, image).map_err(|e| e.to_string())?;
    check_file(path, rec, acked, deep, &Trace::default())
}

/// Recover the crash image that `path` holds and check it against the workload, recording
/// every write recovery (and the check) makes into `trace`. Returns the counter.
///
/// ```
/// use crash_tests::{check_file, record};
/// use txheap::{Trace, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::None, 2);
/// let img = dir.path().join("image.heap");
/// std::fs::write(&img, &rec.base).unwrap();
/// let trace = Trace::default();
/// // Deep: recover, check, commit one more, reopen and check again.
/// assert_eq!(check_file(&img, &rec, 0, true, &trace), Ok(0));
/// assert!(trace.lock().unwrap().iter().any(|e| matches!(e, TraceEvent::Write { .. })));
/// ```
pub fn check_file(
    path: &Path,
    rec: &Recording,
    acked: u64,
    deep: bool,
    trace: &Trace,
) -> Result<u64, String> {
    let opts = || options(rec.durability).record(trace.clone());
    let heap = Heap::open(path, opts()).map_err(|e| format!("recovery failed: {e}"))?;
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
        let heap = Heap::open(path, opts()).map_err(|e| format!("second reopen failed: {e}"))?;
        let c2 = verify(&heap, rec.seed)?;
        if c2 != c + 1 {
            return Err(format!(
                "after recovery to {c} and one commit, reopen shows {c2}"
            ));
        }
    }
    Ok(c)
}

/// Check the image in `file` (just written from `disk`), then tell `file` what recovery wrote.
fn check_in(file: &mut ImageFile, rec: &Recording, acked: u64, deep: bool) -> Result<u64, String> {
    let trace = Trace::default();
    let r = check_file(file.path(), rec, acked, deep, &trace);
    let events = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
    file.touched(&events)?;
    r
}

/// Power cuts *during recovery*: recover `image` while recording recovery's own writes and
/// barriers (and the close that follows), then cut power at every recorded instant (every
/// image when there are at most `samples + 2`, else both extremes and `samples` random ones)
/// and recover again: the result must be exactly the state the uninterrupted recovery gave.
/// Returns (that counter, images checked).
///
/// ```
/// use crash_tests::{check_recovery_crashes, record, Disk, Rng};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 2);
/// let mut disk = Disk::new(&rec.base);
/// rec.events.iter().for_each(|e| disk.apply(e));
/// let mut rng = Rng::seeded(1);
/// let (counter, images) =
///     check_recovery_crashes(dir.path(), disk.durable(), &rec, 2, &mut rng).unwrap();
/// assert_eq!(counter, 2);
/// assert!(images > 0);
/// ```
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
    // Recovery's own writes obey the write-ahead rule too: the image is all durable when
    // recovery starts, so every heap byte it changes must be what replaying the durable log
    // gives (the durable state is computed by recovery itself, so this cannot catch a replay
    // that is wrong the same way twice; it catches an open that writes the heap by any other
    // path, such as repairing metadata without a frame).
    if let Some(v) = write_ahead::check(image, &events).violations.first() {
        return Err(format!(
            "write-ahead check of recovery's writes, event {}: {}",
            v.at_event, v.what
        ));
    }
    let mut disk = Disk::new(image);
    let mut file =
        ImageFile::new(&dir.join("recovered-again.heap"), &disk).map_err(|e| e.to_string())?;
    let mut images = 0;
    for (t, e) in events.iter().enumerate() {
        disk.apply(e);
        for (i, choice) in disk.choices(samples + 2, rng).iter().enumerate() {
            images += 1;
            file.write(&disk, choice)?;
            let c = check_in(&mut file, rec, c0, false)
                .map_err(|e| format!("power cut at recovery event {t} (image {i}): {e}"))?;
            if c != c0 {
                return Err(format!("power cut at recovery event {t} (image {i}): recovered {c}, the uninterrupted recovery gave {c0}"));
            }
        }
    }
    Ok((c0, images))
}

/// Random images per instant of a recovery cut by power (plus both extremes). Recovery writes
/// few, large page runs, each covering many sectors: many images per instant.
///
/// ```
/// use crash_tests::{Disk, Rng, RECOVERY_SAMPLES};
/// use txheap::TraceEvent;
/// // An instant with 5 undecided sectors allows 32 images; a recovery check takes 26.
/// let mut disk = Disk::new(&[0; 5 * 512]);
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 5 * 512] });
/// assert_eq!(disk.choices(RECOVERY_SAMPLES + 2, &mut Rng::seeded(1)).len(), 26);
/// ```
pub const RECOVERY_SAMPLES: usize = 24;

/// Totals of a simulation.
///
/// ```
/// let t = crash_tests::Totals::default();
/// assert_eq!((t.images, t.instants, t.violations.len()), (0, 0, 0));
/// assert_eq!(t.window_summary(), (0, 0, 0, 0));
/// ```
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
    /// Images checked in each barrier window (the crash instants between two barriers), and
    /// whether that was every image the window allows (each instant's image space was at most
    /// its image budget, so every instant was enumerated completely).
    pub window_images: Vec<(u64, bool)>,
    /// The violations found.
    pub violations: Vec<Violation>,
}

impl Totals {
    /// Add another simulation's totals.
    ///
    /// ```
    /// use crash_tests::Totals;
    /// let mut all = Totals { images: 10, instants: 4, ..Totals::default() };
    /// all.window_images.push((10, true));
    /// let mut more = Totals { images: 6, instants: 3, lost_acked: 1, ..Totals::default() };
    /// more.window_images.push((6, false));
    /// all.add(more);
    /// assert_eq!((all.images, all.instants, all.lost_acked), (16, 7, 1));
    /// assert_eq!(all.window_images, [(10, true), (6, false)]);
    /// ```
    pub fn add(&mut self, o: Totals) {
        self.images += o.images;
        self.instants += o.instants;
        self.in_flight_landed += o.in_flight_landed;
        self.lost_acked += o.lost_acked;
        self.recovery_images += o.recovery_images;
        self.window_images.extend(o.window_images);
        self.violations.extend(o.violations);
    }

    /// Barrier windows: (all, enumerated completely, fewest images in a sampled window, median
    /// images per window).
    ///
    /// ```
    /// let t = crash_tests::Totals {
    ///     window_images: vec![(4, true), (10, false), (6, false)],
    ///     ..Default::default()
    /// };
    /// // 3 windows, 1 enumerated completely, 6 in the smallest sampled one, median 6.
    /// assert_eq!(t.window_summary(), (3, 1, 6, 6));
    /// ```
    pub fn window_summary(&self) -> (usize, usize, u64, u64) {
        let exhausted = self.window_images.iter().filter(|w| w.1).count();
        let sampled_min = self
            .window_images
            .iter()
            .filter(|w| !w.1)
            .map(|w| w.0)
            .min()
            .unwrap_or(0);
        let mut all: Vec<u64> = self.window_images.iter().map(|w| w.0).collect();
        all.sort_unstable();
        let median = all.get(all.len() / 2).copied().unwrap_or(0);
        (all.len(), exhausted, sampled_min, median)
    }
}

/// Simulate power cuts at every event of `rec` with `samples` random images per instant (plus
/// the two extremes). Images are recovered in `dir`. Every `recovery_every`-th instant (0: never)
/// the newest image is also recovered with power cuts during its recovery.
///
/// ```
/// use crash_tests::{record, simulate};
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, Durability::None, 1);
/// let t = simulate(&rec, dir.path(), 0, 1, 0);
/// assert!(t.violations.is_empty(), "{:?}", t.violations);
/// // A crash instant at every event but the marks, with at least one image each.
/// let marks = rec.events.iter().filter(|e| matches!(e, TraceEvent::Mark(_))).count();
/// assert_eq!(t.instants as usize, rec.events.len() - marks);
/// assert!(t.images >= t.instants);
/// assert_eq!(t.recovery_images, 0); // recovery_every 0: never
/// ```
pub fn simulate(
    rec: &Recording,
    dir: &Path,
    samples: usize,
    sample_seed: u64,
    recovery_every: u64,
) -> Totals {
    simulate_windows(rec, dir, samples, 0, sample_seed, recovery_every)
}

/// [`simulate`], with at least `window_target` images per barrier window where the window
/// allows that many: an instant gets `max(samples + 2, window_target / instants in its
/// window)` images (all of them when it has fewer).
///
/// ```
/// use crash_tests::{record, simulate_windows};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 1);
/// let t = simulate_windows(&rec, dir.path(), 0, 8, 1, 0);
/// assert!(t.violations.is_empty(), "{:?}", t.violations);
/// // Each barrier window got 8 images, or every image it allows.
/// assert!(t.window_images.iter().all(|&(n, every)| every || n >= 8));
/// assert_eq!(t.window_images.iter().map(|w| w.0).sum::<u64>(), t.images);
/// ```
pub fn simulate_windows(
    rec: &Recording,
    dir: &Path,
    samples: usize,
    window_target: usize,
    sample_seed: u64,
    recovery_every: u64,
) -> Totals {
    // Per-instant image budgets: a dry pass finds each instant's image space, then each
    // barrier window's `window_target` is water-filled over its instants (an instant with a
    // small space is taken whole, the others share what remains equally).
    let mut budget: Vec<usize> = Vec::new();
    {
        let mut dry = Disk::new(&rec.base);
        let mut windows: Vec<Vec<u64>> = vec![Vec::new()];
        for e in &rec.events {
            let barriers = dry.barriers;
            dry.apply(e);
            if dry.barriers != barriers {
                windows.push(Vec::new());
            }
            if !matches!(e, TraceEvent::Mark(_)) {
                windows
                    .last_mut()
                    .expect("one window")
                    .push(dry.image_space());
            }
        }
        for spaces in windows {
            let mut order: Vec<usize> = (0..spaces.len()).collect();
            order.sort_by_key(|&i| spaces[i]);
            let mut caps = vec![0u64; spaces.len()];
            let mut left = window_target as u64;
            for (k, &i) in order.iter().enumerate() {
                let level = left.div_ceil((spaces.len() - k) as u64);
                caps[i] = spaces[i].min(level);
                left = left.saturating_sub(caps[i]);
            }
            budget.extend(
                caps.iter()
                    .map(|&c| (samples + 2).max(usize::try_from(c).unwrap_or(usize::MAX))),
            );
        }
    }
    let mut disk = Disk::new(&rec.base);
    let mut totals = Totals::default();
    let mut rng = Rng::seeded(sample_seed);
    let mut file = match ImageFile::new(&dir.join("image.heap"), &disk) {
        Ok(f) => f,
        Err(e) => {
            totals.violations.push(Violation {
                what: format!("cannot create the image file: {e}"),
                at_event: 0,
                image: 0,
            });
            return totals;
        }
    };
    let (mut window, mut window_exhausted) = (0u64, true);
    for (t, e) in rec.events.iter().enumerate() {
        let barriers = disk.barriers;
        disk.apply(e);
        if disk.barriers != barriers && window > 0 {
            totals.window_images.push((window, window_exhausted));
            (window, window_exhausted) = (0, true);
        }
        if matches!(e, TraceEvent::Mark(_)) {
            continue; // same disk state as the previous instant
        }
        let max = budget[totals.instants as usize];
        totals.instants += 1;
        let choices = disk.choices(max, &mut rng);
        window += choices.len() as u64;
        window_exhausted &= disk.image_space() == choices.len() as u64;
        for (i, choice) in choices.iter().enumerate() {
            totals.images += 1;
            let checked = file
                .write(&disk, choice)
                .and_then(|()| check_in(&mut file, rec, disk.acked, i < 2));
            match checked {
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
                let img = disk.image_of(choice);
                match check_recovery_crashes(dir, &img, rec, RECOVERY_SAMPLES, &mut rng) {
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
    if window > 0 {
        totals.window_images.push((window, window_exhausted));
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with one undecided sector per entry of `writes`, written that many times since
    /// the last barrier (each write a different byte, so every state differs).
    fn disk_with(writes: &[usize]) -> Disk {
        let mut d = Disk::new(&vec![0u8; writes.len() * SECTOR as usize]);
        for (s, &n) in writes.iter().enumerate() {
            for k in 0..n {
                d.apply(&TraceEvent::Write {
                    offset: s as u64 * SECTOR,
                    bytes: vec![k as u8 + 1; 8],
                });
            }
        }
        d
    }

    /// `choices` gives exactly `min(space, max)` distinct images, both extremes among them,
    /// including where the space is just above `max` (random draws used to fall short there).
    #[test]
    fn choices_are_distinct_and_fill_the_budget() {
        let mut rng = Rng::seeded(7);
        let cases: &[(&[usize], usize)] = &[
            (&[1; 13], 8192),                       // space 8192: exhaustive
            (&[1; 13], 8000),                       // space just above max: shuffle
            (&[2, 2, 2, 2, 2, 2, 2, 2, 2], 10_000), // 3^9 = 19,683: shuffle
            (&[1; 16], 10_000),                     // 65,536: random draws
            (&[4; 40], 10_000),                     // 5^40 saturates u64: random draws
            (&[1; 13], 2),
        ];
        // Small spaces one short of the budget, many times over (the windows' shortfall came
        // from instants like these).
        let small: Vec<(Vec<usize>, usize)> = (0..100)
            .flat_map(|_| (2..=6).map(|k| (vec![1; k], (1usize << k) - 1)))
            .chain((0..100).map(|_| (vec![2, 3, 1], 23)))
            .collect();
        let cases = cases
            .iter()
            .map(|&(w, m)| (w, m))
            .chain(small.iter().map(|(w, m)| (&w[..], *m)));
        for (writes, max) in cases {
            let d = disk_with(writes);
            let space = d.image_space();
            let got = d.choices(max, &mut rng);
            let want = (max as u64).min(space) as usize;
            assert_eq!(got.len(), want, "{writes:?} max {max}");
            let distinct: std::collections::HashSet<_> = got.iter().collect();
            assert_eq!(distinct.len(), got.len(), "{writes:?}: duplicates");
            let top: Choice = writes.iter().map(|&n| n as u16).collect();
            assert!(
                got.contains(&vec![0; writes.len()]),
                "{writes:?}: no durable extreme"
            );
            assert!(
                got.contains(&top),
                "{writes:?}: no everything-written extreme"
            );
            assert!(got
                .iter()
                .all(|c| c.iter().zip(writes).all(|(&k, &n)| k as usize <= n)));
        }
    }
}
