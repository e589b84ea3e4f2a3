//! Every bound the heap enforces, in one place, named with the qualifier last (`ALIGN_MAX`,
//! `ROOT_LEN_MAX`). docs/ARCHITECTURE.md's limits table lists them with the error each gives.
//!
//! Owns: the numbers. May not: depend on any other module of the crate.

/// Bytes of a chunk: the allocator's unit of space (runs and large extents are whole chunks).
pub(crate) use txheap_recovery::CHUNK_SIZE;

/// The largest root object, in bytes: the size of the root area.
///
/// ```
/// assert_eq!(txheap::ROOT_LEN_MAX, 4096);
/// ```
pub const ROOT_LEN_MAX: u64 = 4096;

/// The largest alignment a stored type may have (`Error::UnsupportedAlignment` above it).
pub(crate) const ALIGN_MAX: u64 = 64;

/// The largest `max_size` and `log_size` the format addresses: offsets stay far from overflow.
pub(crate) const FILE_SIZE_MAX: u64 = 1 << 56;

/// Committed frames that the writer's and the registry's lists of frames the file does not hold
/// yet have room for from the start (under `None` such a list grows by one per commit until a
/// flush: about 60,000 small commits fill the default log). Doubling a list of tens of
/// thousands of entries in the middle of a commit cost 200 to 400 µs each time (W2).
pub(crate) const FRAMES_RESERVED: usize = 1 << 16;

/// Under `Durability::None`, flush private pages to the file once this many are held.
pub(crate) const PENDING_PAGES_MAX: usize = 16384;

/// Under `Durability::None`, private pages kept after a flush wrote them to the file (they
/// equal it: the next commits to those pages take no copy-on-write fault); past this many, a
/// flush drops them all (docs/ARCHITECTURE.md section 3, step 6).
pub(crate) const KEPT_PAGES_MAX: usize = 16384;

/// Under `Durability::None`, committed frames the file does not hold beyond which a flush is
/// run by a reader that finds the writer lock free (docs/ARCHITECTURE.md section 11, step 8).
/// Until a flush, the file may not take these frames, and a reader takes them from its overlay:
/// after 100,000 small commits the first read decoded them all (74 ms), and every read of an
/// object they wrote composed a copy (1.9 µs against 7 ns from the mapping). A flush's cost is
/// the `msync` of the log written since the last one (7.1 ms for W2's 13.6 MB on the benches'
/// disk); a read after 4,096 small commits took 1.2 ms with the flush, 2.1 ms without.
pub(crate) const READER_FLUSH_FRAMES: u64 = 4096;

/// When a flush for readers leaves [`READER_FLUSH_FRAMES`] frames held back (by older readers,
/// or an in-place check pending), readers do not try the writer lock again for this long: a
/// retry per read would make every reader thread write the writer lock's cache line.
pub(crate) const READER_FLUSH_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Group commit: the file gets durable frames once this many are held back (merged, newest
/// winning: a range that every commit rewrites, such as the root, is written once per batch).
/// Writing them at every commit cost three `pwrite`s per commit on the writer lock, which
/// every other committer waits for.
pub(crate) const PUBLISH_BATCH: usize = 32;

/// Group commit: the longest the flusher waits for threads in transactions, and threads just
/// acknowledged, to append their frames before it starts a barrier without them.
pub(crate) const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(100);

/// Growth step: the heap grows by at least this many chunks (2 MiB), or
/// 1/[`GROW_FRACTION`] of its size up to [`GROW_CHUNKS_MAX`].
pub(crate) const GROW_CHUNKS_MIN: u64 = 8;

/// Growth step as a fraction of the heap: 1/16, so the file runs at most about 6% ahead of the
/// data (a quarter, before, left 1,000,000 live 64-byte objects in a heap region 1.20x their
/// bytes; each step is one `fallocate`, so 4x as many steps cost nothing measurable).
pub(crate) const GROW_FRACTION: u64 = 16;

/// Growth step cap: 1024 chunks (256 MiB), so a large heap's file runs at most that far ahead
/// of its data.
pub(crate) const GROW_CHUNKS_MAX: u64 = 1024;

/// Temporary names a new file's build (`open::publish_new_file`) tries past those that exist
/// already (left by crashed processes whose ids this one reuses).
pub(crate) const TEMP_NAME_TRIES: usize = 10_000;

/// Bytes of the destination's name kept in a temporary file's name
/// (`.NAME.txheap-KIND-PID-N`): room for the rest under the usual `NAME_MAX` of 255.
pub(crate) const TEMP_STEM_MAX: usize = 100;
