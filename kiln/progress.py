"""How long steps report what they do: the library calls a Progress, the command line implements it.

The base class is silent, so library callers that pass nothing see nothing.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

Advance = Callable[[int], None]  # called with how many more units of a bar's total are done


class Progress:
    def step(self, message: str) -> None:
        """A long step starts, e.g. "compiling with TVM for x86-64"."""

    @contextlib.contextmanager
    def bar(self, label: str, total: int) -> Iterator[Advance]:
        """A step of `total` units; the caller advances it as units finish."""
        yield lambda done: None


QUIET = Progress()
