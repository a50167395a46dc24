//! Dequantize kernel: one thread per (head, token) row writes `zero + scale * code` as f32.

use crate::ir::{Access, Builder, ScalarType, Value};
use crate::scheme::{Axis, Group, Scheme};

use super::emit::{for_each_row, param_type};
use super::{dequantize_abi as abi, kernel_name, Launch, Lowered, Schedule, ShapeClass};

pub fn lower(scheme: &Scheme, shape: ShapeClass, s: &Schedule) -> Lowered {
    let d = shape.head_dim;
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let row_bytes = d * scheme.bits.width() / 8;
    let bsz = s.block_size;
    let mut b = Builder::new(&kernel_name("dequantize", scheme, shape), bsz);
    let p = param_type(scheme.params);
    let codes = b.buffer("codes", ScalarType::U8, Access::Read);
    let zero_m = b.buffer("zero", p, Access::Read);
    let scale_m = b.buffer("scale", p, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    b.scalar_param("heads", ScalarType::U32);
    b.scalar_param("tokens", ScalarType::U32);

    for_each_row(&mut b, bsz, [abi::HEADS, abi::TOKENS], |b, item, tokens| {
        // Index of the first parameter of this row, and how a channel offsets it.
        let (param_base, channel_param): (Value, Box<dyn Fn(u32) -> u32>) =
            match (scheme.axis, scheme.group) {
                (Axis::Channel, group) => {
                    let h = b.div(item, tokens);
                    let t = b.rem(item, tokens);
                    let dv = b.u32(d);
                    let row = match group {
                        Group::All => h,
                        Group::Size(n) => {
                            let nv = b.u32(n.get() as u32);
                            let n1 = b.u32(n.get() as u32 - 1);
                            let padded = b.add(tokens, n1);
                            let groups = b.div(padded, nv);
                            let hg = b.mul(h, groups);
                            let g = b.div(t, nv);
                            b.add(hg, g)
                        }
                    };
                    (b.mul(row, dv), Box::new(|c| c))
                }
                (Axis::Token, group) => {
                    let n = match group {
                        Group::All => d,
                        Group::Size(n) => n.get() as u32,
                    };
                    let gv = b.u32(d / n);
                    (b.mul(item, gv), Box::new(move |c| c / n))
                }
            };
        let rbv = b.u32(row_bytes);
        let code_row = b.mul(item, rbv);
        let dv = b.u32(d);
        let out_row = b.mul(item, dv);
        let mut pending: Vec<Value> = Vec::new();
        for k in 0..row_bytes {
            let off = b.u32(k);
            let at = b.add(code_row, off);
            let byte = b.load(codes, at, 1);
            for l in 0..per_byte {
                let c = k * per_byte + l;
                let code = b.unpack_bits(byte, l as u8, scheme.bits, scheme.order);
                let pi = b.u32(channel_param(c));
                let pat = b.add(param_base, pi);
                let z = b.load(zero_m, pat, 1);
                let sc = b.load(scale_m, pat, 1);
                let (z, sc) = if p == ScalarType::F32 {
                    (z, sc)
                } else {
                    (
                        b.convert(ScalarType::F32, z),
                        b.convert(ScalarType::F32, sc),
                    )
                };
                let cf = b.convert(ScalarType::F32, code);
                let prod = b.mul(sc, cf);
                let x_hat = b.add(z, prod);
                pending.push(x_hat);
                if pending.len() == s.vector as usize {
                    let off = b.u32(c + 1 - s.vector as u32);
                    let at = b.add(out_row, off);
                    let v = if s.vector == 1 {
                        pending[0]
                    } else {
                        b.vector(std::mem::take(&mut pending))
                    };
                    pending.clear();
                    b.store(out, at, v);
                }
            }
        }
    });
    Lowered {
        kernel: b.finish(),
        launch: Launch::ThreadPerRow,
    }
}
