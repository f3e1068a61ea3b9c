"""Failover trials with real ``pulse run --leader`` processes (shared by the end-to-end tests
and ``benchmarks/failover.py``).

Each candidate runs :data:`WORKER` as COMMAND: it appends ``start``, then ``alive`` every
20 ms, and ``stop`` on SIGTERM, each line with its fencing token, its pid and the wall-clock
time, to one shared file. A leadership's interval runs from its ``start`` line to its last
line; two intervals overlapping means two COMMANDs ran at once.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PULSE = [sys.executable, "-m", "pulse.cli.main"]

WORKER = r"""
import os, signal, sys, time
path, token = sys.argv[1], os.environ["PULSE_FENCING_TOKEN"]
def line(kind):
    with open(path, "a") as f:
        f.write(f"{kind} {token} {os.getpid()} {time.time():.6f}\n")
def stop(*_):
    line("stop")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
line("start")
while True:
    line("alive")
    time.sleep(0.02)
"""


@dataclass(frozen=True)
class Interval:
    """One COMMAND run: its token, pid and first and last wall-clock times."""

    token: int
    pid: int
    start: float
    end: float


def intervals(path: Path) -> list[Interval]:
    """The COMMAND runs recorded in ``path``, by start time."""
    spans: dict[int, list[float]] = {}
    tokens: dict[int, int] = {}
    if not path.exists():
        return []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) != 4:
            continue  # a line cut short by SIGKILL
        _kind, token, pid, at = parts
        span = spans.setdefault(int(pid), [float(at), float(at)])
        span[0] = min(span[0], float(at))
        span[1] = max(span[1], float(at))
        tokens[int(pid)] = int(token)
    runs = [Interval(tokens[pid], pid, s, e) for pid, (s, e) in spans.items()]
    return sorted(runs, key=lambda r: r.start)


def overlaps(runs: list[Interval]) -> int:
    """How many pairs of runs overlap in time."""
    return sum(1 for i, a in enumerate(runs) for b in runs[i + 1:]
               if b.start <= a.end and a.start <= b.end)


def tokens_grow(runs: list[Interval]) -> bool:
    """Whether each run's token is larger than the one before."""
    return all(b.token > a.token for a, b in itertools.pairwise(runs))


class Candidate:
    """One ``pulse run --leader`` process."""

    def __init__(self, url: str, name: str, timeout: float, log: Path, index: int,
                 prefix: tuple[str, ...] = ()) -> None:
        self.stderr = open(log.with_name(f"{log.stem}.cand{index}.{time.time_ns()}.err"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*prefix, *PULSE, "--log-level", "info", "run", "--leader", "--server", url, "--name", name,
             "--id", f"c{index}", "--session-timeout", str(timeout), "--",
             sys.executable, "-c", WORKER, str(log)],
            stdout=subprocess.DEVNULL, stderr=self.stderr,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGCONT (in case), SIGTERM, then SIGKILL; wait."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


def stop_all(log: Path, candidates: list[Candidate]) -> None:
    """Stop the standbys first, then the leader (stopping the leader first would hand over
    to a standby once more, a run the trials did not cause)."""
    leader = current_leader(log, candidates)
    last = leader[0] if leader is not None else None
    for candidate in candidates:
        if candidate is not last:
            candidate.stop()
    if last is not None:
        last.stop()


def wait_for(predicate: object, limit: float, step: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``limit`` seconds passed (bounded wait)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False


def current_leader(log: Path, candidates: list[Candidate]) -> tuple[Candidate, Interval] | None:
    """The candidate whose COMMAND wrote the latest line within the last 0.3 s."""
    runs = intervals(log)
    if not runs:
        return None
    last = max(runs, key=lambda r: r.end)
    if time.time() - last.end > 0.3:
        return None
    for candidate in candidates:
        if _is_ancestor(candidate.pid, last.pid):
            return candidate, last
    return None


def _is_ancestor(ancestor: int, pid: int) -> bool:
    for _ in range(5):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == ancestor:
            return True
        pid = parent
    return False


@dataclass
class TrialResult:
    """One failover: how it was caused and how long until the next COMMAND started."""

    kind: str  # "kill" | "stop"
    takeover: float  # seconds from the fault to the next COMMAND's start


def _leading(log: Path, candidates: list[Candidate], limit: float) -> Candidate:
    """The candidate whose COMMAND runs now (waiting up to ``limit`` s for one)."""
    assert wait_for(lambda: current_leader(log, candidates) is not None, limit)
    leader = current_leader(log, candidates)
    assert leader is not None
    return leader[0]


def kill_trial(log: Path, candidates: list[Candidate], make: object, limit: float
               ) -> TrialResult:
    """SIGKILL the leading ``pulse run``; time until another COMMAND starts; replace it."""
    victim = _leading(log, candidates, limit)
    before = {r.pid for r in intervals(log)}
    at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait()
    victim.stderr.close()
    started = _wait_new_start(log, before, limit)
    candidates[candidates.index(victim)] = make()  # type: ignore[operator]
    return TrialResult("kill", started - at)


def stop_trial(log: Path, candidates: list[Candidate], pause: float, limit: float
               ) -> TrialResult:
    """SIGSTOP the leading ``pulse run`` (not its COMMAND) for ``pause`` s, then SIGCONT."""
    victim = _leading(log, candidates, limit)
    before = {r.pid for r in intervals(log)}
    at = time.time()
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        started = _wait_new_start(log, before, limit)
        remaining = pause - (time.time() - at)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    return TrialResult("stop", started - at)


def _wait_new_start(log: Path, before: set[int], limit: float) -> float:
    result: list[float] = []

    def started() -> bool:
        new = [r for r in intervals(log) if r.pid not in before]
        if new:
            result.append(min(r.start for r in new))
            return True
        return False

    if not wait_for(started, limit):
        raise AssertionError(f"no COMMAND started within {limit} s of the fault")
    return result[0]


def start_lease_server(port: int, tick: float, data_dir: Path | None = None
                       ) -> subprocess.Popen[bytes]:
    """``pulse serve --listen pulse://127.0.0.1:PORT``; returns once it accepts."""
    import socket

    argv = [*PULSE, "serve", "--listen", f"pulse://127.0.0.1:{port}", "--tick", str(tick)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def accepting() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    if not wait_for(accepting, 15.0, 0.05):
        process.kill()
        raise RuntimeError("the lease server did not start")
    return process
