"""The unconfirmed window of one connection: messages written to the peer that no heartbeat
answer has confirmed yet, and when to ask for a confirmation.

Rules this machine keeps:

* **A pong confirms what was written before its ping.** TCP keeps order and a peer answers a
  ping only after reading everything that came before it, so the pong to a ping written
  after message *n* proves the peer's heartbeat layer read messages up to *n*. Every ping
  counts, heartbeats as well as confirmation pings: the driver reports each ping it writes
  (:meth:`ConfirmWindow.ping_written`) and each pong it reads (:meth:`ConfirmWindow.pong`).
* **Confirmation pings are few.** While messages are unconfirmed, one confirmation ping may
  be in flight, at most one per ``spacing`` seconds (a chatty application must not trip the
  peer's ping-rate limit). One that is not answered within ``retry_after`` (or that the
  driver could not write) no longer holds the next one back.
  :meth:`ConfirmWindow.next_deadline` is when the next one is due and
  :meth:`ConfirmWindow.handle_timer` returns :class:`RequestConfirmation` then.
* **Bounded.** At most ``limit`` messages are tracked. With ``keep_all`` False
  (at-most-once) the oldest beyond the bound is presumed delivered and forgotten; with
  ``keep_all`` True (at-least-once) the writer must wait while :attr:`ConfirmWindow.full`.
* Time is an argument (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Ping markers remembered (a newer marker confirms at least as much as an older one).
MAX_MARKERS = 64


@dataclass(frozen=True, slots=True)
class RequestConfirmation:
    """Write a confirmation ping now (and report it with ``ping_written(..., True)``)."""


class ConfirmWindow(Generic[T]):
    """Messages written and not yet confirmed, oldest first."""

    def __init__(self, limit: int, *, spacing: float, retry_after: float,
                 keep_all: bool) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        if not spacing > 0 or not retry_after > 0:
            raise ValueError(f"spacing and retry_after must be positive, got {spacing!r}, "
                             f"{retry_after!r}")
        self.limit = limit
        self.spacing = spacing
        self.retry_after = retry_after
        self.keep_all = keep_all
        self._entries: deque[tuple[int, T]] = deque()  # (write number, message)
        self._written = 0
        self._markers: deque[tuple[int, int]] = deque()  # (ping seq, writes before it)
        self._requested = False  # a confirmation was asked for and not answered yet
        self._in_flight: int | None = None  # its ping's seq, once written
        self._last_request = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """True when ``limit`` messages are unconfirmed (at-least-once writers wait)."""
        return len(self._entries) >= self.limit

    def unconfirmed(self) -> list[T]:
        """The unconfirmed messages, oldest first."""
        return [message for _, message in self._entries]

    # -- inputs ---------------------------------------------------------------------------

    def written(self, message: T, now: float) -> list[RequestConfirmation]:
        """``message`` was handed to the socket whole."""
        self._written += 1
        self._entries.append((self._written, message))
        if not self.keep_all and len(self._entries) > self.limit:
            self._entries.popleft()  # presumed delivered: the window never stalls
        return self.handle_timer(now)

    def ping_written(self, seq: int, now: float, confirmation: bool = False) -> None:
        """Ping ``seq`` was written after every message reported so far."""
        self._markers.append((seq, self._written))
        while len(self._markers) > MAX_MARKERS:
            self._markers.popleft()
        if confirmation:
            self._in_flight = seq

    def pong(self, seq: int, now: float) -> list[RequestConfirmation]:
        """The peer answered ping ``seq``: what was written before it is confirmed."""
        confirmed = None
        markers = self._markers
        while markers and markers[0][0] <= seq:
            confirmed = markers.popleft()[1]
        if confirmed is not None:
            entries = self._entries
            while entries and entries[0][0] <= confirmed:
                entries.popleft()
        if self._in_flight is not None and seq >= self._in_flight:
            self._in_flight = None
            self._requested = False
        return self.handle_timer(now)

    def take(self) -> list[T]:
        """Remove and return every unconfirmed message (the connection ended)."""
        taken = self.unconfirmed()
        self._entries.clear()
        self._markers.clear()
        self._in_flight = None
        self._requested = False
        return taken

    # -- the timer ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When a confirmation ping is due (None while nothing needs confirming)."""
        if not self._entries:
            return None
        due = self._last_request + self.spacing
        if self._requested:
            due = max(due, self._last_request + self.retry_after)
        return due

    def handle_timer(self, now: float) -> list[RequestConfirmation]:
        """A confirmation ping, if one is due at ``now``."""
        due = self.next_deadline()
        if due is None or now < due:
            return []
        self._requested = True
        self._in_flight = None
        self._last_request = now
        return [RequestConfirmation()]
