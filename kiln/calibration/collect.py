"""Run the float model in ONNX Runtime with every float tensor exposed, and observe their ranges.

Memory bound: at any moment kiln holds one batch of inputs and that batch's activations (batch
size x the sum of all float tensor sizes per sample), plus per tensor two floats (min/max) or one
histogram of `bins` int64 counters (16 KiB at the default 2048). The number of calibration samples
does not enter it. Methods other than minmax make two passes over the data: min/max first, then
histograms over the now-known range.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from kiln.calibration import cache
from kiln.calibration.datasets import CalibData, Dataset, open_dataset
from kiln.calibration.observers import CalibMethod, ObserverSettings, TensorRange, make_observer
from kiln.compiler.frontends.onnx import signature
from kiln.errors import InputError

if TYPE_CHECKING:
    import onnx

DEFAULT_BATCH = 32


@dataclass(frozen=True)
class Calibration:
    ranges: dict[str, TensorRange]  # by tensor name: graph inputs and every float node output
    dataset: Dataset
    cached: bool
    cache_file: Path

    def to_json(self) -> dict:
        return {"samples": self.dataset.count, "cached": self.cached, "cache_file": str(self.cache_file)}


def calibrate(model: "onnx.ModelProto", data: CalibData, settings: ObserverSettings, cache_dir: Path,
              show_bar: bool = False, progress: Callable[[str], None] = lambda _: None) -> Calibration:
    """Ranges of every float tensor of `model` over `data`, from the cache when its key matches."""
    dataset = open_dataset(data, signature(model).inputs)
    key = cache.cache_key(model, dataset.digest, {**settings.to_json(), **data.settings()})
    path = cache.cache_path(cache_dir, key)
    cached = cache.load(path)
    if cached is not None:
        progress(f"calibration ranges from cache {path}")
        return Calibration(cached, dataset, True, path)
    progress(f"calibrating with {settings.method.value} on {dataset.count} samples")
    ranges = collect_ranges(model, dataset, settings, show_bar)
    cache.save(path, ranges)
    return Calibration(ranges, dataset, False, path)


def collect_ranges(model: "onnx.ModelProto", dataset: Dataset, settings: ObserverSettings,
                   show_bar: bool = False) -> dict[str, TensorRange]:
    runner = TensorRunner(model, float_tensors(model))
    passes = 1 if settings.method is CalibMethod.MINMAX else 2
    batch = batch_size(model)
    bar = _bar(show_bar, dataset.count * passes)
    with bar as ticks:
        bounds = _observe(runner, dataset, batch, {n: make_observer(settings, None) for n in runner.names}, ticks)
        if passes == 2:
            observers = {n: make_observer(settings, bounds[n]) for n in runner.names}
            return _observe(runner, dataset, batch, observers, ticks)
    return bounds


def _observe(runner: "TensorRunner", dataset: Dataset, batch: int, observers: dict, ticks) -> dict[str, TensorRange]:
    for feed in dataset.batches(batch):
        for name, values in runner.run(feed).items():
            observers[name].update(values)
        ticks.update(len(next(iter(feed.values()))))
    return {name: observer.result() for name, observer in observers.items()}


class _NoBar:
    def update(self, _: int) -> None:
        pass


def _bar(show: bool, length: int):
    if not show:
        return nullcontext(_NoBar())
    import click

    return click.progressbar(length=length, label="calibrating", file=sys.stderr)


def float_tensors(model: "onnx.ModelProto") -> list[str]:
    """Graph inputs and node outputs of float32 type, in graph order (initializers excluded)."""
    from onnx import TensorProto

    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    names += [out for node in model.graph.node for out in node.output if out]
    return [n for n in dict.fromkeys(names) if types.get(n) == TensorProto.FLOAT]


def batch_size(model: "onnx.ModelProto") -> int:
    """The model's fixed batch dimension, or DEFAULT_BATCH when the batch is symbolic."""
    dims = {spec.shape[0] for spec in signature(model).inputs if spec.shape}
    fixed = {d for d in dims if isinstance(d, int)}
    return fixed.pop() if len(fixed) == 1 else DEFAULT_BATCH


class TensorRunner:
    """An ONNX Runtime session of `model` whose outputs are the named tensors."""

    def __init__(self, model: "onnx.ModelProto", names: list[str]):
        import onnx
        import onnxruntime as ort

        from kiln.bench import ort_session_options

        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        existing = {o.name for o in exposed.graph.output}
        known = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
        for name in names:
            if name not in existing:
                exposed.graph.output.append(known.get(name) or onnx.helper.make_empty_tensor_value_info(name))
        self.names = names
        self._session = ort.InferenceSession(exposed.SerializeToString(), ort_session_options(os.cpu_count() or 1),
                                             providers=["CPUExecutionProvider"])

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self.names, feed)
        except Exception as exc:  # onnxruntime raises its own exception types from C++
            raise InputError(f"ONNX Runtime could not run the model on the calibration data: "
                             f"{str(exc).strip().splitlines()[0]}") from exc
        return dict(zip(self.names, values))
