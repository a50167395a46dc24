//! Facts about a kernel's structure that the verifier checks and every backend relies on:
//! where the synchronisation points are (barriers and warp collectives), which loops hold them,
//! which values every thread of a block agrees on, and what an index is known to be a multiple
//! of.
//!
//! - A **sync point** is a [`Op::Barrier`], a [`Op::Warp`] collective or an
//!   [`Op::ClusterBarrier`].
//! - A **sync loop** is a [`Op::Loop`] whose body holds a sync point (at any depth). The
//!   verifier requires it to be block-uniform; backends run it once per block, not per thread.
//! - A value is **uniform** when every thread of a block computes the same bits for it from the
//!   block's coordinates alone: a constant, a scalar parameter, `block_id`, `grid_size`, the
//!   induction variable of a sync loop, a pure operation (unary, binary, comparison, select,
//!   conversion, bitcast, extract, vector) of uniform values, or a load at a uniform index from
//!   a read-only buffer (which no thread of the launch writes, so every thread reads the same
//!   bits). A uniform value may be used across sync points: backends that run threads as loops
//!   recompute it where it is used (reloading a read-only buffer's element).
//! - The **alignment** of a u32 value is the largest `k <= 32` for which it is a proven multiple
//!   of `2^k` (wrapping arithmetic keeps it: `2^k` divides `2^32`).
//!
//! All three are computed in one walk in program order, never recursing, so any kernel (however
//! malformed) gives an answer; for a kernel the verifier accepts they are exact facts.

use super::kernel::{Access, BinaryOp, Const, Kernel, Memory, Op, Param, Special, Value};
use super::print::{walk, BlockKind, Entry, Visit};

/// Whether `op` is a synchronisation point.
pub fn is_sync_point(op: &Op) -> bool {
    matches!(op, Op::Barrier | Op::Warp(_) | Op::ClusterBarrier)
}

/// A piece of a block that every thread of the block reaches together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'k> {
    /// Instructions between sync points: run for each thread in turn ("threads become loops").
    Threads(&'k [Value]),
    /// A sync point or a sync loop: run once for the block.
    Sync(Value),
}

/// `insts` split at its sync points and sync loops (empty thread runs left out), as the
/// interpreter and host code run them. A handle out of range counts as an ordinary instruction
/// (the caller reports it).
pub fn segments<'k>(kernel: &Kernel, facts: &SyncFacts, insts: &'k [Value]) -> Vec<Segment<'k>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &h) in insts.iter().enumerate() {
        let Some(inst) = kernel.insts.try_get(h) else {
            continue;
        };
        let sync_loop = matches!(inst.op, Op::Loop { .. }) && facts.holds_sync(h);
        if sync_loop || is_sync_point(&inst.op) {
            if start < i {
                out.push(Segment::Threads(&insts[start..i]));
            }
            out.push(Segment::Sync(h));
            start = i + 1;
        }
    }
    if start < insts.len() {
        out.push(Segment::Threads(&insts[start..]));
    }
    out
}

/// The kernel's top-level block split at its cluster barriers: the parts that the interpreter and
/// host code run for every block of a cluster in turn (one part without clusters).
pub fn cluster_parts(kernel: &Kernel) -> Vec<&[Value]> {
    kernel
        .body
        .0
        .split(|&h| {
            matches!(
                kernel.insts.try_get(h).map(|i| &i.op),
                Some(Op::ClusterBarrier)
            )
        })
        .collect()
}

/// The synchronisation structure of a kernel, by arena index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFacts {
    /// True for a Loop or If whose blocks hold a sync point at any depth.
    pub holds_sync: Vec<bool>,
    /// True for a uniform value (see the module documentation).
    pub uniform: Vec<bool>,
    /// The proven power-of-two exponent dividing each u32 value (0 when nothing is known).
    pub align_log2: Vec<u32>,
}

impl SyncFacts {
    /// Computes the facts of `kernel`.
    pub fn of(kernel: &Kernel) -> SyncFacts {
        let n = kernel.insts.len();
        let mut facts = Facts {
            kernel,
            holds_sync: vec![false; n],
            uniform: vec![false; n],
            align_log2: vec![0; n],
            owners: Vec::new(),
        };
        walk(kernel, &mut facts);
        // Uniformity of a Loop's value depends on whether it holds a sync point, known only
        // after its body was walked; a second pass settles the values computed from it.
        facts.uniform = vec![false; n];
        walk(kernel, &mut Uniform(&mut facts));
        SyncFacts {
            holds_sync: facts.holds_sync,
            uniform: facts.uniform,
            align_log2: facts.align_log2,
        }
    }

    /// Whether `v` is a Loop or If holding a sync point.
    pub fn holds_sync(&self, v: Value) -> bool {
        self.holds_sync.get(v.index()).copied().unwrap_or(false)
    }

    /// Whether `v` is uniform.
    pub fn is_uniform(&self, v: Value) -> bool {
        self.uniform.get(v.index()).copied().unwrap_or(false)
    }

    /// Whether `v` is a proven multiple of `n` (a power of two).
    pub fn is_multiple(&self, v: Value, n: u32) -> bool {
        let k = self.align_log2.get(v.index()).copied().unwrap_or(0);
        n.is_power_of_two() && n.trailing_zeros() <= k
    }
}

struct Facts<'k> {
    kernel: &'k Kernel,
    holds_sync: Vec<bool>,
    uniform: Vec<bool>,
    align_log2: Vec<u32>,
    /// The Loops and Ifs whose blocks are open, outermost first.
    owners: Vec<Value>,
}

impl<'k> Visit<'k> for Facts<'k> {
    fn inst(&mut self, e: Entry<'k>) {
        let Some(inst) = e.inst else { return };
        if !e.first {
            return;
        }
        if is_sync_point(&inst.op) {
            for &o in &self.owners {
                if let Some(slot) = self.holds_sync.get_mut(o.index()) {
                    *slot = true;
                }
            }
        }
        let a = |v: &Value| self.align_log2.get(v.index()).copied().unwrap_or(0);
        let align = match &inst.op {
            Op::Const(Const::U32(c)) => c.trailing_zeros(),
            Op::Binary(op, x, y) => match op {
                BinaryOp::Mul => (a(x) + a(y)).min(32),
                BinaryOp::Shl => match self.kernel.insts.try_get(*y).map(|i| &i.op) {
                    Some(Op::Const(Const::U32(s))) => a(x).saturating_add(*s).min(32),
                    _ => a(x),
                },
                BinaryOp::And => a(x).max(a(y)),
                BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Min
                | BinaryOp::Max
                | BinaryOp::Or
                | BinaryOp::Xor => a(x).min(a(y)),
                BinaryOp::Div
                | BinaryOp::Rem
                | BinaryOp::Shr
                | BinaryOp::Minimum
                | BinaryOp::Maximum => 0,
            },
            Op::Select {
                if_true, if_false, ..
            } => a(if_true).min(a(if_false)),
            Op::Loop { start, step, .. } => a(start).min(step.trailing_zeros()),
            _ => 0,
        };
        if let Some(slot) = self.align_log2.get_mut(e.handle.index()) {
            *slot = align;
        }
    }

    fn enter(&mut self, owner: Value, kind: BlockKind, _depth: usize) {
        if kind != BlockKind::Else {
            self.owners.push(owner);
        }
    }

    fn leave(&mut self, _owner: Value, kind: BlockKind, _depth: usize) {
        if kind != BlockKind::Then {
            self.owners.pop();
        }
    }
}

/// The second pass: uniformity, in program order.
struct Uniform<'f, 'k>(&'f mut Facts<'k>);

impl<'k> Visit<'k> for Uniform<'_, 'k> {
    fn inst(&mut self, e: Entry<'k>) {
        let Some(inst) = e.inst else { return };
        if !e.first {
            return;
        }
        let f = &*self.0;
        let u = |v: &Value| f.uniform.get(v.index()).copied().unwrap_or(false);
        let uniform = match &inst.op {
            Op::Const(_) | Op::ScalarParam(_) => true,
            Op::Special(s) => matches!(s, Special::BlockId | Special::GridSize),
            Op::Loop { .. } => f.holds_sync.get(e.handle.index()).copied() == Some(true),
            Op::Unary(_, x) | Op::Convert(_, x) | Op::Bitcast(_, x) | Op::Extract(x, _) => u(x),
            Op::Binary(_, x, y) | Op::Cmp(_, x, y) => u(x) && u(y),
            Op::Select {
                cond,
                if_true,
                if_false,
            } => u(cond) && u(if_true) && u(if_false),
            Op::Vector(items) => items.iter().all(u),
            Op::Load {
                mem: Memory::Param(p),
                index,
                ..
            } => u(index) && read_only(f.kernel, *p),
            _ => false,
        };
        if let Some(slot) = self.0.uniform.get_mut(e.handle.index()) {
            *slot = uniform;
        }
    }
}

/// Whether buffer parameter `p` is read-only ([`Access::Read`]).
fn read_only(kernel: &Kernel, p: u32) -> bool {
    matches!(
        kernel.params.get(p as usize),
        Some(Param::Buffer {
            access: Access::Read,
            ..
        })
    )
}

/// The operands of a pure operation (or a uniform load: its index) that a backend recomputes to
/// rematerialise a uniform value (empty for constants, parameters, coordinates and Loops).
pub fn pure_operands(op: &Op) -> Vec<Value> {
    match op {
        Op::Load { index, .. } => vec![*index],
        Op::Unary(_, x) | Op::Convert(_, x) | Op::Bitcast(_, x) | Op::Extract(x, _) => vec![*x],
        Op::Binary(_, x, y) | Op::Cmp(_, x, y) => vec![*x, *y],
        Op::Select {
            cond,
            if_true,
            if_false,
        } => vec![*cond, *if_true, *if_false],
        Op::Vector(items) => items.clone(),
        _ => Vec::new(),
    }
}

/// The base alignment in bytes each parameter needs (1 when none): the largest
/// `min(lanes * size, 16)` of the aligned Loads and Stores of that buffer. Launchers check it.
pub fn buffer_alignment(kernel: &Kernel) -> Vec<u32> {
    let mut align = vec![1u32; kernel.params.len()];
    for (_, inst) in kernel.insts.iter() {
        let (mem, lanes) = match &inst.op {
            Op::Load {
                mem,
                lanes,
                aligned: true,
                ..
            } => (*mem, u32::from(*lanes)),
            Op::Store {
                mem,
                value,
                aligned: true,
                ..
            } => {
                let lanes = match kernel.insts.try_get(*value).and_then(|i| i.ty) {
                    Some(super::kernel::Type::Vector(_, n)) => u32::from(n),
                    _ => 1,
                };
                (*mem, lanes)
            }
            _ => continue,
        };
        let super::kernel::Memory::Param(i) = mem else {
            continue;
        };
        let size = match kernel.params.get(i as usize) {
            Some(super::kernel::Param::Buffer { elem, .. }) => elem.size() as u32,
            _ => continue,
        };
        if let Some(slot) = align.get_mut(i as usize) {
            *slot = (*slot).max(lanes.saturating_mul(size).clamp(1, 16));
        }
    }
    align
}
