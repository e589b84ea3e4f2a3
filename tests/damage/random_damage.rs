//! A seeded sweep of damage over every collection kind: one word inside one of the collection's
//! own blocks is changed (a flipped bit, zero, all ones, another of its blocks' offsets, a small
//! shift, a small number: what a damaged sector or a stray write leaves), then every read and
//! write operation of that collection runs on it (writes in transactions that are rolled back),
//! then the word is put back. The hand-made cases beside this file pin the defects reviews
//! found; this sweep keeps looking for new ones, and fails on any of:
//! - a panic, from any operation or from `check()`;
//! - an operation that runs for minutes (a watchdog aborts the binary, naming the case);
//! - an error that names the damage as the caller's mistake (`OutOfBounds`, `Misaligned`,
//!   `NotAllocated`, `InvalidFree`, `NullPointer`, `IndexOutOfRange` on an index inside the
//!   length the collection reports): docs/ARCHITECTURE.md section 10 says a damaged collection
//!   gives `Error::Corrupt`;
//! - `check()` passing while a read of the same collection then fails, or an iteration that
//!   disagrees with `len` (what `check()` verifies, it must verify);
//! - the heap not checking clean once every word is back (the sweep itself changed nothing).
//!
//! Deterministic (fixed seeds), so a failure reproduces; the message names the case.

use super::{poke, word};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use txheap::{Error, Heap, Options, PBTreeMap, PBytes, PHashMap, PPtr, PVec, Result, Tx};

/// Cases per collection kind (`TXHEAP_DAMAGE_CASES` sets another number, for a longer search).
fn cases() -> u64 {
    std::env::var("TXHEAP_DAMAGE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// splitmix64: a small, fixed generator (the sweep must be the same on every machine).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The error a test returns to roll its transaction back.
fn rollback<T>() -> Result<T> {
    Err(Error::Io {
        op: "roll back (test)",
        offset: 0,
        source: std::io::Error::other("roll back"),
    })
}

fn is_rollback(e: &Error) -> bool {
    matches!(e, Error::Io { op, .. } if *op == "roll back (test)")
}

/// What each case saw, by operation and error kind (printed at the end: it shows the sweep
/// reached the operations' error paths, not only their happy paths).
#[derive(Default)]
struct Seen {
    outcomes: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Seen {
    /// Record one operation's result; an error naming damage as a caller's mistake fails.
    fn op<T>(&mut self, case: &str, what: &str, r: &Result<T>) -> bool {
        let kind = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => kind(e),
        };
        *self.outcomes.entry(format!("{what}: {kind}")).or_default() += 1;
        if let Err(e) = r {
            if misnamed(e) {
                self.failures.push(format!(
                    "{case}: {what} named damage as a caller's mistake: {e}"
                ));
            }
        }
        r.is_ok()
    }

    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }
}

fn kind(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split([' ', '{', '(']).next().unwrap_or("?").to_string()
}

/// Errors that say the caller passed something wrong; a collection's own damaged words must
/// come out as `Corrupt` instead. (`CollectionInterrupted` wraps the operation's own error.)
fn misnamed(e: &Error) -> bool {
    match e {
        Error::OutOfBounds { .. }
        | Error::Misaligned { .. }
        | Error::NotAllocated { .. }
        | Error::InvalidFree { .. }
        | Error::NullPointer
        | Error::SliceRange { .. } => true,
        Error::CollectionInterrupted { cause, .. } => [
            "out of bounds",
            "misaligned",
            "not allocated",
            "invalid free",
            "null pointer",
        ]
        .iter()
        .any(|w| cause.to_lowercase().contains(w)),
        _ => false,
    }
}

type U64Vec = PVec<u64>;
type BytesVec = PVec<PBytes>;
type U64Hash = PHashMap<u64, u64>;
type BytesHash = PHashMap<PBytes, PBytes>;
type U64Tree = PBTreeMap<u64, u64>;
type BytesTree = PBTreeMap<PBytes, PBytes>;
/// A collection inside another's values, reached from the root (so that reachability walks it).
type Nested = PHashMap<u64, PVec<u64>>;

fn bytes_of(i: u64) -> Vec<u8> {
    // 1 to 40 bytes, so that values land in several size classes.
    let n = 1 + (i * 7 % 40) as usize;
    (0..n).map(|k| (i as u8).wrapping_add(k as u8)).collect()
}

struct All {
    v: PPtr<U64Vec>,
    vb: PPtr<BytesVec>,
    h: PPtr<U64Hash>,
    hb: PPtr<BytesHash>,
    b: PPtr<U64Tree>,
    bb: PPtr<BytesTree>,
    n: PPtr<Nested>,
    /// The vectors inside `n`'s values (their headers lie in its buckets).
    inner: Vec<PPtr<PVec<u64>>>,
}

fn build(heap: &Heap) -> All {
    heap.transaction(|tx| {
        let v = U64Vec::new(tx)?;
        for i in 0..300 {
            v.push(tx, i * 3)?;
        }
        let vb = BytesVec::new(tx)?;
        for i in 0..60 {
            let b = PBytes::new(tx, &bytes_of(i))?;
            vb.push(tx, b)?;
        }
        let h = U64Hash::new(tx)?;
        for i in 0..400 {
            h.insert(tx, &i, &(i ^ 0xabc))?;
        }
        let hb = BytesHash::new(tx)?;
        for i in 0..80 {
            hb.insert(tx, &bytes_of(i + 1000), &bytes_of(i))?;
        }
        let b = U64Tree::new(tx)?;
        for i in 0..1500u64 {
            b.insert(tx, &(i.wrapping_mul(0x9e37_79b9) % 100_000), &i)?;
        }
        let bb = BytesTree::new(tx)?;
        for i in 0..200 {
            bb.insert(tx, &bytes_of(i + 5000), &bytes_of(i))?;
        }
        let n = Nested::new(tx)?;
        let root = tx.root::<PPtr<Nested>>()?;
        tx.set(root, n)?;
        let mut inner = Vec::new();
        for k in 0..40u64 {
            let slot = n.get_or_insert(tx, &k, &bytemuck_zeroed())?;
            for j in 0..k % 9 {
                slot.push(tx, j)?;
            }
            inner.push(slot);
        }
        Ok(All {
            v,
            vb,
            h,
            hb,
            b,
            bb,
            n,
            inner,
        })
    })
    .unwrap()
}

/// The words one case may damage: every 8-byte word of every block the collection owns.
fn blocks(
    heap: &Heap,
    each: impl Fn(&txheap::Reader<'_>, &mut dyn FnMut(u64)) -> Result<()>,
) -> Vec<(u64, u64)> {
    let starts = heap
        .read(|r| {
            let mut s = Vec::new();
            each(r, &mut |at| s.push(at))?;
            Ok(s)
        })
        .unwrap();
    heap.transaction(|tx| {
        Ok(starts
            .iter()
            .map(|&at| (at, tx.usable_size(PPtr::<u8>::from_offset(at)).unwrap()))
            .collect())
    })
    .unwrap()
}

/// The damaged value for a word holding `old`.
fn damaged(rng: &mut Rng, old: u64, blocks: &[(u64, u64)]) -> (String, u64) {
    match rng.below(6) {
        0 => {
            let bit = rng.below(64);
            (format!("bit {bit} flipped"), old ^ (1 << bit))
        }
        1 => ("zeroed".into(), 0),
        2 => ("all ones".into(), u64::MAX),
        3 => {
            let (at, _) = blocks[rng.below(blocks.len() as u64) as usize];
            let plus = 8 * rng.below(4);
            (format!("another block's offset {at}+{plus}"), at + plus)
        }
        4 => {
            let d = 8 * (1 + rng.below(4));
            if rng.below(2) == 0 {
                (format!("+{d}"), old.wrapping_add(d))
            } else {
                (format!("-{d}"), old.wrapping_sub(d))
            }
        }
        _ => {
            let n = rng.below(1000);
            (format!("small number {n}"), n)
        }
    }
}

/// Run `f` in a transaction that is rolled back, recording its result under `what`.
fn rolled_back<T>(
    heap: &Heap,
    seen: &mut Seen,
    case: &str,
    what: &str,
    f: impl FnOnce(&mut Tx<'_>) -> Result<T>,
) {
    let mut out = None;
    let r = heap.transaction(|tx| {
        out = Some(f(tx).map(|_| ()));
        rollback::<()>()
    });
    match r {
        Err(e) if is_rollback(&e) => {}
        other => seen.fail(format!("{case}: {what}: the roll-back gave {other:?}")),
    }
    if let Some(r) = out {
        seen.op(case, what, &r);
    }
}

fn bytemuck_zeroed() -> PVec<u64> {
    txheap::bytemuck::Zeroable::zeroed()
}

/// The operations of vectors held in a map's values, and a reachability walk over them all.
fn nested_ops(
    heap: &Heap,
    n: PPtr<Nested>,
    inner: &[PPtr<PVec<u64>>],
    seen: &mut Seen,
    case: &str,
) {
    let checked = heap.read(|r| {
        n.check(r)?;
        for v in inner {
            v.check(r)?;
        }
        Ok(())
    });
    let checked = seen.op(case, "nested::check", &checked);
    let reads = heap.read(|r| {
        let mut total = 0u64;
        for (k, v) in inner.iter().enumerate() {
            n.get(r, &(k as u64))?;
            total = total.wrapping_add(v.as_slice(r)?.iter().fold(0, |a, &x| a.wrapping_add(x)));
        }
        Ok(total)
    });
    if !seen.op(case, "nested::get+as_slice", &reads) && checked {
        seen.fail(format!(
            "{case}: nested check passed, then reading failed: {reads:?}"
        ));
    }
    // (A reachability walk may report a dangling buffer where `check` passed: `PVec::check`
    // does not look the buffer up in the allocator's tables, as its rustdoc says, and a
    // damaged capacity or a buffer offset moved inside its block passes it.)
    let reach = heap.reachability::<PPtr<Nested>>();
    if !seen.op(case, "nested::reachability", &reach) && checked {
        seen.fail(format!(
            "{case}: nested check passed, reachability failed: {reach:?}"
        ));
    }
    let v = inner[inner.len() / 2];
    rolled_back(heap, seen, case, "nested PVec::push", |tx| v.push(tx, 9));
    rolled_back(heap, seen, case, "nested PVec::extend", |tx| {
        v.extend_from_slice(tx, &[3; 100])
    });
    rolled_back(heap, seen, case, "nested PVec::pop", |tx| v.pop(tx));
    rolled_back(heap, seen, case, "nested PVec::clear", |tx| v.clear(tx));
    rolled_back(heap, seen, case, "nested PHashMap::insert", |tx| {
        for k in 100..200 {
            n.insert(tx, &k, &bytemuck_zeroed())?;
        }
        Ok(())
    });
}

/// Every operation of a `PVec<u64>`.
fn vec_ops(heap: &Heap, v: PPtr<U64Vec>, seen: &mut Seen, case: &str) {
    let checked = heap.read(|r| v.check(r));
    let checked = seen.op(case, "PVec::check", &checked);
    let len = heap.read(|r| v.len(r));
    let slice = heap.read(|r| {
        v.as_slice(r).map(|s| {
            (
                s.len() as u64,
                s.iter().fold(0u64, |a, &x| a.wrapping_add(x)),
            )
        })
    });
    let first = heap.read(|r| v.get(r, 0));
    let last = heap.read(|r| v.get(r, v.len(r)?.saturating_sub(1)));
    let reads_ok = seen.op(case, "PVec::len", &len)
        & seen.op(case, "PVec::as_slice", &slice)
        & seen.op(case, "PVec::get", &first)
        & seen.op(case, "PVec::get last", &last);
    if checked {
        if !reads_ok {
            seen.fail(format!(
                "{case}: PVec check passed, then a read failed: {len:?} {slice:?} {first:?} {last:?}"
            ));
        } else if let (Ok(n), Ok((m, _))) = (&len, &slice) {
            if n != m {
                seen.fail(format!(
                    "{case}: PVec check passed, len {n} but a slice of {m}"
                ));
            }
        }
    }
    rolled_back(heap, seen, case, "PVec::push", |tx| v.push(tx, 7));
    rolled_back(heap, seen, case, "PVec::pop", |tx| v.pop(tx));
    rolled_back(heap, seen, case, "PVec::set", |tx| v.set(tx, 0, 1));
    rolled_back(heap, seen, case, "PVec::insert", |tx| v.insert(tx, 0, 1));
    rolled_back(heap, seen, case, "PVec::remove", |tx| v.remove(tx, 0));
    rolled_back(heap, seen, case, "PVec::truncate", |tx| v.truncate(tx, 100));
    rolled_back(heap, seen, case, "PVec::extend", |tx| {
        v.extend_from_slice(tx, &[1; 700])
    });
    rolled_back(heap, seen, case, "PVec::retain", |tx| {
        v.retain(tx, |x| x % 2 == 0)
    });
    rolled_back(heap, seen, case, "PVec::shrink_to_fit", |tx| {
        v.shrink_to_fit(tx)
    });
    rolled_back(heap, seen, case, "PVec::clear", |tx| v.clear(tx));
    rolled_back(heap, seen, case, "PVec::destroy", |tx| v.destroy(tx));
}

/// Every operation of a `PVec<PBytes>`.
fn bytes_vec_ops(heap: &Heap, v: PPtr<BytesVec>, seen: &mut Seen, case: &str) {
    let checked = heap.read(|r| v.check(r));
    let checked = seen.op(case, "PVec<PBytes>::check", &checked);
    let all = heap.read(|r| {
        let n = v.len(r)?;
        let mut total = 0u64;
        for i in 0..n {
            let b = v.get(r, i)?.ok_or(Error::NoRoot)?;
            total += b.bytes(r)?.len() as u64;
        }
        Ok(total)
    });
    if !seen.op(case, "PVec<PBytes>::get+bytes", &all) && checked {
        seen.fail(format!(
            "{case}: PVec<PBytes> check passed, then reading failed: {all:?}"
        ));
    }
    rolled_back(heap, seen, case, "PVec<PBytes>::push", |tx| {
        let b = PBytes::new(tx, b"pushed")?;
        v.push(tx, b)
    });
    rolled_back(heap, seen, case, "PVec<PBytes>::pop", |tx| v.pop(tx));
    rolled_back(heap, seen, case, "PVec<PBytes>::remove", |tx| {
        v.remove(tx, 0).map(|_| ())
    });
    rolled_back(heap, seen, case, "PVec<PBytes>::truncate", |tx| {
        v.truncate(tx, 10)
    });
    rolled_back(heap, seen, case, "PVec<PBytes>::clear", |tx| v.clear(tx));
    rolled_back(heap, seen, case, "PVec<PBytes>::destroy", |tx| {
        v.destroy(tx)
    });
}

/// Every operation of a `PHashMap<u64, u64>`.
fn hash_ops(heap: &Heap, h: PPtr<U64Hash>, seen: &mut Seen, case: &str) {
    let checked = heap.read(|r| h.check(r));
    let checked = seen.op(case, "PHashMap::check", &checked);
    let walk = heap.read(|r| {
        let len = h.len(r)?;
        let mut n = 0u64;
        for e in h.iter(r)? {
            e?;
            n += 1;
        }
        let mut found = 0u64;
        for k in (0..400).step_by(7) {
            found += u64::from(h.get(r, &k)?.is_some());
        }
        Ok((len, n, found))
    });
    if seen.op(case, "PHashMap::iter+get", &walk) {
        if let (true, Ok((len, n, _))) = (checked, &walk) {
            if len != n {
                seen.fail(format!(
                    "{case}: PHashMap check passed, len {len} but {n} iterated"
                ));
            }
        }
    } else if checked {
        seen.fail(format!(
            "{case}: PHashMap check passed, then reading failed: {walk:?}"
        ));
    }
    rolled_back(heap, seen, case, "PHashMap::insert new", |tx| {
        for k in 1000..1300 {
            h.insert(tx, &k, &k)?; // past a growth
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PHashMap::insert old", |tx| {
        h.insert(tx, &7, &1)
    });
    rolled_back(heap, seen, case, "PHashMap::remove", |tx| {
        for k in 0..50 {
            h.remove(tx, &k)?;
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PHashMap::get_mut", |tx| {
        h.get_mut(tx, &14)
    });
    rolled_back(heap, seen, case, "PHashMap::retain", |tx| {
        h.retain(tx, |k, _| k % 3 == 0)
    });
    rolled_back(heap, seen, case, "PHashMap::clear", |tx| h.clear(tx));
    rolled_back(heap, seen, case, "PHashMap::destroy", |tx| h.destroy(tx));
}

/// Every operation of a `PHashMap<PBytes, PBytes>`.
fn bytes_hash_ops(heap: &Heap, h: PPtr<BytesHash>, seen: &mut Seen, case: &str) {
    let checked = heap.read(|r| h.check(r));
    let checked = seen.op(case, "PHashMap<PBytes>::check", &checked);
    let walk = heap.read(|r| {
        let mut n = 0u64;
        for e in h.iter(r)? {
            let (k, v) = e?;
            n += (k.len() + v.len()) as u64;
        }
        for i in 0..80 {
            h.get(r, &bytes_of(i + 1000))?;
        }
        Ok(n)
    });
    if !seen.op(case, "PHashMap<PBytes>::iter+get", &walk) && checked {
        seen.fail(format!(
            "{case}: PHashMap<PBytes> check passed, then reading failed: {walk:?}"
        ));
    }
    rolled_back(heap, seen, case, "PHashMap<PBytes>::insert", |tx| {
        for i in 0..100 {
            hb_insert(h, tx, i)?;
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PHashMap<PBytes>::remove", |tx| {
        for i in 0..40 {
            h.remove(tx, &bytes_of(i + 1000))?;
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PHashMap<PBytes>::clear", |tx| {
        h.clear(tx)
    });
    rolled_back(heap, seen, case, "PHashMap<PBytes>::destroy", |tx| {
        h.destroy(tx)
    });
}

fn hb_insert(h: PPtr<BytesHash>, tx: &mut Tx<'_>, i: u64) -> Result<bool> {
    h.insert(tx, &bytes_of(i + 9000), &bytes_of(i))
}

/// Every operation of a `PBTreeMap<u64, u64>`.
fn tree_ops(heap: &Heap, b: PPtr<U64Tree>, seen: &mut Seen, case: &str) {
    let checked = heap.read(|r| b.check(r));
    let checked = seen.op(case, "PBTreeMap::check", &checked);
    let walk = heap.read(|r| {
        let len = b.len(r)?;
        let mut n = 0u64;
        for e in b.range(r, ..)? {
            e?;
            n += 1;
        }
        let mut back = 0u64;
        for e in b.range(r, 20_000..60_000)?.rev() {
            e?;
            back += 1;
        }
        b.first(r)?;
        b.last(r)?;
        for k in (0..100_000).step_by(997) {
            b.get(r, &k)?;
        }
        Ok((len, n, back))
    });
    if seen.op(case, "PBTreeMap::range+get", &walk) {
        if let (true, Ok((len, n, _))) = (checked, &walk) {
            if len != n {
                seen.fail(format!(
                    "{case}: PBTreeMap check passed, len {len} but {n} in range"
                ));
            }
        }
    } else if checked {
        seen.fail(format!(
            "{case}: PBTreeMap check passed, then reading failed: {walk:?}"
        ));
    }
    rolled_back(heap, seen, case, "PBTreeMap::insert", |tx| {
        for k in 0..300u64 {
            b.insert(tx, &(k * 331 % 100_000), &k)?; // splits
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PBTreeMap::remove", |tx| {
        for k in 0..1500u64 {
            b.remove(tx, &(k.wrapping_mul(0x9e37_79b9) % 100_000))?; // merges
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PBTreeMap::pop_first", |tx| {
        b.pop_first(tx)
    });
    rolled_back(heap, seen, case, "PBTreeMap::pop_last", |tx| b.pop_last(tx));
    rolled_back(heap, seen, case, "PBTreeMap::get_mut", |tx| {
        b.get_mut(tx, &0)
    });
    rolled_back(heap, seen, case, "PBTreeMap::retain", |tx| {
        b.retain(tx, |k, _| k % 2 == 0)
    });
    rolled_back(heap, seen, case, "PBTreeMap::clear", |tx| b.clear(tx));
    rolled_back(heap, seen, case, "PBTreeMap::destroy", |tx| b.destroy(tx));
}

/// Every operation of a `PBTreeMap<PBytes, PBytes>`.
fn bytes_tree_ops(heap: &Heap, b: PPtr<BytesTree>, seen: &mut Seen, case: &str) {
    let checked = heap.read(|r| b.check(r));
    let checked = seen.op(case, "PBTreeMap<PBytes>::check", &checked);
    let walk = heap.read(|r| {
        let len = b.len(r)?;
        let mut n = 0u64;
        for e in b.range::<_, std::ops::RangeFull>(r, ..)? {
            e?;
            n += 1;
        }
        for e in b.range::<_, std::ops::RangeFull>(r, ..)?.rev() {
            e?;
        }
        for i in (0..200).step_by(9) {
            b.get(r, &bytes_of(i + 5000))?;
        }
        Ok((len, n))
    });
    if seen.op(case, "PBTreeMap<PBytes>::range+get", &walk) {
        if let (true, Ok((len, n))) = (checked, &walk) {
            if len != n {
                seen.fail(format!(
                    "{case}: PBTreeMap<PBytes> check passed, len {len}, {n} in range"
                ));
            }
        }
    } else if checked {
        seen.fail(format!(
            "{case}: PBTreeMap<PBytes> check passed, then reading failed: {walk:?}"
        ));
    }
    rolled_back(heap, seen, case, "PBTreeMap<PBytes>::insert", |tx| {
        for i in 0..150 {
            b.insert(tx, &bytes_of(i + 7000), &bytes_of(i))?;
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PBTreeMap<PBytes>::remove", |tx| {
        for i in 0..200 {
            b.remove(tx, &bytes_of(i + 5000))?;
        }
        Ok(())
    });
    rolled_back(heap, seen, case, "PBTreeMap<PBytes>::pop_first", |tx| {
        b.pop_first(tx)
    });
    rolled_back(heap, seen, case, "PBTreeMap<PBytes>::clear", |tx| {
        b.clear(tx)
    });
    rolled_back(heap, seen, case, "PBTreeMap<PBytes>::destroy", |tx| {
        b.destroy(tx)
    });
}

#[test]
fn random_damage_to_any_collection_gives_corrupt_and_check_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let heap = Heap::create(
        dir.path().join("sweep.heap"),
        Options::new().log_size(1 << 20),
    )
    .unwrap();
    let all = build(&heap);

    // A watchdog: a case still running after two minutes is a hang (every case here takes
    // milliseconds); say which one and end the binary (a hung test would stall CI for an hour).
    let progress = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut last = (u64::MAX, Instant::now());
            loop {
                std::thread::sleep(Duration::from_secs(5));
                let now = progress.load(Ordering::SeqCst);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(120) {
                    eprintln!("random_damage: case {now} has run for two minutes: a hang");
                    std::process::abort();
                }
            }
        });
    }

    type Ops<'a> = Box<dyn Fn(&Heap, &mut Seen, &str) + 'a>;
    type Blocks<'a> = Box<dyn Fn(&txheap::Reader<'_>, &mut dyn FnMut(u64)) -> Result<()> + 'a>;
    // (Each kind's blocks: its header, then what `for_each_block` names.)
    let (v, vb, h, hb, b, bb) = (all.v, all.vb, all.h, all.hb, all.b, all.bb);
    let (nm, inner) = (all.n, &all.inner);
    let kinds: Vec<(&str, Blocks, Ops)> = vec![
        (
            "PVec<u64>",
            Box::new(move |r, f| {
                f(v.offset());
                v.for_each_block(r, f)
            }),
            Box::new(move |hp, s, c| vec_ops(hp, v, s, c)),
        ),
        (
            "PVec<PBytes>",
            Box::new(move |r, f| {
                f(vb.offset());
                vb.for_each_block(r, f)
            }),
            Box::new(move |hp, s, c| bytes_vec_ops(hp, vb, s, c)),
        ),
        (
            "PHashMap<u64, u64>",
            Box::new(move |r, f| {
                f(h.offset());
                h.for_each_block(r, f)
            }),
            Box::new(move |hp, s, c| hash_ops(hp, h, s, c)),
        ),
        (
            "PHashMap<PBytes, PBytes>",
            Box::new(move |r, f| {
                f(hb.offset());
                hb.for_each_block(r, f)
            }),
            Box::new(move |hp, s, c| bytes_hash_ops(hp, hb, s, c)),
        ),
        (
            "PBTreeMap<u64, u64>",
            Box::new(move |r, f| {
                f(b.offset());
                b.for_each_block(r, f)
            }),
            Box::new(move |hp, s, c| tree_ops(hp, b, s, c)),
        ),
        (
            "PBTreeMap<PBytes, PBytes>",
            Box::new(move |r, f| {
                f(bb.offset());
                bb.for_each_block(r, f)
            }),
            Box::new(move |hp, s, c| bytes_tree_ops(hp, bb, s, c)),
        ),
        (
            "PVec<u64> in PHashMap values",
            Box::new(move |r, f| {
                f(nm.offset());
                nm.for_each_block(r, &mut *f)?;
                for v in inner {
                    v.for_each_block(r, &mut *f)?;
                }
                Ok(())
            }),
            Box::new(move |hp, s, c| nested_ops(hp, nm, inner, s, c)),
        ),
    ];

    let mut seen = Seen::default();
    let mut n = 0u64;
    for (k, (name, each, ops)) in kinds.iter().enumerate() {
        let blocks = blocks(&heap, |r, f| each(r, f));
        let mut rng = Rng(0x7458_6865_6170 + k as u64);
        for i in 0..cases() {
            let (at, size) = blocks[rng.below(blocks.len() as u64) as usize];
            let w = at + 8 * rng.below(size / 8);
            let old = word(&heap, w);
            let (how, new) = damaged(&mut rng, old, &blocks);
            if new == old {
                continue;
            }
            let case = format!("{name} case {i}: word {w} (block {at} of {size} bytes) {how}: {old:#x} -> {new:#x}");
            poke(&heap, w, new);
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| ops(&heap, &mut seen, &case))) {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                seen.fail(format!("{case}: panicked: {msg}"));
            }
            assert!(!heap.is_poisoned(), "{case}: the heap is poisoned");
            poke(&heap, w, old);
            n += 1;
            progress.store(n, Ordering::SeqCst);
        }
        // The sweep changed nothing: every word is back, and every collection checks clean.
        heap.read(|r| {
            v.check(r)?;
            vb.check(r)?;
            h.check(r)?;
            hb.check(r)?;
            b.check(r)?;
            bb.check(r)?;
            nm.check(r)?;
            inner.iter().try_for_each(|v| v.check(r))
        })
        .unwrap_or_else(|e| panic!("after the {name} cases the heap is not as built: {e}"));
    }
    eprintln!(
        "random_damage: {n} cases in {:.1} s; outcomes by operation:",
        started.elapsed().as_secs_f64()
    );
    for (what, count) in &seen.outcomes {
        eprintln!("  {what}: {count}");
    }
    // The sweep must have reached damage, not only harmless words.
    let corrupt: u64 = seen
        .outcomes
        .iter()
        .filter(|(w, _)| w.ends_with(": Corrupt"))
        .map(|(_, c)| c)
        .sum();
    assert!(
        corrupt > 100,
        "only {corrupt} operations met damage: the sweep is not reaching it"
    );
    assert!(
        seen.failures.is_empty(),
        "{} failures; the first 20:\n{}",
        seen.failures.len(),
        seen.failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
