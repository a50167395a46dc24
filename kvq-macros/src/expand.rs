//! Expansion: a checked [`CacheScheme`] as a `const` expression, and the `KvQuant` impl.
//!
//! Every path goes through `::kvq::__private`. Floating-point values are written as their exact
//! bits, so the constant is bit for bit the value the command-line parser builds.

use kvq_ir::scheme::{Axis, BitOrder, Bits, CacheScheme, Center, Group, ParamType, Rule, Scheme};
use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

/// `impl KvQuant for <the struct>` with `SCHEME = scheme`, generics carried through.
pub fn impl_kv_quant(item: &ItemStruct, scheme: &CacheScheme) -> TokenStream {
    let ident = &item.ident;
    let (impl_generics, ty_generics, where_clause) = item.generics.split_for_impl();
    let scheme = cache_scheme(scheme);
    quote! {
        impl #impl_generics ::kvq::__private::KvQuant for #ident #ty_generics #where_clause {
            const SCHEME: ::kvq::__private::CacheScheme = #scheme;
        }
    }
}

fn cache_scheme(c: &CacheScheme) -> TokenStream {
    let key = scheme(&c.key);
    let value = scheme(&c.value);
    let calibrate = match c.calibrate {
        Some(d) => {
            let d = checked(
                quote!(Calibration::new),
                f32_bits(d.get().to_bits()),
                "calibration",
            );
            quote!(::kvq::__private::Some(#d))
        }
        None => quote!(::kvq::__private::None),
    };
    quote! {
        ::kvq::__private::CacheScheme {
            key: #key,
            value: #value,
            calibrate: #calibrate,
        }
    }
}

fn scheme(s: &Scheme) -> TokenStream {
    let bits = match s.bits {
        Bits::B1 => quote!(B1),
        Bits::B2 => quote!(B2),
        Bits::B4 => quote!(B4),
        Bits::B8 => quote!(B8),
    };
    let axis = match s.axis {
        Axis::Channel => quote!(Channel),
        Axis::Token => quote!(Token),
    };
    let group = match s.group {
        Group::All => quote!(::kvq::__private::Group::All),
        Group::Size(n) => {
            let n = u32::try_from(n.get()).expect("a group size is a u32");
            let n = checked(quote!(GroupSize::new), quote!(#n), "group size");
            quote!(::kvq::__private::Group::Size(#n))
        }
    };
    let rule = rule(&s.rule);
    let params = match s.params {
        ParamType::F16 => quote!(F16),
        ParamType::F32 => quote!(F32),
    };
    let order = match s.order {
        BitOrder::Msb => quote!(Msb),
        BitOrder::Lsb => quote!(Lsb),
    };
    quote! {
        ::kvq::__private::Scheme {
            bits: ::kvq::__private::Bits::#bits,
            axis: ::kvq::__private::Axis::#axis,
            group: #group,
            rule: #rule,
            params: ::kvq::__private::ParamType::#params,
            order: ::kvq::__private::BitOrder::#order,
        }
    }
}

fn rule(r: &Rule) -> TokenStream {
    match r {
        Rule::MinMax => quote!(::kvq::__private::Rule::MinMax),
        Rule::Shrink { alpha, center } => {
            let alpha = checked(
                quote!(Alpha::new),
                f32_bits(alpha.get().to_bits()),
                "shrink factor",
            );
            let center = match center {
                Center::Zero => quote!(Zero),
                Center::Mid => quote!(Mid),
            };
            quote! {
                ::kvq::__private::Rule::Shrink {
                    alpha: #alpha,
                    center: ::kvq::__private::Center::#center,
                }
            }
        }
        Rule::Quantile(p) => {
            let bits = p.get().to_bits();
            let p = checked(
                quote!(Quantile::new),
                quote!(::core::primitive::f64::from_bits(#bits)),
                "quantile level",
            );
            quote!(::kvq::__private::Rule::Quantile(#p))
        }
        Rule::Mse => quote!(::kvq::__private::Rule::Mse),
    }
}

/// `f32::from_bits(bits)`, exact.
fn f32_bits(bits: u32) -> TokenStream {
    quote!(::core::primitive::f32::from_bits(#bits))
}

/// `match __private::<constructor>(<arg>) { Some(v) => v, None => panic!(..) }`: the const
/// constructors return `Option`; the value was already checked, so `None` is unreachable.
fn checked(constructor: TokenStream, arg: TokenStream, what: &str) -> TokenStream {
    let message = format!("kvq: #[kv_quant] produced an invalid {what}");
    quote! {
        match ::kvq::__private::#constructor(#arg) {
            ::kvq::__private::Some(value) => value,
            ::kvq::__private::None => ::core::panic!(#message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_their_exact_bits() {
        let c = CacheScheme::parse(
            "key(bits = 1, axis = channel, group = all, rule = shrink(0.3)), \
             value(bits = 2, axis = token, group = 32, rule = quantile(0.2), order = lsb), \
             calibrate = 3",
        )
        .unwrap();
        let text = cache_scheme(&c).to_string();
        let alpha = 0.3f32.to_bits();
        let p = 0.2f64.to_bits();
        let d = 3.0f32.to_bits();
        for needle in [
            format!("f32 :: from_bits ({alpha}u32)"),
            format!("f64 :: from_bits ({p}u64)"),
            format!("f32 :: from_bits ({d}u32)"),
            "GroupSize :: new (32u32)".to_string(),
            "BitOrder :: Lsb".to_string(),
            "Bits :: B2".to_string(),
        ] {
            assert!(text.contains(&needle), "{needle} not in {text}");
        }
    }
}
