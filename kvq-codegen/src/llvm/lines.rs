//! Line information for profiling (PTX only, on request: [`super::ptx_text_with_lines`]): the
//! LLVM instructions of kvq IR instruction `v` carry the debug location "line `v.index() + 1`"
//! of a file named after the kernel, so that ptxas (`-lineinfo`) and nvdisasm
//! (`--print-line-info`) tell which kvq instruction each machine instruction came from. The
//! code a `Loop` or `If` emits around its blocks (counter, compare, branches) is the `Loop`'s
//! or `If`'s. Line tables only: no variables or types.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::debug_info::{
    AsDIScope, DIFlags, DIFlagsConstants, DIScope, DWARFEmissionKind, DWARFSourceLanguage,
    DebugInfoBuilder,
};
use inkwell::module::{FlagBehavior, Module};
use inkwell::values::FunctionValue;
use kvq_ir::ir::Value;

/// The debug-info builder of a module and the kernel function's scope.
pub(super) struct Lines<'ctx> {
    dib: DebugInfoBuilder<'ctx>,
    scope: DIScope<'ctx>,
}

impl<'ctx> Lines<'ctx> {
    /// Gives `module` a compile unit and `func` a subprogram (named `name`).
    pub(super) fn attach(
        ctx: &'ctx Context,
        module: &Module<'ctx>,
        func: FunctionValue<'ctx>,
        name: &str,
    ) -> Lines<'ctx> {
        let version = ctx.i32_type().const_int(3, false);
        module.add_basic_value_flag("Debug Info Version", FlagBehavior::Warning, version);
        let file_name = format!("{name}.kvqir");
        let (dib, unit) = module.create_debug_info_builder(
            true,
            DWARFSourceLanguage::C,
            &file_name,
            ".",
            "kvq",
            true,
            "",
            0,
            "",
            DWARFEmissionKind::LineTablesOnly,
            0,
            false,
            false,
            "",
            "",
        );
        let file = unit.get_file();
        let ty = dib.create_subroutine_type(file, None, &[], DIFlags::PUBLIC);
        let sub = dib.create_function(
            unit.as_debug_info_scope(),
            name,
            None,
            file,
            1,
            ty,
            false,
            true,
            1,
            DIFlags::PUBLIC,
            true,
        );
        func.set_subprogram(sub);
        Lines {
            dib,
            scope: sub.as_debug_info_scope(),
        }
    }

    /// Makes `b` tag what it builds next as instruction `v`'s.
    pub(super) fn at(&self, ctx: &'ctx Context, b: &Builder<'ctx>, v: Value) {
        let line = u32::try_from(v.index() + 1).unwrap_or(u32::MAX);
        let loc = self
            .dib
            .create_debug_location(ctx, line, 0, self.scope, None);
        b.set_current_debug_location(loc);
    }

    /// Resolves the debug metadata (before the module is verified).
    pub(super) fn finalize(&self) {
        self.dib.finalize();
    }
}
