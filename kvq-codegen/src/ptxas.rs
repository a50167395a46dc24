//! ptxas, NVIDIA's PTX assembler, used to validate emitted PTX and read its resource usage
//! (registers, spills) without a GPU. It comes from the `nvidia-cuda-nvcc-cu12` wheel that
//! `scripts/setup.sh` installs into the project's `.venv`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Arch, CodegenError};

/// Resource usage of one entry point, from `ptxas -v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PtxasReport {
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
    /// Bytes of stack frame.
    pub stack_frame: u32,
    /// Bytes of static shared memory.
    pub shared: u32,
}

impl std::fmt::Display for PtxasReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} registers, {} bytes spill stores, {} bytes spill loads, {} bytes stack, {} bytes shared",
            self.registers, self.spill_stores, self.spill_loads, self.stack_frame, self.shared
        )
    }
}

/// The ptxas to use: `KVQ_PTXAS`, else the project's `.venv`, else `ptxas` on PATH.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KVQ_PTXAS").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv_lib = root.join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let on_path = Command::new("ptxas").arg("--version").output().is_ok();
    on_path.then(|| PathBuf::from("ptxas"))
}

/// Assembles `ptx` for `arch` with `ptxas -v` and reports the resources of `entry`.
pub fn assemble(
    ptxas: &Path,
    ptx: &str,
    arch: Arch,
    entry: &str,
) -> Result<PtxasReport, CodegenError> {
    let dir = std::env::temp_dir().join(format!("kvq-ptxas-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| ptxas_error(entry, e.to_string()))?;
    let input = dir.join("kernel.ptx");
    let output = dir.join("kernel.cubin");
    let result = (|| {
        std::fs::write(&input, ptx).map_err(|e| ptxas_error(entry, e.to_string()))?;
        let out = Command::new(ptxas)
            .arg(format!("-arch={}", arch.name()))
            .arg("-v")
            .arg("-o")
            .arg(&output)
            .arg(&input)
            .output()
            .map_err(|e| ptxas_error(entry, format!("cannot run {}: {e}", ptxas.display())))?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(ptxas_error(entry, text.trim().to_string()));
        }
        parse_report(&text, entry)
            .ok_or_else(|| ptxas_error(entry, format!("no resource report in: {text}")))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn ptxas_error(entry: &str, message: String) -> CodegenError {
    CodegenError::Ptxas {
        kernel: entry.to_string(),
        message,
    }
}

/// Reads the `-v` lines that follow `Compiling entry function '<entry>'`.
fn parse_report(text: &str, entry: &str) -> Option<PtxasReport> {
    let start = text.find(&format!("'{entry}'"))?;
    let section = &text[start..];
    let number_before = |s: &str, unit: &str| -> Option<u32> {
        let i = s.find(unit)?;
        s[..i].split_whitespace().last()?.parse().ok()
    };
    let mut report = PtxasReport {
        registers: 0,
        spill_stores: 0,
        spill_loads: 0,
        stack_frame: 0,
        shared: 0,
    };
    let mut seen_registers = false;
    for line in section.lines().skip(1).take(4) {
        if line.contains("stack frame") {
            report.stack_frame = number_before(line, "bytes stack frame")?;
            report.spill_stores = number_before(line, "bytes spill stores")?;
            report.spill_loads = number_before(line, "bytes spill loads")?;
        }
        if line.contains("registers") {
            report.registers = number_before(line, "registers")?;
            report.shared = number_before(line, "bytes smem").unwrap_or(0);
            seen_registers = true;
        }
    }
    seen_registers.then_some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
            ptxas info    : Function properties for k\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
            ptxas info    : Used 26 registers, 2048 bytes smem, 380 bytes cmem[0]\n";
        let r = parse_report(text, "k").unwrap();
        assert_eq!(
            r,
            PtxasReport {
                registers: 26,
                spill_stores: 4,
                spill_loads: 4,
                stack_frame: 8,
                shared: 2048
            }
        );
        assert!(parse_report(text, "other").is_none());
    }
}
