"""A presence agent as a separate process, for the ZooKeeper end-to-end tests.

Run as ``python zk_agent.py URL KEY SESSION_TIMEOUT [--reregister]``: it opens a session
on any session backend (``zk://``, ``pulse://``),
registers KEY, and prints one JSON object per line (``{"event": "state", ...}`` for each
session state change, ``{"event": "registered", ...}`` once registered) until killed.
The tests SIGKILL it (a crash) or SIGSTOP/SIGCONT it (a paused process).

:class:`AgentProcess` starts it from a trio test and reads its lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

SCRIPT = Path(__file__).resolve()


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _agent(url: str, key: str, timeout: float, reregister: bool) -> None:
    from pulse.registry import connect_session

    options = {"reregister": True} if reregister else {}  # only the zk:// backend knows it
    async with (
        connect_session(url, session_timeout=timeout, **options) as session,
        trio.open_nursery() as nursery,
    ):
        changes = session.state_changes()
        _emit(event="state", state=session.state.value, session_id=session.session_id)

        async def report() -> None:
            async for change in changes:
                _emit(event="state", state=change.state.value, session_id=change.session_id,
                      reason=change.reason)

        nursery.start_soon(report)
        await session.register(key, b"agent")
        _emit(event="registered", session_id=session.session_id,
              timeout=session.session_timeout)
        await trio.sleep_forever()


def main(argv: list[str]) -> None:
    """Entry point of the agent process."""
    import structlog

    # Logs go to stderr so that stdout carries only the JSON lines.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    url, key, timeout = argv[0], argv[1], float(argv[2])
    trio.run(_agent, url, key, timeout, "--reregister" in argv[3:])


class AgentProcess:
    """The agent as a child of a trio test; read its JSON lines with :meth:`next_event`."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    @classmethod
    async def start(
        cls, url: str, key: str, timeout: float, *, reregister: bool = False
    ) -> AgentProcess:
        """Launch the agent process."""
        args = [sys.executable, str(SCRIPT), url, key, str(timeout)]
        if reregister:
            args.append("--reregister")
        process = await trio.lowlevel.open_process(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        return cls(process)

    async def next_event(self) -> dict[str, Any]:
        """The next JSON line (raises EOFError if the process ended)."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(4096)
            if not chunk:
                raise EOFError("agent exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    async def wait_for(self, **match: Any) -> dict[str, Any]:
        """Skip lines until one has every ``key=value`` of ``match``."""
        while True:
            event = await self.next_event()
            if all(event.get(k) == v for k, v in match.items()):
                return event

    def signal(self, signum: int) -> None:
        """Send a signal to the agent."""
        self.process.send_signal(signum)

    async def aclose(self) -> None:
        """Kill the agent (if alive) and reap it."""
        if self.process.returncode is None:
            self.process.kill()
        with trio.CancelScope(shield=True):
            await self.process.wait()
        if self.process.stdout is not None:
            await self.process.stdout.aclose()


if __name__ == "__main__":
    main(sys.argv[1:])
