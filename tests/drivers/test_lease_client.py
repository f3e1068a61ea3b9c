"""The lease client driver against in-memory lease servers, in virtual time."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pulse.codec import MessageDecoder
from pulse.errors import ConnectionClosed, SessionExpired
from pulse.plugins.lease.client import LeaseSession, connect
from pulse.plugins.lease.protocol import SessionNotice
from pulse.plugins.lease.state import Outcome
from pulse.presence import PresenceEvent, SessionState

from ._lease_harness import Link, Network

S1 = ("s1", 1)
S2 = ("s2", 2)


class Spy(trio.abc.Stream):
    """Records every request the client sends: (time, op)."""

    def __init__(self, inner: trio.abc.Stream, log: list[tuple[float, str]]) -> None:
        self.inner = inner
        self.log = log
        self.decoder = MessageDecoder()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for message in self.decoder.feed(bytes(data)):
            assert isinstance(message, list)
            self.log.append((trio.current_time(), message[3]))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def network(**kwargs: Any) -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, **kwargs)
        yield net
        nursery.cancel_scope.cancel()


def client(net: Network, timeout: float, **options: Any) -> Any:
    options.setdefault("servers", [S1])
    servers = options.pop("servers")
    return connect(servers, timeout, open_stream=net.open_stream, **options)


async def collect(session: LeaseSession, prefix: str, into: list[PresenceEvent],
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Append every event of a watch to ``into``; started once the watch is established."""
    async with session.watch(prefix) as events:
        await events.start()
        task_status.started()
        async for event in events:
            into.append(event)


def state_of(session: LeaseSession) -> SessionState:
    """The state now (a call, so type checkers do not carry an earlier narrowing over)."""
    return session.state


def names(events: list[PresenceEvent]) -> list[tuple[str, str]]:
    return [(e.event, e.id) for e in events]


async def test_idle_client_pings_every_third_of_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing to send: a ping every read_timeout / 2 = timeout / 3, and the session lives."""
    async with network(tick=1.0) as net:
        log: list[tuple[float, str]] = []

        async def spied(host: str, port: int) -> trio.abc.Stream:
            return Spy(await net.open_stream(host, port), log)

        async with connect([S1], 6.0, open_stream=spied) as session:
            await trio.sleep(60.0)
            assert session.state is SessionState.CONNECTED
        pings = [t for t, op in log if op == "ping"]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 29
        assert all(g == pytest.approx(2.0) for g in gaps)


async def test_ping_interval_is_capped_at_ten_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 60 s session still pings every 10 s, as ZooKeeper does."""
    async with network(tick=5.0) as net:
        log: list[tuple[float, str]] = []

        async def spied(host: str, port: int) -> trio.abc.Stream:
            return Spy(await net.open_stream(host, port), log)

        async with connect([S1], 60.0, open_stream=spied) as session:
            assert session.timing.read_timeout == 40.0
            await trio.sleep(100.0)
        pings = [t for t, op in log if op == "ping"]
        assert [round(b - a, 6) for a, b in itertools.pairwise(pings)] == [10.0] * (
            len(pings) - 1)


async def test_register_watch_and_aclose(autojump_clock: trio.testing.MockClock) -> None:
    """Initial members come first, then changes; closing a session removes its key at once."""
    async with network(tick=1.0) as net, client(net, 10.0) as watcher:
        async with client(net, 10.0) as early:
            await early.register("/p/early", b"1")
            seen: list[PresenceEvent] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(collect, watcher, "/p", seen)
                async with client(net, 10.0) as late:
                    await late.register("/p/late", b"2")
                    assert await watcher.list("/p") == {"early": b"1", "late": b"2"}
                    assert await watcher.get("/p/late") == b"2"
                    await trio.sleep(0.1)
                    closed_at = trio.current_time()
                await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
        assert seen[0] == PresenceEvent("online", "early", b"1", initial=True)
        assert names(seen) == [("online", "early"), ("online", "late"), ("offline", "late")]
        assert await watcher.get("/p/late") is None
        assert trio.current_time() - closed_at < 1.0  # not a timeout later


async def test_cut_connection_reattaches_without_offline_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pulled cable: read timeout, reconnect, re-attach with id + password before expiry;
    the watcher never sees the member go offline."""
    async with network(tick=0.5) as net, client(net, 3.0) as watcher:
        seen: list[PresenceEvent] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, watcher, "/p", seen)
            async with client(net, 3.0) as member:
                changes = member.state_changes()
                await member.register("/p/m", b"data")
                session_id = member.session_id
                for _ in range(5):
                    await trio.sleep(7.3)
                    link = next(link for link in reversed(net.links) if not link.is_cut
                                and link is not net.links[0])
                    link.cut()
                await trio.sleep(5.0)
                assert member.session_id == session_id
                assert member.state is SessionState.CONNECTED
                states = []
                with trio.move_on_after(0):
                    async for change in changes:
                        states.append(change.state)
                assert states.count(SessionState.DISCONNECTED) == 5
                assert states.count(SessionState.CONNECTED) == 5
                assert SessionState.EXPIRED not in states
            nursery.cancel_scope.cancel()
        assert names(seen) == [("online", "m"), ("offline", "m")]  # offline only at close


async def test_requests_made_while_disconnected_complete_after_reattach(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A register issued during an outage waits and succeeds once re-attached."""
    async with network(tick=0.5) as net, client(net, 3.0) as member:
        net.links[-1].cut()
        net.unreachable.add(S1)
        await trio.sleep(2.2)
        assert member.state is SessionState.DISCONNECTED

        async def heal() -> None:
            await trio.sleep(0.3)
            net.unreachable.discard(S1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal)
            await member.register("/p/k", b"v")
        assert state_of(member) is SessionState.CONNECTED
        assert await member.get("/p/k") == b"v"


async def test_client_side_expiry_when_no_server_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With every server unreachable the client reports EXPIRED one timeout after it last
    heard from the server, and further calls raise SessionExpired."""
    async with network(tick=0.5) as net, client(net, 3.0) as member:
        changes = member.state_changes()
        net.links[-1].cut()
        net.unreachable.add(S1)
        cut_at = trio.current_time()
        first = await changes.__anext__()
        assert first.state is SessionState.DISCONNECTED
        second = await changes.__anext__()
        assert second.state is SessionState.EXPIRED
        assert second.reason.startswith("no server reached within the session timeout")
        assert 2.0 < trio.current_time() - cut_at <= 3.0
        with pytest.raises(SessionExpired):
            await member.register("/p/k")


async def test_server_side_expiry_is_reported_and_watches_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the server ends the session, state goes EXPIRED and the watch raises."""
    async with network(tick=0.5) as net, client(net, 3.0) as member:
        events = member.watch("/p")
        await events.start()
        server = net.server()
        sid = member.session_id
        assert sid is not None
        server._apply(Outcome({}, set(), server.state.end_session(sid, "expired", "test")))
        with pytest.raises(SessionExpired):
            async for _ in events:
                pass
        assert member.state is SessionState.EXPIRED


async def test_reregister_starts_a_new_session_and_restores_registrations_and_watches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """reregister=True: after an expiry a new session re-registers the keys and the old session's
    leftovers are superseded; its watch keeps reporting."""
    async with network(tick=0.5) as net, client(net, 30.0) as observer:
        seen: list[PresenceEvent] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, observer, "/p", seen)
            async with client(net, 3.0, reregister=True) as member:
                own: list[PresenceEvent] = []
                await nursery.start(collect, member, "/p", own)
                await member.register("/p/m", b"1")
                old_id = member.session_id
                net.links[-1].cut()
                net.unreachable.add(S1)
                await trio.sleep(4.0)  # expired locally; the server expires it too
                net.unreachable.discard(S1)
                await trio.sleep(2.0)
                assert member.state is SessionState.CONNECTED
                assert member.session_id != old_id
                assert await observer.get("/p/m") == b"1"
                await observer.register("/p/other", b"x")
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert names(seen) == [("online", "m"), ("offline", "m"), ("online", "m"),
                               ("online", "other"), ("offline", "m")]
        assert ("online", "other") in names(own)


async def test_supersede_closes_the_old_session_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """If the old session is still alive on the server, the renewed one replaces it without
    waiting for its expiry (no key_exists conflict)."""
    async with network(tick=5.0, min_timeout=1.0) as net, client(net, 3.0, reregister=True) as member:
        await member.register("/p/m", b"1")
        old_id = member.session_id
        net.links[-1].cut()
        net.unreachable.add(S1)
        await trio.sleep(3.05)  # the client gives up; the server's bucket is later
        assert old_id in net.server().state.sessions
        net.unreachable.discard(S1)
        await trio.sleep(1.0)
        assert member.state is SessionState.CONNECTED
        assert old_id not in net.server().state.sessions
        assert net.server().state.keys["/p/m"].owner == member.session_id


async def test_next_server_is_tried_within_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that accepts but never answers costs timeout / n, then the next one is used."""
    async with network(tick=1.0) as net:
        await net.start(S2, tick=1.0)
        net.black_holes.add(S1)
        start = trio.current_time()
        async with connect([S1, S2], 8.0, open_stream=net.open_stream, shuffle=False) as session:
            assert session.server == S2
            elapsed = trio.current_time() - start
            assert 4.0 <= elapsed <= 4.0 + session.timing.retry_pause(1.0)


async def test_server_list_is_shuffled() -> None:
    """Different seeds give different server orders (spreading clients)."""
    servers = [(f"h{i}", i) for i in range(8)]
    orders = {tuple(LeaseSession(servers, 5.0, rng=random.Random(seed))._servers)
              for seed in range(5)}
    assert len(orders) > 1


async def test_unreachable_servers_fail_the_first_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No server at all: connect raises ConnectionClosed (not an exception group) after one
    session timeout."""
    async with network(tick=1.0) as net:
        net.unreachable.add(S1)
        start = trio.current_time()
        with pytest.raises(ConnectionClosed, match="no lease server reachable"):
            async with client(net, 5.0):
                pass
        assert trio.current_time() - start == pytest.approx(5.0)


async def test_server_restart_with_data_dir_is_invisible_to_watchers(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Server down for 2 s of a 6 s timeout: both clients re-attach to the same sessions,
    the watcher's snapshot is compared, no offline event is reported."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=1.0, data_dir=str(tmp_path))
        async with client(net, 6.0) as watcher, client(net, 6.0) as member:
            seen: list[PresenceEvent] = []
            async with trio.open_nursery() as inner:
                await inner.start(collect, watcher, "/p", seen)
                await member.register("/p/m", b"1")
                ids = (watcher.session_id, member.session_id)
                await trio.sleep(1.0)
                net.stop()
                await trio.sleep(2.0)
                await net.start(S1, tick=1.0, data_dir=str(tmp_path))
                await trio.sleep(20.0)
                assert (watcher.session_id, member.session_id) == ids
                assert watcher.state is member.state is SessionState.CONNECTED
                await member.register("/p/n", b"2")
                await trio.sleep(0.5)
                inner.cancel_scope.cancel()
        assert names(seen) == [("online", "m"), ("online", "n")]
        nursery.cancel_scope.cancel()


async def test_session_moved_notice_is_not_an_expiry(autojump_clock: trio.testing.MockClock) -> None:
    """A 'moved' notice on an old connection only means reconnect, never expire."""
    async with network(tick=1.0) as net, client(net, 6.0) as member:
        first: Link = net.links[-1]
        server = net.server()
        assert member.session_id is not None
        conn = server._connections[member.session_id]
        conn.finish(SessionNotice("moved", "test"))
        await trio.sleep(3.0)
        assert member.state is SessionState.CONNECTED
        assert first is not net.links[-1]


async def test_watcher_cut_off_gets_every_missed_event_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Changes made while the watcher's cable is out arrive after its re-attach, once each."""
    async with network(tick=0.5) as net, client(net, 6.0) as watcher:
        seen: list[PresenceEvent] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, watcher, "/p", seen)
            net.links[-1].cut()
            async with client(net, 6.0) as member:
                for name in ("a", "b", "c"):
                    await member.register(f"/p/{name}")
                await member.unregister("/p/b")
                assert seen == []
                await trio.sleep(6.0)
                assert watcher.state is SessionState.CONNECTED
                assert names(seen) == [("online", "a"), ("online", "b"), ("online", "c"),
                                       ("offline", "b")]
            nursery.cancel_scope.cancel()


async def test_repeated_notifications_are_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """A watch event whose sequence number was already seen is not delivered again."""
    from pulse.plugins.lease.protocol import WatchEvent, watch_event_to_wire

    async with network(tick=1.0) as net, client(net, 6.0) as watcher:
        events = watcher.watch("/p")
        await events.start()
        conn = watcher._conn
        assert conn is not None
        last = watcher._last_seq
        online = WatchEvent(last + 1, events.watch_id, "online", "x", b"")
        watcher._on_message(conn, watch_event_to_wire(online))
        watcher._on_message(conn, watch_event_to_wire(online))
        got = [await events.__anext__()]
        with trio.move_on_after(1.0):
            got.append(await events.__anext__())
        assert names(got) == [("online", "x")]


async def test_cancelled_block_still_closes_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving `async with connect()` by cancellation (Ctrl-C, SIGTERM) closes the session
    right away, so watchers see offline at once rather than a timeout later."""
    async with network(tick=1.0) as net, client(net, 20.0) as watcher:
        seen: list[PresenceEvent] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, watcher, "/p", seen)
            with trio.move_on_after(5.0):
                async with client(net, 20.0) as member:
                    await member.register("/p/m")
                    await trio.sleep_forever()
            cancelled_at = trio.current_time()
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert names(seen) == [("online", "m"), ("offline", "m")]
        assert await watcher.get("/p/m") is None
        assert trio.current_time() - cancelled_at < 1.0
        assert "/p/m" not in net.server().state.keys
