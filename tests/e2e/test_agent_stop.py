"""Stopping `pulse agent` (SIGTERM / SIGINT) closes its session on the server: watchers see it
leave at once and the process exits at once, on pulse:// and zk:// (issue 10, row 11).

On an idle machine both take well under 1 s. The tests bound them by 2 s, which still tells a
closed session from an expired one: with the 4 s session timeout used here, expiry could
report the agent offline no sooner than 2.67 s after its last ping (a third of the timeout
before the stop). The 2 s leave room for a CI machine running three test workers on two
cores."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from tests.e2e._lease_procs import Recorder, agent, lease_server
from tests.zk_harness import ZooKeeperServer

pytestmark = pytest.mark.e2e

PREFIX = "/pulse/presence"


#: Seconds within which the agent is offline and its process gone (see the module docstring).
PROMPTLY = 2.0


async def stop_and_measure(url: str, tmp_path: Path, signum: int, name: str) -> tuple[float, float]:
    """Start an agent, wait until a watcher sees it, send ``signum``; return (seconds until the
    watcher saw it offline, seconds until the process exited)."""
    async with trio.open_nursery() as nursery:
        watcher = Recorder()
        await nursery.start(watcher.run, url, PREFIX, 4.0)
        async with agent(url, name, 4.0, tmp_path) as member:
            await member.wait_line("registered")
            await watcher.wait_for("online", name)
            stopped_at = trio.current_time()
            member.signal(signum)
            with trio.fail_after(5):
                await member.process.wait()
            exited = trio.current_time() - stopped_at
            offline = await watcher.wait_for("offline", name, after=stopped_at, timeout=10) - stopped_at
        nursery.cancel_scope.cancel()
    return offline, exited


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stopping_a_lease_agent_closes_its_session(tmp_path: Path, signum: int) -> None:
    """pulse://: the agent's key goes at once and the process exits at once (within 2 s)."""
    async with lease_server(tick=0.5) as server:
        offline, exited = await stop_and_measure(server.url, tmp_path, signum, "a")
    assert offline < PROMPTLY, offline
    assert exited < PROMPTLY, exited


@pytest.mark.zookeeper
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stopping_a_zookeeper_agent_closes_its_session(
    zookeeper_server: ZooKeeperServer, tmp_path: Path, signum: int,
) -> None:
    """zk://: closeSession reaches ZooKeeper, the node goes at once, the process exits at once
    (within 2 s)."""
    url = f"{zookeeper_server.url}/agent-stop-{time.monotonic_ns()}"
    offline, exited = await stop_and_measure(url, tmp_path, signum, "z")
    assert offline < PROMPTLY, offline
    assert exited < PROMPTLY, exited


async def test_agent_authenticates_and_registers_only_its_own_id(tmp_path: Path) -> None:
    """With --auth-file the agent registers on a server requiring credentials; a wrong secret
    makes it exit with status 1 instead of retrying forever."""
    from pulse.plugins.lease.server import AccessPolicy

    policy = AccessPolicy(credentials={"a": b"right"})
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("a:right\n")
    bad.write_text("a:wrong\n")
    async with lease_server(tick=0.5, access=policy) as server:
        async with agent(server.url, "a", 4.0, tmp_path, "--auth-file", str(good)) as member:
            await member.wait_line("registered /pulse/presence/a")
        async with agent(server.url, "a", 4.0, tmp_path, "--auth-file", str(bad)) as member:
            await member.wait_line("refused")
            with trio.fail_after(5):
                assert await member.process.wait() == 1
