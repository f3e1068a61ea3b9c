"""pulse's own frames and their wire format.

Each frame is one :mod:`pulse.codec` message whose body is a msgpack array: a small integer
type code followed by the frame's fields in declaration order::

    Hello  [1, version, interval, timeout, peer_id, token]
    Ping   [2, seq, ts]
    Pong   [3, seq, ts]
    Data   [4, payload]
    Close  [5, reason]

Rules this module keeps:

* Frames are frozen, slotted dataclasses with no behaviour beyond :meth:`Ping.pong`; timing
  and session rules live in ``pulse._core``. The decoder does not check frame order (for
  example that ``Hello`` comes first): that is the session machine's job.
* Floats (``ts``, ``interval``, ``timeout``) are always sent as msgpack float64, so a ping's
  size depends only on its ``seq``. Decoding also accepts integers there (other
  implementations may send them) and returns ``float``.
* Every field is validated on both sides: a bad field in a frame we encode raises
  :class:`~pulse.errors.LocalProtocolError`; a bad field, an unknown type code, a wrong number
  of fields or an unsupported protocol version in a frame we receive raises
  :class:`~pulse.errors.RemoteProtocolError` saying what was wrong.
* :class:`FrameDecoder` inherits the codec's hard limits and poisoning: after an error every
  later ``feed`` raises the same class and the connection must be closed.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, TypeAlias

import msgpack

from pulse.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MessageDecoder,
    encode_message,
    poisoned_error,
)
from pulse.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_PEER_ID_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_SEQ",
    "MAX_TOKEN_LENGTH",
    "PROTOCOL_VERSION",
    "Close",
    "Data",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "Ping",
    "Pong",
    "encode_frame",
    "frame_from_wire",
    "frame_to_wire",
]

PROTOCOL_VERSION: Final = 1
"""The pulse frame protocol version this module speaks."""

DEFAULT_MAX_FRAME_SIZE: Final = DEFAULT_MAX_MESSAGE_SIZE
"""Default limit on a frame's msgpack body, in bytes (1 MiB; the 4-byte prefix not counted)."""

MAX_SEQ: Final = 2**64 - 1
"""Largest ping/pong sequence number (msgpack uint64)."""

MAX_PEER_ID_LENGTH: Final = 256
"""Longest ``Hello.peer_id``, in characters."""

MAX_TOKEN_LENGTH: Final = 4096
"""Longest ``Hello.token``, in characters (room for a signed JWT)."""

MAX_REASON_LENGTH: Final = 1024
"""Longest ``Close.reason``, in characters."""


class FrameType(IntEnum):
    """The type code in the first element of a frame's array (a 1-byte msgpack fixint)."""

    HELLO = 1
    PING = 2
    PONG = 3
    DATA = 4
    CLOSE = 5


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame each side sends: who it is and the heartbeat timing it proposes.

    ``interval`` is how often this side wants to send pings and ``timeout`` how long it waits
    for any traffic before declaring the peer dead, both in seconds (0 disables); the two
    proposals are reconciled by the core's negotiation. ``token`` is an optional credential
    and is left out of ``repr`` so it does not end up in logs.
    """

    version: int
    interval: float
    timeout: float
    peer_id: str
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Ping:
    """A heartbeat request.

    ``seq`` numbers the pings of one connection; ``ts`` is the sender's monotonic clock when
    sending. The peer echoes both in a :class:`Pong`, so the sender measures the round trip as
    ``now - pong.ts`` on its own clock, with no clock synchronisation.
    """

    seq: int
    ts: float

    def pong(self) -> Pong:
        """Return the :class:`Pong` that answers this ping (same ``seq`` and ``ts``)."""
        return Pong(self.seq, self.ts)


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a :class:`Ping`, echoing its ``seq`` and ``ts`` unchanged."""

    seq: int
    ts: float


@dataclass(frozen=True, slots=True)
class Data:
    """Application data carried alongside the heartbeats; it also proves the peer alive.

    ``payload`` is opaque ``bytes`` (``bytearray`` and ``memoryview`` are sent as bytes and
    arrive as ``bytes``) or any msgpack-able object, which arrives as msgpack decodes it:
    tuples become lists, map keys must be ``str`` or ``bytes``, and integers beyond
    ``[-2**63, 2**64 - 1]`` cannot be sent.
    """

    payload: bytes | object


@dataclass(frozen=True, slots=True)
class Close:
    """The sender is closing the connection on purpose; ``reason`` says why."""

    reason: str


Frame: TypeAlias = Hello | Ping | Pong | Data | Close
"""Any pulse frame."""

_ErrorClass: TypeAlias = type[ProtocolError]

_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


def _describe(value: object) -> str:
    """Name a value's type and show a bounded preview of it (for error messages)."""
    return f"{type(value).__name__} {_short_repr.repr(value)}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_seq(value: object, name: str, error: _ErrorClass) -> int:
    if not _is_int(value):
        raise error(f"{name} must be an integer, got {_describe(value)}")
    assert isinstance(value, int)
    if not 0 <= value <= MAX_SEQ:
        raise error(f"{name} must be in [0, 2**64 - 1], got {value}")
    return int(value)


def _as_version(value: object, error: _ErrorClass) -> int:
    if not _is_int(value):
        raise error(f"Hello.version must be an integer, got {_describe(value)}")
    assert isinstance(value, int)
    return int(value)


def _as_float(value: object, name: str, error: _ErrorClass, *, non_negative: bool) -> float:
    if not (_is_int(value) or isinstance(value, float)):
        raise error(f"{name} must be a number, got {_describe(value)}")
    assert isinstance(value, int | float)
    try:
        number = float(value)
    except OverflowError:
        raise error(f"{name} must be finite, got an integer too large for a float") from None
    if not math.isfinite(number):
        raise error(f"{name} must be finite, got {number}")
    if non_negative and number < 0:
        raise error(f"{name} must not be negative, got {number}")
    return number


def _as_text(value: object, name: str, limit: int, error: _ErrorClass) -> str:
    if not isinstance(value, str):
        raise error(f"{name} must be a string, got {_describe(value)}")
    if len(value) > limit:
        raise error(f"{name} has {len(value)} characters; the limit is {limit}")
    return str(value)


def frame_to_wire(frame: Frame) -> list[object]:
    """Return the msgpack array for ``frame`` after checking every field.

    Raises :class:`LocalProtocolError` for a field of the wrong type or out of range, or for
    an object that is not a frame. Useful on message-oriented transports that need no length
    prefix; :func:`encode_frame` adds the prefix.
    """
    error = LocalProtocolError
    if isinstance(frame, Ping | Pong):
        name = type(frame).__name__
        code = FrameType.PING if isinstance(frame, Ping) else FrameType.PONG
        return [
            int(code),
            _as_seq(frame.seq, f"{name}.seq", error),
            _as_float(frame.ts, f"{name}.ts", error, non_negative=False),
        ]
    if isinstance(frame, Data):
        return [int(FrameType.DATA), frame.payload]
    if isinstance(frame, Hello):
        version = _as_version(frame.version, error)
        if not 0 <= version <= 2**32 - 1:
            raise error(f"Hello.version must be in [0, 2**32 - 1], got {version}")
        token = frame.token
        if token is not None:
            token = _as_text(token, "Hello.token", MAX_TOKEN_LENGTH, error)
        return [
            int(FrameType.HELLO),
            version,
            _as_float(frame.interval, "Hello.interval", error, non_negative=True),
            _as_float(frame.timeout, "Hello.timeout", error, non_negative=True),
            _as_text(frame.peer_id, "Hello.peer_id", MAX_PEER_ID_LENGTH, error),
            token,
        ]
    if isinstance(frame, Close):
        return [
            int(FrameType.CLOSE),
            _as_text(frame.reason, "Close.reason", MAX_REASON_LENGTH, error),
        ]
    raise error(f"not a pulse frame: {_describe(frame)}")


def encode_heartbeat(frame_type: FrameType, seq: int, ts: float) -> bytes:
    """The bytes of a PING or PONG, the same as :func:`encode_frame` gives, on the hot path.

    ``seq`` must be an integer in [0, 2**64 - 1] and ``ts`` a float: the driver's own counter
    and clock, or the fields of a decoded (hence validated) frame. Skips the general checks
    and allocates only the result.
    """
    body: bytes = msgpack.packb([frame_type.value, seq, ts], use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def encode_frame(frame: Frame, *, max_frame_size: int | None = None) -> bytes:
    """Return the bytes of ``frame``: a 4-byte big-endian length and the msgpack array.

    Raises :class:`LocalProtocolError` if a field is invalid, a ``Data`` payload cannot be
    packed, or the body exceeds ``max_frame_size`` (when given; pass the peer's limit).
    """
    return encode_message(frame_to_wire(frame), max_frame_size=max_frame_size)


def _check_arity(kind: str, fields: Sequence[object], expected: int) -> None:
    if len(fields) != expected:
        raise RemoteProtocolError(
            f"{kind} frame needs {expected} field{'s' if expected != 1 else ''} after the "
            f"type code, got {len(fields)}"
        )


def _hello_from_wire(fields: Sequence[object]) -> Hello:
    error = RemoteProtocolError
    # The version comes first so that a newer peer, whose Hello may carry more fields, is
    # told about the version mismatch rather than about the field count.
    if fields:
        version = _as_version(fields[0], error)
        if version != PROTOCOL_VERSION:
            raise error(
                f"unsupported pulse protocol version {version}: the peer sent version "
                f"{version}, this side supports version {PROTOCOL_VERSION}"
            )
    _check_arity("Hello", fields, 5)
    _, interval, timeout, peer_id, token = fields
    return Hello(
        version=PROTOCOL_VERSION,
        interval=_as_float(interval, "Hello.interval", error, non_negative=True),
        timeout=_as_float(timeout, "Hello.timeout", error, non_negative=True),
        peer_id=_as_text(peer_id, "Hello.peer_id", MAX_PEER_ID_LENGTH, error),
        token=None if token is None else _as_text(token, "Hello.token", MAX_TOKEN_LENGTH, error),
    )


def _ping_from_wire(fields: Sequence[object]) -> Ping:
    _check_arity("Ping", fields, 2)
    error = RemoteProtocolError
    return Ping(
        _as_seq(fields[0], "Ping.seq", error),
        _as_float(fields[1], "Ping.ts", error, non_negative=False),
    )


def _pong_from_wire(fields: Sequence[object]) -> Pong:
    _check_arity("Pong", fields, 2)
    error = RemoteProtocolError
    return Pong(
        _as_seq(fields[0], "Pong.seq", error),
        _as_float(fields[1], "Pong.ts", error, non_negative=False),
    )


def _data_from_wire(fields: Sequence[object]) -> Data:
    _check_arity("Data", fields, 1)
    return Data(fields[0])


def _close_from_wire(fields: Sequence[object]) -> Close:
    _check_arity("Close", fields, 1)
    return Close(_as_text(fields[0], "Close.reason", MAX_REASON_LENGTH, RemoteProtocolError))


_FROM_WIRE: Final[dict[int, Callable[[Sequence[object]], Frame]]] = {
    FrameType.HELLO: _hello_from_wire,
    FrameType.PING: _ping_from_wire,
    FrameType.PONG: _pong_from_wire,
    FrameType.DATA: _data_from_wire,
    FrameType.CLOSE: _close_from_wire,
}


def frame_from_wire(message: object) -> Frame:
    """Build a frame from a decoded msgpack message, validating every field.

    Raises :class:`RemoteProtocolError` when the message is not a non-empty array, the type
    code is unknown, the number of fields is wrong, a field has the wrong type or range, or a
    ``Hello`` names a protocol version other than :data:`PROTOCOL_VERSION`.
    """
    if not isinstance(message, list):
        raise RemoteProtocolError(f"a pulse frame must be a msgpack array, got {_describe(message)}")
    if not message:
        raise RemoteProtocolError("a pulse frame must not be an empty array")
    code = message[0]
    if not _is_int(code):
        raise RemoteProtocolError(f"frame type code must be an integer, got {_describe(code)}")
    assert isinstance(code, int)
    from_wire = _FROM_WIRE.get(code)
    if from_wire is None:
        known = ", ".join(f"{member.value} {member.name.title()}" for member in FrameType)
        raise RemoteProtocolError(f"unknown frame type code {code} (known: {known})")
    return from_wire(message[1:])


class FrameDecoder:
    """Streaming decoder of pulse frames, built on :class:`pulse.codec.MessageDecoder`.

    Feed it received bytes in any chunking; it returns the complete, validated frames. It
    holds at most ``max_frame_size + 4`` bytes and is poisoned by the first error.
    """

    __slots__ = ("_error", "_messages")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        """Create a decoder accepting frame bodies of up to ``max_frame_size`` bytes."""
        self._messages = MessageDecoder(max_frame_size)
        self._error: ProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        """The largest frame body accepted, in bytes (the 4-byte prefix not counted)."""
        return self._messages.max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held now; never more than ``max_frame_size + 4``."""
        return self._messages.buffered

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order.

        Raises :class:`~pulse.errors.FrameTooLarge` or :class:`RemoteProtocolError` on bad
        input (frames completed earlier in the same call are dropped with it); after that,
        every call raises the same class.
        """
        if self._error is not None:
            raise poisoned_error(self._error)
        try:
            return [frame_from_wire(message) for message in self._messages.feed(data)]
        except ProtocolError as exc:
            self._error = exc
            raise

    def feed_eof(self) -> None:
        """Report the end of the stream; raise :class:`RemoteProtocolError` if it cut a frame."""
        if self._error is not None:
            raise poisoned_error(self._error)
        try:
            self._messages.feed_eof()
        except ProtocolError as exc:
            self._error = exc
            raise
