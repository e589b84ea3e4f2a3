//! The simulate loop: power cuts at every instant of a recording, and during recovery.
//!
//! Owns: walking a [`Recording`](crate::Recording) event by event on a [`Disk`](crate::Disk),
//! the image budget of each instant and barrier window ([`simulate_windows`]), power cuts
//! during the recovery of an image ([`check_recovery_crashes`]), and the [`Totals`].
//!
//! May not: decide what a recovered image must hold (`check.rs`), or model sectors and barriers
//! (`disk.rs`).

use std::path::Path;

use txheap::{Heap, Trace, TraceEvent};

use crate::check::check_in;
use crate::{
    options, step, verify, write_ahead, Choice, Disk, ImageFile, Recording, Rng, Violation,
};

/// Power cuts *during recovery* of a writer killed at the instant `before` shows: recover the
/// file the killed writer left (every write it made, as the page cache holds them) while
/// recording recovery's own writes and barriers, one more workload transaction (the first
/// commit after the open, with the checkpoint it owes when the open kept the generation) and
/// the close; then cut power at every recorded instant (every image when there are at most
/// `samples + 2`, else both extremes and `samples` random ones) and recover again. The killed
/// writer's writes that no barrier covered stay undecided until one of recovery's barriers
/// covers them: a kill -9 followed by a power cut during (or after) the next open. Each image
/// must hold a committed prefix with every acknowledged transaction, as a crash image must;
/// once recovery has issued its first barrier, exactly the state the uninterrupted recovery
/// gave (during the open) or that state and the one commit (after it) (recovery must make the frames it replays durable
/// before it writes a heap page); under `Full` the commit once it returned; and after the close
/// the commit. Returns (the uninterrupted recovery's counter, images checked).
///
/// ```
/// use crash_tests::{check_recovery_crashes, record, Disk, Rng};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 2);
/// let mut disk = Disk::new(&rec.base);
/// rec.events.iter().for_each(|e| disk.apply(e));
/// let mut rng = Rng::seeded(1);
/// let (counter, images) = check_recovery_crashes(dir.path(), &disk, &rec, 2, &mut rng).unwrap();
/// assert_eq!(counter, 2);
/// assert!(images > 0);
/// ```
pub fn check_recovery_crashes(
    dir: &Path,
    before: &Disk,
    rec: &Recording,
    samples: usize,
    rng: &mut Rng,
) -> Result<(u64, u64), String> {
    let image = before.image(|_, versions| versions);
    let path = dir.join("recovering.heap");
    std::fs::write(&path, &image).map_err(|e| e.to_string())?;
    let trace = Trace::default();
    let heap = Heap::open(
        &path,
        options(rec.durability)
            .keep_log_blocks(true)
            .record(trace.clone()),
    )
    .map_err(|e| format!("recovery failed: {e}"))?;
    let c0 = verify(&heap, rec.seed)?;
    // Events before this index are the open's (recovery and its flush): a cut among them after
    // the first barrier must give exactly `c0`.
    let opened_at = trace.lock().unwrap_or_else(|e| e.into_inner()).len();
    // One more transaction in the recovered heap, recorded too: the first commit after an open
    // (which checkpoints first when the open kept the generation, as it does when it left the
    // replayed frames in the log), then the close. Under `Full` its return is an
    // acknowledgement (a mark: every image after it must hold it).
    step(&heap, rec.seed, false).map_err(|e| format!("commit after recovery failed: {e}"))?;
    if rec.durability == txheap::Durability::Full {
        trace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(TraceEvent::Mark(c0 + 1));
    }
    heap.close()
        .map_err(|e| format!("close after recovery failed: {e}"))?;
    let events = std::mem::take(&mut *trace.lock().unwrap_or_else(|e| e.into_inner()));
    // Recovery's own writes obey the write-ahead rule too: every heap byte it changes must be
    // what replaying the log it found gives (the state is computed by recovery itself, so this
    // cannot catch a replay that is wrong the same way twice; it catches an open that writes
    // the heap by any other path, such as repairing metadata without a frame).
    if let Some(v) = write_ahead::check(&image, &events).violations.first() {
        return Err(format!(
            "write-ahead check of recovery's writes, event {}: {}",
            v.at_event, v.what
        ));
    }
    let mut disk = before.clone();
    let mut file =
        ImageFile::new(&dir.join("recovered-again.heap"), &disk).map_err(|e| e.to_string())?;
    let mut images = 0;
    let mut barriered = false;
    for (t, e) in events.iter().enumerate() {
        disk.apply(e);
        barriered |= matches!(e, TraceEvent::Barrier { .. } | TraceEvent::BarrierAll);
        // (The mark pushed above raises `disk.acked` to `c0 + 1` once the commit returned.)
        let floor = if barriered {
            c0.max(disk.acked)
        } else {
            disk.acked
        };
        for (i, choice) in disk.choices(samples + 2, rng).iter().enumerate() {
            images += 1;
            file.write(&disk, choice)?;
            let c = check_in(&mut file, rec, floor, false)
                .map_err(|e| format!("power cut at recovery event {t} (image {i}): {e}"))?;
            let allowed = if t < opened_at { c0 } else { c0 + 1 };
            if barriered && c != c0 && c != allowed {
                return Err(format!("power cut at recovery event {t} (image {i}), after recovery's first barrier: recovered {c}, the uninterrupted recovery gave {c0} (and one commit after the open's {opened_at} events)"));
            }
        }
    }
    // After the close, only the durable image is left: it holds the commit.
    let last = disk.choices(1, rng).remove(0);
    file.write(&disk, &last)?;
    let c = check_in(&mut file, rec, c0 + 1, false)
        .map_err(|e| format!("after the close that followed recovery: {e}"))?;
    if c != c0 + 1 {
        return Err(format!(
            "after recovery to {c0}, one commit and the close, the durable image shows {c}"
        ));
    }
    images += 1;
    Ok((c0, images))
}

/// Random images per instant of a recovery cut by power (plus both extremes). Recovery writes
/// few, large page runs, each covering many sectors: many images per instant.
///
/// ```
/// use crash_tests::{Disk, Rng, RECOVERY_SAMPLES};
/// use txheap::TraceEvent;
/// // An instant with 5 undecided sectors allows 32 images; a recovery check takes 26.
/// let mut disk = Disk::new(&[0; 5 * 512]);
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 5 * 512] });
/// assert_eq!(disk.choices(RECOVERY_SAMPLES + 2, &mut Rng::seeded(1)).len(), 26);
/// ```
pub const RECOVERY_SAMPLES: usize = 24;

/// Totals of a simulation.
///
/// ```
/// let t = crash_tests::Totals::default();
/// assert_eq!((t.images, t.instants, t.violations.len()), (0, 0, 0));
/// assert_eq!(t.window_summary(), (0, 0, 0, 0));
/// ```
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Images recovered and checked.
    pub images: u64,
    /// Crash instants.
    pub instants: u64,
    /// Images whose counter was above `acked` (an in-flight transaction had committed).
    pub in_flight_landed: u64,
    /// Images recovered to fewer than `acked` (allowed under `None` only).
    pub lost_acked: u64,
    /// Images cut during the recovery of another image.
    pub recovery_images: u64,
    /// Images checked again with a bit flipped in a durable log frame ([`crate::media`]; only
    /// when it is enabled and the image has a frame a later one vouches for).
    pub media_images: u64,
    /// Images checked in each barrier window (the crash instants between two barriers), and
    /// whether that was every image the window allows (each instant's image space was at most
    /// its image budget, so every instant was enumerated completely).
    pub window_images: Vec<(u64, bool)>,
    /// The violations found.
    pub violations: Vec<Violation>,
}

impl Totals {
    /// Add another simulation's totals.
    ///
    /// ```
    /// use crash_tests::Totals;
    /// let mut all = Totals { images: 10, instants: 4, ..Totals::default() };
    /// all.window_images.push((10, true));
    /// let mut more = Totals { images: 6, instants: 3, lost_acked: 1, ..Totals::default() };
    /// more.window_images.push((6, false));
    /// all.add(more);
    /// assert_eq!((all.images, all.instants, all.lost_acked), (16, 7, 1));
    /// assert_eq!(all.window_images, [(10, true), (6, false)]);
    /// ```
    pub fn add(&mut self, o: Totals) {
        self.images += o.images;
        self.instants += o.instants;
        self.in_flight_landed += o.in_flight_landed;
        self.lost_acked += o.lost_acked;
        self.recovery_images += o.recovery_images;
        self.media_images += o.media_images;
        self.window_images.extend(o.window_images);
        self.violations.extend(o.violations);
    }

    /// Barrier windows: (all, enumerated completely, fewest images in a sampled window, median
    /// images per window).
    ///
    /// ```
    /// let t = crash_tests::Totals {
    ///     window_images: vec![(4, true), (10, false), (6, false)],
    ///     ..Default::default()
    /// };
    /// // 3 windows, 1 enumerated completely, 6 in the smallest sampled one, median 6.
    /// assert_eq!(t.window_summary(), (3, 1, 6, 6));
    /// ```
    pub fn window_summary(&self) -> (usize, usize, u64, u64) {
        let exhausted = self.window_images.iter().filter(|w| w.1).count();
        let sampled_min = self
            .window_images
            .iter()
            .filter(|w| !w.1)
            .map(|w| w.0)
            .min()
            .unwrap_or(0);
        let mut all: Vec<u64> = self.window_images.iter().map(|w| w.0).collect();
        all.sort_unstable();
        let median = all.get(all.len() / 2).copied().unwrap_or(0);
        (all.len(), exhausted, sampled_min, median)
    }
}

/// Simulate power cuts at every event of `rec` with `samples` random images per instant (plus
/// the two extremes). Images are recovered in `dir`. Every `recovery_every`-th instant (0: never)
/// the newest image is also recovered with power cuts during its recovery.
///
/// ```
/// use crash_tests::{record, simulate};
/// use txheap::{Durability, TraceEvent};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, Durability::None, 1);
/// let t = simulate(&rec, dir.path(), 0, 1, 0);
/// assert!(t.violations.is_empty(), "{:?}", t.violations);
/// // A crash instant at every event but the marks, with at least one image each.
/// let marks = rec.events.iter().filter(|e| matches!(e, TraceEvent::Mark(_))).count();
/// assert_eq!(t.instants as usize, rec.events.len() - marks);
/// assert!(t.images >= t.instants);
/// assert_eq!(t.recovery_images, 0); // recovery_every 0: never
/// ```
pub fn simulate(
    rec: &Recording,
    dir: &Path,
    samples: usize,
    sample_seed: u64,
    recovery_every: u64,
) -> Totals {
    simulate_windows(rec, dir, samples, 0, sample_seed, recovery_every)
}

/// [`simulate`], with at least `window_target` images per barrier window where the window
/// allows that many: an instant gets `max(samples + 2, window_target / instants in its
/// window)` images (all of them when it has fewer).
///
/// ```
/// use crash_tests::{record, simulate_windows};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 1);
/// let t = simulate_windows(&rec, dir.path(), 0, 8, 1, 0);
/// assert!(t.violations.is_empty(), "{:?}", t.violations);
/// // Each barrier window got 8 images, or every image it allows.
/// assert!(t.window_images.iter().all(|&(n, every)| every || n >= 8));
/// assert_eq!(t.window_images.iter().map(|w| w.0).sum::<u64>(), t.images);
/// ```
pub fn simulate_windows(
    rec: &Recording,
    dir: &Path,
    samples: usize,
    window_target: usize,
    sample_seed: u64,
    recovery_every: u64,
) -> Totals {
    let budget = instant_budgets(rec, samples, window_target);
    let mut disk = Disk::new(&rec.base);
    let file = match ImageFile::new(&dir.join("image.heap"), &disk) {
        Ok(f) => f,
        Err(e) => {
            let mut totals = Totals::default();
            totals.violations.push(Violation {
                what: format!("cannot create the image file: {e}"),
                at_event: 0,
                image: 0,
            });
            return totals;
        }
    };
    let mut sim = Sim {
        rec,
        dir,
        recovery_every,
        file,
        rng: Rng::seeded(sample_seed),
        totals: Totals::default(),
    };
    let (mut window, mut window_exhausted) = (0u64, true);
    for (t, e) in rec.events.iter().enumerate() {
        let barriers = disk.barriers;
        disk.apply(e);
        if disk.barriers != barriers && window > 0 {
            sim.totals.window_images.push((window, window_exhausted));
            (window, window_exhausted) = (0, true);
        }
        if matches!(e, TraceEvent::Mark(_)) {
            continue; // same disk state as the previous instant
        }
        let max = budget[sim.totals.instants as usize];
        sim.totals.instants += 1;
        let choices = disk.choices(max, &mut sim.rng);
        window += choices.len() as u64;
        window_exhausted &= disk.image_space() == choices.len() as u64;
        sim.check_instant(&disk, t, &choices);
    }
    if window > 0 {
        sim.totals.window_images.push((window, window_exhausted));
    }
    sim.totals
}

/// The image space of every crash instant of `rec` (every event but the marks), grouped by
/// barrier window: a dry pass over the recording, recovering nothing.
fn window_spaces(rec: &Recording) -> Vec<Vec<u64>> {
    let mut dry = Disk::new(&rec.base);
    let mut windows: Vec<Vec<u64>> = vec![Vec::new()];
    for e in &rec.events {
        let barriers = dry.barriers;
        dry.apply(e);
        if dry.barriers != barriers {
            windows.push(Vec::new());
        }
        if !matches!(e, TraceEvent::Mark(_)) {
            windows
                .last_mut()
                .expect("one window")
                .push(dry.image_space());
        }
    }
    windows
}

/// Per-instant image budgets, in instant order: each barrier window's `window_target` is
/// water-filled over its instants (an instant with a small space is taken whole, the others
/// share what remains equally), and no instant gets fewer than `samples + 2`.
fn instant_budgets(rec: &Recording, samples: usize, window_target: usize) -> Vec<usize> {
    let mut budget: Vec<usize> = Vec::new();
    for spaces in window_spaces(rec) {
        let mut order: Vec<usize> = (0..spaces.len()).collect();
        order.sort_by_key(|&i| spaces[i]);
        let mut caps = vec![0u64; spaces.len()];
        let mut left = window_target as u64;
        for (k, &i) in order.iter().enumerate() {
            let level = left.div_ceil((spaces.len() - k) as u64);
            caps[i] = spaces[i].min(level);
            left = left.saturating_sub(caps[i]);
        }
        budget.extend(
            caps.iter()
                .map(|&c| (samples + 2).max(usize::try_from(c).unwrap_or(usize::MAX))),
        );
    }
    budget
}

/// A simulation walking a recording: what every instant's check needs, and the totals so far.
struct Sim<'a> {
    rec: &'a Recording,
    dir: &'a Path,
    recovery_every: u64,
    file: ImageFile,
    rng: Rng,
    totals: Totals,
}

impl Sim<'_> {
    /// Check each of `choices`, the images of the crash instant at event `t` (the first two,
    /// the extremes, deeply); on every `recovery_every`-th instant, also cut power during the
    /// recovery of the everything-written image (a writer killed there; its unbarriered writes
    /// stay undecided).
    fn check_instant(&mut self, disk: &Disk, t: usize, choices: &[Choice]) {
        let (rec, acked) = (self.rec, disk.acked);
        for (i, choice) in choices.iter().enumerate() {
            self.totals.images += 1;
            let file = &mut self.file;
            let checked = file
                .write(disk, choice)
                .and_then(|()| check_in(file, rec, acked, i < 2));
            match checked {
                Ok(c) => {
                    if c > acked {
                        self.totals.in_flight_landed += 1;
                    }
                    if c < acked {
                        self.totals.lost_acked += 1;
                    }
                }
                Err(what) => self.violation(what, t, i),
            }
            if crate::media::enabled() {
                let img = disk.image_of(choice);
                let path = self.dir.join("media.heap");
                match crate::media::check_flipped(
                    &path,
                    &img,
                    rec.durability,
                    &mut self.rng,
                    i % 2 == 1,
                ) {
                    Ok(true) => self.totals.media_images += 1,
                    Ok(false) => {}
                    Err(what) => self.violation(what, t, i),
                }
            }
            let every = self.recovery_every;
            if i == 1 && every > 0 && self.totals.instants % every == 0 {
                match check_recovery_crashes(self.dir, disk, rec, RECOVERY_SAMPLES, &mut self.rng) {
                    Ok((_, n)) => self.totals.recovery_images += n,
                    Err(what) => self.violation(what, t, i),
                }
            }
        }
    }

    fn violation(&mut self, what: String, at_event: usize, image: usize) {
        self.totals.violations.push(Violation {
            what,
            at_event,
            image,
        });
    }
}
