//! `Heap::backup_to` and `Heap::compact_to` while another thread commits: every copy opens,
//! passes `inspect::check`, and equals exactly one committed state of the source (its counter
//! says which, and every other field must be what that commit left); the writer keeps
//! committing while copies are taken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use txheap::inspect::{check, Verdict};
use txheap::{Durability, Heap, Options, PPtr};

const VALS: usize = 16;
const RING: usize = 20;

#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    counter: u64,
    vals: [u64; VALS],
    ring: [PPtr<Node>; RING],
}

#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Node {
    words: [u64; 8],
}

/// Commit number `k` (from 1): `vals[k % VALS] = k`, a new node holding `k` in every word
/// replaces the one `RING` commits older (freed), and the counter becomes `k`.
fn commit(heap: &Heap) -> txheap::Result<u64> {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let k = tx.get(root)?.counter + 1;
        let old = tx.get(root)?.ring[k as usize % RING];
        if !old.is_null() {
            tx.free(old)?;
        }
        let node = tx.alloc(Node { words: [k; 8] })?;
        let r = tx.get_mut(root)?;
        r.counter = k;
        r.vals[k as usize % VALS] = k;
        r.ring[k as usize % RING] = node;
        Ok(k)
    })
}

/// Check that the heap at `path` holds exactly the state commit `counter` left; returns it.
fn verify_state(path: &std::path::Path) -> u64 {
    let copy = Heap::open_read_only(path).unwrap();
    copy.read(|r| {
        let root = r.get(r.root::<Root>()?)?;
        let c = root.counter;
        for (j, &v) in root.vals.iter().enumerate() {
            // The last commit k <= c with k % VALS == j, or 0.
            let want = (0..=c)
                .rev()
                .find(|k| *k > 0 && *k as usize % VALS == j)
                .unwrap_or(0);
            assert_eq!(v, want, "vals[{j}] of a copy at counter {c}");
        }
        for k in c.saturating_sub(RING as u64 - 1).max(1)..=c {
            let node = r.get(root.ring[k as usize % RING])?;
            assert_eq!(
                node.words, [k; 8],
                "node of commit {k} in a copy at counter {c}"
            );
        }
        Ok(c)
    })
    .unwrap()
}

fn copies_under_writer(durability: Durability, copies: usize) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.heap");
    // A small log: checkpoints happen while copies hold their snapshots.
    let opts = Options::new()
        .durability(durability)
        .log_size(64 << 10)
        .initial_size(4 << 20);
    let heap = Heap::create(&src, opts).unwrap();
    commit(&heap).unwrap();
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let (mut seen, mut last, mut compacted) = (Vec::new(), 0, 0);
    /// Stops the writer when the copying side ends, also by a failed assertion (the scope
    /// would otherwise wait for the writer forever).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let k = commit(&heap).unwrap();
                committed.store(k, Ordering::Relaxed);
            }
        });
        let _stop = Stop(&stop);
        for i in 0..copies {
            let dst = dir.path().join(format!("copy-{i}.heap"));
            let compact = i % 4 == 3;
            let report = if compact {
                compacted += 1;
                heap.compact_to(&dst).unwrap()
            } else {
                heap.backup_to(&dst).unwrap()
            };
            let r = check(&dst, &mut |_, _| {}).unwrap();
            assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.findings);
            let c = verify_state(&dst);
            assert!(c >= last, "copy {i} went back from counter {last} to {c}");
            assert!(
                report.txid >= c,
                "the report names transaction {} for counter {c}",
                report.txid
            );
            last = c;
            seen.push(c);
            std::fs::remove_file(&dst).unwrap();
        }
    });
    seen.dedup();
    let total = committed.load(Ordering::Relaxed);
    eprintln!(
        "{durability:?}: {copies} copies ({compacted} compact) saw {} distinct states; the writer \
         committed {total} transactions meanwhile",
        seen.len()
    );
    // The writer was not stopped by the copies: they saw it move on, many times.
    assert!(
        seen.len() > copies / 10,
        "{copies} copies saw only {} states",
        seen.len()
    );
    // Nothing but the copies' own temporary files was ever left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// Under valgrind (`scripts/valgrind.sh` sets `TXHEAP_VALGRIND`), a few copies of each kind.
fn scaled(n: usize) -> usize {
    if std::env::var_os("TXHEAP_VALGRIND").is_some() {
        n / 50
    } else {
        n
    }
}

#[test]
fn copies_taken_under_a_committing_writer_equal_committed_states() {
    copies_under_writer(Durability::None, scaled(1000));
    copies_under_writer(Durability::Full, scaled(200));
}

#[test]
fn a_copy_refuses_an_existing_destination_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("s.heap"), Options::new()).unwrap();
    let dst = dir.path().join("taken");
    std::fs::write(&dst, b"mine").unwrap();
    assert!(matches!(
        heap.backup_to(&dst),
        Err(txheap::Error::AlreadyExists { .. })
    ));
    assert_eq!(std::fs::read(&dst).unwrap(), b"mine");
    // A copy inside a transaction on the same thread would wait for itself: refused.
    let r = heap.transaction(|_| heap.backup_to(dir.path().join("x.heap")));
    assert!(matches!(r, Err(txheap::Error::ReadInTransaction)), "{r:?}");
}

/// A heap that never allocated (its root only: no chunk) copied whole and compacted: both
/// copies are clean and hold the root. (A review found the compacted copy's header claiming
/// one chunk with no table entry for it: `Corrupt` on every open, the root unreachable.)
#[test]
fn copies_of_a_heap_without_chunks_open() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("s.heap"), Options::new()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<u64>()?;
        *tx.get_mut(r)? = 42;
        Ok(())
    })
    .unwrap();
    let whole = dir.path().join("whole.heap");
    let compact = dir.path().join("compact.heap");
    heap.backup_to(&whole).unwrap();
    heap.compact_to(&compact).unwrap();
    // (And compaction in place.)
    heap.compact().unwrap();
    heap.close().unwrap();
    let source = dir.path().join("s.heap");
    for copy in [&whole, &compact, &source] {
        let r = check(copy, &mut |_, _| {}).unwrap();
        assert_eq!(r.verdict, Verdict::Clean, "{copy:?}: {:?}", r.findings);
        let h = Heap::open(copy, Options::new()).unwrap();
        assert_eq!(h.read(|r| Ok(*r.get(r.root::<u64>()?)?)).unwrap(), 42);
        h.close().unwrap();
    }
}

fn disk_bytes(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// A copy leaves its log a hole, as a clean close does: a review found the compact copy of a
/// one-object heap taking the whole 16 MiB log in blocks, 30x its closed, compacted source.
/// Every range the copy holds has its blocks, pages of zeros too: a hole under a live run
/// would take its blocks only at a later commit's apply, where a full disk poisons.
#[test]
fn a_copy_has_blocks_for_what_it_holds_and_none_for_its_log() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("s.heap");
    let heap = Heap::create(&src, Options::new()).unwrap();
    // A run of zero-valued objects (its pages are zeros but its bitmap's).
    heap.transaction(|tx| {
        for _ in 0..1000 {
            tx.alloc(0u64)?;
        }
        Ok(())
    })
    .unwrap();
    let log = heap.stats().unwrap().log_size;
    for (name, compact) in [("whole.heap", false), ("compact.heap", true)] {
        let dst = d.path().join(name);
        let r = if compact {
            heap.compact_to(&dst).unwrap()
        } else {
            heap.backup_to(&dst).unwrap()
        };
        let blocks = disk_bytes(&dst);
        // At least the zone table's and the run's whole chunks (growth writes table entries
        // past the used ones: a review found a compact copy's table pages past them holes) and
        // the heap header and root area; at most the heap and a few pages (superblocks, the
        // log's sentinel page).
        let held = r.file_len - 8192 - log;
        assert!(
            blocks >= (512 << 10) + 8192 && blocks < held + (64 << 10),
            "{name}: {blocks} bytes of blocks for {held} bytes of heap and a {log}-byte log"
        );
        let copy = Heap::open(&dst, Options::new()).unwrap();
        copy.transaction(|tx| tx.alloc(1u64).map(|_| ())).unwrap();
        copy.close().unwrap();
    }
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Salvaged {
    count: u64,
    pad: u64,
    x: txheap::PSlice<u8>,
    pad2: [u64; 6],
    z: txheap::PSlice<u8>,
}

/// A salvage keeps a frame that points the root at an object allocated before the last
/// checkpoint, and drops a later transaction that freed it: under `Full` that one's frame had
/// already changed the object's table entry in place, and no kept frame rewrites it, so the
/// salvaged handle shows the object where its tables say free space is. A full copy of that
/// handle read only what the tables hold, and copied the object as zeros (found by review);
/// it takes every byte of a salvaged handle.
#[test]
fn a_full_copy_of_a_salvaged_handle_holds_what_the_handle_shows() {
    use txheap_recovery::txheap_log::verified_frame_at;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.heap");
    let o = Options::new()
        .initial_size(1 << 20)
        .log_size(256 << 10)
        .max_size(64 << 20)
        .durability(Durability::Full);
    let heap = Heap::create(&src, o).unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<Salvaged>()?;
        let z = tx.alloc_slice(&vec![0xAAu8; 100_000])?;
        tx.get_mut(root)?.z = z;
        Ok(())
    })
    .unwrap();
    heap.checkpoint().unwrap();
    // Kept: x = z.
    heap.transaction(|tx| {
        let root = tx.root::<Salvaged>()?;
        let r = tx.get_mut(root)?;
        r.count = 1;
        r.x = r.z;
        Ok(())
    })
    .unwrap();
    // To be damaged: the object freed, both pointers cleared.
    heap.transaction(|tx| {
        let root = tx.root::<Salvaged>()?;
        let r = *tx.get(root)?;
        tx.free_slice(r.z)?;
        let r = tx.get_mut(root)?;
        r.count = 2;
        r.x = txheap::PSlice::empty();
        r.z = txheap::PSlice::empty();
        Ok(())
    })
    .unwrap();
    // Vouches for it.
    heap.transaction(|tx| {
        let root = tx.root::<Salvaged>()?;
        tx.get_mut(root)?.count = 3;
        Ok(())
    })
    .unwrap();
    let mut image = std::fs::read(&src).unwrap();
    std::mem::forget(heap); // (as a crash: the file stays as the commits left it)
    let mut at = txheap_recovery::LOG_OFFSET as usize;
    let mut starts = Vec::new();
    while let Some(h) = verified_frame_at(&image[at..]) {
        starts.push(at);
        at += h.frame_len() as usize;
    }
    assert!(starts.len() >= 3, "{starts:?}");
    image[starts[1] + 60] ^= 1; // inside the second frame (the free) after its header
    let path = dir.path().join("damaged.heap");
    std::fs::write(&path, &image).unwrap();
    let ro = Heap::salvage_read_only(&path).unwrap();
    let shown = ro
        .read(|r| {
            let s = *r.get(r.root::<Salvaged>()?)?;
            assert_eq!(s.count, 1, "the salvage keeps the first transaction only");
            Ok(r.slice(s.x)?.to_vec())
        })
        .unwrap();
    assert!(shown.len() == 100_000 && shown.iter().all(|&b| b == 0xAA));
    let dst = dir.path().join("copy.heap");
    ro.backup_to(&dst).unwrap();
    let copy = Heap::salvage_read_only(&dst).unwrap();
    let copied = copy
        .read(|r| Ok(r.slice(r.get(r.root::<Salvaged>()?)?.x)?.to_vec()))
        .unwrap();
    let same = copied.iter().zip(&shown).filter(|(a, b)| a == b).count();
    assert!(
        copied == shown,
        "the copy's x: {same} of {} bytes equal",
        shown.len()
    );
}
