"""A hashed timing wheel: one structure that holds the timers of very many channels.

Rules this module keeps:

* Time is an argument. The wheel counts ticks of ``tick`` seconds from ``origin`` (the
  ``now`` it was built with). Tick ``t`` happens at ``origin + t * tick``.
* A timer due at ``deadline`` is filed under the first tick at or after ``deadline`` and
  fires when :meth:`HashedWheel.handle_timer` reaches that tick: **never early, at most one tick
  late**. A deadline that has already passed fires on the next tick.
* ``schedule`` and ``cancel`` cost O(1): the timer goes into slot ``tick mod slots``, a
  dict, and leaves it by a dict deletion. A timer more than one revolution away shares its
  slot with nearer ones and is skipped until its own revolution comes (as Netty's and
  Dubbo's ``HashedWheelTimer`` keep ``remainingRounds``).
* ``handle_timer(now)`` visits only the slots of the ticks that passed (at most ``slots``), and
  returns the due items in deadline order (ties in scheduling order).
* ``next_deadline()`` is exact: the tick time of the earliest pending timer, or None when
  the wheel is empty, so a driver sleeps until then and not a tick longer or shorter.

The wheel knows nothing about what it holds; drivers put channel objects in it and call
them back when :meth:`handle_timer` returns them.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

T = TypeVar("T")

#: Dubbo's and Netty's defaults: one-second ticks on a wheel of 128 slots.
DEFAULT_TICK = 1.0
DEFAULT_SLOTS = 128


class Timer(Generic[T]):
    """A handle on one scheduled item; :meth:`cancel` it or let it fire once."""

    __slots__ = ("_slot", "deadline", "item", "tick")

    def __init__(self, item: T, deadline: float, tick: int, slot: dict[Timer[T], None]) -> None:
        self.item = item
        self.deadline = deadline  # as asked for; fires at the tick of index ``tick``
        self.tick = tick
        self._slot: dict[Timer[T], None] | None = slot

    @property
    def pending(self) -> bool:
        """True until the timer fires or is cancelled."""
        return self._slot is not None

    def __repr__(self) -> str:
        state = "pending" if self.pending else "done"
        return f"<Timer deadline={self.deadline} tick={self.tick} {state} {self.item!r}>"


def _check_time(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


class HashedWheel(Generic[T]):
    """A hashed wheel of ``slots`` slots turning one slot per ``tick`` seconds.

    ``now`` is the wheel's origin (tick 0). ``slots`` is rounded up to a power of two so the
    slot of a tick is a bit mask. Memory is one dict per slot plus one small handle per
    pending timer.
    """

    __slots__ = ("_count", "_current", "_mask", "_slots", "origin", "tick")

    def __init__(
        self, now: float, *, tick: float = DEFAULT_TICK, slots: int = DEFAULT_SLOTS
    ) -> None:
        self.origin = _check_time("now", now)
        self.tick = _check_time("tick", tick)
        if self.tick <= 0:
            raise ValueError(f"tick must be positive, got {tick!r}")
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        size = 1 << (slots - 1).bit_length()
        self._mask = size - 1
        self._slots: list[dict[Timer[T], None]] = [{} for _ in range(size)]
        self._current = 0  # every tick up to and including this one has been processed
        self._count = 0

    # -- tick arithmetic (one formula everywhere, so float rounding cannot disagree) -------

    def tick_time(self, index: int) -> float:
        """The time at which tick ``index`` happens."""
        return self.origin + index * self.tick

    def _first_tick_at_or_after(self, t: float) -> int:
        origin, tick = self.origin, self.tick
        index = math.ceil((t - origin) / tick)
        if origin + (index - 1) * tick >= t:  # the same expression as tick_time()
            index -= 1
        elif origin + index * tick < t:
            index += 1
        return index

    def _last_tick_at_or_before(self, t: float) -> int:
        index = math.floor((t - self.origin) / self.tick)
        if self.tick_time(index + 1) <= t:
            index += 1
        elif self.tick_time(index) > t:
            index -= 1
        return index

    # -- operations ------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """Number of slots (a power of two)."""
        return self._mask + 1

    @property
    def current_tick(self) -> int:
        """Index of the last tick processed by :meth:`handle_timer`."""
        return self._current

    def __len__(self) -> int:
        """Number of pending timers."""
        return self._count

    def schedule(self, deadline: float, item: T) -> Timer[T]:
        """File ``item`` to fire at the first tick at or after ``deadline``; O(1)."""
        try:
            finite = math.isfinite(deadline)
        except TypeError:
            finite = False
        if not finite:
            raise ValueError(f"deadline must be a finite number of seconds, got {deadline!r}")
        index = self._first_tick_at_or_after(deadline)
        if index <= self._current:
            index = self._current + 1
        slot = self._slots[index & self._mask]
        timer = Timer(item, deadline, index, slot)
        slot[timer] = None
        self._count += 1
        return timer

    def cancel(self, timer: Timer[T]) -> bool:
        """Remove a pending timer; O(1). Returns False if it had already fired or been cancelled."""
        slot = timer._slot
        if slot is None:
            return False
        del slot[timer]
        timer._slot = None
        self._count -= 1
        return True

    def reschedule(self, timer: Timer[T], deadline: float) -> Timer[T]:
        """Cancel ``timer`` (if still pending) and file its item again at ``deadline``."""
        self.cancel(timer)
        return self.schedule(deadline, timer.item)

    def handle_timer(self, now: float) -> list[T]:
        """Process every tick up to ``now`` and return the items that fell due, in order.

        Time never runs backwards for the wheel: a ``now`` earlier than the last one processed
        returns nothing.
        """
        now = _check_time("now", now)
        target = self._last_tick_at_or_before(now)
        if target <= self._current:
            return []
        passed = target - self._current
        fired: list[Timer[T]] = []
        first = self._current + 1
        for index in range(first, first + min(passed, self.slots)):
            slot = self._slots[index & self._mask]
            if not slot:
                continue
            due = [timer for timer in slot if timer.tick <= target]
            for timer in due:
                del slot[timer]
                timer._slot = None
            fired.extend(due)
        self._current = target
        self._count -= len(fired)
        if passed > 1:
            fired.sort(key=lambda timer: timer.tick)  # stable: ties keep scheduling order
        return [timer.item for timer in fired]

    def next_deadline(self) -> float | None:
        """The time of the earliest tick at which a pending timer fires (None if empty).

        Slots are scanned from the current tick on; the scan stops at the first slot holding
        a timer due in this revolution, so it usually costs a few dict checks. Only when every
        pending timer is more than a revolution away does it look at all of them.
        """
        if self._count == 0:
            return None
        best: int | None = None
        first = self._current + 1
        for index in range(first, first + self.slots):
            if best is not None and index >= best:
                break
            slot = self._slots[index & self._mask]
            if not slot:
                continue
            earliest = min(timer.tick for timer in slot)
            if earliest == index:
                return self.tick_time(index)
            if best is None or earliest < best:
                best = earliest
        assert best is not None
        return self.tick_time(best)
