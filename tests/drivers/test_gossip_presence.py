"""Presence over gossip in virtual time: registrations as tags, seen by the other members."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
import trio.testing

from pulse._driver.engine import current_engine
from pulse.errors import KeyExists, LocalProtocolError, NotOwner, SessionClosed
from pulse.plugins.gossip.driver import gossip_member
from pulse.plugins.gossip.presence import GossipSession, config_for_timeout, connect_gossip_session
from pulse.presence import PresenceEvent, SessionState
from pulse.registry import Endpoint


def _endpoint(addr: tuple[str, int]) -> Endpoint:
    return Endpoint("gossip", (addr,), raw=f"gossip://{addr[0]}:{addr[1]}")


async def _collect(session: GossipSession, prefix: str, into: list[PresenceEvent]) -> None:
    async for event in session.watch(prefix):
        into.append(event)


async def _until(events: list[PresenceEvent], kind: str, name: str) -> float:
    while True:
        if any((e.event, e.id) == (kind, name) for e in events):
            return trio.current_time()
        await trio.sleep(0.01)


def test_timing_follows_the_session_timeout() -> None:
    """The probe period is a fifth of the session timeout, the probe timeout half of that."""
    cfg = config_for_timeout(5.0)
    assert (cfg.probe_interval, cfg.probe_timeout) == (1.0, 0.5)
    with pytest.raises(ValueError):
        config_for_timeout(0)


async def test_binary_data_round_trips_and_ownership_is_enforced(
        autojump_clock: trio.testing.MockClock) -> None:
    """Non-UTF-8 data arrives intact at another member; its owner's key cannot be taken there."""
    async with gossip_member(("127.0.0.1", 0), "seed", config=config_for_timeout(1.0)) as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=1.0) as one, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=1.0) as two:
        await one.register("/svc/a", b"\xff\x00\x80")
        await trio.sleep(1)
        assert await two.get("/svc/a") == b"\xff\x00\x80"
        assert await two.list("/svc") == {"a": b"\xff\x00\x80"}
        with pytest.raises(KeyExists):
            await two.register("/svc/a", b"mine")
        with pytest.raises(NotOwner):
            await two.unregister("/svc/a")
        await one.unregister("/svc/a")
        await trio.sleep(1)
        assert await two.get("/svc/a") is None


async def test_registrations_beyond_the_meta_limit_are_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    """All registrations travel in 512 bytes of metadata: more raises LocalProtocolError."""
    async with gossip_member(("127.0.0.1", 0), "seed") as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=1.0) as session:
        await session.register("/big/a", b"x" * 300)
        with pytest.raises(LocalProtocolError):
            await session.register("/big/b", b"y" * 300)
        assert await session.list("/big") == {"a": b"x" * 300}


async def test_hung_member_goes_offline_for_watchers(autojump_clock: trio.testing.MockClock) -> None:
    """A member that stops answering goes offline after SWIM's detection (about 1-3 timeouts)."""
    events: list[PresenceEvent] = []
    # No TCP fallback pings: the hung member's listener task would still answer them here.
    cfg = replace(config_for_timeout(1.0), tcp_pings=False)
    async with gossip_member(("127.0.0.1", 0), "seed", config=cfg) as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=1.0, config=cfg) as observer, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=1.0, config=cfg) as victim, \
            trio.open_nursery() as nursery:
        await victim.register("/p/victim", b"v")
        nursery.start_soon(_collect, observer, "/p", events)
        await _until(events, "online", "victim")
        engine = current_engine()
        engine.remove_reader(victim.member._udp)  # the victim hears nothing from now on
        engine.forget(victim.member)
        hung = trio.current_time()
        with trio.fail_after(10):
            gone = await _until(events, "offline", "victim")
        assert 0.3 < gone - hung <= 3.0
        nursery.cancel_scope.cancel()


async def test_closed_session_refuses_calls_and_reports_closed(
        autojump_clock: trio.testing.MockClock) -> None:
    """After aclose the state is CLOSED and calls raise SessionClosed."""
    async with gossip_member(("127.0.0.1", 0), "seed") as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=1.0) as session:
        await session.aclose()
        assert session.state is SessionState.CLOSED
        with pytest.raises(SessionClosed):
            await session.register("/x/y", b"")
