"""WebSocket adapter (``ws://``, ``wss://``): heartbeats and reconnection that loses no message.

Built on wsproto with a small trio driver of pulse's own (:mod:`.session`), not on
trio-websocket: pulse needs every received frame as evidence of life and a writer that never
blocks the liveness verdict, which trio-websocket hides inside its reader task.

* :func:`connect` — a :class:`ResilientWebSocket` that reconnects with jittered backoff,
  queues messages while disconnected (bounded, with an overflow policy) and reports every
  message it gives up on.
* :func:`serve` — a server that heartbeats every client and closes dead ones with 1011.
* ``plugin`` — the registry entry behind ``pulse serve --listen ws://…`` and
  ``pulse ping ws://…``.
"""

from __future__ import annotations

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
)
from .errors import HandshakeRejected, WebSocketClosed, WebSocketProtocolError
from .handshake import UpgradeRequest
from .heartbeat import HeartbeatMode
from .outbox import Dropped, Overflow
from .plugin import plugin
from .server import (
    DEFAULT_SERVER_POLICY,
    ServerConnection,
    WebSocketServer,
    echo,
    serve,
)
from .session import CLOSE_PEER_TIMEOUT, Delivery, SessionEnd

__all__ = [
    "CLOSE_PEER_TIMEOUT",
    "DEFAULT_POLICY",
    "DEFAULT_SERVER_POLICY",
    "GIVE_UP_STATUSES",
    "NO_RECONNECT_CODES",
    "ClientState",
    "ConnectionHandle",
    "Delivery",
    "Dropped",
    "HandshakeRejected",
    "HeartbeatMode",
    "OnConnect",
    "Overflow",
    "ResilientWebSocket",
    "ServerConnection",
    "SessionEnd",
    "StateChange",
    "UpgradeRequest",
    "WebSocketClosed",
    "WebSocketProtocolError",
    "WebSocketServer",
    "connect",
    "echo",
    "plugin",
    "serve",
]
