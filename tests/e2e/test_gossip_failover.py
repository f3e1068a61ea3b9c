"""``pulse run --leader --server gossip://… --expect 3`` with three real processes on loopback
and no server: a SIGKILLed leader is replaced within lease + renewal + 1 s; a SIGSTOPped
supervisor's COMMAND is stopped by its watchdog before a standby starts; runs never overlap
and every new run's token is larger."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from tests.e2e._failover import PULSE, Candidate, overlaps, tokens_grow
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


@pytest.mark.netns
def test_a_leader_cut_off_by_the_network_stops_before_the_majority_elects(tmp_path: Path) -> None:
    """The leader alone in namespace a, the two others in b: when a's cable is pulled the
    leader's COMMAND stops within 5/6 T of the cut (its lease lapses on its own clock), a
    candidate in b starts only after that, within the bound, with a larger token; the
    minority side never leads, and once the cable is back the old leader stands by."""
    import time

    from tests.e2e._failover import current_leader, intervals, stop_all, wait_for
    from tests.e2e._gossip_failover import GossipCandidate
    from tests.netns import NetnsPair, require_netns

    require_netns()
    log = tmp_path / "runs.log"
    with NetnsPair() as net:
        a, b = net.address(net.a), net.address(net.b)
        places = [(net.a, a, 7946), (net.b, b, 7946), (net.b, b, 7947)]
        seeds = [f"{host}:{port}" for _, host, port in places]
        candidates: list[Candidate] = []
        try:
            # c0 (in a) first: the lowest name and ready first, so it leads.
            for index, (ns, host, port) in enumerate(places):
                candidates.append(GossipCandidate(port, seeds, "cut", TIMEOUT, 3, log, index,
                                                  host=host, prefix=("ip", "netns", "exec", ns)))
                if index == 0:
                    time.sleep(TIMEOUT / 2)
            assert wait_for(lambda: current_leader(log, candidates) is not None, 20.0)
            leader = current_leader(log, candidates)
            assert leader is not None and leader[0] is candidates[0], "c0 (in a) should lead"
            time.sleep(1.0)
            cut_at = time.time()
            net.pull_cable(net.a)
            assert wait_for(lambda: len(intervals(log)) == 2, BOUND + 2.0)
            old, new = intervals(log)
            time.sleep(2 * TIMEOUT)
            net.restore_cable(net.a)
            time.sleep(3 * TIMEOUT)
            runs = intervals(log)
        finally:
            stop_all(log, candidates)
    print(f"cut: old COMMAND's last line {old.end - cut_at:.3f} s after the cut, "
          f"new start {new.start - cut_at:.3f} s after it")
    assert old.end <= cut_at + TIMEOUT * 5 / 6 + 0.1, (old, cut_at)
    assert new.start - cut_at <= BOUND, (new, cut_at)
    assert old.end < new.start and new.token > old.token
    assert len(runs) == 2 and overlaps(runs) == 0, runs


def test_gossip_run_without_expect_is_a_usage_error() -> None:
    """``--server gossip://…`` without ``--expect`` exits 2 saying so; ``--expect`` with a
    server backend too."""
    for server, extra in (("gossip://127.0.0.1:1", []), ("pulse://127.0.0.1:1", ["--expect", "3"])):
        done = subprocess.run([*PULSE, "run", "--leader", "--server", server, "--name", "x",
                               *extra, "--", "true"],
                              capture_output=True, timeout=30, check=False)
        assert done.returncode == 2, done.stderr
        assert b"--expect" in done.stderr
