"""Target presets, raw TVM targets and host detection; `resolve` turns a --target into a Preset."""

from __future__ import annotations

import difflib

from kiln.errors import TargetError
from kiln.targets.host import host_preset
from kiln.targets.isa import Family, Int8Isa
from kiln.targets.llvm import custom_preset
from kiln.targets.presets import PRESETS, Preset

__all__ = ["PRESETS", "Family", "Int8Isa", "Preset", "resolve"]


def resolve(spec: str) -> Preset:
    """A preset by name, `host`, or a raw TVM target given as JSON."""
    if spec == "host":
        return host_preset()
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.lstrip().startswith("{"):
        return custom_preset(spec)
    names = sorted(PRESETS) + ["host"]
    near = difflib.get_close_matches(spec, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise TargetError(
        f"unknown target {spec!r}.{hint} Valid presets: {', '.join(names)}; "
        "or pass a TVM target as JSON, e.g. '{\"kind\": \"llvm\", \"mcpu\": \"znver3\"}'. "
        "`kiln targets` lists them."
    )
