"""Cross-client checks with kazoo: same nodes, same watches, same idea of session expiry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import kazoo.client as kazoo_client  # in the test extra: a missing kazoo is an error
import kazoo.protocol.states as kazoo_states
import pytest
import trio

from pulse.plugins.zookeeper import ZooKeeperSessionExpired, connect
from pulse.presence import SessionState
from tests.e2e.test_zookeeper_presence import Recorder
from tests.zk_harness import TICK_MS, BlackholeProxy, ZooKeeperServer, poll_until

pytestmark = [pytest.mark.zookeeper, pytest.mark.e2e]


TICK = TICK_MS / 1000.0


class KazooProbe:
    """A kazoo client with thread-safe records of its watch events and state changes."""

    def __init__(self, hosts: str, timeout: float) -> None:
        self.client = kazoo_client.KazooClient(hosts=hosts, timeout=timeout)
        self.lock = threading.Lock()
        self.watch_events: list[tuple[float, Any]] = []
        self.states: list[tuple[float, Any]] = []
        self.client.add_listener(self._on_state)

    def _on_state(self, state: Any) -> None:
        with self.lock:
            self.states.append((time.monotonic(), state))

    def on_watch(self, event: Any) -> None:
        """A kazoo watch callback that records the event."""
        with self.lock:
            self.watch_events.append((time.monotonic(), event))

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking kazoo call in a thread."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def start(self) -> None:
        await self.call(self.client.start, 10)

    async def stop(self) -> None:
        await self.call(self.client.stop)
        await self.call(self.client.close)


@pytest.fixture
def chroot() -> str:
    """A fresh path prefix per test on the shared server."""
    return f"/kazoo-{time.monotonic_ns()}"


@pytest.fixture
def probes() -> Iterator[list[KazooProbe]]:
    """Kazoo clients created by a test, stopped afterwards even if it fails."""
    created: list[KazooProbe] = []
    yield created
    for probe in created:
        probe.client.stop()
        probe.client.close()


async def test_each_client_sees_the_others_nodes_and_changes(
    zookeeper_server: ZooKeeperServer, chroot: str, probes: list[KazooProbe]
) -> None:
    """kazoo reads pulse's registration (owner = pulse's session) and its child watch fires
    on pulse's changes; pulse lists and watches kazoo's ephemeral node, and sees it go."""
    probe = KazooProbe(f"127.0.0.1:{zookeeper_server.client_port}", timeout=2.0)
    probes.append(probe)
    await probe.start()
    kz = probe.client
    async with (
        connect(zookeeper_server.url + chroot, session_timeout=2.0) as session,
        trio.open_nursery() as nursery,
    ):
        await session.register("/presence/p", b"from pulse")
        data, stat = await probe.call(kz.get, f"{chroot}/presence/p")
        assert data == b"from pulse" and stat.ephemeralOwner == session.session_id
        assert await probe.call(kz.get_children, f"{chroot}/presence", watch=probe.on_watch) == ["p"]

        recorder = Recorder()
        nursery.start_soon(recorder.consume, session.watch("/presence"))
        await recorder.wait_for("online", "p")
        await probe.call(kz.create, f"{chroot}/presence/k", b"from kazoo", ephemeral=True)
        await recorder.wait_for("online", "k")
        await poll_until(lambda: probe.watch_events)  # kazoo's child watch saw kazoo's own create
        assert probe.watch_events[0][1].type == kazoo_states.EventType.CHILD
        assert await session.list("/presence") == {"p": b"from pulse", "k": b"from kazoo"}
        kazoo_stat = await session.exists("/presence/k")
        assert kazoo_stat is not None and kazoo_stat.ephemeral_owner == kz.client_id[0]

        await probe.stop()  # closes kazoo's session: its ephemeral node goes at once
        await recorder.wait_for("offline", "k", timeout=2.0)
        assert await session.list("/presence") == {"p": b"from pulse"}
        nursery.cancel_scope.cancel()


async def test_both_clients_agree_when_a_pulse_session_expires(
    zookeeper_server: ZooKeeperServer, chroot: str, probes: list[KazooProbe]
) -> None:
    """Cut pulse off (a pulled cable): pulse declares its session expired on its own within
    one tick of the moment kazoo sees the server delete pulse's node."""
    timeout = 1.0
    probe = KazooProbe(f"127.0.0.1:{zookeeper_server.client_port}", timeout=2.0)
    probes.append(probe)
    await probe.start()
    proxy = BlackholeProxy(zookeeper_server.address)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        async with connect(proxy.url + chroot, session_timeout=timeout) as session:
            await session.register("/presence/p")
            stat = await probe.call(probe.client.exists, f"{chroot}/presence/p",
                                    watch=probe.on_watch)
            assert stat.ephemeralOwner == session.session_id
            changes: list[tuple[float, SessionState, str]] = []

            async def record() -> None:
                async for change in session.state_changes():
                    changes.append((time.monotonic(), change.state, change.reason))

            nursery.start_soon(record)
            proxy.cut()
            cut_at = time.monotonic()
            await poll_until(lambda: session.state is SessionState.EXPIRED and probe.watch_events)
            pulse_expired = next(at for at, state, _ in changes if state is SessionState.EXPIRED)
            kazoo_deleted, event = probe.watch_events[0]
            assert event.type == kazoo_states.EventType.DELETED
            print(f"\npulse client-side expiry {(pulse_expired - cut_at) * 1000:.0f} ms after the "
                  f"cut; server deleted the node {(kazoo_deleted - cut_at) * 1000:.0f} ms after")
            assert abs(pulse_expired - kazoo_deleted) <= TICK + 0.1
            assert [state for _, state, _ in changes] == [
                SessionState.DISCONNECTED, SessionState.EXPIRED
            ]
            assert "client-side" in changes[-1][2]
            proxy.restore()
            with pytest.raises(ZooKeeperSessionExpired):
                await session.get("/presence/p")
        nursery.cancel_scope.cancel()


async def test_both_clients_agree_when_a_kazoo_session_expires(
    zookeeper_server: ZooKeeperServer, chroot: str, probes: list[KazooProbe]
) -> None:
    """Cut kazoo off: pulse's watch reports kazoo's node offline when the server expires the
    session, and kazoo, once it reaches the server again, reports its session LOST."""
    timeout = 1.0
    proxy = BlackholeProxy(zookeeper_server.address)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        probe = KazooProbe(f"127.0.0.1:{proxy.port}", timeout=timeout)
        probes.append(probe)
        await probe.start()
        await probe.call(probe.client.create, f"{chroot}/presence/k", b"", ephemeral=True,
                         makepath=True)
        async with connect(zookeeper_server.url + chroot, session_timeout=2.0) as watcher:
            recorder = Recorder()
            nursery.start_soon(recorder.consume, watcher.watch("/presence"))
            await recorder.wait_for("online", "k")
            cut_at = trio.current_time()
            proxy.cut()
            gone_at = await recorder.wait_for("offline", "k", timeout=5)
            print(f"\nkazoo session expiry seen by pulse {(gone_at - cut_at) * 1000:.0f} ms "
                  "after the cut")
            assert gone_at - cut_at <= timeout + TICK + 0.1
            proxy.restore()
            await poll_until(lambda: any(s == kazoo_states.KazooState.LOST for _, s in probe.states),
                         timeout=15)
        nursery.cancel_scope.cancel()
