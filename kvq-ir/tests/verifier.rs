//! The verifier: a valid kernel passes with the right `KernelInfo`; each invariant, broken on its
//! own, gives exactly its finding (kind and location); several breakages are all reported.

use kvq_ir::ir::print::print;
use kvq_ir::ir::verify::{FindingKind, Item, TypeClass};
use kvq_ir::ir::{
    verify, Access, BinaryOp, Builder, CmpOp, Const, Inst, Kernel, Memory, Op, ReduceOp,
    ScalarType, Special, Type, UnaryOp, Value, WarpOp,
};
use kvq_ir::{BitOrder, Bits};
use ScalarType::*;

type Found = Vec<(Option<Value>, FindingKind)>;

fn findings(k: &Kernel) -> Found {
    match verify(k) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|f| (f.at, f.kind)).collect(),
    }
}

#[track_caller]
fn assert_findings(k: &Kernel, expected: &[(Option<Value>, FindingKind)]) {
    assert_eq!(findings(k), expected, "\n{}", print(k));
}

#[track_caller]
fn assert_valid(k: &Kernel) {
    if let Err(e) = verify(k) {
        panic!("{e}\n{}", print(k));
    }
}

fn sc(s: ScalarType) -> Type {
    Type::Scalar(s)
}

fn set_op(k: &mut Kernel, h: Value, op: Op) {
    k.insts.get_mut(h).expect("in range").op = op;
}

fn set_ty(k: &mut Kernel, h: Value, ty: Option<Type>) {
    k.insts.get_mut(h).expect("in range").ty = ty;
}

/// The declarations most tests use.
struct D {
    /// f16 buffer, read.
    x: Memory,
    /// f32 buffer, write.
    out: Memory,
    /// u8 buffer, read_write.
    codes: Memory,
    /// u32 scalar parameter.
    n: u32,
    /// f32 shared array of 64.
    s: Memory,
    /// f32 local of 4.
    acc: u32,
}

fn base(name: &str) -> (Builder, D) {
    let mut b = Builder::new(name, 64);
    let d = D {
        x: b.buffer("x", F16, Access::Read),
        out: b.buffer("out", F32, Access::Write),
        codes: b.buffer("codes", U8, Access::ReadWrite),
        n: b.scalar_param("n", U32),
        s: b.shared("s", F32, 64),
        acc: b.local("acc", F32, 4),
    };
    (b, d)
}

// ---------------------------------------------------------------------------------------------
// Valid kernels and KernelInfo.

#[test]
fn accepts_a_valid_kernel_and_describes_it() {
    let mut b = Builder::new("valid_k", 256);
    let x = b.buffer("x", F16, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let codes = b.buffer("codes", U8, Access::ReadWrite);
    let n = b.scalar_param("n", U32);
    let scale = b.scalar_param("scale", F32);
    let s = b.shared("s", F32, 256); // 1024 bytes
    let h = b.shared("h", F16, 10); // 20 bytes
    let acc = b.local("acc", F32, 4);
    let flag = b.local("flag", Bool, 1);
    let tid = b.special(Special::ThreadId);
    let _blk = b.special(Special::BlockId);
    let nv = b.param(n);
    let sv = b.param(scale);
    let z = b.u32(0);
    let v = b.load(x, z, 8);
    let e = b.extract(v, 7);
    let f = b.convert(F32, e);
    let fin = b.unary(UnaryOp::IsFinite, f);
    let _neg = b.unary(UnaryOp::Neg, f);
    let nf = b.unary(UnaryOp::Not, fin);
    b.write_local(flag, z, nf);
    let scaled = b.mul(f, sv);
    b.for_range(tid, nv, 256, |b, i| {
        let lt = b.cmp(CmpOp::Lt, i, nv);
        b.if_else(
            lt,
            |b| {
                let y = b.convert(F32, i);
                b.store(s, tid, y);
                b.write_local(acc, z, y);
                let y16 = b.convert(F16, y);
                let hz = b.u32(9);
                b.store(h, hz, y16);
            },
            |b| {
                let q = b.u8(1);
                let byte = b.pack_bits(vec![q; 4], Bits::B2, BitOrder::Lsb);
                b.store(codes, i, byte);
            },
        );
        b.for_range(i, nv, 1, |b, j| {
            let sum = b.add(i, j);
            let _ = b.binary(BinaryOp::Rem, sum, nv);
            let _ = b.read_local(acc, j);
            b.write_local(acc, j, scaled);
        });
    });
    b.barrier();
    let one = b.u32(1);
    let base = b.u32(0);
    let cnt = b.u32(256);
    let r = b.u32(3);
    let m = b.select_rank(s, base, one, cnt, r);
    let m16 = b.select_rank(x, base, one, cnt, r);
    let a = b.read_local(acc, base);
    let sum = b.add(m, a);
    let sum = b.max(sum, m16);
    let vecv = b.vector(vec![sum, sum, sum, sum]);
    b.store(out, base, vecv);
    let byte = b.load(codes, base, 1);
    let c0 = b.unpack_bits(byte, 3, Bits::B2, BitOrder::Msb);
    let c32 = b.convert(U32, c0);
    let sh = b.binary(BinaryOp::Shl, c32, one);
    let t = b.bool(true);
    let bu = b.convert(U32, t);
    let both = b.binary(BinaryOp::And, t, t);
    let sel = b.select(both, sh, bu);
    let c8 = b.convert(U8, sel);
    b.store(codes, one, c8);
    b.barrier();
    let d = b.f64(0.25);
    let fl = b.unary(UnaryOp::Floor, d);
    let eq = b.cmp(CmpOp::Eq, fl, d);
    let bt = b.bool(false);
    let _ = b.cmp(CmpOp::Ne, eq, bt);
    let k = b.finish();

    let info = verify(&k).unwrap_or_else(|e| panic!("{e}\n{}", print(&k)));
    let types: Vec<Option<Type>> = k.insts.iter().map(|(_, i)| i.ty).collect();
    assert_eq!(info.types, types);
    assert_eq!(info.types[v.index()], Some(Type::Vector(F16, 8)));
    assert_eq!(info.types[e.index()], Some(sc(F16)));
    assert_eq!(info.types[vecv.index()], Some(Type::Vector(F32, 4)));
    assert_eq!(info.types[k.body.0.last().unwrap().index()], Some(sc(Bool)));
    assert_eq!(info.shared_bytes, 256 * 4 + 10 * 2);
    assert_eq!(info.regions, 3);
}

#[test]
fn empty_kernel_has_one_region_and_no_shared_memory() {
    let k = Builder::new("empty", 1).finish();
    let info = verify(&k).unwrap();
    assert!(info.types.is_empty());
    assert_eq!(info.shared_bytes, 0);
    assert_eq!(info.regions, 1);
}

// ---------------------------------------------------------------------------------------------
// 1. Handles in range.

#[test]
fn inv1_block_entry_out_of_range() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(0);
    let e = b.u32(4);
    b.for_range(a, e, 1, |b, _| {
        b.u32(7);
    });
    let mut k = b.finish();
    let lp = k.body.0[2];
    let bad = Value::from_index(40);
    k.body.0.push(bad);
    if let Op::Loop { body, .. } = &mut k.insts.get_mut(lp).unwrap().op {
        body.0.push(Value::from_index(41));
    }
    assert_findings(
        &k,
        &[
            (
                Some(lp),
                FindingKind::EntryOutOfRange {
                    entry: Value::from_index(41),
                    arena_len: 4,
                },
            ),
            (
                None,
                FindingKind::EntryOutOfRange {
                    entry: bad,
                    arena_len: 4,
                },
            ),
        ],
    );
}

#[test]
fn inv1_operand_out_of_range() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    let s = b.add(a, a);
    let mut k = b.finish();
    let bad = Value::from_index(9);
    set_op(&mut k, s, Op::Binary(BinaryOp::Add, a, bad));
    assert_findings(
        &k,
        &[(
            Some(s),
            FindingKind::OperandOutOfRange {
                operand: bad,
                arena_len: 2,
            },
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Placement.

#[test]
fn inv2_placed_twice_is_reported_once() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    b.u32(2);
    let mut k = b.finish();
    k.body.0.push(a);
    k.body.0.push(a);
    assert_findings(
        &k,
        &[
            (Some(a), FindingKind::PlacedMoreThanOnce),
            (Some(a), FindingKind::PlacedMoreThanOnce),
        ],
    );
}

#[test]
fn inv2_placed_in_two_blocks() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(0);
    let t = b.bool(true);
    b.if_then(t, |b| {
        b.u32(5);
    });
    let mut k = b.finish();
    let iff = k.body.0[2];
    let Op::If { then, .. } = &k.insts[iff].op else {
        unreachable!()
    };
    let five = then.0[0];
    // The constant 5 is also placed at top level, after the If.
    k.body.0.push(five);
    let _ = a;
    assert_findings(&k, &[(Some(five), FindingKind::PlacedMoreThanOnce)]);
}

#[test]
fn inv2_loop_in_its_own_body_terminates() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(0);
    let e = b.u32(4);
    b.for_range(a, e, 1, |_, _| {});
    let mut k = b.finish();
    let lp = k.body.0[2];
    if let Op::Loop { body, .. } = &mut k.insts.get_mut(lp).unwrap().op {
        body.0.push(lp);
    }
    assert_findings(&k, &[(Some(lp), FindingKind::PlacedMoreThanOnce)]);
}

#[test]
fn inv2_instruction_in_no_block() {
    let mut b = Builder::new("k", 1);
    b.u32(1);
    let mut k = b.finish();
    let stray = k.insts.append(Inst {
        op: Op::Const(Const::U32(2)),
        ty: Some(sc(U32)),
    });
    assert_findings(&k, &[(Some(stray), FindingKind::NotPlaced)]);
}

// ---------------------------------------------------------------------------------------------
// 3. Definition before use.

#[test]
fn inv3_use_before_definition() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    let s = b.add(a, a);
    let later = b.u32(2);
    let mut k = b.finish();
    set_op(&mut k, s, Op::Binary(BinaryOp::Add, a, later));
    assert_findings(
        &k,
        &[(Some(s), FindingKind::UseBeforeDef { operand: later })],
    );
}

#[test]
fn inv3_use_of_itself() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    let s = b.add(a, a);
    let mut k = b.finish();
    set_op(&mut k, s, Op::Binary(BinaryOp::Add, s, a));
    assert_findings(&k, &[(Some(s), FindingKind::UseBeforeDef { operand: s })]);
}

#[test]
fn inv3_value_of_a_closed_block_is_not_in_scope() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(0);
    let e = b.u32(4);
    let mut inner = None;
    b.for_range(a, e, 1, |b, i| {
        inner = Some(b.add(i, i));
    });
    let inner = inner.unwrap();
    let after = b.add(a, a);
    let mut k = b.finish();
    set_op(&mut k, after, Op::Binary(BinaryOp::Add, a, inner));
    assert_findings(
        &k,
        &[(Some(after), FindingKind::NotInScope { operand: inner })],
    );
}

#[test]
fn inv3_value_of_the_other_branch_is_not_in_scope() {
    let mut b = Builder::new("k", 1);
    let t = b.bool(true);
    let (mut in_then, mut in_else) = (None, None);
    b.if_else(
        t,
        |b| in_then = Some(b.u32(1)),
        |b| {
            let one = b.u32(1);
            in_else = Some(b.add(one, one));
        },
    );
    let (in_then, in_else) = (in_then.unwrap(), in_else.unwrap());
    let mut k = b.finish();
    let Op::Binary(_, one, _) = k.insts[in_else].op else {
        unreachable!()
    };
    set_op(&mut k, in_else, Op::Binary(BinaryOp::Add, one, in_then));
    assert_findings(
        &k,
        &[(Some(in_else), FindingKind::NotInScope { operand: in_then })],
    );
}

#[test]
fn inv3_use_of_an_unplaced_value() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    let s = b.add(a, a);
    let mut k = b.finish();
    let stray = k.insts.append(Inst {
        op: Op::Const(Const::U32(2)),
        ty: Some(sc(U32)),
    });
    set_op(&mut k, s, Op::Binary(BinaryOp::Add, a, stray));
    assert_findings(
        &k,
        &[
            (Some(s), FindingKind::UseOfUnplaced { operand: stray }),
            (Some(stray), FindingKind::NotPlaced),
        ],
    );
}

#[test]
fn inv3_loop_value_outside_its_body() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(0);
    let e = b.u32(4);
    b.for_range(a, e, 1, |_, _| {});
    let after = b.add(a, a);
    let mut k = b.finish();
    let lp = k.body.0[2];
    set_op(&mut k, after, Op::Binary(BinaryOp::Add, a, lp));
    // And in its own bound.
    if let Op::Loop { end, .. } = &mut k.insts.get_mut(lp).unwrap().op {
        *end = lp;
    }
    assert_findings(
        &k,
        &[
            (Some(lp), FindingKind::LoopValueOutsideBody { operand: lp }),
            (
                Some(after),
                FindingKind::LoopValueOutsideBody { operand: lp },
            ),
        ],
    );
}

#[test]
fn inv3_outer_values_and_loop_values_are_visible_in_nested_blocks() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(0);
    let e = b.u32(4);
    b.for_range(a, e, 1, |b, i| {
        let c = b.cmp(CmpOp::Lt, i, e);
        b.if_then(c, |b| {
            b.for_range(i, e, 1, |b, j| {
                let s = b.add(i, j);
                b.add(s, a);
            });
        });
    });
    assert_valid(&b.finish());
}

// ---------------------------------------------------------------------------------------------
// 4. Operands have results.

#[test]
fn inv4_operand_without_result() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let v = b.u8(1);
    b.store(d.codes, z, v);
    let t = b.bool(true);
    b.if_then(t, |_| {});
    let use_store = b.add(z, z);
    let use_if = b.add(z, z);
    let mut k = b.finish();
    let store = k.body.0[2];
    let iff = k.body.0[4];
    set_op(&mut k, use_store, Op::Binary(BinaryOp::Add, z, store));
    set_op(&mut k, use_if, Op::Binary(BinaryOp::Add, iff, z));
    assert_findings(
        &k,
        &[
            (
                Some(use_store),
                FindingKind::OperandWithoutResult { operand: store },
            ),
            (
                Some(use_if),
                FindingKind::OperandWithoutResult { operand: iff },
            ),
        ],
    );
}

#[test]
fn inv4_operand_with_no_recorded_type() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    let s = b.add(a, a);
    let mut k = b.finish();
    set_ty(&mut k, a, None);
    assert_findings(
        &k,
        &[
            (
                Some(a),
                FindingKind::WrongResultType {
                    recorded: None,
                    expected: Some(sc(U32)),
                },
            ),
            (Some(s), FindingKind::OperandWithoutResult { operand: a }),
            (Some(s), FindingKind::OperandWithoutResult { operand: a }),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Recorded result types.

#[test]
fn inv5_wrong_type_of_a_value() {
    let mut b = Builder::new("k", 1);
    let a = b.u32(1);
    let s = b.add(a, a);
    let c = b.cmp(CmpOp::Eq, a, a);
    let mut k = b.finish();
    set_ty(&mut k, s, Some(sc(F32)));
    set_ty(&mut k, c, Some(sc(U32)));
    assert_findings(
        &k,
        &[
            (
                Some(s),
                FindingKind::WrongResultType {
                    recorded: Some(sc(F32)),
                    expected: Some(sc(U32)),
                },
            ),
            (
                Some(c),
                FindingKind::WrongResultType {
                    recorded: Some(sc(U32)),
                    expected: Some(sc(Bool)),
                },
            ),
        ],
    );
}

#[test]
fn inv5_type_on_an_operation_without_result() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let y = b.f32(1.0);
    b.store(d.out, z, y);
    b.barrier();
    let mut k = b.finish();
    let store = k.body.0[2];
    let barrier = k.body.0[3];
    set_ty(&mut k, store, Some(sc(F32)));
    set_ty(&mut k, barrier, Some(sc(U32)));
    assert_findings(
        &k,
        &[
            (
                Some(store),
                FindingKind::WrongResultType {
                    recorded: Some(sc(F32)),
                    expected: None,
                },
            ),
            (
                Some(barrier),
                FindingKind::WrongResultType {
                    recorded: Some(sc(U32)),
                    expected: None,
                },
            ),
        ],
    );
}

#[test]
fn inv5_wrong_type_of_a_load_and_a_loop() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let ld = b.load(d.x, z, 4);
    b.for_range(z, z, 1, |_, _| {});
    let mut k = b.finish();
    let lp = k.body.0[2];
    set_ty(&mut k, ld, Some(Type::Vector(F16, 8)));
    set_ty(&mut k, lp, Some(sc(F32)));
    assert_findings(
        &k,
        &[
            (
                Some(ld),
                FindingKind::WrongResultType {
                    recorded: Some(Type::Vector(F16, 8)),
                    expected: Some(Type::Vector(F16, 4)),
                },
            ),
            (
                Some(lp),
                FindingKind::WrongResultType {
                    recorded: Some(sc(F32)),
                    expected: Some(sc(U32)),
                },
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Operand types.

fn bad(operand: Value, ty: Type, expected: TypeClass) -> FindingKind {
    FindingKind::BadOperandType {
        operand,
        ty,
        expected,
    }
}

#[test]
fn inv6_arithmetic_needs_integer_or_float() {
    let mut b = Builder::new("k", 1);
    let t = b.bool(true);
    let s = b.add(t, t);
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (Some(s), bad(t, sc(Bool), TypeClass::Numeric)),
            (Some(s), bad(t, sc(Bool), TypeClass::Numeric)),
        ],
    );
}

#[test]
fn inv6_rem_and_shifts_need_integers() {
    let mut b = Builder::new("k", 1);
    let f = b.f32(1.0);
    let one = b.u32(1);
    let r = b.binary(BinaryOp::Rem, f, f);
    let sh = b.binary(BinaryOp::Shl, one, f);
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (Some(r), bad(f, sc(F32), TypeClass::Int)),
            (Some(r), bad(f, sc(F32), TypeClass::Int)),
            (Some(sh), bad(f, sc(F32), TypeClass::Int)),
        ],
    );
}

#[test]
fn inv6_logic_needs_bool_or_integer() {
    let mut b = Builder::new("k", 1);
    let f = b.f32(1.0);
    let t = b.bool(true);
    let a = b.binary(BinaryOp::And, t, f);
    let n = b.unary(UnaryOp::Not, f);
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (Some(a), bad(f, sc(F32), TypeClass::BoolOrInt)),
            (Some(n), bad(f, sc(F32), TypeClass::BoolOrInt)),
        ],
    );
}

#[test]
fn inv6_float_unary_operations_need_floats() {
    let mut b = Builder::new("k", 1);
    let u = b.u32(1);
    let ops = [
        UnaryOp::Neg,
        UnaryOp::RoundEven,
        UnaryOp::Floor,
        UnaryOp::IsFinite,
    ];
    let hs: Vec<Value> = ops.iter().map(|&op| b.unary(op, u)).collect();
    let k = b.finish();
    let expected: Found = hs
        .iter()
        .map(|&h| (Some(h), bad(u, sc(U32), TypeClass::Float)))
        .collect();
    assert_findings(&k, &expected);
}

#[test]
fn inv6_binary_operations_are_on_scalars() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let v = b.load(d.x, z, 2);
    let s = b.add(v, v);
    let k = b.finish();
    let v2 = Type::Vector(F16, 2);
    assert_findings(
        &k,
        &[
            (Some(s), bad(v, v2, TypeClass::Numeric)),
            (Some(s), bad(v, v2, TypeClass::Numeric)),
        ],
    );
}

#[test]
fn inv6_ordered_comparison_is_not_on_bool_but_equality_is() {
    let mut b = Builder::new("k", 1);
    let t = b.bool(true);
    let f = b.bool(false);
    let eq = b.cmp(CmpOp::Eq, t, f);
    let lt = b.cmp(CmpOp::Lt, t, f);
    let k = b.finish();
    let _ = eq;
    assert_findings(
        &k,
        &[
            (Some(lt), bad(t, sc(Bool), TypeClass::Numeric)),
            (Some(lt), bad(f, sc(Bool), TypeClass::Numeric)),
        ],
    );
}

#[test]
fn inv6_operands_of_one_type() {
    let mut b = Builder::new("k", 1);
    let u = b.u32(1);
    let f = b.f32(1.0);
    let t = b.bool(true);
    let s = b.add(u, f);
    let c = b.cmp(CmpOp::Ne, f, u);
    let sel = b.select(t, u, f);
    let vec = b.vector(vec![u, u, f]);
    let k = b.finish();
    let differ = |first, first_ty, second, second_ty| FindingKind::OperandsDiffer {
        first,
        first_ty,
        second,
        second_ty,
    };
    assert_findings(
        &k,
        &[
            (Some(s), differ(u, sc(U32), f, sc(F32))),
            (Some(c), differ(f, sc(F32), u, sc(U32))),
            (Some(sel), differ(u, sc(U32), f, sc(F32))),
            (Some(vec), differ(u, sc(U32), f, sc(F32))),
        ],
    );
}

#[test]
fn inv6_conditions_are_bool() {
    let mut b = Builder::new("k", 1);
    let u = b.u32(1);
    let sel = b.select(u, u, u);
    b.if_then(u, |_| {});
    let k = b.finish();
    let iff = k.body.0[2];
    assert_findings(
        &k,
        &[
            (Some(sel), bad(u, sc(U32), TypeClass::Bool)),
            (Some(iff), bad(u, sc(U32), TypeClass::Bool)),
        ],
    );
}

#[test]
fn inv6_select_arms_are_scalars() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let t = b.bool(true);
    let v = b.load(d.x, z, 2);
    let sel = b.select(t, v, v);
    let k = b.finish();
    let v2 = Type::Vector(F16, 2);
    assert_findings(
        &k,
        &[
            (Some(sel), bad(v, v2, TypeClass::Scalar)),
            (Some(sel), bad(v, v2, TypeClass::Scalar)),
        ],
    );
}

#[test]
fn inv6_indices_are_u32() {
    let (mut b, d) = base("k");
    let f = b.f32(0.0);
    let ld = b.load(d.x, f, 1);
    let y = b.f32(1.0);
    b.store(d.out, f, y);
    let rl = b.read_local(d.acc, f);
    b.write_local(d.acc, f, y);
    let sr = b.select_rank(d.s, f, f, f, f);
    b.for_range(f, f, 1, |_, _| {});
    let k = b.finish();
    let store = k.body.0[3];
    let wl = k.body.0[5];
    let lp = k.body.0[7];
    let want = |at| (Some(at), bad(f, sc(F32), TypeClass::U32));
    assert_findings(
        &k,
        &[
            want(ld),
            want(store),
            want(rl),
            want(wl),
            want(sr),
            want(sr),
            want(sr),
            want(sr),
            want(lp),
            want(lp),
        ],
    );
}

#[test]
fn inv6_invalid_conversions() {
    let (mut b, d) = base("k");
    let f = b.f32(1.0);
    let t = b.bool(true);
    let z = b.u32(0);
    let v = b.load(d.x, z, 2);
    let to_bool = b.convert(Bool, f);
    let bool_to_float = b.convert(F32, t);
    let from_vector = b.convert(F32, v);
    let _ok = [
        b.convert(U8, t),
        b.convert(U32, f),
        b.convert(F64, z),
        b.convert(BF16, f),
    ];
    let k = b.finish();
    let conv = |from, to| FindingKind::InvalidConversion { from, to };
    assert_findings(
        &k,
        &[
            (Some(to_bool), conv(sc(F32), Bool)),
            (Some(bool_to_float), conv(sc(Bool), F32)),
            (Some(from_vector), conv(Type::Vector(F16, 2), F32)),
        ],
    );
}

#[test]
fn inv14_bitcast_between_f32_and_u32_half_floats_and_u16_and_bytes_and_words() {
    let mut b = Builder::new("k", 1);
    let f = b.f32(1.5);
    let u = b.u32(7);
    let h = b.u8(1);
    let w = b.u16(0x3C00);
    let half = b.convert(F16, f);
    let brain = b.convert(BF16, f);
    let bytes16 = b.vector(vec![h; 16]);
    let bytes4 = b.vector(vec![h; 4]);
    let words2 = b.vector(vec![u; 2]);
    let _ok = [
        b.bitcast(U32, f),
        b.bitcast(F32, u),
        b.bitcast_to(Type::Vector(U32, 4), bytes16),
        b.bitcast_to(Type::Vector(U8, 8), words2),
        b.bitcast(U32, bytes4),
        b.bitcast_to(Type::Vector(U8, 4), u),
        b.bitcast(U16, half),
        b.bitcast(U16, brain),
        b.bitcast(F16, w),
        b.bitcast(BF16, w),
    ];
    let u16_from_f32 = b.bitcast(U16, f);
    let u16_to_u32 = b.bitcast(U32, w);
    let to_u8 = b.bitcast(U8, f);
    let from_u8 = b.bitcast(F32, h);
    let same = b.bitcast(F32, f);
    let sizes_differ = b.bitcast_to(Type::Vector(U32, 2), bytes16);
    let f32_bytes = b.bitcast_to(Type::Vector(U8, 4), f);
    let k = b.finish();
    let cast = |from, to| FindingKind::InvalidBitcast { from, to };
    assert_findings(
        &k,
        &[
            (Some(u16_from_f32), cast(sc(F32), sc(U16))),
            (Some(u16_to_u32), cast(sc(U16), sc(U32))),
            (Some(to_u8), cast(sc(F32), sc(U8))),
            (Some(from_u8), cast(sc(U8), sc(F32))),
            (Some(same), cast(sc(F32), sc(F32))),
            (
                Some(sizes_differ),
                cast(Type::Vector(U8, 16), Type::Vector(U32, 2)),
            ),
            (Some(f32_bytes), cast(sc(F32), Type::Vector(U8, 4))),
        ],
    );
}

#[test]
fn inv6_extract_needs_a_vector() {
    let mut b = Builder::new("k", 1);
    let u = b.u32(1);
    let e = b.extract(u, 0);
    let k = b.finish();
    assert_findings(&k, &[(Some(e), bad(u, sc(U32), TypeClass::Vector))]);
}

#[test]
fn inv6_extract_lane_out_of_range() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let v = b.load(d.x, z, 4);
    let e = b.extract(v, 4);
    let k = b.finish();
    assert_findings(
        &k,
        &[(
            Some(e),
            FindingKind::ExtractLaneOutOfRange { lane: 4, lanes: 4 },
        )],
    );
}

#[test]
fn inv6_vector_length() {
    let mut b = Builder::new("k", 1);
    let u = b.u32(1);
    let one = b.vector(vec![u]);
    let many = b.vector(vec![u; 17]);
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (Some(one), FindingKind::BadVectorLength { len: 1 }),
            (Some(many), FindingKind::BadVectorLength { len: 17 }),
        ],
    );
}

#[test]
fn inv6_vector_elements_are_scalars() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let v = b.load(d.x, z, 2);
    let vv = b.vector(vec![v, v]);
    let k = b.finish();
    let v2 = Type::Vector(F16, 2);
    assert_findings(
        &k,
        &[
            (Some(vv), bad(v, v2, TypeClass::Scalar)),
            (Some(vv), bad(v, v2, TypeClass::Scalar)),
        ],
    );
}

#[test]
fn inv6_pack_bits_count() {
    let mut b = Builder::new("k", 1);
    let q = b.u8(1);
    let p = b.pack_bits(vec![q; 3], Bits::B4, BitOrder::Msb);
    let ok = b.pack_bits(vec![q; 8], Bits::B1, BitOrder::Msb);
    let k = b.finish();
    let _ = ok;
    assert_findings(
        &k,
        &[(
            Some(p),
            FindingKind::PackBitsCount {
                count: 3,
                expected: 2,
            },
        )],
    );
}

#[test]
fn inv6_pack_bits_codes_are_u8() {
    let mut b = Builder::new("k", 1);
    let q = b.u8(1);
    let u = b.u32(1);
    let p = b.pack_bits(vec![q, u], Bits::B4, BitOrder::Lsb);
    let k = b.finish();
    assert_findings(&k, &[(Some(p), bad(u, sc(U32), TypeClass::U8))]);
}

#[test]
fn inv6_unpack_bits() {
    let mut b = Builder::new("k", 1);
    let byte = b.u8(0xff);
    let u = b.u32(1);
    let lane = b.unpack_bits(byte, 4, Bits::B2, BitOrder::Msb);
    let not_u8 = b.unpack_bits(u, 0, Bits::B8, BitOrder::Msb);
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (
                Some(lane),
                FindingKind::UnpackLaneOutOfRange { lane: 4, codes: 4 },
            ),
            (Some(not_u8), bad(u, sc(U32), TypeClass::U8)),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Memory.

#[test]
fn inv7_buffer_parameter_out_of_range() {
    let mut b = Builder::new("k", 1);
    let z = b.u32(0);
    let ld = b.load(Memory::Param(3), z, 1);
    let k = b.finish();
    // The builder cannot know the element type of a parameter that does not exist; the verifier
    // does not guess it either (no result-type finding).
    assert_findings(
        &k,
        &[(
            Some(ld),
            FindingKind::ParamOutOfRange { param: 3, count: 0 },
        )],
    );
}

#[test]
fn inv7_memory_is_not_a_buffer() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let y = b.f32(1.0);
    b.store(Memory::Param(d.n), z, y);
    let k = b.finish();
    let store = k.body.0[2];
    assert_findings(&k, &[(Some(store), FindingKind::NotABuffer { param: d.n })]);
}

#[test]
fn inv7_shared_array_out_of_range() {
    let (mut b, _d) = base("k");
    let z = b.u32(0);
    let ld = b.load(Memory::Shared(1), z, 1);
    let k = b.finish();
    assert_findings(
        &k,
        &[(
            Some(ld),
            FindingKind::SharedOutOfRange {
                shared: 1,
                count: 1,
            },
        )],
    );
}

#[test]
fn inv7_load_needs_read_access() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let one = b.u32(1);
    let ld = b.load(d.out, z, 1);
    let sr = b.select_rank(d.out, z, one, one, z);
    let _ok = b.load(d.codes, z, 1);
    let k = b.finish();
    let Memory::Param(out) = d.out else {
        unreachable!()
    };
    assert_findings(
        &k,
        &[
            (Some(ld), FindingKind::ReadFromWriteOnly { param: out }),
            (Some(sr), FindingKind::ReadFromWriteOnly { param: out }),
        ],
    );
}

#[test]
fn inv7_store_needs_write_access() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let h = b.load(d.x, z, 1);
    b.store(d.x, z, h);
    let q = b.u8(0);
    b.store(d.codes, z, q);
    let k = b.finish();
    let store = k.body.0[2];
    let Memory::Param(x) = d.x else {
        unreachable!()
    };
    assert_findings(
        &k,
        &[(Some(store), FindingKind::WriteToReadOnly { param: x })],
    );
}

#[test]
fn inv7_stored_value_has_the_memory_element_type() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let f = b.f32(1.0);
    b.store(d.codes, z, f);
    let v = b.load(d.x, z, 8);
    b.store(d.out, z, v);
    b.store(d.s, z, f); // f32 into f32 shared: fine
    let k = b.finish();
    let (s1, s2) = (k.body.0[2], k.body.0[4]);
    assert_findings(
        &k,
        &[
            (
                Some(s1),
                FindingKind::StoreTypeMismatch {
                    ty: sc(F32),
                    elem: U8,
                },
            ),
            (
                Some(s2),
                FindingKind::StoreTypeMismatch {
                    ty: Type::Vector(F16, 8),
                    elem: F32,
                },
            ),
        ],
    );
}

#[test]
fn inv7_stored_vectors_of_2_to_16_lanes_are_fine() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let f = b.f32(1.0);
    for lanes in [2usize, 3, 16] {
        let v = b.vector(vec![f; lanes]);
        b.store(d.out, z, v);
    }
    assert_valid(&b.finish());
}

#[test]
fn inv7_load_lanes() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let three = b.load(d.x, z, 3);
    let zero = b.load(d.x, z, 0);
    for lanes in [1, 2, 4, 8, 16] {
        b.load(d.x, z, lanes);
    }
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (Some(three), FindingKind::BadLoadLanes { lanes: 3 }),
            (Some(zero), FindingKind::BadLoadLanes { lanes: 0 }),
        ],
    );
}

#[test]
fn inv7_select_rank_reads_float_memory() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let one = b.u32(1);
    let sr = b.select_rank(d.codes, z, one, one, z);
    let k = b.finish();
    assert_findings(
        &k,
        &[(Some(sr), FindingKind::SelectRankNotFloat { elem: U8 })],
    );
}

#[test]
fn inv7_constant_index_past_a_shared_array() {
    let (mut b, d) = base("k"); // s: [f32; 64]
    let i62 = b.u32(62);
    let i63 = b.u32(63);
    let i64 = b.u32(64);
    let _ok = b.load(d.s, i62, 2);
    let ld = b.load(d.s, i63, 2);
    let f = b.f32(0.0);
    b.store(d.s, i64, f);
    let k = b.finish();
    let store = k.body.0[6];
    assert_findings(
        &k,
        &[
            (
                Some(ld),
                FindingKind::ConstIndexOutOfBounds {
                    index: 63,
                    lanes: 2,
                    len: 64,
                },
            ),
            (
                Some(store),
                FindingKind::ConstIndexOutOfBounds {
                    index: 64,
                    lanes: 1,
                    len: 64,
                },
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Locals.

#[test]
fn inv8_local_out_of_range() {
    let (mut b, _d) = base("k");
    let z = b.u32(0);
    let r = b.read_local(5, z);
    let f = b.f32(0.0);
    b.write_local(5, z, f);
    let k = b.finish();
    let wl = k.body.0[3];
    assert_findings(
        &k,
        &[
            (Some(r), FindingKind::LocalOutOfRange { local: 5, count: 1 }),
            (
                Some(wl),
                FindingKind::LocalOutOfRange { local: 5, count: 1 },
            ),
        ],
    );
}

#[test]
fn inv8_written_value_has_the_local_type() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let h = b.load(d.x, z, 1);
    b.write_local(d.acc, z, h);
    let v = b.vector(vec![z, z]);
    b.write_local(d.acc, z, v);
    let k = b.finish();
    let (w1, w2) = (k.body.0[2], k.body.0[4]);
    assert_findings(
        &k,
        &[
            (
                Some(w1),
                FindingKind::WriteLocalTypeMismatch {
                    ty: sc(F16),
                    elem: F32,
                },
            ),
            (
                Some(w2),
                FindingKind::WriteLocalTypeMismatch {
                    ty: Type::Vector(U32, 2),
                    elem: F32,
                },
            ),
        ],
    );
}

#[test]
fn inv8_empty_local() {
    let (mut b, _d) = base("k");
    let empty = b.local("none", U32, 0);
    let k = b.finish();
    assert_findings(&k, &[(None, FindingKind::EmptyLocal { local: empty })]);
}

#[test]
fn inv8_constant_index_past_a_local() {
    let (mut b, d) = base("k"); // acc: [f32; 4]
    let i3 = b.u32(3);
    let i4 = b.u32(4);
    let _ok = b.read_local(d.acc, i3);
    let r = b.read_local(d.acc, i4);
    let k = b.finish();
    assert_findings(
        &k,
        &[(
            Some(r),
            FindingKind::ConstIndexOutOfBounds {
                index: 4,
                lanes: 1,
                len: 4,
            },
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Scalar parameters.

#[test]
fn inv9_scalar_param_out_of_range() {
    let (mut b, _d) = base("k");
    let p = b.param(7);
    let k = b.finish();
    assert_findings(
        &k,
        &[(Some(p), FindingKind::ParamOutOfRange { param: 7, count: 4 })],
    );
}

#[test]
fn inv9_scalar_param_names_a_buffer() {
    let (mut b, d) = base("k");
    let Memory::Param(x) = d.x else {
        unreachable!()
    };
    let p = b.param(x);
    let k = b.finish();
    assert_findings(&k, &[(Some(p), FindingKind::NotAScalarParam { param: x })]);
}

#[test]
fn inv9_scalar_params_are_u32_or_f32() {
    let mut b = Builder::new("k", 1);
    b.scalar_param("a", U32);
    b.scalar_param("b", F32);
    let bad = b.scalar_param("c", F16);
    let k = b.finish();
    assert_findings(
        &k,
        &[(
            None,
            FindingKind::BadScalarParamType {
                param: bad,
                ty: F16,
            },
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Barriers.

#[test]
fn inv10_sync_points_only_where_every_thread_arrives() {
    let mut b = Builder::new("k", 32);
    let z = b.u32(0);
    let t = b.bool(true);
    let tid = b.special(Special::ThreadId);
    let acc = b.local("acc", F32, 1);
    // A barrier in a loop with uniform bounds is fine; in an If, or in a loop whose bound
    // depends on the thread, it is not.
    b.for_range(z, tid, 1, |b, _| {
        b.warp(WarpOp::Reduce {
            op: ReduceOp::Sum,
            local: acc,
        })
    });
    let n = b.u32(4);
    b.for_range(z, n, 1, |b, _| b.barrier());
    b.if_else(t, |_| {}, |b| b.barrier());
    let k = b.finish();
    let thread_loop = k.body.0[3];
    let iff = k.body.0[6];
    let Op::If { otherwise, .. } = &k.insts[iff].op else {
        unreachable!()
    };
    assert_findings(
        &k,
        &[
            (
                Some(thread_loop),
                FindingKind::SyncLoopNotUniform { operand: tid },
            ),
            (Some(otherwise.0[0]), FindingKind::SyncInsideIf),
        ],
    );
}

#[test]
fn inv10_uniform_loops_hold_barriers_and_regions() {
    // grid-stride style: a loop over the block's tiles with barriers inside, bounds from a
    // parameter and the block id; its counter and uniform values cross every barrier.
    let mut b = Builder::new("k", 32);
    let out = b.buffer("out", F32, Access::Write);
    let n = b.scalar_param("n", U32);
    let n = b.param(n);
    let bid = b.special(Special::BlockId);
    let start = b.mul(bid, n);
    let end = b.add(start, n);
    let tid = b.special(Special::ThreadId);
    let s = b.shared("s", F32, 32);
    b.for_range(start, end, 1, |b, i| {
        let t2 = b.special(Special::ThreadId);
        let x = b.convert(F32, i);
        b.store(s, t2, x);
        b.barrier();
        let t3 = b.special(Special::ThreadId);
        let y = b.load(s, t3, 1);
        let at = b.add(i, t3);
        b.store(out, at, y);
        b.barrier();
    });
    // The thread id (not uniform) crosses the loop: rejected.
    let bad = b.add(tid, n);
    let k = b.finish();
    let info_or = verify(&k);
    let errors = info_or.unwrap_err().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].kind,
        FindingKind::CrossesBarrier {
            operand: tid,
            defined_in: 0,
            used_in: 4,
        }
    );
    assert_eq!(errors[0].at, Some(bad));
}

#[test]
fn inv10_value_crosses_a_barrier() {
    let mut b = Builder::new("k", 1);
    let z = b.special(Special::ThreadId);
    b.barrier();
    let one = b.special(Special::ThreadId);
    let s = b.add(z, one);
    b.barrier();
    let mut in_loop = None;
    b.for_range(one, one, 1, |b, i| in_loop = Some(b.add(i, z)));
    // Uniform values (constants, parameters, block coordinates) may cross.
    let c = b.u32(3);
    b.barrier();
    let bid = b.special(Special::BlockId);
    b.add(c, bid);
    let k = b.finish();
    assert_findings(
        &k,
        &[
            (
                Some(s),
                FindingKind::CrossesBarrier {
                    operand: z,
                    defined_in: 0,
                    used_in: 1,
                },
            ),
            (
                Some(k.body.0[5]),
                FindingKind::CrossesBarrier {
                    operand: one,
                    defined_in: 1,
                    used_in: 2,
                },
            ),
            (
                Some(k.body.0[5]),
                FindingKind::CrossesBarrier {
                    operand: one,
                    defined_in: 1,
                    used_in: 2,
                },
            ),
            (
                Some(in_loop.unwrap()),
                FindingKind::CrossesBarrier {
                    operand: z,
                    defined_in: 0,
                    used_in: 2,
                },
            ),
        ],
    );
}

#[test]
fn inv10_locals_and_shared_memory_carry_values_across_barriers() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let f = b.f32(2.0);
    b.write_local(d.acc, z, f);
    b.store(d.s, z, f);
    b.barrier();
    let z = b.u32(0);
    let a = b.read_local(d.acc, z);
    let s = b.load(d.s, z, 1);
    let sum = b.add(a, s);
    b.store(d.out, z, sum);
    let k = b.finish();
    assert_eq!(verify(&k).unwrap().regions, 2);
}

// ---------------------------------------------------------------------------------------------
// 11. Kernel shape.

#[test]
fn inv11_loop_step_is_positive() {
    let mut b = Builder::new("k", 1);
    let z = b.u32(0);
    b.for_range(z, z, 0, |_, _| {});
    let k = b.finish();
    assert_findings(&k, &[(Some(k.body.0[1]), FindingKind::LoopStepZero)]);
}

#[test]
fn inv11_block_size() {
    for block_size in [0, 1025, u32::MAX] {
        let k = Builder::new("k", block_size).finish();
        assert_findings(&k, &[(None, FindingKind::BadBlockSize { block_size })]);
    }
    for block_size in [1, 32, 1024] {
        assert_valid(&Builder::new("k", block_size).finish());
    }
}

#[test]
fn inv11_empty_shared_array() {
    let mut b = Builder::new("k", 1);
    b.shared("a", F32, 4);
    b.shared("b", F32, 0);
    let k = b.finish();
    assert_findings(&k, &[(None, FindingKind::EmptyShared { shared: 1 })]);
}

#[test]
fn inv11_shared_memory_static_up_to_48_kib_then_dynamic_up_to_163_kib() {
    let mut b = Builder::new("k", 1);
    b.shared("a", F32, 8 * 1024);
    b.shared("b", F64, 2 * 1024);
    let k = b.finish();
    let info = verify(&k).unwrap();
    assert_eq!(info.shared_bytes, 48 * 1024);
    assert_eq!(info.dynamic_shared_bytes, 0);
    // One byte more: dynamic shared memory, each array at a multiple of 16 bytes.
    let mut b = Builder::new("k", 1);
    b.shared("c", U8, 1);
    b.shared("a", F32, 8 * 1024);
    b.shared("b", F64, 2 * 1024);
    let k = b.finish();
    let info = verify(&k).unwrap();
    assert_eq!(info.shared_bytes, 48 * 1024 + 1);
    assert_eq!(info.dynamic_shared_bytes, 16 + 48 * 1024);
    assert_eq!(
        kvq_ir::ir::kernel::shared_layout(&k.shared),
        (vec![0, 16, 16 + 32 * 1024], 16 + 48 * 1024)
    );
    // 163 KiB laid out is the most.
    let mut b = Builder::new("k", 1);
    b.shared("a", U8, 1);
    b.shared("b", F32, 163 * 256 - 4);
    assert_eq!(
        verify(&b.finish()).unwrap().dynamic_shared_bytes,
        163 * 1024
    );
    let mut b = Builder::new("k", 1);
    b.shared("a", U8, 1);
    b.shared("b", F32, 163 * 256 - 3);
    assert_findings(
        &b.finish(),
        &[(
            None,
            FindingKind::SharedMemoryTooLarge {
                bytes: 163 * 1024 + 4,
                limit: 163 * 1024,
            },
        )],
    );
    // No overflow with huge arrays.
    let mut b = Builder::new("k", 1);
    for name in ["a", "b", "c", "d"] {
        b.shared(name, F64, u32::MAX);
    }
    let found = findings(&b.finish());
    assert_eq!(
        found,
        [(
            None,
            FindingKind::SharedMemoryTooLarge {
                // Each array of 8 * (2^32 - 1) bytes ends 8 bytes short of a 16-byte boundary.
                bytes: 4 * 8 * u64::from(u32::MAX) + 3 * 8,
                limit: 163 * 1024,
            },
        )]
    );
}

#[test]
fn inv11_names_are_c_identifiers() {
    let mut b = Builder::new("1kernel", 1);
    b.buffer("a-b", F32, Access::Read);
    b.scalar_param("_ok9", U32);
    b.shared("", F32, 1);
    b.local("x y", F32, 1);
    b.local("é", F32, 1);
    let k = b.finish();
    let invalid = |item, name: &str| FindingKind::InvalidName {
        item,
        name: name.to_string(),
    };
    assert_findings(
        &k,
        &[
            (None, invalid(Item::Kernel, "1kernel")),
            (None, invalid(Item::Param(0), "a-b")),
            (None, invalid(Item::Shared(0), "")),
            (None, invalid(Item::Local(0), "x y")),
            (None, invalid(Item::Local(1), "é")),
        ],
    );
}

#[test]
fn inv11_names_are_unique_within_their_kind() {
    let mut b = Builder::new("k", 1);
    b.buffer("x", F32, Access::Read);
    b.scalar_param("x", U32);
    b.shared("s", F32, 1);
    b.shared("s", F32, 1);
    b.local("l", F32, 1);
    b.local("l", F32, 1);
    // A parameter, a shared array and a local may share a name.
    b.shared("x", F32, 1);
    b.local("x", F32, 1);
    let k = b.finish();
    let dup = |first, second, name: &str| FindingKind::DuplicateName {
        name: name.to_string(),
        first,
        second,
    };
    assert_findings(
        &k,
        &[
            (None, dup(Item::Param(0), Item::Param(1), "x")),
            (None, dup(Item::Shared(0), Item::Shared(1), "s")),
            (None, dup(Item::Local(0), Item::Local(1), "l")),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Warp collectives.

#[test]
fn inv12_warp_collectives_take_whole_warps_and_matching_locals() {
    let mut b = Builder::new("k", 48);
    let f = b.local("f", F32, 2);
    let g = b.local("g", F32, 2);
    let short = b.local("short", F32, 1);
    let bytes = b.local("bytes", U8, 2);
    let lane = b.local("lane", U32, 1);
    let wide = b.local("wide", F64, 1);
    b.warp(WarpOp::ShuffleXor {
        src: f,
        dst: g,
        mask: 1,
    });
    b.warp(WarpOp::ShuffleIdx {
        src: f,
        dst: g,
        lane,
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Max,
        local: f,
    });
    b.warp(WarpOp::ShuffleXor {
        src: f,
        dst: short,
        mask: 32,
    });
    b.warp(WarpOp::ShuffleIdx {
        src: bytes,
        dst: bytes,
        lane: f,
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: bytes,
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Min,
        local: wide,
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Min,
        local: 9,
    });
    let k = b.finish();
    let at = |i: usize| Some(k.body.0[i]);
    assert_findings(
        &k,
        &[
            (None, FindingKind::PartialWarp { block_size: 48 }),
            (at(3), FindingKind::WarpLocalsDiffer { src: f, dst: short }),
            (at(3), FindingKind::ShuffleMaskTooLarge { mask: 32 }),
            (
                at(4),
                FindingKind::BadWarpLocal {
                    local: f,
                    elem: F32,
                },
            ),
            (
                at(5),
                FindingKind::BadWarpLocal {
                    local: bytes,
                    elem: U8,
                },
            ),
            (
                at(6),
                FindingKind::BadWarpLocal {
                    local: wide,
                    elem: F64,
                },
            ),
            (at(7), FindingKind::LocalOutOfRange { local: 9, count: 6 }),
        ],
    );
    let text = verify(&k).unwrap_err().to_string();
    assert!(
        text.contains("block_size 48 is not a multiple of 32"),
        "{text}"
    );
    assert!(text.contains("`warp.shuffle_xor short <- f, 32`"), "{text}");
}

#[test]
fn inv12_mma_takes_f16_and_f32_fragments_of_their_lengths() {
    let mut b = Builder::new("k", 64);
    let a = b.local("a", F16, 8);
    let bf = b.local("b", F16, 4);
    let acc = b.local("acc", F32, 4);
    let short = b.local("short", F16, 3);
    let wide = b.local("wide", F32, 8);
    b.warp(WarpOp::Mma { a, b: bf, acc });
    b.warp(WarpOp::Mma {
        a: wide,
        b: short,
        acc: a,
    });
    let k = b.finish();
    let at = |i: usize| Some(k.body.0[i]);
    assert_findings(
        &k,
        &[
            (
                at(1),
                FindingKind::BadWarpLocal {
                    local: wide,
                    elem: F32,
                },
            ),
            (
                at(1),
                FindingKind::MmaFragmentLength {
                    local: short,
                    len: 3,
                    want: 4,
                },
            ),
            (
                at(1),
                FindingKind::BadWarpLocal {
                    local: a,
                    elem: F16,
                },
            ),
            (
                at(1),
                FindingKind::MmaFragmentLength {
                    local: a,
                    len: 8,
                    want: 4,
                },
            ),
        ],
    );
    let text = verify(&k).unwrap_err().to_string();
    assert!(
        text.contains("has 3 elements, not the 4 of its matrix multiply-accumulate fragment"),
        "{text}"
    );
    assert!(
        text.contains("`warp.mma_m16n8k16 a += wide * short`"),
        "{text}"
    );
}

#[test]
fn inv12_no_value_crosses_a_collective_unless_uniform() {
    let mut b = Builder::new("k", 32);
    let acc = b.local("acc", U32, 1);
    let tid = b.special(Special::ThreadId);
    let four = b.u32(4);
    let z = b.u32(0);
    b.write_local(acc, z, tid);
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: acc,
    });
    let crosses = b.add(tid, four);
    let k = b.finish();
    assert_findings(
        &k,
        &[(
            Some(crosses),
            FindingKind::CrossesBarrier {
                operand: tid,
                defined_in: 0,
                used_in: 1,
            },
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Alignment.

#[test]
fn inv13_aligned_accesses_need_a_proven_multiple() {
    let (mut b, d) = base("k");
    let tid = b.special(Special::ThreadId);
    let n = b.param(d.n);
    let eight = b.u32(8);
    let three = b.u32(3);
    let by8 = b.mul(tid, eight);
    let shifted = b.binary(BinaryOp::Shl, tid, three);
    let sum = b.add(by8, shifted);
    let _ok = [
        b.load_aligned(d.x, by8, 8),
        b.load_aligned(d.x, shifted, 8),
        b.load_aligned(d.x, sum, 4),
    ];
    let mut in_loop = None;
    b.for_range(eight, n, 16, |b, i| {
        in_loop = Some(b.load_aligned(d.x, i, 8));
    });
    let unknown = b.load_aligned(d.x, n, 2);
    let odd = b.add(by8, three);
    let off = b.load_aligned(d.x, odd, 8);
    let one = b.f32(1.0);
    let v = b.vector(vec![one; 4]);
    b.store_aligned(d.out, by8, v);
    b.store_aligned(d.out, odd, v);
    let k = b.finish();
    let bad_store = *k.body.0.last().unwrap();
    assert_findings(
        &k,
        &[
            (
                Some(unknown),
                FindingKind::UnalignedIndex { index: n, lanes: 2 },
            ),
            (
                Some(off),
                FindingKind::UnalignedIndex {
                    index: odd,
                    lanes: 8,
                },
            ),
            (
                Some(bad_store),
                FindingKind::UnalignedIndex {
                    index: odd,
                    lanes: 4,
                },
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// All findings at once, and their text.

#[test]
fn three_breakages_are_all_reported() {
    let (mut b, d) = base("k");
    let z = b.u32(0);
    let f = b.f32(1.0);
    let s = b.add(z, f); // operands differ
    b.store(d.x, z, f); // read-only buffer (and f32 into f16)
    b.for_range(z, z, 0, |_, _| {}); // step 0
    let k = b.finish();
    let store = k.body.0[3];
    let lp = k.body.0[4];
    let Memory::Param(x) = d.x else {
        unreachable!()
    };
    assert_findings(
        &k,
        &[
            (
                Some(s),
                FindingKind::OperandsDiffer {
                    first: z,
                    first_ty: sc(U32),
                    second: f,
                    second_ty: sc(F32),
                },
            ),
            (Some(store), FindingKind::WriteToReadOnly { param: x }),
            (
                Some(store),
                FindingKind::StoreTypeMismatch {
                    ty: sc(F32),
                    elem: F16,
                },
            ),
            (Some(lp), FindingKind::LoopStepZero),
        ],
    );
}

#[test]
fn messages_name_values_as_the_text_form_does() {
    let (mut b, d) = base("quant");
    let z = b.u32(0); // v0
    let f = b.f32(1.0); // v1
    let s = b.add(z, z); // v2
    let later = b.u32(7); // v3
    b.store(d.x, z, f); // `store x[v0], v1`
    let mut k = b.finish();
    set_op(&mut k, s, Op::Binary(BinaryOp::Add, z, later));
    k.body.0.insert(0, later); // now v0 = const 7 ... and it is placed twice
    let text = print(&k);
    assert!(text.contains("    v3 = add v1, v0\n"), "{text}");
    let e = verify(&k).unwrap_err();
    let lines: Vec<String> = e.errors.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        lines,
        [
            "v0: instruction is placed in more than one block position",
            "`store x[v1], v2`: parameter 0 (`x`) is read-only but is written",
            "`store x[v1], v2`: stored value of type f32 does not have the memory's element type f16",
        ]
    );
    assert_eq!(
        e.to_string(),
        format!(
            "kernel `quant` is invalid (3 findings):\n  {}",
            lines.join("\n  ")
        )
    );

    // Use before definition, by program-order names.
    let mut b = Builder::new("k", 1);
    let a = b.u32(1); // v0
    let s = b.add(a, a); // v1
    let later = b.u32(2); // v2
    let mut k = b.finish();
    set_op(&mut k, s, Op::Binary(BinaryOp::Add, a, later));
    let e = verify(&k).unwrap_err();
    assert_eq!(
        e.to_string(),
        "kernel `k` is invalid (1 finding):\n  v1: operand v2 is used before it is defined"
    );

    // Unplaced and out-of-range handles are named by arena index.
    let stray = k.insts.append(Inst {
        op: Op::Const(Const::U32(2)),
        ty: Some(sc(U32)),
    });
    set_op(
        &mut k,
        s,
        Op::Binary(BinaryOp::Add, stray, Value::from_index(50)),
    );
    let lines: Vec<String> = verify(&k)
        .unwrap_err()
        .errors
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "v1: operand v?#3 is not placed in any block of the program",
            "v1: operand v?#50 is out of range of the arena (4 instructions)",
            "v?#3: instruction is in the arena but in no block of the program",
        ]
    );
}

#[test]
fn kernel_level_messages() {
    let mut b = Builder::new("k", 0);
    b.buffer("x", F32, Access::Read);
    b.buffer("x", F32, Access::Write);
    b.shared("s", F32, 0);
    let e = verify(&b.finish()).unwrap_err();
    let lines: Vec<String> = e.errors.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        lines,
        [
            "block_size 0 is not in 1..=1024",
            "shared array 0 (`s`) has length 0",
            "name `x` of parameter 1 is already the name of parameter 0",
        ]
    );
    assert!(e.errors.iter().all(|f| f.at.is_none()));
}

// ---------------------------------------------------------------------------------------------
// Robustness: arbitrary garbage never panics or hangs the verifier or the printer.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn value(&mut self, n: usize) -> Value {
        Value::from_index(self.below(n as u64 + 3) as u32)
    }
    fn block(&mut self, n: usize) -> kvq_ir::ir::Block {
        let len = self.below(4) as usize;
        kvq_ir::ir::Block((0..len).map(|_| self.value(n)).collect())
    }
}

#[test]
fn random_kernels_never_panic() {
    let scalar_types = [Bool, U8, U32, F16, BF16, F32, F64];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let n = rng.below(12) as usize;
        let mut k = base("r").0.finish();
        for _ in 0..n {
            let v = |rng: &mut Rng| rng.value(n);
            let op = match rng.below(14) {
                0 => Op::Const(Const::U32(rng.below(70) as u32)),
                1 => Op::ScalarParam(rng.below(6) as u32),
                2 => Op::Unary(UnaryOp::Neg, v(&mut rng)),
                3 => Op::Binary(BinaryOp::Add, v(&mut rng), v(&mut rng)),
                4 => Op::Load {
                    mem: if rng.below(2) == 0 {
                        Memory::Param(rng.below(6) as u32)
                    } else {
                        Memory::Shared(rng.below(2) as u32)
                    },
                    index: v(&mut rng),
                    lanes: rng.below(20) as u8,
                    aligned: rng.below(2) == 0,
                },
                5 => Op::Store {
                    mem: Memory::Param(rng.below(6) as u32),
                    index: v(&mut rng),
                    value: v(&mut rng),
                    aligned: rng.below(2) == 0,
                },
                6 => Op::Extract(v(&mut rng), rng.below(20) as u8),
                7 => Op::Vector((0..rng.below(20)).map(|_| v(&mut rng)).collect()),
                8 => Op::WriteLocal {
                    local: rng.below(3) as u32,
                    index: v(&mut rng),
                    value: v(&mut rng),
                },
                9 => Op::PackBits {
                    codes: (0..rng.below(10)).map(|_| v(&mut rng)).collect(),
                    bits: Bits::ALL[rng.below(4) as usize],
                    order: BitOrder::Msb,
                },
                10 => Op::Loop {
                    start: v(&mut rng),
                    end: v(&mut rng),
                    step: rng.below(2) as u32,
                    body: rng.block(n),
                },
                11 => Op::If {
                    cond: v(&mut rng),
                    then: rng.block(n),
                    otherwise: rng.block(n),
                },
                12 if rng.below(2) == 0 => Op::Barrier,
                12 => Op::Warp(match rng.below(3) {
                    0 => WarpOp::ShuffleXor {
                        src: rng.below(4) as u32,
                        dst: rng.below(4) as u32,
                        mask: rng.below(40) as u32,
                    },
                    1 => WarpOp::ShuffleIdx {
                        src: rng.below(4) as u32,
                        dst: rng.below(4) as u32,
                        lane: rng.below(4) as u32,
                    },
                    _ => WarpOp::Reduce {
                        op: ReduceOp::Sum,
                        local: rng.below(4) as u32,
                    },
                }),
                _ => Op::Convert(scalar_types[rng.below(7) as usize], v(&mut rng)),
            };
            let ty = match rng.below(4) {
                0 => None,
                1 => Some(sc(scalar_types[rng.below(7) as usize])),
                2 => Some(Type::Vector(F32, rng.below(20) as u8)),
                _ => Some(sc(U32)),
            };
            k.insts.append(Inst { op, ty });
        }
        k.body = rng.block(n);
        let text = print(&k);
        match verify(&k) {
            Ok(info) => assert_eq!(info.types.len(), k.insts.len()),
            Err(e) => {
                assert!(!e.errors.is_empty());
                let _ = e.to_string();
                let _ = text;
            }
        }
    }
}

/// `depth` nested loops (built innermost first, so arena order is the reverse of program order).
fn nested_loops(depth: usize) -> Kernel {
    let mut b = Builder::new("deep", 1);
    let z = b.u32(0);
    let mut k = b.finish();
    let mut inner = kvq_ir::ir::Block(Vec::new());
    for _ in 0..depth {
        let h = k.insts.append(Inst {
            op: Op::Loop {
                start: z,
                end: z,
                step: 1,
                body: inner,
            },
            ty: Some(sc(U32)),
        });
        inner = kvq_ir::ir::Block(vec![h]);
    }
    k.body.0.extend(inner.0);
    k
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    // The walks are iterative: a recursive walk would overflow a test thread's stack here.
    assert_valid(&nested_loops(100_000));
    // The text grows with the square of the depth (indentation), so print a shallower one.
    let text = print(&nested_loops(2_000));
    assert_eq!(text.lines().count(), 1 + 1 + 2 * 2_000);
    assert!(text.ends_with("\n    }\n"));
}

/// A cluster kernel: each block stores its id in shared memory and, after a cluster barrier,
/// reads the id of the block of rank `rank ^ 1`; a second cluster barrier ends it.
fn cluster_swap(cluster: u32) -> (Kernel, Value) {
    let mut b = Builder::new("swap", 32);
    b.cluster(cluster);
    let out = b.buffer("out", U32, Access::Write);
    let mine = b.shared("mine", U32, 1);
    let z = b.u32(0);
    let blk = b.special(Special::BlockId);
    b.store(mine, z, blk);
    b.cluster_barrier();
    let n = b.u32(cluster);
    let blk = b.special(Special::BlockId);
    let rank = b.rem(blk, n);
    let one = b.u32(1);
    let other = b.binary(BinaryOp::Xor, rank, one);
    let z = b.u32(0);
    let got = b.load_remote(mine, other, z);
    b.store(out, blk, got);
    b.cluster_barrier();
    (b.finish(), got)
}

#[test]
fn inv15_clusters() {
    let (k, _) = cluster_swap(2);
    assert_valid(&k);
    assert!(print(&k).contains("block_size 32 cluster_size 2"));
    assert!(print(&k).contains("load_remote shared.mine[v"));
    // Resident blocks asked per SM: within an SM's 2,048 threads, printed; beyond, a finding.
    let (mut k, _) = cluster_swap(2);
    k.min_blocks_per_sm = 64;
    assert_valid(&k);
    assert!(print(&k).contains("block_size 32 cluster_size 2 min_blocks_per_sm 64"));
    k.min_blocks_per_sm = 65;
    assert_findings(
        &k,
        &[(
            None,
            FindingKind::BadMinBlocks {
                blocks: 65,
                block_size: 32,
            },
        )],
    );
    // Cluster sizes outside 1..=8.
    for bad in [0, 9] {
        let (mut k, _) = cluster_swap(2);
        k.cluster_size = bad;
        assert_findings(
            &k,
            &[(None, FindingKind::BadClusterSize { cluster_size: bad })],
        );
    }
    // A kernel without clusters has no cluster operations.
    let (mut k, got) = cluster_swap(2);
    k.cluster_size = 1;
    let barriers: Vec<Value> = k
        .body
        .0
        .iter()
        .copied()
        .filter(|&h| matches!(k.insts[h].op, Op::ClusterBarrier))
        .collect();
    assert_findings(
        &k,
        &[
            (Some(barriers[0]), FindingKind::ClusterOpWithoutCluster),
            (Some(got), FindingKind::ClusterOpWithoutCluster),
            (Some(barriers[1]), FindingKind::ClusterOpWithoutCluster),
        ],
    );
    // No cluster barrier after the remote load.
    let (mut k, got) = cluster_swap(2);
    let last = *k.body.0.last().expect("instructions");
    set_op(&mut k, last, Op::Barrier);
    assert_findings(&k, &[(Some(got), FindingKind::RemoteLoadNotFollowed)]);
    // A cluster barrier inside a loop.
    let mut b = Builder::new("nested", 32);
    b.cluster(2);
    let (z, one) = (b.u32(0), b.u32(1));
    b.for_range(z, one, 1, |b, _| b.cluster_barrier());
    let k = b.finish();
    let Op::Loop { body, .. } = &k.insts[k.body.0[2]].op else {
        panic!("a loop")
    };
    assert_findings(
        &k,
        &[(Some(body.0[0]), FindingKind::ClusterBarrierNotTopLevel)],
    );
}

/// A load at a uniform index from a read-only buffer is uniform (every thread reads the same
/// bits): it may bound a sync loop and cross barriers. From a buffer the kernel may write, or at
/// a thread's index, it is not.
#[test]
fn inv10_loads_of_read_only_buffers_at_uniform_indexes_are_uniform() {
    let build = |access: Access, by_thread: bool| {
        let mut b = Builder::new("k", 32);
        let counts = b.buffer("counts", U32, access);
        let out = b.buffer("out", U32, Access::Write);
        let at = match by_thread {
            true => b.special(Special::ThreadId),
            false => b.special(Special::BlockId),
        };
        let n = b.load(counts, at, 1);
        let z = b.u32(0);
        b.for_range(z, n, 1, |b, _| b.barrier());
        b.barrier();
        let t = b.special(Special::ThreadId);
        b.store(out, t, n);
        (b.finish(), n)
    };
    let (k, _) = build(Access::Read, false);
    assert_valid(&k);
    for (access, by_thread) in [(Access::ReadWrite, false), (Access::Read, true)] {
        let (k, n) = build(access, by_thread);
        let kinds: Vec<FindingKind> = findings(&k).into_iter().map(|(_, kind)| kind).collect();
        assert!(
            kinds.contains(&FindingKind::SyncLoopNotUniform { operand: n }),
            "{access:?} {by_thread}: {kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .any(|f| matches!(f, FindingKind::CrossesBarrier { operand, .. } if *operand == n)),
            "{kinds:?}"
        );
    }
}
