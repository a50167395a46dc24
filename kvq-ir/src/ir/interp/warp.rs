//! Warp collectives: every warp of the block at once, on the threads' locals.

use super::exec::malformed;
use super::value::{self, Val};
use super::{InterpError, Malformed};
use crate::ir::kernel::{
    mma_a_at, mma_acc_at, mma_b_at, Kernel, ScalarType, Value, WarpOp, MMA_ACC_LEN, MMA_A_LEN,
    MMA_B_LEN, MMA_K, MMA_M, MMA_N, REDUCE_STEPS, WARP_SIZE,
};

/// Where a local lives in each thread's run of locals.
#[derive(Clone, Copy)]
struct Slot {
    offset: usize,
    len: usize,
    elem: ScalarType,
}

/// Runs collective `w` (instruction `h`) for every warp; `locals` holds every thread's locals,
/// `per_thread` elements each, local `l` at `offsets[l]`.
pub(super) fn run(
    kernel: &Kernel,
    offsets: &[usize],
    per_thread: usize,
    h: Value,
    w: WarpOp,
    locals: &mut [Val],
) -> Result<(), InterpError> {
    let bad = |problem| malformed(Some(h), problem);
    if kernel.block_size % WARP_SIZE != 0 {
        return Err(bad(Malformed::PartialWarp(kernel.block_size)));
    }
    let slot = |local: u32, ok: &[ScalarType]| -> Result<Slot, InterpError> {
        match (
            kernel.locals.get(local as usize),
            offsets.get(local as usize),
        ) {
            (Some(l), Some(&offset)) if ok.contains(&l.elem) => Ok(Slot {
                offset,
                len: l.len as usize,
                elem: l.elem,
            }),
            _ => Err(bad(Malformed::WarpLocal(local))),
        }
    };
    let shuffle_types = [ScalarType::U8, ScalarType::U32, ScalarType::F32];
    let pair = |src: u32, dst: u32| -> Result<(Slot, Slot), InterpError> {
        let (a, b) = (slot(src, &shuffle_types)?, slot(dst, &shuffle_types)?);
        match (a.elem, a.len) == (b.elem, b.len) {
            true => Ok((a, b)),
            false => Err(bad(Malformed::WarpLocal(dst))),
        }
    };
    let at = |thread: usize, slot: Slot, e: usize| thread * per_thread + slot.offset + e;
    let warps = (kernel.block_size / WARP_SIZE) as usize;
    let lanes = WARP_SIZE as usize;
    let get = |locals: &[Val], i: usize| match locals.get(i) {
        Some(x) if x.is_unwritten() => Err(unwritten(offsets, per_thread, h, i)),
        Some(x) => Ok(x.clone()),
        None => Err(bad(Malformed::UnknownInst)),
    };
    match w {
        WarpOp::ShuffleXor { src, dst, mask }
        | WarpOp::ShuffleIdx {
            src,
            dst,
            lane: mask,
        } => {
            let (from, to) = pair(src, dst)?;
            let lane_slot = match w {
                WarpOp::ShuffleIdx { .. } => Some(slot(mask, &[ScalarType::U32])?),
                _ if mask >= WARP_SIZE => return Err(bad(Malformed::ShuffleMask(mask))),
                _ => None,
            };
            for warp in 0..warps {
                let first = warp * lanes;
                // Every source lane is read before any destination is written (src may be dst).
                let mut sources = Vec::with_capacity(lanes);
                for l in 0..lanes {
                    let source = match lane_slot {
                        Some(ls) => match get(locals, at(first + l, ls, 0))? {
                            Val::U32(x) => (x % WARP_SIZE) as usize,
                            _ => return Err(bad(Malformed::WarpLocal(mask))),
                        },
                        None => l ^ mask as usize,
                    };
                    sources.push(source);
                }
                for e in 0..from.len {
                    let column: Vec<Val> = (0..lanes)
                        .map(|l| get(locals, at(first + l, from, e)))
                        .collect::<Result<_, _>>()?;
                    for (l, &source) in sources.iter().enumerate() {
                        if let (Some(x), Some(slot)) =
                            (column.get(source), locals.get_mut(at(first + l, to, e)))
                        {
                            *slot = x.clone();
                        }
                    }
                }
            }
        }
        WarpOp::Reduce { op, local } => {
            let s = slot(local, &[ScalarType::U32, ScalarType::F32])?;
            for warp in 0..warps {
                let first = warp * lanes;
                for e in 0..s.len {
                    let mut v: Vec<Val> = (0..lanes)
                        .map(|l| get(locals, at(first + l, s, e)))
                        .collect::<Result<_, _>>()?;
                    for step in REDUCE_STEPS {
                        let step = step as usize;
                        v = (0..lanes)
                            .map(|l| {
                                let (lo, hi) = (&v[l & !step], &v[l | step]);
                                value::binary(op.binary(), lo, hi)
                                    .map_err(|_| bad(Malformed::WarpLocal(local)))
                            })
                            .collect::<Result<_, _>>()?;
                    }
                    for (l, x) in v.into_iter().enumerate() {
                        if let Some(slot) = locals.get_mut(at(first + l, s, e)) {
                            *slot = x;
                        }
                    }
                }
            }
        }
        WarpOp::Mma { a, b, acc } => {
            let fragment = |local: u32, elem: ScalarType, len: u32| {
                let s = slot(local, &[elem])?;
                match s.len == len as usize {
                    true => Ok(s),
                    false => Err(bad(Malformed::WarpLocal(local))),
                }
            };
            let fa = fragment(a, ScalarType::F16, MMA_A_LEN)?;
            let fb = fragment(b, ScalarType::F16, MMA_B_LEN)?;
            let fc = fragment(acc, ScalarType::F32, MMA_ACC_LEN)?;
            let f16_at = |locals: &[Val], i: usize| match get(locals, i)? {
                Val::F16(x) => Ok(x.to_f32()),
                _ => Err(bad(Malformed::WarpLocal(a))),
            };
            for warp in 0..warps {
                let first = warp * lanes;
                // The warp's matrices, gathered from the lanes' fragments.
                let mut ma = [[0f32; MMA_K as usize]; MMA_M as usize];
                let mut mb = [[0f32; MMA_N as usize]; MMA_K as usize];
                for l in 0..WARP_SIZE {
                    let thread = first + l as usize;
                    for i in 0..MMA_A_LEN {
                        let (r, c) = mma_a_at(l, i);
                        ma[r as usize][c as usize] = f16_at(locals, at(thread, fa, i as usize))?;
                    }
                    for i in 0..MMA_B_LEN {
                        let (r, c) = mma_b_at(l, i);
                        mb[r as usize][c as usize] = f16_at(locals, at(thread, fb, i as usize))?;
                    }
                }
                for l in 0..WARP_SIZE {
                    for i in 0..MMA_ACC_LEN {
                        let (r, c) = mma_acc_at(l, i);
                        let to = at(first + l as usize, fc, i as usize);
                        let mut d = match get(locals, to)? {
                            Val::F32(x) => x,
                            _ => return Err(bad(Malformed::WarpLocal(acc))),
                        };
                        for (k, row) in mb.iter().enumerate() {
                            // f16 x f16 is exact in f32; one rounding per add.
                            d += ma[r as usize][k] * row[c as usize];
                        }
                        if let Some(slot) = locals.get_mut(to) {
                            *slot = Val::F32(d);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The error for a read of element `i` of the block's locals (`per_thread` a thread, local `l`
/// at `offsets[l]`) that holds [`Val::unwritten`].
fn unwritten(offsets: &[usize], per_thread: usize, h: Value, i: usize) -> InterpError {
    let within = i % per_thread.max(1);
    let local = offsets.iter().rposition(|&o| o <= within).unwrap_or(0);
    let first = offsets.get(local).copied().unwrap_or(0);
    InterpError::UnwrittenLocal {
        inst: h,
        local: local as u32,
        index: u32::try_from(within - first).unwrap_or(u32::MAX),
    }
}
