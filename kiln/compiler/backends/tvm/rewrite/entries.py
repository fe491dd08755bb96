"""One IRModule from several imported ones: each module's `main` under an entry name, with the functions it calls
(TVM's ONNX importer emits PrimFuncs such as `pad` and `tile`) named apart where they differ, so a batch range's
entries, which each import the same ops at their own batch size, do not collide. Their equal constants (the
weights every entry of a range holds) are one object: the modules are taken one at a time, so a range of twenty
BERT-base functions holds one copy of its weights, not twenty, while it is built."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import tvm
from tvm import relax


@relax.expr_functor.mutator
class _Merger(relax.PyExprMutator):
    """Calls renamed to the merged module's functions; constants equal to one seen before replaced by it."""

    def __init__(self, renamed: dict, constants: dict):
        super().__init__()
        self.renamed, self.constants = renamed, constants

    def visit_global_var_(self, var):
        return self.renamed.get(var, var)

    def visit_generic_const_(self, op):  # TVM 0.27's relax constant (GenericConst: `value`, not `data`)
        return self.constants.share(op.value.numpy(), lambda: op)


class SharedConstants:
    """Equal constants of different functions as one object: the functions of a range hold the same weights.
    Within one function equal constants stay apart, as the importer and the rewrites made them: only what a range
    repeats across its functions is merged."""

    def __init__(self):
        self.seen: dict[tuple, relax.Constant] = {}
        self.here: set[tuple] = set()  # the keys the current function has taken

    def next_function(self) -> None:
        self.here = set()

    def share(self, array: np.ndarray, make) -> relax.Constant:
        """The constant for `array`: one seen in another function where equal, else `make()` (remembered)."""
        key = constant_key(array)
        if key in self.here or key not in self.seen:
            made = make()
            self.seen.setdefault(key, made)
            self.here.add(key)
            return made
        self.here.add(key)
        return self.seen[key]


def constant_key(array: np.ndarray) -> tuple:
    """What makes two constants equal: dtype, shape and contents."""
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # bytes: ml_dtypes' bfloat16 has no buffer format
    return array.dtype.name, array.shape, hashlib.sha1(raw).hexdigest()  # the name: ml_dtypes all read "V1"/"V2"


def merge_entries(modules: Iterable[tuple[str, tvm.IRModule]]) -> tvm.IRModule:
    """(entry name, module) pairs -> one module whose function `name` is that module's `main`."""
    builder, constants = relax.BlockBuilder(), SharedConstants()
    for name, module in modules:
        constants.next_function()
        # add_func gives a function equal to one already added that one's name, and a new one a free name
        renamed = {var: builder.add_func(func, var.name_hint) for var, func in module.functions.items()
                   if var.name_hint != "main"}
        main = _Merger(renamed, constants).visit_expr(module["main"])
        builder.add_func(main.with_attr("global_symbol", name), name)
    return builder.get()
