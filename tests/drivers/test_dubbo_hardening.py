"""Dubbo provider hardening: one abusive client costs only its own connection (issue 10, row 1)."""

from __future__ import annotations

import trio
import trio.testing

from pulse._core.channel_heartbeat import ChannelTiming, Role
from pulse.plugins.dubbo import codec
from pulse.plugins.dubbo.channel import DubboChannel
from pulse.plugins.dubbo.provider import DubboProvider
from pulse.rpc import HeartbeatTimer

TIMING = ChannelTiming(10.0)


class ResettingStream(trio.abc.Stream):
    """Delivers ``data`` in one read, then blocks; every write after the first fails (a reset)."""

    def __init__(self, data: bytes, ok_writes: int = 1) -> None:
        self._data = data
        self._ok_writes = ok_writes
        self.writes = 0
        self.written = 0
        self._closed = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._data:
            chunk, self._data = self._data, b""
            return chunk
        await self._closed.wait()
        raise trio.ClosedResourceError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.writes > self._ok_writes:
            raise trio.BrokenResourceError("Connection reset by peer")
        self.written += len(data)
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._closed.set()
        await trio.lowlevel.checkpoint()


def pipelined_heartbeats(count: int) -> bytes:
    return b"".join(codec.heartbeat_request(i + 1) for i in range(count))


async def test_pipelined_heartbeats_then_reset_close_only_that_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """20,000 pipelined heartbeat requests then a reset: the channel closes, handle_stream returns."""
    async with trio.open_nursery() as nursery:
        timer = HeartbeatTimer(tick=1.0)
        await nursery.start(timer.run)
        provider = DubboProvider(timer, timing=TIMING)
        stream = ResettingStream(pipelined_heartbeats(20_000))
        with trio.fail_after(5):
            await provider.handle_stream(stream, "attacker")  # must not raise
        assert provider.closed_total == 1
        (closed,) = provider.closed
        assert "write failed" in closed.reason
        nursery.cancel_scope.cancel()


async def test_reader_send_after_close_does_not_raise(autojump_clock: trio.testing.MockClock) -> None:
    """A channel closed by its writer while the reader holds decoded requests ends run() quietly."""
    async with trio.open_nursery() as nursery:
        timer = HeartbeatTimer(tick=1.0)
        await nursery.start(timer.run)
        stream = ResettingStream(pipelined_heartbeats(500), ok_writes=0)
        channel = DubboChannel(stream, timer, Role.PROVIDER, timing=TIMING)
        with trio.fail_after(5):
            reason = await channel.run(_ignore)
        assert "write failed" in reason
        nursery.cancel_scope.cancel()


async def test_outbox_is_bounded_in_bytes(autojump_clock: trio.testing.MockClock) -> None:
    """Large application frames queue up to max_queued_bytes; further sends wait for the writer."""
    async with trio.open_nursery() as nursery:
        timer = HeartbeatTimer(tick=1.0)
        await nursery.start(timer.run)
        _client, server = trio.testing.lockstep_stream_pair()
        channel = DubboChannel(server, timer, Role.PROVIDER, timing=TIMING, max_queued_bytes=256 * 1024)
        nursery.start_soon(channel.run, _ignore)
        frame = codec.response(1, b"x" * 100_000)
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(100):
                await channel.send(frame)
                sent += 1

        nursery.start_soon(flood)
        await trio.sleep(1.0)  # the client never reads
        assert channel.queued_bytes <= 256 * 1024
        # what is queued plus the one frame the writer holds, never all 100 frames (10 MB)
        assert sent * len(frame) <= 256 * 1024 + 2 * len(frame)
        nursery.cancel_scope.cancel()


async def _ignore(frame: codec.Frame) -> None:
    await trio.lowlevel.checkpoint()
