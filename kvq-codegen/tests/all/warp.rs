//! Cooperative kernels: lane and warp coordinates, warp shuffles and reductions, block-uniform
//! loops holding barriers, aligned vector accesses, xor, population count and byte/word bit
//! casts, the warp's matrix multiply-accumulate. Each kernel runs through the interpreter and the host backend (bit-identical, see
//! `agree`) and its result is checked against plain Rust written from the IR's definitions.

use half::f16;
use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::ir::{
    Access, BinaryOp, Builder, Kernel, ReduceOp, ScalarType, Special, Type, UnaryOp, WarpOp,
    MMA_ACC_LEN, MMA_A_LEN, MMA_B_LEN,
};
use ScalarType::{F16, F32, U32, U8};

use crate::common::{agree, buf, global_id, lcg, special_f32};

/// The reduction of 32 lanes in the IR's documented order, written as halving: after the
/// step of distance `s`, lane `l < s` holds `op(v[l], v[l + s])` (the lower lane first).
fn tree<T: Copy>(mut v: Vec<T>, op: impl Fn(T, T) -> T) -> T {
    let mut s = 16;
    while s >= 1 {
        v = (0..s).map(|l| op(v[l], v[l + s])).collect();
        s /= 2;
    }
    v[0]
}

fn min_ir(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

fn max_ir(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// `out[g * 3 + k]` = warp reduction `k` (sum, min, max) of `x[g]` over the thread's warp, as
/// every lane sees it; `lanes[g]` = `lane_id * 1000 + warp_id`.
pub fn reduce_kernel() -> Kernel {
    let mut b = Builder::new("warp_reduce", 64);
    let x = b.buffer("x", F32, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let ids = b.buffer("ids", U32, Access::Write);
    let acc = b.local("acc", F32, 3);
    let g = global_id(&mut b, 64);
    let v = b.load(x, g, 1);
    for k in 0..3 {
        let k = b.u32(k);
        b.write_local(acc, k, v);
    }
    let lane = b.special(Special::LaneId);
    let warp = b.special(Special::WarpId);
    let thousand = b.u32(1000);
    let lane_k = b.mul(lane, thousand);
    let id = b.add(lane_k, warp);
    b.store(ids, g, id);
    // Three reductions on one local: each element separately.
    for (k, op) in [ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max]
        .into_iter()
        .enumerate()
    {
        let tmp = b.local(&format!("t{k}"), F32, 1);
        let z = b.u32(0);
        let kk = b.u32(k as u32);
        let e = b.read_local(acc, kk);
        b.write_local(tmp, z, e);
        b.warp(WarpOp::Reduce { op, local: tmp });
        let z = b.u32(0);
        let r = b.read_local(tmp, z);
        let tid = b.special(Special::ThreadId);
        let bid = b.special(Special::BlockId);
        let bs = b.u32(64);
        let first = b.mul(bid, bs);
        let g = b.add(first, tid);
        let three = b.u32(3);
        let at = b.mul(g, three);
        let kk = b.u32(k as u32);
        let at = b.add(at, kk);
        b.store(out, at, r);
    }
    b.finish()
}

#[test]
fn warp_reductions_follow_the_documented_tree_on_every_backend() {
    let kernel = reduce_kernel();
    let grid = 3;
    let n = 64 * grid as usize;
    // Values whose sum depends on the order (wide magnitudes), signed zeros and NaN.
    let mut x: Vec<f32> = lcg(7, n)
        .iter()
        .map(|&r| (r as f32 / 4e9 - 0.5) * 10f32.powi((r % 13) as i32 - 6))
        .collect();
    let specials = special_f32();
    x[64..64 + specials.len().min(32)].copy_from_slice(&specials[..specials.len().min(32)]);
    x[128] = -0.0;
    x[129..160].fill(0.0);
    let args = vec![
        Arg::Buffer(Buffer::F32(x.clone())),
        Arg::Buffer(Buffer::F32(vec![0.0; n * 3])),
        Arg::Buffer(Buffer::U32(vec![0; n])),
    ];
    let got = agree(&kernel, args, grid);
    let (Buffer::F32(out), Buffer::U32(ids)) = (buf(&got, 1), buf(&got, 2)) else {
        panic!("types")
    };
    for g in 0..n {
        let warp = &x[g / 32 * 32..g / 32 * 32 + 32];
        let want = [
            tree(warp.to_vec(), |a, b| a + b),
            tree(warp.to_vec(), min_ir),
            tree(warp.to_vec(), max_ir),
        ];
        for k in 0..3 {
            assert_eq!(
                out[g * 3 + k].to_bits(),
                want[k].to_bits(),
                "thread {g} reduction {k}"
            );
        }
        assert_eq!(ids[g], (g % 32) as u32 * 1000 + (g % 64 / 32) as u32);
    }
    // The order matters for these sums: a sequential sum differs somewhere.
    let sequential = |w: &[f32]| w.iter().fold(0.0f32, |s, &v| s + v);
    assert!((0..n / 32).any(|w| {
        let warp = &x[w * 32..w * 32 + 32];
        sequential(warp).to_bits() != tree(warp.to_vec(), |a, b| a + b).to_bits()
    }));
}

/// `out[g]` = `x` of lane `lane ^ 5` (xor) and of lane `(lane * 7 + 3) % 64` (idx, taken
/// modulo 32) of the thread's warp; u8 and u32 locals.
pub fn shuffle_kernel() -> Kernel {
    let mut b = Builder::new("warp_shuffle", 64);
    let x = b.buffer("x", U32, Access::Read);
    let xor_out = b.buffer("xor_out", U32, Access::Write);
    let idx_out = b.buffer("idx_out", U8, Access::Write);
    let src = b.local("src", U32, 2);
    let dst = b.local("dst", U32, 2);
    let bytes = b.local("bytes", U8, 1);
    let from = b.local("from", U32, 1);
    let g = global_id(&mut b, 64);
    let v = b.load(x, g, 1);
    let (z, one) = (b.u32(0), b.u32(1));
    b.write_local(src, z, v);
    let nv = b.unary(UnaryOp::Not, v);
    b.write_local(src, one, nv);
    let byte = b.convert(U8, v);
    b.write_local(bytes, z, byte);
    let lane = b.special(Special::LaneId);
    let (seven, three) = (b.u32(7), b.u32(3));
    let l7 = b.mul(lane, seven);
    let want = b.add(l7, three);
    let sixty_four = b.u32(64);
    let want = b.rem(want, sixty_four);
    b.write_local(from, z, want);
    b.warp(WarpOp::ShuffleXor { src, dst, mask: 5 });
    b.warp(WarpOp::ShuffleIdx {
        src: bytes,
        dst: bytes,
        lane: from,
    });
    let g = global_id(&mut b, 64);
    let (z, one) = (b.u32(0), b.u32(1));
    let a = b.read_local(dst, z);
    let na = b.read_local(dst, one);
    let back = b.unary(UnaryOp::Not, na);
    let same = b.binary(BinaryOp::Xor, a, back);
    let r = b.add(a, same);
    b.store(xor_out, g, r);
    let got = b.read_local(bytes, z);
    b.store(idx_out, g, got);
    b.finish()
}

#[test]
fn warp_shuffles_move_values_between_lanes_on_every_backend() {
    let kernel = shuffle_kernel();
    let n = 128;
    let x = lcg(11, n);
    let args = vec![
        Arg::Buffer(Buffer::U32(x.clone())),
        Arg::Buffer(Buffer::U32(vec![0; n])),
        Arg::Buffer(Buffer::U8(vec![0; n])),
    ];
    let got = agree(&kernel, args, 2);
    let (Buffer::U32(xor_out), Buffer::U8(idx_out)) = (buf(&got, 1), buf(&got, 2)) else {
        panic!("types")
    };
    for g in 0..n {
        let base = g / 32 * 32;
        let lane = g % 32;
        assert_eq!(xor_out[g], x[base + (lane ^ 5)], "xor, thread {g}");
        let source = (lane * 7 + 3) % 64 % 32;
        assert_eq!(idx_out[g], x[base + source] as u8, "idx, thread {g}");
    }
}

/// A block-uniform loop over tiles of `n` elements with barriers inside: each tile is staged in
/// shared memory, reversed within the tile, and accumulated per thread; the tile count comes
/// from a parameter, the tile start from the block id and the loop counter.
pub fn tiles_kernel() -> Kernel {
    let mut b = Builder::new("uniform_tiles", 32);
    let x = b.buffer("x", F32, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let tiles = b.scalar_param("tiles", U32);
    let tile = b.shared("tile", F32, 32);
    let acc = b.local("acc", F32, 1);
    let tiles = b.param(tiles);
    let bid = b.special(Special::BlockId);
    let size = b.u32(32);
    let per_block = b.mul(tiles, size);
    let base = b.mul(bid, per_block);
    let z = b.u32(0);
    b.for_range(z, tiles, 1, |b, t| {
        let tid = b.special(Special::ThreadId);
        let at = b.mul(t, size);
        let at = b.add(base, at);
        let at = b.add(at, tid);
        let v = b.load(x, at, 1);
        b.store(tile, tid, v);
        b.barrier();
        let tid = b.special(Special::ThreadId);
        let last = b.u32(31);
        let mirror = b.sub(last, tid);
        let w = b.load(tile, mirror, 1);
        let z = b.u32(0);
        let a = b.read_local(acc, z);
        let a = b.add(a, w);
        b.write_local(acc, z, a);
        b.barrier();
    });
    let tid = b.special(Special::ThreadId);
    let first = b.mul(bid, size);
    let at = b.add(first, tid);
    let z = b.u32(0);
    let a = b.read_local(acc, z);
    b.store(out, at, a);
    b.finish()
}

#[test]
fn block_uniform_loops_hold_barriers_on_every_backend() {
    let kernel = tiles_kernel();
    let (tiles, grid) = (5usize, 3u32);
    let n = tiles * 32 * grid as usize;
    let x: Vec<f32> = lcg(3, n).iter().map(|&r| r as f32 / 1e6).collect();
    let args = vec![
        Arg::Buffer(Buffer::F32(x.clone())),
        Arg::Buffer(Buffer::F32(vec![0.0; 32 * grid as usize])),
        Arg::U32(tiles as u32),
    ];
    let got = agree(&kernel, args, grid);
    let Buffer::F32(out) = buf(&got, 1) else {
        panic!("type")
    };
    for block in 0..grid as usize {
        for tid in 0..32 {
            let mut acc = 0.0f32;
            for t in 0..tiles {
                acc += x[block * tiles * 32 + t * 32 + (31 - tid)];
            }
            assert_eq!(out[block * 32 + tid].to_bits(), acc.to_bits());
        }
    }
}

/// Aligned 16-byte loads of bytes, bitcast to words, popcount and xor per word; aligned vector
/// stores of the words.
pub fn bytes_kernel() -> Kernel {
    let mut b = Builder::new("aligned_bytes", 32);
    let codes = b.buffer("codes", U8, Access::Read);
    let words = b.buffer("words", U32, Access::Write);
    let counts = b.buffer("counts", U32, Access::Write);
    let g = global_id(&mut b, 32);
    let sixteen = b.u32(16);
    let at = b.mul(g, sixteen);
    let v = b.load_aligned(codes, at, 16);
    let w = b.bitcast_to(Type::Vector(U32, 4), v);
    let four = b.u32(4);
    let wat = b.mul(g, four);
    b.store_aligned(words, wat, w);
    let mut total = b.u32(0);
    let key = b.u32(0x9e37_79b9);
    for lane in 0..4 {
        let word = b.extract(w, lane);
        let mixed = b.binary(BinaryOp::Xor, word, key);
        let c = b.unary(UnaryOp::PopCount, mixed);
        total = b.add(total, c);
    }
    let byte = b.extract(v, 5);
    let byte_count = b.unary(UnaryOp::PopCount, byte);
    let byte_count = b.convert(U32, byte_count);
    let shift = b.u32(8);
    let hi = b.binary(BinaryOp::Shl, byte_count, shift);
    let total = b.add(total, hi);
    b.store(counts, g, total);
    b.finish()
}

#[test]
fn aligned_byte_vectors_bitcast_to_little_endian_words_on_every_backend() {
    let kernel = bytes_kernel();
    let n = 64;
    let codes: Vec<u8> = lcg(5, n * 16).iter().map(|&r| r as u8).collect();
    let args = vec![
        Arg::Buffer(Buffer::U8(codes.clone())),
        Arg::Buffer(Buffer::U32(vec![0; n * 4])),
        Arg::Buffer(Buffer::U32(vec![0; n])),
    ];
    let got = agree(&kernel, args, 2);
    let (Buffer::U32(words), Buffer::U32(counts)) = (buf(&got, 1), buf(&got, 2)) else {
        panic!("types")
    };
    for g in 0..n {
        let mut total = 0;
        for lane in 0..4 {
            let at = g * 16 + lane * 4;
            let word = u32::from_le_bytes([codes[at], codes[at + 1], codes[at + 2], codes[at + 3]]);
            assert_eq!(words[g * 4 + lane], word);
            total += (word ^ 0x9e37_79b9).count_ones();
        }
        total += codes[g * 16 + 5].count_ones() << 8;
        assert_eq!(counts[g], total, "thread {g}");
    }
}

#[test]
fn the_host_launcher_refuses_a_misaligned_buffer() {
    let kernel = bytes_kernel();
    let compiled = kvq_codegen::host::compile(&kernel).unwrap();
    let storage = vec![0u8; 33 * 16];
    // A view that does not start at a multiple of 16 bytes.
    let off = usize::from(storage.as_ptr() as usize % 16 == 0);
    let codes = &storage[off..off + 32 * 16];
    let mut words = vec![0u32; 32 * 4];
    let mut counts = vec![0u32; 32];
    let mut args = [
        codes.into(),
        words.as_mut_slice().into(),
        counts.as_mut_slice().into(),
    ];
    // SAFETY: every buffer holds what one block of 32 threads indexes.
    let err = unsafe { compiled.launch(&mut args, 1) }.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("argument 0: the buffer must start at a multiple of 16 bytes"),
        "{text}"
    );
    assert!(words.iter().all(|&w| w == 0), "nothing ran");
}

/// 64 KiB of shared memory (dynamic: above the 48 KiB of static shared memory) in two arrays:
/// every thread fills a slice, then reads another thread's slice back after a barrier.
pub fn big_shared_kernel() -> Kernel {
    let mut b = Builder::new("big_shared", 256);
    let out = b.buffer("out", U32, Access::Write);
    let flag = b.shared("flag", U8, 4);
    let table = b.shared("table", U32, 16 * 1024);
    let tid = b.special(Special::ThreadId);
    let per = b.u32(64);
    let first = b.mul(tid, per);
    let end = b.add(first, per);
    let bid = b.special(Special::BlockId);
    b.for_range(first, end, 1, |b, i| {
        let v = b.binary(BinaryOp::Xor, i, bid);
        b.store(table, i, v);
    });
    let z = b.u32(0);
    let one = b.u8(1);
    b.store(flag, z, one);
    b.barrier();
    let tid = b.special(Special::ThreadId);
    let bid = b.special(Special::BlockId);
    let mask = b.u32(255);
    let other = b.binary(BinaryOp::Xor, tid, mask);
    let per = b.u32(64);
    let at = b.mul(other, per);
    let seven = b.u32(7);
    let at = b.add(at, seven);
    let v = b.load(table, at, 1);
    let z = b.u32(0);
    let f = b.load(flag, z, 1);
    let f = b.convert(U32, f);
    let v = b.add(v, f);
    let bs = b.u32(256);
    let g = b.mul(bid, bs);
    let g = b.add(g, tid);
    b.store(out, g, v);
    b.finish()
}

#[test]
fn shared_memory_above_48_kib_is_dynamic_on_every_backend() {
    let kernel = big_shared_kernel();
    let info = crate::common::info(&kernel);
    assert_eq!(info.dynamic_shared_bytes, 16 + 64 * 1024);
    let args = vec![Arg::Buffer(Buffer::U32(vec![0; 512]))];
    let got = agree(&kernel, args, 2);
    let Buffer::U32(out) = buf(&got, 0) else {
        panic!("type")
    };
    for block in 0..2u32 {
        for tid in 0..256u32 {
            let i = (tid ^ 255) * 64 + 7;
            assert_eq!(out[(block * 256 + tid) as usize], (i ^ block) + 1);
        }
    }
}

/// Clusters of 4 blocks of 64 threads: each thread stores `block * 1000 + tid` in shared memory
/// and keeps `3 * tid` in a local; after a cluster barrier it adds the value of thread
/// `(tid + 1) % 64` of the block of rank `(rank + 1) % 4` (distributed shared memory) to its
/// local. Interpreter and host agree with that formula; a grid of part of a cluster is refused.
#[test]
fn cluster_blocks_share_memory() {
    let (threads, n) = (64u32, 4u32);
    let mut b = Builder::new("cluster_ring", threads);
    b.cluster(n);
    let out = b.buffer("out", U32, Access::Write);
    let vals = b.shared("vals", U32, threads);
    let keep = b.local("keep", U32, 1);
    let tid = b.special(Special::ThreadId);
    let blk = b.special(Special::BlockId);
    let k = b.u32(1000);
    let scaled = b.mul(blk, k);
    let v = b.add(scaled, tid);
    b.store(vals, tid, v);
    let three = b.u32(3);
    let t3 = b.mul(tid, three);
    let z = b.u32(0);
    b.write_local(keep, z, t3);
    b.cluster_barrier();
    let tid = b.special(Special::ThreadId);
    let blk = b.special(Special::BlockId);
    let nv = b.u32(n);
    let rank = b.rem(blk, nv);
    let one = b.u32(1);
    let next = b.add(rank, one);
    let next = b.rem(next, nv);
    let t1 = b.add(tid, one);
    let tv = b.u32(threads);
    let t1 = b.rem(t1, tv);
    let remote = b.load_remote(vals, next, t1);
    let z = b.u32(0);
    let kept = b.read_local(keep, z);
    let sum = b.add(remote, kept);
    let at = global_id(&mut b, threads);
    b.store(out, at, sum);
    b.cluster_barrier();
    let kernel = b.finish();
    let grid = 3 * n;
    let args = vec![Arg::Buffer(Buffer::U32(vec![7; (grid * threads) as usize]))];
    let got = agree(&kernel, args, grid);
    let want: Vec<u32> = (0..grid * threads)
        .map(|i| {
            let (block, tid) = (i / threads, i % threads);
            let first = block - block % n;
            let other = first + (block % n + 1) % n;
            other * 1000 + (tid + 1) % threads + 3 * tid
        })
        .collect();
    assert_eq!(buf(&got, 0), &Buffer::U32(want));
    // Part of a cluster: a typed error before anything runs.
    let compiled = kvq_codegen::host::compile(&kernel).unwrap();
    let mut data = vec![7u32; (grid * threads) as usize];
    let mut args = [kvq_codegen::host::HostArg::Buffer(
        kvq_codegen::host::BufferMut::U32(&mut data),
    )];
    // SAFETY: the buffer holds every element the grid addresses.
    let err = unsafe { compiled.launch(&mut args, grid - 1) }.unwrap_err();
    assert!(
        matches!(err, kvq_codegen::CodegenError::ClusterGrid { .. }),
        "{err}"
    );
    assert!(data.iter().all(|&x| x == 7));
}

/// Two warp matrix multiply-accumulates, `D = C + A B + A B`, each thread's fragments loaded
/// from its own run of the inputs (`a`: 8 f16, `b`: 4 f16, `c`: 4 f32) and its `D` fragment
/// stored to `out` (4 f32).
pub fn mma_kernel() -> Kernel {
    let mut b = Builder::new("warp_mma", 64);
    let a_in = b.buffer("a", F16, Access::Read);
    let b_in = b.buffer("b", F16, Access::Read);
    let c_in = b.buffer("c", F32, Access::Read);
    let out = b.buffer("out", F32, Access::Write);
    let fa = b.local("fa", F16, MMA_A_LEN);
    let fb = b.local("fb", F16, MMA_B_LEN);
    let acc = b.local("acc", F32, MMA_ACC_LEN);
    let g = global_id(&mut b, 64);
    for (buffer, local, len) in [(a_in, fa, MMA_A_LEN), (b_in, fb, MMA_B_LEN), (c_in, acc, 4)] {
        for i in 0..len {
            let n = b.u32(len);
            let first = b.mul(g, n);
            let iv = b.u32(i);
            let at = b.add(first, iv);
            let x = b.load(buffer, at, 1);
            b.write_local(local, iv, x);
        }
    }
    for _ in 0..2 {
        b.warp(WarpOp::Mma { a: fa, b: fb, acc });
    }
    let g = global_id(&mut b, 64);
    for i in 0..MMA_ACC_LEN {
        let iv = b.u32(i);
        let x = b.read_local(acc, iv);
        let four = b.u32(MMA_ACC_LEN);
        let first = b.mul(g, four);
        let at = b.add(first, iv);
        b.store(out, at, x);
    }
    b.finish()
}

/// PTX's m16n8k16 fragment layouts, written out from the PTX ISA's tables (groupID `g` =
/// lane / 4, threadID_in_group `t` = lane % 4): `(row, column)` of element `i` of a lane's
/// fragment of A, B and C/D.
fn ptx_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = if i < 4 {
        t * 2 + (i & 1)
    } else {
        t * 2 + (i & 1) + 8
    };
    (row, col)
}

fn ptx_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if i < 2 {
        t * 2 + (i & 1)
    } else {
        t * 2 + (i & 1) + 8
    };
    (row, g)
}

fn ptx_c(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

#[test]
fn warp_mma_multiplies_ptx_fragments_on_every_backend() {
    let warps = 4;
    let noise = lcg(29, warps * (16 * 16 + 16 * 8 + 16 * 8));
    let mut noise = noise.into_iter();
    // Values k / 64 with |k| < 512: exact in f16, products and sums of 16 exact in f32 but for
    // a few roundings of large partial sums.
    let mut draw = || (noise.next().map_or(0, |x| x % 1023) as f32 - 511.0) / 64.0;
    let mut mats = Vec::new();
    let (mut fa, mut fb, mut fc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..warps {
        let a: Vec<Vec<f32>> = (0..16).map(|_| (0..16).map(|_| draw()).collect()).collect();
        let bm: Vec<Vec<f32>> = (0..16).map(|_| (0..8).map(|_| draw()).collect()).collect();
        let c: Vec<Vec<f32>> = (0..16)
            .map(|_| (0..8).map(|_| draw() * 100.0).collect())
            .collect();
        for lane in 0..32 {
            fa.extend(
                (0..8)
                    .map(|i| ptx_a(lane, i))
                    .map(|(r, k)| f16::from_f32(a[r][k])),
            );
            fb.extend(
                (0..4)
                    .map(|i| ptx_b(lane, i))
                    .map(|(k, n)| f16::from_f32(bm[k][n])),
            );
            fc.extend((0..4).map(|i| ptx_c(lane, i)).map(|(r, n)| c[r][n]));
        }
        mats.push((a, bm, c));
    }
    let n = warps * 32;
    let args = vec![
        Arg::Buffer(Buffer::F16(fa)),
        Arg::Buffer(Buffer::F16(fb)),
        Arg::Buffer(Buffer::F32(fc)),
        Arg::Buffer(Buffer::F32(vec![0.0; n * 4])),
    ];
    let got = agree(&mma_kernel(), args, 2);
    let Buffer::F32(out) = buf(&got, 3) else {
        panic!("types")
    };
    for (w, (a, bm, c)) in mats.iter().enumerate() {
        for lane in 0..32 {
            for i in 0..4 {
                let (r, col) = ptx_c(lane, i);
                // The IR's order: C, then A B in increasing k, twice.
                let mut d = c[r][col];
                for _ in 0..2 {
                    for k in 0..16 {
                        d += a[r][k] * bm[k][col];
                    }
                }
                // And the exact value, in f64.
                let dot: f64 = (0..16)
                    .map(|k| f64::from(a[r][k]) * f64::from(bm[k][col]))
                    .sum();
                let exact = f64::from(c[r][col]) + 2.0 * dot;
                let x = out[(w * 32 + lane) * 4 + i];
                assert_eq!(x.to_bits(), d.to_bits(), "warp {w} lane {lane} element {i}");
                assert!((f64::from(x) - exact).abs() <= 1e-6 * exact.abs().max(1.0));
            }
        }
    }
}
