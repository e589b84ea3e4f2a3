//! The child side: run one case (or its set-up) in this process and print one `RESULT` line.
//! Only the workload is timed; opening, set-up, checks and tear-down are not.

use std::time::Instant;

use crate::args::ChildArgs;
use crate::engines::Opener;
use crate::plan::Run;
use crate::sample::Sample;
use crate::BoxResult;

/// Commits done before the timed region (first-use costs: root creation, first pages).
fn warmup(ops: u64) -> u64 {
    (ops / 10).clamp(1, 200)
}

/// `ops` transactions of one insert each, each timed; then a count check.
pub fn commits(open: Opener, args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let mut out = None;
    open(args.dir, &mut |engine| {
        let warm = warmup(args.ops);
        for key in 0..warm {
            engine.insert(key, 1)?;
        }
        let mut lat = Vec::with_capacity(args.ops as usize);
        let start = Instant::now();
        for key in warm..warm + args.ops {
            let t = Instant::now();
            engine.insert(key, 1)?;
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        engine.check(warm + args.ops)?;
        out = Some(Sample::new(
            args.engine,
            args.workload.name(),
            args.ops,
            elapsed,
            Some(&mut lat),
        ));
        Ok(())
    })?;
    out.ok_or_else(|| "engine never ran the workload".into())
}

/// One transaction of `ops` inserts, timed as a whole (after one warm-up transaction of one
/// insert); then a count check.
pub fn one_tx(open: Opener, args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let mut out = None;
    open(args.dir, &mut |engine| {
        engine.insert(0, 1)?;
        let start = Instant::now();
        engine.insert(1, args.ops)?;
        let elapsed = start.elapsed();
        engine.check(1 + args.ops)?;
        out = Some(Sample::new(
            args.engine,
            args.workload.name(),
            args.ops,
            elapsed,
            None,
        ));
        Ok(())
    })?;
    out.ok_or_else(|| "engine never ran the workload".into())
}

/// Run the measuring child of `run`; its sample carries the process's peak resident memory.
pub fn measure(run: Run, args: &ChildArgs<'_>) -> BoxResult<Sample> {
    let mut s = match run {
        Run::Commits(open) => commits(open, args),
        Run::OneTx(open) => one_tx(open, args),
        Run::Custom(f) => f(args),
    }?;
    s.hwm = Some(peak_resident()?);
    Ok(s)
}

/// `VmHWM` of `/proc/self/status` in bytes: the most memory this process had resident at once
/// (anonymous and file pages, mapped store files included).
pub fn peak_resident() -> BoxResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or("no VmHWM line in /proc/self/status")?;
    Ok(kib * 1024)
}
