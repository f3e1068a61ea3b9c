"""The lease protocol: typed requests, responses and notifications over pulse.codec messages.

Every message is one length-prefixed msgpack object (:mod:`pulse.codec`), a short array:

=============  ===========================================  ==============================
kind           layout                                       sent by
=============  ===========================================  ==============================
request        ``[0, xid, ack, op, args]``                  client
response       ``[1, xid, code, body]``                     server (one per request)
notification   ``[2, seq, kind, body]``                     server
=============  ===========================================  ==============================

* ``xid`` is chosen by the client (non-negative, unique per client); the response echoes it.
* ``ack`` is the highest notification ``seq`` the client has received on this session (0 for
  none); the server drops acknowledged notifications from the session's outbox.
* ``op`` names the operation and ``args`` is a map of its arguments (unknown keys are
  ignored, so old servers accept newer clients):

  - ``connect``: ``timeout`` (proposed, seconds), optionally ``session_id`` + ``password``
    to re-attach with ``last_seq``, ``supersedes`` (``[id, password]`` of an expired session
    this one replaces), ``max_message_size`` (the client's decoder limit);
  - ``ping``; ``register``: ``key``, ``data``; ``unregister``: ``key``; ``get``: ``key``;
    ``list``: ``prefix``; ``watch``: ``prefix``, ``watch_id`` (chosen by the client);
    ``watch_key``: ``key``, ``watch_id`` (one key instead of a prefix's children; added
    after the first release: a server that predates it answers ``bad_request`` "unknown
    operation" and keeps the connection, so a client can fall back to ``watch``);
    ``unwatch``: ``watch_id`` (either kind); ``close``.

* ``code`` is ``"ok"`` (``body`` is a map of results) or an error code from
  :class:`ErrorCode` (``body`` is a human-readable message).
* Notifications carry ``seq`` > 0 when they belong to the session's ordered, acknowledged
  stream (watch events: ``{"w": watch_id, "e": "online"|"offline"|"synced", "id": name,
  "d": data, "i": initial}``; for a ``watch_key`` watch ``id`` is the key's last segment and
  the snapshot is that one key if it exists) and ``seq`` = 0 for connection notices (``session``:
  ``{"state": "expired"|"closed"|"moved", "reason": ...}``; ``error``: ``{"code", "message"}``
  sent just before the server closes a connection).

Parsing functions raise :class:`BadRequest` / :class:`~pulse.errors.RemoteProtocolError`
saying exactly what was wrong; they never raise anything else on any decoded object.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pulse.errors import RemoteProtocolError

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

MAX_KEY_LENGTH: Final = 1024
MAX_ID: Final = 2**63 - 1
MAX_CLIENT_ID_LENGTH: Final = 128
MAX_TOKEN_LENGTH: Final = 1024


class BadRequest(RemoteProtocolError):
    """A request that decoded as msgpack but breaks the lease protocol.

    ``xid`` is the request's id when it could be read (the server then answers with an error
    response and keeps the connection); None means the envelope itself was unreadable.
    """

    def __init__(self, message: str, xid: int | None = None) -> None:
        super().__init__(message)
        self.xid = xid


#: How a server refuses an operation it does not know (a client that sends a newer one,
#: such as ``watch_key``, recognises the refusal by it).
UNKNOWN_OPERATION = "unknown operation"


class Op(enum.Enum):
    """Request operations."""

    CONNECT = "connect"
    PING = "ping"
    REGISTER = "register"
    UNREGISTER = "unregister"
    GET = "get"
    LIST = "list"
    WATCH = "watch"
    WATCH_KEY = "watch_key"
    UNWATCH = "unwatch"
    CLOSE = "close"


class ErrorCode(enum.Enum):
    """Error codes of responses and error notices."""

    BAD_REQUEST = "bad_request"
    NOT_CONNECTED = "not_connected"
    AUTH_FAILED = "auth_failed"
    SESSION_EXPIRED = "session_expired"
    SESSION_CLOSING = "session_closing"
    KEY_EXISTS = "key_exists"
    NOT_OWNER = "not_owner"
    TOO_MANY_SESSIONS = "too_many_sessions"
    TOO_MANY_KEYS = "too_many_keys"
    TOO_MANY_WATCHES = "too_many_watches"
    DATA_TOO_LARGE = "data_too_large"
    RATE_LIMITED = "rate_limited"
    RESPONSE_TOO_LARGE = "response_too_large"
    PROTOCOL_ERROR = "protocol_error"
    QUOTA_EXCEEDED = "quota_exceeded"
    FORBIDDEN = "forbidden"
    UNAUTHENTICATED = "unauthenticated"


# -- request bodies ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a session (``session_id`` None) or re-attach to one."""

    timeout: float
    session_id: int | None = None
    password: bytes = b""
    last_seq: int = 0
    supersedes: tuple[int, bytes] | None = None
    max_message_size: int | None = None
    client_id: str | None = None
    token: bytes = b""

    def __repr__(self) -> str:  # never print the secrets
        return (f"Connect(timeout={self.timeout!r}, session_id={self.session_id!r}, "
                f"client_id={self.client_id!r})")


@dataclass(frozen=True, slots=True)
class Ping:
    """Keep the session alive (every request does; this one does nothing else)."""


@dataclass(frozen=True, slots=True)
class Register:
    """Create (or, by its owner, update) the ephemeral key ``key``.

    With ``sequential`` the server appends its next sequence number (19 decimal digits) to
    ``key`` and answers with the created key and the number (``{"key": …, "sequence": n}``);
    sequence numbers grow across the server's whole life, restarts from its journal included.
    """

    key: str
    data: bytes = b""
    sequential: bool = False


@dataclass(frozen=True, slots=True)
class Unregister:
    """Delete a key this session registered (no error if it is already gone)."""

    key: str


@dataclass(frozen=True, slots=True)
class Get:
    """Read one key's data."""

    key: str


@dataclass(frozen=True, slots=True)
class ListChildren:
    """Read the direct children of a prefix."""

    prefix: str


@dataclass(frozen=True, slots=True)
class Watch:
    """Watch the direct children of ``prefix`` (persistent until unwatched or expiry)."""

    prefix: str
    watch_id: int


@dataclass(frozen=True, slots=True)
class WatchKey:
    """Watch one key (persistent until unwatched or expiry): ``online`` when it is
    registered, ``offline`` when it goes; the snapshot is the key itself if it exists.
    Watch ids are shared with :class:`Watch` and so are the per-session watch limits."""

    key: str
    watch_id: int


@dataclass(frozen=True, slots=True)
class Unwatch:
    """Stop the watch ``watch_id``."""

    watch_id: int


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End the session now; its keys vanish at once."""


RequestBody = (
    Connect | Ping | Register | Unregister | Get | ListChildren | Watch | WatchKey | Unwatch
    | CloseSession
)

_OP_OF: dict[type[Any], Op] = {
    Connect: Op.CONNECT,
    Ping: Op.PING,
    Register: Op.REGISTER,
    Unregister: Op.UNREGISTER,
    Get: Op.GET,
    ListChildren: Op.LIST,
    Watch: Op.WATCH,
    WatchKey: Op.WATCH_KEY,
    Unwatch: Op.UNWATCH,
    CloseSession: Op.CLOSE,
}


@dataclass(frozen=True, slots=True)
class Request:
    """One request: its id, the client's notification ack and the operation."""

    xid: int
    body: RequestBody
    ack: int = 0

    @property
    def op(self) -> Op:
        """The operation this request performs."""
        return _OP_OF[type(self.body)]


# -- server messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to request ``xid``: ``error`` None and ``result``, or an error."""

    xid: int
    result: Mapping[str, Any] = field(default_factory=dict)
    error: ErrorCode | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change under a watched prefix (``event`` online/offline) or the end of a snapshot
    (``event`` synced)."""

    seq: int
    watch_id: int
    event: str
    id: str = ""
    data: bytes = b""
    initial: bool = False


@dataclass(frozen=True, slots=True)
class SessionNotice:
    """The server ended this connection's session (``expired``/``closed``) or gave it to a
    newer connection (``moved``)."""

    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ErrorNotice:
    """The server is closing the connection because of ``code``."""

    code: ErrorCode
    message: str


ServerMessage = Response | WatchEvent | SessionNotice | ErrorNotice

WATCH_EVENTS: Final = frozenset({"online", "offline", "synced"})
SESSION_STATES: Final = frozenset({"expired", "closed", "moved"})


# -- validation helpers ------------------------------------------------------------------


def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a valid absolute key; raise :class:`ValueError` otherwise.

    Valid: a str starting with ``/``, at most 1024 characters, no empty, ``.`` or ``..``
    segment, no trailing ``/`` (except the root ``/`` itself, for prefixes), no NUL.
    """
    if not isinstance(key, str):
        raise ValueError(f"{what} must be a string, got {type(key).__name__}")
    if not key.startswith("/"):
        raise ValueError(f"{what} must start with '/': {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if "\x00" in key:
        raise ValueError(f"{what} contains a NUL character")
    if key == "/":
        return key
    for segment in key[1:].split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"{what} has an empty, '.' or '..' segment: {key!r}")
    return key


def parent_of(key: str) -> str:
    """The prefix whose direct child ``key`` is (``/a/b`` → ``/a``, ``/a`` → ``/``)."""
    parent = key.rsplit("/", 1)[0]
    return parent or "/"


def name_of(key: str) -> str:
    """The last segment of ``key``."""
    return key.rsplit("/", 1)[1]


def join(prefix: str, name: str) -> str:
    """The key of child ``name`` under ``prefix``."""
    return f"{prefix.rstrip('/')}/{name}"


def _int(value: object, what: str, xid: int | None, low: int = 0, high: int = MAX_ID) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{what} must be an integer in [{low}, {high}], got {value!r}", xid)
    return value


def _seconds(value: object, what: str, xid: int | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{what} must be a number of seconds, got {value!r}", xid)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadRequest(f"{what} must be finite and > 0, got {value!r}", xid)
    return seconds


def _bytes(value: object, what: str, xid: int | None) -> bytes:
    if not isinstance(value, bytes):
        raise BadRequest(f"{what} must be bytes (msgpack bin), got {type(value).__name__}", xid)
    return value


def _key(value: object, what: str, xid: int | None) -> str:
    try:
        return check_key(value, what)
    except ValueError as exc:
        raise BadRequest(str(exc), xid) from None


def _args_map(value: object, xid: int) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"request arguments must be a map, got {type(value).__name__}", xid)
    return value


# -- requests ----------------------------------------------------------------------------


def request_to_wire(request: Request) -> list[Any]:
    """The msgpack-ready array of ``request``."""
    body = request.body
    args: dict[str, Any]
    if isinstance(body, Connect):
        args = {"timeout": body.timeout}
        if body.session_id is not None:
            args.update(session_id=body.session_id, password=body.password, last_seq=body.last_seq)
        if body.supersedes is not None:
            args["supersedes"] = list(body.supersedes)
        if body.max_message_size is not None:
            args["max_message_size"] = body.max_message_size
        if body.client_id is not None:
            args["client_id"] = body.client_id
        if body.token:
            args["token"] = body.token
    elif isinstance(body, Register):
        args = {"key": body.key, "data": body.data}
        if body.sequential:
            args["sequential"] = True
    elif isinstance(body, Unregister | Get):
        args = {"key": body.key}
    elif isinstance(body, ListChildren):
        args = {"prefix": body.prefix}
    elif isinstance(body, Watch):
        args = {"prefix": body.prefix, "watch_id": body.watch_id}
    elif isinstance(body, WatchKey):
        args = {"key": body.key, "watch_id": body.watch_id}
    elif isinstance(body, Unwatch):
        args = {"watch_id": body.watch_id}
    else:
        args = {}
    return [REQUEST, request.xid, request.ack, request.op.value, args]


def _parse_connect(args: Mapping[str, Any], xid: int) -> Connect:
    timeout = _seconds(args.get("timeout"), "connect: timeout", xid)
    session_id = args.get("session_id")
    password = b""
    last_seq = 0
    if session_id is not None:
        session_id = _int(session_id, "connect: session_id", xid)
        password = _bytes(args.get("password"), "connect: password", xid)
        last_seq = _int(args.get("last_seq", 0), "connect: last_seq", xid)
    supersedes = None
    if args.get("supersedes") is not None:
        pair = args["supersedes"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadRequest("connect: supersedes must be [session_id, password]", xid)
        supersedes = (
            _int(pair[0], "connect: supersedes id", xid),
            _bytes(pair[1], "connect: supersedes password", xid),
        )
    limit = args.get("max_message_size")
    if limit is not None:
        limit = _int(limit, "connect: max_message_size", xid, low=1024, high=2**32 - 1)
    client_id = args.get("client_id")
    if client_id is not None:
        client_id = check_client_id(client_id, xid)
    token = _bytes(args.get("token", b""), "connect: token", xid)
    if len(token) > MAX_TOKEN_LENGTH:
        raise BadRequest(f"connect: token is longer than {MAX_TOKEN_LENGTH} bytes", xid)
    return Connect(timeout, session_id, password, last_seq, supersedes, limit, client_id, token)


def check_client_id(value: object, xid: int | None = None) -> str:
    """A client id is one key segment: 1–128 characters, no ``/``, NUL, ``.`` or ``..``."""
    if (not isinstance(value, str) or not 1 <= len(value) <= MAX_CLIENT_ID_LENGTH
            or "/" in value or "\x00" in value or value in (".", "..")):
        raise BadRequest(f"connect: client_id must be one key segment of 1-"
                         f"{MAX_CLIENT_ID_LENGTH} characters, got {value!r}", xid)
    return value


def _parse_body(op: Op, args: Mapping[str, Any], xid: int) -> RequestBody:
    if op is Op.CONNECT:
        return _parse_connect(args, xid)
    if op is Op.PING:
        return Ping()
    if op is Op.REGISTER:
        key = _key(args.get("key"), "register: key", xid)
        if key == "/":
            raise BadRequest("register: key must not be the root '/'", xid)
        sequential = args.get("sequential", False)
        if not isinstance(sequential, bool):
            raise BadRequest("register: sequential must be a boolean", xid)
        return Register(key, _bytes(args.get("data", b""), "register: data", xid), sequential)
    if op is Op.UNREGISTER:
        return Unregister(_key(args.get("key"), "unregister: key", xid))
    if op is Op.GET:
        return Get(_key(args.get("key"), "get: key", xid))
    if op is Op.LIST:
        return ListChildren(_key(args.get("prefix"), "list: prefix", xid))
    if op is Op.WATCH:
        return Watch(
            _key(args.get("prefix"), "watch: prefix", xid),
            _int(args.get("watch_id"), "watch: watch_id", xid),
        )
    if op is Op.WATCH_KEY:
        key = _key(args.get("key"), "watch_key: key", xid)
        if key == "/":
            raise BadRequest("watch_key: key must not be the root '/'", xid)
        return WatchKey(key, _int(args.get("watch_id"), "watch_key: watch_id", xid))
    if op is Op.UNWATCH:
        return Unwatch(_int(args.get("watch_id"), "unwatch: watch_id", xid))
    return CloseSession()


_OPS_BY_NAME = {op.value: op for op in Op}


def parse_request(obj: object) -> Request:
    """Turn a decoded message into a :class:`Request`.

    Raises :class:`BadRequest` with ``xid`` None when the envelope is unreadable (the
    connection must be closed) and with the request's ``xid`` when only its operation or
    arguments are wrong (the server answers with an error and carries on).
    """
    if not isinstance(obj, list) or len(obj) != 5:
        raise BadRequest("a request must be an array [0, xid, ack, op, args]")
    kind, xid, ack, op_name, args = obj
    if isinstance(kind, bool) or not isinstance(kind, int) or kind != REQUEST:
        raise BadRequest(f"expected a request (kind 0), got kind {kind!r}")
    xid = _int(xid, "xid", None)
    ack = _int(ack, "ack", xid)
    op = _OPS_BY_NAME.get(op_name) if isinstance(op_name, str) else None
    if op is None:
        raise BadRequest(f"{UNKNOWN_OPERATION} {op_name!r}", xid)
    return Request(xid, _parse_body(op, _args_map(args, xid), xid), ack)


# -- the renewal fast path -----------------------------------------------------------------
# A session's steady state is one ``ping`` per few seconds and its ``ok`` answer. The server
# recognises that request from its bytes and writes a pre-built answer, without msgpack,
# dataclasses or dicts. Both functions are defined by the general path: a message either
# parses here to exactly what decoding and :func:`parse_request` make of it, or it is left to
# them (None); the answer is byte for byte what :func:`response_to_wire` and
# :func:`pulse.codec.encode_message` produce (both checked by the codec tests).

_PING_OP: Final = b"\xa4ping\x80"  # "ping", then the empty map of arguments
_PING_TAIL: Final = len(_PING_OP)
#: The longest ping message: prefix, array and kind, two uint64 (9 bytes each), the op.
MAX_PING_MESSAGE: Final = 4 + 2 + 9 + 9 + _PING_TAIL


_HEAD: Final = struct.Struct(">IBBB")  # length prefix, array of 5, kind, first byte of xid
#: msgpack's unsigned integer formats after the first byte (uint8 … uint64), by that byte.
_UINTS: Final = {0xCC: struct.Struct(">B"), 0xCD: struct.Struct(">H"),
                 0xCE: struct.Struct(">I"), 0xCF: struct.Struct(">Q")}


def parse_ping_message(data: bytes | bytearray, size: int) -> tuple[int, int] | None:
    """``(xid, ack)`` when the first ``size`` bytes of ``data`` are exactly one framed
    ``ping`` request (length prefix included) with unsigned msgpack integers and no
    arguments; None for anything else, which the general decoder then handles."""
    if not 14 <= size <= MAX_PING_MESSAGE or len(data) < size:
        return None
    length, array, kind, first = _HEAD.unpack_from(data)
    if (length != size - 4 or array != 0x95 or kind != REQUEST
            or not data.endswith(_PING_OP, 0, size)):
        return None
    ack_at = size - _PING_TAIL - 1  # where a one-byte ack would be
    if first < 0x80:
        xid, pos = first, 7
    else:
        unpacker = _UINTS.get(first)
        if unpacker is None or 7 + unpacker.size > ack_at:
            return None
        xid, pos = unpacker.unpack_from(data, 7)[0], 7 + unpacker.size
    if pos == ack_at:
        ack = data[pos]
        if ack >= 0x80:
            return None
    else:
        unpacker = _UINTS.get(data[pos])
        if unpacker is None or pos + 1 + unpacker.size != size - _PING_TAIL:
            return None
        ack = unpacker.unpack_from(data, pos + 1)[0]
    if xid > MAX_ID or ack > MAX_ID:
        return None
    return xid, ack


_OK_EMPTY: Final = b"\xa2ok\x80"  # "ok", then the empty map of results
_REPLY_FIX: Final = struct.Struct(">IBBB")
_REPLY_U8: Final = struct.Struct(">IBBBB")
_REPLY_U16: Final = struct.Struct(">IBBBH")
_REPLY_U32: Final = struct.Struct(">IBBBI")
_REPLY_U64: Final = struct.Struct(">IBBBQ")


def ping_reply(xid: int) -> bytes:
    """The framed ``ok`` response with an empty result to request ``xid`` (0 … MAX_ID)."""
    if xid < 0x80:
        return _REPLY_FIX.pack(7, 0x94, RESPONSE, xid) + _OK_EMPTY
    if xid < 0x100:
        return _REPLY_U8.pack(8, 0x94, RESPONSE, 0xCC, xid) + _OK_EMPTY
    if xid < 0x10000:
        return _REPLY_U16.pack(9, 0x94, RESPONSE, 0xCD, xid) + _OK_EMPTY
    if xid < 0x100000000:
        return _REPLY_U32.pack(11, 0x94, RESPONSE, 0xCE, xid) + _OK_EMPTY
    return _REPLY_U64.pack(15, 0x94, RESPONSE, 0xCF, xid) + _OK_EMPTY


# -- server messages ---------------------------------------------------------------------


def response_to_wire(response: Response) -> list[Any]:
    """The msgpack-ready array of ``response``."""
    if response.error is None:
        return [RESPONSE, response.xid, "ok", dict(response.result)]
    return [RESPONSE, response.xid, response.error.value, response.message]


def watch_event_to_wire(event: WatchEvent) -> list[Any]:
    """The msgpack-ready array of a watch notification."""
    body = {"w": event.watch_id, "e": event.event, "id": event.id, "d": event.data,
            "i": event.initial}
    return [NOTIFICATION, event.seq, "watch", body]


def notice_to_wire(notice: SessionNotice | ErrorNotice) -> list[Any]:
    """The msgpack-ready array of a connection notice."""
    if isinstance(notice, SessionNotice):
        return [NOTIFICATION, 0, "session", {"state": notice.state, "reason": notice.reason}]
    return [NOTIFICATION, 0, "error", {"code": notice.code.value, "message": notice.message}]


def _server_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise RemoteProtocolError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _server_str(body: Mapping[str, Any], key: str, what: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{what} must be a string, got {type(value).__name__}")
    return value


_CODES_BY_NAME = {code.value: code for code in ErrorCode}


def _parse_notification(seq: object, kind: object, body: object) -> ServerMessage:
    seq = _server_int(seq, "notification seq")
    if not isinstance(body, dict):
        raise RemoteProtocolError("a notification body must be a map")
    if kind == "watch":
        if seq == 0:
            raise RemoteProtocolError("a watch notification must have seq > 0")
        event = _server_str(body, "e", "watch event")
        if event not in WATCH_EVENTS:
            raise RemoteProtocolError(f"unknown watch event {event!r}")
        data = body.get("d", b"")
        if not isinstance(data, bytes):
            raise RemoteProtocolError("watch event data must be bytes")
        initial = body.get("i", False)
        if not isinstance(initial, bool):
            raise RemoteProtocolError("watch event 'initial' flag must be a boolean")
        return WatchEvent(seq, _server_int(body.get("w"), "watch id"), event,
                          _server_str(body, "id", "watch event id"), data, initial)
    if kind == "session":
        state = _server_str(body, "state", "session state")
        if state not in SESSION_STATES:
            raise RemoteProtocolError(f"unknown session state {state!r}")
        return SessionNotice(state, _server_str(body, "reason", "session reason"))
    if kind == "error":
        code = _CODES_BY_NAME.get(_server_str(body, "code", "error code"))
        if code is None:
            raise RemoteProtocolError(f"unknown error code {body.get('code')!r}")
        return ErrorNotice(code, _server_str(body, "message", "error message"))
    raise RemoteProtocolError(f"unknown notification kind {kind!r}")


def parse_server_message(obj: object) -> ServerMessage:
    """Turn a decoded message from the server into a typed message.

    Raises :class:`~pulse.errors.RemoteProtocolError` on anything malformed.
    """
    if not isinstance(obj, list) or len(obj) != 4:
        raise RemoteProtocolError("a server message must be an array of 4 items")
    kind = obj[0]
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in (RESPONSE, NOTIFICATION):
        raise RemoteProtocolError(f"unknown server message kind {kind!r}")
    if kind == NOTIFICATION:
        return _parse_notification(obj[1], obj[2], obj[3])
    xid = _server_int(obj[1], "response xid")
    code_name, body = obj[2], obj[3]
    if code_name == "ok":
        if not isinstance(body, dict):
            raise RemoteProtocolError("an ok response body must be a map")
        return Response(xid, body)
    code = _CODES_BY_NAME.get(code_name) if isinstance(code_name, str) else None
    if code is None:
        raise RemoteProtocolError(f"unknown response code {code_name!r}")
    if not isinstance(body, str):
        raise RemoteProtocolError("an error response body must be a string")
    return Response(xid, error=code, message=body)
