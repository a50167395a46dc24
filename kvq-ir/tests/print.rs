//! The text form: exact output, and independence from arena order.

use kvq_ir::ir::print::{print, value_names};
use kvq_ir::ir::{
    verify, Access, Arena, Block, Builder, CmpOp, Const, Inst, Kernel, Op, ScalarType, Special,
    Type, UnaryOp, Value,
};
use kvq_ir::{BitOrder, Bits};

/// A kernel with a vector load, a loop, an if/else, a barrier, shared and local memory,
/// pack_bits and select_rank.
fn sample() -> Kernel {
    use ScalarType::*;
    let mut b = Builder::new("quantize_k", 128);
    let x = b.buffer("x", F16, Access::Read);
    let codes = b.buffer("codes", U8, Access::Write);
    let tokens = b.scalar_param("tokens", U32);
    let smin = b.shared("smin", F32, 128);
    let acc = b.local("acc", F32, 8);
    let tid = b.special(Special::ThreadId);
    let zero = b.u32(0);
    let v = b.load(x, zero, 8);
    let n = b.param(tokens);
    b.for_range(tid, n, 128, |b, i| {
        let e = b.extract(v, 3);
        let f = b.convert(F32, e);
        b.write_local(acc, zero, f);
        b.store(smin, i, f);
    });
    let c = b.cmp(CmpOp::Lt, tid, n);
    b.if_else(
        c,
        |b| {
            let q = b.u8(3);
            let byte = b.pack_bits(vec![q, q], Bits::B4, BitOrder::Msb);
            b.store(codes, tid, byte);
        },
        |_| {},
    );
    b.barrier();
    let base = b.u32(0);
    let one = b.u32(1);
    let count = b.u32(128);
    let rank = b.u32(64);
    let m = b.select_rank(smin, base, one, count, rank);
    let half = b.f32(0.5);
    let y = b.mul(m, half);
    let r = b.read_local(acc, base);
    let s = b.add(y, r);
    let fin = b.unary(UnaryOp::IsFinite, s);
    b.if_else(
        fin,
        |_| {},
        |b| {
            let code = b.u8(0);
            b.store(codes, base, code);
        },
    );
    b.finish()
}

const SAMPLE_TEXT: &str = "\
kernel quantize_k(x: &[f16] read, codes: &mut [u8] write, tokens: u32) block_size 128
shared smin: [f32; 128]
local acc: [f32; 8]
    v0 = thread_id
    v1 = const.u32 0
    v2 = load.f16x8 x[v1]
    v3 = param tokens
    v4 = loop v0..v3 step 128 {
        v5 = extract v2, 3
        v6 = convert.f32 v5
        write_local acc[v1], v6
        store shared.smin[v4], v6
    }
    v7 = cmp.lt v0, v3
    if v7 {
        v8 = const.u8 3
        v9 = pack_bits.b4.msb v8, v8
        store codes[v0], v9
    } else {
    }
    barrier
    v10 = const.u32 0
    v11 = const.u32 1
    v12 = const.u32 128
    v13 = const.u32 64
    v14 = select_rank shared.smin[v10, stride v11, count v12], rank v13
    v15 = const.f32 0.5
    v16 = mul v14, v15
    v17 = read_local acc[v10]
    v18 = add v16, v17
    v19 = is_finite v18
    if v19 {
    } else {
        v20 = const.u8 0
        store codes[v10], v20
    }
";

#[test]
fn sample_kernel_prints_exactly() {
    let k = sample();
    assert!(verify(&k).is_ok(), "{}", print(&k));
    assert_eq!(print(&k), SAMPLE_TEXT);
}

#[test]
fn value_names_follow_program_order_not_arena_order() {
    let k = sample();
    let names = value_names(&k);
    // 21 values; stores, write_local, ifs and the barrier have no number.
    assert_eq!(names.len(), 21);
    let mut numbers: Vec<usize> = names.values().copied().collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..21).collect::<Vec<_>>());
    // The first If's arena index comes after its blocks' instructions (the builder appends it
    // last), yet `v8` is the first instruction inside it.
    let first_if = k.body.0[6];
    assert!(matches!(k.insts[first_if].op, Op::If { .. }));
    assert!(!names.contains_key(&first_if));
    let Op::If { then, .. } = &k.insts[first_if].op else {
        unreachable!()
    };
    assert_eq!(names[&then.0[0]], 8);
    assert!(then.0[0].index() < first_if.index());
}

/// Rebuilds `k` with its arena permuted: the instruction at old index `i` moves to index
/// `order.iter().position(|&o| o == i)`.
fn permuted(k: &Kernel, order: &[usize]) -> Kernel {
    let mut new_index = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new as u32;
    }
    let m = |v: &Value| Value::from_index(new_index[v.index()]);
    let mb = |b: &Block| Block(b.0.iter().map(m).collect());
    let mut insts = Arena::default();
    for &old in order {
        let inst = &k.insts[Value::from_index(old as u32)];
        let op = match &inst.op {
            Op::Const(_)
            | Op::ScalarParam(_)
            | Op::Special(_)
            | Op::Barrier
            | Op::Warp(_)
            | Op::ClusterBarrier => inst.op.clone(),
            Op::LoadRemote {
                shared,
                rank,
                index,
            } => Op::LoadRemote {
                shared: *shared,
                rank: m(rank),
                index: m(index),
            },
            Op::Unary(u, a) => Op::Unary(*u, m(a)),
            Op::Binary(o, a, b) => Op::Binary(*o, m(a), m(b)),
            Op::Cmp(o, a, b) => Op::Cmp(*o, m(a), m(b)),
            Op::Select {
                cond,
                if_true,
                if_false,
            } => Op::Select {
                cond: m(cond),
                if_true: m(if_true),
                if_false: m(if_false),
            },
            Op::Convert(t, a) => Op::Convert(*t, m(a)),
            Op::Bitcast(t, a) => Op::Bitcast(*t, m(a)),
            Op::Load {
                mem,
                index,
                lanes,
                aligned,
            } => Op::Load {
                mem: *mem,
                index: m(index),
                lanes: *lanes,
                aligned: *aligned,
            },
            Op::Store {
                mem,
                index,
                value,
                aligned,
            } => Op::Store {
                mem: *mem,
                index: m(index),
                value: m(value),
                aligned: *aligned,
            },
            Op::Extract(a, l) => Op::Extract(m(a), *l),
            Op::Vector(vs) => Op::Vector(vs.iter().map(m).collect()),
            Op::ReadLocal { local, index } => Op::ReadLocal {
                local: *local,
                index: m(index),
            },
            Op::WriteLocal {
                local,
                index,
                value,
            } => Op::WriteLocal {
                local: *local,
                index: m(index),
                value: m(value),
            },
            Op::PackBits { codes, bits, order } => Op::PackBits {
                codes: codes.iter().map(m).collect(),
                bits: *bits,
                order: *order,
            },
            Op::UnpackBits {
                byte,
                lane,
                bits,
                order,
            } => Op::UnpackBits {
                byte: m(byte),
                lane: *lane,
                bits: *bits,
                order: *order,
            },
            Op::SelectRank {
                mem,
                base,
                stride,
                count,
                rank,
            } => Op::SelectRank {
                mem: *mem,
                base: m(base),
                stride: m(stride),
                count: m(count),
                rank: m(rank),
            },
            Op::Loop {
                start,
                end,
                step,
                body,
            } => Op::Loop {
                start: m(start),
                end: m(end),
                step: *step,
                body: mb(body),
            },
            Op::If {
                cond,
                then,
                otherwise,
            } => Op::If {
                cond: m(cond),
                then: mb(then),
                otherwise: mb(otherwise),
            },
        };
        insts.append(Inst { op, ty: inst.ty });
    }
    Kernel {
        insts,
        body: mb(&k.body),
        ..k.clone()
    }
}

#[test]
fn arena_order_does_not_change_the_text() {
    let k = sample();
    let n = k.insts.len();
    let reversed: Vec<usize> = (0..n).rev().collect();
    // A rotation and an interleaving too.
    let rotated: Vec<usize> = (0..n).map(|i| (i + 7) % n).collect();
    let interleaved: Vec<usize> = (0..n).step_by(2).chain((1..n).step_by(2)).collect();
    for order in [reversed, rotated, interleaved] {
        let p = permuted(&k, &order);
        assert_ne!(p.insts, k.insts);
        assert!(verify(&p).is_ok(), "{}", print(&p));
        assert_eq!(print(&p), SAMPLE_TEXT);
        // The numbering follows the instructions, not their indices.
        let (a, b) = (value_names(&k), value_names(&p));
        for (v, num) in &a {
            let moved =
                Value::from_index(order.iter().position(|&o| o == v.index()).unwrap() as u32);
            assert_eq!(b[&moved], *num);
        }
    }
}

#[test]
fn different_programs_print_differently() {
    let mut k = sample();
    let first = k.body.0[1];
    k.insts.get_mut(first).unwrap().op = Op::Const(Const::U32(1));
    assert_ne!(print(&k), SAMPLE_TEXT);
}

#[test]
fn constants_print_exactly() {
    let mut b = Builder::new("consts", 1);
    b.f32(0.1);
    b.f32(-0.0);
    b.f32(f32::from_bits(1)); // the smallest subnormal
    b.f32(f32::INFINITY);
    b.f32(f32::NAN);
    b.push(
        Op::Const(Const::F32(0x7fc0_0001)), // a NaN with a payload: hex
        Some(Type::Scalar(ScalarType::F32)),
    );
    b.f64(1e300);
    b.push(
        Op::Const(Const::F64(0xfff8_0000_0000_0001)),
        Some(Type::Scalar(ScalarType::F64)),
    );
    b.bool(false);
    b.u8(255);
    b.u32(u32::MAX);
    let k = b.finish();
    let text = "\
kernel consts() block_size 1
    v0 = const.f32 0.1
    v1 = const.f32 -0.0
    v2 = const.f32 1e-45
    v3 = const.f32 inf
    v4 = const.f32 NaN
    v5 = const.f32 0x7fc00001
    v6 = const.f64 1e300
    v7 = const.f64 0xfff8000000000001
    v8 = const.bool false
    v9 = const.u8 255
    v10 = const.u32 4294967295
";
    assert_eq!(print(&k), text);
}

#[test]
fn every_operation_has_a_text() {
    use ScalarType::*;
    let mut b = Builder::new("ops", 32);
    let buf = b.buffer("buf", F32, Access::ReadWrite);
    let b16 = b.buffer("b16", BF16, Access::Read);
    let g = b.special(Special::GridSize);
    let bid = b.special(Special::BlockId);
    let x = b.binary(kvq_ir::ir::BinaryOp::Shr, g, bid);
    let f = b.load(buf, x, 1);
    let f4 = b.load(b16, x, 4);
    let r = b.unary(UnaryOp::RoundEven, f);
    let t = b.cmp(CmpOp::Ge, r, f);
    let s = b.select(t, r, f);
    let vec = b.vector(vec![s, s]);
    b.store(buf, x, vec);
    let byte = b.u8(0x5a);
    let u = b.unpack_bits(byte, 7, Bits::B1, BitOrder::Lsb);
    b.for_range(g, bid, 2, |b, i| {
        b.if_then(t, |b| {
            b.store(buf, i, f);
        });
    });
    let k = b.finish();
    let _ = (f4, u);
    let text = "\
kernel ops(buf: &mut [f32] read_write, b16: &[bf16] read) block_size 32
    v0 = grid_size
    v1 = block_id
    v2 = shr v0, v1
    v3 = load.f32 buf[v2]
    v4 = load.bf16x4 b16[v2]
    v5 = round_even v3
    v6 = cmp.ge v5, v3
    v7 = select v6, v5, v3
    v8 = vector v7, v7
    store buf[v2], v8
    v9 = const.u8 90
    v10 = unpack_bits.b1.lsb v9, 7
    v11 = loop v0..v1 step 2 {
        if v6 {
            store buf[v11], v3
        } else {
        }
    }
";
    assert!(verify(&k).is_ok(), "{}", print(&k));
    assert_eq!(print(&k), text);
}

#[test]
fn broken_kernels_print_without_panicking() {
    let mut b = Builder::new("broken", 1);
    let a = b.u32(1);
    let c = b.u32(2);
    b.for_range(a, c, 1, |b, _| {
        b.u32(3);
    });
    let mut k = b.finish();
    let lp = k.body.0[2];
    // An out-of-range entry, an out-of-range operand, a memory, local and parameter that do not
    // exist, an unplaced instruction, and the loop placed a second time (in its own body).
    k.body.0.push(Value::from_index(99));
    k.insts.get_mut(a).unwrap().op = Op::Unary(UnaryOp::Neg, Value::from_index(77));
    let stray = k.insts.append(Inst {
        op: Op::Load {
            mem: kvq_ir::ir::Memory::Shared(4),
            index: a,
            lanes: 2,
            aligned: false,
        },
        ty: None,
    });
    k.insts.append(Inst {
        op: Op::WriteLocal {
            local: 3,
            index: stray,
            value: Value::from_index(1000),
        },
        ty: None,
    });
    k.insts.append(Inst {
        op: Op::ScalarParam(5),
        ty: None,
    });
    if let Op::Loop { body, .. } = &mut k.insts.get_mut(lp).unwrap().op {
        body.0.push(lp);
    }
    let text = "\
kernel broken() block_size 1
    v0 = neg v?#77
    v1 = const.u32 2
    v2 = loop v0..v1 step 1 {
        v3 = const.u32 3
        v2 = loop v0..v1 step 1 { ... }
    }
    v?#99 = <not in the arena>
unplaced
    v?#4 = load.?x2 shared?4[v0]
    write_local local?3[v?#4], v?#1000
    v?#6 = param param?5
";
    assert_eq!(print(&k), text);
}
