"""FixedTimeout and MissedBeats, and dead_at()/is_dead() agreement for every detector."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.adaptive import AdaptiveDetector, BertierMargin
from pulse._core.detectors import FailureDetector, FixedTimeout, MissedBeats
from pulse._core.phi import PhiAccrualFailureDetector

# -- FixedTimeout -----------------------------------------------------------------------------


def test_fixed_timeout_before_any_heartbeat() -> None:
    """No arrival yet: not dead, no deadline, zero suspicion."""
    detector = FixedTimeout(5.0)
    assert not detector.is_dead(1e9)
    assert detector.dead_at() is None
    assert detector.suspicion(1e9) == 0.0
    assert isinstance(detector, FailureDetector)


def test_fixed_timeout_deadline() -> None:
    """Last arrival 10, timeout 5: alive at 14.999, dead from 15 on, half suspicious at 12.5."""
    detector = FixedTimeout(5.0)
    detector.heartbeat(10.0)
    assert detector.dead_at() == 15.0
    assert not detector.is_dead(14.999)
    assert detector.is_dead(15.0)
    assert detector.suspicion(12.5) == 0.5
    assert detector.suspicion(15.0) == 1.0


def test_fixed_timeout_deadline_agrees_despite_rounding() -> None:
    """0.7 + 0.1 - 0.7 < 0.1 in floats; is_dead(dead_at()) must still be True (it was not)."""
    detector = FixedTimeout(0.1)
    detector.heartbeat(0.7)
    deadline = detector.dead_at()
    assert deadline is not None
    assert deadline - 0.7 < 0.1  # the rounding that used to break the comparison
    assert detector.is_dead(deadline)
    assert detector.suspicion(deadline) >= 1.0
    assert detector.suspicion(math.nextafter(deadline, 0.0)) < 1.0


def test_fixed_timeout_ignores_out_of_order_arrivals() -> None:
    """An arrival stamped earlier than the last does not move the deadline back."""
    detector = FixedTimeout(5.0)
    detector.heartbeat(10.0)
    detector.heartbeat(8.0)
    assert detector.dead_at() == 15.0
    assert detector.silent_for(9.0) == 0.0


def test_fixed_timeout_explain() -> None:
    """explain() gives the silence and the timeout."""
    detector = FixedTimeout(5.0)
    detector.heartbeat(0.0)
    assert detector.explain(6.0) == "no data for 6.000s (timeout 5s)"


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_fixed_timeout_validation(bad: float) -> None:
    """The timeout must be a positive finite number."""
    with pytest.raises(ValueError, match="timeout"):
        FixedTimeout(bad)


# -- MissedBeats ------------------------------------------------------------------------------


def test_missed_beats_counts_whole_intervals() -> None:
    """interval 2, limit 3, last at 0: 0 missed at 1.9, 1 at 2, 2 at 5.9, dead at 6."""
    detector = MissedBeats(2.0, max_missed=3)
    detector.heartbeat(0.0)
    assert detector.missed(1.9) == 0
    assert detector.missed(2.0) == 1
    assert detector.missed(5.9) == 2
    assert not detector.is_dead(5.9)
    assert detector.dead_at() == 6.0
    assert detector.is_dead(6.0)
    assert detector.suspicion(6.0) == 3.0
    assert detector.missed(-1.0) == 0


def test_missed_beats_amqp_two_missed() -> None:
    """AMQP: heartbeat 30 s, dead after 2 missed, i.e. 60 s of silence."""
    detector = MissedBeats(30.0, max_missed=2)
    detector.heartbeat(100.0)
    assert detector.dead_at() == 160.0


def test_missed_beats_count_agrees_with_deadline_under_rounding() -> None:
    """missed() reaches max_missed exactly when is_dead() turns True, whatever the rounding."""
    detector = MissedBeats(0.1, max_missed=3)
    detector.heartbeat(0.7)
    deadline = detector.dead_at()
    assert deadline is not None
    assert detector.missed(deadline) == 3
    assert detector.missed(math.nextafter(deadline, 0.0)) == 2


def test_missed_beats_explain() -> None:
    """explain() gives the count, the interval and the limit."""
    detector = MissedBeats(2.0, max_missed=3)
    detector.heartbeat(0.0)
    assert detector.explain(4.5) == "missed 2 heartbeats of 2s (limit 3)"


@pytest.mark.parametrize(
    ("interval", "max_missed", "name"),
    [(0.0, 3, "interval"), (math.nan, 3, "interval"), (math.inf, 3, "interval"),
     (1.0, 0, "max_missed"), (1.0, 2.5, "max_missed"), (1.0, True, "max_missed")],
)
def test_missed_beats_validation(interval: float, max_missed: int, name: str) -> None:
    """interval must be positive and finite, max_missed an integer >= 1."""
    with pytest.raises(ValueError, match=name):
        MissedBeats(interval, max_missed)


# -- every detector: dead_at() agrees with is_dead() ------------------------------------------

FACTORIES: dict[str, Callable[[], FailureDetector]] = {
    "fixed": lambda: FixedTimeout(3.7),
    "missed": lambda: MissedBeats(1.3, 3),
    "phi": PhiAccrualFailureDetector,
    "phi-floored": lambda: PhiAccrualFailureDetector(threshold=3.0, min_interval=1.0),
    "phi-tight": lambda: PhiAccrualFailureDetector(
        threshold=0.5, acceptable_heartbeat_pause=0.0, min_std_deviation=0.001
    ),
    "adaptive": lambda: AdaptiveDetector(1.0, window_size=8, margin=0.5),
    "adaptive-estimated": lambda: AdaptiveDetector(
        1.0, window_size=5, margin=0.0, min_interval=0.5, estimate_period=True
    ),
    "adaptive-bertier": lambda: AdaptiveDetector(1.0, margin=BertierMargin(minimum=0.0)),
}


@settings(max_examples=200)
@given(
    kind=st.sampled_from(sorted(FACTORIES)),
    start=st.floats(-1e6, 1e6),
    gaps=st.lists(st.floats(0.0, 20.0), max_size=30),
    probe=st.floats(-50.0, 200.0),
)
def test_dead_at_agrees_with_is_dead(
    kind: str, start: float, gaps: list[float], probe: float
) -> None:
    """is_dead(dead_at()) is True, False a microsecond before, and t >= dead_at() elsewhere."""
    detector = FACTORIES[kind]()
    now = start
    detector.heartbeat(now)
    for gap in gaps:
        now += gap
        detector.heartbeat(now)
    deadline = detector.dead_at()
    assert deadline is not None
    assert detector.is_dead(deadline)
    assert not detector.is_dead(deadline - 1e-6)
    t = now + probe
    if abs(t - deadline) > 1e-9 * max(1.0, abs(deadline)):
        assert detector.is_dead(t) == (t >= deadline)


@given(
    kind=st.sampled_from(["fixed", "adaptive", "adaptive-bertier"]),
    gaps=st.lists(st.floats(0.0, 5.0), max_size=20),
    probe=st.floats(0.0, 50.0),
)
def test_fraction_suspicion_reaches_one_exactly_when_dead(
    kind: str, gaps: list[float], probe: float
) -> None:
    """For the fraction-style suspicions, suspicion >= 1 if and only if is_dead."""
    detector = FACTORIES[kind]()
    now = 100.0
    detector.heartbeat(now)
    for gap in gaps:
        now += gap
        detector.heartbeat(now)
    t = now + probe
    assert (detector.suspicion(t) >= 1.0) == detector.is_dead(t)


@given(gaps=st.lists(st.floats(0.0, 5.0), max_size=20), probe=st.floats(0.0, 50.0))
def test_missed_count_reaches_the_limit_exactly_when_dead(gaps: list[float], probe: float) -> None:
    """MissedBeats: suspicion >= max_missed if and only if is_dead."""
    detector = MissedBeats(1.3, 3)
    now = 0.1
    detector.heartbeat(now)
    for gap in gaps:
        now += gap
        detector.heartbeat(now)
    t = now + probe
    assert (detector.suspicion(t) >= 3) == detector.is_dead(t)
