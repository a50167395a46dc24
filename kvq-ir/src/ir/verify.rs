//! The verifier. (Being written: see the helper's task.)

use super::kernel::{Kernel, Type};

/// Facts about a verified kernel that backends need. Only [`verify`] makes one, so a backend
/// that takes a `&KernelInfo` cannot see an unverified kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelInfo {
    /// Result type of every instruction, indexed by `Value::index()`.
    pub types: Vec<Option<Type>>,
    /// Bytes of shared memory per block.
    pub shared_bytes: u32,
    /// Number of barrier-separated regions of the top-level block (barriers + 1).
    pub regions: u32,
    _sealed: (),
}

/// Every invariant a kernel breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("kernel `{kernel}` is invalid")]
pub struct VerifyError {
    /// The kernel's name.
    pub kernel: String,
}

/// Checks `kernel` and describes it for backends.
pub fn verify(kernel: &Kernel) -> Result<KernelInfo, VerifyError> {
    Err(VerifyError {
        kernel: kernel.name.clone(),
    })
}
