"""The lease server survives its own stall: no session expires because the loop was paused."""

from __future__ import annotations

import trio
import trio.testing

from pulse.plugins.lease.server import ServerConfig

from ._lease_harness import Network, Raw


async def stall_then_ping(config: ServerConfig, clock: trio.testing.MockClock) -> tuple[bool, int]:
    """Open a 2 s session, renew it, stall the whole process 1.5 s across its expiry, then
    deliver the renewal that was "sitting in the socket" a moment after the stall."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        server = await net.start(config=config)
        raw = Raw(await net.open_stream("s1", 1))
        reply = await raw.call("connect", {"timeout": 2.0})
        assert reply.error is None
        await trio.sleep(1.0)
        assert (await raw.call("ping")).error is None  # touched at 1.0: expires at 4.0 (tick 1)
        await trio.sleep(1.9)  # t = 2.9
        clock.jump(1.5)  # the loop is stopped from 2.9 to 4.4, across the expiry at 4.0
        await trio.sleep(0.05)  # the expiry check runs before the reader gets to the ping
        alive = False
        try:
            xid = await raw.request("ping")
            with trio.move_on_after(1.0):
                response = await raw.response(xid)
                alive = not raw.notices and response.error is None
        except (trio.BrokenResourceError, EOFError):
            pass  # the server expired the session and closed the connection
        nursery.cancel_scope.cancel()
        return alive, server.state.tracker.stalls


async def test_stall_shorter_than_timeout_expires_no_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 1.5 s stall of the server with a 2 s session: the late renewal is still accepted."""
    alive, stalls = await stall_then_ping(ServerConfig(tick=1.0), autojump_clock)
    assert alive
    assert stalls == 1


async def test_without_guard_the_stall_expires_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Control: with the guard disabled the same stall expires the session (what ZooKeeper does)."""
    alive, _ = await stall_then_ping(ServerConfig(tick=1.0, pause_guard=False), autojump_clock)
    assert not alive
