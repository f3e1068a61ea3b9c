"""The reconnect supervisor machine: single flight, jitter bounds, give-up rules, resets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.backoff import Backoff, Growth, Jitter
from pulse._core.reconnect import (
    GiveUp,
    ReconnectMachine,
    ReconnectState,
    ReconnectStateError,
    StartAttempt,
    default_backoff,
)
from pulse.actions import Reconnect
from pulse.errors import ReconnectGaveUp


def fixed(initial: float = 1.0, maximum: float = 8.0, **kw: object) -> Backoff:
    return Backoff(initial, maximum, 2.0, Jitter.NONE, **kw)  # type: ignore[arg-type]


def test_first_connect_is_immediate_and_single() -> None:
    """start() hands out one attempt at once; a second start() or retry_now() adds none."""
    m = ReconnectMachine(fixed())
    assert m.start(0.0) == [StartAttempt(attempt=0, total=1)]
    assert m.state is ReconnectState.ATTEMPTING
    assert m.next_deadline() is None
    assert m.start(0.1) == []
    assert m.retry_now(0.2) == []
    assert m.total_attempts == 1


def test_failed_attempts_wait_the_backoff_then_start_on_the_timer() -> None:
    """A failure schedules Reconnect(delay); handle_timer starts the attempt only when due."""
    m = ReconnectMachine(fixed())
    m.start(0.0)
    assert m.failed(0.5, "refused") == [Reconnect(delay=1.0, attempt=1)]
    assert m.state is ReconnectState.WAITING
    assert m.next_deadline() == 1.5
    assert m.handle_timer(1.49) == []
    assert m.handle_timer(1.5) == [StartAttempt(attempt=1, total=2)]
    assert m.next_deadline() is None
    assert m.failed(2.0, "refused") == [Reconnect(delay=2.0, attempt=2)]
    assert m.next_deadline() == 4.0
    assert m.last_reason == "refused"


def test_delays_are_capped() -> None:
    """Ceilings double per attempt and stop at the backoff's maximum."""
    m = ReconnectMachine(fixed(1.0, 5.0))
    m.start(0.0)
    now, delays = 0.0, []
    for _ in range(6):
        (wait,) = m.failed(now)
        assert isinstance(wait, Reconnect)
        delays.append(wait.delay)
        now += wait.delay
        m.handle_timer(now)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_first_delay_after_a_loss_is_jittered() -> None:
    """With full jitter, the first wait after losing a connection is uniform(0, initial), not 0."""
    delays = []
    for seed in range(200):
        m = ReconnectMachine(Backoff(2.0, 30.0, rng=random.Random(seed)))
        m.start(0.0)
        m.connected(0.1)
        (wait,) = m.lost(5.0)
        assert isinstance(wait, Reconnect)
        delays.append(wait.delay)
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 1.8  # spread over the whole window
    assert len(set(delays)) == len(delays)


def test_lost_during_a_wait_is_a_driver_bug() -> None:
    """Reporting an end with no attempt in flight raises ReconnectStateError."""
    m = ReconnectMachine(fixed())
    m.start(0.0)
    m.failed(1.0)
    with pytest.raises(ReconnectStateError):
        m.lost(1.5)
    with pytest.raises(ReconnectStateError):
        m.connected(1.5)
    with pytest.raises(ReconnectStateError):
        ReconnectMachine(fixed()).failed(0.0)


def test_retry_now_cuts_the_wait_short() -> None:
    """retry_now during a wait starts the attempt at once and clears the deadline."""
    m = ReconnectMachine(fixed())
    m.start(0.0)
    m.failed(0.0)
    assert m.retry_now(0.3) == [StartAttempt(attempt=1, total=2)]
    assert m.next_deadline() is None
    assert m.handle_timer(1.0) == []  # the old deadline does not start a second attempt


def test_backoff_resets_only_after_a_stable_connection() -> None:
    """A connection shorter than reset_after keeps backing off; a longer one starts over."""
    m = ReconnectMachine(fixed(1.0, 30.0, reset_after=10.0))
    m.start(0.0)
    m.connected(0.0)
    assert m.lost(1.0) == [Reconnect(1.0, 1)]
    m.handle_timer(2.0)
    m.connected(2.0)
    assert m.lost(5.0) == [Reconnect(2.0, 2)]  # up 3 s: flapping, keeps backing off
    m.handle_timer(7.0)
    m.connected(7.0)
    assert m.lost(17.0) == [Reconnect(1.0, 1)]  # up 10 s: stable, starts over
    assert m.connects == 3


def test_max_attempts_gives_up_with_reconnect_gave_up() -> None:
    """Once the backoff's attempts are used up the machine emits GiveUp and stays down."""
    m = ReconnectMachine(fixed(max_attempts=2))
    m.start(0.0)
    now = 0.0
    for expected in (1.0, 2.0):
        assert m.failed(now, "refused") == [Reconnect(expected, int(expected))]
        now += expected
        assert m.handle_timer(now)
    (action,) = m.failed(now, "refused")
    assert isinstance(action, GiveUp)
    assert isinstance(action.error, ReconnectGaveUp)
    assert "gave up after 2 attempts: refused" in str(action.error)
    assert m.state is ReconnectState.GAVE_UP
    assert m.retry_now(now) == [] and m.start(now) == [] and m.failed(now) == []


def test_max_elapsed_counts_from_the_start_of_the_outage() -> None:
    """max_elapsed gives up once the outage (since the first failure) lasted that long."""
    m = ReconnectMachine(fixed(1.0, 4.0), max_elapsed=10.0)
    m.start(0.0)
    m.connected(0.0)
    now = 100.0
    (wait,) = m.lost(now)  # the outage starts here, not at the connect
    while True:
        assert isinstance(wait, Reconnect)
        now += wait.delay
        m.handle_timer(now)
        (wait,) = m.failed(now)
        if isinstance(wait, GiveUp):
            break
    assert now - 100.0 >= 10.0
    assert now - 100.0 < 10.0 + 4.0  # at most one capped wait beyond the limit
    assert "without a stable connection" in str(wait.error)


def test_max_elapsed_restarts_after_a_stable_connection() -> None:
    """A stable connection ends the outage: the elapsed limit counts afresh after it."""
    m = ReconnectMachine(fixed(1.0, 4.0, reset_after=5.0), max_elapsed=6.0)
    m.start(0.0)
    m.failed(0.0)
    m.handle_timer(1.0)
    m.connected(1.0)
    (wait,) = m.lost(20.0)  # 19 s after the outage began, but it was stable for 19 s
    assert isinstance(wait, Reconnect)


def test_give_up_on_the_peers_word_and_stop() -> None:
    """give_up() ends supervision with the given error; stop() ends it silently."""
    error = ReconnectGaveUp("HTTP 403")
    m = ReconnectMachine(fixed())
    m.start(0.0)
    assert m.give_up(0.1, "HTTP 403", error) == [GiveUp(error)]
    assert m.finished
    s = ReconnectMachine(fixed())
    s.start(0.0)
    s.failed(0.0)
    assert s.stop(0.5) == []
    assert s.state is ReconnectState.STOPPED
    assert s.next_deadline() is None
    assert s.handle_timer(5.0) == []
    assert s.connected(5.0) == []  # late reports after a stop are ignored


def test_rejects_a_bad_max_elapsed() -> None:
    """max_elapsed must be a positive number of seconds."""
    with pytest.raises(ValueError):
        ReconnectMachine(max_elapsed=0.0)


INPUTS = st.lists(
    st.tuples(
        st.sampled_from(["timer", "retry", "connected", "failed", "lost", "start"]),
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=INPUTS,
    seed=st.integers(0, 2**32 - 1),
    initial=st.floats(0.01, 5.0),
    factor=st.floats(1.0, 100.0),
    jitter=st.sampled_from(list(Jitter)),
    growth=st.sampled_from(list(Growth)),
)
def test_never_two_attempts_in_flight_and_delays_within_bounds(
    steps: list[tuple[str, float]], seed: int, initial: float, factor: float, jitter: Jitter,
    growth: Growth,
) -> None:
    """Whatever the inputs, attempts never overlap and every delay lies within its jitter
    bounds: [0, ceiling] for full jitter, never above the cap, never before its deadline."""
    maximum = initial * factor
    backoff = Backoff(initial, maximum, 2.0, jitter, rng=random.Random(seed), growth=growth)
    m = ReconnectMachine(backoff)
    in_flight = 0
    now = 0.0
    m.start(now)
    in_flight = 1
    wait_until: float | None = None
    for name, dt in steps:
        now += dt
        if name in ("connected", "failed", "lost") and m.state not in (
            ReconnectState.ATTEMPTING, ReconnectState.CONNECTED,
        ):
            with pytest.raises(ReconnectStateError):
                getattr(m, name)(now)
            continue
        if name == "connected" and m.state is ReconnectState.CONNECTED:
            continue  # a driver reports connected once per attempt
        attempts_before = m.backoff.attempts
        outage_before = m.outage_since
        actions = {
            "timer": m.handle_timer, "retry": m.retry_now, "start": m.start,
            "connected": m.connected, "failed": m.failed, "lost": m.lost,
        }[name](now)
        if name in ("failed", "lost"):
            in_flight -= 1
        for action in actions:
            if isinstance(action, StartAttempt):
                assert in_flight == 0, "a second attempt while one is in flight"
                if name == "timer":
                    assert wait_until is not None and now >= wait_until
                in_flight += 1
                wait_until = None
            elif isinstance(action, Reconnect):
                if growth is Growth.ATTEMPTS:
                    ceiling = backoff.ceiling(attempts_before)
                else:  # the outage began at this end, or earlier if one was running
                    since = now if outage_before is None else outage_before
                    assert m.outage_since == since
                    ceiling = min(maximum, max(initial, 2.0 * (now - since)))
                assert 0.0 <= action.delay <= maximum
                if jitter is Jitter.FULL:
                    assert action.delay <= ceiling
                elif jitter is Jitter.EQUAL:
                    assert ceiling / 2 <= action.delay <= ceiling
                elif jitter is Jitter.NONE:
                    assert action.delay == ceiling
                else:
                    assert initial <= action.delay or action.delay == maximum
                wait_until = now + action.delay
                assert m.next_deadline() == wait_until
        assert in_flight in (0, 1)
        assert (m.state in (ReconnectState.ATTEMPTING, ReconnectState.CONNECTED)) == (in_flight == 1)


def test_lost_and_failed_follow_the_backoff_until_exhausted() -> None:
    """(Formerly the Dubbo Reconnector's rule) a lost channel then failed attempts yield
    Reconnect(delay, attempt) with doubling delays until max_attempts, then GiveUp."""
    m = ReconnectMachine(Backoff(1.0, 8.0, 2.0, Jitter.NONE, max_attempts=4))
    m.start(0.0)
    m.connected(0.0)
    assert m.lost(5.0) == [Reconnect(delay=1.0, attempt=1)]
    now = 6.0
    for delay, attempt in ((2.0, 2), (4.0, 3), (8.0, 4)):
        m.handle_timer(now)
        assert m.failed(now) == [Reconnect(delay=delay, attempt=attempt)]
        now += delay
    m.handle_timer(now)
    (action,) = m.failed(now)
    assert isinstance(action, GiveUp)
    assert m.connects == 1


def test_outage_growth_bounds_the_wait_by_the_outage_age() -> None:
    """Growth.OUTAGE: every wait is at most max(initial, multiplier x outage age), whatever
    the attempt count, and a failure late in an outage draws from a wider window."""
    m = ReconnectMachine(Backoff(3.0, 30.0, 1.0, Jitter.NONE, growth=Growth.OUTAGE))
    m.start(0.0)
    m.connected(0.0)
    assert m.lost(100.0) == [Reconnect(3.0, 1)]  # age 0: the initial window
    m.handle_timer(103.0)
    assert m.failed(103.0) == [Reconnect(3.0, 2)]  # age 3: still 3
    m.handle_timer(106.0)
    assert m.failed(110.0) == [Reconnect(10.0, 3)]  # age 10: ceiling 10
    m.handle_timer(120.0)
    assert m.failed(150.0) == [Reconnect(30.0, 4)]  # age 50: capped at 30


def test_default_backoff_spreads_a_herd_and_bounds_its_return() -> None:
    """1,000 default clients losing a server that is back 2 s later: their first attempts
    spread over the 3 s window and every one of them is back within 3 s of the server."""
    rng = random.Random(5)
    down_until = 2.0
    first: list[float] = []
    back: list[float] = []
    attempts = 0
    for _ in range(1000):
        backoff = default_backoff()
        backoff.rng = random.Random(rng.random())
        m = ReconnectMachine(backoff)
        m.start(-60.0)
        m.connected(-60.0)
        (wait,) = m.lost(0.0)
        assert isinstance(wait, Reconnect)
        first.append(wait.delay)
        while True:
            now = m.next_deadline()
            assert now is not None
            m.handle_timer(now)
            attempts += 1
            if now >= down_until:
                m.connected(now)
                back.append(now)
                break
            (wait,) = m.failed(now)
            assert isinstance(wait, Reconnect)
    assert max(first) - min(first) > 2.9  # spread over the whole first window
    assert max(back) - down_until <= 3.0
    assert attempts < 2.5 * 1000  # websockets' clients made ~2,350 for the same outage
