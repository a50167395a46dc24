//! numpy arrays in and out: dtype, rank, shape, contiguity and size checks, each failure a
//! `TypeError` or `ValueError` naming the argument.

use kvq::lower::InputType;
use kvq::{Scheme, Shape3};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// `x` as a C-contiguous numpy array of rank `rank`, named `what` in errors.
fn checked<'a, 'py>(
    x: &'a Bound<'py, PyAny>,
    what: &str,
    rank: usize,
) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    let a = x.downcast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a numpy array, not {}",
            x.get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string())
        ))
    })?;
    if a.ndim() != rank {
        return Err(PyValueError::new_err(format!(
            "{what} must have {rank} dimensions, has {} (shape {:?})",
            a.ndim(),
            a.shape()
        )));
    }
    if !a.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be C-contiguous (numpy.ascontiguousarray makes a copy that is)"
        )));
    }
    Ok(a)
}

fn dtype_name(a: &Bound<'_, PyUntypedArray>) -> String {
    a.dtype()
        .str()
        .map_or_else(|_| "?".to_string(), |s| s.to_string())
}

/// The sizes of a `[kv_heads, tokens, head_dim]` array, within kvq's limits.
fn dims3(a: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<[usize; 3]> {
    let s = a.shape();
    kvq_ir::limits::check_tensor(s[0] as u64, s[1] as u64, s[2] as u64)
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    Ok([s[0], s[1], s[2]])
}

/// The values of the K or V array `x` (`[kv_heads, tokens, head_dim]`, float16 or float32) as
/// f32 (exact), with their shape and input type.
pub fn input_values(x: &Bound<'_, PyAny>) -> PyResult<([usize; 3], Vec<f32>, InputType)> {
    let a = checked(x, "x", 3)?;
    let dims = dims3(a, "x")?;
    if let Ok(a) = a.downcast::<PyArrayDyn<f32>>() {
        let r = a.readonly();
        return Ok((dims, r.as_slice()?.to_vec(), InputType::F32));
    }
    if let Ok(a) = a.downcast::<PyArrayDyn<half::f16>>() {
        let r = a.readonly();
        let v = r.as_slice()?.iter().map(|h| h.to_f32()).collect();
        return Ok((dims, v, InputType::F16));
    }
    Err(PyTypeError::new_err(format!(
        "x must hold float16 or float32, not {}",
        dtype_name(a)
    )))
}

/// The span shape of a codes array `[kv_heads, tokens, head_dim * bits / 8]` under `scheme`.
pub fn shape3(codes: &Bound<'_, PyAny>, scheme: &Scheme) -> PyResult<Shape3> {
    let a = checked(codes, "codes", 3)?;
    let s = a.shape();
    let dim = s[2]
        .checked_mul(8)
        .map(|bits| bits / scheme.bits.width() as usize)
        .ok_or_else(|| PyValueError::new_err("codes: too many bytes per row"))?;
    kvq_ir::limits::check_tensor(s[0] as u64, s[1] as u64, dim as u64)
        .map_err(|e| PyValueError::new_err(format!("codes: {e}")))?;
    Ok(Shape3 {
        heads: s[0],
        tokens: s[1],
        dim,
    })
}

/// The bytes of a uint8 codes array (shape checked by [`shape3`]).
pub fn codes(codes: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let a = checked(codes, "codes", 3)?;
    let a = a.downcast::<PyArrayDyn<u8>>().map_err(|_| {
        PyTypeError::new_err(format!("codes must hold uint8, not {}", dtype_name(a)))
    })?;
    Ok(a.readonly().as_slice()?.to_vec())
}

/// The values of a float32 parameter array named `what`, of exactly `shape`.
pub fn f32_values(x: &Bound<'_, PyAny>, what: &str, shape: &[usize; 3]) -> PyResult<Vec<f32>> {
    let a = checked(x, what, 3)?;
    if a.shape() != shape {
        return Err(PyValueError::new_err(format!(
            "{what} has shape {:?}; the scheme and codes give {shape:?}",
            a.shape()
        )));
    }
    let a = a.downcast::<PyArrayDyn<f32>>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must hold float32, not {}", dtype_name(a)))
    })?;
    Ok(a.readonly().as_slice()?.to_vec())
}

/// A query: float32 `[q_heads, head_dim]`, q_heads a positive multiple of `group`.
pub fn query(q: &Bound<'_, PyAny>, head_dim: usize, group: usize) -> PyResult<(usize, Vec<f32>)> {
    let a = checked(q, "q", 2)?;
    let s = a.shape();
    if s[1] != head_dim || s[0] == 0 || s[0] % group != 0 {
        return Err(PyValueError::new_err(format!(
            "q has shape {s:?}; it must be [q_heads, {head_dim}] with q_heads a positive multiple of {group}"
        )));
    }
    let heads = s[0];
    let a = a
        .downcast::<PyArrayDyn<f32>>()
        .map_err(|_| PyTypeError::new_err(format!("q must hold float32, not {}", dtype_name(a))))?;
    Ok((heads, a.readonly().as_slice()?.to_vec()))
}
