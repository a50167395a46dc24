//! The stated sizes of the attention kernels' signatures ([`crate::ir::length`]): every
//! buffer's length over the scalar parameters and the batch plan, and each kernel's grid. One
//! place for the three kernels of both layouts.

use crate::ir::{Kernel, Len, Param, PlanSize, PlanSizes};
use crate::scheme::CacheScheme;

use super::{
    combine_abi as c, partial_abi as p, seq_field, stats_abi, AttentionKernels, AttentionLayout,
    AttentionSchedule, AttentionShape, BatchPlan,
};

impl PlanSizes for BatchPlan {
    fn plan_size(&self, size: PlanSize) -> u64 {
        let n = match size {
            PlanSize::Sequences => self.seqs.len() / seq_field::COUNT as usize,
            PlanSize::Chunks => self.chunks(),
            PlanSize::FpElems => self.fp_elems,
            PlanSize::KeyCodeBytes => self.k_code_bytes,
            PlanSize::KeyParams => self.k_params,
            PlanSize::ValueCodeBytes => self.v_code_bytes,
            PlanSize::ValueParams => self.v_params,
        };
        n as u64
    }
}

/// `kernels` with their sizes stated.
pub(super) fn state_sizes(
    mut kernels: AttentionKernels,
    scheme: &CacheScheme,
    shape: AttentionShape,
    schedule: &AttentionSchedule,
) -> AttentionKernels {
    let (g, d) = (u64::from(shape.group), u64::from(shape.head_dim));
    let k = |i: u32| Len::Scalar(i);
    let plan = Len::Plan;
    let konst = Len::Const;
    // Items of `partial` / `stats` (chunk, kv head) and of `combine` (sequence, query head).
    let grid = |items: Len| match schedule.layout {
        AttentionLayout::ThreadPerItem => items.ceil_div(schedule.block_size.into()),
        AttentionLayout::BlockPerItem => items,
    };
    let item_lens = |kv: u32, chunks: u32| {
        let slots = |per: u64| Len::product([k(chunks), k(kv), konst(g * per)]);
        let saved = match (schedule.layout, scheme.calibrate) {
            (AttentionLayout::ThreadPerItem, Some(_)) => slots(u64::from(schedule.chunk)),
            _ => konst(1),
        };
        let input = vec![
            Len::product([plan(PlanSize::Sequences), k(kv), konst(g * d)]),
            Len::product([plan(PlanSize::Sequences), konst(seq_field::COUNT.into())]),
            k(chunks),
            plan(PlanSize::FpElems),
            plan(PlanSize::FpElems),
            plan(PlanSize::KeyCodeBytes),
            plan(PlanSize::KeyParams),
            plan(PlanSize::KeyParams),
            plan(PlanSize::ValueCodeBytes),
            plan(PlanSize::ValueParams),
            plan(PlanSize::ValueParams),
            slots(2),
            saved,
        ];
        let outputs = [slots(2), slots(d)];
        (input, outputs, grid(Len::product([k(chunks), k(kv)])))
    };
    if let Some(stats) = &mut kernels.stats {
        let (lens, _, grid) = item_lens(stats_abi::KV_HEADS, stats_abi::CHUNKS);
        set(stats, lens, grid);
    }
    let (mut lens, outputs, item_grid) = item_lens(p::KV_HEADS, p::CHUNKS);
    lens.extend(outputs);
    set(&mut kernels.partial, lens, item_grid);
    let per_chunk =
        |per: u64| Len::product([plan(PlanSize::Chunks), k(c::KV_HEADS), konst(g * per)]);
    let combine = vec![
        Len::product([k(c::BATCH), konst(seq_field::COUNT.into())]),
        per_chunk(2),
        per_chunk(d),
        Len::product([k(c::BATCH), k(c::KV_HEADS), konst(g * d)]),
    ];
    let heads = Len::product([k(c::BATCH), k(c::KV_HEADS), konst(g)]);
    set(&mut kernels.combine, combine, grid(heads));
    kernels
}

/// Gives the buffer parameters of `kernel`, in order, the lengths `lens`, and the grid bound.
fn set(kernel: &mut Kernel, lens: Vec<Len>, grid: Len) {
    let buffers = kernel.params.iter_mut().filter_map(|p| match p {
        Param::Buffer { len, .. } => Some(len),
        Param::Scalar { .. } => None,
    });
    for (len, l) in buffers.zip(lens) {
        *len = Some(l);
    }
    kernel.max_grid = Some(grid);
}
