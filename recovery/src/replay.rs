//! Replay: the writable open that applies committed frames to the heap, a page batch at a time.
//!
//! Owns: `recover` and `recover_checked` (select, check the length, scan, let the caller check
//! the replayed file, barrier the log, replay, checkpoint; or leave the frames in the log,
//! `recover_checked_keeping_log`), the page batches that replay writes, and the `Replayed` view
//! of the file as replay will leave it. May not: write before every refusal is decided (a
//! hostile frame, the caller's check, a counter a checkpoint could not bump), write a heap page
//! before the frames it replays are durable, or write anything but the pages that committed
//! ranges touch.

use crate::checkpoint::{checkpoint, checkpoint_possible};
use crate::error::{io_err, RecoveryError};
use crate::limits::{REPLAY_BATCH_PAGES_MAX, REPLAY_RUN_PAGES_MAX};
use crate::scan::{scan_log_in, LogScan, RECOVERY_VOUCHERS};
use crate::storage::Storage;
use crate::superblock::{select_superblock, Slot, Superblock, PAGE_SIZE};
use txheap_log::{FrameBuilder, FRAME_HEADER_LEN, RANGE_HEADER_LEN};

/// Replay committed ranges, in log order, a page at a time: the pages a batch of ranges touches
/// are read in runs of consecutive pages, every range is applied to the copies in memory, and
/// the runs are written back. The file ends as if each range had been written in order (bytes
/// outside the ranges are written back unchanged), with a few large reads and writes instead
/// of one write per range. A batch holds at most `REPLAY_BATCH_PAGES_MAX` pages, so a log of
/// scattered tiny ranges cannot exhaust memory. A crash part-way leaves the log and superblock
/// as they were, so the next open replays again (replay is idempotent). Starts at range
/// `start`; batches of at most `batch_pages` pages (`REPLAY_BATCH_PAGES_MAX`; tests use tiny
/// ones).
fn replay_pages_batched<S: Storage + ?Sized>(
    storage: &mut S,
    ranges: &[(u64, usize, usize)],
    arena: &[u8],
    start: usize,
    batch_pages: usize,
) -> Result<(), RecoveryError> {
    let mut i = start;
    while i < ranges.len() {
        let batch = PageBatch::build(&*storage, ranges, arena, i, batch_pages)?;
        assert!(batch.end > i, "replay: a page batch took no range");
        batch.write(storage)?;
        i = batch.end;
    }
    Ok(())
}

/// Replay: the first batch (already built), then the rest of the ranges batch by batch.
fn replay<S: Storage + ?Sized>(
    storage: &mut S,
    first: Option<PageBatch>,
    ranges: &[(u64, usize, usize)],
    arena: &[u8],
    batch_pages: usize,
) -> Result<(), RecoveryError> {
    if let Some(first) = first {
        crate::phase!(RECOVERY_REPLAY);
        first.write(storage)?;
        replay_pages_batched(storage, ranges, arena, first.end, batch_pages)?;
    }
    Ok(())
}

/// Make the file durable and append [`RECOVERY_VOUCHERS`] vouchers at the end of the scanned
/// log ([`append_vouchers`]): empty frames (the next txids) whose evidence reaches every frame
/// before them, each barriered. Recovery does this before replay writes over the pieces of a
/// frame whose in-place check it asked (see [`LogScan::checked`](crate::LogScan::checked)).
/// The pieces are in the file, but perhaps only in the page cache (the writer was killed),
/// hence the `fdatasync` first.
fn write_vouchers<S: Storage + ?Sized>(
    storage: &mut S,
    sb: &Superblock,
    scan: &LogScan,
) -> Result<(), RecoveryError> {
    storage
        .barrier_all()
        .map_err(io_err("fdatasync before the vouchers", 0))?;
    let at = sb.log_offset() + scan.end_offset;
    // Guarded: recovery writes them over the log's torn tail, where the crashed writer's later
    // frames of this generation may still lie. A padded pair ends on the page grid, where one
    // of them can start with the txid after the vouchers, and a recovery killed before its
    // checkpoint then let the next one replay that frame without the two before it (found by
    // review, `tests/recovery_vouchers.rs`): the guard zeroes that place first. Padded, so
    // that one lost sector cannot take both vouchers (plain ones shared a sector, and losing
    // it after a killed recovery let the next one ask the check of bytes the replay had
    // changed: a silent cut).
    append_vouchers(
        storage,
        at,
        sb.log_offset() + sb.log_size,
        sb.generation,
        (scan.next_txid, scan.next_txid - 1),
        Vouchers::Guarded,
        &mut || {
            crate::failpoint!("recovery.after_voucher");
        },
    )
    .map_err(|(op, off, e)| io_err(op, off)(e))?;
    Ok(())
}

/// Where [`append_vouchers`] puts its two frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouchers {
    /// Both plain, one after the other (80 bytes).
    Plain,
    /// The first padded ([`txheap_log::voucher_padding`]) so that the second starts in another
    /// page, when the log has room (else plain): one lost sector cannot take both. The writer's
    /// flush: nothing of the current generation lies beyond a writer's own tail.
    Padded,
    /// [`Vouchers::Padded`], with a guard made durable first: the frame header's bytes where
    /// the second voucher will end are zeroed, so that no frame left there can follow the
    /// vouchers in the log. Recovery: it writes over a crashed writer's torn tail, where that
    /// writer's later frames may lie, and a padded pair ends on the page grid, where one of
    /// them can start with the txid after the vouchers (docs/ARCHITECTURE.md section 5).
    Guarded,
}

/// Write two voucher frames at file offset `at`, each barriered before the next: empty frames
/// with txids `txid` and `txid + 1`, the first carrying `durable_txid` as its evidence and the
/// second the first's txid, laid out as `layout` says ([`Vouchers`]), in a log ending at file
/// offset `log_end` (at least two frame headers of room are required). Returns the bytes
/// written (the guard's are not counted: they lie after the vouchers). The writer's flush
/// ([`Vouchers::Padded`]) and recovery ([`Vouchers::Guarded`]) both write them so
/// (docs/ARCHITECTURE.md section 3, step 5a): two, so that damage to the first is reported (the
/// second proves it durable) rather than read as a torn tail; in different pages, so that one
/// lost sector cannot take both. `after_each` runs after each barrier (a failpoint). An error
/// names the operation and the offset.
///
/// ```
/// use txheap_recovery::{append_vouchers, MemStorage, Storage, Vouchers};
/// let mut s = MemStorage::new();
/// let n = append_vouchers(&mut s, 8192 + 1000, 16384, 1, (5, 4), Vouchers::Padded, &mut || {}).unwrap();
/// assert_eq!((8192 + 1000 + n - 40) % 4096, 0); // the second voucher starts a page
/// let plain = append_vouchers(&mut s, 12288, 16384, 1, (7, 6), Vouchers::Plain, &mut || {}).unwrap();
/// assert_eq!(plain, 80);
/// ```
pub fn append_vouchers<S: Storage + ?Sized>(
    storage: &mut S,
    at: u64,
    log_end: u64,
    generation: u64,
    (txid, durable_txid): (u64, u64),
    layout: Vouchers,
    after_each: &mut dyn FnMut(),
) -> Result<u64, (&'static str, u64, std::io::Error)> {
    let header = FRAME_HEADER_LEN as u64;
    assert!(
        at + 2 * header <= log_end,
        "no room for two vouchers at {at} in a log ending at {log_end}"
    );
    // The first voucher's padding, if padded and the pair still fits.
    let fits =
        |pad: usize| at + (header + RANGE_HEADER_LEN as u64 + pad as u64) + header <= log_end;
    let mut padding = match layout {
        Vouchers::Plain => None,
        Vouchers::Padded | Vouchers::Guarded => {
            txheap_log::voucher_padding(at).filter(|&p| fits(p))
        }
    };
    #[cfg(feature = "test-hooks")]
    let layout = if crate::sabotage::active(crate::sabotage::RECOVERY_VOUCHERS_UNGUARDED) {
        Vouchers::Padded // broken on purpose (crash tests only): no guard
    } else {
        layout
    };
    if let (Vouchers::Guarded, Some(pad)) = (layout, padding) {
        // A crashed writer's frame with the second voucher's txid may start where the second
        // voucher would (its torn predecessor ended on that page boundary): a lost sector there
        // would bring it back right after the first voucher. The next page then, or, without
        // room, plain (no frame a writer made can start 40 bytes after a torn one's start).
        let second = at + header + RANGE_HEADER_LEN as u64 + pad as u64;
        if frame_header_at(storage, second, log_end, generation, txid + 1) {
            let further = pad + txheap_log::VOUCHER_SPREAD as usize;
            padding = fits(further).then_some(further);
        }
    }
    let first_len = header + padding.map_or(0, |pad| RANGE_HEADER_LEN as u64 + pad as u64);
    let end = at + first_len + header;
    if layout == Vouchers::Guarded && end + header <= log_end {
        // Durable before the vouchers: once the second is, the log reads on at `end`.
        storage
            .write_at(end, &[0u8; FRAME_HEADER_LEN])
            .map_err(|e| ("write the vouchers' guard", end, e))?;
        storage
            .barrier(end, header)
            .map_err(|e| ("barrier the vouchers' guard", end, e))?;
    }
    let mut p = at;
    for k in 0..2u64 {
        let mut b = FrameBuilder::new();
        if let (0, Some(pad)) = (k, padding) {
            b.push_padding(pad).expect("a page of padding fits a frame");
        }
        let evidence = if k == 0 { durable_txid } else { txid };
        let frame = b.finish_vouching(generation, txid + k, evidence);
        let len = frame.len() as u64;
        storage
            .write_at(p, frame)
            .map_err(|e| ("write a voucher frame", p, e))?;
        storage
            .barrier(p, len)
            .map_err(|e| ("barrier a voucher frame", p, e))?;
        after_each();
        p += len;
    }
    debug_assert_eq!(p, end);
    Ok(p - at)
}

/// Whether a frame header of `generation` with `txid` starts at file offset `at` (inside the log,
/// which ends at `log_end`; an unreadable place counts as one, so that it is avoided).
fn frame_header_at<S: Storage + ?Sized>(
    storage: &S,
    at: u64,
    log_end: u64,
    generation: u64,
    txid: u64,
) -> bool {
    let mut b = [0u8; FRAME_HEADER_LEN];
    if at + FRAME_HEADER_LEN as u64 > log_end {
        return false;
    }
    if storage.read_at(at, &mut b).is_err() {
        return true;
    }
    txheap_log::header_at(&b).is_some_and(|h| h.generation == generation && h.txid == txid)
}

/// One batch of a page-at-a-time replay, built in memory: the sorted pages that ranges
/// `[start, end)` touch, each page's bytes as the file holds them with those ranges applied in
/// log order, and the runs of consecutive pages to write back.
struct PageBatch {
    pages: Vec<u64>,
    buf: Vec<u8>,
    runs: Vec<(usize, usize)>,
    end: usize,
}

impl PageBatch {
    /// Build the batch that starts at range `start`: as many ranges as fit `batch_pages` pages
    /// (at least one). Reads the file; writes nothing.
    fn build<S: Storage + ?Sized>(
        storage: &S,
        ranges: &[(u64, usize, usize)],
        arena: &[u8],
        start: usize,
        batch_pages: usize,
    ) -> Result<PageBatch, RecoveryError> {
        const P: u64 = PAGE_SIZE;
        let pages_of =
            |&(off, _, len): &(u64, usize, usize)| off / P..(off + len as u64).div_ceil(P);
        let mut pages: Vec<u64> = Vec::new();
        // The last few pages pushed: small transactions write the same few pages again and
        // again (the heap header, the root, a bitmap), and a page seen recently is not pushed
        // twice. Without it, the list filled with repeats, and sorting it each time it reached
        // the batch's size was a fifth of a replay of small frames (perf, W5-replay).
        let mut recent = [u64::MAX; 8];
        let mut next = 0;
        let mut j = start;
        while j < ranges.len() {
            let need = pages_of(&ranges[j]);
            if j > start && pages.len() + (need.end - need.start) as usize > batch_pages {
                pages.sort_unstable();
                pages.dedup();
                if pages.len() + (need.end - need.start) as usize > batch_pages {
                    break;
                }
            }
            for p in need {
                if !recent.contains(&p) {
                    pages.push(p);
                    recent[next] = p;
                    next = (next + 1) % recent.len();
                }
            }
            j += 1;
        }
        pages.sort_unstable();
        pages.dedup();
        // Runs of consecutive pages, each read with one pread (bytes past the end of the file,
        // after a lost growth, read as zeros) into a buffer laid out in page order.
        let file_len = storage.len().map_err(io_err("stat", 0))?;
        let mut buf = vec![0u8; pages.len() * P as usize];
        let runs = page_runs(&pages);
        for &(k, n) in &runs {
            let at = pages[k] * P;
            let readable = file_len.saturating_sub(at).min(n as u64 * P) as usize;
            if readable > 0 {
                let dst = &mut buf[k * P as usize..][..readable];
                storage
                    .read_at(at, dst)
                    .map_err(io_err("read pages to replay into", at))?;
            }
        }
        // Apply the batch's ranges in log order. Every page a range touches is looked up (and
        // must be in the batch), first among the last few found: small frames alternate
        // between a few pages, and three binary searches per range (two of them in an
        // assertion that this lookup already makes) were most of this function's time.
        let mut found = [(u64::MAX, 0usize); 8];
        let mut next = 0;
        for &(off, start, len) in &ranges[start..j] {
            let (mut pos, mut rest) = (off, &arena[start..start + len]);
            while !rest.is_empty() {
                let page = pos / P;
                let slot = match found.iter().find(|f| f.0 == page) {
                    Some(&(_, slot)) => slot,
                    None => {
                        let slot = pages.binary_search(&page).unwrap_or_else(|_| {
                            panic!("replay: range {off}+{len} lies outside its page batch")
                        });
                        found[next] = (page, slot);
                        next = (next + 1) % found.len();
                        slot
                    }
                };
                let in_page = (pos % P) as usize;
                let n = rest.len().min(P as usize - in_page);
                buf[slot * P as usize + in_page..][..n].copy_from_slice(&rest[..n]);
                pos += n as u64;
                rest = &rest[n..];
            }
        }
        Ok(PageBatch {
            pages,
            buf,
            runs,
            end: j,
        })
    }

    /// Write the batch's runs back to the file.
    fn write<S: Storage + ?Sized>(&self, storage: &mut S) -> Result<(), RecoveryError> {
        const P: u64 = PAGE_SIZE;
        for &(k, n) in &self.runs {
            assert!(
                n > 0 && self.pages[k + n - 1] == self.pages[k] + n as u64 - 1,
                "replay: a run written back is not consecutive pages of its batch"
            );
            let at = self.pages[k] * P;
            storage
                .write_at(at, &self.buf[k * P as usize..(k + n) * P as usize])
                .map_err(io_err("replay pages", at))?;
            crate::failpoint!("recovery.mid_replay");
        }
        Ok(())
    }
}

/// Runs of consecutive page numbers in sorted `pages`, as (first index, count), each at most
/// `REPLAY_RUN_PAGES_MAX` long.
fn page_runs(pages: &[u64]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut k = 0;
    while k < pages.len() {
        let mut n = 1;
        while k + n < pages.len() && pages[k + n] == pages[k] + n as u64 && n < REPLAY_RUN_PAGES_MAX
        {
            n += 1;
        }
        runs.push((k, n));
        k += n;
    }
    runs
}

/// The outcome of [`recover`].
///
/// ```
/// use txheap_recovery::{format, recover, MemStorage};
/// let mut s = MemStorage::new();
/// format(&mut s, 65536, 1 << 20).unwrap();
/// assert!(!recover(&mut s).unwrap().checkpointed);
/// ```
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The current superblock after recovery.
    pub superblock: Superblock,
    /// Its slot.
    pub slot: Slot,
    /// The scan.
    pub scan: LogScan,
    /// Whether a checkpoint was written: frames were replayed, or a salvage dropped some
    /// ([`recover_checked_keeping_log`] leaves replayed frames in the log when it can).
    pub checkpointed: bool,
}

/// The file as replay will leave it, read without writing it: the file's bytes (zeros past its
/// end) with every committed range laid over them in log order. [`recover_checked`] hands it to
/// the caller's check before the first write.
///
/// ```
/// use txheap_recovery::{format, recover_checked, MemStorage, RecoveryError, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset() + 1, b"yz").unwrap();
/// s.write_at(sb.log_offset(), b.finish(1, 1)).unwrap();
/// let mut seen = [0u8; 4];
/// recover_checked(&mut s, |_, view| view.read(sb.heap_offset(), &mut seen)).unwrap();
/// assert_eq!(&seen, b"\0yz\0");
/// ```
pub struct Replayed<'a, S: Storage + ?Sized> {
    storage: &'a S,
    file_len: u64,
    over: Overlay<'a>,
}

/// Where [`Replayed`] finds the replayed bytes.
enum Overlay<'a> {
    /// The whole replay fits one page batch: its pages, as replay will write them.
    Pages { pages: &'a [u64], buf: &'a [u8] },
    /// A larger replay: the ranges themselves, indexed by page.
    Ranges {
        /// `(file offset, arena start, len)` of each committed range, in log order.
        ranges: &'a [(u64, usize, usize)],
        arena: &'a [u8],
        /// `(page, index into ranges)` for every page each range touches, sorted.
        by_page: Vec<(u64, usize)>,
    },
}

impl<'a, S: Storage + ?Sized> Replayed<'a, S> {
    /// The view of a replay that one batch holds entirely (no index to build: the batch's
    /// pages are already sorted).
    fn of_batch(storage: &'a S, batch: &'a PageBatch) -> Result<Self, RecoveryError> {
        Ok(Replayed {
            storage,
            file_len: storage.len().map_err(io_err("stat", 0))?,
            over: Overlay::Pages {
                pages: &batch.pages,
                buf: &batch.buf,
            },
        })
    }

    /// The view of any replay, from its ranges (builds a page index: for logs whose pages do
    /// not fit one batch).
    fn of_ranges(
        storage: &'a S,
        ranges: &'a [(u64, usize, usize)],
        arena: &'a [u8],
    ) -> Result<Self, RecoveryError> {
        let mut by_page = Vec::with_capacity(ranges.len());
        for (i, &(off, _, len)) in ranges.iter().enumerate() {
            by_page
                .extend((off / PAGE_SIZE..(off + len as u64).div_ceil(PAGE_SIZE)).map(|p| (p, i)));
        }
        by_page.sort_unstable();
        Ok(Replayed {
            storage,
            file_len: storage.len().map_err(io_err("stat", 0))?,
            over: Overlay::Ranges {
                ranges,
                arena,
                by_page,
            },
        })
    }

    /// Fill `buf` with bytes `[off, off + buf.len())` of the replayed file.
    ///
    /// ```
    /// use txheap_recovery::{format, recover_checked, MemStorage, Storage};
    /// use txheap_recovery::txheap_log::FrameBuilder;
    /// let mut s = MemStorage::new();
    /// let sb = format(&mut s, 65536, 1 << 20).unwrap();
    /// let end = s.bytes().len() as u64;
    /// let mut b = FrameBuilder::new();
    /// b.push_range(end + 2, b"past the end").unwrap();
    /// s.write_at(sb.log_offset(), b.finish(1, 1)).unwrap();
    /// let mut got = [1u8; 6];
    /// recover_checked(&mut s, |_, view| view.read(end, &mut got)).unwrap();
    /// assert_eq!(&got, b"\0\0past"); // zeros past the file's end, then the range
    /// ```
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), RecoveryError> {
        const P: u64 = PAGE_SIZE;
        let end = off
            .checked_add(buf.len() as u64)
            .ok_or_else(|| RecoveryError::Corrupt {
                offset: off,
                what: format!(
                    "read of {} bytes past the end of the address space",
                    buf.len()
                ),
            })?;
        buf.fill(0);
        let readable = self.file_len.saturating_sub(off).min(buf.len() as u64) as usize;
        if readable > 0 {
            self.storage
                .read_at(off, &mut buf[..readable])
                .map_err(io_err("read replayed view", off))?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        match &self.over {
            Overlay::Pages { pages, buf: bytes } => {
                for p in off / P..end.div_ceil(P) {
                    if let Ok(k) = pages.binary_search(&p) {
                        let lo = (p * P).max(off);
                        let hi = (p * P + P).min(end);
                        let src =
                            &bytes[k * P as usize + (lo - p * P) as usize..][..(hi - lo) as usize];
                        buf[(lo - off) as usize..(hi - off) as usize].copy_from_slice(src);
                    }
                }
            }
            Overlay::Ranges {
                ranges,
                arena,
                by_page,
            } => {
                let first = by_page.partition_point(|&(p, _)| p < off / P);
                let last = by_page.partition_point(|&(p, _)| p < end.div_ceil(P));
                let mut hits: Vec<usize> = by_page[first..last].iter().map(|&(_, i)| i).collect();
                hits.sort_unstable();
                hits.dedup();
                for i in hits {
                    let (r_off, start, len) = ranges[i];
                    let lo = r_off.max(off);
                    let hi = (r_off + len as u64).min(end);
                    if lo < hi {
                        let src = &arena[start + (lo - r_off) as usize..][..(hi - lo) as usize];
                        buf[(lo - off) as usize..(hi - off) as usize].copy_from_slice(src);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writable open: select; check the length (before any write); barrier the log and replay
/// committed frames with `write_at`; checkpoint if anything was replayed. [`recover_checked`] without a check.
///
/// ```
/// use txheap_recovery::{format, recover, MemStorage, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset(), b"x").unwrap();
/// let f = b.finish(1, 1).to_vec();
/// s.write_at(sb.log_offset(), &f).unwrap();
/// let r = recover(&mut s).unwrap();
/// assert!(r.checkpointed);
/// assert_eq!(s.bytes()[sb.heap_offset() as usize], b'x');
/// assert_eq!(recover(&mut s).unwrap().scan.frames, 0);
/// ```
pub fn recover<S: Storage + ?Sized>(storage: &mut S) -> Result<Recovered, RecoveryError> {
    recover_checked(storage, |_, _| Ok(()))
}

/// [`recover`], with a check of the replayed file before the first write: when the log holds
/// committed frames, `check` gets the current superblock and a [`Replayed`] view of the file as
/// replay will leave it, and an error from it (or a superblock counter that a checkpoint could
/// not bump) refuses the open with the file unchanged. With an empty log nothing is written and
/// `check` is not called.
///
/// ```
/// use txheap_recovery::{format, recover_checked, MemStorage, RecoveryError, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset(), b"x").unwrap();
/// s.write_at(sb.log_offset(), b.finish(1, 1)).unwrap();
/// let before = s.bytes().to_vec();
/// let refused = recover_checked(&mut s, |_, _| {
///     Err(RecoveryError::Corrupt { offset: 0, what: "damaged heap".into() })
/// });
/// assert!(refused.is_err());
/// assert_eq!(s.bytes(), &before[..]);
/// ```
pub fn recover_checked<S, E>(
    storage: &mut S,
    check: impl FnOnce(&Superblock, &Replayed<'_, S>) -> Result<(), E>,
) -> Result<Recovered, E>
where
    S: Storage + ?Sized,
    E: From<RecoveryError>,
{
    recover_checked_with(storage, OnDamage::Refuse, check)
}

/// What recovery does when the log holds a damaged frame that a later frame proves durable
/// ([`LogScan::damage`](crate::LogScan::damage)).
///
/// ```
/// assert_ne!(txheap_recovery::OnDamage::Refuse, txheap_recovery::OnDamage::Salvage);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDamage {
    /// Refuse with [`RecoveryError::LogDamaged`] before writing anything (the default).
    #[default]
    Refuse,
    /// Replay the committed frames before the damaged one, drop it and everything after it,
    /// and checkpoint so that they never replay: the user accepted the loss.
    Salvage,
}

/// [`recover_checked`] with a choice of what to do with a damaged durable frame.
///
/// ```
/// use txheap_recovery::{format, recover_checked_with, MemStorage, OnDamage, RecoveryError, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset(), b"x").unwrap();
/// let f1 = b.finish_vouching(1, 1, 0).to_vec();
/// let f2 = b.finish_vouching(1, 2, 1).to_vec();
/// s.write_at(sb.log_offset(), &f1).unwrap();
/// s.write_at(sb.log_offset() + f1.len() as u64, &f2).unwrap();
/// s.write_at(sb.log_offset() + 50, &[0xff]).unwrap(); // damage frame 1's payload
/// let refused = recover_checked_with(&mut s, OnDamage::Refuse, |_, _| Ok::<(), RecoveryError>(()));
/// assert!(matches!(refused, Err(RecoveryError::LogDamaged { txid: 1, voucher_txid: 2, .. })));
/// let salvaged = recover_checked_with(&mut s, OnDamage::Salvage, |_, _| Ok::<(), RecoveryError>(())).unwrap();
/// assert_eq!((salvaged.scan.frames, salvaged.checkpointed), (0, true));
/// ```
pub fn recover_checked_with<S, E>(
    storage: &mut S,
    on_damage: OnDamage,
    check: impl FnOnce(&Superblock, &Replayed<'_, S>) -> Result<(), E>,
) -> Result<Recovered, E>
where
    S: Storage + ?Sized,
    E: From<RecoveryError>,
{
    recover_checked_batched(storage, on_damage, check, REPLAY_BATCH_PAGES_MAX, false)
}

/// [`recover_checked_with`], but when it can, it leaves the replayed frames in the log instead
/// of checkpointing: the heap's pages hold them (written, not yet made durable), and the log
/// still holds them, so a crash before the caller's own checkpoint replays them again. It
/// checkpoints anyway when a checkpoint is what makes the result safe: a salvage (the dropped
/// frames must never replay) and a replay that wrote vouchers (`Recovered::checkpointed` says
/// which happened). Without a checkpoint the log's generation is kept, and stale frames of it
/// may lie past the torn tail: the caller must checkpoint before it writes a frame of its own
/// (docs/ARCHITECTURE.md section 5), and must barrier the log before it calls the replayed
/// transactions durable (a killed writer's frames may be only in the page cache).
///
/// ```
/// use txheap_recovery::{format, recover, recover_checked_keeping_log, MemStorage, OnDamage, RecoveryError, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset(), b"x").unwrap();
/// s.write_at(sb.log_offset(), b.finish(1, 1)).unwrap();
/// let r = recover_checked_keeping_log(&mut s, OnDamage::Refuse, |_, _| Ok::<(), RecoveryError>(())).unwrap();
/// assert_eq!((r.scan.frames, r.checkpointed), (1, false));
/// assert_eq!(s.bytes()[sb.heap_offset() as usize], b'x');
/// // The frame is still in the log: the next recovery replays it again, and checkpoints.
/// assert_eq!(recover(&mut s).unwrap().scan.frames, 1);
/// ```
pub fn recover_checked_keeping_log<S, E>(
    storage: &mut S,
    on_damage: OnDamage,
    check: impl FnOnce(&Superblock, &Replayed<'_, S>) -> Result<(), E>,
) -> Result<Recovered, E>
where
    S: Storage + ?Sized,
    E: From<RecoveryError>,
{
    recover_checked_batched(storage, on_damage, check, REPLAY_BATCH_PAGES_MAX, true)
}

/// A committed range to replay: (file offset, start in the log's view or the arena, length).
type ReplayRange = (u64, usize, usize);

/// Scan the log and collect every committed range before any is written, so that a hostile frame
/// later in the log is refused before a byte of the file changes (at most the log's size is
/// held). Where the storage maps the log region (`log`, a view of all of it), each range is its
/// offset in the region and nothing is copied (a replay of 64 MiB of frames spent a third of its
/// time in `pread`s of the log, copies into the arena and freeing it: perf, W5-replay);
/// otherwise the ranges are copied into one arena, returned. A range is `(file offset, start in
/// the view or arena, length)`.
fn collect_ranges<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    log: Option<&[u8]>,
) -> Result<(LogScan, Vec<ReplayRange>, Vec<u8>), RecoveryError> {
    // Capacity for a full log up front (address space only until used): growing by doubling
    // copied the arena over and over. Capped, so that a log larger than memory plus swap does
    // not fail the reservation itself (an abort, not an error); past the cap the vectors grow
    // as usual. The ranges' capacity is one per 64 log bytes (a range txheap writes costs more
    // than that in a frame: its 16-byte header and at least one 64-byte line), so it is not
    // outgrown below the cap (a hostile log of tiny ranges only makes it grow): its doubling
    // was a copy of tens of megabytes of fresh pages (perf, W5-replay).
    let log_size = usize::try_from(sb.log_size).unwrap_or(usize::MAX);
    const RESERVE_MAX: usize = 1 << 30;
    let mut arena: Vec<u8> = match log {
        Some(_) => Vec::new(),
        None => Vec::with_capacity(log_size.min(RESERVE_MAX)),
    };
    let mut ranges: Vec<ReplayRange> = Vec::with_capacity(log_size.min(RESERVE_MAX) / 64);
    let apply = &mut |off, bytes: &[u8]| {
        match log {
            Some(l) => {
                let at = (bytes.as_ptr() as usize).wrapping_sub(l.as_ptr() as usize);
                assert!(
                    at <= l.len() && bytes.len() <= l.len() - at,
                    "replay: a range read through the log's view lies outside it"
                );
                ranges.push((off, at, bytes.len()));
            }
            None => {
                ranges.push((off, arena.len(), bytes.len()));
                arena.extend_from_slice(bytes);
            }
        }
        Ok(())
    };
    let scan = scan_log_in(
        storage,
        sb,
        log,
        (0, sb.next_txid, true),
        apply,
        &mut |_, _| {},
    )?;
    Ok((scan, ranges, arena))
}

/// [`recover_checked`] with replay batches of at most `batch_pages` pages (tests use tiny ones
/// to reach the multi-batch path, where the check reads through a page index); `keep_log`:
/// [`recover_checked_keeping_log`].
fn recover_checked_batched<S, E>(
    storage: &mut S,
    on_damage: OnDamage,
    check: impl FnOnce(&Superblock, &Replayed<'_, S>) -> Result<(), E>,
    batch_pages: usize,
    keep_log: bool,
) -> Result<Recovered, E>
where
    S: Storage + ?Sized,
    E: From<RecoveryError>,
{
    let (sb, slot) = select_superblock(storage)?;
    let len = storage.len().map_err(io_err("stat", 0))?;
    if len < sb.min_file_len() {
        return Err(RecoveryError::Truncated {
            len,
            needed: sb.min_file_len(),
        }
        .into());
    }
    // The log read in place where the storage maps it. (A view that cannot be made, or that is
    // not the whole region, is not an error: the log is then read.)
    let log_view = storage
        .view(sb.log_offset(), sb.log_size)
        .ok()
        .flatten()
        .filter(|v| (**v).as_ref().len() as u64 == sb.log_size);
    let log: Option<&[u8]> = log_view.as_deref().map(|v| v.as_ref());
    let (scan, ranges, owned_arena) = collect_ranges(&*storage, &sb, log)?;
    let arena: &[u8] = log.unwrap_or(&owned_arena);
    if let (Some(d), OnDamage::Refuse) = (scan.damage, on_damage) {
        return Err(d.error().into());
    }
    // A salvage checkpoints even with nothing to replay, so the dropped frames never replay.
    let checkpoint_needed = scan.frames > 0 || scan.damage.is_some();
    // The first page batch (usually the whole replay) is built in memory before any write.
    let first = if ranges.is_empty() {
        None
    } else {
        Some(PageBatch::build(&*storage, &ranges, arena, 0, batch_pages)?)
    };
    // A voucher first when a replayed frame's in-place check was asked (and held): replay may
    // write later frames' bytes over its pieces, and a crash during replay would then make the
    // check fail on the next recovery, which would cut the log under a half-replayed heap.
    let vouch =
        scan.checked > 0 && !crate::hooks::sabotaged(crate::hooks::RECOVERY_REPLAY_BEFORE_VOUCHER);
    // (The scan refused a log without room for them.)
    let next_txid = scan.next_txid + if vouch { RECOVERY_VOUCHERS } else { 0 };
    if checkpoint_needed {
        // Everything that could refuse the open is decided here, before the first write: the
        // caller's check of the replayed heap, and the counters the checkpoint will bump.
        checkpoint_possible(&*storage, &sb, slot, next_txid)?;
        let view = match &first {
            Some(b) if b.end == ranges.len() => Replayed::of_batch(&*storage, b)?,
            _ => Replayed::of_ranges(&*storage, &ranges, arena)?,
        };
        check(&sb, &view)?;
    }
    if !ranges.is_empty()
        && !vouch
        && !crate::hooks::sabotaged(crate::hooks::RECOVERY_REPLAY_BEFORE_LOG_BARRIER)
    {
        // The frames may be only in the page cache (a killed writer's, never barriered): make
        // them durable before the heap changes, or a power cut could keep replayed heap pages
        // and lose their frames, a state no prefix of the transactions made. (Usually the log
        // is on disk already and this costs little; the vouchers' path syncs first anyway.)
        storage
            .barrier(sb.log_offset(), scan.end_offset)
            .map_err(io_err("barrier the log before replay", sb.log_offset()))?;
    }
    if vouch {
        // The voucher goes into the log region, which the view (a `&[u8]` the ranges point
        // into) shows: drop the view first, and map the region again for the replay (the
        // ranges are offsets from the region's start).
        let viewed = log.is_some();
        drop(log_view);
        write_vouchers(storage, &sb, &scan)?;
        let log_view = if viewed {
            let v = storage
                .view(sb.log_offset(), sb.log_size)
                .map_err(io_err("map the log again", sb.log_offset()))?
                .filter(|v| (**v).as_ref().len() as u64 == sb.log_size)
                .ok_or_else(|| RecoveryError::Io {
                    op: "map the log again",
                    offset: sb.log_offset(),
                    source: std::io::Error::other("the log's view is gone"),
                })?;
            Some(v)
        } else {
            None
        };
        let arena: &[u8] = log_view.as_deref().map_or(&owned_arena[..], |v| v.as_ref());
        replay(storage, first, &ranges, arena, batch_pages)?;
        drop(log_view);
    } else {
        replay(storage, first, &ranges, arena, batch_pages)?;
        // The checkpoint writes the log region: the view must be gone first.
        drop(log_view);
    }
    crate::failpoint!("recovery.after_replay");
    // Kept: the log still holds every replayed frame (no voucher was written after them, and
    // no frame was dropped), as it did before the replay.
    if !checkpoint_needed || (keep_log && !vouch && scan.damage.is_none()) {
        return Ok(Recovered {
            superblock: sb,
            slot,
            scan,
            checkpointed: false,
        });
    }
    crate::phase!(RECOVERY_CHECKPOINT);
    let (nsb, nslot) = checkpoint(storage, &sb, slot, next_txid)?;
    Ok(Recovered {
        superblock: nsb,
        slot: nslot,
        scan,
        checkpointed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::format;
    use crate::storage::MemStorage;
    use proptest::prelude::*;

    /// A file of `file_len` patterned bytes, ranges `(offset, len, fill byte)` in log order, and
    /// the file that writing each range in order leaves (the reference).
    struct Case {
        base: MemStorage,
        ranges: Vec<(u64, usize, usize)>,
        arena: Vec<u8>,
        naive: MemStorage,
    }

    impl Case {
        fn new(file_len: u64, spec: &[(u64, usize, u8)]) -> Case {
            let mut base = MemStorage::new();
            let init: Vec<u8> = (0..file_len).map(|i| (i % 251) as u8).collect();
            base.write_at(0, &init).unwrap();
            let (mut arena, mut ranges) = (Vec::new(), Vec::new());
            for &(off, len, b) in spec {
                ranges.push((off, arena.len(), len));
                arena.extend(std::iter::repeat_n(b, len));
            }
            let mut naive = base.clone();
            for &(off, start, len) in &ranges {
                naive.write_at(off, &arena[start..start + len]).unwrap();
            }
            Case {
                base,
                ranges,
                arena,
                naive,
            }
        }
    }

    /// `recover_checked` picks the view by whether the first batch holds the whole replay:
    /// with one-page batches (several batches: page index) and with big ones (one batch), the
    /// check sees exactly the file that recovery then writes.
    #[test]
    fn recover_checked_shows_the_file_it_then_writes_whatever_the_batches() {
        let mut s = MemStorage::new();
        let sb = format(&mut s, 65536, 1 << 20).unwrap();
        let h = sb.heap_offset();
        let mut at = sb.log_offset();
        for (txid, (off, fill)) in [(h + 10, 1u8), (h + 3 * PAGE_SIZE - 5, 2), (h + 8, 3)]
            .into_iter()
            .enumerate()
        {
            let mut b = txheap_log::FrameBuilder::new();
            b.push_range(off, &[fill; 100]).unwrap();
            let f = b.finish(sb.generation, 1 + txid as u64).to_vec();
            s.write_at(at, &f).unwrap();
            at += f.len() as u64;
        }
        let window = (h, 4 * PAGE_SIZE as usize);
        let mut files = Vec::new();
        for batch_pages in [1, REPLAY_BATCH_PAGES_MAX] {
            let mut t = s.clone();
            let mut seen = vec![0u8; window.1];
            recover_checked_batched(
                &mut t,
                OnDamage::Refuse,
                |_, v| v.read(window.0, &mut seen),
                batch_pages,
                false,
            )
            .unwrap();
            let after = &t.bytes()[window.0 as usize..][..window.1];
            assert_eq!(seen, after, "batch_pages {batch_pages}");
            // Log order: the third range (3) overwrote the first (1) where they overlap.
            assert_eq!(
                (seen[8], seen[107], seen[108], seen[3 * PAGE_SIZE as usize]),
                (3, 3, 1, 2)
            );
            files.push(t.into_bytes());
        }
        assert_eq!(files[0], files[1]);
    }

    /// [`MemStorage`] that also gives views (copies of the bytes asked for), so that recovery
    /// takes the path that reads the log in place, as it does over a mapped file.
    struct Viewed(MemStorage);

    impl Storage for Viewed {
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.0.read_at(offset, buf)
        }
        fn view(&self, offset: u64, len: u64) -> std::io::Result<Option<Box<dyn AsRef<[u8]>>>> {
            let b = &self.0.bytes()[offset as usize..(offset + len) as usize];
            Ok(Some(Box::new(b.to_vec())))
        }
        fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
            self.0.write_at(offset, bytes)
        }
        fn barrier(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
            self.0.barrier(offset, len)
        }
        fn barrier_all(&mut self) -> std::io::Result<()> {
            self.0.barrier_all()
        }
        fn grow(&mut self, new_len: u64) -> std::io::Result<()> {
            self.0.grow(new_len)
        }
    }

    proptest! {
        /// Recovery through a view of the log (read in place, as over a mapped file) and
        /// through reads (copied into an arena) give the same outcome, and leave the same file,
        /// for logs of random frames with a flipped byte, a torn tail, or neither, refusing or
        /// salvaging damage.
        #[test]
        fn recovery_through_a_view_equals_recovery_through_reads(
            frames in prop::collection::vec(
                prop::collection::vec((0u64..60_000, 1usize..300, any::<u8>()), 1..4),
                0..30,
            ),
            flip in prop::option::of((any::<prop::sample::Index>(), 1u8..=255)),
            torn in prop::option::of(any::<prop::sample::Index>()),
            salvage in any::<bool>(),
        ) {
            let mut s = MemStorage::new();
            let sb = format(&mut s, 65536, 1 << 20).unwrap();
            let h = sb.heap_offset();
            let mut at = sb.log_offset();
            for (k, ranges) in frames.iter().enumerate() {
                let mut b = txheap_log::FrameBuilder::new();
                for &(off, len, fill) in ranges {
                    b.push_range(h + off, &vec![fill; len]).unwrap();
                }
                let txid = sb.next_txid + k as u64;
                let f = b.finish_vouching(sb.generation, txid, txid.saturating_sub(1)).to_vec();
                s.write_at(at, &f).unwrap();
                at += f.len() as u64;
            }
            let written = (at - sb.log_offset()) as usize;
            if written > 0 {
                if let Some((i, x)) = flip {
                    let p = sb.log_offset() as usize + i.index(written);
                    let mut b = [0u8];
                    s.read_at(p as u64, &mut b).unwrap();
                    s.write_at(p as u64, &[b[0] ^ x]).unwrap();
                }
                if let Some(i) = torn {
                    let from = sb.log_offset() + i.index(written) as u64;
                    s.write_at(from, &vec![0u8; (at - from) as usize]).unwrap();
                }
            }
            let mode = if salvage { OnDamage::Salvage } else { OnDamage::Refuse };
            let mut read = s.clone();
            let mut viewed = Viewed(s);
            let a = recover_checked_batched(&mut read, mode, |_, _| Ok::<(), RecoveryError>(()), 4, false);
            let b = recover_checked_batched(&mut viewed, mode, |_, _| Ok::<(), RecoveryError>(()), 4, false);
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            prop_assert!(read.bytes() == viewed.0.bytes(), "the files differ");
        }

        /// Page-at-a-time replay, in batches of any size, leaves the file exactly as writing
        /// each range in order would (overlaps, page-crossing ranges, ranges past the end).
        #[test]
        fn page_replay_equals_writing_each_range_in_order(
            file_len in 0u64..40_000,
            spec in prop::collection::vec((0u64..60_000, 1usize..9_000, any::<u8>()), 1..40),
            batch in 1usize..6,
        ) {
            let Case { base, ranges, arena, naive } = Case::new(file_len, &spec);
            let mut paged = base.clone();
            replay_pages_batched(&mut paged, &ranges, &arena, 0, batch).unwrap();
            // Page replay may extend the file to a page boundary with zeros; compare the bytes
            // the naive replay has, and require the rest to be zeros.
            let (a, b) = (naive.bytes(), paged.bytes());
            prop_assert!(b.len() >= a.len());
            prop_assert_eq!(&b[..a.len()], a);
            prop_assert!(b[a.len()..].iter().all(|&x| x == 0));
        }

        /// The view recovery's check reads ([`Replayed`]) equals the file that writing each
        /// range in order leaves, for any window, including bytes past the file's end (zeros).
        #[test]
        fn replayed_view_equals_the_replayed_file(
            file_len in 0u64..40_000,
            spec in prop::collection::vec((0u64..60_000, 1usize..9_000, any::<u8>()), 0..40),
            windows in prop::collection::vec((0u64..75_000, 0usize..20_000), 1..20),
        ) {
            let Case { base, ranges, arena, naive } = Case::new(file_len, &spec);
            // Both views: from the ranges (page index) and from one batch holding them all.
            let batch = PageBatch::build(&base, &ranges, &arena, 0, usize::MAX).unwrap();
            prop_assert_eq!(batch.end, ranges.len());
            let views = [
                Replayed::of_ranges(&base, &ranges, &arena).unwrap(),
                Replayed::of_batch(&base, &batch).unwrap(),
            ];
            for (off, len) in windows {
                let want: Vec<u8> = (off..off + len as u64)
                    .map(|i| naive.bytes().get(i as usize).copied().unwrap_or(0))
                    .collect();
                for (k, view) in views.iter().enumerate() {
                    let mut got = vec![0xEEu8; len];
                    view.read(off, &mut got).unwrap();
                    prop_assert!(got == want, "view {} window {}+{}", k, off, len);
                }
            }
        }
    }
}
