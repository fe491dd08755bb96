"""Settings declared once: the dataclass fields make the click options and kiln.toml keys, own the fingerprint,
and name themselves in library errors, which the CLI shows as flags and kiln.toml as keys."""

from __future__ import annotations

import dataclasses
import click
import pytest
from click.testing import CliRunner

from pathlib import Path

from kiln.project.config import KEYS, ArtifactSettings, read_config
from kiln.calibration.datasets import Sampling
from kiln.calibration.images import ImageSpec, Layout
from kiln.calibration.observers import CalibMethod, ObserverSettings
from kiln.cli import cli
from kiln.cli_options import neural_quantize_options
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.manifest import Precision
from kiln.compiler.fingerprint import fingerprint
from kiln.errors import InputError, SettingError
from kiln.pipeline import CompileOptions, compile_model
from kiln.quantization.config import KeepFloat, QuantizeOptions
from kiln.settings import as_flags, flag, flags, from_raw, keys, part_of_the_build, raw_defaults, toml_keys
from kiln.targets import resolve
from kiln.testing.paths import DIGITS_CNN

QUANTIZE_KEYS = keys(QuantizeOptions)


def _flags(command: click.Command) -> list[str]:
    return [name for param in command.params for name in param.opts if name.startswith("--")]


@pytest.mark.parametrize("name", ["compile", "quantize"])
def test_the_int8_flags_are_the_settings_of_quantize_options(name):
    flags = _flags(cli.commands[name])
    assert len(flags) == len(set(flags))  # declared once each
    assert {flag(key) for key in QUANTIZE_KEYS} <= set(flags)
    assert QUANTIZE_KEYS == ["calib_method", "percentile", "calib_samples", "calib_seed", "image_spec", "exclude",
                             "keep_float", "eval", "max_accuracy_drop", "auto_exclude", "allow_degenerate",
                             "cache_dir"]


def test_the_int8_kiln_toml_keys_are_the_settings_of_quantize_options():
    assert [key for key in KEYS if key in QUANTIZE_KEYS] == QUANTIZE_KEYS


# Flags of `kiln compile` that are not settings of a library dataclass: how the command prints, not what it builds.
COMPILE_CLI_ONLY = {"--quiet", "--json"}


def test_the_compile_flags_are_exactly_the_settings_of_compile_options():
    command = cli.commands["compile"]
    assert _flags(command) == flags(CompileOptions) + sorted(COMPILE_CLI_ONLY, key=["--quiet", "--json"].index)
    assert flags(CompileOptions)[:8] == ["--target", "--output", "--input-shape", "--params", "--trust-pickle",
                                         "--freeze", "--sequence-shape", "--int8"]
    assert keys(ImportOptions) == ["input_shapes", "params", "trust_pickle", "freeze", "sequence_shapes"]
    shorts = {param.name: [o for o in param.opts if not o.startswith("--")] for param in command.params}
    assert shorts["target"] == ["-t"] and shorts["output"] == ["-o"]


@pytest.mark.parametrize("name, imported", [("inspect", ["--input-shape", "--params", "--trust-pickle", "--freeze",
                                                         "--sequence-shape"]),
                                            ("tune", ["--input-shape", "--params"]), ("quantize", ["--input-shape"])])
def test_the_import_flags_of_the_other_commands_are_import_options_settings(name, imported):
    flags_of_command = _flags(cli.commands[name])
    assert [f for f in flags_of_command if f in flags(ImportOptions)] == imported


def test_the_kiln_toml_keys_are_derived_from_the_same_fields():
    assert KEYS == toml_keys(ArtifactSettings) + toml_keys(CompileOptions)
    assert KEYS[:3] == ["model", "output_dir", "targets"] and "output" not in KEYS  # output: from output_dir
    assert set(keys(CompileOptions)) - set(KEYS) == {"output"}


def test_the_compile_flags_defaults_are_the_fields_defaults():
    params = [param for param in cli.commands["compile"].params if param.name in keys(CompileOptions)]
    shown = {param.name: param.default for param in params if param.show_default}
    assert shown == {"target": "x86-64", "calib_method": "entropy", "percentile": 99.99, "calib_seed": 0,
                     "cache_dir": ".kiln-cache", "schedule": "default", "verify": True}
    assert all(raw_defaults(CompileOptions)[key] == value for key, value in shown.items())
    read = from_raw(CompileOptions, {**{param.name: param.default for param in params}, "output": "m.kiln"})
    assert read == CompileOptions(resolve("x86-64"), Path("m.kiln"))


def test_the_flags_defaults_are_the_fields_defaults():
    received = []

    @click.command()
    @neural_quantize_options
    def command(quantize_options: QuantizeOptions):
        received.append(quantize_options)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 0, result.output
    assert received == [QuantizeOptions()] == [from_raw(QuantizeOptions, {})]
    CliRunner().invoke(command, ["--calib-method", "minmax", "--keep-float", "first,last", "--exclude",
                                               "Add", "--calib-samples", "5"])
    assert received[1] == QuantizeOptions(observers=ObserverSettings(CalibMethod.MINMAX), sampling=Sampling(samples=5), exclude=("Add",),
                                          keep_float=frozenset(KeepFloat))


def test_the_fingerprint_leaves_out_exactly_the_fields_marked_not_part_of_the_build(tmp_path):
    def not_built(cls):
        return {f.name for f in dataclasses.fields(cls) if not part_of_the_build(f)}

    assert not_built(QuantizeOptions) == {"cache_dir"} and not_built(CompileOptions) == {"output"}
    base = CompileOptions(resolve("x86-64"), tmp_path / "a.kiln")
    moved = dataclasses.replace(base, output=tmp_path / "b.kiln",
                                quantize=QuantizeOptions(cache_dir=str(tmp_path / "cache")))
    assert fingerprint(DIGITS_CNN, base) == fingerprint(DIGITS_CNN, moved)
    assert fingerprint(DIGITS_CNN, base) != fingerprint(DIGITS_CNN, dataclasses.replace(
        base, quantize=QuantizeOptions(sampling=Sampling(seed=1))))


def test_a_library_error_names_the_setting_and_the_cli_shows_the_flag(tmp_path, cli_runner):
    with pytest.raises(SettingError, match="^max_accuracy_drop needs labeled evaluation data: give eval ") as error:
        QuantizeOptions(max_accuracy_drop=1.0)
    assert error.value.exit_code == InputError.exit_code
    with pytest.raises(SettingError, match=r"^percentile 101.0: give a value in \(50, 100\]"):
        ObserverSettings(percentile=101.0)

    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), "-o", str(tmp_path / "o.kiln"),
                                     "--max-accuracy-drop", "1"])
    assert result.exit_code == InputError.exit_code
    assert "error: --max-accuracy-drop needs labeled evaluation data: give --eval DATA.npz" in result.stderr
    result = cli_runner.invoke(cli, ["quantize", str(DIGITS_CNN), "--calib", "c.npz", "-o", str(tmp_path / "q.onnx"),
                                     "--calib-samples", "0", "--json"])
    assert result.exit_code == InputError.exit_code and '"error": "--calib-samples 0: give a positive' in result.stdout


def test_kiln_toml_names_the_setting_by_its_key(tmp_path):
    config = tmp_path / "kiln.toml"
    config.write_text(f'[artifact.a]\nmodel = "{DIGITS_CNN}"\ncalib_samples = 0\n')
    with pytest.raises(InputError, match=r"\[artifact.a\]: calib_samples 0: give a positive number"):
        read_config(config)
    config.write_text(f'[artifact.a]\nmodel = "{DIGITS_CNN}"\nkeep_float = "middle"\neval = "t.npz"\n')
    with pytest.raises(InputError, match="keep_float 'middle': use first, last or first,last"):
        read_config(config)
    config.write_text(f'[artifact.a]\nmodel = "{DIGITS_CNN}"\ncalib_seed = 3\neval = "t.npz"\ncache_dir = "c"\n')
    (item,) = read_config(config)
    assert item.options.quantize == QuantizeOptions(sampling=Sampling(seed=3), eval=tmp_path / "t.npz", cache_dir=str(tmp_path / "c"))


def test_an_image_spec_takes_its_keys_and_defaults_from_the_fields(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("")
    assert ImageSpec.from_toml(spec) == ImageSpec()
    spec.write_text('crop = 224\nlayout = "NHWC"\n')
    assert ImageSpec.from_toml(spec) == ImageSpec(crop=(224, 224), layout=Layout.NHWC)
    spec.write_text("std = [0.0]\n")
    with pytest.raises(InputError, match=r"image spec .*: std and scale must be non-zero"):
        ImageSpec.from_toml(spec)
    spec.write_text("size = 3\n")
    with pytest.raises(InputError, match="unknown keys size; known: channels, crop, layout, mean, resize, scale, std"):
        ImageSpec.from_toml(spec)


def _symbolic_model(tmp_path):
    """The digits CNN with a free image size as well as a free batch (a free batch alone gets a default range)."""
    import onnx

    model = onnx.load(str(DIGITS_CNN))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "size"
    onnx.save(model, str(tmp_path / "m.onnx"))
    return tmp_path / "m.onnx"


def test_a_setting_reads_as_a_field_a_flag_or_a_key(tmp_path, cli_runner):
    model = _symbolic_model(tmp_path)
    with pytest.raises(SettingError) as error:  # Python: the field
        compile_model(model, CompileOptions(resolve("x86-64"), tmp_path / "a.kiln"))
    assert error.value.owner is ImportOptions
    assert "Pin them with input_shapes, e.g. input_shapes input:1x1x1x1" in str(error.value)
    assert as_flags(error.value).endswith("Pin them with --input-shape, e.g. --input-shape input:1x1x1x1")
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "b.kiln")])  # the CLI: the flag
    assert result.exit_code == InputError.exit_code
    assert "Pin them with --input-shape, e.g. --input-shape input:1x1x1x1" in result.stderr
    (tmp_path / "kiln.toml").write_text('[artifact.a]\nmodel = "m.onnx"\n')  # kiln.toml: the key
    result = cli_runner.invoke(cli, ["build", "--config", str(tmp_path / "kiln.toml"), "--json"])
    assert result.exit_code == InputError.exit_code
    assert "Pin them with input_shapes, e.g. input_shapes input:1x1x1x1" in result.stdout


def test_int8_without_calibration_data_names_the_calib_setting(tmp_path, cli_runner):
    options = CompileOptions(resolve("x86-64"), tmp_path / "a.kiln", ImportOptions({"input": (1, 1, 8, 8)}),
                             precision=Precision.INT8)
    with pytest.raises(SettingError, match="^INT8 needs calibration data for a neural model: add calib DATA"):
        compile_model(DIGITS_CNN, options)
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:1x1x8x8", "--int8",
                                     "-o", str(tmp_path / "b.kiln")])
    assert result.exit_code == InputError.exit_code and "add --calib DATA" in result.stderr


def test_kiln_toml_values_are_checked_by_the_fields_parsers(tmp_path):
    config = tmp_path / "kiln.toml"
    for line, message in [('precision = "int4"', "precision 'int4': use fp32 or int8"),
                          ('schedule = "fast"', "schedule 'fast': use none or default"),
                          ("targets = []", "targets []: give a non-empty list of preset names"),
                          ("target = 3", "target 3: give a preset name"),
                          ("trust_pickle = 1", "trust_pickle 1: give true or false"),
                          ('input_shapes = "1x3"', "input_shapes '1x3': give a table of input name -> dims"),
                          ('input_shapes = { input = "1xA" }', "input = '1xA' is not dims like"),
                          ("output = 'x'", "unknown key(s) output")]:
        config.write_text(f'[artifact.a]\nmodel = "m.onnx"\n{line}\n')
        with pytest.raises(InputError, match=__import__("re").escape(message)):
            read_config(config)
    config.write_text('[defaults]\noutput_dir = "out"\n[artifact.a]\nmodel = "m.onnx"\ntargets = ["x86-64", "x86-vnni"]\n'
                      'input_shapes = { input = "1x1x8x8" }\nparams = "p"\ntrust_pickle = true\nrecords = "r"\n')
    first, second = read_config(config)
    assert first.model == tmp_path / "m.onnx" and first.options.output == tmp_path / "out" / "a-x86-64.kiln"
    assert second.options.target == resolve("x86-vnni")
    assert first.options.imports == ImportOptions({"input": (1, 1, 8, 8)}, tmp_path / "p", True)
    assert first.options.records == tmp_path / "r"
