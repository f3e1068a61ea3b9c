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


class ArrivalWindow:
    """A bounded window of inter-arrival times with O(1) mean and standard deviation.

    ``min_sample`` floors each recorded gap: under a ping-when-idle policy a gap shorter than
    the heartbeat interval is never a missed beat, so detectors record it as the interval.
    """

    __slots__ = ("_last", "_max_size", "_min_sample", "_samples", "_sum", "_sum_sq")

    def __init__(self, max_size: int = 1000, min_sample: float = 0.0) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if min_sample < 0:
            raise ValueError("min_sample must not be negative")
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

    def arrival(self, now: float) -> None:
        """Record an arrival at ``now``; the gap to the previous arrival becomes a sample."""
        if self._last is not None:
            self.add_sample(max(now - self._last, self._min_sample))
        self._last = now if self._last is None else max(self._last, now)

    def add_sample(self, gap: float) -> None:
        """Record one inter-arrival gap directly (evicting the oldest when full)."""
        if len(self._samples) == self._max_size:
            old = self._samples.popleft()
            self._sum -= old
            self._sum_sq -= old * old
        self._samples.append(gap)
        self._sum += gap
        self._sum_sq += gap * gap

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
