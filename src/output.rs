//! Writing what kvq produces: all or nothing, and the same bytes for the same input.
//!
//! Every file goes to a temporary name beside its destination, is synced and renamed into place
//! ([`write_file`]), so a failed write (a full disk, a killed process) leaves the old file
//! whole. A folder of files ([`StagedDir`]) is written to a staging folder beside it first and
//! moved in only once every file is written. Safetensors files get a canonical header
//! ([`safetensors_bytes`]): metadata and tensors in key order, never a hash map's order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use serde_json::Value;
use thiserror::Error;

/// A file or folder that could not be written; the destination is left as it was.
#[derive(Debug, Error)]
#[error("cannot write {path}: {reason}")]
pub struct OutputError {
    /// The destination.
    pub path: PathBuf,
    /// Why, in words.
    pub reason: String,
}

fn fail(path: &Path, reason: impl ToString) -> OutputError {
    OutputError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The folder `path` lies in (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over `path`. On any error `path` is untouched and the temporary file removed.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    if path.is_dir() {
        return Err(fail(path, "it is a directory"));
    }
    kvq_codegen::cache::write_atomic(&parent(path), path, bytes).map_err(|e| fail(path, e))
}

/// A safetensors file's bytes with a canonical header: `tensors` and `metadata` as
/// `safetensors::serialize` lays them out, the header's JSON objects rewritten in key order
/// (and padded to 8 bytes as the format asks), so equal inputs give equal bytes.
pub fn safetensors_bytes(
    tensors: Vec<(String, TensorView<'_>)>,
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let metadata = (!metadata.is_empty()).then(|| metadata.into_iter().collect());
    let bytes = safetensors::serialize(tensors, &metadata)
        .map_err(|e| kvq_runtime::kv_file::safetensors_reason(&e))?;
    let short = || "safetensors wrote a short buffer".to_string();
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)?;
    let end = usize::try_from(u64::from_le_bytes(len_bytes))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(short)?;
    let header: Value = serde_json::from_slice(&bytes[8..end]).map_err(|e| e.to_string())?;
    let mut text = serde_json::to_string(&sorted(header)).map_err(|e| e.to_string())?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// `value` with every object's keys in order (whatever map serde_json was built with).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// A folder written all or nothing: files go to a staging folder beside `dest`, and
/// [`StagedDir::commit`] moves them into `dest` (created if absent) in the order written, so a
/// manifest written last appears last. Dropped without a commit, it removes the staging folder
/// and `dest` is as it was.
#[derive(Debug)]
pub struct StagedDir {
    dest: PathBuf,
    staging: PathBuf,
    files: Vec<String>,
}

impl StagedDir {
    /// A staging folder for `dest`.
    pub fn new(dest: &Path) -> Result<StagedDir, OutputError> {
        if dest.exists() && !dest.is_dir() {
            return Err(fail(dest, "it exists and is not a directory"));
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".to_string());
        let staging = parent(dest).join(format!(".{name}.staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| fail(dest, e))?;
        Ok(StagedDir {
            dest: dest.to_path_buf(),
            staging,
            files: Vec::new(),
        })
    }

    /// Writes `name` (a plain file name) into the staging folder; writing a name again
    /// replaces its bytes (one file is moved in, not two).
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), OutputError> {
        let path = self.staging.join(name);
        std::fs::write(&path, bytes).map_err(|e| fail(&self.dest.join(name), e))?;
        if !self.files.iter().any(|f| f == name) {
            self.files.push(name.to_string());
        }
        Ok(())
    }

    /// Moves every staged file into the destination folder.
    pub fn commit(self) -> Result<(), OutputError> {
        std::fs::create_dir_all(&self.dest).map_err(|e| fail(&self.dest, e))?;
        for name in &self.files {
            let (from, to) = (self.staging.join(name), self.dest.join(name));
            std::fs::rename(&from, &to).map_err(|e| fail(&to, e))?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        // Best effort: a leftover staging folder is not worth a panic in drop.
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::Dtype;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvq-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn safetensors_bytes_do_not_depend_on_insertion_order() {
        let data = [1u8, 2, 3, 4];
        let make = |keys: &[&str]| {
            let meta: BTreeMap<String, String> = keys
                .iter()
                .map(|k| (k.to_string(), format!("v{k}")))
                .collect();
            let views = vec![
                (
                    "b".to_string(),
                    TensorView::new(Dtype::U8, vec![2], &data[..2]).unwrap(),
                ),
                (
                    "a".to_string(),
                    TensorView::new(Dtype::U8, vec![2], &data[2..]).unwrap(),
                ),
            ];
            safetensors_bytes(views, meta).unwrap()
        };
        let first = make(&["x", "y", "z", "w"]);
        for _ in 0..8 {
            assert_eq!(make(&["w", "z", "y", "x"]), first);
        }
        // Readable by the safetensors crate, data intact.
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &[1, 2]);
        assert_eq!(st.tensor("a").unwrap().data(), &[3, 4]);
        let (n, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(n % 8, 0);
        assert_eq!(meta.metadata().as_ref().unwrap()["z"], "vz");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = temp("atomic");
        let path = dir.join("out.bin");
        write_file(&path, b"old").unwrap();
        // A destination inside a missing folder fails before touching anything.
        assert!(write_file(&dir.join("missing/out.bin"), b"new").is_err());
        assert!(write_file(&dir, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        write_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_staged_folder_appears_only_on_commit() {
        let dir = temp("staged");
        let dest = dir.join("kernels");
        let mut staged = StagedDir::new(&dest).unwrap();
        staged.write("a.ll", b"a").unwrap();
        assert!(!dest.exists());
        drop(staged);
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "staging removed"
        );
        let mut staged = StagedDir::new(&dest).unwrap();
        staged.write("a.ll", b"a").unwrap();
        staged.write("manifest.json", b"{}").unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(dest.join("a.ll")).unwrap(), b"a");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
