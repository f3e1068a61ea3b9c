"""Review regressions for the WebSocket adapter, in virtual time (MockClock autojump)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from pulse._core.backoff import Backoff, Jitter
from pulse._core.policy import HeartbeatPolicy
from pulse.plugins.websocket import (
    ClientState,
    ConnectionHandle,
    Dropped,
    HandshakeRejected,
    UpgradeRequest,
    reconnecting_websocket,
)
from pulse.plugins.websocket.handshake import client_handshake
from pulse.plugins.websocket.outbox import Outbox
from pulse.plugins.websocket.server import ServerSettings, echo, serve_stream

from .ws_fakes import FakePeer, FakeServer

POLICY = HeartbeatPolicy(interval=1.0, timeout=3.0)
URL = "ws://test.invalid:8080/feed"


async def test_short_and_long_messages_queued_together_are_all_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A batch of short messages followed by a long one (fragment_size small) sends all,
    in order, without the writer tripping over its own pins."""
    drops: list[Dropped] = []
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, fragment_size=100,
                                          on_drop=drops.append) as ws:
            await ws.wait_open()
            messages = ["a", "b", "L" * 250, "c"]
            for message in messages:
                ws.send_nowait(message)
            for message in messages:
                assert await ws.receive() == message
        assert server.last.received == messages
        assert drops == []
        nursery.cancel_scope.cancel()


async def test_close_during_a_hanging_connect_returns_promptly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """aclose() while the TCP connect hangs does not wait out handshake_timeout."""

    async def hanging_opener(host: str, port: int, ctx: ssl.SSLContext | None,
                             name: str) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with reconnecting_websocket(URL, policy=POLICY, opener=hanging_opener,
                                      handshake_timeout=60.0, close_timeout=1.0) as ws:
        await trio.sleep(0.5)
        started = trio.current_time()
        await ws.aclose()
        assert trio.current_time() - started <= 1.0
        assert ws.state is ClientState.CLOSED


async def test_close_while_connecting_flushes_what_was_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """send() then leaving the block before the first connection is open still delivers
    the message (the flush waits up to close_timeout, as documented)."""
    drops: list[Dropped] = []
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 1
        backoff = Backoff(initial=0.2, jitter=Jitter.NONE)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, backoff=backoff,
                                          close_timeout=2.0, on_drop=drops.append) as ws:
            await ws.send("hello")
        assert drops == []
        assert server.last.received == ["hello"]
        assert server.last.close_code == 1000
        nursery.cancel_scope.cancel()


async def test_messages_received_during_an_interrupted_on_connect_reach_the_app(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the connection ends while on_connect runs, what the server sent meanwhile is
    still delivered to the application, in order (not lost with the hook's inbox)."""

    async def greet_then_hang_up(peer: FakePeer) -> None:
        await peer.accept()
        if peer.number == 1:
            await peer.send("welcome")
            await peer.send("news")
            await trio.sleep(0.1)
            await peer.hang_up()
            return
        await peer.run()

    async def on_connect(handle: ConnectionHandle) -> None:
        if handle.number == 1:
            await trio.sleep_forever()  # still authenticating when the link drops

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, greet_then_hang_up)
        backoff = Backoff(initial=0.2, jitter=Jitter.NONE)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, backoff=backoff,
                                          on_connect=on_connect) as ws:
            with trio.fail_after(30):
                assert await ws.receive() == "welcome"
                assert await ws.receive() == "news"
        nursery.cancel_scope.cancel()


async def test_a_request_check_that_raises_costs_one_client_not_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``check`` callback that raises on one request answers that client with HTTP 500
    and serve_stream returns normally (the server keeps serving everyone else)."""

    def check(request: UpgradeRequest) -> int | None:
        if request.path == "/bad":
            raise KeyError("missing header")
        return None

    settings = ServerSettings(policy=POLICY, check=check)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_end, echo, settings)
        with pytest.raises(HandshakeRejected) as refused:
            await client_handshake(client_end, host="test", target="/bad")
        assert refused.value.status_code == 500
        good_client, good_server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_stream, good_server, echo, settings)
        ws, _ = await client_handshake(good_client, host="test", target="/good")
        assert ws is not None
        nursery.cancel_scope.cancel()


def test_unpin_last_keeps_earlier_pins_and_refuses_more_than_pinned() -> None:
    """unpin_last(n) unpins only the newest n pinned entries; more than pinned is an error."""
    outbox = Outbox(10)
    for message in ("a", "b", "c"):
        outbox.put_nowait(message)
    batch = outbox.begin_batch(3, 1000)
    outbox.unpin_last(2)
    outbox.sent(batch[0])
    peek = outbox.peek()
    assert peek is not None and peek.message == "b"
    with pytest.raises(ValueError):
        outbox.unpin_last(1)
