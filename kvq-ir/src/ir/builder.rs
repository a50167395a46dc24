//! A convenience builder for kernels: appends instructions to the innermost open block and
//! derives result types. It does not check anything; [`super::verify`] does.

use super::kernel::{
    Access, BinaryOp, Block, CmpOp, Const, Inst, Kernel, Local, Memory, Op, Param, ScalarType,
    SharedArray, Special, Type, UnaryOp, Value, WarpOp,
};
use super::length::Len;
use crate::scheme::{BitOrder, Bits};

/// Builds a [`Kernel`] in program order.
#[derive(Debug)]
pub struct Builder {
    kernel: Kernel,
    open: Vec<Vec<Value>>,
}

impl Builder {
    /// A kernel named `name` run by blocks of `block_size` threads.
    pub fn new(name: &str, block_size: u32) -> Builder {
        Builder {
            kernel: Kernel {
                name: name.to_string(),
                block_size,
                cluster_size: 1,
                min_blocks_per_sm: 0,
                params: Vec::new(),
                max_grid: None,
                shared: Vec::new(),
                locals: Vec::new(),
                insts: Default::default(),
                body: Block::default(),
            },
            open: vec![Vec::new()],
        }
    }

    /// Declares a buffer parameter and returns the memory it names.
    pub fn buffer(&mut self, name: &str, elem: ScalarType, access: Access) -> Memory {
        self.kernel.params.push(Param::Buffer {
            name: name.to_string(),
            elem,
            access,
            len: None,
        });
        Memory::Param(self.kernel.params.len() as u32 - 1)
    }

    /// Declares a buffer parameter of at least `len` elements per launch.
    pub fn sized_buffer(
        &mut self,
        name: &str,
        elem: ScalarType,
        access: Access,
        len: Len,
    ) -> Memory {
        let m = self.buffer(name, elem, access);
        if let Some(Param::Buffer { len: l, .. }) = self.kernel.params.last_mut() {
            *l = Some(len);
        }
        m
    }

    /// States the most blocks a launch may have ([`Kernel::max_grid`]).
    pub fn max_grid(&mut self, len: Len) {
        self.kernel.max_grid = Some(len);
    }

    /// Declares a scalar parameter and returns its ABI index.
    pub fn scalar_param(&mut self, name: &str, ty: ScalarType) -> u32 {
        self.kernel.params.push(Param::Scalar {
            name: name.to_string(),
            ty,
        });
        self.kernel.params.len() as u32 - 1
    }

    /// Declares a block-shared array.
    pub fn shared(&mut self, name: &str, elem: ScalarType, len: u32) -> Memory {
        self.kernel.shared.push(SharedArray {
            name: name.to_string(),
            elem,
            len,
        });
        Memory::Shared(self.kernel.shared.len() as u32 - 1)
    }

    /// Bytes of shared memory the arrays declared so far take per block
    /// ([`shared_layout`](super::kernel::shared_layout)).
    pub fn shared_bytes(&self) -> u64 {
        super::kernel::shared_layout(&self.kernel.shared).1
    }

    /// Declares a per-thread variable of `len` elements, zero when a block starts.
    pub fn local(&mut self, name: &str, elem: ScalarType, len: u32) -> u32 {
        self.declare_local(name, elem, len, true)
    }

    /// Declares a per-thread variable of `len` elements that is not zeroed when a block starts:
    /// the kernel writes each element before reading it ([`Local::zeroed`]). For large tables
    /// built before use, whose fill would cost as much as building them.
    pub fn unzeroed_local(&mut self, name: &str, elem: ScalarType, len: u32) -> u32 {
        self.declare_local(name, elem, len, false)
    }

    fn declare_local(&mut self, name: &str, elem: ScalarType, len: u32, zeroed: bool) -> u32 {
        self.kernel.locals.push(Local {
            name: name.to_string(),
            elem,
            len,
            zeroed,
        });
        self.kernel.locals.len() as u32 - 1
    }

    /// The type of `v` (scalar U32 if `v` has none, which the verifier will reject).
    pub fn type_of(&self, v: Value) -> Type {
        self.kernel
            .insts
            .try_get(v)
            .and_then(|i| i.ty)
            .unwrap_or(Type::Scalar(ScalarType::U32))
    }

    fn elem_of(&self, mem: Memory) -> ScalarType {
        let elem = match mem {
            Memory::Param(i) => match self.kernel.params.get(i as usize) {
                Some(Param::Buffer { elem, .. }) => Some(*elem),
                _ => None,
            },
            Memory::Shared(i) => self.kernel.shared.get(i as usize).map(|s| s.elem),
        };
        elem.unwrap_or(ScalarType::U8)
    }

    /// Appends an instruction to the innermost open block.
    pub fn push(&mut self, op: Op, ty: Option<Type>) -> Value {
        let v = self.kernel.insts.append(Inst { op, ty });
        if let Some(block) = self.open.last_mut() {
            block.push(v);
        }
        v
    }

    fn scalar(&mut self, op: Op, ty: ScalarType) -> Value {
        self.push(op, Some(Type::Scalar(ty)))
    }

    /// A U32 constant.
    pub fn u32(&mut self, v: u32) -> Value {
        self.scalar(Op::Const(Const::U32(v)), ScalarType::U32)
    }

    /// A U8 constant.
    pub fn u8(&mut self, v: u8) -> Value {
        self.scalar(Op::Const(Const::U8(v)), ScalarType::U8)
    }

    /// A U16 constant.
    pub fn u16(&mut self, v: u16) -> Value {
        self.scalar(Op::Const(Const::U16(v)), ScalarType::U16)
    }

    /// An F32 constant.
    pub fn f32(&mut self, v: f32) -> Value {
        self.scalar(Op::Const(Const::F32(v.to_bits())), ScalarType::F32)
    }

    /// An F64 constant.
    pub fn f64(&mut self, v: f64) -> Value {
        self.scalar(Op::Const(Const::F64(v.to_bits())), ScalarType::F64)
    }

    /// A Bool constant.
    pub fn bool(&mut self, v: bool) -> Value {
        self.scalar(Op::Const(Const::Bool(v)), ScalarType::Bool)
    }

    /// The value of scalar parameter `index`.
    pub fn param(&mut self, index: u32) -> Value {
        let ty = match self.kernel.params.get(index as usize) {
            Some(Param::Scalar { ty, .. }) => *ty,
            _ => ScalarType::U32,
        };
        self.scalar(Op::ScalarParam(index), ty)
    }

    /// An execution coordinate.
    pub fn special(&mut self, s: Special) -> Value {
        self.scalar(Op::Special(s), ScalarType::U32)
    }

    /// A one-operand operation.
    pub fn unary(&mut self, op: UnaryOp, a: Value) -> Value {
        let ty = match op {
            UnaryOp::IsFinite => Type::Scalar(ScalarType::Bool),
            _ => self.type_of(a),
        };
        self.push(Op::Unary(op, a), Some(ty))
    }

    /// A two-operand operation; the result has `a`'s type.
    pub fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        let ty = self.type_of(a);
        self.push(Op::Binary(op, a, b), Some(ty))
    }

    /// `a + b`.
    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a - b`.
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a * b`.
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b`.
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `a % b`.
    pub fn rem(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Rem, a, b)
    }

    /// `min(a, b)`.
    pub fn min(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Min, a, b)
    }

    /// `max(a, b)`.
    pub fn max(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Max, a, b)
    }

    /// IEEE 754-2019 `minimum` of two floats ([`BinaryOp::Minimum`]).
    pub fn minimum(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Minimum, a, b)
    }

    /// IEEE 754-2019 `maximum` of two floats ([`BinaryOp::Maximum`]).
    pub fn maximum(&mut self, a: Value, b: Value) -> Value {
        self.binary(BinaryOp::Maximum, a, b)
    }

    /// A comparison.
    pub fn cmp(&mut self, op: CmpOp, a: Value, b: Value) -> Value {
        self.scalar(Op::Cmp(op, a, b), ScalarType::Bool)
    }

    /// `if cond { a } else { b }`.
    pub fn select(&mut self, cond: Value, if_true: Value, if_false: Value) -> Value {
        let ty = self.type_of(if_true);
        self.push(
            Op::Select {
                cond,
                if_true,
                if_false,
            },
            Some(ty),
        )
    }

    /// A numeric conversion.
    pub fn convert(&mut self, to: ScalarType, a: Value) -> Value {
        self.scalar(Op::Convert(to, a), to)
    }

    /// The bits of `a` reinterpreted as the scalar `to` (F32 <-> U32).
    pub fn bitcast(&mut self, to: ScalarType, a: Value) -> Value {
        self.bitcast_to(Type::Scalar(to), a)
    }

    /// The bits of `a` reinterpreted as `to` (also `u8x16` <-> `u32x4` and the like).
    pub fn bitcast_to(&mut self, to: Type, a: Value) -> Value {
        self.push(Op::Bitcast(to, a), Some(to))
    }

    /// Loads `lanes` elements.
    pub fn load(&mut self, mem: Memory, index: Value, lanes: u8) -> Value {
        self.load_with(mem, index, lanes, false)
    }

    /// Loads `lanes` elements at an index that is a multiple of `lanes` (see [`Op::Load`]).
    pub fn load_aligned(&mut self, mem: Memory, index: Value, lanes: u8) -> Value {
        self.load_with(mem, index, lanes, true)
    }

    fn load_with(&mut self, mem: Memory, index: Value, lanes: u8, aligned: bool) -> Value {
        let elem = self.elem_of(mem);
        let ty = if lanes == 1 {
            Type::Scalar(elem)
        } else {
            Type::Vector(elem, lanes)
        };
        let op = Op::Load {
            mem,
            index,
            lanes,
            aligned,
        };
        self.push(op, Some(ty))
    }

    /// Stores a scalar or vector.
    pub fn store(&mut self, mem: Memory, index: Value, value: Value) {
        let op = Op::Store {
            mem,
            index,
            value,
            aligned: false,
        };
        self.push(op, None);
    }

    /// Stores a vector at an index that is a multiple of its lanes (see [`Op::Load`]).
    pub fn store_aligned(&mut self, mem: Memory, index: Value, value: Value) {
        let op = Op::Store {
            mem,
            index,
            value,
            aligned: true,
        };
        self.push(op, None);
    }

    /// Lane `lane` of a vector.
    pub fn extract(&mut self, v: Value, lane: u8) -> Value {
        let elem = self.type_of(v).elem();
        self.scalar(Op::Extract(v, lane), elem)
    }

    /// A vector of scalars.
    pub fn vector(&mut self, values: Vec<Value>) -> Value {
        let elem = values
            .first()
            .map_or(ScalarType::U8, |&v| self.type_of(v).elem());
        let lanes = values.len() as u8;
        self.push(Op::Vector(values), Some(Type::Vector(elem, lanes)))
    }

    /// Reads element `index` of a local.
    pub fn read_local(&mut self, local: u32, index: Value) -> Value {
        let elem = self
            .kernel
            .locals
            .get(local as usize)
            .map_or(ScalarType::U32, |l| l.elem);
        self.scalar(Op::ReadLocal { local, index }, elem)
    }

    /// Writes element `index` of a local.
    pub fn write_local(&mut self, local: u32, index: Value, value: Value) {
        self.push(
            Op::WriteLocal {
                local,
                index,
                value,
            },
            None,
        );
    }

    /// Packs codes into a byte.
    pub fn pack_bits(&mut self, codes: Vec<Value>, bits: Bits, order: BitOrder) -> Value {
        self.scalar(Op::PackBits { codes, bits, order }, ScalarType::U8)
    }

    /// Code `lane` of a packed byte.
    pub fn unpack_bits(&mut self, byte: Value, lane: u8, bits: Bits, order: BitOrder) -> Value {
        self.scalar(
            Op::UnpackBits {
                byte,
                lane,
                bits,
                order,
            },
            ScalarType::U8,
        )
    }

    /// The exact `rank`-th smallest of a strided run of elements, as f32.
    pub fn select_rank(
        &mut self,
        mem: Memory,
        base: Value,
        stride: Value,
        count: Value,
        rank: Value,
    ) -> Value {
        self.scalar(
            Op::SelectRank {
                mem,
                base,
                stride,
                count,
                rank,
            },
            ScalarType::F32,
        )
    }

    /// `for i in (start..end).step_by(step)`, with `body` building the loop body from `i`.
    pub fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: u32,
        body: impl FnOnce(&mut Builder, Value),
    ) {
        let i = self.push(
            Op::Loop {
                start,
                end,
                step,
                body: Block::default(),
            },
            Some(Type::Scalar(ScalarType::U32)),
        );
        self.open.push(Vec::new());
        body(self, i);
        let insts = self.open.pop().unwrap_or_default();
        if let Some(Inst {
            op: Op::Loop { body, .. },
            ..
        }) = self.kernel.insts.get_mut(i)
        {
            *body = Block(insts);
        }
    }

    /// `if cond { then } else { otherwise }`.
    pub fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Builder),
        otherwise: impl FnOnce(&mut Builder),
    ) {
        self.open.push(Vec::new());
        then(self);
        let then_block = Block(self.open.pop().unwrap_or_default());
        self.open.push(Vec::new());
        otherwise(self);
        let else_block = Block(self.open.pop().unwrap_or_default());
        self.push(
            Op::If {
                cond,
                then: then_block,
                otherwise: else_block,
            },
            None,
        );
    }

    /// `if cond { then }`.
    pub fn if_then(&mut self, cond: Value, then: impl FnOnce(&mut Builder)) {
        self.if_else(cond, then, |_| {});
    }

    /// A block-wide barrier.
    pub fn barrier(&mut self) {
        self.push(Op::Barrier, None);
    }

    /// A warp collective on locals.
    pub fn warp(&mut self, op: WarpOp) {
        self.push(Op::Warp(op), None);
    }

    /// Asks for `blocks` resident blocks per SM ([`Kernel::min_blocks_per_sm`]).
    pub fn min_blocks_per_sm(&mut self, blocks: u32) {
        self.kernel.min_blocks_per_sm = blocks;
    }

    /// Makes the kernel run in clusters of `blocks` blocks ([`Kernel::cluster_size`]).
    pub fn cluster(&mut self, blocks: u32) {
        self.kernel.cluster_size = blocks;
    }

    /// A barrier over the block's cluster.
    pub fn cluster_barrier(&mut self) {
        self.push(Op::ClusterBarrier, None);
    }

    /// Element `index` of shared array `mem` of the cluster's block of rank `rank`.
    pub fn load_remote(&mut self, mem: Memory, rank: Value, index: Value) -> Value {
        let shared = match mem {
            Memory::Shared(i) => i,
            // Not a shared array: an index the verifier reports as out of range.
            Memory::Param(_) => u32::MAX,
        };
        let ty = self
            .kernel
            .shared
            .get(shared as usize)
            .map(|s| Type::Scalar(s.elem));
        self.push(
            Op::LoadRemote {
                shared,
                rank,
                index,
            },
            ty,
        )
    }

    /// The kernel, with everything built so far as its body.
    pub fn finish(mut self) -> Kernel {
        self.kernel.body = Block(self.open.pop().unwrap_or_default());
        self.kernel
    }
}
