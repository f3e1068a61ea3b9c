"""Leader election on gossip sessions in virtual time: one leader among three, a release
hands over at once with a larger token, and the options a gossip election needs."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from pulse.election import LeadershipLost, election
from pulse.plugins.gossip.driver import gossip_member
from pulse.plugins.gossip.presence import GossipSession, config_for_timeout, connect_gossip_session
from pulse.registry import Endpoint

PATH = "/pulse/leader/test"
T = 1.0


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for members that talk over real loopback UDP: the clock jumps only after
    20 ms of real idleness, so a datagram still in the kernel is read before time moves on
    (with a threshold of 0, or 10 ms on a loaded CI machine, a gossip round could look
    lost)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


def _endpoint(addr: tuple[str, int]) -> Endpoint:
    return Endpoint("gossip", (addr,), raw=f"gossip://{addr[0]}:{addr[1]}")


async def test_three_candidates_take_turns_without_overlap(
        loopback_clock: trio.testing.MockClock) -> None:
    """Three candidates (expect=3), each standing again after its turn: one leads at a time;
    each leader that ends its body releases, and the next one leads in less than a lease
    (gossip rounds: 0.16–0.52 s here, against the 1 s a lapsed lease would take) with a
    larger token."""
    runs: list[tuple[str, int, float, float]] = []
    leading: list[str] = []
    wanted = 5

    async def candidate(session: GossipSession, name: str) -> None:
        while len(runs) < wanted:
            async with election(session, PATH, id=name, expect=3) as leadership:
                assert not leading, f"{name} leads while {leading} does"
                leading.append(name)
                start = trio.current_time()
                await trio.sleep(2 * T)
                leading.remove(name)
                runs.append((name, leadership.token, start, trio.current_time()))
        done.cancel()  # the others are still waiting to lead

    done = trio.CancelScope()
    async with gossip_member(("127.0.0.1", 0), "seed", config=config_for_timeout(T)) as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as a, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as b, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as c:
        begin = trio.current_time()
        with trio.fail_after(60), done:
            async with trio.open_nursery() as nursery:
                for session, name in ((a, "a"), (b, "b"), (c, "c")):
                    nursery.start_soon(candidate, session, name)
    runs.sort(key=lambda r: r[2])
    assert len(runs) >= wanted and len({r[0] for r in runs}) >= 2, runs
    assert runs[0][2] - begin <= T + 1.0  # the first lease, then a few gossip rounds
    for before, after in itertools.pairwise(runs):
        assert after[1] > before[1], runs
        assert after[2] >= before[3], runs
        # The release frees the voters at once: the hand-over takes gossip rounds, not a
        # lease.
        assert after[2] - before[3] < T, runs


async def test_a_gossip_election_needs_expect(autojump_clock: trio.testing.MockClock) -> None:
    """Without expect=N, or with data, or with an id the ballot cannot carry: ValueError."""
    async with gossip_member(("127.0.0.1", 0), "seed", config=config_for_timeout(T)) as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as session:
        for kwargs in ({}, {"expect": 3, "data": b"x"}, {"expect": 0}):
            with pytest.raises(ValueError):
                async with election(session, PATH, id="a", **kwargs):
                    pass
        with pytest.raises(ValueError):
            async with election(session, PATH, id="a:b", expect=1):
                pass
        assert await session.list(PATH) == {}


async def test_a_lone_candidate_of_three_never_leads(
        autojump_clock: trio.testing.MockClock) -> None:
    """One candidate where three are expected has no majority: it waits (here 5 leases)."""
    async with gossip_member(("127.0.0.1", 0), "seed", config=config_for_timeout(T)) as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as session:
        with trio.move_on_after(5 * T) as waited:
            async with election(session, PATH, id="a", expect=3):
                raise AssertionError("led without a majority")
        assert waited.cancelled_caught
        await trio.sleep(T)
        assert await session.list(PATH) == {}  # the tag went with the candidacy


async def test_leadership_ends_in_doubt_when_the_voters_go(
        autojump_clock: trio.testing.MockClock) -> None:
    """expect=2: when the second candidate's session closes, the leader's body is cancelled
    within the lease and LeadershipLost is raised."""
    async with gossip_member(("127.0.0.1", 0), "seed", config=config_for_timeout(T)) as seed, \
            connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as a:
        lost = trio.Event()
        led = trio.Event()
        ended: list[float] = []

        async def lead() -> None:
            with pytest.raises(LeadershipLost):
                async with election(a, PATH, id="a", expect=2):
                    led.set()
                    try:
                        await trio.sleep_forever()
                    finally:
                        ended.append(trio.current_time())
            lost.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lead)
            async with connect_gossip_session(_endpoint(seed.addr), session_timeout=T) as b:

                async def stand() -> None:
                    async with election(b, PATH, id="b", expect=2):
                        await trio.sleep_forever()

                async with trio.open_nursery() as inner:
                    inner.start_soon(stand)
                    with trio.fail_after(10):
                        await led.wait()
                    await trio.sleep(3 * T)  # it keeps leading while b renews
                    assert not lost.is_set()
                    inner.cancel_scope.cancel()
            gone = trio.current_time()
            with trio.fail_after(10):
                await lost.wait()
            assert ended and ended[0] - gone <= T
