"""ZooKeeper requests and replies: opcodes, error codes, and a sans-IO client connection.

A request is a frozen dataclass with an ``opcode``, an ``encode()`` for its body and a
``parse_reply(reader)`` for the body of a successful reply. :class:`ClientConnection` turns
requests into framed bytes and received bytes into :class:`Incoming` events, checking the
rules ZooKeeper's wire protocol keeps:

* the first frame each way is the handshake (ConnectRequest / ConnectResponse, no headers);
* every later request carries a :class:`~.jute.RequestHeader`; replies come back **in
  request order**, so a reply whose xid is not the oldest outstanding one is a protocol
  error;
* special xids: -1 watch notification, -2 ping, -4 auth, -8 setWatches (no pending entry).

Error codes map to :class:`ZooKeeperError` subclasses (:func:`error_for`), which derive from
:class:`pulse.errors.SessionError`; an expired session maps to one that is also a
:class:`pulse.errors.SessionExpired`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pulse.errors import (
    AuthFailed,
    KeyExists,
    LocalProtocolError,
    NoServerReachable,
    RemoteProtocolError,
    SessionClosed,
    SessionError,
    SessionExpired,
)

from .jute import (
    ACL,
    DEFAULT_MAX_FRAME,
    OPEN_ACL_UNSAFE,
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

# --------------------------------------------------------------------------- constants


class OpCode(enum.IntEnum):
    """Request types (``ZooDefs.OpCode``); only those pulse sends or names are listed."""

    NOTIFICATION = 0
    CREATE = 1
    DELETE = 2
    EXISTS = 3
    GET_DATA = 4
    SET_DATA = 5
    GET_CHILDREN = 8
    PING = 11
    GET_CHILDREN2 = 12
    CREATE2 = 15
    AUTH = 100
    SET_WATCHES = 101
    SET_WATCHES2 = 105
    CREATE_SESSION = -10
    CLOSE_SESSION = -11
    ERROR = -1


class Xid(enum.IntEnum):
    """Reserved request ids with a fixed meaning."""

    NOTIFICATION = -1
    PING = -2
    AUTH = -4
    SET_WATCHES = -8


class CreateMode(enum.IntEnum):
    """The ``flags`` of a create request."""

    PERSISTENT = 0
    EPHEMERAL = 1
    PERSISTENT_SEQUENTIAL = 2
    EPHEMERAL_SEQUENTIAL = 3


class EventType(enum.IntEnum):
    """``Watcher.Event.EventType``: what a watch notification reports."""

    NONE = -1
    NODE_CREATED = 1
    NODE_DELETED = 2
    NODE_DATA_CHANGED = 3
    NODE_CHILDREN_CHANGED = 4
    DATA_WATCH_REMOVED = 5
    CHILD_WATCH_REMOVED = 6
    PERSISTENT_WATCH_REMOVED = 7


class KeeperState(enum.IntEnum):
    """``Watcher.Event.KeeperState`` carried by notifications."""

    UNKNOWN = -1
    DISCONNECTED = 0
    SYNC_CONNECTED = 3
    AUTH_FAILED = 4
    CONNECTED_READ_ONLY = 5
    SASL_AUTHENTICATED = 6
    EXPIRED = -112
    CLOSED = 7


class ErrorCode(enum.IntEnum):
    """``KeeperException.Code``: the ``err`` field of a reply header."""

    OK = 0
    SYSTEM_ERROR = -1
    RUNTIME_INCONSISTENCY = -2
    DATA_INCONSISTENCY = -3
    CONNECTION_LOSS = -4
    MARSHALLING_ERROR = -5
    UNIMPLEMENTED = -6
    OPERATION_TIMEOUT = -7
    BAD_ARGUMENTS = -8
    NEW_CONFIG_NO_QUORUM = -13
    RECONFIG_IN_PROGRESS = -14
    UNKNOWN_SESSION = -12
    API_ERROR = -100
    NO_NODE = -101
    NO_AUTH = -102
    BAD_VERSION = -103
    NO_CHILDREN_FOR_EPHEMERALS = -108
    NODE_EXISTS = -110
    NOT_EMPTY = -111
    SESSION_EXPIRED = -112
    INVALID_CALLBACK = -113
    INVALID_ACL = -114
    AUTH_FAILED = -115
    SESSION_MOVED = -118
    NOT_READ_ONLY = -119
    EPHEMERAL_ON_LOCAL_SESSION = -120
    NO_WATCHER = -121
    REQUEST_TIMEOUT = -122
    RECONFIG_DISABLED = -123
    SESSION_CLOSED_REQUIRE_SASL_AUTH = -124
    QUOTA_EXCEEDED = -125
    THROTTLED_OP = -127


# --------------------------------------------------------------------------- errors


class ZooKeeperError(SessionError):
    """A ZooKeeper operation failed; ``code`` is the server's (or a local) error code."""

    code: int = ErrorCode.SYSTEM_ERROR

    def __init__(self, message: str = "", *, path: str | None = None, code: int | None = None):
        if code is not None:
            self.code = code
        self.path = path
        name = _code_name(self.code)
        text = message or name
        if path is not None and not message:
            text = f"{name}: {path}"
        super().__init__(text)


class ConnectionLoss(ZooKeeperError):
    """The connection dropped before the reply arrived; the outcome is unknown."""

    code = ErrorCode.CONNECTION_LOSS


class NoNodeError(ZooKeeperError):
    """The node does not exist."""

    code = ErrorCode.NO_NODE


class NodeExistsError(ZooKeeperError, KeyExists):
    """The node already exists (for a registration: another session holds the key)."""

    code = ErrorCode.NODE_EXISTS


class NotEmptyError(ZooKeeperError):
    """The node has children and cannot be deleted."""

    code = ErrorCode.NOT_EMPTY


class BadVersionError(ZooKeeperError):
    """A conditional update or delete named a version the node no longer has."""

    code = ErrorCode.BAD_VERSION


class NoChildrenForEphemeralsError(ZooKeeperError):
    """Ephemeral nodes cannot have children."""

    code = ErrorCode.NO_CHILDREN_FOR_EPHEMERALS


class NoAuthError(ZooKeeperError):
    """The session lacks the permission the ACL requires."""

    code = ErrorCode.NO_AUTH


class BadArgumentsError(ZooKeeperError):
    """The server rejected an argument (bad path, flags or data)."""

    code = ErrorCode.BAD_ARGUMENTS


class InvalidACLError(ZooKeeperError):
    """The ACL is malformed."""

    code = ErrorCode.INVALID_ACL


class NoServerAnswered(ConnectionLoss, NoServerReachable):
    """No server of the list answered within the start timeout (no session was opened)."""


class SessionMovedError(ZooKeeperError):
    """The session moved to another server while a request was in flight."""

    code = ErrorCode.SESSION_MOVED


class ZooKeeperSessionExpired(ZooKeeperError, SessionExpired):
    """The session expired; every ephemeral node it held is gone."""

    code = ErrorCode.SESSION_EXPIRED


class ZooKeeperAuthFailed(ZooKeeperError, AuthFailed):
    """Authentication was refused."""

    code = ErrorCode.AUTH_FAILED


class SessionClosedError(ZooKeeperError, SessionClosed):
    """The session was closed by this client; no more requests are accepted."""

    code = ErrorCode.SESSION_EXPIRED


_ERRORS: dict[int, type[ZooKeeperError]] = {
    cls.code: cls
    for cls in (
        ConnectionLoss,
        NoNodeError,
        NodeExistsError,
        NotEmptyError,
        BadVersionError,
        NoChildrenForEphemeralsError,
        NoAuthError,
        BadArgumentsError,
        InvalidACLError,
        SessionMovedError,
        ZooKeeperSessionExpired,
        ZooKeeperAuthFailed,
    )
}


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"error {code}"


def error_for(code: int, path: str | None = None) -> ZooKeeperError:
    """The typed error for a non-zero ``err`` (unknown codes give a plain ZooKeeperError)."""
    cls = _ERRORS.get(code)
    if cls is None:
        return ZooKeeperError(path=path, code=code)
    return cls(path=path)


# --------------------------------------------------------------------------- requests


class Request(Protocol):
    """What every request record offers."""

    opcode: ClassVar[OpCode]

    def encode(self) -> bytes:
        """The request body (after the header)."""
        ...

    def parse_reply(self, reader: JuteReader) -> Any:
        """Decode the body of a successful reply."""
        ...


@dataclass(frozen=True, slots=True)
class Create:
    """Create ``path`` with ``data``; the reply is the created path (sequential: suffixed)."""

    path: str
    data: bytes = b""
    mode: CreateMode = CreateMode.PERSISTENT
    acl: Sequence[ACL] = OPEN_ACL_UNSAFE
    opcode: ClassVar[OpCode] = OpCode.CREATE

    def encode(self) -> bytes:
        """The body: path, data, ACL vector, flags."""
        writer = JuteWriter().write_string(self.path).write_buffer(self.data)
        writer.write_int(len(self.acl))
        for entry in self.acl:
            entry.write(writer)
        return writer.write_int(int(self.mode)).getvalue()

    def parse_reply(self, reader: JuteReader) -> str:
        """The created path."""
        path = reader.read_string("path")
        if path is None:
            raise RemoteProtocolError("bad reply to create: null path")
        return path


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``path`` (``version`` -1: any version)."""

    path: str
    version: int = -1
    opcode: ClassVar[OpCode] = OpCode.DELETE

    def encode(self) -> bytes:
        """The body: path, version."""
        return JuteWriter().write_string(self.path).write_int(self.version).getvalue()

    def parse_reply(self, reader: JuteReader) -> None:
        """A delete reply has no body."""
        return None


@dataclass(frozen=True, slots=True)
class Exists:
    """The node's Stat (NoNode if absent); with ``watch`` the server remembers the path."""

    path: str
    watch: bool = False
    opcode: ClassVar[OpCode] = OpCode.EXISTS

    def encode(self) -> bytes:
        """The body: path, watch flag."""
        return JuteWriter().write_string(self.path).write_bool(self.watch).getvalue()

    def parse_reply(self, reader: JuteReader) -> Stat:
        """The node's Stat."""
        return Stat.read(reader)


@dataclass(frozen=True, slots=True)
class GetData:
    """The node's data and Stat; with ``watch`` a data watch is set."""

    path: str
    watch: bool = False
    opcode: ClassVar[OpCode] = OpCode.GET_DATA

    def encode(self) -> bytes:
        """The body: path, watch flag."""
        return JuteWriter().write_string(self.path).write_bool(self.watch).getvalue()

    def parse_reply(self, reader: JuteReader) -> tuple[bytes, Stat]:
        """Data (null reads as empty) and Stat."""
        data = reader.read_buffer("data") or b""
        return data, Stat.read(reader)


@dataclass(frozen=True, slots=True)
class SetData:
    """Replace the node's data (``version`` -1: any version); the reply is the new Stat."""

    path: str
    data: bytes
    version: int = -1
    opcode: ClassVar[OpCode] = OpCode.SET_DATA

    def encode(self) -> bytes:
        """The body: path, data, version."""
        return (
            JuteWriter().write_string(self.path).write_buffer(self.data).write_int(self.version)
            .getvalue()
        )

    def parse_reply(self, reader: JuteReader) -> Stat:
        """The node's new Stat."""
        return Stat.read(reader)


@dataclass(frozen=True, slots=True)
class GetChildren2:
    """The node's children and Stat; with ``watch`` a child watch is set."""

    path: str
    watch: bool = False
    opcode: ClassVar[OpCode] = OpCode.GET_CHILDREN2

    def encode(self) -> bytes:
        """The body: path, watch flag."""
        return JuteWriter().write_string(self.path).write_bool(self.watch).getvalue()

    def parse_reply(self, reader: JuteReader) -> tuple[list[str], Stat]:
        """Children names (unordered) and the parent's Stat."""
        children = reader.read_string_vector("children") or []
        return children, Stat.read(reader)


@dataclass(frozen=True, slots=True)
class SetWatches:
    """Re-register watches on a new connection; changes after ``relative_zxid`` fire at once."""

    relative_zxid: int
    data_watches: Sequence[str] = ()
    exist_watches: Sequence[str] = ()
    child_watches: Sequence[str] = ()
    opcode: ClassVar[OpCode] = OpCode.SET_WATCHES

    def encode(self) -> bytes:
        """The body: relative zxid and the three path vectors."""
        return (
            JuteWriter()
            .write_long(self.relative_zxid)
            .write_string_vector(list(self.data_watches))
            .write_string_vector(list(self.exist_watches))
            .write_string_vector(list(self.child_watches))
            .getvalue()
        )

    def parse_reply(self, reader: JuteReader) -> None:
        """A setWatches reply has no body."""
        return None


@dataclass(frozen=True, slots=True)
class Ping:
    """A heartbeat; it touches the session like any request (sent with xid -2)."""

    opcode: ClassVar[OpCode] = OpCode.PING

    def encode(self) -> bytes:
        """A ping has no body."""
        return b""

    def parse_reply(self, reader: JuteReader) -> None:
        """A ping reply has no body."""
        return None


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End the session now: its ephemeral nodes are deleted at once."""

    opcode: ClassVar[OpCode] = OpCode.CLOSE_SESSION

    def encode(self) -> bytes:
        """A close request has no body."""
        return b""

    def parse_reply(self, reader: JuteReader) -> None:
        """A close reply has no body."""
        return None


@dataclass(frozen=True, slots=True)
class AuthPacket:
    """addAuth (sent with xid -4): add ``scheme`` credentials (``digest``: ``user:password``)
    to this connection; ZooKeeper answers with xid -4 and closes the connection on failure."""

    scheme: str
    auth: bytes
    opcode: ClassVar[OpCode] = OpCode.AUTH

    def __repr__(self) -> str:  # never print the secret
        return f"AuthPacket(scheme={self.scheme!r})"

    def encode(self) -> bytes:
        """The body: type (0), scheme, auth bytes."""
        return JuteWriter().write_int(0).write_string(self.scheme).write_buffer(self.auth).getvalue()

    def parse_reply(self, reader: JuteReader) -> None:
        """An auth reply has no body."""
        return None


#: Permission bits of a ZooKeeper ACL.
PERM_READ, PERM_WRITE, PERM_CREATE, PERM_DELETE, PERM_ADMIN = 1, 2, 4, 8, 16
PERM_ALL = 31


def digest_id(user: str, password: str) -> str:
    """The ``digest`` ACL id of ``user:password``: ``user:base64(sha1(user:password))``."""
    raw = hashlib.sha1(f"{user}:{password}".encode()).digest()
    return f"{user}:{base64.b64encode(raw).decode()}"


def presence_acl(user: str, password: str) -> tuple[ACL, ...]:
    """The ACL of a presence node created with digest credentials: everything for its
    owner, read for everyone (watchers list and read presence without credentials)."""
    return (ACL(PERM_ALL, "digest", digest_id(user, password)), ACL(PERM_READ, "world", "anyone"))


def encode_request(xid: int, request: Request) -> bytes:
    """One framed request: header then body."""
    return frame(RequestHeader(xid, int(request.opcode)).encode() + request.encode())


# --------------------------------------------------------------------------- incoming events


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed (check :attr:`ConnectResponse.expired`)."""

    response: ConnectResponse


@dataclass(frozen=True, slots=True)
class Reply:
    """The reply to request ``xid``: ``result`` on success, else ``error``."""

    xid: int
    zxid: int
    request: Request
    result: Any = None
    error: ZooKeeperError | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """A ping was answered."""

    zxid: int


@dataclass(frozen=True, slots=True)
class WatchesRestored:
    """The setWatches request was answered (``err`` 0 on success)."""

    err: int


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The addAuth request was answered (``err`` 0 on success)."""

    err: int


@dataclass(frozen=True, slots=True)
class Notification:
    """A watch fired."""

    event: WatcherEvent


Incoming = Connected | Reply | Pong | WatchesRestored | AuthResult | Notification


@dataclass(slots=True)
class ClientConnection:
    """One TCP connection's protocol state, without I/O.

    Call :meth:`connect` once, then :meth:`send` for each request and :meth:`receive` with
    whatever bytes arrive; ``receive`` returns the :class:`Incoming` events in wire order.
    """

    max_frame: int = DEFAULT_MAX_FRAME
    _decoder: FrameDecoder = field(init=False)
    _pending: deque[tuple[int, Request]] = field(init=False, default_factory=deque)
    _handshake: str = field(init=False, default="idle")  # idle -> sent -> done

    def __post_init__(self) -> None:
        self._decoder = FrameDecoder(self.max_frame)

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered (pings and setWatches not counted)."""
        return len(self._pending)

    @property
    def handshake_done(self) -> bool:
        """True once the ConnectResponse arrived."""
        return self._handshake == "done"

    def connect(self, request: ConnectRequest) -> bytes:
        """The framed ConnectRequest; must be the first thing sent."""
        if self._handshake != "idle":
            raise LocalProtocolError("the connect request was already sent")
        self._handshake = "sent"
        return frame(request.encode())

    def send(self, xid: int, request: Request) -> bytes:
        """The framed request; replies to it are matched in order."""
        if self._handshake != "done":
            raise LocalProtocolError("requests may only be sent after the handshake")
        if xid >= 0:
            self._pending.append((xid, request))
        elif xid not in (Xid.PING, Xid.SET_WATCHES, Xid.AUTH):
            raise LocalProtocolError(f"xid {xid} is reserved")
        return encode_request(xid, request)

    def receive(self, data: bytes | bytearray) -> list[Incoming]:
        """Feed received bytes; return the events they complete."""
        events: list[Incoming] = []
        for payload in self._decoder.feed(data):
            events.append(self._frame(payload))
        return events

    def _frame(self, payload: bytes) -> Incoming:
        if self._handshake == "idle":
            raise RemoteProtocolError("the server sent data before the connect request")
        if self._handshake == "sent":
            self._handshake = "done"
            return Connected(ConnectResponse.decode(payload))
        reader = JuteReader(payload, "reply header")
        header = ReplyHeader.read(reader)
        if header.xid == Xid.NOTIFICATION:
            reader.what = "watch notification"
            event = WatcherEvent.read(reader)
            reader.expect_end()
            return Notification(event)
        if header.xid == Xid.PING:
            reader.what = "ping reply"
            reader.expect_end()
            return Pong(header.zxid)
        if header.xid == Xid.SET_WATCHES:
            return WatchesRestored(header.err)
        if header.xid == Xid.AUTH:
            return AuthResult(header.err)
        if not self._pending:
            raise RemoteProtocolError(f"reply with xid {header.xid} but no request is outstanding")
        xid, request = self._pending[0]
        if header.xid != xid:
            raise RemoteProtocolError(f"reply xid {header.xid} out of order (expected {xid})")
        self._pending.popleft()
        if header.err != ErrorCode.OK:
            # Error replies carry no body; ignore anything the server may add.
            path = getattr(request, "path", None)
            return Reply(xid, header.zxid, request, error=error_for(header.err, path))
        reader.what = f"reply to {request.opcode.name.lower()}"
        result = request.parse_reply(reader)
        reader.expect_end()
        return Reply(xid, header.zxid, request, result=result)
