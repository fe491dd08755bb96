"""`kiln bench`: latency and throughput of an artifact, optionally beside a reference engine.

Kiln and the reference run alternately on the same inputs and thread count, so that both see the
same machine noise; results are medians and ratios from one run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kiln.compiler import artifact
from kiln.compiler.graph import TensorSpec
from kiln.errors import InputError

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class BenchOptions:
    batch: int | None = None
    threads: int = os.cpu_count() or 1
    vs: str | None = None
    warmup: int = 3
    min_repeats: int = 10
    max_repeats: int = 1000
    seconds: float = 3.0
    inputs: dict[str, np.ndarray] | None = None
    profile_runs: int = 0  # > 0: also time each TVM kernel over this many runs ("profile" in the result)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # rows (batch items) per second at the median latency
    repeats: int

    @classmethod
    def of(cls, seconds: list[float], batch: int) -> "Timing":
        ms = np.array(seconds) * 1e3
        median = float(np.median(ms))
        return cls(median, float(np.percentile(ms, 90)), float(np.percentile(ms, 99)), batch / median * 1e3,
                   len(ms))


def bench(path: Path, options: BenchOptions) -> dict[str, Any]:
    manifest = artifact.read_manifest(path)
    predictor = artifact.load(path, threads=options.threads)
    inputs = options.inputs or random_inputs(predictor.inputs, options.batch)
    batch = _batch_of(inputs)
    runners: dict[str, Runner] = {"kiln": lambda feed: list(predictor.run(feed).values())}
    if options.vs:
        runners[options.vs] = reference(options.vs, path, manifest, options.threads)
    timings, outputs = measure(runners, inputs, options)
    result: dict[str, Any] = {
        "artifact": str(path),
        "batch": batch,
        "threads": options.threads,
        "kiln": vars(timings["kiln"]),
    }
    if options.vs:
        result[options.vs] = vars(timings[options.vs])
        result["speedup"] = timings[options.vs].median_ms / timings["kiln"].median_ms
        result["max_abs_diff"] = max(float(np.max(np.abs(k.astype(np.float64) - r.astype(np.float64))))
                                     for k, r in zip(outputs["kiln"], outputs[options.vs]))
    if options.profile_runs:
        if not hasattr(predictor, "profile"):
            raise InputError(f"--profile times the kernels of TVM artifacts; {path} is a {manifest['backend']} "
                             "artifact: drop --profile")
        result["profile"] = [row.to_json() for row in predictor.profile(inputs, options.profile_runs)]
    return result


def random_inputs(specs: tuple[TensorSpec, ...], batch: int | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else (batch or 1) for d in spec.shape]
        if batch is not None and shape and shape[0] != batch:
            raise InputError(f"the artifact is compiled for batch {shape[0]} ({spec.describe()}); "
                             f"recompile with --input-shape {spec.name}:{'x'.join(map(str, [batch] + shape[1:]))} "
                             f"to bench batch {batch}")
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return feed


def _batch_of(inputs: dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def measure(runners: dict[str, Runner], inputs: dict[str, np.ndarray],
            options: BenchOptions) -> tuple[dict[str, Timing], dict[str, list[np.ndarray]]]:
    """Time the runners round-robin on the same inputs; also return each one's outputs."""
    outputs = {name: run(inputs) for name, run in runners.items()}
    for _ in range(options.warmup):
        for run in runners.values():
            run(inputs)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    deadline = time.perf_counter() + options.seconds
    while True:
        for name, run in runners.items():
            start = time.perf_counter()
            run(inputs)
            samples[name].append(time.perf_counter() - start)
        count = len(next(iter(samples.values())))
        if count >= options.max_repeats or (count >= options.min_repeats and time.perf_counter() > deadline):
            break
    batch = _batch_of(inputs)
    return {name: Timing.of(s, batch) for name, s in samples.items()}, outputs


def reference(name: str, path: Path, manifest: dict[str, Any], threads: int) -> Runner:
    tree = manifest["backend"] == "tl2cgen"
    if name == "onnxruntime" and not tree:
        # An INT8 artifact is compared with ONNX Runtime running the same QDQ model.
        role = "int8_onnx" if "int8_onnx" in manifest["files"] else "onnx"
        return onnxruntime_runner(artifact.verified_file(path, manifest["files"][role]), threads)
    if name == "native" and tree:
        from kiln.compiler.frontends.trees.native import native_runner

        return native_runner(artifact.verified_file(path, manifest["files"]["model"]), manifest, threads)
    if name in ("onnxruntime", "native"):
        raise InputError(f"--vs {name} does not apply to {'tree' if tree else 'neural'} artifacts; "
                         f"use --vs {'native' if tree else 'onnxruntime'}")
    raise InputError(f"unknown reference {name!r} for --vs; use onnxruntime (neural) or native (trees)")


def onnxruntime_runner(model: Path, threads: int) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), ort_session_options(threads), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def ort_session_options(threads: int):
    """Options that let ONNX Runtime share the cores fairly with another engine in the same process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
