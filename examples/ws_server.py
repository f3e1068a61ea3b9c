"""A WebSocket server that heartbeats every client and drops the dead ones.

Run:  python examples/ws_server.py [PORT]      (default 8765; 0 picks a free port)

Every message is echoed back to its sender. Each client is pinged after 1 s of silence and
dropped (close code 1011) after 3 s without any frame from it; the server prints who came,
who left and why. Try it with examples/ws_client.py, then kill -STOP the client.
"""

from __future__ import annotations

import functools
import sys

import trio

from pulse import HeartbeatPolicy, PulseError
from pulse.plugins.websocket import Dropped, Overflow, ServerConnection, serve_websocket


async def handle(conn: ServerConnection) -> None:
    """Echo until the client leaves; say how it left."""
    print(f"{conn.remote} connected (path {conn.path})", flush=True)
    try:
        async for message in conn:
            await conn.send(message)
    except PulseError as exc:  # send() after the client was declared dead
        print(f"{conn.remote} send failed: {exc}", flush=True)
    print(f"{conn.remote} left: code {conn.close_code}, {conn.close_reason}", flush=True)


def report_drop(dropped: Dropped) -> None:
    """Nothing is dropped silently: the server says which echoes it could not deliver.

    Two different things reach ``on_drop``. An echo that never left the server (the queue
    overflowed, or the client was gone first) is lost for sure. An echo that was written to
    the socket but not yet confirmed when the connection ended (``possibly_delivered``) is
    usually *not* lost: a client that closes right after reading its last echo closes before
    the server's confirmation ping comes back, and a frozen client finds the echoes in its
    socket buffer when it wakes up. The server cannot tell, so it says "unconfirmed".
    """
    if dropped.possibly_delivered:
        print(f"{dropped.peer} unconfirmed (written, the client may have it): "
              f"{dropped.message!r} ({dropped.reason})", flush=True)
    else:
        print(f"{dropped.peer} not sent: {dropped.message!r} ({dropped.reason})", flush=True)


async def main(port: int) -> None:
    policy = HeartbeatPolicy(interval=1.0, timeout=3.0)
    start = functools.partial(serve_websocket, handle, host="127.0.0.1", port=port,
                              policy=policy, queue_size=64, overflow=Overflow.DROP_OLDEST,
                              on_drop=report_drop)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(start)
        print(f"listening on ws://127.0.0.1:{server.port}/", flush=True)


if __name__ == "__main__":
    status = 0
    try:
        trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
