"""Lease server regressions: supersede wake-ups and a backlogged watcher due in the same
expiry pass as the session it watches, over memory streams in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from pulse.plugins.lease.protocol import SessionNotice, WatchEvent
from pulse.plugins.lease.server import ServerConfig
from pulse.plugins.lease.state import Limits

from ._lease_harness import Network, Raw


@asynccontextmanager
async def network(config: ServerConfig) -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(config=config)
        yield net
        nursery.cancel_scope.cancel()


async def connected(net: Network, timeout: float, **extra: object) -> tuple[Raw, dict[str, object]]:
    raw = Raw(await net.open_stream("s1", 1))
    reply = await raw.call("connect", {"timeout": timeout, **extra})
    assert reply.error is None, reply.message
    return raw, dict(reply.result)


async def test_superseding_a_session_wakes_watchers_of_its_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The offline event of a superseded session's key reaches an idle watcher at once."""
    async with network(ServerConfig(tick=1.0)) as net:
        watcher, _ = await connected(net, 20.0)
        await watcher.call("watch", {"prefix": "/p", "watch_id": 1})
        await watcher.events_until(1)  # synced
        old, grant = await connected(net, 20.0)
        assert (await old.call("register", {"key": "/p/a"})).error is None
        await watcher.events_until(2)  # online a
        start = trio.current_time()
        await connected(net, 20.0, supersedes=[grant["session_id"], grant["password"]])
        with trio.move_on_after(1.0):  # the watcher sends nothing meanwhile
            await watcher.events_until(3)
        assert [e.event for e in watcher.events] == ["synced", "online", "offline"]
        assert trio.current_time() - start < 1.0


async def test_refused_connect_does_not_end_the_superseded_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connect refused for a limit leaves the session it wanted to supersede alive."""
    limits = Limits(max_sessions_per_address=2)
    async with network(ServerConfig(tick=1.0, limits=limits)) as net:
        old, grant = await connected(net, 20.0)
        await connected(net, 20.0)
        net.client_address = "10.0.0.2"
        for _ in range(2):
            await connected(net, 20.0)
        # 10.0.0.2 is full: superseding a session of 10.0.0.1 frees nothing for it.
        raw = Raw(await net.open_stream("s1", 1))
        reply = await raw.call("connect", {"timeout": 20.0, "supersedes": [
            grant["session_id"], grant["password"]]})
        assert reply.error is not None and reply.error.value == "too_many_sessions"
        assert grant["session_id"] in net.server().state.sessions
        assert (await old.call("ping")).error is None


async def test_superseding_frees_its_slot_for_the_new_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At the per-address limit, a new session that supersedes one of its own is accepted."""
    limits = Limits(max_sessions_per_address=1)
    async with network(ServerConfig(tick=1.0, limits=limits)) as net:
        _, grant = await connected(net, 20.0)
        _, fresh = await connected(net, 20.0, supersedes=[grant["session_id"], grant["password"]])
        sessions = net.server().state.sessions
        assert grant["session_id"] not in sessions and fresh["session_id"] in sessions


async def test_backlogged_watcher_expiring_with_the_watched_session_does_not_kill_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two sessions due in one expiry pass, the later one's outbox at its limit: both expire
    and the server keeps expiring and serving afterwards."""
    limits = Limits(max_pending_notifications=3)
    async with network(ServerConfig(tick=1.0, limits=limits)) as net:
        owner, owner_grant = await connected(net, 4.0)
        watcher, watcher_grant = await connected(net, 4.0)
        owner_id, watcher_id = owner_grant["session_id"], watcher_grant["session_id"]
        assert isinstance(owner_id, int) and isinstance(watcher_id, int)
        assert owner_id < watcher_id  # ended in this order
        await watcher.call("watch", {"prefix": "/p", "watch_id": 1})
        assert (await owner.call("register", {"key": "/p/a"})).error is None
        # Both go silent now, with the same bucket.
        assert (await owner.call("register", {"key": "/p/b"})).error is None
        await watcher.call("ping")  # touches the watcher into the owner's bucket, acks nothing
        server = net.server()
        assert len(server.state.sessions[watcher_id].outbox) == 3
        await owner.drain()
        await watcher.drain()
        assert [n.state for n in watcher.notices if isinstance(n, SessionNotice)] == ["expired"]
        assert not server.state.sessions
        # The expiry task survived: a new session still expires on time.
        late, _ = await connected(net, 4.0)
        start = trio.current_time()
        await late.drain()
        assert 4.0 < trio.current_time() - start <= 5.0
        assert all(isinstance(e, WatchEvent) for e in watcher.events)


async def test_unread_responses_are_bounded_in_bytes_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Large unread answers close the connection at the byte bound, long before the count bound."""
    from pulse.codec import encode_message
    from pulse.plugins.lease import server as server_module

    limits = Limits(max_queued_bytes_per_connection=1024 * 1024)
    async with network(ServerConfig(tick=1.0, limits=limits)) as net:
        client_end, server_end = trio.testing.lockstep_stream_pair()
        net.nursery.start_soon(net.server().handle_stream, server_end, "10.0.0.9")
        sent = 0
        closed = False
        with trio.move_on_after(30):
            try:
                await client_end.send_all(encode_message([0, 1, 0, "connect", {"timeout": 10.0}]))
                await client_end.send_all(encode_message(
                    [0, 2, 0, "register", {"key": "/big/one", "data": b"x" * 60_000}]))
                for request_id in range(3, 3 + server_module.MAX_QUEUED_RESPONSES):
                    await client_end.send_all(encode_message(
                        [0, request_id, 0, "get", {"key": "/big/one"}]))
                    sent += 1
                await trio.sleep_forever()
            except trio.BrokenResourceError:
                closed = True
        assert closed
        assert sent < 100  # ~17 answers of 60 kB fill 1 MiB; the count bound is 10,000
