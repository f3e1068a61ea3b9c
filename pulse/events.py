"""Inputs to the pure core.

Every event carries the time it happened (``now``, seconds on any monotonic clock chosen by
the driver). The core's machines accept these objects through ``handle(event)`` and also
offer one method per event for direct calls; both paths run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Any bytes or frame arrived from the peer: proof that it is alive."""

    now: float


@dataclass(frozen=True, slots=True)
class DataSent:
    """Bytes were written to the peer (a complete write)."""

    now: float


@dataclass(frozen=True, slots=True)
class OutputProgress:
    """A pending write made progress without completing (Netty's ``observeOutput``)."""

    now: float


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered the heartbeat request ``seq``."""

    now: float
    seq: int


@dataclass(frozen=True, slots=True)
class Tick:
    """The driver woke up (normally at ``next_deadline()``)."""

    now: float


Event = DataReceived | DataSent | OutputProgress | PongReceived | Tick
