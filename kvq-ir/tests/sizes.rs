//! The sizes kernels state in their signatures (`kvq_ir::ir::length`): what the lowerings state
//! against formulas written here from SPEC.md section 3 and the launch rules, and what the
//! interpreter does with them (a short buffer or an oversized grid is a typed error; an access
//! past a stated length is out of bounds even where the buffer is longer).

use kvq_ir::ir::interp::{self, Arg, Buffer, InterpError};
use kvq_ir::ir::PlanSizes;
use kvq_ir::ir::{verify, Access, Builder, Len, Param, PlanSize, ScalarType, SizeError};
use kvq_ir::lower::attention::{attention, AttentionSchedule, AttentionShape};
use kvq_ir::lower::{self, InputType, Launch, Schedule, ShapeClass};
use kvq_ir::scheme::catalogue::catalogue;
use kvq_ir::{Axis, CacheScheme, Group, Scheme};

/// The buffer lengths and grid a kernel states, evaluated for `scalars` (by ABI index).
fn stated(
    kernel: &kvq_ir::ir::Kernel,
    scalars: &[(u32, u32)],
    plan: Option<&dyn PlanSizes>,
) -> (Vec<u64>, u64) {
    let scalar = |i: u32| scalars.iter().find(|(j, _)| *j == i).map(|(_, v)| *v);
    let lens = kernel
        .params
        .iter()
        .filter_map(|p| match p {
            Param::Buffer { len, name, .. } => Some(
                len.as_ref()
                    .unwrap_or_else(|| panic!("{}: {name} states no length", kernel.name))
                    .eval(&scalar, plan)
                    .unwrap(),
            ),
            Param::Scalar { .. } => None,
        })
        .collect();
    let grid = kernel.max_grid.as_ref().expect("a stated grid");
    (lens, grid.eval(&scalar, plan).unwrap())
}

/// SPEC.md section 3: zero points (and scales) of a `[heads, tokens, d]` span.
fn spec_params(scheme: &Scheme, heads: u64, tokens: u64, d: u64) -> u64 {
    match (scheme.axis, scheme.group) {
        (Axis::Channel, Group::All) => heads * d,
        (Axis::Channel, Group::Size(n)) => heads * tokens.div_ceil(n.get() as u64) * d,
        (Axis::Token, Group::All) => heads * tokens,
        (Axis::Token, Group::Size(n)) => heads * tokens * (d / n.get() as u64),
    }
}

#[test]
fn every_catalogue_kernel_states_the_spec_lengths_and_its_launch_grid() {
    let mut checked = 0;
    for (name, scheme) in catalogue() {
        for d in [64u32, 128] {
            let shape = ShapeClass {
                head_dim: d,
                input: InputType::F16,
            };
            let schedules = [
                Schedule::host_default(&scheme, shape),
                Schedule::gpu_default(&scheme, shape),
                Schedule::gpu_default(&scheme, shape).without_clusters(&scheme, shape),
            ];
            for schedule in schedules {
                let q = lower::quantize(&scheme, shape, &schedule).unwrap();
                let dq = lower::dequantize(&scheme, shape, &schedule).unwrap();
                verify(&q.kernel).unwrap();
                verify(&dq.kernel).unwrap();
                for (heads, tokens) in [(1u32, 1u32), (3, 77), (8, 16384)] {
                    let (h, t, dd) = (u64::from(heads), u64::from(tokens), u64::from(d));
                    let codes = h * t * dd * u64::from(scheme.bits.width()) / 8;
                    let params = spec_params(&scheme, h, t, dd);
                    let (lens, grid) = stated(&q.kernel, &[(5, heads), (6, tokens)], None);
                    assert_eq!(lens, [h * t * dd, codes, params, params, 1], "{name} d{d}");
                    let block = q.kernel.block_size;
                    assert_eq!(grid, q.launch.grid(heads, tokens, block), "{name}");
                    let (lens, grid) = stated(&dq.kernel, &[(4, heads), (5, tokens)], None);
                    assert_eq!(lens, [codes, params, params, h * t * dd], "{name} d{d}");
                    let block = dq.kernel.block_size;
                    assert_eq!(grid, dq.launch.grid(heads, tokens, block), "{name}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, catalogue().len() * 2 * 3 * 3);
    assert!(checked >= 180, "{checked}");
}

#[test]
fn launch_grids_by_hand() {
    let per_column = Launch::BlockPerColumn { columns: 64 };
    assert_eq!(per_column.grid(6, 257, 128), 6 * 64);
    assert_eq!(per_column.grid(3, 1, 256), 3 * 64);
    let per_group = Launch::ThreadPerGroup {
        columns: 64,
        group: 32,
    };
    // 6 heads * 64 columns * ceil(257 / 32) = 9 groups -> 3456 threads -> 27 blocks of 128.
    assert_eq!(per_group.grid(6, 257, 128), 27);
    // 3 * 64 * ceil(245 / 32) = 8 -> 1536 threads -> 6 blocks of 256.
    assert_eq!(per_group.grid(3, 245, 256), 6);
    assert_eq!(per_group.grid(1, 1, 1024), 1);
    let per_row = Launch::ThreadPerRow;
    assert_eq!(per_row.grid(6, 257, 128), 13); // 1542 rows
    assert_eq!(per_row.grid(1, 257, 256), 2);
    assert_eq!(per_row.grid(0, 257, 256), 0);
    let per_rows = Launch::ThreadPerRows { rows: 16 };
    // 6 * 257 = 1542 rows -> ceil(1542 / 16) = 97 threads, one per block.
    assert_eq!(per_rows.grid(6, 257, 1), 97);
    assert_eq!(per_rows.grid(1, 16, 1), 1);
    assert_eq!(per_rows.grid(1, 17, 1), 2);
    assert_eq!(per_rows.grid(0, 17, 1), 0);
    let clusters = Launch::ClusterPerColumn {
        columns: 8,
        cluster: 8,
    };
    for tokens in [1, 16384, 65536] {
        assert_eq!(clusters.grid(8, tokens, 256), 512);
    }
    // The text form names the scalars.
    let params = [
        Param::Scalar {
            name: "heads".into(),
            ty: ScalarType::U32,
        },
        Param::Scalar {
            name: "tokens".into(),
            ty: ScalarType::U32,
        },
    ];
    assert_eq!(
        per_group.grid_len(0, 1, 128).text(&params),
        "ceil(heads * 64 * ceil(tokens / 32) / 128)"
    );
}

/// A plan given by its sizes.
struct Sizes([u64; 7]);

impl PlanSizes for Sizes {
    fn plan_size(&self, size: PlanSize) -> u64 {
        let i = PlanSize::ALL.iter().position(|&s| s == size).unwrap();
        self.0[i]
    }
}

#[test]
fn attention_kernels_state_their_lengths_over_scalars_and_the_plan() {
    let scheme = CacheScheme::parse(
        "key(bits = 1, axis = channel, group = all, rule = shrink(0.5)), \
         value(bits = 2, axis = token, group = 32, rule = minmax), calibrate = 3",
    )
    .unwrap();
    let shape = AttentionShape {
        fp: kvq_ir::lower::InputType::F32,
        head_dim: 128,
        group: 4,
    };
    // sequences, chunks, fp elems, key code bytes, key params, value code bytes, value params
    let plan = Sizes([3, 40, 1000, 2000, 300, 4000, 500]);
    for schedule in [
        AttentionSchedule::host_default(&scheme),
        AttentionSchedule::gpu_default(&scheme, shape),
    ] {
        let k = attention(&scheme, shape, &schedule).unwrap();
        let (kv, chunks, batch) = (8u64, 40u64, 3u64);
        let (g, d) = (4u64, 128u64);
        let stats = k.stats.as_ref().unwrap();
        let (lens, grid) = stated(stats, &[(13, 8), (14, 40)], Some(&plan));
        let slots = chunks * kv * g;
        let saved = match schedule.layout {
            kvq_ir::lower::attention::AttentionLayout::ThreadPerItem => {
                slots * u64::from(schedule.chunk)
            }
            kvq_ir::lower::attention::AttentionLayout::BlockPerItem => 1,
        };
        let inputs = [
            batch * kv * g * d,
            batch * 10,
            chunks,
            1000,
            1000,
            2000,
            300,
            300,
        ];
        let inputs = [&inputs[..], &[4000, 500, 500, slots * 2, saved]].concat();
        assert_eq!(lens, inputs);
        assert_eq!(grid, schedule.item_blocks(chunks * kv));
        let (lens, grid) = stated(&k.partial, &[(15, 8), (16, 40)], Some(&plan));
        assert_eq!(lens, [&inputs[..], &[slots * 2, slots * d]].concat());
        assert_eq!(grid, schedule.item_blocks(chunks * kv));
        let (lens, grid) = stated(&k.combine, &[(4, 8), (5, 3)], Some(&plan));
        assert_eq!(lens, [batch * 10, slots * 2, slots * d, batch * kv * g * d]);
        assert_eq!(grid, schedule.combine_blocks(batch * kv * g));
        // Without the plan, the sizes cannot be evaluated.
        let scalar = |_: u32| Some(8);
        let Some(Param::Buffer { len: Some(l), .. }) = k.partial.params.first() else {
            panic!("q states no length");
        };
        assert_eq!(l.eval(&scalar, None), Err(SizeError::NoPlan));
    }
}

/// A kernel that stores 1.0 at `out[i]` for `i` in `0..n` (one thread), stating `out` to hold
/// `stated` elements over the scalar `n`.
fn store_kernel(stated: Len) -> kvq_ir::ir::Kernel {
    let mut b = Builder::new("store", 1);
    let out = b.sized_buffer("out", ScalarType::F32, Access::Write, stated);
    let n = b.scalar_param("n", ScalarType::U32);
    b.max_grid(Len::Const(1));
    let zero = b.u32(0);
    let count = b.param(n);
    let one = b.f32(1.0);
    b.for_range(zero, count, 1, |b, i| {
        b.store(out, i, one);
    });
    b.finish()
}

#[test]
fn the_interpreter_refuses_a_short_buffer_and_a_large_grid() {
    let k = store_kernel(Len::Scalar(1));
    verify(&k).unwrap();
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 3])), Arg::U32(4)];
    match interp::run(&k, &mut args, 1) {
        Err(InterpError::Size(e)) => {
            assert!(matches!(
                *e,
                SizeError::ShortBuffer {
                    needed: 4,
                    found: 3,
                    ..
                }
            ));
            assert_eq!(
                e.to_string(),
                "kernel store: buffer `out` holds 3 elements, the launch needs 4 (n)"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        args[0],
        Arg::Buffer(Buffer::F32(vec![0.0; 3])),
        "nothing ran"
    );
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 4])), Arg::U32(4)];
    assert!(matches!(
        interp::run(&k, &mut args, 2),
        Err(InterpError::Size(e)) if matches!(*e, SizeError::GridTooLarge { grid: 2, max: 1, .. })
    ));
    interp::run(&k, &mut args, 1).unwrap();
    assert_eq!(args[0], Arg::Buffer(Buffer::F32(vec![1.0; 4])));
}

#[test]
fn an_access_past_the_stated_length_is_out_of_bounds_even_in_a_longer_buffer() {
    // States 2 elements, stores n = 3: the third store breaks the kernel's own promise.
    let k = store_kernel(Len::Const(2));
    verify(&k).unwrap();
    let mut args = vec![Arg::Buffer(Buffer::F32(vec![0.0; 8])), Arg::U32(3)];
    assert!(matches!(
        interp::run(&k, &mut args, 1),
        Err(InterpError::OutOfBounds {
            index: 2,
            len: 2,
            ..
        })
    ));
    // The buffer is whole again afterwards (its elements past the stated length put back).
    assert_eq!(args[0].buffer().map(Buffer::len), Some(8));
}

#[test]
fn the_verifier_rejects_a_size_over_a_non_scalar() {
    let mut k = store_kernel(Len::Scalar(0));
    assert!(verify(&k).is_err(), "refers to the buffer itself");
    k = store_kernel(Len::Scalar(1).ceil_div(0));
    assert!(verify(&k).is_err(), "divides by zero");
}
