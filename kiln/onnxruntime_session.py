"""ONNX Runtime sessions that share the cores fairly with another engine in the same process."""

from __future__ import annotations

import os
from pathlib import Path


def session_options(threads: int):
    """Spinning off: ONNX Runtime's idle threads otherwise spin and take the cores from the engine it is
    timed or run beside."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session(model: Path, threads: int | None = None):
    """An ONNX Runtime CPU session of `model` (all cores unless `threads`)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model), session_options(threads or os.cpu_count() or 1),
                                providers=["CPUExecutionProvider"])
