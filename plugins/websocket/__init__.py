"""WebSocket adapter (``ws://``, ``wss://``): heartbeats and reconnection that loses no message.

Built on wsproto with a small trio driver of pulse's own (:mod:`.session`), not on
trio-websocket: pulse needs every received frame as evidence of life and a writer that never
blocks the liveness verdict, which trio-websocket hides inside its reader task.

* :func:`reconnecting_websocket` — a :class:`ResilientWebSocket` that reconnects with
  jittered backoff, queues messages while disconnected (bounded, with an overflow policy)
  and reports every message it gives up on.
* :func:`serve_websocket` — a server that heartbeats every client and closes dead ones with
  1011; :func:`serve_stream` serves one accepted stream with :class:`ServerSettings`.

``connect`` and ``serve(handler, host, port)`` are the deprecated old names (see
``docs/api/vocabulary.md``).
* ``plugin`` — the registry entry behind ``pulse serve --listen ws://…`` and
  ``pulse ping ws://…``.
"""

from __future__ import annotations

from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy

from .client import (
    DEFAULT_POLICY,
    GIVE_UP_STATUSES,
    NO_RECONNECT_CODES,
    ClientState,
    ConnectionHandle,
    OnConnect,
    ResilientWebSocket,
    StateChange,
    connect,
    reconnecting_websocket,
)
from .errors import HandshakeRejected, WebSocketClosed, WebSocketProtocolError
from .handshake import UpgradeRequest
from .heartbeat import HeartbeatMode
from .outbox import Dropped, Overflow
from .plugin import plugin
from .server import (
    DEFAULT_SERVER_POLICY,
    Handler,
    ServerConnection,
    ServerSettings,
    WebSocketServer,
    echo,
    serve,
    serve_stream,
    serve_websocket,
)
from .session import CLOSE_PEER_TIMEOUT, Delivery, SessionEnd

__all__ = [
    "CLOSE_PEER_TIMEOUT",
    "DEFAULT_POLICY",
    "DEFAULT_SERVER_POLICY",
    "GIVE_UP_STATUSES",
    "NO_RECONNECT_CODES",
    "Backoff",
    "ClientState",
    "ConnectionHandle",
    "Delivery",
    "Dropped",
    "Handler",
    "HandshakeRejected",
    "HeartbeatMode",
    "HeartbeatPolicy",
    "OnConnect",
    "Overflow",
    "ResilientWebSocket",
    "ServerConnection",
    "ServerSettings",
    "SessionEnd",
    "StateChange",
    "UpgradeRequest",
    "WebSocketClosed",
    "WebSocketProtocolError",
    "WebSocketServer",
    "connect",
    "echo",
    "plugin",
    "reconnecting_websocket",
    "serve",
    "serve_stream",
    "serve_websocket",
]
