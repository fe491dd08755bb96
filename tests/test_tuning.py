"""`kiln tune` + `kiln compile --records`: a few trials on a small model, records reused by a second
model that shares its conv layers, and the errors around records."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest

from kiln.cli import cli
from kiln.errors import InputError, SettingError, TargetError
from kiln.settings import as_flags
from kiln.testing import models
from kiln.testing.reference import compile_to, onnxruntime_outputs

needs_safe_ffi = pytest.mark.skipif(
    not metadata.version("apache-tvm-ffi").startswith("0.1.14."),
    reason="MetaSchedule records crash with apache-tvm-ffi 0.1.15: pin apache-tvm-ffi==0.1.14.post0")
IMAGE = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _compile_with_records(model: Path, records: Path, tmp_path: Path) -> dict[str, int]:
    import kiln

    output = compile_to(model, tmp_path / f"{model.stem}.kiln", shapes={"input": IMAGE.shape}, records=records)
    expected = onnxruntime_outputs(model, {"input": IMAGE})[0]
    np.testing.assert_allclose(kiln.load(output).predict(IMAGE), expected, rtol=1e-4, atol=1e-4)
    return json.loads((output / "manifest.json").read_text())["build"]["schedules"]


@pytest.mark.slow
@needs_safe_ffi
def test_tune_then_compile_reuses_records_across_models(cli_runner, tmp_path: Path):
    convs = _save(models.small_cnn(), tmp_path / "convs.onnx")
    records = tmp_path / "records"
    result = cli_runner.invoke(cli, ["tune", str(convs), "--trials", "8", "-o", str(records), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tasks"] >= 2 and report["trials"] == 8
    # every tuned kernel has a record (at worst its default schedule), so all of them come from records
    assert _compile_with_records(convs, records, tmp_path) == {"tuned": report["tasks"]}
    # a model with the same convs plus a head: the convs from records, the head from the default rules
    with_head = _save(models.small_cnn(head=True), tmp_path / "with_head.onnx")
    schedules = _compile_with_records(with_head, records, tmp_path)
    assert schedules["tuned"] >= 2 and set(schedules) - {"tuned"}


@pytest.mark.slow
@needs_safe_ffi
def test_tuned_build_at_batch_8_matches_onnxruntime(cli_runner, tmp_path: Path):
    import kiln

    model = _save(models.small_cnn(batch=8), tmp_path / "convs8.onnx")
    records = tmp_path / "records"
    result = cli_runner.invoke(cli, ["tune", str(model), "--trials", "4", "-o", str(records), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # the second conv (4.7 M multiply-adds at batch 8) is Winograd: recorded in the rule's variants, not searched
    assert report["searched"] == report["tasks"] - 1, report
    output = compile_to(model, tmp_path / "convs8.kiln", records=records)
    assert set(json.loads((output / "manifest.json").read_text())["build"]["schedules"]) == {"tuned"}
    images = np.random.default_rng(6).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(kiln.load(output).predict(images),
                               onnxruntime_outputs(model, {"input": images})[0], rtol=1e-4, atol=1e-4)


def test_records_need_the_safe_ffi(monkeypatch, tmp_path: Path):
    from kiln.compiler.backends.tvm import tuning
    from kiln.targets import resolve

    monkeypatch.setattr(tuning.metadata, "version", lambda name: "0.1.15.post2")
    with pytest.raises(TargetError, match="apache-tvm-ffi==0.1.14.post0"):
        tuning.open_records(tmp_path, resolve("x86-64"))


@needs_safe_ffi
def test_records_without_this_target_name_the_fix(tmp_path: Path):
    from kiln.compiler.backends.tvm.tuning import open_records
    from kiln.targets import resolve

    with pytest.raises(InputError, match="kiln tune MODEL --target x86-64"):
        open_records(tmp_path, resolve("x86-64"))


def test_records_with_schedule_none_are_refused(tmp_path: Path):
    model = _save(models.small_cnn(), tmp_path / "convs.onnx")
    with pytest.raises(SettingError) as error:
        from kiln.compiler.backends.tvm.schedules import ScheduleMode

        compile_to(model, tmp_path / "x.kiln", schedule=ScheduleMode.NONE, records=tmp_path)
    assert "drop --records" in as_flags(error.value)  # the library names the setting; the CLI shows its flag


def test_tuning_measures_the_default_rule_first_then_its_variants():
    from kiln.compiler.backends.tvm.schedules.common import AVX2, tuning_variants

    variants = tuning_variants(AVX2)
    assert variants[0] == AVX2 and len(set(variants)) == len(variants) == 4
    assert {v.chunk_steps for v in variants} == {AVX2.chunk_steps, 0}  # conv2d summed in one pass, too
    assert {v.registers for v in variants} == {16, 12}
