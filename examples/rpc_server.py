"""A msgpack-RPC server whose connections are heartbeat-supervised by pulse.

Run:  python examples/rpc_server.py [PORT] [--heartbeat SECONDS]

Methods: ``add(a, b)``, ``echo(x)``, ``sleep(seconds)``. All connections share one pulse
timing wheel; a client that goes silent (crashed, SIGSTOPped, unplugged) is disconnected after
three heartbeats without a word, and each close is reported with its heartbeat counts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio
from msgpack_rpc import Method, RpcConnection

from pulse.cli.logs import configure_logging
from pulse.rpc import ChannelTiming, RequestIds, Role, open_heartbeat_timer, tick_for


async def add(a: int, b: int) -> int:
    return a + b


async def echo(x: Any) -> Any:
    return x


async def sleep(seconds: float) -> float:
    await trio.sleep(seconds)
    return seconds


METHODS: dict[str, Method] = {"add": add, "echo": echo, "sleep": sleep}


async def main(port: int, heartbeat: float) -> None:
    timing = ChannelTiming(heartbeat)
    ids = RequestIds(limit=2**32)  # msgpack-RPC msgids are 32-bit
    async with open_heartbeat_timer(tick=tick_for(timing)) as timer:

        async def handle(stream: trio.SocketStream) -> None:
            host, peer_port = stream.socket.getpeername()[:2]
            peer = f"{host}:{peer_port}"
            connection = RpcConnection(
                stream, timer, Role.PROVIDER, timing=timing, ids=ids, methods=METHODS, peer=peer
            )
            print(f"connected {peer}", flush=True)
            reason = await connection.serve()
            stats = connection.channel.stats()
            print(
                f"closed {peer}: {reason} (heartbeats received {stats.heartbeats_received}, "
                f"sent {stats.heartbeats_sent}, answered {stats.heartbeats_answered})",
                flush=True,
            )

        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        host, bound = listeners[0].socket.getsockname()[:2]
        print(f"listening on {host}:{bound}", flush=True)
        await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, default=7080,
                        help="loopback port to listen on (default 7080)")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                        help="heartbeat interval in seconds (default 1); dead after 3 x S")
    args = parser.parse_args()
    configure_logging("console", "warning")
    status = 0
    try:
        trio.run(main, args.port, args.heartbeat)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
