"""Dubbo 2 frames: bytes as the protocol specifies them, any chunking, garbage refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from pulse.plugins.dubbo import codec
from pulse.plugins.dubbo.codec import (
    BadMagic,
    BodyTooLarge,
    DubboProtocolError,
    Frame,
    FrameDecoder,
    Status,
    TruncatedFrame,
)

# Written by hand from the specification (ExchangeCodec header layout; Hessian2 null = 'N').
HEARTBEAT_REQUEST_ID_7 = bytes.fromhex("dabb e200 0000000000000007 00000001 4e")
HEARTBEAT_RESPONSE_ID_7 = bytes.fromhex("dabb 2214 0000000000000007 00000001 4e")
# An ordinary two-way Hessian2 request (id 258) with a 3-byte body, and its OK response.
PLAIN_REQUEST = bytes.fromhex("dabb c200 0000000000000102 00000003 010203")
PLAIN_RESPONSE = bytes.fromhex("dabb 0214 0000000000000102 00000001 92")


def test_heartbeat_request_bytes_match_the_specification() -> None:
    """Request: magic, flag 0xe2 (request | two-way | event | hessian2), status 0, 'N'."""
    assert codec.heartbeat_request(7) == HEARTBEAT_REQUEST_ID_7
    assert len(HEARTBEAT_REQUEST_ID_7) == 17


def test_heartbeat_response_bytes_match_the_specification() -> None:
    """Response: magic, flag 0x22 (event | hessian2), status 20 (OK), 'N'."""
    assert codec.heartbeat_response(7) == HEARTBEAT_RESPONSE_ID_7


def test_decoding_a_heartbeat_request() -> None:
    """The header fields of a heartbeat request are read back and recognised."""
    (frame,) = FrameDecoder().feed(HEARTBEAT_REQUEST_ID_7)
    assert frame == Frame(7, True, True, True, codec.HESSIAN2, 0, b"N")
    assert frame.is_heartbeat_request and not frame.is_heartbeat_response
    assert codec.reply_to_heartbeat(frame) == HEARTBEAT_RESPONSE_ID_7


def test_decoding_a_heartbeat_response() -> None:
    """The heartbeat response is recognised as such, with status OK."""
    (frame,) = FrameDecoder().feed(HEARTBEAT_RESPONSE_ID_7)
    assert frame.is_heartbeat_response and frame.status == Status.OK
    assert frame.request_id == 7


def test_ordinary_frames_pass_through_untouched() -> None:
    """Plain requests and responses are not heartbeats and re-encode to the same bytes."""
    request, reply = FrameDecoder().feed(PLAIN_REQUEST + PLAIN_RESPONSE)
    assert not request.is_heartbeat and not reply.is_heartbeat
    assert request.request_id == 258 and request.two_way and request.body == b"\x01\x02\x03"
    assert reply.status == 20 and reply.body == b"\x92"
    assert codec.encode(request) == PLAIN_REQUEST
    assert codec.encode(reply) == PLAIN_RESPONSE
    assert codec.request(258, b"\x01\x02\x03") == PLAIN_REQUEST
    assert codec.response(258, b"\x92") == PLAIN_RESPONSE


def test_one_way_events() -> None:
    """A one-way event with a null body is a heartbeat; the read-only event ('R') is not."""
    one_way_null = Frame(1, True, False, True, codec.HESSIAN2, 0, b"N")
    readonly = Frame(2, True, False, True, codec.HESSIAN2, 0, b"\x01R")
    assert one_way_null.is_heartbeat_request
    assert not readonly.is_heartbeat
    assert codec.encode(one_way_null)[2] == 0xA2


def test_heartbeats_in_other_serializations_are_answered_in_kind() -> None:
    """A two-way event in another serialization gets its own null body echoed back."""
    fastjson_null = Frame(9, True, True, True, 6, 0, b"null")
    assert fastjson_null.is_heartbeat_request
    (reply,) = FrameDecoder().feed(codec.reply_to_heartbeat(fastjson_null))
    assert reply == Frame(9, False, False, True, 6, Status.OK, b"null")
    with pytest.raises(LocalProtocolError):
        codec.heartbeat_request(1, serialization=6)


def test_request_ids_use_all_64_bits() -> None:
    """Ids up to 2**64 - 1 round-trip; larger or negative ids are refused locally."""
    top = codec.MAX_REQUEST_ID
    (frame,) = FrameDecoder().feed(codec.heartbeat_request(top))
    assert frame.request_id == top
    for bad in (-1, top + 1):
        with pytest.raises(LocalProtocolError):
            codec.heartbeat_request(bad)


def test_bad_magic_is_refused_at_the_first_byte() -> None:
    """A frame that does not start with 0xdabb raises BadMagic, a RemoteProtocolError."""
    with pytest.raises(BadMagic) as info:
        FrameDecoder().feed(b"G")
    assert isinstance(info.value, RemoteProtocolError)
    assert "bad magic" in str(info.value)
    with pytest.raises(BadMagic):
        FrameDecoder().feed(b"\xda\x00")


def test_garbage_after_a_good_frame_is_refused() -> None:
    """Bytes that follow a complete frame must start the next frame with the magic."""
    decoder = FrameDecoder()
    assert len(decoder.feed(HEARTBEAT_REQUEST_ID_7)) == 1
    with pytest.raises(BadMagic):
        decoder.feed(b"GET / HTTP/1.1\r\n")


def test_oversized_body_is_refused_before_it_arrives() -> None:
    """A header announcing more than max_frame_size raises at once, buffering nothing."""
    decoder = FrameDecoder(max_frame_size=100)
    header = bytes.fromhex("dabb c202 0000000000000001 00000065")  # 101 bytes announced
    with pytest.raises(BodyTooLarge) as info:
        decoder.feed(header)
    assert isinstance(info.value, FrameTooLarge)
    assert "101" in str(info.value) and "100" in str(info.value)
    assert decoder.buffered == 0


def test_body_at_the_limit_is_accepted() -> None:
    """Exactly max_frame_size bytes of body is fine (the limit is inclusive)."""
    decoder = FrameDecoder(max_frame_size=100)
    (frame,) = decoder.feed(codec.request(1, b"x" * 100))
    assert len(frame.body) == 100


def test_default_limit_is_dubbos_8_mib() -> None:
    """The default payload limit is Dubbo's 8 MiB."""
    assert FrameDecoder().max_frame_size == 8 * 1024 * 1024
    with pytest.raises(BodyTooLarge):
        FrameDecoder().feed(bytes.fromhex("dabb c202 0000000000000001 00800001"))


def test_negative_body_length_is_refused() -> None:
    """A length with the sign bit set (negative as a Java int) is refused."""
    with pytest.raises(BodyTooLarge, match="negative"):
        FrameDecoder().feed(bytes.fromhex("dabb c202 0000000000000001 ffffffff"))


@pytest.mark.parametrize("cut", [1, 5, 15, 16, 17 + 16 + 2])
def test_truncated_frame_at_eof_is_refused(cut: int) -> None:
    """A stream that ends inside a header or a body raises TruncatedFrame at EOF."""
    data = (HEARTBEAT_REQUEST_ID_7 + PLAIN_REQUEST)[:cut]
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(TruncatedFrame):
        decoder.feed_eof()


def test_clean_eof_is_fine() -> None:
    """EOF between frames raises nothing."""
    decoder = FrameDecoder()
    decoder.feed(HEARTBEAT_REQUEST_ID_7)
    decoder.feed_eof()


def test_decoder_stays_closed_after_an_error() -> None:
    """After garbage, further input is refused instead of resynchronising on a guess."""
    decoder = FrameDecoder()
    with pytest.raises(BadMagic):
        decoder.feed(b"\x00")
    with pytest.raises(BadMagic, match="earlier error"):
        decoder.feed(HEARTBEAT_REQUEST_ID_7)


def test_hessian2_strings() -> None:
    """Error messages use the Hessian2 short, medium and long string forms."""
    assert codec.hessian2_string("") == b"\x00"
    assert codec.hessian2_string("hello") == b"\x05hello"
    assert codec.hessian2_string("a" * 32) == b"\x30\x20" + b"a" * 32
    assert codec.hessian2_string("a" * 1024) == b"S\x04\x00" + b"a" * 1024
    assert codec.hessian2_string("é") == b"\x01\xc3\xa9"


def test_error_response() -> None:
    """An error response carries the status and the message as a Hessian2 string."""
    data = codec.error_response(5, Status.SERVICE_NOT_FOUND, "no such service")
    (frame,) = FrameDecoder().feed(data)
    assert frame.status == 60 and frame.body == b"\x0fno such service"
    with pytest.raises(LocalProtocolError):
        codec.error_response(5, Status.OK, "fine")


frames = st.builds(
    Frame,
    request_id=st.integers(0, codec.MAX_REQUEST_ID),
    is_request=st.booleans(),
    two_way=st.booleans(),
    event=st.booleans(),
    serialization=st.integers(0, 31),
    status=st.integers(0, 255),
    body=st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(frames, max_size=8), cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_any_chunking_gives_the_same_frames(batch: list[Frame], cuts: list[int]) -> None:
    """Frames split at arbitrary byte positions decode to the frames that were encoded."""
    data = b"".join(codec.encode(f) for f in batch)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    decoder = FrameDecoder(max_frame_size=300)
    out: list[Frame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.buffered <= codec.HEADER_LENGTH + 300
    decoder.feed_eof()
    assert out == batch
    assert b"".join(codec.encode(f) for f in out) == data


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(1, 64))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, chunk: int) -> None:
    """Any bytes give frames or DubboProtocolError, never another error; the buffer is bounded."""
    decoder = FrameDecoder(max_frame_size=64)
    try:
        for i in range(0, len(data), chunk):
            for frame in decoder.feed(data[i : i + chunk]):
                assert len(frame.body) <= 64
            assert decoder.buffered <= codec.HEADER_LENGTH + 64
        decoder.feed_eof()
    except DubboProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(frame=frames.filter(lambda f: len(f.body) <= 64), junk=st.binary(min_size=1, max_size=20))
def test_valid_prefix_then_junk(frame: Frame, junk: bytes) -> None:
    """A valid frame followed by non-magic junk yields the frame, then BadMagic."""
    decoder = FrameDecoder(max_frame_size=64)
    assert decoder.feed(codec.encode(frame)) == [frame]
    if junk[0] != 0xDA or (len(junk) > 1 and junk[1] != 0xBB):
        with pytest.raises(BadMagic):
            decoder.feed(junk)
