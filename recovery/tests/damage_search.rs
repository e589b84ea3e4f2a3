//! The damage search's budget and the in-place checks' chain memo (`1c1c800`, and the review
//! of it): logs a writer (or the media under one) can leave are never refused by the budget,
//! and the memo answers as a walk from scratch over random logs.

use txheap_recovery::txheap_log::{
    parse_header, verify_frame, FrameBuilder, InPlaceDigest, Stop, StopReason, FRAME_HEADER_LEN,
    FRAME_MAGIC,
};
use txheap_recovery::{
    find_damage, format, recover_checked_with, scan_log, MemStorage, OnDamage, RecoveryError,
    Storage, Superblock,
};

const LOG_SIZE: u64 = 1 << 20;

/// 40 bytes a user stores in the heap that read as a frame header of `generation`, `txid`,
/// claiming `payload_len` (its check is whatever: it never verifies).
fn header_like(generation: u64, txid: u64, payload_len: u32) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    h[16..24].copy_from_slice(&txid.to_le_bytes());
    h[32..36].copy_from_slice(&payload_len.to_le_bytes());
    h[36..40].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    h
}

/// A crash under `Durability::None`: frame `t` torn (one payload byte wrong), frame `t + 1`
/// whole; frame `t + 1` stores, as user data, 40 bytes that look like a header of this
/// generation claiming `payload_len`.
fn torn_then_user_bytes(payload_len: u32) -> (MemStorage, Superblock) {
    let mut s = MemStorage::new();
    let sb = format(&mut s, LOG_SIZE, 64 << 20).unwrap();
    let (g, t) = (sb.generation, sb.next_txid);
    let mut b = FrameBuilder::new();
    b.push_range(sb.heap_offset() + 4096, &[7u8; 100]).unwrap();
    let mut torn = b.finish(g, t).to_vec();
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    s.write_at(sb.log_offset(), &torn).unwrap();
    b.clear();
    b.push_range(sb.heap_offset() + 8192, &header_like(g, t + 2, payload_len))
        .unwrap();
    let f = b.finish(g, t + 1).to_vec();
    s.write_at(sb.log_offset() + torn.len() as u64, &f).unwrap();
    (s, sb)
}

/// Control: the same log with a small claim opens; the torn tail is discarded.
#[test]
fn control_user_bytes_with_a_small_claim() {
    let (s, sb) = torn_then_user_bytes(8);
    let scan = scan_log(&s, &sb, &mut |_, _| Ok(())).unwrap();
    assert_eq!((scan.frames, scan.damage), (0, None));
}

/// One 40-byte record of user data claiming 256 MiB, which does not fit the 1 MiB log (so
/// verifying it costs nothing), exhausted the first budget: the log was refused as `Corrupt`,
/// salvage too, where before the budget it opened (torn tail discarded). Only claims that fit
/// count now.
#[test]
fn one_header_like_record_in_user_data_does_not_refuse_the_log() {
    let (s, sb) = torn_then_user_bytes(256 << 20);
    let scan = scan_log(&s, &sb, &mut |_, _| Ok(()));
    let salvage = recover_checked_with(&mut s.clone(), OnDamage::Salvage, |_, _| {
        Ok::<(), RecoveryError>(())
    })
    .map(|r| r.scan.frames);
    assert!(
        matches!(scan, Ok(ref sc) if sc.frames == 0 && sc.damage.is_none()),
        "scan: {scan:?}\nsalvage: {salvage:?}"
    );
}

/// Headers that all fit the log and claim less than it: a big frame F (about 400 KiB) after
/// a torn frame, then small commits that each store a copy of F's header (a heap recording
/// its own frames' headers, or holding a copy of its own log). 170 copies claim 170 x 400 KiB,
/// more than 64 MiB, the first budget: refused as Corrupt, though a writer left it. The budget
/// is 64 log sizes (at least 1 GiB) now.
#[test]
fn copies_of_a_real_header_in_user_data_do_not_refuse_the_log() {
    let mut s = MemStorage::new();
    let sb = format(&mut s, LOG_SIZE, 64 << 20).unwrap();
    let (g, t) = (sb.generation, sb.next_txid);
    let mut b = FrameBuilder::new();
    let mut at = 0u64;
    b.push_range(sb.heap_offset() + 4096, &[7u8; 100]).unwrap();
    let mut torn = b.finish(g, t).to_vec();
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    s.write_at(sb.log_offset(), &torn).unwrap();
    at += torn.len() as u64;
    b.clear();
    b.push_range(sb.heap_offset() + 65536, &vec![1u8; 400 << 10])
        .unwrap();
    let big = b.finish(g, t + 1).to_vec();
    s.write_at(sb.log_offset() + at, &big).unwrap();
    at += big.len() as u64;
    let copy: [u8; 40] = big[..40].try_into().unwrap();
    for (txid, i) in (t + 2..).zip(0..170u64) {
        b.clear();
        b.push_range(sb.heap_offset() + 8192 + 64 * (i % 16), &copy)
            .unwrap();
        let f = b.finish(g, txid).to_vec();
        s.write_at(sb.log_offset() + at, &f).unwrap();
        at += f.len() as u64;
    }
    assert!(at + 400 * 1024 < LOG_SIZE, "each copy's claim fits: {at}");
    let scan = scan_log(&s, &sb, &mut |_, _| Ok(()));
    assert!(
        matches!(scan, Ok(ref sc) if sc.frames == 0 && sc.damage.is_none()),
        "{scan:?}"
    );
}

/// Media damage in two places of a `Full` log (each frame's evidence is the frame before it):
/// frame 3's payload is damaged, and one bit of frame 5's length field flipped. Before 1c1c800:
/// `LogDamaged` (frame 4 vouches for 3), and a salvage keeps frames 1 and 2. Now frame 5's
/// flipped length (2 GiB, which cannot fit the 1 MiB log, so it is never hashed) exhausted the
/// first search budget: `Corrupt`, and salvage refused too. It is damage again.
#[test]
fn a_flipped_length_bit_after_damage_is_still_damage_and_salvageable() {
    let mut s = MemStorage::new();
    let sb = format(&mut s, LOG_SIZE, 64 << 20).unwrap();
    let (g, t) = (sb.generation, sb.next_txid);
    let mut b = FrameBuilder::new();
    let mut at = 0u64;
    let mut starts = Vec::new();
    for i in 0..6u64 {
        b.clear();
        b.push_range(sb.heap_offset() + 4096 + 64 * i, &[i as u8 + 1; 24])
            .unwrap();
        let f = b
            .finish_vouching(g, t + i, (t + i).saturating_sub(1))
            .to_vec();
        s.write_at(sb.log_offset() + at, &f).unwrap();
        starts.push(at);
        at += f.len() as u64;
    }
    // Frame t+2: one payload byte rotten. Frame t+4: bit 31 of payload_len flipped.
    let p = sb.log_offset() + starts[2] + 60;
    let mut byte = [0u8];
    s.read_at(p, &mut byte).unwrap();
    s.write_at(p, &[byte[0] ^ 0x10]).unwrap();
    let p = sb.log_offset() + starts[4] + 35;
    s.read_at(p, &mut byte).unwrap();
    s.write_at(p, &[byte[0] ^ 0x80]).unwrap();
    let scan = scan_log(&s, &sb, &mut |_, _| Ok(()));
    let salvage = recover_checked_with(&mut s.clone(), OnDamage::Salvage, |_, _| {
        Ok::<(), RecoveryError>(())
    })
    .map(|r| r.scan.frames);
    assert!(
        matches!(scan, Ok(ref sc) if sc.frames == 2 && sc.damage.is_some_and(|d| d.txid == t + 2)),
        "scan: {scan:?}\nsalvage: {salvage:?}"
    );
    assert!(matches!(salvage, Ok(2)), "salvage: {salvage:?}");
}

// ---------------------------------------------------------------------------------------------
// The chain memo against the scan before it (1c1c800^), over random logs.

/// The scan before the memo (the parts the generator below exercises: ranges inside the heap,
/// in-place checks of no pieces), with its `chain_vouches` walking from scratch.
fn reference_scan(s: &MemStorage, sb: &Superblock) -> Result<(u64, u64, Stop, bool, u64), String> {
    fn chain_vouches(
        s: &MemStorage,
        sb: &Superblock,
        from: u64,
        txid: u64,
    ) -> Result<bool, String> {
        let (mut at, mut expect) = (from, txid + 1);
        let reason = loop {
            let remaining = sb.log_size - at;
            if remaining < FRAME_HEADER_LEN as u64 {
                return Ok(false);
            }
            let mut hb = [0u8; FRAME_HEADER_LEN];
            s.read_at(sb.log_offset() + at, &mut hb).unwrap();
            let h = match parse_header(&hb, sb.generation, expect, remaining) {
                Ok(h) => h,
                Err(r) => break r,
            };
            let mut payload = vec![0u8; h.payload_len as usize];
            s.read_at(sb.log_offset() + at + 40, &mut payload).unwrap();
            if let Err(r) = verify_frame(&hb, &h, &payload) {
                break r;
            }
            if h.durable_txid >= txid && h.durable_txid < h.txid {
                return Ok(true);
            }
            at += h.frame_len();
            expect += 1;
        };
        find_damage(s, sb, &Stop { offset: at, reason }, expect)
            .map(|d| d.is_some())
            .map_err(|e| name(&e))
    }
    let (mut at, mut txid, mut frames, mut checked) = (0u64, sb.next_txid, 0u64, 0u64);
    let stop = loop {
        let remaining = sb.log_size - at;
        if remaining < 40 {
            break Stop {
                offset: at,
                reason: StopReason::RegionEnd,
            };
        }
        let mut hb = [0u8; FRAME_HEADER_LEN];
        s.read_at(sb.log_offset() + at, &mut hb).unwrap();
        let h = match parse_header(&hb, sb.generation, txid, remaining) {
            Ok(h) => h,
            Err(reason) => break Stop { offset: at, reason },
        };
        let mut payload = vec![0u8; h.payload_len as usize];
        s.read_at(sb.log_offset() + at + 40, &mut payload).unwrap();
        let frame = match verify_frame(&hb, &h, &payload) {
            Ok(f) => f,
            Err(r) if r.is_malformed() => return Err("Corrupt malformed".into()),
            Err(reason) => break Stop { offset: at, reason },
        };
        if let Some(check) = frame.in_place_check() {
            assert_eq!(check.pieces().count(), 0);
            if !chain_vouches(s, sb, at + h.frame_len(), txid)? {
                if checked > 0 {
                    return Err("Corrupt two checks".into());
                }
                if check.digest != InPlaceDigest::new().digest() {
                    break Stop {
                        offset: at,
                        reason: StopReason::InPlaceMismatch { txid },
                    };
                }
                checked += 1;
            }
        }
        frames += 1;
        txid += 1;
        at += h.frame_len();
    };
    if checked > 0 && at + 2 * 40 > sb.log_size {
        return Err("Corrupt no room".into());
    }
    let damage = find_damage(s, sb, &stop, txid)
        .map_err(|e| name(&e))?
        .is_some();
    Ok((frames, txid, stop, damage, checked))
}

fn name(e: &RecoveryError) -> String {
    match e {
        RecoveryError::Corrupt { what, .. } if what.contains("claim more than") => {
            "Corrupt budget".into()
        }
        e => format!("other: {e:?}"),
    }
}

fn current_scan(s: &MemStorage, sb: &Superblock) -> Result<(u64, u64, Stop, bool, u64), String> {
    match scan_log(s, sb, &mut |_, _| Ok(())) {
        Ok(sc) => Ok((
            sc.frames,
            sc.next_txid,
            sc.stop,
            sc.damage.is_some(),
            sc.checked,
        )),
        Err(e @ RecoveryError::Corrupt { .. }) if name(&e) == "Corrupt budget" => Err(name(&e)),
        Err(RecoveryError::Corrupt { what, .. }) if what.contains("malformed") => {
            Err("Corrupt malformed".into())
        }
        Err(RecoveryError::Corrupt { what, .. }) if what.contains("no voucher between") => {
            Err("Corrupt two checks".into())
        }
        Err(RecoveryError::Corrupt { what, .. }) if what.contains("no room") => {
            Err("Corrupt no room".into())
        }
        Err(e) => Err(format!("other: {e:?}")),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random logs: frames with and without in-place checks (holding or not), random evidence
/// (none, below, reaching, or not below their own txid), torn frames, stale frames of the same
/// generation, older generations, and gaps; the current scan must answer as the old one.
#[test]
fn chain_memo_answers_as_the_walk_from_scratch() {
    let small_log = 65536u64;
    let seed = std::env::var("TXHEAP_SCAN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x2545_F491_4F6C_DD1Du64);
    let cases: u32 = std::env::var("TXHEAP_SCAN_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let checks: u64 = std::env::var("TXHEAP_SCAN_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut rng = Rng(seed | 1);
    let mut differences = Vec::new();
    let (mut outcomes, mut checked_seen) = (std::collections::BTreeMap::new(), 0);
    for case in 0..cases {
        let mut s = MemStorage::new();
        let mut sb = format(&mut s, small_log, 1 << 20).unwrap();
        let g = sb.generation;
        let t0 = sb.next_txid;
        let empty = InPlaceDigest::new().digest();
        let n = 1 + rng.below(14);
        let mut at = 0u64;
        let mut b = FrameBuilder::new();
        for txid in t0..t0 + n {
            b.clear();
            if rng.below(3) > 0 {
                b.push_range(
                    sb.heap_offset() + 8 * rng.below(100),
                    &[rng.next() as u8; 8],
                )
                .unwrap();
            }
            if rng.below(checks) != 1 {
                let d = if rng.below(8) == 0 { empty ^ 1 } else { empty };
                b.push_in_place_check(d, &[]).unwrap();
            }
            let durable = match rng.below(6) {
                0 | 1 => 0,
                2 => txid.saturating_sub(1 + rng.below(4)),
                3 => txid - 1,
                4 => txid + rng.below(3),
                _ => t0 + rng.below(txid - t0 + 1),
            };
            let (fg, ft) = match rng.below(20) {
                0 => (g.wrapping_sub(1), txid),
                1 => (g, txid + 1 + rng.below(3)),
                2 => (g, txid.saturating_sub(1 + rng.below(3)).max(1)),
                _ => (g, txid),
            };
            let mut f = b.finish_vouching(fg, ft, durable).to_vec();
            if rng.below(12) == 0 {
                let k = rng.below(f.len() as u64) as usize;
                f[k] ^= 1 + rng.next() as u8 % 255;
            }
            if at + f.len() as u64 > small_log {
                break;
            }
            s.write_at(sb.log_offset() + at, &f).unwrap();
            at += f.len() as u64;
            if rng.below(25) == 0 {
                at += 8 * (1 + rng.below(4));
            }
        }
        let _ = &mut sb;
        let old = reference_scan(&s, &sb);
        let new = current_scan(&s, &sb);
        if let Ok(o) = &old {
            checked_seen += (o.4 > 0) as u32;
        }
        *outcomes
            .entry(match &old {
                Ok(o) => format!("ok damage={} checked={}", o.3, o.4),
                Err(e) => e.clone(),
            })
            .or_insert(0u32) += 1;
        if old != new {
            differences.push(format!("case {case}: old {old:?}\n   new {new:?}"));
        }
    }
    eprintln!("outcomes: {outcomes:?}; checked>0: {checked_seen}");
    assert!(
        differences.is_empty(),
        "{}\n{}",
        differences.len(),
        differences[..differences.len().min(5)].join("\n")
    );
}
