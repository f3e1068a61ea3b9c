"""Per-peer liveness: ``alive → suspect → dead``, driven by events, returning actions.

Rules this machine keeps:

* Any data received is proof of life (as ZooKeeper's ``touchSession``); a suspect peer that
  is heard from again is alive again.
* Heartbeats are sent only when the link is idle in the policy's ``idle_mode``: the first
  after ``interval`` of idleness, repeats every further ``interval`` while it stays idle.
  Each repeat sent while the previous heartbeat is unanswered counts a missed beat; the first
  missed beat makes the peer *suspect*.
* The failure detector (fixed timeout by default) alone declares the peer *dead*; that
  yields :class:`~pulse.actions.PeerDead` then :class:`~pulse.actions.Close`. Dead is final.
* Local-pause guard: when the driver wakes more than ``max_local_pause`` after the deadline
  it was given (a blocked event loop, a stopped process), the gap says nothing about the
  peer. The machine reports :class:`~pulse.actions.LocalPause`, sends a heartbeat at once
  and withholds any verdict for one ``interval`` so fresh evidence can arrive.
* Lossy-link profile (``policy.lossy``): a due verdict waits while the kernel facts the
  driver passes in (:meth:`Liveness.transport_progress`) show the peer's segments still
  arriving over a path that retransmits, up to a hard ceiling (:mod:`pulse._core.lossy`).
* Deadlines are lazy: events only store timestamps; ``next_deadline()`` computes the next
  moment anything can happen, and the driver sleeps until exactly then.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from pulse._core.detectors import FailureDetector, FixedTimeout
from pulse._core.lossy import LossyLinkJudge, TcpProgress
from pulse._core.policy import HeartbeatPolicy, IdleMode
from pulse._core.stats import GapStats, RttStats, RttSummary
from pulse.actions import (
    Action,
    Close,
    LocalPause,
    PeerAlive,
    PeerDead,
    PeerSuspect,
    SendPing,
)
from pulse.events import DataReceived, DataSent, Event, OutputProgress, PongReceived, Tick

#: How many unanswered heartbeats are remembered for RTT matching.
MAX_PINGS_IN_FLIGHT = 64


class LivenessState(enum.Enum):
    """Where the peer stands."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A snapshot of one peer's liveness statistics."""

    state: LivenessState
    rtt: RttSummary
    missed: int
    pings_sent: int
    pongs_received: int
    silent_for: float
    suspicion: float
    arrival_mean: float
    arrival_std: float


class Liveness:
    """Liveness of one peer under a :class:`HeartbeatPolicy`.

    ``now`` at construction is when the connection opened (it counts as evidence of life).
    """

    def __init__(
        self,
        policy: HeartbeatPolicy,
        now: float,
        *,
        detector: FailureDetector | None = None,
        next_seq: Callable[[], int] | None = None,
    ) -> None:
        self.policy = policy
        self.state = LivenessState.ALIVE
        if detector is None and policy.enabled:
            detector = FixedTimeout(policy.dead_after)
        self.detector = detector
        if detector is not None:
            detector.heartbeat(now)
        self._last_written = now  # completed writes and write progress (observe output)
        self._last_ping = -math.inf
        self.rtt = RttStats()
        #: Gaps between arrivals (weighted over about the last 16), the peer's rhythm.
        self.arrivals = GapStats()
        self.arrivals.arrival(now)
        self._last_received = now
        self._seq = 0
        self._next_seq = next_seq or self._count
        self._in_flight: dict[int, float] = {}  # in sending order
        self._unanswered = 0
        self._missed = 0
        self.pings_sent = 0
        self.pongs_received = 0
        self._armed: float | None = None
        self._verdict_withheld_until = float("-inf")
        #: The lossy-link judge when the policy asks for the profile (None otherwise).
        self.lossy: LossyLinkJudge | None = None
        if policy.lossy is not None and policy.enabled:
            self.lossy = LossyLinkJudge(policy.lossy, policy.dead_after)
        self._lossy_until = float("-inf")

    # -- events ---------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Feed one event object; same as calling the matching method."""
        if isinstance(event, PongReceived):
            return self.pong(event.now, event.seq)
        return _EVENT_METHODS[type(event)](self, event.now)

    def data_received(self, now: float) -> list[Action]:
        """Any data from the peer arrived."""
        if self.state is LivenessState.DEAD:
            return []
        silent = max(0.0, now - self._last_received)
        self._last_received = max(self._last_received, now)
        self.arrivals.arrival(now)
        if self.detector is not None:
            self.detector.heartbeat(now)
        self._unanswered = 0
        self._missed = 0
        self._lossy_until = float("-inf")
        if self.state is LivenessState.SUSPECT:
            self.state = LivenessState.ALIVE
            return [PeerAlive(after=silent)]
        return []

    def pong(self, now: float, seq: int) -> list[Action]:
        """The peer answered heartbeat ``seq`` (an unknown ``seq`` still proves life)."""
        sent = self._in_flight.pop(seq, None)
        if sent is not None and self.state is not LivenessState.DEAD:
            self.rtt.add(now - sent)
            self.pongs_received += 1
        return self.data_received(now)

    def data_sent(self, now: float) -> list[Action]:
        """A write to the peer completed."""
        self._last_written = max(self._last_written, now)
        return []

    def output_progress(self, now: float) -> list[Action]:
        """A long write is still making progress (so the writer is not idle)."""
        self._last_written = max(self._last_written, now)
        return []

    def transport_progress(self, now: float, facts: TcpProgress | None) -> list[Action]:
        """The kernel's view of the connection, sampled by the driver at ``now`` (used by the
        lossy-link profile; ignored without it). None: the transport could not say."""
        if self.lossy is not None and self.state is not LivenessState.DEAD:
            self.lossy.observe(now, facts)
        return []

    @property
    def wants_transport_progress(self) -> bool:
        """True when the driver should pass kernel facts in before each timer call."""
        return self.lossy is not None and self.state is not LivenessState.DEAD

    def handle_timer(self, now: float) -> list[Action]:
        """The driver woke up; returns what is due at ``now``."""
        if self.state is LivenessState.DEAD or not self.policy.enabled:
            return []
        actions: list[Action] = []
        force_ping = False
        assert self.policy.max_local_pause is not None
        if self._armed is not None and now - self._armed > self.policy.max_local_pause:
            actions.append(LocalPause(late_by=now - self._armed))
            self._verdict_withheld_until = now + self.policy.interval
            force_ping = True
        self._armed = None
        ping_due = now >= self._ping_due()
        if (
            self.detector is not None
            and now >= self._verdict_withheld_until
            and self.detector.is_dead(now)
            and not self._lossy_withholds(now)
        ):
            reason = self.detector.explain(now)
            if self.lossy is not None and self._lossy_until > -math.inf:
                reason += f"; {self.lossy.explain(now)}"  # the profile had waited
            self.state = LivenessState.DEAD
            silent = now - self._last_received
            self._missed = max(self._missed, self._unanswered)
            actions += [PeerDead(reason, self._missed, silent), Close(reason)]
            return actions
        if ping_due or force_ping:
            actions += self._send_ping(now)
        return actions

    def _lossy_withholds(self, now: float) -> bool:
        if self.lossy is None:
            return False
        until = self.lossy.withhold_until(now, self._last_received,
                                          deferring=self._lossy_until > -math.inf)
        if until is None:
            return False
        self._lossy_until = until
        return True

    def request_ping(self, now: float) -> list[Action]:
        """Send a heartbeat now, on demand (``pulse ping``); it is tracked like any other.

        Unlike idle-driven heartbeats this does not count a missed beat: an on-demand probe
        says nothing about the previous one.
        """
        if self.state is LivenessState.DEAD:
            return []
        return [self._track_ping(now)]

    def overslept(self, now: float) -> bool:
        """True when ``now`` is more than ``max_local_pause`` past the deadline last handed out
        and :meth:`handle_timer` has not run since: the driver slept through its deadline (a
        stopped process, a blocked loop) and has not noticed yet. A driver about to act on
        the connection calls :meth:`handle_timer` first, so the pause is reported and the
        connection is checked before it is trusted again."""
        assert self.policy.max_local_pause is not None
        return self._armed is not None and now - self._armed > self.policy.max_local_pause

    def _track_ping(self, now: float) -> SendPing:
        seq = self._next_seq()
        self._in_flight[seq] = now
        while len(self._in_flight) > MAX_PINGS_IN_FLIGHT:
            del self._in_flight[next(iter(self._in_flight))]
        self.pings_sent += 1
        return SendPing(seq, now)

    def _count(self) -> int:
        self._seq += 1
        return self._seq

    def _send_ping(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._unanswered > 0:
            self._missed = self._unanswered
        self._unanswered += 1
        self._last_ping = now
        self._last_written = max(self._last_written, now)
        actions.append(self._track_ping(now))
        if self._missed >= 1 and self.state is LivenessState.ALIVE:
            self.state = LivenessState.SUSPECT
            actions.append(PeerSuspect(self._missed, now - self._last_received))
        return actions

    # -- queries --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the driver must call :meth:`handle_timer` next (None: nothing will ever be due).

        The value returned is remembered: waking much later than it is how the machine
        notices a local pause.
        """
        if self.state is LivenessState.DEAD or not self.policy.enabled:
            self._armed = None
            return None
        due = self._ping_due()
        if self.detector is not None:
            dead_at = self.detector.dead_at()
            if dead_at is not None:
                due = min(due, max(dead_at, self._verdict_withheld_until, self._lossy_until))
        self._armed = due
        return due

    def _ping_due(self) -> float:
        # Lazy, as Netty's idle handler: only timestamps are stored; the deadline is derived.
        # A heartbeat is due one interval after the later of the relevant activity and the
        # last heartbeat, so while the silence lasts heartbeats repeat every interval.
        read, written, mode = self._last_received, self._last_written, self.policy.idle_mode
        if mode is IdleMode.READER:
            activity = read
        elif mode is IdleMode.WRITER:
            activity = written
        elif mode is IdleMode.ALL:
            activity = max(read, written)
        else:  # EITHER
            activity = min(read, written)
        return max(activity, self._last_ping) + self.policy.interval

    @property
    def missed(self) -> int:
        """Heartbeats missed in a row (0 once anything arrives)."""
        return self._missed

    @property
    def last_received(self) -> float:
        """When anything last arrived from the peer."""
        return self._last_received

    @property
    def last_sent(self) -> float:
        """When a write to the peer last completed (heartbeats included)."""
        return self._last_written

    def is_in_flight(self, seq: int) -> bool:
        """True if ``seq`` is one of the (last 64) heartbeats still awaiting an answer."""
        return seq in self._in_flight

    def stats(self, now: float) -> PeerStats:
        """A snapshot of the statistics at ``now``."""
        suspicion = self.detector.suspicion(now) if self.detector is not None else 0.0
        return PeerStats(
            self.state, self.rtt.summary(), self._missed, self.pings_sent,
            self.pongs_received, max(0.0, now - self._last_received), suspicion,
            self.arrivals.mean(), self.arrivals.std(),
        )


#: The method each event object stands for (PongReceived, which carries a seq, aside).
_EVENT_METHODS: dict[type, Callable[[Liveness, float], list[Action]]] = {
    DataReceived: Liveness.data_received,
    DataSent: Liveness.data_sent,
    OutputProgress: Liveness.output_progress,
    Tick: Liveness.handle_timer,
}
