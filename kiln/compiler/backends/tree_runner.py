"""Run a tl2cgen artifact: one ctypes call into the library per predict, on the caller's array.

The library's entry points (tree_predict.c) read float32 or float64 rows in place, so a
C-contiguous array costs no copy; the only allocation per call is the output array.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from kiln.compiler.graph import TensorSpec
from kiln.compiler.predictor import Predictor
from kiln.errors import InputError, TargetError
from kiln.targets.presets import Preset

_ENTRY_POINTS = {np.dtype(np.float32): "kiln_predict_f32", np.dtype(np.float64): "kiln_predict_f64"}


class TreePredictor(Predictor):
    def __init__(self, library: Path, preset: Preset, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], threads: int | None = None):
        super().__init__(inputs, outputs)
        try:
            self._library = ctypes.CDLL(str(library))
        except OSError as exc:  # the artifact passed its checks, so what is missing is on this machine
            raise TargetError(f"{library} cannot be loaded here: {exc}. Tree libraries use OpenMP: install the "
                              "libgomp1 package (apt-get install libgomp1)") from None
        self._entry_points = {dtype: self._function(name) for dtype, name in _ENTRY_POINTS.items()}
        self._input_name, self._output_name = inputs[0].name, outputs[0].name
        self._num_feature = inputs[0].shape[1]
        self._output_shape = tuple(outputs[0].shape[1:])
        self._output_dtype = np.dtype(outputs[0].dtype)
        self._threads = threads or os.cpu_count() or 1
        built_outputs = self._library.kiln_num_output()
        if (built_outputs,) != self._output_shape:
            raise InputError(f"{library}: the library writes {built_outputs} values per row but the manifest says "
                             f"{outputs[0].describe()}; the artifact is inconsistent, rebuild it")

    def _function(self, name: str):
        function = getattr(self._library, name)
        function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32]
        function.restype = None
        return function

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """The output for `inputs`: rows x num_feature (or one row of num_feature values)."""
        return self._predict_rows(inputs) if isinstance(inputs, np.ndarray) else self.run(inputs)[self._output_name]

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            if set(inputs) != {self._input_name}:
                raise InputError(f"input names do not match the model: expected {self._input_name}, "
                                 f"got {', '.join(sorted(inputs)) or 'none'}")
            inputs = inputs[self._input_name]
        return {self._output_name: self._predict_rows(inputs)}

    def _predict_rows(self, rows) -> np.ndarray:
        rows = rows if isinstance(rows, np.ndarray) else np.asarray(rows)
        entry_point = self._entry_points.get(rows.dtype)
        if entry_point is None:
            raise InputError(f"input {self._input_name!r} has dtype {rows.dtype.name}; the model takes float32 or "
                             "float64 (convert with .astype(np.float32))")
        if rows.ndim not in (1, 2) or rows.shape[-1] != self._num_feature:
            got = "x".join(map(str, rows.shape)) or "scalar"
            raise InputError(f"input {self._input_name!r} has shape {got}; the model takes rows of "
                             f"{self._num_feature} features (batch x {self._num_feature}, or one row)")
        if not rows.flags.c_contiguous:
            rows = np.ascontiguousarray(rows)
        count = rows.shape[0] if rows.ndim == 2 else 1
        out = np.empty((count,) + self._output_shape if rows.ndim == 2 else self._output_shape, self._output_dtype)
        entry_point(rows.ctypes.data, count, out.ctypes.data, self._threads)
        return out
