"""Zero-size constants (a causal conv's empty initial state, concatenated with its input) allocated at run time.

TVM 0.27 writes a zero-size constant into the executable but cannot read it back: loading the library fails
("Invalid DLTensor file format"). An empty tensor has no contents to keep, so an allocation of its shape does."""

from __future__ import annotations

import tvm
from tvm import relax


@relax.expr_functor.mutator
class _AllocateEmpty(relax.PyExprMutator):
    def visit_generic_const_(self, const):
        shape = const.value.shape
        if 0 not in shape:
            return const
        return relax.op.builtin.alloc_tensor(relax.ShapeExpr(list(shape)), const.value.dtype, 0)


def allocate_empty(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with each zero-size constant of its Relax functions replaced by an allocation of that shape."""
    mutator = _AllocateEmpty(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
