"""Reconnect storm: N WebSocket clients lose their server, which comes back after 2 s.

Run: ``python benchmarks/bench_reconnect_storm.py [--clients 1000] [--downtime 2]``

For each client library, one after the other in the same run:

* ``websockets``: ``async for ws in websockets.asyncio.client.connect(url)`` per client;
* ``pulse``: ``pulse.plugins.websocket.reconnecting_websocket(url)`` per client (default backoff);

the clients run in ``--processes`` processes of their own (``storm_clients.py``) against a
fresh counting server (``storm_server.py``, raw asyncio) that reports, every 100 ms, the
upgrade requests it received and the connections open. Once all clients are connected the
server is killed (SIGKILL) and started again on the same port ``--downtime`` seconds later.

Measured from the kill on:

* attempts (server): upgrade requests the restarted server received;
* attempts (clients): connection attempts the clients made, including those refused while
  the server was down (counted by the clients, see ``storm_clients.py``);
* peak per 100 ms (server): the most upgrade requests in one 100 ms bucket after the restart;
* peak per 100 ms (clients): the most attempts the clients made in one 100 ms (their own
  100 ms reports summed over processes; refused attempts included);
* all back: seconds from the restarted server listening until all N were connected again;
* client CPU: CPU seconds the client processes used from the kill until all were back.

Ratios are pulse / websockets (lower is better for pulse).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, cpu_seconds, free_port, ratio, stop, table


@dataclass
class Result:
    lib: str
    clients: int
    server_attempts: int = 0
    client_attempts: int = 0
    peak: int = 0
    client_peak: int = 0
    client_cpu: float = float("nan")
    all_back: float = float("nan")
    back: int = 0
    note: str = ""


def lines(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def start_server(port: int, path: Path) -> subprocess.Popen[bytes]:
    with path.open("wb") as out:
        server = subprocess.Popen([sys.executable, str(HERE / "storm_server.py"), "--port",
                                   str(port)], stdin=subprocess.DEVNULL, stdout=out)
    deadline = time.monotonic() + 20
    while not any("listening" in item for item in lines(path)):
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            raise RuntimeError(f"storm server did not start on {port}")
        time.sleep(0.02)
    return server


def wait_open(path: Path, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = [item for item in lines(path) if "open" in item]
        if items and items[-1]["open"] >= count:
            return True
        time.sleep(0.1)
    return False


def measure(lib: str, args: argparse.Namespace, workdir: Path) -> Result:
    result = Result(lib, args.clients)
    port = free_port()
    first_log, second_log = workdir / f"{lib}-first.jsonl", workdir / f"{lib}-second.jsonl"
    server = start_server(port, first_log)
    second: subprocess.Popen[bytes] | None = None
    clients: list[subprocess.Popen[bytes]] = []
    client_logs: list[Path] = []
    try:
        for index in range(args.processes):
            share = args.clients // args.processes + (index < args.clients % args.processes)
            log = workdir / f"{lib}-clients-{index}.jsonl"
            client_logs.append(log)
            with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
                clients.append(subprocess.Popen(
                    [sys.executable, str(HERE / "storm_clients.py"), "--lib", lib, "--url",
                     f"ws://127.0.0.1:{port}/", "--count", str(share)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err))
        if not wait_open(first_log, args.clients, args.connect_timeout):
            result.note = "not all clients connected before the kill"
        time.sleep(1.0)
        cpu_kill = sum(cpu_seconds(client.pid) for client in clients)
        t_kill = time.time()
        server.kill()
        server.wait()
        time.sleep(args.downtime)
        second = start_server(port, second_log)
        t_restart = next(item["t"] for item in lines(second_log) if "listening" in item)
        if not wait_open(second_log, args.clients, args.recover_timeout):
            result.note = f"not all back within {args.recover_timeout:g} s"
        time.sleep(0.5)
        result.client_cpu = sum(cpu_seconds(client.pid) for client in clients) - cpu_kill
        for client in clients:
            stop(client)
        buckets = [item for item in lines(second_log) if "open" in item]
        result.server_attempts = sum(item["attempts"] for item in buckets)
        result.peak = max((item["attempts"] for item in buckets), default=0)
        result.back = max((item["open"] for item in buckets), default=0)
        back = [item["t"] for item in buckets if item["open"] >= args.clients]
        if back:
            result.all_back = back[0] - t_restart
        per_bucket: dict[int, int] = {}
        for log in client_logs:
            items = lines(log)
            before = [item["attempts"] for item in items if item["t"] <= t_kill]
            result.client_attempts += (items[-1]["attempts"] if items else 0) - (
                before[-1] if before else 0)
            for previous, item in itertools.pairwise(items):
                if item["t"] > t_kill:
                    bucket = int(item["t"] * 10)
                    per_bucket[bucket] = (per_bucket.get(bucket, 0) + item["attempts"]
                                          - previous["attempts"])
        result.client_peak = max(per_bucket.values(), default=0)
    finally:
        for client in clients:
            stop(client)
        stop(server)
        stop(second)
    return result


def report(results: list[Result], out: Any = sys.stdout) -> None:
    anchor = next((r for r in results if r.lib == "websockets"), None)
    rows = []
    for r in results:
        other = anchor is not None and r is not anchor
        rows.append([
            f"{r.clients:,}", r.lib, f"{r.server_attempts:,}", f"{r.client_attempts:,}",
            str(r.peak), str(r.client_peak),
            "-" if r.all_back != r.all_back else f"{r.all_back:.1f}", f"{r.back:,}",
            f"{r.client_cpu:.1f}",
            ratio(r.server_attempts, anchor.server_attempts) if other and anchor else "",
            ratio(r.client_attempts, anchor.client_attempts) if other and anchor else "",
            ratio(r.peak, anchor.peak) if other and anchor else "",
            ratio(r.client_peak, anchor.client_peak) if other and anchor else "",
            ratio(r.all_back, anchor.all_back) if other and anchor else "",
        ])
    table(["clients", "client library", "attempts (server)", "attempts (clients)",
           "peak /100 ms (server)", "peak /100 ms (clients)", "all back s", "back",
           "client CPU s",
           "attempts ratio (server)", "attempts ratio (clients)", "peak ratio (server)",
           "peak ratio (clients)", "all-back ratio"], rows, out)
    for r in results:
        if r.note:
            out.write(f"note {r.lib}: {r.note}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--libs", default="websockets,pulse")
    parser.add_argument("--downtime", type=float, default=2.0, help="seconds the server is down")
    parser.add_argument("--processes", type=int, default=2, help="client processes per library")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--recover-timeout", type=float, default=90.0)
    parser.add_argument("--keep-logs", metavar="DIR", help="write the servers' and clients' "
                        "100 ms reports here instead of a temporary directory")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_storm-") as tmp:
        workdir = Path(args.keep_logs or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for lib in args.libs.split(","):
            print(f"# {lib} clients ...", file=sys.stderr, flush=True)
            results.append(measure(lib.strip(), args, workdir))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
