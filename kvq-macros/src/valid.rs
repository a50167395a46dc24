//! Checking: the item must be a unit struct, and the scheme must mean something. The meaning of a
//! scheme is decided by `kvq_ir::scheme::build`, shared with the command line; this file only
//! turns its errors into compiler errors.

use kvq_ir::scheme::build::build_cache;
use kvq_ir::scheme::{CacheScheme, SchemeError, SchemeErrorKind};
use proc_macro2::{Punct, Spacing, Span, TokenStream, TokenTree};
use quote::quote;
use syn::{Fields, Item, ItemStruct};

use crate::parse::{self, Place};

const UNIT_STRUCT: &str = "#[kv_quant] applies to a unit struct, e.g. `pub struct MyScheme;`";

/// The scheme the attribute's arguments declare, or every mistake in them.
pub fn scheme(args: TokenStream) -> syn::Result<CacheScheme> {
    let entries = parse::entries(args).map_err(to_syn)?;
    build_cache(&entries, Place::token(Span::call_site())).map_err(to_syn)
}

/// The struct the attribute is applied to, if it is a unit struct.
pub fn unit_struct(item: TokenStream) -> syn::Result<ItemStruct> {
    let item: Item = syn::parse2(item)?;
    let (head, what) = match item {
        Item::Struct(s) if matches!(s.fields, Fields::Unit) => return Ok(s),
        Item::Struct(s) => {
            let (token, ident) = (s.struct_token, s.ident);
            (quote!(#token #ident), "a struct with fields")
        }
        Item::Enum(e) => {
            let (token, ident) = (e.enum_token, e.ident);
            (quote!(#token #ident), "an enum")
        }
        Item::Union(u) => {
            let (token, ident) = (u.union_token, u.ident);
            (quote!(#token #ident), "a union")
        }
        Item::Fn(f) => {
            let (token, ident) = (f.sig.fn_token, f.sig.ident);
            (quote!(#token #ident), "a function")
        }
        Item::Trait(t) => {
            let (token, ident) = (t.trait_token, t.ident);
            (quote!(#token #ident), "a trait")
        }
        other => (quote!(#other), "this item"),
    };
    Err(syn::Error::new_spanned(
        head,
        format!("{UNIT_STRUCT}, not to {what}"),
    ))
}

/// One compiler error per scheme error, each at its token.
fn to_syn(errors: Vec<SchemeError<Place>>) -> syn::Error {
    errors
        .into_iter()
        .map(|e| syn::Error::new_spanned(spanning(e.span), message(&e.kind)))
        .reduce(|mut all, e| {
            all.combine(e);
            all
        })
        .unwrap_or_else(|| syn::Error::new(Span::call_site(), "invalid scheme"))
}

/// The error's message and, where it adds something, its hint as a `help` line.
fn message(kind: &SchemeErrorKind) -> String {
    match kind {
        // These messages already say what is expected; the hint would repeat it.
        SchemeErrorKind::WrongKind { .. }
        | SchemeErrorKind::Misplaced { .. }
        | SchemeErrorKind::Syntax { .. } => kind.to_string(),
        _ => format!("{kind}\n= help: {}", kind.hint()),
    }
}

/// Two tokens at the two ends of `place`, so that an error spans the range between them.
fn spanning(place: Place) -> TokenStream {
    [place.first, place.last]
        .into_iter()
        .map(|span| {
            let mut token = Punct::new('.', Spacing::Alone);
            token.set_span(span);
            TokenTree::Punct(token)
        })
        .collect()
}
