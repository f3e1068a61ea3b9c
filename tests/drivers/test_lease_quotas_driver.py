"""Lease server driver quotas: bounded writes, per-connection rate and connection caps, and the
client's typed errors for every breach (memory streams, virtual time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pulse.codec import encode_message
from pulse.errors import LimitExceeded, PulseError
from pulse.plugins.lease import server as server_module
from pulse.plugins.lease.client import connect
from pulse.plugins.lease.errors import QuotaExceeded
from pulse.plugins.lease.protocol import ErrorCode, ErrorNotice, Response
from pulse.plugins.lease.server import ServerConfig
from pulse.plugins.lease.state import Limits

from ._lease_harness import Network, Raw

S1 = ("s1", 1)


@asynccontextmanager
async def network(limits: Limits) -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, config=ServerConfig(tick=1.0, limits=limits))
        yield net
        nursery.cancel_scope.cancel()


class Recording(trio.abc.Stream):
    """Wraps a stream and records the size of every write the server makes."""

    def __init__(self, inner: trio.abc.Stream, sizes: list[int]) -> None:
        self.inner = inner
        self.sizes = sizes

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_writer_writes_a_large_backlog_in_bounded_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A watch snapshot of 4 MB goes out in writes of at most WRITE_CHUNK (+ one message)."""
    limits = Limits(max_bytes_per_session=8 * 1024 * 1024, max_bytes_per_address=64 * 1024 * 1024)
    async with network(limits) as net:
        server = net.server(S1)
        owner = Raw(await net.open_stream(*S1))
        assert (await owner.call("connect", {"timeout": 30.0})).error is None
        for i in range(64):
            reply = await owner.call("register", {"key": f"/big/k{i}", "data": b"x" * 60_000})
            assert reply.error is None, reply.message
        sizes: list[int] = []
        client_side, server_side = trio.testing.memory_stream_pair()
        net.nursery.start_soon(server.handle_stream, Recording(server_side, sizes), "10.0.0.9")
        watcher = Raw(client_side)
        assert (await watcher.call("connect", {"timeout": 30.0})).error is None
        assert (await watcher.call("watch", {"prefix": "/big", "watch_id": 1})).error is None
        await watcher.events_until(65)
        assert sum(sizes) > 64 * 60_000
        assert max(sizes) <= server_module.WRITE_CHUNK + limits.max_message_size()


async def test_flood_before_connect_is_rate_limited_then_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests on one connection beyond the rate are refused (rate_limited), a persistent
    flood closes the connection with a rate_limited notice."""
    async with network(Limits(max_request_rate=100.0)) as net:
        raw = Raw(await net.open_stream(*S1))
        flood = b"".join(encode_message([0, i, 0, "ping", {}]) for i in range(1, 1001))
        await raw.send_bytes(flood)
        await raw.drain()
        codes = [m.error for m in raw.notices + list(raw.inbox) if isinstance(m, Response)]
        refused = [m for m in raw.notices if isinstance(m, ErrorNotice)]
        assert refused and refused[-1].code is ErrorCode.RATE_LIMITED
        assert codes == [] or ErrorCode.RATE_LIMITED in codes


async def test_connections_beyond_max_connections_are_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With max_connections=2 a third connection gets an error notice and EOF at once."""
    async with network(Limits(max_connections=2)) as net:
        first = Raw(await net.open_stream(*S1))
        second = Raw(await net.open_stream(*S1))
        assert (await first.call("connect", {"timeout": 30.0})).error is None
        assert (await second.call("connect", {"timeout": 30.0})).error is None
        third = Raw(await net.open_stream(*S1))
        with trio.fail_after(1):
            await third.drain()
        assert any(isinstance(m, ErrorNotice) and m.code is ErrorCode.QUOTA_EXCEEDED
                   for m in third.notices)


async def test_client_raises_quota_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    """A register past the session's byte quota raises QuotaExceeded (a LimitExceeded, a PulseError)."""
    async with (network(Limits(max_bytes_per_session=10_000)) as net,
                connect([S1], 30.0, open_stream=net.open_stream) as session):
        await session.register("/p/a", b"x" * 6000)
        with pytest.raises(QuotaExceeded) as info:
            await session.register("/p/b", b"x" * 6000)
        assert isinstance(info.value, LimitExceeded) and isinstance(info.value, PulseError)
        assert "quota_exceeded" in str(info.value)
        assert await session.get("/p/b") is None


async def test_unread_responses_are_bounded_per_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that sends gets but never reads is closed once its responses pass the byte bound."""
    limits = Limits(max_queued_bytes_per_connection=256 * 1024, max_request_rate=0)
    async with network(limits) as net:
        owner = Raw(await net.open_stream(*S1))
        assert (await owner.call("connect", {"timeout": 30.0})).error is None
        assert (await owner.call("register", {"key": "/p/a", "data": b"x" * 60_000})).error is None
        client_side, server_side = trio.testing.lockstep_stream_pair()  # nothing is buffered
        net.nursery.start_soon(net.server(S1).handle_stream, server_side, "10.0.0.7")
        await client_side.send_all(encode_message([0, 1, 0, "connect", {"timeout": 30.0}]))
        requests = b"".join(encode_message([0, i, 0, "get", {"key": "/p/a"}]) for i in range(2, 40))
        with trio.move_on_after(5):
            await client_side.send_all(requests)
        await trio.sleep(2.0)
        closed = await _closed(client_side)
        assert closed


async def _closed(stream: Any) -> bool:
    with trio.move_on_after(3):
        while True:
            try:
                data = await stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                return True
            if not data:
                return True
    return False
