//! The `txheap` command: info on a good file, a clear refusal of a foreign one, recover.

use std::process::Command;

fn txheap(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_txheap"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn info_recover_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.heap");
    let p = path.to_str().unwrap();
    let heap = txheap::Heap::create(&path, txheap::Options::new()).unwrap();
    heap.transaction(|tx| tx.alloc([1u64; 8]).map(|_| ()))
        .unwrap();
    // Leave the frame in the log: copy the file while open, as a crash would.
    let crashed = dir.path().join("crashed.heap");
    std::fs::copy(&path, &crashed).unwrap();
    drop(heap);
    let (code, out, _) = txheap(&["info", p]);
    assert_eq!(code, 0);
    assert!(out.contains("used") && out.contains("   64 "), "{out}");
    let c = crashed.to_str().unwrap();
    let (code, out, _) = txheap(&["info", c]);
    assert_eq!(code, 0);
    assert!(
        !out.contains("log             0 of"),
        "the crashed copy must show frames in its log: {out}"
    );
    let (code, out, _) = txheap(&["recover", c]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = txheap(&["info", c]);
    assert!(
        out.contains("log             0 of"),
        "after recover the log is empty: {out}"
    );
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, b"hello").unwrap();
    let (code, _, err) = txheap(&["info", foreign.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a txheap file"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"hello");
    assert_eq!(txheap(&["bogus"]).0, 2);
}

#[test]
fn a_damaged_log_is_refused_by_name_and_salvaged_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.heap");
    let heap = txheap::Heap::create(&path, txheap::Options::new()).unwrap();
    for i in 0..3u64 {
        heap.transaction(|tx| tx.alloc([i; 8]).map(|_| ())).unwrap();
    }
    // A power cut keeps the three durable frames in the log; then the disk flips a bit in the
    // first one's payload (frames start at 8192; its header is 40 bytes).
    let crashed = dir.path().join("crashed.heap");
    std::fs::copy(&path, &crashed).unwrap();
    drop(heap);
    let mut img = std::fs::read(&crashed).unwrap();
    img[8192 + 60] ^= 1;
    std::fs::write(&crashed, &img).unwrap();
    let c = crashed.to_str().unwrap();
    let (code, _, err) = txheap(&["info", c]);
    assert_eq!(code, 1);
    assert!(err.contains("damaged") && err.contains("salvage"), "{err}");
    let (code, _, err) = txheap(&["recover", c]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        std::fs::read(&crashed).unwrap(),
        img,
        "a refused recover changed the file"
    );
    let (code, out, err) = txheap(&["recover", "--salvage", c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("salvaged") && out.contains("3 dropped"),
        "{out}"
    );
    let (code, out, _) = txheap(&["info", c]);
    assert_eq!(code, 0, "{out}");
}
