"""Client-side watch bookkeeping: which paths this session watches, and who is waiting.

ZooKeeper watches are one-shot and kept per connection on the server; the client remembers
them so that (1) a notification wakes every local waiter for that path and kind, and
(2) after a reconnect, a setWatches request re-registers them on the new server. Which
kinds a notification fires follows ZooKeeper's client: created/data-changed fire data and
exist watches, children-changed fires child watches, deleted fires all three.

Pure bookkeeping: waiters are objects with ``fire(event)`` and ``lose(reason)`` methods;
the trio driver supplies them.
"""

from __future__ import annotations

import enum
from typing import Protocol

from .jute import WatcherEvent
from .protocol import EventType, SetWatches

#: Bytes of paths per setWatches request (ZooKeeper's client uses 128 KiB).
SET_WATCHES_BATCH = 128 * 1024


class WatchKind(enum.Enum):
    """The three kinds of one-shot watch ZooKeeper keeps."""

    DATA = "data"  # set by getData, or exists on a node that exists
    EXIST = "exist"  # set by exists on a node that does not exist
    CHILD = "child"  # set by getChildren


_FIRES: dict[int, tuple[WatchKind, ...]] = {
    EventType.NODE_CREATED: (WatchKind.DATA, WatchKind.EXIST),
    EventType.NODE_DATA_CHANGED: (WatchKind.DATA, WatchKind.EXIST),
    EventType.NODE_CHILDREN_CHANGED: (WatchKind.CHILD,),
    EventType.NODE_DELETED: (WatchKind.DATA, WatchKind.EXIST, WatchKind.CHILD),
}


class Waiter(Protocol):
    """Someone waiting for one watch to fire."""

    def fire(self, event: WatcherEvent) -> None:
        """The watch fired with ``event``."""

    def lose(self, reason: str) -> None:
        """The watch can no longer fire (session expired or closed)."""


class WatchTable:
    """Paths watched by this session, per kind, with their waiters."""

    def __init__(self) -> None:
        self._table: dict[WatchKind, dict[str, set[Waiter]]] = {kind: {} for kind in WatchKind}

    def __len__(self) -> int:
        return sum(len(paths) for paths in self._table.values())

    def add(self, kind: WatchKind, path: str, waiter: Waiter) -> None:
        """Remember that ``waiter`` waits on a ``kind`` watch of ``path``."""
        self._table[kind].setdefault(path, set()).add(waiter)

    def discard(self, waiter: Waiter) -> None:
        """Forget ``waiter`` everywhere (its consumer went away); empty paths are dropped."""
        for paths in self._table.values():
            for path in [p for p, waiters in paths.items() if waiter in waiters]:
                paths[path].discard(waiter)
                if not paths[path]:
                    del paths[path]

    def fire(self, event: WatcherEvent) -> int:
        """Deliver a notification; returns how many waiters it woke (one-shot: removed)."""
        woken = 0
        for kind in _FIRES.get(event.type, ()):
            for waiter in self._table[kind].pop(event.path, set()):
                waiter.fire(event)
                woken += 1
        return woken

    def lose_all(self, reason: str) -> None:
        """The session is gone: every watch is lost; tell each waiter once."""
        waiters: set[Waiter] = set()
        for paths in self._table.values():
            for path_waiters in paths.values():
                waiters |= path_waiters
            paths.clear()
        for waiter in waiters:
            waiter.lose(reason)

    def set_watches(
        self, relative_zxid: int, batch_bytes: int = SET_WATCHES_BATCH
    ) -> list[SetWatches]:
        """Requests that re-register every watch on a new connection (empty if none).

        Paths are split into batches of about ``batch_bytes`` so that no request exceeds the
        server's frame limit, as ZooKeeper's own client does.
        """
        batches: list[SetWatches] = []
        current: dict[WatchKind, list[str]] = {kind: [] for kind in WatchKind}
        size = 0
        for kind in WatchKind:
            for path in sorted(self._table[kind]):
                cost = len(path.encode("utf-8")) + 4
                if size and size + cost > batch_bytes:
                    batches.append(_batch(relative_zxid, current))
                    current = {k: [] for k in WatchKind}
                    size = 0
                current[kind].append(path)
                size += cost
        if size:
            batches.append(_batch(relative_zxid, current))
        return batches


def _batch(relative_zxid: int, paths: dict[WatchKind, list[str]]) -> SetWatches:
    return SetWatches(
        relative_zxid,
        data_watches=paths[WatchKind.DATA],
        exist_watches=paths[WatchKind.EXIST],
        child_watches=paths[WatchKind.CHILD],
    )
