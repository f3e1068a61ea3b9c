"""The ``tcp://`` and ``tls://`` entries of the plugin registry."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc

from pulse._core.policy import PROFILES, HeartbeatPolicy, with_profile
from pulse._driver.pinger import ping_series
from pulse._driver.tcpinfo import read_tcp_progress, tcp_socket
from pulse._driver.tls import client_context, server_context
from pulse.errors import PeerTimeout
from pulse.registry import Endpoint, PingOptions, PingReply, Plugin, ServeOptions

from .client import connect_tcp
from .server import echo, serve_tcp


async def _serve(
    endpoint: Endpoint, options: ServeOptions, *,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    policy = with_profile(HeartbeatPolicy(options.interval, options.timeout), options.profile)
    await serve_tcp(
        echo, port=endpoint.port, host=endpoint.host, policy=policy,
        ssl_context=server_context(endpoint, options, "tls"), task_status=task_status,
    )


async def _ping(endpoint: Endpoint, options: PingOptions) -> AsyncIterator[PingReply]:
    # ``?bind=ADDR`` in the URL connects from that local address (one path of several).
    # Idle heartbeats are kept out of the way: pulse ping sends its own, on demand.
    # Under a profile the connection's own verdict (whatever timeout the peer negotiates)
    # follows it too.
    policy = HeartbeatPolicy(interval=max(options.interval, options.timeout) * 10,
                             timeout=max(options.interval, options.timeout) * 30,
                             lossy=PROFILES[options.profile])
    async with connect_tcp(
        endpoint.host, endpoint.port, policy, ssl_context=client_context(endpoint, "tls"),
        connect_timeout=options.timeout, peer_id="pulse-ping",
        local_address=endpoint.query.get("bind") or None,
    ) as conn:
        if options.on_connected is not None:
            options.on_connected(conn.peer)
        # The peer may have negotiated a shorter timeout than asked: the connection then
        # gives up on a silent peer sooner, and the report says so.
        limit = options.timeout
        if conn.policy.enabled and 0 < conn.policy.dead_after < limit:
            limit = conn.policy.dead_after
        peer = f"{endpoint.host}:{endpoint.port}"

        lossy = PROFILES.get(options.profile) is not None
        sock = tcp_socket(conn.stream)

        async def probe(_seq: int) -> float:
            try:
                # Under a profile the series decides how long an answer may take.
                return await conn.ping(timeout=math.inf if lossy else options.timeout)
            except PeerTimeout:
                if limit < options.timeout and conn.closed:
                    raise PeerTimeout(
                        f"no answer from {peer} within {limit:g}s, the timeout negotiated with "
                        f"the peer (shorter than the {options.timeout:g}s asked for)"
                    ) from None
                raise PeerTimeout(f"no answer from {peer} within {options.timeout:g}s") from None

        async for reply in ping_series(options, peer, probe,
                                       progress=lambda: read_tcp_progress(sock)):
            yield PingReply(reply.seq, reply.rtt, conn.peer)


plugin = Plugin(
    name="tcp",
    description="pulse frames over raw TCP or TLS, with OS keepalive tuning",
    serve=_serve,
    ping=_ping,
)
