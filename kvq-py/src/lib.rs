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
mod attention;

use kvq::backend::{self, Backend, BackendError};
use kvq::reference::PackedSpan;
use kvq::{CacheScheme, Scheme, Shape3};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use arrays::{f32_values, shape3};

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
pub struct PyCacheScheme {
    pub(crate) inner: CacheScheme,
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
pub(crate) fn backend_named(name: &str) -> PyResult<Backend> {
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
pub(crate) fn backend_error(e: BackendError) -> PyErr {
    match e {
        BackendError::Quant(q) => PyValueError::new_err(q.to_string()),
        BackendError::TooLarge(t) => PyValueError::new_err(t),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A numpy array of `data` with shape `dims`.
pub(crate) fn array<'py, T: numpy::Element>(
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

/// `quantize(x, scheme, backend="host") -> (codes, zero, scale)`: quantizes `x` of shape
/// `[kv_heads, tokens, head_dim]` (C-contiguous; float16, bfloat16 or float32; a numpy array,
/// a CPU torch tensor or a DLPack producer, read where it lies) under `scheme`.
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
    let (dims, x) = arrays::input(x, "x")?;
    let [heads, tokens, dim] = dims;
    let shape = Shape3 { heads, tokens, dim };
    let scheme = scheme.inner;
    // The kernel reads `x` where it lies; the GIL stays held so that no Python thread writes it
    // meanwhile.
    let span =
        backend::quantize_borrowed(x.slice()?, shape, &scheme, backend).map_err(backend_error)?;
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

/// The extension module.
#[pymodule]
fn _kvq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyScheme>()?;
    m.add_class::<PyCacheScheme>()?;
    m.add_class::<attention::PySpan>()?;
    m.add_class::<attention::PyAttention>()?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(attention::decode_attention, m)?)?;
    Ok(())
}
