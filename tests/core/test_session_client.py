"""The one session client machine (lease and ZooKeeper clients), on explicit ``now`` floats."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.session_client import (
    CLIENT_SIDE_EXPIRY,
    TRANSITIONS,
    Connect,
    Disconnect,
    GaveUp,
    Input,
    Phase,
    SendPing,
    SessionClient,
    StateChanged,
)
from pulse.errors import LocalProtocolError
from pulse.presence import SessionState

HOSTS = [("a", 1), ("b", 2), ("c", 3)]


def states(actions: Sequence[object]) -> list[SessionState]:
    return [a.event.state for a in actions if isinstance(a, StateChanged)]


def connected(timeout: float = 3.0, now: float = 0.0, **kwargs: object) -> SessionClient:
    machine = SessionClient(HOSTS, timeout, random.Random(1), **kwargs)  # type: ignore[arg-type]
    _, connect = machine.start(now)
    assert isinstance(connect, Connect)
    assert states(machine.connected(now, 42, b"pw", timeout)) == [SessionState.CONNECTED]
    return machine


def fail_every_attempt(machine: SessionClient, now: float, until: float) -> list[object]:
    """Run the timer, failing each attempt at once, until ``until``; return all actions."""
    seen: list[object] = []
    if machine.phase is Phase.CONNECTING:
        machine.connection_failed(now, "refused")
    while machine.next_deadline() is not None:
        deadline = machine.next_deadline()
        assert deadline is not None
        if deadline > until:
            break
        now = deadline
        actions = machine.handle_timer(now)
        seen.extend(actions)
        for action in actions:
            if isinstance(action, Connect):
                machine.connection_failed(now, "refused")
    return seen


def test_connect_timeout_is_the_session_timeout_over_the_host_count() -> None:
    """An attempt with no answer after T/n is dropped and another host is tried after a pause."""
    machine = SessionClient(HOSTS, 6.0, random.Random(0))
    started, first = machine.start(10.0)
    assert states([started]) == [SessionState.CONNECTING]
    assert isinstance(first, Connect) and machine.phase is Phase.CONNECTING
    assert machine.next_deadline() == pytest.approx(12.0)
    assert machine.handle_timer(11.999) == []
    actions = machine.handle_timer(12.0)
    assert actions == [Disconnect("connect timeout (2.000 s)")]
    retry = machine.next_deadline()
    assert retry is not None and 12.0 <= retry <= 12.0 + 0.6  # J = min(1, 6 / 10)
    [second] = machine.handle_timer(retry)
    assert isinstance(second, Connect) and second.host != first.host


def test_ping_after_half_the_read_timeout_of_send_idleness() -> None:
    """T = 3: read timeout 2, a ping once nothing was sent for 1 s; any request postpones it."""
    machine = connected(3.0)
    assert (machine.read_timeout, machine.ping_interval) == (2.0, 1.0)
    assert machine.handle_timer(0.999) == []
    assert machine.handle_timer(1.0) == [SendPing()]
    machine.received(1.1)
    machine.sent(1.5)
    assert machine.next_deadline() == pytest.approx(2.5)


def test_ping_interval_is_capped_at_ten_seconds() -> None:
    """T = 60: read timeout 40, but the ping still goes out every 10 s."""
    machine = connected(60.0)
    assert machine.handle_timer(10.0) == [SendPing()]
    machine.received(10.01)
    assert machine.next_deadline() == pytest.approx(20.0)


def test_read_timeout_drops_the_connection_and_reports_disconnected() -> None:
    """Nothing received for 2/3 T: Disconnect, DISCONNECTED, and a retry is scheduled."""
    machine = connected(3.0)
    machine.handle_timer(1.0)
    actions = machine.handle_timer(2.0)
    assert isinstance(actions[0], Disconnect) and "read timeout" in actions[0].reason
    assert states(actions) == [SessionState.DISCONNECTED]
    assert machine.phase is Phase.BACKOFF


def test_client_side_expiry_one_timeout_after_the_server_was_last_heard() -> None:
    """With no server answering, EXPIRED exactly T after the last byte heard."""
    machine = connected(3.0)
    machine.received(0.5)
    machine.connection_lost(0.6, "reset")
    seen = fail_every_attempt(machine, 0.6, 100.0)
    assert machine.state is SessionState.EXPIRED
    expiry = [a for a in seen if isinstance(a, StateChanged)][-1].event
    assert expiry.reason == CLIENT_SIDE_EXPIRY and expiry.session_id == 42
    assert machine.last_heard + machine.session_timeout == pytest.approx(3.5)
    assert machine.next_deadline() is None


def test_a_paused_client_expires_on_wakeup() -> None:
    """A process that wakes long after T drops the connection and expires in one step."""
    machine = connected(3.0)
    actions = machine.handle_timer(100.0)
    assert isinstance(actions[0], Disconnect)
    assert states(actions) == [SessionState.DISCONNECTED, SessionState.EXPIRED]


def test_a_refused_reattach_expires_the_session() -> None:
    """The server refuses the session on re-attach (expired, wrong password): EXPIRED."""
    machine = connected(3.0)
    machine.connection_lost(1.0, "reset")
    retry = machine.next_deadline()
    assert retry is not None
    machine.handle_timer(retry)
    actions = machine.refused(retry, "session expired")
    assert isinstance(actions[0], Disconnect)
    assert states(actions) == [SessionState.EXPIRED]


def test_an_answer_for_another_session_expires_this_one() -> None:
    """A re-attach answered with a different session id means this session is gone."""
    machine = connected(3.0)
    machine.connection_lost(1.0, "reset")
    retry = machine.next_deadline()
    assert retry is not None
    machine.handle_timer(retry)
    assert states(machine.connected(retry, 43, b"x", 3.0)) == [SessionState.EXPIRED]


def test_reattach_is_reported_as_connected_again() -> None:
    """Lost, then re-attached with the same id: DISCONNECTED then CONNECTED, same session."""
    machine = connected(3.0)
    assert states(machine.connection_lost(1.0, "reset")) == [SessionState.DISCONNECTED]
    retry = machine.next_deadline()
    assert retry is not None
    machine.handle_timer(retry)
    actions = machine.connected(retry, 42, b"pw", 3.0)
    assert states(actions) == [SessionState.CONNECTED]
    assert "re-attached" in actions[0].event.reason  # type: ignore[union-attr]


def test_give_up_when_no_session_is_ever_established() -> None:
    """start(give_up_after=5): every attempt failing, GaveUp and CLOSED at exactly 5 s."""
    machine = SessionClient(HOSTS, 2.0, random.Random(0))
    machine.start(1.0, give_up_after=5.0)
    seen = fail_every_attempt(machine, 1.0, 100.0)
    gave_up = [a for a in seen if isinstance(a, GaveUp)]
    assert gave_up == [GaveUp("no server answered within 5 s")]
    assert machine.phase is Phase.CLOSED and machine.state is SessionState.CLOSED
    assert machine.next_deadline() is None


def test_no_give_up_once_a_session_was_established() -> None:
    """After a first session, losing every server leads to expiry, never to GaveUp."""
    machine = SessionClient(HOSTS, 2.0, random.Random(0))
    machine.start(0.0, give_up_after=5.0)
    machine.connected(0.0, 7, b"p", 2.0)
    machine.connection_lost(0.1, "reset")
    seen = fail_every_attempt(machine, 0.1, 100.0)
    assert not any(isinstance(a, GaveUp) for a in seen)
    assert machine.state is SessionState.EXPIRED


def test_a_resumed_session_expires_one_timeout_after_start() -> None:
    """A session id given to the constructor is re-attached; unreachable, it expires at T."""
    machine = SessionClient(HOSTS, 2.0, random.Random(0), session_id=9, password=b"p")
    machine.start(10.0)
    fail_every_attempt(machine, 10.0, 100.0)
    assert machine.state is SessionState.EXPIRED
    assert machine.last_heard == 10.0


def test_close_waits_for_confirmation() -> None:
    """begin_close on a live connection: CLOSING until confirmed, then Disconnect + CLOSED."""
    machine = connected(3.0)
    assert machine.begin_close(1.0, 2.0) == []
    assert machine.phase is Phase.CLOSING and machine.next_deadline() == 3.0
    actions = machine.close_confirmed(1.5)
    assert isinstance(actions[0], Disconnect) and states(actions) == [SessionState.CLOSED]
    assert machine.next_deadline() is None


def test_close_gives_up_waiting_after_the_wait() -> None:
    """No confirmation within the wait: CLOSED when the deadline passes, not before."""
    machine = connected(3.0)
    machine.begin_close(1.0, 0.5)
    assert machine.handle_timer(1.49) == []
    assert states(machine.handle_timer(1.5)) == [SessionState.CLOSED]


def test_connection_lost_while_closing_is_the_end() -> None:
    """The server hanging up after the close request completes the close."""
    machine = connected(3.0)
    machine.begin_close(1.0, 2.0)
    assert states(machine.connection_lost(1.2, "eof")) == [SessionState.CLOSED]


def test_begin_close_without_a_connection_closes_at_once() -> None:
    """Closing while disconnected does not wait for anything."""
    machine = connected(3.0)
    machine.connection_lost(1.0, "reset")
    assert states(machine.begin_close(1.0, 2.0)) == [SessionState.CLOSED]


def test_new_session_after_expiry_forgets_the_old_one() -> None:
    """new_session(): id and password forgotten, the requested timeout proposed again."""
    machine = connected(3.0)
    machine.refused(1.0, "expired")
    actions = machine.new_session(1.0)
    assert states(actions) == [SessionState.CONNECTING]
    assert isinstance(actions[-1], Connect) and machine.phase is Phase.CONNECTING
    assert (machine.session_id, machine.password, machine.negotiated_timeout) == (None, b"", None)


@pytest.mark.parametrize(
    ("phase", "event"),
    [(p, i) for p in Phase for i in Input if i not in TRANSITIONS[p]],
)
def test_pairs_missing_from_the_table_are_local_errors(phase: Phase, event: Input) -> None:
    """Every (phase, input) pair absent from TRANSITIONS raises LocalProtocolError."""
    machine = machine_in(phase)
    with pytest.raises(LocalProtocolError):
        INPUTS[event](machine, 100.0)
    assert machine.phase is phase


def test_the_table_covers_every_phase_and_lists_only_real_phases() -> None:
    """TRANSITIONS has a row per phase; each listed outcome is a phase."""
    assert set(TRANSITIONS) == set(Phase)
    for row in TRANSITIONS.values():
        for outcomes in row.values():
            assert outcomes and all(isinstance(p, Phase) for p in outcomes)


def machine_in(phase: Phase) -> SessionClient:
    """A machine brought to ``phase`` through its inputs."""
    machine = SessionClient(HOSTS, 3.0, random.Random(0))
    if phase is Phase.IDLE:
        return machine
    machine.start(0.0)
    if phase is Phase.CONNECTING:
        return machine
    if phase is Phase.BACKOFF:
        machine.connection_failed(0.0, "refused")
        return machine
    machine.connected(0.0, 5, b"p", 3.0)
    if phase is Phase.CONNECTED:
        return machine
    if phase is Phase.CLOSING:
        machine.begin_close(0.0, 1.0)
    elif phase is Phase.EXPIRED:
        machine.refused(0.0, "expired")
    elif phase is Phase.CLOSED:
        machine.close(0.0)
    assert machine.phase is phase
    return machine


INPUTS: dict[Input, Callable[[SessionClient, float], object]] = {
    Input.START: lambda m, now: m.start(now, 30.0),
    Input.TIMER: lambda m, now: m.handle_timer(now),
    Input.CONNECTED: lambda m, now: m.connected(now, 5, b"p", 3.0),
    Input.REFUSED: lambda m, now: m.refused(now, "refused"),
    Input.FAILED: lambda m, now: m.connection_failed(now, "failed"),
    Input.LOST: lambda m, now: m.connection_lost(now, "lost"),
    Input.RECEIVED: lambda m, now: m.received(now),
    Input.SENT: lambda m, now: m.sent(now),
    Input.NEW_SESSION: lambda m, now: m.new_session(now),
    Input.BEGIN_CLOSE: lambda m, now: m.begin_close(now, 1.0),
    Input.CLOSE_CONFIRMED: lambda m, now: m.close_confirmed(now),
    Input.CLOSE: lambda m, now: m.close(now),
}


@settings(max_examples=300, deadline=None)
@given(
    timeout=st.floats(0.4, 40.0),
    host_count=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    warm=st.booleans(),
    steps=st.lists(st.tuples(st.sampled_from([*Input, Input.TIMER, Input.CONNECTED]),
                             st.floats(0.0, 3.0)), max_size=40),
)
def test_every_input_sequence_follows_the_state_table(
    timeout: float, host_count: int, seed: int, warm: bool, steps: list[tuple[Input, float]]
) -> None:
    """Any sequence of inputs moves only along TRANSITIONS (a missing pair raises and changes
    nothing), each state change is reported once and only when the state changes, and the
    timer never leaves a deadline behind or a connection silent past its read timeout."""
    machine = SessionClient([(f"h{i}", i) for i in range(host_count)], timeout,
                            random.Random(seed))
    now = 0.0
    if warm:  # most interesting paths start from a live session
        steps = [(Input.START, 0.0), (Input.CONNECTED, 0.0), *steps]
    for event, step in steps:
        now += step
        before_phase, before_state = machine.phase, machine.state
        allowed = TRANSITIONS[before_phase].get(event)
        if allowed is None:
            with pytest.raises(LocalProtocolError):
                INPUTS[event](machine, now)
            assert (machine.phase, machine.state) == (before_phase, before_state)
            continue
        actions = INPUTS[event](machine, now)
        assert machine.phase in allowed, (before_phase, event, machine.phase)
        reported = states(actions) if isinstance(actions, list) else []
        if machine.state is not before_state:
            assert reported and reported[-1] is machine.state
        else:
            assert reported == [] or event is Input.START
        assert len(reported) == len(set(reported))
        if event is Input.TIMER:
            deadline = machine.next_deadline()
            assert deadline is None or deadline >= now
            assert deadline is None or deadline > now or machine.phase is Phase.BACKOFF
            if machine.phase is Phase.CONNECTED:
                assert now - machine.last_recv < machine.read_timeout
        if machine.phase in (Phase.EXPIRED, Phase.CLOSED, Phase.IDLE):
            assert machine.next_deadline() is None


def test_close_wait_defaults_to_the_connect_timeout_capped_at_two_seconds() -> None:
    """begin_close without a wait: min(T / n, 2 s) — 1 s for T = 3 on three hosts, 2 s for T = 30."""
    short = connected(3.0)
    short.begin_close(1.0)
    assert short.next_deadline() == pytest.approx(2.0)
    long = connected(30.0)
    long.begin_close(1.0)
    assert long.next_deadline() == pytest.approx(3.0)
