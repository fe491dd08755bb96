"""A TVM artifact run on an RPC server: its library uploaded and loaded into a Relax VM there, inputs sent,
outputs brought back. Timings come from TVM's time evaluator running on the server, so they hold no network
round trips.

The checks that need no device run here before the upload (manifest, sha256, ELF machine); the server's CPU is
checked against the target when the server says what it is (`kiln rpc-server` does; TVM's own server does not).
A batch-range artifact's library is uploaded once and each batch runs as its chunks' functions there, as locally
(kiln.compiler.batching).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Mapping

import numpy as np

import kiln.tvm_runtime as tvm_runtime
from kiln.compiler import artifact
from kiln.compiler.batching import BatchedPredictor, Key, chunk_functions, pinned
from kiln.compiler.graph import TensorSpec
from kiln.compiler.manifest import Backend
from kiln.compiler.predictor import Predictor
from kiln.dtypes import carrier, from_carrier, to_carrier
from kiln.errors import RemoteError, TargetError, UsageError
from kiln.remote.session import Remote, Session, last_line
from kiln.targets.presets import Family, Preset


def load(path: Path, remote: Remote, threads: int | None = None) -> "RemotePredictor":
    """Check an artifact here, then load it on `remote` (threads: the server's TVM thread pool size)."""
    manifest, library = artifact.checked_library(path)
    if manifest.backend is not Backend.TVM:
        raise UsageError(f"{path} is a {manifest.backend.value} tree artifact: its library is plain C with a "
                         "predict() entry, and a TVM RPC server loads only TVM modules (it looks up TVM's "
                         "module symbols in what it loads). Run tree artifacts on the device itself, with "
                         "kiln-runtime there")
    loaded = _Library(remote.connect(), library, manifest.target, threads)
    functions = chunk_functions(manifest)
    if not functions:
        predictor = RemotePredictor(loaded, manifest.inputs, manifest.outputs)
    else:
        chunks = {key: RemotePredictor(loaded, tuple(pinned(s, *key) for s in manifest.inputs),
                                       tuple(pinned(s, *key) for s in manifest.outputs), function)
                  for key, function in functions.items()}
        predictor = RemoteBatchedPredictor(chunks, manifest.inputs, manifest.outputs)
    return predictor.taking(manifest)


class _Library:
    """An artifact's library uploaded to a server and loaded into a Relax VM there, once for all its functions."""

    def __init__(self, session: Session, library: Path, preset: Preset, threads: int | None):
        self.session = session
        facts = session.host()
        self.host_checked = facts is not None
        self.threads = threads or (facts.cpus if facts else None)  # None: the server's default, unknown here
        kind = tvm_runtime.KDL_CUDA if preset.family is Family.CUDA else tvm_runtime.KDL_CPU
        try:
            if kind == tvm_runtime.KDL_CUDA and not session.function("runtime.GetDeviceAttr")(kind, 0, 0):
                raise TargetError(f"artifact is built for {preset.name} and needs an NVIDIA GPU; {session.where} "
                                  "has none that TVM's runtime there can use")
            if facts and kind == tvm_runtime.KDL_CPU:
                from kiln.targets.host import check_cpu

                check_cpu(preset, facts.machine, facts.flags, session.where)
            if threads:
                session.function("runtime.config_threadpool")(0, threads)
            session.upload(library.name, library.read_bytes())
            self.device = session.device(kind)
            self.vm = tvm_runtime.vm_of(session.load_module(library.name), self.device)
        except RuntimeError as exc:
            raise RemoteError(f"{session.where} could not load {library.name}: {last_line(exc)}") from None


class RemotePredictor(Predictor):
    """Runs one VM function of a library loaded on a server (a batch-range library has one per batch size)."""

    def __init__(self, library: _Library, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 function: str = "main"):
        super().__init__(inputs, outputs)
        self.session, self.threads, self.host_checked = library.session, library.threads, library.host_checked
        self._library, self._function = library, function
        try:
            self._inputs = [tvm_runtime.empty(spec.shape, carrier(spec.dtype), library.device) for spec in inputs]
        except RuntimeError as exc:
            raise RemoteError(f"{self.session.where} could not make the inputs: {last_line(exc)}") from None
        vm = library.vm
        self._set_input, self._invoke = vm["set_input"], vm["invoke_stateful"]
        self._arity, self._output = vm["get_output_arity"], vm["get_output"]

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        function = self._function
        try:
            self._send(arrays)
            self._invoke(function)
            arity = self._arity(function)
            results = [self._output(function)] if arity < 0 else [self._output(function, i) for i in range(arity)]
            return [_array(value, spec) for value, spec in zip(results, self.outputs)]
        except RuntimeError as exc:
            raise RemoteError(f"the run on {self.session.where} failed: {last_line(exc)}") from None

    def seconds(self, inputs: Mapping[str, np.ndarray], repeat: int) -> list[float]:
        """`repeat` timings of one run each on `inputs`, measured on the server after one warm-up run."""
        return self._seconds(self._validate(inputs), repeat)

    def _seconds(self, arrays: list[np.ndarray], repeat: int) -> list[float]:
        try:
            self._send(arrays)
            evaluate = tvm_runtime.global_function("runtime.RPCTimeEvaluator")
            # (module, function, device type, id, number, repeat, min_repeat_ms, limit_zero_time_iterations,
            #  cooldown_interval_ms, repeats_to_cooldown, cache_flush_bytes, f_preproc)
            timer = evaluate(self._library.vm, "invoke_stateful", self._library.device.dlpack_device_type(), 0, 1,
                             repeat, 0, 100, 0, 1, 0, "")
            return list(struct.unpack(f"@{repeat}d", bytes(timer(self._function))))
        except RuntimeError as exc:
            raise RemoteError(f"timing on {self.session.where} failed: {last_line(exc)}") from None

    def _send(self, arrays: list[np.ndarray]) -> None:
        for tensor, array, spec in zip(self._inputs, arrays, self.inputs):
            tvm_runtime.copy_into(tensor, np.ascontiguousarray(to_carrier(array, spec.dtype)))
        self._set_input(self._function, *self._inputs)


class RemoteBatchedPredictor(BatchedPredictor):
    """A batch-range artifact on a server: each batch run as its chunks' functions there, one after another; a
    timing is the sum of the chunks' timings (on the server, as a local run of the same chunks)."""

    def __init__(self, chunks: Mapping[Key, RemotePredictor], inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...]):
        super().__init__(chunks, inputs, outputs)
        first = next(iter(chunks.values()))
        self.session, self.threads, self.host_checked = first.session, first.threads, first.host_checked

    def seconds(self, inputs: Mapping[str, np.ndarray], repeat: int) -> list[float]:
        timings = [self._chunks[key]._seconds(piece, repeat) for key, piece in self._pieces(self._validate(inputs))]
        return [sum(run) for run in zip(*timings)]


def _array(value, spec: TensorSpec) -> np.ndarray:
    """A VM result brought back as numpy: a tensor on the server copied here, or a shape as an array."""
    if hasattr(value, "__dlpack__"):
        return from_carrier(tvm_runtime.copy_out(value), spec.dtype)
    return np.asarray(tuple(value) if hasattr(value, "__len__") else value, dtype=spec.dtype)

