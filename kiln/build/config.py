"""kiln.toml: the artifacts a project builds, read into typed build items.

    [defaults]                      # optional; any artifact key, applied to every artifact
    output_dir = "build"

    [artifact.digits]
    model = "digits_cnn/digits_cnn.onnx"
    input_shapes = { input = "1x1x8x8" }
    targets = ["x86-64", "x86-vnni"]   # or target = "x86-64"
    precision = "int8"                 # with calib, calib_method, exclude, eval, max_accuracy_drop, ...
    calib = "digits_cnn/digits_calib.npz"

Paths are relative to the folder holding kiln.toml. An artifact with one target is written to
OUTPUT_DIR/NAME.kiln, one with several to OUTPUT_DIR/NAME-TARGET.kiln.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.compiler.backends.tvm.schedules import ScheduleMode
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.graph import parse_dims
from kiln.compiler.pipeline import CompileOptions, Precision
from kiln.quantize.config import RAW_DEFAULTS, quantize_options
from kiln.errors import InputError
from kiln.targets import resolve

KEYS = {
    "model": "model file (required)",
    "params": "MXNet .params file beside a symbol JSON model",
    "trust_pickle": "true to load pickle/joblib tree models (they run code when loaded)",
    "input_shapes": "table of input name -> dims, e.g. { input = \"1x3x224x224\" }",
    "target": "one target preset",
    "targets": "list of target presets",
    "precision": "fp32 (default) or int8",
    "calib": "calibration data file or folder",
    "output_dir": "folder for the artifacts (default: build)",
    "schedule": "default (kiln's CPU schedules) or none (TVM's loops, for debugging)",
    "records": "a `kiln tune` records folder to apply",
    # INT8 settings of neural models, as the same-named `kiln compile` options:
    **{key: f"as --{key.replace('_', '-')}" for key in RAW_DEFAULTS},
}
_PATH_KEYS = ("eval", "image_spec", "cache_dir")


@dataclass(frozen=True)
class BuildItem:
    """One artifact for one target."""

    name: str
    model: Path
    options: CompileOptions

    @property
    def label(self) -> str:
        return f"{self.name} ({self.options.target.name})"


def read_config(path: Path) -> list[BuildItem]:
    if not path.is_file():
        raise InputError(f"{path}: no such file; write a kiln.toml (see `kiln build --help`) or pass --config")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc
    unknown_sections = sorted(set(data) - {"defaults", "artifact"})
    if unknown_sections:
        raise InputError(f"{path}: unknown section(s) {', '.join(unknown_sections)}; use [defaults] and "
                         "[artifact.NAME]")
    artifacts = data.get("artifact", {})
    if not artifacts:
        raise InputError(f"{path}: declares no artifacts; add an [artifact.NAME] table with a model")
    defaults = data.get("defaults", {})
    items = []
    for name, table in artifacts.items():
        items.extend(_items(path.parent, name, {**defaults, **table}, path))
    return items


def _items(root: Path, name: str, table: dict[str, Any], path: Path) -> list[BuildItem]:
    where = f"{path}: [artifact.{name}]"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS)}")
    if "model" not in table:
        raise InputError(f"{where}: needs a model = \"path/to/model\"")
    if "target" in table and "targets" in table:
        raise InputError(f"{where}: give target or targets, not both")
    targets = table.get("targets", [table.get("target", "x86-64")])
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InputError(f"{where}: targets must be a non-empty list of preset names")
    output_dir = root / table.get("output_dir", "build")
    try:
        precision = Precision(table.get("precision", "fp32"))
    except ValueError:
        raise InputError(f"{where}: precision must be fp32 or int8") from None
    try:
        schedule = ScheduleMode(table.get("schedule", "default"))
    except ValueError:
        raise InputError(f"{where}: schedule must be default or none") from None
    imports = ImportOptions(input_shapes=_input_shapes(table.get("input_shapes", {}), where),
                            params=root / table["params"] if "params" in table else None,
                            trust_pickle=bool(table.get("trust_pickle", False)))
    calib = root / table["calib"] if "calib" in table else None
    raw = {key: root / value if key in _PATH_KEYS else value for key, value in table.items() if key in RAW_DEFAULTS}
    quantize = quantize_options(raw)
    items = []
    for target in targets:
        stem = name if len(targets) == 1 else f"{name}-{target}"
        options = CompileOptions(resolve(target), output_dir / f"{stem}.kiln", imports=imports, precision=precision,
                                 calib=calib, quantize=quantize, schedule=schedule,
                                 records=root / table["records"] if "records" in table else None)
        items.append(BuildItem(name, root / table["model"], options))
    return items


def _input_shapes(table: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(table, dict):
        raise InputError(f"{where}: input_shapes must be a table, e.g. {{ input = \"1x3x224x224\" }}")
    shapes = {}
    for name, dims in table.items():
        shape = parse_dims(str(dims))
        if shape is None:
            raise InputError(f"{where}: input_shapes.{name} = {dims!r} is not dims like \"1x3x224x224\"")
        shapes[name] = shape
    return shapes
