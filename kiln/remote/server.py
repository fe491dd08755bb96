"""`kiln rpc-server`: lend this machine to `kiln run/bench --rpc` and `kiln tune --rpc-tracker`.

It speaks TVM's RPC server protocol (tvm/rpc/server.py: the handshake, and registering with a tracker under a
key) and serves each session with TVM's own runtime loop (rpc.ServerLoop in libtvm_runtime.so), so a device
needs kiln-runtime only. Each session runs in a forked process with its own work folder, as TVM's server does:
a library that crashes ends its session, not the server. The server runs whatever library a client sends it,
with this user's rights: bind it to loopback (the default) or a network whose every client you trust.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import struct
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import kiln.tvm_runtime as tvm_runtime
from kiln.errors import RemoteError
from kiln.remote.session import (GET_PENDING_MATCHKEYS, HOST_FUNCTION, PUT, SUCCESS, UPDATE_INFO, Address, Tracker,
                                 receive)

RPC_MAGIC = 0xFF271  # tvm/rpc/base.py: the handshake, and its answers
CODE_SUCCESS, CODE_MISMATCH = RPC_MAGIC, RPC_MAGIC + 2
# As TVM's server: while registered, ask the tracker every PING seconds whether a client took this server's key;
# a key handed out but not used within UNUSED seconds (the client died) is replaced, so the server is offered again.
PING, UNUSED = 2.0, 4.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 9090  # 0: any free port (the one bound is passed to `ready`)
    tracker: Address | None = None
    key: str = ""  # with a tracker: the pool this server joins; alone: clients must give the same key


def serve(options: ServerOptions, ready: Callable[[int], None], log: Callable[[str], None]) -> None:
    """Serve sessions one at a time until killed; `ready(port)` once listening."""
    from kiln.compiler.backends.tvm.runner import prepare_thread_pool

    prepare_thread_pool()  # read by each session's TVM thread pool
    tvm_runtime.load_runtime()
    listener = socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((options.host, options.port))
    except OSError as exc:
        raise RemoteError(f"cannot listen on {options.host}:{options.port}: {exc.strerror}; pick another --port "
                          "(0: any free one)") from None
    listener.listen(8)
    port = listener.getsockname()[1]
    ready(port)
    tracker = None
    while True:
        try:
            if options.tracker and tracker is None:
                tracker = _register(options.tracker, options.key, port)
            connection, peer, timeout = _accept(listener, tracker, options.key, port)
        except (OSError, RemoteError) as exc:
            if tracker is None and options.tracker is None:
                raise
            log(f"lost RPC tracker {options.tracker} ({exc}); reconnecting")
            tracker = None
            time.sleep(PING)
            continue
        log(f"session from {peer[0]}:{peer[1]}")
        _serve_session(connection, timeout)
        log(f"session from {peer[0]}:{peer[1]} ended")


def _register(address: Address, key: str, port: int) -> Tracker:
    tracker = Tracker(address)
    if tracker.call(UPDATE_INFO, {"key": f"server:{key}", "addr": [None, port]}) != SUCCESS:
        raise RemoteError(f"RPC tracker {address} refused to register this server")
    return tracker


def _accept(listener: socket.socket, tracker: Tracker | None, key: str, port: int):
    """The next client that gives the right key: (connection, peer, session timeout or None)."""
    match_key = _offer(tracker, key, port) if tracker else key
    unused = 0
    while True:
        if tracker:
            if not select.select([listener], [], [], PING)[0]:
                unused = 0 if match_key in tracker.call(GET_PENDING_MATCHKEYS) else unused + 1
                if unused * PING > UNUSED + PING:
                    match_key, unused = _offer(tracker, key, port), 0
                continue
        connection, peer = listener.accept()
        connection.settimeout(10)
        try:
            magic, size = struct.unpack("<ii", receive(connection, 8))
            words = receive(connection, size).decode().split() if magic == RPC_MAGIC else []
        except (OSError, UnicodeDecodeError, struct.error):
            words = []
        if not words or words[0] != f"client:{match_key}":
            if words:
                connection.sendall(struct.pack("<i", CODE_MISMATCH))
            connection.close()
            continue
        answer = f"server:{key}".encode()
        connection.sendall(struct.pack("<ii", CODE_SUCCESS, len(answer)) + answer)
        connection.settimeout(None)
        timeout = next((float(w.split("=", 1)[1]) for w in words[1:] if w.startswith("-timeout=")), None)
        return connection, peer, timeout


def _offer(tracker: Tracker, key: str, port: int) -> str:
    """Offer this server to the tracker's clients under a fresh match key (the tracker hands the key out once)."""
    match_key = f"{key}:{random.random()}"
    if tracker.call(PUT, key, [port, match_key], None) != SUCCESS:
        raise RemoteError(f"RPC tracker {tracker.address} refused this server's offer")
    return match_key


def _serve_session(connection: socket.socket, timeout: float | None) -> None:
    workdir = tempfile.mkdtemp(prefix="kiln-rpc-")
    pid = os.fork()
    if pid == 0:
        try:
            _session(connection, workdir)
        except BaseException:  # noqa: BLE001 - the forked session reports and ends here, never returns
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    connection.close()  # the session's process holds its own copy
    exited = os.pidfd_open(pid)
    try:
        if not select.select([exited], [], [], timeout)[0]:  # the client's -timeout= ran out
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    finally:
        os.close(exited)
        shutil.rmtree(workdir, ignore_errors=True)


def _session(connection: socket.socket, workdir: str) -> None:
    """One client's session, in its own process: TVM's runtime serves the socket until the client leaves."""
    import tvm_ffi

    # Die with the server: a killed server must not leave a session process serving its client.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir(workdir)

    def load_module(name: str):
        return tvm_ffi.load_module(os.path.join(workdir, name))

    tvm_ffi.register_global_func("tvm.rpc.server.workpath", lambda name: os.path.join(workdir, name), override=True)
    tvm_ffi.register_global_func("tvm.rpc.server.load_module", load_module, override=True)
    tvm_ffi.register_global_func(HOST_FUNCTION, _host_facts, override=True)
    tvm_runtime.global_function("rpc.ServerLoop")(connection.fileno())


def _host_facts() -> str:
    from kiln.targets.host import cpu_flags

    return json.dumps({"machine": platform.machine(), "flags": sorted(cpu_flags()),
                       "cpus": len(os.sched_getaffinity(0))})

