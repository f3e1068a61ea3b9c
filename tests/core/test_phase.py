"""The phase deadline: one bounded stage of a connection, in explicit time."""

from __future__ import annotations

import math

import pytest

from pulse._core.phase import Phase, PhaseDeadline


def test_deadline_is_start_plus_timeout() -> None:
    """A phase started at 10 with a 2 s timeout falls due at 12."""
    assert PhaseDeadline(Phase.CONNECT, 10.0, 2.0).next_deadline() == 12.0


def test_expires_once_at_or_after_the_deadline() -> None:
    """handle_timer says True exactly once, not before the deadline and never again."""
    phase = PhaseDeadline(Phase.HANDSHAKE, 0.0, 1.0)
    assert phase.handle_timer(0.999) is False
    assert phase.handle_timer(1.0) is True
    assert phase.expired
    assert phase.handle_timer(5.0) is False
    assert phase.next_deadline() is None


def test_a_finished_phase_never_expires() -> None:
    """A phase that ended in time has no deadline and ignores late timer calls."""
    phase = PhaseDeadline(Phase.CLOSE, 0.0, 1.0)
    phase.finish()
    assert phase.next_deadline() is None
    assert phase.handle_timer(3.0) is False
    assert not phase.expired


def test_infinite_timeout_has_no_deadline() -> None:
    """math.inf means unbounded: nothing for the timer to do."""
    phase = PhaseDeadline(Phase.EXCHANGE, 0.0, math.inf)
    assert phase.next_deadline() is None
    assert phase.handle_timer(1e12) is False


@pytest.mark.parametrize("timeout", [-1.0, math.nan])
def test_bad_timeouts_are_refused(timeout: float) -> None:
    """A negative or NaN timeout is a programming error, reported at once."""
    with pytest.raises(ValueError, match="connect timeout"):
        PhaseDeadline(Phase.CONNECT, 0.0, timeout)
