"""HeartbeatPolicy validation and the negotiation of intervals and timeouts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.policy import (
    HeartbeatPolicy,
    IdleMode,
    NegotiationBounds,
    negotiate,
    negotiate_interval,
)

# -- HeartbeatPolicy --------------------------------------------------------------------------


def test_policy_defaults() -> None:
    """Default: ping after 10 s idle, dead after 30 s (3 intervals), local pause bound 10 s."""
    policy = HeartbeatPolicy()
    assert (policy.interval, policy.timeout, policy.max_local_pause) == (10.0, 30.0, 10.0)
    assert policy.idle_mode is IdleMode.READER
    assert policy.enabled
    assert policy.dead_after == 30.0


def test_timeout_defaults_to_three_intervals() -> None:
    """interval 4 without a timeout gives timeout 12 (Dubbo's 3x rule)."""
    assert HeartbeatPolicy(interval=4.0).dead_after == 12.0


@pytest.mark.parametrize("timeout", [10.0, 5.0, 0.1])
def test_timeout_must_exceed_interval(timeout: float) -> None:
    """A timeout not above the interval would declare a healthy peer dead before pinging it."""
    with pytest.raises(ValueError, match="must exceed interval"):
        HeartbeatPolicy(interval=10.0, timeout=timeout)


def test_timeout_just_above_interval_is_accepted() -> None:
    """Any timeout strictly greater than the interval is valid."""
    assert HeartbeatPolicy(interval=10.0, timeout=10.001).dead_after == 10.001


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interval": -1.0}, "interval"),
        ({"interval": math.nan}, "interval"),
        ({"interval": math.inf}, "interval"),
        ({"interval": True}, "interval"),
        ({"interval": "10"}, "interval"),
        ({"interval": 1.0, "timeout": -3.0}, "timeout"),
        ({"interval": 1.0, "timeout": math.nan}, "timeout"),
        ({"interval": 1.0, "timeout": math.inf}, "timeout"),
        ({"max_local_pause": -1.0}, "max_local_pause"),
        ({"max_local_pause": math.nan}, "max_local_pause"),
        ({"idle_mode": "reader"}, "idle_mode"),
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, object], name: str) -> None:
    """Negative, NaN, infinite and non-numeric values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=name):
        HeartbeatPolicy(**kwargs)  # type: ignore[arg-type]


def test_zero_interval_disables_heartbeats() -> None:
    """interval 0 (timeout defaulted) means no heartbeats and no timeout, like AMQP's 0."""
    policy = HeartbeatPolicy(interval=0.0)
    assert not policy.enabled
    assert policy.dead_after == 0.0
    assert HeartbeatPolicy(0.0, 0.0).enabled is False


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 5.0), (5.0, 0.0)])
def test_zero_on_one_side_only_is_rejected(interval: float, timeout: float) -> None:
    """Heartbeats are off only when interval and timeout are both 0."""
    with pytest.raises(ValueError, match="both 0"):
        HeartbeatPolicy(interval=interval, timeout=timeout)


def test_explicit_local_pause_and_idle_mode_are_kept() -> None:
    """max_local_pause and idle_mode given explicitly are stored as given."""
    policy = HeartbeatPolicy(2.0, 7.0, IdleMode.ALL, max_local_pause=0.5)
    assert (policy.max_local_pause, policy.idle_mode) == (0.5, IdleMode.ALL)


# -- negotiate_interval -----------------------------------------------------------------------

BOUNDS = NegotiationBounds()


@pytest.mark.parametrize(
    ("local", "remote", "expected"),
    [
        (10.0, 5.0, 5.0),  # lower non-zero wins
        (5.0, 10.0, 5.0),
        (0.0, 7.0, 7.0),  # 0 means "use the other side's value"
        (7.0, 0.0, 7.0),
        (0.0, 0.0, 0.0),  # both 0 disables
        (0.01, 0.02, 0.05),  # clamped up to min_interval
        (5000.0, 0.0, 3600.0),  # clamped down to max_interval
    ],
)
def test_negotiate_interval(local: float, remote: float, expected: float) -> None:
    """AMQP's rule with pulse's bounds: lower non-zero wins, 0 defers, both 0 disables."""
    assert negotiate_interval(local, remote, BOUNDS) == expected


@pytest.mark.parametrize(("local", "remote"), [(-1.0, 5.0), (5.0, -1.0), (math.nan, 5.0),
                                               (5.0, math.inf)])
def test_negotiate_interval_rejects_bad_proposals(local: float, remote: float) -> None:
    """Negative, NaN or infinite proposals raise ValueError."""
    with pytest.raises(ValueError, match="interval"):
        negotiate_interval(local, remote, BOUNDS)


def test_bounds_from_tick_are_zookeepers() -> None:
    """tickTime 2 s gives [4 s, 40 s], which clamps 1 s up and 100 s down."""
    bounds = NegotiationBounds.from_tick(2.0)
    assert (bounds.min_interval, bounds.max_interval) == (4.0, 40.0)
    assert negotiate_interval(1.0, 0.0, bounds) == 4.0
    assert negotiate_interval(100.0, 200.0, bounds) == 40.0
    assert negotiate_interval(30.0, 0.0, bounds) == 30.0


@pytest.mark.parametrize("tick", [0.0, -2.0, math.nan])
def test_from_tick_rejects_non_positive_ticks(tick: float) -> None:
    """A tick of 0 would clamp every interval to 0 and silently disable heartbeats."""
    with pytest.raises(ValueError, match="tick"):
        NegotiationBounds.from_tick(tick)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_interval": 10.0, "max_interval": 5.0}, "min_interval"),
        ({"min_interval": 0.0, "max_interval": 0.0}, "max_interval"),
        ({"min_interval": -1.0}, "min_interval"),
        ({"timeout_factor": 1.0}, "timeout_factor"),
        ({"timeout_factor": math.nan}, "timeout_factor"),
        ({"timeout_factor": math.inf}, "timeout_factor"),
    ],
)
def test_bounds_validation(kwargs: dict[str, float], name: str) -> None:
    """Bounds must be ordered, max_interval positive, timeout_factor finite and above 1."""
    with pytest.raises(ValueError, match=name):
        NegotiationBounds(**kwargs)


@given(
    local=st.one_of(st.just(0.0), st.floats(0.001, 1e5)),
    remote=st.one_of(st.just(0.0), st.floats(0.001, 1e5)),
)
def test_negotiate_interval_is_symmetric_and_bounded(local: float, remote: float) -> None:
    """Both peers compute the same value, and it is 0 or inside the bounds."""
    result = negotiate_interval(local, remote, BOUNDS)
    assert result == negotiate_interval(remote, local, BOUNDS)
    if local == 0 and remote == 0:
        assert result == 0
    else:
        assert BOUNDS.min_interval <= result <= BOUNDS.max_interval


# -- negotiate --------------------------------------------------------------------------------


def test_negotiate_takes_the_lower_interval_and_timeout() -> None:
    """(10 s, 30 s) against (5 s, 20 s): interval 5, timeout 20."""
    result = negotiate(HeartbeatPolicy(10.0, 30.0), 5.0, 20.0)
    assert (result.interval, result.timeout) == (5.0, 20.0)


def test_negotiate_zero_remote_timeout_defers_to_local() -> None:
    """A remote timeout of 0 means no opinion: the local 30 s stands."""
    result = negotiate(HeartbeatPolicy(10.0, 30.0), 20.0, 0.0)
    assert (result.interval, result.timeout) == (10.0, 30.0)


def test_negotiate_raises_timeout_to_two_intervals() -> None:
    """Timeouts 15 and 12 with interval 10: min is 12, raised to 2 x 10 = 20."""
    result = negotiate(HeartbeatPolicy(10.0, 15.0), 10.0, 12.0)
    assert result.timeout == 20.0


def test_negotiate_bounds_can_push_the_interval_past_both_timeouts() -> None:
    """Both propose (1 s, 3 s) but min_interval is 5: interval 5, timeout max(3, 10) = 10."""
    bounds = NegotiationBounds(min_interval=5.0)
    result = negotiate(HeartbeatPolicy(1.0, 3.0), 1.0, 3.0, bounds)
    assert (result.interval, result.timeout) == (5.0, 10.0)


def test_negotiate_without_any_timeout_uses_the_factor() -> None:
    """Local off, remote (4 s, no timeout): timeout = timeout_factor 3 x 4 = 12."""
    result = negotiate(HeartbeatPolicy(0.0), 4.0, 0.0)
    assert (result.interval, result.timeout) == (4.0, 12.0)


def test_negotiate_both_off_disables() -> None:
    """Both sides at 0: heartbeats off, idle mode kept."""
    result = negotiate(HeartbeatPolicy(0.0, idle_mode=IdleMode.WRITER), 0.0, 0.0)
    assert not result.enabled
    assert result.idle_mode is IdleMode.WRITER


def test_negotiate_keeps_the_local_idle_mode() -> None:
    """The idle mode is a local choice and survives negotiation."""
    result = negotiate(HeartbeatPolicy(10.0, idle_mode=IdleMode.ALL), 10.0, 30.0)
    assert result.idle_mode is IdleMode.ALL


@pytest.mark.parametrize("remote_timeout", [-1.0, math.nan])
def test_negotiate_rejects_a_bad_remote_timeout(remote_timeout: float) -> None:
    """A negative or NaN remote timeout raises ValueError."""
    with pytest.raises(ValueError, match="remote timeout"):
        negotiate(HeartbeatPolicy(), 10.0, remote_timeout)


@given(
    local_interval=st.floats(0.05, 100.0),
    remote_interval=st.one_of(st.just(0.0), st.floats(0.05, 100.0)),
    remote_timeout=st.one_of(st.just(0.0), st.floats(0.1, 1000.0)),
)
def test_negotiated_policy_is_always_valid(
    local_interval: float, remote_interval: float, remote_timeout: float
) -> None:
    """Any valid proposals give a valid policy whose timeout holds at least two intervals."""
    result = negotiate(HeartbeatPolicy(local_interval), remote_interval, remote_timeout)
    assert result.enabled
    assert result.dead_after >= 2 * result.interval
