//! # txheap-recovery: superblocks, log replay and checkpoint
//!
//! Owns: the superblock format and the selection rule, scanning the log through the storage
//! choke point, replaying committed frames, the checkpoint that empties the log, and formatting a
//! new file. Knows the log and the superblock; knows nothing of the allocator or of user types.
//! Every byte it touches goes through [`Storage`], so a recording implementation can observe
//! every write and barrier (the crash simulator's hook). `docs/FORMAT.md` is the byte-level
//! specification; `docs/ARCHITECTURE.md` states the protocols as numbered steps.
//!
//! ```
//! use txheap_recovery::{format, recover, MemStorage};
//! let mut s = MemStorage::new();
//! let sb = format(&mut s, 65536, 1 << 20).unwrap();
//! let r = recover(&mut s).unwrap();
//! assert_eq!(r.superblock, sb);
//! assert_eq!(r.scan.frames, 0);
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

pub use txheap_log;
use txheap_log::{
    parse_header, verify_frame, Stop, StopReason, CHECK_OFFSET, FRAME_HEADER_LEN,
    GENERATION_OFFSET, MAGIC_OFFSET, RANGE_COUNT_OFFSET, TXID_OFFSET,
};

/// Test-only switches that break the protocol on purpose (feature `test-hooks`), so that the
/// crash tests can show they catch each broken variant. Never enabled in normal builds.
///
/// ```
/// # #[cfg(feature = "test-hooks")] {
/// use txheap_recovery::sabotage;
/// sabotage::set(sabotage::SKIP_CHECKSUM);
/// assert!(sabotage::active(sabotage::SKIP_CHECKSUM));
/// sabotage::set(0);
/// # }
/// ```
#[cfg(feature = "test-hooks")]
pub mod sabotage {
    use std::sync::atomic::{AtomicU32, Ordering};
    static MASK: AtomicU32 = AtomicU32::new(0);
    /// txheap applies a commit's ranges to the heap before writing and barriering its frame.
    pub const APPLY_BEFORE_LOG: u32 = 1;
    /// Recovery replays frames whose checksum does not match.
    pub const SKIP_CHECKSUM: u32 = 2;
    /// Recovery replays frames of any generation and transaction id.
    pub const REPLAY_OLD_GENERATION: u32 = 4;
    /// A checkpoint writes and barriers the superblock before the heap barrier.
    pub const SUPERBLOCK_BEFORE_HEAP_BARRIER: u32 = 8;
    /// Set the active switches (0: none).
    pub fn set(mask: u32) {
        MASK.store(mask, Ordering::SeqCst);
    }
    /// Whether `bit` is active.
    pub fn active(bit: u32) -> bool {
        MASK.load(Ordering::SeqCst) & bit != 0
    }

    std::thread_local! {
        static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    }

    /// Make this thread panic (instead of aborting) whenever it passes the failpoint `name`;
    /// `None` disarms. Other threads are unaffected, so tests can run side by side.
    pub fn panic_at(name: Option<&str>) {
        PANIC_AT.with(|p| *p.borrow_mut() = name.map(str::to_string));
    }

    /// A named crash point: with `TXHEAP_FAILPOINT=name:n` in the environment, the process aborts
    /// (no destructors, no flush: like SIGKILL) the `n`-th time it passes `name`.
    pub fn failpoint(name: &str) {
        if PANIC_AT.with(|p| p.borrow().as_deref() == Some(name)) {
            panic!("failpoint {name}: panic armed by sabotage::panic_at");
        }
        use std::sync::atomic::AtomicU64;
        use std::sync::OnceLock;
        static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
        static HITS: AtomicU64 = AtomicU64::new(0);
        let plan = PLAN.get_or_init(|| {
            let v = std::env::var("TXHEAP_FAILPOINT").ok()?;
            let (n, c) = v.split_once(':')?;
            Some((n.to_string(), c.parse().ok()?))
        });
        if let Some((n, count)) = plan {
            if n == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *count {
                std::process::abort();
            }
        }
    }
}

/// Where a process is in the protocol, for the kill -9 campaign (feature `test-hooks`).
///
/// With `TXHEAP_PHASE_FILE=path` in the environment, every phase change writes the phase's
/// number (4 bytes, little-endian) at offset 0 of that file with `pwrite`. A parent that
/// SIGKILLs the process reads the file afterwards and knows where the kill landed; it can also
/// poll the file and aim a kill at a phase. Without the variable, `enter` does nothing.
///
/// ```
/// use txheap_recovery::phase;
/// assert_eq!(phase::name(phase::APPLY), "apply (after the log barrier)");
/// phase::enter(phase::IDLE); // no TXHEAP_PHASE_FILE: nothing happens
/// ```
#[cfg(feature = "test-hooks")]
pub mod phase {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::OnceLock;

    /// Between transactions (or in a read).
    pub const IDLE: u32 = 0;
    /// Creating a new file.
    pub const CREATE: u32 = 1;
    /// Opening: superblock selection and log scan, before any replay write.
    pub const OPEN: u32 = 2;
    /// Recovery: replaying committed frames into the heap.
    pub const RECOVERY_REPLAY: u32 = 3;
    /// Recovery: the checkpoint that makes the replayed state durable.
    pub const RECOVERY_CHECKPOINT: u32 = 4;
    /// Opening, after recovery: growing to the chunk count, mapping, allocator rebuild.
    pub const OPEN_REBUILD: u32 = 5;
    /// Inside a transaction's closure: staging only, the file does not change.
    pub const TX_BODY: u32 = 6;
    /// Growing the file (`posix_fallocate` and mapping) for a transaction.
    pub const GROW: u32 = 7;
    /// Commit: encoding the frame (the file does not change yet).
    pub const COMMIT_ENCODE: u32 = 8;
    /// Commit: writing a large object in place and making it durable, before its frame.
    pub const IN_PLACE: u32 = 9;
    /// Commit: writing the frame to the log, before its barrier.
    pub const LOG_WRITE: u32 = 10;
    /// Commit: inside the log barrier.
    pub const LOG_BARRIER: u32 = 11;
    /// Commit: applying the committed ranges to the heap.
    pub const APPLY: u32 = 12;
    /// `Durability::None`: barrier of the unsynced log, then private pages to the file.
    pub const FLUSH: u32 = 13;
    /// Checkpoint: heap barrier and superblock switch.
    pub const CHECKPOINT: u32 = 14;
    /// Number of phases.
    pub const COUNT: usize = 15;

    const NAMES: [&str; COUNT] = [
        "idle (between transactions)",
        "create",
        "open (before replay)",
        "recovery: replay",
        "recovery: checkpoint",
        "open: map and rebuild",
        "transaction body",
        "growth",
        "commit: encode frame",
        "commit: in-place object",
        "commit: log write (before barrier)",
        "commit: log barrier",
        "apply (after the log barrier)",
        "flush (None)",
        "checkpoint",
    ];

    /// The phase's name ("?" for an unknown number).
    pub fn name(phase: u32) -> &'static str {
        NAMES.get(phase as usize).copied().unwrap_or("?")
    }

    /// Record that the process enters `phase`.
    pub fn enter(phase: u32) {
        static FILE: OnceLock<Option<File>> = OnceLock::new();
        let file = FILE.get_or_init(|| {
            let path = std::env::var_os("TXHEAP_PHASE_FILE")?;
            std::fs::OpenOptions::new().write(true).open(path).ok()
        });
        if let Some(f) = file {
            // Best effort: a test aid, never a reason to fail the operation being traced.
            let _ = f.write_at(&phase.to_le_bytes(), 0);
        }
    }
}

/// Enter a phase (feature `test-hooks`; a no-op otherwise).
macro_rules! phase {
    ($p:ident) => {
        #[cfg(feature = "test-hooks")]
        phase::enter(phase::$p);
    };
}

/// Pass a named crash point (feature `test-hooks`; a no-op otherwise).
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "test-hooks")]
        sabotage::failpoint($name);
    };
}

#[cfg(feature = "test-hooks")]
fn sabotaged(bit: u32) -> bool {
    sabotage::active(bit)
}
#[cfg(not(feature = "test-hooks"))]
fn sabotaged(_bit: u32) -> bool {
    false
}
#[cfg(not(feature = "test-hooks"))]
const REPLAY_OLD_GENERATION: u32 = 0;
#[cfg(feature = "test-hooks")]
use sabotage::REPLAY_OLD_GENERATION;
#[cfg(not(feature = "test-hooks"))]
const SKIP_CHECKSUM: u32 = 0;
#[cfg(feature = "test-hooks")]
use sabotage::SKIP_CHECKSUM;
#[cfg(not(feature = "test-hooks"))]
const SUPERBLOCK_BEFORE_HEAP_BARRIER: u32 = 0;
#[cfg(feature = "test-hooks")]
use sabotage::SUPERBLOCK_BEFORE_HEAP_BARRIER;

/// Unit of every region boundary.
pub const PAGE_SIZE: u64 = 4096;
/// Bytes of each of the two superblock slots.
pub const SUPERBLOCK_SLOT_LEN: u64 = 4096;
/// Bytes of an encoded superblock (at the start of its slot).
pub const SUPERBLOCK_ENCODED_LEN: usize = 128;
/// Superblock magic.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"TXHEAPSB";
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Where the log region starts.
pub const LOG_OFFSET: u64 = 8192;
/// The largest `seq`, `generation` or `next_txid` a superblock may hold (2^62: a billion
/// checkpoints or transactions a second for over a century).
pub const COUNTER_MAX: u64 = 1 << 62;
/// The smallest log region.
pub const LOG_LEN_MIN: u64 = 65536;
/// Allocator chunk size (recorded in the superblock).
pub const CHUNK_SIZE: u64 = 262144;
/// Heap header page plus root area page, before chunk 0.
pub const HEAP_META_LEN: u64 = 8192;
/// Bytes of zeroes written per call when formatting the log.
const ZERO_WRITE_LEN: usize = 1 << 20;

/// The one choke point through which every byte of the file is read, written and made durable.
///
/// ```
/// use txheap_recovery::{MemStorage, Storage};
/// let mut s = MemStorage::new();
/// s.write_at(10, b"ab").unwrap();
/// let mut b = [0u8; 2];
/// s.read_at(10, &mut b).unwrap();
/// assert_eq!(&b, b"ab");
/// ```
#[allow(clippy::len_without_is_empty)] // a file's length; "empty" means nothing here
pub trait Storage {
    /// Current file length.
    fn len(&self) -> io::Result<u64>;
    /// Read exactly `buf.len()` bytes at `offset` (`UnexpectedEof` past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `bytes` at `offset`; may extend the file.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Make `[offset, offset+len)` durable.
    fn barrier(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Make every write so far durable, including the file's length.
    fn barrier_all(&mut self) -> io::Result<()>;
    /// Ensure the file is at least `new_len` bytes with blocks allocated (never shrinks).
    fn grow(&mut self, new_len: u64) -> io::Result<()>;
}

/// An in-memory [`Storage`] for tests and simulators.
///
/// ```
/// use txheap_recovery::{MemStorage, Storage};
/// let mut s = MemStorage::from_bytes(vec![1, 2, 3]);
/// s.barrier_all().unwrap();
/// assert_eq!(s.barrier_count(), 1);
/// assert_eq!(s.bytes(), &[1, 2, 3]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    bytes: Vec<u8>,
    barriers: u64,
}

impl MemStorage {
    /// Empty storage.
    ///
    /// ```
    /// assert!(txheap_recovery::MemStorage::new().bytes().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Storage holding `bytes`.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::from_bytes(vec![7]).bytes(), &[7]);
    /// ```
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemStorage { bytes, barriers: 0 }
    }
    /// The current bytes.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::new().bytes().len(), 0);
    /// ```
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Take the bytes.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::from_bytes(vec![1]).into_bytes(), vec![1]);
    /// ```
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    /// Barriers issued so far.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::MemStorage::new().barrier_count(), 0);
    /// ```
    pub fn barrier_count(&self) -> u64 {
        self.barriers
    }
}

impl Storage for MemStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.bytes.len() as u64);
        match end {
            Some(end) => {
                buf.copy_from_slice(&self.bytes[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let end = usize::try_from(end).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }
    fn barrier(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        self.barriers += 1;
        Ok(())
    }
    fn barrier_all(&mut self) -> io::Result<()> {
        self.barriers += 1;
        Ok(())
    }
    fn grow(&mut self, new_len: u64) -> io::Result<()> {
        let n =
            usize::try_from(new_len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if n > self.bytes.len() {
            self.bytes.resize(n, 0);
        }
        Ok(())
    }
}

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
    /// A newer format.
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// Bad arguments to [`format()`].
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

fn io_err(op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> RecoveryError {
    move |source| RecoveryError::Io { op, offset, source }
}

/// A superblock slot.
///
/// ```
/// use txheap_recovery::Slot;
/// assert_eq!(Slot::A.other(), Slot::B);
/// assert_eq!(Slot::B.offset(), 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// At offset 0.
    A,
    /// At offset 4096.
    B,
}

impl Slot {
    /// The slot's file offset.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Slot::A.offset(), 0);
    /// ```
    pub fn offset(self) -> u64 {
        match self {
            Slot::A => 0,
            Slot::B => SUPERBLOCK_SLOT_LEN,
        }
    }
    /// The other slot.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Slot::B.other(), txheap_recovery::Slot::A);
    /// ```
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// Why one slot is not usable.
///
/// ```
/// let e = txheap_recovery::Superblock::decode(&[0u8; 128], 0).unwrap_err();
/// assert_eq!(e, txheap_recovery::SlotError::NoMagic);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotError {
    /// No magic.
    NoMagic,
    /// Checksum mismatch.
    BadCrc {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// A valid slot of another version.
    UnsupportedVersion {
        /// Its version.
        found: u32,
        /// Its sequence number (every version keeps magic, version and seq where version 1 has
        /// them), so that a newer slot of an unknown version is never overruled by an older one.
        seq: u64,
    },
    /// A field breaks a rule of FORMAT.md.
    BadField {
        /// Which and why.
        what: String,
    },
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::NoMagic => write!(f, "no superblock magic"),
            SlotError::BadCrc { stored, computed } => {
                write!(f, "crc {stored:#010x} != computed {computed:#010x}")
            }
            SlotError::UnsupportedVersion { found, seq } => {
                write!(f, "format version {found} (seq {seq})")
            }
            SlotError::BadField { what } => write!(f, "{what}"),
        }
    }
}

/// The current superblock: where the log is, which generation of frames counts.
///
/// ```
/// let sb = txheap_recovery::Superblock::new(65536, 1 << 20);
/// assert_eq!(sb.heap_offset(), 8192 + 65536);
/// let enc = sb.encode();
/// assert_eq!(txheap_recovery::Superblock::decode(&enc, 0).unwrap(), sb);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Higher is newer.
    pub seq: u64,
    /// Frames count only with this generation.
    pub generation: u64,
    /// Transaction id of this generation's first frame.
    pub next_txid: u64,
    /// Bytes of the log region.
    pub log_len: u64,
    /// Largest file size.
    pub max_size: u64,
}

impl Superblock {
    /// A fresh superblock: seq 1, generation 1, next_txid 1.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).seq, 1);
    /// ```
    pub fn new(log_len: u64, max_size: u64) -> Superblock {
        Superblock {
            seq: 1,
            generation: 1,
            next_txid: 1,
            log_len,
            max_size,
        }
    }
    /// Start of the log region.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).log_offset(), 8192);
    /// ```
    pub fn log_offset(&self) -> u64 {
        LOG_OFFSET
    }
    /// Start of the heap region.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).heap_offset(), 73728);
    /// ```
    pub fn heap_offset(&self) -> u64 {
        LOG_OFFSET + self.log_len
    }
    /// Start of chunk 0.
    ///
    /// ```
    /// assert_eq!(txheap_recovery::Superblock::new(65536, 1 << 20).chunk_area_offset(), 73728 + 8192);
    /// ```
    pub fn chunk_area_offset(&self) -> u64 {
        self.heap_offset() + HEAP_META_LEN
    }
    /// The shortest valid file.
    ///
    /// ```
    /// let sb = txheap_recovery::Superblock::new(65536, 1 << 20);
    /// assert_eq!(sb.min_file_len(), sb.chunk_area_offset());
    /// ```
    pub fn min_file_len(&self) -> u64 {
        self.chunk_area_offset()
    }

    /// Encode with magic, version, constants and crc.
    ///
    /// ```
    /// let b = txheap_recovery::Superblock::new(65536, 1 << 20).encode();
    /// assert_eq!(&b[..8], b"TXHEAPSB");
    /// ```
    pub fn encode(&self) -> [u8; SUPERBLOCK_ENCODED_LEN] {
        let mut b = [0u8; SUPERBLOCK_ENCODED_LEN];
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_txid.to_le_bytes());
        b[40..48].copy_from_slice(&LOG_OFFSET.to_le_bytes());
        b[48..56].copy_from_slice(&self.log_len.to_le_bytes());
        b[56..64].copy_from_slice(&self.heap_offset().to_le_bytes());
        b[64..72].copy_from_slice(&self.max_size.to_le_bytes());
        b[72..76].copy_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
        b[76..80].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check magic, crc, version and every geometry rule.
    ///
    /// ```
    /// let mut b = txheap_recovery::Superblock::new(65536, 1 << 20).encode();
    /// b[20] ^= 1;
    /// assert!(matches!(txheap_recovery::Superblock::decode(&b, 0), Err(txheap_recovery::SlotError::BadCrc { .. })));
    /// ```
    pub fn decode(
        bytes: &[u8; SUPERBLOCK_ENCODED_LEN],
        _slot_offset: u64,
    ) -> Result<Superblock, SlotError> {
        if bytes[0..8] != SUPERBLOCK_MAGIC {
            return Err(SlotError::NoMagic);
        }
        let stored = u32::from_le_bytes(bytes[124..128].try_into().expect("4"));
        let computed = crc32fast::hash(&bytes[..124]);
        if stored != computed {
            return Err(SlotError::BadCrc { stored, computed });
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SlotError::UnsupportedVersion {
                found: version,
                seq: u64_at(16),
            });
        }
        let sb = Superblock {
            seq: u64_at(16),
            generation: u64_at(24),
            next_txid: u64_at(32),
            log_len: u64_at(48),
            max_size: u64_at(64),
        };
        let bad = |what: String| Err(SlotError::BadField { what });
        // Counters only ever grow by one per checkpoint or transaction; a value this large
        // cannot come from use, and would overflow when incremented.
        for (name, v) in [
            ("seq", sb.seq),
            ("generation", sb.generation),
            ("next_txid", sb.next_txid),
        ] {
            if v > COUNTER_MAX {
                return bad(format!("{name} {v} exceeds {COUNTER_MAX}"));
            }
        }
        if u32_at(12) != 0 {
            return bad(format!("flags {:#x} are not zero", u32_at(12)));
        }
        if u64_at(40) != LOG_OFFSET {
            return bad(format!("log_offset {} is not {LOG_OFFSET}", u64_at(40)));
        }
        if sb.log_len % PAGE_SIZE != 0 || !(LOG_LEN_MIN..=u64::MAX / 4).contains(&sb.log_len) {
            return bad(format!(
                "log_len {} is not a multiple of {PAGE_SIZE} of at least {LOG_LEN_MIN}",
                sb.log_len
            ));
        }
        if u64_at(56) != sb.heap_offset() {
            return bad(format!(
                "heap_offset {} is not log_offset + log_len",
                u64_at(56)
            ));
        }
        if sb.max_size % PAGE_SIZE != 0 || sb.max_size < sb.min_file_len() {
            return bad(format!(
                "max_size {} is below {} or not page-aligned",
                sb.max_size,
                sb.min_file_len()
            ));
        }
        if u32_at(72) as u64 != CHUNK_SIZE || u32_at(76) as u64 != PAGE_SIZE {
            return bad(format!(
                "chunk_size {} / page_size {} unsupported",
                u32_at(72),
                u32_at(76)
            ));
        }
        if bytes[80..124].iter().any(|&b| b != 0) {
            return bad("reserved bytes are not zero".into());
        }
        Ok(sb)
    }
}

fn read_slot<S: Storage + ?Sized>(
    storage: &S,
    slot: Slot,
    file_len: u64,
) -> Result<Result<Superblock, SlotError>, RecoveryError> {
    let mut b = [0u8; SUPERBLOCK_ENCODED_LEN];
    if file_len < slot.offset() + SUPERBLOCK_ENCODED_LEN as u64 {
        // A short file: whatever bytes exist, zero-padded.
        let avail = file_len.saturating_sub(slot.offset()) as usize;
        if avail > 0 {
            storage
                .read_at(slot.offset(), &mut b[..avail])
                .map_err(io_err("read superblock", slot.offset()))?;
        }
    } else {
        storage
            .read_at(slot.offset(), &mut b)
            .map_err(io_err("read superblock", slot.offset()))?;
    }
    Ok(Superblock::decode(&b, slot.offset()))
}

/// Read both slots and pick the current superblock. Never writes.
///
/// ```
/// use txheap_recovery::{format, select_superblock, MemStorage, Slot};
/// let mut s = MemStorage::new();
/// format(&mut s, 65536, 1 << 20).unwrap();
/// assert_eq!(select_superblock(&s).unwrap().1, Slot::A);
/// assert!(select_superblock(&MemStorage::from_bytes(vec![0; 9000])).is_err());
/// ```
pub fn select_superblock<S: Storage + ?Sized>(
    storage: &S,
) -> Result<(Superblock, Slot), RecoveryError> {
    let len = storage.len().map_err(io_err("stat", 0))?;
    let a = read_slot(storage, Slot::A, len)?;
    let b = read_slot(storage, Slot::B, len)?;
    let newest = |x: &Result<Superblock, SlotError>| match x {
        Ok(sb) => Some(sb.seq),
        _ => None,
    };
    // A valid-crc slot of another version: refuse if it is at least as new as every usable
    // slot. (Falling back to an older slot of our version would let the next checkpoint, which
    // writes the other slot, overwrite the newer one.)
    let usable_seq = newest(&a).max(newest(&b));
    for r in [&a, &b] {
        if let Err(SlotError::UnsupportedVersion { found, seq }) = r {
            if usable_seq.is_none_or(|u| *seq >= u) {
                return Err(RecoveryError::UnsupportedVersion {
                    found: *found,
                    supported: FORMAT_VERSION,
                });
            }
        }
    }
    let chosen = match (newest(&a), newest(&b)) {
        (Some(x), Some(y)) if y > x => Some(Slot::B),
        (Some(_), _) => Some(Slot::A),
        (None, Some(_)) => Some(Slot::B),
        (None, None) => None,
    };
    match chosen {
        Some(Slot::A) => Ok((a.expect("valid"), Slot::A)),
        Some(Slot::B) => Ok((b.expect("valid"), Slot::B)),
        None => {
            if a == Err(SlotError::NoMagic) && b == Err(SlotError::NoMagic) {
                Err(RecoveryError::NotATxheap {
                    detail: format!("no superblock magic at offset 0 or 4096 ({len}-byte file)"),
                })
            } else {
                let (slot, e) = match &a {
                    Err(SlotError::NoMagic) => (Slot::B, b.expect_err("invalid")),
                    Err(e) => (Slot::A, e.clone()),
                    Ok(_) => unreachable!("no valid slot"),
                };
                Err(RecoveryError::Corrupt {
                    offset: slot.offset(),
                    what: format!("no valid superblock: {e}"),
                })
            }
        }
    }
}

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
}

/// What [`scan_log`] calls for each committed range: `(file offset, bytes)`.
pub type ApplyFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), RecoveryError> + 'a;

/// The log region read ahead in growing chunks (64 KiB doubling to 8 MiB), so a scan costs a
/// few large reads instead of two per frame, and an empty log costs one small read.
#[derive(Default)]
struct LogWindow {
    /// Log-relative offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    chunk: u64,
}

impl LogWindow {
    const FIRST: u64 = 64 << 10;
    const MAX: u64 = 8 << 20;

    /// Bytes `[at, at + len)` of the log region (the caller checked they lie inside it).
    fn get<S: Storage + ?Sized>(
        &mut self,
        storage: &S,
        sb: &Superblock,
        at: u64,
        len: u64,
    ) -> Result<&[u8], RecoveryError> {
        if at.checked_add(len).is_none_or(|end| end > sb.log_len) {
            return Err(RecoveryError::Corrupt {
                offset: sb.log_offset() + at,
                what: format!("log read of {len} bytes runs past the log region"),
            });
        }
        let have = at >= self.start && at + len <= self.start + self.buf.len() as u64;
        if !have {
            self.chunk = (self.chunk * 2).clamp(Self::FIRST, Self::MAX);
            let n = len.max(self.chunk).min(sb.log_len - at);
            let abs = sb.log_offset() + at;
            self.start = at;
            self.buf.resize(n as usize, 0);
            storage
                .read_at(abs, &mut self.buf)
                .map_err(io_err("read log", abs))?;
        }
        let i = (at - self.start) as usize;
        Ok(&self.buf[i..i + len as usize])
    }
}

/// Scan the log and call `apply` for each range of each committed frame, in order. Never
/// writes by itself. A crc-valid frame that is malformed or writes outside the heap is `Corrupt`.
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
    let mut at = 0u64;
    let mut txid = sb.next_txid;
    let mut frames = 0;
    let mut range_bytes = 0;
    let mut window = LogWindow::default();
    let stop = loop {
        let remaining = sb.log_len - at;
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
        for r in frame.ranges() {
            let end = r.offset.checked_add(r.bytes.len() as u64);
            if r.offset < sb.heap_offset() || end.is_none_or(|e| e > sb.max_size) {
                return Err(RecoveryError::Corrupt {
                    offset: abs,
                    what: format!(
                        "log frame {txid} writes {}+{} outside the heap [{}, {})",
                        r.offset,
                        r.bytes.len(),
                        sb.heap_offset(),
                        sb.max_size
                    ),
                });
            }
        }
        for r in frame.ranges() {
            apply(r.offset, r.bytes)?;
            range_bytes += r.bytes.len() as u64;
        }
        frames += 1;
        txid += 1;
        at += h.frame_len();
    };
    Ok(LogScan {
        frames,
        range_bytes,
        end_offset: at,
        next_txid: txid,
        stop,
    })
}

/// Checkpoint: `barrier_all`, then write the other slot with `seq + 1`, `generation + 1` and
/// `next_txid`, then barrier it. The log is empty afterwards.
///
/// ```
/// use txheap_recovery::{checkpoint, format, select_superblock, MemStorage, Slot};
/// let mut s = MemStorage::new();
/// let sb = format(&mut s, 65536, 1 << 20).unwrap();
/// let (nsb, slot) = checkpoint(&mut s, &sb, Slot::A, 5).unwrap();
/// assert_eq!((nsb.seq, nsb.generation, nsb.next_txid, slot), (2, 2, 5, Slot::B));
/// assert_eq!(select_superblock(&s).unwrap(), (nsb, Slot::B));
/// ```
pub fn checkpoint<S: Storage + ?Sized>(
    storage: &mut S,
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
) -> Result<(Superblock, Slot), RecoveryError> {
    if !sabotaged(SUPERBLOCK_BEFORE_HEAP_BARRIER) {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync before checkpoint", 0))?;
    }
    failpoint!("checkpoint.after_heap_barrier");
    let next = next_superblock(current, current_slot, next_txid)?;
    let slot = current_slot.other();
    storage
        .write_at(slot.offset(), &next.encode())
        .map_err(io_err("write superblock", slot.offset()))?;
    storage
        .barrier(slot.offset(), SUPERBLOCK_ENCODED_LEN as u64)
        .map_err(io_err("barrier superblock", slot.offset()))?;
    if sabotaged(SUPERBLOCK_BEFORE_HEAP_BARRIER) {
        storage
            .barrier_all()
            .map_err(io_err("fdatasync after checkpoint", 0))?;
    }
    failpoint!("checkpoint.after_superblock");
    Ok((next, slot))
}

/// The superblock a checkpoint of `current` writes: `seq` and `generation` one more, the given
/// `next_txid`. `Corrupt` (naming the counter) if a counter would pass `COUNTER_MAX`.
fn next_superblock(
    current: &Superblock,
    current_slot: Slot,
    next_txid: u64,
) -> Result<Superblock, RecoveryError> {
    let bump = |v: u64, name: &str| {
        v.checked_add(1)
            .filter(|n| *n <= COUNTER_MAX)
            .ok_or_else(|| RecoveryError::Corrupt {
                offset: current_slot.offset(),
                what: format!("superblock {name} {v} cannot grow past {COUNTER_MAX}"),
            })
    };
    if next_txid > COUNTER_MAX {
        return Err(RecoveryError::Corrupt {
            offset: current_slot.offset(),
            what: format!("next_txid {next_txid} exceeds {COUNTER_MAX}"),
        });
    }
    Ok(Superblock {
        seq: bump(current.seq, "seq")?,
        generation: bump(current.generation, "generation")?,
        next_txid,
        log_len: current.log_len,
        max_size: current.max_size,
    })
}

/// Pages of replayed bytes held in memory at most (64 MiB), whatever the log holds.
const REPLAY_BATCH_PAGES: usize = 16384;
/// Pages one read or write of a replay batch covers at most (1 MiB).
const REPLAY_RUN_PAGES: usize = 256;

/// Replay committed ranges, in log order, a page at a time: the pages a batch of ranges touches
/// are read in runs of consecutive pages, every range is applied to the copies in memory, and
/// the runs are written back. The file ends as if each range had been written in order (bytes
/// outside the ranges are written back unchanged), with a few large reads and writes instead
/// of one write per range. A batch holds at most `REPLAY_BATCH_PAGES` pages, so a log of
/// scattered tiny ranges cannot exhaust memory. A crash part-way leaves the log and superblock
/// as they were, so the next open replays again (replay is idempotent). Starts at range
/// `start`; batches of at most `batch_pages` pages (`REPLAY_BATCH_PAGES`; tests use tiny ones).
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
        batch.write(storage)?;
        i = batch.end;
    }
    Ok(())
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
            pages.extend(need);
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
        // Apply the batch's ranges in log order.
        let mut last = (u64::MAX, 0usize);
        for &(off, start, len) in &ranges[start..j] {
            let (mut pos, mut rest) = (off, &arena[start..start + len]);
            while !rest.is_empty() {
                let page = pos / P;
                let slot = if last.0 == page {
                    last.1
                } else {
                    let slot = pages.binary_search(&page).expect("page of the batch");
                    last = (page, slot);
                    slot
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
            let at = self.pages[k] * P;
            storage
                .write_at(at, &self.buf[k * P as usize..(k + n) * P as usize])
                .map_err(io_err("replay pages", at))?;
            failpoint!("recovery.mid_replay");
        }
        Ok(())
    }
}

/// Runs of consecutive page numbers in sorted `pages`, as (first index, count), each at most
/// `REPLAY_RUN_PAGES` long.
fn page_runs(pages: &[u64]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut k = 0;
    while k < pages.len() {
        let mut n = 1;
        while k + n < pages.len() && pages[k + n] == pages[k] + n as u64 && n < REPLAY_RUN_PAGES {
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
    /// Whether a checkpoint was written (frames were replayed).
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

/// Writable open: select; check the length (before any write); replay committed frames with
/// `write_at`; checkpoint if anything was replayed. [`recover_checked`] without a check.
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
    recover_checked_batched(storage, check, REPLAY_BATCH_PAGES)
}

/// [`recover_checked`] with replay batches of at most `batch_pages` pages (tests use tiny ones
/// to reach the multi-batch path, where the check reads through a page index).
fn recover_checked_batched<S, E>(
    storage: &mut S,
    check: impl FnOnce(&Superblock, &Replayed<'_, S>) -> Result<(), E>,
    batch_pages: usize,
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
    // Collect every committed range before writing any, so a hostile frame later in the log is
    // refused before a byte of the file changes. (At most the log's size is held.)
    // Capacity for a full log up front (address space only until used): growing by doubling
    // copied the arena over and over.
    let log_len = usize::try_from(sb.log_len).unwrap_or(usize::MAX);
    let mut arena: Vec<u8> = Vec::with_capacity(log_len);
    let mut ranges: Vec<(u64, usize, usize)> = Vec::with_capacity(log_len / 256);
    let scan = scan_log(&*storage, &sb, &mut |off, bytes| {
        ranges.push((off, arena.len(), bytes.len()));
        arena.extend_from_slice(bytes);
        Ok(())
    })?;
    // The first page batch (usually the whole replay) is built in memory before any write.
    let first = if ranges.is_empty() {
        None
    } else {
        Some(PageBatch::build(
            &*storage,
            &ranges,
            &arena,
            0,
            batch_pages,
        )?)
    };
    if scan.frames > 0 {
        // Everything that could refuse the open is decided here, before the first write: the
        // caller's check of the replayed heap, and the counters the checkpoint will bump.
        next_superblock(&sb, slot, scan.next_txid)?;
        let view = match &first {
            Some(b) if b.end == ranges.len() => Replayed::of_batch(&*storage, b)?,
            _ => Replayed::of_ranges(&*storage, &ranges, &arena)?,
        };
        check(&sb, &view)?;
    }
    if let Some(first) = first {
        phase!(RECOVERY_REPLAY);
        first.write(storage)?;
        replay_pages_batched(storage, &ranges, &arena, first.end, batch_pages)?;
    }
    failpoint!("recovery.after_replay");
    if scan.frames == 0 {
        return Ok(Recovered {
            superblock: sb,
            slot,
            scan,
            checkpointed: false,
        });
    }
    phase!(RECOVERY_CHECKPOINT);
    let (nsb, nslot) = checkpoint(storage, &sb, slot, scan.next_txid)?;
    Ok(Recovered {
        superblock: nsb,
        slot: nslot,
        scan,
        checkpointed: true,
    })
}

/// Write a fresh file's superblocks and zeroed log, extend it to `min_file_len`, then
/// `barrier_all`.
///
/// ```
/// let mut s = txheap_recovery::MemStorage::new();
/// let sb = txheap_recovery::format(&mut s, 65536, 1 << 20).unwrap();
/// assert_eq!(s.bytes().len() as u64, sb.min_file_len());
/// assert!(txheap_recovery::format(&mut s, 1000, 1 << 20).is_err());
/// ```
pub fn format<S: Storage + ?Sized>(
    storage: &mut S,
    log_len: u64,
    max_size: u64,
) -> Result<Superblock, RecoveryError> {
    let bad = |what: String| Err(RecoveryError::InvalidGeometry { what });
    if log_len % PAGE_SIZE != 0 || !(LOG_LEN_MIN..=u64::MAX / 4).contains(&log_len) {
        return bad(format!(
            "log_len {log_len} must be a multiple of {PAGE_SIZE} and at least {LOG_LEN_MIN}"
        ));
    }
    let sb = Superblock::new(log_len, max_size);
    if max_size % PAGE_SIZE != 0 || max_size < sb.min_file_len() {
        return bad(format!(
            "max_size {max_size} must be a multiple of {PAGE_SIZE} and at least {}",
            sb.min_file_len()
        ));
    }
    let zeros = vec![0u8; ZERO_WRITE_LEN];
    let mut at = LOG_OFFSET;
    while at < sb.heap_offset() {
        let n = (sb.heap_offset() - at).min(ZERO_WRITE_LEN as u64) as usize;
        storage
            .write_at(at, &zeros[..n])
            .map_err(io_err("zero log region", at))?;
        at += n as u64;
    }
    // The heap metadata pages (heap header, root area) start zeroed; the caller fills them in.
    storage
        .grow(sb.min_file_len())
        .map_err(io_err("allocate heap metadata", sb.heap_offset()))?;
    let mut slot_b = vec![0u8; SUPERBLOCK_SLOT_LEN as usize];
    storage
        .write_at(Slot::B.offset(), &slot_b)
        .map_err(io_err("write superblock", Slot::B.offset()))?;
    slot_b[..SUPERBLOCK_ENCODED_LEN].copy_from_slice(&sb.encode());
    storage
        .write_at(Slot::A.offset(), &slot_b)
        .map_err(io_err("write superblock", 0))?;
    storage
        .barrier_all()
        .map_err(io_err("fdatasync new file", 0))?;
    Ok(sb)
}

#[cfg(test)]
mod replay_tests {
    use super::*;
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
        for batch_pages in [1, REPLAY_BATCH_PAGES] {
            let mut t = s.clone();
            let mut seen = vec![0u8; window.1];
            recover_checked_batched(&mut t, |_, v| v.read(window.0, &mut seen), batch_pages)
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

    proptest! {
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
