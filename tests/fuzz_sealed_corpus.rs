//! Replay the minimized corpus of the `open_recover_sealed` fuzz target (`fuzz/corpus-sealed-min/`)
//! and its crash reproducers (`fuzz/regressions-sealed/`) on the stable toolchain, through the
//! same code the target runs (`fuzz/sealed.rs`): each input names a seed image and structured
//! mutations, which are applied and then resealed (every checksum recomputed), and the resulting
//! checksum-valid hostile file must open to a usable heap or be refused cleanly and unchanged.
//! Also checks the sealing itself, and writes the seeds (`write_sealed_seeds`, ignored).

#[path = "../fuzz/sealed.rs"]
mod sealed;

use std::path::{Path, PathBuf};
use txheap::{Heap, Options};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn inputs(sub: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(sub)) else {
        return Vec::new();
    };
    let mut v: Vec<_> = entries
        .map(|e| {
            let p = e.unwrap().path();
            let d = std::fs::read(&p).unwrap();
            (p, d)
        })
        .collect();
    v.sort();
    v
}

/// Sealing is exact: a seed (valid, every checksum right) comes out of `build` with no ops
/// unchanged, and a frame or superblock with a zeroed checksum gets back the one the crates write.
#[test]
fn sealing_reproduces_the_checksums_the_crates_write() {
    for (i, (name, bytes)) in sealed::SEEDS.iter().enumerate() {
        assert!(bytes.len() >= 81920, "seed {name} is missing");
        assert!(
            sealed::build(&[i as u8]) == *bytes,
            "sealing changed seed {name}"
        );
        let mut img = bytes.to_vec();
        for slot in [0, 4096] {
            img[slot + 124..slot + 128].fill(0);
        }
        sealed::seal(&mut img, 65536);
        // Slot B of a fresh file is all zero and has no crc to restore.
        assert!(img == *bytes, "superblock crcs of {name} not restored");
    }
    let mut b = txheap_log::FrameBuilder::new();
    b.push_range(73728, b"TXHEAPHH and more").unwrap();
    b.push_range(81920, &[9; 64]).unwrap();
    let f = b.finish(3, 17).to_vec();
    let (hl, co) = (txheap_log::FRAME_HEADER_LEN, txheap_log::CHECK_OFFSET);
    let mut z: [u8; txheap_log::FRAME_HEADER_LEN] = f[..hl].try_into().unwrap();
    z[co..co + 4].fill(0);
    let check = sealed::frame_check(&z, &f[hl..]);
    assert_eq!(check.to_le_bytes(), f[co..co + 4]);
    let sb = txheap_recovery::Superblock::new(65536, 1 << 30).encode();
    assert_eq!(crc32fast::hash(&sb[..124]).to_le_bytes(), sb[124..128]);
}

/// Every seed opens, commits, and passes the checks.
#[test]
fn seeds_pass_the_checks() {
    let dir = scratch();
    for (i, (name, _)) in sealed::SEEDS.iter().enumerate() {
        let out = sealed::check(&dir.path().join("seed.heap"), &sealed::build(&[i as u8]));
        assert!(
            out.read_only_opened && out.opened && out.committed,
            "{name}: {out:?}"
        );
    }
}

fn replay(sub: &str) -> (usize, usize, usize) {
    let dir = scratch();
    let path = dir.path().join("image.heap");
    let (mut n, mut opened, mut committed) = (0, 0, 0);
    for (p, data) in inputs(sub) {
        let image = sealed::build(&data);
        let out = std::panic::catch_unwind(|| sealed::check(&path, &image))
            .unwrap_or_else(|_| panic!("input {} fails the checks", p.display()));
        n += 1;
        opened += out.opened as usize;
        committed += out.committed as usize;
    }
    eprintln!("{sub}: {n} inputs, {opened} opened writable, {committed} committed");
    (n, opened, committed)
}

/// The minimized corpus: every input passes the checks (a refused open leaves the file
/// unchanged, byte for byte).
#[test]
fn replay_sealed_corpus() {
    let (n, opened, committed) = replay("corpus-sealed-min");
    assert!(n >= 50, "fuzz/corpus-sealed-min is missing ({n} inputs)");
    assert!(
        opened > 0 && committed > 0 && opened < n,
        "{opened} {committed} of {n}"
    );
}

/// Reproducers of the bug `open_recover_sealed` found: a writable open replayed the log and
/// checkpointed (`txheap_recovery::recover`) before it decoded the heap header and walked the
/// chunk headers, so a damaged heap (or a superblock counter at its limit) behind committed
/// frames was refused only after the file was rewritten (seq, generation and next_txid bumped,
/// the log's frames spent). Since `recover_checked`, both are refused with the file unchanged.
#[test]
fn refused_open_leaves_the_file_unchanged() {
    let (n, opened, _) = replay("regressions-sealed");
    assert!(n >= 2, "fuzz/regressions-sealed is missing ({n} inputs)");
    assert_eq!(
        opened, 0,
        "every reproducer is a damaged heap and must be refused"
    );
}

/// Write the seeds of `fuzz/seeds-sealed/` (already committed; the fuzz corpus refers to them by
/// index, so rewriting them changes what the corpus means): `cargo test --release --test
/// fuzz_sealed_corpus -- --ignored write_sealed_seeds`. All live copies (frames in the log) of a
/// heap with a 64 KiB log and a 64 MiB max_size.
#[test]
#[ignore]
fn write_sealed_seeds() {
    let out = fuzz_dir().join("seeds-sealed");
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        Options::new()
            .initial_size(0)
            .log_size(64 << 10)
            .max_size(64 << 20)
    };
    // Runs of several classes, a large object, a freed block; three frames in the log.
    let p = dir.path().join("runs.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    let small = heap
        .transaction(|tx| {
            let r = tx.root::<[u64; 8]>()?;
            tx.get_mut(r)?[0] = 1;
            tx.alloc(5u64)?;
            tx.alloc([1u8; 100])?;
            let k = tx.alloc([2u8; 1000])?;
            tx.alloc([3u8; 5000])?;
            tx.alloc_slice(&[4u8; 40000])?;
            Ok(k)
        })
        .unwrap();
    heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(300_000).map(|_| ()))
        .unwrap();
    heap.transaction(|tx| {
        tx.free(small)?;
        tx.alloc([5u8; 24]).map(|_| ())
    })
    .unwrap();
    std::fs::copy(&p, out.join("runs-live.img")).unwrap();
    drop(heap);
    // A large object freed (a multi-chunk free extent) next to live runs and a live large one.
    let p = dir.path().join("extents.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    let big = heap
        .transaction(|tx| {
            tx.alloc([6u8; 64])?;
            let big = tx.alloc_slice_zeroed::<u8>(600_000)?;
            tx.alloc_slice_zeroed::<u8>(70_000)?;
            Ok(big)
        })
        .unwrap();
    heap.transaction(|tx| tx.free_slice(big)).unwrap();
    heap.transaction(|tx| tx.alloc([7u8; 200]).map(|_| ()))
        .unwrap();
    std::fs::copy(&p, out.join("extents-live.img")).unwrap();
    drop(heap);
    // Checkpointed once (slot B current, generation 2), then two frames of generation 2.
    let p = dir.path().join("gen2.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    heap.transaction(|tx| tx.alloc([8u8; 48]).map(|_| ()))
        .unwrap();
    heap.checkpoint().unwrap();
    heap.transaction(|tx| tx.alloc([9u8; 2000]).map(|_| ()))
        .unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<[u64; 8]>()?;
        tx.get_mut(r)?[1] = 2;
        Ok(())
    })
    .unwrap();
    let s = heap.stats().unwrap();
    assert_eq!((s.superblock_seq, s.log_generation), (2, 2));
    std::fs::copy(&p, out.join("gen2-live.img")).unwrap();
    drop(heap);
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        println!("{} {}", e.path().display(), e.metadata().unwrap().len());
    }
}
