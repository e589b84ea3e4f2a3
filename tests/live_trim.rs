//! The live copy of `inspect::check` / `inspect::stats` (docs/ARCHITECTURE.md section 15) under
//! frames that log only the words they change (section 3, step 4). Found by an independent
//! review of that change: the copy reads the heap's metadata (the first 2 KiB of every chunk,
//! where run bitmaps live) from the file, then scans the log and replays its frames over it.
//! Under `Full`, a large object taken from free space reaches the file with no frame. When a new
//! run's bitmap was trimmed like any range, its words that equal what the chunk held (a freed
//! in-place object's bytes) were in no frame, and a copy that read the chunk before the in-place
//! `pwrite` replayed the run over the old bytes. A new run's bitmap is now logged whole.
//!
//! Each round: a live `check` starts on a 2 GiB file (it copies 8,192 chunk heads), and while
//! it runs the writer commits three transactions on the lowest free chunk C:
//!   k:   a 200 KiB object in place at C, whose first byte is 1 and the rest 0;
//!   k+1: free it;
//!   k+2: one small object of a class with no run yet: a new run at C, bitmap word 0 = 1 and
//!        the rest 0, the same bytes as the freed object's.
//! With the bitmap trimmed, the copy's run was one block short of the state it named (every
//! class), or, over an older freed object of 0xff bytes, a healthy heap was reported `Damaged`.

use std::sync::Mutex;

use txheap::inspect::{check, Verdict};
use txheap::{Durability, Heap, Options};

/// Small-object classes whose new run's bitmap plus first block is one staged range of at most
/// 4 KiB (so it would be trimmed): 16..=128 step 16, then 160..=3584 in quarter steps.
fn classes() -> Vec<usize> {
    let mut c: Vec<usize> = (1..=8).map(|i| 16 * i).collect();
    let mut base = 128;
    while base < 4096 {
        for k in 1..=4 {
            let s = base + base / 4 * k;
            if s <= 3584 {
                c.push(s);
            }
        }
        base *= 2;
    }
    c
}

#[test]
fn a_live_copy_holds_a_new_run_made_over_in_place_bytes() {
    rounds(false);
}

/// The same, with the chunk holding an older freed in-place object of 0xff bytes before the
/// check starts (with the bitmap trimmed, the copy's bitmap marked blocks past the run's end,
/// and a healthy heap was reported `Damaged`).
#[test]
fn a_live_check_of_a_healthy_heap_stays_clean_over_freed_objects() {
    rounds(true);
}

/// Wait until this process's live copy (`.txheap-live-PID-N`, made in the temporary directory
/// and unlinked at once: found through this process's descriptors, whose links keep its name)
/// holds at least `bytes` of data blocks: the copy writes the heap header area, the zone table
/// and then 2 KiB per chunk in chunk order.
fn wait_until_copied(bytes: u64) {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!(".txheap-live-{}-", std::process::id());
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(10) {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let named = target
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
            if named {
                if let Ok(m) = std::fs::metadata(e.path()) {
                    if m.blocks() * 512 >= bytes {
                        return;
                    }
                }
            }
        }
        std::thread::yield_now();
    }
    panic!("no live copy grew to {bytes} bytes");
}

/// The tests here look for this process's live copy among its descriptors: one at a time.
static ONE: Mutex<()> = Mutex::new(());

fn rounds(stale_ones: bool) {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.heap");
    let opts = Options::new()
        .durability(Durability::Full)
        .initial_size(2 << 30);
    let heap = Heap::create(&path, opts).unwrap();
    // (txid, used bytes after it), in commit order.
    let used = Mutex::new(vec![(0u64, 0u64)]);
    let record = || {
        let st = heap.stats().unwrap();
        used.lock().unwrap().push((st.next_txid - 1, st.used_bytes));
    };
    let want_at = |txid: u64| {
        let u = used.lock().unwrap();
        u[u.partition_point(|&(t, _)| t <= txid) - 1].1
    };
    let mut big = vec![0u8; 200 << 10];
    big[0] = 1; // word 0 of the next run's bitmap once it holds one block
    let mut wrong = Vec::new();
    for size in classes() {
        if stale_ones {
            // Before the check: an object of 0xff bytes in place at C, freed (durable).
            let old = heap
                .transaction(|tx| tx.alloc_slice(&vec![0xffu8; 200 << 10]))
                .unwrap();
            record();
            heap.transaction(|tx| tx.free_slice(old)).unwrap();
            record();
        }
        std::thread::scope(|s| {
            let checker = s.spawn(|| check(&path, &mut |_, _| {}).unwrap());
            // Start the commits once the copy has copied the heads of a few hundred chunks
            // (past C, the lowest free chunk, far from the 8,192th: it scans the log after).
            wait_until_copied(1 << 20);
            let t = std::time::Instant::now();
            // k: the large object, in place (under Full: pwrite, fdatasync, then the frame).
            let l = heap.transaction(|tx| tx.alloc_slice(&big)).unwrap();
            record();
            // k+1: free it.
            heap.transaction(|tx| tx.free_slice(l)).unwrap();
            record();
            // k+2: a new run of an unused class at the same chunk.
            let o = heap
                .transaction(|tx| tx.alloc_slice(&vec![0u8; size]))
                .unwrap();
            assert_eq!(
                o.offset() / (256 << 10),
                l.offset() / (256 << 10),
                "the run is at C"
            );
            record();
            let commits = t.elapsed();
            let r = checker.join().unwrap();
            let txid = r.live.expect("the writer holds the file");
            let got = r.stats.as_ref().map(|s| s.used_bytes);
            let want = want_at(txid);
            eprintln!(
                "class {size}: live copy at txid {txid}: verdict {:?}, used {got:?}, the writer had {want} \
                 (three commits took {commits:?}, checkpoints {})",
                r.verdict, heap.stats().unwrap().checkpoints
            );
            if r.verdict != Verdict::Clean || got != Some(want) {
                wrong.push((size, txid, r.verdict, got, want, r.findings.clone()));
            }
        });
    }
    assert!(
        wrong.is_empty(),
        "live copies that are not the committed state they name: {wrong:#?}"
    );
}
