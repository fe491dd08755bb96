"""`kiln bench`: latency and throughput of an artifact, optionally beside a reference engine.

Kiln and the reference run alternately on the same inputs and thread count, so that both see the
same machine noise; results are medians and ratios from one run. With a remote device (BenchOptions.remote)
kiln is timed on that device by TVM's time evaluator and the reference here, one after the other.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kiln.arrays import random_feed
from kiln.compiler import artifact
from kiln.compiler.graph import TensorSpec
from kiln.compiler.manifest import Backend, Manifest
from kiln.errors import InputError, UsageError

if TYPE_CHECKING:
    from kiln.compiler.backends.tvm.profile import Profile
    from kiln.remote.session import Remote

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class BenchOptions:
    batch: int | None = None
    length: int | None = None  # of an artifact's length-range inputs (None: the range's longest)
    threads: int | None = None  # None: every core of the machine kiln runs on
    vs: str | None = None
    warmup: int = 3
    min_repeats: int = 10
    max_repeats: int = 1000
    seconds: float = 3.0
    inputs: dict[str, np.ndarray] | None = None
    profile: bool = False  # also time each TVM kernel, for another `seconds` ("profile" in the result)
    remote: Remote | None = None  # run and time kiln on this RPC server (the reference stays here)


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


@dataclass(frozen=True)
class Comparison:
    """The reference engine's timing beside kiln's, on the same inputs and threads."""

    engine: str  # "onnxruntime" or "native"
    timing: Timing
    speedup: float  # reference median / kiln median: above 1, kiln is faster
    max_abs_diff: float  # between kiln's and the reference's outputs


@dataclass(frozen=True)
class BenchResult:
    artifact: Path
    batch: int
    threads: int | None  # None: a remote server's own default (one that does not say how many)
    kiln: Timing
    reference: Comparison | None = None
    profile: Profile | None = None  # TVM artifacts: time per kernel
    remote: str | None = None  # where kiln ran, when not here (the reference always runs here)
    remote_checked: bool = False  # whether the remote said what CPU it has, and it was checked against the target

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"artifact": str(self.artifact), "batch": self.batch, "threads": self.threads,
                                "kiln": vars(self.kiln)}
        if self.remote:
            data["remote"] = {"where": self.remote, "cpu_checked": self.remote_checked}
        if self.reference:
            data[self.reference.engine] = vars(self.reference.timing)
            data["speedup"], data["max_abs_diff"] = self.reference.speedup, self.reference.max_abs_diff
        if self.profile is not None:
            data["profile"] = [row.to_json() for row in self.profile.kernels]
            data["profile_runs"] = self.profile.runs
        return data


def bench(path: Path, options: BenchOptions) -> BenchResult:
    if options.remote:
        return _bench_remote(path, options)
    threads = options.threads or os.cpu_count() or 1
    manifest = artifact.read_manifest(path)
    predictor = artifact.load(path, threads=threads)
    inputs = options.inputs or random_inputs(predictor.inputs, options.batch, options.length)
    runners: dict[str, Runner] = {"kiln": lambda feed: list(predictor.run(feed).values())}
    if options.vs:
        runners[options.vs] = reference(options.vs, path, manifest, threads)
    timings, outputs = measure(runners, inputs, options)
    comparison = _comparison(options.vs, timings, outputs) if options.vs else None
    profile = None
    if options.profile:
        if not hasattr(predictor, "profile"):
            raise InputError(f"--profile times the kernels of TVM artifacts; {path} is a {manifest.backend.value} "
                             "artifact: drop --profile")
        profile = predictor.profile(inputs, options.seconds)
    return BenchResult(path, _batch_of(inputs), threads, timings["kiln"], comparison, profile)


def _bench_remote(path: Path, options: BenchOptions) -> BenchResult:
    """Kiln timed on the remote server (TVM's time evaluator there: no network in the timings), then the
    reference here on the same inputs with this machine's threads."""
    from kiln.remote.predictor import load

    if options.profile:
        raise UsageError("--profile times each kernel through the VM's instrument hook, which calls back into this "
                         "process: it does not run over RPC. Drop --profile, or profile on the device itself")
    predictor = load(path, options.remote, options.threads)
    inputs = options.inputs or random_inputs(predictor.inputs, options.batch, options.length)
    outputs = {"kiln": list(predictor.run(inputs).values())}
    median = float(np.median(predictor.seconds(inputs, options.min_repeats)))
    repeats = int(min(options.max_repeats, max(options.min_repeats, options.seconds / max(median, 1e-9))))
    timings = {"kiln": Timing.of(predictor.seconds(inputs, repeats), _batch_of(inputs))}
    if options.vs:
        manifest = artifact.read_manifest(path)
        local, local_outputs = measure({options.vs: reference(options.vs, path, manifest,
                                                                options.threads or os.cpu_count() or 1)},
                                       inputs, options)
        timings.update(local)
        outputs.update(local_outputs)
    comparison = _comparison(options.vs, timings, outputs) if options.vs else None
    return BenchResult(path, _batch_of(inputs), predictor.threads, timings["kiln"], comparison,
                       remote=predictor.session.where, remote_checked=predictor.host_checked)


def _comparison(engine: str, timings: dict[str, Timing], outputs: dict[str, list[np.ndarray]]) -> Comparison:
    difference = max(float(np.max(np.abs(k.astype(np.float64) - r.astype(np.float64))))
                     for k, r in zip(outputs["kiln"], outputs[engine]))
    return Comparison(engine, timings[engine], timings[engine].median_ms / timings["kiln"].median_ms, difference)


def random_inputs(specs: tuple[TensorSpec, ...], batch: int | None, length: int | None = None) -> dict[str, np.ndarray]:
    """arrays.random_feed at `batch` (and `length`), which the artifact's fixed batch must allow."""
    for spec in specs:
        if batch is not None and spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != batch:
            shape = [batch, *spec.shape[1:]]
            raise InputError(f"the artifact is compiled for batch {spec.shape[0]} ({spec.describe()}); "
                             f"recompile with --input-shape {spec.name}:{'x'.join(map(str, shape))} "
                             f"to bench batch {batch}")
    return random_feed(specs, batch, length)


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


def reference(name: str, path: Path, manifest: Manifest, threads: int) -> Runner:
    try:
        return _reference(name, path, manifest, threads)
    except ModuleNotFoundError as exc:
        raise InputError(f"--vs {name} runs the reference engine, which this install lacks ({exc.name} is not "
                         "installed; the runtime-only kiln-runtime leaves the references out): bench against it "
                         "where the full kiln-ml is installed, or drop --vs") from None


def _reference(name: str, path: Path, manifest: Manifest, threads: int) -> Runner:
    tree = manifest.backend is Backend.TL2CGEN
    if name == "onnxruntime" and not tree:
        # An INT8 artifact is compared with ONNX Runtime running the same QDQ model.
        role = "int8_onnx" if "int8_onnx" in manifest.files else "onnx"
        return onnxruntime_runner(artifact.verified_file(path, manifest.files[role]), threads)
    if name == "native" and tree:
        from kiln.compiler.frontends.trees.native import native_runner

        return native_runner(artifact.verified_file(path, manifest.files["model"]), manifest, threads)
    if name in ("onnxruntime", "native"):
        raise InputError(f"--vs {name} does not apply to {'tree' if tree else 'neural'} artifacts; "
                         f"use --vs {'native' if tree else 'onnxruntime'}")
    raise InputError(f"unknown reference {name!r} for --vs; use onnxruntime (neural) or native (trees)")


def range_against_fixed(ranged, fixed, model: Path, inputs: dict[str, np.ndarray], threads: int,
                        seconds: float) -> tuple[dict[str, float], float]:
    """A range artifact's predictor, a fixed-shape one's and ONNX Runtime on `model`, timed round-robin on
    `inputs`: their medians in ms ("range", "fixed", "onnxruntime"), and how far either artifact's first output is
    from ONNX Runtime's, in units of its largest value (benchmarks/dynamic_batch.py, sequence_range.py)."""
    runners = {"range": lambda feed: list(ranged.run(feed).values()),
               "fixed": lambda feed: list(fixed.run(feed).values()),
               "onnxruntime": onnxruntime_runner(model, threads)}
    timings, outputs = measure(runners, inputs, BenchOptions(threads=threads, seconds=seconds))
    reference = outputs["onnxruntime"][0]
    error = max(float(np.abs(outputs[key][0] - reference).max() / np.abs(reference).max())
                for key in ("range", "fixed"))
    return {key: timing.median_ms for key, timing in timings.items()}, error


def onnxruntime_runner(model: Path, threads: int) -> Runner:
    from kiln.onnxruntime_session import session

    try:
        reference = session(model, threads)
    except Exception as exc:  # NOT_IMPLEMENTED: an op or a type (bfloat16 Add) its CPU kernels lack
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise InputError(f"ONNX Runtime cannot run {model.name} to compare with: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    if any(value.type == "tensor(bfloat16)" for value in (*reference.get_inputs(), *reference.get_outputs())):
        raise InputError("ONNX Runtime's Python API passes no bfloat16 arrays in or out; bench kiln alone")

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return reference.run(None, feed)
        except Exception as exc:  # ONNX Runtime's InvalidArgument, Fail, ...: it refused these inputs
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"ONNX Runtime refused the inputs ({first}); bench on inputs the model takes "
                             "(--input), or rebuild the artifact: this kiln records the index range of "
                             "integer inputs and draws random ones within it") from None

    return run
