//! An open that keeps the log's generation (docs/ARCHITECTURE.md section 5): it replayed frames
//! and left them in the log, or found none to replay. Past the torn frame where the scan
//! stopped, the crashed session's later frames of the same generation may still lie (under
//! `None` nothing orders them; a power cut can keep a later frame and tear an earlier one), so
//! the first commit after such an open must checkpoint before its frame. Appending in the kept
//! generation instead (sabotage switch `KEPT_GENERATION_APPEND`) lets a frame of the same
//! length land exactly where the torn one was, and the next recovery reads on into the stale
//! frame after it and replays a transaction of the crashed session that came after a lost one:
//! a state no prefix of the transactions made.
//!
//! The crash here is a copy of the file (what a killed process leaves: every write, through the
//! page cache) with one frame's byte changed, as a power cut that tore that frame alone would
//! leave it.

#![cfg(feature = "test-hooks")]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use txheap::{Durability, Heap, Options};
use txheap_recovery::sabotage;

/// The sabotage mask is process-wide: every test here takes this lock.
static MASK_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    n: u64,
    pad: [u64; 7],
}

fn opts() -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(1 << 20)
        .max_size(16 << 20)
        .durability(Durability::None)
}

fn set(heap: &Heap, n: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.n = n;
        tx.set(root, r)
    })
    .unwrap();
}

fn n(heap: &Heap) -> u64 {
    heap.read(|r| Ok(r.get(r.root::<Root>()?)?.n)).unwrap()
}

/// Commit n = 1 and checkpoint, then n = 2..=5 (one frame each, none flushed); copy the file
/// with frame `torn` (0 for n = 2) damaged; open the copy, commit n = 100, and copy the file
/// again (a second crash, nothing flushed). Returns n after recovering the first copy, the
/// frames' lengths, and n after recovering the second.
fn scenario(dir: &Path, torn: usize) -> (u64, Vec<u64>, u64) {
    let (live, first, second) = (dir.join("live"), dir.join("first"), dir.join("second"));
    let heap = Heap::create(&live, opts()).unwrap();
    set(&heap, 1);
    heap.checkpoint().unwrap();
    let mut tails = vec![heap.stats().unwrap().log_used];
    for v in 2..=5 {
        set(&heap, v);
        tails.push(heap.stats().unwrap().log_used);
    }
    std::fs::copy(&live, &first).unwrap();
    drop(heap);
    let lens: Vec<u64> = tails.windows(2).map(|w| w[1] - w[0]).collect();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&first)
        .unwrap();
    let at = txheap_recovery::LOG_OFFSET + tails[torn] + lens[torn] / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    drop(f);
    let heap = Heap::open(&first, opts()).unwrap();
    let recovered = n(&heap);
    set(&heap, 100);
    std::fs::copy(&first, &second).unwrap();
    drop(heap);
    let heap = Heap::open(&second, opts()).unwrap();
    let after = n(&heap);
    drop(heap);
    (recovered, lens, after)
}

#[test]
fn the_first_commit_after_a_kept_generation_leaves_no_stale_frame_behind() {
    let _mask = MASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for torn in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (recovered, lens, after) = scenario(dir.path(), torn);
        // Equal frames: a new frame in the kept generation would end where the torn one did.
        assert!(lens.iter().all(|&l| l == lens[0]), "frame lengths {lens:?}");
        // The frames before the torn one, and nothing after it.
        assert_eq!(recovered, torn as u64 + 1, "torn frame {torn}");
        assert_eq!(
            after, 100,
            "torn frame {torn}: the commit after recovery, then a crash"
        );
    }
}

#[test]
fn appending_in_the_kept_generation_is_caught() {
    let _mask = MASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for torn in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        sabotage::set(sabotage::KEPT_GENERATION_APPEND);
        let (recovered, _, after) = scenario(dir.path(), torn);
        sabotage::set(0);
        assert_eq!(recovered, torn as u64 + 1);
        // The stale frame after the torn one (n = torn + 3) follows the new frame, and the
        // ones after it replay too: n = 5, a transaction that came after a lost one.
        assert_eq!(
            after, 5,
            "torn frame {torn}: the sabotaged append should let the stale frames replay"
        );
    }
}
