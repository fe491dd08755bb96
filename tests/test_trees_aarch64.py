"""Tree artifacts for aarch64: an AArch64 ELF library whose predictions, run under qemu-user by a small C
harness, equal the x86 library's. Needs gcc-aarch64-linux-gnu and qemu-user (scripts/system-deps.sh)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import kiln
from kiln.errors import TargetError
from kiln.testing.aarch64 import SYSROOT
from kiln.testing.paths import TREE_MODELS as MODELS
from kiln.testing.reference import compile_to, library_of

EM_AARCH64 = 183

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
    reason="needs gcc-aarch64-linux-gnu and qemu-user (run scripts/system-deps.sh)")]

# Reads rows (float32) from a file, calls the artifact's entry point, writes the outputs (float32).
HARNESS = r"""
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  if (argc != 6) { fprintf(stderr, "usage: harness LIB ROWS NUM_ROW NUM_FEATURE OUT\n"); return 2; }
  void* library = dlopen(argv[1], RTLD_NOW);
  if (!library) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  void (*predict)(const float*, int64_t, float*, int32_t) = dlsym(library, "kiln_predict_f32");
  int32_t (*num_output)(void) = dlsym(library, "kiln_num_output");
  const int64_t num_row = atol(argv[3]), num_feature = atol(argv[4]);
  float* rows = malloc(sizeof(float) * num_row * num_feature);
  float* out = malloc(sizeof(float) * num_row * num_output());
  FILE* input = fopen(argv[2], "rb");
  if (fread(rows, sizeof(float), num_row * num_feature, input) != (size_t)(num_row * num_feature)) return 1;
  fclose(input);
  predict(rows, num_row, out, 2);
  FILE* output = fopen(argv[5], "wb");
  fwrite(out, sizeof(float), num_row * num_output(), output);
  fclose(output);
  return 0;
}
"""


@pytest.mark.parametrize("target", ["aarch64", "aarch64-dotprod"])
def test_aarch64_library_reproduces_x86_predictions_under_qemu(target, tmp_path):
    model = MODELS / "xgb_multiclass_cat.json"
    with np.load(MODELS / "heldout.npz") as archive:
        rows = np.ascontiguousarray(archive["multiclass_cat"], dtype=np.float32)
    rows[::3, 1] = np.nan
    x86 = compile_to(model, tmp_path / "x86.kiln")
    arm = compile_to(model, tmp_path / "arm.kiln", target)
    library = library_of(arm)
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    with pytest.raises(TargetError, match="aarch64"):
        kiln.load(arm)

    harness = tmp_path / "harness"
    (tmp_path / "harness.c").write_text(HARNESS)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-o", str(harness), str(tmp_path / "harness.c"), "-ldl"],
                   check=True)
    rows.tofile(tmp_path / "rows.bin")
    subprocess.run(["qemu-aarch64", "-L", str(SYSROOT), str(harness), str(library), str(tmp_path / "rows.bin"),
                    str(len(rows)), str(rows.shape[1]), str(tmp_path / "out.bin")], check=True, timeout=60)
    expected = kiln.load(x86).predict(rows)
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
