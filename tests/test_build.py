"""`kiln build`: incremental, reproducible, safe under concurrency and kills; the example Makefile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler import artifact
from kiln.errors import OUT_OF_DATE_EXIT_CODE
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN, EXAMPLES, TREE_MODELS

CONFIG = """
[defaults]
output_dir = "out"

[artifact.a]
model = "a.onnx"
input_shapes = {{ input = "{a_batch}x1x8x8" }}
targets = ["x86-64", "x86-vnni"]

[artifact.b]
model = "b.onnx"
input_shapes = {{ input = "{b_batch}x1x8x8" }}
"""


def _config(a_batch: int = 1, b_batch: int = 1) -> str:
    return CONFIG.format(a_batch=a_batch, b_batch=b_batch)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(DIGITS_CNN, tmp_path / name)
    (tmp_path / "kiln.toml").write_text(_config())
    return tmp_path


def _build(cli_runner, project: Path, *args: str) -> tuple[int, dict]:
    result = cli_runner.invoke(cli, ["build", "--config", str(project / "kiln.toml"), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def _names(paths: list) -> list[str]:
    return sorted(Path(p if isinstance(p, str) else p["artifact"]).name for p in paths)


ALL = ["a-x86-64.kiln", "a-x86-vnni.kiln", "b.kiln"]


def test_second_build_builds_nothing(cli_runner, project: Path):
    code, first = _build(cli_runner, project)
    assert code == 0 and _names(first["built"]) == ALL
    code, second = _build(cli_runner, project)
    assert code == 0 and second["built"] == [] and _names(second["skipped"]) == ALL


def test_changed_model_rebuilds_only_its_artifacts(cli_runner, project: Path):
    _build(cli_runner, project)
    model = onnx.load(str(project / "b.onnx"))
    model.doc_string = "retrained"
    onnx.save_model(model, str(project / "b.onnx"))
    code, report = _build(cli_runner, project)
    assert code == 0 and _names(report["built"]) == ["b.kiln"]


def test_touching_without_changing_content_rebuilds_nothing(cli_runner, project: Path):
    _build(cli_runner, project)
    os.utime(project / "a.onnx")
    assert _build(cli_runner, project)[1]["built"] == []


def test_changed_setting_rebuilds(cli_runner, project: Path):
    _build(cli_runner, project)
    (project / "kiln.toml").write_text(_config(a_batch=4))
    code, report = _build(cli_runner, project)
    assert code == 0 and _names(report["built"]) == ["a-x86-64.kiln", "a-x86-vnni.kiln"]
    assert kiln.load(project / "out" / "a-x86-64.kiln").inputs[0].shape == (4, 1, 8, 8)


def test_check_reports_staleness(cli_runner, project: Path):
    code, report = _build(cli_runner, project, "--check")
    assert code == OUT_OF_DATE_EXIT_CODE and _names(report["stale"]) == ALL
    assert not (project / "out" / "b.kiln").exists()
    _build(cli_runner, project)
    code, report = _build(cli_runner, project, "--check")
    assert code == 0 and report["stale"] == [] and _names(report["skipped"]) == ALL
    (project / "kiln.toml").write_text(_config(a_batch=2))
    code, report = _build(cli_runner, project, "--check")
    assert code == OUT_OF_DATE_EXIT_CODE
    assert [(Path(s["artifact"]).name, s["reason"]) for s in report["stale"]] == [
        ("a-x86-64.kiln", "inputs, settings or tools changed"), ("a-x86-vnni.kiln", "inputs, settings or tools changed")]


def test_rebuild_after_delete_is_byte_identical(cli_runner, project: Path):
    _build(cli_runner, project, "b")
    artifact = project / "out" / "b.kiln"
    before = {p.name: p.read_bytes() for p in artifact.iterdir()}
    shutil.rmtree(artifact)
    code, report = _build(cli_runner, project, "b")
    assert code == 0 and _names(report["built"]) == ["b.kiln"]
    assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before


def test_failures_are_reported_per_artifact(cli_runner, project: Path):
    (project / "b.onnx").write_text("not a model")
    code, report = _build(cli_runner, project)
    assert code == 3
    assert _names(report["built"]) == ["a-x86-64.kiln", "a-x86-vnni.kiln"]
    assert _names(report["failed"]) == ["b.kiln"] and "unrecognised model format" in report["failed"][0]["error"]


def test_unknown_name_and_bad_config(cli_runner, project: Path):
    result = cli_runner.invoke(cli, ["build", "--config", str(project / "kiln.toml"), "nope"])
    assert result.exit_code == 2 and "declares a, b" in result.output
    (project / "kiln.toml").write_text('[artifact.a]\nmodel = "a.onnx"\nbatch = 3\n')
    result = cli_runner.invoke(cli, ["build", "--config", str(project / "kiln.toml")])
    assert result.exit_code == 3 and "unknown key(s) batch" in result.stderr


def _kiln(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kiln", "build", "--config", str(project / "kiln.toml"),
                             "--quiet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_concurrent_builds_both_succeed(project: Path):
    first, second = _kiln(project, "--jobs", "2"), _kiln(project)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.wait(timeout=300) == 0, second.stderr.read()
    for name in ("a-x86-64.kiln", "b.kiln"):
        predictor = kiln.load(project / "out" / name)
        assert predictor.predict(np.zeros(predictor.inputs[0].shape, np.float32)).shape == (1, 10)
    vnni = project / "out" / "a-x86-vnni.kiln"
    artifact.verified_file(vnni, artifact.read_manifest(vnni).library)
    assert sorted(p.name for p in (project / "out").iterdir() if not p.name.startswith(".")) == ALL
    assert not list((project / "out").glob("*.staging"))


@pytest.mark.slow
def test_killed_build_leaves_the_previous_artifact(project: Path):
    assert _kiln(project, "b").wait(timeout=300) == 0
    artifact = project / "out" / "b.kiln"
    before = (artifact / "manifest.json").read_bytes()
    (project / "kiln.toml").write_text(_config(b_batch=2))
    process = _kiln(project, "b")
    deadline = time.monotonic() + 120
    while not list((project / "out").glob(".b.kiln.*.staging")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert (artifact / "manifest.json").read_bytes() == before
    kiln.load(artifact)
    assert _kiln(project, "b").wait(timeout=300) == 0
    assert kiln.load(artifact).inputs[0].shape == (2, 1, 8, 8)
    assert not list((project / "out").glob(".b.kiln.*.staging"))


@pytest.mark.slow
def test_example_makefile_is_up_to_date_after_a_build(tmp_path: Path):
    example = tmp_path / "examples"
    example.mkdir()
    for name in ("Makefile", "kiln.toml"):
        shutil.copy(EXAMPLES / name, example / name)
    shutil.copytree(EXAMPLES / "digits_cnn", example / "digits_cnn")
    kiln_command = f"{sys.executable} -m kiln"
    make = ["make", "-C", str(example), f"KILN={kiln_command}"]
    assert subprocess.run([*make, "-q"]).returncode == 1
    subprocess.run(make, check=True, capture_output=True)
    assert subprocess.run([*make, "-q"]).returncode == 0
    os.utime(example / "digits_cnn" / "digits_cnn.onnx")
    assert subprocess.run([*make, "-q"]).returncode == 1
    subprocess.run(make, check=True, capture_output=True)
    assert subprocess.run([*make, "-q"]).returncode == 0


def test_int8_artifact_from_the_config_rebuilds_byte_identical(cli_runner, tmp_path: Path):
    shutil.copy(DIGITS_CNN, tmp_path / "m.onnx")
    shutil.copy(DIGITS_CALIB, tmp_path / "calib.npz")
    (tmp_path / "kiln.toml").write_text(
        '[artifact.q]\nmodel = "m.onnx"\ninput_shapes = { input = "1x1x8x8" }\nprecision = "int8"\n'
        'calib = "calib.npz"\ncalib_method = "percentile"\npercentile = 99.9\nexclude = ["Gemm"]\n'
        f'cache_dir = "{tmp_path / "cache"}"\n')
    code, report = _build(cli_runner, tmp_path)
    assert code == 0, report
    artifact_dir = tmp_path / "build" / "q.kiln"
    manifest = artifact.read_manifest(artifact_dir).to_json()
    assert manifest["precision"] == "int8"
    assert manifest["quantization"]["method"] == "percentile" and manifest["quantization"]["exclude"] == ["Gemm"]
    before = {p.name: p.read_bytes() for p in artifact_dir.iterdir()}
    shutil.rmtree(artifact_dir)
    shutil.rmtree(tmp_path / "cache")
    assert _build(cli_runner, tmp_path)[0] == 0
    assert {p.name: p.read_bytes() for p in artifact_dir.iterdir()} == before


def test_schedule_setting_reaches_the_build(cli_runner, project: Path):
    (project / "kiln.toml").write_text(_config() + 'schedule = "none"\n')
    code, report = _build(cli_runner, project, "b")
    assert code == 0 and _names(report["built"]) == ["b.kiln"]
    assert artifact.read_manifest(project / "out" / "b.kiln").to_json()["build"].get("schedules", {}) == {}
    (project / "kiln.toml").write_text(_config())
    code, report = _build(cli_runner, project, "b")
    assert _names(report["built"]) == ["b.kiln"]
    assert artifact.read_manifest(project / "out" / "b.kiln").to_json()["build"]["schedules"]


def test_tree_artifact_rebuilds_byte_identical(cli_runner, tmp_path: Path):
    shutil.copy(TREE_MODELS / "lgb_binary_nan.txt", tmp_path / "model.txt")
    (tmp_path / "kiln.toml").write_text('[artifact.t]\nmodel = "model.txt"\ntargets = ["x86-64", "aarch64"]\n')
    assert _build(cli_runner, tmp_path)[0] == 0
    first = {p: p.read_bytes() for p in (tmp_path / "build").rglob("*") if p.is_file() and "lock" not in p.name}
    shutil.rmtree(tmp_path / "build")
    code, report = _build(cli_runner, tmp_path)
    assert code == 0 and _names(report["built"]) == ["t-aarch64.kiln", "t-x86-64.kiln"]
    assert {p: p.read_bytes() for p in (tmp_path / "build").rglob("*") if p.is_file() and "lock" not in p.name} == first
