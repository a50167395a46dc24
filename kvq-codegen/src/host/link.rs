//! Linking a host object into a shared library and loading it.
//!
//! The objects are written to a fresh directory `$TMPDIR/kvq-codegen-<pid>-<n>`, linked with the
//! system C compiler (`$CC`, default `cc`: `cc -shared -o kernel.so kernel0.o .. -lm`, so libcalls
//! such as f64-to-f16 conversions resolve against the C runtime as usual), and the `.so` is
//! opened with `libloading`. The object file is removed at once; the library file and its
//! directory live as long as the [`Loaded`] value, which removes them when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use libloading::Library;

use crate::CodegenError;

/// The exported entry of a host kernel (see `crate::llvm`).
pub(super) type Entry = unsafe extern "C" fn(*const u64, u32, u32, u32);

/// A loaded library, its entry, and the temporary files to remove afterwards.
pub(super) struct Loaded {
    /// `Some` until dropped; taken first so the library is closed before its file is removed.
    library: Option<Library>,
    pub(super) entry: Entry,
    /// The library file.
    pub(super) path: PathBuf,
    /// A temporary directory to remove on drop (`None` for a library kept in the cache).
    temp_dir: Option<PathBuf>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        drop(self.library.take());
        if let Some(dir) = &self.temp_dir {
            // Best effort: a leftover temporary file is not worth a panic in drop.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Loaded {
    /// Whether the library stays where it is (a compile cache entry), not a temporary file.
    pub(super) fn kept(&self) -> bool {
        self.temp_dir.is_none()
    }
}

/// Links `objects` into one shared library in a fresh temporary directory and returns its
/// bytes (`kernel` names the build in errors).
pub(super) fn link_bytes(kernel: &str, objects: &[&[u8]]) -> Result<Vec<u8>, CodegenError> {
    let dir = unique_dir();
    std::fs::create_dir_all(&dir).map_err(io_error(kernel, &dir))?;
    let result = link(kernel, objects, &dir)
        .and_then(|lib| std::fs::read(&lib).map_err(io_error(kernel, &lib)));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Loads `symbol` from the library at `path`, which stays where it is (a cache entry).
pub(super) fn open_kept(kernel: &str, path: &Path, symbol: &str) -> Result<Loaded, CodegenError> {
    open(kernel, path, symbol, None)
}

fn unique_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kvq-codegen-{}-{n}", std::process::id()));
    // dlopen searches the library path for a name without a slash: keep every path absolute.
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Links `object` into a shared library and loads `symbol` from it.
pub(super) fn load(kernel: &str, object: &[u8], symbol: &str) -> Result<Loaded, CodegenError> {
    let dir = unique_dir();
    std::fs::create_dir_all(&dir).map_err(io_error(kernel, &dir))?;
    let result = link_and_open(kernel, object, symbol, &dir);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn io_error(kernel: &str, path: &Path) -> impl FnOnce(std::io::Error) -> CodegenError {
    let (kernel, path) = (kernel.to_string(), path.to_path_buf());
    move |source| CodegenError::Io {
        kernel,
        path,
        source,
    }
}

fn link_and_open(
    kernel: &str,
    object: &[u8],
    symbol: &str,
    dir: &Path,
) -> Result<Loaded, CodegenError> {
    let lib = link(kernel, &[object], dir)?;
    open(kernel, &lib, symbol, Some(dir.to_path_buf()))
}

/// Links `objects` into `dir/kernel.so` and returns that path.
fn link(kernel: &str, objects: &[&[u8]], dir: &Path) -> Result<PathBuf, CodegenError> {
    let lib = dir.join("kernel.so");
    let mut paths = Vec::with_capacity(objects.len());
    for (i, object) in objects.iter().enumerate() {
        let obj = dir.join(format!("kernel{i}.o"));
        std::fs::write(&obj, object).map_err(io_error(kernel, &obj))?;
        paths.push(obj);
    }
    let linker = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let link_error = |detail: String| CodegenError::Link {
        kernel: kernel.to_string(),
        linker: linker.clone(),
        detail,
    };
    let output = Command::new(&linker)
        .arg("-shared")
        .arg("-o")
        .arg(&lib)
        .args(&paths)
        .arg("-lm")
        .output()
        .map_err(|e| link_error(format!("cannot run it: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(link_error(format!("{}: {}", output.status, stderr.trim())));
    }
    for obj in &paths {
        std::fs::remove_file(obj).map_err(io_error(kernel, obj))?;
    }
    Ok(lib)
}

/// Opens the library at `lib` and finds `symbol`; `temp_dir` is removed when it is dropped.
fn open(
    kernel: &str,
    lib: &Path,
    symbol: &str,
    temp_dir: Option<PathBuf>,
) -> Result<Loaded, CodegenError> {
    let load_error = |source| CodegenError::Load {
        kernel: kernel.to_string(),
        source,
    };
    // SAFETY: the library was linked from an object this crate generated (just now, or into the
    // compile cache, whose checksum the caller verified); it has no
    // initialization routines beyond the C runtime's, which are safe to run at any time.
    let library = unsafe { Library::new(lib) }.map_err(load_error)?;
    // SAFETY: `symbol` is the kernel entry this crate defined with exactly the `Entry` signature
    // (see `crate::llvm::host_kernel`). The copied function pointer is only called while
    // `library` stays loaded: both live in the returned `Loaded`, which unloads it on drop.
    let entry: Entry = unsafe {
        *library
            .get::<Entry>(symbol.as_bytes())
            .map_err(load_error)?
    };
    Ok(Loaded {
        library: Some(library),
        entry,
        path: lib.to_path_buf(),
        temp_dir,
    })
}
