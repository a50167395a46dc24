//! Arrays in and out: numpy arrays, CPU torch tensors and DLPack producers borrowed where they
//! lie; dtype, rank, shape, contiguity and size checks, each failure a `TypeError` or
//! `ValueError` naming the argument.

use half::{bf16, f16};
use kvq::backend::InputSlice;
use kvq::lower::InputType;
use kvq::{Scheme, Shape3, Tensor3};
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// `x` as a C-contiguous numpy array of rank `rank`, named `what` in errors. A torch tensor
/// or another DLPack producer is first viewed as a numpy array by `kvq._inputs.as_array`
/// (without a copy); the flag says whether its int16 elements are bfloat16 bits.
fn checked<'py>(
    x: &Bound<'py, PyAny>,
    what: &str,
    rank: usize,
) -> PyResult<(Bound<'py, PyUntypedArray>, bool)> {
    let (a, bf16) = match x.downcast::<PyUntypedArray>() {
        Ok(a) => (a.clone(), false),
        Err(_) => {
            let inputs = x.py().import("kvq._inputs")?;
            let (a, bf16): (Bound<'py, PyAny>, bool) =
                inputs.getattr("as_array")?.call1((x, what))?.extract()?;
            (a.downcast_into::<PyUntypedArray>()?, bf16)
        }
    };
    if a.ndim() != rank {
        return Err(PyValueError::new_err(format!(
            "{what} must have {rank} dimensions, has {} (shape {:?})",
            a.ndim(),
            a.shape()
        )));
    }
    if !a.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{what} must be C-contiguous (numpy.ascontiguousarray or torch's .contiguous() makes a copy that is)"
        )));
    }
    Ok((a, bf16))
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

/// A K or V array borrowed from Python, in its own element type.
pub enum Input<'py> {
    /// float16.
    F16(PyReadonlyArrayDyn<'py, f16>),
    /// bfloat16, as the bits of an int16 array (a torch bfloat16 tensor's view).
    BF16(PyReadonlyArrayDyn<'py, i16>),
    /// float32.
    F32(PyReadonlyArrayDyn<'py, f32>),
}

impl Input<'_> {
    /// The values where they lie.
    pub fn slice(&self) -> PyResult<InputSlice<'_>> {
        Ok(match self {
            Input::F16(a) => InputSlice::F16(a.as_slice()?),
            Input::BF16(a) => InputSlice::BF16(bytemuck::cast_slice::<i16, bf16>(a.as_slice()?)),
            Input::F32(a) => InputSlice::F32(a.as_slice()?),
        })
    }

    /// The values as an f32 tensor of `dims` (a copy; exact).
    pub fn tensor(&self, dims: [usize; 3]) -> PyResult<Tensor3> {
        Tensor3::new(dims, self.slice()?.to_f32()).map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// The K or V array `x` (`[kv_heads, tokens, head_dim]`; float16, bfloat16 or float32; a numpy
/// array, a CPU torch tensor or a DLPack producer), borrowed, with its shape.
pub fn input<'py>(x: &Bound<'py, PyAny>, what: &str) -> PyResult<([usize; 3], Input<'py>)> {
    let (a, bf16) = checked(x, what, 3)?;
    let dims = dims3(&a, what)?;
    if bf16 {
        if let Ok(a) = a.downcast::<PyArrayDyn<i16>>() {
            return Ok((dims, Input::BF16(a.readonly())));
        }
    } else if let Ok(a) = a.downcast::<PyArrayDyn<f32>>() {
        return Ok((dims, Input::F32(a.readonly())));
    } else if let Ok(a) = a.downcast::<PyArrayDyn<f16>>() {
        return Ok((dims, Input::F16(a.readonly())));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must hold float16, bfloat16 or float32, not {}",
        dtype_name(&a)
    )))
}

/// The values of `x` (as [`input`]) as an f32 tensor, with the input type they came in.
pub fn input_tensor(x: &Bound<'_, PyAny>, what: &str) -> PyResult<(Tensor3, InputType)> {
    let (dims, x) = input(x, what)?;
    Ok((x.tensor(dims)?, x.slice()?.input_type()))
}

/// The span shape of a codes array `[kv_heads, tokens, head_dim * bits / 8]` under `scheme`.
pub fn shape3(codes: &Bound<'_, PyAny>, scheme: &Scheme) -> PyResult<Shape3> {
    let (a, _) = checked(codes, "codes", 3)?;
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
    let (a, _) = checked(codes, "codes", 3)?;
    let a = a.downcast::<PyArrayDyn<u8>>().map_err(|_| {
        PyTypeError::new_err(format!("codes must hold uint8, not {}", dtype_name(&a)))
    })?;
    Ok(a.readonly().as_slice()?.to_vec())
}

/// The values of a float32 parameter array named `what`, of exactly `shape`.
pub fn f32_values(x: &Bound<'_, PyAny>, what: &str, shape: &[usize; 3]) -> PyResult<Vec<f32>> {
    let (a, _) = checked(x, what, 3)?;
    if a.shape() != shape {
        return Err(PyValueError::new_err(format!(
            "{what} has shape {:?}; the scheme and codes give {shape:?}",
            a.shape()
        )));
    }
    let a = a.downcast::<PyArrayDyn<f32>>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must hold float32, not {}", dtype_name(&a)))
    })?;
    Ok(a.readonly().as_slice()?.to_vec())
}

/// Queries: float32 `[q_heads, head_dim]` (`rank` 2), or either that or `[batch, q_heads,
/// head_dim]` (`rank` 0), no dimension zero, within kvq's limits; with its shape.
pub fn queries(q: &Bound<'_, PyAny>, rank: usize) -> PyResult<(Vec<usize>, Vec<f32>)> {
    let ranks: &[usize] = if rank == 0 { &[2, 3] } else { &[rank] };
    let a = match ranks.iter().find_map(|&r| checked(q, "q", r).ok()) {
        Some((a, _)) => a,
        // The error of the first rank allowed (the rank, contiguity or type).
        None => checked(q, "q", ranks[0])?.0,
    };
    let dims = a.shape().to_vec();
    let [q_heads, head_dim] = [dims[dims.len() - 2], dims[dims.len() - 1]];
    let batch = if dims.len() == 3 { dims[0] } else { 1 };
    if dims.contains(&0) {
        return Err(PyValueError::new_err(format!(
            "q has shape {dims:?}; no dimension may be 0"
        )));
    }
    kvq_ir::limits::check_tensor(batch as u64, q_heads as u64, head_dim as u64)
        .map_err(|e| PyValueError::new_err(format!("q: {e}")))?;
    let a = a.downcast::<PyArrayDyn<f32>>().map_err(|_| {
        PyTypeError::new_err(format!("q must hold float32, not {}", dtype_name(&a)))
    })?;
    Ok((dims, a.readonly().as_slice()?.to_vec()))
}
