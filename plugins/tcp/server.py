"""A TCP (optionally TLS) server that heartbeats every client and drops dead ones."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import trio

from pulse._core.policy import HeartbeatPolicy
from pulse._deprecation import deprecated
from pulse._driver import streams
from pulse._driver.connection import HeartbeatConnection, heartbeat
from pulse._driver.offenders import OffenderDoor
from pulse._driver.streams import SocketStream, accept_tls, peer_name
from pulse._log import get_logger
from pulse.errors import PingFlood, PulseError

from .keepalive import TcpKeepalive

log = get_logger("pulse.tcp")

Handler = Callable[[HeartbeatConnection], Awaitable[None]]


def tune_socket(stream: SocketStream, keepalive: TcpKeepalive | None) -> None:
    """Apply OS keepalive settings (warnings, never silence, when unsupported)."""
    if keepalive is None:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keepalive.apply(stream.socket)
    for warning in caught:
        log.warning("keepalive_option_unsupported", reason=str(warning.message))


async def serve_tcp(
    handler: Handler,
    *args: int,
    host: str = "127.0.0.1",
    port: int = 0,
    policy: HeartbeatPolicy | None = None,
    keepalive: TcpKeepalive | None = None,
    ssl_context: ssl.SSLContext | None = None,
    peer_id: str = "pulse-server",
    handshake_timeout: float = 10.0,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
    **heartbeat_options: Any,
) -> None:
    """Accept connections forever; run ``handler(conn)`` for each heartbeat connection.

    A client that stops answering is declared dead and its connection closed (``handler``
    sees :class:`~pulse.errors.PeerTimeout` from ``receive``). An error in one connection —
    a bad frame, a failed handshake, an exception in ``handler`` — is logged and closes only
    that connection; the server keeps serving everyone else. ``task_status.started`` receives
    the listeners (their ``socket.getsockname()`` tells the bound port when ``port`` is 0).

    Every argument after ``handler`` is a keyword (the shape of every ``serve_*`` in pulse);
    the old positional port, ``serve_tcp(handler, 7070)``, still works with a
    :class:`DeprecationWarning`.
    """
    if args:
        if len(args) > 1:
            raise TypeError(f"serve_tcp() takes the handler and keywords, got {len(args) + 1} "
                            "positional arguments")
        deprecated("serve_tcp(handler, port)", "serve_tcp(handler, port=port)")
        port = args[0]

    door = OffenderDoor(log)

    async def one_client(stream: SocketStream) -> None:
        peer = peer_name(stream)
        transport = "tls" if ssl_context is not None else "tcp"
        conn: HeartbeatConnection | None = None
        if door.refuses(peer, transport):
            # Closed for a flood moments ago: no handshake, no heartbeat, just the door.
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        try:
            tune_socket(stream, keepalive)
            wrapped: trio.abc.Stream = stream
            if ssl_context is not None:
                wrapped = await accept_tls(stream, ssl_context, timeout=handshake_timeout,
                                           peer=peer)
            async with heartbeat(
                wrapped, policy, peer_id=peer_id, handshake_timeout=handshake_timeout,
                peer=peer, transport=transport, **heartbeat_options,
            ) as conn:
                await handler(conn)
        except (PulseError, trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                ssl.SSLError) as exc:
            log.info("client_dropped", peer=peer, transport=transport, reason=str(exc) or repr(exc))
        except Exception:  # a bug in the handler must not take the server down
            log.exception("handler_failed", peer=peer, transport=transport)
        finally:
            if conn is not None and isinstance(conn.close_error, PingFlood):
                door.offence(peer, transport)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    await streams.serve_tcp(one_client, port, host=host, task_status=task_status)


async def echo(conn: HeartbeatConnection) -> None:
    """Echo every application message back; log the connection's liveness changes."""
    try:
        async for message in conn:
            await conn.send(message)
    except PulseError as exc:
        log.info("client_dead", peer=conn.peer, transport=conn.transport, reason=str(exc))
