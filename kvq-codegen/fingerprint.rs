// Included by the build scripts of kvq-codegen and kvq: a fingerprint of source files, so that
// cached output of other sources (other lowering rules, other annotations) is never taken for
// the current one's.

/// 64-bit FNV-1a, fed with each file's path and contents in sorted path order.
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The fingerprint of every file under `paths` (files or directories, relative to `root`), as
/// 16 hex digits; asks cargo to rerun the build script when any of them changes.
fn fingerprint(root: &std::path::Path, paths: &[&str]) -> String {
    let mut all = Vec::new();
    for path in paths {
        println!("cargo:rerun-if-changed={path}");
        let full = root.join(path);
        // A path left out would silently fingerprint less (the crate built outside its
        // workspace): that is a build error instead.
        assert!(full.exists(), "cannot fingerprint {}: missing", full.display());
        if full.is_dir() {
            files(&full, &mut all);
        } else {
            all.push(full);
        }
    }
    all.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for path in all {
        let rel = path.strip_prefix(root).unwrap_or(&path);
        hash = fnv1a(hash, rel.to_string_lossy().as_bytes());
        hash = fnv1a(hash, &std::fs::read(&path).unwrap_or_default());
    }
    format!("{hash:016x}")
}
