"""One IRModule from several imported ones: each module's `main` under an entry name, with the functions it calls
(TVM's ONNX importer emits PrimFuncs such as `pad` and `tile`) named apart where they differ, so a batch range's
entries, which each import the same ops at their own batch size, do not collide."""

from __future__ import annotations

import tvm
from tvm import relax


@relax.expr_functor.mutator
class _CallRenamer(relax.PyExprMutator):
    def __init__(self, renamed: dict):
        super().__init__()
        self.renamed = renamed

    def visit_global_var_(self, var):
        return self.renamed.get(var, var)


def merge_entries(modules: dict[str, tvm.IRModule]) -> tvm.IRModule:
    """`modules` by entry name -> one module whose function `name` is that module's `main`."""
    builder = relax.BlockBuilder()
    for name, module in modules.items():
        # add_func gives a function equal to one already added that one's name, and a new one a free name
        renamed = {var: builder.add_func(func, var.name_hint) for var, func in module.functions.items()
                   if var.name_hint != "main"}
        main = _CallRenamer(renamed).visit_expr(module["main"]) if renamed else module["main"]
        builder.add_func(main.with_attr("global_symbol", name), name)
    return builder.get()
