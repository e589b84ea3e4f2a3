//! Recovery's own vouchers (docs/ARCHITECTURE.md section 3 step 5a, rule 4, and section 5).
//! Recovery writes them over the log's torn tail, where the crashed writer's later frames of the
//! same generation may still lie, before it replays over a checked frame's in-place bytes.
//!
//! - Padded like a flush's (the first to the next 4096-byte boundary), the position after them
//!   (`B + 40`) depends only on the page grid, and a stale frame that starts exactly there with
//!   the txid after the two vouchers was taken as committed by the next recovery when the first
//!   was killed between its vouchers and its checkpoint: a transaction replayed without the two
//!   before it (found by an independent review of the padding). Recovery now zeroes that place
//!   first (the guard); with the guard sabotaged the revival comes back.
//! - Plain (80 bytes after the last committed frame, as they were for a while) they shared a
//!   sector: a recovery killed after them, whose voucher sector was then lost, let the next
//!   recovery ask the check of bytes the first one's replay had changed, and cut the log there
//!   silently. Padded, one lost sector takes at most one voucher.
//! - The second voucher's own place (found by an independent review, eighth session): the
//!   first voucher is padded to a page boundary B, and a frame of the crashed writer with the
//!   txid after the first voucher can start exactly at B when its torn predecessor ended there.
//!   If the second voucher's sector is lost after a killed recovery (it reads as it was before
//!   that recovery wrote it), the stale frame follows the first voucher and the next recovery
//!   replays it, and the ones after it, without the torn frame before them. Recovery now looks
//!   for such a frame and pads one page further.

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

/// A new heap at `path` whose root's `x` is an 8 KiB object, checkpointed (its log empty).
fn heap_with_x(path: &std::path::Path) -> Heap {
    let heap = Heap::create(path, opts()).unwrap();
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.x = tx.alloc_slice(&[0u8; 8192])?;
        tx.set(root, r)
    })
    .unwrap();
    heap.checkpoint().unwrap();
    heap
}

/// F: a 1 MiB object of 7s in place, linked as the root's `big` (under `None` its frame
/// carries an in-place check).
fn alloc_big(heap: &Heap) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.big = tx.alloc_slice(&vec![7u8; 1 << 20])?;
        tx.set(root, r)
    })
    .unwrap();
}

fn write_x(heap: &Heap, at: usize, bytes: &[u8]) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let r = *tx.get(root)?;
        tx.write_slice(r.x, at as u64, bytes)
    })
    .unwrap();
}

/// (x[0], x[4096], x[8184]) after an open of `path`, or the open's error.
fn try_marks(path: &std::path::Path) -> txheap::Result<(u8, u8, u8)> {
    let heap = Heap::open(path, opts())?;
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let x = r.slice(root.x)?;
        Ok((x[0], x[4096], x[8184]))
    })
}

/// [`try_marks`], which must open.
fn marks(path: &std::path::Path) -> (u8, u8, u8) {
    try_marks(path).unwrap()
}

/// The sabotage mask and the failpoints are process-wide: every test here takes this lock.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_recovery_killed_after_its_vouchers_never_revives_a_discarded_frame() {
    let _l = lock();
    let (got, t) = revival_case();
    assert!(
        got.2 != 3 || (got.0 == 1 && got.1 == 2),
        "recovered {got:?}: transaction {} replayed without {} and {} (the torn tail the first \
         recovery discarded)",
        t + 2,
        t,
        t + 1
    );
    assert_eq!(got, (0, 0, 0), "the first recovery's state");
    // The check can fail: without the guard, the stale frame follows the vouchers.
    txheap_recovery::sabotage::set(txheap_recovery::sabotage::RECOVERY_VOUCHERS_UNGUARDED);
    let (got, _) = revival_case();
    txheap_recovery::sabotage::set(0);
    assert_eq!(
        got,
        (0, 0, 3),
        "the unguarded vouchers did not revive the stale frame"
    );
}

/// The writer's frames F (checked), T (torn by a lost sector), T+1, T+2 (T+2 where recovery's
/// vouchers will end); recovery 1 killed after its vouchers and replay; recovery 2's marks and
/// T's txid.
fn revival_case() -> ((u8, u8, u8), u64) {
    use txheap_recovery::sabotage;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = heap_with_x(&live);
    // P: a small frame first (frames log 16-byte units, so a frame without in-place bytes is
    // 8 bytes past a multiple of 16 long: this one puts the frames after it where the sizes
    // below can reach the target).
    write_x(&heap, 2048, &[9u8; 16]);
    // F: a 1 MiB object in place, its frame checked (no barrier: Durability::None).
    alloc_big(&heap);
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
    (marks(&img), t)
}

/// One transaction under `None`: count + 1 in x[16..24] (the root's `x`), and, when `big`, a
/// new 1 MiB object in place (a checked frame).
fn count_step(heap: &Heap, big: bool) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        let c = u64::from_le_bytes(tx.slice(r.x)?[16..24].try_into().unwrap()) + 1;
        tx.write_slice(r.x, 16, &c.to_le_bytes())?;
        if big {
            r.big = tx.alloc_slice(&vec![c as u8; 1 << 20])?;
            tx.set(root, r)?;
        }
        Ok(())
    })
    .unwrap();
}

/// (count, whether the object holds one byte value throughout) after an open of `path`, or the
/// open's error.
fn count_state(path: &std::path::Path) -> txheap::Result<(u64, bool)> {
    let heap = Heap::open(path, opts())?;
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let c = u64::from_le_bytes(r.slice(root.x)?[16..24].try_into().unwrap());
        let big = r.slice(root.big)?;
        Ok((c, big.iter().all(|&b| b == big[0])))
    })
}

/// A recovery that asks a checked frame's check writes its vouchers, replays a later frame
/// that rewrites the checked bytes, and is killed before its checkpoint; then one sector of the
/// log is lost (it reads as it was before that recovery wrote it). The next open must report
/// the damage or recover every transaction the first recovery vouched for, never fewer.
#[test]
fn a_lost_sector_under_recovery_vouchers_is_reported_never_a_silent_cut() {
    use txheap_recovery::sabotage;
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let case = dir.path().join("case.heap");
    let mut cases = 0;
    // Frames of different lengths before the vouchers put them at different places in a sector.
    for pad in 0..6u64 {
        let _ = std::fs::remove_file(&live);
        let heap = heap_with_x(&live);
        for _ in 0..pad {
            count_step(&heap, false);
        }
        count_step(&heap, true); // checked, in place
                                 // Rewrite the object through the log (count + 1 and the object's new byte).
        heap.transaction(|tx| {
            let root = tx.root::<Root>()?;
            let r = *tx.get(root)?;
            let c = u64::from_le_bytes(tx.slice(r.x)?[16..24].try_into().unwrap()) + 1;
            tx.write_slice(r.x, 16, &c.to_le_bytes())?;
            tx.write_slice(r.big, 0, &vec![c as u8; 1 << 20])
        })
        .unwrap();
        let count = pad + 2;
        // A kill -9: the file as the page cache holds it.
        let crashed = std::fs::read(&live).unwrap();
        drop(heap);
        // Recovery 1: asks the check (it holds), writes its vouchers, replays, is killed.
        std::fs::write(&case, &crashed).unwrap();
        sabotage::panic_at(Some("recovery.after_replay"));
        let r = std::panic::catch_unwind(|| Heap::open(&case, opts()).map(|_| ()));
        sabotage::panic_at(None);
        assert!(r.is_err(), "the failpoint did not fire");
        let after = std::fs::read(&case).unwrap();
        let before = frames(&crashed);
        let fr = frames(&after);
        assert_eq!(fr.len(), before.len() + 2, "the two vouchers: {fr:?}");
        let (v1, v2) = (fr[fr.len() - 2], fr[fr.len() - 1]);
        assert_ne!(
            v1.0 / 4096,
            v2.0 / 4096,
            "both vouchers in one page: {fr:?}"
        );
        // Control: nothing lost, every transaction.
        assert_eq!(
            count_state(&case).unwrap(),
            (count, true),
            "pad {pad}: control"
        );
        // Each sector from the rewrite's last through the vouchers, lost.
        let from = v1.0 - 1;
        for sector in from / 512..(v2.0 + v2.2).div_ceil(512) {
            let mut img = after.clone();
            let r = sector * 512..(sector + 1) * 512;
            img[r.clone()].copy_from_slice(&crashed[r]);
            std::fs::write(&case, &img).unwrap();
            cases += 1;
            let what = format!(
                "pad {pad}, sector {sector} (vouchers at {}, {})",
                v1.0, v2.0
            );
            match count_state(&case) {
                Err(txheap::Error::LogDamaged { .. }) => {}
                Err(e) => panic!("{what}: {e}"),
                Ok(got) => assert_eq!(got, (count, true), "{what}: a silent cut"),
            }
        }
    }
    assert!(cases >= 12, "{cases}");
}

// ---- the second voucher's place ----------------------------------------------------------

/// Builds the crash image: P, F (checked, in place), T (torn; ends exactly at B), T+1 (at B),
/// T+2. Returns (dir, image path, frames' image before T, offset B).
fn crash_image() -> (tempfile::TempDir, std::path::PathBuf, usize) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let heap = heap_with_x(&live);
    write_x(&heap, 2048, &[9u8; 16]); // P (as in `revival_case`)
    alloc_big(&heap); // F
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
    let _l = lock();
    let (_d, img, _) = crash_image();
    assert_eq!(try_marks(&img).unwrap(), (0, 0, 0));
    // And a second open agrees.
    assert_eq!(try_marks(&img).unwrap(), (0, 0, 0));
}

/// Recovery 1 killed right after its first voucher's barrier: recovery 2 must not replay T+1
/// and T+2 without T.
#[test]
fn a_recovery_killed_between_its_vouchers_never_revives_a_discarded_frame() {
    use txheap_recovery::sabotage;
    let _l = lock();
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
    let got = try_marks(&img);
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
    let _l = lock();
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
        match try_marks(&img) {
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

// ---- a lost write of the first voucher over an older generation's frame ---------------------

/// Found by an independent review (eighth session). After a checkpoint the log starts again from
/// its beginning, so past a crashed writer's tail E there are usually frames of the previous
/// generation; when one starts exactly at E and lies wholly inside E's sector, recovery 1's scan
/// stops there as a clean end. Recovery 1 asks F's in-place check (it holds), writes its
/// vouchers at E, replays (G rewrites F's in-place bytes) and is killed; then V1's header sector
/// reads as it was before recovery 1 wrote it: the old frame, which verifies. The damage rule
/// took a verifying frame at the stop as a clean end without a search, so the second voucher,
/// which proves the first durable, was never seen: F's check failed on the replayed bytes and
/// the log was cut at F, leaving (where recovery 1 was killed part-way through its replay, a
/// kill between the page runs it writes in order, emulated by leaving the later runs' pages as
/// they were) half of a transaction: (203, 1048576, 238, 201). Now only a verifying frame at the
/// log's start (the checkpoint's sentinel) ends the log without a search.
#[test]
fn a_lost_first_voucher_sector_over_an_old_generation_frame_is_never_a_silent_cut() {
    use txheap_recovery::sabotage;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("h.heap");
    let case = dir.path().join("case.heap");
    let heap = heap_with_x(&live);
    // Generation g: many small frames of one length (72 bytes).
    for _ in 0..200 {
        count_step(&heap, false);
    }
    let old = frames(&std::fs::read(&live).unwrap());
    assert!(old.len() >= 200, "{}", old.len());
    heap.checkpoint().unwrap();
    // Generation g+1: F (checked, in place), G (rewrites F's first bytes through the log).
    count_step(&heap, true); // F: count 201
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let r = *tx.get(root)?;
        let c = u64::from_le_bytes(tx.slice(r.x)?[16..24].try_into().unwrap()) + 1;
        tx.write_slice(r.x, 16, &c.to_le_bytes())?;
        tx.write_slice(r.big, 0, &[0xEEu8; 64])
    })
    .unwrap(); // G: count 202
    let fr = frames(&std::fs::read(&live).unwrap());
    let e0 = fr.last().unwrap().0 + fr.last().unwrap().2;
    // A filler frame (the object's last 16k bytes written) sized so that the tail E lands on a generation-g frame
    // start b that lies wholly inside its 512-byte sector.
    let (b, k) = old
        .iter()
        .filter_map(|&(b, _, len)| {
            let d = b.checked_sub(e0 + 88)?;
            (d % 16 == 0 && (1..=255).contains(&(d / 16)) && b % 512 + len <= 512)
                .then_some((b, d / 16))
        })
        .next()
        .expect("layout: no generation-g frame start reachable");
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let r = *tx.get(root)?;
        // count 203, and the object's last bytes (a page replay writes after the one G rewrites).
        tx.write_slice(r.x, 16, &203u64.to_le_bytes())?;
        tx.write_slice(r.big, (1 << 20) - 16 * k as u64, &vec![0x55u8; 16 * k])
    })
    .unwrap();
    let crashed = std::fs::read(&live).unwrap(); // a kill -9: the page cache
    drop(heap);
    let fr = frames(&crashed);
    let e = fr.last().unwrap().0 + fr.last().unwrap().2;
    assert_eq!(e, b, "layout: tail not at the old frame: {fr:?}");
    let stale = verified_frame_at(&crashed[e..]).expect("an old frame verifies at the tail");
    eprintln!(
        "tail E = {e}: generation-g frame txid {} ({} bytes)",
        stale.txid,
        stale.frame_len()
    );

    // Control: nothing lost.
    std::fs::write(&case, &crashed).unwrap();
    assert_eq!(
        abcd_state(&case).unwrap(),
        (203, 1 << 20, 0xEE, 0x55),
        "control"
    );

    // Recovery 1: asks F's check (holds), writes V1 at E and V2 at P, replays G over F's bytes,
    // killed before its checkpoint.
    std::fs::write(&case, &crashed).unwrap();
    sabotage::panic_at(Some("recovery.after_replay"));
    let r = std::panic::catch_unwind(|| Heap::open(&case, opts()).map(|_| ()));
    sabotage::panic_at(None);
    assert!(r.is_err(), "the failpoint did not fire");
    let after = std::fs::read(&case).unwrap();
    let fr2 = frames(&after);
    eprintln!("log after the killed recovery: {:?}", &fr2[fr2.len() - 3..]);
    assert_eq!(fr2.len(), fr.len() + 2, "the two vouchers");

    // Heap pages recovery 1's replay wrote, as the runs of consecutive pages it writes in
    // order (one batch here). A kill -9 after the first `k` runs leaves the rest as before.
    let page = 4096usize;
    let heap_from = 8192 + (4 << 20);
    let mut pages: Vec<usize> = (heap_from..after.len())
        .filter(|&i| after[i] != crashed[i])
        .map(|i| i / page)
        .collect();
    pages.dedup();
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some(r) if *r.last().unwrap() + 1 == p => r.push(p),
            _ => runs.push(vec![p]),
        }
    }
    eprintln!("replay's page runs: {runs:?}");
    let mut silent = Vec::new();
    for k in 0..=runs.len() {
        let mut img = after.clone();
        for r in &runs[k..] {
            for &p in r {
                img[p * page..(p + 1) * page].copy_from_slice(&crashed[p * page..(p + 1) * page]);
            }
        }
        // Control: no sector lost, recovery 1 killed after `k` runs of its replay.
        std::fs::write(&case, &img).unwrap();
        assert_eq!(
            abcd_state(&case).unwrap(),
            (203, 1 << 20, 0xEE, 0x55),
            "control, {k} runs"
        );
        // The sector holding V1's header is lost (reads as before recovery 1 wrote it: the
        // old generation's frame, which verifies).
        let s = e / 512 * 512;
        img[s..s + 512].copy_from_slice(&crashed[s..s + 512]);
        std::fs::write(&case, &img).unwrap();
        let got = abcd_state(&case);
        eprintln!(
            "killed after {k} of {} replay runs, V1's sector lost: {got:?}",
            runs.len()
        );
        match got {
            Err(txheap::Error::LogDamaged { .. }) => {}
            Err(e) => silent.push(format!("{k} runs: error {e}")),
            Ok(got) if got == (203, 1 << 20, 0xEE, 0x55) => {}
            Ok(got) => silent.push(format!(
                "{k} runs: recovered {got:?}, want (203, 1048576, 238, 85) (transaction 204, \
                 which recovery 1 vouched for): the log was cut at F over a half-replayed heap"
            )),
        }
    }
    assert!(silent.is_empty(), "silent cuts: {silent:#?}");
}

/// (count, the object's length, its first byte, its last byte) after an open.
fn abcd_state(path: &std::path::Path) -> txheap::Result<(u64, usize, u8, u8)> {
    let heap = Heap::open(path, opts())?;
    heap.read(|r| {
        let root = *r.get(r.root::<Root>()?)?;
        let c = u64::from_le_bytes(r.slice(root.x)?[16..24].try_into().unwrap());
        let big = r.slice(root.big)?;
        Ok((
            c,
            big.len(),
            big.first().copied().unwrap_or(0),
            big.last().copied().unwrap_or(0),
        ))
    })
}
