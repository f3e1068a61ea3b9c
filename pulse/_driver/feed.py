"""Bounded, never-blocking feeds of state-change events.

Producers (drivers) must never block on a slow consumer, so a feed keeps at most ``maxlen``
events, drops the oldest beyond that and counts what it dropped. :class:`EventFeed` is one
consumer's queue; :class:`EventHub` hands every event to any number of them and is what
``events()`` subscribes to on every client and connection (one rule across pulse).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import anyio

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
