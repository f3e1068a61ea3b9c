"""Raw TCP (and TLS) adapter: heartbeat servers and clients, and OS keepalive tuning.

URL schemes ``tcp://host:port`` and ``tls://host:port``. ``serve_tcp`` heartbeats every
client and drops dead ones; ``connect_tcp`` opens one connection; ``reconnecting_tcp`` keeps
a connection up across server restarts with jittered backoff; :class:`TcpKeepalive` tunes
SO_KEEPALIVE / TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT / TCP_USER_TIMEOUT.
"""

from __future__ import annotations

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
from .server import echo_handler, serve_tcp

__all__ = [
    "AppliedKeepalive",
    "ClientState",
    "Delivery",
    "Dropped",
    "KeepaliveRoundingWarning",
    "KeepaliveUnsupported",
    "KeepaliveWarning",
    "ReconnectingClient",
    "StateChange",
    "TcpKeepalive",
    "connect_tcp",
    "echo_handler",
    "os_defaults",
    "plugin",
    "read_keepalive",
    "recommended_for",
    "reconnecting_tcp",
    "serve_tcp",
    "worst_case_detection",
]
