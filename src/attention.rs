//! Fused decode attention through generated host code: the kernels of
//! [`kvq_ir::lower::attention`] compiled once per process and launched over a batch.
//!
//! ```no_run
//! # fn demo(q: &[f32], k: &kvq::reference::PackedSpan, v: &kvq::reference::PackedSpan)
//! # -> Result<(), kvq::backend::BackendError> {
//! use kvq::attention::{HostAttention, SeqData};
//! use kvq::lower::attention::AttentionShape;
//! let scheme = kvq::CacheScheme::parse(
//!     "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
//!      value(bits = 1, axis = channel, group = all, rule = shrink(0.3)), calibrate = 3.0",
//! ).unwrap();
//! let attn = HostAttention::new(&scheme, AttentionShape { head_dim: 128, group: 4 }, None)?;
//! let seq = SeqData { q, fp: None, span: Some((k, v)) };
//! let mut args = attn.prepare(8, &[seq])?;
//! attn.run(&mut args)?;
//! let out = args.outputs();
//! # Ok(()) }
//! ```

use std::sync::Arc;

use kvq_codegen::host::HostKernel;
use kvq_ir::ir::interp::Arg;
use kvq_ir::ir::Kernel;
use kvq_ir::lower::attention::{
    attention, AttentionArgs, AttentionKernels, AttentionSchedule, AttentionShape,
};
use kvq_ir::CacheScheme;

pub use kvq_ir::lower::attention::SeqData;

use crate::backend::{host_args, host_kernel, BackendError};

/// The attention kernels of one cache scheme and shape, compiled for this CPU.
pub struct HostAttention {
    scheme: CacheScheme,
    shape: AttentionShape,
    schedule: AttentionSchedule,
    kernels: AttentionKernels,
    compiled: Vec<(String, Arc<HostKernel>)>,
}

impl std::fmt::Debug for HostAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAttention")
            .field("scheme", &self.scheme)
            .field("shape", &self.shape)
            .field("schedule", &self.schedule)
            .finish()
    }
}

impl HostAttention {
    /// Lowers and compiles the kernels (through the compile cache); `schedule` defaults to
    /// [`AttentionSchedule::host_default`].
    pub fn new(
        scheme: &CacheScheme,
        shape: AttentionShape,
        schedule: Option<AttentionSchedule>,
    ) -> Result<HostAttention, BackendError> {
        let schedule = schedule.unwrap_or_else(|| AttentionSchedule::host_default(scheme));
        let kernels = attention(scheme, shape, &schedule)?;
        let mut compiled = Vec::new();
        for k in kernels
            .stats
            .iter()
            .chain([&kernels.partial, &kernels.combine])
        {
            compiled.push((k.name.clone(), host_kernel(k)?));
        }
        Ok(HostAttention {
            scheme: *scheme,
            shape,
            schedule,
            kernels,
            compiled,
        })
    }

    /// The schedule in use.
    pub fn schedule(&self) -> AttentionSchedule {
        self.schedule
    }

    /// The lowered kernels.
    pub fn kernels(&self) -> &AttentionKernels {
        &self.kernels
    }

    /// Lays out a batch for [`run`](Self::run) (copies the data once).
    pub fn prepare(
        &self,
        kv_heads: usize,
        seqs: &[SeqData<'_>],
    ) -> Result<AttentionArgs, BackendError> {
        Ok(AttentionArgs::new(
            &self.scheme,
            self.shape,
            &self.schedule,
            kv_heads,
            seqs,
        )?)
    }

    /// Launches the kernels over `args`; results are in [`AttentionArgs::outputs`].
    pub fn run(&self, args: &mut AttentionArgs) -> Result<(), BackendError> {
        args.launch(&self.kernels, |kernel: &Kernel, a: &mut [Arg], grid| {
            let compiled = self
                .compiled
                .iter()
                .find(|(name, _)| *name == kernel.name)
                .map(|(_, k)| k.clone())
                .ok_or_else(|| BackendError::TooLarge(format!("kernel {} missing", kernel.name)))?;
            let mut host = host_args(a);
            // SAFETY: `args` were laid out by `AttentionArgs::new` for these kernels, whose
            // indices stay within the planned buffers (the plan checks 32-bit offsets).
            unsafe { compiled.launch(&mut host, grid)? };
            Ok(())
        })
    }

    /// Prepares, runs and returns the outputs, one `[q_heads, head_dim]` vector per sequence.
    pub fn attend(
        &self,
        kv_heads: usize,
        seqs: &[SeqData<'_>],
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        let mut args = self.prepare(kv_heads, seqs)?;
        self.run(&mut args)?;
        Ok(args.outputs())
    }
}
