"""The visible sequence of steps from a model file to an artifact."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kiln.compiler import artifact
from kiln.compiler.backends.tvm.schedules import ScheduleMode
from kiln.compiler.fingerprint import fingerprint
from kiln.compiler.frontends import ImportOptions, load_graph
from kiln.compiler.graph import Graph, GraphKind
from kiln.quantize.config import QuantizeOptions
from kiln.targets.presets import Preset

Progress = Callable[[str], None]


class Precision(str, enum.Enum):
    FP32 = "fp32"
    INT8 = "int8"


@dataclass(frozen=True)
class CompileOptions:
    target: Preset
    output: Path
    imports: ImportOptions = ImportOptions()
    precision: Precision = Precision.FP32
    # Calibration data (.npz/.npy/CSV/folder): drives INT8 ranges, and branch annotation for trees.
    calib: Path | None = None
    quantize: QuantizeOptions = QuantizeOptions()  # neural INT8: observers, exclusions, report, gate
    schedule: ScheduleMode = ScheduleMode.DEFAULT  # neural CPU builds: kiln's schedules, or none (TVM's loops)
    records: Path | None = None  # neural CPU builds: a `kiln tune` records folder, applied where it is faster


def _quiet(_: str) -> None:
    pass


def compile_model(model: Path, options: CompileOptions, progress: Progress = _quiet) -> Path:
    artifact.check_output_path(options.output)
    build = {"fingerprint": fingerprint(model, options)}
    progress(f"importing {model}")
    graph = load_graph(model, options.imports)
    if graph.kind is GraphKind.NEURAL:
        return _compile_neural(graph, options, build, progress)
    if graph.kind is GraphKind.TREE:
        return _compile_tree(graph, model, options, build, progress)
    raise AssertionError(graph.kind)


def _compile_neural(graph: Graph, options: CompileOptions, build: dict, progress: Progress) -> Path:
    import onnx

    from kiln.compiler.backends.tvm.build import build_library, check_compilable, check_toolchain

    check_compilable(graph)
    check_toolchain(options.target)
    quantized = _quantize_neural(graph, options, progress) if options.precision is Precision.INT8 else None
    with artifact.staging(options.output) as stage:
        progress(f"compiling with TVM for {options.target.name}")
        library = stage / "model.so"
        report = build_library(quantized.graph if quantized else graph, options.target, library,
                               options.schedule, options.records)
        source = stage / "model.onnx"
        onnx.save_model(graph.body, str(source))
        files, extra = {"onnx": source}, {"build": {**build, "schedules": report.schedules}}
        if integer := report.integer_summary(options.target):
            extra["integer_kernels"] = integer
        if quantized:
            files.update(quantized.write(stage))
            extra["quantization"] = quantized.manifest_section()
        manifest = artifact.make_manifest(graph, options.target, "tvm", library, files=files, extra=extra,
                                          precision=options.precision.value)
        artifact.write_manifest(stage, manifest)
    progress(f"wrote {options.output}")
    return options.output


def _quantize_neural(graph: Graph, options: CompileOptions, progress: Progress):
    from kiln.errors import InputError
    from kiln.quantize.quantizer import quantize_graph

    if options.calib is None:
        raise InputError("--int8 needs calibration data for a neural model: add --calib DATA "
                         "(.npz/.npy keyed by input name, a folder of them, images, or CSV)")
    return quantize_graph(graph, options.calib, options.quantize.for_target(options.target), progress)


def _compile_tree(graph: Graph, model: Path, options: CompileOptions, build: dict, progress: Progress) -> Path:
    import shutil

    from kiln.compiler.backends.treelite import build_library, calibration_rows, check_buildable

    check_buildable(options.target)
    calibration = calibration_rows(options.calib, graph) if options.calib else None
    with artifact.staging(options.output) as stage:
        progress(f"compiling with tl2cgen for {options.target.name}")
        library = stage / "model.so"
        tree = build_library(graph, options.target, library, int8=options.precision is Precision.INT8,
                             calibration=calibration)
        source = stage / f"source{model.suffix}"
        shutil.copyfile(model, source)
        manifest = artifact.make_manifest(graph, options.target, "tl2cgen", library, precision=options.precision.value,
                                          files={"model": source}, extra={"build": build, "tree": tree.to_json()})
        artifact.write_manifest(stage, manifest)
    progress(f"wrote {options.output}")
    return options.output
