//! Reads after many `Durability::None` commits. Until a flush, the file may not hold those
//! commits' frames (their log is not durable), so a reader takes each of their ranges from its
//! overlay: after 100,000 small commits the first read decoded them all (74 ms) and every read
//! of an object they wrote composed a copy (1.9 µs). `Heap::read` now flushes first when at
//! least 4,096 frames are not durable and the writer lock is free (docs/ARCHITECTURE.md
//! section 11, step 8), and never waits for that lock.

use std::sync::mpsc;
use std::time::Duration;

use txheap::{Durability, Heap, Options, PPtr};

/// `READER_FLUSH_FRAMES` in `src/limits.rs`.
const THRESHOLD: u64 = 4096;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    head: PPtr<Node>,
    len: u64,
}

fn none_heap(dir: &tempfile::TempDir) -> Heap {
    Heap::create(
        dir.path().join("n.heap"),
        Options::new().durability(Durability::None),
    )
    .unwrap()
}

/// Push `values`, one `None` commit each.
fn push(heap: &Heap, values: std::ops::Range<u64>) {
    for value in values {
        heap.transaction(|tx| {
            let root = tx.root::<Root>()?;
            let head = tx.get(root)?.head;
            let p = tx.alloc(Node { value, next: head })?;
            let r = tx.get_mut(root)?;
            r.head = p;
            r.len += 1;
            Ok(())
        })
        .unwrap();
    }
}

/// The list's length and the sum of its values, walked in one read.
fn walk(heap: &Heap) -> (u64, u64) {
    heap.read(|r| {
        let root = r.get(r.root::<Root>()?)?;
        let (mut p, mut n, mut sum) = (root.head, 0, 0);
        while !p.is_null() {
            let node = r.get(p)?;
            n += 1;
            sum += node.value;
            p = node.next;
        }
        assert_eq!(n, root.len);
        Ok((n, sum))
    })
    .unwrap()
}

fn barriers(heap: &Heap) -> u64 {
    let io = heap.stats().unwrap().io;
    io.range_barriers + io.full_barriers
}

fn sum(n: u64) -> u64 {
    n * (n - 1) / 2
}

#[test]
fn a_read_after_many_none_commits_flushes_them_first() {
    let d = tempfile::tempdir().unwrap();
    let heap = none_heap(&d);
    push(&heap, 0..THRESHOLD - 1);
    let before = barriers(&heap);
    // Below the threshold: the reader takes the frames from its overlay, no barrier.
    assert_eq!(walk(&heap), (THRESHOLD - 1, sum(THRESHOLD - 1)));
    assert_eq!(barriers(&heap), before, "a flush below the threshold");
    push(&heap, THRESHOLD - 1..THRESHOLD);
    assert_eq!(walk(&heap), (THRESHOLD, sum(THRESHOLD)));
    let after = barriers(&heap);
    assert!(
        after > before,
        "no flush before the read ({before} barriers)"
    );
    // The frames are durable now: another read does not flush again.
    assert_eq!(walk(&heap), (THRESHOLD, sum(THRESHOLD)));
    assert_eq!(barriers(&heap), after);
    // And the flushed commits survive a reopen, as any flushed commits do.
    drop(heap);
    let heap = Heap::open(d.path().join("n.heap"), Options::new()).unwrap();
    assert_eq!(walk(&heap), (THRESHOLD, sum(THRESHOLD)));
}

#[test]
fn a_read_does_not_flush_under_full_or_on_a_read_only_handle() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("f.heap");
    {
        let heap = Heap::create(&path, Options::new()).unwrap();
        push(&heap, 0..THRESHOLD);
        let before = barriers(&heap);
        assert_eq!(walk(&heap), (THRESHOLD, sum(THRESHOLD)));
        assert_eq!(barriers(&heap), before);
    }
    let ro = Heap::open_read_only(&path).unwrap();
    assert_eq!(walk(&ro), (THRESHOLD, sum(THRESHOLD)));
}

#[test]
fn a_read_never_waits_for_the_writer_lock_to_flush() {
    let d = tempfile::tempdir().unwrap();
    let heap = &none_heap(&d);
    push(heap, 0..THRESHOLD);
    let before = barriers(heap);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            heap.transaction(|tx| {
                let root = tx.root::<Root>()?;
                tx.get_mut(root)?.len += 0;
                entered_tx.send(()).unwrap();
                // Holds the writer lock until the read below has returned; had the read
                // waited for the lock, this gives up after 10 s and the test fails.
                Ok(done_rx.recv_timeout(Duration::from_secs(10)).is_ok())
            })
            .unwrap()
        });
        entered_rx.recv().unwrap();
        assert_eq!(walk(heap), (THRESHOLD, sum(THRESHOLD)));
        done_tx.send(()).unwrap();
        assert!(
            writer.join().unwrap(),
            "the read waited for the writer lock"
        );
    });
    // The read could not flush (the lock was taken); the next one does.
    assert_eq!(barriers(heap), before);
    assert_eq!(walk(heap), (THRESHOLD, sum(THRESHOLD)));
    assert!(barriers(heap) > before);
}

#[test]
fn a_reader_pinned_during_the_flush_keeps_its_view() {
    let d = tempfile::tempdir().unwrap();
    let heap = &none_heap(&d);
    push(heap, 0..10);
    let (pinned_tx, pinned_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let old = s.spawn(move || {
            heap.read(|r| {
                let root = r.get(r.root::<Root>()?)?;
                let first = *r.get(root.head)?;
                pinned_tx.send(()).unwrap();
                // (A timeout, so that a failure below cannot leave this thread waiting.)
                let _ = go_rx.recv_timeout(Duration::from_secs(30));
                // Everything this view showed is as it was before the flush.
                assert_eq!((root.len, first.value), (10, 9));
                assert_eq!(r.get(r.root::<Root>()?)?.len, 10);
                Ok(())
            })
            .unwrap()
        });
        pinned_rx.recv().unwrap();
        push(heap, 10..10 + THRESHOLD);
        let before = barriers(heap);
        let seen = walk(heap);
        let flushed = barriers(heap) > before;
        go_tx.send(()).unwrap();
        old.join().unwrap();
        assert_eq!(seen, (10 + THRESHOLD, sum(10 + THRESHOLD)));
        assert!(flushed, "no flush");
    });
    // The old reader held every frame after its state out of the file, so the flush wrote
    // none. Now that it has ended, a read (after the retry pause) puts them there: with no
    // commit since, nothing else would, and every read would take them from its overlay.
    std::thread::sleep(Duration::from_millis(5));
    let written = heap.stats().unwrap().io.bytes_written;
    assert_eq!(walk(heap), (10 + THRESHOLD, sum(10 + THRESHOLD)));
    let after = heap.stats().unwrap().io.bytes_written;
    assert!(
        after > written,
        "the held-back frames never reached the file"
    );
    assert_eq!(walk(heap), (10 + THRESHOLD, sum(10 + THRESHOLD)));
    assert_eq!(heap.stats().unwrap().io.bytes_written, after);
}
