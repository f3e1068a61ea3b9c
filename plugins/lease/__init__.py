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
#: Environment variables read by :func:`server_config` when the option is not given.
TOKEN_ENV = "PULSE_LEASE_TOKEN"
CREDENTIALS_ENV = "PULSE_LEASE_CREDENTIALS_FILE"
LIMIT_OPTIONS = tuple(f.name for f in fields(Limits))


def server_config(extra: Mapping[str, Any]) -> Any:
    """A :class:`.server.ServerConfig` from ``pulse serve`` options (None means default).

    Recognised keys: ``data_dir``, ``tick``, ``server_id``, ``min_timeout``,
    ``max_timeout``, every :class:`.state.Limits` field (``max_sessions``,
    ``max_bytes_per_session``, ``max_request_rate``, …), ``certfile`` + ``keyfile`` (serve
    TLS), ``auth_token`` / ``auth_token_file`` (a shared token; default: the
    ``PULSE_LEASE_TOKEN`` environment variable) and ``credentials_file`` (default:
    ``PULSE_LEASE_CREDENTIALS_FILE``), a file of ``client_id:secret`` lines, optionally
    followed by ``:prefix,prefix`` the client is granted).
    """
    import os
    import ssl

    from .server import AccessPolicy, ServerConfig

    given = {k: v for k, v in extra.items() if v is not None}
    limits = Limits(**{k: given[k] for k in LIMIT_OPTIONS if k in given})
    settings: dict[str, Any] = {k: given[k] for k in SERVER_OPTIONS if k in given}
    if "data_dir" in settings:
        settings["data_dir"] = str(settings["data_dir"])
    if "tick" in settings:
        settings["tick"] = float(settings["tick"])
    if given.get("certfile"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(given["certfile"]), given.get("keyfile") and str(given["keyfile"]))
        settings["ssl_context"] = context
    token: bytes | None = None
    if given.get("auth_token"):
        token = str(given["auth_token"]).encode()
    elif given.get("auth_token_file"):
        token = _read_secret(str(given["auth_token_file"]))
    elif os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].encode()
    credentials_file = given.get("credentials_file") or os.environ.get(CREDENTIALS_ENV)
    credentials, grants = ({}, {}) if not credentials_file else read_credentials(
        str(credentials_file))
    if token is not None or credentials:
        settings["access"] = AccessPolicy(token=token, credentials=credentials, grants=grants)
    return ServerConfig(limits=limits, **settings)


def _read_secret(path: str) -> bytes:
    with open(path, "rb") as file:
        secret = file.read().strip()
    if not secret:
        raise ValueError(f"{path} holds no secret")
    return secret


def read_credentials(path: str) -> tuple[dict[str, bytes], dict[str, tuple[str, ...]]]:
    """``client_id:secret[:prefix,prefix]`` lines (``#`` comments) → credentials, grants."""
    from .protocol import BadRequest, check_client_id, check_key

    credentials: dict[str, bytes] = {}
    grants: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8") as file:
        for number, raw in enumerate(file, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            client_id, sep, rest = line.partition(":")
            secret, _, prefixes = rest.partition(":")
            try:
                check_client_id(client_id)
                for prefix in filter(None, prefixes.split(",")):
                    check_key(prefix.strip())
            except (BadRequest, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            if not sep or not secret:
                raise ValueError(f"{path}:{number}: expected client_id:secret[:prefixes]")
            credentials[client_id] = secret.encode()
            if prefixes:
                grants[client_id] = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    return credentials, grants


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
