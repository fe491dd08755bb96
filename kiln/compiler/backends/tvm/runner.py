"""Run a TVM-compiled artifact through the Relax virtual machine."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

import kiln.tvm_runtime as tvm_runtime
from kiln.compiler.graph import TensorSpec
from kiln.compiler.predictor import Predictor
from kiln.dtypes import EXTENDED, as_declared, carrier, from_carrier, numpy_dtype, to_carrier
from kiln.errors import InputError
from kiln.targets.presets import Family, Preset


class TVMPredictor(Predictor):
    def __init__(self, library: Path, preset: Preset, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], threads: int | None = None, function: str = "main"):
        """Runs the library's VM function `function` (a batch-range library has one per batch size)."""
        prepare_thread_pool()
        super().__init__(inputs, outputs)
        if threads:
            set_threads(threads)
        on_cpu = preset.family is not Family.CUDA
        self._device = tvm_runtime.device(tvm_runtime.KDL_CPU if on_cpu else tvm_runtime.KDL_CUDA)
        self._vm = tvm_runtime.load_vm(library, self._device)
        try:
            self._main = self._vm[function]
        except AttributeError:
            raise InputError(f"{library} has no function {function!r}, which its manifest names; the artifact is "
                             "inconsistent (edited or assembled from two builds). Rebuild it.") from None
        arity = self._vm["get_function_arity"](function)
        if arity != len(inputs):
            raise InputError(f"{library}: the library takes {arity} inputs, its manifest lists {len(inputs)}; the "
                             "artifact is inconsistent (edited or assembled from two builds). Rebuild it.")
        # Inputs are copied into tensors made once (neural shapes are static): a new TVM tensor per
        # call costs more than a small model's whole run. On the CPU, numpy views of those tensors
        # (DLPack) take the copies in and out: a copy through TVM's byte copy or numpy() costs ~13 us,
        # np.copyto 0.5 us, against a VM run of ~15 us for the example CNN. numpy's DLPack has no bfloat16 or
        # float8 (kiln.dtypes): those go through the byte copy. The narrow types (float8, int4, ...) are held in
        # their carriers. The lock keeps concurrent calls apart.
        self._inputs = [tvm_runtime.empty(spec.shape, carrier(spec.dtype), self._device) for spec in inputs]
        self._on_cpu = on_cpu
        self._input_views = [np.from_dlpack(tensor) if on_cpu and carrier(spec.dtype) not in EXTENDED else None
                             for tensor, spec in zip(self._inputs, inputs)]
        self._lock = threading.Lock()

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for view, tensor, array, spec in zip(self._input_views, self._inputs, arrays, self.inputs):
                array = to_carrier(array, spec.dtype)
                if view is not None:
                    np.copyto(view, array)
                else:
                    tvm_runtime.copy_into(tensor, array)
            try:
                result = self._main(*self._inputs)
            except (RuntimeError, ValueError) as exc:  # TVM's shape checks raise the one, its rank checks the other
                raise _signature_error(exc) or exc
            if len(self.outputs) > 1 and (hasattr(result, "__dlpack__") or len(result) != len(self.outputs)):
                raise InputError(f"the artifact's library returns {1 if hasattr(result, '__dlpack__') else len(result)}"
                                 f" outputs, its manifest lists {len(self.outputs)}; the artifact is inconsistent. "
                                 "Rebuild it.")
            results = [result] if len(self.outputs) == 1 else list(result)
            return [self._array(r, spec) for r, spec in zip(results, self.outputs)]

    def _array(self, value, spec: TensorSpec) -> np.ndarray:
        """A VM result as numpy: a tensor copied out (it can be the VM's own constant or alias an input), or a
        shape (a Shape output's value, computed at compile time) as an array of the output's dtype."""
        if not hasattr(value, "__dlpack__"):
            return np.asarray(tuple(value) if hasattr(value, "__len__") else value, dtype=numpy_dtype(spec.dtype))
        if self._on_cpu and carrier(spec.dtype) not in EXTENDED:
            return from_carrier(np.from_dlpack(value).copy(), spec.dtype)
        return from_carrier(tvm_runtime.copy_out(value), spec.dtype)

    def profile(self, feed: dict[str, np.ndarray], seconds: float):
        """Time per kernel over the runs on `feed` that fit in `seconds`: a profile.Profile."""
        from kiln.compiler.backends.tvm.profile import profile_vm

        args = []
        for spec in self.inputs:
            args.append(tvm_runtime.empty(spec.shape, carrier(spec.dtype), self._device))
            array = as_declared(feed[spec.name], spec.dtype)  # a bfloat16 array as a file holds it
            array = to_carrier(np.asarray(array, dtype=numpy_dtype(spec.dtype)), spec.dtype)
            tvm_runtime.copy_into(args[-1], np.ascontiguousarray(array))
        return profile_vm(self._vm, self._main, args, seconds)


def _signature_error(exc: Exception) -> InputError | None:
    """An InputError when the library refused its inputs' shapes or dtypes: the inputs passed the manifest's
    checks, so the manifest and the library disagree."""
    match = re.search(r"ErrorContext\(fn=main, loc=param\[\d+\], param=(\w+), annotation=(.*?)\)\s", str(exc))
    if match is None:
        return None
    return InputError(f"the artifact's library takes {match[1]} as {match[2]}, unlike its manifest; the artifact "
                      "is inconsistent (edited or assembled from two builds). Rebuild it.")


def prepare_thread_pool() -> None:
    """Settings TVM reads once, when it starts its thread pool (so call this before the first run; explicit
    settings in the environment win):
    - TVM_BIND_THREADS=0 lets the OS place the threads: pinned to fixed cores (TVM's default) they stall
      whenever another process or ONNX Runtime holds those cores (2-5x slower under load);
    - TVM_NUM_THREADS = every CPU this process may use: without it TVM caps its pool at half the CPUs,
      assuming hyper-threading, which on a 2-core machine meant one thread whatever --threads said;
    - TVM_THREAD_POOL_SPIN_COUNT=1000: idle workers call sched_yield that many times before they sleep.
      TVM's 300000 kept a core busy for ~0.2 s after every call (0.22 CPU-seconds per idle second here),
      taking it from whatever runs next; 1000 (~0.5 ms) still spans the gaps between a model's kernels."""
    import os

    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "1000")


def set_threads(threads: int) -> None:
    """Resize TVM's CPU thread pool (process-wide)."""
    tvm_runtime.global_function("runtime.config_threadpool")(0, threads)
