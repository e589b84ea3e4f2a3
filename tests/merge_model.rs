//! Node and bucket merges under random insert/remove sequences in transactions that
//! commit, return Err or panic; byte-string keys and tiny capacities; check() after each step,
//! reachability and inspect::check at the end.
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use txheap::{inspect, Error, Heap, Options, PBTreeMap, PBytes, PHashMap, PPtr, Stored};

type BtB = PBTreeMap<PBytes, PBytes>;
type BtBig = PBTreeMap<[u8; 200], [u8; 300]>;
type HB = PHashMap<PBytes, PBytes>;
type HBig = PHashMap<[u8; 200], [u8; 300]>;

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Stored)]
#[repr(C)]
struct Root {
    bt_b: BtB,
    bt_big: BtBig,
    h_b: HB,
    h_big: HBig,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn skey(n: u64) -> Vec<u8> {
    let mut k = format!("k{:05}", n).into_bytes();
    k.extend(std::iter::repeat_n(b'x', (n * 7 % 90) as usize));
    k
}
fn bkey(n: u64) -> [u8; 200] {
    let mut k = [0u8; 200];
    k[..8].copy_from_slice(&n.to_be_bytes());
    k[199] = n as u8;
    k
}
fn bval(n: u64, g: u64) -> [u8; 300] {
    let mut v = [0u8; 300];
    v[..8].copy_from_slice(&(n ^ g).to_le_bytes());
    v
}

/// Every B-tree node but the root holds at least a quarter of a node: removal merges an
/// underfull node with a sibling, or takes entries from a sibling it cannot merge with.
fn assert_filled(s: txheap::BTreeStats, step: u64) {
    assert!(
        s.fewest_in_leaf.is_none_or(|f| f >= s.leaf_capacity / 4)
            && s.fewest_in_inner.is_none_or(|f| f >= s.inner_capacity / 4),
        "step {step}: {s:?}"
    );
}

#[test]
fn random_merges_with_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.heap");
    let heap = Heap::create(&path, Options::new()).unwrap();
    let root = heap.transaction(|tx| tx.root::<Root>()).unwrap();
    let o = root.offset();
    let bt_b: PPtr<BtB> = PPtr::from_offset(o + std::mem::offset_of!(Root, bt_b) as u64);
    let bt_big: PPtr<BtBig> = PPtr::from_offset(o + std::mem::offset_of!(Root, bt_big) as u64);
    let h_b: PPtr<HB> = PPtr::from_offset(o + std::mem::offset_of!(Root, h_b) as u64);
    let h_big: PPtr<HBig> = PPtr::from_offset(o + std::mem::offset_of!(Root, h_big) as u64);
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    const KEYS: u64 = 1500;
    for step in 0..160u64 {
        let mode = rng.next() % 4; // 0,1 commit; 2 Err; 3 panic
        let grow = (step / 20) % 2 == 0;
        let nops = 20 + rng.next() % 300;
        let ops: Vec<(bool, u64, u64)> = (0..nops)
            .map(|_| {
                let ins = rng.next() % 100 < if grow { 70 } else { 25 };
                (ins, rng.next() % KEYS, rng.next())
            })
            .collect();
        let mut m2 = model.clone();
        let run = |tx: &mut txheap::Tx<'_>| -> txheap::Result<()> {
            for &(ins, k, g) in &ops {
                if ins {
                    bt_b.insert(tx, &skey(k), &g.to_le_bytes())?;
                    bt_big.insert(tx, &bkey(k), &bval(k, g))?;
                    h_b.insert(tx, &skey(k), &g.to_le_bytes())?;
                    h_big.insert(tx, &bkey(k), &bval(k, g))?;
                } else {
                    let a = bt_b.remove(tx, &skey(k))?;
                    let b = bt_big.remove(tx, &bkey(k))?;
                    let c = h_b.remove(tx, &skey(k))?;
                    let d = h_big.remove(tx, &bkey(k))?;
                    assert!(a == b && b == c && c == d, "{a} {b} {c} {d}");
                }
            }
            bt_b.check(tx)?;
            bt_big.check(tx)?;
            h_b.check(tx)?;
            h_big.check(tx)?;
            Ok(())
        };
        match mode {
            0 | 1 => {
                heap.transaction(|tx| run(tx)).unwrap();
                for &(ins, k, g) in &ops {
                    if ins {
                        m2.insert(k, g);
                    } else {
                        m2.remove(&k);
                    }
                }
                model = m2;
            }
            2 => {
                let r: txheap::Result<()> = heap.transaction(|tx| {
                    run(tx)?;
                    Err(Error::Corrupt {
                        offset: 0,
                        what: "abort".into(),
                    })
                });
                assert!(r.is_err());
            }
            _ => {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    heap.transaction(|tx| -> txheap::Result<()> {
                        run(tx)?;
                        panic!("abort by panic")
                    })
                }));
                assert!(r.is_err());
            }
        }
        heap.read(|r| {
            bt_b.check(r)?;
            bt_big.check(r)?;
            h_b.check(r)?;
            h_big.check(r)?;
            assert_filled(bt_b.stats(r)?, step);
            assert_filled(bt_big.stats(r)?, step);
            assert_eq!(bt_b.len(r)?, model.len() as u64, "step {step}");
            assert_eq!(bt_big.len(r)?, model.len() as u64);
            assert_eq!(h_b.len(r)?, model.len() as u64);
            assert_eq!(h_big.len(r)?, model.len() as u64);
            for k in 0..KEYS {
                let want = model.get(&k);
                let g1 = bt_b
                    .get(r, &skey(k))?
                    .map(|v| u64::from_le_bytes(v.try_into().unwrap()));
                let g2 = bt_big.get(r, &bkey(k))?.copied();
                let g3 = h_b
                    .get(r, &skey(k))?
                    .map(|v| u64::from_le_bytes(v.try_into().unwrap()));
                let g4 = h_big.get(r, &bkey(k))?.copied();
                assert_eq!(g1, want.copied(), "step {step} key {k}");
                assert_eq!(g2, want.map(|&g| bval(k, g)), "step {step} key {k}");
                assert_eq!(g3, want.copied(), "step {step} key {k}");
                assert_eq!(g4, want.map(|&g| bval(k, g)), "step {step} key {k}");
            }
            Ok(())
        })
        .unwrap();
        let reach = heap.reachability::<Root>().unwrap();
        assert!(
            reach.leaked.is_empty() && reach.dangling.is_empty(),
            "step {step}: {} leaked, {} dangling",
            reach.leaked.len(),
            reach.dangling.len()
        );
    }
    // Empty everything, in one transaction, then check nothing is left.
    let keys: Vec<u64> = model.keys().copied().collect();
    heap.transaction(|tx| {
        for &k in &keys {
            assert!(bt_b.remove(tx, &skey(k))?);
            assert!(bt_big.remove(tx, &bkey(k))?);
            assert!(h_b.remove(tx, &skey(k))?);
            assert!(h_big.remove(tx, &bkey(k))?);
        }
        Ok(())
    })
    .unwrap();
    let reach = heap.reachability::<Root>().unwrap();
    assert!(reach.leaked.is_empty() && reach.dangling.is_empty());
    let st = heap.stats().unwrap();
    eprintln!("used after emptying: {}", st.used_bytes);
    heap.close().unwrap();
    let report = inspect::check(&path, &mut |_, _| {}).unwrap();
    assert_eq!(
        report.verdict,
        inspect::Verdict::Clean,
        "{:?}",
        report.findings
    );
}
