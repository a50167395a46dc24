//! Autotuning host quantize kernels: search the [`Schedule`]s a scheme accepts, time each on
//! synthetic data, keep the fastest in a [`TuningTable`] that the runtime consults through
//! [`schedule_for`].
//!
//! Results are keyed, as cubecl's autotune keys them, by a bucketed shape and the checksum of the
//! candidate set ([`TuningKey`]), plus a checksum of the default schedule's kernel text: a change
//! to the search space or to the lowering makes old entries stale rather than silently wrong, and a stale, corrupt or invalid entry always falls back to
//! [`Schedule::host_default`]. A tuned schedule never changes results: [`tune`] rejects any
//! candidate whose codes and parameters differ, bit for bit, from the default schedule's.
//!
//! # File format
//!
//! A JSON object, written atomically (temporary file + rename):
//!
//! ```json
//! {
//!   "version": 2,
//!   "entries": [
//!     {
//!       "key": {
//!         "scheme_hash": "fnv1a64:…",   // of the scheme's canonical text
//!         "target": "host-x86_64-…-2cpu", // architecture, CPU model name, cores
//!         "kind": "quantize",
//!         "head_dim": 128,
//!         "input": "f16",
//!         "heads": 8,                    // exact
//!         "tokens_bucket": 16384,        // next power of two >= tokens
//!         "candidates_checksum": "fnv1a64:…",
//!         "lowering": "fnv1a64:…"        // of the default schedule's kernel IR text
//!       },
//!       "scheme": "bits = 1, axis = channel, …",  // informational
//!       "schedule": { "block_size": 1, "channels": 32, "vector": 16 },
//!       "median_ns": 1234567.0
//!     }
//!   ]
//! }
//! ```
//!
//! A file with another `version` is treated as corrupt. Entries are kept sorted by key so the
//! committed table diffs cleanly.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kvq_codegen::host::HostKernel;
use kvq_ir::ir::interp::{Arg, Buffer};
use kvq_ir::lower::io::input_buffer;
use kvq_ir::lower::{self, InputType, LowerError, Schedule, ShapeClass};
use kvq_ir::reference::quantize::{check_shape, param_shape, row_bytes};
use kvq_ir::reference::QuantError;
use kvq_ir::{Axis, Scheme, Shape3, Tensor3};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::{host_kernel, BackendError};

/// The table format this module reads and writes.
pub const TABLE_VERSION: u32 = 2;

/// Vector widths the host search tries.
const VECTORS: [u8; 3] = [4, 8, 16];

/// A tuned schedule must beat the default by this fraction of its median to replace it, so
/// that timing noise does not swap schedules back and forth.
const MIN_GAIN: f64 = 0.03;

/// Why tuning, or reading or writing a table, failed.
#[derive(Debug, Error)]
pub enum TuneError {
    /// The table file could not be read or written.
    #[error("tuning table {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The table file is not valid JSON of the expected shape.
    #[error("tuning table {path}: corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The table file has a format version this build does not read.
    #[error("tuning table {path}: corrupt: unknown version {found} (expected {TABLE_VERSION})")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The scheme does not fit the shape.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// A candidate could not be lowered (a kvq bug: candidates pass [`Schedule::check`]).
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// A candidate could not be compiled or launched.
    #[error("schedule {schedule:?}: {source}")]
    Backend {
        /// The candidate.
        schedule: Schedule,
        /// The cause.
        #[source]
        source: BackendError,
    },
    /// A candidate's output differs from the default schedule's (a kvq bug).
    #[error("schedule {schedule:?} changes the {what} of the default schedule")]
    Mismatch {
        /// The candidate.
        schedule: Schedule,
        /// Which output differs (`codes`, `zero`, `scale`, `status`).
        what: &'static str,
    },
    /// The shape is empty or does not fit a launch.
    #[error("cannot tune a span of {heads} heads x {tokens} tokens")]
    Shape {
        /// Heads.
        heads: usize,
        /// Tokens.
        tokens: usize,
    },
}

/// The host search space of `scheme` for `shape`: block size 1; for axis = channel every column
/// width that is a multiple of the codes per byte, at least 8 and dividing head_dim, crossed
/// with the vector widths 4, 8 and 16 that divide it (for the quantile rule with group = all,
/// also each of them as one warp selecting together, [`Schedule::host_select`]); for axis =
/// token the vector widths that divide the group. Only schedules [`Schedule::check`] accepts,
/// sorted, always including [`Schedule::host_default`].
pub fn candidates(scheme: &Scheme, shape: ShapeClass) -> Vec<Schedule> {
    let default = Schedule::host_default(scheme, shape);
    let per_byte = scheme.bits.codes_per_byte() as u32;
    let widths: Vec<u32> = match scheme.axis {
        Axis::Channel => (8..=shape.head_dim)
            .filter(|w| w % per_byte == 0 && shape.head_dim % w == 0)
            .collect(),
        // A thread covers a whole row; the column width is ignored, keep the default's.
        Axis::Token => vec![default.channels],
    };
    let mut out: Vec<Schedule> = widths
        .iter()
        .flat_map(|&channels| {
            VECTORS.iter().map(move |&vector| Schedule {
                block_size: 1,
                channels,
                vector,
                cooperative: false,
                cluster: 1,
                contiguous: false,
            })
        })
        .flat_map(|s| {
            let select = Schedule::host_select(scheme, shape).map(|sel| Schedule {
                channels: s.channels,
                vector: s.vector,
                ..sel
            });
            std::iter::once(s).chain(select)
        })
        .chain(std::iter::once(default))
        .filter(|s| s.check(scheme, shape).is_ok())
        .collect();
    out.sort_by_key(|s| (s.block_size, s.channels, s.vector));
    out.dedup();
    out
}

/// FNV-1a, 64 bits, as `fnv1a64:<16 hex digits>`.
fn fnv1a64(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

/// A stable hash of a candidate list (its order included), over a canonical text form.
pub fn candidate_checksum(candidates: &[Schedule]) -> String {
    let text: String = candidates
        .iter()
        .map(|s| {
            // Contiguous runs marked (the candidate sets without them keep their checksums).
            let runs = if s.contiguous { "r" } else { "" };
            format!("b{}c{}v{}{runs};", s.block_size, s.channels, s.vector)
        })
        .collect();
    fnv1a64(&text)
}

/// A stable hash of a scheme's canonical text.
pub fn scheme_hash(scheme: &Scheme) -> String {
    fnv1a64(&scheme.to_string())
}

/// The target name tuning results are kept under: `host-<arch>-<cpu model>-<n>cpu` (the model:
/// the CPU's brand string, which Linux's `/proc/cpuinfo` reports as the model name, else that
/// file's model name where there is one), since host kernels are compiled for the running CPU
/// and launches split the grid over its `n` available cores (a column per block that wins on 2
/// cores may starve 16).
pub fn host_target() -> String {
    static TARGET: OnceLock<String> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let model = kvq_codegen::host::cpu::brand().or_else(|| {
                fs::read_to_string("/proc/cpuinfo")
                    .ok()
                    .and_then(|text| {
                        text.lines()
                            .find(|l| l.starts_with("model name"))
                            .and_then(|l| l.split_once(':'))
                            .map(|(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "))
                    })
                    .filter(|m| !m.is_empty())
            });
            let cpus = kvq_codegen::host::cores();
            match model {
                Some(m) => format!("host-{}-{m}-{cpus}cpu", std::env::consts::ARCH),
                None => format!("host-{}-{cpus}cpu", std::env::consts::ARCH),
            }
        })
        .clone()
}

/// Span sizes as tuning sees them: heads exact, tokens rounded up to a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShapeBucket {
    /// Heads, exact.
    pub heads: usize,
    /// The next power of two at least the token count.
    pub tokens_bucket: usize,
}

impl ShapeBucket {
    /// The bucket of `heads` x `tokens`.
    pub fn new(heads: usize, tokens: usize) -> ShapeBucket {
        ShapeBucket {
            heads,
            tokens_bucket: tokens.max(1).next_power_of_two(),
        }
    }
}

/// What a tuning result is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TuningKey {
    /// [`scheme_hash`] of the scheme.
    pub scheme_hash: String,
    /// [`host_target`].
    pub target: String,
    /// The kernel: `quantize`.
    pub kind: String,
    /// Channels per head.
    pub head_dim: u32,
    /// Input element type name (`f16`, `bf16`, `f32`).
    pub input: String,
    /// The bucketed span size.
    #[serde(flatten)]
    pub bucket: ShapeBucket,
    /// [`candidate_checksum`] of the search space the result was chosen from.
    pub candidates_checksum: String,
    /// [`lowering_checksum`] of the kernels the result was measured on.
    pub lowering: String,
}

/// A stable hash of the IR text of `scheme`'s quantize kernel under the default host schedule,
/// so that a change to the lowering makes tuning results stale. Memoised per process.
pub fn lowering_checksum(scheme: &Scheme, shape: ShapeClass) -> String {
    type Memo = std::sync::Mutex<std::collections::HashMap<(Scheme, ShapeClass), String>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Some(hit) = memo
        .lock()
        .ok()
        .and_then(|m| m.get(&(*scheme, shape)).cloned())
    {
        return hit;
    }
    let text = lower::quantize(scheme, shape, &Schedule::host_default(scheme, shape))
        .map(|l| kvq_ir::ir::print(&l.kernel))
        .unwrap_or_default();
    let sum = fnv1a64(&text);
    if let Ok(mut m) = memo.lock() {
        m.insert((*scheme, shape), sum.clone());
    }
    sum
}

impl TuningKey {
    /// The key of the quantize kernel of `scheme` for `shape` on this host, over the current
    /// candidate set.
    pub fn quantize(scheme: &Scheme, shape: ShapeClass, heads: usize, tokens: usize) -> Self {
        TuningKey {
            scheme_hash: scheme_hash(scheme),
            target: host_target(),
            kind: "quantize".to_string(),
            head_dim: shape.head_dim,
            input: shape.input.name().to_string(),
            bucket: ShapeBucket::new(heads, tokens),
            candidates_checksum: candidate_checksum(&candidates(scheme, shape)),
            lowering: lowering_checksum(scheme, shape),
        }
    }

    /// Whether this key's checksums are those the current candidates and lowering give for
    /// `scheme` (the entry's recorded text), on any target.
    fn is_current(&self, scheme: Option<&str>) -> bool {
        let Some(scheme) = scheme.and_then(|t| Scheme::parse(t).ok()) else {
            return false;
        };
        let input = [InputType::F16, InputType::BF16, InputType::F32]
            .into_iter()
            .find(|t| t.name() == self.input);
        let Some(input) = input else {
            return false;
        };
        let shape = ShapeClass {
            head_dim: self.head_dim,
            input,
        };
        self.kind == "quantize"
            && self.scheme_hash == scheme_hash(&scheme)
            && self.candidates_checksum == candidate_checksum(&candidates(&scheme, shape))
            && self.lowering == lowering_checksum(&scheme, shape)
    }

    /// Equal but for the candidate and lowering checksums.
    fn same_but_checksum(&self, other: &TuningKey) -> bool {
        TuningKey {
            candidates_checksum: other.candidates_checksum.clone(),
            lowering: other.lowering.clone(),
            ..self.clone()
        } == *other
    }
}

/// A schedule as stored in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSchedule {
    block_size: u32,
    channels: u32,
    vector: u8,
    /// The cooperative kernels (lanes over channels on a GPU; on the host, the quantile rule's
    /// whole-warp selection, [`Schedule::host_select`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    cooperative: bool,
    /// Each thread of a block a contiguous run of the tokens ([`Schedule::contiguous`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    contiguous: bool,
}

impl From<Schedule> for StoredSchedule {
    fn from(s: Schedule) -> Self {
        StoredSchedule {
            block_size: s.block_size,
            channels: s.channels,
            vector: s.vector,
            cooperative: s.cooperative,
            contiguous: s.contiguous,
        }
    }
}

impl From<StoredSchedule> for Schedule {
    fn from(s: StoredSchedule) -> Self {
        Schedule {
            block_size: s.block_size,
            channels: s.channels,
            vector: s.vector,
            cooperative: s.cooperative,
            // Tables hold host schedules, which have no clusters.
            cluster: 1,
            contiguous: s.contiguous,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    key: TuningKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    schedule: StoredSchedule,
    median_ns: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableFile {
    version: u32,
    entries: Vec<Entry>,
}

pub mod attention;
mod search;
mod table;

pub use search::*;
pub use table::*;
