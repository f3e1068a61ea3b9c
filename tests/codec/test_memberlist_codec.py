"""memberlist wire codec: known bytes, round trips, chunking, limits, and garbage."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.swim_messages import (
    Ack,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Nack,
    NodeState,
    PacketMessage,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)
from pulse.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from pulse.plugins.gossip import lzw
from pulse.plugins.gossip.codec import (
    EncryptionNotSupported,
    GossipProtocolError,
    GossipTooLarge,
    MessageType,
    StreamDecoder,
    decode_packet,
    decode_serf_tags,
    decode_stream,
    encode_message,
    encode_packet,
    encode_serf_tags,
    encode_stream,
    make_compound,
)

# A real packet from a Serf 0.8.2 agent (memberlist, Go): its LZW-compressed compound answer to
# our ping with SeqNo 7: an ack carrying Serf's network coordinate, plus an alive about itself.
SERF_ACK_PACKET = bytes.fromhex(
    "0982a4416c676f00a3427566da00b9000f08006009401301824e41099387cd9b3064b40110148090aa2064d4d4"
    "9943a74d193774960118497264a92272e4bc91b3ec07be92234d212993e60c9a903ec8e1ab85681c9a78a3ac94"
    "19834924cc91468f2685b9b46453924f911e953ab5d49432719cbc3940c010298c64e490fa3332c0aa246ec684"
    "91e3260c9d346fdc0420d5a40c9d30b0fe0922a5924d995177ca881145664c283ca4b49229532a0c1b3868c290"
    "82b2924e33231a82ce71632a400101020a140808"
)

VSN = (1, 5, 2, 2, 5, 5)

# ---------------------------------------------------------------------------- strategies

names = st.text(min_size=0, max_size=40)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
ports = st.integers(min_value=1, max_value=65535)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.sampled_from(["::1", "fe80::1", "2001:db8::42"])
addrs = st.tuples(ipv4 | ipv6, ports)
metas = st.binary(max_size=512)
vsns = st.sampled_from([(), VSN, (1, 5, 2, 0, 0, 0)])

packet_messages: st.SearchStrategy[PacketMessage] = st.one_of(
    st.builds(Ping, u32, names, st.none() | addrs, names),
    st.builds(IndirectPing, u32, addrs, names, st.booleans(), st.none() | addrs, names),
    st.builds(Ack, u32, st.binary(max_size=100)),
    st.builds(Nack, u32),
    st.builds(Suspect, u32, names, names),
    st.builds(Dead, u32, names, names),
    st.builds(Alive, u32, names, addrs, metas, vsns),
    st.builds(UserMsg, st.binary(max_size=200)),
)
node_states = st.builds(PushNodeState, names, addrs, metas, u32, st.sampled_from(list(NodeState)), vsns)
push_pulls = st.builds(PushPull, st.booleans(), st.lists(node_states, max_size=8).map(tuple),
                       st.binary(max_size=300))


# ---------------------------------------------------------------------------- known bytes


def test_ping_bytes_follow_go_struct_field_names() -> None:
    """A ping is type 0 + a msgpack map keyed by Go field names, omitting empty source fields."""
    raw = encode_message(Ping(1, "a"))
    assert raw == b"\x00\x82\xa5SeqNo\x01\xa4Node\xa1a"
    raw = encode_message(Ping(258, "b", ("127.0.0.1", 7946), "me"))
    assert raw == (b"\x00\x85\xa5SeqNo\xcd\x01\x02\xa4Node\xa1b\xaaSourceAddr\xa4\x7f\x00\x00\x01"
                   b"\xaaSourcePort\xcd\x1f\x0a\xaaSourceNode\xa2me")


def test_bytes_use_old_spec_raw_like_go() -> None:
    """Byte strings are msgpack raw (str16 beyond 31 bytes), never bin or str8, as Go writes them."""
    raw = encode_message(Alive(1, "n", ("10.0.0.1", 1), b"x" * 100, VSN))
    assert b"\xa4Meta\xda\x00\x64" + b"x" * 100 in raw
    assert b"\xa3Vsn\xa6\x01\x05\x02\x02\x05\x05" in raw  # []uint8 travels as raw bytes
    assert b"\xc4" not in raw and b"\xd9" not in raw


def test_decodes_a_real_serf_packet() -> None:
    """A compressed compound packet captured from a Serf agent decodes to its ack and alive."""
    assert SERF_ACK_PACKET[0] == MessageType.COMPRESS
    ack, alive = decode_packet(SERF_ACK_PACKET)
    assert isinstance(ack, Ack) and ack.seq_no == 7
    assert b"Vec" in ack.payload  # Serf's coordinate payload
    assert isinstance(alive, Alive)
    assert (alive.node, alive.addr, alive.incarnation) == ("alpha", ("127.0.0.1", 17946), 1)
    assert alive.vsn == (1, 5, 2, 2, 5, 5)
    assert decode_serf_tags(alive.meta) == {"role": "web", "dc": "x"}


def test_compound_layout() -> None:
    """A compound packet is type 7, a count, big-endian uint16 lengths, then the parts."""
    a, b = encode_message(Nack(1)), encode_message(Nack(2))
    assert make_compound([a, b]) == bytes([7, 2]) + struct.pack(">HH", len(a), len(b)) + a + b
    assert encode_packet([Nack(1), Nack(2)]) == make_compound([a, b])


def test_crc_header() -> None:
    """The CRC wrapper is type 12 + big-endian CRC-32 (IEEE) of the rest; a bad CRC is refused."""
    body = encode_message(Nack(5))
    pkt = encode_packet([Nack(5)], crc=True)
    assert pkt == bytes([12]) + struct.pack(">I", zlib.crc32(body)) + body
    assert decode_packet(pkt, require_crc=True) == [Nack(5)]
    bad = bytearray(pkt)
    bad[-1] ^= 1
    with pytest.raises(GossipProtocolError, match="CRC"):
        decode_packet(bytes(bad))
    with pytest.raises(GossipProtocolError, match="CRC"):
        decode_packet(body, require_crc=True)


def test_compress_wrapper_layout() -> None:
    """Compression wraps the payload in {Algo: 0, Buf: LZW}; it is used only when it is smaller."""
    msgs = [Alive(1, "node-name", ("10.0.0.1", 7946), b"m" * 200, VSN)]
    plain = encode_packet(msgs)
    packed = encode_packet(msgs, compress=True)
    assert packed[0] == MessageType.COMPRESS and len(packed) < len(plain)
    body = msgpack.unpackb(packed[1:], raw=True)
    assert body[b"Algo"] == 0 and lzw.decompress(body[b"Buf"]) == plain
    tiny = [Nack(1)]
    assert encode_packet(tiny, compress=True) == encode_packet(tiny)  # would grow: left plain
    assert decode_packet(encode_packet(tiny, compress=True, compress_if_smaller=False)) == tiny


def test_push_pull_layout() -> None:
    """A push-pull stream is type 6, a header map, one map per member, then the user state."""
    pp = PushPull(True, (PushNodeState("a", ("10.0.0.1", 7946), b"", 3, NodeState.SUSPECT, VSN),), b"US")
    raw = encode_stream(pp)
    assert raw[0] == MessageType.PUSH_PULL
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(raw[1:])
    assert unpacker.unpack() == {b"Nodes": 1, b"UserStateLen": 2, b"Join": True}
    state = unpacker.unpack()
    assert list(state) == [b"Name", b"Addr", b"Port", b"Meta", b"Incarnation", b"State", b"Vsn"]
    assert state[b"Name"] == b"a" and state[b"State"] == 1 and state[b"Incarnation"] == 3
    assert state[b"Addr"] == b"\x0a\x00\x00\x01" and state[b"Port"] == 7946
    assert raw.endswith(b"US")


def test_serf_tags() -> None:
    """Serf tags are 0xff + a msgpack map; metadata without the magic byte is the legacy role."""
    assert encode_serf_tags({"role": "web"}) == b"\xff\x81\xa4role\xa3web"
    assert decode_serf_tags(b"\xff\x82\xa4role\xa3web\xa2dc\xa1x") == {"role": "web", "dc": "x"}
    assert decode_serf_tags(b"db") == {"role": "db"}
    assert decode_serf_tags(b"") == {"role": ""}
    with pytest.raises(GossipProtocolError):
        decode_serf_tags(b"\xff\x93\x01\x02\x03")
    with pytest.raises(LocalProtocolError):
        encode_serf_tags({"k": "v" * 600})


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=10))
def test_serf_tags_round_trip(tags: dict[str, str]) -> None:
    """Any small tag map survives encoding and decoding."""
    assert decode_serf_tags(encode_serf_tags(tags)) == tags


# ---------------------------------------------------------------------------- round trips


@given(st.lists(packet_messages, min_size=1, max_size=6), st.booleans(), st.booleans())
@settings(max_examples=300)
def test_packet_round_trip(msgs: list[PacketMessage], crc: bool, compress: bool) -> None:
    """Any messages survive a packet (single or compound, with CRC and/or LZW)."""
    assert decode_packet(encode_packet(msgs, crc=crc, compress=compress,
                                       compress_if_smaller=False)) == msgs


@given(push_pulls, st.booleans(), st.data())
@settings(max_examples=200)
def test_stream_round_trip_in_any_chunks(pp: PushPull, compress: bool, data: st.DataObject) -> None:
    """A push-pull decodes identically whatever the chunking, and only once complete."""
    raw = encode_stream(pp, compress=compress)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    dec = StreamDecoder()
    result = None
    prev = 0
    for cut in [*cuts, len(raw)]:
        result = dec.feed(raw[prev:cut])
        if cut < len(raw):
            assert result is None  # never complete before the last byte
        prev = cut
    assert result == pp
    assert decode_stream(raw) == pp


@pytest.mark.parametrize("msg", [Ping(3, "x", ("127.0.0.1", 5), "y"), Ack(3, b"p"), ErrResp("boom"),
                                 UserMsg(b"payload")])
def test_other_stream_messages_round_trip(msg: Ping | Ack | ErrResp | UserMsg) -> None:
    """TCP ping, ack, error and user messages survive a stream, plain and compressed."""
    assert decode_stream(encode_stream(msg)) == msg
    assert decode_stream(encode_stream(msg, compress=True)) == msg


def test_ipv4_mapped_addresses_decode_as_ipv4() -> None:
    """Go's 16-byte form of an IPv4 address decodes to the dotted quad."""
    body = msgpack.packb({"SeqNo": 1, "Node": "n", "SourceAddr": b"\x00" * 10 + b"\xff\xff\x7f\x00\x00\x01",
                          "SourcePort": 9, "SourceNode": "s"}, use_bin_type=False)
    (ping,) = decode_packet(b"\x00" + body)
    assert isinstance(ping, Ping) and ping.source_addr == ("127.0.0.1", 9)


def test_bin_typed_fields_are_accepted() -> None:
    """Newer msgpack encoders' bin and str8 types decode too."""
    body = msgpack.packb({"SeqNo": 1, "Payload": b"\x00" * 40}, use_bin_type=True)
    assert decode_packet(b"\x02" + body) == [Ack(1, b"\x00" * 40)]


# ---------------------------------------------------------------------------- refusals and limits


def test_encrypted_messages_are_refused_clearly() -> None:
    """Type 10 (encrypt) raises EncryptionNotSupported, a RemoteProtocolError, in packets and streams."""
    with pytest.raises(EncryptionNotSupported, match="encryption"):
        decode_packet(b"\x0a\x00\x01\x02")
    with pytest.raises(EncryptionNotSupported):
        StreamDecoder().feed(b"\x0a\x00\x00\x00\x10")
    assert issubclass(EncryptionNotSupported, RemoteProtocolError)


def test_stream_only_types_are_refused_in_packets() -> None:
    """Push-pull and error messages are refused in a UDP packet; unknown types too."""
    for kind in (6, 13, 14, 200):
        with pytest.raises(GossipProtocolError):
            decode_packet(bytes([kind]) + msgpack.packb({}))
    with pytest.raises(GossipProtocolError):
        decode_packet(b"")


def test_compound_truncation() -> None:
    """Parts cut off by the end of a compound are dropped (as memberlist does); a cut length table
    is an error."""
    whole = encode_packet([Nack(1), Nack(2)])
    assert decode_packet(whole[:-1]) == [Nack(1)]
    with pytest.raises(GossipProtocolError):
        decode_packet(bytes([7, 3, 0]))
    with pytest.raises(GossipProtocolError):
        decode_packet(bytes([7]))


def test_nesting_is_bounded() -> None:
    """Compounds nested beyond the limit are refused instead of recursing without end."""
    pkt = encode_message(Nack(1))
    for _ in range(10):
        pkt = make_compound([pkt])
    with pytest.raises(GossipProtocolError, match="nested"):
        decode_packet(pkt)


def test_packet_size_limit_at_the_boundary() -> None:
    """A packet of exactly max_size decodes; one byte more raises GossipTooLarge."""
    pkt = encode_packet([UserMsg(b"x" * 99)])
    assert len(pkt) == 100
    assert decode_packet(pkt, max_size=100) == [UserMsg(b"x" * 99)]
    with pytest.raises(GossipTooLarge):
        decode_packet(pkt, max_size=99)
    assert issubclass(GossipTooLarge, FrameTooLarge)


def test_meta_limit_at_the_boundary() -> None:
    """Node meta of 512 bytes is accepted, 513 bytes refused (memberlist's MetaMaxSize)."""
    ok = encode_packet([Alive(1, "n", ("10.0.0.1", 1), b"m" * 512, VSN)])
    assert decode_packet(ok)[0] == Alive(1, "n", ("10.0.0.1", 1), b"m" * 512, VSN)
    too_big = encode_packet([Alive(1, "n", ("10.0.0.1", 1), b"m" * 513, VSN)])
    with pytest.raises(GossipProtocolError, match="meta"):
        decode_packet(too_big)
    pp = PushPull(False, (PushNodeState("n", ("10.0.0.1", 1), b"m" * 513, 1, NodeState.ALIVE, VSN),))
    with pytest.raises(GossipProtocolError, match="meta"):
        decode_stream(encode_stream(pp))


def test_stream_byte_limit_at_the_boundary() -> None:
    """A stream message of exactly max_bytes decodes; one byte more raises GossipTooLarge."""
    raw = encode_stream(PushPull(False, (), b"u" * 50))
    assert decode_stream(raw, max_bytes=len(raw)).user_state == b"u" * 50  # type: ignore[union-attr]
    dec = StreamDecoder(max_bytes=len(raw) - 1)
    with pytest.raises(GossipTooLarge):
        dec.feed(raw)


def test_stream_member_count_limit_at_the_boundary() -> None:
    """max_nodes members are accepted; a header announcing one more is refused before reading them."""
    states = tuple(PushNodeState(f"n{i}", ("10.0.0.1", i + 1), b"", 1, NodeState.ALIVE, VSN)
                   for i in range(3))
    raw = encode_stream(PushPull(False, states))
    assert len(decode_stream(raw, max_nodes=3).states) == 3  # type: ignore[union-attr]
    with pytest.raises(GossipProtocolError, match="members"):
        StreamDecoder(max_nodes=2).feed(raw[:40])


def test_lzw_output_limit_at_the_boundary() -> None:
    """Decompression yields exactly max_output bytes, and refuses one byte more."""
    data = b"a" * 1000
    packed = lzw.compress(data)
    assert lzw.decompress(packed, max_output=1000) == data
    with pytest.raises(lzw.LzwTooLarge):
        lzw.decompress(packed, max_output=999)
    bomb = encode_packet([UserMsg(b"\x00" * 200_000)], compress=True)
    assert len(bomb) < 5_000
    with pytest.raises(GossipTooLarge):
        decode_packet(bomb, max_decompressed=100_000)


def test_bytes_after_a_complete_stream_message_are_refused() -> None:
    """Trailing bytes after the message on a stream are a protocol error."""
    raw = encode_stream(Ack(1))
    with pytest.raises(GossipProtocolError, match="after the end"):
        decode_stream(raw + b"\x00")
    dec = StreamDecoder()
    assert dec.feed(raw) == Ack(1)
    with pytest.raises(GossipProtocolError):
        dec.feed(b"\x01")


# ---------------------------------------------------------------------------- LZW vectors


def test_lzw_known_vectors_from_go() -> None:
    """Go's compress/lzw test vectors (LSB, width 8) decode; our encoder matches Go >= 1.17's output."""
    tobe = b"TOBEORNOTTOBEORTOBEORNOT"
    # Written by Go before 1.17 (no leading clear code): from Go's reader tests.
    old = b"\x54\x9e\x08\x29\xf2\x44\x8a\x93\x27\x54\x04\x12\x34\xb8\xb0\xe0\xc1\x84\x01\x01"
    assert lzw.decompress(old) == tobe
    assert lzw.decompress(b"\x01\x01") == b""
    # Written by Go 1.17+ (leading clear code).
    modern = b"\x00\xa9<\x11R\xe4\x89\x14'O\xa8\x08$hpa\xc1\x83\t\x03\x02"
    assert lzw.compress(tobe) == modern
    assert lzw.decompress(modern) == tobe
    assert lzw.compress(b"") == b"\x00\x03\x02"
    with pytest.raises(lzw.LzwError, match="end code"):
        lzw.decompress(b"\x54\x9e\x08\x29\xf2\x44\x8a\x93\x27\x54\x04")  # Go: unexpected EOF


@given(st.binary(max_size=3000) | st.text(alphabet="ab", max_size=20000).map(str.encode))
@settings(max_examples=150)
def test_lzw_round_trip(data: bytes) -> None:
    """Any bytes survive LZW, including inputs long enough to hit 12-bit codes and table resets."""
    assert lzw.decompress(lzw.compress(data), max_output=len(data) + 1) == data


def test_lzw_table_reset_round_trip() -> None:
    """A long, varied input that exhausts the code table twice still round-trips."""
    import random

    r = random.Random(5)
    data = bytes(r.choice(b"abcdefgh") for _ in range(200_000))
    assert lzw.decompress(lzw.compress(data), max_output=len(data)) == data


# ---------------------------------------------------------------------------- garbage


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_packet_garbage_raises_only_typed_errors(data: bytes) -> None:
    """Random bytes either decode or raise GossipProtocolError, nothing else."""
    try:
        decode_packet(data)
    except GossipProtocolError:
        pass


@given(st.lists(packet_messages, min_size=1, max_size=3), st.data())
@settings(max_examples=300)
def test_mutated_packets_raise_only_typed_errors(msgs: list[PacketMessage], data: st.DataObject) -> None:
    """Valid packets with random bytes flipped, cut or appended raise only GossipProtocolError."""
    raw = bytearray(encode_packet(msgs, compress=data.draw(st.booleans()), compress_if_smaller=False))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))] + data.draw(st.binary(max_size=4))
    try:
        decode_packet(bytes(raw))
    except GossipProtocolError:
        pass


@given(push_pulls, st.booleans(), st.data())
@settings(max_examples=200)
def test_mutated_streams_raise_only_typed_errors(pp: PushPull, compress: bool, data: st.DataObject) -> None:
    """Corrupted push-pull streams, fed in chunks, raise only GossipProtocolError."""
    raw = bytearray(encode_stream(pp, compress=compress))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    dec = StreamDecoder(max_bytes=100_000, max_nodes=100)
    try:
        pos = 0
        while pos < len(raw):
            n = data.draw(st.integers(1, 64))
            dec.feed(bytes(raw[pos:pos + n]))
            pos += n
    except GossipProtocolError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_stream_garbage_raises_only_typed_errors(data: bytes) -> None:
    """Random bytes fed to the stream decoder either decode, wait for more, or raise GossipProtocolError."""
    try:
        StreamDecoder(max_bytes=10_000, max_nodes=50).feed(data)
    except GossipProtocolError:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_lzw_garbage_raises_only_lzw_errors(data: bytes) -> None:
    """Random bytes given to the LZW decoder raise only LzwError (a RemoteProtocolError)."""
    try:
        lzw.decompress(data, max_output=100_000)
    except lzw.LzwError:
        pass


@given(packet_messages)
@settings(max_examples=300)
def test_core_size_estimate_never_underestimates_the_encoding(msg: PacketMessage) -> None:
    """The core's wire_size() (used to fill UDP packets) is an upper bound of the real encoding."""
    from pulse._core.swim_messages import wire_size

    assert len(encode_message(msg)) <= wire_size(msg)
