"""Where a TVM artifact's time goes: wall time per kernel (fused PrimFunc) and per VM builtin, from the
Relax VM's instrument hook, which brackets every call the VM makes."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

NO_OP = 0  # tvm.runtime.vm.VMInstrumentReturnKind.NO_OP: the instrument lets the VM run the call


@dataclass(frozen=True)
class KernelTime:
    name: str  # the fused PrimFunc (e.g. fused_kconv3_add2_relu1) or VM builtin
    calls: int  # per model run
    ms: float  # per model run, all calls together
    share: float  # of the instrumented total

    def to_json(self) -> dict:
        return vars(self)


@dataclass(frozen=True)
class Profile:
    runs: int
    kernels: tuple[KernelTime, ...]  # largest first


def profile_vm(vm, main, args: list, seconds: float, min_runs: int = 3, max_runs: int = 1000) -> Profile:
    """Run `main(*args)` with every VM call timed, as many times as fit in `seconds` (within
    [min_runs, max_runs]); each name's median time per run (robust to a run stalled by other load).
    `vm` is the VM module (tvm_runtime.load_vm)."""
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = defaultdict(int)
    starts: list[float] = []

    def instrument(func, name, before_run, ret_value, *call_args):
        if before_run:
            starts.append(time.perf_counter())
        else:
            per_run[-1][name] += time.perf_counter() - starts.pop()
            calls[name] += 1
        return NO_OP

    main(*args)  # warm up outside the measurement
    vm["set_instrument"](instrument)
    deadline = time.perf_counter() + seconds
    try:
        while len(per_run) < min_runs or (len(per_run) < max_runs and time.perf_counter() < deadline):
            per_run.append(defaultdict(float))
            main(*args)
    finally:
        vm["set_instrument"](None)
    runs = len(per_run)
    medians = {name: statistics.median(run[name] for run in per_run) * 1e3 for name in calls}
    total = sum(medians.values()) or 1.0
    rows = [KernelTime(name, calls[name] // runs, ms, ms / total) for name, ms in medians.items()]
    return Profile(runs, tuple(sorted(rows, key=lambda row: row.ms, reverse=True)))
