"""HeartbeatConnection under races and cancellation: closing while a write is stuck, a
cancelled write, a handshake cancelled half-way, an application callback that raises.

Virtual time throughout (MockClock autojump). Where a kernel send buffer must fill up, a
``socket.socketpair`` stands in for the network: its I/O is local and instant, so autojump
only advances the clock while every task waits on something that will never come.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
import trio.testing
import trustme

from pulse._core.policy import HeartbeatPolicy
from pulse._driver.connection import heartbeat
from pulse.actions import Action, Close
from pulse.errors import ConnectionClosed, PeerTimeout, ProtocolError
from pulse.frames import PROTOCOL_VERSION, Data, FrameDecoder, Hello, encode_frame

POLICY = HeartbeatPolicy(1.0, 3.0)
BIG = b"x" * 20_000_000  # far more than a socketpair buffers


def socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of real (local) socket streams with small kernel buffers."""
    a, b = trio.socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return trio.SocketStream(a), trio.SocketStream(b)


async def tls_streams() -> tuple[trio.SSLStream[trio.SocketStream], trio.SSLStream[trio.SocketStream]]:
    """Both ends of a TLS session over ``socket_streams()``, handshake done."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("peer.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    a, b = socket_streams()
    client = trio.SSLStream(a, client_ctx, server_hostname="peer.test")
    server = trio.SSLStream(b, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    return client, server


async def silent_peer(stream: trio.abc.Stream, task_status: trio.TaskStatus[None]) -> None:
    """Send a HELLO, read the other side's HELLO, then neither read nor write again."""
    task_status.started()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, encode_frame(Hello(PROTOCOL_VERSION, 1.0, 3.0, "raw")))
        decoder = FrameDecoder()
        while not decoder.feed(await stream.receive_some(65536)):
            pass
    await trio.sleep_forever()


async def test_dead_tls_peer_closes_even_while_a_write_is_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over TLS, a peer declared dead while our write is blocked on it closes the connection
    (the write raises PeerTimeout) instead of hanging in a graceful TLS shutdown."""
    client, server = await tls_streams()
    hung = False

    async def watchdog() -> None:
        # A shielded hang cannot be cancelled: break it from below, and remember it.
        nonlocal hung
        await trio.sleep(30)
        hung = True
        await client.transport_stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(silent_peer, server)
        nursery.start_soon(watchdog)
        async with heartbeat(client, POLICY) as conn:
            with pytest.raises(PeerTimeout):
                await conn.send(BIG)
            assert conn.closed
        assert trio.current_time() < 30 and not hung
        nursery.cancel_scope.cancel()


async def test_a_write_cancelled_mid_frame_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A send() cancelled after part of its frame went out leaves the stream unframed: the
    connection closes rather than let the next frame land inside the half-sent one."""
    left, right = socket_streams()
    received = bytearray()

    async def slow_reader(task_status: trio.TaskStatus[None]) -> None:
        # A live peer that reads slowly: enough to stay alive, too little for BIG.
        await right.send_all(encode_frame(Hello(PROTOCOL_VERSION, 0, 0, "raw")))
        task_status.started()
        while True:
            chunk = await right.receive_some(4096)
            if not chunk:
                return
            received.extend(chunk)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(slow_reader)
        async with heartbeat(left, HeartbeatPolicy(0, 0)) as conn:
            with trio.move_on_after(0.5):
                await conn.send(BIG)
            with pytest.raises(ConnectionClosed):
                await conn.send(b"after")
                await trio.sleep(1)
                await conn.send(b"after")
        nursery.cancel_scope.cancel()
    # Whatever reached the peer is a clean prefix of frames: never a frame inside another.
    decoder = FrameDecoder(max_frame_size=len(BIG) + 64)
    try:
        frames = decoder.feed(bytes(received))
    except ProtocolError as exc:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"the peer saw a corrupted stream: {exc}")
    assert all(not (isinstance(f, Data) and f.payload == b"after") for f in frames)


class TrackedStream(trio.abc.Stream):
    """A memory stream that remembers whether it was closed."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.was_closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.was_closed = True
        await self.inner.aclose()


async def test_a_handshake_cancelled_half_way_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """heartbeat() owns the stream from the start: cancelled while waiting for the peer's
    HELLO, it still closes it."""
    left, _right = trio.testing.memory_stream_pair()
    tracked = TrackedStream(left)
    with trio.move_on_after(1):
        async with heartbeat(tracked, POLICY, handshake_timeout=10):
            pytest.fail("the silent peer never sent a HELLO")  # pragma: no cover
    assert tracked.was_closed


async def test_a_raising_event_callback_still_releases_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """If the application's on_liveness callback raises on the final Close, the error reaches
    the application, and the stream and the event feed are closed all the same."""
    def on_liveness(action: Action) -> None:
        if isinstance(action, Close):
            raise RuntimeError("callback bug")

    for peer_leaves in (False, True):  # declared dead by us / the peer hangs up
        left, right = trio.testing.memory_stream_pair()
        tracked = TrackedStream(left)
        async with trio.open_nursery() as nursery:
            await nursery.start(silent_peer, right)
            with pytest.raises(RuntimeError, match="callback bug"):
                async with heartbeat(tracked, POLICY, on_liveness=on_liveness) as conn:
                    if peer_leaves:
                        await right.aclose()
                    await trio.sleep(10)  # the peer is declared dead meanwhile
            nursery.cancel_scope.cancel()
        assert tracked.was_closed
        assert conn.close_reason == ("connection closed by peer" if peer_leaves
                                     else "no data for 3.000s (timeout 3s)")
        with trio.fail_after(1):
            assert [e async for e in conn.events()][-1] == Close(conn.close_reason)


async def test_an_error_while_the_surrounding_scope_is_cancelled_is_not_a_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the block fails (say with PeerTimeout) just as the scope around heartbeat() is
    cancelled, the caller gets that one exception, not an ExceptionGroup that also holds the
    reader task's Cancelled."""
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        await nursery.start(silent_peer, right)
        with trio.CancelScope() as scope, pytest.raises(PeerTimeout):
            async with heartbeat(left, POLICY):  # memory streams: a reader task runs
                scope.cancel()
                try:
                    await trio.sleep_forever()
                finally:
                    raise PeerTimeout("the peer died as the application cancelled")
        nursery.cancel_scope.cancel()
