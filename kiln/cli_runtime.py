"""The commands that need only an artifact and TVM's or tl2cgen's runtime: `kiln run` and `kiln bench`.

The full `kiln` command adds them to its group; the runtime-only install (kiln-runtime) runs this module's
group, which offers only them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli_options import (EXIT_CODE_HELP, echo_json, exit_on_signals, handles_errors, json_option, remote_options,
                              threads_option)

if TYPE_CHECKING:
    from kiln.compiler.backends.tvm.profile import Profile
    from kiln.remote.session import Remote


@click.group(epilog=EXIT_CODE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kiln-runtime")
def runtime_cli() -> None:
    """Run and time kiln artifacts (the runtime-only install: compiling needs the full kiln-ml).

    \b
    Typical use:
      kiln run model.kiln --input x.npz --output y.npz
      kiln bench model.kiln
    """


@click.command("run", epilog=EXIT_CODE_HELP)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), required=True,
              help="Inputs: an .npz with one array per input name (or an .npy for a single-input model).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the outputs to this .npz, one array per output name.")
@threads_option
@remote_options("Run it")
@json_option
@handles_errors
def run_command(artifact: Path, input_path: Path, output: Path | None, threads: int | None, remote: Remote | None,
                as_json: bool):
    """Run an ARTIFACT on inputs from a file, here or on a remote device (--rpc, --rpc-tracker).

    Remotely, the artifact is checked here (manifest, sha256, machine), its library is uploaded to the server
    and run there, and the outputs come back.

    \b
    Examples:
      kiln run digits.kiln --input examples/digits_cnn/digits_test.npz --output logits.npz
      kiln run arm.kiln --input x.npz --rpc 192.168.1.20:9090
    """
    import kiln
    from kiln.arrays import read_arrays, write_arrays

    if remote:
        from kiln.remote.predictor import load

        predictor = load(artifact, remote, threads)
        click.echo(f"running on {predictor.session.where}", err=True)
    else:
        predictor = kiln.load(artifact, threads=threads)
    single = predictor.inputs[0].name if len(predictor.inputs) == 1 else None
    outputs = predictor.run(read_arrays(input_path, single))
    if output:
        write_arrays(output, outputs)
    summary = {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in outputs.items()}
    if as_json:
        for name, array in outputs.items():
            summary[name]["file" if output else "values"] = str(output) if output else array.tolist()
        echo_json({"outputs": summary})
        return
    for name, array in outputs.items():
        click.echo(f"{name}: {array.dtype.name}[{'x'.join(map(str, array.shape))}]")
        if not output:
            click.echo(f"{array}")
    if output:
        click.echo(f"wrote {output}")


@click.command("bench", epilog=EXIT_CODE_HELP)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--vs", type=click.Choice(["onnxruntime", "native"]), default=None,
              help="Also time this reference engine on the same inputs and threads, and print the ratio "
                   "(native: the tree model's own library, XGBoost, LightGBM or scikit-learn).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Rows per call [default: the artifact's compiled batch].")
@click.option("--length", type=click.IntRange(min=1), default=None,
              help="The sequence length of an artifact compiled for a length range [default: its longest].")
@threads_option
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="Bench on these inputs (.npz) instead of random ones.")
@click.option("--seconds", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Time budget for the measured runs.")
@click.option("--profile", is_flag=True, help="Also show where the time goes: each kernel's share (TVM artifacts), "
                                           "over another --seconds of runs.")
@remote_options("Time it")
@json_option
@handles_errors
def bench_command(artifact: Path, vs: str | None, batch: int | None, length: int | None, threads: int | None,
                  input_path: Path | None, seconds: float, profile: bool, remote: Remote | None, as_json: bool):
    """Measure latency (median, p90, p99) and throughput of an ARTIFACT.

    With --vs, the reference runs alternately with kiln on the same inputs, so both see the same
    machine load; the speedup is reference median / kiln median (above 1: kiln is faster).

    With --rpc or --rpc-tracker, kiln runs on the remote device and is timed there (no network in the
    timings); the reference of --vs still runs here, so its speedup compares two machines.

    \b
    Examples:
      kiln bench digits.kiln --vs onnxruntime --threads 2
      kiln bench arm.kiln --rpc-tracker 10.0.0.5:9190 --rpc-key rpi4
    """
    from kiln.arrays import read_arrays
    from kiln.bench import BenchOptions, bench

    inputs = read_arrays(input_path) if input_path else None
    options = BenchOptions(batch=batch, length=length, vs=vs, seconds=seconds, inputs=inputs,
                           profile=profile, threads=threads, remote=remote)
    result = bench(artifact, options)
    if as_json:
        echo_json(result.to_json())
        return
    threads_used = f"{result.threads} threads" if result.threads else "the server's default threads"
    click.echo(f"{artifact}: batch {result.batch}, {threads_used}" + (f", on {result.remote}" if result.remote else ""))
    if result.remote and vs:
        click.echo(f"  kiln ran on {result.remote}; {vs} ran here, on this machine: the speedup compares the two")
    if result.remote and not result.remote_checked:
        click.echo("  the server did not say what CPU it has (TVM's own server; kiln rpc-server does): "
                   "the artifact's target was not checked against it")
    click.echo(f"  {'engine':12} {'median ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'rows/s':>12}")
    timings = [("kiln", result.kiln)] + ([(vs, result.reference.timing)] if result.reference else [])
    for engine, t in timings:
        click.echo(f"  {engine:12} {t.median_ms:10.3f} {t.p90_ms:10.3f} {t.p99_ms:10.3f} {t.throughput:12.1f}")
    if result.reference:
        click.echo(f"  speedup vs {vs}: {result.reference.speedup:.2f}x "
                   f"(max |diff| {result.reference.max_abs_diff:.2e})")
    if result.profile is not None:
        _echo_profile(result.profile)


PROFILE_ROWS = 25


def _echo_profile(profile: Profile) -> None:
    rows = profile.kernels
    click.echo(f"  where the time goes (median per run of {profile.runs}; kernels and VM builtins):")
    click.echo(f"  {'ms':>9} {'share':>6} {'calls':>5}  kernel")
    for row in rows[:PROFILE_ROWS]:
        click.echo(f"  {row.ms:9.3f} {row.share:6.1%} {row.calls:5d}  {row.name}")
    if len(rows) > PROFILE_ROWS:
        rest = rows[PROFILE_ROWS:]
        click.echo(f"  {sum(r.ms for r in rest):9.3f} {sum(r.share for r in rest):6.1%} "
                   f"{sum(r.calls for r in rest):5d}  ({len(rest)} more)")


_TRUST = ("It runs whatever library a client sends it, as this user: listen beyond loopback only on a network "
          "whose every client you trust.")


@click.command("rpc-server", epilog=EXIT_CODE_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help=f"The address to listen on (0.0.0.0: every interface). {_TRUST}")
@click.option("--port", type=click.IntRange(0, 65535), default=9090, show_default=True,
              help="The port to listen on (0: any free one; the line on stdout says which).")
@click.option("--tracker", metavar="HOST:PORT", default=None,
              help="Join this RPC tracker's pool under --key: clients (kiln tune, run, bench --rpc-tracker) get it "
                   "from the tracker when it is free.")
@click.option("--key", default="", help="The pool's name at the tracker (a device kind: rpi4, graviton3); without "
                                        "--tracker, clients must give it as --rpc-key.")
@handles_errors
def rpc_server_command(host: str, port: int, tracker: str | None, key: str):
    """Lend this machine to remote runs: kiln run/bench --rpc, and kiln tune measuring candidates on it.

    Each client's session runs in its own process, one session at a time; uploaded libraries live in a
    temporary folder removed when the session ends. Needs only kiln-runtime (or the full kiln-ml).

    \b
    WARNING: an RPC server runs whatever library it is sent, with this user's rights. It listens on
    loopback unless --host says otherwise; expose it only to clients you trust.

    \b
    Examples:
      kiln rpc-server --port 9090                                      # for kiln run/bench --rpc HOST:9090
      kiln rpc-server --host 0.0.0.0 --tracker 10.0.0.5:9190 --key rpi4 # join a tracker's rpi4 pool
    """
    from kiln.errors import UsageError
    from kiln.remote.server import ServerOptions, serve
    from kiln.remote.session import Address

    if tracker and not key:
        raise UsageError("--tracker needs --key: the pool this server joins (clients ask the tracker for it by key)")
    options = ServerOptions(host, port, Address.parse(tracker, "--tracker") if tracker else None, key)

    def ready(bound: int) -> None:
        joined = f", in RPC tracker {options.tracker}'s {key!r} pool" if options.tracker else ""
        click.echo(f"kiln rpc-server listening on {host}:{bound}{joined}")

    serve(options, ready, lambda message: click.echo(f"kiln rpc-server: {message}", err=True))


runtime_cli.add_command(run_command)
runtime_cli.add_command(bench_command)
runtime_cli.add_command(rpc_server_command)


def main() -> None:
    exit_on_signals()
    runtime_cli()
