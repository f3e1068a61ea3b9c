"""Helpers for the Dubbo end-to-end tests: pulse Dubbo processes and their JSON event lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

#: Where the third-party Dubbo peers are installed (see docs/dubbo.md, "Interoperability").
PEERS_DIR = Path(os.environ.get("PULSE_DUBBO_PEERS", Path.home() / ".cache" / "pulse-dubbo-peers"))
PEER_SCRIPTS = Path(__file__).resolve().parent / "dubbo_peers"


class EventLines:
    """Reads the JSON event lines a ``python -m pulse.plugins.dubbo`` process prints."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.process = process
        self._stream = process.stdout
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    async def next(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event called ``name`` (others are kept in ``events``); bounded wait."""
        with trio.fail_after(timeout):
            while True:
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    if not line.startswith(b"{"):
                        continue
                    event: dict[str, Any] = json.loads(line)
                    self.events.append(event)
                    if event["event"] == name:
                        return event
                data = await self._stream.receive_some(4096)
                if not data:
                    raise EOFError(f"process exited before a {name!r} event: {self.events}")
                self._buffer += data


async def start_dubbo(
    nursery: trio.Nursery, role: str, *args: str, env: dict[str, str] | None = None
) -> EventLines:
    """Start ``python -m pulse.plugins.dubbo ROLE ARGS`` and return its event reader."""
    command = [sys.executable, "-m", "pulse.plugins.dubbo", role, "--log-level", "warning", *args]
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            check=False, env=env,
        )
    )
    return EventLines(process)


def peer_env(name: str) -> dict[str, str]:
    """An environment whose PYTHONPATH holds the third-party package ``name`` only."""
    return dict(os.environ, PYTHONPATH=str(PEERS_DIR / name))


def peer_installed(name: str, marker: str) -> bool:
    """True if the third-party peer ``name`` is installed (``marker`` is a file inside it)."""
    return (PEERS_DIR / name / marker).is_file()
