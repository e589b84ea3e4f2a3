//! Rules of the damage search and of recovery's order that no other test pinned down: each test
//! here was written against a mutation of the code that the rest of the suite let through
//! (hand mutation testing, twenty-seventh session), and fails on that mutant.

use txheap_recovery::txheap_log::{find_voucher, FrameBuilder, FrameHeader};
use txheap_recovery::{format, scan_log, MemStorage, Storage};

const LOG_SIZE: u64 = 1 << 20;

/// A claim that is not below the frame's own txid never counts as evidence (documented on
/// `FrameBuilder::finish_vouching`).
#[test]
fn a_claim_not_below_its_own_txid_never_vouches() {
    let h = FrameHeader {
        range_count: 0,
        generation: 1,
        txid: 5,
        durable_txid: 5,
        payload_len: 0,
        check: 0,
    };
    assert!(!h.vouches_for(1, 4), "durable_txid == txid vouched");
    let h = FrameHeader {
        durable_txid: 9,
        ..h
    };
    assert!(!h.vouches_for(1, 4), "durable_txid > txid vouched");

    let mut region = vec![0u8; 256];
    let mut b = FrameBuilder::new();
    b.push_range(8, b"a").unwrap();
    let f1 = b.finish_vouching(1, 1, 0).to_vec();
    region[..f1.len()].copy_from_slice(&f1);
    let f2 = b.finish_vouching(1, 2, 2).to_vec(); // claims itself
    region[f1.len()..f1.len() + f2.len()].copy_from_slice(&f2);
    region[45] ^= 1; // frame 1 torn
    let (v, last) = find_voucher(&region, 0, 1, 1);
    assert_eq!((v, last), (None, Some(2)));
}

/// Frame `t` torn, frame `t + 1` whole, and inside its payload (user data) a whole frame of this
/// generation that verifies, with evidence reaching `t` but a txid further ahead than the log
/// could hold frames: `search_vouchers` must ignore it (the log's clean torn end), not take it
/// as a voucher and refuse the file as damaged.
#[test]
fn a_stored_frame_far_ahead_never_vouches() {
    let mut s = MemStorage::new();
    let sb = format(&mut s, LOG_SIZE, 64 << 20).unwrap();
    let (g, t) = (sb.generation, sb.next_txid);
    let mut b = FrameBuilder::new();
    b.push_range(sb.heap_offset() + 4096, &[7u8; 100]).unwrap();
    let mut torn = b.finish(g, t).to_vec();
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    s.write_at(sb.log_offset(), &torn).unwrap();
    // The user's bytes: a whole, verifying frame far ahead, claiming `t` durable.
    let far = t + LOG_SIZE; // beyond t + log_size / 40
    let stored = FrameBuilder::new().finish_vouching(g, far, t).to_vec();
    b.clear();
    b.push_range(sb.heap_offset() + 8192, &stored).unwrap();
    let f = b.finish_vouching(g, t + 1, 0).to_vec();
    s.write_at(sb.log_offset() + torn.len() as u64, &f).unwrap();
    let scan = scan_log(&s, &sb, &mut |_, _| Ok(())).unwrap();
    assert_eq!((scan.frames, scan.damage), (0, None), "{scan:?}");
}

/// A storage that records the order of writes and barriers.
#[derive(Default)]
struct Traced {
    inner: MemStorage,
    ops: Vec<(char, u64, u64)>, // ('w' | 'b' | 'a', offset, len)
}

impl Storage for Traced {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.ops.push(('w', offset, bytes.len() as u64));
        self.inner.write_at(offset, bytes)
    }
    fn barrier(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.ops.push(('b', offset, len));
        self.inner.barrier(offset, len)
    }
    fn barrier_all(&mut self) -> std::io::Result<()> {
        self.ops.push(('a', 0, 0));
        self.inner.barrier_all()
    }
    fn grow(&mut self, new_len: u64) -> std::io::Result<()> {
        self.inner.grow(new_len)
    }
}

/// Recovery replays a killed writer's frames, which may be in the page cache only: the log
/// must be made durable before the first write to the heap (docs/ARCHITECTURE.md, recovery:
/// "barrier the log and replay"), or a power cut could keep replayed heap pages and lose
/// their frames.
#[test]
fn recovery_barriers_the_log_before_it_writes_the_heap() {
    let mut t = Traced::default();
    let sb = format(&mut t.inner, LOG_SIZE, 64 << 20).unwrap();
    let (g, first) = (sb.generation, sb.next_txid);
    let mut at = sb.log_offset();
    for k in 0..3u64 {
        let mut b = FrameBuilder::new();
        b.push_range(sb.heap_offset() + 4096 * (k + 1), &[k as u8 + 1; 64])
            .unwrap();
        let f = b.finish(g, first + k).to_vec();
        t.inner.write_at(at, &f).unwrap();
        at += f.len() as u64;
    }
    let log_end = at;
    let r = txheap_recovery::recover(&mut t).unwrap();
    assert_eq!(r.scan.frames, 3);
    let first_heap_write = t
        .ops
        .iter()
        .position(|&(k, off, _)| k == 'w' && off >= sb.heap_offset())
        .expect("replay wrote the heap");
    let covered = t.ops[..first_heap_write].iter().any(|&(k, off, len)| {
        k == 'a' || (k == 'b' && off <= sb.log_offset() && off + len >= log_end)
    });
    assert!(
        covered,
        "heap written before a barrier covered the log: {:?}",
        t.ops
    );
}

/// A writable recovery that replays a frame whose in-place check it asked writes two vouchers
/// first; the first one's evidence must reach that frame (its txid), or a crash during the
/// replay leaves the check to be asked again of bytes the replay changed: a silent cut.
#[test]
fn recovery_vouchers_cover_the_checked_frame() {
    use txheap_recovery::txheap_log::{header_at, InPlaceDigest};
    let mut s = MemStorage::new();
    let sb = format(&mut s, LOG_SIZE, 64 << 20).unwrap();
    let (g, t) = (sb.generation, sb.next_txid);
    let piece = (sb.heap_offset() + 8192, 64u64);
    s.write_at(piece.0, &[9u8; 64]).unwrap();
    let mut d = InPlaceDigest::new();
    d.update(&[9u8; 64]);
    let mut b = FrameBuilder::new();
    b.push_range(sb.heap_offset() + 4096, &[1u8; 64]).unwrap();
    b.push_in_place_check(d.digest(), &[piece]).unwrap();
    let f = b.finish_vouching(g, t, 0).to_vec();
    s.write_at(sb.log_offset(), &f).unwrap();
    let r = txheap_recovery::recover(&mut s).unwrap();
    assert_eq!((r.scan.frames, r.scan.checked), (1, 1));
    let mut hb = [0u8; 40];
    s.read_at(sb.log_offset() + r.scan.end_offset, &mut hb)
        .unwrap();
    let v = header_at(&hb).expect("the first voucher after the checked frame");
    assert_eq!(v.txid, t + 1);
    assert!(
        v.vouches_for(g, t),
        "first voucher's evidence {} does not reach {t}",
        v.durable_txid
    );
}
