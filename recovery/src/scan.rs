//! Scanning the log: the committed frames, read through the storage choke point.
//!
//! Owns: `scan_log`, its outcome `LogScan`, and the read-ahead window over the log region. It
//! refuses a checksum-valid frame that is malformed or writes outside the heap (`Corrupt`), and
//! stops at the first frame that is not committed. May not: write the file (ranges go to the
//! caller's `apply`), or decode frames itself (`txheap_log` does).

use txheap_log::{
    header_at, parse_header, verified_frame_at, verify_frame, FrameHeader, InPlaceCheck,
    InPlaceDigest, Stop, StopReason, Voucher, CHECK_OFFSET, FRAME_ALIGN, FRAME_HEADER_LEN,
    GENERATION_OFFSET, MAGIC_OFFSET, RANGE_COUNT_OFFSET, TXID_OFFSET,
};

use crate::error::{io_err, RecoveryError};
use crate::hooks::{
    sabotaged, IGNORE_DURABILITY_EVIDENCE, REPLAY_OLD_GENERATION, SKIP_CHECKSUM,
    SKIP_IN_PLACE_CHECK,
};
use crate::limits::{FOLLOW_WINDOW_LEN_MIN, LOG_WINDOW_LEN_MAX, LOG_WINDOW_LEN_MIN};
use crate::storage::Storage;
use crate::superblock::Superblock;
use crate::witness::witness_for;

/// The outcome of a log scan.
///
/// ```
/// use txheap_recovery::{format, recover, MemStorage};
/// let mut s = MemStorage::new();
/// format(&mut s, 65536, 1 << 20).unwrap();
/// let scan = recover(&mut s).unwrap().scan;
/// assert_eq!((scan.frames, scan.end_offset, scan.next_txid), (0, 0, 1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogScan {
    /// Committed frames found.
    pub frames: u64,
    /// Bytes of their ranges.
    pub range_bytes: u64,
    /// Where the next frame goes (relative to the log's start).
    pub end_offset: u64,
    /// The next transaction id.
    pub next_txid: u64,
    /// Why the scan stopped.
    pub stop: Stop,
    /// Set when the frame the scan stopped at is damaged and a later frame proves it was
    /// durable (see [`find_damage`]): the frames after it hold acknowledged transactions.
    pub damage: Option<LogDamage>,
    /// Committed frames whose in-place check was asked (no later frame vouches for them) and
    /// held. Before replay writes over their pieces, recovery makes the file durable and
    /// appends a voucher, so that a crash during replay cannot make the check fail next time.
    pub checked: u64,
}

/// A damaged durable frame: where it is, and the later frame that proves it was durable.
///
/// ```
/// let d = txheap_recovery::LogDamage { offset: 8192, txid: 3, voucher_offset: 8300, voucher_txid: 4, last_txid: 9 };
/// assert!(d.last_txid >= d.voucher_txid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDamage {
    /// File offset of the damaged frame.
    pub offset: u64,
    /// The transaction id it should carry.
    pub txid: u64,
    /// File offset of the later frame that vouches for it, or of the log-start witness (in a
    /// superblock slot, before the log) when that is the proof.
    pub voucher_offset: u64,
    /// That frame's transaction id.
    pub voucher_txid: u64,
    /// The highest transaction id of any intact later frame of the generation.
    pub last_txid: u64,
}

impl LogDamage {
    /// The error that refuses an open because of this damage.
    ///
    /// ```
    /// let d = txheap_recovery::LogDamage { offset: 8192, txid: 3, voucher_offset: 8300, voucher_txid: 4, last_txid: 9 };
    /// assert!(d.error().to_string().contains("transaction 3"));
    /// ```
    pub fn error(&self) -> RecoveryError {
        RecoveryError::LogDamaged {
            offset: self.offset,
            txid: self.txid,
            voucher_offset: self.voucher_offset,
            voucher_txid: self.voucher_txid,
            last_txid: self.last_txid,
        }
    }
}

/// Decide what the first frame that is not committed is: the log's clean end, or a damaged
/// durable frame (docs/ARCHITECTURE.md, recovery step 2). `stop` is where the scan stopped and
/// `txid` the transaction id a frame there would carry.
///
/// - Fewer bytes than a header remain, or the scan stopped at the log's start on a frame that
///   verifies (the checkpoint's sentinel): a clean end. No search.
/// - Otherwise the frame is torn or damaged, or it is a verifying frame of an older generation
///   (or a stale one of this one) that may be a lost write's leftover where a durable frame
///   was. It is damaged iff a later frame of this generation
///   verifies with a higher txid and evidence (`durable_txid`) at or above `txid`: its writer
///   saw this frame durable, which a torn write never is. Every 8-byte position of the rest of
///   the log is tried (the rule of `txheap_log::find_voucher`, read through a window, and
///   ignoring frames further ahead than the log could hold frames), since a
///   damaged header's length cannot be trusted.
pub fn find_damage<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    stop: &Stop,
    txid: u64,
) -> Result<Option<LogDamage>, RecoveryError> {
    find_damage_in(storage, sb, stop, txid, None)
}

/// [`find_damage`], reading the log region through `log` (all of it) when given.
fn find_damage_in<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    stop: &Stop,
    txid: u64,
    log: Option<&[u8]>,
) -> Result<Option<LogDamage>, RecoveryError> {
    let at = stop.offset;
    if matches!(stop.reason, StopReason::RegionEnd) || sabotaged(IGNORE_DURABILITY_EVIDENCE) {
        return Ok(None);
    }
    let abs = sb.log_offset() + at;
    // A frame that verifies at the log's start is the checkpoint's sentinel (or a new file's):
    // a clean end, without a search (a clean open reads 40 bytes of log). Anywhere else the
    // search runs even when the frame there verifies: a lost write can show an older frame
    // where a durable frame of this generation was (a voucher whose sector reads as before it
    // was written), and only the frames after it can tell.
    //
    // Unless the log-start witness says the generation's first frame was durable: then that
    // frame's write was lost (its sector shows the sentinel again), and the frames after it
    // are searched as for any damaged frame; when none verifies, the witness is the proof.
    //
    // A verifying frame there of a *newer* generation than the superblock's is no sentinel:
    // only a checkpoint names a generation, so a superblock naming that one existed, durable
    // before its frames were written, and is now damaged (the open fell back from its slot to
    // the older one) or its write was lost. Its frames hold acknowledged transactions: refused,
    // the slot that named them given as the proof (a salvage drops them knowingly).
    let first = if at == 0 {
        verified_header_at(storage, sb, at)?
    } else {
        None
    };
    if let Some(h) = first.filter(|h| h.generation > sb.generation) {
        let (_, current) = crate::superblock::select_superblock(storage)?;
        return Ok(Some(LogDamage {
            offset: abs,
            txid: h.txid.max(txid),
            voucher_offset: current.other().offset(),
            voucher_txid: h.txid,
            last_txid: chain_end(storage, sb, &h)?.max(txid),
        }));
    }
    if first.is_some() {
        let Some(witness) = witness_for(storage, sb, txid)? else {
            return Ok(None);
        };
        let (voucher, last) = search_vouchers(storage, sb, log, FRAME_ALIGN as u64, txid)?;
        let (voucher_offset, voucher_txid) = match voucher {
            Some(v) => (sb.log_offset() + v.offset, v.txid),
            None => (witness, txid),
        };
        return Ok(Some(LogDamage {
            offset: abs,
            txid,
            voucher_offset,
            voucher_txid,
            last_txid: last.unwrap_or(voucher_txid).max(txid),
        }));
    }
    // Every 8-byte position after it, through a read window (memory stays bounded by the
    // window and the one candidate frame being verified, whatever the log's size).
    let (voucher, last) = search_vouchers(storage, sb, log, at + FRAME_ALIGN as u64, txid)?;
    Ok(voucher.map(|v| LogDamage {
        offset: abs,
        txid,
        voucher_offset: sb.log_offset() + v.offset,
        voucher_txid: v.txid,
        last_txid: last.unwrap_or(v.txid),
    }))
}

/// How many log sizes of frames the damage search may verify ([`search_vouchers`]).
const SEARCH_BUDGET_LOGS: u64 = 64;
/// ... and at least this many bytes.
const SEARCH_BUDGET_MIN: u64 = 1 << 30;

/// Try every 8-aligned log offset from `from` (itself 8-aligned) for a frame that verifies, of
/// this generation, above `txid`: returns the first that vouches for `txid` (its evidence
/// reaches it) and the highest txid of any such frame. A frame whose txid lies further above
/// `txid` than the log holds frames (one per 40 bytes) is not one this log's writer wrote after
/// it, whatever its check: it is ignored (bytes stored inside a frame's payload could
/// otherwise pose as a voucher for any txid).
fn search_vouchers<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    log: Option<&[u8]>,
    from: u64,
    txid: u64,
) -> Result<(Option<Voucher>, Option<u64>), RecoveryError> {
    let (mut voucher, mut last) = (None, None::<u64>);
    let mut window = LogWindow::over(log);
    let reach = txid.saturating_add(sb.log_size / FRAME_HEADER_LEN as u64);
    // Bytes the search may hash: a writer's frames after a tear are disjoint, so a log holds at
    // most its own size of them, and payload bytes posing as headers (a heap that stores
    // copies of frame headers) cost a log size each at most. Headers that each claim the rest
    // of the log (a review made one every 40 bytes) would cost its size squared, hours for
    // 16 MiB: past this budget the log is refused, named, rather than searched on. Only claims
    // that fit the log count: one that does not is refused unhashed (a review of the first
    // budget found a single flipped length bit, or one header-like record of user data
    // claiming gigabytes, exhausting it).
    let budget = sb
        .log_size
        .saturating_mul(SEARCH_BUDGET_LOGS)
        .max(SEARCH_BUDGET_MIN);
    let mut hashed = 0u64;
    let mut p = from;
    while let Some(found) = window.next_magic(storage, sb, p)? {
        p = found;
        let hb = window.get(storage, sb, p, FRAME_HEADER_LEN as u64)?;
        if let Some(h) = header_at(hb) {
            if h.follows(sb.generation, txid) && h.txid <= reach && h.frame_len() <= sb.log_size - p
            {
                hashed = hashed.saturating_add(h.frame_len());
                if hashed > budget {
                    return Err(RecoveryError::Corrupt {
                        offset: sb.log_offset() + p,
                        what: format!(
                            "the log's frame headers after a damaged or torn frame (transaction \
                             {txid}) claim more than {budget} bytes to verify, at least \
                             {SEARCH_BUDGET_LOGS} times the log: headers overlapping one \
                             another as no writer's frames do"
                        ),
                    });
                }
            }
            if h.follows(sb.generation, txid)
                && h.txid <= reach
                && frame_verifies_at(storage, sb, p)?
            {
                last = Some(last.map_or(h.txid, |l| l.max(h.txid)));
                if voucher.is_none() && h.vouches_for(sb.generation, txid) {
                    voucher = Some(Voucher {
                        offset: p,
                        txid: h.txid,
                        durable_txid: h.durable_txid,
                    });
                }
            }
        }
        p += FRAME_ALIGN as u64;
    }
    Ok((voucher, last))
}

/// Whether a later frame vouches for the frame `txid` that ends at log offset `from` (one with
/// an in-place check): the committed frames after it are followed one by one, as replay would
/// take them, and the first whose evidence reaches `txid` vouches. Not any 8-byte position, as
/// the damage search tries: bytes a user stored (inside a later frame's payload) must never
/// vouch for a check, since that would replay torn bytes silently. Where the chain breaks before
/// a voucher, the damage rule decides: if the frame there is damaged (a later frame proves it
/// durable), it was durable, and so was this one with its bytes (the writer's barriers cover
/// the in-place bytes before any voucher), so the scan goes on to report that damage.
///
/// `memo` carries what the previous walk on the same chain found, so that each frame of the
/// chain is verified once however many checked frames it holds (a review found a log of checked
/// frames vouched only at its end walked once per checked frame: quadratic, hours for 1 MiB).
/// The frames such a walk passed before its end vouch for no later checked frame either: each
/// had evidence below the earlier frame's txid, or at or above its own.
fn chain_vouches<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    log: Option<&[u8]>,
    from: u64,
    txid: u64,
    memo: &mut ChainMemo,
) -> Result<bool, RecoveryError> {
    let mut window = LogWindow::over(log);
    let (mut at, mut expect) = (from, txid + 1);
    if memo.walked && from <= memo.end {
        match memo.ended {
            ChainEnd::Broke(vouched) => return Ok(vouched),
            ChainEnd::Voucher(durable) if durable >= txid => return Ok(true),
            ChainEnd::Voucher(_) => (at, expect) = (memo.end, memo.expect),
        }
    }
    let reason = loop {
        let remaining = sb.log_size - at;
        if remaining < FRAME_HEADER_LEN as u64 {
            return Ok(false);
        }
        let mut hb = [0u8; FRAME_HEADER_LEN];
        hb.copy_from_slice(window.get(storage, sb, at, FRAME_HEADER_LEN as u64)?);
        let h = match parse_header(&hb, sb.generation, expect, remaining) {
            Ok(h) => h,
            Err(reason) => break reason,
        };
        let payload = window.get(
            storage,
            sb,
            at + FRAME_HEADER_LEN as u64,
            u64::from(h.payload_len),
        )?;
        if let Err(reason) = verify_frame(&hb, &h, payload) {
            break reason;
        }
        at += h.frame_len();
        expect += 1;
        if h.durable_txid >= txid && h.durable_txid < h.txid {
            *memo = ChainMemo {
                walked: true,
                end: at,
                expect,
                ended: ChainEnd::Voucher(h.durable_txid),
            };
            return Ok(true);
        }
    };
    let stop = Stop { offset: at, reason };
    let vouched = find_damage_in(storage, sb, &stop, expect, log)?.is_some();
    *memo = ChainMemo {
        walked: true,
        end: at,
        expect,
        ended: ChainEnd::Broke(vouched),
    };
    Ok(vouched)
}

/// What [`chain_vouches`]'s last walk found: where it ended (log offset, the txid expected
/// there) and how.
#[derive(Clone, Copy, Default)]
struct ChainMemo {
    walked: bool,
    end: u64,
    expect: u64,
    ended: ChainEnd,
}

#[derive(Clone, Copy)]
enum ChainEnd {
    /// At the end of a frame that vouched, with this evidence.
    Voucher(u64),
    /// At a break in the chain, whose damage search said this.
    Broke(bool),
}

impl Default for ChainEnd {
    fn default() -> Self {
        ChainEnd::Broke(false)
    }
}

/// Whether the heap holds the bytes `check` names, as its frame's writer wrote them in place:
/// every piece lies inside the file (a piece past its end was in growth that never became
/// durable: no barrier covered the frame either) and the digest of the file's bytes over the
/// pieces equals the check's. Read in pieces of at most 1 MiB; the pieces are disjoint
/// (checked by the scan), so at most the file's length is read.
fn in_place_holds<S: Storage + ?Sized>(
    storage: &S,
    check: &InPlaceCheck<'_>,
) -> Result<bool, RecoveryError> {
    const STEP: u64 = 1 << 20;
    let file_len = storage.len().map_err(io_err("stat", 0))?;
    if check.pieces().any(|(off, len)| off + len > file_len) {
        return Ok(false);
    }
    let mut digest = InPlaceDigest::new();
    let mut buf = Vec::new();
    for (off, len) in check.pieces() {
        let mut p = off;
        while p < off + len {
            let n = (off + len - p).min(STEP);
            buf.resize(n as usize, 0);
            storage
                .read_at(p, &mut buf)
                .map_err(io_err("read in-place bytes", p))?;
            digest.update(&buf);
            p += n;
        }
    }
    Ok(digest.digest() == check.digest)
}

/// Voucher frames a writable recovery appends before it replays over the pieces of a frame
/// whose in-place check it asked: two, as the writer's flush does, so that damage to the first
/// is reported (the second proves it durable) rather than read as a torn tail.
pub(crate) const RECOVERY_VOUCHERS: u64 = 2;

/// What [`scan_log`] calls for each committed range: `(file offset, bytes)`.
pub type ApplyFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), RecoveryError> + 'a;

/// The log region read ahead in growing chunks (`LOG_WINDOW_LEN_MIN`, 64 KiB, doubling to
/// `LOG_WINDOW_LEN_MAX`, 8 MiB), so a scan costs a few large reads instead of two per frame,
/// and an empty log costs one small read; or, when the storage gives one, a view of the whole
/// region (a mapping), read in place.
#[derive(Default)]
struct LogWindow<'v> {
    /// Log-relative offset of `buf[0]` (0 with a view).
    start: u64,
    buf: Vec<u8>,
    chunk: u64,
    /// The first read's length (the chunk doubles from it).
    first: u64,
    /// The whole log region, when the storage maps it.
    view: Option<&'v [u8]>,
}

impl<'v> LogWindow<'v> {
    /// A window over `view` (the whole log region) if given, else one that reads.
    fn over(view: Option<&'v [u8]>) -> LogWindow<'v> {
        LogWindow::reading(view, LOG_WINDOW_LEN_MIN)
    }

    /// [`LogWindow::over`], whose first read (without a view) is `first` bytes.
    fn reading(view: Option<&'v [u8]>, first: u64) -> LogWindow<'v> {
        LogWindow {
            view,
            first,
            ..LogWindow::default()
        }
    }

    /// The bytes the window holds, from log offset `start`.
    fn bytes(&self) -> &[u8] {
        self.view.unwrap_or(&self.buf)
    }

    /// Bytes `[at, at + len)` of the log region (the caller checked they lie inside it).
    #[inline(always)]
    fn get<S: Storage + ?Sized>(
        &mut self,
        storage: &S,
        sb: &Superblock,
        at: u64,
        len: u64,
    ) -> Result<&[u8], RecoveryError> {
        if let Some(v) = self.view {
            // The whole region, read in place (the usual case: one slice, no copy).
            if let Some(b) = usize::try_from(at)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(a, n)| v.get(a..)?.get(..n))
            {
                return Ok(b);
            }
        }
        self.read(storage, sb, at, len)
    }

    /// [`LogWindow::get`] past the view's fast path: a read into the window, or the error.
    #[inline(never)]
    fn read<S: Storage + ?Sized>(
        &mut self,
        storage: &S,
        sb: &Superblock,
        at: u64,
        len: u64,
    ) -> Result<&[u8], RecoveryError> {
        if at.checked_add(len).is_none_or(|end| end > sb.log_size) {
            return Err(RecoveryError::Corrupt {
                offset: sb.log_offset() + at,
                what: format!("log read of {len} bytes runs past the log region"),
            });
        }
        let have = at >= self.start && at + len <= self.start + self.bytes().len() as u64;
        if !have {
            assert!(
                self.view.is_none(),
                "log window: a view shorter than the log"
            );
            self.chunk = (self.chunk * 2).clamp(self.first, LOG_WINDOW_LEN_MAX);
            let n = len.max(self.chunk).min(sb.log_size - at);
            let abs = sb.log_offset() + at;
            self.start = at;
            self.buf.resize(n as usize, 0);
            storage
                .read_at(abs, &mut self.buf)
                .map_err(io_err("read log", abs))?;
        }
        let bytes = self.bytes();
        assert!(
            at >= self.start && at + len <= self.start + bytes.len() as u64,
            "log window: a refill does not hold the bytes asked for"
        );
        let i = (at - self.start) as usize;
        Ok(&bytes[i..i + len as usize])
    }

    /// The first 8-aligned log offset at or after `from` (itself 8-aligned) where a whole
    /// header fits in the region and the frame magic starts, or `None`. The damage search's
    /// filter: a tight loop over the window's bytes instead of a header decode at each of the
    /// region's 8-byte positions (the rest of a new file's log is zeros: 64 MiB of them cost a
    /// replay 8 M decodes).
    fn next_magic<S: Storage + ?Sized>(
        &mut self,
        storage: &S,
        sb: &Superblock,
        mut from: u64,
    ) -> Result<Option<u64>, RecoveryError> {
        let magic = txheap_log::FRAME_MAGIC.to_le_bytes();
        let header = FRAME_HEADER_LEN as u64;
        while from + header <= sb.log_size {
            self.get(storage, sb, from, header)?;
            // Positions whose header lies whole inside the window.
            let i = (from - self.start) as usize;
            let bytes = self.bytes();
            let last = bytes.len() - FRAME_HEADER_LEN;
            let positions = (last - i) / FRAME_ALIGN + 1;
            if let Some(k) = find_magic(&bytes[i..], positions, magic) {
                return Ok(Some(from + (k * FRAME_ALIGN) as u64));
            }
            // Every aligned position up to `last` was looked at; go on after it.
            from += (positions * FRAME_ALIGN) as u64;
        }
        Ok(None)
    }
}

/// The first of the `positions` `FRAME_ALIGN`-spaced positions of `buf` where `magic` starts.
/// Blocks of 64 zero bytes (the rest of a log that never wrapped is all zeros) are passed over
/// with one vectorised test each instead of eight compares: the damage search reads the whole
/// region after the log's end on every open that replays (perf, W5-replay).
fn find_magic(buf: &[u8], positions: usize, magic: [u8; 4]) -> Option<usize> {
    const BLOCK: usize = 64;
    const PER_BLOCK: usize = BLOCK / FRAME_ALIGN;
    // Whole pages of zeros first: one wide OR-reduction per 4 KiB (about a tenth of the
    // instructions of 64 blocks; callgrind of a replay whose log fills an eighth of its region:
    // the search was 766 of 3,113 instructions per frame).
    const PAGE: usize = 4096;
    const PER_PAGE: usize = PAGE / FRAME_ALIGN;
    let mut k = 0;
    while k < positions {
        let at = k * FRAME_ALIGN;
        if k % PER_PAGE == 0 && k + PER_PAGE <= positions && at + PAGE <= buf.len() {
            let page = &buf[at..at + PAGE];
            if page.chunks_exact(8).fold(0u64, |acc, w| {
                acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
            }) == 0
            {
                k += PER_PAGE;
                continue;
            }
        }
        if k % PER_BLOCK == 0 && k + PER_BLOCK <= positions && at + BLOCK <= buf.len() {
            let block = &buf[at..at + BLOCK];
            if block.iter().fold(0u8, |acc, &b| acc | b) == 0 {
                k += PER_BLOCK;
                continue;
            }
        }
        if buf[at..at + 4] == magic {
            return Some(k);
        }
        k += 1;
    }
    None
}

/// Whether a whole frame that verifies starts at log-relative offset `at` (read on its own,
/// so that a search's read window is not disturbed): where a scan stopped, such a frame is
/// exactly what was written there (a stale frame, the log's clean end), and any other is torn
/// or damaged.
///
/// ```
/// use txheap_recovery::{format, frame_verifies_at, MemStorage};
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// assert!(frame_verifies_at(&s, &sb, 0).unwrap()); // a new log's sentinel frame
/// assert!(!frame_verifies_at(&s, &sb, 64).unwrap()); // zeros
/// ```
pub fn frame_verifies_at<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    at: u64,
) -> Result<bool, RecoveryError> {
    Ok(verified_header_at(storage, sb, at)?.is_some())
}

/// The header of the whole frame that verifies at log-relative offset `at`, if one does
/// ([`frame_verifies_at`]).
pub(crate) fn verified_header_at<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    at: u64,
) -> Result<Option<FrameHeader>, RecoveryError> {
    let abs = sb.log_offset() + at;
    let mut hb = [0u8; FRAME_HEADER_LEN];
    storage
        .read_at(abs, &mut hb)
        .map_err(io_err("read log frame", abs))?;
    let Some(h) = header_at(&hb) else {
        return Ok(None);
    };
    if h.frame_len() > sb.log_size - at {
        return Ok(None);
    }
    let mut frame = vec![0u8; h.frame_len() as usize];
    storage
        .read_at(abs, &mut frame)
        .map_err(io_err("read log frame", abs))?;
    Ok(verified_frame_at(&frame).map(|_| h))
}

/// The last transaction id of the chain of verifying frames of `first`'s generation that starts
/// at the log's start with `first` (txids following one another).
fn chain_end<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    first: &FrameHeader,
) -> Result<u64, RecoveryError> {
    let (mut at, mut last) = (first.frame_len(), first.txid);
    while at + FRAME_HEADER_LEN as u64 <= sb.log_size {
        match verified_header_at(storage, sb, at)? {
            Some(h) if h.generation == first.generation && Some(h.txid) == last.checked_add(1) => {
                last = h.txid;
                at += h.frame_len();
            }
            _ => break,
        }
    }
    Ok(last)
}

/// Scan the log and call `apply` for each range of each committed frame, in order. Never
/// writes by itself. A checksum-valid frame that is malformed or writes outside the heap is
/// `Corrupt`. Where the scan stops, [`find_damage`] decides between the log's end and a damaged
/// durable frame (`LogScan::damage`); the caller refuses the latter unless it salvages.
///
/// ```
/// use txheap_recovery::{format, scan_log, MemStorage, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset() + 100, b"hi").unwrap();
/// let f = b.finish(sb.generation, sb.next_txid).to_vec();
/// s.write_at(sb.log_offset(), &f).unwrap();
/// let mut seen = Vec::new();
/// let scan = scan_log(&s, &sb, &mut |off, bytes| { seen.push((off, bytes.to_vec())); Ok(()) }).unwrap();
/// assert_eq!(scan.frames, 1);
/// assert_eq!(seen, vec![(sb.heap_offset() + 100, b"hi".to_vec())]);
/// ```
pub fn scan_log<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    apply: &mut ApplyFn<'_>,
) -> Result<LogScan, RecoveryError> {
    scan_log_visiting(storage, sb, apply, &mut |_, _| {})
}

/// [`scan_log`], calling `visit(log-relative offset, header)` after the ranges of each committed
/// frame went to `apply` (for tools that list frames: `txheap dump-log`).
///
/// ```
/// use txheap_recovery::{format, scan_log_visiting, MemStorage, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let f = FrameBuilder::new().finish(sb.generation, sb.next_txid).to_vec();
/// s.write_at(sb.log_offset(), &f).unwrap();
/// let mut txids = Vec::new();
/// scan_log_visiting(&s, &sb, &mut |_, _| Ok(()), &mut |_, h| txids.push(h.txid)).unwrap();
/// assert_eq!(txids, vec![sb.next_txid]);
/// ```
pub fn scan_log_visiting<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    apply: &mut ApplyFn<'_>,
    visit: &mut dyn FnMut(u64, &FrameHeader),
) -> Result<LogScan, RecoveryError> {
    scan_log_in(storage, sb, None, (0, sb.next_txid, true), apply, visit)
}

/// [`scan_log_visiting`] from the frame at log-relative offset `at` with transaction id
/// `txid`, where an earlier scan of the same generation ended (its `end_offset` and
/// `next_txid`): for a reader that follows a log another process appends to, and reads each
/// frame once. Within a generation the log only grows at its end, so the frames before `at`
/// are the ones the earlier scan found. The scan ends at the first frame that does not
/// verify, without [`find_damage`]'s search of the rest of the log (the end of a log being
/// written is a frame half written, and the search reads the whole region): `damage` is
/// always `None`.
///
/// ```
/// use txheap_recovery::{format, scan_log, scan_log_from, MemStorage, Storage};
/// use txheap_recovery::txheap_log::FrameBuilder;
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let first = scan_log(&s, &sb, &mut |_, _| Ok(())).unwrap();
/// assert_eq!(first.frames, 0);
/// let mut b = FrameBuilder::new();
/// b.push_range(sb.heap_offset() + 8, b"new").unwrap();
/// let f = b.finish(sb.generation, first.next_txid).to_vec();
/// s.write_at(sb.log_offset() + first.end_offset, &f).unwrap();
/// let mut seen = Vec::new();
/// let more = scan_log_from(&s, &sb, (first.end_offset, first.next_txid), &mut |off, bytes| {
///     seen.push((off, bytes.to_vec()));
///     Ok(())
/// }, &mut |_, _| {}).unwrap();
/// assert_eq!((more.frames, more.next_txid), (1, first.next_txid + 1));
/// assert_eq!(seen, vec![(sb.heap_offset() + 8, b"new".to_vec())]);
/// ```
pub fn scan_log_from<S: Storage + ?Sized>(
    storage: &S,
    sb: &Superblock,
    (at, txid): (u64, u64),
    apply: &mut ApplyFn<'_>,
    visit: &mut dyn FnMut(u64, &FrameHeader),
) -> Result<LogScan, RecoveryError> {
    scan_log_in(
        storage,
        sb,
        None,
        (at.min(sb.log_size), txid, false),
        apply,
        visit,
    )
}

/// [`scan_log_visiting`], reading the log region through `log` (all of it: a view the storage
/// gave) when given, so that the bytes `apply` gets lie inside `log`.
///
/// Generic over `apply` and `visit` so that a caller's closure is compiled into the loop:
/// replay's collection of ranges, called through `dyn`, spent about 20 instructions per range
/// on the call alone (callgrind, W5-replay). Public callers pass `&mut dyn FnMut`, which is one
/// instance.
pub(crate) fn scan_log_in<S, A, V>(
    storage: &S,
    sb: &Superblock,
    log: Option<&[u8]>,
    (mut at, mut txid, search): (u64, u64, bool),
    apply: &mut A,
    visit: &mut V,
) -> Result<LogScan, RecoveryError>
where
    S: Storage + ?Sized,
    A: FnMut(u64, &[u8]) -> Result<(), RecoveryError> + ?Sized,
    V: FnMut(u64, &FrameHeader) + ?Sized,
{
    let mut frames = 0;
    let mut range_bytes = 0;
    let mut checked = 0;
    let mut chain_memo = ChainMemo::default();
    let mut window = if search {
        LogWindow::over(log)
    } else {
        LogWindow::reading(log, FOLLOW_WINDOW_LEN_MIN)
    };
    let stop = loop {
        let remaining = sb.log_size - at;
        let abs = sb.log_offset() + at;
        if remaining < FRAME_HEADER_LEN as u64 {
            break Stop {
                offset: at,
                reason: StopReason::RegionEnd,
            };
        }
        let mut hb = [0u8; FRAME_HEADER_LEN];
        hb.copy_from_slice(window.get(storage, sb, at, FRAME_HEADER_LEN as u64)?);
        if sabotaged(REPLAY_OLD_GENERATION)
            && hb[MAGIC_OFFSET..RANGE_COUNT_OFFSET] == txheap_log::FRAME_MAGIC.to_le_bytes()
        {
            txid = u64::from_le_bytes(hb[TXID_OFFSET..][..8].try_into().expect("8 bytes"));
        }
        let generation = if sabotaged(REPLAY_OLD_GENERATION) {
            u64::from_le_bytes(hb[GENERATION_OFFSET..][..8].try_into().expect("8 bytes"))
        } else {
            sb.generation
        };
        let h = match parse_header(&hb, generation, txid, remaining) {
            Ok(h) => h,
            Err(reason) => break Stop { offset: at, reason },
        };
        let payload = window.get(
            storage,
            sb,
            at + FRAME_HEADER_LEN as u64,
            u64::from(h.payload_len),
        )?;
        let mut h = h;
        if sabotaged(SKIP_CHECKSUM) {
            if let Err(StopReason::BadChecksum { computed, .. }) = verify_frame(&hb, &h, payload) {
                hb[CHECK_OFFSET..][..4].copy_from_slice(&computed.to_le_bytes());
                h.check = computed;
            }
        }
        let frame = match verify_frame(&hb, &h, payload) {
            Ok(f) => f,
            Err(reason) if reason.is_malformed() => {
                return Err(RecoveryError::Corrupt {
                    offset: abs,
                    what: format!(
                        "log frame {txid} has a valid checksum but is malformed: {reason:?}"
                    ),
                })
            }
            Err(reason) => break Stop { offset: at, reason },
        };
        let outside = |r: &txheap_log::Range<'_>| {
            let end = r.offset.checked_add(r.bytes.len() as u64);
            (r.offset < sb.heap_offset() || end.is_none_or(|e| e > sb.max_size)).then(|| {
                RecoveryError::Corrupt {
                    offset: abs,
                    what: format!(
                        "log frame {txid} writes {}+{} outside the heap [{}, {})",
                        r.offset,
                        r.bytes.len(),
                        sb.heap_offset(),
                        sb.max_size
                    ),
                }
            })
        };
        let check = frame.in_place_check();
        if check.is_some() {
            // Refused before the in-place check reads the heap (a frame without one has its
            // ranges checked as they are applied, below: one walk fewer per frame).
            if let Some(e) = frame.ranges().find_map(|r| outside(&r)) {
                return Err(e);
            }
        }
        if let Some(check) = check {
            let mut prev_end = sb.heap_offset();
            for (off, len) in check.pieces() {
                let end = off.checked_add(len);
                if off < prev_end {
                    return Err(RecoveryError::Corrupt {
                        offset: abs,
                        what: format!(
                            "log frame {txid} names in-place bytes at {off} that are not after \
                             the piece before them (a writer names them sorted and disjoint)"
                        ),
                    });
                }
                prev_end = end.unwrap_or(u64::MAX);
                if off < sb.heap_offset() || end.is_none_or(|e| e > sb.max_size) {
                    return Err(RecoveryError::Corrupt {
                        offset: abs,
                        what: format!(
                            "log frame {txid} names in-place bytes {off}+{len} outside the heap [{}, {})",
                            sb.heap_offset(),
                            sb.max_size
                        ),
                    });
                }
            }
            // The bytes had no barrier of their own (Durability::None): unless a later frame's
            // evidence says a barrier covered this frame (the writer then barriered the bytes
            // too, and later frames may since have changed them in the heap), the heap must hold
            // them exactly, or they did not all reach the disk and the frame is the log's torn
            // end (docs/ARCHITECTURE.md, recovery step 2).
            if !sabotaged(SKIP_IN_PLACE_CHECK) {
                let end = at + h.frame_len();
                if !chain_vouches(storage, sb, log, end, txid, &mut chain_memo)? {
                    if checked > 0 {
                        // Every in-place commit flushes first, and the flush vouches for the
                        // check before: a writer never leaves two unvouched. (Refused rather
                        // than hashed: a hostile log of such frames would cost a read of up
                        // to the file's length each.)
                        return Err(RecoveryError::Corrupt {
                            offset: abs,
                            what: format!(
                                "log frame {txid} has an in-place check, and so has an earlier \
                                 frame with no voucher between them"
                            ),
                        });
                    }
                    if !in_place_holds(storage, &check)? {
                        break Stop {
                            offset: at,
                            reason: StopReason::InPlaceMismatch { txid },
                        };
                    }
                    checked += 1;
                }
            }
        }
        for r in frame.ranges() {
            // Each range is checked before it is applied: `apply` writes only in bounds.
            if let Some(e) = outside(&r) {
                return Err(e);
            }
            apply(r.offset, r.bytes)?;
            range_bytes += r.bytes.len() as u64;
        }
        visit(at, &h);
        frames += 1;
        txid += 1;
        at += h.frame_len();
    };
    if checked > 0 && at + RECOVERY_VOUCHERS * FRAME_HEADER_LEN as u64 > sb.log_size {
        // A writable recovery writes vouchers after the last frame before its replay (the
        // writer always keeps room for them): a read-only open refuses such a log alike.
        return Err(RecoveryError::Corrupt {
            offset: sb.log_offset() + at,
            what: format!(
                "no room after the log's last frame for the {RECOVERY_VOUCHERS} voucher frames \
                 that recovery must write before it replays over in-place bytes"
            ),
        });
    }
    let damage = if search {
        find_damage_in(storage, sb, &stop, txid, log)?
    } else {
        None
    };
    Ok(LogScan {
        frames,
        range_bytes,
        end_offset: at,
        next_txid: txid,
        stop,
        damage,
        checked,
    })
}

#[cfg(test)]
mod tests {
    use super::{find_magic, FRAME_ALIGN};

    /// `find_magic` answers as the plain scan of every position, on buffers of zero blocks with
    /// a few magics (aligned and not) and stray bytes, at every start and position count.
    #[test]
    fn find_magic_matches_a_plain_scan() {
        let magic = *b"TXFR";
        let plain = |buf: &[u8], positions: usize| {
            (0..positions).find(|&k| buf[k * FRAME_ALIGN..][..4] == magic)
        };
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..300 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut buf = vec![
                0u8;
                if seed >> 62 == 0 {
                    3 * 4096 + 512
                } else {
                    1024
                }
            ];
            for _ in 0..(seed % 4) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % (buf.len() - 4);
                if seed & 1 == 0 {
                    buf[at..at + 4].copy_from_slice(&magic);
                } else {
                    buf[at] = (seed >> 8) as u8 | 1;
                }
            }
            for start in [0, 8, 56, 64, 200, 4096] {
                if start + 8 > buf.len() {
                    continue;
                }
                let b = &buf[start..];
                let max = (b.len() - 4) / FRAME_ALIGN + 1;
                for positions in [0, 1, 7, 8, 9, max / 2, max] {
                    assert_eq!(
                        find_magic(b, positions, magic),
                        plain(b, positions),
                        "start {start}, {positions} positions"
                    );
                }
            }
        }
    }
}
