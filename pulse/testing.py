"""Public test helpers for code built on pulse and for third-party plugins.

* :func:`run_until` drives a pure machine at its own deadlines, as a driver would, and
  returns every action with the time it happened — core tests need nothing else.
  :func:`run_all_until` does the same for several machines sharing one clock, in deadline
  order, as the engine does.
* :func:`heartbeat_pair` gives two connected :class:`~pulse.HeartbeatConnection` objects
  over in-memory streams under trio (use with ``trio.testing.MockClock(autojump_threshold=0)``
  to run minutes of heartbeats in milliseconds), over a ``socket.socketpair()`` under asyncio.
* :func:`check_plugin` is the conformance check every plugin passes: the registry entry is a
  :class:`~pulse.registry.Plugin`, and if it can both serve and ping, a server it starts on
  loopback answers its own pings with sane round-trip times.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import trio
import trio.testing
from anyio.streams.memory import MemoryObjectSendStream

from pulse._core.policy import HeartbeatPolicy
from pulse._driver import sockets
from pulse._driver.connection import HeartbeatConnection, heartbeat
from pulse._driver.streams import Stream, on_trio
from pulse._driver.util import background_nursery
from pulse.registry import Endpoint, PingOptions, PingReply, Plugin, ServeOptions, get_plugin


class Machine(Protocol):
    """The timer contract every pulse core machine keeps: ``next_deadline()`` says when
    ``handle_timer(now)`` is due next (None: never); ``handle_timer`` returns the actions."""

    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> Any: ...


def run_until(machine: Machine, end: float, *, max_steps: int = 100_000) -> list[tuple[float, Any]]:
    """Call ``handle_timer`` at each of ``machine``'s deadlines up to ``end``; return
    ``(time, action)`` pairs."""
    return [(when, action) for when, _, action in run_all_until([machine], end, max_steps=max_steps)]


def run_all_until(
    machines: list[Machine], end: float, *, max_steps: int = 100_000,
) -> list[tuple[float, Machine, Any]]:
    """Drive several machines on one virtual clock up to ``end``: always the machine with
    the earliest deadline next (ties in list order), as the engine does; return
    ``(time, machine, action)`` triples in the order they happened."""
    out: list[tuple[float, Machine, Any]] = []
    for _ in range(max_steps):
        due: tuple[float, Machine] | None = None
        for machine in machines:
            deadline = machine.next_deadline()
            if deadline is not None and deadline <= end and (due is None or deadline < due[0]):
                due = (deadline, machine)
        if due is None:
            return out
        when, machine = due
        out += [(when, machine, action) for action in machine.handle_timer(when) or ()]
    raise AssertionError(f"machines still busy after {max_steps} steps (a deadline that never moves?)")


def stream_pair() -> tuple[Stream, Stream]:
    """Two byte streams connected to each other, on the running loop: trio's
    ``memory_stream_pair`` under trio, a ``socket.socketpair()`` under asyncio or uvloop."""
    if on_trio():
        return trio.testing.memory_stream_pair()
    left, right = socket.socketpair()
    return sockets.SocketStream(left), sockets.SocketStream(right)


@asynccontextmanager
async def heartbeat_pair(
    left_policy: HeartbeatPolicy | None = None,
    right_policy: HeartbeatPolicy | None = None,
    **options: Any,
) -> AsyncIterator[tuple[HeartbeatConnection, HeartbeatConnection]]:
    """Two heartbeat connections talking to each other: over trio's ``memory_stream_pair``
    under trio, over a connected ``socket.socketpair()`` under asyncio (or uvloop)."""
    left_stream, right_stream = stream_pair()
    async with background_nursery() as nursery:
        ready: MemoryObjectSendStream[HeartbeatConnection]
        ready, receive_ready = anyio.create_memory_object_stream[HeartbeatConnection](1)
        done = anyio.Event()

        async def right_side() -> None:
            async with heartbeat(right_stream, right_policy, peer_id="right", peer="right",
                                 **options) as conn:
                await ready.send(conn)
                await done.wait()

        nursery.start_soon(right_side)
        async with heartbeat(left_stream, left_policy, peer_id="left", peer="left",
                             **options) as left:
            right = await receive_ready.receive()
            try:
                yield left, right
            finally:
                done.set()


async def check_plugin(scheme: str, *, pings: int = 3, host: str = "127.0.0.1") -> list[PingReply]:
    """Conformance check for the plugin registered under ``scheme``; returns the replies.

    Raises ``AssertionError`` with a clear message on any deviation.
    """
    plugin = get_plugin(scheme)
    assert isinstance(plugin, Plugin), f"{scheme}: registry entry is not a Plugin"
    assert plugin.name and plugin.description, f"{scheme}: plugin needs a name and description"
    assert any((plugin.serve, plugin.ping, plugin.connect_session)), (
        f"{scheme}: plugin offers no capability")
    if plugin.serve is None or plugin.ping is None:
        return []
    replies: list[PingReply] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            endpoint = Endpoint(scheme, ((host, 0),), raw=f"{scheme}://{host}:0")
            bound = await nursery.start(plugin.serve, endpoint, ServeOptions(interval=0.5))
            port = bound[0].socket.getsockname()[1]
            target = Endpoint(scheme, ((host, port),), raw=f"{scheme}://{host}:{port}")
            async for reply in plugin.ping(target, PingOptions(interval=0.01, timeout=5.0,
                                                               count=pings)):
                replies.append(reply)
            nursery.cancel_scope.cancel()
    assert [r.seq for r in replies] == list(range(1, pings + 1)), (
        f"{scheme}: expected seqs 1..{pings}, got {[r.seq for r in replies]}")
    for reply in replies:
        assert 0 <= reply.rtt < 5.0 and math.isfinite(reply.rtt), f"{scheme}: bad RTT {reply.rtt}"
    return replies
