//! [`Cuda`]: the cache's segments in CUDA device memory, spans quantized on the device by the
//! generated quantize kernels, decode attention by the generated attention kernels (module
//! `attend`).
//!
//! A `Cuda` device loads one bundle that `kvq compile --target sm_XX --input T --group G`
//! wrote for the cache's scheme pair (the `kvq` facade compiles one in memory): the key and
//! value quantize kernels and the attention kernels, all reading keys and values of type `T`
//! (f32, f16 or bf16), the type the cache stores its full-precision rows in.

mod attend;

use std::fmt;
use std::ops::Range;

use kvq_ir::lower::attention::AttentionSchedule;
use kvq_ir::lower::InputType;
use kvq_ir::reference::quantize::{check_shape, param_shape, row_bytes};
use kvq_ir::reference::QuantError;
use kvq_ir::{CacheScheme, ParamType, Scheme, Shape3, Tensor3};

use super::device::{CacheElem, Device, DeviceError, DeviceQuantError};
use super::fp_segment::{with_fp, FpElem};
use super::segment::{QuantPart, StoredParams};
use super::{CacheError, ModelShape, QueryRef, VisualKvCache};
use crate::cuda::{Bundle, CudaError, CudaRuntime, DeviceBuffer, Kernel, NamedArgs, Role};

/// CUDA device memory and the generated kernels of one scheme pair (see the module docs).
pub struct Cuda {
    rt: CudaRuntime,
    name: String,
    scheme: CacheScheme,
    fp: InputType,
    head_dim: usize,
    group: usize,
    schedule: AttentionSchedule,
    key_quantize: Kernel,
    value_quantize: Kernel,
    stats: Option<Kernel>,
    partial: Kernel,
    combine: Kernel,
}

impl fmt::Debug for Cuda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cuda")
            .field("name", &self.name)
            .field("scheme", &self.scheme)
            .field("head_dim", &self.head_dim)
            .field("group", &self.group)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

fn bundle_error(why: String) -> CudaError {
    CudaError::BundleMismatch(why)
}

impl Cuda {
    /// Loads `bundle`'s kernels for `scheme` into `rt`'s context. The bundle must hold both
    /// quantize kernels and the attention kernels of exactly this pair (calibration included);
    /// its input type (f32, f16 or bf16) is the type the cache's full-precision rows are
    /// stored in. A mismatch is a [`CudaError::BundleMismatch`].
    pub fn new(rt: CudaRuntime, bundle: &Bundle, scheme: &CacheScheme) -> Result<Cuda, CudaError> {
        let m = &bundle.manifest;
        let fp = [InputType::F32, InputType::F16, InputType::BF16]
            .into_iter()
            .find(|t| t.name() == m.input)
            .ok_or_else(|| {
                bundle_error(format!("the bundle's input type {} is unknown", m.input))
            })?;
        let group = m.group.ok_or_else(|| {
            bundle_error("the bundle has no attention kernels (compile with --group)".into())
        })?;
        let (key, value, pair) = (
            scheme.key.to_string(),
            scheme.value.to_string(),
            scheme.to_string(),
        );
        // A quantize kernel serves keys or values alike (equal schemes share one kernel).
        let find = |role: Role, text: &str| {
            m.kernels.iter().find(|k| {
                let same_role = k.role == role || (role.is_quantize() && k.role.is_quantize());
                same_role && k.scheme == text
            })
        };
        let need = |role: Role, text: &str| {
            find(role, text).ok_or_else(|| {
                bundle_error(format!(
                    "the bundle has no {} kernel for ({text})",
                    role.name()
                ))
            })
        };
        let partial = need(Role::AttentionPartial, &pair)?;
        // The attention kernels read full-precision rows of the type the quantize kernels
        // read: the type the cache stores them in.
        let rows = partial.entry.params.iter().find_map(|p| match p {
            crate::cuda::ParamSpec::Buffer { name, elem, .. } if name == "fp_k" => Some(*elem),
            _ => None,
        });
        if rows != Some(crate::cuda::Elem::from_scalar(fp.scalar())) {
            return Err(bundle_error(format!(
                "the attention kernels read {} rows and the quantize kernels {} input; a cache \
                 bundle needs them equal (kvq compile --fp {})",
                rows.map_or("no", |e| e.name()),
                fp.name(),
                fp.name()
            )));
        }
        let schedule: AttentionSchedule = serde_json::from_value(partial.schedule.clone())
            .map_err(|e| {
                bundle_error(format!(
                    "the attention schedule in the manifest is incomplete ({e}); recompile the bundle"
                ))
            })?;
        let stats = match scheme.calibrate {
            Some(_) => Some(rt.load(bundle, &need(Role::AttentionStats, &pair)?.entry.name)?),
            None => None,
        };
        let load = |role, text: &str| rt.load(bundle, &need(role, text)?.entry.name);
        let cuda = Cuda {
            name: format!("cuda ({})", rt.device_name()?),
            scheme: *scheme,
            fp,
            head_dim: m.head_dim as usize,
            group: group as usize,
            schedule,
            key_quantize: load(Role::KeyQuantize, &key)?,
            value_quantize: load(Role::ValueQuantize, &value)?,
            stats,
            partial: rt.load(bundle, &partial.entry.name)?,
            combine: load(Role::AttentionCombine, &pair)?,
            rt,
        };
        Ok(cuda)
    }

    /// The runtime (context and stream).
    pub fn runtime(&self) -> &CudaRuntime {
        &self.rt
    }

    /// The type the bundle's kernels read keys and values in: the full-precision row type of
    /// a cache on this device.
    pub fn fp(&self) -> InputType {
        self.fp
    }

    /// The attention schedule the bundle was compiled with.
    pub fn schedule(&self) -> &AttentionSchedule {
        &self.schedule
    }
}

fn device_error(op: &str) -> impl Fn(CudaError) -> DeviceError + '_ {
    move |e| DeviceError::new(op, e)
}

/// Zeros of `ty` on the device.
fn zeros_of(rt: &CudaRuntime, ty: ParamType, len: usize) -> Result<DeviceBuffer, CudaError> {
    match ty {
        ParamType::F16 => rt.zeros::<half::f16>(len),
        ParamType::F32 => rt.zeros::<f32>(len),
    }
}

impl Device for Cuda {
    type Buf<T: CacheElem> = DeviceBuffer;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn check_model(
        &self,
        shape: ModelShape,
        scheme: &CacheScheme,
        fp: InputType,
    ) -> Result<(), DeviceError> {
        let bad = |why: String| {
            Err(DeviceError::new(
                "checking the cache against the bundle",
                why,
            ))
        };
        if *scheme != self.scheme {
            return bad(format!(
                "the cache's scheme ({scheme}) is not the bundle's ({})",
                self.scheme
            ));
        }
        if fp != self.fp {
            return bad(format!(
                "the cache stores {} rows, the bundle's kernels read {}",
                fp.name(),
                self.fp.name()
            ));
        }
        if shape.head_dim != self.head_dim {
            return bad(format!(
                "head_dim {} differs from the bundle's {}",
                shape.head_dim, self.head_dim
            ));
        }
        if shape.group() != self.group {
            return bad(format!(
                "{} query heads per kv head differ from the bundle's {}",
                shape.group(),
                self.group
            ));
        }
        Ok(())
    }

    fn zeros<T: CacheElem>(&self, len: usize) -> Result<DeviceBuffer, DeviceError> {
        self.rt
            .zeros::<T>(len)
            .map_err(device_error("allocating device memory"))
    }

    fn upload<T: CacheElem>(&self, data: &[T]) -> Result<DeviceBuffer, DeviceError> {
        self.rt
            .upload(data)
            .map_err(device_error("copying to the device"))
    }

    fn write<T: CacheElem>(
        &self,
        dst: &mut DeviceBuffer,
        at: usize,
        src: &[T],
    ) -> Result<(), DeviceError> {
        self.rt
            .write_at(dst, at, src)
            .map_err(device_error("copying to the device"))
    }

    fn copy<T: CacheElem>(
        &self,
        dst: &mut DeviceBuffer,
        at: usize,
        src: &DeviceBuffer,
        from: Range<usize>,
    ) -> Result<(), DeviceError> {
        self.rt
            .copy_at::<T>(dst, at, src, from)
            .map_err(device_error("copying on the device"))
    }

    fn download<T: CacheElem>(&self, src: &DeviceBuffer) -> Result<Vec<T>, DeviceError> {
        self.rt
            .download(src)
            .map_err(device_error("copying to the host"))
    }

    fn download_range<T: CacheElem>(
        &self,
        src: &DeviceBuffer,
        range: Range<usize>,
    ) -> Result<Vec<T>, DeviceError> {
        let mut part = self.zeros::<T>(range.len())?;
        self.copy::<T>(&mut part, 0, src, range)?;
        self.download(&part)
    }

    fn len<T: CacheElem>(buf: &DeviceBuffer) -> usize {
        buf.len()
    }

    fn attend(
        cache: &VisualKvCache<Cuda>,
        layer: usize,
        queries: &[QueryRef<'_>],
    ) -> Result<Vec<Vec<f32>>, CacheError> {
        cache.attend_on_gpu(layer, queries)
    }

    fn quantize(&self, x: &Tensor3, scheme: &Scheme) -> Result<QuantPart<Self>, DeviceQuantError> {
        check_shape(scheme, x.shape())?;
        with_fp!(self.fp, T => {
            let data: Vec<T> = x.data().iter().map(|&v| T::from_f32(v)).collect();
            let input = self.upload(&data)?;
            self.quantize_buf::<T>(&input, x.shape(), scheme)
        })
    }

    fn quantize_buf<T: FpElem>(
        &self,
        x: &DeviceBuffer,
        shape: Shape3,
        scheme: &Scheme,
    ) -> Result<QuantPart<Self>, DeviceQuantError> {
        check_shape(scheme, shape)?;
        let kernel = if *scheme == self.scheme.key {
            &self.key_quantize
        } else if *scheme == self.scheme.value {
            &self.value_quantize
        } else {
            return Err(QuantError::Malformed(format!(
                "the device has no quantize kernel for ({scheme})"
            ))
            .into());
        };
        let too_big = || QuantError::Malformed(format!("a span of {shape:?} is too large"));
        let heads = u32::try_from(shape.heads).map_err(|_| too_big())?;
        let tokens = u32::try_from(shape.tokens).map_err(|_| too_big())?;
        let elems = shape.checked_len().ok_or_else(too_big)?;
        let want = crate::cuda::Elem::from_scalar(self.fp.scalar());
        if x.len() != elems || x.elem() != want || T::TYPE != self.fp {
            return Err(QuantError::Malformed(format!(
                "a span of {shape:?} needs {elems} {} elements, the buffer holds {} {}",
                want.name(),
                x.len(),
                x.elem().name()
            ))
            .into());
        }
        let codes = shape
            .heads
            .checked_mul(shape.tokens)
            .and_then(|n| n.checked_mul(row_bytes(scheme, shape.dim)))
            .ok_or_else(too_big)?;
        let params: usize = param_shape(scheme, shape).iter().product();
        let launch = || -> Result<NamedArgs<'_>, CudaError> {
            let mut args = NamedArgs::default();
            args.share("x", x);
            args.own("codes", self.rt.zeros::<u8>(codes)?);
            args.own("zero", zeros_of(&self.rt, scheme.params, params)?);
            args.own("scale", zeros_of(&self.rt, scheme.params, params)?);
            args.own("status", self.rt.zeros::<u32>(1)?);
            args.scalar("heads", heads);
            args.scalar("tokens", tokens);
            args.launch(&self.rt, kernel)?;
            Ok(args)
        };
        let mut args = launch().map_err(device_error("quantizing on the device"))?;
        let status = args
            .buffer("status")
            .map(|b| self.rt.download::<u32>(b))
            .transpose()
            .map_err(device_error("reading the quantize status"))?;
        if status.as_deref() != Some(&[0]) {
            // The kernel flagged a non-finite value or an overflow: the reference names it.
            let input = self.download::<T>(x)?;
            let wide = input.iter().map(|&v| v.to_f32()).collect();
            let exact = Tensor3::new(shape.dims(), wide).map_err(QuantError::from)?;
            return Err(match kvq_ir::reference::quantize(&exact, scheme) {
                Err(e) => e.into(),
                Ok(_) => QuantError::Malformed(format!(
                    "the device's quantize kernel reported status {status:?} on valid input"
                ))
                .into(),
            });
        }
        let mut take = |name: &str| match args.buffers.remove(name) {
            Some(crate::cuda::NamedBuffer::Owned(b)) => Ok(b),
            _ => Err(QuantError::Malformed(format!(
                "no {name} buffer after quantizing"
            ))),
        };
        let codes = take("codes")?;
        let (zero, scale) = (take("zero")?, take("scale")?);
        let params = match scheme.params {
            ParamType::F16 => StoredParams::F16 { zero, scale },
            ParamType::F32 => StoredParams::F32 { zero, scale },
        };
        Ok(QuantPart::from_buffers(*scheme, shape, codes, params)?)
    }
}
