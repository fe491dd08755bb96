"""An artifact's files: content-addressed libraries (a rebuild in place reloads new code in the same
process), and manifest entries that must name files of the artifact itself, of the target's machine."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler.artifact import MANIFEST, read_manifest
from kiln.errors import InputError
from kiln.files import sha256_file
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import TREE_MODELS
from kiln.testing.reference import compile_to, library_of


def _scale_model(path: Path, factor: float) -> Path:
    b = GraphBuilder(f"times_{factor}", opset=13)
    b.input("x", [2, 4])
    b.node("Mul", ["x", b.const(np.full((4,), factor, np.float32))], "y")
    b.output("y", [2, 4])
    return b.save(path, check=True)


def test_a_neural_artifact_rebuilt_in_place_reloads_the_new_model(tmp_path: Path):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    output = tmp_path / "model.kiln"
    compile_to(_scale_model(tmp_path / "two.onnx", 2.0), output)
    first = kiln.load(output)
    np.testing.assert_array_equal(first.run({"x": x})["y"], 2 * x)
    old_library = library_of(output).name

    compile_to(_scale_model(tmp_path / "three.onnx", 3.0), output)
    assert library_of(output).name != old_library
    np.testing.assert_array_equal(kiln.load(output).run({"x": x})["y"], 3 * x)
    np.testing.assert_array_equal(first.run({"x": x})["y"], 2 * x)  # the loaded model keeps its own code


def test_an_artifact_loaded_again_reads_its_library_once(tmp_path: Path):
    """TVM frees nothing of a loaded library for the life of the process: each kiln.load of a BERT artifact (and each
    function of a length range checked at compile time) took another copy of its weights, until 24 GB ran out.
    Loads of one library file share its module; each predictor still has its own VM."""
    from kiln import tvm_runtime

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    output = compile_to(_scale_model(tmp_path / "two.onnx", 2.0), tmp_path / "model.kiln")
    before = tvm_runtime._loaded.cache_info()
    first, second = kiln.load(output), kiln.load(output)
    after = tvm_runtime._loaded.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    np.testing.assert_array_equal(first.run({"x": x})["y"], 2 * x)
    np.testing.assert_array_equal(second.run({"x": 2 * x})["y"], 4 * x)
    np.testing.assert_array_equal(first.run({"x": x})["y"], 2 * x)


def test_a_tree_artifact_rebuilt_in_place_reloads_the_new_model(tmp_path: Path):
    rows = np.load(TREE_MODELS / "heldout.npz")["regression"]
    expected = {}
    for name in ("lgb_regression_nan.txt", "xgb_regression_nan.json"):
        expected[name] = kiln.load(compile_to(TREE_MODELS / name, tmp_path / f"{name}.kiln")).predict(rows)
    assert not np.allclose(*expected.values())
    for name in expected:
        output = compile_to(TREE_MODELS / name, tmp_path / "same.kiln")
        np.testing.assert_array_equal(kiln.load(output).predict(rows), expected[name])


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return compile_to(_scale_model(tmp_path / "two.onnx", 2.0), tmp_path / "model.kiln")


def _point_library_at(artifact: Path, name: str, file: Path) -> None:
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["library"] = {"file": name, "sha256": sha256_file(file)}
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def test_a_library_outside_the_artifact_is_refused(cli_runner, artifact: Path, tmp_path: Path):
    other = compile_to(_scale_model(tmp_path / "three.onnx", 3.0), tmp_path / "other.kiln")
    _point_library_at(artifact, f"../other.kiln/{library_of(other).name}", library_of(other))
    with pytest.raises(InputError, match="not a file of the artifact folder"):
        kiln.load(artifact)
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    result = cli_runner.invoke(cli, ["run", str(artifact), "--input", str(tmp_path / "x.npy")])
    assert result.exit_code == 3 and "not a file of the artifact folder" in result.output


def test_a_library_that_is_a_link_is_refused(artifact: Path, tmp_path: Path):
    outside = tmp_path / "outside.so"
    shutil.copyfile(library_of(artifact), outside)
    (artifact / "linked.so").symlink_to(outside)
    _point_library_at(artifact, "linked.so", outside)
    with pytest.raises(InputError, match="not a file of the artifact folder"):
        kiln.load(artifact)


@pytest.mark.parametrize("content, message", [
    (b"not a library at all", "not a 64-bit ELF shared library"),
    (b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x03\x00" + (183).to_bytes(2, "little") + bytes(64),
     "ELF library for machine 183, but the manifest's target x86-64 needs machine 62"),
])
def test_a_library_that_is_not_for_the_target_is_refused_before_loading(artifact: Path, content: bytes, message: str):
    garbage = artifact / "garbage.so"
    garbage.write_bytes(content)
    _point_library_at(artifact, garbage.name, garbage)
    with pytest.raises(InputError, match=message):
        kiln.load(artifact)


def test_a_manifest_without_a_library_is_refused(cli_runner, artifact: Path):
    manifest = json.loads((artifact / MANIFEST).read_text())
    del manifest["library"]
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="incomplete or malformed"):
        read_manifest(artifact)
    result = cli_runner.invoke(cli, ["inspect", str(artifact)])
    assert result.exit_code == 3 and "rebuild the artifact" in result.output


def test_stages_of_ended_processes_are_removed_zombies_included(tmp_path: Path):
    """A worker killed with its parent can stay a zombie (init reaps it late); its staging folder is abandoned."""
    import os

    from kiln.compiler.artifact import remove_abandoned_stages

    output = tmp_path / "m.kiln"
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        stages = [tmp_path / f".m.kiln.{pid}.x.staging" for pid in (zombie, os.getpid())]
        for stage in stages:
            stage.mkdir()
        remove_abandoned_stages(output)
        assert [stage.exists() for stage in stages] == [False, True]
    finally:
        os.waitpid(zombie, 0)
