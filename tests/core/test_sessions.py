"""The session tracker: ZooKeeper's bucketed expiry on explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.sessions import (
    ID_EPOCH,
    MAX_SERVER_ID,
    SessionTracker,
    compose_session_id,
    server_id_of,
)
from pulse.actions import Expire
from pulse.errors import AuthFailed, SessionExpired

SECRET = b"s" * 32
WALL = ID_EPOCH + 1_000_000.0


def tracker(**kwargs: float) -> SessionTracker:
    return SessionTracker(secret=SECRET, **kwargs)  # type: ignore[arg-type]


def test_bucket_is_rounded_up_to_the_next_tick() -> None:
    """Expiry is ((now + timeout) // tick + 1) * tick, as in ZooKeeper."""
    t = tracker(tick=2.0)
    grant = t.open(0.0, 4.0, WALL)
    assert t.expiry_of(grant.session_id) == 6.0  # (0 + 4) // 2 + 1 = 3 → 6
    other = t.open(1.0, 4.0, WALL)
    assert t.expiry_of(other.session_id) == 6.0  # (1 + 4) // 2 + 1 = 3 → 6: same bucket
    third = t.open(2.5, 4.0, WALL)
    assert t.expiry_of(third.session_id) == 8.0


def test_expiry_happens_exactly_at_the_bucket_time() -> None:
    """A session is not expired a hair before its bucket and is expired at it."""
    t = tracker(tick=2.0)
    grant = t.open(0.0, 4.0, WALL)
    assert t.next_deadline() == 6.0
    assert t.expire(5.999) == []
    assert t.expire(6.0) == [Expire(grant.session_id)]
    assert t.expire(6.0) == []  # reported once


def test_expiry_lies_between_timeout_and_timeout_plus_tick_after_last_touch() -> None:
    """Whatever the phase of the last touch, expiry is in (last + timeout, last + timeout + tick]."""
    t = tracker(tick=0.5)
    for i in range(50):
        now = i * 0.037
        grant = t.open(now, 3.0, WALL)
        expiry = t.expiry_of(grant.session_id)
        assert expiry is not None
        assert now + 3.0 < expiry <= now + 3.0 + 0.5 + 1e-9


def test_touch_moves_the_session_to_a_later_bucket() -> None:
    """A touch postpones expiry; the old bucket no longer holds the session."""
    t = tracker(tick=2.0)
    grant = t.open(0.0, 4.0, WALL)
    assert t.touch(grant.session_id, 3.0)
    assert t.expiry_of(grant.session_id) == 8.0  # (3 + 4) // 2 + 1 = 4 → 8
    assert t.expire(6.0) == []
    assert t.expire(8.0) == [Expire(grant.session_id)]


def test_touch_within_the_same_bucket_changes_nothing() -> None:
    """Touching again in the same tick keeps the bucket (no work, same deadline)."""
    t = tracker(tick=2.0)
    grant = t.open(0.0, 4.0, WALL)
    assert t.touch(grant.session_id, 1.9)
    assert t.expiry_of(grant.session_id) == 6.0


def test_touch_never_moves_a_session_earlier() -> None:
    """A touch with an older time (a late packet) does not shorten the lease."""
    t = tracker(tick=1.0)
    grant = t.open(10.0, 4.0, WALL)
    before = t.expiry_of(grant.session_id)
    assert t.touch(grant.session_id, 5.0)
    assert t.expiry_of(grant.session_id) == before


def test_expiry_visits_only_due_buckets() -> None:
    """Sessions in later buckets survive an expiry check; only the due bucket goes."""
    t = tracker(tick=1.0)
    early = [t.open(0.0, 2.0, WALL).session_id for _ in range(3)]
    late = [t.open(0.0, 10.0, WALL).session_id for _ in range(1000)]
    expired = t.expire(3.0)
    assert sorted(e.session_id for e in expired) == sorted(early)
    assert all(t.is_live(s) for s in late)
    assert t.next_deadline() == 11.0


def test_touching_expired_or_unknown_sessions_fails() -> None:
    """A session flagged by expiry is closing: it cannot be touched back to life."""
    t = tracker(tick=1.0)
    grant = t.open(0.0, 2.0, WALL)
    assert t.expire(3.0) == [Expire(grant.session_id)]
    assert not t.touch(grant.session_id, 3.0)
    assert not t.touch(12345, 3.0)
    assert t.remove(grant.session_id)
    assert grant.session_id not in t


def test_closing_flag_stops_touch_reattach_and_expiry() -> None:
    """A closing session is served no more and never reported by expire()."""
    t = tracker(tick=1.0)
    grant = t.open(0.0, 2.0, WALL)
    assert t.set_closing(grant.session_id)
    assert not t.touch(grant.session_id, 1.0)
    with pytest.raises(SessionExpired):
        t.reattach(grant.session_id, grant.password, 1.0)
    assert t.expire(100.0) == []
    assert t.next_deadline() is None
    assert grant.session_id in t  # until the driver removes it
    assert t.remove(grant.session_id)


@pytest.mark.parametrize(
    ("proposed", "granted"),
    [(0.1, 4.0), (4.0, 4.0), (5.5, 5.5), (40.0, 40.0), (1000.0, 40.0)],
)
def test_timeout_negotiated_into_two_and_twenty_ticks(proposed: float, granted: float) -> None:
    """Default bounds are [2 × tick, 20 × tick]."""
    t = tracker(tick=2.0)
    assert t.open(0.0, proposed, WALL).timeout == granted


def test_explicit_bounds_are_used() -> None:
    """min_timeout / max_timeout override the tick-based defaults."""
    t = tracker(tick=1.0, min_timeout=0.5, max_timeout=3.0)
    assert t.negotiate(0.1) == 0.5
    assert t.negotiate(100) == 3.0
    with pytest.raises(ValueError):
        tracker(tick=1.0, min_timeout=5.0, max_timeout=3.0)


def test_password_is_hmac_of_the_session_id() -> None:
    """Passwords verify for their own id only and depend on the server secret."""
    t = tracker()
    grant = t.open(0.0, 4.0, WALL)
    assert len(grant.password) == 16
    assert t.check_password(grant.session_id, grant.password)
    assert not t.check_password(grant.session_id + 1, grant.password)
    other = SessionTracker(secret=b"x" * 32)
    assert not other.check_password(grant.session_id, grant.password)


def test_wrong_password_refuses_reattach() -> None:
    """Re-attaching with a wrong password raises AuthFailed and does not touch."""
    t = tracker(tick=2.0)
    grant = t.open(0.0, 4.0, WALL)
    with pytest.raises(AuthFailed):
        t.reattach(grant.session_id, b"\x00" * 16, 5.0)
    assert t.expiry_of(grant.session_id) == 6.0
    again = t.reattach(grant.session_id, grant.password, 5.0)
    assert again == grant
    assert t.expiry_of(grant.session_id) == 10.0


def test_reattach_to_an_expired_session_is_refused() -> None:
    """After expiry and removal, the right password still gets SessionExpired."""
    t = tracker(tick=1.0)
    grant = t.open(0.0, 2.0, WALL)
    t.expire(3.0)
    t.remove(grant.session_id)
    with pytest.raises(SessionExpired):
        t.reattach(grant.session_id, grant.password, 3.0)


def test_session_ids_carry_server_id_and_time() -> None:
    """The id layout is server id | milliseconds since 2020 | counter."""
    t = tracker(server_id=5)
    session_id = t.next_session_id(WALL)
    assert server_id_of(session_id) == 5
    assert session_id == compose_session_id(5, WALL)
    assert (session_id >> 16) & ((1 << 40) - 1) == 1_000_000_000
    assert session_id < 2**63


def test_session_ids_unique_across_restarts_even_if_the_clock_steps_back() -> None:
    """A restarted tracker seeded with the last id never reissues an id."""
    first = tracker()
    issued = {first.next_session_id(WALL) for _ in range(1000)}
    restarted = tracker(last_session_id=first.last_session_id)
    later = {restarted.next_session_id(WALL - 3600.0) for _ in range(1000)}
    assert len(issued | later) == 2000
    assert min(later) > max(issued)


def test_session_ids_from_a_fresh_start_follow_the_wall_clock() -> None:
    """Without a persisted last id, a restart one millisecond later starts above the old ids
    as long as fewer than 65536 ids were issued per millisecond."""
    first = tracker()
    issued = [first.next_session_id(WALL) for _ in range(500)]
    restarted = tracker()
    assert restarted.next_session_id(WALL + 0.002) > max(issued)


def test_restore_gives_a_fresh_full_timeout() -> None:
    """A session restored from disk expires one full timeout after the restore time."""
    t = tracker(tick=1.0)
    t.restore(77, 4.0, now=100.0)
    assert t.expiry_of(77) == 105.0
    assert t.last_session_id == 77
    with pytest.raises(ValueError):
        t.restore(77, 4.0, now=100.0)


def test_bad_configuration_is_refused() -> None:
    """Tick, server id and secret are validated."""
    with pytest.raises(ValueError):
        tracker(tick=0.0)
    with pytest.raises(ValueError):
        SessionTracker(secret=SECRET, server_id=MAX_SERVER_ID + 1)
    with pytest.raises(ValueError):
        SessionTracker(secret=b"short")
    with pytest.raises(ValueError):
        tracker().negotiate(float("nan"))


@given(
    st.lists(
        st.tuples(st.sampled_from(["open", "touch", "expire", "close"]),
                  st.floats(min_value=0.0, max_value=5.0), st.integers(0, 20)),
        max_size=60,
    )
)
def test_tracker_matches_a_naive_model(steps: list[tuple[str, float, int]]) -> None:
    """Random opens, touches, closes and expiry checks agree with a scan-everything model."""
    t = tracker(tick=0.5)
    model: dict[int, float] = {}  # session id -> expiry time
    ids: list[int] = []
    now = 0.0
    for op, delta, pick in steps:
        now += delta
        if op == "open":
            grant = t.open(now, 2.0, WALL)
            ids.append(grant.session_id)
            model[grant.session_id] = ((now + grant.timeout) // 0.5 + 1) * 0.5
        elif op == "touch" and ids:
            session_id = ids[pick % len(ids)]
            alive = t.touch(session_id, now)
            assert alive == (session_id in model)
            if alive:
                model[session_id] = max(model[session_id], ((now + 2.0) // 0.5 + 1) * 0.5)
        elif op == "close" and ids:
            session_id = ids[pick % len(ids)]
            t.set_closing(session_id)
            t.remove(session_id)
            model.pop(session_id, None)
        else:
            expired = {e.session_id for e in t.expire(now)}
            due = {s for s, expiry in model.items() if expiry <= now}
            assert expired == due
            for session_id in expired:
                t.remove(session_id)
                del model[session_id]
        deadline = t.next_deadline()
        assert deadline == (min(model.values()) if model else None)
