//! Instruction-level lowering: values, control flow and execution coordinates (memory is in
//! [`super::memory`], arithmetic in [`super::ops`]).
//!
//! - Each instruction with a result becomes one LLVM value, kept in `vals` by its index.
//!   Structured control flow is emitted in program order, so an instruction always dominates
//!   its uses (the verifier guarantees uses follow definitions in enclosing blocks).
//! - `Loop { start, end, step }` is `i = start; while i < end { body; i += step }`, leaving when
//!   `i + step` wraps around (Rust's `(start..end).step_by(step)`); `If` is a branch.
//! - Host: blocks `begin..end` are a loop; inside, the top-level block is split at its sync
//!   points (see `kvq_ir::ir::sync`): each run of instructions between them is a loop over the
//!   block's threads (`ThreadId` its counter), a warp collective is a loop over warps and lanes
//!   on the threads' locals ([`super::warp`]), and a block-uniform loop is a loop at block level
//!   whose body is split the same way. `BlockId`/`GridSize` are the block loop's counter and the
//!   grid argument. A uniform value used in a later region is recomputed there from its
//!   operands. With clusters, a loop over clusters runs each part between cluster barriers for
//!   the cluster's blocks in turn, each on its own copies of shared arrays and locals; a remote
//!   load reads the other block's copy. NVPTX: the body as written, the special registers,
//!   barriers are `llvm.nvvm.barrier0`, collectives are `shfl.sync`, cluster barriers are
//!   `barrier.cluster.arrive` + `barrier.cluster.wait` (release / acquire) and a remote load is
//!   a generic load from the address `mapa` gives.

use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::{BasicType, BasicTypeEnum};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::IntPredicate;
use kvq_ir::ir::sync::{cluster_parts, segments, Segment};
use kvq_ir::ir::{Block, Kernel, KernelInfo, Op, Special, Type, Value, WARP_SIZE};

use super::lines::Lines;
use super::memory::{access_align, allocate};
use super::select::Strided;

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
    pub(super) info: &'a KernelInfo,
    /// True for NVPTX, false for the host.
    pub(super) ptx: bool,
    func: FunctionValue<'ctx>,
    vals: Vec<Option<BasicValueEnum<'ctx>>>,
    pub(super) params: Vec<BasicValueEnum<'ctx>>,
    /// The current block's shared arrays and locals (on the host, its cluster copies).
    pub(super) shared: Vec<PointerValue<'ctx>>,
    pub(super) locals: Vec<PointerValue<'ctx>>,
    /// Where the shared arrays and locals start (on the host, rank 0's copies).
    pub(super) shared_base: Vec<PointerValue<'ctx>>,
    pub(super) locals_base: Vec<PointerValue<'ctx>>,
    /// Host only: induction variables of block-uniform loops, by instruction index.
    pub(super) block_vals: Vec<Option<BasicValueEnum<'ctx>>>,
    /// Host only: the current thread, block and the grid size.
    pub(super) tid: Option<IntValue<'ctx>>,
    bid: Option<IntValue<'ctx>>,
    grid: Option<IntValue<'ctx>>,
    /// PTX for profiling: line information, and the instruction whose code is being built.
    pub(super) lines: Option<Lines<'ctx>>,
    line_owner: Option<Value>,
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
        let dynamic = info.dynamic_shared_bytes > 0;
        let (shared, locals) = allocate(ctx, module, &b, kernel, ptx, dynamic)?;
        Ok(Lower {
            ctx,
            module,
            b,
            kernel,
            info,
            ptx,
            func,
            vals: vec![None; kernel.insts.len()],
            block_vals: vec![None; kernel.insts.len()],
            params,
            shared_base: shared.clone(),
            locals_base: locals.clone(),
            shared,
            locals,
            tid: None,
            bid: None,
            grid: None,
            lines: None,
            line_owner: None,
        })
    }

    /// The PTX kernel: the body as is, after zeroing the thread's locals.
    pub(super) fn emit_ptx(&mut self) -> R<()> {
        self.zero_memory()?;
        let kernel = self.kernel;
        self.block(&kernel.body)?;
        self.b.build_return(None)?;
        Ok(())
    }

    /// The host body: blocks `begin..end`, each split at its sync points. With clusters
    /// (`begin` and `end` then whole clusters apart), a loop over clusters in which each part
    /// of the top-level block between cluster barriers runs for the cluster's blocks in rank
    /// order, each block on its own copies of the shared arrays and locals.
    pub(super) fn emit_host(mut self, [begin, end, grid]: [IntValue<'ctx>; 3]) -> R<()> {
        self.grid = Some(grid);
        let kernel = self.kernel;
        let n = kernel.cluster_size;
        if n <= 1 {
            self.counted_loop(begin, end, 1, "block", |this, bid| {
                this.bid = Some(bid);
                this.zero_memory()?;
                this.host_sync_block(&kernel.body.0)
            })?;
            self.b.build_return(None)?;
            return Ok(());
        }
        let parts = cluster_parts(kernel);
        self.counted_loop(begin, end, n, "cluster", |this, first| {
            this.zero_memory()?;
            for part in &parts {
                let zero = this.ctx.i32_type().const_zero();
                let ranks = this.ctx.i32_type().const_int(u64::from(n), false);
                this.counted_loop(zero, ranks, 1, "rank", |this, rank| {
                    this.bid = Some(this.b.build_int_add(first, rank, "block")?);
                    this.select_block(rank)?;
                    this.host_sync_block(part)
                })?;
            }
            Ok(())
        })?;
        self.b.build_return(None)?;
        Ok(())
    }

    /// Host: `insts`, reached by every thread of the block together, as thread loops between
    /// its sync points.
    fn host_sync_block(&mut self, insts: &[Value]) -> R<()> {
        let kernel = self.kernel;
        for segment in segments(kernel, &self.info.sync, insts) {
            let v = match segment {
                Segment::Threads(region) => {
                    self.host_threads(region)?;
                    continue;
                }
                Segment::Sync(v) => v,
            };
            match &kernel.insts[v].op {
                Op::Warp(w) => self.host_warp(*w)?,
                Op::Loop {
                    start: first,
                    end,
                    step,
                    body,
                } => {
                    let (first, end) = (self.int(*first)?, self.int(*end)?);
                    self.counted_loop(first, end, *step, "sync_loop", |this, i| {
                        this.block_vals[v.index()] = Some(i.into());
                        this.host_sync_block(&body.0)
                    })?;
                    self.block_vals[v.index()] = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Host: `region` as a loop over the block's threads. Its values do not outlive the loop.
    fn host_threads(&mut self, region: &[Value]) -> R<()> {
        if region.is_empty() {
            return Ok(());
        }
        let threads = self
            .ctx
            .i32_type()
            .const_int(u64::from(self.kernel.block_size), false);
        let zero = self.ctx.i32_type().const_zero();
        self.counted_loop(zero, threads, 1, "thread", |this, tid| {
            this.tid = Some(tid);
            region.iter().try_for_each(|&v| this.inst(v))
        })?;
        self.tid = None;
        self.vals.iter_mut().for_each(|v| *v = None);
        Ok(())
    }

    /// `i = start; while i < end { body(i); i += step }`, stopping if `i + step` wraps.
    ///
    /// Inside a host thread loop of a block of several threads, where each thread's locals are
    /// indexed by the thread (so LLVM cannot prove an access within its allocation), the loop
    /// is emitted rotated (`if start < end { do { body(i); i += step } while i < end }`): its
    /// exits follow the body, so what the body stores on every iteration is guaranteed to
    /// execute, which lets LLVM keep those locations (a thread's counters) in registers across
    /// the loop. Elsewhere it keeps the test at the top: rotated, the one-thread host quantize
    /// kernels with 2- and 4-bit codes measured 1.5-2.4 times slower.
    pub(super) fn counted_loop(
        &mut self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: u32,
        name: &str,
        body: impl FnOnce(&mut Self, IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        if !self.ptx && self.tid.is_some() && self.kernel.block_size > 1 {
            self.rotated_loop(start, end, step, name, body)
        } else {
            self.top_tested_loop(start, end, step, name, body)
        }
    }

    /// [`Self::counted_loop`] with the test at the top: `head: if i < end { body; i += step;
    /// goto head }`.
    fn top_tested_loop(
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
        let next = self.loop_step(iv, step)?;
        let latch = self.current()?;
        // i < end <= u32::MAX, so i + 1 cannot wrap.
        if step == 1 {
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

    /// [`Self::counted_loop`] rotated: `if start < end { do { body; i += step } while i < end
    /// }`, with a separate wrap check before the test when `step > 1`.
    fn rotated_loop(
        &mut self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: u32,
        name: &str,
        body: impl FnOnce(&mut Self, IntValue<'ctx>) -> R<()>,
    ) -> R<()> {
        let pre = self.current()?;
        let inner = self.append(&format!("{name}.body"));
        let exit = self.append(&format!("{name}.exit"));
        let enter = self
            .b
            .build_int_compare(IntPredicate::ULT, start, end, "enter")?;
        self.b.build_conditional_branch(enter, inner, exit)?;
        self.b.position_at_end(inner);
        let i = self.b.build_phi(self.ctx.i32_type(), name)?;
        i.add_incoming(&[(&start, pre)]);
        let iv = i.as_basic_value().into_int_value();
        body(self, iv)?;
        let next = self.loop_step(iv, step)?;
        let mut latch = self.current()?;
        // i < end <= u32::MAX, so i + 1 cannot wrap.
        if step != 1 {
            let wrapped = self
                .b
                .build_int_compare(IntPredicate::ULT, next, iv, "wrapped")?;
            let check = self.append(&format!("{name}.check"));
            self.b.build_conditional_branch(wrapped, exit, check)?;
            self.b.position_at_end(check);
            latch = check;
        }
        let go = self
            .b
            .build_int_compare(IntPredicate::ULT, next, end, "go")?;
        self.b.build_conditional_branch(go, inner, exit)?;
        i.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// `iv + step`, the induction variable's next value.
    fn loop_step(&mut self, iv: IntValue<'ctx>, step: u32) -> R<IntValue<'ctx>> {
        let step_value = self.ctx.i32_type().const_int(u64::from(step), false);
        Ok(self.b.build_int_add(iv, step_value, "next")?)
    }

    pub(super) fn current(&self) -> R<BasicBlock<'ctx>> {
        self.b
            .get_insert_block()
            .ok_or_else(|| Fail::Llvm("builder is not positioned".into()))
    }

    /// An alloca of `ty` at the start of the entry block (so that a loop does not grow the
    /// stack), aligned to 16 bytes.
    pub(super) fn entry_alloca(
        &self,
        ty: BasicTypeEnum<'ctx>,
        name: &str,
    ) -> R<PointerValue<'ctx>> {
        let entry = self
            .func
            .get_first_basic_block()
            .ok_or_else(|| Fail::Llvm("function without an entry block".into()))?;
        let b = self.ctx.create_builder();
        match entry.get_first_instruction() {
            Some(first) => b.position_before(&first),
            None => b.position_at_end(entry),
        }
        let ptr = b.build_alloca(ty, name)?;
        if let Some(inst) = ptr.as_instruction_value() {
            inst.set_alignment(16)
                .map_err(|e| Fail::Llvm(e.to_string()))?;
        }
        Ok(ptr)
    }

    /// Builds `body` into `func`, a helper function of the module, from a new entry block (so
    /// that [`Self::entry_alloca`], [`Self::append`] and [`Self::counted_loop`] work in it), then
    /// returns the builder to where it was in the kernel.
    pub(super) fn in_function<T>(
        &mut self,
        func: FunctionValue<'ctx>,
        body: impl FnOnce(&mut Self) -> R<T>,
    ) -> R<T> {
        let back = self.current()?;
        let kernel = std::mem::replace(&mut self.func, func);
        self.b
            .position_at_end(self.ctx.append_basic_block(func, "entry"));
        let out = body(self);
        self.func = kernel;
        self.b.position_at_end(back);
        out
    }

    pub(super) fn append(&self, name: &str) -> BasicBlock<'ctx> {
        self.ctx.append_basic_block(self.func, name)
    }

    fn block(&mut self, block: &Block) -> R<()> {
        let owner = self.line_owner;
        block.0.iter().try_for_each(|&v| self.inst(v))?;
        // What the enclosing `Loop` or `If` builds after its block is its own.
        if let Some(v) = owner {
            self.tag(v);
        }
        Ok(())
    }

    /// With line information, tags what is built next as `v`'s.
    fn tag(&mut self, v: Value) {
        if let Some(lines) = &self.lines {
            lines.at(self.ctx, &self.b, v);
            self.line_owner = Some(v);
        }
    }

    /// The lowered value of `v`: its definition, or on the host a block-uniform loop's counter
    /// or a uniform value of an earlier region, recomputed here.
    pub(super) fn val(&self, v: Value) -> R<BasicValueEnum<'ctx>> {
        let own = self.vals.get(v.index()).copied().flatten();
        let block = || self.block_vals.get(v.index()).copied().flatten();
        match own.or_else(block) {
            Some(x) => Ok(x),
            None if !self.ptx && self.info.sync.is_uniform(v) => self.remat(v),
            None => Err(Fail::Llvm(format!(
                "value {v:?} used before its definition"
            ))),
        }
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

    pub(super) fn int(&self, v: Value) -> R<IntValue<'ctx>> {
        Ok(self.val(v)?.into_int_value())
    }

    fn inst(&mut self, v: Value) -> R<()> {
        self.tag(v);
        let kernel = self.kernel;
        let result: Option<BasicValueEnum<'ctx>> = match &kernel.insts[v].op {
            op @ (Op::Const(_)
            | Op::ScalarParam(_)
            | Op::Special(_)
            | Op::Unary(..)
            | Op::Binary(..)
            | Op::Cmp(..)
            | Op::Select { .. }
            | Op::Convert(..)
            | Op::Bitcast(..)
            | Op::Extract(..)
            | Op::Vector(_)) => Some(self.pure(op, &|x| self.val(x))?),
            Op::Load {
                mem,
                index,
                lanes,
                aligned,
            } => Some(self.load_op(*mem, self.int(*index)?, *lanes, *aligned)?),
            Op::Store {
                mem,
                index,
                value,
                aligned,
            } => {
                let (ptr, elem) = self.element(*mem, self.int(*index)?)?;
                let lanes = match self.ty(*value)? {
                    Type::Vector(_, n) => u32::from(n),
                    Type::Scalar(_) => 1,
                };
                let align = access_align(elem, lanes, *aligned);
                self.store(ptr, elem, self.val(*value)?, align)?;
                None
            }
            Op::ReadLocal { local, index } => {
                let (ptr, elem) = self.local(*local, self.int(*index)?)?;
                Some(self.load(ptr, elem, 1, elem.size() as u32)?)
            }
            Op::WriteLocal {
                local,
                index,
                value,
            } => {
                let (ptr, elem) = self.local(*local, self.int(*index)?)?;
                self.store(ptr, elem, self.val(*value)?, elem.size() as u32)?;
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
                let run = Strided {
                    mem: *mem,
                    base: base?,
                    stride: stride?,
                    count: count?,
                };
                Some(self.select_rank(run, rank?)?.into())
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
                // On the host, barriers split the block into regions (host_sync_block).
                if self.ptx {
                    self.call("llvm.nvvm.barrier0", None, &[])?;
                }
                None
            }
            Op::Warp(w) => {
                // On the host, collectives run between thread loops (host_sync_block).
                if self.ptx {
                    self.ptx_warp(*w)?;
                }
                None
            }
            Op::ClusterBarrier => {
                // On the host, cluster barriers split the top-level block (emit_host).
                if self.ptx {
                    self.call("llvm.nvvm.barrier.cluster.arrive", None, &[])?;
                    self.call("llvm.nvvm.barrier.cluster.wait", None, &[])?;
                }
                None
            }
            Op::LoadRemote {
                shared,
                rank,
                index,
            } => {
                let (ptr, elem) =
                    self.remote_element(*shared, self.int(*rank)?, self.int(*index)?)?;
                Some(self.load(ptr, elem, 1, elem.size() as u32)?)
            }
        };
        if result.is_some() {
            self.vals[v.index()] = result;
        }
        Ok(())
    }

    pub(super) fn special(&self, s: Special) -> R<IntValue<'ctx>> {
        let i32_type = self.ctx.i32_type();
        let warp = i32_type.const_int(u64::from(WARP_SIZE), false);
        match s {
            Special::LaneId => {
                let tid = self.special(Special::ThreadId)?;
                return Ok(self.b.build_int_unsigned_rem(tid, warp, "lane")?);
            }
            Special::WarpId => {
                let tid = self.special(Special::ThreadId)?;
                return Ok(self.b.build_int_unsigned_div(tid, warp, "warp")?);
            }
            _ => {}
        }
        if self.ptx {
            let name = match s {
                Special::BlockId => "llvm.nvvm.read.ptx.sreg.ctaid.x",
                Special::GridSize => "llvm.nvvm.read.ptx.sreg.nctaid.x",
                _ => "llvm.nvvm.read.ptx.sreg.tid.x",
            };
            return Ok(self
                .call(name, Some(i32_type.into()), &[])?
                .into_int_value());
        }
        let v = match s {
            Special::BlockId => self.bid,
            Special::GridSize => self.grid,
            _ => self.tid,
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
