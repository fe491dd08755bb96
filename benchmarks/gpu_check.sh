#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: compile ResNet-18, MobileNetV2 and the example CNN for this GPU with
# kiln, FP32 and INT8 (integer kernels on dp4a), batch 1 and 8; check their outputs against ONNX Runtime
# (CPU, the same model; for INT8 the same QDQ model) and print latencies side by side. It is
# benchmarks/cpu.py with --target cuda-smXX; it exits with status 1 on a mismatch.
#
#   benchmarks/gpu_check.sh                     # uses .venv/bin/python (make test builds it)
#   PYTHON=python3 benchmarks/gpu_check.sh --models digits_cnn --batches 1,64
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
target="cuda-sm$arch"
# A GPU newer than kiln's presets: the raw TVM target for its architecture
"$PY" -c "import sys; from kiln.targets import PRESETS; sys.exit('$target' not in PRESETS)" ||
  target="{\"kind\": \"cuda\", \"arch\": \"sm_$arch\"}"
exec "$PY" benchmarks/cpu.py --target "$target" --threads "$(nproc)" --seconds 2 "$@"
