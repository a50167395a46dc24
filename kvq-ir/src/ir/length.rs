//! The sizes in a kernel's signature: how many elements each buffer parameter must hold and how
//! many blocks a launch may have, as expressions over the launch's scalar arguments and, for
//! the attention kernels, the sizes of its batch plan. Every launcher (interpreter, host code,
//! CUDA) checks them with [`check_launch`] before it runs a kernel, so that a short buffer or
//! an oversized grid is a typed error instead of an access out of bounds.

use thiserror::Error;

use super::kernel::{Param, ScalarType};

/// A size of an attention batch plan (`kvq_ir::lower::attention::BatchPlan`) that a buffer
/// length can refer to: it depends on every sequence's token counts, which no scalar carries.
/// The kernels find each sequence's data through the plan's `seqs` and `work_seq` tables, so
/// these sizes bound their accesses only when the launch passes the plan's own tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum PlanSize {
    /// Sequences in the batch.
    Sequences,
    /// Work chunks in the batch.
    Chunks,
    /// Elements of `fp_k` (and of `fp_v`).
    FpElems,
    /// Bytes of key codes.
    KeyCodeBytes,
    /// Key zero points (and scales).
    KeyParams,
    /// Bytes of value codes.
    ValueCodeBytes,
    /// Value zero points (and scales).
    ValueParams,
}

impl PlanSize {
    /// Every plan size.
    pub const ALL: [PlanSize; 7] = [
        PlanSize::Sequences,
        PlanSize::Chunks,
        PlanSize::FpElems,
        PlanSize::KeyCodeBytes,
        PlanSize::KeyParams,
        PlanSize::ValueCodeBytes,
        PlanSize::ValueParams,
    ];

    /// Its name in the text form (`plan.NAME`) and in case files.
    pub fn name(self) -> &'static str {
        match self {
            PlanSize::Sequences => "sequences",
            PlanSize::Chunks => "chunks",
            PlanSize::FpElems => "fp_elems",
            PlanSize::KeyCodeBytes => "k_code_bytes",
            PlanSize::KeyParams => "k_params",
            PlanSize::ValueCodeBytes => "v_code_bytes",
            PlanSize::ValueParams => "v_params",
        }
    }
}

/// The plan sizes of one launch (see [`PlanSize`]).
pub trait PlanSizes {
    /// The value of `size`.
    fn plan_size(&self, size: PlanSize) -> u64;
}

/// A size: products and ceiling divisions of constants, scalar parameters and plan sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Len {
    /// A constant.
    Const(u64),
    /// The u32 scalar parameter at this ABI index.
    Scalar(u32),
    /// A size of the launch's batch plan.
    Plan(PlanSize),
    /// The product of the factors.
    Product(Vec<Len>),
    /// `ceil(a / b)` for a constant `b` > 0.
    CeilDiv(Box<Len>, u64),
}

impl Len {
    /// The product of `factors` (nested products flattened).
    pub fn product(factors: impl IntoIterator<Item = Len>) -> Len {
        let mut flat = Vec::new();
        for f in factors {
            match f {
                Len::Product(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        Len::Product(flat)
    }

    /// `ceil(self / by)`.
    pub fn ceil_div(self, by: u64) -> Len {
        Len::CeilDiv(Box::new(self), by)
    }

    /// Whether the size refers to a plan size (so only a launcher holding the plan can check it).
    pub fn needs_plan(&self) -> bool {
        match self {
            Len::Plan(_) => true,
            Len::Product(f) => f.iter().any(Len::needs_plan),
            Len::CeilDiv(a, _) => a.needs_plan(),
            Len::Const(_) | Len::Scalar(_) => false,
        }
    }

    /// The scalar parameters the size refers to.
    pub fn scalars(&self) -> Vec<u32> {
        match self {
            Len::Scalar(i) => vec![*i],
            Len::Product(f) => f.iter().flat_map(Len::scalars).collect(),
            Len::CeilDiv(a, _) => a.scalars(),
            Len::Const(_) | Len::Plan(_) => Vec::new(),
        }
    }

    /// The value for these scalar arguments and plan, in checked u64 arithmetic.
    pub fn eval(
        &self,
        scalar: &dyn Fn(u32) -> Option<u32>,
        plan: Option<&dyn PlanSizes>,
    ) -> Result<u64, SizeError> {
        match self {
            Len::Const(c) => Ok(*c),
            Len::Scalar(i) => scalar(*i)
                .map(u64::from)
                .ok_or(SizeError::NotAU32Scalar { index: *i }),
            Len::Plan(p) => plan.map(|plan| plan.plan_size(*p)).ok_or(SizeError::NoPlan),
            Len::Product(factors) => factors.iter().try_fold(1u64, |acc, f| {
                acc.checked_mul(f.eval(scalar, plan)?)
                    .ok_or(SizeError::Overflow)
            }),
            Len::CeilDiv(a, b) => match b {
                0 => Err(SizeError::Overflow),
                b => Ok(a.eval(scalar, plan)?.div_ceil(*b)),
            },
        }
    }
}

impl Len {
    /// The text form, scalars by their names in `params`: `heads * tokens * 16`,
    /// `ceil(tokens / 32)`, `plan.fp_elems`.
    pub fn text(&self, params: &[Param]) -> String {
        match self {
            Len::Const(c) => c.to_string(),
            Len::Scalar(i) => params
                .get(*i as usize)
                .map_or_else(|| format!("${i}"), |p| p.name().to_string()),
            Len::Plan(p) => format!("plan.{}", p.name()),
            Len::Product(factors) if factors.is_empty() => "1".to_string(),
            Len::Product(factors) => factors
                .iter()
                .map(|x| x.text(params))
                .collect::<Vec<_>>()
                .join(" * "),
            Len::CeilDiv(a, b) => format!("ceil({} / {b})", a.text(params)),
        }
    }
}

/// What a launch passes for one parameter, as far as sizes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgSize {
    /// A buffer of this many elements.
    Buffer(u64),
    /// A u32 scalar.
    U32(u32),
    /// Any other scalar.
    Other,
}

/// Why a launch's sizes were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// A buffer holds fewer elements than the kernel may access.
    #[error("kernel {kernel}: buffer `{param}` holds {found} elements, the launch needs {needed} ({len})")]
    ShortBuffer {
        /// Kernel.
        kernel: String,
        /// Parameter name.
        param: String,
        /// Elements needed.
        needed: u64,
        /// Elements passed.
        found: u64,
        /// The stated size.
        len: String,
    },
    /// The grid has more blocks than the kernel's signature allows for these sizes.
    #[error("kernel {kernel}: grid of {grid} blocks, at most {max} for these sizes ({len})")]
    GridTooLarge {
        /// Kernel.
        kernel: String,
        /// Blocks asked for.
        grid: u32,
        /// Blocks allowed.
        max: u64,
        /// The stated bound.
        len: String,
    },
    /// The kernel states no size for a parameter (or its grid): only an unchecked launch can run it.
    #[error("kernel {kernel}: no stated size for `{param}`; a checked launch cannot run it")]
    Unstated {
        /// Kernel.
        kernel: String,
        /// Parameter name (or `grid`).
        param: String,
    },
    /// A size refers to something that is not a u32 scalar argument.
    #[error("a size refers to parameter {index}, which is not a u32 scalar argument")]
    NotAU32Scalar {
        /// ABI index.
        index: u32,
    },
    /// A size refers to the batch plan, and the launcher has none.
    #[error("a size refers to the batch plan; launch the kernel through its batch plan")]
    NoPlan,
    /// A size overflows 64 bits.
    #[error("a size overflows 64 bits")]
    Overflow,
    /// The argument list has the wrong length.
    #[error("kernel {kernel}: {found} arguments for {expected} parameters")]
    ArgCount {
        /// Kernel.
        kernel: String,
        /// Parameters.
        expected: usize,
        /// Arguments.
        found: usize,
    },
}

/// What a launch is checked against ([`check_launch`]): a kernel's name, parameters and grid
/// bound. A lowered [`Kernel`](super::Kernel) has them, and so does a compiled kernel that
/// keeps them without its body.
pub trait Signature {
    /// The kernel's name.
    fn name(&self) -> &str;
    /// Its parameters, in ABI order.
    fn params(&self) -> &[Param];
    /// The bound on its grid.
    fn max_grid(&self) -> Option<&Len>;
}

impl Signature for super::Kernel {
    fn name(&self) -> &str {
        &self.name
    }
    fn params(&self) -> &[Param] {
        &self.params
    }
    fn max_grid(&self) -> Option<&Len> {
        self.max_grid.as_ref()
    }
}

impl<S: Signature> Signature for std::sync::Arc<S> {
    fn name(&self) -> &str {
        S::name(self)
    }
    fn params(&self) -> &[Param] {
        S::params(self)
    }
    fn max_grid(&self) -> Option<&Len> {
        S::max_grid(self)
    }
}

/// Checks a launch of `kernel` (named so in errors) with parameters `params`, grid bound
/// `max_grid`, arguments of sizes `args` and `grid` blocks: every buffer holds at least its
/// stated length and the grid is within its bound. A missing statement (`None`), or a size
/// that needs a plan when `plan` is `None`, is an error: the caller cannot know what the kernel
/// touches.
pub fn check_launch(
    kernel: &str,
    params: &[Param],
    max_grid: Option<&Len>,
    args: &[ArgSize],
    grid: u32,
    plan: Option<&dyn PlanSizes>,
) -> Result<(), SizeError> {
    check(kernel, params, max_grid, args, grid, plan, true).map(|_| ())
}

/// [`check_launch`] of the sizes that are stated and need no plan, the others skipped (the
/// interpreter, which bounds every access anyway); returns `(parameter index, stated length)` of
/// each buffer checked.
pub fn check_stated(
    kernel: &str,
    params: &[Param],
    max_grid: Option<&Len>,
    args: &[ArgSize],
    grid: u32,
) -> Result<Vec<(usize, u64)>, SizeError> {
    check(kernel, params, max_grid, args, grid, None, false)
}

/// The checks of [`check_launch`] (`strict`) or [`check_stated`].
fn check(
    kernel: &str,
    params: &[Param],
    max_grid: Option<&Len>,
    args: &[ArgSize],
    grid: u32,
    plan: Option<&dyn PlanSizes>,
    strict: bool,
) -> Result<Vec<(usize, u64)>, SizeError> {
    if params.len() != args.len() {
        return Err(SizeError::ArgCount {
            kernel: kernel.to_string(),
            expected: params.len(),
            found: args.len(),
        });
    }
    let scalar = |i: u32| match (params.get(i as usize), args.get(i as usize)) {
        (
            Some(Param::Scalar {
                ty: ScalarType::U32,
                ..
            }),
            Some(ArgSize::U32(v)),
        ) => Some(*v),
        _ => None,
    };
    // The size to check, if any: `None` skips it (only when not strict).
    let stated = |param: &str, len: Option<&'_ Len>| match len {
        None if strict => Err(SizeError::Unstated {
            kernel: kernel.to_string(),
            param: param.to_string(),
        }),
        Some(l) if strict || !l.needs_plan() => Ok(Some(l.clone())),
        _ => Ok(None),
    };
    let mut checked = Vec::new();
    for (i, (p, a)) in params.iter().zip(args).enumerate() {
        let (Param::Buffer { name, len, .. }, ArgSize::Buffer(found)) = (p, a) else {
            continue;
        };
        let Some(len) = stated(name, len.as_ref())? else {
            continue;
        };
        let needed = len.eval(&scalar, plan)?;
        if *found < needed {
            return Err(SizeError::ShortBuffer {
                kernel: kernel.to_string(),
                param: name.clone(),
                needed,
                found: *found,
                len: len.text(params),
            });
        }
        checked.push((i, needed));
    }
    if let Some(bound) = stated("grid", max_grid)? {
        let max = bound.eval(&scalar, plan)?;
        if u64::from(grid) > max {
            return Err(SizeError::GridTooLarge {
                kernel: kernel.to_string(),
                grid,
                max,
                len: bound.text(params),
            });
        }
    }
    Ok(checked)
}
