"""The embedded lease server and its client: ZooKeeper-style sessions, ephemeral keys and
presence watches over length-prefixed msgpack on TCP (URL scheme ``pulse://host:port``).

``serve`` runs a lease server (``pulse serve --listen pulse://0.0.0.0:7400``);
``connect_session`` opens a :class:`pulse.presence.PresenceSession` on one or more servers
(``pulse://host1:7400,host2:7400``). See ``docs/leasing.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from typing import Any

import trio

from pulse.presence import PresenceSession
from pulse.registry import Endpoint, Plugin, ServeOptions

from .state import Limits

SERVER_OPTIONS = ("data_dir", "tick", "server_id", "min_timeout", "max_timeout")
LIMIT_OPTIONS = tuple(f.name for f in fields(Limits))


def server_config(extra: Mapping[str, Any]) -> Any:
    """A :class:`.server.ServerConfig` from ``pulse serve`` options (None means default).

    Recognised keys: ``data_dir``, ``tick``, ``server_id``, ``min_timeout``,
    ``max_timeout`` and every :class:`.state.Limits` field (``max_sessions``,
    ``max_sessions_per_address``, ``max_keys_per_session``, ``max_watches_per_session``,
    ``max_data_size``, ``max_request_rate``, ``max_pending_notifications``).
    """
    from .server import ServerConfig

    given = {k: v for k, v in extra.items() if v is not None}
    limits = Limits(**{k: given[k] for k in LIMIT_OPTIONS if k in given})
    settings: dict[str, Any] = {k: given[k] for k in SERVER_OPTIONS if k in given}
    if "data_dir" in settings:
        settings["data_dir"] = str(settings["data_dir"])
    if "tick" in settings:
        settings["tick"] = float(settings["tick"])
    return ServerConfig(limits=limits, **settings)


async def serve(
    endpoint: Endpoint,
    options: ServeOptions,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a lease server on ``endpoint`` until cancelled; ``task_status.started`` receives
    the listeners (as for the other transport plugins)."""
    from .server import LeaseServer

    server = LeaseServer(server_config(options.extra))
    await server.serve_tcp(endpoint.host, endpoint.port, task_status=task_status)


def connect_session(
    endpoint: Endpoint, *, session_timeout: float = 10.0, **options: Any
) -> AbstractAsyncContextManager[PresenceSession]:
    """Open a lease session on the servers of ``endpoint`` (see :func:`.client.connect`)."""
    from .client import connect

    return connect(list(endpoint.hosts), session_timeout, **options)


plugin = Plugin(
    name="lease",
    description="embedded lease server: sessions, ephemeral keys and presence watches",
    serve=serve,
    connect_session=connect_session,
)
