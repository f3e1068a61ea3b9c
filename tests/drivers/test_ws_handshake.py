"""The WebSocket opening handshake against hostile bytes: typed errors, bounded buffering, and
a server that keeps serving (MockClock autojump, memory streams)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.events import Request

from pulse._core.policy import HeartbeatPolicy
from pulse.errors import RemoteProtocolError
from pulse.plugins.websocket.handshake import (
    MAX_HEAD_SIZE,
    HandshakeDecoder,
    client_handshake,
)
from pulse.plugins.websocket.server import ServerSettings, echo, serve_stream

POLICY = HeartbeatPolicy(interval=1.0, timeout=3.0)

UPGRADE = (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


@pytest.mark.parametrize("header", [b"Sec-WebSocket-Protocol: chat\xe9", b"Sec-WebSocket-Extensions: \xffx"])
def test_non_ascii_header_list_is_a_remote_protocol_error(header: bytes) -> None:
    """A non-ASCII comma-separated header (wsproto raised UnicodeDecodeError) is refused as
    RemoteProtocolError, and the decoder keeps refusing afterwards."""
    decoder = HandshakeDecoder(ConnectionType.SERVER)
    with pytest.raises(RemoteProtocolError, match="bad opening handshake"):
        decoder.feed(UPGRADE + header + b"\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\r\n")


def test_head_larger_than_the_limit_is_refused_before_it_is_buffered() -> None:
    """A header block past max_head_size is refused when it passes the limit: wsproto never
    holds more than the limit, however much more the peer sends in one chunk."""
    decoder = HandshakeDecoder(ConnectionType.SERVER, max_head_size=1000)
    decoder.feed(UPGRADE)
    with pytest.raises(RemoteProtocolError, match="larger than 1000 bytes"):
        decoder.feed(b"X-Filler: " + b"a" * 10_000_000)
    assert decoder.head_bytes == 1000
    # h11's own buffer (private), read to check the bound independently of our count.
    assert len(decoder.ws.handshake._h11_connection._receive_buffer) <= 1000


def test_bytes_after_a_complete_head_pass_through_the_limit() -> None:
    """A head within the limit followed by pipelined frames in the same chunk is accepted
    (only the head counts against max_head_size)."""
    head = UPGRADE + b"\r\n"
    decoder = HandshakeDecoder(ConnectionType.SERVER, max_head_size=len(head))
    events = decoder.feed(head + b"\x81\x85abcd" + b"x" * 5000)
    assert [type(e) for e in events] == [Request]


def test_default_head_limit_matches_h11() -> None:
    """The default limit is h11's own 16 KiB: a 17 KiB head is refused by the count."""
    decoder = HandshakeDecoder(ConnectionType.SERVER)
    with pytest.raises(RemoteProtocolError, match=f"larger than {MAX_HEAD_SIZE}"):
        decoder.feed(UPGRADE + b"X: " + b"a" * 17 * 1024)


async def test_server_answers_a_non_ascii_upgrade_with_400_and_keeps_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """serve_stream answers the upgrade wsproto used to crash on (UnicodeDecodeError out of
    the handler, taking the listener down) with HTTP 400 and returns normally; the next
    client is served."""
    settings = ServerSettings(policy=POLICY)
    async with trio.open_nursery() as nursery:
        bad_client, bad_server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_stream, bad_server, echo, settings)
        await bad_client.send_all(UPGRADE + b"Sec-WebSocket-Protocol: \xe9\r\n\r\n")
        answer = b""
        while chunk := await bad_client.receive_some(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ")
        good_client, good_server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_stream, good_server, echo, settings)
        ws, _ = await client_handshake(good_client, host="test", target="/good")
        assert ws is not None
        nursery.cancel_scope.cancel()


def test_frames_right_behind_the_101_stay_for_the_connection() -> None:
    """A server's first frame in the same read as its 101 is not consumed by the handshake:
    the decoder returns only the acceptance and the frame is still in the wsproto connection."""
    from wsproto.events import AcceptConnection, TextMessage
    from wsproto.utilities import generate_accept_token

    decoder = HandshakeDecoder(ConnectionType.CLIENT)
    request = decoder.send(Request(host="a", target="/"))
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + generate_accept_token(key)
              + b"\r\n\r\n\x81\x02hi")
    events = decoder.feed(answer)
    assert [type(e) for e in events] == [AcceptConnection]
    assert [e.data for e in decoder.ws.events() if isinstance(e, TextMessage)] == ["hi"]
