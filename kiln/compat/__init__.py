"""Every use of another project's internals, one module per project: `tvm`, `tl2cgen`, `onnx`.

What lives here depends on something its project does not promise to keep: a binary format, the
text of generated code, a private function. Each module names the versions its code was written and
checked against (a `VersionRange`, the same as setup.cfg's pins) and checks the installed version
before its first use, so an upgrade fails with an error that names the installed version instead of
writing a broken artifact. tests/test_compat.py runs every piece against the installed versions.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import metadata

from kiln.errors import TargetError


class IncompatibleVersionError(TargetError):
    """An installed dependency outside the versions kiln's compat code was written for."""


@dataclass(frozen=True)
class VersionRange:
    """`package` (its distribution name) from `minimum` up to, not including, `below`."""

    package: str
    minimum: str
    below: str
    uses: str  # what kiln relies on, for the error message

    def __contains__(self, version: str) -> bool:
        return release_numbers(self.minimum) <= release_numbers(version) < release_numbers(self.below)

    @property
    def specifier(self) -> str:
        return f"{self.package}>={self.minimum},<{self.below}"

    def check(self) -> None:
        """Raise IncompatibleVersionError unless the installed version is in the range."""
        version = installed_version(self.package)
        if version is not None and version in self:
            return
        found = f"{self.package} {version} is installed" if version else f"{self.package} is not installed"
        raise IncompatibleVersionError(
            f"kiln relies on {self.uses}, written for {self.specifier}, but {found}. Install a version in "
            f"that range (pip install '{self.specifier}'), or file an issue asking kiln to support it")


@functools.cache
def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def release_numbers(version: str) -> tuple[int, ...]:
    """The leading release numbers: "0.27.0.post1" -> (0, 27, 0); () when there are none."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()
