//! An allocation refused part-way leaks nothing (found by an independent review; the defect
//! predates the session that found it).
//!
//! `tests/defects.rs` promises that "a refused allocation leaks nothing: the transaction can
//! still commit". That holds when the object's own bytes are refused (`alloc_filled` frees the
//! block again), but not when the allocator itself is refused half-way: `Allocator::new_run`
//! stages the chunk-table entries (`Run` for chunk C, `Free` for the rest of the extent), then
//! its bitmap write is refused by the log budget (`TransactionTooLarge`) and it returns with no
//! undo of what it did. A transaction that caught the error and committed then
//!   * loses chunk C from the writer's free extents for the rest of the session, and
//!   * writes a frame that makes C a run whose bitmap is whatever the chunk held: here the bytes
//!     of a freed object (0xff), so after a reopen every block of that run reads as allocated
//!     (16,256 phantom 16-byte objects that nothing can ever free).
//!
//! Now such a transaction's commit is refused (`Error::AllocatorInterrupted`) and it is rolled
//! back; a refusal before the allocator changed anything still lets it commit.

use txheap::{Durability, Error, Heap, Options, PSlice};

fn opts() -> Options {
    Options::new()
        .durability(Durability::Full)
        .log_size(64 << 10)
        .initial_size(4 << 20)
}

/// A heap set up so that a 16-byte allocation (its class has no run yet: a new run) can be
/// refused part-way: P, an object whose bytes a transaction stages to use up the log's budget,
/// and C, the lowest free chunk, holding a freed object's 0xff bytes (written in place).
fn setup(path: &std::path::Path) -> (Heap, PSlice<u8>) {
    let heap = Heap::create(path, opts()).unwrap();
    let p: PSlice<u8> = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(600 << 10))
        .unwrap();
    let l = heap
        .transaction(|tx| tx.alloc_slice(&vec![0xffu8; 200 << 10]))
        .unwrap();
    heap.transaction(|tx| tx.free_slice(l)).unwrap();
    (heap, p)
}

/// Stage `pad` bytes of P, then allocate a 16-byte object (a new run). Find a `pad` at which the
/// allocation, not the pad, is refused part-way: such a transaction's commit is refused. Every
/// other attempt is rolled back. Returns that pad.
fn interrupting_pad(heap: &Heap, p: PSlice<u8>) -> u64 {
    for pad in (0..(63u64 << 10)).rev().step_by(64) {
        let r = heap.transaction(|tx| {
            tx.slice_mut(PSlice::<u8>::from_raw_parts(p.offset(), pad))?
                .fill(1);
            match tx.alloc([7u8; 16]) {
                Err(Error::TransactionTooLarge { .. }) => Ok(()),
                Err(e) => Err(e),
                Ok(_) => Err(Error::NullPointer), // not this pad: roll back
            }
        });
        match r {
            // The allocator was refused part-way (entries staged, bitmap refused): the commit
            // is refused and the transaction rolled back.
            Err(Error::AllocatorInterrupted { .. }) => return pad,
            // Refused before the allocator changed anything (or after a whole allocation that
            // `alloc` gave back): the transaction may commit what it staged. Pads are tried
            // from the largest down, so the part-way refusal comes first.
            Ok(()) => panic!("pad {pad}: committed before any part-way refusal was found"),
            // The pad itself refused, or the allocation succeeded: rolled back, try the next.
            Err(Error::NullPointer | Error::TransactionTooLarge { .. }) => {}
            Err(e) => panic!("pad {pad}: {e}"),
        }
    }
    panic!("no pad leaves room for the entries but not the bitmap");
}

#[test]
fn an_allocation_refused_inside_new_run_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.heap");
    let (heap, p) = setup(&path);
    let before = heap.stats().unwrap();
    // That transaction catches the refusal and commits, as tests/defects.rs shows is allowed:
    // its commit is refused instead.
    let pad = interrupting_pad(&heap, p);
    eprintln!("interrupted at pad {pad}");
    let after = heap.stats().unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, opts()).unwrap();
    let reopened = heap.stats().unwrap();
    eprintln!(
        "pad {pad}: free bytes {} before, {} after the refused allocation; used bytes {} \
         before, {} after reopening",
        before.free_bytes, after.free_bytes, before.used_bytes, reopened.used_bytes
    );
    assert_eq!(
        after.free_bytes, before.free_bytes,
        "the refused allocation took a chunk out of the free space of this session"
    );
    assert_eq!(
        reopened.used_bytes, before.used_bytes,
        "after reopening, the refused allocation left a run whose bitmap is a freed object's \
         bytes: phantom allocated blocks"
    );
}

/// The same refusal inside a nested scope (`Tx::nested`): the scope's rollback undoes the
/// allocator's partial change with the rest of the scope, so the transaction commits what it
/// did before the scope, and nothing leaks.
#[test]
fn a_part_way_refusal_inside_a_scope_is_undone_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scoped.heap");
    let (heap, p) = setup(&path);
    let before = heap.stats().unwrap();
    let pad = interrupting_pad(&heap, p);
    heap.transaction(|tx| {
        tx.slice_mut(PSlice::<u8>::from_raw_parts(p.offset(), pad))?
            .fill(2);
        let r = tx.nested(|tx| tx.alloc([7u8; 16]));
        assert!(matches!(r, Err(Error::TransactionTooLarge { .. })), "{r:?}");
        Ok(())
    })
    .unwrap();
    let after = heap.stats().unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, opts()).unwrap();
    let reopened = heap.stats().unwrap();
    assert_eq!(
        after.free_bytes, before.free_bytes,
        "a chunk left the free space"
    );
    assert_eq!(
        reopened.used_bytes, before.used_bytes,
        "phantom blocks after reopening"
    );
    let bytes = heap
        .read(|r| {
            Ok(r.slice(PSlice::<u8>::from_raw_parts(p.offset(), pad))?
                .to_vec())
        })
        .unwrap();
    assert!(
        bytes.iter().all(|&b| b == 2),
        "the pad staged before the scope was not kept"
    );
}
