"""A presence session wrapper for election tests: counts what woke each candidacy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pulse.presence import PresenceEvent


class Counting:
    """Delegates to ``inner`` and records the non-initial watch events each of its watches
    yields (what woke the candidacy); ``key_watch`` False hides ``watch_key`` (a backend
    without per-key watches)."""

    def __init__(self, inner: Any, *, key_watch: bool = True) -> None:
        self.inner = inner
        self.key_watch = key_watch
        self.woken: list[PresenceEvent] = []

    def __getattr__(self, name: str) -> Any:
        if name == "watch_key":
            if not self.key_watch:
                raise AttributeError(name)
            return lambda key: self._count(self.inner.watch_key(key))
        return getattr(self.inner, name)

    def watch(self, prefix: str) -> AsyncIterator[PresenceEvent]:
        return self._count(self.inner.watch(prefix))

    async def _count(self, events: Any) -> AsyncIterator[PresenceEvent]:
        try:
            async for event in events:
                if not event.initial:
                    self.woken.append(event)
                yield event
        finally:
            await events.aclose()
