"""pulse ping's shared cadence: one probe per interval, each bounded by the timeout."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import trio
import trio.testing

from pulse._core.lossy import TcpProgress
from pulse._driver.pinger import ping_series
from pulse.errors import PeerTimeout
from pulse.registry import PingOptions, ServeOptions


async def test_probes_are_paced_and_timed(autojump_clock: trio.testing.MockClock) -> None:
    """Probes start every interval from the previous start; a probe returning None is
    timed here, one returning a value keeps it; count ends the series."""
    starts: list[float] = []

    async def probe(seq: int) -> float | None:
        starts.append(trio.current_time())
        await trio.sleep(0.25)
        return None if seq % 2 else 0.125

    replies = [r async for r in ping_series(PingOptions(interval=1.0, timeout=5.0, count=4),
                                            "peer:1", probe)]
    assert [r.seq for r in replies] == [1, 2, 3, 4]
    assert [r.rtt for r in replies] == [pytest.approx(0.25), 0.125, pytest.approx(0.25), 0.125]
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [1.0, 1.0, 1.0]
    assert {r.peer for r in replies} == {"peer:1"}


async def test_an_unanswered_probe_is_a_peer_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A probe with no answer within the timeout ends the series with PeerTimeout naming
    the peer, after exactly the timeout."""
    async def probe(seq: int) -> float | None:
        if seq == 2:
            await trio.sleep_forever()
        return None

    got = []
    with pytest.raises(PeerTimeout, match=r"no answer from peer:1 within 3s"):
        async for reply in ping_series(PingOptions(interval=1.0, timeout=3.0, count=None),
                                       "peer:1", probe):
            got.append((reply.seq, trio.current_time()))
    assert [seq for seq, _ in got] == [1]
    assert trio.current_time() - got[0][1] == pytest.approx(1.0 + 3.0)


def _kernel(start: float, last_segment_at: float) -> Callable[[], TcpProgress]:
    """TCP_INFO as a script: the peer's segments until ``last_segment_at`` (virtual seconds
    after ``start``), and one more retransmission at every sample (a lossy path)."""
    samples = itertools.count(1)

    def read() -> TcpProgress:
        now = trio.current_time() - start
        return TcpProgress(last_ack_recv=now - min(now, last_segment_at), last_data_recv=now,
                           total_retrans=next(samples))
    return read


async def test_lossy_profile_waits_for_a_late_answer(autojump_clock: trio.testing.MockClock) -> None:
    """Under --profile lossy an answer 9 s late (timeout 5 s) is still an answer while the
    kernel hears the peer over a retransmitting path."""
    async def probe(seq: int) -> float | None:
        await trio.sleep(9.0)
        return None

    options = PingOptions(interval=1.0, timeout=5.0, count=1, profile="lossy")
    replies = [r async for r in ping_series(options, "peer:1", probe,
                                            progress=_kernel(trio.current_time(), 1e9))]
    assert [r.rtt for r in replies] == [pytest.approx(9.0)]


async def test_lossy_profile_gives_up_when_the_peers_segments_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cut 7 s into an unanswered probe ends the series at 7 + 5 = 12 s; without a
    sampler (a transport that cannot say) the profile changes nothing."""
    async def probe(seq: int) -> float | None:
        await trio.sleep_forever()

    options = PingOptions(interval=1.0, timeout=5.0, count=None, profile="lossy")
    started = trio.current_time()
    with pytest.raises(PeerTimeout, match=r"within 12\.0s \(timeout 5s, lossy-link profile\)"):
        async for _ in ping_series(options, "peer:1", probe, progress=_kernel(started, 7.0)):
            pass
    assert trio.current_time() - started == pytest.approx(12.0, abs=0.05)
    started = trio.current_time()
    with pytest.raises(PeerTimeout, match="within 5s"):
        async for _ in ping_series(options, "peer:1", probe):
            pass
    assert trio.current_time() - started == pytest.approx(5.0)


def test_options_refuse_an_unknown_profile() -> None:
    """PingOptions and ServeOptions name their profile from the known ones only."""
    with pytest.raises(ValueError, match="unknown profile 'flaky'"):
        PingOptions(profile="flaky")
    with pytest.raises(ValueError, match="unknown profile 'flaky'"):
        ServeOptions(profile="flaky")
