"""Opening and accepting byte streams, for every plugin: dialling TCP, TLS on either side,
the peer's name — each within its connect or handshake timeout.

Every stream plugin (tcp, tls, ws, wss, dubbo, the lease and ZooKeeper clients) opens its
connections here, so "connect within the timeout, and leave no socket behind when that
fails" is written once; the timeout runs on the engine's timer
(:func:`pulse._trio.phase.bounded`) and ends in :class:`~pulse.errors.PhaseTimeout`.
"""

from __future__ import annotations

import errno
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import trio

from pulse._log import get_logger
from pulse._trio.engine import current_engine
from pulse._trio.phase import Phase, bounded

__all__ = ["ACCEPT_RETRY", "accept_forever", "accept_tls", "connect", "dial", "peer_name"]

log = get_logger("pulse.streams")

ACCEPT_RETRY: Final = 0.1
"""Seconds before accepting again when the process ran out of descriptors or memory."""

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                           errno.ENOBUFS})

Prepare = Callable[[trio.SocketStream], None]


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of a socket stream's remote end (``[v6]:port`` for IPv6; "?" when
    unknown, e.g. a memory stream)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    try:
        address = sock.getpeername() if sock is not None else None
    except OSError:
        address = None
    if not address or not isinstance(address, tuple):
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def dial(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    https_compatible: bool = False,
    prepare: Prepare | None = None,
    timeout: float = math.inf,
    local_address: str | None = None,
) -> trio.abc.Stream:
    """A TCP connection to ``host:port`` — with a completed TLS handshake when
    ``ssl_context`` is given — within ``timeout`` seconds, or
    :class:`~pulse.errors.PhaseTimeout`. ``prepare`` tunes the socket (keepalive options)
    before any byte is sent; ``local_address`` binds the local end first (to leave by one
    interface of several). Nothing is left open when it fails."""
    with bounded(Phase.CONNECT, timeout, peer=f"{host}:{port}"):
        sock = await trio.open_tcp_stream(host, port, local_address=local_address)
        try:
            if prepare is not None:
                prepare(sock)
            if ssl_context is None:
                return sock
            tls = trio.SSLStream(sock, ssl_context, server_hostname=server_hostname or host,
                                 https_compatible=https_compatible)
            await tls.do_handshake()
            return tls
        except BaseException:
            await trio.aclose_forcefully(sock)
            raise


async def connect(
    opener: Callable[[], Awaitable[trio.abc.Stream]], *, timeout: float, peer: str
) -> trio.abc.Stream:
    """Run a plugin's own ``opener`` (a test's memory stream, a custom transport) as the
    connect phase: within ``timeout`` seconds, or :class:`~pulse.errors.PhaseTimeout`."""
    with bounded(Phase.CONNECT, timeout, peer=peer):
        return await opener()


async def accept_tls(
    stream: trio.abc.Stream,
    ssl_context: ssl.SSLContext,
    *,
    timeout: float,
    peer: str,
    https_compatible: bool = False,
) -> trio.SSLStream[trio.abc.Stream]:
    """The server side of a TLS handshake on an accepted ``stream``, within ``timeout``
    seconds, or :class:`~pulse.errors.PhaseTimeout` (the caller closes the stream)."""
    tls = trio.SSLStream(stream, ssl_context, server_side=True,
                         https_compatible=https_compatible)
    with bounded(Phase.HANDSHAKE, timeout, peer=peer):
        await tls.do_handshake()
    return tls


async def accept_forever(
    listener: trio.SocketListener, take: Callable[[trio.SocketStream], None]
) -> NoReturn:
    """Hand every connection ``listener`` accepts to ``take`` (which must not block: it
    starts a task or gives the socket to the engine). The stream stays open when ``take``
    returns — unlike ``trio.serve_listeners``, so a connection without a task of its own
    outlives its accept. Out of descriptors or memory it logs ``accept_failed`` and tries
    again after :data:`ACCEPT_RETRY` seconds, as trio's loop does; ``take`` raising costs
    that one connection, never the listener."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("accept_failed", reason=errno.errorcode.get(exc.errno or 0, "?"),
                      retry_in=ACCEPT_RETRY)
            await current_engine().sleep(ACCEPT_RETRY)
            continue
        try:
            take(stream)
        except Exception as exc:  # a bug must cost one connection, never the server
            log.exception("connection_handler_failed", reason=repr(exc))
            stream.socket.close()
