//! Property tests of the allocator against a model: random transactions of allocations and
//! frees of random sizes (small classes, large extents), some aborted. After every transaction:
//! live blocks never overlap, every live block still holds its bytes, and the heap reopens to the
//! same live set and the same figures.

use std::collections::BTreeMap;

use proptest::prelude::*;
use txheap::{Error, Heap, Options, PSlice};

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![1u64..200, 200u64..5000, 5000u64..70_000, 70_000u64..600_000].prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
    ]
}

/// One transaction: ops, and whether it aborts at the end.
fn txn() -> impl Strategy<Value = (Vec<Op>, bool)> {
    (prop::collection::vec(op(), 1..8), prop::bool::weighted(0.2))
}

fn fill_byte(seq: u64) -> u8 {
    (seq % 251) as u8 + 1
}

fn check(heap: &Heap, live: &BTreeMap<u64, (u64, u64)>) {
    // No overlaps in the model's offsets (the heap handed them out).
    let mut end = 0;
    for (&off, &(len, _)) in live {
        assert!(
            off >= end,
            "allocation at {off} overlaps the previous one ending at {end}"
        );
        end = off + len.max(1);
    }
    heap.read(|r| {
        for (&off, &(len, seq)) in live {
            let s = r.slice(PSlice::<u8>::from_raw_parts(off, len))?;
            assert!(
                s.iter().all(|&b| b == fill_byte(seq)),
                "allocation {off}+{len} damaged"
            );
        }
        Ok(())
    })
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn allocator_matches_model(txns in prop::collection::vec(txn(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.heap");
        let opts = Options::new().initial_size(1 << 20).log_size(4 << 20).max_size(1 << 30);
        let mut heap = Heap::create(&path, opts.clone()).unwrap();
        let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut seq = 0u64;
        for (i, (ops, abort)) in txns.iter().enumerate() {
            let mut next = live.clone();
            let r: txheap::Result<()> = heap.transaction(|tx| {
                for op in ops {
                    match *op {
                        Op::Alloc(len) => {
                            seq += 1;
                            let s = tx.alloc_slice_zeroed::<u8>(len)?;
                            tx.slice_mut(s)?.fill(fill_byte(seq));
                            assert!(next.insert(s.offset(), (len, seq)).is_none(), "offset handed out twice");
                        }
                        Op::Free(k) if !next.is_empty() => {
                            let off = *next.keys().nth(k % next.len()).unwrap();
                            next.remove(&off);
                            tx.free_slice(PSlice::<u8>::from_raw_parts(off, 0))?;
                        }
                        Op::Free(_) => {}
                    }
                }
                if *abort { Err(Error::NoRoot) } else { Ok(()) }
            });
            match r {
                Ok(()) => live = next,
                Err(Error::NoRoot) => {}
                Err(e) => panic!("transaction {i}: {e}"),
            }
            check(&heap, &live);
            let used: u64 = heap.stats().unwrap().used_bytes;
            let model_min: u64 = live.values().map(|&(len, _)| len).sum();
            prop_assert!(used >= model_min, "stats used {} < model {}", used, model_min);
            if i % 6 == 5 {
                let before = heap.stats().unwrap();
                drop(heap);
                heap = Heap::open(&path, opts.clone()).unwrap();
                let after = heap.stats().unwrap();
                prop_assert_eq!(before.used_bytes, after.used_bytes);
                prop_assert_eq!(before.free_bytes, after.free_bytes);
                prop_assert_eq!(before.heap_bytes, after.heap_bytes);
                prop_assert_eq!(before.classes, after.classes);
                check(&heap, &live);
            }
        }
        // Free everything: all space is free again and usable as one extent.
        heap.transaction(|tx| {
            for &off in live.keys() {
                tx.free_slice(PSlice::<u8>::from_raw_parts(off, 0))?;
            }
            Ok(())
        }).unwrap();
        let st = heap.stats().unwrap();
        prop_assert_eq!(st.used_bytes, 0);
    }
}
