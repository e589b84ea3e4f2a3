//! Test hooks (feature `test-hooks`): sabotage switches, failpoints and protocol phases.
//!
//! Owns: the `sabotage` and `phase` modules, the `phase!` and `failpoint!` macros, and the
//! crate-private `sabotaged` switch the protocol code asks. Without the feature every hook
//! compiles to nothing (a `sabotaged` that is always false). May not: change what the protocol
//! does unless a test switched a sabotage bit on, or fail an operation (phase tracing is best
//! effort).

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
    /// Recovery ignores the frames' durability evidence: a damaged durable frame is taken for a
    /// torn tail, and the acknowledged transactions after it are silently dropped.
    pub const IGNORE_DURABILITY_EVIDENCE: u32 = 16;
    /// txheap writes a fresh large extent in place without the checkpoint its rule requires
    /// when a frame still in the log wrote at or above the extent (replaying that frame after a
    /// crash would overwrite the new bytes).
    pub const IN_PLACE_OVER_LOGGED_RANGE: u32 = 32;
    /// A checkpoint writes its log sentinel (the empty old-generation frame that ends the log
    /// at its start) before the heap barrier: the frames it covers may be gone before the
    /// heap holds their writes.
    pub const SENTINEL_BEFORE_HEAP_BARRIER: u32 = 64;
    /// txheap writes a commit's in-place bytes (fresh large extents and runs) but skips the
    /// barrier that makes them durable before the frame: a power cut can then keep the
    /// committed frame and lose the bytes.
    pub const IN_PLACE_WITHOUT_BARRIER: u32 = 128;
    /// Under `Durability::None`, txheap writes a commit's in-place bytes without the flush that
    /// must come first: the free that made their space free may not be durable (a power cut
    /// can keep the bytes and lose the free), and private pages can hide them.
    pub const IN_PLACE_BEFORE_FLUSH: u32 = 256;
    /// txheap writes a committed frame's ranges into the file while a reader pinned at an older
    /// state may be reading them there (readers' views change under them).
    pub const APPLY_UNDER_OLDER_READER: u32 = 512;
    /// Group commit acknowledges a transaction without waiting for the shared barrier that
    /// makes its frame durable (a power cut can then lose an acknowledged transaction).
    pub const ACK_BEFORE_GROUP_BARRIER: u32 = 1024;
    /// Compaction punches holes in the current state's free space before a checkpoint made
    /// that state durable (a power cut can then recover an older state whose live objects
    /// lie in the holes).
    pub const PUNCH_BEFORE_CHECKPOINT: u32 = 2048;
    /// Compaction cuts the file before a superblock says the shorter length (a crash between
    /// leaves a superblock claiming more than the file holds: the file is refused).
    pub const SHRINK_BEFORE_SUPERBLOCK: u32 = 4096;
    /// `Heap::set_max_size` lets the heap grow past the old `max_size` before a superblock
    /// records the new one (a crash then leaves frames writing past the superblock's limit,
    /// which recovery refuses as hostile).
    pub const RAISE_BEFORE_SUPERBLOCK: u32 = 8192;
    /// Recovery replays a frame whose in-place bytes (written under `Durability::None` with no
    /// barrier of their own) it has not checked against the frame's in-place check: a power cut
    /// that kept the frame and lost some of the bytes recovers a torn object.
    pub const SKIP_IN_PLACE_CHECK: u32 = 16384;
    /// Under `Durability::None`, a flush writes committed frames into the heap after the
    /// barrier that covers a frame's unbarriered in-place bytes, but without the voucher frame
    /// that tells recovery so: a later frame's bytes over those in-place bytes then fail the
    /// check, and recovery cuts the log there while the heap holds later frames' bytes.
    pub const PUBLISH_BEFORE_VOUCHER: u32 = 32768;
    /// Recovery replays a frame whose in-place check it asked without first appending the
    /// voucher: replay can write later frames' bytes over the checked ones, and a crash during
    /// replay then makes the next recovery's check fail and cut the log under a half-replayed
    /// heap.
    pub const RECOVERY_REPLAY_BEFORE_VOUCHER: u32 = 65536;
    /// Recovery pads its vouchers without first zeroing the place where they end: a crashed
    /// writer's frame left there with the next txid then follows them in the log, and a
    /// recovery killed before its checkpoint lets the next one replay it without the torn
    /// frames before it.
    pub const RECOVERY_VOUCHERS_UNGUARDED: u32 = 131072;
    /// The writer writes (and barriers) the log-start witness before the generation's first
    /// frame is durable, at that frame's own commit: a crash before the frame's barrier then
    /// leaves a witness for a frame that never was durable, and recovery refuses an ordinary
    /// crash as damage.
    pub const WITNESS_BEFORE_DURABLE: u32 = 262144;
    /// A checkpoint after a superblock fault clears the log region and the witnesses in one
    /// step (one barrier) instead of three: a crash in between can leave a first sector of
    /// zeros beside stale frames that vouch for the frame it held, which the old superblock's
    /// recovery then refuses as damage.
    pub const SCRUB_IN_ONE_STEP: u32 = 524288;
    /// A close gives the log's blocks back before its checkpoint instead of after it: frames
    /// whose heap bytes are not durable yet read as zeros after a crash in between, and
    /// acknowledged transactions are lost.
    pub const LOG_RELEASE_BEFORE_CHECKPOINT: u32 = 1048576;
    /// The writer ignores readers in other processes: it puts frames into the file while one
    /// is pinned at an older state or is still reading the log, and empties the log under it.
    pub const FOREIGN_READERS_IGNORED: u32 = 2097152;
    /// After an open that kept the log's generation (it replayed frames without a checkpoint,
    /// or found none), the first commit appends its frame after them in that generation
    /// instead of checkpointing first: a stale frame of the crashed session that lies past
    /// the torn tail can then follow the new frame and replay as if it were committed.
    pub const KEPT_GENERATION_APPEND: u32 = 4194304;
    /// Recovery replays into the heap without first making the log's frames durable: a killed
    /// writer's last frames may be only in the page cache, and a power cut during or after
    /// the replay can keep the heap pages it wrote and lose those frames (a torn state).
    pub const RECOVERY_REPLAY_BEFORE_LOG_BARRIER: u32 = 8388608;
    /// Under `None`, private pages kept after a flush (they equal the file) are forgotten
    /// instead of dropped when the file's bytes under them are about to change (in-place
    /// bytes, compaction): the writer's mapping then hides the new bytes from the writer's
    /// transactions, and a commit that writes such a page again has the stale rest of it
    /// written back over them.
    pub const KEPT_PAGES_NOT_DROPPED: u32 = 16777216;
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
        // (`try_with`: a heap dropped in a thread-local destructor passes failpoints after this
        // thread-local may be gone; none is armed then.)
        if PANIC_AT
            .try_with(|p| p.borrow().as_deref() == Some(name))
            .unwrap_or(false)
        {
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
    /// `Durability::None`: barrier of the unsynced log, then private pages to the file (also
    /// under `Full`, when frames wait for a shared barrier: the writer barriers them itself).
    pub const FLUSH: u32 = 13;
    /// Checkpoint: heap barrier and superblock switch.
    pub const CHECKPOINT: u32 = 14;
    /// Group commit: inside the shared log barrier, outside the writer lock (other threads
    /// may be in any other phase meanwhile).
    pub const GROUP_BARRIER: u32 = 15;
    /// Compaction: holes punched in free space, the free tail cut (writer lock held).
    pub const COMPACT: u32 = 16;
    /// Number of phases.
    pub const COUNT: usize = 17;

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
        "flush (None; Full: frames awaiting a shared barrier)",
        "checkpoint",
        "group commit: shared log barrier",
        "compaction",
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

/// Enter a protocol phase: `phase!(APPLY)` calls `phase::enter(phase::APPLY)`.
///
/// The expansion carries `#[cfg(feature = "test-hooks")]`, evaluated in the *calling* crate: it
/// compiles to nothing unless that crate has a `test-hooks` feature and it is on, and that
/// feature must enable `txheap-recovery/test-hooks` (as txheap's does), which provides
/// `txheap_recovery::phase`. A caller without a `test-hooks` feature gets an `unexpected_cfgs`
/// warning. Use it as a statement.
///
/// ```
/// fn apply_ranges() {
///     txheap_recovery::phase!(APPLY); // no TXHEAP_PHASE_FILE: records nothing
/// }
/// apply_ranges();
/// ```
#[macro_export]
macro_rules! phase {
    ($p:ident) => {
        #[cfg(feature = "test-hooks")]
        $crate::phase::enter($crate::phase::$p);
    };
}

/// Pass a named crash point: `failpoint!("name")` calls `sabotage::failpoint("name")`, which
/// aborts the process the n-th time with `TXHEAP_FAILPOINT=name:n` in the environment (or panics
/// when `sabotage::panic_at` armed `name` on this thread).
///
/// The expansion carries `#[cfg(feature = "test-hooks")]`, evaluated in the *calling* crate: it
/// compiles to nothing unless that crate has a `test-hooks` feature and it is on, and that
/// feature must enable `txheap-recovery/test-hooks` (as txheap's does), which provides
/// `txheap_recovery::sabotage`. A caller without a `test-hooks` feature gets an
/// `unexpected_cfgs` warning. Use it as a statement.
///
/// ```
/// fn commit() {
///     txheap_recovery::failpoint!("commit.after_log"); // no TXHEAP_FAILPOINT: passes
/// }
/// commit();
/// ```
#[macro_export]
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "test-hooks")]
        $crate::sabotage::failpoint($name);
    };
}

#[cfg(feature = "test-hooks")]
pub(crate) fn sabotaged(bit: u32) -> bool {
    sabotage::active(bit)
}
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn sabotaged(_bit: u32) -> bool {
    false
}
#[cfg(not(feature = "test-hooks"))]
pub(crate) const REPLAY_OLD_GENERATION: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::REPLAY_OLD_GENERATION;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const SKIP_CHECKSUM: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::SKIP_CHECKSUM;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const SUPERBLOCK_BEFORE_HEAP_BARRIER: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::SUPERBLOCK_BEFORE_HEAP_BARRIER;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const SENTINEL_BEFORE_HEAP_BARRIER: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::SENTINEL_BEFORE_HEAP_BARRIER;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const SCRUB_IN_ONE_STEP: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::SCRUB_IN_ONE_STEP;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const IGNORE_DURABILITY_EVIDENCE: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::IGNORE_DURABILITY_EVIDENCE;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const SKIP_IN_PLACE_CHECK: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::SKIP_IN_PLACE_CHECK;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const RECOVERY_REPLAY_BEFORE_VOUCHER: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::RECOVERY_REPLAY_BEFORE_VOUCHER;
#[cfg(not(feature = "test-hooks"))]
pub(crate) const RECOVERY_REPLAY_BEFORE_LOG_BARRIER: u32 = 0;
#[cfg(feature = "test-hooks")]
pub(crate) use sabotage::RECOVERY_REPLAY_BEFORE_LOG_BARRIER;
