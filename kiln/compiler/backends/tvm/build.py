"""Compile a neural Graph with TVM Relax into a shared library for a target preset."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from kiln.compiler.backends.tvm.ops import unsupported_ops
from kiln.compiler.backends.tvm.schedules import ScheduleMode
from kiln.compiler.graph import Graph
from kiln.errors import InputError, UnsupportedOpError
from kiln.targets.presets import Family, Preset
from kiln.targets.toolchain import check_compiler


def check_compilable(graph: Graph) -> None:
    """Fail before any work on what TVM cannot take: unsupported ops, unpinned dims."""
    unsupported = unsupported_ops(graph.body)
    if unsupported:
        raise UnsupportedOpError("ONNX", unsupported)
    dynamic = [spec.describe() for spec in graph.signature.inputs if not spec.is_static]
    if dynamic:
        names = ", ".join(dynamic)
        example = graph.signature.inputs[0]
        pinned = "x".join(str(d if isinstance(d, int) else 1) for d in example.shape)
        raise InputError(f"inputs with symbolic dims: {names}. Pin them with --input-shape, "
                         f"e.g. --input-shape {example.name}:{pinned}")


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

    def integer_summary(self, preset: Preset) -> dict | None:
        if not self.integer:
            return None
        integer = [entry for entry in self.integer if entry["kernel"] == "int8"]
        isas = {entry["isa"] for entry in integer if "isa" in entry}
        return {"isa": ", ".join(sorted(isas)) or None, "target_int8_isa": preset.int8_isa,
                "int8_ops": len(integer), "int8_by_op": dict(collections.Counter(entry["op"] for entry in integer)),
                "float_ops": [entry for entry in self.integer if entry["kernel"] == "float"]}


def build_library(graph: Graph, preset: Preset, library: Path, schedule: ScheduleMode = ScheduleMode.DEFAULT,
                  records: Path | None = None) -> BuildReport:
    """Compile; on CPU targets with kiln's schedules (and the best of tuning `records`) unless schedule is NONE."""
    from kiln.compiler.backends.tvm.runner import prepare_thread_pool

    prepare_thread_pool()  # compiling runs kernels (constant folding), which starts TVM's pool
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(graph.body, keep_params_in_input=False)
    target = tvm.target.Target(preset.tvm_target)
    report = BuildReport()
    executable = tvm.compile(mod, target=target,
                             relax_pipeline=_relax_pipeline(preset, target, schedule, records, report))
    if preset.family is Family.CUDA:
        from kiln.compiler.backends.tvm import cuda

        cuda.export_library(executable, preset, library)
    else:
        executable.export_library(str(library), fcompile=_linker(preset))
    return report


def _relax_pipeline(preset: Preset, target, schedule: ScheduleMode, records: Path | None, report: BuildReport):
    from kiln.compiler.backends.tvm.schedules.common import cpu_spec

    if preset.family is Family.CUDA and schedule is ScheduleMode.DEFAULT and records is None:
        from kiln.compiler.backends.tvm.schedules.gpu import cuda_pipeline

        return cuda_pipeline(target, report.integer)
    if preset.family is Family.CUDA or schedule is ScheduleMode.NONE or cpu_spec(target) is None:
        if records is not None:
            raise InputError(f"--records applies kiln's CPU schedules, which do not build {preset.name} with "
                             f"--schedule {schedule.value}: drop --records, or use --schedule default with an "
                             "x86 or NEON aarch64 target")
        return "default"  # TVM's own pipeline for the target
    from kiln.compiler.backends.tvm.schedules.pipeline import cpu_pipeline

    database = None
    if records is not None:
        from kiln.compiler.backends.tvm.tuning import open_records

        database = open_records(records, preset)
    return cpu_pipeline(target, database, report.schedules, report.integer)


def _linker(preset: Preset):
    if preset.family is not Family.AARCH64:
        return None
    from tvm.support import cc

    return cc.cross_compiler(preset.toolchain.compiler)
