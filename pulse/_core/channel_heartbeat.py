"""Dubbo's per-channel heartbeat rules, as a pure state machine (both sides of an RPC link).

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
  :class:`~pulse.actions.Close`. The consumer then reconnects (:class:`Reconnector` turns a
  :class:`~pulse._core.backoff.Backoff` into :class:`~pulse.actions.Reconnect` actions); the
  provider just frees the channel.
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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pulse._core.stats import RttStats, RttSummary
from pulse.actions import (
    Action,
    Close,
    LocalPause,
    PeerAlive,
    PeerDead,
    PeerSuspect,
    Reconnect,
    SendPing,
)

#: How many unanswered heartbeat ids are remembered for RTT matching.
MAX_HEARTBEATS_IN_FLIGHT = 64


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

    @property
    def timeout(self) -> float:
        """``heartbeat_timeout`` as a float (never None after construction)."""
        assert self.heartbeat_timeout is not None
        return self.heartbeat_timeout

    @property
    def pause_limit(self) -> float:
        """``max_local_pause`` as a float (never None after construction)."""
        assert self.max_local_pause is not None
        return self.max_local_pause


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


class ChannelHeartbeat:
    """The heartbeat rules of one channel (see the module docstring).

    ``now`` is the time the channel opened; it counts as both a read and a write, as Dubbo
    stamps both when a channel connects. ``next_request_id`` allocates heartbeat request
    ids from the framework's own request-id space.
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
        self.state = ChannelState.ALIVE
        self._next_request_id = next_request_id
        self._last_read = now
        self._last_write = now
        self._last_heartbeat = -math.inf
        self._in_flight: OrderedDict[int, float] = OrderedDict()
        self._unanswered = 0  # heartbeats sent since the last read
        self._missed = 0
        self._armed: float | None = None
        self._withheld_until = -math.inf
        self.rtt = RttStats()
        self.heartbeats_sent = 0
        self.heartbeats_answered = 0
        self.heartbeats_received = 0

    # -- events ---------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """False once the peer was declared dead or the channel was closed."""
        return self.state in (ChannelState.ALIVE, ChannelState.SUSPECT)

    def read(self, now: float) -> list[Action]:
        """A frame (of any kind) was read from the peer."""
        if not self.open:
            return []
        silent = max(0.0, now - self._last_read)
        self._last_read = max(self._last_read, now)
        self._unanswered = 0
        self._missed = 0
        if self.state is ChannelState.SUSPECT:
            self.state = ChannelState.ALIVE
            return [PeerAlive(after=silent)]
        return []

    def write(self, now: float) -> None:
        """A write to the peer completed (any frame, heartbeats included)."""
        self._last_write = max(self._last_write, now)

    def heartbeat_request(self, now: float) -> list[Action]:
        """The peer sent a heartbeat request (the caller answers it); counts as a read."""
        if self.open:
            self.heartbeats_received += 1
        return self.read(now)

    def heartbeat_response(self, now: float, request_id: int) -> list[Action]:
        """A heartbeat response arrived; if it answers one of ours its RTT is recorded."""
        sent = self._in_flight.pop(request_id, None)
        if sent is not None and self.open:
            self.rtt.add(now - sent)
            self.heartbeats_answered += 1
        return self.read(now)

    def is_heartbeat_id(self, request_id: int) -> bool:
        """True if ``request_id`` is one of this channel's unanswered heartbeats."""
        return request_id in self._in_flight

    def close(self) -> None:
        """The channel was closed for a reason of its own (EOF, local close, bad frame)."""
        if self.open:
            self.state = ChannelState.CLOSED
        self._armed = None

    def tick(self, now: float) -> list[Action]:
        """Return what is due at ``now``: heartbeats to send, or the verdict."""
        if not self.open or not self.timing.enabled:
            return []
        actions: list[Action] = []
        force_heartbeat = False
        armed, self._armed = self._armed, None
        if armed is not None and now - armed > self.timing.pause_limit:
            actions.append(LocalPause(late_by=now - armed))
            self._withheld_until = now + self.timing.heartbeat
            force_heartbeat = True
        if now >= self._dead_at():
            silent = now - self._last_read
            reason = (
                f"nothing read for {silent:.3f} s (heartbeat_timeout {self.timing.timeout:g} s, "
                f"{self._unanswered} heartbeat(s) unanswered)"
            )
            self.state = ChannelState.DEAD
            self._missed = max(self._missed, self._unanswered)
            actions += [PeerDead(reason, self._missed, silent), Close(reason)]
            return actions
        if force_heartbeat or now >= self._heartbeat_due():
            actions += self._send_heartbeat(now)
        return actions

    def _send_heartbeat(self, now: float) -> list[Action]:
        request_id = self._next_request_id()
        if self._unanswered > 0:
            self._missed = self._unanswered
        self._unanswered += 1
        self._in_flight[request_id] = now
        while len(self._in_flight) > MAX_HEARTBEATS_IN_FLIGHT:
            self._in_flight.popitem(last=False)
        self._last_heartbeat = now
        self.heartbeats_sent += 1
        actions: list[Action] = [SendPing(request_id, now)]
        if self._missed >= 1 and self.state is ChannelState.ALIVE:
            self.state = ChannelState.SUSPECT
            actions.append(PeerSuspect(self._missed, now - self._last_read))
        return actions

    # -- queries --------------------------------------------------------------------------

    def _heartbeat_due(self) -> float:
        # Idle in either direction since the later of that activity and our last heartbeat.
        idle_since = max(min(self._last_read, self._last_write), self._last_heartbeat)
        return idle_since + self.timing.heartbeat

    def _dead_at(self) -> float:
        return max(self._last_read + self.timing.timeout, self._withheld_until)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called (None: never, the channel is done or off).

        The value is remembered: a tick much later than it is how a local pause is noticed.
        """
        if not self.open or not self.timing.enabled:
            self._armed = None
            return None
        self._armed = min(self._heartbeat_due(), self._dead_at())
        return self._armed

    @property
    def last_read(self) -> float:
        """When anything was last read from the peer (or the open time)."""
        return self._last_read

    @property
    def last_write(self) -> float:
        """When a write last completed (or the open time)."""
        return self._last_write

    @property
    def missed(self) -> int:
        """Heartbeats that went unanswered in a row (0 once anything is read)."""
        return self._missed

    def stats(self, now: float) -> ChannelStats:
        """A snapshot at ``now``."""
        return ChannelStats(
            self.role,
            self.state,
            self.rtt.summary(),
            self._missed,
            self.heartbeats_sent,
            self.heartbeats_answered,
            self.heartbeats_received,
            max(0.0, now - self._last_read),
            max(0.0, now - self._last_write),
        )


class BackoffLike(Protocol):
    """What :class:`Reconnector` needs (``pulse._core.backoff.Backoff`` provides it)."""

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""

    def next_delay(self) -> float | None:
        """The delay before the next attempt, or None when no attempts are left."""

    def connected(self, now: float) -> None:
        """An attempt succeeded at ``now``."""

    def disconnected(self, now: float) -> None:
        """The connection ended at ``now``."""


class Reconnector:
    """The consumer's reconnect rule: after a lost channel or a failed attempt, wait for
    the backoff's next delay, then connect again; give up when the backoff does.

    Every method returns the :class:`~pulse.actions.Reconnect` to carry out, or None once
    the backoff's attempts are used up.
    """

    def __init__(self, backoff: BackoffLike) -> None:
        self.backoff = backoff
        self.connects = 0

    def _next(self) -> Reconnect | None:
        delay = self.backoff.next_delay()
        if delay is None:
            return None
        return Reconnect(delay=delay, attempt=self.backoff.attempts)

    def connected(self, now: float) -> None:
        """A connection was established at ``now``."""
        self.connects += 1
        self.backoff.connected(now)

    def lost(self, now: float) -> Reconnect | None:
        """An established connection ended at ``now`` (timeout, EOF, error)."""
        self.backoff.disconnected(now)
        return self._next()

    def failed(self, now: float) -> Reconnect | None:
        """A connection attempt failed at ``now``."""
        return self._next()
