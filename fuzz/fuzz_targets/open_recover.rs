//! Fuzz open and recovery on arbitrary file images: only `Ok` with a usable heap or a clear
//! `Error`, never a panic, a crash or a hang; a refused file is never modified.
//! Run: `cargo +nightly fuzz run open_recover fuzz/corpus fuzz/seeds -- -max_len=100000`
//! (see crash-tests/README.md section 4 for the recorded run and the corpus minimization).
#![no_main]

use libfuzzer_sys::fuzz_target;
use txheap::{Heap, Options};

fuzz_target!(|data: &[u8]| {
    let dir = std::path::Path::new("/dev/shm").join(format!("txheap-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("image.heap");
    std::fs::write(&path, data).unwrap();
    // Read-only: replays into private memory; must never write the file.
    match Heap::open_read_only(&path) {
        Ok(h) => {
            let _ = h.stats();
            let _ = h.read(|r| r.root::<[u64; 8]>().and_then(|p| r.get(p).copied()));
        }
        Err(_) => assert_eq!(
            std::fs::read(&path).unwrap(),
            data,
            "a refused file was modified"
        ),
    }
    // Writable: recovery may replay and checkpoint; afterwards the heap must work.
    if let Ok(h) = Heap::open(&path, Options::new()) {
        let _ = h.transaction(|tx| tx.alloc([7u8; 100]).map(|_| ()));
        let _ = h.transaction(|tx| tx.alloc_slice_zeroed::<u8>(100_000).map(|_| ()));
        let _ = h.close();
    }
});
