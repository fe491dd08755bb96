"""Where the example models, test data and test caches are in a source checkout of kiln."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DIGITS_CNN = EXAMPLES / "digits_cnn" / "digits_cnn.onnx"
DIGITS_CALIB = DIGITS_CNN.parent / "digits_calib.npz"
DIGITS_TEST = DIGITS_CNN.parent / "digits_test.npz"
MXNET_DIGITS = EXAMPLES / "mxnet_digits"
TREE_MODELS = REPO / "tests" / "models" / "trees"
# What tests make once and reuse across runs (MXNet exports, the aarch64 TVM runtime); gitignored.
TEST_CACHE = REPO / ".kiln-test-cache"
