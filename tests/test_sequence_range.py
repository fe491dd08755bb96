"""Artifacts for a length range (#24): `--input-shape input_ids:1-4x4-16` compiles a function per batch chunk and
length bucket (kiln.compiler.batching); an input is padded with zeros to the bucket at or above its length and the
outputs cut back, which compiling checks leaves the outputs unchanged. Against ONNX Runtime at lengths between
and on the buckets; lengths outside the range refused; a model that does not ignore padding refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler.batching import length_buckets
from kiln.compiler.frontends.options import parse_shape
from kiln.compiler.graph import DimRange
from kiln.errors import InputError, SettingError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import onnxruntime_outputs

VOCAB, WIDTH, LONGEST = 50, 16, 16
INT64 = 7  # onnx.TensorProto.INT64


def _attention(b: GraphBuilder, x: str, additive: str | None, rng) -> str:
    """One encoder layer: softmax(x Wq (x Wk)^T / 4 + additive) x Wv, residual, layer norm, a GELU MLP, residual,
    layer norm."""
    def dense(value: str, rows: int, columns: int) -> str:
        return b.node("MatMul", [value, b.const((rng.standard_normal((rows, columns)) / 4).astype(np.float32))])

    def norm(value: str) -> str:
        return b.node("LayerNormalization", [value, b.const(np.ones(WIDTH, np.float32)),
                                             b.const(np.zeros(WIDTH, np.float32))], axis=-1)

    keys = b.node("Transpose", [dense(x, WIDTH, WIDTH)], perm=[0, 2, 1])
    scores = b.node("Div", [b.node("MatMul", [dense(x, WIDTH, WIDTH), keys]), b.const(np.float32(4))])
    if additive is not None:
        scores = b.node("Add", [scores, additive])
    attended = norm(b.node("Add", [x, b.node("MatMul", [b.node("Softmax", [scores], axis=-1),
                                                         dense(x, WIDTH, WIDTH)])]))
    hidden = dense(attended, WIDTH, 2 * WIDTH)
    gelu = b.node("Mul", [b.node("Mul", [hidden, b.const(np.float32(0.5))]),
                          b.node("Add", [b.const(np.float32(1)),
                                         b.node("Erf", [b.node("Div", [hidden, b.const(np.float32(np.sqrt(2)))])])])])
    return norm(b.node("Add", [attended, dense(gelu, 2 * WIDTH, WIDTH)]))


def _encoder(path: Path, masked: bool = True) -> Path:
    """A 2-layer BERT-like encoder: token and position embeddings, attention masked as transformers' BERT masks it
    ((1 - mask) * float32's min, added to the scores), the hidden states and a pooled first token out. Unmasked, it
    attends to every position, padding included."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("encoder", opset=17)
    b.input("input_ids", ["batch", "length"], INT64)
    positions = b.node("Slice", [b.const(rng.standard_normal((LONGEST, WIDTH)).astype(np.float32)),
                                 b.const(np.array([0])), b.node("Shape", ["input_ids"], start=1, end=2),
                                 b.const(np.array([0]))])
    x = b.node("Add", [b.node("Gather", [b.const(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32)),
                                         "input_ids"]), positions])
    additive = None
    if masked:
        b.input("attention_mask", ["batch", "length"], INT64)
        free = b.node("Sub", [b.const(np.float32(1)), b.node("Cast", ["attention_mask"], to=1)])
        additive = b.node("Unsqueeze", [b.node("Mul", [free, b.const(np.finfo(np.float32).min)]),
                                        b.const(np.array([1]))])
    for _ in range(2):
        x = _attention(b, x, additive, rng)
    b.node("Identity", [x], "hidden")
    first = b.node("Gather", [x, b.const(np.array(0))], axis=1)
    b.node("Tanh", [b.node("MatMul", [first, b.const(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32))])],
           "pooled")
    b.output("hidden", ["batch", "length", WIDTH])
    b.output("pooled", ["batch", WIDTH])
    return b.save(path, check=True)


def _options(output: Path, names=("input_ids", "attention_mask"), dims: str = "1-4x4-16",
             **settings) -> kiln.CompileOptions:
    return kiln.CompileOptions(kiln.target("x86-64"), output,
                               kiln.ImportOptions({name: parse_shape(dims) for name in names}), **settings)


def _feed(batch: int, length: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Token ids and a mask whose rows end in 0 to 2 padded positions of the caller's own."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    for row, padded in enumerate(rng.integers(0, 3, batch)):
        mask[row, length - min(padded, length - 1):] = 0
    return {"input_ids": rng.integers(0, VOCAB, (batch, length)), "attention_mask": mask}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sequence")
    model = _encoder(folder / "encoder.onnx")
    return model, kiln.compile(model, _options(folder / "encoder.kiln")).path


def test_length_buckets_are_the_ends_and_the_powers_of_two_between():
    assert length_buckets(DimRange(16, 256)) == (16, 32, 64, 128, 256)
    assert length_buckets(DimRange(1, 12)) == (1, 2, 4, 8, 12)
    assert length_buckets(DimRange(5, 5)) == (5,)


def test_the_manifest_records_the_ranges_and_a_function_per_batch_and_length(encoder):
    manifest = kiln.inspect(encoder[1])
    assert [spec.shape for spec in manifest.inputs] == [(DimRange(1, 4), DimRange(4, 16))] * 2
    assert {spec.name: spec.shape for spec in manifest.outputs} == {
        "hidden": (DimRange(1, 4), DimRange(4, 16), WIDTH), "pooled": (DimRange(1, 4), WIDTH)}
    assert manifest.batch_functions == {}
    assert sorted(manifest.length_functions) == [4, 8, 16]
    assert all(sorted(sizes) == [1, 2, 4] for sizes in manifest.length_functions.values())
    assert manifest.length_functions[16][1] == "main"


@pytest.mark.parametrize("batch, length", [(1, 4), (3, 5), (2, 11), (4, 16), (1, 8)])
def test_every_batch_and_length_in_the_range_matches_onnx_runtime(encoder, batch, length):
    model, artifact = encoder
    feed = _feed(batch, length)
    got = kiln.load(artifact).run(feed)
    for name, expected in zip(("hidden", "pooled"), onnxruntime_outputs(model, feed)):
        assert got[name].shape == expected.shape
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, message", [((1, 17), "has length 17; this artifact takes lengths 4-16. Cut"),
                                            ((1, 3), "has length 3; this artifact takes lengths 4-16. Pad"),
                                            ((5, 8), "has batch 5")])
def test_shapes_outside_the_ranges_are_refused(encoder, shape, message):
    feed = {"input_ids": np.zeros(shape, np.int64), "attention_mask": np.ones(shape, np.int64)}
    with pytest.raises(InputError, match=message):
        kiln.load(encoder[1]).run(feed)


def test_inputs_of_different_lengths_are_refused(encoder):
    with pytest.raises(InputError, match="different lengths"):
        kiln.load(encoder[1]).run({"input_ids": np.zeros((1, 6), np.int64),
                                   "attention_mask": np.ones((1, 7), np.int64)})


def test_a_model_that_attends_to_the_padding_is_refused(tmp_path):
    model = _encoder(tmp_path / "unmasked.onnx", masked=False)
    with pytest.raises(SettingError, match="padding changes this model's outputs"):
        kiln.compile(model, _options(tmp_path / "unmasked.kiln", names=("input_ids",), dims="1x4-16"))
    assert not (tmp_path / "unmasked.kiln").exists()


def test_a_fixed_batch_with_a_length_range(tmp_path):
    model = _encoder(tmp_path / "encoder.onnx")
    artifact = kiln.compile(model, _options(tmp_path / "fixed.kiln", dims="2x4-16")).path
    assert kiln.inspect(artifact).length_functions[8] == {2: "main_l8"}
    feed = _feed(2, 7)
    np.testing.assert_allclose(kiln.load(artifact).run(feed)["hidden"], onnxruntime_outputs(model, feed)[0],
                               rtol=1e-4, atol=1e-4)


def test_int8_length_ranges_match_onnx_runtime_on_the_qdq_model(tmp_path):
    """Calibrated at the longest length; an input of length 11 runs padded to 16, as ORT runs the QDQ model."""
    model = _encoder(tmp_path / "encoder.onnx")
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, **_feed(32, LONGEST, seed=2))
    artifact = kiln.compile(model, _options(tmp_path / "int8.kiln", precision=kiln.Precision.INT8,
                                            calib=calibration)).path
    feed = _feed(3, 11)
    got = kiln.load(artifact).run(feed)["hidden"]
    padded = {name: np.pad(array, [(0, 0), (0, LONGEST - 11)]) for name, array in feed.items()}
    expected = np.concatenate([onnxruntime_outputs(artifact / "model.int8.onnx",
                                                   {name: array[row:row + 1] for name, array in padded.items()})[0]
                               for row in range(3)])[:, :11]
    # the hidden states are a layer norm's (no DequantizeLinear's): within the compile-time check's INT8 tolerance
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()


def test_the_cli_shows_the_lengths_compiled(cli_runner, encoder):
    result = cli_runner.invoke(cli, ["inspect", str(encoder[1])])
    assert result.exit_code == 0, result.output
    assert "lengths compiled (a shorter input is padded with zeros to the next): 4, 8, 16; batch sizes: 4, 2, 1" \
        in result.output
