"""The accuracy gate, and --auto-exclude: keep the most sensitive layers in float until it passes.

A layer's sensitivity is the SQNR of the model's first output when that layer alone is quantized
(lowest first); layers are kept in float one at a time in that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kiln.calibration.datasets import Dataset
from kiln.calibration.observers import TensorRange
from kiln.errors import AccuracyGateError
from kiln.quantization.config import QuantizeOptions
from kiln.quantization.policy import Plan, make_plan
from kiln.quantization.qdq import insert_qdq
from kiln.quantization.report import Metric, MetricKind, first_output, sqnr_db

if TYPE_CHECKING:
    import onnx


def passes(metric: Metric, max_drop: float) -> bool:
    return metric.drop <= max_drop


def sensitivity_ranking(model: "onnx.ModelProto", ranges: dict[str, TensorRange], options: QuantizeOptions,
                        plan: Plan, dataset: Dataset, reference: np.ndarray) -> list[str]:
    """The quantized nodes of `plan`, most sensitive first."""
    scores = {}
    for node in (n.name for n in model.graph.node if n.name in plan.nodes):
        alone = insert_qdq(model, make_plan(model, ranges, options, only=node))
        got = first_output(alone, dataset).astype(np.float64)
        scores[node] = sqnr_db(float(np.sum(reference.astype(np.float64) ** 2)),
                               float(np.sum((reference - got) ** 2)))
    return sorted(scores, key=scores.get)


def gate_error(metric: Metric, max_drop: float, kept_float: tuple[str, ...], ranking: list[str]) -> AccuracyGateError:
    what = "top-1" if metric.kind is MetricKind.TOP1 else "RMSE"
    unit = " points" if metric.kind is MetricKind.TOP1 else "% of float RMSE"
    tried = f" after keeping {', '.join(kept_float)} in float" if kept_float else ""
    hint = ("raise --auto-exclude's limit, exclude layers by hand with --exclude, or try --calib-method entropy "
            "or percentile" if kept_float else
            "try --auto-exclude, --exclude NODE, or --calib-method entropy or percentile")
    sensitive = f"; most sensitive layers: {', '.join(ranking[:3])}" if ranking else ""
    return AccuracyGateError(
        f"accuracy gate failed{tried}: {what} float {metric.float_value:.4g}, int8 {metric.int8_value:.4g}, "
        f"drop {metric.drop:.3g}{unit} > --max-accuracy-drop {max_drop:g}{sensitive}. No output was written; {hint}")
