"""Dubbo's per-channel heartbeat rules (pure core, explicit ``now`` floats)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.channel_heartbeat import (
    ChannelHeartbeat,
    ChannelState,
    ChannelTiming,
    Role,
)
from pulse.actions import Close, LocalPause, PeerAlive, PeerDead, PeerSuspect, SendPing


def machine(
    role: Role = Role.CONSUMER, heartbeat: float = 60.0, timeout: float | None = None, now: float = 0.0
) -> ChannelHeartbeat:
    ids = itertools.count(100)
    return ChannelHeartbeat(
        role, ChannelTiming(heartbeat, timeout), now, next_request_id=ids.__next__
    )


def run_until(ch: ChannelHeartbeat, end: float, *, answer: bool = False) -> list[tuple[float, object]]:
    """Tick at every deadline up to ``end``; optionally answer each heartbeat at once."""
    log: list[tuple[float, object]] = []
    for _ in range(10_000):
        nd = ch.next_deadline()
        if nd is None or nd > end:
            break
        for action in ch.handle_timer(nd):
            log.append((nd, action))
            if answer and isinstance(action, SendPing):
                ch.write(nd)
                ch.heartbeat_response(nd + 0.01, action.seq)
    return log


def test_defaults_are_dubbos() -> None:
    """Heartbeat 60 s, timeout three heartbeats."""
    timing = ChannelTiming()
    assert timing.heartbeat == 60.0
    assert timing.heartbeat_timeout == 180.0


def test_timeout_below_two_heartbeats_is_refused() -> None:
    """Like Dubbo, a heartbeat_timeout under 2 x heartbeat raises ValueError."""
    with pytest.raises(ValueError, match="at least 2 x heartbeat"):
        ChannelTiming(10.0, 19.9)
    assert ChannelTiming(10.0, 20.0).heartbeat_timeout == 20.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_heartbeat_is_refused(bad: float) -> None:
    """Negative, NaN and infinite heartbeats raise ValueError."""
    with pytest.raises(ValueError):
        ChannelTiming(bad)


def test_idle_channel_sends_a_heartbeat_after_one_period() -> None:
    """Nothing read or written for ``heartbeat`` seconds: a heartbeat with a fresh id."""
    ch = machine()
    assert ch.next_deadline() == 60.0
    assert ch.handle_timer(59.9) == []
    assert ch.handle_timer(60.0) == [SendPing(100, 60.0)]
    assert ch.is_heartbeat_id(100)


def test_either_direction_idle_triggers_a_heartbeat() -> None:
    """Reads alone do not keep the writer side from heartbeating, nor writes the reader."""
    reader_busy = machine()
    writer_busy = machine()
    for t in range(5, 60, 5):
        reader_busy.read(float(t))
        writer_busy.write(float(t))
    assert [type(a) for a in reader_busy.handle_timer(60.0)] == [SendPing]
    assert [type(a) for a in writer_busy.handle_timer(60.0)] == [SendPing]


def test_two_way_traffic_suppresses_heartbeats() -> None:
    """A channel that reads and writes every few seconds never sends a heartbeat."""
    ch = machine(heartbeat=10.0)
    for t in range(1, 600):
        ch.read(float(t))
        ch.write(float(t))
        nd = ch.next_deadline()
        assert nd is not None and nd > t
        assert ch.handle_timer(float(t)) == []
    assert ch.heartbeats_sent == 0


def test_silent_peer_is_dead_after_the_timeout_consumer() -> None:
    """Consumer: heartbeats at 60 and 120 go unanswered; at 180 s: suspect, dead, close."""
    ch = machine(Role.CONSUMER)
    log = run_until(ch, 400.0)
    kinds = [(t, type(a)) for t, a in log]
    assert kinds == [
        (60.0, SendPing),
        (120.0, SendPing),
        (120.0, PeerSuspect),
        (180.0, PeerDead),
        (180.0, Close),
    ]
    dead = log[3][1]
    assert isinstance(dead, PeerDead) and dead.missed == 2 and dead.silent_for == 180.0
    assert "heartbeat_timeout 180" in dead.reason
    assert ch.state is ChannelState.DEAD
    assert ch.next_deadline() is None
    assert ch.handle_timer(1000.0) == []


def test_silent_peer_is_closed_after_the_timeout_provider() -> None:
    """Provider: same rule with a custom timeout (2.5 heartbeats): close at 25 s."""
    ch = machine(Role.PROVIDER, heartbeat=10.0, timeout=25.0)
    log = run_until(ch, 100.0)
    closes = [(t, a) for t, a in log if isinstance(a, Close)]
    assert len(closes) == 1 and closes[0][0] == 25.0


def test_answered_heartbeats_keep_the_channel_alive_and_measure_rtt() -> None:
    """An answering peer is never declared dead; each answer records its round trip."""
    ch = machine(heartbeat=1.0)
    log = run_until(ch, 100.0, answer=True)
    assert not any(isinstance(a, PeerDead | Close) for _, a in log)
    assert ch.heartbeats_answered == ch.heartbeats_sent >= 90
    summary = ch.rtt.summary()
    assert summary.count == ch.heartbeats_answered
    assert summary.avg == pytest.approx(0.01)


def test_any_read_revives_a_suspect_peer() -> None:
    """After a missed heartbeat the peer is suspect; an application frame makes it alive."""
    ch = machine(heartbeat=10.0)
    run_until(ch, 20.0)
    assert ch.state is ChannelState.SUSPECT and ch.missed == 1
    assert ch.read(21.0) == [PeerAlive(after=21.0)]
    assert ch.stats(21.0).state is ChannelState.ALIVE and ch.missed == 0
    assert ch.next_deadline() == pytest.approx(30.0)  # write-idle since the heartbeat at 20


def test_heartbeat_requests_from_the_peer_count_as_reads() -> None:
    """A peer's heartbeat request resets the read timeout (it is proof of life)."""
    ch = machine(heartbeat=10.0)
    for t in (9.0, 18.0, 27.0, 36.0):
        ch.heartbeat_request(t)
        ch.write(t)  # our answer
    assert ch.heartbeats_received == 4
    assert not any(isinstance(a, Close) for _, a in run_until(ch, 60.0))
    assert ch.state is not ChannelState.DEAD


def test_unknown_heartbeat_response_still_proves_life() -> None:
    """A response to an id we do not know records no RTT but counts as a read."""
    ch = machine(heartbeat=10.0)
    ch.heartbeat_response(15.0, 9999)
    assert ch.rtt.count == 0
    assert ch.last_read == 15.0


def test_a_late_tick_is_a_local_pause_not_a_dead_peer() -> None:
    """Waking long after the deadline withholds the verdict and sends a heartbeat at once."""
    ch = machine(heartbeat=10.0)
    assert ch.next_deadline() == 10.0
    actions = ch.handle_timer(500.0)  # the process was stopped for minutes
    assert isinstance(actions[0], LocalPause) and actions[0].late_by == 490.0
    assert [type(a) for a in actions[1:]] == [SendPing]
    assert ch.state is ChannelState.ALIVE
    nd = ch.next_deadline()
    assert nd == 510.0
    # An answer in time saves the channel; without it the verdict follows.
    ch.heartbeat_response(500.2, actions[1].seq)  # type: ignore[union-attr]
    assert not any(isinstance(a, Close) for _, a in run_until(ch, 520.0, answer=True))


def test_no_answer_after_a_local_pause_still_ends_in_a_verdict() -> None:
    """The pause guard only postpones: a peer that stays silent is declared dead."""
    ch = machine(heartbeat=10.0)
    ch.next_deadline()
    ch.handle_timer(500.0)
    log = run_until(ch, 600.0)
    assert [t for t, a in log if isinstance(a, Close)] == [510.0]


def test_disabled_heartbeat_never_fires() -> None:
    """heartbeat=0 turns off both heartbeats and the timeout."""
    ch = machine(heartbeat=0.0)
    assert ch.timing.heartbeat_timeout == 0.0
    assert ch.next_deadline() is None
    assert ch.handle_timer(1e9) == []


def test_closed_channel_is_inert() -> None:
    """After close() nothing is due and events are ignored."""
    ch = machine()
    ch.close()
    assert ch.state is ChannelState.CLOSED
    assert ch.next_deadline() is None
    assert ch.read(5.0) == [] and ch.handle_timer(1000.0) == []


def test_stats_snapshot() -> None:
    """stats() reports role, state, counters and silences at ``now``."""
    ch = machine(Role.PROVIDER, heartbeat=10.0)
    ch.read(3.0)
    ch.write(4.0)
    stats = ch.stats(9.0)
    assert stats.role is Role.PROVIDER and stats.state is ChannelState.ALIVE
    assert stats.silent_for == 6.0 and stats.write_idle_for == 5.0
    assert stats.heartbeats_sent == 0 and stats.rtt.count == 0


def test_in_flight_ids_are_bounded() -> None:
    """Only the most recent unanswered heartbeat ids are remembered."""
    ch = machine(heartbeat=1.0, timeout=10_000.0)
    run_until(ch, 500.0)
    assert ch.heartbeats_sent >= 400
    assert sum(ch.is_heartbeat_id(i) for i in range(100, 100 + ch.heartbeats_sent)) == 64


@settings(max_examples=200, deadline=None)
@given(
    heartbeat=st.floats(0.05, 100.0),
    factor=st.floats(2.0, 6.0),
    events=st.lists(st.tuples(st.sampled_from(["read", "write", "tick"]), st.floats(0, 50)), max_size=60),
)
def test_verdict_and_heartbeat_invariants(
    heartbeat: float, factor: float, events: list[tuple[str, float]]
) -> None:
    """Never dead before the timeout of read silence; heartbeats at least one period apart."""
    ch = machine(heartbeat=heartbeat, timeout=heartbeat * factor)
    now = 0.0
    last_ping = None
    for kind, gap in events:
        now += gap
        if kind == "read":
            ch.read(now)
        elif kind == "write":
            ch.write(now)
        else:
            before = ch.last_read
            nd = ch.next_deadline()
            if nd is None:
                break
            now = max(now, nd) if gap < 25 else now  # mostly tick on time, sometimes early
            for action in ch.handle_timer(now):
                if isinstance(action, PeerDead):
                    assert now - before >= heartbeat * factor - 1e-9
                if isinstance(action, SendPing):
                    if last_ping is not None:
                        assert now - last_ping >= heartbeat - 1e-9
                    last_ping = now
