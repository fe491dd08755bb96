"""The one pipeline behind every verb: graph passes at every precision, typed results, the Manifest type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.cli import cli
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.manifest import SCHEMA_VERSION, Manifest, Precision
from kiln.pipeline import CompileOptions
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN
from kiln.testing.reference import onnxruntime_outputs

SHAPE = (1, 3, 16, 16)


def _conv_bn_relu_conv(path: Path) -> Path:
    """conv -> BatchNormalization -> relu -> conv, 16 channels (two blocks of 8 on AVX2, one of 16 on AVX-512)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("conv_bn_relu_conv", opset=13)
    b.input("x", SHAPE)
    y = b.node("Conv", ["x", b.const(rng.standard_normal((16, 3, 3, 3)).astype(np.float32))], pads=[1] * 4)
    statistics = [rng.uniform(0.5, 1.5, 16), rng.standard_normal(16), rng.standard_normal(16) * 0.1,
                  rng.uniform(0.5, 2.0, 16)]
    y = b.node("BatchNormalization", [y, *(b.const(s.astype(np.float32)) for s in statistics)])
    y = b.node("Relu", [y])
    b.node("Conv", [y, b.const(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1)], "y", pads=[1] * 4)
    b.output("y", [1, 16, 16, 16])
    return b.save(path, check=True)


def _layout_transforms(graph) -> int:
    """layout_transform calls in the Relax module after kiln's NCHWc rewrite for the host."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.backends.tvm.rewrite.layout import to_nchwc
    from kiln.compiler.backends.tvm.schedules.common import cpu_spec

    target = tvm.target.Target(kiln.target("host").tvm_target)
    with target:
        mod = to_nchwc(from_onnx(graph.body, keep_params_in_input=False), cpu_spec(target))
    return mod.script().count("R.layout_transform(")


def test_fp32_compile_folds_batchnorm_and_leaves_the_blocked_layout_once(tmp_path: Path):
    from kiln.compiler.frontends import load_graph
    from kiln.pipeline import load

    model = _conv_bn_relu_conv(tmp_path / "model.onnx")
    imports = ImportOptions()
    assert _layout_transforms(load_graph(model, imports)) == 4  # as imported: out of the blocks and back around BN
    prepared = load(model, imports)
    assert "BatchNormalization" not in {node.op_type for node in prepared.body.graph.node}
    assert _layout_transforms(prepared) == 2  # into the blocked layout once, out once

    result = kiln.compile(model, CompileOptions(kiln.target("host"), tmp_path / "model.kiln"))
    assert result.manifest.precision is Precision.FP32
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(kiln.load(result.path).run({"x": x})["y"], onnxruntime_outputs(model, {"x": x})[0],
                               rtol=1e-4, atol=1e-4)


def test_compile_returns_the_manifest_that_inspect_reads_back(cli_runner, tmp_path: Path):
    options = CompileOptions(kiln.target("x86-64"), tmp_path / "digits.kiln", ImportOptions({"input": (1, 1, 8, 8)}),
                             precision=Precision.INT8, calib=DIGITS_CALIB,
                             quantize=kiln.QuantizeOptions(cache_dir=str(tmp_path / "cache")))
    result = kiln.compile(DIGITS_CNN, options)
    assert isinstance(result.manifest, Manifest) and result.path == tmp_path / "digits.kiln"
    assert result.manifest.quantization is not None and result.manifest.integer_kernels is not None
    assert result.report is not None and result.report.samples > 0

    shown = cli_runner.invoke(cli, ["inspect", str(result.path), "--json"])
    assert shown.exit_code == 0, shown.output
    on_disk = json.loads(shown.stdout)
    assert on_disk.pop("kind") == "artifact" and on_disk.pop("path") == str(result.path)
    assert Manifest.from_json(on_disk) == result.manifest
    assert on_disk == json.loads(json.dumps(result.manifest.to_json()))
    assert kiln.inspect(result.path) == result.manifest


def test_manifest_of_another_schema_or_backend_is_refused_with_the_fix(tmp_path: Path):
    from kiln.errors import InputError

    result = kiln.compile(DIGITS_CNN, CompileOptions(kiln.target("x86-64"), tmp_path / "digits.kiln",
                                                     ImportOptions({"input": (1, 1, 8, 8)})))
    data = result.manifest.to_json()
    with pytest.raises(InputError, match=f"schema 99, this kiln reads {SCHEMA_VERSION}; rebuild"):
        Manifest.from_json({**data, "schema_version": 99})
    with pytest.raises(InputError, match="unknown backend 'onnxruntime'"):
        Manifest.from_json({**data, "backend": "onnxruntime"})
    with pytest.raises(InputError, match="incomplete or malformed"):
        Manifest.from_json({key: value for key, value in data.items() if key != "library"})


def test_the_verbs_stay_functions_after_every_subpackage_is_imported():
    """A subpackage named like a verb (kiln/quantize/, kiln/build/) would replace the function on first import."""
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(kiln.__path__, "kiln."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    for verb in ("compile", "quantize", "tune", "inspect", "load", "build", "target"):
        assert callable(getattr(kiln, verb)) and getattr(kiln, verb).__module__ in ("kiln", "kiln.compiler.artifact")
