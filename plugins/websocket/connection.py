"""One open WebSocket connection over a trio stream: frames in, bytes out, on wsproto.

This is the thin I/O layer under the session; it owns no task and keeps no timer.

* :meth:`WebSocketConnection.receive_event` reads the stream, feeds wsproto and returns one
  event at a time: complete messages (fragments are reassembled under
  ``max_message_size``), pings, pongs and the close frame. ``on_receive`` is called for every
  *complete frame* that arrives (a control frame, or the last bytes of a data frame — also a
  fragment of a longer message): a peer proves it is alive by finishing frames, not by
  trickling bytes into one that never ends.
* ``encode_*`` turn frames into bytes (wsproto masks client frames); :meth:`write` sends them.
  One task at a time may write; the session's writer is that task.
* A peer that breaks the protocol gets :class:`~.errors.WebSocketProtocolError` carrying the
  close code to answer with (1002 protocol error, 1007 bad UTF-8, 1009 too big).
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import anyio
import trio
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError

from pulse._driver.engine import current_engine
from pulse._driver.streams import aclose_forcefully
from pulse.errors import FrameTooLarge

from .errors import WebSocketClosed, WebSocketProtocolError

READ_CHUNK: Final = 64 * 1024
"""Largest read per ``receive_some``."""

DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024
"""Default limit on a reassembled message, in bytes (text counted as UTF-8), as websockets."""

MAX_CLOSE_REASON: Final = 123
"""RFC 6455: a close frame's reason is at most 123 bytes of UTF-8."""


class MessageTooBig(FrameTooLarge, WebSocketProtocolError):
    """A message exceeded ``max_message_size``; answered with close code 1009."""

    def __init__(self, message: str) -> None:
        WebSocketProtocolError.__init__(self, message, 1009)


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete text (``str``) or binary (``bytes``) message."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer sent a ping; it expects a pong with the same payload."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a ping."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The connection is closing: the peer's close frame, or 1006 when the stream ended."""

    code: int
    reason: str


ReceivedEvent = MessageReceived | PingReceived | PongReceived | CloseReceived


def truncate_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame (123 bytes of UTF-8, whole characters)."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON:
        return reason
    return encoded[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


class _EventQueue(list[Event]):
    """The ``append``/``popleft`` wsproto's open connection uses on its event queue, on a
    list (short-lived and almost always empty; a deque is ten times bigger when empty)."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


class WebSocketConnection:
    """An open WebSocket connection (after the opening handshake)."""

    __slots__ = ("_closed", "_fragments", "_fragments_size", "_parsed", "_write_limit",
                 "_write_scope",
                 "bytes_received", "bytes_sent", "max_message_size", "on_receive", "stream",
                 "write_interrupted", "ws")

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_receive: Callable[[], None] | None = None,
    ) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, got {max_message_size!r}")
        self.stream = stream
        # Once open, talk to wsproto's connection directly: the opening handshake's state
        # (an h11 connection and its buffers, ~2 KiB) is then freed.
        self.ws: WSConnection | Connection = ws.connection if ws.connection is not None else ws
        events = getattr(self.ws, "_events", None)
        if isinstance(events, deque):
            # wsproto's queue of parsed events is empty between reads; an empty deque costs
            # ~600 bytes per connection, a list 56.
            self.ws._events = _EventQueue(events)  # type: ignore[union-attr]
        self.max_message_size = max_message_size
        self.on_receive = on_receive
        self._parsed: Iterator[Event] = iter(())
        self._fragments: list[str | bytes] = []
        self._fragments_size = 0
        self._closed = False
        self.write_interrupted = False
        """True once a write was abandoned half-way: the byte stream is no longer framed."""
        self._write_scope: anyio.CancelScope | None = None
        self._write_limit = math.inf  # when every write is abandoned (set by abort_write)
        self.bytes_received = 0
        self.bytes_sent = 0

    # -- receiving ------------------------------------------------------------------------

    async def receive_event(self) -> ReceivedEvent:
        """The next event from the peer; after a :class:`CloseReceived` it raises
        :class:`~.errors.WebSocketClosed`."""
        while True:
            event = self.next_event()
            if event is not None:
                return event
            try:
                data = await self.stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # the transport is gone: wsproto reports close code 1006
            self.feed(data)

    def next_event(self) -> ReceivedEvent | None:
        """The next event among the bytes already fed (None: more bytes are needed); after a
        :class:`CloseReceived` it raises :class:`~.errors.WebSocketClosed`."""
        if self._closed:
            raise WebSocketClosed("connection closed", 1006)
        # Events are taken from wsproto's generator one at a time, so its state (e.g.
        # REMOTE_CLOSING) never runs ahead of what the caller has seen.
        for event in self._parsed:
            result = self._interpret(event)
            if result is not None:
                return result
        self._check_declared_length()
        return None

    def _check_declared_length(self) -> None:
        """Refuse (1009) a frame whose header already declares more than the message limit,
        before any of its payload is waited for."""
        proto = getattr(self.ws, "_proto", None)  # wsproto's frame decoder, where available
        decoder = getattr(proto, "_frame_decoder", None)
        header = getattr(decoder, "header", None)
        declared = getattr(header, "payload_len", None)
        consumed = getattr(decoder, "payload_consumed", 0)
        if not isinstance(declared, int) or not isinstance(consumed, int):
            return
        if self._fragments_size + declared - consumed > self.max_message_size:
            raise MessageTooBig(
                f"a frame declares {declared} bytes: the message would exceed the limit of "
                f"{self.max_message_size} bytes"
            )

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes read from the stream (empty: the stream ended); then call :meth:`next_event`
        until it returns None."""
        if data:
            self.bytes_received += len(data)
        self.ws.receive_data(bytes(data) if data else None)
        self._parsed = self.ws.events()

    def _interpret(self, event: Event) -> ReceivedEvent | None:
        if self.on_receive is not None and (
                not isinstance(event, TextMessage | BytesMessage) or event.frame_finished):
            self.on_receive()  # a whole frame from the peer: proof of life
        if isinstance(event, TextMessage | BytesMessage):
            return self._add_fragment(event)
        if isinstance(event, Ping):
            return PingReceived(bytes(event.payload))
        if isinstance(event, Pong):
            return PongReceived(bytes(event.payload))
        if isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.OPEN:
                # wsproto reports a frame it could not parse as a close event without
                # changing state: the peer broke the protocol.
                raise WebSocketProtocolError(event.reason or "protocol error", int(event.code))
            self._closed = True
            return CloseReceived(int(event.code), event.reason or "")
        return None  # pragma: no cover - wsproto yields no other event once open

    def _add_fragment(self, event: TextMessage | BytesMessage) -> MessageReceived | None:
        data = event.data if isinstance(event.data, str) else bytes(event.data)
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        self._fragments_size += size
        if self._fragments_size > self.max_message_size:
            raise MessageTooBig(
                f"message of more than {self.max_message_size} bytes "
                f"({self._fragments_size} so far)"
            )
        self._fragments.append(data)
        if not event.message_finished:
            return None
        fragments, self._fragments, self._fragments_size = self._fragments, [], 0
        if isinstance(event, TextMessage):
            return MessageReceived("".join(f for f in fragments if isinstance(f, str)))
        assert isinstance(event, BytesMessage)
        return MessageReceived(b"".join(f for f in fragments if not isinstance(f, str)))

    # -- sending --------------------------------------------------------------------------

    def _encode(self, event: Event) -> bytes:
        try:
            return self.ws.send(event)
        except WsLocalProtocolError:
            raise WebSocketClosed(f"cannot send in state {self.ws.state.name}", 1006) from None

    def encode_message(self, data: str | bytes, *, final: bool = True) -> bytes:
        """One data frame (a whole message, or a fragment when ``final`` is False)."""
        if isinstance(data, str):
            return self._encode(TextMessage(data=data, message_finished=final))
        return self._encode(BytesMessage(data=data, message_finished=final))

    def encode_ping(self, payload: bytes) -> bytes:
        """A ping control frame."""
        if (len(payload) <= 125 and not getattr(self.ws, "client", True)
                and self.ws.state is ConnectionState.OPEN):
            # A server's ping is unmasked: FIN + opcode 0x9, the length, the payload
            # (RFC 6455 5.2, 5.5.2); the heartbeat hot path skips wsproto's frame builder.
            return bytes((0x89, len(payload))) + payload
        return self._encode(Ping(payload=payload))

    def encode_pong(self, payload: bytes) -> bytes:
        """A pong control frame."""
        return self._encode(Pong(payload=payload))

    def encode_close(self, code: int, reason: str) -> bytes:
        """A close frame (or its answer, when the peer closed first)."""
        return self._encode(CloseConnection(code=code, reason=truncate_reason(reason)))

    @property
    def can_send_close(self) -> bool:
        """True while a close frame may still be sent."""
        return self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)

    @property
    def writing(self) -> bool:
        """True while a :meth:`write` is handing bytes to the stream."""
        return self._write_scope is not None

    @property
    def open(self) -> bool:
        """True while data frames may be sent."""
        return self.ws.state is ConnectionState.OPEN

    async def write(self, data: bytes, *, deadline: float = math.inf) -> None:
        """Send bytes; a broken stream raises :class:`~.errors.WebSocketClosed` (1006).

        The write is shielded from cancellation (a frame cut short would break the framing
        of everything after it, the close frame included); it is abandoned only at
        ``deadline`` or at the limit set by :meth:`abort_write`, after which the stream is
        unusable.
        """
        if not data:
            return
        if self.write_interrupted:
            raise WebSocketClosed("an earlier write was interrupted", 1006)
        self.write_interrupted = True
        with anyio.CancelScope(shield=True, deadline=min(deadline, self._write_limit)) as scope:
            self._write_scope = scope
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WebSocketClosed(f"connection lost while sending: {exc or 'broken'}",
                                      1006) from None
            finally:
                self._write_scope = None
        if scope.cancelled_caught:
            raise WebSocketClosed("write aborted: the peer is not reading", 1006)
        self.write_interrupted = False
        self.bytes_sent += len(data)

    def abort_write(self, after: float = 0.0) -> float:
        """Closing: the write in progress, and every later one (the close frame included),
        is abandoned ``after`` seconds from now at the latest (an earlier limit stays).
        Returns that limit, the end of the closing phase."""
        self._write_limit = min(self._write_limit, current_engine().now() + after)
        scope = self._write_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, self._write_limit)
        return self._write_limit

    def receive_backlog(self) -> tuple[int, int] | None:
        """``(unread, capacity)``: bytes the kernel received that we have not read yet, and
        the socket's receive buffer size. None when the stream has no socket to ask (memory
        streams) or the platform cannot tell."""
        stream: object = self.stream
        while not hasattr(stream, "socket") and hasattr(stream, "transport_stream"):
            stream = stream.transport_stream  # TLS: ask the TCP socket underneath
        sock = getattr(stream, "socket", None)
        if sock is None:
            return None
        try:
            import fcntl
            import socket
            import termios

            answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            capacity = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        except (ImportError, OSError, ValueError):  # not POSIX, or the socket is closed
            return None
        return int(struct.unpack("i", answer)[0]), capacity

    async def aclose(self) -> None:
        """Close the underlying stream at once (no close handshake)."""
        await aclose_forcefully(self.stream)
