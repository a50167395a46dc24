//! An opt-in trace of the global- and shared-memory accesses of chosen blocks, for the GPU cost
//! model ([`crate::gpu_model`]).
//!
//! [`run_traced`] runs only the chosen blocks, each with the other blocks of its cluster. It
//! runs a copy of the kernel in which marker reads (one-element `SelectRank`s of two extra
//! buffers) say which thread of which block of the cluster runs and which body (region, loop
//! body, `If` branch) starts: the hook in `memory.rs` sees them, so the machine itself is
//! unchanged. The hook costs
//! [`run`](super::run) one relaxed atomic load per memory access when no
//! trace is being taken. Instruction handles of the original kernel are kept (the marker
//! instructions are appended to the arena), so a trace names the kernel's own instructions.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{check_args, Arg, Buffer, InterpError, Malformed, MAX_BLOCK_ELEMS, MAX_NESTING};
use crate::ir::kernel::{
    Access as ParamAccess, BinaryOp, Const, Inst, Kernel, Memory, Op, Param, ScalarType, Special,
    Type, Value, WarpOp, REDUCE_STEPS,
};

/// One memory access of one thread: `repeat` requests of `lanes` consecutive elements, request
/// `j` starting at element `index + j * stride` (a `Load` or `Store` is one request; a
/// `SelectRank` gathers `count` single elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    /// The memory: a buffer parameter or a shared array.
    pub mem: Memory,
    /// First element index.
    pub index: u32,
    /// Consecutive elements per request.
    pub lanes: u32,
    /// Number of requests.
    pub repeat: u32,
    /// Elements between the starts of consecutive requests.
    pub stride: u32,
    /// Bytes per element.
    pub elem_bytes: u32,
    /// A store (else a load).
    pub store: bool,
}

/// What one thread of a traced block did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadTrace {
    /// By instruction index (of the traced kernel's arena), that instruction's accesses in order.
    pub accesses: BTreeMap<usize, Vec<MemAccess>>,
    /// How many times each body ([`Trace::body_insts`]) ran.
    pub body_runs: Vec<u64>,
}

/// One traced block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTrace {
    /// The block id.
    pub block: u32,
    /// Its threads, by thread id.
    pub threads: Vec<ThreadTrace>,
}

/// The trace of [`run_traced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Per body (each region, loop body and `If` branch), the instructions one run of it issues:
    /// its instructions other than constants (immediates) and barriers, plus 2 per loop
    /// iteration (increment and compare-and-branch); a warp collective counts as what it expands
    /// to, per element of its local: a shuffle 1, a reduction 10 (5 steps of a shuffle and an
    /// operation). A proxy for the machine instruction count.
    pub body_insts: Vec<u64>,
    /// Per body, the warp matrix multiply-accumulates ([`WarpOp::Mma`]) one run of it issues
    /// (each also counted as one instruction in `body_insts`).
    pub body_mmas: Vec<u64>,
    /// The body each instruction of the kernel (by arena index) is counted in: its own, or
    /// for a `Loop` its loop body (whose runs are its iterations).
    pub inst_bodies: BTreeMap<usize, u32>,
    /// The traced blocks, in increasing block id.
    pub blocks: Vec<BlockTrace>,
}

impl ThreadTrace {
    /// Instructions this thread issued (see [`Trace::body_insts`]).
    pub fn insts(&self, body_insts: &[u64]) -> u64 {
        self.body_runs
            .iter()
            .zip(body_insts)
            .fold(0u64, |sum, (runs, n)| {
                sum.saturating_add(runs.saturating_mul(*n))
            })
    }
}

impl MemAccess {
    /// One request of `lanes` consecutive elements of `elem` (a `Load` or `Store`).
    pub(super) fn run(mem: Memory, index: u32, lanes: u32, elem: ScalarType, store: bool) -> Self {
        MemAccess {
            mem,
            index,
            lanes,
            repeat: 1,
            stride: 0,
            elem_bytes: elem.size() as u32,
            store,
        }
    }

    /// A `Load` or `Store` of `lanes` elements: one request when aligned (a GPU moves them with
    /// one vector instruction), else `lanes` one-element requests (without a proven alignment
    /// the NVPTX backend splits the access into scalar ones).
    pub(super) fn vector(
        mem: Memory,
        index: u32,
        lanes: u32,
        elem: ScalarType,
        store: bool,
        aligned: bool,
    ) -> Self {
        match aligned || lanes == 1 {
            true => MemAccess::run(mem, index, lanes, elem, store),
            false => MemAccess {
                lanes: 1,
                repeat: lanes,
                stride: 1,
                ..MemAccess::run(mem, index, 1, elem, store)
            },
        }
    }
}

/// Number of tracers running, on any thread: the hook's fast path when zero.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

struct Recorder {
    /// The marker buffers: thread ids, body ids.
    markers: [u32; 2],
    current: Option<usize>,
    threads: Vec<ThreadTrace>,
}

/// The hook `memory.rs` calls on every load, store and gather; does nothing unless tracing.
#[inline]
pub(super) fn record(h: Value, access: MemAccess) {
    if ACTIVE.load(Ordering::Relaxed) != 0 {
        record_slow(h, access);
    }
}

#[cold]
fn record_slow(h: Value, access: MemAccess) {
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let Some(rec) = r.as_mut() else { return };
        if access.mem == Memory::Param(rec.markers[0]) {
            rec.current = Some(access.index as usize);
            return;
        }
        if access.mem == Memory::Param(rec.markers[1]) {
            let thread = rec.current.and_then(|c| rec.threads.get_mut(c));
            if let Some(runs) = thread.and_then(|t| t.body_runs.get_mut(access.index as usize)) {
                *runs += 1;
            }
            return;
        }
        if let Some(t) = rec.current.and_then(|c| rec.threads.get_mut(c)) {
            t.accesses.entry(h.index()).or_default().push(access);
        }
    });
}

/// Installs a recorder on this thread for its lifetime (removed even on an early return).
struct Installed;

impl Installed {
    fn new(rec: Recorder) -> Installed {
        RECORDER.with(|r| *r.borrow_mut() = Some(rec));
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        Installed
    }

    fn take(self) -> Option<Recorder> {
        RECORDER.with(|r| r.borrow_mut().take())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        RECORDER.with(|r| *r.borrow_mut() = None);
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs blocks `blocks` (ids at or past `grid_size` are skipped, repeats once) of `kernel` as
/// part of a grid of `grid_size`, each with the other blocks of its cluster (a kernel with
/// clusters is traced whole clusters at a time: every block of the trace is one that ran), and
/// traces their memory accesses. Only those blocks' stores land in `args`.
pub fn run_traced(
    kernel: &Kernel,
    args: &mut [Arg],
    grid_size: u32,
    blocks: &[u32],
) -> Result<Trace, InterpError> {
    check_args(kernel, args)?;
    let starts = super::exec::cluster_starts(kernel, grid_size, blocks.iter().copied())?;
    let ins = instrument(kernel)?;
    let bodies = ins.body_insts.len();
    let threads = u64::from(kernel.block_size) * u64::from(kernel.cluster_size);
    let marker_len = threads.max(bodies as u64);
    if marker_len > MAX_BLOCK_ELEMS {
        return Err(InterpError::TooLarge {
            what: "trace markers",
            elems: marker_len,
        });
    }
    // The arguments move into the traced run and back, however it ends.
    let mut all: Vec<Arg> = args
        .iter_mut()
        .map(|a| std::mem::replace(a, Arg::U32(0)))
        .collect();
    for _ in 0..2 {
        all.push(Arg::Buffer(Buffer::F32(vec![0.0; marker_len as usize])));
    }
    let result = trace_clusters(&ins, &mut all, grid_size, &starts);
    for (slot, arg) in args.iter_mut().zip(all) {
        *slot = arg;
    }
    Ok(Trace {
        body_insts: ins.body_insts,
        body_mmas: ins.body_mmas,
        inst_bodies: ins.inst_bodies,
        blocks: result?,
    })
}

fn trace_clusters(
    ins: &Instrumented,
    args: &mut [Arg],
    grid_size: u32,
    starts: &[u32],
) -> Result<Vec<BlockTrace>, InterpError> {
    let kernel = &ins.kernel;
    let mut out = Vec::new();
    for &first in starts {
        let thread = ThreadTrace {
            accesses: BTreeMap::new(),
            body_runs: vec![0; ins.body_insts.len()],
        };
        let threads = kernel.block_size as usize * kernel.cluster_size as usize;
        let installed = Installed::new(Recorder {
            markers: ins.markers,
            current: None,
            threads: vec![thread; threads],
        });
        super::exec::run_clusters(kernel, args, grid_size, &[first])?;
        let mut threads = installed.take().map(|r| r.threads).unwrap_or_default();
        for rank in 0..kernel.cluster_size {
            let rest = threads.split_off(threads.len().min(kernel.block_size as usize));
            out.push(BlockTrace {
                block: first + rank,
                threads: std::mem::replace(&mut threads, rest),
            });
        }
    }
    Ok(out)
}

/// The kernel with markers.
struct Instrumented {
    kernel: Kernel,
    markers: [u32; 2],
    body_insts: Vec<u64>,
    body_mmas: Vec<u64>,
    inst_bodies: BTreeMap<usize, u32>,
}

/// The kernel with two extra F32 buffer parameters, the markers, read by one-element
/// `SelectRank`s: `thread[rank * block_size + thread_id]` (which thread of which block of the
/// cluster runs, `rank = block_id % cluster_size`) at the start of every body and after
/// every loop, `If`, barrier and warp collective (where the machine may switch threads), and
/// `body[id]` (one more run of body `id`) at the start of every body.
fn instrument(kernel: &Kernel) -> Result<Instrumented, InterpError> {
    let mut k = kernel.clone();
    let first = k.params.len() as u32;
    for name in ["__kvq_trace_thread", "__kvq_trace_body"] {
        k.params.push(Param::Buffer {
            name: name.to_string(),
            elem: ScalarType::F32,
            access: ParamAccess::Read,
            len: None,
        });
    }
    let top = std::mem::take(&mut k.body.0);
    let mut w = Walker {
        kernel: &mut k,
        markers: [first, first + 1],
        body_insts: Vec::new(),
        body_mmas: Vec::new(),
        inst_bodies: BTreeMap::new(),
        seen: HashSet::new(),
    };
    let top = w.body(top, 0, 0)?;
    let (body_insts, body_mmas, inst_bodies) = (w.body_insts, w.body_mmas, w.inst_bodies);
    k.body.0 = top;
    Ok(Instrumented {
        kernel: k,
        markers: [first, first + 1],
        body_insts,
        body_mmas,
        inst_bodies,
    })
}

fn nested(op: &mut Op, which: u8) -> Option<&mut crate::ir::Block> {
    match (op, which) {
        (Op::Loop { body, .. }, 0) | (Op::If { then: body, .. }, 0) => Some(body),
        (Op::If { otherwise, .. }, 1) => Some(otherwise),
        _ => None,
    }
}

struct Walker<'k> {
    kernel: &'k mut Kernel,
    markers: [u32; 2],
    body_insts: Vec<u64>,
    body_mmas: Vec<u64>,
    inst_bodies: BTreeMap<usize, u32>,
    /// Instructions already walked: a malformed kernel may place one twice.
    seen: HashSet<usize>,
}

impl Walker<'_> {
    /// Instructions `op` stands for (see [`Trace::body_insts`]).
    fn weight(&self, op: &Op) -> u64 {
        let len = |local: u32| {
            self.kernel
                .locals
                .get(local as usize)
                .map_or(1, |l| u64::from(l.len))
        };
        match op {
            Op::Const(_) | Op::Barrier | Op::ClusterBarrier => 0,
            Op::Warp(WarpOp::Reduce { local, .. }) => 2 * REDUCE_STEPS.len() as u64 * len(*local),
            Op::Warp(WarpOp::ShuffleXor { src, .. } | WarpOp::ShuffleIdx { src, .. }) => len(*src),
            // Everything else, a warp's matrix multiply-accumulate included, is one instruction.
            _ => 1,
        }
    }

    /// Numbers the body `insts` (and those nested in it, which it instruments in place) and
    /// returns it with markers; `extra` instructions are added per run.
    fn body(
        &mut self,
        insts: Vec<Value>,
        depth: u32,
        extra: u64,
    ) -> Result<Vec<Value>, InterpError> {
        if depth > MAX_NESTING {
            return Err(InterpError::Malformed {
                inst: insts.first().copied(),
                problem: Malformed::TooDeep,
            });
        }
        let id = self.body_insts.len() as u32;
        self.body_insts.push(0);
        self.body_mmas.push(0);
        let mut out = self.marker(Some(id));
        let (mut count, mut mmas) = (extra, 0u64);
        for h in insts {
            out.push(h);
            let Some(inst) = self.kernel.insts.try_get(h) else {
                continue;
            };
            count += self.weight(&inst.op);
            mmas += u64::from(matches!(inst.op, Op::Warp(WarpOp::Mma { .. })));
            let is_loop = matches!(inst.op, Op::Loop { .. });
            let switch = !matches!(
                inst.op,
                Op::Const(_)
                    | Op::ScalarParam(_)
                    | Op::Special(_)
                    | Op::Unary(..)
                    | Op::Binary(..)
                    | Op::Cmp(..)
                    | Op::Select { .. }
                    | Op::Convert(..)
                    | Op::Bitcast(..)
                    | Op::Load { .. }
                    | Op::Store { .. }
                    | Op::Extract(..)
                    | Op::Vector(..)
                    | Op::ReadLocal { .. }
                    | Op::WriteLocal { .. }
                    | Op::PackBits { .. }
                    | Op::UnpackBits { .. }
                    | Op::SelectRank { .. }
                    | Op::LoadRemote { .. }
            );
            if self.seen.insert(h.index()) {
                self.inst_bodies.insert(h.index(), id);
                for which in [0u8, 1] {
                    let taken = self.nested_mut(h, which).map(|b| std::mem::take(&mut b.0));
                    let Some(taken) = taken else { continue };
                    if is_loop {
                        let nested = self.body_insts.len() as u32;
                        self.inst_bodies.insert(h.index(), nested);
                    }
                    let new = self.body(taken, depth + 1, if is_loop { 2 } else { 0 })?;
                    if let Some(b) = self.nested_mut(h, which) {
                        b.0 = new;
                    }
                }
            }
            // Loops, ifs, barriers, collectives (and any op added later): the machine may
            // switch threads there, so the running thread is marked again.
            if switch {
                out.extend(self.marker(None));
            }
        }
        if let Some(slot) = self.body_insts.get_mut(id as usize) {
            *slot = count;
        }
        if let Some(slot) = self.body_mmas.get_mut(id as usize) {
            *slot = mmas;
        }
        Ok(out)
    }

    fn nested_mut(&mut self, h: Value, which: u8) -> Option<&mut crate::ir::Block> {
        self.kernel
            .insts
            .get_mut(h)
            .and_then(|i| nested(&mut i.op, which))
    }

    /// `thread[rank * block_size + thread_id]`, then `body[id]` if given, as new instructions.
    fn marker(&mut self, id: Option<u32>) -> Vec<Value> {
        let (cluster, block_size) = (self.kernel.cluster_size, self.kernel.block_size);
        let insts = &mut self.kernel.insts;
        let u32t = Some(Type::Scalar(ScalarType::U32));
        let mut push = |op, ty| insts.append(Inst { op, ty });
        let zero = push(Op::Const(Const::U32(0)), u32t);
        let one = push(Op::Const(Const::U32(1)), u32t);
        let mut tid = push(Op::Special(Special::ThreadId), u32t);
        let mut out = vec![zero, one, tid];
        if cluster > 1 {
            let bid = push(Op::Special(Special::BlockId), u32t);
            let n = push(Op::Const(Const::U32(cluster)), u32t);
            let rank = push(Op::Binary(BinaryOp::Rem, bid, n), u32t);
            let bs = push(Op::Const(Const::U32(block_size)), u32t);
            let first = push(Op::Binary(BinaryOp::Mul, rank, bs), u32t);
            let at = push(Op::Binary(BinaryOp::Add, first, tid), u32t);
            out.extend([bid, n, rank, bs, first, at]);
            tid = at;
        }
        let gather = |base| Op::SelectRank {
            mem: Memory::Param(self.markers[usize::from(base != tid)]),
            base,
            stride: zero,
            count: one,
            rank: zero,
        };
        let f32t = Some(Type::Scalar(ScalarType::F32));
        let op = gather(tid);
        out.push(push(op, f32t));
        if let Some(id) = id {
            let body = push(Op::Const(Const::U32(id)), u32t);
            let op = gather(body);
            out.extend([body, push(op, f32t)]);
        }
        out
    }
}
