"""Kernel candidates timed on remote servers, for `kiln tune --rpc-tracker` (or --rpc: one server).

The pool holds one session per server of the key for the whole tuning and times one candidate at a time on each,
so N servers measure N candidates at once. A server that fails mid-measurement (killed, unplugged, its session
crashed) is dropped; the candidate goes to another server, and the pool asks the tracker for a replacement. When
no server is left, candidates fail at once and tuning finishes with the records it has.
"""

from __future__ import annotations

import concurrent.futures
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kiln.tvm_runtime as tvm_runtime
from kiln.errors import RemoteError
from kiln.remote.session import Remote, Session, Tracker, last_line
from kiln.targets.presets import Preset

ATTEMPTS = 3  # servers one candidate is tried on before it counts as failed
REPLACE_TIMEOUT = 5.0  # seconds to wait for the tracker to offer a replacement server
# Flushes the CPU caches before each run but the first argument's (the output), as local tuning does.
CACHE_FLUSH = "cache_flush_cpu_non_first_arg"


@dataclass(frozen=True)
class PoolReport:
    servers: int  # sessions opened at the start
    lost: tuple[str, ...]  # servers dropped during the run (their in-flight candidates were retried elsewhere)
    retried: int  # candidates re-run on another server after theirs failed


class CandidateError(Exception):
    """The candidate failed on a server that is still healthy: its own fault, not the server's."""


class ServerLost(Exception):
    """The server stopped answering while it measured a candidate."""


class RemotePool:
    def __init__(self, remote: Remote, preset: Preset, repeat: int, workdir: Path):
        """`workdir`: where candidates' libraries are linked (each is deleted once measured)."""
        self.remote, self.preset, self.repeat, self.workdir = remote, preset, repeat, workdir
        count = 1
        if remote.tracker:
            with Tracker(remote.tracker) as tracker:
                count = tracker.servers(remote.key)
            if not count:
                raise RemoteError(f"RPC tracker {remote.tracker} has no {remote.key!r} servers; start them with "
                                  f"`kiln rpc-server --tracker {remote.tracker} --key {remote.key}`")
        self._free: queue.Queue[Session] = queue.Queue()
        self._lock = threading.Lock()
        self._live = 0
        self._lost: list[str] = []
        self._retried = 0
        self.cpus: int | None = None  # the servers' CPU count, where they say (kiln rpc-server does)
        for _ in range(count):
            self._add(self._checked(remote.connect()))
        self.servers = count
        self._executor = concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="kiln-rpc-measure")

    def _checked(self, session: Session) -> Session:
        from kiln.targets.host import check_cpu

        facts = session.host()
        if facts:
            check_cpu(self.preset, facts.machine, facts.flags, session.where)
            self.cpus = facts.cpus
        return session

    def submit(self, library: Path, args_info) -> concurrent.futures.Future:
        """Time `library`'s kernel on the next free server: a future of [seconds] (the median of `repeat` runs)."""
        return self._executor.submit(self._measure, library, [(tuple(int(d) for d in info.shape), str(info.dtype))
                                                              for info in args_info])

    def report(self) -> PoolReport:
        return PoolReport(self.servers, tuple(self._lost), self._retried)

    def __enter__(self) -> "RemotePool":
        return self

    def __exit__(self, *exc) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _measure(self, library: Path, args: list[tuple[tuple[int, ...], str]]) -> list[float]:
        try:
            for attempt in range(ATTEMPTS):
                session = self._take()
                try:
                    seconds = _time(session, library, args, self.repeat)
                except ServerLost as exc:  # the candidate goes to another server
                    self._drop(session, str(exc))
                    with self._lock:
                        self._retried += attempt + 1 < ATTEMPTS
                    continue
                except BaseException:
                    self._free.put(session)
                    raise
                self._free.put(session)
                return [seconds]
            raise RemoteError(f"{library.name} failed on {ATTEMPTS} servers in a row")
        finally:
            library.unlink(missing_ok=True)

    def _take(self) -> Session:
        while True:
            with self._lock:
                if not self._live:
                    raise RemoteError(f"no {self.remote.describe()} is left to measure on (lost: "
                                      f"{', '.join(self._lost)})")
            try:
                return self._free.get(timeout=1.0)
            except queue.Empty:
                continue

    def _add(self, session: Session) -> None:
        with self._lock:
            self._live += 1
        self._free.put(session)

    def _drop(self, session: Session, why: str) -> None:
        with self._lock:
            self._live -= 1
            self._lost.append(f"{session.where}: {why}")
        if self.remote.tracker:
            try:
                self._add(self._checked(Remote(tracker=self.remote.tracker, key=self.remote.key,
                                               timeout=REPLACE_TIMEOUT).connect()))
            except RemoteError:
                pass  # none free: the others carry on


def _time(session: Session, library: Path, args: list[tuple[tuple[int, ...], str]], repeat: int) -> float:
    """Upload, load and time one candidate on a session: ServerLost when the server fails, CandidateError when the
    candidate does (and the server still answers)."""
    try:
        session.upload(library.name, library.read_bytes())
        module = session.load_module(library.name)
        device = session.device(tvm_runtime.KDL_CPU)
        fill = session.function("tvm.contrib.random.random_fill_for_measure")
        tensors = [tvm_runtime.empty(shape, dtype, device) for shape, dtype in args]
        for tensor in tensors:
            fill(tensor)
        evaluate = tvm_runtime.global_function("runtime.RPCTimeEvaluator")
        # (module, function, device type, id, number, repeat, min_repeat_ms, limit_zero_time_iterations,
        #  cooldown_interval_ms, repeats_to_cooldown, cache_flush_bytes, f_preproc)
        timer = evaluate(module, "main", device.dlpack_device_type(), 0, 1, repeat, 0, 100, 0, 1, 0, CACHE_FLUSH)
        results = struct.unpack(f"@{repeat}d", bytes(timer(*tensors)))
    except Exception as exc:  # noqa: BLE001 - TVM's errors arrive as several Python types
        if not _answers(session):
            raise ServerLost(last_line(exc)) from None
        raise CandidateError(last_line(exc)) from None
    finally:
        _quietly(session, "tvm.rpc.server.remove", library.name)
    return float(np.median(results))


def _answers(session: Session) -> bool:
    try:
        session.function("runtime.GetDeviceAttr")(tvm_runtime.KDL_CPU, 0, 0)
        return True
    except Exception:  # noqa: BLE001 - any failure to answer means the server is gone
        return False


def _quietly(session: Session, name: str, *args) -> None:
    try:
        session.function(name)(*args)
    except Exception:  # noqa: BLE001 - a server that is gone removed its work folder with its session
        pass
