"""The C compiler a preset links with, checked before any work starts."""

from __future__ import annotations

import functools
import shutil
import subprocess

from kiln.errors import TargetError
from kiln.targets.isa import Family
from kiln.targets.presets import Preset


def check_compiler(preset: Preset) -> None:
    """The compiler is on PATH and builds for the preset's machine (a host gcc put in a cross compiler's
    place links a library the target cannot load)."""
    tool = preset.toolchain
    path = shutil.which(tool.compiler)
    if path is None:
        raise TargetError(f"target {preset.name} needs {tool.compiler}, which is not on PATH; "
                          f"install it with `apt-get install {tool.debian_package}`")
    machine = _target_machine(path)
    if machine is not None and machine != preset.machine:
        raise TargetError(f"target {preset.name} needs a compiler for {preset.machine}, but {path} builds for "
                          f"{machine} (`{tool.compiler} -dumpmachine`); install {tool.debian_package} and put "
                          "its compiler first on PATH")


@functools.lru_cache(maxsize=None)
def _target_machine(compiler: str) -> str | None:
    """The machine a gcc-compatible compiler builds for (x86_64, aarch64), or None when it does not say."""
    try:
        done = subprocess.run([compiler, "-dumpmachine"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    triple = done.stdout.strip()
    return triple.split("-", 1)[0] if done.returncode == 0 and triple else None


def linker(preset: Preset):
    """The fcompile with which TVM links `preset`'s code into a shared library (None: TVM's default, the host's
    cc)."""
    if preset.family is not Family.AARCH64:
        return None
    from tvm.support import cc

    return cc.cross_compiler(preset.toolchain.compiler)
