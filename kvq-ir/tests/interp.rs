//! The interpreter against independently computed expectations: hand-written values and plain
//! Rust formulas, never the interpreter itself.

use half::{bf16, f16};
use kvq_ir::ir::interp::{run, Arg, Buffer, InterpError, Malformed, ParamKind};
use kvq_ir::ir::{
    Access, BinaryOp, Builder, CmpOp, Const, Handle, Inst, Kernel, Memory, Op, ScalarType, Special,
    Type, UnaryOp, Value,
};
use kvq_ir::{BitOrder, Bits};
use ScalarType::{Bool, BF16, F16, F32, F64, U32, U8};

/// The handle of the `nth` instruction (in arena order) that `pick` accepts.
fn find(kernel: &Kernel, nth: usize, pick: impl Fn(&Op) -> bool) -> Value {
    kernel
        .insts
        .iter()
        .filter(|(_, inst)| pick(&inst.op))
        .nth(nth)
        .map(|(h, _)| h)
        .expect("the kernel has such an instruction")
}

fn buffer(args: &[Arg], i: usize) -> &Buffer {
    args[i].buffer().expect("a buffer argument")
}

/// A deterministic sequence of pseudo-random u32s (a 64-bit LCG).
fn lcg(seed: u64, n: usize) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Whole kernels.

const COPY_BLOCK: u32 = 4;
const COPY_GRID: u32 = 3;

/// `dst[8v..8v+8] = f32(src[8v..8v+8])` for v in 0..vectors, by a grid-stride loop of 8-lane
/// vector loads, conversions and one vector store.
fn copy_kernel() -> Kernel {
    let mut b = Builder::new("copy_f16_f32", COPY_BLOCK);
    let src = b.buffer("src", F16, Access::Read);
    let dst = b.buffer("dst", F32, Access::Write);
    let vectors = b.scalar_param("vectors", U32);
    let vectors = b.param(vectors);
    let tid = b.special(Special::ThreadId);
    let block = b.special(Special::BlockId);
    let block_size = b.u32(COPY_BLOCK);
    let first = b.mul(block, block_size);
    let start = b.add(first, tid);
    b.for_range(start, vectors, COPY_BLOCK * COPY_GRID, |b, v| {
        let eight = b.u32(8);
        let at = b.mul(v, eight);
        let halves = b.load(src, at, 8);
        let lanes = (0..8)
            .map(|lane| {
                let h = b.extract(halves, lane);
                b.convert(F32, h)
            })
            .collect();
        let floats = b.vector(lanes);
        b.store(dst, at, floats);
    });
    b.finish()
}

#[test]
fn grid_stride_copy_converts_f16_vectors_to_f32() {
    let vectors = 29; // not a multiple of the 12 threads
    let mut src: Vec<f16> = (0..8 * vectors)
        .map(|k| f16::from_f32((k as f32 - 100.0) * 0.37))
        .collect();
    src[3] = f16::INFINITY;
    src[17] = f16::NEG_INFINITY;
    src[40] = f16::from_bits(1); // the smallest subnormal
    src[41] = f16::NEG_ZERO;
    src[42] = f16::MAX;
    let tail = 5;
    let mut args = vec![
        Arg::Buffer(Buffer::F16(src.clone())),
        Arg::Buffer(Buffer::F32(vec![7.5; src.len() + tail])),
        Arg::U32(vectors as u32),
    ];
    run(&copy_kernel(), &mut args, COPY_GRID).unwrap();
    let dst = buffer(&args, 1).as_f32().unwrap();
    for (k, (x, y)) in src.iter().zip(dst).enumerate() {
        assert_eq!(y.to_bits(), x.to_f32().to_bits(), "element {k}");
    }
    assert_eq!(
        dst[src.len()..],
        vec![7.5; tail][..],
        "nothing past the vectors"
    );
    assert_eq!(dst[40], 2f32.powi(-24));
}

/// Each block takes the maximum of its `n` elements of `x`: every thread a strided partial
/// maximum in a local, then through shared memory and a barrier to thread 0.
fn block_max_kernel(threads: u32) -> Kernel {
    let mut b = Builder::new("block_max", threads);
    let x = b.buffer("x", U32, Access::Read);
    let out = b.buffer("out", U32, Access::Write);
    let n = b.scalar_param("n", U32);
    let partial = b.shared("partial", U32, threads);
    let acc = b.local("acc", U32, 1);
    let n = b.param(n);
    let tid = b.special(Special::ThreadId);
    let block = b.special(Special::BlockId);
    let zero = b.u32(0);
    let base = b.mul(block, n);
    b.for_range(tid, n, threads, |b, i| {
        let at = b.add(base, i);
        let v = b.load(x, at, 1);
        let z = b.u32(0);
        let a = b.read_local(acc, z);
        let m = b.max(a, v);
        b.write_local(acc, z, m);
    });
    let mine = b.read_local(acc, zero);
    b.store(partial, tid, mine);
    b.barrier();
    let tid = b.special(Special::ThreadId);
    let zero = b.u32(0);
    let first = b.cmp(CmpOp::Eq, tid, zero);
    b.if_then(first, |b| {
        let z = b.u32(0);
        let end = b.u32(threads);
        b.for_range(z, end, 1, |b, j| {
            let p = b.load(partial, j, 1);
            let a = b.read_local(acc, z);
            let m = b.max(a, p);
            b.write_local(acc, z, m);
        });
        let result = b.read_local(acc, z);
        let block = b.special(Special::BlockId);
        b.store(out, block, result);
    });
    b.finish()
}

#[test]
fn block_reduction_through_shared_memory_gives_the_maximum() {
    for (threads, n, grid) in [(8, 37, 3), (8, 3, 2), (1, 10, 1), (32, 1000, 4)] {
        let x = lcg(u64::from(threads * n), (n * grid) as usize);
        let mut args = vec![
            Arg::Buffer(Buffer::U32(x.clone())),
            Arg::Buffer(Buffer::U32(vec![0; grid as usize])),
            Arg::U32(n),
        ];
        run(&block_max_kernel(threads), &mut args, grid).unwrap();
        let expected: Vec<u32> = x
            .chunks(n as usize)
            .map(|c| *c.iter().max().unwrap())
            .collect();
        assert_eq!(
            buffer(&args, 1).as_u32().unwrap(),
            expected,
            "{threads} threads, n = {n}"
        );
    }
}

#[test]
fn locals_survive_barriers_and_memory_starts_at_zero_in_every_block() {
    let mut b = Builder::new("locals", 4);
    let out = b.buffer("out", U32, Access::Write);
    let mine = b.local("mine", U32, 2);
    let only_block0 = b.local("only_block0", U32, 1);
    let flag = b.shared("flag", U32, 1);
    let tid = b.special(Special::ThreadId);
    let block = b.special(Special::BlockId);
    let (zero, one, ten, hundred) = (b.u32(0), b.u32(1), b.u32(10), b.u32(100));
    let t10 = b.mul(tid, ten);
    b.write_local(mine, zero, t10);
    let t100 = b.add(tid, hundred);
    b.write_local(mine, one, t100);
    let is_block0 = b.cmp(CmpOp::Eq, block, zero);
    b.if_then(is_block0, |b| {
        let (z, five, seven) = (b.u32(0), b.u32(5), b.u32(7));
        b.write_local(only_block0, z, seven);
        b.store(flag, z, five);
    });
    b.barrier();
    let tid = b.special(Special::ThreadId);
    let block = b.special(Special::BlockId);
    let (zero, one, four) = (b.u32(0), b.u32(1), b.u32(4));
    let first = b.mul(block, four);
    let thread = b.add(first, tid);
    let base = b.mul(thread, four);
    let values = [
        b.read_local(mine, zero),
        b.read_local(mine, one),
        b.read_local(only_block0, zero),
        b.load(flag, zero, 1),
    ];
    for (k, v) in values.into_iter().enumerate() {
        let k = b.u32(k as u32);
        let at = b.add(base, k);
        b.store(out, at, v);
    }
    let kernel = b.finish();
    let mut args = vec![Arg::Buffer(Buffer::U32(vec![99; 32]))];
    run(&kernel, &mut args, 2).unwrap();
    let mut expected = Vec::new();
    for block in 0..2 {
        for tid in 0..4 {
            let b0 = block == 0;
            expected.extend([
                tid * 10,
                tid + 100,
                if b0 { 7 } else { 0 },
                if b0 { 5 } else { 0 },
            ]);
        }
    }
    assert_eq!(buffer(&args, 0).as_u32().unwrap(), expected);
}

#[test]
fn coordinates_and_scalar_parameters() {
    let mut b = Builder::new("coords", 3);
    let out = b.buffer("out", F32, Access::Write);
    let scale = b.scalar_param("scale", F32);
    let tid = b.special(Special::ThreadId);
    let block = b.special(Special::BlockId);
    let grid = b.special(Special::GridSize);
    let (three, hundred, ten) = (b.u32(3), b.u32(100), b.u32(10));
    let first = b.mul(block, three);
    let at = b.add(first, tid);
    let b100 = b.mul(block, hundred);
    let t10 = b.mul(tid, ten);
    let sum = b.add(b100, t10);
    let sum = b.add(sum, grid);
    let sum = b.convert(F32, sum);
    let scale = b.param(scale);
    let scaled = b.mul(sum, scale);
    b.store(out, at, scaled);
    let kernel = b.finish();
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 6])), Arg::F32(0.5)];
    run(&kernel, &mut args, 2).unwrap();
    let expected: Vec<f32> = (0..2)
        .flat_map(|blk| (0..3).map(move |t| (blk * 100 + t * 10 + 2) as f32 * 0.5))
        .collect();
    assert_eq!(buffer(&args, 0).as_f32().unwrap(), expected);
}

#[test]
fn loops_count_up_and_stop_on_overflow() {
    // Iterations of `for i in (start..end).step_by(step)` counted in a local, stored at out[0];
    // the last i at out[1].
    let cases = [
        (0, 10, 3, 4, 9),
        (5, 5, 1, 0, 0),
        (9, 2, 1, 0, 0),
        (u32::MAX - 5, u32::MAX, 4, 2, u32::MAX - 1),
        (0, u32::MAX, 1 << 31, 2, 1 << 31),
    ];
    for (start, end, step, count, last) in cases {
        let mut b = Builder::new("count", 1);
        let out = b.buffer("out", U32, Access::Write);
        let n = b.local("n", U32, 2);
        let (s, e) = (b.u32(start), b.u32(end));
        b.for_range(s, e, step, |b, i| {
            let (z, one) = (b.u32(0), b.u32(1));
            let c = b.read_local(n, z);
            let c = b.add(c, one);
            b.write_local(n, z, c);
            b.write_local(n, one, i);
        });
        let (z, one) = (b.u32(0), b.u32(1));
        let c = b.read_local(n, z);
        b.store(out, z, c);
        let l = b.read_local(n, one);
        b.store(out, one, l);
        let mut args = vec![Arg::Buffer(Buffer::U32(vec![0; 2]))];
        run(&b.finish(), &mut args, 1).unwrap();
        assert_eq!(
            buffer(&args, 0).as_u32().unwrap(),
            [count, last],
            "{start}..{end} by {step}"
        );
    }
}

#[test]
fn the_example_kernels_pass_the_verifier() {
    for kernel in [copy_kernel(), block_max_kernel(8), block_max_kernel(1)] {
        if let Err(e) = kvq_ir::ir::verify(&kernel) {
            panic!("{e:#?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bit packing.

/// `out[0] = pack(codes)`, `out[1 + j] = unpack(out[0], j)`.
fn pack_and_unpack(codes: &[u8], bits: Bits, order: BitOrder) -> Result<Vec<u8>, InterpError> {
    let mut b = Builder::new("pack", 1);
    let out = b.buffer("out", U8, Access::Write);
    let codes: Vec<Value> = codes.iter().map(|&c| b.u8(c)).collect();
    let byte = b.pack_bits(codes.clone(), bits, order);
    let zero = b.u32(0);
    b.store(out, zero, byte);
    for j in 0..codes.len() {
        let code = b.unpack_bits(byte, j as u8, bits, order);
        let at = b.u32(1 + j as u32);
        b.store(out, at, code);
    }
    let mut args = vec![Arg::Buffer(Buffer::U8(vec![0xEE; 1 + codes.len()]))];
    run(&b.finish(), &mut args, 1)?;
    Ok(buffer(&args, 0).as_u8().unwrap().to_vec())
}

#[test]
fn pack_bits_matches_hand_written_bytes() {
    use BitOrder::{Lsb, Msb};
    let cases: [(&[u8], Bits, BitOrder, u8); 12] = [
        (&[1, 0, 0, 0, 0, 0, 0, 1], Bits::B1, Msb, 0b1000_0001),
        (&[1, 1, 0, 0, 0, 0, 0, 0], Bits::B1, Msb, 0b1100_0000),
        (&[1, 1, 0, 0, 0, 0, 0, 0], Bits::B1, Lsb, 0b0000_0011),
        (&[0, 1, 0, 1, 1, 1, 0, 0], Bits::B1, Lsb, 0b0011_1010),
        (&[3, 0, 1, 2], Bits::B2, Msb, 0b11_00_01_10),
        (&[3, 0, 1, 2], Bits::B2, Lsb, 0b10_01_00_11),
        (&[0xA, 0x5], Bits::B4, Msb, 0xA5),
        (&[0xA, 0x5], Bits::B4, Lsb, 0x5A),
        (&[0xF, 0x0], Bits::B4, Lsb, 0x0F),
        (&[0xC3], Bits::B8, Msb, 0xC3),
        (&[0xC3], Bits::B8, Lsb, 0xC3),
        (&[0], Bits::B8, Msb, 0),
    ];
    for (codes, bits, order, byte) in cases {
        let out = pack_and_unpack(codes, bits, order).unwrap();
        assert_eq!(out[0], byte, "{codes:?} {bits} {order:?}: {:#010b}", out[0]);
        assert_eq!(&out[1..], codes, "unpacking {byte:#010b}");
    }
}

#[test]
fn unpack_bits_of_every_byte_inverts_pack() {
    for bits in Bits::ALL {
        for order in [BitOrder::Msb, BitOrder::Lsb] {
            let per = 8 / bits.width();
            for byte in [0u8, 0xFF, 0x5A, 0x81, 0x36] {
                // The codes written out by the spec's definition: code j at bits [shift, shift+b).
                let codes: Vec<u8> = (0..per)
                    .map(|j| {
                        let shift = match order {
                            BitOrder::Msb => 8 - (j + 1) * bits.width(),
                            BitOrder::Lsb => j * bits.width(),
                        };
                        ((u32::from(byte) >> shift) & ((1 << bits.width()) - 1)) as u8
                    })
                    .collect();
                let out = pack_and_unpack(&codes, bits, order).unwrap();
                assert_eq!(out[0], byte, "{bits} {order:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SelectRank.

/// `out[r] = select_rank(data, base, stride, count, r)` for r in 0..count.
fn all_ranks(data: Buffer, base: u32, stride: u32, count: u32) -> Result<Vec<f32>, InterpError> {
    let mut b = Builder::new("ranks", 1);
    let elem = data.elem();
    let mem = b.buffer("data", elem, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let (base, stride, count) = (b.u32(base), b.u32(stride), b.u32(count));
    let zero = b.u32(0);
    b.for_range(zero, count, 1, |b, r| {
        let x = b.select_rank(mem, base, stride, count, r);
        b.store(out, r, x);
    });
    let mut args = vec![
        Arg::Buffer(data),
        Arg::Buffer(Buffer::F32(vec![f32::NAN; 64])),
    ];
    run(&b.finish(), &mut args, 1)?;
    Ok(buffer(&args, 1).as_f32().unwrap().to_vec())
}

fn sorted_bits(mut xs: Vec<f32>) -> Vec<u32> {
    xs.sort_by(f32::total_cmp);
    xs.into_iter().map(f32::to_bits).collect()
}

#[test]
fn select_rank_matches_a_sorted_copy() {
    let data = vec![
        3.0f32,
        -0.0,
        0.0,
        1.0,
        -0.0,
        3.0,
        -2.5,
        0.0,
        7.0,
        -1.0,
        f32::INFINITY,
        1.0,
        0.0,
    ];
    let n = data.len() as u32;
    for (base, stride, count) in [(0, 1, n), (1, 2, 6), (2, 3, 4), (12, 0, 5), (4, 1, 1)] {
        let gathered: Vec<f32> = (0..count)
            .map(|i| data[(base + i * stride) as usize])
            .collect();
        let out = all_ranks(Buffer::F32(data.clone()), base, stride, count).unwrap();
        let got: Vec<u32> = out[..count as usize].iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            got,
            sorted_bits(gathered),
            "base {base} stride {stride} count {count}"
        );
    }
    // -0 sorts before +0, and duplicates stay.
    let out = all_ranks(Buffer::F32(vec![0.0, -0.0, 0.0, -0.0]), 0, 1, 4).unwrap();
    let bits: Vec<u32> = out[..4].iter().map(|x| x.to_bits()).collect();
    assert_eq!(bits, [0x8000_0000, 0x8000_0000, 0, 0]);
}

#[test]
fn select_rank_converts_to_f32() {
    let halves: Vec<f16> = [2.5f32, -1.0, 0.0, -0.0, 65504.0]
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let out = all_ranks(Buffer::F16(halves), 0, 1, 5).unwrap();
    assert_eq!(out[..5], [-1.0, -0.0, 0.0, 2.5, 65504.0]);
    // f64 rounds to nearest even: 1 + 2^-24 is a tie that goes to 1.
    let doubles = vec![1.0 + 2f64.powi(-24), -3.0, 1.0 + 3.0 * 2f64.powi(-24)];
    let out = all_ranks(Buffer::F64(doubles), 0, 1, 3).unwrap();
    assert_eq!(out[..3], [-3.0, 1.0, 1.0 + 2f32.powi(-22)]);
    let brains = vec![bf16::from_f32(-0.5), bf16::from_f32(3.0)];
    let out = all_ranks(Buffer::BF16(brains), 0, 1, 2).unwrap();
    assert_eq!(out[..2], [-0.5, 3.0]);
}

// ---------------------------------------------------------------------------------------------
// Conversions and arithmetic.

/// `out[i] = convert(to, input[i])` for every element.
fn convert_all(input: Buffer, to: ScalarType) -> Result<Buffer, InterpError> {
    let mut b = Builder::new("convert", 1);
    let n = input.len();
    let src = b.buffer("src", input.elem(), Access::Read);
    let dst = b.buffer("dst", to, Access::Write);
    let (zero, end) = (b.u32(0), b.u32(n as u32));
    b.for_range(zero, end, 1, |b, i| {
        let x = b.load(src, i, 1);
        let y = b.convert(to, x);
        b.store(dst, i, y);
    });
    let mut args = vec![
        Arg::Buffer(input),
        Arg::Buffer(Buffer::zeros(to, n).unwrap()),
    ];
    run(&b.finish(), &mut args, 1)?;
    Ok(buffer(&args, 1).clone())
}

fn f16_bits(b: &Buffer) -> Vec<u16> {
    b.as_f16().unwrap().iter().map(|x| x.to_bits()).collect()
}

fn bf16_bits(b: &Buffer) -> Vec<u16> {
    b.as_bf16().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn float_to_float_conversions_round_to_nearest_even() {
    let p = |e: i32| 2f64.powi(e);
    // f32 -> f16 (1.0 = 0x3C00, one f16 ulp at 1 is 2^-10).
    let input: Vec<f32> = [
        1.0 + p(-11),          // tie, to even: 1
        1.0 + 3.0 * p(-11),    // tie, to even: 1 + 2^-9
        1.0 + p(-11) + p(-23), // above the tie: 1 + 2^-10
        65519.0,               // below the tie at 65520: f16::MAX
        65520.0,               // tie at the top: infinity
        p(-25),                // half the smallest subnormal: tie, to 0
        3.0 * p(-25),          // tie between 2^-24 and 2^-23: 2^-23
        -0.0,
    ]
    .map(|x| x as f32)
    .to_vec();
    let out = convert_all(Buffer::F32(input), F16).unwrap();
    assert_eq!(
        f16_bits(&out),
        [0x3C00, 0x3C02, 0x3C01, 0x7BFF, 0x7C00, 0x0000, 0x0002, 0x8000]
    );
    // f64 -> f16 rounds once: through f32 the first would become a tie and round to 1, the
    // third would become 65520 and round to infinity.
    let input = vec![1.0 + p(-11) + p(-40), 1.0 + p(-11), 65520.0 - p(-30)];
    let out = convert_all(Buffer::F64(input), F16).unwrap();
    assert_eq!(f16_bits(&out), [0x3C01, 0x3C00, 0x7BFF]);
    // bf16 (1.0 = 0x3F80, one ulp at 1 is 2^-7).
    let input = [1.0 + p(-8), 1.0 + 3.0 * p(-8), 1.0 + p(-8) + p(-20)];
    let out = convert_all(Buffer::F32(input.iter().map(|&x| x as f32).collect()), BF16).unwrap();
    assert_eq!(bf16_bits(&out), [0x3F80, 0x3F82, 0x3F81]);
    let input = vec![1.0 + p(-8) + p(-40), 1.0 + p(-8)];
    let out = convert_all(Buffer::F64(input), BF16).unwrap();
    assert_eq!(bf16_bits(&out), [0x3F81, 0x3F80]);
    // f64 -> f32.
    let input = vec![1.0 + p(-24), 1.0 + p(-24) + p(-50), 1e300, -1e-300];
    let out = convert_all(Buffer::F64(input), F32).unwrap();
    let expected = [1.0, 1.0 + 2f32.powi(-23), f32::INFINITY, -0.0];
    let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(out.as_f32().unwrap()), bits(&expected));
    // Widening is exact.
    let halves = vec![
        f16::from_bits(0x0001),
        f16::from_bits(0x7BFF),
        f16::NEG_INFINITY,
    ];
    let out = convert_all(Buffer::F16(halves), F64).unwrap();
    assert_eq!(out.as_f64().unwrap(), [p(-24), 65504.0, f64::NEG_INFINITY]);
}

#[test]
fn bitcast_reinterprets_f32_and_u32_bits() {
    let mut b = Builder::new("bits", 1);
    let out = b.buffer("out", U32, Access::Write);
    let back = b.buffer("back", F32, Access::Write);
    let values = [-0.0f32, 1.0, -2.5, f32::MAX];
    for (i, v) in values.iter().enumerate() {
        let x = b.f32(*v);
        let bits = b.bitcast(U32, x);
        let at = b.u32(i as u32);
        b.store(out, at, bits);
        let again = b.bitcast(F32, bits);
        b.store(back, at, again);
    }
    let k = b.finish();
    let mut args = [
        Arg::Buffer(Buffer::U32(vec![0; 4])),
        Arg::Buffer(Buffer::F32(vec![0.0; 4])),
    ];
    run(&k, &mut args, 1).unwrap();
    let want: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    assert_eq!(args[0].buffer().unwrap().as_u32().unwrap(), want.as_slice());
    let got: Vec<u32> = args[1]
        .buffer()
        .unwrap()
        .as_f32()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn integer_conversions() {
    // u32 -> f32 rounds to nearest even; -> f16 too (2049 is a tie between 2048 and 2050).
    let input = vec![16_777_217, 16_777_219, u32::MAX, 7];
    let out = convert_all(Buffer::U32(input), F32).unwrap();
    assert_eq!(
        out.as_f32().unwrap(),
        [16_777_216.0, 16_777_220.0, 4_294_967_296.0, 7.0]
    );
    let out = convert_all(Buffer::U32(vec![2049, 2051, 70_000]), F16).unwrap();
    assert_eq!(f16_bits(&out), [0x6800, 0x6802, 0x7C00]);
    // Truncation and zero-extension.
    let out = convert_all(Buffer::U32(vec![0x1234, 255, 256]), U8).unwrap();
    assert_eq!(out.as_u8().unwrap(), [0x34, 255, 0]);
    let out = convert_all(Buffer::U8(vec![0xFF, 0]), U32).unwrap();
    assert_eq!(out.as_u32().unwrap(), [255, 0]);
    // Float to integer truncates toward zero.
    let input = vec![2.9f32, -0.9, -0.0, 4_294_967_040.0, 0.5];
    let out = convert_all(Buffer::F32(input), U32).unwrap();
    assert_eq!(out.as_u32().unwrap(), [2, 0, 0, 4_294_967_040, 0]);
    let out = convert_all(Buffer::F64(vec![255.99, 0.0]), U8).unwrap();
    assert_eq!(out.as_u8().unwrap(), [255, 0]);
    // Bool -> integers.
    let mut b = Builder::new("bools", 1);
    let out = b.buffer("out", U32, Access::Write);
    let small = b.buffer("small", U8, Access::Write);
    let (t, f) = (b.bool(true), b.bool(false));
    let (zero, one) = (b.u32(0), b.u32(1));
    let (t32, f32_) = (b.convert(U32, t), b.convert(U32, f));
    b.store(out, zero, t32);
    b.store(out, one, f32_);
    let t8 = b.convert(U8, t);
    b.store(small, zero, t8);
    let mut args = vec![
        Arg::Buffer(Buffer::U32(vec![9; 2])),
        Arg::Buffer(Buffer::U8(vec![9])),
    ];
    run(&b.finish(), &mut args, 1).unwrap();
    assert_eq!(buffer(&args, 0).as_u32().unwrap(), [1, 0]);
    assert_eq!(buffer(&args, 1).as_u8().unwrap(), [1]);
}

#[test]
fn float_to_integer_out_of_range_is_an_error() {
    let cases: [(Buffer, ScalarType, f64); 6] = [
        (Buffer::F32(vec![f32::NAN]), U32, f64::NAN),
        (Buffer::F32(vec![256.0]), U8, 256.0),
        (Buffer::F32(vec![-1.0]), U32, -1.0),
        (Buffer::F64(vec![4_294_967_296.0]), U32, 4_294_967_296.0),
        (Buffer::F32(vec![f32::INFINITY]), U8, f64::INFINITY),
        (Buffer::F16(vec![f16::from_f32(-1.5)]), U8, -1.5),
    ];
    for (input, ty, value) in cases {
        match convert_all(input, ty) {
            Err(InterpError::ConvertOutOfRange { to, value: v, .. }) => {
                assert_eq!(to, ty);
                assert!(
                    v == value || (v.is_nan() && value.is_nan()),
                    "{v} vs {value}"
                );
            }
            other => panic!("{value} to {ty:?}: {other:?}"),
        }
    }
}

/// `out[i] = op(x[i])` on f32.
fn unary_f32(op: UnaryOp, xs: &[f32]) -> Vec<f32> {
    let mut b = Builder::new("unary", 1);
    let src = b.buffer("x", F32, Access::Read);
    let dst = b.buffer("y", F32, Access::Write);
    let (zero, end) = (b.u32(0), b.u32(xs.len() as u32));
    b.for_range(zero, end, 1, |b, i| {
        let x = b.load(src, i, 1);
        let y = b.unary(op, x);
        b.store(dst, i, y);
    });
    let mut args = vec![
        Arg::Buffer(Buffer::F32(xs.to_vec())),
        Arg::Buffer(Buffer::F32(vec![0.0; xs.len()])),
    ];
    run(&b.finish(), &mut args, 1).unwrap();
    buffer(&args, 1).as_f32().unwrap().to_vec()
}

#[test]
fn round_even_ties_and_floor() {
    let xs = [
        0.5,
        1.5,
        2.5,
        -0.5,
        -1.5,
        -2.5,
        0.499_999_97,
        3.7,
        -3.7,
        8_388_609.0,
    ];
    let out = unary_f32(UnaryOp::RoundEven, &xs);
    let expected = [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 0.0, 4.0, -4.0, 8_388_609.0];
    let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&out), bits(&expected));
    let out = unary_f32(UnaryOp::Floor, &[2.5, -2.5, -0.0, 0.999]);
    assert_eq!(bits(&out), bits(&[2.0, -3.0, -0.0, 0.0]));
    let out = unary_f32(UnaryOp::Neg, &[0.0, -1.5]);
    assert_eq!(bits(&out), bits(&[-0.0, 1.5]));
}

/// `out[i] = x[i] op y[i]`, `out` of `x`'s type.
fn binary_all(op: BinaryOp, x: Buffer, y: Buffer) -> Result<Buffer, InterpError> {
    let mut b = Builder::new("binary", 1);
    let n = x.len();
    let (elem, other) = (x.elem(), y.elem());
    let xm = b.buffer("x", elem, Access::Read);
    let ym = b.buffer("y", other, Access::Read);
    let out = b.buffer("out", elem, Access::Write);
    let (zero, end) = (b.u32(0), b.u32(n as u32));
    b.for_range(zero, end, 1, |b, i| {
        let a = b.load(xm, i, 1);
        let c = b.load(ym, i, 1);
        let r = b.binary(op, a, c);
        b.store(out, i, r);
    });
    let mut args = vec![
        Arg::Buffer(x),
        Arg::Buffer(y),
        Arg::Buffer(Buffer::zeros(elem, n).unwrap()),
    ];
    run(&b.finish(), &mut args, 1)?;
    Ok(buffer(&args, 2).clone())
}

#[test]
fn integer_arithmetic_wraps() {
    let u = |v: Vec<u32>| Buffer::U32(v);
    let r = binary_all(BinaryOp::Add, u(vec![u32::MAX, 5]), u(vec![1, 3])).unwrap();
    assert_eq!(r.as_u32().unwrap(), [0, 8]);
    let r = binary_all(BinaryOp::Sub, u(vec![3]), u(vec![5])).unwrap();
    assert_eq!(r.as_u32().unwrap(), [u32::MAX - 1]);
    let r = binary_all(BinaryOp::Mul, u(vec![0x1_0000, 7]), u(vec![0x1_0000, 6])).unwrap();
    assert_eq!(r.as_u32().unwrap(), [0, 42]);
    let r = binary_all(BinaryOp::Div, u(vec![7, 9]), u(vec![2, 10])).unwrap();
    assert_eq!(r.as_u32().unwrap(), [3, 0]);
    let r = binary_all(BinaryOp::Rem, u(vec![7, 9]), u(vec![2, 10])).unwrap();
    assert_eq!(r.as_u32().unwrap(), [1, 9]);
    let r = binary_all(BinaryOp::Shr, u(vec![0x8000_0000]), u(vec![31])).unwrap();
    assert_eq!(r.as_u32().unwrap(), [1]);
    let b8 = |v: Vec<u8>| Buffer::U8(v);
    let r = binary_all(BinaryOp::Add, b8(vec![200, 1]), b8(vec![100, 2])).unwrap();
    assert_eq!(r.as_u8().unwrap(), [44, 3]);
    let r = binary_all(BinaryOp::Shl, b8(vec![0x81]), b8(vec![1])).unwrap();
    assert_eq!(r.as_u8().unwrap(), [0x02]);
    let r = binary_all(BinaryOp::Sub, b8(vec![0]), b8(vec![1])).unwrap();
    assert_eq!(r.as_u8().unwrap(), [255]);
    let r = binary_all(BinaryOp::Min, b8(vec![3, 9]), b8(vec![4, 2])).unwrap();
    assert_eq!(r.as_u8().unwrap(), [3, 2]);
    let r = binary_all(BinaryOp::Or, b8(vec![0xF0]), b8(vec![0x0F])).unwrap();
    assert_eq!(r.as_u8().unwrap(), [0xFF]);
}

#[test]
fn float_arithmetic_is_correctly_rounded() {
    let f = |v: Vec<f32>| Buffer::F32(v);
    let r = binary_all(BinaryOp::Div, f(vec![1.0, 1.0]), f(vec![3.0, 0.0])).unwrap();
    assert_eq!(r.as_f32().unwrap()[0].to_bits(), 0x3EAA_AAAB);
    assert_eq!(r.as_f32().unwrap()[1], f32::INFINITY);
    // F16 computes in f32 and rounds back: 1 + 2^-11 is a tie that goes to 1.
    let h = |v: &[f32]| Buffer::F16(v.iter().map(|&x| f16::from_f32(x)).collect());
    let tiny = 2f32.powi(-11);
    let r = binary_all(BinaryOp::Add, h(&[1.0, 1.0]), h(&[tiny, 3.0 * tiny])).unwrap();
    assert_eq!(f16_bits(&r), [0x3C00, 0x3C02]);
    let r = binary_all(BinaryOp::Div, h(&[1.0]), h(&[3.0])).unwrap();
    assert_eq!(f16_bits(&r), [0x3555]);
    let r = binary_all(BinaryOp::Mul, h(&[60000.0]), h(&[2.0])).unwrap();
    assert_eq!(f16_bits(&r), [0x7C00]);
    let d = |v: Vec<f64>| Buffer::F64(v);
    let r = binary_all(BinaryOp::Sub, d(vec![0.3]), d(vec![0.1])).unwrap();
    assert_eq!(r.as_f64().unwrap(), [0.3 - 0.1]);
}

#[test]
fn min_and_max_keep_the_first_operand_unless_the_second_is_strictly_beyond() {
    let nan = f32::NAN;
    let x = || Buffer::F32(vec![nan, 1.0, -0.0, 0.0, 2.0]);
    let y = || Buffer::F32(vec![1.0, nan, 0.0, -0.0, -3.0]);
    let bits = |b: Buffer| {
        b.as_f32()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    let min = bits(binary_all(BinaryOp::Min, x(), y()).unwrap());
    let max = bits(binary_all(BinaryOp::Max, x(), y()).unwrap());
    let expected_min = [nan, 1.0, -0.0, 0.0, -3.0];
    let expected_max = [nan, 1.0, -0.0, 0.0, 2.0];
    assert!(f32::from_bits(min[0]).is_nan() && f32::from_bits(max[0]).is_nan());
    assert_eq!(
        min[1..],
        expected_min[1..]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()[..]
    );
    assert_eq!(
        max[1..],
        expected_max[1..]
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()[..]
    );
}

#[test]
fn comparisons_are_ieee() {
    // out[k] = u8(a cmp_k b) for the six comparisons.
    let cmps = [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ];
    let compare = |a: f32, c: f32| -> Vec<u8> {
        let mut b = Builder::new("cmp", 1);
        let out = b.buffer("out", U8, Access::Write);
        let (x, y) = (b.f32(a), b.f32(c));
        for (k, op) in cmps.iter().enumerate() {
            let r = b.cmp(*op, x, y);
            let r = b.convert(U8, r);
            let at = b.u32(k as u32);
            b.store(out, at, r);
        }
        let mut args = vec![Arg::Buffer(Buffer::U8(vec![9; 6]))];
        run(&b.finish(), &mut args, 1).unwrap();
        buffer(&args, 0).as_u8().unwrap().to_vec()
    };
    assert_eq!(compare(f32::NAN, f32::NAN), [0, 1, 0, 0, 0, 0]);
    assert_eq!(compare(f32::NAN, 1.0), [0, 1, 0, 0, 0, 0]);
    assert_eq!(compare(-0.0, 0.0), [1, 0, 0, 1, 0, 1]);
    assert_eq!(compare(1.0, 2.0), [0, 1, 1, 1, 0, 0]);
    assert_eq!(compare(f32::INFINITY, f32::MAX), [0, 1, 0, 0, 1, 1]);
}

#[test]
fn select_is_finite_and_not() {
    let mut b = Builder::new("select", 1);
    let out = b.buffer("out", F32, Access::Write);
    let (x, nan, inf) = (b.f32(2.0), b.f32(f32::NAN), b.f32(f32::INFINITY));
    let (zero, one, two) = (b.u32(0), b.u32(1), b.u32(2));
    for (k, v) in [x, nan, inf].into_iter().enumerate() {
        let finite = b.unary(UnaryOp::IsFinite, v);
        let not = b.unary(UnaryOp::Not, finite);
        let minus = b.f32(-1.0);
        let r = b.select(not, minus, v);
        let at = [zero, one, two][k];
        b.store(out, at, r);
    }
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 3]))];
    run(&b.finish(), &mut args, 1).unwrap();
    assert_eq!(buffer(&args, 0).as_f32().unwrap(), [2.0, -1.0, -1.0]);
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[test]
fn out_of_bounds_loads_and_stores_are_errors() {
    let kernel = copy_kernel();
    let load = find(&kernel, 0, |op| matches!(op, Op::Load { .. }));
    // 16 halves hold 2 vectors; vector 2 (elements 16..24) is out of bounds.
    let mut args = vec![
        Arg::Buffer(Buffer::F16(vec![f16::ONE; 16])),
        Arg::Buffer(Buffer::F32(vec![0.0; 24])),
        Arg::U32(3),
    ];
    let err = run(&kernel, &mut args, 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::OutOfBounds {
            inst: load,
            mem: Memory::Param(0),
            index: 16,
            lanes: 8,
            len: 16,
        }
    );
    // A vector load that starts in bounds and ends past them.
    let mut args = vec![
        Arg::Buffer(Buffer::F16(vec![f16::ONE; 20])),
        Arg::Buffer(Buffer::F32(vec![0.0; 24])),
        Arg::U32(3),
    ];
    assert!(matches!(
        run(&kernel, &mut args, 1),
        Err(InterpError::OutOfBounds {
            index: 16,
            lanes: 8,
            len: 20,
            ..
        })
    ));
    // The store: dst too short.
    let store = find(&kernel, 0, |op| matches!(op, Op::Store { .. }));
    let mut args = vec![
        Arg::Buffer(Buffer::F16(vec![f16::ONE; 24])),
        Arg::Buffer(Buffer::F32(vec![0.0; 20])),
        Arg::U32(3),
    ];
    let err = run(&kernel, &mut args, 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::OutOfBounds {
            inst: store,
            mem: Memory::Param(1),
            index: 16,
            lanes: 8,
            len: 20,
        }
    );
    // Shared memory.
    let mut b = Builder::new("shared_oob", 1);
    let s = b.shared("s", F32, 4);
    let (four, x) = (b.u32(4), b.f32(1.0));
    b.store(s, four, x);
    let err = run(&b.finish(), &mut [], 1).unwrap_err();
    assert!(matches!(
        err,
        InterpError::OutOfBounds {
            mem: Memory::Shared(0),
            index: 4,
            lanes: 1,
            len: 4,
            ..
        }
    ));
}

#[test]
fn arguments_must_match_the_parameters() {
    let kernel = copy_kernel();
    let src = || Arg::Buffer(Buffer::F16(vec![f16::ONE; 8]));
    let dst = || Arg::Buffer(Buffer::F32(vec![0.0; 8]));
    let err = run(&kernel, &mut [src(), dst()], 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::ArgCount {
            expected: 3,
            got: 2
        }
    );
    let err = run(&kernel, &mut [Arg::U32(0), dst(), Arg::U32(1)], 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::ArgKind {
            index: 0,
            expected: ParamKind::Buffer,
            got: ParamKind::Scalar
        }
    );
    let err = run(&kernel, &mut [src(), dst(), dst()], 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::ArgKind {
            index: 2,
            expected: ParamKind::Scalar,
            got: ParamKind::Buffer
        }
    );
    let err = run(&kernel, &mut [dst(), dst(), Arg::U32(1)], 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::ArgType {
            index: 0,
            expected: F16,
            got: F32
        }
    );
    let err = run(&kernel, &mut [src(), dst(), Arg::F32(1.0)], 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::ArgType {
            index: 2,
            expected: U32,
            got: F32
        }
    );
    assert!(err.to_string().contains("argument 2"), "{err}");
}

#[test]
fn arithmetic_faults_are_errors() {
    let u = |v: Vec<u32>| Buffer::U32(v);
    for op in [BinaryOp::Div, BinaryOp::Rem] {
        let err = binary_all(op, u(vec![4, 1]), u(vec![2, 0])).unwrap_err();
        assert!(matches!(err, InterpError::DivisionByZero { .. }), "{err:?}");
    }
    let err = binary_all(BinaryOp::Shl, u(vec![1]), u(vec![32])).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::ShiftTooLarge {
                shift: 32,
                width: 32,
                ..
            }
        ),
        "{err:?}"
    );
    let err = binary_all(BinaryOp::Shr, Buffer::U8(vec![1]), Buffer::U8(vec![8])).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::ShiftTooLarge {
                shift: 8,
                width: 8,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_ranks_and_codes_are_errors() {
    let data = || Buffer::F32(vec![1.0, 2.0, 3.0]);
    // count = 0: the loop body never runs, so ask for rank 0 of 0 directly.
    let mut b = Builder::new("rank0", 1);
    let mem = b.buffer("data", F32, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let zero = b.u32(0);
    let one = b.u32(1);
    let x = b.select_rank(mem, zero, one, zero, zero);
    b.store(out, zero, x);
    let kernel = b.finish();
    let rank = find(&kernel, 0, |op| matches!(op, Op::SelectRank { .. }));
    let mut args = vec![Arg::Buffer(data()), Arg::Buffer(Buffer::F32(vec![0.0]))];
    let err = run(&kernel, &mut args, 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::BadRank {
            inst: rank,
            count: 0,
            rank: 0
        }
    );
    // rank >= count.
    let mut b = Builder::new("rank3", 1);
    let mem = b.buffer("data", F32, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let (zero, one, three) = (b.u32(0), b.u32(1), b.u32(3));
    let x = b.select_rank(mem, zero, one, three, three);
    b.store(out, zero, x);
    let mut args = vec![Arg::Buffer(data()), Arg::Buffer(Buffer::F32(vec![0.0]))];
    let err = run(&b.finish(), &mut args, 1).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::BadRank {
                count: 3,
                rank: 3,
                ..
            }
        ),
        "{err:?}"
    );
    // Gathering past the end.
    let err = all_ranks(data(), 1, 1, 3).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::OutOfBounds {
                index: 3,
                len: 3,
                ..
            }
        ),
        "{err:?}"
    );
    // A 2-bit code of 4.
    let err = pack_and_unpack(&[0, 4, 0, 0], Bits::B2, BitOrder::Msb).unwrap_err();
    assert!(
        matches!(
            err,
            InterpError::CodeTooLarge {
                code: 4,
                bits: Bits::B2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn local_index_out_of_range_is_an_error() {
    let mut b = Builder::new("local_oob", 2);
    let l = b.local("l", U32, 3);
    let (three, x) = (b.u32(3), b.u32(1));
    b.write_local(l, three, x);
    let kernel = b.finish();
    let write = find(&kernel, 0, |op| matches!(op, Op::WriteLocal { .. }));
    let err = run(&kernel, &mut [], 1).unwrap_err();
    assert_eq!(
        err,
        InterpError::LocalOutOfBounds {
            inst: write,
            local: 0,
            index: 3,
            len: 3
        }
    );
}

/// An unzeroed local: each thread's writes are read back as written and a zeroed local still
/// reads zero; a read of an element the reading thread has not written in this block is an
/// error, also when another thread of the block wrote it, or the same thread in an earlier
/// block.
#[test]
fn unzeroed_locals_must_be_written_before_they_are_read() {
    // Threads are rows `block * 2 + tid`; row `writer` writes element 3 of its table, row
    // `reader` reads element 3 and every other row element 1.
    let kernel = |writer: u32, reader: u32| {
        let mut b = Builder::new("unzeroed", 2);
        let out = b.buffer("out", U32, Access::Write);
        let t = b.unzeroed_local("t", U32, 4);
        let z = b.local("z", U32, 1);
        let tid = b.special(Special::ThreadId);
        let block = b.special(Special::BlockId);
        let two = b.u32(2);
        let row = b.mul(block, two);
        let row = b.add(row, tid);
        let (i0, i1, i3) = (b.u32(0), b.u32(1), b.u32(3));
        let hundred = b.u32(100);
        let x = b.add(row, hundred);
        b.write_local(t, i0, x);
        b.write_local(t, i1, block);
        let w = b.u32(writer);
        let writes = b.cmp(CmpOp::Eq, row, w);
        b.if_then(writes, |b| b.write_local(t, i3, row));
        let r = b.u32(reader);
        let reads = b.cmp(CmpOp::Eq, row, r);
        let at = b.select(reads, i3, i1);
        let values = [
            b.read_local(t, i0),
            b.read_local(t, at),
            b.read_local(z, i0),
        ];
        let three = b.u32(3);
        let base = b.mul(row, three);
        for (k, v) in values.into_iter().enumerate() {
            let k = b.u32(k as u32);
            let at = b.add(base, k);
            b.store(out, at, v);
        }
        b.finish()
    };
    // Row 2 writes and reads its own element 3.
    let written = kernel(2, 2);
    let mut args = vec![Arg::Buffer(Buffer::U32(vec![7; 12]))];
    run(&written, &mut args, 2).unwrap();
    let expected: Vec<u32> = (0..4u32)
        .flat_map(|row| [row + 100, if row == 2 { 2 } else { row / 2 }, 0])
        .collect();
    assert_eq!(buffer(&args, 0).as_u32().unwrap(), expected);
    assert!(kvq_ir::ir::print(&written).contains("local t: [u32; 4] unzeroed"));

    // Row 1 reads what row 0 (another thread of block 0) wrote; row 2 (thread 0 of block 1)
    // reads what row 0 (thread 0 of block 0) wrote.
    for (writer, reader) in [(0, 1), (0, 2)] {
        let k = kernel(writer, reader);
        let read = find(&k, 1, |op| matches!(op, Op::ReadLocal { .. }));
        let mut args = vec![Arg::Buffer(Buffer::U32(vec![7; 12]))];
        let err = run(&k, &mut args, 2).unwrap_err();
        assert_eq!(
            err,
            InterpError::UnwrittenLocal {
                inst: read,
                local: 0,
                index: 3,
            },
            "row {reader} reading row {writer}'s element"
        );
        // The rows before the reader ran and stored their values.
        let got = buffer(&args, 0).as_u32().unwrap();
        assert_eq!(got[0], 100, "row 0 ran before row {reader}");
    }
}

fn malformed(kernel: &Kernel, args: &mut [Arg]) -> (Option<Value>, Malformed) {
    match run(kernel, args, 1) {
        Err(InterpError::Malformed { inst, problem }) => (inst, problem),
        other => panic!("expected a malformed-kernel error, got {other:?}"),
    }
}

#[test]
fn malformed_kernels_are_errors_not_panics() {
    // A dangling handle in the body.
    let mut b = Builder::new("dangling", 1);
    b.u32(1);
    let mut kernel = b.finish();
    kernel.body.0.push(Handle::from_index(999));
    assert_eq!(
        malformed(&kernel, &mut []),
        (Some(Handle::from_index(999)), Malformed::UnknownInst)
    );

    // A dangling operand.
    let mut b = Builder::new("dangling_operand", 1);
    let x = b.u32(1);
    let y = b.add(x, Handle::from_index(77));
    let (at, problem) = malformed(&b.finish(), &mut []);
    assert_eq!(
        (at, problem),
        (Some(y), Malformed::Undefined(Handle::from_index(77)))
    );

    // A value used across a barrier.
    let mut b = Builder::new("crosses", 2);
    let out = b.buffer("out", U32, Access::Write);
    let tid = b.special(Special::ThreadId);
    b.barrier();
    b.store(out, tid, tid);
    let kernel = b.finish();
    let mut args = vec![Arg::Buffer(Buffer::U32(vec![0; 2]))];
    assert_eq!(malformed(&kernel, &mut args).1, Malformed::Undefined(tid));

    // A value of a loop body used after the loop, and the loop's own value after it.
    let mut b = Builder::new("escapes", 1);
    let (zero, two) = (b.u32(0), b.u32(2));
    let mut inner = None;
    b.for_range(zero, two, 1, |b, i| inner = Some(b.add(i, i)));
    let inner = inner.unwrap();
    b.add(inner, zero);
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::Undefined(inner)
    );

    // A barrier inside an if.
    let mut b = Builder::new("nested_barrier", 2);
    let t = b.bool(true);
    b.if_then(t, |b| b.barrier());
    assert_eq!(malformed(&b.finish(), &mut []).1, Malformed::NestedBarrier);

    // A loop of step 0.
    let mut b = Builder::new("step0", 1);
    let (zero, one) = (b.u32(0), b.u32(1));
    b.for_range(zero, one, 0, |_, _| {});
    assert_eq!(malformed(&b.finish(), &mut []).1, Malformed::ZeroStep);

    // A loop placed in its own body: refused by depth, not a stack overflow.
    let mut b = Builder::new("cycle", 1);
    let (zero, one) = (b.u32(0), b.u32(1));
    b.for_range(zero, one, 1, |_, _| {});
    let mut kernel = b.finish();
    let lp = find(&kernel, 0, |op| matches!(op, Op::Loop { .. }));
    if let Some(Inst {
        op: Op::Loop { body, .. },
        ..
    }) = kernel.insts.get_mut(lp)
    {
        body.0.push(lp);
    }
    assert_eq!(malformed(&kernel, &mut []).1, Malformed::TooDeep);

    // Operands of different types.
    let mut b = Builder::new("mixed", 1);
    let (x, y) = (b.u32(1), b.f32(1.0));
    b.add(x, y);
    let found = Type::Scalar(F32);
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::Operand { operand: y, found }
    );

    // A declared type that is not the computed one.
    let mut b = Builder::new("lying", 1);
    b.push(Op::Const(Const::U32(1)), Some(Type::Scalar(F32)));
    let problem = malformed(&b.finish(), &mut []).1;
    assert_eq!(
        problem,
        Malformed::ResultType {
            declared: Some(Type::Scalar(F32)),
            computed: Some(Type::Scalar(U32)),
        }
    );

    // A store to a read-only buffer, a load from a scalar parameter, a missing shared array.
    let mut b = Builder::new("access", 1);
    let ro = b.buffer("ro", F32, Access::Read);
    let (zero, x) = (b.u32(0), b.f32(1.0));
    b.store(ro, zero, x);
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0]))];
    let problem = malformed(&b.finish(), &mut args).1;
    assert_eq!(
        problem,
        Malformed::Access {
            param: 0,
            access: Access::Read
        }
    );
    let mut b = Builder::new("not_a_buffer", 1);
    let n = b.scalar_param("n", U32);
    let zero = b.u32(0);
    b.load(Memory::Param(n), zero, 1);
    assert_eq!(
        malformed(&b.finish(), &mut [Arg::U32(1)]).1,
        Malformed::NotABuffer(0)
    );
    let mut b = Builder::new("no_shared", 1);
    let zero = b.u32(0);
    b.load(Memory::Shared(3), zero, 1);
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::UnknownShared(3)
    );

    // Int to Bool, vector lanes.
    let mut b = Builder::new("to_bool", 1);
    let x = b.u32(1);
    b.convert(Bool, x);
    assert!(matches!(
        malformed(&b.finish(), &mut []).1,
        Malformed::Operand { .. }
    ));
    let mut b = Builder::new("lanes", 1);
    let s = b.shared("s", U32, 8);
    let zero = b.u32(0);
    b.load(s, zero, 3);
    assert_eq!(malformed(&b.finish(), &mut []).1, Malformed::Lanes(3));
    let mut b = Builder::new("extract", 1);
    let s = b.shared("s", U32, 8);
    let zero = b.u32(0);
    let v = b.load(s, zero, 2);
    b.extract(v, 2);
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::Lane { lane: 2, lanes: 2 }
    );
}

// ---------------------------------------------------------------------------------------------
// Arbitrary kernels never panic.

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const MAX_INSTS: usize = 24;

    fn any_type() -> impl Strategy<Value = ScalarType> {
        prop::sample::select(vec![Bool, U8, U32, F16, BF16, F32, F64])
    }

    fn any_const() -> impl Strategy<Value = Const> {
        prop_oneof![
            any::<bool>().prop_map(Const::Bool),
            prop::sample::select(vec![0u8, 1, 3, 4, 255]).prop_map(Const::U8),
            prop::sample::select(vec![0u32, 1, 2, 3, 7, 8, 32, u32::MAX]).prop_map(Const::U32),
            prop::sample::select(vec![
                0.0f32,
                -0.0,
                1.5,
                -1.0,
                300.0,
                f32::NAN,
                f32::INFINITY
            ])
            .prop_map(|x| Const::F32(x.to_bits())),
            prop::sample::select(vec![0.0f64, 2.5, -7.0, f64::NAN])
                .prop_map(|x| Const::F64(x.to_bits())),
        ]
    }

    fn any_mem() -> impl Strategy<Value = Memory> {
        prop_oneof![
            (0u32..5).prop_map(Memory::Param),
            (0u32..3).prop_map(Memory::Shared)
        ]
    }

    /// Raw operand handles; `place` maps them to earlier instructions (or leaves them dangling).
    fn h() -> impl Strategy<Value = Value> {
        (0u32..1000).prop_map(Handle::from_index)
    }

    fn any_op() -> impl Strategy<Value = Op> {
        use prop::sample::select;
        let unary = select(vec![
            UnaryOp::Neg,
            UnaryOp::RoundEven,
            UnaryOp::Floor,
            UnaryOp::Not,
            UnaryOp::IsFinite,
        ]);
        let binary = select(vec![
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Rem,
            BinaryOp::Min,
            BinaryOp::Max,
            BinaryOp::Minimum,
            BinaryOp::Maximum,
            BinaryOp::And,
            BinaryOp::Or,
            BinaryOp::Shl,
            BinaryOp::Shr,
        ]);
        let cmp = select(vec![
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ]);
        let bits = select(Bits::ALL.to_vec());
        let order = select(vec![BitOrder::Msb, BitOrder::Lsb]);
        // Steps of 2^30 or more: every loop runs at most 4 times.
        let step = select(vec![0u32, 1 << 30, 3 << 30, u32::MAX]);
        prop_oneof![
            any_const().prop_map(Op::Const),
            (0u32..5).prop_map(Op::ScalarParam),
            select(vec![Special::ThreadId, Special::BlockId, Special::GridSize])
                .prop_map(Op::Special),
            (unary, h()).prop_map(|(o, a)| Op::Unary(o, a)),
            (binary, h(), h()).prop_map(|(o, a, b)| Op::Binary(o, a, b)),
            (cmp, h(), h()).prop_map(|(o, a, b)| Op::Cmp(o, a, b)),
            (h(), h(), h()).prop_map(|(cond, if_true, if_false)| Op::Select {
                cond,
                if_true,
                if_false
            }),
            (any_type(), h()).prop_map(|(t, a)| Op::Convert(t, a)),
            (any_mem(), h(), select(vec![0u8, 1, 2, 3, 4, 8, 16, 17])).prop_map(
                |(mem, index, lanes)| Op::Load {
                    mem,
                    index,
                    lanes,
                    aligned: false,
                }
            ),
            (any_mem(), h(), h()).prop_map(|(mem, index, value)| Op::Store {
                mem,
                index,
                value,
                aligned: false,
            }),
            (h(), 0u8..18).prop_map(|(v, l)| Op::Extract(v, l)),
            prop::collection::vec(h(), 0..18).prop_map(Op::Vector),
            (0u32..3, h()).prop_map(|(local, index)| Op::ReadLocal { local, index }),
            (0u32..3, h(), h()).prop_map(|(local, index, value)| Op::WriteLocal {
                local,
                index,
                value
            }),
            (
                prop::collection::vec(h(), 0..9),
                bits.clone(),
                order.clone()
            )
                .prop_map(|(codes, bits, order)| Op::PackBits { codes, bits, order }),
            (h(), 0u8..9, bits, order).prop_map(|(byte, lane, bits, order)| Op::UnpackBits {
                byte,
                lane,
                bits,
                order
            }),
            (any_mem(), h(), h(), h(), h()).prop_map(|(mem, base, stride, count, rank)| {
                Op::SelectRank {
                    mem,
                    base,
                    stride,
                    count,
                    rank,
                }
            }),
            (h(), h(), step).prop_map(|(start, end, step)| Op::Loop {
                start,
                end,
                step,
                body: Default::default()
            }),
            h().prop_map(|cond| Op::If {
                cond,
                then: Default::default(),
                otherwise: Default::default()
            }),
            Just(Op::Barrier),
            Just(Op::ClusterBarrier),
            (0u32..3, h(), h()).prop_map(|(shared, rank, index)| Op::LoadRemote {
                shared,
                rank,
                index
            }),
        ]
    }

    /// Every operand handle of `op`, for rewriting.
    fn operands(op: &mut Op) -> Vec<&mut Value> {
        match op {
            Op::Const(_)
            | Op::ScalarParam(_)
            | Op::Special(_)
            | Op::Barrier
            | Op::Warp(_)
            | Op::ClusterBarrier => {
                vec![]
            }
            Op::LoadRemote { rank, index, .. } => vec![rank, index],
            Op::Unary(_, a) | Op::Convert(_, a) | Op::Bitcast(_, a) | Op::Extract(a, _) => vec![a],
            Op::Binary(_, a, b) | Op::Cmp(_, a, b) => vec![a, b],
            Op::Select {
                cond,
                if_true,
                if_false,
            } => vec![cond, if_true, if_false],
            Op::Load { index, .. } | Op::ReadLocal { index, .. } => vec![index],
            Op::Store { index, value, .. } | Op::WriteLocal { index, value, .. } => {
                vec![index, value]
            }
            Op::Vector(vs) | Op::PackBits { codes: vs, .. } => vs.iter_mut().collect(),
            Op::UnpackBits { byte, .. } => vec![byte],
            Op::SelectRank {
                base,
                stride,
                count,
                rank,
                ..
            } => vec![base, stride, count, rank],
            Op::Loop { start, end, .. } => vec![start, end],
            Op::If { cond, .. } => vec![cond],
        }
    }

    fn params() -> Vec<kvq_ir::ir::Param> {
        use kvq_ir::ir::Param;
        let buffer = |name: &str, elem, access| Param::Buffer {
            name: name.into(),
            elem,
            access,
            len: None,
        };
        vec![
            buffer("a", F32, Access::ReadWrite),
            buffer("b", U8, Access::Read),
            Param::Scalar {
                name: "n".into(),
                ty: U32,
            },
            buffer("c", F16, Access::Write),
        ]
    }

    fn args() -> Vec<Arg> {
        vec![
            Arg::Buffer(Buffer::F32(vec![1.0, -2.0, 0.5, 8.0, 0.0, -0.0, 3.0, 9.0])),
            Arg::Buffer(Buffer::U8(vec![1, 2, 3, 250, 0])),
            Arg::U32(3),
            Arg::Buffer(Buffer::F16(vec![f16::ZERO; 4])),
        ]
    }

    /// A kernel from generated ops: operands point mostly at earlier instructions, types are
    /// mostly what the builder would derive, and each instruction sits in the top-level block or
    /// the body of an earlier Loop or If (so the nesting is a tree).
    fn kernel(ops: Vec<(Op, u32, u32, bool)>, block_size: u32) -> Kernel {
        let mut b = Builder::new("fuzz", block_size);
        b.buffer("a", F32, Access::ReadWrite);
        b.buffer("b", U8, Access::Read);
        b.scalar_param("n", U32);
        b.buffer("c", F16, Access::Write);
        b.shared("s", F32, 4);
        b.shared("t", U8, 8);
        b.local("x", U32, 2);
        b.local("y", F32, 1);
        let mut kernel = b.finish();
        debug_assert_eq!(kernel.params, params());
        let mut top = Vec::new();
        let mut containers: Vec<(Value, bool)> = Vec::new();
        for (i, (mut op, parent, retype, then)) in ops.into_iter().enumerate() {
            for v in operands(&mut op) {
                if v.index() < 990 {
                    *v = Handle::from_index(v.index() as u32 % (i as u32).max(1));
                }
            }
            let ty = derive(&kernel, &op, retype);
            let is_container = matches!(op, Op::Loop { .. } | Op::If { .. });
            let h = kernel.insts.append(Inst { op, ty });
            let slot = parent as usize % (containers.len() + 1);
            match containers.get(slot) {
                None => top.push(h),
                Some(&(c, _)) => match kernel.insts.get_mut(c).map(|inst| &mut inst.op) {
                    Some(Op::Loop { body, .. }) => body.0.push(h),
                    Some(Op::If {
                        then: t, otherwise, ..
                    }) => {
                        if then {
                            t.0.push(h)
                        } else {
                            otherwise.0.push(h)
                        }
                    }
                    _ => top.push(h),
                },
            }
            if is_container {
                containers.push((h, then));
            }
        }
        kernel.body.0 = top;
        kernel
    }

    /// The type the builder would give, or (1 time in 8) another one.
    fn derive(kernel: &Kernel, op: &Op, retype: u32) -> Option<Type> {
        let of = |v: Value| kernel.insts.try_get(v).and_then(|i| i.ty);
        let scalar = |t: ScalarType| Some(Type::Scalar(t));
        if retype % 8 == 0 {
            let all = [
                None,
                scalar(U32),
                scalar(F32),
                scalar(Bool),
                Some(Type::Vector(F32, 2)),
            ];
            return all[(retype / 8) as usize % all.len()];
        }
        let mem_elem = |mem: &Memory| match mem {
            Memory::Param(0) => F32,
            Memory::Param(1) => U8,
            Memory::Param(3) => F16,
            Memory::Shared(0) => F32,
            Memory::Shared(1) => U8,
            _ => U32,
        };
        match op {
            Op::Const(c) => scalar(c.ty()),
            Op::ScalarParam(_) | Op::Special(_) | Op::Loop { .. } => scalar(U32),
            Op::Unary(UnaryOp::IsFinite, _) | Op::Cmp(..) => scalar(Bool),
            Op::Unary(_, a) | Op::Binary(_, a, _) => of(*a),
            Op::Select { if_true, .. } => of(*if_true),
            Op::Convert(t, _) => scalar(*t),
            Op::Bitcast(t, _) => Some(*t),
            Op::Load { mem, lanes, .. } => match lanes {
                1 => scalar(mem_elem(mem)),
                n => Some(Type::Vector(mem_elem(mem), *n)),
            },
            Op::Extract(v, _) => of(*v).map(|t| Type::Scalar(t.elem())),
            Op::Vector(vs) => {
                let elem = vs.first().and_then(|v| of(*v)).map_or(U8, |t| t.elem());
                Some(Type::Vector(elem, vs.len() as u8))
            }
            Op::ReadLocal { local, .. } => scalar(if *local == 1 { F32 } else { U32 }),
            Op::PackBits { .. } | Op::UnpackBits { .. } => scalar(U8),
            Op::SelectRank { .. } => scalar(F32),
            Op::LoadRemote { shared, .. } => scalar(mem_elem(&Memory::Shared(*shared))),
            Op::Store { .. }
            | Op::WriteLocal { .. }
            | Op::If { .. }
            | Op::Barrier
            | Op::Warp(_)
            | Op::ClusterBarrier => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_kernels_give_a_result_or_an_error(
            ops in prop::collection::vec(
                (any_op(), any::<u32>(), any::<u32>(), any::<bool>()),
                0..MAX_INSTS,
            ),
            block_size in prop::sample::select(vec![0u32, 1, 2, 3, 3]),
            grid in prop::sample::select(vec![0u32, 1, 1, 2, 4]),
            cluster in prop::sample::select(vec![1u32, 1, 1, 2, 3, 0, 9]),
        ) {
            let mut kernel = kernel(ops, block_size);
            kernel.cluster_size = cluster;
            let mut args = args();
            let result = run(&kernel, &mut args, grid);
            if let Err(e) = &result {
                // Messages render too.
                prop_assert!(!e.to_string().is_empty());
            }
            // What the verifier accepts, the interpreter runs: only run-time errors remain.
            if kvq_ir::ir::verify(&kernel).is_ok() {
                let malformed = matches!(result, Err(InterpError::Malformed { .. }));
                prop_assert!(!malformed, "verified, yet {:?}", result);
            }
        }
    }
}

#[test]
fn cooperative_operations_check_what_they_rely_on() {
    use kvq_ir::ir::{ReduceOp, WarpOp};
    // An aligned load at an index that is not a multiple of its lanes.
    let mut b = Builder::new("misaligned", 1);
    let x = b.buffer("x", F32, Access::Read);
    let n = b.scalar_param("n", U32);
    let n = b.param(n);
    let load = b.load_aligned(x, n, 4);
    let kernel = b.finish();
    let mut args = [Arg::Buffer(Buffer::F32(vec![0.0; 16])), Arg::U32(6)];
    assert_eq!(
        run(&kernel, &mut args, 1),
        Err(InterpError::Misaligned {
            inst: load,
            index: 6,
            lanes: 4
        })
    );
    args[1] = Arg::U32(8);
    assert_eq!(run(&kernel, &mut args, 1), Ok(()));

    // A warp collective in a block that is not whole warps, and inside an if.
    let mut b = Builder::new("partial", 48);
    let acc = b.local("acc", U32, 1);
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: acc,
    });
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::PartialWarp(48)
    );
    let mut b = Builder::new("in_if", 32);
    let acc = b.local("acc", U32, 1);
    let t = b.bool(true);
    b.if_then(t, |b| {
        b.warp(WarpOp::Reduce {
            op: ReduceOp::Max,
            local: acc,
        })
    });
    assert_eq!(malformed(&b.finish(), &mut []).1, Malformed::NestedBarrier);

    // A reduction of bytes, a shuffle mask past the warp, a loop holding a barrier whose bound
    // is the thread id.
    let mut b = Builder::new("bytes", 32);
    let acc = b.local("acc", U8, 1);
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Sum,
        local: acc,
    });
    assert_eq!(malformed(&b.finish(), &mut []).1, Malformed::WarpLocal(0));
    let mut b = Builder::new("mask", 32);
    let acc = b.local("acc", U32, 1);
    b.warp(WarpOp::ShuffleXor {
        src: acc,
        dst: acc,
        mask: 40,
    });
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::ShuffleMask(40)
    );
    let mut b = Builder::new("thread_loop", 32);
    let z = b.u32(0);
    let tid = b.special(Special::ThreadId);
    b.for_range(z, tid, 1, |b, _| b.barrier());
    assert_eq!(
        malformed(&b.finish(), &mut []).1,
        Malformed::NotUniform(tid)
    );
}

/// A cluster kernel: block `b` reads the id stored by the block of rank `(b % 2) ^ 1` of its
/// cluster from that block's shared memory; a grid of part of a cluster is an error.
#[test]
fn cluster_blocks_read_each_others_shared_memory() {
    use kvq_ir::ir::BinaryOp;
    let mut b = Builder::new("swap", 32);
    b.cluster(2);
    let out = b.buffer("out", U32, Access::Write);
    let mine = b.shared("mine", U32, 1);
    let z = b.u32(0);
    let blk = b.special(kvq_ir::ir::Special::BlockId);
    b.store(mine, z, blk);
    b.cluster_barrier();
    let n = b.u32(2);
    let blk = b.special(kvq_ir::ir::Special::BlockId);
    let rank = b.rem(blk, n);
    let one = b.u32(1);
    let other = b.binary(BinaryOp::Xor, rank, one);
    let z = b.u32(0);
    let got = b.load_remote(mine, other, z);
    b.store(out, blk, got);
    b.cluster_barrier();
    let kernel = b.finish();
    kvq_ir::ir::verify(&kernel).expect("valid");
    let mut args = [Arg::Buffer(Buffer::U32(vec![99; 6]))];
    run(&kernel, &mut args, 6).expect("runs");
    let want: Vec<u32> = (0..6u32).map(|b| b ^ 1).collect();
    assert_eq!(args[0], Arg::Buffer(Buffer::U32(want)));
    assert_eq!(
        run(&kernel, &mut args, 5),
        Err(InterpError::ClusterGrid {
            cluster_size: 2,
            grid_size: 5
        })
    );
}

/// The trace of a cluster kernel runs whole clusters: asking for block 5 of a grid of 8 in
/// clusters of 4 traces blocks 4..8, each with its own threads' accesses (thread 0 of block `b`
/// stores at `b`), and only their stores land.
#[test]
fn traces_run_whole_clusters() {
    use kvq_ir::ir::interp::run_traced;
    let mut b = Builder::new("ring", 32);
    b.cluster(4);
    let out = b.buffer("out", U32, Access::Write);
    let mine = b.shared("mine", U32, 1);
    let z = b.u32(0);
    let blk = b.special(kvq_ir::ir::Special::BlockId);
    b.store(mine, z, blk);
    b.cluster_barrier();
    let tid = b.special(kvq_ir::ir::Special::ThreadId);
    let z = b.u32(0);
    let first = b.cmp(kvq_ir::ir::CmpOp::Eq, tid, z);
    b.if_then(first, |b| {
        let blk = b.special(kvq_ir::ir::Special::BlockId);
        let n = b.u32(4);
        let rank = b.rem(blk, n);
        let z = b.u32(0);
        let v = b.load_remote(mine, rank, z);
        b.store(out, blk, v);
    });
    b.cluster_barrier();
    let kernel = b.finish();
    kvq_ir::ir::verify(&kernel).expect("valid");
    let mut args = [Arg::Buffer(Buffer::U32(vec![99; 8]))];
    let trace = run_traced(&kernel, &mut args, 8, &[5]).expect("traces");
    let blocks: Vec<u32> = trace.blocks.iter().map(|t| t.block).collect();
    assert_eq!(blocks, [4, 5, 6, 7]);
    for t in &trace.blocks {
        assert_eq!(t.threads.len(), 32);
        let stores: Vec<_> = t.threads[0]
            .accesses
            .values()
            .flatten()
            .filter(|a| a.store && a.mem == kvq_ir::ir::Memory::Param(0))
            .map(|a| a.index)
            .collect();
        assert_eq!(stores, [t.block]);
        assert!(t.threads[1]
            .accesses
            .values()
            .flatten()
            .all(|a| a.mem != kvq_ir::ir::Memory::Param(0)));
    }
    let want = vec![99, 99, 99, 99, 4, 5, 6, 7];
    assert_eq!(args[0], Arg::Buffer(Buffer::U32(want)));
}
