"""The TCP examples run as documented (real processes on loopback, bounded)."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.e2e.test_cli_tcp import read_until

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_tcp_client_talks_to_tcp_echo_server() -> None:
    """examples/tcp_client.py gets echoes from examples/tcp_echo_server.py and reports 'open'."""
    async with trio.open_nursery() as nursery:
        server: trio.Process = await nursery.start(partial(
            trio.run_process, [sys.executable, str(EXAMPLES / "tcp_echo_server.py"), "0"],
            stdout=subprocess.PIPE, check=False))
        assert server.stdout is not None
        banner = await read_until(server.stdout, b"\n")
        port = banner.decode().split()[-1]
        with trio.fail_after(20):
            result = await trio.run_process(
                [sys.executable, str(EXAMPLES / "tcp_client.py"), port, "2"],
                capture_stdout=True, check=False)
        server.terminate()
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0
    assert "state: open (connected)" in out
    assert "reply: {'echo': 0}" in out and "reply: {'echo': 1}" in out
