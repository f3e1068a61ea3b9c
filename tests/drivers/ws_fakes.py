"""Scriptable WebSocket peers on in-memory streams, for virtual-time tests of the ws plugin.

:class:`FakeServer` plays the server for the resilient client: its ``opener`` hands the
client one end of a fresh memory stream pair per connection attempt and serves the other
end with a :class:`FakePeer` that can echo, stay silent, ignore pings, hang up or close with
any code. It records every attempt, so tests can count connections and check that no two
were ever open at once.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from pulse.plugins.websocket.connection import (
    CloseReceived,
    MessageReceived,
    PingReceived,
    PongReceived,
    WebSocketConnection,
)
from pulse.plugins.websocket.errors import WebSocketClosed
from pulse.plugins.websocket.handshake import UpgradeRequest, client_handshake, server_handshake

Payload = str | bytes


class TrackedStream(trio.abc.Stream):
    """A stream that remembers whether its owner closed it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:  # pragma: no cover - not used by the driver
        pass

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


class FakePeer:
    """The far end of one connection, driven by the test."""

    def __init__(self, stream: trio.abc.Stream, number: int) -> None:
        self.stream = stream
        self.number = number
        self.conn: WebSocketConnection | None = None
        self.request: UpgradeRequest | None = None
        self.answer_pings = True
        self.echo = True
        self.received: list[Payload] = []
        self.pings_received = 0
        self.pongs_received = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.ended = trio.Event()
        self.changed = trio.Event()

    async def accept(self, subprotocols: tuple[str, ...] = ()) -> None:
        """Complete the opening handshake."""
        ws, request, _ = await server_handshake(self.stream, subprotocols=subprotocols)
        self.request = request
        self.conn = WebSocketConnection(self.stream, ws, max_message_size=1 << 24)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def run(self) -> None:
        """Read until the connection ends: record, echo, answer pings as configured."""
        assert self.conn is not None
        try:
            while True:
                event = await self.conn.receive_event()
                if isinstance(event, MessageReceived):
                    self.received.append(event.data)
                    if self.echo:
                        await self.conn.write(self.conn.encode_message(event.data))
                elif isinstance(event, PingReceived):
                    self.pings_received += 1
                    if self.answer_pings:
                        await self.conn.write(self.conn.encode_pong(event.payload))
                elif isinstance(event, PongReceived):
                    self.pongs_received += 1
                elif isinstance(event, CloseReceived):
                    self.close_code, self.close_reason = event.code, event.reason
                    if self.conn.can_send_close:
                        await self.conn.write(self.conn.encode_close(event.code, event.reason))
                    break
                self._changed()
        except WebSocketClosed:
            pass
        finally:
            self.ended.set()
            self._changed()
            await trio.aclose_forcefully(self.stream)

    async def send(self, message: Payload, *, final: bool = True) -> None:
        """Send a message (or one fragment of it)."""
        assert self.conn is not None
        await self.conn.write(self.conn.encode_message(message, final=final))

    async def ping(self, payload: bytes = b"peer") -> None:
        """Send a ping of our own."""
        assert self.conn is not None
        await self.conn.write(self.conn.encode_ping(payload))

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame."""
        assert self.conn is not None
        await self.conn.write(self.conn.encode_close(code, reason))

    async def hang_up(self) -> None:
        """Drop the connection without a close frame."""
        await trio.aclose_forcefully(self.stream)

    async def wait_received(self, count: int) -> None:
        """Wait until ``count`` messages arrived."""
        while len(self.received) < count:
            await self.changed.wait()


Behaviour = Callable[[FakePeer], Awaitable[None]]


async def default_behaviour(peer: FakePeer) -> None:
    """Accept and echo until the client goes away."""
    await peer.accept()
    await peer.run()


class FakeServer:
    """Hands the client memory streams and serves each with a :class:`FakePeer`."""

    def __init__(self, nursery: trio.Nursery, behaviour: Behaviour = default_behaviour) -> None:
        self.nursery = nursery
        self.behaviour = behaviour
        self.peers: list[FakePeer] = []
        self.client_streams: list[TrackedStream] = []
        self.attempts = 0
        self.attempt_times: list[float] = []
        self.refuse = 0
        """Refuse this many next attempts with ``ConnectionRefusedError``."""
        self.overlaps = 0
        """Attempts made while an earlier client stream was still open (must stay 0)."""
        self.peer_ready = trio.Event()

    async def opener(self, host: str, port: int, ssl_context: ssl.SSLContext | None,
                     server_hostname: str) -> trio.abc.Stream:
        """The ``opener`` to pass to :func:`connect`."""
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        self.attempt_times.append(trio.current_time())
        if any(not stream.closed for stream in self.client_streams):
            self.overlaps += 1
        if self.refuse > 0:
            self.refuse -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        client_end, server_end = trio.testing.memory_stream_pair()
        tracked = TrackedStream(client_end)
        self.client_streams.append(tracked)
        peer = FakePeer(server_end, len(self.peers) + 1)
        self.peers.append(peer)
        self.nursery.start_soon(self._serve, peer)
        return tracked

    async def _serve(self, peer: FakePeer) -> None:
        try:
            await self.behaviour(peer)
        except (WebSocketClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(peer.stream)

    @property
    def last(self) -> FakePeer:
        """The newest peer."""
        return self.peers[-1]


async def open_raw_client(stream: trio.abc.Stream, target: str = "/") -> WebSocketConnection:
    """A bare client connection over ``stream`` (for server tests)."""
    ws, _ = await client_handshake(stream, host="test", target=target)
    return WebSocketConnection(stream, ws, max_message_size=1 << 24)
