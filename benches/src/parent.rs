//! The parent side: check the machine, run every case of every workload as a separate child
//! process, round after round in alternation (A B C … A B C …), parse the children's `RESULT`
//! lines, and print the tables (markdown), the ratios and the goals; optionally write the SVG
//! chart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::chart::{self, Bar};
use crate::plan::{self, Case, Counts, Goal, Metric, Role, Target, Workload, CASES, GOALS};
use crate::sample::{median, Sample};
use crate::BoxResult;

/// The parent's command-line options.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick`: fewer operations per child.
    pub quick: bool,
    /// Rounds per workload (at least 5).
    pub rounds: usize,
    /// Where to write the SVG chart.
    pub svg: Option<PathBuf>,
    /// Directory on the filesystem to measure (a temporary directory is made inside).
    pub dir: Option<PathBuf>,
    /// Only these workloads (all when empty and W7 is not asked for).
    pub only: Vec<Workload>,
    /// W7's settings, when `--only` names W7 (it never runs otherwise).
    pub w7: Option<crate::w7::Config>,
}

/// Fewest rounds allowed.
pub const MIN_ROUNDS: usize = 5;

/// All samples of one case.
struct Row {
    case: &'static Case,
    samples: Vec<Sample>,
}

impl Row {
    fn med(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(f).collect();
        median(&v)
    }

    fn range(&self, f: impl Fn(&Sample) -> f64) -> (f64, f64) {
        self.samples
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            })
    }

    /// The compared figure of one sample.
    fn figure(metric: Metric, s: &Sample) -> f64 {
        match metric {
            Metric::Rate => s.rate(),
            Metric::Time => s.secs,
            Metric::ByteRate => s.byte_rate(),
            Metric::BytesPerByte => s.file_len.unwrap_or(0) as f64 / s.bytes.max(1) as f64,
        }
    }

    /// Median of the compared figure over rounds.
    fn value(&self) -> f64 {
        let m = self.case.workload.metric();
        self.med(|s| Some(Row::figure(m, s))).unwrap_or(f64::NAN)
    }
}

/// Filesystem type of the mount holding `path`, from /proc/self/mounts (longest mount point
/// that is a prefix of the canonical path).
pub fn filesystem_of(path: &Path) -> BoxResult<(String, String)> {
    let canon = path.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut best: Option<(String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let (dev, mnt, fstype) = (f[0], f[1].replace("\\040", " "), f[2]);
        if canon.starts_with(&mnt) && best.as_ref().is_none_or(|(m, _)| mnt.len() >= m.len()) {
            best = Some((mnt, format!("{fstype} on {dev}")));
        }
    }
    best.ok_or_else(|| format!("no mount found for {}", canon.display()).into())
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The current UTC date and time, `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    utc_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// A count: an integer, with thousands separators from 1000 on.
pub fn fmt_count(x: f64) -> String {
    if x.abs() >= 1000.0 {
        fmt_num(x)
    } else {
        format!("{x:.0}")
    }
}

/// A number with thousands separators (>= 1000) or 3 significant digits.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "-".to_string();
    }
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if x < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_figure(workload: Workload, x: f64) -> String {
    match workload.metric() {
        Metric::Rate => format!("{} {}", fmt_num(x), workload.unit()),
        Metric::Time => format!("{} ms", fmt_num(x * 1e3)),
        Metric::ByteRate => format!("{} MB/s", fmt_num(x / 1e6)),
        Metric::BytesPerByte => format!("{x:.3} B/B"),
    }
}

/// A figure of `metric` in the unit its table's min – max column uses.
fn in_table_unit(metric: Metric, x: f64) -> String {
    match metric {
        Metric::Time => fmt_num(x * 1e3),
        Metric::ByteRate => fmt_num(x / 1e6),
        Metric::Rate => fmt_num(x),
        Metric::BytesPerByte => format!("{x:.3}"),
    }
}

fn spawn(exe: &Path, mode: &str, case: &Case, ops: u64, dir: &Path) -> BoxResult<Option<Sample>> {
    let mut cmd = Command::new(exe);
    cmd.arg(mode)
        .arg(case.engine)
        .arg(case.workload.name())
        .arg("--ops")
        .arg(ops.to_string())
        .arg("--dir")
        .arg(dir);
    for var in plan::CONTROLLED_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in case.env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fail = |why: &str| -> Box<dyn std::error::Error> {
        format!(
            "child `{mode} {} {}` {why}\n--- its stderr ---\n{}--- its stdout ---\n{}",
            case.engine,
            case.workload.name(),
            stderr,
            stdout
        )
        .into()
    };
    if !out.status.success() {
        return Err(fail(&format!("failed ({})", out.status)));
    }
    if mode == "--setup" {
        if !stdout.lines().any(|l| l.trim() == "SETUP ok") {
            return Err(fail("printed no `SETUP ok` line"));
        }
        for line in stderr.lines() {
            eprintln!("    {line}");
        }
        return Ok(None);
    }
    let sample = stdout
        .lines()
        .find_map(Sample::parse)
        .ok_or_else(|| fail("printed no RESULT line"))?;
    if sample.engine != case.engine || sample.workload != case.workload.name() {
        return Err(fail("printed a RESULT line for another case"));
    }
    // A measuring child's own notes, lines that start with its workload's name and a colon
    // (W5-replay's open and close times), go into the run's log, indented; the rest of its
    // stderr (libraries' chatter) stays out.
    let tag = format!("{}: ", case.workload.name());
    for line in stderr.lines().filter(|l| l.starts_with(&tag)) {
        eprintln!("    {line}");
    }
    Ok(Some(sample))
}

/// Run everything and print the report.
pub fn run(cfg: &Config) -> BoxResult<()> {
    if cfg.rounds < MIN_ROUNDS {
        return Err(format!("--rounds must be at least {MIN_ROUNDS}").into());
    }
    let counts = if cfg.quick {
        Counts::QUICK
    } else {
        Counts::FULL
    };
    // `--only W7` alone runs no other workload.
    let all = cfg.only.is_empty() && cfg.w7.is_none();
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| all || cfg.only.contains(w))
        .collect();
    let cases: Vec<&'static Case> = CASES
        .iter()
        .filter(|c| workloads.contains(&c.workload))
        .collect();

    // A missing peer is an error before anything runs, not a silent skip.
    if cases.iter().any(|c| c.engine.starts_with("pmdk")) {
        crate::sys::Pmem::load()?;
    }

    let base = cfg.dir.clone().unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&base)?;
    let (mount, fs) = filesystem_of(&base)?;
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        return Err(format!(
            "{} is on {fs}: fdatasync there measures nothing; pass --dir DIR on a real disk",
            base.display()
        )
        .into());
    }
    if let Some(w7) = &cfg.w7 {
        crate::w7::preflight(w7, &base)?;
    }
    let work = tempfile::Builder::new()
        .prefix("txheap-bench-")
        .tempdir_in(&base)?;
    let exe = std::env::current_exe()?;

    let command: Vec<String> = std::env::args().collect();
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let mem = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb / (1 << 20) as f64));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# txheap benchmark results\n");
    println!("- date: {}", utc_now());
    println!("- machine: {cpus} CPUs ({cpu}), {mem} RAM, kernel {kernel}");
    let source = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("?".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    println!("- txheap source: git {source} (the tree this binary was built from)");
    println!(
        "- filesystem: {fs} (mounted at {mount}), files in {}",
        work.path().display()
    );
    if workloads.is_empty() {
        println!(
            "- command: `{}` (W7 only: one round, each phase a separate process)",
            command.join(" ")
        );
    } else {
        println!(
            "- command: `{}` ({} run, {} rounds, each case a separate process, cases alternated within each round)",
            command.join(" "),
            if cfg.quick { "quick" } else { "full" },
            cfg.rounds
        );
        println!(
            "- counts per child: W1 {} commits, W2 {} commits, W3 {} allocations, W5-open heap {} nodes, W5-replay log {} MiB, memcpy {} × 64 MiB",
            fmt_num(counts.w1 as f64),
            fmt_num(counts.w2 as f64),
            fmt_num(counts.w3 as f64),
            fmt_num(counts.open_nodes as f64),
            counts.replay_log_bytes >> 20,
            counts.memcpy
        );
    }
    if let Some(w7) = &cfg.w7 {
        println!("- {}", crate::w7::describe(w7)?);
    }
    println!();

    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for &w in &workloads {
        let wcases: Vec<&'static Case> =
            cases.iter().copied().filter(|c| c.workload == w).collect();
        let mut wrows: Vec<Row> = wcases
            .iter()
            .map(|&case| Row {
                case,
                samples: Vec::new(),
            })
            .collect();
        // Set-ups needed once per run.
        for case in &wcases {
            if case.setup.is_some_and(|s| !s.each_round) {
                let dir = work.path().join(format!("{}-{}", w.name(), case.engine));
                std::fs::create_dir_all(&dir)?;
                eprintln!("[{}] set-up for {} ...", w.name(), case.engine);
                spawn(&exe, "--setup", case, counts.setup_ops(case), &dir)?;
            }
        }
        for round in 0..cfg.rounds {
            for (i, case) in wcases.iter().enumerate() {
                let shared = case.setup.is_some_and(|s| !s.each_round);
                let dir = if shared {
                    work.path().join(format!("{}-{}", w.name(), case.engine))
                } else {
                    let d = work
                        .path()
                        .join(format!("{}-{}-r{round}", w.name(), case.engine));
                    std::fs::create_dir_all(&d)?;
                    d
                };
                if case.setup.is_some_and(|s| s.each_round) {
                    spawn(&exe, "--setup", case, counts.setup_ops(case), &dir)?;
                }
                let s = spawn(&exe, "--child", case, counts.ops(case), &dir)?
                    .ok_or("child printed nothing")?;
                eprintln!(
                    "[{} round {}/{}] {:<22} {:>16}  p50 {:>8} us  p99 {:>8} us  ({:.1} s elapsed)",
                    w.name(),
                    round + 1,
                    cfg.rounds,
                    case.engine,
                    fmt_figure(w, Row::figure(w.metric(), &s)),
                    s.p50_us.map_or("-".into(), fmt_num),
                    s.p99_us.map_or("-".into(), fmt_num),
                    started.elapsed().as_secs_f64()
                );
                wrows[i].samples.push(s);
                if !shared {
                    std::fs::remove_dir_all(&dir)?;
                }
            }
        }
        print_workload(w, &wrows);
        rows.extend(wrows);
    }

    let bars = if workloads.is_empty() {
        Vec::new()
    } else {
        print_goals(&workloads, &rows)
    };
    if let Some(w7) = &cfg.w7 {
        crate::w7::run(w7, &exe, work.path())?;
    }
    if workloads.is_empty() {
        println!("\nTotal time {:.0} s.", started.elapsed().as_secs_f64());
    } else {
        println!(
            "\nTotal time {:.0} s. Ratios are txheap's median ÷ the row's median (higher is better for txheap); \
             median/min/max are over rounds; p50/p99 are per-operation latencies inside each child, median over rounds.",
            started.elapsed().as_secs_f64()
        );
    }
    if cfg.svg.is_some() && bars.is_empty() {
        println!("No chart written: only W7 ran, and W7 has no chart.");
    } else if let Some(path) = &cfg.svg {
        let title = format!(
            "txheap ÷ peer or limit ({} run, {}, {cpus} CPUs, {fs})",
            if cfg.quick { "quick" } else { "full" },
            utc_now()
        );
        chart::write_svg(path, &title, &bars)?;
        println!("Chart written to {}", path.display());
    }
    Ok(())
}

fn subject_of(rows: &[Row], w: Workload) -> Option<&Row> {
    rows.iter()
        .find(|r| r.case.workload == w && r.case.role == Role::Subject)
}

fn print_workload(w: Workload, rows: &[Row]) {
    let subject = subject_of(rows, w).map(Row::value);
    let n = rows.first().map_or(0, |r| r.samples.len());
    println!("## {} — {}\n", w.name(), w.title());
    println!("{n} rounds; N = operations timed per child.\n");
    println!("| engine | role | setting | N | median | min – max | median secs | p50 µs | p99 µs | txheap ÷ this | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let m = w.metric();
        let (lo, hi) = r.range(|s| Row::figure(m, s));
        let v = r.value();
        let ratio = match (r.case.role, subject, m) {
            (Role::Subject, _, _) | (_, _, Metric::Time | Metric::BytesPerByte) | (_, None, _) => {
                "—".to_string()
            }
            (_, Some(sv), _) => format!("{:.2}x", sv / v),
        };
        let goal = match (plan::ratio_goal(w, r.case.engine), subject) {
            (Some(g), Some(sv)) => {
                format!("≥ {g:.2}x: {}", if sv / v >= g { "met" } else { "not met" })
            }
            _ => String::new(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} – {} | {} | {} | {} | {} | {} |",
            r.case.engine,
            r.case.role.name(),
            r.case.setting.replace('|', "\\|"),
            r.med(|s| Some(s.ops as f64)).map_or("-".into(), fmt_count),
            fmt_figure(w, v),
            in_table_unit(m, lo),
            in_table_unit(m, hi),
            r.med(|s| Some(s.secs))
                .map_or("-".into(), |x| format!("{x:.3}")),
            r.med(|s| s.p50_us).map_or("-".into(), fmt_num),
            r.med(|s| s.p99_us).map_or("-".into(), fmt_num),
            ratio,
            goal
        );
    }
    if w == Workload::W5Replay {
        if let Some(s) = subject_of(rows, w) {
            let frames = s.med(|x| Some(x.ops as f64)).unwrap_or(0.0);
            let bytes = s.med(|x| Some(x.bytes as f64)).unwrap_or(0.0);
            println!(
                "\nReplayed log: {} frames, {:.1} MiB ({:.0} bytes per frame), median over rounds.",
                fmt_num(frames),
                bytes / (1 << 20) as f64,
                bytes / frames.max(1.0)
            );
        }
    }
    if w == Workload::W5Open {
        if let Some(s) = subject_of(rows, w) {
            let bytes = s.med(|x| Some(x.bytes as f64)).unwrap_or(0.0);
            println!("\nHeap file: {:.0} MiB.", bytes / (1 << 20) as f64);
        }
    }
    if w == Workload::W3 {
        print_peak_memory(rows);
    }
    if w == Workload::Space {
        println!("\n| engine | live nodes | payload | file length | file allocated | allocated ÷ payload |");
        println!("|---|---|---|---|---|---|");
        let mib = |x: f64| format!("{:.1} MiB", x / (1 << 20) as f64);
        for r in rows {
            let payload = r.med(|x| Some(x.bytes as f64)).unwrap_or(f64::NAN);
            let alloc = r
                .med(|x| x.file_alloc.map(|v| v as f64))
                .unwrap_or(f64::NAN);
            println!(
                "| {} | {} | {} | {} | {} | {:.3} |",
                r.case.engine,
                r.med(|x| Some(x.ops as f64)).map_or("-".into(), fmt_count),
                mib(payload),
                mib(r.med(|x| x.file_len.map(|v| v as f64)).unwrap_or(f64::NAN)),
                mib(alloc),
                alloc / payload
            );
        }
    }
    println!();
}

/// W3's peak resident memory per live payload byte (N × 64 bytes), every row.
fn print_peak_memory(rows: &[Row]) {
    println!("\nPeak resident memory of each child (`VmHWM`: anonymous and file pages, the mapped store included), median over rounds; capped rows did fewer allocations, so their figure per byte is mostly the process itself.\n");
    println!("| engine | N | VmHWM | per live payload byte |");
    println!("|---|---|---|---|");
    for r in rows {
        let n = r.med(|x| Some(x.ops as f64)).unwrap_or(f64::NAN);
        let hwm = r.med(|x| x.hwm.map(|v| v as f64)).unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.1} MiB | {:.2} |",
            r.case.engine,
            fmt_count(n),
            hwm / (1 << 20) as f64,
            hwm / (n * 64.0)
        );
    }
}

fn row_of<'a>(rows: &'a [Row], w: Workload, engine: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.case.workload == w && r.case.engine == engine)
}

/// A scaling goal's two figures: the subject's row ÷ its `versus` row, and `limit` ÷
/// `limit_base` (None when a row is missing).
fn scalings(rows: &[Row], g: &Goal, limit: &str, limit_base: &str) -> Option<(f64, f64)> {
    let value = |engine: &str| row_of(rows, g.workload, engine).map(Row::value);
    let own = value(g.subject)? / value(g.versus?)?;
    Some((own, value(limit)? / value(limit_base)?))
}

/// Print the goals table; return the chart's bars (every ratio, with its goal if any).
fn print_goals(workloads: &[Workload], rows: &[Row]) -> Vec<Bar> {
    let mut bars = Vec::new();
    for &w in workloads {
        let Some(subject) = subject_of(rows, w) else {
            continue;
        };
        if w.metric() == Metric::Time {
            continue;
        }
        for r in rows
            .iter()
            .filter(|r| r.case.workload == w && r.case.role != Role::Subject)
        {
            // Right of 1 is txheap better: for bytes per byte (space) lower is better, so
            // the row's figure over txheap's (a review found those bars drawn backwards).
            let ratio = if w.metric() == Metric::BytesPerByte {
                r.value() / subject.value()
            } else {
                subject.value() / r.value()
            };
            bars.push(Bar {
                label: format!("{} vs {}", w.name(), r.case.engine),
                ratio,
                goal: plan::ratio_goal(w, r.case.engine),
                limit: r.case.role == Role::Limit,
            });
        }
    }
    // Absolute goals as bars too: goal ÷ measured for times, measured ÷ goal for rates.
    for g in GOALS.iter().filter(|g| workloads.contains(&g.workload)) {
        let Some(sv) = row_of(rows, g.workload, g.subject).map(Row::value) else {
            continue;
        };
        let (label, ratio) = match g.target {
            Target::SecsAtMost(x) => (
                format!(
                    "{} {}: {} ms ÷ its time",
                    g.workload.name(),
                    g.subject,
                    fmt_num(x * 1e3)
                ),
                x / sv,
            ),
            Target::BytesPerSecAtLeast(x) => (
                format!("{}: MB/s ÷ {} MB/s", g.workload.name(), fmt_num(x / 1e6)),
                sv / x,
            ),
            Target::BytesPerByteAtMost(x) => (
                format!(
                    "{} {}: {x:.2} ÷ file bytes per byte",
                    g.workload.name(),
                    g.subject
                ),
                x / sv,
            ),
            Target::RatioAtLeast(r) if g.subject != "txheap" => {
                let Some(v) = g.versus.and_then(|v| row_of(rows, g.workload, v)) else {
                    continue;
                };
                bars.push(Bar {
                    label: format!("{} {} vs {}", g.workload.name(), g.subject, v.case.engine),
                    ratio: sv / v.value(),
                    goal: Some(r),
                    limit: v.case.role == Role::Limit,
                });
                continue;
            }
            Target::PeakMemoryNotAbove => {
                let Some(v) = g.versus.and_then(|v| row_of(rows, g.workload, v)) else {
                    continue;
                };
                let hwm = |r: &Row| r.med(|x| x.hwm.map(|h| h as f64)).unwrap_or(f64::NAN);
                let Some(s) = row_of(rows, g.workload, g.subject) else {
                    continue;
                };
                (
                    format!("{}: {} VmHWM ÷ txheap's", g.workload.name(), v.case.engine),
                    hwm(v) / hwm(s),
                )
            }
            Target::NotAbove => {
                let Some(v) = g.versus.and_then(|v| row_of(rows, g.workload, v)) else {
                    continue;
                };
                (
                    format!(
                        "{} {}: {}'s figure ÷ its",
                        g.workload.name(),
                        g.subject,
                        v.case.engine
                    ),
                    v.value() / sv,
                )
            }
            Target::P99AtMostTimes(x) => {
                let Some(v) = g.versus.and_then(|v| row_of(rows, g.workload, v)) else {
                    continue;
                };
                let p99 = |r: &Row| r.med(|s| s.p99_us).unwrap_or(f64::NAN);
                let s = row_of(rows, g.workload, g.subject).expect("found above");
                (
                    format!(
                        "{}: {x:.1} × {}'s p99 ÷ txheap's",
                        g.workload.name(),
                        v.case.engine
                    ),
                    x * p99(v) / p99(s),
                )
            }
            Target::P999AtMostUs(x) => {
                let s = row_of(rows, g.workload, g.subject).expect("found above");
                let p = s.med(|s| s.p999_us).unwrap_or(f64::NAN);
                (
                    format!("{}: {} µs ÷ p99.9 of a read", g.workload.name(), fmt_num(x)),
                    x / p,
                )
            }
            Target::BarriersPerCommitAtMost(x) => {
                let s = row_of(rows, g.workload, g.subject).expect("found above");
                let b = s.med(|s| s.barriers).unwrap_or(f64::NAN);
                (
                    format!("{}: {x:.2} ÷ barriers per commit", g.workload.name()),
                    x / b,
                )
            }
            Target::ScalingOfLimitAtLeast {
                fraction,
                limit,
                limit_base,
            } => {
                let Some(scaling) = scalings(rows, g, limit, limit_base) else {
                    continue;
                };
                (
                    format!(
                        "{} scaling ÷ {fraction:.1} × {limit} ÷ {limit_base}",
                        g.workload.name()
                    ),
                    scaling.0 / (fraction * scaling.1),
                )
            }
            Target::RatioAtLeast(_) => continue,
        };
        bars.push(Bar {
            label,
            ratio,
            goal: Some(1.0),
            limit: false,
        });
    }
    println!("## Goals\n");
    println!("| workload | goal | measured | status |");
    println!("|---|---|---|---|");
    for g in GOALS.iter().filter(|g| workloads.contains(&g.workload)) {
        let Some(subject) = row_of(rows, g.workload, g.subject) else {
            continue;
        };
        let sv = subject.value();
        let hwm = |r: &Row| r.med(|x| x.hwm.map(|h| h as f64)).unwrap_or(f64::NAN);
        let (goal, measured, met) = match (g.target, g.versus) {
            (Target::RatioAtLeast(x), Some(v)) => {
                let Some(other) = rows
                    .iter()
                    .find(|r| r.case.workload == g.workload && r.case.engine == v)
                else {
                    continue;
                };
                let ratio = sv / other.value();
                let who = g.subject;
                let goal = if x < 0.5 {
                    format!("{who} within {:.0}x of {v} (ratio ≥ {x:.2})", 1.0 / x)
                } else {
                    format!("{who} ≥ {x:.2}x {v}")
                };
                (goal, format!("{ratio:.2}x"), ratio >= x)
            }
            (Target::SecsAtMost(x), _) => (
                format!("{} < {} ms", g.subject, fmt_num(x * 1e3)),
                format!("{} ms", fmt_num(sv * 1e3)),
                sv <= x,
            ),
            (Target::BytesPerSecAtLeast(x), _) => (
                format!("replay ≥ {} MB/s", fmt_num(x / 1e6)),
                format!("{} MB/s", fmt_num(sv / 1e6)),
                sv >= x,
            ),
            (Target::BytesPerByteAtMost(x), _) => (
                format!("{}: file bytes per live payload byte ≤ {x:.2}", g.subject),
                format!("{sv:.3}"),
                sv <= x,
            ),
            (Target::PeakMemoryNotAbove, Some(v)) => {
                let Some(other) = row_of(rows, g.workload, v) else {
                    continue;
                };
                let (a, b) = (hwm(subject), hwm(other));
                (
                    format!("{} peak resident memory (VmHWM) ≤ {v}'s", g.subject),
                    format!(
                        "{:.1} MiB vs {:.1} MiB ({:.2}x)",
                        a / (1 << 20) as f64,
                        b / (1 << 20) as f64,
                        a / b
                    ),
                    a <= b,
                )
            }
            (Target::NotAbove, Some(v)) => {
                let Some(other) = row_of(rows, g.workload, v) else {
                    continue;
                };
                let ov = other.value();
                (
                    format!("{}: file bytes per payload byte ≤ {v}'s", g.subject),
                    format!("{sv:.3} vs {ov:.3}"),
                    sv <= ov,
                )
            }
            (Target::P99AtMostTimes(x), Some(v)) => {
                let Some(other) = row_of(rows, g.workload, v) else {
                    continue;
                };
                let p99 = |r: &Row| r.med(|s| s.p99_us).unwrap_or(f64::NAN);
                let (a, b) = (p99(subject), p99(other));
                (
                    format!("{} p99 ≤ {x:.1}x {v}'s", g.subject),
                    format!("{} µs vs {} µs ({:.2}x)", fmt_num(a), fmt_num(b), a / b),
                    a <= x * b,
                )
            }
            (Target::P999AtMostUs(x), _) => {
                let p = subject.med(|s| s.p999_us).unwrap_or(f64::NAN);
                (
                    format!("p99.9 of a new reader's read ≤ {} µs", fmt_num(x)),
                    format!("{} µs", fmt_num(p)),
                    p <= x,
                )
            }
            (Target::BarriersPerCommitAtMost(x), _) => {
                let b = subject.med(|s| s.barriers).unwrap_or(f64::NAN);
                (
                    format!("{}: barriers per commit ≤ {x:.2}", g.subject),
                    format!("{b:.3}"),
                    b <= x,
                )
            }
            (
                Target::ScalingOfLimitAtLeast {
                    fraction,
                    limit,
                    limit_base,
                },
                Some(v),
            ) => {
                let Some((own, machine)) = scalings(rows, g, limit, limit_base) else {
                    continue;
                };
                (
                    format!(
                        "{} ÷ {v} ≥ {fraction:.2} × the machine's {limit} ÷ {limit_base}",
                        g.subject
                    ),
                    format!("{own:.2}x vs {machine:.2}x ({:.2} of it)", own / machine),
                    own >= fraction * machine,
                )
            }
            (
                Target::RatioAtLeast(_)
                | Target::ScalingOfLimitAtLeast { .. }
                | Target::PeakMemoryNotAbove
                | Target::NotAbove
                | Target::P99AtMostTimes(_),
                None,
            ) => continue,
        };
        println!(
            "| {} | {goal} | {measured} | {} |",
            g.workload.name(),
            if met { "met" } else { "not met" }
        );
    }
    bars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_readably() {
        assert_eq!(fmt_num(1234567.8), "1,234,568");
        assert_eq!(fmt_num(1000.0), "1,000");
        assert_eq!(fmt_num(999.4), "999");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.1234), "0.12");
        assert_eq!(fmt_num(-2500.0), "-2,500");
        assert_eq!(fmt_num(f64::NAN), "-");
        assert_eq!(fmt_count(1.0), "1");
        assert_eq!(fmt_count(246_784.0), "246,784");
    }

    #[test]
    fn utc_dates_of_known_instants() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31 23:59 UTC");
    }

    /// A row of one sample of `file_len` file bytes for `payload` payload bytes.
    fn space_row(w: Workload, engine: &str, file_len: u64, payload: u64) -> Row {
        let mut s = Sample::new(
            engine,
            w.name(),
            1000,
            std::time::Duration::from_secs(1),
            None,
        );
        s.bytes = payload;
        s.file_len = Some(file_len);
        Row {
            case: plan::find(w, engine).expect("a case"),
            samples: vec![s],
        }
    }

    /// The chart's bars point right of 1 where txheap is better, for bytes per byte (lower
    /// is better) too: a review found the W4-space and space bars drawn backwards (txheap's
    /// smaller file drawn at 0.83x beside its goal bar at 1.20x).
    #[test]
    fn space_bars_point_the_way_of_their_goals() {
        let rows = vec![
            space_row(Workload::W4Space, "txheap", 1755, 1000),
            space_row(Workload::W4Space, "lmdb", 2111, 1000),
        ];
        let bars = print_goals(&[Workload::W4Space], &rows);
        let vs = bars
            .iter()
            .find(|b| b.label == "W4-space vs lmdb")
            .expect("the bar");
        let goal = bars
            .iter()
            .find(|b| b.label.starts_with("W4-space txheap: lmdb"))
            .expect("the goal bar");
        assert!(goal.ratio > 1.0, "{goal:?}");
        assert!((vs.ratio - 2111.0 / 1755.0).abs() < 1e-9, "{vs:?}");
    }

    #[test]
    fn filesystem_of_root_is_found() {
        let (mnt, fs) = filesystem_of(Path::new("/")).unwrap();
        assert_eq!(mnt, "/");
        assert!(!fs.is_empty());
    }
}
