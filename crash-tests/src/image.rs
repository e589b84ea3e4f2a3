//! Crash images on file.
//!
//! Owns: [`ImageFile`] (a file that holds one crash image after another, rewriting only the pages
//! that must change, and checking itself against the image built from scratch) and
//! [`scratch_dir`] (where images are written: tmpfs where there is one).
//!
//! May not: decide which images to make (`disk.rs`) or open and check them (`check.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use txheap::TraceEvent;
use txheap_recovery::PAGE_SIZE as PAGE;

use crate::{Disk, SECTOR};

/// A scratch directory for crash images: on tmpfs (`/dev/shm`) where there is one, so that
/// writing millions of images does not wear a disk, else in the default temp directory.
///
/// ```
/// let dir = crash_tests::scratch_dir();
/// assert!(dir.path().is_dir());
/// ```
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

/// A file (on tmpfs, where the caller puts it) that holds one crash image after another, rewriting only the pages that
/// differ from what it holds: the pages of undecided sectors, of sectors made durable since the
/// last image, and of every write that recovery made to the previous image (taken from its
/// recorded trace). Every `verify_every`-th image is read back whole and compared with the
/// image built from scratch, so a page the mirror got wrong cannot go unnoticed.
///
/// ```
/// use crash_tests::{Disk, ImageFile};
/// use txheap::TraceEvent;
/// let dir = tempfile::tempdir().unwrap();
/// let mut disk = Disk::new(&[0; 8192]);
/// disk.apply(&TraceEvent::Write { offset: 0, bytes: vec![1; 8] });
/// let mut file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
/// file.write(&disk, &[1]).unwrap();
/// file.write(&disk, &[1]).unwrap(); // the same image again: nothing to rewrite
/// assert_eq!(file.pages_written, 1); // one 4 KiB page of the two
/// assert_eq!(std::fs::read(file.path()).unwrap(), disk.image_of(&[1]));
/// ```
#[derive(Debug)]
pub struct ImageFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// What the file holds, as far as this struct knows (pages in `stale` excepted).
    mirror: Vec<u8>,
    file_len: u64,
    stale: std::collections::BTreeSet<u64>,
    last_overrides: Vec<u64>,
    seen_changes: usize,
    written: u64,
    /// Read back and compare every this many images (0: never).
    pub verify_every: u64,
    /// Pages written so far.
    pub pages_written: u64,
}

impl ImageFile {
    /// A file at `path` holding `disk`'s durable image.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile};
    /// let dir = tempfile::tempdir().unwrap();
    /// let disk = Disk::new(&[3; 4096]);
    /// let file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
    /// assert_eq!(std::fs::read(file.path()).unwrap(), [3; 4096]);
    /// assert_eq!((file.verify_every, file.pages_written), (64, 0));
    /// ```
    pub fn new(path: &Path, disk: &Disk) -> std::io::Result<ImageFile> {
        std::fs::write(path, disk.durable())?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(ImageFile {
            path: path.to_path_buf(),
            file,
            mirror: disk.durable().to_vec(),
            file_len: disk.len(),
            stale: Default::default(),
            last_overrides: Vec::new(),
            seen_changes: disk.durable_changes().len(),
            written: 0,
            verify_every: 64,
            pages_written: 0,
        })
    }

    /// Where the file is.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile};
    /// let dir = tempfile::tempdir().unwrap();
    /// let at = dir.path().join("image.heap");
    /// let file = ImageFile::new(&at, &Disk::new(&[0; 512])).unwrap();
    /// assert_eq!(file.path(), at);
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make the file hold `disk`'s image for `choice`.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile, Rng};
    /// use txheap::TraceEvent;
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut disk = Disk::new(&[0; 8192]);
    /// disk.apply(&TraceEvent::Write { offset: 4096, bytes: vec![1; 8] });
    /// let mut file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
    /// for choice in disk.choices(2, &mut Rng::seeded(1)) {
    ///     file.write(&disk, &choice).unwrap();
    ///     assert_eq!(std::fs::read(file.path()).unwrap(), disk.image_of(&choice));
    /// }
    /// // The durable image was there already; the other one took its second page.
    /// assert_eq!(file.pages_written, 1);
    /// ```
    pub fn write(&mut self, disk: &Disk, choice: &[u16]) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let io = |e: std::io::Error| format!("image file: {e}");
        let len = disk.len();
        if self.file_len != len {
            self.file.set_len(len).map_err(io)?;
            self.file_len = len;
        }
        if self.mirror.len() as u64 != len {
            self.mirror.resize(len as usize, 0);
        }
        // Pages recovery wrote: the mirror holds their old bytes, so write them whatever it says.
        let stale = std::mem::take(&mut self.stale);
        let mut pages = stale.clone();
        pages.extend(self.last_overrides.drain(..));
        for &s in &disk.durable_changes()[self.seen_changes..] {
            pages.insert(s * SECTOR / PAGE);
        }
        self.seen_changes = disk.durable_changes().len();
        let mut overrides: BTreeMap<u64, (u64, &[u8])> = BTreeMap::new();
        for (s, v) in disk.chosen(choice) {
            overrides.insert(s, (s, v));
            let p = s * SECTOR / PAGE;
            pages.insert(p);
            self.last_overrides.push(p);
        }
        let mut want = [0u8; PAGE as usize];
        for p in pages {
            let a = p * PAGE;
            if a >= len {
                continue;
            }
            let b = (a + PAGE).min(len);
            let want = &mut want[..(b - a) as usize];
            want.copy_from_slice(&disk.durable()[a as usize..b as usize]);
            for (_, (s, v)) in overrides.range(a / SECTOR..b.div_ceil(SECTOR)) {
                let o = (s * SECTOR - a) as usize;
                want[o..o + v.len()].copy_from_slice(v);
            }
            let have = &mut self.mirror[a as usize..b as usize];
            if have != want || stale.contains(&p) {
                self.file.write_all_at(want, a).map_err(io)?;
                have.copy_from_slice(want);
                self.pages_written += 1;
            }
        }
        self.written += 1;
        if self.verify_every > 0 && self.written % self.verify_every == 0 {
            let on_file = std::fs::read(&self.path).map_err(io)?;
            if on_file != disk.image_of(choice) {
                return Err("simulator bug: the image file does not hold the image".into());
            }
        }
        Ok(())
    }

    /// Note what happened to the file since [`ImageFile::write`]: `events` recorded while
    /// recovering and checking it. Their pages are rewritten before the next image.
    ///
    /// ```
    /// use crash_tests::{Disk, ImageFile};
    /// use txheap::TraceEvent;
    /// let dir = tempfile::tempdir().unwrap();
    /// let disk = Disk::new(&[0; 4096]);
    /// let mut file = ImageFile::new(&dir.path().join("image.heap"), &disk).unwrap();
    /// // "Recovery" writes to the file behind the mirror's back, and says so:
    /// std::fs::write(file.path(), [9; 4096]).unwrap();
    /// file.touched(&[TraceEvent::Write { offset: 0, bytes: vec![9; 4096] }]).unwrap();
    /// file.write(&disk, &[]).unwrap();
    /// assert_eq!(std::fs::read(file.path()).unwrap(), disk.durable());
    /// ```
    pub fn touched(&mut self, events: &[TraceEvent]) -> Result<(), String> {
        for e in events {
            if let TraceEvent::Write { offset, bytes } = e {
                let end = offset + bytes.len() as u64;
                self.stale.extend(offset / PAGE..end.div_ceil(PAGE));
            }
        }
        self.file_len = self
            .file
            .metadata()
            .map_err(|e| format!("image file: {e}"))?
            .len();
        Ok(())
    }
}
