"""The watchdog between ``pulse run --leader`` and its COMMAND (a separate process).

Usage (by ``pulse run`` only): ``python -I …/_watchdog.py FEED_FD DEADLINE -- COMMAND…``
(standard library only, so that it starts in milliseconds).

The supervisor starts this process as the leader of a new process group; it starts COMMAND
in the same group and then only waits. ``DEADLINE`` and every line read from ``FEED_FD`` are
absolute ``CLOCK_MONOTONIC`` times (``time.monotonic()``, one clock for every process of the
host) until which COMMAND may run: the supervisor writes a later one after every confirmed
renewal of its leadership. When the deadline passes without a newer one — the supervisor is
stopped, hung or too slow — or the feed reaches end of file (the supervisor died), the
watchdog SIGKILLs the whole process group, COMMAND, its children and itself, without waiting
for anyone. When COMMAND exits by itself the watchdog exits with COMMAND's status (``128 +
signal`` if a signal ended it). SIGTERM and SIGINT do not stop the watchdog (the supervisor
sends them to the group to stop COMMAND; the watchdog stays until COMMAND is gone).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


def _kill_group() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def run(feed_fd: int, deadline: float, command: Sequence[str]) -> int:
    """Run ``command`` under the watchdog; return its exit status."""
    os.set_inheritable(feed_fd, False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)  # handlers reset to default in COMMAND
    try:
        child = subprocess.Popen(list(command))
    except OSError as exc:
        print(f"pulse run: cannot start {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    child_fd = os.pidfd_open(child.pid)
    buffered = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill_group()
        ready, _, _ = select.select([feed_fd, child_fd], [], [], remaining)
        if child_fd in ready:
            code = child.wait()
            return 128 - code if code < 0 else code
        if feed_fd in ready:
            try:
                data = os.read(feed_fd, 4096)
            except BlockingIOError:
                continue
            if not data:  # the supervisor is gone
                _kill_group()
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            if len(buffered) > 64:
                buffered = b""
            for line in lines:
                try:
                    deadline = float(line)
                except ValueError:
                    continue


def main(argv: Sequence[str]) -> int:
    """Parse ``FEED_FD DEADLINE -- COMMAND…`` and run."""
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m pulse.cli._watchdog FEED_FD DEADLINE -- COMMAND...",
              file=sys.stderr)
        return 2
    return run(int(argv[0]), float(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
