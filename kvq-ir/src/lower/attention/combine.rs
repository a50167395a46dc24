//! The `combine` kernel: one thread per (sequence, query head) merges the partials of the
//! sequence's chunks.

use crate::ir::{Access, Builder, CmpOp, Kernel, ScalarType, UnaryOp};
use crate::lower::emit::global_item;

use super::keys::times;
use super::{combine_abi as abi, seq_field as f, AttentionSchedule, AttentionShape};

pub(super) fn lower(name: &str, shape: AttentionShape, s: &AttentionSchedule) -> Kernel {
    let (d, g) = (shape.head_dim, shape.group);
    let mut b = Builder::new(name, s.block_size);
    let seqs = b.buffer("seqs", ScalarType::U32, Access::Read);
    let part_ml = b.buffer("part_ml", ScalarType::F32, Access::Read);
    let part_acc = b.buffer("part_acc", ScalarType::F32, Access::Read);
    let out = b.buffer("out", ScalarType::F32, Access::Write);
    let kv_heads = b.scalar_param("kv_heads", ScalarType::U32);
    let batch = b.scalar_param("batch", ScalarType::U32);
    debug_assert_eq!((kv_heads, batch), (abi::KV_HEADS, abi::BATCH));
    let acc = b.local("acc", ScalarType::F32, d);
    let scalars = b.local("ml", ScalarType::F32, 2);
    let item = global_item(&mut b, s.block_size);
    let kv_heads = b.param(kv_heads);
    let batch = b.param(batch);
    let q_heads = times(&mut b, kv_heads, g);
    let items = b.mul(batch, q_heads);
    let live = b.cmp(CmpOp::Lt, item, items);
    b.if_then(live, |b| {
        let seq = b.div(item, q_heads);
        let hq = b.rem(item, q_heads);
        let gv = b.u32(g);
        let h = b.div(hq, gv);
        let gi = b.rem(hq, gv);
        let row = times(b, seq, f::COUNT);
        let at = b.u32(f::CHUNK_BASE);
        let at = b.add(row, at);
        let first = b.load(seqs, at, 1);
        let at = b.u32(f::CHUNKS);
        let at = b.add(row, at);
        let n = b.load(seqs, at, 1);
        let end = b.add(first, n);
        // slot(w) = (w * kv_heads + h) * g + gi
        let slot = |b: &mut Builder, w| {
            let wh = b.mul(w, kv_heads);
            let wh = b.add(wh, h);
            let s = times(b, wh, g);
            b.add(s, gi)
        };
        let z = b.u32(0);
        let one = b.u32(1);
        let ninf = b.f32(f32::NEG_INFINITY);
        b.write_local(scalars, z, ninf);
        b.for_range(first, end, 1, |b, w| {
            let sl = slot(b, w);
            let i = times(b, sl, 2);
            let m = b.load(part_ml, i, 1);
            let z = b.u32(0);
            let top = b.read_local(scalars, z);
            let top = b.max(top, m);
            b.write_local(scalars, z, top);
        });
        let top = b.read_local(scalars, z);
        let fz = b.f32(0.0);
        b.write_local(scalars, one, fz);
        let dn = b.u32(d);
        b.for_range(z, dn, 1, |b, c| b.write_local(acc, c, fz));
        b.for_range(first, end, 1, |b, w| {
            let sl = slot(b, w);
            let i = times(b, sl, 2);
            let m = b.load(part_ml, i, 1);
            let one = b.u32(1);
            let j = b.add(i, one);
            let l = b.load(part_ml, j, 1);
            let x = b.sub(m, top);
            let wgt = b.unary(UnaryOp::Exp, x);
            let wl = b.mul(wgt, l);
            let tot = b.read_local(scalars, one);
            let tot = b.add(tot, wl);
            b.write_local(scalars, one, tot);
            let base = times(b, sl, d);
            let z = b.u32(0);
            let dn = b.u32(d);
            b.for_range(z, dn, 1, |b, c| {
                let at = b.add(base, c);
                let a = b.load(part_acc, at, 1);
                let a = b.mul(wgt, a);
                let cur = b.read_local(acc, c);
                let cur = b.add(cur, a);
                b.write_local(acc, c, cur);
            });
        });
        let total = b.read_local(scalars, one);
        let base = times(b, item, d);
        b.for_range(z, dn, 1, |b, c| {
            let a = b.read_local(acc, c);
            let o = b.div(a, total);
            let at = b.add(base, c);
            b.store(out, at, o);
        });
    });
    b.finish()
}
