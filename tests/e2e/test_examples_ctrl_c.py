"""The examples end quietly on Ctrl-C and explain their usage (real processes, bounded)."""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.e2e.test_cli_tcp import read_until
from tests.peers.harness import peer

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def interrupt_after(marker: bytes, *argv: str) -> tuple[int, bytes]:
    """Run an example until it prints ``marker``, send SIGINT; its status and stderr."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(partial(
            trio.run_process, [sys.executable, *argv], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, check=False))
        assert process.stdout is not None and process.stderr is not None
        await read_until(process.stdout, marker)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            errors = b"".join([chunk async for chunk in process.stderr])
            status = await process.wait()
    return status, errors


@pytest.mark.parametrize("script", ["tcp_echo_server.py", "ws_server.py"])
async def test_servers_stop_on_ctrl_c_without_a_traceback(script: str) -> None:
    """A server example interrupted with Ctrl-C exits 130 and prints no traceback."""
    status, errors = await interrupt_after(b"listening on", str(EXAMPLES / script), "0")
    assert b"Traceback" not in errors and b"KeyboardInterrupt" not in errors, errors.decode()
    assert status == 130


async def test_client_stops_on_ctrl_c_without_a_traceback() -> None:
    """tcp_client.py interrupted mid-run (connected to the echo server) exits quietly."""
    async with peer(str(EXAMPLES / "tcp_echo_server.py"), "0", ready="listening on ") as server:
        line = await server.wait_line(lambda text: text.startswith("listening on "))
        status, errors = await interrupt_after(b"reply:", str(EXAMPLES / "tcp_client.py"),
                                               line.split()[-1], "100")
    assert b"Traceback" not in errors and b"KeyboardInterrupt" not in errors, errors.decode()
    assert status == 130


def test_presence_without_arguments_prints_usage() -> None:
    """examples/presence.py without arguments prints its usage and exits 2 (no IndexError)."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "presence.py")],
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("usage: python examples/presence.py URL NAME")
    assert b"Traceback" not in result.stderr


async def test_ws_server_never_calls_received_echoes_lost() -> None:
    """Clients that got every echo and closed: the server reports no echo as lost."""
    with trio.fail_after(60):
        async with peer(str(EXAMPLES / "ws_server.py"), "0", ready="listening on ") as server:
            line = await server.wait_line(lambda text: text.startswith("listening on "))
            for _ in range(4):
                async with peer(str(EXAMPLES / "ws_client.py"), line.split()[-1], "10",
                                ready=None) as client:
                    assert client.process is not None
                    assert await client.process.wait() == 0
                assert "done: 10 of 10 echoes over 1 connection(s)" in client.lines
            await trio.sleep(0.3)
    text = "\n".join(server.lines)
    assert "lost" not in text and "not sent" not in text, text
    for report in (line for line in server.lines if "unconfirmed" in line):
        assert "the client may have it" in report
