//! A read-only handle beside a writer follows the writer's `max_size` (found by the twenty-second
//! session's review: a backup from such a handle, after the writer raised `max_size` and grew
//! past the old one, formatted its copy with the old one, and the copy refused to open). In a
//! file of its own: its set-up needs free address space right after the handle's mapping, which
//! other tests in the same process may take.

use txheap::{Durability, Heap, Options, PSlice};

/// A live handle keeps the `max_size` it opened with; a writer that raised it and grew past
/// it makes `backup_to` from the live handle write a copy whose superblock names the old
/// `max_size` under a longer heap: the backup reports success, and the copy cannot be opened.
#[test]
fn live_backup_after_the_writer_raised_max_size_opens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.heap");
    let opts = Options::new()
        .durability(Durability::Full)
        .log_size(1 << 20)
        .initial_size(2 << 20)
        .max_size(64 << 20)
        .reserve(512 << 20);
    let w = Heap::create(&p, opts).unwrap();
    w.transaction(|tx| {
        let r = tx.root::<PSlice<u8>>()?;
        let s = tx.alloc_slice(&[1u8; 64])?;
        tx.set(r, s)
    })
    .unwrap();
    // Leave free address space right after the live handle's mapping, so that it can grow in
    // place (mappings are placed top-down: the new one lands just below this placeholder).
    let hole = 1usize << 30;
    // SAFETY: a fresh anonymous reservation, unmapped below; nothing else refers to it.
    let ph = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            hole,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(ph, libc::MAP_FAILED);
    let r = Heap::open_read_only(&p).unwrap();
    // SAFETY: our own placeholder.
    unsafe { libc::munmap(ph, hole) };
    w.set_max_size(256 << 20).unwrap();
    let big = 80usize << 20;
    w.transaction(|tx| {
        let r = tx.root::<PSlice<u8>>()?;
        let s = tx.alloc_slice(&vec![0xABu8; big])?;
        tx.set(r, s)
    })
    .unwrap();
    let seen = r
        .read(|rd| Ok(rd.get(rd.root::<PSlice<u8>>()?)?.len()))
        .expect("the live handle's mapping grew in place (test setup)");
    assert_eq!(seen, big as u64);
    let copy = d.path().join("copy.heap");
    let rep = r.backup_to(&copy).expect("backup from the live handle");
    println!("backup: {rep:?}");
    let opened = Heap::open_read_only(&copy);
    assert!(
        opened.is_ok(),
        "the backup reported success, but the copy does not open: {:?}",
        opened.err()
    );
}
