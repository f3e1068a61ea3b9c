"""pulse.heartbeat() over in-memory streams, in virtual time (MockClock autojump)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse._core.detectors import MissedBeats
from pulse._core.policy import HeartbeatPolicy
from pulse._driver.connection import heartbeat
from pulse.actions import Close, PeerDead, PeerSuspect
from pulse.errors import AuthFailed, ConnectionClosed, PeerTimeout, RemoteProtocolError
from pulse.frames import PROTOCOL_VERSION, Data, FrameDecoder, Hello, Ping, Pong, encode_frame


class RawPeer:
    """The far end written by hand: speaks frames directly, so it can misbehave."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[object] = []

    async def hello(self, interval: float = 1.0, timeout: float = 3.0, token: str | None = None) -> Hello:
        await self.stream.send_all(encode_frame(Hello(PROTOCOL_VERSION, interval, timeout, "raw", token)))
        while True:
            for frame in self.decoder.feed(await self.stream.receive_some(65536)):
                assert isinstance(frame, Hello)
                return frame

    async def collect(self) -> None:
        """Read frames forever into self.frames (without answering anything)."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self.frames += self.decoder.feed(data)


async def test_messages_round_trip_and_policy_is_negotiated(autojump_clock: trio.testing.MockClock) -> None:
    """Application messages cross in both directions; the lower interval wins."""
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        async def server() -> None:
            async with heartbeat(right, HeartbeatPolicy(2.0, 6.0), peer_id="srv") as conn:
                async for message in conn:
                    await conn.send({"echo": message})

        nursery.start_soon(server)
        async with heartbeat(left, HeartbeatPolicy(5.0, 15.0), peer_id="cli") as conn:
            assert conn.policy.interval == 2.0
            assert conn.policy.timeout == 6.0
            assert conn.remote_peer_id == "srv"
            for i in range(3):
                await conn.send(b"x" * i)
                assert await conn.receive() == {"echo": b"x" * i}
            await trio.sleep(60)  # idle for a virtual minute: heartbeats keep both sides alive
            assert conn.state.value == "alive"
            assert conn.stats().pongs_received >= 25
        nursery.cancel_scope.cancel()


async def test_silent_peer_declared_dead_within_timeout_plus_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that completes the HELLO then never answers is dead within timeout + interval."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 3.0)
        async with heartbeat(left, HeartbeatPolicy(1.0, 3.0)) as conn:
            nursery.start_soon(raw.collect)
            opened = trio.current_time()
            events = []
            with pytest.raises(PeerTimeout):
                await conn.receive()
            elapsed = trio.current_time() - opened
            async for event in conn.events():
                events.append(event)
        nursery.cancel_scope.cancel()
    assert 3.0 <= elapsed <= 3.0 + 1.0
    kinds = [type(e) for e in events]
    assert kinds.index(PeerSuspect) < kinds.index(PeerDead) < kinds.index(Close)
    assert sum(isinstance(f, Ping) for f in raw.frames) >= 2


async def test_peer_that_keeps_sending_is_never_pinged(autojump_clock: trio.testing.MockClock) -> None:
    """Data every 0.5 s proves life: no PING is ever sent to that peer."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 3.0)
        async with heartbeat(left, HeartbeatPolicy(1.0, 3.0)) as conn:
            nursery.start_soon(raw.collect)
            for i in range(120):
                await right.send_all(encode_frame(Data(i)))
                assert await conn.receive() == i
                await trio.sleep(0.5)
            assert conn.state.value == "alive"
        nursery.cancel_scope.cancel()
    assert not any(isinstance(f, Ping) for f in raw.frames)


async def test_garbage_closes_only_this_connection_with_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bytes that are not a frame close the connection; receive() says why."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello)
        async with heartbeat(left, HeartbeatPolicy(1.0, 3.0)) as conn:
            await right.send_all(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid msgpack
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive()
            assert isinstance(info.value.__cause__, RemoteProtocolError)
            assert conn.close_reason is not None and "protocol error" in conn.close_reason
        nursery.cancel_scope.cancel()


async def test_ping_measures_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    """conn.ping() returns the RTT of an on-demand heartbeat (a delayed pong shows in it)."""
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        async def server() -> None:
            async with heartbeat(right, HeartbeatPolicy(10.0, 30.0)) as conn:
                async for _ in conn:
                    pass

        nursery.start_soon(server)
        async with heartbeat(left, HeartbeatPolicy(10.0, 30.0)) as conn:
            rtt = await conn.ping()
            assert 0 <= rtt < 0.01
            assert conn.stats().rtt.count == 1
        nursery.cancel_scope.cancel()


async def test_unanswered_ping_raises_peer_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """conn.ping(timeout) raises PeerTimeout when no pong comes back in time."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 10.0, 30.0)
        async with heartbeat(left, HeartbeatPolicy(10.0, 30.0)) as conn:
            nursery.start_soon(raw.collect)
            with pytest.raises(PeerTimeout):
                await conn.ping(timeout=2.0)
        nursery.cancel_scope.cancel()


async def test_bad_token_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    """authenticate() returning False refuses the peer with AuthFailed."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 3.0, "wrong")
        with pytest.raises(AuthFailed):
            async with heartbeat(left, authenticate=lambda token: token == "secret"):
                pass
        nursery.cancel_scope.cancel()


async def test_custom_detector_is_used(autojump_clock: trio.testing.MockClock) -> None:
    """A detector factory replaces the fixed timeout (2 missed beats of 1 s → dead at 2 s)."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 10.0)
        async with heartbeat(left, HeartbeatPolicy(1.0, 10.0),
                             detector=lambda p: MissedBeats(p.interval, 2)) as conn:
            nursery.start_soon(raw.collect)
            start = trio.current_time()
            with pytest.raises(PeerTimeout):
                await conn.receive()
            assert trio.current_time() - start == pytest.approx(2.0)
        nursery.cancel_scope.cancel()


async def test_peer_close_frame_ends_iteration_cleanly(autojump_clock: trio.testing.MockClock) -> None:
    """When the peer leaves the block, our async-for ends without an error."""
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        async def server() -> None:
            async with heartbeat(right) as conn:
                await conn.send("bye")

        nursery.start_soon(server)
        async with heartbeat(left) as conn:
            received = [message async for message in conn]
        assert received == ["bye"]
        assert conn.close_reason is not None and "closed by peer" in conn.close_reason


async def test_a_stalled_loop_does_not_condemn_a_live_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 60 s jump of the clock (a stopped process) yields LocalPause, not PeerDead."""
    from pulse.actions import LocalPause
    from pulse.testing import heartbeat_pair

    async with heartbeat_pair(HeartbeatPolicy(1.0, 3.0), HeartbeatPolicy(1.0, 3.0)) as (left, right):
        await trio.sleep(5)
        autojump_clock.jump(60)
        await trio.sleep(5)
        assert left.state.value == "alive" and right.state.value == "alive"
        assert not left.closed and not right.closed
        await left.send("still here")
        assert await right.receive() == "still here"
        seen = []
        while True:
            with trio.move_on_after(0.001):
                seen.append(await left.events().get())
                continue
            break
        assert any(isinstance(e, LocalPause) for e in seen)
        assert not any(isinstance(e, PeerDead) for e in seen)


async def test_a_slow_consumer_does_not_condemn_a_live_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a full receive buffer and nobody reading for a minute, the peer stays alive."""
    from pulse.testing import heartbeat_pair

    policy = HeartbeatPolicy(1.0, 3.0)
    async with heartbeat_pair(policy, policy, receive_buffer=2) as (left, right):
        for i in range(10):
            await left.send(i)
        await trio.sleep(60)  # right's application reads nothing for a virtual minute
        assert [await right.receive() for _ in range(10)] == list(range(10))
        assert right.state.value == "alive" and not right.closed


async def test_errors_in_the_block_propagate_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    """An exception raised inside `async with heartbeat(...)` reaches the caller as itself."""
    from pulse.testing import heartbeat_pair

    with pytest.raises(KeyError):
        async with heartbeat_pair() as (left, _right):
            await left.send(1)
            raise KeyError("mine")


async def test_a_ping_flood_closes_only_the_flooder(autojump_clock: trio.testing.MockClock) -> None:
    """A peer pinging far beyond max_ping_rate gets no more pongs than the rate allows and
    is closed with a protocol error ("ping flood"); pinging under the rate is answered."""
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 3.0)
        async with heartbeat(left, HeartbeatPolicy(1.0, 3.0), max_ping_rate=50) as conn:
            nursery.start_soon(raw.collect)
            for seq in range(20):  # under the rate: every one answered
                await right.send_all(encode_frame(Ping(seq, 0.0)))
                await trio.sleep(0.05)
            await trio.sleep(0.1)
            assert sum(isinstance(f, Pong) for f in raw.frames) == 20
            flood = b"".join(encode_frame(Ping(1000 + i, 0.0)) for i in range(500))
            with pytest.raises(ConnectionClosed) as caught:
                await right.send_all(flood)
                await conn.receive()
            assert "ping flood" in str(caught.value.__cause__)
            pongs = sum(isinstance(f, Pong) for f in raw.frames)
            assert pongs <= 20 + 50 + 1
        nursery.cancel_scope.cancel()


async def test_a_flood_pipelined_behind_the_hello_is_one_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pings sent in the same write as the HELLO (read with it, before reading starts) stop
    at the first flood verdict: one protocol_error and one goodbye, not one per ping (each
    was a log line and a task: thousands of them stalled the server's loop for seconds)."""
    from structlog.testing import capture_logs

    left, right = trio.testing.memory_stream_pair()
    flood = b"".join(encode_frame(Ping(i, 0.0)) for i in range(3000))
    hello = encode_frame(Hello(PROTOCOL_VERSION, 1.0, 3.0, "raw"))
    raw = RawPeer(right)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await right.send_all(hello + flood)
            async with heartbeat(left, HeartbeatPolicy(1.0, 3.0), max_ping_rate=50) as conn:
                nursery.start_soon(raw.collect)
                with pytest.raises(ConnectionClosed) as caught:
                    await conn.receive()
                assert "ping flood" in str(caught.value.__cause__)
            nursery.cancel_scope.cancel()
    assert [entry["event"] for entry in logs].count("protocol_error") == 1
    assert sum(isinstance(f, Pong) for f in raw.frames) <= 50 + 1
