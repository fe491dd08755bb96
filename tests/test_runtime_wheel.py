"""kiln-runtime (kiln.runtime_wheel): the wheel's contents, and artifacts compiled by the full install run in a
fresh venv that has only the runtime wheel and its dependencies (no apache-tvm, onnx, onnxruntime or treelite),
with the full install's outputs and refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.runtime_wheel import LIBRARIES, MODULES, build
from kiln.testing import aarch64
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN, DIGITS_TEST, EXAMPLES, TREE_MODELS

pytestmark = pytest.mark.slow

# Run in the bare venv: each artifact on its inputs, outputs saved beside them; what is importable there.
_RUN_ARTIFACTS = """
import importlib.util, json, sys
import numpy as np
import kiln

for artifact, inputs, outputs in json.loads(sys.argv[1]):
    with np.load(inputs) as feed:
        np.savez(outputs, **kiln.load(artifact).run(dict(feed)))
print(json.dumps({name: importlib.util.find_spec(name) is not None
                  for name in ("tvm", "onnx", "onnxruntime", "treelite", "tl2cgen")}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def bare_python(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the runtime wheel installed (pip takes numpy, apache-tvm-ffi and click from the index or
    its cache)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                   check=True)
    return python


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """Artifacts compiled by this (full) install, each with inputs: digits CNN FP32 and INT8, an XGBoost model."""
    folder = tmp_path_factory.mktemp("artifacts")
    with np.load(DIGITS_TEST) as archive:
        images = archive["input"][:1]
    with np.load(TREE_MODELS / "heldout.npz") as archive:
        rows = archive["multiclass_nan"][:64]
    built = {}
    for name, model, extra in [("fp32", DIGITS_CNN, {}),
                               ("int8", DIGITS_CNN, {"precision": kiln.Precision.INT8, "calib": DIGITS_CALIB}),
                               ("tree", TREE_MODELS / "xgb_multiclass_nan.ubj", {})]:
        shapes = {} if name == "tree" else {"input": (1, 1, 8, 8)}
        options = kiln.CompileOptions(kiln.target("x86-64"), folder / f"{name}.kiln", kiln.ImportOptions(shapes),
                                      **extra)
        result = kiln.compile(model, options)
        feed = {"input": rows} if name == "tree" else {result.manifest.inputs[0].name: images}
        built[name] = (result.path, feed)
    return built


def test_the_wheel_holds_the_runtime_modules_and_tvm_runtime_libraries_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    libraries = {Path(name).name for name in names if name.endswith(".so")}
    assert libraries == set(LIBRARIES)
    assert not any("compiler.so" in name or name.startswith("tvm/") for name in names)
    modules = {name.removeprefix("kiln/") for name in names if name.endswith(".py")}
    assert modules == set(MODULES)
    assert "kiln/pipeline.py" not in names


def test_the_wheel_is_byte_identical_when_rebuilt(wheel, tmp_path):
    assert build(tmp_path).read_bytes() == wheel.read_bytes()


def test_artifacts_run_without_the_compiler_with_the_full_installs_outputs(bare_python, artifacts, tmp_path):
    jobs, expected = [], {}
    for name, (artifact, feed) in artifacts.items():
        np.savez(tmp_path / f"{name}_in.npz", **feed)
        jobs.append([str(artifact), str(tmp_path / f"{name}_in.npz"), str(tmp_path / f"{name}_out.npz")])
        expected[name] = kiln.load(artifact).run(feed)
    done = subprocess.run([str(bare_python), "-I", "-c", _RUN_ARTIFACTS, json.dumps(jobs)], capture_output=True,
                          text=True, check=True)
    importable = json.loads(done.stdout)
    assert not any(importable.values()), importable
    for name in artifacts:
        with np.load(tmp_path / f"{name}_out.npz") as got:
            assert set(got) == set(expected[name])
            for output, array in expected[name].items():
                np.testing.assert_array_equal(got[output], array, err_msg=f"{name}: {output}")


def test_run_and_bench_commands_work_and_compiling_is_refused(bare_python, artifacts, tmp_path):
    kiln_command = bare_python.with_name("kiln")
    help_text = subprocess.run([str(kiln_command), "--help"], capture_output=True, text=True, check=True).stdout
    assert "run" in help_text and "bench" in help_text and "compile" not in help_text
    artifact, feed = artifacts["fp32"]
    np.savez(tmp_path / "in.npz", **feed)
    run = subprocess.run([str(kiln_command), "run", str(artifact), "-i", str(tmp_path / "in.npz"), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert np.allclose(json.loads(run.stdout)["outputs"]["logits"]["values"],
                       kiln.load(artifact).predict(feed))
    bench = subprocess.run([str(kiln_command), "bench", str(artifact), "--seconds", "0.2", "--json"],
                           capture_output=True, text=True)
    assert bench.returncode == 0 and json.loads(bench.stdout)["kiln"]["repeats"] >= 10, bench.stderr
    versus = subprocess.run([str(kiln_command), "bench", str(artifact), "--vs", "onnxruntime"], capture_output=True,
                            text=True)
    assert versus.returncode == 3 and "full kiln-ml" in versus.stderr
    compile_call = subprocess.run([str(bare_python), "-I", "-c", "import kiln; kiln.compile('m.onnx', None)"],
                                  capture_output=True, text=True)
    assert "needs the compiler: this is kiln-runtime" in compile_call.stderr


def test_the_serverless_example_answers_events_with_the_runtime_only(bare_python, artifacts, tmp_path):
    artifact, feed = artifacts["int8"]
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"inputs": {name: array.tolist() for name, array in feed.items()}}))
    done = subprocess.run([str(bare_python), "-I", str(EXAMPLES / "serverless" / "handler.py"), str(event)],
                          capture_output=True, text=True, env={**os.environ, "KILN_ARTIFACT": str(artifact)})
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)["outputs"]
    np.testing.assert_allclose(reply["logits"], kiln.load(artifact).predict(feed), rtol=1e-6)
    bad = subprocess.run([str(bare_python), "-I", str(EXAMPLES / "serverless" / "handler.py"), str(event)],
                         capture_output=True, text=True, env={**os.environ, "KILN_ARTIFACT": str(artifacts["tree"][0])})
    assert "error" in json.loads(bad.stdout)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_a_wrong_host_or_tampered_artifact_is_refused_with_the_full_installs_message(bare_python, tmp_path):
    from click.testing import CliRunner

    from kiln.cli import cli

    wrong_host = kiln.compile(TREE_MODELS / "xgb_multiclass_nan.ubj",
                              kiln.CompileOptions(kiln.target("aarch64"), tmp_path / "arm.kiln")).path
    tampered = shutil.copytree(wrong_host, tmp_path / "tampered.kiln")
    library = next(tampered.glob("model-*.so"))
    library.write_bytes(library.read_bytes() + b"\0")
    with np.load(TREE_MODELS / "heldout.npz") as archive:
        np.save(tmp_path / "rows.npy", archive["multiclass_nan"][:4])
    for case in (wrong_host, tampered):
        command = ["run", str(case), "-i", str(tmp_path / "rows.npy")]
        full = CliRunner().invoke(cli, command)
        bare = subprocess.run([str(bare_python.with_name("kiln")), *command], capture_output=True, text=True)
        assert (bare.returncode, full.exit_code) in ((5, 5), (3, 3)), (bare.stderr, full.output)
        assert bare.stderr.strip() == full.output.strip().splitlines()[-1]


@pytest.mark.qemu
@pytest.mark.skipif(bool(aarch64.missing_tools()), reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_the_aarch64_wheel_runs_aarch64_artifacts_in_an_aarch64_python_under_qemu(artifacts, tmp_path):
    """Debian's arm64 python3.11 under qemu-user, with the aarch64 runtime wheel and the registry's aarch64
    numpy and apache-tvm-ffi: the same outputs as the C++ runner (neural) and as the x86 build (trees)."""
    wheel = build(tmp_path / "dist", aarch64.aarch64_wheel("apache-tvm"))
    with zipfile.ZipFile(wheel) as archive:
        assert all(archive.read(f"kiln/lib/{name}")[18] == 183 for name in LIBRARIES)  # ELF machine: AArch64
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                    str(site), "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
                    "--only-binary=:all:", str(wheel)], check=True)
    jobs, expected = [], {}
    for name, (x86_artifact, feed) in artifacts.items():
        manifest = kiln.inspect(x86_artifact)
        extra = {"precision": manifest.precision, "calib": DIGITS_CALIB} if name == "int8" else {}
        shapes = {} if name == "tree" else {"input": (1, 1, 8, 8)}
        model = TREE_MODELS / "xgb_multiclass_nan.ubj" if name == "tree" else DIGITS_CNN
        artifact = kiln.compile(model, kiln.CompileOptions(kiln.target("aarch64"), tmp_path / f"{name}.kiln",
                                                           kiln.ImportOptions(shapes), **extra)).path
        np.savez(tmp_path / f"{name}_in.npz", **feed)
        jobs.append([str(artifact), str(tmp_path / f"{name}_in.npz"), str(tmp_path / f"{name}_out.npz")])
        expected[name] = (kiln.load(x86_artifact).run(feed) if name == "tree" else
                          dict(zip([spec.name for spec in manifest.outputs],
                                   aarch64.run_artifact(artifact, list(feed.values()), tmp_path / name))))
    root = aarch64.python_root()
    script = f"import sys; sys.path.insert(0, {str(site)!r})\n" + _RUN_ARTIFACTS
    done = subprocess.run([aarch64.QEMU, "-L", str(root), str(root / "usr/bin/python3.11"), "-I", "-c", script,
                           json.dumps(jobs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not any(json.loads(done.stdout.splitlines()[-1]).values())
    for name in artifacts:
        with np.load(tmp_path / f"{name}_out.npz") as got:
            for output, array in expected[name].items():
                np.testing.assert_allclose(got[output], array, rtol=1e-6, atol=1e-6, err_msg=f"{name}: {output}")
