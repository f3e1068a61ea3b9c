"""The embedded lease server and its client: ZooKeeper-style sessions, ephemeral keys and
presence watches over length-prefixed msgpack on TCP (URL scheme ``pulse://host:port``).

``serve`` runs a lease server (``pulse serve --listen pulse://0.0.0.0:7400``);
:func:`connect` opens a :class:`LeaseSession` (a :class:`pulse.presence.PresenceSession`) on
one or more servers (``pulse://host1:7400,host2:7400``), with the same shape as
:func:`pulse.plugins.zookeeper.connect` and :func:`pulse.registry.connect_session`. See
``docs/leasing.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import fields
from typing import Any

import anyio
import anyio.abc

from pulse._deprecation import deprecated
from pulse.presence import PresenceSession
from pulse.registry import Endpoint, Plugin, ServeOptions, parse_url

from .client import KeyWatchStream, LeaseSession, parse_servers
from .errors import AccessDenied, WatchKeyUnsupported
from .server import AccessPolicy, LeaseServer, ServerConfig
from .state import Limits

#: The lease server's default port (``pulse://host`` without a port).
DEFAULT_PORT = 7400

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
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a lease server on ``endpoint`` until cancelled; ``task_status.started`` receives
    the listeners (as for the other transport plugins)."""
    from .server import LeaseServer

    server = LeaseServer(server_config(options.extra))
    await server.serve_tcp(endpoint.host, endpoint.port, task_status=task_status)


def connect(
    servers: Endpoint | str | Sequence[tuple[str, int]],
    *,
    session_timeout: float = 10.0,
    **options: Any,
) -> AbstractAsyncContextManager[LeaseSession]:
    """Open a lease session; the context manager yields it connected and closes it.

    ``servers`` is a ``pulse://host:port,host:port`` URL, a parsed :class:`Endpoint`, a
    ``"host:port,host:port"`` string or a list of ``(host, port)`` pairs. ``options`` are
    :class:`LeaseSession`'s (``reregister``, ``client_id``, ``token``, ``ssl_context``,
    ``max_frame_size``, ``session_id``, ``session_password``, ``start_timeout``, …).
    """
    from .client import connect as open_session

    if isinstance(servers, str):
        servers = (parse_url(servers, DEFAULT_PORT) if "://" in servers
                   else parse_servers(servers))
    if isinstance(servers, Endpoint):
        if servers.scheme != "pulse":
            raise ValueError(f"not a lease server URL: {servers.raw or servers.scheme!r} "
                             "(expected pulse://host:port)")
        servers = list(servers.hosts)
    return open_session(list(servers), session_timeout, **options)


def _connect_session(
    endpoint: Endpoint, *, session_timeout: float = 10.0, **options: Any
) -> AbstractAsyncContextManager[PresenceSession]:
    return connect(endpoint, session_timeout=session_timeout, **options)


def __getattr__(name: str) -> Any:
    if name == "connect_session":
        deprecated("pulse.plugins.lease.connect_session",
                   "pulse.plugins.lease.connect (or pulse.registry.connect_session)")
        return _connect_session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


plugin = Plugin(
    name="lease",
    description="embedded lease server: sessions, ephemeral keys and presence watches",
    serve=serve,
    connect_session=_connect_session,
    default_ports={"pulse": DEFAULT_PORT},
)

__all__ = [
    "DEFAULT_PORT",
    "AccessDenied",
    "AccessPolicy",
    "KeyWatchStream",
    "LeaseServer",
    "LeaseSession",
    "Limits",
    "ServerConfig",
    "WatchKeyUnsupported",
    "connect",
    "plugin",
    "read_credentials",
    "serve",
    "server_config",
]
