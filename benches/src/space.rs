//! Space: heap file bytes per live payload byte. A child makes N live 64-byte nodes (the W1
//! list) in transactions of 1,000 with default options (`Durability::Full`, 16 MiB log), and
//! reports the file's length and allocated blocks; the churn case then frees every other node
//! and allocates as many again, and reports the same. Time is reported too (the fill, or the
//! churn), but the figure is bytes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use txheap::{Heap, Options, PPtr};

use crate::args::ChildArgs;
use crate::engines::txheap_engine::{count, push, Node, Root, FILE};
use crate::sample::Sample;
use crate::BoxResult;

/// Nodes per transaction.
const BATCH: u64 = 1_000;
/// Payload bytes of one node.
const NODE: u64 = std::mem::size_of::<Node>() as u64;

/// `args.ops` nodes in transactions of [`BATCH`].
pub fn fill(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let (heap, path) = create(args.dir)?;
    let start = Instant::now();
    fill_list(&heap, 0, args.ops)?;
    let elapsed = start.elapsed();
    finish(args, heap, &path, args.ops, elapsed)
}

/// [`fill`], then every other node freed and as many allocated again (the timed part).
pub fn churn(args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let (heap, path) = create(args.dir)?;
    fill_list(&heap, 0, args.ops)?;
    let start = Instant::now();
    let freed = free_every_other(&heap)?;
    fill_list(&heap, args.ops, freed)?;
    let elapsed = start.elapsed();
    finish(args, heap, &path, args.ops, elapsed)
}

fn create(dir: &Path) -> BoxResult<(Heap, std::path::PathBuf)> {
    let path = dir.join(FILE);
    Ok((Heap::create(&path, Options::new())?, path))
}

fn fill_list(heap: &Heap, first: u64, n: u64) -> txheap::Result<()> {
    let mut done = 0;
    while done < n {
        let k = BATCH.min(n - done);
        push(heap, first + done, k)?;
        done += k;
    }
    Ok(())
}

/// Unlink and free the 2nd, 4th, ... node of the list, [`BATCH`] per transaction.
fn free_every_other(heap: &Heap) -> txheap::Result<u64> {
    let mut cursor: PPtr<Node> = heap.read(|r| Ok(r.get(r.root::<Root>()?)?.head))?;
    let mut freed = 0;
    while !cursor.is_null() {
        let (next, n) = heap.transaction(|tx| {
            let (mut c, mut n) = (cursor, 0);
            while !c.is_null() && n < BATCH {
                let victim = tx.get(c)?.next;
                if victim.is_null() {
                    c = PPtr::null();
                    break;
                }
                let after = tx.get(victim)?.next;
                tx.get_mut(c)?.next = after;
                tx.free(victim)?;
                n += 1;
                c = after;
            }
            let root = tx.root::<Root>()?;
            tx.get_mut(root)?.len -= n;
            Ok((c, n))
        })?;
        cursor = next;
        freed += n;
    }
    Ok(freed)
}

/// Check the list, close the heap, and report its file's length and blocks for `live` nodes.
fn finish(
    args: &ChildArgs<'_>,
    heap: Heap,
    path: &Path,
    live: u64,
    elapsed: std::time::Duration,
) -> BoxResult<Sample> {
    let (len, walked) = count(&heap)?;
    if len != live || walked != live {
        return Err(
            format!("space: {live} nodes expected, root.len {len}, {walked} walked").into(),
        );
    }
    heap.close()?;
    let m = std::fs::metadata(path)?;
    let mut s = Sample::new(args.engine, args.workload.name(), live, elapsed, None);
    s.bytes = live * NODE;
    s.file_len = Some(m.len());
    s.file_alloc = Some(m.blocks() * 512);
    Ok(s)
}
