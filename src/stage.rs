//! Transaction staging: the volatile copy of every range a transaction wrote.
//!
//! Owns: staged byte ranges, kept 64-byte aligned and non-overlapping, so a transaction reads its
//! own writes at any offset, any overlap, any type. May not: touch the file or the mapping; the
//! caller passes a `fill` function that copies committed bytes.
//!
//! Why `unsafe` here: a shared read (`&self`) that overlaps staged ranges only partly must
//! compose its view (committed bytes with the staged ones laid over) in a new buffer while
//! slices returned by earlier shared reads are still alive. Such views are retired, not freed,
//! until the next exclusive (`&mut self`) call, and buffers are held as raw pointers so that
//! moving them never invalidates the slices. A read never changes the staged ranges, so it
//! never changes what the frame logs.

use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::ptr::NonNull;

/// Granularity and alignment of staged ranges. Objects of alignment up to this are supported.
pub(crate) const LINE: u64 = 64;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; LINE as usize]);

/// An owned, 64-byte aligned, zero-initialised byte buffer held through a raw pointer.
struct Buf {
    ptr: NonNull<Line>,
    lines: usize,
}

impl Buf {
    fn zeroed(bytes: u64) -> Buf {
        let lines = (bytes / LINE) as usize;
        debug_assert!(lines > 0 && bytes % LINE == 0);
        let b: Box<[Line]> = vec![Line([0; LINE as usize]); lines].into_boxed_slice();
        // SAFETY: Box::into_raw never returns null.
        let ptr = unsafe { NonNull::new_unchecked(Box::into_raw(b).cast::<Line>()) };
        Buf { ptr, lines }
    }

    fn len(&self) -> u64 {
        self.lines as u64 * LINE
    }

    fn base(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: ptr/lines came from Box::into_raw of a boxed slice of exactly `lines` Lines, and
        // this is the only owner.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.lines,
            )))
        }
    }
}

#[derive(Default)]
struct Inner {
    ranges: BTreeMap<u64, Buf>,
    retired: Vec<Buf>,
    bytes: u64,
}

/// The staged writes of one transaction.
#[derive(Default)]
pub(crate) struct Stage {
    inner: UnsafeCell<Inner>,
}

fn align_down(x: u64) -> u64 {
    x & !(LINE - 1)
}
fn align_up(x: u64) -> u64 {
    (x + LINE - 1) & !(LINE - 1)
}

impl Inner {
    /// The staged range covering `[a, b)` entirely, if there is one; `Ok(None)` if nothing staged
    /// overlaps it; `Err(())` if the overlap is partial (a merge is needed).
    fn find(&self, a: u64, b: u64) -> Result<Option<(u64, &Buf)>, ()> {
        match self.ranges.range(..b).next_back() {
            Some((&s, buf)) if s + buf.len() > a => {
                if s <= a && s + buf.len() >= b {
                    Ok(Some((s, buf)))
                } else {
                    Err(())
                }
            }
            _ => Ok(None),
        }
    }

    /// A scratch buffer holding the transaction's view of `[a, b)`: committed bytes with every
    /// overlapping staged range laid over them. The staged ranges are left as they are (a read
    /// must not grow what the frame logs); the buffer is retired, so it lives until the next
    /// exclusive call.
    fn compose(&mut self, a: u64, b: u64, fill: &mut dyn FnMut(u64, &mut [u8])) -> *const u8 {
        let view = Buf::zeroed(b - a);
        // SAFETY: `view` is freshly allocated, `b - a` bytes, and nothing else refers to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(view.base(), (b - a) as usize) };
        fill(a, dst);
        for (&s, buf) in self.ranges.range(..b).rev() {
            let e = s + buf.len();
            if e <= a {
                break;
            }
            let (lo, hi) = (s.max(a), e.min(b));
            // SAFETY: `buf` is a live buffer of buf.len() bytes; we only read it.
            let src = unsafe { std::slice::from_raw_parts(buf.base(), buf.len() as usize) };
            dst[(lo - a) as usize..(hi - a) as usize]
                .copy_from_slice(&src[(lo - s) as usize..(hi - s) as usize]);
        }
        let base = view.base() as *const u8;
        self.retired.push(view);
        base
    }

    /// Bytes of `[a, b)` (line-aligned) no staged range covers yet.
    fn unstaged(&self, a: u64, b: u64) -> u64 {
        let mut covered = 0;
        for (&s, buf) in self.ranges.range(..b).rev() {
            let e = s + buf.len();
            if e <= a {
                break;
            }
            covered += e.min(b) - s.max(a);
        }
        (b - a) - covered
    }

    /// Replace every range overlapping `[a, b)` by one buffer covering their union and `[a, b)`.
    /// Returns the new range's start. Old buffers go to `retired` when `retire`, else are freed.
    fn merge(&mut self, a: u64, b: u64, fill: &mut dyn FnMut(u64, &mut [u8])) -> u64 {
        let mut starts = Vec::new();
        for (&s, buf) in self.ranges.range(..b).rev() {
            if s + buf.len() <= a {
                break;
            }
            starts.push(s);
        }
        let mut start = a;
        let mut end = b;
        for &s in &starts {
            start = start.min(s);
            end = end.max(s + self.ranges[&s].len());
        }
        let new = Buf::zeroed(end - start);
        // SAFETY: `new` is freshly allocated, `end - start` bytes, and nothing else refers to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(new.base(), (end - start) as usize) };
        fill(start, dst);
        for s in starts {
            let old = self.ranges.remove(&s).expect("range listed above");
            let at = (s - start) as usize;
            // SAFETY: `old` is a live buffer of old.len() bytes; we only read it.
            let src = unsafe { std::slice::from_raw_parts(old.base(), old.len() as usize) };
            dst[at..at + src.len()].copy_from_slice(src);
            self.bytes -= old.len();
        }
        self.bytes += new.len();
        self.ranges.insert(start, new);
        start
    }
}

impl Stage {
    /// Bytes currently staged (what the frame's payload data will be).
    #[cfg(test)]
    pub(crate) fn staged_bytes(&mut self) -> u64 {
        self.inner.get_mut().bytes
    }

    /// Whether nothing is staged.
    pub(crate) fn is_empty(&mut self) -> bool {
        self.inner.get_mut().ranges.is_empty()
    }

    /// The transaction's view of `[off, off+len)`, or `None` if no staged range overlaps it (the
    /// caller then reads the committed bytes). `fill(start, buf)` copies committed bytes.
    pub(crate) fn read(
        &self,
        off: u64,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Option<&[u8]> {
        if len == 0 {
            return None;
        }
        let (a, b) = (align_down(off), align_up(off + len));
        // SAFETY: Stage is !Sync and no method keeps a reference to `Inner` across calls, so this
        // is the only reference to `Inner` now. Slices handed out earlier point into `Buf`
        // allocations, not into `Inner`, and those allocations are neither freed nor written
        // here (merge only reads them and moves their raw pointers to `retired`).
        let inner = unsafe { &mut *self.inner.get() };
        let (base, start) = match inner.find(a, b) {
            Ok(None) => return None,
            Ok(Some((s, buf))) => (buf.base() as *const u8, s),
            Err(()) => (inner.compose(a, b, fill), a),
        };
        // SAFETY: [off, off+len) lies inside this buffer (a staged range covering [a, b), or a
        // composed view of exactly [a, b)). The buffer lives until a `&mut self` call (which
        // cannot happen while the returned borrow of `self` lives): staged ranges are only
        // replaced by `write` (`&mut self`), composed views are retired until then, and
        // neither is written through any `&self` path.
        Some(unsafe { std::slice::from_raw_parts(base.add((off - start) as usize), len as usize) })
    }

    /// Stage `[off, off+len)` for writing and return it; bytes not written before are copied from
    /// the committed state by `fill`. If staging it would take `staged_bytes` past `max_bytes`,
    /// nothing changes and the error carries the total it would have reached (lines already
    /// staged cost nothing: rewriting them adds no byte to the frame).
    pub(crate) fn write(
        &mut self,
        off: u64,
        len: u64,
        max_bytes: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) -> Result<&mut [u8], u64> {
        if len == 0 {
            return Ok(&mut []);
        }
        let inner = self.inner.get_mut();
        inner.retired.clear(); // `&mut self`: no slice from `read` is alive any more.
        let (a, b) = (align_down(off), align_up(off + len));
        let start = match inner.find(a, b) {
            Ok(Some((s, _))) => s,
            found => {
                let new = match found {
                    Ok(None) => b - a,
                    _ => inner.unstaged(a, b),
                };
                if inner.bytes + new > max_bytes {
                    return Err(inner.bytes + new);
                }
                inner.merge(a, b, fill)
            }
        };
        let buf = &inner.ranges[&start];
        // SAFETY: in bounds as in `read`; `&mut self` guarantees no other slice of this buffer is
        // alive, and the returned borrow keeps it so.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(buf.base().add((off - start) as usize), len as usize)
        })
    }

    /// Every staged range in offset order.
    pub(crate) fn ranges(&mut self) -> impl Iterator<Item = (u64, &[u8])> {
        let inner = self.inner.get_mut();
        inner.ranges.iter().map(|(&s, buf)| {
            // SAFETY: a live buffer of buf.len() bytes; shared for the `&mut self` borrow.
            (s, unsafe {
                std::slice::from_raw_parts(buf.base() as *const u8, buf.len() as usize)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(start: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((start + i as u64) % 251) as u8;
        }
    }

    #[test]
    fn read_your_writes_with_partial_overlaps() {
        let mut st = Stage::default();
        assert!(st.read(100, 8, &mut committed).is_none());
        st.write(100, 8, u64::MAX, &mut committed)
            .unwrap()
            .copy_from_slice(&[1; 8]);
        st.write(300, 4, u64::MAX, &mut committed)
            .unwrap()
            .copy_from_slice(&[2; 4]);
        // A read spanning both staged ranges and committed bytes between them merges.
        let v = st.read(96, 212, &mut committed).unwrap().to_vec();
        assert_eq!(&v[4..12], &[1; 8]);
        assert_eq!(&v[204..208], &[2; 4]);
        assert_eq!(v[0], 96);
        assert_eq!(v[12], 108);
        // Earlier shared slices stay valid across a merging read.
        let a = st.read(100, 8, &mut committed).unwrap();
        let b = st.read(0, 400, &mut committed).unwrap();
        assert_eq!(a, &[1; 8]);
        assert_eq!(&b[300..304], &[2; 4]);
        // Reading never changes what is staged (and so what the frame logs).
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(64, 64), (256, 64)]);
        assert_eq!(st.staged_bytes(), 128);
        // Only lines not staged yet count against the budget; a refused write changes nothing.
        assert!(st.write(100, 8, 128, &mut committed).is_ok());
        assert_eq!(st.write(120, 150, 255, &mut committed).err(), Some(256));
        assert_eq!(st.write(1000, 1, 128, &mut committed).err(), Some(192));
        assert_eq!(st.staged_bytes(), 128);
        // A write spanning both merges them (with the committed bytes between).
        st.write(120, 150, u64::MAX, &mut committed).unwrap()[0] = 7;
        let ranges: Vec<_> = st.ranges().map(|(s, r)| (s, r.len())).collect();
        assert_eq!(ranges, vec![(64, 256)]);
        let v = st.read(64, 256, &mut committed).unwrap();
        assert_eq!((v[36], v[56], v[150], v[236]), (1, 7, 214, 2));
    }
}
