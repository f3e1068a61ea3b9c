"""The hashed timing wheel: O(1) schedule/cancel, never early, at most one tick late."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.wheel import HashedWheel, Timer


def test_fires_at_the_first_tick_at_or_after_the_deadline() -> None:
    """A timer due between two ticks fires at the later tick, not before."""
    wheel: HashedWheel[str] = HashedWheel(0.0, tick=1.0, slots=8)
    wheel.schedule(2.5, "a")
    assert wheel.next_deadline() == 3.0
    assert wheel.handle_timer(2.99) == []
    assert wheel.handle_timer(3.0) == ["a"]
    assert len(wheel) == 0
    assert wheel.next_deadline() is None


def test_deadline_on_a_tick_fires_on_that_tick() -> None:
    """A deadline exactly on a tick boundary fires at that tick (float rounding included)."""
    wheel: HashedWheel[int] = HashedWheel(0.0, tick=0.1, slots=16)
    for i, deadline in enumerate([0.3, 0.7, 0.6, 1.1]):
        wheel.schedule(deadline, i)
    fired = []
    while (nd := wheel.next_deadline()) is not None:
        fired += [(nd, item) for item in wheel.handle_timer(nd)]
    assert [item for _, item in fired] == [0, 2, 1, 3]
    for when, item in fired:
        deadline = [0.3, 0.7, 0.6, 1.1][item]
        assert when >= deadline and when - deadline < 0.1 + 1e-9


def test_past_deadline_fires_on_the_next_tick() -> None:
    """A deadline that already passed is not lost: it fires on the next tick."""
    wheel: HashedWheel[str] = HashedWheel(10.0, tick=1.0)
    wheel.handle_timer(15.0)
    wheel.schedule(3.0, "late")
    assert wheel.next_deadline() == 16.0
    assert wheel.handle_timer(15.5) == []
    assert wheel.handle_timer(16.0) == ["late"]


def test_cancel_is_final_and_idempotent() -> None:
    """A cancelled timer never fires; cancelling twice reports False the second time."""
    wheel: HashedWheel[str] = HashedWheel(0.0, tick=1.0, slots=4)
    keep = wheel.schedule(2.0, "keep")
    drop = wheel.schedule(2.0, "drop")
    assert wheel.cancel(drop) is True
    assert wheel.cancel(drop) is False
    assert not drop.pending and keep.pending
    assert wheel.handle_timer(100.0) == ["keep"]
    assert wheel.cancel(keep) is False


def test_timers_beyond_one_revolution_wait_for_their_round() -> None:
    """A timer several revolutions away shares a slot but fires only in its own round."""
    wheel: HashedWheel[str] = HashedWheel(0.0, tick=1.0, slots=4)
    wheel.schedule(2.0, "near")
    wheel.schedule(10.0, "far")  # same slot as tick 2 (10 mod 4 == 2)
    assert wheel.handle_timer(2.0) == ["near"]
    assert wheel.next_deadline() == 10.0
    assert wheel.handle_timer(9.0) == []
    assert wheel.handle_timer(10.0) == ["far"]


def test_big_jump_returns_everything_due_in_deadline_order() -> None:
    """Advancing over many revolutions at once returns all due items, earliest first."""
    wheel: HashedWheel[float] = HashedWheel(0.0, tick=1.0, slots=4)
    deadlines = [37.0, 3.0, 12.5, 5.0, 100.0]
    for d in deadlines:
        wheel.schedule(d, d)
    assert wheel.handle_timer(50.0) == [3.0, 5.0, 12.5, 37.0]
    assert wheel.next_deadline() == 100.0


def test_reschedule_moves_the_item() -> None:
    """Rescheduling cancels the old timer and files the item at the new deadline."""
    wheel: HashedWheel[str] = HashedWheel(0.0, tick=1.0)
    timer = wheel.schedule(5.0, "x")
    moved = wheel.reschedule(timer, 2.0)
    assert not timer.pending and moved.pending
    assert wheel.handle_timer(2.0) == ["x"]
    assert wheel.handle_timer(10.0) == []


def test_time_does_not_run_backwards() -> None:
    """An earlier ``now`` than already processed does nothing."""
    wheel: HashedWheel[str] = HashedWheel(0.0, tick=1.0)
    wheel.handle_timer(5.0)
    wheel.schedule(7.0, "x")
    assert wheel.handle_timer(3.0) == []
    assert wheel.current_tick == 5


def test_slots_round_up_to_a_power_of_two() -> None:
    """The slot count is a power of two so that a tick's slot is a bit mask."""
    assert HashedWheel(0.0, slots=100).slots == 128
    assert HashedWheel(0.0, slots=1).slots == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"tick": 0.0}, {"tick": -1.0}, {"tick": math.inf}, {"slots": 0}, {"slots": 2.5}],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, float]) -> None:
    """Non-positive or non-finite ticks and non-positive slot counts raise ValueError."""
    with pytest.raises(ValueError):
        HashedWheel(0.0, **kwargs)  # type: ignore[arg-type]


def test_non_finite_deadline_is_rejected() -> None:
    """A NaN or infinite deadline raises ValueError instead of corrupting the wheel."""
    wheel: HashedWheel[str] = HashedWheel(0.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            wheel.schedule(bad, "x")


operations = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.floats(-5.0, 400.0)),
        st.tuples(st.just("cancel"), st.integers(0, 200)),
        st.tuples(st.just("advance"), st.floats(0.0, 60.0)),
        st.tuples(st.just("sleep"), st.just(0.0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=operations,
    tick=st.sampled_from([0.1, 0.25, 1.0, 3.0]),
    slots=st.sampled_from([1, 2, 8, 128]),
)
def test_wheel_matches_a_naive_model(
    ops: list[tuple[str, float]], tick: float, slots: int
) -> None:
    """Against a plain dict: never early, at most a tick late, in order, exact next_deadline."""
    wheel: HashedWheel[int] = HashedWheel(0.0, tick=tick, slots=slots)
    timers: list[Timer[int]] = []
    model: dict[int, float] = {}  # id -> deadline, pending only
    latest: dict[int, float] = {}  # id -> the time it must have fired by, plus one tick
    now = 0.0
    for op, value in ops:
        if op == "schedule":
            ident = len(timers)
            timers.append(wheel.schedule(now + value, ident))
            model[ident] = now + value
            latest[ident] = max(now + value, now)  # a past deadline fires on the next tick
        elif op == "cancel" and timers:
            ident = int(value) % len(timers)
            assert wheel.cancel(timers[ident]) == (ident in model)
            model.pop(ident, None)
        elif op in ("advance", "sleep"):
            if op == "sleep":
                nd = wheel.next_deadline()
                if nd is None:
                    continue
                target = nd
            else:
                target = now + value
            fired = wheel.handle_timer(target)
            assert set(fired) <= set(model)
            for ident in fired:
                assert model[ident] <= target + 1e-9  # never early
            # Everything due more than one tick ago has fired.
            assert {i for i in model if latest[i] <= target - tick} <= set(fired)
            fire_ticks = [timers[i].tick for i in fired]
            assert fire_ticks == sorted(fire_ticks)
            for ident in fired:
                del model[ident]
            now = max(now, target)
        assert len(wheel) == len(model)
        nd = wheel.next_deadline()
        if not model:
            assert nd is None
        else:
            assert nd is not None
            earliest = min(timers[i].tick for i in model)
            assert nd == wheel.tick_time(earliest)
            for ident in model:
                assert wheel.tick_time(timers[ident].tick) >= model[ident] or (
                    timers[ident].tick == wheel.current_tick + 1
                )
