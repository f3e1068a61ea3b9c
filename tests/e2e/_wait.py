"""Bounded waits for the end-to-end tests that drive real peer processes from sync code.

:func:`wait_until` re-checks a condition until it holds or its deadline passes; between checks
it waits on the peer process itself (``Popen.wait`` with a timeout), so a peer that dies ends
the wait at once with its exit status instead of a timeout later.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen[Any],
    interval: float = 0.05,
) -> T:
    """Return ``condition()``'s first truthy result within ``timeout`` seconds.

    Raises ``TimeoutError`` naming ``what`` when the deadline passes, ``RuntimeError`` when
    ``process`` exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        try:
            code = process.wait(timeout=min(interval, left))
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"{what}: the process exited with status {code} first")


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port`` right now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True
