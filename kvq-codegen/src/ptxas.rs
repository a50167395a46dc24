//! ptxas, NVIDIA's PTX assembler, used to validate emitted PTX and read its resource usage
//! (registers, spills) without a GPU, and nvdisasm, which lists the machine code (SASS) ptxas
//! made, for its instruction count. They come from the `nvidia-cuda-nvcc-cu12` and
//! `nvidia-cuda-nvdisasm` wheels that `scripts/setup.sh` installs into the project's `.venv`.

use std::collections::BTreeMap;
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
    find_tool("KVQ_PTXAS", &["nvidia/cuda_nvcc/bin/ptxas"], "ptxas")
}

/// The nvdisasm to use: `KVQ_NVDISASM`, else the project's `.venv`, else `nvdisasm` on PATH.
pub fn find_nvdisasm() -> Option<PathBuf> {
    let wheels = [
        "nvidia/cu13/bin/nvdisasm",
        "nvidia/cuda_nvdisasm/bin/nvdisasm",
    ];
    find_tool("KVQ_NVDISASM", &wheels, "nvdisasm")
}

/// `$var` if set (and a file), else the first of `wheel_paths` under the `.venv`'s
/// site-packages, else `name` if it runs from PATH.
fn find_tool(var: &str, wheel_paths: &[&str], name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv_lib = root.join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        for e in entries.flatten() {
            for wheel in wheel_paths {
                let p = e.path().join("site-packages").join(wheel);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    let on_path = Command::new(name).arg("--version").output().is_ok();
    on_path.then(|| PathBuf::from(name))
}

/// Assembles `ptx` for `arch` with `ptxas -v` and reports the resources of `entry`.
pub fn assemble(
    ptxas: &Path,
    ptx: &str,
    arch: Arch,
    entry: &str,
) -> Result<PtxasReport, CodegenError> {
    assemble_then(ptxas, ptx, arch, entry, &[], |_| Ok(())).map(|(report, ())| report)
}

/// Machine instructions of a kernel by the line they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SassLines {
    /// Every instruction counted (as [`assemble_counting`] counts them).
    pub total: u32,
    /// By source line (for [`crate::ptx::emit_with_lines`]'s PTX, a kvq IR instruction's index
    /// plus 1); line 0 holds the instructions nvdisasm gives no line.
    pub by_line: BTreeMap<u32, u32>,
    /// The loads and stores of global and shared memory among them (`LDG`, `STG`, `LDS`,
    /// `STS`, `LD`, `ST`), by line.
    pub memory_by_line: BTreeMap<u32, u32>,
}

/// [`assemble_counting`] of PTX with line information (`ptxas -lineinfo`, `nvdisasm -c -g`):
/// the count by line as well.
pub fn assemble_counting_lines(
    ptxas: &Path,
    nvdisasm: &Path,
    ptx: &str,
    arch: Arch,
    entry: &str,
) -> Result<(PtxasReport, SassLines), CodegenError> {
    assemble_then(ptxas, ptx, arch, entry, &["-lineinfo"], |cubin| {
        let listing = disassemble(nvdisasm, cubin, entry, &["-c", "-g"])?;
        Ok(count_sass_lines(&listing))
    })
}

/// The `nvdisasm` listing of `cubin` with `args`.
fn disassemble(
    nvdisasm: &Path,
    cubin: &Path,
    entry: &str,
    args: &[&str],
) -> Result<String, CodegenError> {
    let out = Command::new(nvdisasm)
        .args(args)
        .arg(cubin)
        .output()
        .map_err(|e| ptxas_error(entry, format!("cannot run {}: {e}", nvdisasm.display())))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ptxas_error(entry, format!("nvdisasm failed: {text}")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`assemble`], and the number of machine instructions ptxas made of the kernel's body
/// (`nvdisasm -c` on the cubin): the static count of its instruction lines, `NOP` padding and
/// the internal subroutines after it (the slow path of IEEE division, which only operands near
/// the ends of the exponent range take) left out.
pub fn assemble_counting(
    ptxas: &Path,
    nvdisasm: &Path,
    ptx: &str,
    arch: Arch,
    entry: &str,
) -> Result<(PtxasReport, u32), CodegenError> {
    assemble_then(ptxas, ptx, arch, entry, &[], |cubin| {
        let listing = disassemble(nvdisasm, cubin, entry, &["-c"])?;
        Ok(count_sass_lines(&listing).total)
    })
}

/// Instruction lines of `nvdisasm -c` output (`/*0a30*/  OPCODE ...;`) before the first
/// internal subroutine (`$__internal...:`), `NOP`s left out; each counted under the line of the
/// last `//## File "...", line N` annotation before it (`-g`), or line 0.
fn count_sass_lines(listing: &str) -> SassLines {
    let mut out = SassLines::default();
    let mut line = 0u32;
    let body = listing
        .lines()
        .take_while(|l| !(l.starts_with("$__internal") && l.trim_end().ends_with(':')));
    for l in body {
        let l = l.trim_start();
        if let Some(note) = l.strip_prefix("//## File") {
            // (The first line number: an inlined location names its call site after it.)
            line = note
                .split_once("line ")
                .and_then(|(_, n)| n.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            continue;
        }
        if let Some(opcode) = opcode(l) {
            out.total = out.total.saturating_add(1);
            *out.by_line.entry(line).or_default() += 1;
            let base = opcode.split('.').next().unwrap_or("");
            if matches!(base, "LDG" | "STG" | "LDS" | "STS" | "LD" | "ST") {
                *out.memory_by_line.entry(line).or_default() += 1;
            }
        }
    }
    out
}

/// The opcode of a trimmed listing line that is a machine instruction other than `NOP`.
fn opcode(l: &str) -> Option<&str> {
    let (offset, rest) = l.strip_prefix("/*")?.split_once("*/")?;
    let is_offset = !offset.is_empty() && offset.chars().all(|c| c.is_ascii_hexdigit());
    let opcode = rest.split_whitespace().find(|w| !w.starts_with('@'))?;
    let opcode = opcode.trim_end_matches(';');
    (is_offset && opcode != "NOP").then_some(opcode)
}

/// Assembles `ptx` into a temporary cubin, reads `entry`'s resources and runs `then` on the
/// cubin before the temporary folder is removed.
fn assemble_then<T>(
    ptxas: &Path,
    ptx: &str,
    arch: Arch,
    entry: &str,
    flags: &[&str],
    then: impl FnOnce(&Path) -> Result<T, CodegenError>,
) -> Result<(PtxasReport, T), CodegenError> {
    let dir = std::env::temp_dir().join(format!("kvq-ptxas-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| ptxas_error(entry, e.to_string()))?;
    let input = dir.join("kernel.ptx");
    let output = dir.join("kernel.cubin");
    let result = (|| {
        std::fs::write(&input, ptx).map_err(|e| ptxas_error(entry, e.to_string()))?;
        let out = Command::new(ptxas)
            .arg(format!("-arch={}", arch.name()))
            .arg("-v")
            .args(flags)
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
        let report = parse_report(&text, entry)
            .ok_or_else(|| ptxas_error(entry, format!("no resource report in: {text}")))?;
        Ok((report, then(&output)?))
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

    #[test]
    fn counts_sass_instruction_lines_without_nops() {
        let listing = "\t.headerflags\t@\"EF_CUDA_SM90\"\n\
            //------ .text.k ------\n\
            k:\n\
            .text.k:\n\
            \x20       /*0000*/                   LDC R1, c[0x0][0x28] ;\n\
            \x20       /*0010*/               @P0 BRA `(.L_x_1) ;\n\
            .L_x_1:\n\
            \x20       /*0020*/                   EXIT ;\n\
            \x20       /*0030*/                   BRA `(.L_x_2);\n\
            \x20       /*0040*/                   NOP;\n\
            \x20       /*0050*/                   NOP;\n\
            \x20       .weak           $__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath\n\
            $__internal_0_$__cuda_sm3x_div_rn_noftz_f32_slowpath:\n\
            \x20       /*0060*/                   SHF.R.U32.HI R4, RZ, 0x17, R3 ;\n\
            \x20       /*0070*/                   RET.REL.NODEC R4 `(k) ;\n";
        assert_eq!(count_sass_lines(listing).total, 4);
    }

    #[test]
    fn counts_sass_instructions_by_line() {
        let listing = "k:\n\
            \x20       /*0000*/                   LDC R1, c[0x0][0x28] ;\n\
            \t//## File \"./k.kvqir\", line 12\n\
            \x20       /*0010*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;\n\
            \x20       /*0020*/                   IADD3 R0, R0, 0x1, RZ ;\n\
            \t//## File \"./k.kvqir\", line 7 inlined at \"./k.kvqir\", line 3\n\
            \x20       /*0030*/               @P0 STS [R3], R4 ;\n\
            \x20       /*0040*/                   LDSM.16.M88.4 R8, [R3] ;\n\
            \t//## File \"./k.kvqir\", line 12\n\
            \x20       /*0050*/                   LDS.64 R8, [R3] ;\n\
            \x20       /*0060*/                   NOP;\n";
        let c = count_sass_lines(listing);
        assert_eq!(c.total, 6);
        let by = |m: &BTreeMap<u32, u32>| m.iter().map(|(&l, &n)| (l, n)).collect::<Vec<_>>();
        assert_eq!(by(&c.by_line), [(0, 1), (7, 2), (12, 3)]);
        // LDG, STS and LDS are loads and stores of global and shared memory; LDC (constants)
        // and LDSM (matrix fragments) are not counted as such.
        assert_eq!(by(&c.memory_by_line), [(7, 1), (12, 2)]);
    }
}
