"""Tests of pulse.frames: the frame dataclasses, their exact bytes, validation and decoding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.codec import encode_message
from pulse.errors import FrameTooLarge, LocalProtocolError, ProtocolError, RemoteProtocolError
from pulse.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_PEER_ID_LENGTH,
    MAX_REASON_LENGTH,
    MAX_SEQ,
    MAX_TOKEN_LENGTH,
    PROTOCOL_VERSION,
    Close,
    Data,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encode_frame,
    frame_from_wire,
    frame_to_wire,
)
from tests.codec.strategies import msgpack_values

# --- strategies ------------------------------------------------------------------------------

seqs = st.integers(min_value=0, max_value=MAX_SEQ)
finite = st.floats(allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
payloads = msgpack_values
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        Hello,
        version=st.just(PROTOCOL_VERSION),
        interval=non_negative,
        timeout=non_negative,
        peer_id=st.text(max_size=MAX_PEER_ID_LENGTH),
        token=st.none() | st.text(max_size=64),
    ),
    st.builds(Ping, seq=seqs, ts=finite),
    st.builds(Pong, seq=seqs, ts=finite),
    st.builds(Data, payload=payloads),
    st.builds(Close, reason=st.text(max_size=MAX_REASON_LENGTH)),
)


def decode_all(data: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> list[Frame]:
    """Decode a complete byte stream with a fresh decoder."""
    decoder = FrameDecoder(max_frame_size)
    result = decoder.feed(data)
    decoder.feed_eof()
    return result


# --- exact bytes (expected hex written by hand from the msgpack spec) ------------------------

EXACT = [
    # len 12 | fixarray 3 | type 2 | seq fixint 1 | float64 1.5 = 0x3ff8000000000000
    (Ping(1, 1.5), "0000000c 93 02 01 cb3ff8000000000000"),
    # len 14 | fixarray 3 | type 3 | seq uint16 300 = 0x012c | float64 2.0
    (Pong(300, 2.0), "0000000e 93 03 cd012c cb4000000000000000"),
    # len 24 | fixarray 6 | type 1 | version 1 | 20.0 | 60.0 | fixstr "a" | nil
    (
        Hello(1, 20.0, 60.0, "a"),
        "00000018 96 01 01 cb4034000000000000 cb404e000000000000 a161 c0",
    ),
    # token "t" instead of nil
    (
        Hello(1, 0.0, 0.0, "", token="t"),
        "00000018 96 01 01 cb0000000000000000 cb0000000000000000 a0 a174",
    ),
    # len 6 | fixarray 2 | type 4 | bin8 len 2 | 01 02
    (Data(b"\x01\x02"), "00000006 92 04 c402 0102"),
    # a str payload is msgpack str, not bin
    (Data("hi"), "00000005 92 04 a26869"),
    # len 6 | fixarray 2 | type 5 | fixstr "bye"
    (Close("bye"), "00000006 92 05 a3627965"),
]


@pytest.mark.parametrize(("frame", "hex_bytes"), EXACT)
def test_exact_bytes(frame: Frame, hex_bytes: str) -> None:
    """encode_frame produces the hand-computed bytes, and they decode back to the frame."""
    assert encode_frame(frame) == bytes.fromhex(hex_bytes)
    assert decode_all(bytes.fromhex(hex_bytes)) == [frame]


# --- sizes -----------------------------------------------------------------------------------

TYPICAL_TS = 123_456.789  # a monotonic clock about a day and a half after boot


def test_typical_ping_is_sixteen_bytes() -> None:
    """A typical ping (small seq, ts ~ 1e5 s) is 16 bytes on the wire, prefix included."""
    assert len(encode_frame(Ping(seq=7, ts=TYPICAL_TS))) == 16


@pytest.mark.parametrize(
    ("seq", "size"),
    [
        (0, 16),
        (127, 16),  # positive fixint
        (128, 17),  # uint8
        (255, 17),
        (256, 18),  # uint16
        (65_535, 18),
        (65_536, 20),  # uint32
        (2**32 - 1, 20),
        (2**32, 24),  # uint64
        (MAX_SEQ, 24),
    ],
)
def test_ping_and_pong_sizes_by_seq(seq: int, size: int) -> None:
    """Ping and Pong sizes depend only on seq; ts is always 9 bytes (float64)."""
    for ts in (0.0, 1.0, TYPICAL_TS, -5.0, 1e300):
        ping = Ping(seq, ts)
        assert len(encode_frame(ping)) == size
        assert len(encode_frame(ping.pong())) == size


def test_integer_ts_is_sent_as_float() -> None:
    """An int ts is sent as float64 (stable size) and decodes as a float."""
    encoded = encode_frame(Ping(1, 5))
    assert encoded == encode_frame(Ping(1, 5.0))
    [frame] = decode_all(encoded)
    assert isinstance(frame, Ping)
    assert type(frame.ts) is float


# --- round trips and chunking ----------------------------------------------------------------


@given(frames)
def test_round_trip_every_frame_type(frame: Frame) -> None:
    """Every valid frame decodes to an equal frame."""
    assert decode_all(encode_frame(frame)) == [frame]


@given(st.binary(max_size=100) | st.builds(bytearray, st.binary(max_size=100)))
def test_data_bytes_payload_arrives_as_bytes(payload: bytes) -> None:
    """A bytes or bytearray payload arrives as bytes with the same content."""
    [frame] = decode_all(encode_frame(Data(payload)))
    assert isinstance(frame, Data)
    assert type(frame.payload) is bytes
    assert frame.payload == payload


def test_data_tuple_payload_arrives_as_list() -> None:
    """Tuples in a payload arrive as lists (msgpack has only arrays)."""
    [frame] = decode_all(encode_frame(Data((1, ("a", b"b")))))
    assert frame == Data([1, ["a", b"b"]])


@given(st.lists(frames, max_size=6), st.lists(st.integers(0, 3000), max_size=10))
def test_arbitrary_chunking_yields_same_frames(items: list[Frame], cuts: list[int]) -> None:
    """Splitting the encoded stream at arbitrary points yields the same frames in order."""
    stream = b"".join(encode_frame(frame) for frame in items)
    points = sorted({min(cut, len(stream)) for cut in cuts})
    decoder = FrameDecoder()
    out: list[Frame] = []
    start = 0
    for point in [*points, len(stream)]:
        out.extend(decoder.feed(stream[start:point]))
        start = point
    decoder.feed_eof()
    assert out == items


def test_ping_pong_helper_echoes_seq_and_ts() -> None:
    """Ping.pong() returns a Pong with the same seq and ts."""
    assert Ping(42, 17.25).pong() == Pong(42, 17.25)


def test_hello_repr_hides_token() -> None:
    """The token is not shown in repr (so it does not leak into logs)."""
    hello = Hello(1, 1.0, 3.0, "me", token="s3cret")
    assert "s3cret" not in repr(hello)
    assert "me" in repr(hello)


# --- validation of received frames -----------------------------------------------------------

INVALID_WIRE: list[tuple[object, str]] = [
    ({"type": 2}, "must be a msgpack array, got dict"),
    ("ping", "must be a msgpack array, got str"),
    ([], "must not be an empty array"),
    (["2", 1, 1.0], "type code must be an integer, got str"),
    ([True, 1, 1.0], "type code must be an integer, got bool"),
    ([2.0, 1, 1.0], "type code must be an integer, got float"),
    ([0, 1, 1.0], "unknown frame type code 0"),
    ([6], "unknown frame type code 6 \\(known: 1 Hello, 2 Ping"),
    ([-1, 1], "unknown frame type code -1"),
    ([2, 1], "Ping frame needs 2 fields after the type code, got 1"),
    ([2, 1, 1.0, 0], "Ping frame needs 2 fields after the type code, got 3"),
    ([3], "Pong frame needs 2 fields after the type code, got 0"),
    ([4], "Data frame needs 1 field after the type code, got 0"),
    ([4, 1, 2], "Data frame needs 1 field after the type code, got 2"),
    ([5], "Close frame needs 1 field after the type code, got 0"),
    ([1], "Hello frame needs 5 fields after the type code, got 0"),
    ([1, 1, 1.0, 1.0, "p"], "Hello frame needs 5 fields after the type code, got 4"),
    ([2, -1, 1.0], "Ping.seq must be in \\[0, 2\\*\\*64 - 1\\], got -1"),
    ([3, -(2**63), 1.0], "Pong.seq must be in"),
    ([2, 1.0, 1.0], "Ping.seq must be an integer, got float"),
    ([2, True, 1.0], "Ping.seq must be an integer, got bool"),
    ([2, None, 1.0], "Ping.seq must be an integer, got NoneType"),
    ([2, 1, "1.0"], "Ping.ts must be a number, got str"),
    ([3, 1, False], "Pong.ts must be a number, got bool"),
    ([2, 1, math.inf], "Ping.ts must be finite, got inf"),
    ([3, 1, -math.inf], "Pong.ts must be finite, got -inf"),
    ([2, 1, math.nan], "Ping.ts must be finite, got nan"),
    (["x" * 10_000], "type code must be an integer, got str 'x"),
    ([1, "1", 1.0, 1.0, "p", None], "Hello.version must be an integer, got str"),
    ([1, 1, -1.0, 1.0, "p", None], "Hello.interval must not be negative, got -1.0"),
    ([1, 1, 1.0, math.nan, "p", None], "Hello.timeout must be finite, got nan"),
    ([1, 1, 1.0, "3", "p", None], "Hello.timeout must be a number, got str"),
    ([1, 1, 1.0, 1.0, b"p", None], "Hello.peer_id must be a string, got bytes"),
    ([1, 1, 1.0, 1.0, None, None], "Hello.peer_id must be a string, got NoneType"),
    ([1, 1, 1.0, 1.0, "p", 7], "Hello.token must be a string, got int"),
    ([5, None], "Close.reason must be a string, got NoneType"),
    ([5, b"bye"], "Close.reason must be a string, got bytes"),
]


@pytest.mark.parametrize(("wire", "message"), INVALID_WIRE)
def test_invalid_frame_raises_remote_error(wire: object, message: str) -> None:
    """Each malformed frame raises RemoteProtocolError with a message naming the problem."""
    with pytest.raises(RemoteProtocolError, match=message) as info:
        decode_all(encode_message(wire))
    assert len(str(info.value)) < 300  # untrusted values are shown truncated


def test_integers_accepted_for_float_fields() -> None:
    """Integers on the wire for ts/interval/timeout decode as floats."""
    assert decode_all(encode_message([2, 1, 5])) == [Ping(1, 5.0)]
    [hello] = decode_all(encode_message([1, 1, 2, 6, "p", None]))
    assert hello == Hello(1, 2.0, 6.0, "p")
    assert isinstance(hello, Hello)
    assert type(hello.interval) is float


@pytest.mark.parametrize("version", [0, 2, 2**32, -1])
def test_unsupported_version_names_both_versions(version: int) -> None:
    """A Hello with another version raises RemoteProtocolError naming both versions."""
    wire = [1, version, 1.0, 3.0, "p", None]
    with pytest.raises(RemoteProtocolError, match="unsupported pulse protocol version") as info:
        decode_all(encode_message(wire))
    assert f"version {version}" in str(info.value)
    assert f"supports version {PROTOCOL_VERSION}" in str(info.value)


def test_newer_hello_with_more_fields_reports_the_version() -> None:
    """A version-2 Hello with extra fields is reported as a version mismatch, not as arity."""
    wire = [1, 2, 1.0, 3.0, "p", None, {"future": True}]
    with pytest.raises(RemoteProtocolError, match=r"version 2.*supports version 1"):
        decode_all(encode_message(wire))


# --- limits at the boundary ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (lambda n: Hello(1, 1.0, 1.0, "p" * n), MAX_PEER_ID_LENGTH),
        (lambda n: Hello(1, 1.0, 1.0, "p", token="t" * n), MAX_TOKEN_LENGTH),
        (lambda n: Close("r" * n), MAX_REASON_LENGTH),
        (lambda n: Close("é" * n), MAX_REASON_LENGTH),  # counted in characters, not bytes
    ],
)
def test_text_limits_at_the_boundary(make: object, limit: int) -> None:
    """Text fields accept exactly the limit and reject one more, on both sides."""
    assert callable(make)
    at_limit, over = make(limit), make(limit + 1)
    assert decode_all(encode_frame(at_limit)) == [at_limit]
    with pytest.raises(LocalProtocolError, match=f"{limit + 1} characters; the limit is {limit}"):
        encode_frame(over)
    with pytest.raises(RemoteProtocolError, match=f"{limit + 1} characters; the limit is {limit}"):
        decode_all(encode_message(frame_to_wire_unchecked(over)))


def frame_to_wire_unchecked(frame: Frame) -> list[object]:
    """Build the wire array without validation, to send invalid frames to the decoder."""
    if isinstance(frame, Hello):
        return [1, frame.version, frame.interval, frame.timeout, frame.peer_id, frame.token]
    assert isinstance(frame, Close)
    return [5, frame.reason]


def test_seq_limits_at_the_boundary() -> None:
    """seq 0 and 2**64 - 1 are accepted; -1 and 2**64 are rejected."""
    for seq in (0, MAX_SEQ):
        assert decode_all(encode_frame(Ping(seq, 1.0))) == [Ping(seq, 1.0)]
    for seq in (-1, MAX_SEQ + 1):
        with pytest.raises(LocalProtocolError, match=r"Ping\.seq must be in"):
            encode_frame(Ping(seq, 1.0))
    with pytest.raises(RemoteProtocolError, match=r"Pong\.seq must be in"):
        decode_all(encode_message([3, -1, 1.0]))


def test_frame_size_boundary() -> None:
    """A frame body of exactly max_frame_size is accepted; one byte more is FrameTooLarge."""
    limit = 100
    frame = Data(b"x" * (limit - 4))  # fixarray + type + bin8 header (2) = 4 bytes of overhead
    assert len(encode_frame(frame)) == limit + 4
    assert decode_all(encode_frame(frame), max_frame_size=limit) == [frame]
    with pytest.raises(FrameTooLarge, match="101-byte body; the limit is 100"):
        decode_all(encode_frame(Data(b"x" * (limit - 3))), max_frame_size=limit)
    assert len(encode_frame(frame, max_frame_size=limit)) == limit + 4
    with pytest.raises(LocalProtocolError, match="exceeds the limit of 100"):
        encode_frame(Data(b"x" * (limit - 3)), max_frame_size=limit)


def test_oversized_frame_rejected_before_body_arrives() -> None:
    """FrameDecoder raises FrameTooLarge on the length prefix alone, buffering nothing more."""
    decoder = FrameDecoder(max_frame_size=16)
    with pytest.raises(FrameTooLarge):
        decoder.feed((17).to_bytes(4, "big"))
    assert decoder.buffered == 0


# --- validation of frames we send ------------------------------------------------------------

INVALID_LOCAL: list[tuple[object, str]] = [
    (Ping(-1, 1.0), "Ping.seq must be in"),
    (Ping(True, 1.0), "Ping.seq must be an integer, got bool"),
    (Ping(1.5, 1.0), "Ping.seq must be an integer, got float"),  # type: ignore[arg-type]
    (Pong(1, math.nan), "Pong.ts must be finite"),
    (Pong(1, 10**400), "Pong.ts must be finite, got an integer too large"),
    (Ping(1, "now"), "Ping.ts must be a number, got str"),  # type: ignore[arg-type]
    (Hello(True, 1.0, 1.0, "p"), "Hello.version must be an integer, got bool"),
    (Hello(-1, 1.0, 1.0, "p"), "Hello.version must be in"),
    (Hello(1, -0.5, 1.0, "p"), "Hello.interval must not be negative"),
    (Hello(1, 1.0, math.inf, "p"), "Hello.timeout must be finite"),
    (Hello(1, 1.0, 1.0, 5), "Hello.peer_id must be a string, got int"),  # type: ignore[arg-type]
    (Close(None), "Close.reason must be a string"),  # type: ignore[arg-type]
    (Data(object()), "cannot encode message"),
    (Data({1j: 1}), "cannot encode message"),
    ("ping", "not a pulse frame: str"),
]


@pytest.mark.parametrize(("frame", "message"), INVALID_LOCAL)
def test_invalid_local_frame_raises_local_error(frame: Frame, message: str) -> None:
    """Encoding a frame with a bad field raises LocalProtocolError naming the field."""
    with pytest.raises(LocalProtocolError, match=message):
        encode_frame(frame)


def test_frame_wire_helpers_round_trip() -> None:
    """frame_to_wire and frame_from_wire are inverse for message-oriented transports."""
    frame = Hello(1, 2.5, 7.5, "peer", token="tok")
    assert frame_from_wire(frame_to_wire(frame)) == frame


# --- poisoning and garbage -------------------------------------------------------------------


def test_frame_decoder_poisoned_by_invalid_frame() -> None:
    """After a frame validation error, every later feed raises RemoteProtocolError."""
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="unknown frame type code 9"):
        decoder.feed(encode_message([9]))
    with pytest.raises(RemoteProtocolError, match="unusable after an earlier error"):
        decoder.feed(encode_frame(Ping(1, 1.0)))
    with pytest.raises(RemoteProtocolError):
        decoder.feed_eof()


def test_frame_decoder_poisoned_by_oversized_frame() -> None:
    """After FrameTooLarge, later feeds raise FrameTooLarge again."""
    decoder = FrameDecoder(max_frame_size=8)
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(Close("a reason that is long")))
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"")


def test_feed_eof_inside_a_frame_raises() -> None:
    """A stream that ends in the middle of a frame raises RemoteProtocolError."""
    decoder = FrameDecoder()
    decoder.feed(encode_frame(Ping(1, 1.0))[:-1])
    with pytest.raises(RemoteProtocolError, match="stream ended inside a message"):
        decoder.feed_eof()


LIMIT = 96
garbage_chunks = st.lists(
    st.binary(max_size=64)
    | st.binary(max_size=LIMIT + 8).map(lambda body: len(body).to_bytes(4, "big") + body)
    | st.lists(st.integers(0, 7) | payloads, min_size=0, max_size=7).map(encode_message)
    | frames.map(encode_frame),
    max_size=8,
)


@given(garbage_chunks)
def test_garbage_raises_only_remote_errors_and_respects_limits(pieces: list[bytes]) -> None:
    """Arbitrary input yields valid frames or RemoteProtocolError, never anything else.

    Every frame that comes out re-encodes canonically (encode, decode, encode is stable) and
    the decoder never holds more than max_frame_size + 4 bytes.
    """
    decoder = FrameDecoder(max_frame_size=LIMIT)
    for piece in pieces:
        try:
            for frame in decoder.feed(piece):
                encoded = encode_frame(frame)
                assert encode_frame(decode_all(encoded)[0]) == encoded
        except ProtocolError as exc:
            assert isinstance(exc, RemoteProtocolError)
            with pytest.raises(type(exc)):
                decoder.feed(encode_frame(Ping(1, 1.0)))
            return
        assert decoder.buffered <= LIMIT + 4


@given(
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    ts=st.floats(allow_nan=False, allow_infinity=False),
    kind=st.sampled_from([Ping, Pong]),
)
def test_the_heartbeat_fast_path_writes_the_same_bytes(seq: int, ts: float, kind: type) -> None:
    """encode_heartbeat gives byte for byte what the checked encode_frame gives, and the
    decoder reads it back."""
    from pulse.frames import FrameType, encode_heartbeat

    frame_type = FrameType.PING if kind is Ping else FrameType.PONG
    fast = encode_heartbeat(frame_type, seq, ts)
    assert fast == encode_frame(kind(seq, ts))
    assert FrameDecoder().feed(fast) == [kind(seq, ts)]
