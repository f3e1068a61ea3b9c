"""Jute encoding and the ZooKeeper records: exact bytes, round trips, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from pulse.plugins.zookeeper.jute import (
    ConnectRequest,
    ConnectResponse,
    FrameDecoder,
    JuteReader,
    JuteWriter,
    ReplyHeader,
    RequestHeader,
    Stat,
    WatcherEvent,
    frame,
)
from pulse.plugins.zookeeper.protocol import (
    ClientConnection,
    CloseSession,
    Create,
    Exists,
    GetChildren2,
    GetData,
    Ping,
    Request,
    SetData,
    Xid,
    encode_request,
)

ints = st.integers(-(2**31), 2**31 - 1)
longs = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=40)
blobs = st.binary(max_size=64)
stats = st.builds(Stat, longs, longs, longs, longs, ints, ints, ints, longs, ints, ints, longs)


# --------------------------------------------------------------------------- exact bytes


def test_connect_request_exact_bytes() -> None:
    """A new-session ConnectRequest is 45 bytes after its length, fields in jute order."""
    data = frame(ConnectRequest(timeout_ms=2000).encode())
    expected = (
        bytes.fromhex("0000002d")  # frame length 45
        + bytes.fromhex("00000000")  # protocolVersion 0
        + bytes.fromhex("0000000000000000")  # lastZxidSeen
        + bytes.fromhex("000007d0")  # timeOut 2000 ms
        + bytes.fromhex("0000000000000000")  # sessionId 0: new session
        + bytes.fromhex("00000010") + bytes(16)  # passwd: 16 zero bytes
        + bytes.fromhex("00")  # readOnly false
    )
    assert data == expected


def test_reattach_request_carries_id_password_and_zxid() -> None:
    """A re-attach puts last zxid, session id and password where the server reads them."""
    request = ConnectRequest(
        timeout_ms=4000, session_id=0x100000D3DD60000, password=b"p" * 16, last_zxid_seen=0x2A
    )
    body = request.encode()
    assert struct.unpack(">iqiq", body[:24]) == (0, 0x2A, 4000, 0x100000D3DD60000)
    assert body[24:28] == b"\x00\x00\x00\x10" and body[28:44] == b"p" * 16


def test_ping_is_xid_minus_2_opcode_11() -> None:
    """A ping frame is exactly: length 8, xid -2, opcode 11."""
    assert encode_request(Xid.PING, Ping()) == bytes.fromhex("00000008fffffffe0000000b")


def test_close_session_is_opcode_minus_11() -> None:
    """closeSession is a bare header with opcode -11."""
    assert encode_request(7, CloseSession()) == bytes.fromhex("0000000800000007fffffff5")


def test_null_string_and_buffer_are_length_minus_1() -> None:
    """Null strings, buffers and vectors are written as length -1."""
    data = JuteWriter().write_string(None).write_buffer(None).write_string_vector(None).getvalue()
    assert data == b"\xff\xff\xff\xff" * 3
    reader = JuteReader(data)
    assert reader.read_string() is None
    assert reader.read_buffer() is None
    assert reader.read_string_vector() is None


def test_connect_response_without_read_only_flag() -> None:
    """Servers that omit the trailing read-only byte are understood."""
    body = struct.pack(">iiq", 0, 4000, 77) + b"\x00\x00\x00\x02ab"
    response = ConnectResponse.decode(body)
    assert (response.timeout_ms, response.session_id, response.password) == (4000, 77, b"ab")
    assert not response.read_only and not response.expired


def test_timeout_zero_means_expired() -> None:
    """A ConnectResponse with timeout 0 reports the session expired."""
    assert ConnectResponse(0, 0, bytes(16)).expired


# --------------------------------------------------------------------------- round trips


@given(ints, longs, st.booleans(), st.one_of(st.none(), blobs), st.one_of(st.none(), texts),
       st.one_of(st.none(), st.lists(texts, max_size=5)))
def test_primitives_round_trip(
    i: int, q: int, b: bool, buf: bytes | None, s: str | None, v: list[str] | None
) -> None:
    """Every primitive reads back exactly as written."""
    data = (
        JuteWriter().write_int(i).write_long(q).write_bool(b).write_buffer(buf).write_string(s)
        .write_string_vector(v).getvalue()
    )
    reader = JuteReader(data)
    assert reader.read_int() == i
    assert reader.read_long() == q
    assert reader.read_bool() is b
    assert reader.read_buffer() == buf
    assert reader.read_string() == s
    assert reader.read_string_vector() == v
    reader.expect_end()


@given(ints, longs, ints, longs, st.binary(min_size=0, max_size=32), st.booleans())
def test_connect_request_round_trip(
    version: int, zxid: int, timeout: int, session: int, password: bytes, read_only: bool
) -> None:
    """ConnectRequest survives encode/decode."""
    request = ConnectRequest(timeout, session, password, zxid, version, read_only)
    assert ConnectRequest.decode(request.encode()) == request


@given(ints, ints, longs, st.binary(max_size=32), st.booleans())
def test_connect_response_round_trip(
    version: int, timeout: int, session: int, password: bytes, read_only: bool
) -> None:
    """ConnectResponse survives encode/decode."""
    response = ConnectResponse(timeout, session, password, version, read_only)
    assert ConnectResponse.decode(response.encode()) == response


@given(stats, ints, longs, ints, ints, ints, texts)
def test_records_round_trip(
    stat: Stat, xid: int, zxid: int, err: int, etype: int, state: int, path: str
) -> None:
    """Stat, headers and WatcherEvent survive encode/decode."""
    writer = JuteWriter()
    stat.write(writer)
    data = writer.getvalue() + ReplyHeader(xid, zxid, err).encode()
    data += RequestHeader(xid, err).encode() + WatcherEvent(etype, state, path).encode()
    reader = JuteReader(data)
    assert Stat.read(reader) == stat
    assert ReplyHeader.read(reader) == ReplyHeader(xid, zxid, err)
    assert RequestHeader.read(reader) == RequestHeader(xid, err)
    assert WatcherEvent.read(reader) == WatcherEvent(etype, state, path)
    reader.expect_end()


@given(st.lists(st.binary(max_size=50), max_size=8), st.data())
def test_frame_decoder_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    """Frames come out whole and in order however the stream is cut."""
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == payloads
    assert decoder.buffered == 0


# --------------------------------------------------------------------------- hostile input


def test_frame_limit_is_enforced_at_the_boundary() -> None:
    """A frame of exactly max_frame bytes passes; one byte more raises FrameTooLarge."""
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame=10).feed(struct.pack(">i", 11))


def test_negative_frame_length_is_remote_error() -> None:
    """A negative frame length is a RemoteProtocolError, raised before buffering."""
    with pytest.raises(RemoteProtocolError, match="negative frame length"):
        FrameDecoder().feed(struct.pack(">i", -5))


def test_truncated_record_names_the_field() -> None:
    """A short record raises RemoteProtocolError naming the missing field."""
    with pytest.raises(RemoteProtocolError, match="sessionId"):
        ConnectResponse.decode(struct.pack(">ii", 0, 4000) + b"\x00\x01")


def test_huge_vector_count_is_refused_without_allocating() -> None:
    """A vector count larger than the bytes left is refused at once."""
    with pytest.raises(RemoteProtocolError, match="does not fit"):
        JuteReader(struct.pack(">i", 2**30)).read_string_vector()


def test_bad_utf8_and_bad_bool() -> None:
    """Invalid UTF-8 and a bool other than 0/1 are RemoteProtocolErrors."""
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        JuteReader(b"\x00\x00\x00\x01\xff").read_string()
    with pytest.raises(RemoteProtocolError, match="boolean"):
        JuteReader(b"\x02").read_bool()


def test_out_of_range_values_are_local_errors() -> None:
    """Encoding a value that does not fit is this side's bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        JuteWriter().write_int(2**31)
    with pytest.raises(LocalProtocolError):
        JuteWriter().write_long(-(2**63) - 1)


@given(st.binary(max_size=200))
def test_connect_response_garbage_only_raises_remote_errors(data: bytes) -> None:
    """Arbitrary bytes as a ConnectResponse either parse or raise RemoteProtocolError."""
    try:
        ConnectResponse.decode(data)
    except RemoteProtocolError:
        pass


@given(st.lists(st.binary(max_size=80), max_size=6), st.booleans())
def test_client_connection_garbage_only_raises_remote_errors(
    chunks: list[bytes], framed: bool
) -> None:
    """Any byte stream after the handshake yields events or a RemoteProtocolError, never
    another exception."""
    connection = ClientConnection(max_frame=4096)
    connection.connect(ConnectRequest(timeout_ms=1000))
    connection.receive(frame(ConnectResponse(1000, 1, bytes(16)).encode()))
    requests: list[Request] = [
        GetChildren2("/a"), GetData("/a"), Exists("/a"), Create("/a"), SetData("/a", b"")
    ]
    for xid, request in enumerate(requests, start=1):
        connection.send(xid, request)
    try:
        for chunk in chunks:
            connection.receive(frame(chunk) if framed else chunk)
    except RemoteProtocolError:
        pass
