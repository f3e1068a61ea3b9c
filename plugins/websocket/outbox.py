"""The bounded outgoing queue: messages wait here until a connection's writer sends them.

Rules this module keeps:

* A message leaves the queue only once its last byte was handed to the socket
  (:meth:`Outbox.sent`); the writer first *pins* the head (:meth:`Outbox.begin`), so a
  connection that dies mid-message leaves the message at the head, to be sent again whole on
  the next connection.
* The bound counts every message in the queue, the pinned one included. When it is full the
  overflow policy applies: ``WAIT`` blocks the sender until there is room, ``DROP_OLDEST``
  evicts the oldest message not being written, ``RAISE`` raises
  :class:`~pulse.errors.QueueFull`.
* Every message that will never be sent is reported, once, through ``on_drop`` as a
  :class:`Dropped` with the reason. Nothing is discarded silently.
* Messages put back with :meth:`requeue` (sent, but not confirmed before the connection died)
  go to the front, in their original order, even beyond the bound.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from pulse._log import get_logger
from pulse.delivery import Dropped as Dropped
from pulse.errors import PulseError, QueueFull

log = get_logger("pulse.websocket")

Payload = str | bytes


class Overflow(enum.Enum):
    """What ``send`` does when the outgoing queue is full."""

    WAIT = "wait"
    DROP_OLDEST = "drop-oldest"
    RAISE = "raise"


@dataclass(slots=True)
class Entry:
    """A queued message with its arrival number (for identity and ordering)."""

    number: int
    message: Payload
    maybe_sent: bool = False
    """A write of it was abandoned half-way: some of its bytes may have left."""


DropHandler = Callable[[Dropped], None]


def log_drop(dropped: Dropped) -> None:
    """The default ``on_drop`` of client and server: one structlog warning per message."""
    log.warning("message_dropped", peer=dropped.peer, reason=dropped.reason,
                possibly_delivered=dropped.possibly_delivered, size=len(dropped.message))


class Outbox:
    """A bounded FIFO of outgoing messages shared by successive connections."""

    __slots__ = ("_changed", "_closed", "_entries", "_listeners", "_numbers", "_pinned",
                 "_space", "dropped_count", "maxsize", "on_drop", "overflow", "peer")

    def __init__(
        self,
        maxsize: int = 1024,
        overflow: Overflow = Overflow.WAIT,
        on_drop: DropHandler | None = None,
        *,
        peer: str = "",
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize!r}")
        if not isinstance(overflow, Overflow):
            raise ValueError(f"overflow must be an Overflow, got {overflow!r}")
        self.maxsize = maxsize
        self.overflow = overflow
        self.on_drop = on_drop
        self.peer = peer
        self._entries: list[Entry] = []  # short FIFO: a list is ~550 bytes smaller than a deque
        self._numbers = itertools.count(1)
        self._pinned = 0  # the first ``_pinned`` entries are being written
        self._closed: PulseError | None = None
        self._space: anyio.Event | None = None  # made only while a producer waits for room
        self._changed: anyio.Event | None = None  # made only while someone waits for a change
        self._listeners: list[Callable[[], None]] = []
        self.dropped_count = 0

    # -- producers ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """True when a new message would trigger the overflow policy."""
        return len(self._entries) >= self.maxsize

    async def put(self, message: Payload) -> None:
        """Queue ``message``, applying the overflow policy when the queue is full. A
        cancelled ``put`` queues nothing: the message is queued after the last await
        (asyncio cannot shield a checkpoint from ``task.cancel()``)."""
        _check_payload(message)
        await anyio.lowlevel.checkpoint()
        if self.overflow is Overflow.WAIT:
            await self.wait_room()
        self.put_nowait(message)

    async def wait_room(self) -> None:
        """Return once a new message fits without the overflow policy (at once if it does);
        raises the closing error once the queue was closed."""
        while self.full:
            self._raise_if_closed()
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()

    def put_nowait(self, message: Payload) -> None:
        """Queue ``message`` without waiting; a full ``WAIT`` queue raises ``QueueFull`` too."""
        _check_payload(message)
        self._raise_if_closed()
        if self.full:
            if self.overflow is Overflow.DROP_OLDEST:
                if self._pinned >= len(self._entries):  # all queued ones are being written
                    self._report(message, "queue full (drop-oldest): newest dropped")
                    return
                victim = self._entries[self._pinned]
                del self._entries[self._pinned]
                self._report(victim.message, "queue full (drop-oldest)",
                             possibly_delivered=victim.maybe_sent)
            else:
                raise QueueFull(
                    f"outgoing queue full ({self.maxsize} messages, overflow={self.overflow.value})"
                )
        self._entries.append(Entry(next(self._numbers), message))
        self._notify()

    # -- the writer -----------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` whenever a message is queued; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self.unsubscribe(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (nothing happens if it is not subscribed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def begin(self) -> Entry | None:
        """Pin and return the next message to write, or None when there is none."""
        if self._pinned >= len(self._entries):
            return None
        self._pinned += 1
        return self._entries[self._pinned - 1]

    def begin_batch(self, max_count: int, max_bytes: int) -> list[Entry]:
        """Pin and return the next messages to write together: at most ``max_count``, and
        no more than ``max_bytes`` in all (but always at least one when any is queued)."""
        batch: list[Entry] = []
        total = 0
        while len(batch) < max_count and self._pinned < len(self._entries):
            entry = self._entries[self._pinned]
            if batch and total + len(entry.message) > max_bytes:
                break
            batch.append(entry)
            total += len(entry.message)
            self._pinned += 1
        return batch

    def unpin_last(self, count: int = 1) -> None:
        """The writer will not write the newest ``count`` pinned messages now after all:
        unpin them (they stay queued, next in line); those pinned before stay pinned."""
        if not 0 <= count <= self._pinned:
            raise ValueError(f"unpin_last({count}) with {self._pinned} pinned messages")
        self._pinned -= count

    def peek(self) -> Entry | None:
        """The next message to write, without pinning it."""
        return self._entries[self._pinned] if self._pinned < len(self._entries) else None

    def sent(self, entry: Entry) -> None:
        """``entry`` (the oldest pinned one) was handed to the socket: remove it."""
        if not self._entries or self._entries[0] is not entry or self._pinned < 1:
            raise ValueError("sent() must be called for the oldest message being written")
        del self._entries[0]
        self._pinned -= 1
        self._wake()

    def release(self, *, interrupted: bool = False) -> None:
        """The writer stopped (connection lost): unpin what it was writing; it stays queued.

        ``interrupted``: the write was abandoned half-way, so those messages, if never sent
        again, are reported as possibly delivered.
        """
        if interrupted:
            for index in range(self._pinned):
                self._entries[index].maybe_sent = True
        self._pinned = 0

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Put sent-but-unconfirmed entries back at the front, keeping their order (only
        while no writer is active)."""
        if self._pinned:
            raise ValueError("requeue() while messages are being written")
        for entry in sorted(entries, key=lambda e: e.number, reverse=True):
            self._entries.insert(0, entry)
        if self._entries:
            self._notify()

    # -- shutdown -------------------------------------------------------------------------

    async def wait_empty(self) -> None:
        """Return once every queued message was handed to a socket."""
        while self._entries:
            self._raise_if_closed()
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def close(self, error: PulseError, reason: str) -> list[Dropped]:
        """Refuse new messages with ``error``; report every queued one as dropped."""
        if self._closed is None:
            self._closed = error
        drops = [self._report(e.message, reason, possibly_delivered=e.maybe_sent)
                 for e in self._entries]
        self._entries.clear()
        self._pinned = 0
        self._wake()
        return drops

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed is not None

    def report(self, entries: Iterable[Entry], reason: str, *, possibly_delivered: bool) -> None:
        """Report entries that left the queue but were lost (e.g. unconfirmed at a crash)."""
        for entry in entries:
            self._report(entry.message, reason, possibly_delivered=possibly_delivered)

    # -- internals ------------------------------------------------------------------------

    def _report(self, message: Payload, reason: str, *, possibly_delivered: bool = False) -> Dropped:
        dropped = Dropped(message, reason, possibly_delivered, self.peer)
        self.dropped_count += 1
        if self.on_drop is not None:
            self.on_drop(dropped)
        return dropped

    def _wake(self) -> None:
        """Wake producers waiting for room and whoever waits for a change."""
        space, changed, self._space, self._changed = self._space, self._changed, None, None
        if space is not None:
            space.set()
        if changed is not None:
            changed.set()

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        for listener in list(self._listeners):
            listener()

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise self._closed


def _check_payload(message: object) -> None:
    if not isinstance(message, str | bytes):
        raise TypeError(f"a WebSocket message is str or bytes, got {type(message).__name__}")

