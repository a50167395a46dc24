//! The text form: a deterministic dump of a [`Kernel`], for tests, diagnostics and the verifier's
//! messages.
//!
//! # Numbering
//! Values are named `v0`, `v1`, ... in *program order*: a depth-first walk of the top-level
//! block, a [`Op::Loop`]'s value (its induction variable) numbered when the loop is reached,
//! before its body, and an [`Op::If`]'s `then` block before its `otherwise` block. Only
//! instructions whose operation has a result are numbered ([`Op::Store`], [`Op::WriteLocal`],
//! [`Op::If`] and [`Op::Barrier`] are not). The numbering does not depend on arena indices, so two
//! kernels with the same program built in different arena orders print identically.
//!
//! # Broken kernels
//! Printing never panics. A handle that is out of range of the arena, or names an instruction
//! that is not placed in the program, prints as `v?#12` (its arena index). An instruction placed
//! a second time prints again with its first name, with its nested blocks shown as `{ ... }`.
//! Instructions of the arena that the walk does not reach are listed after the body under
//! `unplaced`. Memory, locals and parameters that do not exist print as `param?3`, `shared?3`,
//! `local?3`.
//!
//! A shared array is referred to as `shared.NAME` in the body, so that it reads differently
//! from a buffer parameter of the same name.
//!
//! # Syntax
//! ```text
//! kernel quantize_k(x: &[f16] read, codes: &mut [u8] write, tokens: u32) block_size 128
//! shared smin: [f32; 128]
//! local acc: [f32; 8]
//!     v0 = thread_id
//!     v1 = const.u32 0
//!     v2 = load.f16x8 x[v1]
//!     v3 = loop v0..v1 step 128 {
//!         v4 = read_local acc[v3]
//!     }
//!     if v5 {
//!         store codes[v1], v9
//!     } else {
//!     }
//!     barrier
//! ```
//! Operations: `const.T c` (floats as Rust's `{:?}`, which reads back exactly; bits in hex
//! only for a NaN other than the canonical one), `param NAME`, `thread_id`, `block_id`,
//! `grid_size`, `lane_id`, `warp_id`, `neg`/`round_even`/`floor`/`not`/`is_finite`/`exp`/`popcount a`,
//! `add`/`sub`/`mul`/`div`/`rem`/`min`/`max`/`and`/`or`/`xor`/`shl`/`shr a, b`, `cmp.eq`/`ne`/`lt`/`le`/`gt`/`ge a, b`,
//! `select c, a, b`, `convert.T a`, `bitcast.T a`, `load[.aligned].T[xN] MEM[i]`, `store[.aligned] MEM[i], v`, `extract v, LANE`,
//! `vector a, b, ...`, `read_local L[i]`, `write_local L[i], v`, `pack_bits.bB.ORDER c0, c1, ...`,
//! `unpack_bits.bB.ORDER byte, LANE`, `select_rank MEM[base, stride s, count n], rank r`,
//! `loop start..end step S { ... }`, `if c { ... } else { ... }`, `barrier`,
//! `warp.shuffle_xor DST <- SRC, MASK`, `warp.shuffle_idx DST <- SRC, lane L`,
//! `warp.reduce_sum`/`reduce_min`/`reduce_max L`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};

use super::kernel::{
    Access, BinaryOp, CmpOp, Const, Inst, Kernel, Memory, Op, Param, ReduceOp, ScalarType, Special,
    Type, UnaryOp, Value, WarpOp,
};
use crate::scheme::BitOrder;

/// The deterministic text form of `kernel` (see the module documentation). Never panics, even on
/// a kernel the verifier rejects.
pub fn print(kernel: &Kernel) -> String {
    let names = Names::new(kernel);
    // About 32 bytes a line (indentation included): one allocation for most kernels.
    let mut out = String::with_capacity(32 * kernel.insts.len() + 256);
    header(kernel, &mut out);
    let mut printer = Printer {
        kernel,
        names: &names,
        out,
    };
    let reached = walk(kernel, &mut printer);
    let mut out = printer.out;
    let unplaced: Vec<(Value, &Inst)> = kernel
        .insts
        .iter()
        .filter(|(h, _)| !reached.get(h.index()).copied().unwrap_or(false))
        .collect();
    if !unplaced.is_empty() {
        out.push_str("unplaced\n");
        for (h, inst) in unplaced {
            let _ = writeln!(
                out,
                "    {}",
                inst_line(kernel, &names, h, inst, BlockMode::Elided)
            );
        }
    }
    out
}

/// The program-order number of every value of `kernel` (`v3` in the text form is the value `v`
/// with `value_names(kernel)[&v] == 3`). Values that are not reached by the walk of the body
/// have no number.
pub fn value_names(kernel: &Kernel) -> HashMap<Value, usize> {
    let names = Names::new(kernel);
    names
        .number
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.map(|n| (Value::from_index(i as u32), n)))
        .collect()
}

/// A type as the text form writes it: `f32`, `f16x8`.
pub fn type_text(ty: Type) -> String {
    match ty {
        Type::Scalar(s) => s.name().to_string(),
        Type::Vector(s, lanes) => format!("{}x{lanes}", s.name()),
    }
}

/// True when `op` defines a value (everything but Store, WriteLocal, If, Barrier, Warp and
/// ClusterBarrier). A Loop
/// defines its induction variable, visible only in its body.
pub(crate) fn has_result(op: &Op) -> bool {
    !matches!(
        op,
        Op::Store { .. }
            | Op::WriteLocal { .. }
            | Op::If { .. }
            | Op::Barrier
            | Op::Warp(_)
            | Op::ClusterBarrier
    )
}

/// A value's name in the text form: `v3`, or `v?#12` for a handle without a number.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ValueName {
    /// A reached value's program-order number.
    Numbered(usize),
    /// An arena index without a number.
    Unnumbered(usize),
}

impl ValueName {
    /// Appends the name to `out` (what `Display` writes; printing a kernel names a value
    /// several times a line, and the formatting machinery cost more than the rest of it).
    fn push_to(self, out: &mut String) {
        match self {
            ValueName::Numbered(n) => {
                out.push('v');
                push_decimal(out, n);
            }
            ValueName::Unnumbered(i) => {
                out.push_str("v?#");
                push_decimal(out, i);
            }
        }
    }
}

impl fmt::Display for ValueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.push_to(&mut text);
        f.write_str(&text)
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// The program-order numbering of a kernel and which instructions the walk reaches.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// Indexed by arena index: the value's number, if it is a reached value.
    number: Vec<Option<usize>>,
    /// Indexed by arena index: whether the walk of the body reaches the instruction.
    reached: Vec<bool>,
}

impl Names {
    /// Numbers the values of `kernel` in program order.
    pub(crate) fn new(kernel: &Kernel) -> Names {
        struct Numberer {
            number: Vec<Option<usize>>,
            next: usize,
        }
        impl<'k> Visit<'k> for Numberer {
            fn inst(&mut self, e: Entry<'k>) {
                if !e.first {
                    return;
                }
                if let Some(inst) = e.inst {
                    if has_result(&inst.op) {
                        if let Some(slot) = self.number.get_mut(e.handle.index()) {
                            *slot = Some(self.next);
                            self.next += 1;
                        }
                    }
                }
            }
        }
        let mut n = Numberer {
            number: vec![None; kernel.insts.len()],
            next: 0,
        };
        let reached = walk(kernel, &mut n);
        Names {
            number: n.number,
            reached,
        }
    }

    /// Whether the walk of the body reaches `h`.
    pub(crate) fn reached(&self, h: Value) -> bool {
        self.reached.get(h.index()).copied().unwrap_or(false)
    }

    /// `v3`, or `v?#12` for a handle without a number (displayed without allocating).
    pub(crate) fn value(&self, v: Value) -> ValueName {
        match self.number.get(v.index()).copied().flatten() {
            Some(n) => ValueName::Numbered(n),
            None => ValueName::Unnumbered(v.index()),
        }
    }

    /// How a diagnostic names an instruction: `v3` for a numbered value; for an instruction
    /// without a result its own text, e.g. ``store codes[v1], v9`` in backquotes (with its
    /// arena index when it is not placed); else `v?#12`.
    pub(crate) fn inst(&self, kernel: &Kernel, h: Value) -> String {
        if self.number.get(h.index()).copied().flatten().is_some() {
            return self.value(h).to_string();
        }
        match kernel.insts.try_get(h) {
            Some(inst) if !has_result(&inst.op) => {
                let text = op_text(kernel, self, &inst.op);
                if self.reached(h) {
                    format!("`{text}`")
                } else {
                    format!("`{text}` (#{}, unplaced)", h.index())
                }
            }
            _ => self.value(h).to_string(),
        }
    }
}

/// Which block of a structured instruction a walk is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// A Loop's body.
    LoopBody,
    /// An If's `then` block.
    Then,
    /// An If's `otherwise` block.
    Else,
}

/// One entry of a block, as a walk reaches it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'k> {
    /// The handle in the block.
    pub(crate) handle: Value,
    /// Its instruction, or `None` when the handle is out of range.
    pub(crate) inst: Option<&'k Inst>,
    /// 1 for the top-level block, 2 inside one Loop or If, ...
    pub(crate) depth: usize,
    /// The Loop or If whose block holds the entry (`None` at top level).
    pub(crate) parent: Option<Value>,
    /// False when the walk has reached this handle before (it is placed twice); its blocks are
    /// then not walked again.
    pub(crate) first: bool,
}

/// What a [`walk`] reports.
pub(crate) trait Visit<'k> {
    /// A block entry.
    fn inst(&mut self, entry: Entry<'k>);
    /// Entering block `kind` of `owner` (which is at `depth`).
    fn enter(&mut self, _owner: Value, _kind: BlockKind, _depth: usize) {}
    /// Leaving block `kind` of `owner` (which is at `depth`).
    fn leave(&mut self, _owner: Value, _kind: BlockKind, _depth: usize) {}
}

/// Walks the body of `kernel` in program order without recursion (so no nesting depth can
/// overflow the stack), walking the blocks of each instruction only the first time it is
/// reached. Returns, by arena index, which instructions were reached.
pub(crate) fn walk<'k>(kernel: &'k Kernel, visitor: &mut impl Visit<'k>) -> Vec<bool> {
    struct Frame<'k> {
        block: &'k [Value],
        pos: usize,
        owner: Option<(Value, BlockKind)>,
    }
    let mut reached = vec![false; kernel.insts.len()];
    let mut stack = vec![Frame {
        block: &kernel.body.0,
        pos: 0,
        owner: None,
    }];
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else { break };
        if let Some(&handle) = top.block.get(top.pos) {
            top.pos += 1;
            let parent = top.owner.map(|(o, _)| o);
            let inst = kernel.insts.try_get(handle);
            let first = match reached.get_mut(handle.index()) {
                Some(r) => !std::mem::replace(r, true),
                None => true,
            };
            visitor.inst(Entry {
                handle,
                inst,
                depth,
                parent,
                first,
            });
            if !first {
                continue;
            }
            let nested = match inst.map(|i| &i.op) {
                Some(Op::Loop { body, .. }) => Some((body, BlockKind::LoopBody)),
                Some(Op::If { then, .. }) => Some((then, BlockKind::Then)),
                _ => None,
            };
            if let Some((block, kind)) = nested {
                visitor.enter(handle, kind, depth);
                stack.push(Frame {
                    block: &block.0,
                    pos: 0,
                    owner: Some((handle, kind)),
                });
            }
        } else {
            let owner = top.owner;
            stack.pop();
            let Some((owner, kind)) = owner else { continue };
            let owner_depth = depth.saturating_sub(1);
            visitor.leave(owner, kind, owner_depth);
            if kind == BlockKind::Then {
                if let Some(Inst {
                    op: Op::If { otherwise, .. },
                    ..
                }) = kernel.insts.try_get(owner)
                {
                    visitor.enter(owner, BlockKind::Else, owner_depth);
                    stack.push(Frame {
                        block: &otherwise.0,
                        pos: 0,
                        owner: Some((owner, BlockKind::Else)),
                    });
                }
            }
        }
    }
    reached
}

struct Printer<'a> {
    kernel: &'a Kernel,
    names: &'a Names,
    out: String,
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("    ");
    }
}

impl<'k> Visit<'k> for Printer<'_> {
    fn inst(&mut self, e: Entry<'k>) {
        indent(&mut self.out, e.depth);
        match e.inst {
            Some(inst) => {
                let mode = if e.first {
                    BlockMode::Open
                } else {
                    BlockMode::Elided
                };
                push_inst_line(&mut self.out, self.kernel, self.names, e.handle, inst, mode);
            }
            None => {
                let _ = write!(self.out, "v?#{} = <not in the arena>", e.handle.index());
            }
        }
        self.out.push('\n');
    }

    fn leave(&mut self, _owner: Value, kind: BlockKind, depth: usize) {
        indent(&mut self.out, depth);
        self.out.push_str(match kind {
            BlockKind::Then => "} else {\n",
            BlockKind::LoopBody | BlockKind::Else => "}\n",
        });
    }
}

/// How an instruction line ends when the instruction holds blocks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockMode {
    /// ` {`: the blocks follow.
    Open,
    /// ` { ... }`: the blocks are not shown.
    Elided,
}

/// `v3 = add v1, v2`, `store x[v1], v2`, `v4 = loop v0..v1 step 1 {`.
fn inst_line(kernel: &Kernel, names: &Names, h: Value, inst: &Inst, mode: BlockMode) -> String {
    let mut line = String::new();
    push_inst_line(&mut line, kernel, names, h, inst, mode);
    line
}

/// [`inst_line`], appended to `line`.
fn push_inst_line(
    line: &mut String,
    kernel: &Kernel,
    names: &Names,
    h: Value,
    inst: &Inst,
    mode: BlockMode,
) {
    if has_result(&inst.op) {
        names.value(h).push_to(line);
        line.push_str(" = ");
    }
    let _ = write_op(line, kernel, names, &inst.op);
    if matches!(inst.op, Op::Loop { .. } | Op::If { .. }) {
        line.push_str(match mode {
            BlockMode::Open => " {",
            BlockMode::Elided => " { ... }",
        });
    }
}

fn header(kernel: &Kernel, out: &mut String) {
    let params: Vec<String> = kernel
        .params
        .iter()
        .map(|p| match p {
            Param::Buffer {
                name,
                elem,
                access,
                len,
            } => {
                let (mutability, access) = match access {
                    Access::Read => ("", "read"),
                    Access::Write => ("mut ", "write"),
                    Access::ReadWrite => ("mut ", "read_write"),
                };
                let len = len
                    .as_ref()
                    .map_or_else(String::new, |l| format!("; {}", l.text(&kernel.params)));
                format!("{name}: &{mutability}[{}{len}] {access}", elem.name())
            }
            Param::Scalar { name, ty } => format!("{name}: {}", ty.name()),
        })
        .collect();
    let mut cluster = match kernel.cluster_size {
        1 => String::new(),
        n => format!(" cluster_size {n}"),
    };
    if kernel.min_blocks_per_sm > 0 {
        cluster += &format!(" min_blocks_per_sm {}", kernel.min_blocks_per_sm);
    }
    if let Some(grid) = &kernel.max_grid {
        cluster += &format!(" max_grid {}", grid.text(&kernel.params));
    }
    let _ = writeln!(
        out,
        "kernel {}({}) block_size {}{cluster}",
        kernel.name,
        params.join(", "),
        kernel.block_size
    );
    for s in &kernel.shared {
        let _ = writeln!(out, "shared {}: [{}; {}]", s.name, s.elem.name(), s.len);
    }
    for l in &kernel.locals {
        let start = if l.zeroed { "" } else { " unzeroed" };
        let _ = writeln!(
            out,
            "local {}: [{}; {}]{start}",
            l.name,
            l.elem.name(),
            l.len
        );
    }
}

/// The name of parameter `i`, or `param?i`.
pub(crate) fn param_name(kernel: &Kernel, i: u32) -> Cow<'_, str> {
    match kernel.params.get(i as usize) {
        Some(p) => Cow::Borrowed(p.name()),
        None => Cow::Owned(format!("param?{i}")),
    }
}

/// How the text form refers to a memory: `x` (a parameter), `shared.smin`, or `param?i` /
/// `shared?i` when there is none.
pub(crate) fn memory_name(kernel: &Kernel, mem: Memory) -> Cow<'_, str> {
    match mem {
        Memory::Param(i) => param_name(kernel, i),
        Memory::Shared(i) => Cow::Owned(match kernel.shared.get(i as usize) {
            Some(s) => format!("shared.{}", s.name),
            None => format!("shared?{i}"),
        }),
    }
}

/// The name of local `i`, or `local?i`.
pub(crate) fn local_name(kernel: &Kernel, i: u32) -> Cow<'_, str> {
    match kernel.locals.get(i as usize) {
        Some(l) => Cow::Borrowed(&l.name),
        None => Cow::Owned(format!("local?{i}")),
    }
}

/// The element type of a memory, when it is a buffer parameter or a shared array.
pub(crate) fn memory_elem(kernel: &Kernel, mem: Memory) -> Option<ScalarType> {
    match mem {
        Memory::Param(i) => match kernel.params.get(i as usize) {
            Some(Param::Buffer { elem, .. }) => Some(*elem),
            _ => None,
        },
        Memory::Shared(i) => kernel.shared.get(i as usize).map(|s| s.elem),
    }
}

fn const_text(c: Const) -> String {
    match c {
        Const::Bool(b) => format!("const.bool {b}"),
        Const::U8(x) => format!("const.u8 {x}"),
        Const::U16(x) => format!("const.u16 {x}"),
        Const::U32(x) => format!("const.u32 {x}"),
        Const::F32(bits) => {
            let text = format!("{:?}", f32::from_bits(bits));
            if text.parse::<f32>().map(f32::to_bits) == Ok(bits) {
                format!("const.f32 {text}")
            } else {
                format!("const.f32 0x{bits:08x}")
            }
        }
        Const::F64(bits) => {
            let text = format!("{:?}", f64::from_bits(bits));
            if text.parse::<f64>().map(f64::to_bits) == Ok(bits) {
                format!("const.f64 {text}")
            } else {
                format!("const.f64 0x{bits:016x}")
            }
        }
    }
}

fn unary_name(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "neg",
        UnaryOp::RoundEven => "round_even",
        UnaryOp::Floor => "floor",
        UnaryOp::Not => "not",
        UnaryOp::IsFinite => "is_finite",
        UnaryOp::Exp => "exp",
        UnaryOp::PopCount => "popcount",
    }
}

/// The text-form name of a binary operation (`add`, `shl`, ...).
fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Rem => "rem",
        BinaryOp::Min => "min",
        BinaryOp::Max => "max",
        BinaryOp::Minimum => "minimum",
        BinaryOp::Maximum => "maximum",
        BinaryOp::And => "and",
        BinaryOp::Or => "or",
        BinaryOp::Shl => "shl",
        BinaryOp::Shr => "shr",
        BinaryOp::Xor => "xor",
    }
}

fn cmp_name(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "eq",
        CmpOp::Ne => "ne",
        CmpOp::Lt => "lt",
        CmpOp::Le => "le",
        CmpOp::Gt => "gt",
        CmpOp::Ge => "ge",
    }
}

fn order_name(order: BitOrder) -> &'static str {
    match order {
        BitOrder::Msb => "msb",
        BitOrder::Lsb => "lsb",
    }
}

fn list(names: &Names, values: &[Value]) -> String {
    let mut out = String::new();
    for (i, &v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", names.value(v));
    }
    out
}

/// The text of an operation, without the `vN = ` prefix and without its blocks.
pub(crate) fn op_text(kernel: &Kernel, names: &Names, op: &Op) -> String {
    let mut out = String::new();
    let _ = write_op(&mut out, kernel, names, op);
    out
}

/// Appends the `words`, then the names of `values` separated by `, `.
fn push_all(out: &mut String, names: &Names, words: &[&str], values: &[Value]) {
    for w in words {
        out.push_str(w);
    }
    for (i, &v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        names.value(v).push_to(out);
    }
}

/// Appends `memory[index]`.
fn push_indexed(out: &mut String, names: &Names, memory: &str, index: Value) {
    out.push_str(memory);
    out.push('[');
    names.value(index).push_to(out);
    out.push(']');
}

/// [`op_text`], appended to `out`.
fn write_op(out: &mut String, kernel: &Kernel, names: &Names, op: &Op) -> fmt::Result {
    let v = |x: &Value| names.value(*x);
    match op {
        Op::Const(Const::U32(x)) => {
            out.push_str("const.u32 ");
            push_decimal(out, *x as usize);
            Ok(())
        }
        Op::Const(c) => out.write_str(&const_text(*c)),
        Op::ScalarParam(i) => write!(out, "param {}", param_name(kernel, *i)),
        Op::Special(s) => out.write_str(match s {
            Special::ThreadId => "thread_id",
            Special::BlockId => "block_id",
            Special::GridSize => "grid_size",
            Special::LaneId => "lane_id",
            Special::WarpId => "warp_id",
        }),
        // The most frequent operations are written piece by piece (the same text as the
        // `write!` forms of the others, at a fraction of their cost).
        Op::Unary(u, a) => {
            push_all(out, names, &[unary_name(*u), " "], &[*a]);
            Ok(())
        }
        Op::Binary(b, x, y) => {
            push_all(out, names, &[binary_name(*b), " "], &[*x, *y]);
            Ok(())
        }
        Op::Cmp(c, x, y) => {
            push_all(out, names, &["cmp.", cmp_name(*c), " "], &[*x, *y]);
            Ok(())
        }
        Op::Select {
            cond,
            if_true,
            if_false,
        } => {
            push_all(out, names, &["select "], &[*cond, *if_true, *if_false]);
            Ok(())
        }
        Op::Convert(t, a) => {
            push_all(out, names, &["convert.", t.name(), " "], &[*a]);
            Ok(())
        }
        Op::Bitcast(t, a) => write!(out, "bitcast.{} {}", type_text(*t), v(a)),
        Op::Load {
            mem,
            index,
            lanes,
            aligned,
        } => {
            let elem = memory_elem(kernel, *mem).map_or("?", ScalarType::name);
            push_all(
                out,
                names,
                &["load", aligned_text(*aligned), ".", elem],
                &[],
            );
            if *lanes != 1 {
                out.push('x');
                push_decimal(out, usize::from(*lanes));
            }
            out.push(' ');
            push_indexed(out, names, &memory_name(kernel, *mem), *index);
            Ok(())
        }
        Op::Store {
            mem,
            index,
            value,
            aligned,
        } => {
            push_all(out, names, &["store", aligned_text(*aligned), " "], &[]);
            push_indexed(out, names, &memory_name(kernel, *mem), *index);
            push_all(out, names, &[", "], &[*value]);
            Ok(())
        }
        Op::Extract(a, lane) => write!(out, "extract {}, {lane}", v(a)),
        Op::Vector(values) if values.is_empty() => out.write_str("vector"),
        Op::Vector(values) => write!(out, "vector {}", list(names, values)),
        Op::ReadLocal { local, index } => {
            out.push_str("read_local ");
            push_indexed(out, names, &local_name(kernel, *local), *index);
            Ok(())
        }
        Op::WriteLocal {
            local,
            index,
            value,
        } => {
            out.push_str("write_local ");
            push_indexed(out, names, &local_name(kernel, *local), *index);
            push_all(out, names, &[", "], &[*value]);
            Ok(())
        }
        Op::PackBits { codes, bits, order } => {
            write!(out, "pack_bits.b{}.{}", bits.width(), order_name(*order))?;
            if codes.is_empty() {
                Ok(())
            } else {
                write!(out, " {}", list(names, codes))
            }
        }
        Op::UnpackBits {
            byte,
            lane,
            bits,
            order,
        } => write!(
            out,
            "unpack_bits.b{}.{} {}, {lane}",
            bits.width(),
            order_name(*order),
            v(byte)
        ),
        Op::SelectRank {
            mem,
            base,
            stride,
            count,
            rank,
        } => write!(
            out,
            "select_rank {}[{}, stride {}, count {}], rank {}",
            memory_name(kernel, *mem),
            v(base),
            v(stride),
            v(count),
            v(rank)
        ),
        Op::Loop {
            start, end, step, ..
        } => write!(out, "loop {}..{} step {step}", v(start), v(end)),
        Op::If { cond, .. } => write!(out, "if {}", v(cond)),
        Op::Barrier => out.write_str("barrier"),
        Op::Warp(w) => out.write_str(&warp_text(kernel, *w)),
        Op::ClusterBarrier => out.write_str("cluster_barrier"),
        Op::LoadRemote {
            shared,
            rank,
            index,
        } => write!(
            out,
            "load_remote {}[{}] of rank {}",
            memory_name(kernel, Memory::Shared(*shared)),
            v(index),
            v(rank)
        ),
    }
}

fn aligned_text(aligned: bool) -> &'static str {
    if aligned {
        ".aligned"
    } else {
        ""
    }
}

fn warp_text(kernel: &Kernel, w: WarpOp) -> String {
    let l = |i: u32| local_name(kernel, i);
    match w {
        WarpOp::ShuffleXor { src, dst, mask } => {
            format!("warp.shuffle_xor {} <- {}, {mask}", l(dst), l(src))
        }
        WarpOp::ShuffleIdx { src, dst, lane } => {
            format!(
                "warp.shuffle_idx {} <- {}, lane {}",
                l(dst),
                l(src),
                l(lane)
            )
        }
        WarpOp::Reduce { op, local } => {
            let name = match op {
                ReduceOp::Sum => "sum",
                ReduceOp::Min => "min",
                ReduceOp::Max => "max",
            };
            format!("warp.reduce_{name} {}", l(local))
        }
        WarpOp::Mma { a, b, acc } => {
            format!("warp.mma_m16n8k16 {} += {} * {}", l(acc), l(a), l(b))
        }
    }
}
