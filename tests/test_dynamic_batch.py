"""Artifacts for a batch range (#24): one library with a function per chunk size (kiln.compiler.batching), any
batch in the range run as a sequence of them, matching ONNX Runtime at every batch; batches outside the range
refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler.batching import CHUNK_SIZES, split
from kiln.compiler.frontends.options import parse_shape
from kiln.compiler.graph import DimRange
from kiln.errors import InputError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN, DIGITS_TEST, MXNET_DIGITS
from kiln.testing.reference import onnxruntime_outputs, qdq_output_scale


def _options(output: Path, shape: str | None = "input:1-20x1x8x8", **settings) -> kiln.CompileOptions:
    shapes = dict([(shape.split(":")[0], parse_shape(shape.split(":")[1]))]) if shape else {}
    return kiln.CompileOptions(kiln.target("x86-64"), output, kiln.ImportOptions(shapes), **settings)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return kiln.compile(DIGITS_CNN, _options(tmp_path_factory.mktemp("range") / "digits.kiln")).path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    with np.load(DIGITS_TEST) as archive:
        return archive["input"][:20]


def test_split_takes_the_largest_chunk_first():
    assert split(17, (8, 1)) == [8, 8, 1]
    assert split(3, (8, 1)) == [1, 1, 1]
    assert split(7, (8, 2, 1)) == [2, 2, 2, 1]
    assert split(8, (8, 1)) == [8]
    assert split(17, CHUNK_SIZES) == [16, 1] and split(63, CHUNK_SIZES) == [32, 16, 8, 4, 2, 1]


def test_the_functions_of_a_range_share_their_weights(tmp_path):
    """A 4 MB weight and five batch sizes: the library holds the weight once."""
    b = GraphBuilder("dense", opset=17)
    b.input("x", ["batch", 1024])
    weight = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    b.node("MatMul", ["x", b.const(weight)], "y")
    b.output("y", ["batch", 1024])
    model = b.save(tmp_path / "dense.onnx")
    sizes = {}
    for shape in ("x:1x1024", "x:1-16x1024"):
        built = kiln.compile(model, _options(tmp_path / f"{shape[2:]}.kiln", shape))
        sizes[shape] = (built.path / built.manifest.library.file).stat().st_size
    assert sizes["x:1x1024"] > weight.nbytes and sizes["x:1-16x1024"] < 1.25 * sizes["x:1x1024"], sizes


def test_merged_entries_hold_one_object_per_equal_constant(tmp_path):
    """While compiling too (not only in the library), the entries of a range share their weights: a merged
    module's equal constants are one object (merge_entries once matched no constant: TVM 0.27 renamed the visitor)."""
    from tvm import relax
    from tvm.ir.expr import GenericConst

    from kiln.compiler.backends.tvm.converters import import_onnx
    from kiln.compiler.backends.tvm.rewrite.entries import merge_entries

    b = GraphBuilder("dense", opset=17)
    b.output(b.node("MatMul", [b.input("x", [2, 8]), b.const(np.eye(8, dtype=np.float32))], "y"), [2, 8])
    module = merge_entries([("main", import_onnx(b.model())), ("main_b2", import_onnx(b.model()))])
    found = []
    for function in module.functions.values():
        if isinstance(function, relax.Function):
            relax.analysis.post_order_visit(function, lambda e: found.append(e) if isinstance(e, GenericConst)
                                            and e.value.numpy().shape == (8, 8) else None)
    assert len(found) == 2 and found[0].same_as(found[1])


def test_the_manifest_records_the_range_and_a_function_per_chunk(digits):
    manifest = kiln.inspect(digits)
    assert manifest.inputs[0].shape == (DimRange(1, 20), 1, 8, 8)
    assert manifest.outputs[0].shape == (DimRange(1, 20), 10)
    assert manifest.batch_functions == {1: "main", 2: "main_b2", 4: "main_b4", 8: "main_b8", 16: "main_b16"}
    written = json.loads((digits / "manifest.json").read_text())
    assert written["inputs"][0]["shape"] == ["1-20", 1, 8, 8]


@pytest.mark.parametrize("batch", [1, 3, 8, 17, 20])
def test_every_batch_in_the_range_matches_onnx_runtime(digits, images, batch):
    feed = {"input": images[:batch]}
    got = kiln.load(digits).predict(feed)
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, onnxruntime_outputs(DIGITS_CNN, feed)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 21])
def test_batches_outside_the_range_are_refused(digits, batch):
    with pytest.raises(InputError, match=f"has batch {batch}; this artifact takes batches 1-20"):
        kiln.load(digits).predict(np.zeros((batch, 1, 8, 8), np.float32))


def test_the_cli_runs_a_range_artifact_and_refuses_out_of_range(cli_runner, digits, images, tmp_path):
    np.save(tmp_path / "x.npy", images[:11])
    result = cli_runner.invoke(cli, ["run", str(digits), "-i", str(tmp_path / "x.npy"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["outputs"]["logits"]["shape"] == [11, 10]
    np.save(tmp_path / "x.npy", np.zeros((30, 1, 8, 8), np.float32))
    result = cli_runner.invoke(cli, ["run", str(digits), "-i", str(tmp_path / "x.npy")])
    assert result.exit_code == 3 and "takes batches 1-20" in result.output
    result = cli_runner.invoke(cli, ["bench", str(digits), "--batch", "13", "--seconds", "0.2", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["batch"] == 13
    result = cli_runner.invoke(cli, ["inspect", str(digits)])
    assert "float32[1-20x1x8x8]" in result.output and "batch sizes compiled" in result.output
    assert "16, 8, 4, 2, 1" in result.output


def test_a_free_batch_without_input_shape_takes_the_default_range(tmp_path):
    result = kiln.compile(DIGITS_CNN, _options(tmp_path / "default.kiln", shape=None))
    assert result.manifest.inputs[0].shape[0] == DimRange(1, 64)


def test_int8_range_artifacts_match_onnx_runtime_on_the_qdq_model(tmp_path, images):
    artifact = kiln.compile(DIGITS_CNN, _options(tmp_path / "int8.kiln", precision=kiln.Precision.INT8,
                                                 calib=DIGITS_CALIB)).path
    assert sorted(kiln.inspect(artifact).batch_functions) == [1, 2, 4, 8, 16]
    got = kiln.load(artifact).predict({"input": images[:17]})
    qdq = artifact / "model.int8.onnx"  # the batch-1 function's QDQ model (all share its plan): ORT runs it row by row
    expected = np.concatenate([onnxruntime_outputs(qdq, {"input": images[i:i + 1]})[0] for i in range(17)])
    assert np.abs(got - expected).max() <= qdq_output_scale(artifact) * 1.001


def test_a_transformer_like_graph_at_several_batches(tmp_path):
    rng = np.random.default_rng(0)
    b = GraphBuilder("encoder", opset=17)
    b.input("x", ["batch", 16, 32])
    hidden = b.node("Add", [b.node("MatMul", ["x", b.const(rng.standard_normal((32, 64)).astype(np.float32))]),
                            b.const(rng.standard_normal(64).astype(np.float32))])
    hidden = b.node("Relu", [hidden])
    hidden = b.node("MatMul", [hidden, b.const(rng.standard_normal((64, 32)).astype(np.float32))])
    scores = b.node("Softmax", [b.node("MatMul", [hidden, b.node("Transpose", [hidden], perm=[0, 2, 1])])], axis=-1)
    b.node("LayerNormalization", [b.node("Add", [b.node("MatMul", [scores, hidden]), "x"]),
                                  b.const(np.ones(32, np.float32)), b.const(np.zeros(32, np.float32))], "y", axis=-1)
    b.output("y", ["batch", 16, 32])
    model = b.save(tmp_path / "encoder.onnx", check=True)
    predictor = kiln.load(kiln.compile(model, _options(tmp_path / "encoder.kiln", "x:1-12x16x32")).path)
    for batch in (1, 5, 9, 12):
        feed = {"x": rng.standard_normal((batch, 16, 32)).astype(np.float32)}
        np.testing.assert_allclose(predictor.predict(feed), onnxruntime_outputs(model, feed)[0], rtol=1e-4, atol=1e-4)


def test_outputs_without_the_batch_first_are_refused(tmp_path):
    b = GraphBuilder("total")
    b.input("x", ["batch", 4])
    b.node("ReduceSum", ["x"], "y", keepdims=0)
    b.output("y", [])
    model = b.save(tmp_path / "total.onnx")
    with pytest.raises(InputError, match="do not have the batch .* as their first dim"):
        kiln.compile(model, _options(tmp_path / "total.kiln", "x:1-4x4"))


def test_a_range_needs_an_onnx_model(tmp_path):
    options = _options(tmp_path / "m.kiln", "data:1-8x1x8x8")
    options = kiln.CompileOptions(options.target, options.output,
                                  kiln.ImportOptions(options.imports.input_shapes, MXNET_DIGITS / "digits-0000.params"))
    with pytest.raises(InputError, match="batch range in --input-shape needs an ONNX model|needs an ONNX model"):
        kiln.compile(MXNET_DIGITS / "digits-symbol.json", options)


def test_a_manifest_naming_a_function_the_library_lacks_is_refused(digits, tmp_path):
    import shutil

    copy = tmp_path / "edited.kiln"
    shutil.copytree(digits, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["batch_functions"]["8"] = "main_b9"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="has no function 'main_b9', which its manifest names"):
        kiln.load(copy)
    manifest["batch_functions"] = {"2": "main_b2"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="sizes from 1"):
        kiln.load(copy)


@pytest.mark.parametrize("shape", ["x:2x3x4", "x:1-9x3x4"])
def test_ops_that_import_as_functions_of_their_own_compile_in_every_entry(tmp_path, shape):
    """TVM's ONNX importer emits Pad (and Tile, and others) as a PrimFunc beside `main`: each entry keeps its own."""
    b = GraphBuilder("pad", opset=17)
    b.input("x", ["batch", 3, 4])
    b.node("Pad", ["x", b.const(np.array([0, 1, 1, 0, 1, 1], np.int64))], "y")
    b.output("y", ["batch", 5, 6])
    model = b.save(tmp_path / "pad.onnx")
    predictor = kiln.load(kiln.compile(model, _options(tmp_path / "pad.kiln", shape)).path)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(predictor.predict({"x": x}), np.pad(x, ((0, 0), (1, 1), (1, 1))))
