//! Damage that only a collection's `check()` can see: each test was written against a mutation of
//! a check that the rest of the suite let through (hand mutation testing), and fails on it.

use txheap::{Heap, Options, PBTreeMap, PHashMap, PPtr};

/// A leaf's last key raised to the separator that bounds it from above (the first key of the
/// next leaf): lookups of that key go to the right child, so the entry is unreachable by `get`,
/// and the key is then in two leaves. check() must refuse it ("outside the bounds").
#[test]
fn btree_check_refuses_a_key_equal_to_its_upper_separator() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("bt.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, [u8; 200]>::new(tx)?;
            for k in 0..200u64 {
                m.insert(tx, &(k * 10), &[k as u8; 200])?;
            }
            Ok(m)
        })
        .unwrap();
    let root = heap.read(|r| Ok(*r.get(m.cast::<u64>())?)).unwrap();
    // The first child pointer of the root (as tests/collections.rs finds it).
    let children_at = heap
        .read(|r| {
            let node = r.slice(txheap::PSlice::<u64>::from_raw_parts(root, 512))?;
            Ok(node
                .iter()
                .position(|&w| {
                    w != 0
                        && w != root
                        && w % 16 == 0
                        && w > root.saturating_sub(1 << 30)
                        && r.get(PPtr::<u32>::from_offset(w)).is_ok_and(|l| *l == 0)
                })
                .unwrap())
        })
        .unwrap() as u64;
    let (leaf0, leaf1) = heap
        .read(|r| {
            Ok((
                *r.get(PPtr::<u64>::from_offset(root + 8 * children_at))?,
                *r.get(PPtr::<u64>::from_offset(root + 8 * (children_at + 1)))?,
            ))
        })
        .unwrap();
    // A leaf of 8-byte keys and 200-byte values: count (u32) at 4, keys at 40.
    let n0 = heap
        .read(|r| Ok(*r.get(PPtr::<u32>::from_offset(leaf0 + 4))?))
        .unwrap() as u64;
    let sep = heap
        .read(|r| Ok(*r.get(PPtr::<u64>::from_offset(leaf1 + 40))?))
        .unwrap();
    heap.read(|r| m.check(r)).unwrap();
    heap.transaction(|tx| tx.set(PPtr::<u64>::from_offset(leaf0 + 40 + 8 * (n0 - 1)), sep))
        .unwrap();
    let e = heap
        .read(|r| m.check(r))
        .expect_err("a key equal to its upper bound passed check()");
    assert!(e.to_string().contains("outside the bounds"), "{e}");
}

/// An entry removed from the middle of another entry's probe path (its fingerprint cleared and
/// the header's length lowered to match): the later entry can no longer be found by `get`.
/// check() must name it ("an empty slot cuts its probe path").
#[test]
fn hash_check_refuses_a_gap_in_a_probe_path() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("hm.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PHashMap::<u64, u64>::new(tx)?;
            for k in 0..300u64 {
                m.insert(tx, &k, &k)?;
            }
            Ok(m)
        })
        .unwrap();
    heap.read(|r| m.check(r)).unwrap();
    // Header: dir (at depth 0: the bucket), depth, len. 300 entries of 16 bytes fit one bucket of 480 slots.
    let [dir0, depth, len] = heap.read(|r| Ok(*r.get(m.cast::<[u64; 3]>())?)).unwrap();
    assert_eq!((depth, len), (0, 300));
    let b = dir0; // at depth 0 the header names the one bucket
    let fp = |k: u64| PPtr::<u8>::from_offset(b + 16 + k);
    let (mut cut, mut passed) = (0, 0);
    for k in 0..480u64 {
        let f = heap.read(|r| Ok(*r.get(fp(k))?)).unwrap();
        if f == 0 {
            continue;
        }
        heap.transaction(|tx| {
            tx.set(fp(k), 0u8)?;
            tx.set(PPtr::<u64>::from_offset(m.offset() + 16), len - 1)
        })
        .unwrap();
        match heap.read(|r| m.check(r)) {
            Err(e) if e.to_string().contains("cuts its probe path") => cut += 1,
            Err(e) => panic!("slot {k}: {e}"),
            Ok(()) => passed += 1,
        }
        heap.transaction(|tx| {
            tx.set(fp(k), f)?;
            tx.set(PPtr::<u64>::from_offset(m.offset() + 16), len)
        })
        .unwrap();
    }
    assert!(
        cut > 0,
        "no removal cut a probe path ({passed} passed check())"
    );
}
