"""A bounded, never-blocking feed of state-change events for one consumer.

Producers (drivers) must never block on a slow consumer, so the feed keeps at most
``maxlen`` events, drops the oldest beyond that and counts what it dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class EventFeed(Generic[T]):
    """Publish with :meth:`publish`; consume with ``async for event in feed``."""

    def __init__(self, maxlen: int = 256) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._maxlen = maxlen
        # Made on first use: most feeds (one per connection) never carry an event.
        self._items: deque[T] | None = None
        self._changed: trio.Event | None = None  # made by a waiting consumer
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
        """The next event; raises ``trio.EndOfChannel`` once closed and drained."""
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            if self._changed is None or self._changed.is_set():
                self._changed = trio.Event()
            await self._changed.wait()
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.get()
            except trio.EndOfChannel:
                return
