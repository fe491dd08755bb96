"""float16 (and bfloat16) sums computed in float32 and rounded once, as ONNX Runtime and ONNX's reference sum them.

TVM sums a float16 matmul, conv or softmax in float16: every addition rounds, and a sum of a few dozen terms is
off by several float16 steps (the conformance suite's fp16 attention and causal-conv cases differ by 2 to 3 steps).
Matmuls and convs get out_dtype float32: the legalized kernel converts each operand as it reads it, so no float32
copy of the weights is kept. A softmax keeps its float16 exponentials and division and sums them in float32 (ONNX's
reference rounds each exponential: a softmax wholly in float32 misses its fp16 attention case by 2 steps). The other
summing ops take their float16 operands converted to float32. bfloat16 is treated the same way (TVM sums it in
bfloat16 too: a bfloat16 MatMul of 8 terms was a bfloat16 step off)."""

from __future__ import annotations

import tvm
from tvm import relax

OUT_DTYPE_OPS = frozenset({"relax.matmul", "relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d",
                           "relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose", "relax.nn.conv3d_transpose"})
WIDENED_OPS = frozenset({"relax.nn.log_softmax", "relax.sum", "relax.mean",
                         "relax.nn.layer_norm", "relax.nn.group_norm", "relax.nn.rms_norm"})
NARROW = frozenset({"float16", "bfloat16"})


@relax.expr_functor.mutator
class _Float32Sums(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = getattr(call.op, "name", None)
        if not isinstance(call.ty, relax.TensorType) or str(call.ty.dtype) not in NARROW:
            return call
        dtype = str(call.ty.dtype)
        if name in OUT_DTYPE_OPS:
            attrs = call.attrs
            info = type(attrs).__tvm_ffi_type_info__
            fields = {field.name: getattr(attrs, field.name) for field in info.fields}
            wide = relax.Call(call.op, call.args, tvm.ir.make_node(info.type_key, **{**fields, "out_dtype": "float32"}))
        elif name == "relax.nn.softmax":
            return self._softmax(call.args[0], int(call.attrs.axis), dtype)
        elif name in WIDENED_OPS:
            wide = relax.Call(call.op, [_widened(arg) for arg in call.args], call.attrs)
        else:
            return call
        return relax.op.astype(wide, dtype)

    def _softmax(self, x, axis: int, dtype: str):
        emit = self.builder_.emit
        exp = emit(relax.op.exp(emit(relax.op.subtract(x, emit(relax.op.max(x, [axis], keepdims=True))))))
        total = emit(relax.op.sum(emit(relax.op.astype(exp, "float32")), [axis], keepdims=True))
        return relax.op.divide(exp, emit(relax.op.astype(total, dtype)))


def _widened(arg):
    ty = arg.ty
    return relax.op.astype(arg, "float32") if isinstance(ty, relax.TensorType) and str(ty.dtype) in NARROW else arg


def float32_sums(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with its float16 and bfloat16 matmuls, convs, softmaxes, sums and normalizations computed in float32,
    then cast back."""
    mutator = _Float32Sums(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
