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


def set_threads(threads: int) -> None:
    """Resize TVM's CPU thread pool (process-wide)."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(0, threads)
