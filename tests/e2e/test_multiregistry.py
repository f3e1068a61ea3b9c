"""Independent registries with real processes on loopback: two ``pulse serve`` lease servers,
``pulse agent`` and ``pulse watch`` each given both with a repeated ``--server``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

from ._lease_procs import Agent
from ._wait import accepts_connections

pytestmark = pytest.mark.e2e

PULSE = [sys.executable, "-m", "pulse.cli.main"]
TICK = 0.25
TIMEOUT = 2.0
#: Process start-up, scheduling and the watcher's own delivery on a shared 2-core machine.
SLACK = 0.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def accepting(port: int, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while True:
            if accepts_connections(port):
                return
            await trio.sleep(0.05)


@asynccontextmanager
async def process(argv: list[str], cwd: Path) -> AsyncIterator[Agent]:
    """Run ``argv`` with its output lines collected (stderr too); SIGKILL it at the end."""
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, cwd=cwd)
    handle = Agent(proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle.pump)
            try:
                yield handle
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            with suppress(ProcessLookupError):
                proc.kill()
            with trio.move_on_after(5):
                await proc.wait()


async def test_one_registry_dies_no_offline_then_agent_dies_offline_in_bound(
        tmp_path: Path) -> None:
    """Kill one of two lease servers: the merged watcher warns that the registry is lost and
    prints no offline; SIGKILL the agent: the surviving server expires its session and the
    watcher prints offline within session timeout + tick (+ slack) of the kill."""
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"pulse://127.0.0.1:{port_a}", f"pulse://127.0.0.1:{port_b}"
    serve = [*PULSE, "serve", "--tick", str(TICK), "--listen"]
    with trio.fail_after(60):
        async with process([*serve, url_a], tmp_path) as server_a, \
                process([*serve, url_b], tmp_path):
            await accepting(port_a)
            await accepting(port_b)
            async with process([*PULSE, "watch", "--server", url_a, "--server", url_b,
                                "--session-timeout", str(TIMEOUT)], tmp_path) as watch, \
                    process([*PULSE, "agent", "--server", url_a, "--server", url_b,
                             "--id", "m1", "--session-timeout", str(TIMEOUT)],
                            tmp_path) as member:
                await member.wait_line(f"registered /pulse/presence/m1 on {url_a}")
                await member.wait_line(f"registered /pulse/presence/m1 on {url_b}")
                await watch.wait_line("online  m1")
                await trio.sleep(1.0)  # both registries' views live in the watcher

                killed_server = trio.current_time()
                server_a.process.kill()
                await watch.wait_line(f"registry {url_a} lost", timeout=2 * TIMEOUT + 2)
                lost_after = trio.current_time() - killed_server
                await trio.sleep(2 * TIMEOUT + 1.0)  # an expiry's worth and more
                assert not [line for line in watch.lines if line.startswith("offline")], \
                    watch.lines
                assert f"session lost on {url_a}" in "\n".join(member.lines) or any(
                    url_a in line for line in member.lines[2:])

                killed_agent = trio.current_time()
                member.process.kill()
                await watch.wait_line("offline m1", timeout=TIMEOUT + TICK + 5)
                detected = trio.current_time() - killed_agent
                print(f"\nregistry loss seen after {lost_after:.2f} s; agent offline "
                      f"{detected:.2f} s after SIGKILL (bound {TIMEOUT + TICK:g} s + "
                      f"{SLACK:g} s slack)")
                assert detected <= TIMEOUT + TICK + SLACK
                assert detected >= TIMEOUT * 2 / 3 - 0.1  # by expiry, not by a guess
                assert len([line for line in watch.lines if line.startswith("online")]) == 1


async def test_single_server_output_is_unchanged(tmp_path: Path) -> None:
    """One --server keeps the one-session agent ("registered KEY session=…") and the plain
    watch lines."""
    port = free_port()
    url = f"pulse://127.0.0.1:{port}"
    with trio.fail_after(40):
        async with process([*PULSE, "serve", "--tick", str(TICK), "--listen", url], tmp_path):
            await accepting(port)
            async with process([*PULSE, "watch", "--server", url], tmp_path) as watch, \
                    process([*PULSE, "agent", "--server", url, "--id", "s1"],
                            tmp_path) as member:
                line = await member.wait_line("registered /pulse/presence/s1")
                assert line.startswith("registered /pulse/presence/s1 session=0x")
                assert (await watch.wait_line("s1")).startswith("online  s1")
                member.signal(signal.SIGTERM)
                assert await watch.wait_line("offline") == "offline s1"


@pytest.mark.zookeeper
async def test_mixed_lease_and_zookeeper_registries(zookeeper_url: str) -> None:
    """A lease server and a real ZooKeeper as two registries: the key is held by both, the
    merged watch says online once, the lease server's crash is silent, and leaving the block
    (sessions closed) is reported offline by ZooKeeper alone within a second."""
    from pulse.multiregistry import connect_registries

    from ._lease_procs import lease_server

    prefix = "/pulse/presence"
    events: list[tuple[str, str]] = []
    with trio.fail_after(60):
        async with lease_server(tick=TICK) as server, trio.open_nursery() as nursery:
            urls = [server.url, zookeeper_url]
            async with connect_registries(urls, session_timeout=4) as watcher, \
                    watcher.watch(prefix) as watch:
                async def record() -> None:
                    async for event in watch:
                        events.append((event.event, event.id))

                nursery.start_soon(record)
                async with connect_registries(urls, session_timeout=4) as agent:
                    await agent.register(f"{prefix}/mixed", b"m")
                    for _ in range(200):
                        if (len(agent.holders(f"{prefix}/mixed")) == 2
                                and watch.view.live == 2 and events):
                            break
                        await trio.sleep(0.05)
                    assert agent.holders(f"{prefix}/mixed") == urls
                    assert watch.view.live == 2
                    server.stop()  # the lease registry crashes
                    await trio.sleep(6.0)  # longer than the session timeout
                    assert events == [("online", "mixed")]
                    assert watch.view.live == 1
                left = trio.current_time()
                for _ in range(100):
                    if ("offline", "mixed") in events:
                        break
                    await trio.sleep(0.05)
                assert events == [("online", "mixed"), ("offline", "mixed")]
                assert trio.current_time() - left < 1.0
                nursery.cancel_scope.cancel()
