"""The Dubbo consumer driver over memory streams, in virtual time (MockClock autojump)."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from pulse._core.backoff import Backoff, Jitter
from pulse._core.channel_heartbeat import ChannelState, ChannelTiming
from pulse.errors import ConnectionClosed, PeerTimeout
from pulse.plugins.dubbo import codec
from pulse.plugins.dubbo.codec import Frame
from pulse.plugins.dubbo.consumer import DubboConsumer
from pulse.rpc import HeartbeatTimer

from .dubbo_fakes import RawPeer

TIMING = ChannelTiming(10.0)  # heartbeat 10 s, timeout 30 s
TICK = 1.0


class FakeProviders:
    """Hands the consumer a fresh memory-stream connection to a new RawPeer per connect."""

    def __init__(self, nursery: trio.Nursery, **peer: bool) -> None:
        self.nursery = nursery
        self.peer_options = peer
        self.peers: list[RawPeer] = []
        self.attempts: list[float] = []
        self.up = True

    async def connect(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if not self.up:
            raise OSError(errno.ECONNREFUSED, "connection refused")
        client, server = trio.testing.memory_stream_pair()
        raw = RawPeer(server, **self.peer_options)
        self.peers.append(raw)
        self.nursery.start_soon(raw.run)
        return client


async def start_consumer(
    nursery: trio.Nursery, providers: FakeProviders, **backoff: float
) -> DubboConsumer:
    timer = HeartbeatTimer(tick=TICK)
    await nursery.start(timer.run)
    policy = Backoff(
        initial=backoff.get("initial", 0.5), maximum=backoff.get("maximum", 4.0),
        jitter=Jitter.NONE,
    )
    consumer = DubboConsumer(
        "fake", 20880, timer, timing=TIMING, backoff=policy, connect=providers.connect
    )
    nursery.start_soon(consumer.run)
    await consumer.wait_connected()
    return consumer


async def test_idle_consumer_heartbeats_and_stays_connected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An idle consumer heartbeats every 10 s; answered, it never reconnects."""
    async with trio.open_nursery() as nursery:
        providers = FakeProviders(nursery)
        consumer = await start_consumer(nursery, providers)
        await trio.sleep(100.5)
        (peer,) = providers.peers
        times = [t for t, _ in peer.heartbeat_requests()]
        assert len(times) == 10 and 10.0 <= times[0] <= 11.0
        assert consumer.connects == 1
        assert consumer.channel is not None
        assert consumer.channel.rpc.state is ChannelState.ALIVE
        assert consumer.channel.rpc.rtt.count == 10
        nursery.cancel_scope.cancel()


async def test_silent_provider_fails_pending_calls_and_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing read for 30 s: the pending call fails with PeerTimeout then, and the consumer reconnects."""
    async with trio.open_nursery() as nursery:
        providers = FakeProviders(nursery, answer_heartbeats=False)
        consumer = await start_consumer(nursery, providers)
        await trio.sleep(1)
        with pytest.raises(PeerTimeout, match="heartbeat_timeout 30"):
            await consumer.request(b"\x01")
        failed_at = trio.current_time()
        assert 30.0 <= failed_at <= 31.0
        first = providers.peers[0]
        assert [round(t) for t, f in first.heartbeat_requests()] == [10, 20]
        await consumer.wait_connected()
        assert consumer.connects == 2
        assert providers.attempts[1] - failed_at == pytest.approx(0.5, abs=0.01)
        assert first.eof_at is not None
        nursery.cancel_scope.cancel()


async def test_dropped_connection_fails_pending_calls_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the provider hangs up, pending calls fail immediately with ConnectionClosed."""
    async with trio.open_nursery() as nursery:
        providers = FakeProviders(nursery)
        consumer = await start_consumer(nursery, providers)

        async def hang_up() -> None:
            await trio.sleep(5)
            await providers.peers[0].stream.aclose()

        nursery.start_soon(hang_up)
        with pytest.raises(ConnectionClosed) as info:
            await consumer.request(b"\x01")
        assert not isinstance(info.value, PeerTimeout)
        assert trio.current_time() == pytest.approx(5.0, abs=0.01)
        await consumer.wait_connected()
        assert consumer.connects == 2
        nursery.cancel_scope.cancel()


async def test_requests_fail_fast_while_the_provider_is_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While no provider accepts, calls fail at once and attempts back off exponentially."""
    async with trio.open_nursery() as nursery:
        providers = FakeProviders(nursery)
        consumer = await start_consumer(nursery, providers)
        providers.up = False
        await providers.peers[0].stream.aclose()
        await trio.sleep(0.01)
        start = trio.current_time()
        with pytest.raises(ConnectionClosed):
            await consumer.request(b"\x01")
        assert trio.current_time() == start
        await trio.sleep(10)
        gaps = [b - a for a, b in zip(providers.attempts[1:], providers.attempts[2:], strict=False)]
        assert gaps[:3] == pytest.approx([1.0, 2.0, 4.0], abs=0.01)
        providers.up = True
        await consumer.wait_connected()
        assert consumer.connects == 2
        nursery.cancel_scope.cancel()


async def test_responses_reach_their_callers_and_ids_never_collide(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Calls and heartbeats interleave on one channel; every request id is used once."""
    async with trio.open_nursery() as nursery:
        providers = FakeProviders(nursery, answer_requests=True)
        consumer = await start_consumer(nursery, providers)
        for i in range(8):
            reply = await consumer.request(bytes([i]))
            assert reply is not None and reply.body == bytes([i]) and not reply.is_request
            await trio.sleep(15)  # idle long enough for a heartbeat in between
        (peer,) = providers.peers
        ids = [f.request_id for _, f in peer.frames]
        assert len(peer.heartbeat_requests()) >= 7
        assert len(ids) == len(set(ids)) == 8 + len(peer.heartbeat_requests())
        nursery.cancel_scope.cancel()


async def test_frames_pushed_by_the_provider_reach_the_push_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A read-only notice (a one-way event that is not a heartbeat) goes to on_push."""
    pushed: list[Frame] = []

    async def on_push(frame: Frame) -> None:
        pushed.append(frame)

    async with trio.open_nursery() as nursery:
        providers = FakeProviders(nursery)
        timer = HeartbeatTimer(tick=TICK)
        await nursery.start(timer.run)
        consumer = DubboConsumer(
            "fake", 1, timer, timing=TIMING, connect=providers.connect, on_push=on_push
        )
        nursery.start_soon(consumer.run)
        await consumer.wait_connected()
        readonly = codec.encode(Frame(3, True, False, True, codec.HESSIAN2, 0, b"\x01R"))
        await providers.peers[0].send(readonly)
        await trio.sleep(0.1)
        assert [codec.encode(f) for f in pushed] == [readonly]
        nursery.cancel_scope.cancel()
