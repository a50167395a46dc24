//! Shared test helpers: run a kernel through the interpreter and the host backend and compare
//! every buffer bit for bit.

use kvq_codegen::host::{self, BufferMut, BufferRef, HostArg};
use kvq_ir::ir::interp::{self, Arg, Buffer};
use kvq_ir::ir::{verify, Access, Builder, Kernel, KernelInfo, Param, Special, Value};

/// Verifies `kernel`, panicking with the verifier's report.
pub fn info(kernel: &Kernel) -> KernelInfo {
    match verify(kernel) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    }
}

/// The global thread index `block_id * block_size + thread_id`.
pub fn global_id(b: &mut Builder, block_size: u32) -> Value {
    let tid = b.special(Special::ThreadId);
    let bid = b.special(Special::BlockId);
    let bs = b.u32(block_size);
    let first = b.mul(bid, bs);
    b.add(first, tid)
}

/// A deterministic sequence of pseudo-random u32s (a 64-bit LCG).
pub fn lcg(seed: u64, n: usize) -> Vec<u32> {
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

/// The bits of every element, for exact comparison (NaN == NaN when the bits agree).
pub fn bits(buffer: &Buffer) -> Vec<u64> {
    match buffer {
        Buffer::U8(v) => v.iter().map(|&x| u64::from(x)).collect(),
        Buffer::U16(v) => v.iter().map(|&x| u64::from(x)).collect(),
        Buffer::U32(v) => v.iter().map(|&x| u64::from(x)).collect(),
        Buffer::F16(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        Buffer::BF16(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        Buffer::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        Buffer::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
    }
}

/// The host launch argument for `arg` (read-only slices for `Read` buffers).
pub fn host_arg<'a>(param: &Param, arg: &'a mut Arg) -> HostArg<'a> {
    let read_only = matches!(
        param,
        Param::Buffer {
            access: Access::Read,
            ..
        }
    );
    let b = match arg {
        Arg::U32(v) => return HostArg::U32(*v),
        Arg::F32(v) => return HostArg::F32(*v),
        Arg::Buffer(b) => b,
    };
    if read_only {
        let b: &'a Buffer = b;
        return HostArg::ReadOnly(match b {
            Buffer::U8(v) => BufferRef::U8(v),
            Buffer::U16(v) => BufferRef::U16(v),
            Buffer::U32(v) => BufferRef::U32(v),
            Buffer::F16(v) => BufferRef::F16(v),
            Buffer::BF16(v) => BufferRef::BF16(v),
            Buffer::F32(v) => BufferRef::F32(v),
            Buffer::F64(v) => BufferRef::F64(v),
        });
    }
    HostArg::Buffer(match b {
        Buffer::U8(v) => BufferMut::U8(v),
        Buffer::U16(v) => BufferMut::U16(v),
        Buffer::U32(v) => BufferMut::U32(v),
        Buffer::F16(v) => BufferMut::F16(v),
        Buffer::BF16(v) => BufferMut::BF16(v),
        Buffer::F32(v) => BufferMut::F32(v),
        Buffer::F64(v) => BufferMut::F64(v),
    })
}

/// Runs `kernel` on the host backend and returns the arguments afterwards.
pub fn run_host(kernel: &Kernel, mut args: Vec<Arg>, grid: u32) -> Vec<Arg> {
    let compiled = host::compile(kernel).unwrap_or_else(|e| panic!("{e}"));
    let mut host_args: Vec<HostArg<'_>> = kernel
        .params
        .iter()
        .zip(args.iter_mut())
        .map(|(p, a)| host_arg(p, a))
        .collect();
    // SAFETY: every buffer is as long as the kernel indexes for this grid.
    unsafe { compiled.launch(&mut host_args, grid) }.unwrap_or_else(|e| panic!("{e}"));
    drop(host_args);
    args
}

/// Runs `kernel` through the interpreter and the host backend on copies of `args` and asserts
/// that every buffer ends bit-identical. Returns the final arguments.
pub fn agree(kernel: &Kernel, args: Vec<Arg>, grid: u32) -> Vec<Arg> {
    let mut expected = args.clone();
    interp::run(kernel, &mut expected, grid).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let got = run_host(kernel, args, grid);
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        if let (Some(e), Some(g)) = (e.buffer(), g.buffer()) {
            let (eb, gb) = (bits(e), bits(g));
            let diff: Vec<_> = eb
                .iter()
                .zip(&gb)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .take(8)
                .map(|(k, (a, b))| format!("[{k}] interp {a:#x} host {b:#x}"))
                .collect();
            assert!(
                diff.is_empty(),
                "kernel `{}` buffer {i} differs: {}",
                kernel.name,
                diff.join(", ")
            );
        }
    }
    got
}

/// Buffer `i` of `args`.
pub fn buf(args: &[Arg], i: usize) -> &Buffer {
    args[i].buffer().expect("a buffer argument")
}

/// Interesting f32 values: signed zeros, ties, subnormals, extremes, infinities.
pub fn special_f32() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        0.5,
        -0.5,
        1.5,
        2.5,
        -2.5,
        3.5,
        1.0,
        -1.0,
        0.1,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x3F80_8000), // 1 + 2^-8: a bf16 tie
        f32::from_bits(0x3F81_8000), // 1 + 3 * 2^-8: a bf16 tie, rounds up
        1.0 + 1.0 / 2048.0,          // an f16 tie
        1.0 + 3.0 / 2048.0,          // an f16 tie, rounds up
        65504.0,
        65520.0, // rounds to f16 infinity
        -7.25,
        1e30,
    ];
    v.extend(lcg(7, 38).into_iter().map(|u| {
        let x = f32::from_bits(u);
        if x.is_finite() {
            x
        } else {
            (u as f32) * 1e-3
        }
    }));
    v
}

/// Threads per block of [`elementwise`] kernels.
pub const EW_BLOCK: u32 = 32;

/// A kernel where thread `i < n` loads element `i` of each input buffer, computes the outputs
/// with `f`, and stores them at `i` of each output buffer. Parameters: the inputs, the outputs,
/// then `n`.
pub fn elementwise(
    name: &str,
    inputs: &[kvq_ir::ir::ScalarType],
    outputs: &[kvq_ir::ir::ScalarType],
    f: impl FnOnce(&mut Builder, &[Value]) -> Vec<Value>,
) -> Kernel {
    let mut b = Builder::new(name, EW_BLOCK);
    let ins: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(k, &t)| b.buffer(&format!("in{k}"), t, Access::Read))
        .collect();
    let outs: Vec<_> = outputs
        .iter()
        .enumerate()
        .map(|(k, &t)| b.buffer(&format!("out{k}"), t, Access::Write))
        .collect();
    let n = b.scalar_param("n", kvq_ir::ir::ScalarType::U32);
    let n = b.param(n);
    let i = global_id(&mut b, EW_BLOCK);
    let inside = b.cmp(kvq_ir::ir::CmpOp::Lt, i, n);
    b.if_then(inside, |b| {
        let xs: Vec<_> = ins.iter().map(|&m| b.load(m, i, 1)).collect();
        let ys = f(b, &xs);
        assert_eq!(ys.len(), outs.len(), "one value per output");
        for (&m, y) in outs.iter().zip(ys) {
            b.store(m, i, y);
        }
    });
    b.finish()
}

/// Runs an [`elementwise`] kernel over `inputs` with both backends, checks they agree, and
/// returns the output buffers.
pub fn run_elementwise(
    kernel: &Kernel,
    inputs: Vec<Buffer>,
    outputs: &[kvq_ir::ir::ScalarType],
) -> Vec<Buffer> {
    let n = inputs.first().map_or(0, |b| bits(b).len());
    let mut args: Vec<Arg> = inputs.into_iter().map(Arg::Buffer).collect();
    let first_out = args.len();
    for &t in outputs {
        args.push(Arg::Buffer(Buffer::zeros(t, n).expect("a buffer type")));
    }
    args.push(Arg::U32(n as u32));
    let grid = (n as u32).div_ceil(EW_BLOCK);
    let got = agree(kernel, args, grid);
    got[first_out..first_out + outputs.len()]
        .iter()
        .map(|a| a.buffer().expect("a buffer").clone())
        .collect()
}
