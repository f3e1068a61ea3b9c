"""Presence on the embedded lease server over real loopback TCP and real processes.

Real time, bounded: session timeouts of 1.5–2 s, every wait capped.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
import trio

from pulse.codec import encode_message
from pulse.presence import SessionState
from pulse.registry import connect_session

from ._lease_procs import Proxy, Recorder, agent, lease_server

pytestmark = pytest.mark.e2e

PREFIX = "/pulse/presence"


async def test_sigkilled_agent_is_offline_for_watchers_within_timeout_plus_tick(
    tmp_path: Path,
) -> None:
    """SIGKILL an agent: every watcher sees it offline within session timeout + one tick."""
    timeout, tick = 1.5, 0.25
    async with lease_server(tick=tick) as server, trio.open_nursery() as nursery:
        watchers = [Recorder(), Recorder()]
        for watcher in watchers:
            await nursery.start(watcher.run, server.url, PREFIX, 10 * tick)
        latencies = []
        for round_number in range(3):
            name = f"victim-{round_number}"
            async with agent(server.url, name, timeout, tmp_path) as victim:
                await victim.wait_line("registered")
                for watcher in watchers:
                    await watcher.wait_for("online", name)
                await trio.sleep(0.4 + 0.3 * round_number)  # vary the phase against the pings
                killed_at = trio.current_time()
                victim.signal(signal.SIGKILL)
                for watcher in watchers:
                    seen_at = await watcher.wait_for("offline", name, after=killed_at)
                    latencies.append(seen_at - killed_at)
        nursery.cancel_scope.cancel()
    print("detection latencies:", [round(x, 3) for x in latencies])
    assert len(latencies) == 6
    assert all(latency <= timeout + tick for latency in latencies), latencies
    assert all(latency > timeout - timeout / 3 - 0.05 for latency in latencies), latencies


async def test_cut_connection_reattaches_with_no_offline_event(tmp_path: Path) -> None:
    """Black-hole the member's connection (and refuse new ones briefly): it notices by read
    timeout, re-attaches to the same session before expiry; watchers see nothing."""
    timeout = 2.0
    async with lease_server(tick=0.25) as server, trio.open_nursery() as nursery:
        proxy = Proxy(server.port)
        await nursery.start(proxy.run)
        watcher = Recorder()
        await nursery.start(watcher.run, server.url, PREFIX, timeout)
        async with connect_session(f"pulse://127.0.0.1:{proxy.port}",
                                   session_timeout=timeout) as member:
            changes = member.state_changes()
            await member.register(f"{PREFIX}/member", b"x")
            session_id = member.session_id
            await watcher.wait_for("online", "member")
            for _ in range(3):
                proxy.cut()
                proxy.refusing = True
                await trio.sleep(timeout / 4)
                proxy.refusing = False
                with trio.fail_after(timeout * 2):
                    async for change in changes:
                        if change.state is SessionState.CONNECTED:
                            break
                        assert change.state is SessionState.DISCONNECTED, change
                assert member.session_id == session_id
            await trio.sleep(timeout)  # anything late would show up now
            assert member.state is SessionState.CONNECTED
        nursery.cancel_scope.cancel()
    assert watcher.seen() == [("online", "member"), ("offline", "member")]  # offline = close
    assert proxy.accepted == 4


async def test_restart_with_data_dir_keeps_sessions(tmp_path: Path) -> None:
    """Crash the server and start it again on the same port and data dir within the timeout:
    the agent and the watcher re-attach to their sessions, no offline event; the restored
    session still expires when its agent is killed."""
    timeout, tick = 2.0, 0.25
    data_dir = tmp_path / "data"
    async with lease_server(tick=tick, data_dir=str(data_dir)) as server, \
            trio.open_nursery() as nursery:
        watcher = Recorder()
        watch_session = await nursery.start(watcher.run, server.url, PREFIX, timeout)
        async with agent(server.url, "durable", timeout, tmp_path) as member:
            await member.wait_line("registered")
            await watcher.wait_for("online", "durable")
            watcher_id = watch_session.session_id
            watcher_changes = watch_session.state_changes()
            server.stop()
            await trio.sleep(0.5)
            restarted = await server.start()
            assert restarted.restored == 2
            await member.wait_line("re-attached", timeout=timeout)
            with trio.fail_after(timeout):
                async for change in watcher_changes:
                    if change.state is SessionState.CONNECTED:
                        break
                    assert change.state is SessionState.DISCONNECTED, change
            assert watch_session.session_id == watcher_id
            await trio.sleep(timeout + tick)
            assert watcher.seen() == [("online", "durable")]
            killed_at = trio.current_time()
            member.signal(signal.SIGKILL)
            gone_at = await watcher.wait_for("offline", "durable", after=killed_at)
            assert gone_at - killed_at <= timeout + tick
        nursery.cancel_scope.cancel()


async def test_hostile_input_never_crashes_the_server() -> None:
    """Garbage, oversized frames, bad envelopes, bad arguments, silent and half-sent
    connections: each gets an error or a close; a live session never notices."""
    rng = random.Random(5)
    payloads = [
        b"\x00\x00\x00\x00",
        b"\xff\xff\xff\xff" + b"x" * 100,
        b"\x00\x00\x00\x02\xc1\xc1",
        encode_message({"op": "connect"}),
        encode_message([0, 1, 0, "connect", {"timeout": "soon"}]),
        encode_message([0, 1, 0, "register", {"key": "/a"}]),
        encode_message([0, 1, 0, "connect", {"timeout": 1.0}])
        + encode_message([0, 2, 0, "register", {"key": "../etc", "data": 5}])
        + encode_message([0, 3, 0, "watch", {"prefix": 7, "watch_id": -1}])
        + encode_message([0, 4, 0, "connect", {"timeout": 1.0}])
        + b"\x00\x00\x10",
        *(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))) for _ in range(150)),
    ]
    async with lease_server(tick=0.25, handshake_timeout=1.0) as server:
        async with connect_session(server.url, session_timeout=2.0) as bystander:
            changes = bystander.state_changes()
            await bystander.register(f"{PREFIX}/bystander", b"ok")

            async def attack(payload: bytes) -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                async with stream:
                    try:
                        await stream.send_all(payload)
                        with trio.move_on_after(3.0):
                            while await stream.receive_some(65536):
                                pass
                    except trio.BrokenResourceError:
                        pass

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for payload in payloads:
                        nursery.start_soon(attack, payload)
                    silent = await trio.open_tcp_stream("127.0.0.1", server.port)
                    async with silent:
                        with trio.fail_after(3):
                            assert await silent.receive_some(65536)  # the handshake notice
            assert await bystander.get(f"{PREFIX}/bystander") == b"ok"
            assert bystander.state is SessionState.CONNECTED
            with trio.move_on_after(0):
                async for change in changes:
                    raise AssertionError(f"bystander changed state: {change}")
        async with connect_session(server.url, session_timeout=2.0) as newcomer:
            assert await newcomer.list(PREFIX) == {}
