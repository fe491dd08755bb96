"""Find the quantized convs, matrix products, adds, pools and concats of a QDQ model's Relax `main`.

The pattern, as ONNX QDQ models import (DequantizeLinear -> relax.dequantize, and so on):

    quantize( [clamp]( [add]( conv2d( dequantize(x_q), dequantize(W_q) ), bias ) ) )
    quantize( [clamp]( [add]( matmul( dequantize(x_q), [permute_dims]( dequantize(W_q) ) ), bias ) ) )
    quantize( [clamp]( dequantize(a_q) + dequantize(b_q) ) )         a residual add
    quantize( max_pool2d( dequantize(x_q) ) ), one quantization     max pooling the quantized values
    quantize( concat( dequantize(x_q), ... ) ), one quantization    concatenating them
    quantize( mean( dequantize(x_q), axis=[2, 3] ) )                 a global average pool

with x_q, the output and their scales per tensor, W_q int8 per output channel, the bias a constant
(the int32 DequantizeLinear kiln's quantizer writes, or float), and the clamp a Relu, a Clip or
ONNX Clip's maximum/minimum pair. Every matched tensor between the product and quantize must have
no other reader, so the integer kernel can replace the whole chain (the float one is left dead)."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from kiln.compiler.backends.tvm.rewrite.fold import fold


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int
    dtype: str

    @property
    def bounds(self) -> tuple[int, int]:
        info = np.iinfo(self.dtype)
        return int(info.min), int(info.max)

    def quantize(self, value: float) -> int:
        return int(np.clip(np.round(value / self.scale) + self.zero_point, *self.bounds))


@dataclass(frozen=True)
class QuantizedConv:
    """A conv2d, or a matmul [..., M, K] x [K, N] as a 1x1 conv (dense = True)."""

    data: relax.Expr  # the quantized input tensor
    input: Quantization
    weight: np.ndarray  # int8 [OC, IC/groups, KH, KW]
    weight_scale: np.ndarray  # float32 [OC]
    bias: np.ndarray  # int32 [OC], in units of input scale x weight scale
    output: Quantization
    clamp: tuple[int, int]  # quantized output bounds (a Relu or Clip folded in)
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    groups: int
    dense: bool = False


@dataclass(frozen=True)
class QuantizedAdd:
    a: relax.Expr
    a_input: Quantization
    b: relax.Expr
    b_input: Quantization
    output: Quantization
    clamp: tuple[int, int]


def _op(call) -> str | None:
    return getattr(getattr(call, "op", None), "name", None)


_PRODUCTS = ("relax.nn.conv2d", "relax.matmul")


def _same_shape(x, y) -> bool:
    return [int(d) for d in x.ty.shape] == [int(d) for d in y.ty.shape]  # static: kiln pins every dim


class QdqMatcher:
    def __init__(self, function: relax.Function):
        self.values = {b.var: b.value for block in function.body.blocks for b in block.bindings}
        self.uses: collections.Counter = collections.Counter()
        for value in [*self.values.values(), function.body.body]:
            relax.analysis.post_order_visit(value, self._count)
        self._constants: dict = {}

    def _count(self, expr) -> None:
        if isinstance(expr, relax.Var):
            self.uses[expr] += 1

    def constant(self, expr) -> np.ndarray | None:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            return expr.value.numpy()
        if expr not in self._constants:
            value = self.values.get(expr)
            self._constants[expr] = fold(value, _op(value), self.constant) if isinstance(value, relax.Call) else None
        return self._constants[expr]

    def _scalar(self, expr) -> float | None:
        value = self.constant(expr)
        return value.item() if value is not None and value.size == 1 else None

    def _only_reader(self, var) -> relax.Call | None:
        """The call bound to `var` when that call's result has no reader but the chain."""
        value = self.values.get(var)
        return value if isinstance(value, relax.Call) and self.uses[var] == 1 else None

    def _quantization(self, call) -> Quantization | None:
        scale, zero = self._scalar(call.args[1]), self._scalar(call.args[2])
        dtype = call.attrs.out_dtype if _op(call) == "relax.quantize" else str(call.args[0].ty.dtype)
        if scale is None or zero is None or dtype not in ("uint8", "int8"):
            return None
        return Quantization(float(scale), int(zero), dtype)

    def _quantize(self, var) -> tuple[relax.Call, Quantization] | None:
        """The quantize call bound to `var` and its quantization, if it is one with a single scale."""
        quantize = self.values.get(var)
        if _op(quantize) != "relax.quantize" or (output := self._quantization(quantize)) is None:
            return None
        return quantize, output

    def _requantized(self, var) -> tuple[Quantization, tuple[int, int], relax.Var] | None:
        """For quantize bound to `var`: its quantization, the quantized bounds of the clamps before it, and
        what the clamps read."""
        if (found := self._quantize(var)) is None:
            return None
        quantize, output = found
        low, high, x = -math.inf, math.inf, quantize.args[0]
        while (call := self._only_reader(x)) is not None and (bound := self._clamp(call)) is not None:
            low, high = max(low, bound[0]), min(high, bound[1])
            x = call.args[0] if _op(call) != "relax.call_tir" else call.args[1].fields[0]
        out_low, out_high = output.bounds
        bounds = (out_low if low == -math.inf else max(out_low, output.quantize(low)),
                  out_high if high == math.inf else min(out_high, output.quantize(high)))
        return output, bounds, x

    def _quantized_result(self, var, op: str) -> tuple[Quantization, relax.Call] | None:
        """For quantize bound to `var`: its quantization and the `op` call it quantizes (read by nothing else)."""
        if (found := self._quantize(var)) is None:
            return None
        quantize, output = found
        call = self._only_reader(quantize.args[0])
        return (output, call) if _op(call) == op else None

    def add(self, var) -> QuantizedAdd | None:
        """quantize([clamp](dequantize(a_q) + dequantize(b_q))) bound to `var`, or None."""
        found = self._requantized(var)
        if found is None or _op(call := self._only_reader(found[2])) != "relax.add":
            return None
        operands = [self.values.get(x) for x in call.args]
        if any(_op(x) != "relax.dequantize" for x in operands):
            return None
        (a, qa), (b, qb) = ((x.args[0], self._quantization(x)) for x in operands)
        if qa is None or qb is None or not _same_shape(a, b) or not _same_shape(a, call):
            return None
        return QuantizedAdd(a, qa, b, qb, found[0], found[1])

    def max_pool(self, var) -> relax.Call | None:
        """quantize(max_pool2d(dequantize(x_q))) bound to `var` with x_q's own quantization: the max_pool2d
        call, which computes the same on x_q (the dequantize's input), or None."""
        if (found := self._quantized_result(var, "relax.nn.max_pool2d")) is None:
            return None
        output, pool = found
        dequantize = self.values.get(pool.args[0])
        if _op(dequantize) != "relax.dequantize" or self._quantization(dequantize) != output:
            return None
        return pool

    def spatial_mean(self, var) -> tuple[relax.Expr, Quantization, Quantization] | None:
        """quantize(mean(dequantize(x_q), axis=[2, 3], keepdims)) bound to `var` (GlobalAveragePool):
        x_q, its quantization and the output's, or None."""
        if (found := self._quantized_result(var, "relax.mean")) is None:
            return None
        output, mean = found
        dequantize = self.values.get(mean.args[0])
        axes = [int(a) for a in mean.attrs.axis] if mean.attrs.axis is not None else []
        if (_op(dequantize) != "relax.dequantize" or axes != [2, 3] or not mean.attrs.keepdims
                or (data_q := self._quantization(dequantize)) is None or mean.ty.ndim != 4):
            return None
        return dequantize.args[0], data_q, output

    def producer(self, var) -> str | None:
        """The op whose result the quantize bound to `var` quantizes (None for a graph input)."""
        value = self.values.get(self.values[var].args[0])
        if not isinstance(value, relax.Call):
            return None
        return value.args[0].name_hint if _op(value) == "relax.call_tir" else _op(value).removeprefix("relax.")

    def concat(self, var) -> tuple[list, int] | None:
        """quantize(concat(dequantize(x_q), ...)) bound to `var` with one quantization for all: the x_q and
        the axis (a concat of the quantized values), or None."""
        if (found := self._quantized_result(var, "relax.concat")) is None:
            return None
        output, concat = found
        parts = [self.values.get(x) for x in concat.args[0].fields]
        if any(_op(p) != "relax.dequantize" or self._quantization(p) != output for p in parts):
            return None
        return [p.args[0] for p in parts], int(concat.attrs.axis)

    def conv(self, var) -> QuantizedConv | None:
        """The quantized conv or matmul whose quantize is bound to `var`, or None."""
        found = self._requantized(var)
        if found is None:
            return None
        output, bounds, x = found
        bias = None
        call = self._only_reader(x)
        if _op(call) == "relax.add":
            for product, other in (call.args, call.args[::-1]):
                if _op(self._only_reader(product)) in _PRODUCTS and self.constant(other) is not None:
                    x, bias = product, self.constant(other)
                    break
        call = self._only_reader(x)
        if _op(call) == "relax.nn.conv2d":
            return self._conv(call, bias, output, bounds)
        if _op(call) == "relax.matmul":
            return self._matmul(call, bias, output, bounds)
        return None

    def _clamp(self, call) -> tuple[float, float] | None:
        op = _op(call)
        if op == "relax.nn.relu":
            return 0.0, math.inf
        if op == "relax.clip":
            low, high = (self._scalar(a) for a in call.args[1:3])
            return None if low is None or high is None else (low, high)
        if op == "relax.call_tir" and len(call.args[1].fields) == 2:
            name, bound = call.args[0].name_hint, self._scalar(call.args[1].fields[1])
            if bound is not None and name.startswith("maximum"):
                return bound, math.inf
            if bound is not None and name.startswith("minimum"):
                return -math.inf, bound
        return None

    def _conv(self, conv, bias, output, clamp) -> QuantizedConv | None:
        attrs = conv.attrs
        if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                or tuple(int(d) for d in attrs.dilation) != (1, 1)):
            return None
        weight = self.values.get(conv.args[1])
        if _op(weight) != "relax.dequantize" or int(weight.attrs.axis) != 0:
            return None
        return self._quantized(conv.args[0], [self.constant(a) for a in weight.args], bias, output, clamp,
                               tuple(int(s) for s in attrs.strides), tuple(int(p) for p in attrs.padding),
                               int(attrs.groups))

    def _matmul(self, matmul, bias, output, clamp) -> QuantizedConv | None:
        """x [..., M, K] x W [K, N] (W^T imported as permute_dims of the Gemm's [N, K] weight)."""
        data, weight = matmul.args
        transposed = _op(self.values.get(weight)) == "relax.permute_dims"
        weight = self.values.get(weight).args[0] if transposed else weight
        dequantize = self.values.get(weight)
        if data.ty.ndim < 2 or _op(dequantize) != "relax.dequantize":
            return None
        w, w_scale, w_zero = (self.constant(a) for a in dequantize.args)
        if w is None or w.ndim != 2 or int(dequantize.attrs.axis) != (0 if transposed else 1):
            return None
        w = w if transposed else w.T  # [N, K]
        return self._quantized(data, [w[:, :, None, None], w_scale, w_zero], bias, output, clamp, (1, 1),
                               (0, 0, 0, 0), 1, dense=True)

    def _quantized(self, data, weight_constants, bias, output, clamp, strides, padding, groups,
                   dense: bool = False) -> QuantizedConv | None:
        data = self.values.get(data)
        if _op(data) != "relax.dequantize":
            return None
        data_q, (w, w_scale, w_zero) = self._quantization(data), weight_constants
        if (data_q is None or w is None or w_scale is None or w_zero is None or w.dtype != np.int8
                or np.any(w_zero != 0) or w_scale.size not in (1, w.shape[0])):
            return None
        w_scale = np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (w.shape[0],))
        bias_int = np.zeros(w.shape[0], np.int32)
        if bias is not None:
            if bias.size != w.shape[0]:
                return None
            bias_int = np.round(bias.reshape(-1) / (data_q.scale * w_scale)).astype(np.int32)
        return QuantizedConv(data.args[0], data_q, np.ascontiguousarray(w), w_scale, bias_int, output, clamp,
                             strides, padding, groups, dense)
