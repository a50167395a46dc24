//! kvq-codegen's one integration-test binary (LLVM is linked statically, so one link only).

mod arith;
mod common;
mod control;
mod convert;
mod launch;
mod lowered;
mod memory;
mod ptx;
mod records;
mod warp;
