"""What kiln relies on inside tl2cgen beyond its public API: the form of the C code it generates.

kiln keeps tl2cgen's main.c (base scores, tree averaging, postprocessor) but runs its own batch entry
point, so it takes tl2cgen's `predict()` apart (`split_predict`) and, for its node walker, drops it
and the tree units it calls (`keep_main_only`); kiln's sources join the build through tl2cgen's
`recipe.json`, the file list `tl2cgen.create_shared` compiles (`add_source`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kiln.compat import VersionRange

TL2CGEN = VersionRange("tl2cgen", "1.0", "1.1", "the form of the C code tl2cgen 1.0 generates (main.c's "
                       "predict(), recipe.json)")
_PREDICT = r"^void predict\(union Entry\* data, int pred_margin, \w+\* result\) \{\n"
_PREDICT_FUNCTION = re.compile(_PREDICT + r".*?^\}\n", re.M | re.S)
_PREDICT_BODY = re.compile(_PREDICT + r"(.*?)^\}", re.M | re.S)
_UNIT_CALL = re.compile(r"^\s*(predict_unit\d+)\(data, result\);$", re.M)
_UNITS_DECLARED = "unsigned int tmp;"  # predict()'s first line after the prologue when it calls units
_POSTPROCESSOR = "// Apply postprocessor"


def check() -> None:
    TL2CGEN.check()


@dataclass(frozen=True)
class PredictParts:
    """tl2cgen's `predict(union Entry* data, int pred_margin, T* result)`, taken apart."""

    prologue: str  # before the units run (empty when the trees are inline)
    units: tuple[str, ...]  # the tree-unit functions it calls, in order; none when the trees are inline
    epilogue: str  # after the last unit, before the postprocessor (empty when the trees are inline)


def split_predict(main_c: str) -> PredictParts:
    """The parts of the predict() in tl2cgen's main.c."""
    check()
    match = _PREDICT_BODY.search(main_c)
    if match is None:
        raise AssertionError("tl2cgen's main.c has no predict() of the expected form")
    body = match.group(1)
    units = _UNIT_CALL.findall(body)
    if not units:
        return PredictParts("", (), "")
    prologue = body[:body.index(_UNITS_DECLARED)]
    epilogue = body[body.rindex(units[-1]):body.index(_POSTPROCESSOR)].split("\n", 1)[1]
    return PredictParts(prologue, tuple(units), epilogue)


def keep_main_only(source: Path) -> None:
    """Leave tl2cgen's tree units out of the build in `source`: main.c loses the predict() that calls
    them, and recipe.json lists main.c alone."""
    check()
    main_c = source / "main.c"
    main_c.write_text(_PREDICT_FUNCTION.sub("", main_c.read_text(), count=1))
    _edit_recipe(source, lambda sources: [entry for entry in sources if entry["name"] == "main"])


def add_source(source: Path, name: str, code: str) -> None:
    """Write `name`.c into tl2cgen's source folder and list it in recipe.json, so create_shared compiles it."""
    check()
    (source / f"{name}.c").write_text(code)
    _edit_recipe(source, lambda sources: [*sources, {"name": name, "length": code.count("\n")}])


def _edit_recipe(source: Path, edit) -> None:
    path = source / "recipe.json"
    recipe = json.loads(path.read_text())
    recipe["sources"] = edit(recipe["sources"])
    path.write_text(json.dumps(recipe))
