"""Outputs of the pure core: what a driver must do next.

The core never performs I/O. Each event it consumes returns a list of these actions; a
driver carries them out (send bytes, close a socket, sleep, log) through a dispatch table.
All actions are immutable value objects, so tests compare them with ``==``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a heartbeat request carrying ``seq``; ``now`` is the send time to echo back."""

    seq: int
    now: float


@dataclass(frozen=True, slots=True)
class PeerSuspect:
    """The peer missed ``missed`` heartbeats in a row; it is not declared dead yet."""

    missed: int
    silent_for: float


@dataclass(frozen=True, slots=True)
class PeerAlive:
    """A suspect peer was heard from again; ``after`` is how long it had been silent."""

    after: float


@dataclass(frozen=True, slots=True)
class PeerDead:
    """The failure detector declared the peer dead; ``reason`` explains on what evidence."""

    reason: str
    missed: int
    silent_for: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection for ``reason`` (always follows a :class:`PeerDead`)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LocalPause:
    """The driver woke ``late_by`` seconds after its deadline (a stalled loop or stopped
    process); verdicts are withheld until fresh evidence arrives."""

    late_by: float


class IdleKind(enum.Enum):
    """Which direction of a connection has been idle (Netty ``IdleState`` semantics)."""

    READER = "reader"
    WRITER = "writer"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing was read / written / either for the configured idle time.

    ``first`` is True for the first event of an idle stretch and False for the repeats that
    follow every further idle period while the connection stays idle.
    """

    kind: IdleKind
    first: bool


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Connect again after ``delay`` seconds; ``attempt`` counts from 1."""

    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Expire:
    """The session ``session_id`` ran out of lease and must be removed."""

    session_id: int


Action = SendPing | PeerSuspect | PeerAlive | PeerDead | Close | LocalPause | Idle | Reconnect | Expire


@dataclass(frozen=True, slots=True)
class PathUp:
    """One path to a redundant peer carries heartbeats (again): ``path`` names it (its URL);
    ``after`` is how long it had been down, or since the watch began when ``first``."""

    path: str
    after: float
    first: bool


@dataclass(frozen=True, slots=True)
class PathDown:
    """One path to a redundant peer went silent for ``silent_for`` seconds or lost its
    connection (``reason`` says which). A warning, not a failover: the peer stays alive
    while another path is up (:class:`PeerDead` comes only when every path is down)."""

    path: str
    reason: str
    silent_for: float


PathAction = PathUp | PathDown | PeerAlive | PeerDead | LocalPause
"""What a redundant peer reports: per-path changes and the peer's own verdict."""
