//! Regressions for bugs an internal review found (each test failed before its fix):
//! in-place writes changing bytes under a reader's slice, a newer-version superblock being
//! overwritten, counter overflow from file values, a failed open growing the file, same-thread
//! re-entry deadlocks, a read inflating the logged write set, option arithmetic overflow, and a
//! too-large transaction touching the file before failing.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use txheap::{Durability, Error, Heap, Options, PSlice};

const LOG: u64 = 65536;
/// Where the heap header is with `opts()` (log offset 8192 + log size).
const HEAP_OFF: u64 = 8192 + LOG;

fn opts() -> Options {
    Options::new()
        .log_size(LOG)
        .max_size(64 << 20)
        .initial_size(4 << 20)
}

fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    (dir, p)
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn read(p: &Path, off: u64, n: usize) -> Vec<u8> {
    let f = std::fs::File::open(p).unwrap();
    let mut b = vec![0; n];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

/// Re-seal a superblock's CRC (over bytes 0..124, stored at 124..128).
fn seal_superblock(b: &mut [u8]) {
    let c = crc32fast::hash(&b[..124]);
    b[124..128].copy_from_slice(&c.to_le_bytes());
}

/// Run `f` on another thread; fail the test if it has not returned within `secs`.
fn within<R: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what}: no return after {secs} s (deadlock)"))
}

#[test]
fn in_place_writes_never_change_bytes_under_a_readers_slice() {
    let (_d, p) = tmp("race.heap");
    let heap = Arc::new(Heap::create(&p, opts()).unwrap());
    let n: u64 = 1 << 17; // 1 MiB of u64: a large extent, written in place under Full
    let old = heap
        .transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u64>(n)?;
            tx.slice_mut(s)?.fill(0xAAAA_AAAA_AAAA_AAAA);
            Ok(s)
        })
        .unwrap();
    heap.transaction(|tx| tx.free_slice(old)).unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let h = heap.clone();
    let writer = std::thread::spawn(move || {
        wait.recv().unwrap();
        h.transaction(|tx| tx.alloc_slice_zeroed::<u64>(n)).unwrap()
    });
    heap.read(|r| {
        // A stale pointer to the freed extent: in bounds, so the checked API accepts it.
        let v: &[u64] = r.slice(PSlice::<u64>::from_raw_parts(old.offset(), n))?;
        go.send(()).unwrap();
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            // SAFETY: `v[1000]` is a valid reference; the volatile read keeps the compiler from
            // assuming the value cannot change (which is exactly what is being tested).
            let now = unsafe { std::ptr::read_volatile(&v[1000]) };
            assert_eq!(
                now, 0xAAAA_AAAA_AAAA_AAAA,
                "bytes changed under a live &[u64]"
            );
        }
        Ok(())
    })
    .unwrap();
    let new = writer.join().unwrap();
    // The scenario needs the new object in the same place (else nothing was at risk).
    assert_eq!(new.offset(), old.offset());
    assert!(heap
        .read(|r| Ok(r.slice(new)?.iter().all(|&x| x == 0)))
        .unwrap());
}

#[test]
fn a_newer_version_superblock_is_refused_not_overwritten() {
    let (_d, p) = tmp("version.heap");
    Heap::create(&p, opts()).unwrap().close().unwrap();
    let mut a = read(&p, 0, 128);
    let seq = u64::from_le_bytes(a[16..24].try_into().unwrap());
    a[8..12].copy_from_slice(&4u32.to_le_bytes()); // a newer format version...
    a[16..24].copy_from_slice(&(seq + 1).to_le_bytes()); // ...written after slot A
    seal_superblock(&mut a);
    patch(&p, 4096, &a);
    let before = std::fs::read(&p).unwrap();
    match Heap::open(&p, opts()) {
        Err(Error::UnsupportedVersion { found: 4, .. }) => {}
        other => panic!("expected UnsupportedVersion, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(&p).unwrap(), before, "the file changed");
}

#[test]
fn superblock_counters_near_overflow_are_corrupt_not_a_panic() {
    let (_d, p) = tmp("seq.heap");
    Heap::create(&p, opts()).unwrap().close().unwrap();
    let mut a = read(&p, 0, 128);
    a[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    seal_superblock(&mut a);
    patch(&p, 0, &a);
    patch(&p, 4096, &[0u8; 128]);
    let before = std::fs::read(&p).unwrap();
    match Heap::open(&p, opts()) {
        Err(Error::Corrupt { what, .. }) => assert!(what.contains("seq"), "{what}"),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(&p).unwrap(), before, "the file changed");
}

#[test]
fn a_damaged_heap_header_never_grows_the_file() {
    let (_d, p) = tmp("grow.heap");
    Heap::create(&p, opts()).unwrap().close().unwrap();
    let mut h = read(&p, HEAP_OFF, 64);
    h[8..16].copy_from_slice(&200u64.to_le_bytes()); // chunk count: 50 MiB of chunks
    let c = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&c.to_le_bytes());
    patch(&p, HEAP_OFF, &h);
    let before = std::fs::read(&p).unwrap();
    match Heap::open(&p, opts()) {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    let after = std::fs::read(&p).unwrap();
    assert_eq!(after.len(), before.len(), "open grew the file and failed");
    assert_eq!(after, before, "the file changed");
}

#[test]
fn reentrant_calls_are_errors_not_deadlocks() {
    let (_d, p) = tmp("reentry.heap");
    let heap = Arc::new(Heap::create(&p, opts().durability(Durability::None)).unwrap());
    heap.transaction(|tx| tx.alloc(1u64)).unwrap();
    let h = heap.clone();
    let results = within(
        10,
        "stats/flush/checkpoint inside a transaction or read",
        move || {
            let in_tx = h.transaction(|tx| {
                tx.alloc(2u64)?;
                Ok([h.stats().map(|_| ()), h.flush(), h.checkpoint()])
            });
            let in_read = h.read(|_| Ok([h.stats().map(|_| ()), h.flush(), h.checkpoint()]));
            (in_tx, in_read)
        },
    );
    for r in results.0.unwrap().into_iter().chain(results.1.unwrap()) {
        assert!(matches!(r, Err(Error::NestedTransaction)), "{r:?}");
    }
    // A read inside a read works, even while a writer commits (readers never wait for it).
    let h = heap.clone();
    let w = heap.clone();
    let v = within(10, "nested read with a waiting writer", move || {
        h.read(|_| {
            let writer = std::thread::spawn(move || w.transaction(|tx| tx.alloc(3u64)));
            std::thread::sleep(Duration::from_millis(200)); // the writer now waits to apply
            let inner = h.read(|r| Ok(r.root::<u64>().is_err()))?;
            Ok((inner, writer))
        })
    });
    let (_, writer) = v.unwrap();
    writer.join().unwrap().unwrap();
    // And the heap still works normally afterwards.
    heap.flush().unwrap();
    assert!(heap.stats().unwrap().commits >= 2);
}

#[test]
fn a_read_inside_a_transaction_does_not_grow_its_log_frame() {
    let (_d, p) = tmp("inflate.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    let s = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 20))
        .unwrap();
    let before = heap.stats().unwrap().io.bytes_written;
    heap.transaction(|tx| {
        tx.write_slice(s, 10, b"y")?;
        // Reading the whole megabyte sees the staged byte...
        assert_eq!(tx.slice(s)?[10], b'y');
        Ok(())
    })
    .unwrap(); // ...and used to fail with TransactionTooLarge: the read was logged.
    let written = heap.stats().unwrap().io.bytes_written - before;
    assert!(written < 4096, "a 1-byte write cost {written} bytes of I/O");
    assert_eq!(heap.read(|r| Ok(r.slice(s)?[10])).unwrap(), b'y');
}

#[test]
fn absurd_options_are_errors_not_overflow() {
    let (_d, p) = tmp("opts.heap");
    for o in [
        Options::new().log_size(!4095u64),
        Options::new().max_size(!4095u64),
        Options::new().log_size(1 << 60).max_size(!4095u64),
    ] {
        match Heap::create(&p, o) {
            Err(Error::InvalidOptions { .. }) => {}
            other => panic!("expected InvalidOptions, got {:?}", other.map(|_| ())),
        }
        assert!(!p.exists());
    }
}

#[test]
fn a_transaction_too_large_for_the_log_fails_before_writing_anything() {
    let (_d, p) = tmp("toolarge.heap");
    let heap = Heap::create(&p, opts()).unwrap();
    heap.transaction(|tx| tx.alloc(1u64)).unwrap(); // the log is not empty
    heap.flush().unwrap();
    let before = std::fs::read(&p).unwrap();
    let r = heap.transaction(|tx| {
        // A large object (written in place) plus more logged bytes than the log holds.
        let big = tx.alloc_slice_zeroed::<u8>(300_000)?;
        tx.slice_mut(big)?.fill(7);
        for _ in 0..40 {
            let s = tx.alloc_slice_zeroed::<u8>(2000)?;
            tx.slice_mut(s)?.fill(9);
        }
        Ok(())
    });
    assert!(matches!(r, Err(Error::TransactionTooLarge { .. })), "{r:?}");
    assert_eq!(std::fs::read(&p).unwrap(), before, "the file changed");
    heap.transaction(|tx| tx.alloc(2u64)).unwrap();
}
