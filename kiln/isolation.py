"""The `kiln` command's work on model files in a child process, under memory and CPU-time limits.

Model files come from elsewhere, and native readers (treelite, onnx's C++ checker, TVM's importer, the C
compiler) can crash or run away on a corrupt one. In a child, a crash becomes an exit-3 message instead of a
dead CLI, a runaway stops at the limits instead of starving the machine, and SIGINT/SIGTERM end the command
promptly even while the child is inside native code: the parent, waiting in Python, kills it and removes what
it was staging. The child is forked from the CLI process before it has run any TVM code (TVM's thread pool does
not survive a fork), so it starts in milliseconds; `kiln.compile` and the other API functions run in the
caller's process.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import resource
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from kiln.errors import InputError, KilnError, UsageError

T = TypeVar("T")
MEMORY_VARIABLE, CPU_VARIABLE = "KILN_MEMORY_LIMIT_GB", "KILN_CPU_LIMIT_S"
_PR_SET_PDEATHSIG = 1
_GRACE_SECONDS = 2.0  # for a terminated child to leave native code and clean up, before it is killed


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None  # address space of the child
    cpu_seconds: int | None

    @classmethod
    def from_environment(cls) -> "Limits":
        """KILN_MEMORY_LIMIT_GB (default: three quarters of this machine's memory) and KILN_CPU_LIMIT_S
        (default: none); 0 turns a limit off."""
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory = _number(MEMORY_VARIABLE, physical * 3 / 4 / 2**30)
        cpu = _number(CPU_VARIABLE, 0)
        return cls(int(memory * 2**30) or None, int(cpu) or None)

    def describe(self) -> str:
        parts = [f"{self.memory_bytes / 2**30:.1f} GiB of memory ({MEMORY_VARIABLE})" if self.memory_bytes else "",
                 f"{self.cpu_seconds} CPU seconds ({CPU_VARIABLE})" if self.cpu_seconds else ""]
        return " and ".join(part for part in parts if part) or "no limits"


def _number(variable: str, default: float) -> float:
    raw = os.environ.get(variable)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{variable}={raw!r} is not a number >= 0 (0: no limit)")
    return value


def run_isolated(work: Callable[[], T], limits: Limits, doing: str, cleanup: Callable[[], None] = lambda: None) -> T:
    """work() run in a forked child under `limits`, its result or its exception returned or raised here. A child
    killed by a signal or a limit is an InputError naming `doing` ("reading model.onnx"). `cleanup` runs after
    the child has ended, however it ended (it removes staging folders a killed child left)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(work, limits, sender))  # not a daemon: builds start workers
    child.start()
    sender.close()
    try:
        try:
            outcome, value, child_traceback = receiver.recv()
        except EOFError:
            child.join()
            raise _died(child.exitcode, limits, doing) from None
        child.join()
    finally:  # also when a signal ends this process while it waits
        _stop(child)
        cleanup()
    if outcome == "ok":
        return value
    if child_traceback and not isinstance(value, KilnError):
        value.add_note(f"(in kiln's worker process)\n{child_traceback}")
    raise value


def _child(work: Callable[[], Any], limits: Limits, sender) -> None:
    faulthandler.disable()  # a crash is reported by the parent, in one line
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends this process
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: staging is removed
    # Killed with its parent, even inside native code, where the SIGTERM handler would never run; the staging
    # folder it leaves is removed by the next build (artifact.remove_abandoned_stages)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if limits.memory_bytes:
        _lower(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
    if limits.cpu_seconds:
        _lower(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5)
    try:
        message = ("ok", work(), "")
    except MemoryError:
        message = ("error", _worker_failed(f"ran out of memory: kiln's worker stops at {limits.describe()}; "
                                           "raise the limit if the model needs more", "memory"), "")
    except Exception as exc:
        message = ("error", exc, "" if isinstance(exc, KilnError) else traceback.format_exc())
    try:
        sender.send(message)
    except Exception as exc:  # an exception that does not pickle: its text crosses instead
        sender.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]} ({exc})"), message[2]))
    sender.close()


def _lower(kind: int, soft: int, hard: int) -> None:
    """Set a limit, never above the one this process was started with (raising it is not allowed)."""
    _, current = resource.getrlimit(kind)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))


def _died(exitcode: int | None, limits: Limits, doing: str) -> InputError:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        if -exitcode in (signal.SIGXCPU, signal.SIGKILL) and limits.cpu_seconds:
            cause = f"it ran past the CPU time limit or was killed ({name}; limits: {limits.describe()})"
            kind = "cpu time"
        else:
            cause, kind = f"it died of {name}, a crash in native code", name
    else:
        cause, kind = f"it exited with status {exitcode} without a result", f"exit status {exitcode}"
    return _worker_failed(f"kiln's worker process failed while {doing}: {cause}. The file is likely corrupt or not "
                          "what its name says; check it with the library that wrote it, or re-export it.", kind)


def _worker_failed(message: str, kind: str) -> InputError:
    """An InputError whose `worker_failed` says how the worker crashed or hit a limit ("memory", "cpu time",
    "SIGSEGV", ...), where it did not refuse the file with a message of its own: the fuzzer (kiln.testing.fuzz)
    counts these as failures."""
    error = InputError(message)
    error.worker_failed = kind
    return error


def _stop(child) -> None:
    if child.is_alive():
        child.terminate()
        child.join(_GRACE_SECONDS)
    if child.is_alive():
        child.kill()
    child.join()
