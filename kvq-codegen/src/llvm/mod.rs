//! The one module tree that names inkwell: kernel IR to LLVM IR, optimized, to PTX text or a
//! host object file.
//!
//! # Shape of the generated code
//! - **PTX**: one function named like the kernel, calling convention `ptx_kernel`, buffer
//!   parameters `ptr addrspace(1) noalias` (plus `readonly`/`writeonly` from their access),
//!   scalars by value, and `!nvvm.annotations` `reqntidx = block_size` (and `minctasm = 1` for
//!   blocks of 512 threads or more). Shared arrays are
//!   `addrspace(3)` globals; locals are allocas; `ThreadId`/`BlockId`/`GridSize` read
//!   `%tid.x`/`%ctaid.x`/`%nctaid.x`; a barrier is `llvm.nvvm.barrier0`; a cluster barrier is
//!   `barrier.cluster.arrive` + `wait`, a remote load `mapa` and a generic load, and a kernel
//!   with clusters gets `.reqnctapercluster` in its PTX text (sm_90; sm_80 refuses it).
//! - **Host** ("threads and blocks become loops"): an internal, always-inlined
//!   `kvq_<name>.body(params.., begin, end, grid)` whose buffer parameters are `noalias`, and the
//!   exported `void kvq_<name>(const uint64_t *args, uint32_t block_begin, uint32_t block_end,
//!   uint32_t grid_size)` that unpacks `args[i]` (a buffer's address, or a scalar's bits
//!   zero-extended) and calls it. The body loops over blocks `begin..end`; for each block it
//!   runs every barrier-separated region of the top-level block as `for tid in 0..block_size`.
//!   Shared arrays are allocas (one instance per block of a cluster, reused by each cluster),
//!   locals are allocas of `block_size * len` elements per block of a cluster where thread
//!   `tid` owns `[tid * len, (tid + 1) * len)`, so they survive barriers; with clusters, each
//!   part of the top level between cluster barriers runs for the cluster's blocks in turn.
//!
//! See [`lower`] for the instruction-level rules and [`ops`] for arithmetic and conversions.

mod bits;
mod convert;
mod exp;
mod lines;
mod lower;
mod memory;
mod ops;
mod pure;
mod select;
mod target;
mod warp;

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::targets::{FileType, TargetMachine};
use inkwell::types::{BasicMetadataTypeEnum, BasicTypeEnum};
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, FunctionValue};
use inkwell::AddressSpace;
use kvq_ir::ir::{Access, Kernel, KernelInfo, Param, ScalarType};

use crate::{Arch, CodegenError, Passes, Target};
use lower::{Fail, Lower};

/// The code generation options of PTX, for cache keys.
pub(crate) fn ptx_options() -> String {
    format!("default<O3> {} {SOURCES}", target::PTX_FEATURES)
}

/// The code generation options of host code, for cache keys.
pub(crate) fn host_options(passes: Passes) -> String {
    let unroll = if passes.unroll_loops {
        ""
    } else {
        " no-unroll"
    };
    format!(
        "default<O3>{unroll} pic {} {SOURCES}",
        target::HOST_EXTRA_FEATURES
    )
}

/// A fingerprint of kvq-codegen's sources (`build.rs`), so that cached code from another
/// version of the lowering is never taken for this one's.
const SOURCES: &str = env!("KVQ_CODEGEN_SOURCES");

/// LLVM's number for the `ptx_kernel` calling convention.
const PTX_KERNEL_CC: u32 = 71;

/// PTX text of `kernel` for `arch`.
pub(crate) fn ptx_text(
    kernel: &Kernel,
    info: &KernelInfo,
    arch: Arch,
) -> Result<String, CodegenError> {
    ptx_text_of(kernel, info, arch, false)
}

/// [`ptx_text`] with line information: each kvq IR instruction's code at line `index + 1`
/// ([`lines`]), for profiling.
pub(crate) fn ptx_text_with_lines(
    kernel: &Kernel,
    info: &KernelInfo,
    arch: Arch,
) -> Result<String, CodegenError> {
    ptx_text_of(kernel, info, arch, true)
}

fn ptx_text_of(
    kernel: &Kernel,
    info: &KernelInfo,
    arch: Arch,
    lines: bool,
) -> Result<String, CodegenError> {
    let ctx = Context::create();
    let target = Target::Ptx(arch);
    let (module, machine) = build_with(&ctx, kernel, info, target, Passes::default(), lines)?;
    let buffer = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| llvm_error(kernel, e.to_string()))?;
    let text = String::from_utf8_lossy(buffer.as_slice()).into_owned();
    let text = match lines {
        true => without_debug_target(kernel, text)?,
        false => text,
    };
    cluster_directive(kernel, text)
}

/// The PTX with its `.target <arch>, debug` line made `.target <arch>`: with the `debug`
/// option ptxas compiles for a debugger (on the `partial` attention kernel: 708 bytes of
/// spills where the PTX without line information has none), while the `.loc` directives alone,
/// under `ptxas -lineinfo`, give the same machine code as the PTX without them, with lines.
fn without_debug_target(kernel: &Kernel, text: String) -> Result<String, CodegenError> {
    let Some(at) = text.find("\n.target ") else {
        return Err(llvm_error(kernel, "PTX without a .target line".into()));
    };
    let end = text[at + 1..].find('\n').map_or(text.len(), |e| at + 1 + e);
    let line = text[at + 1..end].replace(", debug", "");
    Ok(format!("{}\n{line}{}", &text[..at], &text[end..]))
}

/// The PTX with `.reqnctapercluster n, 1, 1` after the entry's `.reqntid` line when the kernel
/// runs in clusters of `n` (LLVM 19's NVPTX backend has no annotation for it); a plain launch
/// then runs the grid in clusters of `n` (PTX ISA, "Cluster Dimension Directives").
fn cluster_directive(kernel: &Kernel, text: String) -> Result<String, CodegenError> {
    if kernel.cluster_size <= 1 {
        return Ok(text);
    }
    let Some(at) = text.find("\n.reqntid ") else {
        return Err(llvm_error(kernel, "PTX without a .reqntid line".into()));
    };
    let end = text[at + 1..].find('\n').map_or(text.len(), |e| at + 1 + e);
    let directive = format!("\n.reqnctapercluster {}, 1, 1", kernel.cluster_size);
    Ok(format!("{}{directive}{}", &text[..end], &text[end..]))
}

/// A relocatable x86-64 object file defining `kvq_<name>` (see the module docs).
pub(crate) fn host_object(
    kernel: &Kernel,
    info: &KernelInfo,
    passes: Passes,
) -> Result<Vec<u8>, CodegenError> {
    let ctx = Context::create();
    let (module, machine) = build(&ctx, kernel, info, Target::Host, passes)?;
    let buffer = machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| llvm_error(kernel, e.to_string()))?;
    Ok(buffer.as_slice().to_vec())
}

/// LLVM IR text of `kernel` for `target`, optimized with `passes`.
pub(crate) fn ir_text(
    kernel: &Kernel,
    info: &KernelInfo,
    target: Target,
    passes: Passes,
) -> Result<String, CodegenError> {
    let ctx = Context::create();
    let (module, _machine) = build(&ctx, kernel, info, target, passes)?;
    Ok(module.print_to_string().to_string())
}

/// What determines host code besides the kernel: triple, CPU and its features (a cache key part).
pub(crate) fn host_target_id() -> String {
    // Asked of LLVM once per process (each query reads CPUID and builds strings: about 0.1 ms,
    // which every warm kernel load paid).
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "{} {} {}",
            TargetMachine::get_default_triple()
                .as_str()
                .to_string_lossy(),
            TargetMachine::get_host_cpu_name().to_string(),
            TargetMachine::get_host_cpu_features().to_string()
        )
    })
    .clone()
}

/// The version of the LLVM linked in, `major.minor.patch`.
pub(crate) fn llvm_version() -> String {
    let (mut major, mut minor, mut patch) = (0u32, 0u32, 0u32);
    // SAFETY: LLVMGetVersion only writes the three integers through the given pointers.
    unsafe { llvm_sys::core::LLVMGetVersion(&mut major, &mut minor, &mut patch) };
    format!("{major}.{minor}.{patch}")
}

/// The exported symbol of the host kernel named `name`.
pub(crate) fn host_symbol(name: &str) -> String {
    format!("kvq_{name}")
}

fn llvm_error(kernel: &Kernel, message: String) -> CodegenError {
    CodegenError::Llvm {
        kernel: kernel.name.clone(),
        message,
    }
}

fn fail(kernel: &Kernel, fail: Fail) -> CodegenError {
    match fail {
        Fail::Llvm(message) => llvm_error(kernel, message),
        Fail::Unsupported(what) => CodegenError::Unsupported {
            kernel: kernel.name.clone(),
            what,
        },
    }
}

/// Builds, verifies and optimizes the module of `kernel` for `target`.
fn build<'ctx>(
    ctx: &'ctx Context,
    kernel: &Kernel,
    info: &KernelInfo,
    target: Target,
    passes: Passes,
) -> Result<(Module<'ctx>, TargetMachine), CodegenError> {
    build_with(ctx, kernel, info, target, passes, false)
}

/// [`build`], with line information when `lines` (PTX only).
fn build_with<'ctx>(
    ctx: &'ctx Context,
    kernel: &Kernel,
    info: &KernelInfo,
    target: Target,
    passes: Passes,
    lines: bool,
) -> Result<(Module<'ctx>, TargetMachine), CodegenError> {
    if kernel.cluster_size > 1 && target == Target::Ptx(Arch::Sm80) {
        return Err(CodegenError::Unsupported {
            kernel: kernel.name.clone(),
            what: "thread-block clusters on sm_80 (they need sm_90)".into(),
        });
    }
    let machine = target::machine(&kernel.name, target)?;
    let module = ctx.create_module(&kernel.name);
    target::configure(&module, &machine);
    match target {
        Target::Ptx(_) => ptx_kernel(ctx, &module, kernel, info, lines),
        Target::Host => host_kernel(ctx, &module, kernel, info),
    }
    .map_err(|f| fail(kernel, f))?;
    module
        .verify()
        .map_err(|e| llvm_error(kernel, format!("invalid module: {e}")))?;
    target::optimize(&module, &machine, passes).map_err(|e| llvm_error(kernel, e))?;
    crate::dump(
        kernel,
        dump_ext(target),
        module.print_to_string().to_bytes(),
    );
    Ok((module, machine))
}

fn dump_ext(target: Target) -> &'static str {
    match target {
        Target::Host => "host.ll",
        Target::Ptx(Arch::Sm80) => "sm_80.ll",
        Target::Ptx(Arch::Sm90) => "sm_90.ll",
    }
}

/// The LLVM types of the kernel's parameters; buffers live in `space`.
fn param_types<'ctx>(
    ctx: &'ctx Context,
    kernel: &Kernel,
    space: AddressSpace,
) -> Vec<BasicMetadataTypeEnum<'ctx>> {
    kernel
        .params
        .iter()
        .map(|p| match p {
            Param::Buffer { .. } => ctx.ptr_type(space).into(),
            Param::Scalar { ty, .. } => ops::scalar_type(ctx, *ty).into(),
        })
        .collect()
}

/// Marks buffer parameters `noalias` and `readonly`/`writeonly` per their access.
///
/// `noalias` is sound because a launch never passes one writable buffer twice or together with
/// a buffer it overlaps (the host launcher's `&mut` borrows guarantee it; GPU launchers must).
fn mark_buffers(ctx: &Context, func: FunctionValue<'_>, kernel: &Kernel) {
    let attr = |name: &str| ctx.create_enum_attribute(Attribute::get_named_enum_kind_id(name), 0);
    for (i, p) in kernel.params.iter().enumerate() {
        if let Param::Buffer { access, .. } = p {
            let loc = AttributeLoc::Param(i as u32);
            func.add_attribute(loc, attr("noalias"));
            match access {
                Access::Read => func.add_attribute(loc, attr("readonly")),
                Access::Write => func.add_attribute(loc, attr("writeonly")),
                Access::ReadWrite => {}
            }
        }
    }
}

fn ptx_kernel<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    kernel: &Kernel,
    info: &KernelInfo,
    lines: bool,
) -> Result<(), Fail> {
    let types = param_types(ctx, kernel, AddressSpace::from(1));
    let func = module.add_function(&kernel.name, ctx.void_type().fn_type(&types, false), None);
    func.set_call_conventions(PTX_KERNEL_CC);
    mark_buffers(ctx, func, kernel);
    let params: Vec<BasicValueEnum<'ctx>> = func.get_param_iter().collect();
    let mut lower = Lower::new(ctx, module, kernel, info, func, params, true)?;
    lower.lines = lines.then(|| lines::Lines::attach(ctx, module, func, &kernel.name));
    lower.emit_ptx()?;
    if let Some(l) = &lower.lines {
        l.finalize();
    }

    let i32_type = ctx.i32_type();
    let mut annotations = vec![("reqntidx", kernel.block_size)];
    if kernel.min_blocks_per_sm > 0 {
        annotations.push(("minctasm", kernel.min_blocks_per_sm));
    } else if kernel.block_size >= MIN_ONE_BLOCK_THREADS {
        annotations.push(("minctasm", 1));
    }
    for (key, value) in annotations {
        let annotation = ctx.metadata_node(&[
            func.as_global_value().as_pointer_value().into(),
            ctx.metadata_string(key).into(),
            i32_type.const_int(u64::from(value), false).into(),
        ]);
        module
            .add_global_metadata("nvvm.annotations", &annotation)
            .map_err(|e| Fail::Llvm(e.to_string()))?;
    }
    Ok(())
}

/// Blocks of at least this many threads declare `.minnctapersm 1`: without it ptxas budgets
/// registers for two resident blocks (64 per thread at 512 threads) and spills long-lived
/// values that one block per SM holds in registers (it only raises the ceiling: a kernel that
/// needs fewer registers keeps them).
const MIN_ONE_BLOCK_THREADS: u32 = 512;

fn host_kernel<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    kernel: &Kernel,
    info: &KernelInfo,
) -> Result<(), Fail> {
    let i32_type = ctx.i32_type();
    let i64_type = ctx.i64_type();
    let ptr_type = ctx.ptr_type(AddressSpace::default());
    let symbol = host_symbol(&kernel.name);

    // The body: the kernel's parameters, then begin, end, grid.
    let mut types = param_types(ctx, kernel, AddressSpace::default());
    types.extend([BasicMetadataTypeEnum::from(i32_type); 3]);
    let body = module.add_function(
        &format!("{symbol}.body"),
        ctx.void_type().fn_type(&types, false),
        Some(Linkage::Internal),
    );
    mark_buffers(ctx, body, kernel);
    let inline = Attribute::get_named_enum_kind_id("alwaysinline");
    body.add_attribute(AttributeLoc::Function, ctx.create_enum_attribute(inline, 0));
    let all: Vec<BasicValueEnum<'ctx>> = body.get_param_iter().collect();
    let n = kernel.params.len();
    let (params, range) = all.split_at(n);
    let range = [
        range[0].into_int_value(),
        range[1].into_int_value(),
        range[2].into_int_value(),
    ];
    Lower::new(ctx, module, kernel, info, body, params.to_vec(), false)?.emit_host(range)?;

    // The exported entry: unpack args[i] and call the body.
    let entry_type = ctx.void_type().fn_type(
        &[
            ptr_type.into(),
            i32_type.into(),
            i32_type.into(),
            i32_type.into(),
        ],
        false,
    );
    let entry = module.add_function(&symbol, entry_type, None);
    let b = ctx.create_builder();
    b.position_at_end(ctx.append_basic_block(entry, "entry"));
    let args = entry
        .get_nth_param(0)
        .ok_or_else(|| Fail::Llvm("entry lacks its args parameter".into()))?
        .into_pointer_value();
    let mut call_args: Vec<BasicMetadataValueEnum<'ctx>> = Vec::with_capacity(n + 3);
    for (i, p) in kernel.params.iter().enumerate() {
        let index = i64_type.const_int(i as u64, false);
        // SAFETY: `args` points to one u64 per parameter (the launcher's contract, checked
        // against the parameter list before every call), so element `i` is in bounds.
        let slot = unsafe { b.build_in_bounds_gep(i64_type, args, &[index], "slot")? };
        let word = b.build_load(i64_type, slot, "word")?.into_int_value();
        let value: BasicValueEnum<'ctx> = match p {
            Param::Buffer { .. } => b.build_int_to_ptr(word, ptr_type, "buffer")?.into(),
            Param::Scalar { ty, .. } => {
                let bits = b.build_int_truncate(word, i32_type, "bits")?;
                match ty {
                    ScalarType::F32 => b.build_bit_cast(bits, ctx.f32_type(), "f32")?,
                    ScalarType::U32 => bits.into(),
                    other => {
                        return Err(Fail::Unsupported(format!(
                            "a scalar parameter of type {}",
                            other.name()
                        )))
                    }
                }
            }
        };
        call_args.push(value.into());
    }
    for i in 1..4 {
        let p = entry
            .get_nth_param(i)
            .ok_or_else(|| Fail::Llvm("entry lacks a range parameter".into()))?;
        call_args.push(p.into());
    }
    b.build_call(body, &call_args, "")?;
    b.build_return(None)?;
    Ok(())
}

/// The LLVM type of a memory element of `elem` (Bool is a byte in memory).
pub(super) fn memory_type(ctx: &Context, elem: ScalarType) -> BasicTypeEnum<'_> {
    match elem {
        ScalarType::Bool => ctx.i8_type().into(),
        other => ops::scalar_type(ctx, other),
    }
}
