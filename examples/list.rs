//! The fmalloc linked-list example, crash-safe: the first run appends the values 0..9 to a
//! persistent list, one transaction per node; every later run prints them back.
//!
//! ```text
//! cargo run --release --example list -- list.heap   # first run: appends 0..9
//! cargo run --release --example list -- list.heap   # later runs: prints 0..9
//! ```

use txheap::{Heap, Options, PPtr};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
}

/// The application's root: the list's head and tail, and how many nodes it has.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    head: PPtr<Node>,
    tail: PPtr<Node>,
    len: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "list.heap".to_string());
    let heap = Heap::open_or_create(&path, Options::new())?;

    let len = heap.read(|r| match r.root::<Root>() {
        Ok(root) => Ok(r.get(root)?.len),
        Err(txheap::Error::NoRoot) => Ok(0),
        Err(e) => Err(e),
    })?;

    if len == 0 {
        for value in 0..10u64 {
            heap.transaction(|tx| {
                let root = tx.root::<Root>()?;
                let node = tx.alloc(Node {
                    value,
                    next: PPtr::null(),
                })?;
                let tail = tx.get(root)?.tail;
                if tail.is_null() {
                    tx.get_mut(root)?.head = node;
                } else {
                    tx.get_mut(tail)?.next = node;
                }
                let r = tx.get_mut(root)?;
                r.tail = node;
                r.len += 1;
                Ok(())
            })?;
            println!("appended {value}");
        }
        println!("wrote 10 nodes to {path}; run again to read them back");
    } else {
        let values = heap.read(|r| {
            let mut out = Vec::new();
            let mut p = r.get(r.root::<Root>()?)?.head;
            while !p.is_null() {
                let node = r.get(p)?;
                out.push(node.value);
                p = node.next;
            }
            Ok(out)
        })?;
        for v in &values {
            println!("{v}");
        }
        println!("read {} nodes from {path}", values.len());
    }
    heap.close()?;
    Ok(())
}
