//! Autotuning the host decode-attention kernels: time every [`AttentionSchedule`] candidate
//! (chunk and tile sizes) on a synthetic batch, keep the fastest whose outputs agree with the
//! default schedule's, and record it in a table (`tuning/host-attention.json`) that
//! [`HostAttention::new`](crate::attention::HostAttention::new) consults.
//!
//! Entries are keyed like the quantize table's: the cache scheme's hash, the target, the shape
//! class (head_dim, group), a checksum of the candidate set and one of the tuned schedule's
//! partial kernel (the kernel `HostAttention::new` lowers and prints anyway, so checking it
//! costs a hash, not a second lowering); a stale or corrupt table falls back to
//! [`AttentionSchedule::host_default`] with a warning.
//!
//! ```json
//! { "version": 1, "entries": [ { "key": { "scheme_hash": "fnv1a64:…", "target": "host-…",
//!   "head_dim": 128, "group": 4, "candidates_checksum": "fnv1a64:…", "lowering": "fnv1a64:…" },
//!   "scheme": "key(…), value(…), calibrate = 3.0",
//!   "schedule": { "block_size": 1, "chunk": 4096, "tile": 64, "tables": true },
//!   "median_ns": 1234567.0 } ] }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use kvq_ir::lower::attention::{
    attention, AttentionKernels, AttentionLayout, AttentionSchedule, AttentionShape, SeqData,
};
use kvq_ir::lower::LowerError;
use kvq_ir::reference::quantize;
use kvq_ir::CacheScheme;
use serde::{Deserialize, Serialize};

use super::table::{parse_table, read_table, write_table};
use super::{fnv1a64, host_target, TuneError};
use crate::attention::HostAttention;

/// The attention table format this module reads and writes.
pub const ATTENTION_TABLE_VERSION: u32 = 1;

/// Chunk and tile sizes the search tries (with byte tables, one thread per block).
const CHUNKS: [u32; 5] = [1024, 2048, 4096, 8192, 16384];
const TILES: [u32; 4] = [16, 32, 64, 128];

/// What an entry is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttentionKey {
    /// Hash of the cache scheme's canonical text.
    pub scheme_hash: String,
    /// [`host_target`].
    pub target: String,
    /// Channels per head.
    pub head_dim: u32,
    /// Query heads per kv head.
    pub group: u32,
    /// Checksum of [`attention_candidates`].
    pub candidates_checksum: String,
    /// Checksum of the text of the tuned schedule's `partial` kernel (over f32 rows): an entry
    /// whose kernel the lowering no longer makes is stale.
    pub lowering: String,
}

impl AttentionKey {
    /// The key of `scheme` and `shape` on this machine, now, for an entry holding `schedule`
    /// (its `partial` kernel lowered for f32 rows is checksummed).
    pub fn new(
        scheme: &CacheScheme,
        shape: AttentionShape,
        schedule: &AttentionSchedule,
    ) -> AttentionKey {
        let lowering = attention(scheme, f32_rows(shape), schedule)
            .map(|k| kvq_ir::ir::print(&k.partial))
            .unwrap_or_default();
        AttentionKey {
            lowering: lowering_checksum(&lowering),
            ..AttentionKey::unchecked(scheme, shape)
        }
    }

    /// The key without its lowering checksum: what a lookup matches on.
    fn unchecked(scheme: &CacheScheme, shape: AttentionShape) -> AttentionKey {
        let text: String = attention_candidates(scheme)
            .iter()
            .map(|s| format!("b{}c{}t{}{};", s.block_size, s.chunk, s.tile, s.tables))
            .collect();
        AttentionKey {
            scheme_hash: fnv1a64(&scheme.to_string()),
            target: host_target(),
            head_dim: shape.head_dim,
            group: shape.group,
            candidates_checksum: fnv1a64(&text),
            lowering: String::new(),
        }
    }

    /// Whether this key's checksums are those the current candidates and lowering give for
    /// `scheme` (the entry's recorded text) at `schedule`, on any target.
    fn is_current(&self, scheme: &str, schedule: &AttentionSchedule) -> bool {
        let Ok(scheme) = CacheScheme::parse(scheme) else {
            return false;
        };
        let shape = AttentionShape {
            head_dim: self.head_dim,
            group: self.group,
            fp: kvq_ir::lower::InputType::F32,
        };
        let now = AttentionKey::new(&scheme, shape, schedule);
        (&self.scheme_hash, &self.candidates_checksum, &self.lowering)
            == (&now.scheme_hash, &now.candidates_checksum, &now.lowering)
    }

    fn same_but_checksums(&self, other: &AttentionKey) -> bool {
        (&self.scheme_hash, &self.target, self.head_dim, self.group)
            == (
                &other.scheme_hash,
                &other.target,
                other.head_dim,
                other.group,
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ScheduleJson {
    block_size: u32,
    chunk: u32,
    tile: u32,
    tables: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryJson {
    key: AttentionKey,
    scheme: String,
    schedule: ScheduleJson,
    median_ns: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileJson {
    version: u32,
    entries: Vec<EntryJson>,
}

/// Tuned attention schedules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttentionTable {
    entries: BTreeMap<AttentionKey, (AttentionSchedule, f64, String)>,
}

impl AttentionTable {
    /// Reads a table; an unreadable, unparsable or other-version file is an error.
    pub fn load(path: &Path) -> Result<AttentionTable, TuneError> {
        Ok(Self::from_file(read_table(path, ATTENTION_TABLE_VERSION)?))
    }

    /// [`AttentionTable::load`] of a file already read: `text`, from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<AttentionTable, TuneError> {
        Ok(Self::from_file(parse_table(
            text,
            path,
            ATTENTION_TABLE_VERSION,
        )?))
    }

    fn from_file(file: FileJson) -> AttentionTable {
        let entries = file
            .entries
            .into_iter()
            .map(|e| {
                let s = e.schedule;
                let schedule = AttentionSchedule {
                    block_size: s.block_size,
                    chunk: s.chunk,
                    tile: s.tile,
                    tables: s.tables,
                    layout: AttentionLayout::ThreadPerItem,
                };
                (e.key, (schedule, e.median_ns, e.scheme))
            })
            .collect();
        AttentionTable { entries }
    }

    /// Writes the table atomically, entries sorted by key.
    pub fn save(&self, path: &Path) -> Result<(), TuneError> {
        let file = FileJson {
            version: ATTENTION_TABLE_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(key, (s, ns, scheme))| EntryJson {
                    key: key.clone(),
                    scheme: scheme.clone(),
                    schedule: ScheduleJson {
                        block_size: s.block_size,
                        chunk: s.chunk,
                        tile: s.tile,
                        tables: s.tables,
                    },
                    median_ns: *ns,
                })
                .collect(),
        };
        write_table(path, &file)
    }

    /// Records `schedule` for `scheme` (replacing entries of older candidate sets or lowerings).
    pub fn insert(
        &mut self,
        scheme: &CacheScheme,
        key: AttentionKey,
        schedule: AttentionSchedule,
        ns: f64,
    ) {
        self.entries.retain(|k, _| !k.same_but_checksums(&key));
        self.entries.insert(key, (schedule, ns, scheme.to_string()));
    }

    /// Every entry, whatever machine tuned it, whose checksums differ from those the current
    /// candidates and lowering give for its scheme and schedule (`target: scheme` each, the
    /// shape named): a stale entry is never used, so a committed table should hold none.
    pub fn stale_entries(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(key, (schedule, _, text))| !key.is_current(text, schedule))
            .map(|(key, (_, _, text))| {
                format!("{}: {text} at d{} g{}", key.target, key.head_dim, key.group)
            })
            .collect()
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `scheme` and `shape` under the current candidate set, its lowering not
    /// yet checked (the caller lowers the schedule anyway: [`Tuned::matches`]); `None`, with a
    /// warning on stderr, for an entry whose schedule fails [`AttentionSchedule::check`], and
    /// with a stale warning for one of another candidate set. Kernels of f16 / bf16
    /// full-precision rows (a small part of the work) take the entry tuned over f32 rows.
    pub fn tuned(&self, scheme: &CacheScheme, shape: AttentionShape) -> Option<Tuned<'_>> {
        let key = AttentionKey::unchecked(scheme, shape);
        let found = self.entries.iter().find(|(k, _)| {
            k.same_but_checksums(&key) && k.candidates_checksum == key.candidates_checksum
        });
        match found {
            Some((k, (s, _, _))) if s.check(scheme).is_ok() => Some(Tuned {
                schedule: *s,
                lowering: &k.lowering,
            }),
            Some((_, (s, _, _))) => {
                eprintln!("warning: attention tuning entry {s:?} for `{scheme}`: invalid, using the default schedule");
                None
            }
            None => {
                if self.entries.keys().any(|k| k.same_but_checksums(&key)) {
                    warn_stale(scheme);
                }
                None
            }
        }
    }

    /// Whether the table holds an entry for `scheme` and `shape` on this machine, current or
    /// stale.
    pub fn holds(&self, scheme: &CacheScheme, shape: AttentionShape) -> bool {
        let key = AttentionKey::unchecked(scheme, shape);
        self.entries.keys().any(|k| k.same_but_checksums(&key))
    }

    /// The schedule for `scheme` and `shape` ([`lower_tuned`]'s): the tuned one when the table
    /// holds it under the current checksums and it passes [`AttentionSchedule::check`], else the
    /// default (with a warning on stderr when only a stale or invalid entry is there).
    pub fn schedule_for(&self, scheme: &CacheScheme, shape: AttentionShape) -> AttentionSchedule {
        lower_tuned(Some(self), scheme, shape)
            .map_or_else(|_| AttentionSchedule::host_default(scheme), |(s, ..)| s)
    }
}

/// Kernels lowered at a schedule, with their texts (`kvq_ir::ir::print`, in
/// [`AttentionKernels::all`]'s order), the schedule first.
pub type Lowered = (AttentionSchedule, AttentionKernels, Vec<String>);

/// `scheme`'s attention kernels at `schedule`, printed once (the text keys the compile cache).
pub fn lower_printed(
    scheme: &CacheScheme,
    shape: AttentionShape,
    schedule: AttentionSchedule,
) -> Result<Lowered, LowerError> {
    let kernels = attention(scheme, shape, &schedule)?;
    let texts = kernels.all().map(kvq_ir::ir::print).collect();
    Ok((schedule, kernels, texts))
}

/// The kernels `HostAttention::new` compiles when no schedule is given: at `table`'s entry for
/// `scheme` and `shape` when there is one and its lowering checksum matches (checked on the
/// text printed anyway for the compile cache: no second lowering for f32 rows), else at
/// [`AttentionSchedule::host_default`] (a stale entry warned about on stderr).
pub fn lower_tuned(
    table: Option<&AttentionTable>,
    scheme: &CacheScheme,
    shape: AttentionShape,
) -> Result<Lowered, LowerError> {
    let tuned = table.and_then(|t| t.tuned(scheme, shape));
    lower_entry(tuned, scheme, shape).map(|(lowered, _)| lowered)
}

/// [`lower_tuned`] of the entry the table holds ([`AttentionTable::tuned`]), and whether that
/// entry was stale (its lowering changed since it was tuned: warned about, the default used).
pub fn lower_entry(
    tuned: Option<Tuned<'_>>,
    scheme: &CacheScheme,
    shape: AttentionShape,
) -> Result<(Lowered, bool), LowerError> {
    let default = AttentionSchedule::host_default(scheme);
    let Some(tuned) = tuned else {
        return Ok((lower_printed(scheme, shape, default)?, false));
    };
    let lowered = lower_printed(scheme, shape, tuned.schedule)?;
    let fits = if shape.fp == kvq_ir::lower::InputType::F32 {
        // `all()` yields `partial` after the optional `stats`.
        tuned.matches(&lowered.2[usize::from(lowered.1.stats.is_some())])
    } else {
        let f32_kernels = attention(scheme, f32_rows(shape), &tuned.schedule)?;
        tuned.matches(&kvq_ir::ir::print(&f32_kernels.partial))
    };
    if fits {
        Ok((lowered, false))
    } else {
        warn_stale(scheme);
        Ok((lower_printed(scheme, shape, default)?, true))
    }
}

/// A table entry found by [`AttentionTable::tuned`].
#[derive(Debug, Clone, Copy)]
pub struct Tuned<'t> {
    /// The tuned schedule.
    pub schedule: AttentionSchedule,
    lowering: &'t str,
}

impl Tuned<'_> {
    /// Whether the entry was tuned over this lowering: `f32_partial` is the text of the
    /// `partial` kernel of [`Tuned::schedule`] for f32 full-precision rows.
    pub fn matches(&self, f32_partial: &str) -> bool {
        lowering_checksum(f32_partial) == self.lowering
    }
}

/// Warns that the table's entry for `scheme` no longer fits the candidates or the lowering.
pub(crate) fn warn_stale(scheme: &CacheScheme) {
    eprintln!("warning: attention tuning table for `{scheme}`: stale (candidates or lowering changed), using the default schedule");
}

/// The shape class entries are tuned at: `shape` with f32 full-precision rows.
fn f32_rows(shape: AttentionShape) -> AttentionShape {
    AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        ..shape
    }
}

fn lowering_checksum(partial_text: &str) -> String {
    fnv1a64(partial_text)
}

/// The table the runtime reads: `$KVQ_ATTENTION_TUNING`, else `tuning/host-attention.json` in
/// the kvq package.
pub fn default_attention_table_path() -> PathBuf {
    std::env::var_os("KVQ_ATTENTION_TUNING")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/host-attention.json"))
}

/// [`default_attention_table_path`]'s text, read once per process: `None` when missing, and
/// `None` with a warning when unreadable. It keys the compile cache's index of attention
/// kernels, so that a process whose kernels are indexed need not parse the table.
pub fn default_attention_table_text() -> Option<&'static str> {
    static TEXT: OnceLock<Option<String>> = OnceLock::new();
    TEXT.get_or_init(|| {
        let path = default_attention_table_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                eprintln!(
                    "warning: {}: {e}, using the default attention schedule",
                    path.display()
                );
                None
            }
        }
    })
    .as_deref()
}

/// [`default_attention_table_text`], parsed once per process: `None` when missing, and `None`
/// with a warning when unreadable or corrupt.
pub fn default_attention_table() -> Option<&'static AttentionTable> {
    static TABLE: OnceLock<Option<AttentionTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let text = default_attention_table_text()?;
            AttentionTable::parse(text, &default_attention_table_path())
                .map_err(|e| eprintln!("warning: {e}, using the default attention schedule"))
                .ok()
        })
        .as_ref()
}

/// The candidate schedules for `scheme`: chunks x tiles that [`AttentionSchedule::check`]
/// accepts, with byte tables, one thread per block; the default always included.
pub fn attention_candidates(scheme: &CacheScheme) -> Vec<AttentionSchedule> {
    let default = AttentionSchedule::host_default(scheme);
    let mut out: Vec<AttentionSchedule> = CHUNKS
        .iter()
        .flat_map(|&chunk| {
            TILES.iter().map(move |&tile| AttentionSchedule {
                block_size: 1,
                chunk,
                tile,
                tables: true,
                layout: AttentionLayout::ThreadPerItem,
            })
        })
        .chain(std::iter::once(default))
        .filter(|s| s.check(scheme).is_ok())
        .collect();
    out.sort_by_key(|s| (s.chunk, s.tile));
    out.dedup();
    out
}

/// The timings of one attention tuning run.
#[derive(Debug, Clone)]
pub struct AttentionTuning {
    /// The span lengths timed, in order.
    pub spans: Vec<usize>,
    /// The batch sizes timed at each span, in order.
    pub batches: Vec<usize>,
    /// (schedule, median ns at each (span, batch), spans outer), in candidate order.
    pub timings: Vec<(AttentionSchedule, Vec<f64>)>,
    /// Per candidate, the geometric mean over the (span, batch) pairs of its median time over
    /// the default schedule's: the score the best is chosen by.
    pub ratios: Vec<f64>,
    /// The schedule of the lowest ratio among those whose outputs agree with the default's
    /// within 1e-4 at every span and batch.
    pub best: AttentionSchedule,
}

/// Times every candidate on a synthetic batch of sequences, each of `kv_heads` x (span plus 64
/// fp tokens) with data of its own, for each span length of `spans` and each batch size of
/// `batches`, and returns the schedule fastest over all of them (lowest geometric mean of
/// its time over the default's) among those agreeing with the default schedule's outputs. One
/// shape alone can mislead: the attention table is keyed without the span and the batch, and
/// a chunk as long as a 16k span is slower at 64k than the default.
pub fn tune_attention(
    scheme: &CacheScheme,
    shape: AttentionShape,
    kv_heads: usize,
    (spans, batches): (&[usize], &[usize]),
    repeats: usize,
) -> Result<AttentionTuning, crate::backend::BackendError> {
    let d = shape.head_dim as usize;
    let data =
        |seed: u64, n: usize, heads: usize| crate::attention::synthetic_kv(heads, n, d, seed, 1.0);
    let err = |e: kvq_ir::TensorError| crate::backend::BackendError::Quant(e.into());
    let candidates = attention_candidates(scheme);
    let default = AttentionSchedule::host_default(scheme);
    let pairs = spans.len() * batches.len();
    let mut times = vec![Vec::with_capacity(pairs); candidates.len()];
    let mut agree = vec![true; candidates.len()];
    for &tokens in spans {
        for &batch in batches {
            // Sequence `s` draws its data from seeds 8s + 1 ..= 8s + 5.
            let owned = (0..batch as u64)
                .map(|s| {
                    let seed = 8 * s;
                    let (k, v) = (
                        data(seed + 1, tokens, kv_heads).map_err(err)?,
                        data(seed + 2, tokens, kv_heads).map_err(err)?,
                    );
                    let fk = data(seed + 3, 64, kv_heads).map_err(err)?;
                    let fv = data(seed + 4, 64, kv_heads).map_err(err)?;
                    let q = data(seed + 5, 1, kv_heads * shape.group as usize).map_err(err)?;
                    let (pk, pv) = (quantize(&k, &scheme.key)?, quantize(&v, &scheme.value)?);
                    Ok((pk, pv, fk, fv, q))
                })
                .collect::<Result<Vec<_>, crate::backend::BackendError>>()?;
            let seqs: Vec<SeqData<'_>> = owned
                .iter()
                .map(|(pk, pv, fk, fv, q)| SeqData {
                    q: q.data(),
                    fp: Some((fk, fv)),
                    span: Some((pk, pv)),
                })
                .collect();
            let reference =
                HostAttention::new(scheme, shape, Some(default))?.attend(kv_heads, &seqs)?;
            for (i, &s) in candidates.iter().enumerate() {
                let attn = HostAttention::new(scheme, shape, Some(s))?;
                let mut args = attn.prepare(kv_heads, &seqs)?;
                attn.run(&mut args)?;
                agree[i] &= args.outputs().len() == reference.len()
                    && args
                        .outputs()
                        .iter()
                        .zip(&reference)
                        .all(|(a, b)| kvq_ir::metrics::max_head_deviation(a, b, d) <= 1e-4);
                let mut runs: Vec<f64> = (0..repeats.max(1))
                    .map(|_| {
                        let t = Instant::now();
                        attn.run(&mut args).map(|()| t.elapsed().as_nanos() as f64)
                    })
                    .collect::<Result<_, _>>()?;
                runs.sort_by(f64::total_cmp);
                times[i].push(runs[runs.len() / 2]);
            }
        }
    }
    let default_times = candidates
        .iter()
        .position(|&s| s == default)
        .map(|i| times[i].clone())
        .unwrap_or_default();
    let ratios: Vec<f64> = times
        .iter()
        .map(|t| {
            let logs: f64 = t
                .iter()
                .zip(&default_times)
                .map(|(a, b)| (a / b).ln())
                .sum();
            (logs / t.len().max(1) as f64).exp()
        })
        .collect();
    let best = (0..candidates.len())
        .filter(|&i| agree[i] && ratios[i].is_finite())
        .min_by(|&a, &b| ratios[a].total_cmp(&ratios[b]))
        .map_or(default, |i| candidates[i]);
    Ok(AttentionTuning {
        spans: spans.to_vec(),
        batches: batches.to_vec(),
        timings: candidates.into_iter().zip(times).collect(),
        ratios,
        best,
    })
}
