"""A msgpack-RPC client that survives server restarts: pending calls fail at once when the
server dies, and the client reconnects with backoff.

Run:  python examples/rpc_client.py HOST:PORT [--heartbeat S] [--calls N] [--interval S]
                                   [--slow S] [--exit-after-reconnect] [--deadline S]

It calls ``add(i, i)`` every ``--interval`` seconds and prints each outcome; with ``--slow S``
it also keeps one ``sleep(S)`` call pending, to show it failing fast when the server is
killed. Heartbeats travel on the same connection as the calls, with ids from the same counter.
"""

from __future__ import annotations

import argparse
import sys

import trio
from msgpack_rpc import RemoteError, RpcConnection

from pulse import Backoff
from pulse.cli.logs import configure_logging
from pulse.errors import ConnectionClosed
from pulse.rpc import (
    ChannelTiming,
    HeartbeatTimer,
    RequestIds,
    Role,
    open_heartbeat_timer,
    reconnect_loop,
    tick_for,
)


class RpcClient:
    """One logical connection to the server, re-established whenever it is lost."""

    def __init__(self, host: str, port: int, timer: HeartbeatTimer, timing: ChannelTiming) -> None:
        self.host, self.port = host, port
        self.timer = timer
        self.timing = timing
        self.ids = RequestIds(limit=2**32)  # calls and heartbeats: one msgid space
        self.connection: RpcConnection | None = None
        self.connects = 0
        self.connected = trio.Event()

    async def call(self, method: str, *params: object) -> object:
        """Call on the current connection; fails at once when there is none."""
        connection = self.connection
        if connection is None:
            raise ConnectionClosed("not connected")
        return await connection.call(method, *params)

    async def run(self) -> None:
        backoff = Backoff(initial=0.1, maximum=2.0)
        await reconnect_loop(self._connect, self._session, backoff=backoff, peer=self.peer)

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    async def _connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)

    async def _session(self, stream: trio.SocketStream) -> None:
        connection = RpcConnection(
            stream, self.timer, Role.CONSUMER, timing=self.timing, ids=self.ids, peer=self.peer
        )
        self.connection = connection
        self.connects += 1
        self.connected.set()
        print(f"connected to {self.peer} (connection {self.connects})", flush=True)
        try:
            reason = await connection.serve()
        finally:
            self.connection = None
            self.connected = trio.Event()
        stats = connection.channel.stats()
        rtt = stats.rtt.avg
        print(
            f"disconnected: {reason} (heartbeats sent {stats.heartbeats_sent}, answered "
            f"{stats.heartbeats_answered}, avg rtt "
            f"{'-' if rtt is None else f'{rtt * 1000:.2f} ms'})",
            flush=True,
        )


async def main(args: argparse.Namespace) -> int:
    host, _, port = args.address.rpartition(":")
    timing = ChannelTiming(args.heartbeat)
    async with open_heartbeat_timer(tick=tick_for(timing)) as timer, trio.open_nursery() as nursery:
        client = RpcClient(host or "127.0.0.1", int(port), timer, timing)
        nursery.start_soon(client.run)

        async def slow_call() -> None:
            while True:
                await client.connected.wait()
                print(f"sleep({args.slow}) pending", flush=True)
                started = trio.current_time()
                try:
                    await client.call("sleep", args.slow)
                    print(f"sleep({args.slow}) returned", flush=True)
                except ConnectionClosed as exc:
                    took = trio.current_time() - started
                    print(f"sleep({args.slow}) failed after {took:.2f} s: {exc!r}", flush=True)
                    await trio.sleep(args.interval)

        if args.slow:
            nursery.start_soon(slow_call)
        status = 0
        with trio.move_on_after(args.deadline if args.deadline else float("inf")) as deadline:
            await client.connected.wait()  # the first connection; later losses fail fast
            done, i = 0, 0
            while args.calls is None or done < args.calls:
                try:
                    result = await client.call("add", i, i)
                    print(f"add({i}, {i}) = {result}", flush=True)
                    done += 1
                    if args.exit_after_reconnect and client.connects > 1:
                        break
                except (ConnectionClosed, RemoteError) as exc:
                    print(f"add({i}, {i}) failed: {exc!r}", flush=True)
                i += 1
                await trio.sleep(args.interval)
            connection = client.connection
            if connection is not None:
                stats = connection.channel.stats()
                print(
                    f"heartbeats sent {stats.heartbeats_sent}, answered "
                    f"{stats.heartbeats_answered}, received {stats.heartbeats_received}",
                    flush=True,
                )
        if deadline.cancelled_caught:
            print("deadline reached", flush=True)
            status = 1
        nursery.cancel_scope.cancel()
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("address", help="HOST:PORT of examples/rpc_server.py")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                        help="heartbeat interval in seconds (default 1); dead after 3 x S")
    parser.add_argument("--calls", type=int, default=None, help="stop after N successful calls")
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between calls")
    parser.add_argument("--slow", type=float, default=0.0, help="keep a sleep(S) call pending")
    parser.add_argument("--exit-after-reconnect", action="store_true")
    parser.add_argument("--deadline", type=float, default=0.0, help="give up after S seconds")
    configure_logging("console", "warning")
    arguments = parser.parse_args()
    try:
        status = trio.run(main, arguments)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
