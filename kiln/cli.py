"""The `kiln` command: parse arguments into typed options, call the library, map errors to exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli_options import (EXIT_CODE_HELP, compile_options, echo_json, exit_on_signals, handles_errors,
                              import_options, in_worker, json_option, neural_quantize_options, progress_reporter,
                              remote_options)
from kiln.cli_runtime import bench_command, rpc_server_command, run_command
from kiln.errors import OUT_OF_DATE_EXIT_CODE

if TYPE_CHECKING:
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import CompileOptions
    from kiln.quantization.config import QuantizeOptions
    from kiln.remote.session import Remote


@click.group(epilog=EXIT_CODE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kiln-ml")
def cli() -> None:
    """Compile trained models into fast, verified artifacts.

    \b
    Typical use:
      kiln inspect model.onnx
      kiln compile model.onnx --input-shape input:1x3x224x224 --target host -o model.kiln
      kiln verify model.kiln --input x.npz
      kiln run model.kiln --input x.npz --output y.npz
      kiln bench model.kiln --vs onnxruntime
    """


cli.add_command(run_command)
cli.add_command(bench_command)
cli.add_command(rpc_server_command)


@cli.command("rpc-tracker", epilog=EXIT_CODE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (0.0.0.0: every interface, for servers and clients on other machines).")
@click.option("--port", type=click.IntRange(0, 65535), default=9190, show_default=True,
              help="The port to listen on (0: any free one; the line on stdout says which).")
@handles_errors
def rpc_tracker_command(host: str, port: int):
    """Pool RPC servers by key and hand each client a free one (TVM's tracker).

    Servers join with `kiln rpc-server --tracker HOST:PORT --key KEY`; `kiln tune --rpc-tracker` measures
    on every server of a key at once, `kiln run/bench --rpc-tracker` take one.

    \b
    Example:
      kiln rpc-tracker --host 0.0.0.0 --port 9190
    """
    from kiln.remote.tracker import serve

    serve(host, port, lambda bound: click.echo(f"kiln rpc-tracker listening on {host}:{bound}"))


@cli.command("compile", epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@compile_options  # every setting of CompileOptions: --target, --output, --input-shape, --int8, --calib, ...
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
@handles_errors
def compile_command(model: Path, options: CompileOptions, quiet: bool, as_json: bool):
    """Compile MODEL (ONNX, MXNet, or a tree ensemble) for a target into an artifact directory.

    The artifact holds manifest.json, the compiled library and the source model; it is written
    completely or not at all, and replaces an existing artifact only on success.

    \b
    Example:
      kiln compile examples/digits_cnn/digits_cnn.onnx --input-shape input:1x1x8x8 -o digits.kiln
    """
    import kiln

    from kiln.compiler.artifact import remove_abandoned_stages

    progress = progress_reporter(quiet or as_json)
    result = in_worker(lambda: kiln.compile(model, options, progress), f"compiling {model}",
                       cleanup=lambda: remove_abandoned_stages(options.output))
    manifest = result.manifest
    quantization = ({**manifest.quantization.to_json(), "report": result.report.to_json()}
                    if manifest.quantization and result.report else None)
    integer = manifest.integer_kernels.to_json() if manifest.integer_kernels else None
    checked = manifest.verification
    if as_json:
        echo_json({"artifact": str(result.path), "target": options.target.name,
                    **({"quantization": quantization} if quantization else {}),
                    **({"integer_kernels": integer} if integer else {}),
                    **({"verification": checked.to_json()} if checked else {})})
    else:
        if quantization:
            from kiln.quantization.report import table

            click.echo(table(quantization["report"]))
        if integer:
            _echo_integer_kernels(integer)
        if checked:
            click.echo(f"  agrees with {checked.reference}: {checked.difference:.3g} {checked.unit} at most "
                       f"(tolerance {checked.tolerance:g}), on {checked.inputs}")
        click.echo(f"compiled {model} for {options.target.name} -> {result.path}")


def _echo_integer_kernels(integer: dict[str, Any]) -> None:
    ops = ", ".join(f"{op} \u00d7{count}" for op, count in integer["int8_by_op"].items())
    floats = len(integer["float_ops"])
    click.echo(f"  integer kernels: {integer['int8_ops']} quantized ops run int8 ({ops or 'none'}; dot product: "
               f"{integer['isa'] or 'none'}), {floats} stay{'s' if floats == 1 else ''} float")
    for entry in integer["float_ops"]:
        shape = " " + "x".join(str(d) for d in entry["shape"]) if "shape" in entry else ""
        stride = f" stride {entry['strides'][0]}" if "strides" in entry else ""
        click.echo(f"    float: {entry['op']}{shape}{stride}: {entry['reason']}")


@cli.command("quantize", epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", type=click.Path(path_type=Path), required=True,
              help="Calibration data: .npz/.npy keyed by input name, a folder of them, a folder of images "
                   "(with --image-spec), or CSV.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The QDQ ONNX model to write, e.g. model.int8.onnx.")
@click.option("--target", "-t", default="x86-64", show_default=True,
              help="Where the model will run: picks uint8 (x86) or int8 (ARM, CUDA) activations and 7-bit "
                   "weights on x86 without VNNI.")
@import_options("input_shapes")
@neural_quantize_options
@click.option("--quiet", "-q", is_flag=True, help="No progress messages or progress bar.")
@json_option
@handles_errors
def quantize_command(model: Path, calib: Path, output: Path, target: str, imports: ImportOptions, quiet: bool,
                     as_json: bool, quantize_options: QuantizeOptions):
    """Quantize a neural MODEL to a QDQ ONNX model (INT8) that ONNX Runtime and kiln compile run.

    Prints per-layer SQNR and, with --eval, float vs INT8 accuracy; with --max-accuracy-drop,
    fails with exit code 6 and writes nothing when INT8 loses more.

    \b
    Example:
      kiln quantize examples/digits_cnn/digits_cnn.onnx --calib examples/digits_cnn/digits_calib.npz \\
        --eval examples/digits_cnn/digits_test.npz --max-accuracy-drop 0.5 -o digits.int8.onnx
    """
    import kiln
    from kiln.quantization.report import table

    def quantize() -> tuple[dict[str, Any], dict[str, Any]]:  # what crosses back from the worker: JSON only
        quantized = kiln.quantize(model, calib, output, target=kiln.target(target), options=quantize_options,
                                  imports=imports, progress=progress_reporter(quiet or as_json)).quantized
        return quantized.summary().to_json(), quantized.report.to_json()

    summary, report = in_worker(quantize, f"quantizing {model}")
    if as_json:
        echo_json({"output": str(output), "quantization": summary, "report": report})
        return
    click.echo(table(report))
    click.echo(f"quantized {model} -> {output}")


@cli.command("verify", epilog=EXIT_CODE_HELP)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="Check on these inputs (.npz by input name, or .npy for a single input) [default: seeded random "
                   "inputs shaped by the artifact, integer ones within the tables they index].")
@json_option
@handles_errors
def verify_command(artifact: Path, input_path: Path | None, as_json: bool):
    """Run a neural ARTIFACT and ONNX Runtime on the same inputs and compare, as `kiln compile` does before it
    writes an artifact: FP32 within 1e-4 of the largest output, INT8 within one output step of ONNX Runtime
    running the artifact's own QDQ model (or as far as ONNX Runtime's own runs of it, with and without its
    integer fusions, are apart, where that is more: deep models). Exit 3 when they differ.

    \b
    Example:
      kiln verify digits.kiln --input examples/digits_cnn/digits_test.npz
    """
    import kiln

    checked = kiln.verify(artifact, input_path)
    if as_json:
        echo_json({"artifact": str(artifact), **checked.to_json()})
        return
    click.echo(f"{artifact} agrees with {checked.reference}: {checked.difference:.3g} {checked.unit} at most "
               f"(tolerance {checked.tolerance:g}), on {checked.inputs}")


@cli.command("inspect", epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@import_options()
@json_option
@handles_errors
def inspect_command(model: Path, imports: ImportOptions, as_json: bool):
    """Show a model's inputs, outputs, ops and anything kiln cannot compile; or an artifact's manifest.

    \b
    Example:
      kiln inspect examples/digits_cnn/digits_cnn.onnx
    """
    import kiln
    from kiln.compiler.manifest import Manifest

    described = kiln.inspect(model, imports) if model.is_dir() else in_worker(lambda: kiln.inspect(model, imports),
                                                                               f"reading {model}")
    report = described.to_json()
    if isinstance(described, Manifest):
        report = {"kind": "artifact", "path": str(model), **report}
    if as_json:
        echo_json(report)
        return
    from kiln.compiler.graph import TensorSpec

    click.echo(f"{model}: {report['kind']}" + (f", opset {report['opset']}, {report['nodes']} nodes, "
                                               f"{report['parameters']:,} parameters" if "opset" in report else ""))
    for role in ("inputs", "outputs"):
        for spec in report.get(role, []):
            click.echo(f"  {role[:-1]:6} {TensorSpec.from_json(spec).describe()}")
    for key in ("target", "precision", "backend"):
        if key in report:
            value = report[key]["name"] if isinstance(report[key], dict) else report[key]
            click.echo(f"  {key}: {value}")
    if "batch_functions" in report:
        click.echo("  batch sizes compiled (a batch runs as a sum of them): "
                   + ", ".join(sorted(report["batch_functions"], key=int, reverse=True)))
    if "length_functions" in report:
        lengths = report["length_functions"]
        click.echo("  lengths compiled (a shorter input is padded with zeros to the next): "
                   + ", ".join(sorted(lengths, key=int)) + "; batch sizes: "
                   + ", ".join(sorted(next(iter(lengths.values())), key=int, reverse=True)))
    if "integer_kernels" in report:
        _echo_integer_kernels(report["integer_kernels"])
    if "tree" in report:
        tree = report["tree"]
        click.echo(f"  trees: {tree['num_trees']}, max depth {tree['max_depth']}, {tree['num_feature']} features, "
                   f"{tree['num_class']} class{'es' if tree['num_class'] > 1 else ''} ({tree['task']}, "
                   f"output {tree['output']}, {tree['postprocessor']}), categorical splits: "
                   f"{'yes' if tree['categorical'] else 'no'}")
    if "ops" in report:
        click.echo("  ops: " + ", ".join(f"{op} \u00d7{n}" for op, n in report["ops"].items()))
        unsupported = report["unsupported"]
        click.echo("  unsupported: " + (", ".join(f"{op} \u00d7{len(nodes)} ({', '.join(nodes[:5])})"
                                               for op, nodes in unsupported.items()) or "none"))


@cli.command("targets", epilog=EXIT_CODE_HELP)
@json_option
@handles_errors
def targets_command(as_json: bool):
    """List the target presets: name, int8 instruction set, and what they are for."""
    from kiln.targets import PRESETS

    if as_json:
        echo_json([preset.to_json() for preset in PRESETS.values()])
        return
    click.echo(f"{'name':16} {'int8 isa':12} description")
    for preset in PRESETS.values():
        click.echo(f"{preset.name:16} {preset.int8_isa.value:12} {preset.description}")
    click.echo(f"{'host':16} {'(detected)':12} this machine's CPU, detected at compile time")


@cli.command("tune", epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="x86-64", show_default=True,
              help="Target preset or `host`; the machine that measures the candidates (this one, or the RPC "
                   "servers) must run it.")
@click.option("--trials", type=click.IntRange(min=1), default=256, show_default=True,
              help="Candidate schedules to measure, over all kernels together.")
@click.option("--output", "-o", "records", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Records folder to create or add to; pass it to `kiln compile --records`.")
@import_options("input_shapes", "params")
@remote_options("Measure the candidates")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages or progress bar.")
@json_option
@handles_errors
def tune_command(model: Path, target: str, trials: int, records: Path, imports: ImportOptions,
                 remote: Remote | None, quiet: bool, as_json: bool):
    """Search faster schedules for a neural MODEL's kernels with MetaSchedule, into a records folder.

    Records are keyed by kernel and target, so a partial tuning still helps and models that share
    layers share records; each kernel's default schedule is recorded too, so compiling with
    --records never picks a slower one. Winograd convs get kiln's rule variants only: MetaSchedule's
    search spent most of the time on them and rarely beat the rule.

    With --rpc-tracker and --rpc-key, candidates are built here (linked for the target) and measured on
    every server of the key at once: tune on the device the artifact is for. A server that drops out
    costs only the candidates it was measuring, which go to the others; tuning finishes with what it has.

    \b
    Examples:
      kiln tune model.onnx --input-shape input:1x3x224x224 --trials 512 -o records/
      kiln compile model.onnx --input-shape input:1x3x224x224 --records records/ -o model.kiln
      kiln tune model.onnx --input-shape input:1x3x224x224 --target aarch64 \\
        --rpc-tracker 10.0.0.5:9190 --rpc-key rpi4 -o records/
    """
    import kiln

    report = kiln.tune(model, records, target=kiln.target(target), trials=trials, imports=imports,
                       progress=progress_reporter(quiet or as_json), remote=remote)
    if as_json:
        echo_json({"records": str(records), **report.to_json()})
        return
    click.echo(f"tuned {report.tasks} kernels ({report.tasks - report.searched} in kiln's rule variants only) "
               f"with {report.trials} trials in {report.seconds:.0f} s; "
               f"{report.improved} beat the default schedules -> {records}")
    if report.remote:
        click.echo(f"  measured on {report.servers} server{'s' if report.servers != 1 else ''}: {report.remote}")
    for lost in report.lost:
        click.echo(f"  lost {lost}; its candidates were measured elsewhere or counted as failed")
    if report.failed:
        click.echo(f"  {report.failed} of the searched candidates failed to build or measure; the records hold the "
                   "rest")


@cli.command("build", epilog=EXIT_CODE_HELP)
@click.argument("names", nargs=-1)
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), default=Path("kiln.toml"),
              show_default=True, help="The build file declaring the artifacts.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Artifacts to build at once.")
@click.option("--check", is_flag=True, help=f"Build nothing; exit {OUT_OF_DATE_EXIT_CODE} if anything is out of date.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
@handles_errors
def build_command(names: tuple[str, ...], config_path: Path, jobs: int, check: bool, quiet: bool, as_json: bool):
    """Build the artifacts declared in kiln.toml (or only NAMES) that are out of date.

    An artifact is up to date when its manifest records the same fingerprint: the content hashes
    of its model and calibration files, its settings, its target, and the versions of kiln, TVM
    and treelite/tl2cgen. Rebuilding the same inputs gives byte-identical artifacts.

    \b
    kiln.toml:
      [defaults]
      output_dir = "build"
      [artifact.digits]
      model = "digits_cnn/digits_cnn.onnx"
      input_shapes = { input = "1x1x8x8" }
      targets = ["x86-64", "x86-vnni"]

    \b
    Examples:
      kiln build                 # everything that is out of date
      kiln build digits -j 2     # one artifact, two targets at once
      kiln build --check --json  # for CI: what is stale, exit 7 if anything
    """
    import kiln

    progress = progress_reporter(quiet or as_json)
    report = in_worker(lambda: kiln.build(config_path, names, jobs=jobs, check=check, progress=progress),
                       f"building {config_path}")
    if as_json:
        echo_json(report.to_json())
    else:
        for entry in report.stale:
            click.echo(f"out of date: {entry['artifact']} ({entry['reason']})")
        for entry in report.failed:
            click.echo(f"failed: {entry['artifact']}: {entry['error']}", err=True)
        click.echo(f"built {len(report.built)}, up to date {len(report.skipped)}, "
                   f"out of date {len(report.stale)}, failed {len(report.failed)}")
    if report.failed:
        sys.exit(report.failed[0]["exit_code"])
    if report.stale:
        sys.exit(OUT_OF_DATE_EXIT_CODE)


def main() -> None:
    from kiln.isolation import Limits

    exit_on_signals()
    cli(obj=Limits.from_environment())
