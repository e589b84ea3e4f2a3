//! Recovery's error type.
//!
//! Owns: `RecoveryError`, its messages, and `io_err`, which names the failed storage call and
//! its offset. May not: decide what is an error (the modules that detect a problem build the
//! variant); every variant carries the offsets and sizes that make it checkable.

use std::fmt;
use std::io;

/// What can go wrong in recovery.
///
/// ```
/// let e = txheap_recovery::RecoveryError::Truncated { len: 5, needed: 9 };
/// assert!(e.to_string().contains("9"));
/// ```
#[derive(Debug)]
pub enum RecoveryError {
    /// A storage call failed.
    Io {
        /// The operation.
        op: &'static str,
        /// The offset.
        offset: u64,
        /// The error.
        source: io::Error,
    },
    /// No superblock magic in either slot.
    NotATxheap {
        /// What was found.
        detail: String,
    },
    /// The file is shorter than its superblock requires.
    Truncated {
        /// File length.
        len: u64,
        /// Required length.
        needed: u64,
    },
    /// Damaged metadata or a hostile frame.
    Corrupt {
        /// Where.
        offset: u64,
        /// What.
        what: String,
    },
    /// A log frame is damaged although a later frame proves it was durable: replaying the
    /// frames before it would silently drop acknowledged transactions. Nothing was written.
    LogDamaged {
        /// File offset of the damaged frame.
        offset: u64,
        /// The transaction id it should carry.
        txid: u64,
        /// File offset of the later frame that vouches for it, or of the log-start witness (in a
        /// superblock slot, before the log) when that is the proof.
        voucher_offset: u64,
        /// That frame's transaction id.
        voucher_txid: u64,
        /// The highest transaction id of any intact later frame (what a salvage drops up to).
        last_txid: u64,
    },
    /// Another format version than this crate's.
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Bad arguments to [`format()`](crate::format()).
    InvalidGeometry {
        /// What is wrong.
        what: String,
    },
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Io { op, offset, source } => {
                write!(f, "{op} at offset {offset} failed: {source}")
            }
            RecoveryError::NotATxheap { detail } => write!(f, "not a txheap file: {detail}"),
            RecoveryError::Truncated { len, needed } => {
                write!(
                    f,
                    "file is truncated: {len} bytes, its superblock requires at least {needed}"
                )
            }
            RecoveryError::Corrupt { offset, what } => {
                write!(f, "corrupt file at offset {offset}: {what}")
            }
            RecoveryError::LogDamaged {
                offset,
                txid,
                voucher_offset,
                voucher_txid,
                last_txid,
            } => write!(
                f,
                "log frame of transaction {txid} at offset {offset} is damaged, but {} proves it \
                 was durable: opening would drop acknowledged transactions {txid}..={last_txid}; \
                 nothing was changed (a salvage opens the transactions before {txid} and drops \
                 those)",
                proof_name(*voucher_offset, *voucher_txid)
            ),
            RecoveryError::UnsupportedVersion { found, supported } if found < supported => write!(
                f,
                "format version {found} is older than the supported {supported} \
                 (this pre-1.0 library does not upgrade files)"
            ),
            RecoveryError::UnsupportedVersion { found, supported } => {
                write!(
                    f,
                    "format version {found} is newer than the supported {supported}"
                )
            }
            RecoveryError::InvalidGeometry { what } => write!(f, "invalid geometry: {what}"),
        }
    }
}

impl std::error::Error for RecoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoveryError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(crate) fn io_err(op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> RecoveryError {
    move |source| RecoveryError::Io { op, offset, source }
}

/// What proves a damaged frame durable, for messages: the later frame at `voucher_offset`
/// (transaction `voucher_txid`); when that offset lies before the log, the log-start witness
/// there, or, at a superblock slot's start, the log's first frame (transaction
/// `voucher_txid`) of a newer generation than the superblock in force, which that slot named.
///
/// ```
/// use txheap_recovery::proof_name;
/// assert_eq!(proof_name(9000, 4), "the frame of transaction 4 at offset 9000");
/// assert!(proof_name(7680, 1).starts_with("the log-start witness at offset 7680"));
/// assert!(proof_name(4096, 3).contains("superblock slot at offset 4096"));
/// ```
pub fn proof_name(voucher_offset: u64, voucher_txid: u64) -> String {
    if voucher_offset >= crate::LOG_OFFSET {
        format!("the frame of transaction {voucher_txid} at offset {voucher_offset}")
    } else if voucher_offset % crate::SUPERBLOCK_SLOT_LEN == 0 {
        format!(
            "the log's first frame (transaction {voucher_txid}), of a newer generation than the \
             superblock in force, which the damaged superblock slot at offset {voucher_offset} \
             named,"
        )
    } else {
        format!("the log-start witness at offset {voucher_offset} (beside the superblocks)")
    }
}
