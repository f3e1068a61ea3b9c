"""Holding many heartbeat connections: the ``websockets`` server vs pulse's ws:// and tcp://.

Run: ``python benchmarks/bench_hold.py [--counts 2000,10000] [--window 20] [--servers ...]``

For each connection count, one server after the other in the same run:

* ``websockets``: ``anchor_ws_server.py`` (``websockets.asyncio.server.serve`` with
  ``ping_interval=1``, ``ping_timeout=3``, ``compression=None``): the library's own keepalive;
* ``pulse ws://``: ``pulse serve --listen ws://127.0.0.1:PORT --interval 1`` (on trio);
* ``pulse tcp://``: ``pulse serve --listen tcp://127.0.0.1:PORT --interval 1`` (on trio);
* ``pulse ws:// (asyncio)``, ``pulse tcp:// (asyncio)``: the same listeners and options under
  ``asyncio.run`` (``pulse_aio_server.py --loop asyncio``);
* ``pulse ws:// (uvloop)``, ``pulse tcp:// (uvloop)``: the same under ``uvloop.run``
  (``pulse_aio_server.py --loop uvloop``; in the default list only when uvloop is installed).

``--before-pulse CMD`` adds nothing by itself but names another ``pulse`` command (e.g.
another checkout's environment): ``pulse ws:// (before)`` and ``pulse tcp:// (before)`` run
``CMD serve ...`` on trio, so two versions are compared in one run.

Each server is a fresh subprocess. Its idle RSS is read once it listens; then raw-protocol
load generators (``loadgen.py``, separate processes, no WebSocket extensions offered) open all
connections and answer every server ping. After ``--settle`` seconds a window of ``--window``
seconds is measured:

* CPU per heartbeat: the server's utime+stime (/proc/PID/stat) over the window divided by
  the server pings the generators answered in the window;
* RSS per connection: (VmRSS at the end of the window − idle VmRSS) / connections held;
* lost: connections the server closed or reset after the handshake (whole run);
* connect time: until every generator finished its connect phase (handshakes in flight are
  capped at ``--concurrency`` per generator process);
* local_pause: ``local_pause`` events in the server's log during the window.

Ratios are pulse / websockets (lower is better for pulse). Everything started is stopped at
the end, also on errors or Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HERE,
    count_in_file,
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

ANCHOR = "websockets"


@dataclass
class Result:
    server: str
    count: int
    connected: int = 0
    connect_seconds: float = float("nan")
    cpu_per_heartbeat: float = float("nan")
    rss_per_connection: float = float("nan")
    heartbeats: int = 0
    lost: int = 0
    local_pause: int = 0
    server_cores: float = float("nan")
    generator_cores: float = float("nan")
    note: str = ""


TRIO_SERVERS = ("pulse ws://", "pulse tcp://")
LOOPS = ("asyncio", "uvloop")


def default_servers() -> str:
    """The anchor, pulse on trio, on asyncio, and on uvloop when it is installed."""
    loops = [loop for loop in LOOPS if loop != "uvloop" or importlib.util.find_spec("uvloop")]
    return ",".join([ANCHOR, *TRIO_SERVERS,
                     *(f"{name} ({loop})" for loop in loops for name in TRIO_SERVERS)])


def server_command(name: str, port: int, interval: float,
                   before: list[str] | None = None) -> tuple[list[str], str]:
    """The command for a server and the load generator protocol it speaks.

    ``pulse ws://`` / ``pulse tcp://`` run ``pulse serve`` (trio); a loop in brackets,
    ``pulse ws:// (asyncio)``, runs the same listener under that loop; ``(before)`` runs
    ``pulse serve`` of the ``before`` command.
    """
    if name == ANCHOR:
        return ([sys.executable, str(HERE / "anchor_ws_server.py"), "--port", str(port),
                 "--interval", str(interval), "--timeout", str(3 * interval)], "ws")
    base, _, loop = name.partition(" (")
    loop = loop.removesuffix(")")
    scheme = base.split()[-1].removesuffix("://")
    if scheme not in ("ws", "tcp") or not base.startswith("pulse ") or (
            loop and loop not in (*LOOPS, "before")):
        raise ValueError(f"unknown server {name!r} (known: {ANCHOR}, pulse ws:// and "
                         f"pulse tcp://, each also with (asyncio), (uvloop) or (before))")
    listen = ["--listen", f"{scheme}://127.0.0.1:{port}", "--interval", str(interval)]
    if loop == "before":
        if not before:
            raise ValueError(f"{name!r} needs --before-pulse")
        return ([*before, "serve", *listen], scheme)
    if loop:
        return ([sys.executable, str(HERE / "pulse_aio_server.py"), "--loop", loop, *listen],
                scheme)
    return ([*pulse_command(), "serve", *listen], scheme)


def measure(name: str, count: int, args: argparse.Namespace, workdir: Path) -> Result:
    result = Result(name, count)
    port = free_port()
    command, proto = server_command(name, port, args.interval, args.before_pulse)
    tag = name.replace(" ", "_").replace(":", "").replace("/", "")
    out_path = workdir / f"{tag}-{count}.out"
    log_path = workdir / f"{tag}-{count}.log"
    with out_path.open("wb") as out, log_path.open("wb") as log:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=log)
    try:
        wait_for_line(out_path, "listening", 30, server)
        time.sleep(1.0)
        idle_rss = rss_bytes(server.pid)
        with generators(proto, port, count, per_process=args.per_process,
                        extra=["--concurrency", str(args.concurrency),
                               "--connect-timeout", str(args.connect_timeout)]) as gens:
            connected = gens.wait_connected(args.connect_timeout + 60)
            result.connect_seconds = connected["seconds"]
            if connected["connected"] < count:
                result.note = f"only {connected['connected']} of {count} connected in time"
            time.sleep(args.settle)
            before = gens.stats()
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            pauses0 = count_in_file(log_path, "local_pause")
            time.sleep(args.window)
            cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
            after = gens.stats()
            hold_rss = rss_bytes(server.pid)
            result.local_pause = count_in_file(log_path, "local_pause") - pauses0
            result.connected = after["connected"]
            result.lost = after["lost"]
            result.heartbeats = after["answered"] - before["answered"]
            if result.heartbeats:
                result.cpu_per_heartbeat = (cpu1 - cpu0) / result.heartbeats
            if result.connected:
                result.rss_per_connection = (hold_rss - idle_rss) / result.connected
            result.server_cores = (cpu1 - cpu0) / (t1 - t0)
            result.generator_cores = (after["cpu"] - before["cpu"]) / (t1 - t0)
            if after["errors"]:
                result.note = (result.note + " " + ", ".join(
                    f"{k}: {v}" for k, v in sorted(after["errors"].items()))).strip()
    finally:
        stop(server)
    return result


def fmt(value: float, scale: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value * scale:.{digits}f}"


def report(results: list[Result], out: Any = sys.stdout) -> None:
    anchors = {r.count: r for r in results if r.server == ANCHOR}
    rows = []
    for r in results:
        anchor = anchors.get(r.count)
        rows.append([
            f"{r.count:,}", r.server, f"{r.connected:,}", fmt(r.connect_seconds, 1, 1),
            f"{r.heartbeats:,}", fmt(r.cpu_per_heartbeat, 1e6),
            fmt(r.rss_per_connection, 1 / 1024, 1), str(r.lost),
            str(r.local_pause), fmt(r.server_cores, 1, 2), fmt(r.generator_cores, 1, 2),
            "" if r.server == ANCHOR or anchor is None else
            ratio(r.cpu_per_heartbeat, anchor.cpu_per_heartbeat),
            "" if r.server == ANCHOR or anchor is None else
            ratio(r.rss_per_connection, anchor.rss_per_connection),
        ])
    table(["N", "server", "held", "connect s", "heartbeats", "CPU µs/hb", "RSS KiB/conn", "lost",
           "local_pause", "server cores", "gen cores", "CPU ratio", "RSS ratio"], rows, out)
    for r in results:
        if r.note:
            out.write(f"note {r.count:,} {r.server}: {r.note}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--counts", default="2000,10000", help="comma-separated connection counts")
    parser.add_argument("--servers", default=default_servers(),
                        help="comma-separated, in order (default: %(default)s)")
    parser.add_argument("--before-pulse", type=shlex.split, default=None, metavar="CMD",
                        help="the pulse command of the '(before)' servers (another "
                             "checkout's, e.g. /tmp/before/.venv/bin/pulse)")
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after connecting")
    parser.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=100,
                        help="handshakes in flight per generator process")
    parser.add_argument("--per-process", type=int, default=5000,
                        help="connections per generator process")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    servers = [s.strip() for s in args.servers.split(",")]
    for name in servers:
        server_command(name, 0, args.interval, args.before_pulse)  # fail before any run
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench_hold-") as tmp:
        for count in counts:
            for name in servers:
                print(f"# {name} at {count:,} connections ...", file=sys.stderr, flush=True)
                results.append(measure(name, count, args, Path(tmp)))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
