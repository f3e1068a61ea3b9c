"""A heartbeat connection after a local pause (virtual time): the first application write
waits for a heartbeat answered after the pause, never goes into a connection that turned
out dead, and never deadlocks against an application that is behind on reading."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse._core.policy import HeartbeatPolicy
from pulse._driver.connection import heartbeat
from pulse.actions import Action, LocalPause
from pulse.errors import ConnectionClosed
from pulse.frames import PROTOCOL_VERSION, Data, FrameDecoder, Hello, encode_frame
from pulse.testing import heartbeat_pair

POLICY = HeartbeatPolicy(1.0, 3.0)


async def test_a_live_peer_gets_the_message_after_one_round_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a minute-long pause the send goes out on the same connection once the peer
    answered the heartbeat sent after the pause; the pause is reported, not a failure."""
    actions: list[Action] = []
    async with heartbeat_pair(POLICY, POLICY, on_liveness=actions.append) as (conn, theirs):
        await trio.sleep(0.5)
        autojump_clock.jump(60)
        await conn.send("after")
        assert await theirs.receive() == "after"
        assert not conn.closed and not theirs.closed
        assert [a for a in actions if isinstance(a, LocalPause)]


async def test_nothing_is_written_into_a_connection_that_went_silent_during_the_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The peer answers nothing after the pause: the send fails with ConnectionClosed once
    the verdict falls (one interval after the pause), and its message never hit the wire."""
    left, right = trio.testing.memory_stream_pair()
    seen = bytearray()

    async def mute_peer() -> None:
        await right.send_all(encode_frame(Hello(PROTOCOL_VERSION, 1.0, 3.0, "mute")))
        while chunk := await right.receive_some(65536):
            seen.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mute_peer)
        with pytest.raises(ConnectionClosed):
            async with heartbeat(left, POLICY) as conn:
                autojump_clock.jump(60)
                start = trio.current_time()
                with pytest.raises(ConnectionClosed):
                    await conn.send("into the void")
                assert trio.current_time() - start <= POLICY.interval + 0.1
                await conn.receive()
        nursery.cancel_scope.cancel()
    frames = FrameDecoder().feed(bytes(seen))
    assert not [f for f in frames if isinstance(f, Data)]


async def test_an_application_behind_on_reading_does_not_deadlock_its_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The peer filled our receive queue and the read bound while we were paused, so no
    pong can be read: the send after the pause goes ahead instead of waiting forever."""
    async with heartbeat_pair(POLICY, POLICY, receive_buffer=4, hold_limit=8_000) as (
        conn, theirs,
    ):
        for i in range(200):
            await theirs.send(b"x" * 1000 + str(i).encode())
        await trio.sleep(0.5)  # our reader stopped: the application is behind
        autojump_clock.jump(60)
        with trio.fail_after(5):
            await conn.send("still goes out")
            assert await theirs.receive() == "still goes out"
