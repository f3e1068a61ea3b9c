"""The reconnecting TCP client's delivery contract against a real server on loopback.

A ``reconnecting_tcp`` client runs in its own process (``tcp_pause_client.py``); it stops
itself (SIGSTOP) right before a ``send``, stays stopped until the server has declared it
dead and dropped the connection, and is resumed (SIGCONT): the ``send`` then runs first,
before anything else in the process has seen that the connection is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from pulse._core.policy import HeartbeatPolicy
from pulse._driver.connection import HeartbeatConnection
from pulse.errors import PeerTimeout
from pulse.plugins.tcp import serve_tcp

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parent / "tcp_pause_client.py"
CYCLES = 6


class Lines:
    """The JSON lines a process prints, with a bounded wait for the next matching one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = trio.Event()

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.items.append(json.loads(line))
                self._changed.set()
                self._changed = trio.Event()

    async def wait(self, start: int, *keys: str) -> tuple[int, dict[str, Any]]:
        """The first line from ``start`` on that has one of ``keys``, and its index."""
        while True:
            for index in range(start, len(self.items)):
                if any(key in self.items[index] for key in keys):
                    return index, self.items[index]
            await self._changed.wait()


async def test_a_send_after_a_long_pause_is_not_swallowed_by_the_dropped_connection() -> None:
    """Stopped past the server's timeout, then resumed straight into send(): every message
    is echoed (it went out on a live connection) and none is reported lost, over six
    cycles."""
    dropped: list[trio.Event] = []

    async def handler(conn: HeartbeatConnection) -> None:
        try:
            async for message in conn:
                await conn.send(message)
        except PeerTimeout:
            dropped[-1].set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(lambda task_status: serve_tcp(
                handler, port=0, policy=HeartbeatPolicy(0.1, 0.4), task_status=task_status))
            port = listeners[0].socket.getsockname()[1]
            process = await trio.lowlevel.open_process(
                [sys.executable, "-u", str(SCRIPT), str(port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert process.stdin is not None and process.stdout is not None
            lines = Lines()
            nursery.start_soon(lines.read, process.stdout)
            try:
                seen, _ = await lines.wait(0, "state")
                while lines.items[seen].get("state") != "open":
                    seen, _ = await lines.wait(seen + 1, "state")
                for cycle in range(CYCLES):
                    word = f"message-{cycle}"
                    dropped.append(trio.Event())
                    await process.stdin.send_all(f"stopsend {word}\n".encode())
                    seen, _ = await lines.wait(seen, "stopping")
                    with trio.fail_after(3):
                        await dropped[-1].wait()  # the server gave up on the stopped client
                    process.send_signal(signal.SIGCONT)
                    with trio.fail_after(5):
                        seen, outcome = await lines.wait(seen, "received", "receive_timeout")
                    assert outcome == {"received": word}, lines.items
                    seen += 1
                # None of the messages sent after a pause was written into a dropped
                # connection: each one was echoed over a fresh connection, and each was
                # confirmed before the next pause, so none is reported as possibly lost.
                assert not [item for item in lines.items if "receive_timeout" in item]
                assert [item for item in lines.items if "dropped" in item] == [], lines.items
            finally:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
                nursery.cancel_scope.cancel()
