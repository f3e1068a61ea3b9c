"""The ZooKeeper client's session state machine, with ZooKeeper's own client timing.

Pure: no I/O, no clock. Every method that depends on time takes ``now`` (seconds, any
monotonic origin); :meth:`SessionMachine.next_deadline` says when :meth:`handle_timer` must
be called next; methods return the :class:`Action` objects the driver must carry out.

Timing rules (as in ZooKeeper's ``ClientCnxn``), with ``T`` the negotiated session timeout
(the requested one until a server answered) and ``n`` the number of hosts:

* connect timeout ``T / n``: an attempt (TCP connect + handshake) that has not completed by
  then is abandoned and the next host is tried;
* read timeout ``2/3 T``: a connection on which nothing arrived for that long is dead;
* ping when nothing was *sent* for ``min(read timeout / 2, 10 s)``; a ping still unanswered
  when the read timeout passes means the connection is dead;
* hosts are shuffled once (with the caller's random generator) and tried in turn; every
  reconnect waits a random delay in ``[0, J]`` with ``J = min(1 s, T / 10)``, and ``J`` more
  once every host of the list failed in a row, so a crowd of clients does not reconnect in
  lock-step;
* a re-attach sends the session id, its password and the last zxid seen;
* a ConnectResponse with timeout 0 means the server considers the session expired;
* client-side expiry: with a session and no server heard from for ``T`` (since the last
  byte received), the session is declared expired without waiting for a server to say so.

States (:class:`pulse.presence.SessionState`): CONNECTING until the first session is
established, CONNECTED, DISCONNECTED while re-attaching, EXPIRED, CLOSED. Every transition
is reported once as a :class:`StateChanged` action.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pulse._core.session_timing import ClientTiming
from pulse.errors import LocalProtocolError
from pulse.presence import SessionEvent, SessionState

from .jute import PASSWORD_LENGTH, ConnectRequest, ConnectResponse

Host = tuple[str, int]


class Phase(enum.Enum):
    """What the machine is doing (finer than :class:`SessionState`)."""

    IDLE = "idle"  # not started
    BACKOFF = "backoff"  # waiting to start the next connection attempt
    CONNECTING = "connecting"  # an attempt (TCP connect + handshake) is under way
    CONNECTED = "connected"
    EXPIRED = "expired"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection to ``host`` and send ``request`` as the handshake."""

    host: Host
    request: ConnectRequest


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Drop the current connection (or attempt); ``reason`` says why."""

    reason: str


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a ping on the current connection."""


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The session changed state; tell the application."""

    event: SessionEvent


Action = Connect | Disconnect | SendPing | StateChanged


def _hex(session_id: int) -> str:
    return f"0x{session_id & 0xFFFFFFFFFFFFFFFF:x}"


class SessionMachine:
    """Connection and session state of one ZooKeeper client session.

    ``hosts`` are shuffled once with ``rng``; ``session_timeout`` (seconds) is the timeout
    proposed to the server.
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        session_timeout: float,
        rng: random.Random | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        if not hosts:
            raise ValueError("at least one host is needed")
        if session_timeout <= 0:
            raise ValueError("session_timeout must be positive")
        self._rng = rng if rng is not None else random.Random()
        self.hosts: list[Host] = list(hosts)
        self._rng.shuffle(self.hosts)
        self.requested_timeout = float(session_timeout)
        self.read_only = read_only
        self.negotiated_timeout: float | None = None
        self.session_id = 0
        self.password = bytes(PASSWORD_LENGTH)
        self.last_zxid = 0
        self.phase = Phase.IDLE
        self.state = SessionState.CONNECTING
        self.host: Host | None = None  # the host of the current attempt or connection
        self._next_host = 0
        self._failures_in_row = 0
        self._retry_at = 0.0
        self._attempt_deadline = 0.0
        self.last_recv = 0.0
        self.last_send = 0.0
        self.last_heard = 0.0  # last byte from a server while this session was known alive

    # ------------------------------------------------------------------ derived timing

    @property
    def session_timeout(self) -> float:
        """The negotiated timeout, or the requested one before any server answered."""
        if self.negotiated_timeout is not None:
            return self.negotiated_timeout
        return self.requested_timeout

    @property
    def timing(self) -> ClientTiming:
        """ZooKeeper's client timing for the current timeout and host list (shared with the
        lease client: read timeout 2/3, ping at half of it capped at 10 s, connect timeout
        = timeout / hosts, retry pause at most min(1 s, timeout / 10))."""
        return ClientTiming(self.session_timeout, len(self.hosts))

    @property
    def read_timeout(self) -> float:
        """Two thirds of the session timeout."""
        return self.timing.read_timeout

    @property
    def ping_interval(self) -> float:
        """Send idle time after which a ping goes out: half the read timeout, at most 10 s."""
        return self.timing.ping_interval

    @property
    def connect_timeout(self) -> float:
        """Time allowed to one connection attempt: session timeout / number of hosts."""
        return self.timing.connect_timeout

    @property
    def reconnect_jitter(self) -> float:
        """Upper bound of the random pause before a reconnect."""
        return self.timing.max_retry_pause

    @property
    def expires_at(self) -> float | None:
        """When the client will declare the session expired if no server answers first."""
        if self.session_id == 0 or self.phase not in (Phase.BACKOFF, Phase.CONNECTING):
            return None
        return self.last_heard + self.session_timeout

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: nothing is timed)."""
        if self.phase is Phase.CONNECTED:
            return min(self.last_recv + self.read_timeout, self.last_send + self.ping_interval)
        if self.phase is Phase.CONNECTING:
            deadline = self._attempt_deadline
        elif self.phase is Phase.BACKOFF:
            deadline = self._retry_at
        else:
            return None
        expiry = self.expires_at
        return deadline if expiry is None else min(deadline, expiry)

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[Action]:
        """Begin: the first attempt is due at once."""
        if self.phase is not Phase.IDLE:
            raise LocalProtocolError("the session machine was already started")
        self.phase = Phase.BACKOFF
        self._retry_at = now
        return [StateChanged(SessionEvent(SessionState.CONNECTING, None, "starting"))]

    def handle_timer(self, now: float) -> list[Action]:
        """Act on every deadline that has passed by ``now``."""
        actions: list[Action] = []
        if self.phase is Phase.CONNECTED:
            if now >= self.last_recv + self.read_timeout:
                reason = f"read timeout: nothing heard for {now - self.last_recv:.3f} s"
                actions.append(Disconnect(reason))
                self._lost(now, reason, actions)
            elif now >= self.last_send + self.ping_interval:
                self.last_send = now
                actions.append(SendPing())
        if self.phase is Phase.CONNECTING and now >= self._attempt_deadline:
            actions.append(Disconnect(f"connect timeout ({self.connect_timeout:.3f} s)"))
            self._attempt_failed(now)
        expiry = self.expires_at
        if expiry is not None and now >= expiry:
            reason = f"no server reached for {now - self.last_heard:.3f} s (client-side expiry)"
            if self.phase is Phase.CONNECTING:
                actions.append(Disconnect(reason))
            self._expire(reason, actions)
        if self.phase is Phase.BACKOFF and now >= self._retry_at:
            actions.append(self._begin_attempt(now))
        return actions

    def handshake_done(self, now: float, response: ConnectResponse) -> list[Action]:
        """The server answered the ConnectRequest of the current attempt."""
        if self.phase is not Phase.CONNECTING:
            raise LocalProtocolError(f"handshake completed while {self.phase.value}")
        self.last_recv = now
        actions: list[Action] = []
        if response.expired:
            reason = f"server {self._peer()} reports session {_hex(self.session_id)} expired"
            actions.append(Disconnect(reason))
            self._expire(reason, actions)
            return actions
        if self.session_id and response.session_id != self.session_id:
            reason = (
                f"server {self._peer()} answered session {_hex(self.session_id)} with "
                f"{_hex(response.session_id)}"
            )
            actions.append(Disconnect(reason))
            self._expire(reason, actions)
            return actions
        reattached = self.session_id != 0
        self.session_id = response.session_id
        self.password = response.password
        self.negotiated_timeout = response.timeout_ms / 1000.0
        self.phase = Phase.CONNECTED
        self.last_recv = self.last_send = self.last_heard = now
        self._failures_in_row = 0
        verb = "re-attached" if reattached else "established"
        reason = f"session {verb} on {self._peer()}, timeout {self.negotiated_timeout:.3f} s"
        self._set_state(SessionState.CONNECTED, reason, actions)
        return actions

    def connection_failed(self, now: float, reason: str) -> list[Action]:
        """The current attempt failed before the handshake completed."""
        if self.phase is not Phase.CONNECTING:
            return []
        self._attempt_failed(now)
        return []

    def connection_lost(self, now: float, reason: str) -> list[Action]:
        """The connection (or attempt) dropped for ``reason``."""
        if self.phase is Phase.CONNECTING:
            return self.connection_failed(now, reason)
        if self.phase is not Phase.CONNECTED:
            return []
        actions: list[Action] = []
        self._lost(now, reason, actions)
        return actions

    def received(self, now: float, zxid: int | None = None) -> None:
        """Bytes arrived on the current connection; ``zxid`` of a reply, if any."""
        self.last_recv = now
        if self.phase is Phase.CONNECTED:
            self.last_heard = now
        if zxid is not None and zxid > 0:
            self.last_zxid = max(self.last_zxid, zxid)

    def sent(self, now: float) -> None:
        """A request (any, pings included) was written to the current connection."""
        self.last_send = now

    def new_session(self, now: float) -> list[Action]:
        """After expiry: forget the old session and start connecting for a new one."""
        if self.phase is not Phase.EXPIRED:
            raise LocalProtocolError(
                f"a new session can only follow expiry, not {self.phase.value}"
            )
        self.session_id = 0
        self.password = bytes(PASSWORD_LENGTH)
        self.negotiated_timeout = None
        self.phase = Phase.BACKOFF
        self._retry_at = now
        actions: list[Action] = []
        self._set_state(SessionState.CONNECTING, "starting a new session after expiry", actions)
        return actions

    def close(self, now: float, reason: str = "closed by the application") -> list[Action]:
        """The application closed the session (the driver sends closeSession first)."""
        if self.phase is Phase.CLOSED:
            return []
        actions: list[Action] = []
        if self.phase in (Phase.CONNECTING, Phase.CONNECTED):
            actions.append(Disconnect(reason))
        self.phase = Phase.CLOSED
        self._set_state(SessionState.CLOSED, reason, actions)
        return actions

    # ------------------------------------------------------------------ internals

    def _peer(self) -> str:
        return "?" if self.host is None else f"{self.host[0]}:{self.host[1]}"

    def _set_state(self, state: SessionState, reason: str, actions: list[Action]) -> None:
        if state is self.state:
            return
        self.state = state
        session_id = self.session_id or None
        actions.append(StateChanged(SessionEvent(state, session_id, reason)))

    def _begin_attempt(self, now: float) -> Connect:
        self.host = self.hosts[self._next_host]
        self._next_host = (self._next_host + 1) % len(self.hosts)
        self.phase = Phase.CONNECTING
        self._attempt_deadline = now + self.connect_timeout
        self.last_recv = now
        request = ConnectRequest(
            timeout_ms=max(1, round(self.requested_timeout * 1000)),
            session_id=self.session_id,
            password=self.password,
            last_zxid_seen=self.last_zxid,
            read_only=self.read_only,
        )
        return Connect(self.host, request)

    def _schedule_retry(self, now: float) -> None:
        jitter = self.reconnect_jitter
        delay = self._rng.uniform(0.0, jitter)
        if self._failures_in_row and self._failures_in_row % len(self.hosts) == 0:
            delay += jitter  # every host failed in a row: back off a little more
        self.phase = Phase.BACKOFF
        self._retry_at = now + delay

    def _attempt_failed(self, now: float) -> None:
        self._failures_in_row += 1
        self._schedule_retry(now)

    def _lost(self, now: float, reason: str, actions: list[Action]) -> None:
        self._failures_in_row = 0
        self._schedule_retry(now)
        self._set_state(SessionState.DISCONNECTED, reason, actions)

    def _expire(self, reason: str, actions: list[Action]) -> None:
        self.phase = Phase.EXPIRED
        self._set_state(SessionState.EXPIRED, reason, actions)
