"""Redundant links between two network namespaces: one cut link is a warning, both cut a death.

The server (``pulse serve``) lives in namespace ``b``, reachable over two veth links on two
subnets; ``pulse ping`` (a real process) in ``a`` pings it over both. Cutting one link
(silent DROP on that interface in ``b``) must yield a ``path_down`` line and no death;
cutting the second must make ``pulse ping`` declare the peer dead within the stated bound
(``--timeout`` after the last answer on any path) and exit 1. Runs as root with ``ip netns``
and iptables (skipped otherwise, failed under ``CI=true``).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e._failover import PULSE, wait_for
from tests.netns import NetnsPair, require_netns

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

PORT = 7070
INTERVAL = 0.5
TIMEOUT = 2.0
SLACK = 0.5
"""Process scheduling on a shared 2-core machine, on top of the engine's 20 ms step."""


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    """Two namespaces joined by two links (skips, or fails under CI=true, without netns)."""
    require_netns()
    with NetnsPair(links=2) as pair:
        yield pair


class Lines:
    """The JSON lines of a process's stdout, each stamped with its arrival time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.items: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[float, dict[str, Any]]] = []
        assert process.stdout is not None
        stream = process.stdout

        def read() -> None:
            for line in stream:
                if line.strip():
                    self.items.put((time.monotonic(), json.loads(line)))

        threading.Thread(target=read, daemon=True).start()

    def wait(self, event: str, limit: float, *, after: float = 0.0,
             **fields: object) -> tuple[float, dict[str, Any]]:
        """The first line of ``event`` (with ``fields``) that arrived after ``after``,
        waiting at most ``limit`` seconds for it."""
        def matches(stamp: float, record: dict[str, Any]) -> bool:
            return stamp > after and record.get("event") == event and all(
                record.get(k) == v for k, v in fields.items())

        for stamp, record in self.seen:
            if matches(stamp, record):
                return stamp, record
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} {fields} within {limit}s; saw {self.seen[-8:]}")
            try:
                stamp, record = self.items.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append((stamp, record))
            if matches(stamp, record):
                return stamp, record

    def events(self) -> list[str]:
        """The event names seen so far (drains what already arrived)."""
        while True:
            try:
                self.seen.append(self.items.get_nowait())
            except queue.Empty:
                return [str(record.get("event")) for _, record in self.seen]


def test_one_cut_link_warns_and_both_cut_links_kill(net: NetnsPair) -> None:
    """Cut one of two links: a path_down line, no death, pongs go on over the other link;
    cut the second: peer dead within --timeout (+ slack) of the last answer, exit 1."""
    server = net.popen(net.b, *PULSE, "serve", "--listen", f"tcp://0.0.0.0:{PORT}",
                       "--interval", "1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, second = net.address(net.b, 0), net.address(net.b, 1)

    def accepting() -> bool:
        probe = net.socket(net.a)
        with probe:
            return probe.connect_ex((first, PORT)) == 0

    assert wait_for(accepting, 15.0, 0.05)
    url_1, url_2 = f"tcp://{first}:{PORT}", f"tcp://{second}:{PORT}"
    ping = net.popen(net.a, *PULSE, "ping", "--json", "--interval", str(INTERVAL),
                     "--timeout", str(TIMEOUT), url_1, url_2,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(ping)
    try:
        lines.wait("path_up", 10.0, path=url_1)
        lines.wait("path_up", 10.0, path=url_2)
        lines.wait("pong", 5.0, path=url_2)

        # One link cut: a warning, and the peer stays alive.
        cut_1 = time.monotonic()
        net.cut_link(1)
        down_at, down = lines.wait("path_down", TIMEOUT + INTERVAL + SLACK, after=cut_1,
                                  path=url_2)
        time.sleep(2 * TIMEOUT)
        assert ping.poll() is None, "pulse ping ended with one link still up"
        assert "peer_dead" not in lines.events()
        assert [r["path"] for _, r in lines.seen if r.get("event") == "path_down"] == [url_2]
        pongs_after = [stamp for stamp, record in lines.seen
                       if record.get("event") == "pong" and stamp > down_at]
        assert all(record.get("path") == url_1 for stamp, record in lines.seen
                   if record.get("event") == "pong" and stamp > down_at + INTERVAL)
        assert len(pongs_after) >= int(2 * TIMEOUT / INTERVAL) - 1

        # Both links cut: dead within the bound, and the command fails.
        last_pong = max(stamp for stamp, record in lines.seen if record.get("event") == "pong")
        cut_2 = time.monotonic()
        net.cut_link(0)
        dead_at, dead = lines.wait("peer_dead", TIMEOUT + SLACK + 1.0, after=cut_2)
        rc = ping.wait(timeout=10.0)
        _, summary = lines.wait("summary", 5.0)
    finally:
        if ping.poll() is None:
            ping.kill()
        server.kill()
    assert down["paths_up"] == 1
    assert down_at - cut_1 <= TIMEOUT + SLACK
    # The answers seen after the cut (and before the reader got them) bound it from below.
    last_pong = max(last_pong, max(stamp for stamp, record in lines.seen
                                   if record.get("event") == "pong" and stamp < dead_at))
    assert dead_at - last_pong <= TIMEOUT + SLACK
    assert dead_at - cut_2 <= TIMEOUT + SLACK
    assert "all 2 paths are down" in dead["reason"]
    assert rc == 1
    assert summary["paths"] == {url_1: "down", url_2: "down"}
    print(f"\nredundant links: one link cut -> path_down after {down_at - cut_1:.3f}s; "
          f"both cut -> peer dead after {dead_at - cut_2:.3f}s "
          f"({dead_at - last_pong:.3f}s after the last answer)")
