//! A heap file larger than the machine's RAM plus swap opens in every mode (issue 13).
//!
//! Before format 3's release the whole file was mapped writable and private without
//! `MAP_NORESERVE`, and the kernel's overcommit check refused any such mapping larger than RAM
//! plus swap: `open_read_only` and `open` under `Durability::None` failed with ENOMEM
//! ("Cannot allocate memory"), so a heap that had grown past that size could never be opened
//! again. The file here is sparse (its length is set past RAM + swap, its blocks are not
//! written), so the test needs no disk space; the heap's own data sits at its start, and the
//! heap must still read, commit and grow after each open.

use std::path::Path;

use txheap::{Durability, Heap, Options, PSlice};

/// RAM plus swap, from /proc/meminfo.
fn ram_and_swap() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kib = |key: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} missing from /proc/meminfo"))
    };
    (kib("MemTotal:") + kib("SwapTotal:")) * 1024
}

const OBJECTS: u64 = 64;

fn value(i: u64) -> [u64; 8] {
    [i, i * 3, i ^ 0x5a5a, 7, 8, 9, 10, i + 1]
}

/// Read every object back through `heap` and check it.
fn check(heap: &Heap) {
    heap.read(|r| {
        let root = r.root::<PSlice<[u64; 8]>>()?;
        let objs = *r.get(root)?;
        assert_eq!(objs.len(), OBJECTS);
        for (i, v) in r.slice(objs)?.iter().enumerate() {
            assert_eq!(*v, value(i as u64));
        }
        Ok(())
    })
    .unwrap();
}

/// Commit a transaction that changes an object and allocates 8 MiB (new chunks).
fn commit(heap: &Heap, k: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<PSlice<[u64; 8]>>()?;
        let objs = *tx.get(root)?;
        let first = objs.get(0).unwrap();
        tx.set(first, value(0))?;
        let big = tx.alloc_slice_zeroed::<u8>(8 << 20)?;
        tx.write_slice(big, 0, &k.to_le_bytes())?;
        Ok(())
    })
    .unwrap();
}

fn open_every_way(path: &Path, max_size: u64) {
    for durability in [Durability::Full, Durability::None] {
        let heap = Heap::open(path, Options::new().durability(durability))
            .unwrap_or_else(|e| panic!("open under {durability:?}: {e}"));
        assert_eq!(heap.stats().unwrap().max_size, max_size);
        check(&heap);
        commit(&heap, durability as u64);
        check(&heap);
        heap.close().unwrap();
    }
    let heap = Heap::open_read_only(path).unwrap_or_else(|e| panic!("open_read_only: {e}"));
    check(&heap);
    drop(heap);
}

#[test]
fn a_file_larger_than_ram_and_swap_opens_in_every_mode() {
    let big = ram_and_swap() / 4 * 5 / 4096 * 4096;
    let max_size = big + (1 << 30);
    // In the target directory: on the disk, never a tmpfs (a sparse file costs nothing there
    // either, but the target directory is where cargo keeps test files).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("big.heap");
    let heap = Heap::create(&path, Options::new().max_size(max_size)).unwrap();
    heap.transaction(|tx| {
        let values: Vec<[u64; 8]> = (0..OBJECTS).map(value).collect();
        let objs = tx.alloc_slice(&values)?;
        let root = tx.root::<PSlice<[u64; 8]>>()?;
        tx.set(root, objs)
    })
    .unwrap();
    heap.close().unwrap();
    // Past RAM + swap, sparse.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(big)
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > ram_and_swap(), "{} bytes", meta.len());
    open_every_way(&path, max_size);
    assert!(std::fs::metadata(&path).unwrap().len() >= big);
}
