//! Where a cache's segments live: the [`Device`] abstraction (storage and span quantization)
//! under [`VisualKvCache`](super::VisualKvCache), and [`Host`], its host-memory implementation.
//!
//! The cache's logic (segments, growth, ragged batches, memory accounting, export and import,
//! errors that leave it unchanged) is written once over a `Device`. A device stores typed
//! buffers ([`Device::Buf`]), copies between them and the host, and quantizes a span into its
//! own memory, and attends over the cache's buffers: [`Host`] with the hand-written reference
//! path (or, through `attend_with`, an injected [`AttentionKernel`](super::AttentionKernel)), the
//! CUDA device (`kvq_runtime::cache::Cuda`) with the generated PTX kernels.

use std::fmt;
use std::ops::Range;

use half::f16;
use kvq_ir::lower::InputType;
use kvq_ir::reference::QuantError;
use kvq_ir::{CacheScheme, Scheme, Shape3, Tensor3};
use thiserror::Error;

use super::fp_segment::FpElem;
use super::segment::QuantPart;
use super::{CacheError, ModelShape, QueryRef, ReferenceQuantizer, SpanQuantizer, VisualKvCache};

/// An element type a cache buffer holds: `u8` codes, `f16`, `bf16` or `f32` values.
#[cfg(feature = "cuda")]
pub trait CacheElem:
    Copy + Default + fmt::Debug + Send + Sync + 'static + crate::cuda::DeviceElem
{
}
/// An element type a cache buffer holds: `u8` codes, `f16`, `bf16` or `f32` values.
#[cfg(not(feature = "cuda"))]
pub trait CacheElem: Copy + Default + fmt::Debug + Send + Sync + 'static {}

impl CacheElem for u8 {}
impl CacheElem for f16 {}
impl CacheElem for half::bf16 {}
impl CacheElem for f32 {}

/// A device operation that failed (allocation, copy, launch); nothing of the cache changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{op}: {message}")]
pub struct DeviceError {
    /// What was being done, e.g. "allocating device memory".
    pub op: String,
    /// The device's own message.
    pub message: String,
}

impl DeviceError {
    /// An error of `op` with `message`.
    pub fn new(op: impl Into<String>, message: impl fmt::Display) -> DeviceError {
        DeviceError {
            op: op.into(),
            message: message.to_string(),
        }
    }
}

/// Why a device could not quantize a span.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DeviceQuantError {
    /// The quantizer refused the input or returned a malformed span.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The quantizer returned a span of another scheme or shape than it was asked for (the
    /// cache reports which, for keys or values).
    #[error("the quantizer returned a span of ({scheme}), {shape:?}")]
    Mismatch {
        /// The span's scheme.
        scheme: Scheme,
        /// The span's shape.
        shape: kvq_ir::Shape3,
    },
}

/// Storage and span quantization for a [`VisualKvCache`](super::VisualKvCache).
///
/// Every method checks its ranges and returns an error instead of panicking. Buffers are only
/// ever passed back to the device that made them.
pub trait Device: fmt::Debug {
    /// A buffer of `T` in the device's memory.
    type Buf<T: CacheElem>: fmt::Debug;

    /// A one-line name, e.g. "host" or "cuda:0 (NVIDIA H100 80GB HBM3)".
    fn name(&self) -> String;

    /// `len` zeros.
    fn zeros<T: CacheElem>(&self, len: usize) -> Result<Self::Buf<T>, DeviceError>;

    /// A copy of `data`.
    fn upload<T: CacheElem>(&self, data: &[T]) -> Result<Self::Buf<T>, DeviceError>;

    /// Writes `src` into `dst` from element `at`.
    fn write<T: CacheElem>(
        &self,
        dst: &mut Self::Buf<T>,
        at: usize,
        src: &[T],
    ) -> Result<(), DeviceError>;

    /// Copies elements `from` of `src` into `dst` from element `at`.
    fn copy<T: CacheElem>(
        &self,
        dst: &mut Self::Buf<T>,
        at: usize,
        src: &Self::Buf<T>,
        from: Range<usize>,
    ) -> Result<(), DeviceError>;

    /// The whole buffer, on the host.
    fn download<T: CacheElem>(&self, src: &Self::Buf<T>) -> Result<Vec<T>, DeviceError>;

    /// Elements `range` of `src`, on the host.
    fn download_range<T: CacheElem>(
        &self,
        src: &Self::Buf<T>,
        range: Range<usize>,
    ) -> Result<Vec<T>, DeviceError>;

    /// Elements of `buf`.
    fn len<T: CacheElem>(buf: &Self::Buf<T>) -> usize;

    /// Checks that the device can serve a cache of `shape` under `scheme` storing full-precision
    /// rows as `fp` (a GPU device's kernels are compiled for one head_dim, group, scheme pair
    /// and row type); the host serves any.
    fn check_model(
        &self,
        shape: ModelShape,
        scheme: &CacheScheme,
        fp: InputType,
    ) -> Result<(), DeviceError> {
        let _ = (shape, scheme, fp);
        Ok(())
    }

    /// Decode attention at `layer` for a batch over `cache`'s own storage (SPEC.md section 4):
    /// what [`VisualKvCache::attend`] runs. Every query is checked before any is computed.
    fn attend(
        cache: &VisualKvCache<Self>,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<Vec<f32>>, CacheError>
    where
        Self: Sized;

    /// Quantizes `x` = `[kv_heads, tokens, head_dim]` under `scheme` (SPEC.md sections 2-3) into
    /// device memory. The cache checks the result's scheme and shape.
    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<QuantPart<Self>, DeviceQuantError>
    where
        Self: Sized;

    /// As [`quantize`](Device::quantize), for `x` of `shape` already in the device's memory
    /// (`shape`'s element count; a buffer of another length is refused). A non-finite input
    /// or a parameter overflow is the reference's typed error, with its location in `x`.
    fn quantize_buf<T: FpElem>(
        &self,
        x: &Self::Buf<T>,
        shape: Shape3,
        scheme: &Scheme,
    ) -> Result<QuantPart<Self>, DeviceQuantError>
    where
        Self: Sized;
}

/// Host memory: buffers are `Vec`s, spans are quantized by a [`SpanQuantizer`] (the reference
/// one, or the `kvq` facade's generated host code).
#[derive(Clone, Copy, Default)]
pub struct Host<Q = ReferenceQuantizer> {
    /// Quantizes the visual spans.
    pub quantizer: Q,
}

impl<Q> fmt::Debug for Host<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Host")
    }
}

/// `dst[at..at + n]`, or an error naming the overrun.
fn window<T>(dst: &mut [T], at: usize, n: usize) -> Result<&mut [T], DeviceError> {
    let len = dst.len();
    at.checked_add(n)
        .and_then(|end| dst.get_mut(at..end))
        .ok_or_else(|| {
            DeviceError::new(
                "copying within host memory",
                format!("{n} elements at {at} overrun a buffer of {len}"),
            )
        })
}

impl<Q: SpanQuantizer> Device for Host<Q> {
    type Buf<T: CacheElem> = Vec<T>;

    fn name(&self) -> String {
        "host".to_string()
    }

    fn zeros<T: CacheElem>(&self, len: usize) -> Result<Vec<T>, DeviceError> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|e| DeviceError::new("allocating host memory", e))?;
        v.resize(len, T::default());
        Ok(v)
    }

    fn upload<T: CacheElem>(&self, data: &[T]) -> Result<Vec<T>, DeviceError> {
        let mut v = Vec::new();
        v.try_reserve_exact(data.len())
            .map_err(|e| DeviceError::new("allocating host memory", e))?;
        v.extend_from_slice(data);
        Ok(v)
    }

    fn write<T: CacheElem>(
        &self,
        dst: &mut Vec<T>,
        at: usize,
        src: &[T],
    ) -> Result<(), DeviceError> {
        window(dst, at, src.len())?.copy_from_slice(src);
        Ok(())
    }

    fn copy<T: CacheElem>(
        &self,
        dst: &mut Vec<T>,
        at: usize,
        src: &Vec<T>,
        from: Range<usize>,
    ) -> Result<(), DeviceError> {
        let part = src.get(from.clone()).ok_or_else(|| {
            DeviceError::new(
                "copying within host memory",
                format!("{from:?} is outside a buffer of {}", src.len()),
            )
        })?;
        window(dst, at, part.len())?.copy_from_slice(part);
        Ok(())
    }

    fn download<T: CacheElem>(&self, src: &Vec<T>) -> Result<Vec<T>, DeviceError> {
        Ok(src.clone())
    }

    fn download_range<T: CacheElem>(
        &self,
        src: &Vec<T>,
        range: Range<usize>,
    ) -> Result<Vec<T>, DeviceError> {
        let part = src.get(range.clone()).ok_or_else(|| {
            DeviceError::new(
                "reading host memory",
                format!("{range:?} is outside a buffer of {}", src.len()),
            )
        })?;
        self.upload(part)
    }

    fn len<T: CacheElem>(buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn attend(
        cache: &VisualKvCache<Self>,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        cache.attend_on_host(layer, queries)
    }

    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<QuantPart<Self>, DeviceQuantError> {
        let span = self.quantizer.quantize(x, scheme)?;
        if span.scheme != *scheme || span.shape != x.shape() {
            return Err(DeviceQuantError::Mismatch {
                scheme: span.scheme,
                shape: span.shape,
            });
        }
        QuantPart::from_span(self, span)
    }

    fn quantize_buf<T: FpElem>(
        &self,
        x: &Vec<T>,
        shape: Shape3,
        scheme: &Scheme,
    ) -> Result<QuantPart<Self>, DeviceQuantError> {
        let wide = x.iter().map(|&v| v.to_f32()).collect();
        let x = Tensor3::new(shape.dims(), wide).map_err(QuantError::from)?;
        self.quantize(&x, scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_copies_check_their_ranges() {
        let host = Host::<ReferenceQuantizer>::default();
        let mut dst = host.zeros::<f32>(4).unwrap();
        host.write(&mut dst, 1, &[1.0, 2.0]).unwrap();
        assert_eq!(dst, [0.0, 1.0, 2.0, 0.0]);
        let src = host.upload(&[5.0f32, 6.0, 7.0]).unwrap();
        host.copy(&mut dst, 2, &src, 1..3).unwrap();
        assert_eq!(dst, [0.0, 1.0, 6.0, 7.0]);
        // Past either end, or an overflowing offset: an error, the buffer unchanged.
        assert!(host.write(&mut dst, 3, &[1.0, 2.0]).is_err());
        assert!(host.write(&mut dst, usize::MAX, &[1.0]).is_err());
        assert!(host.copy(&mut dst, 0, &src, 2..4).is_err());
        assert!(host.copy(&mut dst, 3, &src, 0..2).is_err());
        assert_eq!(dst, [0.0, 1.0, 6.0, 7.0]);
        assert_eq!(host.download(&dst).unwrap(), dst);
        assert_eq!(<Host as Device>::len(&dst), 4);
        assert!(host.zeros::<u8>(usize::MAX).is_err());
    }
}
