//! Memory: vector loads and stores, bit packing, rank selection, shared memory and locals.

use half::{bf16, f16};
use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::ir::{Access, BinaryOp, Builder, CmpOp, Kernel, ScalarType, Special};
use kvq_ir::reference::pack::pack_row;
use kvq_ir::{BitOrder, Bits};
use ScalarType::{BF16, F16, F32, F64, U32, U8};

use crate::common::{agree, buf, global_id, lcg, special_f32};

/// Thread `i < n` loads `lanes` elements at `i * lanes + offset`, converts each to f32, and
/// stores them at `i * lanes` of the output (as one vector store); also stores the raw vector
/// back into a copy.
pub fn vector_kernel(elem: ScalarType, lanes: u8, offset: u32) -> Kernel {
    let mut b = Builder::new(&format!("vector_{}_{lanes}", elem.name()), 16);
    let src = b.buffer("src", elem, Access::Read);
    let dst = b.buffer("dst", F32, Access::Write);
    let copy = b.buffer("copy", elem, Access::Write);
    let n = b.scalar_param("n", U32);
    let n = b.param(n);
    let i = global_id(&mut b, 16);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let width = b.u32(u32::from(lanes));
        let at = b.mul(i, width);
        let off = b.u32(offset);
        let from = b.add(at, off);
        let v = b.load(src, from, lanes);
        b.store(copy, at, v);
        let items = (0..lanes)
            .map(|l| {
                let x = b.extract(v, l);
                b.convert(F32, x)
            })
            .collect();
        let floats = b.vector(items);
        b.store(dst, at, floats);
    });
    b.finish()
}

fn check_vectors(elem: ScalarType, lanes: u8, src: Buffer) {
    let total = crate::common::bits(&src).len() as u32;
    let n = (total - 1) / u32::from(lanes);
    let kernel = vector_kernel(elem, lanes, 1);
    let len = (n * u32::from(lanes)) as usize;
    let args = vec![
        Arg::Buffer(src),
        Arg::Buffer(Buffer::zeros(F32, len).expect("f32")),
        Arg::Buffer(Buffer::zeros(elem, len).expect("buffer")),
        Arg::U32(n),
    ];
    let out = agree(&kernel, args, n.div_ceil(16));
    let src_bits = crate::common::bits(buf(&out, 0));
    assert_eq!(
        crate::common::bits(buf(&out, 2)),
        src_bits[1..=len].to_vec()
    );
}

#[test]
fn vector_loads_and_stores_of_every_width() {
    for lanes in [2u8, 4, 8, 16] {
        let n = 37 * usize::from(lanes) + 1;
        let words = lcg(u64::from(lanes), n);
        check_vectors(
            U8,
            lanes,
            Buffer::U8(words.iter().map(|&w| w as u8).collect()),
        );
        check_vectors(
            F16,
            lanes,
            Buffer::F16(
                words
                    .iter()
                    .map(|&w| f16::from_f32(w as f32 * 1e-6))
                    .collect(),
            ),
        );
        check_vectors(
            BF16,
            lanes,
            Buffer::BF16(
                words
                    .iter()
                    .map(|&w| bf16::from_f32(w as f32 * 1e-6))
                    .collect(),
            ),
        );
        check_vectors(
            F32,
            lanes,
            Buffer::F32(words.iter().map(|&w| f32::from_bits(w >> 2)).collect()),
        );
        check_vectors(
            F64,
            lanes,
            Buffer::F64(words.iter().map(|&w| f64::from(w) / 7.0).collect()),
        );
    }
}

/// Thread `i` packs codes `[i * per, (i + 1) * per)` into byte `i`, and unpacks byte `i` of
/// `packed_in` into codes `[i * per, ..)` of `unpacked`.
pub fn pack_kernel(bits: Bits, order: BitOrder) -> Kernel {
    let per = 8 / bits.width() as u8;
    let mut b = Builder::new(&format!("pack_{}_{order:?}", bits.width()), 32);
    let codes = b.buffer("codes", U8, Access::Read);
    let packed = b.buffer("packed", U8, Access::Write);
    let packed_in = b.buffer("packed_in", U8, Access::Read);
    let unpacked = b.buffer("unpacked", U8, Access::Write);
    let i = global_id(&mut b, 32);
    let per_v = b.u32(u32::from(per));
    let first = b.mul(i, per_v);
    let items: Vec<_> = (0..per)
        .map(|j| {
            let o = b.u32(u32::from(j));
            let at = b.add(first, o);
            b.load(codes, at, 1)
        })
        .collect();
    let byte = b.pack_bits(items, bits, order);
    b.store(packed, i, byte);
    let input = b.load(packed_in, i, 1);
    for j in 0..per {
        let code = b.unpack_bits(input, j, bits, order);
        let o = b.u32(u32::from(j));
        let at = b.add(first, o);
        b.store(unpacked, at, code);
    }
    b.finish()
}

#[test]
fn pack_and_unpack_every_width_and_order() {
    let bytes = 64usize;
    for bits in Bits::ALL {
        for order in [BitOrder::Msb, BitOrder::Lsb] {
            let per = 8 / bits.width() as usize;
            let max = (1u32 << bits.width()) - 1;
            let codes: Vec<u8> = lcg(5, bytes * per)
                .iter()
                .map(|&w| (w % (max + 1)) as u8)
                .collect();
            let packed_in: Vec<u8> = lcg(6, bytes).iter().map(|&w| w as u8).collect();
            let args = vec![
                Arg::Buffer(Buffer::U8(codes.clone())),
                Arg::Buffer(Buffer::U8(vec![0; bytes])),
                Arg::Buffer(Buffer::U8(packed_in.clone())),
                Arg::Buffer(Buffer::U8(vec![0; bytes * per])),
            ];
            let out = agree(&pack_kernel(bits, order), args, bytes as u32 / 32);
            let mut want = vec![0u8; bytes];
            pack_row(&codes, bits, order, &mut want);
            assert_eq!(buf(&out, 1).as_u8(), Some(&want[..]), "{bits:?} {order:?}");
            // Unpacking then packing gives the byte back.
            let mut repacked = vec![0u8; bytes];
            pack_row(
                buf(&out, 3).as_u8().expect("u8"),
                bits,
                order,
                &mut repacked,
            );
            assert_eq!(repacked, packed_in);
        }
    }
}

/// Thread `r` of block `g` selects rank `r` of group `g`: `count` elements at
/// `g + i * groups` (strided).
pub fn rank_kernel(elem: ScalarType, count: u32) -> Kernel {
    let mut b = Builder::new(&format!("rank_{}", elem.name()), count);
    let src = b.buffer("src", elem, Access::Read);
    let dst = b.buffer("dst", F32, Access::Write);
    let tid = b.special(Special::ThreadId);
    let group = b.special(Special::BlockId);
    let groups = b.special(Special::GridSize);
    let count_v = b.u32(count);
    let x = b.select_rank(src, group, groups, count_v, tid);
    let at = global_id(&mut b, count);
    b.store(dst, at, x);
    b.finish()
}

fn sorted_groups(values: &[f32], groups: usize) -> Vec<f32> {
    let count = values.len() / groups;
    let mut out = Vec::new();
    for g in 0..groups {
        let mut v: Vec<f32> = (0..count).map(|i| values[g + i * groups]).collect();
        v.sort_by(f32::total_cmp);
        out.extend(v);
    }
    out
}

/// Runs [`rank_kernel`] over `groups` groups of `count` elements of `src` (interpreter and host
/// agreeing bit for bit) and checks every rank against `want`, the groups sorted.
fn check_ranks(elem: ScalarType, src: Buffer, [count, groups]: [u32; 2], want: &[f32]) {
    let args = vec![
        Arg::Buffer(src),
        Arg::Buffer(Buffer::zeros(F32, want.len()).expect("f32")),
    ];
    let out = agree(&rank_kernel(elem, count), args, groups);
    let got: Vec<u32> = buf(&out, 1)
        .as_f32()
        .expect("f32")
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let want: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
    assert_eq!(got, want, "{}", elem.name());
}

#[test]
fn select_rank_is_exact_in_total_order() {
    let groups = 3usize;
    let mut values = special_f32();
    values.extend([
        0.0,
        -0.0,
        1.0,
        1.0,
        1.0,
        -0.0,
        2.5,
        2.5,
        f32::from_bits(1),
        -f32::from_bits(1),
    ]);
    values.truncate(values.len() / groups * groups);
    let count = (values.len() / groups) as u32;
    let want = sorted_groups(&values, groups);
    let run = |elem: ScalarType, src: Buffer, want: &[f32]| {
        check_ranks(elem, src, [count, groups as u32], want);
    };
    run(F32, Buffer::F32(values.clone()), &want);
    let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    let as_f32: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
    run(F16, Buffer::F16(halves), &sorted_groups(&as_f32, groups));
    let doubles: Vec<f64> = values.iter().map(|&v| f64::from(v) * 1.000_000_1).collect();
    let as_f32: Vec<f32> = doubles.iter().map(|&d| d as f32).collect();
    run(F64, Buffer::F64(doubles), &sorted_groups(&as_f32, groups));
}

/// The host selects through digits of the order key (11, 11 and 10 bits; for f16 and bf16 the
/// 19 and 16 bits above the constant ones): groups whose elements share their leading digits,
/// ties that span a digit's bins, every bit pattern (NaNs included, in total order), and one
/// value repeated, each against a sort, for f32, f16 and bf16 elements.
#[test]
fn select_rank_is_exact_across_radix_digits() {
    let count = 1000usize;
    let groups = 4usize;
    let words = lcg(11, count);
    // Element bits: u32 for f32, the low 16 bits otherwise.
    let pattern = |u: u32| u.wrapping_mul(0x9E37_79B9);
    for elem in [F32, F16, BF16] {
        let mut values = vec![0f32; count * groups];
        let mut raw = vec![0u32; count * groups];
        for (i, &u) in words.iter().enumerate() {
            for g in 0..groups {
                let (any, one, sign) = match elem {
                    F32 => (pattern(u), 0x3F80_0000, 0x8000_0000),
                    F16 => (pattern(u) >> 16, 0x3C00, 0x8000),
                    _ => (pattern(u) >> 16, 0x3F80, 0x8000),
                };
                raw[g + i * groups] = match g {
                    // Every pattern, NaNs and infinities included.
                    0 => any,
                    // 1 + k ulp: the first digits equal, the last ones differ.
                    1 => one + u % 300,
                    // Ties over a few values of both signs: -1, -0, +0, 1.
                    2 => [one | sign, sign, 0, one][(u % 4) as usize],
                    _ => one + 7,
                };
            }
        }
        let src = match elem {
            F32 => Buffer::F32(raw.iter().map(|&r| f32::from_bits(r)).collect()),
            F16 => Buffer::F16(raw.iter().map(|&r| f16::from_bits(r as u16)).collect()),
            _ => Buffer::BF16(raw.iter().map(|&r| bf16::from_bits(r as u16)).collect()),
        };
        for (v, &r) in values.iter_mut().zip(&raw) {
            *v = match elem {
                F32 => f32::from_bits(r),
                F16 => f16::from_bits(r as u16).to_f32(),
                _ => bf16::from_bits(r as u16).to_f32(),
            };
        }
        let want = sorted_groups(&values, groups);
        check_ranks(elem, src, [count as u32, groups as u32], &want);
    }
}

const REDUCE_BLOCK: u32 = 64;

/// Block sums of 64 f32s by a shared-memory tree with barriers; also each thread's value plus
/// its right neighbour's, through a local that survives the barriers.
pub fn reduce_kernel() -> Kernel {
    let mut b = Builder::new("block_sum", REDUCE_BLOCK);
    let src = b.buffer("src", F32, Access::Read);
    let sums = b.buffer("sums", F32, Access::Write);
    let pairs = b.buffer("pairs", F32, Access::Write);
    let shared = b.shared("partial", F32, REDUCE_BLOCK);
    let mine = b.local("mine", F32, 2);
    let i = global_id(&mut b, REDUCE_BLOCK);
    let tid = b.special(Special::ThreadId);
    let x = b.load(src, i, 1);
    b.store(shared, tid, x);
    let zero = b.u32(0);
    b.write_local(mine, zero, x);
    b.barrier();
    // Keep the right neighbour's value in the local before the tree overwrites shared memory.
    let tid = b.special(Special::ThreadId);
    let one = b.u32(1);
    let next = b.add(tid, one);
    let mask = b.u32(REDUCE_BLOCK - 1);
    let next = b.binary(BinaryOp::And, next, mask);
    let right = b.load(shared, next, 1);
    b.write_local(mine, one, right);
    let mut step = REDUCE_BLOCK / 2;
    while step > 0 {
        b.barrier();
        let tid = b.special(Special::ThreadId);
        let s = b.u32(step);
        let active = b.cmp(CmpOp::Lt, tid, s);
        b.if_then(active, |b| {
            let other = b.add(tid, s);
            let x = b.load(shared, tid, 1);
            let y = b.load(shared, other, 1);
            let sum = b.add(x, y);
            b.store(shared, tid, sum);
        });
        step /= 2;
    }
    b.barrier();
    let tid = b.special(Special::ThreadId);
    let zero = b.u32(0);
    let first = b.cmp(CmpOp::Eq, tid, zero);
    b.if_then(first, |b| {
        let total = b.load(shared, zero, 1);
        let bid = b.special(Special::BlockId);
        b.store(sums, bid, total);
    });
    let i = global_id(&mut b, REDUCE_BLOCK);
    let zero = b.u32(0);
    let one = b.u32(1);
    let x = b.read_local(mine, zero);
    let y = b.read_local(mine, one);
    let pair = b.add(x, y);
    b.store(pairs, i, pair);
    b.finish()
}

#[test]
fn shared_memory_reduction_with_barriers() {
    let blocks = 37u32;
    let n = (blocks * REDUCE_BLOCK) as usize;
    let x: Vec<f32> = lcg(9, n)
        .iter()
        .map(|&w| (w as f32 / 1e6).sin() * 3.0)
        .collect();
    let args = vec![
        Arg::Buffer(Buffer::F32(x.clone())),
        Arg::Buffer(Buffer::F32(vec![0.0; blocks as usize])),
        Arg::Buffer(Buffer::F32(vec![0.0; n])),
    ];
    let out = agree(&reduce_kernel(), args, blocks);
    let pairs = buf(&out, 2).as_f32().expect("f32");
    let b = REDUCE_BLOCK as usize;
    for k in 0..n {
        let right = (k / b) * b + (k % b + 1) % b;
        assert_eq!(pairs[k], x[k] + x[right]);
    }
    let sums = buf(&out, 1).as_f32().expect("f32");
    for (g, &s) in sums.iter().enumerate() {
        let mut v = x[g * b..(g + 1) * b].to_vec();
        let mut step = b / 2;
        while step > 0 {
            for t in 0..step {
                v[t] += v[t + step];
            }
            step /= 2;
        }
        assert_eq!(s.to_bits(), v[0].to_bits());
    }
}

/// Each thread fills an unzeroed table of 1,024 U32s (`t[i] = i * 3 + block`), then reads it at
/// data-dependent indices, beside a zeroed local it only reads (1,000 U32s, all zero).
fn unzeroed_kernel() -> Kernel {
    let mut b = Builder::new("unzeroed_table", 4);
    let src = b.buffer("src", U32, Access::Read);
    let dst = b.buffer("dst", U32, Access::Write);
    let table = b.unzeroed_local("table", U32, 1024);
    let zeroed = b.local("zeroed", U32, 1000);
    let bid = b.special(Special::BlockId);
    let (zero, n) = (b.u32(0), b.u32(1024));
    b.for_range(zero, n, 1, |b, i| {
        let three = b.u32(3);
        let x = b.mul(i, three);
        let x = b.add(x, bid);
        b.write_local(table, i, x);
    });
    let i = global_id(&mut b, 4);
    let at = b.load(src, i, 1);
    let mask = b.u32(1023);
    let at = b.binary(BinaryOp::And, at, mask);
    let x = b.read_local(table, at);
    let limit = b.u32(999);
    let z_at = b.min(at, limit);
    let z = b.read_local(zeroed, z_at);
    let x = b.add(x, z);
    b.store(dst, i, x);
    b.finish()
}

#[test]
fn unzeroed_locals_are_not_filled_and_read_what_the_thread_wrote() {
    use kvq_codegen::{llvm_ir, Passes, Target};
    let blocks = 5u32;
    let n = (blocks * 4) as usize;
    let src = lcg(21, n);
    let args = vec![
        Arg::Buffer(Buffer::U32(src.clone())),
        Arg::Buffer(Buffer::U32(vec![7; n])),
    ];
    let out = agree(&unzeroed_kernel(), args, blocks);
    let want: Vec<u32> = (0..n)
        .map(|k| (src[k] & 1023) * 3 + (k / 4) as u32)
        .collect();
    assert_eq!(buf(&out, 1).as_u32().expect("u32"), want);
    // The host code fills the zeroed local (1,000 U32s a thread, 4 threads: 16,000 bytes) and
    // not the unzeroed one (16,384 bytes).
    let kernel = unzeroed_kernel();
    let host = llvm_ir(
        &kernel,
        &crate::common::info(&kernel),
        Target::Host,
        Passes::default(),
    )
    .expect("ir");
    let memsets: Vec<&str> = host.lines().filter(|l| l.contains("llvm.memset")).collect();
    assert!(
        memsets.iter().any(|l| l.contains("i64 16000")),
        "the zeroed local's fill: {memsets:?}"
    );
    assert!(
        !memsets.iter().any(|l| l.contains("i64 16384")),
        "the unzeroed local filled: {memsets:?}"
    );
}
