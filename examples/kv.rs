//! A small persistent key-value store on `PBTreeMap<PBytes, PBytes>`: each command is one
//! crash-safe transaction (or one read).
//!
//! ```text
//! cargo run --release --example kv -- /tmp/kv.heap put apple red
//! cargo run --release --example kv -- /tmp/kv.heap put banana yellow
//! cargo run --release --example kv -- /tmp/kv.heap get apple          # red
//! cargo run --release --example kv -- /tmp/kv.heap scan               # every pair, in key order
//! cargo run --release --example kv -- /tmp/kv.heap scan b             # keys from "b" on
//! cargo run --release --example kv -- /tmp/kv.heap del apple
//! cargo run --release --example kv -- /tmp/kv.heap check              # verify the tree
//! ```

use std::ops::Bound;
use std::process::ExitCode;

use txheap::{Heap, Options, PBTreeMap, PBytes, PPtr};

/// The whole store is the root: an ordered map of byte strings.
type Map = PBTreeMap<PBytes, PBytes>;

const USAGE: &str = "usage: kv FILE (put KEY VALUE | get KEY | del KEY | scan [FROM [TO]] | check)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (Some(path), Some(cmd)) = (args.first(), args.get(1)) else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let rest: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    let heap = Heap::open_or_create(path, Options::new())?;
    let map: PPtr<Map> = heap.transaction(|tx| tx.root::<Map>())?;
    match (cmd.as_str(), rest.as_slice()) {
        ("put", [k, v]) => {
            heap.transaction(|tx| map.insert(tx, k.as_bytes(), v.as_bytes()))?;
        }
        ("get", [k]) => {
            let v = heap.read(|r| Ok(map.get(r, k.as_bytes())?.map(<[u8]>::to_vec)))?;
            match v {
                Some(v) => println!("{}", String::from_utf8_lossy(&v)),
                None => {
                    eprintln!("kv: {k}: not found");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        ("del", [k]) => {
            if !heap.transaction(|tx| map.remove(tx, k.as_bytes()))? {
                eprintln!("kv: {k}: not found");
                return Ok(ExitCode::from(1));
            }
        }
        ("scan", bounds) if bounds.len() <= 2 => {
            let lo = bounds
                .first()
                .map_or(Bound::Unbounded, |b| Bound::Included(b.as_bytes()));
            let hi = bounds
                .get(1)
                .map_or(Bound::Unbounded, |b| Bound::Excluded(b.as_bytes()));
            heap.read(|r| {
                for e in map.range_by(r, lo, hi)? {
                    let (k, v) = e?;
                    println!(
                        "{}\t{}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    );
                }
                Ok(())
            })?;
        }
        ("check", []) => {
            let n = heap.read(|r| {
                map.check(r)?;
                map.len(r)
            })?;
            println!("ok: {n} keys");
        }
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    heap.close()?;
    Ok(ExitCode::SUCCESS)
}
