//! A `read` on the writer's handle that reads the same file through a read-only handle inside
//! it (a "live" reader, docs/ARCHITECTURE.md section 17), while the writer must wait for this
//! process's older readers: an in-place commit, or a checkpoint that empties the log. The
//! writer used to shut the live handles out first and then wait for its own readers, and the
//! reader, pinned, waited to enter the live handle: a deadlock (found by review). A deadlock
//! here ends the test binary with a message after 10 s (the scoped threads could not be
//! joined otherwise).

use std::time::Duration;
use txheap::{Durability, Heap, Options};

/// Runs `writer_step` on `heap` while another thread holds `heap.read` and, inside it, reads
/// through `live`; both must finish.
fn both_finish(
    heap: &Heap,
    live: &Heap,
    x: txheap::PPtr<u64>,
    writer_step: impl FnOnce(&Heap) -> txheap::Result<()> + Send,
) {
    let (done_tx, done) = std::sync::mpsc::channel();
    let (pinned_tx, pinned) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let dt = done_tx.clone();
        s.spawn(move || {
            let r = heap.read(|r| {
                pinned_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300)); // the writer starts meanwhile
                let inner = live.read(|lr| lr.get(x).copied())?;
                Ok((*r.get(x)?, inner))
            });
            dt.send(format!("reader: {r:?}")).unwrap();
        });
        pinned.recv().unwrap();
        s.spawn(move || {
            let r = writer_step(heap);
            done_tx.send(format!("writer: {r:?}")).unwrap();
        });
        for _ in 0..2 {
            match done.recv_timeout(Duration::from_secs(10)) {
                Ok(m) => {
                    eprintln!("{m}");
                    assert!(m.contains("Ok("), "{m}");
                }
                Err(_) => {
                    // (Not `eprintln!`: the test harness captures it, and `exit` drops it.)
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}: deadlock: the reader and the writer still waiting after 10 s",
                        std::thread::current().name().unwrap_or("?")
                    );
                    std::process::exit(101);
                }
            }
        }
    });
}

#[test]
fn a_nested_live_read_beside_an_in_place_commit_finishes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("n.heap");
    let heap = Heap::create(
        &p,
        Options::new()
            .durability(Durability::Full)
            .log_size(1 << 20),
    )
    .unwrap();
    let live = Heap::open_read_only(&p).unwrap();
    let x = heap.transaction(|tx| tx.alloc(1u64)).unwrap();
    // 8 MiB of new objects, more than half the 1 MiB log: written in place (fresh space), so
    // the commit waits for older readers.
    both_finish(&heap, &live, x, |heap| {
        heap.transaction(|tx| tx.alloc_slice(&vec![5u8; 8 << 20]).map(|_| ()))
    });
}

#[test]
fn a_nested_live_read_beside_a_checkpoint_finishes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.heap");
    let heap = Heap::create(&p, Options::new().durability(Durability::Full)).unwrap();
    let live = Heap::open_read_only(&p).unwrap();
    let x = heap.transaction(|tx| tx.alloc(1u64)).unwrap();
    // A commit after the reader pinned is held back from the file while the reader runs; the
    // checkpoint must put it there, so it waits for the reader.
    both_finish(&heap, &live, x, |heap| {
        heap.transaction(|tx| tx.set(x, 2))?;
        heap.checkpoint()
    });
    assert_eq!(heap.read(|r| Ok(*r.get(x)?)).unwrap(), 2);
    assert_eq!(live.read(|r| Ok(*r.get(x)?)).unwrap(), 2);
}
