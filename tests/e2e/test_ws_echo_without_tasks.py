"""pulse's WebSocket server running the built-in echo without a task per connection: the
session is launched (engine-read, engine-timed), tasks appear only to write or close.
Loopback only, bounded real time."""

from __future__ import annotations

import functools

import anyio
import anyio.abc
import pytest
import trio
from wsproto import WSConnection

from pulse._core.policy import HeartbeatPolicy
from pulse.plugins.websocket import ServerConnection, WebSocketServer, echo, serve_websocket
from pulse.plugins.websocket.connection import (
    CloseReceived,
    MessageReceived,
    PingReceived,
    ReceivedEvent,
    WebSocketConnection,
)
from pulse.plugins.websocket.handshake import open_connection
from pulse.plugins.websocket.transport import open_stream, parse_ws_url

pytestmark = pytest.mark.e2e

FAST = HeartbeatPolicy(interval=0.2, timeout=0.6)


async def start(nursery: trio.Nursery, handler: object = echo, **options: object) -> WebSocketServer:
    """Start ``serve_websocket`` on a free loopback port."""
    options.setdefault("policy", FAST)
    server: WebSocketServer = await nursery.start(
        functools.partial(serve_websocket, handler, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
    )
    return server


async def dial(server: WebSocketServer, path: str = "/") -> WebSocketConnection:
    """A raw pulse WebSocket connection to ``server`` (nothing answers pings on its own)."""
    conn, _ = await open_connection(parse_ws_url(f"ws://127.0.0.1:{server.port}{path}"),
                                    open_stream, None)
    return conn


async def next_event(conn: WebSocketConnection, *, answer_pings: bool = True) -> ReceivedEvent:
    """The next event that is not a ping (pings are answered, like a live client does)."""
    while True:
        event = await conn.receive_event()
        if isinstance(event, PingReceived):
            if answer_pings:
                await conn.write(conn.encode_pong(event.payload))
            continue
        return event


def child_tasks(group: anyio.abc.TaskGroup) -> frozenset[trio.lowlevel.Task]:
    """The running tasks of a server's task group (anyio's group wraps a trio nursery)."""
    nursery: trio.Nursery = group._nursery  # type: ignore[attr-defined]
    return nursery.child_tasks


async def settled(server: WebSocketServer, count: int) -> None:
    """Wait until ``count`` clients are connected and no per-connection task runs."""
    assert server._nursery is not None
    while len(server.connections) < count or child_tasks(server._nursery):  # noqa: ASYNC110
        await trio.sleep(0.01)  # polled: the server has no event for "settled"


async def gone(server: WebSocketServer) -> None:
    """Wait until the server forgot every client."""
    while server.connections:  # noqa: ASYNC110
        await trio.sleep(0.01)  # polled: the server has no event for "empty"


async def test_idle_echo_connections_have_no_task_and_no_handshake_state() -> None:
    """Five idle echo clients leave no task in the server; each session is launched and keeps
    wsproto's open connection only (the opening handshake's h11 state is gone)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            clients = [await dial(server, f"/{i}") for i in range(5)]
            await settled(server, 5)
            for client in server.connections:
                session = client._session
                assert session.launched
                assert not isinstance(session.conn.ws, WSConnection)
            # An echo starts a writer task for as long as it writes, then none is left.
            await clients[0].write(clients[0].encode_message("hello"))
            event = await next_event(clients[0])
            assert event == MessageReceived("hello")
            await settled(server, 5)
            for client_conn in clients:
                await client_conn.aclose()
            await gone(server)
            nursery.cancel_scope.cancel()


async def test_an_application_handler_runs_in_one_task_per_client() -> None:
    """With a handler of its own, each client costs one task (the handler's, the one that
    accepted it) and the session none; the handler still sees the client's messages."""
    seen: list[str] = []

    async def handler(conn: ServerConnection) -> None:
        seen.append(conn.path)
        await echo(conn)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, handler)
            clients = [await dial(server, f"/app{i}") for i in range(3)]
            for i, client in enumerate(clients):
                await client.write(client.encode_message(f"hi {i}"))
                assert await next_event(client) == MessageReceived(f"hi {i}")
            assert sorted(seen) == ["/app0", "/app1", "/app2"]
            assert all(conn._session.launched for conn in server.connections)
            assert server._nursery is not None
            while len(child_tasks(server._nursery)) > 3:  # noqa: ASYNC110
                await trio.sleep(0.01)  # a writer task may still be finishing
            assert len(child_tasks(server._nursery)) == 3
            nursery.cancel_scope.cancel()


async def test_a_handler_that_returns_closes_its_client_with_1000() -> None:
    """A handler that returns gets its queued messages flushed, then the client is closed
    with 1000 and forgotten (the closing runs without the handler's task)."""

    async def handler(conn: ServerConnection) -> None:
        await conn.send("bye")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, handler)
            client = await dial(server)
            assert await next_event(client) == MessageReceived("bye")
            event = await next_event(client)
            assert isinstance(event, CloseReceived) and event.code == 1000
            await gone(server)
            nursery.cancel_scope.cancel()


async def test_a_handler_that_ignores_the_end_is_cancelled_after_close_timeout() -> None:
    """A handler still running after its client left is cancelled once close_timeout
    passed (and not before)."""
    cancelled = trio.Event()

    async def handler(conn: ServerConnection) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, handler, close_timeout=0.5)
            client = await dial(server)
            await client.write(client.encode_close(1000, "leaving"))
            closed_at = trio.current_time()
            await cancelled.wait()
            assert trio.current_time() - closed_at >= 0.5
            await gone(server)
            nursery.cancel_scope.cancel()


async def test_stopping_the_server_closes_launched_clients_with_1001() -> None:
    """Cancelling serve() ends every task-less echo client with 1001 (going away) and
    returns once they are closed."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server_scope = trio.CancelScope()
            started: list[WebSocketServer] = []
            stopped = trio.Event()

            async def run_server(task_status: trio.TaskStatus[None]) -> None:
                with server_scope:
                    async with trio.open_nursery() as inner:
                        started.append(await start(inner))
                        task_status.started()
                stopped.set()

            await nursery.start(run_server)
            server = started[0]
            clients = [await dial(server) for _ in range(3)]
            await settled(server, 3)
            server_scope.cancel()
            for client in clients:
                event = await next_event(client)
                assert isinstance(event, CloseReceived) and event.code == 1001
            await stopped.wait()  # serve() returned: every launched session was closed
            assert not server.connections


async def test_a_silent_launched_client_is_closed_1011_and_forgotten() -> None:
    """A task-less echo client that stops answering pings is closed with 1011 within the
    timeout (plus an interval) and leaves the server's connection set."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await start(nursery)
            silent = await dial(server)
            await settled(server, 1)
            begun = trio.current_time()
            event = await next_event(silent, answer_pings=False)
            assert isinstance(event, CloseReceived) and event.code == 1011
            assert trio.current_time() - begun < 0.6 + 0.2 + 0.5  # timeout + interval + slack
            await gone(server)
            nursery.cancel_scope.cancel()


async def test_echo_backpressure_loses_nothing() -> None:
    """A client that sends much more than the server's queue holds before reading anything
    gets every message back, in order (the server stopped reading while its queue was full)."""
    messages = [bytes([i]) * 200_000 for i in range(40)]  # ~8 MB: beyond the socket buffers
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, queue_size=2, policy=HeartbeatPolicy(5.0, 15.0))
            client = await dial(server)

            async def send_all() -> None:
                for message in messages:
                    await client.write(client.encode_message(message))

            nursery.start_soon(send_all)
            await trio.sleep(0.3)  # let the server fill its queue and stop reading
            received = [await next_event(client) for _ in messages]
            assert received == [MessageReceived(m) for m in messages]
            nursery.cancel_scope.cancel()


async def test_a_ping_flooder_that_reconnects_is_refused_while_it_cools_down() -> None:
    """A WebSocket client closed for a ping flood (1008; the server hangs up at once) that
    connects again is shut out before the opening handshake until its cooldown (1 s) ends;
    then it is served again (as on the tcp:// server)."""
    from structlog.testing import capture_logs

    from pulse.errors import PulseError

    with trio.fail_after(20), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            server = await start(nursery, policy=HeartbeatPolicy(interval=1000.0, timeout=3000.0),
                                 max_ping_rate=50.0)
            flooder = await dial(server, "/flood")
            with trio.move_on_after(5):
                try:
                    for i in range(100_000):  # back to back: far faster than 50 a second
                        await flooder.write(flooder.encode_ping(i.to_bytes(4, "big")))
                    while True:
                        await next_event(flooder, answer_pings=False)
                except (PulseError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the server hung up on the flood
            await flooder.stream.aclose()
            cooling = [e for e in logs if e["event"] == "client_cooling_down"]
            assert len(cooling) == 1 and cooling[0]["seconds"] == 1.0
            with pytest.raises((PulseError, OSError, trio.BrokenResourceError)):
                await dial(server, "/again")  # the door closes before the handshake
            assert any(e["event"] == "client_refused" for e in logs)
            await trio.sleep(1.2)  # the first cooldown is 1 s
            later = await dial(server, "/later")
            await later.write(later.encode_message("back"))
            assert await next_event(later) == MessageReceived("back")
            await later.stream.aclose()
            nursery.cancel_scope.cancel()
