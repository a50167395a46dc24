//! Host quantize kernel for axis = token, group = all, min/max rules: one thread per run of
//! [`ROWS_PER_THREAD`] rows, so that their parameters come from one loop, which a CPU's loop
//! vectorizer runs in 16 lanes. One row per thread left each row's parameters as a chain of
//! scalar operations (the extremes' reduction, two f16 roundings, a division, the parameters'
//! stores) that the row's codes waited for (4-bit: 4.2-4.3 -> 3.0-3.1 ms for 8 x 16,384 rows of
//! 128 f16 channels on the Intel Xeon). Rows of several groups keep one row per thread
//! (`quantize_token`): runs of 16 groups measured slower there.
//!
//! A thread: each row's extremes (the row loaded whole, as trees; the rows written out, each
//! under its own test, since LLVM vectorizes a loop over them across rows, by gathers), then
//! every row's parameters in one loop (stored, kept in locals, their overflows ORed into one
//! flag), then each row's code bytes.

use crate::ir::{BinaryOp, Builder, CmpOp};
use crate::scheme::Scheme;

use super::emit::{
    flag_non_finite_extremes, flag_noted, global_item, load_f32, quantize_params, Coding,
    STATUS_OVERFLOW,
};
use super::quantize_token::{code_byte, extreme, GroupLocals, RowCodes};
use super::{kernel_name, quantize_abi as abi, Launch, Lowered, Schedule, ShapeClass};

/// Rows a thread codes: 16 lanes of f32 parameters.
pub const ROWS_PER_THREAD: u32 = 16;

pub fn lower(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Lowered {
    let d = shape.head_dim;
    let rows = ROWS_PER_THREAD;
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let row_bytes = d * scheme.bits.width() / 8;
    let input = shape.input.scalar();
    let mut b = Builder::new(&kernel_name("quantize", scheme, shape), 1);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    // Per row of the thread (a group each): minima then maxima, zero, scale.
    let rl = GroupLocals::new(&mut b, rows);

    let item = global_item(&mut b, 1);
    let heads = b.param(abi::HEADS);
    let tokens = b.param(abi::TOKENS);
    let total = b.mul(heads, tokens);
    let rv = b.u32(rows);
    let first = b.mul(item, rv);
    let in_range = b.cmp(CmpOp::Lt, first, total);
    b.if_then(in_range, |b| {
        let left = b.sub(total, first);
        let count = b.min(rv, left);
        let zero = b.u32(0);
        for r in 0..rows {
            let rv = b.u32(r);
            let live = b.cmp(CmpOp::Lt, rv, count);
            b.if_then(live, |b| {
                let row_i = b.add(first, rv);
                let dv = b.u32(d);
                let row = b.mul(row_i, dv);
                let mut members = Vec::new();
                for j in 0..d / s.vector as u32 {
                    let off = b.u32(j * s.vector as u32);
                    let idx = b.add(row, off);
                    members.extend(load_f32(b, x, idx, s.vector, input));
                }
                // Extremes over order keys keep a NaN, so they show non-finite input.
                let mn = extreme(b, &members, BinaryOp::Min);
                let mx = extreme(b, &members, BinaryOp::Max);
                let (at, above) = (b.u32(r), b.u32(rows + r));
                b.write_local(rl.extremes, at, mn);
                b.write_local(rl.extremes, above, mx);
                flag_non_finite_extremes(b, &[(mn, mx)], status);
            });
        }
        rl.params(b, scheme, [zero_m, scale_m], first, count);
        b.for_range(zero, count, 1, |b, r| {
            let row_i = b.add(first, r);
            let dv = b.u32(d);
            let rbv = b.u32(row_bytes);
            let rc = RowCodes {
                scheme,
                input,
                x,
                codes,
                row: b.mul(row_i, dv),
                code_row: b.mul(row_i, rbv),
            };
            let z = b.read_local(rl.zero, r);
            let sc = b.read_local(rl.scale, r);
            let coding = Coding::new(b, z, sc);
            let bytes = b.u32(d / per_byte);
            b.for_range(zero, bytes, 1, |b, k| {
                let pb = b.u32(per_byte);
                let ch = b.mul(k, pb);
                code_byte(b, &rc, ch, &|_, _| coding.clone());
            });
        });
        flag_noted(b, status, rl.overflow, STATUS_OVERFLOW);
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerRows { rows },
    }
}
