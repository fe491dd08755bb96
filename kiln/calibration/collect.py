"""Run the float model in ONNX Runtime with every float tensor exposed, and observe their ranges.

Memory bound: at any moment kiln holds one batch of inputs and that batch's activations (batch
size x the sum of all float tensor sizes per sample), plus per tensor two floats (min/max) or one
histogram of `bins` int64 counters (16 KiB at the default 2048). The number of calibration samples
does not enter it. Methods other than minmax make two passes over the data: min/max first, then
histograms over the now-known range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from kiln.calibration import cache
from kiln.calibration.datasets import CalibData, Dataset, open_dataset
from kiln.calibration.observers import CalibMethod, ObserverSettings, TensorRange, make_observer
from kiln.compiler.frontends.options import ImportOptions
from kiln.compiler.frontends.onnx import signature
from kiln.compiler.onnx_graph import graph_inputs
from kiln.errors import InputError, SettingError
from kiln.progress import QUIET, Advance, Progress

if TYPE_CHECKING:
    import onnx

DEFAULT_BATCH = 32


@dataclass(frozen=True)
class Calibration:
    ranges: dict[str, TensorRange]  # by tensor name: graph inputs and every float node output, but those with NaN/inf
    dataset: Dataset
    cached: bool
    cache_file: Path

    def to_json(self) -> dict:
        return {"samples": self.dataset.count, "cached": self.cached, "cache_file": str(self.cache_file)}


def calibrate(model: "onnx.ModelProto", data: CalibData, settings: ObserverSettings, cache_dir: Path,
              progress: Progress = QUIET) -> Calibration:
    """Ranges of every float tensor of `model` over `data`, from the cache when its key matches."""
    dataset = open_dataset(data, signature(model).inputs)
    key = cache.cache_key(model, dataset.digest, {**settings.to_json(), **data.sampling.to_json()})
    path = cache.cache_path(cache_dir, key)
    cached = cache.load(path)
    if cached is not None:
        progress.step(f"calibration ranges from cache {path}")
        return Calibration(cached, dataset, True, path)
    progress.step(f"calibrating with {settings.method.value} on {dataset.count} samples")
    ranges = collect_ranges(model, dataset, settings, progress)
    cache.save(path, ranges)
    return Calibration(ranges, dataset, False, path)


def collect_ranges(model: "onnx.ModelProto", dataset: Dataset, settings: ObserverSettings,
                   progress: Progress = QUIET) -> dict[str, TensorRange]:
    runner = TensorRunner(model, float_tensors(model))
    passes = 1 if settings.method is CalibMethod.MINMAX else 2
    with progress.bar("calibrating", dataset.count * passes) as advance:
        bounds = _observe(runner, model, dataset, {n: make_observer(settings, None) for n in runner.names}, advance)
        if passes == 2:
            observers = {n: make_observer(settings, bounds[n]) for n in runner.names if n in bounds}
            return _observe(runner, model, dataset, observers, advance)
    return bounds


def _observe(runner: "TensorRunner", model: "onnx.ModelProto", dataset: Dataset, observers: dict,
             advance: Advance) -> dict[str, TensorRange]:
    for feed, rows in model_batches(model, dataset):
        for name, values in runner.run(feed).items():
            if name in observers:
                observers[name].update(values)
        advance(rows)
    results = {name: observer.result() for name, observer in observers.items()}
    return {name: bounds for name, bounds in results.items() if bounds is not None}


def float_tensors(model: "onnx.ModelProto") -> list[str]:
    """Graph inputs and node outputs of float32 type, in graph order (initializers excluded)."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    names = [v.name for v in graph_inputs(model)]
    names += [out for node in model.graph.node for out in node.output if out]
    return [n for n in dict.fromkeys(names) if types.get(n) == TensorProto.FLOAT]


def model_batches(model: "onnx.ModelProto", dataset: Dataset) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(feed, real rows) in batches the model accepts.

    A model with a symbolic batch gets DEFAULT_BATCH rows at a time. A model pinned to batch B gets
    exactly B: a short last batch is padded by repeating its final row (fewer than B duplicates,
    which leave min/max unchanged and shift histograms negligibly); callers trim outputs to the
    real rows.
    """
    dims = {spec.shape[0] for spec in signature(model).inputs if spec.shape}
    fixed = {d for d in dims if isinstance(d, int)}
    if len(fixed) != 1:
        for feed in dataset.batches(DEFAULT_BATCH):
            yield feed, len(next(iter(feed.values())))
        return
    batch = fixed.pop()
    if dataset.count < batch:
        raise SettingError(ImportOptions, f"the model is pinned to batch {batch} but the data has {dataset.count} "
                                          f"samples; give at least {batch} samples, or compile with a smaller batch "
                                          "in {input_shapes}")
    for feed in dataset.batches(batch):
        rows = len(next(iter(feed.values())))
        if rows < batch:
            feed = {name: np.concatenate([a, np.repeat(a[-1:], batch - rows, axis=0)]) for name, a in feed.items()}
        yield feed, rows


class TensorRunner:
    """An ONNX Runtime session of `model` whose outputs are the named tensors."""

    def __init__(self, model: "onnx.ModelProto", names: list[str]):
        import onnx
        import onnxruntime as ort

        from kiln.onnxruntime_session import session_options

        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        existing = {o.name for o in exposed.graph.output}
        known = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
        for name in names:
            if name not in existing:
                exposed.graph.output.append(known.get(name) or onnx.helper.make_empty_tensor_value_info(name))
        self.names = names
        self._session = ort.InferenceSession(exposed.SerializeToString(), session_options(os.cpu_count() or 1),
                                             providers=["CPUExecutionProvider"])

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self.names, feed)
        except Exception as exc:  # onnxruntime raises its own exception types from C++
            raise InputError(f"ONNX Runtime could not run the model on the calibration data: "
                             f"{str(exc).strip().splitlines()[0]}") from exc
        return dict(zip(self.names, values))
