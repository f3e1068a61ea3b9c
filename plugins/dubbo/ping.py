"""``pulse ping dubbo://host:port``: measure a Dubbo 2 provider's heartbeat round trips.

Sends one Dubbo heartbeat request per ``interval`` on a single connection and yields a
:class:`~pulse.registry.PingReply` per response. Heartbeats the provider sends meanwhile are
answered, so a real Dubbo provider keeps the connection open; other frames are ignored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from pulse._driver.pinger import ping_series
from pulse._driver.streams import dial
from pulse.errors import ConnectionClosed
from pulse.registry import Endpoint, PingOptions, PingReply
from pulse.rpc import RequestIds

from . import codec
from .channel import READ_CHUNK
from .codec import FrameDecoder


async def _await_response(
    stream: trio.abc.Stream, decoder: FrameDecoder, request_id: int, peer: str
) -> None:
    while True:
        data = await stream.receive_some(READ_CHUNK)
        if not data:
            decoder.feed_eof()
            raise ConnectionClosed(f"{peer} closed the connection")
        for frame in decoder.feed(data):
            if frame.is_heartbeat_request and frame.two_way:
                await stream.send_all(codec.reply_to_heartbeat(frame))
            elif frame.is_heartbeat_response and frame.request_id == request_id:
                return


async def ping(endpoint: Endpoint, options: PingOptions) -> AsyncIterator[PingReply]:
    """Yield one :class:`PingReply` per answered heartbeat; raise
    :class:`~pulse.errors.PeerTimeout` when one goes unanswered for ``options.timeout``."""
    peer = f"{endpoint.host}:{endpoint.port}"
    stream = await dial(endpoint.host, endpoint.port, timeout=options.timeout)
    ids = RequestIds()
    decoder = FrameDecoder()
    if options.on_connected is not None:
        options.on_connected(peer)
    async def probe(_seq: int) -> None:
        request_id = ids()
        await stream.send_all(codec.heartbeat_request(request_id))
        await _await_response(stream, decoder, request_id, peer)

    async with stream:
        async for reply in ping_series(options, peer, probe):
            yield reply
