"""Tuning throughput measured on RPC servers: candidates measured per minute with 1, 2, ... loopback servers,
against measuring here, and the build machine's compile throughput (the other limit).

    .venv/bin/python benchmarks/rpc_tuning.py [--trials 32] [--servers 1,2] [--size 16]

Tunes kiln.testing.models.small_cnn (input 1x3xSIZExSIZE) for x86-64 with --trials search trials, once measured
here and once per server count through `kiln rpc-tracker` and that many `kiln rpc-server`s on loopback (all on
this machine: the servers share its cores with the builds, so this shows the overheads and the pipelining, not N
devices' speed). Every candidate counts: kiln's rule variants and MetaSchedule's trials.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--servers", default="1,2", help="server counts to measure with, comma-separated")
    parser.add_argument("--size", type=int, default=16, help="the CNN's input height and width")
    args = parser.parse_args()

    import kiln
    from kiln.compiler.backends.tvm import tuning
    from kiln.remote import measure
    from kiln.remote.session import Remote
    from kiln.testing import models
    from kiln.testing.rpc import loopback

    counts = {"builds": 0, "build_s": 0.0, "measured": 0, "measure_s": 0.0}
    build, time_remote, run_local = tuning._Measure.build, measure._time, tuning._Measure.run

    def timed(key: str, seconds_key: str, function):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                counts[key] += 1
                counts[seconds_key] += time.perf_counter() - start
        return wrapper

    tuning._Measure.build = timed("builds", "build_s", build)
    measure._time = timed("measured", "measure_s", time_remote)

    def run_here(self, name, args_info):
        return (timed("measured", "measure_s", run_local) if self.pool is None else run_local)(self, name, args_info)

    tuning._Measure.run = run_here
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; small_cnn {args.size}x{args.size}, "
          f"{args.trials} trials")
    print(f"{'measured on':24} {'candidates':>10} {'wall s':>8} {'measured/min':>13} {'builds/min':>11} "
          f"{'s/measure':>10}")
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "cnn.onnx"
        model.write_bytes(models.small_cnn(size=args.size).SerializeToString())
        imports = kiln.ImportOptions({"input": (1, 3, args.size, args.size)})
        for servers in [0] + [int(n) for n in args.servers.split(",")]:
            counts.update(builds=0, build_s=0.0, measured=0, measure_s=0.0)
            records = Path(folder) / f"records-{servers}"
            with loopback(Path(folder) / f"rpc-{servers}", servers, "bench") if servers else nullcontext() as pool:
                remote = Remote(tracker=pool[0].address, key="bench") if servers else None
                start = time.perf_counter()
                kiln.tune(model, records, target=kiln.target("x86-64"), trials=args.trials, imports=imports,
                          remote=remote)
                wall = time.perf_counter() - start
            where = f"{servers} loopback server{'s' if servers > 1 else ''}" if servers else "here (in process)"
            print(f"{where:24} {counts['measured']:10d} {wall:8.1f} {counts['measured'] / wall * 60:13.0f} "
                  f"{counts['builds'] / counts['build_s'] * 60:11.0f} "
                  f"{counts['measure_s'] / max(counts['measured'], 1):10.3f}")


if __name__ == "__main__":
    main()
