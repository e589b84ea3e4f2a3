//! Decode the frame written by event E of a recording: `frame SEED full|none TXNS E`.
use crash_tests::record;
use txheap::{Durability, TraceEvent};
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
    let h = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let t = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    println!("generation {h} txid {t}");
    let mut at = 32;
    while at + 16 <= bytes.len() {
        let off = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let data = &bytes[at + 16..at + 16 + len];
        println!("range {off} +{len}: first bytes {:?}", &data[..len.min(24)]);
        at += 16 + len.div_ceil(8) * 8;
    }
}
