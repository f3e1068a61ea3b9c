"""The session tracker's local-pause guard: a server stall expires no session (issue 10, row 10)."""

from __future__ import annotations

import pytest

from pulse._core.sessions import ID_EPOCH, SessionTracker
from pulse.actions import Expire

SECRET = b"s" * 32
WALL = ID_EPOCH + 1_000_000.0


def guarded(**kwargs: float) -> SessionTracker:
    return SessionTracker(secret=SECRET, tick=2.0, max_local_pause=1.0, **kwargs)  # type: ignore[arg-type]


def run_checks(t: SessionTracker, start: float, end: float) -> list[Expire]:
    """Call the timer the way a healthy driver does: at every deadline from start to end."""
    expired: list[Expire] = []
    now = start
    while True:
        deadline = t.next_deadline()
        if deadline is None or deadline > end:
            return expired
        now = max(now, deadline)
        expired += t.expire(now)


def test_watchdog_deadline_comes_every_half_pause_while_sessions_exist() -> None:
    """With the guard on, next_deadline is at most max_local_pause / 2 after the last check."""
    t = guarded()
    assert t.next_deadline() is None
    t.open(0.0, 4.0, WALL)
    assert t.next_deadline() == 0.5
    assert t.expire(0.5) == []
    assert t.next_deadline() == 1.0


def test_stall_shorter_than_timeout_expires_nothing() -> None:
    """Checks every 0.5 s, then none for 1.5 s across the bucket: the session gets the stall back."""
    t = guarded()
    grant = t.open(0.0, 4.0, WALL)  # expires at 6.0
    assert run_checks(t, 0.0, 5.0) == []
    # the loop stalls from 5.0 to 6.5: the bucket (6.0) fell inside the stall
    assert t.expire(6.5) == []
    assert t.is_live(grant.session_id)
    expiry = t.expiry_of(grant.session_id)
    assert expiry is not None and expiry >= 6.0 + 1.5
    # a request processed after the stall renews it as usual
    assert t.touch(grant.session_id, 6.6)
    assert t.expiry_of(grant.session_id) == 12.0


def test_without_the_guard_the_same_stall_expires_the_session() -> None:
    """Control: the unguarded tracker expires the session at the late check (ZooKeeper's behaviour)."""
    t = SessionTracker(secret=SECRET, tick=2.0)
    grant = t.open(0.0, 4.0, WALL)
    assert t.expire(5.0) == []
    assert t.expire(6.5) == [Expire(grant.session_id)]


def test_dead_session_still_expires_after_the_stall_is_given_back() -> None:
    """A session nobody renews expires by (its expiry + the stall), rounded up to a tick."""
    t = guarded()
    grant = t.open(0.0, 4.0, WALL)
    run_checks(t, 0.0, 5.0)
    assert t.expire(6.5) == []
    expired = run_checks(t, 6.5, 10.0)
    assert expired == [Expire(grant.session_id)]


def test_on_time_checks_expire_at_the_bucket() -> None:
    """No stall: the guarded tracker expires exactly when the unguarded one does."""
    t = guarded()
    grant = t.open(0.0, 4.0, WALL)
    assert run_checks(t, 0.0, 5.9) == []
    assert t.expire(6.0) == [Expire(grant.session_id)]


def test_only_sessions_due_inside_the_stall_are_moved() -> None:
    """Sessions due after the stall keep their expiry; sessions due inside it get the stall."""
    t = guarded()
    early = t.open(0.0, 4.0, WALL)  # 6.0
    late = t.open(3.0, 6.0, WALL)  # 10.0
    run_checks(t, 0.0, 5.0)
    t.expire(7.0)  # stall 5.0 -> 7.0
    assert t.expiry_of(late.session_id) == 10.0
    expiry = t.expiry_of(early.session_id)
    assert expiry is not None and expiry >= 8.0
    assert t.stalls == 1


def test_first_session_after_idle_time_is_not_a_stall() -> None:
    """A server idle without sessions for an hour does not count the hour as a stall."""
    t = guarded()
    first = t.open(0.0, 4.0, WALL)
    t.remove(first.session_id)
    grant = t.open(3600.0, 4.0, WALL)
    assert run_checks(t, 3600.0, 3606.0) == [Expire(grant.session_id)]
    assert t.stalls == 0


def test_max_local_pause_must_be_positive() -> None:
    """A zero or negative pause bound is refused."""
    with pytest.raises(ValueError):
        SessionTracker(secret=SECRET, max_local_pause=0.0)
