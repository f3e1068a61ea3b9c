"""``pulse ping``'s cadence, once for every plugin.

A plugin's ``ping`` opens its connection and supplies one *probe*: send heartbeat ``seq``,
wait for its answer, return the round-trip time (or None to have it measured here). This
module does the rest the same way for every transport: one probe per ``interval`` (counted
from the start of the previous one), each bounded by ``timeout``, a reply per answer, and
:class:`~pulse.errors.PeerTimeout` naming the peer when an answer does not come.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from pulse._trio.engine import current_engine
from pulse.errors import PeerTimeout
from pulse.registry import PingOptions, PingReply

Probe = Callable[[int], Awaitable[float | None]]


async def ping_series(options: PingOptions, peer: str, probe: Probe) -> AsyncIterator[PingReply]:
    """Yield a :class:`PingReply` per answered probe, ``options.count`` of them (forever
    when None); raise :class:`PeerTimeout` when a probe takes longer than the timeout."""
    engine = current_engine()
    seq = 0
    while options.count is None or seq < options.count:
        seq += 1
        started = engine.now()
        rtt: float | None = None
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
