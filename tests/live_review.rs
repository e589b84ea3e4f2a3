//! The inspection tools and read-only handles beside a writer, on live files (found by the
//! twenty-second session's review, each failing before its fix): live damage came back as `Err`
//! instead of a finding; the live copy was readable by other users; a handle's `stats`
//! described whatever file its path named later. (The review's fourth finding, a live check
//! overtaken by checkpoints reporting a sound heap damaged, is reproduced deterministically by
//! `inspect::tests::a_checkpoint_under_every_scan_is_not_damage`.)

use txheap::{Heap, Options, PSlice};

/// `inspect::check` of a heap that a writer holds copies its metadata, the root area, the log's
/// frames and the first 2 KiB of every chunk into a temporary file in the system's temp
/// directory, created with the default mode (0644 under the usual umask): readable by every
/// user, whatever the heap file's own mode, and left behind if the checker is killed.
#[test]
fn a_live_copy_is_not_readable_by_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("secret.heap");
    let w = Heap::create(&p, Options::new().log_size(1 << 20)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    const SECRET: [u8; 32] = *b"SECRET-PASSWORD-0123456789abcdef";
    w.transaction(|tx| {
        let r = tx.root::<[u8; 32]>()?;
        tx.set(r, SECRET)
    })
    .unwrap();
    let prefix = format!(".txheap-live-{}-", std::process::id());
    let mut seen: Vec<(std::path::PathBuf, u32, bool)> = Vec::new();
    let r = txheap::inspect::check(&p, &mut |_, _| {
        if !seen.is_empty() {
            return;
        }
        // The copy has no name once made (Linux): found through this process's descriptors,
        // whose links still show the name it had (" (deleted)").
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let named = target
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
            if named {
                let mode = std::fs::metadata(e.path()).unwrap().permissions().mode() & 0o777;
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                let has = bytes.windows(SECRET.len()).any(|w| w == SECRET);
                seen.push((target, mode, has));
            }
        }
    })
    .unwrap();
    assert_eq!(r.live, Some(1));
    println!("heap file mode {:o}; copies seen: {seen:?}", 0o600);
    assert!(!seen.is_empty(), "the copy was not seen (test setup)");
    for (path, mode, has) in &seen {
        assert!(
            mode & 0o077 == 0,
            "{} holds the heap's data (secret present: {has}) with mode {mode:o}, though the \
             heap file is 0600",
            path.display()
        );
    }
}

/// A live handle's `stats()` reads the file at the handle's *path* again (`inspect::stats`),
/// not the file the handle has open: once that path names another heap (a copy renamed into
/// place), the handle's figures are another file's, while its reads show its own file.
#[test]
fn live_handle_stats_describe_its_own_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.heap");
    let w = Heap::create(&p, Options::new().log_size(1 << 20)).unwrap();
    w.transaction(|tx| {
        let r = tx.root::<PSlice<u8>>()?;
        let s = tx.alloc_slice(&vec![7u8; 100_000])?;
        tx.set(r, s)
    })
    .unwrap();
    let r = Heap::open_read_only(&p).unwrap();
    let before = r.stats().unwrap().used_bytes;
    assert_eq!(before, w.stats().unwrap().used_bytes);
    // Another heap renamed over the path (as a compacted copy would be).
    let q = d.path().join("b.heap");
    Heap::create(&q, Options::new().log_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    std::fs::rename(&q, &p).unwrap();
    let len = r
        .read(|rd| Ok(rd.get(rd.root::<PSlice<u8>>()?)?.len()))
        .unwrap();
    assert_eq!(len, 100_000, "the handle still reads its own file");
    let after = r.stats().unwrap().used_bytes;
    assert_eq!(
        after, before,
        "the live handle's stats now describe another file (used bytes {after}, its own file \
         {before})"
    );
}

/// `inspect::check`'s contract: "Damage is a Finding, never an Err". Beside a writer, a damaged
/// durable frame makes `LiveCopy::take` return `Err(LogDamaged)`, which `check` passes on with
/// `?`: no report, no findings (and `txheap check --json` prints no JSON).
#[test]
fn live_damage_is_a_finding_not_an_err() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dmg.heap");
    let w = Heap::create(&p, Options::new()).unwrap();
    for i in 0..3u64 {
        w.transaction(|tx| tx.alloc([i; 6]).map(|_| ())).unwrap();
    }
    let log = txheap::inspect::read_log(&p).unwrap();
    assert_eq!(log.frames.len(), 3);
    let at = log.frames[0].offset + 60;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
    match txheap::inspect::check(&p, &mut |_, _| {}) {
        Ok(r) => assert_eq!(r.verdict, txheap::inspect::Verdict::Damaged),
        Err(e) => panic!("damage came back as Err, not as a finding: {e}"),
    }
}
