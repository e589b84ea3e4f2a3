//! Decode the frames written by event E of a recording: `frame SEED full|none TXNS E`.
//!
//! The log crate does the decoding (`txheap_log::parse_header` and `scan`, which verifies each
//! frame's check and ranges): nothing here knows the frame layout. The first frame's generation
//! and txid are what `parse_header` reports finding when it is asked for others.
use crash_tests::record;
use txheap::{Durability, TraceEvent};
use txheap_recovery::txheap_log::{parse_header, scan, StopReason, FRAME_HEADER_LEN};

/// The generation and txid in the frame header at the start of `bytes`.
fn first_frame_ids(bytes: &[u8]) -> (u64, u64) {
    let header: &[u8; FRAME_HEADER_LEN] = bytes
        .get(..FRAME_HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .expect("the write is shorter than a frame header");
    let room = bytes.len() as u64;
    let generation = match parse_header(header, 0, 0, room) {
        Ok(h) => h.generation,
        Err(StopReason::OtherGeneration { found }) => found,
        Err(StopReason::TxidMismatch { .. }) => 0,
        Err(e) => panic!("the write does not start with a frame header: {e:?}"),
    };
    let txid = match parse_header(header, generation, 0, room) {
        Ok(h) => h.txid,
        Err(StopReason::TxidMismatch { found, .. }) => found,
        Err(e) => panic!("the write does not start with a whole frame: {e:?}"),
    };
    (generation, txid)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let seed: u64 = a[1].parse().unwrap();
    let d = if a[2] == "none" {
        Durability::None
    } else {
        Durability::Full
    };
    let txns: u64 = a[3].parse().unwrap();
    let e: usize = a[4].parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = record(&dir.path().join("x.heap"), seed, d, txns);
    let TraceEvent::Write { bytes, .. } = &rec.events[e] else {
        panic!("not a write")
    };
    let (generation, txid) = first_frame_ids(bytes);
    let mut frames = scan(bytes, generation, txid);
    for frame in &mut frames {
        let h = frame.header;
        println!("generation {} txid {}", h.generation, h.txid);
        for r in frame.ranges() {
            let len = r.bytes.len();
            println!(
                "range {} +{len}: first bytes {:?}",
                r.offset,
                &r.bytes[..len.min(24)]
            );
        }
    }
    if let Some(stop) = frames.stop() {
        println!("{stop}");
    }
}
