"""Transformer-shaped matmuls: activations [1, S, K] (or [B, H, S, K]) times a constant [K, N], as BERT, DistilBERT
and ViT export them, run as kiln's packed dense kernel with the bias, GELU or residual add fused after it, against
ONNX Runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, library_of

RNG = np.random.default_rng(0)


def _weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _kernels(artifact: Path) -> dict[str, int]:
    """How many PrimFuncs each rule scheduled (the manifest's build.schedules)."""
    return json.loads((artifact / "manifest.json").read_text())["build"]["schedules"]


def _scheduled_run(func, arrays: list[np.ndarray], out_shape) -> tuple[str, np.ndarray]:
    """func scheduled by kiln's rules (AVX2), asserted to be the matmul rule's: its TVMScript and its output on
    `arrays`."""
    import tvm

    from kiln.compiler.backends.tvm.schedules.common import AVX2
    from kiln.compiler.backends.tvm.schedules.pipeline import schedule_primfunc

    func = schedule_primfunc(func, AVX2)
    script = func.script()
    assert str(func.attrs["kiln.rule"]) == "reduction" and 'scope="local"' in script  # accumulators in registers
    lib = tvm.compile(func, target=tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}))
    output = np.zeros([int(d) for d in out_shape], np.float32)  # te shapes hold IntImm
    args = [tvm.runtime.tensor(a) for a in [*arrays, output]]
    lib(*args)
    return script, args[-1].numpy()


def _dense(shape: tuple[int, ...], columns: int, epilogue: str):
    """x [..., K] MatMul W [K, columns] + bias, then `epilogue`: "gelu" (erf, as BERT exports it), "residual"
    (+ a second input y) or "none"."""
    g = GraphBuilder(f"dense_{epilogue}")
    x = g.input("x", shape)
    out_shape = (*shape[:-1], columns)
    h = g.node("Add", [g.node("MatMul", [x, g.const(_weights(shape[-1], columns))]),
                       g.const(RNG.standard_normal(columns).astype(np.float32))])
    if epilogue == "gelu":
        erf = g.node("Erf", [g.node("Div", [h, g.const(np.array(np.sqrt(2.0), np.float32))])])
        h = g.node("Mul", [g.node("Mul", [h, g.node("Add", [erf, g.const(np.array(1.0, np.float32))])]),
                           g.const(np.array(0.5, np.float32))])
    elif epilogue == "residual":
        h = g.node("Add", [h, g.input("y", out_shape)])
    g.node("Identity", [h], "out")
    g.output("out", out_shape)
    return g.model(check=True)


def _check(model, feed: dict[str, np.ndarray], tmp_path: Path) -> Path:
    """The artifact, its outputs checked against ONNX Runtime's."""
    import onnx

    path = tmp_path / f"{model.graph.name}.onnx"
    onnx.save(model, str(path))
    return check_correctness(path, feed, tmp_path, rtol=1e-4, atol=1e-4)


def test_3d_matmul_with_erf_gelu_is_one_packed_kernel(tmp_path: Path):
    x = RNG.standard_normal((1, 16, 64)).astype(np.float32)
    artifact = _check(_dense((1, 16, 64), 96, "gelu"), {"x": x}, tmp_path)
    assert _kernels(artifact) == {"reduction": 1}  # matmul, bias, Div, Erf, Add, Mul, Mul: one kernel
    assert b"erff" not in library_of(artifact).read_bytes()  # erf as a polynomial, vectorized; not libm's


def test_3d_matmul_with_residual_add_is_one_packed_kernel(tmp_path: Path):
    x, y = RNG.standard_normal((1, 16, 64)).astype(np.float32), RNG.standard_normal((1, 16, 32)).astype(np.float32)
    assert _kernels(_check(_dense((1, 16, 64), 32, "residual"), {"x": x, "y": y}, tmp_path)) == {"reduction": 1}


def test_4d_matmul_matches_onnxruntime(tmp_path: Path):
    x = RNG.standard_normal((1, 2, 8, 32)).astype(np.float32)
    assert _kernels(_check(_dense((1, 2, 8, 32), 16, "none"), {"x": x}, tmp_path)) == {"reduction": 1}


@pytest.mark.parametrize("shape", [(1, 128, 64), (1, 197, 32), (2, 13, 16)])  # BERT's 128 rows, ViT's 197 (prime)
def test_packed_dense_rule_tiles_rows_with_the_gelu_in_its_write_back(shape: tuple[int, ...]):
    from tvm import te

    from kiln.compiler.backends.tvm.kernels.compute import dense_packed

    columns = 48
    a, b = RNG.standard_normal(shape).astype(np.float32), _weights(shape[-1], columns)
    x, w = te.placeholder(shape, name="x"), te.placeholder((columns // 8, shape[-1], 8), name="w")
    matmul = dense_packed(x, w)
    gelu = te.compute(matmul.shape, lambda *i: matmul(*i) * 0.5 * (te.erf(matmul(*i) * 0.7071067811865476) + 1.0),
                      name="gelu")
    packed = np.ascontiguousarray(b.reshape(shape[-1], columns // 8, 8).transpose(1, 0, 2))
    script, out = _scheduled_run(te.create_prim_func([x, w, gelu]), [a, packed], gelu.shape)
    assert "T.erf" in script and 'sblock("gelu")' not in script  # applied as the accumulators are written back
    h = a.astype(np.float64) @ b
    np.testing.assert_allclose(out, h * 0.5 * (np.vectorize(math.erf)(h / np.sqrt(2)) + 1), rtol=1e-4, atol=1e-4)


def test_matmul_register_tile():
    from kiln.compiler.backends.tvm.schedules.common import AVX2
    from kiln.compiler.backends.tvm.schedules.reduction import matmul_tile

    assert matmul_tile(128, 96, AVX2) == (4, 3)  # BERT-base: 12 accumulators, 7 loads per 12 FMAs
    assert matmul_tile(197, 96, AVX2) == (4, 3)  # ViT's 197 rows (prime): 50 tiles, the last one row
    assert matmul_tile(1, 125, AVX2) == (1, 5)  # ResNet's classifier at batch 1
    for rows, vectors in [(128, 96), (197, 384), (8, 125), (13, 6), (1536, 16), (1, 1)]:
        r, v = matmul_tile(rows, vectors, AVX2)
        assert r <= rows and vectors % v == 0 and r * v <= AVX2.max_accumulators and r * v + v + 1 <= 16


def test_batched_matmul_tiles_stay_within_one_matrix():
    """Attention's Q K^T: [1, H, M, K] x [1, H, K, N], both computed: row tiles of 4 over M = 6 and N = 12 columns,
    the last tiles partial, never straddling two heads (a tile of the 18 fused rows did: its write-back, fitted to
    both, wrote accumulators it never computed)."""
    from tvm import te

    a, b = RNG.standard_normal((1, 3, 6, 16)).astype(np.float32), RNG.standard_normal((1, 3, 16, 12)).astype(np.float32)
    x, w = te.placeholder(a.shape, name="x"), te.placeholder(b.shape, name="w")
    k = te.reduce_axis((0, 16), "k")
    matmul = te.compute((1, 3, 6, 12), lambda n, h, i, j: te.sum(x[n, h, i, k] * w[n, h, k, j], axis=k), name="matmul")
    script, out = _scheduled_run(te.create_prim_func([x, w, matmul]), [a, b], matmul.shape)
    assert "T.vectorized" in script
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


def test_2d_matmul_keeps_its_packed_kernel(tmp_path: Path):
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    assert _kernels(_check(_dense((4, 64), 96, "gelu"), {"x": x}, tmp_path)) == {"reduction": 1}
