"""pulse.rpc, the framework-agnostic surface: a fake framework with message objects."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from pulse._core.backoff import Backoff, Jitter
from pulse._core.channel_heartbeat import ChannelState, ChannelTiming, Role
from pulse.actions import Reconnect
from pulse.errors import ConnectionClosed, ReconnectGaveUp
from pulse.rpc import RequestIds, RpcChannel, open_heartbeat_timer, reconnect_loop


@dataclass(frozen=True)
class Msg:
    """A framework message: (kind, id)."""

    kind: str
    request_id: int


class Messages:
    def request(self, request_id: int) -> Msg:
        return Msg("ping", request_id)

    def response(self, request_id: int) -> Msg:
        return Msg("pong", request_id)


class Hooks:
    """Records what pulse asked for; optionally fails."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[float, Msg]] = []
        self.closed: list[tuple[float, str]] = []
        self.fail = fail

    def send_heartbeat(self, message: Msg) -> None:
        if self.fail:
            raise RuntimeError("framework bug")
        self.sent.append((trio.current_time(), message))

    def close(self, reason: str) -> None:
        self.closed.append((trio.current_time(), reason))


def test_request_ids_wrap_within_their_range() -> None:
    """Ids run from start to limit - 1 and wrap to start."""
    ids = RequestIds(5, limit=8)
    assert [ids() for _ in range(6)] == [5, 6, 7, 5, 6, 7]
    with pytest.raises(ValueError):
        RequestIds(8, limit=8)


async def test_heartbeat_then_close_through_the_hooks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The framework is asked to send heartbeats when idle and to close when the peer is dead."""
    async with open_heartbeat_timer(tick=0.5) as timer:
        hooks = Hooks()
        channel = timer.open_channel(Role.CONSUMER, hooks, Messages(), timing=ChannelTiming(2.0))
        await trio.sleep(10)
        assert [(round(t, 1), m.kind) for t, m in hooks.sent] == [(2.0, "ping"), (4.0, "ping")]
        assert len(hooks.closed) == 1 and hooks.closed[0][0] == pytest.approx(6.0)
        assert channel.state is ChannelState.DEAD and channel.timed_out
        assert channel.closed_reason is not None and "heartbeat_timeout 6" in channel.closed_reason
        assert len(timer) == 0


async def test_answers_record_rtt_and_share_the_id_space(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Heartbeat ids come from the framework's allocator; answers give RTT and liveness."""
    ids = RequestIds()
    async with trio.open_nursery() as nursery, open_heartbeat_timer(tick=0.1) as timer:

        class AnsweringHooks(Hooks):
            """The peer answers every heartbeat 50 ms after it is sent."""

            def send_heartbeat(self, message: Msg) -> None:
                super().send_heartbeat(message)
                nursery.start_soon(answer_later, message.request_id)

        async def answer_later(request_id: int) -> None:
            await trio.sleep(0.05)
            assert channel.heartbeat_response(request_id) is True

        hooks = AnsweringHooks()
        channel: RpcChannel[Msg] = timer.open_channel(
            Role.PROVIDER, hooks, Messages(), timing=ChannelTiming(1.0), ids=ids
        )
        app_ids = [channel.next_request_id() for _ in range(5)]
        await trio.sleep(20)
        app_ids += [channel.next_request_id() for _ in range(5)]
        await trio.sleep(0.06)  # the answer to a heartbeat sent just now is 50 ms away
        beat_ids = [m.request_id for _, m in hooks.sent]
        assert len(beat_ids) >= 10
        assert not set(beat_ids) & set(app_ids)
        assert channel.rtt.count == len(beat_ids) and channel.rtt.avg == pytest.approx(0.05)
        assert channel.heartbeat_response(10**6) is False  # not ours, still a read
        assert channel.state is ChannelState.ALIVE
        assert channel.heartbeat_request(77) == Msg("pong", 77)
        assert channel.stats().heartbeats_received == 1
        assert not hooks.closed
        nursery.cancel_scope.cancel()


async def test_reads_and_writes_suppress_heartbeats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A framework reporting reads and writes every second never gets a heartbeat request."""
    async with open_heartbeat_timer(tick=0.1) as timer:
        hooks = Hooks()
        channel = timer.open_channel(Role.CONSUMER, hooks, Messages(), timing=ChannelTiming(2.0))
        for _ in range(30):
            await trio.sleep(1.0)
            channel.read()
            channel.wrote()
        assert hooks.sent == [] and hooks.closed == []
        channel.close("done")
        assert channel.state is ChannelState.CLOSED and channel.closed_reason == "done"
        assert len(timer) == 0


async def test_a_failing_hook_closes_only_its_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A framework hook that raises closes that channel; the timer keeps serving the rest."""
    async with open_heartbeat_timer(tick=0.1) as timer:
        bad, good = Hooks(fail=True), Hooks()
        broken = timer.open_channel(Role.PROVIDER, bad, Messages(), timing=ChannelTiming(1.0))
        healthy = timer.open_channel(Role.PROVIDER, good, Messages(), timing=ChannelTiming(1.0))
        await trio.sleep(1.5)
        assert broken.state is ChannelState.CLOSED
        assert broken.closed_reason is not None and "framework bug" in broken.closed_reason
        await trio.sleep(1.0)
        assert len(good.sent) == 2 and healthy.state is not ChannelState.CLOSED


async def test_an_earlier_deadline_wakes_the_sleeping_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A short-heartbeat channel is served on time while the timer sleeps towards a far deadline."""
    async with open_heartbeat_timer(tick=0.1) as timer:
        slow = Hooks()
        timer.open_channel(Role.PROVIDER, slow, Messages(), timing=ChannelTiming(100.0))
        await trio.sleep(1.0)
        fast = Hooks()
        timer.open_channel(Role.PROVIDER, fast, Messages(), timing=ChannelTiming(2.0))
        await trio.sleep(2.5)
        assert [round(t, 1) for t, _ in fast.sent] == [3.0]
        assert timer.wakeups <= 3


async def test_reconnect_loop_backs_off_and_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed connects wait the backoff's delays; a lost session is reconnected."""
    attempts: list[float] = []
    sessions: list[float] = []
    reconnects: list[Reconnect] = []

    async def connect() -> str:
        attempts.append(trio.current_time())
        if len(attempts) <= 2:
            raise OSError(errno.ECONNREFUSED, "refused")
        return "conn"

    async def session(conn: str) -> None:
        sessions.append(trio.current_time())
        await trio.sleep(1.0)
        raise ConnectionClosed("peer went away")

    backoff = Backoff(0.5, 8.0, 2.0, Jitter.NONE, max_attempts=5)
    with pytest.raises(ReconnectGaveUp, match="peer went away"):
        await reconnect_loop(connect, session, backoff=backoff, on_reconnect=reconnects.append)
    assert [r.delay for r in reconnects] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert attempts[:3] == pytest.approx([0.0, 0.5, 1.5])
    assert len(sessions) == 4


async def test_a_tick_too_coarse_for_the_heartbeat_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A wheel tick not shorter than the heartbeat would fake local pauses: ValueError."""
    async with open_heartbeat_timer(tick=1.0) as timer:
        with pytest.raises(ValueError, match="tick"):
            timer.open_channel(Role.CONSUMER, Hooks(), Messages(), timing=ChannelTiming(0.5))
        assert len(timer) == 0
