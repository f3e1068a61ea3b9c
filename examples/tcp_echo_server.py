"""A custom TCP service wrapped in pulse heartbeats: an echo server that drops dead clients.

Run:  python examples/tcp_echo_server.py 7070
"""

from __future__ import annotations

import sys

import trio

from pulse import HeartbeatConnection, HeartbeatPolicy, PulseError
from pulse.plugins.tcp import TcpKeepalive, serve_tcp


async def handle(conn: HeartbeatConnection) -> None:
    """Answer every message; when the client dies, say how we noticed."""
    print(f"{conn.peer} connected as {conn.remote_peer_id!r}", flush=True)
    try:
        async for message in conn:
            await conn.send({"echo": message})
    except PulseError as exc:
        print(f"{conn.peer} dropped: {exc}", flush=True)


async def main(port: int) -> None:
    policy = HeartbeatPolicy(interval=1.0, timeout=3.0)
    # Also ask the kernel to give up on an unreachable peer after 3 s of unacknowledged data.
    keepalive = TcpKeepalive(idle=1, interval=1, count=2, user_timeout=3)

    async def started(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_tcp(handle, port=port, policy=policy, keepalive=keepalive, task_status=task_status)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(started)
        print(f"listening on {listeners[0].socket.getsockname()[1]}", flush=True)


if __name__ == "__main__":
    status = 0
    try:
        trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 7070)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
