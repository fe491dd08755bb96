"""The visible sequence of steps from a model file to an artifact."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kiln.compiler import artifact
from kiln.compiler.frontends import ImportOptions, load_graph
from kiln.compiler.graph import Graph, GraphKind
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


def _quiet(_: str) -> None:
    pass


def compile_model(model: Path, options: CompileOptions, progress: Progress = _quiet) -> Path:
    artifact.check_output_path(options.output)
    progress(f"importing {model}")
    graph = load_graph(model, options.imports)
    if graph.kind is GraphKind.NEURAL:
        return _compile_neural(graph, options, progress)
    raise AssertionError(graph.kind)


def _compile_neural(graph: Graph, options: CompileOptions, progress: Progress) -> Path:
    import onnx

    from kiln.compiler.backends.tvm.build import build_library, check_compilable, check_toolchain

    check_compilable(graph)
    check_toolchain(options.target)
    with artifact.staging(options.output) as stage:
        progress(f"compiling with TVM for {options.target.name}")
        library = stage / "model.so"
        build_library(graph, options.target, library)
        source = stage / "model.onnx"
        onnx.save_model(graph.body, str(source))
        manifest = artifact.make_manifest(graph, options.target, "tvm", library, files={"onnx": source})
        artifact.write_manifest(stage, manifest)
    progress(f"wrote {options.output}")
    return options.output
