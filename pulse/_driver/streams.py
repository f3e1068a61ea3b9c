"""Opening and accepting byte streams, for every plugin: dialling TCP, TLS on either side,
listening, serving, the peer's name — each within its connect or handshake timeout.

This is the one place where the running loop matters for streams. Every stream a driver
holds has trio's shape (``send_all``/``receive_some``/``aclose``, trio's resource errors):
under trio it is trio's own ``SocketStream``/``SSLStream``; under asyncio (or uvloop) it is
:mod:`pulse._driver.sockets`' equivalent on a plain non-blocking socket. The functions here
pick one by the running loop (sniffio, as anyio and httpx detect it); plugins call only
these, so no plugin is written twice.

Every stream plugin (tcp, tls, ws, wss, dubbo, the lease and ZooKeeper clients) opens its
connections here, so "connect within the timeout, and leave no socket behind when that
fails" is written once; the timeout runs on the engine's timer
(:func:`pulse._driver.phase.bounded`) and ends in :class:`~pulse.errors.PhaseTimeout`.
"""

from __future__ import annotations

import errno
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, NoReturn

import anyio
import anyio.abc
import sniffio
import trio

from pulse._driver import sockets
from pulse._driver.engine import current_engine
from pulse._driver.phase import Phase, bounded
from pulse._log import get_logger

__all__ = [
    "ACCEPT_RETRY", "Listener", "Stream", "accept_forever", "accept_tls", "aclose_forcefully",
    "as_stream",
    "connect", "dial", "listener_from_socket", "on_trio", "open_tcp_listeners", "open_tcp_stream",
    "peer_name", "serve_listeners", "serve_tcp", "socket_of", "start_tls",
]

log = get_logger("pulse.streams")

ACCEPT_RETRY: Final = 0.1
"""Seconds before accepting again when the process ran out of descriptors or memory."""

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                           errno.ENOBUFS})

#: A byte stream with trio's methods (any trio stream, or :mod:`pulse._driver.sockets`').
Stream = trio.abc.Stream
#: A plain TCP socket stream on either loop.
SocketStream = trio.SocketStream | sockets.SocketStream
#: A listening socket on either loop (``.socket.getsockname()`` gives the bound address).
Listener = trio.SocketListener | sockets.SocketListener

Prepare = Callable[[SocketStream], None]


def on_trio() -> bool:
    """True when the running loop is trio's (False under asyncio or uvloop)."""
    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def socket_of(stream: object) -> SocketStream | None:
    """The plain socket stream under ``stream`` (through TLS), or None (memory streams)."""
    while isinstance(stream, (trio.SSLStream, sockets.TlsStream)):
        stream = stream.transport_stream
    if isinstance(stream, (trio.SocketStream, sockets.SocketStream)):
        return stream
    return None


async def aclose_forcefully(stream: anyio.abc.AsyncResource | trio.abc.AsyncResource) -> None:
    """Close ``stream`` without waiting on the peer (a TLS goodbye is skipped)."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await stream.aclose()


def as_stream(stream: object) -> Stream:
    """``stream`` in trio's shape: a trio stream as it is, an anyio byte stream wrapped."""
    if isinstance(stream, trio.abc.Stream):
        return stream
    if isinstance(stream, anyio.abc.ByteStream):
        return sockets.ByteStreamView(stream)
    raise TypeError(f"expected a trio or anyio byte stream, got {type(stream).__name__}")


async def open_tcp_stream(host: str, port: int, *, local_address: str | None = None) -> Stream:
    """A connected TCP stream to ``host:port`` on whichever loop is running (trio's own
    under trio; a plain non-blocking socket stream under asyncio or uvloop), for
    :func:`pulse.heartbeat`. It has no timeout of its own: wrap it in one, or use
    ``pulse.plugins.tcp.connect_tcp``, which bounds the connect. ``local_address`` binds
    the local end first (to leave by one interface of several)."""
    if on_trio():
        return await trio.open_tcp_stream(host, port, local_address=local_address)
    return await sockets.connect_tcp(host, port, local_address=local_address)


async def start_tls(stream: Stream, ssl_context: ssl.SSLContext, *, server_side: bool,
                    server_hostname: str | None = None,
                    https_compatible: bool = False) -> Stream:
    """TLS over ``stream``, after a completed handshake (no timeout of its own)."""
    if on_trio():
        tls = trio.SSLStream(stream, ssl_context, server_side=server_side,
                             server_hostname=None if server_side else server_hostname,
                             https_compatible=https_compatible)
        await tls.do_handshake()
        return tls
    if not isinstance(stream, sockets.SocketStream):
        raise TypeError(f"TLS under this loop needs a socket stream, got {type(stream).__name__}")
    return await sockets.TlsStream.wrap(stream, ssl_context, server_side=server_side,
                                        server_hostname=server_hostname,
                                        https_compatible=https_compatible)


async def open_tcp_listeners(port: int, *, host: str | None = None) -> list[Listener]:
    """Listening sockets on ``host`` (all interfaces when None) and ``port``."""
    if on_trio():
        return list(await trio.open_tcp_listeners(port, host=host))
    return list(await sockets.listen_tcp(port, host))


def listener_from_socket(sock: socket.socket) -> Listener:
    """A listener over a bound, listening stdlib socket."""
    if on_trio():
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    return sockets.SocketListener(sock)


Handler = Callable[[Any], Awaitable[object]]


async def serve_listeners(handler: Handler, listeners: list[Listener], *,
                          task_status: anyio.abc.TaskStatus[Any]
                          = anyio.TASK_STATUS_IGNORED) -> NoReturn:
    """Run ``handler(stream)`` in a task of its own for every connection ``listeners``
    accept, closing the stream when it returns (``trio.serve_listeners``' contract, on
    either loop); ``task_status.started`` receives the listeners."""
    if on_trio():
        await trio.serve_listeners(handler, listeners,
                                   task_status=task_status)
        raise AssertionError("unreachable")

    async def run(stream: Stream) -> None:
        try:
            await handler(stream)
        finally:
            await aclose_forcefully(stream)

    async with anyio.create_task_group() as group:
        for listener in listeners:
            group.start_soon(_accept_into, listener, group, run)
        task_status.started(listeners)
    raise AssertionError("unreachable")


async def _accept_into(listener: Listener, group: anyio.abc.TaskGroup,
                       run: Callable[[Stream], Coroutine[Any, Any, None]]) -> NoReturn:
    def take(stream: Stream) -> None:
        group.start_soon(run, stream)

    async with listener:  # closed when serving ends, as trio.serve_listeners closes its own
        await accept_forever(listener, take)


async def serve_tcp(handler: Handler, port: int, *, host: str | None = None,
                    task_status: anyio.abc.TaskStatus[Any]
                    = anyio.TASK_STATUS_IGNORED) -> NoReturn:
    """Listen on ``host:port`` and :func:`serve_listeners` (``trio.serve_tcp`` on either
    loop)."""
    listeners = await open_tcp_listeners(port, host=host)
    await serve_listeners(handler, listeners, task_status=task_status)


def peer_name(stream: object) -> str:
    """``host:port`` of a socket stream's remote end (``[v6]:port`` for IPv6; "?" when
    unknown, e.g. a memory stream)."""
    sock = getattr(socket_of(stream), "socket", None)
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
) -> Stream:
    """A TCP connection to ``host:port`` — with a completed TLS handshake when
    ``ssl_context`` is given — within ``timeout`` seconds, or
    :class:`~pulse.errors.PhaseTimeout`. ``prepare`` tunes the socket (keepalive options)
    before any byte is sent; ``local_address`` binds the local end first (to leave by one
    interface of several). Nothing is left open when it fails."""
    with bounded(Phase.CONNECT, timeout, peer=f"{host}:{port}"):
        sock = await open_tcp_stream(host, port, local_address=local_address)
        try:
            if prepare is not None:
                prepare(sock)  # type: ignore[arg-type]  # a plain socket stream here
            if ssl_context is None:
                return sock
            return await start_tls(sock, ssl_context, server_side=False,
                                   server_hostname=server_hostname or host,
                                   https_compatible=https_compatible)
        except BaseException:
            await aclose_forcefully(sock)
            raise


async def connect(
    opener: Callable[[], Awaitable[Stream]], *, timeout: float, peer: str
) -> Stream:
    """Run a plugin's own ``opener`` (a test's memory stream, a custom transport) as the
    connect phase: within ``timeout`` seconds, or :class:`~pulse.errors.PhaseTimeout`."""
    with bounded(Phase.CONNECT, timeout, peer=peer):
        return await opener()


async def accept_tls(
    stream: Stream,
    ssl_context: ssl.SSLContext,
    *,
    timeout: float,
    peer: str,
    https_compatible: bool = False,
) -> Stream:
    """The server side of a TLS handshake on an accepted ``stream``, within ``timeout``
    seconds, or :class:`~pulse.errors.PhaseTimeout` (the caller closes the stream)."""
    with bounded(Phase.HANDSHAKE, timeout, peer=peer):
        return await start_tls(stream, ssl_context, server_side=True,
                               https_compatible=https_compatible)


async def accept_forever(
    listener: Listener, take: Callable[[Any], None]
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
