"""Failures of the servers themselves: member crash, partition, every server down."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
import trio

from pulse.plugins.zookeeper import ZooKeeperSession, connect
from pulse.presence import SessionEvent, SessionState
from pulse.registry import parse_url
from tests.e2e.test_zookeeper_presence import Recorder
from tests.zk_harness import (
    BlackholeProxy,
    ZooKeeperEnsemble,
    ZooKeeperServer,
    poll_until,
    zk_url,
)

pytestmark = [pytest.mark.zookeeper, pytest.mark.e2e]



class InOrder(random.Random):
    """A random generator that leaves the host list in URL order (to pick the server)."""

    def shuffle(self, x: Any) -> None:
        """Keep the order."""


class StateLog:
    """Session state changes with their times, recorded in the background."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, SessionEvent]] = []

    async def consume(self, changes: AsyncIterator[SessionEvent]) -> None:
        async for change in changes:
            self.changes.append((trio.current_time(), change))

    def states(self) -> list[SessionState]:
        return [change.state for _, change in self.changes]

    def first(self, state: SessionState) -> float:
        return next(at for at, change in self.changes if change.state is state)


@pytest.mark.parametrize("role", ["follower", "leader"])
async def test_member_crash_reattaches_same_session_without_offline_event(
    zookeeper_ensemble: ZooKeeperEnsemble, role: str
) -> None:
    """SIGKILL the member a client is connected to: the client re-attaches to another
    member with the same session id, its registration stays, watchers see no offline
    event, and its own watch keeps working on the new member (setWatches)."""
    modes = {node.client_port: node.mode() for node in zookeeper_ensemble.nodes}
    target = next(n for n in zookeeper_ensemble.nodes if modes[n.client_port] == role)
    others = [n for n in zookeeper_ensemble.nodes if n is not target]
    ordered = zk_url([target.client_port] + [n.client_port for n in others], "/app")
    watcher_url = zk_url([n.client_port for n in others], "/app")
    timeout = 4.0
    async with (
        connect(ordered, session_timeout=timeout, rng=InOrder()) as agent,
        connect(watcher_url, session_timeout=timeout) as watcher,
        trio.open_nursery() as nursery,
    ):
        assert agent.connected_host == target.address
        await agent.register("/presence/agent", b"a")
        session_id = agent.session_id
        log = StateLog()
        nursery.start_soon(log.consume, agent.state_changes())
        seen_by_watcher = Recorder()
        nursery.start_soon(seen_by_watcher.consume, watcher.watch("/presence"))
        seen_by_agent = Recorder()
        nursery.start_soon(seen_by_agent.consume, agent.watch("/presence"))
        await seen_by_watcher.wait_for("online", "agent")
        await seen_by_agent.wait_for("online", "agent")

        killed_at = trio.current_time()
        target.kill()
        await poll_until(lambda: SessionState.CONNECTED in log.states(), timeout=timeout + 5)
        back = log.first(SessionState.CONNECTED) - killed_at
        print(f"\nre-attached after the {role} died: {back * 1000:.0f} ms "
              f"(session timeout {timeout} s)")
        assert log.states() == [SessionState.DISCONNECTED, SessionState.CONNECTED]
        assert agent.session_id == session_id
        assert agent.connected_host in [n.address for n in others]
        assert back < timeout

        await watcher.register("/presence/late", b"w")  # the agent's watch still fires
        await seen_by_agent.wait_for("online", "late")
        stat = await watcher.exists("/presence/agent")
        assert stat is not None and stat.ephemeral_owner == session_id
        await trio.sleep(0.5)
        assert ("offline", "agent") not in seen_by_watcher.seen()
        nursery.cancel_scope.cancel()


async def test_changes_made_while_disconnected_are_reported_after_reattach(
    zookeeper_server: ZooKeeperServer,
) -> None:
    """Cut the cable until the client is disconnected, change the watched children, plug
    it back: setWatches (with the last zxid seen) makes the server report the change."""
    proxy = BlackholeProxy(zookeeper_server.address)
    chroot = f"/cut-{time.monotonic_ns()}"
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        async with (
            connect(proxy.url + chroot, session_timeout=4.0) as agent,
            connect(zookeeper_server.url + chroot, session_timeout=4.0) as other,
        ):
            await other.register("/presence/first")
            recorder = Recorder()
            nursery.start_soon(recorder.consume, agent.watch("/presence"))
            await recorder.wait_for("online", "first")
            session_id = agent.session_id
            proxy.cut()
            await poll_until(lambda: agent.state is SessionState.DISCONNECTED, timeout=5)
            await other.register("/presence/while-away")
            await other.unregister("/presence/first")
            proxy.restore()
            await recorder.wait_for("online", "while-away", timeout=5)
            await recorder.wait_for("offline", "first", timeout=5)
            assert agent.session_id == session_id and agent.state is SessionState.CONNECTED
        nursery.cancel_scope.cancel()


async def test_all_servers_down_expires_client_side_then_reregisters_by_takeover(
    zookeeper_standalone: ZooKeeperServer,
) -> None:
    """Every server down for longer than the session timeout: the client declares its
    session expired by itself. When the server comes back with the old session restored
    (and its ephemeral node with it), the new session deletes that node (owned by the
    expired session) at once instead of waiting a whole timeout, and registers again."""
    server = zookeeper_standalone
    timeout = 2.0
    with structlog.testing.capture_logs() as logs:
        async with (
            connect(server.url, session_timeout=timeout, reregister=True) as agent,
            trio.open_nursery() as nursery,
        ):
            await agent.register("/presence/agent", b"a")
            old_id = agent.session_id
            log = StateLog()
            nursery.start_soon(log.consume, agent.state_changes())
            await trio.sleep(0.3)
            killed_at = trio.current_time()
            server.kill()
            await poll_until(lambda: SessionState.EXPIRED in log.states(), timeout=timeout + 2)
            expired_after = log.first(SessionState.EXPIRED) - killed_at
            print(f"\nclient-side expiry {expired_after * 1000:.0f} ms after every server died "
                  f"(session timeout {timeout} s)")
            assert timeout * 2 / 3 - 0.05 <= expired_after <= timeout + 0.05
            expired = next(c for _, c in log.changes if c.state is SessionState.EXPIRED)
            assert "client-side" in expired.reason and expired.session_id == old_id

            await trio.to_thread.run_sync(_restart, server)
            await poll_until(lambda: agent.state is SessionState.CONNECTED, timeout=10)
            connected_at = trio.current_time()
            new_id = agent.session_id
            assert new_id not in (None, old_id)

            # Well before the restored old session could expire (a whole timeout after the
            # restart), the node must already belong to the new session.
            async def owned_by_new_session() -> bool:
                stat = await agent.exists("/presence/agent")
                return stat is not None and stat.ephemeral_owner == new_id

            await poll_until(owned_by_new_session, timeout=timeout / 2)
            print(f"registration restored {(trio.current_time() - connected_at) * 1000:.0f} ms "
                  "after the new session started")
            nursery.cancel_scope.cancel()
    takeovers = [e for e in logs if e["event"] == "taking_over"]
    assert takeovers and f"0x{old_id:x}" in takeovers[0]["reason"]


def _restart(server: ZooKeeperServer) -> None:
    server.start()
    server.wait_serving()


async def test_url_lists_every_member(zookeeper_ensemble: ZooKeeperEnsemble) -> None:
    """A zk:// URL with several hosts parses into all of them and connects to one."""
    endpoint = parse_url(zookeeper_ensemble.url)
    assert len(endpoint.hosts) == 3
    session: ZooKeeperSession
    async with connect(endpoint, session_timeout=2.0) as session:
        assert session.connected_host in endpoint.hosts
