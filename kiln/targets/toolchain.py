"""The C compiler a preset links with, checked before any work starts."""

from __future__ import annotations

import shutil

from kiln.errors import TargetError
from kiln.targets.presets import Preset


def check_compiler(preset: Preset) -> None:
    tool = preset.toolchain
    if shutil.which(tool.compiler) is None:
        raise TargetError(f"target {preset.name} needs {tool.compiler}, which is not on PATH; "
                          f"install it with `apt-get install {tool.debian_package}`")
