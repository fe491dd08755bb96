"""Each converted MXNet op matches what real MXNet computes: one small symbol per op and attribute case
(tests/mxnet/export_ops.py), run by ONNX Runtime after conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mxnet


def _check_case(folder: Path) -> str | None:
    from kiln.compiler.frontends import ImportOptions, load_graph
    from kiln.testing.reference import onnxruntime_outputs

    reference = dict(np.load(folder / "reference.npz"))
    feeds = {name: array for name, array in reference.items() if not name.startswith("output")}
    graph = load_graph(folder / "model-symbol.json",
                       ImportOptions({n: a.shape for n, a in feeds.items()}, params=folder / "model-0000.params"))
    for index, actual in enumerate(onnxruntime_outputs(graph.body, feeds)):
        expected = reference[f"output{index}"]
        if actual.shape != expected.shape or not np.allclose(actual, expected, rtol=1e-4, atol=1e-5):
            return f"output {index}: max |diff| {np.abs(actual - expected).max()} (shape {actual.shape})"
    return None


def test_every_op_case_matches_mxnet(op_exports: Path):
    cases = sorted(p for p in op_exports.iterdir() if p.is_dir())
    assert len(cases) > 60
    failures = {case.name: problem for case in cases if (problem := _check_case(case))}
    assert not failures, failures
