//! Recovery's own vouchers are plain (80 bytes after the last committed frame), unlike a
//! flush's, whose first is padded to the next 4096-byte boundary (docs/ARCHITECTURE.md section 3
//! step 5a, rule 4). Recovery writes them over the log's torn tail, where the crashed writer's
//! later frames of the same generation may still lie. Padded, the position after them (`B + 40`)
//! depended only on the page grid, and a stale frame that starts exactly there with the txid
//! after the two vouchers was taken as committed by the next recovery when the first was killed
//! between its vouchers and its checkpoint: a transaction replayed without the two before it
//! (found by an independent review of the padding). Plain vouchers end at `end + 80`, which no
//! pair of commit frames (at least 64 bytes each) can reach.

#![cfg(feature = "test-hooks")]

use std::os::unix::fs::FileExt;

use txheap::{Durability, Heap, Options, PSlice};
use txheap_recovery::txheap_log::verified_frame_at;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    x: PSlice<u8>,
    big: PSlice<u8>,
}

fn opts() -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(4 << 20)
        .max_size(64 << 20)
        .in_place_min(64 << 10)
        .durability(Durability::None)
}

/// Frames of the log in `image` from the log's start, as long as txids follow: (offset, txid, len).
fn frames(image: &[u8]) -> Vec<(usize, u64, usize)> {
    let mut out: Vec<(usize, u64, usize)> = Vec::new();
    let mut at = txheap_recovery::LOG_OFFSET as usize;
    while let Some(h) = verified_frame_at(&image[at..]) {
        if out.last().is_some_and(|&(_, t, _)| h.txid != t + 1) {
            break;
        }
        out.push((at, h.txid, h.frame_len() as usize));
        at += h.frame_len() as usize;
    }
    out
}

fn write_x(heap: &Heap, at: usize, bytes: &[u8]) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let r = *tx.get(root)?;
        tx.write_slice(r.x, at as u64, bytes)
    })
    .unwrap();
}

/// (x[0], x[4096], x[8184]) after an open of `path`.
fn marks(path: &std::path::Path) -> (u8, u8, u8) {
    let heap = Heap::open(path, opts()).unwrap();
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let x = r.slice(root.x)?;
        Ok((x[0], x[4096], x[8184]))
    })
    .unwrap()
}

#[test]
fn a_recovery_killed_after_its_vouchers_never_revives_a_discarded_frame() {
    use txheap_recovery::sabotage;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = Heap::create(&live, opts()).unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.x = tx.alloc_slice(&[0u8; 8192])?;
        tx.set(root, r)
    })
    .unwrap();
    heap.checkpoint().unwrap();
    // P: a small frame first (frames log 16-byte units, so a frame without in-place bytes is
    // 8 bytes past a multiple of 16 long: this one puts the frames after it where the sizes
    // below can reach the target).
    write_x(&heap, 2048, &[9u8; 16]);
    // F: a 1 MiB object in place, its frame checked (no barrier: Durability::None).
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.big = tx.alloc_slice(&vec![7u8; 1 << 20])?;
        tx.set(root, r)
    })
    .unwrap();
    let img_f = std::fs::read(&live).unwrap();
    let fr = frames(&img_f);
    assert_eq!(fr.len(), 2, "{fr:?}");
    let end_f = fr[1].0 + fr[1].2;
    // Where recovery's vouchers put the next frame: the padded first voucher ends on the next
    // 4096-byte boundary B (room for its 56-byte header), the second ends at B + 40.
    assert_ne!((end_f + 40) % 4096, 0, "layout: no padding here");
    let b = (end_f + 40 + 16).div_ceil(4096) * 4096;
    let target = b + 40;
    // T: x[0..1024) = 1 (the frame that will be torn).
    write_x(&heap, 0, &[1u8; 1024]);
    let img_t = std::fs::read(&live).unwrap();
    let fr = frames(&img_t);
    let end_t = fr[2].0 + fr[2].2;
    // T+1: x[4096..4096+n) = 2, sized so that T+2 starts at `target`.
    let n = target - end_t - 56;
    assert!(n % 16 == 0 && (16..=4080).contains(&n), "layout: n = {n}");
    write_x(&heap, 4096, &vec![2u8; n]);
    // T+2: x[8184..8192) = 3.
    write_x(&heap, 8184, &[3u8; 8]);
    let image = std::fs::read(&live).unwrap();
    let fr = frames(&image);
    assert_eq!(fr.len(), 5, "{fr:?}");
    assert_eq!(fr[4].0, target, "layout: T+2 not at B + 40: {fr:?}");
    let t = fr[2].1;
    drop(heap);

    // A power cut: every page reached the disk (F, its in-place bytes, T+1, T+2) except one
    // 512-byte sector inside T, which still holds what it held before T was written.
    let img = dir.path().join("image.heap");
    std::fs::write(&img, &image).unwrap();
    let sector = end_f.div_ceil(512) * 512;
    assert!(sector + 512 <= end_t);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&img_f[sector..sector + 512], sector as u64)
        .unwrap();
    // Control: a recovery that runs to its end keeps P and F only (T is the torn tail).
    let ctl = dir.path().join("control.heap");
    std::fs::copy(&img, &ctl).unwrap();
    assert_eq!(marks(&ctl), (0, 0, 0), "control");

    // Recovery 1 asks F's check (it holds), writes its two vouchers (txids T, T+1, the first
    // padded up to B), replays, and is killed before its checkpoint.
    sabotage::panic_at(Some("recovery.after_replay"));
    let r = std::panic::catch_unwind(|| Heap::open(&img, opts()).map(|_| ()));
    sabotage::panic_at(None);
    assert!(r.is_err(), "the failpoint did not fire");
    let after = std::fs::read(&img).unwrap();
    let fr2 = frames(&after);
    eprintln!("log after the killed recovery: {fr2:?} (T = {t})");

    // Recovery 2: the vouchers end at B + 40, where the writer's T+2 lies, with the txid that
    // follows them. Any prefix of the transactions with x[8184] = 3 has x[0] = 1 and x[4096] = 2.
    let got = marks(&img);
    assert!(
        got.2 != 3 || (got.0 == 1 && got.1 == 2),
        "recovered {got:?}: transaction {} replayed without {} and {} (the torn tail the first \
         recovery discarded)",
        t + 2,
        t,
        t + 1
    );
    assert_eq!(got, (0, 0, 0), "the first recovery's state");
}
