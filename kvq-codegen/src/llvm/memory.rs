//! Memory: buffer parameters, shared arrays and locals; loads, stores and vectors.
//!
//! - Element indices are U32, zero-extended to i64 for address arithmetic. Loads and stores of
//!   `N > 1` lanes are `<N x T>` accesses aligned to the element size, or, when the IR marks
//!   them aligned (the verifier proved the index a multiple of `N`), to `min(N * size, 16)`
//!   bytes: buffer bases are 16-byte aligned by the runtime's contract (the host launcher
//!   checks it), shared arrays and locals by their declarations here.
//! - Bool is `i1` in registers and a byte (0 or 1) in memory.
//! - Shared arrays: `addrspace(3)` globals on NVPTX (left undefined at block start: kvq kernels
//!   write them before reading), or offsets into the `extern` dynamic shared memory when they
//!   exceed 48 KiB (the launch passes `KernelInfo::dynamic_shared_bytes`); allocas on the host, zeroed at the start of every block as the
//!   interpreter does. Locals: allocas, zeroed likewise unless declared unzeroed (written before
//!   they are read: `Local::zeroed`); on the host one alloca holds every
//!   thread's copy (`block_size * len` elements, thread `tid` at `[tid * len, ..)`), so a local
//!   survives the barriers that end a thread loop.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicType, BasicTypeEnum};
use inkwell::values::{BasicValue, BasicValueEnum, InstructionOpcode, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use kvq_ir::ir::kernel::shared_layout;
use kvq_ir::ir::{Kernel, Memory, Param, ScalarType, Special};

use super::lower::{Fail, Lower, R};
use super::memory_type;

/// The shared arrays and locals of `kernel`, allocated at the builder's position (the entry).
/// With `dynamic` (the kernel's shared arrays exceed static shared memory), NVPTX places them
/// at their [`shared_layout`] offsets in the block's dynamic shared memory instead. On the host
/// each is allocated once per block of a cluster (`cluster_size` copies, rank `r`'s at
/// `r * len`), so that the blocks of a cluster keep theirs between cluster barriers.
#[allow(clippy::type_complexity)]
pub(super) fn allocate<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    b: &Builder<'ctx>,
    kernel: &Kernel,
    ptx: bool,
    dynamic: bool,
) -> R<(Vec<PointerValue<'ctx>>, Vec<PointerValue<'ctx>>)> {
    let mut shared = Vec::with_capacity(kernel.shared.len());
    let (offsets, _) = shared_layout(&kernel.shared);
    let dynamic_base = (ptx && dynamic).then(|| {
        let ty = ctx.i8_type().array_type(0);
        let g = module.add_global(ty, Some(AddressSpace::from(3)), "kvq_dynamic_shared");
        g.set_linkage(Linkage::External);
        g.set_alignment(16);
        g.as_pointer_value()
    });
    for (i, s) in kernel.shared.iter().enumerate() {
        let ty = memory_type(ctx, s.elem).array_type(s.len);
        let ptr = if let Some(base) = dynamic_base {
            let offset = ctx.i64_type().const_int(offsets[i], false);
            // SAFETY: an offset inside the dynamic allocation the launch sizes to the layout's
            // total (KernelInfo::dynamic_shared_bytes); GEP itself never dereferences.
            unsafe { b.build_in_bounds_gep(ctx.i8_type(), base, &[offset], &s.name)? }
        } else if ptx {
            let g = module.add_global(ty, Some(AddressSpace::from(3)), &format!("shared{i}"));
            g.set_linkage(Linkage::Internal);
            g.set_initializer(&ty.get_undef());
            g.set_alignment(16);
            g.as_pointer_value()
        } else {
            let all =
                memory_type(ctx, s.elem).array_type(s.len.saturating_mul(host_copies(kernel)));
            aligned_alloca(b, all.into(), &s.name)?
        };
        shared.push(ptr);
    }
    let mut locals = Vec::with_capacity(kernel.locals.len());
    for l in &kernel.locals {
        let copies = match ptx {
            true => 1,
            false => kernel.block_size.saturating_mul(host_copies(kernel)),
        };
        let ty = memory_type(ctx, l.elem).array_type(l.len.saturating_mul(copies));
        locals.push(aligned_alloca(b, ty.into(), &l.name)?);
    }
    Ok((shared, locals))
}

/// Blocks whose shared arrays and locals the host keeps at once: the cluster's.
fn host_copies(kernel: &Kernel) -> u32 {
    kernel.cluster_size.max(1)
}

impl<'ctx> Lower<'_, 'ctx> {
    /// Zeroes the locals, and on the host the shared arrays (of every block of the cluster), as
    /// the interpreter starts every block. (PTX shared memory is left undefined: kvq kernels
    /// write it before reading it.)
    pub(super) fn zero_memory(&self) -> R<()> {
        let kernel = self.kernel;
        let blocks = match self.ptx {
            true => 1,
            false => u64::from(host_copies(kernel)),
        };
        let shared = kernel
            .shared
            .iter()
            .map(|s| (s.elem, u64::from(s.len) * blocks));
        let copies = if self.ptx {
            1
        } else {
            u64::from(kernel.block_size) * blocks
        };
        // An unzeroed local is written before it is read (`Local::zeroed`): no fill.
        let locals = kernel
            .locals
            .iter()
            .map(|l| (l.elem, u64::from(l.len) * copies * u64::from(l.zeroed)));
        let ptrs = self.shared_base.iter().chain(&self.locals_base);
        let sizes: Vec<_> = shared.chain(locals).collect();
        let skip = if self.ptx { self.shared.len() } else { 0 };
        for (&ptr, (elem, len)) in ptrs.zip(sizes).skip(skip) {
            if len == 0 {
                continue;
            }
            let bytes = self
                .ctx
                .i64_type()
                .const_int(len * elem.size() as u64, false);
            let zero = self.ctx.i8_type().const_zero();
            self.b.build_memset(ptr, 16, zero, bytes)?;
        }
        Ok(())
    }

    /// Host: points the shared arrays and locals at the copies of the cluster's block `rank`.
    pub(super) fn select_block(&mut self, rank: IntValue<'ctx>) -> R<()> {
        let kernel = self.kernel;
        let i64_type = self.ctx.i64_type();
        let rank = self.b.build_int_z_extend(rank, i64_type, "rank")?;
        for (i, s) in kernel.shared.iter().enumerate() {
            let len = i64_type.const_int(u64::from(s.len), false);
            let first = self.b.build_int_mul(rank, len, "first")?;
            self.shared[i] = self.gep(self.shared_base[i], s.elem, first)?;
        }
        for (i, l) in kernel.locals.iter().enumerate() {
            let len = u64::from(l.len) * u64::from(kernel.block_size);
            let len = i64_type.const_int(len, false);
            let first = self.b.build_int_mul(rank, len, "first")?;
            self.locals[i] = self.gep(self.locals_base[i], l.elem, first)?;
        }
        Ok(())
    }

    /// Element `index` of shared array `shared` of the cluster's block `rank`: on the host its
    /// copy, on NVPTX the address `mapa` gives in distributed shared memory (generic).
    pub(super) fn remote_element(
        &self,
        shared: u32,
        rank: IntValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> R<(PointerValue<'ctx>, ScalarType)> {
        let s = self
            .kernel
            .shared
            .get(shared as usize)
            .ok_or_else(|| Fail::Llvm(format!("shared array {shared} does not exist")))?;
        let i64_type = self.ctx.i64_type();
        let index = self.b.build_int_z_extend(index, i64_type, "idx")?;
        let base = self.shared_base[shared as usize];
        if !self.ptx {
            let rank = self.b.build_int_z_extend(rank, i64_type, "rank")?;
            let len = i64_type.const_int(u64::from(s.len), false);
            let first = self.b.build_int_mul(rank, len, "first")?;
            let at = self.b.build_int_add(first, index, "idx")?;
            return Ok((self.gep(base, s.elem, at)?, s.elem));
        }
        let own = self.gep(base, s.elem, index)?;
        let generic = self.ctx.ptr_type(AddressSpace::default());
        let own = self.b.build_address_space_cast(own, generic, "generic")?;
        let remote = self
            .call(
                "llvm.nvvm.mapa",
                Some(generic.into()),
                &[own.into(), rank.into()],
            )?
            .into_pointer_value();
        Ok((remote, s.elem))
    }

    /// `base[index]` as a pointer, with the element type of `mem`.
    pub(super) fn element(
        &self,
        mem: Memory,
        index: IntValue<'ctx>,
    ) -> R<(PointerValue<'ctx>, ScalarType)> {
        let (base, elem) = self.memory(mem)?;
        let index = self
            .b
            .build_int_z_extend(index, self.ctx.i64_type(), "idx")?;
        Ok((self.gep(base, elem, index)?, elem))
    }

    /// The base pointer and element type of a buffer parameter or shared array.
    pub(super) fn memory(&self, mem: Memory) -> R<(PointerValue<'ctx>, ScalarType)> {
        match mem {
            Memory::Param(i) => match self.kernel.params.get(i as usize) {
                Some(Param::Buffer { elem, .. }) => {
                    Ok((self.params[i as usize].into_pointer_value(), *elem))
                }
                _ => Err(Fail::Llvm(format!("parameter {i} is not a buffer"))),
            },
            Memory::Shared(i) => {
                let elem = self.kernel.shared[i as usize].elem;
                Ok((self.shared[i as usize], elem))
            }
        }
    }

    pub(super) fn gep(
        &self,
        base: PointerValue<'ctx>,
        elem: ScalarType,
        index: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        let ty = memory_type(self.ctx, elem);
        // SAFETY: kvq kernels index within their buffers, shared arrays and locals (the kernel's
        // contract, as on the GPU); LLVM's GEP itself never dereferences.
        Ok(unsafe { self.b.build_in_bounds_gep(ty, base, &[index], "elem")? })
    }

    /// Element `index` of local `local` for the current thread.
    pub(super) fn local(
        &self,
        local: u32,
        index: IntValue<'ctx>,
    ) -> R<(PointerValue<'ctx>, ScalarType)> {
        let l = &self.kernel.locals[local as usize];
        let i64_type = self.ctx.i64_type();
        let mut index = self.b.build_int_z_extend(index, i64_type, "idx")?;
        if !self.ptx {
            let tid = self.special(Special::ThreadId)?;
            let tid = self.b.build_int_z_extend(tid, i64_type, "tid")?;
            let len = i64_type.const_int(u64::from(l.len), false);
            let first = self.b.build_int_mul(tid, len, "first")?;
            index = self.b.build_int_add(first, index, "idx")?;
        }
        Ok((
            self.gep(self.locals[local as usize], l.elem, index)?,
            l.elem,
        ))
    }

    /// An `Op::Load` of `lanes` elements of `mem` at element `index`.
    pub(super) fn load_op(
        &self,
        mem: Memory,
        index: IntValue<'ctx>,
        lanes: u8,
        aligned: bool,
    ) -> R<BasicValueEnum<'ctx>> {
        let (ptr, elem) = self.element(mem, index)?;
        self.load(
            ptr,
            elem,
            lanes,
            access_align(elem, u32::from(lanes), aligned),
        )
    }

    /// Loads `lanes` elements at `ptr`, aligned to `align` bytes.
    pub(super) fn load(
        &self,
        ptr: PointerValue<'ctx>,
        elem: ScalarType,
        lanes: u8,
        align: u32,
    ) -> R<BasicValueEnum<'ctx>> {
        let scalar = memory_type(self.ctx, elem);
        let ty = if lanes > 1 {
            vector_type(scalar, lanes)
        } else {
            scalar
        };
        let value = self.b.build_load(ty, ptr, "load")?;
        if let Some(inst) = value.as_instruction_value() {
            inst.set_alignment(align)
                .map_err(|e| Fail::Llvm(e.to_string()))?;
        }
        if elem != ScalarType::Bool {
            return Ok(value);
        }
        let nonzero = if lanes > 1 {
            let v = value.into_vector_value();
            let zero = v.get_type().const_zero();
            self.b
                .build_int_compare(IntPredicate::NE, v, zero, "bool")?
                .into()
        } else {
            let v = value.into_int_value();
            let zero = v.get_type().const_zero();
            self.b
                .build_int_compare(IntPredicate::NE, v, zero, "bool")?
                .into()
        };
        Ok(nonzero)
    }

    /// Stores a scalar or vector at `ptr`, aligned to `align` bytes.
    pub(super) fn store(
        &self,
        ptr: PointerValue<'ctx>,
        elem: ScalarType,
        value: BasicValueEnum<'ctx>,
        align: u32,
    ) -> R<()> {
        let value = if elem == ScalarType::Bool {
            let byte = memory_type(self.ctx, elem);
            let ty = match value {
                BasicValueEnum::VectorValue(v) => vector_type(byte, v.get_type().get_size() as u8),
                _ => byte,
            };
            self.b
                .build_cast(InstructionOpcode::ZExt, value, ty, "byte")?
        } else {
            value
        };
        let inst = self.b.build_store(ptr, value)?;
        inst.set_alignment(align)
            .map_err(|e| Fail::Llvm(e.to_string()))
    }
}

/// `<lanes x elem>`.
pub(super) fn vector_type(elem: BasicTypeEnum<'_>, lanes: u8) -> BasicTypeEnum<'_> {
    match elem {
        BasicTypeEnum::FloatType(t) => t.vec_type(u32::from(lanes)).into(),
        BasicTypeEnum::IntType(t) => t.vec_type(u32::from(lanes)).into(),
        other => other,
    }
}

fn aligned_alloca<'ctx>(
    b: &Builder<'ctx>,
    ty: BasicTypeEnum<'ctx>,
    name: &str,
) -> R<PointerValue<'ctx>> {
    let ptr = b.build_alloca(ty, name)?;
    if let Some(inst) = ptr.as_instruction_value() {
        inst.set_alignment(16)
            .map_err(|e| Fail::Llvm(e.to_string()))?;
    }
    Ok(ptr)
}

/// The alignment in bytes of an access to `lanes` elements of `elem`: `min(lanes * size, 16)`
/// when the IR marks it aligned, else the element size.
pub(super) fn access_align(elem: ScalarType, lanes: u32, aligned: bool) -> u32 {
    let size = elem.size() as u32;
    match aligned {
        true => lanes.saturating_mul(size).clamp(size, 16),
        false => size,
    }
}
