"""The accuracy report: per-layer SQNR of float vs quantized activations, and top-1 or RMSE.

Given labeled evaluation data, integer labels with a 2-D [N, classes] first output mean
classification (top-1, in percent; the drop is in points); anything else is regression (RMSE;
the drop is the RMSE increase in percent of the float RMSE).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln.arrays import read_arrays
from kiln.calibration.collect import TensorRunner, model_batches
from kiln.calibration.datasets import ArrayDataset, Dataset, check_arrays
from kiln.compiler.graph import TensorSpec
from kiln.errors import SettingError
from kiln.quantization.config import QuantizeOptions
from kiln.quantization.degenerate import RangeWarning
from kiln.quantization.policy import Plan
from kiln.quantization.qdq import dequantized_name

if TYPE_CHECKING:
    import onnx


class MetricKind(str, enum.Enum):
    TOP1 = "top1"
    RMSE = "rmse"


@dataclass(frozen=True)
class Metric:
    kind: MetricKind
    float_value: float
    int8_value: float

    @property
    def drop(self) -> float:
        """Top-1 points lost, or the RMSE increase in percent of the float RMSE."""
        if self.kind is MetricKind.TOP1:
            return self.float_value - self.int8_value
        return (self.int8_value - self.float_value) / max(self.float_value, 1e-12) * 100.0

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "float": self.float_value, "int8": self.int8_value, "drop": self.drop}


@dataclass(frozen=True)
class LayerError:
    node: str
    op_type: str
    sqnr_db: float  # inf when the quantized activation is exact

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type,
                "sqnr_db": None if math.isinf(self.sqnr_db) else round(self.sqnr_db, 3)}


@dataclass(frozen=True)
class Report:
    layers: tuple[LayerError, ...]
    metric: Metric | None
    samples: int  # rows the report was measured on
    range_warnings: tuple[RangeWarning, ...] = ()

    def to_json(self) -> dict:
        return {"samples": self.samples, "layers": [layer.to_json() for layer in self.layers],
                "accuracy": self.metric.to_json() if self.metric else None,
                "range_warnings": [warning.to_json() for warning in self.range_warnings]}


def table(report: dict) -> str:
    """A report (as `Report.to_json` writes it, e.g. read back from report.json) as a text table."""
    width = max([len(layer["node"]) for layer in report["layers"]] + [5])
    lines = [f"{'layer':{width}}  {'op':18} {'SQNR dB':>8}"]
    for layer in report["layers"]:
        sqnr = "exact" if layer["sqnr_db"] is None else f"{layer['sqnr_db']:.1f}"
        lines.append(f"{layer['node']:{width}}  {layer['op_type']:18} {sqnr:>8}")
    accuracy = report["accuracy"]
    if accuracy:
        top1 = accuracy["kind"] == MetricKind.TOP1.value
        unit, drop_unit = ("%", " points") if top1 else ("", "% of float RMSE")
        lines.append(f"{accuracy['kind']}: float {accuracy['float']:.4g}{unit}, int8 {accuracy['int8']:.4g}{unit}, "
                     f"drop {accuracy['drop']:.3g}{drop_unit} ({report['samples']} samples)")
    for warning in report.get("range_warnings", []):
        shown = f" range [{warning['range'][0]:.4g}, {warning['range'][1]:.4g}]" if warning["range"] else ""
        lines.append(f"warning: {warning['tensor']}{shown}: {warning['reason']}")
    return "\n".join(lines)



@dataclass(frozen=True)
class EvalSet:
    dataset: Dataset
    labels: np.ndarray | None


def load_eval(path: Path, inputs: tuple[TensorSpec, ...]) -> EvalSet:
    arrays = read_arrays(path)
    labels = arrays.pop("labels", None)
    arrays = check_arrays(path, arrays, inputs)
    rows = len(next(iter(arrays.values())))
    if labels is not None and len(labels) != rows:
        raise SettingError(QuantizeOptions, f"{{eval}} {path}: `labels` has {len(labels)} rows, the inputs {rows}; "
                                            "give one label per sample")
    return EvalSet(ArrayDataset(arrays, ""), labels)


def first_output(model: "onnx.ModelProto", dataset: Dataset) -> np.ndarray:
    runner = TensorRunner(model, [model.graph.output[0].name])
    return np.concatenate([runner.run(feed)[runner.names[0]][:rows]
                           for feed, rows in model_batches(model, dataset)])


def metric(float_out: np.ndarray, int8_out: np.ndarray, labels: np.ndarray) -> Metric:
    if np.issubdtype(labels.dtype, np.integer) and float_out.ndim == 2 and float_out.shape[1] > 1:
        return Metric(MetricKind.TOP1, _top1(float_out, labels), _top1(int8_out, labels))
    return Metric(MetricKind.RMSE, _rmse(float_out, labels), _rmse(int8_out, labels))


def _top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.argmax(axis=1) == labels.ravel()) * 100.0)


def _rmse(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.sqrt(np.mean((outputs.reshape(len(labels), -1) - labels.reshape(len(labels), -1)) ** 2)))


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def layer_sqnr(float_model: "onnx.ModelProto", qdq_model: "onnx.ModelProto", plan: Plan,
               dataset: Dataset) -> tuple[LayerError, ...]:
    """SQNR of each quantized node's output, float model vs QDQ model, streamed over `dataset`."""
    outputs = {o.name for o in float_model.graph.output}
    nodes = [node for node in float_model.graph.node if node.name in plan.nodes]
    float_names = [node.output[0] for node in nodes]
    qdq_names = [dequantized_name(n, outputs) if n in plan.activations else n for n in float_names]
    reference, quantized = TensorRunner(float_model, float_names), TensorRunner(qdq_model, qdq_names)
    signal, noise = np.zeros(len(nodes)), np.zeros(len(nodes))
    for feed, _ in model_batches(float_model, dataset):
        ref, got = reference.run(feed), quantized.run(feed)
        for i, (f, q) in enumerate(zip(float_names, qdq_names)):
            x = ref[f].astype(np.float64)
            signal[i] += float(np.sum(x * x))
            noise[i] += float(np.sum((x - got[q]) ** 2))
    return tuple(LayerError(node.name, node.op_type, sqnr_db(s, n)) for node, s, n in zip(nodes, signal, noise))
