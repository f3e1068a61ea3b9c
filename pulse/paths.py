"""Redundant heartbeat paths: one peer reached several ways, dead only when every way is silent.

Linux-HA Heartbeat's model (two nodes heartbeating over a serial line and Ethernet, one link
failing being a warning): :func:`redundant_paths` heartbeats one peer over several URLs at
once, reports each path going down or up, and declares the peer dead only when all of them
are down. See ``docs/guides/redundant-links.md``.
"""

from __future__ import annotations

from pulse._core.paths import PathState, PathView, PeerVerdict, RedundantPeer
from pulse._driver.paths import RedundantPaths, redundant_paths
from pulse.actions import PathAction, PathDown, PathUp

__all__ = [
    "PathAction",
    "PathDown",
    "PathState",
    "PathUp",
    "PathView",
    "PeerVerdict",
    "RedundantPaths",
    "RedundantPeer",
    "redundant_paths",
]
