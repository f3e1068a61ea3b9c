"""Several independent registries (pulse.multiregistry) over in-memory lease servers, in
virtual time."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from pulse._core.merged_view import RegistryChange, RegistryState
from pulse.errors import NoPlugin
from pulse.multiregistry import MergedWatch, Registries, RegistryStatus, connect_registries
from pulse.presence import PresenceEvent

from ._lease_harness import Link, Network

S1 = ("s1", 1)
S2 = ("s2", 2)
URLS = ["pulse://s1:1", "pulse://s2:2"]
TICK = 0.5
TIMEOUT = 4.0
PREFIX = "/pulse/presence"


class Client:
    """One client process's view of the network: its links can all be cut at once (a crash
    without a goodbye, or a pulled cable)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.links: list[Link] = []
        self.to: dict[Link, tuple[str, int]] = {}
        self.dead = False

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        if self.dead:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.ENETUNREACH, "this client is gone")
        stream = await self.network.open_stream(host, port)
        assert isinstance(stream, Link)
        self.links.append(stream)
        self.to[stream] = (host, port)
        return stream

    def cut(self, server: tuple[str, int]) -> None:
        """Black-hole the current links to ``server`` only (new connections still work)."""
        for link in self.links:
            if self.to[link] == server:
                link.cut()

    def crash(self) -> None:
        self.dead = True
        for link in self.links:
            link.cut()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (virtual time, bounded) until ``condition()`` holds."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


class Recorder:
    """Merged events and registry changes with the virtual time they were seen."""

    def __init__(self) -> None:
        self.events: list[tuple[float, PresenceEvent]] = []
        self.changes: list[tuple[float, RegistryChange]] = []

    def on_change(self, change: RegistryChange) -> None:
        self.changes.append((trio.current_time(), change))

    async def run(self, watch: Any) -> None:
        async for event in watch:
            self.events.append((trio.current_time(), event))

    def seen(self, kind: str, name: str) -> list[float]:
        return [at for at, e in self.events if (e.event, e.id) == (kind, name)]

    async def wait_for(self, kind: str, name: str, timeout: float = 60.0) -> float:
        await until(lambda: bool(self.seen(kind, name)), timeout)
        return self.seen(kind, name)[0]


@asynccontextmanager
async def two_servers() -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=TICK)
        await net.start(S2, tick=TICK)
        yield net
        nursery.cancel_scope.cancel()


def holders(net: Network, name: str) -> list[tuple[str, int]]:
    return [address for address, slot in net.slots.items()
            if f"{PREFIX}/{name}" in slot.server.state.keys]


@dataclass
class Watched:
    """An agent holding ``a`` in both registries and a watcher that has seen it online."""

    agent: Client
    watcher: Client
    regs: Registries
    view: Registries
    watch: MergedWatch
    recorder: Recorder


@asynccontextmanager
async def agent_and_watcher(net: Network) -> AsyncIterator[Watched]:
    """An agent registers ``a`` (``b"x"``) through its own sessions; a watcher follows the
    merged view of PREFIX until ``a`` is online."""
    agent, watcher = Client(net), Client(net)
    recorder = Recorder()
    async with connect_registries(URLS, session_timeout=TIMEOUT,
                                  open_stream=agent.open_stream) as regs, \
            connect_registries(URLS, session_timeout=TIMEOUT,
                               open_stream=watcher.open_stream) as view, \
            view.watch(PREFIX, on_registry_change=recorder.on_change) as watch, \
            trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run, watch)
        await regs.register(f"{PREFIX}/a", b"x")
        await recorder.wait_for("online", "a")
        yield Watched(agent, watcher, regs, view, watch, recorder)
        nursery.cancel_scope.cancel()


async def test_registers_in_every_registry_and_watch_merges(
        autojump_clock: trio.testing.MockClock) -> None:
    """One key registered through two independent sessions is held by both servers; the
    merged watch reports it online once, as initial."""
    async with two_servers() as net:
        agent, watcher = Client(net), Client(net)
        async with connect_registries(URLS, session_timeout=TIMEOUT,
                                      open_stream=agent.open_stream) as regs:
            await regs.register(f"{PREFIX}/a", b"data")
            await until(lambda: len(regs.holders(f"{PREFIX}/a")) == 2, 5)
            assert sorted(holders(net, "a")) == [S1, S2]
            sessions = regs.sessions()
            assert all(s is not None for s in sessions.values())
            assert len({id(s) for s in sessions.values()}) == 2  # one session per server
            recorder = Recorder()
            async with connect_registries(URLS, session_timeout=TIMEOUT,
                                          open_stream=watcher.open_stream) as view, \
                    view.watch(PREFIX, on_registry_change=recorder.on_change) as watch, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(recorder.run, watch)
                await recorder.wait_for("online", "a")
                await trio.sleep(2.0)
                assert [(e.event, e.id, e.data, e.initial) for _, e in recorder.events] == [
                    ("online", "a", b"data", True)]
                assert sorted(c.state.value for _, c in recorder.changes) == ["live", "live"]
                nursery.cancel_scope.cancel()


async def test_one_server_down_no_offline_then_agent_dies_offline_in_bound(
        autojump_clock: trio.testing.MockClock) -> None:
    """Killing one of two servers: the watcher is told that registry is lost but sees no
    offline; then the agent crashes: offline within session timeout + tick (+ settle) of the
    crash, from the surviving server."""
    async with two_servers() as net, agent_and_watcher(net) as w:
        regs, watch, recorder = w.regs, w.watch, w.recorder
        await until(lambda: len(regs.holders(f"{PREFIX}/a")) == 2, 5)
        await until(lambda: watch.view.live == 2)
        net.stop(S1)  # the server crashes: every connection to it drops
        await trio.sleep(3 * TIMEOUT)
        assert recorder.seen("offline", "a") == []
        lost = [c for _, c in recorder.changes if c.state is RegistryState.LOST]
        assert [c.name for c in lost] == ["pulse://s1:1"]
        assert lost[0].live == 1
        crashed = trio.current_time()
        w.agent.crash()
        offline = await recorder.wait_for("offline", "a")
        assert offline - crashed <= TIMEOUT + TICK + 0.1
        # Detected by expiry on the server: no earlier than a timeout after the agent's
        # last ping (it pings after a third of the timeout without sending).
        assert offline - crashed >= TIMEOUT * 2 / 3 - 0.05


async def test_all_registries_lost_freezes_then_reconciles(
        autojump_clock: trio.testing.MockClock) -> None:
    """The watcher cut off from both registries reports no offline (the view is frozen);
    when it reaches them again it reports only what changed meanwhile."""
    async with two_servers() as net:
        agent, other, watcher = Client(net), Client(net), Client(net)
        recorder = Recorder()
        async with connect_registries(URLS, session_timeout=TIMEOUT,
                                      open_stream=agent.open_stream) as regs, \
                connect_registries(URLS, session_timeout=TIMEOUT,
                                   open_stream=other.open_stream) as regs2, \
                connect_registries(URLS, session_timeout=TIMEOUT, retry_max=1.0,
                                   open_stream=watcher.open_stream) as view, \
                view.watch(PREFIX, on_registry_change=recorder.on_change) as watch, \
                trio.open_nursery() as nursery:
            nursery.start_soon(recorder.run, watch)
            await regs.register(f"{PREFIX}/a", b"x")
            await regs2.register(f"{PREFIX}/b", b"y")
            await recorder.wait_for("online", "a")
            await recorder.wait_for("online", "b")
            watcher.crash()  # the watcher's cable is out
            await trio.sleep(0.5)
            await regs2.unregister(f"{PREFIX}/b")  # b leaves while nobody can see it
            await trio.sleep(3 * TIMEOUT)
            assert recorder.seen("offline", "a") == [] and recorder.seen("offline", "b") == []
            assert [c.live for _, c in recorder.changes
                    if c.state is RegistryState.LOST][-1] == 0
            watcher.dead = False  # the cable is back
            await recorder.wait_for("offline", "b", timeout=30)
            await trio.sleep(3.0)
            assert recorder.seen("offline", "a") == []
            assert len(recorder.seen("online", "a")) == 1
            nursery.cancel_scope.cancel()


async def test_an_unreachable_registry_does_not_block_the_other(
        autojump_clock: trio.testing.MockClock) -> None:
    """With one registry unreachable from the start, registering and watching work on the
    other; the dead one is retried in the background and joins when it comes up."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=TICK)
        client = Client(net)
        statuses: list[RegistryStatus] = []
        recorder = Recorder()
        async with connect_registries(URLS, session_timeout=TIMEOUT, retry_max=2.0,
                                      open_stream=client.open_stream) as regs, \
                regs.watch(PREFIX, on_registry_change=recorder.on_change) as watch, \
                trio.open_nursery() as inner:
            changes = regs.status_changes()

            async def collect() -> None:
                async for status in changes:
                    statuses.append(status)

            inner.start_soon(collect)
            inner.start_soon(recorder.run, watch)
            with trio.fail_after(10):
                await regs.register(f"{PREFIX}/a", b"x")
            assert regs.holders(f"{PREFIX}/a") == ["pulse://s1:1"]
            await recorder.wait_for("online", "a")
            await trio.sleep(2 * TIMEOUT)  # s2's first attempts give up (no server for 4 s)
            assert [c.name for _, c in recorder.changes
                    if c.state is RegistryState.LOST] == ["pulse://s2:2"]
            await net.start(S2, tick=TICK)
            await until(lambda: len(regs.holders(f"{PREFIX}/a")) == 2, 10)
            assert sorted(holders(net, "a")) == [S1, S2]
            assert any(s.url == "pulse://s2:2" and s.state == "lost" for s in statuses), statuses
            assert any(s.url == "pulse://s2:2" and s.state == "up" for s in statuses)
            await trio.sleep(2.0)
            assert recorder.seen("offline", "a") == []
            assert len(recorder.seen("online", "a")) == 1
            inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def test_leaving_the_block_closes_every_session(
        autojump_clock: trio.testing.MockClock) -> None:
    """Leaving ``connect_registries`` closes each session: both servers drop the key at
    once, so a watcher sees it offline without waiting for a timeout."""
    async with two_servers() as net:
        watcher = Client(net)
        recorder = Recorder()
        async with connect_registries(URLS, session_timeout=TIMEOUT,
                                      open_stream=watcher.open_stream) as view, \
                view.watch(PREFIX) as watch, trio.open_nursery() as nursery:
            nursery.start_soon(recorder.run, watch)
            agent = Client(net)
            async with connect_registries(URLS, session_timeout=TIMEOUT,
                                          open_stream=agent.open_stream) as regs:
                await regs.register(f"{PREFIX}/a", b"x")
                await recorder.wait_for("online", "a")
                await until(lambda: len(regs.holders(f"{PREFIX}/a")) == 2, 5)
            left = trio.current_time()
            assert holders(net, "a") == []
            offline = await recorder.wait_for("offline", "a")
            assert offline - left < 0.2
            nursery.cancel_scope.cancel()


async def test_bad_arguments() -> None:
    """No URL, a repeated URL, a bad timeout or a scheme without sessions: refused."""
    with pytest.raises(ValueError):
        async with connect_registries([]):
            pass  # pragma: no cover
    with pytest.raises(ValueError):
        async with connect_registries(["pulse://a:1", "pulse://a:1"]):
            pass  # pragma: no cover
    with pytest.raises(ValueError):
        async with connect_registries(URLS, session_timeout=0):
            pass  # pragma: no cover
    with pytest.raises(NoPlugin):
        async with connect_registries(["tcp://127.0.0.1:1"]):
            pass  # pragma: no cover


async def test_bad_keys_are_refused_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    """A malformed key raises ValueError at once; a key the backend refuses (too long for the
    lease server) raises ValueError instead of being retried for ever, and the sessions stay."""
    async with two_servers() as net:
        client = Client(net)
        async with connect_registries(URLS, session_timeout=TIMEOUT,
                                      open_stream=client.open_stream) as regs:
            for key in ("relative", "/", "/a//b", "/a/../b"):
                with pytest.raises(ValueError):
                    await regs.register(key)
            with trio.fail_after(10), pytest.raises(ValueError):
                await regs.register("/" + "k" * 5000)
            await regs.register(f"{PREFIX}/fine", b"ok")
            await until(lambda: len(regs.holders(f"{PREFIX}/fine")) == 2)


async def test_reattached_registry_resyncs_with_a_fresh_watch(
        autojump_clock: trio.testing.MockClock) -> None:
    """The watcher's link to one registry goes silent: that registry is lost after the read
    timeout, the session re-attaches on a new connection, a fresh watch brings the view
    back (a member that arrived meanwhile is reported once), and nothing goes offline."""
    async with two_servers() as net, agent_and_watcher(net) as w:
        regs, view, watch, recorder = w.regs, w.view, w.watch, w.recorder
        await until(lambda: watch.view.live == 2)
        sessions = view.sessions()
        before = sessions["pulse://s1:1"]
        assert before is not None
        w.watcher.cut(S1)
        await until(lambda: watch.view.live == 1, timeout=2 * TIMEOUT)
        await regs.register(f"{PREFIX}/b", b"y")  # arrives while s1 is out of sight
        await until(lambda: watch.view.live == 2, timeout=4 * TIMEOUT)
        assert view.sessions()["pulse://s1:1"] is before  # the same session re-attached
        await trio.sleep(2.0)
        assert [(e.event, e.id) for _, e in recorder.events] == [
            ("online", "a"), ("online", "b")]
        states = [(c.name, c.state.value) for _, c in recorder.changes]
        assert ("pulse://s1:1", "lost") in states
        assert states[-1] == ("pulse://s1:1", "live")
        server_watches = net.server(S1).state.watch_count
        assert server_watches == 1  # the old watch was removed on the server


async def test_the_merged_feed_keeps_its_bound_in_both_modes() -> None:
    """A feed that drops the oldest keeps the newest `limit` items; one that does not keeps
    its first `limit` items, hands them out, then raises QueueFull."""
    from pulse._driver.feed import BoundedFeed
    from pulse.errors import QueueFull

    newest: BoundedFeed[int] = BoundedFeed(3, drop_oldest=True)
    for i in range(5):
        newest.put(i)
    assert [await newest.get() for _ in range(3)] == [2, 3, 4]

    strict: BoundedFeed[int] = BoundedFeed(3, drop_oldest=False, what="merged events")
    for i in range(5):
        strict.put(i)
    assert [await strict.get() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(QueueFull, match="more than 3 merged events"):
        await strict.get()


async def test_the_merged_feed_is_bounded_in_bytes() -> None:
    """With max_bytes the feed holds items while their sizes fit: dropping the oldest makes
    room for a large item; otherwise the first item that does not fit stops the feed (no
    later small one slips in), what it held comes out in order, then QueueFull names the
    bytes; the byte count returns to zero."""
    from pulse._driver.feed import BoundedFeed
    from pulse.errors import QueueFull

    newest: BoundedFeed[bytes] = BoundedFeed(100, drop_oldest=True, max_bytes=10, size=len)
    for item in (b"aaaa", b"bbbb", b"cccccccc"):
        newest.put(item)
    assert newest.bytes == 8 and await newest.get() == b"cccccccc" and newest.bytes == 0

    strict: BoundedFeed[bytes] = BoundedFeed(100, drop_oldest=False, max_bytes=10, size=len)
    for item in (b"aaaa", b"bbbb", b"ccc", b"d"):
        strict.put(item)
    assert [await strict.get(), await strict.get()] == [b"aaaa", b"bbbb"]
    assert strict.bytes == 0
    with pytest.raises(QueueFull, match="more than 10 bytes"):
        await strict.get()
    with pytest.raises(ValueError):
        BoundedFeed(10, drop_oldest=False, max_bytes=0, size=len)


async def test_a_watch_whose_reader_falls_behind_its_byte_bound_ends_with_queue_full(
        autojump_clock: trio.testing.MockClock) -> None:
    """A merged watch with a 4 KiB buffer and a reader that does not read: 40 members of
    1 KiB each come online; the reader then gets the events that fit, in order, then
    QueueFull, and the watch has stopped following (the registries go on)."""
    from pulse.errors import QueueFull

    async with two_servers() as net:
        agent, watcher = Client(net), Client(net)
        async with connect_registries(URLS, session_timeout=TIMEOUT,
                                      open_stream=agent.open_stream) as regs, \
                connect_registries(URLS, session_timeout=TIMEOUT,
                                   open_stream=watcher.open_stream) as view:
            async with view.watch(PREFIX, max_buffered_bytes=4096) as watch:
                for i in range(40):
                    await regs.register(f"{PREFIX}/m{i:02}", bytes(1024))
                await trio.sleep(3.0)  # the events arrive while nobody reads
                got: list[str] = []
                with pytest.raises(QueueFull, match="4096 bytes"):
                    async for event in watch:
                        got.append(event.id)
                # Each event costs 1024 + 3 + 200 bytes: three fit in 4096.
                assert got == ["m00", "m01", "m02"]
                assert watch not in view._watches
            with pytest.raises(ValueError):
                view.watch(PREFIX, max_buffered_bytes=0)
            assert len(regs.holders(f"{PREFIX}/m39")) == 2
