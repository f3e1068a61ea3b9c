"""pulse.election on lease sessions over in-memory links, in virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from pulse.election import Leadership, LeadershipLost, election
from pulse.plugins.lease.client import connect
from pulse.plugins.lease.protocol import Connect, Register, Request
from pulse.plugins.lease.server import LeaseServer, ServerConfig

from ._lease_harness import Link, Network

S1 = ("s1", 1)
T = 3.0
PATH = "/pulse/leader/job"


async def test_first_candidate_leads_and_a_resignation_hands_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first candidate leads; the second waits; when the first body ends the second leads
    with a larger token."""
    log: list[tuple[str, int, float]] = []
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)
        first_leads = trio.Event()

        async def candidate(name: str, hold: float) -> None:
            async with (connect([S1], T, open_stream=net.open_stream) as session,
                        election(session, PATH, id=name) as leadership):
                log.append((name, leadership.token, trio.current_time()))
                if name == "a":
                    first_leads.set()
                await trio.sleep(hold)

        nursery.start_soon(candidate, "a", 5.0)
        await first_leads.wait()
        nursery.start_soon(candidate, "b", 1.0)
        await trio.sleep(20.0)
        nursery.cancel_scope.cancel()
    assert [name for name, _, _ in log] == ["a", "b"]
    assert log[1][1] > log[0][1]
    assert log[1][2] >= log[0][2] + 5.0


async def test_cut_leader_stops_before_the_standby_is_elected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A leader whose link is cut has its body cancelled (LeadershipLost) before the server
    expires its session, hence before the standby's body starts."""
    times: dict[str, float] = {}
    cut = False
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)
        leading = trio.Event()

        async def leader_stream(host: str, port: int) -> trio.abc.Stream:
            if cut:  # the cable stays out: every new connection is a black hole too
                await trio.lowlevel.checkpoint()
                link = Link(trio.testing.memory_stream_pair()[0])
                link.cut()
                return link
            return await net.open_stream(host, port)

        async def leader() -> None:
            async with connect([S1], T, open_stream=leader_stream) as session:
                with pytest.raises(LeadershipLost):
                    async with election(session, PATH, id="a"):
                        leading.set()
                        try:
                            await trio.sleep_forever()
                        finally:
                            times["a_stopped"] = trio.current_time()
                await trio.sleep_forever()

        async def standby() -> None:
            net.client_address = "10.0.0.2"
            async with (connect([S1], T, open_stream=net.open_stream) as session,
                        election(session, PATH, id="b") as leadership):
                times["b_started"] = trio.current_time()
                times["b_token"] = leadership.token
                await trio.sleep_forever()

        nursery.start_soon(leader)
        await leading.wait()
        nursery.start_soon(standby)
        await trio.sleep(2.0)
        cut_at = trio.current_time()
        cut = True
        net.links[0].cut()
        await trio.sleep(3 * T)
        nursery.cancel_scope.cancel()
    assert times["a_stopped"] <= cut_at + T * 2 / 3 + 0.1
    assert times["b_started"] >= cut_at + T  # the server waited out the whole timeout
    assert times["b_started"] > times["a_stopped"] + T / 3 - T / 6 - 0.1


async def test_leadership_exposes_safe_until_and_confirms_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While leading, safe_until keeps moving forward with the T/6 confirmations and stays
    within T - margin of now."""
    seen: list[float] = []
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)
        async with (connect([S1], T, open_stream=net.open_stream) as session,
                    election(session, PATH, id="a") as leadership):
            assert isinstance(leadership, Leadership)
            leadership.on_confirmed = seen.append
            for _ in range(10):
                await trio.sleep(1.0)
                safe = leadership.safe_until
                assert safe is not None
                assert trio.current_time() < safe <= trio.current_time() + 2.0
        nursery.cancel_scope.cancel()
    assert len(seen) >= 15 and seen == sorted(seen)


async def test_sequence_never_goes_back_after_a_restart_from_the_journal(
    tmp_path: Path,
) -> None:
    """A server restarted on its data directory continues above the last number it issued,
    even with a wall clock that went back to zero."""
    config = ServerConfig(data_dir=str(tmp_path))
    first = LeaseServer(config, wall_clock=lambda: 0.0)
    assert first.state.sequence == 0
    assert first.store is not None
    a, _, _ = first.state.connect(_connect(), "10.0.0.1", 0.0, 1e9)
    result = first.state.handle(a.id, Request(1, Register("/e/a-", sequential=True)), 1.0).result
    assert result["sequence"] == 1
    first.state.handle(a.id, Request(2, Register("/e/a-", sequential=True)), 1.0)
    first.store.close()
    again = LeaseServer(config, wall_clock=lambda: 0.0)
    assert again.state.sequence == 2
    wall = LeaseServer(ServerConfig(), wall_clock=lambda: 1234.5678)
    assert wall.state.sequence == 1234567


def _connect() -> Connect:
    return Connect(60.0)


async def test_waiting_candidate_whose_session_expires_gets_a_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A standby cut off while waiting leaves ``election`` with a PulseError (not an
    exception group) once its session expires, and never runs its body."""
    from pulse.errors import PulseError

    outcome: list[BaseException] = []
    ran: list[str] = []
    cut = False

    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)

        async def standby_stream(host: str, port: int) -> trio.abc.Stream:
            if cut:
                await trio.lowlevel.checkpoint()
                link = Link(trio.testing.memory_stream_pair()[0])
                link.cut()
                return link
            return await net.open_stream(host, port)

        async def leader() -> None:
            async with (connect([S1], T, open_stream=net.open_stream) as session,
                        election(session, PATH, id="a")):
                await trio.sleep_forever()

        async def standby() -> None:
            async with connect([S1], T, open_stream=standby_stream) as session:
                try:
                    async with election(session, PATH, id="b"):
                        ran.append("b")
                except PulseError as exc:
                    outcome.append(exc)

        nursery.start_soon(leader)
        await trio.sleep(1.0)
        nursery.start_soon(standby)
        await trio.sleep(1.0)
        cut = True
        net.links[-1].cut()
        await trio.sleep(4 * T)
        nursery.cancel_scope.cancel()
    assert ran == []
    assert len(outcome) == 1 and isinstance(outcome[0], PulseError)


async def test_a_candidate_follows_its_predecessor_past_a_withdrawal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a, b, c in line, b withdrawing makes c wait on a; when a resigns, c leads."""
    led: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, tick=0.5)

        async def candidate(name: str, hold: float) -> None:
            async with (connect([S1], T, open_stream=net.open_stream) as session,
                        election(session, PATH, id=name)):
                led.append((name, trio.current_time()))
                await trio.sleep(hold)

        nursery.start_soon(candidate, "a", 10.0)
        await trio.sleep(1.0)
        b_scope = trio.CancelScope()

        async def withdrawing_b() -> None:
            with b_scope:
                await candidate("b", 1.0)

        nursery.start_soon(withdrawing_b)
        await trio.sleep(1.0)
        nursery.start_soon(candidate, "c", 1.0)
        await trio.sleep(1.0)
        b_scope.cancel()  # b withdraws while a still leads: c now waits on a
        await trio.sleep(20.0)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in led] == ["a", "c"]
    assert led[1][1] >= led[0][1] + 10.0
