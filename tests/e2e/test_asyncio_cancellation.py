"""asyncio's cancellation around pulse calls, on asyncio and uvloop, over real loopback peers.

``asyncio.timeout()``, ``asyncio.wait_for`` and ``task.cancel()`` around ``receive()`` (a
heartbeat connection, the reconnecting TCP client, the WebSocket client) and around entering
``connect_tcp``, ``reconnecting_websocket`` and ``connect_session`` must end the call the way
asyncio users expect: ``TimeoutError`` (``CancelledError`` for ``task.cancel()``), never an
``ExceptionGroup``; no task of pulse's left behind once the block is left (only the caller
and the ``pulse.engine`` task); and no message swallowed: after a cancelled ``receive`` the
next ``receive`` returns the next message that was sent.

On every loop (trio too): the application's own error inside each context manager, and
PeerTimeout from a stalled server, come out as themselves, never in an ExceptionGroup.
The servers run on trio in a thread of their own, so the test loop's tasks are the client's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from pulse import HeartbeatConnection
from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy
from pulse._driver.engine import current_engine
from pulse.errors import PeerTimeout
from pulse.plugins.lease.server import LeaseServer, ServerConfig, bound_address
from pulse.plugins.tcp import ClientState as TcpState
from pulse.plugins.tcp import ReconnectingClient, connect_tcp, reconnecting_tcp
from pulse.plugins.tcp.server import serve_tcp
from pulse.plugins.websocket import (
    ClientState,
    Dropped,
    ResilientWebSocket,
    ServerConnection,
    reconnecting_websocket,
)
from pulse.plugins.websocket.server import serve_websocket
from pulse.presence import PresenceSession, SessionState
from pulse.registry import Endpoint, ServeOptions, connect_session, get_plugin
from pulse.rpc import ChannelTiming, HeartbeatTimer, Role, open_heartbeat_timer
from pulse.testing import heartbeat_pair
from tests.loops import ASYNCIO_LOOPS, ENGINE_TASK, LOOPS, run
from tests.loops import silent_port as silent_port  # a fixture

pytestmark = pytest.mark.e2e

FAST = HeartbeatPolicy(interval=0.1, timeout=0.5)
QUICK = Backoff(initial=0.05, maximum=0.2)
DELAY = 0.1  # how long the cancelled call runs before it is cancelled
WAYS = ("timeout", "wait_for", "cancel")
BURST = 400  # messages in a burst received under random timeouts
LIMIT = 20.0


@pytest.fixture(params=ASYNCIO_LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    """An asyncio loop: asyncio's own or uvloop."""
    name: str = request.param
    return name


@pytest.fixture(params=WAYS)
def way(request: pytest.FixtureRequest) -> str:
    """How the call is cancelled: asyncio.timeout(), asyncio.wait_for or task.cancel()."""
    name: str = request.param
    return name


async def cancel_by(way: str, call: Callable[[], Awaitable[Any]], delay: float = DELAY) -> None:
    """Run ``call()`` and cancel it after ``delay`` s in ``way``; check the exception the
    caller sees (TimeoutError, or CancelledError for task.cancel(), never a group) and that
    the call left no task behind."""
    current_engine()  # the engine's task lives as long as the loop: start it first
    before = asyncio.all_tasks()
    if way == "timeout":
        with pytest.raises(TimeoutError) as raised:
            async with asyncio.timeout(delay):
                await call()
        assert type(raised.value) is TimeoutError
    elif way == "wait_for":
        with pytest.raises(TimeoutError) as raised:
            await asyncio.wait_for(call(), delay)
        assert type(raised.value) is TimeoutError
    else:
        async def work() -> None:
            await call()

        task = asyncio.create_task(work())
        await asyncio.sleep(delay)
        assert not task.done(), task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
    left = [task for task in asyncio.all_tasks() - before if task.get_name() != ENGINE_TASK]
    assert not left, f"tasks left behind: {left}"
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


# --------------------------------------------------------------------------- peers


async def talker(conn: Any) -> None:
    """A server handler: ``{"burst": n}`` sends 0..n-1 then "end"; ``{"freeze": s}`` blocks
    the server's whole loop for ``s`` seconds (a stalled peer); anything else is echoed."""
    async for message in conn:
        if isinstance(message, dict) and "freeze" in message:
            time.sleep(message["freeze"])  # noqa: ASYNC251  # the point: the loop stalls
        elif isinstance(message, dict) and "burst" in message:
            for i in range(message["burst"]):
                await conn.send(i)
                if i % 5 == 0:
                    await anyio.sleep(0.0005)
            await conn.send("end")
        else:
            await conn.send(message)


async def ws_talker(conn: ServerConnection) -> None:
    """A WebSocket handler: "burst n" sends "0".."n-1" then "end"; anything else is echoed."""
    async for message in conn:
        if isinstance(message, str) and message.startswith("burst "):
            for i in range(int(message.split()[1])):
                await conn.send(str(i))
                if i % 5 == 0:
                    await anyio.sleep(0.0005)
            await conn.send("end")
        else:
            await conn.send(message)


# The servers run on trio in a thread of their own (a blocking portal), so that the tasks of
# the test's asyncio loop are the client's alone.


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    """A trio loop in a thread, for the servers."""
    with start_blocking_portal("trio") as running:
        yield running


@pytest.fixture
def tcp_port(portal: BlockingPortal) -> Iterator[int]:
    """pulse's TCP server running :func:`talker` on a loopback port."""
    future, listeners = portal.start_task(lambda *, task_status: serve_tcp(
        talker, host="127.0.0.1", port=0, policy=FAST, task_status=task_status))
    yield listeners[0].socket.getsockname()[1]
    future.cancel()


@pytest.fixture
def ws_url(portal: BlockingPortal) -> Iterator[str]:
    """pulse's WebSocket server running :func:`ws_talker` on loopback."""
    future, server = portal.start_task(lambda *, task_status: serve_websocket(
        ws_talker, host="127.0.0.1", port=0, policy=FAST, task_status=task_status))
    yield f"ws://127.0.0.1:{server.port}/"
    future.cancel()


@pytest.fixture
def gossip_url(portal: BlockingPortal) -> Iterator[str]:
    """A gossip seed member (gossip://) on loopback."""
    endpoint = Endpoint("gossip", (("127.0.0.1", 0),), raw="gossip://127.0.0.1:0")
    serve = get_plugin("gossip").serve
    assert serve is not None
    future, listeners = portal.start_task(serve, endpoint, ServeOptions(extra={"name": "seed"}))
    yield f"gossip://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    future.cancel()


@pytest.fixture
def lease_url(portal: BlockingPortal) -> Iterator[str]:
    """A lease server (pulse://) on loopback."""
    server = portal.call(lambda: LeaseServer(ServerConfig(tick=0.2)))
    future, listeners = portal.start_task(server.serve_tcp, "127.0.0.1", 0)
    host, port = bound_address(listeners)
    yield f"pulse://{host}:{port}"
    future.cancel()


async def receive_burst(receive: Callable[[], Awaitable[Any]], end: Any) -> list[Any]:
    """Receive until ``end`` while cancelling receives at random moments (a random short
    ``wait_for`` timeout, some of them 0); returns what arrived before ``end``."""
    got: list[Any] = []
    chance = random.Random(7)
    with anyio.fail_after(LIMIT):
        while True:
            try:
                message = await asyncio.wait_for(receive(), chance.choice((0, 1e-4, 5e-4, 2e-3)))
            except TimeoutError:
                continue
            if message == end:
                return got
            got.append(message)


# --------------------------------------------------------------------------- receive


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_receive_on_a_connection_loses_nothing(loop: str, way: str, tcp_port: int
                                                         ) -> None:
    """A heartbeat connection's receive cancelled by asyncio: the right exception, no task
    left, the connection still open, and the next receive gets the next message."""
    async def body() -> None:
        async with connect_tcp("127.0.0.1", tcp_port, FAST) as conn:
            await cancel_by(way, conn.receive)
            assert not conn.closed
            await conn.send("next")
            assert await conn.receive() == "next"

    run(loop, body)


def test_receives_cancelled_at_random_lose_no_message_on_a_connection(loop: str, tcp_port: int
                                                                     ) -> None:
    """Hundreds of receives cancelled at random moments while messages stream in: every
    message arrives once, in order (none is swallowed by a cancelled receive)."""
    async def body() -> None:
        async with connect_tcp("127.0.0.1", tcp_port, FAST) as conn:
            await conn.send({"burst": BURST})
            assert await receive_burst(conn.receive, "end") == list(range(BURST))

    run(loop, body)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_receive_on_the_reconnecting_tcp_client_loses_nothing(
    loop: str, way: str, tcp_port: int,
) -> None:
    """The reconnecting TCP client's receive cancelled by asyncio: the right exception, no
    task left, the client still open, and the next receive gets the next message."""
    async def body() -> None:
        async with reconnecting_tcp("127.0.0.1", tcp_port, FAST, backoff=QUICK) as client:
            await cancel_by(way, client.receive)
            await client.send("next")
            assert await client.receive() == "next"
            await client.send({"burst": BURST})
            assert await receive_burst(client.receive, "end") == list(range(BURST))
            assert client.connects == 1

    run(loop, body)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_receive_on_the_websocket_client_loses_nothing(loop: str, way: str, ws_url: str
                                                                 ) -> None:
    """The WebSocket client's receive cancelled by asyncio: the right exception, no task
    left, and every message after it arrives once, in order."""
    async def body() -> None:
        async with reconnecting_websocket(ws_url, policy=FAST, backoff=QUICK) as ws:
            await ws.wait_open()
            await cancel_by(way, ws.receive)
            await ws.send("next")
            assert await ws.receive() == "next"
            await ws.send(f"burst {BURST}")
            assert await receive_burst(ws.receive, "end") == [str(i) for i in range(BURST)]
            assert ws.connects == 1

    run(loop, body)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_send_waiting_for_a_connection_leaves_nothing_behind(
    loop: str, way: str, silent_port: int,
) -> None:
    """The reconnecting TCP client's send, waiting for a connection that never opens,
    cancelled by asyncio: the right exception, no task left, and the client still running
    (it closes when the block is left)."""
    async def body() -> None:
        async with reconnecting_tcp("127.0.0.1", silent_port, FAST, backoff=QUICK,
                                    connect_timeout=5.0) as client:
            await cancel_by(way, lambda: client.send("never"))
            assert client.state is not TcpState.CLOSED
        assert client.state is TcpState.CLOSED

    run(loop, body)


def test_a_websocket_send_cancelled_before_it_returns_sends_nothing(loop: str, ws_url: str
                                                                   ) -> None:
    """A WebSocket client's send cancelled by asyncio (asyncio.timeout(0): at its first
    await) raises TimeoutError and queues nothing: the server never gets that message."""
    async def body() -> None:
        async with reconnecting_websocket(ws_url, policy=FAST, backoff=QUICK) as ws:
            await ws.wait_open()
            for i in range(20):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0):
                        await ws.send(f"ghost {i}")
                assert ws.pending == 0
            await ws.send("real")
            assert await ws.receive() == "real"

    run(loop, body)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_send_on_a_full_websocket_queue_queues_nothing(loop: str, way: str,
                                                                 silent_port: int) -> None:
    """The WebSocket client's send waiting for room in a full queue (the server never
    answers), cancelled by asyncio: the right exception, no task left, nothing queued; the
    queued message is reported dropped when the client closes."""
    drops: list[Dropped] = []

    async def body() -> None:
        async with reconnecting_websocket(f"ws://127.0.0.1:{silent_port}/", policy=FAST,
                                          backoff=QUICK, queue_size=1, close_timeout=0.1,
                                          on_drop=drops.append) as ws:
            await ws.send("first")
            await cancel_by(way, lambda: ws.send("second"))
            assert ws.pending == 1

    run(loop, body)
    assert [drop.message for drop in drops] == ["first"]


# --------------------------------------------------------------------------- entering


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_connect_tcp_leaves_nothing_behind(loop: str, way: str,
                                                     silent_port: int) -> None:
    """Entering connect_tcp to a server that never answers the HELLO, cancelled by asyncio:
    the right exception, no task left."""
    async def enter() -> None:
        async with connect_tcp("127.0.0.1", silent_port, FAST):
            raise AssertionError("connected to a server that never answers")

    run(loop, cancel_by, way, enter)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_reconnecting_websocket_leaves_nothing_behind(loop: str, way: str,
                                                                silent_port: int) -> None:
    """reconnecting_websocket to a server that never answers the upgrade, waiting for it to
    open, cancelled by asyncio: the right exception, no task left."""
    async def enter() -> None:
        async with reconnecting_websocket(f"ws://127.0.0.1:{silent_port}/", policy=FAST,
                                          backoff=QUICK) as ws:
            await ws.wait_open()
            raise AssertionError("opened a server that never answers")

    run(loop, cancel_by, way, enter)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_block_of_an_open_websocket_client_closes_it(loop: str, way: str, ws_url: str
                                                               ) -> None:
    """A cancelled block inside reconnecting_websocket (the client is open): the right
    exception, the client closed, no task left."""
    async def body() -> None:
        clients: list[ResilientWebSocket] = []

        async def inside() -> None:
            async with reconnecting_websocket(ws_url, policy=FAST, backoff=QUICK) as ws:
                clients.append(ws)
                await ws.wait_open()
                await ws.receive()

        await cancel_by(way, inside)
        assert clients[0].state is ClientState.CLOSED

    run(loop, body)


@pytest.mark.parametrize("scheme", ["pulse", "zk"])
@pytest.mark.parametrize("way", WAYS)
def test_cancelled_connect_session_leaves_nothing_behind(loop: str, way: str, scheme: str,
                                                         silent_port: int) -> None:
    """Entering connect_session on a server that never answers, cancelled by asyncio: the
    right exception (not NoServerReachable, not a group), no task left."""
    async def enter() -> None:
        async with connect_session(f"{scheme}://127.0.0.1:{silent_port}", session_timeout=2.0,
                                   start_timeout=5.0):
            raise AssertionError("a session on a server that never answers")

    run(loop, cancel_by, way, enter)


@pytest.mark.parametrize("way", WAYS)
def test_cancelled_block_of_a_lease_session_closes_it(loop: str, way: str, lease_url: str
                                                      ) -> None:
    """A block inside connect_session (pulse://, connected) cancelled by asyncio while it
    waits on a watch: the right exception, the session closed, no task left."""
    async def body() -> None:
        sessions: list[PresenceSession] = []

        async def inside() -> None:
            async with connect_session(lease_url, session_timeout=2.0) as session:
                sessions.append(session)
                await session.register("/cancel/a", b"")
                async for _ in session.watch("/cancel/none"):
                    raise AssertionError("nothing is registered under /cancel/none")

        await cancel_by(way, inside)
        assert sessions[0].state is SessionState.CLOSED
        # The session's key went with it: a fresh session can take it at once.
        async with connect_session(lease_url, session_timeout=2.0) as again:
            await again.register("/cancel/a", b"")

    run(loop, body)


# --------------------------------------------------------------------------- whole blocks
# Every context manager an asyncio user enters, with the block cancelled while it is open, or
# raising an error of its own: the block's exception comes out as it is, and everything the
# context manager started leaves with it.

BLOCKS = ["connect_tcp", "reconnecting_tcp", "reconnecting_websocket", "lease_session",
          pytest.param("zk_session", marks=pytest.mark.zookeeper), "gossip_session",
          "heartbeat_timer", "heartbeat_pair"]


def opener(kind: str, request: pytest.FixtureRequest
           ) -> Callable[[], AbstractAsyncContextManager[Any]]:
    """How to enter the context manager ``kind`` (its peer started through fixtures)."""
    if kind == "connect_tcp":
        port = request.getfixturevalue("tcp_port")
        return lambda: connect_tcp("127.0.0.1", port, FAST)
    if kind == "reconnecting_tcp":
        port = request.getfixturevalue("tcp_port")
        return lambda: reconnecting_tcp("127.0.0.1", port, FAST, backoff=QUICK)
    if kind == "reconnecting_websocket":
        url = request.getfixturevalue("ws_url")
        return lambda: reconnecting_websocket(url, policy=FAST, backoff=QUICK)
    if kind in ("lease_session", "zk_session", "gossip_session"):
        url = request.getfixturevalue({"lease_session": "lease_url", "zk_session": "zookeeper_url",
                                       "gossip_session": "gossip_url"}[kind])
        return lambda: connect_session(url, session_timeout=2.0)
    if kind == "heartbeat_timer":
        return lambda: open_heartbeat_timer(tick=0.05)
    assert kind == "heartbeat_pair"
    return lambda: heartbeat_pair(FAST, FAST)


def is_closed(opened: Any) -> bool:
    """True when what a context manager gave is closed (for those that tell)."""
    if isinstance(opened, HeartbeatConnection):
        return opened.closed
    if isinstance(opened, tuple):
        return all(is_closed(part) for part in opened)
    if isinstance(opened, (ReconnectingClient, ResilientWebSocket)):
        return bool(opened.state.value == "closed")
    if isinstance(opened, HeartbeatTimer):
        return len(current_engine()) == 0  # its wheel left the engine (the test's only client)
    return bool(opened.state is SessionState.CLOSED)


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("way", WAYS)
def test_a_cancelled_block_closes_what_it_entered(loop: str, way: str, kind: str,
                                                  request: pytest.FixtureRequest) -> None:
    """A block inside a pulse context manager, cancelled by asyncio while open: the right
    exception, what it entered closed, no task left."""
    enter = opener(kind, request)

    async def body() -> None:
        opened: list[Any] = []

        async def inside() -> None:
            async with enter() as thing:
                opened.append(thing)
                if isinstance(thing, HeartbeatTimer):
                    thing.open_channel(Role.CONSUMER, _NoHooks(), _NoMessages(),
                                       timing=ChannelTiming(0.5))
                await anyio.sleep_forever()

        # Room to open on a busy machine (a ZooKeeper session takes a few round trips to a JVM).
        await cancel_by(way, inside, 1.0 if kind == "zk_session" else 0.3)
        assert opened, f"{kind} did not open within the delay"
        assert is_closed(opened[0]), f"{kind} still open: {opened[0]!r} (engine: {len(current_engine())})"

    run(loop, body)


class _NoHooks:
    def send_heartbeat(self, message: object) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


class _NoMessages:
    def request(self, request_id: int) -> object:
        return request_id

    def response(self, request_id: int) -> object:
        return request_id


class _Mine(Exception):
    """The application's own error."""


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("on", LOOPS)
def test_an_error_in_the_block_comes_out_bare(on: str, kind: str, request: pytest.FixtureRequest
                                             ) -> None:
    """The application's exception raised inside a pulse context manager comes out as that
    exception (not an ExceptionGroup), and what was entered is closed."""
    enter = opener(kind, request)

    async def body() -> None:
        opened: list[Any] = []
        with anyio.fail_after(LIMIT), pytest.raises(_Mine) as raised:
            async with enter() as thing:
                opened.append(thing)
                await anyio.sleep(0.05)
                raise _Mine("the application's own")
        assert type(raised.value) is _Mine
        assert opened and is_closed(opened[0])

    run(on, body)


@pytest.mark.parametrize("on", LOOPS)
def test_a_stalled_server_ends_receive_with_peer_timeout(on: str, tcp_port: int) -> None:
    """The server stops answering heartbeats (its loop is blocked): receive raises
    PeerTimeout on its own (not an ExceptionGroup), and ``async for`` raises it too."""
    async def body() -> None:
        with anyio.fail_after(LIMIT):
            async with connect_tcp("127.0.0.1", tcp_port, FAST) as conn:
                await conn.send({"freeze": FAST.dead_after + 1.0})
                with pytest.raises(PeerTimeout) as raised:
                    await conn.receive()
                assert type(raised.value) is PeerTimeout
                with pytest.raises(PeerTimeout):
                    async for _ in conn:
                        raise AssertionError("a message from a dead peer")

    run(on, body)
