//! Full-precision segments: a run of tokens that can grow ([`FpSegment`]), stored as f32, or as
//! f16 / bf16 when the cache is built so ([`FpElem`]), and where their rows come from ([`Rows`]).

use std::borrow::Cow;
use std::ops::Range;

use half::{bf16, f16};
use kvq_ir::lower::InputType;
use kvq_ir::Tensor3;

use super::device::{CacheElem, Device, DeviceError, Host};
use super::SpanQuantizer;

/// Smallest capacity, in tokens, a growing segment allocates.
const MIN_CAPACITY: usize = 8;

/// A key and a value buffer of `T` on device `D`.
pub type KvPair<D, T> = (<D as Device>::Buf<T>, <D as Device>::Buf<T>);

/// Key and value buffers of a segment on device `D`, in the cache's full-precision type.
#[derive(Debug)]
pub enum FpBufs<D: Device> {
    /// f32 rows.
    F32(D::Buf<f32>, D::Buf<f32>),
    /// f16 rows.
    F16(D::Buf<f16>, D::Buf<f16>),
    /// bf16 rows.
    BF16(D::Buf<bf16>, D::Buf<bf16>),
}

/// An element type full-precision rows are stored in: f32, or f16 / bf16 (half the memory;
/// values given as f32 are rounded to nearest even, exact for values that came from the type).
pub trait FpElem: CacheElem {
    /// Its [`InputType`].
    const TYPE: InputType;
    /// `x` rounded to this type.
    fn from_f32(x: f32) -> Self;
    /// The exact f32 of this value.
    fn to_f32(self) -> f32;
    /// The buffers of `bufs`, if they hold this type.
    #[allow(clippy::type_complexity)]
    fn pair<D: Device>(bufs: &FpBufs<D>) -> Option<(&D::Buf<Self>, &D::Buf<Self>)>;
    /// The buffers of `bufs`, mutably, if they hold this type.
    #[allow(clippy::type_complexity)]
    fn pair_mut<D: Device>(bufs: &mut FpBufs<D>) -> Option<(&mut D::Buf<Self>, &mut D::Buf<Self>)>;
    /// Key and value buffers of this type.
    fn wrap_pair<D: Device>(k: D::Buf<Self>, v: D::Buf<Self>) -> FpBufs<D>;
}

macro_rules! fp_elem {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl FpElem for $t {
            const TYPE: InputType = InputType::$variant;
            fn from_f32(x: f32) -> Self {
                $from(x)
            }
            fn to_f32(self) -> f32 {
                $to(self)
            }
            fn pair<D: Device>(bufs: &FpBufs<D>) -> Option<(&D::Buf<Self>, &D::Buf<Self>)> {
                match bufs {
                    FpBufs::$variant(k, v) => Some((k, v)),
                    _ => None,
                }
            }
            fn pair_mut<D: Device>(
                bufs: &mut FpBufs<D>,
            ) -> Option<(&mut D::Buf<Self>, &mut D::Buf<Self>)> {
                match bufs {
                    FpBufs::$variant(k, v) => Some((k, v)),
                    _ => None,
                }
            }
            fn wrap_pair<D: Device>(k: D::Buf<Self>, v: D::Buf<Self>) -> FpBufs<D> {
                FpBufs::$variant(k, v)
            }
        }
    };
}

fp_elem!(f32, F32, |x| x, |x| x);
fp_elem!(f16, F16, f16::from_f32, f16::to_f32);
fp_elem!(bf16, BF16, bf16::from_f32, bf16::to_f32);

/// `x` rounded to `fp` (the same tensor for f32).
pub fn round_to(x: &Tensor3, fp: InputType) -> Cow<'_, Tensor3> {
    match fp {
        InputType::F32 => Cow::Borrowed(x),
        _ => Cow::Owned(x.map(|v| fp.round(v))),
    }
}

/// Where the rows a segment copies come from: a host tensor (rounded to `T`), or a
/// `[heads, tokens, dim]` buffer of `T` already in the device's memory (copied on the device).
#[derive(Debug)]
pub(super) enum Rows<'a, D: Device, T: FpElem> {
    /// `[heads, tokens, dim]` on the host.
    Host(&'a Tensor3),
    /// `[heads, tokens, dim]` in device memory (its length checked by the caller).
    Device {
        /// The buffer.
        buf: &'a D::Buf<T>,
        /// Its tokens per head.
        tokens: usize,
    },
}

impl<D: Device, T: FpElem> Clone for Rows<'_, D, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Device, T: FpElem> Copy for Rows<'_, D, T> {}

impl<D: Device, T: FpElem> Rows<'_, D, T> {
    /// Writes tokens `range` of `head` (rows of `dim`) into `dst` from element `at`.
    fn write_rows(
        self,
        device: &D,
        dst: &mut D::Buf<T>,
        at: usize,
        head: usize,
        range: Range<usize>,
        dim: usize,
    ) -> Result<(), DeviceError> {
        let overrun = || {
            DeviceError::new(
                "copying rows",
                format!("tokens {range:?} of head {head} are outside the input"),
            )
        };
        match self {
            Rows::Host(x) => {
                let from = x.shape().index(head, range.start, 0);
                let rows = x
                    .data()
                    .get(from..from + range.len() * dim)
                    .ok_or_else(overrun)?;
                let rows: Vec<T> = rows.iter().map(|&x| T::from_f32(x)).collect();
                device.write(dst, at, &rows)
            }
            Rows::Device { buf, tokens } => {
                let from = head
                    .checked_mul(tokens)
                    .and_then(|r| r.checked_add(range.start))
                    .and_then(|r| r.checked_mul(dim))
                    .ok_or_else(overrun)?;
                device.copy(dst, at, buf, from..from + range.len() * dim)
            }
        }
    }
}

/// Full-precision keys and values of a run of tokens, head-major, on device `D`, in the
/// cache's full-precision type `fp`.
///
/// Invariants: `storage` is `None` exactly when `capacity == 0`; otherwise both buffers are of
/// type `fp` and hold `heads * capacity * dim` values, `tokens <= capacity`, and the row of
/// (head h, token t) starts at `(h * capacity + t) * dim`. Rows at `t >= tokens` are
/// unspecified.
#[derive(Debug)]
pub struct FpSegment<D: Device> {
    heads: usize,
    dim: usize,
    fp: InputType,
    tokens: usize,
    capacity: usize,
    storage: Option<FpBufs<D>>,
}

impl<D: Device> FpSegment<D> {
    /// An empty segment of `fp` rows that allocates nothing.
    pub(super) fn empty(heads: usize, dim: usize, fp: InputType) -> FpSegment<D> {
        FpSegment {
            heads,
            dim,
            fp,
            tokens: 0,
            capacity: 0,
            storage: None,
        }
    }

    /// Tokens `range` of `k` and `v` (`heads` x `dim` rows, range within them), at exactly
    /// their size, stored as `T`.
    pub(super) fn copy_of<T: FpElem>(
        device: &D,
        (heads, dim): (usize, usize),
        k: Rows<'_, D, T>,
        v: Rows<'_, D, T>,
        range: Range<usize>,
    ) -> Result<FpSegment<D>, DeviceError> {
        let mut seg = FpSegment::empty(heads, dim, T::TYPE);
        seg.extend(device, k, v, range)?;
        Ok(seg)
    }

    /// Tokens held.
    pub(super) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Tokens that fit without reallocating.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The key and value buffers (`None` when nothing is allocated).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn buffers(&self) -> Option<&FpBufs<D>> {
        self.storage.as_ref()
    }

    /// Appends tokens `range` of `k` and `v` (rows of the segment's heads and dim, range within
    /// them), growing by doubling when they do not fit. `T` must be the segment's type. On
    /// error the segment is unchanged (rows past its tokens may have been written).
    pub(super) fn extend<T: FpElem>(
        &mut self,
        device: &D,
        k: Rows<'_, D, T>,
        v: Rows<'_, D, T>,
        range: Range<usize>,
    ) -> Result<(), DeviceError> {
        if T::TYPE != self.fp {
            return Err(DeviceError::new(
                "appending to a segment",
                format!(
                    "rows of {} given to a segment of {}",
                    T::TYPE.name(),
                    self.fp.name()
                ),
            ));
        }
        let n = range.len();
        if n == 0 {
            return Ok(());
        }
        let need = self.tokens + n;
        let mut grown = None;
        if need > self.capacity {
            // An exact first allocation when the segment starts empty with a known size (a
            // prompt's prefix or suffix); doubling after that.
            let capacity = if self.capacity == 0 {
                need
            } else {
                need.max(self.capacity.saturating_mul(2)).max(MIN_CAPACITY)
            };
            grown = Some((self.relayout::<T>(device, capacity)?, capacity));
        }
        let capacity = grown.as_ref().map_or(self.capacity, |(_, c)| *c);
        let (kb, vb) = match (&mut grown, &mut self.storage) {
            (Some(((k, v), _)), _) => (k, v),
            (None, Some(bufs)) => T::pair_mut(bufs).ok_or_else(|| {
                DeviceError::new("appending to a segment", "its buffers are of another type")
            })?,
            (None, None) => {
                return Err(DeviceError::new(
                    "appending to a segment",
                    "no storage for a segment of non-zero capacity",
                ))
            }
        };
        let dim = self.dim;
        for h in 0..self.heads {
            let at = (h * capacity + self.tokens) * dim;
            k.write_rows(device, kb, at, h, range.clone(), dim)?;
            v.write_rows(device, vb, at, h, range.clone(), dim)?;
        }
        if let Some(((k, v), capacity)) = grown {
            self.storage = Some(T::wrap_pair(k, v));
            self.capacity = capacity;
        }
        self.tokens = need;
        Ok(())
    }

    /// New buffers of `capacity >= tokens` tokens holding the live tokens.
    fn relayout<T: FpElem>(
        &self,
        device: &D,
        capacity: usize,
    ) -> Result<KvPair<D, T>, DeviceError> {
        let dim = self.dim;
        let live = self.tokens * dim;
        let len = self
            .heads
            .checked_mul(capacity)
            .and_then(|x| x.checked_mul(dim))
            .ok_or_else(|| DeviceError::new("growing a segment", "its size overflows"))?;
        let mut k = device.zeros::<T>(len)?;
        let mut v = device.zeros::<T>(len)?;
        if let Some(bufs) = &self.storage {
            let (old_k, old_v) = T::pair(bufs).ok_or_else(|| {
                DeviceError::new("growing a segment", "its buffers are of another type")
            })?;
            for h in 0..self.heads {
                let (old, new) = (h * self.capacity * dim, h * capacity * dim);
                device.copy(&mut k, new, old_k, old..old + live)?;
                device.copy(&mut v, new, old_v, old..old + live)?;
            }
        }
        Ok((k, v))
    }

    /// Bytes of the live tokens (keys and values).
    pub(super) fn live_bytes(&self) -> usize {
        2 * self.heads * self.tokens * self.dim * self.fp.scalar().size()
    }

    /// Bytes allocated (keys and values), slack included.
    pub(super) fn reserved_bytes(&self) -> usize {
        2 * self.heads * self.capacity * self.dim * self.fp.scalar().size()
    }
}

impl<Q: SpanQuantizer> FpSegment<Host<Q>> {
    /// The live key rows of `head`, `[tokens, dim]`, as f32 (borrowed when stored as f32).
    pub(super) fn keys(&self, head: usize) -> Cow<'_, [f32]> {
        self.rows(head, 0)
    }

    /// The live value rows of `head`, `[tokens, dim]`, as f32.
    pub(super) fn values(&self, head: usize) -> Cow<'_, [f32]> {
        self.rows(head, 1)
    }

    fn rows(&self, head: usize, which: usize) -> Cow<'_, [f32]> {
        let at = head * self.capacity * self.dim;
        let live = at..at + self.tokens * self.dim;
        fn pick<'a, T>(
            (k, v): (&'a Vec<T>, &'a Vec<T>),
            which: usize,
            live: Range<usize>,
        ) -> &'a [T] {
            let buf = if which == 0 { k } else { v };
            buf.get(live).unwrap_or(&[])
        }
        fn widen<T: FpElem>(xs: &[T]) -> Cow<'static, [f32]> {
            Cow::Owned(xs.iter().map(|&x| x.to_f32()).collect())
        }
        match &self.storage {
            None => Cow::Borrowed(&[]),
            Some(FpBufs::F32(k, v)) => Cow::Borrowed(pick((k, v), which, live)),
            Some(FpBufs::F16(k, v)) => widen(pick((k, v), which, live)),
            Some(FpBufs::BF16(k, v)) => widen(pick((k, v), which, live)),
        }
    }
}

/// Runs `$e` with the type alias `$T` bound to the element type of `$fp` (an [`InputType`]).
macro_rules! with_fp {
    ($fp:expr, $T:ident => $e:expr) => {
        match $fp {
            kvq_ir::lower::InputType::F32 => {
                type $T = f32;
                $e
            }
            kvq_ir::lower::InputType::F16 => {
                type $T = half::f16;
                $e
            }
            kvq_ir::lower::InputType::BF16 => {
                type $T = half::bf16;
                $e
            }
        }
    };
}
pub(crate) use with_fp;
