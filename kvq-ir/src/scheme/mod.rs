//! The scheme model: what a key or value scheme is (SPEC.md section 2) and its text syntax.
//!
//! ```
//! use kvq_ir::{Bits, Rule, Scheme};
//! let s = Scheme::parse("bits = 1, axis = channel, group = all, rule = quantile(0.2)").unwrap();
//! assert_eq!(s.bits, Bits::B1);
//! assert!(matches!(s.rule, Rule::Quantile(_)));
//! // The canonical text form reads back to the same scheme.
//! assert_eq!(Scheme::parse(&s.to_string()).unwrap(), s);
//! ```

pub mod build;
pub mod catalogue;
pub mod error;
pub mod syntax;
pub mod text;
mod types;

pub use error::{ParseError, SchemeError, SchemeErrorKind};
pub use types::{
    Alpha, Axis, BitOrder, Bits, CacheScheme, Calibration, Center, Group, GroupSize, ParamType,
    Quantile, Rule, Scheme, MSE_ITERATIONS, MSE_RUN, MSE_STRANDS,
};

impl Scheme {
    /// Parses one tensor's scheme, e.g. `bits = 2, axis = token, group = 32, rule = minmax`.
    pub fn parse(text: &str) -> Result<Scheme, ParseError> {
        let entries = text::parse_entries(text).map_err(|e| ParseError {
            source: text.to_string(),
            errors: vec![e],
        })?;
        build::build_scheme(&entries, 0..text.len()).map_err(|errors| ParseError {
            source: text.to_string(),
            errors,
        })
    }

    /// Bits per element of a span of `tokens` tokens, kv heads and head_dim elided: code bits plus
    /// parameter bits over elements (SPEC.md section 3). `head_dim` matters for axis = token.
    pub fn bits_per_element(&self, tokens: usize, head_dim: usize) -> f64 {
        let groups_per_head = match (self.axis, self.group) {
            (Axis::Channel, Group::All) => head_dim,
            (Axis::Channel, Group::Size(n)) => tokens.div_ceil(n.get()) * head_dim,
            (Axis::Token, Group::All) => tokens,
            (Axis::Token, Group::Size(n)) => tokens * head_dim.div_ceil(n.get()),
        };
        let param_bits = (2 * self.params.bits()) as f64 * groups_per_head as f64;
        self.bits.width() as f64 + param_bits / (tokens * head_dim) as f64
    }
}

impl CacheScheme {
    /// Parses `key(...), value(...)[, calibrate = d]`.
    pub fn parse(text: &str) -> Result<CacheScheme, ParseError> {
        let entries = text::parse_entries(text).map_err(|e| ParseError {
            source: text.to_string(),
            errors: vec![e],
        })?;
        build::build_cache(&entries, 0..text.len()).map_err(|errors| ParseError {
            source: text.to_string(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<SchemeErrorKind> {
        Scheme::parse(text)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn parses_every_reference_scheme() {
        let s =
            Scheme::parse("bits=1, axis=channel, group=all, rule=shrink(0.5, center=mid)").unwrap();
        assert_eq!(
            s.rule,
            Rule::Shrink {
                alpha: Alpha::new(0.5).unwrap(),
                center: Center::Mid
            }
        );
        assert_eq!(s.params, ParamType::F16);
        assert_eq!(s.order, BitOrder::Msb);
        let s = Scheme::parse("bits=4, axis=token, group=all, rule=minmax, params=f32").unwrap();
        assert_eq!(
            (s.bits, s.axis, s.params),
            (Bits::B4, Axis::Token, ParamType::F32)
        );
        let s = Scheme::parse("bits=8, axis=token, group=64, rule=minmax, order = lsb").unwrap();
        assert_eq!(s.group, Group::Size(GroupSize::new(64).unwrap()));
        assert_eq!(s.order, BitOrder::Lsb);
    }

    #[test]
    fn quantile_level_keeps_f64_and_alpha_is_rounded_to_f32() {
        let s = Scheme::parse("bits=1, axis=channel, group=all, rule=quantile(0.2)").unwrap();
        assert_eq!(s.rule, Rule::Quantile(Quantile::new(0.2).unwrap()));
        let s = Scheme::parse("bits=1, axis=channel, group=all, rule=shrink(0.3)").unwrap();
        match s.rule {
            Rule::Shrink { alpha, .. } => assert_eq!(alpha.get(), 0.3f32),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mse_needs_one_bit() {
        let s = Scheme::parse("bits=1, axis=channel, group=all, rule=mse").unwrap();
        assert_eq!(s.rule, Rule::Mse);
        let e = Scheme::parse("bits=2, axis=channel, group=all, rule=mse").unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert!(matches!(
            e.errors[0].kind,
            SchemeErrorKind::InvalidValue { key: "rule", .. }
        ));
        // The error points at the rule's value.
        assert_eq!(e.errors[0].span, 38..41);
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "bits=1, axis=channel, group=all, rule=shrink(0.3)",
            "bits=2, axis=token, group=32, rule=quantile(0.05), params=f32, order=lsb",
            "bits=8, axis=channel, group=7, rule=shrink(1, center=mid)",
            "bits=1, axis=token, group=16, rule=mse",
        ] {
            let s = Scheme::parse(text).unwrap();
            assert_eq!(Scheme::parse(&s.to_string()).unwrap(), s, "{s}");
        }
        let c = CacheScheme::parse(
            "key(bits=1, axis=channel, group=all, rule=shrink(0.5)), \
             value(bits=1, axis=channel, group=all, rule=shrink(0.3)), calibrate = 3",
        )
        .unwrap();
        assert_eq!(c.calibrate.unwrap().get(), 3.0);
        assert_eq!(CacheScheme::parse(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn rejects_each_mistake_with_its_kind() {
        let base = "axis = channel, group = all, rule = minmax";
        assert!(matches!(
            kinds(&format!("bits = 3, {base}"))[..],
            [SchemeErrorKind::InvalidValue { key: "bits", .. }]
        ));
        assert!(matches!(
            kinds(&format!("bits = 1.0, {base}"))[..],
            [SchemeErrorKind::InvalidValue { key: "bits", .. }]
        ));
        assert!(matches!(
            kinds(&format!("bits = one, {base}"))[..],
            [SchemeErrorKind::WrongKind { key: "bits", .. }]
        ));
        assert!(matches!(
            kinds(&format!("bits = 1, bits = 2, {base}"))[..],
            [SchemeErrorKind::DuplicateKey { .. }]
        ));
        assert!(matches!(
            kinds(&format!("bit = 1, {base}"))[..],
            [SchemeErrorKind::UnknownKey { .. }]
        ));
        let base = "bits = 1, axis = channel";
        for bad in [
            "group = all, rule = quantile(0.5)",
            "group = all, rule = quantile(0.7)",
            "group = all, rule = quantile(-0.1)",
            "group = all, rule = shrink(0)",
            "group = all, rule = shrink(1.5)",
        ] {
            let k = kinds(&format!("{base}, {bad}"));
            assert!(
                matches!(k[..], [SchemeErrorKind::BadArgument { .. }]),
                "{bad}: {k:?}"
            );
        }
        for bad in [
            "group = 0, rule = minmax",
            "group = all, rule = median",
            "group = all, rule = minmax, params = f64",
            "group = all, rule = minmax, order = big",
        ] {
            let k = kinds(&format!("{base}, {bad}"));
            assert!(
                matches!(k[..], [SchemeErrorKind::InvalidValue { .. }]),
                "{bad}: {k:?}"
            );
        }
        assert!(matches!(
            kinds("bits = 1, axis = row, group = all, rule = shrink")[..],
            [
                SchemeErrorKind::InvalidValue { key: "axis", .. },
                SchemeErrorKind::Missing { .. }
            ]
        ));
    }

    #[test]
    fn reports_every_error_with_its_column() {
        let err = Scheme::parse("bits = 3, axis = row, group = all").unwrap_err();
        assert_eq!(err.errors.len(), 3, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("`bits = 3` is not allowed at column 8 (bits: one of 1, 2, 4, 8)"),
            "{text}"
        );
        assert!(text.contains("`axis = row`"), "{text}");
        assert!(text.contains("missing `rule`"), "{text}");
    }

    #[test]
    fn cache_scheme_requires_both_parts() {
        let err =
            CacheScheme::parse("key(bits=1, axis=channel, group=all, rule=minmax)").unwrap_err();
        assert!(
            err.to_string().contains("missing the `value(...)` part"),
            "{err}"
        );
        let err = CacheScheme::parse("calibrate = 0").unwrap_err();
        assert_eq!(err.errors.len(), 3, "{err}");
    }

    #[test]
    fn bits_per_element_counts_parameters() {
        let s = Scheme::parse("bits=1, axis=channel, group=all, rule=minmax").unwrap();
        assert_eq!(s.bits_per_element(256, 64), 1.0 + 32.0 / 256.0);
        let s = Scheme::parse("bits=2, axis=token, group=32, rule=minmax, params=f32").unwrap();
        assert_eq!(s.bits_per_element(10, 64), 2.0 + 64.0 / 32.0);
        let s = Scheme::parse("bits=2, axis=channel, group=32, rule=minmax").unwrap();
        assert_eq!(s.bits_per_element(33, 64), 2.0 + 2.0 * 32.0 / 33.0);
    }
}
