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
use kvq_ir::ir::{
    mma_a_at, mma_acc_at, mma_b_at, ScalarType, Type, WarpOp, MMA_ACC_LEN, MMA_A_LEN, MMA_B_LEN,
    MMA_K, MMA_M, MMA_N, REDUCE_STEPS, WARP_SIZE,
};

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
            WarpOp::Mma { a, b, acc } => self.ptx_mma(a, b, acc)?,
        }
        Ok(())
    }

    /// NVPTX: `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` on the lanes' fragments, each
    /// pair of F16 elements one `.f16x2` register (the lower element in the low half).
    fn ptx_mma(&mut self, a: u32, b: u32, acc: u32) -> R<()> {
        let f32_type = self.ctx.f32_type();
        let pairs = |this: &Self, local: u32, len: u32| -> R<Vec<BasicValueEnum<'ctx>>> {
            let pair_type = this.ctx.f16_type().vec_type(2);
            (0..len / 2)
                .map(|p| {
                    let mut v = pair_type.get_undef();
                    for h in 0..2u32 {
                        let x = this.read_local_elem(local, 2 * p + h)?;
                        let at = this.ctx.i32_type().const_int(u64::from(h), false);
                        v = this.b.build_insert_element(v, x, at, "half")?;
                    }
                    Ok(v.into())
                })
                .collect()
        };
        let mut args = pairs(self, a, MMA_A_LEN)?;
        args.extend(pairs(self, b, MMA_B_LEN)?);
        for i in 0..MMA_ACC_LEN {
            args.push(self.read_local_elem(acc, i)?);
        }
        let ret = self
            .ctx
            .struct_type(&[f32_type.into(); MMA_ACC_LEN as usize], false);
        let d = self
            .call(
                "llvm.nvvm.mma.m16n8k16.row.col.f32.f32",
                Some(ret.into()),
                &args,
            )?
            .into_struct_value();
        for i in 0..MMA_ACC_LEN {
            let x = self.b.build_extract_value(d, i, "d")?;
            self.write_local_elem(acc, i, x)?;
        }
        Ok(())
    }

    /// Host: [`WarpOp::Mma`] for every warp of the block, between two thread loops: the lanes'
    /// fragments are gathered into the warp's matrices `A` (16 x 16) and `B` (16 x 8), widened to
    /// f32, and each lane's element of `D` is its `C` plus the products in increasing `k`, as
    /// the IR defines it. Element `i` of lane `l` (`g = l / 4`, `t = l % 4`) sits at
    /// `(g, 2t) + mma_a_at(0, i)` of `A`, `(2t, g) + mma_b_at(0, i)` of `B` and
    /// `(g, 2t) + mma_acc_at(0, i)` of `D`: kvq-ir's layouts, taken apart (its tests check it).
    fn host_mma(&mut self, a: u32, b: u32, acc: u32) -> R<()> {
        let i32_type = self.ctx.i32_type();
        let f32_type = self.ctx.f32_type();
        let c = |v: u32| i32_type.const_int(u64::from(v), false);
        let ma = self.entry_alloca(f32_type.array_type(MMA_M * MMA_K).into(), "mma_a")?;
        let mb = self.entry_alloca(f32_type.array_type(MMA_K * MMA_N).into(), "mma_b")?;
        // `(g, 2t)` of the current lane.
        let group = |this: &Self, lane: IntValue<'ctx>| -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
            let g = this.b.build_right_shift(lane, c(2), false, "g")?;
            let t = this.b.build_and(lane, c(3), "t")?;
            Ok((g, this.b.build_left_shift(t, c(1), "t2")?))
        };
        let warps = c(self.kernel.block_size / WARP_SIZE);
        self.counted_loop(c(0), warps, 1, "warp", |this, warp| {
            let first = this.b.build_int_mul(warp, c(WARP_SIZE), "first")?;
            this.lanes(first, |this, lane| {
                let (g, t2) = group(this, lane)?;
                let fragments = [
                    (
                        a,
                        ma,
                        MMA_A_LEN,
                        MMA_K,
                        (g, t2),
                        mma_a_at as fn(u32, u32) -> (u32, u32),
                    ),
                    (b, mb, MMA_B_LEN, MMA_N, (t2, g), mma_b_at),
                ];
                for (local, matrix, len, cols, (row0, col0), layout) in fragments {
                    for i in 0..len {
                        let (dr, dc) = layout(0, i);
                        let row = this.b.build_int_add(row0, c(dr), "r")?;
                        let col = this.b.build_int_add(col0, c(dc), "c")?;
                        let at = this.b.build_int_mul(row, c(cols), "row")?;
                        let at = this.b.build_int_add(at, col, "at")?;
                        let x = this.read_local_elem(local, i)?.into_float_value();
                        let x = this.b.build_float_ext(x, f32_type, "wide")?;
                        this.scratch_store(matrix, ScalarType::F32, at, x.into())?;
                    }
                }
                Ok(())
            })?;
            this.lanes(first, |this, lane| {
                let (g, t2) = group(this, lane)?;
                for i in 0..MMA_ACC_LEN {
                    let (dr, dc) = mma_acc_at(0, i);
                    let row = this.b.build_int_add(g, c(dr), "r")?;
                    let col = this.b.build_int_add(t2, c(dc), "c")?;
                    let row_at = this.b.build_int_mul(row, c(MMA_K), "ra")?;
                    let mut d = this.read_local_elem(acc, i)?.into_float_value();
                    for k in 0..MMA_K {
                        let ai = this.b.build_int_add(row_at, c(k), "ai")?;
                        let bi = this.b.build_int_add(col, c(k * MMA_N), "bi")?;
                        let x = this
                            .scratch_load(ma, ScalarType::F32, ai)?
                            .into_float_value();
                        let y = this
                            .scratch_load(mb, ScalarType::F32, bi)?
                            .into_float_value();
                        let p = this.b.build_float_mul(x, y, "p")?;
                        d = this.b.build_float_add(d, p, "d")?;
                    }
                    this.write_local_elem(acc, i, d.into())?;
                }
                Ok(())
            })
        })?;
        self.tid = None;
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
            WarpOp::Mma { a, b, acc } => return self.host_mma(a, b, acc),
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
                    // Returned above: it takes three locals of its own.
                    WarpOp::Mma { .. } => {}
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
