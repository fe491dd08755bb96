"""The check against the reference: run a built artifact and ONNX Runtime on the same inputs, and compare.

`kiln compile` runs it on every neural artifact before the artifact is written (a failure writes
nothing); `kiln verify` runs it again later. The inputs are the calibration data when given (one batch),
else seeded random inputs shaped by the signature, with integer inputs kept within the rows of the tables
they index. FP32 artifacts must agree with ONNX Runtime on the source model within RELATIVE of the largest
reference output; INT8 ones with ONNX Runtime running kiln's own QDQ model within one quantization step of
each output (outputs not produced by a DequantizeLinear: within INT8_RELATIVE), or, where ONNX Runtime's own two
runs of that model (with and without its integer fusions) are further apart than that, within their distance.
In a model with NonMaxSuppression, detections that float rounding reorders are compared as sets of rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import TensorSpec
from kiln.compiler.manifest import Precision, Verification
from kiln.dtypes import CARRIERS, as_declared, is_float
from kiln.errors import InputError

if TYPE_CHECKING:
    import onnx

    from kiln.calibration.datasets import Dataset

RELATIVE = 1e-4
INT8_RELATIVE = 1e-2


class VerificationError(InputError):
    """The artifact's outputs differ from the reference's beyond the tolerance."""


class ReferenceUnavailable(InputError):
    """ONNX Runtime cannot run the reference model, so there is nothing to check against."""


def verify(run, reference_model: Path, precision: Precision, feed: dict[str, np.ndarray],
           inputs: str) -> Verification:
    """Run `run` (a predictor's run: feed -> {output name: array}) and ONNX Runtime on `reference_model`
    with `feed`, and measure their largest difference."""
    from kiln.onnxruntime_session import session

    try:
        expected = session(reference_model, threads=None).run(None, feed)
    except Exception as exc:  # onnxruntime raises its own exception types from C++
        raise ReferenceUnavailable(f"ONNX Runtime cannot run {reference_model.name} to check the artifact against: "
                                   f"{str(exc).strip().splitlines()[0]}") from exc
    got = run(feed)
    expected = [_as_artifact_type(e, a) for e, a in zip(expected, got.values())]
    steps = _output_steps(reference_model) if precision is Precision.INT8 else {}
    worst = _worst(got, expected, steps, precision)
    if precision is Precision.INT8 and _excess(worst[1], worst[2]) > 1:
        worst = _worst(got, expected, steps, precision, _spread(reference_model, feed, expected, steps, precision))
    name, difference, tolerance, unit = worst
    if _excess(difference, tolerance) > 1 and _has_nms(reference_model):
        as_sets = _row_sets_difference(got, expected, name, tolerance)
        if as_sets is not None and as_sets <= tolerance:
            difference, unit = as_sets, ("of each column's largest reference value, detection rows compared as sets "
                                         "(NonMaxSuppression orders equal scores as float rounding falls)")
    return Verification(f"ONNX Runtime on {reference_model.name}", inputs, name, difference, tolerance, unit)


def padding_check(unpadded: dict[str, np.ndarray], padded: dict[str, np.ndarray], precision: Precision,
                  inputs: str) -> Verification:
    """How far an artifact's outputs run padded are from the same inputs' outputs run unpadded, in the tolerances
    of the check against ONNX Runtime (outputs that are not quantization steps)."""
    name, difference, tolerance, unit = _worst(padded, list(unpadded.values()), {}, precision)
    return Verification("the same inputs unpadded", inputs, name, difference, tolerance, unit)


def _as_artifact_type(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """A reference output as the artifact's narrow type where ONNX Runtime returns that type's bytes as uint8 (its
    Python API does so for float8)."""
    if reference.dtype == np.uint8 and actual.dtype.name in CARRIERS and actual.dtype.itemsize == 1:
        return reference.view(actual.dtype)
    return reference


def _worst(got: dict[str, np.ndarray], expected: list[np.ndarray], steps: dict[str, float], precision: Precision,
           spread: list[float] | None = None) -> tuple[str, float, float, str]:
    """(output, difference, tolerance, unit) of the output furthest past its tolerance; with `spread`, each
    output's tolerance is at least ONNX Runtime's own difference between two runs of the reference."""
    worst = None
    for index, ((name, actual), reference) in enumerate(zip(got.items(), expected)):
        difference, tolerance, unit = _difference(actual, reference, steps.get(name), precision)
        if spread is not None and spread[index] > tolerance:
            tolerance, unit = spread[index], (f"{unit}; the tolerance: as far apart as ONNX Runtime's own runs of the "
                                              "QDQ model, with and without its integer fusions")
        if worst is None or _excess(difference, tolerance) > _excess(worst[1], worst[2]):
            worst = (name, difference, tolerance, unit)
    return worst


def _spread(reference_model: Path, feed: dict[str, np.ndarray], expected: list[np.ndarray], steps: dict[str, float],
            precision: Precision) -> list[float]:
    """Per output, how far ONNX Runtime's run of the QDQ model as written (each QuantizeLinear, DequantizeLinear and
    float op on its own) is from its default run (QDQ groups fused into integer kernels): the two round ties
    differently, and over many layers (BERT's 12, a ResNeXt's 16 blocks) the differences compound to several
    output steps, which no faithful INT8 execution can be held to below."""
    import onnxruntime as ort

    from kiln.onnxruntime_session import session_options

    options = session_options(os.cpu_count() or 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = ort.InferenceSession(str(reference_model), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in as_written.get_outputs()]
    return [_difference(a, e, steps.get(n), precision)[0]
            for a, e, n in zip(as_written.run(None, feed), expected, names)]


def _has_nms(model_path: Path) -> bool:
    import onnx

    return any(node.op_type == "NonMaxSuppression" for node in onnx.load(str(model_path),
                                                                        load_external_data=False).graph.node)


MAX_SET_ROWS = 4096  # rows per image past which the comparison as sets (quadratic) is not tried


def _row_sets_difference(got: dict[str, np.ndarray], expected: list[np.ndarray], name: str,
                         tolerance: float) -> float | None:
    """The outputs whose first two dims (batch, rows) are those of output `name` (a detector's ids, scores, boxes)
    compared as sets of rows (row_sets_difference); None where they are not such rows."""
    actual = list(got.values())
    lead = actual[list(got).index(name)].shape[:2]
    group = [i for i, (a, e) in enumerate(zip(actual, expected))
             if a.ndim >= 2 and a.shape == e.shape and a.shape[:2] == lead and is_float(e.dtype)]
    if len(lead) < 2 or lead[1] > MAX_SET_ROWS or not group:
        return None
    return row_sets_difference([actual[i] for i in group], [expected[i] for i in group], tolerance)


def row_sets_difference(actual: list[np.ndarray], expected: list[np.ndarray], tolerance: float = np.inf) -> float:
    """Outputs of shape [batch, rows, ...] sharing their rows (detections: ids, scores, boxes) compared row by row
    as sets: each reference row matched by the closest unmatched row of `actual`; the largest difference of a
    matched pair, over each column's largest reference value (inf where some row has no match within
    `tolerance`)."""
    lead = expected[0].shape[:2]
    rows = [np.concatenate([out.reshape(*lead, -1).astype(np.float64) for out in outputs], axis=-1)
            for outputs in (actual, expected)]
    scale = np.abs(rows[1]).reshape(-1, rows[1].shape[-1]).max(axis=0)
    scale[scale == 0] = 1.0
    worst = 0.0
    for mine, theirs in zip(*rows):
        unmatched = list(range(len(mine)))
        for row in theirs:
            error, j = min(((float(np.max(np.abs(mine[k] - row) / scale)), k) for k in unmatched),
                           default=(np.inf, -1))
            if not error <= tolerance:  # NaN included
                return np.inf
            unmatched.remove(j)
            worst = max(worst, error)
    return worst


def _excess(difference: float, tolerance: float) -> float:
    """How far past its tolerance a difference is (above 1: failed)."""
    if tolerance == 0:
        return float("inf") if difference > 0 else 0.0
    return difference / tolerance


def _difference(actual: np.ndarray, reference: np.ndarray, step: float | None,
                precision: Precision) -> tuple[float, float, str]:
    if actual.shape != reference.shape:
        raise VerificationError(f"the artifact's output has shape {actual.shape}, ONNX Runtime's {reference.shape}")
    if not is_float(reference.dtype):
        return float(np.count_nonzero(actual != reference)), 0.0, "differing values"
    actual, reference = actual.astype(np.float64), reference.astype(np.float64)
    if not np.array_equal(np.isnan(actual), np.isnan(reference)):
        return float("inf"), 0.0, "(NaN where the reference has none, or the reverse)"
    infinite = np.isinf(reference) | np.isinf(actual)
    if not np.array_equal(actual[infinite], reference[infinite]):
        return float("inf"), 0.0, "(an infinity where the reference has another value, or the reverse)"
    finite = np.isfinite(reference) & np.isfinite(actual)
    largest = float(np.max(np.abs(actual[finite] - reference[finite]), initial=0.0))
    if step:
        return largest / step, 1.0 + 1e-3, "output quantization steps"
    scale = float(np.max(np.abs(reference[finite]), initial=0.0)) or 1.0
    relative = INT8_RELATIVE if precision is Precision.INT8 else RELATIVE
    return largest / scale, relative, "of the largest reference output"


def _output_steps(qdq_model: Path) -> dict[str, float]:
    """Graph outputs produced by a DequantizeLinear with a constant scale -> that scale (the largest, per-channel)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_model))
    outputs = {o.name for o in model.graph.output}
    scale_of = {node.output[0]: node.input[1] for node in model.graph.node
                if node.op_type == "DequantizeLinear" and node.output[0] in outputs}
    scales = {t.name: float(np.max(numpy_helper.to_array(t))) for t in model.graph.initializer
              if t.name in scale_of.values()}
    return {output: scales[scale] for output, scale in scale_of.items() if scale in scales}


def given_feed(arrays: dict[str, np.ndarray], specs: tuple[TensorSpec, ...], source: str) -> tuple[dict, str]:
    """The artifact's inputs from `arrays` (other arrays, such as labels, ignored), cut to the first rows when
    there are more than the artifact's fixed batch; and a description of them."""
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise InputError(f"{source} has no array named {', '.join(missing)}; it holds {', '.join(arrays)}")
    feed, cut = {}, False
    for spec in specs:
        array = as_declared(arrays[spec.name], spec.dtype)  # a bfloat16 array as a file holds it
        batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
        if batch is not None and array.ndim == len(spec.shape) and array.shape[0] > batch:
            array, cut = array[:batch], True
        feed[spec.name] = array
    rows = next(iter(feed.values())).shape[0] if cut else None
    return feed, (f"the first {rows} rows of {source}" if cut else source)


def calibration_feed(model: "onnx.ModelProto", dataset: "Dataset") -> dict[str, np.ndarray]:
    """The first batch of the calibration samples, shaped as the model takes it."""
    from kiln.calibration.collect import model_batches

    feed, _ = next(model_batches(model, dataset))
    return feed
