//! Nested transactions (`Tx::nested`) against a model: random transactions of allocations,
//! frees, rewrites and root writes, some inside nested scopes (two levels deep) that keep their
//! changes, return an error or panic. A scope that does not keep its changes must leave the
//! transaction exactly as it was before the scope: the model drops the scope's copy. After every
//! transaction the live objects hold their bytes, the heap's own list of live blocks is exactly
//! the model's, and every few transactions the heap reopens to the same figures.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use proptest::prelude::*;
use txheap::{Error, Heap, Options, PSlice, Tx};

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64),
    Free(usize),
    /// Rewrite object `k` with a new fill byte.
    Write(usize),
    /// Write the root's word.
    Root(u64),
    /// A nested scope and how it ends.
    Nested(Vec<Op>, End),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Keep,
    Err,
    Panic,
}

fn leaf() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![1u64..200, 200u64..5000, 5000u64..70_000, 70_000u64..300_000].prop_map(Op::Alloc),
        2 => any::<usize>().prop_map(Op::Free),
        2 => any::<usize>().prop_map(Op::Write),
        1 => any::<u64>().prop_map(Op::Root),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![2 => Just(End::Keep), 2 => Just(End::Err), 1 => Just(End::Panic)]
}

fn op() -> impl Strategy<Value = Op> {
    let inner = prop_oneof![
        4 => leaf(),
        1 => (prop::collection::vec(leaf(), 1..5), end()).prop_map(|(o, e)| Op::Nested(o, e)),
    ];
    prop_oneof![
        3 => leaf(),
        2 => (prop::collection::vec(inner, 1..6), end()).prop_map(|(o, e)| Op::Nested(o, e)),
    ]
}

/// One transaction: ops, and whether it aborts at the end.
fn txn() -> impl Strategy<Value = (Vec<Op>, bool)> {
    (
        prop::collection::vec(op(), 1..8),
        prop::bool::weighted(0.15),
    )
}

fn fill_byte(seq: u64) -> u8 {
    (seq % 251) as u8 + 1
}

/// The model: live objects (offset -> (length, fill sequence)) and the root word.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    live: BTreeMap<u64, (u64, u64)>,
    root: u64,
}

/// An error a scope or a transaction may meet on its own (the log's budget of a 4 MiB log):
/// the model then drops what that scope or transaction did.
fn budget(e: &Error) -> bool {
    matches!(
        e,
        Error::TransactionTooLarge { .. } | Error::AllocatorInterrupted { .. }
    )
}

/// Run `ops` in `tx`, changing `m` as the heap should change. Returns the first error.
fn run(tx: &mut Tx<'_>, ops: &[Op], m: &mut Model, seq: &mut u64) -> txheap::Result<()> {
    for op in ops {
        match op {
            Op::Alloc(len) => {
                *seq += 1;
                let s = tx.alloc_slice_zeroed::<u8>(*len)?;
                tx.slice_mut(s)?.fill(fill_byte(*seq));
                for (&o, &(l, _)) in &m.live {
                    assert!(
                        s.offset() + len <= o || o + l <= s.offset(),
                        "new object {}+{len} overlaps live {o}+{l}",
                        s.offset()
                    );
                }
                assert!(m.live.insert(s.offset(), (*len, *seq)).is_none());
            }
            Op::Free(k) if !m.live.is_empty() => {
                let off = *m.live.keys().nth(k % m.live.len()).unwrap();
                tx.free_slice(PSlice::<u8>::from_raw_parts(off, 0))?;
                m.live.remove(&off);
            }
            Op::Write(k) if !m.live.is_empty() => {
                let (&off, &(len, _)) = m.live.iter().nth(k % m.live.len()).unwrap();
                *seq += 1;
                tx.slice_mut(PSlice::<u8>::from_raw_parts(off, len))?
                    .fill(fill_byte(*seq));
                m.live.insert(off, (len, *seq));
            }
            Op::Free(_) | Op::Write(_) => {}
            Op::Root(v) => {
                let r = tx.root::<u64>()?;
                tx.set(r, *v)?;
                m.root = *v;
            }
            Op::Nested(inner, end) => {
                let mut copy = m.clone();
                let end = *end;
                let r = catch_unwind(AssertUnwindSafe(|| {
                    tx.nested(|tx| {
                        run(tx, inner, &mut copy, seq)?;
                        match end {
                            End::Keep => Ok(()),
                            End::Err => Err(Error::NoRoot),
                            End::Panic => panic!("a nested scope panics"),
                        }
                    })
                }));
                match r {
                    Ok(Ok(())) => *m = copy,
                    Ok(Err(Error::NoRoot)) => assert_eq!(end, End::Err),
                    Ok(Err(e)) if budget(&e) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => assert_eq!(end, End::Panic),
                }
                // Whatever happened inside, the transaction's view is the model's.
                see(tx, m)?;
            }
        }
    }
    Ok(())
}

/// The transaction's view matches the model.
fn see(tx: &mut Tx<'_>, m: &Model) -> txheap::Result<()> {
    for (&off, &(len, seq)) in &m.live {
        let s = tx.slice(PSlice::<u8>::from_raw_parts(off, len))?;
        assert!(
            s.iter().all(|&b| b == fill_byte(seq)),
            "object {off}+{len} does not hold its bytes in the transaction"
        );
        assert!(
            tx.usable_size(PSlice::<u8>::from_raw_parts(off, len).as_ptr())
                .is_some_and(|u| u >= len),
            "object {off}+{len} is not live in the transaction"
        );
    }
    Ok(())
}

/// The committed heap matches the model.
fn check(heap: &Heap, m: &Model) {
    heap.read(|r| {
        for (&off, &(len, seq)) in &m.live {
            let s = r.slice(PSlice::<u8>::from_raw_parts(off, len))?;
            assert!(
                s.iter().all(|&b| b == fill_byte(seq)),
                "allocation {off}+{len} damaged"
            );
        }
        let blocks: Vec<u64> = r.allocations()?.into_iter().map(|(o, _)| o).collect();
        let model: Vec<u64> = m.live.keys().copied().collect();
        assert_eq!(blocks, model, "the heap's live blocks are not the model's");
        if m.root != 0 {
            assert_eq!(*r.get(r.root::<u64>()?)?, m.root, "root word");
        }
        Ok(())
    })
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn nested_scopes_match_the_model(txns in prop::collection::vec(txn(), 1..20), none in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.heap");
        let durability = if none { txheap::Durability::None } else { txheap::Durability::Full };
        let opts = Options::new()
            .initial_size(1 << 20)
            .log_size(4 << 20)
            .max_size(1 << 30)
            .durability(durability);
        let mut heap = Heap::create(&path, opts.clone()).unwrap();
        let mut m = Model::default();
        let mut seq = 0u64;
        for (i, (ops, abort)) in txns.iter().enumerate() {
            let mut next = m.clone();
            let r: txheap::Result<()> = heap.transaction(|tx| {
                run(tx, ops, &mut next, &mut seq)?;
                if *abort { Err(Error::NoRoot) } else { Ok(()) }
            });
            match r {
                Ok(()) => m = next,
                Err(Error::NoRoot) => {}
                Err(e) if budget(&e) => {}
                Err(e) => panic!("transaction {i}: {e}"),
            }
            check(&heap, &m);
            if i % 5 == 4 {
                let before = heap.stats().unwrap();
                drop(heap);
                heap = Heap::open(&path, opts.clone()).unwrap();
                let after = heap.stats().unwrap();
                prop_assert_eq!(before.used_bytes, after.used_bytes);
                prop_assert_eq!(before.free_bytes, after.free_bytes);
                prop_assert_eq!(before.heap_bytes, after.heap_bytes);
                prop_assert_eq!(before.classes, after.classes);
                check(&heap, &m);
            }
        }
        heap.transaction(|tx| {
            for &off in m.live.keys() {
                tx.free_slice(PSlice::<u8>::from_raw_parts(off, 0))?;
            }
            Ok(())
        }).unwrap();
        prop_assert_eq!(heap.stats().unwrap().used_bytes, 0);
        drop(heap);
        let report = txheap::inspect::check(&path, &mut |_, _| {}).unwrap();
        prop_assert_eq!(report.verdict, txheap::inspect::Verdict::Clean, "{:?}", report.findings);
    }
}

/// The root's type recorded first inside a scope that rolls back is undone with the scope: the
/// heap still has no root.
#[test]
fn a_root_made_in_a_rolled_back_scope_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("root.heap"), Options::new()).unwrap();
    heap.transaction(|tx| {
        let r: txheap::Result<()> = tx.nested(|tx| {
            let r = tx.root::<u64>()?;
            tx.set(r, 7)?;
            Err(Error::NullPointer)
        });
        assert!(matches!(r, Err(Error::NullPointer)));
        tx.alloc(1u8).map(|_| ())
    })
    .unwrap();
    let r = heap.read(|r| r.root::<u64>().map(|_| ()));
    assert!(matches!(r, Err(Error::NoRoot)), "{r:?}");
    // And a type made in a scope that keeps it stays.
    heap.transaction(|tx| tx.nested(|tx| tx.root::<u64>().map(|_| ())))
        .unwrap();
    assert!(heap.read(|r| r.root::<u64>().map(|_| ())).is_ok());
}

/// Space a scope allocates from free space is written in place at commit, as outside a scope:
/// a large object in a scope is not bounded by the log, and rolled back it is free again.
#[test]
fn a_large_object_in_a_scope_goes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new().log_size(1 << 20);
    let heap = Heap::create(dir.path().join("inplace.heap"), opts).unwrap();
    let big = vec![5u8; 2 << 20];
    let kept = heap
        .transaction(|tx| {
            let r = tx.nested(|tx| {
                tx.alloc_slice(&big)?;
                Err::<(), _>(Error::NullPointer)
            });
            assert!(matches!(r, Err(Error::NullPointer)), "{r:?}");
            tx.nested(|tx| tx.alloc_slice(&big))
        })
        .unwrap();
    let r = heap
        .read(|r| Ok((r.allocations()?, r.slice(kept)?.to_vec())))
        .unwrap();
    assert_eq!(r.0.len(), 1);
    assert_eq!(r.1, big);
}

/// A chunk that a rolled-back scope made a run of (the transaction's second new run, which
/// outside a scope would be staged whole as fresh space) is free again, and the same
/// transaction may take it for a large object: its bytes must read and commit as written.
#[test]
fn a_chunk_a_rolled_back_scope_took_serves_a_large_object_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reuse.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (small, large) = heap
        .transaction(|tx| {
            // The transaction's first new run (class of 16 bytes).
            let small = tx.alloc([1u8; 16])?;
            // In a scope: a second new run (class of 1 KiB), written, then rolled back.
            let mut run = 0;
            let r: txheap::Result<()> = tx.nested(|tx| {
                for _ in 0..8 {
                    run = tx.alloc([9u8; 1000])?.offset();
                }
                Err(Error::NullPointer)
            });
            assert!(r.is_err());
            // A large object now takes the lowest free chunks, the scope's run's among them.
            let large = tx.alloc_slice(&big)?;
            let chunk = 256 << 10;
            assert!(
                large.offset() / chunk <= run / chunk
                    && run / chunk < (large.offset() + big.len() as u64).div_ceil(chunk),
                "the large object at {} does not cover the scope's run at {run}",
                large.offset()
            );
            assert_eq!(tx.slice(large)?, &big[..]);
            Ok((small, large))
        })
        .unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    heap.read(|r| {
        assert_eq!(*r.get(small)?, [1u8; 16]);
        assert_eq!(
            r.slice(large)?,
            &big[..],
            "the large object's bytes after reopening"
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(heap.read(|r| r.allocations()).unwrap().len(), 2);
}

/// A write a scope's budget refuses stages nothing, and the scope's rollback must not stage it
/// either: the transaction then commits what it did (a review found the rollback wrote the
/// refused range's saved copy back, staging 2 MiB past a 1 MiB log: the commit was refused).
#[test]
fn a_write_refused_in_a_scope_leaves_the_transaction_committable() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new().log_size(1 << 20);
    let heap = Heap::create(dir.path().join("refused.heap"), opts).unwrap();
    let big = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(2 << 20))
        .unwrap();
    let small = heap
        .transaction(|tx| {
            let small = tx.alloc(7u64)?;
            let e = tx.nested(|tx| {
                tx.slice_mut(big)?.fill(1);
                Ok::<_, Error>(())
            });
            assert!(matches!(e, Err(Error::TransactionTooLarge { .. })), "{e:?}");
            Ok(small)
        })
        .expect("the transaction commits what it did outside the refused write");
    assert_eq!(heap.read(|r| r.get(small).copied()).unwrap(), 7);
}

/// Fresh space a rolled-back scope took stays staged and in place: it must not count against
/// the log afterwards (a review found a later one-word write refused as too large), and the
/// same space taken again, larger, is fresh too (the list of fresh areas then held the same
/// start twice, and the larger object was judged not fresh: refused).
#[test]
fn fresh_space_a_scope_gave_back_stays_out_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new().log_size(1 << 20);
    let heap = Heap::create(dir.path().join("fresh.heap"), opts).unwrap();
    let p = heap.transaction(|tx| tx.alloc(0u64)).unwrap();
    heap.transaction(|tx| {
        let r = tx.nested(|tx| {
            tx.alloc_slice_zeroed::<u8>(2 << 20)?;
            Err::<(), _>(Error::NullPointer)
        });
        assert!(matches!(r, Err(Error::NullPointer)), "{r:?}");
        tx.set(p, 1)
    })
    .expect("a word written after the scope");
    let big = heap
        .transaction(|tx| {
            for _ in 0..3 {
                let _ = tx.nested(|tx| {
                    tx.alloc_slice_zeroed::<u8>(100_000)?;
                    Err::<(), _>(Error::NullPointer)
                });
            }
            let s = tx.alloc_slice_zeroed::<u8>(2 << 20)?;
            tx.slice_mut(s)?.fill(3);
            Ok(s)
        })
        .expect("a large object over the space the scopes gave back");
    heap.read(|r| {
        assert_eq!(*r.get(p)?, 1);
        assert!(r.slice(big)?.iter().all(|&b| b == 3));
        Ok(())
    })
    .unwrap();
}

/// A heap with a 256 KiB log (its path and options) holding a zeroed object of 1 MiB.
fn small_log_and_a_big_object(
    dir: &std::path::Path,
    d: txheap::Durability,
) -> (Heap, std::path::PathBuf, Options, PSlice<u8>) {
    let path = dir.join("t.heap");
    let opts = Options::new().durability(d).log_size(256 << 10);
    let heap = Heap::create(&path, opts.clone()).unwrap();
    let big = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 20))
        .unwrap();
    (heap, path, opts, big)
}

/// A scope refused as too large after many writes that each succeeded leaves a transaction
/// that commits (the scope's writes are undone, so they must not fill the log either): the
/// rolled-back lines drop out of the frame, whatever the length of their ranges (a review
/// found the commit refused with `TransactionTooLarge`, under `Full` and `None`, for a
/// transaction whose only change was in the refused scope). And the rest of the transaction
/// has the budget it had before the scope: a write as large as the log's free room still fits.
#[test]
fn a_scope_refused_as_too_large_leaves_the_transaction_committable() {
    for d in [txheap::Durability::Full, txheap::Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let (heap, path, opts, big) = small_log_and_a_big_object(dir.path(), d);
        heap.transaction(|tx| {
            let e = tx.nested(|tx| {
                // Ranges of 4,160 bytes (past the trim's 4 KiB), 8 KiB apart, until refused.
                for i in 0..(1u64 << 20) / 8192 {
                    tx.write_slice(big, i * 8192, &[1u8; 4160])?;
                }
                Ok::<(), Error>(())
            });
            assert!(matches!(e, Err(Error::TransactionTooLarge { .. })), "{e:?}");
            assert!(tx.slice(big)?.iter().all(|&b| b == 0));
            // The budget is the one from before the scope: 150 KB more fits.
            tx.write_slice(big, 1 << 19, &[2u8; 150_000])
        })
        .unwrap_or_else(|e| panic!("{d:?}: {e}"));
        heap.close().unwrap();
        let heap = Heap::open(&path, opts).unwrap();
        let s = heap.read(|r| Ok(r.slice(big)?.to_vec())).unwrap();
        let twos = s.iter().filter(|&&b| b == 2).count();
        let zeros = s.iter().filter(|&&b| b == 0).count();
        assert_eq!((twos, zeros), (150_000, (1 << 20) - 150_000), "{d:?}");
    }
}

/// The same through an inner scope that rewrites an existing object and then allocates until
/// refused, inside an outer scope that catches the refusal and keeps its own change: the
/// allocated space's lines and the rewritten ones drop out of the frame, and the outer scope's
/// change commits.
#[test]
fn an_inner_scope_refused_as_too_large_leaves_the_outer_one_committable() {
    for d in [txheap::Durability::Full, txheap::Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let (heap, path, opts, big) = small_log_and_a_big_object(dir.path(), d);
        let k = heap
            .transaction(|tx| {
                let k = tx.alloc(5u64)?;
                tx.nested(|tx| {
                    tx.set(k, 6)?;
                    let e: Result<(), Error> = tx.nested(|tx| {
                        tx.write_slice(big, 0, &vec![1u8; 200_000])?;
                        let mut n = 0u64;
                        loop {
                            // Small objects of many classes: new runs, bitmaps, entries.
                            tx.alloc_slice_zeroed::<u8>(16 + (n % 40) * 100)?;
                            n += 1;
                        }
                    });
                    assert!(matches!(e, Err(Error::TransactionTooLarge { .. })), "{e:?}");
                    Ok::<(), Error>(())
                })?;
                assert_eq!(*tx.get(k)?, 6);
                assert!(tx.slice(big)?.iter().all(|&b| b == 0));
                Ok(k)
            })
            .unwrap_or_else(|e| panic!("{d:?}: {e}"));
        assert_eq!(heap.read(|r| r.allocations()).unwrap().len(), 2);
        heap.close().unwrap();
        let report = txheap::inspect::check(&path, &mut |_, _| {}).unwrap();
        assert_eq!(
            report.verdict,
            txheap::inspect::Verdict::Clean,
            "{:?}",
            report.findings
        );
        let heap = Heap::open(&path, opts).unwrap();
        assert_eq!(heap.read(|r| r.get(k).copied()).unwrap(), 6);
        assert!(heap
            .read(|r| Ok(r.slice(big)?.iter().all(|&b| b == 0)))
            .unwrap());
        assert_eq!(heap.read(|r| r.allocations()).unwrap().len(), 2);
    }
}

/// `nest(tx, depth, o)`: fill `o` with 9 in a scope `depth` levels down, every level rolling
/// back.
fn nest(tx: &mut Tx<'_>, depth: u32, o: PSlice<u8>) -> Result<(), Error> {
    tx.nested(|tx| {
        if depth == 0 {
            tx.slice_mut(o)?.fill(9);
        } else {
            let _ = nest(tx, depth - 1, o);
        }
        Err(Error::NullPointer)
    })
}

/// A write rolled back through many nested scopes is exempted from the early size check once,
/// not once per scope (a review found 30 scopes let a transaction stage 6.2 MB of changes
/// with a 256 KiB log before the commit refused it): after it, the transaction is refused
/// early once its own changes pass the log's size.
#[test]
fn a_write_rolled_back_through_many_scopes_is_exempted_once() {
    const LOG: u64 = 256 << 10;
    for depth in [0, 30] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::new().log_size(LOG).max_size(256 << 20);
        let heap = Heap::create(dir.path().join("n.heap"), opts).unwrap();
        let (o, p) = heap
            .transaction(|tx| {
                Ok((
                    tx.alloc_slice(&vec![1u8; 200_000])?,
                    tx.alloc_slice(&vec![1u8; 8 << 20])?,
                ))
            })
            .unwrap();
        let mut staged = 0u64;
        let r = heap.transaction(|tx| {
            let _ = nest(tx, depth, o);
            for k in 0..128u64 {
                let part = PSlice::<u8>::from_raw_parts(p.offset() + k * 65536, 65536);
                match tx.slice_mut(part) {
                    Ok(s) => s.fill(7),
                    Err(Error::TransactionTooLarge { .. }) => break,
                    Err(e) => return Err(e),
                }
                staged += 65536;
            }
            Ok(())
        });
        assert!(r.is_ok(), "depth {depth}: {r:?}");
        assert!(
            staged < LOG,
            "depth {depth}: {staged} bytes of changes staged with a {LOG}-byte log"
        );
        assert!(heap
            .read(|r| Ok(r.slice(o)?.iter().all(|&b| b == 1)))
            .unwrap());
    }
}

/// Where the next 8-byte allocation goes, asked in a transaction that aborts.
fn next_place(heap: &Heap) -> u64 {
    let mut at = 0;
    let r: txheap::Result<()> = heap.transaction(|tx| {
        at = tx.alloc(1u64)?.offset();
        Err(Error::NoRoot)
    });
    assert!(r.is_err());
    at
}

/// An aborted transaction, or a rolled-back scope, leaves the allocator as it was, where its
/// next allocation goes included (a review found the run's hint kept: the next allocation
/// landed 959 blocks on, past the blocks the rollback gave back).
#[test]
fn a_rollback_leaves_the_next_allocation_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.path().join("hint.heap"), Options::new()).unwrap();
    heap.transaction(|tx| tx.alloc(0u64)).unwrap();
    let first = next_place(&heap);
    assert_eq!(next_place(&heap), first, "the probe is repeatable");
    let r: txheap::Result<()> = heap.transaction(|tx| {
        for i in 0..1000u64 {
            tx.alloc(i)?;
        }
        Err(Error::NoRoot)
    });
    assert!(r.is_err());
    assert_eq!(next_place(&heap), first, "after an aborted transaction");
    heap.transaction(|tx| {
        let mut at = 0;
        let _ = tx.nested(|tx| -> txheap::Result<()> {
            at = tx.alloc(1u64)?.offset();
            Err(Error::NoRoot)
        });
        assert_eq!(at, first);
        // A kept scope, then one rolled back: the rollback puts back the hint from before it.
        let kept = tx.nested(|tx| tx.alloc(2u64))?.offset();
        assert_eq!(kept, first);
        let mut inner = 0;
        let _ = tx.nested(|tx| -> txheap::Result<()> {
            for i in 0..1000u64 {
                let p = tx.alloc(i)?.offset();
                if i == 0 {
                    inner = p;
                }
            }
            Err(Error::NoRoot)
        });
        let again = tx.alloc(3u64)?.offset();
        assert_eq!(again, inner, "after a rolled-back scope");
        Ok(())
    })
    .unwrap();
}
