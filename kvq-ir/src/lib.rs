//! `kvq-ir`: what a low-bit KV-cache scheme means, and the plain reference that every backend is
//! checked against.
//!
//! - [`scheme`]: the scheme model ([`Scheme`], [`CacheScheme`]) and its one parser, shared by the
//!   `#[kv_quant]` macro and the command line.
//! - [`reference`]: the reference quantizer, packing, dequantization and decode attention of the
//!   normative spec (SPEC.md sections 2-4), written to be obviously correct rather than fast.
//! - [`metrics`]: the error metrics of SPEC.md section 5, computed in f64.
//! - [`tensor`]: the small owned tensor type these work on.
//! - [`gpu_model`]: a GPU cost model (occupancy, a warp-level analysis of interpreter traces,
//!   predicted times) that runs without a GPU.

pub mod gpu_model;
pub mod ir;
pub mod limits;
pub mod lower;
pub mod metrics;
pub mod reference;
pub mod scheme;
pub mod tensor;

pub use scheme::{
    Alpha, Axis, BitOrder, Bits, CacheScheme, Calibration, Center, Group, GroupSize, ParamType,
    Quantile, Rule, Scheme,
};
pub use tensor::{Shape3, Tensor3, TensorError};
