"""Failure detectors behind one small interface.

A detector is told when evidence of life arrives (``heartbeat(now)``) and answers, for any
later ``now``, how suspicious the silence is, whether the peer is dead, and the earliest time
it would declare the peer dead if nothing else arrives (``dead_at()``), which a driver uses
to sleep exactly that long.

This module holds the interface and the two simplest detectors; ``phi`` and ``adaptive``
hold the statistical ones.

Every detector keeps one rule: ``is_dead(now)`` is exactly ``now >= dead_at()`` (up to the
last bit of a float for the statistical ones), so a driver that sleeps until ``dead_at()``
and then asks ``is_dead`` always gets True, and never gets True a moment earlier.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable


@runtime_checkable
class FailureDetector(Protocol):
    """What the liveness machine needs from a failure detector."""

    def heartbeat(self, now: float) -> None:
        """Evidence of life (any frame or byte from the peer) arrived at ``now``."""

    def suspicion(self, now: float) -> float:
        """A detector-specific suspicion level at ``now`` (phi for phi accrual)."""

    def is_dead(self, now: float) -> bool:
        """True when the silence up to ``now`` is enough to declare the peer dead."""

    def dead_at(self) -> float | None:
        """The earliest time the peer would be declared dead if nothing arrives, or None."""

    def explain(self, now: float) -> str:
        """One line saying why the peer is (or would be) declared dead at ``now``."""


_JUST_BELOW_ONE = math.nextafter(1.0, 0.0)


class FixedTimeout:
    """Dead when nothing has arrived for ``timeout`` seconds."""

    __slots__ = ("_last", "timeout")

    def __init__(self, timeout: float) -> None:
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be a positive finite number, got {timeout!r}")
        self.timeout = float(timeout)
        self._last: float | None = None

    def heartbeat(self, now: float) -> None:
        """Record an arrival."""
        self._last = now if self._last is None else max(self._last, now)

    def silent_for(self, now: float) -> float:
        """Seconds since the last arrival (0 before the first)."""
        return 0.0 if self._last is None else max(0.0, now - self._last)

    def suspicion(self, now: float) -> float:
        """Fraction of the timeout already used up (>= 1.0 exactly when dead)."""
        ratio = self.silent_for(now) / self.timeout
        # Keep the ">= 1.0 means dead" promise even where float rounding of the ratio and
        # of ``last + timeout`` disagree in the last bit.
        if self.is_dead(now):
            return max(ratio, 1.0)
        return min(ratio, _JUST_BELOW_ONE)

    def is_dead(self, now: float) -> bool:
        """True once the silence reaches the timeout (``now >= dead_at()``)."""
        deadline = self.dead_at()
        return deadline is not None and now >= deadline

    def dead_at(self) -> float | None:
        """Last arrival plus the timeout."""
        return None if self._last is None else self._last + self.timeout

    def explain(self, now: float) -> str:
        """Say how long the peer has been silent against the timeout."""
        return f"no data for {self.silent_for(now):.3f}s (timeout {self.timeout:g}s)"


class MissedBeats:
    """Dead after ``max_missed`` expected heartbeats, ``interval`` apart, failed to arrive.

    A beat is missed each time a full ``interval`` passes with no arrival, so the peer is
    declared dead ``interval x max_missed`` after the last arrival (AMQP uses 2 missed).
    """

    __slots__ = ("_last", "interval", "max_missed")

    def __init__(self, interval: float, max_missed: int = 3) -> None:
        if not interval > 0 or math.isinf(interval):
            raise ValueError(f"interval must be a positive finite number, got {interval!r}")
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 1:
            raise ValueError(f"max_missed must be an integer of at least 1, got {max_missed!r}")
        self.interval = float(interval)
        self.max_missed = int(max_missed)
        self._last: float | None = None

    def heartbeat(self, now: float) -> None:
        """Record an arrival."""
        self._last = now if self._last is None else max(self._last, now)

    def missed(self, now: float) -> int:
        """Whole intervals elapsed since the last arrival (``>= max_missed`` exactly when dead)."""
        if self._last is None or now <= self._last:
            return 0
        count = int((now - self._last) // self.interval)
        # Float division and ``last + interval * max_missed`` may round differently; the
        # deadline is authoritative so that ``missed`` and ``is_dead`` never disagree.
        if self.is_dead(now):
            return max(count, self.max_missed)
        return min(count, self.max_missed - 1)

    def suspicion(self, now: float) -> float:
        """Number of beats missed so far."""
        return float(self.missed(now))

    def is_dead(self, now: float) -> bool:
        """True once ``max_missed`` beats were missed."""
        deadline = self.dead_at()
        return deadline is not None and now >= deadline

    def dead_at(self) -> float | None:
        """Last arrival plus ``max_missed`` intervals."""
        return None if self._last is None else self._last + self.interval * self.max_missed

    def explain(self, now: float) -> str:
        """Say how many beats were missed."""
        return (
            f"missed {self.missed(now)} heartbeats of {self.interval:g}s "
            f"(limit {self.max_missed})"
        )
