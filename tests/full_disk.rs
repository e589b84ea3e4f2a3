//! A file that cannot grow (the kernel's RLIMIT_FSIZE, enforced like a full disk: EFBIG from
//! posix_fallocate) gives an `Error` from the allocating transaction, never SIGBUS; the heap
//! stays usable and keeps every commit. Runs in a child process so the limit stays there.

use std::process::Command;

use txheap::{Error, Heap, Options, PSlice};

const LIMIT: u64 = 24 << 20;

#[test]
fn full_disk_child() {
    let Ok(path) = std::env::var("TXHEAP_FULL_DISK_CHILD") else {
        return;
    };
    // SAFETY: plain libc calls with valid arguments, before any other thread of ours exists
    // that could race on the signal disposition.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: LIMIT,
            rlim_max: LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let heap = Heap::create(
        &path,
        Options::new()
            .initial_size(1 << 20)
            .log_size(1 << 20)
            .max_size(1 << 30),
    )
    .unwrap();
    let mut kept: Vec<PSlice<u8>> = Vec::new();
    let err = loop {
        match heap.transaction(|tx| {
            let s = tx.alloc_slice_zeroed::<u8>(1 << 20)?;
            tx.slice_mut(s)?.fill(kept.len() as u8 + 1);
            Ok(s)
        }) {
            Ok(s) => kept.push(s),
            Err(e) => break e,
        }
        assert!(kept.len() < 100, "the file never hit its size limit");
    };
    match &err {
        Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EFBIG), "{err}"),
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        !heap.is_poisoned(),
        "a failed growth must not poison the heap"
    );
    assert!(
        kept.len() >= 10,
        "only {} MiB fit under a {} MiB limit",
        kept.len(),
        LIMIT >> 20
    );
    // Everything committed is intact, and commits still work once space is freed (the growth
    // step is small, so a full disk may leave no chunk for a new run before a free).
    let intact = heap
        .read(|r| {
            Ok(kept
                .iter()
                .enumerate()
                .all(|(i, s)| r.slice(*s).unwrap().iter().all(|&b| b == i as u8 + 1)))
        })
        .unwrap();
    assert!(intact);
    heap.transaction(|tx| tx.free_slice(kept[0])).unwrap();
    heap.transaction(|tx| tx.alloc(5u64).map(|_| ())).unwrap();
    // The freed 1 MiB (4 chunks) less the small object's run: room for 512 KiB.
    heap.transaction(|tx| tx.alloc_slice_zeroed::<u8>(1 << 19).map(|_| ()))
        .unwrap();
    heap.close().unwrap();
    let heap = Heap::open(&path, Options::new()).unwrap();
    let n = heap
        .read(|r| Ok(kept[1..].iter().filter(|s| r.slice(**s).is_ok()).count()))
        .unwrap();
    assert_eq!(n, kept.len() - 1);
    println!("FULL-DISK-OK {} MiB then {err}", kept.len());
}

#[test]
fn growth_past_a_file_size_limit_is_an_error_not_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "full_disk_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TXHEAP_FULL_DISK_CHILD", dir.path().join("full.heap"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        None,
        "child died of a signal (SIGBUS?)\n{stdout}\n{stderr}"
    );
    assert!(
        out.status.success() && stdout.contains("FULL-DISK-OK"),
        "child failed:\n{stdout}\n{stderr}"
    );
}
