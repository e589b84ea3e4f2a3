//! The workloads and the arguments a child process runs with (shared by the plan, the
//! children and W5; this module imports none of them).

use std::path::Path;

/// Arguments of a child process.
#[derive(Debug, Clone)]
pub struct ChildArgs<'a> {
    /// Engine name.
    pub engine: &'a str,
    /// Workload.
    pub workload: Workload,
    /// Operations to time (or, for a set-up child, the amount of data to make).
    pub ops: u64,
    /// The child's directory on the benchmark filesystem.
    pub dir: &'a Path,
}

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One durable transaction per 64-byte node (or key-value pair), 1 thread.
    W1,
    /// W1 with non-durable commits.
    W2,
    /// One transaction of 1,000,000 allocations (or inserts).
    W3,
    /// Opening a 1 GiB txheap heap whose log is empty.
    W5Open,
    /// Opening a txheap heap whose log holds 64 MiB of committed frames (replay).
    W5Replay,
    /// Heap file bytes per live payload byte of 1,000,000 live 64-byte nodes.
    Space,
    /// Persistent maps: N random inserts of 8-byte keys and 64-byte values in one transaction.
    W4Load,
    /// N random point lookups in a map of N entries, one reader.
    W4Get,
    /// An ordered scan of a map of N entries.
    W4Scan,
    /// File bytes per payload byte of a map of N entries.
    W4Space,
    /// One insert per durable transaction into a map.
    W4PutFull,
    /// One insert per non-durable transaction into a map.
    W4PutNone,
    /// One pass reading back every item right after W2's non-durable commits.
    RNone,
    /// W1 while one reader holds a read view for the whole run (and without).
    RCommit,
    /// New readers' wait to begin while a writer commits.
    RStart,
    /// Reads per second of 4 reader threads (and of 1) while a writer commits.
    RScale,
    /// Durable small transactions committed by several threads at once.
    W6,
}

/// How a workload's figure is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Operations per second (higher is better).
    Rate,
    /// Seconds for the whole operation (lower is better).
    Time,
    /// Bytes per second (higher is better).
    ByteRate,
    /// File bytes per live payload byte (lower is better).
    BytesPerByte,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 17] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4Load,
        Workload::W4Get,
        Workload::W4Scan,
        Workload::W4Space,
        Workload::W4PutFull,
        Workload::W4PutNone,
        Workload::W5Open,
        Workload::W5Replay,
        Workload::Space,
        Workload::RNone,
        Workload::RCommit,
        Workload::RStart,
        Workload::RScale,
        Workload::W6,
    ];

    /// Short name, used on the command line and in `RESULT` lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W5Open => "W5-open",
            Workload::W5Replay => "W5-replay",
            Workload::Space => "space",
            Workload::W4Load => "W4-load",
            Workload::W4Get => "W4-get",
            Workload::W4Scan => "W4-scan",
            Workload::W4Space => "W4-space",
            Workload::W4PutFull => "W4-put-full",
            Workload::W4PutNone => "W4-put-none",
            Workload::RNone => "R-none",
            Workload::RCommit => "R-commit",
            Workload::RStart => "R-start",
            Workload::RScale => "R-scale",
            Workload::W6 => "W6",
        }
    }

    /// The workload named `s` (case-insensitive).
    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s))
    }

    /// One-line description.
    pub fn title(self) -> &'static str {
        match self {
            Workload::W1 => {
                "durable commits, 1 thread: each transaction allocates a 64-byte node and links it from the root (key-value stores: insert an 8-byte key with a 64-byte value)"
            }
            Workload::W2 => "W1 with non-durable commits (each store's fastest setting)",
            Workload::W3 => {
                "one transaction of N allocations of 64 bytes, linked (key-value stores: N inserts in one transaction)"
            }
            Workload::W5Open => {
                "Heap::open of a txheap heap holding 64-byte nodes (1 GiB of them in the full run, 256 MiB with --quick) with an empty log, in a fresh process, page cache warm"
            }
            Workload::W5Replay => {
                "open of a txheap heap whose log holds 64 MiB of committed W1-style frames (scan, log barrier, replay; the checkpoint is left to the first commit or the close), fresh process"
            }
            Workload::Space => {
                "heap file bytes per live payload byte: N live 64-byte nodes made in transactions of 1,000 (1,000,000 in the full run), and after freeing every other node and allocating as many again"
            }
            Workload::W4Load => {
                "persistent maps: N inserts of 8-byte keys with 64-byte values, in random key order, in one durable transaction (1,000,000 in the full run)"
            }
            Workload::W4Get => {
                "N random point lookups in a map of N entries (8-byte keys, 64-byte values), one reader, page cache warm"
            }
            Workload::W4Scan => {
                "a scan of every entry of a map of N entries, in key order (the hash map: in table order), one reader"
            }
            Workload::W4PutFull => {
                "one insert (8-byte key, 64-byte value, random keys) per durable transaction into a map of growing size, 1 thread (W1 for maps)"
            }
            Workload::W4PutNone => {
                "W4-put-full with non-durable commits (each store's fastest setting; W2 for maps)"
            }
            Workload::W4Space => {
                "the store's file bytes per payload byte (72 per entry) after N random inserts in transactions of 1,000, default options"
            }
            Workload::RNone => {
                "reading back right after non-durable commits: N transactions of one 64-byte item each (W2, untimed, in the measuring process), then one pass reading every item (txheap: one read walking the list; LMDB: one read transaction's cursor; limit: a list of Box nodes)"
            }
            Workload::RCommit => {
                "W1 (durable commits, 1 thread) while another thread holds one read view from before the first commit to after the last; txheap-no-reader: the same without it"
            }
            Workload::RStart => {
                "N reads (begin, read one word, end), each timed, while another thread commits durable transactions back to back; the figure compared is p99.9 of a read's time"
            }
            Workload::W6 => {
                "durable commits from several threads at once (W1's transaction, each thread its own list): txheap with 1, 2, 4, 8 (the subject) and 16 threads on one heap; SQLite WAL FULL with 8 threads, a connection each"
            }
            Workload::RScale => {
                "read closures summing 64 random entries of an 8 MiB array, for 2 s, by 4 reader threads (txheap) or 1 (txheap-1-reader), while another thread commits durable transactions"
            }
        }
    }

    /// The figure compared between engines.
    pub fn metric(self) -> Metric {
        match self {
            Workload::W1
            | Workload::W2
            | Workload::W3
            | Workload::W4Load
            | Workload::W4Get
            | Workload::W4Scan
            | Workload::W4PutFull
            | Workload::W4PutNone
            | Workload::RNone
            | Workload::RCommit
            | Workload::RStart
            | Workload::RScale
            | Workload::W6 => Metric::Rate,
            Workload::W4Space => Metric::BytesPerByte,
            Workload::W5Open => Metric::Time,
            Workload::W5Replay => Metric::ByteRate,
            Workload::Space => Metric::BytesPerByte,
        }
    }

    /// Unit of [`Metric::Rate`] figures.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::W1 | Workload::W2 => "tx/s",
            Workload::W3 => "allocs/s",
            Workload::W5Open => "opens/s",
            Workload::W5Replay => "frames/s",
            Workload::Space => "nodes/s",
            Workload::W4Load => "inserts/s",
            Workload::W4Get => "lookups/s",
            Workload::W4Scan | Workload::W4Space => "entries/s",
            Workload::W4PutFull | Workload::W4PutNone => "tx/s",
            Workload::RCommit | Workload::W6 => "tx/s",
            Workload::RStart | Workload::RScale => "reads/s",
            Workload::RNone => "items/s",
        }
    }
}
