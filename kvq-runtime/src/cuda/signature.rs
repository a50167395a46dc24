//! Kernel signatures (from the manifest) and the argument check every launch goes through.

use std::fmt;

use kvq_ir::ir::{check_launch, ArgSize, Len, PlanSizes, SizeError};
use serde::{Deserialize, Serialize};

use crate::cuda::error::CudaError;

/// Element type of a buffer or scalar parameter, as the manifest spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    /// `bool` (never a kernel parameter today; kept so manifests parse).
    Bool,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `f16`.
    F16,
    /// `bf16`.
    Bf16,
    /// `f32`.
    F32,
    /// `f64` (as `Bool`).
    F64,
}

impl Elem {
    /// The manifest's element type of a kvq-ir one.
    pub fn from_scalar(t: kvq_ir::ir::ScalarType) -> Elem {
        use kvq_ir::ir::ScalarType;
        match t {
            ScalarType::Bool => Elem::Bool,
            ScalarType::U8 => Elem::U8,
            ScalarType::U16 => Elem::U16,
            ScalarType::U32 => Elem::U32,
            ScalarType::F16 => Elem::F16,
            ScalarType::BF16 => Elem::Bf16,
            ScalarType::F32 => Elem::F32,
            ScalarType::F64 => Elem::F64,
        }
    }

    /// kvq-ir's element type.
    pub fn scalar(self) -> kvq_ir::ir::ScalarType {
        use kvq_ir::ir::ScalarType;
        match self {
            Elem::Bool => ScalarType::Bool,
            Elem::U8 => ScalarType::U8,
            Elem::U16 => ScalarType::U16,
            Elem::U32 => ScalarType::U32,
            Elem::F16 => ScalarType::F16,
            Elem::Bf16 => ScalarType::BF16,
            Elem::F32 => ScalarType::F32,
            Elem::F64 => ScalarType::F64,
        }
    }

    /// The manifest's name.
    pub fn name(self) -> &'static str {
        match self {
            Elem::Bool => "bool",
            Elem::U8 => "u8",
            Elem::U16 => "u16",
            Elem::U32 => "u32",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
            Elem::F32 => "f32",
            Elem::F64 => "f64",
        }
    }
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a kernel uses a buffer parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Only loads.
    Read,
    /// Only stores.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// Whether the kernel stores through the parameter.
    pub fn writes(self) -> bool {
        !matches!(self, Access::Read)
    }
}

/// One kernel parameter, exactly as `kvq compile` writes it into `entry.params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParamSpec {
    /// A pointer to global memory.
    Buffer {
        /// Name in the IR.
        name: String,
        /// Element type.
        elem: Elem,
        /// Loads, stores or both.
        access: Access,
        /// Elements a launch must pass, over the scalars (or the batch plan); absent in
        /// manifests older than the stated sizes, whose kernels no launch accepts.
        #[serde(default)]
        len: Option<Len>,
    },
    /// A value passed by copy.
    Scalar {
        /// Name in the IR.
        name: String,
        /// Its type.
        #[serde(rename = "type")]
        ty: Elem,
    },
}

impl ParamSpec {
    /// The parameter's name.
    pub fn name(&self) -> &str {
        match self {
            ParamSpec::Buffer { name, .. } | ParamSpec::Scalar { name, .. } => name,
        }
    }
}

impl ParamSpec {
    /// The manifest's form of a kvq-ir parameter.
    pub fn from_ir(p: &kvq_ir::ir::Param) -> ParamSpec {
        use kvq_ir::ir::{Access as IrAccess, Param};
        match p {
            Param::Buffer {
                name,
                elem,
                access,
                len,
            } => ParamSpec::Buffer {
                name: name.clone(),
                elem: Elem::from_scalar(*elem),
                access: match access {
                    IrAccess::Read => Access::Read,
                    IrAccess::Write => Access::Write,
                    IrAccess::ReadWrite => Access::ReadWrite,
                },
                len: len.clone(),
            },
            Param::Scalar { name, ty } => ParamSpec::Scalar {
                name: name.clone(),
                ty: Elem::from_scalar(*ty),
            },
        }
    }

    /// The parameter in kvq-ir's terms, for [`kvq_ir::ir::check_launch`].
    pub fn to_ir(&self) -> kvq_ir::ir::Param {
        use kvq_ir::ir::{Access as IrAccess, Param};
        match self {
            ParamSpec::Buffer {
                name,
                elem,
                access,
                len,
            } => Param::Buffer {
                name: name.clone(),
                elem: elem.scalar(),
                access: match access {
                    Access::Read => IrAccess::Read,
                    Access::Write => IrAccess::Write,
                    Access::ReadWrite => IrAccess::ReadWrite,
                },
                len: len.clone(),
            },
            ParamSpec::Scalar { name, ty } => Param::Scalar {
                name: name.clone(),
                ty: ty.scalar(),
            },
        }
    }
}

/// A kernel's name, parameters in ABI order, and the most blocks a launch may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSignature {
    /// The PTX entry name.
    pub name: String,
    /// Parameters in ABI order.
    pub params: Vec<ParamSpec>,
    /// The grid bound over the scalar parameters (absent in older manifests).
    pub max_grid: Option<Len>,
}

/// What a launch argument is, without the device memory: what [`check`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgDesc {
    /// A device buffer of `len` elements; `writable` when passed as `&mut`.
    Buffer {
        /// Element type.
        elem: Elem,
        /// Number of elements.
        len: usize,
        /// Passed mutably.
        writable: bool,
    },
    /// A `u32` scalar and its value (the sizes refer to it).
    U32(u32),
    /// An `f32` scalar.
    F32,
}

impl ArgDesc {
    /// Its size, for [`kvq_ir::ir::check_launch`].
    pub fn size(&self) -> ArgSize {
        match *self {
            ArgDesc::Buffer { len, .. } => ArgSize::Buffer(len as u64),
            ArgDesc::U32(v) => ArgSize::U32(v),
            ArgDesc::F32 => ArgSize::Other,
        }
    }
}

impl KernelSignature {
    /// Checks a launch of this kernel with arguments `args` (and `plan`, for kernels whose sizes
    /// refer to one): the argument check of [`check`], then every buffer against its stated
    /// length and the grid, which is the stated bound for these scalars. Returns the grid.
    pub fn launch_grid(
        &self,
        args: &[ArgDesc],
        plan: Option<&dyn PlanSizes>,
    ) -> Result<u32, CudaError> {
        check(self, args)?;
        let sizes: Vec<ArgSize> = args.iter().map(ArgDesc::size).collect();
        let max_grid = self.max_grid.as_ref().ok_or_else(|| SizeError::Unstated {
            kernel: self.name.clone(),
            param: "grid".into(),
        })?;
        let scalar = |i: u32| match sizes.get(i as usize) {
            Some(ArgSize::U32(v)) => Some(*v),
            _ => None,
        };
        let blocks = max_grid.eval(&scalar, plan)?;
        let grid = u32::try_from(blocks)
            .ok()
            .filter(|&b| b > 0 && b < (1 << 31))
            .ok_or_else(|| CudaError::Grid {
                kernel: self.name.clone(),
                blocks,
            })?;
        let params: Vec<kvq_ir::ir::Param> = self.params.iter().map(ParamSpec::to_ir).collect();
        check_launch(&self.name, &params, Some(max_grid), &sizes, grid, plan)?;
        Ok(grid)
    }
}

/// Why an argument does not fit its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// A scalar given for a buffer parameter.
    ExpectedBuffer,
    /// A buffer given for a scalar parameter.
    ExpectedScalar,
    /// The buffer's element type differs.
    BufferElem {
        /// The parameter's element type.
        expected: Elem,
        /// The argument's.
        got: Elem,
    },
    /// The scalar's type differs.
    ScalarType {
        /// The parameter's type.
        expected: Elem,
        /// The argument's.
        got: Elem,
    },
    /// A read-only buffer given for a parameter the kernel stores to.
    NotWritable(Access),
    /// An empty buffer (the driver cannot pass a null allocation usefully).
    Empty,
    /// A buffer longer than the kernel's u32 element indices address.
    TooLong(usize),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::ExpectedBuffer => write!(f, "a scalar was given for a buffer parameter"),
            Mismatch::ExpectedScalar => write!(f, "a buffer was given for a scalar parameter"),
            Mismatch::BufferElem { expected, got } => {
                write!(
                    f,
                    "buffer of {got} given, the kernel reads/writes {expected}"
                )
            }
            Mismatch::ScalarType { expected, got } => {
                write!(f, "{got} scalar given, the kernel takes {expected}")
            }
            Mismatch::NotWritable(access) => {
                write!(f, "read-only buffer given for a {access:?} parameter")
            }
            Mismatch::Empty => write!(f, "empty buffer"),
            Mismatch::TooLong(len) => write!(
                f,
                "buffer of {len} elements, more than the 2^32 - 1 its u32 indices address"
            ),
        }
    }
}

/// Checks `args` against `signature`: count, buffer or scalar, element type, that every
/// buffer the kernel stores to is passed mutably, and that no buffer is longer than the
/// kernel's u32 element indices address. Reports the first mismatch.
pub fn check(signature: &KernelSignature, args: &[ArgDesc]) -> Result<(), CudaError> {
    if args.len() != signature.params.len() {
        return Err(CudaError::ArgCount {
            kernel: signature.name.clone(),
            expected: signature.params.len(),
            got: args.len(),
        });
    }
    for (index, (param, arg)) in signature.params.iter().zip(args).enumerate() {
        if let Some(mismatch) = mismatch(param, *arg) {
            return Err(CudaError::Arg {
                kernel: signature.name.clone(),
                index,
                param: param.name().to_string(),
                mismatch,
            });
        }
    }
    Ok(())
}

fn mismatch(param: &ParamSpec, arg: ArgDesc) -> Option<Mismatch> {
    match (param, arg) {
        (
            ParamSpec::Buffer { elem, access, .. },
            ArgDesc::Buffer {
                elem: got,
                len,
                writable,
            },
        ) => {
            if *elem != got {
                Some(Mismatch::BufferElem {
                    expected: *elem,
                    got,
                })
            } else if access.writes() && !writable {
                Some(Mismatch::NotWritable(*access))
            } else if len == 0 {
                Some(Mismatch::Empty)
            } else if len as u64 > kvq_ir::limits::MAX_ELEMENTS {
                Some(Mismatch::TooLong(len))
            } else {
                None
            }
        }
        (ParamSpec::Buffer { .. }, ArgDesc::U32(_) | ArgDesc::F32) => {
            Some(Mismatch::ExpectedBuffer)
        }
        (ParamSpec::Scalar { .. }, ArgDesc::Buffer { .. }) => Some(Mismatch::ExpectedScalar),
        (ParamSpec::Scalar { ty, .. }, ArgDesc::U32(_)) if *ty != Elem::U32 => {
            Some(Mismatch::ScalarType {
                expected: *ty,
                got: Elem::U32,
            })
        }
        (ParamSpec::Scalar { ty, .. }, ArgDesc::F32) if *ty != Elem::F32 => {
            Some(Mismatch::ScalarType {
                expected: *ty,
                got: Elem::F32,
            })
        }
        (ParamSpec::Scalar { .. }, ArgDesc::U32(_) | ArgDesc::F32) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantize_signature() -> KernelSignature {
        let buffer = |name: &str, elem, access| ParamSpec::Buffer {
            name: name.into(),
            elem,
            access,
            len: None,
        };
        let scalar = |name: &str| ParamSpec::Scalar {
            name: name.into(),
            ty: Elem::U32,
        };
        KernelSignature {
            name: "q".into(),
            params: vec![
                buffer("x", Elem::F16, Access::Read),
                buffer("codes", Elem::U8, Access::Write),
                buffer("zero", Elem::F16, Access::Write),
                buffer("scale", Elem::F16, Access::Write),
                buffer("status", Elem::U32, Access::ReadWrite),
                scalar("heads"),
                scalar("tokens"),
            ],
            max_grid: None,
        }
    }

    fn good_args() -> Vec<ArgDesc> {
        let buf = |elem, writable| ArgDesc::Buffer {
            elem,
            len: 8,
            writable,
        };
        vec![
            buf(Elem::F16, false),
            buf(Elem::U8, true),
            buf(Elem::F16, true),
            buf(Elem::F16, true),
            buf(Elem::U32, true),
            ArgDesc::U32(2),
            ArgDesc::U32(4),
        ]
    }

    fn mismatch_at(args: &[ArgDesc]) -> (usize, Mismatch) {
        match check(&quantize_signature(), args) {
            Err(CudaError::Arg {
                index, mismatch, ..
            }) => (index, mismatch),
            other => panic!("expected an argument mismatch, got {other:?}"),
        }
    }

    #[test]
    fn matching_args_pass() {
        check(&quantize_signature(), &good_args()).unwrap();
        // A mutable buffer may be passed where the kernel only reads.
        let mut args = good_args();
        args[0] = ArgDesc::Buffer {
            elem: Elem::F16,
            len: 8,
            writable: true,
        };
        check(&quantize_signature(), &args).unwrap();
    }

    #[test]
    fn wrong_count() {
        let mut args = good_args();
        args.pop();
        let err = check(&quantize_signature(), &args).unwrap_err();
        assert!(matches!(
            err,
            CudaError::ArgCount {
                expected: 7,
                got: 6,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "kernel q: 6 arguments given, its signature has 7"
        );
    }

    #[test]
    fn scalar_for_buffer() {
        let mut args = good_args();
        args[1] = ArgDesc::U32(1);
        assert_eq!(mismatch_at(&args), (1, Mismatch::ExpectedBuffer));
    }

    #[test]
    fn buffer_for_scalar() {
        let mut args = good_args();
        args[6] = args[4];
        assert_eq!(mismatch_at(&args), (6, Mismatch::ExpectedScalar));
    }

    #[test]
    fn wrong_element_type() {
        let mut args = good_args();
        args[2] = ArgDesc::Buffer {
            elem: Elem::F32,
            len: 8,
            writable: true,
        };
        assert_eq!(
            mismatch_at(&args),
            (
                2,
                Mismatch::BufferElem {
                    expected: Elem::F16,
                    got: Elem::F32
                }
            )
        );
    }

    #[test]
    fn wrong_scalar_type() {
        let mut args = good_args();
        args[5] = ArgDesc::F32;
        assert_eq!(
            mismatch_at(&args),
            (
                5,
                Mismatch::ScalarType {
                    expected: Elem::U32,
                    got: Elem::F32
                }
            )
        );
    }

    #[test]
    fn read_only_buffer_for_output() {
        let mut args = good_args();
        args[4] = ArgDesc::Buffer {
            elem: Elem::U32,
            len: 1,
            writable: false,
        };
        assert_eq!(
            mismatch_at(&args),
            (4, Mismatch::NotWritable(Access::ReadWrite))
        );
        let err = check(&quantize_signature(), &args).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel q: argument 4 (status): read-only buffer given for a ReadWrite parameter"
        );
    }

    #[test]
    fn empty_buffer() {
        let mut args = good_args();
        args[1] = ArgDesc::Buffer {
            elem: Elem::U8,
            len: 0,
            writable: true,
        };
        assert_eq!(mismatch_at(&args), (1, Mismatch::Empty));
    }

    #[test]
    fn buffer_longer_than_u32_indices_address() {
        let mut args = good_args();
        let len = (1usize << 32) + 8;
        args[0] = ArgDesc::Buffer {
            elem: Elem::F16,
            len,
            writable: false,
        };
        assert_eq!(mismatch_at(&args), (0, Mismatch::TooLong(len)));
        args[0] = ArgDesc::Buffer {
            elem: Elem::F16,
            len: u32::MAX as usize,
            writable: false,
        };
        assert!(check(&quantize_signature(), &args).is_ok());
    }
}
