"""Compile a neural Graph with TVM Relax into a shared library for a target preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from kiln.compiler.backends.tvm.ops import unsupported_io, unsupported_ops
from kiln.compiler.backends.tvm.parameters import parameter_inputs
from kiln.compiler.backends.tvm.schedules import ScheduleMode
from kiln.compiler.frontends.options import ImportOptions
from kiln.compiler.graph import Graph
from kiln.errors import SettingError, UnsupportedOpError
from kiln.targets.presets import Family, Preset
from kiln.targets.toolchain import check_compiler, linker


# The fix for refusals with a reason (an op "(axes must be constant)", an input's dtype), where the default hint of
# UnsupportedOpError (replace the ops) does not fit.
_REASONED_HINT = ("replace these before export (parameters such as axes as initializers or Constant nodes; inputs "
                  "and outputs as tensors of float, int or bool types), or file an issue with the model attached")


def check_compilable(graph: Graph) -> None:
    """Fail before any work on what TVM cannot take: unsupported ops (kiln.compiler.backends.tvm.ops, run on the
    graph after the passes, which fold constant parameters), inputs/outputs of types the runtime cannot pass,
    unpinned dims."""
    unsupported, io = unsupported_ops(graph.body), unsupported_io(graph.body)
    if unsupported or io:
        reasoned = io or any(op.endswith(")") for op in unsupported)
        freezable = tuple(parameter_inputs(graph.body)) if reasoned else ()
        hint = _REASONED_HINT if reasoned else ""
        if freezable:
            example = " ".join(f"--freeze {name}=VALUES" for name in freezable[:3])
            hint = f"give the inputs that set them values to compile with ({example}), or {hint}"
        raise UnsupportedOpError("ONNX", unsupported, hint, io, freezable)
    dynamic = [spec.describe() for spec in graph.signature.inputs if not spec.is_static]
    if dynamic:
        names = ", ".join(dynamic)
        example = graph.signature.inputs[0]
        pinned = "x".join(str(d if isinstance(d, int) else 1) for d in example.shape)
        raise SettingError(ImportOptions, f"inputs with symbolic dims: {names}. Pin them with {{input_shapes}}, "
                                          f"e.g. {{input_shapes}} {example.name}:{pinned}")


def check_toolchain(preset: Preset) -> None:
    """The preset's C compiler, and nvcc for CUDA targets."""
    check_compiler(preset)
    if preset.family is Family.CUDA:
        from kiln.compiler.backends.tvm import cuda

        cuda.check_nvcc(preset)


@dataclass
class BuildReport:
    """How many kernels each schedule rule built ("tuned": from records; empty with TVM's own pipeline),
    and what each quantized conv of a QDQ graph became: an int8 kernel, or float and why."""

    schedules: dict[str, int] = field(default_factory=dict)
    integer: list[dict] = field(default_factory=list)


def build_library(entries: Iterable[tuple[str, Graph]], preset: Preset, library: Path,
                  schedule: ScheduleMode = ScheduleMode.DEFAULT, records: Path | None = None) -> BuildReport:
    """Compile one library whose VM functions are `entries` ((name, graph) pairs, "main" among them, imported
    one at a time: each graph may be dropped once taken); on CPU targets with kiln's schedules (and the best of
    tuning `records`) unless schedule is NONE. The entries' equal constants are one object while compiling
    (rewrite/entries.py) and stored once, so the entries of a batch range share their weights."""
    from kiln.compiler.backends.tvm.runner import prepare_thread_pool

    prepare_thread_pool()  # compiling runs kernels (constant folding), which starts TVM's pool
    import tvm

    from kiln.compiler.backends.tvm.converters import import_onnx
    from kiln.compiler.backends.tvm.rewrite.empty import allocate_empty
    from kiln.compiler.backends.tvm.rewrite.entries import merge_entries

    mod = allocate_empty(merge_entries((name, import_onnx(graph.body)) for name, graph in entries))
    target = tvm.target.Target(preset.tvm_target)
    report = BuildReport()
    executable = tvm.compile(mod, target=target,
                             relax_pipeline=_relax_pipeline(preset, target, schedule, records, report))
    if preset.family is Family.CUDA:
        from kiln.compiler.backends.tvm import cuda

        cuda.export_library(executable, preset, library)
    else:
        executable.export_library(str(library), fcompile=linker(preset))
    return report


def uses_cpu_schedules(preset: Preset, schedule: ScheduleMode) -> bool:
    """Whether kiln's CPU schedules (and so tuning records) build `preset`: x86 and NEON aarch64 targets."""
    import tvm

    from kiln.compiler.backends.tvm.schedules.common import cpu_spec

    return (preset.family is not Family.CUDA and schedule is ScheduleMode.DEFAULT
            and cpu_spec(tvm.target.Target(preset.tvm_target)) is not None)


def _relax_pipeline(preset: Preset, target, schedule: ScheduleMode, records: Path | None, report: BuildReport):
    if preset.family is Family.CUDA and schedule is ScheduleMode.DEFAULT and records is None:
        from kiln.compiler.backends.tvm.schedules.gpu import cuda_pipeline

        return cuda_pipeline(target, report.integer)
    if not uses_cpu_schedules(preset, schedule):
        return "default"  # TVM's own pipeline for the target
    from kiln.compiler.backends.tvm.schedules.pipeline import cpu_pipeline

    database = None
    if records is not None:
        from kiln.compiler.backends.tvm.tuning import open_records

        database = open_records(records, preset)
    return cpu_pipeline(target, database, report.schedules, report.integer)
