"""Arithmetic that TVM's ONNX converters compute otherwise than ONNX, rewritten before legalization.

- log(1 + u), TVM's Softplus (u = exp(-|x|)) and Mish (u = exp(x)): 1 + u rounds away most of a small u's digits
  (Mish of -9.98 is off by 0.13%). It becomes log1p(u), which Relax lacks: for u < 0.01 its series to u^4
  (relative error under u^4 / 5), else log(1 + u) (relative error under 1e-5 there). The trick that cancels the
  rounding, log(w) * u / (w - 1), does not survive TVM's simplifier, which makes (1 + u) - 1 u.
- tanh, which TVM computes from exp(2x) and so loses a small x's digits (0.1% off at 1e-5, 0 below 1e-8; Mish
  takes tanh of values that small): below 0.01 its series to x^5 (relative error under 6e-14 there).
- floor_mod of floats (ONNX Mod, fmod 0), which TVM computes as x - floor(x / y) * y: NaN for an infinite y, where
  ONNX (as Python) gives x, or y when their signs differ. It becomes the remainder `mod` (fmod: exact, x for an
  infinite y), plus y where the remainder is not 0 and its sign differs from y's.
- integer shifts (ONNX BitShift) by a count outside 0 .. bits - 1, which C leaves undefined (x86 takes the count
  modulo the bit width) and ONNX defines as 0, or the sign (0 or -1) for a right shift of a signed integer.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax


SERIES_BELOW = 0.01


@relax.expr_functor.mutator
class _Arithmetic(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = getattr(call.op, "name", None)
        if not isinstance(call.ty, relax.TensorType):
            return call
        if name in ("relax.left_shift", "relax.right_shift"):
            return self._shift(call)
        if not tvm_ffi.dtype(str(call.ty.dtype)).is_float:
            return call
        if name == "relax.log":
            u = self._one_plus(call.args[0])
            return call if u is None else self._log1p(u, call.ty.dtype)
        if name == "relax.tanh":
            return self._tanh(call)
        if name == "relax.floor_mod":
            return self._floor_mod(*call.args, call.ty.dtype)
        return call

    def _one_plus(self, expr):
        """u where `expr` is 1 + u or u + 1 (through the binding of a variable); else None."""
        value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
        if not (isinstance(value, relax.Call) and getattr(value.op, "name", None) == "relax.add"):
            return None
        a, b = value.args
        for one, u in ((a, b), (b, a)):
            if isinstance(one, tvm.ir.GenericConst) and one.value.numpy().size == 1 and float(one.value.numpy()) == 1.0:
                return u
        return None

    def _log1p(self, u, dtype):
        emit = self.builder_.emit
        series = relax.const(0, dtype)
        for k in (4, 3, 2, 1):  # u (1 - u (1/2 - u (1/3 - u / 4))), by Horner's rule
            series = emit(relax.op.multiply(u, emit(relax.op.subtract(relax.const(1 / k, dtype), series))))
        direct = emit(relax.op.log(emit(relax.op.add(relax.const(1, dtype), u))))
        return relax.op.where(emit(relax.op.less(u, relax.const(SERIES_BELOW, dtype))), series, direct)

    def _tanh(self, call):
        emit = self.builder_.emit
        x, dtype = call.args[0], call.ty.dtype
        square = emit(relax.op.multiply(x, x))
        series = relax.const(0, dtype)
        for coefficient in (2 / 15, -1 / 3, 1):  # x (1 - x^2 (1/3 - 2 x^2 / 15)), by Horner's rule
            series = emit(relax.op.add(relax.const(coefficient, dtype), emit(relax.op.multiply(square, series))))
        series = emit(relax.op.multiply(x, series))
        small = emit(relax.op.less(emit(relax.op.abs(x)), relax.const(SERIES_BELOW, dtype)))
        return relax.op.where(small, series, emit(call))

    def _floor_mod(self, x, y, dtype):
        emit = self.builder_.emit
        zero = relax.const(0, dtype)
        remainder = emit(relax.op.mod(x, y))
        signs_differ = emit(relax.op.logical_xor(emit(relax.op.less(remainder, zero)), emit(relax.op.less(y, zero))))
        wrap = emit(relax.op.logical_and(emit(relax.op.not_equal(remainder, zero)), signs_differ))
        return relax.op.where(wrap, emit(relax.op.add(remainder, y)), remainder)

    def _shift(self, call):
        emit = self.builder_.emit
        count, dtype = call.args[1], call.ty.dtype
        bits = tvm_ffi.dtype(str(dtype)).bits
        in_range = emit(relax.op.logical_and(emit(relax.op.greater_equal(count, relax.const(0, dtype))),
                                             emit(relax.op.less(count, relax.const(bits, dtype)))))
        beyond = relax.const(0, dtype)
        if call.op.name == "relax.right_shift" and str(dtype).startswith("int"):
            beyond = emit(relax.op.right_shift(call.args[0], relax.const(bits - 1, dtype)))
        return relax.op.where(in_range, emit(call), beyond)


def onnx_arithmetic(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with log(1 + u) computed as log1p(u), tanh of small values as a series, float floor_mod as a remainder
    plus the divisor, and shifts by counts outside 0 .. bits - 1 giving 0 (or the sign)."""
    mutator = _Arithmetic(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
