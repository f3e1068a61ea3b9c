"""The ``tcp://`` and ``tls://`` entries of the plugin registry."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import trio

from pulse._core.policy import HeartbeatPolicy
from pulse.errors import PeerTimeout
from pulse.registry import Endpoint, PingOptions, PingReply, Plugin, ServeOptions

from .client import connect_tcp
from .server import echo_handler, serve_tcp


def _server_ssl(endpoint: Endpoint, options: ServeOptions) -> ssl.SSLContext | None:
    if endpoint.scheme != "tls":
        return None
    certfile = options.extra.get("certfile")
    if not certfile:
        raise ValueError("tls:// needs a certificate: pass certfile (and keyfile)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, options.extra.get("keyfile"))
    return context


def _client_ssl(endpoint: Endpoint) -> ssl.SSLContext | None:
    if endpoint.scheme != "tls":
        return None
    context = ssl.create_default_context()
    cafile = endpoint.query.get("cafile")
    if cafile:
        context.load_verify_locations(cafile)
    return context


async def _serve(
    endpoint: Endpoint, options: ServeOptions, *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    policy = HeartbeatPolicy(options.interval, options.timeout)
    await serve_tcp(
        echo_handler, endpoint.port, host=endpoint.host, policy=policy,
        ssl_context=_server_ssl(endpoint, options), task_status=task_status,
    )


async def _ping(endpoint: Endpoint, options: PingOptions) -> AsyncIterator[PingReply]:
    # Idle heartbeats are kept out of the way: pulse ping sends its own, on demand.
    policy = HeartbeatPolicy(interval=max(options.interval, options.timeout) * 10,
                             timeout=max(options.interval, options.timeout) * 30)
    async with connect_tcp(
        endpoint.host, endpoint.port, policy, ssl_context=_client_ssl(endpoint),
        connect_timeout=options.timeout, peer_id="pulse-ping",
    ) as conn:
        seq = 0
        while options.count is None or seq < options.count:
            seq += 1
            started = trio.current_time()
            try:
                rtt = await conn.ping(timeout=options.timeout)
            except PeerTimeout:
                raise PeerTimeout(
                    f"no answer from {endpoint.host}:{endpoint.port} within {options.timeout:g}s"
                ) from None
            yield PingReply(seq, rtt, conn.peer)
            if options.count is None or seq < options.count:
                await trio.sleep_until(started + options.interval)


plugin = Plugin(
    name="tcp",
    description="pulse frames over raw TCP or TLS, with OS keepalive tuning",
    serve=_serve,
    ping=_ping,
)
