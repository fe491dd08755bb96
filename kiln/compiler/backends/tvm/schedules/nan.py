"""Float max and min that propagate NaN, as ONNX Runtime's Relu, Max, Min, Clip, ReduceMax and ReduceMin do.

TVM lowers max(a, b) to `a > b ? a : b` (LLVM; CUDA's fmaxf drops either NaN), which returns b when a is NaN:
Relu, max(x, 0), turns a NaN into 0 and a NaN input gives finite outputs. Each float Max and Min of a scheduled
PrimFunc becomes a select that returns a NaN operand (with a constant operand, one compare: `a < 0 ? 0 : a` is
still one vmaxps on x86). The max and min reductions start from the lowest (highest) finite float; they start
from -inf (+inf) instead, as ONNX's ReduceMax of -inf elements (a fully masked attention row) is -inf.
Pooling kernels keep TVM's max: ONNX Runtime's MaxPool skips NaN too, and so do the clamps whose result is cast to
an integer (a quantize's clip: a NaN has no integer to become, whichever operand the clamp returns), which in INT8
graphs nest one quantize in the next (YOLOv3's box decoding made LLVM code generation take minutes simplifying them).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx

POOLING = "pool"  # in the names of the PrimFuncs legalized from pooling ops


def propagate_nan(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every float Max and Min propagating NaN (but those cast to integers), and its max/min reductions
    starting from -inf/+inf."""
    cast = _cast_to_integers(func)
    return tvm_ffi.structural_map(func, [(s_tir.SBlock, _infinite_identity),
                                         (tirx.Max, lambda e: e if e in cast else _max(e)),
                                         (tirx.Min, lambda e: e if e in cast else _min(e))], order="pre")


def _cast_to_integers(func: tirx.PrimFunc) -> set:
    """The Max and Min nodes of a clamp whose result is cast to an integer type: Cast(int, max(min(x, hi), lo))."""
    found = set()

    def visit(cast, visitor):
        if not tvm_ffi.dtype(str(cast.ty)).is_float:
            clamp = cast.value
            while isinstance(clamp, (tirx.Max, tirx.Min)):
                found.add(clamp)
                clamp = clamp.a
        visitor.default_visit(cast)

    tvm_ffi.structural_visit(func.body, [(tirx.Cast, visit)])
    return found


def propagate_nan_pass() -> tvm.transform.Pass:
    """propagate_nan on every PrimFunc of a module except pooling ones."""
    @tvm.transform.module_pass(opt_level=0, name="KilnPropagateNaN")
    def apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tirx.PrimFunc) and POOLING not in gv.name_hint:
                mod[gv] = propagate_nan(func)
        return mod

    return apply


def _is_float(expr) -> bool:
    return tvm_ffi.dtype(str(expr.ty)).is_float


def _max(expr):
    return _select(expr, lambda x, y: y < x) if _is_float(expr) else expr


def _min(expr):
    return _select(expr, lambda x, y: x < y) if _is_float(expr) else expr


def _select(expr, first_wins):
    """Max or min as selects: `first_wins(x, y)` says when x is the result; a NaN operand is the result."""
    a, b = expr.a, expr.b
    if isinstance(a, tirx.FloatImm):
        a, b = b, a
    if isinstance(b, tirx.FloatImm):  # not NaN: a compare that is false for a NaN `a` returns it
        return _shared(a, lambda x: tirx.Select(first_wins(b, x), b, x))
    return _shared(a, lambda x: _shared(b, lambda y: tirx.Select(_isnan(x), x, tirx.Select(first_wins(x, y), x, y))))


def _shared(expr, build):
    """build(expr), with a computed `expr` bound to a variable: the selects read each operand two or three times,
    and written out, clamps nested in clamps (a quantize's clip of a dequantized value through a polynomial) grow
    an expression that TVM's simplifier then takes minutes over."""
    if isinstance(expr, (tirx.Var, tvm.ir.expr.TensorLoad, tirx.IntImm, tirx.FloatImm)):
        return build(expr)
    var = tirx.Var("operand", expr.ty)
    return tirx.Let(var, expr, build(var))


def _isnan(x):
    """TVM's isnan, which takes no bfloat16 (it tests the value widened to float32, exactly)."""
    return tirx.isnan(tirx.Cast("float32", x) if str(x.ty) == "bfloat16" else x)


def _infinite_identity(block):
    """A max (min) reduction block's init of the lowest (highest) finite float made -inf (+inf)."""
    init, body = block.init, block.body
    if not (isinstance(init, tirx.BufferStore) and isinstance(init.value, tirx.FloatImm)
            and isinstance(body, tirx.BufferStore)):
        return block
    dtype, value = init.value.ty, init.value.value
    if isinstance(body.value, tirx.Max) and value == tirx.min_value(dtype).value:
        identity = float("-inf")
    elif isinstance(body.value, tirx.Min) and value == tirx.max_value(dtype).value:
        identity = float("inf")
    else:
        return block
    init = tirx.BufferStore(init.buffer, tirx.FloatImm(dtype, identity), init.indices)
    return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, init,
                        block.alloc_buffers, block.match_buffers, block.annotations)
