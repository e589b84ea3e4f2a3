//! Under `Durability::None` a commit's bytes go into the writer's private (copy-on-write) pages
//! until a flush. When commits append objects page after page, the writer copies the next pages
//! ahead in one call (docs/ARCHITECTURE.md section 3, step 6). Those copies equal the file when
//! made, so they must be dropped before the file's bytes under them change other than through a
//! frame: otherwise the writer's own mapping hides the new bytes.

use txheap::{Durability, Heap, Options, PPtr, PSlice};

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Node {
    value: u64,
    next: PPtr<Node>,
    pad: [u64; 6],
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, txheap::Stored)]
#[repr(C)]
struct Root {
    head: PPtr<Node>,
    len: u64,
    big: PSlice<u8>,
}

fn opts() -> Options {
    Options::new()
        .initial_size(4 << 20)
        .log_size(4 << 20)
        .max_size(64 << 20)
        .in_place_min(64 << 10)
        .durability(Durability::None)
}

fn push(heap: &Heap, value: u64) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let mut r = *tx.get(root)?;
        r.head = tx.alloc(Node {
            value,
            next: r.head,
            pad: [value; 6],
        })?;
        r.len += 1;
        tx.set(root, r)
    })
    .unwrap();
}

/// The list's values, newest first, and the big object's bytes, as a transaction sees them.
fn contents_in_tx(heap: &Heap) -> (Vec<u64>, Vec<u8>) {
    heap.transaction(|tx| {
        let root = tx.root::<Root>()?;
        let r = *tx.get(root)?;
        let mut values = Vec::new();
        let mut at = r.head;
        while !at.is_null() {
            let n = *tx.get(at)?;
            assert_eq!(n.pad, [n.value; 6]);
            values.push(n.value);
            at = n.next;
        }
        let big = if r.big.is_empty() {
            Vec::new()
        } else {
            tx.slice(r.big)?.to_vec()
        };
        Ok((values, big))
    })
    .unwrap()
}

/// Appended nodes near a chunk's end make the writer copy pages of the next chunk ahead; a
/// large object then written in place there (after the flush that an in-place commit makes)
/// must show through the writer's mapping, and after reopening.
#[test]
fn pages_copied_ahead_never_hide_bytes_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ahead.heap");
    let heap = Heap::create(&path, opts()).unwrap();
    for n in [10u64, 300, 3000] {
        for v in 0..n {
            push(&heap, v);
        }
        let fill = (n % 251) as u8 + 1;
        heap.transaction(|tx| {
            let root = tx.root::<Root>()?;
            let mut r = *tx.get(root)?;
            if !r.big.is_empty() {
                tx.free_slice(r.big)?;
            }
            r.big = tx.alloc_slice(&vec![fill; 1 << 20])?;
            tx.set(root, r)
        })
        .unwrap();
        let (values, big) = contents_in_tx(&heap);
        assert_eq!(big.len(), 1 << 20);
        let wrong = big.iter().filter(|&&b| b != fill).count();
        assert_eq!(
            wrong, 0,
            "{wrong} bytes of the in-place object hidden after {n} appends"
        );
        assert!(values.len() as u64 >= n);
        // Readers read the file's mapping: the same bytes.
        let read = heap
            .read(|r| Ok(r.slice(r.get(r.root::<Root>()?)?.big)?.to_vec()))
            .unwrap();
        assert_eq!(read, big);
    }
    let before = contents_in_tx(&heap);
    heap.close().unwrap();
    let heap = Heap::open(&path, opts()).unwrap();
    assert_eq!(contents_in_tx(&heap), before);
}

/// Appends that run past a flush and a checkpoint keep every node (the pages copied ahead are
/// dropped with the others, and what a later commit writes into one of them is written back).
#[test]
fn appends_across_flushes_and_checkpoints_keep_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appends.heap");
    let heap = Heap::create(&path, opts().log_size(1 << 20)).unwrap();
    for v in 0..20_000u64 {
        push(&heap, v);
        if v % 7_000 == 0 {
            heap.flush().unwrap();
        }
    }
    let checkpoints = heap.stats().unwrap().checkpoints;
    assert!(
        checkpoints > 2,
        "the log never filled: {checkpoints} checkpoints"
    );
    let expect: Vec<u64> = (0..20_000u64).rev().collect();
    assert_eq!(contents_in_tx(&heap).0, expect);
    heap.close().unwrap();
    let heap = Heap::open(&path, opts().log_size(1 << 20)).unwrap();
    assert_eq!(contents_in_tx(&heap).0, expect);
}
