//! Memory: buffer parameters, shared arrays and locals, with their bounds and access checks.

use super::exec::{malformed, Machine, Thread};
use super::trace::{self, MemAccess};
use super::value::Val;
use super::{Arg, Buffer, InterpError, Malformed};
use crate::ir::kernel::{Access, Memory, Param, ScalarType, Value};

impl Machine<'_, '_> {
    /// The memory `mem` names, which must allow a store (`write`) or a load.
    fn memory(&mut self, h: Value, mem: Memory, write: bool) -> Result<&mut Buffer, InterpError> {
        let bad = |problem| malformed(Some(h), problem);
        match mem {
            Memory::Param(i) => {
                let access = match self.kernel.params.get(i as usize) {
                    None => return Err(bad(Malformed::UnknownParam(i))),
                    Some(Param::Scalar { .. }) => return Err(bad(Malformed::NotABuffer(i))),
                    Some(Param::Buffer { access, .. }) => *access,
                };
                let allowed = match access {
                    Access::Read => !write,
                    Access::Write => write,
                    Access::ReadWrite => true,
                };
                if !allowed {
                    return Err(bad(Malformed::Access { param: i, access }));
                }
                match self.args.get_mut(i as usize) {
                    Some(Arg::Buffer(b)) => Ok(b),
                    _ => Err(bad(Malformed::NotABuffer(i))),
                }
            }
            Memory::Shared(i) => self
                .shared
                .get_mut(i as usize)
                .ok_or(bad(Malformed::UnknownShared(i))),
        }
    }

    /// True when `mem` is a shared array of Bool, held as bytes 0 and 1.
    fn bool_shared(&self, mem: Memory) -> bool {
        match mem {
            Memory::Shared(i) => self
                .kernel
                .shared
                .get(i as usize)
                .is_some_and(|s| s.elem == ScalarType::Bool),
            Memory::Param(_) => false,
        }
    }

    pub(super) fn load(
        &mut self,
        h: Value,
        mem: Memory,
        index: Value,
        lanes: u8,
        aligned: bool,
    ) -> Result<Val, InterpError> {
        if !matches!(lanes, 1 | 2 | 4 | 8 | 16) {
            return Err(malformed(Some(h), Malformed::Lanes(lanes)));
        }
        let index = self.u32_operand(h, index)?;
        let as_bool = self.bool_shared(mem);
        let buffer = self.memory(h, mem, false)?;
        let access = MemAccess::vector(mem, index, u32::from(lanes), buffer.elem(), false, aligned);
        trace::record(h, access);
        let out_of_bounds = InterpError::OutOfBounds {
            inst: h,
            mem,
            index: u64::from(index),
            lanes: u32::from(lanes),
            len: buffer.len(),
        };
        let mut elems = (0..usize::from(lanes))
            .map(|k| (index as usize).checked_add(k).and_then(|j| buffer.get(j)))
            .collect::<Option<Vec<Val>>>()
            .ok_or(out_of_bounds)?;
        if as_bool {
            for e in &mut elems {
                if let Val::U8(x) = *e {
                    *e = Val::Bool(x != 0);
                }
            }
        }
        if lanes == 1 {
            if let Some(x) = elems.pop() {
                return Ok(x);
            }
        }
        Ok(Val::Vec(elems))
    }

    pub(super) fn store(
        &mut self,
        h: Value,
        mem: Memory,
        index: Value,
        value: Value,
        aligned: bool,
    ) -> Result<(), InterpError> {
        let index = self.u32_operand(h, index)?;
        let x = self.get(h, value)?.clone();
        let wrong = self.wrong(h, value);
        let as_bool = self.bool_shared(mem);
        let buffer = self.memory(h, mem, true)?;
        let lanes = match x {
            Val::Vec(lanes) => lanes,
            scalar => vec![scalar],
        };
        let lanes = if as_bool {
            // Bool shared arrays hold bytes 0 and 1.
            let byte = |l: &Val| match l {
                Val::Bool(b) => Some(Val::U8(u8::from(*b))),
                _ => None,
            };
            lanes
                .iter()
                .map(byte)
                .collect::<Option<Vec<_>>>()
                .ok_or(wrong)?
        } else if lanes.iter().any(|l| l.scalar_ty() != Some(buffer.elem())) {
            return Err(wrong);
        } else {
            lanes
        };
        if u64::from(index) + lanes.len() as u64 > buffer.len() as u64 {
            return Err(InterpError::OutOfBounds {
                inst: h,
                mem,
                index: u64::from(index),
                lanes: lanes.len() as u32,
                len: buffer.len(),
            });
        }
        let n = lanes.len() as u32;
        let access = MemAccess::vector(mem, index, n, buffer.elem(), true, aligned);
        trace::record(h, access);
        for (k, lane) in lanes.iter().enumerate() {
            buffer.set(index as usize + k, lane);
        }
        Ok(())
    }

    /// Element `index` of shared array `shared` of the cluster's block of rank `rank` (the
    /// current block's own arrays when it is that block).
    pub(super) fn load_remote(
        &mut self,
        h: Value,
        shared: u32,
        rank: u32,
        index: u32,
    ) -> Result<Val, InterpError> {
        let mem = Memory::Shared(shared);
        let as_bool = self.bool_shared(mem);
        let current = rank == self.rank;
        let arrays = match current {
            true => Some(&self.shared),
            false => self.parked.get(rank as usize).map(|p| &p.shared),
        };
        let Some(arrays) = arrays else {
            return Err(InterpError::RemoteRank {
                inst: h,
                rank,
                cluster_size: self.kernel.cluster_size,
            });
        };
        let buffer = arrays
            .get(shared as usize)
            .ok_or(malformed(Some(h), Malformed::UnknownShared(shared)))?;
        let x = buffer.get(index as usize).ok_or(InterpError::OutOfBounds {
            inst: h,
            mem,
            index: u64::from(index),
            lanes: 1,
            len: buffer.len(),
        })?;
        let elem = buffer.elem();
        trace::record(h, MemAccess::run(mem, index, 1, elem, false));
        Ok(match (as_bool, x) {
            (true, Val::U8(b)) => Val::Bool(b != 0),
            (_, x) => x,
        })
    }

    /// The position of element `index` of `local` in a thread's locals, and its type.
    pub(super) fn local_slot(
        &self,
        t: &Thread,
        h: Value,
        local: u32,
        index: Value,
    ) -> Result<(usize, ScalarType), InterpError> {
        let index = self.u32_operand(h, index)?;
        let decl = self
            .kernel
            .locals
            .get(local as usize)
            .ok_or(malformed(Some(h), Malformed::UnknownLocal(local)))?;
        let slot = self.offsets.get(local as usize).map(|o| o + index as usize);
        match slot {
            Some(slot) if index < decl.len && slot < t.locals.len() => Ok((slot, decl.elem)),
            _ => Err(InterpError::LocalOutOfBounds {
                inst: h,
                local,
                index,
                len: decl.len,
            }),
        }
    }

    pub(super) fn select_rank(
        &mut self,
        h: Value,
        mem: Memory,
        base: u32,
        stride: u32,
        count: u32,
        rank: u32,
    ) -> Result<Val, InterpError> {
        if count == 0 || rank >= count {
            return Err(InterpError::BadRank {
                inst: h,
                count,
                rank,
            });
        }
        let buffer = self.memory(h, mem, false)?;
        if !buffer.elem().is_float() {
            return Err(malformed(Some(h), Malformed::Elem(buffer.elem())));
        }
        // The indices increase with i, so the last one bounds them all (it fits in a u64).
        let last = u64::from(base) + u64::from(count - 1) * u64::from(stride);
        let out_of_bounds = InterpError::OutOfBounds {
            inst: h,
            mem,
            index: last,
            lanes: 1,
            len: buffer.len(),
        };
        if last >= buffer.len() as u64 {
            return Err(out_of_bounds);
        }
        let gather = MemAccess {
            lanes: 1,
            repeat: count,
            stride,
            ..MemAccess::run(mem, base, 1, buffer.elem(), false)
        };
        trace::record(h, gather);
        // With stride 0 all `count` elements are `mem[base]` (and count may be 2^32 - 1): one
        // copy of it has the same order statistics.
        let (n, rank) = if stride == 0 { (1, 0) } else { (count, rank) };
        let mut xs = Vec::with_capacity(n as usize);
        for i in 0..n {
            let x = buffer.get(base as usize + i as usize * stride as usize);
            xs.push(match x {
                Some(Val::F16(x)) => x.to_f32(),
                Some(Val::BF16(x)) => x.to_f32(),
                Some(Val::F32(x)) => x,
                Some(Val::F64(x)) => x as f32,
                _ => return Err(out_of_bounds),
            });
        }
        xs.sort_by(f32::total_cmp);
        xs.get(rank as usize)
            .map(|&x| Val::F32(x))
            .ok_or(out_of_bounds)
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::interp::{run, Arg, Buffer};
    use crate::ir::{verify, Access, Builder, ScalarType};

    /// A Bool shared array (which the verifier accepts and generated code stores as bytes)
    /// holds what is stored, scalar and vector; found by the `ir_verifier` fuzz target, which
    /// saw the interpreter call such a kernel malformed.
    #[test]
    fn bool_shared_arrays_hold_bools() {
        let mut b = Builder::new("bools", 1);
        let out = b.buffer("out", ScalarType::U8, Access::Write);
        let flags = b.shared("flags", ScalarType::Bool, 4);
        let (yes, no) = (b.bool(true), b.bool(false));
        let (i0, i1, i2) = (b.u32(0), b.u32(1), b.u32(2));
        b.store(flags, i1, yes);
        let pair = b.vector(vec![no, yes]);
        b.store(flags, i2, pair);
        let all = b.load(flags, i0, 4);
        for lane in 0..4u8 {
            let x = b.extract(all, lane);
            let byte = b.convert(ScalarType::U8, x);
            let at = b.u32(u32::from(lane));
            b.store(out, at, byte);
        }
        let kernel = b.finish();
        verify(&kernel).expect("a valid kernel");
        let mut args = [Arg::Buffer(Buffer::U8(vec![9; 4]))];
        run(&kernel, &mut args, 2).expect("runs");
        assert_eq!(args[0], Arg::Buffer(Buffer::U8(vec![0, 1, 0, 1])));
    }
}
