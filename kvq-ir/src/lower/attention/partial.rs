//! The `partial` and `stats` kernels: one thread per (chunk, kv head) work item.

use crate::ir::{Builder, CmpOp, Kernel, Memory, ScalarType, Value};
use crate::lower::emit::global_item;
use crate::scheme::{Axis, CacheScheme, Group, Scheme};

use super::item_params::{declare_partial, declare_stats, ItemParams};
use super::keys::{
    affine, calibration_factor, fp_logits, key_row, load_query, logit_at, span_logits, times,
    uses_tables, Item, MAX_ROW_HEADS, RUN,
};
use super::values::{
    flat_heads, flush, fold_lanes, fp_values, init, over_lanes, softmax_tile, span_values, State,
    LANES,
};
use super::{seq_field as f, AttentionSchedule, AttentionShape};

/// Where a span tile's raw key logits come from.
#[derive(Clone, Copy)]
enum Logits {
    /// Computed from the codes.
    Compute,
    /// Computed, and saved to this buffer for `partial` (the `stats` kernel).
    ComputeAndSave(Memory),
    /// Loaded from what `stats` saved (`partial` with calibration).
    Load(Memory),
}

/// Declares the locals, decodes the work item and runs `body(b, item, chunk in sequence,
/// whether that chunk is a span chunk)` for the threads that have one.
fn work_item(
    b: &mut Builder,
    scheme: &CacheScheme,
    shape: AttentionShape,
    s: &AttentionSchedule,
    bufs: &ItemParams,
    [kv_heads, chunks]: [u32; 2],
    body: impl FnOnce(&mut Builder, &Item, Value, Value),
) {
    let (d, g) = (shape.head_dim, shape.group);
    let row_bytes = d * scheme.key.bits.width() / 8;
    // The query, its post-scaled form, a row's codes and a tile's logits are written before
    // they are read (the interpreter fails a kernel that reads one first), so they are unzeroed.
    let locals = [
        b.unzeroed_local("q", ScalarType::F32, g * d),
        b.unzeroed_local("qs", ScalarType::F32, g * d),
        b.local("bias", ScalarType::F32, g),
        b.unzeroed_local("codes", ScalarType::F32, d),
        b.unzeroed_local("logits", ScalarType::F32, g * s.tile),
        b.local("sum", ScalarType::F32, LANES * g.clamp(1, MAX_ROW_HEADS)),
        b.local("run", ScalarType::F32, RUN),
        b.local("moved", ScalarType::F32, LANES),
    ];
    let lut = (s.tables && uses_tables(&scheme.key))
        .then(|| b.unzeroed_local("lut", ScalarType::F32, g * row_bytes * 256));
    let item = global_item(b, s.block_size);
    let kv_heads = b.param(kv_heads);
    let chunks = b.param(chunks);
    let items = b.mul(chunks, kv_heads);
    let live = b.cmp(CmpOp::Lt, item, items);
    b.if_then(live, |b| {
        let w = b.div(item, kv_heads);
        let h = b.rem(item, kv_heads);
        let seq = b.load(bufs.work_seq, w, 1);
        let row = times(b, seq, f::COUNT);
        let field = |b: &mut Builder, k: u32| {
            let kv = b.u32(k);
            let at = b.add(row, kv);
            b.load(bufs.seqs, at, 1)
        };
        let it = Item {
            d,
            g,
            item,
            h,
            kv_heads,
            span_len: field(b, f::SPAN_LEN),
            fp_len: field(b, f::FP_LEN),
            fp_base: field(b, f::FP_BASE),
            k_codes: field(b, f::K_CODES),
            k_params: field(b, f::K_PARAMS),
            value_row_bytes: d * scheme.value.bits.width() / 8,
            v_codes: field(b, f::V_CODES),
            v_params: field(b, f::V_PARAMS),
            chunk_base: field(b, f::CHUNK_BASE),
            span_chunks: field(b, f::SPAN_CHUNKS),
            q: locals[0],
            qs: locals[1],
            bias: locals[2],
            lut,
            codes: locals[3],
            logits: locals[4],
            sum: locals[5],
            run: locals[6],
            moved: locals[7],
        };
        let ci = b.sub(w, it.chunk_base);
        let is_span = b.cmp(CmpOp::Lt, ci, it.span_chunks);
        load_query(b, &it, bufs.q, seq);
        body(b, &it, ci, is_span);
    });
}

/// Tokens per key parameter row for axis = channel (`None` for group = all).
fn row_tokens(s: &Scheme) -> Option<u32> {
    match (s.axis, s.group) {
        (Axis::Channel, Group::Size(n)) => Some(n.get() as u32),
        _ => None,
    }
}

/// First element of the axis = channel parameter row holding span token `t`.
fn channel_row_param(b: &mut Builder, it: &Item, s: &Scheme, first: Value, t: Value) -> Value {
    let rows_per_head = match row_tokens(s) {
        Some(n) => {
            let n1 = b.u32(n - 1);
            let padded = b.add(it.span_len, n1);
            let nv = b.u32(n);
            let rows = b.div(padded, nv);
            let r = b.div(t, nv);
            let hr = b.mul(it.h, rows);
            b.add(hr, r)
        }
        None => it.h,
    };
    affine(b, rows_per_head, it.d, first)
}

/// The span tokens `[start, end)` of span chunk `ci`.
fn span_chunk(b: &mut Builder, it: &Item, s: &AttentionSchedule, ci: Value) -> (Value, Value) {
    let start = times(b, ci, s.chunk);
    let cn = b.u32(s.chunk);
    let end = b.add(start, cn);
    let end = b.min(end, it.span_len);
    (start, end)
}

/// Key post-scaling for the span chunk from `start` where the logits are computed and the keys
/// have one parameter row per head (the other key schemes set up per tile).
fn span_chunk_keys(
    b: &mut Builder,
    it: &Item,
    key: &Scheme,
    bufs: &ItemParams,
    start: Value,
    source: Logits,
) {
    let compute = !matches!(source, Logits::Load(_));
    if compute && key.axis == Axis::Channel && row_tokens(key).is_none() {
        let p = channel_row_param(b, it, key, it.k_params, start);
        key_row(b, it, key, [bufs.k[1], bufs.k[2]], p);
    }
}

/// The raw key logits of the span tile of `n` tokens from `t0` (of the chunk from `start`) into
/// `it.logits`, computed (setting up key post-scaling first where a parameter row starts),
/// saved or loaded as `source` says.
#[allow(clippy::too_many_arguments)]
fn span_tile_logits(
    b: &mut Builder,
    it: &Item,
    key: &Scheme,
    bufs: &ItemParams,
    s: &AttentionSchedule,
    source: Logits,
    start: Value,
    (t0, n): (Value, Value),
) {
    let compute = !matches!(source, Logits::Load(_));
    if let Some(n) = row_tokens(key).filter(|_| compute && key.axis == Axis::Channel) {
        let nv = b.u32(n);
        let off = b.rem(t0, nv);
        let z = b.u32(0);
        let row_start = b.cmp(CmpOp::Eq, off, z);
        let first = b.cmp(CmpOp::Eq, t0, start);
        let setup = b.binary(crate::ir::BinaryOp::Or, row_start, first);
        b.if_then(setup, |b| {
            let p = channel_row_param(b, it, key, it.k_params, t0);
            key_row(b, it, key, [bufs.k[1], bufs.k[2]], p);
        });
    }
    if compute {
        let stop = b.add(t0, n);
        b.for_range(t0, stop, 1, |b, t| {
            let slot = b.sub(t, t0);
            span_logits(b, it, key, bufs.k, t, slot);
        });
    }
    if let Logits::ComputeAndSave(mem) | Logits::Load(mem) = source {
        // Saved logit of (token t of the chunk, head gi): (item * chunk + t - start) * g + gi.
        // The tile's logits, token-major, are one run both here and in the buffer.
        let rel = b.sub(t0, start);
        let row = affine(b, it.item, s.chunk, rel);
        let first = times(b, row, it.g);
        let gv = b.u32(it.g);
        let total = b.mul(n, gv);
        let z = b.u32(0);
        b.for_range(z, total, 1, |b, e| {
            let saved = b.add(first, e);
            if compute {
                let x = b.read_local(it.logits, e);
                b.store(mem, saved, x);
            } else {
                let x = b.load(mem, saved, 1);
                b.write_local(it.logits, e, x);
            }
        });
    }
}

/// Runs `tile(b, t0, n)` for the tiles of span chunk `ci` after their logits
/// ([`span_tile_logits`]).
#[allow(clippy::too_many_arguments)]
fn span_tiles(
    b: &mut Builder,
    it: &Item,
    key: &Scheme,
    bufs: &ItemParams,
    s: &AttentionSchedule,
    ci: Value,
    source: Logits,
    tile: impl FnOnce(&mut Builder, Value, Value),
) {
    let (start, end) = span_chunk(b, it, s, ci);
    span_chunk_keys(b, it, key, bufs, start, source);
    for_tiles(b, s, start, end, |b, t0, _, n| {
        span_tile_logits(b, it, key, bufs, s, source, start, (t0, n));
        tile(b, t0, n);
    });
}

/// Runs `body(b, t0, stop, n)` for the tiles `[t0, stop)` of `n` tokens that split `[start,
/// end)` into runs of the schedule's tile (the last one shorter).
fn for_tiles(
    b: &mut Builder,
    s: &AttentionSchedule,
    start: Value,
    end: Value,
    body: impl FnOnce(&mut Builder, Value, Value, Value),
) {
    b.for_range(start, end, s.tile, |b, t0| {
        let tl = b.u32(s.tile);
        let stop = b.add(t0, tl);
        let stop = b.min(stop, end);
        let n = b.sub(stop, t0);
        body(b, t0, stop, n);
    });
}

/// The `partial` kernel.
pub(super) fn lower(
    name: &str,
    scheme: &CacheScheme,
    shape: AttentionShape,
    s: &AttentionSchedule,
) -> Kernel {
    let mut b = Builder::new(name, s.block_size);
    let (bufs, [part_ml, part_acc]) = declare_partial(&mut b, scheme, shape.fp);
    let (kv_heads, chunks) = (bufs.kv_heads, bufs.chunks);
    let (d, g) = (shape.head_dim, shape.group);
    let st = State {
        m: b.unzeroed_local("m", ScalarType::F32, g),
        l: b.unzeroed_local("l", ScalarType::F32, g),
        acc: b.unzeroed_local("acc", ScalarType::F32, g * d),
        cacc: (scheme.value.axis == Axis::Channel).then(|| {
            (
                b.unzeroed_local("cacc", ScalarType::F32, g * d),
                b.unzeroed_local("psum", ScalarType::F32, g),
            )
        }),
        hist: (s.tables && uses_tables(&scheme.value)).then(|| {
            let cells = d * scheme.value.bits.width() / 8;
            b.unzeroed_local("hist", ScalarType::F32, g * cells * 256)
        }),
        row: b.unzeroed_local("row", ScalarType::F32, d),
        wsum: b.local("wsum", ScalarType::F32, g.max(LANES)),
        wmax: b.local("wmax", ScalarType::F32, LANES),
        tmax: b.local("tmax", ScalarType::F32, g),
        grew: b.local("grew", ScalarType::U32, 1),
    };
    let calib = [
        b.local("cal_min", ScalarType::F32, g),
        b.local("cal_factor", ScalarType::F32, g),
    ];
    let (key, value) = (&scheme.key, &scheme.value);
    work_item(
        &mut b,
        scheme,
        shape,
        s,
        &bufs,
        [kv_heads, chunks],
        |b, it, ci, is_span| {
            // Full-precision items never touch the histograms (64 KB at head_dim 128, group
            // 4): they do not rescale them when a max grows.
            let fp_st = State { hist: None, ..st };
            let source = match scheme.calibrate {
                Some(_) => Logits::Load(bufs.logits),
                None => Logits::Compute,
            };
            // Span chunk ci, or full-precision chunk ci - span_chunks: their tokens.
            let first_fp = b.min(ci, it.span_chunks);
            let fci = b.sub(ci, first_fp);
            let chunk = b.select(is_span, ci, fci);
            let start = times(b, chunk, s.chunk);
            let cn = b.u32(s.chunk);
            let end = b.add(start, cn);
            let len = b.select(is_span, it.span_len, it.fp_len);
            let end = b.min(end, len);
            if st.hist.is_none() {
                init(b, it, &st);
            }
            b.if_else(
                is_span,
                |b| {
                    if st.hist.is_some() {
                        init(b, it, &st);
                    }
                    if let Some(dcal) = scheme.calibrate {
                        calibration(b, it, &bufs, calib, dcal.get(), st.m);
                    }
                    span_chunk_keys(b, it, key, &bufs, start, source);
                },
                |b| {
                    if st.hist.is_some() {
                        init(b, it, &fp_st);
                    }
                },
            );
            // One loop over the tiles for both kinds of chunk, so that the softmax's code is
            // generated once (twice, it was a fifth of LLVM's work on this kernel).
            for_tiles(b, s, start, end, |b, t0, stop, n| {
                b.if_else(
                    is_span,
                    |b| {
                        span_tile_logits(b, it, key, &bufs, s, source, start, (t0, n));
                        if scheme.calibrate.is_some() {
                            apply_calibration(b, it, calib, n);
                        }
                    },
                    |b| {
                        b.for_range(t0, stop, 1, |b, t| {
                            let slot = b.sub(t, t0);
                            fp_logits(b, it, (bufs.fp_k, bufs.fp), t, slot);
                        });
                    },
                );
                softmax_tile(b, it, &st, n, is_span);
                b.if_else(
                    is_span,
                    |b| {
                        b.for_range(t0, stop, 1, |b, t| {
                            let slot = b.sub(t, t0);
                            span_values(b, it, &st, value, bufs.v, t, slot);
                        });
                        if st.cacc.is_some() {
                            // Flush at the end of a value parameter row or of the chunk.
                            let last = b.cmp(CmpOp::Eq, stop, end);
                            let done = match row_tokens(value) {
                                Some(nrow) => {
                                    let nv = b.u32(nrow);
                                    let off = b.rem(stop, nv);
                                    let z = b.u32(0);
                                    let row_end = b.cmp(CmpOp::Eq, off, z);
                                    b.binary(crate::ir::BinaryOp::Or, row_end, last)
                                }
                                None => last,
                            };
                            b.if_then(done, |b| {
                                let p = channel_row_param(b, it, value, it.v_params, t0);
                                flush(b, it, &st, value, [bufs.v[1], bufs.v[2]], p);
                            });
                        }
                    },
                    |b| fp_values(b, it, &fp_st, (bufs.fp_v, bufs.fp), [t0, stop]),
                );
            });
            // Outputs of item (w, h): index (w * kv_heads + h) * g + gi.
            let item = global_item(b, s.block_size);
            let first = times(b, item, g);
            let z = b.u32(0);
            let gn = b.u32(g);
            b.for_range(z, gn, 1, |b, gi| {
                let slot = b.add(first, gi);
                let mi = times(b, slot, 2);
                let m = b.read_local(st.m, gi);
                b.store(part_ml, mi, m);
                let one = b.u32(1);
                let li = b.add(mi, one);
                let l = b.read_local(st.l, gi);
                b.store(part_ml, li, l);
                let out = times(b, slot, d);
                let row = times(b, gi, d);
                let z = b.u32(0);
                let dn = b.u32(d);
                b.for_range(z, dn, 1, |b, c| {
                    let src = b.add(row, c);
                    let x = b.read_local(st.acc, src);
                    let dst = b.add(out, c);
                    b.store(part_acc, dst, x);
                });
            });
        },
    );
    b.finish()
}

/// Reads the span's logit extremes per query head from `stats` (over the sequence's span
/// chunks) and stores the calibration's `m` and factor (1 when the spread is at most `dcal`).
/// The running max starts at the span's calibrated maximum, which bounds every calibrated
/// logit (computed by the same operations), so the softmax state never needs rescaling.
fn calibration(
    b: &mut Builder,
    it: &Item,
    bufs: &ItemParams,
    [cmin, cfac]: [u32; 2],
    dcal: f32,
    running_max: u32,
) {
    let g = it.g;
    let first = it.chunk_base;
    let end = b.add(first, it.span_chunks);
    let z = b.u32(0);
    let gn = b.u32(g);
    b.for_range(z, gn, 1, |b, gi| {
        let inf = b.f32(f32::INFINITY);
        let ninf = b.f32(f32::NEG_INFINITY);
        let z = b.u32(0);
        b.write_local(cmin, gi, inf);
        b.write_local(it.sum, z, ninf);
        b.for_range(first, end, 1, |b, w| {
            let wh = b.mul(w, it.kv_heads);
            let wh = b.add(wh, it.h);
            let slot = affine(b, wh, g, gi);
            let i = times(b, slot, 2);
            let lo = b.load(bufs.stats, i, 1);
            let one = b.u32(1);
            let j = b.add(i, one);
            let hi = b.load(bufs.stats, j, 1);
            let cur = b.read_local(cmin, gi);
            let cur = b.min(cur, lo);
            b.write_local(cmin, gi, cur);
            let z = b.u32(0);
            let top = b.read_local(it.sum, z);
            let top = b.max(top, hi);
            b.write_local(it.sum, z, top);
        });
        let lo = b.read_local(cmin, gi);
        let hi = b.read_local(it.sum, z);
        let (factor, wide) = calibration_factor(b, lo, hi, dcal);
        b.write_local(cfac, gi, factor);
        let x = b.sub(hi, lo);
        let x = b.mul(x, factor);
        let top = b.add(lo, x);
        let top = b.select(wide, top, hi);
        b.write_local(running_max, gi, top);
    });
}

/// `s := m + (s - m) * factor` on the tile's logits where the factor is below 1.
fn apply_calibration(b: &mut Builder, it: &Item, [cmin, cfac]: [u32; 2], n: Value) {
    let z = b.u32(0);
    let gn = b.u32(it.g);
    b.for_range(z, gn, 1, |b, gi| {
        let m = b.read_local(cmin, gi);
        let fct = b.read_local(cfac, gi);
        let one = b.f32(1.0);
        let squeeze = b.cmp(CmpOp::Lt, fct, one);
        b.if_then(squeeze, |b| {
            let z = b.u32(0);
            b.for_range(z, n, 1, |b, i| {
                let at = logit_at(b, it, i, gi);
                let s = b.read_local(it.logits, at);
                let x = b.sub(s, m);
                let x = b.mul(x, fct);
                let x = b.add(m, x);
                b.write_local(it.logits, at, x);
            });
        });
    });
}

/// The `stats` kernel: the raw span-logit minimum and maximum of each (item, query head);
/// fp items write nothing.
pub(super) fn lower_stats(
    name: &str,
    scheme: &CacheScheme,
    shape: AttentionShape,
    s: &AttentionSchedule,
) -> Kernel {
    let mut b = Builder::new(name, s.block_size);
    let bufs = declare_stats(&mut b, scheme, shape.fp);
    let (kv_heads, chunks) = (bufs.kv_heads, bufs.chunks);
    let g = shape.group;
    // Per head, or per lane of the flat loops ([`flat_heads`] groups).
    let flat = flat_heads(g);
    let slots = if flat { LANES } else { g };
    let ext = [
        b.local("lo", ScalarType::F32, slots),
        b.local("hi", ScalarType::F32, slots),
    ];
    work_item(
        &mut b,
        scheme,
        shape,
        s,
        &bufs,
        [kv_heads, chunks],
        |b, it, ci, is_span| {
            b.if_then(is_span, |b| {
                let z = b.u32(0);
                let sn = b.u32(slots);
                b.for_range(z, sn, 1, |b, j| {
                    let inf = b.f32(f32::INFINITY);
                    let ninf = b.f32(f32::NEG_INFINITY);
                    b.write_local(ext[0], j, inf);
                    b.write_local(ext[1], j, ninf);
                });
                // Slot `j`'s extremes take logit `e`.
                let extend = |b: &mut Builder, e: Value, j: Value| {
                    let x = b.read_local(it.logits, e);
                    let lo = b.read_local(ext[0], j);
                    let lo = b.min(lo, x);
                    b.write_local(ext[0], j, lo);
                    let hi = b.read_local(ext[1], j);
                    let hi = b.max(hi, x);
                    b.write_local(ext[1], j, hi);
                };
                let save = Logits::ComputeAndSave(bufs.logits);
                span_tiles(b, it, &scheme.key, &bufs, s, ci, save, |b, _, n| {
                    if flat {
                        let gv = b.u32(g);
                        let total = b.mul(n, gv);
                        over_lanes(b, total, &extend);
                        return;
                    }
                    let z = b.u32(0);
                    let gn = b.u32(g);
                    b.for_range(z, gn, 1, |b, gi| {
                        let z = b.u32(0);
                        b.for_range(z, n, 1, |b, i| {
                            let at = logit_at(b, it, i, gi);
                            extend(b, at, gi);
                        });
                    });
                });
                if flat {
                    // Each head's extremes over its lanes, into slot `gi`.
                    for gi in 0..g {
                        let lo = fold_lanes(b, ext[0], g, gi, |b, x, y| b.min(x, y));
                        let hi = fold_lanes(b, ext[1], g, gi, |b, x, y| b.max(x, y));
                        let gv = b.u32(gi);
                        b.write_local(ext[0], gv, lo);
                        b.write_local(ext[1], gv, hi);
                    }
                }
                let item = global_item(b, s.block_size);
                let first = times(b, item, g);
                let z = b.u32(0);
                let gn = b.u32(g);
                b.for_range(z, gn, 1, |b, gi| {
                    let slot = b.add(first, gi);
                    let i = times(b, slot, 2);
                    let lo = b.read_local(ext[0], gi);
                    b.store(bufs.stats, i, lo);
                    let one = b.u32(1);
                    let j = b.add(i, one);
                    let hi = b.read_local(ext[1], gi);
                    b.store(bufs.stats, j, hi);
                });
            });
        },
    );
    b.finish()
}
