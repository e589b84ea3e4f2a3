//! txheap's maps behind the `Engine` interface (W4-put): each insert puts the key
//! `w4::key(i)` with the 64-byte value `value_for(key)` into a `PBTreeMap<u64, [u8; 64]>` or a
//! `PHashMap<u64, [u8; 64]>` that is the heap's root.

use std::path::Path;

use txheap::{Durability, Heap, Options, PBTreeMap, PHashMap, PPtr};

use super::{expect_count, value_for, Engine};
use crate::w4::key;
use crate::BoxResult;

type Tree = PBTreeMap<u64, [u8; 64]>;
type Hash = PHashMap<u64, [u8; 64]>;

enum Map {
    Tree(PPtr<Tree>),
    Hash(PPtr<Hash>),
}

struct MapHeap {
    heap: Heap,
    map: Map,
}

impl Engine for MapHeap {
    fn insert(&mut self, first: u64, n: u64) -> BoxResult<()> {
        let map = &self.map;
        self.heap.transaction(|tx| {
            for i in first..first + n {
                let (k, v) = (key(i), value_for(key(i)));
                match map {
                    Map::Tree(m) => m.insert(tx, &k, &v)?,
                    Map::Hash(m) => m.insert(tx, &k, &v)?,
                };
            }
            Ok(())
        })?;
        Ok(())
    }

    fn check(&mut self, count: u64) -> BoxResult<()> {
        let len = self.heap.read(|r| match &self.map {
            Map::Tree(m) => m.len(r),
            Map::Hash(m) => m.len(r),
        })?;
        expect_count("txheap map", len, count)
    }
}

fn with(
    dir: &Path,
    durability: Durability,
    hash: bool,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    let heap = Heap::create(
        dir.join("w4put.heap"),
        Options::new().durability(durability),
    )?;
    let map = if hash {
        Map::Hash(heap.transaction(|tx| tx.root::<Hash>())?)
    } else {
        Map::Tree(heap.transaction(|tx| tx.root::<Tree>())?)
    };
    let mut e = MapHeap { heap, map };
    body(&mut e)?;
    e.heap.close()?;
    Ok(())
}

/// `PBTreeMap`, `Durability::Full`.
pub fn btree_full(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::Full, false, body)
}

/// `PBTreeMap`, `Durability::None`.
pub fn btree_none(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::None, false, body)
}

/// `PHashMap`, `Durability::Full`.
pub fn hash_full(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::Full, true, body)
}

/// `PHashMap`, `Durability::None`.
pub fn hash_none(
    dir: &Path,
    body: &mut dyn FnMut(&mut dyn Engine) -> BoxResult<()>,
) -> BoxResult<()> {
    with(dir, Durability::None, true, body)
}
