"""Dubbo 2 protocol frames (the ``dubbo://`` exchange layer), encoded and decoded byte for byte.

Every frame is a 16-byte header followed by a body (Apache Dubbo ``ExchangeCodec``)::

    offset  size  field
    0       2     magic 0xdabb
    2       1     flag: 0x80 request | 0x40 two-way | 0x20 event | serialization id (low 5 bits)
    3       1     status (responses: 20 OK, 30 client timeout, ... ; requests: 0)
    4       8     request id, big-endian (a Java long; kept here as the unsigned bit pattern)
    12      4     body length, big-endian
    16      n     body, serialized with the serialization named in the flag (Hessian2 = 2)

Heartbeats are *event* frames whose body is the serialized ``null`` (Hessian2 ``'N'``)::

    request   da bb e2 00 | id (8) | 00 00 00 01 | 4e     request, two-way, event, hessian2
    response  da bb 22 14 | id (8) | 00 00 00 01 | 4e     event, hessian2, status 20 (OK)

This module understands only the header and the heartbeat body; every other frame (ordinary
requests and responses, other events) is handed to the application untouched, and
re-encoding a decoded frame gives back the exact bytes.

:class:`FrameDecoder` is sans-IO (``feed(bytes) -> frames``), takes any chunking, and bounds
its buffer by ``max_frame_size`` (Dubbo's default payload limit, 8 MiB). Garbage raises a
:class:`DubboProtocolError` (a :class:`~pulse.errors.RemoteProtocolError`) naming what was
wrong; after that the decoder refuses more input, and the driver closes that one channel.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pulse._deprecation import renamed
from pulse.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

MAGIC = 0xDABB
MAGIC_BYTES = b"\xda\xbb"
HEADER_LENGTH = 16

FLAG_REQUEST = 0x80
FLAG_TWO_WAY = 0x40
FLAG_EVENT = 0x20
SERIALIZATION_MASK = 0x1F

#: Dubbo's serialization id of Hessian2, its default.
HESSIAN2 = 2
#: Hessian2's encoding of ``null``: the body of every heartbeat.
HESSIAN_NULL = b"N"
#: Serialized ``null`` per serialization id, for the serializations pulse can heartbeat in.
NULL_BODIES: dict[int, bytes] = {HESSIAN2: HESSIAN_NULL}

#: Dubbo's default payload limit (``payload`` URL parameter): 8 MiB.
DEFAULT_MAX_BODY = 8 * 1024 * 1024
#: The body length field is a Java int.
MAX_BODY_LENGTH = 2**31 - 1
MAX_REQUEST_ID = 2**64 - 1

_HEADER = struct.Struct(">HBBQI")


class Status(enum.IntEnum):
    """Response status codes (``org.apache.dubbo.remoting.exchange.Response``)."""

    OK = 20
    SERIALIZATION_ERROR = 25
    CLIENT_TIMEOUT = 30
    SERVER_TIMEOUT = 31
    CHANNEL_INACTIVE = 35
    BAD_REQUEST = 40
    BAD_RESPONSE = 50
    SERVICE_NOT_FOUND = 60
    SERVICE_ERROR = 70
    SERVER_ERROR = 80
    CLIENT_ERROR = 90
    SERVER_THREADPOOL_EXHAUSTED_ERROR = 100


class DubboProtocolError(RemoteProtocolError):
    """The peer sent bytes that are not a valid Dubbo 2 frame."""


class BadMagic(DubboProtocolError):
    """A frame did not start with the magic 0xdabb."""


class TruncatedFrame(DubboProtocolError):
    """The stream ended inside a frame."""


class BodyTooLarge(DubboProtocolError, FrameTooLarge):
    """A header announced a body above the size limit (or a negative length)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One Dubbo 2 frame. ``encode(frame)`` reproduces the bytes it was decoded from."""

    request_id: int
    is_request: bool
    two_way: bool = False
    event: bool = False
    serialization: int = HESSIAN2
    status: int = 0
    body: bytes = b""

    @property
    def flag(self) -> int:
        """The flag byte (request, two-way and event bits plus the serialization id)."""
        flag = self.serialization & SERIALIZATION_MASK
        if self.is_request:
            flag |= FLAG_REQUEST
        if self.two_way:
            flag |= FLAG_TWO_WAY
        if self.event:
            flag |= FLAG_EVENT
        return flag

    @property
    def is_heartbeat(self) -> bool:
        """True for a heartbeat request or response.

        In Dubbo 2 the only two-way event is the heartbeat, so every two-way event request
        and every event response is one, whatever the serialization; a one-way event counts
        only when its body is the serialized null (other one-way events, such as the
        provider's read-only notice, go to the application).
        """
        if not self.event:
            return False
        if not self.is_request or self.two_way:
            return True
        return NULL_BODIES.get(self.serialization) == self.body

    @property
    def is_heartbeat_request(self) -> bool:
        """A heartbeat the peer sent (answer it if ``two_way``)."""
        return self.is_request and self.is_heartbeat

    @property
    def is_heartbeat_response(self) -> bool:
        """The answer to a heartbeat."""
        return not self.is_request and self.is_heartbeat


def _check_encodable(frame: Frame) -> None:
    if not 0 <= frame.request_id <= MAX_REQUEST_ID:
        raise LocalProtocolError(f"request id {frame.request_id} does not fit in 8 bytes")
    if not 0 <= frame.serialization <= SERIALIZATION_MASK:
        raise LocalProtocolError(f"serialization id {frame.serialization} does not fit in 5 bits")
    if not 0 <= frame.status <= 0xFF:
        raise LocalProtocolError(f"status {frame.status} does not fit in a byte")
    if len(frame.body) > MAX_BODY_LENGTH:
        raise LocalProtocolError(f"body of {len(frame.body)} bytes exceeds the 2 GiB length field")


def encode(frame: Frame) -> bytes:
    """The wire bytes of ``frame``."""
    _check_encodable(frame)
    header = _HEADER.pack(MAGIC, frame.flag, frame.status, frame.request_id, len(frame.body))
    return header + frame.body


def _null_body(serialization: int) -> bytes:
    try:
        return NULL_BODIES[serialization]
    except KeyError:
        raise LocalProtocolError(
            f"pulse cannot encode a heartbeat in serialization {serialization}; "
            f"known: {sorted(NULL_BODIES)}"
        ) from None


def heartbeat_request(request_id: int, *, serialization: int = HESSIAN2) -> bytes:
    """A heartbeat request exactly as Dubbo writes it (two-way event, null body)."""
    body = _null_body(serialization)
    return encode(Frame(request_id, True, True, True, serialization, 0, body))


def heartbeat_response(request_id: int, *, serialization: int = HESSIAN2) -> bytes:
    """A heartbeat response exactly as Dubbo writes it (event, status OK, null body)."""
    body = _null_body(serialization)
    return encode(Frame(request_id, False, False, True, serialization, Status.OK, body))


def reply_to_heartbeat(request: Frame) -> bytes:
    """The response to a heartbeat request: same id and serialization, the null body echoed
    (so a peer heartbeating in any serialization gets its own encoding of null back)."""
    if not request.is_heartbeat_request:
        raise LocalProtocolError("reply_to_heartbeat needs a heartbeat request")
    body = NULL_BODIES.get(request.serialization, request.body)
    reply = Frame(request.request_id, False, False, True, request.serialization, Status.OK, body)
    return encode(reply)


def request(
    request_id: int, body: bytes, *, two_way: bool = True, serialization: int = HESSIAN2
) -> bytes:
    """An ordinary request frame carrying an already serialized ``body``."""
    return encode(Frame(request_id, True, two_way, False, serialization, 0, body))


def response(
    request_id: int, body: bytes, *, status: int = Status.OK, serialization: int = HESSIAN2
) -> bytes:
    """An ordinary response frame carrying an already serialized ``body``."""
    return encode(Frame(request_id, False, False, False, serialization, status, body))


def hessian2_string(text: str) -> bytes:
    """``text`` as a Hessian2 string (what Dubbo writes as the body of an error response).

    Characters outside the Basic Multilingual Plane become ``?`` and text beyond 65,535
    characters is cut, which keeps to the single-chunk forms of the encoding.
    """
    text = "".join(c if ord(c) < 0x10000 else "?" for c in text[:0xFFFF])
    data = text.encode("utf-8", "surrogatepass")
    n = len(text)
    if n < 32:
        return bytes([n]) + data
    if n < 1024:
        return bytes([0x30 + (n >> 8), n & 0xFF]) + data
    return b"S" + n.to_bytes(2, "big") + data


def error_response(
    request_id: int, status: int, message: str, *, serialization: int = HESSIAN2
) -> bytes:
    """A response with an error ``status`` and ``message`` (Hessian2 only, as Dubbo's
    ``writeUTF``)."""
    if status == Status.OK:
        raise LocalProtocolError("an error response needs a status other than OK")
    if serialization != HESSIAN2:
        raise LocalProtocolError("error responses are encoded in Hessian2 only")
    return response(request_id, hessian2_string(message), status=status, serialization=HESSIAN2)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes in any chunks, get complete frames out.

    At most one header plus ``max_frame_size`` bytes of body are buffered per frame; a larger
    announced body is refused as soon as its header is complete, before any of it arrives.
    """

    __slots__ = ("_buffer", "_error", "frames_decoded", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_BODY, *,
                 max_body_size: int | None = None) -> None:
        max_frame_size = renamed("FrameDecoder", "max_body_size", "max_frame_size",
                                 max_body_size, max_frame_size)
        if not isinstance(max_frame_size, int) or not 0 <= max_frame_size <= MAX_BODY_LENGTH:
            raise ValueError(
                f"max_frame_size must be an int in [0, 2**31 - 1], got {max_frame_size!r}"
            )
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._error: DubboProtocolError | None = None
        self.frames_decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def _fail(self, error: DubboProtocolError) -> DubboProtocolError:
        self._error = error
        self._buffer.clear()
        return error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order."""
        if self._error is not None:
            raise type(self._error)(f"decoder closed after an earlier error: {self._error}")
        buf = self._buffer
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        try:
            while pos < end:
                if buf[pos] != 0xDA or (end - pos >= 2 and buf[pos + 1] != 0xBB):
                    got = bytes(buf[pos : pos + 2]).hex()
                    raise self._fail(
                        BadMagic(f"bad magic 0x{got} (expected 0xdabb) at a frame start")
                    )
                if end - pos < HEADER_LENGTH:
                    break
                _, flag, status, request_id, length = _HEADER.unpack_from(buf, pos)
                if length > MAX_BODY_LENGTH:
                    raise self._fail(BodyTooLarge(f"negative body length {length - 2**32}"))
                if length > self.max_frame_size:
                    raise self._fail(
                        BodyTooLarge(
                            f"body of {length} bytes exceeds the limit of {self.max_frame_size}"
                        )
                    )
                frame_end = pos + HEADER_LENGTH + length
                if frame_end > end:
                    break
                frames.append(
                    Frame(
                        request_id=request_id,
                        is_request=bool(flag & FLAG_REQUEST),
                        two_way=bool(flag & FLAG_TWO_WAY),
                        event=bool(flag & FLAG_EVENT),
                        serialization=flag & SERIALIZATION_MASK,
                        status=status,
                        body=bytes(buf[pos + HEADER_LENGTH : frame_end]),
                    )
                )
                pos = frame_end
        finally:
            if self._error is None and pos:
                del buf[:pos]
        self.frames_decoded += len(frames)
        return frames

    def feed_eof(self) -> None:
        """The stream ended; raises :class:`TruncatedFrame` if a frame was cut off."""
        if self._error is None and self._buffer:
            n = len(self._buffer)
            what = "header" if n < HEADER_LENGTH else "body"
            raise self._fail(
                TruncatedFrame(f"stream ended inside a frame {what} ({n} bytes buffered)")
            )
