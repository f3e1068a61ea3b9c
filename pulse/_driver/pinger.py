"""``pulse ping``'s cadence, once for every plugin.

A plugin's ``ping`` opens its connection and supplies one *probe*: send heartbeat ``seq``,
wait for its answer, return the round-trip time (or None to have it measured here). This
module does the rest the same way for every transport: one probe per ``interval`` (counted
from the start of the previous one), each bounded by ``timeout``, a reply per answer, and
:class:`~pulse.errors.PeerTimeout` naming the peer when an answer does not come.

Under the lossy-link profile (``options.profile == "lossy"``) a probe that outlives the
timeout is not given up at once: the plugin's ``progress()`` samples the connection's
``TCP_INFO`` and :class:`~pulse._core.lossy.LossyLinkJudge` says whether the answer is
merely late (the peer's segments still arrive over a path that retransmits) and until when
to wait, never past the profile's ceiling.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from pulse._core.lossy import LossyLinkJudge, TcpProgress
from pulse._core.policy import PROFILES
from pulse._driver.engine import current_engine
from pulse.errors import PeerTimeout
from pulse.registry import PingOptions, PingReply

Probe = Callable[[int], Awaitable[float | None]]
Progress = Callable[[], TcpProgress | None]


async def ping_series(
    options: PingOptions, peer: str, probe: Probe, *, progress: Progress | None = None,
) -> AsyncIterator[PingReply]:
    """Yield a :class:`PingReply` per answered probe, ``options.count`` of them (forever
    when None); raise :class:`PeerTimeout` when a probe takes longer than the timeout (or,
    under the lossy profile with a ``progress`` sampler, when the judge gives up on it)."""
    engine = current_engine()
    lossy = PROFILES.get(options.profile)
    judge = None
    if lossy is not None and progress is not None:
        judge = LossyLinkJudge(lossy, options.timeout)
    seq = 0
    while options.count is None or seq < options.count:
        seq += 1
        started = engine.now()
        rtt: float | None = None
        if judge is not None:
            assert progress is not None
            judge.observe(started, progress())
            rtt = await _judged_probe(probe, seq, started, options.timeout, judge, progress)
            if rtt is None:
                raise PeerTimeout(f"no answer from {peer} within {engine.now() - started:.1f}s "
                                  f"(timeout {options.timeout:g}s, lossy-link profile)")
        else:
            with engine.move_on_after(options.timeout) as waiting:
                rtt = await probe(seq)
                if rtt is None:
                    rtt = engine.now() - started
            if waiting.cancelled_caught:
                raise PeerTimeout(f"no answer from {peer} within {options.timeout:g}s")
        assert rtt is not None
        yield PingReply(seq, rtt, peer)  # never inside a cancel scope (trio's rule)
        if options.count is None or seq < options.count:
            await engine.sleep_until(started + options.interval)


async def _judged_probe(probe: Probe, seq: int, started: float, timeout: float,
                        judge: LossyLinkJudge, progress: Progress) -> float | None:
    """Run ``probe(seq)``; past the timeout, keep waiting while the judge says the answer is
    late rather than lost. Returns the round-trip time, or None when the judge gives up."""
    engine = current_engine()
    answer: list[float] = []
    answered = anyio.Event()

    async def run() -> None:
        rtt = await probe(seq)
        answer.append(engine.now() - started if rtt is None else rtt)
        answered.set()

    deadline = started + timeout
    deferring = False
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(run)
        while True:
            with engine.move_on_at(deadline):
                await answered.wait()
            if answered.is_set():
                break
            now = engine.now()
            judge.observe(now, progress())
            until = judge.withhold_until(now, started, deferring=deferring)
            if until is None or not math.isfinite(until):
                nursery.cancel_scope.cancel()
                break
            deferring = True
            deadline = until
    return answer[0] if answer else None
