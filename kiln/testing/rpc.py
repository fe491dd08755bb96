"""An RPC tracker and servers on loopback, as subprocesses (`kiln rpc-tracker`, `kiln rpc-server`), for the tests
and benchmarks/rpc_tuning.py."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from kiln.remote.session import Address, Tracker

HOST = "127.0.0.1"


class Process:
    """A `kiln` command that serves until stopped; `address` is where it listens (from its first stdout line)."""

    def __init__(self, args: list[str], log: Path, kiln: tuple[str, ...] = (sys.executable, "-m", "kiln")):
        """`kiln`: the command that runs kiln (another install's, under qemu-user)."""
        self.log = log
        self._log = open(log, "w")
        self.process = subprocess.Popen([*kiln, *args], stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.process.stdout.readline()
        if " listening on " not in line:
            self.stop()
            raise RuntimeError(f"kiln {' '.join(args)} did not start: {line!r} {log.read_text()}")
        self.address = Address.parse(line.split(" listening on ", 1)[1].split(",")[0].strip(), "address")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.stdout.close()
        self._log.close()


@contextlib.contextmanager
def loopback(folder: Path, servers: int, key: str) -> Iterator[tuple[Process, list[Process]]]:
    """A tracker and `servers` servers registered with it under `key`, stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    started: list[Process] = []
    try:
        tracker = Process(["rpc-tracker", "--host", HOST, "--port", "0"], folder / "tracker.log")
        started.append(tracker)
        for index in range(servers):
            started.append(Process(["rpc-server", "--host", HOST, "--port", "0", "--tracker", str(tracker.address),
                                    "--key", key], folder / f"server{index}.log"))
        wait_for_servers(tracker.address, key, servers)
        yield tracker, started[1:]
    finally:
        for process in reversed(started):
            process.stop()


def wait_for_servers(tracker: Address, key: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with Tracker(tracker) as client:
            if client.servers(key) >= count:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} {key!r} servers did not register with {tracker} within {timeout:g} s")
        time.sleep(0.2)
