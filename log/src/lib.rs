//! # txheap-log: the redo frame format
//!
//! Owns: encoding, verifying and scanning frames. Knows bytes and checksums only: no I/O, no
//! allocator, no superblock. `docs/FORMAT.md` draws the same layout.
//!
//! ## Frame
//! ```text
//! 0      4             8            16     24             32            36      40
//! | magic | range_count | generation | txid | durable_txid | payload_len | check | payload
//! ```
//! All integers little-endian. `magic` is `0x52465854` ("TXFR"). `payload_len` is a multiple of
//! 8. `durable_txid` is the writer's evidence: every frame of this generation with a txid up to
//! it was made durable by a completed barrier before this frame was written (0: no claim).
//! `check`, the low 32 bits of XXH3-64, covers header bytes 0..36 followed by the payload (not
//! CRC32: see `frame_check` for why). The payload is
//! `range_count` ranges back to back, each `offset: u64, len: u32, kind: u32`, then `len`
//! bytes, then zero padding to a multiple of 8. A range of kind 0 is a redo range: write the
//! bytes at `offset`. A frame may end with one range of kind 1, the *in-place check*
//! ([`InPlaceCheck`]): `offset` 0, and its bytes an XXH3-64 digest followed by the `(offset,
//! len)` pairs of the heap bytes the transaction wrote in place, outside the log, without a
//! barrier of their own. A range of kind 2 is padding: `offset` 0 and zero bytes, only as the
//! sole range of a frame (a voucher that makes the next frame start on a new page).
//! [`Frame::ranges`] yields redo ranges only.
//!
//! ## Replay rule
//! Frames sit back to back from the start of the log region. Starting with the superblock's
//! generation and `next_txid`, a frame is *committed* iff its magic matches, its generation
//! equals the current one, its txid equals the expected one (which then advances by one), its
//! whole length fits in the rest of the region, its check matches, and its ranges consume the
//! payload exactly with known kinds (at most one in-place check, last; padding only alone) and
//! zero padding. Replay applies committed frames in order and stops at the first frame that is
//! not committed; nothing after it is replayed. (A committed frame with an in-place check whose
//! bytes do not match it, and which no later frame vouches for, also ends the log: the recovery
//! crate decides that, since it reads the heap.)
//!
//! ## Damage rule
//! The first frame that is not committed is either the torn end of the log or a damaged durable
//! frame. It is *damaged* iff a later frame of the same generation verifies (its check matches)
//! with a txid above the expected one and a `durable_txid` at or above it: that frame's writer
//! had seen the expected frame made durable. [`find_voucher`] looks for one. A frame that
//! verifies but is not the expected one (an older generation, or another txid) is a clean end:
//! its check proves its header is what was written.
//!
//! ```
//! use txheap_log::{scan, FrameBuilder};
//! let mut b = FrameBuilder::new();
//! b.push_range(4096, b"hello").unwrap();
//! let mut region = vec![0u8; 1024];
//! let f = b.finish(7, 1).to_vec();
//! region[..f.len()].copy_from_slice(&f);
//! let frames: Vec<_> = scan(&region, 7, 1).collect();
//! assert_eq!(frames.len(), 1);
//! assert_eq!(frames[0].ranges().next().unwrap().bytes, b"hello");
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::fmt;

/// Frame magic: the bytes "TXFR" read little-endian.
pub const FRAME_MAGIC: u32 = 0x5246_5854;
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 40;
/// Bytes of a range header inside the payload.
pub const RANGE_HEADER_LEN: usize = 16;
/// Frames and ranges are padded to this alignment.
pub const FRAME_ALIGN: usize = 8;
/// The longest single range.
pub const RANGE_LEN_MAX: usize = u32::MAX as usize;
/// The longest payload (its length is a u32).
pub const PAYLOAD_LEN_MAX: usize = (u32::MAX as usize) & !(FRAME_ALIGN - 1);
/// The generation of the log's *sentinel*, the empty frame a checkpoint (and a new file) leaves
/// at the log's start: no superblock has it, so a scan stops there, at a frame that verifies.
///
/// ```
/// let sentinel = txheap_log::FrameBuilder::new().finish(txheap_log::SENTINEL_GENERATION, 1).to_vec();
/// assert!(txheap_log::scan(&sentinel, txheap_log::SENTINEL_GENERATION, 1).next().is_some());
/// assert!(txheap_log::scan(&sentinel, 1, 1).next().is_none());
/// ```
pub const SENTINEL_GENERATION: u64 = 0;

// Frame header layout: each field starts where the previous one ends.
/// Where the header's `magic` (u32) starts.
pub const MAGIC_OFFSET: usize = 0;
/// Where the header's `range_count` (u32) starts.
pub const RANGE_COUNT_OFFSET: usize = MAGIC_OFFSET + 4;
/// Where the header's `generation` (u64) starts.
pub const GENERATION_OFFSET: usize = RANGE_COUNT_OFFSET + 4;
/// Where the header's `txid` (u64) starts.
pub const TXID_OFFSET: usize = GENERATION_OFFSET + 8;
/// Where the header's `durable_txid` (u64: the highest txid a completed barrier covered when
/// this frame was written; 0 claims nothing) starts.
pub const DURABLE_TXID_OFFSET: usize = TXID_OFFSET + 8;
/// Where the header's `payload_len` (u32) starts.
pub const PAYLOAD_LEN_OFFSET: usize = DURABLE_TXID_OFFSET + 8;
/// Where the header's `check` (u32) starts; the check covers the header bytes before it.
pub const CHECK_OFFSET: usize = PAYLOAD_LEN_OFFSET + 4;
const _: () = assert!(CHECK_OFFSET + 4 == FRAME_HEADER_LEN);

// Range header layout, relative to the range header's start.
/// Where a range header's `offset` (u64: the file offset it writes) starts.
pub const RANGE_OFFSET_OFFSET: usize = 0;
/// Where a range header's `len` (u32) starts.
pub const RANGE_LEN_OFFSET: usize = RANGE_OFFSET_OFFSET + 8;
/// Where a range header's `kind` (u32: [`RANGE_KIND_REDO`], [`RANGE_KIND_IN_PLACE_CHECK`] or
/// [`RANGE_KIND_PADDING`]) starts.
pub const RANGE_KIND_OFFSET: usize = RANGE_LEN_OFFSET + 4;
const _: () = assert!(RANGE_KIND_OFFSET + 4 == RANGE_HEADER_LEN);
/// A redo range: write its bytes at its offset.
pub const RANGE_KIND_REDO: u32 = 0;
/// The in-place check ([`InPlaceCheck`]): at most one per frame, its last range.
pub const RANGE_KIND_IN_PLACE_CHECK: u32 = 1;
/// Padding ([`FrameBuilder::push_padding`]): zero bytes that replay skips, only as the sole
/// range of a frame (a voucher placed so that the next frame starts on a new page).
pub const RANGE_KIND_PADDING: u32 = 2;
/// The vouchers of a flush ([`voucher_padding`]) lie in different pages of this size, so that
/// one lost sector (512 bytes, or 4 KiB on drives with 4 KiB sectors) cannot take both.
pub const VOUCHER_SPREAD: u64 = 4096;
/// The most log bytes two vouchers take from any 8-aligned tail offset: the first padded up to
/// the next page ([`voucher_padding`]: at most `VOUCHER_SPREAD - 8` bytes of padding) and the
/// second.
pub const VOUCHERS_LEN_MAX: u64 = (FRAME_HEADER_LEN + RANGE_HEADER_LEN) as u64 + VOUCHER_SPREAD
    - FRAME_ALIGN as u64
    + FRAME_HEADER_LEN as u64;

/// Padding bytes for a voucher frame that starts at file offset `at` (8-aligned), so that the
/// frame after it starts on a [`VOUCHER_SPREAD`] boundary: `None` when a plain empty frame
/// already ends on one. The first of two vouchers is padded so; the second is a plain empty
/// frame in the next page.
///
/// ```
/// use txheap_log::{voucher_padding, FrameBuilder};
/// assert_eq!(voucher_padding(4096 - 40), None);
/// let at = 8192 + 1000;
/// let pad = voucher_padding(at).unwrap();
/// let mut b = FrameBuilder::new();
/// b.push_padding(pad).unwrap();
/// let len = b.finish(1, 1).len() as u64;
/// assert_eq!((at + len) % 4096, 0);
/// ```
pub fn voucher_padding(at: u64) -> Option<usize> {
    let end = at + FRAME_HEADER_LEN as u64;
    if end % VOUCHER_SPREAD == 0 {
        return None;
    }
    let padded = (end + RANGE_HEADER_LEN as u64).div_ceil(VOUCHER_SPREAD) * VOUCHER_SPREAD;
    Some((padded - end) as usize - RANGE_HEADER_LEN)
}

/// Bytes of an in-place check's digest, before its `(offset, len)` pairs of 8 bytes each.
pub const IN_PLACE_DIGEST_LEN: usize = 8;
/// Bytes of one `(offset, len)` pair of an in-place check.
pub const IN_PLACE_PIECE_LEN: usize = 16;

fn pad(n: usize) -> usize {
    n.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// The header of a range of `len` bytes (at most [`RANGE_LEN_MAX`]) that writes at `offset`.
fn range_header(offset: u64, len: usize) -> [u8; RANGE_HEADER_LEN] {
    let mut h = [0u8; RANGE_HEADER_LEN];
    h[RANGE_OFFSET_OFFSET..RANGE_LEN_OFFSET].copy_from_slice(&offset.to_le_bytes());
    h[RANGE_LEN_OFFSET..RANGE_KIND_OFFSET].copy_from_slice(&(len as u32).to_le_bytes());
    // (`kind` stays zero: a redo range.)
    h
}

/// The digest an in-place check carries: XXH3-64 (seed 0) of the pieces' bytes, in the order
/// given, as one stream. Feed it with [`InPlaceDigest::update`] piece by piece.
///
/// ```
/// let mut d = txheap_log::InPlaceDigest::new();
/// d.update(b"ab");
/// d.update(b"c");
/// let mut e = txheap_log::InPlaceDigest::new();
/// e.update(b"abc");
/// assert_eq!(d.digest(), e.digest());
/// ```
pub struct InPlaceDigest(xxhash_rust::xxh3::Xxh3);

impl Default for InPlaceDigest {
    fn default() -> Self {
        InPlaceDigest(xxhash_rust::xxh3::Xxh3::new())
    }
}

impl InPlaceDigest {
    /// An empty digest.
    ///
    /// ```
    /// let _ = txheap_log::InPlaceDigest::new().digest();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Add the next bytes.
    ///
    /// ```
    /// txheap_log::InPlaceDigest::new().update(b"x");
    /// ```
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added.
    ///
    /// ```
    /// assert_ne!(txheap_log::InPlaceDigest::new().digest(), {
    ///     let mut d = txheap_log::InPlaceDigest::new();
    ///     d.update(&[0]);
    ///     d.digest()
    /// });
    /// ```
    pub fn digest(&self) -> u64 {
        self.0.digest()
    }
}

impl fmt::Debug for InPlaceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InPlaceDigest({:#x})", self.digest())
    }
}

/// Why a range could not be added to a frame.
///
/// ```
/// use txheap_log::{FrameBuilder, FrameError};
/// assert!(matches!(FrameBuilder::new().push_range(0, &[]), Ok(())));
/// let e = FrameError::RangeTooLong { len: 5, max: 4 };
/// assert!(e.to_string().contains("5"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A range longer than [`RANGE_LEN_MAX`].
    RangeTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More ranges than a u32 counts.
    TooManyRanges {
        /// The limit.
        max: u32,
    },
    /// The payload would exceed [`PAYLOAD_LEN_MAX`].
    PayloadTooLong {
        /// The payload length it would have.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::RangeTooLong { len, max } => {
                write!(f, "range of {len} bytes exceeds the {max}-byte limit")
            }
            FrameError::TooManyRanges { max } => write!(f, "a frame holds at most {max} ranges"),
            FrameError::PayloadTooLong { len, max } => {
                write!(f, "payload of {len} bytes exceeds the {max}-byte limit")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Builds one frame in a reusable buffer.
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// b.push_range(100, &[1, 2, 3]).unwrap();
/// assert_eq!(b.range_count(), 1);
/// assert_eq!(b.encoded_len(), 40 + 16 + 8);
/// let frame = b.finish(1, 1);
/// assert_eq!(frame.len(), 64);
/// ```
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        FrameBuilder {
            buf: vec![0; FRAME_HEADER_LEN],
            count: 0,
        }
    }
}

impl FrameBuilder {
    /// An empty builder.
    ///
    /// ```
    /// assert!(txheap_log::FrameBuilder::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget all ranges, keeping the buffer's capacity.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_range(0, b"x").unwrap();
    /// b.clear();
    /// assert!(b.is_empty());
    /// ```
    pub fn clear(&mut self) {
        self.buf.truncate(FRAME_HEADER_LEN);
        self.buf[..].fill(0);
        self.count = 0;
    }

    /// Append a range that writes `bytes` at `offset`.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_range(8192, b"abc").unwrap();
    /// ```
    pub fn push_range(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FrameError> {
        // (Not `push_range_zeroed` and a copy: appending the bytes once, without zeroing them
        // first, is most of a small commit's frame building.)
        let len = bytes.len();
        self.room_for(len)?;
        self.buf.reserve(RANGE_HEADER_LEN + pad(len));
        self.buf.extend_from_slice(&range_header(offset, len));
        self.buf.extend_from_slice(bytes);
        self.buf.resize(self.buf.len() + pad(len) - len, 0);
        self.count += 1;
        Ok(())
    }

    /// Whether a range of `len` bytes may be added.
    fn room_for(&self, len: usize) -> Result<(), FrameError> {
        if len > RANGE_LEN_MAX {
            return Err(FrameError::RangeTooLong {
                len,
                max: RANGE_LEN_MAX,
            });
        }
        if self.count == u32::MAX {
            return Err(FrameError::TooManyRanges { max: u32::MAX });
        }
        let payload = self.buf.len() - FRAME_HEADER_LEN;
        let new_payload = payload + RANGE_HEADER_LEN + pad(len);
        if new_payload > PAYLOAD_LEN_MAX {
            return Err(FrameError::PayloadTooLong {
                len: new_payload,
                max: PAYLOAD_LEN_MAX,
            });
        }
        Ok(())
    }

    /// Append a range of `len` zero bytes at `offset` and return it to fill in place.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_range_zeroed(0, 4).unwrap().copy_from_slice(&[9; 4]);
    /// ```
    pub fn push_range_zeroed(&mut self, offset: u64, len: usize) -> Result<&mut [u8], FrameError> {
        self.room_for(len)?;
        self.buf.extend_from_slice(&range_header(offset, len));
        let start = self.buf.len();
        self.buf.resize(start + pad(len), 0);
        self.count += 1;
        Ok(&mut self.buf[start..start + len])
    }

    /// Bytes an in-place check over `pieces` pieces adds to a frame.
    ///
    /// ```
    /// assert_eq!(txheap_log::FrameBuilder::in_place_check_len(2), 16 + 8 + 32);
    /// ```
    pub fn in_place_check_len(pieces: usize) -> usize {
        RANGE_HEADER_LEN + IN_PLACE_DIGEST_LEN + pieces * IN_PLACE_PIECE_LEN
    }

    /// Make this a padding frame: one range of `len` zero bytes (a multiple of 8) that replay
    /// skips. Only on an empty builder, and nothing may follow (a frame holding padding holds
    /// nothing else).
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_padding(64).unwrap();
    /// let f = b.finish(1, 1).to_vec();
    /// assert_eq!(f.len(), 40 + 16 + 64);
    /// let frame = txheap_log::scan(&f, 1, 1).next().unwrap();
    /// assert_eq!(frame.ranges().count(), 0);
    /// ```
    pub fn push_padding(&mut self, len: usize) -> Result<(), FrameError> {
        assert!(
            self.count == 0 && len % FRAME_ALIGN == 0,
            "padding is the only range of a frame, a multiple of {FRAME_ALIGN} bytes"
        );
        self.room_for(len)?;
        let mut h = range_header(0, len);
        h[RANGE_KIND_OFFSET..].copy_from_slice(&RANGE_KIND_PADDING.to_le_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.resize(self.buf.len() + len, 0);
        self.count += 1;
        Ok(())
    }

    /// End the frame's ranges with its in-place check: `digest` ([`InPlaceDigest`] of the
    /// pieces' bytes, in order) and the `(file offset, len)` of each piece. Call it last, at
    /// most once.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_range(4096, b"meta").unwrap();
    /// b.push_in_place_check(7, &[(8192, 64)]).unwrap();
    /// let f = b.finish(1, 1).to_vec();
    /// let frame = txheap_log::scan(&f, 1, 1).next().unwrap();
    /// assert_eq!(frame.ranges().count(), 1); // redo ranges only
    /// let c = frame.in_place_check().unwrap();
    /// assert_eq!((c.digest, c.pieces().collect::<Vec<_>>()), (7, vec![(8192, 64)]));
    /// ```
    pub fn push_in_place_check(
        &mut self,
        digest: u64,
        pieces: &[(u64, u64)],
    ) -> Result<(), FrameError> {
        let len = IN_PLACE_DIGEST_LEN + pieces.len() * IN_PLACE_PIECE_LEN;
        self.room_for(len)?;
        let mut h = range_header(0, len);
        h[RANGE_KIND_OFFSET..].copy_from_slice(&RANGE_KIND_IN_PLACE_CHECK.to_le_bytes());
        self.buf.reserve(RANGE_HEADER_LEN + len);
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(&digest.to_le_bytes());
        for &(off, n) in pieces {
            self.buf.extend_from_slice(&off.to_le_bytes());
            self.buf.extend_from_slice(&n.to_le_bytes());
        }
        self.count += 1;
        Ok(())
    }

    /// Ranges so far.
    ///
    /// ```
    /// assert_eq!(txheap_log::FrameBuilder::new().range_count(), 0);
    /// ```
    pub fn range_count(&self) -> u32 {
        self.count
    }

    /// Whether no range was added.
    ///
    /// ```
    /// assert!(txheap_log::FrameBuilder::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the finished frame occupies (header plus padded payload).
    ///
    /// ```
    /// assert_eq!(txheap_log::FrameBuilder::new().encoded_len(), 40);
    /// ```
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Write the header (with the check) and return the whole frame, claiming nothing about
    /// durability (`durable_txid` 0); see [`FrameBuilder::finish_vouching`].
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// let f = b.finish(3, 9);
    /// assert_eq!(&f[0..4], b"TXFR");
    /// ```
    pub fn finish(&mut self, generation: u64, txid: u64) -> &[u8] {
        self.finish_vouching(generation, txid, 0)
    }

    /// Write the header with the evidence `durable_txid` (every frame of this generation up to
    /// that txid is durable: a barrier covering it completed before this frame is written) and
    /// return the whole frame. A claim that is not below `txid` is written as given and never
    /// counts as evidence ([`find_voucher`] ignores it).
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// let f = b.finish_vouching(3, 9, 8).to_vec();
    /// let h = txheap_log::parse_header(f[..40].try_into().unwrap(), 3, 9, 40).unwrap();
    /// assert_eq!(h.durable_txid, 8);
    /// ```
    pub fn finish_vouching(&mut self, generation: u64, txid: u64, durable_txid: u64) -> &[u8] {
        let payload_len = (self.buf.len() - FRAME_HEADER_LEN) as u32;
        debug_assert_eq!(payload_len as usize % FRAME_ALIGN, 0);
        let h = &mut self.buf[..FRAME_HEADER_LEN];
        h[MAGIC_OFFSET..RANGE_COUNT_OFFSET].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[RANGE_COUNT_OFFSET..GENERATION_OFFSET].copy_from_slice(&self.count.to_le_bytes());
        h[GENERATION_OFFSET..TXID_OFFSET].copy_from_slice(&generation.to_le_bytes());
        h[TXID_OFFSET..DURABLE_TXID_OFFSET].copy_from_slice(&txid.to_le_bytes());
        h[DURABLE_TXID_OFFSET..PAYLOAD_LEN_OFFSET].copy_from_slice(&durable_txid.to_le_bytes());
        h[PAYLOAD_LEN_OFFSET..CHECK_OFFSET].copy_from_slice(&payload_len.to_le_bytes());
        // The checked bytes are the header before the check, then the payload: moving the
        // header up against the payload makes them one slice for a one-shot hash (the streaming
        // hasher cost about 900 instructions per small frame, the one-shot about a fifth).
        self.buf
            .copy_within(..CHECK_OFFSET, FRAME_HEADER_LEN - CHECK_OFFSET);
        let check = xxhash_rust::xxh3::xxh3_64(&self.buf[FRAME_HEADER_LEN - CHECK_OFFSET..]) as u32;
        self.buf
            .copy_within(FRAME_HEADER_LEN - CHECK_OFFSET..FRAME_HEADER_LEN, 0);
        self.buf[CHECK_OFFSET..FRAME_HEADER_LEN].copy_from_slice(&check.to_le_bytes());
        &self.buf
    }
}

/// The frame check: the low 32 bits of XXH3-64 over header bytes `0..CHECK_OFFSET` (0..36) and
/// the payload.
///
/// Not CRC32: CRC is linear, and a record followed by its own CRC32 leaves a fixed residue, so an
/// outer CRC32 cannot tell one valid CRC32-protected record from another at the same place. A
/// torn frame whose stale sector held an older, valid chunk header (they carry CRC32s) passed a
/// CRC32 frame check in the power-loss simulator. User data that embeds CRC32s would do the same.
fn frame_check(header_before_check: &[u8], payload: &[u8]) -> u32 {
    // A small frame is copied into one buffer and hashed in one shot, which costs a fraction of
    // the streaming hasher's set-up and buffering; both give the same value (XXH3 of the
    // concatenation), which `one_shot_check_equals_streaming_check` tests.
    // (Two sizes of buffer: zeroing a 1 KiB one for every small frame was a tenth of a
    // replay's frame check.)
    fn one_shot<const N: usize>(header: &[u8], payload: &[u8]) -> u32 {
        let mut buf = [0u8; N];
        let n = CHECK_OFFSET + payload.len();
        buf[..CHECK_OFFSET].copy_from_slice(header);
        buf[CHECK_OFFSET..n].copy_from_slice(payload);
        xxhash_rust::xxh3::xxh3_64(&buf[..n]) as u32
    }
    const SMALL: usize = 256;
    const MEDIUM: usize = 1024;
    if payload.len() <= SMALL {
        return one_shot::<{ CHECK_OFFSET + SMALL }>(header_before_check, payload);
    }
    if payload.len() <= MEDIUM {
        return one_shot::<{ CHECK_OFFSET + MEDIUM }>(header_before_check, payload);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(header_before_check);
    h.update(payload);
    h.digest() as u32
}

/// A parsed frame header.
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// let f = b.finish(1, 5).to_vec();
/// let h = txheap_log::parse_header(f[..40].try_into().unwrap(), 1, 5, 40).unwrap();
/// assert_eq!((h.txid, h.frame_len()), (5, 40));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Number of ranges.
    pub range_count: u32,
    /// Log generation.
    pub generation: u64,
    /// Transaction id.
    pub txid: u64,
    /// The writer's evidence: frames of this generation up to this txid were durable when this
    /// one was written (0: no claim).
    pub durable_txid: u64,
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// Stored check (see [`verify_frame`]).
    pub check: u32,
}

impl FrameHeader {
    /// Whether this is a frame of `generation` written after the one `expected_txid` names.
    ///
    /// ```
    /// let h = txheap_log::FrameHeader { range_count: 0, generation: 1, txid: 5, durable_txid: 4, payload_len: 0, check: 0 };
    /// assert!(h.follows(1, 3) && !h.follows(2, 3) && !h.follows(1, 5));
    /// ```
    pub fn follows(&self, generation: u64, expected_txid: u64) -> bool {
        self.generation == generation && self.txid > expected_txid
    }

    /// Whether this frame (if it verifies) proves the frame `expected_txid` of `generation`
    /// durable: it follows it and its evidence reaches it (the damage rule).
    ///
    /// ```
    /// let h = txheap_log::FrameHeader { range_count: 0, generation: 1, txid: 5, durable_txid: 4, payload_len: 0, check: 0 };
    /// assert!(h.vouches_for(1, 4) && h.vouches_for(1, 2) && !h.vouches_for(1, 5));
    /// ```
    pub fn vouches_for(&self, generation: u64, expected_txid: u64) -> bool {
        self.follows(generation, expected_txid)
            && self.durable_txid >= expected_txid
            && self.durable_txid < self.txid
    }

    /// Header plus payload bytes.
    ///
    /// ```
    /// let h = txheap_log::FrameHeader { range_count: 0, generation: 1, txid: 1, durable_txid: 0, payload_len: 8, check: 0 };
    /// assert_eq!(h.frame_len(), 48);
    /// ```
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + self.payload_len as u64
    }
}

/// Why a scan stopped: the end of the committed log.
///
/// ```
/// use txheap_log::StopReason;
/// assert!(StopReason::Malformed { what: "x" }.is_malformed());
/// assert!(!StopReason::RegionEnd.is_malformed());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Fewer than a header's bytes remain.
    RegionEnd,
    /// No frame magic.
    BadMagic {
        /// What was there.
        found: u32,
    },
    /// A frame of another generation (stale).
    OtherGeneration {
        /// Its generation.
        found: u64,
    },
    /// Not the next transaction id.
    TxidMismatch {
        /// Expected.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// Payload length not a multiple of 8.
    BadLength {
        /// The length.
        payload_len: u32,
    },
    /// The frame runs past the region's end (torn).
    Truncated {
        /// Bytes it needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Checksum mismatch (torn or damaged): the frame check (XXH3), not a CRC.
    BadChecksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// The frame verifies, but the heap does not hold the bytes its in-place check names, and no
    /// later frame vouches that a barrier covered them: they did not all reach the disk before
    /// the crash, so the transaction is the log's torn end (decided by the recovery crate,
    /// which reads the heap).
    InPlaceMismatch {
        /// The frame's transaction id.
        txid: u64,
    },
    /// The check matched but the ranges are broken: not a torn write but a hostile or buggy frame.
    Malformed {
        /// What is wrong.
        what: &'static str,
    },
}

impl StopReason {
    /// Whether this is [`StopReason::Malformed`].
    ///
    /// ```
    /// assert!(!txheap_log::StopReason::BadMagic { found: 0 }.is_malformed());
    /// ```
    pub fn is_malformed(&self) -> bool {
        matches!(self, StopReason::Malformed { .. })
    }
}

/// Where and why a scan stopped.
///
/// ```
/// let s = txheap_log::Stop { offset: 64, reason: txheap_log::StopReason::RegionEnd };
/// assert!(s.to_string().contains("64"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Offset from the region's start.
    pub offset: u64,
    /// Why.
    pub reason: StopReason,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "log ends at offset {}: {:?}", self.offset, self.reason)
    }
}

// One bounds check and one load each: indexing the four bytes one by one checked each of them
// (callgrind of a replay: that line was 254 instructions per frame, an eighth of the scan).
#[inline]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}
#[inline]
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// Check a header's magic, generation, txid, length and fit (`remaining`: bytes of the region
/// from this frame's start). The check is verified by [`verify_frame`].
///
/// ```
/// let h = [0u8; 40];
/// assert!(matches!(txheap_log::parse_header(&h, 1, 1, 40), Err(txheap_log::StopReason::BadMagic { found: 0 })));
/// ```
pub fn parse_header(
    bytes: &[u8; FRAME_HEADER_LEN],
    generation: u64,
    expected_txid: u64,
    remaining: u64,
) -> Result<FrameHeader, StopReason> {
    let magic = u32_at(bytes, MAGIC_OFFSET);
    if magic != FRAME_MAGIC {
        return Err(StopReason::BadMagic { found: magic });
    }
    let h = decode_header(bytes);
    if h.generation != generation {
        return Err(StopReason::OtherGeneration {
            found: h.generation,
        });
    }
    if h.txid != expected_txid {
        return Err(StopReason::TxidMismatch {
            expected: expected_txid,
            found: h.txid,
        });
    }
    if h.payload_len as usize % FRAME_ALIGN != 0 {
        return Err(StopReason::BadLength {
            payload_len: h.payload_len,
        });
    }
    if h.frame_len() > remaining {
        return Err(StopReason::Truncated {
            needed: h.frame_len(),
            available: remaining,
        });
    }
    Ok(h)
}

fn decode_header(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
    FrameHeader {
        range_count: u32_at(bytes, RANGE_COUNT_OFFSET),
        generation: u64_at(bytes, GENERATION_OFFSET),
        txid: u64_at(bytes, TXID_OFFSET),
        durable_txid: u64_at(bytes, DURABLE_TXID_OFFSET),
        payload_len: u32_at(bytes, PAYLOAD_LEN_OFFSET),
        check: u32_at(bytes, CHECK_OFFSET),
    }
}

/// The frame at the start of `bytes` if it is a whole frame whose check matches, whatever its
/// generation and txid (`None` otherwise): what was written there, as written.
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// b.push_range(8, b"q").unwrap();
/// let f = b.finish(4, 2).to_vec();
/// assert_eq!(txheap_log::verified_frame_at(&f).map(|h| (h.generation, h.txid)), Some((4, 2)));
/// let mut bad = f.clone();
/// bad[45] ^= 1;
/// assert!(txheap_log::verified_frame_at(&bad).is_none());
/// ```
pub fn verified_frame_at(bytes: &[u8]) -> Option<FrameHeader> {
    let h = header_at(bytes)?;
    let payload = bytes.get(FRAME_HEADER_LEN..usize::try_from(h.frame_len()).ok()?)?;
    (frame_check(&bytes[..CHECK_OFFSET], payload) == h.check).then_some(h)
}

/// The header at the start of `bytes` if it has the magic and an aligned payload length,
/// without checking anything else (a cheap filter before reading a whole frame).
///
/// ```
/// let f = txheap_log::FrameBuilder::new().finish(2, 7).to_vec();
/// assert_eq!(txheap_log::header_at(&f).map(|h| h.txid), Some(7));
/// assert!(txheap_log::header_at(&[0u8; 40]).is_none());
/// ```
pub fn header_at(bytes: &[u8]) -> Option<FrameHeader> {
    let hb: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    if u32_at(hb, MAGIC_OFFSET) != FRAME_MAGIC {
        return None;
    }
    let h = decode_header(hb);
    (h.payload_len as usize % FRAME_ALIGN == 0).then_some(h)
}

/// A later frame that proves an earlier one durable (see the crate's damage rule).
///
/// ```
/// let v = txheap_log::Voucher { offset: 96, txid: 4, durable_txid: 3 };
/// assert!(v.durable_txid < v.txid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voucher {
    /// Where it starts, relative to the region `find_voucher` was given (plus its `base`).
    pub offset: u64,
    /// Its txid.
    pub txid: u64,
    /// Its evidence: frames up to this txid were durable when it was written.
    pub durable_txid: u64,
}

/// What lies after the first frame that is not committed (`expected_txid` of `generation`):
/// the first frame that vouches for it, if any, and the highest txid of any verifying frame of
/// the generation above it. `region` is the log from that frame's start to the region's end,
/// and `base` its offset in the log; frames start at multiples of 8, so every such position is
/// tried (the damaged frame's own length cannot be trusted). The frame at `region[0]` is
/// skipped.
///
/// ```
/// use txheap_log::{find_voucher, FrameBuilder};
/// let mut region = vec![0u8; 256];
/// let mut b = FrameBuilder::new();
/// b.push_range(8, b"a").unwrap();
/// let f1 = b.finish_vouching(1, 1, 0).to_vec();
/// region[..f1.len()].copy_from_slice(&f1);
/// let f2 = b.finish_vouching(1, 2, 1).to_vec();
/// region[f1.len()..f1.len() + f2.len()].copy_from_slice(&f2);
/// region[45] ^= 1; // damage frame 1
/// let (v, last) = find_voucher(&region, 0, 1, 1);
/// assert_eq!((v.unwrap().txid, last), (2, Some(2)));
/// ```
pub fn find_voucher(
    region: &[u8],
    base: u64,
    generation: u64,
    expected_txid: u64,
) -> (Option<Voucher>, Option<u64>) {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut voucher = None;
    let mut last = None;
    let mut at = FRAME_ALIGN;
    while at + FRAME_HEADER_LEN <= region.len() {
        if region[at..at + 4] == magic {
            if let Some(h) = verified_frame_at(&region[at..]) {
                if h.follows(generation, expected_txid) {
                    last = Some(last.map_or(h.txid, |l: u64| l.max(h.txid)));
                    if voucher.is_none() && h.vouches_for(generation, expected_txid) {
                        voucher = Some(Voucher {
                            offset: base + at as u64,
                            txid: h.txid,
                            durable_txid: h.durable_txid,
                        });
                    }
                }
            }
        }
        at += FRAME_ALIGN;
    }
    (voucher, last)
}

/// Verify the check, then that the ranges consume the payload exactly.
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// b.push_range(1, b"z").unwrap();
/// let f = b.finish(1, 1).to_vec();
/// let hb: &[u8; 40] = f[..40].try_into().unwrap();
/// let h = txheap_log::parse_header(hb, 1, 1, f.len() as u64).unwrap();
/// let frame = txheap_log::verify_frame(hb, &h, &f[40..]).unwrap();
/// assert_eq!(frame.ranges().count(), 1);
/// ```
pub fn verify_frame<'a>(
    header_bytes: &[u8; FRAME_HEADER_LEN],
    header: &FrameHeader,
    payload: &'a [u8],
) -> Result<Frame<'a>, StopReason> {
    if payload.len() as u64 != header.payload_len as u64 {
        return Err(StopReason::Truncated {
            needed: header.payload_len as u64,
            available: payload.len() as u64,
        });
    }
    let computed = frame_check(&header_bytes[..CHECK_OFFSET], payload);
    if computed != header.check {
        return Err(StopReason::BadChecksum {
            stored: header.check,
            computed,
        });
    }
    let mut at = 0usize;
    let mut check_at = None;
    // Ranges that are not redo ranges: the in-place check (the last) or padding (the only one).
    let mut not_redo = 0;
    for i in 0..header.range_count {
        if payload.len() - at < RANGE_HEADER_LEN {
            return Err(StopReason::Malformed {
                what: "range header runs past the payload",
            });
        }
        let len = u32_at(payload, at + RANGE_LEN_OFFSET) as usize;
        match u32_at(payload, at + RANGE_KIND_OFFSET) {
            RANGE_KIND_REDO => {}
            RANGE_KIND_IN_PLACE_CHECK => {
                if i + 1 != header.range_count {
                    return Err(StopReason::Malformed {
                        what: "an in-place check that is not the frame's last range",
                    });
                }
                if u64_at(payload, at + RANGE_OFFSET_OFFSET) != 0
                    || len < IN_PLACE_DIGEST_LEN
                    || (len - IN_PLACE_DIGEST_LEN) % IN_PLACE_PIECE_LEN != 0
                {
                    return Err(StopReason::Malformed {
                        what: "an in-place check of the wrong shape",
                    });
                }
                check_at = Some(at);
                not_redo = 1;
            }
            RANGE_KIND_PADDING => {
                if header.range_count != 1
                    || u64_at(payload, at + RANGE_OFFSET_OFFSET) != 0
                    || payload.len() - at - RANGE_HEADER_LEN < len
                    || payload[at + RANGE_HEADER_LEN..at + RANGE_HEADER_LEN + len]
                        .iter()
                        .any(|&b| b != 0)
                {
                    return Err(StopReason::Malformed {
                        what: "padding that is not a frame's only range of zero bytes",
                    });
                }
                not_redo = 1;
            }
            _ => {
                return Err(StopReason::Malformed {
                    what: "a range of unknown kind",
                })
            }
        }
        at += RANGE_HEADER_LEN;
        if payload.len() - at < pad(len) {
            return Err(StopReason::Malformed {
                what: "range bytes run past the payload",
            });
        }
        if payload[at + len..at + pad(len)].iter().any(|&b| b != 0) {
            return Err(StopReason::Malformed {
                what: "range padding is not zero",
            });
        }
        at += pad(len);
    }
    if at != payload.len() {
        return Err(StopReason::Malformed {
            what: "ranges do not fill the payload",
        });
    }
    Ok(Frame {
        header: *header,
        payload,
        check_at,
        redo_ranges: header.range_count - not_redo,
    })
}

/// A committed frame.
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// b.push_range(9, b"ab").unwrap();
/// let f = b.finish(2, 3).to_vec();
/// let frame = txheap_log::scan(&f, 2, 3).next().unwrap();
/// assert_eq!(frame.header.txid, 3);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Its header.
    pub header: FrameHeader,
    payload: &'a [u8],
    /// Where its in-place check's range header starts in the payload, if it has one.
    check_at: Option<usize>,
    /// Its redo ranges: the first this many (the ranges after them are not redo ranges).
    redo_ranges: u32,
}

impl<'a> Frame<'a> {
    /// Its ranges, in order.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_range(9, b"ab").unwrap();
    /// let f = b.finish(1, 1).to_vec();
    /// let r = txheap_log::scan(&f, 1, 1).next().unwrap().ranges().next().unwrap();
    /// assert_eq!((r.offset, r.bytes), (9, &b"ab"[..]));
    /// ```
    #[inline]
    pub fn ranges(&self) -> Ranges<'a> {
        Ranges {
            payload: self.payload,
            at: 0,
            left: self.redo_ranges,
        }
    }

    /// The frame's in-place check, if it has one (its last range).
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// let f = b.finish(1, 1).to_vec();
    /// assert!(txheap_log::scan(&f, 1, 1).next().unwrap().in_place_check().is_none());
    /// ```
    pub fn in_place_check(&self) -> Option<InPlaceCheck<'a>> {
        let at = self.check_at?;
        let len = u32_at(self.payload, at + RANGE_LEN_OFFSET) as usize;
        let start = at + RANGE_HEADER_LEN;
        Some(InPlaceCheck {
            digest: u64_at(self.payload, start),
            pieces: &self.payload[start + IN_PLACE_DIGEST_LEN..start + len],
        })
    }

    /// The raw payload.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// let f = b.finish(1, 1).to_vec();
    /// assert!(txheap_log::scan(&f, 1, 1).next().unwrap().payload().is_empty());
    /// ```
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// A frame's in-place check: the heap bytes its transaction wrote in place (outside the log,
/// with no barrier of their own), as `(file offset, len)` pieces, and the [`InPlaceDigest`] of
/// those bytes as written. Recovery replays the frame only if the heap holds them (or a later
/// frame vouches that a barrier covered them).
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// b.push_in_place_check(5, &[(100, 8), (200, 16)]).unwrap();
/// let f = b.finish(1, 1).to_vec();
/// let c = txheap_log::scan(&f, 1, 1).next().unwrap().in_place_check().unwrap();
/// assert_eq!(c.pieces().map(|(_, n)| n).sum::<u64>(), 24);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlaceCheck<'a> {
    /// XXH3-64 of the pieces' bytes, in order.
    pub digest: u64,
    pieces: &'a [u8],
}

impl InPlaceCheck<'_> {
    /// The `(file offset, len)` pieces, in the order the digest covers them.
    ///
    /// ```
    /// let mut b = txheap_log::FrameBuilder::new();
    /// b.push_in_place_check(5, &[]).unwrap();
    /// let f = b.finish(1, 1).to_vec();
    /// assert_eq!(txheap_log::scan(&f, 1, 1).next().unwrap().in_place_check().unwrap().pieces().count(), 0);
    /// ```
    pub fn pieces(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pieces
            .chunks_exact(IN_PLACE_PIECE_LEN)
            .map(|p| (u64_at(p, 0), u64_at(p, 8)))
    }
}

/// One redo range: write `bytes` at file `offset`.
///
/// ```
/// let r = txheap_log::Range { offset: 1, bytes: b"x" };
/// assert_eq!(r.bytes.len(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range<'a> {
    /// File offset.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Iterator over a verified frame's ranges.
///
/// ```
/// let mut b = txheap_log::FrameBuilder::new();
/// b.push_range(1, b"a").unwrap();
/// b.push_range(2, b"b").unwrap();
/// let f = b.finish(1, 1).to_vec();
/// assert_eq!(txheap_log::scan(&f, 1, 1).next().unwrap().ranges().count(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Ranges<'a> {
    payload: &'a [u8],
    at: usize,
    left: u32,
}

impl<'a> Iterator for Ranges<'a> {
    type Item = Range<'a>;
    // Inlined into the caller's loop (the replay's scan, in another crate): a call per range
    // was a tenth of a replay's instructions (callgrind, W5-replay).
    #[inline]
    fn next(&mut self) -> Option<Range<'a>> {
        if self.left == 0 {
            // (The in-place check, the last range, and padding, the only one, are not redo
            // ranges: `left` started at the count of the others.)
            return None;
        }
        debug_assert!(
            self.payload.len() - self.at >= RANGE_HEADER_LEN,
            "verified frame"
        );
        let offset = u64_at(self.payload, self.at + RANGE_OFFSET_OFFSET);
        let len = u32_at(self.payload, self.at + RANGE_LEN_OFFSET) as usize;
        let start = self.at + RANGE_HEADER_LEN;
        self.at = start + pad(len);
        self.left -= 1;
        Some(Range {
            offset,
            bytes: &self.payload[start..start + len],
        })
    }
}

/// Scan an in-memory log region from its start.
///
/// ```
/// let region = vec![0u8; 4096];
/// let mut s = txheap_log::scan(&region, 1, 1);
/// assert!(s.next().is_none());
/// assert_eq!(s.end_offset(), 0);
/// ```
pub fn scan(region: &[u8], generation: u64, first_txid: u64) -> Scan<'_> {
    Scan {
        region,
        generation,
        next_txid: first_txid,
        at: 0,
        stop: None,
    }
}

/// Iterator over the committed frames of a region; see [`scan`].
///
/// ```
/// let mut s = txheap_log::scan(&[], 1, 1);
/// assert!(s.next().is_none());
/// assert_eq!(s.stop().unwrap().reason, txheap_log::StopReason::RegionEnd);
/// ```
#[derive(Debug)]
pub struct Scan<'a> {
    region: &'a [u8],
    generation: u64,
    next_txid: u64,
    at: usize,
    stop: Option<Stop>,
}

impl<'a> Scan<'a> {
    /// Why the scan ended (after it ended).
    ///
    /// ```
    /// let s = txheap_log::scan(&[], 1, 1);
    /// assert!(s.stop().is_none()); // not iterated yet
    /// ```
    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Offset just past the last committed frame returned.
    ///
    /// ```
    /// assert_eq!(txheap_log::scan(&[], 1, 1).end_offset(), 0);
    /// ```
    pub fn end_offset(&self) -> u64 {
        self.at as u64
    }

    /// The transaction id the next frame would need.
    ///
    /// ```
    /// assert_eq!(txheap_log::scan(&[], 1, 4).next_txid(), 4);
    /// ```
    pub fn next_txid(&self) -> u64 {
        self.next_txid
    }
}

impl<'a> Iterator for Scan<'a> {
    type Item = Frame<'a>;
    fn next(&mut self) -> Option<Frame<'a>> {
        if self.stop.is_some() {
            return None;
        }
        let rest = &self.region[self.at..];
        let result = (|| {
            let hb: &[u8; FRAME_HEADER_LEN] = rest
                .get(..FRAME_HEADER_LEN)
                .and_then(|b| b.try_into().ok())
                .ok_or(StopReason::RegionEnd)?;
            let h = parse_header(hb, self.generation, self.next_txid, rest.len() as u64)?;
            let payload = &rest[FRAME_HEADER_LEN..h.frame_len() as usize];
            verify_frame(hb, &h, payload)
        })();
        match result {
            Ok(frame) => {
                self.at += frame.header.frame_len() as usize;
                self.next_txid += 1;
                Some(frame)
            }
            Err(reason) => {
                self.stop = Some(Stop {
                    offset: self.at as u64,
                    reason,
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(
        frames: &[Vec<(u64, Vec<u8>)>],
        generation: u64,
        first: u64,
        region_len: usize,
    ) -> (Vec<u8>, Vec<usize>) {
        let mut region = vec![0u8; region_len];
        let mut ends = Vec::new();
        let mut at = 0;
        let mut b = FrameBuilder::new();
        for (i, ranges) in frames.iter().enumerate() {
            b.clear();
            for (off, bytes) in ranges {
                b.push_range(*off, bytes).unwrap();
            }
            let f = b.finish(generation, first + i as u64);
            region[at..at + f.len()].copy_from_slice(f);
            at += f.len();
            ends.push(at);
        }
        (region, ends)
    }

    fn frames_strategy() -> impl Strategy<Value = Vec<Vec<(u64, Vec<u8>)>>> {
        prop::collection::vec(
            prop::collection::vec(
                (any::<u64>(), prop::collection::vec(any::<u8>(), 0..40)),
                0..4,
            ),
            1..6,
        )
    }

    fn collect(region: &[u8], g: u64, t: u64) -> Vec<Vec<(u64, Vec<u8>)>> {
        scan(region, g, t)
            .map(|f| f.ranges().map(|r| (r.offset, r.bytes.to_vec())).collect())
            .collect()
    }

    #[test]
    fn each_stop_reason() {
        let (region, ends) = build(&[vec![(1, b"abc".to_vec())], vec![(2, vec![])]], 5, 10, 200);
        let mut s = scan(&region, 5, 10);
        assert_eq!(s.by_ref().count(), 2);
        assert_eq!(s.stop().unwrap().reason, StopReason::BadMagic { found: 0 });
        assert_eq!(s.end_offset(), ends[1] as u64);
        let mut s = scan(&region, 6, 10);
        assert_eq!(s.by_ref().count(), 0);
        assert_eq!(
            s.stop().unwrap().reason,
            StopReason::OtherGeneration { found: 5 }
        );
        let mut s = scan(&region, 5, 11);
        s.by_ref().count();
        assert_eq!(
            s.stop().unwrap().reason,
            StopReason::TxidMismatch {
                expected: 11,
                found: 10
            }
        );
        let mut s = scan(&region[..ends[0] - 1], 5, 10);
        s.by_ref().count();
        assert!(matches!(
            s.stop().unwrap().reason,
            StopReason::Truncated { .. }
        ));
        let mut s = scan(&region[..20], 5, 10);
        s.by_ref().count();
        assert_eq!(s.stop().unwrap().reason, StopReason::RegionEnd);
        let mut bad = region.clone();
        bad[40] ^= 1;
        let mut s = scan(&bad, 5, 10);
        s.by_ref().count();
        assert!(matches!(
            s.stop().unwrap().reason,
            StopReason::BadChecksum { .. }
        ));
        let mut odd = region.clone();
        odd[PAYLOAD_LEN_OFFSET] = 3;
        let mut s = scan(&odd, 5, 10);
        s.by_ref().count();
        assert_eq!(
            s.stop().unwrap().reason,
            StopReason::BadLength {
                payload_len: 3 + (odd[PAYLOAD_LEN_OFFSET + 1] as u32) * 256
            }
        );
    }

    /// Recompute the check of the frame at the region's start that ends at `end`.
    fn reseal(region: &mut [u8], end: usize) {
        let check = frame_check(&region[..CHECK_OFFSET], &region[FRAME_HEADER_LEN..end]);
        region[CHECK_OFFSET..FRAME_HEADER_LEN].copy_from_slice(&check.to_le_bytes());
    }

    /// Padding is accepted only as a frame's sole range of zero bytes at offset 0, and replay
    /// sees no range in it; `voucher_padding` puts the next frame on a page boundary from
    /// every 8-aligned start.
    #[test]
    fn padding_is_a_sole_range_of_zeros() {
        let mut b = FrameBuilder::new();
        b.push_padding(24).unwrap();
        let good = b.finish(1, 1).to_vec();
        let f = scan(&good, 1, 1).next().expect("a padding frame verifies");
        assert_eq!(f.ranges().count(), 0);
        assert!(f.in_place_check().is_none());
        // A nonzero byte, a nonzero offset, a second range: malformed (each resealed).
        for edit in 0..3 {
            let mut region = good.clone();
            match edit {
                0 => region[FRAME_HEADER_LEN + RANGE_HEADER_LEN + 5] = 1,
                1 => region[FRAME_HEADER_LEN + RANGE_OFFSET_OFFSET] = 8,
                _ => region[RANGE_COUNT_OFFSET] = 2,
            }
            let end = region.len();
            reseal(&mut region, end);
            let mut s = scan(&region, 1, 1);
            assert_eq!(s.by_ref().count(), 0, "edit {edit}");
            assert!(s.stop().unwrap().reason.is_malformed(), "edit {edit}");
        }
        let mut longest = 0;
        for at in (8192..8192 + 2 * VOUCHER_SPREAD).step_by(8) {
            let len = match voucher_padding(at) {
                None => FRAME_HEADER_LEN as u64,
                Some(pad) => {
                    let mut b = FrameBuilder::new();
                    b.push_padding(pad).unwrap();
                    b.finish(1, 1).len() as u64
                }
            };
            assert_eq!((at + len) % VOUCHER_SPREAD, 0, "at {at}");
            assert!(len + FRAME_HEADER_LEN as u64 <= VOUCHERS_LEN_MAX, "at {at}");
            longest = longest.max(len + FRAME_HEADER_LEN as u64);
        }
        assert_eq!(longest, VOUCHERS_LEN_MAX, "the bound is reached");
    }

    #[test]
    fn malformed_when_check_matches_a_broken_structure() {
        let (mut region, ends) = build(&[vec![(1, b"abc".to_vec())]], 1, 1, 128);
        region[FRAME_HEADER_LEN + RANGE_KIND_OFFSET] = 3; // no such kind
        reseal(&mut region, ends[0]);
        let mut s = scan(&region, 1, 1);
        assert_eq!(s.by_ref().count(), 0);
        assert!(s.stop().unwrap().reason.is_malformed());
        // A range length that runs past the payload.
        let (mut region, ends) = build(&[vec![(1, b"abc".to_vec())]], 1, 1, 128);
        region[FRAME_HEADER_LEN + RANGE_LEN_OFFSET] = 200;
        reseal(&mut region, ends[0]);
        let mut s = scan(&region, 1, 1);
        s.by_ref().count();
        assert!(s.stop().unwrap().reason.is_malformed());
        // A range's padding (after its 3 bytes, up to 8) not zero. (A mutation that stopped
        // checking it went through every other test: hand mutation testing.)
        let (mut region, ends) = build(&[vec![(1, b"abc".to_vec())]], 1, 1, 128);
        region[FRAME_HEADER_LEN + RANGE_HEADER_LEN + 3] = 1;
        reseal(&mut region, ends[0]);
        let mut s = scan(&region, 1, 1);
        assert_eq!(s.by_ref().count(), 0);
        assert_eq!(
            s.stop().unwrap().reason,
            StopReason::Malformed {
                what: "range padding is not zero"
            }
        );
    }

    /// An in-place check is read back as written, is not a redo range, and is refused as
    /// malformed anywhere but last, at a non-zero offset, or with a length that is not a digest
    /// and whole pairs.
    #[test]
    fn in_place_check_round_trip_and_shape() {
        let mut b = FrameBuilder::new();
        b.push_range(4096, b"meta").unwrap();
        b.push_in_place_check(0xfeed, &[(8192, 64), (1 << 20, 4096)])
            .unwrap();
        assert_eq!(
            b.encoded_len(),
            FRAME_HEADER_LEN + RANGE_HEADER_LEN + 8 + FrameBuilder::in_place_check_len(2)
        );
        let f = b.finish(1, 1).to_vec();
        let frame = scan(&f, 1, 1).next().expect("a committed frame");
        assert_eq!(frame.ranges().count(), 1);
        let c = frame.in_place_check().expect("its check");
        assert_eq!(c.digest, 0xfeed);
        assert_eq!(
            c.pieces().collect::<Vec<_>>(),
            vec![(8192, 64), (1 << 20, 4096)]
        );
        // A frame without one.
        let (region, _) = build(&[vec![(1, b"abc".to_vec())]], 1, 1, 128);
        assert!(scan(&region, 1, 1)
            .next()
            .unwrap()
            .in_place_check()
            .is_none());
        // Not last: a check, then a redo range.
        let mut b = FrameBuilder::new();
        b.push_in_place_check(1, &[(8192, 64)]).unwrap();
        b.push_range(4096, b"meta").unwrap();
        let f = b.finish(1, 1).to_vec();
        let mut s = scan(&f, 1, 1);
        assert_eq!(s.by_ref().count(), 0);
        assert!(s.stop().unwrap().reason.is_malformed());
        // A non-zero offset, and a length of a digest and half a pair.
        for (at, byte) in [(RANGE_OFFSET_OFFSET, 1u8), (RANGE_LEN_OFFSET, 16)] {
            let mut b = FrameBuilder::new();
            b.push_in_place_check(1, &[(8192, 64)]).unwrap();
            let mut f = b.finish(1, 1).to_vec();
            f[FRAME_HEADER_LEN + at] = byte;
            let end = f.len();
            reseal(&mut f, end);
            let mut s = scan(&f, 1, 1);
            assert_eq!(s.by_ref().count(), 0, "field at {at} = {byte}");
            assert!(s.stop().unwrap().reason.is_malformed());
        }
    }

    /// The check as the format defines it: XXH3-64 of the header's first 36 bytes, then the
    /// payload, by the streaming hasher.
    fn reference_check(frame: &[u8]) -> u32 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&frame[..CHECK_OFFSET]);
        h.update(&frame[FRAME_HEADER_LEN..]);
        h.digest() as u32
    }

    proptest! {
        /// Both ways of computing the check (the builder's in-place one-shot, the reader's
        /// copied one-shot for small frames and streaming for large ones) give the format's value.
        #[test]
        fn one_shot_check_equals_streaming_check(
            ranges in prop::collection::vec((any::<u64>(), prop::collection::vec(any::<u8>(), 0..700)), 0..5),
            g in any::<u64>(), t in any::<u64>(), d in any::<u64>(),
        ) {
            let mut b = FrameBuilder::new();
            for (off, bytes) in &ranges {
                b.push_range(*off, bytes).unwrap();
            }
            let frame = b.finish_vouching(g, t, d).to_vec();
            let want = reference_check(&frame);
            prop_assert_eq!(u32_at(&frame, CHECK_OFFSET), want);
            prop_assert_eq!(frame_check(&frame[..CHECK_OFFSET], &frame[FRAME_HEADER_LEN..]), want);
            prop_assert_eq!(verified_frame_at(&frame).map(|h| h.txid), Some(t));
        }

        #[test]
        fn round_trip(frames in frames_strategy(), g in any::<u64>(), t in 0u64..1 << 60) {
            let (region, _) = build(&frames, g, t, 8192);
            prop_assert_eq!(collect(&region, g, t), frames);
        }

        #[test]
        fn any_truncation_is_a_prefix(frames in frames_strategy(), cut in any::<prop::sample::Index>()) {
            let (region, ends) = build(&frames, 1, 1, 8192);
            let cut = cut.index(ends.last().unwrap() + 1);
            let got = collect(&region[..cut], 1, 1);
            let fit = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&got[..], &frames[..fit]);
        }

        #[test]
        fn any_byte_flip_in_frame_k_keeps_exactly_frames_before_k(
            frames in frames_strategy(), pos in any::<prop::sample::Index>(), x in 1u8..=255,
        ) {
            let (mut region, ends) = build(&frames, 1, 1, 8192);
            let p = pos.index(*ends.last().unwrap());
            region[p] ^= x;
            let k = ends.iter().position(|&e| p < e).unwrap();
            prop_assert_eq!(&collect(&region, 1, 1)[..], &frames[..k]);
        }

        #[test]
        fn stale_or_garbage_tail_never_extends(frames in frames_strategy(), junk in prop::collection::vec(any::<u8>(), 0..300)) {
            let (mut region, ends) = build(&frames, 2, 1, 8192);
            let end = *ends.last().unwrap();
            region[end..end + junk.len()].copy_from_slice(&junk);
            // A stale frame of generation 1 with the right next txid after the tail.
            let (stale, _) = build(&[vec![(5, vec![1, 2, 3])]], 1, frames.len() as u64 + 1, 64);
            let mut r2 = region.clone();
            r2[end..end + 64].copy_from_slice(&stale);
            prop_assert_eq!(&collect(&region, 2, 1)[..], &frames[..]);
            prop_assert_eq!(&collect(&r2, 2, 1)[..], &frames[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), g in 0u64..3, t in 0u64..3) {
            let _ = scan(&bytes, g, t).count();
        }
    }
}
