"""Where a remote run goes (one RPC server, or any free server of a key at a tracker) and the session to it.

TVM's runtime library carries the RPC client (rpc.Connect and the remote device API), and the tracker speaks
JSON over a socket, so this needs tvm_ffi and kiln.tvm_runtime only: `kiln run --rpc` works from kiln-runtime.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

import kiln.tvm_runtime as tvm_runtime
from kiln.errors import RemoteError, UsageError

# TVM's wire constants (tvm/rpc/base.py): the tracker's handshake and its request codes.
TRACKER_MAGIC = 0x2F271
SUCCESS, PUT, REQUEST, UPDATE_INFO, SUMMARY, GET_PENDING_MATCHKEYS = 0, 3, 4, 5, 6, 7
# Registered by `kiln rpc-server`: the server's machine and CPU flags, for the checks `kiln.load` does locally.
HOST_FUNCTION = "kiln.rpc.host"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, option: str) -> "Address":
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{option} takes HOST:PORT (like 127.0.0.1:9190), not {text!r}")
        return cls(host, int(port))


@dataclass(frozen=True)
class HostFacts:
    """What a kiln server reports about its machine."""

    machine: str  # platform.machine(): x86_64, aarch64
    flags: frozenset[str]  # /proc/cpuinfo's flags (x86) or Features (ARM)
    cpus: int  # the CPUs the server may use: TVM's thread pool size there


@dataclass(frozen=True)
class Remote:
    """One server (`server`), or the servers registered at `tracker` under `key`. `timeout`: seconds to wait for a
    free server of the key."""

    server: Address | None = None
    tracker: Address | None = None
    key: str = ""
    timeout: float = 60.0

    def __post_init__(self):
        if (self.server is None) == (self.tracker is None):
            raise UsageError("give either --rpc HOST:PORT (one server) or --rpc-tracker HOST:PORT with --rpc-key")
        if self.tracker and not self.key:
            raise UsageError(f"--rpc-tracker {self.tracker} needs --rpc-key: the key the servers registered with "
                             "(kiln rpc-server --tracker HOST:PORT --key KEY)")

    def describe(self) -> str:
        return f"RPC server {self.server}" if self.server else f"a {self.key!r} server of RPC tracker {self.tracker}"

    def connect(self) -> "Session":
        if self.server:
            return Session.open(self.server, self.key, f"RPC server {self.server}")
        with Tracker(self.tracker) as tracker:
            server, match_key = tracker.request(self.key, self.timeout)
        return Session.open(server, match_key, f"RPC server {server} (key {self.key!r}, tracker {self.tracker})")


class Session:
    """A connection to one RPC server: upload files, load modules, allocate on its devices."""

    def __init__(self, handle, where: str):
        self.handle, self.where = handle, where
        self._index = tvm_runtime.global_function("rpc.SessTableIndex")(handle)

    @classmethod
    def open(cls, server: Address, key: str, where: str) -> "Session":
        try:
            return cls(tvm_runtime.global_function("rpc.Connect")(server.host, server.port, key, False), where)
        except RuntimeError as exc:
            raise RemoteError(f"cannot reach {where}: {last_line(exc)}; start one with `kiln rpc-server` "
                              "(or check the address and key)") from None

    def device(self, kind: int, index: int = 0):
        """Device `kind` of the server, as a tvm_ffi device that allocations and copies route to it."""
        import tvm_ffi

        return tvm_ffi.device(self.device_code(kind), index)

    def device_code(self, kind: int) -> int:
        return kind + (self._index + 1) * tvm_runtime.RPC_SESS_MASK

    def function(self, name: str):
        """The server's global function `name`, or None where it has none."""
        try:
            return self.handle.get_function(name)
        except AttributeError:
            return None

    def upload(self, name: str, data: bytes) -> None:
        """Write `data` to `name` in the session's work folder on the server (removed when the session ends)."""
        self.function("tvm.rpc.server.upload")(name, bytearray(data))

    def load_module(self, name: str):
        return tvm_runtime.global_function("rpc.LoadRemoteModule")(self.handle, name)

    def host(self) -> HostFacts | None:
        """The server's machine and CPU flags, or None for a server that does not say (TVM's own)."""
        describe = self.function(HOST_FUNCTION)
        if describe is None:
            return None
        facts = json.loads(describe())
        return HostFacts(facts["machine"], frozenset(facts["flags"]), facts["cpus"])


class Tracker:
    """A client connection to a TVM RPC tracker (tvm/rpc/tracker.py speaks: [code, args...] as length-prefixed
    JSON)."""

    def __init__(self, address: Address, timeout: float = 10.0):
        self.address = address
        try:
            self._socket = socket.create_connection((address.host, address.port), timeout=timeout)
            self._socket.sendall(struct.pack("<i", TRACKER_MAGIC))
            magic = struct.unpack("<i", receive(self._socket, 4))[0]
        except OSError as exc:
            raise RemoteError(f"cannot reach RPC tracker {address}: {exc}; start one with `kiln rpc-tracker`") from None
        if magic != TRACKER_MAGIC:
            raise RemoteError(f"{address} is not an RPC tracker (it answered with magic {magic:#x})")

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self._socket.close()

    def call(self, *message: Any, timeout: float | None = 10.0) -> Any:
        self._socket.settimeout(timeout)
        data = json.dumps(message).encode()
        self._socket.sendall(struct.pack("<i", len(data)) + data)
        size = struct.unpack("<i", receive(self._socket, 4))[0]
        return json.loads(receive(self._socket, size))

    def servers(self, key: str) -> int:
        """How many servers are registered under `key`, busy or free."""
        summary = self.call(SUMMARY)[1]
        return sum(1 for server in summary["server_info"] if server.get("key") == f"server:{key}")

    def request(self, key: str, timeout: float) -> tuple[Address, str]:
        """A free server of `key` (the tracker hands it out until its session ends) and the key to connect with."""
        try:
            answer = self.call(REQUEST, key, "", 1, timeout=timeout)
        except TimeoutError:
            raise RemoteError(f"RPC tracker {self.address} had no free {key!r} server within {timeout:g} s; "
                              f"start one with `kiln rpc-server --tracker {self.address} --key {key}`") from None
        except OSError as exc:
            raise RemoteError(f"RPC tracker {self.address} dropped the request for a {key!r} server: {exc}") from None
        if answer[0] != SUCCESS:
            raise RemoteError(f"RPC tracker {self.address} refused the request for a {key!r} server: {answer}")
        host, port, match_key = answer[1]
        return Address(host, int(port)), match_key


def receive(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from `sock` (OSError when it closes first)."""
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise OSError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def last_line(exc: Exception) -> str:
    """The line of a TVM error that says what went wrong (its message ends a traceback)."""
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
