"""Gossip membership compatible with HashiCorp memberlist (and so with Serf).

* :func:`gossip_member` — be a member of a group (:class:`GossipMember`, its ``members()``
  and ``events()``).
* :func:`connect` — a presence session (:class:`GossipSession`) as a member of the group
  reached through ``gossip://seed1:7946,seed2:7946``, with the same shape as every
  session plugin (``connect(url, *, session_timeout, **options)``).
* :mod:`pulse.plugins.gossip.codec` — the wire codec.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from pulse.registry import Endpoint, parse_url

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
from .driver import GossipJoinError, GossipMember, gossip_member, tags_of
from .presence import GossipSession

#: memberlist's default port.
DEFAULT_PORT = 7946


def connect(endpoint: Endpoint | str, *, session_timeout: float = 10.0,
            **options: Any) -> AbstractAsyncContextManager[GossipSession]:
    """A presence session in the group reached through ``endpoint`` (a ``gossip://`` URL or
    a parsed :class:`~pulse.registry.Endpoint`); ``options`` as for
    :func:`.presence.connect_gossip_session` (``bind``, ``name``, ``advertise``, ``config``,
    ``start_timeout``)."""
    from .presence import connect_gossip_session

    if isinstance(endpoint, str):
        endpoint = parse_url(endpoint, DEFAULT_PORT)
    if endpoint.scheme != "gossip":
        raise ValueError(f"not a gossip URL: {endpoint.raw or endpoint.scheme!r} "
                         "(expected gossip://seed:7946)")
    return connect_gossip_session(endpoint, session_timeout=session_timeout, **options)


__all__ = [
    "DEFAULT_PORT",
    "EncryptionNotSupported",
    "GossipJoinError",
    "GossipMember",
    "GossipProtocolError",
    "GossipSession",
    "GossipTooLarge",
    "StreamDecoder",
    "codec",
    "connect",
    "decode_packet",
    "decode_serf_tags",
    "decode_stream",
    "encode_packet",
    "encode_serf_tags",
    "encode_stream",
    "gossip_member",
    "tags_of",
]
