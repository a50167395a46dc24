//! Scenario 5: prompts and decode tokens given in the device's memory.

use kvq_ir::lower::InputType;

use super::{cases, check_attention, check_spans, snapshot, Failure, Report, Rng};
use crate::cache::fp_segment::with_fp;
use crate::cache::{CacheError, Device, FpElem, KvPart, SeqId, VisualKvCache};

/// `xs` as `T` in `cache`'s device memory.
fn upload<D: Device, T: FpElem>(
    cache: &VisualKvCache<D>,
    xs: &[f32],
) -> Result<D::Buf<T>, Failure> {
    let xs: Vec<T> = xs.iter().map(|&x| T::from_f32(x)).collect();
    cache
        .device()
        .upload(&xs)
        .map_err(|e| format!("upload: {e}"))
}

/// [`run_typed`] for the caches' full-precision type.
pub(super) fn run<D: Device>(
    rng: &mut Rng,
    host: VisualKvCache<D>,
    device: VisualKvCache<D>,
    report: &mut Report,
) -> Result<(), Failure> {
    with_fp!(host.fp_storage(), T => run_typed::<D, T>(rng, host, device, report))
}

/// Fills every layer of one cache from host tensors and of another (`device`) from device
/// buffers of the same values; the second must export the reference's spans and attend like
/// the reference, and both must hold the same tokens, capacities, spans and memory and give
/// the same outputs bit for bit. Then every refused device-buffer call must leave the cache as
/// it was.
fn run_typed<D: Device, T: FpElem>(
    rng: &mut Rng,
    mut host: VisualKvCache<D>,
    mut device: VisualKvCache<D>,
    report: &mut Report,
) -> Result<(), Failure> {
    let cases = cases(rng, &host)?;
    let seqs: Vec<SeqId> = cases.iter().map(|_| host.add_sequence()).collect();
    let device_seqs: Vec<SeqId> = cases.iter().map(|_| device.add_sequence()).collect();
    if seqs != device_seqs {
        return Err("two fresh caches numbered their sequences differently".into());
    }
    for layer in 0..host.shape().layers {
        for (c, &seq) in cases.iter().zip(&seqs) {
            c.fill(&mut host, layer, seq)?;
            let fail = |e: CacheError| format!("device prompt at layer {layer}: {e}");
            let k = upload::<D, T>(&device, c.k.data())?;
            let v = upload::<D, T>(&device, c.v.data())?;
            let tokens = c.k.shape().tokens;
            device
                .prefill_from_device(layer, seq, &k, &v, tokens, c.visual.clone())
                .map_err(fail)?;
            for (k, v) in &c.appended {
                let n = k.shape().tokens;
                let (k, v) = (
                    upload::<D, T>(&device, k.data())?,
                    upload(&device, v.data())?,
                );
                device
                    .append_from_device(layer, seq, &k, &v, n)
                    .map_err(fail)?;
            }
        }
        let want = check_attention(&host, layer, &seqs, &cases, report)?;
        let got = check_attention(&device, layer, &seqs, &cases, report)?;
        check_spans(&device, layer, &seqs, &cases, report)?;
        if got != want {
            return Err(format!(
                "layer {layer}: device-buffer prompts attend differently from host ones"
            ));
        }
        for (i, &seq) in seqs.iter().enumerate() {
            let same = host.tokens(layer, seq) == device.tokens(layer, seq)
                && host.suffix_capacity(layer, seq) == device.suffix_capacity(layer, seq)
                && host.export_span(layer, seq) == device.export_span(layer, seq);
            if !same {
                return Err(format!(
                    "layer {layer}, sequence {i}: the device-buffer prompt stored other tokens, capacity or spans than the host one"
                ));
            }
            report.checks += 1;
        }
    }
    if host.memory() != device.memory() {
        return Err("device-buffer prompts report other memory than host ones".into());
    }
    report.checks += 1;
    refusals::<D, T>(&mut device, &seqs, &cases, report)
}

/// Every refused device-buffer call returns its typed error and changes nothing observable.
fn refusals<D: Device, T: FpElem>(
    cache: &mut VisualKvCache<D>,
    seqs: &[SeqId],
    cases: &[super::Case],
    report: &mut Report,
) -> Result<(), Failure> {
    let before = snapshot(cache, seqs, cases);
    let shape = cache.shape();
    let (kv, dim) = (shape.kv_heads, shape.head_dim);
    let values = |tokens: usize, nan_at: Option<usize>| {
        let mut x = vec![0.25f32; kv * tokens * dim];
        if let Some(i) = nan_at {
            x[i] = f32::NAN;
        }
        upload::<D, T>(cache, &x)
    };
    // Six tokens, the last head's token 1 (prefix) or token 4 (span, 2..5) channel 3 NaN.
    let last = kv - 1;
    let good = values(6, None)?;
    let short = values(5, None)?;
    let nan_prefix = values(6, Some((last * 6 + 1) * dim + 3))?;
    let nan_span = values(6, Some((last * 6 + 4) * dim + 3))?;
    let one = values(1, None)?;
    let nan_one = values(1, Some(last * dim + dim - 1))?;
    let fresh = cache.add_sequence();
    // Buffers of another type than the cache's rows.
    let quarter = vec![0.25f32; kv * 6 * dim];
    let other_type = if T::TYPE == InputType::F32 {
        let b = upload::<D, half::f16>(cache, &quarter)?;
        cache.prefill_from_device(0, fresh, &b, &b, 6, 2..5)
    } else {
        let b = upload::<D, f32>(cache, &quarter)?;
        cache.prefill_from_device(0, fresh, &b, &b, 6, 2..5)
    };
    let nan_at = |part: KvPart, token: usize, channel: usize| {
        move |e: &CacheError| {
            matches!(e, CacheError::NonFinite { part: p, head, token: t, channel: c, .. }
                if *p == part && *head == last && *t == token && *c == channel)
        }
    };
    type Expect<'a> = Box<dyn Fn(&CacheError) -> bool + 'a>;
    let calls: Vec<(&str, Result<(), CacheError>, Expect<'_>)> = vec![
        (
            "buffers of another type",
            other_type,
            Box::new(|e| matches!(e, CacheError::FpType { .. })),
        ),
        (
            "a key buffer a token short",
            cache.prefill_from_device(0, fresh, &short, &good, 6, 2..5),
            Box::new(|e| {
                matches!(
                    e,
                    CacheError::Shape {
                        what: "key buffer elements",
                        ..
                    }
                )
            }),
        ),
        (
            "a token count whose element count overflows",
            cache.prefill_from_device(0, fresh, &good, &good, usize::MAX, 0..0),
            Box::new(|e| matches!(e, CacheError::TooLarge { .. })),
        ),
        (
            "a NaN in the prefix values",
            cache.prefill_from_device(0, fresh, &good, &nan_prefix, 6, 2..5),
            Box::new(nan_at(KvPart::Values, 1, 3)),
        ),
        (
            "a NaN in the span's keys",
            cache.prefill_from_device(0, fresh, &nan_span, &good, 6, 2..5),
            Box::new(nan_at(KvPart::Keys, 4, 3)),
        ),
        (
            "a NaN in the span's values",
            cache.prefill_from_device(0, fresh, &good, &nan_span, 6, 2..5),
            Box::new(nan_at(KvPart::Values, 4, 3)),
        ),
        (
            "a visual range past the tokens",
            cache.prefill_from_device(0, fresh, &good, &good, 6, 4..7),
            Box::new(|e| matches!(e, CacheError::VisualRange { .. })),
        ),
        (
            "a second prefill",
            cache.prefill_from_device(0, seqs[0], &good, &good, 6, 2..5),
            Box::new(|e| matches!(e, CacheError::AlreadyPrefilled { .. })),
        ),
        (
            "an append before prefill",
            cache.append_from_device(0, fresh, &one, &one, 1),
            Box::new(|e| matches!(e, CacheError::NotPrefilled { .. })),
        ),
        (
            "an append of a value buffer two tokens short",
            cache.append_from_device(0, seqs[0], &one, &one, 3),
            Box::new(|e| matches!(e, CacheError::Shape { .. })),
        ),
        (
            "a NaN key appended",
            cache.append_from_device(0, seqs[0], &nan_one, &one, 1),
            Box::new(nan_at(KvPart::Keys, 0, dim - 1)),
        ),
    ];
    for (what, result, expect) in calls {
        match result {
            Err(e) if expect(&e) => report.checks += 1,
            other => return Err(format!("device buffers, {what}: got {other:?}")),
        }
    }
    if cache.tokens(0, fresh) != Ok(0) {
        return Err("a refused device-buffer prefill left tokens behind".into());
    }
    if snapshot(cache, seqs, cases) != before {
        return Err("a refused device-buffer call changed the cache".into());
    }
    report.checks += 1;
    Ok(())
}
