//! Print a recording's events (for debugging a violation): `dump SEED full|none TXNS [UPTO]`.
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
    let upto: usize = a.get(4).map(|s| s.parse().unwrap()).unwrap_or(usize::MAX);
    let dir = tempfile::tempdir().unwrap();
    let rec = record(&dir.path().join("x.heap"), seed, d, txns);
    for (i, e) in rec.events.iter().enumerate().take(upto) {
        match e {
            TraceEvent::Write { offset, bytes } => {
                println!("{i:4} write {offset:>10} +{}", bytes.len())
            }
            other => println!("{i:4} {other:?}"),
        }
    }
}
