//! `kvq._kvq`, the extension module behind the Python package `kvq`: schemes parsed by kvq's one
//! parser, and quantize / dequantize of `[kv_heads, tokens, head_dim]` numpy arrays through the
//! same backends as `kvq quantize` (the generated host kernels by default), so that Python gets
//! the codes and parameters of SPEC.md section 3 bit for bit.
//!
//! Bad input raises before anything runs: `TypeError` for what is not a float16/float32 (or, for
//! codes, uint8) numpy array, `ValueError` for a wrong rank or shape, a non-contiguous array,
//! sizes beyond kvq's limits, non-finite values, and scheme text that does not parse (with the
//! parser's message, columns and hints, as the command line prints them).

mod arrays;

use kvq::backend::{self, Backend, BackendError};
use kvq::reference::PackedSpan;
use kvq::{CacheScheme, Scheme, Tensor3};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use arrays::{f32_values, input_values, shape3};

/// A quantization scheme, parsed from kvq's text form.
#[pyclass(name = "Scheme", module = "kvq", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
struct PyScheme {
    inner: Scheme,
}

#[pymethods]
impl PyScheme {
    /// Parses `text`, e.g. `"bits = 1, axis = channel, group = all, rule = shrink(0.5)"`;
    /// raises `ValueError` with the parser's message.
    #[new]
    fn new(text: &str) -> PyResult<PyScheme> {
        Scheme::parse(text)
            .map(|inner| PyScheme { inner })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Bits per code.
    #[getter]
    fn bits(&self) -> u32 {
        self.inner.bits.width()
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!("kvq.Scheme({:?})", self.inner.to_string())
    }
}

/// A cache scheme: key and value schemes and the optional calibration of the span's logits.
#[pyclass(name = "CacheScheme", module = "kvq", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
struct PyCacheScheme {
    inner: CacheScheme,
}

#[pymethods]
impl PyCacheScheme {
    /// Parses `text`, e.g. `"key(...), value(...), calibrate = 3"`; raises `ValueError` with the
    /// parser's message.
    #[new]
    fn new(text: &str) -> PyResult<PyCacheScheme> {
        CacheScheme::parse(text)
            .map(|inner| PyCacheScheme { inner })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The key scheme.
    #[getter]
    fn key(&self) -> PyScheme {
        PyScheme {
            inner: self.inner.key,
        }
    }

    /// The value scheme.
    #[getter]
    fn value(&self) -> PyScheme {
        PyScheme {
            inner: self.inner.value,
        }
    }

    /// The calibration `d` of the span's logits (SPEC.md section 4), or `None`.
    #[getter]
    fn calibrate(&self) -> Option<f32> {
        self.inner.calibrate.map(|d| d.get())
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!("kvq.CacheScheme({:?})", self.inner.to_string())
    }
}

/// The backend named `name`.
fn backend_named(name: &str) -> PyResult<Backend> {
    match name {
        "host" => Ok(Backend::Host),
        "reference" => Ok(Backend::Reference),
        "interp" => Ok(Backend::Interp),
        other => Err(PyValueError::new_err(format!(
            "backend {other:?}: one of \"host\", \"reference\", \"interp\""
        ))),
    }
}

/// A backend error as Python sees it: the input's fault is a `ValueError`, kvq's a
/// `RuntimeError`.
fn backend_error(e: BackendError) -> PyErr {
    match e {
        BackendError::Quant(q) => PyValueError::new_err(q.to_string()),
        BackendError::TooLarge(t) => PyValueError::new_err(t),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A numpy array of `data` with shape `dims`.
fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    dims: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    PyArray1::from_vec(py, data).reshape(dims)
}

/// Codes, zero points and scales as numpy arrays.
type Packed<'py> = (
    Bound<'py, PyArrayDyn<u8>>,
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyArrayDyn<f32>>,
);

/// `quantize(x, scheme, backend="host") -> (codes, zero, scale)`: quantizes the float16 or
/// float32 array `x` of shape `[kv_heads, tokens, head_dim]` (C-contiguous) under `scheme`.
/// `codes` is uint8 `[kv_heads, tokens, head_dim * bits / 8]`; `zero` and `scale` are float32
/// in SPEC.md section 3's parameter shape, holding the stored parameters' values.
#[pyfunction]
#[pyo3(signature = (x, scheme, backend = "host"))]
fn quantize<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    scheme: &PyScheme,
    backend: &str,
) -> PyResult<Packed<'py>> {
    let backend = backend_named(backend)?;
    let (dims, data, input) = input_values(x)?;
    let tensor = Tensor3::new(dims, data).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let scheme = scheme.inner;
    let span = py
        .allow_threads(|| backend::quantize(&tensor, input, &scheme, backend))
        .map_err(backend_error)?;
    let shape = span.shape;
    let row = span.codes.len() / (shape.heads * shape.tokens).max(1);
    let params = kvq::reference::quantize::param_shape(&scheme, shape);
    Ok((
        array(py, span.codes, &[shape.heads, shape.tokens, row])?,
        array(py, span.zero, &params)?,
        array(py, span.scale, &params)?,
    ))
}

/// `dequantize(codes, zero, scale, scheme, backend="host") -> x`: the float32 array
/// `[kv_heads, tokens, head_dim]` of `zero + scale * code` (SPEC.md section 3) from `quantize`'s
/// outputs (codes uint8 `[kv_heads, tokens, head_dim * bits / 8]`, parameters float32 in the
/// scheme's parameter shape).
#[pyfunction]
#[pyo3(signature = (codes, zero, scale, scheme, backend = "host"))]
fn dequantize<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    zero: &Bound<'py, PyAny>,
    scale: &Bound<'py, PyAny>,
    scheme: &PyScheme,
    backend: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let backend = backend_named(backend)?;
    let scheme = scheme.inner;
    let shape = shape3(codes, &scheme)?;
    let params = kvq::reference::quantize::param_shape(&scheme, shape);
    let span = PackedSpan {
        scheme,
        shape,
        codes: arrays::codes(codes)?,
        zero: f32_values(zero, "zero", &params)?,
        scale: f32_values(scale, "scale", &params)?,
    };
    let input = kvq::lower::InputType::F32;
    let x = py
        .allow_threads(|| backend::dequantize(&span, input, backend))
        .map_err(backend_error)?;
    array(py, x.data().to_vec(), &shape.dims())
}

/// A quantized span: keys and values `[kv_heads, tokens, head_dim]` packed under a cache
/// scheme's key and value schemes (SPEC.md section 3), held in Rust for [`PyAttention::attend`].
#[pyclass(name = "Span", module = "kvq", frozen)]
#[derive(Debug)]
struct PySpan {
    k: PackedSpan,
    v: PackedSpan,
}

#[pymethods]
impl PySpan {
    /// Quantizes `k` and `v` (float16 or float32, `[kv_heads, tokens, head_dim]`, the same
    /// shape) under `scheme`'s key and value schemes.
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
        let (kd, kx, ki) = input_values(k)?;
        let (vd, vx, vi) = input_values(v)?;
        if kd != vd {
            return Err(PyValueError::new_err(format!(
                "k has shape {kd:?} and v {vd:?}; they must be the same"
            )));
        }
        let tensor = |d, x| Tensor3::new(d, x).map_err(|e| PyValueError::new_err(e.to_string()));
        let (kt, vt) = (tensor(kd, kx)?, tensor(vd, vx)?);
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

/// Decode attention through kvq's generated host kernels for one cache scheme, head_dim and
/// GQA group (compiled once, through the compile cache).
#[pyclass(name = "Attention", module = "kvq", frozen, unsendable)]
struct PyAttention {
    inner: kvq::attention::HostAttention,
    head_dim: usize,
    group: usize,
}

#[pymethods]
impl PyAttention {
    /// The kernels of `scheme` for `head_dim` channels and `group` query heads per kv head.
    #[new]
    fn new(scheme: &PyCacheScheme, head_dim: u32, group: u32) -> PyResult<PyAttention> {
        let shape = kvq::lower::attention::AttentionShape { head_dim, group };
        let inner = kvq::attention::HostAttention::new(&scheme.inner, shape, None)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyAttention {
            inner,
            head_dim: head_dim as usize,
            group: group as usize,
        })
    }

    /// SPEC.md section 4 for one query `q` (float32 `[q_heads, head_dim]`, not yet scaled) over
    /// the full-precision tokens `fp_k`, `fp_v` (float32 `[kv_heads, n, head_dim]`, n may be 0)
    /// and the quantized `span`, if any, with the scheme's calibration of the span's logits;
    /// query head `h` reads kv head `h / group`. Returns float32 `[q_heads, head_dim]`.
    #[pyo3(signature = (q, fp_k, fp_v, span = None))]
    fn attend<'py>(
        &self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        fp_k: &Bound<'py, PyAny>,
        fp_v: &Bound<'py, PyAny>,
        span: Option<&PySpan>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (q_heads, q) = arrays::query(q, self.head_dim, self.group)?;
        let kv = q_heads / self.group;
        let (kd, kx, _) = input_values(fp_k)?;
        let (vd, vx, _) = input_values(fp_v)?;
        let want = [kv, kd[1], self.head_dim];
        if kd != want || vd != want {
            return Err(PyValueError::new_err(format!(
                "fp_k {kd:?} and fp_v {vd:?} must both be {want:?}"
            )));
        }
        let tensor = |d, x| Tensor3::new(d, x).map_err(|e| PyValueError::new_err(e.to_string()));
        let fp = match kd[1] {
            0 => None,
            _ => Some((tensor(kd, kx)?, tensor(vd, vx)?)),
        };
        let seq = kvq::attention::SeqData {
            q: &q,
            fp: fp.as_ref().map(|(k, v)| (k, v)),
            span: span.map(|s| (&s.k, &s.v)),
        };
        let out = self
            .inner
            .attend(kv, &[seq])
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let out = out.into_iter().next().unwrap_or_default();
        array(py, out, &[q_heads, self.head_dim])
    }
}

/// The extension module.
#[pymodule]
fn _kvq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyScheme>()?;
    m.add_class::<PyCacheScheme>()?;
    m.add_class::<PySpan>()?;
    m.add_class::<PyAttention>()?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    Ok(())
}
