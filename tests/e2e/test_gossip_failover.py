"""``pulse run --leader --server gossip://… --expect 3`` with three real processes on loopback
and no server: a SIGKILLed leader is replaced within lease + renewal + 1 s; a SIGSTOPped
supervisor's COMMAND is stopped by its watchdog before a standby starts; runs never overlap
and every new run's token is larger."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e._failover import (
    PULSE,
    WORKER,
    Candidate,
    intervals,
    kill_trial,
    overlaps,
    stop_all,
    stop_trial,
    tokens_grow,
)
from tests.zk_harness import free_ports

pytestmark = pytest.mark.e2e

TIMEOUT = 2.0  # the lease T
EXPECT = 3
TRIALS = 3
#: Voters' promises lapse T after the dead leader's last epoch reached them (which is at
#: most one renewal, T / 6, old at the kill); then a grant, the token and its echo travel
#: by gossip (a round is 0.2 s at most here, usually much less).
BOUND = TIMEOUT + TIMEOUT / 6 + 1.0


class GossipCandidate(Candidate):
    """One ``pulse run --leader`` process on gossip://, bound to its own port, seeded with
    every candidate's port."""

    def __init__(self, port: int, seeds: list[int], name: str, log: Path, index: int) -> None:
        self.port = port
        url = "gossip://" + ",".join(f"127.0.0.1:{p}" for p in seeds)
        self.stderr = open(log.with_name(f"{log.stem}.cand{index}.{time.time_ns()}.err"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*PULSE, "--log-level", "info", "run", "--leader", "--server", url,
             "--bind", f"127.0.0.1:{port}", "--expect", str(EXPECT), "--name", name,
             "--id", f"c{index}", "--session-timeout", str(TIMEOUT), "--",
             sys.executable, "-c", WORKER, str(log)],
            stdout=subprocess.DEVNULL, stderr=self.stderr,
        )


def test_gossip_failover_without_a_server(tmp_path: Path) -> None:
    """Three candidates, expect=3: SIGKILL and SIGSTOP of the leading supervisor, three
    times each; every takeover within the bound, no overlap, growing tokens."""
    log = tmp_path / "runs.log"
    name = f"job{uuid.uuid4().hex[:8]}"
    made = iter(range(100))
    candidates: list[Candidate] = []
    first = free_ports(EXPECT)

    def make() -> Candidate:
        """A replacement: seeded with the candidates still running (and itself)."""
        port = free_ports(1)[0]
        seeds = [c.port for c in candidates if isinstance(c, GossipCandidate)
                 and c.process.poll() is None] + [port]
        return GossipCandidate(port, seeds, name, log, next(made))

    # Started together, each with the same seed list: every candidate's address.
    for port in first:
        candidates.append(GossipCandidate(port, first, name, log, next(made)))
    try:
        results = []
        for _ in range(TRIALS):
            results.append(kill_trial(log, candidates, make, limit=15.0))
            # A majority of live voters is needed: let the replacement join and pass its
            # first lease (a new candidacy grants nothing then) before the next fault.
            time.sleep(2 * TIMEOUT)
            results.append(stop_trial(log, candidates, pause=2 * TIMEOUT, limit=15.0))
            # The stopped one resumes, finds itself in doubt and stands again (a new
            # candidacy, which grants nothing for one lease).
            time.sleep(2 * TIMEOUT)
        runs = intervals(log)
    finally:
        stop_all(log, candidates)
    kills = [r.takeover for r in results if r.kind == "kill"]
    stops = [r.takeover for r in results if r.kind == "stop"]
    print(f"gossip takeover after SIGKILL: {sorted(round(k, 2) for k in kills)}; "
          f"after SIGSTOP: {sorted(round(s, 2) for s in stops)}; bound {BOUND:.2f} s")
    gaps = [b.start - a.end for a, b in itertools.pairwise(runs)]
    print(f"runs: {len(runs)}, shortest gap between runs: {min(gaps):.3f} s")
    assert max(kills) <= BOUND, (kills, BOUND)
    assert max(stops) <= BOUND, (stops, BOUND)
    assert overlaps(runs) == 0, runs
    assert tokens_grow(runs), runs
    assert len(runs) >= 2 * TRIALS + 1


def test_gossip_run_without_expect_is_a_usage_error() -> None:
    """``--server gossip://…`` without ``--expect`` exits 2 saying so; ``--expect`` with a
    server backend too."""
    for server, extra in (("gossip://127.0.0.1:1", []), ("pulse://127.0.0.1:1", ["--expect", "3"])):
        done = subprocess.run([*PULSE, "run", "--leader", "--server", server, "--name", "x",
                               *extra, "--", "true"],
                              capture_output=True, timeout=30, check=False)
        assert done.returncode == 2, done.stderr
        assert b"--expect" in done.stderr
