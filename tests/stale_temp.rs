//! A process killed while it created or copied a heap leaves its hidden temporary file beside
//! the destination; process ids are reused, so a later process can get the same id and would
//! pick the same temporary name. It must skip it, not fail (found by the kill -9 campaign: after
//! 14,245 children, `Heap::open_or_create` failed with "create temporary file ...: File exists").
//! (A test binary of its own: the numbering of temporary names starts at 0 in a new process.)

use txheap::{Heap, Options};

#[test]
fn stale_temporary_files_of_a_dead_process_with_this_pid_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    // What crashed processes with this process id would have left: the first 100 names this
    // process would try, for a new heap and for a copy.
    for n in 0..100 {
        for (name, kind) in [("h.heap", "new"), ("copy.heap", "copy")] {
            let stale = dir.path().join(format!(".{name}.txheap-{kind}-{pid}-{n}"));
            std::fs::write(&stale, b"left by a crashed process").unwrap();
        }
    }
    let path = dir.path().join("h.heap");
    let heap = Heap::create(&path, Options::new()).expect("create beside stale temporary files");
    heap.transaction(|tx| {
        let r = tx.root::<u64>()?;
        tx.set(r, 5)
    })
    .unwrap();
    let copy = dir.path().join("copy.heap");
    heap.backup_to(&copy)
        .expect("copy beside stale temporary files");
    heap.close().unwrap();
    let heap = Heap::open_or_create(&path, Options::new()).unwrap();
    assert_eq!(heap.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 5);
    let c = Heap::open(&copy, Options::new()).unwrap();
    assert_eq!(c.read(|r| r.get(r.root::<u64>()?).copied()).unwrap(), 5);
    // The stale files are left alone (another pid namespace's live process may own a name).
    for n in 0..100 {
        let stale = dir.path().join(format!(".h.heap.txheap-new-{pid}-{n}"));
        assert_eq!(std::fs::read(&stale).unwrap(), b"left by a crashed process");
    }
}
