//! R-none: reading back right after non-durable commits. Each child first makes W2's data in
//! its own process, untimed (N transactions of one 64-byte item each, the store's fastest
//! setting), then times one pass that reads every item back: txheap walks the list in one
//! `heap.read`; LMDB runs one read transaction's cursor over every entry; the limit walks a
//! list of N `Box`ed 64-byte nodes. Under `Durability::None` txheap's file may not hold those
//! commits yet (their log is not durable), so before `Heap::read` flushed for such a reader
//! (docs/ARCHITECTURE.md section 11, step 8) it took every node from its overlay.
//! `txheap-flushed` calls `Heap::flush` before the timed read (untimed): the same read with
//! every commit in the file.

use std::time::Instant;

use heed::EnvFlags;
use txheap::{Durability, Heap, Options};

use crate::args::ChildArgs;
use crate::engines::txheap_engine::{count, push, FILE};
use crate::engines::{lmdb, value_for};
use crate::sample::Sample;
use crate::BoxResult;

/// Address space for LMDB's map.
const MAP_SIZE: usize = 4 << 30;

/// txheap: N `None` commits, then one read walking the list (timed).
pub fn txheap(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    txheap_read(args, false)
}

/// [`txheap`] with `Heap::flush` (untimed) before the read.
pub fn txheap_flushed(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    txheap_read(args, true)
}

fn txheap_read(args: &ChildArgs<'_>, flush: bool) -> BoxResult<Sample> {
    let heap = Heap::create(
        args.dir.join(FILE),
        Options::new().durability(Durability::None),
    )?;
    for i in 0..args.ops {
        push(&heap, i, 1)?;
    }
    if flush {
        heap.flush()?;
    }
    let start = Instant::now();
    let (len, walked) = count(&heap)?;
    let elapsed = start.elapsed();
    if len != args.ops || walked != args.ops {
        return Err(format!(
            "{} nodes expected, {len} in the root, {walked} walked",
            args.ops
        )
        .into());
    }
    heap.close()?;
    Ok(sample(args, elapsed))
}

/// LMDB `WRITE_MAP | NO_SYNC`: N puts (one per write transaction), then one read
/// transaction's cursor over every entry (timed), each value's bytes read.
pub fn lmdb_writemap_nosync(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let env = crate::sys::lmdb_env(args.dir, MAP_SIZE, EnvFlags::WRITE_MAP | EnvFlags::NO_SYNC)?;
    let db = lmdb::unnamed_db(&env)?;
    for key in 0..args.ops {
        let mut wtxn = env.write_txn()?;
        db.put(&mut wtxn, &key, &value_for(key))?;
        wtxn.commit()?;
    }
    let start = Instant::now();
    let (n, sum) = {
        let rtxn = env.read_txn()?;
        let mut n = 0u64;
        let mut sum = 0u64;
        for entry in db.iter(&rtxn)? {
            let (_, v) = entry?;
            n += 1;
            sum = sum.wrapping_add(u64::from_le_bytes(v[..8].try_into()?));
        }
        (n, sum)
    };
    let elapsed = start.elapsed();
    let expected = args.ops * args.ops.saturating_sub(1) / 2;
    if n != args.ops || sum != expected {
        return Err(format!("{} entries expected, {n} read (sum {sum})", args.ops).into());
    }
    env.force_sync()?;
    Ok(sample(args, elapsed))
}

/// A node of the limit's list: 64 bytes, like the others' items.
struct Node {
    value: u64,
    next: Option<Box<Node>>,
    _pad: [u64; 6],
}

/// The machine's limit: N `Box`ed nodes linked in memory (made untimed), one walk (timed).
pub fn limit(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let mut head: Option<Box<Node>> = None;
    for value in 0..args.ops {
        head = Some(Box::new(Node {
            value,
            next: head,
            _pad: [0; 6],
        }));
    }
    let start = Instant::now();
    let (mut n, mut sum) = (0u64, 0u64);
    let mut p = std::hint::black_box(head.as_deref());
    while let Some(node) = p {
        n += 1;
        sum = sum.wrapping_add(node.value);
        p = node.next.as_deref();
    }
    let elapsed = start.elapsed();
    std::hint::black_box(sum);
    if n != args.ops {
        return Err(format!("{} nodes expected, {n} walked", args.ops).into());
    }
    // Unlink iteratively: a recursive drop of a long list would overflow the stack.
    let mut p = head;
    while let Some(mut node) = p {
        p = node.next.take();
    }
    Ok(sample(args, elapsed))
}

/// The timed pass's sample: `args.ops` items read in `elapsed`.
fn sample(args: &ChildArgs<'_>, elapsed: std::time::Duration) -> Sample {
    Sample::new(args.engine, args.workload.name(), args.ops, elapsed, None)
}
