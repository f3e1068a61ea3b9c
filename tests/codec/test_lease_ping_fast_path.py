"""The lease server's renewal fast path agrees with the general codec, byte for byte."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pulse.codec import encode_message, unpack_body
from pulse.errors import RemoteProtocolError
from pulse.plugins.lease.protocol import (
    MAX_ID,
    MAX_PING_MESSAGE,
    BadRequest,
    Get,
    Ping,
    Request,
    Response,
    parse_ping_message,
    parse_request,
    ping_reply,
    request_to_wire,
    response_to_wire,
)

ids = st.integers(0, MAX_ID)
#: Every msgpack uint format's boundaries, where an off-by-one in a width would show.
EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_ID]


def ping_bytes(xid: int, ack: int) -> bytes:
    return encode_message(request_to_wire(Request(xid, Ping(), ack)))


@given(ids)
def test_ping_reply_is_the_general_encoding(xid: int) -> None:
    """The pre-built answer equals encode_message(response_to_wire(ok, {})) for any xid."""
    assert ping_reply(xid) == encode_message(response_to_wire(Response(xid, {})))


@pytest.mark.parametrize("xid", EDGES)
def test_ping_reply_at_every_integer_width(xid: int) -> None:
    """At each msgpack width boundary the pre-built answer is the general encoding."""
    assert ping_reply(xid) == encode_message(response_to_wire(Response(xid, {})))


@given(ids, ids)
def test_a_ping_from_the_general_encoder_is_recognised(xid: int, ack: int) -> None:
    """Every ping request_to_wire + encode_message can make parses to its xid and ack."""
    data = ping_bytes(xid, ack)
    assert parse_ping_message(data, len(data)) == (xid, ack)


@pytest.mark.parametrize("xid", EDGES)
@pytest.mark.parametrize("ack", EDGES)
def test_every_integer_width_is_read(xid: int, ack: int) -> None:
    """xid and ack at each msgpack width boundary are read back exactly."""
    data = ping_bytes(xid, ack)
    assert len(data) <= MAX_PING_MESSAGE
    assert parse_ping_message(data, len(data)) == (xid, ack)


@given(ids, ids, st.binary(min_size=1, max_size=64))
def test_only_the_first_size_bytes_count(xid: int, ack: int, after: bytes) -> None:
    """Bytes after the message in the buffer are ignored; a short size is no ping."""
    data = ping_bytes(xid, ack)
    buffer = bytearray(data + after)
    assert parse_ping_message(buffer, len(data)) == (xid, ack)
    assert parse_ping_message(buffer, len(data) - 1) is None
    assert parse_ping_message(data[:-1], len(data)) is None  # size beyond the data


def test_other_requests_and_other_encodings_are_left_to_the_general_path() -> None:
    """Anything but a canonical argument-less ping is not taken by the fast path."""
    others = [
        encode_message(request_to_wire(Request(7, Get("/a"), 0))),
        encode_message([0, 7, 0, "ping", {"extra": 1}]),  # arguments (ignored, but there)
        encode_message([0, 7, 0, "pong", {}]),
        encode_message([1, 7, 0, "ping", {}]),  # not a request
        encode_message([0, -1, 0, "ping", {}]),  # negative xid (a BadRequest)
        encode_message([0, 7, -1, "ping", {}]),
        encode_message([0, True, 0, "ping", {}]),
        encode_message([0, 7, 0, "ping", {}, 1]),
        b"\x00\x00\x00\x0b" + msgpack.packb([0, 7, 0, "ping", {}]) + b"\x00",  # wrong length
        b"\x00\x00\x00\x0a\x95\x00\xd0\x07\x00\xa4ping\x80",  # signed int8 xid
    ]
    for data in others:
        assert parse_ping_message(data, len(data)) is None, data


@given(st.binary(max_size=MAX_PING_MESSAGE))
@example(b"\x00\x00\x00\x0a\x95\x00\x07\x00\xa4ping\x80")
@example(b"\x00\x00\x00\x12\x95\x00\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x00\xa4ping\x80")
@example(b"\x00\x00\x00\x0b\x95\x00\xcd\x07\x00\xa4ping\x80")
def test_whatever_the_fast_path_accepts_the_general_path_reads_alike(data: bytes) -> None:
    """For any bytes: a fast-path result is exactly what decoding + parse_request give."""
    parsed = parse_ping_message(data, len(data))
    if parsed is None:
        return
    assert len(data) >= 4 and int.from_bytes(data[:4], "big") == len(data) - 4
    request = parse_request(unpack_body(data[4:]))
    assert request == Request(parsed[0], Ping(), parsed[1])


@given(st.binary(min_size=10, max_size=MAX_PING_MESSAGE - 4))
def test_random_bodies_in_a_ping_frame_never_raise(body: bytes) -> None:
    """Any body in a ping-sized frame gives None or the general path's ping; never raises."""
    data = len(body).to_bytes(4, "big") + body
    parsed = parse_ping_message(data, len(data))
    if parsed is not None:
        assert parse_request(unpack_body(body)) == Request(parsed[0], Ping(), parsed[1])
    else:
        try:
            request = parse_request(unpack_body(body))
        except (BadRequest, RemoteProtocolError):
            return
        # The general path may accept pings the fast path leaves to it (other encodings).
        assert not (isinstance(request.body, Ping) and body == ping_bytes(request.xid,
                                                                          request.ack)[4:])
