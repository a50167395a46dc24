//! The machine: runs a kernel block by block, region by region, thread by thread, and each
//! instruction as the module documentation says.

use super::value::{self, Fault, Val};
use super::{Arg, Buffer, InterpError, Malformed, MAX_BLOCK_ELEMS, MAX_NESTING};
use crate::ir::kernel::MAX_CLUSTER_SIZE;
use crate::ir::kernel::{Kernel, Op, Param, ScalarType, Special, Type, Value, WARP_SIZE};
use crate::ir::sync::{cluster_parts, segments, Segment, SyncFacts};
use crate::scheme::{BitOrder, Bits};

/// Runs `kernel` (whose arguments are checked) on `grid_size` blocks.
pub(super) fn run(kernel: &Kernel, args: &mut [Arg], grid_size: u32) -> Result<(), InterpError> {
    run_clusters(
        kernel,
        args,
        grid_size,
        &cluster_starts(kernel, grid_size, 0..grid_size)?,
    )
}

/// The first block of each cluster that holds one of `blocks` (each once, increasing), after
/// checking that the grid is made of whole clusters.
pub(super) fn cluster_starts(
    kernel: &Kernel,
    grid_size: u32,
    blocks: impl IntoIterator<Item = u32>,
) -> Result<Vec<u32>, InterpError> {
    let n = kernel.cluster_size;
    if !(1..=MAX_CLUSTER_SIZE).contains(&n) || grid_size % n != 0 {
        return Err(InterpError::ClusterGrid {
            cluster_size: n,
            grid_size,
        });
    }
    let mut starts: Vec<u32> = blocks
        .into_iter()
        .filter(|&b| b < grid_size)
        .map(|b| b - b % n)
        .collect();
    starts.dedup();
    starts.sort_unstable();
    starts.dedup();
    Ok(starts)
}

/// What one block of a cluster keeps while another block of the cluster runs.
#[derive(Default)]
pub(super) struct Parked {
    pub(super) shared: Vec<Buffer>,
    block_values: Vec<Option<Val>>,
    locals: Vec<Val>,
}

/// Runs the clusters starting at `starts` (from [`cluster_starts`]) of a grid of `grid_size`:
/// the top-level body split at its cluster barriers, each part run for the cluster's blocks in
/// rank order (a block without clusters is a cluster of one).
pub(super) fn run_clusters(
    kernel: &Kernel,
    args: &mut [Arg],
    grid_size: u32,
    starts: &[u32],
) -> Result<(), InterpError> {
    let facts = SyncFacts::of(kernel);
    let n = kernel.cluster_size;
    let shared_elems: u64 = kernel.shared.iter().map(|s| u64::from(s.len)).sum();
    check_size("shared arrays", shared_elems.saturating_mul(u64::from(n)))?;
    // Every thread's locals, one after the other; each local at its offset in a thread's run.
    let mut offsets = Vec::with_capacity(kernel.locals.len());
    let mut template = Vec::new();
    for local in &kernel.locals {
        offsets.push(template.len());
        let per_thread = template.len() as u64 + u64::from(local.len);
        // Per thread too: a block of 0 threads must not allocate a huge template either.
        let threads = u64::from(kernel.block_size.max(1)) * u64::from(n);
        check_size("locals", per_thread.saturating_mul(threads))?;
        let start = match local.zeroed {
            true => Val::zero(local.elem),
            false => Val::unwritten(),
        };
        template.resize(template.len() + local.len as usize, start);
    }
    let per_thread = template.len();
    let parts = cluster_parts(kernel);

    let mut machine = Machine {
        kernel,
        facts: &facts,
        args,
        grid_size,
        block: 0,
        rank: 0,
        shared: Vec::new(),
        parked: Vec::new(),
        values: vec![None; kernel.insts.len()],
        block_values: vec![None; kernel.insts.len()],
        offsets,
        per_thread,
    };
    for &first in starts {
        // A Bool shared array is held as bytes 0 and 1, as generated code stores it.
        machine.parked = (0..n)
            .map(|_| Parked {
                shared: kernel
                    .shared
                    .iter()
                    .map(|s| match s.elem {
                        ScalarType::Bool => Buffer::U8(vec![0; s.len as usize]),
                        elem => {
                            Buffer::zeros(elem, s.len as usize).unwrap_or(Buffer::U8(Vec::new()))
                        }
                    })
                    .collect(),
                block_values: vec![None; kernel.insts.len()],
                locals: match per_thread {
                    0 => Vec::new(),
                    _ => (0..kernel.block_size)
                        .flat_map(|_| template.iter().cloned())
                        .collect(),
                },
            })
            .collect();
        for part in &parts {
            for rank in 0..n {
                machine.block = first + rank;
                machine.rank = rank;
                let mut locals = machine.unpark(rank);
                let result = machine.run_sync(part, &mut locals, 0);
                machine.park(rank, locals);
                result?;
            }
        }
    }
    Ok(())
}

fn check_size(what: &'static str, elems: u64) -> Result<(), InterpError> {
    match elems > MAX_BLOCK_ELEMS {
        true => Err(InterpError::TooLarge { what, elems }),
        false => Ok(()),
    }
}

pub(super) fn malformed(inst: Option<Value>, problem: Malformed) -> InterpError {
    InterpError::Malformed { inst, problem }
}

/// One thread of the current block.
pub(super) struct Thread<'l> {
    pub(super) tid: u32,
    /// Its locals, local `l` at `Machine::offsets[l]`.
    pub(super) locals: &'l mut [Val],
}

pub(super) struct Machine<'k, 'a> {
    pub(super) kernel: &'k Kernel,
    facts: &'k SyncFacts,
    pub(super) args: &'a mut [Arg],
    grid_size: u32,
    block: u32,
    /// The current block's rank in its cluster.
    pub(super) rank: u32,
    /// The current block's shared arrays.
    pub(super) shared: Vec<Buffer>,
    /// By rank, the state of the cluster's blocks; the current block's is in `shared`,
    /// `block_values` and the locals being run while it runs.
    pub(super) parked: Vec<Parked>,
    /// The current thread's values, by instruction index: `Some` from the definition to the
    /// end of the block holding it.
    values: Vec<Option<Val>>,
    /// The current block's uniform values (see [`crate::ir::sync`]), by instruction index:
    /// every thread computes the same bits, so they outlive the region that defines them.
    block_values: Vec<Option<Val>>,
    /// Where each local starts in a thread's locals.
    pub(super) offsets: Vec<usize>,
    /// Number of local elements of one thread.
    per_thread: usize,
}

impl Machine<'_, '_> {
    /// Makes block `rank` of the cluster the current one; returns its locals.
    fn unpark(&mut self, rank: u32) -> Vec<Val> {
        let Some(p) = self.parked.get_mut(rank as usize) else {
            return Vec::new();
        };
        std::mem::swap(&mut self.shared, &mut p.shared);
        std::mem::swap(&mut self.block_values, &mut p.block_values);
        std::mem::take(&mut p.locals)
    }

    /// Parks the current block, rank `rank`, with its `locals`.
    fn park(&mut self, rank: u32, locals: Vec<Val>) {
        if let Some(p) = self.parked.get_mut(rank as usize) {
            std::mem::swap(&mut self.shared, &mut p.shared);
            std::mem::swap(&mut self.block_values, &mut p.block_values);
            p.locals = locals;
        }
    }

    /// Runs `insts`, a block where every thread of the block arrives together (the top-level
    /// block or a block-uniform loop's body): the instructions between sync points for thread
    /// 0, 1, ..., then each sync point (a barrier, a warp collective, a block-uniform loop) for
    /// the whole block.
    fn run_sync(
        &mut self,
        insts: &[Value],
        locals: &mut [Val],
        depth: u32,
    ) -> Result<(), InterpError> {
        for segment in segments(self.kernel, self.facts, insts) {
            let h = match segment {
                Segment::Threads(region) => {
                    self.run_threads(region, locals, depth)?;
                    continue;
                }
                Segment::Sync(h) => h,
            };
            let inst = self
                .kernel
                .insts
                .try_get(h)
                .ok_or(malformed(Some(h), Malformed::UnknownInst))?;
            match &inst.op {
                Op::Warp(w) => self.warp(h, *w, locals)?,
                Op::Loop {
                    start: first,
                    end,
                    step,
                    body,
                } => {
                    if depth >= MAX_NESTING {
                        return Err(malformed(Some(h), Malformed::TooDeep));
                    }
                    if *step == 0 {
                        return Err(malformed(Some(h), Malformed::ZeroStep));
                    }
                    let bound = |this: &Self, v: Value| match this.facts.is_uniform(v) {
                        true => this.u32_operand(h, v),
                        false => Err(malformed(Some(h), Malformed::NotUniform(v))),
                    };
                    let (mut i, end) = (bound(self, *first)?, bound(self, *end)?);
                    while i < end {
                        self.set(h, Some(Val::U32(i)));
                        self.run_sync(&body.0, locals, depth + 1)?;
                        match i.checked_add(*step) {
                            Some(next) => i = next,
                            None => break,
                        }
                    }
                    self.set(h, None);
                    if let Some(slot) = self.block_values.get_mut(h.index()) {
                        *slot = None;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs `region` for thread 0, 1, ... of the block.
    fn run_threads(
        &mut self,
        region: &[Value],
        locals: &mut [Val],
        depth: u32,
    ) -> Result<(), InterpError> {
        if region.is_empty() {
            return Ok(());
        }
        let per_thread = self.per_thread;
        for tid in 0..self.kernel.block_size {
            let first = tid as usize * per_thread;
            let mut thread = Thread {
                tid,
                locals: locals.get_mut(first..first + per_thread).unwrap_or(&mut []),
            };
            self.run_block(&mut thread, region, depth)?;
        }
        Ok(())
    }

    /// Runs a warp collective over every warp of the block (see [`crate::ir::WarpOp`]).
    fn warp(
        &mut self,
        h: Value,
        w: crate::ir::WarpOp,
        locals: &mut [Val],
    ) -> Result<(), InterpError> {
        super::warp::run(self.kernel, &self.offsets, self.per_thread, h, w, locals)
    }
    /// Runs `insts` in order, then forgets their values (the values of nested blocks are
    /// forgotten when those end).
    fn run_block(
        &mut self,
        t: &mut Thread,
        insts: &[Value],
        depth: u32,
    ) -> Result<(), InterpError> {
        for &h in insts {
            self.exec(t, h, depth)?;
        }
        for &h in insts {
            if let Some(slot) = self.values.get_mut(h.index()) {
                *slot = None;
            }
        }
        Ok(())
    }

    fn exec(&mut self, t: &mut Thread, h: Value, depth: u32) -> Result<(), InterpError> {
        let kernel = self.kernel;
        let bad = |problem| malformed(Some(h), problem);
        let inst = kernel.insts.try_get(h).ok_or(bad(Malformed::UnknownInst))?;
        let result = match &inst.op {
            Op::Const(c) => Some(Val::from_const(*c)),
            Op::ScalarParam(i) => Some(self.scalar_param(h, *i)?),
            Op::Special(s) => Some(Val::U32(match s {
                Special::ThreadId => t.tid,
                Special::BlockId => self.block,
                Special::GridSize => self.grid_size,
                Special::LaneId => t.tid % WARP_SIZE,
                Special::WarpId => t.tid / WARP_SIZE,
            })),
            Op::Unary(op, a) => {
                Some(value::unary(*op, self.get(h, *a)?).map_err(|f| self.fault(h, f, &[*a]))?)
            }
            Op::Binary(op, a, b) => Some(
                value::binary(*op, self.get(h, *a)?, self.get(h, *b)?)
                    .map_err(|f| self.fault(h, f, &[*a, *b]))?,
            ),
            Op::Cmp(op, a, b) => Some(Val::Bool(
                value::cmp(*op, self.get(h, *a)?, self.get(h, *b)?)
                    .map_err(|f| self.fault(h, f, &[*a, *b]))?,
            )),
            Op::Select {
                cond,
                if_true,
                if_false,
            } => {
                let cond = self.bool_operand(h, *cond)?;
                let (x, y) = (self.get(h, *if_true)?, self.get(h, *if_false)?);
                if x.ty() != y.ty() {
                    return Err(self.wrong(h, *if_false));
                }
                Some(if cond { x.clone() } else { y.clone() })
            }
            Op::Bitcast(to, a) => match value::bitcast(*to, self.get(h, *a)?) {
                Some(x) => Some(x),
                None => return Err(self.wrong(h, *a)),
            },
            Op::Convert(to, a) => {
                Some(value::convert(*to, self.get(h, *a)?).map_err(|f| match f {
                    Fault::Range(value) => InterpError::ConvertOutOfRange {
                        inst: h,
                        to: *to,
                        value,
                    },
                    f => self.fault(h, f, &[*a]),
                })?)
            }
            Op::Load {
                mem,
                index,
                lanes,
                aligned,
            } => {
                if *aligned {
                    self.check_aligned(h, *index, u32::from(*lanes))?;
                }
                Some(self.load(h, *mem, *index, *lanes, *aligned)?)
            }
            Op::Store {
                mem,
                index,
                value,
                aligned,
            } => {
                if *aligned {
                    let lanes = match self.get(h, *value)? {
                        Val::Vec(items) => items.len() as u32,
                        _ => 1,
                    };
                    self.check_aligned(h, *index, lanes)?;
                }
                self.store(h, *mem, *index, *value, *aligned)?;
                None
            }
            Op::Extract(v, lane) => match self.get(h, *v)? {
                Val::Vec(lanes) => Some(lanes.get(usize::from(*lane)).cloned().ok_or(bad(
                    Malformed::Lane {
                        lane: *lane,
                        lanes: lanes.len() as u32,
                    },
                ))?),
                _ => return Err(self.wrong(h, *v)),
            },
            Op::Vector(vs) => {
                if !(2..=16).contains(&vs.len()) {
                    return Err(bad(Malformed::VectorLen(vs.len())));
                }
                let mut lanes: Vec<Val> = Vec::with_capacity(vs.len());
                for &v in vs {
                    let x = self.get(h, v)?;
                    let elem = lanes.first().map_or(x.scalar_ty(), Val::scalar_ty);
                    if x.scalar_ty().is_none() || x.scalar_ty() != elem {
                        return Err(self.wrong(h, v));
                    }
                    lanes.push(x.clone());
                }
                Some(Val::Vec(lanes))
            }
            Op::ReadLocal { local, index } => {
                let (slot, _) = self.local_slot(t, h, *local, *index)?;
                match t.locals.get(slot) {
                    Some(x) if x.is_unwritten() => {
                        let index = self.u32_operand(h, *index)?;
                        return Err(InterpError::UnwrittenLocal {
                            inst: h,
                            local: *local,
                            index,
                        });
                    }
                    x => x.cloned(),
                }
            }
            Op::WriteLocal {
                local,
                index,
                value,
            } => {
                let (slot, elem) = self.local_slot(t, h, *local, *index)?;
                let x = self.get(h, *value)?;
                if x.ty() != Type::Scalar(elem) {
                    return Err(self.wrong(h, *value));
                }
                if let Some(dest) = t.locals.get_mut(slot) {
                    *dest = x.clone();
                }
                None
            }
            Op::PackBits { codes, bits, order } => Some(self.pack(h, codes, *bits, *order)?),
            Op::UnpackBits {
                byte,
                lane,
                bits,
                order,
            } => {
                let per_byte = 8 / bits.width();
                if u32::from(*lane) >= per_byte {
                    return Err(bad(Malformed::Lane {
                        lane: *lane,
                        lanes: per_byte,
                    }));
                }
                let Val::U8(x) = *self.get(h, *byte)? else {
                    return Err(self.wrong(h, *byte));
                };
                let shift =
                    value::code_shift(u32::from(*lane), bits.width(), *order == BitOrder::Msb);
                Some(Val::U8((x >> shift) & bits.max_code()))
            }
            Op::SelectRank {
                mem,
                base,
                stride,
                count,
                rank,
            } => {
                let [base, stride, count, rank] =
                    [*base, *stride, *count, *rank].map(|v| self.u32_operand(h, v));
                Some(self.select_rank(h, *mem, base?, stride?, count?, rank?)?)
            }
            Op::Loop {
                start,
                end,
                step,
                body,
            } => {
                let computed = Some(Type::Scalar(ScalarType::U32));
                if inst.ty != computed {
                    return Err(bad(Malformed::ResultType {
                        declared: inst.ty,
                        computed,
                    }));
                }
                if depth >= MAX_NESTING {
                    return Err(bad(Malformed::TooDeep));
                }
                if *step == 0 {
                    return Err(bad(Malformed::ZeroStep));
                }
                let (mut i, end) = (self.u32_operand(h, *start)?, self.u32_operand(h, *end)?);
                while i < end {
                    self.set(h, Some(Val::U32(i)));
                    self.run_block(t, &body.0, depth + 1)?;
                    match i.checked_add(*step) {
                        Some(next) => i = next,
                        None => break,
                    }
                }
                self.set(h, None);
                return Ok(());
            }
            Op::If {
                cond,
                then,
                otherwise,
            } => {
                if depth >= MAX_NESTING {
                    return Err(bad(Malformed::TooDeep));
                }
                let taken = if self.bool_operand(h, *cond)? {
                    then
                } else {
                    otherwise
                };
                self.run_block(t, &taken.0, depth + 1)?;
                None
            }
            Op::LoadRemote {
                shared,
                rank,
                index,
            } => {
                let (rank, index) = (self.u32_operand(h, *rank)?, self.u32_operand(h, *index)?);
                Some(self.load_remote(h, *shared, rank, index)?)
            }
            Op::Barrier | Op::Warp(_) | Op::ClusterBarrier => {
                return Err(bad(Malformed::NestedBarrier))
            }
        };
        let computed = result.as_ref().map(Val::ty);
        if inst.ty != computed {
            return Err(bad(Malformed::ResultType {
                declared: inst.ty,
                computed,
            }));
        }
        self.set(h, result);
        Ok(())
    }

    fn set(&mut self, h: Value, x: Option<Val>) {
        if let (Some(x), true) = (&x, self.facts.is_uniform(h)) {
            if let Some(slot) = self.block_values.get_mut(h.index()) {
                *slot = Some(x.clone());
            }
        }
        if let Some(slot) = self.values.get_mut(h.index()) {
            *slot = x;
        }
    }

    /// The value of operand `v` of instruction `h`: the thread's own, or a uniform value of the
    /// block defined in an earlier region.
    pub(super) fn get(&self, h: Value, v: Value) -> Result<&Val, InterpError> {
        self.values
            .get(v.index())
            .and_then(Option::as_ref)
            .or_else(|| match self.facts.is_uniform(v) {
                true => self.block_values.get(v.index()).and_then(Option::as_ref),
                false => None,
            })
            .ok_or(malformed(Some(h), Malformed::Undefined(v)))
    }

    /// An aligned access's index must be a multiple of its lanes.
    fn check_aligned(&self, h: Value, index: Value, lanes: u32) -> Result<(), InterpError> {
        let i = self.u32_operand(h, index)?;
        match i % lanes.max(1) {
            0 => Ok(()),
            _ => Err(InterpError::Misaligned {
                inst: h,
                index: i,
                lanes,
            }),
        }
    }

    /// The error for operand `v` of `h` having a type `h` does not take.
    pub(super) fn wrong(&self, h: Value, v: Value) -> InterpError {
        match self.get(h, v) {
            Ok(x) => malformed(
                Some(h),
                Malformed::Operand {
                    operand: v,
                    found: x.ty(),
                },
            ),
            Err(e) => e,
        }
    }

    fn fault(&self, h: Value, fault: Fault, operands: &[Value]) -> InterpError {
        match fault {
            Fault::Operand(n) => self.wrong(h, operands.get(n).copied().unwrap_or(h)),
            Fault::DivisionByZero => InterpError::DivisionByZero { inst: h },
            Fault::Shift { shift, width } => InterpError::ShiftTooLarge {
                inst: h,
                shift,
                width,
            },
            // Only `Convert` reports a range fault, and it names its own target type.
            Fault::Range(value) => InterpError::ConvertOutOfRange {
                inst: h,
                to: ScalarType::U32,
                value,
            },
        }
    }

    pub(super) fn u32_operand(&self, h: Value, v: Value) -> Result<u32, InterpError> {
        match self.get(h, v)? {
            Val::U32(x) => Ok(*x),
            _ => Err(self.wrong(h, v)),
        }
    }

    fn bool_operand(&self, h: Value, v: Value) -> Result<bool, InterpError> {
        match self.get(h, v)? {
            Val::Bool(x) => Ok(*x),
            _ => Err(self.wrong(h, v)),
        }
    }

    fn scalar_param(&self, h: Value, i: u32) -> Result<Val, InterpError> {
        let bad = |problem| malformed(Some(h), problem);
        match self.kernel.params.get(i as usize) {
            None => return Err(bad(Malformed::UnknownParam(i))),
            Some(Param::Buffer { .. }) => return Err(bad(Malformed::NotAScalar(i))),
            Some(Param::Scalar { .. }) => {}
        }
        match self.args.get(i as usize) {
            Some(Arg::U32(x)) => Ok(Val::U32(*x)),
            Some(Arg::F32(x)) => Ok(Val::F32(*x)),
            _ => Err(bad(Malformed::NotAScalar(i))),
        }
    }

    fn pack(
        &self,
        h: Value,
        codes: &[Value],
        bits: Bits,
        order: BitOrder,
    ) -> Result<Val, InterpError> {
        let per_byte = 8 / bits.width();
        if codes.len() != per_byte as usize {
            return Err(malformed(
                Some(h),
                Malformed::CodeCount {
                    expected: per_byte,
                    got: codes.len(),
                },
            ));
        }
        let mut byte = 0u32;
        for (j, &c) in codes.iter().enumerate() {
            let Val::U8(code) = *self.get(h, c)? else {
                return Err(self.wrong(h, c));
            };
            if code > bits.max_code() {
                return Err(InterpError::CodeTooLarge {
                    inst: h,
                    code,
                    bits,
                });
            }
            byte |= u32::from(code)
                << value::code_shift(j as u32, bits.width(), order == BitOrder::Msb);
        }
        Ok(Val::U8(byte as u8))
    }
}
