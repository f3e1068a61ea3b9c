"""Decoders of the WebSocket plugin: ping payloads, in-band heartbeats, frame reassembly, the
opening handshake."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage
from wsproto.events import Ping as WsPing

from pulse.errors import RemoteProtocolError
from pulse.frames import Data, Ping, Pong, encode_frame
from pulse.plugins.websocket.connection import (
    CloseReceived,
    MessageReceived,
    MessageTooBig,
    WebSocketConnection,
)
from pulse.plugins.websocket.errors import WebSocketClosed, WebSocketProtocolError
from pulse.plugins.websocket.handshake import HandshakeDecoder
from pulse.plugins.websocket.heartbeat import (
    PING_PAYLOAD_SIZE,
    classify_inband,
    inband_ping,
    inband_pong,
    ping_payload,
    pong_seq,
)

SEQS = st.integers(min_value=0, max_value=2**64 - 1)
TIMESTAMPS = st.floats(allow_nan=False, allow_infinity=False)


@given(SEQS)
def test_ping_payload_round_trips(seq: int) -> None:
    """Every sequence number survives the ping payload and fits a control frame."""
    payload = ping_payload(seq)
    assert len(payload) == PING_PAYLOAD_SIZE <= 125
    assert pong_seq(payload) == seq


@given(st.binary(max_size=200))
def test_pong_seq_never_raises_and_rejects_foreign_payloads(payload: bytes) -> None:
    """Any pong payload decodes to a seq only when it has our prefix and exact size."""
    seq = pong_seq(payload)
    if seq is not None:
        assert ping_payload(seq) == payload
    else:
        assert len(payload) != PING_PAYLOAD_SIZE or not payload.startswith(b"pulse")


@given(SEQS, TIMESTAMPS)
def test_in_band_heartbeats_round_trip(seq: int, ts: float) -> None:
    """In-band pings and their pongs are recognised with their fields intact."""
    ping = classify_inband(inband_ping(seq, ts))
    assert ping == Ping(seq, ts)
    assert isinstance(ping, Ping)
    assert classify_inband(inband_pong(ping)) == Pong(seq, ts)


@given(st.binary(max_size=100))
def test_classify_inband_never_raises_on_application_bytes(message: bytes) -> None:
    """Arbitrary binary messages are application data unless they are exactly one heartbeat."""
    result = classify_inband(message)
    if result is not None:
        assert isinstance(result, Ping | Pong)
        assert math.isfinite(result.ts)


def test_other_pulse_frames_are_application_data() -> None:
    """A Data frame, a heartbeat with trailing bytes or a cut one is not a heartbeat."""
    assert classify_inband(encode_frame(Data(b"x"))) is None
    assert classify_inband(inband_ping(1, 0.0) + b"\x00") is None
    assert classify_inband(inband_ping(1, 0.0)[:-1]) is None
    assert classify_inband(b"") is None


def _open_pair() -> tuple[WSConnection, WSConnection]:
    """A client and a server wsproto connection past the opening handshake."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/")))
    assert any(isinstance(e, Request) for e in server.events())
    client.receive_data(server.send(AcceptConnection()))
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    return client, server


def _decode(data: bytes, chunks: list[int], max_message_size: int) -> list[object]:
    """Feed ``data`` (cut into ``chunks``) to a server-side connection; collect the events."""
    _, server = _open_pair()
    out: list[object] = []

    async def run() -> None:
        sender, receiver = trio.testing.memory_stream_pair()
        conn = WebSocketConnection(receiver, server, max_message_size=max_message_size)
        position = 0
        for size in chunks:
            await sender.send_all(data[position:position + size])
            position += size
        await sender.send_all(data[position:])
        await sender.aclose()
        for _ in range(10_000):
            try:
                event = await conn.receive_event()
            except (WebSocketProtocolError, WebSocketClosed) as exc:
                out.append(exc)
                return
            out.append(event)
            if isinstance(event, CloseReceived):
                return
        raise AssertionError("decoder did not finish")

    trio.run(run)
    return out


MESSAGES = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(MESSAGES, st.integers(min_value=1, max_value=64), st.lists(st.integers(1, 50), max_size=20))
def test_fragmented_messages_reassemble_in_any_chunking(
    messages: list[str | bytes], fragment: int, chunks: list[int],
) -> None:
    """Messages sent in fragments, read in arbitrary chunks, arrive whole and in order."""
    client, _ = _open_pair()
    wire = b""
    for message in messages:
        pieces = [message[i:i + fragment] for i in range(0, len(message), fragment)] or [message]
        for index, piece in enumerate(pieces):
            final = index == len(pieces) - 1
            event = (TextMessage(data=piece, message_finished=final) if isinstance(piece, str)
                     else BytesMessage(data=piece, message_finished=final))
            wire += client.send(event)
    events = _decode(wire, chunks, max_message_size=10_000)
    assert events[:-1] == [MessageReceived(m) for m in messages]
    assert events[-1] == CloseReceived(1006, "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes, chunks: list[int]) -> None:
    """Garbage from a peer ends only in a protocol error (with its close code) or a close."""
    events = _decode(data, chunks, max_message_size=100)
    last = events[-1]
    if isinstance(last, WebSocketProtocolError):
        assert last.code in (1002, 1007, 1009)
    else:
        assert isinstance(last, CloseReceived | WebSocketClosed)


def test_message_size_limit_is_enforced_at_the_boundary() -> None:
    """A message of exactly max_message_size bytes passes; one byte more raises 1009."""
    client, _ = _open_pair()
    ok = _decode(client.send(BytesMessage(data=b"x" * 100)), [], max_message_size=100)
    assert ok[0] == MessageReceived(b"x" * 100)
    client, _ = _open_pair()
    too_big = _decode(client.send(TextMessage(data="é" * 51)), [], max_message_size=101)
    assert isinstance(too_big[0], MessageTooBig)
    assert too_big[0].code == 1009


def test_websocket_urls_are_parsed_with_default_ports_and_targets() -> None:
    """ws:// and wss:// URLs give host, port (80/443 by default), target and Host header."""
    from pulse.plugins.websocket.transport import parse_ws_url

    url = parse_ws_url("wss://Example.org/feed?x=1")
    assert (url.secure, url.host, url.port, url.target) == (True, "example.org", 443, "/feed?x=1")
    assert url.host_header == "example.org"
    url = parse_ws_url("ws://[::1]:8080")
    assert (url.host, url.port, url.target, url.host_header) == ("::1", 8080, "/", "[::1]:8080")
    assert url.peer == "[::1]:8080"
    for bad in ("http://x/", "ws:///path", "ws://host:99999/", "tcp://h:1"):
        with pytest.raises(ValueError):
            parse_ws_url(bad)


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    st.builds(lambda head, tail: b"GET / HTTP/1.1\r\n" + head + b"\r\n\r\n" + tail,
              st.binary(max_size=200), st.binary(max_size=50)),
))
def test_upgrade_request_parser_only_raises_pulse_errors(data: bytes) -> None:
    """Any bytes before EOF end the server handshake with a pulse error, never a crash."""
    from pulse.errors import PulseError
    from pulse.plugins.websocket.handshake import server_handshake

    outcome: list[object] = []

    async def run() -> None:
        client, server = trio.testing.memory_stream_pair()
        await client.send_all(data)
        await client.send_eof()
        try:
            outcome.append(await server_handshake(server))
        except PulseError as exc:
            outcome.append(exc)

    trio.run(run)
    assert len(outcome) == 1


def test_a_frame_header_declaring_too_much_is_refused_before_its_payload() -> None:
    """A header declaring 4 GB is answered with 1009 at once, with no payload sent at all;
    a fragment that would take the message over the limit likewise."""
    header = bytes([0x82, 0x80 | 127]) + (2**32).to_bytes(8, "big") + b"mask"
    events = _decode(header, [], max_message_size=1024 * 1024)
    assert isinstance(events[0], MessageTooBig) and events[0].code == 1009
    client, _ = _open_pair()
    first = client.send(BytesMessage(data=b"x" * 60, message_finished=False))
    second_header = client.send(BytesMessage(data=b"y" * 50, message_finished=True))[:6]
    events = _decode(first + second_header, [], max_message_size=100)
    assert isinstance(events[0], MessageTooBig)


@given(st.binary(max_size=125))
def test_the_server_ping_fast_path_matches_wsproto(payload: bytes) -> None:
    """A server's ping frame is byte for byte what wsproto builds, and a client reads it."""
    client, server = _open_pair()

    async def run() -> bytes:
        _sender, receiver = trio.testing.memory_stream_pair()
        return WebSocketConnection(receiver, server).encode_ping(payload)

    fast = trio.run(run)
    assert fast == server.send(WsPing(payload=payload))
    client.receive_data(fast)
    assert [e.payload for e in client.events() if isinstance(e, WsPing)] == [payload]


@settings(max_examples=200, deadline=None)
@given(
    role=st.sampled_from([ConnectionType.SERVER, ConnectionType.CLIENT]),
    chunks=st.lists(st.binary(max_size=300), max_size=12),
    limit=st.integers(1, 600),
)
def test_handshake_decoder_raises_only_typed_errors_and_stays_within_its_limit(
    role: ConnectionType, chunks: list[bytes], limit: int
) -> None:
    """Any bytes in any chunking: the handshake decoder returns events or raises a
    PulseError (RemoteProtocolError), and never hands wsproto more head than its limit."""
    decoder = HandshakeDecoder(role, max_head_size=limit)
    if role is ConnectionType.CLIENT:
        decoder.send(Request(host="h", target="/"))
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except RemoteProtocolError:
            break
        assert decoder.head_bytes <= limit
    assert decoder.head_bytes <= limit


@settings(max_examples=30, deadline=None)
@given(line=st.binary(min_size=1, max_size=64).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_endless_header_block_is_refused_within_the_limit(line: bytes) -> None:
    """A peer that sends header lines forever is refused once its head passes the limit:
    the decoder takes no more than the limit, whatever the lines are."""
    decoder = HandshakeDecoder(ConnectionType.SERVER, max_head_size=4096)
    fed = 0
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"GET / HTTP/1.1\r\n")
        while fed < 10 * 4096:
            decoder.feed(b"X-" + line + b": v\r\n")
            fed += len(line) + 7
    assert decoder.head_bytes <= 4096
