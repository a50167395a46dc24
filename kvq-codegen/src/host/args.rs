//! Launch arguments and their check against a kernel's parameters.

use half::{bf16, f16};
use kvq_ir::ir::{Access, Param, ScalarType};

use crate::{ArgKind, CodegenError};

/// A read-only buffer argument.
#[derive(Debug)]
pub enum BufferRef<'a> {
    /// Bool elements (one byte each, 0 or 1).
    Bool(&'a [bool]),
    /// Bytes.
    U8(&'a [u8]),
    /// u16 elements.
    U16(&'a [u16]),
    /// u32 elements.
    U32(&'a [u32]),
    /// IEEE binary16 elements.
    F16(&'a [f16]),
    /// bfloat16 elements.
    BF16(&'a [bf16]),
    /// f32 elements.
    F32(&'a [f32]),
    /// f64 elements.
    F64(&'a [f64]),
}

/// A writable buffer argument (also accepted where the kernel only reads).
#[derive(Debug)]
pub enum BufferMut<'a> {
    /// Bool elements (one byte each; the kernel stores only 0 or 1).
    Bool(&'a mut [bool]),
    /// Bytes.
    U8(&'a mut [u8]),
    /// u16 elements.
    U16(&'a mut [u16]),
    /// u32 elements.
    U32(&'a mut [u32]),
    /// IEEE binary16 elements.
    F16(&'a mut [f16]),
    /// bfloat16 elements.
    BF16(&'a mut [bf16]),
    /// f32 elements.
    F32(&'a mut [f32]),
    /// f64 elements.
    F64(&'a mut [f64]),
}

/// One launch argument, matched by position against the kernel's parameters.
#[derive(Debug)]
pub enum HostArg<'a> {
    /// A buffer the kernel may write (required for `Write` and `ReadWrite` parameters).
    Buffer(BufferMut<'a>),
    /// A buffer the kernel only reads (accepted for `Read` parameters only).
    ReadOnly(BufferRef<'a>),
    /// A `u32` scalar.
    U32(u32),
    /// An `f32` scalar.
    F32(f32),
}

macro_rules! buffer_from {
    ($($variant:ident: $t:ty),* $(,)?) => {$(
        impl<'a> From<&'a [$t]> for HostArg<'a> {
            fn from(s: &'a [$t]) -> Self {
                HostArg::ReadOnly(BufferRef::$variant(s))
            }
        }
        impl<'a> From<&'a mut [$t]> for HostArg<'a> {
            fn from(s: &'a mut [$t]) -> Self {
                HostArg::Buffer(BufferMut::$variant(s))
            }
        }
    )*};
}

buffer_from!(Bool: bool, U8: u8, U16: u16, U32: u32, F16: f16, BF16: bf16, F32: f32, F64: f64);

impl From<u32> for HostArg<'_> {
    fn from(v: u32) -> Self {
        HostArg::U32(v)
    }
}

impl From<f32> for HostArg<'_> {
    fn from(v: f32) -> Self {
        HostArg::F32(v)
    }
}

macro_rules! per_buffer {
    ($buffer:expr, $s:ident => $e:expr) => {
        match $buffer {
            Buffer::Bool($s) => $e,
            Buffer::U8($s) => $e,
            Buffer::U16($s) => $e,
            Buffer::U32($s) => $e,
            Buffer::F16($s) => $e,
            Buffer::BF16($s) => $e,
            Buffer::F32($s) => $e,
            Buffer::F64($s) => $e,
        }
    };
}

impl BufferRef<'_> {
    fn elem(&self) -> ScalarType {
        use BufferRef as Buffer;
        per_buffer!(self, s => element_of(s))
    }

    fn address(&self) -> u64 {
        use BufferRef as Buffer;
        per_buffer!(self, s => s.as_ptr() as usize as u64)
    }
}

impl BufferMut<'_> {
    fn elem(&self) -> ScalarType {
        use BufferMut as Buffer;
        per_buffer!(self, s => element_of(s))
    }

    fn address(&mut self) -> u64 {
        use BufferMut as Buffer;
        per_buffer!(self, s => s.as_mut_ptr() as usize as u64)
    }
}

/// Element types a buffer slice can hold.
trait Element {
    const TYPE: ScalarType;
}

macro_rules! element {
    ($($t:ty => $s:ident),*) => {$(impl Element for $t { const TYPE: ScalarType = ScalarType::$s; })*};
}

element!(bool => Bool, u8 => U8, u16 => U16, u32 => U32, f16 => F16, bf16 => BF16, f32 => F32, f64 => F64);

fn element_of<T: Element>(_: &[T]) -> ScalarType {
    T::TYPE
}

impl HostArg<'_> {
    /// What this argument is.
    pub fn kind(&self) -> ArgKind {
        match self {
            HostArg::Buffer(b) => ArgKind::Buffer {
                elem: b.elem(),
                writable: true,
            },
            HostArg::ReadOnly(b) => ArgKind::Buffer {
                elem: b.elem(),
                writable: false,
            },
            HostArg::U32(_) => ArgKind::U32,
            HostArg::F32(_) => ArgKind::F32,
        }
    }

    /// Its size, for [`kvq_ir::ir::check_launch`].
    pub fn size(&self) -> kvq_ir::ir::ArgSize {
        use kvq_ir::ir::ArgSize;
        match self {
            HostArg::Buffer(b) => {
                use BufferMut as Buffer;
                ArgSize::Buffer(per_buffer!(b, s => s.len() as u64))
            }
            HostArg::ReadOnly(b) => {
                use BufferRef as Buffer;
                ArgSize::Buffer(per_buffer!(b, s => s.len() as u64))
            }
            HostArg::U32(v) => ArgSize::U32(*v),
            HostArg::F32(_) => ArgSize::Other,
        }
    }

    /// The word the entry receives: a buffer's address, or a scalar's bits.
    pub(super) fn word(&mut self) -> u64 {
        match self {
            HostArg::Buffer(b) => b.address(),
            HostArg::ReadOnly(b) => b.address(),
            HostArg::U32(v) => u64::from(*v),
            HostArg::F32(v) => u64::from(v.to_bits()),
        }
    }
}

/// What parameter `p` expects.
pub(super) fn expected(p: &Param) -> ArgKind {
    match p {
        Param::Buffer { elem, access, .. } => ArgKind::Buffer {
            elem: *elem,
            writable: *access != Access::Read,
        },
        Param::Scalar {
            ty: ScalarType::F32,
            ..
        } => ArgKind::F32,
        Param::Scalar { .. } => ArgKind::U32,
    }
}

/// Checks count, kind, element type and access of every argument.
pub(super) fn check(
    kernel: &str,
    params: &[Param],
    args: &[HostArg<'_>],
) -> Result<(), CodegenError> {
    if params.len() != args.len() {
        return Err(CodegenError::ArgCount {
            kernel: kernel.to_string(),
            expected: params.len(),
            found: args.len(),
        });
    }
    for (index, (p, a)) in params.iter().zip(args).enumerate() {
        let (expected, found) = (expected(p), a.kind());
        let ok = match (expected, found) {
            (
                ArgKind::Buffer { elem, writable },
                ArgKind::Buffer {
                    elem: have,
                    writable: can_write,
                },
            ) => elem == have && (can_write || !writable),
            (e, f) => e == f,
        };
        if !ok {
            return Err(CodegenError::ArgMismatch {
                kernel: kernel.to_string(),
                index,
                expected,
                found,
            });
        }
    }
    Ok(())
}
