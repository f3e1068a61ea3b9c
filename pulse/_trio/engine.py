"""The engine: one timer for every pure machine in a trio process.

Rules this module keeps:

* **One timer per process.** Every connection, session and channel registers a *timer
  client* (anything with ``next_deadline()`` and ``handle_timer(now)``, the contract of every
  machine in :mod:`pulse._core`). The engine keeps one heap of ``(deadline, client)``, sleeps
  in one task until the earliest, and calls the due clients with one ``now`` per wake-up.
  There is no task, cancel scope or deadline per connection.
* **Lazy rescheduling** (Netty's idle handler, ZooKeeper's expiry queue): a data event only
  stores a timestamp inside the machine and never touches the engine, because it can only
  move the machine's deadline *later*. When an entry falls due the engine asks the client for
  its deadline again; a deadline that moved on is re-queued without calling ``handle_timer``.
  :meth:`Engine.watch` is needed only when a deadline may have moved *earlier* (a new
  machine, an action from the application); it costs one comparison when nothing changed.
* **Synchronous dispatch.** ``handle_timer`` runs inside the engine's task and must not
  await: a driver writes a heartbeat straight to a non-blocking socket and falls back to its
  connection's own task only when the socket buffer is full.
* **A failing client costs only itself.** An exception from a client's ``handle_timer`` is
  reported to the client's ``timer_failed`` (when it has one) and the client is dropped; the
  engine and every other client go on.
* **Quiet.** Nothing is logged per wake-up or per client. A wake-up that comes later than
  ``stall_threshold`` after its deadline (a blocked loop, a stopped process) is counted in
  :attr:`Engine.stalls`; the machines themselves decide what a stall means for their peers.

The engine of the running trio process is :func:`current_engine`; it starts on first use as a
trio system task and ends with the run.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import structlog
import trio

log = structlog.get_logger("pulse.engine")


class TimerClient(Protocol):
    """What the engine drives: a machine (or a driver wrapping one) with the timer contract."""

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` is due next (None: nothing is ever due)."""
        ...

    def handle_timer(self, now: float) -> object:
        """Do what is due at ``now``; the engine ignores the return value."""
        ...


class Engine:
    """One heap of deadlines and one sleeping task for any number of timer clients."""

    def __init__(self, *, stall_threshold: float = 0.5) -> None:
        self.stall_threshold = stall_threshold
        self._heap: list[tuple[float, int, TimerClient]] = []
        self._queued: dict[TimerClient, float] = {}  # client -> the deadline it is queued at
        self._order = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._sleep_until = math.inf
        #: Wake-ups of the engine so far.
        self.wakeups = 0
        #: Calls of ``handle_timer`` so far.
        self.timer_calls = 0
        #: Wake-ups that came more than ``stall_threshold`` after their deadline.
        self.stalls = 0
        #: The longest such delay seen, in seconds.
        self.worst_stall = 0.0

    # -- registering ----------------------------------------------------------------------

    def watch(self, client: TimerClient) -> None:
        """Schedule ``client`` at its current ``next_deadline()`` (call again whenever that
        deadline may have moved earlier; a later deadline is noticed by itself)."""
        deadline = client.next_deadline()
        if deadline is None:
            return  # a stale entry, if any, finds no deadline when it falls due
        queued = self._queued.get(client)
        if queued is not None and queued <= deadline:
            return  # lazy: the earlier entry will re-read the deadline when it falls due
        self._queued[client] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), client))
        if deadline < self._sleep_until and self._scope is not None:
            self._sleep_until = deadline
            self._scope.deadline = deadline

    def forget(self, client: TimerClient) -> None:
        """Stop driving ``client`` (its heap entry is discarded when it falls due)."""
        self._queued.pop(client, None)

    def __len__(self) -> int:
        """How many clients are scheduled."""
        return len(self._queued)

    # -- the one task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Sleep until the earliest deadline, call every due client, forever."""
        while True:
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._scope, self._sleep_until = scope, deadline
                await trio.sleep_forever()
            self._scope, self._sleep_until = None, math.inf
            self.run_due(trio.current_time())

    def run_due(self, now: float) -> None:
        """Call ``handle_timer(now)`` on every client due at ``now`` (one ``now`` for all of
        them, so a long batch is not mistaken for a stall by the clients late in it)."""
        heap, queued = self._heap, self._queued
        if not heap or heap[0][0] > now:
            return
        self.wakeups += 1
        late = now - heap[0][0]
        if late > self.stall_threshold:
            self.stalls += 1
            self.worst_stall = max(self.worst_stall, late)
        while heap and heap[0][0] <= now:
            when, _, client = heapq.heappop(heap)
            if queued.get(client) != when:
                continue  # stale: forgotten, or queued again at another time
            del queued[client]
            try:
                deadline = client.next_deadline()
                if deadline is None:
                    continue
                if deadline > now:  # moved later since it was queued (lazy rescheduling)
                    queued[client] = deadline
                    heapq.heappush(heap, (deadline, next(self._order), client))
                    continue
                self.timer_calls += 1
                client.handle_timer(now)
                self.watch(client)
            except Exception as exc:
                self._client_failed(client, exc)

    def _client_failed(self, client: TimerClient, exc: Exception) -> None:
        self.forget(client)
        report = getattr(client, "timer_failed", None)
        if report is None:
            log.error("timer_client_failed", client=type(client).__name__, error=repr(exc))
            return
        try:
            report(exc)
        except Exception as inner:
            log.error("timer_client_failed", client=type(client).__name__, error=repr(inner))


_ENGINE: trio.lowlevel.RunVar[Engine] = trio.lowlevel.RunVar("pulse_engine")


def current_engine() -> Engine:
    """The engine of the running trio process, started on first use."""
    try:
        return _ENGINE.get()
    except LookupError:
        pass
    engine = Engine()
    _ENGINE.set(engine)
    trio.lowlevel.spawn_system_task(engine.run, name="pulse.engine")
    return engine
