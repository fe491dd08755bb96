"""One exception tree for kiln; each class carries the CLI exit code it maps to.

Messages name the fix: what was wrong, and what to do about it.
"""

from __future__ import annotations

import re
import signal
from typing import Callable


class KilnError(Exception):
    """Base of every error kiln raises on purpose."""

    exit_code = 1

    def __reduce__(self):
        # Subclasses take other arguments than their message: unpickled (from kiln's worker process, isolation.py)
        # from their state, not by calling __init__ again.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type, args: tuple, state: dict) -> KilnError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class UsageError(KilnError):
    """A setting or name given to kiln that it cannot use (the command line's usage errors)."""

    exit_code = 2


class InputError(KilnError):
    """A model, data or artifact file that is missing, malformed or inconsistent."""

    exit_code = 3


class SettingError(InputError):
    """A setting's value that kiln cannot use. The message names settings as {field} placeholders over `owner`'s
    fields: str() reads them as field names (max_accuracy_drop); the CLI spells them as flags, kiln.toml as keys
    (kiln.settings.as_flags, as_keys)."""

    def __init__(self, owner: type, template: str):
        self.owner, self.template = owner, template
        super().__init__(self.spelled(lambda name: name))

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with each {name} of one of owner's fields replaced by spell(name)."""
        names = set(getattr(self.owner, "__dataclass_fields__", ()))
        return re.sub(r"\{(\w+)\}", lambda m: spell(m[1]) if m[1] in names else m[0], self.template)


class UnsupportedOpError(KilnError):
    """The model uses operators (by op, the nodes) or has graph inputs/outputs (by why, their names) that kiln
    cannot convert, compile or pass; all of them are listed."""

    exit_code = 4

    def __init__(self, source: str, unsupported: dict[str, list[str]], hint: str = "",
                 io: dict[str, list[str]] | None = None, freezable: tuple[str, ...] = ()):
        # freezable: model inputs setting parameters that must be constant; `--freeze` makes them so
        self.unsupported, self.io, self.freezable = unsupported, io or {}, freezable
        listed = []
        if self.io:
            listed.append("unsupported model inputs/outputs: "
                          + "; ".join(f"{why} ({', '.join(names)})" for why, names in self.io.items()))
        if unsupported:
            parts = []
            for op, nodes in sorted(unsupported.items()):
                shown = ", ".join(nodes[:5]) + (", ..." if len(nodes) > 5 else "")
                parts.append(f"{op} \u00d7{len(nodes)} (nodes {shown})")
            listed.append(f"unsupported {source} ops: " + "; ".join(parts))
        hint = hint or "file an issue with the model attached, or replace these ops before export"
        super().__init__("; ".join(listed) + f". {hint}")


class TargetError(KilnError):
    """An unknown target, a missing toolchain, or a host that cannot run the artifact."""

    exit_code = 5


class AccuracyGateError(KilnError):
    """Quantization lost more accuracy than the gate allows."""

    exit_code = 6


class RemoteError(KilnError):
    """An RPC server or tracker that cannot be reached, has no free server, or failed during a remote run."""

    exit_code = 8


# `kiln build --check` exits with this when an artifact is out of date (not an error of kiln's).
OUT_OF_DATE_EXIT_CODE = 7
BROKEN_PIPE_EXIT_CODE = 128 + signal.SIGPIPE  # as a shell reports a process killed by SIGPIPE

EXIT_CODES = {
    0: "success",
    1: "internal error (a bug in kiln: please report it)",
    UsageError.exit_code: "usage error (bad command-line option or argument)",
    InputError.exit_code: "bad model, input data or artifact",
    UnsupportedOpError.exit_code: "the model uses unsupported operators",
    TargetError.exit_code: "unknown target, missing toolchain, or host lacks the target's instruction set",
    AccuracyGateError.exit_code: "accuracy gate failed",
    OUT_OF_DATE_EXIT_CODE: "kiln build --check: some artifact is out of date",
    RemoteError.exit_code: "RPC server or tracker unreachable, busy, or failed (--rpc, --rpc-tracker)",
    128 + signal.SIGINT: "stopped by SIGINT (Ctrl-C)",
    128 + signal.SIGTERM: "stopped by SIGTERM",
    BROKEN_PIPE_EXIT_CODE: "the program reading the output closed it (e.g. `| head`)",
}
