//! Machine instructions per body of a trace, from the line information ptxas keeps and nvdisasm
//! prints (`kvq_codegen::ptxas::assemble_counting_lines`): the static count of each body (the
//! machine instructions of its kvq IR instructions), divided by how many copies of the body
//! LLVM made when it unrolled the loop around it, so that one run of a body weighs what one
//! run of it issues.

use std::collections::BTreeMap;

use crate::ir::interp::Trace;
use crate::ir::{Kernel, Op, Type};

/// Machine instructions by source line (line = kvq IR instruction index + 1; line 0: none).
#[derive(Debug, Clone, Copy)]
pub struct LineCounts<'a> {
    /// Every machine instruction.
    pub all: &'a BTreeMap<u32, u32>,
    /// The global and shared loads and stores among them.
    pub memory: &'a BTreeMap<u32, u32>,
}

/// One run's machine instructions per body of `trace` (traced from `kernel`):
/// - each line's instructions go to the body its kvq instruction is counted in
///   ([`Trace::inst_bodies`]); line 0 (no line) and lines of no instruction go to the
///   top-level body, which runs once;
/// - a body whose loads and stores became `k` times the machine loads and stores one copy of
///   it makes (one per aligned access of up to 16 bytes, one per element of an unaligned one),
///   `k` the lower median over them, was copied `k` times (a loop unrolled `k - 1` times with a
///   remainder copy, or a body duplicated): its count is divided by `k`. A body without loads
///   or stores is taken as copied once.
pub fn body_machine_insts(kernel: &Kernel, trace: &Trace, lines: LineCounts<'_>) -> Vec<u64> {
    let bodies = trace.body_insts.len().max(1);
    let mut out = vec![0u64; bodies];
    let body_of = |line: u32| -> usize {
        line.checked_sub(1)
            .and_then(|i| trace.inst_bodies.get(&(i as usize)))
            .map_or(0, |&b| b as usize)
    };
    for (&line, &n) in lines.all {
        if let Some(slot) = out.get_mut(body_of(line)) {
            *slot += u64::from(n);
        }
    }
    let mut copies: Vec<Vec<u64>> = vec![Vec::new(); bodies];
    for (h, inst) in kernel.insts.iter() {
        let (mem, lanes, aligned) = match inst.op {
            Op::Load {
                mem,
                lanes,
                aligned,
                ..
            } => (mem, u64::from(lanes), aligned),
            Op::Store {
                mem,
                value,
                aligned,
                ..
            } => {
                let lanes = match kernel.insts.try_get(value).and_then(|i| i.ty) {
                    Some(Type::Vector(_, n)) => u64::from(n),
                    _ => 1,
                };
                (mem, lanes, aligned)
            }
            _ => continue,
        };
        let Some(&body) = trace.inst_bodies.get(&h.index()) else {
            continue;
        };
        let bytes = crate::ir::memory_elem(kernel, mem).map_or(4, |e| e.size() as u64);
        let one_copy = match aligned || lanes == 1 {
            true => (lanes * bytes).div_ceil(16).max(1),
            false => lanes,
        };
        let line = u32::try_from(h.index() + 1).unwrap_or(u32::MAX);
        let made = u64::from(lines.memory.get(&line).copied().unwrap_or(0));
        if made == 0 {
            continue;
        }
        if let Some(c) = copies.get_mut(body as usize) {
            c.push((made / one_copy).max(1));
        }
    }
    for (w, mut c) in out.iter_mut().zip(copies) {
        c.sort_unstable();
        let k = c.get(c.len().saturating_sub(1) / 2).copied().unwrap_or(1);
        *w /= k;
    }
    out
}
