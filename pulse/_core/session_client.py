"""One session client machine for every session backend (``pulse://`` leases, ``zk://``).

Pure: no I/O, no clock. Every input is a method taking ``now`` (seconds, any monotonic
origin); :meth:`SessionClient.next_deadline` says when :meth:`SessionClient.handle_timer`
must run next; inputs return the actions the driver carries out. The machine knows hosts,
a session id and its password, and time; it never sees a byte. What a backend adds (the
ZooKeeper client's zxid and ConnectRequest, the lease client's event sequence numbers and
its ``supersedes`` hand-over) stays in the backend's plugin.

Rules (ZooKeeper's ``ClientCnxn``, with ``T`` the negotiated session timeout — the
requested one until a server answered — and ``n`` the number of hosts; the arithmetic is in
:mod:`pulse._core.session_timing`):

* **Hosts** are shuffled once with the caller's random generator and tried in turn; the
  first attempt (of a session, and of a new session after expiry) starts at once.
* **Connect timeout** ``T / n``: an attempt (TCP connect + handshake) not finished by then is
  dropped and the next host is tried, so one pass over the list fits in one timeout.
* **Retry pause**: before every attempt but the very first, a random pause in ``[0, J]``
  with ``J = min(1 s, T / 10)``, and ``J`` more whenever every host failed in a row (a crowd
  of clients does not reconnect in lock-step).
* **Read timeout** ``2/3 T``: a connection on which nothing arrived for that long is dead;
  the client drops it and re-attaches elsewhere (state DISCONNECTED).
* **Ping** when nothing was *sent* for ``min(read timeout / 2, 10 s)``; any request counts.
* **Client-side expiry**: with a session known and no server having confirmed it for ``T``
  since the last byte heard from a server on a live connection, the session is EXPIRED
  without waiting for a server to say so (a server expires it no earlier than that).
* **Refusal**: a server that refuses to (re-)attach the session — expired, unknown id, wrong
  password, or an answer naming another session — makes it EXPIRED at once.
* **Give up** (optional, ``start(now, give_up_after=…)``): if no session was ever
  established that long after start, the machine stops with :class:`GaveUp` (state CLOSED);
  the driver reports "no server reachable".
* **Closing**: ``begin_close`` on a live connection waits up to ``min(T / n, 2 s)`` for the
  server to confirm (``close_confirmed``, or the connection ending); then CLOSED either way.
* Every change of :class:`~pulse.presence.SessionState` is reported once, as
  :class:`StateChanged`.

Phases (finer than the state the application sees) and what moves them — the table
:data:`TRANSITIONS` lists every ``(phase, input)`` pair; a pair missing from it is a
programming error of the driver and raises :class:`~pulse.errors.LocalProtocolError`::

    IDLE --start--> CONNECTING --connected--> CONNECTED
    CONNECTING --connect timeout / failed--> BACKOFF (next host)
    CONNECTED --read timeout / lost--> BACKOFF (state DISCONNECTED)
    BACKOFF, CONNECTING --no server for T since last heard--> EXPIRED
    CONNECTING, CONNECTED --refused / ended by the server--> EXPIRED
    BACKOFF --retry pause over--> CONNECTING (the next host)
    EXPIRED --new_session--> CONNECTING (id forgotten)
    CONNECTED --begin_close--> CLOSING --confirmed / lost / wait over--> CLOSED
    BACKOFF, CONNECTING --give-up time passed, no session ever--> CLOSED (GaveUp)
    any --close--> CLOSED
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pulse._core.session_timing import ClientTiming
from pulse.errors import LocalProtocolError
from pulse.presence import SessionEvent, SessionState

Host = tuple[str, int]

#: The reason given when the client declares its own session expired.
CLIENT_SIDE_EXPIRY = "no server reached within the session timeout (client-side expiry)"


class Phase(enum.Enum):
    """What the machine is doing (finer than :class:`SessionState`)."""

    IDLE = "idle"  # not started
    BACKOFF = "backoff"  # waiting to start the next connection attempt
    CONNECTING = "connecting"  # an attempt (TCP connect + handshake) is under way
    CONNECTED = "connected"
    CLOSING = "closing"  # close sent, waiting for the server to confirm
    EXPIRED = "expired"
    CLOSED = "closed"


class Input(enum.Enum):
    """The machine's inputs (one per public method), used by the transition table."""

    START = "start"
    TIMER = "handle_timer"
    CONNECTED = "connected"
    REFUSED = "refused"
    FAILED = "connection_failed"
    LOST = "connection_lost"
    RECEIVED = "received"
    SENT = "sent"
    NEW_SESSION = "new_session"
    BEGIN_CLOSE = "begin_close"
    CLOSE_CONFIRMED = "close_confirmed"
    CLOSE = "close"


_P = Phase
_I = Input


def _stay(phase: Phase, *inputs: Input) -> dict[Input, frozenset[Phase]]:
    return {i: frozenset({phase}) for i in inputs}


#: ``(phase, input) -> phases the machine may be in afterwards``. Pairs that are absent are
#: errors (the driver called an input that cannot happen in that phase).
TRANSITIONS: dict[Phase, dict[Input, frozenset[Phase]]] = {
    _P.IDLE: {
        **_stay(_P.IDLE, _I.TIMER, _I.FAILED, _I.LOST, _I.RECEIVED, _I.SENT, _I.REFUSED,
                _I.CLOSE_CONFIRMED),
        _I.START: frozenset({_P.CONNECTING}),
        _I.BEGIN_CLOSE: frozenset({_P.CLOSED}),
        _I.CLOSE: frozenset({_P.CLOSED}),
    },
    _P.BACKOFF: {
        **_stay(_P.BACKOFF, _I.FAILED, _I.LOST, _I.RECEIVED, _I.SENT, _I.REFUSED,
                _I.CLOSE_CONFIRMED),
        _I.TIMER: frozenset({_P.BACKOFF, _P.CONNECTING, _P.EXPIRED, _P.CLOSED}),
        _I.BEGIN_CLOSE: frozenset({_P.CLOSED}),
        _I.CLOSE: frozenset({_P.CLOSED}),
    },
    _P.CONNECTING: {
        **_stay(_P.CONNECTING, _I.RECEIVED, _I.SENT, _I.CLOSE_CONFIRMED),
        _I.TIMER: frozenset({_P.CONNECTING, _P.BACKOFF, _P.EXPIRED, _P.CLOSED}),
        _I.CONNECTED: frozenset({_P.CONNECTED, _P.EXPIRED}),
        _I.REFUSED: frozenset({_P.EXPIRED}),
        _I.FAILED: frozenset({_P.BACKOFF}),
        _I.LOST: frozenset({_P.BACKOFF}),
        _I.BEGIN_CLOSE: frozenset({_P.CLOSED}),
        _I.CLOSE: frozenset({_P.CLOSED}),
    },
    _P.CONNECTED: {
        **_stay(_P.CONNECTED, _I.RECEIVED, _I.SENT, _I.FAILED, _I.CLOSE_CONFIRMED),
        _I.TIMER: frozenset({_P.CONNECTED, _P.BACKOFF, _P.EXPIRED}),
        _I.REFUSED: frozenset({_P.EXPIRED}),
        _I.LOST: frozenset({_P.BACKOFF}),
        _I.BEGIN_CLOSE: frozenset({_P.CLOSING}),
        _I.CLOSE: frozenset({_P.CLOSED}),
    },
    _P.CLOSING: {
        **_stay(_P.CLOSING, _I.RECEIVED, _I.SENT, _I.FAILED, _I.BEGIN_CLOSE),
        _I.TIMER: frozenset({_P.CLOSING, _P.CLOSED}),
        _I.REFUSED: frozenset({_P.CLOSED}),
        _I.LOST: frozenset({_P.CLOSED}),
        _I.CLOSE_CONFIRMED: frozenset({_P.CLOSED}),
        _I.CLOSE: frozenset({_P.CLOSED}),
    },
    _P.EXPIRED: {
        **_stay(_P.EXPIRED, _I.TIMER, _I.FAILED, _I.LOST, _I.RECEIVED, _I.SENT, _I.REFUSED,
                _I.CLOSE_CONFIRMED),
        _I.NEW_SESSION: frozenset({_P.CONNECTING}),
        _I.BEGIN_CLOSE: frozenset({_P.CLOSED}),
        _I.CLOSE: frozenset({_P.CLOSED}),
    },
    _P.CLOSED: _stay(_P.CLOSED, _I.TIMER, _I.FAILED, _I.LOST, _I.RECEIVED, _I.SENT,
                     _I.REFUSED, _I.CLOSE_CONFIRMED, _I.BEGIN_CLOSE, _I.CLOSE),
}


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection to ``host`` and run the backend's handshake (the machine's
    ``session_id`` and ``password`` say whether it is a re-attach)."""

    host: Host


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


@dataclass(frozen=True, slots=True)
class GaveUp:
    """No session could be established within the give-up time; ``reason`` says why."""

    reason: str


Action = Connect | Disconnect | SendPing | StateChanged | GaveUp


def hex_id(session_id: int | None) -> str:
    """A session id as ZooKeeper prints it (``0x…``)."""
    if session_id is None:
        return "none"
    return f"0x{session_id & 0xFFFFFFFFFFFFFFFF:x}"


class SessionClient:
    """Connection and session state of one client session over a list of hosts.

    ``hosts`` are shuffled once with ``rng``; ``session_timeout`` (seconds) is the timeout
    proposed to the servers. ``session_id`` and ``password`` resume an existing session
    (as ZooKeeper's client constructor allows); otherwise the first connect creates one.
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        session_timeout: float,
        rng: random.Random | None = None,
        *,
        shuffle: bool = True,
        session_id: int | None = None,
        password: bytes = b"",
    ) -> None:
        if not hosts:
            raise ValueError("at least one host is needed")
        if not session_timeout > 0:
            raise ValueError(f"session timeout must be > 0, got {session_timeout!r}")
        self._rng = rng if rng is not None else random.Random()
        self.hosts: list[Host] = list(hosts)
        if shuffle:
            self._rng.shuffle(self.hosts)
        self.requested_timeout = float(session_timeout)
        self.negotiated_timeout: float | None = None
        self.session_id: int | None = session_id
        self.password = bytes(password)
        self.phase = Phase.IDLE
        self.state = SessionState.CONNECTING
        self.host: Host | None = None  # the host of the current attempt or connection
        self.established = False  # a session was established at least once
        self._next_host = 0
        self._failures_in_row = 0
        self._retry_at = 0.0
        self._attempt_deadline = 0.0
        self._give_up_at: float | None = None
        self._give_up_after = 0.0
        self._close_at = 0.0
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
        """The client timing for the current timeout and host list."""
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
        if self.session_id is None or self.phase not in (Phase.BACKOFF, Phase.CONNECTING):
            return None
        return self.last_heard + self.session_timeout

    @property
    def gives_up_at(self) -> float | None:
        """When the machine stops trying if no session was ever established (or None)."""
        if self.established or self.phase not in (Phase.BACKOFF, Phase.CONNECTING):
            return None
        return self._give_up_at

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: nothing is timed)."""
        phase = self.phase
        if phase is Phase.CONNECTED:
            return min(self.last_recv + self.read_timeout, self.last_send + self.ping_interval)
        if phase is Phase.CLOSING:
            return self._close_at
        if phase is Phase.CONNECTING:
            deadline = self._attempt_deadline
        elif phase is Phase.BACKOFF:
            deadline = self._retry_at
        else:
            return None
        for other in (self.expires_at, self.gives_up_at):
            if other is not None and other < deadline:
                deadline = other
        return deadline

    # ------------------------------------------------------------------ inputs

    def start(self, now: float, give_up_after: float | None = None) -> list[Action]:
        """Begin: the first attempt starts at once. With ``give_up_after``, stop trying
        (:class:`GaveUp`) if no session is established that many seconds from now."""
        self._check(Input.START)
        self.last_heard = now  # a resumed session counts its timeout from here
        self._give_up_at = None if give_up_after is None else now + give_up_after
        self._give_up_after = give_up_after or 0.0
        event = SessionEvent(SessionState.CONNECTING, self.session_id, "starting")
        return [StateChanged(event), self._begin_attempt(now)]

    def handle_timer(self, now: float) -> list[Action]:
        """Act on every deadline that has passed by ``now``."""
        self._check(Input.TIMER)
        actions: list[Action] = []
        if self.phase is Phase.CLOSING:
            if now >= self._close_at:
                self._closed("the server did not confirm the close in time", actions)
            return actions
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
            if self.phase is Phase.CONNECTING:
                actions.append(Disconnect(CLIENT_SIDE_EXPIRY))
            self._expire(CLIENT_SIDE_EXPIRY, actions)
        give_up = self.gives_up_at
        if give_up is not None and now >= give_up:
            reason = f"no server answered within {self._give_up_after:g} s"
            if self.phase is Phase.CONNECTING:
                actions.append(Disconnect(reason))
            actions.append(GaveUp(reason))
            self.phase = Phase.CLOSED
            self._set_state(SessionState.CLOSED, reason, actions)
        if self.phase is Phase.BACKOFF and now >= self._retry_at:
            actions.append(self._begin_attempt(now))
        return actions

    def connected(self, now: float, session_id: int, password: bytes,
                  timeout: float) -> list[Action]:
        """The server of the current attempt accepted the session: ``session_id`` with
        ``password``, negotiated ``timeout`` seconds."""
        self._check(Input.CONNECTED)
        self.last_recv = now
        actions: list[Action] = []
        if self.session_id is not None and session_id != self.session_id:
            reason = (f"server {self._peer()} answered session {hex_id(self.session_id)} with "
                      f"{hex_id(session_id)}")
            actions.append(Disconnect(reason))
            self._expire(reason, actions)
            return actions
        if not timeout > 0:
            raise LocalProtocolError(f"a negotiated timeout must be > 0, got {timeout!r}")
        reattached = self.session_id is not None and self.established
        self.session_id = session_id
        self.password = bytes(password)
        self.negotiated_timeout = float(timeout)
        self.phase = Phase.CONNECTED
        self.established = True
        self.last_recv = self.last_send = self.last_heard = now
        self._failures_in_row = 0
        verb = "re-attached" if reattached else "established"
        reason = f"session {verb} on {self._peer()}, timeout {self.negotiated_timeout:.3f} s"
        self._set_state(SessionState.CONNECTED, reason, actions)
        return actions

    def refused(self, now: float, reason: str) -> list[Action]:
        """The server refused the session (expired, unknown, wrong password) or ended it on
        a live connection. While closing, this is the end of the close."""
        self._check(Input.REFUSED)
        actions: list[Action] = []
        if self.phase is Phase.CLOSING:
            self._closed(reason, actions)
        elif self.phase in (Phase.CONNECTING, Phase.CONNECTED):
            actions.append(Disconnect(reason))
            self._expire(reason, actions)
        return actions

    def connection_failed(self, now: float, reason: str) -> list[Action]:
        """The current attempt failed before its handshake completed."""
        self._check(Input.FAILED)
        if self.phase is Phase.CONNECTING:
            self._attempt_failed(now)
        return []

    def connection_lost(self, now: float, reason: str) -> list[Action]:
        """The connection (or attempt) dropped for ``reason``."""
        self._check(Input.LOST)
        actions: list[Action] = []
        if self.phase is Phase.CONNECTING:
            self._attempt_failed(now)
        elif self.phase is Phase.CONNECTED:
            self._lost(now, reason, actions)
        elif self.phase is Phase.CLOSING:
            self._closed("closed by the application", actions)
        return actions

    def received(self, now: float) -> None:
        """Bytes arrived on the current connection (or attempt)."""
        self.last_recv = now
        if self.phase is Phase.CONNECTED:
            self.last_heard = now

    def sent(self, now: float) -> None:
        """A request (any, pings included) was written to the current connection."""
        self.last_send = now

    def new_session(self, now: float) -> list[Action]:
        """After expiry: forget the old session and start connecting for a new one."""
        self._check(Input.NEW_SESSION)
        self.session_id = None
        self.password = b""
        self.negotiated_timeout = None
        self._failures_in_row = 0
        actions: list[Action] = []
        self._set_state(SessionState.CONNECTING, "starting a new session after expiry", actions)
        actions.append(self._begin_attempt(now))
        return actions

    def begin_close(self, now: float, wait: float | None = None) -> list[Action]:
        """The application closes the session. On a live connection the driver sends the
        close request and the machine waits up to ``wait`` s (default: the timing's close
        wait, ``min(T / n, 2 s)``) for :meth:`close_confirmed`; otherwise it is closed at
        once."""
        self._check(Input.BEGIN_CLOSE)
        if self.phase is Phase.CONNECTED:
            self.phase = Phase.CLOSING
            self._close_at = now + (self.timing.close_wait if wait is None else wait)
            return []
        if self.phase is Phase.CLOSING:
            return []
        return self.close(now)

    def close_confirmed(self, now: float) -> list[Action]:
        """The server confirmed the close."""
        self._check(Input.CLOSE_CONFIRMED)
        actions: list[Action] = []
        if self.phase is Phase.CLOSING:
            self._closed("closed by the application", actions)
        return actions

    def close(self, now: float, reason: str = "closed by the application") -> list[Action]:
        """Closed now, without waiting for the server (nothing more is sent)."""
        self._check(Input.CLOSE)
        actions: list[Action] = []
        if self.phase is not Phase.CLOSED:
            self._closed(reason, actions)
        return actions

    # ------------------------------------------------------------------ internals

    def _check(self, event: Input) -> None:
        if event not in TRANSITIONS[self.phase]:
            raise LocalProtocolError(f"{event.value} cannot happen while {self.phase.value}")

    def _peer(self) -> str:
        return "?" if self.host is None else f"{self.host[0]}:{self.host[1]}"

    def _set_state(self, state: SessionState, reason: str, actions: list[Action]) -> None:
        if state is self.state:
            return
        self.state = state
        actions.append(StateChanged(SessionEvent(state, self.session_id, reason)))

    def _closed(self, reason: str, actions: list[Action]) -> None:
        if self.phase in (Phase.CONNECTING, Phase.CONNECTED, Phase.CLOSING):
            actions.append(Disconnect(reason))
        self.phase = Phase.CLOSED
        self._set_state(SessionState.CLOSED, reason, actions)

    def _begin_attempt(self, now: float) -> Connect:
        self.host = self.hosts[self._next_host]
        self._next_host = (self._next_host + 1) % len(self.hosts)
        self.phase = Phase.CONNECTING
        self._attempt_deadline = now + self.connect_timeout
        self.last_recv = now
        return self._connect_action(self.host)

    def _connect_action(self, host: Host) -> Connect:
        """The action that opens an attempt (a backend may return a richer one)."""
        return Connect(host)

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


__all__ = [
    "CLIENT_SIDE_EXPIRY",
    "TRANSITIONS",
    "Action",
    "Connect",
    "Disconnect",
    "GaveUp",
    "Host",
    "Input",
    "Phase",
    "SendPing",
    "SessionClient",
    "StateChanged",
]
