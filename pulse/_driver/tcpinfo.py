"""Sampling the kernel's view of a TCP connection (Linux ``TCP_INFO``) for the lossy-link
profile (:mod:`pulse._core.lossy`).

Thin on purpose: one ``getsockopt`` and a few fixed offsets of ``struct tcp_info``
(``include/uapi/linux/tcp.h``); every decision stays in the core. Where the option is missing
(another OS, a stream without a TCP socket, a closed socket) the answer is None and the
profile simply changes nothing.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import trio

from pulse._core.lossy import TcpProgress
from pulse._driver.streams import socket_of

#: ``TCP_INFO`` (11 on Linux) when the platform has it.
TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)

# Offsets into struct tcp_info: eight __u8 fields, then __u32 fields from byte 8 on.
_RETRANSMITS = 2
_BACKOFF = 4
_RTO = 8             # microseconds
_UNACKED = 24
_LAST_DATA_RECV = 52  # milliseconds ago
_LAST_ACK_RECV = 56   # milliseconds ago
_TOTAL_RETRANS = 100
#: Bytes read: up to and including tcpi_total_retrans (present since Linux 2.6).
TCP_INFO_SIZE = 104

_U32 = struct.Struct("=I")


def tcp_socket(stream: trio.abc.Stream) -> Any | None:
    """The TCP socket under ``stream``: a socket stream or a TLS stream over one."""
    plain = socket_of(stream)
    return plain.socket if plain is not None else None


def parse_tcp_info(raw: bytes) -> TcpProgress | None:
    """The fields the lossy-link profile uses, from the bytes of ``struct tcp_info``."""
    if len(raw) < TCP_INFO_SIZE:
        return None

    def u32(offset: int) -> int:
        value: int = _U32.unpack_from(raw, offset)[0]
        return value

    return TcpProgress(
        last_ack_recv=u32(_LAST_ACK_RECV) / 1000.0,
        last_data_recv=u32(_LAST_DATA_RECV) / 1000.0,
        total_retrans=u32(_TOTAL_RETRANS),
        retransmits=raw[_RETRANSMITS],
        backoff=raw[_BACKOFF],
        unacked=u32(_UNACKED),
        rto=u32(_RTO) / 1e6,
    )


def read_tcp_progress(sock: Any | None) -> TcpProgress | None:
    """Sample ``TCP_INFO`` of ``sock`` (a stdlib or trio socket); None when unavailable."""
    if sock is None or TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_SIZE)
    except (OSError, ValueError):  # closed, not TCP, or the platform refuses
        return None
    return parse_tcp_info(raw)
