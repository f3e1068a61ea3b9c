"""A token bucket: how many requests a peer may make per second, with a burst.

Rules this module keeps:

* The bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second of
  ``now`` (time is an argument; a clock that steps back refills nothing).
* :meth:`TokenBucket.take` spends one token and says whether there was one. A request made
  without a token is refused; :attr:`TokenBucket.refused` counts refusals in a row (reset by
  the next request that finds a token), so a driver can tell a burst from a flood.
* ``rate`` 0 or less means no limit.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` requests per second on average, ``burst`` at once (at least 1)."""

    __slots__ = ("_last", "_tokens", "burst", "rate", "refused")

    def __init__(self, rate: float, now: float, *, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = self.burst
        self._last = now
        #: Requests refused in a row.
        self.refused = 0

    def take(self, now: float) -> bool:
        """Spend a token at ``now``; False (and one more refusal in a row) when there is none."""
        if self.rate <= 0:
            return True
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens < 1.0:
            self.refused += 1
            return False
        self._tokens -= 1.0
        self.refused = 0
        return True
