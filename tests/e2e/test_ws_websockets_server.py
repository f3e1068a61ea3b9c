"""pulse's resilient WebSocket client against a `websockets` server in its own process.

Real loopback sockets and real processes (kill, SIGSTOP); every test is bounded by
``trio.fail_after`` and uses short heartbeat timings.
"""

from __future__ import annotations

import ssl
import statistics
from pathlib import Path
from typing import Any

import pytest
import trio

from pulse._core.backoff import Backoff, Jitter
from pulse._core.policy import HeartbeatPolicy
from pulse.errors import ReconnectGaveUp
from pulse.plugins.websocket import (
    ClientState,
    ConnectionHandle,
    Delivery,
    Dropped,
    StateChange,
    reconnecting_websocket,
)
from tests.peers.harness import PeerProcess, peer, self_signed_certificate

pytestmark = pytest.mark.e2e

FAST = HeartbeatPolicy(interval=0.2, timeout=0.6)
QUICK_BACKOFF: dict[str, Any] = {"initial": 0.05, "maximum": 0.4}
SLACK = 0.3  # scheduling noise allowed on top of the timing rules (a loaded 2-core box)


class Recorder:
    """State changes with their time; lets a test wait (bounded by the caller) for one."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, StateChange]] = []
        self._changed = trio.Event()

    def __call__(self, change: StateChange) -> None:
        self.changes.append((trio.current_time(), change))
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, state: ClientState, count: int = 1) -> tuple[float, StateChange]:
        while True:
            found = [(t, c) for t, c in self.changes if c.state is state]
            if len(found) >= count:
                return found[count - 1]
            await self._changed.wait()


def opens(server: PeerProcess) -> list[dict[str, object]]:
    return [e for e in server.events if e["event"] == "open"]


async def test_echo_interop_text_binary_and_fragmented() -> None:
    """Text, binary and a 300 kB message (sent in fragments) round-trip through websockets."""
    with trio.fail_after(15):
        async with peer("ws_echo_server.py") as server:
            async with reconnecting_websocket(f"ws://127.0.0.1:{server.port}/chat?room=1", policy=FAST) as ws:
                big = bytes(range(256)) * 1200
                for message in ("héllo", b"\x00\xff", big):
                    await ws.send(message)
                    assert await ws.receive() == message
                await trio.sleep(1.0)  # idle: heartbeats answered by websockets
                stats = ws.stats()
                assert stats is not None and stats.pongs_received >= 3
                assert stats.rtt.max is not None and 0 < stats.rtt.max < 0.2
                assert ws.state is ClientState.OPEN
            assert opens(server)[0]["path"] == "/chat?room=1"


async def test_server_killed_and_restarted_queued_messages_arrive_once_in_order() -> None:
    """After kill -9 and restart, on_connect runs again and queued messages arrive once, in order."""
    events = Recorder()
    hooks: list[int] = []
    drops: list[Dropped] = []

    async def on_connect(handle: ConnectionHandle) -> None:
        hooks.append(handle.number)
        await handle.send(f"hello {handle.number}")
        assert await handle.receive() == f"hello {handle.number}"

    with trio.fail_after(30):
        async with peer("ws_echo_server.py") as server:
            async with reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=FAST,
                                              backoff=Backoff(**QUICK_BACKOFF), on_connect=on_connect,
                                              on_event=events, on_drop=drops.append) as ws:
                for i in range(10):
                    await ws.send(f"before {i}")
                assert [await ws.receive() for _ in range(10)] == [f"before {i}" for i in range(10)]
                await trio.sleep(0.3)  # let a pong confirm the last messages
                killed_at = trio.current_time()
                await server.kill()
                lost_at, _ = await events.wait(ClientState.RECONNECTING)
                assert lost_at - killed_at < FAST.dead_after  # a killed process resets the socket
                queued = [f"queued {i}" for i in range(50)]
                for message in queued:
                    await ws.send(message)
                assert ws.pending == 50
                await trio.sleep(0.5)  # a few refused attempts
                mark = len(server.events)
                await server.start(server.port)
                await events.wait(ClientState.OPEN, 2)
                assert [await ws.receive() for _ in range(50)] == queued
                await trio.sleep(0.3)
            assert hooks == [1, 2]
            restarted = [e["data"] for e in server.events[mark:] if e["event"] == "message"]
            assert restarted == ["hello 2", *queued]
            assert drops == []
            assert server.starts == 2


@pytest.mark.parametrize("delivery", [Delivery.AT_MOST_ONCE, Delivery.AT_LEAST_ONCE])
async def test_sigstopped_server_is_declared_dead_and_the_client_comes_back(
    delivery: Delivery,
) -> None:
    """A SIGSTOPped server is dead within timeout + interval; the client comes back after SIGCONT."""
    events = Recorder()
    drops: list[Dropped] = []
    with trio.fail_after(30):
        async with (
            peer("ws_echo_server.py") as server,
            reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=FAST,
                                   backoff=Backoff(**QUICK_BACKOFF), handshake_timeout=0.5,
                                   delivery=delivery, on_event=events, on_drop=drops.append) as ws,
        ):
            await ws.wait_open()
            await ws.send("ping-pong")
            assert await ws.receive() == "ping-pong"
            await trio.sleep(0.1)  # its confirmation pong follows the echo
            server.pause()
            stopped_at = trio.current_time()
            await ws.send("while frozen")
            lost_at, change = await events.wait(ClientState.RECONNECTING)
            noticed = lost_at - stopped_at
            assert noticed <= FAST.dead_after + FAST.interval + SLACK
            assert "peer timeout" in change.reason and change.code == 1011
            await trio.sleep(1.0)  # attempts time out in the handshake while frozen
            assert ws.state is ClientState.RECONNECTING
            server.resume()
            resumed_at = trio.current_time()
            opened_at, _ = await events.wait(ClientState.OPEN, 2)
            print(f"\nSIGSTOP noticed after {noticed * 1000:.0f} ms "
                  f"(timeout {FAST.dead_after * 1000:.0f} ms); "
                  f"reopened {1000 * (opened_at - resumed_at):.0f} ms after SIGCONT")
            if delivery is Delivery.AT_LEAST_ONCE:
                assert await ws.receive() == "while frozen"
                assert drops == []
            else:
                assert [(d.message, d.possibly_delivered) for d in drops] == [
                    ("while frozen", True)]
            await ws.send("after")
            assert await ws.receive() == "after"


async def test_close_code_1008_from_websockets_stops_reconnecting() -> None:
    """websockets closing with 1008 (policy violation) ends the client: no second attempt."""
    events = Recorder()
    with trio.fail_after(15):
        async with (
            peer("ws_echo_server.py") as server,
            reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=FAST,
                                   backoff=Backoff(**QUICK_BACKOFF), on_event=events) as ws,
        ):
            await ws.send("!close 1008 banned")
            _, change = await events.wait(ClientState.FAILED)
            assert "1008" in change.reason and "banned" in change.reason
            await trio.sleep(0.5)
            assert len(opens(server)) == 1
            with pytest.raises(ReconnectGaveUp):
                await ws.send("again")


async def test_headers_decide_the_handshake_and_403_gives_up() -> None:
    """Headers and subprotocols reach websockets; a 403 refusal makes the client give up."""
    with trio.fail_after(15):
        async with peer("ws_echo_server.py", "--require-header", "X-Token=s3cret",
                        "--subprotocol", "pulse.v1") as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with reconnecting_websocket(url, policy=FAST, headers=[("X-Token", "s3cret")],
                                              subprotocols=["pulse.v2", "pulse.v1"]) as ws:
                await ws.send("in")
                assert await ws.receive() == "in"
                assert ws.subprotocol == "pulse.v1"
            events = Recorder()
            async with reconnecting_websocket(url, policy=FAST, backoff=Backoff(**QUICK_BACKOFF),
                                              on_event=events):
                _, change = await events.wait(ClientState.FAILED)
                assert "403" in change.reason


async def test_wss_with_a_custom_ssl_context(tmp_path: Path) -> None:
    """wss:// to websockets with TLS, trusting a private CA through ssl_context."""
    certfile, keyfile = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(certfile))
    with trio.fail_after(15):
        async with peer("ws_echo_server.py", "--certfile", str(certfile),
                        "--keyfile", str(keyfile)) as server:
            async with reconnecting_websocket(f"wss://localhost:{server.port}/", policy=FAST,
                                              ssl_context=context) as ws:
                await ws.send("over tls")
                assert await ws.receive() == "over tls"
                await trio.sleep(0.5)
                stats = ws.stats()
                assert stats is not None and stats.pongs_received >= 1
            events = Recorder()
            async with reconnecting_websocket(f"wss://localhost:{server.port}/", policy=FAST,
                                              backoff=Backoff(max_attempts=1, **QUICK_BACKOFF),
                                              on_event=events):
                _, change = await events.wait(ClientState.FAILED)
                assert "CERTIFICATE_VERIFY_FAILED" in change.reason or "certificate" in change.reason


async def test_websockets_pings_are_answered_with_our_heartbeats_off() -> None:
    """With pulse heartbeats off, the websockets server's own pings are answered in time."""
    with trio.fail_after(15):
        async with peer("ws_echo_server.py", "--ping-interval", "0.1",
                        "--ping-timeout", "0.5") as server:
            events = Recorder()
            async with reconnecting_websocket(f"ws://127.0.0.1:{server.port}/",
                                              policy=HeartbeatPolicy(0, 0), on_event=events) as ws:
                await ws.wait_open()
                await trio.sleep(2.0)
                assert [c.state for _, c in events.changes] == [ClientState.OPEN]
                stats = ws.stats()
                assert stats is not None and stats.pings_sent == 0
            assert len(opens(server)) == 1


async def _reconnect_spread(jitter: Jitter, clients: int) -> list[float]:
    """Kill the server under ``clients`` clients, restart it at once; return the times (s,
    relative to the first) at which the restarted server saw each client come back."""
    with trio.fail_after(30):
        async with peer("ws_echo_server.py") as server:
            async with trio.open_nursery() as nursery:
                opened = trio.Event()
                count = 0
                done = trio.Event()

                async def one(i: int) -> None:
                    nonlocal count
                    backoff = Backoff(initial=1.0, maximum=2.0, jitter=jitter)
                    # Independent clients: the jitter alone spreads them (the shared
                    # probe's release window would spread them too).
                    async with reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=FAST,
                                                      backoff=backoff, shared_probe=False) as ws:
                        await ws.wait_open()
                        count += 1
                        if count == clients:
                            opened.set()
                        await done.wait()

                for i in range(clients):
                    nursery.start_soon(one, i)
                await opened.wait()
                first_generation = len(opens(server))
                mark = len(server.events)
                await server.restart()
                returned = []
                for _ in range(clients):
                    event = await server.wait_event(lambda e: e["event"] == "open", mark)
                    mark = server.events.index(event) + 1
                    returned.append(float(event["t"]))
                done.set()
            assert first_generation == clients
            times = sorted(returned)
            return [t - times[0] for t in times]


async def test_many_clients_reconnecting_are_spread_by_jitter() -> None:
    """Thirty independent clients come back spread out with full jitter, as one burst
    without it."""
    spread = await _reconnect_spread(Jitter.FULL, 30)
    burst = await _reconnect_spread(Jitter.NONE, 30)
    print(f"\nreconnect arrivals over {spread[-1] * 1000:.0f} ms with full jitter "
          f"(stdev {statistics.stdev(spread) * 1000:.0f} ms), "
          f"{burst[-1] * 1000:.0f} ms without")
    assert spread[-1] > 0.5
    assert statistics.stdev(spread) > 0.15
    assert burst[-1] < 0.3


async def test_slow_consumer_with_data_waiting_is_not_mistaken_for_a_dead_server() -> None:
    """While the app reads nothing, bytes waiting in the socket keep a flooding server alive."""
    events = Recorder()
    with trio.fail_after(30):
        async with (
            peer("ws_echo_server.py") as server,
            reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=FAST, receive_buffer=2,
                                   on_event=events) as ws,
        ):
            await ws.send("!flood 3000 1000")  # ~3 MB: more than the socket buffers hold
            await trio.sleep(3 * FAST.dead_after)  # the app reads nothing meanwhile
            assert [c.state for _, c in events.changes] == [ClientState.OPEN]
            got = [await ws.receive() for _ in range(3000)]
            assert [str(m).split()[0] for m in got] == [f"f{i}" for i in range(3000)]
            assert [c.state for _, c in events.changes] == [ClientState.OPEN]


async def test_slow_consumer_still_notices_a_frozen_server() -> None:
    """While the app reads nothing, an empty socket is real silence: a frozen server is dead."""
    events = Recorder()
    with trio.fail_after(30):
        async with (
            peer("ws_echo_server.py") as server,
            reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=FAST, receive_buffer=2,
                                   backoff=Backoff(**QUICK_BACKOFF), handshake_timeout=0.5,
                                   on_event=events) as ws,
        ):
            await ws.send("!flood 10 100")
            await server.wait_event(lambda e: e["event"] == "flooded")
            await trio.sleep(0.1)  # the burst is in our buffers, the socket is empty
            server.pause()
            stopped_at = trio.current_time()
            lost_at, change = await events.wait(ClientState.RECONNECTING)
            assert lost_at - stopped_at <= FAST.dead_after + FAST.interval + SLACK
            assert "peer timeout" in change.reason
            got = [await ws.receive() for _ in range(10)]
            assert [str(m).split()[0] for m in got] == [f"f{i}" for i in range(10)]
            server.resume()
