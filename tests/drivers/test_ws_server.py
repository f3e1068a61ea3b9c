"""The heartbeating WebSocket server over in-memory streams, in virtual time (MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse._core.policy import HeartbeatPolicy
from pulse.errors import ConnectionClosed, PeerTimeout
from pulse.plugins.websocket import Dropped, Overflow, ServerConnection
from pulse.plugins.websocket.connection import (
    CloseReceived,
    MessageReceived,
    PingReceived,
    PongReceived,
    WebSocketConnection,
)
from pulse.plugins.websocket.server import ServerSettings, WebSocketServer, echo, serve_stream

from .ws_fakes import open_raw_client

POLICY = HeartbeatPolicy(interval=1.0, timeout=3.0)


async def start_client(
    nursery: trio.Nursery,
    handler: object,
    settings: ServerSettings,
    *,
    path: str = "/",
    server: WebSocketServer | None = None,
    lockstep: bool = False,
) -> WebSocketConnection:
    """Serve one in-memory client with ``handler``; return the client's raw connection."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_end, server_end = pair()

    async def run() -> None:
        await serve_stream(server_end, handler, settings, peer=f"client{path}",  # type: ignore[arg-type]
                           server=server)

    nursery.start_soon(run)
    return await open_raw_client(client_end, path)


async def next_message(conn: WebSocketConnection, *, answer_pings: bool = True) -> object:
    """The next message (or close event), answering pings on the way."""
    while True:
        event = await conn.receive_event()
        if isinstance(event, PingReceived):
            if answer_pings:
                await conn.write(conn.encode_pong(event.payload))
        elif isinstance(event, MessageReceived | CloseReceived):
            return event


async def echo_check(conn: WebSocketConnection, text: str) -> None:
    """Send ``text`` and expect it back."""
    await conn.write(conn.encode_message(text))
    event = await next_message(conn)
    assert event == MessageReceived(text)


class LiveClient:
    """A raw client that answers pings in the background (a healthy peer)."""

    def __init__(self, conn: WebSocketConnection, nursery: trio.Nursery) -> None:
        self.conn = conn
        self.send_channel, self.messages = trio.open_memory_channel[object](100)
        nursery.start_soon(self._read)

    async def _read(self) -> None:
        while True:
            event = await next_message(self.conn)
            await self.send_channel.send(event)
            if isinstance(event, CloseReceived):
                return

    async def echo_check(self, text: str) -> None:
        """Send ``text`` and expect it back."""
        await self.conn.write(self.conn.encode_message(text))
        assert await self.messages.receive() == MessageReceived(text)


async def test_dead_client_is_closed_with_1011_within_timeout_plus_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that answers nothing is closed with 1011; its handler sees PeerTimeout."""
    seen: list[BaseException] = []

    async def handler(conn: ServerConnection) -> None:
        try:
            await conn.receive()
        except ConnectionClosed as exc:
            seen.append(exc)

    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=POLICY)
        opened_at = trio.current_time()
        client = await start_client(nursery, handler, settings)
        pings = 0
        while True:
            event = await client.receive_event()
            if isinstance(event, PingReceived):
                pings += 1
            elif isinstance(event, CloseReceived):
                break
        elapsed = trio.current_time() - opened_at
        assert event.code == 1011
        assert "no data" in event.reason
        assert POLICY.dead_after <= elapsed <= POLICY.dead_after + POLICY.interval
        assert pings >= 2
        await trio.sleep(1)
        assert len(seen) == 1 and isinstance(seen[0], PeerTimeout)
        nursery.cancel_scope.cancel()


async def test_client_answering_pings_stays_connected(autojump_clock: trio.testing.MockClock) -> None:
    """A quiet client that answers pings is kept for a virtual minute, RTT measured."""
    connections: list[ServerConnection] = []

    async def handler(conn: ServerConnection) -> None:
        connections.append(conn)
        await echo(conn)

    async with trio.open_nursery() as nursery:
        client = await start_client(nursery, handler, ServerSettings(policy=POLICY))
        with trio.move_on_after(60):
            event = await next_message(client)
            raise AssertionError(f"unexpected {event!r}")
        stats = connections[0].stats()
        assert stats.pongs_received >= 50
        assert not connections[0].closed
        await echo_check(client, "still here")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("path", "payload", "code"), [
    ("/garbage", b"\xff\xff\xff\xff", 1002),          # reserved opcode, bad bits
    ("/utf8", b"\x81\x82" + b"\x00\x00\x00\x00" + b"\xc3\x28", 1007),  # masked bad UTF-8
])
async def test_protocol_errors_close_only_that_client(
    autojump_clock: trio.testing.MockClock, path: str, payload: bytes, code: int,
) -> None:
    """A client breaking RFC 6455 is closed with the matching code; others keep echoing."""
    async with trio.open_nursery() as nursery:
        server = WebSocketServer([])
        settings = ServerSettings(policy=POLICY)
        good = LiveClient(await start_client(nursery, echo, settings, path="/good",
                                             server=server), nursery)
        bad = await start_client(nursery, echo, settings, path=path, server=server)
        assert len(server.connections) == 2
        await good.echo_check("before")
        await bad.stream.send_all(payload)
        event = await next_message(bad)
        assert isinstance(event, CloseReceived)
        assert event.code == code
        await good.echo_check("after")
        await trio.sleep(10)
        await good.echo_check("much later")
        assert len(server.connections) == 1
        nursery.cancel_scope.cancel()


async def test_oversized_message_is_refused_with_1009(autojump_clock: trio.testing.MockClock) -> None:
    """A message over max_message_size closes that client with 1009 (even in fragments)."""
    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=POLICY, max_message_size=1000)
        good = await start_client(nursery, echo, settings, path="/good")
        big = await start_client(nursery, echo, settings, path="/big")
        for _ in range(3):
            await big.write(big.encode_message(b"x" * 400, final=False))
        event = await next_message(big)
        assert isinstance(event, CloseReceived) and event.code == 1009
        await echo_check(good, "x" * 999)
        nursery.cancel_scope.cancel()


async def test_handler_exception_closes_with_1011_and_spares_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler bug ends its own connection with 1011 only."""
    async def handler(conn: ServerConnection) -> None:
        if conn.path == "/boom":
            await conn.receive()
            raise RuntimeError("handler bug")
        await echo(conn)

    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=POLICY)
        good = await start_client(nursery, handler, settings, path="/good")
        boom = await start_client(nursery, handler, settings, path="/boom")
        await boom.write(boom.encode_message("trigger"))
        event = await next_message(boom)
        assert isinstance(event, CloseReceived) and event.code == 1011
        await echo_check(good, "fine")
        nursery.cancel_scope.cancel()


async def test_bad_upgrade_gets_http_400_and_a_stalled_one_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A non-upgrade request gets HTTP 400; a silent one is dropped at the handshake timeout."""
    settings = ServerSettings(policy=POLICY, handshake_timeout=5.0)
    async with trio.open_nursery() as nursery:
        client_end, server_end = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_stream, server_end, echo, settings)
        await client_end.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await client_end.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 400 ")

        client_end, server_end = trio.testing.memory_stream_pair()
        started = trio.current_time()
        done = trio.Event()

        async def stalled() -> None:
            await serve_stream(server_end, echo, settings)
            done.set()

        nursery.start_soon(stalled)
        await done.wait()
        assert trio.current_time() - started == pytest.approx(5.0)
        assert await client_end.receive_some(4096) == b""
        nursery.cancel_scope.cancel()


async def test_queue_overflow_for_a_client_that_stopped_reading_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that stops reading fills only its own queue; each undelivered message is reported."""
    drops: list[Dropped] = []
    total = 100
    sent = trio.Event()

    async def broadcaster(conn: ServerConnection) -> None:
        for i in range(total):
            await conn.send(f"n{i}")  # drop-oldest never blocks
        sent.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=POLICY, queue_size=4, overflow=Overflow.DROP_OLDEST,
                                  on_drop=drops.append)
        slow = await start_client(nursery, broadcaster, settings, path="/slow", lockstep=True)
        good = LiveClient(await start_client(nursery, echo, settings, path="/good"), nursery)
        await sent.wait()
        await good.echo_check("unaffected")
        await trio.sleep(POLICY.dead_after + POLICY.interval)  # slow is declared dead
        await good.echo_check("still unaffected")
        dropped = [d.message for d in drops]
        assert len(dropped) == len(set(dropped))
        assert all(d.peer == "client/slow" for d in drops)
        received: list[object] = []
        with trio.move_on_after(1):
            while True:
                event = await slow.receive_event()
                if isinstance(event, MessageReceived):
                    received.append(event.data)
                elif isinstance(event, CloseReceived):
                    break
        certain = {d.message for d in drops if not d.possibly_delivered}
        assert not certain & set(received)
        assert set(dropped) | set(received) == {f"n{i}" for i in range(total)}
        nursery.cancel_scope.cancel()


async def test_handler_returning_flushes_and_closes_1000(autojump_clock: trio.testing.MockClock) -> None:
    """What the handler queued before returning is sent, then a normal close."""
    async def greeter(conn: ServerConnection) -> None:
        for i in range(5):
            await conn.send(f"hi {i}")

    async with trio.open_nursery() as nursery:
        client = await start_client(nursery, greeter, ServerSettings(policy=POLICY))
        events = [await next_message(client) for _ in range(6)]
        assert events[:5] == [MessageReceived(f"hi {i}") for i in range(5)]
        assert isinstance(events[5], CloseReceived) and events[5].code == 1000
        nursery.cancel_scope.cancel()


async def test_server_shutdown_tells_clients_1001(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling the server closes each client with 1001 (going away)."""
    async with trio.open_nursery() as nursery:
        serving = trio.CancelScope()
        client_end, server_end = trio.testing.memory_stream_pair()

        async def run() -> None:
            with serving:
                await serve_stream(server_end, echo, ServerSettings(policy=POLICY))

        nursery.start_soon(run)
        client = await open_raw_client(client_end)
        await echo_check(client, "hello")
        serving.cancel()
        event = await next_message(client)
        assert isinstance(event, CloseReceived) and event.code == 1001
        nursery.cancel_scope.cancel()


async def test_a_client_that_pings_and_never_reads_cannot_grow_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """5,000 pings from a client that reads nothing: the server keeps at most one pong
    queued for it (the answer to the latest ping), and a neighbour is served as usual
    (checked with the ping rate bound off, which would close the flooder first)."""
    sessions: list[ServerConnection] = []

    async def keep(conn: ServerConnection) -> None:
        sessions.append(conn)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=HeartbeatPolicy(interval=1000.0, timeout=3000.0),
                                  max_ping_rate=0)
        flooder = await start_client(nursery, keep, settings, path="/flood", lockstep=True)
        good = LiveClient(await start_client(nursery, echo, settings, path="/good"), nursery)
        for i in range(5000):
            await flooder.write(flooder.encode_ping(i.to_bytes(4, "big")))
        await trio.sleep(1)
        session = sessions[0]._session
        pongs = [c for c in session._control if c.kind.name == "PONG"]
        assert len(pongs) <= 1 and len(session._control) <= 16
        await good.echo_check("unaffected")
        nursery.cancel_scope.cancel()


async def test_a_client_trickling_bytes_into_a_frame_is_declared_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bytes that never complete a frame are not life: a client that sends a frame header
    and then one byte a second is closed with 1011 within timeout + interval, as a silent
    one would be."""
    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=POLICY)
        client = await start_client(nursery, echo, settings, path="/trickle")
        header = bytes([0x82, 0x80 | 126]) + (1000).to_bytes(2, "big") + b"mask"
        opened = trio.current_time()
        await client.write(header)
        closed_at = None

        async def trickle() -> None:
            for _ in range(60):
                await trio.sleep(1.0)
                try:
                    await client.write(b"x")
                except Exception:
                    return

        nursery.start_soon(trickle)
        with trio.fail_after(60):
            while True:
                try:
                    event = await client.receive_event()
                except Exception:
                    closed_at = trio.current_time()
                    break
                if isinstance(event, CloseReceived):
                    closed_at = trio.current_time()
                    assert event.code == 1011
                    break
        assert closed_at is not None
        assert closed_at - opened <= POLICY.dead_after + POLICY.interval + 0.1
        nursery.cancel_scope.cancel()


async def test_a_ping_flood_is_closed_with_1008_and_a_neighbour_is_unaffected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client whose pings keep coming faster than max_ping_rate, a second's worth past
    the limit, is closed with 1008 ("ping flood") and hung up on within the short grace;
    one that pings at half the rate for five seconds is answered every time and stays
    open."""
    async with trio.open_nursery() as nursery:
        settings = ServerSettings(policy=HeartbeatPolicy(interval=1000.0, timeout=3000.0),
                                  max_ping_rate=50.0)
        flooder = await start_client(nursery, echo, settings, path="/flood")
        steady = await start_client(nursery, echo, settings, path="/steady")
        closed = None
        for i in range(1000):  # back to back: far faster than 50 a second
            try:
                await flooder.write(flooder.encode_ping(i.to_bytes(4, "big")))
            except Exception:
                break
        with trio.fail_after(5):
            while closed is None:
                event = await next_message(flooder)
                if isinstance(event, CloseReceived):
                    closed = event
        assert closed.code == 1008 and "ping flood" in closed.reason
        # Closing does not wait on an offender: the server hangs up within the short grace
        # (0.25 s) instead of reading what it sends for close_timeout (2 s).
        closed_at = trio.current_time()
        with trio.fail_after(5):
            try:
                while await flooder.stream.receive_some(65536):
                    pass  # until the server hangs up (EOF)
            except trio.BrokenResourceError:
                pass
        assert trio.current_time() - closed_at <= 0.3
        pongs = 0
        for i in range(125):  # 25 pings a second for five seconds
            await steady.write(steady.encode_ping(i.to_bytes(4, "big")))
            with trio.fail_after(1):
                while not isinstance(await steady.receive_event(), PongReceived):
                    pass
                pongs += 1
            await trio.sleep(0.04)
        assert pongs == 125
        await LiveClient(steady, nursery).echo_check("still open")
        nursery.cancel_scope.cancel()
