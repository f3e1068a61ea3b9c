"""ZooKeeper requests and replies: layouts, reply matching, notifications, error mapping."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.errors import LocalProtocolError, RemoteProtocolError, SessionError, SessionExpired
from pulse.plugins.zookeeper.jute import (
    ConnectRequest,
    ConnectResponse,
    JuteWriter,
    ReplyHeader,
    Stat,
    WatcherEvent,
    frame,
)
from pulse.plugins.zookeeper.protocol import (
    ClientConnection,
    Connected,
    Create,
    CreateMode,
    Delete,
    ErrorCode,
    EventType,
    Exists,
    GetChildren2,
    GetData,
    NodeExistsError,
    NoNodeError,
    Notification,
    Pong,
    Reply,
    SetWatches,
    WatchesRestored,
    Xid,
    ZooKeeperError,
    ZooKeeperSessionExpired,
    encode_request,
    error_for,
)

STAT = Stat(1, 2, 3, 4, 5, 6, 7, 0x1234, 9, 10, 11)


def _connected() -> ClientConnection:
    connection = ClientConnection()
    connection.connect(ConnectRequest(timeout_ms=1000))
    [event] = connection.receive(frame(ConnectResponse(1000, 42, b"k" * 16).encode()))
    assert isinstance(event, Connected) and event.response.session_id == 42
    return connection


def _reply(xid: int, body: bytes = b"", err: int = 0, zxid: int = 5) -> bytes:
    return frame(ReplyHeader(xid, zxid, err).encode() + body)


def _stat_bytes(stat: Stat = STAT) -> bytes:
    writer = JuteWriter()
    stat.write(writer)
    return writer.getvalue()


def test_create_request_layout() -> None:
    """create: header, path, data, ACL vector (world:anyone, perms 31), flags."""
    data = encode_request(3, Create("/p", b"d", CreateMode.EPHEMERAL))
    body = (
        struct.pack(">ii", 3, 1)
        + b"\x00\x00\x00\x02/p" + b"\x00\x00\x00\x01d"
        + struct.pack(">ii", 1, 31) + b"\x00\x00\x00\x05world" + b"\x00\x00\x00\x06anyone"
        + struct.pack(">i", 1)
    )
    assert data == frame(body)


def test_set_watches_layout() -> None:
    """setWatches: relative zxid then data, exist and child path vectors."""
    data = encode_request(Xid.SET_WATCHES, SetWatches(9, ["/d"], [], ["/c"]))
    body = (
        struct.pack(">iiq", -8, 101, 9)
        + struct.pack(">i", 1) + b"\x00\x00\x00\x02/d"
        + struct.pack(">i", 0)
        + struct.pack(">i", 1) + b"\x00\x00\x00\x02/c"
    )
    assert data == frame(body)


def test_replies_are_parsed_per_request_type() -> None:
    """Each reply body is decoded by the request it answers, in order."""
    connection = _connected()
    connection.send(1, Create("/a", b"x"))
    connection.send(2, GetData("/a", watch=True))
    connection.send(3, GetChildren2("/"))
    connection.send(4, Exists("/a"))
    connection.send(5, Delete("/a"))
    stream = (
        _reply(1, b"\x00\x00\x00\x02/a")
        + _reply(2, b"\x00\x00\x00\x01x" + _stat_bytes())
        + _reply(3, struct.pack(">i", 2) + b"\x00\x00\x00\x01a\x00\x00\x00\x01b" + _stat_bytes())
        + _reply(4, _stat_bytes())
        + _reply(5)
    )
    events = connection.receive(stream)
    results = [e.result for e in events if isinstance(e, Reply)]
    assert results == ["/a", (b"x", STAT), (["a", "b"], STAT), STAT, None]
    assert connection.outstanding == 0


def test_error_reply_maps_to_typed_error_with_path() -> None:
    """A NoNode reply becomes NoNodeError carrying the request's path."""
    connection = _connected()
    connection.send(1, GetData("/missing"))
    [event] = connection.receive(_reply(1, err=ErrorCode.NO_NODE))
    assert isinstance(event, Reply) and isinstance(event.error, NoNodeError)
    assert event.error.path == "/missing"


def test_out_of_order_reply_is_remote_error() -> None:
    """A reply whose xid is not the oldest outstanding request is a protocol error."""
    connection = _connected()
    connection.send(1, Exists("/a"))
    connection.send(2, Exists("/b"))
    with pytest.raises(RemoteProtocolError, match="out of order"):
        connection.receive(_reply(2, _stat_bytes()))


def test_unsolicited_reply_is_remote_error() -> None:
    """A reply when nothing is outstanding is a protocol error."""
    with pytest.raises(RemoteProtocolError, match="no request is outstanding"):
        _connected().receive(_reply(9))


def test_special_xids() -> None:
    """xid -2 is a pong, -1 a notification, -8 the setWatches answer."""
    connection = _connected()
    watch = WatcherEvent(EventType.NODE_CHILDREN_CHANGED, 3, "/p")
    events = connection.receive(
        _reply(Xid.PING) + frame(ReplyHeader(-1, -1, 0).encode() + watch.encode())
        + _reply(Xid.SET_WATCHES)
    )
    assert events == [Pong(5), Notification(watch), WatchesRestored(0)]


def test_requests_before_handshake_are_local_errors() -> None:
    """Sending a request before the handshake completes is this side's bug."""
    connection = ClientConnection()
    with pytest.raises(LocalProtocolError):
        connection.send(1, Exists("/"))
    connection.connect(ConnectRequest(timeout_ms=1000))
    with pytest.raises(LocalProtocolError):
        connection.connect(ConnectRequest(timeout_ms=1000))


def test_trailing_bytes_in_reply_are_remote_error() -> None:
    """Extra bytes after a reply body are rejected."""
    connection = _connected()
    connection.send(1, Delete("/a"))
    with pytest.raises(RemoteProtocolError, match="trailing"):
        connection.receive(_reply(1, b"junk"))


def test_error_mapping_keeps_the_pulse_hierarchy() -> None:
    """Error codes map to typed errors; expiry is also pulse's SessionExpired."""
    assert isinstance(error_for(ErrorCode.NODE_EXISTS), NodeExistsError)
    expired = error_for(ErrorCode.SESSION_EXPIRED)
    assert isinstance(expired, ZooKeeperSessionExpired) and isinstance(expired, SessionExpired)
    unknown = error_for(-999)
    assert type(unknown) is ZooKeeperError and unknown.code == -999
    assert isinstance(unknown, SessionError)


@given(st.integers(-200, 0))
def test_every_error_code_maps_to_a_session_error(code: int) -> None:
    """Any error code gives a ZooKeeperError with that code and a readable message."""
    error = error_for(code, "/x")
    assert isinstance(error, ZooKeeperError) and error.code == code and str(error)


def test_auth_reply_is_its_own_event_and_auth_packet_layout() -> None:
    """xid -4 answers addAuth (AuthResult, not WatchesRestored); the packet is type 0, scheme, auth."""
    from pulse.plugins.zookeeper.protocol import AuthPacket, AuthResult

    connection = _connected()
    assert connection.receive(_reply(Xid.AUTH)) == [AuthResult(0)]
    body = AuthPacket("digest", b"u:p").encode()
    assert body == b"\x00\x00\x00\x00" + b"\x00\x00\x00\x06digest" + b"\x00\x00\x00\x03u:p"
    assert "u:p" not in repr(AuthPacket("digest", b"u:p"))
