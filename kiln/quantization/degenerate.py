"""Calibration results that would quantize a model into garbage: refused unless allowed, and flagged in the report.

Refused (exit 3, unless --allow-degenerate): a float input that holds one value on every sample, and a tensor
that is exactly 0 on every sample (its INT8 range collapses to a point; a Relu that never fires makes one).
Flagged: every quantized tensor whose range holds no positive value, since INT8 then clips whatever positive
value the deployed model sees to 0 (calibration data of the wrong sign or scaling), the refused cases when
they were allowed, and the data-carrying tensors that held NaN or inf, which stay float with the ops around
them (an attention score plus a -inf mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kiln.calibration.collect import DEFAULT_BATCH, float_tensors
from kiln.calibration.datasets import Dataset
from kiln.calibration.observers import TensorRange
from kiln.quantization.policy import activation_tensors

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class RangeWarning:
    tensor: str
    bounds: TensorRange | None  # None: the tensor held NaN or inf
    reason: str

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "range": self.bounds.to_json() if self.bounds else None, "reason": self.reason}


def constant_inputs(dataset: Dataset, quantized: dict[str, TensorRange]) -> dict[str, float]:
    """The quantized inputs that hold one value on every sample, with that value."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for feed in dataset.batches(DEFAULT_BATCH):
        for name, values in feed.items():
            if name in quantized and values.size:
                lo[name] = min(lo.get(name, np.inf), float(values.min()))
                hi[name] = max(hi.get(name, -np.inf), float(values.max()))
    return {name: lo[name] for name in lo if lo[name] == hi[name]}


def collapse_reasons(model: "onnx.ModelProto", quantized: dict[str, TensorRange], ranges: dict[str, TensorRange],
                     constants: dict[str, float]) -> list[str]:
    """One line per quantized tensor whose range is a point, naming why where the graph tells; `ranges` holds
    every calibrated tensor, so a Relu's float input is seen too."""
    relu_inputs = {node.output[0]: (node.name, node.input[0]) for node in model.graph.node if node.op_type == "Relu"}
    reasons = [f"input {name} is {'exactly 0' if value == 0 else f'{value:g}'} on every sample"
               for name, value in constants.items()]
    for name, bounds in quantized.items():
        if bounds.lo != bounds.hi or name in constants:
            continue
        relu = relu_inputs.get(name)
        if relu and relu[1] in ranges and ranges[relu[1]].hi == 0.0:
            reasons.append(f"{name} is 0 on every sample: Relu {relu[0]} never saw a positive input")
        else:
            reasons.append(f"{name} is exactly 0 on every sample")
    return reasons


def range_warnings(quantized: dict[str, TensorRange], constants: dict[str, float]) -> tuple[RangeWarning, ...]:
    """The report's flags for the quantized tensors."""
    warnings = []
    for name, bounds in quantized.items():
        if name in constants:
            reason = f"the calibration data holds {constants[name]:g} on every sample"
        elif bounds.lo == bounds.hi:
            reason = "exactly 0 on every calibration sample: the range collapsed"
        elif bounds.hi == 0.0:
            reason = "no positive value on the calibration data: positive values are clipped to 0"
        else:
            continue
        warnings.append(RangeWarning(name, bounds, reason))
    return tuple(warnings)


def non_finite_tensors(model: "onnx.ModelProto", ranges: dict[str, TensorRange]) -> list[str]:
    """The data-carrying float tensors that calibration found NaN or inf in (it keeps no range for them)."""
    activations = activation_tensors(model)
    return [name for name in float_tensors(model) if name in activations and name not in ranges]


def non_finite_warnings(names: list[str]) -> tuple[RangeWarning, ...]:
    reason = "NaN or inf on the calibration data (an attention mask's -inf?): kept in float, with the ops around it"
    return tuple(RangeWarning(name, None, reason) for name in names)
