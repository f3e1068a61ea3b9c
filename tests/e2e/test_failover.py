"""``pulse run --leader`` with real processes on loopback, on pulse:// and zk://: a killed
leader is replaced within the bound; a stopped supervisor's COMMAND is stopped by its
watchdog before a standby starts; runs never overlap and tokens grow."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e._failover import (
    PULSE,
    Candidate,
    Interval,
    intervals,
    kill_trial,
    overlaps,
    start_lease_server,
    stop_all,
    stop_trial,
    tokens_grow,
    wait_for,
)
from tests.netns import NetnsPair, require_netns
from tests.zk_harness import (
    JVM_OPTIONS,
    TICK_MS,
    ZooKeeperInstall,
    ZooKeeperServer,
    free_ports,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 2.0
LEASE_TICK = 0.2
TRIALS = 3


@pytest.fixture
def lease_url() -> Iterator[str]:
    """A lease server process on loopback."""
    port = free_ports(1)[0]
    server = start_lease_server(port, LEASE_TICK)
    try:
        yield f"pulse://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _failovers(url: str, tick: float, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    name = f"job{uuid.uuid4().hex[:8]}"
    made = iter(range(100))

    def make() -> Candidate:
        return Candidate(url, name, TIMEOUT, log, next(made))

    candidates = [make() for _ in range(3)]
    bound = TIMEOUT + tick + 1.0
    try:
        results = []
        for _ in range(TRIALS):
            results.append(kill_trial(log, candidates, make, limit=10.0))
            results.append(stop_trial(log, candidates, pause=2 * TIMEOUT, limit=10.0))
        runs = intervals(log)
    finally:
        stop_all(log, candidates)
    kills = [r.takeover for r in results if r.kind == "kill"]
    stops = [r.takeover for r in results if r.kind == "stop"]
    assert max(kills) <= bound, (kills, bound)
    assert max(stops) <= bound, (stops, bound)
    assert overlaps(runs) == 0, runs
    assert tokens_grow(runs), runs
    assert len(runs) >= 2 * TRIALS + 1


def test_failover_on_the_lease_server(lease_url: str, tmp_path: Path) -> None:
    """pulse://: SIGKILL and SIGSTOP of the leading supervisor, three times each."""
    _failovers(lease_url, LEASE_TICK, tmp_path)


@pytest.mark.zookeeper
def test_failover_on_zookeeper(zookeeper_server: ZooKeeperServer, tmp_path: Path) -> None:
    """zk://: SIGKILL and SIGSTOP of the leading supervisor, three times each."""
    _failovers(zookeeper_server.url, TICK_MS / 1000.0, tmp_path)


def test_run_exits_with_the_command_status(lease_url: str, tmp_path: Path) -> None:
    """A COMMAND that exits by itself ends ``pulse run`` with its status and its token is
    in its environment as a decimal integer."""
    import subprocess

    from tests.e2e._failover import PULSE

    out = tmp_path / "token"
    done = subprocess.run(
        [*PULSE, "run", "--leader", "--server", lease_url, "--name", "once",
         "--session-timeout", str(TIMEOUT), "--",
         "sh", "-c", f'echo "$PULSE_FENCING_TOKEN" > {out}; exit 7'],
        capture_output=True, timeout=30, check=False,
    )
    assert done.returncode == 7, done.stderr
    assert out.read_text().strip().isdigit()


def test_run_without_a_command_is_a_usage_error() -> None:
    """``pulse run --leader`` with no COMMAND exits 2 with one line saying so."""
    import subprocess

    from tests.e2e._failover import PULSE

    done = subprocess.run([*PULSE, "run", "--leader", "--server", "pulse://127.0.0.1:1",
                           "--name", "x"], capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert b"no COMMAND" in done.stderr


def _cut_the_leader(net: NetnsPair, url: str, tick: float, log: Path
                    ) -> tuple[float, list[Interval], list[Interval]]:
    """A leader in namespace ``a`` and a standby in ``b`` (with the server) run
    ``pulse run --leader``; the leader's cable is pulled until the standby leads, then put
    back for ``2 T``. Returns the cut time, the two runs at the takeover, and every run."""
    name = f"cut{uuid.uuid4().hex[:6]}"
    candidates = [Candidate(url, name, TIMEOUT, log, 0, ("ip", "netns", "exec", net.a))]
    try:
        assert wait_for(lambda: len(intervals(log)) == 1, 30.0), "the first leader never ran"
        candidates.append(Candidate(url, name, TIMEOUT, log, 1,
                                    ("ip", "netns", "exec", net.b)))
        time.sleep(1.5)
        cut_at = time.time()
        net.pull_cable(net.a)
        assert wait_for(lambda: len(intervals(log)) == 2, TIMEOUT + tick + 2.0)
        at_takeover = intervals(log)
        net.restore_cable(net.a)
        time.sleep(2 * TIMEOUT)
        runs = intervals(log)
    finally:
        net.restore_cable(net.a)
        stop_all(log, candidates)
    return cut_at, at_takeover, runs


def _check_cut(label: str, cut_at: float, at_takeover: list[Interval], runs: list[Interval]
               ) -> None:
    old, new = at_takeover
    print(f"{label} cut: old COMMAND's last line {old.end - cut_at:.3f} s after the cut, new start "
          f"{new.start - cut_at:.3f} s, gap {new.start - old.end:.3f} s (T = {TIMEOUT:g} s)")
    assert old.end <= cut_at + TIMEOUT * 5 / 6 + 0.1, (old, cut_at)
    # The server's last touch was at most T/3 (the ping interval) before the cut.
    assert new.start >= cut_at + TIMEOUT * 2 / 3 - 0.1, (new, cut_at)
    assert old.end < new.start and new.token > old.token
    assert len(runs) == 2 and overlaps(runs) == 0, runs


def _accepting(net: NetnsPair, address: str, port: int) -> bool:
    probe = net.socket(net.b)
    with probe:
        return probe.connect_ex((address, port)) == 0


@pytest.mark.netns
def test_leader_cut_off_by_the_network_stops_before_the_standby_starts(tmp_path: Path) -> None:
    """pulse://: the leader's namespace loses its cable: its COMMAND stops within 5/6 T of
    the cut, before the standby's starts (after the server expired the session); once the
    cable is back the old leader stands by, and no two runs ever overlapped."""
    require_netns()
    with NetnsPair() as net:
        address = net.address(net.b)
        net.popen(net.b, *PULSE, "serve", "--listen", f"pulse://{address}:7070",
                  "--tick", str(LEASE_TICK))
        assert wait_for(lambda: _accepting(net, address, 7070), 15.0, 0.05)
        cut_at, at_takeover, runs = _cut_the_leader(
            net, f"pulse://{address}:7070", LEASE_TICK, tmp_path / "runs.log")
    _check_cut("pulse://", cut_at, at_takeover, runs)


@pytest.mark.netns
@pytest.mark.zookeeper
def test_zookeeper_leader_cut_off_by_the_network_stops_before_the_standby_starts(
    zookeeper_install: ZooKeeperInstall, tmp_path: Path,
) -> None:
    """zk://: a real ZooKeeper in the standby's namespace; the leader's namespace loses its
    cable: the old leader's COMMAND stops before the standby's starts (after ZooKeeper
    expired the session), the token grows, and once the cable is back the old leader stands
    by without a second overlapping run."""
    require_netns()
    with NetnsPair() as net:
        address = net.address(net.b)
        port = 2181
        server = ZooKeeperServer(zookeeper_install, tmp_path / "zk")
        config = server.config_path.read_text()
        config = config.replace("clientPortAddress=127.0.0.1", f"clientPortAddress={address}")
        config = config.replace(f"clientPort={server.client_port}", f"clientPort={port}")
        server.config_path.write_text(config)
        with server.log_path.open("ab") as zk_log:
            net.popen(net.b, zookeeper_install.java, *JVM_OPTIONS, "-cp",
                      zookeeper_install.classpath, "org.apache.zookeeper.server.ZooKeeperServerMain",
                      str(server.config_path), stdin=subprocess.DEVNULL, stdout=zk_log,
                      stderr=subprocess.STDOUT, cwd=server.directory)
        assert wait_for(lambda: _accepting(net, address, port), 60.0, 0.1), server.log_tail()
        cut_at, at_takeover, runs = _cut_the_leader(
            net, f"zk://{address}:{port}", TICK_MS / 1000.0, tmp_path / "runs.log")
    _check_cut("zk://", cut_at, at_takeover, runs)
