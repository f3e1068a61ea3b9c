"""Shared plumbing of the side-by-side benchmarks: processes, /proc readings, generators, tables.

Nothing here imports pulse: the servers under test are started as commands (``pulse serve``,
the anchor scripts next to this file, a JVM) so the benchmarks measure whatever the current
code does behind those commands.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def pulse_command() -> list[str]:
    """The ``pulse`` command of the running interpreter's environment."""
    beside = Path(sys.executable).with_name("pulse")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("pulse")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from pulse.cli.main import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (threads included), from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_for_line(path: Path, needle: str, timeout: float, process: subprocess.Popen[Any]) -> str:
    """Poll a log file until a line containing ``needle`` appears; return that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}) before '{needle}': "
                               f"{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"no '{needle}' in {path} within {timeout}s")


def count_in_file(path: Path, needle: str) -> int:
    """Lines of ``path`` containing ``needle`` (0 if the file does not exist)."""
    if not path.exists():
        return 0
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            if needle.encode() in line:
                count += 1
    return count


def stop(process: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """SIGINT, then SIGKILL after ``grace`` seconds; always reaps."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def sources(count: int) -> list[str]:
    """Loopback source addresses 127.0.0.2.. (a distinct port space each)."""
    return [f"127.0.0.{2 + i}" for i in range(count)]


@dataclass
class Generators:
    """A set of ``loadgen.py`` processes sharing ``count`` connections."""

    proto: str
    port: int
    count: int
    per_process: int = 5000
    extra: Sequence[str] = ()
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    connected: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> None:
        n_proc = max(1, math.ceil(self.count / self.per_process))
        addresses = sources(8)
        for index in range(n_proc):
            share = self.count // n_proc + (1 if index < self.count % n_proc else 0)
            mine = addresses[index::n_proc] or addresses
            self.processes.append(subprocess.Popen(
                [sys.executable, str(HERE / "loadgen.py"), "--proto", self.proto,
                 "--port", str(self.port), "--count", str(share), "--sources", ",".join(mine),
                 *self.extra],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            ))

    def _read(self, process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("load generator did not answer")
            ready, _, _ = select.select([process.stdout], [], [], remaining)
            if ready:
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(f"load generator exited ({process.wait()})")
                return dict(json.loads(line))

    def wait_connected(self, timeout: float) -> dict[str, Any]:
        """Wait for every process's connect phase; return summed counters + slowest time."""
        self.connected = [self._read(p, timeout) for p in self.processes]
        total = _sum(self.connected)
        total["seconds"] = max(item["seconds"] for item in self.connected)
        return total

    def stats(self) -> dict[str, Any]:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("stats\n")
            process.stdin.flush()
        return _sum([self._read(p, 30) for p in self.processes])

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _sum(items: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("connected", "established", "failed", "lost", "answered", "renewals", "expired",
            "late", "cpu")
    total: dict[str, Any] = {key: sum(item.get(key, 0) for item in items) for key in keys}
    errors: dict[str, int] = {}
    for item in items:
        for key, value in item.get("errors", {}).items():
            errors[key] = errors.get(key, 0) + value
    total["errors"] = errors
    return total


@contextlib.contextmanager
def generators(proto: str, port: int, count: int, **options: Any) -> Iterator[Generators]:
    group = Generators(proto, port, count, **options)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def ratio(ours: float | None, anchor: float | None) -> str:
    if ours is None or anchor is None or anchor == 0 or math.isnan(ours) or math.isnan(anchor):
        return "-"
    return f"{ours / anchor:.2f}×"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: IO[str] = sys.stdout) -> None:
    """Print a Markdown table."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    out.write(line + "\n")
    out.write("|" + "|".join("-" * (w + 2) for w in widths) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                  + " |\n")
    out.flush()
