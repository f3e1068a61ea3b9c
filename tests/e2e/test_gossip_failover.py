"""``pulse run --leader --server gossip://… --expect 3`` with three real processes on loopback
and no server: a SIGKILLed leader is replaced within lease + renewal + 1 s; a SIGSTOPped
supervisor's COMMAND is stopped by its watchdog before a standby starts; runs never overlap
and every new run's token is larger."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from tests.e2e._failover import PULSE, overlaps, tokens_grow
from tests.e2e._gossip_failover import gossip_trials

pytestmark = pytest.mark.e2e

TIMEOUT = 2.0  # the lease T
TRIALS = 6  # three of each fault
#: Voters' promises lapse T after the dead leader's last epoch reached them (which is at
#: most one renewal, T / 6, old at the kill); then a grant, the token and its echo travel
#: by gossip (a round is 0.2 s at most here, usually much less).
BOUND = TIMEOUT + TIMEOUT / 6 + 1.0


def test_gossip_failover_without_a_server(tmp_path: Path) -> None:
    """Three candidates, expect=3: SIGKILL and SIGSTOP of the leading supervisor, three
    times each; every takeover within the bound, no overlap, growing tokens."""
    results, runs = gossip_trials(tmp_path / "runs.log", TRIALS, TIMEOUT)
    kills = [r.takeover for r in results if r.kind == "kill"]
    stops = [r.takeover for r in results if r.kind == "stop"]
    gaps = [b.start - a.end for a, b in itertools.pairwise(runs)]
    print(f"gossip takeover after SIGKILL: {sorted(round(k, 2) for k in kills)}; "
          f"after SIGSTOP: {sorted(round(s, 2) for s in stops)}; bound {BOUND:.2f} s; "
          f"{len(runs)} runs, shortest gap {min(gaps):.3f} s")
    assert max(kills) <= BOUND, (kills, BOUND)
    assert max(stops) <= BOUND, (stops, BOUND)
    assert overlaps(runs) == 0, runs
    assert tokens_grow(runs), runs
    assert len(runs) >= TRIALS + 1


def test_gossip_run_without_expect_is_a_usage_error() -> None:
    """``--server gossip://…`` without ``--expect`` exits 2 saying so; ``--expect`` with a
    server backend too."""
    for server, extra in (("gossip://127.0.0.1:1", []), ("pulse://127.0.0.1:1", ["--expect", "3"])):
        done = subprocess.run([*PULSE, "run", "--leader", "--server", server, "--name", "x",
                               *extra, "--", "true"],
                              capture_output=True, timeout=30, check=False)
        assert done.returncode == 2, done.stderr
        assert b"--expect" in done.stderr
