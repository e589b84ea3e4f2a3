//! Replay the fuzz seeds, the minimized fuzz corpus (`fuzz/corpus-min/`, a libFuzzer `-merge=1`
//! of a fuzz run's corpus) and any crash reproducers (`fuzz/regressions/`) on the stable
//! toolchain, doing what `fuzz/fuzz_targets/open_recover.rs` does: each image opens to a usable
//! heap or gives a clear error, never a panic, and a refused image is never modified.

use txheap::{Heap, Options};

#[test]
fn replay_fuzz_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.heap");
    let (mut n, mut opened) = (0, 0);
    for sub in ["seeds", "corpus-min", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in entries {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            n += 1;
            std::fs::write(&path, &data).unwrap();
            match Heap::open_read_only(&path) {
                Ok(h) => {
                    opened += 1;
                    let _ = h.stats();
                    let _ = h.read(|r| r.root::<[u64; 8]>().and_then(|p| r.get(p).copied()));
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    assert_eq!(
                        std::fs::read(&path).unwrap(),
                        data,
                        "a refused file was modified"
                    );
                }
            }
            // Writable: a transaction may fail with a clear error (a tiny max_size, say); it must
            // not panic.
            if let Ok(h) = Heap::open(&path, Options::new()) {
                let _ = h.transaction(|tx| tx.alloc([7u8; 100]).map(|_| ()));
                let _ = h.transaction(|tx| tx.alloc_slice_zeroed::<u8>(100_000).map(|_| ()));
                let _ = h.close();
            }
        }
    }
    eprintln!("replayed {n} fuzz inputs, {opened} opened");
    assert!(n >= 5, "the fuzz seeds are missing");
    assert!(
        opened >= 1,
        "no input opened: the seeds are not valid heaps"
    );
}
