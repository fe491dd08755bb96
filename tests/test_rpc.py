"""Remote devices over TVM's RPC, with real components on loopback: a tracker and two `kiln rpc-server`s as
subprocesses (and a standalone server for --rpc), `kiln run/bench` through them agreeing with the local run, tuning
measured on the tracker's servers (one of them killed mid-run), and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler.graph import DimRange
from kiln.errors import RemoteError, UsageError
from kiln.remote.session import Remote
from kiln.runtime_wheel import build
from kiln.testing import aarch64, models
from kiln.testing.paths import DIGITS_CNN, DIGITS_TEST, TREE_MODELS
from kiln.testing.reference import compile_to, onnxruntime_outputs
from kiln.testing.rpc import HOST, Process, loopback

KEY = "kiln-test"
needs_safe_ffi = pytest.mark.skipif(
    not metadata.version("apache-tvm-ffi").startswith("0.1.14."),
    reason="MetaSchedule records crash with apache-tvm-ffi 0.1.15: pin apache-tvm-ffi==0.1.14.post0")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with loopback(tmp_path_factory.mktemp("rpc"), 2, KEY) as (tracker, servers):
        yield tracker, servers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = Process(["rpc-server", "--host", HOST, "--port", "0"], tmp_path_factory.mktemp("server") / "log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """The example CNN compiled for x86-64, and one test image as .npy."""
    folder = tmp_path_factory.mktemp("digits")
    artifact = compile_to(DIGITS_CNN, folder / "digits.kiln", shapes={"input": (1, 1, 8, 8)})
    with np.load(DIGITS_TEST) as archive:
        np.save(folder / "image.npy", archive["input"][:1])
    return artifact, folder / "image.npy"


def test_run_through_the_tracker_gives_the_local_outputs(cli_runner, pool, digits, tmp_path):
    tracker, _ = pool
    artifact, image = digits
    result = cli_runner.invoke(cli, ["run", str(artifact), "-i", str(image), "-o", str(tmp_path / "out.npz"),
                                     "--rpc-tracker", str(tracker.address), "--rpc-key", KEY])
    assert result.exit_code == 0, result.output
    assert f"running on RPC server {HOST}:" in result.output
    expected = kiln.load(artifact).run(np.load(image))
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_array_equal(got["logits"], expected["logits"])


def test_bench_on_one_server_agrees_with_the_local_run_and_keeps_onnxruntime_here(cli_runner, server, digits):
    artifact, _ = digits
    result = cli_runner.invoke(cli, ["bench", str(artifact), "--vs", "onnxruntime", "--seconds", "0.2", "--json",
                                     "--rpc", str(server.address)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["remote"] == {"where": f"RPC server {server.address}", "cpu_checked": True}
    assert report["max_abs_diff"] < 1e-4 and report["kiln"]["repeats"] >= 10
    text = cli_runner.invoke(cli, ["bench", str(artifact), "--vs", "onnxruntime", "--seconds", "0.2",
                                   "--rpc", str(server.address)]).output
    assert "onnxruntime ran here, on this machine: the speedup compares the two" in text


def test_the_api_runs_a_remote_predictor_like_a_local_one(server, digits):
    from kiln.remote.predictor import load

    artifact, image = digits
    remote = load(artifact, Remote(server=server.address))
    np.testing.assert_array_equal(remote.predict(np.load(image)), kiln.load(artifact).predict(np.load(image)))
    assert remote.host_checked and all(s > 0 for s in remote.seconds({"input": np.load(image)}, 5))


def test_a_batch_range_artifact_runs_remotely_like_locally(server, tmp_path):
    """Batch 3 of a 1-4 range: its chunks (2 + 1) run as the library's functions on the server, uploaded once."""
    from kiln.remote.predictor import load

    artifact = compile_to(DIGITS_CNN, tmp_path / "range.kiln", shapes={"input": (DimRange(1, 4), 1, 8, 8)})
    with np.load(DIGITS_TEST) as archive:
        images = archive["input"][:3]
    remote = load(artifact, Remote(server=server.address))
    np.testing.assert_allclose(remote.predict(images), kiln.load(artifact).predict(images), rtol=1e-6, atol=1e-6)
    assert all(s > 0 for s in remote.seconds({"input": images}, 3))


def test_remote_refusals_name_the_fix(cli_runner, server, digits, tmp_path):
    artifact, image = digits
    cases = [
        (["run", str(artifact), "-i", str(image), "--rpc", "127.0.0.1:1"], RemoteError, "start one with"),
        (["run", str(artifact), "-i", str(image), "--rpc-tracker", "127.0.0.1:1"], UsageError, "needs --rpc-key"),
        (["run", str(artifact), "-i", str(image), "--rpc", "nohost"], UsageError, "HOST:PORT"),
        (["bench", str(artifact), "--profile", "--rpc", str(server.address)], UsageError, "does not run over RPC"),
    ]
    for command, error, message in cases:
        result = cli_runner.invoke(cli, command)
        assert result.exit_code == error.exit_code, (command, result.output)
        assert message in result.output, result.output


def test_a_tree_artifact_is_refused_before_connecting(cli_runner, tmp_path):
    tree = kiln.compile(TREE_MODELS / "xgb_multiclass_nan.ubj",
                        kiln.CompileOptions(kiln.target("x86-64"), tmp_path / "tree.kiln")).path
    result = cli_runner.invoke(cli, ["bench", str(tree), "--rpc", "127.0.0.1:1"])  # nothing listens there
    assert result.exit_code == UsageError.exit_code
    assert "a TVM RPC server loads only TVM modules" in result.output


@pytest.mark.slow
@needs_safe_ffi
def test_tuning_measured_on_two_servers_reproduces_a_build_that_matches_onnxruntime(pool, tmp_path):
    tracker, _ = pool
    model = tmp_path / "cnn.onnx"
    model.write_bytes(models.small_cnn().SerializeToString())
    image = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    report = kiln.tune(model, tmp_path / "records", target=kiln.target("x86-64"), trials=8,
                       imports=kiln.ImportOptions({"input": image.shape}),
                       remote=Remote(tracker=tracker.address, key=KEY))
    assert report.servers == 2 and not report.lost and report.failed == 0
    assert report.remote == f"a {KEY!r} server of RPC tracker {tracker.address}"
    output = compile_to(model, tmp_path / "cnn.kiln", shapes={"input": image.shape}, records=tmp_path / "records")
    schedules = json.loads((output / "manifest.json").read_text())["build"]["schedules"]
    assert schedules == {"tuned": report.tasks}
    np.testing.assert_allclose(kiln.load(output).predict(image), onnxruntime_outputs(model, {"input": image})[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@needs_safe_ffi
def test_a_server_killed_mid_tune_costs_only_its_own_measurements(tmp_path):
    model = tmp_path / "cnn.onnx"
    model.write_bytes(models.small_cnn().SerializeToString())
    with loopback(tmp_path / "rpc", 2, KEY) as (tracker, servers):
        victim = servers[1]
        result: dict = {}

        def tune():
            result["report"] = kiln.tune(model, tmp_path / "records", target=kiln.target("x86-64"), trials=24,
                                         imports=kiln.ImportOptions({"input": (1, 3, 16, 16)}),
                                         remote=Remote(tracker=tracker.address, key=KEY))

        tuning = threading.Thread(target=tune)
        tuning.start()
        deadline = time.monotonic() + 60
        while "session from" not in victim.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # the pool holds both servers' sessions and measures on them
        victim.kill()
        tuning.join(600)
    report = result["report"]
    assert report.servers == 2 and len(report.lost) == 1 and str(victim.address) in report.lost[0]
    assert report.failed == 0  # its in-flight candidate went to the other server
    assert (tmp_path / "records").is_dir()


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(bool(aarch64.missing_tools()), reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_an_aarch64_server_under_qemu_runs_an_aarch64_artifact_like_onnxruntime(tmp_path):
    """`kiln rpc-server` from the aarch64 kiln-runtime wheel, in Debian's arm64 python3.11 under qemu-user (timings
    under qemu mean nothing: only the results are checked)."""
    wheel = build(tmp_path / "dist", aarch64.aarch64_wheel("apache-tvm"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                    str(site), "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
                    "--only-binary=:all:", str(wheel)], check=True)
    root = aarch64.python_root()
    kiln_aarch64 = (aarch64.QEMU, "-L", str(root), str(root / "usr/bin/python3.11"), "-I", "-c",
                    f"import sys; sys.path.insert(0, {str(site)!r}); from kiln.cli_runtime import main; main()")
    artifact = compile_to(DIGITS_CNN, tmp_path / "arm.kiln", "aarch64", shapes={"input": (1, 1, 8, 8)})
    with np.load(DIGITS_TEST) as archive:
        images = archive["input"][:1]
    server = Process(["rpc-server", "--host", HOST, "--port", "0"], tmp_path / "server.log", kiln=kiln_aarch64)
    try:
        from kiln.remote.predictor import load

        remote = load(artifact, Remote(server=server.address))
        assert remote.host_checked  # the server said it is aarch64
        np.testing.assert_allclose(remote.predict(images), onnxruntime_outputs(DIGITS_CNN, {"input": images})[0],
                                   rtol=1e-4, atol=1e-4)
    finally:
        server.stop()
