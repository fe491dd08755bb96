"""The ONNX -> TVM -> artifact path through the library: correctness, artifact contract, atomic writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.compiler import artifact
from kiln.compiler.manifest import SCHEMA_VERSION
from kiln.errors import InputError, TargetError, UnsupportedOpError
from kiln.testing.models import op_chain
from kiln.testing.paths import DIGITS_CNN, DIGITS_TEST
from kiln.testing.reference import check_correctness, compile_to, library_of


def _compile(model: Path, output: Path, target: str = "x86-64", **shapes) -> Path:
    return compile_to(model, output, target, shapes=shapes)


@pytest.mark.parametrize("batch", [1, 8])
def test_example_cnn_matches_onnxruntime(batch: int, tmp_path: Path):
    images = np.load(DIGITS_TEST)["input"][:batch]
    check_correctness(DIGITS_CNN, {"input": images}, tmp_path)


def test_example_cnn_keeps_its_accuracy(tmp_path: Path):
    data = np.load(DIGITS_TEST)
    recorded = json.loads((DIGITS_CNN.parent / "metrics.json").read_text())
    count = len(data["labels"])
    output = _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(count, 1, 8, 8))
    logits = kiln.load(output).predict(data["input"])
    accuracy = float(np.mean(logits.argmax(axis=1) == data["labels"]))
    assert accuracy == pytest.approx(recorded["onnxruntime_top1_accuracy"], abs=1e-9)


def test_artifact_layout_and_manifest(tmp_path: Path):
    output = _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(1, 1, 8, 8))
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["source"]["format"] == "onnx"
    assert manifest["source"]["files"][0]["sha256"] == artifact.sha256_file(DIGITS_CNN)
    assert manifest["target"]["name"] == "x86-64"
    assert manifest["precision"] == "fp32"
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert set(manifest["versions"]) >= {"kiln-ml", "apache-tvm", "onnx", "numpy"}
    library = output / manifest["library"]["file"]
    assert library.read_bytes()[:4] == b"\x7fELF"
    assert manifest["library"]["sha256"] == artifact.sha256_file(library)
    predictor = kiln.load(output)
    assert [s.name for s in predictor.inputs] == ["input"] and [s.name for s in predictor.outputs] == ["logits"]
    assert re.fullmatch(r"model-[0-9a-f]{16}\.so", library.name)  # content-addressed (see artifact.content_addressed)
    assert sorted(p.name for p in output.iterdir()) == sorted(["manifest.json", "model.onnx", library.name])


def test_predict_takes_dict_or_array(tmp_path: Path):
    output = _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(2, 1, 8, 8))
    images = np.load(DIGITS_TEST)["input"][:2]
    predictor = kiln.load(output)
    np.testing.assert_array_equal(predictor.predict(images), predictor.predict({"input": images}))
    assert predictor.run(images)["logits"].shape == (2, 10)


def test_tampered_library_is_refused(tmp_path: Path):
    output = _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(1, 1, 8, 8))
    with open(library_of(output), "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(InputError, match="sha256"):
        kiln.load(output)


def test_vnni_compiles_but_running_names_the_missing_isa(tmp_path: Path):
    from kiln.targets.host import cpu_flags

    if "avx512_vnni" in cpu_flags():
        pytest.skip("this CPU has VNNI, so a VNNI artifact runs here")
    output = _compile(DIGITS_CNN, tmp_path / "vnni.kiln", "x86-vnni", input=(1, 1, 8, 8))
    assert library_of(output).is_file()
    with pytest.raises(TargetError, match="avx512"):
        kiln.load(output)


def test_host_target_runs_here(tmp_path: Path):
    images = np.load(DIGITS_TEST)["input"][:1]
    check_correctness(DIGITS_CNN, {"input": images}, tmp_path, target="host")


def test_failed_compile_leaves_nothing(tmp_path: Path, monkeypatch):
    from kiln.compiler.backends.tvm import build

    def fail(*args):
        raise RuntimeError("simulated crash in the middle of a build")

    monkeypatch.setattr(build, "build_library", fail)
    with pytest.raises(RuntimeError):
        _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(1, 1, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_failed_compile_keeps_the_previous_artifact(tmp_path: Path, monkeypatch):
    from kiln.compiler.backends.tvm import build

    output = _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(1, 1, 8, 8))
    before = (output / "manifest.json").read_bytes()
    monkeypatch.setattr(build, "build_library", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        _compile(DIGITS_CNN, output, input=(2, 1, 8, 8))
    assert (output / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["digits.kiln"]
    kiln.load(output)


def test_recompile_replaces_the_artifact(tmp_path: Path):
    output = _compile(DIGITS_CNN, tmp_path / "digits.kiln", input=(1, 1, 8, 8))
    _compile(DIGITS_CNN, output, input=(4, 1, 8, 8))
    assert kiln.load(output).inputs[0].shape == (4, 1, 8, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["digits.kiln"]


def test_every_unsupported_op_is_listed_at_once(tmp_path: Path):
    model = op_chain(tmp_path / "model.onnx", ["Bernoulli", "Relu", "Bernoulli", "RandomUniformLike"])
    with pytest.raises(UnsupportedOpError) as caught:
        _compile(model, tmp_path / "out.kiln")
    assert caught.value.unsupported == {"Bernoulli": ["bernoulli_0", "bernoulli_2"],
                                        "RandomUniformLike": ["randomuniformlike_3"]}
    assert "Bernoulli \u00d72 (nodes bernoulli_0, bernoulli_2)" in str(caught.value)
    assert not (tmp_path / "out.kiln").exists()


def test_external_data_inside_the_folder_loads(tmp_path: Path):
    data = np.load(DIGITS_TEST)["input"][:1]
    model = onnx.load(str(DIGITS_CNN))
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(model, str(folder / "cnn.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    check_correctness(folder / "cnn.onnx", {"input": data}, tmp_path)


def _with_external_location(tmp_path: Path, location: str) -> Path:
    model = onnx.load(str(DIGITS_CNN))
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    onnx.save_model(model, str(folder / "cnn.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    saved = onnx.load(str(folder / "cnn.onnx"), load_external_data=False)
    for tensor in saved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(saved, str(folder / "cnn.onnx"))
    return folder / "cnn.onnx"


def test_external_data_outside_the_folder_is_refused(tmp_path: Path):
    model = _with_external_location(tmp_path, "../weights.bin")
    shutil.move(model.parent / "weights.bin", tmp_path / "weights.bin")
    with pytest.raises(InputError, match="outside the model's folder"):
        _compile(model, tmp_path / "out.kiln", input=(1, 1, 8, 8))


def test_external_data_through_a_symlink_is_refused(tmp_path: Path):
    model = _with_external_location(tmp_path, "link.bin")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(model.parent / "weights.bin", outside / "weights.bin")
    (model.parent / "link.bin").symlink_to(outside / "weights.bin")
    with pytest.raises(InputError, match="outside the model's folder"):
        _compile(model, tmp_path / "out.kiln", input=(1, 1, 8, 8))


def test_loaded_artifact_runs_on_the_threads_asked_for_and_idles_quietly(tmp_path: Path):
    """TVM caps its pool at half the CPUs unless told (it assumes hyper-threading): a fresh process that
    compiles (constant folding starts the pool) and then loads with threads=2 must get 2 threads. After a
    call its workers must go to sleep: with TVM's default spin count they yield-spun ~0.2 s of CPU."""
    import os
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    script = f"""
import tvm, kiln
from pathlib import Path
from kiln.testing.reference import compile_to
artifact = compile_to(Path({str(DIGITS_CNN)!r}), Path({str(tmp_path)!r}) / "d.kiln", shapes={{"input": (1, 1, 8, 8)}})
predictor = kiln.load(artifact, threads=2)
predictor.run(np.zeros((1, 1, 8, 8), np.float32))
started = time.process_time()
time.sleep(1.0)
print(time.process_time() - started, tvm.get_global_func("runtime.NumThreads")())
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")}
    result = subprocess.run([sys.executable, "-c", "import time, numpy as np\n" + script], capture_output=True,
                            text=True, env=env, check=True)
    idle_cpu_seconds, threads = result.stdout.split()[-2:]
    assert threads == "2" and float(idle_cpu_seconds) < 0.05
