"""The reconnect supervisor: when to try again, as a pure state machine.

Every reconnecting client in pulse (``reconnecting_tcp``, the WebSocket client, the
``pulse.rpc`` / Dubbo consumer, ``pulse agent``) follows these rules through one
:class:`ReconnectMachine`; its trio driver is :mod:`pulse._trio.reconnect`.

Rules this module keeps:

* **Single flight.** At most one attempt is ever in flight. The machine hands out
  :class:`StartAttempt` only from ``IDLE``/``WAITING`` and moves to ``ATTEMPTING``; nothing
  starts another attempt until that one reports :meth:`~ReconnectMachine.connected`,
  :meth:`~ReconnectMachine.failed` or :meth:`~ReconnectMachine.lost`. Any number of triggers
  (dead peer, socket error, close frame, an application's ``reconnect()``) end in one
  :meth:`~ReconnectMachine.lost` and one wait.
* **The first connect is immediate**; every later attempt waits a delay from the
  :class:`~pulse._core.backoff.Backoff`: **full jitter on every attempt, including the first
  one after a lost connection** (``uniform(0, ceiling)``), so a thousand clients that lose
  their server at the same instant spread over the whole first window instead of coming
  back together. The ceiling grows by ``multiplier`` per attempt up to ``maximum`` (the cap).
* **Backoff resets only after a stable connection**: a connection that stayed up at least
  ``backoff.reset_after`` seconds starts the delays over; one that drops sooner keeps the
  client backing off (a peer that accepts and drops at once is not hammered).
* **Give-up rules** (both optional): ``backoff.max_attempts`` delays per outage, and
  ``max_elapsed`` seconds since the outage began (the first failure or loss after the last
  stable connection). When either is used up the machine emits :class:`GiveUp` carrying a
  :class:`~pulse.errors.ReconnectGaveUp` and stays ``GAVE_UP``. A driver may also give up on
  the peer's word (:meth:`~ReconnectMachine.give_up`: an HTTP 401, a close code that means
  "do not come back").
* **Skipping the wait**: :meth:`~ReconnectMachine.retry_now` turns a running wait into an
  attempt at once; during an attempt or a connection it does nothing (single flight).
* **Terminal states** (``STOPPED`` by the application, ``GAVE_UP``) ignore every further
  input: late reports from an attempt being torn down are harmless.
* Time is an argument (``now``); randomness comes from the backoff's ``rng``.
* Timer contract: :meth:`~ReconnectMachine.next_deadline` is the end of the running wait
  (None otherwise), :meth:`~ReconnectMachine.handle_timer` starts the attempt that is due.

Transitions (a pair missing from the table is a driver bug: :class:`ReconnectStateError`)::

    state        input           -> state        actions
    IDLE         start           -> ATTEMPTING   StartAttempt
    IDLE         retry_now       -> ATTEMPTING   StartAttempt
    WAITING      timer due       -> ATTEMPTING   StartAttempt
    WAITING      retry_now       -> ATTEMPTING   StartAttempt
    WAITING      start           -> WAITING      (nothing: already supervising)
    ATTEMPTING   connected       -> CONNECTED    (nothing)
    ATTEMPTING   failed / lost   -> WAITING      Reconnect(delay)   | GAVE_UP  GiveUp
    CONNECTED    lost / failed   -> WAITING      Reconnect(delay)   | GAVE_UP  GiveUp
    ATTEMPTING,
    CONNECTED    start/retry_now -> (unchanged)  (nothing: single flight)
    any live     give_up         -> GAVE_UP      GiveUp
    any live     stop            -> STOPPED      (nothing)
    STOPPED,
    GAVE_UP      anything        -> (unchanged)  (nothing)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pulse._core._checks import check_positive
from pulse._core.backoff import Backoff, Growth
from pulse.actions import Reconnect
from pulse.errors import PulseError, ReconnectGaveUp

#: The default reconnect backoff of every pulse client (see :func:`default_backoff`).
DEFAULT_INITIAL = 3.0
DEFAULT_MAXIMUM = 30.0
DEFAULT_MULTIPLIER = 1.0


def default_backoff() -> Backoff:
    """The backoff every reconnecting client uses unless given one: full jitter below a
    ceiling that follows the outage's age (``Growth.OUTAGE``): ``max(DEFAULT_INITIAL,
    DEFAULT_MULTIPLIER * outage age)``, at most :data:`DEFAULT_MAXIMUM` seconds; forever;
    reset after a connection stayed up 30 s.

    So a client is back at most ``max(3 s, the outage's length)`` after the server is, while
    a thousand clients that lost it together spread over 3 s and then thin out: measured with
    ``benchmarks/bench_reconnect_storm.py`` (see ``docs/reconnect.md``)."""
    return Backoff(DEFAULT_INITIAL, DEFAULT_MAXIMUM, DEFAULT_MULTIPLIER, growth=Growth.OUTAGE)


class ReconnectState(enum.Enum):
    """Where a :class:`ReconnectMachine` stands."""

    IDLE = "idle"  # not started
    ATTEMPTING = "attempting"  # one attempt in flight
    CONNECTED = "connected"  # the attempt succeeded; the connection is up
    WAITING = "waiting"  # a (jittered) delay runs before the next attempt
    STOPPED = "stopped"  # stopped by the application (terminal)
    GAVE_UP = "gave_up"  # a give-up rule fired (terminal)


TERMINAL = frozenset({ReconnectState.STOPPED, ReconnectState.GAVE_UP})


@dataclass(frozen=True, slots=True)
class StartAttempt:
    """Begin connection attempt number ``attempt`` now (``total`` counts every attempt
    since the machine started, ``attempt`` only those since the backoff last reset; the very
    first connect is attempt 0)."""

    attempt: int
    total: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop for good: ``error`` says why (raise it to the application)."""

    error: ReconnectGaveUp


ReconnectAction = StartAttempt | Reconnect | GiveUp


class ReconnectStateError(PulseError):
    """A driver reported something that cannot happen in the machine's state (a bug)."""


class ReconnectMachine:
    """Reconnect supervision for one client (see the module docstring for the rules)."""

    __slots__ = (
        "_connected_at",
        "_deadline",
        "_outage_since",
        "backoff",
        "connects",
        "last_reason",
        "max_elapsed",
        "state",
        "total_attempts",
    )

    def __init__(self, backoff: Backoff | None = None, *, max_elapsed: float | None = None) -> None:
        if max_elapsed is not None:
            check_positive("max_elapsed", max_elapsed)
        self.backoff = backoff if backoff is not None else default_backoff()
        self.max_elapsed = None if max_elapsed is None else float(max_elapsed)
        self.state = ReconnectState.IDLE
        #: Attempts started so far (the first connect included).
        self.total_attempts = 0
        #: Attempts that connected so far.
        self.connects = 0
        #: Why the last attempt failed or the last connection ended.
        self.last_reason = ""
        self._deadline: float | None = None
        self._connected_at: float | None = None
        self._outage_since: float | None = None

    # -- the timer contract ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the running wait ends (None unless ``WAITING``)."""
        return self._deadline

    def handle_timer(self, now: float) -> list[ReconnectAction]:
        """Start the attempt whose wait is over (nothing if none is due at ``now``)."""
        deadline = self._deadline
        if self.state is not ReconnectState.WAITING or deadline is None or now < deadline:
            return []
        return self._attempt()

    # -- inputs from the driver ------------------------------------------------------------

    def start(self, now: float) -> list[ReconnectAction]:
        """Begin supervising: the first attempt starts at once."""
        if self.state is ReconnectState.IDLE:
            return self._attempt()
        return []

    def retry_now(self, now: float) -> list[ReconnectAction]:
        """Cut a running wait short (an attempt or a live connection is left alone)."""
        if self.state in (ReconnectState.IDLE, ReconnectState.WAITING):
            return self._attempt()
        return []

    def connected(self, now: float) -> list[ReconnectAction]:
        """The attempt in flight succeeded at ``now``."""
        if self.state in TERMINAL:
            return []
        if self.state is not ReconnectState.ATTEMPTING:
            raise ReconnectStateError(f"connected while {self.state.value}: no attempt in flight")
        self.state = ReconnectState.CONNECTED
        self.connects += 1
        self._connected_at = now
        self.backoff.connected(now)
        return []

    def failed(self, now: float, reason: str = "connect failed") -> list[ReconnectAction]:
        """The attempt in flight failed at ``now`` (or the connection ended, as :meth:`lost`)."""
        return self._ended(now, reason)

    def lost(self, now: float, reason: str = "connection lost") -> list[ReconnectAction]:
        """The connection (or the attempt in flight) ended at ``now``."""
        return self._ended(now, reason)

    def give_up(
        self, now: float, reason: str, error: ReconnectGaveUp | None = None
    ) -> list[ReconnectAction]:
        """Stop for good on the peer's word (a refusal retrying cannot cure); ``error`` is
        the exception to hand on (a new one with ``reason`` by default)."""
        if self.state in TERMINAL:
            return []
        self.last_reason = reason
        return self._give_up(reason, error)

    def stop(self, now: float) -> list[ReconnectAction]:
        """The application is done: no further attempts."""
        if self.state not in TERMINAL:
            self.state = ReconnectState.STOPPED
            self._deadline = None
        return []

    # -- queries ----------------------------------------------------------------------------

    @property
    def attempt(self) -> int:
        """Delays handed out since the backoff last reset (0 before the first reconnect)."""
        return self.backoff.attempts

    @property
    def outage_since(self) -> float | None:
        """When the current outage began (None while none is running)."""
        return self._outage_since

    @property
    def finished(self) -> bool:
        """True once stopped or given up."""
        return self.state in TERMINAL

    # -- internals --------------------------------------------------------------------------

    def _attempt(self) -> list[ReconnectAction]:
        self.state = ReconnectState.ATTEMPTING
        self._deadline = None
        self.total_attempts += 1
        return [StartAttempt(self.backoff.attempts, self.total_attempts)]

    def _ended(self, now: float, reason: str) -> list[ReconnectAction]:
        state = self.state
        if state in TERMINAL:
            return []
        if state not in (ReconnectState.ATTEMPTING, ReconnectState.CONNECTED):
            raise ReconnectStateError(f"an attempt ended while {state.value}: none was in flight")
        self.last_reason = reason
        if state is ReconnectState.CONNECTED:
            stable = self._connected_at is not None and (
                now - self._connected_at >= self.backoff.reset_after
            )
            self.backoff.disconnected(now)  # resets the backoff after a stable connection
            self._connected_at = None
            if stable:
                self._outage_since = None
        if self._outage_since is None:
            self._outage_since = now
        if self.max_elapsed is not None and now - self._outage_since >= self.max_elapsed:
            return self._give_up(
                f"gave up after {now - self._outage_since:.3g} s without a stable connection"
                f" ({self.total_attempts} attempts): {reason}"
            )
        delay = self.backoff.next_delay(now - self._outage_since)
        if delay is None:
            return self._give_up(f"gave up after {self.backoff.attempts} attempts: {reason}")
        self.state = ReconnectState.WAITING
        self._deadline = now + delay
        return [Reconnect(delay=delay, attempt=self.backoff.attempts)]

    def _give_up(self, reason: str, error: ReconnectGaveUp | None = None) -> list[ReconnectAction]:
        self.state = ReconnectState.GAVE_UP
        self._deadline = None
        self._connected_at = None
        return [GiveUp(error if error is not None else ReconnectGaveUp(reason))]
