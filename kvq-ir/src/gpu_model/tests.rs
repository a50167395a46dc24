//! The model against answers computed by hand from the CUDA rules and the kernels' index
//! arithmetic (never against the model's own output).

use super::*;
use crate::ir::interp::{run_traced, Arg, Buffer, Trace};
use crate::ir::{Access, Builder, Kernel, ScalarType, Special};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
}

/// `out[i] = in[i * stride]`, `i = block * bs + thread`: 7 non-constant instructions per thread
/// (block id, mul, thread id, add, mul, load, store).
fn copy(bs: u32, stride: u32) -> Kernel {
    let mut b = Builder::new("copy", bs);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let block = b.special(Special::BlockId);
    let n = b.u32(bs);
    let base = b.mul(block, n);
    let t = b.special(Special::ThreadId);
    let i = b.add(base, t);
    let s = b.u32(stride);
    let j = b.mul(i, s);
    let x = b.load(input, j, 1);
    b.store(out, i, x);
    b.finish()
}

fn trace(kernel: &Kernel, in_len: usize, out_len: usize, grid: u32) -> (Trace, Vec<Arg>) {
    let input: Vec<f32> = (0..in_len).map(|i| i as f32).collect();
    let mut args = vec![
        Arg::Buffer(Buffer::F32(input)),
        Arg::Buffer(Buffer::F32(vec![0.0; out_len])),
    ];
    let t = run_traced(kernel, &mut args, grid, &sample_blocks(grid)).expect("runs");
    (t, args)
}

#[test]
fn coalesced_copy_is_fully_efficient_and_bandwidth_bound_on_a100() {
    let (bs, grid) = (128, 16384);
    let n = (bs * grid) as usize;
    let (t, args) = trace(&copy(bs, 1), n, n, grid);
    assert_eq!(
        t.blocks.iter().map(|b| b.block).collect::<Vec<_>>(),
        [0, 8192, 16383]
    );
    // Only the sampled blocks ran, and they copied their elements.
    let out = args[1].buffer().and_then(Buffer::as_f32).expect("f32");
    assert_eq!(out[8192 * 128 + 5], (8192 * 128 + 5) as f32);
    assert_eq!(out[128], 0.0);
    let s = analyze(&t);
    // 3 blocks x 4 warps, one 128-byte aligned request each: 4 sectors, 128 useful bytes.
    assert_eq!((s.blocks, s.warps), (3, 12));
    assert_eq!(
        (s.loads.requests, s.loads.sectors, s.loads.useful_bytes),
        (12, 48, 1536)
    );
    assert_eq!(s.loads.efficiency(), Some(1.0));
    assert_eq!(s.stores.efficiency(), Some(1.0));
    assert_eq!((s.loads.dram_sectors, s.stores.dram_sectors), (48, 48));
    assert_eq!(s.warp_insts, 12 * 7);
    // sm_80, 128 threads, no register count, no shared: warps 64 / 4 = 16 blocks; blocks 32;
    // shared (0 + 1024) -> 164 KiB / 1 KiB = 164 blocks. 16 blocks x 4 warps = 64: 100%.
    let block = BlockResources {
        threads: bs,
        regs_per_thread: None,
        shared_bytes: 0,
    };
    let occ = occupancy(&SM80, block).expect("fits");
    assert_eq!((occ.blocks_per_sm, occ.warps_per_sm), (16, 64));
    assert_eq!((s.loads.dram_requests, s.max_warp_dram_requests), (12, 1));
    let p = predict(&A100, grid, &occ, &s, &[n as u64 * 4, n as u64 * 4]);
    // DRAM: 2^21 elements x (4 read + 4 written) = 2^24 bytes over 2.039 TB/s.
    assert!(close(p.dram_bytes, 16_777_216.0));
    assert!(close(p.dram_s, 16_777_216.0 / 2.039e12));
    // Latency: 16384 x 4 requests over min(16384, 108 x 16) x 4 = 6912 warps, x 700 ns.
    assert!(close(p.latency_s, 65536.0 / 6912.0 * 700e-9));
    // Issue: 16384 x 4 warps x 7 over 108 SMs x 4 schedulers x 1.41 GHz.
    assert!(close(p.issue_s, 458_752.0 / (108.0 * 4.0 * 1.41e9)));
    assert_eq!(p.bound, Bound::Dram);
    // The L2 moves the same 2^24 bytes, faster: the DRAM term, latency and issue added, + launch.
    assert!(p.l2_s < p.dram_s);
    assert!(close(
        p.total_s,
        16_777_216.0 / 2.039e12 + p.latency_s + p.issue_s + 6e-6
    ));
}

/// A kernel named `name` whose thread `i = block * bs + thread` loads the 16 bytes (`f32x4`,
/// aligned) of buffer `in` at element `4i`: the builder, `out`, `i`, `4i` and the vector.
fn reader16(name: &str, bs: u32) -> (Builder, crate::ir::Memory, [crate::ir::Value; 3]) {
    let mut b = Builder::new(name, bs);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let block = b.special(Special::BlockId);
    let n = b.u32(bs);
    let base = b.mul(block, n);
    let t = b.special(Special::ThreadId);
    let i = b.add(base, t);
    let four = b.u32(4);
    let j = b.mul(i, four);
    let x = b.load_aligned(input, j, 4);
    (b, out, [i, j, x])
}

/// On H100 a copy whose lanes move 16 bytes each (aligned `f32x4`) keeps 512 bytes per warp
/// request in flight: bandwidth bound. (A scalar f32 copy keeps 128: 8448 resident warps x 128 B
/// over 700 ns is 1.5 TB/s, under the 3.35 TB/s of DRAM, so the model calls it latency bound.)
#[test]
fn vector_copy_is_fully_efficient_and_bandwidth_bound_on_h100() {
    let (bs, grid) = (128u32, 16384u32);
    let (mut b, out, [_, j, x]) = reader16("copy4", bs);
    b.store_aligned(out, j, x);
    let n = (bs * grid * 4) as usize;
    let (t, _) = trace(&b.finish(), n, n, grid);
    let s = analyze(&t);
    // 12 sampled warps, one 512-byte request each: 16 sectors.
    assert_eq!((s.loads.requests, s.loads.sectors), (12, 12 * 16));
    assert_eq!(s.loads.efficiency(), Some(1.0));
    assert_eq!(s.stores.efficiency(), Some(1.0));
    let block = BlockResources {
        threads: bs,
        regs_per_thread: Some(16),
        shared_bytes: 0,
    };
    // sm_90, 128 threads, 16 registers: 16 blocks of 4 warps, 100%.
    let occ = occupancy(&SM90, block).expect("fits");
    assert_eq!((occ.blocks_per_sm, occ.warps_per_sm), (16, 64));
    let bytes = n as u64 * 4;
    let p = predict(&H100, grid, &occ, &s, &[bytes, bytes]);
    // DRAM: 2^23 elements x 8 bytes over 3.35 TB/s = 20.0 us; latency: 65536 requests over
    // 132 x 64 = 8448 warps, x 700 ns = 5.4 us.
    assert!(close(p.dram_s, 2.0 * bytes as f64 / 3.35e12));
    assert!(close(p.latency_s, 65536.0 / 8448.0 * 700e-9));
    assert_eq!(p.bound, Bound::Dram);
}

/// The bound of the quantize bars: a kernel that only streams the bars' input (8 x 16,384 x 128
/// f16, 33.5 MB, 16 bytes a lane, at full occupancy) and writes a sixteenth of it (1-bit codes)
/// is predicted at under 80% of the copy bound on H100, because waiting on its 65,536 load
/// requests (5.4 us over 8,448 resident warps) is added to the transfer.
#[test]
fn a_streaming_kernel_at_the_quantize_bar_shape_is_under_80_percent_of_the_copy_bound() {
    let (bs, grid) = (128u32, 16384u32);
    let (mut b, out, [i, _, x]) = reader16("stream", bs);
    let x = b.extract(x, 0);
    let three = b.u32(3);
    let lane4 = b.binary(crate::ir::BinaryOp::And, i, three);
    let zero = b.u32(0);
    let first = b.cmp(crate::ir::CmpOp::Eq, lane4, zero);
    b.if_then(first, |b| {
        let two = b.u32(2);
        let o = b.binary(crate::ir::BinaryOp::Shr, i, two);
        b.store(out, o, x);
    });
    let n_in = (bs * grid * 4) as usize;
    let (tr, _) = trace(&b.finish(), n_in, n_in / 16, grid);
    let s = analyze(&tr);
    let block = BlockResources {
        threads: bs,
        regs_per_thread: Some(16),
        shared_bytes: 0,
    };
    let occ = occupancy(&SM90, block).expect("fits");
    assert_eq!(occ.warps_per_sm, 64);
    let (in_bytes, out_bytes) = (n_in as u64 * 4, n_in as u64 / 4);
    assert_eq!((in_bytes, out_bytes), (33_554_432, 2_097_152));
    let p = predict(&H100, grid, &occ, &s, &[in_bytes, out_bytes]);
    assert!(close(p.latency_s, 65536.0 / 8448.0 * 700e-9));
    let bound = bandwidth_bound_s(&H100, in_bytes + out_bytes);
    let share = bound / p.total_s;
    assert!(share > 0.7 && share < 0.8, "{share}");
}

#[test]
fn stride_of_one_sector_per_lane_is_one_eighth_efficient() {
    // Lane i reads f32 element 8i: 32 bytes apart, each 4-byte element in its own sector.
    let (bs, grid) = (64, 4);
    let (t, _) = trace(
        &copy(bs, 8),
        (bs * grid * 8) as usize,
        (bs * grid) as usize,
        grid,
    );
    let s = analyze(&t);
    // Blocks 0, 2, 3 x 2 warps: 6 requests of 32 sectors, 128 useful bytes.
    assert_eq!(
        (s.loads.requests, s.loads.sectors, s.loads.useful_bytes),
        (6, 192, 768)
    );
    assert_eq!(s.loads.efficiency(), Some(0.125));
    assert_eq!(s.stores.efficiency(), Some(1.0));
}

#[test]
fn one_block_kernel_is_latency_bound() {
    // One warp; for i in (0..2048).step_by(32): out[i + t] = in[i + t]: 64 dependent requests.
    let mut b = Builder::new("one_block", 32);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let t = b.special(Special::ThreadId);
    let (start, end) = (b.u32(0), b.u32(2048));
    b.for_range(start, end, 32, |b, i| {
        let j = b.add(i, t);
        let x = b.load(input, j, 1);
        b.store(out, j, x);
    });
    let (tr, _) = trace(&b.finish(), 2048, 2048, 1);
    let s = analyze(&tr);
    assert_eq!((s.blocks, s.warps, s.loads.requests), (1, 1, 64));
    // Top: thread id + loop = 2; body: add, load, store + 2 loop = 5, 64 times.
    assert_eq!(s.warp_insts, 2 + 64 * 5);
    let block = BlockResources {
        threads: 32,
        regs_per_thread: Some(16),
        shared_bytes: 0,
    };
    let occ = occupancy(&SM90, block).expect("fits");
    assert_eq!((s.loads.dram_requests, s.max_warp_dram_requests), (64, 64));
    let p = predict(&H100, 1, &occ, &s, &[]);
    assert!(close(p.resident_warps, 1.0));
    assert!(close(p.latency_s, 64.0 * 700e-9));
    assert!(close(p.dram_s, 64.0 * 256.0 / 3.35e12));
    // One warp issues at most one instruction per clock.
    assert!(close(p.issue_s, 322.0 / 1.98e9));
    assert_eq!(p.bound, Bound::Latency);
}

#[test]
fn data_shared_by_blocks_and_reloads_are_not_dram_traffic_twice() {
    // out[block * 32 + t] = in[t] + in[t]: every block reads the same 128 bytes, twice.
    let mut b = Builder::new("shared_input", 32);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let block = b.special(Special::BlockId);
    let n = b.u32(32);
    let base = b.mul(block, n);
    let t = b.special(Special::ThreadId);
    let i = b.add(base, t);
    let x = b.load(input, t, 1);
    let y = b.load(input, t, 1);
    let sum = b.add(x, y);
    b.store(out, i, sum);
    let (tr, _) = trace(&b.finish(), 32, 4 * 32, 4);
    let s = analyze(&tr);
    // Blocks 0, 2, 3: 2 requests each, the second a hit.
    assert_eq!((s.loads.requests, s.loads.dram_requests), (6, 3));
    let occ = occupancy(
        &SM90,
        BlockResources {
            threads: 32,
            regs_per_thread: None,
            shared_bytes: 0,
        },
    )
    .expect("fits");
    let p = predict(&H100, 4, &occ, &s, &[128, 512]);
    // Loads: 4 blocks x 4 sectors x 32 B = 512, capped at the 128-byte input; stores 512.
    assert!(close(p.dram_bytes, 128.0 + 512.0));
    // 4 misses over 4 resident warps, or 1 per warp: one latency.
    assert!(close(p.latency_s, 700e-9));
}

#[test]
fn shared_bank_conflicts_and_broadcasts() {
    let mut b = Builder::new("banks", 32);
    let sh = b.shared("sh", ScalarType::F32, 32 * 32);
    let t = b.special(Special::ThreadId);
    let n = b.u32(32);
    let column = b.mul(t, n);
    let one = b.f32(1.0);
    b.store(sh, column, one); // 32 words, all in bank 0: 32 wavefronts
    let zero = b.u32(0);
    let _ = b.load(sh, zero, 1); // one word for all: broadcast, 1 wavefront
    let _ = b.load(sh, t, 1); // 32 banks: 1 wavefront
    let kernel = b.finish();
    let t = run_traced(&kernel, &mut [], 1, &[0]).expect("runs");
    let s = analyze(&t).shared;
    assert_eq!((s.requests, s.wavefronts, s.ideal_wavefronts), (3, 34, 3));
}

#[test]
fn occupancy_by_hand() {
    let r = |threads, regs, shared_bytes| BlockResources {
        threads,
        regs_per_thread: Some(regs),
        shared_bytes,
    };
    // sm_90, 128 threads, 64 regs: 64 x 32 = 2048 regs per warp (a multiple of 256);
    // 65536 / 2048 = 32 warps -> 32 / 4 = 8 blocks (warps allow 16, blocks 32). 32 / 64 = 50%.
    let o = occupancy(&SM90, r(128, 64, 0)).expect("fits");
    assert_eq!(
        (o.blocks_per_sm, o.warps_per_sm, o.limiter),
        (8, 32, Limiter::Registers)
    );
    assert_eq!(o.fraction, 0.5);
    // sm_90, 256 threads, 40 regs: 1280 per warp; 65536 / 1280 = 51 -> 48 (granularity 4);
    // 48 / 8 = 6 blocks = 48 warps = 75%.
    let o = occupancy(&SM90, r(256, 40, 0)).expect("fits");
    assert_eq!((o.blocks_per_sm, o.warps_per_sm), (6, 48));
    assert_eq!(o.fraction, 0.75);
    // sm_80, 256 threads, 32 regs, 48 KiB shared: 49152 + 1024 = 50176 bytes per block;
    // 167936 / 50176 = 3 blocks = 24 warps = 37.5% (registers would allow 8).
    let o = occupancy(&SM80, r(256, 32, 48 * 1024)).expect("fits");
    assert_eq!((o.blocks_per_sm, o.limiter), (3, Limiter::Shared));
    assert_eq!(o.fraction, 0.375);
    // sm_90, 1024 threads, 33 regs: 1056 -> 1280 per warp; 48 warps -> 1 block of 32 = 50%.
    let o = occupancy(&SM90, r(1024, 33, 0)).expect("fits");
    assert_eq!((o.blocks_per_sm, o.warps_per_sm), (1, 32));
    // sm_80, 32 threads, 16 regs: warps allow 64 blocks, blocks 32: 32 warps = 50%.
    let o = occupancy(&SM80, r(32, 16, 0)).expect("fits");
    assert_eq!((o.blocks_per_sm, o.limiter), (32, Limiter::Blocks));
    // Refused: too many registers, no threads, too much shared memory, 255 regs x 1024.
    assert!(occupancy(&SM90, r(128, 256, 0)).is_err());
    assert!(occupancy(&SM90, r(0, 32, 0)).is_err());
    assert!(occupancy(&SM80, r(128, 32, 200 * 1024)).is_err());
    assert!(occupancy(&SM90, r(1024, 255, 0)).is_err());
}

#[test]
fn sdpa_bytes_and_samples() {
    // K and V of 1 x 8 heads x 16384 tokens x 128 channels in bf16: 2 x 2^24 x 2 bytes.
    assert_eq!(sdpa_bf16_bytes(1, 8, 16384, 128), Some(67_108_864));
    assert_eq!(sdpa_bf16_bytes(u64::MAX, 2, 1, 1), None);
    assert_eq!(sample_blocks(1), [0]);
    assert_eq!(sample_blocks(2), [0, 1]);
    assert_eq!(sample_blocks(128), [0, 64, 127]);
    assert!(sample_blocks(0).is_empty());
    for g in GPUS {
        assert!(g.table().iter().all(|(_, _, source)| !source.is_empty()));
    }
}

#[test]
fn trace_names_each_thread_across_a_barrier() {
    // sh[t] = in[t]; barrier; out[t] = sh[31 - t].
    let mut b = Builder::new("reverse", 32);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let sh = b.shared("sh", ScalarType::F32, 32);
    let t = b.special(Special::ThreadId);
    let x = b.load(input, t, 1);
    b.store(sh, t, x);
    b.barrier();
    let t = b.special(Special::ThreadId);
    let last = b.u32(31);
    let r = b.sub(last, t);
    let y = b.load(sh, r, 1);
    b.store(out, t, y);
    let (tr, args) = trace(&b.finish(), 32, 32, 1);
    let out = args[1].buffer().and_then(Buffer::as_f32).expect("f32");
    assert_eq!(out[5], 26.0);
    let thread = &tr.blocks[0].threads[5];
    let got: Vec<(u32, bool)> = thread
        .accesses
        .values()
        .flatten()
        .map(|a| (a.index, a.store))
        .collect();
    // In instruction order: load in[5], store sh[5], load sh[26], store out[5].
    assert_eq!(got, [(5, false), (5, true), (26, false), (5, true)]);
    // One body (the top level, both regions), run once by every thread: thread id, load, store,
    // thread id, sub, load, store (constants and the barrier are not counted).
    assert_eq!(thread.body_runs, [1]);
    assert_eq!(tr.body_insts, [7]);
}

#[test]
fn traced_lowered_kernels_store_what_run_stores() {
    use crate::lower::{self, InputType, Schedule, ShapeClass};
    use crate::reference::quantize::{param_shape, row_bytes};
    use crate::scheme::catalogue::CATALOGUE;
    use crate::Shape3;
    let class = ShapeClass {
        head_dim: 32,
        input: InputType::F32,
    };
    let span = Shape3 {
        heads: 2,
        tokens: 40,
        dim: 32,
    };
    let mut checked = 0;
    for (name, text) in CATALOGUE {
        let scheme = crate::Scheme::parse(text).expect("catalogue schemes parse");
        let schedule = Schedule::gpu_default(&scheme, class);
        let Ok(l) = lower::quantize(&scheme, class, &schedule) else {
            continue;
        };
        let n_params: usize = param_shape(&scheme, span).iter().product();
        let x: Vec<f32> = (0..span.len())
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let args = vec![
            Arg::Buffer(Buffer::F32(x)),
            Arg::Buffer(Buffer::U8(vec![
                0;
                span.heads
                    * span.tokens
                    * row_bytes(&scheme, 32)
            ])),
            Arg::Buffer(Buffer::zeros(scheme_param(&scheme), n_params).expect("buffer")),
            Arg::Buffer(Buffer::zeros(scheme_param(&scheme), n_params).expect("buffer")),
            Arg::Buffer(Buffer::U32(vec![0])),
            Arg::U32(2),
            Arg::U32(40),
        ];
        let grid = l.launch.grid(2, 40, l.kernel.block_size) as u32;
        let (mut plain, mut traced) = (args.clone(), args);
        crate::ir::interp::run(&l.kernel, &mut plain, grid).expect("runs");
        let all: Vec<u32> = (0..grid).collect();
        let t = run_traced(&l.kernel, &mut traced, grid, &all).expect("runs traced");
        assert_eq!(plain, traced, "{name}");
        assert_eq!(t.blocks.len(), grid as usize, "{name}");
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} catalogue schemes lowered");
}

fn scheme_param(s: &crate::Scheme) -> ScalarType {
    match s.params {
        crate::ParamType::F16 => ScalarType::F16,
        crate::ParamType::F32 => ScalarType::F32,
    }
}

#[test]
fn trace_names_each_thread_in_a_loop_with_a_barrier() {
    // for k in 0..2 (block-uniform): sh[t] = in[64k + t]; barrier; out[64k + t] = sh[63 - t];
    // barrier.
    let mut b = Builder::new("reverse_twice", 64);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let sh = b.shared("sh", ScalarType::F32, 64);
    let (start, end) = (b.u32(0), b.u32(128));
    b.for_range(start, end, 64, |b, k| {
        let t = b.special(Special::ThreadId);
        let i = b.add(k, t);
        let x = b.load(input, i, 1);
        b.store(sh, t, x);
        b.barrier();
        let t = b.special(Special::ThreadId);
        let i = b.add(k, t);
        let last = b.u32(63);
        let r = b.sub(last, t);
        let y = b.load(sh, r, 1);
        b.store(out, i, y);
        b.barrier();
    });
    let kernel = b.finish();
    crate::ir::verify(&kernel).expect("a valid kernel");
    let (tr, args) = trace(&kernel, 128, 128, 1);
    let out = args[1].buffer().and_then(Buffer::as_f32).expect("f32");
    assert_eq!((out[5], out[69]), (58.0, 122.0));
    let thread = &tr.blocks[0].threads[5];
    let got: Vec<(u32, bool)> = thread
        .accesses
        .values()
        .flatten()
        .map(|a| (a.index, a.store))
        .collect();
    // By instruction: load in[5], in[69]; store sh[5] twice; load sh[58] twice; store out[5],
    // out[69].
    let want = [
        (5, false),
        (69, false),
        (5, true),
        (5, true),
        (58, false),
        (58, false),
        (5, true),
        (69, true),
    ];
    assert_eq!(got, want);
    assert_eq!(thread.body_runs, [1, 2]);
}

/// `passes` times over a block's `rows` x 32 f32 elements (one 128-byte row per warp request),
/// then one store per thread: the L2 term counts the re-reads only when the block's footprint
/// exceeds its share of L1.
fn reread(rows: u32, passes: u32) -> Kernel {
    let mut b = Builder::new("reread", 32);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let acc = b.local("acc", ScalarType::F32, 1);
    let zero = b.u32(0);
    let z = b.f32(0.0);
    b.write_local(acc, zero, z);
    let (first, last) = (b.u32(0), b.u32(passes));
    b.for_range(first, last, 1, |b, _| {
        let (first, last) = (b.u32(0), b.u32(rows));
        b.for_range(first, last, 1, |b, r| {
            let block = b.special(Special::BlockId);
            let per_block = b.u32(rows * 32);
            let base = b.mul(block, per_block);
            let w = b.u32(32);
            let row = b.mul(r, w);
            let start = b.add(base, row);
            let t = b.special(Special::ThreadId);
            let i = b.add(start, t);
            let x = b.load(input, i, 1);
            let zero = b.u32(0);
            let a = b.read_local(acc, zero);
            let a = b.add(a, x);
            b.write_local(acc, zero, a);
        });
    });
    let block = b.special(Special::BlockId);
    let n = b.u32(32);
    let base = b.mul(block, n);
    let t = b.special(Special::ThreadId);
    let i = b.add(base, t);
    let zero = b.u32(0);
    let a = b.read_local(acc, zero);
    b.store(out, i, a);
    b.finish()
}

#[test]
fn rereads_cost_l2_bandwidth_only_past_the_l1_share() {
    let one_warp = BlockResources {
        threads: 32,
        regs_per_thread: Some(32),
        shared_bytes: 0,
    };
    let occ = occupancy(&SM90, one_warp).expect("fits");
    // 32 blocks per SM (the block limit) share 256 KB of L1: 8 KB each, minus the 1 KB of
    // reserved shared memory each holds: 7 KB.
    assert_eq!((occ.blocks_per_sm, occ.shared_per_block), (32, 1024));
    let grid = 4u32;
    for (rows, passes, fits) in [(32u32, 3u32, true), (256, 3, false)] {
        let (t, _) = trace(
            &reread(rows, passes),
            (grid * rows * 32) as usize,
            128,
            grid,
        );
        let s = analyze(&t);
        // Each of the 3 sampled blocks: `rows` 128-byte rows (4 sectors each), `passes` times.
        let distinct = 3 * u64::from(rows) * 4;
        let block = &s.block_load_sectors;
        assert_eq!(block.len(), 3);
        assert_eq!(
            block[0].get(&0),
            Some(&[rows as u64 * 4, rows as u64 * 4 * 3])
        );
        let p = predict(&H100, grid, &occ, &s, &[]);
        // 32 rows x 128 B = 4 KB fits in 7 KB: read once; 256 rows (32 KB) do not.
        let loads = match fits {
            true => distinct,
            false => distinct * u64::from(passes),
        };
        let scale = 4.0 / 3.0;
        let stores = 3.0 * 4.0;
        assert!(close(p.l2_bytes, (loads as f64 + stores) * 32.0 * scale));
        assert!(close(p.l2_s, p.l2_bytes / 5.5e12));
    }
}

#[test]
fn unaligned_vector_loads_are_one_request_per_element() {
    // Every thread loads 4 consecutive f32 at 4 * thread, aligned or not.
    for aligned in [true, false] {
        let mut b = Builder::new("vec", 32);
        let input = b.buffer("in", ScalarType::F32, Access::Read);
        let out = b.buffer("out", ScalarType::F32, Access::Write);
        let t = b.special(Special::ThreadId);
        let four = b.u32(4);
        let i = b.mul(t, four);
        let v = match aligned {
            true => b.load_aligned(input, i, 4),
            false => b.load(input, i, 4),
        };
        let x = b.extract(v, 0);
        b.store(out, t, x);
        let (tr, _) = trace(&b.finish(), 128, 32, 1);
        let s = analyze(&tr);
        // 512 contiguous bytes: one request of 16 sectors, or 4 requests (lane l's element k
        // at 16 l + 4 k bytes) of 16 sectors each.
        let want = match aligned {
            true => (1, 16),
            false => (4, 64),
        };
        assert_eq!(
            (s.loads.requests, s.loads.sectors),
            want,
            "aligned {aligned}"
        );
    }
}

#[test]
fn warp_reductions_count_their_shuffle_steps() {
    // One Reduce of a 3-element local: 3 x 5 steps x (shuffle + add) = 30 instructions, and
    // one ShuffleXor of it: 3; plus block id, mul, thread id, add... counted as in `copy`.
    let mut b = Builder::new("reduce", 32);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let v = b.local("v", ScalarType::F32, 3);
    let w = b.local("w", ScalarType::F32, 3);
    let one = b.f32(1.0);
    for k in 0..3 {
        let idx = b.u32(k);
        b.write_local(v, idx, one);
    }
    b.warp(crate::ir::WarpOp::Reduce {
        op: crate::ir::ReduceOp::Sum,
        local: v,
    });
    b.warp(crate::ir::WarpOp::ShuffleXor {
        src: v,
        dst: w,
        mask: 1,
    });
    let t = b.special(Special::ThreadId);
    let zero = b.u32(0);
    let x = b.read_local(w, zero);
    b.store(out, t, x);
    let kernel = b.finish();
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 32]))];
    let tr = run_traced(&kernel, &mut args, 1, &[0]).expect("runs");
    let s = analyze(&tr);
    // 3 writes + 30 + 3 + thread id, read, store = 39 per warp; the sum is 32 in every lane.
    assert_eq!(s.warp_insts, 39);
    assert_eq!(args[0], Arg::Buffer(Buffer::F32(vec![32.0; 32])));
}

/// `out[t] = sum over j < 8 of in[8t + j]` for 32 threads: a loop body with one load.
fn sum8() -> Kernel {
    let mut b = Builder::new("sum8", 32);
    let input = b.buffer("in", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let acc = b.local("acc", ScalarType::F32, 1);
    let t = b.special(Special::ThreadId);
    let (z, n) = (b.u32(0), b.u32(8));
    b.for_range(z, n, 1, |b, j| {
        let t = b.special(Special::ThreadId);
        let eight = b.u32(8);
        let base = b.mul(t, eight);
        let i = b.add(base, j);
        let x = b.load(input, i, 1);
        let zero = b.u32(0);
        let a = b.read_local(acc, zero);
        let a = b.add(a, x);
        b.write_local(acc, zero, a);
    });
    let zero = b.u32(0);
    let a = b.read_local(acc, zero);
    b.store(out, t, a);
    b.finish()
}

/// The line (instruction index + 1) of the first instruction of `kernel` for which `pick` holds.
fn line_of(kernel: &Kernel, pick: impl Fn(&crate::ir::Op) -> bool) -> u32 {
    let (h, _) = kernel
        .insts
        .iter()
        .find(|(_, i)| pick(&i.op))
        .expect("instruction");
    h.index() as u32 + 1
}

/// Machine instructions per body from line counts made up by hand: the loop's load, add and
/// loop control go to the loop body, everything else (and line 0) to the top level; a loop body
/// whose load became 4 machine loads was copied 4 times (unrolled), so one run weighs a quarter.
#[test]
fn machine_instructions_go_to_their_bodies_and_unrolled_copies_are_divided_out() {
    use crate::ir::Op;
    let kernel = sum8();
    let (t, _) = trace(&kernel, 256, 32, 1);
    let load = line_of(&kernel, |op| matches!(op, Op::Load { .. }));
    let add = line_of(&kernel, |op| {
        matches!(op, Op::Binary(crate::ir::BinaryOp::Add, ..))
    });
    let looped = line_of(&kernel, |op| matches!(op, Op::Loop { .. }));
    let store = line_of(&kernel, |op| matches!(op, Op::Store { .. }));
    let thread = line_of(&kernel, |op| matches!(op, Op::Special(Special::ThreadId)));
    let all: std::collections::BTreeMap<u32, u32> = [
        (0, 5),
        (thread, 1),
        (load, 4),
        (add, 8),
        (looped, 8),
        (store, 1),
    ]
    .into();
    let memory: std::collections::BTreeMap<u32, u32> = [(load, 4), (store, 1)].into();
    let lines = LineCounts {
        all: &all,
        memory: &memory,
    };
    let w = body_machine_insts(&kernel, &t, lines);
    // Bodies: the top level (0) and the loop body (1).
    assert_eq!(w.len(), 2);
    assert_eq!(w, [5 + 1 + 1, (4 + 8 + 8) / 4]);
    // 1 warp: the top level once, the loop body 8 times.
    assert_eq!(warp_insts(&t, &w, &Default::default()), 7 + 8 * 5);
    // Without the copies the loop body weighs all its lines.
    let memory: std::collections::BTreeMap<u32, u32> = [(load, 1), (store, 1)].into();
    let lines = LineCounts {
        all: &all,
        memory: &memory,
    };
    assert_eq!(body_machine_insts(&kernel, &t, lines), [7, 20]);
}

/// An MMA in a block-uniform loop of 3 iterations, in a kernel of one warp and 264 blocks (two
/// per SM of an H100): each MMA counts 8 cycles of the tensor cores, the block's warp alone on
/// its SM's one scheduler.
#[test]
fn tensor_core_cycles_are_a_term_of_their_own() {
    use crate::ir::{WarpOp, MMA_ACC_LEN, MMA_A_LEN, MMA_B_LEN};
    let mut b = Builder::new("mma", 32);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let a = b.local("a", ScalarType::F16, MMA_A_LEN);
    let bl = b.local("b", ScalarType::F16, MMA_B_LEN);
    let acc = b.local("acc", ScalarType::F32, MMA_ACC_LEN);
    let (z, n) = (b.u32(0), b.u32(3));
    b.for_range(z, n, 1, |b, _| {
        b.warp(WarpOp::Mma { a, b: bl, acc });
    });
    let t = b.special(Special::ThreadId);
    let zero = b.u32(0);
    let x = b.read_local(acc, zero);
    b.store(out, t, x);
    let kernel = b.finish();
    let grid = 264;
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 32]))];
    let tr = run_traced(&kernel, &mut args, grid, &sample_blocks(grid)).expect("runs");
    let s = analyze(&tr);
    assert_eq!((s.warps, s.warp_mmas), (3, 9));
    let block = BlockResources {
        threads: 32,
        regs_per_thread: Some(32),
        shared_bytes: 0,
    };
    let occ = occupancy(&SM90, block).expect("fits");
    let p = predict(&H100, grid, &occ, &s, &[32 * 4]);
    // 264 blocks x 3 MMAs x 8 cycles over 132 SMs x 2 warps (a scheduler each) x 1.98 GHz.
    assert!(close(
        p.tensor_s,
        264.0 * 3.0 * 8.0 / (132.0 * 2.0 * 1.98e9)
    ));
    assert!(close(
        p.total_s,
        p.launch_s + p.dram_s.max(p.l2_s) + p.latency_s + p.issue_s + p.tensor_s
    ));
}

/// A stratified sample takes the first, middle and last block of each class and counts each as
/// its share of the grid (class size x 6 / blocks sampled from it).
#[test]
fn stratified_samples_weigh_each_class_by_its_share_of_the_grid() {
    let (blocks, copies) = stratified_sample(10, |b| u32::from(b >= 7));
    assert_eq!(blocks, [0, 3, 6, 7, 8, 9]);
    let want: std::collections::BTreeMap<u32, u64> =
        [(0, 14), (3, 14), (6, 14), (7, 6), (8, 6), (9, 6)].into();
    assert_eq!(copies, want);
    // A class of one or two blocks.
    let (blocks, copies) = stratified_sample(3, |b| u32::from(b == 2));
    assert_eq!(blocks, [0, 1, 2]);
    assert_eq!(copies.values().copied().collect::<Vec<_>>(), [6, 6, 6]);
}

/// Blocks that do alike, two of them sampled and counted 3 and 1 times, give the sums of all
/// four blocks traced: requests, sectors, warps and instructions; the prediction then scales by
/// grid / 4 = 1.
#[test]
fn a_weighted_sample_sums_like_the_blocks_it_stands_for() {
    let (bs, grid) = (64u32, 4u32);
    let n = (bs * grid) as usize;
    let kernel = copy(bs, 1);
    let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut args = vec![
        Arg::Buffer(Buffer::F32(input)),
        Arg::Buffer(Buffer::F32(vec![0.0; n])),
    ];
    let all = run_traced(&kernel, &mut args, grid, &[0, 1, 2, 3]).expect("runs");
    let two = run_traced(&kernel, &mut args, grid, &[0, 3]).expect("runs");
    let copies: std::collections::BTreeMap<u32, u64> = [(0, 3), (3, 1)].into();
    let (a, w) = (analyze(&all), analyze_weighted(&two, &copies));
    assert_eq!((w.blocks, w.weight(), a.weight()), (2, 4, 4));
    assert_eq!(w.loads, a.loads);
    assert_eq!(w.stores, a.stores);
    assert_eq!((w.warps, w.warp_insts), (a.warps, a.warp_insts));
    assert_eq!(w.dram_sectors_by_param, a.dram_sectors_by_param);
    let block = BlockResources {
        threads: bs,
        regs_per_thread: Some(16),
        shared_bytes: 0,
    };
    let occ = occupancy(&SM90, block).expect("fits");
    let bytes = [n as u64 * 4, n as u64 * 4];
    let (pa, pw) = (
        predict(&H100, grid, &occ, &a, &bytes),
        predict(&H100, grid, &occ, &w, &bytes),
    );
    assert_eq!(pw.scale, 1.0);
    assert!(close(pw.total_s, pa.total_s));
    assert!(close(pw.l2_bytes, pa.l2_bytes));
}
