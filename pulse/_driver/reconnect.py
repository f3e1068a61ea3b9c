"""The one trio driver of :class:`~pulse._core.reconnect.ReconnectMachine`.

Rules this module keeps:

* **The engine keeps the time.** The driver is a timer client of
  :func:`~pulse._driver.engine.current_engine`: a wait between attempts is the machine's
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
* **The shared probe.** A driver given a ``destination`` (a hashable key, by convention
  ``(scheme, host, port)``) joins that destination's :class:`~pulse._core.reconnect.ProbeGate`
  in this trio run (one gate per destination, created on first use, dropped when idle; the
  gate is one more timer client of the engine, no task of its own). Before each attempt the
  driver asks the gate; while the destination is down the machine is ``HELD`` and the task
  sleeps until the gate names it for the probe or releases it. What counts as a transport
  failure: the attempt called :meth:`AttemptHandle.unreachable`, or it raised one of
  ``transport_errors`` (``OSError``, :class:`trio.TooSlowError`) before calling
  :meth:`AttemptHandle.reached` (or :meth:`AttemptHandle.connected`). Everything else —
  a handshake refused, an authentication error, anything after the transport was up — is
  the client's own and never holds the other clients back. ``destination=None`` (the
  default here; clients pass theirs unless told not to) keeps the client independent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence

import anyio
import anyio.lowlevel
import trio

from pulse._core.reconnect import (
    GiveUp,
    Probe,
    ProbeGate,
    ReconnectAction,
    ReconnectMachine,
    ReconnectState,
    StartAttempt,
    probe_backoff,
)
from pulse._driver.engine import Engine, current_engine
from pulse._log import get_logger
from pulse.actions import Reconnect
from pulse.errors import ReconnectGaveUp

log = get_logger("pulse.reconnect")


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed attempt or a lost connection."""
    if isinstance(exc, (trio.TooSlowError, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class AttemptHandle:
    """What one attempt's coroutine gets: ways to say how far it got."""

    __slots__ = ("_driver", "is_connected", "is_reached", "is_unreachable", "start")

    def __init__(self, driver: ReconnectDriver, start: StartAttempt) -> None:
        self._driver = driver
        self.start = start
        #: True once :meth:`connected` was called.
        self.is_connected = False
        #: True once :meth:`reached` (or :meth:`connected`) was called.
        self.is_reached = False
        #: True once :meth:`unreachable` was called.
        self.is_unreachable = False

    def reached(self) -> None:
        """The transport is up (TCP connected; the handshake may still fail): from now on a
        failure is this client's own, and a gate waiting on the destination opens.
        Idempotent."""
        if not self.is_reached:
            self.is_reached = True
            self._driver._reached()

    def unreachable(self, reason: str) -> str:
        """Mark this attempt as failed at the transport (refused, unreachable, connect
        timeout) for an attempt that returns its reason instead of raising; returns
        ``reason``: ``return handle.unreachable(f"connect failed: {exc}")``."""
        self.is_unreachable = True
        return reason

    @property
    def attempt(self) -> int:
        """Reconnect attempts since the backoff last reset (0: the first connect)."""
        return self.start.attempt

    def connected(self) -> None:
        """The connection is up (the backoff's stable period starts now). Idempotent."""
        if not self.is_connected:
            self.reached()
            self.is_connected = True
            self._driver._input(self._driver.machine.connected(anyio.current_time()))


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
        destination: Hashable | None = None,
        transport_errors: Sequence[type[BaseException]] = (OSError, trio.TooSlowError,
                                                           TimeoutError),
    ) -> None:
        self.machine = machine
        #: The key of the destination whose gate this client joins (None: no gate).
        self.destination = destination
        self._transport_errors = tuple(transport_errors)
        self._gates: dict[Hashable, _Gate] | None = None  # this run's gates, with a destination
        self._attempt = attempt
        self._retry_on = tuple(retry_on)
        self._describe = describe
        self._on_wait = on_wait
        self._on_give_up = on_give_up
        self._engine: Engine | None = None
        self._due: StartAttempt | None = None  # the attempt the machine asked for
        self._running = False  # an attempt (or its connection) is in flight
        self._wakeup = anyio.Event()
        self._crash: BaseException | None = None
        self._started = False
        #: The give-up, once the machine gave up.
        self.error: ReconnectGaveUp | None = None

    # -- the application ----------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise until :meth:`stop` or a give-up (then :attr:`error` is set); the
        in-flight attempt, if any, has ended when this returns."""
        engine = self._engine = current_engine()
        self._started = True
        if self.destination is not None:
            self._gates = _gates()
        try:
            now = anyio.current_time()
            gate = self._gate()
            if gate is not None and not gate.request(self, now):
                self._input(self.machine.hold(now))
            else:
                self._input(self.machine.start(now))
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
                self._wakeup = anyio.Event()
        finally:
            engine.forget(self)
            self._leave_gate()

    def stop(self) -> None:
        """No further attempts; an attempt in flight is left to finish."""
        self._input(self.machine.stop(anyio.current_time()))
        if not self._running:
            self._leave_gate()

    def retry_now(self) -> None:
        """Skip the running wait or the wait behind the gate (does nothing during an
        attempt or a connection, or before :meth:`run` started)."""
        if not self._started:
            return
        if self.machine.state is ReconnectState.HELD:
            self._leave_gate()  # the application asked for this attempt itself
        self._input(self.machine.retry_now(anyio.current_time()))

    @property
    def attempt_running(self) -> bool:
        """True while an attempt (or the connection it opened) is in flight."""
        return self._running

    # -- the engine -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The end of the machine's running wait."""
        return self.machine.next_deadline()

    def handle_timer(self, now: float) -> None:
        """The wait is over: start the attempt, or wait behind the gate if the destination
        is down (called by the engine, never awaits)."""
        machine = self.machine
        gate = self._gate() if machine.state is ReconnectState.WAITING else None
        if gate is not None and not gate.request(self, now):
            self._apply(machine.hold(now))
            return
        self._apply(machine.handle_timer(now))
        if machine.finished:
            self._leave_gate()

    def timer_failed(self, exc: Exception) -> None:
        """The engine reports an exception from :meth:`handle_timer`: end :meth:`run`."""
        self._crash = exc
        self._wakeup.set()

    # -- the gate -------------------------------------------------------------------------------

    def _go(self, now: float) -> None:
        """The gate names this client (the probe, or released after one): attempt now."""
        self._apply(self.machine.release(now))

    def _represented(self, now: float, reason: str) -> None:
        """A probe failed on this held client's behalf (counts for its give-up rules)."""
        self._apply(self.machine.represented(now, reason))
        if self.machine.finished:
            self._leave_gate()

    def _gate(self, *, create: bool = False) -> _Gate | None:
        """This destination's gate: the one in use, a new one with ``create``, else None
        (no gate: nothing is known to be wrong with the destination)."""
        gates, key = self._gates, self.destination
        if gates is None or key is None:
            return None
        gate = gates.get(key)
        if gate is None and create:
            assert self._engine is not None
            gate = gates[key] = _Gate(self._engine, gates, key,
                                      ProbeGate(probe_backoff(self.machine.backoff)))
        return gate

    def _reached(self) -> None:
        gate = self._gate()
        if gate is not None:
            gate.reached(self, anyio.current_time())

    def _leave_gate(self) -> None:
        gate = self._gate()
        if gate is not None:
            gate.leave(self, anyio.current_time())

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
        transport = False
        self._running = True
        try:
            reason = await self._attempt(handle)
        except ReconnectGaveUp as exc:
            gave_up = exc
            reason = str(exc)
        except self._retry_on as exc:
            reason = self._describe(exc)
            transport = isinstance(exc, self._transport_errors)
        finally:
            self._running = False
        now = anyio.current_time()
        machine = self.machine
        transport = (transport or handle.is_unreachable) and not handle.is_reached
        gate = self._gate(create=transport and not machine.finished)
        if gave_up is not None:
            self._input(machine.give_up(now, reason, gave_up))
        elif handle.is_connected:
            self._input(machine.lost(now, reason))
        elif gate is not None and transport and not machine.finished:
            was_probe = gate.gate.prober is self
            held = gate.unreachable(self, now)
            self._input(machine.failed(now, reason, hold=held))
            if was_probe:
                for member in gate.gate.waiting:
                    if member is not self and isinstance(member, ReconnectDriver):
                        member._represented(now, reason)
        else:
            if gate is not None and not handle.is_reached:
                gate.leave(self, now)  # no verdict on the transport: hand on any probe
            self._input(machine.failed(now, reason))
        if machine.finished:
            self._leave_gate()


class _Gate:
    """The engine's side of one destination's :class:`~pulse._core.reconnect.ProbeGate`:
    a timer client that hands the gate's probes and releases to the waiting drivers."""

    __slots__ = ("_engine", "_gates", "gate", "key")

    def __init__(self, engine: Engine, gates: dict[Hashable, _Gate], key: Hashable,
                 gate: ProbeGate) -> None:
        self._engine = engine
        self._gates = gates
        self.key = key
        self.gate = gate

    def next_deadline(self) -> float | None:
        return self.gate.next_deadline()

    def handle_timer(self, now: float) -> None:
        for action in self.gate.handle_timer(now):
            member = action.member
            assert isinstance(member, ReconnectDriver)
            if isinstance(action, Probe):
                log.debug("probe", destination=repr(self.key), waiting=len(self.gate.waiting))
            try:
                member._go(now)
            except Exception as exc:  # only that member's run ends
                self.gate.leave(member, now)
                member.timer_failed(exc)
        self._settle()

    def timer_failed(self, exc: Exception) -> None:
        """The gate itself raised (a bug): say so; its members' own give-up rules remain."""
        log.error("probe_gate_failed", destination=repr(self.key), error=repr(exc))

    def request(self, member: ReconnectDriver, now: float) -> bool:
        allowed = self.gate.request(member, now)
        self._settle()
        return allowed

    def reached(self, member: ReconnectDriver, now: float) -> None:
        was_down = self.gate.down
        self.gate.reached(member, now)
        if was_down:
            log.info("destination_back", destination=repr(self.key),
                     released=len(self.gate._releasing), probes=self.gate.probes)
        self._settle()

    def unreachable(self, member: ReconnectDriver, now: float) -> bool:
        was_down = self.gate.down
        held = self.gate.unreachable(member, now)
        if not was_down and self.gate.down:
            log.info("destination_down", destination=repr(self.key))
        self._settle()
        return held

    def leave(self, member: ReconnectDriver, now: float) -> None:
        self.gate.leave(member, now)
        self._settle()

    def _settle(self) -> None:
        if self.gate.idle:
            self._engine.forget(self)
            if self._gates.get(self.key) is self:
                del self._gates[self.key]
        else:
            self._engine.watch(self)


_GATES: anyio.lowlevel.RunVar[dict[Hashable, _Gate]] = anyio.lowlevel.RunVar("pulse_probe_gates")


def _gates() -> dict[Hashable, _Gate]:
    """This trio run's gates, by destination."""
    try:
        return _GATES.get()
    except LookupError:
        gates: dict[Hashable, _Gate] = {}
        _GATES.set(gates)
        return gates
