"""Soak: many ``pulse member`` processes under 10 % packet loss, then one is killed.

Run (as root):  python benchmarks/gossip_soak.py [--members 50] [--soak 300] [--loss 0.10]
                python benchmarks/gossip_soak.py --members 10 --soak 20 --probe-interval 0.5 --json

One ``pulse member --json`` process per member (50 by default), all on the loopback interface
of a network namespace the script creates (``pulse-soak-<pid>``) and deletes at the end, so the
host's own loopback is never touched. The first member is the seed; the others join through it.
Once every member lists every other one, random loss is switched on inside the namespace:
``iptables -A INPUT -m statistic --mode random --probability LOSS -j DROP`` (every packet,
UDP and TCP, crossing ``lo`` is dropped with that probability; ``tc netem`` is not available on
this kernel). With the loss on for ``--soak`` seconds:

* **false failures**: every ``failed`` event printed by any member about any member (all of
  them are alive), counted; ``suspect`` events (suspicions that were refuted) are counted too;
* then the last member is SIGKILLed, loss still on, and each of the others is timed from the
  kill to its own ``failed`` event about it (the ``time`` field of ``pulse member --json``).

The **configured bound** on detection is what memberlist's settings promise for a lone
accuser without confirmations, plus the probing that precedes it: two probe periods (a
probe of the dead member starts within one period, as N − 1 members each probe one member
per period, and fails at the end of its period), Lifeguard's maximum suspicion timeout
(``suspicion_max_timeout_mult × suspicion_mult × max(1, log10 N) × probe interval``, 40.8 s at
N = 50 and 1 s), and one second for the ``dead`` gossip to reach everyone. With
confirmations from other members the timeout falls to the minimum (6.8 s at N = 50), which is
what one sees in practice; both are printed.

Exit status 0 when there were no false failures and every observer detected the kill within
the bound, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pulse._core.lifeguard import suspicion_min_timeout

BASE_PORT = 17000
COMMAND_TIMEOUT = 10.0


def _ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT)


@dataclass
class SoakResult:
    """What one soak measured (times in seconds)."""

    members: int
    soak: float
    loss: float
    probe_interval: float
    converge_time: float = 0.0
    false_failures: int = 0
    false_failure_events: list[dict[str, Any]] = field(default_factory=list)
    suspicions: int = 0
    refuted: int = 0
    packets_dropped: int = 0
    packets_seen: int = 0
    victim: str = ""
    detection: dict[str, float] = field(default_factory=dict)
    undetected: list[str] = field(default_factory=list)
    bound: float = 0.0
    min_suspicion_timeout: float = 0.0
    max_suspicion_timeout: float = 0.0
    exited: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No false failure, every observer detected the kill within the bound, nobody crashed."""
        return (self.false_failures == 0 and not self.undetected and not self.exited
                and all(t <= self.bound for t in self.detection.values()))

    def summary(self) -> dict[str, Any]:
        """The result as a JSON-able dict with the detection statistics."""
        record = asdict(self)
        times = sorted(self.detection.values())
        record["ok"] = self.ok
        record["detection_min"] = times[0] if times else None
        record["detection_median"] = statistics.median(times) if times else None
        record["detection_max"] = times[-1] if times else None
        return record


class Member:
    """One ``pulse member --json`` process in the namespace, its output in a file."""

    def __init__(self, ns: str, workdir: Path, index: int, seed_port: int | None,
                 probe_interval: float) -> None:
        self.name = f"m{index:02d}"
        self.port = BASE_PORT + index
        self.out = workdir / f"{self.name}.jsonl"
        self.err = workdir / f"{self.name}.err"
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "pulse.cli.main", "member",
                "--listen", f"gossip://127.0.0.1:{self.port}", "--name", self.name, "--json",
                "--probe-interval", str(probe_interval)]
        if seed_port is not None:
            argv += ["--join", f"127.0.0.1:{seed_port}", "--join-timeout", "10"]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            # `ip netns exec` execs the command, so this pid is the member's own process.
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err)

    def poll(self) -> list[dict[str, Any]]:
        """Events printed since the last call."""
        with self.out.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.events.extend(new)
        return new

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck child
            pass


def detection_bound(n: int, probe_interval: float, suspicion_mult: int = 4,
                    max_timeout_mult: int = 6) -> tuple[float, float, float]:
    """``(bound, min suspicion timeout, max suspicion timeout)`` for ``n`` members."""
    lo = suspicion_min_timeout(suspicion_mult, n, probe_interval)
    hi = max_timeout_mult * lo
    return 2 * probe_interval + hi + 1.0, lo, hi


def _iptables_counters(ns: str) -> tuple[int, int]:
    """(packets dropped by the loss rule, packets that reached it) in the namespace: the
    first INPUT rule only counts, the second is the loss rule."""
    out = _ns(ns, "iptables", "-w", "5", "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()
    rules = [line.split() for line in out[2:] if line.strip()]
    seen = int(rules[0][0]) if rules else 0
    dropped = sum(int(cols[0]) for cols in rules if len(cols) > 2 and cols[2] == "DROP")
    return dropped, seen


def run_soak(members: int = 50, soak: float = 300.0, loss: float = 0.10,
             probe_interval: float = 1.0, progress: bool = False) -> SoakResult:
    """Start the members, converge, soak under loss, kill one, time its detection."""
    if members < 3:
        raise ValueError("a soak needs at least 3 members")
    ns = f"pulse-soak-{os.getpid()}"
    result = SoakResult(members, soak, loss, probe_interval)
    result.bound, result.min_suspicion_timeout, result.max_suspicion_timeout = \
        detection_bound(members, probe_interval)
    procs: list[Member] = []

    def say(text: str) -> None:
        if progress:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=COMMAND_TIMEOUT)
    try:
        _ns(ns, "ip", "link", "set", "lo", "up")
        with tempfile.TemporaryDirectory(prefix="pulse-soak-") as tmp:
            workdir = Path(tmp)
            started = time.monotonic()
            seed = Member(ns, workdir, 0, None, probe_interval)
            procs.append(seed)
            _wait(lambda: any(e["event"] == "join" and e["name"] == seed.name for e in seed.poll()),
                  15.0, "the seed did not start")
            for i in range(1, members):
                procs.append(Member(ns, workdir, i, seed.port, probe_interval))
            names = {p.name for p in procs}

            def converged() -> bool:
                views: dict[str, set[str]] = {}
                for p in procs:
                    p.poll()
                    if p.proc.poll() is not None:
                        raise RuntimeError(f"{p.name} exited: {p.err.read_text()[-2000:]}")
                    view = views[p.name] = set()
                    for e in p.events:
                        if e["event"] in ("join", "alive"):
                            view.add(e["name"])
                        elif e["event"] in ("failed", "left"):
                            view.discard(e["name"])
                return all(v == names for v in views.values())

            _wait(converged, 30.0 + members, "the members did not converge")
            result.converge_time = time.monotonic() - started
            say(f"{members} members converged in {result.converge_time:.1f} s; loss {loss:.0%} on")
            _ns(ns, "iptables", "-w", "5", "-A", "INPUT")  # counts every packet
            _ns(ns, "iptables", "-w", "5", "-A", "INPUT", "-m", "statistic", "--mode", "random",
                "--probability", f"{loss}", "-j", "DROP")
            soak_end = time.monotonic() + soak
            next_report = time.monotonic() + 30
            while time.monotonic() < soak_end:
                time.sleep(min(0.5, max(0.0, soak_end - time.monotonic())))
                _tally(procs, result, victim=None)
                if progress and time.monotonic() >= next_report:
                    next_report += 30
                    load = os.getloadavg()[0]
                    say(f"soak: {soak - (soak_end - time.monotonic()):.0f} s, false failures "
                        f"{result.false_failures}, suspicions {result.suspicions}, "
                        f"load average {load:.1f}")
            victim = procs[-1]
            result.victim = victim.name
            victim.kill()
            killed_at = time.time()
            say(f"killed {victim.name}; waiting up to {result.bound:.1f} s for every observer")
            observers = procs[:-1]
            give_up = time.monotonic() + result.bound + 5.0
            while time.monotonic() < give_up and len(result.detection) < len(observers):
                time.sleep(0.2)
                _tally(observers, result, victim=victim.name, killed_at=killed_at)
            result.undetected = sorted(p.name for p in observers if p.name not in result.detection)
            result.exited = sorted(p.name for p in observers if p.proc.poll() is not None)
            result.packets_dropped, result.packets_seen = _iptables_counters(ns)
            for p in procs:
                p.kill()
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=COMMAND_TIMEOUT)
    return result


def _tally(procs: list[Member], result: SoakResult, victim: str | None,
           killed_at: float = 0.0) -> None:
    for p in procs:
        for e in p.poll():
            if e["event"] == "suspect":
                result.suspicions += 1
            elif e["event"] == "alive":
                result.refuted += 1
            elif e["event"] == "failed":
                if e["name"] == victim:
                    result.detection.setdefault(p.name, round(e["time"] - killed_at, 3))
                else:
                    result.false_failures += 1
                    result.false_failure_events.append({"observer": p.name, **e})


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--soak", type=float, default=300.0, help="seconds of loss before the kill")
    parser.add_argument("--loss", type=float, default=0.10, help="drop probability per packet")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("gossip_soak: needs root (network namespace and iptables)", file=sys.stderr)
        return 2
    result = run_soak(args.members, args.soak, args.loss, args.probe_interval, progress=not args.json)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0 if result.ok else 1
    times = sorted(result.detection.values())
    print(f"{result.members} pulse member processes, loopback in a namespace, "
          f"{result.loss:.0%} loss for {result.soak:.0f} s, probe interval {result.probe_interval} s")
    print(f"converged in {result.converge_time:.1f} s; packets dropped by the loss rule "
          f"{result.packets_dropped} of {result.packets_seen} "
          f"({result.packets_dropped / max(1, result.packets_seen):.1%})")
    print(f"false failures: {result.false_failures}   suspicions raised: {result.suspicions}, "
          f"refuted (alive again): {result.refuted}")
    if times:
        print(f"kill of {result.victim}: detected by {len(times)} of {result.members - 1} observers; "
              f"min {times[0]:.2f} s, median {statistics.median(times):.2f} s, max {times[-1]:.2f} s")
    print(f"configured bound {result.bound:.1f} s (2 probe periods + max suspicion timeout "
          f"{result.max_suspicion_timeout:.1f} s + 1 s); min suspicion timeout "
          f"{result.min_suspicion_timeout:.2f} s")
    for e in result.false_failure_events:
        print(f"  false failure: {e['observer']} declared {e['name']} failed at "
              f"{time.strftime('%H:%M:%S', time.localtime(e['time']))} "
              f"(confirmed by {', '.join(e['confirmed_by'])})")
    if result.undetected:
        print(f"never detected by: {', '.join(result.undetected)}")
    if result.exited:
        print(f"exited early: {', '.join(result.exited)}")
    print("OK" if result.ok else "FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
