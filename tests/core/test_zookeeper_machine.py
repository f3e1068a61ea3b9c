"""The ZooKeeper session machine: ZooKeeper's client timing, with explicit ``now`` floats."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.errors import LocalProtocolError
from pulse.plugins.zookeeper._machine import (
    Connect,
    Disconnect,
    Phase,
    SendPing,
    SessionMachine,
    StateChanged,
)
from pulse.plugins.zookeeper.jute import ConnectResponse
from pulse.presence import SessionState

HOSTS = [("a", 1), ("b", 2), ("c", 3)]
PASSWORD = b"s" * 16


def _states(actions: Sequence[object]) -> list[SessionState]:
    return [a.event.state for a in actions if isinstance(a, StateChanged)]


def _connected(timeout: float = 3.0, now: float = 0.0, hosts: list[tuple[str, int]] = HOSTS,
               session_id: int = 77) -> SessionMachine:
    machine = SessionMachine(hosts, timeout, random.Random(1))
    _, connect = machine.start(now)
    assert isinstance(connect, Connect)
    actions = machine.handshake_done(now, ConnectResponse(int(timeout * 1000), session_id, PASSWORD))
    assert _states(actions) == [SessionState.CONNECTED]
    return machine


def test_first_attempt_is_immediate_and_asks_for_a_new_session() -> None:
    """start() begins the first connect at once, with session id 0 and a zero password."""
    machine = SessionMachine(HOSTS, 6.0, random.Random(0))
    actions = machine.start(10.0)
    assert _states(actions) == [SessionState.CONNECTING]
    connect = actions[-1]
    assert isinstance(connect, Connect)
    assert machine.next_deadline() == 10.0 + 2.0  # its connect timeout
    assert connect.request.session_id == 0 and connect.request.password == bytes(16)
    assert connect.request.timeout_ms == 6000
    assert connect.host in HOSTS


def test_hosts_are_shuffled_by_the_given_rng() -> None:
    """The host order comes from the caller's random generator (reproducible)."""
    hosts = [(f"h{i}", i) for i in range(8)]
    first = SessionMachine(hosts, 1.0, random.Random(5)).hosts
    assert first == SessionMachine(hosts, 1.0, random.Random(5)).hosts
    assert sorted(first) == sorted(hosts)
    assert any(SessionMachine(hosts, 1.0, random.Random(s)).hosts != hosts for s in range(5))


def test_connect_timeout_is_session_timeout_over_host_count() -> None:
    """An attempt with no handshake after T/n is dropped and the next host is tried."""
    machine = SessionMachine(HOSTS, 6.0, random.Random(0))
    first = machine.start(0.0)[-1]
    assert isinstance(first, Connect)
    assert machine.next_deadline() == pytest.approx(2.0)
    assert machine.handle_timer(1.999) == []
    actions = machine.handle_timer(2.0)
    assert isinstance(actions[0], Disconnect) and "connect timeout" in actions[0].reason
    retry = machine.next_deadline()
    assert retry is not None and 2.0 <= retry <= 2.0 + machine.reconnect_jitter
    [second] = machine.handle_timer(retry)
    assert isinstance(second, Connect) and second.host != first.host


def test_read_timeout_and_ping_interval_follow_zookeeper() -> None:
    """Read timeout is 2/3 of the negotiated timeout; a ping goes out after half of it idle."""
    machine = _connected(timeout=3.0)
    assert machine.read_timeout == pytest.approx(2.0)
    assert machine.ping_interval == pytest.approx(1.0)
    assert machine.next_deadline() == pytest.approx(1.0)
    assert machine.handle_timer(0.999) == []
    assert machine.handle_timer(1.0) == [SendPing()]
    machine.received(1.01)
    assert machine.next_deadline() == pytest.approx(2.0)


def test_ping_interval_is_capped_at_10_seconds() -> None:
    """With a 60 s session the idle ping still goes out every 10 s, not 20 s."""
    machine = _connected(timeout=60.0)
    assert machine.ping_interval == 10.0
    assert machine.handle_timer(10.0) == [SendPing()]


def test_sending_postpones_the_ping() -> None:
    """Any request sent counts as activity: the ping waits for send-idleness."""
    machine = _connected(timeout=3.0)
    machine.sent(0.8)
    assert machine.handle_timer(1.0) == []
    assert machine.next_deadline() == pytest.approx(1.8)


def test_unanswered_ping_means_dead_connection() -> None:
    """Nothing received for the read timeout drops the connection: DISCONNECTED."""
    machine = _connected(timeout=3.0)
    assert machine.handle_timer(1.0) == [SendPing()]
    assert machine.handle_timer(1.999) == []
    actions = machine.handle_timer(2.0)
    assert isinstance(actions[0], Disconnect) and "read timeout" in actions[0].reason
    assert _states(actions) == [SessionState.DISCONNECTED]
    assert machine.phase is Phase.BACKOFF


def test_reattach_sends_session_id_password_and_last_zxid() -> None:
    """After a loss the next attempt re-attaches with id, password and last zxid seen."""
    machine = _connected(timeout=3.0)
    machine.received(0.5, zxid=0x99)
    machine.received(0.6, zxid=0x42)  # older zxids never move it back
    machine.connection_lost(1.0, "reset")
    retry = machine.next_deadline()
    assert retry is not None
    [connect] = machine.handle_timer(retry)
    assert isinstance(connect, Connect)
    assert (connect.request.session_id, connect.request.password) == (77, PASSWORD)
    assert connect.request.last_zxid_seen == 0x99
    actions = machine.handshake_done(retry + 0.1, ConnectResponse(3000, 77, PASSWORD))
    assert _states(actions) == [SessionState.CONNECTED]
    assert "re-attached" in actions[0].event.reason  # type: ignore[union-attr]


def test_connect_response_timeout_zero_means_expired() -> None:
    """A re-attach answered with timeout 0 expires the session."""
    machine = _connected(timeout=3.0)
    machine.connection_lost(1.0, "reset")
    retry = machine.next_deadline()
    assert retry is not None
    machine.handle_timer(retry)
    actions = machine.handshake_done(retry, ConnectResponse(0, 0, bytes(16)))
    assert isinstance(actions[0], Disconnect)
    assert _states(actions) == [SessionState.EXPIRED]
    assert machine.next_deadline() is None


def test_client_side_expiry_after_a_whole_session_timeout() -> None:
    """With no server reachable, the client declares expiry T after it last heard one."""
    machine = _connected(timeout=3.0)
    machine.received(0.5)
    machine.handle_timer(2.5)  # read timeout: disconnected
    now = 2.5
    for _ in range(100):  # every attempt fails at once
        deadline = machine.next_deadline()
        assert deadline is not None
        now = deadline
        actions = machine.handle_timer(now)
        if SessionState.EXPIRED in _states(actions):
            break
        for action in actions:
            if isinstance(action, Connect):
                machine.connection_failed(now, "refused")
    assert machine.state is SessionState.EXPIRED
    assert now == pytest.approx(3.5)
    assert "client-side" in machine_reason(actions)


def machine_reason(actions: Sequence[object]) -> str:
    return next(a.event.reason for a in actions if isinstance(a, StateChanged))


def test_paused_client_expires_on_wakeup() -> None:
    """A process that wakes long after its session timeout drops and expires at once."""
    machine = _connected(timeout=3.0)
    actions = machine.handle_timer(100.0)
    assert isinstance(actions[0], Disconnect)
    assert _states(actions) == [SessionState.DISCONNECTED, SessionState.EXPIRED]


def test_no_client_side_expiry_before_a_first_session() -> None:
    """Before any session exists there is nothing to expire: it keeps connecting."""
    machine = SessionMachine(HOSTS, 1.0, random.Random(0))
    machine.start(0.0)
    machine.connection_failed(0.0, "refused")
    now = 0.0
    for _ in range(50):
        deadline = machine.next_deadline()
        assert deadline is not None
        now = deadline
        for action in machine.handle_timer(now):
            if isinstance(action, Connect):
                machine.connection_failed(now, "refused")
    assert now > 3.0 and machine.state is SessionState.CONNECTING


def test_new_session_after_expiry_forgets_id_and_password() -> None:
    """new_session() starts over with id 0 and a zero password, state CONNECTING."""
    machine = _connected(timeout=3.0)
    machine.handle_timer(100.0)
    actions = machine.new_session(100.0)
    assert _states(actions) == [SessionState.CONNECTING]
    connect = actions[-1]
    assert isinstance(connect, Connect)
    assert connect.request.session_id == 0 and connect.request.password == bytes(16)


def test_new_session_only_after_expiry() -> None:
    """Asking for a new session while one is alive is a local error."""
    with pytest.raises(LocalProtocolError):
        _connected().new_session(1.0)


def test_close_reports_closed_once() -> None:
    """close() drops the connection and reports CLOSED exactly once."""
    machine = _connected()
    actions = machine.close(1.0)
    assert isinstance(actions[0], Disconnect) and _states(actions) == [SessionState.CLOSED]
    assert machine.close(2.0) == [] and machine.next_deadline() is None


def test_whole_round_of_failures_backs_off_more() -> None:
    """After every host failed in a row the pause grows by one jitter bound."""
    machine = SessionMachine(HOSTS, 10.0, random.Random(3))
    machine.start(0.0)
    machine.connection_failed(0.0, "refused")  # the first attempt, begun at once
    now = 0.0
    delays = [0.0]
    for _ in range(6):
        deadline = machine.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        now = deadline
        for action in machine.handle_timer(now):
            if isinstance(action, Connect):
                machine.connection_failed(now, "refused")
    jitter = machine.reconnect_jitter
    assert jitter == 1.0
    assert all(d <= jitter for d in delays[1:3])
    assert jitter <= delays[3] <= 2 * jitter


@given(st.floats(0.4, 60.0), st.integers(1, 5), st.lists(st.floats(0.0, 2.0), max_size=30))
def test_deadlines_never_go_backwards_and_timers_act(
    timeout: float, host_count: int, steps: list[float]
) -> None:
    """Whatever happens, the next deadline is never in the past after handle_timer, and the
    session never stays connected past the read timeout without hearing anything."""
    hosts = [(f"h{i}", i) for i in range(host_count)]
    machine = SessionMachine(hosts, timeout, random.Random(0))
    now = 0.0
    for action in machine.start(now):
        if isinstance(action, Connect):
            machine.handshake_done(now, ConnectResponse(int(timeout * 1000), 5, PASSWORD))
    for step in steps:
        now += step
        for action in machine.handle_timer(now):
            if isinstance(action, Connect):
                machine.handshake_done(now, ConnectResponse(int(timeout * 1000), 5, PASSWORD))
        deadline = machine.next_deadline()
        assert deadline is None or deadline > now or machine.phase is Phase.BACKOFF
        if machine.phase is Phase.CONNECTED:
            assert now - machine.last_recv < machine.read_timeout
