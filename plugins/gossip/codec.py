"""HashiCorp memberlist's wire format (protocol versions 2 to 5), both directions.

Layout (from memberlist's ``net.go`` and ``util.go``):

* **Packet (UDP).** One message is a type byte followed by a msgpack map whose keys are the
  Go struct field names (``SeqNo``, ``Node``, ``SourceAddr``...). Go's msgpack handle is the
  old-spec one: strings and byte slices are both *raw* (``fixstr``/``str16``/``str32``, never
  ``str8`` or ``bin``), so we encode that way and decode either. ``Vsn`` is a Go ``[]uint8``
  and therefore travels as raw bytes.
* **Compound** (type 7): a count byte, one big-endian ``uint16`` length per part, then the
  parts. Parts cut short by the end of the packet are dropped, as memberlist does.
* **Compress** (type 9): a msgpack map ``{Algo: 0, Buf: <LZW>}`` whose payload is another
  message; LZW is Go's ``compress/lzw`` (LSB, literal width 8), see :mod:`.lzw`.
* **CRC** (type 12, protocol 5): the type byte, a big-endian CRC-32 (IEEE) of the rest, the rest.
* **User** (type 8): the payload follows the type byte as is.
* **Encrypt** (type 10): refused with :class:`EncryptionNotSupported` (no keyring support).
* **Stream (TCP).** Push-pull (type 6): a header map ``{Nodes, UserStateLen, Join}``, then
  ``Nodes`` state maps, then ``UserStateLen`` bytes of user state. A stream may be compressed
  (type 9 wrapping the whole stream) and may instead carry a ping (TCP fallback probe), an
  ack, an error (type 13, ``{Error}``) or a user message (``{UserMsgLen}`` then the bytes).

Serf keeps its tags in the node metadata: a ``0xff`` magic byte and a msgpack map of strings
(without the magic byte, the whole metadata is the legacy ``role`` tag).

Decoding untrusted bytes raises only :class:`GossipProtocolError` (a
:class:`~pulse.errors.RemoteProtocolError`) and its subclasses, and buffers at most the
configured number of bytes.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from pulse._core.swim_messages import (
    META_MAX_SIZE,
    Ack,
    Addr,
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
    StreamMessage,
    Suspect,
    UserMsg,
)
from pulse.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

from . import lzw

__all__ = [
    "MAX_PROTOCOL_VERSION",
    "MIN_PROTOCOL_VERSION",
    "EncryptionNotSupported",
    "GossipProtocolError",
    "GossipTooLarge",
    "MessageType",
    "StreamDecoder",
    "decode_packet",
    "decode_serf_tags",
    "decode_serf_tags_raw",
    "decode_stream",
    "encode_message",
    "encode_packet",
    "encode_serf_tags",
    "encode_stream",
    "is_compressed_packet",
]

MIN_PROTOCOL_VERSION = 2
MAX_PROTOCOL_VERSION = 5
#: memberlist refuses push-pull states larger than this (``maxPushStateBytes``).
MAX_STREAM_BYTES = 20 * 1024 * 1024
#: Serf's magic byte in front of msgpack-encoded tags.
SERF_TAG_MAGIC = 0xFF
#: How deeply compound/compress wrappers may nest inside one packet.
MAX_NESTING = 4


class MessageType(enum.IntEnum):
    """memberlist's ``messageType`` byte."""

    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13


class GossipProtocolError(RemoteProtocolError):
    """Bytes that memberlist's wire format does not allow (or that we refuse)."""


class EncryptionNotSupported(GossipProtocolError):
    """The peer sent an encrypted message; pulse does not implement memberlist's keyring."""


class GossipTooLarge(GossipProtocolError, FrameTooLarge):
    """A packet, stream or decompressed payload exceeded the configured limit."""


# ---------------------------------------------------------------------------- msgpack


def _pack(obj: Any) -> bytes:
    # Old-spec msgpack, as Go's codec.MsgpackHandle writes it: bytes and str both as raw.
    return msgpack.packb(obj, use_bin_type=False)  # type: ignore[no-any-return]


def _unpacker(max_bytes: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=True,
        strict_map_key=False,
        max_buffer_size=max_bytes,
        max_str_len=max_bytes,
        max_bin_len=max_bytes,
        max_array_len=65536,
        max_map_len=4096,
        max_ext_len=0,
    )


def _unpack_one(buf: bytes, max_bytes: int = MAX_STREAM_BYTES) -> tuple[Any, int]:
    """Decode the first msgpack object of ``buf``; return it and the bytes it used."""
    unpacker = _unpacker(max(len(buf), 1))
    try:
        unpacker.feed(buf)
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise GossipProtocolError("truncated msgpack body") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise GossipProtocolError(f"malformed msgpack body: {exc}") from None
    return obj, unpacker.tell()


def _fields(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise GossipProtocolError(f"{what}: expected a map, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            try:
                key = key.decode("ascii")
            except UnicodeDecodeError:
                continue
        if isinstance(key, str):
            out[key] = value
    return out


def _uint(f: Mapping[str, Any], key: str, bits: int, what: str, default: int = 0) -> int:
    value = f.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise GossipProtocolError(f"{what}.{key}: expected a {bits}-bit unsigned integer, got {value!r}")
    return value


def _int(f: Mapping[str, Any], key: str, what: str) -> int:
    value = f.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value < (1 << 63):
        raise GossipProtocolError(f"{what}.{key}: expected an integer, got {value!r}")
    return value


def _bool(f: Mapping[str, Any], key: str, what: str) -> bool:
    value = f.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise GossipProtocolError(f"{what}.{key}: expected a boolean, got {value!r}")
    return value


def _bytes(f: Mapping[str, Any], key: str, what: str) -> bytes:
    value = f.get(key)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256
                                       for v in value):
        return bytes(value)
    raise GossipProtocolError(f"{what}.{key}: expected bytes, got {type(value).__name__}")


def _text(f: Mapping[str, Any], key: str, what: str) -> str:
    raw = _bytes(f, key, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GossipProtocolError(f"{what}.{key}: not valid UTF-8") from None


def _ip_text(raw: bytes, what: str) -> str:
    if len(raw) not in (4, 16):
        raise GossipProtocolError(f"{what}: an IP address is 4 or 16 bytes, got {len(raw)}")
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _addr(f: Mapping[str, Any], ip_key: str, port_key: str, what: str) -> Addr | None:
    raw = _bytes(f, ip_key, what)
    port = _uint(f, port_key, 16, what)
    if not raw:
        return None
    return (_ip_text(raw, f"{what}.{ip_key}"), port)


def _ip_bytes(host: str) -> bytes:
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        raise LocalProtocolError(f"memberlist carries IP addresses only, not {host!r}") from None


def _vsn(f: Mapping[str, Any], what: str) -> tuple[int, ...]:
    raw = _bytes(f, "Vsn", what)
    return tuple(raw)


# ---------------------------------------------------------------------------- bodies


def _body(msg: PacketMessage | ErrResp) -> tuple[MessageType, dict[str, Any]]:
    match msg:
        case Ping():
            ping: dict[str, Any] = {"SeqNo": msg.seq_no, "Node": msg.node}
            if msg.source_addr is not None:  # omitempty in Go
                ping["SourceAddr"] = _ip_bytes(msg.source_addr[0])
                if msg.source_addr[1]:
                    ping["SourcePort"] = msg.source_addr[1]
            if msg.source_node:
                ping["SourceNode"] = msg.source_node
            return MessageType.PING, ping
        case IndirectPing():
            ind: dict[str, Any] = {"SeqNo": msg.seq_no, "Target": _ip_bytes(msg.target[0]),
                                   "Port": msg.target[1], "Node": msg.node, "Nack": msg.nack}
            if msg.source_addr is not None:
                ind["SourceAddr"] = _ip_bytes(msg.source_addr[0])
                if msg.source_addr[1]:
                    ind["SourcePort"] = msg.source_addr[1]
            if msg.source_node:
                ind["SourceNode"] = msg.source_node
            return MessageType.INDIRECT_PING, ind
        case Ack():
            return MessageType.ACK, {"SeqNo": msg.seq_no, "Payload": msg.payload or None}
        case Nack():
            return MessageType.NACK, {"SeqNo": msg.seq_no}
        case Suspect():
            return MessageType.SUSPECT, {"Incarnation": msg.incarnation, "Node": msg.node,
                                         "From": msg.from_node}
        case Alive():
            return MessageType.ALIVE, {"Incarnation": msg.incarnation, "Node": msg.node,
                                       "Addr": _ip_bytes(msg.addr[0]), "Port": msg.addr[1],
                                       "Meta": msg.meta or None, "Vsn": bytes(msg.vsn) or None}
        case Dead():
            return MessageType.DEAD, {"Incarnation": msg.incarnation, "Node": msg.node,
                                      "From": msg.from_node}
        case ErrResp():
            return MessageType.ERR, {"Error": msg.error}
    raise LocalProtocolError(f"cannot encode {msg!r} as a single memberlist message")


def encode_message(msg: PacketMessage | ErrResp) -> bytes:
    """One message as memberlist frames it: type byte + msgpack body (user: type + payload)."""
    if isinstance(msg, UserMsg):
        return bytes((MessageType.USER,)) + msg.payload
    kind, body = _body(msg)
    return bytes((kind,)) + _pack(body)


def _decode_body(kind: int, body: bytes) -> PacketMessage:
    if kind == MessageType.USER:
        return UserMsg(bytes(body))
    obj, _ = _unpack_one(body)
    what = MessageType(kind).name.lower() if kind in MessageType._value2member_map_ else str(kind)
    f = _fields(obj, what)
    if kind == MessageType.PING:
        return Ping(_uint(f, "SeqNo", 32, what), _text(f, "Node", what),
                    _addr(f, "SourceAddr", "SourcePort", what), _text(f, "SourceNode", what))
    if kind == MessageType.INDIRECT_PING:
        target = _addr(f, "Target", "Port", what)
        if target is None:
            raise GossipProtocolError("indirect ping without a target address")
        return IndirectPing(_uint(f, "SeqNo", 32, what), target, _text(f, "Node", what),
                            _bool(f, "Nack", what), _addr(f, "SourceAddr", "SourcePort", what),
                            _text(f, "SourceNode", what))
    if kind == MessageType.ACK:
        return Ack(_uint(f, "SeqNo", 32, what), _bytes(f, "Payload", what))
    if kind == MessageType.NACK:
        return Nack(_uint(f, "SeqNo", 32, what))
    if kind == MessageType.SUSPECT:
        return Suspect(_uint(f, "Incarnation", 32, what), _text(f, "Node", what), _text(f, "From", what))
    if kind == MessageType.DEAD:
        return Dead(_uint(f, "Incarnation", 32, what), _text(f, "Node", what), _text(f, "From", what))
    if kind == MessageType.ALIVE:
        addr = _addr(f, "Addr", "Port", what)
        if addr is None:
            raise GossipProtocolError("alive message without an address")
        meta = _bytes(f, "Meta", what)
        if len(meta) > META_MAX_SIZE:
            raise GossipProtocolError(f"node meta is {len(meta)} bytes, the limit is {META_MAX_SIZE}")
        return Alive(_uint(f, "Incarnation", 32, what), _text(f, "Node", what), addr, meta, _vsn(f, what))
    raise GossipProtocolError(f"message type {kind} cannot travel in a packet")  # pragma: no cover


_PACKET_BODIES = frozenset({MessageType.PING, MessageType.INDIRECT_PING, MessageType.ACK, MessageType.NACK,
                            MessageType.SUSPECT, MessageType.ALIVE, MessageType.DEAD, MessageType.USER})


# ---------------------------------------------------------------------------- packets


def decode_packet(data: bytes, *, max_size: int = 65536, max_decompressed: int = 1 << 20,
                  require_crc: bool = False) -> list[PacketMessage]:
    """Every message in one UDP packet, unwrapping CRC, compound and compress layers.

    ``max_size`` bounds the packet, ``max_decompressed`` every LZW payload inside it.
    """
    if len(data) > max_size:
        raise GossipTooLarge(f"packet of {len(data)} bytes exceeds {max_size}")
    data = bytes(data)
    if len(data) >= 5 and data[0] == MessageType.HAS_CRC:
        (expected,) = struct.unpack_from(">I", data, 1)
        if zlib.crc32(data[5:]) != expected:
            raise GossipProtocolError("packet CRC mismatch")
        data = data[5:]
    elif require_crc:
        raise GossipProtocolError("packet without the CRC header")
    out: list[PacketMessage] = []
    _decode_command(data, out, 0, max_decompressed)
    return out


def _decode_command(buf: bytes, out: list[PacketMessage], depth: int, max_decompressed: int) -> None:
    if not buf:
        raise GossipProtocolError("empty message")
    if depth > MAX_NESTING:
        raise GossipProtocolError("compound/compress wrappers nested too deeply")
    kind, body = buf[0], buf[1:]
    if kind == MessageType.COMPOUND:
        for part in _split_compound(body):
            _decode_command(part, out, depth + 1, max_decompressed)
    elif kind == MessageType.COMPRESS:
        _decode_command(_decompress_body(body, max_decompressed), out, depth + 1, max_decompressed)
    elif kind == MessageType.ENCRYPT:
        raise EncryptionNotSupported("encrypted memberlist packet: encryption (keyring) is not supported")
    elif kind == MessageType.HAS_CRC:
        raise GossipProtocolError("CRC header inside a packet")
    elif kind in _PACKET_BODIES:
        out.append(_decode_body(kind, body))
    elif kind in (MessageType.PUSH_PULL, MessageType.ERR):
        raise GossipProtocolError(f"message type {MessageType(kind).name} is only valid on a stream")
    else:
        raise GossipProtocolError(f"unknown message type {kind}")


def is_compressed_packet(data: bytes) -> bool:
    """True when the packet's outer message (under an optional CRC header) is LZW-compressed:
    the sender compresses, as memberlist does by default (``EnableCompression``)."""
    if len(data) >= 6 and data[0] == MessageType.HAS_CRC:
        return data[5] == MessageType.COMPRESS
    return len(data) >= 1 and data[0] == MessageType.COMPRESS


def _split_compound(body: bytes) -> list[bytes]:
    if not body:
        raise GossipProtocolError("compound message without its count byte")
    count = body[0]
    if len(body) < 1 + 2 * count:
        raise GossipProtocolError("compound message: truncated length table")
    lengths = struct.unpack_from(f">{count}H", body, 1)
    pos = 1 + 2 * count
    parts: list[bytes] = []
    for length in lengths:
        if pos + length > len(body):
            break  # memberlist drops the truncated tail and keeps the complete parts
        parts.append(body[pos:pos + length])
        pos += length
    return parts


def _decompress_body(body: bytes, max_decompressed: int) -> bytes:
    obj, _ = _unpack_one(body)
    f = _fields(obj, "compress")
    algo = _uint(f, "Algo", 8, "compress")
    if algo != 0:
        raise GossipProtocolError(f"unknown compression algorithm {algo}")
    try:
        return lzw.decompress(_bytes(f, "Buf", "compress"), max_decompressed)
    except lzw.LzwTooLarge as exc:
        raise GossipTooLarge(str(exc)) from None
    except lzw.LzwError as exc:
        raise GossipProtocolError(f"compressed payload: {exc}") from None


def _compress_wrap(payload: bytes) -> bytes:
    return bytes((MessageType.COMPRESS,)) + _pack({"Algo": 0, "Buf": lzw.compress(payload)})


def encode_packet(messages: Sequence[PacketMessage], *, crc: bool = False, compress: bool = False,
                  compress_if_smaller: bool = True) -> bytes:
    """One UDP packet carrying ``messages`` (a compound message when there are several).

    ``compress`` wraps the packet in LZW (kept only when smaller, as memberlist does, unless
    ``compress_if_smaller`` is False); ``crc`` adds the protocol-5 CRC header last.
    """
    if not messages:
        raise LocalProtocolError("a packet needs at least one message")
    parts = [encode_message(m) for m in messages]
    payload = parts[0] if len(parts) == 1 else make_compound(parts)
    if compress:
        wrapped = _compress_wrap(payload)
        if len(wrapped) < len(payload) or not compress_if_smaller:
            payload = wrapped
    if crc:
        payload = bytes((MessageType.HAS_CRC,)) + struct.pack(">I", zlib.crc32(payload)) + payload
    return payload


def make_compound(parts: Sequence[bytes]) -> bytes:
    """memberlist's compound framing of already-encoded messages."""
    if len(parts) > 255:
        raise LocalProtocolError("a compound message holds at most 255 parts")
    for part in parts:
        if len(part) > 0xFFFF:
            raise LocalProtocolError("a compound part is at most 65535 bytes")
    return (bytes((MessageType.COMPOUND, len(parts))) + struct.pack(f">{len(parts)}H", *map(len, parts))
            + b"".join(parts))


# ---------------------------------------------------------------------------- streams


def encode_stream(msg: StreamMessage, *, compress: bool = False) -> bytes:
    """The bytes one memberlist stream (TCP connection) carries for ``msg``."""
    if isinstance(msg, PushPull):
        out = bytearray((MessageType.PUSH_PULL,))
        out += _pack({"Nodes": len(msg.states), "UserStateLen": len(msg.user_state), "Join": msg.join})
        for s in msg.states:
            out += _pack({"Name": s.name, "Addr": _ip_bytes(s.addr[0]), "Port": s.addr[1],
                          "Meta": s.meta or None, "Incarnation": s.incarnation, "State": int(s.state),
                          "Vsn": bytes(s.vsn) or None})
        out += msg.user_state
        payload = bytes(out)
    elif isinstance(msg, UserMsg):
        payload = bytes((MessageType.USER,)) + _pack({"UserMsgLen": len(msg.payload)}) + msg.payload
    else:
        payload = encode_message(msg)
    return _compress_wrap(payload) if compress else payload


class StreamDecoder:
    """Incremental decoder of one memberlist stream message.

    Feed bytes as they arrive with :meth:`feed`; it returns the message once complete (and
    None before). Each byte is parsed once (a persistent msgpack unpacker keeps the partial
    state). At most ``max_bytes`` are accepted (memberlist's own push-pull limit by default)
    and at most ``max_nodes`` member states.
    """

    def __init__(self, max_bytes: int = MAX_STREAM_BYTES, max_nodes: int = 65536,
                 *, _nested: bool = False) -> None:
        self._max_bytes = max_bytes
        self._max_nodes = max_nodes
        self._nested = _nested
        self._unpacker = _unpacker(max(max_bytes, 1))
        self._received = 0
        self._kind: int | None = None
        self._header: tuple[int, int, bool] | None = None
        self._states: list[PushNodeState] = []
        self._tail = bytearray()
        self._done: StreamMessage | None = None

    @property
    def buffered(self) -> int:
        """Bytes received so far."""
        return self._received

    @property
    def done(self) -> bool:
        """True once a whole message was decoded."""
        return self._done is not None

    @property
    def compressed(self) -> bool:
        """True when the stream message came LZW-compressed (known from its first byte)."""
        return self._kind == MessageType.COMPRESS

    def feed(self, data: bytes) -> StreamMessage | None:
        """Add ``data``; the decoded message when the stream message is complete."""
        if self._done is not None:
            if data:
                raise GossipProtocolError("bytes after the end of the stream message")
            return self._done
        if self._received + len(data) > self._max_bytes:
            raise GossipTooLarge(f"stream message exceeds {self._max_bytes} bytes")
        self._received += len(data)
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:  # pragma: no cover - guarded by the byte count above
            raise GossipTooLarge(f"stream message exceeds {self._max_bytes} bytes") from None
        try:
            msg = self._advance()
        except msgpack.OutOfData:
            return None
        except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
            raise GossipProtocolError(f"malformed msgpack in stream: {exc}") from None
        self._done = msg
        if self._unpacker.read_bytes(1):
            raise GossipProtocolError("bytes after the end of the stream message")
        return msg

    def _raw(self, n: int) -> bytes:
        need = n - len(self._tail)
        if need > 0:
            self._tail += self._unpacker.read_bytes(need)
        if len(self._tail) < n:
            raise msgpack.OutOfData
        out = bytes(self._tail)
        self._tail.clear()
        return out

    def _advance(self) -> StreamMessage:
        if self._kind is None:
            self._kind = self._raw(1)[0]
        kind = self._kind
        u = self._unpacker
        if kind == MessageType.ENCRYPT:
            raise EncryptionNotSupported("encrypted memberlist stream: encryption (keyring) is not supported")
        if kind == MessageType.COMPRESS:
            if self._nested:
                raise GossipProtocolError("compressed stream inside a compressed stream")
            f = _fields(u.unpack(), "compress")
            algo = _uint(f, "Algo", 8, "compress")
            if algo != 0:
                raise GossipProtocolError(f"unknown compression algorithm {algo}")
            try:
                inner = lzw.decompress(_bytes(f, "Buf", "compress"), self._max_bytes)
            except lzw.LzwTooLarge as exc:
                raise GossipTooLarge(str(exc)) from None
            except lzw.LzwError as exc:
                raise GossipProtocolError(f"compressed stream: {exc}") from None
            nested = StreamDecoder(self._max_bytes, self._max_nodes, _nested=True)
            msg = nested.feed(inner)
            if msg is None:
                raise GossipProtocolError("compressed stream payload is truncated")
            return msg
        if kind == MessageType.PUSH_PULL:
            if self._header is None:
                f = _fields(u.unpack(), "push-pull header")
                nodes = _int(f, "Nodes", "push-pull header")
                user_len = _int(f, "UserStateLen", "push-pull header")
                if not 0 <= nodes <= self._max_nodes:
                    raise GossipProtocolError(
                        f"push-pull announces {nodes} members (limit {self._max_nodes})")
                if not 0 <= user_len <= self._max_bytes:
                    raise GossipProtocolError(f"push-pull user state length {user_len} out of range")
                self._header = (nodes, user_len, _bool(f, "Join", "push-pull header"))
            nodes, user_len, join = self._header
            while len(self._states) < nodes:
                self._states.append(_push_node_state(u.unpack()))
            return PushPull(join, tuple(self._states), self._raw(user_len))
        if kind == MessageType.USER:
            if self._header is None:
                f = _fields(u.unpack(), "user header")
                n = _int(f, "UserMsgLen", "user header")
                if not 0 <= n <= self._max_bytes:
                    raise GossipProtocolError(f"user message length {n} out of range")
                self._header = (0, n, False)
            return UserMsg(self._raw(self._header[1]))
        if kind == MessageType.PING:
            f = _fields(u.unpack(), "ping")
            return Ping(_uint(f, "SeqNo", 32, "ping"), _text(f, "Node", "ping"),
                        _addr(f, "SourceAddr", "SourcePort", "ping"), _text(f, "SourceNode", "ping"))
        if kind == MessageType.ACK:
            f = _fields(u.unpack(), "ack")
            return Ack(_uint(f, "SeqNo", 32, "ack"), _bytes(f, "Payload", "ack"))
        if kind == MessageType.ERR:
            f = _fields(u.unpack(), "error")
            return ErrResp(_text(f, "Error", "error"))
        raise GossipProtocolError(f"message type {kind} is not valid on a stream")


def decode_stream(data: bytes, *, max_bytes: int = MAX_STREAM_BYTES, max_nodes: int = 65536) -> StreamMessage:
    """Decode one complete stream message (all of ``data``)."""
    msg = StreamDecoder(max_bytes, max_nodes).feed(bytes(data))
    if msg is None:
        raise GossipProtocolError("truncated stream message")
    return msg


def _push_node_state(obj: Any) -> PushNodeState:
    what = "push-pull state"
    s = _fields(obj, what)
    addr = _addr(s, "Addr", "Port", what) or ("0.0.0.0", _uint(s, "Port", 16, what))
    state = _uint(s, "State", 8, what)
    if state > NodeState.LEFT:
        raise GossipProtocolError(f"unknown member state {state}")
    meta = _bytes(s, "Meta", what)
    if len(meta) > META_MAX_SIZE:
        raise GossipProtocolError(f"node meta is {len(meta)} bytes, the limit is {META_MAX_SIZE}")
    return PushNodeState(_text(s, "Name", what), addr, meta, _uint(s, "Incarnation", 32, what),
                         NodeState(state), _vsn(s, what))


# ---------------------------------------------------------------------------- serf tags


def encode_serf_tags(tags: Mapping[str, str | bytes]) -> bytes:
    """Serf's node metadata for ``tags`` (magic byte + msgpack map); at most 512 bytes.

    A bytes value travels as a raw msgpack string, as a Go string holding those bytes would.
    """
    meta = bytes((SERF_TAG_MAGIC,)) + _pack(dict(tags))
    if len(meta) > META_MAX_SIZE:
        raise LocalProtocolError(
            f"encoded tags are {len(meta)} bytes, the node meta limit is {META_MAX_SIZE}")
    return meta


def decode_serf_tags(meta: bytes) -> dict[str, str]:
    """The tags in Serf node metadata (legacy metadata without the magic byte is a ``role``)."""
    tags: dict[str, str] = {}
    for key, value in decode_serf_tags_raw(meta).items():
        try:
            tags[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise GossipProtocolError("serf tag is not valid UTF-8") from None
    return tags


def decode_serf_tags_raw(meta: bytes) -> dict[str, bytes]:
    """Like :func:`decode_serf_tags`, with each value's bytes as they are (names are text)."""
    if not meta or meta[0] != SERF_TAG_MAGIC:
        return {"role": bytes(meta)}
    obj, _ = _unpack_one(meta[1:], META_MAX_SIZE)
    if not isinstance(obj, dict):
        raise GossipProtocolError("serf tags are not a map")
    tags: dict[str, bytes] = {}
    for key, value in obj.items():
        if not isinstance(key, bytes | str) or not isinstance(value, bytes | str):
            raise GossipProtocolError("serf tags must map strings to strings")
        try:
            k = key.decode("utf-8") if isinstance(key, bytes) else key
        except UnicodeDecodeError:
            raise GossipProtocolError("serf tag name is not valid UTF-8") from None
        tags[k] = value if isinstance(value, bytes) else value.encode("utf-8")
    return tags


# ---------------------------------------------------------------------------- serf intents

#: Serf's own message types inside memberlist user messages (``serf/messages.go``).
SERF_LEAVE = 0
SERF_JOIN = 1
SERF_PUSH_PULL = 2
SERF_USER_EVENT = 3
SERF_QUERY = 4


def encode_serf_leave(ltime: int, node: str) -> bytes:
    """Serf's leave intent for ``node`` at Lamport time ``ltime`` (a user-message payload).

    Serf marks a member *left* (rather than *failed*) only when this intent reached it before
    memberlist's own leave (a ``dead`` from the member itself).
    """
    return bytes((SERF_LEAVE,)) + _pack({"LTime": ltime, "Node": node})


def serf_lamport_time(payload: bytes, node: str) -> int:
    """The highest Serf Lamport time in a Serf message (a user message or the user state of a
    push-pull), counting the status time recorded for ``node``; 0 when it carries none.

    A leave intent must be later than both, or Serf ignores it.
    """
    if not payload or payload[0] not in (SERF_LEAVE, SERF_JOIN, SERF_PUSH_PULL, SERF_USER_EVENT,
                                         SERF_QUERY):
        return 0
    try:
        obj, _ = _unpack_one(payload[1:], len(payload))
        f = _fields(obj, "serf message")
    except GossipProtocolError:
        return 0
    best = 0
    for key in ("LTime", "EventLTime", "QueryLTime"):
        value = f.get(key)
        if isinstance(value, int) and value > best:
            best = value
    statuses = f.get("StatusLTimes")
    if isinstance(statuses, dict):
        for key, value in statuses.items():
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            if name == node and isinstance(value, int) and value > best:
                best = value
    return best
