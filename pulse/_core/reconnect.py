"""The reconnect supervisor: when to try again, as a pure state machine.

Every reconnecting client in pulse (``reconnecting_tcp``, the WebSocket client, the
``pulse.rpc`` / Dubbo consumer, ``pulse agent``) follows these rules through one
:class:`ReconnectMachine`; its trio driver is :mod:`pulse._driver.reconnect`.

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
* **Held behind a gate.** A client whose destination is known to be down waits ``HELD``
  behind that destination's :class:`ProbeGate` instead of running its own backoff: it makes
  no attempt until the gate releases it (:meth:`~ReconnectMachine.release`). While held its
  only deadline is the ``max_elapsed`` give-up; every failed probe counts as one attempt made
  on its behalf (:meth:`~ReconnectMachine.represented`), so ``max_attempts`` still applies.

The shared probe (:class:`ProbeGate`, one per destination and process, driven by the same
driver): while a destination refuses or cannot be reached, one attempt at a time — the
probe, on the gate's own jittered (fully, by default), capped backoff — stands for every client waiting on
it. When a probe reaches the destination the waiting clients are released at random times
spread over a window, each then making its own attempt; a released client whose own attempt
fails goes back to its own backoff. Only transport failures (refused, unreachable, connect
timeout) are reported to a gate: a handshake or authentication refusal of one client does
not hold the others back.

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
    ATTEMPTING   failed(hold)    -> HELD         (nothing)          | GAVE_UP  GiveUp
    IDLE,
    WAITING      hold            -> HELD         (nothing)
    HELD         release         -> ATTEMPTING   StartAttempt
    HELD         retry_now       -> ATTEMPTING   StartAttempt
    HELD         represented     -> HELD         (nothing)          | GAVE_UP  GiveUp
    HELD         timer due       -> GAVE_UP      GiveUp (max_elapsed)
    ATTEMPTING,
    CONNECTED    start/retry_now -> (unchanged)  (nothing: single flight)
    any live     give_up         -> GAVE_UP      GiveUp
    any live     stop            -> STOPPED      (nothing)
    STOPPED,
    GAVE_UP      anything        -> (unchanged)  (nothing)
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Hashable
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
    HELD = "held"  # waiting behind the destination's probe gate (no attempts of its own)
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
        if deadline is None or now < deadline:
            return []
        if self.state is ReconnectState.HELD:  # the only deadline while held: max_elapsed
            return self._give_up(self._elapsed_reason(now, self.last_reason))
        if self.state is not ReconnectState.WAITING:
            return []
        return self._attempt()

    # -- inputs from the driver ------------------------------------------------------------

    def start(self, now: float) -> list[ReconnectAction]:
        """Begin supervising: the first attempt starts at once."""
        if self.state is ReconnectState.IDLE:
            return self._attempt()
        return []

    def retry_now(self, now: float) -> list[ReconnectAction]:
        """Cut a running wait (or a hold) short (an attempt or a live connection is left
        alone)."""
        if self.state in (ReconnectState.IDLE, ReconnectState.WAITING, ReconnectState.HELD):
            return self._attempt()
        return []

    def hold(self, now: float) -> list[ReconnectAction]:
        """Instead of starting the attempt that is due (or the first connect), wait behind
        the destination's gate: no attempt until :meth:`release`."""
        state = self.state
        if state in TERMINAL:
            return []
        if state not in (ReconnectState.IDLE, ReconnectState.WAITING):
            raise ReconnectStateError(f"hold while {state.value}: only a waiting client holds")
        if self._outage_since is None:
            self._outage_since = now
        self._held()
        return []

    def release(self, now: float) -> list[ReconnectAction]:
        """The gate lets this held client attempt now (as the probe, or after one)."""
        if self.state in TERMINAL:
            return []
        if self.state is not ReconnectState.HELD:
            raise ReconnectStateError(f"release while {self.state.value}: not held")
        return self._attempt()

    def represented(self, now: float, reason: str = "probe failed") -> list[ReconnectAction]:
        """A probe made on this held client's behalf failed at ``now``: it counts as one of
        the client's attempts for the give-up rules (no delay is waited: the gate keeps the
        time)."""
        if self.state is not ReconnectState.HELD:
            return []
        self.last_reason = reason
        if self._outage_since is not None and self._elapsed_out(now):
            return self._give_up(self._elapsed_reason(now, reason))
        if self.backoff.next_delay(now - (self._outage_since or now)) is None:
            return self._give_up(f"gave up after {self.backoff.attempts} attempts: {reason}")
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

    def failed(
        self, now: float, reason: str = "connect failed", *, hold: bool = False
    ) -> list[ReconnectAction]:
        """The attempt in flight failed at ``now`` (or the connection ended, as :meth:`lost`).

        With ``hold`` the client then waits behind its destination's gate (``HELD``) instead
        of waiting a delay of its own; the failure still counts for the give-up rules."""
        return self._ended(now, reason, hold)

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

    def _ended(self, now: float, reason: str, hold: bool = False) -> list[ReconnectAction]:
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
        if self._elapsed_out(now):
            return self._give_up(self._elapsed_reason(now, reason))
        delay = self.backoff.next_delay(now - self._outage_since)
        if delay is None:
            return self._give_up(f"gave up after {self.backoff.attempts} attempts: {reason}")
        if hold:
            self._held()
            return []
        self.state = ReconnectState.WAITING
        self._deadline = now + delay
        return [Reconnect(delay=delay, attempt=self.backoff.attempts)]

    def _held(self) -> None:
        self.state = ReconnectState.HELD
        since = self._outage_since
        # The only deadline while held: the max_elapsed give-up (the gate keeps the rest).
        self._deadline = (None if self.max_elapsed is None or since is None
                          else since + self.max_elapsed)

    def _elapsed_out(self, now: float) -> bool:
        since = self._outage_since
        return self.max_elapsed is not None and since is not None and (
            now - since >= self.max_elapsed)

    def _elapsed_reason(self, now: float, reason: str) -> str:
        since = self._outage_since if self._outage_since is not None else now
        return (f"gave up after {now - since:.3g} s without a stable connection"
                f" ({self.total_attempts} attempts): {reason}")

    def _give_up(self, reason: str, error: ReconnectGaveUp | None = None) -> list[ReconnectAction]:
        self.state = ReconnectState.GAVE_UP
        self._deadline = None
        self._connected_at = None
        return [GiveUp(error if error is not None else ReconnectGaveUp(reason))]


# -- the shared probe ---------------------------------------------------------------------------

#: After a successful probe the waiting clients are released at ``uniform(0, window)``
#: seconds (so a restarted server is not hit by all of them within one 100 ms).
DEFAULT_RELEASE_WINDOW = 0.5
#: A probe standing for n waiting clients comes ``min(n, DEFAULT_MAX_SPEEDUP)`` times as
#: often as one client's retries would (its delays are divided by that factor).
DEFAULT_MAX_SPEEDUP = 4.0


def probe_backoff(like: Backoff) -> Backoff:
    """The backoff of a gate opened by a client with backoff ``like``: the same ceilings
    (initial, maximum, multiplier, growth) and jitter (full by default), no attempt limit
    (the waiting clients' own give-up rules apply to them), ``like``'s random source, and
    ``like``'s progress (its attempt count). A gate with a single client therefore probes as
    that client alone would have retried."""
    probe = Backoff(like.initial, like.maximum, like.multiplier, like.jitter,
                    reset_after=like.reset_after, rng=like.rng, growth=like.growth)
    # Carry on where the client's own backoff stands (its count and decorrelated state), as
    # its next retry would have.
    probe._attempts = like._attempts
    probe._previous = like._previous
    return probe


@dataclass(frozen=True, slots=True)
class Probe:
    """``member`` makes the one attempt that finds out whether the destination is back."""

    member: Hashable


@dataclass(frozen=True, slots=True)
class Release:
    """A probe reached the destination: ``member`` makes its own attempt now."""

    member: Hashable


GateAction = Probe | Release


class ProbeGate:
    """One destination's shared probing for the clients of one process (module docstring).

    Members are the clients' hashable tokens (the driver uses itself). Inputs: a member
    asks before an attempt (:meth:`request`: False means it is now waiting behind the gate),
    reports a transport verdict (:meth:`reached`, :meth:`unreachable`) or goes away
    (:meth:`leave`). Outputs come from the timer: :class:`Probe` (one member attempts for
    all) and :class:`Release` (after a successful probe, one member's own attempt).

    Rules:

    * **Open** (nothing known to be wrong): :meth:`request` lets every attempt through.
    * A member's transport failure while open closes the gate (``down``) and makes the
      member wait, unless the gate is **recovering** (releases pending or released members
      not yet heard from): then the failure is that member's own, and it backs off by itself.
    * **Down**: members that ask wait; members whose attempt was already in flight and fails
      wait too. One probe at a time: at the gate's deadline the longest-waiting member gets
      :class:`Probe`. A failed probe puts its member back at the end of the queue and draws
      the next probe time from the gate's backoff (jittered, capped; the outage's age
      counts from the failure that closed the gate), divided by ``min(n, max_speedup)`` for
      n waiting members: one probe standing for many may come a few times as often as one
      client's retries, while a single client probes exactly as it would have retried.
    * Any member reaching the destination (the probe, or an attempt already in flight)
      opens the gate: every waiting member gets a release time ``uniform(0, release_window)``
      later, and the backoff resets.
    * A member leaving (cancelled, stopped, given up, a non-transport failure) is forgotten;
      if it held the probe, the next waiting member probes at once. A down gate that nobody
      waits on any more opens again (the next client finds out for itself).
    """

    __slots__ = (
        "_order",
        "_probe_at",
        "_prober",
        "_released",
        "_releases",
        "_releasing",
        "_waiting",
        "backoff",
        "down",
        "max_speedup",
        "outage_since",
        "probes",
        "release_window",
    )

    def __init__(
        self,
        backoff: Backoff,
        *,
        release_window: float = DEFAULT_RELEASE_WINDOW,
        max_speedup: float = DEFAULT_MAX_SPEEDUP,
    ) -> None:
        if not release_window >= 0 or release_window == float("inf"):
            raise ValueError(f"release_window must be finite and >= 0, got {release_window!r}")
        if not 1 <= max_speedup < float("inf"):
            raise ValueError(f"max_speedup must be finite and >= 1, got {max_speedup!r}")
        self.backoff = backoff
        self.release_window = float(release_window)
        self.max_speedup = float(max_speedup)
        #: True while the destination is known to refuse or be unreachable.
        self.down = False
        #: When the gate closed (None while open).
        self.outage_since: float | None = None
        #: Probes handed out so far.
        self.probes = 0
        self._waiting: dict[Hashable, None] = {}  # insertion order: longest waiting first
        self._prober: Hashable | None = None
        self._probe_at: float | None = None
        self._releasing: dict[Hashable, float] = {}
        self._releases: list[tuple[float, int, Hashable]] = []
        self._released: set[Hashable] = set()
        self._order = itertools.count()

    # -- the timer contract ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The next probe (while down and no probe in flight) or release, whichever first."""
        releases = self._releases
        while releases and self._releasing.get(releases[0][2]) != releases[0][0]:
            heapq.heappop(releases)  # stale: the member left or is waiting again
        first = releases[0][0] if releases else None
        probe = self._probe_at if self.down and self._prober is None else None
        if probe is None:
            return first
        return probe if first is None else min(probe, first)

    def handle_timer(self, now: float) -> list[GateAction]:
        """Hand out the releases and the probe due at ``now``."""
        actions: list[GateAction] = []
        releases, releasing = self._releases, self._releasing
        while releases and releases[0][0] <= now:
            when, _, member = heapq.heappop(releases)
            if releasing.get(member) != when:
                continue
            del releasing[member]
            self._released.add(member)
            actions.append(Release(member))
        probe_at = self._probe_at
        if (self.down and self._prober is None and probe_at is not None and probe_at <= now
                and self._waiting):
            member = next(iter(self._waiting))
            del self._waiting[member]
            self._prober = member
            self._probe_at = None
            self.probes += 1
            actions.append(Probe(member))
        return actions

    # -- inputs ------------------------------------------------------------------------------

    def request(self, member: Hashable, now: float) -> bool:
        """``member`` is about to attempt: True lets it, False means it now waits behind
        the gate (until a :class:`Probe` or :class:`Release` names it)."""
        if not self.down:
            return True
        self._wait(member)
        if self._prober is None and self._probe_at is None:
            self._probe_at = now
        return False

    def reached(self, member: Hashable, now: float) -> None:
        """``member``'s transport connected: the destination is back (opens a down gate)."""
        self._released.discard(member)
        if member == self._prober:
            self._prober = None
        if self.down:
            self._open(now)

    def unreachable(self, member: Hashable, now: float) -> bool:
        """``member``'s attempt failed at the transport (refused, unreachable, connect
        timeout). True: the member now waits behind the gate; False: the failure is its own
        (the gate is recovering) and it backs off by itself."""
        if member == self._prober:
            self._prober = None
            self._waiting[member] = None  # to the end of the queue
            self._schedule_probe(now)
            return True
        released = member in self._released
        self._released.discard(member)
        if self.down:
            self._wait(member)
            return True
        if released or self.recovering:
            return False
        self.down = True
        self.outage_since = now
        self._wait(member)
        self._schedule_probe(now)
        return True

    def leave(self, member: Hashable, now: float) -> None:
        """``member`` no longer waits (cancelled, stopped, given up, or its attempt ended
        without a transport verdict); a probe it held passes to the next waiting member."""
        self._waiting.pop(member, None)
        self._releasing.pop(member, None)
        self._released.discard(member)
        if member == self._prober:
            self._prober = None
            if self.down:
                self._probe_at = now
        if self.down and self._prober is None and not self._waiting:
            self._reset()

    # -- queries -----------------------------------------------------------------------------

    @property
    def waiting(self) -> list[Hashable]:
        """Members waiting behind the gate, longest first (the probe in flight excluded)."""
        return list(self._waiting)

    @property
    def prober(self) -> Hashable | None:
        """The member whose attempt is the probe in flight (None otherwise)."""
        return self._prober

    @property
    def recovering(self) -> bool:
        """True while released members are pending or have not reported yet."""
        return bool(self._releasing or self._released)

    @property
    def idle(self) -> bool:
        """True when the gate holds no state worth keeping (open, nobody waiting)."""
        return not (self.down or self._waiting or self._releasing or self._released
                    or self._prober is not None)

    # -- internals ---------------------------------------------------------------------------

    def _wait(self, member: Hashable) -> None:
        self._releasing.pop(member, None)
        self._waiting[member] = None

    def _schedule_probe(self, now: float) -> None:
        since = self.outage_since if self.outage_since is not None else now
        delay = self.backoff.next_delay(now - since)
        if delay is None:
            delay = self.backoff.maximum
        self._probe_at = now + delay / min(max(1, len(self._waiting)), self.max_speedup)

    def _open(self, now: float) -> None:
        waiting = list(self._waiting)
        self._reset()
        window = self.release_window
        rng = self.backoff.rng
        for member in waiting:
            when = now + rng.uniform(0.0, window)
            self._releasing[member] = when
            heapq.heappush(self._releases, (when, next(self._order), member))

    def _reset(self) -> None:
        self.down = False
        self.outage_since = None
        self._probe_at = None
        self._prober = None
        self._waiting.clear()
        self.backoff.reset()
