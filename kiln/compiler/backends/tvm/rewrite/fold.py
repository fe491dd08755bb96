"""Constant folding in numpy for the few ops ONNX imports leave on constants (weight transposes,
reshapes of biases, the isnan/where chains of Clip, the DequantizeLinear of int8 weights).

Relax FoldConstant would JIT-compile each foldable op with LLVM (~20 s for MobileNetV2) and, run
before the layout rewrite, would hide nothing the rewrite needs; this takes milliseconds."""

from __future__ import annotations

from typing import Callable

import numpy as np

Constant = Callable[[object], "np.ndarray | None"]  # a Relax expression -> its value, or None


def fold(call, op: str | None, constant: Constant) -> np.ndarray | None:
    """The value of `call` when it is one of the folded ops applied to constants, else None."""
    arity = {"relax.reshape": 1, "relax.isnan": 1, "relax.permute_dims": 1, "relax.where": 3,
             "relax.dequantize": 3}.get(op)
    if arity is None:
        return None
    values = [constant(arg) for arg in call.args[:arity]]
    if any(v is None for v in values):
        return None
    if op == "relax.reshape":
        return values[0].reshape([int(d) for d in call.ty.shape])
    if op == "relax.isnan":
        return np.isnan(values[0])
    if op == "relax.where":
        return np.where(*values).astype(values[1].dtype)
    if op == "relax.dequantize":
        return dequantize(*values, int(call.attrs.axis))
    axes = call.attrs.axes
    return np.ascontiguousarray(values[0].transpose(None if axes is None else [int(a) for a in axes]))


def dequantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear: (values - zero_point) * scale, per tensor or per slice along `axis`."""
    shape = [1] * values.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    centered = values.astype(np.int64) - zero_point.astype(np.int64).reshape(shape if zero_point.size > 1 else ())
    return (centered.astype(np.float32) * scale.astype(np.float32).reshape(shape if scale.size > 1 else ()))
