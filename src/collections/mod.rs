//! Persistent collections built on the heap's own allocator and transactions.
//!
//! Owns: [`PVec`], [`PBytes`], [`PString`], [`PHashMap`] and [`PBTreeMap`], the [`View`] trait
//! (read access shared by [`Tx`] and [`Reader`]) and the [`Element`] trait (how a value is put
//! into, read from and released by a collection). May not: touch the file or the stage except
//! through [`Tx`]'s checked, transactional API; it holds no `unsafe`.
//!
//! Every collection is a small fixed-size header whose all-zero bytes are a valid empty
//! collection, so it can be the root (`tx.root::<PVec<u64>>()`), a field of any stored object,
//! or an object of its own ([`PVec::new`]). Operations take a pointer to the header and a
//! transaction (to change it) or any [`View`] (to read it). A collection records the
//! [`crate::Stored::ID`] of its element types on first use and refuses another type
//! ([`Error::TypeMismatch`]). Every read checks what it meets (bounds, counts, node kinds,
//! depth), so a damaged collection gives an [`Error`], never a panic or a hang; `check()`
//! verifies all invariants. `docs/ARCHITECTURE.md` (section 10) describes the layouts.
//!
//! An operation that changes a collection is all or none: one that fails after it changed part
//! of the collection (the log filled between a node's split and its parent's update) leaves the
//! transaction uncommittable ([`Error::CollectionInterrupted`] at commit; nothing of it is
//! committed), so a half-done map is never committed. To go on after such an error, run the
//! operation inside [`Tx::nested`], which undoes just that part.

/// The body of `Element` for a handle that is its own value (plain data: stored as given,
/// loaded in place, owning nothing).
macro_rules! plain_element_body {
    () => {
        type Input = Self;
        const OWNS_STORAGE: bool = false;
        fn store(_: &mut Tx<'_>, input: &Self) -> Result<Self> {
            Ok(*input)
        }
        fn load<'v, Vw: View>(this: &'v Self, _: &'v Vw) -> Result<&'v Self> {
            Ok(this)
        }
        fn release(self, _: &mut Tx<'_>) -> Result<()> {
            Ok(())
        }
    };
}

mod btree;
mod bytes;
mod hash;
mod siphash;
mod vec;

pub use btree::{BTreeStats, PBTreeMap, Range};
pub use bytes::{PBytes, PString};
pub use hash::PHashMap;
pub use vec::PVec;

use bytemuck::Pod;

use crate::error::{Error, Result};
use crate::pptr::{PPtr, PSlice};
use crate::reader::Reader;
use crate::stored::{describe, Stored};
use crate::tx::Tx;

/// Checked read access to a heap: implemented by [`Tx`] (which sees its own writes) and
/// [`Reader`]. Collections' read operations take any `View`.
///
/// ```
/// use txheap::{PPtr, View};
/// fn first<V: View>(v: &V, p: PPtr<[u32; 4]>) -> txheap::Result<u32> {
///     Ok(v.get(p)?[0])
/// }
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("view.heap"), txheap::Options::new())?;
/// let p = heap.transaction(|tx| {
///     let p = tx.alloc([5u32, 6, 7, 8])?;
///     assert_eq!(first(tx, p)?, 5);
///     Ok(p)
/// })?;
/// assert_eq!(heap.read(|r| first(r, p))?, 5);
/// # Ok::<(), txheap::Error>(())
/// ```
pub trait View {
    /// The object `p` points to, bounds- and alignment-checked.
    fn get<T: Pod>(&self, p: PPtr<T>) -> Result<&T>;
    /// The elements `s` points to, bounds- and alignment-checked.
    fn slice<T: Pod>(&self, s: PSlice<T>) -> Result<&[T]>;
    /// The layout description the heap's type catalogue holds for stored identity `id`
    /// (docs/FORMAT.md), if any: what a collection's [`Error::TypeMismatch`] names as the
    /// stored layout. The default knows none.
    ///
    /// ```
    /// use txheap::{PVec, Stored, View};
    ///
    /// #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
    /// #[repr(C)]
    /// struct Point { x: u32, y: u32 }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("vd.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| PVec::<Point>::new(tx))?;
    /// let d = heap.read(|r| Ok(r.stored_description(Point::ID)))?;
    /// assert_eq!(d.as_deref(), Some("Point (size 8, align 4; x: u32 @0, y: u32 @4)"));
    /// # Ok::<(), txheap::Error>(())
    /// ```
    fn stored_description(&self, id: u64) -> Option<String> {
        let _ = id;
        None
    }
}

impl View for Tx<'_> {
    fn get<T: Pod>(&self, p: PPtr<T>) -> Result<&T> {
        Tx::get(self, p)
    }
    fn slice<T: Pod>(&self, s: PSlice<T>) -> Result<&[T]> {
        Tx::slice(self, s)
    }
    fn stored_description(&self, id: u64) -> Option<String> {
        Tx::stored_description(self, id)
    }
}

impl View for Reader<'_> {
    fn get<T: Pod>(&self, p: PPtr<T>) -> Result<&T> {
        Reader::get(self, p)
    }
    fn slice<T: Pod>(&self, s: PSlice<T>) -> Result<&[T]> {
        Reader::slice(self, s)
    }
    fn stored_description(&self, id: u64) -> Option<String> {
        Reader::stored_description(self, id)
    }
}

/// A value a collection can hold: a fixed-size stored handle, with the borrowed form callers
/// give and get back (`Input`). For plain data (`u64`, arrays, `#[derive(Stored)]` structs,
/// which get this trait from the derive) the handle is the value itself. [`PBytes`] and
/// [`PString`] are handles to a separate allocation: a collection stores the bytes on insert and
/// frees them when the entry goes.
///
/// ```
/// use txheap::{Element, PBytes};
/// # let dir = tempfile::tempdir().unwrap();
/// # let heap = txheap::Heap::create(dir.path().join("el.heap"), txheap::Options::new())?;
/// heap.transaction(|tx| {
///     let b = PBytes::store(tx, b"abc")?;
///     assert_eq!(PBytes::load(&b, tx)?, b"abc");
///     b.release(tx)
/// })?;
/// # Ok::<(), txheap::Error>(())
/// ```
pub trait Element: Stored {
    /// The borrowed form: `Self` for plain data, `[u8]` for [`PBytes`], `str` for [`PString`].
    type Input: ?Sized;
    /// Make a stored handle holding `input` (allocating if the handle owns storage).
    fn store(tx: &mut Tx<'_>, input: &Self::Input) -> Result<Self>;
    /// The borrowed form of a stored handle, read through `view`.
    fn load<'v, V: View>(this: &'v Self, view: &'v V) -> Result<&'v Self::Input>;
    /// Free what the handle owns (nothing for plain data).
    fn release(self, tx: &mut Tx<'_>) -> Result<()>;
    /// The allocation the handle owns, if any (its start offset): what `release` frees. For
    /// walks that account for every block a collection holds (`for_each_block`).
    fn owned_block(&self) -> Option<u64> {
        None
    }
    /// Whether a handle may own storage (`release` may free something, `owned_block` may be
    /// `Some`). `false` for plain data: the collections then skip releasing and visiting their
    /// elements one by one (a review found `PVec<()>::clear` of a damaged length of 2^64 - 1
    /// never ending). The default, `true`, is right for any handle.
    ///
    /// ```
    /// use txheap::{Element, PBytes};
    /// assert!(!<u64 as Element>::OWNS_STORAGE);
    /// assert!(<PBytes as Element>::OWNS_STORAGE);
    /// ```
    const OWNS_STORAGE: bool = true;
}

macro_rules! plain_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            plain_element_body!();
        }
    )*};
}
plain_element!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    ()
);

impl<T: Stored, const N: usize> Element for [T; N] {
    plain_element_body!();
}

impl<T: Stored> Element for PPtr<T> {
    plain_element_body!();
}

/// Check the element identity `slot` holds (0: a collection not used yet, which takes any);
/// a mismatch names the stored layout from `view`'s type catalogue.
#[inline]
fn check_id<T: Stored, V: View + ?Sized>(
    view: &V,
    slot: u64,
    at: u64,
    role: &'static str,
) -> Result<()> {
    // (`SHAPE`: what a collection written before pointer identities recorded.)
    if slot == T::ID || slot == 0 || slot == T::SHAPE {
        Ok(())
    } else {
        Err(id_mismatch::<T>(
            view.stored_description(slot),
            slot,
            at,
            role,
        ))
    }
}

/// The identity to record for `T` where `slot` holds one ([`stored_id`]), and, where it holds
/// none yet (a zeroed handle's first write), `T`'s description recorded in the heap's type
/// catalogue, as [`PVec::new`] and the maps' `new` record theirs.
fn record_id<T: Stored>(tx: &mut Tx<'_>, slot: u64) -> Result<u64> {
    if slot == 0 {
        tx.record_type::<T>()?;
    }
    Ok(stored_id::<T>(slot))
}

/// The identity to record for `T` where `slot` holds one: the one there if it is `T`'s shape
/// (a collection written before pointer identities keeps its record, so that the txheap that
/// wrote it still reads it), else `T::ID`.
fn stored_id<T: Stored>(slot: u64) -> u64 {
    if slot != 0 && slot == T::SHAPE {
        slot
    } else {
        T::ID
    }
}

/// The error of [`check_id`] (out of line: every lookup checks two identities).
#[cold]
#[inline(never)]
fn id_mismatch<T: Stored>(stored: Option<String>, slot: u64, at: u64, role: &'static str) -> Error {
    Error::TypeMismatch {
        offset: at,
        role,
        stored_id: slot,
        stored: stored.unwrap_or_else(|| {
            "(layout not recorded: the collection is older than the heap's type catalogue, \
             or the catalogue was full)"
                .into()
        }),
        requested: format!("{} (identity {:#018x})", describe::<T>(), T::ID),
    }
}

/// The result of an operation on the collection whose header `h` names, with every error it
/// met while following the collection's own pointers (nodes, buckets, a directory, a buffer,
/// stored byte strings) reported as damage of that collection: `Error::Corrupt` at its header
/// (the word that led astray is the header's or one the header leads to), the offset the error
/// met and the error itself in the message. A pointer error (`OutOfBounds`, `Misaligned`,
/// `NotAllocated`, `InvalidFree`, `NullPointer`) outside the header is not the caller's, who
/// named only the header (a review found ten such cases, from a flipped bit in a buffer offset
/// read as `Misaligned` to a node whose bitmap bit was cleared refused as a double free; a
/// review of the first version found the offset it named an intact object, or past the file's
/// end). An error at the header itself (a null, wild, misaligned or freed handle) stays the
/// caller's.
fn own<H, R>(h: PPtr<H>, r: Result<R>) -> Result<R> {
    r.map_err(|e| own_error(h, e))
}

/// [`own`] for one error.
fn own_error<H>(h: PPtr<H>, e: Error) -> Error {
    let start = h.offset();
    // The handle's own error is met at its start: every check of the header (its bounds,
    // alignment, allocation) names the handle's offset. An error met past the start, even
    // inside the header's bytes, was met following a pointer the collection holds: a damaged
    // one that names a word of the header (the damage sweep found a byte string's handle
    // naming the map's header + 8 freed as a caller's `InvalidFree`). (No end is computed: a
    // wild handle near 2^64 overflowed one, a review found.)
    let own = |o: u64| o == start;
    let met = match &e {
        // Offset 0 names nothing: a null pointer met inside the collection.
        Error::Corrupt { offset: 0, .. } => None,
        Error::NullPointer if start != 0 => None,
        Error::OutOfBounds { offset, .. }
        | Error::Misaligned { offset, .. }
        | Error::NotAllocated { offset, .. }
        | Error::InvalidFree { offset, .. }
            if !own(*offset) =>
        {
            Some(*offset)
        }
        _ => return e,
    };
    let at = met.map_or(String::new(), |o| format!(" at {o:#x}"));
    corrupt(
        start,
        format!("the collection at {start:#x} is damaged: following its own pointers met{at}: {e}"),
    )
}

/// `Tx::writable_block` for a collection's own block (a buffer, a directory): `[at, at + len)`
/// must be an allocation of its own; a `NotAllocated` refusal is damage, `Corrupt` at `name_at`
/// (the header or the block that names it) saying `what`.
fn own_block_writable(
    tx: &mut Tx<'_>,
    (at, len, align): (u64, u64, u64),
    name_at: u64,
    what: impl FnOnce() -> String,
) -> Result<crate::tx::Writable> {
    tx.writable_block(at, len, align).map_err(|e| match e {
        Error::NotAllocated { .. } => corrupt(
            name_at,
            format!("{} {at:#x} is not an allocation of its own", what()),
        ),
        e => e,
    })
}

/// A map's key and value types aligned at most `max` (where its nodes or buckets place them),
/// else `UnsupportedAlignment`.
fn aligned_at_most<K, V>(max: u64) -> Result<()> {
    let align = std::mem::align_of::<K>().max(std::mem::align_of::<V>()) as u64;
    if align > max {
        return Err(Error::UnsupportedAlignment { align, max });
    }
    Ok(())
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        offset,
        what: what.into(),
    }
}

/// The maps' entry-style update: `get_mut`, else `insert` and `get_mut` again. A key the second
/// lookup does not find (an `Ord`, `Eq` or `Hash` that disagrees with itself, or damage) is
/// [`Error::Corrupt`] at `at`, saying `lost`.
fn get_or_insert<P>(
    tx: &mut Tx<'_>,
    mut get_mut: impl FnMut(&mut Tx<'_>) -> Result<Option<P>>,
    insert: impl FnOnce(&mut Tx<'_>) -> Result<bool>,
    at: u64,
    lost: &str,
) -> Result<P> {
    if let Some(p) = get_mut(tx)? {
        return Ok(p);
    }
    insert(tx)?;
    get_mut(tx)?.ok_or_else(|| corrupt(at, lost))
}

/// The second half of the maps' `retain`: remove each of `doomed` (keys the scan met, in its
/// order); how many. A key not found again is [`Error::Corrupt`] at `at`, saying `lost`.
fn remove_each<O>(
    tx: &mut Tx<'_>,
    doomed: &[O],
    mut remove: impl FnMut(&mut Tx<'_>, &O) -> Result<bool>,
    at: u64,
    lost: &str,
) -> Result<u64> {
    for k in doomed {
        if !remove(tx, k)? {
            return Err(corrupt(at, lost));
        }
    }
    Ok(doomed.len() as u64)
}
