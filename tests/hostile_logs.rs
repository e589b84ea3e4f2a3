//! Hostile logs cost time in proportion to the file, not to its square: a review found two
//! quadratic paths in recovery's scan, each taking hours on a default-sized log (every open
//! mode, `inspect`, and `txheap dump-log` run the scan).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use txheap::{Heap, Options};
use txheap_recovery::txheap_log::{FrameBuilder, InPlaceDigest, FRAME_MAGIC};

const LOG_OFFSET: u64 = 8192;
const LOG_SIZE: u64 = 1 << 20;

/// A cleanly closed heap with a 1 MiB log; returns (path, generation, next_txid) of its
/// superblock in force.
fn clean(dir: &Path) -> (PathBuf, u64, u64) {
    let path = dir.join("h.heap");
    Heap::create(
        &path,
        Options::new()
            .initial_size(1 << 20)
            .log_size(LOG_SIZE)
            .max_size(64 << 20),
    )
    .unwrap()
    .close()
    .unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut slots = [[0u8; 128]; 2];
    f.read_exact_at(&mut slots[0], 0).unwrap();
    f.read_exact_at(&mut slots[1], 4096).unwrap();
    let u = |s: &[u8; 128], o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap());
    let cur = match u(&slots[1], 16) > u(&slots[0], 16) {
        true => &slots[1],
        false => &slots[0],
    };
    assert_eq!(u(cur, 48), LOG_SIZE);
    (path, u(cur, 24), u(cur, 32))
}

fn write_log(path: &Path, log: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(log, LOG_OFFSET).unwrap();
}

/// Every open mode and the log's inspection, each within `limit` (on a thread: the test fails
/// instead of hanging); their results.
fn opens_in_time(path: &Path, limit: Duration) -> Vec<String> {
    let p = path.to_path_buf();
    let (send, recv) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let show = |r: txheap::Result<Heap>| format!("{:?}", r.map(|_| ()));
        let out = vec![
            show(Heap::open_read_only(&p)),
            show(Heap::salvage_read_only(&p)),
            format!("{:?}", txheap::inspect::read_log(&p).map(|_| ())),
            show(Heap::open(&p, Options::new())),
        ];
        let _ = send.send((t.elapsed(), out));
    });
    let (took, out) = recv
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the opens still ran after {limit:?}"));
    eprintln!("{took:?}: {out:?}");
    out
}

/// The log's first frame torn (zeros), then a frame header of the current generation every
/// 40 bytes, each claiming a payload to the log's end and failing its check: the damage search
/// hashed the rest of the log from each (a 256 KiB log took 9.7 s, 1 MiB more than 30 s).
/// Now refused once its candidates claim more than a budget of bytes.
#[test]
fn headers_that_each_claim_the_rest_of_the_log_are_refused_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let (path, generation, next_txid) = clean(dir.path());
    let mut log = vec![0u8; LOG_SIZE as usize];
    let mut at = 40usize;
    while at + 40 <= log.len() {
        let h = &mut log[at..at + 40];
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[8..16].copy_from_slice(&generation.to_le_bytes());
        h[16..24].copy_from_slice(&(next_txid + 1).to_le_bytes());
        h[32..36].copy_from_slice(&((LOG_SIZE as usize - at - 40) as u32).to_le_bytes());
        h[36..40].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        at += 40;
    }
    write_log(&path, &log);
    let out = opens_in_time(&path, Duration::from_secs(20));
    for r in &out {
        assert!(r.contains("claim more than"), "{out:?}");
    }
}

/// A log of committed frames, each with an in-place check of no pieces, vouched for only by
/// the last frame's evidence: each checked frame walked the chain to its end again (1 MiB,
/// 16,319 frames: more than 30 s). The chain is walked once now; the heap opens.
#[test]
fn a_chain_of_checked_frames_vouched_at_its_end_opens_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let (path, generation, next_txid) = clean(dir.path());
    let mut log = Vec::new();
    let mut b = FrameBuilder::new();
    let mut txid = next_txid;
    let empty = InPlaceDigest::new().digest();
    while log.len() as u64 + 64 + 40 + 4096 <= LOG_SIZE {
        b.clear();
        b.push_in_place_check(empty, &[]).unwrap();
        log.extend_from_slice(b.finish(generation, txid));
        txid += 1;
    }
    let frames = txid - next_txid;
    assert!(frames > 10_000, "{frames}");
    b.clear();
    log.extend_from_slice(b.finish_vouching(generation, txid, txid - 1));
    write_log(&path, &log);
    let out = opens_in_time(&path, Duration::from_secs(20));
    for r in &out {
        assert_eq!(r, "Ok(())", "{out:?}");
    }
    // Every frame replayed: the next transaction follows the voucher.
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(heap.read(|r| Ok(r.txid())).unwrap(), txid);
}
