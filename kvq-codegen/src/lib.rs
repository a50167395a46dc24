//! `kvq-codegen`: will lower kvq kernels to LLVM IR, PTX and host code.
//!
//! Nothing is generated yet: this crate holds its place in the workspace so that the dependency
//! direction (`kvq-codegen` -> `kvq-ir`) is fixed from the start. Until it lands, every
//! computation in kvq runs through the reference implementation in [`kvq_ir::reference`].
