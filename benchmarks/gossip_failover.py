"""Failover of ``pulse run --leader`` on gossip:// (no server) next to pulse:// in one run.

Three candidates each; trials alternate SIGKILL of the leading ``pulse run`` and SIGSTOP of
it for ``2 T`` (as ``benchmarks/failover.py``). On gossip:// the group gets ``2 T`` to settle
after each fault (a new candidacy grants nothing during its first lease); the pulse:// anchor
runs the same trials without settling. Prints takeover min / median / p90 / max, overlapping
runs (must be 0) and whether tokens always grew, for both backends.

    python benchmarks/gossip_failover.py --trials 20 --timeout 2 [--no-lease]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.failover import _summary, run_lease_backend
from tests.e2e._failover import overlaps, tokens_grow
from tests.e2e._gossip_failover import gossip_trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=2.0, help="session timeout T (s)")
    parser.add_argument("--no-lease", action="store_true", help="skip the pulse:// anchor")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="pulse-gossip-failover-") as raw:
        directory = Path(raw)
        results, runs = gossip_trials(directory / "gossip.runs.log", args.trials, args.timeout)
        bound = args.timeout + args.timeout / 6 + 1.0
        kills = [r.takeover for r in results if r.kind == "kill"]
        stops = [r.takeover for r in results if r.kind == "stop"]
        gaps = [b.start - a.end for a, b in itertools.pairwise(runs)]
        print(f"gossip://: T={args.timeout:g} s, expect 3, bound T + T/6 + 1 s = {bound:.2f} s, "
              f"{len(results)} trials, {len(runs)} runs")
        print(f"  SIGKILL of the leader  ({len(kills)}): takeover {_summary(kills)}")
        print(f"  SIGSTOP of supervisor ({len(stops)}): takeover {_summary(stops)}")
        print(f"  overlapping runs: {overlaps(runs)}   tokens always grew: {tokens_grow(runs)}   "
              f"over the bound: {sum(1 for v in kills + stops if v > bound)}")
        print(f"  gap between one run's last line and the next run's start: {_summary(gaps)}")
        ok &= overlaps(runs) == 0 and tokens_grow(runs)
        if not args.no_lease:
            ok &= run_lease_backend(args.trials, args.timeout, directory)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
