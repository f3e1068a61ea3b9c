"""A pulse gossip member in a cluster of real Serf agents on loopback (memberlist LAN defaults)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio

from pulse._core.swim import MemberEvent, MemberEventKind
from pulse.plugins.gossip.driver import GossipMember, gossip_member, tags_of

from ._serf import SerfAgent, free_port, require_serf

pytestmark = pytest.mark.e2e

require_serf()


@pytest.fixture
def cluster() -> Iterator[tuple[SerfAgent, SerfAgent]]:
    s1 = SerfAgent("serf-1", {"role": "db", "dc": "loop"})
    agents = [s1]
    try:
        s1.wait_ready()
        s2 = SerfAgent("serf-2", {"role": "web"}, join=s1.addr)
        agents.append(s2)
        s2.wait_ready()
        yield s1, s2
    finally:
        for agent in agents:
            agent.stop()


async def _wait_serf_status(agent: SerfAgent, name: str, status: str,
                            tags: dict[str, str] | None = None) -> None:
    while True:
        member = (await agent.members()).get(name)
        if member is not None and member["status"] == status and (tags is None or member["tags"] == tags):
            return
        await trio.sleep(0.1)


async def _wait_pulse_sees(member: GossipMember, names: set[str]) -> None:
    while True:
        if names <= {m.name for m in member.members()}:
            return
        await trio.sleep(0.05)


async def _first(events: list[MemberEvent], kind: MemberEventKind, name: str) -> MemberEvent:
    while True:
        for event in events:
            if event.kind == kind and event.member.name == name:
                return event
        await trio.sleep(0.05)


async def _collect(member: GossipMember, into: list[MemberEvent]) -> None:
    async for event in member.events():
        into.append(event)


async def test_pulse_member_joins_serf_cluster_and_both_sides_list_everyone_with_tags(
        cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """pulse lists both serf agents alive with their tags; both agents list pulse alive with its tags,
    and a tag update reaches them."""
    s1, s2 = cluster
    async with gossip_member(("127.0.0.1", 0), "pulse-1", tags={"role": "pulse", "zone": "z1"},
                             join=[s1.addr]) as member:
        with trio.fail_after(15):
            await _wait_pulse_sees(member, {"serf-1", "serf-2", "pulse-1"})
        seen = {m.name: m for m in member.members()}
        assert tags_of(seen["serf-1"]) == {"role": "db", "dc": "loop"}
        assert tags_of(seen["serf-2"]) == {"role": "web"}
        assert seen["serf-2"].addr == s2.addr
        with trio.fail_after(15):
            for agent in (s1, s2):
                await _wait_serf_status(agent, "pulse-1", "alive", {"role": "pulse", "zone": "z1"})
        listed = await s2.members()
        assert listed["pulse-1"]["addr"] == f"127.0.0.1:{member.addr[1]}"
        assert listed["pulse-1"]["protocol"]["version"] == 5
        await member.update_tags({"role": "pulse", "zone": "z2"})
        with trio.fail_after(10):
            for agent in (s1, s2):
                await _wait_serf_status(agent, "pulse-1", "alive", {"role": "pulse", "zone": "z2"})


async def test_pulse_compresses_towards_serf_and_serf_understands(
        cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """Serf compresses its packets (memberlist's EnableCompression), so pulse compresses towards
    both agents; a tag update that travels only in compressed gossip reaches both of them."""
    s1, s2 = cluster
    async with gossip_member(("127.0.0.1", 0), "pulse-z", tags={"role": "pulse"},
                             join=[s1.addr]) as member:
        with trio.fail_after(15):
            await _wait_pulse_sees(member, {"serf-1", "serf-2", "pulse-z"})
            while not (member.compresses(s1.addr) and member.compresses(s2.addr)):  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert member.counters.packets_compressed_in > 0
        before = member.counters.packets_compressed_out
        blob = "pulse-" * 40  # repetitive: the gossiped alive is much smaller compressed
        await member.update_tags({"role": "pulse", "blob": blob})
        # Push-pull runs every 30 s; within 10 s only the (compressed) UDP gossip carries it.
        with trio.fail_after(10):
            for agent in (s1, s2):
                await _wait_serf_status(agent, "pulse-z", "alive", {"role": "pulse", "blob": blob})
        assert member.counters.packets_compressed_out > before


async def test_sigstopped_serf_agent_is_marked_failed_by_pulse(cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """A SIGSTOPped serf agent becomes suspect, then failed, in pulse (and failed in the other agent)."""
    s1, s2 = cluster
    events: list[MemberEvent] = []
    async with gossip_member(("127.0.0.1", 0), "pulse-1", join=[s1.addr]) as member, \
            trio.open_nursery() as nursery:
        nursery.start_soon(_collect, member, events)
        with trio.fail_after(15):
            await _wait_pulse_sees(member, {"serf-1", "serf-2"})
            await _wait_serf_status(s2, "pulse-1", "alive")
        s2.pause()
        stopped = trio.current_time()
        with trio.fail_after(30):
            failed = await _first(events, MemberEventKind.FAILED, "serf-2")
            await _wait_serf_status(s1, "serf-2", "failed")
        assert failed.at - stopped < 30
        assert "serf-2" not in {m.name for m in member.members()}
        # A suspicion preceded the failure (unless serf-1's verdict reached us first).
        kinds = [e.kind for e in events if e.member.name == "serf-2"]
        assert MemberEventKind.FAILED in kinds
        nursery.cancel_scope.cancel()


async def test_serf_agent_that_leaves_shows_as_left_in_pulse(cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """``serf leave`` on an agent gives pulse a left event (not failed) for it."""
    s1, s2 = cluster
    events: list[MemberEvent] = []
    async with gossip_member(("127.0.0.1", 0), "pulse-1", join=[s1.addr]) as member, \
            trio.open_nursery() as nursery:
        nursery.start_soon(_collect, member, events)
        with trio.fail_after(15):
            await _wait_pulse_sees(member, {"serf-1", "serf-2"})
        await s2.leave()
        with trio.fail_after(15):
            left = await _first(events, MemberEventKind.LEFT, "serf-2")
        assert left.member.name == "serf-2"
        assert not any(e.kind == MemberEventKind.FAILED and e.member.name == "serf-2" for e in events)
        nursery.cancel_scope.cancel()


async def test_pulse_member_that_leaves_shows_as_left_in_serf(cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """A pulse member leaving its block shows as left (not failed) in serf."""
    s1, s2 = cluster
    async with gossip_member(("127.0.0.1", 0), "pulse-1", join=[s1.addr]):
        with trio.fail_after(15):
            await _wait_serf_status(s2, "pulse-1", "alive")
    with trio.fail_after(15):
        await _wait_serf_status(s2, "pulse-1", "left")
        await _wait_serf_status(s1, "pulse-1", "left")


def _member_process(name: str, port: int, join: tuple[str, int]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "member", "--listen", f"gossip://127.0.0.1:{port}",
         "--name", name, "--join", f"{join[0]}:{join[1]}", "--tag", "kind=proc", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigkilled_pulse_member_is_marked_failed_by_serf(cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """A pulse member process killed with SIGKILL (no leave) is marked failed by both serf agents."""
    s1, s2 = cluster
    proc = _member_process("pulse-proc", free_port(), s1.addr)
    try:
        with trio.fail_after(15):
            await _wait_serf_status(s2, "pulse-proc", "alive", {"kind": "proc"})
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        with trio.fail_after(30):
            await _wait_serf_status(s1, "pulse-proc", "failed")
            await _wait_serf_status(s2, "pulse-proc", "failed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_presence_session_sees_serf_tags_that_are_paths(cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """A gossip presence session lists a serf agent's path-like tags as registrations, and serf
    lists the session's registrations as tags."""
    from pulse.registry import connect_session

    s1, _ = cluster
    extra = SerfAgent("serf-svc", {"/svc/db": "primary"}, join=s1.addr)
    try:
        extra.wait_ready()
        async with connect_session(f"gossip://127.0.0.1:{s1.port}", session_timeout=5.0,
                                   name="pulse-presence") as session:
            await session.register("/svc/web", b"up")
            with trio.fail_after(15):
                while await session.list("/svc") != {"db": b"primary", "web": b"up"}:  # noqa: ASYNC110
                    await trio.sleep(0.1)
                await _wait_serf_status(s1, "pulse-presence", "alive", {"/svc/web": "up"})
    finally:
        extra.stop()


async def test_plugin_ping_gets_acks_from_a_serf_agent(cluster: tuple[SerfAgent, SerfAgent]) -> None:
    """The gossip:// plugin's ping measures round trips to a serf agent (memberlist acks)."""
    from pulse.registry import PingOptions, ping_function

    s1, _ = cluster
    endpoint, ping = ping_function(f"gossip://127.0.0.1:{s1.port}")
    replies = []
    with trio.fail_after(10):
        async for reply in ping(endpoint, PingOptions(interval=0.05, timeout=2.0, count=3)):
            replies.append(reply)
    assert [r.seq for r in replies] == [1, 2, 3]
    assert all(0 < r.rtt < 2.0 for r in replies)
