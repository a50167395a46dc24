//! Cooperative GPU layouts ("lanes over channels"): each row of a span is split across the
//! consecutive lanes of one warp, `v` channels per lane, so that a warp reads and writes whole
//! contiguous rows with aligned vector accesses, and per-row statistics are warp shuffles
//! instead of one thread's loop over the row.
//!
//! | kernel | lanes | statistics |
//! | --- | --- | --- |
//! | quantize, axis = token, min/max rules | `head_dim / v` per row, `v` up to 16 (several rows a warp) | min and max of each group by xor shuffles over its `n / v` lanes; a lane's code bytes stored as whole words |
//! | dequantize, every scheme | `head_dim / v` per row | none: each lane loads its code bytes once and its parameters by aligned vector loads, decodes its `v` channels and stores them as aligned f32 vectors |
//!
//! Both launch one thread per (head, token, lane) ([`Launch::ThreadPerGroup`] with `group = 1`,
//! `columns = head_dim / v`); a row's lanes are consecutive threads of one warp because
//! `head_dim / v` divides 32. Threads past the span still take part in the shuffles, with
//! neutral values, and store nothing. Codes and parameters are those of the per-thread kernels:
//! the same operations in the same order per element, and group extremes by IEEE 754-2019
//! minimum and maximum (one instruction each on a GPU), which differ from the per-thread
//! kernels' `Min`/`Max` only for NaN (non-finite input is flagged, nothing stored) and in the
//! sign of a zero extreme, which `range_from_extremes` removes.

use crate::ir::{BinaryOp, Builder, CmpOp, Memory, ScalarType, Type, Value, WarpOp};
use crate::scheme::{Axis, Group, Rule, Scheme};

use super::emit::{
    flag_non_finite_extremes, global_item, group_params, load_f32_aligned, param_type,
    quantize_params, range_from_extremes, reads_group, store_param, Coding,
};
use super::{dequantize_abi, kernel_name, quantize_abi as abi, Launch, Lowered, ShapeClass};

/// The lane plan of a cooperative kernel: channels per lane and lanes per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanePlan {
    /// Channels per lane (a power of two, at most 16).
    pub v: u32,
    /// Lanes per row (`head_dim / v`, a power of two dividing 32).
    pub lanes: u32,
}

/// Channels per lane that quantize aims for: a row's extremes, parameters and index arithmetic
/// cost the same per lane however many channels it holds, so fewer, fuller lanes (several rows
/// per warp) spend fewer instructions per element.
const QUANTIZE_CHANNELS: u32 = 16;

/// Channels of one token-axis group (or of the whole row for group = all).
fn group_channels(scheme: &Scheme, head_dim: u32) -> u32 {
    match scheme.group {
        Group::All => head_dim,
        Group::Size(n) => n.get() as u32,
    }
}

/// The plan for `scheme` at `head_dim`, or why there is none. Quantize needs a token-axis scheme
/// with a min/max rule, groups of whole lanes and whole code bytes per lane; dequantize gives
/// each lane at least 4 channels (one 16-byte store) and may share a code byte between lanes.
pub fn plan(scheme: &Scheme, head_dim: u32, quantize: bool) -> Result<LanePlan, String> {
    let per_byte = scheme.bits.codes_per_byte() as u32;
    if quantize {
        if scheme.axis != Axis::Token {
            return Err("lanes over channels quantize axis = token only".into());
        }
        if reads_group(scheme.rule) {
            return Err(format!(
                "lanes over channels need a min/max rule, not {}",
                rule_name(scheme.rule)
            ));
        }
    }
    let n = group_channels(scheme, head_dim);
    let mut v = match quantize {
        true => (head_dim / 32).max(per_byte).max(QUANTIZE_CHANNELS.min(n)),
        false => (head_dim / 32).max(4),
    };
    v = v.next_power_of_two();
    let lanes = head_dim / v.max(1);
    let fits = v <= 16
        && head_dim % v == 0
        && lanes.is_power_of_two()
        && lanes <= 32
        && (!quantize || (n % v == 0 && (n / v).is_power_of_two()));
    match fits {
        true => Ok(LanePlan { v, lanes }),
        false => Err(format!(
            "head_dim {head_dim} does not split into whole warps of {v}-channel lanes"
        )),
    }
}

fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::Quantile(_) => "quantile",
        Rule::Mse => "mse",
        _ => "this rule",
    }
}

/// The flat item's (row, lane of the row) and whether it lies in the span.
fn coordinates(b: &mut Builder, block_size: u32, p: LanePlan) -> (Value, Value, Value) {
    let item = global_item(b, block_size);
    let heads = b.param(abi::HEADS);
    let tokens = b.param(abi::TOKENS);
    let rows = b.mul(heads, tokens);
    let lanes = b.u32(p.lanes);
    let total = b.mul(rows, lanes);
    let in_span = b.cmp(CmpOp::Lt, item, total);
    let row = b.div(item, lanes);
    let lane = b.rem(item, lanes);
    (row, lane, in_span)
}

/// Quantize, axis = token, min/max rules: see the module documentation.
pub fn quantize_token(scheme: &Scheme, shape: ShapeClass, block_size: u32, p: LanePlan) -> Lowered {
    let d = shape.head_dim;
    let n = group_channels(scheme, d);
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let mut b = Builder::new(&kernel_name("quantize_lanes", scheme, shape), block_size);
    let [x, codes, zero_m, scale_m, status] = quantize_params(&mut b, scheme, shape);
    let vals = b.local("vals", ScalarType::F32, p.v);
    let ext = b.local("ext", ScalarType::F32, 2);
    let other = b.local("other", ScalarType::F32, 2);

    // Region 1: each lane loads its channels (one aligned vector) and their extremes.
    let (row, lane, in_span) = coordinates(&mut b, block_size, p);
    let (z0, z1) = (b.u32(0), b.u32(1));
    let inf = b.f32(f32::INFINITY);
    let ninf = b.f32(f32::NEG_INFINITY);
    b.write_local(ext, z0, inf);
    b.write_local(ext, z1, ninf);
    b.if_then(in_span, |b| {
        let dv = b.u32(d);
        let vv = b.u32(p.v);
        let row_start = b.mul(row, dv);
        let c0 = b.mul(lane, vv);
        let at = b.add(row_start, c0);
        let values = load_f32_aligned(b, x, at, p.v as u8, shape.input.scalar());
        let (mut mn, mut mx) = (inf, ninf);
        for (i, &value) in values.iter().enumerate() {
            let iv = b.u32(i as u32);
            b.write_local(vals, iv, value);
            mn = b.minimum(mn, value);
            mx = b.maximum(mx, value);
        }
        let (z0, z1) = (b.u32(0), b.u32(1));
        b.write_local(ext, z0, mn);
        b.write_local(ext, z1, mx);
        flag_non_finite_extremes(b, &[(mn, mx)], status);
    });
    // The group's extremes: a butterfly over its lanes (distances below n / v), each step a
    // shuffle and a region that folds the partner's extremes in.
    let mut dist = 1;
    while dist < n / p.v {
        b.warp(WarpOp::ShuffleXor {
            src: ext,
            dst: other,
            mask: dist,
        });
        let (z0, z1) = (b.u32(0), b.u32(1));
        let (a, c) = (b.read_local(ext, z0), b.read_local(other, z0));
        let m = b.minimum(a, c);
        b.write_local(ext, z0, m);
        let (a, c) = (b.read_local(ext, z1), b.read_local(other, z1));
        let m = b.maximum(a, c);
        b.write_local(ext, z1, m);
        dist *= 2;
    }
    // Last region: parameters (the group's first lane stores them) and codes.
    let (row, lane, in_span) = coordinates(&mut b, block_size, p);
    b.if_then(in_span, |b| {
        let (z0, z1) = (b.u32(0), b.u32(1));
        let mn = b.read_local(ext, z0);
        let mx = b.read_local(ext, z1);
        let (lo, hi) = range_from_extremes(b, scheme.rule, mn, mx);
        let (zero, scale) = group_params(b, scheme, lo, hi, status);
        let coding = Coding::per_group(b, scheme, zero, scale);
        let lanes_per_group = b.u32(n / p.v);
        let in_group = b.rem(lane, lanes_per_group);
        let first = b.cmp(CmpOp::Eq, in_group, z0);
        b.if_then(first, |b| {
            let groups = b.u32(d / n);
            let param_row = b.mul(row, groups);
            let g = b.div(lane, lanes_per_group);
            let at = b.add(param_row, g);
            store_param(b, zero_m, at, zero, scheme.params);
            store_param(b, scale_m, at, scale, scheme.params);
        });
        let row_bytes = b.u32(d * scheme.bits.width() / 8);
        let code_row = b.mul(row, row_bytes);
        let bytes_per_lane = b.u32(p.v / per_byte);
        let lane_bytes = b.mul(lane, bytes_per_lane);
        let base = b.add(code_row, lane_bytes);
        let bytes: Vec<Value> = (0..p.v / per_byte)
            .map(|k| {
                let lane_codes: Vec<Value> = (0..per_byte)
                    .map(|l| {
                        let i = b.u32(k * per_byte + l);
                        let value = b.read_local(vals, i);
                        coding.code(b, scheme, value)
                    })
                    .collect();
                b.pack_bits(lane_codes, scheme.bits, scheme.order)
            })
            .collect();
        store_lane_bytes(b, codes, base, bytes);
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerGroup {
            columns: p.lanes,
            group: 1,
        },
    }
}

/// Stores a lane's code bytes at `base`: contiguous, and starting at a multiple of their count
/// (rows of code bytes and lanes are both multiples of it), so one aligned store, of whole
/// words where the count allows.
pub(super) fn store_lane_bytes(b: &mut Builder, codes: Memory, base: Value, bytes: Vec<Value>) {
    match bytes.len() {
        1 => b.store(codes, base, bytes[0]),
        4 | 8 | 16 => {
            let vector = bytes_as_words(b, &bytes);
            b.store_aligned(codes, base, vector);
        }
        _ => {
            let vector = b.vector(bytes);
            b.store_aligned(codes, base, vector);
        }
    }
}

/// `bytes` (4, 8 or 16 U8 values) as a U8 vector made of little-endian u32 words (byte `4k + j`
/// at bits `8j` of word `k`), bit cast: the same bytes, which a GPU then stores as whole words
/// (NVPTX would split a vector built of bytes into one store per word).
fn bytes_as_words(b: &mut Builder, bytes: &[Value]) -> Value {
    let words: Vec<Value> = bytes
        .chunks(4)
        .map(|four| {
            let mut word = b.convert(ScalarType::U32, four[0]);
            for (j, &byte) in four.iter().enumerate().skip(1) {
                let wide = b.convert(ScalarType::U32, byte);
                let shift = b.u32(8 * j as u32);
                let placed = b.binary(BinaryOp::Shl, wide, shift);
                word = b.binary(BinaryOp::Or, word, placed);
            }
            word
        })
        .collect();
    let packed = match words.as_slice() {
        [word] => *word,
        _ => b.vector(words),
    };
    b.bitcast_to(Type::Vector(ScalarType::U8, bytes.len() as u8), packed)
}

/// Dequantize, every scheme: each lane decodes `v` channels of its row and stores them as
/// aligned f32 vectors of 4 (16 bytes), so that a warp's store request covers contiguous bytes.
/// When lanes share a code byte (1-bit codes, 4 channels a lane) a lane extracts its codes by
/// shifts ([`lane_code`]).
pub fn dequantize(scheme: &Scheme, shape: ShapeClass, block_size: u32, p: LanePlan) -> Lowered {
    let d = shape.head_dim;
    let mut b = Builder::new(&kernel_name("dequantize_lanes", scheme, shape), block_size);
    let pt = param_type(scheme.params);
    let codes = b.buffer("codes", ScalarType::U8, crate::ir::Access::Read);
    let zero_m = b.buffer("zero", pt, crate::ir::Access::Read);
    let scale_m = b.buffer("scale", pt, crate::ir::Access::Read);
    let out = b.buffer("out", ScalarType::F32, crate::ir::Access::Write);
    b.scalar_param("heads", ScalarType::U32);
    b.scalar_param("tokens", ScalarType::U32);
    let item = global_item(&mut b, block_size);
    let heads = b.param(dequantize_abi::HEADS);
    let tokens = b.param(dequantize_abi::TOKENS);
    let rows = b.mul(heads, tokens);
    let lanes = b.u32(p.lanes);
    let total = b.mul(rows, lanes);
    let in_span = b.cmp(CmpOp::Lt, item, total);
    b.if_then(in_span, |b| {
        let row = b.div(item, lanes);
        let lane = b.rem(item, lanes);
        let vv = b.u32(p.v);
        let c0 = b.mul(lane, vv);
        // The parameter row and the channel offset of parameter `c` (channel c0 + c).
        let param_at = |b: &mut Builder, c: u32| -> Value {
            let cv = b.u32(c);
            let ch = b.add(c0, cv);
            let dv = b.u32(d);
            match (scheme.axis, scheme.group) {
                (Axis::Channel, Group::All) => {
                    let h = b.div(row, tokens);
                    let hd = b.mul(h, dv);
                    b.add(hd, ch)
                }
                (Axis::Channel, Group::Size(n)) => {
                    let h = b.div(row, tokens);
                    let t = b.rem(row, tokens);
                    let nv = b.u32(n.get() as u32);
                    let n1 = b.u32(n.get() as u32 - 1);
                    let padded = b.add(tokens, n1);
                    let groups = b.div(padded, nv);
                    let hg = b.mul(h, groups);
                    let g = b.div(t, nv);
                    let pr = b.add(hg, g);
                    let prd = b.mul(pr, dv);
                    b.add(prd, ch)
                }
                (Axis::Token, group) => {
                    let n = match group {
                        Group::All => d,
                        Group::Size(n) => n.get() as u32,
                    };
                    let gv = b.u32(d / n);
                    let pr = b.mul(row, gv);
                    let nv = b.u32(n);
                    let g = b.div(ch, nv);
                    b.add(pr, g)
                }
            }
        };
        let row_bytes = b.u32(d * scheme.bits.width() / 8);
        let code_row = b.mul(row, row_bytes);
        let dv = b.u32(d);
        let out_row = b.mul(row, dv);
        let out_base = b.add(out_row, c0);
        let bytes = lane_code_bytes(b, scheme, codes, code_row, lane, p.v);
        let params = lane_params(b, scheme, [d, p.v], [zero_m, scale_m], pt, &param_at);
        let width = p.v.min(4);
        let mut pending = Vec::new();
        for (c, (z, sc)) in (0..p.v).zip(params) {
            let q = lane_code(b, scheme, &bytes, c0, c);
            let qf = b.convert(ScalarType::F32, q);
            let prod = b.mul(sc, qf);
            pending.push(b.add(z, prod));
            if pending.len() == width as usize {
                let off = b.u32(c + 1 - width);
                let at = b.add(out_base, off);
                let value = match width {
                    1 => pending[0],
                    _ => b.vector(std::mem::take(&mut pending)),
                };
                b.store_aligned(out, at, value);
            }
        }
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerGroup {
            columns: p.lanes,
            group: 1,
        },
    }
}

/// The code bytes of a lane's `v` channels, each loaded once: one byte when they fit in it
/// (`v` at most the codes per byte: a lane starts at a multiple of `v`, so its codes never
/// straddle a byte), else the lane's `v / per_byte` whole bytes by one aligned vector load
/// (their index `code_row + lane * v / per_byte` is a multiple of that count, as `head_dim` is
/// of `v`).
fn lane_code_bytes(
    b: &mut Builder,
    scheme: &Scheme,
    codes: Memory,
    code_row: Value,
    lane: Value,
    v: u32,
) -> Vec<Value> {
    let per_byte = scheme.bits.codes_per_byte() as u32;
    if v <= per_byte {
        let vv = b.u32(v);
        let c0 = b.mul(lane, vv);
        let pb = b.u32(per_byte);
        let in_row = b.div(c0, pb);
        let at = b.add(code_row, in_row);
        return vec![b.load(codes, at, 1)];
    }
    let n = v / per_byte;
    let nv = b.u32(n);
    let in_row = b.mul(lane, nv);
    let at = b.add(code_row, in_row);
    let loaded = b.load_aligned(codes, at, n as u8);
    (0..n as u8).map(|k| b.extract(loaded, k)).collect()
}

/// Each of a lane's `v` channels' (zero, scale) as f32, each parameter loaded once: for
/// axis = channel the lane's `v` consecutive parameters of its parameter row by aligned vector
/// loads of up to 16 bytes (`param_at(0)` is a multiple of `v`: the row starts at a multiple of
/// `head_dim` and the lane at one of `v`); for axis = token with groups of a multiple of `v`
/// channels the one pair of the lane's group; else one pair per channel.
fn lane_params(
    b: &mut Builder,
    scheme: &Scheme,
    [head_dim, v]: [u32; 2],
    [zero_m, scale_m]: [Memory; 2],
    pt: ScalarType,
    param_at: &dyn Fn(&mut Builder, u32) -> Value,
) -> Vec<(Value, Value)> {
    let pair = |b: &mut Builder, at: Value| -> (Value, Value) {
        let (z, sc) = (b.load(zero_m, at, 1), b.load(scale_m, at, 1));
        match pt {
            ScalarType::F32 => (z, sc),
            _ => (
                b.convert(ScalarType::F32, z),
                b.convert(ScalarType::F32, sc),
            ),
        }
    };
    match scheme.axis {
        Axis::Channel => {
            let chunk = v.min(16 / pt.size() as u32);
            let mut out = Vec::new();
            for first in (0..v).step_by(chunk as usize) {
                let at = param_at(b, first);
                let zs = load_f32_aligned(b, zero_m, at, chunk as u8, pt);
                let ss = load_f32_aligned(b, scale_m, at, chunk as u8, pt);
                out.extend(zs.into_iter().zip(ss));
            }
            out
        }
        Axis::Token if group_channels(scheme, head_dim) % v == 0 => {
            let at = param_at(b, 0);
            vec![pair(b, at); v as usize]
        }
        Axis::Token => (0..v)
            .map(|c| {
                let at = param_at(b, c);
                pair(b, at)
            })
            .collect(),
    }
}

/// The code of channel `c0 + c` from the lane's code bytes ([`lane_code_bytes`]): when lanes
/// hold whole code bytes (`per_byte` divides 4, hence `c0`), [`crate::ir::Op::UnpackBits`] at a
/// constant position; else `(byte >> shift) & (2^b - 1)` with SPEC.md section 3's shift
/// (`msb`: `8 - (j + 1) b`, `lsb`: `j b`, `j` the channel's position in its byte).
fn lane_code(b: &mut Builder, scheme: &Scheme, bytes: &[Value], c0: Value, c: u32) -> Value {
    let bits = scheme.bits.width();
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let byte = match bytes.len() {
        1 => bytes[0],
        _ => bytes[(c / per_byte) as usize],
    };
    if 4 % per_byte == 0 {
        return b.unpack_bits(byte, (c % per_byte) as u8, scheme.bits, scheme.order);
    }
    let cv = b.u32(c);
    let ch = b.add(c0, cv);
    let pb = b.u32(per_byte);
    let j = b.rem(ch, pb);
    let bits_v = b.u32(bits);
    let jb = b.mul(j, bits_v);
    let shift = match scheme.order {
        crate::scheme::BitOrder::Lsb => jb,
        crate::scheme::BitOrder::Msb => {
            let top = b.u32(8 - bits);
            b.sub(top, jb)
        }
    };
    let wide = b.convert(ScalarType::U32, byte);
    let shifted = b.binary(crate::ir::BinaryOp::Shr, wide, shift);
    let mask = b.u32((1 << bits) - 1);
    let code = b.binary(crate::ir::BinaryOp::And, shifted, mask);
    b.convert(ScalarType::U8, code)
}
