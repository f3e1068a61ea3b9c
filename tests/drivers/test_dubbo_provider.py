"""The Dubbo provider driver over memory streams, in virtual time (MockClock autojump)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse._core.channel_heartbeat import ChannelTiming
from pulse.plugins.dubbo import codec
from pulse.plugins.dubbo.channel import DubboChannel
from pulse.plugins.dubbo.codec import Frame, Status
from pulse.plugins.dubbo.provider import DubboProvider, RequestHandler, not_found_handler
from pulse.rpc import HeartbeatTimer

from .dubbo_fakes import RawPeer

TIMING = ChannelTiming(10.0)  # heartbeat 10 s, timeout 30 s
TICK = 1.0


async def start_provider(
    nursery: trio.Nursery, handler: RequestHandler = not_found_handler, timing: ChannelTiming = TIMING
) -> DubboProvider:
    timer = HeartbeatTimer(tick=TICK)
    await nursery.start(timer.run)
    return DubboProvider(timer, timing=timing, handler=handler)


async def wait_closed(provider: DubboProvider, count: int = 1) -> None:
    while provider.closed_total < count:
        await provider.changed.wait()


def connect(nursery: trio.Nursery, provider: DubboProvider, name: str, **peer: bool) -> RawPeer:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(provider.handle_stream, server, name)
    raw = RawPeer(client, **peer)
    nursery.start_soon(raw.run)
    return raw


async def test_idle_channel_gets_a_heartbeat_after_one_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing read or written for `heartbeat`: the provider sends a Dubbo heartbeat."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peer = connect(nursery, provider, "a")
        await trio.sleep(10.5)
        requests = peer.heartbeat_requests()
        assert len(requests) == 0 or requests[0][0] >= 10.0
        await trio.sleep(1.0)
        (at, frame), *_ = peer.heartbeat_requests()
        assert 10.0 <= at <= 10.0 + TICK
        assert codec.encode(frame) == codec.heartbeat_request(frame.request_id)
        nursery.cancel_scope.cancel()


async def test_answered_heartbeats_keep_the_channel_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that answers stays connected for ten heartbeat periods; RTTs are recorded."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peer = connect(nursery, provider, "a")
        await trio.sleep(105)
        assert peer.eof_at is None
        (channel,) = provider.channels
        stats = channel.rpc.stats()
        assert stats.heartbeats_sent == len(peer.heartbeat_requests()) == 10
        assert stats.heartbeats_answered == 10 and stats.rtt.count == 10
        nursery.cancel_scope.cancel()


async def test_silent_consumer_is_closed_after_heartbeat_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No answer, no traffic: heartbeats at 10 s and 20 s, channel closed at 30 s."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peer = connect(nursery, provider, "silent", answer_heartbeats=False)
        await peer.eof.wait()
        await wait_closed(provider)
        assert peer.eof_at is not None and 30.0 <= peer.eof_at <= 30.0 + TICK
        assert [round(t) for t, _ in peer.heartbeat_requests()] == [10, 20]
        (closed,) = provider.closed
        assert closed.timed_out and "heartbeat_timeout 30" in closed.reason
        assert not provider.channels
        nursery.cancel_scope.cancel()


async def test_traffic_suppresses_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    """Requests and their responses every 4 s mean no heartbeat is ever needed."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peer = connect(nursery, provider, "busy")
        for i in range(25):
            await peer.send(codec.request(1000 + i, b"\x01"))
            await trio.sleep(4)
        assert peer.heartbeat_requests() == []
        responses = [f for _, f in peer.frames if not f.is_request]
        assert len(responses) == 25 and all(f.status == Status.SERVICE_NOT_FOUND for f in responses)
        nursery.cancel_scope.cancel()


async def test_heartbeat_requests_are_answered_byte_exact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The answer to `da bb e2 00 | id | 00 00 00 01 | 4e` is `da bb 22 14 | id | ... | 4e`."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peer = connect(nursery, provider, "pinger")
        await peer.send(bytes.fromhex("dabbe200 00000000000004d2 00000001 4e"))
        await trio.sleep(0.1)
        (frame,) = [f for _, f in peer.frames]
        assert codec.encode(frame) == bytes.fromhex("dabb2214 00000000000004d2 00000001 4e")
        nursery.cancel_scope.cancel()


async def test_peer_heartbeats_count_as_proof_of_life(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that sends its own heartbeats (and answers none) is never closed."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peer = connect(nursery, provider, "pinger", answer_heartbeats=False)
        for i in range(12):
            await peer.send(codec.heartbeat_request(500 + i))
            await trio.sleep(9)
        assert peer.eof_at is None
        assert len(peer.heartbeat_responses()) == 12
        assert peer.heartbeat_requests() == []  # read and written every 9 s: never idle
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
        (bytes.fromhex("dabbc202 0000000000000001 7fffffff"), "exceeds the limit"),
    ],
)
async def test_garbage_closes_only_that_channel(
    autojump_clock: trio.testing.MockClock, garbage: bytes, reason: str
) -> None:
    """A peer sending garbage is disconnected at once; another channel keeps being served."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        good = connect(nursery, provider, "good")
        bad = connect(nursery, provider, "bad")
        await trio.sleep(1)
        await bad.send(garbage)
        await bad.eof.wait()
        await wait_closed(provider)
        assert bad.eof_at is not None and bad.eof_at < 1.1
        (closed,) = provider.closed
        assert closed.peer == "bad" and reason in closed.reason and not closed.timed_out
        await trio.sleep(60)
        assert good.eof_at is None and len(provider.channels) == 1
        assert len(good.heartbeat_requests()) == 6
        await good.send(codec.heartbeat_request(9))
        await trio.sleep(0.1)
        assert any(f.request_id == 9 for _, f in good.heartbeat_responses())
        nursery.cancel_scope.cancel()


async def test_truncated_frame_at_eof_is_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A consumer that hangs up inside a frame is recorded as a protocol error."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(provider.handle_stream, server, "cut")
        await client.send_all(codec.heartbeat_request(1)[:10])
        await client.send_eof()
        await wait_closed(provider)
        assert "stream ended inside a frame header" in provider.closed[0].reason
        nursery.cancel_scope.cancel()


async def test_application_frames_pass_through_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ordinary requests reach the handler as decoded; its reply reaches the consumer."""
    seen: list[Frame] = []

    async def handler(frame: Frame, channel: DubboChannel) -> None:
        seen.append(frame)
        await channel.send(codec.response(frame.request_id, b"\x92"))

    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery, handler)
        peer = connect(nursery, provider, "app")
        raw = bytes.fromhex("dabbc200 0000000000000102 00000003 010203")
        await peer.send(raw)
        await trio.sleep(0.1)
        assert [codec.encode(f) for f in seen] == [raw]
        assert [codec.encode(f) for _, f in peer.frames] == [
            bytes.fromhex("dabb0214 0000000000000102 00000001 92")
        ]
        nursery.cancel_scope.cancel()


async def test_failing_handler_answers_server_error_and_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exception in the application handler becomes SERVER_ERROR; the channel stays."""

    async def handler(frame: Frame, channel: DubboChannel) -> None:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery, handler)
        peer = connect(nursery, provider, "app")
        await peer.send(codec.request(5, b"x"))
        await trio.sleep(0.1)
        (_, reply), = peer.frames
        assert reply.status == Status.SERVER_ERROR and b"boom" in reply.body
        assert peer.eof_at is None and len(provider.channels) == 1
        nursery.cancel_scope.cancel()


async def test_one_timer_task_serves_many_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """200 silent channels on one wheel: all closed at 30 s, with about one wake-up per tick."""
    async with trio.open_nursery() as nursery:
        provider = await start_provider(nursery)
        peers = [connect(nursery, provider, f"p{i}", answer_heartbeats=False) for i in range(200)]
        await trio.sleep(40)
        assert all(p.eof_at is not None and 30.0 <= p.eof_at <= 31.0 for p in peers)
        assert provider.closed_total == 200 and all(c.timed_out for c in provider.closed)
        assert provider.timer.wakeups <= 5  # heartbeats at 10 and 20, verdicts at 30
        assert len(provider.timer) == 0
        nursery.cancel_scope.cancel()
