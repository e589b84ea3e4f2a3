//! Recovery's second voucher must not start where a crashed writer's frame with its txid lies
//! (found by an independent review, eighth session). The first voucher is padded to a page
//! boundary B; a frame of the crashed writer with the txid after the first voucher can start
//! exactly at B when its torn predecessor ended there. If the sector of the second voucher is
//! lost after a killed recovery (it reads as it was before that recovery wrote it), the stale
//! frame follows the first voucher and the next recovery replays it, and the ones after it,
//! without the torn frame before them: a state no prefix made. Recovery now looks for such a
//! frame and pads one page further (docs/ARCHITECTURE.md section 3, step 5a, rule 4).

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

fn marks(path: &std::path::Path) -> txheap::Result<(u8, u8, u8)> {
    let heap = Heap::open(path, opts())?;
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let x = r.slice(root.x)?;
        Ok((x[0], x[4096], x[8184]))
    })
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds the crash image: P, F (checked, in place), T (torn; ends exactly at B), T+1 (at B),
/// T+2. Returns (dir, image path, frames' image before T, offset B).
fn crash_image() -> (tempfile::TempDir, std::path::PathBuf, usize) {
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
    write_x(&heap, 2048, &[9u8; 16]); // P (as in tests/recovery_vouchers.rs)
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.big = tx.alloc_slice(&vec![7u8; 1 << 20])?;
        tx.set(root, r)
    })
    .unwrap(); // F
    let img_f = std::fs::read(&live).unwrap();
    let fr = frames(&img_f);
    assert_eq!(fr.len(), 2, "{fr:?}");
    let end_f = fr[1].0 + fr[1].2;
    assert_ne!((end_f + 40) % 4096, 0, "layout: no padding here");
    // Recovery's first voucher (at end_f) is padded up to B; the second starts at B.
    let b = (end_f + 40 + 16).div_ceil(4096) * 4096;
    // T: sized to end exactly at B, so that T+1 starts at B.
    let n = b - end_f - 56;
    assert!(n % 16 == 0 && (16..=4080).contains(&n), "layout: n = {n}");
    write_x(&heap, 0, &vec![1u8; n]); // T
    write_x(&heap, 4096, &[2u8; 16]); // T+1
    write_x(&heap, 8184, &[3u8; 8]); // T+2
    let image = std::fs::read(&live).unwrap();
    let fr = frames(&image);
    assert_eq!(fr.len(), 5, "{fr:?}");
    assert_eq!(fr[3].0, b, "layout: T+1 not at B: {fr:?}");
    drop(heap);
    // Power cut: T's first data sector still holds what it held before T (T torn); the rest
    // (F's in-place bytes, T+1, T+2) reached the disk.
    let img = dir.path().join("image.heap");
    std::fs::write(&img, &image).unwrap();
    let sector = (end_f + 56) / 512 * 512;
    assert!(sector + 512 <= b);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&img_f[sector..sector + 512], sector as u64)
        .unwrap();
    assert!(
        verified_frame_at(&std::fs::read(&img).unwrap()[end_f..]).is_none(),
        "T torn"
    );
    (dir, img, b)
}

/// Control: a recovery that runs to its end keeps P and F only.
#[test]
fn control_full_recovery_keeps_the_prefix() {
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_d, img, _) = crash_image();
    assert_eq!(marks(&img).unwrap(), (0, 0, 0));
    // And a second open agrees.
    assert_eq!(marks(&img).unwrap(), (0, 0, 0));
}

/// Recovery 1 killed right after its first voucher's barrier: recovery 2 must not replay T+1
/// and T+2 without T.
#[test]
fn a_recovery_killed_between_its_vouchers_never_revives_a_discarded_frame() {
    use txheap_recovery::sabotage;
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_d, img, b) = crash_image();
    sabotage::panic_at(Some("recovery.after_voucher"));
    let r = std::panic::catch_unwind(|| Heap::open(&img, opts()).map(|_| ()));
    sabotage::panic_at(None);
    assert!(r.is_err(), "the failpoint did not fire");
    let after = std::fs::read(&img).unwrap();
    eprintln!(
        "log after the killed recovery: {:?} (B = {b})",
        frames(&after)
    );
    let got = marks(&img);
    eprintln!("recovery 2: {got:?}");
    let got = got.unwrap();
    assert!(
        got == (0, 0, 0) || got.0 == 1,
        "recovered {got:?}: T+1/T+2 replayed without T (the torn frame recovery 1 discarded)"
    );
}

/// Recovery 1 writes both vouchers and replays, killed before its checkpoint; then one sector
/// is lost (reads as it was before recovery 1 wrote it): each sector from B (where the stale
/// T+1 lies) through the second voucher, in turn. Recovery 2 must report damage or recover P
/// and F, never T+1/T+2 without T. (The second voucher was at B before the fix: losing B's
/// sector gave (0, 2, 3).) With sabotage switch `RECOVERY_VOUCHERS_UNGUARDED` (no guard, no
/// look for the stale frame) the revival comes back.
#[test]
fn a_lost_second_voucher_sector_never_revives_a_discarded_frame() {
    use txheap_recovery::sabotage;
    let _l = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (v2, b, cases, silent) = lost_sector_cases();
    assert_ne!(v2, b, "the second voucher at B, where T+1 lies");
    assert_eq!(v2 % 4096, 0, "the second voucher not on a page boundary");
    assert!(cases >= 9, "{cases}");
    assert!(silent.is_empty(), "{silent:#?}");
    sabotage::set(sabotage::RECOVERY_VOUCHERS_UNGUARDED);
    let (v2, b, _, silent) = lost_sector_cases();
    sabotage::set(0);
    assert_eq!(v2, b, "sabotaged: the second voucher at B");
    assert!(!silent.is_empty(), "sabotaged: no lost sector revived T+1");
}

/// The case above: (second voucher's offset, B, cases, the silent revivals found).
fn lost_sector_cases() -> (usize, usize, usize, Vec<String>) {
    use txheap_recovery::sabotage;
    let (_d, img, b) = crash_image();
    let before = std::fs::read(&img).unwrap();
    sabotage::panic_at(Some("recovery.after_replay"));
    let r = std::panic::catch_unwind(|| Heap::open(&img, opts()).map(|_| ()));
    sabotage::panic_at(None);
    assert!(r.is_err(), "the failpoint did not fire");
    let after = std::fs::read(&img).unwrap();
    let fr = frames(&after);
    eprintln!("log after the killed recovery: {fr:?} (B = {b})");
    let (v2, v2_len) = (fr.last().unwrap().0, fr.last().unwrap().2);
    let (mut cases, mut silent) = (0, Vec::new());
    for sector in b / 512..(v2 + v2_len).div_ceil(512) {
        let mut img_s = after.clone();
        let r = sector * 512..(sector + 1) * 512;
        img_s[r.clone()].copy_from_slice(&before[r]);
        std::fs::write(&img, &img_s).unwrap();
        cases += 1;
        match marks(&img) {
            Err(txheap::Error::LogDamaged { .. }) => {}
            Err(e) => panic!("sector {sector}: {e}"),
            Ok(got) if got == (0, 0, 0) || got.0 == 1 => {}
            Ok(got) => silent.push(format!(
                "sector {sector}: recovered {got:?}: T+1/T+2 replayed without T"
            )),
        }
    }
    (v2, b, cases, silent)
}
