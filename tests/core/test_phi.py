"""Phi accrual failure detector: values by hand, Akka's behaviour, dead_at, guards."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.detectors import FailureDetector
from pulse._core.phi import MAX_PHI, PhiAccrualFailureDetector, phi_value
from pulse._core.policy import HeartbeatPolicy


def akka_phi(elapsed: float, mean: float, std: float) -> float:
    """Akka's formula as written there (two branches), as an independent oracle."""
    y = (elapsed - mean) / std
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    if elapsed > mean:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


def normal_cdf(y: float) -> float:
    return 0.5 * (1.0 + math.erf(y / math.sqrt(2.0)))


def fed(times: list[float], **kwargs: float) -> PhiAccrualFailureDetector:
    detector = PhiAccrualFailureDetector(**kwargs)  # type: ignore[arg-type]
    for t in times:
        detector.heartbeat(t)
    return detector


# -- the formula ------------------------------------------------------------------------------


def test_phi_at_the_mean_is_log10_2() -> None:
    """At y = 0: exp(0) = 1, F = 1/2, phi = -log10(1/2) = 0.30103."""
    assert phi_value(4.0, 4.0, 0.25) == pytest.approx(0.30103, abs=1e-5)


def test_phi_one_std_after_the_mean() -> None:
    """y = 1: g = 1.5976 + 0.070566 = 1.668166, phi = log10(1 + e^1.668166) = log10(6.30243)."""
    assert phi_value(4.25, 4.0, 0.25) == pytest.approx(0.79951, abs=1e-5)


def test_phi_five_std_after_the_mean() -> None:
    """y = 5: g = 5 (1.5976 + 0.070566 x 25) = 16.80875, phi = 16.80875 / ln 10 = 7.29995."""
    assert phi_value(4.5, 4.0, 0.1) == pytest.approx(7.29995, abs=1e-5)


def test_phi_before_the_mean_is_small() -> None:
    """y = -5: g = -16.80875, phi = log10(1 + e^-16.80875) = 2.177e-8."""
    assert phi_value(-0.5, 0.0, 0.1) == pytest.approx(2.1769e-8, rel=1e-4)


@pytest.mark.parametrize("elapsed", [-3.0, -1.0, -0.2, 0.0, 0.3, 1.0, 2.5, 4.0, 6.0, 10.0])
def test_phi_matches_akkas_two_branch_formula(elapsed: float) -> None:
    """The overflow-free softplus form equals Akka's -log10 expressions where both are finite."""
    assert phi_value(elapsed, 1.0, 1.0) == pytest.approx(akka_phi(elapsed, 1.0, 1.0), rel=1e-9)


def test_logistic_cdf_is_close_to_the_normal_cdf() -> None:
    """1 - 10^-phi is the CDF; the logistic approximation stays within 2e-4 of the normal CDF."""
    worst = max(
        abs((1 - 10 ** -phi_value(y / 100, 0.0, 1.0)) - normal_cdf(y / 100))
        for y in range(-400, 401)
    )
    assert worst < 2e-4


def test_phi_handles_outliers_without_overflow() -> None:
    """Ten std past the mean gives phi near 38; absurd silences give a capped finite phi."""
    assert phi_value(10.0, 0.0, 1.0) == pytest.approx(37.58, abs=0.01)
    assert phi_value(-25.0, 0.0, 1.0) == 0.0
    assert phi_value(1e300, 0.0, 0.1) == MAX_PHI
    assert phi_value(math.inf, 0.0, 0.1) == MAX_PHI
    assert phi_value(-math.inf, 0.0, 0.1) == 0.0
    assert phi_value(math.nan, 0.0, 0.1) == 0.0


# -- the detector -----------------------------------------------------------------------------


def test_implements_the_failure_detector_protocol() -> None:
    """PhiAccrualFailureDetector satisfies the FailureDetector protocol."""
    assert isinstance(PhiAccrualFailureDetector(), FailureDetector)


def test_no_opinion_before_the_first_heartbeat() -> None:
    """A peer never heard from has phi 0, is not dead and has no deadline."""
    detector = PhiAccrualFailureDetector()
    assert detector.phi(1e6) == 0.0
    assert not detector.is_dead(1e6)
    assert detector.dead_at() is None
    assert "no heartbeat" in detector.explain(1e6)


def test_first_heartbeat_seeds_mean_and_std_like_akka() -> None:
    """Seeds 0.75 and 1.25: mean 1.0, std 0.25; at t = 1 + 3 + 0.25 phi is the y = 1 value."""
    detector = fed([0.0])
    assert detector.sample_count == 2
    assert detector.mean() == pytest.approx(1.0)
    assert detector.std_deviation() == pytest.approx(0.25)
    assert detector.phi(4.0) == pytest.approx(0.30103, abs=1e-5)
    assert detector.phi(4.25) == pytest.approx(0.79951, abs=1e-5)


def test_phi_increases_with_silence() -> None:
    """The longer nothing arrives, the higher phi (never lower; strictly once above 1e-300)."""
    detector = fed([0.0, 1.0, 2.0, 3.0])
    values = [detector.phi(3.0 + k / 10) for k in range(0, 120)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    visible = values[20:]
    assert all(a < b for a, b in itertools.pairwise(visible))


def test_regular_heartbeats_raise_phi_faster() -> None:
    """Same mean (1 s), same silence (4.5 s): std 0.1 gives phi 7.30, std 0.5 gives 0.80.

    Window of 10 with 11 gaps, so the seeds are gone: regular gaps have std 0 -> floor 0.1,
    y = (4.5 - 4) / 0.1 = 5; alternating 0.5/1.5 gaps have std 0.5, y = 1.
    """
    regular = fed([float(k) for k in range(12)], max_sample_size=10)
    t, times = 0.0, [0.0]
    for k in range(11):
        t += 0.5 if k % 2 else 1.5
        times.append(t)
    irregular = fed(times, max_sample_size=10)
    assert regular.std_deviation() == pytest.approx(0.1)
    assert irregular.std_deviation() == pytest.approx(0.5)
    assert regular.phi(11.0 + 4.5) == pytest.approx(7.29995, abs=1e-4)
    assert irregular.phi(times[-1] + 4.5) == pytest.approx(0.79951, abs=1e-4)


def test_missed_heartbeats_make_the_peer_dead() -> None:
    """Beats at 0, 1, 1.1 (threshold 3, no pause): window 0.75, 1.25, 1.0, 0.1.

    mean 0.775, var = (0.5625 + 1.5625 + 1 + 0.01) / 4 - 0.775^2 = 0.183125, std 0.42793.
    0.1 s later y = -1.5774, phi 0.0257 (alive); 7.1 s later y = 14.78, phi 109.2 (dead).
    """
    detector = fed([0.0, 1.0, 1.1], threshold=3.0, acceptable_heartbeat_pause=0.0)
    assert detector.phi(1.2) == pytest.approx(0.025714, abs=1e-5)
    assert not detector.is_dead(1.2)
    assert detector.phi(8.2) == pytest.approx(109.21, abs=0.01)
    assert detector.is_dead(8.2)


def test_acceptable_pause_tolerates_a_missed_heartbeat() -> None:
    """Beats 0..3 then a 4 s gap: window mean 1.0, std 0.158; with 3 s pause phi(7) = 0.301."""
    detector = fed([0.0, 1.0, 2.0, 3.0])
    assert detector.phi(7.0) == pytest.approx(0.30103, abs=1e-5)
    detector.heartbeat(7.0)
    assert not detector.is_dead(7.5)


def test_without_pause_the_same_gap_is_fatal() -> None:
    """With no acceptable pause, 4 s of silence after 1 s beats is y = 3/0.158 = 19, dead."""
    detector = fed([0.0, 1.0, 2.0, 3.0], acceptable_heartbeat_pause=0.0)
    assert detector.is_dead(7.0)


def test_window_keeps_only_max_sample_size_gaps() -> None:
    """After the 100 ms gaps are pushed out, phi is as if only 500 ms gaps were ever seen."""
    a = fed([0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 1.5, 2.0, 2.5, 3.0], max_sample_size=3)
    b = fed([10.0, 10.5, 11.0, 11.5, 12.0], max_sample_size=3)
    assert a.mean() == pytest.approx(b.mean())
    assert a.phi(3.0 + 4.0) == pytest.approx(b.phi(12.0 + 4.0))


def test_heartbeat_after_death_is_not_recorded() -> None:
    """The gap that ends a dead period leaves the window alone; the next normal gap counts."""
    detector = fed([0.0, 1.0, 2.0])
    before = (detector.sample_count, detector.mean())
    assert detector.is_dead(300.0)
    detector.heartbeat(300.0)
    assert (detector.sample_count, detector.mean()) == before
    assert detector.last_heartbeat == 300.0
    assert not detector.is_dead(301.0)
    detector.heartbeat(301.0)
    assert detector.sample_count == before[0] + 1


def test_min_interval_floors_fast_arrivals() -> None:
    """A busy link (1 ms gaps) must not make the next idle-time heartbeat look late.

    Window 10, twenty arrivals 1 ms apart, then pulse's heartbeat 10 s later (interval 10 s).
    Raw gaps: mean 0.001, std floor 0.1, so phi passes 8 at 0.001 + 3 + 0.52 = 3.52 s: a
    false death. Floored at 10 s: mean 10, dead only after 10 + 3 + 0.52 = 13.52 s.
    """
    times = [k / 1000 for k in range(20)]
    floored = fed(times, min_interval=10.0, max_sample_size=10)
    raw = fed(times, max_sample_size=10)
    heartbeat_due = times[-1] + 10.0
    assert floored.mean() == pytest.approx(10.0)
    assert raw.mean() == pytest.approx(0.001)
    assert raw.is_dead(heartbeat_due)
    assert not floored.is_dead(heartbeat_due)
    assert floored.dead_at() == pytest.approx(times[-1] + 13.5225987, abs=1e-6)


def test_min_interval_raises_the_first_estimate() -> None:
    """With min_interval 10 s the seed is 7.5 and 12.5 s (mean 10, std 2.5), not 0.75/1.25."""
    detector = fed([0.0], min_interval=10.0)
    assert detector.mean() == pytest.approx(10.0)
    assert detector.std_deviation() == pytest.approx(2.5)


def test_dead_at_for_regular_beats_by_hand() -> None:
    """Regular 1 s beats, window 10: mean 1, std 0.1, pause 3.

    phi = 8 when g = ln(10^8 - 1) = 18.420681, i.e. 0.070566 y^3 + 1.5976 y = 18.420681,
    y = 5.225987; dead_at = last + 1 + 3 + 0.5225987 = last + 4.5225987.
    """
    detector = fed([float(k) for k in range(12)], max_sample_size=10)
    deadline = detector.dead_at()
    assert deadline is not None
    assert deadline == pytest.approx(11.0 + 4.5225987, abs=1e-6)
    assert detector.is_dead(deadline)
    assert not detector.is_dead(math.nextafter(deadline, 0.0))
    assert not detector.is_dead(deadline - 1e-6)
    assert detector.phi(deadline) == pytest.approx(8.0, abs=1e-6)


def test_dead_at_right_after_the_first_heartbeat() -> None:
    """Seed mean 1, std 0.25: dead_at = 0 + 1 + 3 + 5.225987 x 0.25 = 5.3064967."""
    detector = fed([0.0])
    assert detector.dead_at() == pytest.approx(5.3064967, abs=1e-6)


@pytest.mark.parametrize("threshold", [0.05, 0.5, 1.0, 3.0, 8.0, 16.0, 100.0])
def test_dead_at_matches_is_dead_for_many_thresholds(threshold: float) -> None:
    """dead_at() is the first float at which phi reaches the threshold, low or high."""
    detector = fed([0.0, 1.0, 2.2, 2.9], threshold=threshold)
    deadline = detector.dead_at()
    assert deadline is not None
    assert detector.is_dead(deadline)
    assert not detector.is_dead(math.nextafter(deadline, -math.inf))


def test_dead_at_is_recomputed_after_each_heartbeat() -> None:
    """A new heartbeat moves the deadline by at least the time elapsed."""
    detector = fed([0.0, 1.0])
    first = detector.dead_at()
    detector.heartbeat(2.0)
    second = detector.dead_at()
    assert first is not None and second is not None
    assert second > first


def test_explain_names_phi_and_threshold() -> None:
    """explain() says phi, the threshold, the silence and the rhythm it compares against."""
    text = fed([0.0, 1.0]).explain(6.0)
    assert "threshold 8" in text
    assert "5.000s of silence" in text
    assert text.startswith("phi ")


def test_for_policy_uses_interval_and_timeout() -> None:
    """interval 10, timeout 30: seed mean 10, std 2.5, pause 20 -> dead_at 30 + 13.065."""
    detector = PhiAccrualFailureDetector.for_policy(HeartbeatPolicy(interval=10.0, timeout=30.0))
    assert detector.min_interval == 10.0
    assert detector.acceptable_heartbeat_pause == 20.0
    detector.heartbeat(0.0)
    assert detector.dead_at() == pytest.approx(30.0 + 5.225987 * 2.5, abs=1e-5)


def test_for_policy_rejects_disabled_heartbeats() -> None:
    """A policy with heartbeats off has nothing for a detector to watch."""
    with pytest.raises(ValueError, match="disabled"):
        PhiAccrualFailureDetector.for_policy(HeartbeatPolicy(interval=0.0))


def test_heartbeat_rejects_nan() -> None:
    """A NaN timestamp is a caller bug and is refused."""
    with pytest.raises(ValueError, match="NaN"):
        PhiAccrualFailureDetector().heartbeat(math.nan)


def test_out_of_order_heartbeat_does_not_move_time_back() -> None:
    """An earlier timestamp than the last one keeps the last arrival."""
    detector = fed([0.0, 5.0])
    detector.heartbeat(4.0)
    assert detector.last_heartbeat == 5.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", 0.0),
        ("threshold", -1.0),
        ("threshold", math.nan),
        ("threshold", math.inf),
        ("threshold", 1e301),
        ("max_sample_size", 1),
        ("max_sample_size", True),
        ("max_sample_size", 2.5),
        ("min_std_deviation", 0.0),
        ("acceptable_heartbeat_pause", -0.1),
        ("acceptable_heartbeat_pause", math.nan),
        ("first_heartbeat_estimate", 0.0),
        ("min_interval", -1.0),
        ("min_interval", math.inf),
    ],
)
def test_invalid_parameters_raise(name: str, value: float) -> None:
    """Each parameter is validated with a ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        PhiAccrualFailureDetector(**{name: value})  # type: ignore[arg-type]


@given(
    elapsed=st.floats(-1e6, 1e6),
    mean=st.floats(0, 1e3),
    std=st.floats(1e-3, 1e3),
)
def test_phi_is_finite_and_non_negative(elapsed: float, mean: float, std: float) -> None:
    """phi never overflows, never goes negative, never becomes NaN for finite input."""
    value = phi_value(elapsed, mean, std)
    assert 0.0 <= value <= MAX_PHI
