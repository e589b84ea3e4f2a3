//! Where things are in an open heap: the fixed offsets from the superblock, the checked access
//! rule for user pointers, the heap header's one reader, and the root object's identity.
//!
//! Owns: `Geometry` (every offset check of a user pointer goes through `Geometry::check`), the
//! root fingerprint, and reading the heap header from any byte source. May not: touch the
//! file or the mapping (callers pass a `read` function).

use txheap_recovery::{Superblock, PAGE_SIZE};

use crate::alloc::{HeapHeader, HEAP_HEADER_LEN, ROOT_IDENTITY_STORED};
use crate::error::{Error, Result};
use crate::limits::{ALIGN_MAX, CHUNK_SIZE, ROOT_LEN_MAX};
use crate::pptr::PSlice;
use crate::stored::{describe, Stored};

/// Fixed offsets of an open heap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub heap_offset: u64,
    pub root_offset: u64,
    pub chunk_area: u64,
    pub log_offset: u64,
    pub log_size: u64,
    pub max_size: u64,
}

impl Geometry {
    pub(crate) fn of(sb: &Superblock) -> Geometry {
        Geometry {
            heap_offset: sb.heap_offset(),
            root_offset: sb.heap_offset() + PAGE_SIZE,
            chunk_area: sb.chunk_area_offset(),
            log_offset: sb.log_offset(),
            log_size: sb.log_size,
            max_size: sb.max_size,
        }
    }

    /// End of the chunk area of `chunk_count` chunks.
    #[inline]
    pub(crate) fn heap_end(&self, chunk_count: u64) -> u64 {
        self.chunk_area + chunk_count * CHUNK_SIZE
    }

    /// Bytes the elements of `s` span; a length whose bytes overflow is
    /// [`Error::OutOfBounds`] with the real end of the heap.
    #[inline]
    pub(crate) fn slice_bytes<T>(&self, chunk_count: u64, s: PSlice<T>) -> Result<u64> {
        s.byte_len().ok_or_else(|| Error::OutOfBounds {
            offset: s.offset(),
            len: u64::MAX,
            heap_end: self.heap_end(chunk_count),
        })
    }

    /// Check that `[off, off+len)` lies in the root area or the chunk area of `chunk_count`
    /// chunks, that `off` is aligned, and that the alignment is one the heap supports (above
    /// [`ALIGN_MAX`] the answer would depend on where a staged copy happens to land).
    #[inline]
    pub(crate) fn check(&self, chunk_count: u64, off: u64, len: u64, align: u64) -> Result<()> {
        // The common case in one test, inlined into every checked read and write; any failure
        // goes to `check_failed`, which names the first problem in the order documented there.
        // A mask, not `%`: alignments come from `align_of` (powers of two), and a division here
        // was a tenth of a hash-map lookup's time.
        let heap_end = self.heap_end(chunk_count);
        let aligned = align <= ALIGN_MAX && align.is_power_of_two() && off & (align - 1) == 0;
        match off.checked_add(len) {
            Some(end)
                if off != 0
                    && aligned
                    && ((off >= self.chunk_area && end <= heap_end)
                        || (off >= self.root_offset && end <= self.root_offset + ROOT_LEN_MAX)) =>
            {
                Ok(())
            }
            _ => Err(self.check_failed(chunk_count, off, len, align)),
        }
    }

    /// The error [`Self::check`] reports: a null pointer, then an alignment the heap does not
    /// support, then a misaligned offset, then a range outside the root and chunk areas.
    #[cold]
    #[inline(never)]
    fn check_failed(&self, chunk_count: u64, off: u64, len: u64, align: u64) -> Error {
        match self.check_slow(chunk_count, off, len, align) {
            Err(e) => e,
            // Not reached (`check` calls this only for a range that fails); an error all the
            // same, never a panic.
            Ok(()) => Error::OutOfBounds {
                offset: off,
                len,
                heap_end: self.heap_end(chunk_count),
            },
        }
    }

    fn check_slow(&self, chunk_count: u64, off: u64, len: u64, align: u64) -> Result<()> {
        if off == 0 {
            return Err(Error::NullPointer);
        }
        if align > ALIGN_MAX {
            return Err(Error::UnsupportedAlignment {
                align,
                max: ALIGN_MAX,
            });
        }
        if !align.is_power_of_two() || off & (align - 1) != 0 {
            return Err(Error::Misaligned { offset: off, align });
        }
        let heap_end = self.heap_end(chunk_count);
        let oob = || Error::OutOfBounds {
            offset: off,
            len,
            heap_end,
        };
        let end = off.checked_add(len).ok_or_else(oob)?;
        let in_root = off >= self.root_offset && end <= self.root_offset + ROOT_LEN_MAX;
        let in_chunks = off >= self.chunk_area && end <= heap_end;
        if in_root || in_chunks {
            Ok(())
        } else {
            Err(Error::OutOfBounds {
                offset: off,
                len,
                heap_end,
            })
        }
    }
}

/// FNV-1a over `std::any::type_name`, size and alignment: the root's identity in files written
/// before [`Stored`] (heap header `root_identity` 0). Still accepted when it matches, so those
/// files open; the compiler's type names are not stable, so new roots use [`Stored::ID`].
pub(crate) fn legacy_fingerprint<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let name = std::any::type_name::<T>().as_bytes();
    let size = (std::mem::size_of::<T>() as u64).to_le_bytes();
    let align = (std::mem::align_of::<T>() as u64).to_le_bytes();
    for &b in name.iter().chain(&size).chain(&align) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where the root type's description lives: after the heap header, in the rest of its page
/// (docs/FORMAT.md): a u16 length, then that many bytes of UTF-8.
pub(crate) const ROOT_DESC_AT: u64 = HEAP_HEADER_LEN;
/// Longest description kept (longer ones are cut at a character boundary).
pub(crate) const ROOT_DESC_MAX: usize = 4000;

/// The root description record for `T` (length prefix included).
pub(crate) fn root_description<T: Stored>() -> Vec<u8> {
    let d = describe::<T>();
    let mut end = d.len().min(ROOT_DESC_MAX);
    while !d.is_char_boundary(end) {
        end -= 1;
    }
    let mut rec = (end as u16).to_le_bytes().to_vec();
    rec.extend_from_slice(&d.as_bytes()[..end]);
    rec
}

/// Decode the description record read from the header page (`page` starts at the header).
pub(crate) fn decode_description(page: &[u8]) -> String {
    let at = ROOT_DESC_AT as usize;
    let Some(len) = page.get(at..at + 2) else {
        return "(no description)".into();
    };
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    match page.get(at + 2..at + 2 + len).map(std::str::from_utf8) {
        Some(Ok(s)) if !s.is_empty() => s.to_string(),
        _ => "(no readable description)".into(),
    }
}

/// The heap header's page: the header, the root description, then the type catalogue.
pub(crate) const HEADER_PAGE: usize = 4096;
/// The catalogue's first bytes (docs/FORMAT.md, "Type catalogue").
pub(crate) const CATALOGUE_MAGIC: [u8; 4] = *b"TXTC";
/// A catalogue record's fixed part: identity (8), length (2), CRC-32 (4).
const RECORD_HEAD: usize = 14;
/// Longest description a catalogue record keeps (longer ones are cut at a character boundary).
const RECORD_DESC_MAX: usize = 1024;

/// Where the type catalogue starts in the header page (`page` starts at the header): right
/// after the root description record (its u16 length and its bytes).
fn catalogue_at(page: &[u8]) -> usize {
    let at = ROOT_DESC_AT as usize;
    let len = page
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    at + 2 + len.min(ROOT_DESC_MAX)
}

/// The type catalogue in the header page: where it starts, where its records end, and each
/// record's identity and description. A page without the magic there has none; records are
/// read up to the first whose CRC fails (bytes left by an older, longer root description are
/// never taken for one).
pub(crate) fn catalogue(page: &[u8]) -> (usize, usize, Vec<(u64, String)>) {
    let start = catalogue_at(page);
    let mut out = Vec::new();
    if page.get(start..start + 4) != Some(&CATALOGUE_MAGIC[..]) {
        return (start, start, out);
    }
    let mut at = start + 4;
    while let Some(head) = page.get(at..at + RECORD_HEAD) {
        let id = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u16::from_le_bytes([head[8], head[9]]) as usize;
        let crc = u32::from_le_bytes(head[10..14].try_into().expect("4 bytes"));
        let Some(text) = page.get(at + RECORD_HEAD..at + RECORD_HEAD + len) else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&head[..10]);
        h.update(text);
        let Ok(text) = std::str::from_utf8(text) else {
            break;
        };
        if id == 0 || h.finalize() != crc {
            break;
        }
        out.push((id, text.to_string()));
        at += RECORD_HEAD + len;
    }
    (start, at, out)
}

/// A catalogue record: `id`, then `desc` (cut to [`RECORD_DESC_MAX`] bytes).
pub(crate) fn catalogue_record(id: u64, desc: &str) -> Vec<u8> {
    let mut end = desc.len().min(RECORD_DESC_MAX);
    while !desc.is_char_boundary(end) {
        end -= 1;
    }
    let text = &desc.as_bytes()[..end];
    let mut rec = id.to_le_bytes().to_vec();
    rec.extend_from_slice(&(end as u16).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&rec);
    h.update(text);
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.extend_from_slice(text);
    rec
}

/// The catalogue's bytes for `records` (magic first), as many whole records as fit in `room`
/// bytes; empty when none is given or none fits.
pub(crate) fn catalogue_bytes(records: &[(u64, String)], room: usize) -> Vec<u8> {
    let mut out = CATALOGUE_MAGIC.to_vec();
    for (id, desc) in records {
        let rec = catalogue_record(*id, desc);
        if out.len() + rec.len() > room {
            break;
        }
        out.extend_from_slice(&rec);
    }
    if out.len() == CATALOGUE_MAGIC.len() {
        out.clear();
    }
    out
}

/// The stored description of identity `id` in the header page's catalogue, if recorded.
pub(crate) fn described(page: &[u8], id: u64) -> Option<String> {
    catalogue(page)
        .2
        .into_iter()
        .find_map(|(i, d)| (i == id).then_some(d))
}

/// Whether `T` may be a root at all: at most the root area's size, and an alignment the heap
/// supports.
pub(crate) fn root_fits<T: Stored>() -> Result<()> {
    let size = std::mem::size_of::<T>() as u64;
    let align = std::mem::align_of::<T>() as u64;
    if size > ROOT_LEN_MAX {
        return Err(Error::RootTooLarge {
            size,
            max: ROOT_LEN_MAX,
        });
    }
    if align > ALIGN_MAX {
        return Err(Error::UnsupportedAlignment {
            align,
            max: ALIGN_MAX,
        });
    }
    Ok(())
}

/// Check a root type against what the heap header says: `Ok(false)` if the heap has no root
/// yet. `page` reads the header page (for the stored description in the error).
pub(crate) fn check_root<T: Stored>(
    header: &HeapHeader,
    page: &dyn Fn() -> Vec<u8>,
) -> Result<bool> {
    root_fits::<T>()?;
    let size = std::mem::size_of::<T>() as u64;
    if header.root_size == 0 && header.root_fingerprint == 0 {
        return Ok(false);
    }
    let stored = header.root_identity == ROOT_IDENTITY_STORED;
    let fp = if stored {
        T::ID
    } else {
        legacy_fingerprint::<T>()
    };
    // (`SHAPE`: the identity files written before pointer identities recorded, still read.)
    let legacy_shape = stored && header.root_fingerprint == T::SHAPE;
    if header.root_size != size || (header.root_fingerprint != fp && !legacy_shape) {
        // Only a mismatch reads the stored description (every transaction checks its root).
        let stored_layout = if stored {
            decode_description(&page())
        } else {
            "(written by txheap before Stored: identity from the compiler's type name)".into()
        };
        return Err(Error::RootTypeMismatch {
            stored_size: header.root_size,
            stored_fingerprint: header.root_fingerprint,
            requested_size: size,
            requested_fingerprint: T::ID,
            stored_layout,
            requested_layout: describe::<T>(),
        });
    }
    Ok(true)
}

/// Read and check the heap header through `read(offset, buf)`.
pub(crate) fn read_heap_header(
    sb: &Superblock,
    read: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<HeapHeader> {
    let mut hb = [0u8; HEAP_HEADER_LEN as usize];
    read(sb.heap_offset(), &mut hb)?;
    HeapHeader::decode(&hb, sb.heap_offset())
}

/// The file length the heap header's chunk count needs; a count past `max_size` is
/// [`Error::Corrupt`].
pub(crate) fn needed_len(sb: &Superblock, header: &HeapHeader) -> Result<u64> {
    let needed = header
        .chunk_count
        .checked_mul(CHUNK_SIZE)
        .and_then(|b| b.checked_add(sb.chunk_area_offset()))
        .filter(|&n| n <= sb.max_size);
    needed.ok_or_else(|| Error::Corrupt {
        offset: sb.heap_offset(),
        what: format!(
            "chunk count {} exceeds max_size {}",
            header.chunk_count, sb.max_size
        ),
    })
}
