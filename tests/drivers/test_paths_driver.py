"""redundant_paths(): per-path heartbeats and reconnects, one verdict, in virtual time."""

from __future__ import annotations

import errno
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

import pulse
from pulse._core.backoff import Backoff, Jitter
from pulse._core.lossy import TcpProgress
from pulse._driver.paths import _Route, _watch
from pulse._driver.pinger import ping_series
from pulse.actions import PathAction, PathDown, PathUp, PeerAlive, PeerDead
from pulse.errors import NoPlugin, PeerTimeout
from pulse.paths import PathState, PeerVerdict, RedundantPaths, redundant_paths
from pulse.registry import Endpoint, PingFn, PingOptions, PingReply, parse_url

A = "tcp://10.0.1.2:7000"
B = "tcp://10.0.2.2:7000"
RESOLUTION = 0.02   # the engine's deadline step


@dataclass
class Link:
    """One simulated path: answers after ``rtt`` unless cut (silence) or refusing."""

    rtt: float = 0.01
    cut: bool = False
    refuse: bool = False
    connects: int = 0
    answered_at: list[float] = field(default_factory=list)
    #: TCP_INFO as under a retransmitting path: the peer's ACKs still arrive (lossy profile).
    kernel_hears: bool = False

    def ping_fn(self) -> PingFn:
        async def ping(endpoint: Endpoint, options: PingOptions) -> AsyncIterator[PingReply]:
            if self.refuse:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            if self.cut:   # a dial into a black hole ends with the connect timeout
                await trio.sleep(options.timeout)
                raise PeerTimeout(f"no connection to {endpoint.host} within {options.timeout}s")
            self.connects += 1
            if options.on_connected is not None:
                options.on_connected(endpoint.host)

            async def probe(_seq: int) -> float | None:
                if self.cut:
                    await trio.sleep_forever()
                await trio.sleep(self.rtt)
                self.answered_at.append(trio.current_time())
                return None

            retransmits = itertools.count(1)
            started = trio.current_time()

            def progress() -> TcpProgress:
                return TcpProgress(last_ack_recv=0.0,
                                   last_data_recv=trio.current_time() - started,
                                   total_retrans=next(retransmits))

            async for reply in ping_series(options, endpoint.host, probe,
                                           progress=progress if self.kernel_hears else None):
                yield reply
        return ping


def routes(*links: tuple[str, Link]) -> list[_Route]:
    return [_Route(name, parse_url(name), link.ping_fn()) for name, link in links]


def quick_backoff() -> Backoff:
    return Backoff(0.5, 0.5, jitter=Jitter.NONE)


def watch(links: list[tuple[str, Link]], events: list[tuple[float, PathAction]],
          **options: object) -> AbstractAsyncContextManager[RedundantPaths]:
    def record(action: PathAction) -> None:
        events.append((trio.current_time(), action))
    kwargs: dict[str, object] = {"interval": 1.0, "timeout": 3.0, "profile": "default",
                                 "backoff": quick_backoff, "on_event": record, "on_reply": None}
    kwargs.update(options)
    return _watch(routes(*links), **kwargs)  # type: ignore[arg-type]


def of(kind: type, events: list[tuple[float, PathAction]]) -> list[tuple[float, PathAction]]:
    return [(t, a) for t, a in events if isinstance(a, kind)]


async def test_both_paths_up_keep_the_peer_alive(autojump_clock: trio.testing.MockClock) -> None:
    """Two answering paths are each reported up once and the peer stays alive for a minute."""
    a, b = Link(), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        await trio.sleep(60.0)
        assert paths.verdict is PeerVerdict.ALIVE
        assert [v.state for v in paths.paths] == [PathState.UP, PathState.UP]
    assert sorted(a_.path for _, a_ in events if isinstance(a_, PathUp)) == [A, B]
    assert of(PathDown, events) == [] and of(PeerDead, events) == []
    assert len(a.answered_at) >= 59 and len(b.answered_at) >= 59


async def test_cutting_one_path_is_a_path_down_not_a_death(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cut one of two paths: a PathDown within the timeout of its last answer, no PeerDead,
    and the other path keeps answering."""
    a, b = Link(), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        await trio.sleep(10.0)
        a.cut = True
        await trio.sleep(30.0)
        assert paths.verdict is PeerVerdict.ALIVE
        assert paths.state(A) is PathState.DOWN and paths.state(B) is PathState.UP
    last_a = a.answered_at[-1]   # a probe in flight at the cut may still be answered
    downs = of(PathDown, events)
    assert len(downs) == 1
    at, down = downs[0]
    assert isinstance(down, PathDown) and down.path == A
    assert at - last_a <= 3.0 + RESOLUTION
    assert of(PeerDead, events) == []
    assert b.answered_at[-1] > 39.0


async def test_cutting_both_paths_is_a_death_within_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cut both paths: the peer is dead at most timeout (+ the engine's step) after the last
    answer heard on either, and wait_dead() returns that death."""
    a, b = Link(), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        await trio.sleep(5.0)
        a.cut = True
        await trio.sleep(5.0)
        assert paths.alive
        b.cut = True
        dead = await paths.wait_dead()
        dead_at = trio.current_time()
        assert not paths.alive
    last = max(a.answered_at[-1], b.answered_at[-1])
    assert 3.0 - 1.0 <= dead_at - last <= 3.0 + RESOLUTION
    assert dead.silent_for == pytest.approx(dead_at - last, abs=RESOLUTION)
    assert "all 2 paths are down" in dead.reason
    kinds = [type(a_) for _, a_ in events]
    assert kinds.count(PeerDead) == 1
    assert kinds.index(PeerDead) > max(i for i, k in enumerate(kinds) if k is PathDown)


async def test_a_path_reconnects_and_reports_up_again(autojump_clock: trio.testing.MockClock) -> None:
    """A healed path is dialled again by itself and reported up (first=False)."""
    a, b = Link(), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        await trio.sleep(2.0)
        a.cut = True
        await trio.sleep(10.0)
        assert paths.state(A) is PathState.DOWN
        a.cut = False
        await trio.sleep(10.0)
        assert paths.state(A) is PathState.UP
    ups = [act for _, act in of(PathUp, events) if isinstance(act, PathUp) and act.path == A]
    assert [u.first for u in ups] == [True, False]
    assert a.connects >= 2


async def test_a_dead_peer_comes_back_with_its_first_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the death, one path healing brings PathUp and PeerAlive."""
    a, b = Link(), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        await trio.sleep(2.0)
        a.cut = b.cut = True
        await paths.wait_dead()
        b.cut = False
        await trio.sleep(10.0)
        assert paths.verdict is PeerVerdict.ALIVE
    tail = [type(act) for _, act in events][-2:]
    assert tail == [PathUp, PeerAlive]


async def test_refused_paths_make_the_peer_dead_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both paths refused: each is down on its first failure, and the peer dead then."""
    a, b = Link(refuse=True), Link(refuse=True)
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        dead = await paths.wait_dead()
        assert trio.current_time() < 0.1
    assert "refused" in dead.reason
    downs = [act for _, act in of(PathDown, events)]
    assert {d.path for d in downs if isinstance(d, PathDown)} == {A, B}


async def test_one_refused_path_does_not_kill_a_peer_still_connecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A path refused at start is down while the other path brings the peer up."""
    a, b = Link(refuse=True), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events) as paths:
        await trio.sleep(20.0)
        assert paths.verdict is PeerVerdict.ALIVE
        assert paths.state(A) is PathState.DOWN
    assert of(PeerDead, events) == []


async def test_replies_are_reported_per_path(autojump_clock: trio.testing.MockClock) -> None:
    """on_reply receives every answered heartbeat with the path it came over."""
    got: list[tuple[str, int]] = []
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, Link()), (B, Link())], events,
                     on_reply=lambda path, reply: got.append((path, reply.seq))):
        await trio.sleep(2.5)
    assert sorted(got) == [(A, 1), (A, 2), (A, 3), (B, 1), (B, 2), (B, 3)]


async def test_every_events_subscription_sees_the_changes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """events() yields the same PathDown a cut produces, to a reader started after it."""
    a, b = Link(), Link()
    async with watch([(A, a), (B, b)], []) as paths:
        await trio.sleep(1.0)
        a.cut = True
        await trio.sleep(5.0)
        feed = paths.events()
        seen: list[PathAction] = []
        with trio.move_on_after(0.1):
            async for action in feed:
                seen.append(action)
    assert [type(s) for s in seen] == [PathUp, PathUp, PathDown]


async def test_errors_in_the_block_propagate_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    """An exception raised in the async with block comes out as itself, not in a group."""
    with pytest.raises(KeyError):
        async with watch([(A, Link())], []):
            raise KeyError("mine")


@pytest.mark.parametrize(
    ("options", "match"),
    [({"interval": 3.0, "timeout": 3.0}, "must exceed interval"),
     ({"interval": 0.0}, "positive"),
     ({"profile": "nope"}, "unknown profile")],
)
async def test_bad_timing_is_refused(options: dict[str, object], match: str) -> None:
    """timeout not above interval, a non-positive interval and an unknown profile raise."""
    with pytest.raises(ValueError, match=match):
        async with watch([(A, Link())], [], **options):
            pass


async def test_urls_are_checked_before_anything_starts() -> None:
    """A URL without a scheme, one string instead of a list, and an unknown scheme raise."""
    with pytest.raises(ValueError):
        async with redundant_paths(["10.0.0.1:7000"]):
            pass
    with pytest.raises(ValueError, match="not one string"):
        async with redundant_paths(A):
            pass
    with pytest.raises(NoPlugin):
        async with redundant_paths(["nope://10.0.0.1:1"]):
            pass


def test_exported_from_pulse() -> None:
    """redundant_paths is importable from pulse and pulse.paths."""
    assert pulse.redundant_paths is redundant_paths





async def test_the_lossy_profile_leaves_the_verdict_to_each_paths_judge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under profile="lossy" a path silent past the timeout is not down while its kernel
    still hears the peer (its ping's lossy-link judge decides); once the judge gives up
    (at its ceiling) the path is down."""
    a, b = Link(kernel_hears=True), Link()
    events: list[tuple[float, PathAction]] = []
    async with watch([(A, a), (B, b)], events, profile="lossy") as paths:
        await trio.sleep(2.0)
        a.cut = True
        await trio.sleep(3.0 + 1.0)   # past the timeout: the default profile would be down
        assert paths.state(A) is PathState.UP
        await trio.sleep(60.0)        # past the profile's ceiling (6 x the timeout)
        assert paths.state(A) is PathState.DOWN
        assert paths.state(B) is PathState.UP
    assert of(PeerDead, events) == []
