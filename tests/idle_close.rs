//! A close checkpoints only when the handle has something in its log (docs/ARCHITECTURE.md
//! section 4, "At close"): a session that committed nothing leaves the superblock as it was,
//! and one that committed, or whose open replayed frames, checkpoints.

use txheap::{Durability, Heap, Options};

fn seq(path: &std::path::Path) -> u64 {
    let heap = Heap::open_read_only(path).unwrap();
    heap.stats().unwrap().superblock_seq
}

#[test]
fn a_session_that_commits_nothing_leaves_the_superblock_alone() {
    for durability in [Durability::Full, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("idle.heap");
        let heap = Heap::create(&p, Options::new().durability(durability)).unwrap();
        heap.transaction(|tx| {
            let r = tx.root::<u64>()?;
            tx.set(r, 7)
        })
        .unwrap();
        heap.close().unwrap();
        let after_commit = seq(&p);

        // Open, read, close: nothing written to the superblock.
        let heap = Heap::open(&p, Options::new().durability(durability)).unwrap();
        assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 7);
        heap.close().unwrap();
        assert_eq!(
            seq(&p),
            after_commit,
            "{durability:?}: an idle close checkpointed"
        );

        // A commit: the close checkpoints (and the first commit after the open did too).
        let heap = Heap::open(&p, Options::new().durability(durability)).unwrap();
        heap.transaction(|tx| {
            let r = tx.root::<u64>()?;
            tx.set(r, 8)
        })
        .unwrap();
        heap.close().unwrap();
        assert!(
            seq(&p) > after_commit,
            "{durability:?}: a close after a commit"
        );
        let heap = Heap::open(&p, Options::new()).unwrap();
        assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 8);
        assert_eq!(heap.stats().unwrap().log_used, 0);
    }
}

#[test]
fn a_session_whose_open_replayed_checkpoints_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("replayed.heap");
    let heap = Heap::create(&p, Options::new()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<u64>()?;
        tx.set(r, 9)
    })
    .unwrap();
    // As a crash leaves it: the frame in the log, no checkpoint.
    let copy = dir.path().join("copy.heap");
    std::fs::copy(&p, &copy).unwrap();
    drop(heap);
    let before = seq(&copy);
    let heap = Heap::open(&copy, Options::new()).unwrap();
    // The open left the replayed frame in the log...
    assert!(heap.stats().unwrap().log_used > 0);
    assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 9);
    heap.close().unwrap();
    // ...and the close checkpointed it: the log is empty, the value kept.
    assert!(seq(&copy) > before);
    let heap = Heap::open(&copy, Options::new()).unwrap();
    assert_eq!(heap.stats().unwrap().log_used, 0);
    assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 9);
}
