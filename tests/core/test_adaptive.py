"""Chen-Toueg-Aguilera adaptive detector and Bertier's margin: hand-computed values."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.adaptive import AdaptiveDetector, BertierMargin
from pulse._core.detectors import FailureDetector


def fed(times: list[float], interval: float = 1.0, **kwargs: object) -> AdaptiveDetector:
    detector = AdaptiveDetector(interval, **kwargs)  # type: ignore[arg-type]
    for t in times:
        detector.heartbeat(t)
    return detector


def chen_expected_arrival(arrivals: list[float], delta: float, n: int) -> float:
    """EA_{k+1} = (1/n') sum (A_i - i Delta) + (k+1) Delta over the last n' <= n arrivals."""
    k = len(arrivals) - 1
    window = list(enumerate(arrivals))[-n:]
    return sum(a - i * delta for i, a in window) / len(window) + (k + 1) * delta


def test_implements_the_failure_detector_protocol() -> None:
    """AdaptiveDetector satisfies the FailureDetector protocol."""
    assert isinstance(AdaptiveDetector(1.0), FailureDetector)


def test_no_opinion_before_the_first_heartbeat() -> None:
    """Before any heartbeat there is no expected arrival and no verdict."""
    detector = AdaptiveDetector(1.0)
    assert detector.expected_arrival() is None
    assert detector.dead_at() is None
    assert not detector.is_dead(1e9)
    assert detector.suspicion(1e9) == 0.0
    assert detector.explain(5.0) == "no heartbeat yet"


def test_first_heartbeat_expects_the_next_one_interval_later() -> None:
    """After one arrival at 10: EA = 10 + 1 = 11; default margin = interval, dead at 12."""
    detector = fed([10.0])
    assert detector.expected_arrival() == 11.0
    assert detector.safety_margin() == 1.0
    assert detector.dead_at() == 12.0


def test_expected_arrival_with_a_partial_window() -> None:
    """Arrivals 0 and 1.2, Delta 1: phases 0 and 0.2, mean 0.1, EA_2 = 0.1 + 2 = 2.1."""
    detector = fed([0.0, 1.2], margin=0.5)
    assert detector.expected_arrival() == pytest.approx(2.1)
    assert detector.dead_at() == pytest.approx(2.6)


def test_expected_arrival_with_a_full_window() -> None:
    """Window 4, arrivals 0..4 then 5.2: last four phases (A_i - i) are 0, 0, 0, 0.2.

    mean 0.05, EA_6 = 0.05 + 6 x 1 = 6.05; with alpha 0.5 dead from 6.55 on.
    """
    detector = fed([0.0, 1.0, 2.0, 3.0, 4.0, 5.2], window_size=4, margin=0.5)
    assert detector.expected_arrival() == pytest.approx(6.05)
    assert detector.dead_at() == pytest.approx(6.55)
    assert not detector.is_dead(6.549)
    assert detector.is_dead(6.55)


def test_nominal_period_runs_early_when_beats_are_slower() -> None:
    """Beats every 1.1 s, nominal 1.0, window 4: phases 0, .1, .2, .3, EA = 0.15 + 4 = 4.15.

    That is 0.85 s after the last arrival while the next really comes 1.1 s after it:
    early by (1.1 - 1.0) x (4 + 1) / 2 = 0.25 s.
    """
    detector = fed([0.0, 1.1, 2.2, 3.3], window_size=4, margin=5.0)
    assert detector.expected_arrival() == pytest.approx(4.15)


def test_estimated_period_follows_the_real_rhythm() -> None:
    """Same beats with estimate_period: Delta = mean gap 1.1, so EA = 3.3 + 1.1 = 4.4."""
    detector = fed([0.0, 1.1, 2.2, 3.3], window_size=4, margin=5.0, estimate_period=True)
    assert detector.period() == pytest.approx(1.1)
    assert detector.expected_arrival() == pytest.approx(4.4)


def test_min_interval_stops_bursts_from_pushing_the_prediction_out() -> None:
    """Arrivals 1 ms apart, window 4, Delta 1.

    Raw: phases 0, -0.999, -1.998, -2.997, mean -1.4985, EA = 2.5015 (2.4985 s after the
    last arrival). Floored at 1 s every gap counts as one period: EA = last + 1.
    """
    times = [0.0, 0.001, 0.002, 0.003]
    assert fed(times, window_size=4).expected_arrival() == pytest.approx(2.5015)
    floored = fed(times, window_size=4, min_interval=1.0)
    assert floored.expected_arrival() == pytest.approx(0.003 + 1.0)


def test_window_of_one_always_expects_one_interval() -> None:
    """With n = 1 the phase mean is the last phase: EA = last + Delta."""
    detector = fed([0.0, 0.4, 3.0], window_size=1, margin=0.0)
    assert detector.expected_arrival() == 4.0


def test_outage_counts_as_lost_beats_not_as_a_huge_phase() -> None:
    """Arrivals 0, 1, 2, 3, then 300.2 after an outage (window 4, alpha 0.5).

    floor(297.2 / 1) = 297 periods, so 296 beats are taken as lost and 1.2 is recorded.
    Chen with numbered beats: indices 1, 2, 3, 300, phases 0, 0, 0, 0.2, mean 0.05,
    EA = 0.05 + 301 = 301.05. Recording the raw 297.2 s gap would have put EA before 300.2.
    """
    detector = fed([0.0, 1.0, 2.0, 3.0], window_size=4, margin=0.5)
    assert detector.is_dead(300.2)
    detector.heartbeat(300.2)
    assert detector.last_heartbeat == 300.2
    assert detector.expected_arrival() == pytest.approx(301.05)
    assert not detector.is_dead(301.5)


def test_late_beat_past_the_deadline_is_recorded_whole() -> None:
    """Arrivals 0, 1, 2, 3, then 4.7 (dead from 4.5): one late beat, phase 0.7 kept.

    Window 4 -> arrivals 1, 2, 3, 4.7, phases 0, 0, 0, 0.7, mean 0.175, EA = 5.175.
    """
    detector = fed([0.0, 1.0, 2.0, 3.0], window_size=4, margin=0.5)
    assert detector.is_dead(4.7)
    detector.heartbeat(4.7)
    assert detector.expected_arrival() == pytest.approx(5.175)


def test_zero_period_does_not_divide_by_zero() -> None:
    """Simultaneous arrivals give a fitted period of 0; a later beat is then recorded whole."""
    detector = fed([5.0, 5.0, 5.0], estimate_period=True, margin=0.0)
    assert detector.period() == 0.0
    detector.heartbeat(100.0)
    assert detector.last_heartbeat == 100.0


def test_suspicion_is_the_share_of_allowed_silence() -> None:
    """EA 11, alpha 1, dead at 12: halfway (11.0) is 0.5; at 12 exactly it is 1.0."""
    detector = fed([10.0])
    assert detector.suspicion(11.0) == pytest.approx(0.5)
    assert detector.suspicion(11.999) < 1.0
    assert detector.suspicion(12.0) == 1.0
    assert detector.suspicion(9.0) == 0.0


def test_explain_reports_expectation_and_margin() -> None:
    """explain() says the silence, the expected gap and how late against the margin."""
    text = fed([10.0]).explain(12.5)
    assert "silent for 2.500s" in text
    assert "expected 1.000s after the last" in text
    assert "+1.500s late against a margin of 1.000s" in text


# -- Bertier's dynamic margin -----------------------------------------------------------------


def test_bertier_margin_by_hand() -> None:
    """beta 1, phi 4, gamma 0.1, initial 1 (delay 0, var 0.25), Delta 1.

    beat 0:   EA 1, alpha 1, dead at 2.
    beat 1.2: error = (1.2 - 1.0) - 0 = 0.2; delay 0.02; var 0.25 + 0.1 (0.2 - 0.25) = 0.245;
              alpha = 0.02 + 4 x 0.245 = 1.0; EA = 1.2 + (1 x 3/2 - 1.2/2) = 2.1; dead at 3.1.
    beat 2.0: error = (0.8 - 0.9) - 0.02 = -0.12; delay 0.008;
              var 0.245 + 0.1 (0.12 - 0.245) = 0.2325; alpha = 0.008 + 0.93 = 0.938;
              EA = 2.0 + (1 x 4/2 - (1.2 + 2 x 0.8)/3) = 3.0666667; dead at 4.0046667.
    """
    margin = BertierMargin(beta=1.0, phi=4.0, gamma=0.1, initial=1.0, minimum=0.0)
    detector = AdaptiveDetector(1.0, margin=margin)
    detector.heartbeat(0.0)
    assert detector.dead_at() == pytest.approx(2.0)
    detector.heartbeat(1.2)
    assert detector.safety_margin() == pytest.approx(1.0)
    assert detector.dead_at() == pytest.approx(3.1)
    detector.heartbeat(2.0)
    assert detector.safety_margin() == pytest.approx(0.938)
    assert detector.expected_arrival() == pytest.approx(3.0666667)
    assert detector.dead_at() == pytest.approx(4.0046667)


def test_bertier_margin_shrinks_on_a_steady_link_down_to_its_floor() -> None:
    """Perfect 1 s beats: errors are 0, var decays by 0.9 per beat, alpha stops at minimum."""
    detector = fed([float(k) for k in range(200)], margin=BertierMargin(minimum=0.05))
    assert detector.safety_margin() == 0.05
    unfloored = fed([float(k) for k in range(20)], margin=BertierMargin(minimum=0.0))
    # 19 recorded beats: alpha = 4 x 0.25 x 0.9^19 = 0.1351
    assert unfloored.safety_margin() == pytest.approx(0.9**19, rel=1e-9)


def test_bertier_margin_grows_with_jitter() -> None:
    """Alternating 0.6/1.4 s gaps keep alpha well above the floor; steady beats do not."""
    t, times = 0.0, [0.0]
    for k in range(100):
        t += 0.6 if k % 2 else 1.4
        times.append(t)
    jittery = fed(times, margin=BertierMargin())
    steady = fed([float(k) for k in range(101)], margin=BertierMargin())
    assert jittery.safety_margin() > 0.5
    assert steady.safety_margin() == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("beta", -1.0), ("phi", 0.0), ("gamma", 0.0), ("gamma", 1.5), ("initial", -1.0),
     ("minimum", math.nan)],
)
def test_bertier_margin_validation(field: str, value: float) -> None:
    """Bertier parameters out of range raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        BertierMargin(**{field: value})


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interval": 0.0}, "interval"),
        ({"interval": math.inf}, "interval"),
        ({"interval": 1.0, "window_size": 0}, "window_size"),
        ({"interval": 1.0, "window_size": 2.0}, "window_size"),
        ({"interval": 1.0, "margin": -0.1}, "margin"),
        ({"interval": 1.0, "margin": math.nan}, "margin"),
        ({"interval": 1.0, "min_interval": -1.0}, "min_interval"),
    ],
)
def test_invalid_parameters_raise(kwargs: dict[str, object], name: str) -> None:
    """Each parameter is validated with a ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        AdaptiveDetector(**kwargs)  # type: ignore[arg-type]


def test_heartbeat_rejects_nan() -> None:
    """A NaN timestamp is a caller bug and is refused."""
    with pytest.raises(ValueError, match="NaN"):
        AdaptiveDetector(1.0).heartbeat(math.nan)


# -- the O(1) window agrees with Chen's formula ---------------------------------------------


@settings(max_examples=300)
@given(
    gaps=st.lists(st.floats(0.5, 1.5), min_size=1, max_size=60),
    window=st.integers(1, 12),
    estimate=st.booleans(),
)
def test_running_sums_match_chens_formula(gaps: list[float], window: int, estimate: bool) -> None:
    """The O(1) running sums equal Chen's EA (and the least-squares period) from scratch.

    Margin 100 s, so no beat here comes after a deadline and every gap is recorded.
    """
    detector = AdaptiveDetector(1.0, window_size=window, margin=100.0, estimate_period=estimate)
    arrivals = [1000.0]
    for gap in gaps:
        arrivals.append(arrivals[-1] + gap)
    for a in arrivals:
        detector.heartbeat(a)
    recent = arrivals[-window:]
    delta = 1.0
    if estimate and len(recent) > 1:
        delta = statistics.linear_regression(range(len(recent)), recent).slope
    expected = chen_expected_arrival(arrivals, delta, window)
    assert detector.expected_arrival() == pytest.approx(expected, abs=1e-9)
