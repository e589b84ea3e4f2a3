//! Recovery against a model: superblock selection, replay of any damaged log tail to a committed
//! prefix, hostile frames refused without writing, and no replay after a checkpoint.

use proptest::prelude::*;
use txheap_recovery::txheap_log::FrameBuilder;
use txheap_recovery::{
    checkpoint, format, recover, select_superblock, MemStorage, RecoveryError, Slot, Storage,
    Superblock,
};

const LOG: u64 = 65536;
const MAX: u64 = 1 << 20;
const HEAP_SPAN: u64 = 32768;

type Frame = Vec<(u64, Vec<u8>)>;

fn fresh() -> (MemStorage, Superblock) {
    let mut s = MemStorage::new();
    let sb = format(&mut s, LOG, MAX).unwrap();
    s.grow(sb.heap_offset() + 8192 + HEAP_SPAN).unwrap();
    (s, sb)
}

/// Append frames to the log; return each frame's end offset (relative to the log).
fn append(s: &mut MemStorage, sb: &Superblock, frames: &[Frame]) -> Vec<u64> {
    let mut b = FrameBuilder::new();
    let mut at = 0;
    let mut ends = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        b.clear();
        for (off, bytes) in f {
            b.push_range(sb.heap_offset() + off, bytes).unwrap();
        }
        let enc = b.finish(sb.generation, sb.next_txid + i as u64).to_vec();
        s.write_at(sb.log_offset() + at, &enc).unwrap();
        at += enc.len() as u64;
        ends.push(at);
    }
    ends
}

/// The heap bytes after applying the first `k` frames to `base`.
fn model(base: &[u8], sb: &Superblock, frames: &[Frame], k: usize) -> Vec<u8> {
    let mut m = base.to_vec();
    for f in &frames[..k] {
        for (off, bytes) in f {
            let at = (sb.heap_offset() + off) as usize;
            m[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
    m[sb.heap_offset() as usize..].to_vec()
}

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    let range = (
        0u64..HEAP_SPAN - 64,
        prop::collection::vec(any::<u8>(), 1..64),
    );
    prop::collection::vec(prop::collection::vec(range, 1..4), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_truncation_of_the_log_tail_replays_a_committed_prefix(fs in frames(), cut in any::<prop::sample::Index>()) {
        let (mut s, sb) = fresh();
        let base = s.bytes().to_vec();
        let ends = append(&mut s, &sb, &fs);
        let used = *ends.last().unwrap();
        let cut = cut.index(used as usize + 1) as u64;
        // The sectors after `cut` never arrived: zeroes, as the log was formatted. A frame
        // survives iff every byte of it from `cut` on was zero already (padding, zero data).
        let mut old = vec![0u8; (used - cut) as usize];
        s.read_at(sb.log_offset() + cut, &mut old).unwrap();
        s.write_at(sb.log_offset() + cut, &vec![0u8; old.len()]).unwrap();
        let mut start = 0;
        let mut k = 0;
        for &e in &ends {
            let intact = e <= cut || old[(start.max(cut) - cut) as usize..(e - cut) as usize].iter().all(|&b| b == 0);
            if !intact {
                break;
            }
            k += 1;
            start = e;
        }
        let r = recover(&mut s).unwrap();
        prop_assert_eq!(r.scan.frames, k as u64);
        prop_assert_eq!(&s.bytes()[sb.heap_offset() as usize..], &model(&base, &sb, &fs, k)[..]);
        prop_assert_eq!(r.checkpointed, k > 0);
    }

    #[test]
    fn any_byte_corruption_in_frame_k_replays_exactly_frames_before_k(
        fs in frames(), pos in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let (mut s, sb) = fresh();
        let base = s.bytes().to_vec();
        let ends = append(&mut s, &sb, &fs);
        let p = pos.index(*ends.last().unwrap() as usize) as u64;
        let mut b = [0u8; 1];
        s.read_at(sb.log_offset() + p, &mut b).unwrap();
        s.write_at(sb.log_offset() + p, &[b[0] ^ x]).unwrap();
        let k = ends.iter().position(|&e| p < e).unwrap();
        let r = recover(&mut s).unwrap();
        prop_assert_eq!(r.scan.frames, k as u64);
        prop_assert_eq!(&s.bytes()[sb.heap_offset() as usize..], &model(&base, &sb, &fs, k)[..]);
    }

    #[test]
    fn random_files_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..20000)) {
        let before = bytes.clone();
        let mut s = MemStorage::from_bytes(bytes);
        if recover(&mut s).is_err() {
            prop_assert_eq!(s.bytes(), &before[..]);
        }
    }

    #[test]
    fn recovery_is_idempotent_and_checkpoint_stops_replay(fs in frames()) {
        let (mut s, sb) = fresh();
        append(&mut s, &sb, &fs);
        let r1 = recover(&mut s).unwrap();
        prop_assert_eq!(r1.scan.frames, fs.len() as u64);
        prop_assert_eq!(r1.superblock.generation, sb.generation + 1);
        prop_assert_eq!(r1.superblock.next_txid, sb.next_txid + fs.len() as u64);
        // A later change to the heap must survive another open: old frames are not replayed.
        let at = sb.heap_offset() + fs[0][0].0;
        s.write_at(at, &[0xAB]).unwrap();
        let r2 = recover(&mut s).unwrap();
        prop_assert_eq!(r2.scan.frames, 0);
        let mut b = [0u8; 1];
        s.read_at(at, &mut b).unwrap();
        prop_assert_eq!(b[0], 0xAB);
    }
}

fn with_slot(s: &mut MemStorage, slot: Slot, sb: &Superblock) {
    s.write_at(slot.offset(), &sb.encode()).unwrap();
}

#[test]
fn selection_prefers_the_valid_slot_with_the_higher_seq() {
    let (mut s, sb) = fresh();
    assert_eq!(select_superblock(&s).unwrap(), (sb, Slot::A));
    let newer = Superblock {
        seq: 2,
        generation: 2,
        ..sb
    };
    with_slot(&mut s, Slot::B, &newer);
    assert_eq!(select_superblock(&s).unwrap(), (newer, Slot::B));
    // Tear B: A wins again.
    s.write_at(Slot::B.offset() + 20, &[0xFF]).unwrap();
    assert_eq!(select_superblock(&s).unwrap(), (sb, Slot::A));
    // A newer in A, older in B.
    let newest = Superblock {
        seq: 3,
        generation: 3,
        ..sb
    };
    with_slot(&mut s, Slot::B, &newer);
    with_slot(&mut s, Slot::A, &newest);
    assert_eq!(select_superblock(&s).unwrap(), (newest, Slot::A));
}

#[test]
fn selection_errors_name_the_problem() {
    let (mut s, _) = fresh();
    s.write_at(20, &[0xFF]).unwrap(); // tear A; B is all zero
    assert!(matches!(
        select_superblock(&s),
        Err(RecoveryError::Corrupt { offset: 0, .. })
    ));
    let zeros = MemStorage::from_bytes(vec![0; 100_000]);
    assert!(matches!(
        select_superblock(&zeros),
        Err(RecoveryError::NotATxheap { .. })
    ));
    let short = MemStorage::from_bytes(vec![1, 2, 3]);
    assert!(matches!(
        select_superblock(&short),
        Err(RecoveryError::NotATxheap { .. })
    ));
    // A valid-crc slot of the next version and nothing else usable.
    let (mut s, sb) = fresh();
    let mut enc = sb.encode();
    enc[8..12].copy_from_slice(&4u32.to_le_bytes());
    let crc = crc32fast::hash(&enc[..124]);
    enc[124..128].copy_from_slice(&crc.to_le_bytes());
    s.write_at(0, &enc).unwrap();
    assert!(matches!(
        select_superblock(&s),
        Err(RecoveryError::UnsupportedVersion {
            found: 4,
            supported: 3
        })
    ));
    // A slot of the older version 1 is refused with a message that says so.
    enc[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&enc[..124]);
    enc[124..128].copy_from_slice(&crc.to_le_bytes());
    s.write_at(0, &enc).unwrap();
    let e = select_superblock(&s).unwrap_err();
    assert!(e.to_string().contains("older"), "{e}");
}

#[test]
fn truncated_file_is_refused_before_any_write() {
    let (s, sb) = fresh();
    let mut bytes = s.into_bytes();
    bytes.truncate((sb.heap_offset() + 100) as usize);
    let before = bytes.clone();
    let mut s = MemStorage::from_bytes(bytes);
    assert!(matches!(
        recover(&mut s),
        Err(RecoveryError::Truncated { .. })
    ));
    assert_eq!(s.bytes(), &before[..]);
}

#[test]
fn hostile_frames_are_corrupt_and_nothing_is_written() {
    for bad_offset in [0u64, 100, LOG + 8192 - 1, MAX, u64::MAX - 3] {
        let (mut s, sb) = fresh();
        // A good frame first, then one writing outside [heap_offset, max_size).
        let mut b = FrameBuilder::new();
        b.push_range(sb.heap_offset() + 10, b"good").unwrap();
        let f1 = b.finish(sb.generation, sb.next_txid).to_vec();
        b.clear();
        b.push_range(bad_offset, b"evil").unwrap();
        let f2 = b.finish(sb.generation, sb.next_txid + 1).to_vec();
        s.write_at(sb.log_offset(), &f1).unwrap();
        s.write_at(sb.log_offset() + f1.len() as u64, &f2).unwrap();
        let before = s.bytes().to_vec();
        let r = recover(&mut s);
        assert!(
            matches!(r, Err(RecoveryError::Corrupt { .. })),
            "offset {bad_offset}: {r:?}"
        );
        assert_eq!(
            s.bytes(),
            &before[..],
            "offset {bad_offset}: recovery wrote before refusing"
        );
    }
}

#[test]
fn checkpoint_alternates_slots_and_survives_a_torn_slot_write() {
    let (mut s, sb) = fresh();
    let (sb2, slot2) = checkpoint(&mut s, &sb, Slot::A, 7).unwrap();
    assert_eq!(slot2, Slot::B);
    let (sb3, slot3) = checkpoint(&mut s, &sb2, slot2, 9).unwrap();
    assert_eq!(
        (slot3, sb3.seq, sb3.generation, sb3.next_txid),
        (Slot::A, 3, 3, 9)
    );
    // A torn write of the next checkpoint (into B) leaves A current.
    let sb4 = Superblock {
        seq: 4,
        generation: 4,
        ..sb3
    };
    let enc = sb4.encode();
    s.write_at(Slot::B.offset(), &enc[..60]).unwrap();
    assert_eq!(select_superblock(&s).unwrap(), (sb3, Slot::A));
}

/// A frame with an in-place check: replayed when the heap holds the bytes it names; the log's
/// torn end when it does not (nothing of it or after it replays, nothing is written); replayed
/// again when a later frame vouches for it (a barrier covered the bytes, and later frames may
/// have changed them since); refused as corrupt when a piece lies outside the heap.
#[test]
fn in_place_checks_decide_where_the_log_ends() {
    use txheap_recovery::txheap_log::{FrameBuilder, InPlaceDigest, StopReason};
    let fresh = || {
        let mut s = MemStorage::new();
        let sb = format(&mut s, 65536, 1 << 20).unwrap();
        (s, sb)
    };
    let object = vec![0xabu8; 5000];
    // Frame 1: metadata logged, the object in place at `at`; frame 2 (vouching or not) after it.
    let write_log = |s: &mut MemStorage, sb: &Superblock, at: u64, vouch: bool| {
        let mut d = InPlaceDigest::new();
        d.update(&object);
        let mut b = FrameBuilder::new();
        b.push_range(sb.heap_offset() + 8, b"meta-one").unwrap();
        b.push_in_place_check(d.digest(), &[(at, object.len() as u64)])
            .unwrap();
        let f1 = b.finish_vouching(sb.generation, sb.next_txid, 0).to_vec();
        let mut b = FrameBuilder::new();
        b.push_range(sb.heap_offset() + 16, b"meta-two").unwrap();
        let evidence = if vouch { sb.next_txid } else { 0 };
        let f2 = b
            .finish_vouching(sb.generation, sb.next_txid + 1, evidence)
            .to_vec();
        s.write_at(sb.log_offset(), &f1).unwrap();
        s.write_at(sb.log_offset() + f1.len() as u64, &f2).unwrap();
    };
    // The bytes are there: both frames replay.
    let (mut s, sb) = fresh();
    let at = sb.heap_offset() + 4096;
    write_log(&mut s, &sb, at, false);
    s.write_at(at, &object).unwrap();
    assert_eq!(recover(&mut s).unwrap().scan.frames, 2);
    // One byte of them is not: the log ends at frame 1, and the file is unchanged.
    let (mut s, sb) = fresh();
    write_log(&mut s, &sb, at, false);
    let mut torn = object.clone();
    torn[4999] = 0;
    s.write_at(at, &torn).unwrap();
    let before = s.bytes().to_vec();
    let r = recover(&mut s).unwrap();
    assert_eq!(r.scan.frames, 0);
    assert_eq!(
        r.scan.stop.reason,
        StopReason::InPlaceMismatch { txid: sb.next_txid }
    );
    assert!(r.scan.damage.is_none());
    assert_eq!(s.bytes(), &before[..], "recovery wrote to the file");
    // The same bytes, but frame 2 vouches for frame 1: both replay.
    let (mut s, sb) = fresh();
    write_log(&mut s, &sb, at, true);
    s.write_at(at, &torn).unwrap();
    assert_eq!(recover(&mut s).unwrap().scan.frames, 2);
    // A piece outside the heap.
    let (mut s, sb) = fresh();
    write_log(&mut s, &sb, 100, false);
    assert!(matches!(
        recover(&mut s),
        Err(RecoveryError::Corrupt { .. })
    ));
}

/// A storage whose writes fail after `left` of them succeeded: a crash in the middle of a
/// recovery (what the failed writes would have done never happens).
struct CrashAfter {
    inner: MemStorage,
    left: usize,
}

impl Storage for CrashAfter {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        if self.left == 0 {
            return Err(std::io::Error::other("crash"));
        }
        self.left -= 1;
        self.inner.write_at(offset, bytes)
    }
    fn barrier(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.barrier(offset, len)
    }
    fn barrier_all(&mut self) -> std::io::Result<()> {
        self.inner.barrier_all()
    }
    fn grow(&mut self, new_len: u64) -> std::io::Result<()> {
        self.inner.grow(new_len)
    }
}

/// A frame whose in-place check recovery asked, then a frame that rewrites those bytes: replay
/// writes the second over the first's pieces, so a crash in the middle of replay would make
/// the check fail at the next recovery, which would cut the log under a half-replayed heap.
/// Recovery therefore appends a voucher before replay: after a crash at any write of the
/// first recovery, the second replays both frames and ends with the rewrite's bytes.
/// The sabotage mask is process-wide: the tests that depend on it take this lock.
static MASK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_crash_during_replay_over_checked_bytes_recovers_every_frame() {
    let _l = MASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (crashed, bad) = crash_during_replay_over_checked_bytes();
    assert!(bad.is_empty(), "{bad:?}");
    assert!(
        crashed >= 3,
        "the first recovery wrote too little: {crashed}"
    );
}

/// The same without the voucher (sabotage, feature `test-hooks`): some crash point loses the
/// second frame's bytes.
#[cfg(feature = "test-hooks")]
#[test]
fn without_the_recovery_voucher_a_crash_during_replay_is_caught() {
    use txheap_recovery::sabotage;
    let _l = MASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    sabotage::set(sabotage::RECOVERY_REPLAY_BEFORE_VOUCHER);
    let (_, bad) = crash_during_replay_over_checked_bytes();
    sabotage::set(0);
    assert!(
        !bad.is_empty(),
        "no crash point lost a frame without the voucher"
    );
}

/// Recover an image of a checked frame and a frame rewriting its bytes, crashing the first
/// recovery after each of its writes in turn; returns the number of crash points and what
/// the second recovery got wrong at each.
fn crash_during_replay_over_checked_bytes() -> (usize, Vec<String>) {
    let (s, sb, at, two, rewrite) = checked_then_rewrite(true);
    let image = s.into_bytes();
    let (mut crashed, mut bad) = (0, Vec::new());
    for left in 0.. {
        let mut c = CrashAfter {
            inner: MemStorage::from_bytes(image.clone()),
            left,
        };
        if recover(&mut c).is_ok() {
            break;
        }
        crashed += 1;
        let mut again = c.inner;
        let r = recover(&mut again).unwrap();
        // Both frames replayed (with the voucher, when the crash came after it), or none when
        // the first recovery's checkpoint had switched the superblock: either way, both
        // frames' bytes.
        let mut meta = [0u8; 8];
        again.read_at(sb.heap_offset() + 8, &mut meta).unwrap();
        let mut meta_two = [0u8; 8];
        again.read_at(two, &mut meta_two).unwrap();
        let mut got = vec![0u8; rewrite.len()];
        again.read_at(at, &mut got).unwrap();
        if !(&meta == b"meta-one" && &meta_two == b"meta-two" && got == rewrite) {
            bad.push(format!(
                "crash after {left} writes: not both frames ({:?})",
                r.scan
            ));
        }
    }
    (crashed, bad)
}

/// The image of a checked frame (its object in place) and a later frame that rewrites the
/// object and writes `meta-two` on a page of its own. Returns (storage, superblock, object
/// offset, `meta-two` offset, rewrite bytes).
fn checked_then_rewrite(in_place_written: bool) -> (MemStorage, Superblock, u64, u64, Vec<u8>) {
    use txheap_recovery::txheap_log::{FrameBuilder, InPlaceDigest};
    let object = vec![0xabu8; 5000];
    let rewrite = vec![0xcdu8; 5000];
    let (mut s, sb) = fresh();
    let at = sb.heap_offset() + 8192;
    let two = sb.heap_offset() + 24576;
    let mut d = InPlaceDigest::new();
    d.update(&object);
    let mut b = FrameBuilder::new();
    b.push_range(sb.heap_offset() + 8, b"meta-one").unwrap();
    b.push_in_place_check(d.digest(), &[(at, object.len() as u64)])
        .unwrap();
    let f1 = b.finish_vouching(sb.generation, sb.next_txid, 0).to_vec();
    let mut b = FrameBuilder::new();
    b.push_range(at, &rewrite).unwrap();
    b.push_range(two, b"meta-two").unwrap();
    let f2 = b
        .finish_vouching(sb.generation, sb.next_txid + 1, 0)
        .to_vec();
    s.write_at(sb.log_offset(), &f1).unwrap();
    s.write_at(sb.log_offset() + f1.len() as u64, &f2).unwrap();
    if in_place_written {
        s.write_at(at, &object).unwrap();
    }
    (s, sb, at, two, rewrite)
}

/// Found by review: recovery's voucher was one frame, the log's last; after a recovery killed
/// once its replay had rewritten the object, one flipped bit in that voucher read as a torn
/// tail, the check was asked of the rewritten bytes, and the log was cut under a half-replayed
/// heap. With two vouchers, a bit flipped in either gives the whole state or a refusal.
#[test]
fn a_flipped_bit_in_a_recovery_voucher_is_never_a_silent_cut() {
    let _l = MASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut flipped = 0;
    for left in 0..8 {
        for voucher in 0..2u64 {
            let (s, sb, at, two, rewrite) = checked_then_rewrite(true);
            let log_end = {
                let r = txheap_recovery::scan_log(&s, &sb, &mut |_, _| Ok(())).unwrap();
                sb.log_offset() + r.end_offset
            };
            // A recovery that crashes after `left` writes.
            let mut c = CrashAfter { inner: s, left };
            if recover(&mut c).is_ok() {
                continue;
            }
            let mut again = c.inner;
            let v = log_end + voucher * 40;
            let mut magic = [0u8; 4];
            again.read_at(v, &mut magic).unwrap();
            if magic != *b"TXFR" {
                continue; // no voucher written there
            }
            flipped += 1;
            let flip = v + 20; // inside its durable_txid
            let mut byte = [0u8];
            again.read_at(flip, &mut byte).unwrap();
            again.write_at(flip, &[byte[0] ^ 0x10]).unwrap();
            let Ok(r) = recover(&mut again) else {
                continue; // refused (LogDamaged): not silent
            };
            let mut meta = [0u8; 8];
            again.read_at(sb.heap_offset() + 8, &mut meta).unwrap();
            let mut meta_two = [0u8; 8];
            again.read_at(two, &mut meta_two).unwrap();
            let mut got = vec![0u8; rewrite.len()];
            again.read_at(at, &mut got).unwrap();
            let none = meta != *b"meta-one" && meta_two != *b"meta-two" && got != rewrite;
            let all = meta == *b"meta-one" && meta_two == *b"meta-two" && got == rewrite;
            assert!(
                (none && r.scan.frames == 0) || all,
                "crash after {left} writes, voucher {voucher} damaged: not a prefix ({:?})",
                r.scan
            );
        }
    }
    assert!(flipped >= 4, "too few damaged vouchers tried: {flipped}");
}

/// Found by review: the search for a checked frame's voucher tried every 8-byte position after
/// it, so bytes a user stored (an empty frame of this generation, inside a later frame's
/// payload) could vouch for the check, and a frame whose in-place bytes never reached the disk
/// was replayed torn. Now only the committed frames that follow it can vouch; a fake frame can
/// at most make recovery refuse (the damage rule), never replay torn bytes.
#[test]
fn bytes_inside_a_later_frame_never_vouch_for_a_check() {
    use txheap_recovery::txheap_log::FrameBuilder;
    for (ahead, evidence) in [(7, 1), (7, 5), (1 << 40, (1 << 40) - 1)] {
        let (mut s, sb, _, _, _) = checked_then_rewrite(false);
        // A third frame whose payload holds an empty frame vouching for frames 1 and 2.
        let fake = FrameBuilder::new()
            .finish_vouching(
                sb.generation,
                sb.next_txid + ahead,
                sb.next_txid - 1 + evidence,
            )
            .to_vec();
        let mut b = FrameBuilder::new();
        b.push_range(sb.heap_offset() + 16384, &fake).unwrap();
        let end = txheap_recovery::scan_log(&s, &sb, &mut |_, _| Ok(()))
            .unwrap()
            .end_offset;
        assert_eq!(
            end, 0,
            "the object's bytes are missing: frame 1 ends the log"
        );
        let f3 = b
            .finish_vouching(sb.generation, sb.next_txid + 2, 0)
            .to_vec();
        // (Frames 1 and 2 are back to back from the log's start; frame 3 follows them.)
        let f12 = {
            let b = s.bytes();
            let mut at = sb.log_offset() as usize;
            for _ in 0..2 {
                let h = txheap_recovery::txheap_log::header_at(b[at..at + 40].try_into().unwrap())
                    .unwrap();
                at += h.frame_len() as usize;
            }
            at as u64
        };
        s.write_at(f12, &f3).unwrap();
        let before = s.bytes().to_vec();
        match recover(&mut s) {
            Err(_) => assert_eq!(s.bytes(), &before[..], "a refusal wrote"),
            Ok(r) => {
                let mut meta = [0u8; 8];
                s.read_at(sb.heap_offset() + 8, &mut meta).unwrap();
                assert!(
                    &meta != b"meta-one",
                    "frame 1 replayed over missing bytes ({ahead}, {evidence}): {:?}",
                    r.scan
                );
            }
        }
    }
}

/// Found by review: hostile or odd checked frames. A piece past the file's end is a mismatch
/// (its growth was never durable), read from no storage; a second checked frame with no
/// voucher between (no writer leaves that) and pieces out of order are refused, so that a log
/// of such frames cannot make an open hash the file again and again; a checked frame that
/// holds with no room after it for recovery's vouchers is refused by both opens alike.
#[test]
fn odd_in_place_checks_are_cut_or_refused_alike() {
    use txheap_recovery::scan_log;
    use txheap_recovery::txheap_log::{FrameBuilder, InPlaceDigest, StopReason};
    let digest = |b: &[u8]| {
        let mut d = InPlaceDigest::new();
        d.update(b);
        d.digest()
    };
    let frame = |sb: &Superblock, k: u64, pad: usize, pieces: &[(u64, u64)], dig: u64| {
        let mut b = FrameBuilder::new();
        b.push_range(sb.heap_offset() + 8, &vec![1u8; pad.max(8)])
            .unwrap();
        b.push_in_place_check(dig, pieces).unwrap();
        b.finish(sb.generation, sb.next_txid + k).to_vec()
    };
    let zeros = vec![0u8; 4096];
    // Zeros past the end of a MemStorage (which refuses reads there): a mismatch, not an error.
    let (mut s, sb) = fresh();
    let len = s.len().unwrap();
    s.write_at(
        sb.log_offset(),
        &frame(&sb, 0, 8, &[(len, 4096)], digest(&zeros)),
    )
    .unwrap();
    let r = scan_log(&s, &sb, &mut |_, _| Ok(())).unwrap();
    assert_eq!(
        r.stop.reason,
        StopReason::InPlaceMismatch { txid: sb.next_txid }
    );
    // Two checked frames, no voucher between: refused.
    let (mut s, sb) = fresh();
    let at = sb.heap_offset() + 8192;
    let f1 = frame(&sb, 0, 8, &[(at, 4096)], digest(&zeros));
    let f2 = frame(&sb, 1, 8, &[(at, 4096)], digest(&zeros));
    s.write_at(sb.log_offset(), &f1).unwrap();
    s.write_at(sb.log_offset() + f1.len() as u64, &f2).unwrap();
    assert!(matches!(
        scan_log(&s, &sb, &mut |_, _| Ok(())),
        Err(RecoveryError::Corrupt { .. })
    ));
    // Pieces out of order: refused.
    let (mut s, sb) = fresh();
    let f = frame(&sb, 0, 8, &[(at + 4096, 64), (at, 64)], digest(&[0u8; 128]));
    s.write_at(sb.log_offset(), &f).unwrap();
    assert!(matches!(
        scan_log(&s, &sb, &mut |_, _| Ok(())),
        Err(RecoveryError::Corrupt { .. })
    ));
    // A frame that holds and ends 40 bytes before the log's end: both opens refuse.
    let (mut s, sb) = fresh();
    let bare = frame(&sb, 0, 8, &[(at, 4096)], digest(&zeros)).len();
    let pad = LOG as usize - 40 - bare + 8;
    let f = frame(&sb, 0, pad, &[(at, 4096)], digest(&zeros));
    assert_eq!(f.len() as u64, LOG - 40);
    s.write_at(sb.log_offset(), &f).unwrap();
    let before = s.bytes().to_vec();
    assert!(matches!(
        scan_log(&s, &sb, &mut |_, _| Ok(())),
        Err(RecoveryError::Corrupt { .. })
    ));
    assert!(matches!(
        recover(&mut s),
        Err(RecoveryError::Corrupt { .. })
    ));
    assert_eq!(s.bytes(), &before[..]);
}
