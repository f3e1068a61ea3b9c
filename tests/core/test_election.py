"""Leader election rules in explicit time: who leads, when leadership is in doubt, and the
lease server's sequential keys (the pulse:// fencing token)."""

from __future__ import annotations

import pytest

from pulse._core.election import (
    Candidacy,
    InDoubt,
    Stage,
    leader_of,
    ordered,
    predecessor,
    sequence_of,
)
from pulse._core.sessions import ID_EPOCH, SessionTracker
from pulse.plugins.lease.protocol import (
    Connect,
    ErrorCode,
    Register,
    Request,
    parse_request,
    request_to_wire,
)
from pulse.plugins.lease.state import LeaseState, RequestFailed, ServerSession

WALL = ID_EPOCH + 1_000_000.0


def test_sequence_is_the_number_after_the_last_dash() -> None:
    """A candidate name's sequence number is the digits after its last '-'."""
    assert sequence_of("host.a1b2-0000000042") == 42
    assert sequence_of("x.y-z-7") == 7
    assert sequence_of("no-number-") is None
    assert sequence_of("plain") is None
    assert sequence_of("bad-１２") is None  # non-ASCII digits are not a sequence


def test_lowest_sequence_leads_and_each_waits_on_the_one_below() -> None:
    """The lowest number leads regardless of name order; the predecessor is the next lower."""
    names = ["z.1-0000000009", "a.1-0000000012", "m.1-0000000003", "junk"]
    assert ordered(names) == ["m.1-0000000003", "z.1-0000000009", "a.1-0000000012"]
    assert leader_of(names) == "m.1-0000000003"
    assert predecessor(names, "a.1-0000000012") == "z.1-0000000009"
    assert predecessor(names, "m.1-0000000003") is None
    assert predecessor(names, "missing-0000000001") is None
    assert leader_of(["junk"]) is None


def test_doubt_comes_two_thirds_of_the_timeout_after_the_last_confirmed_send() -> None:
    """With T = 3 and the default margin T/3, a leader elected on a listing sent at 10.0 is
    safe until 12.0 and in doubt at 12.0, not before."""
    c = Candidacy(3.0)
    assert c.elected(10.2, token=7, sent_at=10.0) == []
    assert c.stage is Stage.LEADING and c.token == 7
    assert c.next_deadline() == pytest.approx(12.0)
    assert c.handle_timer(11.99) == []
    [doubt] = c.handle_timer(12.0)
    assert isinstance(doubt, InDoubt) and "no confirmation" in doubt.reason
    assert c.stage is Stage.IN_DOUBT and c.safe_until is None and c.next_deadline() is None
    assert c.handle_timer(20.0) == []  # reported once


def test_confirmations_extend_only_forwards() -> None:
    """An answered request extends leadership from its send time; an older one does not
    shorten it."""
    c = Candidacy(6.0)
    c.elected(0.0, token=1, sent_at=0.0)
    c.confirmed(1.0)
    assert c.safe_until == pytest.approx(5.0)
    c.confirmed(0.5)
    assert c.safe_until == pytest.approx(5.0)
    assert c.confirm_interval == pytest.approx(1.0)


def test_doubt_is_immediate_on_disconnect_or_lost_key() -> None:
    """Leaving the connected state or losing the key ends leadership at once, once."""
    c = Candidacy(3.0)
    c.elected(0.0, token=1, sent_at=0.0)
    [doubt] = c.session_not_connected(0.5, "disconnected")
    assert doubt.reason == "session disconnected"
    assert c.key_gone(0.6) == []
    c2 = Candidacy(3.0)
    c2.elected(0.0, token=1, sent_at=0.0)
    assert c2.key_gone(0.1) == [InDoubt("the candidate key is gone")]
    c2.confirmed(1.0)  # a late answer does not bring leadership back
    assert c2.stage is Stage.IN_DOUBT


def test_stale_election_proof_is_doubt_at_once() -> None:
    """A listing answered too late to prove anything never yields leadership."""
    c = Candidacy(3.0, margin=1.5)
    assert [type(a) for a in c.elected(5.0, token=9, sent_at=3.0)] == [InDoubt]


def test_margin_must_leave_room() -> None:
    """The margin lies strictly between 0 and the session timeout."""
    for bad in (0.0, 3.0, -1.0):
        with pytest.raises(ValueError):
            Candidacy(3.0, margin=bad)
    with pytest.raises(ValueError):
        Candidacy(0.0)


def _lease() -> tuple[LeaseState, ServerSession, ServerSession]:
    tracker = SessionTracker(secret=b"k" * 32, tick=1.0, max_timeout=100.0)
    s = LeaseState(tracker)
    a, _, _ = s.connect(Connect(60.0), "10.0.0.1", 0.0, WALL)
    b, _, _ = s.connect(Connect(60.0), "10.0.0.2", 0.0, WALL)
    return s, a, b


def test_sequential_keys_take_increasing_numbers() -> None:
    """Each sequential register creates prefix + next number (19 digits), answered with the
    key and the number; plain registers do not use numbers up."""
    s, a, b = _lease()
    s.sequence = 41
    first = s.handle(a.id, Request(1, Register("/e/a-", b"x", sequential=True)), 1.0)
    s.handle(a.id, Request(2, Register("/e/plain")), 1.0)
    second = s.handle(b.id, Request(1, Register("/e/b-", sequential=True)), 1.0)
    assert first.result == {"key": "/e/a-0000000000000000042", "sequence": 42}
    assert second.result == {"key": "/e/b-0000000000000000043", "sequence": 43}
    assert s.keys["/e/a-0000000000000000042"].owner == a.id
    assert s.children("/e").keys() == {"a-0000000000000000042", "plain",
                                       "b-0000000000000000043"}


def test_refused_sequential_register_keeps_the_counter() -> None:
    """A sequential register refused (data too large) does not consume a number."""
    s, a, _ = _lease()
    s.sequence = 5
    with pytest.raises(RequestFailed) as info:
        s.handle(a.id, Request(1, Register("/e/a-", b"x" * 10_000_000, sequential=True)), 1.0)
    assert info.value.code is ErrorCode.DATA_TOO_LARGE
    assert s.sequence == 5


class _Journal:
    def __init__(self) -> None:
        self.sequences: list[int] = []

    def session_opened(self, session_id: int, timeout: float, last_session_id: int) -> None:
        pass

    def session_ended(self, session_id: int) -> None:
        pass

    def key_set(self, key: str, session_id: int, data: bytes) -> None:
        pass

    def key_deleted(self, key: str) -> None:
        pass

    def sequence_issued(self, sequence: int) -> None:
        self.sequences.append(sequence)


def test_sequence_numbers_are_journalled() -> None:
    """Every number issued is written to the journal, in order."""
    tracker = SessionTracker(secret=b"k" * 32, tick=1.0, max_timeout=100.0)
    journal = _Journal()
    s = LeaseState(tracker, journal=journal)
    a, _, _ = s.connect(Connect(60.0), "10.0.0.1", 0.0, WALL)
    for i in range(3):
        s.handle(a.id, Request(i, Register("/e/n-", sequential=True)), 1.0)
    assert journal.sequences == [1, 2, 3]


def test_sequential_flag_round_trips_and_is_checked() -> None:
    """The flag travels on the wire only when set; a non-boolean is a bad request."""
    wire = request_to_wire(Request(3, Register("/e/a-", b"d", sequential=True)))
    assert parse_request(wire).body == Register("/e/a-", b"d", True)
    plain = request_to_wire(Request(4, Register("/e/a", b"d")))
    assert parse_request(plain).body == Register("/e/a", b"d", False)
    assert "sequential" not in str(plain)


def test_non_boolean_sequential_flag_is_refused() -> None:
    """``sequential: 1`` is refused as a bad request naming the field."""
    from pulse.plugins.lease.protocol import BadRequest

    wire = request_to_wire(Request(3, Register("/e/a-", b"d", sequential=True)))
    wire[4]["sequential"] = 1
    with pytest.raises(BadRequest, match="sequential"):
        parse_request(wire)
