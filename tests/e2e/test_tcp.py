"""The TCP plugin end to end over real loopback sockets (short, bounded real time)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
import trustme

from pulse._core.backoff import Backoff, Jitter
from pulse._core.policy import HeartbeatPolicy
from pulse.errors import PeerTimeout
from pulse.frames import PROTOCOL_VERSION, FrameDecoder, Hello, encode_frame
from pulse.plugins.tcp import (
    ClientState,
    TcpKeepalive,
    connect_tcp,
    echo,
    reconnecting_tcp,
    serve_tcp,
)
from pulse.plugins.tcp.server import Handler

pytestmark = pytest.mark.e2e
FAST = HeartbeatPolicy(interval=0.1, timeout=0.4)


async def start_server(nursery: trio.Nursery, handler: Handler = echo, port: int = 0,
                       **options: Any) -> int:
    listeners = await nursery.start(lambda task_status: serve_tcp(
        handler, port=port, policy=FAST, task_status=task_status, **options))
    return int(listeners[0].socket.getsockname()[1])


async def test_echo_and_ping_over_loopback() -> None:
    """A client exchanges messages with the echo server and measures a loopback RTT."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with connect_tcp("127.0.0.1", port, FAST,
                                   keepalive=TcpKeepalive(1, 1, 2, user_timeout=2)) as conn:
                await conn.send({"hello": [1, 2, 3]})
                assert await conn.receive() == {"hello": [1, 2, 3]}
                rtt = await conn.ping()
                assert 0 < rtt < 0.5
                await trio.sleep(0.5)  # several heartbeat intervals: both stay alive
                assert conn.state.value == "alive"
            nursery.cancel_scope.cancel()


async def test_server_drops_a_client_that_stops_answering() -> None:
    """A client that completes HELLO and then goes silent is dropped within timeout+interval."""
    outcome: list[tuple[str, float]] = []
    dropped = trio.Event()

    async def handler(conn: object) -> None:
        from pulse._driver.connection import HeartbeatConnection
        assert isinstance(conn, HeartbeatConnection)
        try:
            await conn.receive()
        except PeerTimeout as exc:
            outcome.append((str(exc), trio.current_time()))
            dropped.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(encode_frame(Hello(PROTOCOL_VERSION, 0.1, 0.4, "mute")))
            last_byte_sent = trio.current_time()
            decoder = FrameDecoder()
            while not decoder.feed(await stream.receive_some(1024)):
                pass
            # Now say nothing at all, and read nothing: the server must give up on us.
            await dropped.wait()
            await stream.aclose()
            nursery.cancel_scope.cancel()
    reason, declared_at = outcome[0]
    elapsed = declared_at - last_byte_sent
    assert "no data" in reason
    assert 0.4 <= elapsed <= 0.4 + 0.1 + 0.3  # timeout + one interval, plus scheduling slack


async def test_garbage_from_one_client_leaves_the_others_served() -> None:
    """A client sending garbage is disconnected; a well-behaved client keeps working."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery)
            async with connect_tcp("127.0.0.1", port, FAST) as good:
                bad = await trio.open_tcp_stream("127.0.0.1", port)
                await bad.send_all(b"\xff\xff\xff\xff garbage that claims to be 4 GiB long")
                assert await bad.receive_some(65536) is not None
                for i in range(5):
                    await good.send(i)
                    assert await good.receive() == i
                await bad.aclose()
            nursery.cancel_scope.cancel()


async def test_reconnecting_client_survives_a_server_restart() -> None:
    """The server goes away and comes back on the same port: the client reconnects by itself."""
    backoff = Backoff(initial=0.05, maximum=0.2, jitter=Jitter.FULL)
    with trio.fail_after(15):
        async with trio.open_nursery() as outer:
            server_scope = trio.CancelScope()

            async def run_server(port: int, task_status: trio.TaskStatus[int]) -> None:
                with server_scope:
                    async with trio.open_nursery() as nursery:
                        task_status.started(await start_server(nursery, port=port))

            port = await outer.start(run_server, 0)
            async with reconnecting_tcp("127.0.0.1", port, FAST, backoff=backoff) as client:
                await client.send("one")
                assert await client.receive() == "one"
                server_scope.cancel()
                server_scope = trio.CancelScope()
                states = []
                async for change in client.events():
                    states.append(change.state)
                    if change.state is ClientState.RECONNECTING:
                        break
                await outer.start(run_server, port)
                await client.send("two")
                assert await client.receive() == "two"
                assert client.connects == 2
            outer.cancel_scope.cancel()
    assert ClientState.OPEN in states and states[-1] is ClientState.RECONNECTING


async def test_reconnecting_client_gives_up_after_max_attempts() -> None:
    """With max_attempts and no server, the client fails with ReconnectGaveUp."""
    from pulse.errors import ReconnectGaveUp

    backoff = Backoff(initial=0.01, maximum=0.02, max_attempts=3)
    with trio.fail_after(10):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()  # nothing listens there any more
        async with reconnecting_tcp("127.0.0.1", port, FAST, backoff=backoff,
                                    connect_timeout=1.0) as client:
            with pytest.raises(ReconnectGaveUp):
                await client.send("nobody home")
            assert client.state is ClientState.FAILED


async def test_tls_round_trip() -> None:
    """tls:// wraps the same heartbeat protocol in trio.SSLStream."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, ssl_context=server_ctx)
            async with connect_tcp("127.0.0.1", port, FAST, ssl_context=client_ctx) as conn:
                assert conn.transport == "tls"
                await conn.send(b"secret")
                assert await conn.receive() == b"secret"
                await trio.sleep(0.3)
                assert conn.stats().pongs_received >= 1
            nursery.cancel_scope.cancel()


async def test_cancelling_serve_tcp_while_a_handler_fails_is_clean() -> None:
    """A handler raising the documented error (its client died) while the server's scope is
    cancelled: serve_tcp keeps the error to that client and the cancel completes cleanly,
    with no ExceptionGroup."""
    from pulse._driver.connection import HeartbeatConnection

    entered = trio.Event()

    async def handler(conn: HeartbeatConnection) -> None:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            raise PeerTimeout("the client died")

    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                port = await start_server(nursery, handler)
                async with connect_tcp("127.0.0.1", port, FAST):
                    await entered.wait()
                    scope.cancel()
                    await trio.sleep_forever()
        assert scope.cancelled_caught


async def test_a_ping_flooder_that_reconnects_is_refused_while_it_cools_down() -> None:
    """A client closed for a ping flood that connects again at once is shut out before any
    handshake (no HELLO comes back) until its cooldown ends; then it is served again."""
    from pulse.frames import Ping

    hello = encode_frame(Hello(PROTOCOL_VERSION, 1.0, 3.0, "flooder"))
    flood = b"".join(encode_frame(Ping(i, 0.0)) for i in range(3000))

    async def first_frame(stream: trio.SocketStream) -> object | None:
        decoder = FrameDecoder()
        with trio.move_on_after(2):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                frames = decoder.feed(data)
                if frames:
                    return frames[0]
        return "silence"

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, max_ping_rate=50)
            flooder = await trio.open_tcp_stream("127.0.0.1", port)
            await flooder.send_all(hello + flood)
            with trio.move_on_after(5):
                while await flooder.receive_some(65536):
                    pass  # until the server closes it for the flood
            await flooder.aclose()
            again = await trio.open_tcp_stream("127.0.0.1", port)
            await again.send_all(hello)
            assert await first_frame(again) is None  # closed without a HELLO back
            await again.aclose()
            await trio.sleep(1.2)  # the first cooldown is 1 s
            later = await trio.open_tcp_stream("127.0.0.1", port)
            await later.send_all(hello)
            assert isinstance(await first_frame(later), Hello)
            await later.aclose()
            nursery.cancel_scope.cancel()
