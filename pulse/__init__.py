"""pulse: keep connections and sessions alive and tell, fast and correctly, when a peer is gone."""

from __future__ import annotations

__version__ = "0.1.0"
