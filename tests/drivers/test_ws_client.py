"""The resilient WebSocket client over in-memory streams, in virtual time (MockClock autojump)."""

from __future__ import annotations

import random

import pytest
import trio
import trio.lowlevel
import trio.testing

from pulse._core.backoff import Backoff, Jitter
from pulse._core.policy import HeartbeatPolicy
from pulse.errors import ConnectionClosed, QueueFull, ReconnectGaveUp
from pulse.plugins.websocket import (
    ClientState,
    ConnectionHandle,
    Delivery,
    Dropped,
    HandshakeRejected,
    HeartbeatMode,
    Overflow,
    StateChange,
    reconnecting_websocket,
)
from pulse.plugins.websocket.handshake import server_handshake
from pulse.plugins.websocket.server import ServerConnection, ServerSettings, echo, serve_stream

from .ws_fakes import FakePeer, FakeServer

POLICY = HeartbeatPolicy(interval=1.0, timeout=3.0)
URL = "ws://test.invalid:8080/feed"


def fixed_backoff(initial: float = 0.5, **kwargs: object) -> Backoff:
    """Backoff without jitter, so virtual-time tests know every delay."""
    return Backoff(initial=initial, jitter=Jitter.NONE, **kwargs)  # type: ignore[arg-type]


class Recorder:
    """Collects state changes with their virtual time; lets a test wait for one."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, StateChange]] = []
        self._changed = trio.Event()

    def __call__(self, change: StateChange) -> None:
        self.changes.append((trio.current_time(), change))
        self._changed.set()
        self._changed = trio.Event()

    def states(self) -> list[ClientState]:
        return [change.state for _, change in self.changes]

    async def wait(self, state: ClientState, count: int = 1) -> tuple[float, StateChange]:
        """Wait until ``state`` was entered ``count`` times; return the latest such change."""
        while True:
            found = [(t, c) for t, c in self.changes if c.state is state]
            if len(found) >= count:
                return found[count - 1]
            await self._changed.wait()


async def silent_peer(peer: FakePeer) -> None:
    """Accepts, then never answers a ping nor sends anything (a frozen server)."""
    peer.answer_pings = False
    peer.echo = False
    await peer.accept()
    await peer.run()


async def test_messages_round_trip_and_rtt_is_measured_per_pong(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Text and binary messages cross both ways; idle pings measure the RTT."""
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener) as ws:
            await ws.send("hello")
            await ws.send(b"\x00\x01")
            await ws.send("x" * 200_000)  # fragmented on the wire, whole on arrival
            assert await ws.receive() == "hello"
            assert await ws.receive() == b"\x00\x01"
            assert await ws.receive() == "x" * 200_000
            await trio.sleep(30)
            stats = ws.stats()
            assert stats is not None
            assert stats.pongs_received >= 10
            assert stats.rtt.count == stats.pongs_received
            assert ws.state is ClientState.OPEN
        assert server.last.request is not None
        assert server.last.request.path == "/feed"
        assert server.last.close_code == 1000
        nursery.cancel_scope.cancel()


async def test_silent_server_is_declared_dead_within_timeout_plus_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No pong and no data: dead after the timeout (never before), closed with 1011."""
    events = Recorder()
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, silent_peer)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          on_event=events) as ws:
            opened_at, _ = await events.wait(ClientState.OPEN)
            lost_at, change = await events.wait(ClientState.RECONNECTING)
            elapsed = lost_at - opened_at
            assert POLICY.dead_after <= elapsed <= POLICY.dead_after + POLICY.interval
            assert "peer timeout" in change.reason
            assert change.code == 1011
            await events.wait(ClientState.OPEN, 2)
            assert server.peers[0].close_code == 1011
            assert server.peers[0].pings_received >= 2
            assert ws.connects == 2
        nursery.cancel_scope.cancel()


async def test_any_received_frame_proves_life_even_a_partial_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that ignores pings but trickles fragments of one message stays alive."""
    events = Recorder()
    fragments = 20

    async def trickle(peer: FakePeer) -> None:
        peer.answer_pings = False
        await peer.accept()
        nursery.start_soon(peer.run)
        for i in range(fragments):
            await trio.sleep(2.0)  # < timeout (3 s), > interval (1 s): pings are due
            await peer.send(f"part{i};", final=i == fragments - 1)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, trickle)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, on_event=events) as ws:
            message = await ws.receive()
            assert message == "".join(f"part{i};" for i in range(fragments))
            assert events.states() == [ClientState.OPEN]
            assert server.last.pings_received >= fragments  # pings went out, unanswered
        nursery.cancel_scope.cancel()


async def test_peer_pings_count_as_life(autojump_clock: trio.testing.MockClock) -> None:
    """A server that never answers our pings but sends its own every 2 s is alive."""
    events = Recorder()

    async def pinging(peer: FakePeer) -> None:
        peer.answer_pings = False
        await peer.accept()
        nursery.start_soon(peer.run)
        while True:
            await trio.sleep(2.0)
            await peer.ping()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, pinging)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, on_event=events):
            await trio.sleep(60)
            assert events.states() == [ClientState.OPEN]
            assert server.last.pongs_received >= 25  # we answered its pings
        nursery.cancel_scope.cancel()


async def test_dead_server_detected_while_our_writer_is_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A full socket buffer (writes block forever) does not delay the dead verdict."""
    events = Recorder()
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, silent_peer)
        stuck = trio.Event()

        async def opener(*args: object) -> trio.abc.Stream:
            stream = await server.opener(*args)  # type: ignore[arg-type]
            real_send = stream.send_all

            async def send_all(data: bytes | bytearray | memoryview) -> None:
                if stuck.is_set():
                    await trio.sleep_forever()
                await real_send(data)

            stream.send_all = send_all  # type: ignore[method-assign]
            return stream

        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=opener,
                                          on_event=events) as ws:
            opened_at, _ = await events.wait(ClientState.OPEN)
            stuck.set()
            await ws.send("this write never completes")
            lost_at, change = await events.wait(ClientState.RECONNECTING)
            assert lost_at - opened_at <= POLICY.dead_after + POLICY.interval
            assert "peer timeout" in change.reason
            stuck = trio.Event()  # the next connection writes normally
            await events.wait(ClientState.OPEN, 2)
            await server.last.wait_received(1)
            assert server.last.received == ["this write never completes"]  # sent again whole
        nursery.cancel_scope.cancel()


async def test_wait_overflow_blocks_until_reconnected(autojump_clock: trio.testing.MockClock) -> None:
    """Under ``wait`` a full queue blocks send until the flush makes room; order is kept."""
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 10**6
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(maximum=1.0),
                                          opener=server.opener, queue_size=3, overflow=Overflow.WAIT) as ws:
            for i in range(3):
                await ws.send(f"m{i}")
            with trio.move_on_after(10) as blocked:
                await ws.send("m3")
            assert blocked.cancelled_caught
            assert ws.pending == 3
            server.refuse = 0
            await ws.send("m3")  # returns once the reconnect flushed the head
            await server.last.wait_received(4)
            assert server.last.received == ["m0", "m1", "m2", "m3"]
            assert ws.dropped_count == 0
        nursery.cancel_scope.cancel()


async def test_drop_oldest_overflow_reports_each_dropped_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under ``drop-oldest`` the oldest queued messages are dropped, each one reported."""
    drops: list[Dropped] = []
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 10**6
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(maximum=1.0),
                                          opener=server.opener, queue_size=3, overflow=Overflow.DROP_OLDEST,
                                          on_drop=drops.append) as ws:
            for i in range(5):
                await ws.send(f"m{i}")
            assert [d.message for d in drops] == ["m0", "m1"]
            assert all(not d.possibly_delivered and "drop-oldest" in d.reason for d in drops)
            server.refuse = 0
            await ws.wait_open()
            await server.last.wait_received(3)
            assert server.last.received == ["m2", "m3", "m4"]
        nursery.cancel_scope.cancel()


async def test_raise_overflow_raises_queue_full(autojump_clock: trio.testing.MockClock) -> None:
    """Under ``raise`` a full queue raises QueueFull and keeps what it had."""
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 10**6
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(maximum=1.0),
                                          opener=server.opener, queue_size=2, overflow=Overflow.RAISE) as ws:
            await ws.send("a")
            await ws.send("b")
            with pytest.raises(QueueFull):
                await ws.send("c")
            with pytest.raises(QueueFull):
                ws.send_nowait("c")
            server.refuse = 0
            await ws.wait_open()
            await server.last.wait_received(2)
            assert server.last.received == ["a", "b"]
            assert ws.dropped_count == 0
        nursery.cancel_scope.cancel()


async def test_one_reconnect_in_flight_when_triggers_fire_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Close frame + hang-up + repeated reconnect() at once cause exactly one new socket."""
    events = Recorder()
    rounds = 5
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          on_event=events) as ws:
            for round_number in range(1, rounds + 1):
                await events.wait(ClientState.OPEN, round_number)
                peer = server.last
                await peer.close(1001, "going away")
                ws.reconnect("trigger one")
                await peer.hang_up()
                ws.reconnect("trigger two")
                await trio.lowlevel.checkpoint()
                ws.reconnect("trigger three")
            await events.wait(ClientState.OPEN, rounds + 1)
            await trio.sleep(10)
            assert server.attempts == rounds + 1
            assert server.overlaps == 0
            assert ws.connects == rounds + 1
        nursery.cancel_scope.cancel()


async def test_backoff_grows_while_flapping_and_resets_after_a_stable_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connections dropped at once keep backing off; one that stayed up resets the delay."""
    events = Recorder()
    lifetimes = [0.0, 0.0, 0.0, 0.0, 15.0, 0.0]

    async def flapping(peer: FakePeer) -> None:
        await peer.accept()
        lifetime = lifetimes[peer.number - 1] if peer.number <= len(lifetimes) else 1e9
        with trio.move_on_after(lifetime):
            await peer.run()
        await peer.hang_up()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, flapping)
        backoff = Backoff(initial=1.0, maximum=60.0, multiplier=2.0, jitter=Jitter.NONE,
                          reset_after=10.0)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=backoff, opener=server.opener,
                                          on_event=events):
            await events.wait(ClientState.OPEN, len(lifetimes) + 1)
        delays = [c.delay for _, c in events.changes if c.state is ClientState.RECONNECTING]
        assert delays == [1.0, 2.0, 4.0, 8.0, 1.0, 2.0]  # reset after the 15 s connection
        nursery.cancel_scope.cancel()


async def test_max_attempts_fails_and_reports_every_queued_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After max_attempts the client fails; queued messages are reported, send raises."""
    drops: list[Dropped] = []
    events = Recorder()
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 10**6
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(max_attempts=3),
                                          opener=server.opener, on_drop=drops.append, on_event=events) as ws:
            await ws.send("q1")
            await ws.send("q2")
            _, change = await events.wait(ClientState.FAILED)
            assert "gave up after 3 attempts" in change.reason
            assert server.attempts == 4  # the first try and three retries
            assert [d.message for d in drops] == ["q1", "q2"]
            with pytest.raises(ReconnectGaveUp):
                await ws.send("late")
            with pytest.raises(ReconnectGaveUp):
                await ws.receive()
            with pytest.raises(ReconnectGaveUp):
                await ws.wait_open()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("code", "extra", "reconnects"), [
    (1008, (), False),
    (4001, (4001,), False),
    (1001, (), True),
    (4001, (), True),
])
async def test_do_not_come_back_close_codes_stop_reconnecting(
    autojump_clock: trio.testing.MockClock, code: int, extra: tuple[int, ...], reconnects: bool,
) -> None:
    """1008 and the user's codes end the client; other codes lead to a reconnect."""
    events = Recorder()

    async def closing(peer: FakePeer) -> None:
        await peer.accept()
        nursery.start_soon(peer.run)
        if peer.number == 1:
            await peer.close(code, "go away")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, closing)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          on_event=events, no_reconnect_codes={1008, *extra}):
            if reconnects:
                await events.wait(ClientState.OPEN, 2)
            else:
                _, change = await events.wait(ClientState.FAILED)
                assert str(code) in change.reason
                await trio.sleep(60)
                assert server.attempts == 1
        nursery.cancel_scope.cancel()


async def test_refused_handshake_retries_unless_the_status_means_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """HTTP 503 is retried; HTTP 403 ends the client."""
    statuses = [503, 503, 403]
    events = Recorder()

    async def refusing(peer: FakePeer) -> None:
        status = statuses[peer.number - 1]
        with pytest.raises(HandshakeRejected):
            await server_handshake(peer.stream, check=lambda request: status)

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, refusing)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          on_event=events) as ws:
            _, change = await events.wait(ClientState.FAILED)
            assert "403" in change.reason
            assert server.attempts == 3
            retries = [c.reason for _, c in events.changes if c.state is ClientState.CONNECTING]
            assert len(retries) == 2 and all("503" in r for r in retries)
            with pytest.raises(ReconnectGaveUp):
                await ws.send("x")
        nursery.cancel_scope.cancel()


async def test_handshake_timeout_then_retry(autojump_clock: trio.testing.MockClock) -> None:
    """A server that accepts TCP but never answers the upgrade costs one handshake_timeout."""
    events = Recorder()

    async def mute_then_normal(peer: FakePeer) -> None:
        if peer.number == 1:
            await trio.sleep_forever()
        await peer.accept()
        await peer.run()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, mute_then_normal)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(0.5),
                                          opener=server.opener, handshake_timeout=5.0,
                                          on_event=events):
            failed_at, change = await events.wait(ClientState.CONNECTING)
            assert "timed out" in change.reason
            assert failed_at == pytest.approx(5.0 + server.attempt_times[0])
            await events.wait(ClientState.OPEN)
            assert server.attempts == 2
        nursery.cancel_scope.cancel()


async def test_on_connect_runs_before_queued_messages_on_every_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_connect authenticates on every connection before queued messages flow."""
    hook_runs: list[int] = []
    events = Recorder()

    async def on_connect(handle: ConnectionHandle) -> None:
        hook_runs.append(handle.number)
        await handle.send(f"auth {handle.number}")
        assert await handle.receive() == f"auth {handle.number}"  # the echo

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 2
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          on_connect=on_connect, on_event=events) as ws:
            await ws.send("m1")
            await ws.send("m2")
            await events.wait(ClientState.OPEN)
            await server.peers[0].wait_received(3)
            assert server.peers[0].received == ["auth 1", "m1", "m2"]
            assert await ws.receive() == "m1"
            assert await ws.receive() == "m2"
            await server.peers[0].hang_up()
            await events.wait(ClientState.RECONNECTING)
            await ws.send("m3")
            await events.wait(ClientState.OPEN, 2)
            await server.peers[1].wait_received(2)
            assert server.peers[1].received == ["auth 2", "m3"]
            assert await ws.receive() == "m3"
            assert hook_runs == [1, 2]
        nursery.cancel_scope.cancel()


async def test_failing_on_connect_counts_as_a_failed_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An on_connect that raises closes that connection with 1011 and the client retries."""
    calls = 0
    events = Recorder()

    async def on_connect(handle: ConnectionHandle) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionClosed("auth service down")

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          on_connect=on_connect, on_event=events) as ws:
            await events.wait(ClientState.OPEN)
            assert calls == 2
            assert ws.connects == 1
            assert server.peers[0].close_code == 1011
        nursery.cancel_scope.cancel()


async def test_on_connect_giving_up_fails_the_client(autojump_clock: trio.testing.MockClock) -> None:
    """ReconnectGaveUp from on_connect stops the client for good."""
    events = Recorder()

    async def on_connect(handle: ConnectionHandle) -> None:
        raise ReconnectGaveUp("credentials revoked")

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, on_connect=on_connect,
                                          on_event=events):
            _, change = await events.wait(ClientState.FAILED)
            assert "credentials revoked" in change.reason
            await trio.sleep(30)
            assert server.attempts == 1
        nursery.cancel_scope.cancel()


async def _lose_unconfirmed(delivery: Delivery) -> tuple[FakeServer, list[Dropped]]:
    """Three messages reach a server that never answers pings, then it hangs up."""
    drops: list[Dropped] = []

    async def absorbing(peer: FakePeer) -> None:
        peer.echo = False
        await peer.accept()
        if peer.number == 1:
            peer.answer_pings = False
            nursery.start_soon(peer.run)
            await peer.wait_received(3)
            await peer.hang_up()
        else:
            await peer.run()

    events = Recorder()
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, absorbing)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          delivery=delivery, on_drop=drops.append, on_event=events) as ws:
            for i in range(3):
                await ws.send(f"m{i}")
            await events.wait(ClientState.OPEN, 2)
            await ws.send("after")
            await server.last.wait_received(4 if delivery is Delivery.AT_LEAST_ONCE else 1)
        nursery.cancel_scope.cancel()
    return server, drops


async def test_at_most_once_reports_unconfirmed_messages_as_possibly_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages written but never confirmed by a pong are reported, not resent."""
    server, drops = await _lose_unconfirmed(Delivery.AT_MOST_ONCE)
    assert [d.message for d in drops] == ["m0", "m1", "m2"]
    assert all(d.possibly_delivered for d in drops)
    assert server.peers[1].received == ["after"]


async def test_at_least_once_resends_unconfirmed_messages_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages written but never confirmed by a pong are sent again, first, in order."""
    server, drops = await _lose_unconfirmed(Delivery.AT_LEAST_ONCE)
    assert drops == []
    assert server.peers[1].received == ["m0", "m1", "m2", "after"]


async def test_confirmed_messages_are_neither_resent_nor_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once a pong confirms them, messages survive a crash of the connection as delivered."""
    drops: list[Dropped] = []
    events = Recorder()
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          delivery=Delivery.AT_LEAST_ONCE, on_drop=drops.append,
                                          on_event=events) as ws:
            for i in range(3):
                await ws.send(f"m{i}")
            await server.last.wait_received(3)
            await trio.sleep(0.5)  # the confirmation ping's pong comes back
            await server.last.hang_up()
            await events.wait(ClientState.OPEN, 2)
            await trio.sleep(5)
            assert server.peers[1].received == []
            assert drops == []
        nursery.cancel_scope.cancel()


async def test_slow_consumer_does_not_make_a_live_peer_look_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A full receive buffer pauses the verdict; after reading resumes, silence counts again."""
    events = Recorder()

    async def burst_then_silence(peer: FakePeer) -> None:
        peer.answer_pings = False
        await peer.accept()
        nursery.start_soon(peer.run)
        for i in range(10):
            await peer.send(f"b{i}")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, burst_then_silence)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          receive_buffer=2, on_event=events) as ws:
            await trio.sleep(60)
            assert events.states() == [ClientState.OPEN]
            got = [await ws.receive() for _ in range(10)]
            resumed_at = trio.current_time()
            assert got == [f"b{i}" for i in range(10)]
            lost_at, _ = await events.wait(ClientState.RECONNECTING)
            assert lost_at - resumed_at <= POLICY.dead_after + POLICY.interval
        nursery.cancel_scope.cancel()


async def test_in_band_heartbeats_between_two_pulse_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In-band msgpack heartbeats keep both pulse peers alive and never reach the apps."""
    seen_by_server: list[str | bytes] = []

    async def recording_echo(conn: ServerConnection) -> None:
        async for message in conn:
            seen_by_server.append(message)
            await conn.send(message)

    settings = ServerSettings(policy=POLICY, heartbeat=HeartbeatMode.FRAMES)

    async def pulse_server(peer: FakePeer) -> None:
        await serve_stream(peer.stream, recording_echo, settings, peer="fake")

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, pulse_server)
        events = Recorder()
        async with reconnecting_websocket(URL, policy=POLICY, heartbeat=HeartbeatMode.FRAMES,
                                          opener=server.opener, on_event=events) as ws:
            await ws.send(b"app")
            assert await ws.receive() == b"app"
            await trio.sleep(60)
            stats = ws.stats()
            assert stats is not None and stats.pongs_received >= 20
            assert events.states() == [ClientState.OPEN]
        assert seen_by_server == [b"app"]
        nursery.cancel_scope.cancel()


async def test_headers_and_subprotocols_pass_through(autojump_clock: trio.testing.MockClock) -> None:
    """Extra headers reach the server; the negotiated subprotocol is reported."""

    async def choosy(peer: FakePeer) -> None:
        await peer.accept(subprotocols=("v2.pulse",))
        await peer.run()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, choosy)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener,
                                          headers=[("Authorization", "Bearer t0k")],
                                          subprotocols=["v1.pulse", "v2.pulse"]) as ws:
            await ws.wait_open()
            assert ws.subprotocol == "v2.pulse"
            request = server.last.request
            assert request is not None
            assert (b"authorization", b"Bearer t0k") in [(k.lower(), v) for k, v in request.headers]
            assert request.subprotocols == ["v1.pulse", "v2.pulse"]
            assert request.host == "test.invalid:8080"
        nursery.cancel_scope.cancel()


async def test_close_flushes_the_queue_then_closes_normally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving the block sends what is queued, then a 1000 close; later calls raise."""
    drops: list[Dropped] = []
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener,
                                          on_drop=drops.append) as ws:
            await ws.wait_open()
            for i in range(50):
                ws.send_nowait(f"m{i}")
        assert server.last.received == [f"m{i}" for i in range(50)]
        assert server.last.close_code == 1000
        assert ws.state is ClientState.CLOSED
        assert drops == []
        with pytest.raises(ConnectionClosed):
            await ws.send("late")
        nursery.cancel_scope.cancel()


async def test_jitter_spreads_reconnects_of_many_clients(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Fifty independent clients (no shared probe) that lose the server together do not
    come back together: each draws its own fully jittered delay."""
    clients = 50
    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        server.refuse = 0
        lost = trio.Event()
        all_open = trio.Event()
        opened = 0

        async def one(i: int) -> None:
            nonlocal opened
            backoff = Backoff(initial=1.0, maximum=8.0, rng=random.Random(i))
            async with reconnecting_websocket(URL, policy=POLICY, backoff=backoff, opener=server.opener,
                                              shared_probe=False) as ws:
                await ws.wait_open()
                opened += 1
                if opened == clients:
                    all_open.set()
                await lost.wait()
                await trio.sleep(20)

        async with trio.open_nursery() as group:
            for i in range(clients):
                group.start_soon(one, i)
            await all_open.wait()
            server.refuse = 10**6
            outage_start = trio.current_time()
            for peer in server.peers:
                await peer.hang_up()
            lost.set()
            await trio.sleep(0.5)
            server.refuse = 0
        retries = sorted(t - outage_start for t in server.attempt_times[clients:])
        first_retries = retries[:clients]
        spread = first_retries[-1] - first_retries[0]
        assert spread > 0.5  # full jitter over [0, 1 s): not a burst at one instant
        buckets = {int(t * 10) for t in first_retries}
        assert len(buckets) >= 5
        nursery.cancel_scope.cancel()


async def test_clients_of_one_server_share_one_probe_while_it_refuses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Thirty clients that lose their server wait behind one probe while it refuses: the
    outage costs about one attempt per client plus the probes, far fewer than the same
    clients make with shared_probe=False, and all come back."""

    async def outage(shared: bool) -> tuple[int, int]:
        clients = 30
        async with trio.open_nursery() as nursery:
            server = FakeServer(nursery)
            lost, all_open, back = trio.Event(), trio.Event(), trio.Event()
            opened = reopened = 0

            async def one(i: int) -> None:
                nonlocal opened, reopened
                backoff = Backoff(1.0, 8.0, 2.0, rng=random.Random(i))
                async with reconnecting_websocket(URL, policy=POLICY, backoff=backoff, opener=server.opener,
                                                  shared_probe=shared) as ws:
                    await ws.wait_open()
                    opened += 1
                    if opened == clients:
                        all_open.set()
                    await lost.wait()
                    while ws.state is ClientState.OPEN:
                        await trio.lowlevel.checkpoint()
                    await ws.wait_open()
                    reopened += 1
                    if reopened == clients:
                        back.set()
                    await trio.sleep_forever()

            async with trio.open_nursery() as group:
                for i in range(clients):
                    group.start_soon(one, i)
                await all_open.wait()
                server.refuse = 10**6
                for peer in server.peers:
                    await peer.hang_up()
                lost.set()
                before = server.attempts
                await trio.sleep(20.0)
                during = server.attempts - before
                server.refuse = 0
                with trio.fail_after(30):
                    await back.wait()
                group.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
        return during, reopened

    shared_attempts, shared_back = await outage(True)
    own_attempts, own_back = await outage(False)
    assert shared_back == own_back == 30
    assert shared_attempts <= 30 + 40  # refusals until the gate closed, then probes only
    assert shared_attempts * 2 < own_attempts


async def test_default_echo_server_over_memory_streams(autojump_clock: trio.testing.MockClock) -> None:
    """The client and pulse's own echo server talk over any trio stream."""
    async with trio.open_nursery() as nursery:
        async def pulse_server(peer: FakePeer) -> None:
            await serve_stream(peer.stream, echo, ServerSettings(policy=POLICY), peer="fake")

        server = FakeServer(nursery, pulse_server)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener) as ws:
            for i in range(20):
                await ws.send(f"n{i}")
            assert [await ws.receive() for _ in range(20)] == [f"n{i}" for i in range(20)]
        nursery.cancel_scope.cancel()


async def test_at_least_once_window_stalls_until_the_peer_confirms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With window=4, unconfirmed messages stop the flow at four; pongs let it continue."""
    async def chatty_but_deaf(peer: FakePeer) -> None:
        peer.answer_pings = False
        peer.echo = False
        await peer.accept()
        nursery.start_soon(peer.run)
        while True:  # data keeps the peer alive although it answers no ping
            await trio.sleep(1.0)
            await peer.send("tick")

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, chatty_but_deaf)
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, window=4,
                                          delivery=Delivery.AT_LEAST_ONCE) as ws:
            for i in range(10):
                await ws.send(f"m{i}")
            await trio.sleep(10)
            assert server.last.received == [f"m{i}" for i in range(4)]
            assert ws.pending == 6
            server.last.answer_pings = True
            await server.last.wait_received(10)
            assert server.last.received == [f"m{i}" for i in range(10)]
            assert ws.state is ClientState.OPEN
        nursery.cancel_scope.cancel()


async def test_at_most_once_window_bounds_what_is_tracked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At-most-once never stalls; only the last `window` unconfirmed messages are reported."""
    drops: list[Dropped] = []

    async def deaf_then_gone(peer: FakePeer) -> None:
        peer.answer_pings = False
        peer.echo = False
        await peer.accept()
        nursery.start_soon(peer.run)
        await peer.wait_received(10)
        await peer.hang_up()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, deaf_then_gone)
        events = Recorder()
        async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener, window=4,
                                          on_drop=drops.append, on_event=events) as ws:
            for i in range(10):
                await ws.send(f"m{i}")
            await events.wait(ClientState.RECONNECTING)
            assert ws.pending == 0
        assert [d.message for d in drops] == ["m6", "m7", "m8", "m9"]
        assert all(d.possibly_delivered for d in drops)
        nursery.cancel_scope.cancel()


async def test_bad_arguments_are_refused_before_connecting() -> None:
    """A TLS context for ws://, a non-WebSocket URL or a zero window raise ValueError."""
    import ssl

    for url, options in [
        ("ws://h:1/", {"ssl_context": ssl.create_default_context()}),
        ("http://h:1/", {}),
        ("ws://h:1/", {"window": 0}),
        ("ws://h:1/", {"handshake_timeout": 0}),
    ]:
        with pytest.raises(ValueError):
            async with reconnecting_websocket(url, **options):  # type: ignore[arg-type]
                pass


async def test_messages_received_before_a_connection_ends_still_reach_a_slow_app(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What arrived before a reconnect is delivered, in order, before the next connection's."""
    events = Recorder()
    sent = trio.Event()

    async def burst(peer: FakePeer) -> None:
        await peer.accept()
        nursery.start_soon(peer.run)
        if peer.number == 1:
            for i in range(10):
                await peer.send(f"old {i}")
            sent.set()
        else:
            await peer.send("new 0")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery, burst)
        async with reconnecting_websocket(URL, policy=POLICY, backoff=fixed_backoff(), opener=server.opener,
                                          receive_buffer=2, on_event=events) as ws:
            await sent.wait()
            await trio.sleep(5)  # the reader is blocked on the full inbox meanwhile
            ws.reconnect("switching servers")
            await events.wait(ClientState.OPEN, 2)
            got = [await ws.receive() for _ in range(11)]
            assert got == [f"old {i}" for i in range(10)] + ["new 0"]
        nursery.cancel_scope.cancel()
