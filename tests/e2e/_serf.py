"""Real ``serf agent`` processes on loopback for the gossip end-to-end tests."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from typing import Any

import pytest
import trio

from tests.ci import in_ci

from ._wait import accepts_connections, wait_until

SERF = shutil.which("serf")


def require_serf() -> str:
    """The serf binary, or skip the module (fail in CI, where scripts/test.sh installs it)."""
    if SERF is None:
        if in_ci():
            raise RuntimeError("serf is required in CI (scripts/test.sh installs it)")
        pytest.skip("serf is not installed", allow_module_level=True)
    return SERF


def free_port() -> int:
    """A loopback port free for both UDP and TCP (memberlist binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class SerfAgent:
    """A ``serf agent`` process with its gossip and RPC ports."""

    def __init__(self, name: str, tags: dict[str, str] | None = None,
                 join: tuple[str, int] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.rpc = free_port()
        self.addr = ("127.0.0.1", self.port)
        args = [require_serf(), "agent", "-node", name, "-bind", f"127.0.0.1:{self.port}",
                "-rpc-addr", f"127.0.0.1:{self.rpc}"]
        for key, value in (tags or {}).items():
            args += ["-tag", f"{key}={value}"]
        if join is not None:
            args += ["-join", f"{join[0]}:{join[1]}"]
        # Output is discarded: an unread pipe could fill up and stall the agent.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stopped = False

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block (at most ``timeout`` s) until the agent's RPC port accepts connections."""
        wait_until(lambda: accepts_connections(self.rpc), timeout=timeout,
                   what=f"serf agent {self.name} starting", process=self.proc)

    async def members(self) -> dict[str, dict[str, Any]]:
        """``serf members -format json`` keyed by member name."""
        result = await trio.run_process(
            [require_serf(), "members", "-rpc-addr", f"127.0.0.1:{self.rpc}", "-format", "json"],
            capture_stdout=True, capture_stderr=True)
        return {m["name"]: m for m in json.loads(result.stdout)["members"]}

    def listing(self) -> str:
        """``serf members`` as text (blocking, for tests outside trio)."""
        out = subprocess.run([require_serf(), "members", "-rpc-addr", f"127.0.0.1:{self.rpc}"],
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout

    async def leave(self) -> None:
        """``serf leave``: a graceful leave of the agent (it exits afterwards)."""
        await trio.run_process([require_serf(), "leave", "-rpc-addr", f"127.0.0.1:{self.rpc}"],
                               capture_stdout=True, capture_stderr=True)

    def pause(self) -> None:
        """SIGSTOP the agent (it stops answering, as a hung process would)."""
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def stop(self) -> None:
        """Kill the agent and reap it."""
        if self.stopped:
            self.proc.send_signal(signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
