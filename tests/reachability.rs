//! Reachability (`Heap::reachability`): every allocated block the root reaches through
//! pointers, slices and collections, the leaks, and the dangling pointers. Each test checks the
//! walk against what the test itself allocated and linked, and against `Heap::stats` (the
//! allocator's own count of used bytes).

use txheap::{
    bytemuck, Heap, Options, PBTreeMap, PBytes, PHashMap, PPtr, PSlice, PString, PVec, Stored,
};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
    pad: [u64; 2],
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct List {
    head: PPtr<Node>,
    len: u64,
}

fn heap(dir: &tempfile::TempDir, name: &str) -> Heap {
    Heap::create(dir.path().join(name), Options::new()).unwrap()
}

/// The list's nodes in order.
fn nodes(heap: &Heap) -> Vec<PPtr<Node>> {
    heap.read(|r| {
        let mut out = Vec::new();
        let mut p = r.get(r.root::<List>()?)?.head;
        while !p.is_null() {
            out.push(p);
            p = r.get(p)?.next;
        }
        Ok(out)
    })
    .unwrap()
}

fn push_nodes(heap: &Heap, n: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<List>()?;
        let mut head = tx.get(root)?.head;
        for value in 0..n {
            head = tx.alloc(Node {
                value,
                next: head,
                pad: [0; 2],
            })?;
        }
        let r = tx.get_mut(root)?;
        r.head = head;
        r.len += n;
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_list_leaks_what_is_unlinked_and_dangles_where_freed() {
    let d = tempfile::tempdir().unwrap();
    let heap = heap(&d, "list.heap");
    push_nodes(&heap, 1000);
    let r = heap.reachability::<List>().unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.allocated_blocks, r.reached_blocks), (1000, 1000));
    assert_eq!(r.allocated_bytes, heap.stats().unwrap().used_bytes);

    // Unlink node 500 without freeing it: exactly that block leaks.
    let list = nodes(&heap);
    heap.transaction(|tx| {
        let next = tx.get(list[500])?.next;
        tx.get_mut(list[499])?.next = next;
        Ok(())
    })
    .unwrap();
    let r = heap.reachability::<List>().unwrap();
    assert_eq!(r.leaked, vec![(list[500].offset(), 32)], "{r:?}");
    assert!(r.dangling.is_empty());
    assert_eq!(r.leaked_bytes(), 32);

    // Free node 700 while node 699 still points at it: that pointer dangles, and the nodes
    // after 700 (reached only through it) are leaked.
    heap.transaction(|tx| tx.free(list[700])).unwrap();
    let r = heap.reachability::<List>().unwrap();
    assert_eq!(r.dangling.len(), 1, "{r:?}");
    assert_eq!(
        (r.dangling[0].from, r.dangling[0].to),
        (list[699].offset(), list[700].offset())
    );
    let mut want: Vec<(u64, u64)> = list[701..]
        .iter()
        .map(|p| (p.offset(), 32))
        .chain([(list[500].offset(), 32)])
        .collect();
    want.sort_unstable();
    assert_eq!(r.leaked, want);
    assert_eq!(r.reached_blocks, 699);
}

#[test]
fn a_long_list_is_walked_without_deep_recursion() {
    // 100,000 nodes: a recursive walk would need a frame per node, far more than the test
    // thread's 2 MiB stack holds; the walk keeps a work list instead.
    let d = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        d.path().join("long.heap"),
        Options::new().log_size(64 << 20),
    )
    .unwrap();
    push_nodes(&heap, 100_000);
    let r = heap.reachability::<List>().unwrap();
    assert!(r.is_clean());
    assert_eq!(r.reached_blocks, 100_000);
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Item {
    id: u64,
    name: PString,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Everything {
    items: PVec<PPtr<Item>>,
    by_name: PHashMap<PString, PVec<u64>>,
    ordered: PBTreeMap<PBytes, PPtr<Item>>,
    big: PPtr<[u8; 100_000]>,
    some: PSlice<PPtr<Item>>,
    nested: PPtr<PVec<PBytes>>,
}

/// Fill every kind of holder: a vector of pointers, a hash map (split into a directory) with
/// string keys and vector values, a multi-level B-tree with byte-string keys, a large object, a
/// slice of pointers and a vector of byte strings behind a pointer.
fn fill(heap: &Heap) {
    heap.transaction(|tx| {
        let root = tx.root::<Everything>()?;
        let items_ptr = field::<PVec<PPtr<Item>>>(root, std::mem::offset_of!(Everything, items));
        let map =
            field::<PHashMap<PString, PVec<u64>>>(root, std::mem::offset_of!(Everything, by_name));
        let tree =
            field::<PBTreeMap<PBytes, PPtr<Item>>>(root, std::mem::offset_of!(Everything, ordered));
        let mut some = Vec::new();
        for id in 0..300u64 {
            let name = PString::new(tx, &format!("item-{id}"))?;
            let it = tx.alloc(Item { id, name })?;
            items_ptr.push(tx, it)?;
            tree.insert(tx, format!("key-{id:05}").as_bytes(), &it)?;
            if id % 10 == 0 {
                some.push(it);
            }
        }
        for k in 0..2000u64 {
            map.insert(tx, &format!("k{k}"), &bytemuck::Zeroable::zeroed())?;
            let v = map.get_mut(tx, &format!("k{k}"))?.expect("just inserted");
            for x in 0..(k % 5) {
                v.push(tx, x)?;
            }
        }
        for k in 300..3000u64 {
            let it = tx.alloc(Item {
                id: k,
                name: PString::default(),
            })?;
            tree.insert(tx, format!("key-{k:05}").as_bytes(), &it)?;
        }
        let big = tx.alloc([7u8; 100_000])?;
        let some = tx.alloc_slice(&some)?;
        let nested = PVec::<PBytes>::new(tx)?;
        for i in 0..50u32 {
            let b = PBytes::new(tx, &i.to_le_bytes())?;
            nested.push(tx, b)?;
        }
        let r = tx.get_mut(root)?;
        r.big = big;
        r.some = some;
        r.nested = nested;
        Ok(())
    })
    .unwrap();
}

#[test]
fn collections_reach_every_block_they_hold() {
    assert_eq!(std::mem::size_of::<Everything>(), 32 + 64 + 40 + 8 + 16 + 8);
    let d = tempfile::tempdir().unwrap();
    let heap = Heap::create(d.path().join("all.heap"), Options::new().log_size(64 << 20)).unwrap();
    fill(&heap);
    let r = heap.reachability::<Everything>().unwrap();
    assert!(
        r.is_clean(),
        "leaked {:?}, dangling {:?}",
        r.leaked,
        r.dangling
    );
    assert_eq!(r.reached_blocks, r.allocated_blocks);
    assert_eq!(r.allocated_bytes, heap.stats().unwrap().used_bytes);
    // Items, their names, the vector's buffer, map buckets and directory, 2,000 key strings,
    // 1,600 vectors' buffers, tree nodes, the big object, the slice, the nested vector's
    // header, buffer and 50 byte strings.
    assert!(r.allocated_blocks > 300 + 300 + 1 + 2 + 2000 + 1600 + 10 + 1 + 1 + 52);

    // One orphan of each kind is reported, exactly.
    let (orphan, lost_buf, lost_node) = heap
        .transaction(|tx| {
            let root = tx.root::<Everything>()?;
            let orphan = PBytes::new(tx, b"nobody points here")?.as_slice().offset();
            // Forget a map value's vector (its buffer stays allocated).
            let map = field::<PHashMap<PString, PVec<u64>>>(
                root,
                std::mem::offset_of!(Everything, by_name),
            );
            let v = map.get_mut(tx, "k4")?.expect("present");
            let buf = tx.get(v)?.capacity();
            assert!(buf > 0);
            let lost_buf = buffer_of(tx, v.offset())?;
            tx.set(v, bytemuck::Zeroable::zeroed())?;
            // Overwrite one of the nested vector's byte-string handles: its bytes leak.
            let nested = tx.get(root)?.nested;
            let b = nested.get(tx, 7)?.expect("present");
            nested.set(tx, 7, PBytes::default())?;
            Ok((orphan, lost_buf, b.as_slice().offset()))
        })
        .unwrap();
    let r = heap.reachability::<Everything>().unwrap();
    let leaked: Vec<u64> = r.leaked.iter().map(|&(o, _)| o).collect();
    let mut want = vec![orphan, lost_buf, lost_node];
    want.sort_unstable();
    assert_eq!(leaked, want, "{r:?}");
    assert!(r.dangling.is_empty());
}

/// A pointer to the field at `offset` of the root.
fn field<T>(root: PPtr<Everything>, offset: usize) -> PPtr<T> {
    PPtr::from_offset(root.offset() + offset as u64)
}

/// A `PVec` header's buffer offset (its first field).
fn buffer_of(tx: &txheap::Tx<'_>, header: u64) -> txheap::Result<u64> {
    Ok(*tx.get(PPtr::<u64>::from_offset(header))?)
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Plain {
    a: u64,
    b: [u32; 4],
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Pair(PPtr<u64>, [PPtr<u64>; 2]);

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C, packed)]
struct Packed {
    tag: u8,
    p: PPtr<u64>,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Mixed {
    pair: Pair,
    packed: Packed,
    pad: [u8; 7],
    inner: PPtr<[u64; 8]>,
    into_inner: PPtr<u64>,
    to_root: PPtr<Mixed>,
    wild: PPtr<u64>,
}

#[test]
fn derived_structs_report_every_pointer_field() {
    const {
        assert!(!Plain::HOLDS_POINTERS && !<[u64; 3]>::HOLDS_POINTERS);
        assert!(Pair::HOLDS_POINTERS && Packed::HOLDS_POINTERS && Mixed::HOLDS_POINTERS);
    }
    let d = tempfile::tempdir().unwrap();
    let heap = heap(&d, "derive.heap");
    let (inner, wild) = heap
        .transaction(|tx| {
            let root = tx.root::<Mixed>()?;
            let a = tx.alloc(1u64)?;
            let b = tx.alloc(2u64)?;
            let c = tx.alloc(3u64)?;
            let p = tx.alloc(4u64)?;
            let inner = tx.alloc([5u64; 8])?;
            let wild = PPtr::<u64>::from_offset(1 << 40);
            *tx.get_mut(root)? = Mixed {
                pair: Pair(a, [b, c]),
                packed: Packed { tag: 1, p },
                pad: [0; 7],
                inner,
                // A pointer into the middle of a block reaches it.
                into_inner: PPtr::from_offset(inner.offset() + 24),
                // A pointer to the root area is no allocation, and does not dangle.
                to_root: root,
                wild,
            };
            Ok((inner, wild))
        })
        .unwrap();
    let r = heap.reachability::<Mixed>().unwrap();
    assert_eq!(r.allocated_blocks, 5);
    assert_eq!(r.reached_blocks, 5, "{r:?}");
    assert!(r.leaked.is_empty());
    assert_eq!(r.dangling.len(), 1, "{r:?}");
    assert_eq!(r.dangling[0].to, wild.offset());
    assert_eq!(
        heap.read(|rd| rd.root::<Mixed>()).unwrap().offset(),
        r.dangling[0].from
    );
    let _ = inner;
}

#[test]
fn a_damaged_collection_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let heap = heap(&d, "damaged.heap");
    heap.transaction(|tx| {
        let m = tx.root::<PBTreeMap<u64, PPtr<u64>>>()?;
        for k in 0..500u64 {
            let v = tx.alloc(k)?;
            m.insert(tx, &k, &v)?;
        }
        Ok(())
    })
    .unwrap();
    assert!(heap
        .reachability::<PBTreeMap<u64, PPtr<u64>>>()
        .unwrap()
        .is_clean());
    // Another element type recorded in the root's map: refused by name.
    let e = heap.reachability::<PBTreeMap<u64, u64>>().unwrap_err();
    assert!(e.to_string().contains("root"), "{e}");
    // A tree whose height says one more level than its nodes have.
    heap.transaction(|tx| {
        let m = tx.root::<PBTreeMap<u64, PPtr<u64>>>()?;
        let h = PPtr::<u64>::from_offset(m.offset() + 16);
        *tx.get_mut(h)? += 1;
        Ok(())
    })
    .unwrap();
    let e = heap
        .reachability::<PBTreeMap<u64, PPtr<u64>>>()
        .unwrap_err();
    assert!(matches!(e, txheap::Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("level"), "{e}");
}

/// `Reader::allocations` lists exactly the live blocks: objects of many sizes (small classes,
/// a class's largest, large extents) allocated and some freed over several transactions, each
/// listed at its offset with at least its size, nothing else listed, sizes summing to the
/// allocator's used bytes; the same after a reopen and from a read-only handle, and a
/// reader's snapshot keeps the blocks it began with while a transaction frees them.
#[test]
fn allocations_list_every_live_block_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let sizes = [1u64, 8, 24, 64, 100, 4000, 65536, 65537, 300_000, 1 << 20];
    let mut live: std::collections::BTreeMap<u64, u64> = Default::default();
    for round in 0..6u64 {
        let made = heap
            .transaction(|tx| {
                let mut made = Vec::new();
                for (i, &n) in sizes.iter().enumerate() {
                    let n = n + round * 3 + i as u64;
                    made.push((tx.alloc_slice_zeroed::<u8>(n)?.offset(), n));
                }
                Ok(made)
            })
            .unwrap();
        live.extend(made);
        // Free every third live block.
        let gone: Vec<(u64, u64)> = live.iter().step_by(3).map(|(&a, &n)| (a, n)).collect();
        heap.transaction(|tx| {
            for &(at, n) in &gone {
                tx.free_slice(PSlice::<u8>::from_raw_parts(at, n))?;
            }
            Ok(())
        })
        .unwrap();
        for (at, _) in gone {
            live.remove(&at);
        }
        let blocks = heap.read(|r| r.allocations()).unwrap();
        assert_eq!(
            blocks.iter().map(|&(a, _)| a).collect::<Vec<_>>(),
            live.keys().copied().collect::<Vec<_>>(),
            "round {round}"
        );
        for (&(at, size), (_, &asked)) in blocks.iter().zip(&live) {
            assert!(size >= asked, "block at {at}: {size} bytes for {asked}");
        }
        assert_eq!(
            blocks.iter().map(|&(_, n)| n).sum::<u64>(),
            heap.stats().unwrap().used_bytes,
            "round {round}"
        );
    }
    // A reader's snapshot keeps its blocks while a transaction frees one.
    let first = *live.keys().next().unwrap();
    heap.read(|r| {
        let before = r.allocations()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                heap.transaction(|tx| {
                    tx.free_slice(PSlice::<u8>::from_raw_parts(first, live[&first]))
                })
                .unwrap()
            });
        });
        assert_eq!(r.allocations()?, before);
        Ok(())
    })
    .unwrap();
    live.remove(&first);
    let want: Vec<u64> = live.keys().copied().collect();
    let listed = |h: &Heap| -> Vec<u64> {
        h.read(|r| r.allocations())
            .unwrap()
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    };
    assert_eq!(listed(&heap), want);
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(listed(&heap), want);
    heap.close().unwrap();
    let ro = Heap::open_read_only(&path).unwrap();
    assert_eq!(listed(&ro), want);
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Maps {
    h: PPtr<txheap::PHashMap<u64, u64>>,
    b: PPtr<txheap::PBTreeMap<u64, u64>>,
}

fn is_corrupt<T: std::fmt::Debug>(r: &txheap::Result<T>) -> bool {
    matches!(r, Err(txheap::Error::Corrupt { .. }))
}

/// A node or bucket pointer of 0 inside a map is damage, named `Corrupt` by the map's
/// `check`, its operations and reachability alike. A review found a B-tree's null child
/// reported as `NullPointer` (by `check`, `get`, `insert`) and as a dangling pointer to 0 by
/// reachability, and a hash map whose first directory entry is 0 passed by reachability.
#[test]
fn null_node_and_bucket_pointers_are_corrupt_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("n.heap"), Options::new()).unwrap();
    let (h, b) = heap
        .transaction(|tx| {
            let h = txheap::PHashMap::<u64, u64>::new(tx)?;
            let b = txheap::PBTreeMap::<u64, u64>::new(tx)?;
            for k in 0..3000u64 {
                h.insert(tx, &k, &k)?;
                b.insert(tx, &k, &k)?;
            }
            let r = tx.root::<Maps>()?;
            *tx.get_mut(r)? = Maps { h, b };
            Ok((h, b))
        })
        .unwrap();
    assert!(heap.reachability::<Maps>().unwrap().is_clean());
    // The B-tree's root's first child pointer: the first word of the root node that is the
    // start of an allocation.
    let root_node: u64 = heap
        .read(|r| Ok(bytemuck::cast_ref::<_, [u64; 5]>(r.get(b)?)[0]))
        .unwrap();
    let starts: std::collections::HashSet<u64> = heap
        .read(|r| r.allocations())
        .unwrap()
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    let words: Vec<u64> = heap
        .read(|r| {
            Ok(r.slice(PSlice::<u64>::from_raw_parts(root_node, 1024))?
                .to_vec())
        })
        .unwrap();
    let i = words.iter().position(|w| starts.contains(w)).unwrap();
    let child = PPtr::<u64>::from_offset(root_node + 8 * i as u64);
    heap.transaction(|tx| tx.set(child, 0u64)).unwrap();
    let check = heap.read(|r| b.check(r));
    let get = heap.read(|r| b.get(r, &0).map(|v| v.copied()));
    let insert = heap.transaction(|tx| b.insert(tx, &0, &5).map(|_| ()));
    let reach = heap.reachability::<Maps>();
    assert!(is_corrupt(&check), "check: {check:?}");
    assert!(is_corrupt(&get), "get: {get:?}");
    assert!(is_corrupt(&insert), "insert: {insert:?}");
    assert!(is_corrupt(&reach), "reachability: {reach:?}");
    heap.transaction(|tx| tx.set(child, words[i])).unwrap();
    assert!(heap.reachability::<Maps>().unwrap().is_clean());
    // The hash map's first directory entry.
    let dir_at: u64 = heap
        .read(|r| Ok(bytemuck::cast_ref::<_, [u64; 8]>(r.get(h)?)[0]))
        .unwrap();
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(dir_at), 0u64))
        .unwrap();
    let check = heap.read(|r| h.check(r));
    assert!(is_corrupt(&check), "hash check: {check:?}");
    let reach = heap.reachability::<Maps>();
    assert!(is_corrupt(&reach), "hash reachability: {reach:?}");
}

/// A run bitmap bit past the run's blocks is damage for reachability and the allocation walk
/// too, as it is for `inspect::check`, `stats` and the allocator (a review found them calling
/// such a heap clean).
#[test]
fn bitmap_bits_past_the_run_are_corrupt_for_the_walks() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bp.heap");
    let heap = Heap::create(&p, Options::new()).unwrap();
    let obj = heap
        .transaction(|tx| {
            let o = tx.alloc([7u64; 6])?; // the 48-byte class: 5,446 blocks, 86 bitmap words
            let r = tx.root::<PPtr<[u64; 6]>>()?;
            tx.set(r, o)?;
            Ok(o)
        })
        .unwrap();
    // Chunks start 4096 bytes past the root area's start.
    let chunk_area = heap
        .read(|r| Ok(r.root::<PPtr<[u64; 6]>>()?.offset()))
        .unwrap()
        + 4096;
    let run = chunk_area + (obj.offset() - chunk_area) / (256 << 10) * (256 << 10);
    drop(heap);
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let at = run + 85 * 8 + 7; // bit 63 of word 85: past block 5,445
        let mut b = [0u8];
        f.read_at(&mut b, at).unwrap();
        f.write_at(&[b[0] | 0x80], at).unwrap();
    }
    let heap = Heap::open_read_only(&p).unwrap();
    let reach = heap.reachability::<PPtr<[u64; 6]>>();
    assert!(is_corrupt(&reach), "reachability: {reach:?}");
    let all = heap.read(|r| r.allocations());
    assert!(is_corrupt(&all), "allocations: {all:?}");
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Kids {
    kids: txheap::PSlice<Kids>,
}

/// Run `f` on a thread; how long it took, failing past `limit` instead of hanging.
fn within<R: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (send, recv) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let r = f();
        let _ = send.send((t.elapsed(), r));
    });
    let (took, r) = recv
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still running after {limit:?}"));
    eprintln!("took {took:?}");
    r
}

/// Slices that overlap: node `i`'s children are the nodes `i..n` of one block (65,536 nodes,
/// 1 MiB). Each distinct slice was walked element by element: n^2/2 element walks (a review
/// found 16,384 nodes past 30 s). Each element is walked once per type now.
#[test]
fn overlapping_slices_are_walked_once_per_element() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        dir.path().join("kids.heap"),
        Options::new().initial_size(8 << 20).max_size(256 << 20),
    )
    .unwrap();
    let n = 1u64 << 16;
    heap.transaction(|tx| {
        let root = tx.root::<txheap::PSlice<Kids>>()?;
        let s = tx.alloc_slice_zeroed::<Kids>(n)?;
        for (i, node) in tx.slice_mut(s)?.iter_mut().enumerate() {
            let i = i as u64;
            node.kids = txheap::PSlice::from_raw_parts(s.offset() + 16 * i, n - i);
        }
        *tx.get_mut(root)? = s;
        Ok(())
    })
    .unwrap();
    let r = within(std::time::Duration::from_secs(10), move || {
        heap.reachability::<txheap::PSlice<Kids>>().unwrap()
    });
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.reached_blocks, 1);
}

/// 65,536 copies of one B-tree's handle: each copy walked the whole tree again (a review
/// found 1,024 copies of a 16,384-entry tree taking 0.63 s, growing as their product). The
/// tree is walked once now.
#[test]
fn copies_of_a_map_handle_walk_its_structure_once() {
    use txheap::{PBTreeMap, PHashMap, PSlice};
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    struct Maps {
        tree: PSlice<PBTreeMap<u64, u64>>,
        hash: PSlice<PHashMap<u64, u64>>,
    }
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        dir.path().join("copies.heap"),
        Options::new().initial_size(16 << 20).max_size(1 << 30),
    )
    .unwrap();
    let (tree, hash) = heap
        .transaction(|tx| {
            Ok((
                PBTreeMap::<u64, u64>::new(tx)?,
                PHashMap::<u64, u64>::new(tx)?,
            ))
        })
        .unwrap();
    for chunk in (0..65_536u64).collect::<Vec<_>>().chunks(8192) {
        heap.transaction(|tx| {
            for &k in chunk {
                tree.insert(tx, &k, &k)?;
                hash.insert(tx, &k, &k)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let copies = 1usize << 16;
    heap.transaction(|tx| {
        let (t, h) = (*tx.get(tree)?, *tx.get(hash)?);
        let maps = Maps {
            tree: tx.alloc_slice(&vec![t; copies])?,
            hash: tx.alloc_slice(&vec![h; copies])?,
        };
        let root = tx.root::<Maps>()?;
        // (The maps' own header blocks are then reached by nothing: leaks, expected.)
        tx.set(root, maps)
    })
    .unwrap();
    let r = within(std::time::Duration::from_secs(10), move || {
        heap.reachability::<Maps>().unwrap()
    });
    assert!(r.dangling.is_empty(), "{:?}", r.dangling);
    assert_eq!(r.leaked.len(), 2, "{:?}", r.leaked);
}

/// A zero-sized type implemented by hand keeps `HOLDS_POINTERS`' default (true).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Marker;

impl Stored for Marker {
    const NAME: &'static str = "demo.Marker";
    const FIELDS: &'static [txheap::Field] = &[];
    const ID: u64 = txheap::Field::struct_id("demo.Marker", 0, 1, &[]);
}

/// A slice of 2^64-1 or 2^40 zero-sized values: one element is walked, since
/// all are the same value. (A review found the first overflowing the walk's queue arithmetic,
/// a panic in debug builds, and the second walking for longer than 20 s.)
#[test]
fn slices_of_a_zero_sized_type_are_walked_once() {
    for len in [u64::MAX, 1 << 40, 3] {
        let r = within(std::time::Duration::from_secs(10), move || {
            let dir = tempfile::tempdir().unwrap();
            let heap = Heap::create(dir.path().join("zst.heap"), Options::new()).unwrap();
            heap.transaction(|tx| {
                let block = tx.alloc(0u64)?.offset();
                let root = tx.root::<PSlice<Marker>>()?;
                *tx.get_mut(root)? = PSlice::from_raw_parts(block, len);
                Ok(())
            })
            .unwrap();
            heap.reachability::<PSlice<Marker>>()
        });
        let r = r.unwrap();
        // The slice points into the block: it is reached, nothing leaks, nothing dangles.
        assert!(r.is_clean() && r.reached_blocks == 1, "{len}: {r:?}");
    }
}

/// A dangling pointer stored in a map's value names the block that holds it (the hash map's
/// bucket, the B-tree's leaf), as `Dangling::from` documents; it named the object holding the
/// map's header (here the root), which is no heap block (found by review).
#[test]
fn a_dangling_pointer_inside_a_map_names_the_block_holding_it() {
    let d = tempfile::tempdir().unwrap();
    let in_block = |h: &Heap, from: u64| {
        h.read(|r| r.allocations())
            .unwrap()
            .iter()
            .any(|&(at, size)| from >= at && from < at + size)
    };
    let h = heap(&d, "hash.heap");
    let (root, gone) = h
        .transaction(|tx| {
            let root = tx.root::<PHashMap<u64, PPtr<Node>>>()?;
            let gone = tx.alloc(<Node as bytemuck::Zeroable>::zeroed())?;
            root.insert(tx, &1, &gone)?;
            Ok((root, gone))
        })
        .unwrap();
    h.transaction(|tx| tx.free(gone)).unwrap();
    let r = h.reachability::<PHashMap<u64, PPtr<Node>>>().unwrap();
    assert_eq!(r.dangling.len(), 1, "{r:?}");
    assert_eq!(r.dangling[0].to, gone.offset());
    assert!(
        in_block(&h, r.dangling[0].from),
        "hash map: from {} (the root is at {})",
        r.dangling[0].from,
        root.offset()
    );
    let h = heap(&d, "tree.heap");
    let (root, gone) = h
        .transaction(|tx| {
            let root = tx.root::<PBTreeMap<u64, PPtr<Node>>>()?;
            let gone = tx.alloc(<Node as bytemuck::Zeroable>::zeroed())?;
            root.insert(tx, &1, &gone)?;
            Ok((root, gone))
        })
        .unwrap();
    h.transaction(|tx| tx.free(gone)).unwrap();
    let r = h.reachability::<PBTreeMap<u64, PPtr<Node>>>().unwrap();
    assert_eq!(r.dangling.len(), 1, "{r:?}");
    assert!(
        in_block(&h, r.dangling[0].from),
        "B-tree: from {} (the root is at {})",
        r.dangling[0].from,
        root.offset()
    );
}

/// A `PVec` walked from a hand-written `refs` (reading the header through `Walk::reader`, as
/// its docs invite): `Walk::at` names the object holding the handle, not the vector's header,
/// and the header check took `[at, at + 32)` for the header, so a healthy buffer right after
/// that object was refused as overlapping it (a review, after the check was added).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct RawVecLink {
    target: u64,
}

impl Stored for RawVecLink {
    const NAME: &'static str = "reachability.RawVecLink";
    const FIELDS: &'static [txheap::Field] = &[];
    const ID: u64 = txheap::Field::struct_id("reachability.RawVecLink", 8, 8, &[]);
    fn refs(&self, walk: &mut txheap::Walk<'_, '_>) -> txheap::Result<()> {
        if walk.block(self.target, 32) {
            let h = *walk
                .reader()
                .get(PPtr::<PVec<u8>>::from_offset(self.target))?;
            h.refs(walk)?;
        }
        Ok(())
    }
}

#[test]
fn a_healthy_vector_walked_from_a_hand_written_refs_is_clean() {
    let d = tempfile::tempdir().unwrap();
    let h = heap(&d, "raw.heap");
    h.transaction(|tx| {
        let root = tx.root::<PPtr<RawVecLink>>()?;
        let v = PVec::<u8>::new(tx)?;
        let link = tx.alloc(RawVecLink { target: v.offset() })?;
        v.push(tx, 1)?; // its buffer: a small block right after `link`
        *tx.get_mut(root)? = link;
        Ok(())
    })
    .unwrap();
    let r = h.reachability::<PPtr<RawVecLink>>();
    assert!(matches!(&r, Ok(r) if r.is_clean()), "a healthy heap: {r:?}");
}

/// An empty slice from `Tx::alloc_slice` (or `realloc_slice` to no elements) owns a block: a
/// root holding one is clean, not a leak (the walk skipped every empty slice; review).
#[test]
fn an_empty_allocated_slice_in_the_root_is_reached() {
    let d = tempfile::tempdir().unwrap();
    let h = heap(&d, "empty.heap");
    h.transaction(|tx| {
        let s = tx.alloc_slice::<u8>(&[])?;
        assert!(
            tx.usable_size(s.as_ptr()).is_some(),
            "the empty slice owns a block"
        );
        let r = tx.root::<PSlice<u8>>()?;
        tx.set(r, s)
    })
    .unwrap();
    assert_eq!(h.read(|r| r.allocations()).unwrap().len(), 1);
    let reach = h.reachability::<PSlice<u8>>().unwrap();
    assert!(reach.is_clean(), "{reach:?}");
    assert_eq!(reach.reached_blocks, 1);
}
