"""What a WebSocket heartbeat looks like on the wire, in either of two modes.

``CONTROL`` (the default): RFC 6455 ping and pong control frames. The ping payload is
``b"pulse"`` followed by the 8-byte big-endian sequence number, so every pong names the ping
it answers and the round trip is measured per pong. RFC 6455 obliges every peer to answer a
ping with a pong carrying the same payload; a peer may answer only the latest of several
pings, which the liveness core tolerates (an unknown or stale ``seq`` still proves life).

``FRAMES``: pulse's own msgpack ``Ping``/``Pong`` frames (:mod:`pulse.frames`) sent as
binary data messages, for peers whose WebSocket API hides control frames (browsers). A
binary message that is exactly one such frame is taken as a heartbeat and never reaches the
application; every other message passes through untouched.
"""

from __future__ import annotations

import enum
from typing import Final

from pulse.errors import ProtocolError
from pulse.frames import FrameDecoder, Ping, Pong, encode_frame

PING_PREFIX: Final = b"pulse"
"""First bytes of every ping payload pulse sends."""

PING_PAYLOAD_SIZE: Final = len(PING_PREFIX) + 8
"""Bytes in a pulse ping payload (RFC 6455 allows up to 125)."""

_MAX_INBAND_SIZE: Final = 64
"""In-band heartbeat frames are about 20 bytes; longer messages are never inspected."""


class HeartbeatMode(enum.Enum):
    """How heartbeats travel (see the module docstring)."""

    CONTROL = "control"
    FRAMES = "frames"


def ping_payload(seq: int) -> bytes:
    """The payload of ping number ``seq`` (0 <= seq < 2**64)."""
    return PING_PREFIX + seq.to_bytes(8, "big")


def pong_seq(payload: bytes) -> int | None:
    """The sequence number a pong answers, or None when the payload is not one of ours."""
    if len(payload) != PING_PAYLOAD_SIZE or not payload.startswith(PING_PREFIX):
        return None
    return int.from_bytes(payload[len(PING_PREFIX):], "big")


def inband_ping(seq: int, ts: float) -> bytes:
    """An in-band heartbeat request: one pulse ``Ping`` frame."""
    return encode_frame(Ping(seq, ts))


def inband_pong(ping: Ping) -> bytes:
    """The in-band answer to ``ping``."""
    return encode_frame(ping.pong())


def classify_inband(message: bytes) -> Ping | Pong | None:
    """The heartbeat a binary message carries, or None for application data.

    Only a message that is exactly one well-formed pulse ``Ping`` or ``Pong`` frame counts;
    anything else (including malformed lookalikes) is application data.
    """
    if not 5 <= len(message) <= _MAX_INBAND_SIZE:
        return None
    if int.from_bytes(message[:4], "big") != len(message) - 4:
        return None
    try:
        frames = FrameDecoder(_MAX_INBAND_SIZE).feed(message)
    except ProtocolError:
        return None
    if len(frames) == 1 and isinstance(frames[0], Ping | Pong):
        return frames[0]
    return None
