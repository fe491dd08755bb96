#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: compile the example ONNX models for this GPU with kiln, check
# their outputs against ONNX Runtime (CPU), and print latency for both; then the digits CNN in INT8
# (integer kernels on dp4a) against ONNX Runtime's execution of the same QDQ model.
#
#   benchmarks/gpu_check.sh            # uses .venv/bin/python (make test builds it)
#   PYTHON=python3 benchmarks/gpu_check.sh
#
# Needs: the NVIDIA driver, nvcc (CUDA toolkit) to build, and the CUDA 13 runtime (libcudart.so.13:
# the toolkit's lib64 or `pip install nvidia-cuda-runtime`) for TVM's libtvm_runtime_cuda.so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi; needs an NVIDIA GPU + driver" >&2; exit 1; }
command -v nvcc >/dev/null || { echo "gpu_check: no nvcc; install the CUDA toolkit" >&2; exit 1; }
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -1

# Where a pip-installed or toolkit CUDA 13 runtime lives, for libtvm_runtime_cuda.so to find it.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for dir in /usr/local/cuda/lib64 "$site"/nvidia/cu13/lib "$site"/nvidia/cuda_runtime/lib; do
  [ -e "$dir/libcudart.so.13" ] && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# With its CUDA runtime loaded, TVM itself compiles the kernels during tvm.compile, by default with
# NVRTC (which needs the cuda-bindings package); nvcc needs nothing more. kiln then compiles them
# for the preset's architecture into the fatbin it ships.
export TVM_CUDA_COMPILE_MODE=nvcc

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$PY" - "$arch" "$out" <<'EOF'
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import kiln
from kiln.bench import ort_session_options
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.pipeline import CompileOptions, compile_model
from kiln.targets import PRESETS, resolve

arch, out = sys.argv[1], Path(sys.argv[2])
target = f"cuda-sm{arch}" if f"cuda-sm{arch}" in PRESETS else f'{{"kind": "cuda", "arch": "sm_{arch}"}}'
print(f"target: {target}")


def feed_for(model: Path, batch: int) -> dict[str, np.ndarray]:
    rng, feed = np.random.default_rng(0), {}
    for value in onnx.load(str(model)).graph.input:
        dims = [d.dim_value if d.dim_value else batch for d in value.type.tensor_type.shape.dim]
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def latency_ms(run, seconds: float = 1.0) -> float:
    for _ in range(5):
        run()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 10:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


failures = 0
for model in sorted(Path("examples").glob("*/*.onnx")):
    for batch in (1, 64):
        feed = feed_for(model, batch)
        shapes = {name: array.shape for name, array in feed.items()}
        artifact = out / f"{model.stem}-b{batch}.kiln"
        started = time.perf_counter()
        compile_model(model, CompileOptions(resolve(target), artifact, ImportOptions(shapes)))
        build_s = time.perf_counter() - started
        predictor = kiln.load(artifact)
        session = ort.InferenceSession(str(model), ort_session_options(2), providers=["CPUExecutionProvider"])
        got, expected = list(predictor.run(feed).values()), session.run(None, feed)
        error = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
        ok = all(np.allclose(g, e, rtol=1e-3, atol=1e-3) for g, e in zip(got, expected))
        failures += not ok
        kiln_ms = latency_ms(lambda: predictor.run(feed))
        ort_ms = latency_ms(lambda: session.run(None, feed))
        print(f"{model.stem} batch {batch}: build {build_s:.1f} s, max |kiln - onnxruntime| {error:.2e} "
              f"{'OK' if ok else 'MISMATCH'}, latency kiln {kiln_ms:.3f} ms (GPU, incl. copies) vs "
              f"onnxruntime {ort_ms:.3f} ms (CPU, 2 threads)")
# INT8 (integer kernels on dp4a) against ONNX Runtime computing the same QDQ model as written
from onnx import numpy_helper

from kiln.compiler.artifact import read_manifest
from kiln.compiler.pipeline import Precision

digits = Path("examples/digits_cnn")
test = np.load(digits / "digits_test.npz")["input"][:50]
artifact = out / "digits-int8.kiln"
compile_model(digits / "digits_cnn.onnx", CompileOptions(resolve(target), artifact, ImportOptions({"input": test.shape}),
                                                         precision=Precision.INT8, calib=digits / "digits_calib.npz"))
qdq = artifact / "model.int8.onnx"
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
predictor = kiln.load(artifact)
got, (expected,) = list(predictor.run({"input": test}).values())[0], session.run(None, {"input": test})
scales = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(qdq)).graph.initializer}
steps = float(np.max(np.abs(got - expected))) / float(scales[f"{onnx.load(str(qdq)).graph.output[0].name}_scale"])
ok = steps <= 1.001
failures += not ok
print(f"digits_cnn int8 batch 50: integer kernels {read_manifest(artifact)['integer_kernels']['int8_by_op']}, "
      f"max difference {steps:.2f} output steps {'OK' if ok else 'MISMATCH'}, latency kiln "
      f"{latency_ms(lambda: predictor.run({'input': test})):.3f} ms")
sys.exit(1 if failures else 0)
EOF
