"""Bounded, never-blocking feeds of state-change events.

Producers (drivers) must never block on a slow consumer, so a feed keeps at most ``maxlen``
events, drops the oldest beyond that and counts what it dropped. :class:`EventFeed` is one
consumer's queue; :class:`EventHub` hands every event to any number of them and is what
``events()`` subscribes to on every client and connection (one rule across pulse).

:class:`BoundedFeed` is the one buffer behind the session clients' iterators (watch events,
state changes, registry status): bounded in items and optionally in bytes, either dropping
the oldest or overflowing into :class:`~pulse.errors.QueueFull`.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

import anyio

from pulse.errors import QueueFull

T = TypeVar("T")


class EventFeed(Generic[T]):
    """Publish with :meth:`publish`; consume with ``async for event in feed``."""

    def __init__(self, maxlen: int = 256) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._maxlen = maxlen
        # Made on first use: most feeds (one per connection) never carry an event.
        self._items: deque[T] | None = None
        self._changed: anyio.Event | None = None  # made by a waiting consumer
        self._closed = False
        self.dropped = 0

    def publish(self, item: T) -> None:
        """Append an event (dropping the oldest when full); never blocks."""
        if self._closed:
            return
        items = self._items
        if items is None:
            items = self._items = deque(maxlen=self._maxlen)
        if len(items) == self._maxlen:
            self.dropped += 1
        items.append(item)
        if self._changed is not None:
            self._changed.set()

    def close(self) -> None:
        """No more events: iteration ends once the queued ones are consumed."""
        self._closed = True
        if self._changed is not None:
            self._changed.set()

    async def get(self) -> T:
        """The next event; raises ``anyio.EndOfStream`` once closed and drained."""
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            if self._changed is None or self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.get()
            except anyio.EndOfStream:
                return


class EventHub(Generic[T]):
    """Where a client or connection publishes its events; :meth:`subscribe` is its ``events()``.

    The one rule for ``events()`` across pulse: every call is a new, independent
    subscription (two readers each see every event) that follows the events from then on;
    the first subscription also receives what happened before it (the latest ``maxlen``),
    so a single reader that subscribes after ``async with`` misses nothing. A subscription
    never blocks the publisher: each keeps at most ``maxlen`` events and counts what it
    dropped. Subscriptions nobody holds any more are forgotten.
    """

    __slots__ = ("_backlog", "_closed", "_feeds", "_maxlen", "_subscribed")

    def __init__(self, maxlen: int = 256) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._maxlen = maxlen
        # Both made on first use: most hubs (one per connection) never see an event or a
        # subscriber, and an empty deque and weak set cost about 1.3 KiB between them.
        self._backlog: deque[T] | None = None  # events before the first subscription
        self._feeds: weakref.WeakSet[EventFeed[T]] | None = None
        self._subscribed = False
        self._closed = False

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscription (and to the backlog before the first one)."""
        if self._closed:
            return
        if not self._subscribed:
            if self._backlog is None:
                self._backlog = deque(maxlen=self._maxlen)
            self._backlog.append(item)
        elif self._feeds:
            for feed in list(self._feeds):
                feed.publish(item)

    def subscribe(self) -> EventFeed[T]:
        """A new subscription (see the class docstring)."""
        feed: EventFeed[T] = EventFeed(self._maxlen)
        if not self._subscribed:
            for item in self._backlog or ():
                feed.publish(item)
            self._backlog = None
            self._subscribed = True
        if self._closed:
            feed.close()
        else:
            if self._feeds is None:
                self._feeds = weakref.WeakSet()
            self._feeds.add(feed)
        return feed

    def close(self) -> None:
        """No more events: every subscription ends once its queued events are consumed."""
        self._closed = True
        for feed in list(self._feeds or ()):
            feed.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed


#: What one buffered presence event costs beside its id and data (the object, its strings'
#: headers): see :func:`presence_event_size`.
EVENT_OVERHEAD = 200


class _SizedEvent(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def data(self) -> bytes: ...


def presence_event_size(event: _SizedEvent) -> int:
    """What a buffered presence event costs, in bytes: its id, its data and
    :data:`EVENT_OVERHEAD` (the one counting of every watch buffer in pulse)."""
    return len(event.id.encode()) + len(event.data) + EVENT_OVERHEAD


class BoundedFeed(Generic[T]):
    """A queue of items for one consumer that the producer never waits on.

    Bounded to ``max_items`` items and, when given, to ``max_bytes`` (``size`` tells what an
    item costs). Past a bound, either the oldest items give way (``drop_oldest``; counted in
    :attr:`dropped`; an item larger than ``max_bytes`` on its own is dropped itself), or the
    feed *overflows*: it keeps what it holds, takes nothing more, and its reader gets
    :class:`~pulse.errors.QueueFull` naming the bound once the items it holds are consumed
    (and on every later read). :meth:`finish` ends the feed: the reader gets the items it
    holds, then the given exception (``StopAsyncIteration()`` for a plain end, or an error).
    ``what`` names the items in the overflow message ("more than 3 events were not
    consumed").
    """

    __slots__ = ("_changed", "_size", "bytes", "drop_oldest", "dropped", "end", "items",
                 "max_bytes", "max_items", "overflow", "what")

    def __init__(self, max_items: int, *, drop_oldest: bool, max_bytes: int | None = None,
                 size: Callable[[T], int] | None = None, what: str = "events") -> None:
        if max_items < 1 or (max_bytes is not None and (max_bytes < 1 or size is None)):
            raise ValueError("need max_items >= 1, and max_bytes >= 1 given with size")
        self.items: deque[T] = deque()
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.drop_oldest = drop_oldest
        self.what = what
        self._size = size if max_bytes is not None else None
        self.bytes = 0  # what the items held cost (counted only with max_bytes)
        self.dropped = 0  # items dropped to make room (drop_oldest)
        self.overflow: str | None = None  # why the feed stopped taking items
        self.end: BaseException | None = None  # set by finish()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        return len(self.items)

    def _cost(self, item: T) -> int:
        return self._size(item) if self._size is not None else 0

    def put(self, item: T) -> None:
        """Add ``item`` (or drop it, or overflow, as the bounds say); never blocks."""
        if self.end is not None or self.overflow is not None:
            return
        cost = self._cost(item)
        max_bytes = self.max_bytes
        if self.drop_oldest:
            if max_bytes is not None and cost > max_bytes:
                self.dropped += 1  # it would not fit even alone
                return
            while self.items and (len(self.items) >= self.max_items
                                  or (max_bytes is not None and self.bytes + cost > max_bytes)):
                self.bytes -= self._cost(self.items.popleft())
                self.dropped += 1
        elif len(self.items) >= self.max_items:
            self.overflow = f"more than {self.max_items} {self.what} were not consumed"
        elif max_bytes is not None and self.bytes + cost > max_bytes:
            self.overflow = f"more than {max_bytes} bytes of {self.what} were not consumed"
        if self.overflow is None:
            self.items.append(item)
            self.bytes += cost
        self._changed.set()

    def finish(self, end: BaseException) -> None:
        """No more items: once the held ones are consumed, the reader gets ``end``
        (``StopAsyncIteration()`` or an error). The first call decides."""
        if self.end is None:
            self.end = end
        self._changed.set()

    async def get(self) -> T:
        """The next item; raises QueueFull after an overflow, or the end once finished."""
        while True:
            if self.items:
                item = self.items.popleft()
                self.bytes -= self._cost(item)
                return item
            if self.overflow is not None:
                raise QueueFull(self.overflow)
            if self.end is not None:
                raise self.end
            await self._changed.wait()
            self._changed = anyio.Event()
