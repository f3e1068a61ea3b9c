"""The phi accrual failure detector (Hayashibara et al., 2004), as Akka implements it.

Instead of a yes/no timeout, the detector outputs a suspicion level ``phi`` that grows with
the silence since the last heartbeat, scaled by how regular the heartbeats have been:

    phi(now) = -log10(1 - F(now - last))

where ``F`` is the normal CDF of the inter-arrival times seen so far (mean ``mu``, standard
deviation ``sigma``, both over a bounded window), shifted by an acceptable pause:
``mu' = mu + acceptable_heartbeat_pause`` and ``sigma' = max(sigma, min_std_deviation)``.
phi = 1 means a 10 % chance that a heartbeat is still coming, phi = 8 one in 10^8.

``F`` is Akka's logistic approximation of the normal CDF:

    y = (t - mu') / sigma'
    F(t) = 1 / (1 + exp(-y * (1.5976 + 0.070566 * y**2)))

so ``phi = log10(1 + exp(g))`` with ``g = y * (1.5976 + 0.070566 * y**2)``. This module
evaluates that form (a softplus), which neither overflows nor takes ``log(0)`` however long
the silence; phi is capped at :data:`MAX_PHI`.

Rules kept here, as in Akka:

* Before the first heartbeat phi is 0 (a peer never heard from is not suspected).
* The first heartbeat seeds the window with two samples ``estimate -+ estimate/4`` (mean
  ``estimate``, standard deviation ``estimate/4``), so phi is meaningful at once.
* A heartbeat that arrives after the peer was already declared dead moves the clock but does
  not enter the window: that one long gap says nothing about the normal rhythm.

One rule added for pulse: ``min_interval`` floors recorded gaps (see
:class:`~pulse._core.stats.ArrivalWindow`). Under a ping-when-idle policy, data arriving
faster than the heartbeat interval is not a faster heartbeat; without the floor a busy link
would teach the detector a tiny mean and it would declare a peer dead moments after the
traffic stops. The first-heartbeat estimate is raised to ``min_interval`` for the same reason.
"""

from __future__ import annotations

import math

from pulse._core._checks import check_count, check_non_negative, check_positive
from pulse._core.policy import HeartbeatPolicy
from pulse._core.stats import ArrivalWindow

#: Coefficients of Akka's logistic approximation of the normal CDF.
LOGISTIC_A = 1.5976
LOGISTIC_B = 0.070566

#: phi is capped here: large enough for any sane threshold, finite so it compares and prints.
MAX_PHI = 1e300

_LN10 = math.log(10.0)


def _softplus(g: float) -> float:
    """``log(1 + exp(g))`` without overflow for large ``g`` or underflow loss for small."""
    if g > 0:
        return g + math.log1p(math.exp(-g))
    return math.log1p(math.exp(g))


def _logistic_exponent(y: float) -> float:
    return y * (LOGISTIC_A + LOGISTIC_B * y * y)


def phi_value(elapsed: float, mean: float, std: float) -> float:
    """phi after ``elapsed`` seconds of silence for gaps of ``mean`` and ``std`` (std > 0).

    ``mean`` already includes any acceptable pause. Equal to Akka's
    ``-log10(1 - 1 / (1 + exp(-g)))`` with ``g = y(1.5976 + 0.070566 y^2)`` and
    ``y = (elapsed - mean) / std``, evaluated without overflow; capped at :data:`MAX_PHI`.
    """
    y = (elapsed - mean) / std
    g = _logistic_exponent(y)
    if math.isnan(g):
        # Only reachable from NaN input or inf - inf; a silence of NaN seconds is no evidence.
        return 0.0
    return min(_softplus(g) / _LN10, MAX_PHI)


def _exponent_for_phi(threshold: float) -> float:
    """The ``g`` at which phi equals ``threshold``: ``log(10**threshold - 1)``, stably."""
    return threshold * _LN10 + math.log1p(-math.pow(10.0, -threshold))


def _solve_logistic_cubic(g: float) -> float:
    """The one real ``y`` with ``y * (A + B y^2) = g`` (Cardano; the cubic is increasing)."""
    if g == 0:
        return 0.0
    # y^3 + p y + q = 0 with p = A/B > 0, q = -|g|/B; solve for |g|, the function is odd.
    p = LOGISTIC_A / LOGISTIC_B
    half_q = abs(g) / LOGISTIC_B / 2
    u = math.cbrt(half_q + math.sqrt(half_q * half_q + (p / 3) ** 3))
    y = u - p / (3 * u)  # the second Cardano term is -p/(3u), computed without cancellation
    return math.copysign(y, g)


class PhiAccrualFailureDetector:
    """Phi accrual failure detector; dead when ``phi >= threshold``.

    Parameters (seconds), with Akka's defaults:

    * ``threshold`` (8.0): phi at which the peer is declared dead.
    * ``max_sample_size`` (1000): inter-arrival gaps kept in the window.
    * ``min_std_deviation`` (0.1): floor for the standard deviation, so perfectly regular
      heartbeats do not make the detector hair-triggered.
    * ``acceptable_heartbeat_pause`` (3.0): extra silence tolerated on top of the mean gap
      (garbage-collection pauses, a lost heartbeat).
    * ``first_heartbeat_estimate`` (1.0): assumed mean gap before any gap is measured.
    * ``min_interval`` (0.0): floor for recorded gaps; set it to the heartbeat interval under
      a ping-when-idle policy (see the module docstring).

    With regular 1 s heartbeats and the defaults, phi reaches 8 about 4.52 s after the last
    one (1 s mean + 3 s pause + 5.23 x 0.1 s).
    """

    __slots__ = (
        "_dead_at",
        "_window",
        "acceptable_heartbeat_pause",
        "first_heartbeat_estimate",
        "max_sample_size",
        "min_interval",
        "min_std_deviation",
        "threshold",
    )

    def __init__(
        self,
        threshold: float = 8.0,
        max_sample_size: int = 1000,
        min_std_deviation: float = 0.1,
        acceptable_heartbeat_pause: float = 3.0,
        first_heartbeat_estimate: float = 1.0,
        min_interval: float = 0.0,
    ) -> None:
        check_positive("threshold", threshold)
        if threshold >= MAX_PHI:
            raise ValueError(f"threshold must be below {MAX_PHI:g}, got {threshold!r}")
        # The first heartbeat seeds two samples; a window of one would drop one at once.
        check_count("max_sample_size", max_sample_size, 2)
        check_positive("min_std_deviation", min_std_deviation)
        check_non_negative("acceptable_heartbeat_pause", acceptable_heartbeat_pause)
        check_positive("first_heartbeat_estimate", first_heartbeat_estimate)
        check_non_negative("min_interval", min_interval)
        self.threshold = float(threshold)
        self.max_sample_size = max_sample_size
        self.min_std_deviation = float(min_std_deviation)
        self.acceptable_heartbeat_pause = float(acceptable_heartbeat_pause)
        self.first_heartbeat_estimate = float(first_heartbeat_estimate)
        self.min_interval = float(min_interval)
        self._window = ArrivalWindow(max_sample_size, min_sample=self.min_interval)
        self._dead_at: float | None = None

    @classmethod
    def for_policy(
        cls, policy: HeartbeatPolicy, threshold: float = 8.0
    ) -> PhiAccrualFailureDetector:
        """A detector tuned for pulse's ping-when-idle ``policy``.

        Gaps are floored at ``policy.interval``, the first estimate is the interval, and the
        acceptable pause is ``timeout - interval``. For ``HeartbeatPolicy(10, 30)`` and beats
        exactly 10 s apart the peer is declared dead 43.1 s after the first heartbeat (the
        seed has std 2.5 s), 35.3 s after 10 gaps, and ``timeout + 0.52`` s once the seed
        has left the window; irregular heartbeats keep it later.
        """
        if not policy.enabled:
            raise ValueError("heartbeats are disabled in this policy; there is nothing to detect")
        return cls(
            threshold=threshold,
            acceptable_heartbeat_pause=policy.dead_after - policy.interval,
            first_heartbeat_estimate=policy.interval,
            min_interval=policy.interval,
        )

    # -- what the window says -------------------------------------------------------------

    @property
    def last_heartbeat(self) -> float | None:
        """Time of the most recent heartbeat, or None before the first."""
        return self._window.last_arrival

    @property
    def sample_count(self) -> int:
        """Number of gaps in the window (2 right after the first heartbeat: the seed)."""
        return len(self._window)

    def mean(self) -> float:
        """Mean gap of the window, without the acceptable pause (0.0 before any heartbeat)."""
        return self._window.mean()

    def std_deviation(self) -> float:
        """Standard deviation used by phi: the window's, floored at ``min_std_deviation``."""
        return max(self._window.std(), self.min_std_deviation)

    # -- the FailureDetector protocol -----------------------------------------------------

    def heartbeat(self, now: float) -> None:
        """Record a heartbeat (any evidence of life) at ``now``."""
        if math.isnan(now):
            raise ValueError("heartbeat time must not be NaN")
        if self._window.last_arrival is None:
            estimate = max(self.first_heartbeat_estimate, self.min_interval)
            self._window.add_sample(estimate - estimate / 4)
            self._window.add_sample(estimate + estimate / 4)
            self._window.arrival(now)
        else:
            # As Akka: the gap that ends a period the peer was considered dead is not
            # recorded, or one outage would inflate the mean for the next 1000 heartbeats.
            self._window.arrival(now, record_gap=not self.is_dead(now))
        self._dead_at = None

    def phi(self, now: float) -> float:
        """The suspicion level at ``now`` (0.0 before the first heartbeat)."""
        last = self._window.last_arrival
        if last is None:
            return 0.0
        return phi_value(now - last, self._shifted_mean(), self.std_deviation())

    def suspicion(self, now: float) -> float:
        """phi at ``now``."""
        return self.phi(now)

    def is_dead(self, now: float) -> bool:
        """True when phi at ``now`` has reached ``threshold``."""
        return self.phi(now) >= self.threshold

    def dead_at(self) -> float | None:
        """The earliest time phi reaches ``threshold`` if no heartbeat arrives; None before any.

        Solved in closed form from the logistic approximation, then refined by bisection to
        the exact float at which :meth:`is_dead` turns True. Cached until the next heartbeat.
        """
        last = self._window.last_arrival
        if last is None:
            return None
        if self._dead_at is None:
            mean, std = self._shifted_mean(), self.std_deviation()
            y = _solve_logistic_cubic(_exponent_for_phi(self.threshold))
            self._dead_at = self._first_dead_time(last + mean + y * std, last, mean, std)
        return self._dead_at

    def explain(self, now: float) -> str:
        """Say how long the peer has been silent and what phi that gives."""
        last = self._window.last_arrival
        if last is None:
            return "no heartbeat yet (phi 0)"
        return (
            f"phi {self.phi(now):.2f} (threshold {self.threshold:g}) after "
            f"{max(0.0, now - last):.3f}s of silence; heartbeats every "
            f"{self._window.mean():.3f}s +- {self.std_deviation():.3f}s, "
            f"acceptable pause {self.acceptable_heartbeat_pause:g}s"
        )

    # -- internals ------------------------------------------------------------------------

    def _shifted_mean(self) -> float:
        return self._window.mean() + self.acceptable_heartbeat_pause

    def _first_dead_time(self, estimate: float, last: float, mean: float, std: float) -> float:
        """The smallest float ``t`` with ``is_dead(t)``, searched around ``estimate``.

        ``dead`` below repeats :meth:`is_dead`'s arithmetic on the same floats, so the answer
        is exact for it, without recomputing the window's mean and deviation at every probe.
        """
        threshold = self.threshold

        def dead(t: float) -> bool:
            return phi_value(t - last, mean, std) >= threshold

        if math.isinf(estimate):
            return estimate
        # The closed form is usually within a few ulps; widen geometrically if it is not.
        step = max(4 * math.ulp(estimate), 1e-15)
        lo = hi = estimate
        for _ in range(2200):  # doubling from 1e-15 covers every finite float
            if not dead(hi):
                lo, hi = hi, hi + step
            elif dead(lo):
                lo, hi = lo - step, lo
            else:
                break
            step *= 2
        else:  # pragma: no cover - the exponent solution is never that far off
            return estimate
        while True:
            mid = lo + (hi - lo) / 2
            if mid <= lo or mid >= hi:
                return hi
            if dead(mid):
                hi = mid
            else:
                lo = mid
