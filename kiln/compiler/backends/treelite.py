"""Compile a tree Graph with tl2cgen into a shared library for a CPU target preset.

tl2cgen writes the model as C; kiln adds its batch entry point (tree_predict.c) to the same
sources and compiles them with the preset's C compiler: gcc -march for x86 presets,
aarch64-linux-gnu-gcc -mcpu for aarch64 presets. Big models are split over several translation
units (tl2cgen's parallel_comp) so that no single function grows past what gcc compiles quickly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.compiler.frontends.trees import TreeSummary, summarize
from kiln.compiler.graph import Graph
from kiln.errors import TargetError
from kiln.targets.toolchain import check_compiler
from kiln.targets.presets import Family, Preset

if TYPE_CHECKING:
    import treelite

# Nodes per translation unit. gcc's time and memory grow faster than linearly with a function's
# size (one 20,000-node unit: 94 s and 800 MB at -O2), and a unit's code must stay in the L2 cache
# while it runs over a block of rows: ~2,000 nodes (~150 KB of code) per unit does both. Models of 2 trees or more get 2 units at least, so that
# every model runs the same blocked code (tree_predict.c).
NODES_PER_UNIT = 2_000
ENTRY_POINT = "kiln_predict"
# Rows evaluated together, unit by unit: enough to reuse a unit's code many times (256 rows measured
# faster than 16 or 64 on a 200-tree model), with their values (BLOCK_ENTRIES at most) on the stack.
BLOCK_ROWS = 256
BLOCK_ENTRIES = 8192
_C_TYPES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class TreeBuild:
    """What was built, for the manifest."""

    summary: TreeSummary
    parallel_comp: int
    int8: bool
    annotated: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.to_json(), "parallel_comp": self.parallel_comp, "int8": self.int8,
                "annotated": self.annotated}


def check_buildable(preset: Preset) -> None:
    """Fail early when trees cannot be built for `preset`: not a CPU target, or no compiler."""
    if preset.family is Family.CUDA:
        raise TargetError(f"tree models compile for CPU targets; {preset.name} is a GPU. "
                          "Use an x86 or aarch64 preset (`kiln targets`)")
    check_compiler(preset)


def compiler_flags(preset: Preset) -> list[str]:
    """-march (x86) or -mcpu (aarch64) from the preset, and OpenMP (tl2cgen adds -O3)."""
    mcpu = preset.tvm_target.get("mcpu")
    arch = ([f"-march={mcpu}"] if preset.family is Family.X86 else [f"-mcpu={mcpu}"]) if mcpu else []
    return arch + ["-fopenmp"]


def parallel_comp(model: "treelite.Model") -> int:
    """Translation units for `model`: enough that each holds about NODES_PER_UNIT nodes, 2 at least."""
    nodes = sum(int(model.get_tree_accessor(i).get_field("num_nodes")[0]) for i in range(model.num_tree))
    return min(model.num_tree, max(2, -(-nodes // NODES_PER_UNIT)))


def build_library(graph: Graph, preset: Preset, library: Path, *, int8: bool,
                  calibration: np.ndarray | None) -> TreeBuild:
    """Compile `graph` into `library`; `calibration` rows (float32) drive branch annotation."""
    import tl2cgen

    model = graph.body
    summary = summarize(model)
    units = parallel_comp(model)
    params: dict[str, Any] = {"parallel_comp": units, "quantize": int(int8)}
    # treelite and tl2cgen print their C++ log lines on stdout, which must stay clean for --json.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="kiln-tl2cgen-") as scratch:
        source = Path(scratch) / "src"
        if calibration is not None:
            annotation = Path(scratch) / "annotation.json"
            tl2cgen.annotate_branch(model, tl2cgen.DMatrix(calibration), annotation, nthread=os.cpu_count())
            params["annotate_in"] = str(annotation)
        tl2cgen.generate_c_code(model, source, params)
        _add_entry_point(source, summary)
        try:
            built = tl2cgen.create_shared(preset.toolchain.compiler, source, nthread=min(units, os.cpu_count() or 1),
                                          options=compiler_flags(preset), long_build_time_warning=False)
        except tl2cgen.TL2cgenError as exc:
            raise TargetError(f"{preset.toolchain.compiler} failed to compile the model for {preset.name}: {exc}. "
                              "Check that the compiler accepts the preset's CPU, or choose another --target") from exc
        shutil.move(built, library)
    return TreeBuild(summary, units, int8, calibration is not None)


def _add_entry_point(source: Path, summary: TreeSummary) -> None:
    """Write tree_predict.c and its kiln_model.h beside tl2cgen's sources, and add it to tl2cgen's recipe."""
    code = resources.files("kiln.compiler.backends").joinpath("tree_predict.c").read_text()
    (source / f"{ENTRY_POINT}.c").write_text(code)
    (source / "kiln_model.h").write_text(_model_header((source / "main.c").read_text(), summary))
    recipe_path = source / "recipe.json"
    recipe = json.loads(recipe_path.read_text())
    recipe["sources"].append({"name": ENTRY_POINT, "length": code.count("\n")})
    recipe_path.write_text(json.dumps(recipe))


_PREDICT_BODY = re.compile(r"^void predict\(union Entry\* data, int pred_margin, \w+\* result\) \{\n(.*?)^\}", re.M | re.S)
_UNIT_CALL = re.compile(r"^\s*(predict_unit\d+)\(data, result\);$", re.M)


def _model_header(main_c: str, summary: TreeSummary) -> str:
    """kiln_model.h (see tree_predict.c): tl2cgen's predict() split into prologue, units and epilogue."""
    match = _PREDICT_BODY.search(main_c)
    if match is None:
        raise AssertionError("tl2cgen's main.c has no predict() of the expected form; is tl2cgen 1.0.x installed?")
    body = match.group(1)
    units = _UNIT_CALL.findall(body)
    if units:  # prologue: up to the units' declarations; epilogue: after the last unit, before the postprocessor
        prologue = body[:body.index("unsigned int tmp;")]
        epilogue = body[body.rindex(units[-1]):body.index("// Apply postprocessor")].split("\n", 1)[1]
    else:  # all trees inline in predict(): one "unit" that is predict() without its postprocessor
        prologue, epilogue, units = "", "", ["kiln_whole_model"]
    defines = {"KILN_NUM_FEATURE": summary.num_feature, "KILN_NUM_TREE": summary.num_trees,
               "KILN_THRESHOLD_T": _C_TYPES[summary.threshold_type], "KILN_LEAF_T": _C_TYPES[summary.leaf_type],
               "KILN_BLOCK_ROWS": max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // summary.num_feature)),
               "KILN_UNITS(X)": " ".join(f"X({unit})" for unit in units)}
    return "\n".join([
        "/* Generated by kiln from tl2cgen's main.c; see tree_predict.c. */",
        *(f"#define {name} {value}" for name, value in defines.items()),
        "extern const unsigned char is_categorical[];",
        "static inline void kiln_prologue(union Entry* data) {", prologue, "}",
        "static inline void kiln_epilogue(KILN_LEAF_T* result) {", epilogue, "}",
        "static inline void kiln_whole_model(union Entry* data, KILN_LEAF_T* result) { predict(data, 1, result); }",
        "",
    ])


def calibration_rows(path: Path, graph: Graph) -> np.ndarray:
    """Calibration rows (.npz/.npy/CSV, see kiln.calibration.datasets) as one float32 array for annotation."""
    from kiln.calibration.datasets import CalibData, open_dataset

    dataset = open_dataset(CalibData(path, allow_nan=True), graph.signature.inputs)
    name = graph.signature.inputs[0].name
    return np.concatenate([batch[name] for batch in dataset.batches(dataset.count)])
