"""examples/rpc_server.py and rpc_client.py run as documented (real processes, loopback)."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Lines:
    """Reads a process's stdout line by line, with bounded waits."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.buffer = b""
        self.seen: list[str] = []

    async def until(self, pattern: str, timeout: float = 10.0) -> str:
        """The next line matching the regular expression ``pattern``."""
        with trio.fail_after(timeout):
            while True:
                while b"\n" in self.buffer:
                    raw, self.buffer = self.buffer.split(b"\n", 1)
                    line = raw.decode()
                    self.seen.append(line)
                    if re.search(pattern, line):
                        return line
                data = await self.stream.receive_some(4096)
                if not data:
                    raise EOFError(f"no line matching {pattern!r} in {self.seen}")
                self.buffer += data


async def start(nursery: trio.Nursery, script: str, *args: str) -> tuple[trio.Process, Lines]:
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process, [sys.executable, str(EXAMPLES / script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False,
        )
    )
    return process, Lines(process)


async def start_server(nursery: trio.Nursery, port: int = 0) -> tuple[trio.Process, Lines, int]:
    process, lines = await start(nursery, "rpc_server.py", str(port), "--heartbeat", "0.3")
    banner = await lines.until(r"^listening on ")
    return process, lines, int(banner.rsplit(":", 1)[1])


async def test_calls_and_heartbeats_share_one_connection() -> None:
    """Between calls a second apart, answered heartbeats flow on the same connection."""
    async with trio.open_nursery() as nursery:
        server, server_lines, port = await start_server(nursery)
        client, lines = await start(
            nursery, "rpc_client.py", f"127.0.0.1:{port}", "--heartbeat", "0.3",
            "--calls", "3", "--interval", "1.0", "--deadline", "20",
        )
        for i in range(3):
            await lines.until(rf"^add\({i}, {i}\) = {2 * i}$")
        summary = await lines.until(r"^heartbeats sent")
        sent, answered, received = map(int, re.findall(r"\d+", summary)[:3])
        # Either end may be the one whose heartbeat falls due first in an idle gap (the
        # other's is then answered traffic and needs none): count both directions.
        assert sent + received >= 3 and answered >= sent - 1
        closed = await server_lines.until(r"^closed ")
        assert "heartbeats received" in closed
        with trio.fail_after(10):
            assert await client.wait() == 0
        server.kill()
        nursery.cancel_scope.cancel()


async def test_killed_server_fails_pending_calls_fast_and_client_reconnects() -> None:
    """Server killed: the pending call fails within 1 s, calls fail fast, the client reconnects."""
    async with trio.open_nursery() as nursery:
        server, _, port = await start_server(nursery)
        client, lines = await start(
            nursery, "rpc_client.py", f"127.0.0.1:{port}", "--heartbeat", "0.3",
            "--slow", "30", "--exit-after-reconnect", "--deadline", "30",
        )
        await lines.until(r"^connected to .*\(connection 1\)")
        await lines.until(r"^sleep\(30.0\) pending")
        await lines.until(r"^add\(\d+, \d+\) = ")
        server.kill()
        killed_at = trio.current_time()
        failure = await lines.until(r"^sleep\(30.0\) failed after")
        assert trio.current_time() - killed_at < 1.0
        assert "ConnectionClosed" in failure and "PeerTimeout" not in failure
        await lines.until(r"^add\(\d+, \d+\) failed: ConnectionClosed")
        second, _, _ = await start_server(nursery, port)
        await lines.until(r"^connected to .*\(connection 2\)")
        await lines.until(r"^add\(\d+, \d+\) = ")
        with trio.fail_after(10):
            assert await client.wait() == 0
        second.kill()
        nursery.cancel_scope.cancel()
