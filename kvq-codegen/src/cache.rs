//! The on-disk compile cache: compiled kernels (PTX text, host shared objects) keyed by a hash of
//! (kernel IR text, target, options, LLVM version, kvq-codegen version), in the spirit of
//! Triton's `~/.triton/cache`.
//!
//! Each entry is two files: the payload `<key>.<ext>` and `<key>.<ext>.sha256`, the payload's
//! SHA-256. Both are written to a temporary name and renamed into place (payload first), so a
//! reader never sees a half-written entry as valid. A payload whose checksum is missing or wrong
//! is treated as corrupt: it is deleted and reported as a miss, so the caller rebuilds it.
//!
//! Location: `KVQ_CACHE_DIR`, else `$XDG_CACHE_HOME/kvq`, else `$HOME/.cache/kvq`; `KVQ_CACHE=off`
//! (or `KVQ_DUMP`, so that every kernel is compiled and dumped) disables caching.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// A cache key: the hex SHA-256 of everything that determines a compiled kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `ir_text` compiled for `target` with `options` by LLVM `llvm_version`.
    pub fn new(ir_text: &str, target: &str, options: &str, llvm_version: &str) -> CacheKey {
        let mut h = Sha256::new();
        for part in [
            concat!("kvq-codegen ", env!("CARGO_PKG_VERSION")),
            llvm_version,
            target,
            options,
            ir_text,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        CacheKey(hex(&h.finalize()))
    }

    /// The key as hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A valid entry at this path.
    Hit(PathBuf),
    /// No entry.
    Miss,
    /// An entry that failed its checksum; it has been removed.
    Corrupt,
}

/// A directory of cached compiled kernels.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CompileCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache { dir: dir.into() }
    }

    /// The cache the environment asks for, or `None` when `KVQ_CACHE=off`, when `KVQ_DUMP` is
    /// set (so every kernel is compiled and dumped), or when no location is known.
    pub fn from_env() -> Option<CompileCache> {
        if std::env::var("KVQ_CACHE").is_ok_and(|v| v == "off")
            || std::env::var_os("KVQ_DUMP").is_some()
        {
            return None;
        }
        let dir = std::env::var_os("KVQ_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kvq")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/kvq")))?;
        Some(CompileCache::new(dir))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn payload(&self, key: &CacheKey, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", key.as_str()))
    }

    fn checksum(&self, key: &CacheKey, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}.sha256", key.as_str()))
    }

    /// Looks `key` up; a corrupt entry is deleted.
    pub fn lookup(&self, key: &CacheKey, ext: &str) -> Lookup {
        let (payload, sum) = (self.payload(key, ext), self.checksum(key, ext));
        let Ok(bytes) = fs::read(&payload) else {
            return Lookup::Miss;
        };
        let valid =
            fs::read_to_string(&sum).is_ok_and(|s| s.trim() == hex(&Sha256::digest(&bytes)));
        if valid {
            Lookup::Hit(payload)
        } else {
            let _ = fs::remove_file(&payload);
            let _ = fs::remove_file(&sum);
            Lookup::Corrupt
        }
    }

    /// Stores `bytes` under `key` atomically and returns the payload's path.
    pub fn store(&self, key: &CacheKey, ext: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let payload = self.payload(key, ext);
        write_atomic(&self.dir, &payload, bytes)?;
        write_atomic(
            &self.dir,
            &self.checksum(key, ext),
            hex(&Sha256::digest(bytes)).as_bytes(),
        )?;
        Ok(payload)
    }
}

/// Writes `bytes` to a unique temporary file in `dir` (on the same file system as `path`),
/// syncs it and renames it to `path`, so readers see the old file or the whole new one.
pub fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_cache(name: &str) -> CompileCache {
        let dir =
            std::env::temp_dir().join(format!("kvq-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        CompileCache::new(dir)
    }

    #[test]
    fn keys_depend_on_every_input() {
        let k = CacheKey::new("ir", "sm_80", "O3", "19.1");
        assert_eq!(k, CacheKey::new("ir", "sm_80", "O3", "19.1"));
        for other in [
            CacheKey::new("ir2", "sm_80", "O3", "19.1"),
            CacheKey::new("ir", "sm_90", "O3", "19.1"),
            CacheKey::new("ir", "sm_80", "O2", "19.1"),
            CacheKey::new("ir", "sm_80", "O3", "19.2"),
            CacheKey::new("irs", "m_80", "O3", "19.1"),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn stores_then_hits() {
        let cache = temp_cache("hit");
        let key = CacheKey::new("ir", "host", "", "19");
        assert_eq!(cache.lookup(&key, "ptx"), Lookup::Miss);
        let path = cache.store(&key, "ptx", b"payload").unwrap();
        assert_eq!(cache.lookup(&key, "ptx"), Lookup::Hit(path.clone()));
        assert_eq!(fs::read(path).unwrap(), b"payload");
    }

    #[test]
    fn corrupt_entries_are_removed_never_loaded() {
        let cache = temp_cache("corrupt");
        let key = CacheKey::new("ir", "host", "", "19");
        let path = cache.store(&key, "so", b"good bytes").unwrap();
        fs::write(&path, b"bad bytes!").unwrap();
        assert_eq!(cache.lookup(&key, "so"), Lookup::Corrupt);
        assert!(!path.exists());
        assert_eq!(cache.lookup(&key, "so"), Lookup::Miss);
        // A payload without its checksum (a writer died between the two renames) is corrupt too.
        let path = cache.store(&key, "so", b"good bytes").unwrap();
        fs::remove_file(cache.checksum(&key, "so")).unwrap();
        assert_eq!(cache.lookup(&key, "so"), Lookup::Corrupt);
        assert!(!path.exists());
    }

    #[test]
    fn leaves_no_temporary_files() {
        let cache = temp_cache("tmp");
        let key = CacheKey::new("ir", "host", "", "19");
        cache.store(&key, "ptx", b"x").unwrap();
        let names: Vec<String> = fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
        assert_eq!(names.len(), 2);
    }
}
