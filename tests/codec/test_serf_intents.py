"""Serf's leave intent and Lamport times carried in memberlist user messages."""

from __future__ import annotations

import msgpack

from pulse.plugins.gossip.codec import SERF_PUSH_PULL, encode_serf_leave, serf_lamport_time


def test_leave_intent_layout() -> None:
    """A leave intent is Serf's type byte 0 then an old-spec msgpack map {LTime, Node}."""
    data = encode_serf_leave(7, "node-a")
    assert data[0] == 0
    assert msgpack.unpackb(data[1:], raw=True) == {b"LTime": 7, b"Node": b"node-a"}


def test_lamport_time_of_push_pull_state_counts_our_status_time() -> None:
    """The push-pull user state's clocks and our own status time all count; others' do not."""
    body = msgpack.packb({"LTime": 5, "StatusLTimes": {"me": 9, "other": 50}, "EventLTime": 3,
                          "QueryLTime": 2, "LeftMembers": []}, use_bin_type=False)
    state = bytes((SERF_PUSH_PULL,)) + body
    assert serf_lamport_time(state, "me") == 9
    assert serf_lamport_time(state, "nobody") == 5


def test_lamport_time_of_garbage_is_zero() -> None:
    """Unknown types, empty and malformed payloads carry no time (never an exception)."""
    assert serf_lamport_time(b"", "me") == 0
    assert serf_lamport_time(b"\x42\x01", "me") == 0
    assert serf_lamport_time(b"\x00\xc1", "me") == 0
    assert serf_lamport_time(encode_serf_leave(12, "x"), "me") == 12
