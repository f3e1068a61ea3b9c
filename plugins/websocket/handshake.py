"""The RFC 6455 opening handshake over a trio stream, both sides, on wsproto.

wsproto (and the h11 underneath) parses the HTTP upgrade; this module only moves bytes and
turns outcomes into pulse errors. Limits: the HTTP head is bounded by h11 (16 KiB), the body
of a rejection is read up to :data:`MAX_REJECT_BODY` bytes. Callers bound the time (the
handshake has no clock of its own).
"""

from __future__ import annotations

import http
import math
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from pulse._trio.phase import Phase, bounded
from pulse.errors import RemoteProtocolError

from .connection import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection
from .errors import HandshakeRejected, WebSocketClosed
from .transport import Opener, WebSocketURL

Headers = Sequence[tuple[str | bytes, str | bytes]]

READ_CHUNK: Final = 64 * 1024
"""Largest read per ``receive_some``."""

MAX_REJECT_BODY: Final = 4096
"""Bytes of a rejection's body kept for the error message."""


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


async def _feed(stream: trio.abc.Stream, ws: WSConnection) -> None:
    data = await stream.receive_some(READ_CHUNK)
    if not data:
        raise WebSocketClosed("connection closed during the opening handshake", 1006)
    try:
        ws.receive_data(bytes(data))
    except WsRemoteProtocolError as exc:
        raise RemoteProtocolError(f"bad opening handshake: {exc}") from None


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
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host=host, target=target, extra_headers=encode_headers(headers),
        subprotocols=list(subprotocols),
    )
    await stream.send_all(ws.send(request))
    rejection: RejectConnection | None = None
    body = bytearray()
    while True:
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return ws, Accepted(event.subprotocol, list(event.extra_headers))
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
            await _feed(stream, ws)
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
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        for event in ws.events():
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
            await stream.send_all(ws.send(accept))
            return ws, request, chosen
        try:
            await _feed(stream, ws)
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
            await trio.aclose_forcefully(stream)
            raise
    return WebSocketConnection(stream, ws, max_message_size=max_message_size), accepted
