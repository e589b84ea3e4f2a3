//! Errors that name the problem (a review's reproductions, each failing before the fix): one
//! flipped byte or changed word inside a collection's own blocks, or in a run's allocation
//! bitmap, must be reported as damage
//! (`Error::Corrupt`, naming where), not as a caller's mistake (`Misaligned`, `OutOfBounds`,
//! `InvalidFree`, `NotAllocated`). docs/ARCHITECTURE.md section 10: "the collections check
//! what they read ... so a damaged file gives `Error::Corrupt`".

use super::{poke, word};
use txheap::{Error, Heap, Options, PBTreeMap, PBytes, PHashMap, PPtr, PString, PVec};

const LOG: u64 = 65536;
const CHUNK_AREA: u64 = 8192 + LOG + 8192;
const CHUNK: u64 = 262144;

fn opts() -> Options {
    Options::new().log_size(LOG)
}

fn is_corrupt<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Corrupt { .. }))
}

fn vec_of(heap: &Heap, n: u64) -> PPtr<PVec<u64>> {
    heap.transaction(|tx| {
        let v = PVec::<u64>::new(tx)?;
        for i in 0..n {
            v.push(tx, i)?;
        }
        Ok(v)
    })
    .unwrap()
}

/// Case 1: A PVec header's buffer offset off by 4 (one flipped bit, 0x..40 -> 0x..44): every
/// read is `Misaligned`, `check()` included, as if the caller had passed a misaligned pointer.
#[test]
fn pvec_misaligned_buffer_is_corrupt_not_misaligned() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), opts()).unwrap();
    let v = vec_of(&heap, 3);
    let buf = word(&heap, v.offset());
    poke(&heap, v.offset(), buf ^ 4);
    let g = heap.read(|r| v.get(r, 0));
    let s = heap.read(|r| v.as_slice(r).map(|s| s.len()));
    let c = heap.read(|r| v.check(r));
    let p = heap.transaction(|tx| v.pop(tx));
    eprintln!("get: {g:?}\nas_slice: {s:?}\ncheck: {c:?}\npop: {p:?}");
    assert!(is_corrupt(&g), "get: {g:?}");
    assert!(is_corrupt(&s), "as_slice: {s:?}");
    assert!(is_corrupt(&c), "check: {c:?}");
    assert!(is_corrupt(&p), "pop: {p:?}");
}

/// Case 2: A PVec header's capacity with one high bit set (4 -> 2^40 + 4): `check()` and `push`
/// answer `OutOfBounds` for a range of 2^43 bytes, a pointer error of the caller's.
#[test]
fn pvec_damaged_capacity_is_corrupt_not_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), opts()).unwrap();
    let v = vec_of(&heap, 3);
    let cap = word(&heap, v.offset() + 8);
    poke(&heap, v.offset() + 8, cap | 1 << 40);
    let c = heap.read(|r| v.check(r));
    let p = heap.transaction(|tx| v.push(tx, 7));
    let s = heap.transaction(|tx| v.set(tx, 0, 7));
    eprintln!("check: {c:?}\npush: {p:?}\nset: {s:?}");
    assert!(is_corrupt(&c), "check: {c:?}");
    assert!(is_corrupt(&p), "push: {p:?}");
    assert!(is_corrupt(&s), "set: {s:?}");
}

/// Case 3: A PVec header's buffer offset moved 16 bytes into its own block (or to the root area):
/// `destroy` says the caller freed an interior pointer, `shrink_to_fit` that the caller
/// reallocated one.
#[test]
fn pvec_destroy_and_shrink_with_a_damaged_buffer_are_corrupt_not_invalid_free() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("v.heap"), opts()).unwrap();
    let v = vec_of(&heap, 3);
    let buf = word(&heap, v.offset());
    poke(&heap, v.offset(), buf + 16);
    let d = heap.transaction(|tx| v.destroy(tx));
    let s = heap.transaction(|tx| v.shrink_to_fit(tx));
    eprintln!("destroy: {d:?}\nshrink_to_fit: {s:?}");
    assert!(is_corrupt(&d), "destroy: {d:?}");
    assert!(is_corrupt(&s), "shrink_to_fit: {s:?}");
}

fn btree(heap: &Heap, n: u64) -> PPtr<PBTreeMap<u64, u64>> {
    heap.transaction(|tx| {
        let m = PBTreeMap::<u64, u64>::new(tx)?;
        for i in 0..n {
            m.insert(tx, &i, &(i * 7))?;
        }
        Ok(m)
    })
    .unwrap()
}

fn btree_blocks(heap: &Heap, m: PPtr<PBTreeMap<u64, u64>>) -> Vec<u64> {
    let mut v = Vec::new();
    heap.read(|r| m.for_each_block(r, |b| v.push(b))).unwrap();
    v
}

/// Case 4: A PBTreeMap header's root offset with one high bit flipped (2^38): every operation
/// answers `OutOfBounds`.
#[test]
fn btree_root_offset_out_of_the_heap_is_corrupt_not_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), opts()).unwrap();
    let m = btree(&heap, 600);
    let root = word(&heap, m.offset());
    poke(&heap, m.offset(), root ^ 1 << 38);
    let g = heap.read(|r| m.get(r, &5).map(|x| x.copied()));
    let i = heap.transaction(|tx| m.insert(tx, &10_000, &1));
    let c = heap.read(|r| m.check(r));
    eprintln!("get: {g:?}\ninsert: {i:?}\ncheck: {c:?}");
    assert!(is_corrupt(&g), "get: {g:?}");
    assert!(is_corrupt(&i), "insert: {i:?}");
    assert!(is_corrupt(&c), "check: {c:?}");
}

/// Case 5: A child pointer in a B-tree's internal node zeroed: `Corrupt` is returned, and it named
/// offset 0 (nothing); it names the map now (the node that held the word is not known where
/// the null pointer is met).
#[test]
fn btree_null_child_corrupt_names_the_parent_not_offset_zero() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), opts()).unwrap();
    let m = btree(&heap, 600);
    let root = word(&heap, m.offset());
    let height = word(&heap, m.offset() + 16);
    assert_eq!(height, 2, "a root over leaves");
    let leaves = btree_blocks(&heap, m);
    let node: [u64; 512] = heap
        .read(|r| r.get(PPtr::<[u64; 512]>::from_offset(root)).copied())
        .unwrap();
    let first = (0..512)
        .find(|&i| leaves.contains(&node[i]) && node[i] != root)
        .unwrap();
    let child_word = root + first as u64 * 8;
    poke(&heap, child_word, 0);
    let g = heap.read(|r| m.get(r, &0).map(|_| ()));
    let c = heap.read(|r| m.check(r));
    eprintln!("root node {root:#x}, child word {child_word:#x}\nget: {g:?}\ncheck: {c:?}");
    for (name, r) in [("get", &g), ("check", &c)] {
        match r {
            Err(Error::Corrupt { offset, .. }) => assert!(
                *offset == m.offset() || (*offset >= root && *offset < root + 4096),
                "{name}: Corrupt names {offset:#x}, not the map nor the damaged node: {r:?}"
            ),
            other => panic!("{name}: {other:?}"),
        }
    }
}

fn hash(heap: &Heap, n: u64) -> PPtr<PHashMap<u64, u64>> {
    heap.transaction(|tx| {
        let m = PHashMap::<u64, u64>::new(tx)?;
        for i in 0..n {
            m.insert(tx, &i, &(i * 7))?;
        }
        Ok(m)
    })
    .unwrap()
}

/// Case 6: A PHashMap header's directory offset with one high bit flipped, or its depth 1 -> 33
/// (both inside what the header check accepts): lookups and removals answer `OutOfBounds`.
#[test]
fn hash_directory_out_of_the_heap_is_corrupt_not_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("h.heap"), opts()).unwrap();
    let m = hash(&heap, 600);
    let d = word(&heap, m.offset());
    let depth = word(&heap, m.offset() + 8);
    assert!(depth >= 1, "a map with a directory");
    poke(&heap, m.offset(), d ^ 1 << 40);
    let g = heap.read(|r| m.get(r, &5).map(|x| x.copied()));
    let i = heap.transaction(|tx| m.insert(tx, &5, &1));
    poke(&heap, m.offset(), d);
    poke(&heap, m.offset() + 8, depth + 32);
    let r = heap.transaction(|tx| m.remove(tx, &5));
    eprintln!("dir^2^40: get: {g:?}\n  insert: {i:?}\ndepth+32: remove: {r:?}");
    assert!(is_corrupt(&g), "get: {g:?}");
    assert!(is_corrupt(&i), "insert: {i:?}");
    assert!(is_corrupt(&r), "remove: {r:?}");
}

/// Case 7: A byte-string handle stored in a collection (a PString key in a B-tree leaf, a PBytes
/// value in a hash map, a PBytes element of a PVec) with its offset or length damaged: `get`,
/// `range` and `check()` answer `OutOfBounds`.
#[test]
fn damaged_byte_string_handles_are_corrupt_not_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("s.heap"), opts()).unwrap();
    let (bm, hm, v) = heap
        .transaction(|tx| {
            let bm = PBTreeMap::<PString, u64>::new(tx)?;
            let hm = PHashMap::<u64, PBytes>::new(tx)?;
            let v = PVec::<PBytes>::new(tx)?;
            for i in 0..5u64 {
                bm.insert(tx, format!("k{i}").as_str(), &i)?;
                hm.insert(tx, &i, format!("v{i}").as_bytes())?;
                let b = PBytes::new(tx, format!("e{i}").as_bytes())?;
                v.push(tx, b)?;
            }
            Ok((bm, hm, v))
        })
        .unwrap();
    // Find each handle by its block offset inside the collection's own block.
    let find = |blk: u64, len: u64, target: u64| -> u64 {
        (0..len / 8)
            .map(|i| blk + i * 8)
            .find(|&a| word(&heap, a) == target)
            .unwrap()
    };
    // B-tree: the one leaf; the first key's handle (offset, length): the length -> 2^62.
    let leaf = word(&heap, bm.offset());
    let k0 = heap
        .read(|r| Ok(r.get(PPtr::<[u64; 128]>::from_offset(leaf))?.to_vec()))
        .unwrap();
    let mut keyblocks = Vec::new();
    heap.read(|r| bm.for_each_block(r, |b| keyblocks.push(b)))
        .unwrap();
    let kh = k0
        .iter()
        .position(|w| keyblocks.contains(w) && *w != leaf)
        .unwrap() as u64;
    poke(&heap, leaf + kh * 8 + 8, 1 << 62);
    let br = heap.read(|r| {
        let mut n = 0;
        for e in bm.range::<_, std::ops::RangeFull>(r, ..)? {
            e?;
            n += 1;
        }
        Ok(n)
    });
    let bc = heap.read(|r| bm.check(r));
    // Hash map (depth 0: the header names its one bucket): value 3's offset -> 2^40.
    let bucket = word(&heap, hm.offset());
    let mut vblocks = Vec::new();
    heap.read(|r| hm.for_each_block(r, |b| vblocks.push(b)))
        .unwrap();
    let target = *vblocks
        .iter()
        .find(|&&b| {
            b != bucket
                && heap
                    .read(
                        |r| Ok(r.slice(txheap::PSlice::<u8>::from_raw_parts(b, 2))? == &b"v3"[..]),
                    )
                    .unwrap()
        })
        .unwrap();
    let at = find(bucket, 8192, target);
    poke(&heap, at, 1 << 40);
    let hg = heap.read(|r| hm.get(r, &3).map(|x| x.map(|b| b.len())));
    let hc = heap.read(|r| hm.check(r));
    // PVec<PBytes>: element 0's offset -> 0xc0 (below the heap area).
    let buf = word(&heap, v.offset());
    poke(&heap, buf, 0xc0);
    let vc = heap.read(|r| v.check(r));
    eprintln!("btree range: {br:?}\nbtree check: {bc:?}\nhash get: {hg:?}\nhash check: {hc:?}\nvec check: {vc:?}");
    assert!(is_corrupt(&br), "btree range: {br:?}");
    assert!(is_corrupt(&bc), "btree check: {bc:?}");
    assert!(is_corrupt(&hg), "hash get: {hg:?}");
    assert!(is_corrupt(&hc), "hash check: {hc:?}");
    assert!(is_corrupt(&vc), "vec check: {vc:?}");
}

/// Largest block count of a run of `bs`-byte blocks, and its data offset (docs/FORMAT.md).
fn run_geom(bs: u64) -> u64 {
    let mut n = CHUNK / bs;
    loop {
        let d = (8 * n.div_ceil(64)).div_ceil(64) * 64;
        if d + n * bs <= CHUNK {
            return d;
        }
        n -= 1;
    }
}

/// Clear, on disk, the allocation bit of the block at `blk` (of `bs` bytes) in its run's bitmap.
fn clear_bit(path: &std::path::Path, blk: u64, bs: u64) {
    let base = CHUNK_AREA + (blk - CHUNK_AREA) / CHUNK * CHUNK;
    let idx = (blk - base - run_geom(bs)) / bs;
    let mut f = std::fs::read(path).unwrap();
    let byte = (base + idx / 8) as usize;
    assert!(f[byte] & (1 << (idx % 8)) != 0, "the block's bit is set");
    f[byte] &= !(1 << (idx % 8));
    std::fs::write(path, f).unwrap();
}

/// Case 8: A run's bitmap (allocator metadata, no checksum) damaged: the bit of a B-tree leaf
/// cleared. An insert into that leaf answers `NotAllocated` ("write ... is not inside a live
/// allocation"), `clear()` answers `InvalidFree { why: "block is not allocated (double
/// free?)" }`: both blame the caller, who never named the leaf.
#[test]
fn btree_leaf_freed_in_the_bitmap_is_corrupt_not_caller_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bm.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    let m = btree(&heap, 600);
    let root = word(&heap, m.offset());
    let leaves: Vec<u64> = btree_blocks(&heap, m)
        .into_iter()
        .filter(|&b| b != root)
        .collect();
    // The leaf that holds key 0: the first child word of the root.
    let node: [u64; 512] = heap
        .read(|r| r.get(PPtr::<[u64; 512]>::from_offset(root)).copied())
        .unwrap();
    let leaf0 = *node.iter().find(|w| leaves.contains(w)).unwrap();
    heap.close().unwrap();
    clear_bit(&path, leaf0, 1024);
    let heap = Heap::open(&path, opts()).unwrap();
    let i = heap.transaction(|tx| m.insert(tx, &0, &9));
    let c = heap.transaction(|tx| m.clear(tx));
    eprintln!("leaf {leaf0:#x}\ninsert: {i:?}\nclear: {c:?}");
    assert!(is_corrupt(&i), "insert: {i:?}");
    assert!(is_corrupt(&c), "clear: {c:?}");
}

/// Case 9: The same for a hash map's bucket and a PVec<PBytes> element's byte string: `insert`
/// answers `NotAllocated`, `truncate` `InvalidFree` ("double free?").
#[test]
fn hash_bucket_and_vec_element_freed_in_the_bitmap_are_corrupt_not_caller_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bm.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    let m = hash(&heap, 5);
    let v = heap
        .transaction(|tx| {
            let v = PVec::<PBytes>::new(tx)?;
            for i in 0..3u64 {
                let b = PBytes::new(tx, format!("e{i}").as_bytes())?;
                v.push(tx, b)?;
            }
            Ok(v)
        })
        .unwrap();
    let bucket = word(&heap, m.offset()); // depth 0: the header names the one bucket
    let bucket_size = heap
        .transaction(|tx| Ok(tx.usable_size(PPtr::<u8>::from_offset(bucket))))
        .unwrap()
        .unwrap();
    let buf = word(&heap, v.offset());
    let e2 = word(&heap, buf + 32); // element 2's offset (16-byte handles)
    heap.close().unwrap();
    clear_bit(&path, bucket, bucket_size);
    clear_bit(&path, e2, 16);
    let heap = Heap::open(&path, opts()).unwrap();
    let i = heap.transaction(|tx| m.insert(tx, &1, &9));
    let t = heap.transaction(|tx| v.truncate(tx, 1));
    eprintln!("insert: {i:?}\ntruncate: {t:?}");
    assert!(is_corrupt(&i), "insert: {i:?}");
    assert!(is_corrupt(&t), "truncate: {t:?}");
}

/// Case 10: The write paths' "allocation of its own" check (ARCHITECTURE section 10): a hash map's
/// bucket pointer (depth 0: the header's first word) damaged to aim 4 KiB into another live
/// object, and a B-tree's root aimed at a copy of its leaf inside another object (as in
/// tests/damaged_collections.rs, which asserts only `is_err`).
/// The write is refused, but as `NotAllocated` ("write ... is not inside a live allocation"),
/// the caller's error, though the caller named only the map.
#[test]
fn collection_pointer_into_another_object_is_corrupt_not_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("o.heap"), Options::new()).unwrap();
    let (m, other) = heap
        .transaction(|tx| {
            let m = PHashMap::<u64, u64>::new(tx)?;
            m.insert(tx, &1, &10)?;
            let other = tx.alloc_slice_zeroed::<u64>(8192)?; // 64 KiB of zeros, another object
            Ok((m, other))
        })
        .unwrap();
    poke(&heap, m.offset(), other.offset() + 4096);
    let ins = heap.transaction(|tx| m.insert(tx, &5, &50));
    let (b, other) = heap
        .transaction(|tx| {
            let b = PBTreeMap::<u64, u64>::new(tx)?;
            b.insert(tx, &1, &10)?;
            let other = tx.alloc_slice_zeroed::<u64>(8192)?;
            Ok((b, other))
        })
        .unwrap();
    let leaf = word(&heap, b.offset());
    heap.transaction(|tx| {
        let copy = tx
            .slice(txheap::PSlice::<u64>::from_raw_parts(leaf, 128))?
            .to_vec();
        tx.write_slice(other, 512, &copy)
    })
    .unwrap();
    poke(&heap, b.offset(), other.offset() + 4096);
    let bins = heap.transaction(|tx| b.insert(tx, &5, &50));
    eprintln!("hash insert: {ins:?}\nbtree insert: {bins:?}");
    assert!(is_corrupt(&ins), "hash insert: {ins:?}");
    assert!(is_corrupt(&bins), "btree insert: {bins:?}");
}

/// Case 11 (the damage sweep, `random_damage.rs`): a PVec's buffer offset damaged to name the
/// header's own words (its start, or 8 past it): `extend_from_slice`, `shrink_to_fit`, `push`
/// and `destroy` reallocated or freed the header's block as the buffer and answered a caller's
/// `InvalidFree` ("realloc of a pointer that is not the start of a live allocation").
#[test]
fn pvec_buffer_naming_its_own_header_is_corrupt_not_invalid_free() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("h.heap"), opts()).unwrap();
    let v = vec_of(&heap, 300);
    let buf = word(&heap, v.offset());
    for plus in [0, 8] {
        poke(&heap, v.offset(), v.offset() + plus);
        let e = heap.transaction(|tx| v.extend_from_slice(tx, &[1; 700]));
        let s = heap.transaction(|tx| v.shrink_to_fit(tx));
        let p = heap.transaction(|tx| v.push(tx, 1));
        let d = heap.transaction(|tx| v.destroy(tx));
        let g = heap.read(|r| v.get(r, 0));
        eprintln!("+{plus}: extend {e:?}\nshrink {s:?}\npush {p:?}\ndestroy {d:?}\nget {g:?}");
        for (what, r) in [
            ("extend", &e),
            ("shrink_to_fit", &s),
            ("push", &p),
            ("destroy", &d),
        ] {
            assert!(is_corrupt(r), "+{plus}: {what}: {r:?}");
        }
        assert!(is_corrupt(&g), "+{plus}: get: {g:?}");
    }
    poke(&heap, v.offset(), buf);
    heap.read(|r| v.check(r)).unwrap();
}

/// Case 12 (the damage sweep): a `PBytes` element of a `PVec` whose length or offset is
/// damaged: `get` hands out the handle, and reading its bytes answered `OutOfBounds`
/// ("pointer ... is outside the heap") or `NullPointer`, a caller's mistake; it is damage.
#[test]
fn pbytes_handle_with_a_damaged_length_is_corrupt_not_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), opts()).unwrap();
    let v = heap
        .transaction(|tx| {
            let v = PVec::<PBytes>::new(tx)?;
            let b = PBytes::new(tx, b"element")?;
            v.push(tx, b)?;
            Ok(v)
        })
        .unwrap();
    let buf = word(&heap, v.offset());
    let at = word(&heap, buf);
    // The handle is (offset, length): a damaged length, then a zeroed offset.
    for (off, len) in [(at, u64::MAX), (at, 1 << 40), (0, 7)] {
        poke(&heap, buf, off);
        poke(&heap, buf + 8, len);
        let r = heap.read(|r| Ok(v.get(r, 0)?.unwrap().bytes(r)?.len()));
        eprintln!("offset {off:#x} length {len:#x}: {r:?}");
        assert!(is_corrupt(&r), "offset {off:#x} length {len:#x}: {r:?}");
    }
    poke(&heap, buf, at);
    poke(&heap, buf + 8, 7);
    assert_eq!(
        heap.read(|r| Ok(v.get(r, 0)?.unwrap().bytes(r)?.to_vec()))
            .unwrap(),
        b"element"
    );
    // An empty byte string is the handle (0, 0), and reads as empty.
    let e = heap.transaction(|tx| PBytes::new(tx, b"")).unwrap();
    assert_eq!(heap.read(|r| Ok(e.bytes(r)?.len())).unwrap(), 0);
}

/// Case 13 (the damage sweep, with another seed): a byte string's handle in a hash map's
/// bucket damaged to name a word inside the map's own header (its start + 8): `remove`,
/// `clear` and `destroy` freed it and answered `InvalidFree` ("not the start of a block"), a
/// caller's mistake, because any offset inside the header counted as the handle's own.
#[test]
fn a_handle_naming_the_maps_own_header_words_is_corrupt_not_invalid_free() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("hh.heap"), opts()).unwrap();
    let hm = heap
        .transaction(|tx| {
            let hm = PHashMap::<u64, PBytes>::new(tx)?;
            hm.insert(tx, &1, b"value")?;
            Ok(hm)
        })
        .unwrap();
    let bucket = word(&heap, hm.offset());
    let mut blocks = Vec::new();
    heap.read(|r| hm.for_each_block(r, |b| blocks.push(b)))
        .unwrap();
    let value = *blocks.iter().find(|&&b| b != bucket).unwrap();
    let at = (0..8192 / 8)
        .map(|i| bucket + 8 * i)
        .find(|&a| word(&heap, a) == value)
        .unwrap();
    poke(&heap, at, hm.offset() + 8);
    let rm = heap.transaction(|tx| hm.remove(tx, &1));
    let cl = heap.transaction(|tx| hm.clear(tx));
    let de = heap.transaction(|tx| hm.destroy(tx));
    eprintln!("remove {rm:?}\nclear {cl:?}\ndestroy {de:?}");
    assert!(is_corrupt(&rm), "remove: {rm:?}");
    assert!(is_corrupt(&cl), "clear: {cl:?}");
    assert!(is_corrupt(&de), "destroy: {de:?}");
}
