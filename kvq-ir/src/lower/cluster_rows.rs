//! The cluster kernel's rows ([`super::cluster_channel`]): where a thread's rows lie in the
//! span and in the stage, and the passes over them (from `x` while staging, from the stage,
//! by slots of other threads' rows for the quantile rule's counting).

use crate::ir::{Builder, CmpOp, Memory, ScalarType, Special, Value};

use super::cluster_channel::ClusterPlan;
use super::key16::{element_of_key16, key16};
use super::quantize_abi as abi;

/// A block's place: head, column, first channel, rank, and the thread's strand, its number of
/// rows and how many of them it stages.
pub(super) struct Coords {
    pub(super) h: Value,
    pub(super) col: Value,
    pub(super) c0: Value,
    pub(super) rank: Value,
    strand: Value,
    rows: Value,
    staged: Value,
}

/// The calling thread's [`Coords`] in a kernel over `columns` columns.
pub(super) fn coords(b: &mut Builder, p: ClusterPlan, columns: u32) -> Coords {
    let blk = b.special(Special::BlockId);
    let k = b.u32(p.cluster);
    let rank = b.rem(blk, k);
    let column = b.div(blk, k);
    let cols = b.u32(columns);
    let h = b.div(column, cols);
    let col = b.rem(column, cols);
    let w = b.u32(p.w);
    let c0 = b.mul(col, w);
    let tid = b.special(Special::ThreadId);
    let bs = b.u32(p.block_size);
    let first = b.mul(rank, bs);
    let strand = b.add(first, tid);
    let rows = rows_of(b, p, strand);
    let stage = b.u32(p.stage / p.block_size);
    let staged = b.min(rows, stage);
    Coords {
        h,
        col,
        c0,
        rank,
        strand,
        rows,
        staged,
    }
}

/// The rows of strand `strand`: whole cycles of the strands' runs, then its part of the last.
fn rows_of(b: &mut Builder, p: ClusterPlan, strand: Value) -> Value {
    let tokens = b.param(abi::TOKENS);
    let cycle = b.u32(p.strands() * p.run);
    let run = b.u32(p.run);
    let full = b.div(tokens, cycle);
    let full_rows = b.mul(full, run);
    let rest = b.rem(tokens, cycle);
    let mine = b.mul(strand, run);
    let past = b.max(rest, mine);
    let tail = b.sub(past, mine);
    let tail = b.min(tail, run);
    b.add(full_rows, tail)
}

/// The thread's `q`-th row: `(q / run) * S * run + strand * run + q % run`.
fn row_of(b: &mut Builder, at: &Coords, q: Value, p: ClusterPlan) -> Value {
    if p.run == 1 {
        let strands = b.u32(p.strands());
        let start = b.mul(q, strands);
        return b.add(start, at.strand);
    }
    let run = b.u32(p.run);
    let k = b.div(q, run);
    let r = b.rem(q, run);
    let cycle = b.u32(p.strands() * p.run);
    let start = b.mul(k, cycle);
    let mine = b.mul(at.strand, run);
    let start = b.add(start, mine);
    b.add(start, r)
}

/// Element index of the column's first channel in row `t` of head `h` of `x`.
fn x_index(b: &mut Builder, at: &Coords, t: Value, d: u32) -> Value {
    let tokens = b.param(abi::TOKENS);
    let ht = b.mul(at.h, tokens);
    let row = b.add(ht, t);
    let dv = b.u32(d);
    let start = b.mul(row, dv);
    b.add(start, at.c0)
}

/// Element index of the thread's `q`-th row in the staged rows (`q * block + tid`).
fn stage_index(b: &mut Builder, q: Value, p: ClusterPlan) -> Value {
    let bs = b.u32(p.block_size);
    let first = b.mul(q, bs);
    let tid = b.special(Special::ThreadId);
    let row = b.add(first, tid);
    let wv = b.u32(p.w);
    b.mul(row, wv)
}

/// What a pass over the thread's rows reads: `x` (and, with `fill`, the staged rows stored on
/// the way), or the staged rows and `x` past them.
pub(super) struct Rows {
    p: ClusterPlan,
    columns: u32,
    d: u32,
    input: ScalarType,
    x: Memory,
    /// The staged rows: the input's elements, or with `keys` their 16-bit order keys.
    stage: Memory,
    /// Whether the stage holds [`key16`]s of f16 or bf16 elements (the quantile rule, whose
    /// counting passes then read keys instead of computing them from each element every pass).
    keys: bool,
}

impl Rows {
    /// The rows of a kernel over `columns` columns of `d`-channel heads of `input` elements in
    /// `x`, staged in `stage` (as [`key16`]s with `keys`).
    pub(super) fn new(
        p: ClusterPlan,
        [columns, d]: [u32; 2],
        input: ScalarType,
        [x, stage]: [Memory; 2],
        keys: bool,
    ) -> Rows {
        Rows {
            p,
            columns,
            d,
            input,
            x,
            stage,
            keys,
        }
    }

    /// Calls `body(b, t, values)` for each of the thread's rows `t` in order, with the row's 16
    /// values as f32; with `fill` the staged rows come from `x` and are stored to the stage.
    pub(super) fn each(
        &self,
        b: &mut Builder,
        fill: bool,
        body: &dyn Fn(&mut Builder, Value, Vec<Value>),
    ) {
        let at = coords(b, self.p, self.columns);
        let zero = b.u32(0);
        b.for_range(zero, at.staged, 1, |b, q| {
            let t = row_of(b, &at, q, self.p);
            let s = stage_index(b, q, self.p);
            let values = match fill {
                true => {
                    let idx = x_index(b, &at, t, self.d);
                    let raw = b.load_aligned(self.x, idx, self.p.w as u8);
                    let staged = match self.keys {
                        true => {
                            let keys = (0..self.p.w as u8)
                                .map(|l| {
                                    let x = b.extract(raw, l);
                                    key16(b, x)
                                })
                                .collect();
                            b.vector(keys)
                        }
                        false => raw,
                    };
                    b.store_aligned(self.stage, s, staged);
                    widen(b, raw, self.p.w, self.input)
                }
                false => {
                    let staged = b.load_aligned(self.stage, s, self.p.w as u8);
                    self.widen_staged(b, staged)
                }
            };
            body(b, t, values);
        });
        b.for_range(at.staged, at.rows, 1, |b, q| {
            let t = row_of(b, &at, q, self.p);
            let idx = x_index(b, &at, t, self.d);
            let raw = b.load_aligned(self.x, idx, self.p.w as u8);
            let values = widen(b, raw, self.p.w, self.input);
            body(b, t, values);
        });
    }

    /// Calls `body(b, t, keys)` for each of the thread's rows `t` in order, with the row's 16
    /// [`key16`]s (U16): from the stage, which must hold keys, and from `x` past it.
    pub(super) fn each_key(&self, b: &mut Builder, body: &dyn Fn(&mut Builder, Value, Vec<Value>)) {
        debug_assert!(self.keys);
        let at = coords(b, self.p, self.columns);
        let zero = b.u32(0);
        let lanes = |b: &mut Builder, v: Value, staged: bool| -> Vec<Value> {
            (0..self.p.w as u8)
                .map(|l| {
                    let x = b.extract(v, l);
                    match staged {
                        true => x,
                        false => key16(b, x),
                    }
                })
                .collect()
        };
        b.for_range(zero, at.staged, 1, |b, q| {
            let t = row_of(b, &at, q, self.p);
            let s = stage_index(b, q, self.p);
            let staged = b.load_aligned(self.stage, s, self.p.w as u8);
            let keys = lanes(b, staged, true);
            body(b, t, keys);
        });
        b.for_range(at.staged, at.rows, 1, |b, q| {
            let t = row_of(b, &at, q, self.p);
            let idx = x_index(b, &at, t, self.d);
            let raw = b.load_aligned(self.x, idx, self.p.w as u8);
            let keys = lanes(b, raw, false);
            body(b, t, keys);
        });
    }

    /// The 16 staged elements `staged` (a vector load of the stage) as f32.
    fn widen_staged(&self, b: &mut Builder, staged: Value) -> Vec<Value> {
        if !self.keys {
            return widen(b, staged, self.p.w, self.input);
        }
        (0..self.p.w as u8)
            .map(|l| {
                let k = b.extract(staged, l);
                let x = element_of_key16(b, k, self.input);
                b.convert(ScalarType::F32, x)
            })
            .collect()
    }

    /// The most rows a thread of the cluster has (strand 0's; block-uniform).
    pub(super) fn most_rows(&self, b: &mut Builder) -> Value {
        let first = b.u32(0);
        rows_of(b, self.p, first)
    }

    /// Whether the stage holds the elements' 16-bit order keys ([`key16`]).
    pub(super) fn stages_keys(&self) -> bool {
        self.keys
    }

    /// The type of what [`Rows::each_of_slots`] passes on: U16 keys when the stage holds keys,
    /// else the input's type.
    pub(super) fn slot_type(&self) -> ScalarType {
        match self.keys {
            true => ScalarType::U16,
            false => self.input,
        }
    }

    /// Calls `body(b, x)` with channel `c` (a U32 value below `w`) of the rows `q_lo .. q_hi`
    /// (U32 values; `q` counts a thread's rows) of the block's threads `first ..+ slots` (a
    /// U32 value and a constant; runs of one row), as the element's [`key16`] when the stage
    /// holds keys, else in the input's own type: their staged rows from shared memory, the rows
    /// past them from `x` (through the local `value` of one element of [`Rows::slot_type`]).
    pub(super) fn each_of_slots(
        &self,
        b: &mut Builder,
        (first, slots): (Value, u32),
        (q_lo, q_hi): (Value, Value),
        c: Value,
        value: u32,
        body: &dyn Fn(&mut Builder, Value),
    ) {
        debug_assert_eq!(self.p.run, 1);
        let at = coords(b, self.p, self.columns);
        let bs = b.u32(self.p.block_size);
        let block_start = b.mul(at.rank, bs);
        let strand0 = b.add(block_start, first);
        let strands: Vec<Value> = (0..slots)
            .map(|i| {
                let i = b.u32(i);
                b.add(strand0, i)
            })
            .collect();
        let rows: Vec<Value> = strands.iter().map(|&st| rows_of(b, self.p, st)).collect();
        let stage_rows = b.u32(self.p.stage / self.p.block_size);
        // Strands later in the cluster have no more rows than earlier ones.
        let all_have = b.min(rows[slots as usize - 1], stage_rows);
        let staged_end = b.min(all_have, q_hi);
        b.for_range(q_lo, staged_end, 1, |b, q| {
            let bs = b.u32(self.p.block_size);
            let row0 = b.mul(q, bs);
            let row0 = b.add(row0, first);
            let wv = b.u32(self.p.w);
            let e0 = b.mul(row0, wv);
            let e0 = b.add(e0, c);
            for i in 0..slots {
                let off = b.u32(i * self.p.w);
                let e = b.add(e0, off);
                let raw = b.load(self.stage, e, 1);
                body(b, raw);
            }
        });
        let rest_start = b.max(all_have, q_lo);
        let rest_end = b.min(rows[0], q_hi);
        b.for_range(rest_start, rest_end, 1, |b, q| {
            for (i, (&strand, &n)) in strands.iter().zip(&rows).enumerate() {
                let has = b.cmp(CmpOp::Lt, q, n);
                b.if_then(has, |b| {
                    let staged = b.cmp(CmpOp::Lt, q, stage_rows);
                    let z = b.u32(0);
                    b.if_else(
                        staged,
                        |b| {
                            let bs = b.u32(self.p.block_size);
                            let row = b.mul(q, bs);
                            let row = b.add(row, first);
                            let i = b.u32(i as u32);
                            let row = b.add(row, i);
                            let wv = b.u32(self.p.w);
                            let e = b.mul(row, wv);
                            let e = b.add(e, c);
                            let raw = b.load(self.stage, e, 1);
                            b.write_local(value, z, raw);
                        },
                        |b| {
                            let strands = b.u32(self.p.strands());
                            let t = b.mul(q, strands);
                            let t = b.add(t, strand);
                            let start = x_index(b, &at, t, self.d);
                            let e = b.add(start, c);
                            let raw = b.load(self.x, e, 1);
                            let raw = match self.keys {
                                true => key16(b, raw),
                                false => raw,
                            };
                            b.write_local(value, z, raw);
                        },
                    );
                    let x = b.read_local(value, z);
                    body(b, x);
                });
            }
        });
    }
}

/// The 16 elements of a vector load, as f32.
fn widen(b: &mut Builder, raw: Value, w: u32, input: ScalarType) -> Vec<Value> {
    (0..w as u8)
        .map(|l| {
            let x = b.extract(raw, l);
            match input {
                ScalarType::F32 => x,
                _ => b.convert(ScalarType::F32, x),
            }
        })
        .collect()
}
