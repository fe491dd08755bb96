"""Build what is out of date, skip the rest, and never leave a half-written artifact.

An artifact is up to date when its manifest records the fingerprint of the current inputs,
settings, target and tool versions. Each output is guarded by a lock file beside it, so two
`kiln build` processes on the same outputs take turns; the second finds the work done.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kiln.project.config import BuildItem, read_config
from kiln.compiler import artifact
from kiln.compiler.fingerprint import fingerprint
from kiln.errors import InputError, KilnError, SettingError, UsageError
from kiln.progress import QUIET, Progress
from kiln.settings import as_keys


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stale: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"built": self.built, "skipped": self.skipped, "stale": self.stale, "failed": self.failed}


def run(config: Path, names: tuple[str, ...] = (), *, jobs: int = 1, check: bool = False,
        progress: Progress = QUIET) -> BuildReport:
    """Build (or with `check`, only report) what `config` declares, or the artifacts named in `names`."""
    items = read_config(config)
    unknown = sorted(set(names) - {item.name for item in items})
    if unknown:
        raise UsageError(f"no artifact named {', '.join(unknown)} in {config}; it declares "
                         f"{', '.join(dict.fromkeys(item.name for item in items))}")
    selected = [item for item in items if not names or item.name in names]
    return stale_report(selected) if check else build(selected, jobs, progress)


def staleness(item: BuildItem) -> str | None:
    """Why `item` must be rebuilt, or None when its artifact is up to date."""
    output = item.options.output
    if not (output / artifact.MANIFEST).is_file():
        return "no artifact"
    try:
        build = artifact.read_manifest(output).build
    except InputError:
        return "unreadable manifest"
    recorded = build.fingerprint if build else None
    return None if recorded == fingerprint(item.model, item.options) else "inputs, settings or tools changed"


def stale_report(items: list[BuildItem]) -> BuildReport:
    """What is out of date among `items`, building nothing."""
    report = BuildReport()
    for item in items:
        reason = staleness(item)
        if reason:
            report.stale.append({"artifact": str(item.options.output), "reason": reason})
        else:
            report.skipped.append(str(item.options.output))
    return report


def build(items: list[BuildItem], jobs: int = 1, progress: Progress = QUIET) -> BuildReport:
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
            progress.step(f"{item.label}: {outcome[0]}")
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
    from kiln.pipeline import compile_model

    progress = progress or QUIET
    try:
        item.options.output.parent.mkdir(parents=True, exist_ok=True)
        with _locked(item.options.output):
            if staleness(item) is None:
                progress.step(f"{item.label}: up to date")
                return "skipped", "", 0
            progress.step(f"{item.label}: building")
            compile_model(item.model, item.options, progress)
            return "built", "", 0
    except SettingError as exc:  # the library names settings; kiln.toml calls them by their keys
        return "failed", as_keys(exc), exc.exit_code
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
