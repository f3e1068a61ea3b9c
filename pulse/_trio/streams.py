"""Opening and accepting byte streams, for every plugin: dialling TCP, TLS on either side,
the peer's name — each within its connect or handshake timeout.

Every stream plugin (tcp, tls, ws, wss, dubbo, the lease and ZooKeeper clients) opens its
connections here, so "connect within the timeout, and leave no socket behind when that
fails" is written once; the timeout runs on the engine's timer
(:func:`pulse._trio.phase.bounded`) and ends in :class:`~pulse.errors.PhaseTimeout`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable

import trio

from pulse._trio.phase import Phase, bounded

__all__ = ["accept_tls", "connect", "dial", "peer_name"]

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
) -> trio.abc.Stream:
    """A TCP connection to ``host:port`` — with a completed TLS handshake when
    ``ssl_context`` is given — within ``timeout`` seconds, or
    :class:`~pulse.errors.PhaseTimeout`. ``prepare`` tunes the socket (keepalive options)
    before any byte is sent. Nothing is left open when it fails."""
    with bounded(Phase.CONNECT, timeout, peer=f"{host}:{port}"):
        sock = await trio.open_tcp_stream(host, port)
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
