"""Build what is out of date, skip the rest, and never leave a half-written artifact.

An artifact is up to date when its manifest records the fingerprint of the current inputs,
settings, target and tool versions. Each output is guarded by a lock file beside it, so two
`kiln build` processes on the same outputs take turns; the second finds the work done.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from kiln.build.config import BuildItem
from kiln.compiler import artifact
from kiln.compiler.fingerprint import fingerprint
from kiln.errors import KilnError

Progress = Callable[[str], None]


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stale: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"built": self.built, "skipped": self.skipped, "stale": self.stale, "failed": self.failed}


def staleness(item: BuildItem) -> str | None:
    """Why `item` must be rebuilt, or None when its artifact is up to date."""
    output = item.options.output
    if not (output / artifact.MANIFEST).is_file():
        return "no artifact"
    try:
        recorded = json.loads((output / artifact.MANIFEST).read_text()).get("build", {}).get("fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable manifest"
    return None if recorded == fingerprint(item.model, item.options) else "inputs, settings or tools changed"


def check(items: list[BuildItem]) -> BuildReport:
    report = BuildReport()
    for item in items:
        reason = staleness(item)
        if reason:
            report.stale.append({"artifact": str(item.options.output), "reason": reason})
        else:
            report.skipped.append(str(item.options.output))
    return report


def build(items: list[BuildItem], jobs: int = 1, progress: Progress = lambda _: None) -> BuildReport:
    report = BuildReport()
    if jobs <= 1:
        outcomes = (_build_one(item, progress) for item in items)
        for item, outcome in zip(items, outcomes):
            _record(report, item, outcome)
        return report
    context = multiprocessing.get_context("spawn")  # TVM's thread pools do not survive fork
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_build_one, item, None) for item in items]
        for item, future in zip(items, futures):
            outcome = future.result()
            progress(f"{item.label}: {outcome[0]}")
            _record(report, item, outcome)
    return report


def _record(report: BuildReport, item: BuildItem, outcome: tuple[str, str, int]) -> None:
    status, message, code = outcome
    output = str(item.options.output)
    if status == "built":
        report.built.append(output)
    elif status == "skipped":
        report.skipped.append(output)
    else:
        report.failed.append({"artifact": output, "error": message, "exit_code": code})


def _build_one(item: BuildItem, progress: Progress | None) -> tuple[str, str, int]:
    """("built" | "skipped" | "failed", error message, exit code); runs in a worker with --jobs."""
    from kiln.compiler.pipeline import compile_model

    say = progress or (lambda _: None)
    try:
        item.options.output.parent.mkdir(parents=True, exist_ok=True)
        with _locked(item.options.output):
            if staleness(item) is None:
                say(f"{item.label}: up to date")
                return "skipped", "", 0
            say(f"{item.label}: building")
            compile_model(item.model, item.options, say)
            return "built", "", 0
    except KilnError as exc:
        return "failed", str(exc), exc.exit_code
    except Exception as exc:  # reported per artifact; the other artifacts still build
        return "failed", f"internal error: {type(exc).__name__}: {exc}", 1


@contextlib.contextmanager
def _locked(output: Path) -> Iterator[None]:
    """Hold the output's lock, so that concurrent builds of one artifact take turns."""
    with open(output.with_name(f".{output.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
