//! PTX for NVIDIA GPUs.
//!
//! The entry is named like the kernel and takes its parameters in ABI order (buffers as
//! `.u64` global pointers, scalars by value); launch it with `block_size` threads per block
//! (`.reqntid` enforces it) and any number of blocks. No dynamic shared memory is used: shared
//! arrays are static `.shared` variables. Float arithmetic is `add.rn`/`mul.rn`/`div.rn.f32`
//! (never `fma`, `div.approx` or `div.full`), see the crate documentation.

use kvq_ir::ir::{Kernel, KernelInfo};

use crate::{Arch, CodegenError, Ptx};

/// PTX text of `kernel` for `arch`.
pub fn emit(kernel: &Kernel, info: &KernelInfo, arch: Arch) -> Result<Ptx, CodegenError> {
    let text = crate::llvm::ptx_text(kernel, info, arch)?;
    crate::dump(kernel, &format!("{}.ptx", arch.name()), text.as_bytes());
    Ok(Ptx {
        arch,
        entry: kernel.name.clone(),
        text,
    })
}
