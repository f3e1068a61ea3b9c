"""The lease server's per-key watch (``watch_key``) on the pure state, with explicit times:
only the watchers of a key (or of its parent) are queued its events, the ids and limits are
shared with prefix watches, and an election's leader death wakes exactly one candidate."""

from __future__ import annotations

import pytest

from pulse._core.election import predecessor
from pulse._core.sessions import ID_EPOCH, SessionTracker
from pulse.plugins.lease.protocol import (
    Connect,
    ErrorCode,
    ListChildren,
    Register,
    Request,
    Unregister,
    Unwatch,
    Watch,
    WatchEvent,
    WatchKey,
    parse_request,
    request_to_wire,
)
from pulse.plugins.lease.state import LeaseState, Limits, RequestFailed, ServerSession

WALL = ID_EPOCH + 1_000_000.0


def state(**limits: int) -> LeaseState:
    tracker = SessionTracker(secret=b"k" * 32, tick=1.0, max_timeout=100.0)
    return LeaseState(tracker, Limits(**limits))


def session(s: LeaseState, timeout: float = 10.0) -> ServerSession:
    opened, _, _ = s.connect(Connect(timeout), "10.0.0.1", 0.0, WALL)
    return opened


def events(who: ServerSession) -> list[tuple[int, str, str, bool]]:
    """The session's queued events as (watch id, event, id, initial); drains the outbox."""
    found = [(e.watch_id, e.event, e.id, e.initial) for e in who.outbox]
    who.acknowledge(who.next_seq - 1)
    return found


def test_watch_key_round_trips_on_the_wire() -> None:
    """A watch_key request encodes to op "watch_key" with key and watch_id and parses back."""
    request = Request(5, WatchKey("/e/a-1", 9), 3)
    wire = request_to_wire(request)
    assert wire == [0, 5, 3, "watch_key", {"key": "/e/a-1", "watch_id": 9}]
    assert parse_request(wire) == request


@pytest.mark.parametrize("args", [{"key": "/", "watch_id": 1}, {"key": "a", "watch_id": 1},
                                  {"key": "/a"}, {"key": "/a", "watch_id": -1}])
def test_bad_watch_key_arguments_are_refused_with_the_xid(args: dict[str, object]) -> None:
    """A watch_key without a valid non-root key or watch id is a BadRequest naming the xid."""
    from pulse.plugins.lease.protocol import BadRequest

    with pytest.raises(BadRequest) as info:
        parse_request([0, 4, 0, "watch_key", args])
    assert info.value.xid == 4


def test_snapshot_says_whether_the_key_exists() -> None:
    """The snapshot of a key watch is the key (online, initial) if registered, then synced."""
    s = state()
    owner, watcher = session(s), session(s)
    s.handle(owner.id, Request(1, Register("/e/k", b"d")), 1.0)
    s.handle(watcher.id, Request(1, WatchKey("/e/k", 1)), 1.0)
    s.handle(watcher.id, Request(2, WatchKey("/e/missing", 2)), 1.0)
    assert events(watcher) == [(1, "online", "k", True), (1, "synced", "", False),
                               (2, "synced", "", False)]


def test_only_the_keys_watchers_are_woken() -> None:
    """Unregistering a key queues an event to its key watchers and its parent's watchers,
    not to the watchers of a sibling key."""
    s = state()
    owner, mine, sibling, parent = session(s), session(s), session(s), session(s)
    s.handle(owner.id, Request(1, Register("/e/a", b"")), 1.0)
    s.handle(owner.id, Request(2, Register("/e/b", b"")), 1.0)
    s.handle(mine.id, Request(1, WatchKey("/e/a", 1)), 1.0)
    s.handle(sibling.id, Request(1, WatchKey("/e/b", 1)), 1.0)
    s.handle(parent.id, Request(1, Watch("/e", 1)), 1.0)
    for who in (mine, sibling, parent):
        events(who)
    outcome = s.handle(owner.id, Request(3, Unregister("/e/a")), 2.0)
    assert outcome.woken == {mine.id, parent.id}
    assert events(mine) == [(1, "offline", "a", False)]
    assert events(sibling) == []
    assert events(parent) == [(1, "offline", "a", False)]
    s.handle(owner.id, Request(4, Register("/e/a", b"x")), 3.0)
    assert events(mine) == [(1, "online", "a", False)]


def test_unwatch_and_session_end_drop_key_watches() -> None:
    """Unwatch stops a key watch; an ended session's key watches are gone and counted out."""
    s = state()
    owner, watcher = session(s), session(s, timeout=2.0)
    s.handle(owner.id, Request(1, Register("/e/a", b"")), 1.0)
    s.handle(watcher.id, Request(1, WatchKey("/e/a", 1)), 1.0)
    s.handle(watcher.id, Request(2, WatchKey("/e/a", 2)), 1.0)
    assert s.watch_count == 2
    s.handle(watcher.id, Request(3, Unwatch(1)), 1.0)
    assert s.watch_count == 1
    events(watcher)
    s.handle(owner.id, Request(2, Register("/e/a", b"new")), 1.5)  # data only: no event
    assert events(watcher) == []
    s.expire(10.0)
    assert watcher.id not in s.sessions and owner.id in s.sessions
    assert s.watch_count == 0
    assert s.handle(owner.id, Request(3, Unregister("/e/a")), 10.0).woken == set()


def test_watch_ids_and_limits_are_shared_with_prefix_watches() -> None:
    """A watch id names one watch of either kind; repeating it is "existing"; both kinds
    count against max_watches_per_session."""
    s = state(max_watches_per_session=2)
    who = session(s)
    assert s.handle(who.id, Request(1, WatchKey("/e/a", 1)), 1.0).result == {"existing": False}
    assert s.handle(who.id, Request(2, WatchKey("/e/a", 1)), 1.0).result == {"existing": True}
    with pytest.raises(RequestFailed) as info:
        s.handle(who.id, Request(3, Watch("/e", 1)), 1.0)
    assert info.value.code is ErrorCode.BAD_REQUEST
    s.handle(who.id, Request(4, Watch("/e", 2)), 1.0)
    with pytest.raises(RequestFailed) as info:
        s.handle(who.id, Request(5, WatchKey("/e/b", 2)), 1.0)
    assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(RequestFailed) as info:
        s.handle(who.id, Request(6, WatchKey("/e/b", 3)), 1.0)
    assert info.value.code is ErrorCode.TOO_MANY_WATCHES


@pytest.mark.parametrize("candidates", [2, 3, 6])
def test_a_leaders_expiry_wakes_only_its_successor(candidates: int) -> None:
    """Election recipe on the state: every candidate watches only its predecessor's key, so
    the expiry of the leader's session queues one notification, to the second candidate."""
    s = state()
    sessions = [session(s, timeout=5.0) for _ in range(candidates)]
    names = []
    for i, who in enumerate(sessions):
        result = s.handle(who.id, Request(1, Register(f"/e/c{i}.n-", b"", sequential=True)),
                          1.0).result
        names.append(str(result["key"]).rsplit("/", 1)[1])
    listed = list(s.handle(sessions[0].id, Request(2, ListChildren("/e")), 1.0).result[
        "children"])
    for who, name in zip(sessions, names, strict=True):
        before = predecessor(listed, name)
        if before is not None:
            s.handle(who.id, Request(3, WatchKey(f"/e/{before}", 7)), 1.0)
        events(who)
    # Everyone but the leader renews; the leader's session runs out.
    for who in sessions[1:]:
        s.handle(who.id, Request(4, ListChildren("/e")), 4.0)
    outcome = s.expire(8.0)
    assert [e.session_id for e in outcome.ended] == [sessions[0].id]
    assert outcome.woken == {sessions[1].id}
    queued = [(who.id, events(who)) for who in sessions[1:]]
    assert queued[0][1] == [(7, "offline", names[0], False)]
    assert all(found == [] for _, found in queued[1:])


def test_watch_event_for_a_key_watch_is_a_plain_watch_notification() -> None:
    """Key-watch events travel as ordinary watch notifications (old clients parse them)."""
    from pulse.plugins.lease.protocol import parse_server_message, watch_event_to_wire

    event = WatchEvent(3, 7, "offline", "c0.n-0000000000000000001")
    assert parse_server_message(watch_event_to_wire(event)) == event
