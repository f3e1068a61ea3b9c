"""pulse: keep connections and sessions alive and tell, fast and correctly, when a peer is gone.

The pure core (policies, idle detection, liveness, failure detectors, backoff) lives in
``pulse._core`` and is re-exported here; ``heartbeat(stream)`` wraps any trio stream;
transports are plugins under ``pulse.plugins`` found through :mod:`pulse.registry`. The names
every plugin shares (``serve_*``, ``connect*``, ``reconnecting_*``, ``events()``,
``on_event``/``on_liveness``, ``detector=``, ``max_frame_size``/``max_message_size``) are
listed in ``docs/api/vocabulary.md``.
"""

from __future__ import annotations

from pulse._core.adaptive import AdaptiveDetector, BertierMargin
from pulse._core.backoff import Backoff, Growth, Jitter
from pulse._core.detectors import FailureDetector, FixedTimeout, MissedBeats
from pulse._core.idle import IdleDetector
from pulse._core.liveness import Liveness, LivenessState, PeerStats
from pulse._core.lossy import LossyLink, TcpProgress
from pulse._core.phi import PhiAccrualFailureDetector
from pulse._core.policy import (
    HeartbeatPolicy,
    IdleMode,
    NegotiationBounds,
    negotiate,
    negotiate_interval,
)
from pulse._core.reconnect import ReconnectMachine, StartAttempt, default_backoff
from pulse._driver.connection import HeartbeatConnection, heartbeat
from pulse._driver.feed import EventFeed
from pulse._driver.paths import RedundantPaths, redundant_paths
from pulse._driver.streams import open_tcp_stream
from pulse.errors import (
    AuthFailed,
    ConnectionClosed,
    FrameTooLarge,
    LocalProtocolError,
    PeerTimeout,
    PhaseTimeout,
    PingFlood,
    ProtocolError,
    PulseError,
    ReconnectGaveUp,
    RemoteProtocolError,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveDetector",
    "AuthFailed",
    "Backoff",
    "BertierMargin",
    "ConnectionClosed",
    "EventFeed",
    "FailureDetector",
    "FixedTimeout",
    "FrameTooLarge",
    "Growth",
    "HeartbeatConnection",
    "HeartbeatPolicy",
    "IdleDetector",
    "IdleMode",
    "Jitter",
    "Liveness",
    "LivenessState",
    "LocalProtocolError",
    "LossyLink",
    "MissedBeats",
    "NegotiationBounds",
    "PeerStats",
    "PeerTimeout",
    "PhaseTimeout",
    "PhiAccrualFailureDetector",
    "PingFlood",
    "ProtocolError",
    "PulseError",
    "ReconnectGaveUp",
    "ReconnectMachine",
    "RedundantPaths",
    "RemoteProtocolError",
    "StartAttempt",
    "TcpProgress",
    "__version__",
    "default_backoff",
    "heartbeat",
    "negotiate",
    "negotiate_interval",
    "open_tcp_stream",
    "redundant_paths",
]
