//! `#[derive(Stored)]` for [txheap](https://docs.rs/txheap): implements `Stored` and (as plain
//! data) `Element`; gives a plain-data struct a stored
//! identity made of a name you choose, its size, its alignment and its fields (name, offset and
//! each field type's own identity), and a `refs` that reports every field's heap pointers to a
//! reachability walk. Use it through `txheap::Stored`, which re-exports it.
//!
//! ```ignore
//! #[derive(Clone, Copy, txheap::bytemuck::Pod, txheap::bytemuck::Zeroable, txheap::Stored)]
//! #[repr(C)]
//! #[stored(name = "inventory.Item")]
//! struct Item { id: u64, count: u32, flags: u32 }
//! ```
//!
//! The name defaults to the struct's identifier (not its module path), so moving the type to
//! another module or binary keeps its identity; renaming it, or changing a field's name, type,
//! or offset, changes it.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, ToTokens};
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

/// Implement `txheap::Stored` for a `#[repr(C)]` (or `#[repr(transparent)]`) plain-data struct.
/// Attribute `#[stored(name = "...")]` chooses the stored name; every field's type must
/// implement `Stored` too.
#[proc_macro_derive(Stored, attributes(stored))]
pub fn derive_stored(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let ident = &input.ident;
    let mut name = ident.to_string();
    for attr in &input.attrs {
        if attr.path().is_ident("stored") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    let lit: LitStr = meta.value()?.parse()?;
                    name = lit.value();
                    Ok(())
                } else {
                    Err(meta.error("expected `name = \"...\"`"))
                }
            })?;
        }
    }
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        _ => {
            return Err(syn::Error::new_spanned(
                ident,
                "Stored can be derived for structs only",
            ))
        }
    };
    // A packed struct's fields may be unaligned: `refs` copies each field out instead of
    // borrowing it.
    let packed = input
        .attrs
        .iter()
        .any(|a| a.path().is_ident("repr") && a.to_token_stream().to_string().contains("packed"));
    let mut entries = Vec::new();
    let mut shapes = Vec::new();
    let mut refs = Vec::new();
    let mut holds = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let ty = &f.ty;
        let (fname, member) = match (&f.ident, fields) {
            (Some(id), _) => (id.to_string(), quote!(#id)),
            (None, Fields::Unnamed(_)) => {
                let idx = syn::Index::from(i);
                (i.to_string(), quote!(#idx))
            }
            _ => unreachable!("a field without a name is in a tuple struct"),
        };
        let ty_text = normalise(&ty.to_token_stream().to_string());
        holds.push(quote! { <#ty as ::txheap::Stored>::HOLDS_POINTERS });
        refs.push(if packed {
            quote! {
                if <#ty as ::txheap::Stored>::HOLDS_POINTERS {
                    let field = self.#member;
                    ::txheap::Stored::refs(&field, walk)?;
                }
            }
        } else {
            quote! {
                if <#ty as ::txheap::Stored>::HOLDS_POINTERS {
                    ::txheap::Stored::refs(&self.#member, walk)?;
                }
            }
        });
        entries.push(quote! {
            ::txheap::Field {
                name: #fname,
                offset: ::core::mem::offset_of!(Self, #member) as u64,
                ty: #ty_text,
                id: <#ty as ::txheap::Stored>::ID,
            }
        });
        shapes.push(quote! {
            ::txheap::Field {
                name: #fname,
                offset: ::core::mem::offset_of!(Self, #member) as u64,
                ty: #ty_text,
                id: <#ty as ::txheap::Stored>::SHAPE,
            }
        });
    }
    let mut generics = input.generics.clone();
    for p in generics.type_params_mut() {
        p.bounds.push(syn::parse_quote!(::txheap::Stored));
    }
    let (impl_g, ty_g, where_c) = generics.split_for_impl();
    Ok(quote! {
        impl #impl_g ::txheap::Stored for #ident #ty_g #where_c {
            const NAME: &'static str = #name;
            const FIELDS: &'static [::txheap::Field] = &[#(#entries),*];
            const ID: u64 = ::txheap::Field::struct_id(
                #name,
                ::core::mem::size_of::<Self>(),
                ::core::mem::align_of::<Self>(),
                Self::FIELDS,
            );
            const SHAPE: u64 = ::txheap::Field::struct_id(
                #name,
                ::core::mem::size_of::<Self>(),
                ::core::mem::align_of::<Self>(),
                &[#(#shapes),*],
            );
            const HOLDS_POINTERS: bool = false #(|| #holds)*;
            fn refs(&self, walk: &mut ::txheap::Walk<'_, '_>) -> ::txheap::Result<()> {
                let _ = &walk;
                #(#refs)*
                ::core::result::Result::Ok(())
            }
        }
        impl #impl_g ::txheap::Element for #ident #ty_g #where_c {
            type Input = Self;
            const OWNS_STORAGE: bool = false;
            fn store(_: &mut ::txheap::Tx<'_>, input: &Self) -> ::txheap::Result<Self> {
                ::core::result::Result::Ok(*input)
            }
            fn load<'v, V: ::txheap::View>(this: &'v Self, _: &'v V) -> ::txheap::Result<&'v Self> {
                ::core::result::Result::Ok(this)
            }
            fn release(self, _: &mut ::txheap::Tx<'_>) -> ::txheap::Result<()> {
                ::core::result::Result::Ok(())
            }
        }
    })
}

/// `PPtr < Node >` as written in source: `PPtr<Node>`.
fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let tight = |c: Option<char>| {
                matches!(
                    c,
                    Some('<' | '>' | ':' | '(' | ')' | '[' | ']' | ',' | ';' | '&')
                )
            };
            if tight(prev) && prev != Some(',') && prev != Some(';')
                || tight(next) && next != Some('&')
            {
                continue;
            }
        }
        out.push(c);
    }
    out
}
