"""Byte streams on asyncio: trio's stream shape over a non-blocking stdlib socket.

pulse's drivers speak one stream interface, trio's: ``send_all``, ``receive_some`` (``b""``
at the end), ``send_eof``, ``aclose``, ``wait_send_all_might_not_block``, failures raised as
``trio.BrokenResourceError`` / ``trio.ClosedResourceError``. Under trio the streams are
trio's own. Under any other loop (asyncio, uvloop) they are the classes here, which wait on
anyio's readiness calls — never an asyncio transport, because the engine reads a plain
socket itself (one epoll set for every connection) and a transport would read it too.

* :class:`SocketStream` — a connected TCP socket. It is also an ``anyio.abc.ByteStream``
  (``send``/``receive``), so anyio's TLS layer can wrap it.
* :class:`TlsStream` — anyio's ``TLSStream`` in trio's shape (``transport_stream`` is the
  :class:`SocketStream` under it).
* :class:`ByteStreamView` — any other anyio byte stream in trio's shape.
* :class:`SocketListener` — a listening socket whose ``accept()`` gives :class:`SocketStream`.

The choice between trio's classes and these is made in one place,
:mod:`pulse._driver.streams`.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import trio
from anyio.streams.tls import TLSStream

__all__ = [
    "ByteStreamView", "SocketListener", "SocketStream", "TlsStream", "connect_tcp", "listen_tcp",
]

#: Bytes asked of the kernel per ``receive_some`` when the caller gives no size.
DEFAULT_RECEIVE_SIZE = 65536


def _broken(exc: BaseException) -> trio.BrokenResourceError:
    error = trio.BrokenResourceError(f"socket connection broken: {exc}")
    error.__cause__ = exc
    return error


class SocketStream(trio.abc.HalfCloseableStream, anyio.abc.ByteStream):  # type: ignore[misc]
    """A connected, non-blocking TCP socket with trio's stream methods (and anyio's)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # best effort, as trio does
        #: The stdlib socket (the engine reads it directly; options are set on it).
        self.socket = sock
        self._closed = False

    # -- trio's shape ---------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` (waits while the socket buffer is full)."""
        view = memoryview(data)
        with view:
            while view:
                self._check_open()
                try:
                    sent = self.socket.send(view)
                except BlockingIOError:
                    await self._wait(anyio.wait_writable)
                    continue
                except OSError as exc:
                    raise _broken(exc) from exc
                view = view[sent:]
        await anyio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Return when the socket can take bytes again."""
        self._check_open()
        await self._wait(anyio.wait_writable)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer closed its side."""
        size = max_bytes or DEFAULT_RECEIVE_SIZE
        while True:
            self._check_open()
            try:
                data = self.socket.recv(size)
            except BlockingIOError:
                await self._wait(anyio.wait_readable)
                continue
            except OSError as exc:
                raise _broken(exc) from exc
            await anyio.lowlevel.checkpoint()
            return data

    async def send_eof(self) -> None:
        """Shut the write side down (the peer reads an end of stream)."""
        self._check_open()
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise _broken(exc) from exc
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the socket (a task waiting on it gets ``ClosedResourceError``)."""
        if not self._closed:
            self._closed = True
            if self.socket.fileno() >= 0:
                anyio.notify_closing(self.socket)
            self.socket.close()
        await anyio.lowlevel.checkpoint()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option (as ``trio.SocketStream.setsockopt``)."""
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """Read a socket option (as ``trio.SocketStream.getsockopt``)."""
        if buffersize:
            return self.socket.getsockopt(level, option, buffersize)
        return self.socket.getsockopt(level, option)

    # -- anyio's shape (for anyio's TLS layer) ---------------------------------------------

    async def send(self, item: bytes) -> None:
        try:
            await self.send_all(item)
        except trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc.__cause__

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> bytes:
        try:
            data = await self.receive_some(max_bytes)
        except trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc.__cause__
        if not data:
            raise anyio.EndOfStream
        return data

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {anyio.abc.SocketAttribute.raw_socket: lambda: self.socket}

    # -- helpers --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")

    async def _wait(self, wait: Callable[[socket.socket], Any]) -> None:
        try:
            await wait(self.socket)
        except anyio.ClosedResourceError:
            raise trio.ClosedResourceError("the stream was closed while waiting") from None


class ByteStreamView(trio.abc.Stream):
    """Any anyio byte stream in trio's shape (``b""`` at its end, trio's resource errors):
    what :func:`pulse.heartbeat` makes of an anyio stream it is given."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.tls = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.tls.send(bytes(data))
        except anyio.ClosedResourceError:
            raise trio.ClosedResourceError("the stream is closed") from None
        except (anyio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            raise _broken(exc.__cause__ or exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self.tls.receive(max_bytes or DEFAULT_RECEIVE_SIZE)
        except anyio.EndOfStream:
            return b""
        except anyio.ClosedResourceError:
            raise trio.ClosedResourceError("the stream is closed") from None
        except (anyio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            raise _broken(exc.__cause__ or exc) from exc

    async def aclose(self) -> None:
        await self.tls.aclose()


class TlsStream(ByteStreamView):
    """anyio's TLS stream in trio's shape; ``transport_stream`` is the socket under it."""

    def __init__(self, tls: TLSStream, transport: SocketStream) -> None:
        super().__init__(tls)
        self.tls: TLSStream = tls
        self.transport_stream = transport

    @classmethod
    async def wrap(cls, transport: SocketStream, context: ssl.SSLContext, *,
                   server_side: bool, server_hostname: str | None = None,
                   https_compatible: bool = False) -> TlsStream:
        """Run the TLS handshake over ``transport`` (raises ``trio.BrokenResourceError``
        with the ``ssl.SSLError`` as its cause when it fails)."""
        try:
            tls = await TLSStream.wrap(transport, server_side=server_side,
                                       hostname=server_hostname, ssl_context=context,
                                       standard_compatible=not https_compatible)
        except (anyio.BrokenResourceError, anyio.EndOfStream, OSError) as exc:
            cause = exc.__cause__ or exc
            raise _broken(cause) from cause
        return cls(tls, transport)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS streams have no half-close")

    async def aclose(self) -> None:
        """Send TLS's close_notify when the socket takes it at once, then close — without
        waiting for the peer's reply (as trio's ``SSLStream.aclose``; anyio's ``aclose``
        would wait for the peer to answer, which a dead peer never does)."""
        ssl_object = getattr(self.tls, "_ssl_object", None)
        write_bio = getattr(self.tls, "_write_bio", None)
        if ssl_object is not None and write_bio is not None:
            try:
                ssl_object.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass  # the peer's close_notify has not come (it need not)
            goodbye = write_bio.read()
            if goodbye:
                try:
                    self.transport_stream.socket.send(goodbye)
                except OSError:
                    pass  # a full buffer or a gone peer: the goodbye is a courtesy
        await self.transport_stream.aclose()


class SocketListener(trio.abc.Listener[SocketStream]):
    """A listening TCP socket; ``accept()`` gives a :class:`SocketStream`."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        #: The stdlib listening socket (``getsockname()`` gives the bound address).
        self.socket = sock

    async def accept(self) -> SocketStream:
        """The next connection (``OSError`` from the kernel passes through, as in trio)."""
        while True:
            try:
                conn, _ = self.socket.accept()
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self.socket)
                except anyio.ClosedResourceError:
                    raise trio.ClosedResourceError("the listener was closed") from None
                continue
            return SocketStream(conn)

    async def aclose(self) -> None:
        if self.socket.fileno() >= 0:
            anyio.notify_closing(self.socket)
        self.socket.close()
        await anyio.lowlevel.checkpoint()


async def connect_tcp(host: str, port: int, *, local_address: str | None = None
                      ) -> SocketStream:
    """A connected :class:`SocketStream` to ``host:port`` (each resolved address in turn;
    the last error is raised as ``OSError`` when none answers), from ``local_address``
    when given."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if local_address is not None:
                sock.bind((local_address, 0))
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code)) from None
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return SocketStream(sock)
    raise last or OSError(f"no address for {host}:{port}")


async def listen_tcp(port: int, host: str | None = None, *, backlog: int = 4096,
                     ) -> list[SocketListener]:
    """Listening sockets on ``host`` (every address it resolves to; all interfaces when None)
    and ``port`` (0: the kernel picks, the same one for every address when it can)."""
    flags = socket.AI_PASSIVE
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    listeners: list[SocketListener] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and listeners:
                    address = (address[0], listeners[0].socket.getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            listeners.append(SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
