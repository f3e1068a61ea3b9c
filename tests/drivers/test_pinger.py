"""pulse ping's shared cadence: one probe per interval, each bounded by the timeout."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from pulse._trio.pinger import ping_series
from pulse.errors import PeerTimeout
from pulse.registry import PingOptions


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
