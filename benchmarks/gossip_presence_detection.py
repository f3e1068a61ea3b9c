"""Detection latency of a crashed agent on the serverless gossip presence backend.

For each session timeout T: a ``pulse member`` seed probing every T/5, an in-process
watcher session (timeout T), and repeatedly a ``pulse agent --server gossip://…`` process
(timeout T) that registers ``/bench/presence/victim``, settles, and is SIGKILLed; the time
until the watcher sees it offline is recorded. Same output format as
``zookeeper_detection.py`` so the lines can be compared.

    python benchmarks/gossip_presence_detection.py --trials 5 --timeouts 1,2,4
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import statistics
import subprocess
import sys

import trio

from pulse.registry import connect_session

PREFIX = "/bench/presence"
PULSE = [sys.executable, "-m", "pulse.cli.main"]


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


async def _trial(url: str, timeout: float, rng: random.Random) -> float:
    async with connect_session(url, session_timeout=timeout) as watcher:
        events = watcher.watch(PREFIX)
        agent = await trio.lowlevel.open_process(
            [*PULSE, "agent", "--server", url, "--id", "victim", "--prefix", PREFIX,
             "--session-timeout", str(timeout)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(20):
                async for event in events:
                    if (event.event, event.id) == ("online", "victim"):
                        break
            await trio.sleep(rng.uniform(0.5, 0.5 + timeout / 3))  # random probe phase
            agent.send_signal(signal.SIGKILL)
            killed = trio.current_time()
            with trio.fail_after(timeout * 6 + 5):
                async for event in events:
                    if (event.event, event.id) == ("offline", "victim"):
                        return trio.current_time() - killed
            raise RuntimeError("watch ended without the offline event")
        finally:
            agent.kill()
            await agent.wait()


async def main(trials: int, timeouts: list[float]) -> None:
    rng = random.Random(1)
    for timeout in timeouts:
        port = _free_port()
        seed = subprocess.Popen([*PULSE, "member", "--listen", f"gossip://127.0.0.1:{port}", "--name",  # noqa: ASYNC220
                                 "seed", "--probe-interval", str(timeout / 5)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert seed.stdout is not None
            seed.stdout.readline()  # its own join: listening
            samples = sorted([await _trial(f"gossip://127.0.0.1:{port}", timeout, rng)
                              for _ in range(trials)])
        finally:
            seed.terminate()
            seed.wait()
        p90 = samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))]
        median = statistics.median(samples)
        print(f"{'gossip':10} T={timeout:4.1f}s n={len(samples):3}  min {samples[0] * 1000:6.0f}  "
              f"median {median * 1000:6.0f}  p90 {p90 * 1000:6.0f}  max {samples[-1] * 1000:6.0f} ms"
              f"  median/T {median / timeout:.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--timeouts", default="1,2,4")
    args = parser.parse_args()
    trio.run(main, args.trials, [float(t) for t in args.timeouts.split(",")])
