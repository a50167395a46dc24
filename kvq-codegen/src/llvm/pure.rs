//! Pure operations (no memory, no control flow), lowered from their operands' values, and the
//! host's recomputation of uniform values in regions after the one that defined them.

use std::cell::RefCell;
use std::collections::HashMap;

use inkwell::types::BasicTypeEnum;
use inkwell::values::BasicValueEnum;
use kvq_ir::ir::{Op, Type, Value};

use super::lower::{Fail, Lower, R};
use super::memory::vector_type;
use super::ops::scalar_type;

/// Deepest chain of uniform operations the host recomputes.
const MAX_REMAT_DEPTH: u32 = 256;

impl<'ctx> Lower<'_, 'ctx> {
    /// Lowers a pure `op`, taking operand values from `val`.
    pub(super) fn pure(
        &self,
        op: &Op,
        val: &dyn Fn(Value) -> R<BasicValueEnum<'ctx>>,
    ) -> R<BasicValueEnum<'ctx>> {
        Ok(match op {
            Op::Const(c) => self.constant(*c)?,
            Op::ScalarParam(i) => self.params[*i as usize],
            Op::Special(s) => self.special(*s)?.into(),
            Op::Unary(op, a) => self.unary(*op, val(*a)?, self.ty(*a)?)?,
            Op::Binary(op, a, b) => self.binary(*op, val(*a)?, val(*b)?, self.ty(*a)?)?,
            Op::Cmp(op, a, b) => self.compare(*op, val(*a)?, val(*b)?, self.ty(*a)?)?,
            Op::Select {
                cond,
                if_true,
                if_false,
            } => self.b.build_select(
                val(*cond)?.into_int_value(),
                val(*if_true)?,
                val(*if_false)?,
                "select",
            )?,
            Op::Convert(to, a) => self.convert(*to, val(*a)?, self.ty(*a)?)?,
            Op::Bitcast(to, a) => self
                .b
                .build_bit_cast(val(*a)?, self.llvm_type(*to), "bits")?,
            Op::Extract(vector, lane) => {
                let lane = self.ctx.i32_type().const_int(u64::from(*lane), false);
                let vector = val(*vector)?.into_vector_value();
                self.b.build_extract_element(vector, lane, "lane")?
            }
            Op::Vector(items) => {
                let first = items
                    .first()
                    .ok_or_else(|| Fail::Llvm("empty vector".into()))?;
                let elem = scalar_type(self.ctx, self.ty(*first)?.elem());
                let mut acc = vector_type(elem, items.len() as u8)
                    .into_vector_type()
                    .get_poison();
                for (lane, &item) in items.iter().enumerate() {
                    let lane = self.ctx.i32_type().const_int(lane as u64, false);
                    acc = self.b.build_insert_element(acc, val(item)?, lane, "vec")?;
                }
                acc.into()
            }
            other => return Err(Fail::Llvm(format!("{other:?} is not a pure operation"))),
        })
    }

    /// The register type of an IR type.
    pub(super) fn llvm_type(&self, ty: Type) -> BasicTypeEnum<'ctx> {
        match ty {
            Type::Scalar(s) => scalar_type(self.ctx, s),
            Type::Vector(s, lanes) => vector_type(scalar_type(self.ctx, s), lanes),
        }
    }

    /// Host: the uniform value `v`, recomputed at the builder's position from constants,
    /// parameters, block coordinates and block-uniform loop counters.
    pub(super) fn remat(&self, v: Value) -> R<BasicValueEnum<'ctx>> {
        let memo = RefCell::new(HashMap::new());
        self.remat_with(v, &memo, 0)
    }

    fn remat_with(
        &self,
        v: Value,
        memo: &RefCell<HashMap<Value, BasicValueEnum<'ctx>>>,
        depth: u32,
    ) -> R<BasicValueEnum<'ctx>> {
        if let Some(x) = self.block_vals.get(v.index()).copied().flatten() {
            return Ok(x);
        }
        if let Some(x) = memo.borrow().get(&v) {
            return Ok(*x);
        }
        if depth > MAX_REMAT_DEPTH || !self.info.sync.is_uniform(v) {
            return Err(Fail::Unsupported(format!(
                "value {v:?} is used in a later region but cannot be recomputed there"
            )));
        }
        let op = &self.kernel.insts[v].op;
        let x = match op {
            // A uniform load reads a read-only buffer: loading again gives the same bits.
            Op::Load {
                mem,
                index,
                lanes,
                aligned,
            } => {
                let i = self.remat_with(*index, memo, depth + 1)?.into_int_value();
                self.load_op(*mem, i, *lanes, *aligned)?
            }
            _ => self.pure(op, &|o| self.remat_with(o, memo, depth + 1))?,
        };
        memo.borrow_mut().insert(v, x);
        Ok(x)
    }
}
