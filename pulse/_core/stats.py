"""Per-peer statistics: round-trip times and heartbeat inter-arrival times.

Both are bounded: they keep a fixed-size window of recent samples plus running aggregates,
so a connection that lives for months uses constant memory.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RttSummary:
    """Round-trip statistics, in seconds, like ping(8)'s summary line."""

    count: int
    last: float | None
    min: float | None
    avg: float | None
    max: float | None
    mdev: float | None
    srtt: float | None


class RttStats:
    """Running RTT statistics: min/avg/max/mdev over all samples and a smoothed RTT.

    ``srtt`` is the exponentially weighted average of RFC 6298 (alpha = 1/8).
    """

    __slots__ = ("_count", "_last", "_max", "_min", "_srtt", "_sum", "_sum_sq")

    def __init__(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._last: float | None = None
        self._srtt: float | None = None

    def add(self, rtt: float) -> None:
        """Record one round-trip time (negative samples are clamped to 0)."""
        rtt = max(0.0, rtt)
        self._count += 1
        self._sum += rtt
        self._sum_sq += rtt * rtt
        self._min = min(self._min, rtt)
        self._max = max(self._max, rtt)
        self._last = rtt
        self._srtt = rtt if self._srtt is None else self._srtt + (rtt - self._srtt) / 8

    @property
    def count(self) -> int:
        """Number of samples recorded."""
        return self._count

    def summary(self) -> RttSummary:
        """The current statistics (all None before the first sample)."""
        if self._count == 0:
            return RttSummary(0, None, None, None, None, None, None)
        avg = self._sum / self._count
        variance = max(0.0, self._sum_sq / self._count - avg * avg)
        return RttSummary(
            self._count, self._last, self._min, avg, self._max, math.sqrt(variance), self._srtt
        )


class GapStats:
    """Mean and standard deviation of the gaps between arrivals, weighted exponentially
    (weight ``alpha`` for the newest gap: about the last ``1 / alpha`` gaps count), in O(1)
    memory — for a per-connection picture of the peer's rhythm that costs three floats."""

    __slots__ = ("_alpha", "_count", "_last", "_mean", "_var")

    def __init__(self, alpha: float = 1 / 16) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self._alpha = alpha
        self._last: float | None = None
        self._count = 0
        self._mean = 0.0
        self._var = 0.0

    def arrival(self, now: float) -> None:
        """Record an arrival at ``now`` (out-of-order times count as a zero gap)."""
        last, self._last = self._last, now if self._last is None else max(self._last, now)
        if last is None:
            return
        gap = max(0.0, now - last)
        self._count += 1
        if self._count == 1:
            self._mean = gap
            return
        diff = gap - self._mean
        step = self._alpha * diff
        self._mean += step
        self._var = (1 - self._alpha) * (self._var + diff * step)

    def mean(self) -> float:
        """The weighted mean gap (0 before two arrivals)."""
        return self._mean

    def std(self) -> float:
        """The weighted standard deviation of the gaps (0 before three arrivals)."""
        return math.sqrt(self._var)


#: Recompute the window's running sums when an evicted sample's square exceeds this many
#: times the remaining sum of squares (the subtraction then loses the small samples' bits).
_RESYNC_RATIO = 1e6


class ArrivalWindow:
    """A bounded window of inter-arrival times with O(1) mean and standard deviation.

    ``min_sample`` floors each recorded gap: under a ping-when-idle policy a gap shorter than
    the heartbeat interval is never a missed beat, so detectors record it as the interval.
    """

    __slots__ = ("_last", "_max_size", "_min_sample", "_samples", "_sum", "_sum_sq")

    def __init__(self, max_size: int = 1000, min_sample: float = 0.0) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be an integer of at least 1, got {max_size!r}")
        if not (0 <= min_sample < math.inf):
            raise ValueError(f"min_sample must be a finite number >= 0, got {min_sample!r}")
        self._max_size = max_size
        self._min_sample = min_sample
        self._samples: deque[float] = deque()
        self._sum = 0.0
        self._sum_sq = 0.0
        self._last: float | None = None

    @property
    def last_arrival(self) -> float | None:
        """Time of the most recent arrival, or None before the first."""
        return self._last

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def min_sample(self) -> float:
        """The floor applied to gaps recorded by :meth:`arrival`."""
        return self._min_sample

    def arrival(self, now: float, *, record_gap: bool = True) -> None:
        """Record an arrival at ``now``; the gap to the previous arrival becomes a sample.

        The gap is floored at ``min_sample`` (an arrival earlier than the previous one gives a
        gap of ``min_sample``). With ``record_gap=False`` only the arrival time moves: a
        detector uses this for the first arrival after it declared the peer dead, whose long
        gap would otherwise skew the statistics (Akka does the same).
        """
        if self._last is not None and record_gap:
            self.add_sample(max(now - self._last, self._min_sample))
        self._last = now if self._last is None else max(self._last, now)

    def add_sample(self, gap: float) -> None:
        """Record one inter-arrival gap directly (evicting the oldest when full)."""
        if len(self._samples) == self._max_size:
            old = self._samples.popleft()
            self._sum -= old
            self._sum_sq -= old * old
            if old * old > _RESYNC_RATIO * self._sum_sq:
                # The evicted sample dominated the running sums, so subtracting it left
                # mostly rounding error (a 1e9 s outlier would leave an error of ~100 s² in
                # the sum of squares). Recompute the sums exactly; this is rare.
                self._resync()
        self._samples.append(gap)
        self._sum += gap
        self._sum_sq += gap * gap

    def _resync(self) -> None:
        self._sum = math.fsum(self._samples)
        self._sum_sq = math.fsum(x * x for x in self._samples)

    def mean(self) -> float:
        """Mean gap (0.0 when empty)."""
        return self._sum / len(self._samples) if self._samples else 0.0

    def std(self) -> float:
        """Population standard deviation of the gaps (0.0 when empty)."""
        n = len(self._samples)
        if n == 0:
            return 0.0
        mean = self._sum / n
        return math.sqrt(max(0.0, self._sum_sq / n - mean * mean))
