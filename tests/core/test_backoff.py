"""Reconnect backoff: ceilings, jitter bounds, determinism, attempt limits, reset rules."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.backoff import Backoff, Growth, Jitter

seeds = st.integers(0, 2**32 - 1)
initials = st.floats(0.001, 10.0)
multipliers = st.floats(1.0, 10.0)
attempt_counts = st.integers(1, 60)


def delays(backoff: Backoff, count: int) -> list[float]:
    out = []
    for _ in range(count):
        delay = backoff.next_delay()
        assert delay is not None
        out.append(delay)
    return out


def test_no_jitter_doubles_up_to_the_maximum() -> None:
    """NONE: 0.1 x 2^n capped at 30 gives 0.1, 0.2, ..., 25.6, then 30 for ever."""
    backoff = Backoff(jitter=Jitter.NONE)
    assert delays(backoff, 11) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert backoff.attempts == 11


def test_ceiling_never_overflows() -> None:
    """A huge attempt number gives the maximum, not an OverflowError or inf."""
    backoff = Backoff()
    assert backoff.ceiling(10_000) == 30.0
    assert backoff.ceiling(0) == 0.1
    with pytest.raises(ValueError, match="attempt"):
        backoff.ceiling(-1)


def test_multiplier_one_is_constant() -> None:
    """multiplier 1: every ceiling equals initial."""
    backoff = Backoff(initial=2.0, maximum=5.0, multiplier=1.0, jitter=Jitter.NONE)
    assert delays(backoff, 5) == [2.0] * 5


@given(seed=seeds, initial=initials, multiplier=multipliers, count=attempt_counts)
def test_full_jitter_bounds(seed: int, initial: float, multiplier: float, count: int) -> None:
    """FULL: attempt n lies in [0, min(maximum, initial x multiplier^n)]."""
    backoff = Backoff(initial, initial * 100, multiplier, Jitter.FULL, rng=random.Random(seed))
    for n, delay in enumerate(delays(backoff, count)):
        assert 0.0 <= delay <= backoff.ceiling(n)


@given(seed=seeds, initial=initials, multiplier=multipliers, count=attempt_counts)
def test_equal_jitter_bounds(seed: int, initial: float, multiplier: float, count: int) -> None:
    """EQUAL: attempt n lies in [cap_n / 2, cap_n]."""
    backoff = Backoff(initial, initial * 100, multiplier, Jitter.EQUAL, rng=random.Random(seed))
    for n, delay in enumerate(delays(backoff, count)):
        cap = backoff.ceiling(n)
        assert cap / 2 <= delay <= cap


@given(seed=seeds, initial=initials, count=attempt_counts)
def test_decorrelated_jitter_bounds(seed: int, initial: float, count: int) -> None:
    """DECORRELATED: each delay in [initial, min(maximum, 3 x previous)], previous from initial."""
    maximum = initial * 100
    backoff = Backoff(initial, maximum, jitter=Jitter.DECORRELATED, rng=random.Random(seed))
    previous = initial
    for delay in delays(backoff, count):
        assert initial <= delay <= maximum
        assert delay <= 3 * previous * (1 + 1e-12)
        previous = delay


@given(seed=seeds, count=attempt_counts)
def test_no_jitter_is_exactly_the_ceiling(seed: int, count: int) -> None:
    """NONE ignores the rng: attempt n is exactly the ceiling."""
    backoff = Backoff(jitter=Jitter.NONE, rng=random.Random(seed))
    assert delays(backoff, count) == [backoff.ceiling(n) for n in range(count)]


@pytest.mark.parametrize("jitter", list(Jitter))
def test_seeded_rng_is_deterministic(jitter: Jitter) -> None:
    """The same seed gives the same sequence; another seed a different one (unless NONE)."""
    first = delays(Backoff(jitter=jitter, rng=random.Random(42)), 20)
    again = delays(Backoff(jitter=jitter, rng=random.Random(42)), 20)
    other = delays(Backoff(jitter=jitter, rng=random.Random(43)), 20)
    assert first == again
    assert (first == other) == (jitter is Jitter.NONE)


@pytest.mark.parametrize("jitter", [Jitter.FULL, Jitter.EQUAL, Jitter.DECORRELATED])
def test_every_attempt_is_jittered(jitter: Jitter) -> None:
    """Not only the first delay: attempts 2..10 also differ between two seeds."""
    a = delays(Backoff(jitter=jitter, rng=random.Random(1)), 10)
    b = delays(Backoff(jitter=jitter, rng=random.Random(2)), 10)
    assert all(x != y for x, y in zip(a[1:], b[1:], strict=True))


def test_max_attempts_then_none() -> None:
    """Three attempts, then None for ever; the counter stops at 3."""
    backoff = Backoff(max_attempts=3, rng=random.Random(0))
    assert all(d is not None for d in (backoff.next_delay() for _ in range(3)))
    assert backoff.exhausted
    assert backoff.next_delay() is None
    assert backoff.next_delay() is None
    assert backoff.attempts == 3


def test_zero_max_attempts_never_retries() -> None:
    """max_attempts 0 means no retry at all."""
    assert Backoff(max_attempts=0).next_delay() is None


def test_reset_starts_over() -> None:
    """reset() sets the counter to 0 and the next ceiling back to initial."""
    backoff = Backoff(jitter=Jitter.NONE, max_attempts=2)
    delays(backoff, 2)
    assert backoff.next_delay() is None
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 0.1


def test_long_lived_connection_resets() -> None:
    """Up for 30 s (reset_after 30): the next attempt starts from the initial delay again."""
    backoff = Backoff(jitter=Jitter.NONE)
    delays(backoff, 5)
    backoff.connected(100.0)
    backoff.disconnected(130.0)
    assert backoff.attempts == 0
    assert backoff.next_delay() == 0.1


def test_short_lived_connection_does_not_reset() -> None:
    """Up for 29.9 s: the counter survives, the next delay keeps growing."""
    backoff = Backoff(jitter=Jitter.NONE)
    delays(backoff, 5)
    backoff.connected(100.0)
    backoff.disconnected(129.9)
    assert backoff.attempts == 5
    assert backoff.next_delay() == 3.2


def test_flapping_peer_is_not_hammered() -> None:
    """A peer that drops every connection after 1 s sees the delays climb to the maximum."""
    backoff = Backoff(jitter=Jitter.NONE)
    now = 0.0
    seen = []
    for _ in range(12):
        delay = backoff.next_delay()
        assert delay is not None
        seen.append(delay)
        now += delay
        backoff.connected(now)
        now += 1.0
        backoff.disconnected(now)
    assert seen[-1] == 30.0
    assert seen == sorted(seen)


def test_disconnect_without_connect_does_not_reset() -> None:
    """disconnected() with no connected() before it (a failed attempt) keeps the counter."""
    backoff = Backoff(jitter=Jitter.NONE)
    delays(backoff, 3)
    backoff.disconnected(1e9)
    assert backoff.attempts == 3


def test_decorrelated_state_resets_too() -> None:
    """After a reset the decorrelated delay is again within [initial, 3 x initial]."""
    backoff = Backoff(jitter=Jitter.DECORRELATED, rng=random.Random(7))
    delays(backoff, 30)
    backoff.connected(0.0)
    backoff.disconnected(60.0)
    for _ in range(50):
        backoff.reset()
        delay = backoff.next_delay()
        assert delay is not None and 0.1 <= delay <= 0.3 * (1 + 1e-12)


def _first_delay_buckets(jitter: Jitter, attempt: int, initial: float) -> Counter[int]:
    """Delays of attempt ``attempt`` for 1000 clients (seeds 0..999), in 10 ms buckets."""
    buckets: Counter[int] = Counter()
    for seed in range(1000):
        backoff = Backoff(initial=initial, maximum=60.0, jitter=jitter, rng=random.Random(seed))
        delay = delays(backoff, attempt + 1)[-1]
        buckets[int(delay // 0.01)] += 1
    return buckets


def test_thousand_clients_first_delays_are_spread() -> None:
    """FULL jitter, initial 1 s: 1000 first delays fill 100 buckets of 10 ms, none over 3 %."""
    buckets = _first_delay_buckets(Jitter.FULL, 0, 1.0)
    assert max(buckets.values()) <= 30
    assert len(buckets) >= 95


def test_thousand_clients_later_delays_are_spread() -> None:
    """The fifth attempt (ceiling 16 s) spreads over 1600 buckets: none holds over 1 %."""
    buckets = _first_delay_buckets(Jitter.FULL, 4, 1.0)
    assert max(buckets.values()) <= 10


def test_without_jitter_all_clients_collide() -> None:
    """The control: with NONE all 1000 clients land in the same 10 ms bucket."""
    assert max(_first_delay_buckets(Jitter.NONE, 0, 1.0).values()) == 1000


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"initial": 0.0}, "initial"),
        ({"initial": -1.0}, "initial"),
        ({"initial": math.nan}, "initial"),
        ({"maximum": math.inf}, "maximum"),
        ({"initial": 5.0, "maximum": 1.0}, "maximum"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": math.nan}, "multiplier"),
        ({"jitter": "full"}, "jitter"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"reset_after": -1.0}, "reset_after"),
        ({"rng": 42}, "rng"),
    ],
)
def test_invalid_parameters_raise(kwargs: dict[str, object], name: str) -> None:
    """Each parameter is validated with a ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_outage_growth_follows_the_outage_age_not_the_attempt_count() -> None:
    """Growth.OUTAGE: the ceiling is max(initial, multiplier x elapsed), capped; draws stay
    below it however many attempts came before."""
    backoff = Backoff(2.0, 20.0, 1.5, Jitter.FULL, rng=random.Random(3), growth=Growth.OUTAGE)
    assert backoff.outage_ceiling(0.0) == 2.0
    assert backoff.outage_ceiling(1.0) == 2.0
    assert backoff.outage_ceiling(10.0) == 15.0
    assert backoff.outage_ceiling(100.0) == 20.0
    for _ in range(50):  # many attempts at age 1 s: never above the 2 s window
        delay = backoff.next_delay(1.0)
        assert delay is not None and 0.0 <= delay <= 2.0
    late = [backoff.next_delay(12.0) for _ in range(200)]
    assert max(d for d in late if d is not None) > 10.0  # the window widened to 18 s
    assert Backoff(2.0, 20.0, 1.5, Jitter.NONE, growth=Growth.OUTAGE).next_delay(4.0) == 6.0
    with pytest.raises(ValueError):
        Backoff(growth="outage")  # type: ignore[arg-type]
