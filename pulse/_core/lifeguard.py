"""Lifeguard's pieces and SWIM's scaling rules, as small pure functions and objects.

Lifeguard (Dadgar, Phillips, Currey, arXiv 1707.00788) adds three things to SWIM, and
HashiCorp memberlist ships them; this module keeps the numbers memberlist uses:

* **Local health awareness.** A score in ``[0, max - 1]``: a probe that ends without an ack
  (or with fewer nacks than expected) raises it, having to refute a suspicion about ourselves
  raises it, a probe answered in time lowers it. The probe interval (memberlist) and, by
  default, the probe timeout (the paper) are multiplied by ``score + 1``, so a member that is
  itself slow probes less often and waits longer for the acks it reads late.
* **Dynamic suspicion timeout.** A suspicion starts at ``max`` and falls towards ``min`` as
  independent members confirm it: with ``n`` of the ``k`` wanted confirmations the timeout is
  ``max - log(n + 1) / log(k + 1) * (max - min)`` (never below ``min``), measured from the
  start of the suspicion.
* **Buddy system.** Lives in the machine: a ping to a suspect member carries the suspicion.

Scaling with cluster size ``N`` (memberlist's ``util.go``): ``min = mult * max(1, log10(N)) *
probe_interval``; gossip retransmit limit ``mult * ceil(log10(N + 1))``; the push-pull interval
grows by one step per doubling beyond 32 members.
"""

from __future__ import annotations

import math


def suspicion_min_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """The shortest suspicion timeout for a cluster of ``n`` members (memberlist's formula)."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    # memberlist keeps three decimals of the scale (it multiplies by 1000 in integer time).
    return suspicion_mult * math.floor(node_scale * 1000) / 1000 * probe_interval


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one gossip message is sent: ``mult * ceil(log10(n + 1))``."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_interval(interval: float, n: int, threshold: int = 32) -> float:
    """The push-pull period, stretched by one interval per doubling of ``n`` beyond 32."""
    if n <= threshold:
        return interval
    return (math.ceil(math.log2(n) - math.log2(threshold)) + 1.0) * interval


def remaining_suspicion_time(n: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """Time left on a suspicion with ``n`` of ``k`` confirmations after ``elapsed`` seconds.

    Negative when the suspicion is overdue. Rounded down to milliseconds like memberlist.
    """
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = hi - frac * (hi - lo)
    timeout = max(lo, math.floor(1000.0 * raw) / 1000.0)
    return timeout - elapsed


class Awareness:
    """The local health score (0 is healthy) and the timeouts it stretches."""

    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        if isinstance(max_multiplier, bool) or not isinstance(max_multiplier, int) or max_multiplier < 1:
            raise ValueError(f"awareness max multiplier must be an integer >= 1, got {max_multiplier!r}")
        self._max = max_multiplier
        self.score = 0

    @property
    def max_score(self) -> int:
        """The highest score the awareness can reach (``max_multiplier - 1``)."""
        return self._max - 1

    def apply_delta(self, delta: int) -> int:
        """Add ``delta`` to the score, kept in ``[0, max_multiplier - 1]``; return the score."""
        self.score = min(max(self.score + delta, 0), self._max - 1)
        return self.score

    def scale(self, timeout: float) -> float:
        """``timeout * (score + 1)``."""
        return timeout * (self.score + 1)


class Suspicion:
    """One suspicion timer: starts at ``hi``, falls towards ``lo`` with confirmations.

    ``from_node`` (the first accuser) never counts as a confirmation, nor does anyone twice;
    confirmations beyond ``k`` are ignored. With ``k < 1`` the timeout is ``lo`` from the start.
    """

    __slots__ = ("_confirmed", "hi", "k", "lo", "n", "start")

    def __init__(self, from_node: str, k: int, lo: float, hi: float, start: float) -> None:
        self.k = k
        self.lo = lo
        self.hi = hi
        self.n = 0
        self.start = start
        self._confirmed: set[str] = {from_node}

    @property
    def confirmed_by(self) -> tuple[str, ...]:
        """Every member that accused (the first accuser included), sorted."""
        return tuple(sorted(self._confirmed))

    def deadline(self) -> float:
        """When the suspicion turns into a failure, given the confirmations so far."""
        if self.k < 1:
            return self.start + self.lo
        return self.start + remaining_suspicion_time(self.n, self.k, 0.0, self.lo, self.hi)

    def confirm(self, from_node: str) -> bool:
        """Count ``from_node``'s confirmation; True when it was new and still useful."""
        if self.n >= self.k or from_node in self._confirmed:
            return False
        self._confirmed.add(from_node)
        self.n += 1
        return True
