"""Session clients keep every buffer bounded: the shared feed, the lease watch streams' byte
bound, the ZooKeeper write queue, pending calls and state feed, and a watch the server refuses
after a reconnect (virtual time)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from pulse._driver.feed import EVENT_OVERHEAD, BoundedFeed, presence_event_size
from pulse.errors import LimitExceeded, QueueFull
from pulse.plugins.lease import server as lease_server
from pulse.plugins.lease.client import connect as lease_connect
from pulse.plugins.lease.errors import WatchKeyUnsupported
from pulse.plugins.lease.state import Limits
from pulse.plugins.zookeeper import client as zk_client
from pulse.plugins.zookeeper import connect as zk_connect
from pulse.plugins.zookeeper.protocol import ClientConnection
from pulse.presence import PresenceEvent, SessionEvent, SessionState
from tests.zk_harness import poll_until

from ._lease_harness import Network
from .test_election_key_watch import predating_watch_key
from .test_zookeeper_driver import FakeZooKeeper
from .test_zookeeper_driver import _url as _zk_url

S1 = ("s1", 1)
MIB = 1024 * 1024


# -- the shared feed -----------------------------------------------------------------------


async def test_feed_hands_out_what_it_holds_then_the_end() -> None:
    """finish(): the items held come out first, then the given end (an error or
    StopAsyncIteration), on every later read; items put after the end are ignored."""
    feed: BoundedFeed[int] = BoundedFeed(10, drop_oldest=False)
    feed.put(1)
    feed.put(2)
    feed.finish(LimitExceeded("refused"))
    feed.finish(StopAsyncIteration())  # the first end decides
    feed.put(3)
    assert [await feed.get(), await feed.get()] == [1, 2]
    for _ in range(2):
        with pytest.raises(LimitExceeded, match="refused"):
            await feed.get()


async def test_feed_overflow_is_reported_before_the_end() -> None:
    """An overflowed feed that is then finished still tells its reader about the overflow
    (QueueFull naming the item bound and what the items are) after the items it holds."""
    feed: BoundedFeed[int] = BoundedFeed(2, drop_oldest=False, what="watch events")
    for i in range(3):
        feed.put(i)
    feed.finish(StopAsyncIteration())
    assert [await feed.get(), await feed.get()] == [0, 1]
    with pytest.raises(QueueFull, match="more than 2 watch events were not consumed"):
        await feed.get()


async def test_drop_oldest_feed_drops_an_item_larger_than_its_byte_bound() -> None:
    """A drop-oldest feed never holds more bytes than its bound: an item that cannot fit
    even alone is dropped (counted), the items held stay."""
    feed: BoundedFeed[bytes] = BoundedFeed(10, drop_oldest=True, max_bytes=8, size=len)
    feed.put(b"abc")
    feed.put(b"x" * 9)
    assert feed.dropped == 1 and feed.bytes == 3
    feed.put(b"defgh")
    feed.put(b"ij")  # 3 + 5 + 2 > 8: the oldest goes
    assert feed.dropped == 2 and feed.bytes == 7
    assert [await feed.get(), await feed.get()] == [b"defgh", b"ij"]


async def test_feed_waiting_reader_is_woken_by_put_and_finish() -> None:
    """A reader waiting on an empty feed gets the next item put, then the end."""
    feed: BoundedFeed[str] = BoundedFeed(4, drop_oldest=True)
    got: list[object] = []

    async def read() -> None:
        while True:
            try:
                got.append(await feed.get())
            except StopAsyncIteration:
                got.append("end")
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        feed.put("a")
        await trio.testing.wait_all_tasks_blocked()
        feed.finish(StopAsyncIteration())
    assert got == ["a", "end"]


def test_presence_event_size_counts_id_data_and_overhead() -> None:
    """A buffered event costs its id (UTF-8), its data and EVENT_OVERHEAD (200) bytes."""
    assert EVENT_OVERHEAD == 200
    assert presence_event_size(PresenceEvent("online", "né", b"1234")) == 3 + 4 + 200


# -- lease watch streams -------------------------------------------------------------------


async def _lease_network(nursery: trio.Nursery, **config: Any) -> Network:
    net = Network(nursery)
    await net.start(S1, tick=0.5, **config)
    return net


async def test_lease_watch_whose_reader_falls_behind_its_byte_bound_ends_with_queue_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A lease watch with a 4 KiB buffer and a reader that does not read: 40 members of
    1 KiB come online; the reader gets the events that fit, in order, then QueueFull, and
    the watch is stopped on the server."""
    async with trio.open_nursery() as nursery:
        net = await _lease_network(nursery)
        async with lease_connect([S1], 10.0, open_stream=net.open_stream) as agent, \
                lease_connect([S1], 10.0, open_stream=net.open_stream) as watcher:
            watch = watcher.watch("/p", max_buffered_bytes=4096)
            await watch.start()
            for i in range(40):
                await agent.register(f"/p/m{i:02}", bytes(1024))
            await trio.sleep(2.0)  # the events arrive while nobody reads
            fits = 4096 // (3 + 1024 + EVENT_OVERHEAD)
            got = [event.id async for event in _until_queue_full(watch)]
            assert got == [f"m{i:02}" for i in range(fits)]
            await trio.sleep(1.0)
            session = net.server().state.sessions[watcher.session_id]  # type: ignore[index]
            assert session.watches == {}
            assert watcher.state is SessionState.CONNECTED
        nursery.cancel_scope.cancel()


async def _until_queue_full(watch: AsyncIterator[PresenceEvent]) -> AsyncIterator[PresenceEvent]:
    with pytest.raises(QueueFull, match="more than 4096 bytes of watch events"):
        async for event in watch:
            yield event


async def test_lease_key_watch_takes_a_byte_bound_and_the_default_is_16_mib(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """watch() and watch_key() default to a 16 MiB buffer; watch_key(max_buffered_bytes=)
    bounds a key watch whose reader does not read; a bound below 1 is a ValueError."""
    async with trio.open_nursery() as nursery:
        net = await _lease_network(nursery)
        async with lease_connect([S1], 10.0, open_stream=net.open_stream) as agent, \
                lease_connect([S1], 10.0, open_stream=net.open_stream) as watcher:
            assert watcher.watch("/p")._feed.max_bytes == 16 * MIB
            assert watcher.watch_key("/p/k")._feed.max_bytes == 16 * MIB
            with pytest.raises(ValueError):
                watcher.watch("/p", max_buffered_bytes=0)
            watch = watcher.watch_key("/p/k", max_buffered_bytes=3000)
            await watch.start()
            for i in range(6):
                await agent.register("/p/k", bytes([i]) * 1024)
                await agent.unregister("/p/k")
            await trio.sleep(2.0)
            got = []
            with pytest.raises(QueueFull, match="more than 3000 bytes"):
                async for event in watch:
                    got.append((event.event, event.data[:1]))
            # offline (initial) 201 B, online 1225 B, offline 201 B, online 1225 B: 2852 B
            assert got == [("offline", b""), ("online", b"\x00"), ("offline", b""),
                           ("online", b"\x01")]
        nursery.cancel_scope.cancel()


# -- lease: a watch refused after a reconnect ----------------------------------------------


async def test_lease_watch_refused_after_a_server_restart_ends_with_the_error(
    autojump_clock: trio.testing.MockClock, tmp_path: Path,
) -> None:
    """The server restarts (sessions kept on disk) with a limit of one watch per session:
    of the two watches the client re-sends the second is refused, so its iterator raises
    LimitExceeded after the events it held, it is forgotten and watch_lost is logged; the
    session and its other watch go on."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=1.0, data_dir=str(tmp_path))
        async with lease_connect([S1], 6.0, open_stream=net.open_stream) as member:
            await member.register("/p/a", b"1")
            kept = member.watch("/q")
            await kept.start()
            watch = member.watch("/p")
            await watch.start()
            await trio.sleep(0.5)
            with structlog.testing.capture_logs() as logs:
                net.stop()
                await trio.sleep(1.0)
                await net.start(S1, tick=1.0, data_dir=str(tmp_path),
                                limits=Limits(max_watches_per_session=1))
                await trio.sleep(10.0)
            assert member.state is SessionState.CONNECTED
            got = []
            with trio.fail_after(30), pytest.raises(LimitExceeded, match="too_many_watches"):
                async for event in watch:
                    got.append((event.event, event.id))
            assert got == [("online", "a")]
            assert list(member._watches.values()) == [kept]
            lost = [entry for entry in logs if entry["event"] == "watch_lost"]
            assert len(lost) == 1 and lost[0]["log_level"] == "warning"
            assert lost[0]["prefix"] == "/p" and lost[0]["error"] == "LimitExceeded"
            assert lost[0]["session_id"] is not None
            await member.register("/q/b", b"2")  # the session and the other watch go on
            async for event in kept:
                assert (event.event, event.id) == ("online", "b")
                break
        nursery.cancel_scope.cancel()


async def test_lease_key_watch_refused_by_an_older_server_raises_watch_key_unsupported(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session expires and a new one starts (reregister) on a server that predates
    watch_key: the re-sent key watch is answered "unknown operation", so its iterator raises
    WatchKeyUnsupported while the prefix watch of the same session keeps reporting."""
    async with trio.open_nursery() as nursery:
        net = await _lease_network(nursery)
        async with lease_connect([S1], 3.0, open_stream=net.open_stream,
                                 reregister=True) as member:
            key_watch = member.watch_key("/p/k")
            await key_watch.start()
            prefix_watch = member.watch("/p")
            await prefix_watch.start()
            net.stop()

            monkeypatch.setattr(lease_server, "parse_request", predating_watch_key)
            await net.start(S1, tick=0.5)
            await trio.sleep(8.0)
            assert member.state is SessionState.CONNECTED
            with trio.fail_after(30), \
                    pytest.raises(WatchKeyUnsupported, match="does not know watch_key"):
                async for event in key_watch:
                    assert (event.event, event.initial) == ("offline", True)
            await member.register("/p/k", b"v")
            async for event in prefix_watch:
                if event.id == "k":
                    assert event.event == "online"
                    break
            assert list(member._watches.values()) == [prefix_watch]
        nursery.cancel_scope.cancel()


# -- ZooKeeper -----------------------------------------------------------------------------


class _Stallable(trio.abc.Stream):
    """A client stream that, once stalled, accepts no more bytes (a server that does not
    read): send_all never returns."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.stalled = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.stalled:
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def zk_fake() -> AsyncIterator[FakeZooKeeper]:
    """A fake ZooKeeper whose connections live in their own nursery."""
    server = FakeZooKeeper()
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        yield server
        nursery.cancel_scope.cancel()


def _stallable_opener(fake: FakeZooKeeper) -> tuple[
        Callable[[str, int], Awaitable[trio.abc.Stream]], dict[tuple[str, int], _Stallable]]:
    """An ``open_stream`` to ``fake`` whose streams can be stalled, and those streams by
    server."""
    streams: dict[tuple[str, int], _Stallable] = {}

    async def open_stream(host: str, port: int) -> trio.abc.Stream:
        stream = _Stallable(await fake.open_stream(host, port))
        streams[(host, port)] = stream
        return stream

    return open_stream, streams


async def test_zookeeper_requests_wait_for_a_server_that_does_not_read(
    zk_fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that stops reading: registrations of 1 KiB fill the write queue to its 4 KiB
    bound and the rest wait (the queue never holds more than the bound and one request);
    the read timeout drops the connection, the session re-attaches elsewhere and every
    registration completes there."""
    monkeypatch.setattr(zk_client, "MAX_QUEUED_BYTES", 4096)
    open_stream, streams = _stallable_opener(zk_fake)

    async with zk_connect(_zk_url(zk_fake), session_timeout=6.0, open_stream=open_stream,
                          rng=random.Random(0)) as session:
        await session.register("/p/first", b"")
        await trio.sleep(0.1)
        first = session.connected_host
        assert first is not None and session._link is not None
        first_id = session.session_id
        outbox = session._link.outbox
        streams[first].stalled = True
        zk_fake.refused.add(first)
        async with trio.open_nursery() as calls:
            for i in range(20):
                calls.start_soon(session.register, f"/p/m{i:02}", bytes(1024))
            await trio.sleep(1.0)
            assert session.state is SessionState.CONNECTED
            assert 4096 <= outbox.bytes < 4096 + 1100
            assert len(outbox) < 20
        assert session.session_id == first_id and session.connected_host != first
        assert all(f"/p/m{i:02}" in zk_fake.nodes for i in range(20))


async def test_zookeeper_connection_is_dropped_when_its_own_writes_pass_the_hard_bound(
    zk_fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames the session writes by itself never wait: once a server that does not read
    lets them pass MAX_QUEUED_REQUESTS, the connection is dropped at once as lost ("the
    server does not read", long before the read timeout) and the session re-attaches."""
    monkeypatch.setattr(zk_client, "MAX_QUEUED_REQUESTS", 4)
    open_stream, streams = _stallable_opener(zk_fake)

    events: list[SessionEvent] = []
    async with zk_connect(_zk_url(zk_fake), session_timeout=6.0, open_stream=open_stream,
                          rng=random.Random(0)) as session, trio.open_nursery() as nursery:

        async def collect() -> None:
            async for event in session.state_changes():
                events.append(event)

        nursery.start_soon(collect)
        first, link = session.connected_host, session._link
        assert first is not None and link is not None
        streams[first].stalled = True
        zk_fake.refused.add(first)
        start = trio.current_time()
        link.write(b"\0" * 8)  # taken by the writer, which the server never lets finish
        await trio.sleep(0.01)
        for _ in range(5):
            link.write(b"\0" * 8)
        await poll_until(lambda: session.state is not SessionState.CONNECTED)
        lost_after = trio.current_time() - start
        await poll_until(lambda: session.state is SessionState.CONNECTED)
        assert session.connected_host != first
        nursery.cancel_scope.cancel()
    assert lost_after < 0.1  # the read timeout would be 4 s
    assert events[0].state is SessionState.DISCONNECTED
    assert "more than 4 requests wait to be sent: the server does not read" in events[0].reason


async def test_zookeeper_write_queue_hard_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link's write queue takes at most MAX_QUEUED_REQUESTS frames and twice
    MAX_QUEUED_BYTES bytes (a first frame of any size goes in); the next overflows it, and
    a request finds no room from MAX_QUEUED_BYTES bytes or half the frames on."""
    monkeypatch.setattr(zk_client, "MAX_QUEUED_REQUESTS", 4)
    link = zk_client._Link(("zk1", 1), ClientConnection())
    link.write(b"frame")
    assert link.outbox.has_room()
    link.write(b"frame")
    assert not link.outbox.has_room()  # half the frames
    for _ in range(3):
        link.write(b"frame")
    assert len(link.outbox) == 4 and link.outbox.bytes == 20
    assert link.outbox.overflow == "more than 4 requests wait to be sent: the server does not read"

    monkeypatch.setattr(zk_client, "MAX_QUEUED_BYTES", 10)
    link = zk_client._Link(("zk1", 1), ClientConnection())
    link.write(b"x" * 30)
    assert link.outbox.overflow is None and not link.outbox.has_room()
    link.write(b"y")
    assert link.outbox.bytes == 30
    assert link.outbox.overflow == "more than 20 bytes wait to be sent: the server does not read"


async def test_zookeeper_calls_past_max_pending_calls_raise_queue_full(
    zk_fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a silent server leaves MAX_PENDING_CALLS reads unanswered, one more raises
    QueueFull at once; the waiting ones complete after the session re-attaches, and the
    count goes back down."""
    monkeypatch.setattr(zk_client, "MAX_PENDING_CALLS", 3)
    async with zk_connect(_zk_url(zk_fake), session_timeout=3.0, open_stream=zk_fake.open_stream,
                          rng=random.Random(0)) as session:
        await session.register("/k", b"v")
        await trio.sleep(0.1)  # the registration's guard has its answer (it counts too)
        zk_fake.silent = True
        done: list[bytes | None] = []

        async def get() -> None:
            done.append(await session.get("/k"))

        async with trio.open_nursery() as calls:
            for _ in range(3):
                calls.start_soon(get)
            await trio.sleep(0.1)
            before = trio.current_time()
            with pytest.raises(QueueFull, match="3 requests are already waiting"):
                await session.get("/k")
            assert trio.current_time() == before
            # (the fake drops what it reads while silent: the reads are retried once the
            # read timeout has dropped the connection)
            await poll_until(lambda: session.state is not SessionState.CONNECTED)
            zk_fake.silent = False
        assert done == [b"v", b"v", b"v"]
        assert await session.get("/k") == b"v"  # the count went back down


async def test_zookeeper_state_changes_keep_the_newest_for_a_reader_that_does_not_read(
    zk_fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """state_changes() keeps at most MAX_STATE_EVENTS transitions for a reader that does not
    read (the oldest dropped): after three disconnect/re-attach rounds a bound of 2 leaves
    the last two, then the iterator ends after the close."""
    monkeypatch.setattr(zk_client, "MAX_STATE_EVENTS", 2)
    async with zk_connect(_zk_url(zk_fake), session_timeout=3.0, open_stream=zk_fake.open_stream,
                          rng=random.Random(0)) as session:
        changes = session.state_changes()
        for _ in range(3):
            zk_fake.silent = True
            await poll_until(lambda: session.state is not SessionState.CONNECTED)
            zk_fake.silent = False
            await poll_until(lambda: session.state is SessionState.CONNECTED)
    states = [event.state async for event in changes]
    assert states == [SessionState.CONNECTED, SessionState.CLOSED]
