"""Run a TVM-compiled artifact through the Relax virtual machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.compiler.graph import TensorSpec
from kiln.compiler.predictor import Predictor
from kiln.targets.presets import Family, Preset


class TVMPredictor(Predictor):
    def __init__(self, library: Path, preset: Preset, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], threads: int | None = None):
        unbind_threads()
        import tvm
        from tvm import relax

        super().__init__(inputs, outputs)
        if threads:
            set_threads(threads)
        self._device = tvm.cuda(0) if preset.family is Family.CUDA else tvm.cpu(0)
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), self._device)
        self._main = self._vm["main"]
        self._tensor = tvm.runtime.tensor

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        result = self._main(*(self._tensor(a, self._device) for a in arrays))
        results = [result] if hasattr(result, "numpy") else list(result)
        return [r.numpy() for r in results]

    def profile(self, feed: dict[str, np.ndarray], runs: int):
        """Time per kernel over `runs` runs on `feed`: a list of profile.KernelTime, largest first."""
        from kiln.compiler.backends.tvm.profile import profile_vm

        args = [self._tensor(np.asarray(feed[spec.name]), self._device) for spec in self.inputs]
        return profile_vm(self._vm, self._main, args, runs)


def unbind_threads() -> None:
    """Let the OS place TVM's pool threads: pinned to fixed cores (TVM's default) they stall whenever
    another process or ONNX Runtime holds those cores (2-5x slower under load). TVM reads this when it
    starts its pool, so call it before the first run; an explicit TVM_BIND_THREADS wins."""
    import os

    os.environ.setdefault("TVM_BIND_THREADS", "0")


def set_threads(threads: int) -> None:
    """Resize TVM's CPU thread pool (process-wide)."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(0, threads)
