//! PMDK's libpmemobj on a regular file: the same linked list as txheap, built with
//! `pmemobj_tx_begin` / `pmemobj_tx_alloc` / `pmemobj_tx_add_range_direct` /
//! `pmemobj_tx_commit` / `pmemobj_tx_end` (the C API without macros, through `sys`).
//!
//! On a file that is not persistent memory libpmemobj makes every transaction durable with
//! `msync`; that is the durable setting. The fast setting is the same code run with
//! `PMEM_IS_PMEM_FORCE=1` in the child's environment (set by the case table), which makes it
//! treat the mapping as persistent memory and flush CPU caches instead of calling `msync`: not
//! durable on a regular file.

use std::path::Path;

use super::{expect_count, Engine};
use crate::sys::{PmemObj, PmemPool};
use crate::BoxResult;

/// Pool size: room for 1,000,000 64-byte objects with PMDK's headers and then some.
const POOL_SIZE: usize = 1 << 30;
const LAYOUT: &str = "txheap-bench";
/// Root object: `PMEMoid head` (16 bytes) then `uint64_t len`.
const ROOT_SIZE: usize = 64;
/// Node: `uint64_t value`, `PMEMoid next`, padding to 64 bytes.
const NODE_SIZE: usize = 64;
const NODE_TYPE: u64 = 1;

struct Pmdk {
    pool: PmemPool,
    root: PmemObj,
}

impl Engine for Pmdk {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        let root = self.root;
        self.pool.tx(|tx| {
            let mut r = [0u8; 24];
            tx.read(&root, 0, &mut r)?;
            let mut head: [u8; 16] = r[..16].try_into()?;
            let len = u64::from_le_bytes(r[16..24].try_into()?);
            for value in first..first + n {
                let node = tx.alloc(NODE_SIZE, NODE_TYPE)?;
                let mut bytes = [0u8; 24];
                bytes[..8].copy_from_slice(&value.to_le_bytes());
                bytes[8..].copy_from_slice(&head);
                tx.write(&node, 0, &bytes)?;
                head = node.to_bytes();
            }
            r[..16].copy_from_slice(&head);
            r[16..].copy_from_slice(&(len + n).to_le_bytes());
            tx.write(&root, 0, &r)
        })
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        let mut len = [0u8; 8];
        self.pool.read(&self.root, 16, &mut len)?;
        expect_count("pmdk (root len)", u64::from_le_bytes(len), count)?;
        let mut walked = 0;
        let mut p = self.pool.read_oid(&self.root, 0)?;
        while let Some(node) = p {
            walked += 1;
            p = self.pool.read_oid(&node, 8)?;
        }
        expect_count("pmdk (nodes walked)", walked, count)
    }
}

/// Create a pool in `dir` and lend it to `body`. Durable unless the child runs with
/// `PMEM_IS_PMEM_FORCE=1`.
pub fn pool(dir: &Path, body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>) -> BoxResult<()> {
    let path = dir.join("bench.pmemobj");
    {
        let mut pool = PmemPool::create(&path, LAYOUT, POOL_SIZE)?;
        pool.root(ROOT_SIZE)?;
    }
    // Reopen, as an application would on every start after the first.
    let mut pool = PmemPool::open(&path, LAYOUT)?;
    let root = pool.root(ROOT_SIZE)?;
    let mut e = Pmdk { pool, root };
    body(&mut e)
}
