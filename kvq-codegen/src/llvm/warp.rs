//! Warp collectives ([`WarpOp`]) on the threads' locals.
//!
//! - NVPTX: `shfl.sync.bfly` / `shfl.sync.idx` over all 32 lanes (member mask `0xffffffff`,
//!   clamp `0x1f`, so an idx lane is taken modulo 32), 8-bit values widened to 32 bits; a
//!   reduction is five butterfly steps (16, 8, 4, 2, 1) where each lane applies the operation to
//!   the lower lane's value first, as the IR defines it.
//! - Host: between two thread loops, a loop over the block's warps gathers each lane's element
//!   into a 32-element scratch array, computes the same steps there, and writes every lane's
//!   result back into its locals.

use inkwell::types::BasicType;
use inkwell::values::{BasicValueEnum, IntValue, PointerValue};
use inkwell::IntPredicate;
use kvq_ir::ir::{ScalarType, Type, WarpOp, REDUCE_STEPS, WARP_SIZE};

use super::lower::{Fail, Lower, R};
use super::memory_type;

impl<'ctx> Lower<'_, 'ctx> {
    /// The element type and length of local `l`.
    fn warp_local(&self, l: u32) -> R<(ScalarType, u32)> {
        self.kernel
            .locals
            .get(l as usize)
            .map(|l| (l.elem, l.len))
            .ok_or_else(|| Fail::Llvm(format!("no local {l}")))
    }

    fn read_local_elem(&self, local: u32, e: u32) -> R<BasicValueEnum<'ctx>> {
        let index = self.ctx.i32_type().const_int(u64::from(e), false);
        self.read_local_at(local, index)
    }

    fn write_local_elem(&self, local: u32, e: u32, x: BasicValueEnum<'ctx>) -> R<()> {
        let index = self.ctx.i32_type().const_int(u64::from(e), false);
        self.write_local_at(local, index, x)
    }

    fn read_local_at(&self, local: u32, index: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let (ptr, elem) = self.local(local, index)?;
        self.load(ptr, elem, 1, elem.size() as u32)
    }

    fn write_local_at(&self, local: u32, index: IntValue<'ctx>, x: BasicValueEnum<'ctx>) -> R<()> {
        let (ptr, elem) = self.local(local, index)?;
        self.store(ptr, elem, x, elem.size() as u32)
    }

    /// NVPTX: the collective, element by element.
    pub(super) fn ptx_warp(&mut self, w: WarpOp) -> R<()> {
        let i32_type = self.ctx.i32_type();
        match w {
            WarpOp::ShuffleXor { src, dst, mask } => {
                let (elem, len) = self.warp_local(src)?;
                for e in 0..len {
                    let x = self.read_local_elem(src, e)?;
                    let mask = i32_type.const_int(u64::from(mask), false);
                    let y = self.shfl("bfly", x, elem, mask)?;
                    self.write_local_elem(dst, e, y)?;
                }
            }
            WarpOp::ShuffleIdx { src, dst, lane } => {
                let (elem, len) = self.warp_local(src)?;
                let from = self.read_local_elem(lane, 0)?.into_int_value();
                for e in 0..len {
                    let x = self.read_local_elem(src, e)?;
                    let y = self.shfl("idx", x, elem, from)?;
                    self.write_local_elem(dst, e, y)?;
                }
            }
            WarpOp::Reduce { op, local } => {
                let (elem, len) = self.warp_local(local)?;
                let lane = self.special(kvq_ir::ir::Special::LaneId)?;
                for e in 0..len {
                    let mut x = self.read_local_elem(local, e)?;
                    for step in REDUCE_STEPS {
                        let s = i32_type.const_int(u64::from(step), false);
                        let y = self.shfl("bfly", x, elem, s)?;
                        let bit = self.b.build_and(lane, s, "bit")?;
                        let upper = self.b.build_int_compare(
                            IntPredicate::NE,
                            bit,
                            i32_type.const_zero(),
                            "upper",
                        )?;
                        let lo = self.b.build_select(upper, y, x, "lo")?;
                        let hi = self.b.build_select(upper, x, y, "hi")?;
                        x = self.binary(op.binary(), lo, hi, Type::Scalar(elem))?;
                    }
                    self.write_local_elem(local, e, x)?;
                }
            }
        }
        Ok(())
    }

    /// `shfl.sync.KIND.b32` of `x` (an element of `elem`) with lane operand `b`.
    fn shfl(
        &self,
        kind: &str,
        x: BasicValueEnum<'ctx>,
        elem: ScalarType,
        b: IntValue<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let i32_type = self.ctx.i32_type();
        let word: IntValue = match elem {
            ScalarType::F32 => self.b.build_bit_cast(x, i32_type, "word")?.into_int_value(),
            ScalarType::U8 => self
                .b
                .build_int_z_extend(x.into_int_value(), i32_type, "word")?,
            _ => x.into_int_value(),
        };
        let all = i32_type.const_int(u64::from(u32::MAX), false);
        let clamp = i32_type.const_int(0x1f, false);
        let name = format!("llvm.nvvm.shfl.sync.{kind}.i32");
        let args = [all.into(), word.into(), b.into(), clamp.into()];
        let got = self
            .call(&name, Some(i32_type.into()), &args)?
            .into_int_value();
        Ok(match elem {
            ScalarType::F32 => self.b.build_bit_cast(got, self.ctx.f32_type(), "f")?,
            ScalarType::U8 => self
                .b
                .build_int_truncate(got, self.ctx.i8_type(), "byte")?
                .into(),
            _ => got.into(),
        })
    }

    /// Host: the collective for every warp of the block, between two thread loops.
    pub(super) fn host_warp(&mut self, w: WarpOp) -> R<()> {
        let i32_type = self.ctx.i32_type();
        let local = match w {
            WarpOp::ShuffleXor { src, .. } | WarpOp::ShuffleIdx { src, .. } => src,
            WarpOp::Reduce { local, .. } => local,
        };
        let (elem, len) = self.warp_local(local)?;
        let scratch_ty = memory_type(self.ctx, elem).array_type(WARP_SIZE);
        let a = self.entry_alloca(scratch_ty.into(), "warp_a")?;
        let b = self.entry_alloca(scratch_ty.into(), "warp_b")?;
        let warps = i32_type.const_int(u64::from(self.kernel.block_size / WARP_SIZE), false);
        let zero = i32_type.const_zero();
        let elems = i32_type.const_int(u64::from(len), false);
        self.counted_loop(zero, warps, 1, "warp", |this, warp| {
            let size = i32_type.const_int(u64::from(WARP_SIZE), false);
            let first = this.b.build_int_mul(warp, size, "first")?;
            // A loop over the elements, not unrolled code: host compile time stays small.
            this.counted_loop(zero, elems, 1, "elem", |this, e| {
                // Gather: a[lane] = local[e] of thread first + lane.
                this.lanes(first, |this, lane| {
                    let x = this.read_local_at(local, e)?;
                    this.scratch_store(a, elem, lane, x)
                })?;
                match w {
                    WarpOp::ShuffleXor { dst, mask, .. } => this.lanes(first, |this, lane| {
                        let mask = i32_type.const_int(u64::from(mask), false);
                        let from = this.b.build_xor(lane, mask, "from")?;
                        let x = this.scratch_load(a, elem, from)?;
                        this.write_local_at(dst, e, x)
                    })?,
                    WarpOp::ShuffleIdx { dst, lane: l, .. } => {
                        this.lanes(first, |this, lane| {
                            let _ = lane;
                            let want = this.read_local_elem(l, 0)?.into_int_value();
                            let from = this.b.build_and(
                                want,
                                i32_type.const_int(u64::from(WARP_SIZE - 1), false),
                                "from",
                            )?;
                            let x = this.scratch_load(a, elem, from)?;
                            this.write_local_at(dst, e, x)
                        })?
                    }
                    WarpOp::Reduce { op, .. } => {
                        for step in REDUCE_STEPS {
                            let s = i32_type.const_int(u64::from(step), false);
                            let not_s = i32_type.const_int(u64::from(!step), false);
                            this.lane_loop(|this, lane| {
                                let lo = this.b.build_and(lane, not_s, "lo")?;
                                let hi = this.b.build_or(lane, s, "hi")?;
                                let x = this.scratch_load(a, elem, lo)?;
                                let y = this.scratch_load(a, elem, hi)?;
                                let r = this.binary(op.binary(), x, y, Type::Scalar(elem))?;
                                this.scratch_store(b, elem, lane, r)
                            })?;
                            this.lane_loop(|this, lane| {
                                let x = this.scratch_load(b, elem, lane)?;
                                this.scratch_store(a, elem, lane, x)
                            })?;
                        }
                        this.lanes(first, |this, lane| {
                            let x = this.scratch_load(a, elem, lane)?;
                            this.write_local_at(local, e, x)
                        })?;
                    }
                }
                Ok(())
            })
        })?;
        self.tid = None;
        Ok(())
    }

    /// Host: `body(lane)` for the 32 lanes of the warp starting at thread `first`, with the
    /// current thread set to `first + lane`.
    fn lanes(
        &mut self,
        first: IntValue<'ctx>,
        body: impl Fn(&mut Self, IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        self.lane_loop(|this, lane| {
            this.tid = Some(this.b.build_int_add(first, lane, "tid")?);
            body(this, lane)
        })
    }

    /// Host: `body(lane)` for lanes 0..32.
    fn lane_loop(&mut self, body: impl Fn(&mut Self, IntValue<'ctx>) -> R<()>) -> R<()> {
        let i32_type = self.ctx.i32_type();
        let size = i32_type.const_int(u64::from(WARP_SIZE), false);
        self.counted_loop(i32_type.const_zero(), size, 1, "lane", |this, lane| {
            body(this, lane)
        })
    }

    fn scratch_load(
        &self,
        scratch: PointerValue<'ctx>,
        elem: ScalarType,
        lane: IntValue<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let lane = self
            .b
            .build_int_z_extend(lane, self.ctx.i64_type(), "lane")?;
        let ptr = self.gep(scratch, elem, lane)?;
        self.load(ptr, elem, 1, elem.size() as u32)
    }

    fn scratch_store(
        &self,
        scratch: PointerValue<'ctx>,
        elem: ScalarType,
        lane: IntValue<'ctx>,
        x: BasicValueEnum<'ctx>,
    ) -> R<()> {
        let lane = self
            .b
            .build_int_z_extend(lane, self.ctx.i64_type(), "lane")?;
        let ptr = self.gep(scratch, elem, lane)?;
        self.store(ptr, elem, x, elem.size() as u32)
    }
}
