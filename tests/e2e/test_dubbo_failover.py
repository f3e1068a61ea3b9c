"""Dubbo heartbeats across real processes on loopback: kills, restarts and SIGSTOP."""

from __future__ import annotations

import signal

import pytest
import trio

from pulse._core.backoff import Backoff
from pulse._core.channel_heartbeat import ChannelTiming
from pulse.errors import ConnectionClosed, PeerTimeout
from pulse.plugins.dubbo.codec import Status
from pulse.plugins.dubbo.consumer import open_consumer
from pulse.plugins.dubbo.provider import DubboProvider
from pulse.rpc import open_heartbeat_timer, tick_for

from .dubbo_procs import start_dubbo

pytestmark = pytest.mark.e2e

HEARTBEAT = 0.3
TIMING = ChannelTiming(HEARTBEAT)  # heartbeat_timeout 0.9 s
BACKOFF = Backoff(initial=0.05, maximum=0.3)


async def test_provider_killed_consumer_reconnects_after_restart() -> None:
    """Provider SIGKILLed: the consumer notices at once, fails calls fast, reconnects after restart."""
    async with trio.open_nursery() as nursery:
        first = await start_dubbo(nursery, "provider", "--port", "0", "--heartbeat", str(HEARTBEAT))
        port = (await first.next("listening"))["port"]
        async with open_consumer("127.0.0.1", port, timing=TIMING, backoff=BACKOFF) as consumer:
            with trio.fail_after(5):
                await consumer.wait_connected()
            reply = await consumer.request(b"\x01")
            assert reply is not None and reply.status == Status.SERVICE_NOT_FOUND

            first.process.kill()
            killed_at = trio.current_time()
            with trio.fail_after(2):
                while consumer.connected:
                    await consumer.changed.wait()
            assert trio.current_time() - killed_at < 0.5  # EOF/RST, not a timeout
            with pytest.raises(ConnectionClosed):
                await consumer.request(b"\x02")  # fails at once while disconnected

            second = await start_dubbo(
                nursery, "provider", "--port", str(port), "--heartbeat", str(HEARTBEAT)
            )
            await second.next("listening")
            with trio.fail_after(5):
                await consumer.wait_connected()
            assert consumer.connects == 2
            reply = await consumer.request(b"\x03")
            assert reply is not None and reply.status == Status.SERVICE_NOT_FOUND
            second.process.kill()
        nursery.cancel_scope.cancel()


async def test_stopped_consumer_is_closed_by_the_provider() -> None:
    """Consumer SIGSTOPped: the provider closes its channel heartbeat_timeout after its last read."""
    async with open_heartbeat_timer(tick=tick_for(TIMING)) as timer, trio.open_nursery() as nursery:
        provider = DubboProvider(timer, timing=TIMING)
        _, port = await nursery.start(provider.serve, "127.0.0.1", 0)
        consumer = await start_dubbo(
            nursery, "consumer", "--port", str(port), "--heartbeat", str(HEARTBEAT)
        )
        await consumer.next("connected")
        with trio.fail_after(5):
            while not provider.channels:
                await provider.changed.wait()
        await trio.sleep(1.0)  # heartbeats flow: the channel is healthy before the stop
        (channel,) = provider.channels
        assert channel.rpc.stats().heartbeats_received + channel.rpc.stats().heartbeats_answered > 0
        assert provider.closed_total == 0
        consumer.process.send_signal(signal.SIGSTOP)
        stopped_at = trio.current_time()
        try:
            with trio.fail_after(5):
                while provider.closed_total == 0:
                    await provider.changed.wait()
            elapsed = trio.current_time() - stopped_at
            (closed,) = provider.closed
            assert closed.timed_out and "heartbeat_timeout 0.9" in closed.reason
            assert 0.9 - HEARTBEAT - 0.1 <= elapsed <= 0.9 + 0.4, elapsed
        finally:
            consumer.process.send_signal(signal.SIGCONT)
            consumer.process.kill()
        nursery.cancel_scope.cancel()


async def test_stopped_provider_fails_pending_calls_after_heartbeat_timeout() -> None:
    """Provider SIGSTOPped: a call in flight fails with PeerTimeout after ~heartbeat_timeout."""
    async with trio.open_nursery() as nursery:
        provider = await start_dubbo(nursery, "provider", "--port", "0", "--heartbeat", "30")
        port = (await provider.next("listening"))["port"]
        async with open_consumer("127.0.0.1", port, timing=TIMING, backoff=BACKOFF) as consumer:
            with trio.fail_after(5):
                await consumer.wait_connected()
            await trio.sleep(0.5)
            provider.process.send_signal(signal.SIGSTOP)
            stopped_at = trio.current_time()
            try:
                with trio.fail_after(5), pytest.raises(PeerTimeout, match="heartbeat_timeout"):
                    await consumer.request(b"\x01")
                elapsed = trio.current_time() - stopped_at
                assert 0.9 - HEARTBEAT - 0.1 <= elapsed <= 0.9 + 0.4, elapsed
                assert consumer.disconnects and "heartbeat_timeout" in consumer.disconnects[0]
            finally:
                provider.process.send_signal(signal.SIGCONT)
                provider.process.kill()
        nursery.cancel_scope.cancel()
