//! Media faults on top of power loss: a bit flipped in a log frame that was durable before the
//! crash must make recovery refuse with `Error::LogDamaged`, never open a shorter prefix.
//!
//! Owns: finding, in a crash image, the frames a later frame in the same image vouches for
//! (their writer saw them durable), flipping one bit in one of them, and checking the
//! refusal (named frame, file unchanged). Switched on for a whole process with [`enable`]
//! (the simulator then runs it on every image it checks). May not: choose crash images
//! (`simulate.rs`) or decide what a healthy image must hold (`check.rs`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use txheap::{Durability, Error, Heap};
use txheap_recovery::txheap_log::verified_frame_at;
use txheap_recovery::{select_superblock, MemStorage, SUPERBLOCK_SLOT_LEN};

use crate::{options, Rng};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Run the media check on every image the simulator checks in this process (`true`), or not.
///
/// ```
/// crash_tests::media::enable(false);
/// assert!(!crash_tests::media::enabled());
/// ```
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether [`enable`] switched the media check on.
///
/// ```
/// assert!(!crash_tests::media::enabled());
/// ```
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// A frame of a crash image's log: its file offset, length and txid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    /// File offset of the frame.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Its transaction id.
    pub txid: u64,
}

/// The committed frames of `image`'s log that a later committed frame in the image vouches
/// for (its `durable_txid` reaches them): the frames a flipped bit must never silently cut.
///
/// ```
/// use crash_tests::{media::vouched_frames, record};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 3);
/// // The base image is a closed heap: its log holds no frame of the current generation.
/// assert!(vouched_frames(&rec.base).is_empty());
/// ```
pub fn vouched_frames(image: &[u8]) -> Vec<FrameAt> {
    let head = image.len().min(2 * SUPERBLOCK_SLOT_LEN as usize);
    let Ok((sb, _)) = select_superblock(&MemStorage::from_bytes(image[..head].to_vec())) else {
        return Vec::new();
    };
    let log_end = (sb.log_offset() + sb.log_size).min(image.len() as u64) as usize;
    let mut frames: Vec<(FrameAt, u64)> = Vec::new();
    let mut at = sb.log_offset() as usize;
    let mut txid = sb.next_txid;
    while at < log_end {
        let Some(h) = verified_frame_at(&image[at..log_end]) else {
            break;
        };
        if h.generation != sb.generation || h.txid != txid {
            break;
        }
        let len = h.frame_len() as usize;
        frames.push((
            FrameAt {
                offset: at,
                len,
                txid,
            },
            h.durable_txid,
        ));
        at += len;
        txid += 1;
    }
    let vouched_up_to = frames.iter().map(|&(_, d)| d).max().unwrap_or(0);
    frames
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| f.txid <= vouched_up_to)
        .collect()
}

/// Flip one bit (chosen by `rng`) in one vouched frame of `image`, write it to `path`, and
/// open it (read-only when `read_only`): it must be refused with `LogDamaged` naming that
/// frame, and the file must be unchanged. `Ok(false)` when the image has no vouched frame.
///
/// ```
/// use crash_tests::{media::check_flipped, record, Disk, Rng};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 4);
/// let mut disk = Disk::new(&rec.base);
/// // Crash right after the third acknowledgement: frames 1..3 are durable in the log.
/// for e in &rec.events {
///     disk.apply(e);
///     if *e == txheap::TraceEvent::Mark(3) {
///         break;
///     }
/// }
/// let img = disk.durable().to_vec();
/// assert!(!crash_tests::media::vouched_frames(&img).is_empty());
/// let mut rng = Rng::seeded(5);
/// let p = dir.path().join("m.heap");
/// assert_eq!(check_flipped(&p, &img, rec.durability, &mut rng, false), Ok(true));
/// ```
pub fn check_flipped(
    path: &Path,
    image: &[u8],
    durability: Durability,
    rng: &mut Rng,
    read_only: bool,
) -> Result<bool, String> {
    let vouched = vouched_frames(image);
    if vouched.is_empty() {
        return Ok(false);
    }
    let f = vouched[(rng.next_u64() % vouched.len() as u64) as usize];
    let byte = f.offset + (rng.next_u64() % f.len as u64) as usize;
    let bit = rng.next_u64() % 8;
    let mut img = image.to_vec();
    img[byte] ^= 1 << bit;
    std::fs::write(path, &img).map_err(|e| e.to_string())?;
    let r = if read_only {
        Heap::open_read_only(path)
    } else {
        Heap::open(path, options(durability))
    };
    let what = format!(
        "bit {bit} of byte {byte} flipped in durable frame {} ({}+{}), {} open",
        f.txid,
        f.offset,
        f.len,
        if read_only { "read-only" } else { "writable" }
    );
    match r {
        Err(Error::LogDamaged { txid, .. }) if txid == f.txid => {}
        Err(e) => return Err(format!("{what}: wrong error {e}")),
        Ok(heap) => {
            drop(heap);
            return Err(format!(
                "{what}: opened without an error (a silent loss of acknowledged transactions)"
            ));
        }
    }
    if std::fs::read(path).map_err(|e| e.to_string())? != img {
        return Err(format!("{what}: refused, but the file changed"));
    }
    Ok(true)
}
