"""The lease client's queues have explicit bounds: waiting calls and the send queue (virtual time)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from pulse.codec import MessageDecoder
from pulse.errors import QueueFull
from pulse.plugins.lease import client as lease_client
from pulse.plugins.lease.client import connect
from pulse.plugins.lease.protocol import Ping, Request
from pulse.presence import SessionState

from ._lease_harness import Network

S1 = ("s1", 1)


async def test_calls_past_max_pending_calls_raise_queue_full(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While disconnected, MAX_PENDING_CALLS registrations wait; one more raises QueueFull at
    once; the waiting ones complete after the reconnect."""
    monkeypatch.setattr(lease_client, "MAX_PENDING_CALLS", 3)
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)
        async with connect([S1], 3.0, open_stream=net.open_stream) as member:
            net.links[-1].cut()
            net.unreachable.add(S1)
            await trio.sleep(2.2)
            assert member.state is SessionState.DISCONNECTED
            done: list[str] = []

            async def register(key: str) -> None:
                await member.register(key, b"v")
                done.append(key)

            async with trio.open_nursery() as calls:
                for i in range(3):
                    calls.start_soon(register, f"/p/{i}")
                await trio.sleep(0.1)
                with pytest.raises(QueueFull, match="3 requests are already waiting"):
                    await member.register("/p/extra", b"v")
                net.unreachable.discard(S1)
            assert sorted(done) == ["/p/0", "/p/1", "/p/2"]
            assert await member.get("/p/extra") is None
        nursery.cancel_scope.cancel()


async def test_send_queue_past_its_bound_drops_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection whose writer cannot keep up (the server does not read) holds at most
    MAX_QUEUED_REQUESTS requests; the next one marks it lost and cancels its tasks."""
    monkeypatch.setattr(lease_client, "MAX_QUEUED_REQUESTS", 4)
    stream, _ = trio.testing.memory_stream_pair()
    conn: Any = lease_client._Connection(stream, S1, MessageDecoder(1 << 20))
    for xid in range(4):
        conn.send(Request(xid, Ping(), 0))
    assert conn.outcome is None and len(conn.queue) == 4
    conn.send(Request(5, Ping(), 0))
    assert len(conn.queue) == 4
    assert isinstance(conn.outcome, lease_client._Lost)
    assert "the server does not read" in str(conn.outcome)
    assert conn.scope.cancel_called
