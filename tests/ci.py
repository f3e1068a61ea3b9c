"""The one switch that says "this run is CI": ``CI`` set to 1, true or yes (any case).

In CI every skip is a failure (see ``tests/conftest.py``): the suite must run whole there,
so a missing ZooKeeper, network namespace or interop peer is a broken CI machine, not a
reason to pass. Outside CI such tests skip with the reason.
"""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes"}


def in_ci() -> bool:
    """True when the environment variable ``CI`` is 1, true or yes (read at each call)."""
    return os.environ.get("CI", "").strip().lower() in _TRUE


IN_CI = in_ci()
"""``in_ci()`` at import time, for module-level decisions (skip markers)."""
