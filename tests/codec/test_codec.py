"""Tests of pulse.codec: length-prefixed msgpack messages and the limited streaming decoder."""

from __future__ import annotations

import msgpack
import msgpack.fallback
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageDecoder,
    encode_message,
    unpack_body,
)
from pulse.errors import FrameTooLarge, LocalProtocolError, ProtocolError, RemoteProtocolError
from tests.codec.strategies import msgpack_values

# --- helpers ---------------------------------------------------------------------------------



def frame_raw(body: bytes) -> bytes:
    """Prefix a raw body with its 4-byte big-endian length."""
    return len(body).to_bytes(4, "big") + body


def body_of_size(size: int) -> bytes:
    """Return a valid msgpack body of exactly ``size`` bytes (size >= 2): bin, maybe in arrays."""
    for extra in range(4):
        for length in range(max(size - 8, 0), size + 1):
            value: object = b"x" * length
            for _ in range(extra):
                value = [value]
            body: bytes = msgpack.packb(value, use_bin_type=True)
            if len(body) == size:
                return body
    raise AssertionError(f"no body of exactly {size} bytes")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given positions (clamped and sorted)."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


# --- encoding --------------------------------------------------------------------------------


def test_encode_message_exact_bytes() -> None:
    """encode_message writes a 4-byte big-endian length then the msgpack body."""
    assert encode_message([1, "a"]) == bytes.fromhex("00000004 92 01 a161")
    assert encode_message(b"\x00") == bytes.fromhex("00000003 c40100")
    assert encode_message("é") == bytes.fromhex("00000003 a2c3a9")
    assert encode_message({"k": None}) == bytes.fromhex("00000004 81a16bc0")


def test_encode_message_tuple_packs_as_array() -> None:
    """Tuples are packed as msgpack arrays and decode as lists."""
    assert encode_message((1, 2)) == encode_message([1, 2])
    assert MessageDecoder().feed(encode_message((1, (2,)))) == [[1, [2]]]


@pytest.mark.parametrize("value", [object(), 2**64, -(2**63) - 1, {1j: 2}])
def test_encode_message_unpackable_raises_local_error(value: object) -> None:
    """Objects msgpack cannot pack raise LocalProtocolError, not TypeError/OverflowError."""
    with pytest.raises(LocalProtocolError, match="cannot encode message"):
        encode_message(value)


def test_encode_message_limit_boundary() -> None:
    """encode_message accepts a body of exactly max_frame_size and rejects max + 1."""
    value = b"x" * 98  # bin8: 2 header bytes + 98 = 100-byte body
    assert len(encode_message(value, max_frame_size=100)) == 104
    with pytest.raises(LocalProtocolError, match="101 bytes exceeds the limit of 100"):
        encode_message(b"x" * 99, max_frame_size=100)


# --- decoding: round trips and chunking ------------------------------------------------------


@given(msgpack_values)
def test_round_trip_any_value(value: object) -> None:
    """Any msgpack value with str/bytes map keys decodes to an equal value."""
    assert MessageDecoder().feed(encode_message(value)) == [value]


@given(st.lists(msgpack_values, max_size=8), st.lists(st.integers(0, 2000), max_size=12))
def test_arbitrary_chunking_yields_same_messages(values: list[object], cuts: list[int]) -> None:
    """Splitting a stream at arbitrary points yields the same messages in the same order."""
    stream = b"".join(encode_message(value) for value in values)
    decoder = MessageDecoder()
    out: list[object] = []
    for piece in split_at(stream, cuts):
        out.extend(decoder.feed(piece))
    assert out == values
    assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    """Feeding one byte at a time completes each message on its last byte."""
    stream = encode_message("abc") + encode_message([1, 2])
    decoder = MessageDecoder()
    results = [decoder.feed(stream[i : i + 1]) for i in range(len(stream))]
    completed = [i for i, result in enumerate(results) if result]
    assert completed == [len(encode_message("abc")) - 1, len(stream) - 1]
    assert [msg for result in results for msg in result] == ["abc", [1, 2]]


def test_feed_accepts_bytearray_and_memoryview_without_aliasing() -> None:
    """feed takes bytearray/memoryview; decoded bytes do not change when the input does."""
    data = bytearray(encode_message(b"abc"))
    decoder = MessageDecoder()
    [decoded] = decoder.feed(memoryview(data)[:5]) + decoder.feed(data[5:])
    data[-3:] = b"zzz"
    assert decoded == b"abc"
    assert isinstance(decoded, bytes)


def test_buffered_counts_incomplete_message_bytes() -> None:
    """buffered is the number of bytes of the incomplete message held, prefix included."""
    message = encode_message("hello")
    decoder = MessageDecoder()
    assert decoder.feed(message[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(message[2:7]) == []
    assert decoder.buffered == 7
    assert decoder.feed(message[7:] + message[:1]) == ["hello"]
    assert decoder.buffered == 1


# --- size limit ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [2, 3, 100, 255 + 2, 256 + 3, 70000])
def test_message_size_boundary(limit: int) -> None:
    """A body of exactly max_frame_size is accepted; max + 1 raises FrameTooLarge."""
    decoder = MessageDecoder(max_frame_size=limit)
    body = body_of_size(limit)
    assert decoder.feed(frame_raw(body)) == [msgpack.unpackb(body)]
    with pytest.raises(FrameTooLarge, match=f"{limit + 1}-byte body; the limit is {limit}"):
        MessageDecoder(limit).feed(frame_raw(body_of_size(limit + 1)))


def test_default_limit_is_one_mebibyte() -> None:
    """The default limit is 1 MiB: 1 MiB accepted, one byte more rejected."""
    assert DEFAULT_MAX_MESSAGE_SIZE == 1024 * 1024
    assert len(MessageDecoder().feed(frame_raw(body_of_size(1024 * 1024)))) == 1
    with pytest.raises(FrameTooLarge):
        MessageDecoder().feed((1024 * 1024 + 1).to_bytes(4, "big"))


def test_oversized_length_rejected_before_body_arrives() -> None:
    """The length prefix alone triggers FrameTooLarge; no body byte is ever buffered."""
    decoder = MessageDecoder(max_frame_size=10)
    assert decoder.feed(b"\x00\x00\x00") == []
    assert decoder.buffered == 3
    with pytest.raises(FrameTooLarge, match="11-byte body"):
        decoder.feed(b"\x0b")
    assert decoder.buffered == 0


def test_huge_declared_length_rejected_with_body_in_same_chunk() -> None:
    """A 4 GiB declaration is rejected even when it arrives with other bytes."""
    decoder = MessageDecoder()
    with pytest.raises(FrameTooLarge, match="4294967295-byte body"):
        decoder.feed(encode_message(1) + b"\xff\xff\xff\xff" + b"x" * 100)
    assert decoder.buffered == 0


def test_zero_length_body_is_an_error() -> None:
    """A declared body length of zero raises RemoteProtocolError (not FrameTooLarge)."""
    with pytest.raises(RemoteProtocolError, match="zero-length message") as info:
        MessageDecoder().feed(b"\x00\x00\x00\x00")
    assert not isinstance(info.value, FrameTooLarge)


@pytest.mark.parametrize("limit", [0, -1, 2**32])
def test_invalid_limit_rejected(limit: int) -> None:
    """max_frame_size outside [1, 2**32 - 1] is a ValueError at construction."""
    with pytest.raises(ValueError, match="max_frame_size"):
        MessageDecoder(max_frame_size=limit)


# --- malformed bodies ------------------------------------------------------------------------


@pytest.fixture(params=["C extension", "pure Python fallback"])
def unpacker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with msgpack's C unpacker and again with its pure-Python fallback."""
    if request.param == "pure Python fallback":
        monkeypatch.setattr(msgpack, "unpackb", msgpack.fallback.unpackb)
    return str(request.param)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (bytes.fromhex("0102"), "more than one msgpack object: 1 of its 2 bytes"),
        (bytes.fromhex("910103"), "more than one msgpack object: 1 of its 3 bytes"),
        (bytes.fromhex("92cd01"), "ends inside a msgpack object"),
        (bytes.fromhex("cd01"), "ends inside a msgpack object"),
        (bytes.fromhex("a2fffe"), "invalid UTF-8"),
        (bytes.fromhex("a3eda080"), "invalid UTF-8"),  # an encoded surrogate
        (bytes.fromhex("c1"), "reserved type byte 0xc1"),
        (b"\x91" * 2000 + b"\xc0", "nested too deeply"),
        (bytes.fromhex("810102"), "int.* is not allowed for map key"),
        (bytes.fromhex("81c0c0"), "NoneType.* is not allowed for map key"),
        (bytes.fromhex("d6ff0000"), "ends inside|exceeds max_ext_len"),
        (bytes.fromhex("d4ff00"), "(?i)timestamp"),
    ],
)
def test_malformed_body_raises_remote_error(body: bytes, message: str, unpacker: str) -> None:
    """Each defect in a body raises RemoteProtocolError naming the defect."""
    with pytest.raises(RemoteProtocolError, match=message):
        MessageDecoder().feed(frame_raw(body))


def test_non_strict_map_keys_can_be_enabled() -> None:
    """strict_map_key=False accepts integer map keys (for trusted peers only)."""
    body = bytes.fromhex("810102")
    assert MessageDecoder(strict_map_key=False).feed(frame_raw(body)) == [{1: 2}]


@pytest.mark.parametrize(
    ("accepted", "rejected", "limit_name"),
    [
        # One body size each: the declared size in `accepted` is the largest that could fit;
        # `rejected` declares one more and must be refused by msgpack's limit, before reading.
        ("a5" + "61" * 5, "a6" + "61" * 5, "max_str_len"),
        ("c403" + "00" * 3, "c404" + "00" * 3, "max_bin_len"),
        ("d405" + "00", "d505" + "00", "max_ext_len"),
        ("93010203", "94010203", "max_array_len"),
        ("81a16101", "82a16101", "max_map_len"),
    ],
)
def test_msgpack_limits_at_the_boundary(accepted: str, rejected: str, limit_name: str, unpacker: str) -> None:
    """Each msgpack max_*_len limit accepts the largest size a body can hold, rejects +1."""
    assert len(MessageDecoder().feed(frame_raw(bytes.fromhex(accepted)))) == 1
    expected = f"exceeds {limit_name}"
    if unpacker == "C extension" and limit_name in ("max_str_len", "max_bin_len", "max_ext_len"):
        # The C unpacker checks str/bin/ext lengths only once their bytes are all there (it
        # allocates nothing before), so the missing bytes are reported first.
        expected = "ends inside a msgpack object"
    with pytest.raises(RemoteProtocolError, match=expected):
        MessageDecoder().feed(frame_raw(bytes.fromhex(rejected)))


def test_huge_container_declaration_in_tiny_body_is_refused(unpacker: str) -> None:
    """An array declaring 2**32 - 1 elements in a 5-byte body is refused by the limit."""
    with pytest.raises(RemoteProtocolError, match="exceeds max_array_len"):
        unpack_body(bytes.fromhex("ddffffffff"))


# --- poisoning and end of stream -------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (b"\xff\xff\xff\xff", FrameTooLarge),
        (frame_raw(b"\xc1"), RemoteProtocolError),
        (b"\x00\x00\x00\x00", RemoteProtocolError),
    ],
)
def test_decoder_is_poisoned_after_an_error(bad: bytes, error: type[ProtocolError]) -> None:
    """After an error every later feed raises the same class, even with valid bytes."""
    decoder = MessageDecoder()
    with pytest.raises(error):
        decoder.feed(bad)
    for _ in range(2):
        with pytest.raises(error, match="unusable after an earlier error") as info:
            decoder.feed(encode_message(1))
        assert type(info.value) is error
    with pytest.raises(error):
        decoder.feed_eof()


def test_feed_eof_on_a_message_boundary_is_quiet() -> None:
    """feed_eof after whole messages raises nothing."""
    decoder = MessageDecoder()
    decoder.feed(encode_message(1))
    decoder.feed_eof()


@pytest.mark.parametrize(
    ("tail", "message"),
    [(b"\x00\x00", "2 of the 4 length-prefix bytes"), (encode_message("abc")[:-1], "3 of 4 body")],
)
def test_feed_eof_inside_a_message_raises(tail: bytes, message: str) -> None:
    """feed_eof with part of a message buffered raises RemoteProtocolError and poisons."""
    decoder = MessageDecoder()
    decoder.feed(tail)
    with pytest.raises(RemoteProtocolError, match=message):
        decoder.feed_eof()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


# --- arbitrary input -------------------------------------------------------------------------

LIMIT = 64
chunks = st.lists(
    st.binary(max_size=80)
    | st.binary(max_size=LIMIT + 8).map(frame_raw)
    | msgpack_values.map(lambda value: encode_message(value)),
    max_size=10,
)


@given(chunks)
def test_garbage_raises_only_protocol_errors_and_respects_the_buffer_limit(
    pieces: list[bytes],
) -> None:
    """Arbitrary bytes raise only ProtocolError subclasses; buffered never exceeds max + 4."""
    decoder = MessageDecoder(max_frame_size=LIMIT)
    for piece in pieces:
        try:
            decoder.feed(piece)
        except ProtocolError as exc:
            assert isinstance(exc, RemoteProtocolError)
            with pytest.raises(type(exc)):
                decoder.feed(b"")
            return
        assert decoder.buffered <= LIMIT + 4
