"""Transformer-shaped matmuls: activations [1, S, K] (or [B, H, S, K]) times a constant [K, N], as BERT, DistilBERT
and ViT export them, run as kiln's packed dense kernel with the bias, GELU or residual add fused after it, against
ONNX Runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kiln.targets.host import cpu_flags
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, library_of

RNG = np.random.default_rng(0)


def _weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def _kernels(artifact: Path) -> dict[str, int]:
    """How many PrimFuncs each rule scheduled (the manifest's build.schedules)."""
    return json.loads((artifact / "manifest.json").read_text())["build"]["schedules"]


# kiln's fp32 vector shapes on x86 (schedules.common), with a CPU of each; AVX-512 runs only on a host that has it
SPECS = ["AVX2", pytest.param("AVX512", marks=pytest.mark.skipif(
    "avx512f" not in cpu_flags(), reason="this CPU has no AVX-512"))]
MCPU = {"AVX2": "haswell", "AVX512": "skylake-avx512"}


def _scheduled_run(func, arrays: list[np.ndarray], out_shape, spec: str = "AVX2") -> tuple[str, np.ndarray, str]:
    """func scheduled by kiln's rules (AVX2, or the spec named), asserted to be the matmul rule's: its TVMScript,
    its output on `arrays` and its assembly."""
    import tvm

    from kiln.compiler.backends.tvm.schedules import common
    from kiln.compiler.backends.tvm.schedules.pipeline import schedule_primfunc

    func = schedule_primfunc(func, getattr(common, spec))
    script = func.script()
    assert str(func.attrs["kiln.rule"]) == "reduction" and 'scope="local"' in script  # accumulators in registers
    lib = tvm.compile(func, target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                                      "mcpu": MCPU[spec]}))
    output = np.zeros([int(d) for d in out_shape], np.float32)  # te shapes hold IntImm
    args = [tvm.runtime.tensor(a) for a in [*arrays, output]]
    lib(*args)
    return script, args[-1].numpy(), lib.mod.inspect_source("asm")


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


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(1, 128, 64), (1, 197, 32), (2, 13, 16)])  # BERT's 128 rows, ViT's 197 (prime)
def test_packed_dense_rule_tiles_rows_with_the_gelu_in_its_write_back(shape: tuple[int, ...], spec: str):
    from tvm import te

    from kiln.compiler.backends.tvm.kernels.compute import dense_packed

    columns, lanes = 48, {"AVX2": 8, "AVX512": 16}[spec]
    a, b = RNG.standard_normal(shape).astype(np.float32), _weights(shape[-1], columns)
    x, w = te.placeholder(shape, name="x"), te.placeholder((columns // lanes, shape[-1], lanes), name="w")
    matmul = dense_packed(x, w)
    gelu = te.compute(matmul.shape, lambda *i: matmul(*i) * 0.5 * (te.erf(matmul(*i) * 0.7071067811865476) + 1.0),
                      name="gelu")
    packed = np.ascontiguousarray(b.reshape(shape[-1], columns // lanes, lanes).transpose(1, 0, 2))
    script, out, _ = _scheduled_run(te.create_prim_func([x, w, gelu]), [a, packed], gelu.shape, spec)
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


def test_matmul_register_tile_on_avx512():
    from kiln.compiler.backends.tvm.schedules.common import AVX512
    from kiln.compiler.backends.tvm.schedules.reduction import matmul_tile

    assert matmul_tile(128, 48, AVX512) == (4, 4)  # BERT-base's 768 columns: 48 zmm vectors
    assert matmul_tile(197, 48, AVX512) == (4, 4)  # ViT's rows: 4 x 4, not the 6 x 4 that 24 accumulators allow
    assert matmul_tile(197, 13, AVX512) == (1, 13)  # ViT's attention scores over 197 keys: one row, every vector
    for rows, vectors in [(128, 192), (197, 48), (8, 63), (13, 6), (1, 1)]:
        r, v = matmul_tile(rows, vectors, AVX512)
        assert vectors % v == 0 and r * v <= AVX512.max_accumulators and r * v + v + 1 <= AVX512.registers


def test_batched_matmul_tiles_stay_within_one_matrix():
    """Attention's Q K^T: [1, H, M, K] x [1, H, K, N], both computed: row tiles of 4 over M = 6 and N = 12 columns,
    the last tiles partial, never straddling two heads (a tile of the 18 fused rows did: its write-back, fitted to
    both, wrote accumulators it never computed)."""
    from tvm import te

    a, b = RNG.standard_normal((1, 3, 6, 16)).astype(np.float32), RNG.standard_normal((1, 3, 16, 12)).astype(np.float32)
    x, w = te.placeholder(a.shape, name="x"), te.placeholder(b.shape, name="w")
    k = te.reduce_axis((0, 16), "k")
    matmul = te.compute((1, 3, 6, 12), lambda n, h, i, j: te.sum(x[n, h, i, k] * w[n, h, k, j], axis=k), name="matmul")
    script, out, _ = _scheduled_run(te.create_prim_func([x, w, matmul]), [a, b], matmul.shape)
    assert "T.vectorized" in script
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", SPECS)
def test_attention_scores_over_a_partial_vector_of_keys_stay_vectorized(spec: str):
    """Q K^T with 317 keys (ViT's 197 alike: no whole number of vectors, and more than one column tile) and 13
    queries (a partial row tile): the last column tile's per-lane bound is partitioned off, so every other tile's
    FMAs stay vector instructions (with column tiles fused into the parallel loop TVM emitted scalar code for all
    of them)."""
    import re

    from tvm import te

    a = RNG.standard_normal((1, 2, 13, 16)).astype(np.float32)
    b = RNG.standard_normal((1, 2, 16, 317)).astype(np.float32)
    x, w = te.placeholder(a.shape, name="x"), te.placeholder(b.shape, name="w")
    k = te.reduce_axis((0, 16), "k")
    matmul = te.compute((1, 2, 13, 317), lambda n, h, i, j: te.sum(x[n, h, i, k] * w[n, h, k, j], axis=k),
                        name="matmul")
    script, out, asm = _scheduled_run(te.create_prim_func([x, w, matmul]), [a, b], matmul.shape, spec)
    assert "pragma_loop_partition_hint" in script
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)
    register = {"AVX2": "ymm", "AVX512": "zmm"}[spec]
    assert re.search(rf"vfmadd\d+ps\s[^\n]*%{register}", asm)  # whole-width vector FMAs


def test_2d_matmul_keeps_its_packed_kernel(tmp_path: Path):
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    assert _kernels(_check(_dense((4, 64), 96, "gelu"), {"x": x}, tmp_path)) == {"reduction": 1}


@pytest.mark.parametrize("spec", SPECS)
# rows that end in a partial vector (ViT's 197 keys; one whole vector and a part), rows of whole vectors, rows
# shorter than one
@pytest.mark.parametrize("shape", [(1, 2, 13, 37), (3, 197), (2, 3, 20), (2, 5, 32), (3, 7)])
def test_softmax_rule_alone_matches_numpy(shape: tuple[int, ...], spec: str):
    import tvm
    from tvm import te, topi

    from kiln.compiler.backends.tvm.schedules import common
    from kiln.compiler.backends.tvm.schedules.nan import propagate_nan
    from kiln.compiler.backends.tvm.schedules.pipeline import schedule_primfunc

    a = (RNG.standard_normal(shape) * 4).astype(np.float32)
    a[..., 0, :3] = -np.inf  # masked keys, first and last
    a[..., -1, -2:] = -np.inf
    x = te.placeholder(shape, name="x")
    func = schedule_primfunc(te.create_prim_func([x, topi.nn.fast_softmax(x, -1)]), getattr(common, spec))
    assert str(func.attrs["kiln.rule"]) == "softmax"
    lib = tvm.compile(propagate_nan(func), target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                                                     "mcpu": MCPU[spec]}))
    args = [tvm.runtime.tensor(a), tvm.runtime.tensor(np.zeros(shape, np.float32))]
    lib(*args)
    expected = np.exp(a - a.max(-1, keepdims=True))
    np.testing.assert_allclose(args[1].numpy(), expected / expected.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_over_the_last_axis_is_one_vectorized_kernel(axis: int, tmp_path: Path):
    """Attention's softmax (last axis) runs TOPI's polynomial exp under kiln's softmax rule; over another axis it
    stays relax's softmax under the generic reduction rule."""
    g = GraphBuilder(f"softmax_{axis}")
    g.node("Softmax", [g.input("x", (1, 4, 9, 21))], "out", axis=axis)
    g.output("out", (1, 4, 9, 21))
    x = (RNG.standard_normal((1, 4, 9, 21)) * 4).astype(np.float32)
    artifact = _check(g.model(check=True), {"x": x}, tmp_path)
    assert _kernels(artifact) == ({"softmax": 1} if axis == -1 else {"reduction": 1})
    assert (b"expf" in library_of(artifact).read_bytes()) == (axis != -1)


def test_softmax_with_a_nan_guard_after_it_is_one_kernel(tmp_path: Path):
    """GPT-2's export: a mask added before the softmax, where(isnan(p), 0, p) after it, in the softmax's kernel; a
    fully masked row is NaN in the softmax and 0 out of the guard."""
    g = GraphBuilder("guarded_softmax")
    mask = np.zeros((1, 1, 9, 21), np.float32)
    mask[..., 0, :] = -np.inf
    mask[..., 1:, 15:] = -np.inf
    p = g.node("Softmax", [g.node("Add", [g.input("x", (1, 4, 9, 21)), g.const(mask)])], axis=-1)
    g.node("Where", [g.node("IsNaN", [p]), g.const(np.array(0.0, np.float32)), p], "out")
    g.output("out", (1, 4, 9, 21))
    x = (RNG.standard_normal((1, 4, 9, 21)) * 4).astype(np.float32)
    kernels = _kernels(_check(g.model(check=True), {"x": x}, tmp_path))
    assert kernels == {"elementwise": 1, "softmax": 1}  # the mask's add (FuseOps fuses it into no reduction)


def test_tanh_gelu_is_vectorized_without_libm(tmp_path: Path):
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): tanh as a polynomial, not libm's expf per
    element (TVM computes tanh from exp)."""
    g = GraphBuilder("tanh_gelu")
    x = g.input("x", (1, 16, 48))
    cube = g.node("Pow", [x, g.const(np.array(3.0, np.float32))])
    inner = g.node("Mul", [g.node("Add", [x, g.node("Mul", [cube, g.const(np.array(0.044715, np.float32))])]),
                           g.const(np.array(np.sqrt(2 / np.pi), np.float32))])
    gelu = g.node("Mul", [g.node("Mul", [x, g.const(np.array(0.5, np.float32))]),
                          g.node("Add", [g.node("Tanh", [inner]), g.const(np.array(1.0, np.float32))])])
    g.node("Identity", [gelu], "out")
    g.output("out", (1, 16, 48))
    feed = {"x": (RNG.standard_normal((1, 16, 48)) * 3).astype(np.float32)}
    feed["x"][0, 0, :4] = [1e-9, -1e-5, 20.0, -20.0]  # tiny (arithmetic.py's series) and saturated
    library = library_of(_check(g.model(check=True), feed, tmp_path)).read_bytes()
    assert b"tanhf" not in library and b"expf" not in library and b"powf" not in library  # the cube multiplied
