"""Cost of touch and expiry at a million sessions: bucketed tracker vs. a naive scan.

Compares :class:`pulse._core.sessions.SessionTracker` (ZooKeeper's bucketed expiry: a
touch moves a session between per-tick sets; an expiry check visits only due buckets) with
a naive tracker that stores one deadline per session and scans every session to expire.

Run: ``python benchmarks/bench_sessions.py [--sessions 1000000] [--due 1000]``

Scenario: ``sessions`` sessions with a 20 s timeout and ``due`` sessions with a 4 s timeout
(tick 2 s) are opened at t=0. Then:

* touch: every long session is touched once at t=2.5 (its expiry moves from the 22 s bucket
  to the 24 s one) and again at t=3 (same bucket: nothing to move);
* expiry, nothing due: a check at t=5, before the first bucket (average of 1000 checks);
* expiry, ``due`` sessions due: one check at t=6, when only the short sessions expire.

Each measurement is the best of ``--repeat`` runs on fresh trackers. Times are per
operation (touch) or per check (expiry); ratios are naive / bucketed (> 1: bucketed wins).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from typing import Protocol

from pulse._core.sessions import SessionTracker

TICK = 2.0
LONG = 20.0
SHORT = 4.0
WALL = 1_800_000_000.0


class Tracker(Protocol):
    def open_at(self, now: float, timeout: float) -> int: ...
    def touch(self, session_id: int, now: float) -> bool: ...
    def expire_ids(self, now: float) -> list[int]: ...


class Bucketed:
    """The real tracker behind the benchmark's interface."""

    def __init__(self) -> None:
        self.tracker = SessionTracker(secret=b"k" * 32, tick=TICK)

    def open_at(self, now: float, timeout: float) -> int:
        return self.tracker.open(now, timeout, WALL).session_id

    def touch(self, session_id: int, now: float) -> bool:
        return self.tracker.touch(session_id, now)

    def expire_ids(self, now: float) -> list[int]:
        expired = [action.session_id for action in self.tracker.expire(now)]
        for session_id in expired:
            self.tracker.remove(session_id)
        return expired


def rounded(now: float, timeout: float) -> float:
    """The same expiry time as the bucketed tracker (rounded up to the next tick)."""
    return ((now + timeout) // TICK + 1) * TICK


class Naive:
    """One deadline per session (same rounding); expiry scans them all."""

    def __init__(self) -> None:
        self.deadlines: dict[int, float] = {}
        self.timeouts: dict[int, float] = {}
        self.next_id = 0

    def open_at(self, now: float, timeout: float) -> int:
        self.next_id += 1
        self.deadlines[self.next_id] = rounded(now, timeout)
        self.timeouts[self.next_id] = timeout
        return self.next_id

    def touch(self, session_id: int, now: float) -> bool:
        timeout = self.timeouts.get(session_id)
        if timeout is None:
            return False
        self.deadlines[session_id] = rounded(now, timeout)
        return True

    def expire_ids(self, now: float) -> list[int]:
        expired = [s for s, deadline in self.deadlines.items() if deadline <= now]
        for session_id in expired:
            del self.deadlines[session_id]
            del self.timeouts[session_id]
        return expired


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def measure(factory: Callable[[], Tracker], sessions: int, due: int,
            order: list[int]) -> dict[str, float]:
    tracker = factory()
    ids = [tracker.open_at(0.0, LONG) for _ in range(sessions)]
    short = [tracker.open_at(0.0, SHORT) for _ in range(due)]
    shuffled = [ids[i] for i in order]
    touch = tracker.touch

    def touch_all(now: float) -> Callable[[], object]:
        return lambda: [touch(s, now) for s in shuffled]

    results = {
        "touch (moves bucket)": timed(touch_all(2.5)) / sessions,
        "touch (same bucket)": timed(touch_all(3.0)) / sessions,
    }
    expired: list[int] = []
    checks = 1000 if isinstance(tracker, Bucketed) else 3

    def check_none_due() -> None:
        for _ in range(checks):
            expired.extend(tracker.expire_ids(5.0))

    results["expiry check, none due"] = timed(check_none_due) / checks
    assert expired == []
    results[f"expiry check, {due} due"] = timed(lambda: expired.extend(tracker.expire_ids(6.0)))
    assert sorted(expired) == sorted(short), "the wrong sessions expired"
    return results


def human(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:8.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} µs"
    return f"{seconds * 1e3:8.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    order = list(range(args.sessions))
    random.Random(1).shuffle(order)
    best: dict[str, dict[str, float]] = {}
    for name, factory in (("bucketed", Bucketed), ("naive", Naive)):
        for _ in range(args.repeat):
            run = measure(factory, args.sessions, args.due, order)
            for key, value in run.items():
                current = best.setdefault(name, {}).get(key)
                best[name][key] = value if current is None else min(current, value)
    print(f"{args.sessions:,} sessions, {args.due:,} due, tick {TICK:g} s, "
          f"Python {sys.version.split()[0]}, best of {args.repeat}")
    print(f"{'operation':28} {'bucketed':>12} {'naive scan':>12} {'naive/bucketed':>15}")
    for key in best["bucketed"]:
        ours, theirs = best["bucketed"][key], best["naive"][key]
        print(f"{key:28} {human(ours):>12} {human(theirs):>12} {theirs / ours:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
