//! Replay the minimized corpus of the `open_recover_sealed` fuzz target (`fuzz/corpus-sealed-min/`)
//! and its crash reproducers (`fuzz/regressions-sealed/`) on the stable toolchain, through the
//! same code the target runs (`fuzz/sealed.rs`): each input names a seed image and structured
//! mutations, which are applied and then resealed (every checksum recomputed), and the resulting
//! checksum-valid hostile file must open to a usable heap (whose chunk tables the fuzzer's own
//! reading of the format accepts) or be refused cleanly and unchanged. Also checks the sealing
//! itself against the checksums the crates write (superblock, frames, chunk-table entries), and
//! writes the seeds (`write_sealed_seeds`, ignored).

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

/// The layout of every seed (64 KiB log): zone 0's table is chunk 0, at the chunk area's start.
const CHUNK_AREA: usize = 8192 + 65536 + 8192;
const CHUNK: usize = 262144;
const ZONE_CHUNKS: usize = 16384;

/// The kind bytes of zone 0's entries that a walk reads (from entry 0 by extent lengths up to
/// the heap header's chunk count), read here from the raw bytes.
fn walked_kinds(img: &[u8]) -> Vec<u8> {
    let count = u64::from_le_bytes(img[73728 + 8..73728 + 16].try_into().unwrap()) as usize;
    let (mut i, mut kinds) = (0, Vec::new());
    while i < count {
        let e = &img[CHUNK_AREA + 16 * i..][..16];
        kinds.push(e[0]);
        i += match e[0] {
            1 | 3 => u32::from_le_bytes(e[4..8].try_into().unwrap()) as usize,
            _ => 1,
        };
    }
    kinds
}

/// Entry sealing is exact: with the check of every entry of zone 0's table zeroed, a seed's
/// table gets back the checks txheap wrote; entries carried in a frame's ranges are resealed at
/// their file offsets (zone 0's table, and zone 1's 4 GiB further), only when whole, and only
/// inside a table chunk (an entry-like pattern in a run's chunk is left alone).
#[test]
fn sealing_reproduces_the_entry_checks_txheap_writes() {
    let mut kinds_seen = std::collections::BTreeSet::new();
    for (name, bytes) in &sealed::SEEDS[5..] {
        let kinds = walked_kinds(bytes);
        assert_eq!(kinds.first(), Some(&4), "{name}: entry 0 is not TABLE");
        kinds_seen.extend(kinds);
        let mut img = bytes.to_vec();
        let mut zeroed = 0;
        for i in 0..ZONE_CHUNKS {
            let e = CHUNK_AREA + 16 * i;
            if (1..=4).contains(&img[e]) {
                img[e + 2..e + 4].fill(0);
                zeroed += 1;
            }
        }
        assert!(zeroed >= 4, "{name}: {zeroed} entries in zone 0's table");
        assert!(img != **bytes);
        sealed::seal(&mut img, 65536);
        assert!(img == **bytes, "entry checks of {name} not restored");
    }
    assert_eq!(
        kinds_seen.into_iter().collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "the seeds lack an entry kind"
    );

    let seed = sealed::SEEDS[5].1;
    let valid = &seed[CHUNK_AREA + 16..CHUNK_AREA + 48]; // entries 1 and 2, as txheap wrote them
    let mut zeroed = valid.to_vec();
    zeroed[2..4].fill(0);
    zeroed[18..20].fill(0);
    let zone1 = CHUNK_AREA as u64 + (ZONE_CHUNKS * CHUNK) as u64;
    let frame = |e: &[u8], partial: &[u8], zone1_entry: &[u8]| {
        let mut b = txheap_log::FrameBuilder::new();
        b.push_range(CHUNK_AREA as u64 + 16, e).unwrap();
        // From entry 1's byte 1 through entry 2: entry 1 is not whole there, its check stays.
        b.push_range(CHUNK_AREA as u64 + 17, partial).unwrap();
        b.push_range(zone1 + 3 * 16, zone1_entry).unwrap();
        // Inside run chunk 1: not a table.
        b.push_range((CHUNK_AREA + CHUNK + 16) as u64, &zeroed[..16])
            .unwrap();
        b.finish(2, 2).to_vec()
    };
    let mut partial_valid = zeroed[1..16].to_vec();
    partial_valid.extend_from_slice(&valid[16..]);
    let want = frame(valid, &partial_valid, &valid[..16]);
    let mut img = seed.to_vec();
    let got = frame(&zeroed, &zeroed[1..], &zeroed[..16]);
    assert_eq!(got.len(), want.len());
    img[8192..8192 + got.len()].copy_from_slice(&got);
    sealed::seal(&mut img, 65536);
    assert!(
        img[8192..8192 + want.len()] == want[..],
        "entries in a frame's ranges not resealed as txheap would write them"
    );
}

/// The check an opened file's tables go through (`format_violation`, the fuzzer's own reading
/// of the format) passes every seed and names each thing format 3 forbids (entries resealed),
/// and txheap refuses each of those files too.
#[test]
fn format_violation_finds_what_the_format_forbids() {
    let dir = scratch();
    let path = dir.path().join("tables.heap");
    for (name, bytes) in &sealed::SEEDS {
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(sealed::format_violation(&path), None, "{name}");
    }
    // Closed, so no frame replays over the damage: TABLE, RUN, LARGE of 2 chunks, FREE.
    let opts = Options::new()
        .initial_size(0)
        .log_size(64 << 10)
        .max_size(64 << 20);
    std::fs::remove_file(&path).unwrap();
    let heap = Heap::create(&path, opts).unwrap();
    heap.transaction(|tx| {
        tx.alloc([1u8; 100])?;
        tx.alloc_slice_zeroed::<u8>(300_000).map(|_| ())
    })
    .unwrap();
    heap.close().unwrap();
    let closed = std::fs::read(&path).unwrap();
    assert_eq!(walked_kinds(&closed), [4, 2, 3, 1]);
    assert_eq!(sealed::format_violation(&path), None);
    let e = |i: usize| CHUNK_AREA + 16 * i;
    type Damage<'a> = (&'a str, &'a dyn Fn(&mut [u8]), &'a str);
    let cases: [Damage; 12] = [
        ("kind 0", &|img| img[e(1)] = 0, "check"),
        ("kind 5 (not resealed)", &|img| img[e(1)] = 5, "check"),
        ("no TABLE first", &|img| img[e(0)] = 1, "entry 0"),
        ("TABLE later", &|img| img[e(1)] = 4, "after"),
        ("run class 44", &|img| img[e(1) + 1] = 44, "class 44"),
        ("free with a class", &|img| img[e(4) + 1] = 3, "class 3"),
        ("run of 2 chunks", &|img| img[e(1) + 4] = 2, "2 chunks"),
        (
            "large of 0 bytes",
            &|img| img[e(2) + 8..e(2) + 16].fill(0),
            "size 0",
        ),
        (
            "large past its chunks",
            &|img| img[e(2) + 8..e(2) + 16].copy_from_slice(&(2u64 * 262144 + 1).to_le_bytes()),
            "size 524289",
        ),
        ("run with a size", &|img| img[e(1) + 8] = 1, "size 1"),
        (
            "extent past the count",
            &|img| img[e(4) + 4] += 1,
            "runs past",
        ),
        ("bad check", &|img| img[e(2) + 2] ^= 1, "check"),
    ];
    for (what, damage, expect) in cases {
        let mut img = closed.clone();
        damage(&mut img);
        if what != "bad check" {
            sealed::seal(&mut img, 65536);
        }
        std::fs::write(&path, &img).unwrap();
        let v = sealed::format_violation(&path);
        assert!(
            v.as_deref().is_some_and(|v| v.contains(expect)),
            "{what}: {v:?}"
        );
        assert!(Heap::open_read_only(&path).is_err(), "{what}: opened");
    }
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
    for (k, sel) in sealed::EXTRA_SELECTORS.enumerate() {
        let (name, bytes) = sealed::EXTRA_SEEDS[k % sealed::EXTRA_SEEDS.len()];
        let img = sealed::build(&[sel]);
        assert!(img == bytes, "sealing changed seed {name}");
        let out = sealed::check(&dir.path().join("seed.heap"), &img);
        assert!(
            out.read_only_opened && out.opened && out.committed,
            "{name}: {out:?}"
        );
    }
}

/// No committed input uses the extra seeds' selectors (they would change its seed).
#[test]
fn committed_inputs_keep_their_seeds() {
    for sub in ["corpus-sealed-min", "regressions-sealed"] {
        for (p, data) in inputs(sub) {
            let sel = data.first().copied().unwrap_or(0);
            assert!(
                !sealed::EXTRA_SELECTORS.contains(&sel),
                "{} uses selector {sel}",
                p.display()
            );
        }
    }
}

/// The extra seed (a `None` log with an in-place check and padded vouchers) under 600 inputs of
/// one to six ops each, drawn from a fixed generator, as the fuzz target would mutate it: each
/// must pass the checks. Both outcomes must occur (some open, some are refused), so the inputs
/// reach past the checksums.
#[test]
fn checked_seed_under_generated_ops() {
    let dir = scratch();
    let path = dir.path().join("image.heap");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut n, mut opened, mut refused) = (0, 0, 0);
    for _ in 0..600 {
        let ops = 1 + next() % 6;
        let mut data = vec![*sealed::EXTRA_SELECTORS.start()];
        for _ in 0..ops {
            data.extend_from_slice(&next().to_le_bytes());
            data.extend_from_slice(&next().to_le_bytes());
        }
        let image = sealed::build(&data);
        let out = std::panic::catch_unwind(|| sealed::check(&path, &image))
            .unwrap_or_else(|_| panic!("generated input {data:02x?} fails the checks"));
        n += 1;
        if out.opened {
            opened += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("checked seed: {n} generated inputs, {opened} opened writable, {refused} refused");
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

fn replay(sub: &str) -> (usize, usize, usize) {
    let dir = scratch();
    let path = dir.path().join("image.heap");
    let (mut n, mut read_only, mut opened, mut committed) = (0, 0, 0, 0);
    let mut tx_errors = std::collections::BTreeMap::<String, usize>::new();
    for (p, data) in inputs(sub) {
        let image = sealed::build(&data);
        let out = std::panic::catch_unwind(|| sealed::check(&path, &image))
            .unwrap_or_else(|_| panic!("input {} fails the checks", p.display()));
        n += 1;
        read_only += out.read_only_opened as usize;
        opened += out.opened as usize;
        committed += out.committed as usize;
        if let Some(e) = out.tx_error {
            *tx_errors.entry(e).or_default() += 1;
        }
    }
    eprintln!(
        "{sub}: {n} inputs, {read_only} opened read-only, {opened} opened writable, {committed} \
         committed; first transaction failed after an open: {tx_errors:?}"
    );
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
/// chunk headers (format 2; chunk tables since format 3), so a damaged heap (or a superblock counter at its limit) behind committed
/// frames was refused only after the file was rewritten (seq, generation and next_txid bumped,
/// the log's frames spent). Since `recover_checked`, both are refused with the file unchanged.
/// (`refused-after-recovery-damaged-chunk-header` was found on format 2; read by format 3's
/// ops it zeroes the kind byte of chunk 1's table entry, which is then no entry and keeps a
/// stale check: still a damaged heap behind committed frames.)
#[test]
fn refused_open_leaves_the_file_unchanged() {
    let (n, opened, _) = replay("regressions-sealed");
    assert!(n >= 2, "fuzz/regressions-sealed is missing ({n} inputs)");
    assert_eq!(
        opened, 0,
        "every reproducer is a damaged heap and must be refused"
    );
}

/// Write `fuzz/seeds-sealed/checked-live.img` (already committed: [`sealed::EXTRA_SEEDS`]):
/// `cargo test --release --test fuzz_sealed_corpus -- --ignored write_checked_seed`. A live copy
/// of a `Durability::None` heap (64 KiB log, 64 MiB max_size) whose log holds a frame with an
/// in-place check, the flush's padded vouchers, and two frames after them (checked below).
#[test]
#[ignore]
fn write_checked_seed() {
    let out = fuzz_dir().join("seeds-sealed");
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("checked.heap");
    let opts = Options::new()
        .initial_size(0)
        .log_size(64 << 10)
        .max_size(64 << 20)
        .in_place_min(64 << 10)
        .durability(txheap::Durability::None);
    let heap = Heap::create(&p, opts).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<[u64; 8]>()?;
        tx.get_mut(r)?[0] = 1;
        tx.alloc([1u8; 100]).map(|_| ())
    })
    .unwrap();
    // In place, with no barrier of its own: its frame carries the check.
    heap.transaction(|tx| tx.alloc_slice(&[7u8; 70_000]).map(|_| ()))
        .unwrap();
    heap.flush().unwrap(); // the two vouchers, the first padded
    heap.transaction(|tx| {
        let r = tx.root::<[u64; 8]>()?;
        tx.get_mut(r)?[1] = 2;
        Ok(())
    })
    .unwrap();
    heap.transaction(|tx| tx.alloc([3u8; 24]).map(|_| ()))
        .unwrap();
    let img = out.join("checked-live.img");
    std::fs::copy(&p, &img).unwrap();
    drop(heap);
    let log = txheap::inspect::read_log(&img).unwrap();
    let kinds: Vec<(usize, usize, u64)> = log
        .frames
        .iter()
        .map(|f| (f.ranges.len(), f.in_place.len(), f.len))
        .collect();
    assert!(
        kinds.iter().any(|k| k.1 > 0),
        "no in-place check: {kinds:?}"
    );
    let vouchers: Vec<u64> = log
        .frames
        .iter()
        .filter(|f| f.ranges.is_empty() && f.in_place.is_empty())
        .map(|f| f.offset)
        .collect();
    assert_eq!(vouchers.len(), 2, "{kinds:?}");
    assert_eq!(
        vouchers[1] % 4096,
        0,
        "the second voucher not on a page: {vouchers:?}"
    );
    println!(
        "{} {} {kinds:?}",
        img.display(),
        std::fs::metadata(&img).unwrap().len()
    );
}

/// Write the seeds of `fuzz/seeds-sealed/` (already committed; the fuzz corpus refers to them by
/// index, so rewriting them changes what the corpus means): `cargo test --release --test
/// fuzz_sealed_corpus -- --ignored write_sealed_seeds`. All live copies (frames in the log) of a
/// heap with a 64 KiB log and a 64 MiB max_size. Format 3: chunk 0 is zone 0's table, a run's
/// bitmap and a large object start at their chunk (checked below).
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
    // A large object starts at its chunk (no header); small objects after a run's bitmap.
    let at_chunk = |off: u64| {
        let rel = off as usize - CHUNK_AREA;
        assert!(rel >= CHUNK, "an object in zone 0's table chunk: {off}");
        rel % CHUNK == 0
    };
    // Runs of several classes, a large object, a freed block; frames in the log.
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
    // Checkpointed here (slot B current, generation 2), as the writer did on its own before
    // this transaction's fresh extent went in place: the seed does not depend on that policy.
    heap.checkpoint().unwrap();
    let large = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(300_000))
        .unwrap();
    assert!(at_chunk(large.offset()) && !at_chunk(small.offset()));
    heap.transaction(|tx| {
        tx.free(small)?;
        tx.alloc([5u8; 24]).map(|_| ())
    })
    .unwrap();
    let s = heap.stats().unwrap();
    assert_eq!((s.superblock_seq, s.log_generation), (2, 2));
    std::fs::copy(&p, out.join("runs-live.img")).unwrap();
    drop(heap);
    // A large object freed (a multi-chunk free extent) next to live runs and a live large one.
    let p = dir.path().join("extents.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    let (big, other) = heap
        .transaction(|tx| {
            tx.alloc([6u8; 64])?;
            let big = tx.alloc_slice_zeroed::<u8>(600_000)?;
            let other = tx.alloc_slice_zeroed::<u8>(70_000)?;
            Ok((big, other))
        })
        .unwrap();
    assert!(at_chunk(big.offset()) && at_chunk(other.offset()));
    // 600,000 bytes take 3 chunks: the 70,000 right after them.
    assert_eq!(other.offset() - big.offset(), 3 * CHUNK as u64);
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
