"""Helpers for lease end-to-end tests: an in-process lease server on loopback, agent
processes, a watcher that records event times, and a TCP proxy that can black-hole links."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from pulse.plugins.lease.server import LeaseServer, ServerConfig, bound_address
from pulse.presence import PresenceEvent
from pulse.registry import connect_session

AGENT = [sys.executable, "-m", "pulse.cli.cmd_agent"]


class Recorder:
    """(time, event) pairs from a watch, with bounded waits."""

    def __init__(self) -> None:
        self.events: list[tuple[float, PresenceEvent]] = []
        self._changed = trio.Event()

    async def run(self, url: str, prefix: str, timeout: float,
                  *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with connect_session(url, session_timeout=timeout) as session:
            events = session.watch(prefix)
            start = getattr(events, "start", None)
            if start is not None:
                await start()
            task_status.started(session)
            async for event in events:
                self.events.append((trio.current_time(), event))
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, kind: str, name: str, after: float = 0.0,
                       timeout: float = 15.0) -> float:
        """When ``kind`` for ``name`` was seen at or after ``after`` (bounded wait)."""
        with trio.fail_after(timeout):
            while True:
                for at, event in self.events:
                    if at >= after and (event.event, event.id) == (kind, name):
                        return at
                await self._changed.wait()

    def seen(self) -> list[tuple[str, str]]:
        return [(e.event, e.id) for _, e in self.events]


class ServerHandle:
    """An in-process lease server that can be crashed and restarted on the same port."""

    def __init__(self, nursery: trio.Nursery, config: ServerConfig) -> None:
        self.nursery = nursery
        self.config = config
        self.port = 0
        self.scope: trio.CancelScope | None = None
        self.server: LeaseServer | None = None

    async def start(self) -> LeaseServer:
        server = LeaseServer(self.config)
        self.scope = trio.CancelScope()

        async def host(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
            assert self.scope is not None
            with self.scope:
                await server.serve_tcp("127.0.0.1", self.port, task_status=task_status)

        listeners = await self.nursery.start(host)
        self.port = bound_address(listeners)[1]
        self.server = server
        return server

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    @property
    def url(self) -> str:
        return f"pulse://127.0.0.1:{self.port}"


@asynccontextmanager
async def lease_server(**config: Any) -> AsyncIterator[ServerHandle]:
    async with trio.open_nursery() as nursery:
        handle = ServerHandle(nursery, ServerConfig(**config))
        await handle.start()
        yield handle
        nursery.cancel_scope.cancel()


class Agent:
    """A ``pulse agent`` process whose output lines are collected."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_line(self, fragment: str, timeout: float = 15.0, count: int = 1) -> str:
        with trio.fail_after(timeout):
            while True:
                matches = [line for line in self.lines if fragment in line]
                if len(matches) >= count:
                    return matches[count - 1]
                await self._changed.wait()

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)


@asynccontextmanager
async def agent(url: str, name: str, timeout: float, cwd: Any, *extra: str
                ) -> AsyncIterator[Agent]:
    """Run ``pulse agent`` until the block ends (then SIGKILL it, always)."""
    command = [*AGENT, "--server", url, "--id", name, "--session-timeout", str(timeout), *extra]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, cwd=cwd)
    handle = Agent(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle.pump)
            try:
                yield handle
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            handle.signal(signal.SIGCONT)
            handle.signal(signal.SIGKILL)
            with trio.move_on_after(5):
                await process.wait()


class Proxy:
    """A TCP forwarder on loopback; :meth:`cut` black-holes every current link (nothing
    forwarded, nothing closed) and :attr:`refusing` makes new connections fail."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.generation = 0
        self.refusing = False
        self.accepted = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = bound_address(listeners)[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self.generation += 1

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.refusing:
            await client.aclose()
            return
        self.accepted += 1
        generation = self.generation
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return

        async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async for data in source:
                    if self.generation != generation:
                        await trio.sleep_forever()  # the cable is out: swallow, never close
                    await sink.send_all(data)
                await sink.aclose()

        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)
