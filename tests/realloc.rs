//! `Tx::realloc_slice` of large objects: growth where the object is (inside its last chunk,
//! over free chunks after it, or by growing the heap when it ends the heap), moves where it
//! cannot, and every path keeping the kept bytes, zeroing the rest, rolling back whole with an
//! aborted transaction and leaving a file `inspect::check` finds clean after reopen.

use txheap::{inspect, Error, Heap, Options, PSlice};

const KIB: u64 = 1024;

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) >> 3) as u8 | 1
}

/// A slice of `len` bytes holding the pattern.
fn make(heap: &Heap, len: u64) -> PSlice<u8> {
    heap.transaction(|tx| {
        let s = tx.alloc_slice_zeroed::<u8>(len)?;
        for (i, b) in tx.slice_mut(s)?.iter_mut().enumerate() {
            *b = pattern(i as u64);
        }
        Ok(s)
    })
    .unwrap()
}

/// `s` holds the pattern in its first `kept` bytes and zeros after them.
fn holds(heap: &Heap, s: PSlice<u8>, kept: u64) {
    heap.read(|r| {
        let b = r.slice(s)?;
        assert_eq!(b.len() as u64, s.len());
        for (i, &x) in b.iter().enumerate() {
            let want = if (i as u64) < kept {
                pattern(i as u64)
            } else {
                0
            };
            assert_eq!(x, want, "byte {i} of {}", s.len());
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn large_objects_grow_in_place_where_the_space_after_them_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("realloc.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    // At the heap's end: grows in place, into its last chunk, then past the heap's end.
    let a = make(&heap, 100 * KIB);
    let used = heap.stats().unwrap().used_bytes;
    let a2 = heap
        .transaction(|tx| tx.realloc_slice(a, a.len(), 200 * KIB))
        .unwrap();
    assert_eq!(a2.offset(), a.offset(), "inside its chunk");
    holds(&heap, a2, 100 * KIB);
    let a3 = heap
        .transaction(|tx| tx.realloc_slice(a2, 150 * KIB, 3 << 20))
        .unwrap();
    assert_eq!(a3.offset(), a.offset(), "over the chunks after it");
    holds(&heap, a3, 100 * KIB); // (its bytes from 100 KiB were zero already)
    let grown = heap.stats().unwrap().used_bytes;
    assert!(grown >= used + (3 << 20) - 256 * KIB, "{used} -> {grown}");
    // Another object right after it: the next growth moves.
    let b = make(&heap, 300 * KIB);
    let a4 = heap
        .transaction(|tx| tx.realloc_slice(a3, a3.len(), 4 << 20))
        .unwrap();
    assert_ne!(
        a4.offset(),
        a3.offset(),
        "the chunks after it are taken: it moves"
    );
    holds(&heap, a4, 100 * KIB);
    // `a3`'s old place (12 chunks) is free now, and `b`'s after it once `b` goes: `c` and `d`
    // take the start of that space.
    heap.transaction(|tx| tx.free_slice(b)).unwrap();
    let c = make(&heap, 600 * KIB);
    let d = make(&heap, 600 * KIB);
    heap.transaction(|tx| tx.free_slice(d)).unwrap();
    // `c`'s next chunks are `d`'s, free since the last commit: it grows over them.
    let c2 = heap
        .transaction(|tx| tx.realloc_slice(c, c.len(), 1100 * KIB))
        .unwrap();
    assert_eq!(c2.offset(), c.offset(), "over a freed neighbour");
    holds(&heap, c2, 600 * KIB);
    // An aborted growth leaves no trace: the object's size and the free space as they were.
    let before = heap.stats().unwrap();
    let r: txheap::Result<()> = heap.transaction(|tx| {
        let g = tx.realloc_slice(c2, c2.len(), 3 << 20)?;
        assert_eq!(g.offset(), c2.offset());
        tx.slice_mut(g)?[(3 << 20) - 1] = 9;
        Err(Error::NoRoot)
    });
    assert!(matches!(r, Err(Error::NoRoot)));
    let after = heap.stats().unwrap();
    assert_eq!(
        (
            before.used_bytes,
            before.free_bytes,
            before.heap_bytes,
            before.largest_free_extent
        ),
        (
            after.used_bytes,
            after.free_bytes,
            after.heap_bytes,
            after.largest_free_extent
        )
    );
    holds(&heap, c2, 600 * KIB);
    // A neighbour allocated in the same transaction as the growth is never overlapped.
    let (e, f) = heap
        .transaction(|tx| {
            let e = tx.realloc_slice(c2, c2.len(), 2 << 20)?;
            let f = tx.alloc_slice_zeroed::<u8>(512 * KIB)?;
            tx.slice_mut(f)?.fill(0xEE);
            Ok((e, f))
        })
        .unwrap();
    let (e_end, f_end) = (e.offset() + e.len(), f.offset() + f.len());
    assert!(
        e_end <= f.offset() || f_end <= e.offset(),
        "{e:?} and {f:?} overlap"
    );
    holds(&heap, e, 600 * KIB);
    heap.read(|r| {
        assert!(r.slice(f)?.iter().all(|&x| x == 0xEE));
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    let report = inspect::check(&path, &mut |_, _| {}).unwrap();
    assert_eq!(
        report.verdict,
        inspect::Verdict::Clean,
        "{:?}",
        report.findings
    );
    let heap = Heap::open(&path, Options::new()).unwrap();
    holds(&heap, a4, 100 * KIB);
    holds(&heap, e, 600 * KIB);
    // The grown objects free whole.
    heap.transaction(|tx| {
        tx.free_slice(a4)?;
        tx.free_slice(e)?;
        tx.free_slice(f)
    })
    .unwrap();
    assert_eq!(heap.stats().unwrap().used_bytes, 0);
}
