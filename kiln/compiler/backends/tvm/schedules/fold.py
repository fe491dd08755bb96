"""Constant folding in numpy for the few ops ONNX imports leave on constants (weight transposes,
reshapes of biases, the isnan/where chains of Clip).

Relax FoldConstant would JIT-compile each foldable op with LLVM (~20 s for MobileNetV2) and, run
before the layout rewrite, would hide nothing the rewrite needs; this takes milliseconds."""

from __future__ import annotations

from typing import Callable

import numpy as np

Constant = Callable[[object], "np.ndarray | None"]  # a Relax expression -> its value, or None


def fold(call, op: str | None, constant: Constant) -> np.ndarray | None:
    """The value of `call` when it is one of the folded ops applied to constants, else None."""
    arity = {"relax.reshape": 1, "relax.isnan": 1, "relax.permute_dims": 1, "relax.where": 3}.get(op)
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
    axes = call.attrs.axes
    return np.ascontiguousarray(values[0].transpose(None if axes is None else [int(a) for a in axes]))
