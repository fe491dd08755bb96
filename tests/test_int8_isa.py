"""One Int8Isa per target, resolved from its features, for presets and raw TVM JSON alike: the quantizer's
activation type and weight range and the integer kernels all follow it (issue #18, bug 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kiln.cli import cli
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.manifest import Precision
from kiln.pipeline import CompileOptions, compile_model
from kiln.quantization.config import ActivationType, QuantizeOptions
from kiln.targets import PRESETS, Int8Isa, resolve
from kiln.targets.presets import Preset
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN

CASCADELAKE = '{"kind": "llvm", "mcpu": "cascadelake"}'


@pytest.mark.parametrize("specs, isa", [
    (("x86-64", "x86-avx2", '{"kind": "llvm", "mcpu": "haswell"}', '{"kind": "llvm", "mcpu": "znver3"}'),
     Int8Isa.AVX2),
    (("x86-avx512", '{"kind": "llvm", "mcpu": "skylake-avx512"}'), Int8Isa.AVX512),
    (("x86-vnni", CASCADELAKE, '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}'),
     Int8Isa.VNNI),
    (('{"kind": "llvm"}',), Int8Isa.SSE),  # LLVM's generic x86-64
    (("aarch64", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}'), Int8Isa.NEON),
    (("aarch64-dotprod", "aarch64-sve", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}',
      '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon", "+dotprod"]}'),
     Int8Isa.SDOT),
    (("cuda-sm80", '{"kind": "cuda", "arch": "sm_86"}'), Int8Isa.DP4A),
], ids=["avx2", "avx512", "vnni", "sse", "neon", "sdot", "dp4a"])
def test_presets_and_raw_json_resolve_to_the_same_int8_isa_and_quantizer_choices(specs: tuple[str, ...],
                                                                                  isa: Int8Isa):
    options = {spec: QuantizeOptions().for_target(resolve(spec)) for spec in specs}
    assert {spec: resolve(spec).int8_isa for spec in specs} == dict.fromkeys(specs, isa)
    x86 = isa in (Int8Isa.SSE, Int8Isa.AVX2, Int8Isa.AVX512, Int8Isa.VNNI)
    assert {(o.activations, o.reduce_range) for o in options.values()} == {
        (ActivationType.UINT8 if x86 else ActivationType.INT8, isa in (Int8Isa.SSE, Int8Isa.AVX2, Int8Isa.AVX512))}


def test_explicit_quantize_options_win_over_the_targets():
    vnni = resolve(CASCADELAKE)
    options = QuantizeOptions(activations=ActivationType.INT8, reduce_range=True).for_target(vnni)
    assert (options.activations, options.reduce_range) == (ActivationType.INT8, True)


@pytest.mark.parametrize("name", [name for name, preset in PRESETS.items() if preset.tvm_target["kind"] == "llvm"])
def test_each_preset_declares_the_int8_isa_that_llvm_reads_from_its_target(name: str):
    """Presets name their features (x86 `requires`, aarch64 mattr) rather than asking LLVM at import; the kernels
    read LLVM's features of the same target (schedules.common.cpu_spec), so the two must agree."""
    import tvm

    from kiln.compiler.backends.tvm.kernels.intrinsics import dot_product
    from kiln.compiler.backends.tvm.schedules.common import cpu_spec
    from kiln.targets.llvm import cpu_features

    preset = PRESETS[name]
    target = tvm.target.Target(preset.tvm_target)
    assert Int8Isa.from_features(cpu_features(target), preset.family) is preset.int8_isa
    spec = cpu_spec(target)
    if spec is not None:  # None on SVE: TVM's own pipeline builds it
        assert spec.int8 == dot_product(preset.int8_isa)


def test_each_dot_product_takes_the_activations_its_int8_isa_quantizes_to():
    from kiln.compiler.backends.tvm.kernels.intrinsics import dot_product

    for isa in Int8Isa:
        kernel = dot_product(isa)
        assert kernel is None or kernel.activations == isa.activations, isa
    assert dot_product(Int8Isa.NEON) is None and dot_product(Int8Isa.SSE) is None


def test_the_manifest_records_the_int8_isa_as_its_name_and_reads_old_raw_targets():
    raw = resolve(CASCADELAKE)
    data = json.loads(json.dumps(raw.to_json()))
    assert data["int8_isa"] == "avx512-vnni" and Preset.from_json(data) == raw
    # manifests from before Int8Isa wrote "unknown" for raw targets: read from the features they name
    assert Preset.from_json({**data, "int8_isa": "unknown"}).int8_isa is Int8Isa.VNNI
    aarch64 = PRESETS["aarch64-dotprod"].to_json()
    assert Preset.from_json({**aarch64, "name": "custom", "int8_isa": "unknown"}).int8_isa is Int8Isa.SDOT


def test_targets_command_prints_each_int8_isa_by_name(cli_runner):
    result = cli_runner.invoke(cli, ["targets"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:]}
    assert {name: lines[name] for name in ("x86-64", "x86-avx512", "x86-vnni", "aarch64", "aarch64-dotprod")} == {
        "x86-64": "avx2", "x86-avx512": "avx512bw", "x86-vnni": "avx512-vnni", "aarch64": "neon",
        "aarch64-dotprod": "sdot"}


# ---- the case, end to end: a raw cascadelake target and x86-vnni build the same INT8 artifact -------

@pytest.fixture(scope="module")
def vnni_artifacts(tmp_path_factory) -> dict[str, Path]:
    """The digits CNN compiled INT8 for x86-vnni and for the raw cascadelake JSON (VNNI code compiles on any
    x86 host; only running it needs VNNI)."""
    folder = tmp_path_factory.mktemp("vnni")
    images = np.load(DIGITS_CALIB)["input"]
    quantize = QuantizeOptions(cache_dir=str(folder / "cache"))
    artifacts = {}
    for name, spec in (("preset", "x86-vnni"), ("raw", CASCADELAKE)):
        options = CompileOptions(resolve(spec), folder / f"{name}.kiln", ImportOptions({"input": images[:2].shape}),
                                 precision=Precision.INT8, calib=DIGITS_CALIB, quantize=quantize)
        artifacts[name] = compile_model(DIGITS_CNN, options).path
    return artifacts


def _manifest(artifact: Path) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def _largest_int8_weight(artifact: Path) -> int:
    model = onnx.load(str(artifact / "model.int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.size > 1)


def test_raw_vnni_json_gets_the_vnni_presets_8_bit_weights(vnni_artifacts: dict[str, Path]):
    preset, raw = (_largest_int8_weight(vnni_artifacts[name]) for name in ("preset", "raw"))
    assert preset == raw == 127  # symmetric per channel over [-127, 127]: not the 7-bit [-63, 63] of AVX2
    assert _manifest(vnni_artifacts["raw"])["target"]["int8_isa"] == "avx512-vnni"


def test_raw_vnni_json_gets_the_vnni_presets_kernels(vnni_artifacts: dict[str, Path]):
    preset, raw = (_manifest(vnni_artifacts[name])["integer_kernels"] for name in ("preset", "raw"))
    assert preset == raw
    assert preset["isa"] == "avx512-vnni-vpdpbusd" and preset["target_int8_isa"] == "avx512-vnni", preset
    assert preset["int8_ops"] > 0, preset
