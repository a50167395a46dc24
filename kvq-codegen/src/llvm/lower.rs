//! Instruction-level lowering: values, control flow and execution coordinates (memory is in
//! [`super::memory`], arithmetic in [`super::ops`]).
//!
//! - Each instruction with a result becomes one LLVM value, kept in `vals` by its index.
//!   Structured control flow is emitted in program order, so an instruction always dominates
//!   its uses (the verifier guarantees uses follow definitions in enclosing blocks).
//! - `Loop { start, end, step }` is `i = start; while i < end { body; i += step }`, leaving when
//!   `i + step` wraps around (Rust's `(start..end).step_by(step)`); `If` is a branch.
//! - Host: blocks `begin..end` are a loop; inside, each barrier-separated region of the
//!   top-level block is a loop over the block's threads, with `ThreadId`/`BlockId`/`GridSize`
//!   the loop counters and the grid argument. NVPTX: the special registers, and barriers are
//!   `llvm.nvvm.barrier0`.

use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::{BasicType, BasicTypeEnum};
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::IntPredicate;
use kvq_ir::ir::{Block, Kernel, KernelInfo, Op, ScalarType, Special, Type, Value};

use super::memory::allocate;

/// Why lowering stopped; mapped to [`crate::CodegenError`] with the kernel's name.
#[derive(Debug)]
pub(crate) enum Fail {
    /// An LLVM builder call failed, or the IR was inconsistent in a way the verifier excludes.
    Llvm(String),
    /// An operation/type combination this backend does not lower.
    Unsupported(String),
}

impl From<BuilderError> for Fail {
    fn from(e: BuilderError) -> Self {
        Fail::Llvm(e.to_string())
    }
}

pub(super) type R<T> = Result<T, Fail>;

/// Lowers one kernel body into one LLVM function.
pub(super) struct Lower<'a, 'ctx> {
    pub(super) ctx: &'ctx Context,
    pub(super) module: &'a Module<'ctx>,
    pub(super) b: Builder<'ctx>,
    pub(super) kernel: &'a Kernel,
    info: &'a KernelInfo,
    /// True for NVPTX, false for the host.
    pub(super) ptx: bool,
    func: FunctionValue<'ctx>,
    vals: Vec<Option<BasicValueEnum<'ctx>>>,
    pub(super) params: Vec<BasicValueEnum<'ctx>>,
    pub(super) shared: Vec<PointerValue<'ctx>>,
    pub(super) locals: Vec<PointerValue<'ctx>>,
    /// Host only: the current thread, block and the grid size.
    tid: Option<IntValue<'ctx>>,
    bid: Option<IntValue<'ctx>>,
    grid: Option<IntValue<'ctx>>,
}

impl<'a, 'ctx> Lower<'a, 'ctx> {
    /// Positions at a new entry block of `func` and allocates shared arrays and locals.
    pub(super) fn new(
        ctx: &'ctx Context,
        module: &'a Module<'ctx>,
        kernel: &'a Kernel,
        info: &'a KernelInfo,
        func: FunctionValue<'ctx>,
        params: Vec<BasicValueEnum<'ctx>>,
        ptx: bool,
    ) -> R<Self> {
        let b = ctx.create_builder();
        b.position_at_end(ctx.append_basic_block(func, "entry"));
        let (shared, locals) = allocate(ctx, module, &b, kernel, ptx)?;
        Ok(Lower {
            ctx,
            module,
            b,
            kernel,
            info,
            ptx,
            func,
            vals: vec![None; kernel.insts.len()],
            params,
            shared,
            locals,
            tid: None,
            bid: None,
            grid: None,
        })
    }

    /// The PTX kernel: the body as is, after zeroing the thread's locals.
    pub(super) fn emit_ptx(mut self) -> R<()> {
        self.zero_memory()?;
        let kernel = self.kernel;
        self.block(&kernel.body)?;
        self.b.build_return(None)?;
        Ok(())
    }

    /// The host body: blocks `begin..end`, each region a loop over the block's threads.
    pub(super) fn emit_host(mut self, [begin, end, grid]: [IntValue<'ctx>; 3]) -> R<()> {
        self.grid = Some(grid);
        let kernel = self.kernel;
        let regions: Vec<&[Value]> = kernel
            .body
            .0
            .split(|&v| matches!(kernel.insts[v].op, Op::Barrier))
            .collect();
        let threads = self
            .ctx
            .i32_type()
            .const_int(u64::from(kernel.block_size), false);
        let zero = self.ctx.i32_type().const_zero();
        self.counted_loop(begin, end, 1, "block", |this, bid| {
            this.bid = Some(bid);
            this.zero_memory()?;
            for region in &regions {
                this.counted_loop(zero, threads, 1, "thread", |this, tid| {
                    this.tid = Some(tid);
                    region.iter().try_for_each(|&v| this.inst(v))
                })?;
            }
            Ok(())
        })?;
        self.b.build_return(None)?;
        Ok(())
    }

    /// `i = start; while i < end { body(i); i += step }`, stopping if `i + step` wraps.
    pub(super) fn counted_loop(
        &mut self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: u32,
        name: &str,
        body: impl FnOnce(&mut Self, IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        let pre = self.current()?;
        let head = self.append(&format!("{name}.head"));
        let inner = self.append(&format!("{name}.body"));
        let exit = self.append(&format!("{name}.exit"));
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let i = self.b.build_phi(self.ctx.i32_type(), name)?;
        i.add_incoming(&[(&start, pre)]);
        let iv = i.as_basic_value().into_int_value();
        let go = self.b.build_int_compare(IntPredicate::ULT, iv, end, "go")?;
        self.b.build_conditional_branch(go, inner, exit)?;
        self.b.position_at_end(inner);
        body(self, iv)?;
        let step_value = self.ctx.i32_type().const_int(u64::from(step), false);
        let next = self.b.build_int_add(iv, step_value, "next")?;
        let latch = self.current()?;
        if step == 1 {
            // i < end <= u32::MAX, so i + 1 cannot wrap.
            self.b.build_unconditional_branch(head)?;
        } else {
            let wrapped = self
                .b
                .build_int_compare(IntPredicate::ULT, next, iv, "wrapped")?;
            self.b.build_conditional_branch(wrapped, exit, head)?;
        }
        i.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    pub(super) fn current(&self) -> R<BasicBlock<'ctx>> {
        self.b
            .get_insert_block()
            .ok_or_else(|| Fail::Llvm("builder is not positioned".into()))
    }

    pub(super) fn append(&self, name: &str) -> BasicBlock<'ctx> {
        self.ctx.append_basic_block(self.func, name)
    }

    fn block(&mut self, block: &Block) -> R<()> {
        block.0.iter().try_for_each(|&v| self.inst(v))
    }

    /// The lowered value of `v`.
    pub(super) fn val(&self, v: Value) -> R<BasicValueEnum<'ctx>> {
        self.vals
            .get(v.index())
            .copied()
            .flatten()
            .ok_or_else(|| Fail::Llvm(format!("value {v:?} used before its definition")))
    }

    /// The IR type of `v` (from the verifier).
    pub(super) fn ty(&self, v: Value) -> R<Type> {
        self.info
            .types
            .get(v.index())
            .copied()
            .flatten()
            .ok_or_else(|| Fail::Llvm(format!("value {v:?} has no type")))
    }

    fn int(&self, v: Value) -> R<IntValue<'ctx>> {
        Ok(self.val(v)?.into_int_value())
    }

    fn inst(&mut self, v: Value) -> R<()> {
        let kernel = self.kernel;
        let result: Option<BasicValueEnum<'ctx>> = match &kernel.insts[v].op {
            Op::Const(c) => Some(self.constant(*c)?),
            Op::ScalarParam(i) => Some(self.params[*i as usize]),
            Op::Special(s) => Some(self.special(*s)?.into()),
            Op::Unary(op, a) => Some(self.unary(*op, self.val(*a)?, self.ty(*a)?)?),
            Op::Binary(op, a, b) => {
                Some(self.binary(*op, self.val(*a)?, self.val(*b)?, self.ty(*a)?)?)
            }
            Op::Cmp(op, a, b) => {
                Some(self.compare(*op, self.val(*a)?, self.val(*b)?, self.ty(*a)?)?)
            }
            Op::Select {
                cond,
                if_true,
                if_false,
            } => Some(self.b.build_select(
                self.int(*cond)?,
                self.val(*if_true)?,
                self.val(*if_false)?,
                "select",
            )?),
            Op::Convert(to, a) => Some(self.convert(*to, self.val(*a)?, self.ty(*a)?)?),
            Op::Bitcast(to, a) => {
                let target = match to {
                    ScalarType::U32 => self.ctx.i32_type().as_basic_type_enum(),
                    _ => self.ctx.f32_type().as_basic_type_enum(),
                };
                Some(self.b.build_bit_cast(self.val(*a)?, target, "bits")?)
            }
            Op::Load { mem, index, lanes } => {
                let (ptr, elem) = self.element(*mem, self.int(*index)?)?;
                Some(self.load(ptr, elem, *lanes)?)
            }
            Op::Store { mem, index, value } => {
                let (ptr, elem) = self.element(*mem, self.int(*index)?)?;
                self.store(ptr, elem, self.val(*value)?)?;
                None
            }
            Op::Extract(vector, lane) => {
                let lane = self.ctx.i32_type().const_int(u64::from(*lane), false);
                let vector = self.val(*vector)?.into_vector_value();
                Some(self.b.build_extract_element(vector, lane, "lane")?)
            }
            Op::Vector(items) => Some(self.vector(items)?),
            Op::ReadLocal { local, index } => {
                let (ptr, elem) = self.local(*local, self.int(*index)?)?;
                Some(self.load(ptr, elem, 1)?)
            }
            Op::WriteLocal {
                local,
                index,
                value,
            } => {
                let (ptr, elem) = self.local(*local, self.int(*index)?)?;
                self.store(ptr, elem, self.val(*value)?)?;
                None
            }
            Op::PackBits { codes, bits, order } => {
                let codes = codes.iter().map(|&c| self.int(c)).collect::<R<Vec<_>>>()?;
                Some(self.pack_bits(&codes, *bits, *order)?.into())
            }
            Op::UnpackBits {
                byte,
                lane,
                bits,
                order,
            } => Some(
                self.unpack_bits(self.int(*byte)?, *lane, *bits, *order)?
                    .into(),
            ),
            Op::SelectRank {
                mem,
                base,
                stride,
                count,
                rank,
            } => {
                let [base, stride, count, rank] =
                    [*base, *stride, *count, *rank].map(|x| self.int(x));
                Some(
                    self.select_rank(*mem, base?, stride?, count?, rank?)?
                        .into(),
                )
            }
            Op::Loop {
                start,
                end,
                step,
                body,
            } => {
                let (start, end) = (self.int(*start)?, self.int(*end)?);
                self.counted_loop(start, end, *step, "loop", |this, i| {
                    this.vals[v.index()] = Some(i.into());
                    this.block(body)
                })?;
                None
            }
            Op::If {
                cond,
                then,
                otherwise,
            } => {
                let cond = self.int(*cond)?;
                let (t, e, merge) = (
                    self.append("then"),
                    self.append("else"),
                    self.append("endif"),
                );
                self.b.build_conditional_branch(cond, t, e)?;
                for (bb, block) in [(t, then), (e, otherwise)] {
                    self.b.position_at_end(bb);
                    self.block(block)?;
                    self.b.build_unconditional_branch(merge)?;
                }
                self.b.position_at_end(merge);
                None
            }
            Op::Barrier => {
                // On the host, barriers split the top-level block into regions (emit_host).
                if self.ptx {
                    self.call("llvm.nvvm.barrier0", None, &[])?;
                }
                None
            }
        };
        if result.is_some() {
            self.vals[v.index()] = result;
        }
        Ok(())
    }

    pub(super) fn special(&self, s: Special) -> R<IntValue<'ctx>> {
        if self.ptx {
            let name = match s {
                Special::ThreadId => "llvm.nvvm.read.ptx.sreg.tid.x",
                Special::BlockId => "llvm.nvvm.read.ptx.sreg.ctaid.x",
                Special::GridSize => "llvm.nvvm.read.ptx.sreg.nctaid.x",
            };
            let ty = self.ctx.i32_type().into();
            return Ok(self.call(name, Some(ty), &[])?.into_int_value());
        }
        let v = match s {
            Special::ThreadId => self.tid,
            Special::BlockId => self.bid,
            Special::GridSize => self.grid,
        };
        v.ok_or_else(|| Fail::Llvm(format!("{s:?} used outside the block/thread loops")))
    }

    /// Calls the intrinsic (or other declared function) `name`, declaring it on first use.
    pub(super) fn call(
        &self,
        name: &str,
        ret: Option<BasicTypeEnum<'ctx>>,
        args: &[BasicValueEnum<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let func = match self.module.get_function(name) {
            Some(f) => f,
            None => {
                let params: Vec<_> = args.iter().map(|a| a.get_type().into()).collect();
                let ty = match ret {
                    Some(r) => r.fn_type(&params, false),
                    None => self.ctx.void_type().fn_type(&params, false),
                };
                self.module.add_function(name, ty, None)
            }
        };
        let args: Vec<_> = args.iter().map(|&a| a.into()).collect();
        let site = self.b.build_call(func, &args, "")?;
        Ok(match site.try_as_basic_value().basic() {
            Some(v) => v,
            // A void call: callers that ignore the result get a harmless placeholder.
            None => self.ctx.i32_type().const_zero().into(),
        })
    }
}
