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

from kiln.errors import InputError, SettingError
from kiln.pipeline import CompileOptions
from kiln.settings import as_keys, from_raw, setting, toml_keys


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise ValueError("give a non-empty list of preset names")
    return tuple(value)


@dataclass(frozen=True)
class ArtifactSettings:
    """The kiln.toml keys of an artifact that are not `kiln compile` options: the rest are CompileOptions'."""

    model: Path = setting(key="model", parse=Path, path=True, help="model file (required)")
    output_dir: Path = setting(key="output_dir", parse=Path, path=True, raw_default="build",
                               help="folder for the artifacts (default: build)")
    targets: tuple[str, ...] = setting((), key="targets", parse=_names, help="list of target presets")


# What an [artifact.NAME] table accepts: its own keys, and every setting of `kiln compile` (but --output).
KEYS = toml_keys(ArtifactSettings) + toml_keys(CompileOptions)


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
    artifacts, defaults = data.get("artifact", {}), data.get("defaults", {})
    if not artifacts:
        raise InputError(f"{path}: declares no artifacts; add an [artifact.NAME] table with a model")
    if not isinstance(defaults, dict):
        raise InputError(f"{path}: defaults = {defaults!r}; give them as a [defaults] table of artifact keys")
    named = artifacts.items() if isinstance(artifacts, dict) else [("", artifacts)]
    values = [f"artifact{'.' if name else ''}{name} = {table!r}"
              for name, table in named if not isinstance(table, dict)]
    if values:
        raise InputError(f"{path}: {'; '.join(values)}: not a table; declare each artifact as an [artifact.NAME] "
                         "table of its keys")
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
    try:
        artifact = from_raw(ArtifactSettings, table, root)
        targets = artifact.targets or (table.get("target"),)  # None: CompileOptions' default target
        items = []
        for target in targets:
            stem = name if len(targets) == 1 else f"{name}-{target}"
            options = from_raw(CompileOptions, {**table, "target": target,
                                                "output": artifact.output_dir / f"{stem}.kiln"}, root)
            items.append(BuildItem(name, artifact.model, options))
    except SettingError as exc:  # the library names settings; kiln.toml calls them by their keys
        raise InputError(f"{where}: {as_keys(exc)}") from exc
    return items
