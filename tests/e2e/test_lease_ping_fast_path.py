"""The lease server's renewal fast path on real loopback sockets (the engine-read path)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from pulse.codec import MessageDecoder, encode_message
from pulse.plugins.lease import server as server_module
from pulse.plugins.lease.protocol import (
    ErrorCode,
    Request,
    Response,
    WatchEvent,
    parse_request,
    parse_server_message,
    response_to_wire,
)
from pulse.plugins.lease.server import LeaseServer, ServerConfig, bound_address
from pulse.plugins.lease.state import Limits

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def running(config: ServerConfig | None = None) -> AsyncIterator[tuple[LeaseServer, int]]:
    server = LeaseServer(config or ServerConfig(tick=0.5))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        yield server, bound_address(listeners)[1]
        nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


async def open_session(port: int, timeout: float = 4.0) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(encode_message([0, 1, 0, "connect", {"timeout": timeout}]))
    decoder = MessageDecoder(1 << 20)
    while True:
        messages = decoder.feed(await stream.receive_some(65536))
        if messages:
            answer = parse_server_message(messages[0])
            assert isinstance(answer, Response) and answer.error is None
            return stream


def ping(xid: int, ack: int = 0) -> bytes:
    return encode_message([0, xid, ack, "ping", {}])


async def test_a_ping_is_answered_byte_for_byte_without_building_a_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole pings get exactly the general encoding of ``ok {}``; no Request is built."""
    parsed: list[Request] = []

    def counting(obj: object) -> Request:
        request = parse_request(obj)
        parsed.append(request)
        return request

    monkeypatch.setattr(server_module, "parse_request", counting)
    with trio.fail_after(10):
        async with running() as (_server, port):
            stream = await open_session(port)
            for xid in (2, 200, 70_000, 5_000_000_000):
                await stream.send_all(ping(xid, ack=0))
                expected = encode_message(response_to_wire(Response(xid, {})))
                assert await receive_exactly(stream, len(expected)) == expected
            assert [r.body.__class__.__name__ for r in parsed] == ["Connect"]
            await stream.aclose()


async def test_pings_together_or_split_are_answered_in_order() -> None:
    """Two pings in one read, or one ping split over two, are answered (general path)."""
    with trio.fail_after(10):
        async with running() as (_server, port):
            stream = await open_session(port)
            await stream.send_all(ping(2) + ping(3))
            expected = b"".join(encode_message(response_to_wire(Response(xid, {})))
                                for xid in (2, 3))
            assert await receive_exactly(stream, len(expected)) == expected
            whole = ping(4)
            await stream.send_all(whole[:7])
            await trio.sleep(0.05)
            await stream.send_all(whole[7:])
            expected = encode_message(response_to_wire(Response(4, {})))
            assert await receive_exactly(stream, len(expected)) == expected
            await stream.aclose()


async def test_fast_and_general_paths_refuse_alike_beyond_the_rate() -> None:
    """Over the rate, fast-path and general-path pings get the same rate_limited answers."""
    config = ServerConfig(tick=0.5, limits=Limits(max_request_rate=0.5))  # connect took it

    async def answers(make: Callable[[int], bytes]) -> list[tuple[Any, ...]]:
        stream = await open_session(port)
        decoder = MessageDecoder(1 << 20)
        seen: list[tuple[Any, ...]] = []
        for xid in (2, 3):
            await stream.send_all(make(xid))
            messages: list[object] = []
            while not messages:
                messages = decoder.feed(await stream.receive_some(65536))
            answer = parse_server_message(messages[0])
            assert isinstance(answer, Response)
            seen.append((answer.xid, answer.error, answer.message))
        await stream.aclose()
        return seen

    with trio.fail_after(10):
        async with running(config) as (_server, port):
            fast = await answers(ping)
            general = await answers(lambda xid: encode_message([0, xid, 0, "ping", {"x": 1}]))
    assert fast == general
    assert [error for _, error, _ in fast] == [ErrorCode.RATE_LIMITED] * 2


async def test_a_ping_behind_a_backed_up_connection_keeps_every_event_in_order() -> None:
    """A ping on a backed-up connection is answered and every watch event arrives in order."""
    data = b"x" * 60_000
    with trio.fail_after(30):
        async with running() as (server, port):
            watcher = await open_session(port, timeout=20.0)
            await watcher.send_all(encode_message([0, 2, 0, "watch",
                                                   {"prefix": "/w", "watch_id": 1}]))
            writer = await open_session(port, timeout=20.0)
            decoder = MessageDecoder(1 << 20)
            xid = 1
            watched = next(c for c in server._engine_connections
                           if c.session is not None and c.session.watches)
            cycles = 0
            while not watched.writing:  # the watcher reads nothing: its socket fills up
                assert cycles < 1000, "the watcher's socket never filled"
                for op in ("register", "unregister"):
                    xid += 1
                    args = {"key": "/w/k", "data": data} if op == "register" else {"key": "/w/k"}
                    await writer.send_all(encode_message([0, xid, 0, op, args]))
                    messages: list[object] = []
                    while not messages:
                        messages = decoder.feed(await writer.receive_some(65536))
                cycles += 1
            await watcher.send_all(ping(3))
            events: list[WatchEvent] = []
            replies: list[int] = []
            reader = MessageDecoder(1 << 20)
            while len(events) < 2 * cycles + 1 or 3 not in replies:
                for obj in reader.feed(await watcher.receive_some(1 << 20)):
                    message = parse_server_message(obj)
                    if isinstance(message, WatchEvent):
                        events.append(message)
                    elif isinstance(message, Response):
                        assert message.error is None
                        replies.append(message.xid)
            assert replies == [2, 3]
            assert [event.seq for event in events] == list(range(1, 2 * cycles + 2))
            assert [event.event for event in events[1:3]] == ["online", "offline"]
            await watcher.aclose()
            await writer.aclose()
