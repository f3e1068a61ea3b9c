"""pulse's WebSocket server with `websockets` clients in their own processes, and the
registry entries (``ws://`` serve and ping). Loopback only, bounded real time."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import pytest
import trio

from pulse._core.policy import HeartbeatPolicy
from pulse.errors import ConnectionClosed, PeerTimeout
from pulse.plugins.websocket import (
    ServerConnection,
    WebSocketServer,
    echo,
    reconnecting_websocket,
    serve_websocket,
)
from pulse.registry import PingOptions, ServeOptions, ping_function, serve_function
from tests.peers.harness import peer, self_signed_certificate

pytestmark = pytest.mark.e2e

FAST = HeartbeatPolicy(interval=0.2, timeout=0.6)
SLACK = 0.3


async def start(nursery: trio.Nursery, handler: object = echo, **options: object) -> WebSocketServer:
    """Start ``serve_websocket`` on a free loopback port."""
    options.setdefault("policy", FAST)
    server: WebSocketServer = await nursery.start(
        functools.partial(serve_websocket, handler, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
    )
    return server


async def test_websockets_client_echoes_through_the_pulse_server() -> None:
    """A websockets client process exchanges 20 messages with pulse's echo server."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            async with peer("ws_client.py", f"ws://127.0.0.1:{server.port}/", "--count", "20",
                            ready=None) as client:
                assert client.process is not None
                assert await client.process.wait() == 0
                echoes = [e["data"] for e in client.events if e["event"] == "echo"]
                assert echoes == [f"m{i}" for i in range(20)]
            nursery.cancel_scope.cancel()


async def test_sigstopped_websockets_client_is_dropped_and_others_are_not() -> None:
    """A frozen client is closed (1011) within timeout + interval; a live one keeps going."""
    gone: list[tuple[str, float, BaseException]] = []
    dropped = trio.Event()

    async def handler(conn: ServerConnection) -> None:
        try:
            await echo(conn)
            await conn.receive()
        except ConnectionClosed as exc:
            gone.append((conn.path, trio.current_time(), exc))
            dropped.set()
            raise

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, handler)
            url = f"ws://127.0.0.1:{server.port}"
            async with peer("ws_client.py", f"{url}/frozen", "--hold", ready=None) as frozen, \
                    peer("ws_client.py", f"{url}/live", "--count", "40", "--every", "0.05",
                         ready=None) as live:
                await frozen.wait_event(lambda e: e["event"] == "open")
                await live.wait_event(lambda e: e["event"] == "open")
                frozen.pause()
                stopped_at = trio.current_time()
                await dropped.wait()
                path, closed_at, error = gone[0]
                assert path == "/frozen"
                assert isinstance(error, PeerTimeout)
                noticed = closed_at - stopped_at
                assert noticed <= FAST.dead_after + FAST.interval + SLACK
                print(f"\nfrozen websockets client dropped after {noticed * 1000:.0f} ms")
                assert live.process is not None
                assert await live.process.wait() == 0
                assert len([e for e in live.events if e["event"] == "echo"]) == 40
                frozen.resume()
                closed = await frozen.wait_event(lambda e: e["event"] == "closed")
                assert closed["code"] in (1011, 1006)
            nursery.cancel_scope.cancel()


async def test_websockets_client_keepalive_is_answered_by_pulse() -> None:
    """pulse answers a websockets client's own keepalive pings (0.1 s ping, 0.5 s timeout)."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, policy=HeartbeatPolicy(0, 0))
            async with peer("ws_client.py", f"ws://127.0.0.1:{server.port}/", "--hold",
                            "--ping-interval", "0.1", "--ping-timeout", "0.5",
                            ready=None) as client:
                await client.wait_event(lambda e: e["event"] == "open")
                await trio.sleep(2.0)
                assert not [e for e in client.events if e["event"] in ("closed", "error")]
                assert len(server.connections) == 1
            nursery.cancel_scope.cancel()


async def test_registry_ws_serve_and_ping() -> None:
    """``ws://`` through the registry: the echo server listens, ping reports an RTT per pong."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            endpoint, serve_fn = serve_function("ws://127.0.0.1:0")
            listeners = await nursery.start(serve_fn, endpoint, ServeOptions(interval=0.2))
            port = listeners[0].socket.getsockname()[1]
            endpoint, ping_fn = ping_function(f"ws://127.0.0.1:{port}/")
            replies = [r async for r in ping_fn(endpoint, PingOptions(interval=0.05, count=5))]
            assert [r.seq for r in replies] == [1, 2, 3, 4, 5]
            assert all(0 < r.rtt < 0.5 for r in replies)
            assert replies[0].peer == f"127.0.0.1:{port}"
            nursery.cancel_scope.cancel()


async def test_registry_ping_against_websockets_and_a_frozen_server() -> None:
    """``pulse ping ws://`` works against websockets, and raises PeerTimeout once it freezes."""
    with trio.fail_after(20):
        async with peer("ws_echo_server.py") as server:
            endpoint, ping_fn = ping_function(f"ws://127.0.0.1:{server.port}/")
            replies = [r async for r in ping_fn(endpoint, PingOptions(interval=0.05, count=3))]
            assert [r.seq for r in replies] == [1, 2, 3]
            seqs = []
            with pytest.raises(PeerTimeout):
                async for reply in ping_fn(endpoint, PingOptions(interval=0.05, timeout=0.5)):
                    seqs.append(reply.seq)
                    if reply.seq == 2:
                        server.pause()
            assert seqs == [1, 2]


async def test_pulse_client_and_server_over_tls(tmp_path: Path) -> None:
    """wss:// end to end with pulse on both sides: TLS server context, private CA client."""
    certfile, keyfile = self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certfile, keyfile)
    client_context = ssl.create_default_context(cafile=str(certfile))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, ssl_context=server_context)
            async with reconnecting_websocket(f"wss://localhost:{server.port}/secure", policy=FAST,
                                              ssl_context=client_context) as ws:
                for i in range(5):
                    await ws.send(f"s{i}")
                assert [await ws.receive() for _ in range(5)] == [f"s{i}" for i in range(5)]
                await trio.sleep(1.0)
                stats = ws.stats()
                assert stats is not None and stats.pongs_received >= 2
            nursery.cancel_scope.cancel()
