//! Free space may be a hole (compaction punches it; a compact copy leaves it out), and a hole
//! written later meets a full disk where nothing can be taken back: at the commit's apply (the
//! handle poisoned, an `Err` for a committed transaction) or through the mapping (SIGBUS on
//! tmpfs). Space taken from free space gets its disk blocks when it is taken, so that a full
//! disk is the allocating operation's error, before anything changed (a review found all of
//! the above).
//!
//! The first test runs anywhere; the full-disk ones mount a small tmpfs (root only: they say
//! so and pass where the mount is refused).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use txheap::{Durability, Error, Heap, Options, PSlice};

fn opts(d: Durability) -> Options {
    Options::new()
        .initial_size(1 << 20)
        .log_size(1 << 20)
        .max_size(64 << 20)
        .durability(d)
        // Other tests of this binary spawn processes (mount, mkfs, a child): a child forked
        // while this test's handle was open holds its file description, and so its `flock`,
        // until it execs, so a reopen right after a close can find the file held for an
        // instant (CI met `Locked` here once).
        .lock_wait(std::time::Duration::from_secs(10))
}

/// One test at a time in this binary: a process that another test spawns (mount, mkfs, a
/// child) holds every open file description from its fork to its exec, a filler removed to
/// free a full disk among them, whose space is then given back only at that exec: a
/// transaction right after the removal met ENOSPC now and then.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn disk_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// A heap with 16 free, punched 256 KiB extents behind a kept object; returns the kept one.
fn punched(heap: &Heap) -> PSlice<u8> {
    let mut big = Vec::new();
    for i in 0..16u8 {
        big.push(
            heap.transaction(|tx| {
                let s = tx.alloc_slice_zeroed::<u8>(256 << 10)?;
                tx.slice_mut(s)?.fill(i + 1);
                Ok(s)
            })
            .unwrap(),
        );
    }
    let keep = heap
        .transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(256 << 10)?;
            tx.slice_mut(s)?.fill(0x77);
            Ok(s)
        })
        .unwrap();
    for s in &big {
        heap.transaction(|tx| tx.free_slice(*s)).unwrap();
    }
    let rep = heap.compact().unwrap();
    assert!(rep.punched_bytes >= 2 << 20, "{rep:?}");
    keep
}

#[test]
fn space_taken_from_punched_free_space_has_blocks_at_once() {
    let _serial = serial();
    for d in [Durability::Full, Durability::None] {
        for size in [256u64 << 10, 64] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("h.heap");
            let heap = Heap::create(&path, opts(d)).unwrap();
            punched(&heap);
            let before = disk_bytes(&path);
            let during = heap
                .transaction(|tx| {
                    for _ in 0..4 {
                        tx.alloc_slice_zeroed::<u8>(size)?;
                    }
                    // Inside the body: the space taken already has its blocks.
                    Ok(disk_bytes(&path))
                })
                .unwrap();
            // Four extents of a chunk each, or one new run's chunk.
            let want = if size == 64 { 256 << 10 } else { 4 * size };
            assert!(
                during >= before + want,
                "{d:?} size {size}: {before} bytes of blocks before, {during} inside the body \
                 after taking {want} bytes of punched free space"
            );
            heap.close().unwrap();
        }
    }
}

/// A large object grown in place over its extent's punched pages and the punched free chunks
/// after it: the same, through `realloc_slice`.
#[test]
fn a_large_object_grown_over_punched_pages_has_blocks_at_once() {
    let _serial = serial();
    for (to, what) in [
        (500u64 << 10, "its own tail"),
        (1 << 20, "the chunks after it"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.heap");
        let heap = Heap::create(&path, opts(Durability::Full)).unwrap();
        // 300 KiB in a 512 KiB extent, then a 1 MiB extent freed behind it, and an object
        // after that (so the freed one is not the heap's tail).
        let s = heap
            .transaction(|tx| tx.alloc_slice(&vec![3u8; 300 << 10]))
            .unwrap();
        let gap = heap
            .transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 20))
            .unwrap();
        heap.transaction(|tx| tx.alloc(1u64)).unwrap();
        heap.transaction(|tx| tx.free_slice(gap)).unwrap();
        let rep = heap.compact().unwrap();
        assert!(rep.punched_bytes >= (1 << 20) + (200 << 10), "{rep:?}");
        let before = disk_bytes(&path);
        let during = heap
            .transaction(|tx| {
                let t = tx.realloc_slice(s, 300 << 10, to)?;
                assert_eq!(t.offset(), s.offset(), "grown in place");
                Ok(disk_bytes(&path))
            })
            .unwrap();
        let want = to - (300 << 10);
        assert!(
            during >= before + want - 4096,
            "over {what}: {before} bytes of blocks before, {during} inside the body"
        );
        heap.close().unwrap();
    }
}

/// A small filesystem (tmpfs, or ext4 in a loop-mounted image), unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
    /// The ext4 image's directory, removed after the unmount.
    _img: Option<tempfile::TempDir>,
}

impl SmallFs {
    fn new(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("mount of a small tmpfs refused (not root?): full-disk case skipped");
        }
        ok.then_some(SmallFs { dir, _img: None })
    }

    /// ext4 keeps the blocks a failed `posix_fallocate` got (tmpfs gives them back).
    fn ext4(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let img_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let img = img_dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let quiet = || std::process::Stdio::null();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .stdout(quiet())
            .stderr(quiet())
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(dir.path())
                .stderr(quiet())
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("mkfs.ext4 or a loop mount refused (not root?): full-disk case skipped");
        }
        ok.then_some(SmallFs {
            dir,
            _img: Some(img_dir),
        })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fill the filesystem holding `dir`; returns the filler (remove it to free the space).
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let buf = vec![0xAAu8; 4096];
    loop {
        match f.write(&buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    p
}

fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
}

/// After `compact`, on a full disk, a transaction taking the punched space fails with ENOSPC,
/// does not poison the handle (the heap goes on), and every acknowledged transaction stays.
#[test]
fn a_full_disk_under_punched_free_space_is_the_allocation_s_error() {
    let _serial = serial();
    for d in [Durability::Full, Durability::None] {
        for size in [256u64 << 10, 64] {
            let Some(fs) = SmallFs::new(24) else {
                return;
            };
            let path = fs.path().join("h.heap");
            let heap = Heap::create(&path, opts(d)).unwrap();
            let keep = punched(&heap);
            let filler = fill(fs.path());
            let r = heap.transaction(|tx| {
                for _ in 0..8 {
                    let s = tx.alloc_slice_zeroed::<u8>(size)?;
                    tx.slice_mut(s)?.fill(0x55);
                }
                Ok(())
            });
            let e = r.expect_err("allocated into holes on a full disk");
            assert!(is_enospc(&e), "{d:?} size {size}: {e}");
            assert!(!heap.is_poisoned(), "{d:?} size {size}: {e}");
            // The heap goes on: a write into existing space commits.
            heap.transaction(|tx| tx.slice_mut(keep).map(|b| b[0] = 0x78))
                .unwrap();
            std::fs::remove_file(&filler).unwrap();
            let s = heap
                .transaction(|tx| {
                    let s = tx.alloc_slice_zeroed::<u8>(size)?;
                    tx.slice_mut(s)?.fill(0x55);
                    Ok(s)
                })
                .unwrap();
            heap.close().unwrap();
            let heap = Heap::open(&path, opts(d)).unwrap();
            heap.read(|r| {
                let k = r.slice(keep)?;
                assert!(k[0] == 0x78 && k[1..].iter().all(|&b| b == 0x77));
                assert!(r.slice(s)?.iter().all(|&b| b == 0x55));
                Ok(())
            })
            .unwrap();
            heap.close().unwrap();
        }
    }
}

#[test]
fn full_tmpfs_child() {
    let _serial = serial();
    let Ok(dir) = std::env::var("TXHEAP_FULL_TMPFS_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let heap = Heap::create(dir.join("h.heap"), opts(Durability::Full)).unwrap();
    punched(&heap);
    let filler = fill(&dir);
    let r = heap.transaction(|tx| {
        for _ in 0..8 {
            tx.alloc_slice_zeroed::<u8>(64)?;
        }
        Ok(())
    });
    std::fs::remove_file(filler).unwrap();
    println!("CHILD-DONE {}", r.as_ref().err().is_some_and(is_enospc));
}

/// tmpfs gives a page on any fault of the mapping, even a read: a new run's bitmap staged
/// from a punched page, on a full tmpfs, was SIGBUS.
#[test]
fn a_full_tmpfs_under_punched_free_space_is_not_sigbus() {
    let _serial = serial();
    let Some(fs) = SmallFs::new(24) else {
        return;
    };
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "full_tmpfs_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TXHEAP_FULL_TMPFS_CHILD", fs.path())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        None,
        "the child died of a signal\n{stdout}"
    );
    assert!(stdout.contains("CHILD-DONE true"), "{stdout}");
}

/// A growth that fails on a full ext4 leaves the file as it was: a failed `posix_fallocate`
/// there keeps the blocks it got and the length over them, which a review found kept (the
/// next checkpoint recorded the length), so that the closed heap's reopen on the same disk was
/// refused: the log's blocks had gone to that tail.
#[test]
fn a_failed_growth_leaves_the_file_as_it_was() {
    let _serial = serial();
    let Some(fs) = SmallFs::ext4(24) else {
        return;
    };
    let path = fs.path().join("h.heap");
    let o = || opts(Durability::Full).max_size(1 << 30);
    let heap = Heap::create(&path, o()).unwrap();
    let mut kept: Vec<PSlice<u8>> = Vec::new();
    let (len_before, err) = loop {
        let len = std::fs::metadata(&path).unwrap().len();
        match heap.transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(300 << 10)?;
            tx.slice_mut(s)?.fill(kept.len() as u8 + 1);
            Ok(s)
        }) {
            Ok(s) => kept.push(s),
            Err(e) => break (len, e),
        }
        assert!(kept.len() < 200, "the disk never filled");
    };
    assert!(is_enospc(&err), "{err:?}");
    assert!(!heap.is_poisoned());
    let len_after = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        len_after, len_before,
        "the failed growth changed the file's length"
    );
    heap.close().unwrap();
    let heap = Heap::open(&path, o()).expect("reopen on the same disk");
    heap.read(|r| {
        for (i, s) in kept.iter().enumerate() {
            assert!(r.slice(*s)?.iter().all(|&b| b == i as u8 + 1));
        }
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
}

/// A writable open of a closed heap on a full disk names the log's blocks under both
/// durabilities (a review found `None`'s error naming only "storage at offset 0"); the file is
/// unchanged, and the open works once space is freed.
#[test]
fn a_writable_open_on_a_full_disk_names_the_log() {
    let _serial = serial();
    for d in [Durability::Full, Durability::None] {
        let Some(fs) = SmallFs::new(24) else {
            return;
        };
        let path = fs.path().join("h.heap");
        let o = || opts(d).log_size(4 << 20);
        let heap = Heap::create(&path, o()).unwrap();
        let s = heap.transaction(|tx| tx.alloc_slice(&[9u8; 1000])).unwrap();
        heap.close().unwrap();
        let filler = fill(fs.path());
        let before = std::fs::read(&path).unwrap();
        let e = Heap::open(&path, o()).expect_err("opened on a full disk");
        assert!(is_enospc(&e), "{d:?}: {e:?}");
        assert!(e.to_string().contains("log's blocks"), "{d:?}: {e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{d:?}: the file changed"
        );
        std::fs::remove_file(&filler).unwrap();
        let heap = Heap::open(&path, o()).unwrap();
        assert!(heap
            .read(|r| Ok(r.slice(s)?.iter().all(|&b| b == 9)))
            .unwrap());
        heap.close().unwrap();
    }
}

/// A compaction cut short between its shrinking checkpoint and the file's cut (as by a crash)
/// leaves the file longer than the heap, and that tail may hold holes an earlier compaction
/// punched (free space in the middle then). The reopened heap's growth into it claims it:
/// the space has its blocks inside the transaction body (a review found a new run's bitmap
/// applied into such a hole, the handle poisoned on a full disk after the commit point).
#[cfg(feature = "test-hooks")]
#[test]
fn growth_into_a_tail_left_by_a_compaction_cut_short_has_blocks_at_once() {
    let _serial = serial();
    use txheap_recovery::sabotage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.heap");
    let heap = Heap::create(&path, opts(Durability::Full)).unwrap();
    heap.transaction(|tx| tx.alloc(7u64)).unwrap();
    // F (16 chunks), then G (1 chunk); F freed and punched by a first compaction.
    let f = heap
        .transaction(|tx| tx.alloc_slice_zeroed::<u8>(16 << 18))
        .unwrap();
    let g = heap
        .transaction(|tx| tx.alloc_slice(&vec![1u8; 256 << 10]))
        .unwrap();
    heap.transaction(|tx| tx.free_slice(f)).unwrap();
    heap.compact().unwrap();
    // G freed: the second compaction cuts F and G from the heap, and stops before the cut.
    heap.transaction(|tx| tx.free_slice(g)).unwrap();
    sabotage::panic_at(Some("compact.before_cut"));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| heap.compact()));
    sabotage::panic_at(None);
    assert!(r.is_err(), "the failpoint did not fire");
    drop(heap);
    let heap = Heap::open(&path, opts(Durability::Full)).unwrap();
    let st = heap.stats().unwrap();
    assert!(
        st.file_len > 8192 + st.log_size + 8192 + st.heap_bytes + (4 << 20),
        "{st:?}"
    );
    let before = disk_bytes(&path);
    let during = heap
        .transaction(|tx| {
            // A new run, of a size class not used yet: the heap grows over the old F.
            tx.alloc([5u64; 100])?;
            Ok(disk_bytes(&path))
        })
        .unwrap();
    assert!(
        during >= before + (256 << 10),
        "{before} bytes of blocks before, {during} inside the body"
    );
    heap.close().unwrap();
}

#[test]
fn backup_child() {
    let _serial = serial();
    let Ok(dir) = std::env::var("TXHEAP_BACKUP_CHILD") else {
        return;
    };
    let flag = |v: &str| std::env::var(v).is_ok();
    let d = match flag("TXHEAP_BACKUP_NONE") {
        true => Durability::None,
        false => Durability::Full,
    };
    let dir = PathBuf::from(dir);
    let elsewhere = tempfile::tempdir().unwrap();
    let heap = Heap::create(dir.join("h.heap"), opts(d)).unwrap();
    let keep = punched(&heap);
    let heap = match flag("TXHEAP_BACKUP_REOPEN") {
        true => {
            heap.close().unwrap();
            Heap::open(dir.join("h.heap"), opts(d)).unwrap()
        }
        false => heap,
    };
    if flag("TXHEAP_BACKUP_CHECKPOINT") {
        // More commits, and a checkpoint (as a full log makes one): the punched pages are now
        // read through the mapping, not shown as zeros.
        for i in 0..10u64 {
            heap.transaction(|tx| tx.alloc(i)).unwrap();
        }
        heap.checkpoint().unwrap();
    }
    let filler = fill(&dir);
    let dst = match flag("TXHEAP_BACKUP_SAME") {
        true => {
            // Room for the copy on the same filesystem, which the copy then fills.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&filler)
                .unwrap();
            let src_len = std::fs::metadata(dir.join("h.heap")).unwrap().len();
            f.set_len(f.metadata().unwrap().len() - src_len).unwrap();
            dir.join("copy.heap")
        }
        // Another (roomy) filesystem: a backup off a full disk.
        false => elsewhere.path().join("copy.heap"),
    };
    let r = heap.backup_to(&dst);
    std::fs::remove_file(filler).unwrap();
    assert!(heap
        .read(|r| Ok(r.slice(keep)?.iter().all(|&b| b == 0x77)))
        .unwrap());
    if r.is_ok() {
        let copy = Heap::open_read_only(&dst).unwrap();
        assert!(copy
            .read(|r| Ok(r.slice(keep)?.iter().all(|&b| b == 0x77)))
            .unwrap());
    }
    println!("CHILD-DONE {}", r.err().is_none_or(|e| is_enospc(&e)));
}

/// A full copy (`backup_to`) of a compacted heap on a full tmpfs: it read the punched free
/// space through the readers' mapping, and a fault on a tmpfs hole takes a page, so the
/// process died of SIGBUS (a review found it, once a checkpoint or a reopen had dropped the
/// zeros the compaction showed readers), whether the copy went to another filesystem or to
/// the same one.
#[test]
fn a_backup_of_a_compacted_heap_on_a_full_tmpfs_is_not_sigbus() {
    let _serial = serial();
    let cases: &[&[&str]] = &[
        &[],
        &["TXHEAP_BACKUP_NONE"],
        &["TXHEAP_BACKUP_CHECKPOINT"],
        &["TXHEAP_BACKUP_CHECKPOINT", "TXHEAP_BACKUP_NONE"],
        &["TXHEAP_BACKUP_REOPEN"],
        &["TXHEAP_BACKUP_REOPEN", "TXHEAP_BACKUP_NONE"],
        &["TXHEAP_BACKUP_REOPEN", "TXHEAP_BACKUP_SAME"],
    ];
    let mut failures = Vec::new();
    for case in cases {
        let Some(fs) = SmallFs::new(24) else {
            return;
        };
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", "backup_child", "--nocapture", "--test-threads=1"])
            .env("TXHEAP_BACKUP_CHILD", fs.path());
        for v in *case {
            c.env(v, "1");
        }
        let out = c.output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(sig) = out.status.signal() {
            failures.push(format!("{case:?}: the child died of signal {sig}"));
        } else if !stdout.contains("CHILD-DONE true") {
            failures.push(format!("{case:?}: {stdout}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A backup only reads its source (ARCHITECTURE section 13), so the space a compaction gave
/// back stays given back (a review found a backup taking 4 MiB of it back, on tmpfs).
#[test]
fn a_backup_does_not_take_back_the_space_compaction_returned() {
    let _serial = serial();
    let Some(fs) = SmallFs::new(64) else {
        return;
    };
    let p = fs.path().join("h.heap");
    let heap = Heap::create(&p, opts(Durability::Full)).unwrap();
    let keep = punched(&heap);
    heap.close().unwrap();
    let heap = Heap::open(&p, opts(Durability::Full)).unwrap();
    let before = disk_bytes(&p);
    let dst = tempfile::tempdir().unwrap();
    let copy = dst.path().join("copy.heap");
    let report = heap.backup_to(&copy).unwrap();
    let after = disk_bytes(&p);
    heap.close().unwrap();
    assert!(
        after <= before,
        "the source took {} bytes of disk blocks back during a backup ({before} -> {after})",
        after - before
    );
    // Still a full copy: the source's chunk count and length, and blocks for all of it.
    assert_eq!(report.file_len, std::fs::metadata(&p).unwrap().len());
    assert!(
        disk_bytes(&copy) >= report.file_len - (1 << 20),
        "{report:?}"
    );
    let c = Heap::open_read_only(&copy).unwrap();
    assert!(c
        .read(|r| Ok(r.slice(keep)?.iter().all(|&b| b == 0x77)))
        .unwrap());
}
