//! The scheme value types: small `Copy + Eq + Hash` enums and newtypes, constructible in `const`
//! context so that `#[kv_quant]` can expand to a `const` scheme.

use std::fmt;
use std::num::NonZeroU32;

/// Code width b of a scheme; a code lies in `0..=L` with `L = 2^b - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 1 bit, two levels.
    B1,
    /// 2 bits, four levels.
    B2,
    /// 4 bits, sixteen levels.
    B4,
    /// 8 bits, 256 levels.
    B8,
}

impl Bits {
    /// Every allowed width, in increasing order.
    pub const ALL: [Bits; 4] = [Bits::B1, Bits::B2, Bits::B4, Bits::B8];

    /// The width for `n` bits, if `n` is one of 1, 2, 4, 8.
    pub const fn from_width(n: u32) -> Option<Bits> {
        match n {
            1 => Some(Bits::B1),
            2 => Some(Bits::B2),
            4 => Some(Bits::B4),
            8 => Some(Bits::B8),
            _ => None,
        }
    }

    /// Number of bits b of one code.
    pub const fn width(self) -> u32 {
        match self {
            Bits::B1 => 1,
            Bits::B2 => 2,
            Bits::B4 => 4,
            Bits::B8 => 8,
        }
    }

    /// The largest code L = 2^b - 1.
    pub const fn max_code(self) -> u8 {
        ((1u32 << self.width()) - 1) as u8
    }

    /// Codes stored in one byte, 8 / b.
    pub const fn codes_per_byte(self) -> usize {
        (8 / self.width()) as usize
    }
}

/// Which axis a group runs along (SPEC.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// One group is one (kv_head, channel) over a run of tokens.
    Channel,
    /// One group is one (kv_head, token) over a run of channels.
    Token,
}

/// A group length, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupSize(NonZeroU32);

impl GroupSize {
    /// `Some` for `n > 0`.
    pub const fn new(n: u32) -> Option<GroupSize> {
        match NonZeroU32::new(n) {
            Some(n) => Some(GroupSize(n)),
            None => None,
        }
    }

    /// The length as a `usize`.
    pub const fn get(self) -> usize {
        self.0.get() as usize
    }
}

/// Run length of a group along its axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// The whole span (axis = channel) or the whole head_dim (axis = token).
    All,
    /// N tokens (axis = channel; the last group may be shorter) or N channels (axis = token; N
    /// must divide head_dim).
    Size(GroupSize),
}

/// A shrink factor `a`, `0 < a <= 1`, stored as its f32 bits so the scheme stays `Eq + Hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Alpha(u32);

impl Alpha {
    /// `Some` when `0 < a <= 1`.
    pub const fn new(a: f32) -> Option<Alpha> {
        if a > 0.0 && a <= 1.0 {
            Some(Alpha(a.to_bits()))
        } else {
            None
        }
    }

    /// The factor as the f32 the spec's arithmetic uses.
    pub const fn get(self) -> f32 {
        f32::from_bits(self.0)
    }
}

/// A quantile level `p`, `0 <= p < 0.5`, kept in f64 as the spec's quantile is computed in f64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantile(u64);

impl Quantile {
    /// `Some` when `0 <= p < 0.5`. `-0.0` is normalised to `0.0`.
    pub const fn new(p: f64) -> Option<Quantile> {
        if p >= 0.0 && p < 0.5 {
            Some(Quantile((p + 0.0).to_bits()))
        } else {
            None
        }
    }

    /// The level p.
    pub const fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// Where `shrink` pulls the range toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Center {
    /// Toward zero: lo = a * min, hi = a * max (CalibQuant's rule).
    Zero,
    /// Toward the midpoint c = (min + max) / 2.
    Mid,
}

/// How the range [lo, hi] of a group is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// lo = min, hi = max.
    MinMax,
    /// The min/max range scaled by `alpha` toward `center`.
    Shrink {
        /// The factor a.
        alpha: Alpha,
        /// The fixed point of the scaling.
        center: Center,
    },
    /// lo = Q(p), hi = Q(1 - p), numpy's linear-interpolation quantile.
    Quantile(Quantile),
    /// The two levels of least squared error: Lloyd's iteration (1-D 2-means) from a split at
    /// the mean, [`MSE_ITERATIONS`] rounds (bits = 1 only; kvq's extension of SPEC.md).
    Mse,
}

/// Rounds of Lloyd's iteration in [`Rule::Mse`].
pub const MSE_ITERATIONS: usize = 8;

/// Strands of [`Rule::Mse`]'s sums: element `i` of a group joins strand `(i / MSE_RUN) %
/// MSE_STRANDS` (runs of [`MSE_RUN`] neighbours dealt out in turn), each strand sums in group
/// order, and the strands' sums add up by a perfect binary tree (see
/// `reference::range::tree_sum`), so that a GPU sums a group with this many threads and gets
/// the same bits as one thread.
pub const MSE_STRANDS: usize = 2048;

/// Neighbouring elements a strand of [`MSE_STRANDS`] takes at a time.
pub const MSE_RUN: usize = 8;

/// Storage type of each group's (zero, scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    /// IEEE half precision (the default).
    F16,
    /// IEEE single precision.
    F32,
}

impl ParamType {
    /// Bits of one stored parameter.
    pub const fn bits(self) -> u32 {
        match self {
            ParamType::F16 => 16,
            ParamType::F32 => 32,
        }
    }
}

/// Bit order of codes inside a byte (SPEC.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitOrder {
    /// Element j at bits [8 - (j+1)b, 8 - jb): the first code in the high bits (the default).
    Msb,
    /// Element j at bits [jb, (j+1)b).
    Lsb,
}

/// One tensor's quantization scheme (the key scheme or the value scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scheme {
    /// Code width.
    pub bits: Bits,
    /// Grouping axis.
    pub axis: Axis,
    /// Group length along the reduced axis.
    pub group: Group,
    /// Range rule.
    pub rule: Rule,
    /// Parameter storage type.
    pub params: ParamType,
    /// Bit order within a byte.
    pub order: BitOrder,
}

/// The calibration distance `d > 0` of SPEC.md section 4, as f32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Calibration(u32);

impl Calibration {
    /// `Some` when `d` is finite and positive.
    pub const fn new(d: f32) -> Option<Calibration> {
        if d > 0.0 && d <= f32::MAX {
            Some(Calibration(d.to_bits()))
        } else {
            None
        }
    }

    /// The distance d.
    pub const fn get(self) -> f32 {
        f32::from_bits(self.0)
    }
}

/// A cache's full scheme: keys, values, and cache-level options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheScheme {
    /// Scheme of the quantized keys.
    pub key: Scheme,
    /// Scheme of the quantized values.
    pub value: Scheme,
    /// Calibration of the quantized segment's logits, if any.
    pub calibrate: Option<Calibration>,
}

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.width())
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Axis::Channel => "channel",
            Axis::Token => "token",
        })
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::All => f.write_str("all"),
            Group::Size(n) => write!(f, "{}", n.get()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::MinMax => f.write_str("minmax"),
            Rule::Shrink {
                alpha,
                center: Center::Zero,
            } => write!(f, "shrink({:?})", alpha.get()),
            Rule::Shrink {
                alpha,
                center: Center::Mid,
            } => write!(f, "shrink({:?}, center = mid)", alpha.get()),
            Rule::Quantile(p) => write!(f, "quantile({:?})", p.get()),
            Rule::Mse => f.write_str("mse"),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamType::F16 => "f16",
            ParamType::F32 => "f32",
        })
    }
}

impl fmt::Display for BitOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BitOrder::Msb => "msb",
            BitOrder::Lsb => "lsb",
        })
    }
}

/// The canonical text form, which [`Scheme::parse`] reads back to the same value.
impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bits = {}, axis = {}, group = {}, rule = {}, params = {}, order = {}",
            self.bits, self.axis, self.group, self.rule, self.params, self.order
        )
    }
}

/// The canonical text form, which [`CacheScheme::parse`] reads back to the same value.
impl fmt::Display for CacheScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key({}), value({})", self.key, self.value)?;
        if let Some(d) = self.calibrate {
            write!(f, ", calibrate = {:?}", d.get())?;
        }
        Ok(())
    }
}
