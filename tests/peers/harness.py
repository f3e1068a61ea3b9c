"""Run a peer script in its own process and follow what it prints (for end-to-end tests).

A peer prints ``PORT <n>`` once listening (servers) and then JSON event lines; this module
starts it, reads its stdout in a background task, and lets a test wait (bounded) for an event.
Every process is killed and reaped when the ``async with`` block ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

PEERS = Path(__file__).resolve().parent

Event = dict[str, Any]


class PeerProcess:
    """One peer script; restartable on the same port."""

    def __init__(self, nursery: trio.Nursery, script: str, args: list[str]) -> None:
        self._nursery = nursery
        self.script = script
        self.args = args
        self.process: trio.Process | None = None
        self.port = 0
        self.events: list[Event] = []
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.starts = 0

    async def start(self, port: int | None = None, *, ready: str | None = "PORT ",
                    start_timeout: float = 10.0) -> None:
        """Start the script (with ``--port`` when ``port`` is given); wait for ``ready``."""
        argv = [sys.executable, "-u", str(PEERS / self.script), *self.args]
        if port is not None:
            argv += ["--port", str(port)]
        self.process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.starts += 1
        assert self.process.stdout is not None
        self._nursery.start_soon(self._read, self.process.stdout)
        if ready is not None:
            with trio.fail_after(start_timeout):
                line = await self.wait_line(lambda text: text.startswith(ready))
            found = re.search(r"(\d+)\D*$", line)  # "PORT 8765", "listening on ws://h:8765/"
            assert found is not None, line
            self.port = int(found.group(1))

    async def _read(self, stdout: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async with stdout:
            while True:
                try:
                    data = await stdout.receive_some(65536)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    text = raw.decode("utf-8", "replace").strip()
                    self.lines.append(text)
                    if text.startswith("{"):
                        try:
                            self.events.append(json.loads(text))
                        except ValueError:
                            pass
                    self._changed.set()
                    self._changed = trio.Event()

    async def wait_line(self, predicate: Callable[[str], bool], start: int = 0) -> str:
        """The first line from index ``start`` on that satisfies ``predicate`` (waits)."""
        index = start
        while True:
            while index < len(self.lines):
                if predicate(self.lines[index]):
                    return self.lines[index]
                index += 1
            await self._changed.wait()

    async def wait_event(self, predicate: Callable[[Event], bool], start: int = 0) -> Event:
        """The first JSON event from index ``start`` on that satisfies ``predicate`` (waits)."""
        index = start
        while True:
            while index < len(self.events):
                if predicate(self.events[index]):
                    return self.events[index]
                index += 1
            await self._changed.wait()

    def signal(self, signum: int) -> None:
        """Send a signal to the running process."""
        assert self.process is not None
        self.process.send_signal(signum)

    def pause(self) -> None:
        """SIGSTOP: the process stops reading and writing but its sockets stay open."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        self.signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL and reap (the kernel closes its sockets)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()

    async def restart(self, *, start_timeout: float = 10.0) -> None:
        """Kill and start again on the same port."""
        await self.kill()
        await self.start(self.port, start_timeout=start_timeout)


@asynccontextmanager
async def peer(script: str, *args: str, ready: str | None = "PORT ",
               start: bool = True) -> AsyncIterator[PeerProcess]:
    """A started :class:`PeerProcess` for the block; killed (and SIGCONT'd) at the end."""
    async with trio.open_nursery() as nursery:
        process = PeerProcess(nursery, script, list(args))
        try:
            if start:
                await process.start(ready=ready)
            yield process
        finally:
            if process.process is not None and process.process.returncode is None:
                try:
                    process.resume()
                except ProcessLookupError:
                    pass
            await process.kill()
            nursery.cancel_scope.cancel()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a throw-away certificate for ``localhost`` / ``127.0.0.1``; returns (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return certfile, keyfile
