//! Stored type identity: the root's type check survives a move of the type to another module
//! and catches a changed layout, naming both layouts; files written before `Stored` still open.

use txheap::{Error, Heap, Options, PPtr, Stored};

mod first {
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Root {
        pub count: u64,
        pub head: txheap::PPtr<u64>,
    }
}

mod second {
    // Byte-identical, declared elsewhere: the same stored identity.
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Root {
        pub count: u64,
        pub head: txheap::PPtr<u64>,
    }
}

mod changed {
    // The same name, size and alignment; two fields swapped.
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Root {
        pub head: txheap::PPtr<u64>,
        pub count: u64,
    }
}

#[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
#[repr(C)]
#[stored(name = "app.Root")]
struct Renamed {
    count: u64,
    head: PPtr<u64>,
}

#[test]
fn identity_is_the_layout_not_the_module_path() {
    assert_eq!(<first::Root as Stored>::ID, <second::Root as Stored>::ID);
    assert_ne!(<first::Root as Stored>::ID, <changed::Root as Stored>::ID);
    assert_ne!(<first::Root as Stored>::ID, <Renamed as Stored>::ID);
    assert_ne!(<first::Root as Stored>::ID, <[u64; 2] as Stored>::ID);
    assert_ne!(<[u32; 2] as Stored>::ID, <[u16; 4] as Stored>::ID);
    assert_ne!(<PPtr<u32> as Stored>::ID, <PPtr<u64> as Stored>::ID);
    assert_eq!(
        txheap::describe::<first::Root>(),
        "Root (size 16, align 8; count: u64 @0, head: txheap::PPtr<u64> @8)"
    );
}

#[test]
fn root_moves_between_modules_and_refuses_a_changed_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stored.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<first::Root>()?;
        tx.get_mut(r)?.count = 7;
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();

    let heap = Heap::open(&path, Options::new()).unwrap();
    let count = heap
        .read(|r| Ok(r.get(r.root::<second::Root>()?)?.count))
        .unwrap();
    assert_eq!(count, 7);
    let err = heap.read(|r| r.root::<changed::Root>()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::RootTypeMismatch { .. }), "{err:?}");
    assert!(
        text.contains("count: u64 @0, head: txheap::PPtr<u64> @8")
            && text.contains("head: txheap::PPtr<u64> @0, count: u64 @8"),
        "{text}"
    );
    let err = heap.transaction(|tx| tx.root::<Renamed>()).unwrap_err();
    assert!(err.to_string().contains("app.Root"), "{err}");
    // Refused without harm: the root still reads.
    assert_eq!(
        heap.read(|r| Ok(r.get(r.root::<first::Root>()?)?.count))
            .unwrap(),
        7
    );
}

/// FNV-1a of `type_name`, size, alignment: how roots were identified before `Stored`.
fn legacy<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let size = (std::mem::size_of::<T>() as u64).to_le_bytes();
    let align = (std::mem::align_of::<T>() as u64).to_le_bytes();
    for &b in std::any::type_name::<T>()
        .as_bytes()
        .iter()
        .chain(&size)
        .chain(&align)
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[test]
fn a_root_written_before_stored_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<[u64; 4]>()?;
        tx.get_mut(r)?[3] = 99;
        Ok(())
    })
    .unwrap();
    heap.checkpoint().unwrap();
    heap.close().unwrap();

    // Rewrite the heap header as an older txheap wrote it: identity kind 0, the fingerprint of
    // the compiler's type name, no description.
    let mut file = std::fs::read(&path).unwrap();
    let at = file
        .windows(8)
        .rposition(|w| w == b"TXHEAPHH")
        .expect("heap header");
    file[at + 24..at + 32].copy_from_slice(&legacy::<[u64; 4]>().to_le_bytes());
    file[at + 36..at + 40].copy_from_slice(&0u32.to_le_bytes());
    file[at + 64..at + 4096].fill(0);
    let crc = crc32fast::hash(&file[at..at + 60]);
    file[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &file).unwrap();

    let heap = Heap::open(&path, Options::new()).unwrap();
    assert_eq!(
        heap.read(|r| Ok(r.get(r.root::<[u64; 4]>()?)?[3])).unwrap(),
        99
    );
    let err = heap.read(|r| r.root::<[u32; 8]>()).unwrap_err();
    assert!(err.to_string().contains("before Stored"), "{err}");
}

mod grown {
    // `first::Root` with a field added: what a new version of a program declares.
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Root {
        pub count: u64,
        pub head: txheap::PPtr<u64>,
        pub limit: u64,
    }
}

/// `Tx::migrate_root` changes the root's type in a transaction: the old type is then refused and
/// the new one accepted, across a reopen, with the old fields carried over; an aborted migration
/// changes nothing; a migration from the wrong type, or with no root, or to a type too large, is
/// refused by name with nothing changed.
#[test]
fn migrate_root_changes_the_type_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("migrate.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    // No root yet: nothing to migrate.
    let e = heap
        .transaction(|tx| {
            tx.migrate_root(|o: &first::Root| grown::Root {
                count: o.count,
                head: o.head,
                limit: 0,
            })
        })
        .unwrap_err();
    assert!(matches!(e, Error::NoRoot), "{e}");
    let head = heap
        .transaction(|tx| {
            let r = tx.root::<first::Root>()?;
            let head = tx.alloc(41u64)?;
            *tx.get_mut(r)? = first::Root { count: 7, head };
            Ok(head)
        })
        .unwrap();
    // The wrong old type: refused, naming the stored layout.
    let e = heap
        .transaction(|tx| {
            tx.migrate_root(|o: &[u64; 2]| grown::Root {
                count: o[0],
                head,
                limit: 0,
            })
        })
        .unwrap_err();
    assert!(matches!(e, Error::RootTypeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("count: u64 @0"), "{e}");
    // A new type larger than a root may be: refused before anything is staged.
    let e = heap
        .transaction(|tx| tx.migrate_root(|_: &first::Root| [0u64; 513]))
        .unwrap_err();
    assert!(matches!(e, Error::RootTooLarge { .. }), "{e}");
    // An aborted migration leaves the old type in place.
    let e = heap
        .transaction(|tx| {
            tx.migrate_root(|o: &first::Root| grown::Root {
                count: o.count,
                head: o.head,
                limit: 9,
            })?;
            Err::<(), _>(Error::NoRoot) // any error aborts
        })
        .unwrap_err();
    assert!(matches!(e, Error::NoRoot), "{e}");
    assert_eq!(
        heap.read(|r| Ok(r.get(r.root::<first::Root>()?)?.count))
            .unwrap(),
        7
    );
    // The migration itself.
    heap.transaction(|tx| {
        let r = tx.migrate_root(|o: &first::Root| grown::Root {
            count: o.count + 1,
            head: o.head,
            limit: 9,
        })?;
        assert_eq!(tx.get(r)?.limit, 9); // its own write, read back in the transaction
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    let v = heap
        .read(|r| Ok(*r.get(r.root::<grown::Root>()?)?))
        .unwrap();
    assert_eq!((v.count, v.head, v.limit), (8, head, 9));
    assert_eq!(heap.read(|r| Ok(*r.get(v.head)?)).unwrap(), 41);
    let e = heap
        .transaction(|tx| tx.root::<first::Root>().map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, Error::RootTypeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("limit: u64 @16"), "{e}");
    // Back to the smaller type: the bytes past it (where `limit` was) are zeroed.
    heap.transaction(|tx| {
        tx.migrate_root(|o: &grown::Root| first::Root {
            count: o.count,
            head: o.head,
        })
    })
    .unwrap();
    let (count, past) = heap
        .read(|r| {
            let root = r.root::<first::Root>()?;
            let past = *r.get(PPtr::<u64>::from_offset(root.offset() + 16))?;
            Ok((r.get(root)?.count, past))
        })
        .unwrap();
    assert_eq!((count, past), (8, 0));
}

mod pointee_v1 {
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Node {
        pub a: u32,
        pub b: u32,
    }
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Holder {
        pub node: txheap::PPtr<Node>,
        pub items: txheap::PPtr<[u32; 4]>,
    }
}

mod pointee_v2 {
    // The pointed-at struct's fields reordered.
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Node {
        pub b: u32,
        pub a: u32,
    }
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Holder {
        pub node: txheap::PPtr<Node>,
        pub items: txheap::PPtr<[u32; 4]>,
    }
}

mod pointee_v3 {
    // The pointed-at array's element type changed.
    pub use super::pointee_v1::Node;
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Holder {
        pub node: txheap::PPtr<Node>,
        pub items: txheap::PPtr<[u64; 4]>,
    }
}

#[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
#[repr(transparent)]
struct Wrap<T>(T);

/// A pointer's identity follows the layout of what it points at (its shape: pointers inside by
/// name only), not only its name: arrays, generic types, pointers to pointers and collections
/// of pointers differ with their target. (A review found `PPtr<[u8; 1]>` and
/// `PPtr<[u64; 512]>` one identity, and a root whose pointed-at struct had its fields reordered
/// opened silently, its values swapped.)
#[test]
fn a_pointer_identity_follows_its_target_layout() {
    use txheap::{PSlice, PVec};
    assert_ne!(<PPtr<[u8; 1]>>::ID, <PPtr<[u64; 512]>>::ID);
    assert_ne!(<PSlice<[u8; 2]>>::ID, <PSlice<[f64; 9]>>::ID);
    assert_ne!(<PPtr<PPtr<u8>>>::ID, <PPtr<PPtr<u64>>>::ID);
    assert_ne!(<PPtr<Wrap<u8>>>::ID, <PPtr<Wrap<u64>>>::ID);
    assert_ne!(<PVec<PPtr<[u8; 4]>>>::ID, <PVec<PPtr<[u64; 64]>>>::ID);
    assert_ne!(pointee_v1::Holder::ID, pointee_v2::Holder::ID);
    assert_ne!(pointee_v1::Holder::ID, pointee_v3::Holder::ID);
    // (A recursive type still has one.)
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
    #[repr(C)]
    struct List {
        next: PPtr<List>,
        items: PVec<PPtr<List>>,
    }
    assert_ne!(List::ID, 0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pointee.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    heap.transaction(|tx| {
        let node = tx.alloc(pointee_v1::Node { a: 1, b: 2 })?;
        let items = tx.alloc([1u32, 2, 3, 4])?;
        let r = tx.root::<pointee_v1::Holder>()?;
        *tx.get_mut(r)? = pointee_v1::Holder { node, items };
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    for r in [
        heap.read(|r| r.root::<pointee_v2::Holder>().map(|_| ())),
        heap.read(|r| r.root::<pointee_v3::Holder>().map(|_| ())),
    ] {
        assert!(matches!(r, Err(Error::RootTypeMismatch { .. })), "{r:?}");
    }
    let (a, b) = heap
        .read(|r| {
            let n = *r.get(r.get(r.root::<pointee_v1::Holder>()?)?.node)?;
            Ok((n.a, n.b))
        })
        .unwrap();
    assert_eq!((a, b), (1, 2));
}

/// A file written before pointer identities recorded the root's shape (a pointer by its
/// target's name) as its identity: it still opens with the same type, and the open leaves the
/// record as it was (so that the txheap that wrote it still reads it).
#[test]
fn a_root_recorded_before_pointer_identities_still_opens() {
    const LOG: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.heap");
    let heap = Heap::create(&path, Options::new().log_size(LOG)).unwrap();
    heap.transaction(|tx| {
        let node = tx.alloc(pointee_v1::Node { a: 5, b: 6 })?;
        let r = tx.root::<pointee_v1::Holder>()?;
        tx.get_mut(r)?.node = node;
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    // Write the shape where the identity is, as the txheap before this change did.
    let at = (8192 + LOG) as usize;
    let mut bytes = std::fs::read(&path).unwrap();
    let shape = pointee_v1::Holder::SHAPE;
    assert_ne!(shape, pointee_v1::Holder::ID);
    bytes[at + 24..at + 32].copy_from_slice(&shape.to_le_bytes());
    let crc = crc32fast::hash(&bytes[at..at + 60]);
    bytes[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    heap.transaction(|tx| {
        let r = tx.root::<pointee_v1::Holder>()?;
        let n = tx.get(r)?.node;
        assert_eq!(tx.get(n)?.a, 5);
        tx.get_mut(n)?.a = 7;
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after[at + 24..at + 32], shape.to_le_bytes());
    let r = txheap::inspect::check(&path, &mut |_, _| {}).unwrap();
    assert_eq!(
        r.verdict,
        txheap::inspect::Verdict::Clean,
        "{:?}",
        r.findings
    );
}

mod item_a {
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Item {
        pub x: u32,
        pub y: u32,
    }
}

mod item_b {
    // The same name and size; its fields swapped.
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Item {
        pub y: u32,
        pub x: u32,
    }
}

mod item_a2 {
    // Item declared again elsewhere, byte for byte: accepted.
    #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
    #[repr(C)]
    pub struct Item {
        pub x: u32,
        pub y: u32,
    }
}

const A_LAYOUT: &str = "Item (size 8, align 4; x: u32 @0, y: u32 @4)";
const B_LAYOUT: &str = "Item (size 8, align 4; y: u32 @0, x: u32 @4)";

/// A collection's element type refused names both layouts: the stored one comes from the
/// heap's type catalogue, recorded when the collection was made (a review found the message
/// naming only the stored identity, where the docs promised both layouts).
#[test]
fn a_collection_s_type_mismatch_names_both_layouts() {
    use txheap::{PBTreeMap, PHashMap, PVec};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tm.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let (v, h, b) = heap
        .transaction(|tx| {
            let v = PVec::<item_a::Item>::new(tx)?;
            v.push(tx, item_a::Item { x: 1, y: 2 })?;
            let h = PHashMap::<u64, item_a::Item>::new(tx)?;
            h.insert(tx, &1, &item_a::Item { x: 3, y: 4 })?;
            let b = PBTreeMap::<u64, item_a::Item>::new(tx)?;
            b.insert(tx, &5, &item_a::Item { x: 5, y: 6 })?;
            Ok((v, h, b))
        })
        .unwrap();
    let both = |e: Error, role: &str| {
        assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
        let t = e.to_string();
        assert!(t.contains(A_LAYOUT) && t.contains(B_LAYOUT), "{t}");
        assert!(t.contains(&format!("holds {role}s of {A_LAYOUT}")), "{t}");
    };
    // The same layout from another module: accepted.
    let got = heap
        .read(|r| v.cast::<PVec<item_a2::Item>>().get(r, 0))
        .unwrap()
        .unwrap();
    assert_eq!((got.x, got.y), (1, 2));
    // Through a read, and through a transaction.
    let e = heap
        .read(|r| v.cast::<PVec<item_b::Item>>().get(r, 0).map(|_| ()))
        .unwrap_err();
    both(e, "element");
    let e = heap
        .transaction(|tx| {
            v.cast::<PVec<item_b::Item>>()
                .push(tx, item_b::Item { x: 0, y: 0 })
        })
        .unwrap_err();
    both(e, "element");
    let e = heap
        .read(|r| {
            h.cast::<PHashMap<u64, item_b::Item>>()
                .get(r, &1)
                .map(|_| ())
        })
        .unwrap_err();
    both(e, "value");
    let e = heap
        .read(|r| b.cast::<PBTreeMap<u64, item_b::Item>>().len(r).map(|_| ()))
        .unwrap_err();
    both(e, "value");
    // The catalogue is in the file: after a reopen, read-only, it still names both.
    heap.close().unwrap();
    let ro = Heap::open_read_only(&path).unwrap();
    let e = ro
        .read(|r| v.cast::<PVec<item_b::Item>>().get(r, 0).map(|_| ()))
        .unwrap_err();
    both(e, "element");
}

/// The catalogue follows the root's description in the header page: recorded before the root
/// was set, then moved by `root` and by `migrate_root` (to a longer and to a shorter
/// description), it still names the stored layout, and the root's own description too.
#[test]
fn the_type_catalogue_moves_with_the_root_description() {
    use txheap::PVec;
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("cat.heap"), Options::new()).unwrap();
    let v = heap
        .transaction(|tx| {
            let v = PVec::<item_a::Item>::new(tx)?;
            v.push(tx, item_a::Item { x: 1, y: 2 })?;
            Ok(v)
        })
        .unwrap();
    let named = |heap: &Heap| {
        let e = heap
            .read(|r| v.cast::<PVec<item_b::Item>>().get(r, 0).map(|_| ()))
            .unwrap_err();
        assert!(e.to_string().contains(A_LAYOUT), "{e}");
    };
    named(&heap);
    heap.transaction(|tx| tx.root::<first::Root>().map(|_| ()))
        .unwrap();
    named(&heap);
    // Longer, then shorter, than `first::Root`'s description.
    heap.transaction(|tx| {
        tx.migrate_root(|o: &first::Root| grown::Root {
            count: o.count,
            head: o.head,
            limit: 0,
        })
        .map(|_| ())
    })
    .unwrap();
    named(&heap);
    heap.transaction(|tx| tx.migrate_root(|o: &grown::Root| o.count).map(|_| ()))
        .unwrap();
    named(&heap);
    // The root's description is whole, and a mismatch of the root names it.
    let e = heap
        .transaction(|tx| tx.root::<u32>().map(|_| ()))
        .unwrap_err();
    assert!(e.to_string().contains("u64 (size 8, align 8)"), "{e}");
}

/// A scope that made a collection and rolled back takes its catalogue record with it; the
/// transaction records the type again when it makes another (its cache of recorded types is
/// forgotten with the scope), and an aborted transaction records nothing.
#[test]
fn a_rolled_back_scope_or_an_aborted_transaction_records_no_type() {
    use txheap::PVec;
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("scope.heap"), Options::new()).unwrap();
    let stored = |heap: &Heap| {
        heap.read(|r| Ok(txheap::View::stored_description(r, item_a::Item::ID)))
            .unwrap()
    };
    let r: txheap::Result<()> = heap.transaction(|tx| {
        PVec::<item_a::Item>::new(tx)?;
        Err(Error::NoRoot)
    });
    assert!(r.is_err());
    assert_eq!(stored(&heap), None);
    heap.transaction(|tx| {
        let r: Result<(), Error> = tx.nested(|tx| {
            PVec::<item_a::Item>::new(tx)?;
            assert!(txheap::View::stored_description(tx, item_a::Item::ID).is_some());
            Err(Error::NoRoot)
        });
        assert!(r.is_err());
        assert_eq!(txheap::View::stored_description(tx, item_a::Item::ID), None);
        PVec::<item_a::Item>::new(tx).map(|_| ())
    })
    .unwrap();
    assert_eq!(stored(&heap).as_deref(), Some(A_LAYOUT));
}

/// A full catalogue (the header page holds about a hundred short records) records no more,
/// and a mismatch there says the layout was not recorded; nothing else in the page changes.
#[test]
fn a_full_type_catalogue_records_no_more() {
    use txheap::PVec;
    fn make<const N: usize>(tx: &mut txheap::Tx<'_>) -> txheap::Result<PPtr<PVec<[u8; N]>>> {
        PVec::<[u8; N]>::new(tx)
    }
    macro_rules! many {
        ($tx:expr, $($n:literal)*) => {{
            Ok(vec![$( make::<$n>($tx)?.offset() ),*])
        }};
    }
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("full.heap"), Options::new()).unwrap();
    heap.transaction(|tx| tx.root::<first::Root>().map(|_| ()))
        .unwrap();
    let made: Vec<u64> = heap
        .transaction(|tx| {
            many!(tx,
                1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
                31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57
                58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84
                85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101 102 103 104 105 106 107 108
                109 110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128
                129 130 131 132 133 134 135 136 137 138 139 140 141 142 143 144 145 146 147 148
                149 150)
        })
        .unwrap();
    let first_vec = PPtr::<PVec<[u8; 1]>>::from_offset(made[0]);
    let last_vec = PPtr::<PVec<[u8; 150]>>::from_offset(made[149]);
    heap.read(|r| {
        let e = first_vec.cast::<PVec<[u16; 1]>>().len(r).unwrap_err();
        assert!(e.to_string().contains("[u8; 1] (size 1, align 1)"), "{e}");
        let e = last_vec.cast::<PVec<[u16; 75]>>().len(r).unwrap_err();
        assert!(e.to_string().contains("layout not recorded"), "{e}");
        Ok(())
    })
    .unwrap();
    // The root's description is intact.
    let e = heap
        .transaction(|tx| tx.root::<u32>().map(|_| ()))
        .unwrap_err();
    assert!(e.to_string().contains("count: u64 @0"), "{e}");
}

/// The catalogue is informational: a transaction that fits the log with a collection of a type
/// already recorded fits it with one of a type not recorded yet (a review found the record's
/// own bytes refusing `new` as `TransactionTooLarge`, 65,592 bytes for a 65,536-byte log).
#[test]
fn a_catalogue_record_never_makes_a_transaction_too_large() {
    use txheap::PVec;
    let dir = tempfile::tempdir().unwrap();
    let log = 64 << 10;
    let heap = Heap::create(dir.path().join("tl.heap"), Options::new().log_size(log)).unwrap();
    let buf = heap
        .transaction(|tx| {
            PVec::<u64>::new(tx)?;
            tx.alloc_slice_zeroed::<u8>(256 << 10)
        })
        .unwrap();
    let mut fill = 0u8;
    let mut run = |n: usize, fresh: bool| -> txheap::Result<()> {
        fill = fill.wrapping_add(1).max(1);
        let data = vec![fill; n];
        heap.transaction(|tx| {
            tx.write_slice(buf, 0, &data)?;
            match fresh {
                true => PVec::<item_a::Item>::new(tx).map(|_| ()),
                false => PVec::<u64>::new(tx).map(|_| ()),
            }
        })
    };
    // The largest rewrite that fits beside a `new` of a recorded type.
    let mut n = log as usize;
    while n > 0 {
        match run(n, false) {
            Ok(()) => break,
            Err(Error::TransactionTooLarge { .. }) => n -= 64,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n > 0);
    let fresh = run(n, true);
    assert!(fresh.is_ok(), "{fresh:?}");
    assert!(run(n, false).is_ok());
}

#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Debug,
    txheap::bytemuck::Pod,
    txheap::bytemuck::Zeroable,
    Stored,
)]
#[repr(C, align(128))]
struct Wide {
    v: [u64; 16],
}

/// Above `ALIGN_MAX` (64) a map's key or value type is refused by `new` and by every
/// operation on a zeroed handle, before anything is committed. (A review found a
/// `PBTreeMap<Wide, u64>` made, an entry inserted and committed, and every later lookup
/// failing with `Misaligned`; the hash map refused only on the first operation.)
#[test]
fn maps_of_types_aligned_above_the_limit_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("wide.heap"), Options::new()).unwrap();
    let wide = Wide { v: [7; 16] };
    let refused =
        |r: &Result<(), Error>| matches!(r, Err(Error::UnsupportedAlignment { align: 128, .. }));
    let r = heap.transaction(|tx| txheap::PBTreeMap::<Wide, u64>::new(tx).map(|_| ()));
    assert!(refused(&r), "B-tree key: {r:?}");
    let r = heap.transaction(|tx| txheap::PBTreeMap::<u64, Wide>::new(tx).map(|_| ()));
    assert!(refused(&r), "B-tree value: {r:?}");
    let r = heap.transaction(|tx| txheap::PHashMap::<u64, Wide>::new(tx).map(|_| ()));
    assert!(refused(&r), "hash map value: {r:?}");
    // A zeroed handle (the root) is an empty map: its first insert is refused, nothing commits.
    let r = heap.transaction(|tx| {
        let m = tx.root::<txheap::PBTreeMap<Wide, u64>>()?;
        m.insert(tx, &wide, &1).map(|_| ())
    });
    assert!(refused(&r), "B-tree insert: {r:?}");
    let r = heap.read(|r| {
        let m = r.root::<txheap::PBTreeMap<Wide, u64>>()?;
        m.get(r, &wide).map(|_| ())
    });
    assert!(
        matches!(
            r,
            Err(Error::NoRoot) | Err(Error::UnsupportedAlignment { .. })
        ),
        "{r:?}"
    );
}

/// A root that is a collection, an array or a pointer is described with its type parameters,
/// so the two layouts a mismatch names differ where the types do. (A review found
/// `PVec<u32>` against `PVec<u64>` described as "PVec (size 32, align 8)" twice, and
/// `[u8; 32]` against `[i8; 32]` as "array (size 32, align 1)" twice.)
#[test]
fn a_root_mismatch_of_generic_types_names_their_parameters() {
    use txheap::PVec;
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("gen.heap"), Options::new()).unwrap();
    heap.transaction(|tx| tx.root::<PVec<u32>>().map(|_| ()))
        .unwrap();
    let e = heap
        .transaction(|tx| tx.root::<PVec<u64>>())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("PVec<u32> (size 32") && e.contains("PVec<u64> (size 32"),
        "{e}"
    );
    heap.transaction(|tx| tx.migrate_root(|_: &PVec<u32>| [0u8; 32]).map(|_| ()))
        .unwrap();
    let e = heap
        .transaction(|tx| tx.root::<[i8; 32]>())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[u8; 32] (size 32") && e.contains("[i8; 32] (size 32"),
        "{e}"
    );
    let e = heap
        .transaction(|tx| tx.root::<[PPtr<u16>; 4]>())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[PPtr<u16>; 4] (size 32"), "{e}");
}
