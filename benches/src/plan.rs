//! What is measured: the workloads, the table of cases (engine × workload, with each engine's
//! setting and how its child runs), how many operations each child does, and the goals.
//!
//! Adding an engine or a workload is adding rows to [`CASES`] (and, for a new workload, a
//! [`Workload`] variant and its counts).

use crate::args::ChildArgs;
pub use crate::args::{Metric, Workload};
use crate::engines::{limits, lmdb, pmdk, redb_engine, sqlite, txheap_engine, txheap_maps, Opener};
use crate::sample::Sample;
use crate::{readers, rnone, space, w4, w5, w6, BoxResult};

/// What a case is in its workload's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// txheap: the row every other row is compared with.
    Subject,
    /// Another store.
    Peer,
    /// A machine limit.
    Limit,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Subject => "subject",
            Role::Peer => "peer",
            Role::Limit => "limit",
        }
    }
}

/// How a case's child process runs.
#[derive(Clone, Copy)]
pub enum Run {
    /// `ops` transactions of one insert each, each one timed.
    Commits(Opener),
    /// One transaction of `ops` inserts, timed as a whole.
    OneTx(Opener),
    /// A measurement of its own.
    Custom(fn(&ChildArgs<'_>) -> BoxResult<Sample>),
}

/// A set-up child, run before the measuring child (not timed).
#[derive(Clone, Copy)]
pub struct Setup {
    /// Makes the data in the case's directory; `ops` is the amount (see [`Counts`]).
    pub run: fn(&ChildArgs<'_>) -> BoxResult<()>,
    /// Run before every round (the measurement consumes the data) or once per run.
    pub each_round: bool,
}

/// One engine in one workload.
#[derive(Clone, Copy)]
pub struct Case {
    /// Workload.
    pub workload: Workload,
    /// Engine name (unique within the workload).
    pub engine: &'static str,
    /// Subject, peer or limit.
    pub role: Role,
    /// The setting, in words.
    pub setting: &'static str,
    /// How the child measures.
    pub run: Run,
    /// A set-up child, if the data must exist before the measuring process starts.
    pub setup: Option<Setup>,
    /// Environment variables set for this case's children (all others of these are removed).
    pub env: &'static [(&'static str, &'static str)],
    /// At most [`Counts::capped`] operations per child, for a store too slow for the workload's
    /// count (its rate is still per operation, so it stays comparable; the table shows N per
    /// row).
    pub capped: bool,
}

/// Environment variables that any case may set; removed from every other child's environment.
pub const CONTROLLED_ENV: &[&str] = &["PMEM_IS_PMEM_FORCE"];

const fn case(
    workload: Workload,
    engine: &'static str,
    role: Role,
    setting: &'static str,
    run: Run,
) -> Case {
    Case {
        workload,
        engine,
        role,
        setting,
        run,
        setup: None,
        env: &[],
        capped: false,
    }
}

fn malloc(a: &ChildArgs<'_>) -> BoxResult<Sample> {
    limits::malloc(a.engine, a.workload.name(), a.ops)
}

fn memcpy(a: &ChildArgs<'_>) -> BoxResult<Sample> {
    limits::memcpy(a.engine, a.workload.name(), a.ops)
}

use Role::{Limit, Peer, Subject};
use Run::{Commits, Custom, OneTx};
use Workload::{
    RCommit, RNone, RScale, RStart, Space, W4Get, W4Load, W4PutFull, W4PutNone, W4Scan, W4Space,
    W5Open, W5Replay, W1, W2, W3, W6,
};

/// Every case, in the order each round runs them (A B C ... A B C ...).
pub static CASES: &[Case] = &[
    // W1: durable commits.
    case(
        W1,
        "txheap",
        Subject,
        "Durability::Full, default options (16 MiB log)",
        Commits(txheap_engine::full),
    ),
    case(
        W1,
        "lmdb",
        Peer,
        "heed 0.23, default flags (sync at commit)",
        Commits(lmdb::durable),
    ),
    case(
        W1,
        "redb",
        Peer,
        "redb 4.6, Durability::Immediate",
        Commits(redb_engine::immediate),
    ),
    case(
        W1,
        "sqlite",
        Peer,
        "rusqlite 0.41 bundled, WAL, synchronous=FULL",
        Commits(sqlite::full),
    ),
    Case {
        capped: true,
        ..case(
            W1,
            "pmdk",
            Peer,
            "libpmemobj 1.12 on a regular file (msync); N capped",
            Commits(pmdk::pool),
        )
    },
    case(
        W1,
        "limit-pwrite",
        Limit,
        "4 KiB in-place pwrite + fdatasync, preallocated file",
        Commits(limits::pwrite),
    ),
    case(
        W1,
        "limit-append",
        Limit,
        "4 KiB append pwrite + fdatasync",
        Commits(limits::append),
    ),
    case(
        W1,
        "limit-msync",
        Limit,
        "store into 1 page of MAP_SHARED + msync(MS_SYNC)",
        Commits(limits::msync),
    ),
    // W2: non-durable commits.
    case(
        W2,
        "txheap",
        Subject,
        "Durability::None, default options",
        Commits(txheap_engine::none),
    ),
    case(
        W2,
        "lmdb-writemap-nosync",
        Peer,
        "WRITE_MAP | NO_SYNC",
        Commits(lmdb::writemap_nosync),
    ),
    case(W2, "lmdb-nosync", Peer, "NO_SYNC", Commits(lmdb::nosync)),
    case(
        W2,
        "redb-none",
        Peer,
        "Durability::None",
        Commits(redb_engine::none),
    ),
    case(
        W2,
        "sqlite-off",
        Peer,
        "WAL, synchronous=OFF",
        Commits(sqlite::off),
    ),
    Case {
        env: &[("PMEM_IS_PMEM_FORCE", "1")],
        ..case(
            W2,
            "pmdk-forced",
            Peer,
            "libpmemobj with PMEM_IS_PMEM_FORCE=1 (cache flushes, no msync)",
            Commits(pmdk::pool),
        )
    },
    case(
        W2,
        "limit-malloc",
        Limit,
        "malloc(64) + first write, linked (volatile)",
        Custom(malloc),
    ),
    // W3: one transaction of N allocations.
    case(
        W3,
        "txheap",
        Subject,
        "Durability::Full, log_size 256 MiB",
        OneTx(txheap_engine::full_big_log),
    ),
    case(
        W3,
        "txheap-none",
        Peer,
        "txheap with Durability::None, log_size 256 MiB",
        OneTx(txheap_engine::none_big_log),
    ),
    case(W3, "lmdb", Peer, "default flags", OneTx(lmdb::durable)),
    case(
        W3,
        "redb",
        Peer,
        "Durability::Immediate",
        OneTx(redb_engine::immediate),
    ),
    case(
        W3,
        "sqlite",
        Peer,
        "WAL, synchronous=FULL",
        OneTx(sqlite::full),
    ),
    Case {
        capped: true,
        ..case(
            W3,
            "pmdk",
            Peer,
            "pmemobj_tx_alloc × N in one transaction on a regular file (about 2 msyncs per allocation, so N is capped)",
            OneTx(pmdk::pool),
        )
    },
    Case {
        env: &[("PMEM_IS_PMEM_FORCE", "1")],
        ..case(
            W3,
            "pmdk-forced",
            Peer,
            "the same with PMEM_IS_PMEM_FORCE=1 (not durable on this disk)",
            OneTx(pmdk::pool),
        )
    },
    case(
        W3,
        "limit-malloc",
        Limit,
        "N × malloc(64) + first write, linked",
        Custom(malloc),
    ),
    // W4: persistent maps.
    case(
        W4Load,
        "txheap",
        Subject,
        "PBTreeMap<u64, [u8; 64]>, Durability::Full, log_size 256 MiB",
        Custom(w4::measure_load),
    ),
    case(
        W4Load,
        "txheap-hash",
        Peer,
        "PHashMap<u64, [u8; 64]>, Durability::Full, log_size 256 MiB",
        Custom(w4::measure_load),
    ),
    case(
        W4Load,
        "lmdb",
        Peer,
        "heed 0.23, default flags, big-endian u64 keys",
        Custom(w4::measure_load),
    ),
    case(
        W4Load,
        "redb",
        Peer,
        "redb 4.6, Durability::Immediate, u64 keys",
        Custom(w4::measure_load),
    ),
    case(
        W4Load,
        "sqlite",
        Peer,
        "rusqlite 0.41 bundled, WAL, synchronous=FULL, INTEGER PRIMARY KEY",
        Custom(w4::measure_load),
    ),
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Get,
        "txheap",
        Subject,
        "PBTreeMap<u64, [u8; 64]>, Durability::Full, log_size 256 MiB",
        Custom(w4::measure_get),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Get,
        "txheap-hash",
        Peer,
        "PHashMap<u64, [u8; 64]>, Durability::Full, log_size 256 MiB",
        Custom(w4::measure_get),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Get,
        "lmdb",
        Peer,
        "heed 0.23, default flags, big-endian u64 keys",
        Custom(w4::measure_get),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Get,
        "redb",
        Peer,
        "redb 4.6, Durability::Immediate, u64 keys",
        Custom(w4::measure_get),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Get,
        "sqlite",
        Peer,
        "rusqlite 0.41 bundled, WAL, synchronous=FULL, INTEGER PRIMARY KEY",
        Custom(w4::measure_get),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Scan,
        "txheap",
        Subject,
        "PBTreeMap<u64, [u8; 64]>, Durability::Full, log_size 256 MiB",
        Custom(w4::measure_scan),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Scan,
        "txheap-hash",
        Peer,
        "PHashMap<u64, [u8; 64]>, Durability::Full, log_size 256 MiB",
        Custom(w4::measure_scan),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Scan,
        "lmdb",
        Peer,
        "heed 0.23, default flags, big-endian u64 keys",
        Custom(w4::measure_scan),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Scan,
        "redb",
        Peer,
        "redb 4.6, Durability::Immediate, u64 keys",
        Custom(w4::measure_scan),
    )
    },
    Case {
        setup: Some(Setup {
            run: w4::setup,
            each_round: false,
        }),
        ..case(
        W4Scan,
        "sqlite",
        Peer,
        "rusqlite 0.41 bundled, WAL, synchronous=FULL, INTEGER PRIMARY KEY",
        Custom(w4::measure_scan),
    )
    },
    case(
        W4Space,
        "txheap",
        Subject,
        "PBTreeMap<u64, [u8; 64]>, Durability::Full, default options (16 MiB log)",
        Custom(w4::measure_space),
    ),
    case(
        W4Space,
        "txheap-hash",
        Peer,
        "PHashMap<u64, [u8; 64]>, Durability::Full, default options (16 MiB log)",
        Custom(w4::measure_space),
    ),
    case(
        W4Space,
        "lmdb",
        Peer,
        "heed 0.23, default flags, big-endian u64 keys",
        Custom(w4::measure_space),
    ),
    case(
        W4Space,
        "redb",
        Peer,
        "redb 4.6, Durability::Immediate, u64 keys",
        Custom(w4::measure_space),
    ),
    case(
        W4Space,
        "sqlite",
        Peer,
        "rusqlite 0.41 bundled, WAL, synchronous=FULL, INTEGER PRIMARY KEY",
        Custom(w4::measure_space),
    ),
    // W4-put: one insert per transaction (W1 and W2 for maps).
    case(W4PutFull, "txheap", Subject, "PBTreeMap, Durability::Full, default options", Commits(txheap_maps::btree_full)),
    case(W4PutFull, "txheap-hash", Peer, "PHashMap, Durability::Full, default options", Commits(txheap_maps::hash_full)),
    case(W4PutFull, "lmdb", Peer, "heed 0.23, default flags (sync at commit)", Commits(lmdb::durable_random_keys)),
    case(W4PutFull, "redb", Peer, "redb 4.6, Durability::Immediate", Commits(redb_engine::immediate_random_keys)),
    case(W4PutFull, "sqlite", Peer, "WAL, synchronous=FULL", Commits(sqlite::full_random_keys)),
    case(W4PutFull, "limit-pwrite", Limit, "4 KiB in-place pwrite + fdatasync, preallocated file", Commits(limits::pwrite)),
    case(W4PutNone, "txheap", Subject, "PBTreeMap, Durability::None, default options", Commits(txheap_maps::btree_none)),
    case(W4PutNone, "txheap-hash", Peer, "PHashMap, Durability::None, default options", Commits(txheap_maps::hash_none)),
    case(W4PutNone, "lmdb-writemap-nosync", Peer, "WRITE_MAP | NO_SYNC", Commits(lmdb::writemap_nosync_random_keys)),
    case(W4PutNone, "redb-none", Peer, "Durability::None", Commits(redb_engine::none_random_keys)),
    case(W4PutNone, "sqlite-off", Peer, "WAL, synchronous=OFF", Commits(sqlite::off_random_keys)),
    // Readers beside a committing writer (issue 16).
    case(RCommit, "txheap", Subject, "Durability::Full; one reader holds a view throughout", Custom(readers::measure_commit)),
    case(RCommit, "txheap-no-reader", Peer, "Durability::Full; no reader", Custom(readers::measure_commit)),
    case(RCommit, "txheap-beside", Peer, "Durability::Full; a read-only handle beside the writer (another open of the file, as another process) holds a view throughout", Custom(readers::measure_commit)),
    case(RStart, "txheap", Subject, "Heap::read of one word; a writer commits (Full) meanwhile", Custom(readers::measure_start)),
    case(RStart, "txheap-beside", Peer, "the same read on a read-only handle beside the writer (another open of the file, as another process)", Custom(readers::measure_start)),
    case(RScale, "txheap", Subject, "4 reader threads; a writer commits (Full) meanwhile", Custom(readers::measure_scale)),
    case(RScale, "txheap-2-readers", Peer, "2 reader threads; a writer commits (Full) meanwhile", Custom(readers::measure_scale)),
    case(RScale, "txheap-1-reader", Peer, "1 reader thread; a writer commits (Full) meanwhile", Custom(readers::measure_scale)),
    case(RScale, "limit-4-readers", Limit, "4 threads read a plain Vec; a thread pwrites 4 KiB + fdatasync meanwhile", Custom(readers::measure_scale)),
    case(RScale, "limit-1-reader", Limit, "1 thread reads a plain Vec; a thread pwrites 4 KiB + fdatasync meanwhile", Custom(readers::measure_scale)),
    // W6: durable commits from many threads (issue 16: group commit).
    case(W6, "txheap", Subject, "8 threads, one heap, Durability::Full", Custom(w6::measure)),
    case(W6, "txheap-1-thread", Peer, "1 thread, Durability::Full", Custom(w6::measure)),
    case(W6, "txheap-2-threads", Peer, "2 threads, Durability::Full", Custom(w6::measure)),
    case(W6, "txheap-4-threads", Peer, "4 threads, Durability::Full", Custom(w6::measure)),
    case(W6, "txheap-16-threads", Peer, "16 threads, Durability::Full", Custom(w6::measure)),
    case(W6, "sqlite", Peer, "8 threads, a connection each; WAL, synchronous=FULL, BEGIN IMMEDIATE", Custom(w6::measure)),
    // W5: open and recovery.
    Case {
        setup: Some(Setup {
            run: w5::setup_open,
            each_round: false,
        }),
        ..case(
            W5Open,
            "txheap",
            Subject,
            "Heap::open, empty log",
            Custom(w5::measure_open),
        )
    },
    Case {
        setup: Some(Setup {
            run: w5::setup_open,
            each_round: false,
        }),
        ..case(
            W5Open,
            "txheap-check",
            Peer,
            "txheap::inspect::check (txheap check) of the same kind of heap",
            Custom(w5::measure_check),
        )
    },
    Case {
        setup: Some(Setup {
            run: w5::setup_replay,
            each_round: true,
        }),
        ..case(
            W5Replay,
            "txheap",
            Subject,
            "Heap::open replaying the log",
            Custom(w5::measure_replay),
        )
    },
    case(
        W5Replay,
        "limit-memcpy",
        Limit,
        "memcpy of 64 MiB buffers",
        Custom(memcpy),
    ),
    // Space: file bytes per live payload byte.
    case(
        Space,
        "txheap",
        Subject,
        "Durability::Full, default options (16 MiB log), N nodes in transactions of 1,000",
        Custom(space::fill),
    ),
    case(
        Space,
        "txheap-churn",
        Peer,
        "the same, then every other node freed and as many allocated again (1,000 per transaction)",
        Custom(space::churn),
    ),
    // R-none: one read pass right after W2's non-durable commits.
    case(
        RNone,
        "txheap",
        Subject,
        "Durability::None: N commits, then one heap.read walking the list",
        Custom(rnone::txheap),
    ),
    case(
        RNone,
        "txheap-flushed",
        Peer,
        "the same, with Heap::flush (untimed) before the read",
        Custom(rnone::txheap_flushed),
    ),
    case(
        RNone,
        "lmdb-writemap-nosync",
        Peer,
        "WRITE_MAP | NO_SYNC: N puts, then one read transaction's cursor over every entry",
        Custom(rnone::lmdb_writemap_nosync),
    ),
    case(
        RNone,
        "limit-list",
        Limit,
        "a walk of N Box-allocated 64-byte nodes linked in memory",
        Custom(rnone::limit),
    ),
];

/// The case for `engine` in `workload`.
pub fn find(workload: Workload, engine: &str) -> Option<&'static Case> {
    CASES
        .iter()
        .find(|c| c.workload == workload && c.engine == engine)
}

/// Operations per child (and data per set-up child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// W1 commits per child.
    pub w1: u64,
    /// W2 commits per child.
    pub w2: u64,
    /// W3 allocations in the one transaction.
    pub w3: u64,
    /// 64 MiB copies per memcpy child.
    pub memcpy: u64,
    /// 64-byte nodes in the W5 open heap (16 Mi = 1 GiB).
    pub open_nodes: u64,
    /// Log bytes the W5 replay set-up writes before stopping without a checkpoint.
    pub replay_log_bytes: u64,
    /// Live 64-byte nodes of the space workload.
    pub space_nodes: u64,
    /// Entries of the W4 maps (inserts, lookups, entries scanned).
    pub w4: u64,
    /// Operations per child for capped cases: durable PMDK on a regular file issues several
    /// `msync`s per transaction (W1) and about two per `pmemobj_tx_alloc` (W3), so the
    /// workloads' counts would take from minutes to hours.
    pub capped: u64,
}

impl Counts {
    /// The full run (documented in benches/README.md).
    pub const FULL: Counts = Counts {
        w1: 2_000,
        w2: 100_000,
        w3: 1_000_000,
        memcpy: 16,
        open_nodes: 16 << 20,
        replay_log_bytes: 64 << 20,
        space_nodes: 1_000_000,
        w4: 1_000_000,
        capped: 500,
    };
    /// `--quick`: fewer operations per child and a 256 MiB heap for W5-open; same rounds.
    pub const QUICK: Counts = Counts {
        w1: 200,
        w2: 20_000,
        w3: 200_000,
        memcpy: 4,
        open_nodes: 4 << 20,
        replay_log_bytes: 64 << 20,
        space_nodes: 200_000,
        w4: 200_000,
        capped: 100,
    };

    /// Operations for a measuring child of `case`.
    pub fn ops(&self, case: &Case) -> u64 {
        let n = match (case.workload, case.engine) {
            (_, "limit-memcpy") => self.memcpy,
            (W1, _) => self.w1,
            (W2, _) => self.w2,
            (W3, _) => self.w3,
            (W5Open, _) | (W5Replay, _) => 1,
            (Space, _) => self.space_nodes,
            (W4Load | W4Get | W4Scan | W4Space, _) => self.w4,
            (W4PutFull, _) => self.w1,
            (W4PutNone, _) => self.w2,
            (RNone, _) => self.w2,
            (RCommit, _) => self.w1,
            (RStart, _) => self.w2,
            (RScale, _) => 1,
            (W6, _) => 4 * self.w1,
        };
        if case.capped {
            n.min(self.capped)
        } else {
            n
        }
    }

    /// Amount of data for a set-up child of `case`.
    pub fn setup_ops(&self, case: &Case) -> u64 {
        match case.workload {
            W5Open => self.open_nodes,
            W5Replay => self.replay_log_bytes,
            W4Get | W4Scan => self.w4,
            _ => 0,
        }
    }
}

/// What a goal asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// txheap's figure ÷ the other row's is at least this.
    RatioAtLeast(f64),
    /// The row's median p99 latency is at most this many times the other row's.
    P99AtMostTimes(f64),
    /// The row's median p99.9 latency is at most this many microseconds.
    P999AtMostUs(f64),
    /// txheap's median time is at most this many seconds.
    SecsAtMost(f64),
    /// txheap's median throughput is at least this many bytes per second.
    BytesPerSecAtLeast(f64),
    /// The row's median file bytes per live payload byte is at most this.
    BytesPerByteAtMost(f64),
    /// The row's median peak resident memory (VmHWM) is at most the other row's (same N).
    PeakMemoryNotAbove,
    /// The row's figure (lower is better: bytes per byte) is at most the other row's.
    NotAbove,
    /// The row's median barriers per commit (its own I/O counters) is at most this.
    BarriersPerCommitAtMost(f64),
    /// The subject's figure ÷ the other row's (a scaling: many threads ÷ one) is at least this
    /// fraction of the machine's own scaling, `limit` ÷ `limit_base` (two limit rows).
    ScalingOfLimitAtLeast {
        /// The fraction of the limit's scaling asked.
        fraction: f64,
        /// The limit row doing what the subject does.
        limit: &'static str,
        /// The limit row doing what the other row does.
        limit_base: &'static str,
    },
}

/// A goal of the issue (measured against, not tuned to).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// Workload.
    pub workload: Workload,
    /// The row the goal is about (its workload's subject, `txheap`, or another txheap row).
    pub subject: &'static str,
    /// The row compared with, for ratio goals.
    pub versus: Option<&'static str>,
    /// The target.
    pub target: Target,
}

const fn ratio(workload: Workload, versus: &'static str, at_least: f64) -> Goal {
    Goal {
        workload,
        subject: "txheap",
        versus: Some(versus),
        target: Target::RatioAtLeast(at_least),
    }
}

/// The goals.
pub static GOALS: &[Goal] = &[
    ratio(W1, "limit-pwrite", 0.9),
    ratio(W1, "sqlite", 1.0),
    ratio(W1, "lmdb", 1.5),
    ratio(W1, "redb", 1.5),
    ratio(W1, "pmdk", 5.0),
    ratio(W2, "lmdb-writemap-nosync", 2.0),
    ratio(W2, "pmdk-forced", 3.0),
    ratio(W3, "lmdb", 2.0),
    ratio(W3, "pmdk", 2.0),
    // The same PMDK goal against its non-durable figure: durable PMDK on a regular file is
    // bound by its msyncs, which makes the first comparison say little about allocation.
    ratio(W3, "pmdk-forced", 2.0),
    ratio(W3, "limit-malloc", 1.0 / 3.0),
    Goal {
        subject: "txheap-none",
        ..ratio(W3, "limit-malloc", 0.5)
    },
    Goal {
        workload: W3,
        subject: "txheap",
        versus: Some("lmdb"),
        target: Target::PeakMemoryNotAbove,
    },
    Goal {
        workload: W5Open,
        subject: "txheap",
        versus: None,
        target: Target::SecsAtMost(0.010),
    },
    Goal {
        workload: W5Open,
        subject: "txheap-check",
        versus: None,
        target: Target::SecsAtMost(1.0),
    },
    Goal {
        workload: W5Replay,
        subject: "txheap",
        versus: None,
        target: Target::BytesPerSecAtLeast(500e6),
    },
    // W4: persistent maps (issue 15).
    ratio(W4Get, "lmdb", 1.5),
    ratio(W4Get, "redb", 1.0),
    ratio(W4Get, "sqlite", 1.0),
    Goal {
        subject: "txheap-hash",
        ..ratio(W4Get, "lmdb", 3.0)
    },
    Goal {
        subject: "txheap-hash",
        ..ratio(W4Get, "redb", 1.0)
    },
    Goal {
        subject: "txheap-hash",
        ..ratio(W4Get, "sqlite", 1.0)
    },
    ratio(W4Scan, "lmdb", 1.0),
    // W4-put: W1's and W2's ratios to the peers.
    ratio(W4PutFull, "limit-pwrite", 0.9),
    ratio(W4PutFull, "sqlite", 1.0),
    ratio(W4PutFull, "lmdb", 1.5),
    ratio(W4PutFull, "redb", 1.5),
    ratio(W4PutNone, "lmdb-writemap-nosync", 2.0),
    ratio(W4Load, "lmdb", 1.5),
    Goal {
        subject: "txheap-hash",
        ..ratio(W4Load, "lmdb", 1.5)
    },
    Goal {
        workload: W4Space,
        subject: "txheap",
        versus: Some("lmdb"),
        target: Target::NotAbove,
    },
    Goal {
        workload: W4Space,
        subject: "txheap-hash",
        versus: Some("lmdb"),
        target: Target::NotAbove,
    },
    Goal {
        workload: Space,
        subject: "txheap",
        versus: None,
        target: Target::BytesPerByteAtMost(1.10),
    },
    Goal {
        workload: Space,
        subject: "txheap-churn",
        versus: None,
        target: Target::BytesPerByteAtMost(1.10),
    },
    // Readers (issue 16).
    Goal {
        workload: RCommit,
        subject: "txheap",
        versus: Some("txheap-no-reader"),
        target: Target::P99AtMostTimes(1.2),
    },
    Goal {
        workload: RStart,
        subject: "txheap",
        versus: None,
        target: Target::P999AtMostUs(50.0),
    },
    ratio(RScale, "txheap-1-reader", 1.8),
    // The same 4 ÷ 1 for plain reads of a Vec beside a syncing writer: this machine's ceiling
    // (two cores, one of them partly taken by the writer's barriers).
    Goal {
        workload: RScale,
        subject: "txheap",
        versus: Some("txheap-1-reader"),
        target: Target::ScalingOfLimitAtLeast {
            fraction: 0.9,
            limit: "limit-4-readers",
            limit_base: "limit-1-reader",
        },
    },
    // Group commit (issue 16).
    ratio(W6, "txheap-1-thread", 4.0),
    Goal {
        subject: "txheap-16-threads",
        ..ratio(W6, "txheap-1-thread", 6.0)
    },
    ratio(W6, "sqlite", 3.0),
    Goal {
        workload: W6,
        subject: "txheap",
        versus: None,
        target: Target::BarriersPerCommitAtMost(0.25),
    },
];

/// The ratio goal of `workload` against `versus`, if any.
pub fn ratio_goal(workload: Workload, versus: &str) -> Option<f64> {
    GOALS.iter().find_map(|g| match g.target {
        Target::RatioAtLeast(r)
            if g.workload == workload && g.subject == "txheap" && g.versus == Some(versus) =>
        {
            Some(r)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_has_exactly_one_subject_and_unique_engines() {
        for w in Workload::ALL {
            let cases: Vec<_> = CASES.iter().filter(|c| c.workload == w).collect();
            assert_eq!(
                cases.iter().filter(|c| c.role == Role::Subject).count(),
                1,
                "{}",
                w.name()
            );
            for (i, a) in cases.iter().enumerate() {
                assert!(cases[i + 1..].iter().all(|b| b.engine != a.engine));
            }
        }
    }

    #[test]
    fn every_ratio_goal_names_a_case_and_workload_names_parse() {
        for g in GOALS {
            if let Some(v) = g.versus {
                assert!(find(g.workload, v).is_some(), "{} {v}", g.workload.name());
            }
            if let Target::ScalingOfLimitAtLeast {
                limit, limit_base, ..
            } = g.target
            {
                for l in [limit, limit_base] {
                    let c = find(g.workload, l).unwrap_or_else(|| panic!("{l}"));
                    assert_eq!(c.role, Role::Limit, "{l}");
                }
            }
        }
        for w in Workload::ALL {
            assert_eq!(Workload::parse(&w.name().to_lowercase()), Some(w));
        }
        assert_eq!(Workload::parse("W4"), None);
    }

    #[test]
    fn quick_counts_are_smaller_and_nonzero() {
        let (q, f) = (Counts::QUICK, Counts::FULL);
        assert!(q.w1 > 0 && q.w1 <= f.w1 && q.w2 <= f.w2 && q.w3 <= f.w3);
        for c in CASES {
            assert!(q.ops(c) > 0 && f.ops(c) > 0);
        }
    }
}
