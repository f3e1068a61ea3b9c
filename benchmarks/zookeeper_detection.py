"""Detection latency of a crashed agent: ZooKeeper next to the embedded lease server.

For each backend and session timeout, repeatedly: start an agent process that registers
``/bench/presence/victim``, let it settle for a random fraction of a ping interval, SIGKILL
it, and time how long an in-process watcher takes to see it go offline. Both servers run
on loopback with the same 200 ms tick. Prints one line per (backend, timeout) with
min / median / p90 / max and the median as a fraction of the session timeout.

    python benchmarks/zookeeper_detection.py --trials 10 --timeouts 1,2,4 [--no-lease]

Needs java + Apache ZooKeeper (as for the tests) and, for the lease line, ``pulse serve``.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulse.registry import connect_session
from tests.e2e.zk_agent import AgentProcess
from tests.zk_harness import TICK_MS, ZooKeeperServer, find_zookeeper, free_ports

PREFIX = "/bench/presence"


async def _one_trial(url: str, timeout: float, rng: random.Random) -> float:
    agent = await AgentProcess.start(url, f"{PREFIX}/victim", timeout)
    try:
        await agent.wait_for(event="registered")
        async with connect_session(url, session_timeout=max(timeout, 2.0)) as watcher:
            events = watcher.watch(PREFIX)
            with trio.fail_after(10):
                async for event in events:
                    if (event.event, event.id) == ("online", "victim"):
                        break
            await trio.sleep(rng.uniform(0.2, 0.2 + timeout / 3))  # random ping phase
            killed = trio.current_time()
            agent.signal(signal.SIGKILL)
            with trio.fail_after(timeout * 3 + 5):
                async for event in events:
                    if (event.event, event.id) == ("offline", "victim"):
                        return trio.current_time() - killed
            raise RuntimeError("watch ended without the offline event")
    finally:
        await agent.aclose()


def _summary(name: str, timeout: float, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    median = statistics.median(ordered)
    return (f"{name:10} T={timeout:4.1f}s n={len(ordered):3}  min {ordered[0] * 1000:6.0f}  "
            f"median {median * 1000:6.0f}  p90 {p90 * 1000:6.0f}  max {ordered[-1] * 1000:6.0f} ms"
            f"  median/T {median / timeout:.2f}")


async def _measure(name: str, url: str, timeouts: list[float], trials: int) -> list[str]:
    rng = random.Random(1)
    lines = []
    for timeout in timeouts:
        samples = [await _one_trial(url, timeout, rng) for _ in range(trials)]
        line = _summary(name, timeout, samples)
        print(line, flush=True)
        lines.append(line)
    return lines


def main() -> None:
    """Run the measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--timeouts", default="1,2,4")
    parser.add_argument("--no-lease", action="store_true", help="skip the embedded server")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    timeouts = [float(t) for t in args.timeouts.split(",")]
    install = find_zookeeper()
    if install is None:
        sys.exit("java / ZooKeeper not installed")
    with tempfile.TemporaryDirectory() as directory:
        server = ZooKeeperServer(install, Path(directory))
        lease: subprocess.Popen[bytes] | None = None
        try:
            server.start()
            server.wait_serving()
            print(f"tick {TICK_MS} ms on both servers; agent SIGKILLed, watcher in-process")
            trio.run(_measure, "zookeeper", server.url, timeouts, args.trials)
            if not args.no_lease:
                port = free_ports(1)[0]
                lease = subprocess.Popen(
                    [sys.executable, "-m", "pulse.cli.main", "serve", "--listen",
                     f"pulse://127.0.0.1:{port}", "--tick", str(TICK_MS / 1000)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                trio.run(_wait_port, port)
                trio.run(_measure, "embedded", f"pulse://127.0.0.1:{port}", timeouts,
                         args.trials)
        finally:
            server.stop()
            if lease is not None:
                lease.terminate()
                lease.wait(timeout=10)


async def _wait_port(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


if __name__ == "__main__":
    main()
