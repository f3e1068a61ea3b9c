"""The adaptive failure detector of Chen, Toueg and Aguilera (2002), with Bertier's margin.

The detector predicts when the next heartbeat should arrive and declares the peer dead when
a safety margin ``alpha`` has passed beyond that prediction with nothing heard.

Expected arrival (Chen et al.), from the last ``n`` arrivals ``A_i`` numbered ``i`` and the
heartbeat period ``Delta``:

    EA_{k+1} = (1/n) * sum_{i=k-n+1..k} (A_i - i * Delta) + (k+1) * Delta

Each ``A_i - i * Delta`` is the phase of arrival ``i`` on a grid of period ``Delta``; their
mean is the typical phase, and the next arrival is expected one period after the last grid
point. The peer is dead from ``EA_{k+1} + alpha`` on (Chen's freshness point ``tau``).

This module computes the same number from the gaps ``g_j = A_j - A_{j-1}`` between the ``m``
arrivals in the window, relative to the last arrival ``A_k``:

    EA_{k+1} - A_k = Delta * (m + 1) / 2 - (1/m) * sum_{j=1..m-1} j * g_j

(``g_{m-1}`` the newest gap), which makes it O(1) per heartbeat and free of the rounding
that absolute timestamps (1e9 seconds since the epoch) would bring into a mean.

The margin ``alpha`` is either a constant or Bertier's dynamic margin (Bertier, Marin and
Sens, 2002), Jacobson's RTT estimator applied to the prediction error:

    error_k   = (A_k - EA_k) - delay_k
    delay_k+1 = delay_k + gamma * error_k
    var_k+1   = var_k + gamma * (|error_k| - var_k)
    alpha_k+1 = beta * delay_k+1 + phi * var_k+1

Additions for pulse, each documented where it applies:

* ``min_interval`` floors recorded gaps, as for the phi detector: under a ping-when-idle
  policy a gap shorter than the heartbeat interval is not a faster heartbeat. Because only
  gaps enter the formula, a burst of data cannot push the prediction into the future.
* ``estimate_period=True`` replaces the nominal ``Delta`` by the least-squares slope of
  arrival time against arrival number over the window. Chen's formula assumes the sender
  beats at exactly ``Delta``; a sender whose real period is ``Delta + e`` (a timer re-armed
  after each write, say) makes the prediction run early by ``e * (m + 1) / 2`` once the
  window is full: 1 s for e = 20 ms and m = 100, enough to declare a healthy peer dead.

Where it fits: Chen's estimator models a sender that keeps its own clock (arrival = send
slot + delay), such as a peer sending on a fixed timer or pulse's ``IdleMode.WRITER``. Under
pulse's default ``IdleMode.READER`` each ping is sent ``interval`` after the last arrival, so
gaps are independent and arrival phases wander; the window's mean phase then lags and the
detector makes many false detections on jittery links (docs/detectors.md has the numbers).
Use the phi detector there, or a window of a few arrivals.
* Bertier's margin starts at ``initial`` (``var_0 = initial / phi``) and never goes below
  ``minimum``, so the first heartbeats and a very steady link do not make it hair-triggered.
* Chen numbers the heartbeats, so beats lost in an outage show as a jump in the numbering.
  pulse's arrivals carry no numbers: a gap that ends after the deadline is taken to span
  ``r = round(gap / Delta)`` periods with ``r - 1`` beats lost, which is recorded exactly as
  Chen's formula treats such a jump. A gap that ends before the deadline is a late beat and
  is recorded whole, as in the original.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pulse._core._checks import check_count, check_non_negative, check_positive


@dataclass(frozen=True, slots=True)
class BertierMargin:
    """Parameters of Bertier's dynamic safety margin (defaults from Bertier et al.).

    ``beta`` weighs the smoothed lateness (``delay``), ``phi`` its mean deviation (``var``),
    ``gamma`` is the smoothing gain. ``initial`` is the margin before any prediction was
    checked; ``minimum`` is a floor pulse adds (0 gives the original algorithm).
    """

    beta: float = 1.0
    phi: float = 4.0
    gamma: float = 0.1
    initial: float = 1.0
    minimum: float = 0.1

    def __post_init__(self) -> None:
        check_non_negative("beta", self.beta)
        check_positive("phi", self.phi)
        check_positive("gamma", self.gamma)
        if self.gamma > 1:
            raise ValueError(f"gamma must not exceed 1, got {self.gamma!r}")
        check_non_negative("initial", self.initial)
        check_non_negative("minimum", self.minimum)


class AdaptiveDetector:
    """Chen-Toueg-Aguilera failure detector: dead from ``EA + alpha`` on.

    * ``interval``: the nominal heartbeat period ``Delta`` in seconds.
    * ``window_size``: number of recent arrivals ``n`` the expected arrival is computed from.
    * ``margin``: the safety margin ``alpha`` in seconds (None means ``interval``), or a
      :class:`BertierMargin` for a margin that follows the observed lateness.
    * ``min_interval``: floor for recorded gaps; set it to the interval when every frame from
      the peer counts as a heartbeat (bursts would otherwise read as very fast beats).
    * ``estimate_period``: use the fitted period of the window instead of ``interval``.

    Before any heartbeat the detector has no opinion (``dead_at()`` is None). After the first,
    the next is expected ``interval`` later.
    """

    __slots__ = (
        "_alpha",
        "_dead_at",
        "_delay",
        "_expected_gap",
        "_gaps",
        "_last",
        "_quadratic",
        "_since_resync",
        "_sum",
        "_var",
        "_weighted",
        "estimate_period",
        "interval",
        "margin",
        "min_interval",
        "window_size",
    )

    def __init__(
        self,
        interval: float,
        *,
        window_size: int = 100,
        margin: float | BertierMargin | None = None,
        min_interval: float = 0.0,
        estimate_period: bool = False,
    ) -> None:
        check_positive("interval", interval)
        check_count("window_size", window_size, 1)
        check_non_negative("min_interval", min_interval)
        if margin is None:
            margin = float(interval)
        elif not isinstance(margin, BertierMargin):
            check_non_negative("margin", margin)
            margin = float(margin)
        self.interval = float(interval)
        self.window_size = window_size
        self.margin: float | BertierMargin = margin
        self.min_interval = float(min_interval)
        self.estimate_period = bool(estimate_period)
        # A window of m arrivals holds m - 1 gaps.
        self._gaps: deque[float] = deque()
        self._sum = 0.0  # sum of the gaps
        self._weighted = 0.0  # sum of j * g_j, the newest gap weighted m - 1
        self._quadratic = 0.0  # sum of j (j - 1) / 2 * g_j, for the least-squares slope
        self._since_resync = 0
        self._last: float | None = None
        self._expected_gap = self.interval  # EA_{k+1} - A_k
        if isinstance(margin, BertierMargin):
            self._delay = 0.0
            self._var = margin.initial / margin.phi
            self._alpha = max(margin.initial, margin.minimum)
        else:
            self._delay = self._var = 0.0
            self._alpha = margin
        self._dead_at: float | None = None

    # -- what the window says -------------------------------------------------------------

    @property
    def last_heartbeat(self) -> float | None:
        """Time of the most recent heartbeat, or None before the first."""
        return self._last

    def expected_arrival(self) -> float | None:
        """``EA_{k+1}``: when the next heartbeat is expected (None before the first)."""
        return None if self._last is None else self._last + self._expected_gap

    def safety_margin(self) -> float:
        """The current ``alpha`` in seconds."""
        return self._alpha

    def period(self) -> float:
        """The ``Delta`` in use: ``interval``, or the fitted period when estimated.

        The estimate is the least-squares slope of arrival time against arrival number over
        the window (with the floored gaps), which is robust to noise in any single arrival.
        """
        if not (self.estimate_period and self._gaps):
            return self.interval
        m = len(self._gaps) + 1
        # Arrival times relative to the last one: sum V_i = -W, sum i V_i = -Q, so
        # Sxy = -Q + (m - 1)/2 * W and Sxx = m (m^2 - 1) / 12.
        sxy = (m - 1) / 2 * self._weighted - self._quadratic
        sxx = m * (m * m - 1) / 12
        return sxy / sxx

    # -- the FailureDetector protocol -----------------------------------------------------

    def heartbeat(self, now: float) -> None:
        """Record a heartbeat (any evidence of life) at ``now``."""
        if math.isnan(now):
            raise ValueError("heartbeat time must not be NaN")
        if self._last is None:
            self._last = now
        else:
            gap = max(now - self._last, self.min_interval)
            if self.is_dead(now):
                gap = self._without_lost_beats(gap)
            self._update_margin(gap)
            self._record(gap)
            self._last = max(self._last, now)
        self._expected_gap = self._compute_expected_gap()
        self._dead_at = self._last + self._expected_gap + self._alpha

    def suspicion(self, now: float) -> float:
        """Share of the allowed silence ``dead_at() - last`` used up (>= 1.0 exactly when dead)."""
        deadline = self._dead_at
        if deadline is None or self._last is None:
            return 0.0
        dead = now >= deadline
        allowed = deadline - self._last
        if allowed <= 0:
            return math.inf if dead else 0.0
        ratio = max(0.0, now - self._last) / allowed
        return max(ratio, 1.0) if dead else min(ratio, _JUST_BELOW_ONE)

    def is_dead(self, now: float) -> bool:
        """True from ``EA + alpha`` on, with nothing heard."""
        return self._dead_at is not None and now >= self._dead_at

    def dead_at(self) -> float | None:
        """``EA_{k+1} + alpha``, or None before the first heartbeat."""
        return self._dead_at

    def explain(self, now: float) -> str:
        """Say when the next heartbeat was expected and how much margin was allowed."""
        if self._last is None:
            return "no heartbeat yet"
        expected = self._last + self._expected_gap
        return (
            f"silent for {max(0.0, now - self._last):.3f}s; next heartbeat expected "
            f"{self._expected_gap:.3f}s after the last (period {self.period():.3f}s), "
            f"{now - expected:+.3f}s late against a margin of {self._alpha:.3f}s"
        )

    # -- internals ------------------------------------------------------------------------

    def _record(self, gap: float) -> None:
        capacity = self.window_size - 1
        if capacity == 0:
            return
        if len(self._gaps) == capacity:
            # Every weight drops by one (the oldest gap's to zero) and the new gap comes in
            # with the top weight.
            # j -> j - 1 turns j (j - 1) / 2 into (j - 1)(j - 2) / 2, i.e. minus (j - 1).
            old = self._gaps.popleft()
            self._quadratic += capacity * (capacity - 1) / 2 * gap - (self._weighted - self._sum)
            self._weighted += capacity * gap - self._sum
            self._sum += gap - old
        else:
            j = len(self._gaps) + 1
            self._sum += gap
            self._weighted += j * gap
            self._quadratic += j * (j - 1) / 2 * gap
        self._gaps.append(gap)
        self._since_resync += 1
        if self._since_resync >= capacity:
            # Bound the rounding the running sums accumulate: exact sums once per window.
            self._sum = math.fsum(self._gaps)
            self._weighted = math.fsum(j * g for j, g in enumerate(self._gaps, start=1))
            self._quadratic = math.fsum(
                j * (j - 1) / 2 * g for j, g in enumerate(self._gaps, start=1)
            )
            self._since_resync = 0

    def _compute_expected_gap(self) -> float:
        arrivals = len(self._gaps) + 1
        return self.period() * (arrivals + 1) / 2 - self._weighted / arrivals

    def _without_lost_beats(self, gap: float) -> float:
        """A gap past the deadline, less the whole periods it spans beyond one.

        Chen's detector numbers heartbeats, so beats lost during an outage leave a jump in
        the numbering, not a huge phase. Without numbers, ``r = round(gap / Delta)`` periods
        are assumed to have passed and ``r - 1`` beats lost: recording ``gap - (r - 1) Delta``
        gives exactly Chen's expected arrival with that jump. A gap under the deadline is a
        late beat and is recorded whole.
        """
        period = self.period()
        if period <= 0:  # every gap so far was 0: there is no grid to count periods on
            return gap
        lost = max(0, math.floor(gap / period) - 1)
        return gap - lost * period

    def _update_margin(self, gap: float) -> None:
        margin = self.margin
        if not isinstance(margin, BertierMargin):
            return
        error = (gap - self._expected_gap) - self._delay
        self._delay += margin.gamma * error
        self._var += margin.gamma * (abs(error) - self._var)
        self._alpha = max(margin.beta * self._delay + margin.phi * self._var, margin.minimum)


_JUST_BELOW_ONE = math.nextafter(1.0, 0.0)
