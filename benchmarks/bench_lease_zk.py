"""Session renewal at scale: Apache ZooKeeper vs pulse's lease server (``pulse serve --listen pulse://``).

Run: ``python benchmarks/bench_lease_zk.py [--counts 1000,10000] [--window 30]``

For each session count, one server after the other in the same run:

* ``zookeeper``: a standalone Apache ZooKeeper (the Debian package's
  ``/usr/share/java/zookeeper.jar``, or ``PULSE_ZK_CLASSPATH``) in a temporary directory with
  ``tickTime=2000``, ``maxClientCnxns=0``, ``forceSync=no`` (session creation writes the
  transaction log; pulse's lease server without ``--data-dir`` keeps no journal), serial GC
  and a 512 MiB heap limit;
* ``pulse lease``: ``pulse serve --listen pulse://127.0.0.1:PORT`` with its defaults.

Raw-protocol generators (``loadgen.py``: jute ConnectRequest + pings with xid -2 / op 11 for
ZooKeeper, ``connect`` + ``ping`` requests for the lease server) open ``N`` sessions with a
10 s timeout and renew each on the Java client's schedule: read timeout = 2/3 of the
negotiated timeout, a ping after half the read timeout without sending (every 3.3 s).

Measured over ``--window`` seconds after ``--settle``: CPU per renewal (server utime+stime
from /proc over acknowledged pings), RSS per session ((VmRSS at the end of the window − idle
VmRSS) / sessions), false expiries (sessions the server expired or dropped although the
generator renewed them, whole run), late (a session heard nothing for a whole read timeout),
time to open all sessions. Ratios are pulse / ZooKeeper; "flat" compares each server's cost
per renewal at the largest count with the smallest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    cpu_seconds,
    free_port,
    generators,
    pulse_command,
    ratio,
    rss_bytes,
    stop,
    table,
    wait_for_line,
)

ANCHOR = "zookeeper"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
LOGGER_JAR = Path("/usr/share/java/slf4j-simple.jar")
JVM_OPTIONS = (
    "-Xms32m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.admin.enableServer=false", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
)


@dataclass
class Result:
    server: str
    count: int
    connected: int = 0
    connect_seconds: float = float("nan")
    cpu_per_renewal: float = float("nan")
    rss_per_session: float = float("nan")
    renewals: int = 0
    false_expiries: int = 0
    late: int = 0
    server_cores: float = float("nan")
    generator_cores: float = float("nan")
    note: str = ""


def zookeeper_command(workdir: Path, port: int) -> list[str]:
    java = shutil.which("java")
    classpath = os.environ.get("PULSE_ZK_CLASSPATH")
    if not classpath:
        if java is None or not ZOOKEEPER_JAR.exists():
            raise SystemExit("ZooKeeper not found: install the Debian package 'zookeeper' "
                             "(java + /usr/share/java/zookeeper.jar) or set PULSE_ZK_CLASSPATH")
        parts = [str(ZOOKEEPER_JAR)] + ([str(LOGGER_JAR)] if LOGGER_JAR.exists() else [])
        classpath = os.pathsep.join(parts)
    assert java is not None
    data = workdir / f"zk-{port}"
    data.mkdir()
    config = data / "zoo.cfg"
    config.write_text("\n".join([
        "tickTime=2000", f"dataDir={data}", f"clientPort={port}", "clientPortAddress=127.0.0.1",
        "maxClientCnxns=0", "forceSync=no", "admin.enableServer=false",
        "4lw.commands.whitelist=srvr", "autopurge.purgeInterval=0",
    ]) + "\n")
    return [java, *JVM_OPTIONS, "-cp", classpath,
            "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)]


def zookeeper_serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"srvr")
            return b"Mode:" in sock.recv(4096)
    except OSError:
        return False


def start_server(name: str, workdir: Path, port: int) -> tuple[subprocess.Popen[Any], str]:
    out_path = workdir / f"{name.replace(' ', '_')}-{port}.log"
    if name == ANCHOR:
        command, proto = zookeeper_command(workdir, port), "zk"
    else:
        command, proto = [*pulse_command(), "serve", "--listen", f"pulse://127.0.0.1:{port}"], "lease"
    with out_path.open("wb") as out:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, cwd=workdir)
    try:
        if name == ANCHOR:
            deadline = time.monotonic() + 60
            while not zookeeper_serving(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ZooKeeper did not start: "
                                       + out_path.read_text(errors="replace")[-2000:])
                time.sleep(0.2)
        else:
            wait_for_line(out_path, "listening", 30, server)
    except BaseException:
        stop(server)
        raise
    return server, proto


def measure(name: str, count: int, args: argparse.Namespace, workdir: Path) -> Result:
    result = Result(name, count)
    port = free_port()
    server, proto = start_server(name, workdir, port)
    try:
        time.sleep(2.0)
        idle_rss = rss_bytes(server.pid)
        with generators(proto, port, count, per_process=args.per_process,
                        extra=["--concurrency", str(args.concurrency),
                               "--connect-timeout", str(args.connect_timeout),
                               "--session-timeout", str(args.session_timeout)]) as gens:
            connected = gens.wait_connected(args.connect_timeout + 60)
            result.connect_seconds = connected["seconds"]
            if connected["connected"] < count:
                result.note = f"only {connected['connected']} of {count} connected in time"
            time.sleep(args.settle)
            before = gens.stats()
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(args.window)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            after = gens.stats()
            hold_rss = rss_bytes(server.pid)
            result.connected = after["connected"]
            result.false_expiries = after["expired"]
            result.late = after["late"]
            result.renewals = after["renewals"] - before["renewals"]
            if result.renewals:
                result.cpu_per_renewal = (cpu1 - cpu0) / result.renewals
            if result.connected:
                result.rss_per_session = (hold_rss - idle_rss) / result.connected
            result.server_cores = (cpu1 - cpu0) / (t1 - t0)
            result.generator_cores = (after["cpu"] - before["cpu"]) / (t1 - t0)
            if after["errors"]:
                result.note = (result.note + " " + ", ".join(
                    f"{k}: {v}" for k, v in sorted(after["errors"].items()))).strip()
    finally:
        stop(server, grace=10)
    return result


def fmt(value: float, scale: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value * scale:.{digits}f}"


def report(results: list[Result], out: Any = sys.stdout) -> None:
    anchors = {r.count: r for r in results if r.server == ANCHOR}
    smallest: dict[str, Result] = {}
    for r in sorted(results, key=lambda r: r.count):
        smallest.setdefault(r.server, r)
    rows = []
    for r in results:
        anchor = anchors.get(r.count)
        first = smallest[r.server]
        rows.append([
            f"{r.count:,}", r.server, f"{r.connected:,}", fmt(r.connect_seconds, 1, 1),
            fmt(r.cpu_per_renewal, 1e6), fmt(r.rss_per_session, 1 / 1024, 1),
            str(r.false_expiries), str(r.late), f"{r.renewals:,}", fmt(r.server_cores, 1, 2),
            fmt(r.generator_cores, 1, 2),
            "" if first is r else f"{ratio(r.cpu_per_renewal, first.cpu_per_renewal)} of {first.count:,}",
            "" if r.server == ANCHOR or anchor is None else
            ratio(r.cpu_per_renewal, anchor.cpu_per_renewal),
            "" if r.server == ANCHOR or anchor is None else
            ratio(r.rss_per_session, anchor.rss_per_session),
        ])
    table(["N", "server", "held", "connect s", "CPU µs/renewal", "RSS KiB/session",
           "false expiries", "late", "renewals", "server cores", "gen cores", "cost vs smallest N",
           "CPU ratio", "RSS ratio"], rows, out)
    for r in results:
        if r.note:
            out.write(f"note {r.count:,} {r.server}: {r.note}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--counts", default="1000,10000", help="comma-separated session counts")
    parser.add_argument("--servers", default=f"{ANCHOR},pulse lease")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after connecting")
    parser.add_argument("--session-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--connect-timeout", type=float, default=90.0)
    parser.add_argument("--concurrency", type=int, default=100,
                        help="handshakes in flight per generator process")
    parser.add_argument("--per-process", type=int, default=5000,
                        help="sessions per generator process")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    servers = [s.strip() for s in args.servers.split(",")]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench_lease_zk-") as tmp:
        for count in counts:
            for name in servers:
                print(f"# {name} at {count:,} sessions ...", file=sys.stderr, flush=True)
                results.append(measure(name, count, args, Path(tmp)))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
