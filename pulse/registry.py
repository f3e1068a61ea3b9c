"""Plugin discovery: one registry, keyed by URL scheme, fed by entry points.

A plugin is a :class:`Plugin` object published under the entry-point group
``pulse.plugins``; the entry point's *name* is the URL scheme it serves (one entry per
scheme; several may point at the same object). pulse's own adapters are registered exactly
like third-party ones, so ``pulse serve --listen ws://…`` and user code share one path::

    [project.entry-points."pulse.plugins"]
    myproto = "mypkg.pulse_plugin:plugin"

A plugin offers any subset of three capabilities: ``serve`` (listen and heartbeat
clients), ``ping`` (measure a peer's round trips) and ``connect_session`` (a
:class:`pulse.presence.PresenceSession` backend). Asking for one it lacks raises
:class:`pulse.errors.NoPlugin` with a clear message.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from pulse._core.policy import PROFILES
from pulse.errors import NoPlugin
from pulse.presence import PresenceSession

ENTRY_POINT_GROUP = "pulse.plugins"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Endpoint",
    "PingFn",
    "PingOptions",
    "PingReply",
    "Plugin",
    "ServeFn",
    "ServeOptions",
    "SessionFn",
    "available_schemes",
    "connect_session",
    "get_plugin",
    "parse_url",
    "ping_function",
    "serve_function",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed pulse URL: ``scheme://host1:port1,host2:port2/path?key=value``."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    raw: str = ""

    @property
    def host(self) -> str:
        """The first host."""
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        """The first port."""
        return self.hosts[0][1]


def parse_url(url: str, default_port: int | None = None) -> Endpoint:
    """Split a URL into scheme, one or more ``host:port`` pairs, path and query.

    IPv6 hosts are written in brackets (``tcp://[::1]:7070``). A missing port takes
    ``default_port``; without one a :class:`ValueError` says what is missing.
    """
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise ValueError(f"not a URL with a scheme: {url!r} (expected e.g. tcp://127.0.0.1:7070)")
    hosts: list[tuple[str, int]] = []
    for item in parts.netloc.split(","):
        item = item.rsplit("@", 1)[-1]
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        if port_text:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise ValueError(f"bad port {port_text!r} in {url!r}")
            port = int(port_text)
        elif default_port is not None:
            port = default_port
        else:
            raise ValueError(f"no port in {url!r}")
        hosts.append((host or "127.0.0.1", port))
    if not hosts:
        raise ValueError(f"no host in {url!r}")
    query = dict(urllib.parse.parse_qsl(parts.query))
    return Endpoint(parts.scheme.lower(), tuple(hosts), parts.path, query, url)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``pulse serve`` asks of a plugin: heartbeat timing and plugin-specific extras."""

    interval: float = 10.0
    timeout: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: A named heartbeat profile (``"default"`` or ``"lossy"``, see
    #: :data:`pulse._core.policy.PROFILES`); TCP-based plugins apply it, others ignore it.
    profile: str = "default"

    def __post_init__(self) -> None:
        _check_profile(self.profile)


@dataclass(frozen=True, slots=True)
class PingOptions:
    """What ``pulse ping`` asks of a plugin."""

    interval: float = 1.0
    timeout: float = 5.0
    count: int | None = None
    #: A named heartbeat profile (``"default"`` or ``"lossy"``); TCP-based plugins apply it.
    profile: str = "default"
    #: Called with the peer's name once the connection is up (before the first heartbeat),
    #: so the caller can tell "never connected" from "connected, then no answer".
    on_connected: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        _check_profile(self.profile)


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")


@dataclass(frozen=True, slots=True)
class PingReply:
    """One answered heartbeat: sequence number and round-trip time in seconds."""

    seq: int
    rtt: float
    peer: str


ServeFn = Callable[..., Coroutine[Any, Any, None]]
PingFn = Callable[[Endpoint, PingOptions], AsyncIterator[PingReply]]
SessionFn = Callable[..., AbstractAsyncContextManager[PresenceSession]]


@dataclass(frozen=True, slots=True)
class Plugin:
    """A transport adapter as the registry sees it.

    ``serve(endpoint, options, *, task_status=anyio.TASK_STATUS_IGNORED)`` runs a server until
    cancelled (it calls ``task_status.started(listeners)`` once listening);
    ``ping(endpoint, options)`` yields one :class:`PingReply` per answered heartbeat and
    raises a :class:`pulse.errors.PulseError` (or ``OSError``) when the peer is dead or
    unreachable; ``connect_session(endpoint, *, session_timeout, **options)`` returns an async
    context manager yielding a :class:`PresenceSession`. ``default_ports`` fills in URLs that
    name no port, per scheme (``{"zk": 2181}``, ``{"ws": 80, "wss": 443}``).
    """

    name: str
    description: str
    serve: ServeFn | None = None
    ping: PingFn | None = None
    connect_session: SessionFn | None = None
    default_ports: Mapping[str, int] = field(default_factory=dict)


def available_schemes() -> dict[str, str]:
    """Every registered scheme and the entry point it loads (nothing is imported)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_plugin(scheme: str) -> Plugin:
    """Load the plugin registered for ``scheme`` (``tcp``, ``ws``, ``zk``…)."""
    scheme = scheme.lower().removesuffix("://")
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    if not matches:
        known = ", ".join(sorted(available_schemes())) or "none"
        raise NoPlugin(f"no plugin for scheme {scheme!r} (registered: {known})")
    plugin = matches[0].load()
    if not isinstance(plugin, Plugin):
        raise NoPlugin(f"entry point {matches[0].value!r} for {scheme!r} is not a pulse Plugin")
    return plugin


def _capability(url: str, name: str) -> tuple[Endpoint, Any]:
    scheme, separator, _ = url.partition("://")
    if not separator or not scheme:
        raise ValueError(f"not a URL with a scheme: {url!r} (expected e.g. tcp://127.0.0.1:7070)")
    plugin = get_plugin(scheme)
    endpoint = parse_url(url, plugin.default_ports.get(scheme.lower()))
    fn = getattr(plugin, name)
    if fn is None:
        raise NoPlugin(f"the {plugin.name} plugin ({endpoint.scheme}://) cannot {name.replace('_', ' ')}")
    return endpoint, fn


def serve_function(url: str) -> tuple[Endpoint, ServeFn]:
    """The parsed endpoint and the plugin's ``serve`` for ``url``."""
    endpoint, fn = _capability(url, "serve")
    return endpoint, fn


def ping_function(url: str) -> tuple[Endpoint, PingFn]:
    """The parsed endpoint and the plugin's ``ping`` for ``url``."""
    endpoint, fn = _capability(url, "ping")
    return endpoint, fn


def connect_session(
    url: str, *, session_timeout: float = 10.0, **options: Any
) -> AbstractAsyncContextManager[PresenceSession]:
    """Open a presence session on whichever backend ``url`` names (``pulse://``, ``zk://``)."""
    endpoint, fn = _capability(url, "connect_session")
    result: AbstractAsyncContextManager[PresenceSession] = fn(
        endpoint, session_timeout=session_timeout, **options
    )
    return result
