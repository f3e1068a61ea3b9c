"""The lease server driver over memory streams, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from pulse.codec import encode_message
from pulse.plugins.lease.protocol import ErrorCode, ErrorNotice, Response, SessionNotice
from pulse.plugins.lease.server import ServerConfig
from pulse.plugins.lease.state import Limits

from ._lease_harness import Network, Raw


@asynccontextmanager
async def network(**kwargs: object) -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(**kwargs)  # type: ignore[arg-type]
        yield net
        nursery.cancel_scope.cancel()


async def session(net: Network, timeout: float = 4.0) -> tuple[Raw, Response]:
    raw = Raw(await net.open_stream("s1", 1))
    reply = await raw.call("connect", {"timeout": timeout})
    assert reply.error is None, reply.message
    return raw, reply


async def test_connect_grants_a_negotiated_session(autojump_clock: trio.testing.MockClock) -> None:
    """connect returns id, 16-byte password, and the timeout clamped into [2, 20] ticks."""
    async with network(tick=2.0) as net:
        _, reply = await session(net, timeout=100.0)
        assert reply.result["timeout"] == 40.0
        assert len(reply.result["password"]) == 16
        assert reply.result["reattached"] is False
        _, low = await session(net, timeout=0.5)
        assert low.result["timeout"] == 4.0
        assert low.result["session_id"] > reply.result["session_id"]


async def test_silent_session_expires_at_its_bucket_and_watchers_hear_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No requests after t=0 with timeout 4 and tick 2: expired at exactly t=6, keys
    deleted, the watcher gets one offline per key, the owner gets a notice and EOF."""
    async with network(tick=2.0) as net:
        start = trio.current_time()
        watcher, _ = await session(net, timeout=40.0)
        await watcher.call("watch", {"prefix": "/p", "watch_id": 1})
        owner, _ = await session(net, timeout=4.0)
        for name in ("a", "b", "c"):
            assert (await owner.call("register", {"key": f"/p/{name}", "data": b"x"})).error is None
        await owner.drain()
        assert trio.current_time() - start == pytest.approx(6.0)
        assert owner.notices == [SessionNotice("expired",
                                               "no request for the session timeout (4 s)")]
        events = await watcher.events_until(1 + 3 + 3)  # synced, 3 online, 3 offline
        assert [(e.event, e.id) for e in events] == [
            ("synced", ""), ("online", "a"), ("online", "b"), ("online", "c"),
            ("offline", "a"), ("offline", "b"), ("offline", "c"),
        ]
        assert [e.seq for e in events] == list(range(1, 8))
        listing = await watcher.call("list", {"prefix": "/p"})
        assert listing.result["children"] == {}


async def test_any_request_touches_the_session(autojump_clock: trio.testing.MockClock) -> None:
    """A get at t=3 (not a ping) moves expiry from 6 to 8."""
    async with network(tick=2.0) as net:
        start = trio.current_time()
        raw, _ = await session(net, timeout=4.0)
        await trio.sleep(3.0)
        assert (await raw.call("get", {"key": "/nothing"})).result == {"data": None}
        await raw.drain()
        assert trio.current_time() - start == pytest.approx(8.0)


async def test_pings_keep_a_session_alive_indefinitely(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pinging every timeout/3 for an hour keeps the session (and its key)."""
    async with network(tick=2.0) as net:
        raw, _ = await session(net, timeout=6.0)
        await raw.call("register", {"key": "/p/k"})
        for _ in range(1800):
            await trio.sleep(2.0)
            assert (await raw.call("ping")).error is None
        assert (await raw.call("get", {"key": "/p/k"})).result["data"] == b""


async def test_reattach_needs_the_right_password(autojump_clock: trio.testing.MockClock) -> None:
    """A wrong password is refused (auth_failed, connection closed); the right one re-attaches
    to the same session with its keys."""
    async with network(tick=1.0) as net:
        raw, reply = await session(net, timeout=4.0)
        await raw.call("register", {"key": "/p/k", "data": b"v"})
        sid, password = reply.result["session_id"], reply.result["password"]
        intruder = Raw(await net.open_stream("s1", 1))
        bad = await intruder.call("connect", {"timeout": 4.0, "session_id": sid,
                                              "password": b"0" * 16})
        assert bad.error is ErrorCode.AUTH_FAILED
        await intruder.drain()
        assert intruder.eof
        again = Raw(await net.open_stream("s1", 1))
        good = await again.call("connect", {"timeout": 4.0, "session_id": sid,
                                            "password": password})
        assert good.result["session_id"] == sid and good.result["reattached"] is True
        assert (await again.call("get", {"key": "/p/k"})).result["data"] == b"v"
        await raw.drain()  # the old connection was told and closed
        assert raw.notices == [SessionNotice("moved", "the session was re-attached elsewhere")]


async def test_reattach_to_an_expired_session_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Coming back after expiry gets session_expired."""
    async with network(tick=1.0) as net:
        raw, reply = await session(net, timeout=2.0)
        await raw.drain()
        late = Raw(await net.open_stream("s1", 1))
        answer = await late.call("connect", {"timeout": 2.0, "session_id": reply.result["session_id"],
                                             "password": reply.result["password"]})
        assert answer.error is ErrorCode.SESSION_EXPIRED


async def test_close_removes_keys_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """close deletes the session's keys immediately and the watcher hears it without delay."""
    async with network(tick=2.0) as net:
        watcher, _ = await session(net, timeout=40.0)
        await watcher.call("watch", {"prefix": "/p", "watch_id": 9})
        owner, _ = await session(net, timeout=40.0)
        await owner.call("register", {"key": "/p/k"})
        start = trio.current_time()
        assert (await owner.call("close")).error is None
        await owner.drain()
        assert SessionNotice("closed", "closed by the client") in owner.notices
        events = await watcher.events_until(3)
        assert [(e.event, e.id) for e in events][-1] == ("offline", "k")
        assert trio.current_time() - start < 0.001


async def test_garbage_closes_only_that_connection(autojump_clock: trio.testing.MockClock) -> None:
    """Undecodable bytes get an error notice and a close; other sessions carry on."""
    async with network(tick=1.0) as net:
        good, _ = await session(net, timeout=10.0)
        bad = Raw(await net.open_stream("s1", 1))
        await bad.send_bytes(b"\x00\x00\x00\x02\xc1\xc1")
        await bad.drain()
        assert isinstance(bad.notices[0], ErrorNotice)
        assert bad.notices[0].code is ErrorCode.PROTOCOL_ERROR
        huge = Raw(await net.open_stream("s1", 1))
        await huge.send_bytes(b"\xff\xff\xff\xff")
        await huge.drain()
        notice = huge.notices[0]
        assert isinstance(notice, ErrorNotice) and "limit" in notice.message
        envelope = Raw(await net.open_stream("s1", 1))
        await envelope.send_bytes(encode_message({"not": "a request"}))
        await envelope.drain()
        assert envelope.eof
        assert (await good.call("ping")).error is None


async def test_bad_arguments_get_an_error_and_the_connection_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A readable request with bad arguments is answered with bad_request, nothing closes."""
    async with network(tick=1.0) as net:
        raw, _ = await session(net, timeout=10.0)
        cases: list[tuple[str, dict[str, Any]]] = [
            ("register", {"key": "relative"}), ("fly", {}), ("watch", {"prefix": "/p"}),
            ("register", {"key": "/a", "data": 5})]
        for op, args in cases:
            answer = await raw.call(op, args)
            assert answer.error is ErrorCode.BAD_REQUEST
            assert answer.message
        assert (await raw.call("ping")).error is None


async def test_requests_before_connect_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    """Only connect is allowed first; a second connect on a connection is refused."""
    async with network(tick=1.0) as net:
        raw = Raw(await net.open_stream("s1", 1))
        assert (await raw.call("ping")).error is ErrorCode.NOT_CONNECTED
        assert (await raw.call("connect", {"timeout": 5})).error is None
        assert (await raw.call("connect", {"timeout": 5})).error is ErrorCode.BAD_REQUEST


async def test_connection_without_connect_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """A connection that never says connect is closed after the handshake timeout."""
    async with network(tick=1.0, handshake_timeout=3.0) as net:
        start = trio.current_time()
        raw = Raw(await net.open_stream("s1", 1))
        await raw.drain()
        assert trio.current_time() - start == pytest.approx(3.0)


async def test_each_limit_has_its_own_error(autojump_clock: trio.testing.MockClock) -> None:
    """Sessions, per-address sessions, keys, data size, watches and rate each refuse cleanly."""
    limits = Limits(max_sessions=3, max_sessions_per_address=2, max_keys_per_session=2,
                    max_data_size=10, max_request_rate=5.0, max_watches_per_session=1)
    async with network(config=ServerConfig(tick=1.0, limits=limits)) as net:
        first, _ = await session(net, timeout=10.0)
        await session(net, timeout=10.0)
        third = Raw(await net.open_stream("s1", 1))
        refused = await third.call("connect", {"timeout": 10.0})
        assert refused.error is ErrorCode.TOO_MANY_SESSIONS and "10.0.0.1" in refused.message
        net.client_address = "10.0.0.2"
        await session(net, timeout=10.0)
        net.client_address = "10.0.0.3"
        fourth = Raw(await net.open_stream("s1", 1))
        refused = await fourth.call("connect", {"timeout": 10.0})
        assert refused.error is ErrorCode.TOO_MANY_SESSIONS and "maximum of 3" in refused.message

        big = await first.call("register", {"key": "/p/big", "data": b"x" * 11})
        assert big.error is ErrorCode.DATA_TOO_LARGE
        await first.call("register", {"key": "/p/a"})
        await first.call("register", {"key": "/p/b"})
        await trio.sleep(1.0)
        assert (await first.call("register", {"key": "/p/c"})).error is ErrorCode.TOO_MANY_KEYS
        await first.call("watch", {"prefix": "/p", "watch_id": 1})
        await trio.sleep(1.0)
        assert (await first.call("watch", {"prefix": "/q", "watch_id": 2})).error is (
            ErrorCode.TOO_MANY_WATCHES)
        await trio.sleep(1.0)
        answers = [await first.call("ping") for _ in range(8)]
        assert ErrorCode.RATE_LIMITED in [a.error for a in answers]
        await trio.sleep(1.0)
        assert (await first.call("ping")).error is None  # the bucket refilled
        listing = await first.call("list", {"prefix": "/p"})
        assert set(listing.result["children"]) == {"a", "b"}


async def test_owner_may_update_others_may_not_touch(autojump_clock: trio.testing.MockClock) -> None:
    """Re-registering one's key replaces data; another session gets key_exists / not_owner."""
    async with network(tick=1.0) as net:
        a, _ = await session(net, timeout=10.0)
        b, _ = await session(net, timeout=10.0)
        await a.call("register", {"key": "/p/k", "data": b"1"})
        assert (await a.call("register", {"key": "/p/k", "data": b"2"})).error is None
        assert (await b.call("get", {"key": "/p/k"})).result["data"] == b"2"
        assert (await b.call("register", {"key": "/p/k"})).error is ErrorCode.KEY_EXISTS
        assert (await b.call("unregister", {"key": "/p/k"})).error is ErrorCode.NOT_OWNER
        assert (await b.call("register", {"key": "/p/k/child"})).error is ErrorCode.BAD_REQUEST
        assert (await b.call("register", {"key": "/p"})).error is ErrorCode.KEY_EXISTS
        assert (await a.call("unregister", {"key": "/p/k"})).error is None
        assert (await a.call("unregister", {"key": "/p/k"})).error is None  # already gone: fine


async def test_lost_notifications_are_resent_after_reattach_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events sent into a dead connection arrive on the re-attached one, each exactly once."""
    async with network(tick=1.0) as net:
        watcher, reply = await session(net, timeout=20.0)
        await watcher.call("watch", {"prefix": "/p", "watch_id": 1})
        events = await watcher.events_until(1)
        link = net.links[0]
        link.cut()
        owner, _ = await session(net, timeout=20.0)
        for i in range(5):
            await owner.call("register", {"key": f"/p/{i}"})
        back = Raw(await net.open_stream("s1", 1))
        answer = await back.call("connect", {"timeout": 20.0,
                                             "session_id": reply.result["session_id"],
                                             "password": reply.result["password"],
                                             "last_seq": events[-1].seq})
        assert answer.result["reattached"]
        resent = await back.events_until(5)
        assert [e.id for e in resent] == ["0", "1", "2", "3", "4"]
        assert [e.seq for e in resent] == [2, 3, 4, 5, 6]
        assert (await back.call("ping", ack=6)).error is None
        assert not net.server().state.sessions[reply.result["session_id"]].outbox


async def test_watcher_that_never_acknowledges_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past max_pending_notifications the lagging watcher's session is closed, not the server."""
    limits = Limits(max_pending_notifications=5)
    async with network(config=ServerConfig(tick=1.0, limits=limits)) as net:
        watcher, _ = await session(net, timeout=20.0)
        await watcher.call("watch", {"prefix": "/p", "watch_id": 1})
        owner, _ = await session(net, timeout=20.0)
        for i in range(6):
            assert (await owner.call("register", {"key": f"/p/{i}"})).error is None
        await watcher.drain()
        assert isinstance(watcher.notices[-1], SessionNotice)
        assert "unacknowledged" in watcher.notices[-1].reason
        assert (await owner.call("ping")).error is None


async def test_restart_with_data_dir_keeps_sessions_and_keys(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A restarted server restores sessions with a fresh timeout; the same id and password
    re-attach and the keys are still there."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(tick=1.0, data_dir=str(tmp_path))
        raw, reply = await session(net, timeout=5.0)
        await raw.call("register", {"key": "/p/k", "data": b"kept"})
        sid, password = reply.result["session_id"], reply.result["password"]
        net.stop()
        await trio.sleep(4.0)  # down for most of the timeout
        restarted = await net.start(tick=1.0, data_dir=str(tmp_path))
        assert restarted.restored == 1
        restart_time = trio.current_time()
        assert restarted.state.tracker.expiry_of(sid) == pytest.approx(
            (int((restart_time + 5.0) // 1.0) + 1) * 1.0)
        await trio.sleep(4.0)
        back = Raw(await net.open_stream("s1", 1))
        answer = await back.call("connect", {"timeout": 5.0, "session_id": sid,
                                             "password": password})
        assert answer.error is None and answer.result["reattached"]
        assert (await back.call("get", {"key": "/p/k"})).result["data"] == b"kept"
        _, reply2 = await session(net, timeout=5.0)
        assert reply2.result["session_id"] > sid
        nursery.cancel_scope.cancel()


async def test_server_logs_session_lifecycle(autojump_clock: trio.testing.MockClock) -> None:
    """Opening and expiry are logged with stable keys."""
    with structlog.testing.capture_logs() as logs:
        async with network(tick=1.0) as net:
            raw, reply = await session(net, timeout=2.0)
            await raw.drain()
    names = [entry["event"] for entry in logs]
    assert "session_opened" in names and "session_expired" in names
    expired = next(e for e in logs if e["event"] == "session_expired")
    assert expired["session_id"] == reply.result["session_id"]


async def test_client_that_never_reads_is_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests without reading the answers pile up to a bound, then only that connection
    is closed."""
    from pulse.plugins.lease.server import MAX_QUEUED_RESPONSES

    async with network(tick=1.0) as net:
        client_end, server_end = trio.testing.lockstep_stream_pair()
        net.nursery.start_soon(net.server().handle_stream, server_end, "10.0.0.9")
        request = encode_message([0, 1, 0, "connect", {"timeout": 10.0}])
        ping = encode_message([0, 2, 0, "ping", {}])
        closed = False
        with trio.move_on_after(30):
            try:
                await client_end.send_all(request)
                for _ in range(MAX_QUEUED_RESPONSES + 10):
                    await client_end.send_all(ping)
                await trio.sleep_forever()
            except trio.BrokenResourceError:
                closed = True  # the server hung up on us
        assert closed
        other, _ = await session(net)
        assert (await other.call("ping")).error is None
