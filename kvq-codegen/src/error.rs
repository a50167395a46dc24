//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

use kvq_ir::ir::ScalarType;

/// What a kernel parameter expects, or what a launch argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgKind {
    /// A buffer of `elem`; `writable` when the kernel may store to it (the argument must then
    /// be a `&mut` slice).
    Buffer {
        /// Element type.
        elem: ScalarType,
        /// Whether stores are allowed (parameter) or possible (argument).
        writable: bool,
    },
    /// A `u32` scalar.
    U32,
    /// An `f32` scalar.
    F32,
}

impl fmt::Display for ArgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgKind::Buffer { elem, writable } => {
                let how = if *writable { "mutable" } else { "read-only" };
                write!(f, "{how} {} buffer", elem.name())
            }
            ArgKind::U32 => f.write_str("u32 scalar"),
            ArgKind::F32 => f.write_str("f32 scalar"),
        }
    }
}

/// Everything that can go wrong while generating, building, loading or launching a kernel.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// A buffer is shorter, or the grid larger, than the kernel's stated sizes allow.
    #[error(transparent)]
    Size(#[from] kvq_ir::ir::SizeError),
    /// The kernel to build does not verify (`kvq_ir::ir::verify`).
    #[error(transparent)]
    Invalid(#[from] kvq_ir::ir::VerifyError),
    /// LLVM rejected something (target machine, IR verification, pass pipeline, emission).
    #[error("llvm failed on kernel `{kernel}`: {message}")]
    Llvm {
        /// The kernel's name.
        kernel: String,
        /// LLVM's message.
        message: String,
    },
    /// The kernel uses an operation/type combination this backend does not lower.
    #[error("kernel `{kernel}`: cannot lower {what}")]
    Unsupported {
        /// The kernel's name.
        kernel: String,
        /// What, in words.
        what: String,
    },
    /// The host is not a target this crate generates native code for.
    #[error("host code generation needs an x86-64 host, this one is `{triple}`")]
    UnsupportedHost {
        /// The host's target triple.
        triple: String,
    },
    /// A launch passed the wrong number of arguments.
    #[error("kernel `{kernel}` takes {expected} arguments, {found} given")]
    ArgCount {
        /// The kernel's name.
        kernel: String,
        /// Its parameter count.
        expected: usize,
        /// The arguments given.
        found: usize,
    },
    /// A launch argument does not match its parameter.
    #[error("kernel `{kernel}` argument {index}: expected a {expected}, found a {found}")]
    ArgMismatch {
        /// The kernel's name.
        kernel: String,
        /// The argument's position.
        index: usize,
        /// What the parameter takes.
        expected: ArgKind,
        /// What was given.
        found: ArgKind,
    },
    /// A buffer argument is not aligned as the kernel's aligned vector accesses need.
    #[error(
        "kernel `{kernel}` argument {index}: the buffer must start at a multiple of {align} bytes"
    )]
    Misaligned {
        /// The kernel's name.
        kernel: String,
        /// The argument's position.
        index: usize,
        /// The alignment it needs, in bytes.
        align: u32,
    },
    /// A grid that is not made of whole clusters of the kernel.
    #[error(
        "kernel `{kernel}`: a grid of {grid_size} blocks is not whole clusters of {cluster_size}"
    )]
    ClusterGrid {
        /// The kernel's name.
        kernel: String,
        /// The grid.
        grid_size: u32,
        /// The kernel's cluster size.
        cluster_size: u32,
    },
    /// A file of the build could not be written or removed.
    #[error("kernel `{kernel}`: cannot write {}", path.display())]
    Io {
        /// The kernel's name.
        kernel: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The system C compiler could not link the object file into a shared library.
    #[error("kernel `{kernel}`: linking with `{linker}` failed: {detail}")]
    Link {
        /// The kernel's name.
        kernel: String,
        /// The linker command.
        linker: String,
        /// Its exit status and standard error, or why it could not run.
        detail: String,
    },
    /// The shared library could not be loaded, or lacks the kernel's entry.
    #[error("kernel `{kernel}`: cannot load the compiled library")]
    Load {
        /// The kernel's name.
        kernel: String,
        /// The cause.
        #[source]
        source: libloading::Error,
    },
    /// ptxas rejected the PTX or could not run.
    #[error("kernel `{kernel}`: ptxas: {message}")]
    Ptxas {
        /// The kernel's name.
        kernel: String,
        /// ptxas's output, or why it could not run.
        message: String,
    },
    /// A worker thread for a launch could not be started.
    #[error("kernel `{kernel}`: cannot start a launch thread")]
    Thread {
        /// The kernel's name.
        kernel: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
