//! Loops, ifs, execution coordinates and scalar parameters.

use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::ir::{Access, BinaryOp, Builder, CmpOp, Kernel, ScalarType, Special};
use ScalarType::{F32, U32};

use crate::common::{agree, buf, global_id};

/// Per thread: a sum over a strided loop (through a local), a nested loop count, a loop that
/// runs into `u32::MAX` with a step that would wrap, an empty loop, ifs in loops, and the
/// coordinates.
pub fn loops_kernel() -> Kernel {
    let mut b = Builder::new("loops", 8);
    let out = b.buffer("out", U32, Access::Write);
    let scaled = b.buffer("scaled", F32, Access::Write);
    let limit = b.scalar_param("limit", U32);
    let factor = b.scalar_param("factor", F32);
    let acc = b.local("acc", U32, 1);
    let i = global_id(&mut b, 8);
    let zero = b.u32(0);
    let stride = b.u32(6);
    let slot = b.mul(i, stride);
    // sum of k in (i..limit).step_by(3), odd k counted twice
    b.write_local(acc, zero, zero);
    let limit = b.param(limit);
    b.for_range(i, limit, 3, |b, k| {
        let zero = b.u32(0);
        let one = b.u32(1);
        let s = b.read_local(acc, zero);
        let s = b.add(s, k);
        let odd = b.binary(BinaryOp::And, k, one);
        let is_odd = b.cmp(CmpOp::Eq, odd, one);
        b.if_else(
            is_odd,
            |b| {
                let s2 = b.add(s, k);
                b.write_local(acc, zero, s2);
            },
            |b| b.write_local(acc, zero, s),
        );
    });
    let sum = b.read_local(acc, zero);
    b.store(out, slot, sum);
    // nested: count pairs (p, q) with p < i + 2, q < p
    b.write_local(acc, zero, zero);
    let two = b.u32(2);
    let top = b.add(i, two);
    b.for_range(zero, top, 1, |b, p| {
        let zero = b.u32(0);
        b.for_range(zero, p, 1, |b, _q| {
            let zero = b.u32(0);
            let one = b.u32(1);
            let c = b.read_local(acc, zero);
            let c = b.add(c, one);
            b.write_local(acc, zero, c);
        });
    });
    let pairs = b.read_local(acc, zero);
    let one = b.u32(1);
    let at = b.add(slot, one);
    b.store(out, at, pairs);
    // near the top: (MAX - 5 + i%2 .. MAX).step_by(4) must stop instead of wrapping
    b.write_local(acc, zero, zero);
    let start = b.u32(u32::MAX - 5);
    let parity = b.binary(BinaryOp::And, i, one);
    let start = b.add(start, parity);
    let end = b.u32(u32::MAX);
    b.for_range(start, end, 4, |b, k| {
        let zero = b.u32(0);
        let c = b.read_local(acc, zero);
        let c = b.binary(BinaryOp::Or, c, k);
        let c = b.add(c, k);
        b.write_local(acc, zero, c);
    });
    let top_sum = b.read_local(acc, zero);
    let at = b.add(slot, two);
    b.store(out, at, top_sum);
    // empty loop (start > end)
    let big = b.u32(100);
    b.for_range(big, zero, 1, |b, _| {
        let zero = b.u32(0);
        b.write_local(acc, zero, zero);
    });
    let three = b.u32(3);
    let at = b.add(slot, three);
    let after = b.read_local(acc, zero);
    b.store(out, at, after);
    // coordinates
    let four = b.u32(4);
    let at = b.add(slot, four);
    let grid = b.special(Special::GridSize);
    b.store(out, at, grid);
    let five = b.u32(5);
    let at = b.add(slot, five);
    let bid = b.special(Special::BlockId);
    b.store(out, at, bid);
    // a float scalar parameter
    let factor = b.param(factor);
    let x = b.convert(F32, i);
    let y = b.mul(x, factor);
    b.store(scaled, i, y);
    b.finish()
}

#[test]
fn loops_ifs_and_coordinates() {
    let grid = 5u32;
    let threads = (grid * 8) as usize;
    let args = vec![
        Arg::Buffer(Buffer::U32(vec![7; threads * 6])),
        Arg::Buffer(Buffer::F32(vec![0.0; threads])),
        Arg::U32(50),
        Arg::F32(0.1),
    ];
    let out = agree(&loops_kernel(), args, grid);
    let got = buf(&out, 0).as_u32().expect("u32");
    for i in 0..threads as u32 {
        let row = &got[(i * 6) as usize..][..6];
        let sum: u32 = (i..50)
            .step_by(3)
            .map(|k| if k % 2 == 1 { 2 * k } else { k })
            .sum();
        let pairs: u32 = (0..i + 2).sum();
        let top = (u32::MAX - 5 + i % 2..u32::MAX)
            .step_by(4)
            .fold(0u32, |c, k| (c | k).wrapping_add(k));
        assert_eq!(row, [sum, pairs, top, top, grid, i / 8], "thread {i}");
    }
    let scaled = buf(&out, 1).as_f32().expect("f32");
    for (i, &s) in scaled.iter().enumerate() {
        assert_eq!(s, i as f32 * 0.1f32);
    }
}

/// A kernel for the launch checks: `dst[i] = src[i] * scale` for `i < n`.
pub fn scale_kernel() -> Kernel {
    let mut b = Builder::new("scale", 32);
    let src = b.buffer("src", F32, Access::Read);
    let dst = b.buffer("dst", F32, Access::Write);
    let scale = b.scalar_param("scale", F32);
    let n = b.scalar_param("n", U32);
    let i = global_id(&mut b, 32);
    let n = b.param(n);
    let inside = b.cmp(CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let x = b.load(src, i, 1);
        let s = b.param(scale);
        let y = b.mul(x, s);
        b.store(dst, i, y);
    });
    b.finish()
}

/// A block-uniform loop bounded by loads of a read-only buffer at the block's index (uniform:
/// every thread reads the same bits), with barriers inside and the loaded count used after them:
/// block `b` runs `counts[b]` steps of 8 threads, each step storing `step * 8 + thread` into
/// shared memory and the block's output row summing the stored values, then writes the count.
pub fn loaded_bound_kernel() -> Kernel {
    let mut b = Builder::new("loaded_bound", 8);
    let counts = b.buffer("counts", U32, Access::Read);
    let out = b.buffer("out", U32, Access::Write);
    let s = b.shared("s", U32, 8);
    let acc = b.local("acc", U32, 1);
    let bid = b.special(Special::BlockId);
    let n = b.load(counts, bid, 1);
    let z = b.u32(0);
    b.for_range(z, n, 1, |b, step| {
        let t = b.special(Special::ThreadId);
        let eight = b.u32(8);
        let base = b.mul(step, eight);
        let v = b.add(base, t);
        b.store(s, t, v);
        b.barrier();
        let t = b.special(Special::ThreadId);
        let seven = b.u32(7);
        let other = b.binary(BinaryOp::Xor, t, seven);
        let x = b.load(s, other, 1);
        let zero = b.u32(0);
        let a = b.read_local(acc, zero);
        let a = b.add(a, x);
        b.write_local(acc, zero, a);
        b.barrier();
    });
    // The loaded count, used after the loop's barriers: rematerialised by the host backend.
    let t = b.special(Special::ThreadId);
    let nine = b.u32(9);
    let bid = b.special(Special::BlockId);
    let row = b.mul(bid, nine);
    let at = b.add(row, t);
    let zero = b.u32(0);
    let a = b.read_local(acc, zero);
    b.store(out, at, a);
    let zero = b.u32(0);
    let first = b.cmp(CmpOp::Eq, t, zero);
    b.if_then(first, |b| {
        let eight = b.u32(8);
        let at = b.add(row, eight);
        b.store(out, at, n);
    });
    b.finish()
}

#[test]
fn sync_loops_bounded_by_uniform_loads() {
    let counts = vec![0u32, 3, 1, 5];
    let args = vec![
        Arg::Buffer(Buffer::U32(counts.clone())),
        Arg::Buffer(Buffer::U32(vec![0; 36])),
    ];
    let got = agree(&loaded_bound_kernel(), args, 4);
    // Thread t of block b: sum over steps of the value of thread t ^ 7, (s * 8 + (t ^ 7)).
    let mut want = vec![0u32; 36];
    for (blk, &n) in counts.iter().enumerate() {
        for t in 0..8u32 {
            want[blk * 9 + t as usize] = (0..n).map(|s| s * 8 + (t ^ 7)).sum();
        }
        want[blk * 9 + 8] = n;
    }
    assert_eq!(buf(&got, 1), &Buffer::U32(want));
}
