//! txheap: the seed's linked list. Each insert is `tx.alloc` of a 64-byte node whose `next` is
//! the root's head, and the root's head set to it (push front), in `heap.transaction`.

use std::path::Path;

use txheap::{Durability, Heap, Options, PPtr};

use super::{expect_count, Engine};
use crate::BoxResult;

/// A list node: exactly 64 bytes, like the peers' values.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
pub struct Node {
    /// The item's key.
    pub value: u64,
    /// The node inserted before this one.
    pub next: PPtr<Node>,
    /// Padding to 64 bytes.
    pub pad: [u64; 6],
}

/// The heap's root: the list's head and its length.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
pub struct Root {
    /// The newest node.
    pub head: PPtr<Node>,
    /// Nodes in the list.
    pub len: u64,
}

/// Log size for the one-transaction workload (W3): 1,000,000 nodes of 64 bytes log about
/// 64 MiB of node bytes plus allocator metadata, far over the 16 MiB default log.
pub const BIG_LOG: u64 = 256 << 20;

/// File name of the heap inside a child's directory.
pub const FILE: &str = "bench.heap";

struct ListHeap {
    heap: Heap,
}

/// Push nodes `first..first + n` onto the list in one transaction.
pub fn push(heap: &Heap, first: u64, n: u64) -> txheap::Result<()> {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut head = tx.get(root)?.head;
        for value in first..first + n {
            head = tx.alloc(Node {
                value,
                next: head,
                pad: [0; 6],
            })?;
        }
        let r = tx.get_mut(root)?;
        r.head = head;
        r.len += n;
        Ok(())
    })
}

/// Walk the list and return (root.len, nodes reached).
pub fn count(heap: &Heap) -> txheap::Result<(u64, u64)> {
    heap.read(|r| {
        let root = r.get(r.root::<Root>()?)?;
        let mut p = root.head;
        let mut n = 0;
        while !p.is_null() {
            p = r.get(p)?.next;
            n += 1;
        }
        Ok((root.len, n))
    })
}

impl Engine for ListHeap {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        Ok(push(&self.heap, first, n)?)
    }

    fn check(&mut self, count_expected: u64) -> BoxResult<()> {
        let (len, walked) = count(&self.heap)?;
        expect_count("txheap (root.len)", len, count_expected)?;
        expect_count("txheap (nodes walked)", walked, count_expected)
    }
}

fn with(
    dir: &Path,
    options: Options,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    let heap = Heap::create(dir.join(FILE), options)?;
    let mut e = ListHeap { heap };
    body(&mut e)?;
    e.heap.close()?;
    Ok(())
}

/// Default options: `Durability::Full`, 16 MiB log (the documented defaults).
pub fn full(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    with(dir, Options::new(), body)
}

/// Default options with `Durability::None`.
pub fn none(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    with(dir, Options::new().durability(Durability::None), body)
}

/// `Durability::Full` with a 256 MiB log ([`BIG_LOG`]), for W3's single large transaction.
pub fn full_big_log(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(
        dir,
        Options::new().log_size(BIG_LOG).max_size(8 << 30),
        body,
    )
}

/// `Durability::None` with a 256 MiB log ([`BIG_LOG`]): W3 without the disk.
pub fn none_big_log(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(
        dir,
        Options::new()
            .log_size(BIG_LOG)
            .max_size(8 << 30)
            .durability(Durability::None),
        body,
    )
}
