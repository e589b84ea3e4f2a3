//! Errors a wild handle or a damaged pointer gives through a collection (a review of the first
//! version of `collections::own`; each test failed on it).

#![allow(clippy::type_complexity)] // (the block-collecting closure's type, in one test)

use super::{poke, word};
use txheap::{Error, Heap, Options, PBTreeMap, PBytes, PHashMap, PPtr, PSlice, PVec};

fn corrupt_at<T: std::fmt::Debug>(r: &Result<T, Error>) -> Option<u64> {
    match r {
        Err(Error::Corrupt { offset, .. }) => Some(*offset),
        _ => None,
    }
}

/// A wild handle near 2^64 (a caller's mistake: "an error at the header itself (a wild,
/// misaligned or freed handle) stays the caller's"). `own_error` computes
/// `h.offset() + size_of::<H>()` unchecked: a debug build panics ("attempt to add with
/// overflow"), a release build wraps, and the header's own OutOfBounds becomes Corrupt.
#[test]
fn wild_handle_near_u64_max_is_out_of_bounds_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("w.heap"), Options::new()).unwrap();
    let at = u64::MAX - 7; // 8-aligned
    let v = PPtr::<PVec<u64>>::from_offset(at);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.read(|r| v.get(r, 0))));
    eprintln!("PVec::get: {r:?}");
    let r = r.expect("PVec::get of a wild handle panicked");
    assert!(
        matches!(r, Err(Error::OutOfBounds { offset, .. }) if offset == at),
        "PVec::get of a wild handle: {r:?}"
    );
    let m = PPtr::<PHashMap<u64, u64>>::from_offset(at);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        heap.read(|r| m.get(r, &1).map(|v| v.copied()))
    }));
    let r = r.expect("PHashMap::get of a wild handle panicked");
    assert!(matches!(r, Err(Error::OutOfBounds { .. })), "{r:?}");
    let b = PPtr::<PBTreeMap<u64, u64>>::from_offset(at);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        heap.transaction(|tx| b.insert(tx, &1, &1))
    }));
    let r = r.expect("PBTreeMap::insert of a wild handle panicked");
    assert!(matches!(r, Err(Error::OutOfBounds { .. })), "{r:?}");
}

/// `Error::Corrupt { offset }` is documented as "Where the damage is" ("The file's metadata is
/// damaged at `offset`"). One damage, a PVec header's buffer offset changed to name the start
/// of a smaller live object, is reported at the header for a `PVec<PBytes>` (`not_own`) but at
/// the other, intact object for a `PVec<u64>` (realloc_slice's InvalidFree mapped by `own`).
#[test]
fn same_damage_same_corrupt_offset_for_any_element_type() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("c.heap"), Options::new()).unwrap();
    let (v, other) = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2, 3, 4])?;
            let other = tx.alloc(7u64)?;
            Ok((v, other))
        })
        .unwrap();
    poke(&heap, v.offset(), other.offset());
    let p = heap.transaction(|tx| v.push(tx, 5));

    let (w, other2) = heap
        .transaction(|tx| {
            let w = PVec::<PBytes>::new(tx)?;
            for s in [&b"a"[..], b"b", b"c", b"d"] {
                let b = PBytes::new(tx, s)?;
                w.push(tx, b)?;
            }
            let other = tx.alloc([7u64; 2])?;
            Ok((w, other))
        })
        .unwrap();
    poke(&heap, w.offset(), other2.offset());
    let b = PBytes::default();
    let q = heap.transaction(|tx| w.push(tx, b));
    eprintln!(
        "PVec<u64> header {:#x}, other {:#x}: push {p:?}\nPVec<PBytes> header {:#x}, other {:#x}: push {q:?}",
        v.offset(),
        other.offset(),
        w.offset(),
        other2.offset()
    );
    assert_eq!(corrupt_at(&q), Some(w.offset()), "PVec<PBytes> push: {q:?}");
    assert_eq!(
        corrupt_at(&p),
        Some(v.offset()),
        "PVec<u64> push names the intact object, not the damaged header: {p:?}"
    );
}

/// A damaged buffer offset aimed past the heap's end: Corrupt at an offset past the end of the
/// file (where nothing is, let alone damaged); the damaged word is the header's.
#[test]
fn corrupt_offset_is_inside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let v = heap
        .transaction(|tx| {
            let v = PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &[1, 2, 3])?;
            Ok(v)
        })
        .unwrap();
    let buf = word(&heap, v.offset());
    poke(&heap, v.offset(), buf | 1 << 40);
    let g = heap.read(|r| v.get(r, 0));
    let len = std::fs::metadata(&path).unwrap().len();
    eprintln!("file length {len:#x}; header {:#x}; get: {g:?}", v.offset());
    let off = corrupt_at(&g).expect("Corrupt");
    assert!(
        off < len,
        "Corrupt at {off:#x}, past the file's end {len:#x}: {g:?}"
    );
}

/// A B-tree root pointer damaged to name the start of a smaller live byte string (the commit's
/// own reproduction in tests/damaged_collections.rs): `remove` is refused now, as Corrupt at
/// the byte string, an intact object, which a reader of the error would take as the damage.
#[test]
fn btree_damage_is_not_reported_at_an_intact_object() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("b.heap"), Options::new()).unwrap();
    let m = heap
        .transaction(|tx| {
            let m = PBTreeMap::<u64, u64>::new(tx)?;
            m.insert(tx, &7, &70)?;
            Ok(m)
        })
        .unwrap();
    let root = word(&heap, m.offset());
    let prefix: Vec<u8> = heap
        .read(|r| Ok(r.slice(PSlice::<u8>::from_raw_parts(root, 192))?.to_vec()))
        .unwrap();
    let other = heap.transaction(|tx| PBytes::new(tx, &prefix)).unwrap();
    let other_at = other.as_slice().offset();
    poke(&heap, m.offset(), other_at);
    let r = heap.transaction(|tx| m.remove(tx, &7));
    eprintln!(
        "map {:#x}, byte string {other_at:#x}: remove {r:?}",
        m.offset()
    );
    assert!(corrupt_at(&r).is_some(), "{r:?}");
    assert_ne!(
        corrupt_at(&r),
        Some(other_at),
        "names the intact byte string: {r:?}"
    );
}

/// Find, inside `[from, from + len)`, the word equal to `value`; return its offset.
fn find_word(heap: &Heap, from: u64, len: u64, value: u64) -> u64 {
    let words: Vec<u64> = heap
        .read(|r| {
            Ok(r.slice(PSlice::<u64>::from_raw_parts(from, len / 8))?
                .to_vec())
        })
        .unwrap();
    from + 8 * words.iter().position(|&w| w == value).expect("word found") as u64
}

/// A stored byte string's handle with its offset damaged to 0 (length kept): reads through it
/// answer `NullPointer` ("A null pointer was dereferenced or freed"), the caller's error,
/// which `own` leaves as it is (it maps only OutOfBounds, Misaligned, NotAllocated,
/// InvalidFree). The B-tree already reports a null node as Corrupt for this reason.
#[test]
fn null_byte_string_handle_inside_a_collection_is_corrupt_not_null_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("n.heap"), Options::new()).unwrap();
    let (h, b, v) = heap
        .transaction(|tx| {
            let h = PHashMap::<u64, PBytes>::new(tx)?;
            h.insert(tx, &1, b"hello hash")?;
            let b = PBTreeMap::<u64, PBytes>::new(tx)?;
            b.insert(tx, &1, b"hello tree")?;
            let v = PVec::<PBytes>::new(tx)?;
            let e = PBytes::new(tx, b"hello vec")?;
            v.push(tx, e)?;
            Ok((h, b, v))
        })
        .unwrap();
    let blocks = |f: &dyn Fn(&txheap::Reader<'_>, &mut dyn FnMut(u64)) -> txheap::Result<()>| {
        let mut out = Vec::new();
        heap.read(|r| f(r, &mut |x| out.push(x))).unwrap();
        out
    };
    // Hash map: blocks are [bucket, bytes].
    let hb = blocks(&|r, f| h.for_each_block(r, f));
    let at = find_word(&heap, hb[0], 8192, hb[1]);
    poke(&heap, at, 0);
    // B-tree: blocks are [leaf, bytes].
    let bb = blocks(&|r, f| b.for_each_block(r, f));
    let at = find_word(&heap, bb[0], 1024, bb[1]);
    poke(&heap, at, 0);
    // Vector: element 0's handle is the buffer's first word.
    let buf = word(&heap, v.offset());
    poke(&heap, buf, 0);
    // (Lengths kept: 10, 10, 9.)
    let hg = heap.read(|r| h.get(r, &1).map(|x| x.map(|s| s.to_vec())));
    let hc = heap.read(|r| h.check(r));
    let bg = heap.read(|r| b.get(r, &1).map(|x| x.map(|s| s.to_vec())));
    let bc = heap.read(|r| b.check(r));
    let vc = heap.read(|r| v.check(r));
    let vr = heap.transaction(|tx| v.retain(tx, |_| true));
    eprintln!("hash get {hg:?}\nhash check {hc:?}\nbtree get {bg:?}\nbtree check {bc:?}\nvec check {vc:?}\nvec retain {vr:?}");
    for (name, r) in [
        ("hash get", format!("{hg:?}")),
        ("hash check", format!("{hc:?}")),
        ("btree get", format!("{bg:?}")),
        ("btree check", format!("{bc:?}")),
        ("vec check", format!("{vc:?}")),
        ("vec retain", format!("{vr:?}")),
    ] {
        assert!(r.starts_with("Err(Corrupt"), "{name}: {r}");
    }
}

// A review of the second version (4737c09).

fn heap_in(d: &tempfile::TempDir) -> Heap {
    Heap::create(d.path().join("r.heap"), Options::new()).unwrap()
}

/// A wild handle at exactly u64::MAX is misaligned: "an error at the header itself (a null,
/// wild, misaligned or freed handle) stays the caller's" (ARCHITECTURE.md section 10). The
/// header's end saturates at u64::MAX, so `start..end` is empty and the caller's Misaligned
/// at the header comes back as Corrupt ("the collection at 0xffffffffffffffff is damaged").
#[test]
fn handle_at_u64_max_is_misaligned_not_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let h = heap_in(&d);
    let at = u64::MAX;
    let v = PPtr::<PVec<u64>>::from_offset(at);
    let m = PPtr::<PHashMap<u64, u64>>::from_offset(at);
    let b = PPtr::<PBTreeMap<u64, u64>>::from_offset(at);
    let rs = [
        ("PVec::get", h.read(|r| v.get(r, 0).map(|_| ()))),
        ("PVec::push", h.transaction(|tx| v.push(tx, 1))),
        ("PHashMap::get", h.read(|r| m.get(r, &1).map(|_| ()))),
        (
            "PHashMap::insert",
            h.transaction(|tx| m.insert(tx, &1, &1).map(|_| ())),
        ),
        ("PBTreeMap::get", h.read(|r| b.get(r, &1).map(|_| ()))),
        (
            "PBTreeMap::insert",
            h.transaction(|tx| b.insert(tx, &1, &1).map(|_| ())),
        ),
    ];
    for (name, r) in rs {
        eprintln!("{name}: {r:?}");
        assert!(
            matches!(r, Err(Error::Misaligned { offset, .. }) if offset == at),
            "{name} of a handle at u64::MAX: {r:?}"
        );
    }
}

/// `Tx::free`'s rustdoc: "Freeing anything but the start of a live allocation is an
/// [`Error::InvalidFree`]". A damaged PBytes handle (in the user's own object) whose offset lies
/// past the heap's chunks is freed with `OutOfBounds` instead, through `PBytes::free`,
/// `Tx::free_slice` and `Tx::free` alike (while `Tx::realloc_slice` of the same slice says
/// InvalidFree, as its rustdoc says).
#[test]
fn free_past_the_heap_is_invalid_free() {
    let d = tempfile::tempdir().unwrap();
    let h = heap_in(&d);
    let holder = h
        .transaction(|tx| {
            let b = PBytes::new(tx, b"hello")?;
            tx.alloc(b)
        })
        .unwrap();
    for off in [1u64 << 40, u64::MAX - 7] {
        h.transaction(|tx| tx.set(PPtr::<[u64; 2]>::from_offset(holder.offset()), [off, 5]))
            .unwrap();
        let b = h.read(|r| r.get(holder).copied()).unwrap();
        let rs = [
            ("PBytes::free", h.transaction(|tx| b.free(tx))),
            (
                "Tx::free_slice",
                h.transaction(|tx| tx.free_slice(b.as_slice())),
            ),
            (
                "Tx::free",
                h.transaction(|tx| tx.free(PPtr::<u8>::from_offset(off))),
            ),
            (
                "Tx::realloc_slice",
                h.transaction(|tx| tx.realloc_slice(b.as_slice(), 5, 10).map(|_| ())),
            ),
        ];
        for (name, r) in rs {
            eprintln!("{off:#x} {name}: {r:?}");
            assert!(
                matches!(r, Err(Error::InvalidFree { .. })),
                "{name} of {off:#x}: {r:?}"
            );
        }
    }
}
