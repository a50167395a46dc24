//! The on-disk compile cache: compiled kernels (PTX text, host shared objects) keyed by a hash of
//! (kernel IR text, target, options, LLVM version, kvq-codegen version), in the spirit of
//! Triton's `~/.triton/cache`, and entries a caller keys itself ([`CacheKey::of`]: kvq's index
//! of lowered attention kernels, which names their libraries by key).
//!
//! Each entry is two files: the payload `<key>.<ext>` and `<key>.<ext>.sha256`, the payload's
//! SHA-256. Both are written to a temporary name and renamed into place (payload first), so a
//! reader sees either a whole file or none. A payload whose checksum is missing or wrong (a
//! writer between its two renames, a damaged file) is reported as corrupt and is **never
//! deleted** by a reader: the caller rebuilds and stores the entry again, and that store's
//! renames replace both files. So concurrent processes can share a cache: a reader may rebuild
//! an entry another process is writing, but never loads a payload whose bytes it has not checked,
//! and never removes a file another process just wrote.
//!
//! Location: `KVQ_CACHE_DIR` (made absolute against the working directory; empty means unset),
//! else `$XDG_CACHE_HOME/kvq`, else `$HOME/.cache/kvq`; `KVQ_CACHE=off` (or `KVQ_DUMP`, so that
//! every kernel is compiled and dumped) disables caching.

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
        CacheKey::of(&[
            concat!("kvq-codegen ", env!("CARGO_PKG_VERSION")),
            llvm_version,
            target,
            options,
            ir_text,
        ])
    }

    /// The key of a sequence of texts (each length-prefixed, so no two sequences share a
    /// key): for entries other than a kernel's code, whose caller names everything that
    /// determines them.
    pub fn of(parts: &[&str]) -> CacheKey {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        CacheKey(hex(&h.finalize()))
    }

    /// A key from its hex text ([`CacheKey::as_str`]), `None` unless it is 64 lowercase hex
    /// digits (a key names files: nothing else may reach a path).
    pub fn from_hex(text: &str) -> Option<CacheKey> {
        let valid = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| CacheKey(text.to_string()))
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
    /// An entry that failed its checksum (left in place; storing the key again replaces it).
    Corrupt,
}

/// A directory of cached compiled kernels.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CompileCache {
    /// A cache in `dir` (created on first write), made absolute against the working directory
    /// so that a library path handed to `dlopen` always names a file, never a search.
    pub fn new(dir: impl Into<PathBuf>) -> CompileCache {
        let dir = dir.into();
        CompileCache {
            dir: std::path::absolute(&dir).unwrap_or(dir),
        }
    }

    /// The cache the environment asks for, or `None` when `KVQ_CACHE=off`, when `KVQ_DUMP` is
    /// set (so every kernel is compiled and dumped), or when no location is known.
    pub fn from_env() -> Option<CompileCache> {
        if std::env::var("KVQ_CACHE").is_ok_and(|v| v == "off")
            || std::env::var_os("KVQ_DUMP").is_some()
        {
            return None;
        }
        let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = set("KVQ_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| set("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kvq")))
            .or_else(|| set("HOME").map(|d| PathBuf::from(d).join(".cache/kvq")))?;
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

    /// Looks `key` up. Nothing is deleted: a corrupt entry is reported, and the caller's
    /// [`CompileCache::store`] of a rebuild replaces it.
    pub fn lookup(&self, key: &CacheKey, ext: &str) -> Lookup {
        self.checked(key, ext).0
    }

    /// The payload of a valid entry: `None` for a miss or a corrupt entry (left in place, as
    /// [`CompileCache::lookup`] does).
    pub fn read(&self, key: &CacheKey, ext: &str) -> Option<Vec<u8>> {
        match self.checked(key, ext) {
            (Lookup::Hit(_), bytes) => bytes,
            _ => None,
        }
    }

    /// The checksum stored with `key`'s payload (hex SHA-256), unchecked: two entries with the
    /// same checksum hold the same bytes, so a caller that checked one of them may use it for
    /// both.
    pub fn stored_checksum(&self, key: &CacheKey, ext: &str) -> Option<String> {
        let sum = fs::read_to_string(self.checksum(key, ext)).ok()?;
        Some(sum.trim().to_string())
    }

    /// The lookup of `key` and, on a hit, the payload's bytes it checked.
    fn checked(&self, key: &CacheKey, ext: &str) -> (Lookup, Option<Vec<u8>>) {
        let (payload, sum) = (self.payload(key, ext), self.checksum(key, ext));
        let Ok(bytes) = fs::read(&payload) else {
            return (Lookup::Miss, None);
        };
        let valid =
            fs::read_to_string(&sum).is_ok_and(|s| s.trim() == hex(&Sha256::digest(&bytes)));
        if valid {
            (Lookup::Hit(payload), Some(bytes))
        } else {
            (Lookup::Corrupt, None)
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
    fn keys_of_parts_keep_their_boundaries() {
        assert_eq!(CacheKey::of(&["a", "b"]), CacheKey::of(&["a", "b"]));
        assert_ne!(CacheKey::of(&["ab", ""]), CacheKey::of(&["a", "b"]));
        assert_ne!(CacheKey::of(&["ab"]), CacheKey::of(&["a", "b"]));
        // SHA-256 of the empty sequence, by the definition above: no parts, no bytes.
        assert_eq!(
            CacheKey::of(&[]).as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn keys_from_text_are_hex_digests_only() {
        let k = CacheKey::of(&["x"]);
        assert_eq!(CacheKey::from_hex(k.as_str()), Some(k.clone()));
        for bad in [
            "",
            "../../etc/passwd",
            &k.as_str()[..63],
            &format!("{}0", k.as_str()),
            &k.as_str().to_uppercase(),
            &format!("/{}", &k.as_str()[1..]),
        ] {
            assert_eq!(CacheKey::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_return_checked_payloads_only() {
        let cache = temp_cache("read");
        let key = CacheKey::of(&["index"]);
        assert_eq!(cache.read(&key, "idx"), None);
        let path = cache.store(&key, "idx", b"entry").unwrap();
        assert_eq!(cache.read(&key, "idx").as_deref(), Some(&b"entry"[..]));
        fs::write(&path, b"other").unwrap();
        assert_eq!(cache.read(&key, "idx"), None);
        assert!(path.exists(), "a reader never deletes");
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
    fn corrupt_entries_are_reported_then_replaced() {
        let cache = temp_cache("corrupt");
        let key = CacheKey::new("ir", "host", "", "19");
        let path = cache.store(&key, "so", b"good bytes").unwrap();
        fs::write(&path, b"bad bytes!").unwrap();
        assert_eq!(cache.lookup(&key, "so"), Lookup::Corrupt);
        // The reader leaves it for the rebuild's store to replace.
        assert!(path.exists());
        cache.store(&key, "so", b"good bytes").unwrap();
        assert_eq!(cache.lookup(&key, "so"), Lookup::Hit(path.clone()));
        // A payload without its checksum (a writer between its two renames) is corrupt too.
        fs::remove_file(cache.checksum(&key, "so")).unwrap();
        assert_eq!(cache.lookup(&key, "so"), Lookup::Corrupt);
    }

    #[test]
    fn relative_and_empty_locations_become_absolute() {
        let cache = CompileCache::new("relative/kvq");
        assert!(cache.dir().is_absolute(), "{}", cache.dir().display());
        assert!(cache.dir().ends_with("relative/kvq"));
    }

    /// The environment variable that makes [`concurrent_worker`] run (in child processes).
    const WORKER_DIR: &str = "KVQ_CACHE_TEST_WORKER_DIR";
    const WORKER_ROUNDS: usize = 150;

    /// One of several processes sharing a cache: looks the key up, stores it on a miss, and
    /// checks that every hit holds the whole payload. Run by [`processes_share_a_cache`].
    #[test]
    #[ignore = "a child process of processes_share_a_cache"]
    fn concurrent_worker() {
        let dir = std::env::var(WORKER_DIR).expect("run by processes_share_a_cache");
        let cache = CompileCache::new(dir);
        let key = CacheKey::new("ir", "host", "", "19");
        let payload = vec![0x5a_u8; 256 * 1024];
        let mut hits = 0;
        for _ in 0..WORKER_ROUNDS {
            match cache.lookup(&key, "so") {
                Lookup::Hit(path) => {
                    hits += 1;
                    assert_eq!(fs::read(path).unwrap(), payload, "a hit with other bytes");
                }
                Lookup::Miss | Lookup::Corrupt => {
                    cache.store(&key, "so", &payload).unwrap();
                }
            }
        }
        println!("hits {hits}");
    }

    #[test]
    fn processes_share_a_cache() {
        let cache = temp_cache("processes");
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..4)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args(["--exact", "cache::tests::concurrent_worker", "--ignored"])
                    .args(["--nocapture", "--test-threads", "1"])
                    .env(WORKER_DIR, cache.dir())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut hits = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "a worker failed");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // The harness prints the report on its own "test ... " line.
            let n: usize = text
                .split("hits ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no worker report in {text:?}"));
            hits += n;
        }
        assert!(hits > 0, "the workers never hit");
        // Nobody deletes: once every writer is done, the entry is whole and valid.
        let key = CacheKey::new("ir", "host", "", "19");
        assert!(matches!(cache.lookup(&key, "so"), Lookup::Hit(_)));
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
