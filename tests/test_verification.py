"""The check against ONNX Runtime: at compile time before anything is written, and later with `kiln verify`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler.artifact import MANIFEST
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.manifest import Precision
from kiln.errors import TargetError
from kiln.files import sha256_file
from kiln.pipeline import CompileOptions
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN, DIGITS_TEST
from kiln.arrays import random_feed
from kiln.verification import VerificationError

DIGITS_SHAPE = ["--input-shape", "input:1x1x8x8"]


def _options(tmp_path: Path, name: str, **fields) -> CompileOptions:
    return CompileOptions(kiln.target("x86-64"), tmp_path / name, ImportOptions({"input": (1, 1, 8, 8)}), **fields)


def test_fp32_compile_records_its_agreement_with_onnxruntime(tmp_path: Path):
    checked = kiln.compile(DIGITS_CNN, _options(tmp_path, "d.kiln")).manifest.verification
    assert checked.passed and checked.difference <= 1e-4 and checked.tolerance == 1e-4
    assert checked.reference == "ONNX Runtime on model.onnx" and checked.inputs == "random inputs (seed 0)"


def test_int8_compile_is_checked_in_output_steps_on_calibration_data(tmp_path: Path):
    options = _options(tmp_path, "d8.kiln", precision=Precision.INT8, calib=DIGITS_CALIB,
                       quantize=kiln.QuantizeOptions(cache_dir=str(tmp_path / "cache")))
    checked = kiln.compile(DIGITS_CNN, options).manifest.verification
    assert checked.reference == "ONNX Runtime on model.int8.onnx" and checked.unit == "output quantization steps"
    assert checked.difference <= 1.0 and checked.inputs == f"a batch of {DIGITS_CALIB}"


def test_int8_is_held_to_onnxruntimes_own_spread_where_that_is_wider(tmp_path: Path, monkeypatch):
    """Deep INT8 models (BERT, se_resnext50) differ from ONNX Runtime's default run of their QDQ model by several
    output steps, as much as ONNX Runtime's run of the same model without its integer fusions does: within that
    distance the artifact passes, and the manifest says which tolerance held; further off it still fails."""
    import kiln.verification as verification
    from kiln.testing.reference import onnxruntime_outputs, qdq_output_scale

    options = _options(tmp_path, "d8.kiln", precision=Precision.INT8, calib=DIGITS_CALIB,
                       quantize=kiln.QuantizeOptions(cache_dir=str(tmp_path / "cache")))
    artifact = kiln.compile(DIGITS_CNN, options).path
    qdq, feed = artifact / "model.int8.onnx", {"input": np.load(DIGITS_TEST)["input"][:1]}
    spread = verification._spread(qdq, feed, onnxruntime_outputs(qdq, feed), verification._output_steps(qdq),
                                  Precision.INT8)
    assert len(spread) == 1 and 0 <= spread[0] < 8  # in output steps: this small CNN's two runs nearly agree
    predictor, step = kiln.load(artifact), qdq_output_scale(artifact)

    def off_by(steps: float):
        return lambda f: {name: out + steps * step for name, out in predictor.run(f).items()}

    monkeypatch.setattr(verification, "_spread", lambda *args: [4.0])
    within = verification.verify(off_by(3), qdq, Precision.INT8, feed, "a test image")
    assert within.passed and within.tolerance == 4.0 and "ONNX Runtime's own runs" in within.unit
    assert not verification.verify(off_by(6), qdq, Precision.INT8, feed, "a test image").passed


def test_no_verify_skips_the_check(cli_runner, tmp_path: Path):
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), *DIGITS_SHAPE, "-o", str(tmp_path / "d.kiln"),
                                     "--no-verify", "--json"])
    assert result.exit_code == 0, result.output
    assert "verification" not in json.loads(result.stdout)
    assert "verification" not in json.loads((tmp_path / "d.kiln" / MANIFEST).read_text())


def test_a_build_that_disagrees_is_refused_and_nothing_is_written(cli_runner, tmp_path: Path, monkeypatch):
    """A wrong kernel, simulated by building the library from a model whose weights are 1% off."""
    from onnx import numpy_helper

    from kiln.compiler.backends.tvm import build

    real = build.build_library

    def off_by_one_percent(entries, *args, **kwargs):
        (name, graph), = entries
        model = graph.body.__class__()
        model.CopyFrom(graph.body)
        first = model.graph.initializer[0]
        first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 1.01, first.name))
        return real([(name, dataclasses.replace(graph, body=model))], *args, **kwargs)

    monkeypatch.setattr(build, "build_library", off_by_one_percent)
    output = tmp_path / "d.kiln"
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), *DIGITS_SHAPE, "-o", str(output)])
    assert result.exit_code == 3 and "disagrees with its reference" in result.output
    assert not output.exists() and list(tmp_path.iterdir()) == []
    assert cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), *DIGITS_SHAPE, "-o", str(output),
                                   "--no-verify"]).exit_code == 0


def test_kiln_verify_reruns_the_check(cli_runner, tmp_path: Path):
    artifact = kiln.compile(DIGITS_CNN, _options(tmp_path, "d.kiln")).path
    result = cli_runner.invoke(cli, ["verify", str(artifact), "--input", str(DIGITS_TEST), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["passed"] and shown["inputs"] == f"the first 1 rows of {DIGITS_TEST}"


def test_kiln_verify_refuses_an_artifact_whose_reference_changed(cli_runner, tmp_path: Path):
    """The artifact's library no longer computes its model (here: the model file swapped, manifest updated)."""
    artifact = kiln.compile(DIGITS_CNN, _options(tmp_path, "d.kiln")).path
    b = GraphBuilder("other", opset=13)
    b.input("input", [1, 1, 8, 8])
    flat = b.node("Flatten", ["input"], axis=1)
    b.node("MatMul", [flat, b.const(np.ones((64, 10), np.float32))], "logits")
    b.output("logits", [1, 10])
    b.save(artifact / "model.onnx", check=True)
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"]["onnx"]["sha256"] = sha256_file(artifact / "model.onnx")
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(VerificationError, match="disagrees with its reference"):
        kiln.verify(artifact)
    assert cli_runner.invoke(cli, ["verify", str(artifact)]).exit_code == 3


def test_a_cross_build_is_not_checked_here(tmp_path: Path):
    from kiln.targets.toolchain import check_compiler

    aarch64 = kiln.target("aarch64")
    try:
        check_compiler(aarch64)
    except TargetError:
        pytest.skip("no aarch64 cross compiler (scripts/system-deps.sh installs it)")
    options = dataclasses.replace(_options(tmp_path, "arm.kiln"), target=aarch64)
    assert kiln.compile(DIGITS_CNN, options).manifest.verification is None


def test_integer_inputs_stay_within_the_tables_they_index(tmp_path: Path):
    b = GraphBuilder("embedding", opset=13)
    b.input("ids", [2, 16], dtype=7)  # int64 token ids
    b.input("mask", [2, 16], dtype=7)
    table = b.const(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    rows = b.node("Gather", [table, "ids"])
    b.node("Mul", [rows, b.node("Unsqueeze", [b.node("Cast", ["mask"], to=1), b.const(np.array([2]))])], "y")
    b.output("y", [2, 16, 8])
    model = b.save(tmp_path / "embedding.onnx", check=True)

    manifest = kiln.compile(model, CompileOptions(kiln.target("x86-64"), tmp_path / "embedding.kiln")).manifest
    assert manifest.verification.passed
    feed = random_feed(manifest.inputs)
    assert feed["ids"].dtype == np.int64 and feed["ids"].max() < 50 and feed["ids"].max() > 1
    assert set(np.unique(feed["mask"])) <= {0, 1}


def test_infinities_are_compared_as_values(tmp_path: Path):
    """1/x at x = 0 is inf in both engines; an inf that the reference lacks (or of the other sign) is a failure,
    and the finite values beside the infinities are still compared."""
    from kiln.compiler.manifest import Precision
    from kiln.testing.onnx_graphs import GraphBuilder
    from kiln.verification import verify

    b = GraphBuilder("reciprocal")
    b.input("x", [4])
    b.node("Reciprocal", ["x"], "y")
    b.output("y", [4])
    model = b.save(tmp_path / "reciprocal.onnx")
    feed = {"x": np.array([0.0, -0.0, 2.0, 4.0], np.float32)}
    exact = np.array([np.inf, -np.inf, 0.5, 0.25], np.float32)
    for returned, passed in ((exact, True), (exact * [1, -1, 1, 1], False), (exact + [0, 0, 0, 1], False)):
        checked = verify(lambda _: {"y": returned.astype(np.float32)}, model, Precision.FP32, feed, "given")
        assert checked.passed == passed, (returned, checked.describe())


def test_detections_reordered_by_rounding_pass_as_sets_and_a_moved_box_fails(tmp_path: Path):
    """With NonMaxSuppression in the model, rows its float rounding reorders (an SSD scoring dozens of boxes within
    1e-7 of 1.0) are compared as sets of rows; a box that moved still fails."""
    import onnx

    from kiln.verification import verify

    b = GraphBuilder("detector", opset=11)
    b.output(b.node("Identity", [b.input("detections", [1, 4, 6])], "rows"), [1, 4, 6])
    b.nodes.append(onnx.helper.make_node("NonMaxSuppression", [b.input("boxes", [1, 4, 4]),
                                                               b.input("scores", [1, 1, 4])], ["selected"]))
    b.output("selected", [0, 3], onnx.TensorProto.INT64)
    model = b.save(tmp_path / "detector.onnx")
    rng = np.random.default_rng(4)
    feed = {"detections": rng.uniform(0, 100, (1, 4, 6)).astype(np.float32),
            "boxes": rng.uniform(0, 10, (1, 4, 4)).astype(np.float32), "scores": np.zeros((1, 1, 4), np.float32)}
    selected = np.zeros((0, 3), np.int64)
    swapped = verify(lambda f: {"rows": f["detections"][:, [1, 0, 3, 2]], "selected": selected}, model,
                     Precision.FP32, feed, "random inputs")
    assert swapped.passed and "compared as sets" in swapped.describe()
    moved = feed["detections"][:, [1, 0, 3, 2]].copy()
    moved[0, 2, 3] += 1.0
    assert not verify(lambda f: {"rows": moved, "selected": selected}, model, Precision.FP32, feed,
                      "random inputs").passed
