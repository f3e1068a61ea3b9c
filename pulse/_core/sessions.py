"""Session tracking with ZooKeeper's bucketed expiry, as a pure state machine.

Rules this module keeps:

* Time is an argument. ``now`` is a monotonic clock chosen by the driver and is used for
  expiry; ``wall`` (seconds since the Unix epoch) is used only to lay out session ids.
* A session's expiry time is rounded *up* to the next multiple of ``tick``:
  ``expiry = ((now + timeout) // tick + 1) * tick``. Sessions whose expiry falls on the same
  multiple share one bucket (a set), so the tracker wakes at most once per tick and an expiry
  check visits only the buckets that are due: its cost is proportional to the sessions that
  expire, never to the sessions that exist. A session therefore expires between ``timeout``
  and ``timeout + tick`` after its last touch.
* Any request touches its session. A touch moves the session to a later bucket (or leaves it
  where it is when the rounded expiry did not change); it never moves a session earlier.
* Session ids are unique across restarts: ``server id (7 bits) | milliseconds since
  2020-01-01 UTC (40 bits) | counter (16 bits)``, and never smaller than ``last + 1`` of the
  ids issued before (pass the highest persisted id as ``last_session_id``), so a wall clock
  that steps backwards cannot reissue an id either. Ids stay below 2**63 (SQLite integers).
* A session's password is ``HMAC-SHA256(server secret, session id)`` (first 16 bytes); it is
  never stored and is compared with :func:`hmac.compare_digest`.
* Proposed timeouts are clamped into ``[min_timeout, max_timeout]`` (defaults ``2 * tick``
  and ``20 * tick``, as in ZooKeeper).
* A session being closed (explicitly or because it expired) is flagged *closing*: it is no
  longer touched, re-attached or expired again until the driver calls :meth:`remove`.
* Local-pause guard (optional, ``max_local_pause``): a server whose own loop stalled (SIGSTOP,
  GC, swap) must not expire sessions whose renewals are sitting unread in its sockets. While
  sessions exist, :meth:`next_deadline` comes at least every ``max_local_pause / 2`` after the
  previous :meth:`expire` call, so a healthy driver checks often. When :meth:`expire` runs more
  than ``max_local_pause`` after the previous check, the gap is a stall: every session whose
  expiry fell inside it is given the stall back (expiry + stall, rounded up to a tick, and at
  least one tick after ``now``) instead of being expired. Touches never count as checks: a
  request read right after a stall must not hide the stall from the check that follows.
  A session nobody renews therefore still expires, at most one stall plus one tick late.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
from dataclasses import dataclass

from pulse.actions import Expire
from pulse.errors import AuthFailed, SessionExpired

SERVER_ID_BITS = 7
TIME_BITS = 40
COUNTER_BITS = 16
MAX_SERVER_ID = (1 << SERVER_ID_BITS) - 1
ID_EPOCH = 1_577_836_800.0  # 2020-01-01T00:00:00Z
PASSWORD_SIZE = 16


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """What a client learns when it opens or re-attaches a session."""

    session_id: int
    timeout: float
    password: bytes


class _Session:
    __slots__ = ("bucket", "closing", "timeout")

    def __init__(self, timeout: float, bucket: int) -> None:
        self.timeout = timeout
        self.bucket = bucket  # expiry time = bucket * tick
        self.closing = False


def _positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def compose_session_id(server_id: int, wall: float, counter: int = 0) -> int:
    """The session id laid out from ``server_id``, the wall-clock time and a counter."""
    if not 0 <= server_id <= MAX_SERVER_ID:
        raise ValueError(f"server id must be between 0 and {MAX_SERVER_ID}, got {server_id}")
    millis = max(0, int((wall - ID_EPOCH) * 1000)) & ((1 << TIME_BITS) - 1)
    return (server_id << (TIME_BITS + COUNTER_BITS)) | (millis << COUNTER_BITS) | counter


def server_id_of(session_id: int) -> int:
    """The id of the server that issued ``session_id``."""
    return session_id >> (TIME_BITS + COUNTER_BITS)


class SessionTracker:
    """Every open session of one server, with bucketed expiry.

    Typical use by a driver: :meth:`open` or :meth:`reattach` on connect, :meth:`touch` on
    every request, sleep until :meth:`next_deadline`, then :meth:`expire` and for each
    :class:`~pulse.actions.Expire` delete the session's state and call :meth:`remove`.
    """

    __slots__ = (
        "_buckets",
        "_heap",
        "_last_check",
        "_last_id",
        "_secret",
        "_sessions",
        "max_local_pause",
        "max_timeout",
        "min_timeout",
        "server_id",
        "stalled_for",
        "stalls",
        "tick",
    )

    def __init__(
        self,
        *,
        secret: bytes,
        server_id: int = 1,
        tick: float = 2.0,
        min_timeout: float | None = None,
        max_timeout: float | None = None,
        last_session_id: int = 0,
        max_local_pause: float | None = None,
    ) -> None:
        if not 0 <= server_id <= MAX_SERVER_ID:
            raise ValueError(f"server id must be between 0 and {MAX_SERVER_ID}, got {server_id}")
        if len(secret) < 16:
            raise ValueError("the server secret must be at least 16 bytes")
        self.tick = _positive("tick", tick)
        self.min_timeout = _positive("min_timeout", 2 * self.tick if min_timeout is None else min_timeout)
        self.max_timeout = _positive("max_timeout", 20 * self.tick if max_timeout is None else max_timeout)
        if self.min_timeout > self.max_timeout:
            raise ValueError(
                f"min_timeout {self.min_timeout} is above max_timeout {self.max_timeout}"
            )
        self.server_id = server_id
        self._secret = bytes(secret)
        self._last_id = last_session_id
        self._sessions: dict[int, _Session] = {}
        self._buckets: dict[int, set[int]] = {}
        self._heap: list[int] = []  # bucket numbers; may hold numbers of emptied buckets
        self.max_local_pause = (
            None if max_local_pause is None else _positive("max_local_pause", max_local_pause)
        )
        self._last_check: float | None = None  # when expire() last ran (the guard's clock)
        self.stalls = 0  # stalls detected (each one gave the due sessions their time back)
        self.stalled_for = 0.0  # total seconds of detected stalls

    # -- identity ------------------------------------------------------------------------

    @property
    def last_session_id(self) -> int:
        """The highest session id issued so far (persist it to stay unique across restarts)."""
        return self._last_id

    def next_session_id(self, wall: float) -> int:
        """A new session id, greater than every id issued before."""
        candidate = compose_session_id(self.server_id, wall)
        session_id = max(candidate, self._last_id + 1)
        if server_id_of(session_id) != self.server_id:
            raise OverflowError("session id space of this server id is exhausted")
        self._last_id = session_id
        return session_id

    def password(self, session_id: int) -> bytes:
        """The password of ``session_id``: HMAC-SHA256(secret, id), first 16 bytes."""
        mac = hmac.new(self._secret, session_id.to_bytes(8, "big", signed=True), hashlib.sha256)
        return mac.digest()[:PASSWORD_SIZE]

    def check_password(self, session_id: int, password: bytes) -> bool:
        """True if ``password`` belongs to ``session_id`` (constant-time comparison)."""
        return hmac.compare_digest(self.password(session_id), password)

    def negotiate(self, proposed: float) -> float:
        """The timeout granted for a proposal: clamped into ``[min_timeout, max_timeout]``."""
        if not isinstance(proposed, int | float) or math.isnan(proposed):
            raise ValueError(f"a proposed session timeout must be a number, got {proposed!r}")
        return min(max(float(proposed), self.min_timeout), self.max_timeout)

    # -- lifecycle -----------------------------------------------------------------------

    def bucket_for(self, now: float, timeout: float) -> int:
        """The bucket number of a session touched at ``now``: expiry is number × tick."""
        return int((now + timeout) // self.tick) + 1

    def open(self, now: float, proposed_timeout: float, wall: float) -> SessionGrant:
        """Create a session with a negotiated timeout; its lease starts at ``now``."""
        timeout = self.negotiate(proposed_timeout)
        session_id = self.next_session_id(wall)
        self._add(session_id, timeout, now)
        return SessionGrant(session_id, timeout, self.password(session_id))

    def restore(self, session_id: int, timeout: float, now: float) -> None:
        """Track a session restored from durable state, with a fresh full timeout from ``now``."""
        if session_id in self._sessions:
            raise ValueError(f"session {session_id:#x} is already tracked")
        self._add(session_id, self.negotiate(timeout), now)
        self._last_id = max(self._last_id, session_id)

    def reattach(self, session_id: int, password: bytes, now: float) -> SessionGrant:
        """Accept a client coming back to ``session_id`` on a new connection (touches it).

        Raises :class:`~pulse.errors.AuthFailed` for a wrong password and
        :class:`~pulse.errors.SessionExpired` for a session that is unknown, expired or closing.
        """
        if not self.check_password(session_id, password):
            raise AuthFailed(f"wrong password for session {session_id:#x}")
        session = self._sessions.get(session_id)
        if session is None or session.closing:
            raise SessionExpired(f"session {session_id:#x} has expired")
        self._move(session_id, session, self.bucket_for(now, session.timeout))
        return SessionGrant(session_id, session.timeout, self.password(session_id))

    def touch(self, session_id: int, now: float) -> bool:
        """Extend the lease of ``session_id``; False if it is unknown or closing."""
        session = self._sessions.get(session_id)
        if session is None or session.closing:
            return False
        # The hot path of every renewal: bucket_for and _move, inlined.
        bucket = int((now + session.timeout) // self.tick) + 1
        old = session.bucket
        if bucket > old:
            buckets = self._buckets
            members = buckets.get(old)
            if members is not None:
                members.discard(session_id)
                if not members:
                    del buckets[old]
            session.bucket = bucket
            members = buckets.get(bucket)
            if members is None:
                members = buckets[bucket] = set()
                heapq.heappush(self._heap, bucket)
            members.add(session_id)
        return True

    def set_closing(self, session_id: int) -> bool:
        """Flag ``session_id`` as closing so nothing more is served on it; False if unknown."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        if not session.closing:
            session.closing = True
            self._unbucket(session_id, session)
        return True

    def remove(self, session_id: int) -> bool:
        """Forget ``session_id`` entirely; False if it was not tracked."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        if not session.closing:
            self._unbucket(session_id, session)
        return True

    def expire(self, now: float) -> list[Expire]:
        """Flag every session whose bucket is due at ``now`` as closing and report it.

        Only the due buckets are visited. The driver deletes each session's state and then
        calls :meth:`remove`.
        """
        if self.max_local_pause is not None:
            last, self._last_check = self._last_check, now
            if last is not None and now - last > self.max_local_pause:
                self._give_back(now, now - last)
        expired: list[Expire] = []
        while self._heap and self._heap[0] * self.tick <= now:
            number = heapq.heappop(self._heap)
            members = self._buckets.pop(number, None)
            if not members:
                continue
            for session_id in sorted(members):
                self._sessions[session_id].closing = True
                expired.append(Expire(session_id))
        return expired

    def _give_back(self, now: float, stall: float) -> None:
        """The loop stalled for ``stall`` seconds before ``now``: move every session due by
        ``now`` to its expiry + ``stall`` (at least the first bucket after ``now``)."""
        self.stalls += 1
        self.stalled_for += stall
        first_after_now = int(now // self.tick) + 1
        while self._heap and self._heap[0] * self.tick <= now:
            number = heapq.heappop(self._heap)
            members = self._buckets.pop(number, None)
            if not members:
                continue
            target = max(math.ceil((number * self.tick + stall) / self.tick), first_after_now)
            for session_id in members:
                session = self._sessions[session_id]
                session.bucket = target
                self._bucket(session_id, target)

    def next_deadline(self) -> float | None:
        """When the earliest non-empty bucket is due, or None without open sessions.

        With the local-pause guard, never later than ``max_local_pause / 2`` after the last
        check while sessions exist.
        """
        while self._heap and not self._buckets.get(self._heap[0]):
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        deadline = self._heap[0] * self.tick
        if self.max_local_pause is not None and self._last_check is not None:
            deadline = min(deadline, self._last_check + self.max_local_pause / 2)
        return deadline

    # -- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def is_live(self, session_id: int) -> bool:
        """True if ``session_id`` is tracked and not closing."""
        session = self._sessions.get(session_id)
        return session is not None and not session.closing

    def timeout_of(self, session_id: int) -> float | None:
        """The negotiated timeout of ``session_id`` (None if unknown)."""
        session = self._sessions.get(session_id)
        return None if session is None else session.timeout

    def expiry_of(self, session_id: int) -> float | None:
        """When ``session_id`` will expire unless touched (None if unknown or closing)."""
        session = self._sessions.get(session_id)
        if session is None or session.closing:
            return None
        return session.bucket * self.tick

    def session_ids(self) -> list[int]:
        """Every tracked session id, closing ones included."""
        return list(self._sessions)

    # -- buckets -------------------------------------------------------------------------

    def _add(self, session_id: int, timeout: float, now: float) -> None:
        if self.max_local_pause is not None and not self._buckets:
            self._last_check = now  # nothing was due while there were no sessions
        bucket = self.bucket_for(now, timeout)
        session = _Session(timeout, bucket)
        self._sessions[session_id] = session
        self._bucket(session_id, bucket)

    def _bucket(self, session_id: int, number: int) -> None:
        members = self._buckets.get(number)
        if members is None:
            members = self._buckets[number] = set()
            heapq.heappush(self._heap, number)
        members.add(session_id)

    def _unbucket(self, session_id: int, session: _Session) -> None:
        members = self._buckets.get(session.bucket)
        if members is not None:
            members.discard(session_id)
            if not members:
                del self._buckets[session.bucket]

    def _move(self, session_id: int, session: _Session, number: int) -> None:
        if number == session.bucket:
            return
        self._unbucket(session_id, session)
        session.bucket = number
        self._bucket(session_id, number)
