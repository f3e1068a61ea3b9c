"""The election's per-key watch on a real lease server (in-memory links, virtual time): a
leader's death notifies exactly one candidate, its successor — counted on the server (events
queued per session) and in the clients (watch events that reached each candidacy); without
``watch_key`` (another backend, or a server that predates it) every candidate is notified
and the election still hands over in order."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import pulse.plugins.lease.server as lease_server
from pulse.election import LeadershipLost, election
from pulse.plugins.lease.client import connect
from pulse.plugins.lease.protocol import BadRequest, parse_request
from pulse.presence import PresenceEvent
from tests._counting_session import Counting

from ._lease_harness import Link, Network

S1 = ("s1", 1)
T = 3.0
PATH = "/pulse/leader/job"


def predating_watch_key(message: object) -> Any:
    """The lease server's request parser as a server that predates ``watch_key`` has it: that
    request is a bad request, "unknown operation"."""
    if isinstance(message, list) and len(message) == 5 and message[3] == "watch_key":
        raise BadRequest("unknown operation 'watch_key'", message[1])
    return parse_request(message)


async def _on_a_server(candidates: int, *, key_watch: bool
                       ) -> tuple[list[str], list[int], list[int]]:
    """:func:`_leader_dies` on a fresh lease server."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)
        result = await _leader_dies(net, candidates, key_watch=key_watch)
        nursery.cancel_scope.cancel()
    return result


async def _leader_dies(net: Network, candidates: int, *, key_watch: bool
                       ) -> tuple[list[str], list[int], list[int]]:
    """``candidates`` line up; the leader's cable is cut until its session expires. Returns
    who led in order, and per follower (in line order) the server-side events queued to its
    session and the client-side wake-ups, from the cut until the successor leads."""
    led: list[str] = []
    sessions: dict[str, Counting] = {}
    leader_links: list[Link] = []
    cut = False
    successor_leads = trio.Event()

    async def leader_stream(host: str, port: int) -> trio.abc.Stream:
        if cut:
            await trio.lowlevel.checkpoint()
            link = Link(trio.testing.memory_stream_pair()[0])
            link.cut()
            return link
        stream = await net.open_stream(host, port)
        assert isinstance(stream, Link)
        leader_links.append(stream)
        return stream

    async def candidate(name: str) -> None:
        opener = leader_stream if name == "c0" else net.open_stream
        async with connect([S1], T, open_stream=opener) as raw:
            session = Counting(raw, key_watch=key_watch)
            sessions[name] = session
            try:
                async with election(session, PATH, id=name):
                    led.append(name)
                    if name == "c1":
                        successor_leads.set()
                    await trio.sleep_forever()
            except LeadershipLost:  # the cut leader
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for i in range(candidates):
            nursery.start_soon(candidate, f"c{i}")
            await trio.sleep(0.5)  # line up in order
        await trio.sleep(2.0)
        followers = [f"c{i}" for i in range(1, candidates)]
        state = net.server(S1).state
        ids: dict[str, int] = {}
        for name in followers:
            sid = sessions[name].inner.session_id
            assert sid is not None
            ids[name] = sid
        seq_before = {name: state.sessions[ids[name]].next_seq for name in followers}
        woken_before = {name: len(sessions[name].woken) for name in followers}
        cut = True
        for link in leader_links:
            link.cut()
        with trio.fail_after(3 * T):
            await successor_leads.wait()
        await trio.sleep(1.0)
        queued = [state.sessions[ids[n]].next_seq - seq_before[n] for n in followers]
        woken = [len(sessions[n].woken) - woken_before[n] for n in followers]
        nursery.cancel_scope.cancel()
    return led, queued, woken


@pytest.mark.parametrize("candidates", [3, 5])
async def test_a_leaders_death_notifies_only_its_successor(
    autojump_clock: trio.testing.MockClock, candidates: int,
) -> None:
    """With per-key watches the expiry of the leader's session queues one event on the
    server and wakes one candidacy: the successor's; no other candidate hears of it."""
    led, queued, woken = await _on_a_server(candidates, key_watch=True)
    assert led == ["c0", "c1"]
    assert queued == [1] + [0] * (candidates - 2)
    assert woken == [1] + [0] * (candidates - 2)


async def test_without_key_watches_every_candidate_is_notified(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The prefix-watch fallback (a session without ``watch_key``) hands over in order too,
    but the leader's death reaches every candidate (what the per-key watch avoids)."""
    led, queued, woken = await _on_a_server(4, key_watch=False)
    assert led == ["c0", "c1"]
    assert queued == [1, 1, 1]
    assert woken == [1, 1, 1]


async def test_a_server_without_watch_key_falls_back_to_the_prefix_watch(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that answers watch_key with "unknown operation" (one that predates it) is
    handled: the candidacies fall back to the prefix watch and the successor still leads."""

    monkeypatch.setattr(lease_server, "parse_request", predating_watch_key)
    led, queued, woken = await _on_a_server(3, key_watch=True)
    assert led == ["c0", "c1"]
    assert queued == [1, 1] and woken == [1, 1]


async def test_key_watch_stream_reports_existence_then_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """LeaseSession.watch_key: first whether the key exists (initial), then its departure and
    return; a sibling's changes are not reported."""
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)
        async with (connect([S1], T, open_stream=net.open_stream) as owner,
                    connect([S1], T, open_stream=net.open_stream) as watcher):
            await owner.register("/p/a", b"1")
            seen: list[PresenceEvent] = []
            async with watcher.watch_key("/p/a") as events, watcher.watch_key("/p/b") as other:
                seen.append(await events.__anext__())
                seen.append(await other.__anext__())
                await owner.register("/p/b", b"2")
                seen.append(await other.__anext__())
                await owner.unregister("/p/a")
                seen.append(await events.__anext__())
                await owner.register("/p/a", b"3")
                seen.append(await events.__anext__())
        nursery.cancel_scope.cancel()
    assert seen == [PresenceEvent("online", "a", b"1", initial=True),
                    PresenceEvent("offline", "b", initial=True),
                    PresenceEvent("online", "b", b"2"),
                    PresenceEvent("offline", "a"),
                    PresenceEvent("online", "a", b"3")]
