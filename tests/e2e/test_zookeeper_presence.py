"""Presence on a real ZooKeeper: round trips, conflicts, crashed and paused agents."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import pytest
import trio

from pulse.plugins.zookeeper import NodeExistsError, NotOwnedError, connect
from pulse.presence import PresenceEvent, SessionState
from pulse.registry import connect_session
from tests.e2e.zk_agent import AgentProcess
from tests.zk_harness import TICK_MS, ZooKeeperServer, poll_until

pytestmark = [pytest.mark.zookeeper, pytest.mark.e2e]

# The harness fixtures this module uses.

TICK = TICK_MS / 1000.0


class Recorder:
    """Collects (time, event) pairs from a watch iterator in the background."""

    def __init__(self) -> None:
        self.events: list[tuple[float, PresenceEvent]] = []
        self._changed = trio.Event()

    async def consume(self, events: AsyncIterator[PresenceEvent]) -> None:
        async for event in events:
            self.events.append((trio.current_time(), event))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, kind: str, name: str, timeout: float = 10.0) -> float:
        """Time at which ``kind`` for ``name`` was seen (waits for it, bounded)."""
        with trio.fail_after(timeout):
            while True:
                for at, event in self.events:
                    if (event.event, event.id) == (kind, name):
                        return at
                await self._changed.wait()

    def seen(self) -> list[tuple[str, str]]:
        return [(e.event, e.id) for _, e in self.events]


async def test_register_list_watch_round_trip(zookeeper_url: str) -> None:
    """Registrations show up in list/get and as watch events, then vanish on close."""
    async with (
        connect_session(zookeeper_url, session_timeout=2.0) as watcher,
        trio.open_nursery() as nursery,
    ):
        async with connect_session(zookeeper_url, session_timeout=2.0) as agent:
            await agent.register("/presence/a", b"A")
            await agent.register("/presence/b", b"B")
            assert await watcher.list("/presence") == {"a": b"A", "b": b"B"}
            assert await watcher.get("/presence/a") == b"A"
            assert await watcher.get("/presence/missing") is None
            assert await watcher.list("/nothing/here") == {}
            recorder = Recorder()
            nursery.start_soon(recorder.consume, watcher.watch("/presence"))
            await recorder.wait_for("online", "b")
            assert all(e.initial for _, e in recorder.events)
            await agent.register("/presence/c", b"C")
            await recorder.wait_for("online", "c")
            await agent.unregister("/presence/a")
            await recorder.wait_for("offline", "a")
        await recorder.wait_for("offline", "c")  # closing the agent's session removes b and c
        assert recorder.seen() == [
            ("online", "a"), ("online", "b"), ("online", "c"),
            ("offline", "a"), ("offline", "b"), ("offline", "c"),
        ]
        assert [e.data for _, e in recorder.events[:3]] == [b"A", b"B", b"C"]
        assert await watcher.list("/presence") == {}
        nursery.cancel_scope.cancel()


async def test_chroot_prefixes_every_path(zookeeper_server: ZooKeeperServer) -> None:
    """With zk://host/chroot, keys live under the chroot as the server sees them."""
    async with (
        connect(zookeeper_server.url + "/tenant-x", session_timeout=2.0) as scoped,
        connect(zookeeper_server.url, session_timeout=2.0) as raw,
    ):
        await scoped.register("/presence/dev", b"d")
        assert await raw.get("/tenant-x/presence/dev") == b"d"
        assert await scoped.list("/") == {"presence": b""}
        await scoped.unregister("/presence/dev")
        assert await raw.get("/tenant-x/presence/dev") is None


async def test_conflicting_registrations(zookeeper_url: str) -> None:
    """Another session's key cannot be registered or unregistered; one's own is updated."""
    async with (
        connect(zookeeper_url, session_timeout=2.0) as first,
        connect(zookeeper_url, session_timeout=2.0) as second,
    ):
        await first.register("/presence/dev", b"v1")
        with pytest.raises(NodeExistsError, match=f"0x{first.session_id:x}"):
            await second.register("/presence/dev", b"mine")
        with pytest.raises(NotOwnedError):
            await second.unregister("/presence/dev")
        await first.register("/presence/dev", b"v2")
        assert await second.get("/presence/dev") == b"v2"
        stat = await second.exists("/presence/dev")
        assert stat is not None and stat.ephemeral_owner == first.session_id
        with pytest.raises(ValueError):
            await first.register("relative/key")


@pytest.mark.parametrize("session_timeout", [1.0, 2.0])
async def test_killed_agent_is_reported_offline_within_the_session_timeout(
    zookeeper_url: str, session_timeout: float
) -> None:
    """An agent process SIGKILLed disappears for watchers within session timeout + one tick
    (and not much sooner than two thirds of it: it is the expiry that reports it)."""
    agent = await AgentProcess.start(zookeeper_url, "/presence/victim", session_timeout)
    try:
        registered = await agent.wait_for(event="registered")
        assert registered["timeout"] == session_timeout
        async with (
            connect(zookeeper_url, session_timeout=2.0) as watcher,
            trio.open_nursery() as nursery,
        ):
            recorder = Recorder()
            nursery.start_soon(recorder.consume, watcher.watch("/presence"))
            await recorder.wait_for("online", "victim")
            await trio.sleep(0.5)  # let the agent settle into its ping rhythm
            killed_at = trio.current_time()
            agent.signal(signal.SIGKILL)
            gone_at = await recorder.wait_for("offline", "victim", timeout=session_timeout + 5)
            latency = gone_at - killed_at
            print(f"\nZooKeeper SIGKILL detection, session timeout {session_timeout} s: "
                  f"{latency * 1000:.0f} ms")
            assert latency <= session_timeout + TICK + 0.1
            assert latency >= session_timeout * 2 / 3 - 0.1
            assert await watcher.get("/presence/victim") is None
            nursery.cancel_scope.cancel()
    finally:
        await agent.aclose()


async def test_paused_agent_learns_expiry_and_reregisters(zookeeper_url: str) -> None:
    """An agent SIGSTOPped past its timeout is reported offline; on SIGCONT it learns its
    session expired, starts a new one and registers again (reregister=True)."""
    timeout = 1.0
    agent = await AgentProcess.start(zookeeper_url, "/presence/sleepy", timeout, reregister=True)
    try:
        first = await agent.wait_for(event="registered")
        async with (
            connect(zookeeper_url, session_timeout=2.0) as watcher,
            trio.open_nursery() as nursery,
        ):
            recorder = Recorder()
            nursery.start_soon(recorder.consume, watcher.watch("/presence"))
            await recorder.wait_for("online", "sleepy")
            stopped_at = trio.current_time()
            agent.signal(signal.SIGSTOP)
            gone_at = await recorder.wait_for("offline", "sleepy", timeout=timeout + 5)
            print(f"\nZooKeeper SIGSTOP detection, session timeout {timeout} s: "
                  f"{(gone_at - stopped_at) * 1000:.0f} ms")
            assert gone_at - stopped_at <= timeout + TICK + 0.1
            agent.signal(signal.SIGCONT)
            with trio.fail_after(10):
                expired = await agent.wait_for(event="state", state="expired")
                assert expired["session_id"] == first["session_id"]
                connected = await agent.wait_for(event="state", state="connected")
            assert connected["session_id"] != first["session_id"]
            back_at = await _wait_online_again(recorder, "sleepy")
            assert back_at > gone_at
            stat = await watcher.exists("/presence/sleepy")
            assert stat is not None and stat.ephemeral_owner == connected["session_id"]
            nursery.cancel_scope.cancel()
    finally:
        await agent.aclose()


async def _wait_online_again(recorder: Recorder, name: str) -> float:
    def onlines() -> list[float]:
        return [at for at, e in recorder.events if (e.event, e.id) == ("online", name)]

    await poll_until(lambda: len(onlines()) >= 2)
    return onlines()[-1]


async def test_session_states_and_negotiated_timeout(zookeeper_url: str) -> None:
    """The server clamps the timeout into [2, 20] ticks; state_changes() reports the close."""
    async with connect(zookeeper_url, session_timeout=0.1) as short:
        assert short.session_timeout == pytest.approx(2 * TICK)
    async with connect(zookeeper_url, session_timeout=100.0) as long:
        assert long.session_timeout == pytest.approx(20 * TICK)
    async with connect(zookeeper_url, session_timeout=1.5) as session:
        assert session.state is SessionState.CONNECTED
        assert session.session_timeout == pytest.approx(1.5)
        changes = session.state_changes()
    assert [event.state async for event in changes] == [SessionState.CLOSED]


async def test_sequential_and_persistent_creates(zookeeper_url: str) -> None:
    """create() makes ephemeral-sequential, persistent-sequential and persistent nodes; only
    the ephemeral ones vanish with the session."""
    async with connect(zookeeper_url, session_timeout=2.0) as session:
        await session.register("/q/anchor")  # creates the persistent parent /q
        first = await session.create("/q/item-", b"1", sequential=True)
        second = await session.create("/q/item-", b"2", sequential=True)
        kept = await session.create("/q/kept-", b"3", ephemeral=False, sequential=True)
        plain = await session.create("/q/plain", ephemeral=False)
        assert first.startswith("/q/item-") and len(first) == len("/q/item-") + 10
        assert int(second[-10:]) == int(first[-10:]) + 1
        assert plain == "/q/plain"
    async with connect(zookeeper_url, session_timeout=2.0) as later:
        assert sorted(await later.list("/q")) == sorted([kept.rsplit("/", 1)[1], "plain"])


async def test_rapid_changes_are_reported_once_each(zookeeper_url: str) -> None:
    """Many quick registrations and removals: the watcher reports each member online once
    and offline once, and its view ends equal to the server's."""
    names = [f"dev{i:02d}" for i in range(20)]
    async with (
        connect(zookeeper_url, session_timeout=2.0) as agent,
        connect(zookeeper_url, session_timeout=2.0) as watcher,
        trio.open_nursery() as nursery,
    ):
        await agent.register("/presence/anchor")
        recorder = Recorder()
        nursery.start_soon(recorder.consume, watcher.watch("/presence"))
        await recorder.wait_for("online", "anchor")
        for name in names:
            await agent.register(f"/presence/{name}")
        for name in names[::2]:
            await agent.unregister(f"/presence/{name}")
        expected = {"anchor", *names[1::2]}
        assert set(await watcher.list("/presence")) == expected

        def view() -> set[str]:
            seen = recorder.seen()
            return {n for k, n in seen if k == "online"} - {n for k, n in seen if k == "offline"}

        await poll_until(lambda: view() == expected, timeout=5)
        seen = recorder.seen()
        onlines = [n for kind, n in seen if kind == "online"]
        offlines = [n for kind, n in seen if kind == "offline"]
        assert len(onlines) == len(set(onlines)) and len(offlines) == len(set(offlines))
        assert set(offlines) <= set(names[::2])
        nursery.cancel_scope.cancel()
