"""Bounded phases on the engine's timer: the one place a connect, handshake, exchange or
goodbye gets its deadline.

:func:`bounded` runs a block as one :class:`~pulse._core.phase.Phase`. The phase's pure
machine (:class:`~pulse._core.phase.PhaseDeadline`) is a timer client of the process's one
engine, like every heartbeat, so no trio deadline is armed per connection; when it overruns,
the engine cancels the block, and the phase ends with :class:`~pulse.errors.PhaseTimeout`
(or, for a goodbye that may simply be cut short, quietly — ``move_on=True``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from pulse._core.phase import Phase, PhaseDeadline
from pulse._driver.engine import current_engine
from pulse.errors import PhaseTimeout

__all__ = ["Phase", "bounded"]


class _Guard:
    """Cancels a scope when its phase overruns (the engine calls it)."""

    __slots__ = ("machine", "scope")

    def __init__(self, machine: PhaseDeadline, scope: anyio.CancelScope) -> None:
        self.machine = machine
        self.scope = scope

    def next_deadline(self) -> float | None:
        return self.machine.next_deadline()

    def handle_timer(self, now: float) -> None:
        if self.machine.handle_timer(now):
            self.scope.cancel()


@contextmanager
def bounded(
    phase: Phase, timeout: float, *, peer: str | None = None, move_on: bool = False
) -> Iterator[PhaseDeadline]:
    """Run the block as ``phase``, for at most ``timeout`` seconds (``math.inf``: no bound).

    When the phase overruns, the block is cancelled and :class:`~pulse.errors.PhaseTimeout`
    raised — or, with ``move_on``, the block is left and the yielded machine's ``expired``
    is True.
    """
    engine = current_engine()
    machine = PhaseDeadline(phase, engine.now(), timeout)
    guard = _Guard(machine, anyio.CancelScope())
    engine.watch(guard)
    try:
        with guard.scope:
            yield machine
    finally:
        machine.finish()
        engine.forget(guard)
    if machine.expired and guard.scope.cancelled_caught and not move_on:
        raise PhaseTimeout(phase.value, timeout, peer)
