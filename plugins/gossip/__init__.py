"""Gossip membership compatible with HashiCorp memberlist (and so with Serf).

For now this package holds the wire codec only (:mod:`pulse.plugins.gossip.codec`); the
driver and the ``gossip://`` plugin build on it.
"""

from __future__ import annotations

from . import codec
from .codec import (
    EncryptionNotSupported,
    GossipProtocolError,
    GossipTooLarge,
    StreamDecoder,
    decode_packet,
    decode_serf_tags,
    decode_stream,
    encode_packet,
    encode_serf_tags,
    encode_stream,
)

__all__ = [
    "EncryptionNotSupported",
    "GossipProtocolError",
    "GossipTooLarge",
    "StreamDecoder",
    "codec",
    "decode_packet",
    "decode_serf_tags",
    "decode_stream",
    "encode_packet",
    "encode_serf_tags",
    "encode_stream",
]
