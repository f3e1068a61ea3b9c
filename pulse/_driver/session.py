"""The trio side of the one session client machine, shared by the lease and ZooKeeper clients.

Rules this module keeps:

* **The engine is the only timer.** :class:`SessionDriver` is a timer client of the
  process's engine (:func:`pulse._driver.engine.current_engine`): connect timeouts, retry
  pauses, pings, read timeouts, client-side expiry, the give-up time and the wait for a
  close to be confirmed are all deadlines of the machine
  (:class:`pulse._core.session_client.SessionClient`); the engine calls ``handle_timer(now)``
  when one is due. No task sleeps and no cancel scope carries a deadline for them.
* **One place reads the clock** for the backends' inputs: :meth:`SessionDriver.now` stamps
  what a connection task observed (bytes arrived, a request written). Everything else gets
  ``now`` from the engine.
* After every input the driver asks the engine to :meth:`~pulse._driver.engine.Engine.watch`
  the machine again (its deadline may have moved earlier); actions go to the backend's
  ``perform`` callback, which never awaits.
* Waiting for a state is :meth:`SessionDriver.wait_until`: it wakes on every action.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from pulse._core.session_client import Action, Phase, SessionClient
from pulse._driver.engine import current_engine

Perform = Callable[[Action, float], None]


class SessionDriver:
    """Drives one session machine from the engine and hands its actions to ``perform``."""

    def __init__(self, machine: SessionClient, perform: Perform) -> None:
        self.machine = machine
        self._perform = perform
        self._engine = current_engine()
        self._changed = anyio.Event()
        #: An exception raised by ``perform`` inside the engine (the driver stops then).
        self.failure: BaseException | None = None

    # -- the engine's timer contract -------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The machine's next deadline (None once it failed)."""
        if self.failure is not None:
            return None
        return self.machine.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Act on the machine's due deadlines."""
        self._dispatch(self.machine.handle_timer(now), now)

    def timer_failed(self, exc: Exception) -> None:
        """``perform`` raised inside the engine: remember it and wake every waiter."""
        self.failure = exc
        self.notify()

    # -- inputs ----------------------------------------------------------------------------

    @staticmethod
    def now() -> float:
        """The current time, for inputs observed by a connection task."""
        return anyio.current_time()

    def apply(self, actions: list[Action], now: float) -> None:
        """Carry out the actions an input returned; re-arm the engine."""
        self._dispatch(actions, now)
        self.watch()

    def watch(self) -> None:
        """Tell the engine the machine's deadline may have moved earlier."""
        if self.machine.phase is Phase.CLOSED or self.failure is not None:
            self._engine.forget(self)
        else:
            self._engine.watch(self)

    def _dispatch(self, actions: list[Action], now: float) -> None:
        for action in actions:
            self._perform(action, now)
        if actions:
            self.notify()

    # -- waiting ---------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every :meth:`wait_until` (after anything they may be waiting for)."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` is true (checked after every action and notification)."""
        while not done():
            if self.failure is not None:
                raise self.failure
            await self._changed.wait()


def apply_actions(driver: SessionDriver | None, perform: Perform, actions: list[Action],
                  now: float) -> None:
    """Carry out an input's ``actions``: through ``driver`` (which re-arms the engine) once a
    session has one, else one by one with ``perform`` (before the driver exists)."""
    if driver is not None:
        driver.apply(actions, now)
    else:
        for action in actions:
            perform(action, now)


__all__ = ["SessionDriver", "apply_actions"]
