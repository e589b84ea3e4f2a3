//! The simulator's model of the disk: the file's bytes per 512-byte sector, what a barrier
//! makes durable, and which crash images an instant allows.
//!
//! Owns: [`Disk`] (applying recorded events; durable and undecided sectors), [`Choice`],
//! [`SECTOR`], the image space of an instant and the choice of images to check
//! ([`Disk::choices`]), and building an image from a choice.
//!
//! May not: touch files or recover anything: images are byte vectors here; writing them to a
//! file is `image.rs`'s, recovering and checking them `check.rs`'s.

use std::collections::BTreeMap;

use txheap::TraceEvent;

use crate::Rng;

/// Sector size of the torn-write model.
///
/// ```
/// use crash_tests::{Disk, SECTOR};
/// use txheap::TraceEvent;
/// let mut disk = Disk::new(&[0; 4 * SECTOR as usize]);
/// // One byte at the start of the second sector: only that sector is undecided.
/// disk.apply(&TraceEvent::Write { offset: SECTOR, bytes: vec![1] });
/// assert_eq!(disk.pending_sectors(), [(1, 1)]);
/// ```
pub const SECTOR: u64 = 512;

/// The disk as the simulator sees it at one instant of a recording.
///
/// ```
/// use crash_tests::{record, Disk};
/// let dir = tempfile::tempdir().unwrap();
/// let rec = record(&dir.path().join("live.heap"), 1, txheap::Durability::Full, 3);
/// let mut disk = Disk::new(&rec.base);
/// for e in &rec.events {
///     disk.apply(e);
/// }
/// // After the close: the last transaction acknowledged, and every sector durable (the close
/// // ends with a barrier after it gives the log's blocks back), so one image remains.
/// assert_eq!((disk.acked, disk.undecided_sectors(), disk.image_space()), (3, 0, 1));
/// assert!(disk.barriers > 0);
/// ```
#[derive(Debug, Clone)]
pub struct Disk {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// For each sector written since its last barrier: its states after each such write.
    pending: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Sectors whose durable bytes changed, in order (an [`ImageFile`](crate::ImageFile) consumes this).
    durable_changes: Vec<u64>,
    /// Last acknowledged transaction so far.
    pub acked: u64,
    /// Barriers seen so far.
    pub barriers: u64,
}

/// A crash image: for each undecided sector (in sector order), 0 for its durable state or `i`
/// for its state after the `i`-th write since its last barrier.
///
/// ```
/// use crash_tests::{Choice, Disk};
/// use txheap::TraceEvent;
/// let mut disk = Disk::new(&[0; 1024]);
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![7; 4] });
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![8; 4] });
/// let durable: Choice = vec![0];
/// let after_first: Choice = vec![1];
/// assert_eq!(disk.image_of(&durable)[0], 0);
/// assert_eq!(disk.image_of(&after_first)[0], 7);
/// assert_eq!(disk.image_of(&[2])[0], 8);
/// ```
pub type Choice = Vec<u16>;

impl Disk {
    /// The disk holding `base`, all durable.
    ///
    /// ```
    /// let disk = crash_tests::Disk::new(&[5; 1024]);
    /// assert_eq!(disk.durable(), &[5; 1024][..]);
    /// assert_eq!((disk.acked, disk.barriers, disk.undecided_sectors()), (0, 0, 0));
    /// ```
    pub fn new(base: &[u8]) -> Disk {
        Disk {
            current: base.to_vec(),
            durable: base.to_vec(),
            pending: BTreeMap::new(),
            durable_changes: Vec::new(),
            acked: 0,
            barriers: 0,
        }
    }

    /// The file's length at this instant.
    ///
    /// ```
    /// use txheap::TraceEvent;
    /// let mut disk = crash_tests::Disk::new(&[0; 1024]);
    /// assert_eq!(disk.len(), 1024);
    /// disk.apply(&TraceEvent::Grow { len: 4096 });
    /// assert_eq!(disk.len(), 4096);
    /// ```
    pub fn len(&self) -> u64 {
        self.durable.len() as u64
    }

    /// The durable bytes: what every crash at this instant keeps.
    ///
    /// ```
    /// use txheap::TraceEvent;
    /// let mut disk = crash_tests::Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![9; 4] });
    /// assert_eq!(disk.durable()[0], 0); // written, not yet durable
    /// disk.apply(&TraceEvent::BarrierAll);
    /// assert_eq!(disk.durable()[..4], [9; 4]);
    /// ```
    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    /// Whether the file is empty.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// assert!(Disk::new(&[]).is_empty());
    /// assert!(!Disk::new(&[0; 512]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.durable.is_empty()
    }

    fn ensure_len(&mut self, len: u64) {
        let len = len as usize;
        if self.current.len() < len {
            self.current.resize(len, 0);
        }
        if self.durable.len() < len {
            self.durable.resize(len, 0);
        }
    }

    fn sector(&self, s: u64) -> &[u8] {
        let a = (s * SECTOR) as usize;
        &self.current[a..(a + SECTOR as usize).min(self.current.len())]
    }

    fn make_durable(&mut self, s: u64) {
        let a = (s * SECTOR) as usize;
        let b = (a + SECTOR as usize).min(self.current.len());
        let (cur, dur) = (&self.current[a..b], &mut self.durable[a..b]);
        dur.copy_from_slice(cur);
        self.durable_changes.push(s);
    }

    /// Apply one recorded event.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
    /// assert_eq!((disk.undecided_sectors(), disk.image_space()), (1, 2));
    /// disk.apply(&TraceEvent::Barrier { offset: 0, len: 4096 });
    /// assert_eq!((disk.undecided_sectors(), disk.barriers), (0, 1));
    /// disk.apply(&TraceEvent::Mark(4));
    /// assert_eq!(disk.acked, 4);
    /// ```
    pub fn apply(&mut self, e: &TraceEvent) {
        match e {
            TraceEvent::Write { offset, bytes } => {
                let end = offset + bytes.len() as u64;
                self.ensure_len(end);
                self.current[*offset as usize..end as usize].copy_from_slice(bytes);
                for s in offset / SECTOR..end.div_ceil(SECTOR) {
                    let v = self.sector(s).to_vec();
                    self.pending.entry(s).or_default().push(v);
                }
            }
            TraceEvent::Barrier { offset, len } => {
                self.barriers += 1;
                for s in offset / SECTOR..(offset + len).div_ceil(SECTOR) {
                    if self.pending.remove(&s).is_some() {
                        self.make_durable(s);
                    }
                }
            }
            TraceEvent::BarrierAll => {
                self.barriers += 1;
                let all: Vec<u64> = self.pending.keys().copied().collect();
                self.pending.clear();
                for s in all {
                    self.make_durable(s);
                }
            }
            TraceEvent::Grow { len } => self.ensure_len(*len),
            // A cut is modelled as durable at once: an image before it has the long file, one
            // after it the short one, and a barrier follows it at once (compaction).
            TraceEvent::Shrink { len } => {
                let len = *len as usize;
                self.current.truncate(len);
                self.durable.truncate(len);
                let first = (len as u64).div_ceil(SECTOR);
                self.pending.retain(|&s, _| s < first);
            }
            // Threads acknowledge in any order (several committing threads): the highest
            // counter acknowledged so far is the floor.
            TraceEvent::Mark(n) => self.acked = self.acked.max(*n),
        }
    }

    /// Each undecided sector and how many states it passed through since its last barrier.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 2048]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
    /// disk.apply(&TraceEvent::Write { offset: 4, bytes: vec![2; 8] });
    /// // 1020..1028 straddles sectors 1 and 2: it may land torn.
    /// disk.apply(&TraceEvent::Write { offset: 1020, bytes: vec![3; 8] });
    /// assert_eq!(disk.pending_sectors(), [(0, 2), (1, 1), (2, 1)]);
    /// ```
    pub fn pending_sectors(&self) -> Vec<(u64, usize)> {
        self.pending.iter().map(|(&s, v)| (s, v.len())).collect()
    }

    /// Sectors that may be in more than one state after a crash now.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 2048]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 1024] });
    /// assert_eq!(disk.undecided_sectors(), 2);
    /// disk.apply(&TraceEvent::BarrierAll);
    /// assert_eq!(disk.undecided_sectors(), 0);
    /// ```
    pub fn undecided_sectors(&self) -> usize {
        self.pending.len()
    }

    /// How many distinct crash images this instant allows (saturating at `u64::MAX`).
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// assert_eq!(disk.image_space(), 1);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
    /// assert_eq!(disk.image_space(), 2); // sector 0: durable or written
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![2; 8] });
    /// disk.apply(&TraceEvent::Write { offset: 512, bytes: vec![3; 8] });
    /// assert_eq!(disk.image_space(), 3 * 2);
    /// ```
    pub fn image_space(&self) -> u64 {
        self.pending
            .values()
            .map(|v| v.len() as u64 + 1)
            .try_fold(1u64, |a, b| a.checked_mul(b))
            .unwrap_or(u64::MAX)
    }

    /// The crash images to check at this instant: every one when there are at most `max`,
    /// else both extremes (nothing since the barriers; everything, as SIGKILL leaves it) and
    /// distinct random ones up to `max` in all. Where the image space is at most four times
    /// `max`, the random ones are a shuffle of the whole space, so exactly `max` come out
    /// (random draws would keep colliding there); above that, distinct random draws.
    ///
    /// ```
    /// use crash_tests::{Disk, Rng};
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 2048]);
    /// for s in 0..4 {
    ///     disk.apply(&TraceEvent::Write { offset: s * 512, bytes: vec![1; 8] });
    /// }
    /// let mut rng = Rng::seeded(1);
    /// assert_eq!(disk.choices(100, &mut rng).len(), 16); // all 2^4 images
    /// let few = disk.choices(5, &mut rng);
    /// assert_eq!(few.len(), 5);
    /// assert_eq!(few[0], [0; 4]); // nothing since the barriers
    /// assert_eq!(few[1], [1; 4]); // everything
    /// ```
    pub fn choices(&self, max: usize, rng: &mut Rng) -> Vec<Choice> {
        let radix: Vec<u64> = self.pending.values().map(|v| v.len() as u64 + 1).collect();
        let decode = |mut k: u64| -> Choice {
            radix
                .iter()
                .map(|r| {
                    let c = (k % r) as u16;
                    k /= r;
                    c
                })
                .collect()
        };
        let space = self.image_space();
        if space <= max as u64 {
            return (0..space).map(decode).collect();
        }
        let top: Choice = radix.iter().map(|r| (r - 1) as u16).collect();
        if max <= 2 {
            return [decode(0), top].into_iter().take(max).collect();
        }
        if space <= 4 * max as u64 {
            // Index 0 and space - 1 are the extremes; shuffle the rest and take max - 2.
            let mut rest: Vec<u64> = (1..space - 1).collect();
            let want = max - 2;
            for i in 0..want {
                let j = i + rng.below((rest.len() - i) as u64) as usize;
                rest.swap(i, j);
            }
            return [0, space - 1]
                .into_iter()
                .chain(rest[..want].iter().copied())
                .map(decode)
                .collect();
        }
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<Choice> = vec![decode(0), top];
        seen.extend(out.iter().cloned());
        // Each draw is new with probability >= 3/4 here; 64 * max draws never run out in
        // practice, and the test `choices_are_distinct_and_fill_the_budget` checks the count.
        let mut tries = 0;
        while out.len() < max && tries < max * 64 {
            tries += 1;
            let c: Choice = radix.iter().map(|r| rng.below(*r) as u16).collect();
            if seen.insert(c.clone()) {
                out.push(c);
            }
        }
        out
    }

    /// The whole image for `choice` (see [`Disk::choices`]).
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 512, bytes: vec![6; 512] });
    /// assert_eq!(disk.image_of(&[0]), disk.durable());
    /// let img = disk.image_of(&[1]);
    /// assert_eq!((img[511], img[512], img[1023]), (0, 6, 6));
    /// ```
    pub fn image_of(&self, choice: &[u16]) -> Vec<u8> {
        let mut img = self.durable.clone();
        for (s, v) in self.chosen(choice) {
            let a = (s * SECTOR) as usize;
            img[a..a + v.len()].copy_from_slice(v);
        }
        img
    }

    /// The undecided sectors that `choice` takes past their durable state, with the bytes it
    /// gives each: (sector, bytes), in sector order.
    pub(crate) fn chosen<'a>(&'a self, choice: &'a [u16]) -> impl Iterator<Item = (u64, &'a [u8])> {
        self.pending
            .iter()
            .zip(choice)
            .filter(|(_, &k)| k > 0)
            .map(|((&s, versions), &k)| (s, &versions[k as usize - 1][..]))
    }

    /// Sectors whose durable bytes changed so far, in order (a sector may repeat).
    pub(crate) fn durable_changes(&self) -> &[u64] {
        &self.durable_changes
    }

    /// A crash image: `choose(sector, versions)` picks 0 (the durable state) or `i` (the state
    /// after the `i`-th write since the last barrier) for each undecided sector.
    ///
    /// ```
    /// use crash_tests::Disk;
    /// use txheap::TraceEvent;
    /// let mut disk = Disk::new(&[0; 1024]);
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 1024] });
    /// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![2; 1024] });
    /// // Sector 0 keeps the first write, sector 1 the second: a torn, reordered pair.
    /// let img = disk.image(|sector, versions| if sector == 0 { 1 } else { versions });
    /// assert_eq!((img[0], img[512]), (1, 2));
    /// ```
    pub fn image(&self, mut choose: impl FnMut(u64, usize) -> usize) -> Vec<u8> {
        let choice: Choice = self
            .pending
            .iter()
            .map(|(&s, v)| choose(s, v.len()) as u16)
            .collect();
        self.image_of(&choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with one undecided sector per entry of `writes`, written that many times since
    /// the last barrier (each write a different byte, so every state differs).
    fn disk_with(writes: &[usize]) -> Disk {
        let mut d = Disk::new(&vec![0u8; writes.len() * SECTOR as usize]);
        for (s, &n) in writes.iter().enumerate() {
            for k in 0..n {
                d.apply(&TraceEvent::Write {
                    offset: s as u64 * SECTOR,
                    bytes: vec![k as u8 + 1; 8],
                });
            }
        }
        d
    }

    /// `choices` gives exactly `min(space, max)` distinct images, both extremes among them,
    /// including where the space is just above `max` (random draws used to fall short there).
    #[test]
    fn choices_are_distinct_and_fill_the_budget() {
        let mut rng = Rng::seeded(7);
        let cases: &[(&[usize], usize)] = &[
            (&[1; 13], 8192),                       // space 8192: exhaustive
            (&[1; 13], 8000),                       // space just above max: shuffle
            (&[2, 2, 2, 2, 2, 2, 2, 2, 2], 10_000), // 3^9 = 19,683: shuffle
            (&[1; 16], 10_000),                     // 65,536: random draws
            (&[4; 40], 10_000),                     // 5^40 saturates u64: random draws
            (&[1; 13], 2),
        ];
        // Small spaces one short of the budget, many times over (the windows' shortfall came
        // from instants like these).
        let small: Vec<(Vec<usize>, usize)> = (0..100)
            .flat_map(|_| (2..=6).map(|k| (vec![1; k], (1usize << k) - 1)))
            .chain((0..100).map(|_| (vec![2, 3, 1], 23)))
            .collect();
        let cases = cases
            .iter()
            .map(|&(w, m)| (w, m))
            .chain(small.iter().map(|(w, m)| (&w[..], *m)));
        for (writes, max) in cases {
            let d = disk_with(writes);
            let space = d.image_space();
            let got = d.choices(max, &mut rng);
            let want = (max as u64).min(space) as usize;
            assert_eq!(got.len(), want, "{writes:?} max {max}");
            let distinct: std::collections::HashSet<_> = got.iter().collect();
            assert_eq!(distinct.len(), got.len(), "{writes:?}: duplicates");
            let top: Choice = writes.iter().map(|&n| n as u16).collect();
            assert!(
                got.contains(&vec![0; writes.len()]),
                "{writes:?}: no durable extreme"
            );
            assert!(
                got.contains(&top),
                "{writes:?}: no everything-written extreme"
            );
            assert!(got
                .iter()
                .all(|c| c.iter().zip(writes).all(|(&k, &n)| k as usize <= n)));
        }
    }
}
