//! Exact rank selection: `SelectRank` finds the exact `rank`-th smallest (0-based) of the strided
//! elements converted to f32, in f32's total order (-0 < +0), through the order-preserving u32
//! key `bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000)`: the answer is the f32 whose key is the
//! smallest K with `#{i : key(x_i) <= K} >= rank + 1`. Two ways of finding K, the same K:
//! - NVPTX (registers only): a bisection of `[0, 2^32)` in exactly 32 halving steps, each a
//!   counting pass over the elements.
//! - Host, runs of at least `RADIX_MIN` elements (shorter ones bisect as on NVPTX): a radix
//!   selection over the key's digits, most significant first. Each pass
//!   histograms the digit of the elements whose higher bits equal the prefix found so far (a
//!   stack array of 2^11 counts; the other elements go to one spare bin, so that the loop has no
//!   branch), then takes the digit whose bin holds the wanted rank and subtracts the elements of
//!   the bins below it. f16 and bf16 elements widened to f32 have their low 13 and 16 key bits
//!   all equal (zeros when the key's top bit is set, ones when it is not: see
//!   `kvq_ir::lower::block_select`), so two passes over the 19 or 16 bits above them decide the
//!   key; other elements take three passes of 11, 11 and 10 bits. Counts are integers, so
//!   neither way depends on an order.

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::module::Linkage;
use inkwell::values::{BasicMetadataValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use kvq_ir::ir::{Memory, ScalarType};

use super::lower::{Fail, Lower, R};

/// The host's radix passes for elements of type `elem`: (shift, digit bits), most significant
/// digit first, and the key bits below the last digit (all equal:
/// [`ScalarType::constant_key_bits`]).
fn radix_passes(elem: ScalarType) -> (&'static [(u32, u32)], u32) {
    let passes: &'static [(u32, u32)] = match elem {
        ScalarType::F16 => &[(21, 11), (13, 8)],
        ScalarType::BF16 => &[(24, 8), (16, 8)],
        _ => &[(21, 11), (10, 11), (0, 10)],
    };
    (passes, elem.constant_key_bits())
}

/// The shortest run the host selects by radix (shorter ones bisect).
const RADIX_MIN: u32 = 512;

/// Bins of the host's histogram: 2^11 digits and the spare bin of the elements outside the
/// prefix.
const RADIX_BINS: u32 = (1 << 11) + 1;

/// The elements `SelectRank` selects from: `mem[base + i * stride]` for `i < count`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'ctx> {
    pub mem: Memory,
    pub base: IntValue<'ctx>,
    pub stride: IntValue<'ctx>,
    pub count: IntValue<'ctx>,
}

/// A strided run with its memory resolved: elements of type `elem` from `ptr`.
#[derive(Clone, Copy)]
struct Run<'ctx> {
    ptr: PointerValue<'ctx>,
    elem: ScalarType,
    base: IntValue<'ctx>,
    stride: IntValue<'ctx>,
    count: IntValue<'ctx>,
}

impl<'ctx> Lower<'_, 'ctx> {
    /// `SelectRank` (see the module documentation).
    pub(super) fn select_rank(
        &mut self,
        run: Strided<'ctx>,
        rank: IntValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        let (ptr, elem) = self.memory(run.mem)?;
        let run = Run {
            ptr,
            elem,
            base: run.base,
            stride: run.stride,
            count: run.count,
        };
        if self.ptx {
            return self.select_rank_bisect(run, rank);
        }
        // Runs of fewer than RADIX_MIN elements bisect: 32 passes over a few elements cost
        // less than clearing and scanning the histogram twice. The radix selection is one
        // function per element type, called from every site (a kernel may select at hundreds
        // of sites; inlined copies made its compile time ten times longer).
        let i32_type = self.ctx.i32_type();
        let min = i32_type.const_int(u64::from(RADIX_MIN), false);
        let long = self
            .b
            .build_int_compare(IntPredicate::UGE, run.count, min, "long")?;
        let (radix, bisect, join) = (
            self.append("rank.radix"),
            self.append("rank.bisect"),
            self.append("rank.join"),
        );
        self.b.build_conditional_branch(long, radix, bisect)?;
        self.b.position_at_end(radix);
        let helper = self.radix_function(elem)?;
        let args: [BasicMetadataValueEnum<'ctx>; 5] = [
            run.ptr.into(),
            run.base.into(),
            run.stride.into(),
            run.count.into(),
            rank.into(),
        ];
        let by_radix = self
            .b
            .build_call(helper, &args, "by.radix")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| Fail::Llvm("the radix selection returns no value".into()))?
            .into_float_value();
        let radix_end = self.current()?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(bisect);
        let by_bisection = self.select_rank_bisect(run, rank)?;
        let bisect_end = self.current()?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        let ranked = self.b.build_phi(self.ctx.f32_type(), "ranked")?;
        ranked.add_incoming(&[(&by_radix, radix_end), (&by_bisection, bisect_end)]);
        Ok(ranked.as_basic_value().into_float_value())
    }

    /// The module's radix selection over elements of type `elem`, built on first use:
    /// `f32 (ptr, base, stride, count, rank)`, internal and never inlined.
    fn radix_function(&mut self, elem: ScalarType) -> R<FunctionValue<'ctx>> {
        let name = format!("kvq.rank.radix.{}", elem.name());
        if let Some(f) = self.module.get_function(&name) {
            return Ok(f);
        }
        let i32_type = self.ctx.i32_type();
        let ptr_type = self.ctx.ptr_type(AddressSpace::default());
        let ty = self.ctx.f32_type().fn_type(
            &[
                ptr_type.into(),
                i32_type.into(),
                i32_type.into(),
                i32_type.into(),
                i32_type.into(),
            ],
            false,
        );
        let f = self.module.add_function(&name, ty, Some(Linkage::Internal));
        let noinline = self
            .ctx
            .create_enum_attribute(Attribute::get_named_enum_kind_id("noinline"), 0);
        f.add_attribute(AttributeLoc::Function, noinline);
        let param = |i: u32| {
            f.get_nth_param(i)
                .ok_or_else(|| Fail::Llvm(format!("{name} has no parameter {i}")))
        };
        let run = Run {
            ptr: param(0)?.into_pointer_value(),
            elem,
            base: param(1)?.into_int_value(),
            stride: param(2)?.into_int_value(),
            count: param(3)?.into_int_value(),
        };
        let rank = param(4)?.into_int_value();
        self.in_function(f, |this| {
            let x = this.select_rank_radix(run, rank)?;
            this.b.build_return(Some(&x))?;
            Ok(())
        })?;
        Ok(f)
    }

    /// The order key of element `i` of the strided run.
    fn rank_key(&self, run: Run<'ctx>, i: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let (memory, elem) = (run.ptr, run.elem);
        let b = &self.b;
        let offset = b.build_int_mul(i, run.stride, "offset")?;
        let index = b.build_int_add(run.base, offset, "index")?;
        let index = b.build_int_z_extend(index, self.ctx.i64_type(), "index")?;
        let x = self.load(self.gep(memory, elem, index)?, elem, 1, elem.size() as u32)?;
        let x = self.to_f32(x, elem)?;
        let bits = b
            .build_bit_cast(x, self.ctx.i32_type(), "bits")?
            .into_int_value();
        self.bits_to_key(bits)
    }

    /// The host's radix selection (see the module documentation).
    fn select_rank_radix(&mut self, run: Run<'ctx>, rank: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let i32_type = self.ctx.i32_type();
        let c = |v: u32| i32_type.const_int(u64::from(v), false);
        let hist_type = i32_type.array_type(RADIX_BINS);
        let hist = self.entry_alloca(hist_type.into(), "rank.hist")?;
        let below = self.entry_alloca(i32_type.into(), "rank.below")?;
        let digit = self.entry_alloca(i32_type.into(), "rank.digit")?;
        let cum = self.entry_alloca(i32_type.into(), "rank.cum")?;
        let spare = c(RADIX_BINS - 1);
        let bin_ptr = |this: &Self, bin: IntValue<'ctx>| -> R<_> {
            // SAFETY: building an inbounds GEP is safe for the compiler; the generated code
            // stays in bounds because every `bin` passed below is at most RADIX_BINS - 1.
            let ptr = unsafe {
                this.b
                    .build_in_bounds_gep(hist_type, hist, &[c(0), bin], "bin")?
            };
            Ok(ptr)
        };
        // The wanted rank within the prefix's elements, the prefix and the mask of its bits.
        let (passes, constant) = radix_passes(run.elem);
        let (mut want, mut prefix, mut mask) = (rank, c(0), c(0));
        for &(shift, width) in passes {
            let digits = c((1 << width) - 1);
            let bytes = self
                .ctx
                .i64_type()
                .const_int(u64::from(RADIX_BINS) * 4, false);
            self.b
                .build_memset(hist, 16, self.ctx.i8_type().const_zero(), bytes)?;
            let zero = c(0);
            self.counted_loop(zero, run.count, 1, "rank.elem", |this, i| {
                let key = this.rank_key(run, i)?;
                let b = &this.b;
                let high = b.build_and(key, mask, "high")?;
                let inside = b.build_int_compare(IntPredicate::EQ, high, prefix, "inside")?;
                let shifted = b.build_right_shift(key, c(shift), false, "shifted")?;
                let d = b.build_and(shifted, digits, "digit")?;
                let bin = b.build_select(inside, d, spare, "bin")?.into_int_value();
                let ptr = bin_ptr(this, bin)?;
                let n = this.b.build_load(i32_type, ptr, "n")?.into_int_value();
                let n = this.b.build_int_add(n, c(1), "n.next")?;
                this.b.build_store(ptr, n)?;
                Ok(())
            })?;
            // digit = #{bins whose cumulative count is at most want}; below = that cumulative
            // count (bins are a prefix of the digits because cumulative counts only grow).
            for var in [below, digit, cum] {
                self.b.build_store(var, c(0))?;
            }
            self.counted_loop(c(0), c(1 << width), 1, "rank.scan", |this, d| {
                let b = &this.b;
                let n = b
                    .build_load(i32_type, bin_ptr(this, d)?, "n")?
                    .into_int_value();
                let total = b.build_load(i32_type, cum, "cum")?.into_int_value();
                let total = b.build_int_add(total, n, "cum.next")?;
                b.build_store(cum, total)?;
                let le = b.build_int_compare(IntPredicate::ULE, total, want, "le")?;
                let old = b.build_load(i32_type, below, "below")?.into_int_value();
                let new = b.build_select(le, total, old, "below.next")?;
                b.build_store(below, new)?;
                let k = b.build_load(i32_type, digit, "digit")?.into_int_value();
                let one = b.build_int_z_extend(le, i32_type, "one")?;
                let k = b.build_int_add(k, one, "digit.next")?;
                b.build_store(digit, k)?;
                Ok(())
            })?;
            let b = &self.b;
            let taken = b.build_load(i32_type, below, "below")?.into_int_value();
            want = b.build_int_sub(want, taken, "want")?;
            let d = b.build_load(i32_type, digit, "digit")?.into_int_value();
            let placed = b.build_left_shift(d, c(shift), "placed")?;
            prefix = b.build_or(prefix, placed, "prefix")?;
            mask = b.build_or(
                mask,
                c(((1u64 << (shift + width)) - (1u64 << shift)) as u32),
                "mask",
            )?;
        }
        if constant > 0 {
            let b = &self.b;
            let positive =
                b.build_int_compare(IntPredicate::UGE, prefix, c(0x8000_0000), "positive")?;
            let ones = b.build_or(prefix, c((1 << constant) - 1), "ones")?;
            prefix = b
                .build_select(positive, prefix, ones, "key")?
                .into_int_value();
        }
        let bits = self.key_to_bits(prefix)?;
        Ok(self
            .b
            .build_bit_cast(bits, self.ctx.f32_type(), "ranked")?
            .into_float_value())
    }

    fn to_f32(
        &self,
        x: inkwell::values::BasicValueEnum<'ctx>,
        elem: ScalarType,
    ) -> R<FloatValue<'ctx>> {
        let f32_type = self.ctx.f32_type();
        Ok(match elem {
            ScalarType::F64 => self
                .b
                .build_float_trunc(x.into_float_value(), f32_type, "f32")?,
            ScalarType::F16 | ScalarType::BF16 | ScalarType::F32 => self.widen(x, elem)?,
            _ => self
                .b
                .build_unsigned_int_to_float(x.into_int_value(), f32_type, "f32")?,
        })
    }

    /// The bisection (registers only; the NVPTX lowering).
    fn select_rank_bisect(&self, run: Run<'ctx>, rank: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let c = |v: u64| i32_type.const_int(v, false);
        let wanted = b.build_int_add(rank, c(1), "wanted")?;
        let pre = self.current()?;
        let step_head = self.append("rank.step");
        let step_body = self.append("rank.mid");
        let count_head = self.append("rank.count");
        let count_body = self.append("rank.elem");
        let step_latch = self.append("rank.halve");
        let done = self.append("rank.done");
        b.build_unconditional_branch(step_head)?;

        // for step in 0..32, with the key interval [lo, hi]
        b.position_at_end(step_head);
        let step = b.build_phi(i32_type, "step")?;
        let lo = b.build_phi(i32_type, "lo")?;
        let hi = b.build_phi(i32_type, "hi")?;
        step.add_incoming(&[(&c(0), pre)]);
        lo.add_incoming(&[(&c(0), pre)]);
        hi.add_incoming(&[(&c(u64::from(u32::MAX)), pre)]);
        let (step_v, lo_v, hi_v) = (
            step.as_basic_value().into_int_value(),
            lo.as_basic_value().into_int_value(),
            hi.as_basic_value().into_int_value(),
        );
        let more = b.build_int_compare(IntPredicate::ULT, step_v, c(32), "more")?;
        b.build_conditional_branch(more, step_body, done)?;

        b.position_at_end(step_body);
        let width = b.build_int_sub(hi_v, lo_v, "width")?;
        let half = b.build_right_shift(width, c(1), false, "half")?;
        let mid = b.build_int_add(lo_v, half, "mid")?;
        b.build_unconditional_branch(count_head)?;

        // n = #{i < count : key(x_i) <= mid}
        b.position_at_end(count_head);
        let i = b.build_phi(i32_type, "i")?;
        let n = b.build_phi(i32_type, "n")?;
        i.add_incoming(&[(&c(0), step_body)]);
        n.add_incoming(&[(&c(0), step_body)]);
        let (i_v, n_v) = (
            i.as_basic_value().into_int_value(),
            n.as_basic_value().into_int_value(),
        );
        let inside = b.build_int_compare(IntPredicate::ULT, i_v, run.count, "inside")?;
        b.build_conditional_branch(inside, count_body, step_latch)?;

        b.position_at_end(count_body);
        let key = self.rank_key(run, i_v)?;
        let below = b.build_int_compare(IntPredicate::ULE, key, mid, "below")?;
        let one = b.build_int_z_extend(below, i32_type, "one")?;
        let n_next = b.build_int_add(n_v, one, "n.next")?;
        let i_next = b.build_int_add(i_v, c(1), "i.next")?;
        let count_end = self.current()?;
        b.build_unconditional_branch(count_head)?;
        i.add_incoming(&[(&i_next, count_end)]);
        n.add_incoming(&[(&n_next, count_end)]);

        // Keep the half that holds the answer.
        b.position_at_end(step_latch);
        let enough = b.build_int_compare(IntPredicate::UGE, n_v, wanted, "enough")?;
        let above = b.build_int_add(mid, c(1), "above")?;
        let lo_next = b.build_select(enough, lo_v, above, "lo.next")?;
        let hi_next = b.build_select(enough, mid, hi_v, "hi.next")?;
        let step_next = b.build_int_add(step_v, c(1), "step.next")?;
        b.build_unconditional_branch(step_head)?;
        step.add_incoming(&[(&step_next, step_latch)]);
        lo.add_incoming(&[(&lo_next, step_latch)]);
        hi.add_incoming(&[(&hi_next, step_latch)]);

        b.position_at_end(done);
        let bits = self.key_to_bits(lo_v)?;
        Ok(b.build_bit_cast(bits, self.ctx.f32_type(), "ranked")?
            .into_float_value())
    }

    /// The order-preserving key of f32 bits: bits ^ (sign ? 0xFFFF_FFFF : 0x8000_0000).
    fn bits_to_key(&self, bits: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let sign = b.build_right_shift(bits, i32_type.const_int(31, false), true, "sign")?;
        let mask = b.build_or(sign, i32_type.const_int(0x8000_0000, false), "mask")?;
        Ok(b.build_xor(bits, mask, "key")?)
    }

    /// The f32 bits of an order key (inverse of [`Self::bits_to_key`]).
    fn key_to_bits(&self, key: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let b = &self.b;
        let i32_type = self.ctx.i32_type();
        let positive = b.build_int_compare(
            IntPredicate::UGE,
            key,
            i32_type.const_int(0x8000_0000, false),
            "positive",
        )?;
        let flipped = b.build_xor(key, i32_type.const_int(0x8000_0000, false), "flip")?;
        let negated = b.build_not(key, "negated")?;
        Ok(b.build_select(positive, flipped, negated, "bits")?
            .into_int_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each type's digits cover the 32-bit key from the top down to its constant bits, with no
    /// gap or overlap, and fit the histogram.
    #[test]
    fn radix_passes_tile_the_key_above_its_constant_bits() {
        for elem in [ScalarType::F16, ScalarType::BF16, ScalarType::F32] {
            let (passes, constant) = radix_passes(elem);
            let mut top = 32;
            for &(shift, bits) in passes {
                assert_eq!(shift + bits, top, "{elem:?}: a gap or overlap at bit {top}");
                assert!((1 << bits) < RADIX_BINS, "{elem:?}: {bits}-bit digit");
                top = shift;
            }
            assert_eq!(top, constant, "{elem:?}");
        }
    }
}
