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

/// An open that finds a torn first frame keeps that log (it replays nothing); a session that
/// then only reads must still leave a clean log at close (a checkpoint: a new generation and
/// its sentinel), or every later open would find the torn frame again and search the rest of
/// the log for a frame vouching for it.
#[test]
fn a_session_that_only_reads_after_a_torn_frame_still_cleans_the_log() {
    use std::os::unix::fs::FileExt;
    use txheap::inspect::{read_log, LogEnd};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("torn.heap");
    let opts = || Options::new().durability(Durability::None);
    let heap = Heap::create(&p, opts()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<u64>()?;
        tx.set(r, 1)
    })
    .unwrap();
    heap.checkpoint().unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<u64>()?;
        tx.set(r, 2)
    })
    .unwrap();
    let len = heap.stats().unwrap().log_used;
    let copy = dir.path().join("copy.heap");
    std::fs::copy(&p, &copy).unwrap();
    drop(heap);
    // Tear the one frame (never flushed, so nothing vouches for it).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    let at = txheap_recovery::LOG_OFFSET + len / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xa5], at).unwrap();
    drop(f);
    assert!(matches!(read_log(&copy).unwrap().end, LogEnd::Torn { .. }));
    let before = seq(&copy);
    let heap = Heap::open(&copy, opts()).unwrap();
    assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 1);
    heap.close().unwrap();
    assert!(seq(&copy) > before, "the close did not checkpoint");
    let end = read_log(&copy).unwrap().end;
    assert!(matches!(end, LogEnd::Clean { .. }), "{end:?}");
}
