"""The lease client's timing rules (ZooKeeper's), as plain arithmetic."""

from __future__ import annotations

import pytest

from pulse._core.session_timing import MAX_PING_INTERVAL, ClientTiming


def test_read_timeout_is_two_thirds_of_the_session_timeout() -> None:
    """6 s session → 4 s read timeout."""
    assert ClientTiming(6.0).read_timeout == pytest.approx(4.0)


def test_ping_after_half_the_read_timeout() -> None:
    """6 s session → ping after 2 s without sending."""
    assert ClientTiming(6.0).ping_interval == pytest.approx(2.0)


def test_ping_interval_is_capped() -> None:
    """A 60 s session still pings every 10 s."""
    assert ClientTiming(60.0).ping_interval == MAX_PING_INTERVAL == 10.0


def test_connect_timeout_is_split_across_servers() -> None:
    """One pass over 3 servers fits in one session timeout."""
    assert ClientTiming(9.0, servers=3).connect_timeout == pytest.approx(3.0)


def test_retry_pause_is_bounded() -> None:
    """At most a tenth of the timeout, and never more than 1 s."""
    assert ClientTiming(3.0).retry_pause(0.999) < 0.3
    assert ClientTiming(100.0).retry_pause(0.999) < 1.0
    assert ClientTiming(100.0).retry_pause(0.0) == 0.0


def test_reattach_window_is_positive() -> None:
    """After a read timeout plus the longest pause, time is left before the server may expire
    the session (which happens no earlier than one timeout after the last request)."""
    for timeout in (0.5, 2.0, 6.0, 30.0):
        timing = ClientTiming(timeout)
        assert timing.read_timeout + timing.retry_pause(1.0) < timeout


def test_bad_values_are_refused() -> None:
    """Zero timeout or no servers is an error."""
    with pytest.raises(ValueError):
        ClientTiming(0.0)
    with pytest.raises(ValueError):
        ClientTiming(5.0, servers=0)
