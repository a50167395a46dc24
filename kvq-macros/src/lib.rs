//! The `#[kv_quant(...)]` attribute: declares a kvq cache scheme on a unit struct, checked at
//! compile time. Use it through the `kvq` crate (`kvq::kv_quant`), whose `__private` module the
//! expansion names.
//!
//! ```ignore
//! use kvq::{kv_quant, Bits, KvQuant};
//!
//! #[kv_quant(
//!     key(bits = 1, axis = channel, group = all, rule = shrink(0.5)),
//!     value(bits = 1, axis = channel, group = all, rule = shrink(0.3)),
//!     calibrate = 3.0,
//! )]
//! pub struct CalibQuant;
//!
//! const KEY_BITS: Bits = CalibQuant::SCHEME.key.bits;
//! ```
//!
//! expands to the struct, unchanged, and
//! `impl kvq::KvQuant for CalibQuant { const SCHEME: kvq::CacheScheme = ...; }`.
//!
//! # Syntax
//!
//! The arguments are the scheme language of the command line (SPEC.md section 2):
//!
//! ```text
//! key(SCHEME), value(SCHEME) [, calibrate = d]        d > 0
//! SCHEME := bits = 1 | 2 | 4 | 8,
//!           axis = channel | token,
//!           group = all | N,                          N > 0
//!           rule = minmax | shrink(a) | shrink(a, center = mid) | quantile(p),
//!                                                     0 < a <= 1, 0 <= p < 0.5
//!           [params = f16 | f32]                      default f16
//!           [order = msb | lsb]                       default msb
//! ```
//!
//! Entries may come in any order and a trailing comma is allowed. Numbers may carry a type suffix
//! (`0.5f32`); the shrink factor and the calibration distance are rounded to f32 and the quantile
//! level to f64, exactly as the command line does.
//!
//! # Errors
//!
//! What a scheme means is decided by `kvq_ir::scheme::build`, the same code the command line
//! uses, so both accept and reject the same schemes. Every mistake is reported, each at its token
//! with a hint naming what is allowed; the struct is still emitted, so a mistake in the scheme
//! does not cause follow-on errors where the struct is used.

mod expand;
mod parse;
mod valid;

use proc_macro::TokenStream;
use quote::quote;

/// Declares a cache scheme on a unit struct and implements `kvq::KvQuant` for it; see the crate
/// documentation for the syntax.
#[proc_macro_attribute]
pub fn kv_quant(args: TokenStream, item: TokenStream) -> TokenStream {
    kv_quant_impl(args.into(), item.into()).into()
}

/// Parse and check both the arguments and the item, then expand, or report every error found
/// beside the item as written.
fn kv_quant_impl(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let scheme = valid::scheme(args);
    let target = valid::unit_struct(item.clone());
    match (scheme, target) {
        (Ok(scheme), Ok(target)) => {
            let implementation = expand::impl_kv_quant(&target, &scheme);
            quote!(#item #implementation)
        }
        (scheme, target) => {
            let errors = [scheme.err(), target.err()]
                .into_iter()
                .flatten()
                .reduce(|mut all, e| {
                    all.combine(e);
                    all
                })
                .map(|e| e.to_compile_error());
            quote!(#item #errors)
        }
    }
}
