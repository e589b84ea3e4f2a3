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
//! With `Config::threads` above 1 the child commits from that many threads at once (under
//! `Full` they share barriers: group commit), each acknowledgement printed with its thread;
//! the workload's counter then orders the commits, so after a kill the file must hold at least
//! the highest acknowledged counter and at most one more per thread (each thread has at most
//! one transaction in flight).
//!
//! The crashed file is left for the next child, whose open recovers it: kills land inside
//! recovery of real frames, and a recovery killed half-way is recovered again by the next child
//! (itself possibly killed). The parent checks a copy. Both durabilities run, alternating, on
//! two files.
//!
//! The child is a separate program that calls [`child_main`]: the crate's binary does, as its
//! hidden subcommand `crash-tests child` (`src/main.rs`). Both the long campaign
//! (`crash-tests kill9`) and the CI test (`tests/kill9.rs`) start that.
//!
//! ## Example
//! A campaign (it spawns and kills processes, so not run here):
//!
//! ```no_run
//! use crash_tests::kill9::{run, Config};
//! // The child: the crash-tests binary's hidden subcommand.
//! let child = || {
//!     let mut c = std::process::Command::new("target/release/crash-tests");
//!     c.arg("child");
//!     c
//! };
//! let dir = tempfile::tempdir().unwrap();
//! let cfg = Config { kills: 1_000, seed: 1, progress_lines: 10, threads: 1 };
//! let report = run(dir.path(), &cfg, &child).unwrap();
//! print!("{}", report.table());
//! assert!(report.in_recovery() <= report.kills);
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
pub const FAILPOINTS: [(&str, u32); 12] = [
    ("commit.after_log_write", phase::LOG_WRITE),
    // After the log-start witness, before the frame that vouches for the generation's first
    // one is written (once per generation: the first time it is passed).
    ("commit.after_witness", phase::LOG_WRITE),
    ("commit.after_log_barrier", phase::LOG_BARRIER),
    ("commit.mid_apply", phase::APPLY),
    ("commit.after_in_place", phase::IN_PLACE),
    ("grow.after_fallocate", phase::GROW),
    ("checkpoint.after_heap_barrier", phase::CHECKPOINT),
    ("checkpoint.after_superblock", phase::CHECKPOINT),
    ("compact.after_punch", phase::COMPACT),
    ("compact.before_cut", phase::COMPACT),
    ("recovery.mid_replay", phase::RECOVERY_REPLAY),
    ("recovery.after_replay", phase::RECOVERY_REPLAY),
];

/// Phases the parent aims kills at.
const AIMED: [u32; 13] = [
    phase::COMPACT,
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

/// The flusher's failpoint, armed only when the child commits from several threads.
///
/// ```
/// assert_eq!(crash_tests::kill9::GROUP_FAILPOINT.0, "group.after_barrier");
/// ```
pub const GROUP_FAILPOINT: (&str, u32) = ("group.after_barrier", phase::GROUP_BARRIER);

/// The phase file's value before the child has written one.
const NOT_STARTED: u32 = u32::MAX;

const ENV_CHILD: &str = "TXHEAP_KILL9_CHILD";
const ENV_CHILD_SEED: &str = "TXHEAP_KILL9_CHILD_SEED";
const ENV_CHILD_DURABILITY: &str = "TXHEAP_KILL9_CHILD_DURABILITY";
const ENV_CHILD_THREADS: &str = "TXHEAP_KILL9_CHILD_THREADS";

/// The child's side: if the environment names a heap (the parent set it), open it (recovering),
/// then commit forever, from one thread or several, printing `ACK n t` (the workload's counter
/// and the thread) after each commit that returned `Ok`. Returns immediately when the
/// variables are absent. `crash-tests child` calls it.
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
    let threads: u64 = std::env::var(ENV_CHILD_THREADS)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let heap = Heap::open_or_create(&path, options(durability))
        .unwrap_or_else(|e| panic!("kill9 child: open failed: {e}"));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "OPENED").expect("stdout");
        out.flush().expect("stdout");
    }
    let commit_forever = |t: u64| -> ! {
        let mut rng = Rng::seeded(seed ^ t.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        loop {
            // Now and then (thread 0) compaction: holes in the freed space, the free tail cut;
            // it changes no node, so the check after the kill is the same.
            if t == 0 && rng.below(40) == 0 {
                heap.compact()
                    .unwrap_or_else(|e| panic!("kill9 child: compaction failed: {e}"));
            }
            let abort = rng.below(10) == 0;
            match step(&heap, WORKLOAD_SEED, abort) {
                Ok(n) => {
                    // One line per write, under stdout's lock: lines of threads never mix.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {n} {t}").expect("stdout");
                    out.flush().expect("stdout");
                }
                Err(Error::NoRoot) if abort => {}
                Err(e) => panic!("kill9 child: transaction failed: {e}"),
            }
        }
    };
    std::thread::scope(|s| {
        for t in 1..threads {
            s.spawn(move || commit_forever(t));
        }
        commit_forever(0)
    })
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
/// let cfg = crash_tests::kill9::Config { kills: 1_000, seed: 7, progress_lines: 10, threads: 4 };
/// let again = cfg.clone();
/// assert_eq!((again.kills, again.seed, again.threads), (1_000, 7, 4));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Kills in all (alternating durabilities: `Full` gets the extra one of an odd count).
    pub kills: u64,
    /// The campaign's seed (printed with every failure).
    pub seed: u64,
    /// Print a progress line this many times (0: never).
    pub progress_lines: u64,
    /// Threads committing in the child (1: one; more: group commit under `Full`).
    pub threads: u64,
}

fn read_phase(f: &std::fs::File) -> u32 {
    let mut b = [0u8; 4];
    match f.read_at(&mut b, 0) {
        Ok(4) => u32::from_le_bytes(b),
        _ => NOT_STARTED,
    }
}

/// Run a campaign in `dir`. `child` builds the command that starts the child: a program that
/// calls [`child_main`], such as `crash-tests child`; `run` adds the environment that makes it
/// one. Returns the report, or the first violation (with the seed and iteration that
/// reproduce it).
///
/// ```no_run
/// use crash_tests::kill9::{run, Config};
/// let dir = tempfile::tempdir().unwrap();
/// let cfg = Config { kills: 100, seed: 42, progress_lines: 0, threads: 1 };
/// let child = || {
///     let mut c = std::process::Command::new("target/release/crash-tests");
///     c.arg("child");
///     c
/// };
/// let report = run(dir.path(), &cfg, &child).unwrap();
/// assert_eq!(report.kills, 100);
/// ```
pub fn run(dir: &Path, cfg: &Config, child: &dyn Fn() -> Command) -> Result<Report, String> {
    let mut campaign = Campaign {
        dir,
        cfg,
        rng: Rng::seeded(cfg.seed),
        rep: Report::default(),
        acks_so_far: [0; 2],
        open_time: [Duration::from_millis(5), Duration::from_millis(5)],
        last_in_recovery: [false; 2],
        started: Instant::now(),
        phase_path: dir.join("phase"),
    };
    for i in 0..cfg.kills {
        campaign.kill_once(i, child)?;
    }
    campaign.rep.elapsed = campaign.started.elapsed();
    Ok(campaign.rep)
}

/// A campaign between kills: its random stream, its report, and what it knows of each of its
/// two files (index 0: `full.heap`, 1: `none.heap`).
struct Campaign<'a> {
    dir: &'a Path,
    cfg: &'a Config,
    rng: Rng,
    rep: Report,
    /// The counter last found in each file (every acknowledged transaction so far).
    acks_so_far: [u64; 2],
    /// How long opening each file took lately (the timing of kills during open).
    open_time: [Duration; 2],
    /// Whether each file's previous kill landed inside recovery.
    last_in_recovery: [bool; 2],
    started: Instant,
    phase_path: PathBuf,
}

/// How one kill is made, drawn from the campaign's random stream.
struct Plan {
    /// 0..30: at a failpoint, 30..55: aimed at a phase, 55..70: during open, 70..100: at a
    /// random instant after open.
    how: u64,
    failpoint: Option<&'static str>,
    aim: Option<u32>,
}

/// One kill: which of the two files, and how its failures are named.
struct Kill {
    i: u64,
    k: usize,
    name: &'static str,
    path: PathBuf,
    plan: Plan,
}

impl Kill {
    /// "seed S iteration I (full)": what reproduces a failure.
    fn at(&self, seed: u64) -> String {
        format!("seed {seed} iteration {} ({})", self.i, self.name)
    }

    /// [`Kill::at`], with the phase the child died in.
    fn at_phase(&self, seed: u64, died_in: u32) -> String {
        format!(
            "seed {seed} iteration {} ({}, died in {})",
            self.i,
            self.name,
            phase::name(died_in)
        )
    }
}

/// What a killed child left behind.
struct Death {
    /// The phase it died in (`NOT_STARTED`: before txheap ran).
    died_in: u32,
    /// Its stdout lines, with when they arrived.
    lines: Vec<(Instant, String)>,
    spawned: Instant,
}

impl Campaign<'_> {
    /// Kill number `i`: start a child on one of the two files, kill it as planned, tally where
    /// it died, and check a copy of the file it left.
    fn kill_once(&mut self, i: u64, child: &dyn Fn() -> Command) -> Result<(), String> {
        let (k, name) = if i % 2 == 0 { (0, "full") } else { (1, "none") };
        let path = self.dir.join(format!("{name}.heap"));
        std::fs::write(&self.phase_path, NOT_STARTED.to_le_bytes()).map_err(|e| e.to_string())?;
        let phase_file = std::fs::File::open(&self.phase_path).map_err(|e| e.to_string())?;
        let mut cmd = child();
        cmd.env(ENV_CHILD, &path)
            .env(ENV_CHILD_SEED, self.rng.next_u64().to_string())
            .env(ENV_CHILD_DURABILITY, name)
            .env(ENV_CHILD_THREADS, self.cfg.threads.to_string())
            .env("TXHEAP_PHASE_FILE", &self.phase_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let plan = self.plan(&mut cmd);
        let kill = Kill {
            i,
            k,
            name,
            path,
            plan,
        };
        // A file grows only early in its life (the workload's size levels off), and is created
        // only once: start a fresh file when the kill is meant for growth, and every 50th visit.
        if kill.plan.failpoint == Some("grow.after_fallocate")
            || kill.plan.aim == Some(phase::GROW)
            || (i / 2) % 50 == 49
        {
            self.start_fresh(&kill)?;
        }
        let death = self.spawn_and_kill(cmd, &kill, &phase_file)?;
        let last_ack = self.read_lines(&kill, &death)?;
        self.tally(&kill, death.died_in);
        self.progress(i);
        if !kill.path.exists() {
            // Killed before create finished: create links the file into place only when
            // complete, so nothing can have been acknowledged.
            if last_ack.is_some() || self.acks_so_far[k] > 0 {
                return Err(format!(
                    "{}: acknowledged commits but no file",
                    kill.at(self.cfg.seed)
                ));
            }
            return Ok(());
        }
        self.check_copy(&kill, death.died_in, last_ack)
    }

    /// Draw how to kill (about 30% at a failpoint, 25% aimed at a phase, 15% during open, 30%
    /// at a random instant after open), arming the failpoint in `cmd`'s environment.
    fn plan(&mut self, cmd: &mut Command) -> Plan {
        let rng = &mut self.rng;
        let how = rng.below(100);
        let threads = self.cfg.threads;
        let failpoint = (how < 30).then(|| {
            // With several threads, the flusher's failpoint too (after its barrier returned,
            // before any of its commits is acknowledged).
            let n = FAILPOINTS.len() + usize::from(threads > 1);
            let (fp, _) = FAILPOINTS
                .get(rng.below(n as u64) as usize)
                .copied()
                .unwrap_or(GROUP_FAILPOINT);
            // Commit points are passed every transaction; the others only now and then (a
            // growth or a checkpoint every few dozen transactions, recovery once per open).
            let count = 1 + match fp {
                "commit.after_log_write"
                | "commit.after_log_barrier"
                | "commit.mid_apply"
                | "group.after_barrier" => rng.below(40),
                "checkpoint.after_heap_barrier" | "checkpoint.after_superblock" => rng.below(3),
                "compact.after_punch" | "compact.before_cut" => rng.below(2),
                _ => 0,
            };
            cmd.env("TXHEAP_FAILPOINT", format!("{fp}:{count}"));
            fp
        });
        // With several threads under `Full`, the shared barrier is a phase of its own.
        let extra: &[u32] = if threads > 1 {
            &[phase::GROUP_BARRIER]
        } else {
            &[]
        };
        let aim = (30..55).contains(&how).then(|| {
            let i = rng.below((AIMED.len() + extra.len()) as u64) as usize;
            AIMED
                .get(i)
                .copied()
                .unwrap_or_else(|| extra[i - AIMED.len()])
        });
        Plan {
            how,
            failpoint,
            aim,
        }
    }

    /// Remove the kill's file, so that the child creates it anew.
    fn start_fresh(&mut self, kill: &Kill) -> Result<(), String> {
        match std::fs::remove_file(&kill.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
        self.acks_so_far[kill.k] = 0;
        self.last_in_recovery[kill.k] = false;
        Ok(())
    }

    /// Start the child, let it run as the plan says, SIGKILL it (unless it died at its
    /// failpoint first), and collect what it left: the phase and its stdout.
    fn spawn_and_kill(
        &mut self,
        mut cmd: Command,
        kill: &Kill,
        phase_file: &std::fs::File,
    ) -> Result<Death, String> {
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
        let died_by_itself = self.wait_for_the_kill(&mut proc, kill, spawned, phase_file)?;
        if died_by_itself.is_none() {
            let _ = proc.kill(); // SIGKILL
        }
        let output = proc.wait_with_output().map_err(|e| e.to_string())?;
        reader.join().map_err(|_| "reader thread panicked")?;
        let died_in = read_phase(phase_file);
        let status = output.status;
        let by_signal = matches!(status.signal(), Some(libc::SIGKILL) | Some(libc::SIGABRT));
        if !by_signal {
            return Err(format!(
                "{}: the child exited on its own ({status}): {}",
                kill.at(self.cfg.seed),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if status.signal() == Some(libc::SIGABRT) && kill.plan.failpoint.is_none() {
            return Err(format!(
                "{}: the child aborted: {}",
                kill.at(self.cfg.seed),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(Death {
            died_in,
            lines: rx.try_iter().collect(),
            spawned,
        })
    }

    /// Wait until the planned moment of the kill: the child's death at its failpoint (counted
    /// in the report; returned), its entering the aimed phase, or a time during or after open.
    fn wait_for_the_kill(
        &mut self,
        proc: &mut Child,
        kill: &Kill,
        spawned: Instant,
        phase_file: &std::fs::File,
    ) -> Result<Option<ExitStatus>, String> {
        let open_time = self.open_time[kill.k];
        let mut died_by_itself = None;
        if let Some(fp) = kill.plan.failpoint {
            let deadline = spawned + open_time + Duration::from_millis(150);
            while Instant::now() < deadline {
                if let Some(st) = proc.try_wait().map_err(|e| e.to_string())? {
                    died_by_itself = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            let hit = died_by_itself.and_then(|s| s.signal()) == Some(libc::SIGABRT);
            let e = self.rep.failpoints.entry(fp).or_insert((0, 0));
            e.0 += 1;
            e.1 += u64::from(hit);
        } else if let Some(target) = kill.plan.aim {
            // Poll the phase file and kill the moment the child is in the target phase.
            let deadline = spawned + open_time + Duration::from_millis(100);
            while Instant::now() < deadline && read_phase(phase_file) != target {
                std::hint::spin_loop();
            }
        } else if kill.plan.how < 70 {
            // During open: a fraction of how long open took lately.
            let t = open_time.as_micros() as u64;
            std::thread::sleep(Duration::from_micros(t / 3 + self.rng.below(t.max(3))));
        } else {
            let after = Duration::from_micros(1_000 + self.rng.below(40_000));
            std::thread::sleep(open_time + after);
        }
        Ok(died_by_itself)
    }

    /// Learn from the child's lines how long open took, and return the last transaction it
    /// acknowledged.
    fn read_lines(&mut self, kill: &Kill, death: &Death) -> Result<Option<u64>, String> {
        let open_time = &mut self.open_time[kill.k];
        if let Some((t, _)) = death.lines.iter().find(|(_, l)| l == "OPENED") {
            *open_time = (*open_time * 3 + (*t - death.spawned)) / 4;
        }
        // The highest counter acknowledged, by any thread (threads print in any order).
        let mut last_ack: Option<u64> = None;
        for (_, l) in &death.lines {
            if let Some(rest) = l.strip_prefix("ACK ") {
                let n: u64 = rest
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("bad child line {l:?}"))?;
                last_ack = Some(last_ack.map_or(n, |m| m.max(n)));
            }
        }
        Ok(last_ack)
    }

    /// Count the kill in the report: the phase it landed in, whether an aimed kill hit its
    /// phase, and kills inside recovery of a file whose previous kill was there too.
    fn tally(&mut self, kill: &Kill, died_in: u32) {
        let rep = &mut self.rep;
        rep.kills += 1;
        if died_in == NOT_STARTED {
            rep.before_txheap += 1;
        } else {
            rep.by_phase.entry(died_in).or_insert([0, 0])[kill.k] += 1;
        }
        if let Some(target) = kill.plan.aim {
            let e = rep.aimed.entry(target).or_insert((0, 0));
            e.0 += 1;
            e.1 += u64::from(died_in == target);
        }
        let in_recovery =
            died_in == phase::RECOVERY_REPLAY || died_in == phase::RECOVERY_CHECKPOINT;
        if in_recovery && self.last_in_recovery[kill.k] {
            rep.recovery_after_recovery += 1;
        }
        self.last_in_recovery[kill.k] = in_recovery;
    }

    /// The progress bar, `cfg.progress_lines` times in a campaign.
    fn progress(&self, i: u64) {
        let cfg = self.cfg;
        if cfg.progress_lines > 0 && (i + 1) % (cfg.kills / cfg.progress_lines).max(1) == 0 {
            let done = (i + 1) * 30 / cfg.kills;
            eprintln!(
                "kill9 [{}{}] {}/{} kills, {:.0} s, inside recovery {:.1}%",
                "#".repeat(done as usize),
                ".".repeat(30 - done as usize),
                i + 1,
                cfg.kills,
                self.started.elapsed().as_secs_f64(),
                100.0 * self.rep.in_recovery() as f64 / self.rep.kills as f64
            );
        }
    }

    /// Check a copy of the file the child left against the workload (every acknowledged
    /// transaction there, at most the in-flight ones more: one per thread); leave the file
    /// itself for the next child to recover.
    fn check_copy(
        &mut self,
        kill: &Kill,
        died_in: u32,
        last_ack: Option<u64>,
    ) -> Result<(), String> {
        let at = kill.at_phase(self.cfg.seed, died_in);
        let copy = self.dir.join(format!("{}-check.heap", kill.name));
        std::fs::copy(&kill.path, &copy).map_err(|e| e.to_string())?;
        let heap = Heap::open(&copy, options(Durability::Full))
            .map_err(|e| format!("{at}: reopen after kill failed: {e}"))?;
        let counter = verify(&heap, WORKLOAD_SEED).map_err(|e| format!("{at}: {e}"))?;
        // Acknowledged transactions from earlier runs count too: the counter never goes back.
        let acks_so_far = &mut self.acks_so_far[kill.k];
        let floor = last_ack.unwrap_or(0).max(*acks_so_far);
        let threads = self.cfg.threads.max(1);
        if counter < floor || counter > floor + threads {
            return Err(format!(
                "{at}: counter {counter}, last acknowledged {floor} ({threads} threads)"
            ));
        }
        if counter > floor {
            self.rep.in_flight_committed += 1;
        }
        self.rep.acked += counter - *acks_so_far;
        *acks_so_far = counter;
        heap.close().map_err(|e| e.to_string())?;
        std::fs::remove_file(&copy).map_err(|e| e.to_string())
    }
}
