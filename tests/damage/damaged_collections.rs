//! Collections on a damaged heap (a review's reproductions, each failing before its fix): a
//! damaged word in a collection gives an error from the write that meets it or from `check()`,
//! never a panic, a hang, or a write into another live object.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use txheap::{Error, Heap, Options, PBTreeMap, PBytes, PHashMap, PPtr, PSlice, PVec};

/// The header's first word is the buffer offset (docs/ARCHITECTURE.md section 10: buffer
/// offset, capacity, length, element identity).
fn set_buf(heap: &Heap, v: PPtr<PVec<u64>>, buf: u64) {
    heap.transaction(|tx| tx.set(v.cast::<u64>(), buf)).unwrap();
}

/// A buffer offset near 2^64 (aligned, in the header's terms valid: capacity times 8 does not
/// overflow): `pop` must give an error, not panic.
#[test]
fn pvec_pop_with_a_buffer_offset_near_the_top_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), Options::new()).unwrap();
    let v = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2])?;
            Ok(v)
        })
        .unwrap();
    set_buf(&heap, v, u64::MAX - 7);
    assert!(heap.read(|r| v.check(r)).is_err(), "check() refuses it");
    let r = catch_unwind(AssertUnwindSafe(|| heap.transaction(|tx| v.pop(tx))));
    match r {
        Ok(r) => assert!(matches!(r, Err(Error::Corrupt { .. })), "pop: {r:?}"),
        Err(p) => panic!(
            "pop panicked: {:?}",
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
        ),
    }
}

/// The same header: `get(1)` (inside the length) answers `Ok(None)`, as for an index past the
/// end, and `set(1)` says the index is out of range for a vector of length 2.
#[test]
fn pvec_get_and_set_inside_the_length_with_a_buffer_near_the_top_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), Options::new()).unwrap();
    let v = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2])?;
            Ok(v)
        })
        .unwrap();
    set_buf(&heap, v, u64::MAX - 7);
    let g = heap.read(|r| v.get(r, 1));
    let s = heap.transaction(|tx| v.set(tx, 1, 5));
    eprintln!("get(1): {g:?}; set(1): {s:?}");
    assert!(
        matches!(g, Err(Error::Corrupt { .. })),
        "get(1) of a vector of length 2: {g:?}"
    );
    assert!(
        matches!(s, Err(Error::Corrupt { .. })),
        "set(1) of a vector of length 2: {s:?}"
    );
}

/// A buffer offset damaged to point inside another live object (not the start of any
/// allocation): `set` writes into the other object and commits. (`check()` passes too, which
/// its rustdoc states: it does not look the buffer up in the allocator.)
#[test]
fn pvec_with_a_buffer_inside_another_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), Options::new()).unwrap();
    let (v, other) = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2, 3, 4])?;
            let other = tx.alloc([7u64; 64])?;
            Ok((v, other))
        })
        .unwrap();
    // One damaged word: the buffer now points 64 bytes into `other` (4 elements fit there).
    set_buf(&heap, v, other.offset() + 64);
    let set = heap.transaction(|tx| v.set(tx, 0, 99));
    let after = heap.read(|r| Ok(r.get(other)?[8])).unwrap();
    assert_eq!(
        after, 7,
        "set through the damaged vector changed another object"
    );
    assert!(set.is_err(), "set: {set:?}");
}

#[test]
fn hash_map_bucket_pointer_inside_another_object_never_writes_there() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("h.heap"), Options::new()).unwrap();
    let (m, other) = heap
        .transaction(|tx| {
            let m = PHashMap::<u64, u64>::new(tx)?;
            m.insert(tx, &1, &10)?;
            // Another live object: 64 KiB of zeros (a large buffer the program owns).
            let other = tx.alloc_slice_zeroed::<u64>(8192)?;
            Ok((m, other))
        })
        .unwrap();
    // One damaged word: at depth 0 the header's first word is the map's one bucket; it now
    // points 4 KiB into `other` (aligned as a bucket must be).
    heap.transaction(|tx| tx.set(m.cast::<u64>(), other.offset() + 4096))
        .unwrap();
    let ins = heap.transaction(|tx| m.insert(tx, &5, &50));
    let zero = heap
        .read(|r| Ok(r.slice(other)?.iter().all(|&w| w == 0)))
        .unwrap();
    let check = heap.read(|r| m.check(r));
    eprintln!("insert: {ins:?}; check after: {check:?}");
    assert!(
        zero,
        "insert into the damaged map wrote into another live object (insert returned {ins:?})"
    );
    assert!(ins.is_err(), "insert: {ins:?}");
}

#[test]
fn a_range_over_shared_subtrees_with_a_damaged_count_ends() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Arc::new(Heap::create(dir.path().join("dag.heap"), Options::new()).unwrap());
    // A real tree of height 2: a root over two leaves.
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, u64>::new(tx)?;
            for k in 0..80u64 {
                m.insert(tx, &k, &k)?;
            }
            Ok(m)
        })
        .unwrap();
    let mut blocks = Vec::new();
    heap.read(|r| m.for_each_block(r, |b| blocks.push(b)))
        .unwrap();
    assert_eq!(blocks.len(), 3, "a root and two leaves");
    let root = blocks[0];
    // The root's children, to learn where an internal node keeps them.
    let (children_at, l0, l1) = heap
        .read(|r| {
            let w = r.slice(PSlice::<u64>::from_raw_parts(root, 512))?;
            let i = w
                .iter()
                .position(|&x| x == blocks[1] || x == blocks[2])
                .unwrap();
            Ok((i as u64 * 8, w[i], w[i + 1]))
        })
        .unwrap();
    // 16-byte node header, then `inner_cap` u64 keys, then the children.
    let inner_cap = (children_at - 16) / 8;
    // Hand-made internal nodes (4 KiB each, as the tree allocates them): levels 1..=3 whose
    // children all name the node one level down (the leaf `l0` under level 1), and a root at
    // level 4 whose first child is that chain and whose last child is a one-child chain to
    // the other leaf (so the walk's two ends never meet). The header: height 5 and an entry
    // count of 2^64 - 1 (one more damaged word).
    heap.transaction(|tx| {
        let node = |tx: &mut txheap::Tx<'_>, level: u32, count: u32, ch: &[u64]| {
            let s = tx.alloc_slice_zeroed::<u64>(512)?;
            let b = tx.slice_mut(PSlice::<u8>::from_raw_parts(s.offset(), 4096))?;
            b[..4].copy_from_slice(&level.to_ne_bytes());
            b[4..8].copy_from_slice(&count.to_ne_bytes());
            for (i, c) in ch.iter().enumerate() {
                let at = children_at as usize + 8 * i;
                b[at..at + 8].copy_from_slice(&c.to_ne_bytes());
            }
            Ok::<u64, txheap::Error>(s.offset())
        };
        let full = inner_cap as u32;
        let mut shared = l0;
        let mut lone = l1;
        for level in 1..=3u32 {
            shared = node(tx, level, full, &vec![shared; full as usize + 1])?;
            lone = node(tx, level, 0, &[lone])?;
        }
        let top = node(tx, 4, 1, &[shared, lone])?;
        let h = PPtr::<[u64; 3]>::from_offset(m.offset());
        tx.set(h, [top, u64::MAX, 5])
    })
    .unwrap();

    let h2 = heap.clone();
    let (send, recv) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = h2.read(|r| {
            let mut n = 0u64;
            for e in m.range(r, ..)? {
                e?;
                n += 1;
            }
            Ok(n)
        });
        let _ = send.send((r, t.elapsed()));
    });
    let check = heap.read(|r| m.check(r));
    eprintln!("check: {check:?}");
    match recv.recv_timeout(Duration::from_secs(30)) {
        Ok((r, t)) => {
            eprintln!("range: {r:?} after {t:?}");
            assert!(r.is_err(), "range over shared subtrees: {r:?}");
        }
        Err(_) => panic!("range over shared subtrees still running after 30 s"),
    }
}

/// Find the aligned word holding `value` inside `[at, at + len)`.
fn word_at(heap: &Heap, at: u64, len: u64, value: u64) -> u64 {
    heap.read(|r| {
        let w = r.slice(PSlice::<u64>::from_raw_parts(at, len / 8))?;
        Ok(at + 8 * w.iter().position(|&x| x == value).expect("word found") as u64)
    })
    .unwrap()
}

#[test]
fn btree_values_sharing_one_block_are_caught_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("s.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, PBytes>::new(tx)?;
            m.insert(tx, &1, &[0xAA; 100])?;
            m.insert(tx, &2, &[0xBB; 100])?;
            Ok(m)
        })
        .unwrap();
    // Blocks: the one leaf, then the two values (for_each_block's order).
    let mut blocks = Vec::new();
    heap.read(|r| m.for_each_block(r, |b| blocks.push(b)))
        .unwrap();
    let (leaf, v1, v2) = (blocks[0], blocks[1], blocks[2]);
    eprintln!(
        "leaf {leaf:#x}, values {v1:#x} {v2:#x} (xor {:#x})",
        v1 ^ v2
    );
    // One damaged word: entry 2's value handle now names entry 1's block.
    let w = word_at(&heap, leaf, 1024, v2);
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(w), v1))
        .unwrap();

    let check = heap.read(|r| m.check(r));
    eprintln!("check: {check:?}");

    // Go on as a program would: remove key 1 (frees the shared block), then allocate.
    let removed = heap.transaction(|tx| m.remove(tx, &1));
    eprintln!("remove(1): {removed:?}");
    let other = heap
        .transaction(|tx| {
            let mut mine = Vec::new();
            for _ in 0..64 {
                let b = PBytes::new(tx, &[0xEE; 100])?;
                if b.as_slice().offset() == v1 {
                    return Ok(Some(b));
                }
                mine.push(b);
            }
            Ok(None)
        })
        .unwrap();
    let got = heap.read(|r| Ok(m.get(r, &2)?.map(|v| v[0])));
    eprintln!("another object now at the shared block: {other:?}; get(2): {got:?}");
    let removed2 = heap.transaction(|tx| m.remove(tx, &2));
    let alive = other.map(|o| {
        heap.transaction(|tx| Ok(tx.usable_size(o.as_slice().as_ptr()).is_some()))
            .unwrap()
    });
    eprintln!("remove(2): {removed2:?}; the other object still allocated: {alive:?}");
    assert!(
        check.is_err(),
        "check() passed a map whose two values share one block"
    );
}

#[test]
fn hash_values_sharing_one_block_are_caught_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("h.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PHashMap::<u64, PBytes>::new(tx)?;
            m.insert(tx, &1, &[0xAA; 100])?;
            m.insert(tx, &2, &[0xBB; 100])?;
            Ok(m)
        })
        .unwrap();
    let mut blocks = Vec::new();
    heap.read(|r| m.for_each_block(r, |b| blocks.push(b)))
        .unwrap();
    // The one bucket, then the values in slot order.
    let (bucket, a, b) = (blocks[0], blocks[1], blocks[2]);
    let w = word_at(&heap, bucket, 8192, b);
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(w), a))
        .unwrap();
    let check = heap.read(|r| m.check(r));
    let r1 = heap.transaction(|tx| m.remove(tx, &1));
    let g2 = heap.read(|r| Ok(m.get(r, &2)?.map(|v| v.len())));
    eprintln!("check: {check:?}; remove(1): {r1:?}; get(2) after: {g2:?}");
    assert!(
        check.is_err(),
        "check() passed a map whose two values share one block"
    );
}

/// A value handle damaged to point outside the heap: `get` and `clear` refuse it as damage,
/// `check()` passes (the B-tree's check reads value handles without loading them; `PVec`'s
/// reads only its buffer). The hash map's check loads values and refuses it.
#[test]
fn check_loads_byte_string_values_and_elements() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("o.heap"), Options::new()).unwrap();
    let (m, v) = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, PBytes>::new(tx)?;
            m.insert(tx, &1, &[0xAA; 100])?;
            let v = txheap::PVec::<PBytes>::new(tx)?;
            let b = PBytes::new(tx, &[0xCC; 100])?;
            v.push(tx, b)?;
            Ok((m, v))
        })
        .unwrap();
    let mut mb = Vec::new();
    heap.read(|r| m.for_each_block(r, |b| mb.push(b))).unwrap();
    let mut vb = Vec::new();
    heap.read(|r| v.for_each_block(r, |b| vb.push(b))).unwrap();
    let far = 1u64 << 40;
    let w = word_at(&heap, mb[0], 1024, mb[1]);
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(w), far))
        .unwrap();
    let w = word_at(&heap, vb[0], 64, vb[1]);
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(w), far))
        .unwrap();
    let (mc, mg) = (
        heap.read(|r| m.check(r)),
        heap.read(|r| m.get(r, &1).map(|x| x.is_some())),
    );
    let (vc, vclear) = (
        heap.read(|r| v.check(r)),
        heap.transaction(|tx| v.clear(tx)),
    );
    eprintln!("btree check {mc:?} get {mg:?}\npvec check {vc:?} clear {vclear:?}");
    assert!(mg.is_err() && vclear.is_err());
    assert!(mc.is_err(), "PBTreeMap::check passed: {mc:?}");
    assert!(vc.is_err(), "PVec::check passed: {vc:?}");
}

/// A B-tree's root pointer damaged to aim 64 bytes inside another object (a byte string
/// holding a copy of the leaf): an insert wrote into that object and committed, and `check()`
/// passed (found by a review of the fixes above). Every node write checks that the node starts
/// its block now.
#[test]
fn btree_insert_through_a_root_pointer_inside_another_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, u64>::new(tx)?;
            for k in 0..5u64 {
                m.insert(tx, &k, &(k * 10))?;
            }
            Ok(m)
        })
        .unwrap();
    let leaf_len = heap.read(|r| m.stats(r)).unwrap().node_bytes;
    let root = heap.read(|r| Ok(*r.get(m.cast::<u64>())?)).unwrap();
    let leaf: Vec<u8> = heap
        .read(|r| {
            Ok(r.slice(PSlice::<u8>::from_raw_parts(root, leaf_len))?
                .to_vec())
        })
        .unwrap();
    let mut content = vec![0xAAu8; 64];
    content.extend_from_slice(&leaf);
    let other = heap.transaction(|tx| PBytes::new(tx, &content)).unwrap();
    let other_at = other.as_slice().offset();
    heap.transaction(|tx| tx.set(m.cast::<u64>(), other_at + 64))
        .unwrap();
    let before = heap.read(|r| Ok(other.bytes(r)?.to_vec())).unwrap();
    let r = heap.transaction(|tx| m.insert(tx, &100, &1000));
    let after = heap.read(|r| Ok(other.bytes(r)?.to_vec())).unwrap();
    assert!(
        before == after,
        "the insert ({r:?}) changed another object's bytes"
    );
    assert!(r.is_err(), "{r:?}");
}

/// A hash map's directory pointer damaged to aim inside another object (a byte string holding
/// a copy of the directory): a split wrote a bucket pointer into that object and committed
/// (found by the same review). Directory writes check that the directory starts its block.
#[test]
fn hash_split_through_a_directory_pointer_inside_another_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        dir.path().join("h.heap"),
        Options::new().durability(txheap::Durability::None),
    )
    .unwrap();
    let m = heap.transaction(PHashMap::<u64, u64>::new).unwrap();
    let words = |heap: &Heap| {
        heap.read(|r| {
            let w = r.slice(PSlice::<u64>::from_raw_parts(m.offset(), 2))?;
            Ok((w[0], w[1]))
        })
        .unwrap()
    };
    // Fill until the directory has just doubled to depth 3 (most buckets then shallower).
    let mut k = 0u64;
    while words(&heap).1 != 3 {
        heap.transaction(|tx| m.insert(tx, &k, &k)).unwrap();
        k += 1;
    }
    let (d, depth) = words(&heap);
    let bytes: Vec<u8> = heap
        .read(|r| {
            Ok(r.slice(PSlice::<u8>::from_raw_parts(d, 8 << depth))?
                .to_vec())
        })
        .unwrap();
    let mut content = vec![0x55u8; 64];
    content.extend_from_slice(&bytes);
    let other = heap.transaction(|tx| PBytes::new(tx, &content)).unwrap();
    let other_at = other.as_slice().offset();
    heap.transaction(|tx| tx.set(m.cast::<u64>(), other_at + 64))
        .unwrap();
    let before = heap.read(|r| Ok(other.bytes(r)?.to_vec())).unwrap();
    let mut last = Ok(false);
    for k in k..k + 20_000 {
        last = heap.transaction(|tx| m.insert(tx, &k, &k));
        let now = heap.read(|r| Ok(other.bytes(r)?.to_vec())).unwrap();
        assert!(
            now == before,
            "insert of {k} ({last:?}) changed another object's bytes"
        );
        if last.is_err() {
            break;
        }
    }
    assert!(
        last.is_err(),
        "20,000 inserts through a damaged directory: {last:?}"
    );
}

// A review of the fixes above (65d4b9a, 6421650): free and write paths through a pointer naming
// the start of a smaller object, or inside another object.

/// A B-tree root pointer aimed 64 bytes inside another object (a byte string holding a copy
/// of the leaf), as in tests/damaged_collections.rs: `insert` is refused now, but `get_mut`
/// (and `get_or_insert` of a present key) hand out a pointer into the other object, and the
/// write through it commits. (The hash map's `get_mut` checks its bucket: `own_bucket`.)
#[test]
fn btree_get_mut_through_a_root_inside_another_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, u64>::new(tx)?;
            for k in 0..5u64 {
                m.insert(tx, &k, &(k * 10))?;
            }
            Ok(m)
        })
        .unwrap();
    let leaf_len = heap.read(|r| m.stats(r)).unwrap().node_bytes;
    let root = heap.read(|r| Ok(*r.get(m.cast::<u64>())?)).unwrap();
    let leaf: Vec<u8> = heap
        .read(|r| {
            Ok(r.slice(PSlice::<u8>::from_raw_parts(root, leaf_len))?
                .to_vec())
        })
        .unwrap();
    let mut content = vec![0xAAu8; 64];
    content.extend_from_slice(&leaf);
    let other = heap.transaction(|tx| PBytes::new(tx, &content)).unwrap();
    let other_at = other.as_slice().offset();
    heap.transaction(|tx| tx.set(m.cast::<u64>(), other_at + 64))
        .unwrap();
    let before = heap.read(|r| Ok(other.bytes(r)?.to_vec())).unwrap();
    let r = heap.transaction(|tx| {
        let p = m.get_mut(tx, &3)?;
        if let Some(p) = p {
            *tx.get_mut(p)? = 999;
        }
        Ok(p)
    });
    let r2 = heap.transaction(|tx| {
        let p = m.get_or_insert(tx, &2, &0)?;
        *tx.get_mut(p)? = 777;
        Ok(p)
    });
    let after = heap.read(|r| Ok(other.bytes(r)?.to_vec())).unwrap();
    assert!(
        before == after,
        "get_mut ({r:?}) / get_or_insert ({r2:?}) through the damaged map changed another \
         object's bytes"
    );
}

/// A vector's buffer offset damaged to name the start of another, smaller live object
/// (16 bytes; the vector's capacity is 4 u64 = 32 bytes). Since 65d4b9a a plain-element
/// vector no longer looks its buffer up in `header_mut`, so `push` (a realloc that frees the
/// old buffer) and `destroy` free the other object and commit. 6784d74 refused both
/// (`usable_size < cap * size`).
#[test]
fn pvec_push_with_a_buffer_naming_a_smaller_object_does_not_free_it() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), Options::new()).unwrap();
    let (v, other) = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2, 3, 4])?;
            let other = tx.alloc(7u64)?;
            Ok((v, other))
        })
        .unwrap();
    assert_eq!(heap.read(|r| Ok(r.get(v)?.capacity())).unwrap(), 4);
    heap.transaction(|tx| tx.set(v.cast::<u64>(), other.offset()))
        .unwrap();
    let push = heap.transaction(|tx| v.push(tx, 5));
    let live = heap.transaction(|tx| Ok(tx.usable_size(other))).unwrap();
    eprintln!("push: {push:?}; other's usable size after: {live:?}");
    assert_eq!(live, Some(16), "push ({push:?}) freed another live object");
}

#[test]
fn pvec_destroy_with_a_buffer_naming_a_smaller_object_does_not_free_it() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), Options::new()).unwrap();
    let (v, other) = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2, 3, 4])?;
            let other = tx.alloc(7u64)?;
            Ok((v, other))
        })
        .unwrap();
    heap.transaction(|tx| tx.set(v.cast::<u64>(), other.offset()))
        .unwrap();
    let d = heap.transaction(|tx| v.destroy(tx));
    let live = heap.transaction(|tx| Ok(tx.usable_size(other))).unwrap();
    eprintln!("destroy: {d:?}; other's usable size after: {live:?}");
    assert_eq!(live, Some(16), "destroy ({d:?}) freed another live object");
}

/// A hash map's directory pointer (depth 1) damaged to name the start of another, smaller live
/// object: a 16-byte byte string holding a copy of the directory's two words (the map's own
/// directory is padded to a bucket's size, 8 KiB). The next split doubles the directory, and
/// `double` frees the old one without checking it is an allocation of the directory's size:
/// the insert commits and the byte string is freed.
#[test]
fn hash_double_through_a_directory_naming_a_smaller_object_does_not_free_it() {
    use txheap::PHashMap;
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        dir.path().join("h.heap"),
        Options::new().durability(txheap::Durability::None),
    )
    .unwrap();
    let m = heap.transaction(PHashMap::<u64, u64>::new).unwrap();
    let words = |heap: &Heap| {
        heap.read(|r| {
            let w = r.slice(PSlice::<u64>::from_raw_parts(m.offset(), 2))?;
            Ok((w[0], w[1]))
        })
        .unwrap()
    };
    let mut k = 0u64;
    while words(&heap).1 != 1 {
        heap.transaction(|tx| m.insert(tx, &k, &k)).unwrap();
        k += 1;
    }
    let (d, _) = words(&heap);
    let copy: Vec<u8> = heap
        .read(|r| Ok(r.slice(PSlice::<u8>::from_raw_parts(d, 16))?.to_vec()))
        .unwrap();
    let other = heap.transaction(|tx| PBytes::new(tx, &copy)).unwrap();
    let other_at = other.as_slice().offset();
    assert_eq!(
        heap.transaction(|tx| Ok(tx.usable_size(PPtr::<u8>::from_offset(other_at))))
            .unwrap(),
        Some(16)
    );
    heap.transaction(|tx| tx.set(m.cast::<u64>(), other_at))
        .unwrap();
    let mut last = Ok(false);
    for k in k..k + 20_000 {
        last = heap.transaction(|tx| m.insert(tx, &k, &k));
        let live = heap
            .transaction(|tx| Ok(tx.usable_size(PPtr::<u8>::from_offset(other_at))))
            .unwrap();
        assert_eq!(
            live,
            Some(16),
            "insert of {k} ({last:?}) freed another live object (directory depth now {})",
            words(&heap).1
        );
        if last.is_err() {
            break;
        }
    }
    eprintln!("last insert: {last:?}");
}

/// A B-tree root pointer (height 1) damaged to name the start of another, smaller live object:
/// a byte string holding a copy of the first bytes of the one-entry leaf (its header, slot
/// table and key; 1 KiB leaves). Removing the entry empties the leaf, and `free_node` frees
/// what the pointer names without checking it is a node-sized allocation: the removal commits
/// and the byte string is freed.
#[test]
fn btree_remove_of_the_last_entry_through_a_root_naming_a_smaller_object_does_not_free_it() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, u64>::new(tx)?;
            m.insert(tx, &7, &70)?;
            Ok(m)
        })
        .unwrap();
    let leaf_len = heap.read(|r| m.stats(r)).unwrap().node_bytes;
    assert_eq!(leaf_len, 1024);
    let root = heap.read(|r| Ok(*r.get(m.cast::<u64>())?)).unwrap();
    let prefix: Vec<u8> = heap
        .read(|r| Ok(r.slice(PSlice::<u8>::from_raw_parts(root, 192))?.to_vec()))
        .unwrap();
    let other = heap.transaction(|tx| PBytes::new(tx, &prefix)).unwrap();
    let other_at = other.as_slice().offset();
    let size = |heap: &Heap| {
        heap.transaction(|tx| Ok(tx.usable_size(PPtr::<u8>::from_offset(other_at))))
            .unwrap()
    };
    let before = size(&heap);
    assert!(before.is_some_and(|s| s < 1024), "{before:?}");
    heap.transaction(|tx| tx.set(m.cast::<u64>(), other_at))
        .unwrap();
    let r = heap.transaction(|tx| m.remove(tx, &7));
    let after = size(&heap);
    eprintln!("remove: {r:?}; other's usable size {before:?} -> {after:?}");
    assert_eq!(after, before, "remove ({r:?}) freed another live object");
}

#[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct TaggedRoot {
    tag: [u64; 4],
    v: PVec<u64>,
}

/// A vector held in the root whose damaged buffer offset names the root's start: its push
/// wrote over the root's other fields and committed (the "starts its block" check took the
/// root's start for a block of its own: found by a review of this session's changes). A
/// collection's own block is never in the root area.
#[test]
fn a_buffer_naming_the_root_start_does_not_overwrite_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("r.heap"), Options::new()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<TaggedRoot>()?;
        tx.get_mut(r)?.tag = [11, 22, 33, 44];
        let v = PPtr::<PVec<u64>>::from_offset(r.offset() + 32);
        v.push(tx, 1)?;
        // Damage: buffer = the root's start, capacity 4, length 0.
        let root_off = r.offset();
        let words: &mut [u64; 8] = txheap::bytemuck::cast_mut(tx.get_mut(r)?);
        words[4] = root_off;
        words[5] = 4;
        words[6] = 0;
        Ok(())
    })
    .unwrap();
    let res = heap.transaction(|tx| {
        let r = tx.root::<TaggedRoot>()?;
        PPtr::<PVec<u64>>::from_offset(r.offset() + 32).push(tx, 0xdead)
    });
    let tag = heap
        .read(|rd| Ok(rd.get(rd.root::<TaggedRoot>()?)?.tag))
        .unwrap();
    assert_eq!(tag, [11, 22, 33, 44], "push returned {res:?}");
    assert!(matches!(res, Err(Error::Corrupt { .. })), "{res:?}");
}
