"""The lease server's state, without I/O: sessions, ephemeral keys, watches and outboxes.

The trio driver (:mod:`.server`) owns the sockets; this module decides. Every method takes
the time as an argument and returns what the driver must deliver, so the whole behaviour —
limits, ordering, exactly-once notification — is testable with plain floats.

Rules this module keeps:

* Every request on a live session touches it (:class:`pulse._core.sessions.SessionTracker`).
* Keys are flat: a key's *parent* is its path without the last segment and parents need not
  exist. A key whose parent is a registered key is refused (ZooKeeper's ephemeral nodes have
  no children), and so is a key that already has registered children.
* Watch events for a session go into that session's *outbox* with consecutive sequence
  numbers. The driver sends them; the client acknowledges them in every request and on
  re-attach says which it has, so after a lost connection exactly the missing ones are sent
  again. An event is therefore delivered once per watcher even across connection loss.
* When a session ends (expiry, close, supersede) its watches are dropped first, then its
  keys are deleted in registration order and each deletion is queued, in that order, to every
  watcher of the key's parent in the order the watches were created, then to every watcher
  of the key itself (``watch_key``) in the same order.
* A key watch (``watch_key``) is queued only the events of its one key, so a change wakes
  the sessions that watch that key or its parent and no other. Both kinds of watch share
  the watch ids of a session and count against the same watch limits.
* Each limit breach is one :class:`RequestFailed` with its own :class:`~.protocol.ErrorCode`;
  the state is unchanged by a refused request.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

from pulse._core.bounded import BoundedDeque
from pulse._core.rate import TokenBucket
from pulse._core.sessions import SessionGrant, SessionTracker
from pulse.errors import AuthFailed, PulseError, SessionExpired

from .protocol import (
    CloseSession,
    Connect,
    ErrorCode,
    Get,
    ListChildren,
    Ping,
    Register,
    Request,
    Unregister,
    Unwatch,
    Watch,
    WatchEvent,
    WatchKey,
    join,
    name_of,
    parent_of,
)


class RequestFailed(PulseError):
    """A request the server refuses; ``code`` tells the client why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
#: What one queued watch event costs on top of its name and data (object, deque slot).
EVENT_OVERHEAD = 128
#: Bookkeeping of one registered key besides its name and data (dict entries, objects).
KEY_OVERHEAD = 512
#: Bookkeeping of one session, of one watch, and a connection's own buffers besides its
#: decoder limit and queued responses (used by :meth:`Limits.worst_case_bytes`).
SESSION_OVERHEAD = 2 * KIB
WATCH_OVERHEAD = 512
CONNECTION_OVERHEAD = 96 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Server limits against abuse; each breach is refused with its own error code.

    Counts: ``max_sessions`` (server) and ``max_sessions_per_address``; ``max_keys_per_session``
    (``too_many_keys``), ``max_keys_per_address`` and ``max_keys`` (server, both
    ``quota_exceeded``); ``max_watches_per_session`` (``too_many_watches``; a connection
    carries one session, so this is also the per-connection bound) and ``max_watches``
    (server, ``quota_exceeded``).

    Bytes (a key costs its name plus its data): ``max_data_size`` per key
    (``data_too_large``), ``max_bytes_per_session``, ``max_bytes_per_address`` and
    ``max_bytes`` (server) (``quota_exceeded``).

    Watch backlogs: ``max_pending_notifications`` and ``max_pending_bytes`` bound the
    unacknowledged watch events of one session, ``max_pending_bytes_total`` those of the
    whole server (an event costs its name, data and ``EVENT_OVERHEAD``). A watcher that falls
    further behind has its session closed (its client sees it end and can start over); a
    ``watch`` whose initial snapshot alone would go past them is refused (``quota_exceeded``).

    Rate: ``max_request_rate`` is requests per second per session and per connection (a
    token bucket holding one second's worth; ``rate_limited``); 0 disables it.

    Connections (enforced by the driver): ``max_connections`` open at once (more are closed at
    accept), ``max_queued_bytes_per_connection`` and ``max_queued_bytes_total`` of encoded
    responses waiting for a peer that does not read (the connection is closed past them).

    The defaults keep :meth:`worst_case_bytes` — everything all clients together can make the
    server hold — under 8 GiB, a third of a 24 GiB machine.
    """

    max_sessions: int = 100_000
    max_sessions_per_address: int = 5_000
    max_keys_per_session: int = 1_000
    max_watches_per_session: int = 1_000
    max_data_size: int = 64 * KIB
    max_request_rate: float = 1_000.0
    max_pending_notifications: int = 100_000
    max_bytes_per_session: int = 1 * MIB
    max_keys_per_address: int = 10_000
    max_bytes_per_address: int = 64 * MIB
    max_keys: int = 1_000_000
    max_bytes: int = 1 * GIB
    max_watches: int = 1_000_000
    max_pending_bytes: int = 16 * MIB
    max_pending_bytes_total: int = 1 * GIB
    max_connections: int = 10_000
    max_queued_bytes_per_connection: int = 8 * MIB
    max_queued_bytes_total: int = 1 * GIB

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "max_request_rate":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name} must be an integer >= 1, got {value!r}")
        if not self.max_request_rate >= 0:
            raise ValueError(f"max_request_rate must be >= 0, got {self.max_request_rate!r}")

    def max_message_size(self) -> int:
        """The decoder limit for requests: the largest data plus room for the envelope."""
        return self.max_data_size + 4 * 1024 + 1024

    def worst_case_bytes(self) -> int:
        """An upper estimate of the memory all clients together can make the server hold."""
        keys = self.max_bytes + self.max_keys * KEY_OVERHEAD
        backlog = self.max_pending_bytes_total
        sessions = self.max_sessions * SESSION_OVERHEAD + self.max_watches * WATCH_OVERHEAD
        connections = (self.max_connections * (2 * self.max_message_size() + CONNECTION_OVERHEAD)
                       + self.max_queued_bytes_total)
        return keys + backlog + sessions + connections


class Journal(Protocol):
    """Where durable state goes (see :mod:`.store`); every call is one committed change."""

    def session_opened(self, session_id: int, timeout: float, last_session_id: int) -> None:
        """A session was created."""

    def session_ended(self, session_id: int) -> None:
        """A session ended; its registrations are gone with it."""

    def key_set(self, key: str, session_id: int, data: bytes) -> None:
        """A key was registered or its data replaced."""

    def key_deleted(self, key: str) -> None:
        """A key was unregistered."""

    def sequence_issued(self, sequence: int) -> None:
        """A sequential key took ``sequence`` (the highest issued so far)."""


class ServerSession:
    """One session as the server keeps it."""

    __slots__ = ("address", "bytes", "client_id", "id", "key_watches", "keys", "next_seq",
                 "outbox", "outbox_bytes", "rate", "timeout", "watches")

    def __init__(self, session_id: int, timeout: float, address: str, now: float,
                 rate: float, burst: float, *, max_events: int = 100_000) -> None:
        self.id = session_id
        self.timeout = timeout
        self.address = address
        self.keys: dict[str, None] = {}  # registration order
        self.watches: dict[int, str] = {}  # watch id -> prefix
        self.key_watches: dict[int, str] = {}  # watch id -> key (watch_key)
        # Unacknowledged watch events, at most ``Limits.max_pending_notifications`` plus the
        # one that goes past it; past that (or past ``max_pending_bytes`` in event_cost) the
        # session is closed and later events are not queued (see LeaseState._enqueue).
        self.outbox: BoundedDeque[WatchEvent] = BoundedDeque(
            max_events + 1, "a session's unacknowledged watch events")
        self.outbox_bytes = 0  # what the unacknowledged events cost (event_cost)
        self.client_id: str | None = None  # who opened it (authenticated, or as claimed)
        self.bytes = 0  # what its keys cost (key_cost)
        self.next_seq = 1
        self.rate = TokenBucket(rate, now, burst=burst)  # requests per second

    def pending(self, after_seq: int) -> Iterator[WatchEvent]:
        """Outbox events with a sequence number above ``after_seq``, in order."""
        if not self.outbox:
            return iter(())
        start = max(0, after_seq + 1 - self.outbox[0].seq)
        return itertools.islice(self.outbox, start, None)

    def acknowledge(self, ack: int) -> int:
        """Drop events the client has confirmed; return the bytes (event_cost) released."""
        outbox = self.outbox
        freed = 0
        while outbox and outbox[0].seq <= ack:
            freed += event_cost(outbox.popleft())
        self.outbox_bytes -= freed
        return freed


def key_cost(key: str, data: bytes) -> int:
    """What a registration counts against the byte quotas: its name plus its data."""
    return len(key) + len(data)


def event_cost(event: WatchEvent) -> int:
    """What a queued watch event counts against the backlog quotas."""
    return EVENT_OVERHEAD + len(event.id) + len(event.data)


@dataclass(frozen=True, slots=True)
class Registration:
    """An ephemeral key: its owner session and data."""

    owner: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    """A session that ended and why (``expired``/``closed``) — its connection must be told."""

    session_id: int
    state: str
    reason: str


@dataclass(slots=True)
class Outcome:
    """What a request caused: its result, sessions with new outbox events, sessions ended."""

    result: dict[str, Any]
    woken: set[int]
    ended: list[Ended]


class LeaseState:
    """Sessions, keys and watches of one lease server."""

    def __init__(self, tracker: SessionTracker, limits: Limits | None = None,
                 journal: Journal | None = None) -> None:
        self.tracker = tracker
        self.limits = limits or Limits()
        self.journal = journal
        self.sessions: dict[int, ServerSession] = {}
        self.keys: dict[str, Registration] = {}
        self._children: dict[str, dict[str, None]] = {}  # prefix -> child keys (ordered)
        self._watchers: dict[str, dict[tuple[int, int], None]] = {}  # prefix -> watchers
        self._key_watchers: dict[str, dict[tuple[int, int], None]] = {}  # key -> watchers
        self._per_address: dict[str, int] = {}
        self._address_keys: dict[str, int] = {}
        self._address_bytes: dict[str, int] = {}
        self.total_bytes = 0  # key_cost of every registered key
        self.pending_bytes = 0  # event_cost of every unacknowledged event of every session
        self.watch_count = 0
        #: The last sequence number given to a sequential key (the server seeds it from its
        #: journal and the wall clock so that it never goes back across restarts).
        self.sequence = 0

    # -- sessions ------------------------------------------------------------------------

    @property
    def _burst(self) -> float:
        return max(self.limits.max_request_rate, 1.0)

    def restore(self, sessions: Iterable[tuple[int, float]],
                registrations: Iterable[tuple[str, int, bytes]], now: float) -> None:
        """Load durable state: every session gets a fresh full timeout from ``now``."""
        for session_id, timeout in sessions:
            self.tracker.restore(session_id, timeout, now)
            granted = self.tracker.timeout_of(session_id) or timeout
            self.sessions[session_id] = ServerSession(
                session_id, granted, "", now, self.limits.max_request_rate, self._burst,
                max_events=self.limits.max_pending_notifications)
        for key, owner, data in registrations:
            session = self.sessions.get(owner)
            if session is not None:
                self._insert(key, owner, data)
                session.keys[key] = None
                self._charge(session, 1, key_cost(key, data))

    def connect(self, body: Connect, address: str, now: float, wall: float,
                woken: set[int] | None = None,
                ) -> tuple[ServerSession, dict[str, Any], list[Ended]]:
        """Open a session or re-attach to one; return it, the response result and any
        session this one superseded (sessions given watch events by that are added to
        ``woken``). A refused connect changes nothing, not even the superseded session."""
        ended: list[Ended] = []
        if body.session_id is not None:
            try:
                grant = self.tracker.reattach(body.session_id, body.password, now)
            except AuthFailed as exc:
                raise RequestFailed(ErrorCode.AUTH_FAILED, str(exc)) from None
            except SessionExpired as exc:
                raise RequestFailed(ErrorCode.SESSION_EXPIRED, str(exc)) from None
            session = self.sessions[grant.session_id]
            if session.address != address:
                self._count_address(session.address, -1)
                self._count_address(address, +1)
                self._charge(session, -len(session.keys), -session.bytes)
                session.address = address
                self._charge(session, len(session.keys), session.bytes)
            if body.last_seq >= session.next_seq:  # restored from disk: history unknown here
                session.next_seq = body.last_seq + 1
            self.pending_bytes -= session.acknowledge(body.last_seq)
            return session, self._grant_result(grant, reattached=True), ended
        superseded: ServerSession | None = None
        if body.supersedes is not None:
            old_id, old_password = body.supersedes
            if self.tracker.check_password(old_id, old_password) and self.tracker.is_live(old_id):
                superseded = self.sessions.get(old_id)
        # The limits count the superseded session as gone: it ends only if this one opens.
        freed = superseded is not None
        freed_here = superseded is not None and superseded.address == address
        if len(self.sessions) - freed >= self.limits.max_sessions:
            raise RequestFailed(ErrorCode.TOO_MANY_SESSIONS,
                                f"the server holds its maximum of {self.limits.max_sessions} sessions")
        if self._per_address.get(address, 0) - freed_here >= self.limits.max_sessions_per_address:
            raise RequestFailed(
                ErrorCode.TOO_MANY_SESSIONS,
                f"address {address} holds its maximum of "
                f"{self.limits.max_sessions_per_address} sessions",
            )
        if superseded is not None:
            ended.extend(self.end_session(superseded.id, "closed", "superseded by a new session",
                                          set() if woken is None else woken))
        grant = self.tracker.open(now, body.timeout, wall)
        session = ServerSession(grant.session_id, grant.timeout, "", now,
                                self.limits.max_request_rate, self._burst,
                                max_events=self.limits.max_pending_notifications)
        session.address = address
        self._count_address(address, +1)
        self.sessions[grant.session_id] = session
        if self.journal is not None:
            self.journal.session_opened(grant.session_id, grant.timeout,
                                        self.tracker.last_session_id)
        return session, self._grant_result(grant, reattached=False), ended

    def _grant_result(self, grant: SessionGrant, *, reattached: bool) -> dict[str, Any]:
        return {"session_id": grant.session_id, "password": grant.password,
                "timeout": grant.timeout, "tick": self.tracker.tick, "reattached": reattached}

    def _count_address(self, address: str, delta: int) -> None:
        count = self._per_address.get(address, 0) + delta
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)

    def sessions_from(self, address: str) -> int:
        """How many sessions ``address`` holds."""
        return self._per_address.get(address, 0)

    def next_deadline(self) -> float | None:
        """When the next session may expire."""
        return self.tracker.next_deadline()

    def expire(self, now: float) -> Outcome:
        """End every session whose lease ran out at ``now``."""
        outcome = Outcome({}, set(), [])
        for action in self.tracker.expire(now):
            timeout = self.tracker.timeout_of(action.session_id)
            reason = f"no request for the session timeout ({timeout:g} s)"
            outcome.ended.extend(self._end(action.session_id, "expired", reason, outcome.woken))
        return outcome

    def end_session(self, session_id: int, state: str, reason: str,
                    woken: set[int] | None = None) -> list[Ended]:
        """End ``session_id`` now (close, supersede, backlog); its keys vanish."""
        if not self.tracker.set_closing(session_id):
            return []
        return self._end(session_id, state, reason, set() if woken is None else woken)

    def _end(self, session_id: int, state: str, reason: str, woken: set[int]) -> list[Ended]:
        session = self.sessions.pop(session_id, None)
        ended = [Ended(session_id, state, reason)]
        if session is not None:
            for watch_id in [*session.watches, *session.key_watches]:
                self._unwatch(session, watch_id)
            self.pending_bytes -= session.outbox_bytes
            session.outbox.clear()
            session.outbox_bytes = 0
            overflowed: list[int] = []
            for key in list(session.keys):
                self._charge(session, -1, -key_cost(key, self.keys[key].data))
                self._remove(key)
                overflowed.extend(self._notify(parent_of(key), "offline", name_of(key), b"",
                                               woken))
            session.keys.clear()
            self._count_address(session.address, -1)
            woken.discard(session_id)
            for other in overflowed:
                ended.extend(self._end_backlogged(other, woken))
        self.tracker.remove(session_id)
        if self.journal is not None:
            self.journal.session_ended(session_id)
        return ended

    def _end_backlogged(self, session_id: int, woken: set[int]) -> list[Ended]:
        # A session already closing (due in the same expiry pass, or being ended) is ended by
        # whoever flagged it; ending it here too would end it twice.
        if not self.tracker.is_live(session_id):
            return []
        self.tracker.set_closing(session_id)
        limits = self.limits
        reason = (f"more than {limits.max_pending_notifications} unacknowledged notifications "
                  f"or {limits.max_pending_bytes} bytes of them (server-wide "
                  f"{limits.max_pending_bytes_total})")
        return self._end(session_id, "closed", reason, woken)

    # -- requests ------------------------------------------------------------------------

    def renew(self, session_id: int, ack: int, now: float) -> ServerSession:
        """What every request on a session does first, and all a ``ping`` does: touch the
        session, drop the events the client acknowledged (``ack``), spend a token of its
        rate. Returns the session; raises :class:`RequestFailed` like :meth:`handle`."""
        session = self.sessions.get(session_id)
        if session is None or not self.tracker.touch(session_id, now):
            raise RequestFailed(ErrorCode.SESSION_CLOSING, f"session {session_id:#x} is closing")
        if session.outbox:
            self.pending_bytes -= session.acknowledge(ack)
        if not session.rate.take(now):
            raise RequestFailed(ErrorCode.RATE_LIMITED, f"more than {session.rate.rate:g} "
                                "requests per second on this session")
        return session

    def handle(self, session_id: int, request: Request, now: float) -> Outcome:
        """Serve one request of a connected session (connect is handled by :meth:`connect`)."""
        session = self.renew(session_id, request.ack, now)
        outcome = Outcome({}, set(), [])
        body = request.body
        if isinstance(body, Ping):
            pass
        elif isinstance(body, Register) and body.sequential:
            self._register_sequential(session, body.key, body.data, outcome)
        elif isinstance(body, Register):
            self._register(session, body.key, body.data, outcome)
        elif isinstance(body, Unregister):
            self._unregister(session, body.key, outcome)
        elif isinstance(body, Get):
            found = self.keys.get(body.key)
            outcome.result["data"] = None if found is None else found.data
        elif isinstance(body, ListChildren):
            outcome.result["children"] = self.children(body.prefix)
        elif isinstance(body, Watch):
            self._watch(session, body.prefix, body.watch_id, outcome)
        elif isinstance(body, WatchKey):
            self._watch_key(session, body.key, body.watch_id, outcome)
        elif isinstance(body, Unwatch):
            self._unwatch(session, body.watch_id)
        elif isinstance(body, CloseSession):
            outcome.ended.extend(self.end_session(session_id, "closed", "closed by the client",
                                                  outcome.woken))
        else:
            raise RequestFailed(ErrorCode.BAD_REQUEST, "connect is only valid as the first request")
        return outcome

    def _register(self, session: ServerSession, key: str, data: bytes, outcome: Outcome) -> None:
        limits = self.limits
        if len(data) > limits.max_data_size:
            raise RequestFailed(ErrorCode.DATA_TOO_LARGE,
                                f"data of {len(data)} bytes exceeds the limit of "
                                f"{limits.max_data_size} bytes")
        existing = self.keys.get(key)
        if existing is not None:
            if existing.owner != session.id:
                raise RequestFailed(ErrorCode.KEY_EXISTS,
                                    f"{key} is registered by another session")
            grow = len(data) - len(existing.data)
            self._check_quota(session, 0, grow)
            self._charge(session, 0, grow)
            self.keys[key] = Registration(session.id, data)  # the owner updates its data
            if self.journal is not None:
                self.journal.key_set(key, session.id, data)
            return
        parent = parent_of(key)
        if parent in self.keys:
            raise RequestFailed(ErrorCode.BAD_REQUEST,
                                f"{parent} is an ephemeral key and cannot have children")
        if self._children.get(key):
            raise RequestFailed(ErrorCode.KEY_EXISTS, f"{key} has registered children")
        if len(session.keys) >= limits.max_keys_per_session:
            raise RequestFailed(ErrorCode.TOO_MANY_KEYS,
                                f"the session holds its maximum of "
                                f"{limits.max_keys_per_session} keys")
        cost = key_cost(key, data)
        self._check_quota(session, 1, cost)
        self._insert(key, session.id, data)
        session.keys[key] = None
        self._charge(session, 1, cost)
        if self.journal is not None:
            self.journal.key_set(key, session.id, data)
        overflowed = self._notify(parent, "online", name_of(key), data, outcome.woken)
        for other in overflowed:
            outcome.ended.extend(self._end_backlogged(other, outcome.woken))

    def _register_sequential(self, session: ServerSession, key: str, data: bytes,
                             outcome: Outcome) -> None:
        """Register ``key`` + the next sequence number; the number is used up only when the
        key is created (a refused request leaves the counter as it was)."""
        sequence = self.sequence + 1
        created = f"{key}{sequence:019d}"
        if created in self.keys:
            raise RequestFailed(ErrorCode.KEY_EXISTS, f"{created} is already registered")
        self._register(session, created, data, outcome)
        self.sequence = sequence
        if self.journal is not None:
            self.journal.sequence_issued(sequence)
        outcome.result["key"] = created
        outcome.result["sequence"] = sequence

    def _unregister(self, session: ServerSession, key: str, outcome: Outcome) -> None:
        existing = self.keys.get(key)
        if existing is None:
            return
        if existing.owner != session.id:
            raise RequestFailed(ErrorCode.NOT_OWNER, f"{key} is registered by another session")
        self._charge(session, -1, -key_cost(key, existing.data))
        self._remove(key)
        session.keys.pop(key, None)
        if self.journal is not None:
            self.journal.key_deleted(key)
        overflowed = self._notify(parent_of(key), "offline", name_of(key), b"", outcome.woken)
        for other in overflowed:
            outcome.ended.extend(self._end_backlogged(other, outcome.woken))

    def _watch(self, session: ServerSession, prefix: str, watch_id: int, outcome: Outcome) -> None:
        if self._rewatch(session, watch_id, prefix, key=False):
            outcome.result["existing"] = True
            return
        self._check_watch_limits(session)
        members = [(name_of(key), self.keys[key].data) for key in self._children.get(prefix, {})]
        self._add_watch(session, watch_id, prefix, session.watches, self._watchers, members,
                        outcome)

    def _watch_key(self, session: ServerSession, key: str, watch_id: int,
                   outcome: Outcome) -> None:
        """Watch one key: a snapshot of it (if registered), then its online/offline events."""
        if self._rewatch(session, watch_id, key, key=True):
            outcome.result["existing"] = True
            return
        self._check_watch_limits(session)
        found = self.keys.get(key)
        members = [] if found is None else [(name_of(key), found.data)]
        self._add_watch(session, watch_id, key, session.key_watches, self._key_watchers,
                        members, outcome)

    @staticmethod
    def _rewatch(session: ServerSession, watch_id: int, path: str, *, key: bool) -> bool:
        """Whether ``watch_id`` already watches ``path`` (a watch re-sent after a reconnect);
        a watch id that watches something else (of either kind) is a bad request."""
        mine, other, other_kind = ((session.key_watches, session.watches, "the prefix ") if key
                                   else (session.watches, session.key_watches, "the key "))
        current = mine.get(watch_id)
        if current == path:
            return True
        if current is None and watch_id not in other:
            return False
        raise RequestFailed(ErrorCode.BAD_REQUEST, f"watch id {watch_id} already "
                            f"watches {current or other_kind + other[watch_id]}")

    def _add_watch(self, session: ServerSession, watch_id: int, path: str,
                   watching: dict[int, str], table: dict[str, dict[tuple[int, int], None]],
                   members: list[tuple[str, bytes]], outcome: Outcome) -> None:
        """Start a watch of ``path`` whose snapshot is ``members``: checked against the
        backlog limits, then queued as ``initial`` online events and the synced marker."""
        self._check_snapshot(session, path, members)
        watching[watch_id] = path
        self.watch_count += 1
        table.setdefault(path, {})[(session.id, watch_id)] = None
        for name, data in members:
            self._enqueue(session, WatchEvent(0, watch_id, "online", name, data, initial=True))
        self._enqueue(session, WatchEvent(0, watch_id, "synced"))
        outcome.woken.add(session.id)
        outcome.result["existing"] = False

    def _unwatch(self, session: ServerSession, watch_id: int) -> None:
        """Stop the watch ``watch_id`` of ``session`` (of either kind), if it has one."""
        for watching, table in ((session.watches, self._watchers),
                                (session.key_watches, self._key_watchers)):
            path = watching.pop(watch_id, None)
            if path is not None:
                self.watch_count -= 1
                self._drop_watcher(path, (session.id, watch_id), table)

    def _check_watch_limits(self, session: ServerSession) -> None:
        if len(session.watches) + len(session.key_watches) >= self.limits.max_watches_per_session:
            raise RequestFailed(ErrorCode.TOO_MANY_WATCHES,
                                f"the session holds its maximum of "
                                f"{self.limits.max_watches_per_session} watches")
        if self.watch_count >= self.limits.max_watches:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                f"the server holds its maximum of {self.limits.max_watches} watches")

    def _check_snapshot(self, session: ServerSession, path: str,
                        members: list[tuple[str, bytes]]) -> None:
        """Refuse a watch whose snapshot (``members`` and the synced marker) would take the
        backlogs past their limits."""
        snapshot = EVENT_OVERHEAD * (len(members) + 1) + sum(
            len(name) + len(data) for name, data in members)
        if (session.outbox_bytes + snapshot > self.limits.max_pending_bytes
                or len(session.outbox) + len(members) + 1 > self.limits.max_pending_notifications):
            raise RequestFailed(
                ErrorCode.QUOTA_EXCEEDED,
                f"the snapshot of {path} ({snapshot} bytes) would take this session's "
                f"unacknowledged events past {self.limits.max_pending_bytes} bytes")
        if self.pending_bytes + snapshot > self.limits.max_pending_bytes_total:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                "the server's watch backlog is full; try again later")

    # -- keys and watchers ---------------------------------------------------------------

    def children(self, prefix: str) -> dict[str, bytes]:
        """Direct children of ``prefix``: name → data."""
        return {name_of(key): self.keys[key].data for key in self._children.get(prefix, {})}

    def _insert(self, key: str, owner: int, data: bytes) -> None:
        self.keys[key] = Registration(owner, data)
        self._children.setdefault(parent_of(key), {})[key] = None

    def _remove(self, key: str) -> None:
        del self.keys[key]
        parent = parent_of(key)
        siblings = self._children.get(parent)
        if siblings is not None:
            siblings.pop(key, None)
            if not siblings:
                del self._children[parent]

    @staticmethod
    def _drop_watcher(path: str, watcher: tuple[int, int],
                      table: dict[str, dict[tuple[int, int], None]]) -> None:
        watchers = table.get(path)
        if watchers is not None:
            watchers.pop(watcher, None)
            if not watchers:
                del table[path]

    def _enqueue(self, session: ServerSession, event: WatchEvent) -> None:
        if (len(session.outbox) > self.limits.max_pending_notifications
                or session.outbox_bytes > self.limits.max_pending_bytes):
            return  # already backlogged: the session is being closed, its outbox cleared
        session.outbox.append(WatchEvent(session.next_seq, event.watch_id, event.event,
                                         event.id, event.data, event.initial))
        session.next_seq += 1
        cost = event_cost(event)
        session.outbox_bytes += cost
        self.pending_bytes += cost

    def _backlogged(self, session: ServerSession) -> bool:
        limits = self.limits
        return (len(session.outbox) > limits.max_pending_notifications
                or session.outbox_bytes > limits.max_pending_bytes
                or self.pending_bytes > limits.max_pending_bytes_total)

    # -- quotas --------------------------------------------------------------------------

    def bytes_of_session(self, session_id: int) -> int:
        """What the keys of ``session_id`` count against the byte quotas."""
        session = self.sessions.get(session_id)
        return 0 if session is None else session.bytes

    def _check_quota(self, session: ServerSession, keys: int, grow: int) -> None:
        """Refuse (``quota_exceeded``) a change adding ``keys`` keys and ``grow`` bytes."""
        limits = self.limits
        address = session.address
        if keys and len(self.keys) + keys > limits.max_keys:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                f"the server holds its maximum of {limits.max_keys} keys")
        if keys and self._address_keys.get(address, 0) + keys > limits.max_keys_per_address:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                f"address {address} holds its maximum of "
                                f"{limits.max_keys_per_address} keys")
        if grow <= 0:
            return
        if session.bytes + grow > limits.max_bytes_per_session:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                f"the session's keys would take {session.bytes + grow} bytes; "
                                f"the limit is {limits.max_bytes_per_session}")
        if self._address_bytes.get(address, 0) + grow > limits.max_bytes_per_address:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                f"address {address} would hold more than "
                                f"{limits.max_bytes_per_address} bytes of keys")
        if self.total_bytes + grow > limits.max_bytes:
            raise RequestFailed(ErrorCode.QUOTA_EXCEEDED,
                                f"the server would hold more than {limits.max_bytes} bytes of keys")

    def _charge(self, session: ServerSession, keys: int, grow: int) -> None:
        session.bytes += grow
        self.total_bytes += grow
        address = session.address
        for table, delta in ((self._address_keys, keys), (self._address_bytes, grow)):
            if delta:
                value = table.get(address, 0) + delta
                if value > 0:
                    table[address] = value
                else:
                    table.pop(address, None)

    def _notify(self, prefix: str, event: str, name: str, data: bytes,
                woken: set[int]) -> list[int]:
        """Queue one event to every watcher of ``prefix``, then to every watcher of the key
        itself; return sessions now backlogged."""
        overflowed: list[int] = []
        watchers = list(self._watchers.get(prefix, {}))
        if self._key_watchers:
            watchers.extend(self._key_watchers.get(join(prefix, name), {}))
        for session_id, watch_id in watchers:
            session = self.sessions.get(session_id)
            if session is None:
                continue
            self._enqueue(session, WatchEvent(0, watch_id, event, name, data))
            woken.add(session_id)
            if self._backlogged(session):
                overflowed.append(session_id)
        return overflowed
