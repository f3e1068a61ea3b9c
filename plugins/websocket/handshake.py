"""The RFC 6455 opening handshake over a trio stream, both sides, on wsproto.

wsproto (and the h11 underneath) parses the HTTP upgrade; this module only moves bytes and
turns outcomes into pulse errors. :class:`HandshakeDecoder` is the sans-IO part (bytes in,
wsproto events out, every malformed input a :class:`~pulse.errors.RemoteProtocolError`).
Limits: the HTTP head is bounded by :data:`MAX_HEAD_SIZE` (16 KiB, h11's own limit), counted
before the bytes are handed to wsproto, so a longer header block is refused without being
buffered; the body of a rejection is read up to :data:`MAX_REJECT_BODY` bytes. Callers bound
the time (the handshake has no clock of its own).
"""

from __future__ import annotations

import http
import math
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from pulse._driver.phase import Phase, bounded
from pulse._driver.streams import aclose_forcefully
from pulse.errors import RemoteProtocolError

from .connection import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection
from .errors import HandshakeRejected, WebSocketClosed
from .transport import Opener, WebSocketURL

Headers = Sequence[tuple[str | bytes, str | bytes]]

READ_CHUNK: Final = 64 * 1024
"""Largest read per ``receive_some``."""

MAX_REJECT_BODY: Final = 4096
"""Bytes of a rejection's body kept for the error message."""

MAX_HEAD_SIZE: Final = 16 * 1024
"""Largest HTTP head (request or status line plus headers) accepted in the opening handshake."""


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Header pairs as bytes (str values are sent as latin-1, as HTTP/1.1 requires)."""
    return [(_as_bytes(name), _as_bytes(value)) for name, value in headers]


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the server said when it accepted our upgrade."""

    subprotocol: str | None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A client's upgrade request as the server saw it."""

    path: str
    host: str
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]


class HandshakeDecoder:
    """The opening handshake without I/O: feed received bytes, get wsproto events.

    ``role`` is ``ConnectionType.SERVER`` (parses an upgrade request) or ``CLIENT`` (parses
    the answer to the request :meth:`send` produced). Until the head is complete at most
    ``max_head_size`` bytes are handed to wsproto; a longer head raises
    :class:`~pulse.errors.RemoteProtocolError` without the excess being buffered. Bytes after
    a complete head (a rejection's body, the first WebSocket frames) pass through. Anything
    wsproto or h11 refuses, or fails on (non-ASCII header lists, for one), comes out as
    :class:`~pulse.errors.RemoteProtocolError`, and so does every later call once one has.
    Frames that arrive right behind the head are not returned: they stay in :attr:`ws` for
    the WebSocket connection that takes it over.
    """

    __slots__ = ("_failed", "_head_done", "_max_head_size", "_received", "ws")

    def __init__(self, role: ConnectionType, *, max_head_size: int = MAX_HEAD_SIZE) -> None:
        if max_head_size < 1:
            raise ValueError(f"max_head_size must be positive, got {max_head_size!r}")
        self.ws = WSConnection(role)
        self._max_head_size = max_head_size
        self._received = 0
        self._head_done = False
        self._failed: str | None = None

    @property
    def head_bytes(self) -> int:
        """Bytes of the (incomplete or complete) head handed to wsproto so far."""
        return self._received

    def send(self, event: Request | AcceptConnection) -> bytes:
        """The bytes for ``event`` (our upgrade request, or our acceptance of theirs)."""
        return self.ws.send(event)

    def feed(self, data: bytes) -> list[Event]:
        """Hand received bytes to the parser; return the events they completed."""
        if self._failed is not None:
            raise RemoteProtocolError(self._failed)
        if not data:
            return []  # wsproto would take b"" for the end of the stream
        if self._head_done:
            return self._receive(data)
        room = self._max_head_size - self._received
        head, rest = data[:room], data[room:]
        self._received += len(head)
        events = self._receive(head)
        if any(isinstance(e, Request | AcceptConnection | RejectConnection) for e in events):
            self._head_done = True
            if rest:
                events += self._receive(rest)
        elif rest or self._received >= self._max_head_size:
            self._fail(f"opening handshake head larger than {self._max_head_size} bytes")
        return events

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                events.append(event)
                if isinstance(event, Request | AcceptConnection):
                    break  # what follows is the WebSocket connection's: left in wsproto
            return events
        except (WsRemoteProtocolError, ValueError) as exc:
            # ValueError covers UnicodeDecodeError from wsproto's header-list parsing.
            self._fail(f"bad opening handshake: {exc}")

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        raise RemoteProtocolError(reason) from None


async def _feed(stream: trio.abc.Stream, decoder: HandshakeDecoder) -> list[Event]:
    data = await stream.receive_some(READ_CHUNK)
    if not data:
        raise WebSocketClosed("connection closed during the opening handshake", 1006)
    return decoder.feed(bytes(data))


async def client_handshake(
    stream: trio.abc.Stream,
    *,
    host: str,
    target: str,
    headers: Headers = (),
    subprotocols: Sequence[str] = (),
) -> tuple[WSConnection, Accepted]:
    """Send the upgrade request and wait for the answer.

    Returns the open wsproto connection (any bytes that followed the response are already
    inside it). Raises :class:`HandshakeRejected` for a non-101 answer,
    :class:`~pulse.errors.RemoteProtocolError` for a malformed one and
    :class:`WebSocketClosed` when the server hangs up first.
    """
    decoder = HandshakeDecoder(ConnectionType.CLIENT)
    request = Request(
        host=host, target=target, extra_headers=encode_headers(headers),
        subprotocols=list(subprotocols),
    )
    await stream.send_all(decoder.send(request))
    rejection: RejectConnection | None = None
    body = bytearray()
    events: list[Event] = []
    while True:
        for event in events:
            if isinstance(event, AcceptConnection):
                return decoder.ws, Accepted(event.subprotocol, list(event.extra_headers))
            if isinstance(event, RejectConnection):
                rejection = event
                if not event.has_body:
                    raise HandshakeRejected(event.status_code, list(event.headers), b"")
            elif isinstance(event, RejectData) and rejection is not None:
                if len(body) < MAX_REJECT_BODY:
                    body += event.data[: MAX_REJECT_BODY - len(body)]
                if event.body_finished:
                    raise HandshakeRejected(rejection.status_code, list(rejection.headers),
                                            bytes(body))
        try:
            events = await _feed(stream, decoder)
        except WebSocketClosed:
            if rejection is not None:
                raise HandshakeRejected(rejection.status_code, list(rejection.headers),
                                        bytes(body)) from None
            raise


RequestCheck = Callable[[UpgradeRequest], int | None]
"""Inspects an upgrade request; returns an HTTP status to refuse it, or None to accept."""


def _http_error(status: int, text: str) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _refuse(stream: trio.abc.Stream, status: int, text: str) -> None:
    try:
        await stream.send_all(_http_error(status, text))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def server_handshake(
    stream: trio.abc.Stream,
    *,
    subprotocols: Sequence[str] = (),
    headers: Headers = (),
    check: RequestCheck | None = None,
) -> tuple[WSConnection, UpgradeRequest, str | None]:
    """Read an upgrade request and accept it (or refuse it with an HTTP error).

    The subprotocol chosen is the first of ``subprotocols`` (in the server's order of
    preference) the client offered. Raises :class:`~pulse.errors.RemoteProtocolError` for a
    request that is not a valid WebSocket upgrade (answered with HTTP 400) and
    :class:`HandshakeRejected` when ``check`` refused it (HTTP 500 when ``check`` raised;
    the exception is the ``__cause__``).
    """
    decoder = HandshakeDecoder(ConnectionType.SERVER)
    events: list[Event] = []
    while True:
        for event in events:
            if not isinstance(event, Request):
                continue
            request = UpgradeRequest(
                path=event.target, host=event.host,
                headers=encode_headers(event.extra_headers), subprotocols=list(event.subprotocols),
            )
            try:
                status = check(request) if check is not None else None
            except Exception as exc:  # a bug in the check costs this client, not the server
                await _refuse(stream, 500, "internal error\n")
                raise HandshakeRejected(500, [], f"check failed: {exc!r}".encode()) from exc
            if status is not None:
                await _refuse(stream, status, f"refused with HTTP {status}\n")
                raise HandshakeRejected(status, [], b"")
            chosen = next((p for p in subprotocols if p in event.subprotocols), None)
            accept = AcceptConnection(subprotocol=chosen, extra_headers=encode_headers(headers))
            await stream.send_all(decoder.send(accept))
            return decoder.ws, request, chosen
        try:
            events = await _feed(stream, decoder)
        except RemoteProtocolError as exc:
            await _refuse(stream, 400, f"{exc}\n")
            raise


async def open_connection(
    url: WebSocketURL,
    opener: Opener,
    ssl_context: ssl.SSLContext | None,
    *,
    server_hostname: str | None = None,
    headers: Headers = (),
    subprotocols: Sequence[str] = (),
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float = math.inf,
) -> tuple[WebSocketConnection, Accepted]:
    """Dial ``url`` with ``opener``, run the client handshake and wrap the result, all within
    ``timeout`` seconds (:class:`~pulse.errors.PhaseTimeout` after that); the stream is
    closed if anything fails."""
    with bounded(Phase.HANDSHAKE, timeout, peer=url.peer):
        stream = await opener(url.host, url.port, ssl_context, server_hostname or url.host)
        try:
            ws, accepted = await client_handshake(
                stream, host=url.host_header, target=url.target,
                headers=headers, subprotocols=subprotocols,
            )
        except BaseException:
            await aclose_forcefully(stream)
            raise
    return WebSocketConnection(stream, ws, max_message_size=max_message_size), accepted
