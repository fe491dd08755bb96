"""Compile a tree Graph into a shared library for a CPU target preset.

The trees run as kiln's own node walker (tree_nodes.py writes the model as arrays, tree_walk.h walks
them without a branch per node); tl2cgen writes main.c around them (base scores, tree averaging,
postprocessor). With calibration data, whose only use is annotating branches, the trees run as
tl2cgen's nested ifs instead, split over several translation units (tl2cgen's parallel_comp) so that
no single function grows past what gcc compiles quickly. kiln adds its batch entry point
(tree_predict.c) and compiles with the preset's C compiler: gcc -march for x86 presets,
aarch64-linux-gnu-gcc -mcpu for aarch64 presets.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.compat import tl2cgen as tl2cgen_compat
from kiln.compiler.backends.tree_nodes import UnsupportedModel, tables_header
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
# faster than 16 or 64 on a 200-tree model; 128 slower than 256 for the walker on 1,000 trees), with
# their values (BLOCK_ENTRIES features at most, 3 values each for the walker) on the stack.
BLOCK_ROWS = 256
BLOCK_ENTRIES = 8192
_C_TYPES = {"float32": "float", "float64": "double"}


class TreeCode(str, enum.Enum):
    NODE_WALK = "node-walk"  # kiln's node arrays (tree_walk.h)
    NESTED_IF = "nested-if"  # tl2cgen's code (tree_units.h)


@dataclass(frozen=True)
class TreeBuild:
    """What was built, for the manifest."""

    summary: TreeSummary
    code: TreeCode
    parallel_comp: int
    int8: bool
    annotated: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.to_json(), "code": self.code.value, "parallel_comp": self.parallel_comp,
                "int8": self.int8, "annotated": self.annotated}


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
    trees = _node_tables(model, int8) if calibration is None else None
    # The walker's trees are kiln_trees.h, in one translation unit. tl2cgen still writes its units (not
    # compiled): 2 of them, since with 1 it inlines the trees into the predict() whose epilogue kiln takes.
    units = parallel_comp(model) if trees is None else 1
    params: dict[str, Any] = {"parallel_comp": units if trees is None else 2, "quantize": int(int8 and trees is None)}
    # treelite and tl2cgen print their C++ log lines on stdout, which must stay clean for --json.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="kiln-tl2cgen-") as scratch:
        source = Path(scratch) / "src"
        if calibration is not None:
            annotation = Path(scratch) / "annotation.json"
            tl2cgen.annotate_branch(model, tl2cgen.DMatrix(calibration), annotation, nthread=os.cpu_count())
            params["annotate_in"] = str(annotation)
        tl2cgen.generate_c_code(model, source, params)
        _add_entry_point(source, summary, trees)
        try:
            built = tl2cgen.create_shared(preset.toolchain.compiler, source, nthread=min(units, os.cpu_count() or 1),
                                          options=compiler_flags(preset), long_build_time_warning=False)
        except tl2cgen.TL2cgenError as exc:
            raise TargetError(f"{preset.toolchain.compiler} failed to compile the model for {preset.name}: {exc}. "
                              "Check that the compiler accepts the preset's CPU, or choose another --target") from exc
        shutil.move(built, library)
    code = TreeCode.NESTED_IF if trees is None else TreeCode.NODE_WALK
    return TreeBuild(summary, code, units, int8, calibration is not None)


def _node_tables(model: "treelite.Model", int8: bool) -> str | None:
    """kiln_trees.h for the walker, or None for a model it does not encode (tl2cgen's nested ifs run it)."""
    try:
        return tables_header(model, quantized=int8)
    except UnsupportedModel as exc:
        print(f"kiln: compiling the trees as tl2cgen's nested ifs: {exc}", file=sys.stderr)
        return None


def _add_entry_point(source: Path, summary: TreeSummary, trees: str | None) -> None:
    """Write tree_predict.c, its headers and kiln_model.h beside tl2cgen's sources, and update tl2cgen's recipe.

    For the walker (`trees` is kiln_trees.h), tl2cgen's units and its predict() that calls them are left out.
    """
    package = resources.files("kiln.compiler.backends")
    helper = "tree_units.h" if trees is None else "tree_walk.h"
    (source / helper).write_text(package.joinpath(helper).read_text())
    parts = tl2cgen_compat.split_predict((source / "main.c").read_text())
    (source / "kiln_model.h").write_text(_model_header(parts, summary, walk=trees is not None))
    if trees is not None:
        (source / "kiln_trees.h").write_text(trees)
        tl2cgen_compat.keep_main_only(source)
    tl2cgen_compat.add_source(source, ENTRY_POINT, package.joinpath("tree_predict.c").read_text())


def _model_header(parts: tl2cgen_compat.PredictParts, summary: TreeSummary, *, walk: bool) -> str:
    """kiln_model.h (see tree_predict.c): tl2cgen's predict() split into prologue, units and epilogue.

    The walker takes only the epilogue; its trees are kiln_trees.h.
    """
    prologue, epilogue, units = parts.prologue, parts.epilogue, parts.units
    if not units:  # all trees inline in predict(): one "unit" that is predict() without its postprocessor
        units = ("kiln_whole_model",)
    defines = {"KILN_WALK": int(walk), "KILN_NUM_FEATURE": summary.num_feature, "KILN_NUM_TREE": summary.num_trees,
               "KILN_THRESHOLD_T": _C_TYPES[summary.threshold_type], "KILN_LEAF_T": _C_TYPES[summary.leaf_type],
               "KILN_BLOCK_ROWS": max(1, min(BLOCK_ROWS, BLOCK_ENTRIES // summary.num_feature))}
    if not walk:
        defines["KILN_UNITS(X)"] = " ".join(f"X({unit})" for unit in units)
    lines = ["/* Generated by kiln from tl2cgen's main.c; see tree_predict.c. */",
             *(f"#define {name} {value}" for name, value in defines.items()),
             "static inline void kiln_epilogue(KILN_LEAF_T* result) {", epilogue, "}"]
    if not walk:
        lines += ["extern const unsigned char is_categorical[];",
                  "static inline void kiln_prologue(union Entry* data) {", prologue, "}",
                  "static inline void kiln_whole_model(union Entry* data, KILN_LEAF_T* result) { predict(data, 1, result); }"]
    return "\n".join(lines + [""])
