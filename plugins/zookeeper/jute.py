"""Jute, ZooKeeper's binary record encoding, and the records every session needs.

Rules this module keeps:

* Every integer is big-endian and signed: ``int`` is 4 bytes, ``long`` 8 bytes, ``bool``
  one byte (0 or 1).
* ``buffer`` and ``ustring`` are a 4-byte length followed by that many bytes; length -1
  means *null* (decoded as ``None``). Strings are UTF-8.
* ``vector<T>`` is a 4-byte count (-1 = null) followed by the elements.
* Every message on the wire is a frame: a 4-byte length, then the record(s).

Decoding is done by :class:`JuteReader`, which never reads past its buffer: anything short,
negative, oversized or not UTF-8 raises :class:`pulse.errors.RemoteProtocolError` saying
what was wrong and where. Encoding values out of range raises
:class:`pulse.errors.LocalProtocolError` (a bug on this side). The layouts follow
ZooKeeper's ``zookeeper.jute``; the tests pin them to exact bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pulse.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

_INT = struct.Struct(">i")
_LONG = struct.Struct(">q")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

#: ZooKeeper's default ``jute.maxbuffer``: the largest frame a client accepts.
DEFAULT_MAX_FRAME = 0xFFFFF

#: Length of a session password as ZooKeeper issues it.
PASSWORD_LENGTH = 16


class JuteWriter:
    """Accumulates jute-encoded fields; :meth:`getvalue` returns the bytes."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write_int(self, value: int) -> JuteWriter:
        """Append a 4-byte signed int."""
        if not _INT_MIN <= value <= _INT_MAX:
            raise LocalProtocolError(f"int out of range: {value}")
        self._parts.append(_INT.pack(value))
        return self

    def write_long(self, value: int) -> JuteWriter:
        """Append an 8-byte signed long."""
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise LocalProtocolError(f"long out of range: {value}")
        self._parts.append(_LONG.pack(value))
        return self

    def write_bool(self, value: bool) -> JuteWriter:
        """Append a one-byte boolean."""
        self._parts.append(b"\x01" if value else b"\x00")
        return self

    def write_buffer(self, value: bytes | None) -> JuteWriter:
        """Append a length-prefixed byte string (None is written as length -1)."""
        if value is None:
            return self.write_int(-1)
        self.write_int(len(value))
        self._parts.append(bytes(value))
        return self

    def write_string(self, value: str | None) -> JuteWriter:
        """Append a length-prefixed UTF-8 string (None is written as length -1)."""
        return self.write_buffer(None if value is None else value.encode("utf-8"))

    def write_string_vector(self, values: Sequence[str] | None) -> JuteWriter:
        """Append a vector of strings (None is written as count -1)."""
        if values is None:
            return self.write_int(-1)
        self.write_int(len(values))
        for value in values:
            self.write_string(value)
        return self

    def getvalue(self) -> bytes:
        """Everything written so far."""
        return b"".join(self._parts)


class JuteReader:
    """Reads jute fields from one complete record buffer, with bounds checks.

    ``what`` names the record in error messages (``"ConnectResponse"``, ``"reply to
    getData"``) so a malformed frame can be traced to the field that broke.
    """

    __slots__ = ("_data", "_offset", "what")

    def __init__(self, data: bytes, what: str = "record") -> None:
        self._data = memoryview(bytes(data))
        self._offset = 0
        self.what = what

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._offset

    def _take(self, size: int, field: str) -> memoryview:
        if size > self.remaining:
            raise RemoteProtocolError(
                f"truncated {self.what}: {field} needs {size} bytes at offset {self._offset}, "
                f"only {self.remaining} left"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def read_int(self, field: str = "int") -> int:
        """Read a 4-byte signed int."""
        value: int = _INT.unpack(self._take(4, field))[0]
        return value

    def read_long(self, field: str = "long") -> int:
        """Read an 8-byte signed long."""
        value: int = _LONG.unpack(self._take(8, field))[0]
        return value

    def read_bool(self, field: str = "bool") -> bool:
        """Read a one-byte boolean; anything but 0 or 1 is malformed."""
        byte = self._take(1, field)[0]
        if byte not in (0, 1):
            raise RemoteProtocolError(f"bad {self.what}: {field} is {byte}, not a boolean 0/1")
        return byte == 1

    def read_buffer(self, field: str = "buffer") -> bytes | None:
        """Read a length-prefixed byte string (length -1 is None)."""
        length = self.read_int(f"{field} length")
        if length == -1:
            return None
        if length < 0:
            raise RemoteProtocolError(f"bad {self.what}: {field} has negative length {length}")
        return bytes(self._take(length, field))

    def read_string(self, field: str = "string") -> str | None:
        """Read a length-prefixed UTF-8 string (length -1 is None)."""
        raw = self.read_buffer(field)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"bad {self.what}: {field} is not UTF-8 ({exc})") from None

    def read_string_vector(self, field: str = "vector") -> list[str] | None:
        """Read a vector of strings (count -1 is None)."""
        count = self.read_int(f"{field} count")
        if count == -1:
            return None
        # Each element needs at least its 4-byte length: refuse counts the buffer cannot hold
        # before allocating anything.
        if count < 0 or count * 4 > self.remaining:
            raise RemoteProtocolError(
                f"bad {self.what}: {field} count {count} does not fit in {self.remaining} bytes"
            )
        items: list[str] = []
        for index in range(count):
            item = self.read_string(f"{field}[{index}]")
            if item is None:
                raise RemoteProtocolError(f"bad {self.what}: {field}[{index}] is null")
            items.append(item)
        return items

    def expect_end(self) -> None:
        """Raise if bytes are left over after the record."""
        if self.remaining:
            raise RemoteProtocolError(
                f"bad {self.what}: {self.remaining} unexpected trailing bytes"
            )


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte length, as every ZooKeeper message is sent."""
    return _INT.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into length-prefixed frames (sans-IO: :meth:`feed` + results).

    ``max_frame`` bounds one frame's declared length (ZooKeeper's ``jute.maxbuffer``); a
    larger or negative length raises before any of it is buffered.
    """

    __slots__ = ("_buffer", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame <= 0:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add received bytes; return every frame now complete, in order."""
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= 4:
            length: int = _INT.unpack_from(self._buffer, 0)[0]
            if length < 0:
                raise RemoteProtocolError(f"negative frame length {length}")
            if length > self.max_frame:
                raise FrameTooLarge(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame}"
                )
            if len(self._buffer) < 4 + length:
                break
            frames.append(bytes(self._buffer[4 : 4 + length]))
            del self._buffer[: 4 + length]
        return frames


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """The first message of a connection: start a session, or re-attach to one.

    ``session_id`` 0 with an all-zero password asks for a new session; a non-zero id with
    its password re-attaches. ``last_zxid_seen`` keeps a client from landing on a server
    that is behind what it already saw. ``timeout_ms`` is the proposed session timeout.
    """

    timeout_ms: int
    session_id: int = 0
    password: bytes = bytes(PASSWORD_LENGTH)
    last_zxid_seen: int = 0
    protocol_version: int = 0
    read_only: bool = False

    def encode(self) -> bytes:
        """The record's bytes (without the frame length)."""
        return (
            JuteWriter()
            .write_int(self.protocol_version)
            .write_long(self.last_zxid_seen)
            .write_int(self.timeout_ms)
            .write_long(self.session_id)
            .write_buffer(self.password)
            .write_bool(self.read_only)
            .getvalue()
        )

    @classmethod
    def decode(cls, data: bytes) -> ConnectRequest:
        """Parse a ConnectRequest (the read-only flag is optional, as in old clients)."""
        reader = JuteReader(data, "ConnectRequest")
        version = reader.read_int("protocolVersion")
        last_zxid = reader.read_long("lastZxidSeen")
        timeout = reader.read_int("timeOut")
        session_id = reader.read_long("sessionId")
        password = reader.read_buffer("passwd") or b""
        read_only = reader.read_bool("readOnly") if reader.remaining else False
        reader.expect_end()
        return cls(timeout, session_id, password, last_zxid, version, read_only)


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """The server's answer to a :class:`ConnectRequest`.

    ``timeout_ms`` is the negotiated session timeout; **0 means the session is expired**
    (or the password was wrong) and the server closes the connection.
    """

    timeout_ms: int
    session_id: int
    password: bytes
    protocol_version: int = 0
    read_only: bool = False

    @property
    def expired(self) -> bool:
        """True when the server refused to (re)attach the session."""
        return self.timeout_ms <= 0

    def encode(self) -> bytes:
        """The record's bytes (without the frame length)."""
        return (
            JuteWriter()
            .write_int(self.protocol_version)
            .write_int(self.timeout_ms)
            .write_long(self.session_id)
            .write_buffer(self.password)
            .write_bool(self.read_only)
            .getvalue()
        )

    @classmethod
    def decode(cls, data: bytes) -> ConnectResponse:
        """Parse a ConnectResponse (the trailing read-only flag is optional)."""
        reader = JuteReader(data, "ConnectResponse")
        version = reader.read_int("protocolVersion")
        timeout = reader.read_int("timeOut")
        session_id = reader.read_long("sessionId")
        password = reader.read_buffer("passwd") or b""
        read_only = reader.read_bool("readOnly") if reader.remaining else False
        reader.expect_end()
        return cls(timeout, session_id, password, version, read_only)


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """Precedes every request after the handshake: the request id and the opcode."""

    xid: int
    opcode: int

    def encode(self) -> bytes:
        """The header's 8 bytes."""
        return JuteWriter().write_int(self.xid).write_int(self.opcode).getvalue()

    @classmethod
    def read(cls, reader: JuteReader) -> RequestHeader:
        """Read a header from ``reader``."""
        return cls(reader.read_int("xid"), reader.read_int("type"))


@dataclass(frozen=True, slots=True)
class ReplyHeader:
    """Precedes every reply: the request id it answers, the zxid, and an error code."""

    xid: int
    zxid: int
    err: int

    def encode(self) -> bytes:
        """The header's 16 bytes."""
        return (
            JuteWriter().write_int(self.xid).write_long(self.zxid).write_int(self.err).getvalue()
        )

    @classmethod
    def read(cls, reader: JuteReader) -> ReplyHeader:
        """Read a header from ``reader``."""
        return cls(reader.read_int("xid"), reader.read_long("zxid"), reader.read_int("err"))


@dataclass(frozen=True, slots=True)
class Stat:
    """A znode's metadata. ``ephemeral_owner`` is the owning session id (0: persistent)."""

    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    pzxid: int

    def write(self, writer: JuteWriter) -> None:
        """Append the 68-byte record."""
        for value in (self.czxid, self.mzxid, self.ctime, self.mtime):
            writer.write_long(value)
        for value in (self.version, self.cversion, self.aversion):
            writer.write_int(value)
        writer.write_long(self.ephemeral_owner)
        writer.write_int(self.data_length).write_int(self.num_children)
        writer.write_long(self.pzxid)

    @classmethod
    def read(cls, reader: JuteReader) -> Stat:
        """Read a Stat record from ``reader``."""
        return cls(
            czxid=reader.read_long("czxid"),
            mzxid=reader.read_long("mzxid"),
            ctime=reader.read_long("ctime"),
            mtime=reader.read_long("mtime"),
            version=reader.read_int("version"),
            cversion=reader.read_int("cversion"),
            aversion=reader.read_int("aversion"),
            ephemeral_owner=reader.read_long("ephemeralOwner"),
            data_length=reader.read_int("dataLength"),
            num_children=reader.read_int("numChildren"),
            pzxid=reader.read_long("pzxid"),
        )


@dataclass(frozen=True, slots=True)
class ACL:
    """One access-control entry: permission bits for an identity ``scheme:id``."""

    perms: int
    scheme: str
    id: str

    def write(self, writer: JuteWriter) -> None:
        """Append the record."""
        writer.write_int(self.perms).write_string(self.scheme).write_string(self.id)


#: ``world:anyone`` with every permission: ZooKeeper's OPEN_ACL_UNSAFE.
OPEN_ACL_UNSAFE = (ACL(31, "world", "anyone"),)


@dataclass(frozen=True, slots=True)
class WatcherEvent:
    """A watch notification (sent with xid -1): event type, keeper state and path."""

    type: int
    state: int
    path: str

    def encode(self) -> bytes:
        """The record's bytes."""
        return (
            JuteWriter().write_int(self.type).write_int(self.state).write_string(self.path)
            .getvalue()
        )

    @classmethod
    def read(cls, reader: JuteReader) -> WatcherEvent:
        """Read a WatcherEvent from ``reader``."""
        event_type = reader.read_int("type")
        state = reader.read_int("state")
        path = reader.read_string("path")
        return cls(event_type, state, path or "")
