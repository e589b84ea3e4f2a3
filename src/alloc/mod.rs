//! The allocator: size-class runs and large extents inside 256 KiB chunks.
//!
//! Owns: the allocation policy and the volatile indexes rebuilt from the chunk tables on open
//! (free extents, runs with free blocks, live large objects); the on-disk format (chunk tables,
//! one per 4 GiB zone) is in `format.rs` and the rebuild walk in `walk.rs`. May not: touch the file or know transactions' callers. It reads and
//! writes only through [`TxMem`], which the transaction implements by staging: so every change
//! of allocator metadata travels in the transaction's redo frame.
//!
//! Within a transaction every change to the volatile indexes is journaled (`undo`) so that abort
//! restores them exactly; frees are *deferred*: a freed block or extent becomes available to
//! later transactions only when its transaction commits, and never within the transaction that
//! freed it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

mod format;
mod walk;

/// The largest block served from runs (collections size their allocations around it).
pub(crate) use format::SMALL_MAX;
use format::{
    class_for, Entry, RunGeom, CLASSES, ENTRY_LEN, EXTENT_CHUNKS_MAX, NCLASSES, ZONE_CHUNKS,
};
pub(crate) use format::{
    Entry as ExtentEntry, HeapHeader, HEAP_HEADER_LEN, ROOT_IDENTITY_STORED,
    ZONE_CHUNKS as CHUNKS_PER_ZONE,
};

use crate::error::{Error, Result};
use crate::limits::{ALIGN_MAX, CHUNK_SIZE, GROW_CHUNKS_MAX, GROW_CHUNKS_MIN, GROW_FRACTION};
use crate::stage::WordPlace;

/// The largest object one allocation may hold: the chunks of a zone less its table
/// (4 GiB - 256 KiB). Larger requests get [`Error::ObjectTooLarge`].
///
/// ```
/// assert_eq!(txheap::OBJECT_SIZE_MAX, (4 << 30) - (256 << 10));
/// ```
pub const OBJECT_SIZE_MAX: u64 = EXTENT_CHUNKS_MAX * CHUNK_SIZE;

/// What the allocator needs from the transaction: its view of the file, and growth.
pub(crate) trait TxMem {
    /// Read bytes in the transaction's view (staged writes over committed state).
    fn read(&self, off: u64, buf: &mut [u8]);
    /// Stage a write.
    fn write(&mut self, off: u64, bytes: &[u8]) -> Result<()>;
    /// Stage a write whose bytes the frame must log whole, never cut to the words that differ
    /// from the committed bytes: a new run's bitmap, whose chunk may hold bytes no frame wrote
    /// (an object written in place, then freed; a punched hole), which a live copy of the file
    /// may have read before they changed (docs/ARCHITECTURE.md section 15).
    fn write_whole(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        self.write(off, bytes)
    }
    /// Make sure the file and the mapping reach `chunk_count` chunks, from `from` (the
    /// current chunk count), with disk blocks for the chunks between: where the file reaches
    /// past the heap already (a compaction cut short before its cut, whose tail may hold holes
    /// an earlier compaction punched), that part is claimed too (found by review).
    fn ensure_chunks(&mut self, from: u64, chunk_count: u64) -> Result<()>;
    /// Free space at `[off, off + len)` is about to be used: make sure the file has disk
    /// blocks there. Free space may be a hole (compaction punched it, or a compact copy left
    /// it out), and a hole written later, at the commit's apply or through the mapping, meets
    /// a full disk where nothing can be taken back (a review found the handle poisoned, and
    /// SIGBUS on tmpfs); here it is the operation's error, before anything changed.
    fn claim(&mut self, _off: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// The heap's `max_size`: the file may not grow past it.
    fn max_size(&self) -> u64;
    /// Where the staged word at `off` lives, for [`Self::word_mut`] (`None`: not staged, or
    /// this memory keeps no places; callers then read and write).
    fn word_place(&mut self, _off: u64) -> Option<WordPlace> {
        None
    }
    /// The staged word at `p` (the bytes `read` shows; setting them is a staged `write` of the
    /// word), or `None` if the place is stale.
    fn word_mut(&mut self, _p: WordPlace) -> Option<&mut [u8; 8]> {
        None
    }
}

/// The page: compaction punches whole pages.
const PAGE: u64 = crate::sys::PAGE as u64;

/// The hasher of the allocator's indexes: one multiply per key (its keys are chunk indices and
/// file offsets). std's default SipHash took a quarter of a small allocation's instructions
/// (callgrind, W3 child: 456 of about 1,800 per `tx.alloc`).
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64)
    }
    fn write_u64(&mut self, n: u64) {
        // Multiply-rotate mixing (as in rustc's FxHash); the rotation brings the product's
        // well-mixed high bits down to the low bits the table indexes with.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

pub(crate) type Keyed = BuildHasherDefault<KeyHasher>;

fn read_u64(mem: &dyn TxMem, off: u64) -> u64 {
    let mut b = [0u8; 8];
    mem.read(off, &mut b);
    u64::from_le_bytes(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunState {
    class: usize,
    /// Free blocks in the transaction's view, not counting blocks it freed (those wait for commit).
    free: u64,
    /// Bitmap word where the last allocation was found.
    hint: u64,
    /// Whether `free` was counted from the bitmap: an open reads no bitmap, so a run's first
    /// use counts it ([`Allocator::scan_run`]).
    scanned: bool,
}

impl RunState {
    /// A run found by the rebuild walk, its bitmap not read yet.
    pub(super) fn unscanned(class: usize) -> RunState {
        RunState {
            class,
            free: RunGeom::of_class(class).block_count,
            hint: 0,
            scanned: false,
        }
    }
}

/// The runs by chunk index: a vector indexed by chunk, not a hash map (two lookups per small
/// allocation were about 40 of its instructions, W3). One slot per chunk up to the highest run
/// (32 bytes per 256 KiB chunk, up to twice that in capacity as the vector doubles; it never
/// shrinks while the heap is open). A heap of large objects with one run near its top pays for
/// every chunk below it, where the map paid per run: bounded by the validated chunk count, so
/// at most 1/4096 of the heap's bytes.
#[derive(Debug, Default)]
struct RunTable {
    slots: Vec<Option<RunState>>,
    len: usize,
}

impl RunTable {
    #[inline]
    fn get(&self, c: &u32) -> Option<&RunState> {
        self.slots.get(*c as usize)?.as_ref()
    }

    #[inline]
    fn get_mut(&mut self, c: &u32) -> Option<&mut RunState> {
        self.slots.get_mut(*c as usize)?.as_mut()
    }

    fn insert(&mut self, c: u32, rs: RunState) -> Option<RunState> {
        let i = c as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        let old = self.slots[i].replace(rs);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, c: &u32) -> Option<RunState> {
        let old = self.slots.get_mut(*c as usize)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Every run, lowest chunk first.
    fn iter(&self) -> impl Iterator<Item = (u32, &RunState)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(c, rs)| Some((c as u32, rs.as_ref()?)))
    }
}

impl std::ops::Index<&u32> for RunTable {
    type Output = RunState;
    fn index(&self, c: &u32) -> &RunState {
        self.get(c).expect("a live run")
    }
}

/// Count the allocated blocks of a run's bitmap (`bitmap`, read at `at`), refusing bits past
/// the run's blocks.
fn count_used(g: &RunGeom, bitmap: &[u8], at: u64) -> Result<u64> {
    let mut used = 0u64;
    for (w, word) in bitmap.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let valid = (g.block_count - w as u64 * 64).min(64);
        if valid < 64 && word >> valid != 0 {
            return Err(Error::Corrupt {
                offset: at + w as u64 * 8,
                what: format!(
                    "run bitmap marks blocks past the run's {} blocks",
                    g.block_count
                ),
            });
        }
        used += word.count_ones() as u64;
    }
    Ok(used)
}

#[derive(Debug)]
enum Undo {
    ExtentRemoved(u32, u32),
    ExtentInserted(u32, u32),
    ChunkCount(u64),
    /// A streak of allocations from run `c`: the change to its free count, and its hint
    /// before the streak.
    RunFree(u32, i64, u64),
    RunAdded(u32),
    LargeAdded(u32),
    LargeRemoved(u32, (u32, u64)),
    LargeResized(u32, (u32, u64)),
    /// Where a nested scope began ([`Allocator::mark`]): undoes nothing, and keeps a later
    /// change from merging into the entry before it (which the scope's rollback must keep).
    Scope,
}

#[derive(Debug)]
enum Deferred {
    /// A block of run `c` at offset `off` was freed.
    BlockFreed(u32, u64),
    ExtentFreed(u32, u32),
    RunReleased(u32),
}

/// Per-class numbers for [`crate::Stats`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("cs.heap"), txheap::Options::new())?;
/// heap.transaction(|tx| tx.alloc([0u8; 100]).map(|_| ()))?;
/// let c = heap.stats()?.classes.into_iter().find(|c| c.used_blocks > 0).unwrap();
/// assert_eq!((c.block_size, c.used_blocks, c.runs), (112, 1, 1));
/// # Ok::<(), txheap::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub block_size: u64,
    /// Runs (chunks) holding this class.
    pub runs: u64,
    /// Blocks in use.
    pub used_blocks: u64,
    /// Blocks free.
    pub free_blocks: u64,
}

/// The volatile allocator state, rebuilt from the chunk tables on open.
#[derive(Debug)]
pub(crate) struct Allocator {
    chunk_area: u64,
    /// Chunks in use, in the current transaction's view.
    pub(crate) chunk_count: u64,
    runs: RunTable,
    partial: Vec<BTreeSet<u32>>,
    free_by_start: BTreeMap<u32, u32>,
    free_by_len: BTreeSet<(u32, u32)>,
    large: BTreeMap<u32, (u32, u64)>,
    undo: Vec<Undo>,
    deferred: Vec<Deferred>,
    freed_blocks: HashSet<u64, Keyed>,
    pending_frees: HashMap<u32, u64, Keyed>,
    /// The run the last allocation created from free space, until the caller takes it
    /// ([`Allocator::take_new_run_area`]); cleared at commit and rollback.
    new_run: Option<u32>,
    /// Where the bitmap word the last small allocation set is staged: the next allocations
    /// from the same word read and set it there, without searching the stage. Only a shortcut
    /// to the same staged bytes (a stale place is refused by the stage and the ordinary path
    /// taken), so nothing needs it cleared for correctness.
    word_place: Option<WordPlace>,
}

/// Where a nested scope of a transaction began ([`Allocator::mark`]): what
/// [`Allocator::rollback_to`] restores.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    undo: usize,
    deferred: usize,
}

impl Allocator {
    pub(crate) fn empty(chunk_area: u64, chunk_count: u64) -> Allocator {
        Allocator {
            chunk_area,
            chunk_count,
            runs: RunTable::default(),
            partial: vec![BTreeSet::new(); NCLASSES],
            free_by_start: BTreeMap::new(),
            free_by_len: BTreeSet::new(),
            large: BTreeMap::new(),
            undo: Vec::new(),
            deferred: Vec::new(),
            freed_blocks: HashSet::default(),
            pending_frees: HashMap::default(),
            new_run: None,
            word_place: None,
        }
    }

    pub(crate) fn chunk_offset(&self, c: u32) -> u64 {
        self.chunk_area + c as u64 * CHUNK_SIZE
    }

    /// File offset of chunk `c`'s entry in its zone's table.
    pub(crate) fn entry_offset(&self, c: u32) -> u64 {
        let c = c as u64;
        self.chunk_area + (c - c % ZONE_CHUNKS) * CHUNK_SIZE + (c % ZONE_CHUNKS) * ENTRY_LEN
    }

    fn write_entry(&self, mem: &mut dyn TxMem, c: u32, e: Entry) -> Result<()> {
        mem.write(self.entry_offset(c), &e.encode())
    }

    /// Count a run's free blocks from its bitmap if no one has yet (its first use since the
    /// open). The count is of committed state: every path that stages a bitmap change scans
    /// first. A run found full leaves the class's partial set.
    fn scan_run(&mut self, read: &dyn Fn(u64, &mut [u8]), c: u32) -> Result<()> {
        let rs = self.runs[&c];
        if rs.scanned {
            return Ok(());
        }
        let free = self.free_in_bitmap(read, c, rs.class)?;
        let rs = self.runs.get_mut(&c).expect("live run");
        rs.free = free;
        rs.scanned = true;
        if rs.free == 0 {
            self.partial[rs.class].remove(&c);
        }
        Ok(())
    }

    /// The free blocks run `c` (of `class`) has, counted from its bitmap as `read` shows it.
    fn free_in_bitmap(&self, read: &dyn Fn(u64, &mut [u8]), c: u32, class: usize) -> Result<u64> {
        let g = RunGeom::of_class(class);
        let at = self.chunk_offset(c);
        let mut bitmap = vec![0u8; (g.bitmap_words() * 8) as usize];
        read(at, &mut bitmap);
        Ok(g.block_count - count_used(&g, &bitmap, at)?)
    }

    // ---- raw index edits (journaled for undo) -------------------------------------------

    fn remove_extent(&mut self, s: u32, n: u32) {
        let old = self.free_by_start.remove(&s);
        debug_assert_eq!(old, Some(n));
        self.free_by_len.remove(&(n, s));
    }

    fn insert_extent(&mut self, s: u32, n: u32) {
        debug_assert!(n > 0);
        let old = self.free_by_start.insert(s, n);
        debug_assert!(old.is_none());
        self.free_by_len.insert((n, s));
    }

    /// Insert a free extent, merging with free neighbours (commit time and rebuild only).
    fn insert_coalesced(&mut self, mut s: u32, mut n: u32) {
        if let Some((&ps, &pn)) = self.free_by_start.range(..s).next_back() {
            if ps + pn == s {
                self.remove_extent(ps, pn);
                s = ps;
                n += pn;
            }
        }
        if let Some(&nn) = self.free_by_start.get(&(s + n)) {
            self.remove_extent(s + n, nn);
            n += nn;
        }
        self.insert_extent(s, n);
    }

    fn run_free_delta(&mut self, c: u32, delta: i64) {
        let rs = self.runs.get_mut(&c).expect("live run");
        let was = rs.free;
        rs.free = (rs.free as i64 + delta) as u64;
        // Only a change to or from zero moves the run in or out of its class's partial set
        // (most deltas do neither: this ran a BTreeSet insert on every allocation).
        if rs.free == 0 {
            self.partial[rs.class].remove(&c);
        } else if was == 0 {
            self.partial[rs.class].insert(c);
        }
    }

    // ---- operations inside a transaction --------------------------------------------------

    /// Allocate `size` bytes at `align` (a power of two); returns the object's file offset.
    pub(crate) fn alloc<M: TxMem>(&mut self, mem: &mut M, size: u64, align: u64) -> Result<u64> {
        // Every caller passes a type's alignment, a power of two: only its size is checked
        // (one compare on the path of every allocation).
        debug_assert!(align.is_power_of_two(), "alignment {align}");
        if align > ALIGN_MAX {
            return Err(Error::UnsupportedAlignment {
                align,
                max: ALIGN_MAX,
            });
        }
        match class_for(size, align) {
            Some(class) if size <= SMALL_MAX => self.alloc_small(mem, class),
            _ => self.alloc_large(mem, size),
        }
    }

    /// Whether an allocation of `size` bytes at `align` comes from a run (else an extent).
    pub(crate) fn is_small(size: u64, align: u64) -> bool {
        size <= SMALL_MAX && class_for(size, align).is_some()
    }

    fn alloc_small<M: TxMem>(&mut self, mem: &mut M, class: usize) -> Result<u64> {
        // The run and its hint with one lookup of the run (each was a hash lookup).
        let (c, hint) = loop {
            match self.partial[class].first() {
                Some(&c) => match self.runs.get(&c) {
                    Some(rs) if rs.scanned => break (c, rs.hint),
                    _ => self.scan_run(&|o, b| mem.read(o, b), c)?,
                },
                None => {
                    let c = self.new_run(mem, class)?;
                    break (c, self.runs.get(&c).map_or(0, |rs| rs.hint));
                }
            }
        };
        let g = RunGeom::of_class(class);
        let base = self.chunk_offset(c);
        let words = g.bitmap_words();
        let hint = if hint < words { hint } else { 0 };
        for i in 0..words {
            // (hint + i) mod words, without a division (hint < words).
            let w = match hint + i {
                w if w >= words => w - words,
                w => w,
            };
            let word_off = base + w * 8;
            // The word the last allocation set is usually this one, staged: read it, pick a
            // bit and set it through one access to its place (no search of the stage).
            if let Some(p) = self.word_place.filter(|p| p.offset() == word_off) {
                if let Some(staged) = mem.word_mut(p) {
                    let word = u64::from_le_bytes(*staged);
                    let Some((bit, off)) = self.pick(&g, base, w, word) else {
                        continue;
                    };
                    *staged = (word | 1 << bit).to_le_bytes();
                    return Ok(self.took(c, class, w, off));
                }
            }
            let word = read_u64(mem, word_off);
            if let Some((bit, off)) = self.pick(&g, base, w, word) {
                self.write_bitmap_word(mem, word_off, word | 1 << bit)?;
                return Ok(self.took(c, class, w, off));
            }
        }
        Err(Error::Corrupt {
            offset: base,
            what: format!(
                "run counted {} free blocks but its bitmap has none",
                self.runs[&c].free
            ),
        })
    }

    /// The first block of bitmap word `w` (holding `word`) of the run at `base` that is free and
    /// was not freed by this transaction: its bit and its offset.
    #[inline]
    fn pick(&self, g: &RunGeom, base: u64, w: u64, word: u64) -> Option<(u64, u64)> {
        let valid = (g.block_count - w * 64).min(64);
        let mut avail = !word
            & if valid == 64 {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
        while avail != 0 {
            let bit = avail.trailing_zeros() as u64;
            avail &= avail - 1;
            let off = base + g.data_offset + (w * 64 + bit) * g.block_size;
            if !self.freed_blocks.is_empty() && self.freed_blocks.contains(&off) {
                continue; // freed by this transaction: not reusable before it commits
            }
            return Some((bit, off));
        }
        None
    }

    /// Account for the block at `off` (bitmap word `w` of run `c`, of `class`) just taken.
    #[inline(always)]
    fn took(&mut self, c: u32, class: usize, w: u64, off: u64) -> u64 {
        // `run_free_delta(c, -1)` and the hint, with one lookup of the run.
        let rs = self.runs.get_mut(&c).expect("live run");
        rs.free = rs.free.wrapping_sub(1); // (as run_free_delta: a partial run has free > 0)
        let hint = std::mem::replace(&mut rs.hint, w);
        if rs.free == 0 {
            self.partial[class].remove(&c);
        }
        // One journal entry per run and streak, not per allocation (a bulk transaction made a
        // million): a rollback applies the sum, which ends in the same state, and puts back
        // the hint from before the streak (a review found the next allocation after a
        // rollback placed past the blocks it gave back).
        // (Never into an entry from before a nested scope: `Undo::Scope` stands between.)
        match self.undo.last_mut() {
            Some(Undo::RunFree(last, d, _)) if *last == c => *d -= 1,
            _ => self.undo.push(Undo::RunFree(c, -1, hint)),
        }
        off
    }

    /// Stage bitmap word `off` as `v`: through the remembered place if it is this word and still
    /// valid, else by an ordinary staged write, after which its place is remembered. Either way
    /// the staged bytes are the same, so every other reader of the stage (a free, the
    /// writability check, the frame) sees `v`.
    #[inline]
    fn write_bitmap_word<M: TxMem>(&mut self, mem: &mut M, off: u64, v: u64) -> Result<()> {
        if let Some(p) = self.word_place.filter(|p| p.offset() == off) {
            if let Some(staged) = mem.word_mut(p) {
                *staged = v.to_le_bytes();
                return Ok(());
            }
        }
        mem.write(off, &v.to_le_bytes())?;
        self.word_place = mem.word_place(off);
        Ok(())
    }

    fn new_run(&mut self, mem: &mut dyn TxMem, class: usize) -> Result<u32> {
        let c = self.alloc_extent(mem, 1)?;
        let g = RunGeom::of_class(class);
        self.write_entry(mem, c, Entry::Run { class })?;
        mem.write_whole(
            self.chunk_offset(c),
            &vec![0u8; (g.bitmap_words() * 8) as usize],
        )?;
        self.runs.insert(
            c,
            RunState {
                scanned: true,
                ..RunState::unscanned(class)
            },
        );
        self.partial[class].insert(c);
        self.undo.push(Undo::RunAdded(c));
        self.new_run = Some(c);
        Ok(c)
    }

    /// If the last allocation made a new run from free space: that run's block area
    /// `[chunk start + data offset, chunk end)`, which nothing reaches unless this transaction
    /// commits (its bitmap, at the chunk's start, stays outside). Taken once.
    pub(crate) fn take_new_run_area(&mut self) -> Option<(u64, u64)> {
        let c = self.new_run.take()?;
        let g = RunGeom::of_class(self.runs.get(&c)?.class);
        let base = self.chunk_offset(c);
        Some((base + g.data_offset, base + CHUNK_SIZE))
    }

    fn alloc_large(&mut self, mem: &mut dyn TxMem, size: u64) -> Result<u64> {
        let chunks = size.div_ceil(CHUNK_SIZE);
        if chunks > EXTENT_CHUNKS_MAX {
            return Err(Error::ObjectTooLarge {
                requested: size,
                max: OBJECT_SIZE_MAX,
            });
        }
        let chunks = chunks as u32;
        let s = self.alloc_extent(mem, chunks)?;
        self.write_entry(mem, s, Entry::Large { chunks, size })?;
        self.large.insert(s, (chunks, size));
        self.undo.push(Undo::LargeAdded(s));
        Ok(self.chunk_offset(s))
    }

    /// Take `n` chunks, best fit, growing the heap if nothing fits. The chunks taken from
    /// existing free space get their disk blocks first (`TxMem::claim`), before any change:
    /// those of the best fit, or else those of the free tail that the growth extends (the
    /// growth's own chunks get theirs from `ensure_chunks`).
    fn alloc_extent(&mut self, mem: &mut dyn TxMem, n: u32) -> Result<u32> {
        match self.free_by_len.range((n, 0)..).next() {
            Some(&(_, s)) => mem.claim(self.chunk_offset(s), n as u64 * CHUNK_SIZE)?,
            None => {
                if let Some((s, l)) = self.free_tail() {
                    mem.claim(self.chunk_offset(s), l.min(n) as u64 * CHUNK_SIZE)?;
                }
                self.grow(mem, n)?;
            }
        }
        let &(len, s) = self
            .free_by_len
            .range((n, 0)..)
            .next()
            .expect("grow made room");
        self.remove_extent(s, len);
        self.undo.push(Undo::ExtentRemoved(s, len));
        if len > n {
            self.insert_extent(s + n, len - n);
            self.undo.push(Undo::ExtentInserted(s + n, len - n));
            self.write_entry(mem, s + n, Entry::Free { chunks: len - n })?;
        }
        Ok(s)
    }

    /// The free extent that ends at the chunk count, if one: `(start, chunks)`.
    fn free_tail(&self) -> Option<(u32, u32)> {
        let cc = self.chunk_count;
        self.free_by_start
            .range(..cc as u32)
            .next_back()
            .filter(|(&s, &l)| s as u64 + l as u64 == cc)
            .map(|(&s, &l)| (s, l))
    }

    /// Cut the free tail (compaction): the free extent that ends at the chunk count, and a
    /// zone's table that is left with nothing after it, repeatedly. Entries past the chunk count
    /// are never read, so nothing is written but the header's count (by the transaction).
    /// Returns the chunks cut.
    pub(crate) fn release_tail(&mut self) -> u64 {
        let before = self.chunk_count;
        while let Some((s, l)) = self.free_tail() {
            let cc = self.chunk_count;
            self.remove_extent(s, l);
            self.undo.push(Undo::ExtentRemoved(s, l));
            self.undo.push(Undo::ChunkCount(cc));
            self.chunk_count = s as u64;
            if self.chunk_count > 1 && (self.chunk_count - 1) % ZONE_CHUNKS == 0 {
                self.undo.push(Undo::ChunkCount(self.chunk_count));
                self.chunk_count -= 1;
            }
        }
        before - self.chunk_count
    }

    /// The free space of the committed state as page ranges `(offset, len)`: every free extent,
    /// and the pages of each large extent past its object's last byte (compaction punches them).
    pub(crate) fn free_pages(&self) -> Vec<(u64, u64)> {
        let page = crate::sys::PAGE as u64;
        let mut out: Vec<(u64, u64)> = self
            .free_by_start
            .iter()
            .map(|(&s, &n)| (self.chunk_offset(s), n as u64 * CHUNK_SIZE))
            .collect();
        for (&s, &(n, size)) in &self.large {
            let used = size.div_ceil(page) * page;
            let len = n as u64 * CHUNK_SIZE;
            if used < len {
                out.push((self.chunk_offset(s) + used, len - used));
            }
        }
        out.sort_unstable();
        out
    }

    /// Grow the chunk count until a free extent of `n` chunks exists (`n` at most
    /// [`EXTENT_CHUNKS_MAX`]). Each step stays inside one zone: a step that reaches a zone's
    /// start gives it its table chunk first; a tail extent that cannot reach `n` chunks before
    /// the zone ends is extended to the zone's end (free space for later, smaller requests).
    fn grow(&mut self, mem: &mut dyn TxMem, n: u32) -> Result<()> {
        let max_size = mem.max_size();
        let max = (max_size.saturating_sub(self.chunk_area) / CHUNK_SIZE).min(u32::MAX as u64);
        let out_of_space = || Error::OutOfSpace {
            requested: n as u64 * CHUNK_SIZE,
            max_size,
        };
        if self.free_by_len.range((n, 0)..).next().is_none() {
            // Before any change: refuse what the steps below cannot fit (in this zone's free
            // tail, or in the next zone after its table chunk), and take the disk's blocks for
            // all of them. Refused part-way, past `max_size` or by a full disk, with this
            // zone's tail extended and the next zone's table added first, the transaction
            // could no longer commit (found by two reviews).
            let cc = self.chunk_count;
            let end = self.grow_end(n as u64, max).ok_or_else(out_of_space)?;
            if end > cc {
                mem.ensure_chunks(cc, end)?;
            }
        }
        while self.free_by_len.range((n, 0)..).next().is_none() {
            let cc = self.chunk_count;
            if cc >= max {
                return Err(out_of_space());
            }
            if cc % ZONE_CHUNKS == 0 {
                mem.ensure_chunks(cc, cc + 1)?;
                self.undo.push(Undo::ChunkCount(cc));
                self.chunk_count = cc + 1;
                self.write_entry(mem, cc as u32, Entry::Table)?;
                continue;
            }
            let zone_end = (cc / ZONE_CHUNKS + 1) * ZONE_CHUNKS;
            let tail = self.free_tail();
            let start = tail.map_or(cc, |t| t.0 as u64);
            let step = (cc + (cc / GROW_FRACTION).clamp(GROW_CHUNKS_MIN, GROW_CHUNKS_MAX))
                .max(start + n as u64);
            let new_cc = step.min(zone_end).min(max);
            if new_cc < start + n as u64 && new_cc < zone_end {
                return Err(out_of_space());
            }
            self.extend_free_tail(mem, new_cc)?;
        }
        Ok(())
    }

    /// The chunk count that [`Self::grow`]'s steps reach for a free extent of `n` chunks at the
    /// heap's end (no free extent of `n` chunks exists), or `None` where they fail: the same
    /// steps, on the chunk count and the free tail's start alone.
    fn grow_end(&self, n: u64, max: u64) -> Option<u64> {
        let mut cc = self.chunk_count;
        let mut start = self.free_tail().map_or(cc, |t| t.0 as u64);
        loop {
            if cc >= max {
                return None;
            }
            if cc % ZONE_CHUNKS == 0 {
                cc += 1; // the zone's table chunk
                start = cc;
                continue;
            }
            let zone_end = (cc / ZONE_CHUNKS + 1) * ZONE_CHUNKS;
            let step =
                (cc + (cc / GROW_FRACTION).clamp(GROW_CHUNKS_MIN, GROW_CHUNKS_MAX)).max(start + n);
            let new_cc = step.min(zone_end).min(max);
            if new_cc < start + n && new_cc < zone_end {
                return None;
            }
            cc = new_cc;
            if cc - start >= n {
                return Some(cc);
            }
        }
    }

    /// Raise the chunk count to `new_cc` (inside the current zone), the new chunks joining
    /// the free extent at the heap's end (or forming it).
    fn extend_free_tail(&mut self, mem: &mut dyn TxMem, new_cc: u64) -> Result<()> {
        let cc = self.chunk_count;
        let tail = self.free_tail();
        let start = tail.map_or(cc, |t| t.0 as u64);
        mem.ensure_chunks(cc, new_cc)?;
        self.undo.push(Undo::ChunkCount(cc));
        self.chunk_count = new_cc;
        if let Some((s, l)) = tail {
            self.remove_extent(s, l);
            self.undo.push(Undo::ExtentRemoved(s, l));
        }
        let len = (new_cc - start) as u32;
        self.insert_extent(start as u32, len);
        self.undo.push(Undo::ExtentInserted(start as u32, len));
        self.write_entry(mem, start as u32, Entry::Free { chunks: len })
    }

    /// Free the allocation starting at `off`. The space is reusable after commit.
    pub(crate) fn free(&mut self, mem: &mut dyn TxMem, off: u64) -> Result<()> {
        let invalid = |why| Error::InvalidFree { offset: off, why };
        if off < self.chunk_area {
            return Err(invalid(
                "not inside the chunk area (the root cannot be freed)",
            ));
        }
        let c64 = (off - self.chunk_area) / CHUNK_SIZE;
        if c64 >= self.chunk_count {
            // (`InvalidFree`, as `Tx::free` documents for anything but the start of a live
            // allocation: a review found `OutOfBounds` here.)
            return Err(invalid("past the heap's chunks"));
        }
        let c = c64 as u32;
        let base = self.chunk_offset(c);
        if let Some(&rs) = self.runs.get(&c) {
            let g = RunGeom::of_class(rs.class);
            let rel = off
                .checked_sub(base + g.data_offset)
                .ok_or_else(|| invalid("points into a run's bitmap"))?;
            if rel % g.block_size != 0 || rel / g.block_size >= g.block_count {
                return Err(invalid("not the start of a block"));
            }
            if self.freed_blocks.contains(&off) {
                return Err(invalid("already freed in this transaction"));
            }
            self.scan_run(&|o, b| mem.read(o, b), c)?;
            let idx = rel / g.block_size;
            let word_off = base + (idx / 64) * 8;
            let word = read_u64(mem, word_off);
            if word & (1 << (idx % 64)) == 0 {
                return Err(invalid("block is not allocated (double free?)"));
            }
            mem.write(word_off, &(word & !(1 << (idx % 64))).to_le_bytes())?;
            self.freed_blocks.insert(off);
            *self.pending_frees.entry(c).or_insert(0) += 1;
            self.deferred.push(Deferred::BlockFreed(c, off));
            return Ok(());
        }
        match self.large.get(&c) {
            Some(&(chunks, size)) if off == base => {
                self.write_entry(mem, c, Entry::Free { chunks })?;
                self.large.remove(&c);
                self.undo.push(Undo::LargeRemoved(c, (chunks, size)));
                self.deferred.push(Deferred::ExtentFreed(c, chunks));
                Ok(())
            }
            _ => Err(invalid("not the start of an allocation")),
        }
    }

    /// Grow the large object at `off` to `size` bytes where it is: inside its extent's last
    /// chunk, or over the free chunks right after its extent (committed free space, at most
    /// to the end of its zone), growing the heap when the extent ends where the heap ends.
    /// Returns `None` when it cannot (the object then moves), else the new chunks' bytes
    /// `[start, end)` (empty when none were added): space taken from free space, which the
    /// transaction may write in place, like a new extent's.
    pub(crate) fn grow_in_place(
        &mut self,
        mem: &mut dyn TxMem,
        off: u64,
        size: u64,
    ) -> Result<Option<(u64, u64)>> {
        let Some((c, chunks, old)) = self.large_at(off) else {
            return Ok(None);
        };
        let need = size.div_ceil(CHUNK_SIZE);
        if size <= old || need > EXTENT_CHUNKS_MAX {
            return Ok(None);
        }
        let need = need as u32;
        let next = c + chunks;
        let added = need.saturating_sub(chunks);
        // Blocks first, before any change (`TxMem::claim`): the extent's own pages past the
        // object may be holes (compaction punches them), and so may the free chunks after it.
        let from = self.chunk_offset(c) + old.div_ceil(PAGE) * PAGE;
        if added == 0 {
            let to = self.chunk_offset(c) + size.div_ceil(PAGE) * PAGE;
            mem.claim(from, to.saturating_sub(from))?;
        } else {
            // The chunks after the extent: in the same zone, and free (committed free space;
            // the heap grows first when the extent, or a free extent after it, ends the heap).
            let zone_end = (c as u64 / ZONE_CHUNKS + 1) * ZONE_CHUNKS;
            if (c + need) as u64 > zone_end {
                return Ok(None);
            }
            let after = self.free_by_start.get(&next).copied().unwrap_or(0);
            mem.claim(from, self.chunk_offset(next + after.min(added)) - from)?;
            if after < added {
                let ends_heap = next as u64 + after as u64 == self.chunk_count;
                if !ends_heap || !self.grow_tail_to(mem, (c + need) as u64, zone_end)? {
                    return Ok(None);
                }
            }
            let Some(&len) = self.free_by_start.get(&next) else {
                return Ok(None);
            };
            self.remove_extent(next, len);
            self.undo.push(Undo::ExtentRemoved(next, len));
            if len > added {
                self.insert_extent(next + added, len - added);
                self.undo
                    .push(Undo::ExtentInserted(next + added, len - added));
                self.write_entry(
                    mem,
                    next + added,
                    Entry::Free {
                        chunks: len - added,
                    },
                )?;
            }
        }
        let chunks = chunks.max(need);
        self.write_entry(mem, c, Entry::Large { chunks, size })?;
        self.large.insert(c, (chunks, size));
        self.undo.push(Undo::LargeResized(c, (chunks - added, old)));
        Ok(Some((
            self.chunk_offset(next),
            self.chunk_offset(next + added),
        )))
    }

    /// Shrink the large object at `off` to `size` bytes (`0 < size <` its size) where it is:
    /// its chunk-table entry gets the new size and the chunks `size` no longer needs, and
    /// those chunks become a free extent of their own, reusable once the transaction commits
    /// (deferred, as a free's: never by this transaction, so a later allocation in it cannot
    /// write them in place while the durable state still has them in the object). Returns
    /// whether it shrank: `false` for anything but the start of a live large object.
    pub(crate) fn shrink_in_place(
        &mut self,
        mem: &mut dyn TxMem,
        off: u64,
        size: u64,
    ) -> Result<bool> {
        let Some((c, chunks, old)) = self.large_at(off) else {
            return Ok(false);
        };
        if size == 0 || size >= old {
            return Ok(false);
        }
        // (`size < old <= chunks * CHUNK_SIZE`, so `need <= chunks` fits a u32.)
        let need = size.div_ceil(CHUNK_SIZE) as u32;
        self.write_entry(mem, c, Entry::Large { chunks: need, size })?;
        self.large.insert(c, (need, size));
        self.undo.push(Undo::LargeResized(c, (chunks, old)));
        if need < chunks {
            let (tail, n) = (c + need, chunks - need);
            self.write_entry(mem, tail, Entry::Free { chunks: n })?;
            self.deferred.push(Deferred::ExtentFreed(tail, n));
        }
        Ok(true)
    }

    /// Grow the chunk count (by at least the usual step, inside the zone that ends at
    /// `zone_end` and under `max_size`) so that the free extent at the heap's end reaches chunk
    /// `end`. Returns whether it could.
    fn grow_tail_to(&mut self, mem: &mut dyn TxMem, end: u64, zone_end: u64) -> Result<bool> {
        let cc = self.chunk_count;
        let max =
            (mem.max_size().saturating_sub(self.chunk_area) / CHUNK_SIZE).min(u32::MAX as u64);
        if end > max || end > zone_end || cc % ZONE_CHUNKS == 0 {
            return Ok(false);
        }
        let step = (cc + (cc / GROW_FRACTION).clamp(GROW_CHUNKS_MIN, GROW_CHUNKS_MAX)).max(end);
        self.extend_free_tail(mem, step.min(zone_end).min(max))?;
        Ok(true)
    }

    /// If `off` is the data start of a live large object: its extent's data area
    /// `[off, end of the extent's last chunk)`.
    pub(crate) fn large_extent(&self, off: u64) -> Option<(u64, u64)> {
        let (c, chunks, _) = self.large_at(off)?;
        Some((off, self.chunk_offset(c) + chunks as u64 * CHUNK_SIZE))
    }

    /// If `off` is the data start of a live large object: its first chunk, its chunk count
    /// and its size in bytes.
    fn large_at(&self, off: u64) -> Option<(u32, u32, u64)> {
        let c = u32::try_from(off.checked_sub(self.chunk_area)? / CHUNK_SIZE).ok()?;
        let &(chunks, size) = self.large.get(&c)?;
        (off == self.chunk_offset(c)).then_some((c, chunks, size))
    }

    /// The usable size of the allocation starting at `off`, if `off` is the start of a live
    /// allocation as the transaction sees it: a block of a run whose bit is set (`read` as in
    /// [`Self::check_writable`]: the transaction's view, so a block freed earlier in the same
    /// transaction is not live), or the data start of a live large object. Anything else (a
    /// freed block, a pointer inside an object, a run's bitmap) gives `None`: `free` refuses
    /// exactly those, and `realloc` must as well.
    pub(crate) fn live_size(&self, off: u64, read: &dyn Fn(u64, u64, &mut [u8])) -> Option<u64> {
        let c = u32::try_from(off.checked_sub(self.chunk_area)? / CHUNK_SIZE).ok()?;
        if let Some(rs) = self.runs.get(&c) {
            let g = RunGeom::of_class(rs.class);
            let base = self.chunk_offset(c);
            let rel = off.checked_sub(base + g.data_offset)?;
            if rel % g.block_size != 0 || rel / g.block_size >= g.block_count {
                return None;
            }
            if self.freed_blocks.contains(&off) {
                return None;
            }
            let idx = rel / g.block_size;
            let mut word = [0u8; 8];
            read(base, base + (idx / 64) * 8, &mut word);
            return (u64::from_le_bytes(word) & (1 << (idx % 64)) != 0)
                .then_some(CLASSES[rs.class] as u64);
        }
        self.large_at(off).map(|(_, _, size)| size)
    }

    /// Whether `[off, off+len)` (already inside the chunk area) lies inside one live allocation:
    /// one allocated block of a run (its bit set in the bitmap as `read(near, at, buf)` shows
    /// it: the transaction's view, so a block freed earlier in the same transaction is
    /// refused; `near` is where the run's bitmap begins, where it is usually staged), or the
    /// `size` bytes of a live large object. So a user write cannot hit chunk tables, bitmaps,
    /// free space, a freed block or a neighbouring object.
    ///
    /// `start`: `off` must also be where the allocation begins (a block's start, a large
    /// object's data start): a collection writing a node of its own checks with it that a
    /// damaged pointer did not aim inside another object.
    pub(crate) fn check_writable(
        &self,
        off: u64,
        len: u64,
        start: bool,
        read: &dyn Fn(u64, u64, &mut [u8]),
    ) -> Result<()> {
        let not = || Error::NotAllocated { offset: off, len };
        let Some(rel) = off.checked_sub(self.chunk_area) else {
            return Err(not());
        };
        let Ok(c) = u32::try_from(rel / CHUNK_SIZE) else {
            return Err(not());
        };
        let end = off.checked_add(len).ok_or_else(not)?;
        if let Some(rs) = self.runs.get(&c) {
            let g = RunGeom::of_class(rs.class);
            let base = self.chunk_offset(c);
            let Some(rel) = off.checked_sub(base + g.data_offset) else {
                return Err(not());
            };
            let idx = rel / g.block_size;
            let block_end = base + g.data_offset + (idx + 1) * g.block_size;
            if idx >= g.block_count || end > block_end || (start && rel % g.block_size != 0) {
                return Err(not());
            }
            let mut word = [0u8; 8];
            read(base, base + (idx / 64) * 8, &mut word);
            return if u64::from_le_bytes(word) & (1 << (idx % 64)) != 0 {
                Ok(())
            } else {
                Err(not())
            };
        }
        match self.large.range(..=c).next_back() {
            Some((&s, &(_, size)))
                if off >= self.chunk_offset(s)
                    && end <= self.chunk_offset(s) + size
                    && (!start || off == self.chunk_offset(s)) =>
            {
                Ok(())
            }
            _ => Err(not()),
        }
    }

    /// Before the frame is built: give back runs this transaction emptied, when their class has
    /// another run with room (so alternating alloc/free does not reformat a chunk each time).
    pub(crate) fn prepare_commit(&mut self, mem: &mut dyn TxMem) -> Result<()> {
        let mut emptied: Vec<u32> = self
            .pending_frees
            .iter()
            .filter(|(c, &k)| {
                let rs = &self.runs[c];
                rs.free + k == RunGeom::of_class(rs.class).block_count
            })
            .map(|(&c, _)| c)
            .collect();
        emptied.sort_unstable();
        for c in emptied {
            let class = self.runs[&c].class;
            if self.partial[class].iter().any(|&o| o != c) {
                self.write_entry(mem, c, Entry::Free { chunks: 1 })?;
                self.deferred.push(Deferred::RunReleased(c));
            }
        }
        Ok(())
    }

    /// The transaction committed: deferred frees become reusable.
    pub(crate) fn commit(&mut self) {
        for d in std::mem::take(&mut self.deferred) {
            match d {
                Deferred::BlockFreed(c, _) => self.run_free_delta(c, 1),
                Deferred::ExtentFreed(s, n) => self.insert_coalesced(s, n),
                Deferred::RunReleased(c) => {
                    let rs = self.runs.remove(&c).expect("released run was live");
                    self.partial[rs.class].remove(&c);
                    self.insert_coalesced(c, 1);
                }
            }
        }
        self.undo.clear();
        self.freed_blocks.clear();
        self.pending_frees.clear();
        self.new_run = None;
        // The stage is cleared with the transaction: its places are stale (the stage would
        // refuse them; forgetting saves the next transaction asking).
        self.word_place = None;
    }

    /// Entries in the transaction's undo journal: a failed operation that added some changed
    /// the allocator's state part-way.
    pub(crate) fn journal_len(&self) -> usize {
        self.undo.len()
    }

    /// The transaction aborted: restore the indexes exactly.
    pub(crate) fn rollback(&mut self) {
        self.undo_to(0);
        self.deferred.clear();
        self.new_run = None;
        self.freed_blocks.clear();
        self.pending_frees.clear();
    }

    /// Begin a nested scope of the transaction (`Tx::nested`): what its rollback returns to.
    /// Every journal entry from here on is the scope's own (an `Undo::Scope` entry keeps a
    /// later change from merging into an older one), so popping the journal back to this
    /// length undoes exactly the scope's changes to the indexes, as [`Allocator::rollback`]
    /// undoes a whole transaction's. (A scope that keeps its changes leaves its entry: a
    /// journal entry that undoes nothing.)
    pub(crate) fn mark(&mut self) -> Mark {
        let m = Mark {
            undo: self.undo.len(),
            deferred: self.deferred.len(),
        };
        self.undo.push(Undo::Scope);
        m
    }

    /// The nested scope begun at `m` keeps its changes: its entries join the enclosing scope's
    /// (or the transaction's), and its `Undo::Scope` entry goes (a shift of the scope's own
    /// entries only), so that a transaction of many kept scopes does not grow its journal by
    /// one entry each.
    pub(crate) fn keep(&mut self, m: Mark) {
        if matches!(self.undo.get(m.undo), Some(Undo::Scope)) {
            self.undo.remove(m.undo);
            // The two entries the marker stood between merge as consecutive allocations from
            // one run do (a review found a million kept scopes left a million entries).
            if let (Some(&Undo::RunFree(c, d, hint)), Some(&Undo::RunFree(c2, d2, _))) = (
                m.undo.checked_sub(1).and_then(|i| self.undo.get(i)),
                self.undo.get(m.undo),
            ) {
                if c == c2 {
                    // (The older entry's hint: from before both.)
                    self.undo[m.undo - 1] = Undo::RunFree(c, d + d2, hint);
                    self.undo.remove(m.undo);
                }
            }
        }
    }

    /// The nested scope begun at `m` is rolled back: the indexes as they were at `m` (its
    /// journal entries undone, newest first; its frees forgotten). The staged bytes it wrote
    /// (bitmaps, chunk entries) are the caller's to restore.
    pub(crate) fn rollback_to(&mut self, m: Mark) {
        self.undo_to(m.undo);
        while self.deferred.len() > m.deferred {
            if let Some(Deferred::BlockFreed(c, off)) = self.deferred.pop() {
                self.freed_blocks.remove(&off);
                if let Some(k) = self.pending_frees.get_mut(&c) {
                    *k -= 1;
                    if *k == 0 {
                        self.pending_frees.remove(&c);
                    }
                }
            }
        }
        self.new_run = None;
    }

    /// Undo journal entries, newest first, until `len` remain.
    fn undo_to(&mut self, len: usize) {
        self.word_place = None;
        while self.undo.len() > len {
            let Some(u) = self.undo.pop() else { break };
            match u {
                Undo::ExtentRemoved(s, n) => self.insert_extent(s, n),
                Undo::ExtentInserted(s, n) => self.remove_extent(s, n),
                Undo::ChunkCount(cc) => self.chunk_count = cc,
                Undo::RunFree(c, d, hint) => {
                    self.run_free_delta(c, -d);
                    if let Some(rs) = self.runs.get_mut(&c) {
                        rs.hint = hint;
                    }
                }
                Undo::RunAdded(c) => {
                    let rs = self.runs.remove(&c).expect("added run");
                    self.partial[rs.class].remove(&c);
                }
                Undo::LargeAdded(s) => {
                    self.large.remove(&s);
                }
                Undo::LargeRemoved(s, v) | Undo::LargeResized(s, v) => {
                    self.large.insert(s, v);
                }
                Undo::Scope => {}
            }
        }
    }

    /// Numbers for [`crate::Stats`]: (used bytes, free bytes, largest free extent, per class).
    /// Runs not used since the open are counted from their bitmaps through `read`.
    #[cfg(test)]
    pub(crate) fn stats(
        &self,
        read: &dyn Fn(u64, &mut [u8]),
    ) -> Result<(u64, u64, u64, Vec<ClassStats>)> {
        self.stats_progress(read, &mut |_, _| {})
    }

    /// [`Allocator::stats`], calling `progress(runs done, runs)` every 1024 runs and at the end.
    pub(crate) fn stats_progress(
        &self,
        read: &dyn Fn(u64, &mut [u8]),
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(u64, u64, u64, Vec<ClassStats>)> {
        let mut classes: Vec<ClassStats> = CLASSES
            .iter()
            .map(|&bs| ClassStats {
                block_size: bs as u64,
                ..Default::default()
            })
            .collect();
        let mut used = 0;
        let mut free = 0;
        let total = self.runs.len() as u64;
        for (done, (c, rs)) in self.runs.iter().enumerate() {
            if done % 1024 == 0 {
                progress(done as u64, total);
            }
            let g = RunGeom::of_class(rs.class);
            let mut rs = *rs;
            if !rs.scanned {
                rs.free = self.free_in_bitmap(read, c, rs.class)?;
            }
            let cs = &mut classes[rs.class];
            cs.runs += 1;
            cs.used_blocks += g.block_count - rs.free;
            cs.free_blocks += rs.free;
            used += (g.block_count - rs.free) * g.block_size;
            free += rs.free * g.block_size;
        }
        progress(total, total);
        for &(_, size) in self.large.values() {
            used += size;
        }
        let mut largest = 0;
        for &(n, _) in &self.free_by_len {
            free += n as u64 * CHUNK_SIZE;
            largest = largest.max(n as u64 * CHUNK_SIZE);
        }
        Ok((used, free, largest, classes))
    }

    /// Check the indexes against each other (tests and debug builds).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn check_invariants(&self) {
        let mut covered = vec![0u8; self.chunk_count as usize];
        let mut mark = |s: u32, n: u32, what: &str| {
            for c in s..s + n {
                assert!(
                    (c as u64) < self.chunk_count,
                    "{what} chunk {c} past chunk count"
                );
                assert_eq!(covered[c as usize], 0, "chunk {c} owned twice ({what})");
                covered[c as usize] = 1;
            }
        };
        for (&s, &n) in &self.free_by_start {
            assert!(self.free_by_len.contains(&(n, s)));
            mark(s, n, "free");
        }
        assert_eq!(self.free_by_start.len(), self.free_by_len.len());
        for (c, _) in self.runs.iter() {
            mark(c, 1, "run");
        }
        for z in (0..self.chunk_count).step_by(ZONE_CHUNKS as usize) {
            mark(z as u32, 1, "table");
        }
        for (&s, &(n, _)) in &self.large {
            mark(s, n, "large");
        }
        // Extents this transaction freed belong to nothing until it commits (inside a
        // transaction: a nested scope's rollback checks too).
        for d in &self.deferred {
            if let Deferred::ExtentFreed(s, n) = *d {
                mark(s, n, "freed in this transaction");
            }
        }
        for (c, rs) in self.runs.iter() {
            assert!(
                !rs.scanned || rs.free == 0 || self.partial[rs.class].contains(&c),
                "run {c} has {} free blocks but is not in its class's partial set",
                rs.free
            );
        }
        for (class, set) in self.partial.iter().enumerate() {
            for c in set {
                let rs = &self.runs[c];
                assert_eq!(rs.class, class);
                assert!(rs.free > 0 || !rs.scanned);
            }
        }
        assert!(
            covered.iter().all(|&x| x == 1),
            "a chunk belongs to nothing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A sparse in-memory file: pages written so far, zeros elsewhere.
    struct SparseMem {
        pages: RefCell<HashMap<u64, Box<[u8; 4096]>>>,
        max_size: u64,
        len: u64,
        /// A full disk: the file cannot get blocks past this length (ENOSPC).
        disk: u64,
    }

    impl SparseMem {
        fn read(&self, off: u64, buf: &mut [u8]) {
            let pages = self.pages.borrow();
            for (i, b) in buf.iter_mut().enumerate() {
                let o = off + i as u64;
                *b = pages.get(&(o / 4096)).map_or(0, |p| p[(o % 4096) as usize]);
            }
        }
    }

    impl TxMem for SparseMem {
        fn read(&self, off: u64, buf: &mut [u8]) {
            SparseMem::read(self, off, buf)
        }
        fn write(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
            assert!(off + bytes.len() as u64 <= self.len, "write past the file");
            let mut pages = self.pages.borrow_mut();
            for (i, &b) in bytes.iter().enumerate() {
                let o = off + i as u64;
                pages.entry(o / 4096).or_insert_with(|| Box::new([0; 4096]))[(o % 4096) as usize] =
                    b;
            }
            Ok(())
        }
        fn ensure_chunks(&mut self, _from: u64, chunk_count: u64) -> Result<()> {
            let need = AREA + chunk_count * CHUNK_SIZE;
            if need > self.disk {
                let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
                return Err(Error::io("grow file (posix_fallocate)", need, full));
            }
            self.len = self.len.max(need);
            Ok(())
        }
        fn max_size(&self) -> u64 {
            self.max_size
        }
    }

    const AREA: u64 = 1 << 20;

    /// A request past `max_size` at a zone's end is refused before the allocator changes: the
    /// zone's tail is not extended, and the next zone gets no table. (A review found both done
    /// first, so that a caller handling the refusal met `AllocatorInterrupted` at commit.)
    #[test]
    fn a_refusal_at_a_zone_end_changes_nothing() {
        let max = AREA + (ZONE_CHUNKS + 100) * CHUNK_SIZE;
        let mut mem = SparseMem {
            pages: RefCell::new(HashMap::new()),
            max_size: max,
            len: AREA,
            disk: u64::MAX,
        };
        let mut a = Allocator::empty(AREA, 0);
        a.alloc(&mut mem, (ZONE_CHUNKS - 11) * CHUNK_SIZE, 8)
            .unwrap();
        a.prepare_commit(&mut mem).unwrap();
        a.commit();
        let (journal, chunks) = (a.journal_len(), a.chunk_count);
        let r = a.alloc(&mut mem, 200 * CHUNK_SIZE, 8);
        assert!(matches!(r, Err(Error::OutOfSpace { .. })), "{r:?}");
        assert_eq!((a.journal_len(), a.chunk_count), (journal, chunks));
        // What fits in the next zone is still given.
        a.alloc(&mut mem, 90 * CHUNK_SIZE, 8).unwrap();
        assert!(a.chunk_count > ZONE_CHUNKS);
        a.check_invariants();
    }

    /// A full disk met by a growth that crosses into the next zone (this zone's tail, then
    /// the next zone's table chunk, then its first extent) is refused before the allocator
    /// changes: the disk's blocks for the whole growth are taken first. (A review, on a full
    /// ext4, found the tail extended and the table added before the new zone's extent met
    /// ENOSPC: the transaction could no longer commit.)
    #[test]
    fn a_full_disk_at_a_zone_crossing_changes_nothing() {
        let mut mem = SparseMem {
            pages: RefCell::new(HashMap::new()),
            max_size: AREA + (ZONE_CHUNKS + 1000) * CHUNK_SIZE,
            len: AREA,
            // Room for this zone's tail and the next zone's table chunk, not for 200 chunks.
            disk: AREA + (ZONE_CHUNKS + 10) * CHUNK_SIZE,
        };
        let mut a = Allocator::empty(AREA, 0);
        a.alloc(&mut mem, (ZONE_CHUNKS - 11) * CHUNK_SIZE, 8)
            .unwrap();
        a.prepare_commit(&mut mem).unwrap();
        a.commit();
        let (journal, chunks) = (a.journal_len(), a.chunk_count);
        let r = a.alloc(&mut mem, 200 * CHUNK_SIZE, 8);
        assert!(
            matches!(&r, Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC)),
            "{r:?}"
        );
        assert_eq!(
            (a.journal_len(), a.chunk_count),
            (journal, chunks),
            "the allocator changed before the full disk refused the growth"
        );
        // What the disk holds is still given.
        mem.disk = u64::MAX;
        a.alloc(&mut mem, 200 * CHUNK_SIZE, 8).unwrap();
        assert!(a.chunk_count > ZONE_CHUNKS);
        a.check_invariants();
    }

    #[test]
    fn objects_across_zones_rebuild_to_the_same_state() {
        // 40 GiB of address space, sparse: zones of 4 GiB each get their table chunk.
        let mut mem = SparseMem {
            pages: RefCell::new(HashMap::new()),
            max_size: AREA + (40 << 30),
            len: AREA,
            disk: u64::MAX,
        };
        let mut a = Allocator::empty(AREA, 0);
        let mut objs = Vec::new();
        // Three objects of 3 GiB cannot share a zone; small objects in between.
        for i in 0..3u64 {
            objs.push(a.alloc(&mut mem, 3 << 30, 8).unwrap());
            objs.push(a.alloc(&mut mem, 64 + i * 16, 8).unwrap());
            a.commit();
        }
        assert!(matches!(
            a.alloc(&mut mem, OBJECT_SIZE_MAX + 1, 8),
            Err(Error::ObjectTooLarge { .. })
        ));
        a.rollback();
        objs.push(a.alloc(&mut mem, OBJECT_SIZE_MAX, 8).unwrap());
        a.commit();
        a.check_invariants();
        assert!(a.chunk_count > 3 * ZONE_CHUNKS, "{} chunks", a.chunk_count);
        for &o in &objs {
            let c = (o - AREA) / CHUNK_SIZE;
            assert_ne!(c % ZONE_CHUNKS, 0, "an object in a table chunk");
        }
        // Free the second big object: its extent returns as free space of its zone.
        a.free(&mut mem, objs[2]).unwrap();
        a.commit();
        let read = |off: u64, buf: &mut [u8]| mem.read(off, buf);
        let b = Allocator::rebuild(AREA, a.chunk_count, &read).unwrap();
        b.check_invariants();
        assert_eq!(b.stats(&read).unwrap(), a.stats(&read).unwrap());
        assert_eq!(b.free_by_start, a.free_by_start);
        assert_eq!(b.large, a.large);
        // Damage one entry the walk reads: Corrupt, naming its offset.
        let at = a.entry_offset(((objs[4] - AREA) / CHUNK_SIZE) as u32);
        mem.write(at + 5, &[0xff]).unwrap();
        let read = |off: u64, buf: &mut [u8]| mem.read(off, buf);
        match Allocator::rebuild(AREA, a.chunk_count, &read) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, at),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
