"""The election's per-key watch on a real ZooKeeper server: each candidate sets a watch on
its predecessor's znode only (getData/exists with watch=true), so the leader's death reaches
one candidate — counted as the watcher notifications each session received on the wire and
as the watch events that woke each candidacy."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio

from pulse.election import LeadershipLost, election
from pulse.plugins.zookeeper import connect
from pulse.plugins.zookeeper.protocol import EventType
from pulse.presence import PresenceEvent
from tests._counting_session import Counting
from tests.zk_harness import BlackholeProxy, ZooKeeperServer, zk_url

pytestmark = [pytest.mark.zookeeper, pytest.mark.e2e]

T = 2.0


def _count_notifications(session: Any, seen: list[int]) -> None:
    """Record the type of every watcher notification the session receives from the server."""
    table = session._watches
    fire = table.fire

    def counted(event: Any) -> int:
        seen.append(event.type)
        result: int = fire(event)
        return result

    table.fire = counted


async def test_zookeeper_leader_death_notifies_only_its_successor(
    zookeeper_server: ZooKeeperServer,
) -> None:
    """Four candidates on ZooKeeper; the leader's cable is cut until its session expires:
    one NodeDeleted reaches the successor, no notification reaches the others, and the
    successor leads with a larger token."""
    path = f"/pulse/leader/kw{uuid.uuid4().hex[:8]}"
    direct = zk_url([zookeeper_server.client_port])
    led: list[tuple[str, int]] = []
    notified: dict[str, list[int]] = {}
    woken: dict[str, list[PresenceEvent]] = {}
    successor_leads = trio.Event()
    first_leads = trio.Event()
    async with trio.open_nursery() as nursery:
        proxy = BlackholeProxy(zookeeper_server.address)
        await nursery.start(proxy.run)

        async def candidate(name: str, url: str) -> None:
            async with connect(url, session_timeout=T) as raw:
                seen: list[int] = []
                _count_notifications(raw, seen)
                notified[name] = seen
                session = Counting(raw)
                woken[name] = session.woken
                try:
                    async with election(session, path, id=name) as leadership:
                        led.append((name, leadership.token))
                        first_leads.set()
                        if name == "c1":
                            successor_leads.set()
                        await trio.sleep_forever()
                except LeadershipLost:
                    await trio.sleep_forever()

        nursery.start_soon(candidate, "c0", proxy.url)
        with trio.fail_after(20):
            await first_leads.wait()
        for i in range(1, 4):
            nursery.start_soon(candidate, f"c{i}", direct)
            await trio.sleep(0.3)
        await trio.sleep(1.0)
        before = {name: len(notified[name]) for name in ("c1", "c2", "c3")}
        proxy.cut()
        with trio.fail_after(T + 5.0):
            await successor_leads.wait()
        await trio.sleep(1.0)
        after = {name: notified[name][before[name]:] for name in ("c1", "c2", "c3")}
        nursery.cancel_scope.cancel()
    assert [name for name, _ in led] == ["c0", "c1"]
    assert led[1][1] > led[0][1]
    assert after == {"c1": [EventType.NODE_DELETED], "c2": [], "c3": []}
    assert [len(woken[name]) for name in ("c1", "c2", "c3")] == [1, 0, 0]
    assert woken["c1"][0].event == "offline"


async def test_zookeeper_watch_key_reports_existence_then_changes(zookeeper_url: str) -> None:
    """ZooKeeperSession.watch_key: first whether the node exists (initial), then its
    deletion and re-creation; a data change is not reported."""
    async with connect(zookeeper_url, session_timeout=T) as owner, \
            connect(zookeeper_url, session_timeout=T) as watcher:
        await owner.register("/p/a", b"1")
        events = watcher.watch_key("/p/a")
        other = watcher.watch_key("/p/b")
        seen = [await events.__anext__(), await other.__anext__()]
        await owner.register("/p/a", b"changed")  # data only
        await owner.unregister("/p/a")
        seen.append(await events.__anext__())
        await owner.register("/p/a", b"3")
        seen.append(await events.__anext__())
        await events.aclose()  # type: ignore[attr-defined]
        await other.aclose()  # type: ignore[attr-defined]
    assert seen == [PresenceEvent("online", "a", b"1", initial=True),
                    PresenceEvent("offline", "b", initial=True),
                    PresenceEvent("offline", "a"),
                    PresenceEvent("online", "a", b"3")]
