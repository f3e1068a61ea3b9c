"""Received messages waiting for the application.

The bound applies to the connection's reader: when ``maxsize`` messages wait, :meth:`put`
blocks and the reader stops reading the socket (backpressure reaches the peer through TCP).
Messages a connection had already received when it ended are appended beyond the bound
(:meth:`put_leftover`), so closing never waits for a slow application and never loses what
arrived; they keep their place, after what came before them and before anything a later
connection delivers.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import trio

from pulse.errors import PulseError

from .outbox import Outbox, Overflow, Payload


class Inbox:
    """A FIFO of received messages, bounded for the reader, unbounded for leftovers."""

    __slots__ = ("_closed", "_data", "_items", "_space", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._items: list[Payload] = []  # short FIFO: a list is ~550 bytes smaller than a deque
        self._closed = False
        self._data: anyio.Event | None = None  # made only while someone waits for a message
        self._space: anyio.Event | None = None  # made only while someone waits for room

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (what is queued can still be taken)."""
        return self._closed

    def put_nowait(self, message: Payload) -> bool:
        """Queue ``message`` if there is room; False (nothing queued) when full."""
        if self._closed:
            raise trio.ClosedResourceError("the inbox is closed")
        if len(self._items) >= self.maxsize:
            return False
        self._append(message)
        return True

    async def put(self, message: Payload) -> None:
        """Queue ``message``, waiting while the inbox is full."""
        while True:
            if self.put_nowait(message):
                await anyio.lowlevel.checkpoint()
                return
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()

    def put_leftover(self, message: Payload) -> None:
        """Queue ``message`` beyond the bound (a closing connection's last messages)."""
        if not self._closed:
            self._append(message)

    async def get(self) -> Payload:
        """The oldest message; waits for one; raises ``anyio.EndOfStream`` once closed and
        empty. A cancelled ``get`` takes nothing: the message is taken after the last await
        (asyncio cannot shield a checkpoint from ``task.cancel()``)."""
        await anyio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            if self._data is None:
                self._data = anyio.Event()
            await self._data.wait()
        message = self._items.pop(0)
        self._wake_space()
        return message

    def get_nowait(self) -> Payload:
        """The oldest message, or ``anyio.WouldBlock`` when there is none."""
        if not self._items:
            raise anyio.WouldBlock
        message = self._items.pop(0)
        self._wake_space()
        return message

    def close(self) -> None:
        """No more messages: getters drain what is queued, then see ``EndOfChannel``;
        waiting putters get ``trio.ClosedResourceError``."""
        self._closed = True
        self._wake_data()
        self._wake_space()

    def _append(self, message: Payload) -> None:
        self._items.append(message)
        self._wake_data()

    def _wake_data(self) -> None:
        if self._data is not None:
            self._data.set()
            self._data = None

    def _wake_space(self) -> None:
        if self._space is not None:
            self._space.set()
            self._space = None


class EchoInbox(Inbox):
    """The inbox of the built-in echo: every message goes straight back out through
    ``outbox``, from the task (or engine callback) that received it; no handler task and no
    queue of its own.

    While the outbox is full (and its overflow policy is not ``DROP_OLDEST``) it reports no
    room, so the reader stops reading that client until the writer made room: the client is
    flow-controlled by TCP instead of losing echoes. Messages that arrive while the
    connection closes (:meth:`put_leftover`) are not echoed (there is nobody to send to).
    """

    __slots__ = ("_outbox",)

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(1)
        self._outbox = outbox

    def put_nowait(self, message: Payload) -> bool:
        """Queue ``message`` for sending back if the outbox has room; False when full."""
        outbox = self._outbox
        if self._closed or outbox.closed:
            raise trio.ClosedResourceError("the connection is closing")
        if outbox.full and outbox.overflow is not Overflow.DROP_OLDEST:
            return False
        outbox.put_nowait(message)
        return True

    async def put(self, message: Payload) -> None:
        """Queue ``message`` for sending back, waiting while the outbox is full."""
        while not self.put_nowait(message):
            try:
                await self._outbox.wait_room()
            except PulseError:  # the outbox closed: the connection is over
                raise trio.ClosedResourceError("the connection is closing") from None
        await anyio.lowlevel.checkpoint()

    def put_leftover(self, message: Payload) -> None:
        """A message that arrived while the connection closed: not echoed."""
