"""Decoded SWIM messages, shaped after HashiCorp memberlist's wire structures.

The pure SWIM machine (:mod:`pulse._core.swim`) consumes and produces these value objects; the
memberlist codec (``pulse.plugins.gossip.codec``) turns them into bytes and back. Wrappers that
exist only on the wire (compound packets, LZW compression, the CRC header) never reach the core.

Conventions:

* an address is ``(host, port)`` with ``host`` a textual IPv4 or IPv6 address;
* node names are text; metadata and payloads are bytes;
* ``vsn`` is memberlist's version vector ``(pmin, pmax, pcur, dmin, dmax, dcur)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: ``(host, port)``: a textual IP address and a UDP/TCP port.
Addr = tuple[str, int]

#: memberlist refuses node metadata longer than this (``MetaMaxSize``).
META_MAX_SIZE = 512


class NodeState(enum.IntEnum):
    """A member's state as memberlist numbers it on the wire (``NodeStateType``)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    """A probe; ``node`` names the intended target (empty: whoever listens there)."""

    seq_no: int
    node: str
    source_addr: Addr | None = None
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to probe ``target`` on our behalf and relay its ack (and a nack)."""

    seq_no: int
    target: Addr
    node: str
    nack: bool = False
    source_addr: Addr | None = None
    source_node: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a ping carrying its sequence number."""

    seq_no: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    """An indirect prober could not reach the target within its probe timeout."""

    seq_no: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """``from_node`` suspects ``node`` at ``incarnation``."""

    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class Alive:
    """``node`` is alive at ``incarnation`` with this address, metadata and versions."""

    incarnation: int
    node: str
    addr: Addr
    meta: bytes = b""
    vsn: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Dead:
    """``from_node`` declares ``node`` dead; ``from_node == node`` means a graceful leave."""

    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class UserMsg:
    """An application message carried by the gossip layer; the core passes it up."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ErrResp:
    """An error string the remote side reports on a stream."""

    error: str


@dataclass(frozen=True, slots=True)
class PushNodeState:
    """One member as a push-pull exchange carries it."""

    name: str
    addr: Addr
    meta: bytes
    incarnation: int
    state: NodeState
    vsn: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PushPull:
    """A full state exchange (TCP): every member we know, plus opaque user state."""

    join: bool
    states: tuple[PushNodeState, ...]
    user_state: bytes = b""


#: Messages that travel in UDP packets (possibly several per packet).
PacketMessage = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | UserMsg
#: Messages that travel on a TCP stream.
StreamMessage = PushPull | Ping | Ack | UserMsg | ErrResp
Message = PacketMessage | PushPull | ErrResp


def _str_size(n: int) -> int:
    if n < 32:
        return 1 + n
    if n < 65536:
        return 3 + n
    return 5 + n


def _addr_size(addr: Addr | None) -> int:
    # IP bytes (4 or 16) + port (uint16, at most 3 bytes).
    if addr is None:
        return 0
    return _str_size(16 if ":" in addr[0] else 4) + 3


def wire_size(msg: PacketMessage) -> int:
    """An upper bound of the encoded size of ``msg`` (type byte + msgpack map), in bytes.

    The core uses it to pack piggybacked gossip into one UDP packet without knowing the
    codec; it never under-estimates the memberlist encoding.
    """
    head = 2  # message type byte + fixmap header
    key = 12  # the longest field name ("Incarnation", "SourceAddr"...) with its header
    uint = 5
    match msg:
        case Ping():
            return (head + 5 * key + uint + _str_size(len(msg.node.encode()))
                    + _addr_size(msg.source_addr) + _str_size(len(msg.source_node.encode())))
        case IndirectPing():
            return (head + 8 * key + uint + _addr_size(msg.target) + _str_size(len(msg.node.encode()))
                    + 1 + _addr_size(msg.source_addr) + _str_size(len(msg.source_node.encode())))
        case Ack():
            return head + 2 * key + uint + _str_size(len(msg.payload))
        case Nack():
            return head + key + uint
        case Suspect() | Dead():
            return (head + 3 * key + uint + _str_size(len(msg.node.encode()))
                    + _str_size(len(msg.from_node.encode())))
        case Alive():
            return (head + 6 * key + uint + _str_size(len(msg.node.encode())) + _addr_size(msg.addr)
                    + _str_size(len(msg.meta)) + _str_size(len(msg.vsn)))
        case UserMsg():
            return 1 + len(msg.payload)
    raise TypeError(f"not a packet message: {msg!r}")  # pragma: no cover
