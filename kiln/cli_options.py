"""Shared pieces of the `kiln` command line: typed option parsing, --json output, error-to-exit-code mapping."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, TypeVar

import click

from kiln.errors import BROKEN_PIPE_EXIT_CODE, EXIT_CODES, KilnError, SettingError
from kiln.progress import QUIET, Advance, Progress
from kiln.settings import as_flags

T = TypeVar("T")
EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in sorted(EXIT_CODES.items()))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for CI).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads to use [default: all cores].")


def remote_options(doing: str) -> Callable:
    """--rpc, --rpc-tracker and --rpc-key (what `doing` does remotely); the command receives them as one `remote`:
    a kiln.remote.session.Remote, or None when none is given."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        @handles_errors  # the options are checked here, outside the command's own handles_errors
        def wrapper(*args, rpc: str | None, rpc_tracker: str | None, rpc_key: str | None, **kwargs):
            from kiln.remote.session import Address, Remote

            remote = None
            if rpc or rpc_tracker or rpc_key:
                remote = Remote(server=Address.parse(rpc, "--rpc") if rpc else None,
                                tracker=Address.parse(rpc_tracker, "--rpc-tracker") if rpc_tracker else None,
                                key=rpc_key or "")
            return command(*args, remote=remote, **kwargs)

        options = [
            click.option("--rpc", metavar="HOST:PORT", default=None,
                         help=f"{doing} on this RPC server (`kiln rpc-server` on the device) instead of here."),
            click.option("--rpc-tracker", metavar="HOST:PORT", default=None,
                         help=f"{doing} on a free server of this RPC tracker (`kiln rpc-tracker`), one of those "
                              "registered under --rpc-key."),
            click.option("--rpc-key", metavar="KEY", default=None,
                         help="The servers' key (kiln rpc-server --key): required with --rpc-tracker, and with --rpc "
                              "for a server started with a key."),
        ]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def settings_options(cls: type, name: str, only: Collection[str] | None = None,
                     defaults: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None) -> Callable:
    """Add the click options generated from cls's settings (kiln.settings; only: these keys); the command receives
    them as one typed cls, as its argument `name`. defaults: for a key given no value, its raw value computed from
    the command's other arguments (compile's --output from MODEL)."""
    from kiln.settings import click_options, from_raw, keys

    def decorate(command: Callable) -> Callable:
        names = keys(cls, only)

        @functools.wraps(command)
        @handles_errors  # the options are checked here, outside the command's own handles_errors
        def wrapper(*args, **kwargs):
            raw = {key: kwargs.pop(key) for key in names}
            for key, compute in (defaults or {}).items():
                if raw[key] is None:
                    raw[key] = compute(kwargs)
            kwargs[name] = from_raw(cls, raw)
            return command(*args, **kwargs)

        for option in reversed(click_options(cls, only)):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def compile_options(command: Callable) -> Callable:
    """`kiln compile`'s options, generated from CompileOptions (its ImportOptions and QuantizeOptions included);
    the command receives them as one typed `options`."""
    from kiln.pipeline import CompileOptions

    return settings_options(CompileOptions, "options",
                            defaults={"output": lambda kwargs: Path(kwargs["model"].stem + ".kiln")})(command)


def import_options(*only: str) -> Callable:
    """The --input-shape/--params/--trust-pickle options (only: these keys), generated from ImportOptions; the
    command receives them as one typed `imports`."""
    from kiln.compiler.frontends import ImportOptions

    return settings_options(ImportOptions, "imports", only or None)


def neural_quantize_options(command: Callable) -> Callable:
    """Add the neural INT8 options, generated from QuantizeOptions' settings; the command receives them as one
    typed `quantize_options`."""
    from kiln.quantization.config import QuantizeOptions

    return settings_options(QuantizeOptions, "quantize_options")(command)


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
        except BrokenPipeError:  # the reader of our output went away (`kiln inspect m.onnx | head`): nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(BROKEN_PIPE_EXIT_CODE)
        except SettingError as exc:  # the library names settings; the command line calls them flags
            code, message = exc.exit_code, as_flags(exc)
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


def in_worker(work: Callable[[], T], doing: str, cleanup: Callable[[], None] = lambda: None) -> T:
    """work() in kiln's worker process (kiln.isolation) when this is the `kiln` command (main() passes the limits
    as the context's obj); in this process when the CLI is called another way (click's CliRunner in tests)."""
    from kiln.isolation import run_isolated

    limits = click.get_current_context().find_root().obj
    return work() if limits is None else run_isolated(work, limits, doing, cleanup)


def exit_on_signals() -> None:
    """SIGINT and SIGTERM end the command with one line and the documented exit code, 128 + signum. As SystemExit,
    not KeyboardInterrupt (which click reports as "Aborted!", exit 1), so that `finally` blocks still run: an
    interrupted build removes its staging directory."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)


def _stop(signum: int, frame: Any) -> None:
    click.echo(f"error: stopped by {signal.Signals(signum).name}", err=True)
    sys.exit(128 + signum)


class TerminalProgress(Progress):
    """Steps as `kiln: ...` lines on stderr; bars only for a person at a terminal (see `interactive`)."""

    def __init__(self, bars: bool):
        self.bars = bars

    def step(self, message: str) -> None:
        click.echo(f"kiln: {message}", err=True)

    @contextlib.contextmanager
    def bar(self, label: str, total: int) -> Iterator[Advance]:
        if not self.bars:
            yield lambda done: None
            return
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield bar.update


def progress_reporter(quiet: bool) -> Progress:
    return QUIET if quiet else TerminalProgress(bars=interactive(quiet))
