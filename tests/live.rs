//! `inspect::check`, `inspect::stats` and `inspect::read_log` on a heap that a writer holds open
//! and keeps changing: every check is clean, and every figure is exactly the one a committed
//! state had (the writer records each state's used bytes by transaction id), whatever the
//! writer is doing (growing, freeing, checkpointing a small log, writing large objects in place).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use txheap::inspect::{check, read_log, stats, Verdict};
use txheap::{Durability, Heap, Options, PPtr, PSlice};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    last: PPtr<[u64; 8]>,
    big: PSlice<u8>,
}

fn live_reads_see_committed_states(durability: Durability, checks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.heap");
    let opts = Options::new()
        .durability(durability)
        .log_size(64 << 10)
        .initial_size(1 << 20);
    let heap = Heap::create(&path, opts).unwrap();
    // (txid, the heap's used bytes after that transaction), in commit order. Transaction ids
    // increase but need not be consecutive: under `None`, a flush after an in-place commit
    // writes a voucher frame, which takes an id (its state is the transaction's before it).
    let used = Mutex::new(vec![(0u64, 0u64)]);
    let stop = AtomicBool::new(false);
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (mut live, mut states) = (0, Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                heap.transaction(|tx| {
                    let root = tx.root::<Root>()?;
                    let mut r = *tx.get(root)?;
                    let node = tx.alloc([k; 8])?;
                    if k % 2 == 0 && !r.last.is_null() {
                        tx.free(r.last)?;
                    }
                    r.last = node;
                    if k % 40 == 0 {
                        // A large object (written in place where no reader runs), the old freed.
                        if r.big.offset() != 0 {
                            tx.free_slice(r.big)?;
                        }
                        r.big = tx.alloc_slice(&vec![k as u8; 300_000])?;
                    }
                    *tx.get_mut(root)? = r;
                    Ok(())
                })
                .unwrap();
                let st = heap.stats().unwrap();
                used.lock().unwrap().push((st.next_txid - 1, st.used_bytes));
            }
        });
        let _stop = Stop(&stop);
        for i in 0..checks {
            let (s, txid) = if i % 2 == 0 {
                let r = check(&path, &mut |_, _| {}).unwrap();
                assert_eq!(r.verdict, Verdict::Clean, "{:?}", r.findings);
                (r.stats.unwrap(), r.live.expect("the writer holds the file"))
            } else {
                let (s, live) = stats(&path).unwrap();
                (s, live.expect("the writer holds the file"))
            };
            // The writer records a state's figure just after its commit returns: wait for it.
            let want = loop {
                let u = used.lock().unwrap();
                if u.last().is_some_and(|&(t, _)| t >= txid) {
                    break u[u.partition_point(|&(t, _)| t <= txid) - 1].1;
                }
                drop(u);
                std::thread::yield_now();
            };
            assert_eq!(
                s.used_bytes, want,
                "used bytes of a live copy at transaction {txid}"
            );
            live += 1;
            states.push(txid);
        }
        let log = read_log(&path).unwrap();
        assert!(log
            .frames
            .iter()
            .all(|f| f.ranges.iter().all(|r| r.0 >= 8192)));
    });
    states.dedup();
    eprintln!(
        "{durability:?}: {live} live checks and stats, {} distinct states, writer at transaction {}",
        states.len(),
        used.lock().unwrap().last().unwrap().0
    );
    assert!(
        states.len() > checks / 4,
        "the writer hardly moved: {}",
        states.len()
    );
}

#[test]
fn live_checks_and_stats_under_a_committing_writer() {
    // Under valgrind (`scripts/valgrind.sh` sets `TXHEAP_VALGRIND`), a few of each.
    let n = if std::env::var_os("TXHEAP_VALGRIND").is_some() {
        10
    } else {
        100
    };
    live_reads_see_committed_states(Durability::None, 3 * n);
    live_reads_see_committed_states(Durability::Full, n);
}
