//! The reference implementation of SPEC.md: plain loops, one f32 operation at a time in the order
//! the spec writes, so that it can serve as the oracle of every generated backend.

pub mod attention;
pub mod pack;
pub mod quantize;
pub mod range;

pub use attention::{decode_attention, AttentionError, Segment};
pub use quantize::{param_shape, quantize, PackedSpan, QuantError};
