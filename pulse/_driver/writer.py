"""Control frames (pings, pongs) written without a task hop.

A heartbeat falls due inside the engine's task and a pong is owed by the task that read the
ping; neither should wake another task to write 16 bytes. :class:`ControlWriter` writes a
control frame straight to the stream's non-blocking socket when nothing else is being written.
Only when that is not possible — the socket buffer is full, an application write holds the
stream, or the stream is not a plain socket (TLS, memory streams) — the bytes are owed and one
short-lived task writes them under the connection's send lock.

Owed bytes are bounded (``backlog``): a control frame that would exceed it is dropped and
counted. A frame is never cut: once its first byte reached the socket the rest is owed
whatever the bound, so the stream stays framed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio
import anyio.abc
import trio

from pulse._driver import sockets
from pulse._driver.streams import SocketStream

#: Default bound on owed control bytes per connection (about 256 pings or pongs).
CONTROL_BACKLOG = 4096


def raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking stdlib socket under a plain socket stream (None for TLS, memory
    streams and the like)."""
    if isinstance(stream, sockets.SocketStream):
        return stream.socket
    if not isinstance(stream, SocketStream):
        return None
    sock = getattr(stream.socket, "_sock", None)  # trio keeps the stdlib socket here
    return sock if isinstance(sock, socket.socket) else None


class ControlWriter:
    """Writes small frames to ``stream`` at once, or owes them to a task holding ``lock``.

    ``on_error`` is called (once) when the stream fails under a write. Set :attr:`nursery`
    before the first write that may have to wait.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        lock: anyio.Lock,
        on_error: Callable[[BaseException], None],
        *,
        backlog: int = CONTROL_BACKLOG,
    ) -> None:
        self.nursery: anyio.abc.TaskGroup | None = None
        self.backlog = backlog
        #: Control frames dropped because the backlog was full.
        self.dropped = 0
        self._stream = stream
        self._raw = raw_socket(stream)
        self._lock = lock
        self._on_error = on_error
        self._owed = bytearray()
        self._flushing = False
        self._closed = False

    @property
    def owed(self) -> int:
        """Bytes waiting for room in the socket."""
        return len(self._owed)

    def send(self, frame: bytes) -> bool:
        """Write ``frame`` now if possible; True when all of it reached the socket."""
        if self._closed:
            return False
        if self._owed or self._raw is None or self._lock.locked():
            if len(self._owed) + len(frame) > self.backlog:
                self.dropped += 1
                return False
            self._owed += frame
            self._start_flush()
            return False
        try:
            sent = self._raw.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return False
        if sent == len(frame):
            return True
        self._owed += frame[sent:]
        self._start_flush()
        return False

    async def flush_locked(self) -> None:
        """Write every owed byte; the caller holds the send lock."""
        while self._owed and not self._closed:
            data = bytes(self._owed)
            self._owed.clear()
            await self._stream.send_all(data)

    def close(self) -> None:
        """Owe nothing more; later frames are dropped quietly."""
        self._closed = True
        self._owed.clear()

    def _start_flush(self) -> None:
        if self._flushing or self.nursery is None:
            return
        self._flushing = True
        self.nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        try:
            async with self._lock:
                await self.flush_locked()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(exc)
        finally:
            self._flushing = False

    def _fail(self, exc: BaseException) -> None:
        if self._closed:
            return
        self.close()
        self._on_error(exc)
