//! Stored type identity: what a heap file records about the types it holds.
//!
//! Owns: the [`Stored`] trait, its implementations for the primitive types, arrays, [`PPtr`]
//! and [`PSlice`], and the identity arithmetic (`Field::struct_id`, [`describe`]); each type's
//! `refs` (its pointers, for the reachability walk of `reach`). May not: touch the heap; the
//! root check (`layout`), the collections and `reach` use it.
//!
//! A type's identity ([`Stored::ID`]) is a 64-bit FNV-1a hash of its chosen name, size and
//! alignment and, for a struct, of every field's name, offset and type identity. It goes
//! through values, and through a pointer only as far as its target's shape: a `PPtr<T>`
//! contributes `T`'s layout with the pointers inside it counted by name, so a recursive type (a
//! list node holding a pointer to the next node) has an identity. (Through a
//! collection held by value it has none: see [`Stored`].) Nothing in it
//! comes from the compiler's type names or the module path, so the identity survives a move of
//! the type to another module or binary, and a compiler upgrade.

use bytemuck::Pod;

use crate::pptr::{PPtr, PSlice};

/// A plain-data type with a stable stored identity: a chosen name, its size and alignment, and
/// its fields. [`crate::Tx::root`] and the collections record the identity in the file and
/// refuse another type, naming both layouts: the root with [`crate::Error::RootTypeMismatch`],
/// a collection with [`crate::Error::TypeMismatch`] (the file keeps a description of the root's
/// layout, and of each type a collection was made for, in its type catalogue).
///
/// Derive it (`#[derive(txheap::Stored)]`, with an optional `#[stored(name = "...")]`; the
/// default name is the struct's identifier) on a `#[repr(C)]` struct that is also
/// `bytemuck::Pod`. It is implemented here for the integers, floats, arrays, [`PPtr`], [`PSlice`]
/// and the collections' handles.
///
/// ```
/// use txheap::{PPtr, Stored};
///
/// #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
/// #[repr(C)]
/// #[stored(name = "demo.Node")]
/// struct Node { value: u64, next: PPtr<Node> }
///
/// assert_eq!(Node::NAME, "demo.Node");
/// assert_eq!(Node::FIELDS[1].name, "next");
/// assert_eq!(Node::FIELDS[1].offset, 8);
/// assert_eq!(Node::FIELDS[1].ty, "PPtr<Node>");
/// assert_ne!(Node::ID, <[u64; 2] as Stored>::ID); // same size and alignment, another type
/// ```
///
/// A type that holds a collection of itself by value (`Tree { children: PVec<Tree> }`) has no
/// identity: a collection's identity includes its element type's, and the compiler reports
/// the cycle (`E0391`). Hold the collection through a pointer instead, which counts only its
/// target's shape:
///
/// ```
/// use txheap::{PPtr, PVec, Stored};
///
/// #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
/// #[repr(C)]
/// struct Tree { value: u64, children: PPtr<PVec<Tree>> }
///
/// assert_ne!(Tree::ID, 0);
/// ```
pub trait Stored: Pod {
    /// The stored name (chosen, not the compiler's type name).
    const NAME: &'static str;
    /// The fields of a struct, in declaration order; empty for other types.
    const FIELDS: &'static [Field];
    /// The identity: name, size, alignment and, through values, every field; through a
    /// pointer ([`PPtr`], [`PSlice`]), the target's [`Stored::SHAPE`].
    const ID: u64;
    /// The identity with pointers counted by their target's name only: what a pointer to this
    /// type contributes to its holder's identity (so that a recursive type has one: a
    /// `Node { next: PPtr<Node> }` needs only `PPtr<Node>`'s shape, which needs only `Node`'s
    /// name). It is also what files written before txheap 0.1's pointer identities recorded as
    /// `ID`, still accepted when it matches. The default, the identity, is right for types
    /// without pointers; the derive and the pointer and collection types define it.
    ///
    /// ```
    /// use txheap::{PPtr, Stored};
    /// assert_eq!(<u64 as Stored>::SHAPE, <u64 as Stored>::ID);
    /// // A pointer's identity follows its target's layout, its shape only the target's name.
    /// assert_ne!(<PPtr<[u8; 4]> as Stored>::ID, <PPtr<[u64; 4]> as Stored>::ID);
    /// assert_eq!(<PPtr<[u8; 4]> as Stored>::SHAPE, <PPtr<[u64; 4]> as Stored>::SHAPE);
    /// ```
    const SHAPE: u64 = Self::ID;
    /// Whether a value can hold heap pointers (reachability walks skip the contents of types
    /// that cannot). True unless said otherwise: the integers, floats and arrays of them say
    /// false, and the derive says whether any field can.
    const HOLDS_POINTERS: bool = true;

    /// The name with its type parameters, as errors and the file's layout descriptions show
    /// it ([`describe`]): `PVec<u32>`, `[u8; 32]`, `PPtr<Node>`. Not part of the identity. The
    /// default is [`Stored::NAME`], right for types without parameters; arrays, pointers and
    /// the collections name their parameters (a review found a `PVec<u32>` root and a
    /// `PVec<u64>` described alike in the error that refused one for the other).
    ///
    /// ```
    /// use txheap::{PPtr, PVec, Stored};
    /// assert_eq!(<[u8; 32]>::display_name(), "[u8; 32]");
    /// assert_eq!(<PPtr<PVec<u32>>>::display_name(), "PPtr<PVec<u32>>");
    /// assert_eq!(u64::display_name(), u64::NAME);
    /// ```
    fn display_name() -> String {
        Self::NAME.to_string()
    }

    /// Report the heap pointers this value holds to `walk` (for [`crate::Heap::reachability`]):
    /// `walk.pointer(p)` for each `PPtr`, `walk.slice(s)` for each `PSlice`, and the fields'
    /// own `refs` for nested values. The derive writes it from the fields; `PPtr`, `PSlice`,
    /// arrays and the collections implement it. The default reports nothing: a type
    /// implemented by hand that holds pointers should report them, or what they point at will
    /// look leaked.
    ///
    /// ```
    /// use txheap::{PPtr, Stored};
    /// #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, Stored)]
    /// #[repr(C)]
    /// struct Pair { a: PPtr<u64>, b: PPtr<u64> }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let heap = txheap::Heap::create(dir.path().join("refs.heap"), txheap::Options::new())?;
    /// heap.transaction(|tx| {
    ///     let (a, b) = (tx.alloc(1u64)?, tx.alloc(2u64)?);
    ///     let root = tx.root::<Pair>()?;
    ///     *tx.get_mut(root)? = Pair { a, b };
    ///     Ok(())
    /// })?;
    /// assert_eq!(heap.reachability::<Pair>()?.reached_blocks, 2);
    /// # Ok::<(), txheap::Error>(())
    /// ```
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> crate::Result<()> {
        let _ = walk;
        Ok(())
    }
}

pub use txheap_derive::Stored;

/// One field of a [`Stored`] struct.
///
/// ```
/// let f = txheap::Field { name: "len", offset: 8, ty: "u64", id: <u64 as txheap::Stored>::ID };
/// assert_eq!(f.name, "len");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name (`"0"`, `"1"`, ... in a tuple struct).
    pub name: &'static str,
    /// Its byte offset in the struct.
    pub offset: u64,
    /// Its type as written in the source (for messages only; not part of the identity).
    pub ty: &'static str,
    /// Its type's [`Stored::ID`].
    pub id: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

const fn fnv_bytes(mut h: u64, b: &[u8]) -> u64 {
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

const fn fnv_u64(h: u64, v: u64) -> u64 {
    fnv_bytes(h, &v.to_le_bytes())
}

/// The identity of a type without fields: a tag, its name, size and alignment.
const fn leaf_id(tag: &str, name: &str, size: usize, align: usize) -> u64 {
    let h = fnv_bytes(FNV_OFFSET, tag.as_bytes());
    // The name's length goes first so that ("ab", "c") and ("a", "bc") differ.
    let h = fnv_u64(h, name.len() as u64);
    let h = fnv_bytes(h, name.as_bytes());
    let h = fnv_u64(h, size as u64);
    fnv_u64(h, align as u64)
}

impl Field {
    /// A type parameter's identity as a field of a generic container's identity (offset 0, no
    /// source text): `PVec<T>` hashes its name with its element's identity this way.
    ///
    /// ```
    /// use txheap::{Field, Stored};
    /// assert_eq!(Field::element("T", u8::ID).id, u8::ID);
    /// ```
    pub const fn element(name: &'static str, id: u64) -> Field {
        Field {
            name,
            offset: 0,
            ty: "",
            id,
        }
    }

    /// The identity of a struct named `name` with this size, alignment and fields (what
    /// `#[derive(Stored)]` puts in [`Stored::ID`]).
    ///
    /// ```
    /// use txheap::{Field, Stored};
    /// let f = [Field { name: "x", offset: 0, ty: "u64", id: u64::ID }];
    /// let a = Field::struct_id("P", 8, 8, &f);
    /// assert_ne!(a, Field::struct_id("Q", 8, 8, &f));
    /// assert_ne!(a, Field::struct_id("P", 8, 8, &[Field { name: "y", ..f[0] }]));
    /// ```
    pub const fn struct_id(name: &str, size: usize, align: usize, fields: &[Field]) -> u64 {
        let mut h = leaf_id("struct", name, size, align);
        h = fnv_u64(h, fields.len() as u64);
        let mut i = 0;
        while i < fields.len() {
            let f = &fields[i];
            h = fnv_u64(h, f.name.len() as u64);
            h = fnv_bytes(h, f.name.as_bytes());
            h = fnv_u64(h, f.offset);
            h = fnv_u64(h, f.id);
            i += 1;
        }
        h
    }
}

macro_rules! primitive {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            const NAME: &'static str = stringify!($t);
            const FIELDS: &'static [Field] = &[];
            const ID: u64 = leaf_id("primitive", stringify!($t), std::mem::size_of::<$t>(), std::mem::align_of::<$t>());
            const HOLDS_POINTERS: bool = false;
        }
    )*};
}
primitive!(
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

impl<T: Stored, const N: usize> Stored for [T; N] {
    const NAME: &'static str = "array";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = fnv_u64(
        fnv_u64(leaf_id("array", "", std::mem::size_of::<Self>(), 1), T::ID),
        N as u64,
    );
    const SHAPE: u64 = fnv_u64(
        fnv_u64(
            leaf_id("array", "", std::mem::size_of::<Self>(), 1),
            T::SHAPE,
        ),
        N as u64,
    );
    const HOLDS_POINTERS: bool = T::HOLDS_POINTERS && N > 0;
    fn display_name() -> String {
        format!("[{}; {N}]", T::display_name())
    }
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> crate::Result<()> {
        if T::HOLDS_POINTERS {
            for e in self {
                e.refs(walk)?;
            }
        }
        Ok(())
    }
}

impl<T: Stored> Stored for PPtr<T> {
    const NAME: &'static str = "PPtr";
    const FIELDS: &'static [Field] = &[];
    // Through a pointer the target's shape counts (its layout, pointers in it by name only):
    // a recursive type has an identity, and a target whose layout changed changes it. (Its
    // name alone, as before, let a `PPtr<[u32; 4]>` root field open as a `PPtr<[u64; 4]>`,
    // and a pointed-at struct with its fields reordered: found by review.)
    const ID: u64 = fnv_u64(leaf_id("PPtr->", "", 8, 8), T::SHAPE);
    const SHAPE: u64 = leaf_id("PPtr", T::NAME, 8, 8);
    fn display_name() -> String {
        format!("PPtr<{}>", T::display_name())
    }
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> crate::Result<()> {
        walk.pointer(*self)
    }
}

impl<T: Stored> Stored for PSlice<T> {
    const NAME: &'static str = "PSlice";
    const FIELDS: &'static [Field] = &[];
    const ID: u64 = fnv_u64(leaf_id("PSlice->", "", 16, 8), T::SHAPE);
    const SHAPE: u64 = leaf_id("PSlice", T::NAME, 16, 8);
    fn display_name() -> String {
        format!("PSlice<{}>", T::display_name())
    }
    fn refs(&self, walk: &mut crate::reach::Walk<'_, '_>) -> crate::Result<()> {
        walk.slice(*self)
    }
}

/// A one-line description of `T`'s layout, as the file records it for the root and the
/// collections and as errors show it: name, size, alignment and fields with their offsets.
///
/// ```
/// assert_eq!(txheap::describe::<u32>(), "u32 (size 4, align 4)");
/// ```
pub fn describe<T: Stored>() -> String {
    let mut s = format!(
        "{} (size {}, align {}",
        T::display_name(),
        std::mem::size_of::<T>(),
        std::mem::align_of::<T>()
    );
    if !T::FIELDS.is_empty() {
        s.push_str("; ");
        for (i, f) in T::FIELDS.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(&format!("{}: {} @{}", f.name, f.ty, f.offset));
        }
    }
    s.push(')');
    s
}
