"""The public API on every loop (trio, asyncio, uvloop): real loopback peers, short and bounded.

What asyncio users touch first: a heartbeat pair, the TCP server with its reconnecting
client, the WebSocket client against the `websockets` library's server and pulse's
WebSocket server under a `websockets` client (peers in their own processes), pulse.rpc over
a framework's own sockets, and ``connect_session`` on pulse:// (a lease server on the same
loop) and zk:// (a real ZooKeeper). On asyncio loops every run also checks that nothing it
entered left a task behind (:func:`tests.loops.run`).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from pulse import HeartbeatConnection
from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy
from pulse.errors import ConnectionClosed, ReconnectGaveUp
from pulse.plugins.lease.server import LeaseServer, ServerConfig, bound_address
from pulse.plugins.tcp import ClientState as TcpState
from pulse.plugins.tcp import StateChange as TcpStateChange
from pulse.plugins.tcp import connect_tcp, reconnecting_tcp
from pulse.plugins.tcp.server import Handler as TcpHandler
from pulse.plugins.tcp.server import echo as tcp_echo
from pulse.plugins.tcp.server import serve_tcp
from pulse.plugins.websocket import ClientState as WsState
from pulse.plugins.websocket import ServerConnection, WebSocketServer, reconnecting_websocket
from pulse.plugins.websocket import StateChange as WsStateChange
from pulse.plugins.websocket.server import serve_websocket
from pulse.presence import SessionState
from pulse.registry import connect_session
from pulse.rpc import ChannelState, ChannelTiming, RequestIds, Role, open_heartbeat_timer
from pulse.testing import heartbeat_pair
from tests.loops import on_every_loop
from tests.loops import silent_port as silent_port  # a fixture

pytestmark = pytest.mark.e2e

FAST = HeartbeatPolicy(interval=0.1, timeout=0.5)
QUICK = Backoff(initial=0.05, maximum=0.2)
PEERS = Path(__file__).resolve().parent.parent / "peers"
LIMIT = 15.0  # every test body is bounded by this many seconds


async def start_tcp_server(group: anyio.abc.TaskGroup,
                           handler: TcpHandler) -> int:
    """``serve_tcp(handler)`` on a loopback port in ``group``; returns the port."""
    listeners = await group.start(lambda *, task_status: serve_tcp(
        handler, host="127.0.0.1", port=0, policy=FAST, task_status=task_status))
    return int(listeners[0].socket.getsockname()[1])


@pytest.fixture(scope="module")
def ws_echo_url() -> Iterator[str]:
    """A `websockets` library echo server in its own process (tests/peers/ws_echo_server.py)."""
    proc = subprocess.Popen([sys.executable, "-u", str(PEERS / "ws_echo_server.py"), "--quiet"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "ws_echo_server.py printed nothing within 20 s"
        line = proc.stdout.readline().decode()
        assert line.startswith("PORT "), line
        yield f"ws://127.0.0.1:{int(line.split()[1])}/"
    finally:
        proc.kill()
        proc.wait(10)


@on_every_loop
async def test_heartbeat_pair_exchanges_messages_and_pings() -> None:
    """pulse.testing.heartbeat_pair gives two connected connections on the running loop."""
    with anyio.fail_after(LIMIT):
        async with heartbeat_pair(FAST, FAST) as (left, right):
            await left.send({"n": 1})
            assert await right.receive() == {"n": 1}
            await right.send(b"back")
            assert await left.receive() == b"back"
            assert 0 <= await left.ping(timeout=2) < 2
            await anyio.sleep(0.3)  # a few heartbeats both ways
            assert left.stats().pongs_received >= 1 and not left.closed and not right.closed


@on_every_loop
async def test_tcp_server_and_reconnecting_client_survive_a_server_restart() -> None:
    """The TCP server echoes; the reconnecting client comes back after the server restarts."""
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            server = anyio.CancelScope()

            async def host(port: int, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
                with server:
                    await serve_tcp(tcp_echo, host="127.0.0.1", port=port, policy=FAST,
                                    task_status=task_status)

            listeners = await group.start(host, 0)
            port = listeners[0].socket.getsockname()[1]
            changes: list[TcpState] = []
            lost = anyio.Event()

            def on_event(change: TcpStateChange) -> None:
                changes.append(change.state)
                if change.state is TcpState.RECONNECTING:
                    lost.set()

            async with reconnecting_tcp("127.0.0.1", port, FAST, backoff=QUICK,
                                        on_event=on_event) as client:
                await client.send("one")
                assert await client.receive() == "one"
                server.cancel()
                server = anyio.CancelScope()
                await lost.wait()
                await group.start(host, port)
                await client.send("two")  # waits for the next connection
                assert await client.receive() == "two"
                assert client.connects == 2
            assert changes[:2] == [TcpState.CONNECTING, TcpState.OPEN]
            assert TcpState.RECONNECTING in changes and changes[-1] is TcpState.CLOSED
            server.cancel()


@on_every_loop
async def test_connect_tcp_pings_a_live_server() -> None:
    """connect_tcp: one connection, ping() answers with a round-trip time, messages echo."""
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            port = await start_tcp_server(group, tcp_echo)
            async with connect_tcp("127.0.0.1", port, FAST) as conn:
                assert isinstance(conn, HeartbeatConnection)
                assert 0 <= await conn.ping(timeout=2) < 2
                for i in range(20):
                    await conn.send(i)
                assert [await conn.receive() for _ in range(20)] == list(range(20))
            assert conn.closed
            group.cancel_scope.cancel()


@on_every_loop
async def test_reconnecting_websocket_against_a_websockets_server(ws_echo_url: str) -> None:
    """The WebSocket client echoes through `websockets`, heartbeats get answered, and after the
    server closes with 1012 (restart) it reconnects by itself."""
    opened: list[anyio.Event] = [anyio.Event(), anyio.Event()]

    def on_event(change: WsStateChange) -> None:
        if change.state is WsState.OPEN and opened:
            opened.pop(0).set()

    second = opened[1]
    with anyio.fail_after(LIMIT):
        async with reconnecting_websocket(ws_echo_url, policy=FAST, backoff=QUICK,
                                          on_event=on_event) as ws:
            for message in ("héllo", b"\x00\xff", "x" * 100_000):
                await ws.send(message)
                assert await ws.receive() == message
            await anyio.sleep(0.4)
            stats = ws.stats()
            assert stats is not None and stats.pongs_received >= 2
            await ws.send("!close 1012 restart")
            await second.wait()
            assert ws.connects == 2
            await ws.send("again")
            assert await ws.receive() == "again"
        assert ws.state is WsState.CLOSED


@on_every_loop
async def test_pulse_websocket_server_with_a_websockets_client() -> None:
    """pulse's WebSocket server echoes every message of a `websockets` client process."""
    seen: list[str] = []

    async def handler(conn: ServerConnection) -> None:
        async for message in conn:
            assert isinstance(message, str)
            seen.append(message)
            await conn.send(message)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            server: WebSocketServer = await group.start(lambda *, task_status: serve_websocket(
                handler, host="127.0.0.1", port=0, policy=FAST, task_status=task_status))
            result = await anyio.run_process(
                [sys.executable, "-u", str(PEERS / "ws_client.py"),
                 f"ws://127.0.0.1:{server.port}/", "--count", "5", "--every", "0.1"],
                check=False)
            group.cancel_scope.cancel()
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert result.returncode == 0, events
    assert [e["data"] for e in events if e["event"] == "echo"] == [f"m{i}" for i in range(5)]
    assert seen == [f"m{i}" for i in range(5)]


@on_every_loop
async def test_rpc_channel_heartbeats_over_the_frameworks_own_sockets() -> None:
    """pulse.rpc keeps a framework's own connection alive (heartbeats answered, RTT measured)
    and declares it dead when the peer stops answering."""
    answering = True

    async def provider(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            async for data in stream:
                for line in data.decode().split():
                    if answering:
                        await stream.send(f"pong:{line.split(':')[1]}\n".encode())

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            group.start_soon(listener.serve, provider)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            stream = await anyio.connect_tcp("127.0.0.1", port)
            closed: list[str] = []
            dead = anyio.Event()
            async with stream, open_heartbeat_timer(tick=0.02) as timer:

                class Hooks:
                    def send_heartbeat(self, message: str) -> None:
                        group.start_soon(stream.send, message.encode())

                    def close(self, reason: str) -> None:
                        closed.append(reason)
                        dead.set()

                class Messages:
                    def request(self, request_id: int) -> str:
                        return f"ping:{request_id}\n"

                    def response(self, request_id: int) -> str:
                        return f"pong:{request_id}\n"

                channel = timer.open_channel(Role.CONSUMER, Hooks(), Messages(),
                                             timing=ChannelTiming(0.1), ids=RequestIds())

                async def read() -> None:
                    buffer = b""
                    async for data in stream:
                        buffer += data
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            channel.heartbeat_response(int(line.split(b":")[1]))

                group.start_soon(read)
                await anyio.sleep(0.6)
                assert channel.state is ChannelState.ALIVE and not closed
                assert channel.rtt.count >= 3
                assert channel.rtt.max is not None and 0 <= channel.rtt.max < 0.1
                answering = False
                with anyio.fail_after(2):
                    await dead.wait()
                assert channel.state is ChannelState.DEAD
                assert "heartbeat_timeout" in closed[0]
                group.cancel_scope.cancel()  # the reader, before its stream closes


async def _session_round_trip(url: str) -> None:
    """Two sessions on ``url``: one registers, the other sees it in get, list and a watch."""
    with anyio.fail_after(LIMIT):
        async with connect_session(url, session_timeout=2.0) as observer, \
                connect_session(url, session_timeout=2.0) as member:
            assert observer.state is SessionState.CONNECTED
            events = observer.watch("/loops")
            await member.register("/loops/a", b"alpha")
            assert await observer.get("/loops/a") == b"alpha"
            assert await observer.list("/loops") == {"a": b"alpha"}
            first = await events.__anext__()
            assert (first.event, first.id, first.data) == ("online", "a", b"alpha")
            await member.unregister("/loops/a")
            second = await events.__anext__()
            assert (second.event, second.id) == ("offline", "a")
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        assert observer.state is SessionState.CLOSED and member.state is SessionState.CLOSED


@on_every_loop
async def test_connect_session_on_a_lease_server() -> None:
    """connect_session on pulse://, against a lease server running on the same loop."""
    server = LeaseServer(ServerConfig(tick=0.2))
    async with anyio.create_task_group() as group:
        listeners = await group.start(server.serve_tcp, "127.0.0.1", 0)
        host, port = bound_address(listeners)
        await _session_round_trip(f"pulse://{host}:{port}")
        group.cancel_scope.cancel()


@on_every_loop
async def test_election_hands_over_with_a_larger_token_on_a_lease_server() -> None:
    """pulse.election on pulse://: the first candidate leads, the second waits; when the
    leader's block ends the second leads with a larger fencing token."""
    from pulse.election import election

    server = LeaseServer(ServerConfig(tick=0.2))
    async with anyio.create_task_group() as group:
        listeners = await group.start(server.serve_tcp, "127.0.0.1", 0)
        host, port = bound_address(listeners)
        url = f"pulse://{host}:{port}"
        order: list[tuple[str, int]] = []
        first_leads = anyio.Event()

        async def candidate(name: str) -> None:
            async with connect_session(url, session_timeout=2.0) as session:
                if name == "second":
                    await first_leads.wait()
                async with election(session, "/loops/leader", id=name) as leadership:
                    order.append((name, leadership.token))
                    if name == "first":
                        first_leads.set()
                        await anyio.sleep(0.3)

        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as candidates:
                candidates.start_soon(candidate, "first")
                candidates.start_soon(candidate, "second")
        assert [name for name, _ in order] == ["first", "second"]
        assert order[1][1] > order[0][1]
        group.cancel_scope.cancel()


@pytest.mark.zookeeper
@on_every_loop
async def test_connect_session_on_zookeeper(zookeeper_url: str) -> None:
    """connect_session on zk://, against a real ZooKeeper server."""
    await _session_round_trip(zookeeper_url)


# --------------------------------------------------------------------------- documented errors
# Where one exception is documented, that exception comes out on every loop (never a group).


def _free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@on_every_loop
async def test_connect_tcp_to_a_closed_port_raises_oserror() -> None:
    """connect_tcp to a port nobody listens on raises OSError (connection refused)."""
    with anyio.fail_after(LIMIT), pytest.raises(OSError):
        async with connect_tcp("127.0.0.1", _free_port(), FAST):
            raise AssertionError("connected to nobody")  # pragma: no cover


@on_every_loop
async def test_reconnecting_tcp_that_gives_up_raises_reconnect_gave_up() -> None:
    """A reconnecting TCP client out of attempts: receive raises ReconnectGaveUp."""
    with anyio.fail_after(LIMIT):
        async with reconnecting_tcp("127.0.0.1", _free_port(), FAST,
                                    backoff=Backoff(initial=0.01, maximum=0.02, max_attempts=2),
                                    shared_probe=False) as client:
            with pytest.raises(ReconnectGaveUp):
                await client.receive()
            assert client.state is TcpState.FAILED


@on_every_loop
async def test_reconnecting_websocket_that_gives_up_raises_reconnect_gave_up() -> None:
    """A WebSocket client out of attempts: receive raises ReconnectGaveUp."""
    with anyio.fail_after(LIMIT):
        async with reconnecting_websocket(
            f"ws://127.0.0.1:{_free_port()}/", policy=FAST, shared_probe=False,
            backoff=Backoff(initial=0.01, maximum=0.02, max_attempts=2),
        ) as ws:
            with pytest.raises(ReconnectGaveUp):
                await ws.receive()
            assert ws.state is WsState.FAILED


@on_every_loop
async def test_a_connection_the_server_closes_ends_receive_with_connection_closed() -> None:
    """The server's handler returns: the client's receive raises ConnectionClosed (and
    ``async for`` ends quietly)."""
    async def leave(conn: HeartbeatConnection) -> None:
        await conn.send("bye")

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as group:
            port = await start_tcp_server(group, leave)
            async with connect_tcp("127.0.0.1", port, FAST) as conn:
                assert [message async for message in conn] == ["bye"]
                with pytest.raises(ConnectionClosed):
                    await conn.receive()
            group.cancel_scope.cancel()


@pytest.mark.parametrize("scheme", ["tcp", "ws", "pulse", "zk"])
@on_every_loop
async def test_entering_cancelled_by_a_scope_leaves_nothing_behind(scheme: str, silent_port: int
                                                                  ) -> None:
    """Entering a client on a server that never answers, inside an anyio scope that gives up:
    the scope catches the cancellation, and the engine drives nothing afterwards (checked by
    tests.loops.run), on every loop."""
    with anyio.move_on_after(0.2) as scope:
        if scheme == "tcp":
            async with connect_tcp("127.0.0.1", silent_port, FAST):
                raise AssertionError("connected to a server that never answers")
        elif scheme == "ws":
            async with reconnecting_websocket(f"ws://127.0.0.1:{silent_port}/",
                                              policy=FAST) as ws:
                await ws.wait_open()
                raise AssertionError("opened on a server that never answers")
        else:
            async with connect_session(f"{scheme}://127.0.0.1:{silent_port}",
                                       session_timeout=2.0, start_timeout=5.0):
                raise AssertionError("a session on a server that never answers")
    assert scope.cancelled_caught
