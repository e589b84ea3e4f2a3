//! The kill -9 campaign: a child process commits workload transactions ([`crate::step`]) and
//! reports each acknowledged one on its stdout (a pipe); the parent SIGKILLs it and checks the
//! file against the workload model ([`crate::verify`]): every acknowledged transaction is there,
//! at most the in-flight one more, nothing torn, the allocator's used bytes equal what is
//! reachable.
//!
//! Where the kill lands is measured, not guessed: the child runs with `TXHEAP_PHASE_FILE`, so
//! txheap (feature `test-hooks`) writes its protocol phase (`txheap_recovery::phase`) to a
//! file at every step; after the child is dead the parent reads the phase it died in. Four ways
//! to kill, mixed at random (about 30% at failpoints, 25% aimed at a phase, 15% during open,
//! 30% at a random instant after open):
//! - at a random instant after open;
//! - at a random instant during open (timed from earlier opens);
//! - *aimed at a phase*: the parent polls the phase file and kills as soon as the child enters
//!   the chosen phase (recovery replay, recovery checkpoint, log barrier, apply, checkpoint,
//!   growth, in-place write, flush, ...);
//! - at a named failpoint (`TXHEAP_FAILPOINT=name:n`: the child aborts there, which leaves the
//!   file exactly as SIGKILL would).
//!
//! The crashed file is left for the next child, whose open recovers it: kills land inside
//! recovery of real frames, and a recovery killed half-way is recovered again by the next child
//! (itself possibly killed). The parent checks a copy. Both durabilities run, alternating, on
//! two files.
//!
//! ## Example
//! A campaign binary (it spawns and kills processes, so not run here):
//!
//! ```no_run
//! use crash_tests::kill9::{child_main, run, Config};
//! // First thing in the campaign binary's `main`: be the child when started as one.
//! child_main();
//! let dir = tempfile::tempdir().unwrap();
//! let exe = std::env::current_exe().unwrap();
//! let cfg = Config { kills: 1_000, seed: 1, progress_lines: 10 };
//! let report = run(dir.path(), &cfg, &|| std::process::Command::new(&exe)).unwrap();
//! print!("{}", report.table());
//! assert!(report.in_recovery() <= report.kills);
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use txheap::{Durability, Error, Heap};
use txheap_recovery::phase;

use crate::{options, step, verify, Rng};

/// The workload's seed (payload sizes derive from it; the parent needs it to verify).
///
/// ```
/// use crash_tests::{kill9::WORKLOAD_SEED, options, step, verify};
/// let dir = tempfile::tempdir().unwrap();
/// let opts = options(txheap::Durability::None);
/// let heap = txheap::Heap::create(dir.path().join("h.heap"), opts).unwrap();
/// step(&heap, WORKLOAD_SEED, false).unwrap();
/// assert_eq!(verify(&heap, WORKLOAD_SEED), Ok(1));
/// assert!(verify(&heap, WORKLOAD_SEED + 1).is_err()); // the parent must know the seed
/// ```
pub const WORKLOAD_SEED: u64 = 0x6b69_6c6c;

/// The named crash points (`TXHEAP_FAILPOINT=name:n`) and the phase each lies in.
///
/// ```
/// use crash_tests::kill9::FAILPOINTS;
/// use txheap_recovery::phase;
/// assert!(FAILPOINTS.contains(&("commit.mid_apply", phase::APPLY)));
/// // Every failpoint lies in a named phase.
/// assert!(FAILPOINTS.iter().all(|&(_, p)| phase::name(p) != "?"));
/// ```
pub const FAILPOINTS: [(&str, u32); 9] = [
    ("commit.after_log_write", phase::LOG_WRITE),
    ("commit.after_log_barrier", phase::LOG_BARRIER),
    ("commit.mid_apply", phase::APPLY),
    ("commit.after_in_place", phase::IN_PLACE),
    ("grow.after_fallocate", phase::GROW),
    ("checkpoint.after_heap_barrier", phase::CHECKPOINT),
    ("checkpoint.after_superblock", phase::CHECKPOINT),
    ("recovery.mid_replay", phase::RECOVERY_REPLAY),
    ("recovery.after_replay", phase::RECOVERY_REPLAY),
];

/// Phases the parent aims kills at.
const AIMED: [u32; 12] = [
    phase::RECOVERY_REPLAY,
    phase::RECOVERY_REPLAY,
    phase::RECOVERY_CHECKPOINT,
    phase::RECOVERY_CHECKPOINT,
    phase::OPEN_REBUILD,
    phase::LOG_WRITE,
    phase::LOG_BARRIER,
    phase::APPLY,
    phase::CHECKPOINT,
    phase::GROW,
    phase::IN_PLACE,
    phase::FLUSH,
];

/// The phase file's value before the child has written one.
const NOT_STARTED: u32 = u32::MAX;

const ENV_CHILD: &str = "TXHEAP_KILL9_CHILD";
const ENV_CHILD_SEED: &str = "TXHEAP_KILL9_CHILD_SEED";
const ENV_CHILD_DURABILITY: &str = "TXHEAP_KILL9_CHILD_DURABILITY";

/// The child's side: if the environment names a heap (the parent set it), open it (recovering),
/// then commit forever, printing `ACK n` after each commit that returned `Ok`. Returns
/// immediately when the variables are absent, so a test harness can call it unconditionally.
///
/// ```
/// // Not started as a campaign's child (the variable is unset): returns at once.
/// assert!(std::env::var_os("TXHEAP_KILL9_CHILD").is_none());
/// crash_tests::kill9::child_main();
/// ```
pub fn child_main() {
    let Ok(path) = std::env::var(ENV_CHILD) else {
        return;
    };
    let seed: u64 = std::env::var(ENV_CHILD_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("kill9 child: TXHEAP_KILL9_CHILD_SEED");
    let durability = match std::env::var(ENV_CHILD_DURABILITY).as_deref() {
        Ok("none") => Durability::None,
        _ => Durability::Full,
    };
    let mut out = std::io::stdout().lock();
    let heap = Heap::open_or_create(&path, options(durability))
        .unwrap_or_else(|e| panic!("kill9 child: open failed: {e}"));
    writeln!(out, "OPENED").expect("stdout");
    out.flush().expect("stdout");
    let mut rng = Rng::seeded(seed);
    loop {
        let abort = rng.below(10) == 0;
        match step(&heap, WORKLOAD_SEED, abort) {
            Ok(n) => {
                writeln!(out, "ACK {n}").expect("stdout");
                out.flush().expect("stdout");
            }
            Err(Error::NoRoot) if abort => {}
            Err(e) => panic!("kill9 child: transaction failed: {e}"),
        }
    }
}

/// What a campaign saw.
///
/// ```
/// let r = crash_tests::kill9::Report::default();
/// assert_eq!((r.kills, r.in_recovery(), r.acked), (0, 0, 0));
/// assert!(r.table().starts_with("kill9: 0 kills in 0.0 s"));
/// ```
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Children killed (or aborted at a failpoint) and checked.
    pub kills: u64,
    /// Kills per phase, `[full, none]`, by `txheap_recovery::phase` number; `NOT_STARTED`
    /// (the child died before txheap ran) is counted in `before_txheap`.
    pub by_phase: BTreeMap<u32, [u64; 2]>,
    /// Children killed before txheap wrote any phase (process start-up).
    pub before_txheap: u64,
    /// Failpoints: (armed, died there).
    pub failpoints: BTreeMap<&'static str, (u64, u64)>,
    /// Aimed kills: (aimed, landed in the aimed phase).
    pub aimed: BTreeMap<u32, (u64, u64)>,
    /// Kills inside recovery (replay or its checkpoint) of a file whose previous kill was also
    /// inside recovery.
    pub recovery_after_recovery: u64,
    /// Checks where the in-flight transaction turned out committed.
    pub in_flight_committed: u64,
    /// Transactions found committed after the kills (both files): every acknowledged one, plus
    /// in-flight ones that had landed (`in_flight_committed`).
    pub acked: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// Kills inside recovery proper (replay and its checkpoint).
    ///
    /// ```
    /// use crash_tests::kill9::Report;
    /// use txheap_recovery::phase;
    /// let mut r = Report::default();
    /// r.by_phase.insert(phase::RECOVERY_REPLAY, [2, 1]);
    /// r.by_phase.insert(phase::RECOVERY_CHECKPOINT, [0, 4]);
    /// r.by_phase.insert(phase::APPLY, [5, 5]);
    /// assert_eq!(r.in_recovery(), 7);
    /// ```
    pub fn in_recovery(&self) -> u64 {
        [phase::RECOVERY_REPLAY, phase::RECOVERY_CHECKPOINT]
            .iter()
            .filter_map(|p| self.by_phase.get(p))
            .map(|c| c[0] + c[1])
            .sum()
    }

    /// Kills in phase `p`, both durabilities.
    ///
    /// ```
    /// use crash_tests::kill9::Report;
    /// use txheap_recovery::phase;
    /// let mut r = Report::default();
    /// r.by_phase.insert(phase::APPLY, [5, 3]);
    /// assert_eq!(r.in_phase(phase::APPLY), 8);
    /// assert_eq!(r.in_phase(phase::GROW), 0);
    /// ```
    pub fn in_phase(&self, p: u32) -> u64 {
        self.by_phase.get(&p).map_or(0, |c| c[0] + c[1])
    }

    /// The histogram and figures, as printed at the end of a campaign.
    ///
    /// ```
    /// use crash_tests::kill9::Report;
    /// use txheap_recovery::phase;
    /// let mut r = Report { kills: 4, ..Report::default() };
    /// r.by_phase.insert(phase::APPLY, [1, 1]);
    /// r.failpoints.insert("commit.mid_apply", (2, 2));
    /// let t = r.table();
    /// assert!(t.starts_with("kill9: 4 kills"));
    /// assert!(t.contains("apply (after the log barrier)"));
    /// assert!(t.contains("50.0%")); // 2 of the 4 kills
    /// assert!(t.contains("commit.mid_apply"));
    /// ```
    pub fn table(&self) -> String {
        let mut s = String::new();
        let pct = |n: u64| 100.0 * n as f64 / self.kills.max(1) as f64;
        s += &format!(
            "kill9: {} kills in {:.1} s, {} transactions committed (acknowledged, plus in-flight ones found committed {} times)\n",
            self.kills,
            self.elapsed.as_secs_f64(),
            self.acked,
            self.in_flight_committed
        );
        s += "  where the kill landed (phase the child was in)   full    none   share\n";
        s += &format!(
            "  {:<46} {:>6}  {:>6}  {:>5.1}%\n",
            "process start-up (before txheap ran)",
            "-",
            "-",
            pct(self.before_txheap)
        );
        for (p, c) in &self.by_phase {
            s += &format!(
                "  {:<46} {:>6}  {:>6}  {:>5.1}%\n",
                phase::name(*p),
                c[0],
                c[1],
                pct(c[0] + c[1])
            );
        }
        s += &format!(
            "  inside recovery (replay + its checkpoint): {} ({:.1}%), {} of them on a file whose previous kill was inside recovery too\n",
            self.in_recovery(),
            pct(self.in_recovery()),
            self.recovery_after_recovery
        );
        s += "  failpoint                          armed   died there\n";
        for (fp, (armed, hit)) in &self.failpoints {
            s += &format!("  {fp:<34} {armed:>6}  {hit:>6}\n");
        }
        s += "  aimed at phase                                  aimed   landed there\n";
        for (p, (aimed, hit)) in &self.aimed {
            s += &format!("  {:<46} {aimed:>6}  {hit:>6}\n", phase::name(*p));
        }
        s
    }
}

/// How to run a campaign.
///
/// ```
/// let cfg = crash_tests::kill9::Config { kills: 1_000, seed: 7, progress_lines: 10 };
/// let again = cfg.clone();
/// assert_eq!((again.kills, again.seed, again.progress_lines), (1_000, 7, 10));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Kills in all (alternating durabilities: `Full` gets the extra one of an odd count).
    pub kills: u64,
    /// The campaign's seed (printed with every failure).
    pub seed: u64,
    /// Print a progress line this many times (0: never).
    pub progress_lines: u64,
}

fn read_phase(f: &std::fs::File) -> u32 {
    let mut b = [0u8; 4];
    match f.read_at(&mut b, 0) {
        Ok(4) => u32::from_le_bytes(b),
        _ => NOT_STARTED,
    }
}

/// Run a campaign in `dir`. `child` builds the command that re-executes this program as the
/// child (the caller's binary must call [`child_main`] when started that way). Returns the
/// report, or the first violation (with the seed and iteration that reproduce it).
///
/// ```no_run
/// use crash_tests::kill9::{child_main, run, Config};
/// child_main(); // the re-executed child stops here (it never returns)
/// let dir = tempfile::tempdir().unwrap();
/// let exe = std::env::current_exe().unwrap();
/// let cfg = Config { kills: 100, seed: 42, progress_lines: 0 };
/// let report = run(dir.path(), &cfg, &|| std::process::Command::new(&exe)).unwrap();
/// assert_eq!(report.kills, 100);
/// ```
pub fn run(dir: &Path, cfg: &Config, child: &dyn Fn() -> Command) -> Result<Report, String> {
    let seed = cfg.seed;
    let mut rng = Rng::seeded(seed);
    let mut rep = Report::default();
    let mut acks_so_far = [0u64; 2];
    let mut open_time = [Duration::from_millis(5), Duration::from_millis(5)];
    let mut last_in_recovery = [false; 2];
    let started = Instant::now();
    let phase_path = dir.join("phase");
    for i in 0..cfg.kills {
        let (k, name) = if i % 2 == 0 { (0, "full") } else { (1, "none") };
        let path = dir.join(format!("{name}.heap"));
        std::fs::write(&phase_path, NOT_STARTED.to_le_bytes()).map_err(|e| e.to_string())?;
        let phase_file = std::fs::File::open(&phase_path).map_err(|e| e.to_string())?;
        let mut cmd = child();
        cmd.env(ENV_CHILD, &path)
            .env(ENV_CHILD_SEED, rng.next_u64().to_string())
            .env(ENV_CHILD_DURABILITY, name)
            .env("TXHEAP_PHASE_FILE", &phase_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let how = rng.below(100);
        let failpoint = (how < 30).then(|| {
            let (fp, _) = FAILPOINTS[rng.below(FAILPOINTS.len() as u64) as usize];
            // Commit points are passed every transaction; the others only now and then (a
            // growth or a checkpoint every few dozen transactions, recovery once per open).
            let count = 1 + match fp {
                "commit.after_log_write" | "commit.after_log_barrier" | "commit.mid_apply" => {
                    rng.below(40)
                }
                "checkpoint.after_heap_barrier" | "checkpoint.after_superblock" => rng.below(3),
                _ => 0,
            };
            cmd.env("TXHEAP_FAILPOINT", format!("{fp}:{count}"));
            fp
        });
        let aim = (30..55)
            .contains(&how)
            .then(|| AIMED[rng.below(AIMED.len() as u64) as usize]);
        // A file grows only early in its life (the workload's size levels off), and is created
        // only once: start a fresh file when the kill is meant for growth, and every 50th visit.
        let fresh = failpoint == Some("grow.after_fallocate")
            || aim == Some(phase::GROW)
            || (i / 2) % 50 == 49;
        if fresh {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.to_string()),
            }
            acks_so_far[k] = 0;
            last_in_recovery[k] = false;
        }
        let mut proc = cmd
            .spawn()
            .map_err(|e| format!("spawning the child: {e}"))?;
        let stdout = proc.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let spawned = Instant::now();
        let mut died_by_itself = None;
        if let Some(fp) = failpoint {
            let deadline = spawned + open_time[k] + Duration::from_millis(150);
            while Instant::now() < deadline {
                if let Some(st) = proc.try_wait().map_err(|e| e.to_string())? {
                    died_by_itself = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            let hit = died_by_itself.and_then(|s| s.signal()) == Some(libc::SIGABRT);
            let e = rep.failpoints.entry(fp).or_insert((0, 0));
            e.0 += 1;
            e.1 += u64::from(hit);
        } else if let Some(target) = aim {
            // Poll the phase file and kill the moment the child is in the target phase.
            let deadline = spawned + open_time[k] + Duration::from_millis(100);
            while Instant::now() < deadline && read_phase(&phase_file) != target {
                std::hint::spin_loop();
            }
        } else if how < 70 {
            // During open: a fraction of how long open took lately.
            let t = open_time[k].as_micros() as u64;
            std::thread::sleep(Duration::from_micros(t / 3 + rng.below(t.max(3))));
        } else {
            std::thread::sleep(open_time[k] + Duration::from_micros(1_000 + rng.below(40_000)));
        }
        if died_by_itself.is_none() {
            let _ = proc.kill(); // SIGKILL
        }
        let output = proc.wait_with_output().map_err(|e| e.to_string())?;
        reader.join().map_err(|_| "reader thread panicked")?;
        let died_in = read_phase(&phase_file);
        let status = output.status;
        let by_signal = matches!(status.signal(), Some(libc::SIGKILL) | Some(libc::SIGABRT));
        if !by_signal {
            return Err(format!(
                "seed {seed} iteration {i} ({name}): the child exited on its own ({status}): {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if status.signal() == Some(libc::SIGABRT) && failpoint.is_none() {
            return Err(format!(
                "seed {seed} iteration {i} ({name}): the child aborted: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let lines: Vec<(Instant, String)> = rx.try_iter().collect();
        if let Some((t, _)) = lines.iter().find(|(_, l)| l == "OPENED") {
            open_time[k] = (open_time[k] * 3 + (*t - spawned)) / 4;
        }
        let mut last_ack = None;
        for (_, l) in &lines {
            if let Some(n) = l.strip_prefix("ACK ") {
                let n: u64 = n.parse().map_err(|_| format!("bad child line {l:?}"))?;
                last_ack = Some(n);
            }
        }
        rep.kills += 1;
        if died_in == NOT_STARTED {
            rep.before_txheap += 1;
        } else {
            rep.by_phase.entry(died_in).or_insert([0, 0])[k] += 1;
        }
        if let Some(target) = aim {
            let e = rep.aimed.entry(target).or_insert((0, 0));
            e.0 += 1;
            e.1 += u64::from(died_in == target);
        }
        let in_recovery =
            died_in == phase::RECOVERY_REPLAY || died_in == phase::RECOVERY_CHECKPOINT;
        if in_recovery && last_in_recovery[k] {
            rep.recovery_after_recovery += 1;
        }
        last_in_recovery[k] = in_recovery;
        if cfg.progress_lines > 0 && (i + 1) % (cfg.kills / cfg.progress_lines).max(1) == 0 {
            let done = (i + 1) * 30 / cfg.kills;
            eprintln!(
                "kill9 [{}{}] {}/{} kills, {:.0} s, inside recovery {:.1}%",
                "#".repeat(done as usize),
                ".".repeat(30 - done as usize),
                i + 1,
                cfg.kills,
                started.elapsed().as_secs_f64(),
                100.0 * rep.in_recovery() as f64 / rep.kills as f64
            );
        }
        if !path.exists() {
            // Killed before create finished: create links the file into place only when
            // complete, so nothing can have been acknowledged.
            if last_ack.is_some() || acks_so_far[k] > 0 {
                return Err(format!(
                    "seed {seed} iteration {i} ({name}): acknowledged commits but no file"
                ));
            }
            continue;
        }
        // Check a copy; leave the crashed file for the next child to recover.
        let copy = dir.join(format!("{name}-check.heap"));
        std::fs::copy(&path, &copy).map_err(|e| e.to_string())?;
        let heap = Heap::open(&copy, options(Durability::Full)).map_err(|e| {
            format!(
                "seed {seed} iteration {i} ({name}, died in {}): reopen after kill failed: {e}",
                phase::name(died_in)
            )
        })?;
        let counter = verify(&heap, WORKLOAD_SEED).map_err(|e| {
            format!(
                "seed {seed} iteration {i} ({name}, died in {}): {e}",
                phase::name(died_in)
            )
        })?;
        // Acknowledged transactions from earlier runs count too: the counter never goes back.
        let floor = last_ack.unwrap_or(0).max(acks_so_far[k]);
        if counter < floor || counter > floor + 1 {
            return Err(format!(
                "seed {seed} iteration {i} ({name}, died in {}): counter {counter}, last acknowledged {floor}",
                phase::name(died_in)
            ));
        }
        if counter == floor + 1 {
            rep.in_flight_committed += 1;
        }
        rep.acked += counter - acks_so_far[k];
        acks_so_far[k] = counter;
        heap.close().map_err(|e| e.to_string())?;
        std::fs::remove_file(&copy).map_err(|e| e.to_string())?;
    }
    rep.elapsed = started.elapsed();
    Ok(rep)
}
