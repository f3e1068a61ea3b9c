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
        self._items: deque[T] = deque(maxlen=maxlen)
        self._changed = trio.Event()
        self._closed = False
        self.dropped = 0

    def publish(self, item: T) -> None:
        """Append an event (dropping the oldest when full); never blocks."""
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._changed.set()

    def close(self) -> None:
        """No more events: iteration ends once the queued ones are consumed."""
        self._closed = True
        self._changed.set()

    async def get(self) -> T:
        """The next event; raises ``trio.EndOfChannel`` once closed and drained."""
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            self._changed = trio.Event() if self._changed.is_set() else self._changed
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
