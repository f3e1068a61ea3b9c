"""Length-prefixed msgpack messages: the byte layer under pulse frames (and other protocols).

A message on the wire is a 4-byte big-endian unsigned body length followed by a body that is
exactly one msgpack object::

    +----------------+----------------------------------+
    | length (u32 BE) | body: one msgpack object (length) |
    +----------------+----------------------------------+

Rules this module keeps:

* The decoder is sans-IO: :meth:`MessageDecoder.feed` takes bytes in any chunking and
  returns the messages completed so far. It never reads a socket or a clock.
* Input is untrusted. A declared length of zero or above ``max_frame_size`` is rejected as
  soon as the 4 header bytes are in, before any body byte is buffered; the decoder never holds
  more than ``max_frame_size + 4`` bytes. msgpack's own ``max_*_len`` limits are set from the
  body length, so a small body can never make msgpack allocate a large string or container.
* A body must hold exactly one msgpack object: fewer bytes (a truncated object) or more bytes
  (trailing data) are errors, as are invalid UTF-8 in a string, reserved type bytes, nesting
  deeper than msgpack's stack, and (by default) map keys other than ``str``/``bytes``.
* Every problem in the input raises :class:`~pulse.errors.RemoteProtocolError` (or its
  subclass :class:`~pulse.errors.FrameTooLarge`) saying what was wrong. After an error the
  decoder is poisoned: every later ``feed`` raises the same class, because the stream has lost
  its framing and the connection must be closed.
* Encoding problems (an object msgpack cannot pack, a body too large) are this side's fault
  and raise :class:`~pulse.errors.LocalProtocolError`.
"""

from __future__ import annotations

from typing import Final

import msgpack

from pulse._deprecation import deprecated, renamed
from pulse.errors import FrameTooLarge, LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HEADER_SIZE",
    "MAX_WIRE_LENGTH",
    "MessageDecoder",
    "encode_message",
    "poisoned_error",
    "unpack_body",
]

HEADER_SIZE: Final = 4
"""Bytes in the length prefix."""

# First bytes of other protocols met on a pulse port by mistake: named in the error instead
# of reporting an absurd body length (b"HTTP" reads as a 1,213,486,160-byte body).
_FOREIGN_PREFIXES: Final = {
    b"HTTP": "HTTP (a WebSocket or web server? try ws://)",
    b"GET ": "HTTP (a browser or WebSocket client?)",
    b"POST": "HTTP",
    b"SSH-": "SSH",
}

MAX_WIRE_LENGTH: Final = 2**32 - 1
"""The largest body length the 4-byte prefix can express."""

DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024
"""Default limit on a message body, in bytes (1 MiB); the prefix is not counted."""


def encode_message(obj: object, *, max_frame_size: int | None = None,
                   max_message_size: int | None = None) -> bytes:
    """Return ``obj`` packed as one message: 4-byte big-endian length + msgpack body.

    ``bytes``/``bytearray``/``memoryview`` pack as msgpack bin (``use_bin_type=True``), ``str``
    as msgpack str, tuples as arrays. Raises :class:`LocalProtocolError` if msgpack cannot pack
    ``obj`` or if the body is longer than ``max_frame_size`` (when given; use the peer's
    limit to fail here rather than have the peer drop the connection) or than the prefix can
    express. ``max_message_size`` is the deprecated old name of ``max_frame_size``.
    """
    max_frame_size = renamed("encode_message", "max_message_size", "max_frame_size",
                             max_message_size, max_frame_size)
    try:
        body: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode message: {exc}") from exc
    limit = MAX_WIRE_LENGTH if max_frame_size is None else max_frame_size
    if len(body) > limit:
        raise LocalProtocolError(f"message body of {len(body)} bytes exceeds the limit of {limit} bytes")
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def unpack_body(body: bytes | memoryview, *, strict_map_key: bool = True) -> object:
    """Decode a message body that must contain exactly one msgpack object.

    The msgpack ``max_*_len`` limits are the largest sizes that could still fit in
    ``len(body)`` bytes, so a declared size that cannot be satisfied is rejected before
    msgpack allocates anything for it. Raises :class:`RemoteProtocolError` on any defect.
    """
    size = len(body)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=strict_map_key,
            # A str needs at least a 1-byte header, bin and ext at least 2 bytes, every array
            # element at least 1 byte and every map entry at least 2: larger declared sizes
            # can never be complete.
            max_str_len=max(size - 1, 0),
            max_bin_len=max(size - 2, 0),
            max_ext_len=max(size - 2, 0),
            max_array_len=max(size - 1, 0),
            max_map_len=max((size - 1) // 2, 0),
        )
    except msgpack.ExtraData as exc:
        raise RemoteProtocolError(
            f"message body holds more than one msgpack object: {len(exc.extra)} of its "
            f"{size} bytes follow the first object"
        ) from exc
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"invalid UTF-8 in a msgpack string: {exc.reason} (byte {exc.start} of the string)"
        ) from exc
    except (msgpack.StackError, RecursionError) as exc:
        raise RemoteProtocolError("msgpack objects nested too deeply in message body") from exc
    except msgpack.FormatError as exc:
        raise RemoteProtocolError("invalid msgpack in message body: reserved type byte 0xc1") from exc
    except ValueError as exc:
        text = str(exc)
        if "incomplete input" in text:
            raise RemoteProtocolError(
                f"message body of {size} bytes ends inside a msgpack object (truncated)"
            ) from exc
        if "exceeds max_" in text:
            raise RemoteProtocolError(
                f"invalid msgpack in message body: declared size {text}; a {size}-byte body cannot hold it"
            ) from exc
        raise RemoteProtocolError(f"invalid msgpack in message body: {text}") from exc
    except Exception as exc:  # unpacking is pure: anything else is still the input's fault
        raise RemoteProtocolError(f"invalid msgpack in message body: {type(exc).__name__}: {exc}") from exc


def poisoned_error(first: ProtocolError) -> ProtocolError:
    """Return the error a poisoned decoder raises: same class as ``first``, saying why."""
    return type(first)(f"decoder unusable after an earlier error: {first}")


class MessageDecoder:
    """Streaming decoder of length-prefixed msgpack messages with hard size limits.

    Feed it bytes as they arrive, in any chunking; it returns each message's decoded object
    once the whole message is in. At most ``max_frame_size + 4`` bytes are ever buffered.
    """

    __slots__ = ("_buffer", "_error", "_max_message_size", "_strict_map_key")

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        strict_map_key: bool = True,
        max_message_size: int | None = None,
    ) -> None:
        """Create a decoder.

        ``max_frame_size`` limits the body (the 4-byte prefix is not counted); it must be
        between 1 and 2**32 - 1. ``strict_map_key`` (default ``True``) accepts only ``str``
        and ``bytes`` map keys: integer keys hash predictably in Python, so a peer could send a
        map whose keys all collide and make decoding quadratic. Turn it off only for peers you
        trust. ``max_message_size`` is the deprecated old name of ``max_frame_size``.
        """
        max_frame_size = renamed("MessageDecoder", "max_message_size", "max_frame_size",
                                 max_message_size, max_frame_size)
        if not 1 <= max_frame_size <= MAX_WIRE_LENGTH:
            raise ValueError(
                f"max_frame_size must be between 1 and {MAX_WIRE_LENGTH}, got {max_frame_size}"
            )
        self._max_message_size = max_frame_size
        self._strict_map_key = strict_map_key
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        """The largest body length accepted, in bytes."""
        return self._max_message_size

    @property
    def max_message_size(self) -> int:
        """Deprecated name of :attr:`max_frame_size`."""
        deprecated("MessageDecoder.max_message_size", "max_frame_size")
        return self._max_message_size

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held now (prefix included); at most max + 4."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[object]:
        """Add received bytes; return the messages they complete, in order.

        Raises :class:`FrameTooLarge` when a declared length exceeds the limit (as soon as the
        prefix is complete) and :class:`RemoteProtocolError` for any other defect. Messages
        completed earlier in the same call are discarded with the error: the connection is
        unusable anyway. Once an error was raised every later call raises the same class.
        """
        if self._error is not None:
            raise poisoned_error(self._error)
        try:
            return self._feed(memoryview(data).cast("B"))
        except ProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def feed_eof(self) -> None:
        """Report that the peer closed the stream; raise if it stopped inside a message.

        Raises :class:`RemoteProtocolError` if some bytes of an incomplete message are
        buffered (the peer's last message was truncated), and poisons the decoder like any
        other error. A poisoned decoder raises its error class again.
        """
        if self._error is not None:
            raise poisoned_error(self._error)
        if self._buffer:
            held = len(self._buffer)
            if held < HEADER_SIZE:
                detail = f"{held} of the {HEADER_SIZE} length-prefix bytes"
            else:
                detail = f"{held - HEADER_SIZE} of {self._declared_length()} body bytes"
            self._error = RemoteProtocolError(f"stream ended inside a message: got only {detail}")
            self._buffer.clear()
            raise self._error

    def _declared_length(self) -> int:
        return int.from_bytes(self._buffer[:HEADER_SIZE], "big")

    def _check_length(self, length: int) -> int:
        if length == 0:
            raise RemoteProtocolError("zero-length message: a body must hold a msgpack object")
        if length > self._max_message_size:
            protocol = _FOREIGN_PREFIXES.get(length.to_bytes(HEADER_SIZE, "big"))
            if protocol is not None:
                raise FrameTooLarge(
                    f"the peer speaks {protocol}, not pulse frames (its first bytes read as a "
                    f"{length}-byte length prefix)"
                )
            raise FrameTooLarge(
                f"message declares a {length}-byte body; the limit is {self._max_message_size} bytes"
            )
        return length

    def _unpack(self, body: bytes | memoryview) -> object:
        return unpack_body(body, strict_map_key=self._strict_map_key)

    def _feed(self, view: memoryview) -> list[object]:
        messages: list[object] = []
        buffer = self._buffer
        pos, end = 0, len(view)

        # 1. Complete the message that is partly buffered, if any.
        if buffer:
            if len(buffer) < HEADER_SIZE:
                take = min(HEADER_SIZE - len(buffer), end)
                buffer += view[:take]
                pos = take
                if len(buffer) < HEADER_SIZE:
                    return messages
                self._check_length(self._declared_length())
            total = HEADER_SIZE + self._declared_length()
            take = min(total - len(buffer), end - pos)
            buffer += view[pos : pos + take]
            pos += take
            if len(buffer) < total:
                return messages
            body = bytes(buffer[HEADER_SIZE:])
            buffer.clear()
            messages.append(self._unpack(body))

        # 2. Decode whole messages straight from the input, without copying them.
        while end - pos >= HEADER_SIZE:
            length = self._check_length(int.from_bytes(view[pos : pos + HEADER_SIZE], "big"))
            start = pos + HEADER_SIZE
            if end - start < length:
                break
            messages.append(self._unpack(view[start : start + length]))
            pos = start + length

        # 3. Keep the incomplete tail; its length prefix (if complete) was checked above, so
        #    the tail is shorter than HEADER_SIZE + max_message_size.
        if pos < end:
            buffer += view[pos:end]
        return messages
