//! The `txheap` command, run as a binary: info, stats, check (its exit code and the named
//! inconsistency on a good file and on each kind of damaged file of `tests/bad_input.rs`),
//! dump-log, recover and recover --dry-run, and `--json` on each read-only subcommand.

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
    assert_eq!(code, 8);
    assert!(err.contains("not a txheap file"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"hello");
    assert_eq!(txheap(&["bogus"]).0, 8);
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
    assert_eq!(code, 4);
    assert!(err.contains("damaged") && err.contains("salvage"), "{err}");
    let (code, _, err) = txheap(&["recover", c]);
    assert_eq!(code, 4, "{err}");
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

// ---- check: exit codes and named inconsistencies --------------------------------------------

const LOG_SIZE: u64 = 64 << 10;
const LOG_OFFSET: u64 = 8192;
const HEAP_OFFSET: u64 = LOG_OFFSET + LOG_SIZE;
const CHUNK_AREA: u64 = HEAP_OFFSET + 8192;
const CHUNK: u64 = 256 << 10;

fn opts() -> txheap::Options {
    txheap::Options::new()
        .log_size(LOG_SIZE)
        .initial_size(4 << 20)
        .max_size(64 << 20)
}

/// A heap with `n` committed transactions (a 16-byte and a 48-byte object each), closed
/// cleanly when `crashed` is false; else the file as a power cut after the last commit leaves
/// it (its frames in the log, not yet checkpointed). Returns the file's bytes and the offset
/// of the first 48-byte object.
fn heap_image(dir: &std::path::Path, n: u64, crashed: bool) -> (Vec<u8>, u64) {
    let path = dir.join(format!("src-{n}-{crashed}.heap"));
    let heap = txheap::Heap::create(&path, opts()).unwrap();
    let mut first48 = 0;
    for i in 0..n {
        let p = heap
            .transaction(|tx| {
                tx.alloc([i; 2])?;
                tx.alloc([i; 6])
            })
            .unwrap();
        if i == 0 {
            first48 = p.offset();
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    if crashed {
        drop(heap);
        return (bytes, first48);
    }
    heap.close().unwrap();
    (std::fs::read(&path).unwrap(), first48)
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// `txheap check FILE`: the exit code and the output, asserting that the file is unchanged and
/// that `--json` gives the same verdict.
fn check(file: &str) -> (i32, String) {
    let before = std::fs::read(file).unwrap();
    let (code, out, err) = txheap(&["check", file]);
    assert_eq!(std::fs::read(file).unwrap(), before, "check changed {file}");
    let (jcode, json, _) = txheap(&["check", "--json", file]);
    assert_eq!(jcode, code, "--json gave another exit code: {json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["exit_code"], code, "{json}");
    (code, format!("{out}{err}"))
}

/// The FORMAT.md rule: blocks of a run of `size`-byte blocks.
fn block_count(size: u64) -> u64 {
    let data_offset = |n: u64| (8 * n.div_ceil(64)).div_ceil(64) * 64;
    let mut n = CHUNK / size;
    while data_offset(n) + n * size > CHUNK {
        n -= 1;
    }
    n
}

#[test]
fn check_names_each_kind_of_damage_with_fsck_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (clean, obj48) = heap_image(dir, 3, false);

    let (code, out) = check(&write(dir, "clean", &clean));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(": clean") && out.contains("runs walked"),
        "{out}"
    );

    // Recoverable (1): frames waiting in the log; a torn last frame; one damaged slot.
    let (crashed, _) = heap_image(dir, 3, true);
    let (code, out) = check(&write(dir, "crashed", &crashed));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("3 committed frame(s)") && out.contains("txheap recover"),
        "{out}"
    );
    let frames = txheap::inspect::read_log(dir.join("crashed"))
        .unwrap()
        .frames;
    let last = frames.last().unwrap();
    let mut torn = crashed.clone();
    torn[(last.offset + last.len - 8) as usize] ^= 0x20;
    let (code, out) = check(&write(dir, "torn", &torn));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("2 committed frame(s)") && out.contains("torn frame"),
        "{out}"
    );
    assert!(out.contains(&format!("offset {}", last.offset)), "{out}");
    let mut slot = clean.clone();
    slot[4096 + 20] ^= 0xff;
    let (code, out) = check(&write(dir, "slot", &slot));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("at offset 4096") && out.contains("slot B"),
        "{out}"
    );

    // Damaged (4), each named with where it is.
    let mut both = clean.clone();
    both[20] ^= 0xff;
    both[4096 + 20] ^= 0xff;
    let (code, out) = check(&write(dir, "both", &both));
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("damaged at offset"), "{out}");
    let (code, out) = check(&write(dir, "short", &clean[..HEAP_OFFSET as usize + 100]));
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("shorter") || out.contains("runcated"), "{out}");
    let mut header = clean.clone();
    header[HEAP_OFFSET as usize + 9] ^= 0x04;
    let (code, out) = check(&write(dir, "header", &header));
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!("damaged at offset {HEAP_OFFSET}")),
        "{out}"
    );
    let mut table = clean.clone();
    table[CHUNK_AREA as usize + 16 + 5] ^= 0x04; // chunk 1's entry
    let (code, out) = check(&write(dir, "table", &table));
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!("damaged at offset {}", CHUNK_AREA + 16)),
        "{out}"
    );
    // A run bitmap marking a block past the run's end (the 48-byte class run).
    let run = CHUNK_AREA + (obj48 - CHUNK_AREA) / CHUNK * CHUNK;
    let n = block_count(48);
    assert!(
        n % 64 != 0,
        "the test needs bits past the end in the last word"
    );
    let word = run + n / 64 * 8;
    let mut bitmap = clean.clone();
    bitmap[word as usize + 7] |= 0x80;
    let (code, out) = check(&write(dir, "bitmap", &bitmap));
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!("damaged at offset {word}")) && out.contains("past the run"),
        "{out}"
    );
    // A damaged durable log frame: the first frame's payload, vouched for by the second.
    let mut log = crashed.clone();
    log[(frames[0].offset + 60) as usize] ^= 1;
    let (code, out) = check(&write(dir, "log", &log));
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!("damaged at offset {}", frames[0].offset)) && out.contains("salvage"),
        "{out}"
    );

    // Not checked (8): foreign, missing, newer version; and a usage error.
    let (code, _, err) = txheap(&["check", &write(dir, "foreign", b"hello world")]);
    assert_eq!(code, 8);
    assert!(err.contains("not a txheap file"), "{err}");
    let (code, _, err) = txheap(&["check", dir.join("missing").to_str().unwrap()]);
    assert_eq!(code, 8);
    assert!(err.contains("missing"), "{err}");
    assert_eq!(txheap(&["check"]).0, 8);
}

/// Another process (this test) holds the heap open and commits all the while: `check`, `info`,
/// `stats --json` and `dump-log` still work, on a copy of one committed state, and `copy`
/// makes one beside the writer.
#[test]
fn a_heap_open_for_writing_is_read_live() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("busy.heap");
    let p = path.to_str().unwrap();
    let heap = txheap::Heap::create(&path, opts()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                heap.transaction(|tx| tx.alloc([i; 6]).map(|_| ())).unwrap();
            }
        });
        let done = || stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..5 {
            let (code, out, err) = txheap(&["check", p]);
            if code != 0 || !out.contains("live: a writer holds the file") {
                done();
                panic!("check of a live heap: {code} {out} {err}");
            }
        }
        let (code, out, _) = txheap(&["info", p]);
        let (jcode, json, _) = txheap(&["stats", "--json", p]);
        let (lcode, log, _) = txheap(&["dump-log", p]);
        // dump-log says it read live, as info, stats and check do (a review found it silent).
        let (ljcode, ljson, _) = txheap(&["dump-log", "--json", p]);
        // What recover would do to a file a writer holds: refused, as recover is (a review
        // found "would replay", exit 0).
        let (dcode, dout, derr) = txheap(&["recover", "--dry-run", p]);
        let (rcode, _, rerr) = txheap(&["recover", p]);
        // A copy beside the writer (a read-only open follows it): one committed state.
        let copy = d.path().join("copy.heap");
        let (ccode, cout, cerr) = txheap(&["copy", p, copy.to_str().unwrap()]);
        done();
        assert_eq!(ccode, 0, "{cout} {cerr}");
        let (kcode, kout, _) = txheap(&["check", copy.to_str().unwrap()]);
        assert_eq!(kcode, 0, "{kout}");
        assert!(kout.contains("clean"), "{kout}");
        assert_eq!(code, 0);
        assert!(out.contains("figures as of transaction"), "{out}");
        assert_eq!(jcode, 0);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["live"].as_u64().unwrap() >= 1, "{json}");
        assert_eq!(lcode, 0);
        assert!(log.contains("committed frame(s)"), "{log}");
        assert!(log.contains("live: a writer holds the file"), "{log}");
        assert_eq!(ljcode, 0);
        let v: serde_json::Value = serde_json::from_str(&ljson).unwrap();
        assert!(v["live"].as_u64().unwrap() >= 1, "{ljson}");
        assert_eq!((dcode, rcode), (8, 8), "{dout} {derr} / {rerr}");
        assert!(
            derr.contains("lock") && rerr.contains("lock"),
            "{derr} / {rerr}"
        );
    });
    drop(heap);
    let (code, out, _) = txheap(&["check", p]);
    assert_eq!(code, 0);
    assert!(!out.contains("live"), "{out}");
    let (code, json, _) = txheap(&["dump-log", "--json", p]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["live"].is_null(), "{json}");
}

#[test]
fn dump_log_and_recover_dry_run_list_what_replay_would_do() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (crashed, _) = heap_image(dir, 3, true);
    let c = write(dir, "crashed", &crashed);
    let (code, out, _) = txheap(&["dump-log", "--ranges", &c]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("frame txid").count(), 3, "{out}");
    assert!(out.contains("3 committed frame(s)"), "{out}");
    let (code, json, _) = txheap(&["dump-log", "--json", "--ranges", &c]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let frames = v["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 3);
    let first = v["first_txid"].as_u64().unwrap();
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["txid"].as_u64().unwrap(), first + i as u64);
        assert_eq!(
            f["ranges"].as_array().unwrap().len() as u64,
            f["range_count"].as_u64().unwrap()
        );
    }
    assert_eq!(v["end"]["kind"], "clean", "{json}");

    let (code, out, _) = txheap(&["recover", "--dry-run", &c]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would replay 3 committed frame(s)"), "{out}");
    assert_eq!(
        std::fs::read(&c).unwrap(),
        crashed,
        "--dry-run changed the file"
    );
    let (_, json, _) = txheap(&["recover", "--dry-run", "--json", &c]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["replay"]["frames"], 3);
    assert_eq!(v["refused"], false);
    // After a real recover, nothing is left to replay and check is clean.
    assert_eq!(txheap(&["recover", &c]).0, 0);
    let (_, out, _) = txheap(&["recover", "--dry-run", &c]);
    assert!(out.contains("nothing to replay"), "{out}");
    assert_eq!(txheap(&["check", &c]).0, 0);

    // A damaged durable frame: dry-run says recover would refuse it (exit 4).
    let mut log = crashed.clone();
    log[LOG_OFFSET as usize + 60] ^= 1;
    let bad = write(dir, "bad", &log);
    let (code, out, _) = txheap(&["recover", "--dry-run", &bad]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("would refuse") && out.contains("DAMAGED"),
        "{out}"
    );
    let (code, json, _) = txheap(&["dump-log", "--json", &bad]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["end"]["kind"], "damaged");
}

/// `recover --dry-run` refuses (exit 4, naming why) every file `recover` refuses, not only a
/// damaged log: a damaged heap header, a file cut after its log, a file cut inside it; and
/// `dump-log` of the last names the truncation. (A review found "nothing to replay", exit 0,
/// for the first two, and an I/O error, exit 8, for the third.)
#[test]
fn recover_dry_run_refuses_what_recover_refuses() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (clean, _) = heap_image(dir, 3, false);
    let mut header = clean.clone();
    header[HEAP_OFFSET as usize + 8] ^= 1;
    let cases = [
        ("header", header, "would refuse the file: "),
        (
            "cut-after-log",
            clean[..HEAP_OFFSET as usize].to_vec(),
            "truncated",
        ),
        (
            "cut-in-log",
            clean[..LOG_OFFSET as usize + 1].to_vec(),
            "truncated",
        ),
    ];
    for (name, bytes, says) in cases {
        let f = write(dir, name, &bytes);
        let (code, out, err) = txheap(&["recover", "--dry-run", &f]);
        assert_eq!(code, 4, "{name}: {out}{err}");
        assert!(
            out.contains(says) || err.contains(says),
            "{name}: {out}{err}"
        );
        assert_eq!(
            std::fs::read(&f).unwrap(),
            bytes,
            "{name}: --dry-run changed it"
        );
        let (code, out, err) = txheap(&["recover", &f]);
        assert_eq!(code, 4, "{name}: recover: {out}{err}");
    }
    let (code, _, err) = txheap(&["dump-log", &write(dir, "cut", &clean[..8193])]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn info_and_stats_json_carry_the_figures() {
    let d = tempfile::tempdir().unwrap();
    let (clean, _) = heap_image(d.path(), 5, false);
    let c = write(d.path(), "clean", &clean);
    let (code, json, _) = txheap(&["stats", "--json", &c]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let classes = v["classes"].as_array().unwrap();
    let used: Vec<(u64, u64)> = classes
        .iter()
        .map(|c| {
            (
                c["block_size"].as_u64().unwrap(),
                c["used_blocks"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(used.contains(&(16, 5)) && used.contains(&(48, 5)), "{json}");
    assert_eq!(v["heap"]["used_bytes"], 5 * 16 + 5 * 48);
    let (code, json, _) = txheap(&["info", "--json", &c]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["classes"].is_null());
    assert_eq!(v["log"]["size"], LOG_SIZE);
    let (code, out, _) = txheap(&["stats", &c]);
    assert_eq!(code, 0);
    assert!(out.contains("fragmentation"), "{out}");
}

#[test]
fn compact_and_copy_give_space_back() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("c.heap");
    let heap = txheap::Heap::create(&path, opts()).unwrap();
    let keep = heap.transaction(|tx| tx.alloc([9u64; 8])).unwrap();
    let big = heap
        .transaction(|tx| tx.alloc_slice(&vec![7u8; 8 << 20]))
        .unwrap();
    heap.transaction(|tx| tx.free_slice(big)).unwrap();
    heap.close().unwrap();
    let p = path.to_str().unwrap();
    let copy = d.path().join("copy.heap");
    let (code, out, err) = txheap(&["copy", "--compact", p, copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("free space left out"), "{out}");
    assert_eq!(txheap(&["check", copy.to_str().unwrap()]).0, 0);
    let (code, _, err) = txheap(&["copy", p, copy.to_str().unwrap()]);
    assert_eq!(code, 8, "an existing destination is refused");
    assert!(err.contains("exists"), "{err}");
    let long = std::fs::metadata(&path).unwrap().len();
    let (code, out, err) = txheap(&["compact", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("chunks cut"), "{out}");
    assert!(std::fs::metadata(&path).unwrap().len() + (8 << 20) <= long);
    assert_eq!(txheap(&["check", p]).0, 0);
    // Again: nothing to give back, and it says so (a review found every run counting the
    // log's blocks, which its own open takes again, as given back, and holes punched before
    // as punched again).
    let blocks = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).unwrap().blocks() * 512
    };
    let (code, out, err) = txheap(&["compact", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": 0 bytes punched, 0 chunks cut"), "{out}");
    assert!(
        out.contains(&format!("disk blocks {blocks} -> {blocks} bytes")),
        "{blocks}: {out}"
    );
    for f in [&path, &copy] {
        let h = txheap::Heap::open_read_only(f).unwrap();
        assert_eq!(h.read(|r| r.get(keep).copied()).unwrap(), [9u64; 8]);
    }
}

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let (clean, _) = heap_image(d.path(), 3, false);
    let c = write(d.path(), "clean", &clean);
    for mode in ["auto", "always", "never"] {
        let (code, _, err) = txheap(&["check", "--progress", mode, &c]);
        assert_eq!(code, 0);
        assert!(err.is_empty(), "--progress {mode} drew on a pipe: {err:?}");
    }
    assert_eq!(txheap(&["check", "--progress", "sometimes", &c]).0, 8);
}

/// `blocks` lists every allocated block: the offsets and sizes the library's own
/// `Reader::allocations` gives, as text and as JSON, from a closed heap and beside a writer.
#[test]
fn blocks_lists_every_allocated_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.heap");
    let p = path.to_str().unwrap();
    let heap = txheap::Heap::create(&path, txheap::Options::new()).unwrap();
    let made = heap
        .transaction(|tx| {
            let a = tx.alloc([7u64; 3])?.offset();
            let b = tx.alloc_slice_zeroed::<u8>(300_000)?.offset();
            Ok((a, b))
        })
        .unwrap();
    let want = heap.read(|r| r.allocations()).unwrap();
    assert_eq!(want.len(), 2);
    assert_eq!(want[0].0, made.0);
    assert_eq!(want[1], (made.1, 300_000));
    let json_of = |p: &str| {
        let (code, out, err) = txheap(&["blocks", "--json", p]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let blocks: Vec<(u64, u64)> = v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b[0].as_u64().unwrap(), b[1].as_u64().unwrap()))
            .collect();
        assert_eq!(v["count"], blocks.len());
        assert_eq!(
            v["bytes"].as_u64().unwrap(),
            blocks.iter().map(|b| b.1).sum::<u64>()
        );
        blocks
    };
    // Beside the writer (Linux: a read-only open follows it).
    if cfg!(target_os = "linux") {
        assert_eq!(json_of(p), want);
    }
    heap.close().unwrap();
    assert_eq!(json_of(p), want);
    let (code, out, _) = txheap(&["blocks", p]);
    assert_eq!(code, 0);
    assert!(out.contains("2 allocated blocks"), "{out}");
    assert!(
        out.contains(&format!("{:>16} {:>11}", made.1, 300_000)),
        "{out}"
    );
    let (code, _, err) = txheap(&["blocks", dir.path().join("none").to_str().unwrap()]);
    assert_eq!(code, 8, "{err}");
}

/// Output into a pipe whose reader has gone (`txheap blocks FILE | head`) ends the command
/// quietly: killed by SIGPIPE, as Unix tools are, with no panic message. (The output, about
/// 580 KB as text, is far more than a pipe buffers, so some write meets the closed pipe.)
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.heap");
    let heap = txheap::Heap::create(&path, txheap::Options::new()).unwrap();
    heap.transaction(|tx| {
        for i in 0..20_000u64 {
            tx.alloc(i)?;
        }
        Ok(())
    })
    .unwrap();
    heap.close().unwrap();
    for args in [&["blocks"][..], &["blocks", "--json"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_txheap"))
            .args(args)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes before the command writes
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
}

/// `compact --wait` and `recover --wait`: locked after the wait, or done once the holder
/// closes; a bad wait is a usage error (exit 8).
#[test]
fn writable_commands_wait_for_the_lock_when_asked() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.heap");
    let p = path.to_str().unwrap().to_string();
    let heap = txheap::Heap::create(&path, txheap::Options::new()).unwrap();
    let t = Instant::now();
    let (code, _, err) = txheap(&["compact", "--wait", "0.3", &p]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("locked"), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    let (code, _, err) = txheap(&["recover", &p]);
    assert_eq!(code, 8, "{err}");
    let mut first = Some(heap);
    for cmd in ["compact", "recover"] {
        let holder = first
            .take()
            .unwrap_or_else(|| txheap::Heap::open(&path, txheap::Options::new()).unwrap());
        let q = p.clone();
        let waiter = std::thread::spawn(move || {
            let r = txheap(&[cmd, "--wait", "60", &q]);
            (Instant::now(), r)
        });
        std::thread::sleep(Duration::from_millis(400));
        let closing = Instant::now();
        holder.close().unwrap();
        let (done, (code, out, err)) = waiter.join().unwrap();
        assert_eq!(code, 0, "{cmd}: {out} {err}");
        assert!(done >= closing, "{cmd} finished before the holder closed");
    }
    for bad in ["-1", "soon", "inf"] {
        let (code, _, err) = txheap(&["compact", "--wait", bad, &p]);
        assert_eq!(code, 8, "{bad}: {err}");
    }
    // A finite wait too long for a Duration is a wait without end, not a usage error (a review
    // found 1e30 refused as "not a finite number of seconds"); the file is free here.
    for long in ["18446744073709551615", "1e30"] {
        let (code, _, err) = txheap(&["recover", "--wait", long, &p]);
        assert_eq!(code, 0, "{long}: {err}");
    }
}

/// CRC-32 (ISO-HDLC) of a superblock slot's first 124 bytes, into its last 4.
fn fix_slot_crc(b: &mut [u8], slot: usize) {
    let crc = crc32fast::hash(&b[slot..slot + 124]);
    b[slot + 124..slot + 128].copy_from_slice(&crc.to_le_bytes());
}

/// A heap whose run bitmap marks blocks past the run's end (damage an open does not read, and
/// `check` reports): `copy` published a copy of it and `compact` changed it in place, both with
/// exit 0 (found by review). Both refuse it now (exit 4), the file unchanged, no copy made.
#[test]
fn copy_and_compact_refuse_a_heap_check_calls_damaged() {
    let d = tempfile::tempdir().unwrap();
    let (mut b, first48) = heap_image(d.path(), 3, false);
    // The 48-byte run's chunk: every bitmap bit set, past its blocks too.
    let run = (first48 - CHUNK_AREA) / CHUNK * CHUNK + CHUNK_AREA;
    for x in &mut b[run as usize..run as usize + 4096] {
        *x = 0xff;
    }
    let p = write(d.path(), "badbitmap", &b);
    let (code, out) = check(&p);
    assert_eq!(code, 4, "{out}");
    let dst = d.path().join("dst");
    let (ccode, cout, cerr) = txheap(&["copy", &p, dst.to_str().unwrap()]);
    assert_eq!(ccode, 4, "{cout}{cerr}");
    assert!(cerr.contains("run bitmap"), "{cerr}");
    assert!(!dst.exists());
    let (kcode, kout, kerr) = txheap(&["compact", &p]);
    assert_eq!(kcode, 4, "{kout}{kerr}");
    assert!(
        std::fs::read(&p).unwrap() == b,
        "compact changed the damaged file"
    );
}

/// A superblock whose `seq` is at its limit (a checksum-valid crafted slot): `recover` refuses
/// it (no checkpoint can follow), and `check` and `recover --dry-run` called it clean, exit 0
/// (found by review). All three agree now.
#[test]
fn check_refuses_a_superblock_at_its_counter_limit() {
    let d = tempfile::tempdir().unwrap();
    let (mut b, _) = heap_image(d.path(), 3, false);
    // The slot in force: the one with the higher seq (bytes 16..24).
    let seq = |b: &[u8], s: usize| u64::from_le_bytes(b[s + 16..s + 24].try_into().unwrap());
    let slot = if seq(&b, 4096) > seq(&b, 0) { 4096 } else { 0 };
    b[slot + 16..slot + 24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    fix_slot_crc(&mut b, slot);
    let p = write(d.path(), "seqmax", &b);
    let (code, out) = check(&p);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("cannot grow past"), "{out}");
    let (dcode, dout, derr) = txheap(&["recover", "--dry-run", &p]);
    let (rcode, rout, rerr) = txheap(&["recover", &p]);
    assert_eq!(dcode, rcode, "dry-run: {dout}{derr}\nrecover: {rout}{rerr}");
}

/// Both superblock slots damaged: `check` said of each that "the other slot is in force" and
/// that `txheap recover` rewrites it, where no slot is valid and `recover` refuses (found by
/// review).
#[test]
fn both_slots_damaged_are_not_called_recoverable() {
    let d = tempfile::tempdir().unwrap();
    let (mut b, _) = heap_image(d.path(), 3, false);
    b[20] ^= 1;
    b[4096 + 20] ^= 1;
    let p = write(d.path(), "both", &b);
    let (code, out) = check(&p);
    assert_eq!(code, 4, "{out}");
    assert!(!out.contains("the other slot is in force"), "{out}");
    let (rcode, _, rerr) = txheap(&["recover", &p]);
    assert_eq!(rcode, 4, "{rerr}");
}

/// A live read (a writer holds the file) copies its metadata and log into a temporary file; a
/// `txheap check` killed during it left that file behind (36 MB each, found by review). The
/// copy has no name once made now: killed at any moment, the command leaves nothing.
#[test]
fn a_killed_live_read_leaves_no_temporary_copy() {
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = d.path().join("live.heap");
    let heap = txheap::Heap::create(
        &path,
        txheap::Options::new()
            .durability(txheap::Durability::None)
            .log_size(16 << 20)
            .max_size(256 << 20),
    )
    .unwrap();
    // Frames in most of the log, and some thousands of objects: a live read copies them all.
    for i in 0..20_000u64 {
        heap.transaction(|tx| tx.alloc([i; 8]).map(|_| ())).unwrap();
    }
    let mut killed_during = 0;
    for round in 0..12u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_txheap"))
            .args(["check", path.to_str().unwrap()])
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5 + round * 7));
        let still = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        killed_during += still as u32;
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "round {round}: {left:?}");
    }
    assert!(killed_during > 0, "no run was killed before it ended");
    drop(heap);
}

/// `/dev/full`, opened for writing: every write to it fails as a full disk does.
fn dev_full() -> std::process::Stdio {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    std::process::Stdio::from(f)
}

/// A small heap with one committed object, closed, at `dir/h.heap`.
fn one_object_heap(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("h.heap");
    let heap = txheap::Heap::create(&path, opts()).unwrap();
    heap.transaction(|tx| tx.alloc([1u64; 6]).map(|_| ()))
        .unwrap();
    heap.close().unwrap();
    path
}

/// A write error on standard output (here `/dev/full`: a full disk) ends every subcommand with
/// exit 8 and a message naming it, as documented for an I/O error. Each one but `blocks` (text)
/// panicked instead (exit 101, none of the documented codes; for `check` it hid the verdict),
/// and `recover`, `compact` and `copy` panicked after their work was done and durable
/// (found by review). Those say that their work is complete.
#[test]
fn a_full_stdout_is_exit_8_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let path = one_object_heap(d.path());
    let p = path.to_str().unwrap();
    let mut bad = Vec::new();
    for (i, args) in [
        vec!["info", p],
        vec!["info", "--json", p],
        vec!["stats", p],
        vec!["stats", "--json", p],
        vec!["check", p],
        vec!["check", "--json", p],
        vec!["blocks", p],
        vec!["blocks", "--json", p],
        vec!["dump-log", p],
        vec!["dump-log", "--json", p],
        vec!["recover", "--dry-run", p],
        vec!["recover", "--dry-run", "--json", p],
        vec!["recover", p],
        vec!["compact", p],
        vec!["copy", p, "DST"],
    ]
    .into_iter()
    .enumerate()
    {
        let dst = d.path().join(format!("copy-{i}.heap"));
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "DST" => dst.to_str().unwrap().to_string(),
                a => a.to_string(),
            })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_txheap"))
            .args(&args)
            .stdout(dev_full())
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let err = String::from_utf8_lossy(&out.stderr);
        let changes = ["recover", "compact", "copy"].contains(&args[0].as_str())
            && !args.contains(&"--dry-run".to_string());
        if code != 8
            || err.contains("panicked")
            || !(err.contains("writing the output") || err.contains("writing the list"))
            || (changes && !err.contains("itself is complete"))
        {
            bad.push(format!("{args:?}: exit {code}: {}", err.trim()));
        }
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

/// A write error on standard error (`2>/dev/full`) keeps the documented exit code: the failure
/// message was printed with `eprintln!`, which panicked (exit 101; found by review).
#[test]
fn a_full_stderr_keeps_the_documented_exit_code() {
    let d = tempfile::tempdir().unwrap();
    let path = one_object_heap(d.path());
    let missing = d.path().join("missing.heap");
    let (p, m) = (path.to_str().unwrap(), missing.to_str().unwrap());
    let mut bad = Vec::new();
    for (args, stdout_full, want) in [
        (vec!["info", m], false, 8),
        (vec!["check", m], false, 8),
        (vec!["check", p], true, 8),
        (vec!["check", "--progress", "always", p], false, 0),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_txheap"))
            .args(&args)
            .stdout(if stdout_full {
                dev_full()
            } else {
                std::process::Stdio::null()
            })
            .stderr(dev_full())
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        if code != want {
            bad.push(format!(
                "{args:?} (stdout full: {stdout_full}): exit {code}, want {want}"
            ));
        }
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}
