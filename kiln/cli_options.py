"""Shared pieces of the `kiln` command line: typed option parsing, --json output, error-to-exit-code mapping."""

from __future__ import annotations

import functools
import json
import os
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
        from kiln.compiler.graph import parse_dims

        name, sep, dims = value.rpartition(":")
        shape = parse_dims(dims)
        if not sep or not name or shape is None:
            self.fail(f"{value!r} is not NAME:DIMS with positive integer dims, e.g. input:1x3x224x224", param, ctx)
        return name, shape


def input_shapes_dict(pairs: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, tuple[int, ...]]:
    return dict(pairs)


input_shape_option = click.option(
    "--input-shape", "input_shapes", type=InputShape(), multiple=True,
    help="Pin an input's shape, e.g. input:1x3x224x224 (repeat for several inputs). "
         "Needed when the model has symbolic dims such as a free batch size.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for CI).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads to use [default: all cores].")
params_option = click.option(
    "--params", type=click.Path(path_type=Path), default=None,
    help="The weights of an MXNet model (its .params file); MODEL is then its symbol JSON.")
trust_pickle_option = click.option(
    "--trust-pickle", is_flag=True,
    help="Load pickle/joblib models (they run code while loading: only for files you trust), and skops files "
         "holding types kiln does not trust by default.")


_QUANTIZE_OPTIONS = (
    click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default="entropy",
                 show_default=True, help="How activation ranges are chosen from the calibration data."),
    click.option("--percentile", type=float, default=99.99, show_default=True,
                 help="For --calib-method percentile: the share of |activation| values kept in range, in percent."),
    click.option("--calib-samples", type=click.IntRange(min=1), default=None,
                 help="Use this many calibration samples, chosen with --calib-seed [default: all]."),
    click.option("--calib-seed", type=int, default=0, show_default=True, help="Seed for choosing --calib-samples."),
    click.option("--image-spec", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 help="TOML preprocessing for a --calib folder of images: resize, crop, scale, mean, std, "
                      "layout (NCHW/NHWC), channels (RGB/BGR/L)."),
    click.option("--exclude", multiple=True,
                 help="Keep nodes in float: a node name, an op type (e.g. Add), or a regex over node names. "
                      "Repeat for several."),
    click.option("--keep-float", default="", help="Keep the first and/or last layer in float: first, last or first,last."),
    click.option("--eval", "eval_data", type=click.Path(path_type=Path), default=None,
                 help="Evaluation data (.npz: the inputs plus a `labels` array): float vs INT8 top-1 "
                      "(classification) or RMSE (regression) in the report."),
    click.option("--max-accuracy-drop", type=float, default=None,
                 help="Fail (exit 6, nothing written) when INT8 loses more than this: top-1 points, or RMSE "
                      "increase in percent. Needs --eval."),
    click.option("--auto-exclude", is_flag=True,
                 help="When the gate fails, keep the most sensitive layers in float, one at a time, until it "
                      "passes (at most 8); the manifest lists them."),
    click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=".kiln-cache",
                 show_default=True, help="Calibration cache folder: ranges by hash of model, data and settings; "
                                         "a rerun with the same key skips calibration."),
)


def neural_quantize_options(command: Callable) -> Callable:
    """Add the neural INT8 options; the command receives them as one `quantize_args` dict."""
    from kiln.quantize.config import RAW_DEFAULTS

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        kwargs["eval"] = kwargs.pop("eval_data")
        kwargs["quantize_args"] = {name: kwargs.pop(name) for name in RAW_DEFAULTS}
        return command(*args, **kwargs)

    for option in reversed(_QUANTIZE_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def quantize_options_from(args: dict[str, Any], quiet: bool):
    from kiln.quantize.config import quantize_options

    return quantize_options(args, progress_bar=interactive(quiet))


def interactive(quiet: bool) -> bool:
    """Progress bars only for a person at a terminal: not with --quiet, not in CI, not when piped."""
    return not quiet and sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def handles_errors(command: Callable) -> Callable:
    """Print KilnErrors as one clear line (and as JSON with --json) and exit with their code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        as_json = kwargs.get("as_json", False)
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except KilnError as exc:
            code, message = exc.exit_code, str(exc)
        except Exception as exc:  # anything else is a bug: show the traceback for the report
            traceback.print_exc()
            code, message = 1, f"internal error: {type(exc).__name__}: {exc} (please report this)"
        if as_json:
            echo_json({"error": message, "exit_code": code})
        click.echo(f"error: {message}", err=True)
        sys.exit(code)

    return wrapper


def progress_printer(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else (lambda message: click.echo(f"kiln: {message}", err=True))
