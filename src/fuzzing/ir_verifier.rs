//! Target `ir_verifier`: arbitrary kernels through [`verify`], [`print`] and, when the verifier
//! accepts one, the interpreter ([`interp::run`]) on small buffers.
//!
//! Inputs are decoded two ways (chosen by the first byte):
//! - **raw**: the kernel's data structures built directly from arbitrary fields, handles as
//!   arbitrary indices (many out of range, dangling, placed twice or not at all), arbitrary
//!   declared types, memory and local indices;
//! - **guided**: a kernel built with the [`Builder`] from well-typed random operations (loads,
//!   stores, locals, vectors, bit packing, selections, counted loops and ifs nested a few deep,
//!   barriers), occasionally with a deliberately ill-typed instruction, so that the verifier
//!   accepts most of them and the interpreter runs them.
//!
//! Properties: `verify` and `print` never panic; an error renders; an accepted kernel's
//! [`KernelInfo`](kvq_ir::ir::KernelInfo) covers every instruction; the interpreter never
//! panics on an accepted kernel and never reports it malformed (the verifier checks everything
//! the interpreter relies on, apart from the interpreter's own nesting limit). Kernels whose
//! loops are not bounded by small constants are verified but not run, so that every input runs
//! in bounded time.

use arbitrary::{Arbitrary, Result, Unstructured};
use half::{bf16, f16};
use kvq_ir::ir::interp::{self, Arg, Buffer, InterpError, Malformed};
use kvq_ir::ir::{
    print, verify, Access, BinaryOp, Block, Builder, CmpOp, Const, Handle, Inst, Kernel, Local,
    Memory, Op, Param, ReduceOp, ScalarType, SharedArray, Special, Type, UnaryOp, Value, WarpOp,
};
use kvq_ir::{BitOrder, Bits};

// ---------------------------------------------------------------------------------------------
// Raw kernels.

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RawScalar {
    Bool,
    U8,
    U16,
    U32,
    F16,
    BF16,
    F32,
    F64,
}

impl From<RawScalar> for ScalarType {
    fn from(s: RawScalar) -> ScalarType {
        match s {
            RawScalar::Bool => ScalarType::Bool,
            RawScalar::U8 => ScalarType::U8,
            RawScalar::U16 => ScalarType::U16,
            RawScalar::U32 => ScalarType::U32,
            RawScalar::F16 => ScalarType::F16,
            RawScalar::BF16 => ScalarType::BF16,
            RawScalar::F32 => ScalarType::F32,
            RawScalar::F64 => ScalarType::F64,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RawType {
    Scalar(RawScalar),
    Vector(RawScalar, u8),
}

impl From<RawType> for Type {
    fn from(t: RawType) -> Type {
        match t {
            RawType::Scalar(s) => Type::Scalar(s.into()),
            RawType::Vector(s, n) => Type::Vector(s.into(), n),
        }
    }
}

/// A handle: usually a small index (often in range), sometimes any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum H {
    Near(u8),
    Far(u32),
}

impl From<H> for Value {
    fn from(h: H) -> Value {
        match h {
            H::Near(i) => Handle::from_index(u32::from(i % 48)),
            H::Far(i) => Handle::from_index(i),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum RawName {
    Good(u8),
    Any(String),
}

impl RawName {
    fn text(&self, prefix: &str) -> String {
        match self {
            RawName::Good(n) => format!("{prefix}{}", n % 4),
            RawName::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RawAccess {
    Read,
    Write,
    ReadWrite,
}

impl From<RawAccess> for Access {
    fn from(a: RawAccess) -> Access {
        match a {
            RawAccess::Read => Access::Read,
            RawAccess::Write => Access::Write,
            RawAccess::ReadWrite => Access::ReadWrite,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum RawParam {
    Buffer(RawName, RawScalar, RawAccess),
    Scalar(RawName, RawScalar),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RawMemory {
    Param(u8),
    Shared(u8),
}

impl From<RawMemory> for Memory {
    fn from(m: RawMemory) -> Memory {
        match m {
            RawMemory::Param(i) => Memory::Param(u32::from(i % 8)),
            RawMemory::Shared(i) => Memory::Shared(u32::from(i % 8)),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RawConst {
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    F32(u32),
    F64(u64),
}

impl From<RawConst> for Const {
    fn from(c: RawConst) -> Const {
        match c {
            RawConst::Bool(b) => Const::Bool(b),
            RawConst::U8(x) => Const::U8(x),
            RawConst::U16(x) => Const::U16(x),
            RawConst::U32(x) => Const::U32(x),
            RawConst::F32(x) => Const::F32(x),
            RawConst::F64(x) => Const::F64(x),
        }
    }
}

const UNARY: [UnaryOp; 7] = [
    UnaryOp::Neg,
    UnaryOp::RoundEven,
    UnaryOp::Floor,
    UnaryOp::Not,
    UnaryOp::IsFinite,
    UnaryOp::Exp,
    UnaryOp::PopCount,
];
const BINARY: [BinaryOp; 14] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Rem,
    BinaryOp::Min,
    BinaryOp::Max,
    BinaryOp::And,
    BinaryOp::Or,
    BinaryOp::Shl,
    BinaryOp::Shr,
    BinaryOp::Xor,
    BinaryOp::Minimum,
    BinaryOp::Maximum,
];
const CMP: [CmpOp; 6] = [
    CmpOp::Eq,
    CmpOp::Ne,
    CmpOp::Lt,
    CmpOp::Le,
    CmpOp::Gt,
    CmpOp::Ge,
];
const BITS: [Bits; 4] = [Bits::B1, Bits::B2, Bits::B4, Bits::B8];
const ORDERS: [BitOrder; 2] = [BitOrder::Msb, BitOrder::Lsb];
const SPECIALS: [Special; 5] = [
    Special::ThreadId,
    Special::BlockId,
    Special::GridSize,
    Special::LaneId,
    Special::WarpId,
];
const REDUCE: [ReduceOp; 3] = [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max];

#[derive(Arbitrary, Debug, Clone)]
enum RawOp {
    Const(RawConst),
    ScalarParam(u8),
    Special(u8),
    Unary(u8, H),
    Binary(u8, H, H),
    Cmp(u8, H, H),
    Select(H, H, H),
    Convert(RawScalar, H),
    Bitcast(RawType, H),
    Load(RawMemory, H, u8, bool),
    Store(RawMemory, H, H, bool),
    Extract(H, u8),
    Vector(Vec<H>),
    ReadLocal(u8, H),
    WriteLocal(u8, H, H),
    PackBits(Vec<H>, u8, bool),
    UnpackBits(H, u8, u8, bool),
    SelectRank(RawMemory, H, H, H, H),
    Loop(H, H, u8, Vec<H>),
    If(H, Vec<H>, Vec<H>),
    Barrier,
    Warp(u8, u8, u8, u8),
    ClusterBarrier,
    LoadRemote(u8, H, H),
}

impl RawOp {
    fn op(&self) -> Op {
        let v = |h: &H| Value::from(*h);
        let block = |hs: &[H]| Block(hs.iter().map(v).collect());
        let order = |lsb: bool| if lsb { BitOrder::Lsb } else { BitOrder::Msb };
        match self {
            RawOp::Const(c) => Op::Const((*c).into()),
            RawOp::ScalarParam(i) => Op::ScalarParam(u32::from(*i % 8)),
            RawOp::Special(i) => Op::Special(SPECIALS[usize::from(*i) % SPECIALS.len()]),
            RawOp::Unary(o, a) => Op::Unary(UNARY[usize::from(*o) % UNARY.len()], v(a)),
            RawOp::Binary(o, a, b) => {
                Op::Binary(BINARY[usize::from(*o) % BINARY.len()], v(a), v(b))
            }
            RawOp::Cmp(o, a, b) => Op::Cmp(CMP[usize::from(*o) % CMP.len()], v(a), v(b)),
            RawOp::Select(c, a, b) => Op::Select {
                cond: v(c),
                if_true: v(a),
                if_false: v(b),
            },
            RawOp::Convert(t, a) => Op::Convert((*t).into(), v(a)),
            RawOp::Bitcast(t, a) => Op::Bitcast((*t).into(), v(a)),
            RawOp::Load(m, i, lanes, aligned) => Op::Load {
                mem: (*m).into(),
                index: v(i),
                lanes: *lanes,
                aligned: *aligned,
            },
            RawOp::Store(m, i, x, aligned) => Op::Store {
                mem: (*m).into(),
                index: v(i),
                value: v(x),
                aligned: *aligned,
            },
            RawOp::Extract(a, lane) => Op::Extract(v(a), *lane),
            RawOp::Vector(xs) => Op::Vector(xs.iter().map(v).collect()),
            RawOp::ReadLocal(l, i) => Op::ReadLocal {
                local: u32::from(*l % 8),
                index: v(i),
            },
            RawOp::WriteLocal(l, i, x) => Op::WriteLocal {
                local: u32::from(*l % 8),
                index: v(i),
                value: v(x),
            },
            RawOp::PackBits(codes, b, lsb) => Op::PackBits {
                codes: codes.iter().map(v).collect(),
                bits: BITS[usize::from(*b) % 4],
                order: order(*lsb),
            },
            RawOp::UnpackBits(byte, lane, b, lsb) => Op::UnpackBits {
                byte: v(byte),
                lane: *lane,
                bits: BITS[usize::from(*b) % 4],
                order: order(*lsb),
            },
            RawOp::SelectRank(m, base, stride, count, rank) => Op::SelectRank {
                mem: (*m).into(),
                base: v(base),
                stride: v(stride),
                count: v(count),
                rank: v(rank),
            },
            RawOp::Loop(start, end, step, body) => Op::Loop {
                start: v(start),
                end: v(end),
                step: u32::from(*step),
                body: block(body),
            },
            RawOp::If(c, then, otherwise) => Op::If {
                cond: v(c),
                then: block(then),
                otherwise: block(otherwise),
            },
            RawOp::Barrier => Op::Barrier,
            RawOp::ClusterBarrier => Op::ClusterBarrier,
            RawOp::LoadRemote(shared, rank, index) => Op::LoadRemote {
                shared: u32::from(*shared % 8),
                rank: v(rank),
                index: v(index),
            },
            RawOp::Warp(kind, a, b, c) => {
                let (a, b, c) = (u32::from(*a % 8), u32::from(*b % 8), u32::from(*c));
                Op::Warp(match kind % 4 {
                    0 => WarpOp::ShuffleXor {
                        src: a,
                        dst: b,
                        mask: c % 40,
                    },
                    1 => WarpOp::ShuffleIdx {
                        src: a,
                        dst: b,
                        lane: c % 8,
                    },
                    2 => WarpOp::Reduce {
                        op: REDUCE[usize::from(*kind / 4) % 3],
                        local: a,
                    },
                    _ => WarpOp::Mma { a, b, acc: c % 8 },
                })
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct RawKernel {
    name: RawName,
    block_size: H,
    cluster_size: u8,
    params: Vec<RawParam>,
    shared: Vec<(RawName, RawScalar, u16)>,
    locals: Vec<(RawName, RawScalar, u8, bool)>,
    insts: Vec<(RawOp, Option<RawType>)>,
    body: Vec<H>,
}

impl RawKernel {
    fn kernel(&self) -> Kernel {
        let mut insts = kvq_ir::ir::Arena::default();
        for (op, ty) in &self.insts {
            insts.append(Inst {
                op: op.op(),
                ty: ty.map(Type::from),
            });
        }
        Kernel {
            name: self.name.text("k"),
            block_size: match self.block_size {
                H::Near(n) => u32::from(n % 8),
                H::Far(n) => n,
            },
            cluster_size: u32::from(self.cluster_size % 10),
            min_blocks_per_sm: u32::from(self.cluster_size % 3),
            max_grid: None,
            params: self
                .params
                .iter()
                .map(|p| match p {
                    RawParam::Buffer(name, elem, access) => Param::Buffer {
                        name: name.text("b"),
                        elem: (*elem).into(),
                        access: (*access).into(),
                        len: None,
                    },
                    RawParam::Scalar(name, ty) => Param::Scalar {
                        name: name.text("s"),
                        ty: (*ty).into(),
                    },
                })
                .collect(),
            shared: self
                .shared
                .iter()
                .map(|(name, elem, len)| SharedArray {
                    name: name.text("sh"),
                    elem: (*elem).into(),
                    len: u32::from(*len),
                })
                .collect(),
            locals: self
                .locals
                .iter()
                .map(|(name, elem, len, zeroed)| Local {
                    name: name.text("l"),
                    elem: (*elem).into(),
                    len: u32::from(*len),
                    zeroed: *zeroed,
                })
                .collect(),
            insts,
            body: Block(self.body.iter().map(|h| Value::from(*h)).collect()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Guided kernels.

const VALUE_TYPES: [ScalarType; 8] = [
    ScalarType::Bool,
    ScalarType::U8,
    ScalarType::U16,
    ScalarType::U32,
    ScalarType::F16,
    ScalarType::BF16,
    ScalarType::F32,
    ScalarType::F64,
];
const FLOATS: [ScalarType; 4] = [
    ScalarType::F16,
    ScalarType::BF16,
    ScalarType::F32,
    ScalarType::F64,
];
const INTS: [ScalarType; 3] = [ScalarType::U8, ScalarType::U16, ScalarType::U32];
const ELEMS: [ScalarType; 7] = [
    ScalarType::U8,
    ScalarType::U16,
    ScalarType::U32,
    ScalarType::F16,
    ScalarType::BF16,
    ScalarType::F32,
    ScalarType::F64,
];

/// Builds a well-typed kernel from random choices.
struct Gen<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    /// Values usable at the current point (enclosing blocks, current region).
    scope: Vec<Value>,
    /// Instructions still to build.
    budget: u32,
    /// (memory, element, readable, writable) of every buffer parameter and shared array.
    mems: Vec<(Memory, ScalarType, bool, bool)>,
    /// Length of every shared array.
    shared_lens: Vec<u32>,
    /// Whether to place one ill-typed instruction (then cleared).
    sabotage: bool,
    /// (index, element, len) of every local.
    locals: Vec<(u32, ScalarType, u32)>,
    /// (ABI index, type) of every scalar parameter.
    scalars: Vec<(u32, ScalarType)>,
}

impl Gen<'_, '_> {
    fn int(&mut self, lo: u32, hi: u32) -> u32 {
        self.u.int_in_range(lo..=hi).unwrap_or(lo)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        *self.u.choose(xs).unwrap_or(&xs[0])
    }

    fn chance(&mut self, num: u8, den: u8) -> bool {
        self.u.ratio(num, den).unwrap_or(false)
    }

    /// A constant of `ty` (f16 and bf16 by conversion from an f32).
    fn constant(&mut self, b: &mut Builder, ty: ScalarType) -> Value {
        let raw: u64 = self.u.arbitrary().unwrap_or(0);
        let small = self.chance(3, 4);
        let v = match ty {
            ScalarType::Bool => b.bool(raw & 1 == 1),
            ScalarType::U8 => b.u8(if small { (raw % 4) as u8 } else { raw as u8 }),
            ScalarType::U16 => b.u16(if small { (raw % 8) as u16 } else { raw as u16 }),
            ScalarType::U32 => b.u32(if small { (raw % 24) as u32 } else { raw as u32 }),
            ScalarType::F32 => b.f32(if small {
                (raw % 17) as f32 - 8.0
            } else {
                f32::from_bits(raw as u32)
            }),
            ScalarType::F64 => b.f64(if small {
                (raw % 17) as f64 / 4.0
            } else {
                f64::from_bits(raw)
            }),
            ScalarType::F16 | ScalarType::BF16 => {
                let x = b.f32((raw % 33) as f32 / 2.0 - 4.0);
                b.convert(ty, x)
            }
        };
        self.scope.push(v);
        v
    }

    /// A value of scalar type `ty` in scope, or a new constant.
    fn value(&mut self, b: &mut Builder, ty: ScalarType) -> Value {
        let found: Vec<Value> = self
            .scope
            .iter()
            .copied()
            .filter(|&v| b.type_of(v) == Type::Scalar(ty))
            .collect();
        if !found.is_empty() && self.chance(3, 4) {
            self.pick(&found)
        } else {
            self.constant(b, ty)
        }
    }

    fn def(&mut self, v: Value) -> Value {
        self.scope.push(v);
        v
    }

    /// A block's instructions; `depth` enclosing loops and ifs.
    fn block(&mut self, b: &mut Builder, depth: u32) {
        let n = self.int(0, 8);
        for _ in 0..n {
            if self.budget == 0 || self.u.is_empty() {
                return;
            }
            self.budget -= 1;
            self.inst(b, depth);
        }
    }

    fn inst(&mut self, b: &mut Builder, depth: u32) {
        match self.int(0, 22) {
            0 => {
                let ty = self.pick(&VALUE_TYPES);
                self.constant(b, ty);
            }
            1 => {
                let s = self.pick(&SPECIALS);
                let v = b.special(s);
                self.def(v);
            }
            2 if !self.scalars.is_empty() => {
                let (i, _) = self.pick(&self.scalars.clone());
                let v = b.param(i);
                self.def(v);
            }
            3 => {
                let (op, ty) = if self.chance(1, 4) {
                    (
                        UnaryOp::Not,
                        self.pick(&[
                            ScalarType::Bool,
                            ScalarType::U8,
                            ScalarType::U16,
                            ScalarType::U32,
                        ]),
                    )
                } else {
                    let op = self.pick(&[
                        UnaryOp::Neg,
                        UnaryOp::RoundEven,
                        UnaryOp::Floor,
                        UnaryOp::IsFinite,
                        UnaryOp::Exp,
                    ]);
                    (op, self.pick(&FLOATS))
                };
                let a = self.value(b, ty);
                let v = b.unary(op, a);
                self.def(v);
            }
            4 => {
                let op = self.pick(&BINARY);
                let ty = match op {
                    BinaryOp::Rem | BinaryOp::Shl | BinaryOp::Shr => self.pick(&INTS),
                    BinaryOp::And | BinaryOp::Or => self.pick(&[
                        ScalarType::Bool,
                        ScalarType::U8,
                        ScalarType::U16,
                        ScalarType::U32,
                    ]),
                    _ => self.pick(&ELEMS),
                };
                let x = self.value(b, ty);
                let y = self.value(b, ty);
                let v = b.binary(op, x, y);
                self.def(v);
            }
            5 => {
                let op = self.pick(&CMP);
                let ty = match op {
                    CmpOp::Eq | CmpOp::Ne => self.pick(&VALUE_TYPES),
                    _ => self.pick(&ELEMS),
                };
                let x = self.value(b, ty);
                let y = self.value(b, ty);
                let v = b.cmp(op, x, y);
                self.def(v);
            }
            6 => {
                let ty = self.pick(&VALUE_TYPES);
                let c = self.value(b, ScalarType::Bool);
                let x = self.value(b, ty);
                let y = self.value(b, ty);
                let v = b.select(c, x, y);
                self.def(v);
            }
            7 => {
                let from = self.pick(&[
                    ScalarType::Bool,
                    ScalarType::U8,
                    ScalarType::U16,
                    ScalarType::U32,
                    ScalarType::F16,
                    ScalarType::BF16,
                    ScalarType::F32,
                    ScalarType::F64,
                ]);
                let to = self.pick(&ELEMS);
                if from == ScalarType::Bool && to.is_float() {
                    return;
                }
                let a = self.value(b, from);
                let v = b.convert(to, a);
                self.def(v);
            }
            8 => {
                let (from, to) = self.pick(&[
                    (ScalarType::F32, ScalarType::U32),
                    (ScalarType::U32, ScalarType::F32),
                    (ScalarType::F16, ScalarType::U16),
                    (ScalarType::BF16, ScalarType::U16),
                    (ScalarType::U16, ScalarType::F16),
                    (ScalarType::U16, ScalarType::BF16),
                ]);
                let a = self.value(b, from);
                let v = b.bitcast(to, a);
                self.def(v);
            }
            9 | 10 if !self.mems.is_empty() => {
                let (mem, elem, readable, writable) = self.pick(&self.mems.clone());
                let lanes = self.pick(&[1u8, 1, 2, 4, 8, 16]);
                let index = match mem {
                    // Constant indices into shared arrays must stay in bounds.
                    Memory::Shared(i) if self.chance(7, 8) => {
                        let len = self.shared_lens.get(i as usize).copied().unwrap_or(1);
                        let hi = len.saturating_sub(u32::from(lanes));
                        let at = self.int(0, hi);
                        b.u32(at)
                    }
                    _ => self.index(b),
                };
                if self.int(0, 1) == 0 && readable {
                    let v = b.load(mem, index, lanes);
                    self.def(v);
                } else if writable {
                    let lanes = u32::from(lanes.min(4));
                    let value = if lanes == 1 {
                        self.value(b, elem)
                    } else {
                        let xs = (0..lanes).map(|_| self.value(b, elem)).collect();
                        b.vector(xs)
                    };
                    b.store(mem, index, value);
                }
            }
            11 => {
                let vectors: Vec<(Value, u8)> = self
                    .scope
                    .iter()
                    .filter_map(|&v| match b.type_of(v) {
                        Type::Vector(_, n) => Some((v, n)),
                        Type::Scalar(_) => None,
                    })
                    .collect();
                if let Some(&(v, n)) = vectors.first() {
                    let lane = self.int(0, u32::from(n).saturating_sub(1)) as u8;
                    let x = b.extract(v, lane);
                    self.def(x);
                }
            }
            12 => {
                let ty = self.pick(&VALUE_TYPES);
                let n = self.int(2, 16);
                let xs = (0..n).map(|_| self.value(b, ty)).collect();
                let v = b.vector(xs);
                self.def(v);
            }
            13 | 14 if !self.locals.is_empty() => {
                let (local, elem, len) = self.pick(&self.locals.clone());
                let index = if self.chance(3, 4) {
                    let i = self.int(0, len - 1);
                    b.u32(i)
                } else {
                    self.index(b)
                };
                if self.chance(1, 2) {
                    let v = b.read_local(local, index);
                    self.def(v);
                } else {
                    let value = self.value(b, elem);
                    b.write_local(local, index, value);
                }
            }
            15 => {
                let bits = self.pick(&BITS);
                let order = self.pick(&ORDERS);
                let n = 8 / bits.width();
                let codes = (0..n)
                    .map(|_| {
                        let over = u32::from(self.chance(1, 16));
                        let c = self.int(0, u32::from(bits.max_code()) + over);
                        b.u8(c as u8)
                    })
                    .collect();
                let v = b.pack_bits(codes, bits, order);
                self.def(v);
            }
            16 => {
                let bits = self.pick(&BITS);
                let order = self.pick(&ORDERS);
                let byte = self.value(b, ScalarType::U8);
                let lane = self.int(0, 8 / bits.width() - 1) as u8;
                let v = b.unpack_bits(byte, lane, bits, order);
                self.def(v);
            }
            17 => {
                let floats: Vec<_> = self
                    .mems
                    .iter()
                    .filter(|m| m.1.is_float() && m.2)
                    .copied()
                    .collect();
                if let Some(&(mem, ..)) = floats.first() {
                    let base = self.index(b);
                    let stride = self.small(b, 3);
                    let count = self.small(b, 6);
                    let rank = self.small(b, 6);
                    let v = b.select_rank(mem, base, stride, count, rank);
                    self.def(v);
                }
            }
            18 if depth < 3 => {
                let s = self.int(0, 4);
                let e = s + self.int(0, 6);
                let step = self.int(1, 3);
                let (start, end) = (b.u32(s), b.u32(e));
                let mark = self.scope.len();
                b.for_range(start, end, step, |b, i| {
                    self.scope.push(i);
                    self.block(b, depth + 1);
                });
                self.scope.truncate(mark);
            }
            19 if depth < 3 => {
                let cond = self.value(b, ScalarType::Bool);
                let mark = self.scope.len();
                // Both branch builders need the generator; they run one after the other.
                let gen = std::cell::RefCell::new(&mut *self);
                let branch = |b: &mut Builder| {
                    let mut g = gen.borrow_mut();
                    g.block(b, depth + 1);
                    g.scope.truncate(mark);
                };
                b.if_else(cond, branch, branch);
            }
            20 if depth == 0 => {
                b.barrier();
                self.scope.clear();
            }
            21 if self.sabotage => {
                // A deliberately ill-typed instruction (the verifier must reject it).
                self.sabotage = false;
                let x = self.value(b, ScalarType::U32);
                let y = self.value(b, ScalarType::F32);
                let v = b.push(
                    Op::Binary(BinaryOp::Add, x, y),
                    Some(Type::Scalar(ScalarType::U32)),
                );
                self.def(v);
            }
            _ => {
                let v = self.index(b);
                let w = self.index(b);
                let v = b.add(v, w);
                self.def(v);
            }
        }
    }

    /// A U32 index: a small constant, a coordinate, or a value in scope.
    fn index(&mut self, b: &mut Builder) -> Value {
        match self.int(0, 3) {
            0 => self.small(b, 40),
            1 => {
                let s = self.pick(&SPECIALS);
                b.special(s)
            }
            _ => self.value(b, ScalarType::U32),
        }
    }

    fn small(&mut self, b: &mut Builder, max: u32) -> Value {
        let n = self.int(0, max);
        b.u32(n)
    }
}

fn guided(u: &mut Unstructured<'_>) -> Result<Kernel> {
    let mut b = Builder::new("fuzz", u.int_in_range(1..=4)?);
    let mut mems = Vec::new();
    let mut scalars = Vec::new();
    let mut locals = Vec::new();
    let mut abi = 0u32;
    for i in 0..u.int_in_range(0..=3)? {
        let elem = *u.choose(&ELEMS)?;
        let access = *u.choose(&[Access::Read, Access::Write, Access::ReadWrite])?;
        let mem = b.buffer(&format!("buf{i}"), elem, access);
        mems.push((mem, elem, access != Access::Write, access != Access::Read));
        abi += 1;
    }
    for i in 0..u.int_in_range(0..=2)? {
        let ty = *u.choose(&[ScalarType::U32, ScalarType::F32])?;
        b.scalar_param(&format!("arg{i}"), ty);
        scalars.push((abi, ty));
        abi += 1;
    }
    let mut shared_lens = Vec::new();
    for i in 0..u.int_in_range(0..=2)? {
        // Shared arrays may hold Bool too (buffers cannot: no argument type carries it).
        let elem = *u.choose(&VALUE_TYPES)?;
        let len = u.int_in_range(1..=32)?;
        let mem = b.shared(&format!("sh{i}"), elem, len);
        mems.push((mem, elem, true, true));
        shared_lens.push(len);
    }
    for i in 0..u.int_in_range(0..=3)? {
        let elem = *u.choose(&VALUE_TYPES)?;
        let len = u.int_in_range(1..=8)?;
        let local = b.local(&format!("loc{i}"), elem, len);
        locals.push((local, elem, len));
    }
    let sabotage = u.ratio(1u8, 8)?;
    let mut gen = Gen {
        u,
        scope: Vec::new(),
        budget: 64,
        mems,
        shared_lens,
        sabotage,
        locals,
        scalars,
    };
    while gen.budget > 0 && !gen.u.is_empty() {
        gen.block(&mut b, 0);
    }
    Ok(b.finish())
}

// ---------------------------------------------------------------------------------------------
// Running.

/// Most instructions a run may execute (per thread, estimated statically).
const MAX_WORK: u64 = 1 << 16;

/// Statically bounded work of `block`, or `None` when a loop bound is not a small constant.
fn work(kernel: &Kernel, block: &Block, depth: u32) -> Option<u64> {
    if depth > 64 {
        return None;
    }
    let konst = |v: Value| match kernel.insts.try_get(v)?.op {
        Op::Const(Const::U32(x)) => Some(u64::from(x)),
        _ => None,
    };
    let mut total = 0u64;
    for &h in &block.0 {
        let w = match &kernel.insts.try_get(h)?.op {
            Op::Loop {
                start,
                end,
                step,
                body,
            } => {
                let trips = konst(*end)?
                    .saturating_sub(konst(*start)?)
                    .div_ceil(u64::from((*step).max(1)));
                1 + trips.checked_mul(work(kernel, body, depth + 1)? + 1)?
            }
            Op::If {
                then, otherwise, ..
            } => 1 + work(kernel, then, depth + 1)? + work(kernel, otherwise, depth + 1)?,
            Op::SelectRank { .. } => 64,
            _ => 1,
        };
        total = total.checked_add(w)?;
        if total > MAX_WORK {
            return None;
        }
    }
    Some(total)
}

/// Arguments for `kernel`'s parameters: small buffers of arbitrary contents.
fn args(u: &mut Unstructured<'_>, kernel: &Kernel) -> Result<Option<Vec<Arg>>> {
    let mut out = Vec::new();
    for p in &kernel.params {
        out.push(match p {
            Param::Buffer { elem, .. } => {
                let len = u.int_in_range(0..=40)?;
                let Some(mut buf) = Buffer::zeros(*elem, len) else {
                    return Ok(None);
                };
                for i in 0..len {
                    let raw: u64 = u.arbitrary()?;
                    let x = (raw % 64) as f32 / 4.0 - 8.0;
                    let val = match elem {
                        ScalarType::U8 => interp::Val::U8(raw as u8),
                        ScalarType::U16 => interp::Val::U16(raw as u16),
                        ScalarType::U32 => interp::Val::U32(raw as u32 % 64),
                        ScalarType::F16 => interp::Val::F16(f16::from_f32(x)),
                        ScalarType::BF16 => interp::Val::BF16(bf16::from_f32(x)),
                        ScalarType::F32 => interp::Val::F32(if raw & 0x100 == 0 {
                            x
                        } else {
                            f32::from_bits(raw as u32)
                        }),
                        _ => interp::Val::F64(f64::from(x)),
                    };
                    buf.set(i, &val);
                }
                Arg::Buffer(buf)
            }
            Param::Scalar { ty, .. } => match ty {
                ScalarType::F32 => Arg::F32(f32::from(u.arbitrary::<i8>()?) / 4.0),
                _ => Arg::U32(u.int_in_range(0..=40)?),
            },
        });
    }
    Ok(Some(out))
}

/// How far an input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The bytes did not decode into a kernel.
    Undecoded,
    /// The verifier rejected the kernel.
    Rejected,
    /// The verifier accepted it, but it was not run (unbounded loops, large blocks, a Bool
    /// buffer).
    Accepted,
    /// The interpreter ran it (to completion or to a runtime error).
    Ran,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    stage(data);
}

/// Runs one input and says how far it got (for judging the generators).
pub fn stage(data: &[u8]) -> Stage {
    let mut u = Unstructured::new(data);
    let raw_mode = u.arbitrary::<u8>().is_ok_and(|b| b % 4 == 0);
    let kernel = if raw_mode {
        match RawKernel::arbitrary(&mut u) {
            Ok(raw) => raw.kernel(),
            Err(_) => return Stage::Undecoded,
        }
    } else {
        match guided(&mut u) {
            Ok(kernel) => kernel,
            Err(_) => return Stage::Undecoded,
        }
    };
    let text = print(&kernel);
    let info = match verify(&kernel) {
        Ok(info) => info,
        Err(e) => {
            assert!(!e.errors.is_empty(), "a verify error without findings");
            drop(e.to_string());
            return Stage::Rejected;
        }
    };
    assert_eq!(info.types.len(), kernel.insts.len(), "types of {text}");
    if kernel.block_size > 64 || work(&kernel, &kernel.body, 0).is_none() {
        return Stage::Accepted;
    }
    let locals: u64 = kernel.locals.iter().map(|l| u64::from(l.len)).sum();
    if locals.saturating_mul(u64::from(kernel.block_size)) > 1 << 14 {
        return Stage::Accepted;
    }
    let Ok(Some(mut args)) = args(&mut u, &kernel) else {
        return Stage::Accepted;
    };
    let grid = u.int_in_range(1..=3).unwrap_or(1);
    match interp::run(&kernel, &mut args, grid) {
        Err(InterpError::Malformed {
            problem: Malformed::TooDeep,
            ..
        }) => {}
        Err(e @ InterpError::Malformed { .. }) => {
            panic!("the verifier accepted a kernel the interpreter finds malformed: {e}\n{text}")
        }
        Err(e) => drop(e.to_string()),
        Ok(()) => {}
    }
    Stage::Ran
}
