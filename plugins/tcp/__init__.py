"""Raw TCP (and TLS) adapter: heartbeat servers and clients, and OS keepalive tuning.

URL schemes ``tcp://host:port`` and ``tls://host:port``. ``serve_tcp(handler, *, host,
port)`` heartbeats every client and drops dead ones (``echo`` is a ready-made handler);
``connect_tcp`` opens one connection and never reconnects; ``reconnecting_tcp`` keeps a
connection up across server restarts with jittered backoff (see ``docs/api/vocabulary.md``
for the names every plugin shares); :class:`TcpKeepalive` tunes
SO_KEEPALIVE / TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT / TCP_USER_TIMEOUT.
"""

from __future__ import annotations

from typing import Any

from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy
from pulse._deprecation import deprecated
from pulse.delivery import Delivery, Dropped

from .client import ClientState, ReconnectingClient, StateChange, connect_tcp, reconnecting_tcp
from .keepalive import (
    AppliedKeepalive,
    KeepaliveRoundingWarning,
    KeepaliveUnsupported,
    KeepaliveWarning,
    TcpKeepalive,
    os_defaults,
    read_keepalive,
    recommended_for,
    worst_case_detection,
)
from .plugin import plugin
from .server import Handler, echo, serve_tcp

__all__ = [
    "AppliedKeepalive",
    "Backoff",
    "ClientState",
    "Delivery",
    "Dropped",
    "Handler",
    "HeartbeatPolicy",
    "KeepaliveRoundingWarning",
    "KeepaliveUnsupported",
    "KeepaliveWarning",
    "ReconnectingClient",
    "StateChange",
    "TcpKeepalive",
    "connect_tcp",
    "echo",
    "os_defaults",
    "plugin",
    "read_keepalive",
    "recommended_for",
    "reconnecting_tcp",
    "serve_tcp",
    "worst_case_detection",
]


def __getattr__(name: str) -> Any:
    if name == "echo_handler":
        deprecated("pulse.plugins.tcp.echo_handler", "pulse.plugins.tcp.echo")
        return echo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
