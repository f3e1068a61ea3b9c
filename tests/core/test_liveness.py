"""The per-peer liveness machine on explicit times: alive → suspect → dead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.detectors import MissedBeats
from pulse._core.liveness import Liveness, LivenessState
from pulse._core.policy import HeartbeatPolicy, IdleMode
from pulse.actions import Close, LocalPause, PeerAlive, PeerDead, PeerSuspect, SendPing
from pulse.events import DataReceived, DataSent, PongReceived, Tick
from pulse.testing import run_until


def test_silent_peer_is_pinged_suspected_then_declared_dead() -> None:
    """Interval 1, timeout 3: pings at 1 and 2, suspect at 2, dead and closed at 3."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=3.0), now=0.0)
    reason = "no data for 3.000s (timeout 3s)"
    assert run_until(machine, 10.0) == [
        (1.0, SendPing(1, 1.0)),
        (2.0, SendPing(2, 2.0)),
        (2.0, PeerSuspect(missed=1, silent_for=2.0)),
        (3.0, PeerDead(reason, missed=2, silent_for=3.0)),
        (3.0, Close(reason)),
    ]
    assert machine.state is LivenessState.DEAD
    assert machine.next_deadline() is None


def test_dead_is_declared_within_timeout_plus_one_interval_of_the_last_data() -> None:
    """Whatever the phase of the silence, death comes within timeout + interval."""
    for last in (0.0, 0.3, 0.99, 5.5):
        machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=3.0), now=0.0)
        machine.data_received(last)
        dead = [t for t, a in run_until(machine, 100.0) if isinstance(a, PeerDead)]
        assert dead and last < dead[0] <= last + 3.0 + 1.0


def test_peer_that_keeps_sending_is_never_pinged() -> None:
    """Data every 0.5 s under interval 1: no ping, no suspicion, ever."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=3.0), now=0.0)
    actions = []
    t = 0.0
    for _ in range(200):
        t += 0.5
        deadline = machine.next_deadline()
        assert deadline is not None and deadline > t - 0.5
        if deadline <= t:
            actions += machine.handle_timer(deadline)
        actions += machine.data_received(t)
    assert actions == []
    assert machine.pings_sent == 0


def test_pong_measures_rtt_and_restores_a_suspect_peer() -> None:
    """A late pong ends suspicion with PeerAlive and records the round trip."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=5.0), now=0.0)
    assert machine.handle_timer(1.0) == [SendPing(1, 1.0)]
    assert machine.handle_timer(2.0) == [SendPing(2, 2.0), PeerSuspect(missed=1, silent_for=2.0)]
    assert machine.state is LivenessState.SUSPECT
    assert machine.handle(PongReceived(2.25, 2)) == [PeerAlive(after=2.25)]
    assert machine.state is LivenessState.ALIVE
    assert machine.rtt.summary().last == pytest.approx(0.25)
    assert machine.missed == 0


def test_writer_idle_mode_pings_only_when_nothing_was_sent() -> None:
    """In WRITER mode a ping is due one interval after the last write."""
    policy = HeartbeatPolicy(interval=2.0, timeout=10.0, idle_mode=IdleMode.WRITER)
    machine = Liveness(policy, now=0.0)
    machine.handle(DataSent(1.5))
    assert machine.next_deadline() == 3.5
    assert machine.handle_timer(3.5) == [SendPing(1, 3.5)]


def test_disabled_policy_never_acts() -> None:
    """interval=0 and timeout=0 turn heartbeats off entirely."""
    machine = Liveness(HeartbeatPolicy(interval=0, timeout=0), now=0.0)
    assert machine.next_deadline() is None
    assert machine.handle_timer(1e6) == []


def test_local_pause_withholds_the_verdict_until_fresh_evidence() -> None:
    """Waking 60 s late is a local stall: ping at once, give the peer one interval to answer."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=3.0), now=0.0)
    assert machine.next_deadline() == 1.0
    actions = machine.handle_timer(61.0)
    assert actions == [LocalPause(late_by=60.0), SendPing(1, 61.0)]
    assert machine.state is LivenessState.ALIVE
    assert machine.next_deadline() == 62.0
    machine.handle(PongReceived(61.1, 1))
    assert machine.state is LivenessState.ALIVE


def test_local_pause_then_silence_is_still_detected() -> None:
    """After a stall, a peer that stays silent is declared dead one interval later."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=3.0), now=0.0)
    machine.next_deadline()
    machine.handle_timer(61.0)
    deadline = machine.next_deadline()
    assert deadline == 62.0
    actions = machine.handle_timer(deadline)
    assert isinstance(actions[0], PeerDead)


def test_custom_detector_decides_death() -> None:
    """A MissedBeats detector (2 × 1 s) declares death at 2 s, before the policy timeout."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=10.0), now=0.0,
                       detector=MissedBeats(interval=1.0, max_missed=2))
    dead = [t for t, a in run_until(machine, 20.0) if isinstance(a, PeerDead)]
    assert dead == [2.0]


def test_dead_is_final() -> None:
    """Data after death changes nothing."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=3.0), now=0.0)
    run_until(machine, 10.0)
    assert machine.handle(DataReceived(11.0)) == []
    assert machine.handle(Tick(12.0)) == []
    assert machine.state is LivenessState.DEAD


def test_on_demand_ping_is_tracked_for_rtt() -> None:
    """request_ping() sends a tracked heartbeat without counting a missed beat."""
    machine = Liveness(HeartbeatPolicy(interval=10.0, timeout=30.0), now=0.0)
    assert machine.request_ping(0.5) == [SendPing(1, 0.5)]
    machine.pong(0.75, 1)
    assert machine.rtt.summary().last == pytest.approx(0.25)
    assert machine.missed == 0


def test_stats_snapshot() -> None:
    """stats() reports state, pings, pongs, silence and suspicion."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=4.0), now=0.0)
    machine.handle_timer(1.0)
    machine.pong(1.5, 1)
    stats = machine.stats(3.5)
    assert (stats.pings_sent, stats.pongs_received, stats.missed) == (1, 1, 0)
    assert stats.silent_for == pytest.approx(2.0)
    assert stats.suspicion == pytest.approx(0.5)
    assert stats.arrival_mean == pytest.approx(1.5)  # one gap: open at 0.0, pong at 1.5
    assert stats.arrival_std == 0.0


@given(
    interval=st.floats(min_value=0.01, max_value=100.0),
    factor=st.floats(min_value=1.01, max_value=10.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=20),
)
def test_never_dead_while_data_arrives_within_timeout(
    interval: float, factor: float, gaps: list[float]
) -> None:
    """If every gap between arrivals is shorter than the timeout, the peer is never dead."""
    timeout = interval * factor
    machine = Liveness(HeartbeatPolicy(interval=interval, timeout=timeout), now=0.0)
    t = 0.0
    for gap in gaps:
        gap = min(gap, timeout * 0.999)
        target = t + gap
        for _ in range(10_000):
            deadline = machine.next_deadline()
            if deadline is None or deadline > target:
                break
            machine.handle_timer(deadline)
        t = target
        machine.data_received(t)
        assert machine.state is not LivenessState.DEAD


EVENT_KINDS = st.sampled_from(["data", "sent", "pong", "tick", "ping"])


@given(st.lists(st.tuples(EVENT_KINDS, st.floats(min_value=0.0, max_value=5.0),
                          st.integers(min_value=0, max_value=10)), max_size=60))
def test_every_event_is_accepted_in_every_state(steps: list[tuple[str, float, int]]) -> None:
    """Any event sequence in time order is handled in every state; dead stays dead, a tick
    always moves the next deadline past it, and a dead machine asks for no more ticks."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=2.5), now=0.0)
    now = 0.0
    was_dead = False
    for kind, gap, seq in steps:
        now += gap
        inputs: dict[str, DataReceived | DataSent | PongReceived | Tick] = {
            "data": DataReceived(now), "sent": DataSent(now), "pong": PongReceived(now, seq),
            "tick": Tick(now),
        }
        event = inputs.get(kind)
        actions = machine.request_ping(now) if event is None else machine.handle(event)
        if was_dead:
            assert actions == [] and machine.state is LivenessState.DEAD
        was_dead = machine.state is LivenessState.DEAD
        deadline = machine.next_deadline()
        if was_dead:
            assert deadline is None
        elif kind == "tick":
            assert deadline is not None and deadline > now


def test_either_mode_pings_when_one_direction_is_idle() -> None:
    """EITHER (Dubbo): a ping is due once reads *or* writes stop, one interval later."""
    policy = HeartbeatPolicy(interval=2.0, timeout=10.0, idle_mode=IdleMode.EITHER)
    machine = Liveness(policy, now=0.0)
    machine.data_received(1.0)
    machine.data_sent(1.5)
    assert machine.next_deadline() == 3.0  # reads stopped at 1.0
    assert machine.handle_timer(3.0) == [SendPing(1, 3.0)]
    machine.data_received(3.1)
    assert machine.next_deadline() == 5.0  # never two heartbeats closer than the interval


def test_all_mode_needs_both_directions_idle() -> None:
    """ALL (Netty ALL_IDLE): writes alone keep the link from being idle."""
    policy = HeartbeatPolicy(interval=2.0, timeout=10.0, idle_mode=IdleMode.ALL)
    machine = Liveness(policy, now=0.0)
    machine.data_sent(1.5)
    assert machine.next_deadline() == 3.5
    assert machine.handle_timer(3.5) == [SendPing(1, 3.5)]
