"""The ``ws://`` and ``wss://`` entries of the plugin registry: an echo server and a pinger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import anyio.abc

from pulse._core.policy import HeartbeatPolicy, with_profile
from pulse._driver.engine import current_engine
from pulse._driver.pinger import ping_series
from pulse._driver.tcpinfo import read_tcp_progress, tcp_socket
from pulse._driver.tls import client_context, server_context
from pulse.registry import Endpoint, PingOptions, PingReply, Plugin, ServeOptions

from .connection import (
    CloseReceived,
    PingReceived,
    PongReceived,
    WebSocketConnection,
)
from .errors import WebSocketClosed
from .handshake import open_connection
from .heartbeat import ping_payload, pong_seq
from .server import echo, serve_websocket
from .transport import open_stream, parse_ws_url


async def _serve(
    endpoint: Endpoint, options: ServeOptions, *,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Echo every message back and heartbeat every client (``pulse serve --listen ws://…``).

    ``task_status.started`` receives the listeners, as the other transport plugins do.
    """
    policy = with_profile(HeartbeatPolicy(options.interval, options.timeout), options.profile)
    context = server_context(endpoint, options, "wss")
    async with anyio.create_task_group() as nursery:
        server = await nursery.start(
            partial(serve_websocket, echo, host=endpoint.host, port=endpoint.port, policy=policy,
                    ssl_context=context)
        )
        task_status.started(server.listeners)


CLOSE_GRACE = 1.0
"""Seconds ``pulse ping`` gives its close frame before it hangs up."""


async def _ping(endpoint: Endpoint, options: PingOptions) -> AsyncIterator[PingReply]:
    """RFC 6455 pings whose payload carries the sequence number; one reply per pong.

    Raises :class:`~pulse.errors.PeerTimeout` when a pong does not arrive within
    ``options.timeout`` and :class:`~.errors.WebSocketClosed` when the server closes.
    """
    url = parse_ws_url(endpoint.raw) if endpoint.raw else parse_ws_url(
        f"{endpoint.scheme}://{endpoint.host}:{endpoint.port}{endpoint.path}")
    context = client_context(endpoint, "wss")
    engine = current_engine()
    conn, _ = await open_connection(url, open_stream, context, timeout=options.timeout)
    if options.on_connected is not None:
        options.on_connected(url.peer)

    async def probe(seq: int) -> None:
        await _one_ping(conn, seq, engine.now() + options.timeout)

    sock = tcp_socket(conn.stream)
    try:
        async for reply in ping_series(options, url.peer, probe,
                                       progress=lambda: read_tcp_progress(sock)):
            yield reply
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if conn.can_send_close:
                    conn.abort_write(CLOSE_GRACE)  # the goodbye's bound
                    await conn.write(conn.encode_close(1000, "pulse ping done"))
            except WebSocketClosed:
                pass
        await conn.aclose()


async def _one_ping(conn: WebSocketConnection, seq: int, deadline: float) -> None:
    """Send ping ``seq`` and return when its pong arrives (a write gives up at ``deadline``;
    the caller bounds the wait)."""
    await conn.write(conn.encode_ping(ping_payload(seq)), deadline=deadline)
    while True:
        event = await conn.receive_event()
        if isinstance(event, PingReceived):
            await conn.write(conn.encode_pong(event.payload), deadline=deadline)
        elif isinstance(event, PongReceived) and pong_seq(event.payload) == seq:
            return
        elif isinstance(event, CloseReceived):
            raise WebSocketClosed(f"server closed with code {event.code}: {event.reason}",
                                  event.code)


plugin = Plugin(
    name="websocket",
    description="WebSocket (RFC 6455) with ping/pong heartbeats and resilient reconnects",
    serve=_serve,
    ping=_ping,
    default_ports={"ws": 80, "wss": 443},
)
