"""Reconnect backoff: growing, capped, jittered on every attempt.

How the ceiling grows (``growth``):

* ``Growth.ATTEMPTS`` (the class default): attempt ``n`` (0-based) has the ceiling
  ``cap_n = min(maximum, initial * multiplier**n)`` (classic exponential backoff).
* ``Growth.OUTAGE``: the ceiling follows the age of the outage instead of the number of
  attempts, ``cap = min(maximum, max(initial, multiplier * elapsed))`` where ``elapsed`` is
  the seconds since the outage began (passed to :meth:`Backoff.next_delay`). A client never
  waits more than ``max(initial, multiplier * elapsed)`` once the peer is back, however many
  clients there are: with count-based ceilings the clients whose first draws happened to be
  short reach long ceilings early and come back last. Attempts still thin out like an
  exponential backoff's (the outage age grows by a random factor per attempt), so a long
  outage costs a number of attempts logarithmic in its length.

The jitter mode turns the ceiling into a delay (AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015):

* ``NONE``: ``cap_n`` (no jitter: every client retries in lockstep; for tests).
* ``FULL``: ``uniform(0, cap_n)`` (the default: the widest spread).
* ``EQUAL``: ``cap_n / 2 + uniform(0, cap_n / 2)`` (never shorter than half the ceiling).
* ``DECORRELATED``: ``min(maximum, uniform(initial, 3 * previous))``, ``previous`` starting
  at ``initial``; it grows with the delays actually drawn and ignores ``multiplier``.

Every attempt is jittered, not only the first: clients that failed together otherwise keep
retrying together (the reconnect storm the websockets library's first-delay-only jitter
allows).

Resetting follows the connection, not the attempt: the counter (and the decorrelated state)
goes back to zero only after a connection that stayed up at least ``reset_after`` seconds.
A peer that accepts and then drops connections at once keeps the client backing off instead
of being hammered at the initial delay.

The class is pure: no clock (``now`` is an argument) and no global randomness (pass a seeded
``random.Random`` for a reproducible sequence).
"""

from __future__ import annotations

import enum
import math
import random

from pulse._core._checks import check_count, check_non_negative, check_positive


class Growth(enum.Enum):
    """How the ceiling grows (see the module docstring)."""

    ATTEMPTS = "attempts"
    OUTAGE = "outage"


class Jitter(enum.Enum):
    """How a delay is drawn below an attempt's ceiling (see the module docstring)."""

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


class Backoff:
    """Delays between reconnect attempts.

    Call :meth:`next_delay` before each attempt (it returns None once ``max_attempts`` are
    used up), :meth:`connected` when an attempt succeeds and :meth:`disconnected` when that
    connection ends.
    """

    __slots__ = (
        "_attempts",
        "_connected_at",
        "_previous",
        "growth",
        "initial",
        "jitter",
        "max_attempts",
        "maximum",
        "multiplier",
        "reset_after",
        "rng",
    )

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 30.0,
        multiplier: float = 2.0,
        jitter: Jitter = Jitter.FULL,
        max_attempts: int | None = None,
        reset_after: float = 30.0,
        rng: random.Random | None = None,
        growth: Growth = Growth.ATTEMPTS,
    ) -> None:
        check_positive("initial", initial)
        check_positive("maximum", maximum)
        if maximum < initial:
            raise ValueError(f"maximum ({maximum!r}) must not be below initial ({initial!r})")
        check_positive("multiplier", multiplier)
        if multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {multiplier!r}")
        if not isinstance(jitter, Jitter):
            raise ValueError(f"jitter must be a Jitter, got {jitter!r}")
        if max_attempts is not None:
            check_count("max_attempts", max_attempts, 0)
        check_non_negative("reset_after", reset_after)
        if not isinstance(growth, Growth):
            raise ValueError(f"growth must be a Growth, got {growth!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise ValueError(f"rng must be a random.Random, got {rng!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.multiplier = float(multiplier)
        self.jitter = jitter
        self.growth = growth
        self.max_attempts = max_attempts
        self.reset_after = float(reset_after)
        self.rng = rng if rng is not None else random.Random()
        self._attempts = 0
        self._previous = self.initial
        self._connected_at: float | None = None

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempts

    @property
    def exhausted(self) -> bool:
        """True once ``max_attempts`` delays were handed out (``next_delay`` returns None)."""
        return self.max_attempts is not None and self._attempts >= self.max_attempts

    def ceiling(self, attempt: int) -> float:
        """``min(maximum, initial * multiplier**attempt)``, without overflow."""
        if attempt < 0:
            raise ValueError(f"attempt must not be negative, got {attempt!r}")
        if self.multiplier == 1:
            return self.initial
        # initial * m**n >= maximum once n >= log(maximum / initial) / log(m).
        if attempt >= math.log(self.maximum / self.initial) / math.log(self.multiplier):
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier**attempt)

    def outage_ceiling(self, elapsed: float) -> float:
        """``min(maximum, max(initial, multiplier * elapsed))`` (the ``OUTAGE`` ceiling)."""
        return min(self.maximum, max(self.initial, self.multiplier * max(0.0, elapsed)))

    def next_delay(self, elapsed: float = 0.0) -> float | None:
        """The delay before the next attempt, or None when no attempts are left.

        ``elapsed`` is the age of the outage in seconds (used by ``Growth.OUTAGE`` only)."""
        if self.exhausted:
            return None
        outage = self.growth is Growth.OUTAGE
        cap = self.outage_ceiling(elapsed) if outage else self.ceiling(self._attempts)
        jitter = self.jitter
        if jitter is Jitter.NONE:
            delay = cap
        elif jitter is Jitter.FULL:
            delay = self.rng.uniform(0.0, cap)
        elif jitter is Jitter.EQUAL:
            delay = cap / 2 + self.rng.uniform(0.0, cap / 2)
        else:
            delay = min(self.maximum, self.rng.uniform(self.initial, self._previous * 3))
            self._previous = delay
        self._attempts += 1
        return delay

    def connected(self, now: float) -> None:
        """An attempt succeeded at ``now``; the counter is kept until the link proves stable."""
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """The connection ended at ``now``: reset if it stayed up ``reset_after`` or longer."""
        since = self._connected_at
        self._connected_at = None
        if since is not None and now - since >= self.reset_after:
            self.reset()

    def reset(self) -> None:
        """Start over from the initial delay."""
        self._attempts = 0
        self._previous = self.initial
