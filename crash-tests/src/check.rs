//! The checker: recover one crash image and compare it with the workload's model.
//!
//! Owns: what an image must satisfy (a committed prefix, no commit lost under
//! `Durability::Full`, one more commit and reopen working on the deep check), [`Violation`],
//! and [`report`], which prints what a check covered past the test harness's capture.
//!
//! May not: choose crash instants or images (`simulate.rs`, `disk.rs`), or know the workload's
//! layout: what the heap must hold is `workload.rs`'s [`verify`](crate::verify).

use std::path::Path;

use txheap::{Durability, Heap, Trace};

use crate::{options, step, verify, ImageFile, Recording};

/// Why an image was refused (or, from [`write_ahead::check`](crate::write_ahead::check), why a write broke the
/// write-ahead rule: `at_event` is then the write's event index and `image` is 0).
///
/// ```
/// use crash_tests::{record, simulate};
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let mut rec = record(&dir.path().join("live.heap"), 1, Durability::Full, 1);
/// // Claim transaction 1 acknowledged before it ran: a crash at its first write loses it.
/// rec.events.insert(0, TraceEvent::Mark(1));
/// let v = &simulate(&rec, dir.path(), 0, 1, 0).violations[0];
/// assert!(v.what.contains("lost a commit"), "{}", v.what);
/// assert_eq!((v.at_event, v.image), (1, 0)); // nothing since the barriers
/// ```
#[derive(Debug, Clone)]
pub struct Violation {
    /// What went wrong.
    pub what: String,
    /// Event index of the crash (or of the offending write).
    pub at_event: usize,
    /// Which image at that instant.
    pub image: usize,
}

/// Recover `image` (written to `path`) and check it against the workload. Returns the counter.
///
/// ```
/// use crash_tests::{check_image, record, Disk};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 3);
/// let mut disk = Disk::new(&rec.base);
/// rec.events.iter().for_each(|e| disk.apply(e));
/// let img = dir.path().join("image.heap");
/// assert_eq!(check_image(&img, disk.durable(), &rec, 3, false), Ok(3));
/// // The base image when 3 were acknowledged under Full: commits were lost.
/// let err = check_image(&img, &rec.base, &rec, 3, false).unwrap_err();
/// assert!(err.contains("lost a commit"), "{err}");
/// ```
pub fn check_image(
    path: &Path,
    image: &[u8],
    rec: &Recording,
    acked: u64,
    deep: bool,
) -> Result<u64, String> {
    std::fs::write(path, image).map_err(|e| e.to_string())?;
    check_file(path, rec, acked, deep, &Trace::default())
}

/// Recover the crash image that `path` holds and check it against the workload, recording
/// every write recovery (and the check) makes into `trace`. Returns the counter.
///
/// ```
/// use crash_tests::{check_file, record};
/// use txheap::{Trace, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::None, 2);
/// let img = dir.path().join("image.heap");
/// std::fs::write(&img, &rec.base).unwrap();
/// let trace = Trace::default();
/// // Deep: recover, check, commit one more, reopen and check again.
/// assert_eq!(check_file(&img, &rec, 0, true, &trace), Ok(0));
/// assert!(trace.lock().unwrap().iter().any(|e| matches!(e, TraceEvent::Write { .. })));
/// ```
pub fn check_file(
    path: &Path,
    rec: &Recording,
    acked: u64,
    deep: bool,
    trace: &Trace,
) -> Result<u64, String> {
    // (A checker's open keeps the log's blocks at close: giving them back is the recorded
    // workload's business, and a punch per checked image made the checks three times slower.)
    let opts = || {
        options(rec.durability)
            .keep_log_blocks(true)
            .record(trace.clone())
    };
    let heap = Heap::open(path, opts()).map_err(|e| format!("recovery failed: {e}"))?;
    let c = verify(&heap, rec.seed)?;
    if c > acked + rec.threads {
        return Err(format!(
            "counter {c} but only {acked} acknowledged, {} committing threads (a transaction appeared from nowhere)",
            rec.threads
        ));
    }
    if rec.durability == Durability::Full && c < acked {
        return Err(format!(
            "counter {c} but {acked} acknowledged under Durability::Full (lost a commit)"
        ));
    }
    if deep {
        // The recovered heap must keep working and survive another reopen.
        step(&heap, rec.seed, false).map_err(|e| format!("commit after recovery failed: {e}"))?;
        heap.close()
            .map_err(|e| format!("close after recovery failed: {e}"))?;
        let heap = Heap::open(path, opts()).map_err(|e| format!("second reopen failed: {e}"))?;
        let c2 = verify(&heap, rec.seed)?;
        if c2 != c + 1 {
            return Err(format!(
                "after recovery to {c} and one commit, reopen shows {c2}"
            ));
        }
    }
    Ok(c)
}

/// Check the image in `file` (just written from `disk`), then tell `file` what recovery wrote.
pub(crate) fn check_in(
    file: &mut ImageFile,
    rec: &Recording,
    acked: u64,
    deep: bool,
) -> Result<u64, String> {
    let trace = Trace::default();
    let r = check_file(file.path(), rec, acked, deep, &trace);
    let events = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
    file.touched(&events)?;
    r
}

/// Print a summary line to the process's stderr *uncaptured*: the test harness captures
/// `eprintln!` of passing tests, and CI's log must show what a crash test covered (how many
/// images, where the kills landed), not only that it passed.
///
/// ```
/// use std::io::{Read, Seek};
/// use std::os::fd::AsRawFd;
/// // Point fd 2 at a file for a moment: the line goes there, past any capture.
/// let mut log = tempfile::tempfile().unwrap();
/// let saved = unsafe { libc::dup(2) };
/// unsafe { libc::dup2(log.as_raw_fd(), 2) };
/// crash_tests::report("seed 1: 26 images, 0 violations");
/// unsafe { libc::dup2(saved, 2) };
/// unsafe { libc::close(saved) };
/// let mut text = String::new();
/// log.rewind().unwrap();
/// log.read_to_string(&mut text).unwrap();
/// assert_eq!(text, "seed 1: 26 images, 0 violations\n");
/// ```
pub fn report(text: &str) {
    use std::io::Write;
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.write_all(b"\n");
}
