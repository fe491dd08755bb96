"""`kiln tune`: MetaSchedule search over the fused PrimFuncs of kiln's CPU pipeline, measured in this
process, into a records folder that `kiln compile --records` applies.

- Records are MetaSchedule's JSON database: each record names its workload (the PrimFunc, by
  structural hash) and its target, so a partial tuning still helps and models sharing layers share
  records. Each task's default-rule schedule is measured first and stored as a record too, so the
  best record is never slower than kiln's default: applying records can only help. So are the rule's
  variants (schedules.common.tuning_variants: other register tiles, conv2d summed in one pass), which
  on 2 cores find more than MetaSchedule's search can in a budget of tens of trials.
- Kernels are timed with their weights and outputs flushed from the caches before each run, as they
  are in a model, where the other layers evicted them (a conv whose weights were warm ran its
  one-pass sum fastest; in the model, chunked sums were 10-20% faster).
- Builds and measurements run in this process (MetaSchedule's LocalBuilder starts fresh workers
  per batch, each importing tvm.s_tir.tensor_intrin: ~57 s per batch here). With a remote (--rpc-tracker),
  builds still run here, linked into libraries for the target, and are measured on the remote's servers, one
  candidate per server at a time (kiln.remote.measure).
- MetaSchedule's JSON serialization segfaults with apache-tvm-ffi 0.1.15 (apache-tvm 0.27.0.post1
  is built against 0.1.14), so tuning and records need apache-tvm-ffi==0.1.14.post0.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln.compat.tvm import tensor_intrinsics_skipped
from kiln.compiler.graph import Graph
from kiln.errors import InputError, TargetError
from kiln.progress import QUIET, Advance, Progress
from kiln.targets.isa import Int8Isa
from kiln.targets.presets import Family, Preset

if TYPE_CHECKING:
    from kiln.remote.measure import RemotePool

WORKLOADS, RECORDS = "database_workload.json", "database_tuning_record.json"
TRIALS_PER_ROUND = 16
REPEAT = 12  # timed runs per candidate (their median is its time)
SAFE_FFI = "0.1.14"


@dataclass(frozen=True)
class TuneReport:
    tasks: int
    searched: int  # tasks MetaSchedule searched; the others (Winograd convs) have their rule's variants only
    trials: int
    seconds: float
    improved: int  # tasks whose best record beats kiln's default rule
    failed: int = 0  # searched candidates that did not build or measure
    remote: str | None = None  # where candidates were measured, when not here
    servers: int = 0  # remote servers measuring at the start
    lost: tuple[str, ...] = ()  # remote servers dropped mid-run, with why (their candidates were retried)

    def to_json(self) -> dict:
        return {**vars(self), "lost": list(self.lost)}


def check_ffi() -> None:
    version = metadata.version("apache-tvm-ffi")
    if not version.startswith(SAFE_FFI + "."):
        raise TargetError(f"tuning records need apache-tvm-ffi {SAFE_FFI}.x (installed: {version}; with 0.1.15 "
                          "TVM 0.27's JSON serialization crashes): pip install apache-tvm-ffi==0.1.14.post0")


def target_key(preset: Preset) -> str:
    """The records subfolder for a target: MetaSchedule matches records by workload only."""
    target = json.dumps(preset.tvm_target, sort_keys=True)
    return f"{preset.tvm_target.get('mcpu', 'generic')}-{hashlib.sha256(target.encode()).hexdigest()[:10]}"


def open_records(records: Path, preset: Preset, create: bool = False):
    """The MetaSchedule database for `preset` in a records folder."""
    from tvm.s_tir import meta_schedule as ms

    check_ffi()
    folder = records / target_key(preset)
    if not create and not (folder / RECORDS).is_file():
        raise InputError(f"{records} holds no tuning records for target {preset.name}; make them with "
                         f"`kiln tune MODEL --target {preset.name} -o {records}`")
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=True)


def tune_model(graph: Graph, preset: Preset, records: Path, trials: int, progress: Progress = QUIET,
               pool: RemotePool | None = None) -> TuneReport:
    """Tune the kernels of a neural graph for `preset` into `records` (kiln's rule variants, then MetaSchedule),
    measured here or on a remote pool's servers (kiln.pipeline.tune_model opens it)."""
    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from kiln.compiler.backends.tvm.converters import import_onnx
    from kiln.compiler.backends.tvm.runner import prepare_thread_pool
    from kiln.compiler.backends.tvm.schedules.pipeline import fuse, rule_for
    from kiln.compiler.backends.tvm.schedules.winograd import CONV2D_WINOGRAD, CONV2D_WINOGRAD_INT8

    if preset.family is Family.CUDA:
        raise TargetError("kiln tune searches CPU schedules; for CUDA targets compile without --records")
    if pool is None:
        from kiln.targets.host import check_can_run

        check_can_run(preset)  # candidates are measured on this machine
    prepare_thread_pool()
    database = open_records(records, preset, create=True)
    started = time.perf_counter()
    cores = (pool.cpus if pool else None) or os.cpu_count() or 1  # the measuring machine's
    target = tvm.target.Target({**preset.tvm_target, "num-cores": cores})
    mod = fuse(import_onnx(graph.body), target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    measure = _Measure(target, pool, preset)
    rules = {task.task_name: rule_for(Schedule(task.dispatched[0]["main"])) for task in tasks}
    defaults = {task.task_name: _record_rule_variants(task, rules[task.task_name], target, database, measure)
                for task in tasks}
    # Winograd convs get only their rule's variants: on ResNet-18 (64 trials, batch 1) MetaSchedule's search spent
    # ~390 of 545 s generating candidates, mostly for those three-block kernels, and beat the variants there by
    # at most 6%.
    searched = [task for task in tasks if rules[task.task_name] not in (CONV2D_WINOGRAD, CONV2D_WINOGRAD_INT8)]
    with _tensor_intrinsics_stubbed(preset):
        contexts = [ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                                   search_strategy=_search(trials), task_name=task.task_name,
                                   num_threads="physical")
                    for task in searched]
    quiet = logging.getLogger("tvm.s_tir.meta_schedule")
    if quiet.level == logging.NOTSET:  # else MetaSchedule sets DEBUG and prints every round's tables
        quiet.setLevel(logging.WARNING)
    with progress.bar("tuning", trials) as advance:
        counter = _progress_callback(trials, advance)
        callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(), counter]
        if contexts:
            ms.tune_tasks(tasks=contexts, task_weights=[float(t.weight) for t in searched],
                          work_dir=str(records / target_key(preset)),
                          max_trials_global=trials, num_trials_per_iter=min(trials, TRIALS_PER_ROUND),
                          builder=measure.builder, runner=measure.runner, database=database, cost_model="random",
                          measure_callbacks=callbacks)
    improved = sum(_best_seconds(database, task) < defaults[task.task_name] for task in tasks)
    remote = pool.report() if pool else None
    return TuneReport(len(tasks), len(searched), trials, time.perf_counter() - started, improved, counter.failed,
                      pool.remote.describe() if pool else None, remote.servers if remote else 0,
                      remote.lost if remote else ())


def _search(trials: int):
    """Evolutionary search sized to the budget: MetaSchedule's default population (512, 4 generations)
    costs ~15 s per task on 2 cores, wasted when only a few candidates get measured."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(32, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=population // 4,
                                                 genetic_num_iters=2 if trials < 64 else 4)


def _tensor_intrinsics_stubbed(preset: Preset) -> contextlib.AbstractContextManager:
    """TuneContext imports tvm.s_tir.tensor_intrin, which parses ~500 TVMScript intrinsics (VNNI, AVX-512,
    sdot, CUDA) at 35-140 s here. FP32 search on AVX2 uses none of them, so while tune contexts are made
    that import is skipped."""
    if preset.int8_isa is not Int8Isa.AVX2:
        return contextlib.nullcontext()
    return tensor_intrinsics_skipped()


def _best_seconds(database, task) -> float:
    best = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
    return float(np.mean([float(s) for s in best[0].run_secs])) if best and best[0].run_secs else float("inf")


def _record_rule_variants(task, rule, target, database, measure: "_Measure") -> float:
    """Measure each distinct schedule kiln's `rule` makes of one task (its default spec and tuning variants)
    and store each as a record; the default's seconds (inf where no rule applies or it fails)."""
    import tvm_ffi
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    from kiln.compiler.backends.tvm.schedules.common import cpu_spec, tuning_variants

    func = task.dispatched[0]["main"]
    if rule is None:  # the build leaves such a kernel to TVM too
        return float("inf")
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    workload = database.commit_workload(task.dispatched[0])
    seconds_by_schedule: dict[int, float | None] = {}
    default = None
    for index, variant in enumerate(tuning_variants(cpu_spec(target))):
        sch = Schedule(func)
        if _attempt(rule.apply, sch, variant)[1] is not None:
            continue
        key = tvm_ffi.structural_hash(sch.mod)
        if key not in seconds_by_schedule:  # variants often make the same schedule
            seconds_by_schedule[key] = seconds = measure.seconds(sch.mod, args_info)
            if seconds is not None:
                database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [seconds], target,
                                                                       args_info))
        if index == 0:
            default = seconds_by_schedule[key]
    return float("inf") if default is None else default


def _progress_callback(total: int, advance: Advance):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        def __init__(self):
            self.done = self.failed = 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.failed += sum(result.error_msg is not None for result in runner_results)
            done = min(self.done + len(runner_results), total)
            advance(done - self.done)
            self.done = done

    return ProgressCallback()


class _Measure:
    """An in-process MetaSchedule builder and runner: compiled modules stay in memory, keyed by a
    name the runner looks up (nothing is written to disk or started). With a remote pool, each build
    is linked into a library in the pool's work folder instead, and runs go to the pool's servers."""

    def __init__(self, target, pool: RemotePool | None = None, preset: Preset | None = None):
        self.modules: dict[str, object] = {}
        self.names = (f"kiln-inprocess-{i}" for i in itertools.count())
        self.builder, self.runner = _builder(self), _runner(self)
        self.target, self.repeat, self.pool, self.preset = target, REPEAT, pool, preset

    def build(self, mod, target) -> str:
        import tvm
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        name = next(self.names)
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        compiled = tvm.compile(mod, target=target)
        if self.pool is None:
            self.modules[name] = compiled.mod  # the LLVM module, run by JIT: no linking
            return name
        from kiln.targets.toolchain import linker

        library = self.pool.workdir / f"{name}.so"
        compiled.export_library(str(library), fcompile=linker(self.preset))
        self.modules[name] = library
        return name

    def submit(self, name: str, args_info):
        """A future of the run's [seconds]: on the remote pool, or here (done already)."""
        from concurrent.futures import Future

        if self.pool is not None:
            return self.pool.submit(self.modules.pop(name), args_info)
        future: Future = Future()
        try:
            future.set_result(self.run(name, args_info))
        except Exception as exc:  # noqa: BLE001 - the future carries it to the runner's result
            future.set_exception(exc)
        return future

    def run(self, name: str, args_info) -> list[float]:
        import tvm

        if self.pool is not None:
            return self.submit(name, args_info).result()
        module = self.modules.pop(name)
        rng = np.random.default_rng(0)
        device = tvm.cpu(0)
        args = [tvm.runtime.tensor(rng.uniform(-1, 1, [int(d) for d in info.shape]).astype(info.dtype), device)
                for info in args_info]
        module(*args)  # warm-up: the first run also pays for the thread pool and page faults
        evaluator = module.time_evaluator(module.entry_name, device, number=1, repeat=self.repeat,
                                          f_preproc="cache_flush_cpu_non_first_arg")
        return [float(np.median(evaluator(*args).results))]

    def seconds(self, mod, args_info) -> float | None:
        name, _ = _attempt(self.build, mod, self.target)
        run_secs, _ = _attempt(self.run, name, args_info) if name else (None, None)
        return float(np.mean(run_secs)) if run_secs else None


def _attempt(action, *args) -> tuple[object | None, str | None]:
    """(result, None), or (None, the error) for a candidate that fails to build or run."""
    try:
        return action(*args), None
    except Exception as exc:  # noqa: BLE001 - any failure just rules the candidate out
        return None, f"{type(exc).__name__}: {exc}"


def _builder(measure: _Measure):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            return [BuilderResult(*_attempt(measure.build, item.mod, item.target)) for item in build_inputs]

    return InProcessBuilder()


def _runner(measure: _Measure):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

    def future(pending) -> RunnerFuture:
        return RunnerFuture(f_done=pending.done, f_result=lambda: RunnerResult(*_attempt(pending.result)))

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs):
            return [future(measure.submit(item.artifact_path, item.args_info)) for item in runner_inputs]

    return InProcessRunner()
