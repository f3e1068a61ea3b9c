"""examples/presence.py against a real `pulse serve` lease server (bounded real time)."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.e2e.test_cli_tcp import PULSE, read_until

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "presence.py"


async def test_two_presence_examples_see_each_other(tmp_path: Path) -> None:
    """The second instance lists the first as online and sees it go offline when it ends.

    The first lives 6 s after registering and the second 10 s: the second must start and
    list within the first's 6 s (a Python process starting on a loaded machine took over
    2 s), and outlives it by at least 4 s to see it go."""
    async with trio.open_nursery() as nursery:
        server: trio.Process = await nursery.start(partial(
            trio.run_process, [*PULSE, "serve", "--listen", "pulse://127.0.0.1:0", "--tick", "0.2"],
            stdout=subprocess.PIPE, check=False, cwd=tmp_path))
        assert server.stdout is not None
        url = (await read_until(server.stdout, b"\n")).decode().split()[-1]
        first: trio.Process = await nursery.start(partial(
            trio.run_process, [sys.executable, str(EXAMPLE), url, "alpha", "6"],
            stdout=subprocess.PIPE, check=False, cwd=tmp_path))
        assert first.stdout is not None
        await read_until(first.stdout, b"registered alpha")
        with trio.fail_after(30):
            result = await trio.run_process(
                [sys.executable, str(EXAMPLE), url, "beta", "10"],
                capture_stdout=True, check=False, cwd=tmp_path)
        server.terminate()
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, out
    assert "online now: ['alpha', 'beta']" in out
    assert "online: alpha (already there)" in out
    assert "offline: alpha" in out
