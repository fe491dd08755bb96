"""Calibration results that would quantize a model into garbage: refused unless allowed, and flagged in the report.

Refused (exit 3, unless --allow-degenerate): a float input that holds one value on every sample, and a tensor
that is exactly 0 on every sample (its INT8 range collapses to a point; a Relu that never fires makes one).
Flagged: every quantized tensor whose range holds no positive value, since INT8 then clips whatever positive
value the deployed model sees to 0 (calibration data of the wrong sign or scaling), and the refused cases when
they were allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kiln.calibration.collect import DEFAULT_BATCH
from kiln.calibration.datasets import Dataset
from kiln.calibration.observers import TensorRange

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class RangeWarning:
    tensor: str
    lo: float
    hi: float
    reason: str

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "range": [self.lo, self.hi], "reason": self.reason}


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
        warnings.append(RangeWarning(name, bounds.lo, bounds.hi, reason))
    return tuple(warnings)
