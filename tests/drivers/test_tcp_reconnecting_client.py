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
from pulse._driver.connection import HeartbeatConnection, heartbeat
from pulse._driver.util import background_nursery
from pulse.actions import LocalPause
from pulse.delivery import Delivery, Dropped
from pulse.frames import PROTOCOL_VERSION, Hello, encode_frame
from pulse.plugins.tcp import ClientState, ReconnectingClient, reconnecting_tcp

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


# -- the delivery contract (shared with the WebSocket client: pulse.delivery) -----------------

RawScript = Callable[[trio.abc.Stream], Awaitable[None]]


def fake_connect_any(scripts: list[Script | RawScript], raw: set[int]) -> Callable[..., Any]:
    """Like :func:`fake_connect`, but the connections whose index is in ``raw`` talk to a
    script holding the bare stream (it answers HELLO itself, and nothing else)."""
    counter = iter(range(1000))

    @asynccontextmanager
    async def connect(host: str, port: int, policy: HeartbeatPolicy | None,
                      **options: Any) -> AsyncIterator[HeartbeatConnection]:
        if not scripts:
            raise OSError("connection refused")
        index, script = next(counter), scripts.pop(0)
        reached = options.pop("on_transport", None)
        if reached is not None:
            reached()  # the transport is up: what follows is this connection's own
        ours, theirs = trio.testing.memory_stream_pair()
        async with background_nursery() as nursery:  # errors come out bare, as from connect_tcp
            async def server() -> None:
                if index in raw:
                    await script(theirs)  # type: ignore[arg-type]
                    return
                async with heartbeat(theirs, POLICY, peer_id="server") as conn:
                    await script(conn)  # type: ignore[arg-type]
            nursery.start_soon(server)
            async with heartbeat(ours, policy, peer="fake", transport="tcp",
                                 **options) as conn:
                yield conn

    return connect


def swallow_then_close(after: float) -> RawScript:
    """A server that reads everything (answering no heartbeat) and hangs up after ``after``
    seconds: what the client wrote there may or may not have been read."""

    async def script(stream: trio.abc.Stream) -> None:
        await stream.send_all(encode_frame(Hello(PROTOCOL_VERSION, 1.0, 3.0, "mute")))
        with trio.move_on_after(after):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()

    return script


async def open_client(client: ReconnectingClient, connects: int = 1) -> None:
    """Wait (virtual time, bounded) until the client's ``connects``-th connection is open."""
    feed = client.events()
    with trio.fail_after(30):
        while client.state is not ClientState.OPEN or client.connects < connects:
            await feed.get()


async def test_at_most_once_reports_every_unconfirmed_message_when_the_connection_dies(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages written to a connection that died before the server confirmed them are
    reported, in order, as Dropped(possibly_delivered=True); later ones go out normally."""
    monkeypatch.setattr(client_module, "connect_tcp", fake_connect_any(
        [swallow_then_close(0.5), echo], raw={0}))
    drops: list[Dropped] = []
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff,
                                on_drop=drops.append) as client:
        await open_client(client)
        for message in ("a", "b", "c"):
            await client.send(message)
        assert client.unconfirmed == 3
        await open_client(client, connects=2)
        await client.send("d")
        with trio.fail_after(10):
            assert await client.receive() == "d"
    assert [d.message for d in drops] == ["a", "b", "c"]
    assert all(d.possibly_delivered and "connection ended" in d.reason for d in drops)
    assert drops[0].peer == "server:1" and client.dropped_count == 3


async def test_at_least_once_resends_unconfirmed_messages_first_and_in_order(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under AT_LEAST_ONCE the messages the dead connection left unconfirmed go out again on
    the next connection before anything sent later, and nothing is reported."""
    monkeypatch.setattr(client_module, "connect_tcp", fake_connect_any(
        [swallow_then_close(0.5), echo], raw={0}))
    drops: list[Dropped] = []
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff, on_drop=drops.append,
                                delivery=Delivery.AT_LEAST_ONCE) as client:
        await open_client(client)
        for message in ("a", "b", "c"):
            await client.send(message)
        await open_client(client, connects=2)
        await client.send("d")
        with trio.fail_after(10):
            assert [await client.receive() for _ in range(4)] == ["a", "b", "c", "d"]
        assert client.connects == 2
    assert drops == []


async def test_confirmed_messages_are_not_reported(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Messages the server read (a pong to a later heartbeat came back) are not reported
    when that connection dies afterwards, and the client holds no unconfirmed ones."""

    async def echo_twice_then_leave(conn: HeartbeatConnection) -> None:
        for _ in range(2):
            await conn.send(await conn.receive())
        await trio.sleep(1)

    monkeypatch.setattr(client_module, "connect_tcp", fake_connect_any(
        [echo_twice_then_leave, echo], raw=set()))
    drops: list[Dropped] = []
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff,
                                on_drop=drops.append) as client:
        await open_client(client)
        await client.send("a")
        await client.send("b")
        assert [await client.receive(), await client.receive()] == ["a", "b"]
        await trio.sleep(0.2)
        assert client.unconfirmed == 0
        await open_client(client, connects=2)
        await client.send("c")
        with trio.fail_after(10):
            assert await client.receive() == "c"
    assert drops == []


async def test_a_send_after_a_local_pause_checks_the_connection_first(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a long local pause the first send is held until a heartbeat sent after the
    pause is answered; a live server gets it on the same connection, and the pause is
    reported (LocalPause), not taken for a peer failure."""
    monkeypatch.setattr(client_module, "connect_tcp", fake_connect_any([echo], raw=set()))
    actions: list[object] = []
    async with reconnecting_tcp("server", 1, POLICY, on_liveness=actions.append) as client:
        await open_client(client)
        conn = client.connection
        assert conn is not None
        autojump_clock.jump(60)  # the process was stopped for a minute
        await client.send("after the pause", timeout=10)
        assert await client.receive() == "after the pause"
        assert client.connects == 1 and not conn.closed
        assert any(isinstance(action, LocalPause) for action in actions)


async def test_a_send_after_a_local_pause_never_goes_into_a_dead_connection(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a long pause the server no longer answers (it dropped us): the send waits for
    the verdict and goes out on the next connection, where it is answered; nothing is
    written into the silent connection, so nothing is reported lost."""
    monkeypatch.setattr(client_module, "connect_tcp", fake_connect_any(
        [swallow_then_close(3600), echo], raw={0}))
    drops: list[Dropped] = []
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff,
                                on_drop=drops.append) as client:
        await open_client(client)
        autojump_clock.jump(60)
        with trio.fail_after(10):
            await client.send("after the pause")
            assert await client.receive() == "after the pause"
        assert client.connects == 2
    assert drops == []


class HangUpDuringWrite(trio.abc.Stream):
    """Hands bytes on, but the first write carrying ``marker`` ends the stream before it
    returns (as if the server's goodbye was read while our write was in progress)."""

    def __init__(self, inner: trio.abc.Stream, marker: bytes) -> None:
        self.inner, self.marker, self.fired = inner, marker, False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        if not self.fired and self.marker in bytes(data):
            self.fired = True
            await self.inner.aclose()
            await trio.sleep(0.5)  # the reader sees the end; the client moves on meanwhile

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_message_written_as_its_connection_closes_is_still_reported(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send whose bytes were handed over just as the connection ended (and was already
    settled by the client) is reported too, not forgotten."""
    streams = iter(range(2))

    @asynccontextmanager
    async def connect(host: str, port: int, policy: HeartbeatPolicy | None,
                      **options: Any) -> AsyncIterator[HeartbeatConnection]:
        reached = options.pop("on_transport", None)
        if reached is not None:
            reached()
        ours, theirs = trio.testing.memory_stream_pair()
        first = next(streams) == 0
        stream = HangUpDuringWrite(ours, b"late") if first else ours
        async with background_nursery() as nursery:
            async def server() -> None:
                async with heartbeat(theirs, POLICY, peer_id="server") as conn:
                    await echo(conn)
            nursery.start_soon(server)
            async with heartbeat(stream, policy, peer="fake", transport="tcp",
                                 **options) as conn:
                yield conn

    monkeypatch.setattr(client_module, "connect_tcp", connect)
    drops: list[Dropped] = []
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(1))
    async with reconnecting_tcp("server", 1, POLICY, backoff=backoff,
                                on_drop=drops.append) as client:
        await open_client(client)
        await client.send("late")
        await open_client(client, connects=2)
    assert [(d.message, d.possibly_delivered) for d in drops] == [("late", True)]
