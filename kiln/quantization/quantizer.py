"""Quantize a neural Graph (after the graph passes): calibrate, plan, insert QDQ, report, gate (in that order)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from kiln.calibration.cache import CacheWriteError
from kiln.calibration.collect import Calibration, calibrate
from kiln.calibration.datasets import CalibData
from kiln.compiler.graph import Graph
from kiln.compiler.manifest import QuantizationSummary
from kiln.errors import InputError, SettingError
from kiln.files import atomic_path
from kiln.progress import QUIET, Progress
from kiln.quantization.config import QuantizeOptions
from kiln.quantization.degenerate import (collapse_reasons, constant_inputs, non_finite_tensors, non_finite_warnings,
                                         range_warnings)
from kiln.quantization.gate import gate_error, passes, sensitivity_ranking
from kiln.quantization.policy import Plan, make_plan
from kiln.quantization.qdq import insert_qdq
from kiln.quantization.report import Report, first_output, layer_sqnr, load_eval, metric


@dataclass(frozen=True)
class Quantized:
    float_graph: Graph
    graph: Graph  # the QDQ model
    plan: Plan
    report: Report
    calibration: Calibration
    options: QuantizeOptions
    auto_excluded: tuple[str, ...]

    def summary(self) -> QuantizationSummary:
        return QuantizationSummary(self.options.to_json(), self.calibration.to_json(), len(self.plan.nodes),
                                   tuple(self.plan.excluded), self.auto_excluded,
                                   self.report.metric.to_json() if self.report.metric else None)

    def write(self, folder: Path) -> dict[str, Path]:
        """Save the QDQ model, report and ranges into `folder`; return them by manifest role."""
        import onnx

        files = {"int8_onnx": folder / "model.int8.onnx", "report": folder / "report.json",
                 "ranges": folder / "ranges.json"}
        onnx.save_model(self.graph.body, str(files["int8_onnx"]))
        files["report"].write_text(json.dumps(self.report.to_json(), indent=2) + "\n")
        ranges = {name: bounds.to_json() for name, bounds in self.calibration.ranges.items()}
        files["ranges"].write_text(json.dumps(ranges, indent=1) + "\n")
        return files


def quantize_graph(graph: Graph, calib: Path, options: QuantizeOptions, progress: Progress = QUIET) -> Quantized:
    """The QDQ graph for `graph`; `options` must be resolved for the target (`for_target`)."""
    model = graph.body
    data = CalibData(calib, options.sampling)
    try:
        calibration = calibrate(model, data, options.observers, Path(options.cache_dir), progress)
    except CacheWriteError as exc:
        raise SettingError(QuantizeOptions, f"{exc}; pass a writable {{cache_dir}}") from exc
    evaluation = load_eval(options.eval, graph.signature.inputs) if options.eval else None
    dataset = evaluation.dataset if evaluation else calibration.dataset
    non_finite = non_finite_tensors(model, calibration.ranges)
    broken = [o.name for o in model.graph.output if o.name in non_finite]
    if broken:
        raise InputError(f"on the calibration data {calib}, the float model's outputs {', '.join(broken)} hold NaN "
                         "or inf: check the data's scaling (and that it is what the model was trained on)")
    plan = make_plan(model, calibration.ranges, options)
    quantized = {name: calibration.ranges[name] for name in plan.activations}
    constants = constant_inputs(calibration.dataset, quantized)
    collapsed = collapse_reasons(model, quantized, calibration.ranges, constants)
    if collapsed and not options.allow_degenerate:
        shown = "; ".join(collapsed[:5]) + (f"; and {len(collapsed) - 5} more" if len(collapsed) > 5 else "")
        raise SettingError(QuantizeOptions, f"on the calibration data {calib}, INT8 ranges collapse to a point: "
                                            f"{shown}. Calibrate on representative data, or pass "
                                            "{allow_degenerate} to quantize anyway")
    qdq = insert_qdq(model, plan)
    kept: tuple[str, ...] = ()
    if evaluation is not None and evaluation.labels is not None:
        progress.step(f"evaluating float and int8 on {dataset.count} samples from {options.eval}")
        reference = first_output(model, dataset)
        scored = metric(reference, first_output(qdq, dataset), evaluation.labels)
        ranking: list[str] = []
        if options.max_accuracy_drop is not None and not passes(scored, options.max_accuracy_drop):
            if options.auto_exclude:
                ranking = sensitivity_ranking(model, calibration.ranges, options, plan, dataset, reference)
            for node in ranking[:options.auto_exclude_limit]:
                kept += (node,)
                progress.step(f"accuracy drop {scored.drop:.3g} > {options.max_accuracy_drop:g}: keeping {node} in float")
                plan = make_plan(model, calibration.ranges, options, also_exclude=kept)
                qdq = insert_qdq(model, plan)
                scored = metric(reference, first_output(qdq, dataset), evaluation.labels)
                if passes(scored, options.max_accuracy_drop):
                    break
            if not passes(scored, options.max_accuracy_drop):
                raise gate_error(scored, options.max_accuracy_drop, kept, ranking)
    else:
        scored = None
    report = Report(layer_sqnr(model, qdq, plan, dataset), scored, dataset.count,
                    range_warnings(quantized, constants) + non_finite_warnings(non_finite))
    qdq_graph = dataclasses.replace(graph, body=qdq)
    return Quantized(graph, qdq_graph, plan, report, calibration, options, kept)


def requantize(graph: Graph, quantized: Quantized) -> Quantized:
    """`graph`, the model `quantized` came from at another batch size, quantized by the same plan: equal scales, so
    every batch size gives a row the same result."""
    qdq = dataclasses.replace(graph, body=insert_qdq(graph.body, quantized.plan))
    return dataclasses.replace(quantized, float_graph=graph, graph=qdq)


def save_model(quantized: Quantized, path: Path) -> None:
    """Write the QDQ model to `path` atomically (complete or not at all)."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(quantized.graph.body, tmp)
