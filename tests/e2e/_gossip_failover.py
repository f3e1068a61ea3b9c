"""Failover trials of ``pulse run --leader --server gossip://… --expect N`` (shared by the
end-to-end test and ``benchmarks/gossip_failover.py``): candidates without a server, each
bound to its own loopback port and seeded with the others'."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.e2e._failover import (
    PULSE,
    WORKER,
    Candidate,
    Interval,
    TrialResult,
    intervals,
    kill_trial,
    stop_all,
    stop_trial,
)
from tests.zk_harness import free_ports


class GossipCandidate(Candidate):
    """One ``pulse run --leader`` process on gossip://, bound to ``host:port``, seeded with
    ``seeds`` (ports on 127.0.0.1, or ``host:port`` strings; its own address may be among
    them: ``pulse run`` drops it); ``prefix`` runs it elsewhere (``ip netns exec NS``)."""

    def __init__(self, port: int, seeds: list[int] | list[str], name: str, timeout: float,
                 expect: int, log: Path, index: int, host: str = "127.0.0.1",
                 prefix: tuple[str, ...] = ()) -> None:
        self.port = port
        url = "gossip://" + ",".join(s if isinstance(s, str) else f"127.0.0.1:{s}"
                                     for s in seeds)
        self.stderr = open(log.with_name(f"{log.stem}.cand{index}.{time.time_ns()}.err"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*prefix, *PULSE, "--log-level", "info", "run", "--leader", "--server", url,
             "--bind", f"{host}:{port}", "--expect", str(expect), "--name", name,
             "--id", f"c{index}", "--session-timeout", str(timeout), "--",
             sys.executable, "-c", WORKER, str(log)],
            stdout=subprocess.DEVNULL, stderr=self.stderr,
        )


def gossip_trials(log: Path, trials: int, timeout: float, expect: int = 3,
                  limit: float = 15.0) -> tuple[list[TrialResult], list[Interval]]:
    """``expect`` candidates started together; ``trials`` faults alternating SIGKILL of the
    leading ``pulse run`` (replaced by a new process) and SIGSTOP of it for ``2 T``. After
    each fault the group is given ``2 T`` to settle: a majority of live voters is needed,
    and a new candidacy (the replacement, or the resumed process standing again) grants
    nothing during its first lease."""
    name = f"job{uuid.uuid4().hex[:8]}"
    made = iter(range(10_000))
    candidates: list[Candidate] = []
    first = free_ports(expect)

    def make() -> Candidate:
        """A replacement: seeded with the candidates still running (and itself)."""
        port = free_ports(1)[0]
        seeds = [c.port for c in candidates if isinstance(c, GossipCandidate)
                 and c.process.poll() is None] + [port]
        return GossipCandidate(port, seeds, name, timeout, expect, log, next(made))

    for port in first:  # started together, each with every candidate's address
        candidates.append(GossipCandidate(port, first, name, timeout, expect, log, next(made)))
    results: list[TrialResult] = []
    try:
        for trial in range(trials):
            if trial % 2 == 0:
                results.append(kill_trial(log, candidates, make, limit=limit))
            else:
                results.append(stop_trial(log, candidates, pause=2 * timeout, limit=limit))
            time.sleep(2 * timeout)
        runs = intervals(log)
    finally:
        stop_all(log, candidates)
    return results, runs
