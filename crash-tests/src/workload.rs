//! The workload and its model.
//!
//! Owns: the deterministic workload (the list of the newest [`KEEP`] nodes, [`Root`], [`Node`],
//! their payloads, and the two maps in the root: a `PBTreeMap` and a `PHashMap` holding the
//! entries of the newest [`MAP_WINDOW`] transactions, with node splits, node frees, table growth
//! and clears inside the transactions that crash), its PRNG ([`Rng`]), the heap's [`options`], one transaction ([`step`]), a
//! recorded run ([`record`], [`Recording`]), and the model check of a heap ([`verify`]).
//!
//! May not: know about sectors, crash images or power cuts: it sees a `Heap` and, for
//! [`record`], the trace the heap records; the simulator and the checkers build on it.

use std::path::Path;

use txheap::{
    Durability, Error, Heap, Options, PBTreeMap, PHashMap, PPtr, PSlice, Trace, TraceEvent, View,
};

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
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
pub struct Root {
    /// Transactions committed.
    pub counter: u64,
    /// Newest node.
    pub head: PPtr<Node>,
    /// Nodes in the list.
    pub len: u64,
    /// The entries ([`map_keys`]) of the newest [`MAP_WINDOW`] transactions, each with
    /// [`tree_value`]: 500-byte values, so a leaf holds 8 and splits come every few
    /// transactions.
    pub tree: PBTreeMap<u64, [u8; 500]>,
    /// The same keys (of the transactions since the last multiple of [`MAP_CLEAR_EVERY`], a
    /// clear that frees every bucket, so the map grows again from one), each with
    /// [`hash_value`]: 504-byte values, so a bucket holds 16 entries and buckets split (and the
    /// directory doubles) every few transactions.
    pub hash: PHashMap<u64, [u64; 63]>,
}

/// A large payload of an odd transaction is first allocated with this many bytes (a large
/// object too) and then grown to its size with `realloc_slice`.
const GROW_FROM: u64 = 66_000;

/// A large payload of an even transaction is committed with this many bytes more than its
/// size, and the next transaction shrinks it with `realloc_slice`, which frees the chunks it no
/// longer needs.
const SHRINK_BY: u64 = 600_000;

/// The bytes of the scratch object a shrinking transaction writes in place and frees (two
/// chunks: about what a shrink by [`SHRINK_BY`] frees).
const SCRATCH: u64 = 300_000;

/// Whether transaction `n` commits its payload [`SHRINK_BY`] bytes larger, for transaction
/// `n + 1` to shrink.
fn shrinks_later(seed: u64, n: u64) -> bool {
    n > 0 && n % 2 == 0 && payload_size(seed, n) > GROW_FROM
}

/// The length of transaction `n`'s payload when `head` is the newest transaction.
fn payload_len(seed: u64, n: u64, head: u64) -> u64 {
    payload_size(seed, n)
        + if n == head && shrinks_later(seed, n) {
            SHRINK_BY
        } else {
            0
        }
}

/// Transactions whose entries the maps keep: transaction `n` removes those of `n - MAP_WINDOW`.
pub const MAP_WINDOW: u64 = 24;
/// Transaction `n` clears the hash map first when `n` is a multiple of this.
pub const MAP_CLEAR_EVERY: u64 = 50;

/// The keys transaction `s` puts in both maps (1 to 6 of them): the first spread over all of
/// `u64`, the others ascending with `s` (a queue: the newest leaf splits and the oldest
/// empties every few transactions).
///
/// ```
/// let k = crash_tests::map_keys(7);
/// assert_eq!(k.len(), 2);
/// assert_ne!(k[0], k[1]);
/// ```
pub fn map_keys(s: u64) -> Vec<u64> {
    (0..1 + s % 6)
        .map(|j| match j {
            0 => ((s << 3) | j).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63,
            _ => (s << 3) | j,
        })
        .collect()
}

/// The B-tree's value for `key`.
///
/// ```
/// assert_eq!(crash_tests::tree_value(1)[..8], 1u64.to_le_bytes());
/// ```
pub fn tree_value(key: u64) -> [u8; 500] {
    let mut v = [0u8; 500];
    for c in v.chunks_mut(8) {
        c.copy_from_slice(&key.to_le_bytes()[..c.len()]);
    }
    v
}

fn tree_of(root: PPtr<Root>) -> PPtr<PBTreeMap<u64, [u8; 500]>> {
    PPtr::from_offset(root.offset() + std::mem::offset_of!(Root, tree) as u64)
}

/// The hash map's value for `key`.
///
/// ```
/// assert_eq!(crash_tests::hash_value(0)[62], crash_tests::hash_value(0)[0]);
/// ```
pub fn hash_value(key: u64) -> [u64; 63] {
    [key ^ CHECK; 63]
}

fn hash_of(root: PPtr<Root>) -> PPtr<PHashMap<u64, [u64; 63]>> {
    PPtr::from_offset(root.offset() + std::mem::offset_of!(Root, hash) as u64)
}

/// The transactions whose keys the maps hold after transaction `counter`: the B-tree's, then
/// the hash map's.
fn map_steps(counter: u64) -> (std::ops::RangeInclusive<u64>, std::ops::RangeInclusive<u64>) {
    let first = counter.saturating_sub(MAP_WINDOW) + 1;
    let cleared = (counter - counter % MAP_CLEAR_EVERY).max(1);
    (first..=counter, first.max(cleared)..=counter)
}

/// Check both maps after transaction `counter`: their invariants (`check`), their lengths, and
/// every entry; returns the blocks they hold, for the leak check.
fn verify_maps<V: View>(r: &V, root: PPtr<Root>, counter: u64) -> txheap::Result<Vec<u64>> {
    let (tree, hash) = (tree_of(root), hash_of(root));
    let wrong = |what: String| Error::Corrupt { offset: 0, what };
    tree.check(r)?;
    hash.check(r)?;
    let (ts, hs) = map_steps(counter);
    let tn: u64 = ts.clone().map(|s| map_keys(s).len() as u64).sum();
    let hn: u64 = hs.clone().map(|s| map_keys(s).len() as u64).sum();
    if tree.len(r)? != tn || hash.len(r)? != hn {
        return Err(wrong(format!(
            "maps hold {} and {} entries after transaction {counter}, expected {tn} and {hn}",
            tree.len(r)?,
            hash.len(r)?
        )));
    }
    for s in ts {
        for k in map_keys(s) {
            if tree.get(r, &k)? != Some(&tree_value(k)) {
                return Err(wrong(format!(
                    "B-tree entry {k:#x} of transaction {s} wrong or missing"
                )));
            }
        }
    }
    for s in hs {
        for k in map_keys(s) {
            if hash.get(r, &k)? != Some(&hash_value(k)) {
                return Err(wrong(format!(
                    "hash entry {k:#x} of transaction {s} wrong or missing"
                )));
            }
        }
    }
    let mut blocks = Vec::new();
    tree.for_each_block(r, |b| blocks.push(b))?;
    hash.for_each_block(r, |b| blocks.push(b))?;
    Ok(blocks)
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
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
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
/// assert!((1..1000).all(|v| (1..470_000).contains(&payload_size(7, v))));
/// assert!((1..=20).any(|v| payload_size(7, v) >= 70_000)); // some large objects
/// ```
pub fn payload_size(seed: u64, value: u64) -> u64 {
    let mut r = Rng::seeded(seed ^ value.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match r.below(8) {
        // Up to two chunks: a payload grown in place (`step`) may take the chunk after its own.
        0 => 70_000 + r.below(400_000),
        1 | 2 => 100 + r.below(5_000),
        _ => 1 + r.below(100),
    }
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
/// let dir = tempfile::tempdir().unwrap();
/// let o = crash_tests::options(Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("o.heap"), o).unwrap();
/// assert_eq!(heap.durability(), Durability::None);
/// let s = heap.stats().unwrap();
/// assert_eq!((s.log_size, s.max_size), (640 << 10, 256 << 20));
/// ```
pub fn options(durability: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(640 << 10)
        .max_size(256 << 20)
        // Under None, objects from 64 KiB up (a payload in eight) go in place, so the
        // simulator and the kill -9 campaign cover that path too.
        .in_place_min(64 << 10)
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
        let size = payload_size(seed, n);
        if shrinks_later(seed, n - 1) {
            // The payload the transaction before committed larger: shrunk where it is, so the
            // chunks past its size are freed while the durable state (until this commit is
            // durable) still has them inside it. Later transactions allocate large payloads
            // over them, in place: a crash must never find this payload torn.
            let prev = rt.head;
            let mut node = *tx.get(prev)?;
            let final_size = payload_size(seed, n - 1);
            node.payload = tx.realloc_slice(node.payload, final_size, final_size)?;
            *tx.get_mut(prev)? = node;
            // A large object of about the freed tail's size, written in place and freed again:
            // an allocator that handed out the tail at once (before this commit is durable)
            // would put it there, over bytes the durable state still has in that payload.
            let scratch = tx.alloc_slice_zeroed::<u8>(SCRATCH)?;
            tx.slice_mut(scratch)?.fill(0x5A);
            tx.free_slice(scratch)?;
        }
        let payload = if size > GROW_FROM && n % 2 == 1 {
            // Half the large payloads start smaller and grow by `realloc_slice`: in place
            // inside their chunk, over the free chunks after it, or past the heap's end.
            let first = tx.alloc_slice_zeroed::<u8>(GROW_FROM)?;
            tx.slice_mut(first)?.fill(payload_byte(n));
            let grown = tx.realloc_slice(first, GROW_FROM, size)?;
            tx.slice_mut(grown)?[GROW_FROM as usize..].fill(payload_byte(n));
            grown
        } else if size > GROW_FROM {
            // The other half are committed [`SHRINK_BY`] bytes larger, and the next transaction
            // shrinks them where they are (below).
            let first = tx.alloc_slice_zeroed::<u8>(size + SHRINK_BY)?;
            tx.slice_mut(first)?.fill(payload_byte(n));
            first
        } else {
            let p = tx.alloc_slice_zeroed::<u8>(size)?;
            tx.slice_mut(p)?.fill(payload_byte(n));
            p
        };
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
        // The maps, after the list (whose root fields were just written whole).
        let (tree, hash) = (tree_of(root), hash_of(root));
        if n > MAP_WINDOW {
            for k in map_keys(n - MAP_WINDOW) {
                tree.remove(tx, &k)?;
                hash.remove(tx, &k)?;
            }
        }
        if n % MAP_CLEAR_EVERY == 0 {
            hash.clear(tx)?;
        }
        for k in map_keys(n) {
            tree.insert(tx, &k, &tree_value(k))?;
            hash.insert(tx, &k, &hash_value(k))?;
        }
        // A nested scope that changes all it reaches and fails: the commit must hold none of
        // it (`verify` counts every allocated byte and walks every pointer). (Its object is a
        // small one: a large one is fresh space, which would put bytes in place in every
        // commit, a barrier of their own, and change what the campaigns' floors measure.)
        let undone = tx.nested(|tx| {
            let junk = tx.alloc_slice_zeroed::<u8>(100)?;
            tx.slice_mut(junk)?.fill(0xEE);
            tx.alloc(Node {
                value: u64::MAX,
                next: rt.head,
                payload: junk,
                check: 0,
            })?;
            let head = *tx.get(rt.head)?;
            tx.free_slice(head.payload)?;
            tx.get_mut(root)?.counter = u64::MAX;
            tree.insert(tx, &u64::MAX, &tree_value(0))?;
            if let Some(&k) = map_keys(n).first() {
                hash.remove(tx, &k)?;
            }
            Err::<(), _>(Error::NoRoot)
        });
        match undone {
            Err(Error::NoRoot) => {}
            Err(e) => return Err(e),
            Ok(()) => unreachable!("the scope always fails"),
        }
        if abort {
            return Err(Error::NoRoot); // deliberate abort: must leave no trace
        }
        Ok(n)
    })
}

/// Check a heap against the workload: returns the counter, or what is wrong. Checked: the
/// list's newest nodes intact and in order, both maps' invariants and entries, the allocator's
/// used bytes equal to what the list and maps hold, and `Heap::reachability` clean (every
/// allocated block reached from the root, no dangling pointer) with the same bytes.
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
    let (counter, nodes, map_blocks) = heap
        .read(|r| {
            let root_ptr = match r.root::<Root>() {
                Ok(p) => p,
                Err(Error::NoRoot) => return Ok((0, Vec::new(), Vec::new())),
                Err(e) => return Err(e),
            };
            let root = *r.get(root_ptr)?;
            let mut nodes = Vec::new();
            let mut p = root.head;
            while !p.is_null() && nodes.len() <= KEEP as usize {
                let n = *r.get(p)?;
                let bytes = r.slice(n.payload)?;
                let intact = n.check == n.value ^ CHECK
                    && n.payload.len() == payload_len(seed, n.value, root.counter)
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
            let blocks = verify_maps(r, root_ptr, root.counter)?;
            Ok((root.counter, nodes, blocks))
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
            for &b in &map_blocks {
                sum += tx
                    .usable_size(PPtr::<u8>::from_offset(b))
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
    if counter > 0 {
        // The library's own walk from the root (`Heap::reachability`) must agree: no leak, no
        // dangling pointer, and the same bytes as the sums above.
        let reach = heap
            .reachability::<Root>()
            .map_err(|e| format!("reachability walk: {e}"))?;
        if !reach.is_clean() || reach.reached_bytes != used {
            return Err(format!(
                "reachability: {} of {} bytes reached, leaked {:?}, dangling {:?}",
                reach.reached_bytes, used, reach.leaked, reach.dangling
            ));
        }
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
    /// Threads that committed (each has at most one transaction in flight).
    pub threads: u64,
}

/// Under `Durability::None`, [`record`] flushes after every this many transactions.
///
/// ```
/// assert!(crash_tests::FLUSH_EVERY > 1);
/// ```
pub const FLUSH_EVERY: u64 = 5;

/// Under `Durability::Full`, the recorded workload checkpoints after every this many
/// transactions (so old-generation frames lie behind the log's tail in short traces).
///
/// ```
/// assert!(crash_tests::CHECKPOINT_EVERY > 1);
/// ```
pub const CHECKPOINT_EVERY: u64 = 7;

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
    record_threads(path, seed, durability, txns, 1)
}

/// [`record`] with `threads` threads committing at once (under `Full` they share barriers:
/// group commit), until `txns` transactions are committed in all; each thread pushes
/// `Mark(n)` after its own acknowledgement (so marks can arrive out of order: the disk model
/// keeps the highest). With one thread the run is the same as [`record`]'s; with more it
/// depends on the scheduling, so a seed alone does not reproduce it.
///
/// ```
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = crash_tests::record_threads(&dir.path().join("live.heap"), 1, Durability::Full, 12, 3);
/// let mut marks: Vec<u64> = rec
///     .events
///     .iter()
///     .filter_map(|e| match e {
///         TraceEvent::Mark(n) => Some(*n),
///         _ => None,
///     })
///     .collect();
/// marks.sort();
/// assert_eq!(marks, (1..=12).collect::<Vec<_>>());
/// assert_eq!(rec.threads, 3);
/// ```
pub fn record_threads(
    path: &Path,
    seed: u64,
    durability: Durability,
    txns: u64,
    threads: u64,
) -> Recording {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let _ = std::fs::remove_file(path);
    Heap::create(path, options(durability))
        .unwrap()
        .close()
        .unwrap();
    let base = std::fs::read(path).unwrap();
    let trace = Trace::default();
    let heap = Heap::open(path, options(durability).record(trace.clone())).unwrap();
    // Each thread takes a slot before a transaction and commits it (aborting now and then
    // first), so that exactly `txns` commit. One thread draws from `Rng::seeded(seed)`, as the
    // single-threaded recordings always did.
    let threads = threads.max(1);
    let (slots, done) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = std::sync::Barrier::new(threads as usize);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (heap, trace, slots, done, start) = (&heap, &trace, &slots, &done, &start);
            s.spawn(move || {
                let mut rng = if threads == 1 {
                    Rng::seeded(seed)
                } else {
                    Rng::seeded(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                };
                start.wait();
                while slots.fetch_add(1, SeqCst) < txns {
                    loop {
                        let abort = rng.below(8) == 0;
                        match step(heap, seed, abort) {
                            Ok(n) => {
                                trace.lock().unwrap().push(TraceEvent::Mark(n));
                                let d = done.fetch_add(1, SeqCst) + 1;
                                // Under None, a flush now and then: its barrier makes the
                                // frames before it durable, so later frames vouch for them
                                // (and power cuts land in flushes).
                                if durability == Durability::None && d % FLUSH_EVERY == 0 {
                                    heap.flush().unwrap();
                                }
                                // Under Full, a checkpoint now and then: since format 3 the
                                // in-place path checkpoints only when a logged frame reaches
                                // the new extent, so without these a short trace rarely leaves
                                // frames of an older generation behind the log's tail (power
                                // cuts then never test that they are ignored).
                                if durability == Durability::Full && d % CHECKPOINT_EVERY == 0 {
                                    heap.checkpoint().unwrap();
                                }
                                break;
                            }
                            Err(Error::NoRoot) if abort => {}
                            Err(e) => panic!("workload transaction failed: {e}"),
                        }
                    }
                }
            });
        }
    });
    heap.close().unwrap();
    let events = std::mem::take(&mut *trace.lock().unwrap());
    Recording {
        base,
        events,
        seed,
        durability,
        threads,
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    /// The workload's transactions split and free B-tree nodes and grow and clear the hash
    /// table, so crashes inside their commits cover those changes: counted here over the first
    /// 300 transactions, and every state verified.
    #[test]
    fn transactions_split_nodes_and_grow_tables() {
        let dir = tempfile::tempdir().unwrap();
        let heap = Heap::create(dir.path().join("maps.heap"), options(Durability::Full)).unwrap();
        let shape = |heap: &Heap| {
            heap.read(|r| {
                let root = r.root::<Root>()?;
                let mut nodes = std::collections::BTreeSet::new();
                tree_of(root).for_each_block(r, |b| {
                    nodes.insert(b);
                })?;
                let buckets = r.get(hash_of(root))?.buckets();
                let depth = r.get(hash_of(root).cast::<[u64; 2]>())?[1];
                Ok((nodes, buckets, depth))
            })
            .unwrap()
        };
        let (mut grew_tree, mut shrank_tree, mut grew_table, mut cleared) = (0, 0, 0, 0);
        let (mut doubled, mut shrunk) = (0, 0);
        step(&heap, 11, false).unwrap();
        let mut last = shape(&heap);
        for n in 2..=300 {
            assert_eq!(step(&heap, 11, false).unwrap(), n);
            let now = shape(&heap);
            grew_tree += now.0.difference(&last.0).next().is_some() as u32;
            shrank_tree += last.0.difference(&now.0).next().is_some() as u32;
            // Buckets never merge: fewer of them is a clear.
            grew_table += (now.1 > last.1 && last.1 > 0) as u32;
            doubled += (now.2 > last.2 && last.1 > 0) as u32;
            cleared += (now.1 < last.1) as u32;
            last = now;
            assert_eq!(verify(&heap, 11), Ok(n));
            // The head's payload, and the one before it: committed larger, then shrunk by
            // this transaction where it was (its entry holds the payload's size, not the size
            // first allocated).
            let sizes = heap
                .transaction(|tx| {
                    let root = tx.root::<Root>()?;
                    let head = *tx.get(tx.get(root)?.head)?;
                    let before = *tx.get(head.next)?;
                    Ok([head, before].map(|n| tx.usable_size(n.payload.as_ptr())))
                })
                .unwrap();
            // (A large object's usable size is its size; a small one's, its block's.)
            if payload_size(11, n) > GROW_FROM {
                assert_eq!(sizes[0], Some(payload_len(11, n, n)));
            }
            if payload_size(11, n - 1) > GROW_FROM {
                assert_eq!(sizes[1], Some(payload_size(11, n - 1)));
            }
            shrunk += shrinks_later(11, n - 1) as u32;
        }
        assert!(shrunk >= 10, "shrinks in {shrunk} transactions");
        assert!(grew_tree >= 20, "node splits in {grew_tree} transactions");
        assert!(shrank_tree >= 5, "node frees in {shrank_tree} transactions");
        assert!(
            grew_table >= 10,
            "table growth in {grew_table} transactions"
        );
        assert!(doubled >= 10, "directory doubled in {doubled} transactions");
        assert!(cleared >= 5, "clears in {cleared} transactions");
        eprintln!(
            "of 300 transactions: {grew_tree} split B-tree nodes, {shrank_tree} freed some, \
             {grew_table} split hash buckets, {doubled} doubled the directory, {cleared} \
             cleared the hash map, {shrunk} shrank a large payload"
        );
    }
}
