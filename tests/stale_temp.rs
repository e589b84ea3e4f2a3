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

/// A legal destination name near `NAME_MAX` (255 bytes): the temporary name keeps only a
/// prefix of it, so create and copies work (a review found `File name too long` from the
/// temporary file's create for a 250-byte name, under `backup_to`, `compact_to` and
/// `Heap::create` alike).
#[test]
fn a_long_legal_name_is_created_and_copied_to() {
    let dir = tempfile::tempdir().unwrap();
    let name = |c: char| format!("{}.heap", c.to_string().repeat(245));
    let probe = dir.path().join(name('p'));
    std::fs::write(&probe, b"x").expect("a 250-byte name is legal here");
    std::fs::remove_file(&probe).unwrap();
    let heap = txheap::Heap::create(dir.path().join(name('a')), txheap::Options::new()).unwrap();
    let p = heap.transaction(|tx| tx.alloc(5u64)).unwrap();
    heap.backup_to(dir.path().join(name('b'))).unwrap();
    heap.compact_to(dir.path().join(name('c'))).unwrap();
    for c in ['b', 'c'] {
        let copy = txheap::Heap::open_read_only(dir.path().join(name(c))).unwrap();
        assert_eq!(copy.read(|r| r.get(p).copied()).unwrap(), 5);
    }
    // Nothing else is left in the directory: no temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}
