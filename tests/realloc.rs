//! `Tx::realloc_slice` of large objects: growth where the object is (inside its last chunk,
//! over free chunks after it, or by growing the heap when it ends the heap), moves where it
//! cannot, shrinking that frees the chunks no longer needed (or moves to a small block), and
//! every path keeping the kept bytes, zeroing the rest, rolling back whole with an
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

/// Close `heap`, check the file clean (`inspect::check`), and open it again.
fn reopen_checked(heap: Heap, path: &std::path::Path) -> Heap {
    heap.close().unwrap();
    let report = inspect::check(path, &mut |_, _| {}).unwrap();
    assert_eq!(
        report.verdict,
        inspect::Verdict::Clean,
        "{:?}",
        report.findings
    );
    Heap::open(path, Options::new()).unwrap()
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
    let heap = reopen_checked(heap, &path);
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

/// The stats that say where space is: used, free, the heap's size, the largest free extent.
fn space(heap: &Heap) -> (u64, u64, u64, u64) {
    let s = heap.stats().unwrap();
    (
        s.used_bytes,
        s.free_bytes,
        s.heap_bytes,
        s.largest_free_extent,
    )
}

#[test]
fn large_objects_shrink_in_place_and_give_their_chunks_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrink.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let a = make(&heap, 4 << 20); // 16 chunks
    let b = make(&heap, 300 * KIB); // after it, so `a`'s freed tail is not the heap's end
    let (used, free, heap_bytes, _) = space(&heap);
    assert!(
        free < 13 << 18,
        "the heap has {free} bytes free before the shrink"
    );
    // An aborted shrink leaves no trace.
    let before = space(&heap);
    let r: txheap::Result<()> = heap.transaction(|tx| {
        let s = tx.realloc_slice(a, a.len(), 600 * KIB)?;
        assert_eq!(s.offset(), a.offset());
        Err(Error::NoRoot)
    });
    assert!(matches!(r, Err(Error::NoRoot)));
    assert_eq!(space(&heap), before);
    holds(&heap, a, 4 << 20);
    // 16 chunks to 3: it stays, and 13 chunks are free once the transaction commits, not
    // before: an allocation of exactly 13 chunks in the same transaction, which best fit
    // would put there, goes elsewhere.
    let (a2, c) = heap
        .transaction(|tx| {
            let s = tx.realloc_slice(a, 600 * KIB, 600 * KIB)?;
            assert_eq!(tx.usable_size(s.as_ptr()), Some(600 * KIB));
            let c = tx.alloc_slice_zeroed::<u8>(13 << 18)?;
            tx.slice_mut(c)?.fill(0xCC);
            Ok((s, c))
        })
        .unwrap();
    assert_eq!(a2.offset(), a.offset(), "a shrink stays where it is");
    let (c_at, a_tail) = (c.offset(), a.offset() + 3 * 256 * KIB);
    assert!(
        c_at + c.len() <= a.offset() || c_at >= a.offset() + (4 << 20),
        "an allocation in the shrinking transaction took the freed chunks: {c_at:#x}"
    );
    holds(&heap, a2, 600 * KIB);
    let (used2, free2, _, largest2) = space(&heap);
    assert_eq!(
        used2,
        used - (4 << 20) + 600 * KIB + (13 << 18),
        "used: {used}"
    );
    assert!(free2 >= 13 << 18, "free {free} -> {free2}");
    assert!(largest2 >= 13 << 18, "the freed tail is one free extent");
    // The next transaction reuses them: an object of 13 chunks fits exactly there (best fit).
    let d = make(&heap, 13 << 18);
    assert_eq!(d.offset(), a_tail, "the freed tail is reused");
    // Shrunk to a size class: it moves to a small block, and all of its chunks are freed.
    let (used3, free3, _, _) = space(&heap);
    let a3 = heap
        .transaction(|tx| tx.realloc_slice(a2, 1000, 1000))
        .unwrap();
    assert_ne!(a3.offset(), a2.offset(), "a small size moves to a block");
    holds(&heap, a3, 1000);
    let (used4, free4, _, _) = space(&heap);
    let block = heap
        .transaction(|tx| Ok(tx.usable_size(a3.as_ptr())))
        .unwrap()
        .unwrap();
    assert_eq!(used4, used3 - 600 * KIB + block, "used: {used3} -> {used4}");
    // Its 3 chunks are free; at most one went to a new run for the block's class.
    assert!(free4 >= free3 + (2 << 18), "free: {free3} -> {free4}");
    // Reopened: the chunk tables say the same, and the file checks clean.
    let heap = reopen_checked(heap, &path);
    holds(&heap, a3, 1000);
    holds(&heap, b, 300 * KIB);
    holds(&heap, d, 13 << 18);
    heap.read(|r| {
        assert!(r.slice(c)?.iter().all(|&x| x == 0xCC));
        Ok(())
    })
    .unwrap();
    heap.transaction(|tx| {
        for s in [a3, b, c, d] {
            tx.free_slice(s)?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(heap.stats().unwrap().used_bytes, 0);
    assert!(heap_bytes <= space(&heap).2);
}

#[test]
fn a_vector_shrunk_to_fit_gives_its_chunks_back() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("pvec.heap"), Options::new()).unwrap();
    let v = heap
        .transaction(|tx| {
            let v = txheap::PVec::<u64>::new(tx)?;
            v.extend_from_slice(tx, &(0..1_000_000).collect::<Vec<u64>>())?;
            Ok(v)
        })
        .unwrap();
    let full = heap.stats().unwrap().used_bytes;
    assert!(full >= 8_000_000, "{full}");
    // Truncated, it keeps its buffer; shrunk to fit, it gives the chunks back.
    heap.transaction(|tx| v.truncate(tx, 100_000)).unwrap();
    assert_eq!(heap.stats().unwrap().used_bytes, full);
    let free_before = heap.stats().unwrap().free_bytes;
    heap.transaction(|tx| v.shrink_to_fit(tx)).unwrap();
    let shrunk = heap.stats().unwrap().used_bytes;
    assert!(shrunk < 800_000 + 4 * KIB, "{full} -> {shrunk}");
    // The chunks past 800,000 bytes (28 of the 32) are free space now.
    let free_after = heap.stats().unwrap().free_bytes;
    assert!(
        free_after >= free_before + (28 << 18),
        "free: {free_before} -> {free_after}"
    );
    heap.transaction(|tx| {
        v.truncate(tx, 10)?;
        v.shrink_to_fit(tx)
    })
    .unwrap();
    let small = heap.stats().unwrap().used_bytes;
    assert!(small < 4 * KIB, "{shrunk} -> {small}");
    heap.read(|r| {
        assert_eq!(v.as_slice(r)?, (0..10).collect::<Vec<u64>>());
        assert_eq!(r.get(v)?.capacity(), 10);
        v.check(r)
    })
    .unwrap();
    heap.transaction(|tx| {
        v.clear(tx)?;
        v.shrink_to_fit(tx)
    })
    .unwrap();
    assert_eq!(heap.read(|r| Ok(r.get(v)?.capacity())).unwrap(), 0);
    assert!(
        heap.stats().unwrap().used_bytes < 64,
        "only the header is left"
    );
}

/// `realloc_slice` takes only the start of a live allocation, as `free` does: a freed block
/// (committed, or freed earlier in the same transaction), a pointer inside a small or a large
/// object, and a pointer into a run's bitmap are refused with `InvalidFree`, and no live
/// object changes (before, a pointer inside an object was "reallocated" where it was and the
/// commit zeroed the object's bytes past it; a freed block came back as live space that
/// another allocation could take too).
#[test]
fn realloc_refuses_what_is_not_a_live_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("r.heap"), Options::new()).unwrap();
    let (a, b) = heap
        .transaction(|tx| Ok((tx.alloc_slice(&[1u64; 8])?, tx.alloc_slice(&[2u64; 8])?)))
        .unwrap();
    let large = make(&heap, 600 * KIB);
    heap.transaction(|tx| tx.free_slice(a)).unwrap();
    let inner = PSlice::<u64>::from_raw_parts(b.offset() + 16, 2);
    let in_large = PSlice::<u64>::from_raw_parts(large.offset() + 4096, 16);
    let refused = |r: Result<PSlice<u64>, Error>, what: &str| {
        assert!(matches!(r, Err(Error::InvalidFree { .. })), "{what}: {r:?}");
    };
    for (s, keep, len, what) in [
        (a, 8, 8, "freed"),
        (a, 8, 2, "freed, shrunk"),
        (inner, 2, 4, "inside"),
        (inner, 2, 40, "inside, grown"),
        (in_large, 16, 32, "inside a large object"),
        (in_large, 16, 4, "inside a large object, shrunk"),
    ] {
        refused(heap.transaction(|tx| tx.realloc_slice(s, keep, len)), what);
    }
    refused(
        heap.transaction(|tx| {
            let c = tx.alloc_slice(&[3u64; 4])?;
            tx.free_slice(c)?;
            tx.realloc_slice(c, 4, 8)
        }),
        "freed in the same transaction",
    );
    assert_eq!(
        heap.read(|r| Ok(r.slice(b)?.to_vec())).unwrap(),
        vec![2u64; 8]
    );
    holds(&heap, large, 600 * KIB);
    // The start of a live object still works.
    let b2 = heap.transaction(|tx| tx.realloc_slice(b, 8, 12)).unwrap();
    assert_eq!(
        heap.read(|r| Ok(r.slice(b2)?.to_vec())).unwrap(),
        [[2u64; 8].as_slice(), &[0u64; 4]].concat()
    );
}

/// A resize the log cannot take: a shrink whose zeros do not fit is refused before it changes
/// anything (the object stays whole, and the transaction commits the rest); a growth whose
/// zeros do not fit after it took the chunks behind the object makes the transaction
/// uncommittable (`AllocatorInterrupted`), and nothing of it is committed. (A review found the
/// refused shrink committed: the freed tail was then allocated again under the caller's slice,
/// and a write through it landed in the other object.)
#[test]
fn a_resize_refused_by_the_log_never_commits_half_done() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        dir.path().join("r.heap"),
        Options::new().log_size(MIB).max_size(1 << 30),
    )
    .unwrap();
    let s = heap
        .transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(8 * MIB)?;
            tx.slice_mut(s)?.fill(0xAB);
            Ok(s)
        })
        .unwrap();
    let blocks = |heap: &Heap| heap.read(|r| r.allocations()).unwrap();
    // A shrink keeping nothing: 4 MiB of zeros through a 1 MiB log.
    heap.transaction(|tx| {
        let e = tx.realloc_slice(s, 0, 4 * MIB);
        assert!(matches!(e, Err(Error::TransactionTooLarge { .. })), "{e:?}");
        tx.alloc(1u64).map(|_| ())
    })
    .unwrap();
    assert!(
        blocks(&heap).contains(&(s.offset(), 8 * MIB)),
        "{:?}",
        blocks(&heap)
    );
    let t = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(4 * MIB))
        .unwrap();
    assert!(
        t.offset() >= s.offset() + s.len() || t.offset() + t.len() <= s.offset(),
        "a new object inside the old one"
    );
    // A growth keeping nothing: the chunks after it are taken, then 8 MiB of zeros refused.
    let g = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(8 * MIB))
        .unwrap();
    let before = blocks(&heap);
    let r = heap.transaction(|tx| {
        let e = tx.realloc_slice(g, 0, 12 * MIB);
        assert!(matches!(e, Err(Error::TransactionTooLarge { .. })), "{e:?}");
        Ok(())
    });
    assert!(
        matches!(r, Err(Error::AllocatorInterrupted { .. })),
        "{r:?}"
    );
    assert_eq!(blocks(&heap), before);
    let all = heap
        .read(|r| Ok(r.slice(s)?.iter().all(|&b| b == 0xAB)))
        .unwrap();
    assert!(all, "the first object changed");
}

/// A slice whose byte count overflows a `u64` is larger than any object: `ObjectTooLarge`, as a
/// slightly smaller one is (a review found `OutOfSpace`, which says a larger `max_size` helps).
#[test]
fn an_overflowing_slice_length_is_object_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("o.heap"), Options::new()).unwrap();
    let bytes = heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 62).map(|_| ()));
    assert!(
        matches!(bytes, Err(Error::ObjectTooLarge { .. })),
        "{bytes:?}"
    );
    let words = heap.transaction(|tx| tx.alloc_slice_zeroed::<u64>(1 << 62).map(|_| ()));
    assert!(
        matches!(words, Err(Error::ObjectTooLarge { .. })),
        "{words:?}"
    );
    let s = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u64>(4))
        .unwrap();
    let re = heap.transaction(|tx| tx.realloc_slice(s, 4, 1 << 62).map(|_| ()));
    assert!(matches!(re, Err(Error::ObjectTooLarge { .. })), "{re:?}");
    assert!(!heap.is_poisoned());
}
