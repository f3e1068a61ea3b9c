"""Dubbo's per-channel heartbeat rules (both sides of an RPC link), on the shared core.

:class:`ChannelHeartbeat` is :class:`~pulse._core.liveness.Liveness` configured with Dubbo's
timing (``IdleMode.EITHER``, a fixed read timeout, ids from the framework's allocator), so the
heartbeat, suspicion, verdict and local-pause rules are the very ones every other transport
uses.

Rules this machine keeps (Apache Dubbo's ``HeartbeatTimerTask``, ``ReconnectTimerTask`` and
``CloseTimerTask``, with exact deadlines instead of Dubbo's ``heartbeat / 3`` polling):

* **Both sides** send a heartbeat (a two-way request) when the channel has read nothing *or*
  written nothing for ``heartbeat`` seconds (default 60), exactly Dubbo's test
  ``now - lastRead > heartbeat || now - lastWrite > heartbeat``. While the silence lasts the
  heartbeat repeats every ``heartbeat`` seconds (Dubbo repeats on every check tick).
* Any frame read is proof of life: application frames, heartbeat requests and responses
  alike. Two-way traffic therefore suppresses heartbeats completely.
* ``heartbeat_timeout`` (default ``3 * heartbeat``; Dubbo refuses anything below
  ``2 * heartbeat`` and so does :class:`ChannelTiming`): once nothing has been *read* for that
  long the peer is declared dead: :class:`~pulse.actions.PeerDead` then
  :class:`~pulse.actions.Close`. The consumer then reconnects (under the one reconnect supervisor,
  :class:`pulse._core.reconnect.ReconnectMachine`); the provider just frees the channel.
* A heartbeat sent while the previous one is still unanswered makes the peer *suspect*
  (:class:`~pulse.actions.PeerSuspect`); a read makes it alive again.
* Local-pause guard: when ``tick`` comes more than ``max_local_pause`` after the deadline
  this machine gave out (a stopped process, a blocked loop), the silence says nothing about
  the peer: it reports :class:`~pulse.actions.LocalPause`, sends a heartbeat at once and
  withholds the verdict for one ``heartbeat`` so an answer can arrive.
* Heartbeat request ids come from a caller-supplied allocator, the same one the RPC
  framework takes its request ids from, so the two never collide.
* Deadlines are lazy (Netty's way): reads and writes only store a time; ``next_deadline()``
  computes when anything can next happen.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from pulse._core.detectors import FixedTimeout
from pulse._core.liveness import Liveness, LivenessState
from pulse._core.policy import HeartbeatPolicy, IdleMode
from pulse._core.stats import RttStats, RttSummary
from pulse.actions import Action


class Role(enum.Enum):
    """Which end of the RPC link this channel is."""

    CONSUMER = "consumer"  # the client: heartbeats, reconnects when the provider goes silent
    PROVIDER = "provider"  # the server: heartbeats, closes channels whose consumer went silent


class ChannelState(enum.Enum):
    """Where the peer of one channel stands."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"  # declared dead by the timeout; a Close was issued
    CLOSED = "closed"  # closed for another reason (EOF, local close, protocol error)


_STATES = {
    LivenessState.ALIVE: ChannelState.ALIVE,
    LivenessState.SUSPECT: ChannelState.SUSPECT,
    LivenessState.DEAD: ChannelState.DEAD,
}


def _seconds(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class ChannelTiming:
    """Heartbeat timing of one channel, Dubbo's parameters and defaults.

    ``heartbeat`` is the idle time after which a heartbeat is sent (0 disables heartbeats
    and the timeout together). ``heartbeat_timeout`` is how long nothing may be read before
    the peer is declared dead; it defaults to three heartbeats and must be at least two.
    ``max_local_pause`` (default: ``heartbeat``) is how late a tick may come before it is
    taken for a local stall instead of evidence against the peer.
    """

    heartbeat: float = 60.0
    heartbeat_timeout: float | None = None
    max_local_pause: float | None = None

    def __post_init__(self) -> None:
        heartbeat = _seconds("heartbeat", self.heartbeat)
        if heartbeat == 0:
            if self.heartbeat_timeout not in (None, 0):
                raise ValueError("heartbeat_timeout needs heartbeats: heartbeat is 0 (disabled)")
            timeout = 0.0
        elif self.heartbeat_timeout is None:
            timeout = 3 * heartbeat
        else:
            timeout = _seconds("heartbeat_timeout", self.heartbeat_timeout)
            if timeout < 2 * heartbeat:
                raise ValueError(
                    f"heartbeat_timeout ({timeout:g} s) must be at least 2 x heartbeat "
                    f"({heartbeat:g} s), as Dubbo requires: otherwise a healthy peer is "
                    "declared dead after a single lost heartbeat"
                )
        pause = heartbeat if self.max_local_pause is None else self.max_local_pause
        object.__setattr__(self, "heartbeat", heartbeat)
        object.__setattr__(self, "heartbeat_timeout", timeout)
        object.__setattr__(self, "max_local_pause", _seconds("max_local_pause", pause))

    @property
    def enabled(self) -> bool:
        """False when heartbeats are switched off (``heartbeat == 0``)."""
        return self.heartbeat > 0

    @classmethod
    def from_policy(cls, policy: HeartbeatPolicy) -> ChannelTiming:
        """The channel timing of a :class:`HeartbeatPolicy` (``interval`` → ``heartbeat``,
        ``timeout`` → ``heartbeat_timeout``); :class:`ValueError` when the policy's timeout
        is below the 2 x heartbeat that channels require."""
        return cls(policy.interval, policy.dead_after, policy.max_local_pause)

    @property
    def interval(self) -> float:
        """``heartbeat`` under :class:`HeartbeatPolicy`'s name."""
        return self.heartbeat

    @property
    def timeout(self) -> float:
        """``heartbeat_timeout`` as a float (never None after construction), under
        :class:`HeartbeatPolicy`'s name."""
        assert self.heartbeat_timeout is not None
        return self.heartbeat_timeout

    @property
    def pause_limit(self) -> float:
        """``max_local_pause`` as a float (never None after construction)."""
        assert self.max_local_pause is not None
        return self.max_local_pause

    def policy(self) -> HeartbeatPolicy:
        """The same timing as a core :class:`HeartbeatPolicy` (idle in *either* direction)."""
        if not self.enabled:
            return HeartbeatPolicy(0, 0)
        return HeartbeatPolicy(self.heartbeat, self.timeout, IdleMode.EITHER, self.pause_limit)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of one channel's heartbeat statistics (times in seconds)."""

    role: Role
    state: ChannelState
    rtt: RttSummary
    missed: int
    heartbeats_sent: int
    heartbeats_answered: int
    heartbeats_received: int
    silent_for: float
    write_idle_for: float


class _ReadTimeout(FixedTimeout):
    """Dubbo's verdict: nothing read for ``heartbeat_timeout``, worded as Dubbo users know it."""

    __slots__ = ()

    def explain(self, now: float) -> str:
        return (f"nothing read for {self.silent_for(now):.3f} s "
                f"(heartbeat_timeout {self.timeout:g} s)")


class ChannelHeartbeat:
    """The heartbeat rules of one channel (see the module docstring).

    A thin layer over :class:`~pulse._core.liveness.Liveness` with Dubbo's timing: heartbeats
    when idle in *either* direction, a fixed read timeout, ids from the framework's request-id
    allocator, plus a ``CLOSED`` state for channels that end for reasons of their own.
    ``now`` is the time the channel opened; it counts as both a read and a write, as Dubbo
    stamps both when a channel connects.
    """

    def __init__(
        self,
        role: Role,
        timing: ChannelTiming,
        now: float,
        *,
        next_request_id: Callable[[], int],
    ) -> None:
        if not isinstance(role, Role):
            raise ValueError(f"role must be a Role, got {role!r}")
        self.role = role
        self.timing = timing
        self._liveness = Liveness(
            timing.policy(), now, next_seq=next_request_id,
            detector=_ReadTimeout(timing.timeout) if timing.enabled else None,
        )
        self._closed = False
        self.heartbeats_received = 0

    # -- events ---------------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        """``alive``, ``suspect``, ``dead`` (declared by the timeout) or ``closed``."""
        if self._closed:
            return ChannelState.CLOSED
        return _STATES[self._liveness.state]

    @property
    def open(self) -> bool:
        """False once the peer was declared dead or the channel was closed."""
        return self.state in (ChannelState.ALIVE, ChannelState.SUSPECT)

    def read(self, now: float) -> list[Action]:
        """A frame (of any kind) was read from the peer."""
        return self._liveness.data_received(now) if self.open else []

    def write(self, now: float) -> None:
        """A write to the peer completed (any frame, heartbeats included)."""
        self._liveness.data_sent(now)

    def heartbeat_request(self, now: float) -> list[Action]:
        """The peer sent a heartbeat request (the caller answers it); counts as a read."""
        if self.open:
            self.heartbeats_received += 1
        return self.read(now)

    def heartbeat_response(self, now: float, request_id: int) -> list[Action]:
        """A heartbeat response arrived; if it answers one of ours its RTT is recorded."""
        return self._liveness.pong(now, request_id) if self.open else []

    def is_heartbeat_id(self, request_id: int) -> bool:
        """True if ``request_id`` is one of this channel's unanswered heartbeats."""
        return self._liveness.is_in_flight(request_id)

    def close(self) -> None:
        """The channel was closed for a reason of its own (EOF, local close, bad frame)."""
        if self.open:
            self._closed = True

    def handle_timer(self, now: float) -> list[Action]:
        """Return what is due at ``now``: heartbeats to send, or the verdict."""
        return self._liveness.handle_timer(now) if self.open else []

    # -- queries --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: never, the channel is done or off).

        The value is remembered: a tick much later than it is how a local pause is noticed.
        """
        return self._liveness.next_deadline() if self.open else None

    @property
    def rtt(self) -> RttStats:
        """Round-trip times of answered heartbeats."""
        return self._liveness.rtt

    @property
    def heartbeats_sent(self) -> int:
        """Heartbeat requests sent."""
        return self._liveness.pings_sent

    @property
    def heartbeats_answered(self) -> int:
        """Heartbeat responses that matched one of ours."""
        return self._liveness.pongs_received

    @property
    def last_read(self) -> float:
        """When anything was last read from the peer (or the open time)."""
        return self._liveness.last_received

    @property
    def last_write(self) -> float:
        """When a write last completed (or the open time)."""
        return self._liveness.last_sent

    @property
    def missed(self) -> int:
        """Heartbeats that went unanswered in a row (0 once anything is read)."""
        return self._liveness.missed

    def stats(self, now: float) -> ChannelStats:
        """A snapshot at ``now``."""
        return ChannelStats(
            self.role,
            self.state,
            self.rtt.summary(),
            self.missed,
            self.heartbeats_sent,
            self.heartbeats_answered,
            self.heartbeats_received,
            max(0.0, now - self.last_read),
            max(0.0, now - self.last_write),
        )
