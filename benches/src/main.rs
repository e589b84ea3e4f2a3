//! `txheap-bench`: the txheap benchmark harness (issue 4).
//!
//! Runs each workload for each engine as a separate process (this binary re-executes itself
//! with `--child ENGINE WORKLOAD`; the child prints one `RESULT` line), in alternation, at least
//! five rounds, and prints medians, p99s and txheap's ratio to every peer and limit measured in
//! the same run, with the issue's goals marked met or not met. See `benches/README.md`.
//!
//! ```text
//! cargo run --release -p txheap-benches -- --quick                          # a few minutes
//! cargo run --release -p txheap-benches -- --svg benches/results.svg        # the full run
//! ```
//!
//! Modules: `plan` (workloads, the engine × workload case table, counts, goals), `engines` (one
//! module per store or limit behind the `Engine` trait), `child` (the measuring child's
//! drivers), `w5` (open and recovery measurements), `w7` (the opt-in heap larger than RAM:
//! its phases, children and report), `parent` (spawning, aggregation, report),
//! `sample` (the `RESULT` line and statistics), `chart` (the SVG), `sys` (all `unsafe`: mmap,
//! malloc, LMDB's open, PMDK loaded with dlopen).

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod args;
mod chart;
mod child;
mod engines;
mod parent;
mod plan;
mod readers;
mod rnone;
mod sample;
mod space;
#[allow(unsafe_code)]
mod sys;
mod w4;
mod w5;
mod w6;
mod w7;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use args::ChildArgs;
use plan::Workload;

/// Error type of the harness: any error, shown as text.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: txheap-bench [--quick] [--rounds N] [--svg FILE] [--dir DIR] [--only W1,W2,...]
                    [--w7-bytes N] [--w7-reads N] [--w7-txs N]

  --quick        fewer operations per child (a few minutes); rounds stay at 5
  --rounds N     rounds per workload (default 5, at least 5)
  --svg FILE     write the chart of ratios as SVG
  --dir DIR      directory on the filesystem to measure (default /var/tmp; never tmpfs)
  --only LIST    only these workloads: W1 W2 W3 W4-load W4-get W4-scan W4-space
                 W5-open W5-replay space W7
                 (W7, a heap larger than RAM, writes about 1.5x RAM twice: it runs only
                 when named here, never by default or with --quick)
  --w7-bytes N   W7's data size in bytes (default 1.5 x MemTotal, rounded to MiB)
  --w7-reads N   random reads per W7 read phase (default 20000; each stops after 30 s)
  --w7-txs N     small transactions per W7 transaction phase (default 2000; or 30 s)
  --list         print the cases (engine, workload, role, set-up) and exit

internal: txheap-bench --child|--setup ENGINE WORKLOAD --ops N --dir DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(mode @ ("--child" | "--setup")) => run_child(mode, &args[1..]),
        _ => parse_config(&args).and_then(|cfg| parent::run(&cfg)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txheap-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_config(args: &[String]) -> BoxResult<parent::Config> {
    let mut cfg = parent::Config {
        quick: false,
        rounds: parent::MIN_ROUNDS,
        svg: None,
        dir: None,
        only: Vec::new(),
        w7: None,
    };
    let (mut w7, mut w7_bytes, mut w7_reads, mut w7_txs) = (false, None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--quick" => cfg.quick = true,
            "--rounds" => cfg.rounds = value()?.parse()?,
            "--svg" => cfg.svg = Some(PathBuf::from(value()?)),
            "--dir" => cfg.dir = Some(PathBuf::from(value()?)),
            "--only" => {
                for name in value()?.split(',') {
                    if name.trim().eq_ignore_ascii_case("W7") {
                        w7 = true;
                        continue;
                    }
                    let w = Workload::parse(name.trim())
                        .ok_or_else(|| format!("unknown workload {name}\n{USAGE}"))?;
                    cfg.only.push(w);
                }
            }
            "--w7-bytes" => w7_bytes = Some(value()?.parse()?),
            "--w7-reads" => w7_reads = Some(value()?.parse()?),
            "--w7-txs" => w7_txs = Some(value()?.parse()?),
            "--list" => {
                for c in plan::CASES {
                    let setup = match c.setup {
                        None => "none",
                        Some(s) if s.each_round => "each-round",
                        Some(_) => "once",
                    };
                    println!(
                        "CASE {} {} {} {setup}",
                        c.engine,
                        c.workload.name(),
                        c.role.name()
                    );
                }
                w7::list();
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    if w7 {
        cfg.w7 = Some(w7::Config::new(w7_bytes, w7_reads, w7_txs)?);
    } else if w7_bytes.is_some() || w7_reads.is_some() || w7_txs.is_some() {
        return Err(format!("--w7-bytes, --w7-reads and --w7-txs need --only W7\n{USAGE}").into());
    }
    Ok(cfg)
}

/// `--child ENGINE WORKLOAD --ops N --dir DIR` (print a RESULT line) or `--setup ...` (make the
/// case's data, print `SETUP ok`).
fn run_child(mode: &str, args: &[String]) -> BoxResult<()> {
    let [engine, workload, ops_flag, ops, dir_flag, dir] = args else {
        return Err(format!("bad child arguments {args:?}\n{USAGE}").into());
    };
    if ops_flag != "--ops" || dir_flag != "--dir" {
        return Err(format!("bad child arguments {args:?}\n{USAGE}").into());
    }
    if w7::is_phase(workload) {
        if mode != "--child" {
            return Err(format!("{workload} has no set-up child").into());
        }
        println!(
            "{}",
            w7::run_child(engine, workload, ops.parse()?, Path::new(dir))?
        );
        return Ok(());
    }
    let workload =
        Workload::parse(workload).ok_or_else(|| format!("unknown workload {workload}"))?;
    let case = plan::find(workload, engine)
        .ok_or_else(|| format!("no engine {engine} in workload {}", workload.name()))?;
    let dir = PathBuf::from(dir);
    let child = ChildArgs {
        engine: case.engine,
        workload,
        ops: ops.parse()?,
        dir: &dir,
    };
    if mode == "--setup" {
        let setup = case.setup.ok_or("this case has no set-up")?;
        (setup.run)(&child)?;
        println!("SETUP ok");
    } else {
        let sample = child::measure(case.run, &child)?;
        println!("{sample}");
    }
    Ok(())
}
