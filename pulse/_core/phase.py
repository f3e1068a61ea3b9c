"""How long a connection may spend in one phase: the timing rule behind every connect,
handshake and closing wait, written once.

A connection goes through phases that must end in bounded time whatever the peer does:
dialling (``CONNECT``), the opening handshake (``HANDSHAKE``), an exchange with a deadline
of its own (``EXCHANGE``, e.g. a gossip push-pull), and the goodbye (``CLOSE``). A
:class:`PhaseDeadline` is the pure machine for one such phase: it is started at ``now`` with
a timeout, follows the timer contract of every machine here (:meth:`~PhaseDeadline.
next_deadline`, :meth:`~PhaseDeadline.handle_timer`), and says once that the phase overran.
The driver decides what overrunning means for the resource (cancel the wait, close the
socket); the machine never sees a clock.
"""

from __future__ import annotations

import enum
import math

__all__ = ["Phase", "PhaseDeadline"]


class Phase(enum.Enum):
    """A bounded stage in a connection's life."""

    CONNECT = "connect"
    HANDSHAKE = "handshake"
    EXCHANGE = "exchange"
    CLOSE = "close"


class PhaseDeadline:
    """One phase that must end within ``timeout`` seconds of ``started`` (``math.inf``:
    unbounded). ``finish()`` when the phase ended in time; ``expired`` tells whether the
    timer saw it overrun first."""

    __slots__ = ("deadline", "expired", "finished", "phase", "timeout")

    def __init__(self, phase: Phase, started: float, timeout: float) -> None:
        if timeout < 0 or math.isnan(timeout):
            raise ValueError(f"a {phase.value} timeout must be >= 0, got {timeout!r}")
        self.phase = phase
        self.timeout = timeout
        self.deadline = started + timeout
        self.expired = False
        self.finished = False

    def next_deadline(self) -> float | None:
        """When the phase overruns, or None once it ended (or can never overrun)."""
        if self.expired or self.finished or math.isinf(self.deadline):
            return None
        return self.deadline

    def handle_timer(self, now: float) -> bool:
        """True exactly once: at the first call at or after the deadline of a phase still
        running."""
        if self.expired or self.finished or now < self.deadline:
            return False
        self.expired = True
        return True

    def finish(self) -> None:
        """The phase ended (in time, unless :attr:`expired` was already set)."""
        self.finished = True
