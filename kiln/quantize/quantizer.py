"""Quantize a neural Graph: prepare, calibrate, plan, insert QDQ, report, gate (in that order)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kiln.calibration.collect import Calibration, calibrate
from kiln.calibration.datasets import CalibData
from kiln.compiler.frontends import ImportOptions, load_graph
from kiln.compiler.graph import Graph, GraphKind
from kiln.errors import InputError
from kiln.compiler.passes.fold_batchnorm import fold_batchnorm
from kiln.compiler.passes.name_nodes import name_nodes
from kiln.quantize.config import QuantizeOptions
from kiln.quantize.gate import gate_error, passes, sensitivity_ranking
from kiln.quantize.policy import Plan, make_plan
from kiln.quantize.qdq import insert_qdq
from kiln.quantize.report import Report, first_output, layer_sqnr, load_eval, metric

Progress = Callable[[str], None]

# Passes run on the float graph before calibration, in this order.
PREPARE = (name_nodes, fold_batchnorm)


@dataclass(frozen=True)
class Quantized:
    float_graph: Graph  # after PREPARE
    graph: Graph  # the QDQ model
    plan: Plan
    report: Report
    calibration: Calibration
    options: QuantizeOptions
    auto_excluded: tuple[str, ...]

    def manifest_section(self) -> dict:
        return {**self.options.to_json(), "calibration": self.calibration.to_json(),
                "quantized_nodes": len(self.plan.nodes), "float_nodes": list(self.plan.excluded),
                "auto_excluded": list(self.auto_excluded),
                "accuracy": self.report.metric.to_json() if self.report.metric else None}

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


def quantize_graph(graph: Graph, calib: Path, options: QuantizeOptions, progress: Progress) -> Quantized:
    """The QDQ graph for `graph`; `options` must be resolved for the target (`for_target`)."""
    for step in PREPARE:
        graph = step(graph)
    model = graph.body
    data = CalibData(calib, options.samples, options.seed, options.images)
    calibration = calibrate(model, data, options.observers, Path(options.cache_dir), options.progress_bar, progress)
    evaluation = load_eval(options.eval, graph.signature.inputs) if options.eval else None
    dataset = evaluation.dataset if evaluation else calibration.dataset
    plan = make_plan(model, calibration.ranges, options)
    qdq = insert_qdq(model, plan)
    kept: tuple[str, ...] = ()
    if evaluation is not None and evaluation.labels is not None:
        progress(f"evaluating float and int8 on {dataset.count} samples from {options.eval}")
        reference = first_output(model, dataset)
        scored = metric(reference, first_output(qdq, dataset), evaluation.labels)
        ranking: list[str] = []
        if options.max_accuracy_drop is not None and not passes(scored, options.max_accuracy_drop):
            if options.auto_exclude:
                ranking = sensitivity_ranking(model, calibration.ranges, options, plan, dataset, reference)
            for node in ranking[:options.auto_exclude_limit]:
                kept += (node,)
                progress(f"accuracy drop {scored.drop:.3g} > {options.max_accuracy_drop:g}: keeping {node} in float")
                plan = make_plan(model, calibration.ranges, options, also_exclude=kept)
                qdq = insert_qdq(model, plan)
                scored = metric(reference, first_output(qdq, dataset), evaluation.labels)
                if passes(scored, options.max_accuracy_drop):
                    break
            if not passes(scored, options.max_accuracy_drop):
                raise gate_error(scored, options.max_accuracy_drop, kept, ranking)
    else:
        scored = None
    report = Report(layer_sqnr(model, qdq, plan, dataset), scored, dataset.count)
    qdq_graph = dataclasses.replace(graph, body=qdq)
    return Quantized(graph, qdq_graph, plan, report, calibration, options, kept)


def save_model(quantized: Quantized, path: Path) -> None:
    """Write the QDQ model to `path` atomically (complete or not at all)."""
    import onnx

    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    try:
        onnx.save_model(quantized.graph.body, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def quantize_model(model: Path, calib: Path, options: QuantizeOptions, imports: ImportOptions, output: Path,
                   progress: Progress) -> Quantized:
    """`kiln quantize`: the QDQ ONNX model of `model`, written to `output` only when it passes the gate."""
    if output.suffix != ".onnx":
        raise InputError(f"-o {output}: the quantized model is an ONNX file; name it *.onnx")
    if not output.parent.is_dir():
        raise InputError(f"output folder {output.parent} does not exist; create it first")
    progress(f"importing {model}")
    graph = load_graph(model, imports)
    if graph.kind is not GraphKind.NEURAL:
        raise InputError(f"{model} is a {graph.kind.value} model; `kiln quantize` takes neural models "
                         "(ONNX, MXNet). Quantize trees with `kiln compile --int8`.")
    quantized = quantize_graph(graph, calib, options, progress)
    save_model(quantized, output)
    progress(f"wrote {output}")
    return quantized
