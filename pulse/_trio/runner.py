"""Run a pure liveness machine under trio: sleep exactly until its next deadline.

There is no polling loop: one task sleeps in a cancel scope whose deadline is the machine's
``next_deadline()``; every event fed to the machine re-arms that deadline (moving it later
costs nothing but an attribute write), and the task wakes only when something is due.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from pulse._core.liveness import Liveness
from pulse.actions import Action, SendPing
from pulse.events import DataReceived, DataSent, Event, OutputProgress, PongReceived, Tick

SendPingFn = Callable[[SendPing], Awaitable[None]]
ActionFn = Callable[[Action], None]


class LivenessRunner:
    """Drives one :class:`~pulse._core.liveness.Liveness` in trio.

    ``send_ping`` is awaited for every :class:`~pulse.actions.SendPing`; every other action
    goes to ``on_action`` (synchronously, in order). ``evidence_pending()``, when given, is
    asked before each tick: True means bytes from the peer are waiting for us (our own
    consumer is slow), which counts as having heard from the peer just now. :meth:`run`
    returns once the peer is declared dead; otherwise it runs until cancelled.
    """

    def __init__(
        self,
        liveness: Liveness,
        send_ping: SendPingFn,
        on_action: ActionFn,
        evidence_pending: Callable[[], bool] | None = None,
    ) -> None:
        self.liveness = liveness
        self._evidence_pending = evidence_pending
        self._send_ping = send_ping
        self._on_action = on_action
        self._scope: trio.CancelScope | None = None
        self._pending_pings: list[SendPing] = []
        self._wakeup = trio.Event()

    # -- feeding events ------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Give the machine one event and carry out what it returns."""
        self._dispatch(self.liveness.handle(event))
        self._rearm()

    def received(self) -> None:
        """Anything arrived from the peer."""
        self.feed(DataReceived(trio.current_time()))

    def sent(self) -> None:
        """A write completed."""
        self.feed(DataSent(trio.current_time()))

    def progress(self) -> None:
        """A long write made progress."""
        self.feed(OutputProgress(trio.current_time()))

    def pong(self, seq: int) -> None:
        """The peer answered heartbeat ``seq``."""
        self.feed(PongReceived(trio.current_time(), seq))

    def request_ping(self) -> SendPing | None:
        """Register an on-demand heartbeat with the machine and return it for the caller to
        send at once (None when the peer is already dead)."""
        actions = self.liveness.request_ping(trio.current_time())
        self._rearm()
        return next((a for a in actions if isinstance(a, SendPing)), None)

    # -- the one sleeping task -----------------------------------------------------------

    async def run(self) -> None:
        """Sleep until each deadline, tick, carry out the actions; return when done."""
        while True:
            deadline = self.liveness.next_deadline()
            if deadline is None and not self._pending_pings:
                if self.liveness.state.value == "dead":
                    return
                deadline = math.inf
            with trio.CancelScope(deadline=deadline if deadline is not None else math.inf) as scope:
                self._scope = scope
                if not self._pending_pings:
                    await trio.sleep_forever()
            self._scope = None
            if scope.cancelled_caught and not self._pending_pings:
                now = trio.current_time()
                if self._evidence_pending is not None and self._evidence_pending():
                    self._dispatch(self.liveness.handle(DataReceived(now)))
                self._dispatch(self.liveness.handle(Tick(now)))
            while self._pending_pings:
                await self._send_ping(self._pending_pings.pop(0))

    def _rearm(self) -> None:
        if self._scope is None:
            return
        if self._pending_pings:
            self._scope.cancel()
            return
        deadline = self.liveness.next_deadline()
        self._scope.deadline = math.inf if deadline is None else deadline

    def _dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendPing):
                self._pending_pings.append(action)
            else:
                self._on_action(action)
