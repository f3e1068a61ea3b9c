"""Leader election with fencing, as pure rules: who leads, and when leadership is in doubt.

Pure: no I/O, no clock. The trio glue (:mod:`pulse.election`) feeds it.

**Who leads** (ZooKeeper's ephemeral-sequential recipe): every candidate creates one
ephemeral key under the election prefix whose name ends in a sequence number given by the
server (``<id>.<nonce>-<digits>``); the lowest number leads, every other candidate waits for
the key just below its own (its *predecessor*) to go. Keys are ephemeral, so a candidate
whose session ends drops out by itself.

**When leadership is in doubt.** Let ``T`` be the negotiated session timeout. A server
expires a session no earlier than ``T`` after the last request it *received* on it (the lease
server and ZooKeeper both round the expiry *up* to their tick), and it received every request
the client saw answered after the client *sent* it. So a request sent at ``s`` and answered
proves the session alive until at least ``s + T``, measured on any clock that runs at the
same rate — no other candidate can be elected before then. The leader confirms its session
every ``T / 6`` with a request of its own (:data:`CONFIRM_FRACTION`), and declares its
leadership in doubt at ``s + T - margin`` (default margin ``T / 3``), where ``s`` is the send
time of the latest answered confirmation. It is also in doubt at once when the session is
reported anything but connected, or when its own key is found gone.

Why not the session client's own expiry (:mod:`pulse._core.session_client`)? It fires at
``last byte heard + T``; the last byte heard is *later* than the server's last touch (by at
least the round trip, and by much more when it was a watch notification, which touches
nothing), so the client-side expiry fires *after* the server's, never before. Its read
timeout (``2/3 T`` after the last byte, state DISCONNECTED) is earlier but again counts from
a receive, not from a touch. The rule above counts from what the server provably received.

Timing of ``T / 6`` confirmations and a ``T / 3`` margin: in a healthy session the latest
answered confirmation is at most ``T / 6`` plus one round trip old, so doubt needs about
``T / 2`` of silence; the remaining ``T / 3`` before the earliest server expiry is what the
application has to stop (``pulse run`` uses half of it as SIGTERM grace and keeps ``T / 6``
for delivery of SIGKILL and for the rates of the two clocks).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

#: Confirm the session every ``T * CONFIRM_FRACTION`` while leading.
CONFIRM_FRACTION = 1.0 / 6.0
#: Default margin before the earliest possible server-side expiry, as a fraction of ``T``.
MARGIN_FRACTION = 1.0 / 3.0


def sequence_of(name: str) -> int | None:
    """The sequence number a candidate key's name ends in (digits after the last ``-``)."""
    _, sep, digits = name.rpartition("-")
    if not sep or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits)


def ordered(names: Iterable[str]) -> list[str]:
    """Candidate names by sequence number (names without one are not candidates)."""
    numbered = [(seq, name) for name in names if (seq := sequence_of(name)) is not None]
    return [name for _, name in sorted(numbered)]


def leader_of(names: Iterable[str]) -> str | None:
    """The candidate with the lowest sequence number (None when there is none)."""
    candidates = ordered(names)
    return candidates[0] if candidates else None


def predecessor(names: Iterable[str], mine: str) -> str | None:
    """The candidate just below ``mine`` (None: ``mine`` leads, or is not a candidate)."""
    candidates = ordered(names)
    if mine not in candidates:
        return None
    index = candidates.index(mine)
    return candidates[index - 1] if index else None


class Stage(enum.Enum):
    """Where one candidacy stands."""

    WAITING = "waiting"
    LEADING = "leading"
    IN_DOUBT = "in_doubt"  # final for this candidacy


@dataclass(frozen=True, slots=True)
class InDoubt:
    """Leadership is in doubt: stop acting as leader now; ``reason`` says why."""

    reason: str


class Candidacy:
    """One candidacy's timing: when the leader must stop.

    ``session_timeout`` is the negotiated ``T``; ``margin`` (default ``T / 3``) how long
    before the earliest server-side expiry leadership is given up.
    """

    def __init__(self, session_timeout: float, margin: float | None = None) -> None:
        if not session_timeout > 0:
            raise ValueError(f"session timeout must be > 0, got {session_timeout!r}")
        margin = session_timeout * MARGIN_FRACTION if margin is None else float(margin)
        if not 0 < margin < session_timeout:
            raise ValueError(f"margin must be in (0, {session_timeout:g}), got {margin!r}")
        self.session_timeout = float(session_timeout)
        self.margin = margin
        self.stage = Stage.WAITING
        self.token: int | None = None
        self.confirmed_at: float | None = None  # send time of the latest answered request
        self.reason = ""

    @property
    def confirm_interval(self) -> float:
        """How often the leader confirms its session (``T / 6``)."""
        return self.session_timeout * CONFIRM_FRACTION

    @property
    def safe_until(self) -> float | None:
        """Until when this candidate may act as leader (None unless leading)."""
        if self.stage is not Stage.LEADING or self.confirmed_at is None:
            return None
        return self.confirmed_at + self.session_timeout - self.margin

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next."""
        return self.safe_until

    def confirmed(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was answered while the session was connected."""
        if self.stage is Stage.IN_DOUBT:
            return
        if self.confirmed_at is None or sent_at > self.confirmed_at:
            self.confirmed_at = sent_at

    def elected(self, now: float, token: int, sent_at: float) -> list[InDoubt]:
        """The listing sent at ``sent_at`` showed this candidate lowest: it leads with
        ``token``, unless the proof is already too old at ``now``."""
        if self.stage is not Stage.WAITING:
            return []
        self.confirmed(sent_at)
        self.stage = Stage.LEADING
        self.token = token
        return self.handle_timer(now)

    def session_not_connected(self, now: float, state: str) -> list[InDoubt]:
        """The session left the connected state (disconnected, expired, closed)."""
        return self._doubt(f"session {state}")

    def key_gone(self, now: float) -> list[InDoubt]:
        """This candidate's key was found missing."""
        return self._doubt("the candidate key is gone")

    def handle_timer(self, now: float) -> list[InDoubt]:
        """Doubt once ``now`` reaches :attr:`safe_until`."""
        safe = self.safe_until
        if safe is not None and now >= safe:
            age = now - (self.confirmed_at or now)
            return self._doubt(f"no confirmation of the session for {age:.3f} s "
                               f"(limit {self.session_timeout - self.margin:.3f} s)")
        return []

    def _doubt(self, reason: str) -> list[InDoubt]:
        if self.stage is Stage.IN_DOUBT:
            return []
        self.stage = Stage.IN_DOUBT
        self.reason = reason
        return [InDoubt(reason)]


__all__ = [
    "CONFIRM_FRACTION",
    "MARGIN_FRACTION",
    "Candidacy",
    "InDoubt",
    "Stage",
    "leader_of",
    "ordered",
    "predecessor",
    "sequence_of",
]
