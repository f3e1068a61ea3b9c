"""The shared probe of a destination (ProbeGate) and the machine's HELD state, in plain floats."""

from __future__ import annotations

import random

import pytest

from pulse._core.backoff import Backoff, Growth, Jitter
from pulse._core.reconnect import (
    DEFAULT_RELEASE_WINDOW,
    GiveUp,
    Probe,
    ProbeGate,
    ReconnectMachine,
    ReconnectState,
    ReconnectStateError,
    Release,
    StartAttempt,
    default_backoff,
    probe_backoff,
)
from pulse.actions import Reconnect


def gate(window: float = DEFAULT_RELEASE_WINDOW, seed: int = 1, speedup: float = 1.0
         ) -> ProbeGate:
    """A gate whose probes follow 1, 2, 4, … s (no jitter and, unless asked, no speedup, so
    times are exact)."""
    return ProbeGate(Backoff(1.0, 8.0, 2.0, Jitter.NONE, rng=random.Random(seed)),
                     release_window=window, max_speedup=speedup)


def down(g: ProbeGate, members: list[str], now: float = 0.0) -> None:
    """The first member's attempt was refused; the others ask while the gate is down."""
    assert g.unreachable(members[0], now) is True
    for member in members[1:]:
        assert g.request(member, now) is False


# -- the gate ------------------------------------------------------------------------------------


def test_open_gate_lets_every_attempt_through() -> None:
    """With nothing known to be wrong, request() never holds a client back."""
    g = gate()
    assert all(g.request(name, 0.0) for name in "abc")
    assert not g.down and g.idle and g.next_deadline() is None


def test_one_probe_at_a_time_while_down() -> None:
    """After a refusal one member probes at the backoff's time; nobody else is named while
    that probe is in flight, however late it gets."""
    g = gate()
    down(g, ["a", "b", "c"])
    assert g.down and g.outage_since == 0.0
    assert g.next_deadline() == 1.0
    assert g.handle_timer(0.99) == []
    assert g.handle_timer(1.0) == [Probe("a")]
    assert g.prober == "a" and g.waiting == ["b", "c"]
    assert g.next_deadline() is None  # no second probe while one is in flight
    assert g.handle_timer(50.0) == []
    assert g.probes == 1


def test_failed_probe_backs_off_and_passes_to_the_next_member() -> None:
    """A refused probe waits the next (doubled) delay and the longest-waiting member probes
    next; the refused prober goes to the end of the queue."""
    g = gate()
    down(g, ["a", "b", "c"])
    assert g.handle_timer(1.0) == [Probe("a")]
    assert g.unreachable("a", 1.0) is True
    assert g.waiting == ["b", "c", "a"]
    assert g.next_deadline() == 3.0  # delay 2 s
    assert g.handle_timer(3.0) == [Probe("b")]
    assert g.unreachable("b", 3.0) is True
    assert g.next_deadline() == 7.0  # delay 4 s
    assert g.handle_timer(7.0) == [Probe("c")]


def test_probe_comes_more_often_for_more_waiting_members() -> None:
    """After a failed probe the next delay is divided by the number of waiting members, at
    most max_speedup: a lone member probes at its own pace."""
    for members, expected in ((["a"], 3.0), (["a", "b"], 2.0), (list("abcdefgh"), 1.5)):
        g = gate(speedup=4.0)
        down(g, members)
        assert g.next_deadline() == 1.0  # only the first member waited when it closed
        (probe,) = g.handle_timer(1.0)
        assert isinstance(probe, Probe)
        g.unreachable(probe.member, 1.0)
        assert g.next_deadline() == expected  # 1.0 + 2.0 / min(len(members), 4)


def test_probe_delays_are_fully_jittered_and_capped() -> None:
    """The default probe backoff (like a client's default) draws every delay from
    [0, ceiling], the ceiling growing with the outage's age up to the cap."""
    backoff = probe_backoff(default_backoff())
    assert backoff.jitter is Jitter.FULL and backoff.growth is Growth.OUTAGE
    assert backoff.max_attempts is None
    g = ProbeGate(backoff, max_speedup=1.0)
    members = [f"m{i}" for i in range(5)]
    down(g, members)
    now, delays = 0.0, []
    for _ in range(200):
        deadline = g.next_deadline()
        assert deadline is not None
        delays.append((deadline - now, now))
        now = deadline
        (probe,) = g.handle_timer(now)
        assert isinstance(probe, Probe)
        g.unreachable(probe.member, now)
    for delay, at in delays:
        assert 0.0 <= delay <= min(backoff.maximum, max(backoff.initial, at)) + 1e-9
    assert max(d for d, _ in delays) > 0.8 * backoff.maximum  # the cap is reached
    assert len({round(d, 6) for d, _ in delays}) == len(delays)  # jittered, not fixed


def test_probe_that_reaches_releases_everyone_spread_over_the_window() -> None:
    """When the probe reaches the destination each waiting member is released once, at a
    random time within the window after it, spread rather than in one 100 ms."""
    g = gate(window=0.5)
    members = [f"m{i}" for i in range(200)]
    down(g, members)
    assert g.handle_timer(1.0) == [Probe("m0")]
    g.reached("m0", 1.2)
    assert not g.down and g.waiting == [] and g.recovering
    first = g.next_deadline()
    assert first is not None and 1.2 <= first < 1.2 + 0.5
    released: dict[object, float] = {}
    now = 1.2
    while (deadline := g.next_deadline()) is not None:
        now = deadline
        for action in g.handle_timer(now):
            assert isinstance(action, Release)
            assert action.member not in released
            released[action.member] = now
    assert set(released) == set(members[1:])  # everyone but the prober, exactly once
    assert all(1.2 <= t <= 1.7 for t in released.values())
    buckets = {int((t - 1.2) * 10) for t in released.values()}
    assert buckets == {0, 1, 2, 3, 4}
    assert max(sum(1 for t in released.values() if int((t - 1.2) * 10) == b) for b in buckets) < 80


def test_released_member_that_fails_backs_off_on_its_own() -> None:
    """A released member's refused attempt is its own: the gate stays open; once recovery
    is over, a new refusal closes the gate again."""
    g = gate(window=0.5)
    down(g, ["a", "b", "c"])
    assert g.handle_timer(1.0) == [Probe("a")]
    g.reached("a", 1.0)
    actions = g.handle_timer(1.5)
    assert {a.member for a in actions} == {"b", "c"}
    assert g.unreachable("b", 1.6) is False  # falls back to its own backoff
    assert not g.down
    assert g.request("b", 2.0) is True  # its next attempt is not held either
    g.reached("c", 1.6)
    assert not g.recovering and g.idle
    assert g.unreachable("b", 3.0) is True  # the destination is down again
    assert g.down and g.outage_since == 3.0


def test_failure_during_recovery_does_not_close_the_gate() -> None:
    """While released members are pending, another member's refusal is its own too."""
    g = gate(window=0.5)
    down(g, ["a", "b"])
    assert g.handle_timer(1.0) == [Probe("a")]
    g.reached("a", 1.0)
    assert g.recovering
    assert g.unreachable("x", 1.1) is False
    assert not g.down


def test_attempt_already_in_flight_waits_when_it_fails_after_the_gate_closed() -> None:
    """Members whose attempts were in flight when the gate closed wait behind it too."""
    g = gate()
    assert g.request("a", 0.0) and g.request("b", 0.0)
    assert g.unreachable("a", 0.0) is True
    assert g.unreachable("b", 0.01) is True
    assert g.waiting == ["a", "b"]


def test_any_member_reaching_opens_the_gate() -> None:
    """A member that reached the destination (an attempt in flight from before) opens a
    down gate even though the probe has not answered; the late probe failure is then its
    own."""
    g = gate()
    down(g, ["a", "b", "c"])
    assert g.handle_timer(1.0) == [Probe("a")]
    g.reached("x", 1.1)
    assert not g.down
    assert g.unreachable("a", 1.2) is False


def test_waiting_member_that_leaves_is_never_named() -> None:
    """A cancelled waiting member gets neither the probe nor a release."""
    g = gate()
    down(g, ["a", "b", "c"])
    g.leave("a", 0.5)
    assert g.waiting == ["b", "c"]
    assert g.handle_timer(1.0) == [Probe("b")]
    g.leave("c", 1.0)
    g.reached("b", 1.1)
    assert g.next_deadline() is None and g.idle  # nobody left to release


def test_probing_member_that_leaves_hands_the_probe_on_at_once() -> None:
    """Cancelling the member whose attempt is the probe names the next waiting member now."""
    g = gate()
    down(g, ["a", "b", "c"])
    assert g.handle_timer(1.0) == [Probe("a")]
    g.leave("a", 1.3)
    assert g.next_deadline() == 1.3
    assert g.handle_timer(1.3) == [Probe("b")]
    assert g.probes == 2


def test_gate_nobody_waits_on_opens_again() -> None:
    """Once every waiting member left, the gate forgets the outage (the next client finds
    out for itself) and holds no state."""
    g = gate()
    down(g, ["a", "b"])
    g.leave("b", 0.2)
    assert g.down
    g.leave("a", 0.3)
    assert not g.down and g.idle
    assert g.request("c", 0.4) is True


def test_released_member_leaving_ends_recovery() -> None:
    """A member released and then cancelled no longer counts as recovering."""
    g = gate(window=0.0)
    down(g, ["a", "b"])
    assert g.handle_timer(1.0) == [Probe("a")]
    g.reached("a", 1.0)
    assert g.handle_timer(1.0) == [Release("b")]
    assert g.recovering
    g.leave("b", 1.1)
    assert g.idle


def test_reopened_gate_starts_its_backoff_over() -> None:
    """A later outage probes from the first delay again (the backoff reset when the probe
    got through)."""
    g = gate(window=0.0)
    down(g, ["a", "b"])
    for now in (1.0, 3.0):
        (probe,) = g.handle_timer(now)
        assert isinstance(probe, Probe)
        g.unreachable(probe.member, now)
    assert g.next_deadline() == 7.0
    (probe,) = g.handle_timer(7.0)
    assert isinstance(probe, Probe)
    g.reached(probe.member, 7.0)
    g.handle_timer(7.0)
    g.reached("b", 7.1)
    down(g, ["a", "b"], now=20.0)
    assert g.next_deadline() == 21.0


def test_release_window_and_speedup_must_be_sane() -> None:
    """A negative, NaN or infinite release window, or a speedup below 1, is refused."""
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ProbeGate(Backoff(), release_window=bad)
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ProbeGate(Backoff(), max_speedup=bad)


def test_probe_backoff_keeps_the_clients_ceilings_and_jitter() -> None:
    """The gate's backoff copies a client's ceilings and jitter but never gives up."""
    like = Backoff(2.0, 20.0, 3.0, Jitter.EQUAL, max_attempts=4, growth=Growth.ATTEMPTS)
    probe = probe_backoff(like)
    assert (probe.initial, probe.maximum, probe.multiplier) == (2.0, 20.0, 3.0)
    assert probe.jitter is Jitter.EQUAL and probe.max_attempts is None
    assert probe.growth is Growth.ATTEMPTS and probe.rng is like.rng
    like.next_delay()
    like.next_delay()
    assert probe_backoff(like).attempts == 2  # carries on where the client stands
    assert probe_backoff(like).ceiling(probe_backoff(like).attempts) == 18.0


# -- the machine behind a gate -----------------------------------------------------------------


def fixed(**kw: object) -> Backoff:
    return Backoff(1.0, 8.0, 2.0, Jitter.NONE, **kw)  # type: ignore[arg-type]


def test_failed_with_hold_waits_without_a_deadline_of_its_own() -> None:
    """A refused attempt held behind the gate draws no wait and emits no Reconnect."""
    m = ReconnectMachine(fixed())
    m.start(0.0)
    assert m.failed(0.1, "refused", hold=True) == []
    assert m.state is ReconnectState.HELD
    assert m.next_deadline() is None
    assert m.handle_timer(100.0) == []
    assert m.outage_since == 0.1 and m.last_reason == "refused"


def test_release_starts_an_attempt_and_later_failures_back_off_normally() -> None:
    """release() starts one attempt; a failure without hold then waits its own delay."""
    m = ReconnectMachine(fixed())
    m.start(0.0)
    m.failed(0.0, hold=True)
    assert m.release(5.0) == [StartAttempt(attempt=1, total=2)]
    with pytest.raises(ReconnectStateError):
        m.release(5.1)  # an attempt is in flight, not held
    assert m.failed(5.2, "refused") == [Reconnect(delay=2.0, attempt=2)]
    assert m.state is ReconnectState.WAITING


def test_hold_from_idle_and_waiting() -> None:
    """The first connect or a due wait can be turned into a hold; a connection cannot."""
    m = ReconnectMachine(fixed())
    assert m.hold(0.0) == [] and m.state is ReconnectState.HELD
    assert m.outage_since == 0.0
    assert m.release(1.0) == [StartAttempt(attempt=0, total=1)]
    m.failed(1.5, "refused")
    assert m.state is ReconnectState.WAITING
    assert m.hold(2.5) == [] and m.state is ReconnectState.HELD and m.next_deadline() is None
    m.release(3.0)
    m.connected(3.1)
    with pytest.raises(ReconnectStateError):
        m.hold(3.2)


def test_retry_now_while_held_attempts_at_once() -> None:
    """The application's retry_now() ends a hold with an attempt."""
    m = ReconnectMachine(fixed())
    m.hold(0.0)
    assert m.retry_now(0.5) == [StartAttempt(attempt=0, total=1)]


def test_represented_probes_count_towards_max_attempts() -> None:
    """Each failed probe made on a held client's behalf counts as one of its attempts: with
    max_attempts=3 it gives up at the third."""
    m = ReconnectMachine(fixed(max_attempts=3))
    m.start(0.0)
    assert m.failed(0.0, "refused", hold=True) == []  # attempt 1
    assert m.represented(1.0, "probe refused") == []  # attempt 2
    assert m.represented(3.0, "probe refused") == []  # attempt 3
    (give_up,) = m.represented(7.0, "probe refused")
    assert isinstance(give_up, GiveUp)
    assert "3 attempts" in str(give_up.error) and "probe refused" in str(give_up.error)
    assert m.state is ReconnectState.GAVE_UP


def test_max_elapsed_is_the_only_deadline_while_held() -> None:
    """A held client gives up on its own timer once the outage lasted max_elapsed."""
    m = ReconnectMachine(fixed(), max_elapsed=10.0)
    m.start(0.0)
    m.failed(2.0, "refused", hold=True)
    assert m.next_deadline() == 12.0
    assert m.handle_timer(11.9) == []
    (give_up,) = m.handle_timer(12.0)
    assert isinstance(give_up, GiveUp)
    assert "without a stable connection" in str(give_up.error)


def test_represented_ignored_unless_held() -> None:
    """A probe's failure means nothing to a client that is not waiting behind the gate."""
    m = ReconnectMachine(fixed(max_attempts=1))
    m.start(0.0)
    assert m.represented(1.0) == []
    assert m.state is ReconnectState.ATTEMPTING


def test_terminal_machine_ignores_hold_and_release() -> None:
    """Stopped clients ignore late hold/release inputs."""
    m = ReconnectMachine(fixed())
    m.hold(0.0)
    m.stop(0.5)
    assert m.release(1.0) == [] and m.hold(1.0) == []
    assert m.state is ReconnectState.STOPPED
