//! Run N small transactions (allocate a 64-byte node and link it, the seed's list) and print
//! what the writer did. Used to count barriers per commit:
//!
//! ```text
//! cargo build --release --example commits
//! strace -f -c -e trace=msync,fdatasync,fsync target/release/examples/commits /tmp/c.heap 1000 full
//! strace -f -c -e trace=msync,fdatasync,fsync target/release/examples/commits /tmp/c.heap 1000 none
//! ```

use std::time::Instant;

use txheap::{Durability, Heap, Options, PPtr};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
    payload: [u64; 6],
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    head: PPtr<Node>,
    len: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "commits.heap".into());
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let durability = match args.next().as_deref() {
        None | Some("full") => Durability::Full,
        Some("none") => Durability::None,
        Some(other) => return Err(format!("durability must be full or none, not {other}").into()),
    };
    let _ = std::fs::remove_file(&path);
    let heap = Heap::create(&path, Options::new().durability(durability))?;
    let start = Instant::now();
    for value in 0..n {
        heap.transaction(|tx| {
            let root = tx.root::<Root>()?;
            let head = tx.get(root)?.head;
            let node = tx.alloc(Node {
                value,
                next: head,
                payload: [value; 6],
            })?;
            let r = tx.get_mut(root)?;
            r.head = node;
            r.len += 1;
            Ok(())
        })?;
    }
    let elapsed = start.elapsed();
    let s = heap.stats()?;
    println!(
        "{n} commits ({durability:?}) in {:.3} s = {:.0} tx/s; writer: {} pwrite, {} msync, {} fdatasync, {} checkpoints",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        s.io.writes,
        s.io.range_barriers,
        s.io.full_barriers,
        s.checkpoints
    );
    heap.close()?;
    std::fs::remove_file(&path)?;
    Ok(())
}
