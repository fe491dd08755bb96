"""The `kiln` command: parse arguments into typed options, call the library, map errors to exit codes."""

from __future__ import annotations

import functools
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

from kiln.errors import EXIT_CODES, KilnError

EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in sorted(EXIT_CODES.items()))


class InputShape(click.ParamType):
    """`name:1x3x224x224` -> ("name", (1, 3, 224, 224))."""

    name = "NAME:DIMS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, sep, dims = value.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            self.fail(f"{value!r} is not NAME:DIMS with positive integer dims, e.g. input:1x3x224x224", param, ctx)
        return name, shape


def _input_shapes(pairs: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, tuple[int, ...]]:
    return dict(pairs)


input_shape_option = click.option(
    "--input-shape", "input_shapes", type=InputShape(), multiple=True,
    help="Pin an input's shape, e.g. input:1x3x224x224 (repeat for several inputs). "
         "Needed when the model has symbolic dims such as a free batch size.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for CI).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads to use [default: all cores].")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _handles_errors(command: Callable) -> Callable:
    """Print KilnErrors as one clear line (and as JSON with --json) and exit with their code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        as_json = kwargs.get("as_json", False)
        try:
            return command(*args, **kwargs)
        except KilnError as exc:
            code, message = exc.exit_code, str(exc)
        except Exception as exc:  # anything else is a bug: show the traceback for the report
            traceback.print_exc()
            code, message = 1, f"internal error: {type(exc).__name__}: {exc} (please report this)"
        if as_json:
            _echo_json({"error": message, "exit_code": code})
        click.echo(f"error: {message}", err=True)
        sys.exit(code)

    return wrapper


def _progress(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else (lambda message: click.echo(f"kiln: {message}", err=True))


@click.group(epilog=EXIT_CODE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kiln-ml")
def cli() -> None:
    """Compile trained models into fast, verified artifacts.

    \b
    Typical use:
      kiln inspect model.onnx
      kiln compile model.onnx --input-shape input:1x3x224x224 --target host -o model.kiln
      kiln run model.kiln --input x.npz --output y.npz
      kiln bench model.kiln --vs onnxruntime
    """


@cli.command("compile", epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="x86-64", show_default=True,
              help="Target preset (see `kiln targets`), `host`, or a TVM target as JSON.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Artifact directory to write [default: MODEL's name + .kiln in the current folder].")
@input_shape_option
@click.option("--int8", is_flag=True,
              help="Quantize to INT8 (neural graphs: calibrated QDQ; trees: threshold quantization).")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration data (.npz, .npy, CSV or a folder of them): INT8 ranges, tree branch statistics.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@json_option
@_handles_errors
def compile_command(model: Path, target: str, output: Path | None, input_shapes, int8: bool, calib: Path | None,
                    quiet: bool, as_json: bool):
    """Compile MODEL (ONNX) for a target into an artifact directory.

    The artifact holds manifest.json, the compiled library and the source model; it is written
    completely or not at all, and replaces an existing artifact only on success.

    \b
    Example:
      kiln compile examples/digits_cnn/digits_cnn.onnx --input-shape input:1x1x8x8 -o digits.kiln
    """
    from kiln.compiler.frontends import ImportOptions
    from kiln.compiler.pipeline import CompileOptions, Precision, compile_model
    from kiln.targets import resolve

    options = CompileOptions(resolve(target), output or Path(model.stem + ".kiln"),
                             ImportOptions(_input_shapes(input_shapes)),
                             precision=Precision.INT8 if int8 else Precision.FP32, calib=calib)
    path = compile_model(model, options, _progress(quiet or as_json))
    if as_json:
        _echo_json({"artifact": str(path), "target": options.target.name})
    else:
        click.echo(f"compiled {model} for {options.target.name} -> {path}")


@cli.command("run", epilog=EXIT_CODE_HELP)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), required=True,
              help="Inputs: an .npz with one array per input name (or an .npy for a single-input model).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the outputs to this .npz, one array per output name.")
@threads_option
@json_option
@_handles_errors
def run_command(artifact: Path, input_path: Path, output: Path | None, threads: int | None, as_json: bool):
    """Run an ARTIFACT on inputs from a file.

    \b
    Example:
      kiln run digits.kiln --input examples/digits_cnn/digits_test.npz --output logits.npz
    """
    import kiln
    from kiln.arrays import read_arrays, write_arrays

    predictor = kiln.load(artifact, threads=threads)
    single = predictor.inputs[0].name if len(predictor.inputs) == 1 else None
    outputs = predictor.run(read_arrays(input_path, single))
    if output:
        write_arrays(output, outputs)
    summary = {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in outputs.items()}
    if as_json:
        for name, array in outputs.items():
            summary[name]["file" if output else "values"] = str(output) if output else array.tolist()
        _echo_json({"outputs": summary})
        return
    for name, array in outputs.items():
        click.echo(f"{name}: {array.dtype.name}[{'x'.join(map(str, array.shape))}]")
        if not output:
            click.echo(f"{array}")
    if output:
        click.echo(f"wrote {output}")


@cli.command("inspect", epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@json_option
@_handles_errors
def inspect_command(model: Path, input_shapes, as_json: bool):
    """Show a model's inputs, outputs, ops and anything kiln cannot compile; or an artifact's manifest.

    \b
    Example:
      kiln inspect examples/digits_cnn/digits_cnn.onnx
    """
    from kiln.compiler.frontends import ImportOptions
    from kiln.inspection import inspect_path

    report = inspect_path(model, ImportOptions(_input_shapes(input_shapes)))
    if as_json:
        _echo_json(report)
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
    if "ops" in report:
        click.echo("  ops: " + ", ".join(f"{op} \u00d7{n}" for op, n in report["ops"].items()))
        unsupported = report["unsupported"]
        click.echo("  unsupported: " + (", ".join(f"{op} \u00d7{len(nodes)} ({', '.join(nodes[:5])})"
                                               for op, nodes in unsupported.items()) or "none"))


@cli.command("targets", epilog=EXIT_CODE_HELP)
@json_option
@_handles_errors
def targets_command(as_json: bool):
    """List the target presets: name, int8 instruction set, and what they are for."""
    from kiln.targets import PRESETS

    if as_json:
        _echo_json([preset.to_json() for preset in PRESETS.values()])
        return
    click.echo(f"{'name':16} {'int8 isa':12} description")
    for preset in PRESETS.values():
        click.echo(f"{preset.name:16} {preset.int8_isa:12} {preset.description}")
    click.echo(f"{'host':16} {'(detected)':12} this machine's CPU, detected at compile time")


@cli.command("bench", epilog=EXIT_CODE_HELP)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--vs", type=click.Choice(["onnxruntime"]), default=None,
              help="Also time this reference engine on the same inputs and threads, and print the ratio.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Rows per call [default: the artifact's compiled batch].")
@threads_option
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="Bench on these inputs (.npz) instead of random ones.")
@click.option("--seconds", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Time budget for the measured runs.")
@json_option
@_handles_errors
def bench_command(artifact: Path, vs: str | None, batch: int | None, threads: int | None,
                  input_path: Path | None, seconds: float, as_json: bool):
    """Measure latency (median, p90, p99) and throughput of an ARTIFACT.

    With --vs, the reference runs alternately with kiln on the same inputs, so both see the same
    machine load; the speedup is reference median / kiln median (above 1: kiln is faster).

    \b
    Example:
      kiln bench digits.kiln --vs onnxruntime --threads 2
    """
    from kiln.arrays import read_arrays
    from kiln.bench import BenchOptions, bench

    inputs = read_arrays(input_path) if input_path else None
    options = BenchOptions(batch=batch, vs=vs, seconds=seconds, inputs=inputs,
                           **({"threads": threads} if threads else {}))
    result = bench(artifact, options)
    if as_json:
        _echo_json(result)
        return
    click.echo(f"{artifact}: batch {result['batch']}, {result['threads']} threads")
    click.echo(f"  {'engine':12} {'median ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'rows/s':>12}")
    for engine in ["kiln"] + ([vs] if vs else []):
        t = result[engine]
        click.echo(f"  {engine:12} {t['median_ms']:10.3f} {t['p90_ms']:10.3f} {t['p99_ms']:10.3f} "
                   f"{t['throughput']:12.1f}")
    if vs:
        click.echo(f"  speedup vs {vs}: {result['speedup']:.2f}x (max |diff| {result['max_abs_diff']:.2e})")


def main() -> None:
    # Turn SIGTERM into an exception so an interrupted build cleans up its staging directory.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    cli()
