"""Lease server hardening against a real server process on loopback (bounded, real time)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

from pulse.plugins.lease.protocol import ErrorNotice, SessionNotice

from ..drivers._lease_harness import Raw

pytestmark = pytest.mark.e2e

PREFIX = "/pulse/presence"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def server_process(*extra: str) -> AsyncIterator[tuple[trio.Process, str, bytearray]]:
    """``pulse serve --listen pulse://127.0.0.1:<port>`` as a child process (killed at the
    end); its log output accumulates in the returned buffer."""
    port = free_port()
    command = [sys.executable, "-m", "pulse.cli.main", "--log-level", "info", "serve",
               "--listen", f"pulse://127.0.0.1:{port}", *extra]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT)
    output = bytearray()

    async def pump() -> None:
        assert process.stdout is not None
        async for chunk in process.stdout:
            output.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            with trio.fail_after(15):
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        await trio.sleep(0.05)
                        continue
                    await stream.aclose()
                    break
            yield process, f"pulse://127.0.0.1:{port}", output
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def stalls_and_expiries(*server_args: str, rounds: int = 5) -> tuple[int, list[object]]:
    """Three raw clients with 2 s sessions renew every 0.65 s (an idle client's cadence). Each
    round the server is SIGSTOPped 0.6 s after a renewal, for 1.5 s: the next renewal waits
    unread in the socket while the sessions' expiry (tick 0.1) falls inside the stop. Returns
    the server's ``session_expired`` log count and the session notices the clients got."""
    async with server_process("--tick", "0.1", *server_args) as (process, url, output):
        port = int(url.rsplit(":", 1)[1])
        notices: list[object] = []
        async with trio.open_nursery() as nursery:
            clients = []
            for _ in range(3):
                raw = Raw(await trio.open_tcp_stream("127.0.0.1", port))
                assert (await raw.call("connect", {"timeout": 2.0})).error is None
                clients.append(raw)

            async def read(raw: Raw) -> None:
                while (message := await raw.next()) is not None:
                    if isinstance(message, SessionNotice | ErrorNotice):
                        notices.append(message)

            async def renew() -> None:
                for raw in clients:
                    try:
                        await raw.request("ping")
                    except trio.BrokenResourceError:
                        notices.append("connection closed by the server")

            for raw in clients:
                nursery.start_soon(read, raw)
            for _ in range(rounds):
                await renew()
                await trio.sleep(0.6)
                os.kill(process.pid, signal.SIGSTOP)
                await trio.sleep(0.05)
                await renew()  # sits in the socket buffers
                await trio.sleep(1.45)
                os.kill(process.pid, signal.SIGCONT)
                for _ in range(3):
                    await trio.sleep(0.3)
                    await renew()
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        expired = output.count(b"session_expired")
    return expired, notices


async def test_sigstopped_server_expires_no_session() -> None:
    """SIGSTOP the lease server for 1.5 s (2 s sessions), 4 times at varied phases: 0 expiries."""
    expired, notices = await stalls_and_expiries()
    assert notices == []
    assert expired == 0


async def test_tls_and_token_over_loopback(tmp_path: Path) -> None:
    """A server built from serve options (certfile/keyfile, credentials file) speaks TLS and
    refuses a wrong secret; a trusted client with its secret registers its presence id."""
    import trustme

    from pulse.errors import AuthFailed
    from pulse.plugins.lease import server_config
    from pulse.plugins.lease.client import connect
    from pulse.plugins.lease.server import LeaseServer, bound_address

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    credentials = tmp_path / "clients"
    credentials.write_text("# id:secret[:grants]\nagent-1:s3cret\nsvc:other:/services\n")
    config = server_config({"certfile": certfile, "keyfile": keyfile,
                            "credentials_file": credentials, "tick": 0.25})
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(LeaseServer(config).serve_tcp, "127.0.0.1", 0)
        port = bound_address(listeners)[1]
        with trio.fail_after(10):
            async with connect([("127.0.0.1", port)], 2.0, client_id="agent-1", token="s3cret",
                               ssl_context=client_context) as session:
                await session.register("/pulse/presence/agent-1", b"hello")
                assert await session.get("/pulse/presence/agent-1") == b"hello"
            with pytest.raises(AuthFailed):
                async with connect([("127.0.0.1", port)], 2.0, client_id="agent-1",
                                   token="wrong", ssl_context=client_context):
                    pass
            # a plaintext client gets nowhere (the server expects a TLS handshake)
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(1.0):
                    async with connect([("127.0.0.1", port)], 2.0, client_id="agent-1",
                                       token="s3cret"):
                        pass
        nursery.cancel_scope.cancel()


async def test_cancelling_the_scope_closes_the_lease_session() -> None:
    """Cancel the scope around connect_session(pulse://): watchers see the member leave within
    1 s and leaving the scope takes under 1 s."""
    from pulse.registry import connect_session

    from ._lease_procs import Recorder, lease_server

    async with lease_server(tick=0.5) as server, trio.open_nursery() as nursery:
        watcher = Recorder()
        await nursery.start(watcher.run, server.url, "/pulse/presence", 4.0)
        with trio.CancelScope() as scope:
            async with connect_session(server.url, session_timeout=4.0) as member:
                await member.register("/pulse/presence/m", b"")
                await watcher.wait_for("online", "m")
                cancelled_at = trio.current_time()
                scope.cancel()
                await trio.sleep_forever()
        left_after = trio.current_time() - cancelled_at
        seen = await watcher.wait_for("offline", "m", after=cancelled_at, timeout=5.0)
        assert left_after < 1.0, left_after
        assert seen - cancelled_at < 1.0, seen - cancelled_at
        nursery.cancel_scope.cancel()
