"""The WebSocket examples run as documented (real processes on loopback, bounded)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from tests.peers.harness import peer

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _ticks(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(r"echo: tick (\d+)", line))]


async def test_ws_client_survives_a_restart_of_ws_server() -> None:
    """The client example gets every echo in order across a kill and restart of the server."""
    server_script = str(EXAMPLES / "ws_server.py")
    client_script = str(EXAMPLES / "ws_client.py")
    with trio.fail_after(60):
        async with peer(server_script, "0", ready="listening on ") as server:
            line = await server.wait_line(lambda text: text.startswith("listening on "))
            url = line.split()[-1]
            port = int(url.rsplit(":", 1)[1].strip("/"))
            server.args = [str(port)]  # restart on the same port
            async with peer(client_script, url, "30", ready=None) as client:
                await client.wait_line(lambda text: text == "echo: tick 5")
                await server.kill()
                await client.wait_line(lambda text: text.startswith("state: reconnecting"))
                await trio.sleep(0.5)  # a few ticks are queued while the server is down
                await server.start(ready="listening on ")
                assert client.process is not None
                assert await client.process.wait() == 0
    lines = client.lines
    assert _ticks(lines) == list(range(30))
    assert "done: 30 of 30 echoes over 2 connection(s)" in lines
    assert "greeted: hello from connection 1" in lines
    assert "greeted: hello from connection 2" in lines
    assert any(text.startswith("127.0.0.1:") and "connected" in text for text in server.lines)


async def test_ws_server_drops_a_frozen_client() -> None:
    """A SIGSTOPped examples/ws_client.py is dropped by examples/ws_server.py with 1011."""
    with trio.fail_after(30):
        async with peer(str(EXAMPLES / "ws_server.py"), "0", ready="listening on ") as server:
            line = await server.wait_line(lambda text: text.startswith("listening on "))
            async with peer(str(EXAMPLES / "ws_client.py"), line.split()[-1], "1000",
                            ready=None) as client:
                await client.wait_line(lambda text: text == "echo: tick 2")
                client.pause()
                left = await server.wait_line(lambda text: " left: " in text)
                assert "code 1011" in left and "peer timeout" in left
