//! The one error type of the public API.
//!
//! Owns: the `Error` enum and its conversions. Every variant names the offsets, sizes or limits
//! that make the problem checkable, so a message is enough to act on.

use std::fmt;
use std::io;
use std::path::PathBuf;

use txheap_recovery::RecoveryError;

/// Everything that can go wrong in txheap.
///
/// ```
/// use txheap::{Error, Heap, Options};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("e.heap");
/// std::fs::write(&path, b"not a heap").unwrap();
/// match Heap::open(&path, Options::new()) {
///     Err(Error::NotATxheap { .. }) => {}
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed; `op` names it and `offset` the file offset involved.
    Io {
        /// The operation that failed (for example `"pwrite log frame"`).
        op: &'static str,
        /// The file offset the operation was at.
        offset: u64,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another handle (in this or another process) holds the file's lock.
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A copy of a live heap's metadata ([`crate::inspect::check`], [`crate::inspect::stats`],
    /// [`crate::inspect::read_log`], beside the writer that holds it) found the file changed
    /// under each of its attempts: the writer checkpoints faster than the copy can be read.
    /// Nothing is wrong with the file; try again, or when the writer is idle.
    Busy {
        /// The file.
        path: PathBuf,
        /// The attempts made.
        attempts: u32,
    },
    /// There is no file at the path ([`crate::Heap::open`], [`crate::Heap::open_read_only`]);
    /// [`crate::Heap::create`] or [`crate::Heap::open_or_create`] make one.
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The file exists already (returned by [`crate::Heap::create`]).
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a txheap file (no superblock magic); it was not modified.
    NotATxheap {
        /// What was found instead.
        detail: String,
    },
    /// The file is shorter than its superblock says it must be; it was not modified.
    Truncated {
        /// The file's length.
        len: u64,
        /// The length the superblock requires.
        needed: u64,
    },
    /// The file's metadata is damaged at `offset`.
    Corrupt {
        /// Where the damage is.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A log frame is damaged although a later frame proves it was durable: opening would drop
    /// acknowledged transactions `txid..=last_txid` without a word. Nothing was changed.
    /// [`crate::Options::salvage`] (or `txheap recover --salvage`) opens the transactions
    /// before `txid` and drops those, knowingly.
    LogDamaged {
        /// File offset of the damaged frame.
        offset: u64,
        /// The transaction it should hold.
        txid: u64,
        /// File offset of the later frame that proves it was durable, or of the log-start
        /// witness (in a superblock slot, before the log) when that is the proof.
        voucher_offset: u64,
        /// That frame's transaction id.
        voucher_txid: u64,
        /// The highest transaction id of any intact later frame.
        last_txid: u64,
    },
    /// The file was written by another format version than this library reads.
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// The newest version this library reads.
        supported: u32,
    },
    /// The process could not reserve `max_size` bytes of address space for the heap's mapping
    /// (the address space, or the number of mappings, is used up: for example `max_size` near or
    /// above the platform's user address space, 128 TiB on x86-64 with 4-level paging, or
    /// thousands of heaps open at once; a writable handle reserves it twice, for its readers'
    /// mapping; on Linux the private mapping also counts against the data size limit,
    /// `RLIMIT_DATA`, which the source error then names). Nothing was created or changed;
    /// choose a smaller `max_size` or close other heaps.
    AddressSpace {
        /// The heap's `max_size`: the bytes of address space asked for.
        max_size: u64,
        /// The operating system's error.
        source: io::Error,
    },
    /// An option is out of its range.
    InvalidOptions {
        /// Which option and why.
        what: String,
    },
    /// The heap cannot grow to hold the allocation within its `max_size` (which a reopen with a
    /// larger [`Options::max_size`](crate::Options::max_size) raises).
    OutOfSpace {
        /// Bytes requested.
        requested: u64,
        /// The heap's maximum file size.
        max_size: u64,
    },
    /// One allocation larger than the largest object the heap holds
    /// ([`OBJECT_SIZE_MAX`](crate::OBJECT_SIZE_MAX): a zone of chunks less its table).
    ObjectTooLarge {
        /// Bytes requested.
        requested: u64,
        /// The largest object, in bytes.
        max: u64,
    },
    /// The transaction's redo frame does not fit in the log region.
    TransactionTooLarge {
        /// Bytes the frame needs.
        bytes: u64,
        /// Bytes of the log region.
        log_size: u64,
    },
    /// A pointer or range lies outside the heap's allocated area.
    OutOfBounds {
        /// The pointer's offset.
        offset: u64,
        /// Bytes accessed.
        len: u64,
        /// End of the valid area at this moment.
        heap_end: u64,
    },
    /// Elements `start..start + count` were asked of a slice of `slice_len` elements
    /// ([`crate::Tx::write_slice`]).
    SliceRange {
        /// The first element index asked for.
        start: u64,
        /// How many elements.
        count: u64,
        /// The slice's length in elements.
        slice_len: u64,
    },
    /// A pointer is not aligned for the type read through it.
    Misaligned {
        /// The pointer's offset.
        offset: u64,
        /// The alignment required.
        align: u64,
    },
    /// A write through a pointer that does not lie inside a live allocation (it would hit
    /// allocator metadata, free space, or the root area past the root).
    NotAllocated {
        /// The pointer's offset.
        offset: u64,
        /// Bytes accessed.
        len: u64,
    },
    /// A null pointer was dereferenced or freed.
    NullPointer,
    /// A type's alignment is larger than the heap supports.
    UnsupportedAlignment {
        /// The alignment asked for.
        align: u64,
        /// The largest supported.
        max: u64,
    },
    /// `free`, `free_slice` or `realloc_slice` was given a pointer that is not the start of a
    /// live allocation (or past the heap's chunks), or a slice longer than its allocation.
    InvalidFree {
        /// The pointer's offset.
        offset: u64,
        /// Why it was refused (double free, interior pointer, ...).
        why: &'static str,
    },
    /// `root::<T>()` was called with a type other than the one the root was created with.
    RootTypeMismatch {
        /// Size and fingerprint stored in the file.
        stored_size: u64,
        /// Fingerprint stored in the file.
        stored_fingerprint: u64,
        /// Size of the type asked for.
        requested_size: u64,
        /// Fingerprint of the type asked for.
        requested_fingerprint: u64,
        /// The stored root's layout, as the file describes it.
        stored_layout: String,
        /// The layout of the type asked for ([`crate::describe`]).
        requested_layout: String,
    },
    /// The root type is larger than the root area.
    RootTooLarge {
        /// Size of the type.
        size: u64,
        /// Size of the root area.
        max: u64,
    },
    /// A reader asked for the root before any transaction created it.
    NoRoot,
    /// A barrier or write failed earlier; the heap accepts no more commits or reads.
    /// Reopen the file to recover the committed state.
    Poisoned {
        /// What failed first.
        cause: String,
    },
    /// A write was attempted through a read-only handle.
    ReadOnly,
    /// `transaction`, `flush`, `checkpoint`, `stats` or `close` was called while this thread
    /// already runs a transaction, or a `read` closure, on this heap (it would deadlock).
    NestedTransaction,
    /// `Heap::read` was called inside a transaction on the same heap, where it would show the
    /// committed state instead of the transaction's own writes: read through the `Tx`.
    ReadInTransaction,
    /// A collection holds elements of another stored type than the one asked for.
    TypeMismatch {
        /// The collection's offset.
        offset: u64,
        /// What it holds (`"key"`, `"value"` or `"element"`).
        role: &'static str,
        /// The stored [`crate::Stored::ID`] of the elements it holds.
        stored_id: u64,
        /// Their layout, as the heap's type catalogue describes it (recorded when the
        /// collection was made; a collection older than the catalogue has none).
        stored: String,
        /// The type asked for ([`crate::describe`]), with its identity.
        requested: String,
    },
    /// An allocator operation (an allocation, a free, growth) of this transaction failed after
    /// it had changed part of the allocator's state (for example a new run's entries staged,
    /// then its bitmap refused as `TransactionTooLarge`). The transaction's closure went on and
    /// returned `Ok`, but it cannot commit that half-done state: it was rolled back, and nothing
    /// of it was committed. `cause` is the first such error.
    AllocatorInterrupted {
        /// The error the allocator operation returned.
        cause: String,
    },
    /// A collection's operation failed part-way in this transaction (for example a
    /// `PBTreeMap::insert` that split a node, then had the parent's write refused as
    /// `TransactionTooLarge`). The transaction's closure went on and returned `Ok`, but it
    /// cannot commit a half-done collection: it was rolled back, and nothing of it was
    /// committed. Run the operation inside `Tx::nested` to undo only it and go on.
    CollectionInterrupted {
        /// The operation, as `"PBTreeMap::insert"`.
        operation: &'static str,
        /// The error it returned.
        cause: String,
    },
    /// An index past the end of a collection.
    IndexOutOfRange {
        /// The index given.
        index: u64,
        /// The collection's length.
        len: u64,
    },
}

/// Shorthand for `Result<T, txheap::Error>`.
///
/// ```
/// fn f() -> txheap::Result<u32> { Ok(1) }
/// assert_eq!(f().unwrap(), 1);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, offset: u64, source: io::Error) -> Error {
        Error::Io { op, offset, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, offset, source } => write!(f, "{op} at offset {offset} failed: {source}"),
            Error::Locked { path } => write!(
                f,
                "{} is locked by another open handle (in this or another process; a read-only \
                 one, such as a txheap command reading the file, also keeps a writer out)",
                path.display()
            ),
            Error::Busy { path, attempts } => write!(
                f,
                "{} changed under each of {attempts} attempts to copy its metadata beside the \
                 writer that holds it (the writer checkpoints faster than a copy can be read); \
                 nothing is known to be wrong with it: try again, or when the writer is idle",
                path.display()
            ),
            Error::NotFound { path } => write!(
                f,
                "{} does not exist (Heap::create or Heap::open_or_create makes a new heap)",
                path.display()
            ),
            Error::AlreadyExists { path } => write!(f, "{} already exists", path.display()),
            Error::NotATxheap { detail } => write!(f, "not a txheap file: {detail}"),
            Error::Truncated { len, needed } => write!(
                f,
                "file is truncated: {len} bytes, but its superblock requires at least {needed}"
            ),
            Error::Corrupt { offset, what } => write!(f, "corrupt file at offset {offset}: {what}"),
            Error::LogDamaged {
                offset,
                txid,
                voucher_offset,
                voucher_txid,
                last_txid,
            } => write!(
                f,
                "log frame of transaction {txid} at offset {offset} is damaged, but {} proves it \
                 was durable: opening would drop acknowledged transactions {txid}..={last_txid}. Nothing was \
                 changed; Options::salvage(true) (txheap recover --salvage) opens the \
                 transactions before {txid} and drops those",
                txheap_recovery::proof_name(*voucher_offset, *voucher_txid)
            ),
            Error::UnsupportedVersion { found, supported } if found < supported => write!(
                f,
                "file format version {found} is older than the supported version {supported} \
                 (this pre-1.0 library does not upgrade files)"
            ),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "file format version {found} is newer than the supported version {supported}"
            ),
            Error::AddressSpace { max_size, source } => write!(
                f,
                "cannot reserve {max_size} bytes of address space for the heap's max_size ({source}); \
                 choose a smaller max_size or close other heaps"
            ),
            Error::InvalidOptions { what } => write!(f, "invalid options: {what}"),
            Error::OutOfSpace { requested, max_size } => write!(
                f,
                "out of space: {requested} bytes requested, heap file may not exceed max_size \
                 {max_size} (raise it: Heap::set_max_size while open, or reopen with a larger \
                 Options::max_size)"
            ),
            Error::ObjectTooLarge { requested, max } => write!(
                f,
                "object too large: {requested} bytes requested, the largest object is {max} bytes \
                 (split it, for example into a slice of slices)"
            ),
            Error::TransactionTooLarge { bytes, log_size } => write!(
                f,
                "transaction needs a {bytes}-byte redo frame; the log region holds {log_size} bytes \
                 (Options::log_size at create)"
            ),
            Error::OutOfBounds { offset, len, heap_end } => write!(
                f,
                "pointer {offset}+{len} is outside the heap (valid area ends at {heap_end})"
            ),
            Error::SliceRange {
                start,
                count,
                slice_len,
            } => write!(
                f,
                "elements {start}..{start}+{count} are outside a slice of {slice_len} elements"
            ),
            Error::Misaligned { offset, align } => {
                write!(f, "pointer {offset} is not aligned to {align} bytes")
            }
            Error::NotAllocated { offset, len } => write!(
                f,
                "write to {offset}+{len} is not inside a live allocation (allocator metadata, free \
                 space, or the root area past the root)"
            ),
            Error::NullPointer => write!(f, "null pointer"),
            Error::UnsupportedAlignment { align, max } => {
                write!(f, "alignment {align} is larger than the supported {max}")
            }
            Error::InvalidFree { offset, why } => write!(f, "invalid free of {offset}: {why}"),
            Error::RootTypeMismatch {
                stored_size,
                stored_fingerprint,
                requested_size,
                requested_fingerprint,
                stored_layout,
                requested_layout,
            } => write!(
                f,
                "root type mismatch: file holds a {stored_size}-byte root {stored_layout} (identity {stored_fingerprint:#018x}), \
                 asked for a {requested_size}-byte {requested_layout} (identity {requested_fingerprint:#018x})"
            ),
            Error::RootTooLarge { size, max } => {
                write!(f, "root type of {size} bytes exceeds the {max}-byte root area")
            }
            Error::NoRoot => write!(f, "the heap has no root yet (create it with Tx::root)"),
            Error::Poisoned { cause } => write!(
                f,
                "heap is poisoned after an I/O failure ({cause}); reopen it to recover"
            ),
            Error::ReadOnly => write!(f, "heap was opened read-only"),
            Error::TypeMismatch {
                offset,
                role,
                stored_id,
                stored,
                requested,
            } => write!(
                f,
                "collection at {offset} holds {role}s of {stored} (identity {stored_id:#018x}), asked for {requested}"
            ),
            Error::AllocatorInterrupted { cause } => write!(
                f,
                "an allocator operation failed part-way in this transaction ({cause}); the \
                 transaction went on, but it cannot commit a half-done allocation: it was rolled \
                 back and nothing of it was committed"
            ),
            Error::CollectionInterrupted { operation, cause } => write!(
                f,
                "{operation} failed part-way in this transaction ({cause}); the transaction went \
                 on, but it cannot commit a half-done collection: it was rolled back and nothing \
                 of it was committed (Tx::nested around the call undoes only it)"
            ),
            Error::IndexOutOfRange { index, len } => {
                write!(f, "index {index} is out of range for a collection of length {len}")
            }
            Error::ReadInTransaction => {
                write!(f, "Heap::read inside a transaction on the same heap would not see the transaction's own writes: read through the Tx")
            }
            Error::NestedTransaction => {
                write!(f, "a transaction or read closure is already running on this heap in this thread (transaction, flush, checkpoint, stats and close would deadlock)")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::AddressSpace { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<RecoveryError> for Error {
    fn from(e: RecoveryError) -> Error {
        match e {
            RecoveryError::Io { op, offset, source } => Error::Io { op, offset, source },
            RecoveryError::NotATxheap { detail } => Error::NotATxheap { detail },
            RecoveryError::Truncated { len, needed } => Error::Truncated { len, needed },
            RecoveryError::Corrupt { offset, what } => Error::Corrupt { offset, what },
            RecoveryError::UnsupportedVersion { found, supported } => {
                Error::UnsupportedVersion { found, supported }
            }
            RecoveryError::InvalidGeometry { what } => Error::InvalidOptions { what },
            RecoveryError::LogDamaged {
                offset,
                txid,
                voucher_offset,
                voucher_txid,
                last_txid,
            } => Error::LogDamaged {
                offset,
                txid,
                voucher_offset,
                voucher_txid,
                last_txid,
            },
        }
    }
}
