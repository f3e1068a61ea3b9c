"""RttStats and ArrivalWindow: values by hand, eviction, the min_sample floor, precision."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.stats import ArrivalWindow, RttStats, RttSummary

# -- RttStats ---------------------------------------------------------------------------------


def test_rtt_summary_is_empty_before_samples() -> None:
    """No samples: count 0 and every statistic None."""
    assert RttStats().summary() == RttSummary(0, None, None, None, None, None, None)


def test_rtt_summary_by_hand() -> None:
    """Samples 10, 20, 30, 40 ms.

    avg 25 ms; mdev = sqrt((1 + 4 + 9 + 16) e-4 / 4 - 0.025^2) = sqrt(1.25e-4) = 11.1803 ms.
    srtt (alpha 1/8): 10 -> 11.25 -> 13.59375 -> 16.89453125 ms.
    """
    stats = RttStats()
    for rtt in (0.010, 0.020, 0.030, 0.040):
        stats.add(rtt)
    summary = stats.summary()
    assert stats.count == 4
    assert summary.count == 4
    assert summary.last == 0.040
    assert summary.min == 0.010
    assert summary.max == 0.040
    assert summary.avg == pytest.approx(0.025)
    assert summary.mdev == pytest.approx(0.0111803, abs=1e-7)
    assert summary.srtt == pytest.approx(0.01689453125)


def test_rtt_single_sample_has_zero_mdev() -> None:
    """One sample: min = max = avg = srtt, mdev 0."""
    stats = RttStats()
    stats.add(0.5)
    summary = stats.summary()
    assert (summary.min, summary.avg, summary.max, summary.srtt, summary.mdev) == (
        0.5, 0.5, 0.5, 0.5, 0.0
    )


def test_rtt_negative_sample_is_clamped() -> None:
    """A negative RTT (clock step) is recorded as 0."""
    stats = RttStats()
    stats.add(-0.2)
    assert stats.summary().min == 0.0


def test_rtt_srtt_tracks_a_level_shift() -> None:
    """After 40 samples at 100 ms following one at 0, srtt = 0.1 (1 - (7/8)^40) = 99.5 ms."""
    stats = RttStats()
    stats.add(0.0)
    for _ in range(40):
        stats.add(0.1)
    assert stats.summary().srtt == pytest.approx(0.1 * (1 - (7 / 8) ** 40))


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=100))
def test_rtt_matches_the_statistics_module(samples: list[float]) -> None:
    """avg and mdev equal statistics.fmean and pstdev (ping's mdev is a population std)."""
    stats = RttStats()
    for s in samples:
        stats.add(s)
    summary = stats.summary()
    assert summary.avg == pytest.approx(statistics.fmean(samples), rel=1e-9, abs=1e-12)
    assert summary.mdev == pytest.approx(statistics.pstdev(samples), rel=1e-6, abs=1e-6)


# -- ArrivalWindow ----------------------------------------------------------------------------


def test_empty_window() -> None:
    """No samples: length 0, mean and std 0, no last arrival."""
    window = ArrivalWindow()
    assert len(window) == 0
    assert window.mean() == 0.0
    assert window.std() == 0.0
    assert window.last_arrival is None


def test_arrivals_become_gaps() -> None:
    """Arrivals at 0, 1, 3, 6: gaps 1, 2, 3, mean 2, population std sqrt(2/3) = 0.8165."""
    window = ArrivalWindow()
    for t in (0.0, 1.0, 3.0, 6.0):
        window.arrival(t)
    assert len(window) == 3
    assert window.last_arrival == 6.0
    assert window.mean() == 2.0
    assert window.std() == pytest.approx(math.sqrt(2 / 3))


def test_eviction_keeps_the_newest_samples() -> None:
    """A full window drops its oldest gap: mean and std follow the newest max_size gaps.

    max_size 3: 2, 4, 6 (mean 4, var 8/3); +12 -> 4, 6, 12 (mean 22/3, var 104/9);
    +1 -> 6, 12, 1 (mean 19/3, var 182/9).
    """
    window = ArrivalWindow(max_size=3)
    for gap in (2.0, 4.0, 6.0):
        window.add_sample(gap)
    assert (window.mean(), window.std()) == pytest.approx((4.0, math.sqrt(8 / 3)))
    window.add_sample(12.0)
    assert len(window) == 3
    assert (window.mean(), window.std()) == pytest.approx((22 / 3, math.sqrt(104 / 9)))
    window.add_sample(1.0)
    assert (window.mean(), window.std()) == pytest.approx((19 / 3, math.sqrt(182 / 9)))


def test_min_sample_floors_short_gaps() -> None:
    """min_sample 1: arrivals 0, 0.2, 0.4, 3.0 record gaps 1, 1, 2.6 (mean 1.5333)."""
    window = ArrivalWindow(min_sample=1.0)
    for t in (0.0, 0.2, 0.4, 3.0):
        window.arrival(t)
    assert window.min_sample == 1.0
    assert window.mean() == pytest.approx(4.6 / 3)


def test_out_of_order_arrival_records_the_floor_and_keeps_the_last() -> None:
    """An arrival earlier than the last records min_sample and does not move time back."""
    window = ArrivalWindow(min_sample=0.5)
    window.arrival(10.0)
    window.arrival(9.0)
    assert window.last_arrival == 10.0
    assert window.mean() == 0.5


def test_arrival_without_recording_the_gap() -> None:
    """record_gap=False moves the last arrival but adds no sample."""
    window = ArrivalWindow()
    window.arrival(0.0)
    window.arrival(1.0)
    window.arrival(500.0, record_gap=False)
    assert len(window) == 1
    assert window.last_arrival == 500.0
    window.arrival(501.5)
    assert window.mean() == pytest.approx(1.25)


def test_evicting_a_huge_outlier_leaves_exact_statistics() -> None:
    """A 1e9 s gap, evicted, must not leave its rounding in the sums.

    Window 3: 1e9, 0.1, 0.2, 0.3 -> 0.1..0.3 remain; std must be sqrt(0.02/3) = 0.08165,
    not the 0.0 that naive running sums give.
    """
    window = ArrivalWindow(max_size=3)
    for gap in (1e9, 0.1, 0.2, 0.3):
        window.add_sample(gap)
    assert window.mean() == pytest.approx(0.2, rel=1e-12)
    assert window.std() == pytest.approx(math.sqrt(0.02 / 3), rel=1e-9)


@given(
    samples=st.lists(st.floats(0.0, 1e4), min_size=1, max_size=200),
    max_size=st.integers(1, 50),
)
def test_window_matches_the_statistics_module(samples: list[float], max_size: int) -> None:
    """mean and std equal fmean and pstdev of the last max_size samples."""
    window = ArrivalWindow(max_size=max_size)
    for s in samples:
        window.add_sample(s)
    recent = samples[-max_size:]
    assert len(window) == len(recent)
    assert window.mean() == pytest.approx(statistics.fmean(recent), rel=1e-9, abs=1e-9)
    scale = max(recent)
    assert window.std() == pytest.approx(statistics.pstdev(recent), abs=1e-6 * max(scale, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_size": 0}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"max_size": 2.5}, "max_size"),
        ({"min_sample": -1.0}, "min_sample"),
        ({"min_sample": math.nan}, "min_sample"),
        ({"min_sample": math.inf}, "min_sample"),
    ],
)
def test_window_validation(kwargs: dict[str, object], name: str) -> None:
    """max_size must be an integer >= 1 and min_sample a finite number >= 0."""
    with pytest.raises(ValueError, match=name):
        ArrivalWindow(**kwargs)  # type: ignore[arg-type]


def test_gap_stats_follow_the_recent_rhythm_in_constant_memory() -> None:
    """GapStats: steady gaps give their value and no spread; a new rhythm takes over within
    a few dozen gaps; it keeps three floats whatever the number of arrivals."""
    from pulse._core.stats import GapStats

    stats = GapStats(alpha=1 / 16)
    assert (stats.mean(), stats.std()) == (0.0, 0.0)
    for t in range(101):
        stats.arrival(float(t))
    assert stats.mean() == pytest.approx(1.0) and stats.std() == pytest.approx(0.0)
    now = 100.0
    for _ in range(100):
        now += 3.0
        stats.arrival(now)
    assert stats.mean() == pytest.approx(3.0, rel=0.01)
    gaps = [1.0, 3.0] * 200
    mixed = GapStats(alpha=1 / 16)
    now = 0.0
    mixed.arrival(now)
    for gap in gaps:
        now += gap
        mixed.arrival(now)
    assert mixed.mean() == pytest.approx(2.0, abs=0.1)
    assert mixed.std() == pytest.approx(1.0, abs=0.15)
    assert not hasattr(mixed, "__dict__")
