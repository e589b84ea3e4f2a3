//! A real full disk: a 24 MiB ext4 filesystem on a loop device, filled by growing a heap. Growth
//! must fail with ENOSPC as an `Error` from the transaction (never SIGBUS), the heap must keep
//! working, and every commit must survive a reopen. Skips (with a message) where it cannot mount.

use std::process::Command;

use txheap::{Error, Heap, Options, PSlice};

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn full_ext4_filesystem_gives_enospc_not_sigbus() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to mount a loop device");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let img_s = img.to_str().unwrap();
    if !run("truncate", &["-s", "24M", img_s]) || !run("mkfs.ext4", &["-q", "-F", img_s]) {
        eprintln!("SKIPPED: truncate or mkfs.ext4 unavailable");
        return;
    }
    if !run("mount", &["-o", "loop", img_s, mnt.to_str().unwrap()]) {
        eprintln!("SKIPPED: cannot mount a loop device here");
        return;
    }
    let _mount = Mount(mnt.clone());
    let path = mnt.join("full.heap");
    let opts = Options::new()
        .initial_size(0)
        .log_size(1 << 20)
        .max_size(1 << 30);
    let heap = Heap::create(&path, opts.clone()).unwrap();
    let mut kept: Vec<PSlice<u8>> = Vec::new();
    let err = loop {
        let r = heap.transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(1 << 20)?;
            tx.slice_mut(s)?.fill(kept.len() as u8 + 1);
            Ok(s)
        });
        match r {
            Ok(s) => kept.push(s),
            Err(e) => break e,
        }
        assert!(kept.len() < 100, "a 24 MiB filesystem never filled up");
    };
    eprintln!("filled after {} MiB: {err}", kept.len());
    match &err {
        Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}"),
        other => panic!("expected ENOSPC, got {other}"),
    }
    assert!(
        !heap.is_poisoned(),
        "a failed growth must not poison the heap"
    );
    assert!(
        kept.len() >= 8,
        "only {} MiB fit on a 24 MiB filesystem",
        kept.len()
    );
    // Commits work again once space is freed (a full disk may leave no chunk for a new run).
    heap.transaction(|tx| tx.free_slice(kept[0])).unwrap();
    heap.transaction(|tx| tx.alloc(1u64).map(|_| ())).unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, opts).unwrap();
    let intact = heap
        .read(|r| {
            Ok(kept[1..]
                .iter()
                .enumerate()
                .all(|(i, s)| r.slice(*s).unwrap().iter().all(|&b| b == i as u8 + 2)))
        })
        .unwrap();
    assert!(intact, "data committed before the disk filled was damaged");
}
