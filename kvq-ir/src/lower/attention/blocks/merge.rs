//! The end of a block-per-item kernel: the warps' states merged and the item's outputs stored
//! (partial), or the span-logit extremes stored (stats).

use super::*;

/// Merges the warps' states through shared memory and stores the item's `(m, l)` and
/// accumulator (post-scaled by channel-axis value parameters for a span item), threads over
/// (head, channel).
#[allow(clippy::too_many_arguments)]
pub(super) fn merge_and_store(
    b: &mut Builder,
    value: &Scheme,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
    [part_ml, part_acc]: [Memory; 2],
) {
    let (d, g, cpl, warps) = (dims.d, dims.g, dims.cpl, dims.warps);
    let warp = b.special(Special::WarpId);
    let lane = b.special(Special::LaneId);
    let zero = b.u32(0);
    let lane0 = b.cmp(CmpOp::Eq, lane, zero);
    let wg = times(b, warp, g);
    b.if_then(lane0, |b| {
        for h in 0..g {
            let hv = b.u32(h);
            let slot = b.add(wg, hv);
            let mi = times(b, slot, 2);
            let m = b.read_local(lc.m, hv);
            b.store(sh.ml, mi, m);
            let one = b.u32(1);
            let li = b.add(mi, one);
            let l = b.read_local(lc.l, hv);
            b.store(sh.ml, li, l);
        }
    });
    match &lc.mma {
        Some(mma) => store_mma_sums(b, dims, sh, mma),
        None => {
            for h in 0..g {
                for k in 0..cpl {
                    let hv = b.u32(h);
                    let slot = b.add(wg, hv);
                    let kv = b.u32(k);
                    let c = affine(b, lane, cpl, kv);
                    let to = affine(b, slot, d, c);
                    let i = b.u32(h * cpl + k);
                    let a = b.read_local(lc.acc, i);
                    b.store(sh.acc, to, a);
                }
            }
        }
    }
    b.barrier();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let tid = b.special(Special::ThreadId);
    let n = b.u32(g * d);
    let block = warps * WARP_SIZE;
    b.for_range(tid, n, block, |b, e| {
        let dv = b.u32(d);
        let h = b.div(e, dv);
        let c = b.rem(e, dv);
        let ml_at = |b: &mut Builder, w: u32, k: u32| {
            let wg = b.u32(w * g);
            let slot = b.add(wg, h);
            let i = times(b, slot, 2);
            let kv = b.u32(k);
            let i = b.add(i, kv);
            b.load(sh.ml, i, 1)
        };
        let ms: Vec<Value> = (0..warps).map(|w| ml_at(b, w, 0)).collect();
        let mut top = ms[0];
        for &m in &ms[1..] {
            top = b.max(top, m);
        }
        let ninf = b.f32(f32::NEG_INFINITY);
        let (mut acc, mut l) = (b.f32(0.0), b.f32(0.0));
        for (w, &m) in ms.iter().enumerate() {
            let empty = b.cmp(CmpOp::Eq, m, ninf);
            let diff = b.sub(m, top);
            let fct = b.unary(UnaryOp::Exp, diff);
            let z = b.f32(0.0);
            let fct = b.select(empty, z, fct);
            let lw = ml_at(b, w as u32, 1);
            let x = b.mul(fct, lw);
            l = b.add(l, x);
            let wg = b.u32(w as u32 * g);
            let slot = b.add(wg, h);
            let ai = affine(b, slot, d, c);
            let aw = b.load(sh.acc, ai, 1);
            let x = b.mul(fct, aw);
            acc = b.add(acc, x);
        }
        // Post-scaling of channel-axis, group = all values, for span items only (an fp item's
        // parameter row may not exist): scale_c * sum p code + zero_c * sum p. Other values were
        // dequantized per token.
        let r0 = b.u32(0);
        b.write_local(lc.red, r0, acc);
        let post_scale = match (value.axis, value.group) {
            (Axis::Channel, Group::All) => is_span,
            _ => b.bool(false),
        };
        b.if_then(post_scale, |b| {
            let params = field(b, lc, f::V_PARAMS);
            let prow = affine(b, at.h, d, params);
            let pi = b.add(prow, c);
            let zero = param_f32(b, bufs.v[1], pi, value);
            let scale = param_f32(b, bufs.v[2], pi, value);
            let x = b.mul(scale, acc);
            let y = b.mul(zero, l);
            let x = b.add(x, y);
            let r0 = b.u32(0);
            b.write_local(lc.red, r0, x);
        });
        b.if_then(at.live, |b| {
            let ig = times(b, at.item, g);
            let slot = b.add(ig, h);
            let to = affine(b, slot, d, c);
            let r0 = b.u32(0);
            let x = b.read_local(lc.red, r0);
            b.store(part_acc, to, x);
            let z = b.u32(0);
            let first = b.cmp(CmpOp::Eq, c, z);
            b.if_then(first, |b| {
                let mi = times(b, slot, 2);
                b.store(part_ml, mi, top);
                let one = b.u32(1);
                let li = b.add(mi, one);
                b.store(part_ml, li, l);
            });
        });
    });
}

/// Stats: the warps' extremes (warp reductions, then threads `h < g` over the warps) stored as
/// the item's `(min, max)` per head; fp items store nothing.
pub(super) fn store_extremes(
    b: &mut Builder,
    dims: &Dims,
    at: &Item,
    bufs: &ItemParams,
    sh: &Shared,
    lc: &Locals,
) {
    let g = dims.g;
    warp_extremes(b, dims, sh, lc);
    b.barrier();
    let [is_span, _, _] = chunk_tokens(b, dims, at, lc);
    let tid = b.special(Special::ThreadId);
    let gn = b.u32(g);
    let head = b.cmp(CmpOp::Lt, tid, gn);
    let go = b.binary(BinaryOp::And, is_span, head);
    let go = b.binary(BinaryOp::And, go, at.live);
    b.if_then(go, |b| {
        let (lo, hi) = fold_warp_extremes(b, dims, sh, tid);
        let ig = times(b, at.item, g);
        let slot = b.add(ig, tid);
        let i = times(b, slot, 2);
        b.store(bufs.stats, i, lo);
        let one = b.u32(1);
        let j = b.add(i, one);
        b.store(bufs.stats, j, hi);
    });
}
