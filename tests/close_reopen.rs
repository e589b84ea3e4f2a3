//! A heap whose close punched its log: reopened read-only, salvage read-only,
//! writable under Durability::None (with a grown large object committed before close), backup
//! of the reopened heap; keep_log_blocks keeps the blocks. Covers the opens after a punch
//! other than `Heap::open` under Full (tests/capacity.rs covers that one).
use txheap::{inspect, Durability, Heap, Options, PSlice};

fn fill(heap: &Heap) -> PSlice<u8> {
    heap.transaction(|tx| {
        let s = tx.alloc_slice_zeroed::<u8>(100 << 10)?;
        tx.slice_mut(s)?.fill(3);
        let s = tx.realloc_slice(s, s.len(), 1 << 20)?;
        tx.slice_mut(s)?[(512 << 10)..].fill(9);
        Ok(s)
    })
    .unwrap()
}

fn holds(heap: &Heap, s: PSlice<u8>) {
    heap.read(|r| {
        let b = r.slice(s)?;
        assert!(b[..100 << 10].iter().all(|&x| x == 3));
        assert!(b[100 << 10..512 << 10].iter().all(|&x| x == 0));
        assert!(b[512 << 10..].iter().all(|&x| x == 9));
        Ok(())
    })
    .unwrap();
}

#[test]
fn opens_after_the_log_punch() {
    for d in [Durability::Full, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.heap");
        let opts = || Options::new().log_size(1 << 20).durability(d);
        let heap = Heap::create(&path, opts()).unwrap();
        let s = fill(&heap);
        heap.close().unwrap();
        {
            let ro = Heap::open_read_only(&path).unwrap();
            holds(&ro, s);
        }
        {
            let ro = Heap::salvage_read_only(&path).unwrap();
            holds(&ro, s);
        }
        let heap = Heap::open(&path, opts()).unwrap();
        holds(&heap, s);
        // Commits after the reopen, more than the log holds in total.
        for i in 0..1000u64 {
            heap.transaction(|tx| tx.write_slice(s, (i % 64) * 1600, &[3u8; 1600]))
                .unwrap();
        }
        let b = dir.path().join("b.heap");
        heap.backup_to(&b).unwrap();
        drop(heap); // Drop closes too
        let heap = Heap::open(&path, opts()).unwrap();
        holds(&heap, s);
        drop(heap);
        let heap = Heap::open(&b, opts()).unwrap();
        holds(&heap, s);
        drop(heap);
        for p in [&path, &b] {
            let report = inspect::check(p, &mut |_, _| {}).unwrap();
            assert_eq!(
                report.verdict,
                inspect::Verdict::Clean,
                "{d:?} {:?}",
                report.findings
            );
        }
        // keep_log_blocks: the log stays allocated.
        use std::os::unix::fs::MetadataExt;
        let heap = Heap::open(&path, opts().keep_log_blocks(true)).unwrap();
        heap.close().unwrap();
        let kept = std::fs::metadata(&path).unwrap().blocks() * 512;
        let heap = Heap::open(&path, opts()).unwrap();
        heap.close().unwrap();
        let punched = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(kept >= punched + (1 << 20) - (16 << 10), "{kept} {punched}");
    }
}
