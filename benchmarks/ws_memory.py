"""Where the bytes of a held WebSocket connection go: tracemalloc inside a pulse ws:// server.

Run: ``python benchmarks/ws_memory.py [--count 1000] [--handler echo|app] [--group lineno]``

Starts ``pulse.plugins.websocket.serve`` in this process (heartbeat interval 100 s, so no
ping is in flight while measuring), opens ``--count`` connections from a thread with plain
blocking sockets (a raw upgrade request; nothing else is sent), waits until every one is
connected and the server is idle, and prints the Python memory the server allocated per
connection: the total, then the largest allocation sites (``--group``: ``lineno``,
``filename`` or ``traceback`` with ``--depth`` frames). ``--handler app`` serves an
application handler (``async def app(conn): await echo(conn)``) instead of the built-in
``echo``, to see what a handler's task costs.

This counts Python allocations only (no allocator overhead, no kernel socket buffers); the
RSS per connection side by side with the ``websockets`` server is ``bench_hold.py``'s job.
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import socket
import sys
import threading
import tracemalloc
from typing import Any

import trio

from pulse._core.policy import HeartbeatPolicy
from pulse.plugins.websocket.server import ServerConnection, WebSocketServer, echo, serve_websocket

WARMUP = 20


def open_clients(port: int, count: int, into: list[socket.socket], done: threading.Event) -> None:
    """Connect ``count`` raw WebSocket clients (upgrade only) and keep their sockets."""
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed during the upgrade")
            answer += chunk
        into.append(sock)
    done.set()


async def app(conn: ServerConnection) -> None:
    """An application handler (one task per client): echo."""
    await echo(conn)


async def connect_and_wait(server: WebSocketServer, count: int, sockets: list[socket.socket]) -> None:
    done = threading.Event()
    expected = len(server.connections) + count
    threading.Thread(target=open_clients, args=(server.port, count, sockets, done),
                     daemon=True).start()
    while not done.is_set() or len(server.connections) < expected:  # noqa: ASYNC110
        await trio.sleep(0.05)
    await trio.sleep(0.5)  # handshake tasks finish, writers go idle


async def measure(args: argparse.Namespace) -> None:
    sockets: list[socket.socket] = []
    handler: Any = app if args.handler == "app" else echo
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(
            lambda task_status: serve_websocket(handler, policy=HeartbeatPolicy(100, 300),
                                      task_status=task_status))
        await connect_and_wait(server, WARMUP, sockets)  # first-use caches, code objects
        gc.collect()
        before = tracemalloc.take_snapshot()
        await connect_and_wait(server, args.count, sockets)
        gc.collect()
        after = tracemalloc.take_snapshot()
        ignore = [tracemalloc.Filter(False, pattern) for pattern in
                  ("*/threading.py", "*/socket.py", tracemalloc.__file__, __file__)]
        stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), args.group)
        total = sum(stat.size_diff for stat in stats)
        print(f"handler={args.handler}: {total / args.count:,.0f} bytes of Python memory per "
              f"connection ({args.count:,} connections)")
        for stat in stats[:args.top]:
            if stat.size_diff / args.count < 8:
                break
            print(f"{stat.size_diff / args.count:8.0f} B {stat.count_diff / args.count:5.1f} blocks")
            for line in stat.traceback.format()[-2 * args.depth:]:
                print("    " + line.strip())
        nursery.cancel_scope.cancel()
    for sock in sockets:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--handler", choices=("echo", "app"), default="echo")
    parser.add_argument("--group", choices=("lineno", "filename", "traceback"), default="lineno")
    parser.add_argument("--depth", type=int, default=1, help="frames per traceback")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    tracemalloc.start(max(1, args.depth))
    trio.run(measure, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
