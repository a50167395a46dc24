//! Decode attention over `prefix | span | suffix` (SPEC.md section 4) in f32, with an online
//! softmax across segments and post-scaling for per-channel parameters (see the module docs of
//! [`cache`](super)).

use kvq_ir::reference::pack::unpack_row;
use kvq_ir::{Axis, Calibration};

use super::fp_segment::FpSegment;
use super::segment::QuantPart;
use super::sequence::LayerState;
use super::{CacheError, Device, Host, ModelShape, QueryRef, SpanQuantizer, VisualKvCache};

/// The host device of any quantizer.
type H<Q> = Host<Q>;

impl<D: Device> VisualKvCache<D> {
    /// The slot of each query's sequence at `layer`, after checking every query (sequence,
    /// prefilled layer, length, finiteness).
    pub(super) fn checked_queries(
        &self,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<&LayerState<D>>, CacheError> {
        self.check_layer(layer)?;
        let (q_heads, dim) = (self.shape.q_heads, self.shape.head_dim);
        let mut states = Vec::with_capacity(queries.len());
        for query in queries {
            states.push(self.state(layer, query.seq)?);
            if query.q.len() != q_heads * dim {
                return Err(CacheError::Shape {
                    what: "query length",
                    expected: q_heads * dim,
                    found: query.q.len(),
                });
            }
            if let Some(i) = query.q.iter().position(|x| !x.is_finite()) {
                return Err(CacheError::NonFiniteQuery {
                    seq: query.seq,
                    head: i / dim,
                    channel: i % dim,
                    value: query.q[i],
                });
            }
        }
        Ok(states)
    }
}

impl<D: Device> VisualKvCache<D> {
    /// Decode attention at `layer` for a batch: each query `[q_heads, head_dim]` attends over
    /// every cached token of its sequence; returns one `[q_heads, head_dim]` output per query,
    /// in batch order. Every query is checked (sequence, prefilled layer, length, finiteness)
    /// before any is computed. The device computes it on its own storage ([`Device::attend`]):
    /// the hand-written reference path on the host, the generated kernels on a GPU.
    pub fn attend(
        &self,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        D::attend(self, layer, queries)
    }
}

impl<Q: SpanQuantizer> VisualKvCache<H<Q>> {
    /// The host's attention (see [`VisualKvCache::attend`]): SPEC.md section 4 in f32,
    /// hand-written, on the host buffers.
    pub(super) fn attend_on_host(
        &self,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        let states = self.checked_queries(layer, queries)?;
        let mut scratch = Scratch::new(self.shape);
        Ok(states
            .into_iter()
            .zip(queries)
            .map(|(state, query)| {
                attend_one(
                    state,
                    query.q,
                    self.shape,
                    self.scheme.calibrate,
                    &mut scratch,
                )
            })
            .collect())
    }
}

/// Working buffers, allocated once per `attend` call. `g` = query heads per kv head.
struct Scratch {
    /// The group's queries divided by sqrt(head_dim), `[g, dim]`.
    q: Vec<f32>,
    /// The queries times one token group's key scales, `[g, dim]`.
    q_scaled: Vec<f32>,
    /// `sum_c q_c zero_c` per query head, `[g]`.
    bias: Vec<f32>,
    /// One parameter row, `[dim]` each.
    zero: Vec<f32>,
    scale: Vec<f32>,
    /// One unpacked code row, `[dim]`.
    codes: Vec<u8>,
    /// One dequantized row (axis = token), `[dim]`.
    row: Vec<f32>,
    /// A segment's logits, then its softmax weights, `[g, tokens]`.
    logits: Vec<f32>,
    /// `sum_t p_t code_tc` of one value token group, `[g, dim]`, and `sum_t p_t`, `[g]`.
    code_acc: Vec<f32>,
    p_sum: Vec<f32>,
    /// Online softmax state per query head: running max, sum of weights, output accumulator.
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl Scratch {
    fn new(shape: ModelShape) -> Scratch {
        let (g, dim) = (shape.group(), shape.head_dim);
        Scratch {
            q: vec![0.0; g * dim],
            q_scaled: vec![0.0; g * dim],
            bias: vec![0.0; g],
            zero: vec![0.0; dim],
            scale: vec![0.0; dim],
            codes: vec![0; dim],
            row: vec![0.0; dim],
            logits: Vec::new(),
            code_acc: vec![0.0; g * dim],
            p_sum: vec![0.0; g],
            max: vec![0.0; g],
            sum: vec![0.0; g],
            acc: vec![0.0; g * dim],
        }
    }
}

/// One sequence's attention: per kv head, its query heads walk the segments in order.
fn attend_one<Q: SpanQuantizer>(
    state: &LayerState<H<Q>>,
    q: &[f32],
    shape: ModelShape,
    calibrate: Option<Calibration>,
    s: &mut Scratch,
) -> Vec<f32> {
    let (g, dim) = (shape.group(), shape.head_dim);
    let inv_norm = 1.0 / (dim as f32).sqrt();
    let mut out = vec![0.0f32; shape.q_heads * dim];
    for kv_head in 0..shape.kv_heads {
        let group = kv_head * g * dim..(kv_head + 1) * g * dim;
        for (dst, &x) in s.q.iter_mut().zip(&q[group.clone()]) {
            *dst = x * inv_norm;
        }
        s.max.fill(f32::NEG_INFINITY);
        s.sum.fill(0.0);
        s.acc.fill(0.0);
        fp_segment(&state.prefix, kv_head, g, dim, s);
        if let Some((keys, values)) = &state.span {
            quant_segment(keys, values, kv_head, g, dim, calibrate, s);
        }
        fp_segment(&state.suffix, kv_head, g, dim, s);
        for ((o, acc), sum) in out[group]
            .chunks_exact_mut(dim)
            .zip(s.acc.chunks_exact(dim))
            .zip(&s.sum)
        {
            for (o, a) in o.iter_mut().zip(acc) {
                *o = a / sum;
            }
        }
    }
    out
}

/// Full-precision tokens of `seg` for `kv_head`.
fn fp_segment<Q: SpanQuantizer>(
    seg: &FpSegment<H<Q>>,
    kv_head: usize,
    g: usize,
    dim: usize,
    s: &mut Scratch,
) {
    let n = seg.tokens();
    if n == 0 {
        return;
    }
    s.logits.resize(g * n, 0.0);
    for (t, k) in seg.keys(kv_head).chunks_exact(dim).enumerate() {
        for (gi, qh) in s.q.chunks_exact(dim).enumerate() {
            s.logits[gi * n + t] = dot(qh, k);
        }
    }
    absorb(n, g, dim, s);
    for (t, v) in seg.values(kv_head).chunks_exact(dim).enumerate() {
        for (gi, acc) in s.acc.chunks_exact_mut(dim).enumerate() {
            axpy(s.logits[gi * n + t], v, acc);
        }
    }
}

/// The quantized span for `kv_head`: key logits (post-scaled or dequantized by row),
/// calibration, softmax update, value accumulation (post-scaled or dequantized by row).
fn quant_segment<Q: SpanQuantizer>(
    keys: &QuantPart<H<Q>>,
    values: &QuantPart<H<Q>>,
    kv_head: usize,
    g: usize,
    dim: usize,
    calibrate: Option<Calibration>,
    s: &mut Scratch,
) {
    let n = keys.tokens();
    s.logits.resize(g * n, 0.0);
    match keys.scheme().axis {
        Axis::Channel => channel_key_logits(keys, kv_head, n, dim, s),
        Axis::Token => {
            for t in 0..n {
                token_row(keys, kv_head, t, dim, s);
                for (gi, qh) in s.q.chunks_exact(dim).enumerate() {
                    s.logits[gi * n + t] = dot(qh, &s.row);
                }
            }
        }
    }
    if let Some(d) = calibrate {
        for row in s.logits.chunks_exact_mut(n) {
            calibrate_logits(row, d.get());
        }
    }
    absorb(n, g, dim, s);
    match values.scheme().axis {
        Axis::Channel => channel_values(values, kv_head, n, dim, s),
        Axis::Token => {
            for t in 0..n {
                token_row(values, kv_head, t, dim, s);
                for (gi, acc) in s.acc.chunks_exact_mut(dim).enumerate() {
                    axpy(s.logits[gi * n + t], &s.row, acc);
                }
            }
        }
    }
}

/// Post-scaled key logits: per token group, `q' = q * scale` and `bias = q . zero` once, then
/// `s_t = q' . code_t + bias` on the raw codes.
fn channel_key_logits<Q: SpanQuantizer>(
    keys: &QuantPart<H<Q>>,
    kv_head: usize,
    n: usize,
    dim: usize,
    s: &mut Scratch,
) {
    let [_, rows, _] = keys.param_dims();
    let per_row = keys.tokens_per_param_row();
    let (bits, order, rb) = (keys.scheme().bits, keys.scheme().order, keys.row_bytes());
    let codes = keys.head_codes(kv_head);
    for r in 0..rows {
        let at = (kv_head * rows + r) * dim;
        keys.params_into(at..at + dim, &mut s.zero, &mut s.scale);
        for ((qs, qh), bias) in s
            .q_scaled
            .chunks_exact_mut(dim)
            .zip(s.q.chunks_exact(dim))
            .zip(s.bias.iter_mut())
        {
            for ((o, &x), &sc) in qs.iter_mut().zip(qh).zip(&s.scale) {
                *o = x * sc;
            }
            *bias = dot(qh, &s.zero);
        }
        for t in r * per_row..((r + 1) * per_row).min(n) {
            unpack_row(&codes[t * rb..(t + 1) * rb], bits, order, &mut s.codes);
            for (gi, (qs, bias)) in s.q_scaled.chunks_exact(dim).zip(&s.bias).enumerate() {
                let raw: f32 = qs.iter().zip(&s.codes).map(|(&a, &c)| a * c as f32).sum();
                s.logits[gi * n + t] = raw + bias;
            }
        }
    }
}

/// Post-scaled values: per token group, `sum_t p_t code_tc` and `sum_t p_t` on the raw codes,
/// then `o_c += scale_c * that + zero_c * sum_t p_t`.
fn channel_values<Q: SpanQuantizer>(
    values: &QuantPart<H<Q>>,
    kv_head: usize,
    n: usize,
    dim: usize,
    s: &mut Scratch,
) {
    let [_, rows, _] = values.param_dims();
    let per_row = values.tokens_per_param_row();
    let (bits, order, rb) = (
        values.scheme().bits,
        values.scheme().order,
        values.row_bytes(),
    );
    let codes = values.head_codes(kv_head);
    for r in 0..rows {
        s.code_acc.fill(0.0);
        s.p_sum.fill(0.0);
        for t in r * per_row..((r + 1) * per_row).min(n) {
            unpack_row(&codes[t * rb..(t + 1) * rb], bits, order, &mut s.codes);
            for (gi, (ca, ps)) in s
                .code_acc
                .chunks_exact_mut(dim)
                .zip(s.p_sum.iter_mut())
                .enumerate()
            {
                let p = s.logits[gi * n + t];
                *ps += p;
                for (a, &c) in ca.iter_mut().zip(&s.codes) {
                    *a += p * c as f32;
                }
            }
        }
        let at = (kv_head * rows + r) * dim;
        values.params_into(at..at + dim, &mut s.zero, &mut s.scale);
        for ((acc, ca), &ps) in s
            .acc
            .chunks_exact_mut(dim)
            .zip(s.code_acc.chunks_exact(dim))
            .zip(&s.p_sum)
        {
            for (((o, &a), &sc), &z) in acc.iter_mut().zip(ca).zip(&s.scale).zip(&s.zero) {
                *o += sc * a + z * ps;
            }
        }
    }
}

/// Dequantizes row `t` of `kv_head` of an axis = token span into `s.row`
/// (`zero + scale * code`, per channel group).
fn token_row<Q: SpanQuantizer>(
    part: &QuantPart<H<Q>>,
    kv_head: usize,
    t: usize,
    dim: usize,
    s: &mut Scratch,
) {
    let [_, tokens, groups] = part.param_dims();
    let (bits, order, rb) = (part.scheme().bits, part.scheme().order, part.row_bytes());
    let codes = part.head_codes(kv_head);
    unpack_row(&codes[t * rb..(t + 1) * rb], bits, order, &mut s.codes);
    let at = (kv_head * tokens + t) * groups;
    part.params_into(
        at..at + groups,
        &mut s.zero[..groups],
        &mut s.scale[..groups],
    );
    let width = dim / groups;
    for (j, (row, codes)) in s
        .row
        .chunks_exact_mut(width)
        .zip(s.codes.chunks_exact(width))
        .enumerate()
    {
        let (z, sc) = (s.zero[j], s.scale[j]);
        for (x, &c) in row.iter_mut().zip(codes) {
            *x = z + sc * c as f32;
        }
    }
}

/// Online softmax step: turns the segment's logits `[g, n]` in `s.logits` into weights
/// `exp(s_t - max)` against the new running max, rescaling the running sum and accumulator.
fn absorb(n: usize, g: usize, dim: usize, s: &mut Scratch) {
    for gi in 0..g {
        let row = &mut s.logits[gi * n..(gi + 1) * n];
        let block_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let old = s.max[gi];
        let new = old.max(block_max);
        let correction = if old == f32::NEG_INFINITY {
            0.0
        } else {
            (old - new).exp()
        };
        s.max[gi] = new;
        let mut total = s.sum[gi] * correction;
        for x in row.iter_mut() {
            *x = (*x - new).exp();
            total += *x;
        }
        s.sum[gi] = total;
        for a in &mut s.acc[gi * dim..(gi + 1) * dim] {
            *a *= correction;
        }
    }
}

/// SPEC.md section 4's calibration in f32: if the spread `M - m` of `s` exceeds `d`, maps it
/// linearly onto `[m, M - d]`, keeping `m`.
fn calibrate_logits(s: &mut [f32], d: f32) {
    let m = s.iter().copied().fold(f32::INFINITY, f32::min);
    let big = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if big - m > d {
        let factor = (big - m - d) / (big - m);
        for x in s.iter_mut() {
            *x = m + (*x - m) * factor;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// `acc += w * x`.
fn axpy(w: f32, x: &[f32], acc: &mut [f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v;
    }
}
