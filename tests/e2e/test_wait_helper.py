"""The bounded wait of the end-to-end tests ends on the condition, the deadline or the process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ._wait import wait_until

pytestmark = pytest.mark.e2e


def test_returns_the_first_truthy_result() -> None:
    """The condition's value is returned as soon as it is truthy."""
    calls = iter([0, "", "ready"])
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            assert wait_until(lambda: next(calls), timeout=5, what="x", process=proc) == "ready"
        finally:
            proc.kill()


def test_a_process_that_exits_ends_the_wait_at_once() -> None:
    """A peer that dies ends the wait with its status, long before the deadline."""
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]) as proc:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="status 3"):
            wait_until(lambda: False, timeout=30, what="peer", process=proc)
    assert time.monotonic() - started < 10


def test_the_deadline_bounds_the_wait() -> None:
    """A condition that never holds raises TimeoutError naming it after the timeout."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"never: not within 0\.3 s"):
                wait_until(lambda: False, timeout=0.3, what="never", process=proc)
            assert 0.3 <= time.monotonic() - started < 5
        finally:
            proc.kill()
