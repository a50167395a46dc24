//! The `combine` kernel: one thread per (sequence, query head) merges the partials of the
//! sequence's chunks ([`lower`]); or one block per (sequence, query head) ([`lower_blocks`],
//! with the block-per-item layout).

use crate::ir::{
    Access, BinaryOp, Builder, CmpOp, Kernel, Memory, ReduceOp, ScalarType, Special, UnaryOp,
    Value, WarpOp, WARP_SIZE,
};
use crate::lower::emit::global_item;

use super::keys::times;
use super::{combine_abi as abi, seq_field as f, AttentionSchedule, AttentionShape};

pub(super) fn lower(name: &str, shape: AttentionShape, s: &AttentionSchedule) -> Kernel {
    let (d, g) = (shape.head_dim, shape.group);
    let mut b = Builder::new(name, s.block_size);
    let [seqs, part_ml, part_acc, out] = declare(&mut b);
    let (kv_heads, batch) = (abi::KV_HEADS, abi::BATCH);
    let acc = b.local("acc", ScalarType::F32, d);
    let scalars = b.local("ml", ScalarType::F32, 2);
    let item = global_item(&mut b, s.block_size);
    let kv_heads = b.param(kv_heads);
    let batch = b.param(batch);
    let q_heads = times(&mut b, kv_heads, g);
    let items = b.mul(batch, q_heads);
    let live = b.cmp(CmpOp::Lt, item, items);
    b.if_then(live, |b| {
        let (first, end) = chunk_range(b, seqs, item, q_heads);
        let slot = |b: &mut Builder, w| chunk_slot(b, w, item, [kv_heads, q_heads], g);
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

/// Declares the `combine` parameters in ABI order ([`super::combine_abi`]): the buffers `[seqs,
/// part_ml, part_acc, out]`, then the scalars `kv_heads` and `batch`.
fn declare(b: &mut Builder) -> [Memory; 4] {
    let bufs = [
        b.buffer("seqs", ScalarType::U32, Access::Read),
        b.buffer("part_ml", ScalarType::F32, Access::Read),
        b.buffer("part_acc", ScalarType::F32, Access::Read),
        b.buffer("out", ScalarType::F32, Access::Write),
    ];
    let kv_heads = b.scalar_param("kv_heads", ScalarType::U32);
    let batch = b.scalar_param("batch", ScalarType::U32);
    debug_assert_eq!(bufs[3], Memory::Param(abi::OUT));
    debug_assert_eq!((kv_heads, batch), (abi::KV_HEADS, abi::BATCH));
    bufs
}

/// The chunks `first..end` of the sequence of (sequence, query head) `item`.
fn chunk_range(b: &mut Builder, seqs: Memory, item: Value, q_heads: Value) -> (Value, Value) {
    let seq = b.div(item, q_heads);
    let row = times(b, seq, f::COUNT);
    let at = b.u32(f::CHUNK_BASE);
    let at = b.add(row, at);
    let first = b.load(seqs, at, 1);
    let at = b.u32(f::CHUNKS);
    let at = b.add(row, at);
    let n = b.load(seqs, at, 1);
    let end = b.add(first, n);
    (first, end)
}

/// The partials' slot of chunk `w` for (sequence, query head) `item`: `(w * kv_heads + h) * g +
/// gi`, with `h` the kv head and `gi` the query head within its group.
fn chunk_slot(
    b: &mut Builder,
    w: Value,
    item: Value,
    [kv_heads, q_heads]: [Value; 2],
    g: u32,
) -> Value {
    let hq = b.rem(item, q_heads);
    let gv = b.u32(g);
    let h = b.div(hq, gv);
    let gi = b.rem(hq, gv);
    let wh = b.mul(w, kv_heads);
    let wh = b.add(wh, h);
    let s = times(b, wh, g);
    b.add(s, gi)
}

/// Threads of the block-per-head `combine`.
pub const COMBINE_BLOCK: u32 = 1024;

/// The `combine` kernel of the block-per-item layout: one block of [`COMBINE_BLOCK`] threads
/// per (sequence, query head). Every thread takes the maximum `m` of its chunks (`t, t + 1024,
/// ..`), a block reduction gives `M`; then warp `w` merges chunks `w, w + 32, ..`, lane `l`
/// owning channels `l * d/32 ..` (each chunk's accumulator row read by one coalesced request),
/// and the warps' sums are added through shared memory: `o = sum_i e^(m_i - M) acc_i / sum_i
/// e^(m_i - M) l_i`.
pub(super) fn lower_blocks(name: &str, shape: AttentionShape) -> Kernel {
    let (d, g) = (shape.head_dim, shape.group);
    let cpl = d / WARP_SIZE;
    let warps = COMBINE_BLOCK / WARP_SIZE;
    let mut b = Builder::new(name, COMBINE_BLOCK);
    let [seqs, part_ml, part_acc, out] = declare(&mut b);
    let (kv_heads, batch) = (abi::KV_HEADS, abi::BATCH);
    let warp_top = b.shared("warp_top", ScalarType::F32, warps);
    let warp_l = b.shared("warp_l", ScalarType::F32, warps);
    let warp_acc = b.shared("warp_acc", ScalarType::F32, warps * d);
    let red = b.local("red", ScalarType::F32, 1);
    let acc = b.local("acc", ScalarType::F32, cpl + 1);
    let kv_heads = b.param(kv_heads);
    let batch = b.param(batch);
    let q_heads = times(&mut b, kv_heads, g);
    let items = b.mul(batch, q_heads);
    let blk = b.special(Special::BlockId);
    let live = b.cmp(CmpOp::Lt, blk, items);
    let one = b.u32(1);
    let last = b.sub(items, one);
    let item = b.min(blk, last);
    let range = |b: &mut Builder| chunk_range(b, seqs, item, q_heads);
    let slot = |b: &mut Builder, w: Value| chunk_slot(b, w, item, [kv_heads, q_heads], g);
    let z = b.u32(0);
    let ninf = b.f32(f32::NEG_INFINITY);
    b.write_local(red, z, ninf);
    let (first, end) = range(&mut b);
    let tid = b.special(Special::ThreadId);
    let start = b.add(first, tid);
    b.for_range(start, end, COMBINE_BLOCK, |b, w| {
        let sl = slot(b, w);
        let i = times(b, sl, 2);
        let m = b.load(part_ml, i, 1);
        let z = b.u32(0);
        let top = b.read_local(red, z);
        let top = b.max(top, m);
        b.write_local(red, z, top);
    });
    b.warp(WarpOp::Reduce {
        op: ReduceOp::Max,
        local: red,
    });
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let z = b.u32(0);
    let lane0 = b.cmp(CmpOp::Eq, lane, z);
    b.if_then(lane0, |b| {
        let z = b.u32(0);
        let top = b.read_local(red, z);
        b.store(warp_top, warp, top);
    });
    b.barrier();
    let ws: Vec<Value> = (0..warps)
        .map(|w| {
            let wv = b.u32(w);
            b.load(warp_top, wv, 1)
        })
        .collect();
    let mut top = ws[0];
    for &m in &ws[1..] {
        top = b.max(top, m);
    }
    let fz = b.f32(0.0);
    for k in 0..=cpl {
        let kv = b.u32(k);
        b.write_local(acc, kv, fz);
    }
    let (first, end) = range(&mut b);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let start = b.add(first, warp);
    b.for_range(start, end, warps, |b, w| {
        let sl = slot(b, w);
        let i = times(b, sl, 2);
        // (m, l) by one aligned vector load.
        let ml = b.load_aligned(part_ml, i, 2);
        let (m, l) = (b.extract(ml, 0), b.extract(ml, 1));
        let x = b.sub(m, top);
        let wgt = b.unary(UnaryOp::Exp, x);
        let lk = b.u32(cpl);
        let cur = b.read_local(acc, lk);
        let wl = b.mul(wgt, l);
        let cur = b.add(cur, wl);
        b.write_local(acc, lk, cur);
        let row = times(b, sl, d);
        let at = super::keys::affine(b, lane, cpl, row);
        let v = b.load_aligned(part_acc, at, cpl as u8);
        for k in 0..cpl {
            let a = if cpl == 1 { v } else { b.extract(v, k as u8) };
            let a = b.mul(wgt, a);
            let kv = b.u32(k);
            let cur = b.read_local(acc, kv);
            let cur = b.add(cur, a);
            b.write_local(acc, kv, cur);
        }
    });
    let row = times(&mut b, warp, d);
    let at = super::keys::affine(&mut b, lane, cpl, row);
    for k in 0..cpl {
        let kv = b.u32(k);
        let a = b.read_local(acc, kv);
        let to = b.add(at, kv);
        b.store(warp_acc, to, a);
    }
    let z = b.u32(0);
    let lane0 = b.cmp(CmpOp::Eq, lane, z);
    b.if_then(lane0, |b| {
        let lk = b.u32(cpl);
        let l = b.read_local(acc, lk);
        b.store(warp_l, warp, l);
    });
    b.barrier();
    let tid = b.special(Special::ThreadId);
    let dn = b.u32(d);
    let channel = b.cmp(CmpOp::Lt, tid, dn);
    let go = b.binary(BinaryOp::And, channel, live);
    b.if_then(go, |b| {
        let (mut a, mut l) = (b.f32(0.0), b.f32(0.0));
        for w in 0..warps {
            let wv = b.u32(w);
            let x = b.load(warp_l, wv, 1);
            l = b.add(l, x);
            let at = super::keys::affine(b, wv, d, tid);
            let x = b.load(warp_acc, at, 1);
            a = b.add(a, x);
        }
        let o = b.div(a, l);
        let base = times(b, item, d);
        let at = b.add(base, tid);
        b.store(out, at, o);
    });
    b.finish()
}
