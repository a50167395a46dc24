//! kvq: a kernel-generation compiler for low-bit KV caches of multimodal LLMs.
//!
//! Declare a scheme with [`kv_quant`], then quantize and attend with the reference
//! implementation ([`reference`]) or evaluate it on real K/V ([`eval`]).
//!
//! ```
//! use kvq::{kv_quant, KvQuant, Bits};
//!
//! #[kv_quant(
//!     key(bits = 1, axis = channel, group = all, rule = shrink(0.5)),
//!     value(bits = 1, axis = channel, group = all, rule = shrink(0.3)),
//!     calibrate = 3.0,
//! )]
//! pub struct CalibQuant;
//!
//! assert_eq!(CalibQuant::SCHEME.key.bits, Bits::B1);
//! assert_eq!(CalibQuant::SCHEME.calibrate.unwrap().get(), 3.0);
//! ```

pub mod attention;
pub mod backend;
pub mod bench;
pub mod bundle;
pub mod eval;
pub mod eval_kernels;
pub mod fuzzing;
pub mod model;
pub mod output;
pub mod report;
pub mod study;
pub mod tune;

pub use kvq_ir::lower;
pub use kvq_ir::metrics;
pub use kvq_ir::reference;
pub use kvq_ir::{
    Alpha, Axis, BitOrder, Bits, CacheScheme, Calibration, Center, Group, GroupSize, ParamType,
    Quantile, Rule, Scheme, Shape3, Tensor3,
};
pub use kvq_macros::kv_quant;

/// A cache scheme declared at compile time with [`kv_quant`].
pub trait KvQuant {
    /// The key scheme, the value scheme and the cache-level options.
    const SCHEME: CacheScheme;
}

/// Items the `#[kv_quant]` expansion names; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::KvQuant;
    pub use core::option::Option::{None, Some};
    pub use kvq_ir::scheme::{
        Alpha, Axis, BitOrder, Bits, CacheScheme, Calibration, Center, Group, GroupSize, ParamType,
        Quantile, Rule, Scheme,
    };
}
