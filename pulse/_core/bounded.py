"""A FIFO with an explicit limit that refuses to grow past it.

``collections.deque(maxlen=n)`` silently drops the oldest item; ``deque()`` grows without
bound. :class:`BoundedDeque` is a deque whose limit (in items) is given at construction and
whose appends raise :class:`~pulse.errors.QueueFull` past it, so every queue states its bound
where it is created and an owner that overshoots learns it at once instead of growing.

Owners that bound their queues in bytes keep counting bytes themselves (each with its own
documented limit and close reason) and size the item limit so that it is never reached
while their own checks hold: the item limit is the last line, not the policy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from pulse.errors import QueueFull

_T = TypeVar("_T")


class BoundedDeque(deque[_T]):
    """A deque of at most ``limit`` items; ``append``/``extend`` past it raise ``QueueFull``.

    Everything else (``popleft``, iteration, indexing, ``len``, ``clear``) is the deque's
    (copying and pickling are not supported).
    ``what`` names the queue in the error message.
    """

    __slots__ = ("limit", "what")

    def __init__(self, limit: int, what: str = "queue") -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        super().__init__()
        self.limit = limit
        self.what = what

    def append(self, item: _T, /) -> None:
        """Add ``item`` at the right end; raise ``QueueFull`` if the queue is at its limit."""
        if len(self) >= self.limit:
            raise QueueFull(f"{self.what} holds its maximum of {self.limit} items")
        super().append(item)

    def appendleft(self, item: _T, /) -> None:
        """Add ``item`` at the left end; raise ``QueueFull`` if the queue is at its limit."""
        if len(self) >= self.limit:
            raise QueueFull(f"{self.what} holds its maximum of {self.limit} items")
        super().appendleft(item)

    def extend(self, items: Iterable[_T], /) -> None:
        """Append each of ``items``; raise ``QueueFull`` (adding none) if they do not all fit."""
        items = list(items)
        if len(self) + len(items) > self.limit:
            raise QueueFull(f"{self.what} holds at most {self.limit} items; "
                            f"{len(items)} more do not fit beside {len(self)}")
        super().extend(items)

    def extendleft(self, items: Iterable[_T], /) -> None:
        """Like :meth:`extend`, at the left end (reversed, as ``deque.extendleft``)."""
        items = list(items)
        if len(self) + len(items) > self.limit:
            raise QueueFull(f"{self.what} holds at most {self.limit} items; "
                            f"{len(items)} more do not fit beside {len(self)}")
        super().extendleft(items)

    def insert(self, index: int, item: _T, /) -> None:
        """Insert ``item`` before ``index``; raise ``QueueFull`` if the queue is at its limit."""
        if len(self) >= self.limit:
            raise QueueFull(f"{self.what} holds its maximum of {self.limit} items")
        super().insert(index, item)

    def __iadd__(self, items: Iterable[_T]) -> BoundedDeque[_T]:
        self.extend(items)
        return self
