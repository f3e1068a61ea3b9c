"""Idle detection with Netty ``IdleStateHandler`` semantics, as a pure state machine.

Three independent timers: *reader idle* (nothing read for ``reader_idle``), *writer idle*
(nothing written for ``writer_idle``) and *all idle* (neither, for ``all_idle``); 0 disables a
timer. The first event of an idle stretch has ``first=True``; while the connection stays idle
a repeat (``first=False``) follows every further period. Activity in the relevant direction
ends the stretch, so the next event is a "first" again.

Deadlines are lazy, as in Netty: reads and writes only store a timestamp, and the deadline is
computed from the stored times when asked for, so a busy connection costs no timer work per
packet. With ``observe_output`` a write that is still in progress (``output_progress``)
counts as writer activity, so a slow writer on a congested link is not taken for idle.
"""

from __future__ import annotations

import math

from pulse.actions import Idle, IdleKind
from pulse.events import DataReceived, DataSent, Event, OutputProgress, PongReceived, Tick


class _Timer:
    __slots__ = ("fired_at", "kind", "period")

    def __init__(self, kind: IdleKind, period: float) -> None:
        self.kind = kind
        self.period = period
        self.fired_at: float | None = None  # last event of the current idle stretch

    def due(self, activity: float) -> float:
        if self.fired_at is not None and activity <= self.fired_at:
            return self.fired_at + self.period  # a repeat, one period after the last event
        return activity + self.period  # a first event, one period after the last activity


def _check(name: str, value: float) -> float:
    if not isinstance(value, int | float) or math.isnan(value) or value < 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class IdleDetector:
    """Reader / writer / all idle detection for one connection.

    Construct with the connection's open time; feed ``read(now)``, ``write(now)`` and (with
    ``observe_output``) ``output_progress(now)``; call ``handle_timer(now)`` at ``next_deadline()``.
    """

    __slots__ = ("_last_progress", "_last_read", "_last_write", "_timers", "observe_output")

    def __init__(
        self,
        now: float,
        *,
        reader_idle: float = 0.0,
        writer_idle: float = 0.0,
        all_idle: float = 0.0,
        observe_output: bool = False,
    ) -> None:
        periods = {
            IdleKind.READER: _check("reader_idle", reader_idle),
            IdleKind.WRITER: _check("writer_idle", writer_idle),
            IdleKind.ALL: _check("all_idle", all_idle),
        }
        self._timers = [_Timer(kind, p) for kind, p in periods.items() if p > 0]
        self._last_read = now
        self._last_write = now
        self._last_progress = now
        self.observe_output = observe_output

    @property
    def last_read(self) -> float:
        """Time of the last read (or the open time)."""
        return self._last_read

    @property
    def last_write(self) -> float:
        """Time of the last completed write (or the open time)."""
        return self._last_write

    def read(self, now: float) -> None:
        """Something was read."""
        self._last_read = max(self._last_read, now)

    def write(self, now: float) -> None:
        """A write completed."""
        self._last_write = max(self._last_write, now)

    def output_progress(self, now: float) -> None:
        """A pending write made progress (counts only with ``observe_output``)."""
        self._last_progress = max(self._last_progress, now)

    def _activity(self, kind: IdleKind) -> float:
        write = self._last_write
        if self.observe_output:
            write = max(write, self._last_progress)
        if kind is IdleKind.READER:
            return self._last_read
        if kind is IdleKind.WRITER:
            return write
        return max(self._last_read, write)

    def handle(self, event: Event) -> list[Idle]:
        """Feed one event object; returns the idle events due (only ``Tick`` produces any)."""
        if isinstance(event, DataReceived | PongReceived):
            self.read(event.now)
        elif isinstance(event, DataSent):
            self.write(event.now)
        elif isinstance(event, OutputProgress):
            self.output_progress(event.now)
        elif isinstance(event, Tick):
            return self.handle_timer(event.now)
        return []

    def handle_timer(self, now: float) -> list[Idle]:
        """Return the idle events due at ``now`` (at most one per timer)."""
        out: list[Idle] = []
        for timer in self._timers:
            activity = self._activity(timer.kind)
            if timer.fired_at is not None and activity > timer.fired_at:
                timer.fired_at = None  # activity ended the idle stretch
            if now >= timer.due(activity):
                out.append(Idle(timer.kind, timer.fired_at is None))
                timer.fired_at = now
        return out

    def next_deadline(self) -> float | None:
        """Earliest time a timer could fire, computed lazily from the stored activity times."""
        dues = [timer.due(self._activity(timer.kind)) for timer in self._timers]
        return min(dues) if dues else None
