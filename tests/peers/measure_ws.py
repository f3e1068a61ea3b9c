"""Measure the WebSocket plugin's timing guarantees against real `websockets` peers.

Run:  python -m tests.peers.measure_ws [--runs N]

Prints, for loopback on this machine: how long a frozen (SIGSTOP) or killed server takes to
be noticed by the resilient client, how long a frozen client takes to be dropped by the
server, the reconnect time after a restart, ping RTTs, and pipelined echo throughput of
pulse's client next to trio-websocket's (both against the same websockets server). The
numbers in docs/websocket.md come from this script.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Awaitable, Callable

import trio

from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy
from pulse.errors import ConnectionClosed
from pulse.plugins.websocket import (
    ClientState,
    ServerConnection,
    StateChange,
    WebSocketServer,
    echo,
    reconnecting_websocket,
    serve_websocket,
)
from pulse.registry import PingOptions, ping_function
from tests.peers.harness import peer


def summary(name: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> None:
    """One line: min / median / max."""
    scaled = sorted(v * scale for v in values)
    print(f"{name:58s} min {scaled[0]:8.1f}  median {statistics.median(scaled):8.1f}  "
          f"max {scaled[-1]:8.1f} {unit}  (n={len(scaled)})", flush=True)


async def _until_state(changes: list[tuple[float, StateChange]], wake: list[trio.Event],
                       state: ClientState, count: int) -> float:
    while True:
        found = [t for t, c in changes if c.state is state]
        if len(found) >= count:
            return found[count - 1]
        event = trio.Event()
        wake.append(event)
        await event.wait()


async def client_notices(policy: HeartbeatPolicy, how: str) -> float:
    """Seconds from SIGSTOP / SIGKILL of a websockets server to the client's reconnecting."""
    changes: list[tuple[float, StateChange]] = []
    wake: list[trio.Event] = []

    def record(change: StateChange) -> None:
        changes.append((trio.current_time(), change))
        for event in wake:
            event.set()
        wake.clear()

    async with peer("ws_echo_server.py") as server, reconnecting_websocket(
        f"ws://127.0.0.1:{server.port}/", policy=policy, on_event=record,
        backoff=Backoff(initial=0.05, maximum=0.2),
    ) as ws:
        await ws.wait_open()
        await ws.send("x")
        await ws.receive()
        await trio.sleep(policy.interval * 1.5)  # idle: heartbeats are flowing
        started = trio.current_time()
        if how == "stop":
            server.pause()
        else:
            await server.kill()
        noticed = await _until_state(changes, wake, ClientState.RECONNECTING, 1)
        if how == "stop":
            server.resume()
        return noticed - started


async def reconnect_after_restart() -> float:
    """Seconds from a restarted server being ready to the client being open again."""
    changes: list[tuple[float, StateChange]] = []
    wake: list[trio.Event] = []

    def record(change: StateChange) -> None:
        changes.append((trio.current_time(), change))
        for event in wake:
            event.set()
        wake.clear()

    async with peer("ws_echo_server.py") as server, reconnecting_websocket(
        f"ws://127.0.0.1:{server.port}/", on_event=record,
        backoff=Backoff(initial=0.1, maximum=0.5),
    ) as ws:
        await ws.wait_open()
        await server.kill()
        await trio.sleep(1.0)
        await server.start(server.port)
        ready = trio.current_time()
        opened = await _until_state(changes, wake, ClientState.OPEN, 2)
        return opened - ready


async def server_drops_frozen_client(policy: HeartbeatPolicy) -> float:
    """Seconds from SIGSTOP of a websockets client to pulse's server dropping it."""
    dropped: list[float] = []
    done = trio.Event()

    async def handler(conn: ServerConnection) -> None:
        try:
            await echo(conn)
            await conn.receive()
        except ConnectionClosed:
            dropped.append(trio.current_time())
            done.set()

    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(
            functools.partial(serve_websocket, handler, host="127.0.0.1", port=0,
                              policy=policy))
        async with peer("ws_client.py", f"ws://127.0.0.1:{server.port}/", "--hold",
                        ready=None) as client:
            await client.wait_event(lambda e: e["event"] == "open")
            await trio.sleep(policy.interval * 1.5)
            started = trio.current_time()
            client.pause()
            await done.wait()
            client.resume()
        nursery.cancel_scope.cancel()
    return dropped[0] - started


async def ping_rtts(count: int) -> list[float]:
    """RTT of RFC 6455 pings from ``pulse ping`` to a websockets server."""
    async with peer("ws_echo_server.py") as server:
        endpoint, ping_fn = ping_function(f"ws://127.0.0.1:{server.port}/")
        return [r.rtt async for r in ping_fn(endpoint, PingOptions(interval=0.005, count=count))]


async def throughput_pulse(port: int, count: int, size: int) -> float:
    """Messages per second, pipelined echo through pulse's resilient client."""
    async with reconnecting_websocket(f"ws://127.0.0.1:{port}/", queue_size=count) as ws:
        await ws.wait_open()
        payload = b"x" * size
        started = trio.current_time()
        for _ in range(count):
            ws.send_nowait(payload)
        for _ in range(count):
            await ws.receive()
        return count / (trio.current_time() - started)


async def throughput_trio_websocket(port: int, count: int, size: int) -> float:
    """Messages per second, pipelined echo through trio-websocket (for comparison)."""
    from trio_websocket import open_websocket_url

    async with open_websocket_url(f"ws://127.0.0.1:{port}/", message_queue_size=count) as ws:
        payload = b"x" * size
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            async def sender() -> None:
                for _ in range(count):
                    await ws.send_message(payload)

            nursery.start_soon(sender)
            for _ in range(count):
                await ws.get_message()
        return count / (trio.current_time() - started)


async def throughputs(runs: int, count: int, size: int) -> tuple[list[float], list[float]]:
    pulse_rates, trio_ws_rates = [], []
    async with peer("ws_echo_server.py", "--quiet") as server:
        for _ in range(runs):
            pulse_rates.append(await throughput_pulse(server.port, count, size))
            trio_ws_rates.append(await throughput_trio_websocket(server.port, count, size))
    return pulse_rates, trio_ws_rates


async def repeat(runs: int, fn: Callable[[], Awaitable[float]]) -> list[float]:
    return [await fn() for _ in range(runs)]


async def main(runs: int) -> None:
    fast = HeartbeatPolicy(interval=0.2, timeout=0.6)
    default = HeartbeatPolicy(interval=1.0, timeout=3.0)
    for policy in (fast, default):
        label = f"interval {policy.interval:g}s timeout {policy.dead_after:g}s"
        summary(f"client: frozen server noticed ({label})",
                await repeat(runs, functools.partial(client_notices, policy, "stop")))
    summary("client: killed server noticed (RST, interval 0.2s)",
            await repeat(runs, functools.partial(client_notices, fast, "kill")))
    summary("client: open again after restart (backoff 0.1..0.5s)",
            await repeat(runs, reconnect_after_restart))
    summary(f"server: frozen websockets client dropped (timeout {fast.dead_after:g}s)",
            await repeat(runs, functools.partial(server_drops_frozen_client, fast)))
    summary("pulse ping ws:// to websockets, RTT per pong", await ping_rtts(500))
    count, size = 20_000, 64
    pulse_rates, trio_ws_rates = await throughputs(runs, count, size)
    summary(f"echo throughput, pulse client ({count} x {size} B)", pulse_rates,
            unit="msg/s", scale=1.0)
    summary(f"echo throughput, trio-websocket ({count} x {size} B)", trio_ws_rates,
            unit="msg/s", scale=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    sys.exit(trio.run(main, arguments.runs))
