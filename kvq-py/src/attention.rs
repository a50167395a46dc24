//! Decode attention from Python: `kvq.Span` (a quantized span held in Rust), `kvq.Attention`
//! (the generated host kernels of one scheme and shape) and `kvq.decode_attention` (the same on
//! arrays, one sequence or a batch of ragged ones, the kernels compiled once per thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use kvq::attention::{HostAttention, SeqData};
use kvq::backend::{self, BackendError};
use kvq::lower::attention::AttentionShape;
use kvq::reference::PackedSpan;
use kvq::{CacheScheme, Scheme, Tensor3};
use numpy::PyArrayDyn;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::arrays::{self, f32_values, input_tensor, shape3};
use crate::{array, backend_error, backend_named, PyCacheScheme};

/// A quantized span: keys and values `[kv_heads, tokens, head_dim]` packed under a cache
/// scheme's key and value schemes (SPEC.md section 3), held in Rust for decode attention.
#[pyclass(name = "Span", module = "kvq", frozen)]
#[derive(Debug)]
pub struct PySpan {
    k: PackedSpan,
    v: PackedSpan,
}

#[pymethods]
impl PySpan {
    /// Quantizes `k` and `v` (`[kv_heads, tokens, head_dim]`, the same shape; float16,
    /// bfloat16 or float32) under `scheme`'s key and value schemes.
    #[new]
    #[pyo3(signature = (k, v, scheme, backend = "host"))]
    fn new(
        py: Python<'_>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        scheme: &PyCacheScheme,
        backend: &str,
    ) -> PyResult<PySpan> {
        let backend = backend_named(backend)?;
        let (kt, ki) = input_tensor(k, "k")?;
        let (vt, vi) = input_tensor(v, "v")?;
        if kt.shape() != vt.shape() {
            return Err(PyValueError::new_err(format!(
                "k has shape {:?} and v {:?}; they must be the same",
                kt.shape().dims(),
                vt.shape().dims()
            )));
        }
        let s = scheme.inner;
        let (k, v) = py
            .allow_threads(|| {
                Ok::<_, BackendError>((
                    backend::quantize(&kt, ki, &s.key, backend)?,
                    backend::quantize(&vt, vi, &s.value, backend)?,
                ))
            })
            .map_err(backend_error)?;
        Ok(PySpan { k, v })
    }

    /// A span from `kvq.quantize`'s outputs: `k` and `v` each `(codes, zero, scale)`, under
    /// `scheme`'s key and value schemes (checked like `kvq.dequantize`'s arguments).
    #[staticmethod]
    fn from_packed(
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
        scheme: &PyCacheScheme,
    ) -> PyResult<PySpan> {
        let k = packed(k, &scheme.inner.key, "k")?;
        let v = packed(v, &scheme.inner.value, "v")?;
        if k.shape != v.shape {
            return Err(PyValueError::new_err(format!(
                "k holds {:?} and v {:?}; they must be the same",
                k.shape.dims(),
                v.shape.dims()
            )));
        }
        Ok(PySpan { k, v })
    }

    /// Span tokens.
    #[getter]
    fn tokens(&self) -> usize {
        self.k.shape.tokens
    }

    /// Bytes stored: codes and parameters (at their scheme's precision) of keys and values.
    #[getter]
    fn nbytes(&self) -> usize {
        [&self.k, &self.v]
            .iter()
            .map(|p| p.codes.len() + 2 * p.zero.len() * p.scheme.params.bits() as usize / 8)
            .sum()
    }
}

/// `(codes, zero, scale)` named `what`, packed under `scheme`.
fn packed(x: &Bound<'_, PyAny>, scheme: &Scheme, what: &str) -> PyResult<PackedSpan> {
    let (codes, zero, scale): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) = x
        .extract()
        .map_err(|_| PyValueError::new_err(format!("{what} must be (codes, zero, scale)")))?;
    let shape = shape3(&codes, scheme)?;
    let params = kvq::reference::quantize::param_shape(scheme, shape);
    let span = PackedSpan {
        scheme: *scheme,
        shape,
        codes: arrays::codes(&codes)?,
        zero: f32_values(&zero, "zero", &params)?,
        scale: f32_values(&scale, "scale", &params)?,
    };
    span.validate()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    Ok(span)
}

/// One sequence's span: held by a `kvq.Span`, or packed from arrays.
enum SpanArg<'py> {
    Held(Bound<'py, PySpan>),
    Packed(Box<(PackedSpan, PackedSpan)>),
}

impl SpanArg<'_> {
    fn pair(&self) -> (&PackedSpan, &PackedSpan) {
        match self {
            SpanArg::Held(s) => (&s.get().k, &s.get().v),
            SpanArg::Packed(p) => (&p.0, &p.1),
        }
    }
}

/// `span` (a `kvq.Span` or `((codes, zero, scale), (codes, zero, scale))`), checked to be
/// packed under `scheme`'s key and value schemes.
fn span_arg<'py>(span: &Bound<'py, PyAny>, scheme: &CacheScheme) -> PyResult<SpanArg<'py>> {
    let arg = match span.downcast::<PySpan>() {
        Ok(s) => SpanArg::Held(s.clone()),
        Err(_) => {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = span.extract().map_err(|_| {
                PyValueError::new_err(
                    "span must be a kvq.Span or ((codes, zero, scale), (codes, zero, scale))",
                )
            })?;
            let span = PySpan::from_packed(&k, &v, &PyCacheScheme { inner: *scheme })?;
            SpanArg::Packed(Box::new((span.k, span.v)))
        }
    };
    let (k, v) = arg.pair();
    if k.scheme != scheme.key || v.scheme != scheme.value {
        return Err(PyValueError::new_err(format!(
            "the span was quantized under key({}), value({}); this attention's scheme is {scheme}",
            k.scheme, v.scheme
        )));
    }
    Ok(arg)
}

/// One sequence's arguments, owned for the launch.
struct Seq<'py> {
    q: Vec<f32>,
    fp: Option<(Tensor3, Tensor3)>,
    span: Option<SpanArg<'py>>,
}

impl Seq<'_> {
    /// Its kv heads and tokens (full-precision, span).
    fn sizes(&self) -> (Option<usize>, usize, usize) {
        let fp = self.fp.as_ref().map(|(k, _)| k.shape());
        let span = self.span.as_ref().map(|s| s.pair().0.shape);
        let heads = fp.map(|s| s.heads).or(span.map(|s| s.heads));
        (
            heads,
            fp.map_or(0, |s| s.tokens),
            span.map_or(0, |s| s.tokens),
        )
    }
}

/// The full-precision keys and values `fp_k`, `fp_v` (absent or 0 tokens: none), which must
/// have the same shape.
fn fp_pair(
    fp_k: Option<&Bound<'_, PyAny>>,
    fp_v: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<(Tensor3, Tensor3)>> {
    let (Some(k), Some(v)) = (fp_k, fp_v) else {
        return match (fp_k, fp_v) {
            (None, None) => Ok(None),
            _ => Err(PyValueError::new_err("fp_k and fp_v go together")),
        };
    };
    let (kd, k) = arrays::input(k, "fp_k")?;
    let (vd, v) = arrays::input(v, "fp_v")?;
    if kd != vd {
        return Err(PyValueError::new_err(format!(
            "fp_k {kd:?} and fp_v {vd:?} must have the same shape"
        )));
    }
    Ok(match kd[1] {
        0 => None,
        _ => Some((k.tensor(kd)?, v.tensor(vd)?)),
    })
}

/// Checks that every sequence has something to attend, over `q_heads / group` kv heads of
/// `head_dim` channels.
fn check(seqs: &[Seq<'_>], head_dim: usize, group: usize, q_heads: usize) -> PyResult<()> {
    let kv = q_heads / group;
    for (i, s) in seqs.iter().enumerate() {
        let fp = s.fp.as_ref().map(|(k, _)| ("fp_k", k.shape()));
        let span = s.span.as_ref().map(|p| ("span", p.pair().0.shape));
        if fp.is_none() && span.is_none() {
            return Err(PyValueError::new_err(format!(
                "sequence {i} has no tokens to attend (no span and no fp_k/fp_v)"
            )));
        }
        for (what, shape) in fp.into_iter().chain(span) {
            if shape.heads != kv || shape.dim != head_dim {
                return Err(PyValueError::new_err(format!(
                    "sequence {i}: {what} has {} kv heads of head_dim {}; {q_heads} query heads \
                     in groups of {group} read {kv} kv heads of head_dim {head_dim}",
                    shape.heads, shape.dim
                )));
            }
        }
    }
    Ok(())
}

/// Runs `attention` (for `head_dim`, `group`) over `seqs` (checked first) with `q_heads`
/// query heads each.
fn run(
    attention: &HostAttention,
    head_dim: usize,
    group: usize,
    q_heads: usize,
    seqs: &[Seq<'_>],
) -> PyResult<Vec<Vec<f32>>> {
    check(seqs, head_dim, group, q_heads)?;
    let data: Vec<SeqData<'_>> = seqs
        .iter()
        .map(|s| SeqData {
            q: &s.q,
            fp: s.fp.as_ref().map(|(k, v)| (k, v)),
            span: s.span.as_ref().map(SpanArg::pair),
        })
        .collect();
    attention
        .attend(q_heads / group, &data)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Decode attention through kvq's generated host kernels for one cache scheme, head_dim and
/// GQA group (compiled once, through the compile cache).
#[pyclass(name = "Attention", module = "kvq", frozen, unsendable)]
#[derive(Debug)]
pub struct PyAttention {
    inner: Rc<HostAttention>,
    scheme: CacheScheme,
    head_dim: usize,
    group: usize,
}

#[pymethods]
impl PyAttention {
    /// The kernels of `scheme` for `head_dim` channels and `group` query heads per kv head.
    #[new]
    fn new(scheme: &PyCacheScheme, head_dim: u32, group: u32) -> PyResult<PyAttention> {
        Ok(PyAttention {
            inner: kernels(&scheme.inner, head_dim, group)?,
            scheme: scheme.inner,
            head_dim: head_dim as usize,
            group: group as usize,
        })
    }

    /// SPEC.md section 4 for one query `q` (float32 `[q_heads, head_dim]`, not yet scaled) over
    /// the full-precision tokens `fp_k`, `fp_v` (`[kv_heads, n, head_dim]`, n may be 0) and the
    /// quantized `span`, if any, with the scheme's calibration of the span's logits; query
    /// head `h` reads kv head `h / group`. Returns float32 `[q_heads, head_dim]`.
    #[pyo3(signature = (q, fp_k, fp_v, span = None))]
    fn attend<'py>(
        &self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        fp_k: &Bound<'py, PyAny>,
        fp_v: &Bound<'py, PyAny>,
        span: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (dims, q) = arrays::queries(q, 2)?;
        if dims[1] != self.head_dim || dims[0] % self.group != 0 {
            return Err(PyValueError::new_err(format!(
                "q has shape {dims:?}; it must be [q_heads, {}] with q_heads a positive multiple of {}",
                self.head_dim, self.group
            )));
        }
        let seq = Seq {
            q,
            fp: fp_pair(Some(fp_k), Some(fp_v))?,
            span: span.map(|s| span_arg(s, &self.scheme)).transpose()?,
        };
        let out = run(&self.inner, self.head_dim, self.group, dims[0], &[seq])?;
        array(py, out.into_iter().flatten().collect(), &dims)
    }
}

thread_local! {
    /// Compiled attention kernels by (scheme, head_dim, group), per thread (they are not
    /// `Send`).
    static KERNELS: RefCell<HashMap<(String, u32, u32), Rc<HostAttention>>> =
        RefCell::new(HashMap::new());
}

/// The attention kernels of `scheme` for `head_dim` and `group`, compiled once per thread.
fn kernels(scheme: &CacheScheme, head_dim: u32, group: u32) -> PyResult<Rc<HostAttention>> {
    let key = (scheme.to_string(), head_dim, group);
    if let Some(k) = KERNELS.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(k);
    }
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim,
        group,
    };
    let compiled = Rc::new(
        HostAttention::new(scheme, shape, None)
            .map_err(|e| PyValueError::new_err(e.to_string()))?,
    );
    KERNELS.with(|c| c.borrow_mut().insert(key, compiled.clone()));
    Ok(compiled)
}

/// The `i`-th item of a per-sequence argument: for one sequence the argument itself, for a
/// batch an item of its list (or tuple) of `batch` items; `None` stays `None`.
fn item<'py>(
    x: Option<&Bound<'py, PyAny>>,
    batch: Option<usize>,
    i: usize,
    what: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let (Some(x), Some(n)) = (x, batch) else {
        return Ok(x.cloned());
    };
    let len = match (x.downcast::<PyList>(), x.downcast::<PyTuple>()) {
        (Ok(l), _) => l.len(),
        (_, Ok(t)) => t.len(),
        _ => usize::MAX,
    };
    if len != n {
        return Err(PyValueError::new_err(format!(
            "for a batch of {n} queries, {what} must be a list of {n} items (None where absent)"
        )));
    }
    let it = x.get_item(i)?;
    Ok((!it.is_none()).then_some(it))
}

/// `decode_attention(q, scheme, span=None, fp_k=None, fp_v=None) -> out`: SPEC.md section 4
/// through kvq's generated host kernels. `q` is float32 `[q_heads, head_dim]` (one sequence)
/// or `[batch, q_heads, head_dim]`; `span` a `kvq.Span` or `((codes, zero, scale), (codes,
/// zero, scale))` from `kvq.quantize` under `scheme`'s key and value schemes; `fp_k`, `fp_v`
/// the full-precision tokens `[kv_heads, n, head_dim]` (float16, bfloat16 or float32). For a
/// batch, `span`, `fp_k` and `fp_v` are lists with an item (or None) per sequence, of any
/// lengths. Query head `h` reads kv head `h / (q_heads / kv_heads)`. Returns float32 of `q`'s
/// shape.
#[pyfunction]
#[pyo3(signature = (q, scheme, span = None, fp_k = None, fp_v = None))]
pub fn decode_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    scheme: &PyCacheScheme,
    span: Option<&Bound<'py, PyAny>>,
    fp_k: Option<&Bound<'py, PyAny>>,
    fp_v: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (dims, q) = arrays::queries(q, 0)?;
    let batch = (dims.len() == 3).then_some(dims[0]);
    let [q_heads, head_dim] = [dims[dims.len() - 2], dims[dims.len() - 1]];
    let per_seq = q_heads * head_dim;
    let mut seqs = Vec::new();
    for i in 0..batch.unwrap_or(1) {
        let s = item(span, batch, i, "span")?;
        let (k, v) = (item(fp_k, batch, i, "fp_k")?, item(fp_v, batch, i, "fp_v")?);
        seqs.push(Seq {
            q: q[i * per_seq..(i + 1) * per_seq].to_vec(),
            fp: fp_pair(k.as_ref(), v.as_ref())?,
            span: s.map(|s| span_arg(&s, &scheme.inner)).transpose()?,
        });
    }
    let kv = seqs
        .iter()
        .find_map(|s| s.sizes().0)
        .ok_or_else(|| PyValueError::new_err("nothing to attend: give a span or fp_k and fp_v"))?;
    if kv == 0 || q_heads % kv != 0 {
        return Err(PyValueError::new_err(format!(
            "{q_heads} query heads do not share {kv} kv heads evenly"
        )));
    }
    let group = q_heads / kv;
    check(&seqs, head_dim, group, q_heads)?;
    let attention = kernels(&scheme.inner, head_dim as u32, group as u32)?;
    let out = run(&attention, head_dim, group, q_heads, &seqs)?;
    array(py, out.into_iter().flatten().collect(), &dims)
}
