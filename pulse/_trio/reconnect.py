"""The one trio driver of :class:`~pulse._core.reconnect.ReconnectMachine`.

Rules this module keeps:

* **The engine keeps the time.** The driver is a timer client of
  :func:`~pulse._trio.engine.current_engine`: a wait between attempts is the machine's
  deadline in the engine's heap, never a ``trio.sleep`` or a deadline scope of its own.
  When the wait is over the engine calls :meth:`ReconnectDriver.handle_timer`, which starts
  the attempt.
* **Attempts run in the driver's task** (:meth:`ReconnectDriver.run`), one after the other:
  the client's ``attempt`` coroutine connects, calls :meth:`AttemptHandle.connected` once the
  connection counts as up, runs the connection and returns why it ended (or raises). Between
  attempts the task sleeps on an event the engine sets when the wait is over, so there is no
  extra task per attempt and no scheduling hop before one starts; the machine's
  single-flight rule and the one task agree that attempts never overlap.
* **Outcomes**: a returned reason, or an exception listed in ``retry_on`` (described by
  ``describe``), is a failed attempt before :meth:`AttemptHandle.connected` and a lost
  connection after it. :class:`~pulse.errors.ReconnectGaveUp` raised by the attempt gives up
  for good (the peer said not to come back). Any other exception is a bug and propagates out
  of :meth:`ReconnectDriver.run`.
* **Stopping** (:meth:`ReconnectDriver.stop`) stops the machine; an attempt in flight is
  left to end by itself (the client closes its connection gracefully, or cancels it), and
  :meth:`ReconnectDriver.run` returns once it has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from pulse._core.reconnect import (
    GiveUp,
    ReconnectAction,
    ReconnectMachine,
    StartAttempt,
)
from pulse._trio.engine import Engine, current_engine
from pulse.actions import Reconnect
from pulse.errors import ReconnectGaveUp


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed attempt or a lost connection."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class AttemptHandle:
    """What one attempt's coroutine gets: a way to say the connection is up."""

    __slots__ = ("_driver", "is_connected", "start")

    def __init__(self, driver: ReconnectDriver, start: StartAttempt) -> None:
        self._driver = driver
        self.start = start
        #: True once :meth:`connected` was called.
        self.is_connected = False

    @property
    def attempt(self) -> int:
        """Reconnect attempts since the backoff last reset (0: the first connect)."""
        return self.start.attempt

    def connected(self) -> None:
        """The connection is up (the backoff's stable period starts now). Idempotent."""
        if not self.is_connected:
            self.is_connected = True
            self._driver._input(self._driver.machine.connected(trio.current_time()))


Attempt = Callable[[AttemptHandle], Awaitable[str]]


class ReconnectDriver:
    """Runs ``attempt`` under ``machine``'s rules until stopped or given up (:meth:`run`)."""

    def __init__(
        self,
        machine: ReconnectMachine,
        attempt: Attempt,
        *,
        retry_on: Sequence[type[BaseException]] = (OSError,),
        describe: Callable[[BaseException], str] = describe_error,
        on_wait: Callable[[Reconnect, str], None] | None = None,
        on_give_up: Callable[[ReconnectGaveUp], None] | None = None,
    ) -> None:
        self.machine = machine
        self._attempt = attempt
        self._retry_on = tuple(retry_on)
        self._describe = describe
        self._on_wait = on_wait
        self._on_give_up = on_give_up
        self._engine: Engine | None = None
        self._due: StartAttempt | None = None  # the attempt the machine asked for
        self._running = False  # an attempt (or its connection) is in flight
        self._wakeup = trio.Event()
        self._crash: BaseException | None = None
        self._started = False
        #: The give-up, once the machine gave up.
        self.error: ReconnectGaveUp | None = None

    # -- the application ----------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise until :meth:`stop` or a give-up (then :attr:`error` is set); the
        in-flight attempt, if any, has ended when this returns."""
        self._engine = current_engine()
        self._started = True
        try:
            self._input(self.machine.start(trio.current_time()))
            while True:
                due = self._due
                if due is not None:
                    self._due = None
                    await self._run_attempt(due)
                    continue
                if self._crash is not None:
                    raise self._crash
                if self.machine.finished:
                    return
                await self._wakeup.wait()
                self._wakeup = trio.Event()
        finally:
            self._engine.forget(self)

    def stop(self) -> None:
        """No further attempts; an attempt in flight is left to finish."""
        self._input(self.machine.stop(trio.current_time()))

    def retry_now(self) -> None:
        """Skip the running wait (does nothing during an attempt or a connection, or before
        :meth:`run` started)."""
        if not self._started:
            return
        self._input(self.machine.retry_now(trio.current_time()))

    @property
    def attempt_running(self) -> bool:
        """True while an attempt (or the connection it opened) is in flight."""
        return self._running

    # -- the engine -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The end of the machine's running wait."""
        return self.machine.next_deadline()

    def handle_timer(self, now: float) -> None:
        """The wait is over: start the attempt (called by the engine, never awaits)."""
        self._apply(self.machine.handle_timer(now))

    def timer_failed(self, exc: Exception) -> None:
        """The engine reports an exception from :meth:`handle_timer`: end :meth:`run`."""
        self._crash = exc
        self._wakeup.set()

    # -- internals ------------------------------------------------------------------------------

    def _input(self, actions: list[ReconnectAction]) -> None:
        self._apply(actions)
        if self._engine is not None:
            self._engine.watch(self)  # a new wait moves the deadline earlier (from none)

    def _apply(self, actions: list[ReconnectAction]) -> None:
        reason = self.machine.last_reason
        for action in actions:
            if isinstance(action, StartAttempt):
                assert not self._running and self._due is None, "single flight"
                self._due = action
            elif isinstance(action, Reconnect):
                if self._on_wait is not None:
                    self._on_wait(action, reason)
            elif isinstance(action, GiveUp):
                self.error = action.error
                if self._on_give_up is not None:
                    self._on_give_up(action.error)
        self._wakeup.set()

    async def _run_attempt(self, start: StartAttempt) -> None:
        handle = AttemptHandle(self, start)
        gave_up: ReconnectGaveUp | None = None
        self._running = True
        try:
            reason = await self._attempt(handle)
        except ReconnectGaveUp as exc:
            gave_up = exc
            reason = str(exc)
        except self._retry_on as exc:
            reason = self._describe(exc)
        finally:
            self._running = False
        now = trio.current_time()
        machine = self.machine
        if gave_up is not None:
            self._input(machine.give_up(now, reason, gave_up))
        elif handle.is_connected:
            self._input(machine.lost(now, reason))
        else:
            self._input(machine.failed(now, reason))
