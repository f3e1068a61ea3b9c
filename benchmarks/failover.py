"""Failover of ``pulse run --leader``: takeover times and overlapping runs, per backend.

Three candidates run a COMMAND that logs its start, a line every 20 ms and its stop (with
its fencing token) to one file. Each trial alternates between SIGKILL of the leading
``pulse run`` process (a standby must take over within session timeout + tick + 1 s) and
SIGSTOP of it alone for twice the session timeout, then SIGCONT (its watchdog must stop its
COMMAND before a standby starts). Prints takeover min / median / p90 / max for each kind of
fault, the number of overlapping runs (must be 0) and whether every new run's token was
larger than the one before.

    python benchmarks/failover.py --trials 20 --timeout 2 [--no-zk] [--no-lease]

Needs java + Apache ZooKeeper for the zk:// line (as for the tests).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e._failover import (
    Candidate,
    TrialResult,
    intervals,
    kill_trial,
    overlaps,
    start_lease_server,
    stop_all,
    stop_trial,
    tokens_grow,
)
from tests.zk_harness import TICK_MS, ZooKeeperServer, find_zookeeper, free_ports

LEASE_TICK = 0.2


def _summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"min {ordered[0]:.3f}  median {statistics.median(ordered):.3f}  "
            f"p90 {p90:.3f}  max {ordered[-1]:.3f} s")


def run_backend(label: str, url: str, tick: float, trials: int, timeout: float,
                directory: Path) -> bool:
    log = directory / f"{label.removesuffix('://')}.runs.log"
    name = f"bench{uuid.uuid4().hex[:8]}"
    counter = iter(range(10_000))

    def make() -> Candidate:
        return Candidate(url, name, timeout, log, next(counter))

    candidates = [make() for _ in range(3)]
    results: list[TrialResult] = []
    try:
        for trial in range(trials):
            if trial % 2 == 0:
                results.append(kill_trial(log, candidates, make, limit=5 * timeout + 5))
            else:
                results.append(stop_trial(log, candidates, 2 * timeout, limit=5 * timeout + 5))
    finally:
        stop_all(log, candidates)
    runs = intervals(log)
    bound = timeout + tick + 1.0
    kills = [r.takeover for r in results if r.kind == "kill"]
    stops = [r.takeover for r in results if r.kind == "stop"]
    overlap = overlaps(runs)
    grow = tokens_grow(runs)
    print(f"{label}: T={timeout:g} s, tick {tick:g} s, bound T + tick + 1 s = {bound:.2f} s, "
          f"{len(results)} trials, {len(runs)} runs")
    print(f"  SIGKILL of the leader  ({len(kills)}): takeover {_summary(kills)}")
    print(f"  SIGSTOP of supervisor ({len(stops)}): takeover {_summary(stops)}")
    gaps = [b.start - a.end for a, b in itertools.pairwise(runs)]
    print(f"  overlapping runs: {overlap}   tokens always grew: {grow}   "
          f"over the bound: {sum(1 for v in kills + stops if v > bound)}")
    print(f"  gap between one run's last line and the next run's start: {_summary(gaps)}")
    return overlap == 0 and grow


def run_lease_backend(trials: int, timeout: float, directory: Path) -> bool:
    """:func:`run_backend` on pulse:// against a lease server started (and stopped) here."""
    port = free_ports(1)[0]
    server = start_lease_server(port, LEASE_TICK)
    try:
        return run_backend("pulse://", f"pulse://127.0.0.1:{port}", LEASE_TICK, trials,
                           timeout, directory)
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=2.0, help="session timeout (s)")
    parser.add_argument("--no-lease", action="store_true")
    parser.add_argument("--no-zk", action="store_true")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="pulse-failover-") as raw:
        directory = Path(raw)
        if not args.no_lease:
            ok &= run_lease_backend(args.trials, args.timeout, directory)
        if not args.no_zk:
            install = find_zookeeper()
            if install is None:
                print("zk://: skipped (no java + ZooKeeper)")
            else:
                zk = ZooKeeperServer(install, directory / "zk")
                zk.start()
                try:
                    zk.wait_serving()
                    ok &= run_backend("zk://", zk.url, TICK_MS / 1000.0, args.trials,
                                      args.timeout, directory)
                finally:
                    zk.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
