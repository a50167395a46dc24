//! Tuning tables: load, save atomically, look up with a fallback to the default schedule.

use super::*;

/// Tuned schedules by [`TuningKey`]; see the module documentation for the file format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TuningTable {
    entries: BTreeMap<TuningKey, (Schedule, f64, Option<String>)>,
}

impl TuningTable {
    /// An empty table.
    pub fn new() -> TuningTable {
        TuningTable::default()
    }

    /// Reads a table; unparseable JSON and unknown versions are [`TuneError::Corrupt`] and
    /// [`TuneError::Version`].
    pub fn load(path: &Path) -> Result<TuningTable, TuneError> {
        let file: TableFile = read_table(path, TABLE_VERSION)?;
        let entries = file
            .entries
            .into_iter()
            .map(|e| (e.key, (e.schedule.into(), e.median_ns, e.scheme)))
            .collect();
        Ok(TuningTable { entries })
    }

    /// Writes the table atomically: to a temporary file beside `path`, then renamed over it.
    pub fn save(&self, path: &Path) -> Result<(), TuneError> {
        let file = TableFile {
            version: TABLE_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(key, (schedule, ns, scheme))| Entry {
                    key: key.clone(),
                    scheme: scheme.clone(),
                    schedule: (*schedule).into(),
                    median_ns: *ns,
                })
                .collect(),
        };
        write_table(path, &file)
    }

    /// The schedule stored under exactly `key`.
    pub fn lookup(&self, key: &TuningKey) -> Option<Schedule> {
        self.entries.get(key).map(|e| e.0)
    }

    /// The median time in ns stored with `key`'s schedule.
    pub fn median_ns(&self, key: &TuningKey) -> Option<f64> {
        self.entries.get(key).map(|e| e.1)
    }

    /// Stores `schedule` under `key`, replacing an older result and any stale one (same key but
    /// for the candidate checksum).
    pub fn insert(&mut self, key: TuningKey, schedule: Schedule, median_ns: f64) {
        self.entries.retain(|k, _| !k.same_but_checksum(&key));
        self.entries.insert(key, (schedule, median_ns, None));
    }

    /// [`TuningTable::insert`], recording the scheme's text for readers of the file.
    pub fn insert_scheme(
        &mut self,
        scheme: &Scheme,
        key: TuningKey,
        schedule: Schedule,
        median_ns: f64,
    ) {
        self.insert(key.clone(), schedule, median_ns);
        if let Some(e) = self.entries.get_mut(&key) {
            e.2 = Some(scheme.to_string());
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, whatever machine tuned it, whose checksums differ from those the current
    /// candidates and lowering give (`target: scheme` each): a stale entry is never used, so a
    /// committed table should hold none. An entry without its scheme's text, or whose text no
    /// longer parses to its hash, counts as stale too.
    pub fn stale_entries(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(key, (_, _, text))| !key.is_current(text.as_deref()))
            .map(|(key, (_, _, text))| {
                format!(
                    "{}: {}",
                    key.target,
                    text.as_deref().unwrap_or("(no scheme text)")
                )
            })
            .collect()
    }

    /// Whether an entry matches `key` but for its candidate checksum.
    fn has_stale(&self, key: &TuningKey) -> bool {
        self.entries.keys().any(|k| k.same_but_checksum(key))
    }
}

/// Writes `bytes` to a unique temporary file beside `path`, syncs it and renames it to `path`
/// (the pattern of `kvq_codegen::cache`).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    kvq_codegen::cache::write_atomic(&dir, path, bytes)
}

/// The schedule the host quantize kernel of `scheme` should use for a `heads` x `tokens` span:
/// the tuned one when `table` holds it under the current candidate checksum and
/// [`Schedule::check`] accepts it, else [`Schedule::host_default`] (with a warning on stderr
/// when the table only holds a stale or invalid entry).
pub fn schedule_for(
    table: Option<&TuningTable>,
    scheme: &Scheme,
    shape: ShapeClass,
    heads: usize,
    tokens: usize,
) -> Schedule {
    let default = Schedule::host_default(scheme, shape);
    let Some(table) = table else {
        return default;
    };
    let key = TuningKey::quantize(scheme, shape, heads, tokens);
    match table.lookup(&key) {
        Some(s) if s.check(scheme, shape).is_ok() => s,
        Some(s) => {
            eprintln!(
                "warning: tuning table entry {s:?} for `{scheme}`: invalid, using the default schedule"
            );
            default
        }
        None => {
            if table.has_stale(&key) {
                eprintln!(
                    "warning: tuning table for `{scheme}`: stale (candidates or lowering changed), using the default schedule"
                );
            }
            default
        }
    }
}

/// The table the runtime reads: `$KVQ_TUNING`, else `tuning/host.json` in the kvq package.
pub fn default_table_path() -> PathBuf {
    std::env::var_os("KVQ_TUNING")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/host.json"))
}

/// Loads [`default_table_path`] with [`load_table_at`].
pub fn load_default_table() -> Option<TuningTable> {
    load_table_at(&default_table_path())
}

/// The table at `path` for the runtime: `None` when the file does not exist, and `None` with a
/// warning on stderr (`warning: tuning table …: corrupt …, using the default schedule`) when it
/// cannot be read, does not parse or has an unknown version. Never panics.
pub fn load_table_at(path: &Path) -> Option<TuningTable> {
    if !path.exists() {
        return None;
    }
    match TuningTable::load(path) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("warning: {e}, using the default schedule");
            None
        }
    }
}

/// [`load_default_table`], loaded once per process.
pub fn default_table() -> Option<&'static TuningTable> {
    static TABLE: OnceLock<Option<TuningTable>> = OnceLock::new();
    TABLE.get_or_init(load_default_table).as_ref()
}

/// Reads a table file: JSON whose `version` is `version`, deserialized as `T`. An unreadable,
/// unparsable or other-version file is an error.
pub(super) fn read_table<T: serde::de::DeserializeOwned>(
    path: &Path,
    version: u32,
) -> Result<T, TuneError> {
    let text = fs::read_to_string(path).map_err(|source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_table(&text, path, version)
}

/// [`read_table`] of a file already read: `text`, from `path`.
pub(super) fn parse_table<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    version: u32,
) -> Result<T, TuneError> {
    let corrupt = |source| TuneError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(corrupt)?;
    let found = value.get("version").and_then(|v| v.as_u64());
    if found != Some(u64::from(version)) {
        return Err(TuneError::Version {
            path: path.to_path_buf(),
            found: found.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        });
    }
    serde_json::from_value(value).map_err(corrupt)
}

/// Writes `file` as pretty JSON (with a final newline), atomically.
pub(super) fn write_table<T: Serialize>(path: &Path, file: &T) -> Result<(), TuneError> {
    let mut text = serde_json::to_string_pretty(file).map_err(|source| TuneError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).map_err(|source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    })
}
