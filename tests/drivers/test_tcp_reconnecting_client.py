"""ReconnectingClient state transitions and send() across reconnects, in virtual time.

``connect_tcp`` is replaced by memory-stream connections to scripted in-process servers, so
minutes of reconnects run in milliseconds and nothing touches the network.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import pulse.plugins.tcp.client as client_module
from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy
from pulse._trio.connection import HeartbeatConnection, heartbeat
from pulse.plugins.tcp import ClientState, reconnecting_tcp

POLICY = HeartbeatPolicy(1.0, 3.0)
Script = Callable[[HeartbeatConnection], Awaitable[None]]


def fake_connect(scripts: list[Script]) -> Callable[..., Any]:
    """A stand-in for ``connect_tcp``: the n-th connection talks to ``scripts[n]``."""

    @asynccontextmanager
    async def connect(host: str, port: int, policy: HeartbeatPolicy | None,
                      **options: Any) -> AsyncIterator[HeartbeatConnection]:
        if not scripts:
            raise OSError("connection refused")
        script = scripts.pop(0)
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            async def server() -> None:
                async with heartbeat(theirs, POLICY, peer_id="server") as conn:
                    await script(conn)
            nursery.start_soon(server)
            async with heartbeat(ours, policy, peer="fake", transport="tcp") as conn:
                yield conn

    return connect


class StepBudget(trio.abc.Instrument):
    """Cancels ``scope`` once tasks have taken more than ``limit`` steps: a busy loop that
    keeps the scheduler running (and virtual time frozen) fails instead of hanging."""

    def __init__(self, scope: trio.CancelScope, limit: int) -> None:
        self.scope, self.limit, self.steps = scope, limit, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps > self.limit:
            self.scope.cancel()


async def echo(conn: HeartbeatConnection) -> None:
    async for message in conn:
        await conn.send(message)


async def test_send_waits_without_spinning_while_old_messages_are_undelivered(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that closes while the application has not read its messages yet:
    send() waits (it does not busy-loop on the stale connection) and goes out on the
    next connection once the application has drained its inbox."""

    async def flood_then_leave(conn: HeartbeatConnection) -> None:
        for i in range(300):  # more than the client's inbox holds
            await conn.send(i)

    monkeypatch.setattr(client_module, "connect_tcp", fake_connect([flood_then_leave, echo]))
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff) as client:
        await trio.sleep(1)  # the first connection delivered what fits, and closed
        assert client.connection is not None and client.connection.closed
        guard = trio.CancelScope()
        budget = StepBudget(guard, limit=20_000)
        trio.lowlevel.add_instrument(budget)
        try:
            with guard, trio.move_on_after(5):
                await client.send("too early")
        finally:
            trio.lowlevel.remove_instrument(budget)
        assert budget.steps <= budget.limit, "send() busy-looped on a closed connection"
        assert [await client.receive() for _ in range(300)] == list(range(300))
        await client.send("hello", timeout=10)
        assert await client.receive() == "hello"
        assert client.connects == 2


async def test_every_transition_is_reported_in_order(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """connecting, open, reconnecting (attempt and delay), open again, then closed."""

    async def leave(conn: HeartbeatConnection) -> None:
        await conn.send("bye")

    monkeypatch.setattr(client_module, "connect_tcp", fake_connect([leave, echo]))
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    seen = []
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff) as client:
        assert await client.receive() == "bye"
        await client.send("again", timeout=10)
        assert await client.receive() == "again"
        events = client.events()
    seen = [change async for change in events]
    states = [change.state for change in seen]
    assert states == [ClientState.CONNECTING, ClientState.OPEN, ClientState.RECONNECTING,
                      ClientState.OPEN, ClientState.CLOSED]
    reconnect = seen[2]
    assert reconnect.attempt == 1 and 0 <= reconnect.delay <= 0.1
