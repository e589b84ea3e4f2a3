//! `txheap`: check, inspect, dump, recover and copy txheap heap files.
//!
//! Every subcommand is in `txheap --help`; `txheap SUBCOMMAND --help` says what it does. The
//! read-only ones (`info`, `stats`, `check`, `blocks`, `dump-log`, `recover --dry-run`) never write the
//! file, take `--json` (the schema is in docs/CLI.md), and share the exit codes of fsck:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `check`, the file is clean |
//! | 1 | `check`: sound, but a writable open has work to do (`txheap recover` does it) |
//! | 4 | the file is damaged (`check`'s verdict, or another subcommand refused it as damaged) |
//! | 8 | operational or usage error: no such file, not a txheap file, locked by a writer, I/O |

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use txheap::inspect::{self, CheckReport, LogEnd, LogReport};
use txheap::{Error, Heap, Options, Stats};

/// The version of the `--json` documents' schema (docs/CLI.md); every document carries it.
const SCHEMA: u32 = 1;

/// The first error writing standard output (a full disk, `> /dev/full`), kept so that the
/// command ends with exit 8 and says so. `println!` panics on such an error (exit 101, which is
/// none of the documented codes, and for `check` hid its verdict: found by review).
static OUTPUT_ERROR: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// `println!` that records a write error instead of panicking (see [`OUTPUT_ERROR`]); once
/// one write failed, the rest are skipped.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

fn write_line(args: std::fmt::Arguments<'_>) {
    let mut failed = OUTPUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    if failed.is_none() {
        if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
            *failed = Some(e);
        }
    }
}

/// Flush standard output; the first write error of the run, if any.
fn output_error() -> Option<std::io::Error> {
    let mut failed = OUTPUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    if failed.is_none() {
        if let Err(e) = std::io::stdout().flush() {
            *failed = Some(e);
        }
    }
    failed.take()
}

#[derive(Parser)]
#[command(
    name = "txheap",
    version,
    about = "Check, inspect, dump, recover and copy txheap heap files",
    after_help = "Exit codes: 0 success (check: clean), 1 check: recoverable by `txheap recover`, \
                  4 damaged, 8 operational or usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Superblock, log and space figures of a heap (read-only; replays the log in memory only)
    Info {
        /// The heap file
        file: PathBuf,
        /// Print one JSON document (schema in docs/CLI.md)
        #[arg(long)]
        json: bool,
    },
    /// Space per size class: runs, blocks used and free, fragmentation; largest free extent;
    /// log use (read-only)
    Stats {
        /// The heap file
        file: PathBuf,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Verify both superblocks, every log frame, the heap header, every chunk-table entry and
    /// every run bitmap (read-only). Exit 0 clean, 1 recoverable, 4 damaged, 8 not checked
    Check {
        /// The heap file
        file: PathBuf,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
        /// The progress bar on standard error: `auto` draws it on a terminal once the walk has
        /// taken 200 ms, `always` on a terminal from the start, `never` not at all (it is never
        /// drawn when standard error is not a terminal)
        #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
        progress: ProgressMode,
    },
    /// List every allocated block (file offset and size) of one committed state, from the
    /// allocator's tables: a way back to objects whatever their type (read-only; beside a
    /// writer that holds the file, on Linux)
    Blocks {
        /// The heap file
        file: PathBuf,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
    },
    /// List the log's committed frames and their ranges, and where and why the log ends
    /// (read-only)
    DumpLog {
        /// The heap file
        file: PathBuf,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
        /// Print every frame's ranges, not only their count and bytes
        #[arg(long)]
        ranges: bool,
    },
    /// Copy a heap to a new file: one committed state, built under a hidden temporary name
    /// and linked to DST only once complete and durable (reads SRC as Heap::open_read_only
    /// does: beside a writer in another process on Linux, the state its one read sees; where
    /// that is refused as locked, a running program copies its own heap with Heap::backup_to)
    Copy {
        /// The heap file to copy (never written)
        src: PathBuf,
        /// The new file (must not exist)
        dst: PathBuf,
        /// Leave free space out: free chunks and unused pages become holes, a free tail is cut
        #[arg(long)]
        compact: bool,
    },
    /// Give free space back to the filesystem in place: punch holes in free chunks and in the
    /// unused pages after large objects, cut a free tail (crash-safe; needs the file to itself)
    Compact {
        /// The heap file
        file: PathBuf,
        /// Wait up to this many seconds for another handle (a running program, another
        /// command) to close the file, instead of failing at once as locked
        #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_wait)]
        wait: Duration,
    },
    /// Open for writing (replay committed frames, discard a torn tail, checkpoint), then close
    Recover {
        /// The heap file
        file: PathBuf,
        /// Say what a recovery would do, and change nothing
        #[arg(long, conflicts_with = "salvage")]
        dry_run: bool,
        /// Accept the loss of the transactions after a damaged durable log frame (which plain
        /// `recover` refuses, naming the damage)
        #[arg(long)]
        salvage: bool,
        /// Print one JSON document (with --dry-run)
        #[arg(long, requires = "dry_run")]
        json: bool,
        /// Wait up to this many seconds for another handle to close the file, instead of
        /// failing at once as locked (not with --dry-run, which reads beside a writer)
        #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_wait, conflicts_with = "dry_run")]
        wait: Duration,
    },
}

/// `--wait SECS`: a non-negative number of seconds (fractions allowed).
fn parse_wait(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "{s:?}: the wait must be a finite number of seconds, 0 or more"
        ));
    }
    // A finite wait too long for a Duration (about 1.8e19 s) is a wait without end, as
    // `Options::lock_wait` takes one too long to add to now (a review found it refused with
    // the message above).
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// When `check` draws its progress bar.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProgressMode {
    Auto,
    Always,
    Never,
}

/// A subcommand's failure: the exit code and the message (already naming the file).
struct Failure(u8, String);

/// The exit code for an error that stopped a subcommand: damage 4, anything else 8.
fn failure(file: &Path, e: Error) -> Failure {
    let code = match e {
        Error::Corrupt { .. } | Error::Truncated { .. } | Error::LogDamaged { .. } => 4,
        _ => 8,
    };
    Failure(code, format!("{}: {e}", file.display()))
}

fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value always serialises")
    );
}

fn stats_json(file: &Path, s: &Stats) -> Value {
    json!({
        "schema": SCHEMA,
        "file": file.display().to_string(),
        "file_len": s.file_len,
        "max_size": s.max_size,
        "filesystem": s.filesystem,
        "volatile_storage": s.volatile_storage,
        "superblock": {
            "seq": s.superblock_seq,
            "log_generation": s.log_generation,
            "next_txid": s.next_txid,
            "damage": s.superblock_damage,
        },
        "log": { "size": s.log_size, "used": s.log_used },
        "heap": {
            "bytes": s.heap_bytes,
            "used_bytes": s.used_bytes,
            "free_bytes": s.free_bytes,
            "largest_free_extent": s.largest_free_extent,
        },
    })
}

fn classes_json(s: &Stats) -> Value {
    Value::Array(
        s.classes
            .iter()
            .filter(|c| c.runs > 0)
            .map(|c| {
                json!({
                    "block_size": c.block_size,
                    "runs": c.runs,
                    "used_blocks": c.used_blocks,
                    "free_blocks": c.free_blocks,
                    "used_bytes": c.used_blocks * c.block_size,
                    "free_bytes": c.free_blocks * c.block_size,
                    "fragmentation": fragmentation(c.used_blocks, c.free_blocks),
                })
            })
            .collect(),
    )
}

/// The share of a class's blocks that are free: space its runs hold but no object uses.
fn fragmentation(used: u64, free: u64) -> f64 {
    if used + free == 0 {
        0.0
    } else {
        free as f64 / (used + free) as f64
    }
}

fn print_info(file: &Path, s: &Stats) {
    outln!("file            {}", file.display());
    outln!(
        "file length     {} bytes (max_size {})",
        s.file_len,
        s.max_size
    );
    outln!(
        "filesystem      {}{}",
        s.filesystem,
        if s.volatile_storage {
            " (in memory only: nothing survives a power cut or reboot, whatever the durability)"
        } else {
            ""
        }
    );
    if let Some(damage) = &s.superblock_damage {
        outln!("WARNING         damaged superblock ({damage}); the other slot was used");
    }
    outln!(
        "superblock      seq {}, log generation {}, next txid {}",
        s.superblock_seq,
        s.log_generation,
        s.next_txid
    );
    outln!(
        "log             {} of {} bytes hold committed frames not yet checkpointed",
        s.log_used,
        s.log_size
    );
    outln!(
        "heap            {} bytes in chunks: {} used, {} free, largest free extent {}",
        s.heap_bytes,
        s.used_bytes,
        s.free_bytes,
        s.largest_free_extent
    );
}

fn info(file: &Path, json: bool, classes: bool) -> Result<u8, Failure> {
    let (s, live) = inspect::stats(file).map_err(|e| failure(file, e))?;
    if json {
        let mut v = stats_json(file, &s);
        v["live"] = json!(live);
        if classes {
            v["classes"] = classes_json(&s);
        }
        print_json(&v);
        return Ok(0);
    }
    print_info(file, &s);
    if let Some(txid) = live {
        outln!("live            a writer holds the file: figures as of transaction {txid}");
    }
    let list: Vec<_> = s.classes.iter().filter(|c| c.runs > 0).collect();
    if classes {
        outln!("size classes    block   runs       used       free  fragmentation");
        for c in list {
            outln!(
                "                {:>5} {:>6} {:>10} {:>10}  {:>12.1}%",
                c.block_size,
                c.runs,
                c.used_blocks,
                c.free_blocks,
                100.0 * fragmentation(c.used_blocks, c.free_blocks)
            );
        }
    } else if !list.is_empty() {
        outln!("size classes    block  runs  used  free");
        for c in list {
            outln!(
                "                {:>5} {:>5} {:>5} {:>5}",
                c.block_size,
                c.runs,
                c.used_blocks,
                c.free_blocks
            );
        }
    }
    Ok(0)
}

fn blocks(file: &Path, json: bool) -> Result<u8, Failure> {
    let heap = Heap::open_read_only(file).map_err(|e| failure(file, e))?;
    let (blocks, txid) = heap
        .read(|r| Ok((r.allocations()?, r.txid())))
        .map_err(|e| failure(file, e))?;
    heap.close().map_err(|e| failure(file, e))?;
    let bytes: u64 = blocks.iter().map(|&(_, n)| n).sum();
    if json {
        print_json(&json!({
            "schema": SCHEMA,
            "file": file.display().to_string(),
            "txid": txid,
            "count": blocks.len(),
            "bytes": bytes,
            "blocks": blocks,
        }));
        return Ok(0);
    }
    // One buffered writer for what may be millions of lines (a write per line otherwise).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = (|| {
        writeln!(
            out,
            "{}: {} allocated blocks, {bytes} bytes, as of transaction {txid}",
            file.display(),
            blocks.len()
        )?;
        writeln!(out, "          offset        size")?;
        for (at, n) in blocks {
            writeln!(out, "{at:>16} {n:>11}")?;
        }
        out.flush()
    })();
    written.map_err(|e| Failure(8, format!("{}: writing the list: {e}", file.display())))?;
    Ok(0)
}

fn end_json(end: &LogEnd) -> Value {
    match end {
        LogEnd::Clean { offset, detail } => {
            json!({ "kind": "clean", "offset": offset, "detail": detail })
        }
        LogEnd::Torn { offset, detail } => {
            json!({ "kind": "torn", "offset": offset, "detail": detail })
        }
        LogEnd::Damaged {
            offset,
            txid,
            voucher_offset,
            voucher_txid,
            last_txid,
        } => json!({
            "kind": "damaged",
            "offset": offset,
            "txid": txid,
            "voucher_offset": voucher_offset,
            "voucher_txid": voucher_txid,
            "proof": txheap::inspect::proof_name(*voucher_offset, *voucher_txid),
            "last_txid": last_txid,
        }),
    }
}

fn end_text(end: &LogEnd) -> String {
    match end {
        LogEnd::Clean { offset, detail } => format!("ends cleanly at offset {offset}: {detail}"),
        LogEnd::Torn { offset, detail } => format!(
            "ends with a torn frame at offset {offset} ({detail}): a commit cut short by a \
             crash; recovery discards it"
        ),
        LogEnd::Damaged {
            offset,
            txid,
            voucher_offset,
            voucher_txid,
            last_txid,
        } => format!(
            "DAMAGED frame at offset {offset} (transaction {txid}; {} proves it durable): an \
             open would lose transactions {txid}..={last_txid}",
            txheap::inspect::proof_name(*voucher_offset, *voucher_txid)
        ),
    }
}

fn log_json(file: &Path, log: &LogReport, ranges: bool) -> Value {
    json!({
        "schema": SCHEMA,
        "file": file.display().to_string(),
        "superblock": { "seq": log.superblock_seq, "offset": log.superblock_offset },
        "generation": log.generation,
        "log_offset": log.log_offset,
        "log_size": log.log_size,
        "first_txid": log.first_txid,
        "range_bytes": log.range_bytes(),
        "frames": log.frames.iter().map(|f| {
            let mut v = json!({
                "offset": f.offset,
                "txid": f.txid,
                "durable_txid": f.durable_txid,
                "len": f.len,
                "range_count": f.ranges.len(),
                "range_bytes": f.ranges.iter().map(|r| r.1).sum::<u64>(),
                "in_place_pieces": f.in_place.len(),
                "in_place_bytes": f.in_place.iter().map(|r| r.1).sum::<u64>(),
            });
            if ranges {
                v["ranges"] = f.ranges.iter().map(|&(o, l)| json!([o, l])).collect();
            }
            v
        }).collect::<Vec<_>>(),
        "end": end_json(&log.end),
        "live": log.live,
    })
}

fn dump_log(file: &Path, json: bool, ranges: bool) -> Result<u8, Failure> {
    let log = inspect::read_log(file).map_err(|e| failure(file, e))?;
    if json {
        print_json(&log_json(file, &log, ranges));
        return Ok(0);
    }
    outln!(
        "superblock seq {} (offset {}), generation {}, log at {} ({} bytes), first txid {}",
        log.superblock_seq,
        log.superblock_offset,
        log.generation,
        log.log_offset,
        log.log_size,
        log.first_txid
    );
    if let Some(txid) = log.live {
        outln!(
            "live: a writer holds the file; its log as of transaction {txid}, read from a copy \
             of its metadata (these frames are the writer's, not yet checkpointed)"
        );
    }
    for f in &log.frames {
        let extra = if !f.in_place.is_empty() {
            format!(
                "; an in-place check over {} pieces ({} bytes written in place)",
                f.in_place.len(),
                f.in_place.iter().map(|r| r.1).sum::<u64>()
            )
        } else if f.ranges.is_empty() {
            "; empty (a voucher)".to_string()
        } else {
            String::new()
        };
        outln!(
            "frame txid {} at {}: {} bytes, durable_txid {}, {} ranges ({} bytes){extra}",
            f.txid,
            f.offset,
            f.len,
            f.durable_txid,
            f.ranges.len(),
            f.ranges.iter().map(|r| r.1).sum::<u64>()
        );
        if ranges {
            for (o, l) in &f.ranges {
                outln!("    {o:>14} +{l}");
            }
        }
    }
    outln!(
        "{} committed frame(s); the log {}",
        log.frames.len(),
        end_text(&log.end)
    );
    Ok(0)
}

/// The progress bar for `check`: drawn on a terminal once the walk has taken longer than a
/// moment, never otherwise.
struct Progress {
    bar: ProgressBar,
    start: Instant,
    /// Draw once the walk has taken this long (`None`: never).
    after: Option<Duration>,
    shown: bool,
}

impl Progress {
    fn new(mode: ProgressMode) -> Progress {
        let after = match mode {
            _ if !std::io::stderr().is_terminal() => None,
            ProgressMode::Auto => Some(Duration::from_millis(200)),
            ProgressMode::Always => Some(Duration::ZERO),
            ProgressMode::Never => None,
        };
        Progress {
            bar: ProgressBar::hidden(),
            start: Instant::now(),
            after,
            shown: false,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        let Some(after) = self.after else {
            return;
        };
        if !self.shown && self.start.elapsed() >= after && (done < total || after.is_zero()) {
            self.bar.set_style(
                ProgressStyle::with_template(
                    "checking run bitmaps {bar:40} {pos}/{len} runs ({eta} left)",
                )
                .expect("a valid template"),
            );
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_length(total);
        self.bar.set_position(done);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            // The last state stays on the screen: how many runs were walked, and how long.
            self.bar.set_style(
                ProgressStyle::with_template(
                    "checked run bitmaps {bar:40} {pos}/{len} runs in {elapsed_precise}",
                )
                .expect("a valid template"),
            );
            self.bar.finish();
        }
    }
}

fn check_json(r: &CheckReport) -> Value {
    json!({
        "schema": SCHEMA,
        "file": r.path.display().to_string(),
        "verdict": r.verdict.name(),
        "exit_code": r.verdict.exit_code(),
        "live": r.live,
        "findings": r.findings.iter().map(|f| json!({
            "verdict": f.verdict.name(),
            "offset": f.offset,
            "what": f.what,
        })).collect::<Vec<_>>(),
        "log": r.log.as_ref().map(|l| json!({
            "frames": l.frames.len(),
            "range_bytes": l.range_bytes(),
            "end": end_json(&l.end),
        })),
        "stats": r.stats.as_ref().map(|s| {
            let mut v = stats_json(&r.path, s);
            v["classes"] = classes_json(s);
            v
        }),
    })
}

fn check(file: &Path, json: bool, progress: ProgressMode) -> Result<u8, Failure> {
    let report = {
        let mut bar = Progress::new(if json { ProgressMode::Never } else { progress });
        inspect::check(file, &mut |done, total| bar.update(done, total))
            .map_err(|e| failure(file, e))?
    };
    if json {
        print_json(&check_json(&report));
    } else {
        for f in &report.findings {
            outln!("{}: {f}", file.display());
        }
        let what = report.stats.as_ref().map_or(String::new(), |s| {
            format!(
                ", {} bytes in chunks ({} used, {} free), {} runs walked",
                s.heap_bytes,
                s.used_bytes,
                s.free_bytes,
                s.classes.iter().map(|c| c.runs).sum::<u64>()
            )
        });
        if let Some(txid) = report.live {
            outln!(
                "{}: live: a writer holds the file; checked a copy of its metadata as of \
                 transaction {txid}",
                file.display()
            );
        }
        outln!("{}: {}{what}", file.display(), report.verdict.name());
    }
    Ok(report.verdict.exit_code())
}

fn copy(src: &Path, dst: &Path, compact: bool) -> Result<u8, Failure> {
    let heap = Heap::open_read_only(src).map_err(|e| failure(src, e))?;
    // An open reads no run bitmap; the walk of `stats` reads them all, so that a heap `check`
    // calls damaged is refused here too (exit 4), not copied as it is (found by review).
    heap.stats().map_err(|e| failure(src, e))?;
    let r = if compact {
        heap.compact_to(dst)
    } else {
        heap.backup_to(dst)
    }
    .map_err(|e| failure(dst, e))?;
    outln!(
        "{} -> {}: transaction {}, {} chunks, {} bytes ({} bytes of heap written{})",
        src.display(),
        dst.display(),
        r.txid,
        r.chunk_count,
        r.file_len,
        r.heap_bytes_written,
        if compact { ", free space left out" } else { "" }
    );
    Ok(0)
}

fn compact(file: &Path, wait: Duration) -> Result<u8, Failure> {
    let blocks = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
    };
    // The file as the command found it: measured before the open, which takes the log's blocks
    // again that a clean close gave back (a review found every run claiming them as given
    // back). With `--wait`, as found when the command started.
    let before = blocks(file);
    let heap = Heap::open(file, Options::new().lock_wait(wait)).map_err(|e| failure(file, e))?;
    // As `copy`: the run bitmaps, which an open does not read, are checked before the file is
    // changed (a review found a heap `check` calls damaged compacted in place, exit 0).
    heap.stats().map_err(|e| failure(file, e))?;
    let r = heap.compact().map_err(|e| failure(file, e))?;
    heap.close().map_err(|e| failure(file, e))?;
    outln!(
        "{}: {} bytes punched, {} chunks cut; length {} -> {}, disk blocks {} -> {} bytes",
        file.display(),
        r.punched_bytes,
        r.chunks_cut,
        r.file_len_before,
        r.file_len_after,
        before,
        blocks(file)
    );
    Ok(0)
}

fn recover(file: &Path, salvage: bool, wait: Duration) -> Result<u8, Failure> {
    let heap = Heap::open(file, Options::new().salvage(salvage).lock_wait(wait))
        .map_err(|e| failure(file, e))?;
    // The open leaves replayed frames in the log (the first commit or the close checkpoints):
    // checkpoint here, so that the superblock reported is the one the file keeps.
    heap.checkpoint().map_err(|e| failure(file, e))?;
    let s = heap.stats().map_err(|e| failure(file, e))?;
    heap.close().map_err(|e| failure(file, e))?;
    outln!(
        "{}: recovered; superblock seq {}, next txid {}",
        file.display(),
        s.superblock_seq,
        s.next_txid
    );
    if let Some((first, last)) = s.salvaged {
        outln!(
            "{}: salvaged: a damaged log frame cut off transactions {first}..={last} ({} dropped)",
            file.display(),
            last - first + 1
        );
    }
    Ok(0)
}

fn recover_dry_run(file: &Path, json: bool) -> Result<u8, Failure> {
    // What `recover` would do, from the check `txheap check` runs: the log's frames, and whether
    // the open would refuse the file (a damaged durable frame, a damaged heap header or chunk
    // table as replay would leave them, a file shorter than its heap). (A review found the log
    // read alone: "nothing to replay", exit 0, for files that `recover` refused.)
    let report = inspect::check(file, &mut |_, _| {}).map_err(|e| failure(file, e))?;
    if report.live.is_some() {
        // Held for writing: `recover` would be refused as `recover` is, and the frames in the
        // log are the running writer's (a review found "would replay", exit 0, here).
        return Err(failure(
            file,
            Error::Locked {
                path: file.to_path_buf(),
            },
        ));
    }
    let refusal = report
        .findings
        .iter()
        .find(|f| f.verdict == inspect::Verdict::Damaged);
    let empty = Vec::new();
    let frames = report.log.as_ref().map_or(&empty, |l| &l.frames);
    let end = report.log.as_ref().map(|l| &l.end);
    let log_damaged = matches!(end, Some(LogEnd::Damaged { .. }));
    let first = frames.first().map(|f| f.txid);
    let last = frames.last().map(|f| f.txid);
    let range_bytes = report.log.as_ref().map_or(0, LogReport::range_bytes);
    if json {
        print_json(&json!({
            "schema": SCHEMA,
            "file": file.display().to_string(),
            "replay": {
                "frames": frames.len(),
                "first_txid": first,
                "last_txid": last,
                "range_bytes": range_bytes,
            },
            "discard_torn_tail": matches!(end, Some(LogEnd::Torn { .. })),
            "refused": refusal.is_some(),
            "refusal": refusal.map(|f| json!({ "offset": f.offset, "what": f.what })),
            "end": end.map(end_json),
        }));
    } else {
        match (first, last) {
            (Some(a), Some(b)) => outln!(
                "{}: would replay {} committed frame(s), transactions {a}..={b} ({range_bytes} \
                 bytes of ranges)",
                file.display(),
                frames.len(),
            ),
            _ => outln!("{}: nothing to replay", file.display()),
        }
        if let Some(end) = end {
            outln!("{}: the log {}", file.display(), end_text(end));
        }
        match refusal {
            Some(_) if log_damaged => outln!(
                "{}: recover would refuse the file (damaged durable frame); `recover --salvage` \
                 would keep the {} committed frame(s) before it and drop the rest",
                file.display(),
                frames.len()
            ),
            Some(f) => outln!(
                "{}: recover would refuse the file: {}{}",
                file.display(),
                f.what,
                f.offset
                    .map_or(String::new(), |o| format!(" (at offset {o})"))
            ),
            None => {}
        }
    }
    Ok(if refusal.is_some() { 4 } else { 0 })
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so a write to a closed pipe (`txheap blocks FILE | head`) is an
    // EPIPE error, which `println!` turns into a panic. Restore the default that C programs
    // and other Unix tools have: the process ends quietly.
    // SAFETY: the first thing main does, before any other thread exists; setting a signal's
    // action to SIG_DFL installs no handler and touches no memory of this program.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and succeed; a usage error is exit 8, as fsck's.
            let code = if e.use_stderr() { 8 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // What a failed write of the report says: the file it was about, and for a command that
    // changed a file, that the change itself is done.
    let (about, done) = match &cli.command {
        Command::Info { file, .. }
        | Command::Stats { file, .. }
        | Command::Check { file, .. }
        | Command::Blocks { file, .. }
        | Command::DumpLog { file, .. }
        | Command::Recover {
            file,
            dry_run: true,
            ..
        } => (file.clone(), ""),
        Command::Copy { dst, .. } => (dst.clone(), " (the copy itself is complete)"),
        Command::Compact { file, .. } => (file.clone(), " (the compaction itself is complete)"),
        Command::Recover { file, .. } => (file.clone(), " (the recovery itself is complete)"),
    };
    let result = match cli.command {
        Command::Info { file, json } => info(&file, json, false),
        Command::Stats { file, json } => info(&file, json, true),
        Command::Check {
            file,
            json,
            progress,
        } => check(&file, json, progress),
        Command::Blocks { file, json } => blocks(&file, json),
        Command::DumpLog { file, json, ranges } => dump_log(&file, json, ranges),
        Command::Copy { src, dst, compact } => copy(&src, &dst, compact),
        Command::Compact { file, wait } => compact(&file, wait),
        Command::Recover {
            file,
            dry_run: true,
            json,
            ..
        } => recover_dry_run(&file, json),
        Command::Recover {
            file,
            salvage,
            wait,
            ..
        } => recover(&file, salvage, wait),
    };
    let result = match (result, output_error()) {
        (Ok(_), Some(e)) => Err(Failure(
            8,
            format!("{}: writing the output: {e}{done}", about.display()),
        )),
        (result, _) => result,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            // (Not `eprintln!`, which panics when standard error cannot be written: exit 101
            // instead of the documented code; found by review.)
            let _ = writeln!(std::io::stderr(), "txheap: {msg}");
            ExitCode::from(code)
        }
    }
}
