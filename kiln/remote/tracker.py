"""`kiln rpc-tracker`: TVM's RPC tracker, which pools servers by key and hands each client a free one.

It is TVM's own (tvm.rpc.tracker, apache-tvm 0.27, on tornado), run in the foreground on a socket kiln binds,
so that port 0 can pick a free port and the command can say which. It needs the full install.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Callable

from kiln.errors import RemoteError, UsageError


def serve(host: str, port: int, ready: Callable[[int], None]) -> None:
    """Track servers until killed; `ready(port)` once listening."""
    try:
        from tvm.rpc.tracker import TrackerServerHandler
    except ImportError as exc:
        raise UsageError(f"kiln rpc-tracker runs TVM's tracker, which needs the full kiln-ml install ({exc}); "
                         "run it on the build machine") from None
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        raise RemoteError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port (0: any free one)") \
            from None
    listener.listen(128)
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler = TrackerServerHandler(listener, stop_key=f"tracker:{random.random()}")
    ready(listener.getsockname()[1])
    handler.run()
