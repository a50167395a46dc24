//! PTX for NVIDIA GPUs.
//!
//! The entry is named like the kernel and takes its parameters in ABI order (buffers as
//! `.u64` global pointers, scalars by value); launch it with `block_size` threads per block
//! (`.reqntid` enforces it) and any number of blocks (a multiple of the cluster size for a
//! kernel with clusters, which `.reqnctapercluster` declares; sm_90 only). Shared arrays are
//! static `.shared` variables, or dynamic shared memory of `KernelInfo::dynamic_shared_bytes`
//! when they exceed 48 KiB. Float arithmetic is `add.rn`/`mul.rn`/`div.rn.f32`
//! (never `fma`, `div.approx` or `div.full`), see the crate documentation.

use kvq_ir::ir::{Kernel, KernelInfo};

use crate::cache::{CacheKey, CompileCache, Lookup};
use crate::{Arch, CodegenError, Ptx};

/// PTX text of `kernel` for `arch`, through the compile cache the environment names
/// ([`CompileCache::from_env`]).
pub fn emit(kernel: &Kernel, info: &KernelInfo, arch: Arch) -> Result<Ptx, CodegenError> {
    emit_with(kernel, info, arch, CompileCache::from_env().as_ref())
}

/// PTX text of `kernel` for `arch` with line information for profiling: the code of kvq IR
/// instruction `v` at line `v.index() + 1` (see [`crate::ptxas::assemble_counting_lines`]).
/// Not cached.
pub fn emit_with_lines(
    kernel: &Kernel,
    info: &KernelInfo,
    arch: Arch,
) -> Result<Ptx, CodegenError> {
    Ok(Ptx {
        arch,
        entry: kernel.name.clone(),
        text: crate::llvm::ptx_text_with_lines(kernel, info, arch)?,
    })
}

/// PTX text of `kernel` for `arch`, looked up in and stored to `cache` when given. A corrupt
/// cache entry is rebuilt; a cache that cannot be written is skipped with a warning.
pub fn emit_with(
    kernel: &Kernel,
    info: &KernelInfo,
    arch: Arch,
    cache: Option<&CompileCache>,
) -> Result<Ptx, CodegenError> {
    let ir = kvq_ir::ir::print(kernel);
    crate::dump(kernel, "kvqir", ir.as_bytes());
    let key = CacheKey::new(
        &ir,
        arch.name(),
        &crate::llvm::ptx_options(),
        &crate::llvm::llvm_version(),
    );
    let cached = cache.and_then(|c| match c.lookup(&key, "ptx") {
        Lookup::Hit(path) => std::fs::read_to_string(path).ok(),
        Lookup::Miss | Lookup::Corrupt => None,
    });
    let text = match cached {
        Some(text) => text,
        None => {
            let text = crate::llvm::ptx_text(kernel, info, arch)?;
            if let Some(c) = cache {
                if let Err(e) = c.store(&key, "ptx", text.as_bytes()) {
                    eprintln!(
                        "kvq-codegen: cannot write the compile cache {}: {e}",
                        c.dir().display()
                    );
                }
            }
            text
        }
    };
    crate::dump(kernel, &format!("{}.ptx", arch.name()), text.as_bytes());
    Ok(Ptx {
        arch,
        entry: kernel.name.clone(),
        text,
    })
}
