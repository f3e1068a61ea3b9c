"""Lease server quotas in bytes and counts, on the pure state with explicit times (issue 10, row 5)."""

from __future__ import annotations

import pytest

from pulse._core.sessions import ID_EPOCH, SessionTracker
from pulse.plugins.lease.protocol import Connect, ErrorCode, Register, Request, Watch
from pulse.plugins.lease.state import LeaseState, Limits, RequestFailed, ServerSession

WALL = ID_EPOCH + 1_000_000.0
KIB = 1024


def state(**limits: int | float) -> LeaseState:
    tracker = SessionTracker(secret=b"k" * 32, tick=1.0, max_timeout=100.0)
    return LeaseState(tracker, Limits(**limits))  # type: ignore[arg-type]


def session(s: LeaseState, address: str = "10.0.0.1") -> ServerSession:
    opened, _, _ = s.connect(Connect(60.0), address, 0.0, WALL)
    return opened


def register(s: LeaseState, who: ServerSession, key: str, size: int, now: float = 1.0) -> None:
    s.handle(who.id, Request(1, Register(key, b"x" * size)), now)


def refused(s: LeaseState, who: ServerSession, key: str, size: int) -> ErrorCode:
    with pytest.raises(RequestFailed) as info:
        register(s, who, key, size)
    return info.value.code


def test_bytes_per_session_are_bounded() -> None:
    """Keys plus data of one session stay within max_bytes_per_session; the breach is quota_exceeded."""
    s = state(max_bytes_per_session=10 * KIB, max_data_size=8 * KIB)
    a = session(s)
    register(s, a, "/p/a", 6 * KIB)
    assert refused(s, a, "/p/b", 6 * KIB) is ErrorCode.QUOTA_EXCEEDED
    assert "/p/b" not in s.keys
    register(s, a, "/p/b", 3 * KIB)  # fits: 6 KiB + 3 KiB + keys < 10 KiB


def test_replacing_data_counts_only_the_difference() -> None:
    """An owner updating its key's data is charged the new size, not both."""
    s = state(max_bytes_per_session=10 * KIB, max_data_size=8 * KIB)
    a = session(s)
    register(s, a, "/p/a", 8 * KIB)
    register(s, a, "/p/a", 8 * KIB)
    assert refused(s, a, "/p/a", 10 * KIB) is ErrorCode.DATA_TOO_LARGE
    assert s.bytes_of_session(a.id) == 8 * KIB + len("/p/a")


def test_keys_and_bytes_per_address_are_bounded() -> None:
    """Many sessions from one address share the address quota; another address is unaffected."""
    s = state(max_keys_per_address=3, max_bytes_per_address=1_000_000)
    a, b = session(s, "10.0.0.1"), session(s, "10.0.0.1")
    register(s, a, "/p/a1", 1)
    register(s, a, "/p/a2", 1)
    register(s, b, "/p/b1", 1)
    assert refused(s, b, "/p/b2", 1) is ErrorCode.QUOTA_EXCEEDED
    other = session(s, "10.0.0.2")
    register(s, other, "/p/c1", 1)

    s2 = state(max_bytes_per_address=20 * KIB, max_data_size=16 * KIB)
    a, b = session(s2, "10.0.0.1"), session(s2, "10.0.0.1")
    register(s2, a, "/p/a", 15 * KIB)
    assert refused(s2, b, "/p/b", 15 * KIB) is ErrorCode.QUOTA_EXCEEDED


def test_server_wide_keys_and_bytes_are_bounded() -> None:
    """The server's total keys and bytes are capped whoever registers them."""
    s = state(max_keys=2)
    register(s, session(s, "1.1.1.1"), "/p/a", 1)
    register(s, session(s, "2.2.2.2"), "/p/b", 1)
    assert refused(s, session(s, "3.3.3.3"), "/p/c", 1) is ErrorCode.QUOTA_EXCEEDED
    s = state(max_bytes=30 * KIB, max_data_size=16 * KIB)
    register(s, session(s, "1.1.1.1"), "/p/a", 16 * KIB)
    assert refused(s, session(s, "2.2.2.2"), "/p/b", 16 * KIB) is ErrorCode.QUOTA_EXCEEDED


def test_ending_a_session_returns_its_quota() -> None:
    """Keys of an ended session no longer count against its address or the server."""
    s = state(max_keys_per_address=1)
    a = session(s)
    register(s, a, "/p/a", 100)
    s.end_session(a.id, "closed", "test")
    b = session(s)
    register(s, b, "/p/b", 100)
    assert s.total_bytes == len("/p/b") + 100


def test_watch_snapshot_larger_than_backlog_quota_is_refused() -> None:
    """A watch whose initial snapshot would exceed max_pending_bytes is refused, nothing queued."""
    s = state(max_pending_bytes=100 * KIB, max_data_size=64 * KIB)
    owner = session(s, "1.1.1.1")
    register(s, owner, "/p/a", 60 * KIB)
    watcher = session(s, "2.2.2.2")
    s.handle(watcher.id, Request(1, Watch("/p", 1)), 1.0)
    assert watcher.outbox_bytes > 60 * KIB
    with pytest.raises(RequestFailed) as info:
        s.handle(watcher.id, Request(2, Watch("/p", 2)), 1.0)  # a second copy: 120 KiB
    assert info.value.code is ErrorCode.QUOTA_EXCEEDED
    assert len(watcher.watches) == 1


def test_watch_backlog_in_bytes_ends_a_lagging_watcher() -> None:
    """Events a watcher never acknowledges are bounded in bytes: past the limit its session ends."""
    s = state(max_pending_bytes=100 * KIB, max_data_size=32 * KIB)
    watcher = session(s, "2.2.2.2")
    s.handle(watcher.id, Request(1, Watch("/p", 1)), 1.0)
    owner = session(s, "1.1.1.1")
    ended = []
    for i in range(5):
        outcome = s.handle(owner.id, Request(1, Register(f"/p/k{i}", b"x" * 30 * KIB)), 1.0)
        ended += outcome.ended
    assert [e.session_id for e in ended] == [watcher.id]
    assert s.pending_bytes == 0  # the ended watcher's backlog was released


def test_acknowledged_events_release_backlog_bytes() -> None:
    """Acknowledging events frees their bytes from the session's and the server's backlog."""
    s = state()
    watcher = session(s, "2.2.2.2")
    s.handle(watcher.id, Request(1, Watch("/p", 1)), 1.0)
    owner = session(s, "1.1.1.1")
    s.handle(owner.id, Request(1, Register("/p/a", b"x" * 1000)), 1.0)
    assert s.pending_bytes >= 1000
    last = watcher.outbox[-1].seq
    s.handle(watcher.id, Request(2, Watch("/p", 1), ack=last), 1.0)
    assert watcher.outbox_bytes == 0 and s.pending_bytes == 0


def test_default_limits_cannot_exhaust_24_gib() -> None:
    """The documented worst case of the defaults (data, keys, backlogs, buffers) fits in 24 GiB."""
    limits = Limits()
    assert limits.worst_case_bytes() < 24 * 1024**3 // 2


def test_backlogged_watcher_outbox_never_passes_its_item_bound() -> None:
    """A session ending with many keys floods a watcher past max_pending_notifications in one
    step: the watcher's outbox stops at its bound (no QueueFull) and the watcher is closed."""
    s = state(max_pending_notifications=5, max_keys_per_session=50)
    watcher = session(s, "2.2.2.2")
    s.handle(watcher.id, Request(1, Watch("/p", 1)), 1.0)  # one "synced" event queued
    owner = session(s, "1.1.1.1")
    for i in range(4):
        register(s, owner, f"/p/k{i}", 10)  # 5 events: at the limit, not past it
    assert len(watcher.outbox) == 5 and watcher.id in s.sessions
    ended = s.end_session(owner.id, "closed", "test", set())  # 4 offline events at once
    assert watcher.outbox.limit == 6
    assert {e.session_id for e in ended} == {owner.id, watcher.id}
    assert watcher.id not in s.sessions and s.pending_bytes == 0
